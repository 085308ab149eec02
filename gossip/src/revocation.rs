//! Revoked node names: `ballast node revoke NAME` signs a [`Revocation`] with an operator's
//! admin key; every node checks it against the cluster CA, keeps it (the agent persists
//! it), passes it on in gossip, and from then on refuses that name in every TLS handshake
//! and in gossip. A revoked name stays revoked; a replacement host joins under a new name.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};

use crate::identity::{identity_from_cert, validate_name, AdminRole, Role};
use crate::tls::TlsBundle;

/// Longest base64 field accepted in a revocation.
const FIELD_BYTES_MAX: usize = 8 * 1024;
/// Most revocations a node keeps and gossips.
pub const REVOCATIONS_MAX: usize = 64;

/// A node name revoked by an operator, signed with the operator's admin key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// The revoked node name.
    pub node: String,
    /// When it was revoked (Unix ms).
    pub unix_ms: u64,
    /// The admin certificate that signed it (DER, base64).
    pub admin_cert: String,
    /// ECDSA P-256 signature over [`Revocation::message`] (DER, base64).
    pub signature: String,
}

/// Why a revocation is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevocationError {
    /// The node name is not a valid name.
    #[error("revocation names an invalid node name {0:?}")]
    BadName(String),
    /// A field is not base64 or is too long.
    #[error("revocation field {0} is malformed")]
    Malformed(&'static str),
    /// The signing certificate is not an admin certificate of this cluster.
    #[error("revocation not signed by this cluster's admin CA: {0}")]
    NotThisCluster(String),
    /// The signing certificate is an admin's, but read-only.
    #[error("revocation signed by {0:?}, whose admin role is read-only")]
    ReadOnly(String),
    /// The signature does not match.
    #[error("revocation signature does not match")]
    BadSignature,
    /// The signing key could not sign (not P-256).
    #[error("cannot sign with this admin key")]
    CannotSign,
}

impl Revocation {
    fn message(node: &str, unix_ms: u64) -> Vec<u8> {
        let mut msg = b"ballast revocation 1\0".to_vec();
        msg.extend((node.len() as u64).to_le_bytes());
        msg.extend(node.as_bytes());
        msg.extend(unix_ms.to_le_bytes());
        msg
    }

    /// Signs the revocation of `node` with an operator's admin bundle.
    pub fn sign(admin: &TlsBundle, node: &str, unix_ms: u64) -> Result<Self, RevocationError> {
        validate_name(node).map_err(|_| RevocationError::BadName(node.to_owned()))?;
        let key = rustls::crypto::ring::sign::any_ecdsa_type(admin.key())
            .map_err(|_| RevocationError::CannotSign)?;
        let signer = key
            .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
            .ok_or(RevocationError::CannotSign)?;
        let sig = signer
            .sign(&Self::message(node, unix_ms))
            .map_err(|_| RevocationError::CannotSign)?;
        Ok(Self {
            node: node.to_owned(),
            unix_ms,
            admin_cert: B64.encode(admin.leaf().as_ref()),
            signature: B64.encode(sig),
        })
    }

    /// Checks it against the cluster CA of `tls`: an operator's admin certificate of this
    /// cluster signed exactly this node name and time. Returns the admin's name.
    pub fn verify(&self, tls: &TlsBundle) -> Result<String, RevocationError> {
        validate_name(&self.node).map_err(|_| RevocationError::BadName(self.node.clone()))?;
        let decode = |field: &'static str, text: &str| {
            if text.len() > FIELD_BYTES_MAX {
                return Err(RevocationError::Malformed(field));
            }
            B64.decode(text)
                .map_err(|_| RevocationError::Malformed(field))
        };
        let cert = CertificateDer::from(decode("admin_cert", &self.admin_cert)?);
        let sig = decode("signature", &self.signature)?;
        let mut roots = RootCertStore::empty();
        roots
            .add(tls.ca_cert().clone())
            .map_err(|e| RevocationError::NotThisCluster(e.to_string()))?;
        let ca = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(|e| RevocationError::NotThisCluster(e.to_string()))?;
        ca.verify_client_cert(&cert, &[], UnixTime::now())
            .map_err(|e| RevocationError::NotThisCluster(e.to_string()))?;
        let id = identity_from_cert(&cert)
            .map_err(|e| RevocationError::NotThisCluster(e.to_string()))?;
        match id.role {
            Role::Admin(AdminRole::Operator) => {}
            Role::Admin(AdminRole::ReadOnly) => return Err(RevocationError::ReadOnly(id.name)),
            Role::Node => {
                return Err(RevocationError::NotThisCluster(format!(
                    "{:?} is a node certificate, not an admin's",
                    id.name
                )))
            }
        }
        let end_entity = webpki::EndEntityCert::try_from(&cert)
            .map_err(|e| RevocationError::NotThisCluster(e.to_string()))?;
        end_entity
            .verify_signature(
                webpki::ring::ECDSA_P256_SHA256,
                &Self::message(&self.node, self.unix_ms),
                &sig,
            )
            .map_err(|_| RevocationError::BadSignature)?;
        Ok(id.name)
    }
}

