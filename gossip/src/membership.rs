//! The membership view: live peers with their load summaries, built from chitchat's
//! live nodes (phi-accrual failure detection) and checked against certificate bindings.
//!
//! A gossiped node `(id, generation, addr)` enters the view only when a TLS handshake
//! proved that the node at `addr` holds the certificate of `id`. An address bound to
//! another name means the node claims an id that is not its own: it is refused (left
//! out, logged, counted). An address not yet proven is dialled, and enters on success.
//!
//! Each peer also carries when we last heard from it ([`HeardClock`]): the moment its
//! heartbeat or its max key version last advanced in our chitchat state.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chitchat::{ChitchatId, Heartbeat, NodeState, Version};
use serde::{Serialize, Serializer};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::signed_state::Unverified;
use crate::summary::LoadSummary;

/// One live, verified peer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PeerView {
    /// The peer's node id (equal to the name in its certificate).
    pub node_id: String,
    /// Its gossip (and RPC) address.
    pub gossip_addr: SocketAddr,
    /// chitchat's generation of the peer (its start time in ms).
    pub generation: u64,
    /// Its published load summary.
    pub summary: LoadSummary,
    /// When its gossiped state (heartbeat or a key) last advanced here; serialized as
    /// `last_heard_ms_ago`. Refreshed in [`crate::Endpoint::live_peers`] every
    /// evaluation (every 250 ms, or half the gossip interval if longer) without waking [`crate::Endpoint::watch_peers`].
    #[serde(rename = "last_heard_ms_ago", serialize_with = "ms_ago")]
    pub last_heard: Instant,
}

impl PeerView {
    /// Milliseconds since we last heard from this peer.
    pub fn last_heard_ms_ago(&self) -> u64 {
        u64::try_from(self.last_heard.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Equal apart from `last_heard`: a heartbeat alone is not a view change.
    pub(crate) fn same_except_heard(&self, other: &Self) -> bool {
        self.node_id == other.node_id
            && self.gossip_addr == other.gossip_addr
            && self.generation == other.generation
            && self.summary == other.summary
    }
}

/// Serializes an instant as the milliseconds elapsed since it.
fn ms_ago<S: Serializer>(at: &Instant, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX))
}

/// What we last saw of one node's gossiped state, and when it last advanced.
#[derive(Clone, Copy, Debug)]
struct Heard {
    heartbeat: Heartbeat,
    max_version: Version,
    at: Instant,
}

/// When each node's gossiped state (heartbeat or max key version) last advanced here.
/// Holds only the nodes passed to the last [`HeardClock::observe`], so it is bounded
/// by chitchat's own node set.
#[derive(Debug, Default)]
pub(crate) struct HeardClock {
    nodes: BTreeMap<ChitchatId, Heard>,
}

impl HeardClock {
    /// Records the current `(id, heartbeat, max version)` of each node at `now`: a node
    /// seen for the first time, or whose heartbeat or max version changed, is heard at
    /// `now`; others keep their instant. Nodes not listed are forgotten.
    pub(crate) fn observe(
        &mut self,
        now: Instant,
        states: impl IntoIterator<Item = (ChitchatId, Heartbeat, Version)>,
    ) {
        let mut next = BTreeMap::new();
        for (id, heartbeat, max_version) in states {
            let at = match self.nodes.get(&id) {
                Some(h) if h.heartbeat == heartbeat && h.max_version == max_version => h.at,
                _ => now,
            };
            next.insert(
                id,
                Heard {
                    heartbeat,
                    max_version,
                    at,
                },
            );
        }
        self.nodes = next;
    }

    /// When `id` was last heard, if it was observed.
    pub(crate) fn heard(&self, id: &ChitchatId) -> Option<Instant> {
        self.nodes.get(id).map(|h| h.at)
    }
}

/// The outcome of one evaluation of chitchat's live nodes.
#[derive(Debug, Default)]
pub(crate) struct ViewOutcome {
    pub(crate) peers: Vec<PeerView>,
    /// Addresses whose certificate is not known yet: dial them.
    pub(crate) unverified: Vec<SocketAddr>,
    /// `(claimed id, addr, proven name)` of nodes refused for a wrong id.
    pub(crate) mismatches: Vec<(String, SocketAddr, String)>,
    /// `(id, why)` of nodes whose summary no signature of theirs covers (yet).
    pub(crate) untrusted: Vec<(String, Unverified)>,
}

/// A peer that shares no protocol version with this node (shown in `status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct IncompatiblePeer {
    /// Its node id.
    pub node: String,
    /// Its address.
    pub addr: SocketAddr,
    /// The lowest protocol version it speaks.
    pub min: u32,
    /// The highest.
    pub max: u32,
}

