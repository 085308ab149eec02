//! [`write_node_certs`]: a node's certificate files.

use crate::KitError;
use ballast_gossip::{issue_node_cert, save_cert_bundle, CaBundle};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Where a node's certificate files are.
#[derive(Clone, Debug)]
pub struct CertPaths {
    /// The node's certificate (`node.pem`).
    pub cert: PathBuf,
    /// Its key (`node.key`).
    pub key: PathBuf,
    /// The cluster CA (`ca.pem`).
    pub ca: PathBuf,
}

/// Issues `name`'s certificate for `ip` from `ca` and writes it with its key and the CA
/// into `dir`.
pub fn write_node_certs(
    ca: &CaBundle,
    name: &str,
    ip: IpAddr,
    dir: &Path,
) -> Result<CertPaths, KitError> {
    let certs = |source| KitError::Certs {
        node: name.to_owned(),
        source,
    };
    let cert = issue_node_cert(ca, name, &[ip]).map_err(certs)?;
    let paths = CertPaths {
        cert: dir.join("node.pem"),
        key: dir.join("node.key"),
        ca: dir.join("ca.pem"),
    };
    save_cert_bundle(&cert, &paths.cert, &paths.key, &paths.ca).map_err(certs)?;
    Ok(paths)
}
