//! [`AgentError`]: why an agent could not start.

use std::path::PathBuf;

/// The agent could not start. In every case nothing is left running.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A failpoint name is unknown (config or environment). Nothing started.
    #[error("failpoints: {0}")]
    Failpoints(String),
    /// The node's certificate, key or CA could not be read or used. Nothing started.
    #[error("certificates: {0}")]
    Tls(String),
    /// The data directory could not be created. Nothing started.
    #[error("data directory {path}: {reason}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
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
    /// The metrics address could not be bound.
    #[error("metrics listener {addr}: {source}")]
    Metrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}
