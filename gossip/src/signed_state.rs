//! Signed node state: each node signs its own `ballast.*` keys with its node key, and a
//! receiver uses a peer's summary only when that peer's signature over it verifies.
//!
//! Gossip is relayed: any holder of a node certificate can pass on made-up values "about"
//! another node. So the node publishes, beside its summary, `ballast.cert` (its
//! certificate, once) and `ballast.sig` = `SEQ:SIGNATURE`, an ECDSA P-256 signature over
//! its node id, chitchat generation, `SEQ` and every other `ballast.*` key and value. A
//! receiver checks the certificate against the cluster CA (it must name that node and
//! be a node certificate), then the signature, and keeps the last summary that verified.
//! Values that no signature covers are never used: a relayed forgery changes nothing
//! but a counter and a log line.
//!
//! Liveness is signed too: a node signs again every [`RESIGN_ROUNDS`] gossip rounds even
//! when nothing changed (a higher `SEQ`), and a peer whose signed state has not advanced
//! for [`STALE_ROUNDS`] rounds leaves the view, so relayed heartbeats cannot keep a dead
//! node in it. Every node receives every signature, so past 128 nodes the period grows
//! with the cluster ([`resign_rounds`]): a node then receives 8 to 16 signatures a round
//! whatever the cluster's size. The signer publishes its period in `ballast.resign_rounds`
//! (signed), and a peer's stale bound follows the period it published.
//! (docs/design.md, "Signed node state".)

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chitchat::{ChitchatId, NodeState};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::SigningKey;
use rustls::{RootCertStore, SignatureScheme};

use crate::error::TlsError;
use crate::identity::{identity_from_cert, Role};
use crate::summary::{LoadSummary, SUMMARY_KEYS};
use crate::tls::TlsBundle;

/// The key holding the node's certificate (DER, base64).
pub(crate) const K_CERT: &str = "ballast.cert";
/// The key holding `SEQ:SIGNATURE` (signature DER, base64).
pub(crate) const K_SIG: &str = "ballast.sig";
/// The key holding the signer's re-sign period, in rounds (see [`resign_rounds`]).
pub(crate) const K_RESIGN: &str = "ballast.resign_rounds";
/// A node of up to 128 nodes signs again after this many gossip rounds without a change.
pub(crate) const RESIGN_ROUNDS: u32 = 8;
/// Longest re-sign period accepted from a peer, in rounds.
const RESIGN_ROUNDS_MAX: u32 = 1024;
/// A peer whose signed state has not advanced for this many rounds leaves the view
/// (at the shortest period: the bound is 3 periods).
pub(crate) const STALE_ROUNDS: u32 = 3 * RESIGN_ROUNDS;
/// Nodes up to which [`RESIGN_ROUNDS`] holds.
const RESIGN_NODES: usize = 128;

/// The re-sign period for a cluster of `nodes`: 8 rounds up to 128 nodes, then doubled
/// each time the cluster doubles (16 up to 256, 32 up to 512, 64 up to 1 024, …), so
/// that a node receives at most 16 signatures a round.
pub(crate) fn resign_rounds(nodes: usize) -> u32 {
    let doublings = nodes.div_ceil(RESIGN_NODES).max(1).next_power_of_two();
    u32::try_from(doublings)
        .unwrap_or(u32::MAX)
        .saturating_mul(RESIGN_ROUNDS)
        .min(RESIGN_ROUNDS_MAX)
}

/// Longest `ballast.cert` / `ballast.sig` value accepted, in bytes.
const VALUE_BYTES_MAX: usize = 8 * 1024;
/// Most certificates remembered as checked (by their text); then the memory resets.
const CERTS_MAX: usize = 16_384;

/// The bytes a signature covers: a domain tag, then each part length-prefixed.
pub(crate) fn signed_message<'a>(
    node_id: &str,
    generation: u64,
    seq: u64,
    keys: impl Iterator<Item = (&'a str, &'a str)>,
) -> Vec<u8> {
    let mut msg = b"ballast signed node state 1\0".to_vec();
    let mut part = |bytes: &[u8]| {
        msg.extend((bytes.len() as u64).to_le_bytes());
        msg.extend(bytes);
    };
    part(node_id.as_bytes());
    part(&generation.to_le_bytes());
    part(&seq.to_le_bytes());
    for (k, v) in keys {
        part(k.as_bytes());
        part(v.as_bytes());
    }
    msg
}

