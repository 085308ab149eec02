//! Which certificate name was proven at which address.
//!
//! A binding `addr -> name` is recorded whenever a TLS handshake with the peer at `addr`
//! proves it holds the certificate of node `name`: when we dial `addr` (the server proves
//! it) and when `addr` dials us (each agent uses one UDP socket for everything, so the
//! source address of its connections is its gossip address). The membership view only
//! accepts a gossiped node `(id, addr)` if `addr` is bound to `id`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::sync::Notify;
use tracing::info;

/// Most bindings kept; past it, the oldest-learned are not evicted but new ones dropped.
pub(crate) const BINDINGS_MAX: usize = 16_384;

/// Address to proven node name.
#[derive(Debug, Default)]
pub(crate) struct Bindings {
    /// std lock: short critical sections, never held across an await.
    by_addr: Mutex<HashMap<SocketAddr, String>>,
    /// Woken when a binding is learned or changes.
    pub(crate) changed: Notify,
}

impl Bindings {
    /// Records that `name` was proven at `addr`.
    pub(crate) fn record(&self, addr: SocketAddr, name: &str) {
        let mut map = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&addr) {
            Some(old) if old == name => return,
            Some(old) => {
                info!(%addr, old = %old, new = %name, "address now proven by another node")
            }
            None if map.len() >= BINDINGS_MAX => return,
            None => {}
        }
        map.insert(addr, name.to_owned());
        drop(map);
        self.changed.notify_one();
    }

    /// The name proven at `addr`, if any.
    pub(crate) fn name_at(&self, addr: &SocketAddr) -> Option<String> {
        let map = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        map.get(addr).cloned()
    }
}