/// The revoked names this node knows (verified), shared by its TLS verifiers, its
/// membership view and the agent.
#[derive(Debug, Default)]
pub struct RevokedSet {
    /// std lock: read on every handshake, written on a revocation; never held across await.
    by_node: RwLock<BTreeMap<String, Revocation>>,
}

impl RevokedSet {
    /// Whether `node` is revoked.
    pub fn contains(&self, node: &str) -> bool {
        let map = self.by_node.read().unwrap_or_else(|p| p.into_inner());
        map.contains_key(node)
    }

    /// Adds a revocation that was verified; false if the name was revoked already (or
    /// the set is full).
    pub(crate) fn insert(&self, rev: Revocation) -> bool {
        let mut map = self.by_node.write().unwrap_or_else(|p| p.into_inner());
        if map.contains_key(&rev.node) || map.len() >= REVOCATIONS_MAX {
            return false;
        }
        map.insert(rev.node.clone(), rev);
        true
    }

    /// Every revocation, by node name.
    pub fn all(&self) -> Vec<Revocation> {
        let map = self.by_node.read().unwrap_or_else(|p| p.into_inner());
        map.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{create_ca, issue_admin_cert, issue_node_cert};

    fn bundle(c: &crate::pki::CertBundle) -> TlsBundle {
        TlsBundle::from_cert_bundle(c).expect("tls")
    }

    #[test]
    fn only_an_operator_of_this_cluster_can_revoke() {
        let ca = create_ca("prod").expect("ca");
        let node = bundle(&issue_node_cert(&ca, "n1", &[]).expect("node"));
        let ops = bundle(&issue_admin_cert(&ca, "ops", AdminRole::Operator).expect("ops"));
        let rev = Revocation::sign(&ops, "n3", 1_000).expect("sign");
        assert_eq!(rev.verify(&node), Ok("ops".to_owned()));

        // Tampered: another name or time under the same signature.
        let mut other = rev.clone();
        other.node = "n2".into();
        assert_eq!(other.verify(&node), Err(RevocationError::BadSignature));
        let mut later = rev.clone();
        later.unix_ms += 1;
        assert_eq!(later.verify(&node), Err(RevocationError::BadSignature));

        // Signed by another cluster's operator.
        let stranger_ca = create_ca("other").expect("ca");
        let stranger =
            bundle(&issue_admin_cert(&stranger_ca, "ops", AdminRole::Operator).expect("stranger"));
        let forged = Revocation::sign(&stranger, "n3", 1_000).expect("sign");
        assert!(matches!(
            forged.verify(&node),
            Err(RevocationError::NotThisCluster(_))
        ));

        // Signed by a read-only admin, or by a node, of this cluster.
        let viewer = bundle(&issue_admin_cert(&ca, "viewer", AdminRole::ReadOnly).expect("ro"));
        let by_viewer = Revocation::sign(&viewer, "n3", 1_000).expect("sign");
        assert_eq!(
            by_viewer.verify(&node),
            Err(RevocationError::ReadOnly("viewer".into()))
        );
        let by_node = Revocation::sign(&node, "n3", 1_000).expect("sign");
        assert!(matches!(
            by_node.verify(&node),
            Err(RevocationError::NotThisCluster(_))
        ));

        // Malformed fields and names.
        let mut garbage = rev.clone();
        garbage.signature = "%%%".into();
        assert_eq!(
            garbage.verify(&node),
            Err(RevocationError::Malformed("signature"))
        );
        let mut bad_name = rev;
        bad_name.node = "no_de".into();
        assert!(matches!(
            bad_name.verify(&node),
            Err(RevocationError::BadName(_))
        ));
        assert!(Revocation::sign(&ops, "", 1).is_err());
    }

    #[test]
    fn the_set_keeps_one_revocation_per_name() {
        let ca = create_ca("prod").expect("ca");
        let ops = bundle(&issue_admin_cert(&ca, "ops", AdminRole::Operator).expect("ops"));
        let set = RevokedSet::default();
        assert!(!set.contains("n3"));
        assert!(set.insert(Revocation::sign(&ops, "n3", 1).expect("sign")));
        assert!(!set.insert(Revocation::sign(&ops, "n3", 2).expect("sign")));
        assert!(set.contains("n3"));
        assert_eq!(set.all().len(), 1);
    }
}

/// The chitchat key under which a node passes on the revocations it holds.
pub(crate) const K_REVOKED: &str = "ballast.revoked";
/// Longest `ballast.revoked` value decoded from a peer.
const REVOKED_VALUE_BYTES_MAX: usize = 256 * 1024;

fn encode(revs: &[Revocation]) -> String {
    bincode::serde::encode_to_vec(revs, bincode::config::standard())
        .map(|bytes| B64.encode(bytes))
        .unwrap_or_default()
}

fn decode(value: &str) -> Result<Vec<Revocation>, String> {
    if value.len() > REVOKED_VALUE_BYTES_MAX {
        return Err(format!(
            "{K_REVOKED} longer than {REVOKED_VALUE_BYTES_MAX} bytes"
        ));
    }
    let bytes = B64
        .decode(value)
        .map_err(|_| format!("{K_REVOKED} is not base64"))?;
    let config = bincode::config::standard().with_limit::<REVOKED_VALUE_BYTES_MAX>();
    let (revs, used): (Vec<Revocation>, usize) = bincode::serde::decode_from_slice(&bytes, config)
        .map_err(|e| format!("{K_REVOKED} does not decode: {e}"))?;
    if used != bytes.len() || revs.len() > REVOCATIONS_MAX {
        return Err(format!(
            "{K_REVOKED} has trailing bytes or too many entries"
        ));
    }
    Ok(revs)
}

/// Applies revocations on one endpoint: its TLS verifiers' set, its connections, its
/// gossip key, and the agent's watch.
#[derive(Debug)]
pub(crate) struct Revoker {
    pub(crate) tls: TlsBundle,
    pub(crate) cache: Arc<crate::conn_cache::ConnCache>,
    pub(crate) count: tokio::sync::watch::Sender<usize>,
}

impl Revoker {
    /// Writes our `ballast.revoked` key from the set.
    pub(crate) fn publish(&self, own: &mut chitchat::NodeState) {
        let all = self.tls.revoked().all();
        if !all.is_empty() {
            own.set(K_REVOKED, encode(&all));
        }
    }

