//! [`KitError`].

use std::path::PathBuf;

/// Setting up or driving local agents failed.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// A port could not be bound.
    #[error("binding a UDP port on {ip}")]
    Bind {
        /// The address asked for.
        ip: std::net::IpAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Certificates could not be made or written.
    #[error("certificates of {node}")]
    Certs {
        /// The node.
        node: String,
        /// Why.
        #[source]
        source: ballast_gossip::PkiError,
    },
    /// A file or directory could not be read or written.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The agent binary could not be started.
    #[error("starting {}", bin.display())]
    Spawn {
        /// The binary.
        bin: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The caller's config writer failed.
    #[error("writing the config of {node}: {reason}")]
    Config {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
}

impl KitError {
    pub(crate) fn io(
        what: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_owned();
        move |source| Self::Io { what, path, source }
    }
}