/// The keys a signature covers, in order: the summary's, the certificate and the re-sign
/// period. Other keys are neither signed nor read, so a relayed extra key changes nothing.
fn signed_key_names() -> impl Iterator<Item = &'static str> {
    SUMMARY_KEYS.into_iter().chain([K_CERT, K_RESIGN])
}

/// The signed keys present in a node state, with their values, in order.
pub(crate) fn signed_keys(state: &NodeState) -> impl Iterator<Item = (&str, &str)> {
    signed_key_names().filter_map(|k| state.get(k).map(|v| (k, v)))
}

/// Signs our own node state.
pub(crate) struct StateSigner {
    key: Arc<dyn SigningKey>,
    cert_b64: String,
    seq: AtomicU64,
}

impl std::fmt::Debug for StateSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateSigner").finish_non_exhaustive()
    }
}

impl StateSigner {
    pub(crate) fn new(tls: &TlsBundle) -> Result<Self, TlsError> {
        let key = rustls::crypto::ring::sign::any_ecdsa_type(tls.key())?;
        Ok(Self {
            key,
            cert_b64: B64.encode(tls.leaf().as_ref()),
            seq: AtomicU64::new(0),
        })
    }

    /// Writes `ballast.cert` (if missing) and a new `ballast.sig` over our `ballast.*`
    /// keys as they are now.
    pub(crate) fn sign(&self, id: &ChitchatId, state: &mut NodeState) {
        state.set(K_CERT, &self.cert_b64);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let msg = signed_message(&id.node_id, id.generation_id, seq, signed_keys(state));
        match self.signature(&msg) {
            Some(sig) => state.set(K_SIG, format!("{seq}:{sig}")),
            // Our own key is P-256 (pki.rs); a failure here is a bug, never peer input.
            None => tracing::error!("cannot sign our node state with our node key"),
        }
    }

    /// Our signature of `msg`, base64.
    pub(crate) fn signature(&self, msg: &[u8]) -> Option<String> {
        let signer = self
            .key
            .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])?;
        signer.sign(msg).ok().map(|sig| B64.encode(sig))
    }

    /// Our certificate as `ballast.cert` carries it.
    #[cfg(test)]
    pub(crate) fn cert_value(&self) -> &str {
        &self.cert_b64
    }
}

/// Why a peer's state is not used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Unverified {
    /// No signature (yet): a node still starting, or one older than signed state.
    Unsigned,
    /// Values newer than its signature and no earlier verified state: wait for it.
    Pending,
    /// Its signed state has not advanced for this long: it stopped signing (dead), and
    /// any heartbeat relayed for it is not its own.
    Stale(Duration),
    /// An operator revoked its name.
    Revoked,
    /// Unsigned protocol-1 state under a name that signed its state before: a forgery
    /// (someone gossiping as a node of ballast 0.1), or that node went back to 0.1.
    UnsignedAfterSigned,
    /// It shares no protocol version with this build: left alone, never misread.
    Incompatible {
        /// Its lowest version.
        min: u32,
        /// Its highest.
        max: u32,
    },
    /// Its own signed summary is missing a key or does not parse (a node still starting,
    /// or a bug of its own; not a forgery).
    Invalid(String),
}

/// What we last verified of one peer.
#[derive(Clone, Debug)]
struct Verified {
    seq: u64,
    sig: String,
    summary: LoadSummary,
    advanced_at: Instant,
    /// Since when values newer than `sig` have been waiting for a signature.
    unsigned_since: Option<Instant>,
    /// Three of the re-sign periods it published (see [`resign_rounds`]).
    stale_after: Duration,
}

