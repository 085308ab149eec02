//! The cluster's own certificate authority: create it, issue node and admin certificates.
//!
//! All keys are ECDSA P-256 made by rcgen with the ring backend. Node certificates made
//! by the CLI carry a validity ([`Validity`], a year by default) and are renewed with
//! `ballast node renew`; others use rcgen's default validity (no expiry in practice).

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};

use crate::error::{IdentityError, PkiError};
use crate::identity::{validate_name, AdminRole, Role, OU_ADMIN, OU_ADMIN_READ_ONLY, OU_NODE};

/// A cluster CA: its certificate and private key, PEM encoded.
#[derive(Clone, Serialize, Deserialize)]
pub struct CaBundle {
    /// The cluster's name, as written in the CA's organization field.
    pub cluster_name: String,
    /// The CA certificate (PEM).
    pub cert_pem: String,
    /// The CA private key (PEM, PKCS#8). Secret.
    pub key_pem: String,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaBundle")
            .field("cluster_name", &self.cluster_name)
            .finish_non_exhaustive()
    }
}

/// A node or admin certificate with its key and the CA certificate that signed it.
#[derive(Clone, Serialize, Deserialize)]
pub struct CertBundle {
    /// The node id or admin name in the certificate.
    pub name: String,
    /// The role the certificate grants.
    pub role: Role,
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM, PKCS#8). Secret.
    pub key_pem: String,
    /// The cluster CA certificate (PEM), the trust root both sides check against.
    pub ca_cert_pem: String,
}