    /// Adds a verified revocation: refused from now on, its connections closed, passed
    /// on. True if it was new.
    pub(crate) fn apply(&self, rev: Revocation, own: &mut chitchat::NodeState) -> bool {
        let node = rev.node.clone();
        if !self.tls.revoked().insert(rev) {
            return false;
        }
        self.cache.close_node(&node);
        self.publish(own);
        self.count.send_replace(self.tls.revoked().all().len());
        true
    }

    /// The revocations peers pass on that are new to us and verify; `seen` remembers
    /// each peer's last value so that one is decoded once.
    pub(crate) fn learn(
        &self,
        seen: &mut std::collections::HashMap<chitchat::ChitchatId, String>,
        states: &BTreeMap<chitchat::ChitchatId, chitchat::NodeState>,
    ) -> Vec<Revocation> {
        seen.retain(|id, _| states.contains_key(id));
        let mut new = Vec::new();
        for (id, state) in states {
            let Some(value) = state.get(K_REVOKED) else {
                continue;
            };
            if seen.get(id).is_some_and(|v| v == value) {
                continue;
            }
            seen.insert(id.clone(), value.to_owned());
            let revs = match decode(value) {
                Ok(revs) => revs,
                Err(reason) => {
                    tracing::warn!(peer = %id.node_id, %reason, "revocations from a peer refused");
                    continue;
                }
            };
            for rev in revs {
                if self.tls.revoked().contains(&rev.node)
                    || new.iter().any(|r: &Revocation| r.node == rev.node)
                {
                    continue;
                }
                match rev.verify(&self.tls) {
                    Ok(admin) => {
                        tracing::info!(node = %rev.node, %admin, from = %id.node_id, "node revoked (learned from gossip)");
                        new.push(rev);
                    }
                    Err(e) => {
                        tracing::warn!(peer = %id.node_id, node = %rev.node, reason = %e, "revocation from a peer refused");
                    }
                }
            }
        }
        new
    }
}