/// Checks peers' signed states and remembers the last one of each that verified.
pub(crate) struct StateVerifier {
    ca: Arc<dyn ClientCertVerifier>,
    /// Certificates already checked (base64 text) and the node they name, or why not.
    certs: HashMap<String, Result<(String, CertificateDer<'static>), String>>,
    verified: HashMap<ChitchatId, Verified>,
    /// Names whose state verified at least once, in any generation: such a name is
    /// never again accepted unsigned (see [`StateVerifier::accepts_unsigned`]).
    signed_names: HashSet<String>,
    /// The last signature of each node that did not verify (each is reported once).
    refused: HashMap<ChitchatId, String>,
    /// Refusals not yet taken by the view task.
    forged: Vec<(String, String)>,
    gossip_interval: Duration,
}

impl StateVerifier {
    pub(crate) fn new(tls: &TlsBundle, gossip_interval: Duration) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.add(tls.ca_cert().clone())?;
        let ca = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(TlsError::Verifier)?;
        Ok(Self {
            ca,
            certs: HashMap::new(),
            verified: HashMap::new(),
            signed_names: HashSet::new(),
            refused: HashMap::new(),
            forged: Vec::new(),
            gossip_interval,
        })
    }

    /// Whether unsigned state of `node` may be used: only a node that never signed (a
    /// node of ballast 0.1, which signs nothing, during a rolling upgrade). Once a name
    /// has signed, in any generation, its unsigned state is refused until this node
    /// restarts.
    pub(crate) fn accepts_unsigned(&self, node: &str) -> bool {
        !self.signed_names.contains(node)
    }

    /// Forgets peers chitchat no longer knows at all (dead ones are kept until chitchat
    /// forgets them, so a relayed heartbeat cannot bring one back as fresh).
    pub(crate) fn retain(&mut self, known: impl Fn(&ChitchatId) -> bool) {
        self.verified.retain(|id, _| known(id));
        self.refused.retain(|id, _| known(id));
    }

    /// The summary of `id` that its own signature covers, or why there is none. A state
    /// that does not verify is recorded (see [`StateVerifier::take_forged`]) and the last
    /// verified summary stays in use.
    pub(crate) fn check(
        &mut self,
        id: &ChitchatId,
        state: &NodeState,
        now: Instant,
    ) -> Result<LoadSummary, Unverified> {
        let Some(sig_value) = state.get_versioned(K_SIG).filter(|v| !v.is_deleted()) else {
            if self.verified.contains_key(id) {
                self.refuse(id, "", "its signature was removed".into());
            }
            return self.last_verified(id, now, Unverified::Unsigned);
        };
        let sig_version = sig_value.version;
        let sig = sig_value.value.as_str();
        let newer_values = signed_key_names()
            .filter_map(|k| state.get_versioned(k))
            .any(|v| v.version > sig_version);
        if let Some(prev) = self.verified.get_mut(id) {
            if prev.sig == sig {
                if !newer_values {
                    prev.unsigned_since = None;
                } else {
                    let since = *prev.unsigned_since.get_or_insert(now);
                    if now.duration_since(since) > prev.stale_after {
                        self.refuse(
                            id,
                            sig,
                            "values newer than its signature, never signed".into(),
                        );
                    }
                }
                return self.last_verified(id, now, Unverified::Pending);
            }
        }
        if self.refused.get(id).is_some_and(|r| r == sig) {
            return self.last_verified(id, now, Unverified::Pending);
        }
        match self.verify(id, state, sig) {
            Ok((_, Err(reason))) => Err(Unverified::Invalid(reason)),
            Ok((seq, Ok(summary))) => {
                if let Some(prev) = self.verified.get(id) {
                    if seq <= prev.seq {
                        let reason =
                            format!("signature {seq} replayed (already verified {})", prev.seq);
                        self.refuse(id, sig, reason);
                        return self.last_verified(id, now, Unverified::Pending);
                    }
                }
                if self.signed_names.len() < CERTS_MAX {
                    self.signed_names.insert(id.node_id.to_string());
                }
                self.verified.insert(
                    id.clone(),
                    Verified {
                        seq,
                        sig: sig.to_owned(),
                        summary: summary.clone(),
                        advanced_at: now,
                        unsigned_since: None,
                        stale_after: self.stale_after_for(state),
                    },
                );
                Ok(summary)
            }
            // Values and signature arrive in version order: a newer value than the
            // signature may be a delta cut short; keep the last verified state meanwhile.
            Err(_) if newer_values => self.last_verified(id, now, Unverified::Pending),
            Err(reason) => {
                self.refuse(id, sig, reason);
                self.last_verified(id, now, Unverified::Pending)
            }
        }
    }

