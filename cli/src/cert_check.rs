//! A local check of the admin bundle before any call: the admin certificate must chain
//! to the bundle's CA certificate, verified the way the agents verify client
//! certificates (rustls' WebPKI client verifier, ring). With TLS 1.3 a node's refusal of
//! a client certificate only shows as a lost connection, so checking here is what lets
//! the CLI say plainly "this certificate is of another cluster".

use anyhow::{anyhow, Context};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use std::sync::Arc;

fn certs(pem: &str, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("the {what} is not PEM"))?;
    if certs.is_empty() {
        return Err(anyhow!("the {what} holds no certificate"));
    }
    Ok(certs)
}

/// Checks that `cert_pem` (leaf first) is signed by the CA in `ca_cert_pem`.
pub fn check_signed_by(ca_cert_pem: &str, cert_pem: &str) -> anyhow::Result<()> {
    let mut roots = RootCertStore::empty();
    for ca in certs(ca_cert_pem, "CA certificate")? {
        roots.add(ca).context("the CA certificate is unusable")?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| anyhow!("cannot build a verifier: {e}"))?;
    let chain = certs(cert_pem, "certificate")?;
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| anyhow!("the certificate file holds no certificate"))?;
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .map(|_| ())
        .map_err(|e| anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_of_another_ca_is_refused() {
        let ca = ballast_gossip::create_ca("one").expect("ca");
        let other = ballast_gossip::create_ca("one").expect("other ca, same name");
        let admin =
            ballast_gossip::issue_admin_cert(&ca, "ops", ballast_gossip::AdminRole::Operator)
                .expect("admin");
        check_signed_by(&ca.cert_pem, &admin.cert_pem).expect("own CA");
        let e = check_signed_by(&other.cert_pem, &admin.cert_pem).expect_err("other CA");
        // Same cluster name, so the same issuer name: only the signature tells them apart.
        assert!(e.to_string().contains("BadSignature"), "{e}");
        let third = ballast_gossip::create_ca("two").expect("ca");
        let e = check_signed_by(&third.cert_pem, &admin.cert_pem).expect_err("other name");
        assert!(e.to_string().contains("UnknownIssuer"), "{e}");
        assert!(check_signed_by(&ca.cert_pem, "garbage").is_err());
    }
}
