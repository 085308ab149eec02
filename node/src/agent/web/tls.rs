//! TLS for the web server when it binds beyond loopback: the node's certificate, and a
//! client certificate from the cluster CA required (rustls `WebPkiClientVerifier`).

use super::{WebError, HEADER_READ_TIMEOUT};
use ballast_gossip::{TlsBundle, TlsError};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// The acceptor for a server bound at `addr`: `None` (plain HTTP) on a loopback address,
/// else TLS with a required client certificate of the cluster.
pub(crate) fn acceptor_for(
    addr: SocketAddr,
    tls: &TlsBundle,
) -> Result<Option<TlsAcceptor>, TlsError> {
    if addr.ip().is_loopback() {
        return Ok(None);
    }
    let cfg = ballast_gossip::https_server_config(tls)?;
    Ok(Some(TlsAcceptor::from(Arc::new(cfg))))
}

/// The handshake on `stream`, bounded by [`HEADER_READ_TIMEOUT`].
pub(super) async fn accept(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
) -> Result<TlsStream<TcpStream>, WebError> {
    match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await {
        Ok(r) => r.map_err(WebError::Tls),
        Err(_) => Err(WebError::TlsTimeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_plain_and_any_other_address_is_tls() {
        let ca = ballast_gossip::create_ca("t").expect("ca");
        let cert = ballast_gossip::issue_node_cert(&ca, "n1", &[]).expect("cert");
        let tls = TlsBundle::from_cert_bundle(&cert).expect("bundle");
        let local: SocketAddr = "127.0.0.1:9420".parse().expect("addr");
        let any: SocketAddr = "0.0.0.0:9420".parse().expect("addr");
        assert!(acceptor_for(local, &tls).expect("plain").is_none());
        assert!(acceptor_for(any, &tls).expect("tls").is_some());
    }
}