    /// The last verified summary of `id`, unless it is too old (`Stale`); `none` if
    /// there is none.
    fn last_verified(
        &self,
        id: &ChitchatId,
        now: Instant,
        none: Unverified,
    ) -> Result<LoadSummary, Unverified> {
        match self.verified.get(id) {
            None => Err(none),
            Some(prev) if now.duration_since(prev.advanced_at) > prev.stale_after => {
                Err(Unverified::Stale(now.duration_since(prev.advanced_at)))
            }
            Some(prev) => Ok(prev.summary.clone()),
        }
    }

    /// The stale bound of a peer whose state just verified: three of its published re-sign
    /// periods (signed with it), [`RESIGN_ROUNDS`] when it published none.
    fn stale_after_for(&self, state: &NodeState) -> Duration {
        let period = state
            .get(K_RESIGN)
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(RESIGN_ROUNDS)
            .clamp(RESIGN_ROUNDS, RESIGN_ROUNDS_MAX);
        self.gossip_interval * period * (STALE_ROUNDS / RESIGN_ROUNDS)
    }

    /// Records that `sig` of `id` did not verify (once per signature).
    fn refuse(&mut self, id: &ChitchatId, sig: &str, reason: String) {
        if self.refused.get(id).is_some_and(|r| r == sig) {
            return;
        }
        if self.refused.len() >= CERTS_MAX {
            self.refused.clear();
        }
        self.refused.insert(id.clone(), sig.to_owned());
        self.forged.push((id.node_id.to_string(), reason));
    }

    /// The states refused since the last call: `(node, reason)`.
    pub(crate) fn take_forged(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.forged)
    }

    /// Verifies `sig` over the state's signed keys; the sequence number and the summary
    /// it covers (or why that summary does not parse).
    fn verify(
        &mut self,
        id: &ChitchatId,
        state: &NodeState,
        sig: &str,
    ) -> Result<(u64, Result<LoadSummary, String>), String> {
        let cert_b64 = state.get(K_CERT).ok_or_else(|| format!("no {K_CERT}"))?;
        let cert = self.certificate(cert_b64)?;
        if *cert.0 != *id.node_id {
            return Err(format!(
                "signed with the certificate of {:?}, not its own",
                cert.0
            ));
        }
        if sig.len() > VALUE_BYTES_MAX {
            return Err(format!("{K_SIG} longer than {VALUE_BYTES_MAX} bytes"));
        }
        let (seq, sig_b64) = sig
            .split_once(':')
            .ok_or_else(|| format!("{K_SIG} is not SEQ:SIGNATURE"))?;
        let seq: u64 = seq
            .parse()
            .map_err(|_| format!("{K_SIG} has a bad sequence number"))?;
        let sig_der = B64
            .decode(sig_b64)
            .map_err(|_| format!("{K_SIG} is not base64"))?;
        let msg = signed_message(&id.node_id, id.generation_id, seq, signed_keys(state));
        let end_entity = webpki::EndEntityCert::try_from(&cert.1)
            .map_err(|e| format!("certificate unusable: {e}"))?;
        end_entity
            .verify_signature(webpki::ring::ECDSA_P256_SHA256, &msg, &sig_der)
            .map_err(|_| "the signature does not match its values".to_owned())?;
        Ok((seq, LoadSummary::from_lookup(|k| state.get(k))))
    }

    /// The node a certificate (base64 DER) names, once it verified against the CA.
    fn certificate(&mut self, b64: &str) -> Result<(String, CertificateDer<'static>), String> {
        if let Some(known) = self.certs.get(b64) {
            return known.clone();
        }
        let checked = self.check_certificate(b64);
        if self.certs.len() >= CERTS_MAX {
            self.certs.clear();
        }
        self.certs.insert(b64.to_owned(), checked.clone());
        checked
    }

    fn check_certificate(&self, b64: &str) -> Result<(String, CertificateDer<'static>), String> {
        if b64.len() > VALUE_BYTES_MAX {
            return Err(format!("{K_CERT} longer than {VALUE_BYTES_MAX} bytes"));
        }
        let der = B64
            .decode(b64)
            .map_err(|_| format!("{K_CERT} is not base64"))?;
        let cert = CertificateDer::from(der);
        self.ca
            .verify_client_cert(&cert, &[], UnixTime::now())
            .map_err(|e| format!("certificate not of this cluster: {e}"))?;
        let identity = identity_from_cert(&cert).map_err(|e| e.to_string())?;
        if identity.role != Role::Node {
            return Err("not a node certificate".into());
        }
        Ok((identity.name, cert))
    }
}