impl ViewOutcome {
    /// The peers left alone for sharing no protocol version.
    pub(crate) fn incompatible(
        &self,
        addr_of: impl Fn(&str) -> Option<SocketAddr>,
    ) -> Vec<IncompatiblePeer> {
        self.untrusted
            .iter()
            .filter_map(|(node, why)| match why {
                Unverified::Incompatible { min, max } => Some(IncompatiblePeer {
                    node: node.clone(),
                    addr: addr_of(node)?,
                    min: *min,
                    max: *max,
                }),
                _ => None,
            })
            .collect()
    }
}

/// Builds the view; pure apart from the `name_at` lookup and `signed`, which gives the
/// summary a peer's own signature covers (`signed_state`). A peer `heard` knows
/// nothing of is stamped `now`.
pub(crate) fn compute_view(
    self_id: &str,
    self_addr: SocketAddr,
    live: &BTreeMap<ChitchatId, NodeState>,
    heard: &HeardClock,
    now: Instant,
    name_at: impl Fn(&SocketAddr) -> Option<String>,
    mut signed: impl FnMut(&ChitchatId, &NodeState) -> Result<LoadSummary, Unverified>,
) -> ViewOutcome {
    let mut out = ViewOutcome::default();
    let mut best: BTreeMap<String, PeerView> = BTreeMap::new();
    for (id, state) in live {
        let node_id = id.node_id.as_ref();
        let addr = id.gossip_advertise_addr;
        if node_id == self_id && addr == self_addr {
            continue;
        }
        match name_at(&addr) {
            None => {
                out.unverified.push(addr);
                continue;
            }
            Some(proven) if proven != node_id => {
                out.mismatches.push((node_id.to_owned(), addr, proven));
                continue;
            }
            Some(_) if node_id == self_id => continue, // an older generation of us
            Some(_) => {}
        }
        let summary = match signed(id, state) {
            Ok(s) => s,
            Err(why) => {
                out.untrusted.push((node_id.to_owned(), why));
                continue;
            }
        };
        let view = PeerView {
            node_id: node_id.to_owned(),
            gossip_addr: addr,
            generation: id.generation_id,
            summary,
            last_heard: heard.heard(id).unwrap_or(now),
        };
        match best.get(node_id) {
            Some(b) if b.generation >= view.generation => {}
            _ => {
                best.insert(node_id.to_owned(), view);
            }
        }
    }
    out.peers = best.into_values().collect();
    out
}

/// Most distinct refusals remembered so each is logged once; then the memory resets.
const REPORTED_MAX: usize = 4_096;
/// Shortest re-evaluation period even without changes (picks up new bindings, summary
/// fixes); the endpoint uses half its gossip interval when that is longer.
pub(crate) const VIEW_REFRESH: Duration = Duration::from_millis(250);

/// Remembers which refusals were already logged.
#[derive(Default)]
pub(crate) struct Reported {
    seen: HashSet<String>,
}

impl Reported {
    /// True the first time `key` is seen.
    pub(crate) fn first(&mut self, key: String) -> bool {
        if self.seen.len() >= REPORTED_MAX {
            self.seen.clear();
        }
        self.seen.insert(key)
    }
}

/// Logs what an evaluation refused, once per distinct case; returns the new mismatches.
pub(crate) fn report(outcome: &ViewOutcome, reported: &mut Reported) -> usize {
    let mut new_mismatches = 0;
    for (claimed, addr, proven) in &outcome.mismatches {
        if reported.first(format!("m|{claimed}|{addr}|{proven}")) {
            new_mismatches += 1;
            warn!(claimed_id = %claimed, %addr, certificate = %proven, reason = "gossiped node id differs from the certificate at its address", "node refused");
        }
    }
    for (id, why) in &outcome.untrusted {
        match why {
            Unverified::Unsigned | Unverified::Pending => {
                if reported.first(format!("u|{id}")) {
                    debug!(node = %id, "peer left out of the view: no signed load summary yet");
                }
            }
            Unverified::Incompatible { min, max } => {
                if reported.first(format!("p|{id}|{min}|{max}")) {
                    warn!(node = %id, their_min = min, their_max = max, ours_min = crate::summary::PROTOCOL_MIN, ours_max = crate::summary::PROTOCOL_VERSION, "peer left alone: it shares no protocol version with this node");
                }
            }
            Unverified::UnsignedAfterSigned => {
                if reported.first(format!("d|{id}")) {
                    warn!(node = %id, reason = "it signed its state before and now gossips the unsigned state of ballast 0.1: a forgery, or a host taken back to 0.1 (restart this agent to accept that)", "peer left out of the view");
                }
            }
            Unverified::Revoked => {
                if reported.first(format!("r|{id}")) {
                    warn!(node = %id, "peer left out of the view: its name is revoked");
                }
            }
            Unverified::Invalid(reason) => {
                if reported.first(format!("i|{id}|{reason}")) {
                    if reason.starts_with("missing") {
                        debug!(node = %id, %reason, "peer left out of the view: no load summary yet");
                    } else {
                        warn!(node = %id, %reason, "peer left out of the view: invalid load summary");
                    }
                }
            }
            Unverified::Stale(age) => {
                if reported.first(format!("s|{id}")) {
                    warn!(node = %id, seconds = age.as_secs(), "peer left out of the view: its signed state stopped advancing (relayed heartbeats are not its own)");
                }
            }
        }
    }
    new_mismatches
}

