//! Who is on the other end of a connection: the name and role a peer's certificate proves.
//!
//! Node certificates carry the node id as their one DNS subject-alternative name and the
//! organizational unit `ballast-node`; admin certificates carry the admin's name and the
//! unit `ballast-admin` (role operator) or `ballast-admin-read-only`. The chain itself is verified by rustls against the cluster CA
//! before anything here runs; this module only reads the verified certificate.

use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use x509_parser::extensions::GeneralName;

use crate::error::IdentityError;

/// The organizational unit that marks a node certificate.
pub(crate) const OU_NODE: &str = "ballast-node";
/// The organizational unit that marks an operator's admin certificate (0.1 admin
/// certificates carry it too, so they stay operators).
pub(crate) const OU_ADMIN: &str = "ballast-admin";
/// The organizational unit that marks a read-only admin certificate.
pub(crate) const OU_ADMIN_READ_ONLY: &str = "ballast-admin-read-only";
/// Longest accepted node or admin name (one DNS label).
pub const NAME_LEN_MAX: usize = 63;

/// What a certificate allows its holder to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// A cluster node: may gossip, serve and call the RPC.
    Node,
    /// An operator or tool: may call the RPC (the admin API, as far as its
    /// [`AdminRole`] allows), never gossip.
    Admin(AdminRole),
}

/// What an admin certificate may do through the admin API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdminRole {
    /// Everything: create, move, drain, forget …
    Operator,
    /// Reads only: status, the VM list, sessions (what a node certificate may also read).
    ReadOnly,
}

impl AdminRole {
    /// The role's name on the command line and in messages (`operator`, `read-only`).
    pub fn as_str(self) -> &'static str {
        match self {
            AdminRole::Operator => "operator",
            AdminRole::ReadOnly => "read-only",
        }
    }
}

impl std::fmt::Display for AdminRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The authenticated identity of a peer, taken from its verified certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerIdentity {
    /// The node id (for nodes) or the admin's name (for admins).
    pub name: String,
    /// The role the certificate grants.
    pub role: Role,
}

/// Checks that `name` can be a node id or admin name: 1 to 63 ASCII letters, digits and
/// `-`, starting with a letter and not ending with `-` (a valid DNS label, so it can be
/// the certificate's DNS name and the TLS server name).
pub fn validate_name(name: &str) -> Result<(), IdentityError> {
    let bytes = name.as_bytes();
    let first_ok = bytes.first().is_some_and(|b| b.is_ascii_alphabetic());
    let last_ok = bytes.last().is_some_and(|b| *b != b'-');
    let chars_ok = bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'-');
    if name.len() <= NAME_LEN_MAX && first_ok && last_ok && chars_ok {
        Ok(())
    } else {
        Err(IdentityError::InvalidName {
            name: name.chars().take(80).collect(),
        })
    }
}

/// Reads the identity out of a (verified) end-entity certificate.
pub fn identity_from_cert(cert: &CertificateDer<'_>) -> Result<PeerIdentity, IdentityError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|_| IdentityError::Unparseable)?;
    let role = role_of(&parsed)?;
    let name = dns_name_of(&parsed)?;
    validate_name(&name)?;
    Ok(PeerIdentity { name, role })
}

/// Reads the identity of the peer of an established quinn connection.
pub(crate) fn identity_of_connection(
    conn: &quinn::Connection,
) -> Result<PeerIdentity, IdentityError> {
    let any = conn.peer_identity().ok_or(IdentityError::NoCertificate)?;
    let chain = any
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| IdentityError::NoCertificate)?;
    let leaf = chain.first().ok_or(IdentityError::NoCertificate)?;
    identity_from_cert(leaf)
}

fn role_of(cert: &x509_parser::certificate::X509Certificate<'_>) -> Result<Role, IdentityError> {
    let mut role = None;
    for ou in cert.subject().iter_organizational_unit() {
        let value = ou.as_str().map_err(|_| IdentityError::Unparseable)?;
        let this = match value {
            OU_NODE => Role::Node,
            OU_ADMIN => Role::Admin(AdminRole::Operator),
            OU_ADMIN_READ_ONLY => Role::Admin(AdminRole::ReadOnly),
            _ => continue,
        };
        if role.is_some_and(|r| r != this) {
            return Err(IdentityError::AmbiguousRole);
        }
        role = Some(this);
    }
    role.ok_or(IdentityError::NoRole)
}

fn dns_name_of(
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<String, IdentityError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|_| IdentityError::Unparseable)?
        .ok_or(IdentityError::NoName)?;
    let mut names = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::DNSName(d) => Some(*d),
        _ => None,
    });
    let name = names.next().ok_or(IdentityError::NoName)?;
    if names.next().is_some() {
        return Err(IdentityError::AmbiguousName);
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dns_label_rules() {
        for good in ["a", "node-1", "Node7", "n".repeat(63).as_str()] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "1node",
            "node-",
            "no.de",
            "no_de",
            "nöde",
            &"n".repeat(64),
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
