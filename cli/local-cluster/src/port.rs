//! [`HeldPort`]: a UDP socket bound once, handed to each start of an agent.

use crate::KitError;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;

/// A bound UDP socket the launcher keeps while the node exists.
#[derive(Debug)]
pub struct HeldPort {
    socket: UdpSocket,
    addr: SocketAddr,
}

impl HeldPort {
    /// Binds a free port on `ip`.
    pub fn bind(ip: IpAddr) -> Result<Self, KitError> {
        let bind = |source| KitError::Bind { ip, source };
        let socket = UdpSocket::bind((ip, 0)).map_err(bind)?;
        let addr = socket.local_addr().map_err(bind)?;
        Ok(Self { socket, addr })
    }

    /// Binds a free port on 127.0.0.1.
    pub fn loopback() -> Result<Self, KitError> {
        Self::bind(IpAddr::from([127, 0, 0, 1]))
    }

    /// The bound address (the node's `listen` and the address peers use).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A copy of the socket (same port), to give to an agent process.
    pub fn share(&self) -> std::io::Result<OwnedFd> {
        Ok(OwnedFd::from(self.socket.try_clone()?))
    }
}