/// The published view.
pub(crate) type ViewTx = watch::Sender<Arc<Vec<PeerView>>>;

/// Publishes `peers`: watchers are woken only when membership or a summary changed;
/// a newer `last_heard` alone replaces the view silently (readers still see it).
pub(crate) fn publish_view(view_tx: &ViewTx, peers: Vec<PeerView>) {
    view_tx.send_if_modified(|current| {
        if **current == peers {
            return false;
        }
        let changed = current.len() != peers.len()
            || current
                .iter()
                .zip(&peers)
                .any(|(a, b)| !a.same_except_heard(b));
        *current = Arc::new(peers);
        changed
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use chitchat::ChitchatId;

    fn id(n: &str) -> ChitchatId {
        ChitchatId::new(n.to_owned(), 1, "127.0.0.1:1".parse().expect("addr"))
    }

    fn beat(n: u64) -> Heartbeat {
        // Heartbeat's field is private to chitchat: build one through serde.
        serde_json::from_value(serde_json::json!(n)).expect("heartbeat")
    }

    #[test]
    fn heard_advances_only_on_new_heartbeat_or_version() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let t2 = t0 + Duration::from_secs(2);
        let mut clock = HeardClock::default();
        clock.observe(t0, [(id("a"), beat(1), 5), (id("b"), beat(1), 5)]);
        assert_eq!(clock.heard(&id("a")), Some(t0));
        // a: nothing new; b: heartbeat advanced.
        clock.observe(t1, [(id("a"), beat(1), 5), (id("b"), beat(2), 5)]);
        assert_eq!(clock.heard(&id("a")), Some(t0));
        assert_eq!(clock.heard(&id("b")), Some(t1));
        // a: a key changed (max version); b gone from chitchat: forgotten.
        clock.observe(t2, [(id("a"), beat(1), 6)]);
        assert_eq!(clock.heard(&id("a")), Some(t2));
        assert_eq!(clock.heard(&id("b")), None);
    }

    fn view(load: f64, at: Instant) -> PeerView {
        PeerView {
            node_id: "a".into(),
            gossip_addr: "127.0.0.1:1".parse().expect("addr"),
            generation: 1,
            summary: LoadSummary {
                load,
                cpu_capacity: 4.0,
                io_capacity: 1e9,
                mem_capacity: 8e9,
                mem_free: 4e9,
                vm_count: 1,
                state: crate::summary::NodeRunState::Active,
                rpc_addr: "127.0.0.1:1".parse().expect("addr"),
                protocol_version: 2,
                protocol_min: 2,
                tags: Vec::new(),
            },
            last_heard: at,
        }
    }

    #[test]
    fn a_newer_heartbeat_replaces_the_view_without_waking_watchers() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let (tx, mut rx) = watch::channel(Arc::new(vec![view(1.0, t0)]));
        rx.mark_unchanged();
        publish_view(&tx, vec![view(1.0, t1)]);
        assert!(
            !rx.has_changed().expect("open"),
            "heartbeat alone is silent"
        );
        assert_eq!(rx.borrow()[0].last_heard, t1, "readers see the new instant");
        publish_view(&tx, vec![view(2.0, t1)]);
        assert!(
            rx.has_changed().expect("open"),
            "a summary change wakes watchers"
        );
        rx.mark_unchanged();
        publish_view(&tx, vec![]);
        assert!(
            rx.has_changed().expect("open"),
            "a peer leaving wakes watchers"
        );
    }

    #[test]
    fn json_carries_the_age_in_ms() {
        let v = view(1.0, Instant::now() - Duration::from_millis(1_500));
        let j = serde_json::to_value(&v).expect("json");
        let ms = j["last_heard_ms_ago"].as_u64().expect("u64 field");
        assert!(ms >= 1_500, "{j}");
        assert!(v.last_heard_ms_ago() >= ms);
    }
}