/// A peer state that did not verify, as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ForgedState {
    /// The node the state claims to be.
    pub node: String,
    /// What did not verify.
    pub reason: String,
    /// When it was first seen (Unix ms).
    pub unix_ms: u64,
}

/// Most forged states remembered for `status`.
const FORGED_RECENT_MAX: usize = 16;

/// The recent forged states, newest last.
#[derive(Debug, Default)]
pub(crate) struct ForgeryLog {
    /// std lock: only deque operations under it.
    recent: std::sync::Mutex<std::collections::VecDeque<ForgedState>>,
}

impl ForgeryLog {
    pub(crate) fn record(&self, node: &str, reason: &str) {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() >= FORGED_RECENT_MAX {
            recent.pop_front();
        }
        recent.push_back(ForgedState {
            node: node.to_owned(),
            reason: reason.to_owned(),
            unix_ms,
        });
    }

    pub(crate) fn recent(&self) -> Vec<ForgedState> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use chitchat::NodeState;

    use super::{resign_rounds, StateSigner, StateVerifier, Unverified, K_RESIGN};
    use crate::endpoint_test_util::{summary, tls};
    use crate::pki::create_ca;

    #[test]
    fn the_resign_period_doubles_with_the_cluster_past_128_nodes() {
        let cases = [
            (1, 8),
            (128, 8),
            (129, 16),
            (256, 16),
            (257, 32),
            (1_000, 64),
            (1_024, 64),
            (10_000, 1_024),
            (1_000_000, 1_024),
        ];
        for (nodes, rounds) in cases {
            assert_eq!(resign_rounds(nodes), rounds, "{nodes} nodes");
        }
        // What a node receives: nodes / period signatures a round, at most 16.
        for nodes in [129, 200, 256, 500, 1_000, 2_000, 8_192] {
            assert!(
                nodes as f64 / f64::from(resign_rounds(nodes)) <= 16.0,
                "{nodes}"
            );
        }
    }

    /// A state of "test-node" signed with its own key, publishing `period` if given.
    fn signed_state(period: Option<u32>) -> (StateVerifier, NodeState) {
        let ca = create_ca("ballast").expect("ca");
        let mut state = NodeState::for_test();
        for (k, v) in summary(1.0).to_kv() {
            state.set(k, v);
        }
        if let Some(p) = period {
            state.set(K_RESIGN, p);
        }
        let id = state.chitchat_id().clone();
        StateSigner::new(&tls(&ca, "test-node"))
            .expect("signer")
            .sign(&id, &mut state);
        let verifier =
            StateVerifier::new(&tls(&ca, "node-v"), Duration::from_millis(100)).expect("verifier");
        (verifier, state)
    }

    #[test]
    fn a_peer_goes_stale_after_three_of_its_published_periods() {
        let round = Duration::from_millis(100);
        let t0 = Instant::now();
        for (period, stale_rounds) in [(None, 24), (Some(8), 24), (Some(64), 192)] {
            let (mut v, state) = signed_state(period);
            let id = state.chitchat_id().clone();
            assert!(v.check(&id, &state, t0).is_ok(), "{period:?}");
            let just_before = t0 + round * stale_rounds;
            assert!(v.check(&id, &state, just_before).is_ok(), "{period:?}");
            let after = t0 + round * (stale_rounds + 1);
            assert!(
                matches!(v.check(&id, &state, after), Err(Unverified::Stale(_))),
                "{period:?}: not stale after {} rounds",
                stale_rounds + 1
            );
        }
    }

    #[test]
    fn a_published_period_past_the_maximum_is_cut_to_it() {
        let round = Duration::from_millis(100);
        let t0 = Instant::now();
        let (mut v, state) = signed_state(Some(1_000_000));
        let id = state.chitchat_id().clone();
        assert!(v.check(&id, &state, t0).is_ok());
        let after = t0 + round * (3 * 1_024 + 1);
        assert!(matches!(
            v.check(&id, &state, after),
            Err(Unverified::Stale(_))
        ));
    }
}
