//! rustls/quinn configuration for mutual TLS against the cluster CA.
//!
//! Both sides verify the peer's chain against the cluster CA only (no system roots).
//! Servers require a client certificate. Clients check the server's certificate name:
//! either the node id they expect, or — for gossip, where chitchat only knows an address
//! — any node name, which is then recorded as that address's binding. The ring provider
//! is installed explicitly, never taken from a process default.

use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::{PkiError, TlsError};
use crate::identity::{identity_from_cert, PeerIdentity, Role};
use crate::pki::CertBundle;
use crate::revocation::RevokedSet;

/// ALPN of the gossip protocol.
pub const ALPN_GOSSIP: &[u8] = b"ballast-gossip/1";
/// ALPN of the RPC protocol, version 2 (placement rules in the messages, signed state).
/// A client asks for the version the peer speaks (its gossiped range): this ALPN for a
/// node of this build, [`ALPN_RPC_V1`] for one of ballast 0.1, which knows only that one
/// and so never receives messages it would misread. Servers accept both; each request
/// names its version as the first thing it encodes.
pub const ALPN_RPC: &[u8] = b"ballast-rpc/2";
/// The RPC ALPN of protocol version 1 (ballast 0.1).
pub const ALPN_RPC_V1: &[u8] = b"ballast-rpc/1";
/// TLS server name meaning "any node of this cluster" (never a valid node id: it has a dot).
pub(crate) const ANY_NODE_SERVER_NAME: &str = "any-node.ballast.invalid";

/// Our certificate, key and trust root, ready to build TLS configurations.
pub struct TlsBundle {
    ca_cert: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    identity: PeerIdentity,
    /// Node names refused in every handshake (shared by clones).
    revoked: Arc<RevokedSet>,
}

impl Clone for TlsBundle {
    fn clone(&self) -> Self {
        Self {
            ca_cert: self.ca_cert.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            identity: self.identity.clone(),
            revoked: self.revoked.clone(),
        }
    }
}

impl std::fmt::Debug for TlsBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsBundle")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl TlsBundle {
    /// Builds a bundle from PEM text: CA certificate, own certificate (chain), own key.
    pub fn from_pem(ca_cert_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let ca_cert = certs_from_pem(ca_cert_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| pem_missing("CA certificate"))?;
        let chain = certs_from_pem(cert_pem)?;
        let leaf = chain.first().ok_or_else(|| pem_missing("certificate"))?;
        let identity = identity_from_cert(leaf)?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .map_err(|e| pem_missing(&format!("private key ({e})")))?
            .ok_or_else(|| pem_missing("private key"))?;
        Ok(Self {
            ca_cert,
            chain,
            key,
            identity,
            revoked: Arc::default(),
        })
    }

    /// Builds a bundle from an issued [`CertBundle`].
    pub fn from_cert_bundle(bundle: &CertBundle) -> Result<Self, TlsError> {
        Self::from_pem(&bundle.ca_cert_pem, &bundle.cert_pem, &bundle.key_pem)
    }

    /// The identity our own certificate proves.
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }

    /// The node names this bundle's TLS configurations refuse (revoked); shared by every
    /// clone of the bundle and every configuration built from it.
    pub fn revoked(&self) -> &Arc<RevokedSet> {
        &self.revoked
    }

    /// Our private key.
    pub(crate) fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// Our own certificate (the chain's leaf).
    pub(crate) fn leaf(&self) -> &CertificateDer<'static> {
        // `from_pem` refuses a chain without a certificate.
        &self.chain[0]
    }

    /// The cluster CA's certificate.
    pub(crate) fn ca_cert(&self) -> &CertificateDer<'static> {
        &self.ca_cert
    }
}

fn pem_missing(what: &str) -> TlsError {
    TlsError::Pki(PkiError::Pem {
        path: Default::default(),
        what: format!("no usable {what} in PEM"),
    })
}

/// Parses all certificates in a PEM text.
pub(crate) fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Pem {
            path: Default::default(),
            what: e.to_string(),
        })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(tls: &TlsBundle) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(tls.ca_cert.clone())?;
    Ok(Arc::new(roots))
}

/// The server side: requires a client certificate from the cluster CA, offers both ALPNs.
pub(crate) fn server_config(
    tls: &TlsBundle,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ServerConfig, TlsError> {
    let provider = provider();
    let inner = WebPkiClientVerifier::builder_with_provider(roots(tls)?, provider.clone())
        .build()
        .map_err(TlsError::Verifier)?;
    let verifier = Arc::new(NotRevoked {
        inner,
        revoked: tls.revoked.clone(),
    });
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(tls.chain.clone(), tls.key.clone_key())?;
    cfg.alpn_protocols = vec![
        ALPN_GOSSIP.to_vec(),
        ALPN_RPC.to_vec(),
        ALPN_RPC_V1.to_vec(),
    ];
    let quic = QuicServerConfig::try_from(cfg).map_err(TlsError::Quic)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(transport);
    Ok(server)
}

/// The server side of the agent's HTTPS (the web view bound beyond localhost): our node
/// certificate, and a client certificate from the cluster CA required (any role: node or
/// admin), TLS 1.2 or 1.3 for browsers, ALPN `http/1.1`.
pub fn https_server_config(tls: &TlsBundle) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(tls)?, provider.clone())
        .build()
        .map_err(TlsError::Verifier)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(tls.chain.clone(), tls.key.clone_key())?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The client side for one ALPN: presents our certificate, checks the server is a node
/// of the cluster (see [`NodeServerVerifier`]).
pub(crate) fn client_config(
    tls: &TlsBundle,
    alpn: &[u8],
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, TlsError> {
    let provider = provider();
    let inner = WebPkiServerVerifier::builder_with_provider(roots(tls)?, provider.clone())
        .build()
        .map_err(TlsError::Verifier)?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NodeServerVerifier {
            inner,
            revoked: tls.revoked.clone(),
        }))
        .with_client_auth_cert(tls.chain.clone(), tls.key.clone_key())?;
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let quic = QuicClientConfig::try_from(cfg).map_err(TlsError::Quic)?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(transport);
    Ok(client)
}

/// Verifies a server: the chain must lead to the cluster CA (webpki), the certificate
/// must carry the `Node` role, and its name must be the expected one — or, when the
/// client asked for [`ANY_NODE_SERVER_NAME`], whatever node name it carries.
#[derive(Debug)]
struct NodeServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    revoked: Arc<RevokedSet>,
}

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let identity = identity_from_cert(end_entity).map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        if identity.role != Role::Node {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ));
        }
        if self.revoked.contains(&identity.name) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            ));
        }
        let wanted = match server_name {
            ServerName::DnsName(d) if d.as_ref() == ANY_NODE_SERVER_NAME => {
                ServerName::try_from(identity.name.clone()).map_err(|_| {
                    rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
                })?
            }
            other => other.to_owned(),
        };
        self.inner
            .verify_server_cert(end_entity, intermediates, &wanted, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The server's check of client certificates: the cluster CA's, then not a revoked node.
#[derive(Debug)]
struct NotRevoked {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Arc<RevokedSet>,
}

impl ClientCertVerifier for NotRevoked {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match identity_from_cert(end_entity) {
            Ok(id) if id.role == Role::Node && self.revoked.contains(&id.name) => Err(
                rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked),
            ),
            _ => Ok(verified),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
