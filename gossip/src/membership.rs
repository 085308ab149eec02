//! The membership view: live peers with their load summaries, built from chitchat's
//! live nodes (phi-accrual failure detection) and checked against certificate bindings.
//!
//! A gossiped node `(id, generation, addr)` enters the view only when a TLS handshake
//! proved that the node at `addr` holds the certificate of `id`. An address bound to
//! another name means the node claims an id that is not its own: it is refused (left
//! out, logged, counted). An address not yet proven is dialled, and enters on success.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chitchat::{ChitchatId, NodeState};
use serde::Serialize;
use tokio::sync::watch;
use tracing::{debug, warn};

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
}

/// The outcome of one evaluation of chitchat's live nodes.
#[derive(Debug, Default)]
pub(crate) struct ViewOutcome {
    pub(crate) peers: Vec<PeerView>,
    /// Addresses whose certificate is not known yet: dial them.
    pub(crate) unverified: Vec<SocketAddr>,
    /// `(claimed id, addr, proven name)` of nodes refused for a wrong id.
    pub(crate) mismatches: Vec<(String, SocketAddr, String)>,
    /// `(id, reason)` of nodes whose summary keys do not parse (or are not there yet).
    pub(crate) unparseable: Vec<(String, String)>,
}

/// Builds the view; pure apart from the `name_at` lookup.
pub(crate) fn compute_view(
    self_id: &str,
    self_addr: SocketAddr,
    live: &BTreeMap<ChitchatId, NodeState>,
    name_at: impl Fn(&SocketAddr) -> Option<String>,
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
        let summary = match LoadSummary::from_lookup(|k| state.get(k)) {
            Ok(s) => s,
            Err(reason) => {
                out.unparseable.push((node_id.to_owned(), reason));
                continue;
            }
        };
        let view = PeerView {
            node_id: node_id.to_owned(),
            gossip_addr: addr,
            generation: id.generation_id,
            summary,
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
/// Re-evaluation period even without changes (picks up new bindings, summary fixes).
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

/// Logs what an evaluation refused, once per distinct case; returns new mismatches.
pub(crate) fn report(outcome: &ViewOutcome, reported: &mut Reported) -> usize {
    let mut new_mismatches = 0;
    for (claimed, addr, proven) in &outcome.mismatches {
        if reported.first(format!("m|{claimed}|{addr}|{proven}")) {
            new_mismatches += 1;
            warn!(claimed_id = %claimed, %addr, certificate = %proven, reason = "gossiped node id differs from the certificate at its address", "node refused");
        }
    }
    for (id, reason) in &outcome.unparseable {
        if reported.first(format!("u|{id}|{reason}")) {
            if reason.starts_with("missing") {
                debug!(node = %id, %reason, "peer left out of the view: no load summary yet");
            } else {
                warn!(node = %id, %reason, "peer left out of the view: invalid load summary");
            }
        }
    }
    new_mismatches
}

/// The published view.
pub(crate) type ViewTx = watch::Sender<Arc<Vec<PeerView>>>;
