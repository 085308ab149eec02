//! Writing and reading the PEM files of the cluster CA and of node/admin certificates.
//!
//! Private keys are written with mode 0600 (through a temporary file created 0600 and
//! renamed, so a key is never readable by others, not even half-written). Certificates
//! are written 0644.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::PkiError;
use crate::identity::identity_from_cert;
use crate::pki::{CaBundle, CertBundle};
use crate::tls::certs_from_pem;

/// File mode of private keys.
pub const KEY_FILE_MODE: u32 = 0o600;
/// File mode of certificates.
pub const CERT_FILE_MODE: u32 = 0o644;

/// Writes the CA certificate (0644) and its key (0600).
pub fn save_ca(ca: &CaBundle, cert_path: &Path, key_path: &Path) -> Result<(), PkiError> {
    write_file(cert_path, ca.cert_pem.as_bytes(), CERT_FILE_MODE)?;
    write_file(key_path, ca.key_pem.as_bytes(), KEY_FILE_MODE)
}

/// Reads a CA written by [`save_ca`]; the cluster name comes from the certificate.
pub fn load_ca(cert_path: &Path, key_path: &Path) -> Result<CaBundle, PkiError> {
    let cert_pem = read_file(cert_path)?;
    let key_pem = read_file(key_path)?;
    let certs = certs_from_pem(&cert_pem).map_err(|e| pem_err(cert_path, e))?;
    let first = certs
        .first()
        .ok_or_else(|| pem_err(cert_path, "no certificate"))?;
    let cluster_name = organization_of(first.as_ref()).ok_or_else(|| {
        pem_err(
            cert_path,
            "CA certificate has no organization (cluster name)",
        )
    })?;
    rcgen::KeyPair::from_pem(&key_pem).map_err(|e| pem_err(key_path, e))?;
    Ok(CaBundle {
        cluster_name,
        cert_pem,
        key_pem,
    })
}

/// Writes a node/admin certificate (0644), its key (0600) and the CA certificate (0644).
pub fn save_cert_bundle(
    bundle: &CertBundle,
    cert_path: &Path,
    key_path: &Path,
    ca_cert_path: &Path,
) -> Result<(), PkiError> {
    write_file(ca_cert_path, bundle.ca_cert_pem.as_bytes(), CERT_FILE_MODE)?;
    write_file(cert_path, bundle.cert_pem.as_bytes(), CERT_FILE_MODE)?;
    write_file(key_path, bundle.key_pem.as_bytes(), KEY_FILE_MODE)
}

/// Reads a bundle written by [`save_cert_bundle`]; name and role come from the certificate.
pub fn load_cert_bundle(
    cert_path: &Path,
    key_path: &Path,
    ca_cert_path: &Path,
) -> Result<CertBundle, PkiError> {
    let cert_pem = read_file(cert_path)?;
    let key_pem = read_file(key_path)?;
    let ca_cert_pem = read_file(ca_cert_path)?;
    let certs = certs_from_pem(&cert_pem).map_err(|e| pem_err(cert_path, e))?;
    let leaf = certs
        .first()
        .ok_or_else(|| pem_err(cert_path, "no certificate"))?;
    let id = identity_from_cert(leaf)?;
    Ok(CertBundle {
        name: id.name,
        role: id.role,
        cert_pem,
        key_pem,
        ca_cert_pem,
    })
}

fn organization_of(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let org = cert.subject().iter_organization().next()?;
    org.as_str().ok().map(str::to_owned)
}

fn pem_err(path: &Path, what: impl std::fmt::Display) -> PkiError {
    PkiError::Pem {
        path: path.to_owned(),
        what: what.to_string(),
    }
}

fn io_err(path: &Path, source: std::io::Error) -> PkiError {
    PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

fn read_file(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|e| io_err(path, e))
}

/// Writes `bytes` to `path` through `path.tmp` created with `mode`, fsynced, renamed.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let mut tmp = PathBuf::from(path);
    tmp.as_mut_os_string().push(".tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io_err(&tmp, e))?;
    // The umask may have narrowed the mode; set it exactly.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| io_err(&tmp, e))?;
    file.write_all(bytes).map_err(|e| io_err(&tmp, e))?;
    file.sync_all().map_err(|e| io_err(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{create_ca, issue_node_cert};

    #[test]
    fn round_trip_and_key_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = |n: &str| dir.path().join(n);
        let ca = create_ca("prod").expect("ca");
        save_ca(&ca, &p("ca.crt"), &p("ca.key")).expect("save ca");
        let ca2 = load_ca(&p("ca.crt"), &p("ca.key")).expect("load ca");
        assert_eq!(ca2.cluster_name, "prod");
        assert_eq!(ca2.cert_pem, ca.cert_pem);
        let node = issue_node_cert(&ca2, "node-a", &[]).expect("issue");
        save_cert_bundle(&node, &p("n.crt"), &p("n.key"), &p("ca2.crt")).expect("save");
        let back = load_cert_bundle(&p("n.crt"), &p("n.key"), &p("ca2.crt")).expect("load");
        assert_eq!(back.name, "node-a");
        assert_eq!(back.key_pem, node.key_pem);
        for (f, mode) in [("ca.key", 0o600), ("n.key", 0o600), ("n.crt", 0o644)] {
            let m = fs::metadata(p(f)).expect("meta").permissions().mode() & 0o777;
            assert_eq!(m, mode, "{f}");
        }
    }
}