impl std::fmt::Debug for CertBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertBundle")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Creates a new cluster CA named after `cluster_name`.
pub fn create_ca(cluster_name: &str) -> Result<CaBundle, PkiError> {
    if cluster_name.is_empty()
        || cluster_name.len() > 64
        || cluster_name.chars().any(char::is_control)
    {
        return Err(IdentityError::InvalidName {
            name: cluster_name.chars().take(80).collect(),
        }
        .into());
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
        .distinguished_name
        .push(DnType::CommonName, format!("ballast CA {cluster_name}"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, cluster_name);
    let cert = params.self_signed(&key)?;
    Ok(CaBundle {
        cluster_name: cluster_name.to_owned(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// When a certificate is valid, in Unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validity {
    /// Not valid before.
    pub not_before_unix: i64,
    /// Not valid after.
    pub not_after_unix: i64,
}

impl Validity {
    /// From an hour ago (clocks differ a little between hosts) for `days` days.
    pub fn days_from_now(days: u32) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        Self {
            not_before_unix: now - 3_600,
            not_after_unix: now + i64::from(days) * 86_400,
        }
    }

    /// The last day it is valid, as `YYYY-MM-DD` (UTC).
    pub fn not_after_date(&self) -> String {
        utc_date(self.not_after_unix)
    }

    /// Reads the validity of a certificate (PEM, the first one).
    pub fn of_pem(cert_pem: &str) -> Result<Self, PkiError> {
        let der = crate::tls::certs_from_pem(cert_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| PkiError::Pem {
                path: Default::default(),
                what: "no certificate".into(),
            })?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| PkiError::Pem {
                path: Default::default(),
                what: format!("unparseable certificate: {e}"),
            })?;
        let v = parsed.validity();
        Ok(Self {
            not_before_unix: v.not_before.timestamp(),
            not_after_unix: v.not_after.timestamp(),
        })
    }
}

/// A Unix time (seconds) as the day it falls on, `YYYY-MM-DD` (UTC).
pub fn utc_date(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .map(|t| t.date().to_string())
        .unwrap_or_else(|_| format!("unix {unix}"))
}

/// Issues a node certificate: `node_id` as its DNS name (and common name), the given
/// addresses as IP names, role `Node`; usable as TLS server and client; rcgen's default
/// validity (no expiry in practice).
pub fn issue_node_cert(
    ca: &CaBundle,
    node_id: &str,
    addrs: &[IpAddr],
) -> Result<CertBundle, PkiError> {
    let sans = addrs.iter().map(|ip| SanType::IpAddress(*ip)).collect();
    issue(ca, node_id, Role::Node, sans, None)
}

/// [`issue_node_cert`] valid only for `validity`.
pub fn issue_node_cert_valid(
    ca: &CaBundle,
    node_id: &str,
    addrs: &[IpAddr],
    validity: Validity,
) -> Result<CertBundle, PkiError> {
    let sans = addrs.iter().map(|ip| SanType::IpAddress(*ip)).collect();
    issue(ca, node_id, Role::Node, sans, Some(validity))
}

/// Issues an admin certificate: `name` as its DNS name, role `Admin(role)`; usable only
/// as a TLS client (it cannot serve or gossip).
pub fn issue_admin_cert(
    ca: &CaBundle,
    name: &str,
    role: AdminRole,
) -> Result<CertBundle, PkiError> {
    issue(ca, name, Role::Admin(role), Vec::new(), None)
}

fn issue(
    ca: &CaBundle,
    name: &str,
    role: Role,
    extra_sans: Vec<SanType>,
    validity: Option<Validity>,
) -> Result<CertBundle, PkiError> {
    validate_name(name)?;
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![name.to_owned()])?;
    if let Some(v) = validity {
        let at = |unix: i64| {
            time::OffsetDateTime::from_unix_timestamp(unix).map_err(|e| PkiError::Pem {
                path: Default::default(),
                what: format!("validity out of range: {e}"),
            })
        };
        params.not_before = at(v.not_before_unix)?;
        params.not_after = at(v.not_after_unix)?;
    }
    params.subject_alt_names.extend(extra_sans);
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match role {
        Role::Node => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Admin(_) => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, ca.cluster_name.as_str());
    let unit = match role {
        Role::Node => OU_NODE,
        Role::Admin(AdminRole::Operator) => OU_ADMIN,
        Role::Admin(AdminRole::ReadOnly) => OU_ADMIN_READ_ONLY,
    };
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, unit);
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertBundle {
        name: name.to_owned(),
        role,
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        ca_cert_pem: ca.cert_pem.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::identity_from_cert;
    use crate::tls::certs_from_pem;

    #[test]
    fn issued_certificates_carry_name_and_role() {
        let ca = create_ca("test").expect("ca");
        let node =
            issue_node_cert(&ca, "node-1", &["127.0.0.1".parse().expect("ip")]).expect("node cert");
        let admin = issue_admin_cert(&ca, "ops", AdminRole::Operator).expect("admin cert");
        let reader = issue_admin_cert(&ca, "viewer", AdminRole::ReadOnly).expect("reader cert");
        let node_der = certs_from_pem(&node.cert_pem).expect("pem");
        let admin_der = certs_from_pem(&admin.cert_pem).expect("pem");
        let id = identity_from_cert(&node_der[0]).expect("node identity");
        assert_eq!((id.name.as_str(), id.role), ("node-1", Role::Node));
        let id = identity_from_cert(&admin_der[0]).expect("admin identity");
        assert_eq!(
            (id.name.as_str(), id.role),
            ("ops", Role::Admin(AdminRole::Operator))
        );
        let reader_der = certs_from_pem(&reader.cert_pem).expect("pem");
        let id = identity_from_cert(&reader_der[0]).expect("reader identity");
        assert_eq!(
            (id.name.as_str(), id.role),
            ("viewer", Role::Admin(AdminRole::ReadOnly))
        );
    }

    #[test]
    fn a_validity_is_kept_in_the_certificate() {
        let ca = create_ca("test").expect("ca");
        let v = Validity::days_from_now(30);
        let node = issue_node_cert_valid(&ca, "node-1", &[], v).expect("node cert");
        assert_eq!(Validity::of_pem(&node.cert_pem).expect("read"), v);
        let forever = issue_node_cert(&ca, "node-1", &[]).expect("node cert");
        let f = Validity::of_pem(&forever.cert_pem).expect("read");
        assert!(f.not_after_unix > v.not_after_unix + 1_000 * 365 * 86_400);
        assert_eq!(utc_date(1_796_601_600), "2026-12-07");
    }

    #[test]
    fn bad_names_are_refused() {
        let ca = create_ca("test").expect("ca");
        assert!(issue_node_cert(&ca, "no_de", &[]).is_err());
        assert!(issue_admin_cert(&ca, "", AdminRole::Operator).is_err());
        assert!(create_ca("").is_err());
    }
}
