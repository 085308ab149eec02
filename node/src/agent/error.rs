//! [`AgentError`]: why an agent could not start.

use std::path::PathBuf;

/// The agent could not start. In every case nothing is left running.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A failpoint name is unknown (config or environment). Nothing started.
    #[cfg(feature = "failpoints")]
    #[error("{origin}: {source}")]
    Failpoints {
        /// Where the name came from (config or environment variable).
        origin: &'static str,
        /// The name that is no failpoint.
        #[source]
        source: crate::failpoints::UnknownFailpoint,
    },
    /// The node's certificate, key or CA could not be read. Nothing started.
    #[error("certificates: {0}")]
    Certificates(#[source] ballast_gossip::PkiError),
    /// The node's certificate is expired (or not valid yet). Nothing started.
    #[error(
        "certificate {} {what} {date}: issue a new one with `ballast node renew NAME --dir DIR` and copy it to this host",
        path.display()
    )]
    CertificateOutOfDate {
        /// The certificate file.
        path: PathBuf,
        /// `expired on` or `is not valid before`.
        what: &'static str,
        /// The date (UTC).
        date: String,
    },
    /// The node's certificate, key or CA could not be used for TLS. Nothing started.
    #[error("certificates: {0}")]
    Tls(#[source] ballast_gossip::TlsError),
    /// The data directory could not be created. Nothing started.
    #[error("data directory {}: {source}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The store could not be opened (wrong node or cluster, locked, corrupt) or read.
    /// Nothing was changed.
    #[error("store: {0}")]
    Store(#[from] ballast_store::StoreError),
    /// The hypervisor driver could not be created or adopt its VMs.
    #[error("driver: {0}")]
    Driver(#[from] crate::driver::DriverError),
    /// The QUIC endpoint could not start (bind, identity mismatch).
    #[error("endpoint: {0}")]
    Endpoint(#[from] ballast_gossip::EndpointError),
    /// The metrics address could not be bound. Nothing is left running.
    #[error("metrics listener {addr}: {source}{}", metrics_hint(source))]
    Metrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// What to do when the metrics address is taken: the usual cause is a second agent on
/// the same machine with the default address.
fn metrics_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        "; another process (perhaps another agent on this machine) listens there: give each \
         agent its own `metrics_listen` in agent.toml (`--metrics-listen IP:PORT` on \
         `ballast cluster init` and `ballast node add`; \"off\" disables metrics)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::AgentError;

    #[test]
    fn a_taken_metrics_address_says_what_to_do() {
        let e = AgentError::Metrics {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 9420)),
            source: std::io::ErrorKind::AddrInUse.into(),
        };
        let text = e.to_string();
        assert!(
            text.starts_with("metrics listener 127.0.0.1:9420: "),
            "{text}"
        );
        assert!(
            text.contains("`metrics_listen`") && text.contains("--metrics-listen"),
            "{text}"
        );
        let other = AgentError::Metrics {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 9420)),
            source: std::io::ErrorKind::PermissionDenied.into(),
        };
        assert!(!other.to_string().contains("metrics_listen"));
    }
}
