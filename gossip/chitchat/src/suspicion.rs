//! Suspicion (ballast patch): failure detection for clusters larger than the digest
//! bound, where a node no longer hears every peer's heartbeat regularly.
//!
//! With digests of `max_digest_nodes` out of N nodes, a given peer's heartbeat reaches
//! a node only about `6 × bound / N` times a round, at random times; the phi detector,
//! which judges each pair alone from those arrivals, then either flaps (some of the
//! N² pairs always see a long gap) or, with a threshold high enough not to, detects
//! late. Suspicion judges a node by what happens when somebody talks to it instead:
//! 1. Every SYN is a probe. When a node sent a SYN to a live peer and heard nothing
//!    from that address within the ack timeout, it suspects the peer: it writes the
//!    key `__suspect:GENERATION:NODE_ID` in its own state, valued with the peer's
//!    incarnation as known here (the peer's `__incarnation` key, 0 when absent).
//! 2. The key spreads like any other (a rumour: every node that learns it lists the
//!    suspecter in its next digests).
//! 3. A node that finds itself suspected at its current incarnation (or later) refutes
//!    it: it writes a higher `__incarnation`, which spreads the same way.
//! 4. A suspicion is refuted wherever the suspect's incarnation known there is above the
//!    suspicion's. A node counts a peer dead once an unrefuted suspicion of it has stood
//!    here for the hold time (long enough for a refutation to come round).
//!
//! A node suspects only while it is itself healthy: when more than one in eight of its
//! recent probes went unanswered, the fault is more likely its own (an overloaded node,
//! a link being set up) than the peer's, and it suspects nobody (Lifeguard's "local
//! health", in spirit). One dead peer among its probes stays well below that.
//!
//! Only the rare events (a probe without answer, a refutation) travel, so what a node
//! sends does not grow with the cluster. Suspicion is on only when the cluster is
//! larger than the digest bound; the phi detector's threshold is then multiplied by
//! `N / bound`, so that it stays a backstop (and still ends a dead node's state).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

use crate::ChitchatId;
use crate::state::ClusterState;

/// Prefix of a suspicion key; the rest is `GENERATION:NODE_ID` of the suspect.
pub const SUSPECT_KEY_PREFIX: &str = "__suspect:";
/// A node's incarnation: raised by the node itself to refute a suspicion.
pub const INCARNATION_KEY: &str = "__incarnation";
/// Most suspicion keys a node keeps in its own state at once.
const OWN_SUSPICIONS_MAX: usize = 32;
/// Recent probe outcomes a node judges its own health by.
const RECENT_PROBES: usize = 32;
/// A node suspects nobody while more of its recent probes than this went unanswered.
const UNANSWERED_MAX: usize = RECENT_PROBES / 8;

/// A peer's incarnation as written in its state (0 when it never wrote one).
fn incarnation(cluster_state: &ClusterState, id: &ChitchatId) -> u64 {
    cluster_state
        .node_state(id)
        .and_then(|state| state.get(INCARNATION_KEY))
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

/// The suspicion key for `id`.
fn suspect_key(id: &ChitchatId) -> String {
    format!("{SUSPECT_KEY_PREFIX}{}:{}", id.generation_id, id.node_id)
}

/// `(generation, node_id)` of a suspicion key's suspect (the key without its prefix).
fn parse_suspect(rest: &str) -> Option<(u64, &str)> {
    let (generation, node_id) = rest.split_once(':')?;
    Some((generation.parse().ok()?, node_id))
}

/// The suspicion state of one node: its probes awaiting an answer, and the suspicions
/// it has seen standing.
#[derive(Debug)]
pub(crate) struct Suspicion {
    hold: Duration,
    ack_timeout: Duration,
    /// Addresses we sent a SYN to and have not heard from since: when we sent it.
    awaiting: HashMap<SocketAddr, Instant>,
    /// Suspects with an unrefuted suspicion here: since when.
    standing: HashMap<ChitchatId, Instant>,
    /// Suspects whose suspicion has stood for the hold time.
    dead: HashSet<ChitchatId>,
    /// Our last [`RECENT_PROBES`] probes: answered in time or not.
    recent: VecDeque<bool>,
}

impl Suspicion {
    pub(crate) fn new(hold: Duration, ack_timeout: Duration) -> Self {
        Suspicion {
            hold,
            ack_timeout,
            awaiting: HashMap::new(),
            standing: HashMap::new(),
            dead: HashSet::new(),
            recent: VecDeque::with_capacity(RECENT_PROBES),
        }
    }

    fn record(&mut self, answered: bool) {
        if self.recent.len() == RECENT_PROBES {
            self.recent.pop_front();
        }
        self.recent.push_back(answered);
    }

    /// Whether we judge ourselves healthy enough to suspect others: a full window of
    /// recent probes with at most [`UNANSWERED_MAX`] unanswered.
    fn healthy(&self) -> bool {
        self.recent.len() == RECENT_PROBES
            && self.recent.iter().filter(|answered| !**answered).count() <= UNANSWERED_MAX
    }

    /// A SYN went to `addr` (the first unanswered one counts).
    pub(crate) fn note_sent(&mut self, addr: SocketAddr, now: Instant) {
        self.awaiting.entry(addr).or_insert(now);
    }

    /// A message came from `addr`: it answers our probes.
    pub(crate) fn note_heard(&mut self, addr: &SocketAddr) {
        if self.awaiting.remove(addr).is_some() {
            self.record(true);
        }
    }

    /// Whether `id` counts as dead by suspicion.
    pub(crate) fn is_dead(&self, id: &ChitchatId) -> bool {
        self.dead.contains(id)
    }

    /// Suspicion switched off (the cluster fits the digest bound): forget everything and
    /// take back our own suspicions.
    pub(crate) fn clear(&mut self, self_id: &ChitchatId, cluster_state: &mut ClusterState) {
        self.awaiting.clear();
        self.recent.clear();
        self.standing.clear();
        self.dead.clear();
        let own: Vec<String> = match cluster_state.node_state(self_id) {
            Some(state) => state
                .iter_prefix(SUSPECT_KEY_PREFIX)
                .map(|(key, _)| key.to_string())
                .collect(),
            None => return,
        };
        if let Some(state) = cluster_state.node_state_mut(self_id) {
            for key in own {
                state.delete(&key);
            }
        }
    }

    /// Once a round: turns unanswered probes of live peers into suspicions, refutes
    /// suspicions of ourselves, takes back our refuted ones, and updates which
    /// suspects count as dead. `live` tells the peers the phi detector counts live.
    pub(crate) fn evaluate(
        &mut self,
        self_id: &ChitchatId,
        cluster_state: &mut ClusterState,
        live: impl Fn(&ChitchatId) -> bool,
        now: Instant,
    ) {
        let by_name: HashMap<(u64, &str), &ChitchatId> = cluster_state
            .nodes()
            .map(|id| ((id.generation_id, &*id.node_id), id))
            .collect();
        // Suspicions standing anywhere (ours included), and of ourselves.
        let mut unrefuted: HashSet<ChitchatId> = HashSet::new();
        let mut against_us: Option<u64> = None;
        let mut own_refuted: Vec<String> = Vec::new();
        for (holder, state) in cluster_state.node_states() {
            for (key, value) in state.iter_prefix(SUSPECT_KEY_PREFIX) {
                let Some(parsed) = parse_suspect(&key[SUSPECT_KEY_PREFIX.len()..]) else {
                    continue;
                };
                let suspected_at: u64 = value.value.parse().unwrap_or(0);
                let Some(&suspect) = by_name.get(&parsed) else {
                    if holder == self_id {
                        own_refuted.push(key.to_string());
                    }
                    continue;
                };
                if suspect == self_id {
                    against_us = against_us.max(Some(suspected_at));
                } else if suspected_at >= incarnation(cluster_state, suspect) {
                    unrefuted.insert(suspect.clone());
                } else if holder == self_id {
                    own_refuted.push(key.to_string());
                }
            }
        }
        // Probes without an answer: suspect the live peers nobody suspects yet.
        let timeout = self.ack_timeout;
        let mut expired: Vec<SocketAddr> = Vec::new();
        self.awaiting.retain(|addr, sent| {
            let waiting = now.duration_since(*sent) < timeout;
            if !waiting {
                expired.push(*addr);
            }
            waiting
        });
        for _ in &expired {
            self.record(false);
        }
        if !self.healthy() {
            expired.clear();
        }
        let mut new_suspicions: Vec<(String, u64)> = Vec::new();
        for addr in expired {
            let suspect = cluster_state.nodes().find(|id| {
                id.gossip_advertise_addr == addr && *id != self_id && live(id) && !self.is_dead(id)
            });
            if let Some(suspect) = suspect {
                if unrefuted.insert(suspect.clone()) {
                    info!(node_id = %suspect.node_id, "no answer to a probe: suspecting the node");
                    new_suspicions
                        .push((suspect_key(suspect), incarnation(cluster_state, suspect)));
                }
            }
        }
        let own_incarnation = incarnation(cluster_state, self_id);
        if let Some(state) = cluster_state.node_state_mut(self_id) {
            for key in &own_refuted {
                state.delete(key);
            }
            let mut own = state.iter_prefix(SUSPECT_KEY_PREFIX).count();
            for (key, at) in new_suspicions {
                if own < OWN_SUSPICIONS_MAX {
                    state.set(key, at);
                    own += 1;
                }
            }
            if let Some(at) = against_us.filter(|at| *at >= own_incarnation) {
                info!(incarnation = at + 1, "suspected by a peer: refuting");
                state.set(INCARNATION_KEY, at + 1);
            }
        }
        self.standing.retain(|id, _| unrefuted.contains(id));
        for id in unrefuted {
            self.standing.entry(id).or_insert(now);
        }
        let hold = self.hold;
        self.dead = self
            .standing
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= hold)
            .map(|(id, _)| id.clone())
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::time::Instant;

    use super::{INCARNATION_KEY, Suspicion, suspect_key};
    use crate::ChitchatId;
    use crate::state::ClusterState;

    fn id(port: u16) -> ChitchatId {
        ChitchatId::for_local_test(port)
    }

    fn cluster(ports: &[u16]) -> ClusterState {
        let mut cs = ClusterState::default();
        for p in ports {
            cs.node_state_mut_or_init(&id(*p)).set("k", "v");
        }
        cs
    }

    const HOLD: Duration = Duration::from_secs(10);
    const ACK: Duration = Duration::from_secs(1);

    /// A suspicion state whose recent probes were all answered.
    fn healthy() -> Suspicion {
        let mut s = Suspicion::new(HOLD, ACK);
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for _ in 0..super::RECENT_PROBES {
            s.note_sent(peer, Instant::now());
            s.note_heard(&peer);
        }
        s
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_probe_suspects_and_the_suspicion_kills_after_the_hold() {
        let (me, x) = (id(1), id(2));
        let mut cs = cluster(&[1, 2, 3]);
        let mut s = healthy();
        let t0 = Instant::now();
        s.note_sent(x.gossip_advertise_addr, t0);
        s.evaluate(&me, &mut cs, |_| true, t0 + ACK / 2);
        assert!(cs.node_state(&me).unwrap().get(&suspect_key(&x)).is_none());
        s.evaluate(&me, &mut cs, |_| true, t0 + ACK);
        assert_eq!(cs.node_state(&me).unwrap().get(&suspect_key(&x)), Some("0"));
        assert!(!s.is_dead(&x));
        s.evaluate(&me, &mut cs, |_| true, t0 + ACK + HOLD / 2);
        assert!(!s.is_dead(&x));
        s.evaluate(&me, &mut cs, |_| true, t0 + ACK + HOLD);
        assert!(s.is_dead(&x));
        assert!(!s.is_dead(&id(3)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answered_probe_suspects_nobody() {
        let (me, x) = (id(1), id(2));
        let mut cs = cluster(&[1, 2]);
        let mut s = healthy();
        let t0 = Instant::now();
        s.note_sent(x.gossip_advertise_addr, t0);
        s.note_heard(&x.gossip_advertise_addr);
        s.evaluate(&me, &mut cs, |_| true, t0 + ACK * 2);
        assert_eq!(
            cs.node_state(&me)
                .unwrap()
                .iter_prefix("__suspect:")
                .count(),
            0
        );
        // A probe of an address no node has, or of a node the phi detector counts dead,
        // suspects nobody either.
        let stranger: SocketAddr = "127.0.0.1:9".parse().unwrap();
        s.note_sent(stranger, t0);
        s.note_sent(x.gossip_advertise_addr, t0);
        s.evaluate(&me, &mut cs, |_| false, t0 + ACK * 2);
        assert_eq!(
            cs.node_state(&me)
                .unwrap()
                .iter_prefix("__suspect:")
                .count(),
            0
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_whose_own_probes_go_unanswered_suspects_nobody() {
        let (me, x) = (id(1), id(2));
        let mut cs = cluster(&[1, 2, 3]);
        // Before a full window of outcomes, and with many unanswered: no suspicion.
        let mut fresh = Suspicion::new(HOLD, ACK);
        let t0 = Instant::now();
        fresh.note_sent(x.gossip_advertise_addr, t0);
        fresh.evaluate(&me, &mut cs, |_| true, t0 + ACK);
        assert_eq!(
            cs.node_state(&me)
                .unwrap()
                .iter_prefix("__suspect:")
                .count(),
            0
        );
        let mut s = healthy();
        for port in 100..105u16 {
            s.note_sent(id(port).gossip_advertise_addr, t0);
        }
        s.evaluate(&me, &mut cs, |_| true, t0 + ACK);
        s.note_sent(x.gossip_advertise_addr, t0 + ACK);
        s.evaluate(&me, &mut cs, |_| true, t0 + ACK * 2);
        assert_eq!(
            cs.node_state(&me)
                .unwrap()
                .iter_prefix("__suspect:")
                .count(),
            0
        );
        // Healthy again (answers since), the next unanswered probe suspects.
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for _ in 0..super::RECENT_PROBES {
            s.note_sent(peer, t0 + ACK * 2);
            s.note_heard(&peer);
        }
        s.note_sent(x.gossip_advertise_addr, t0 + ACK * 2);
        s.evaluate(&me, &mut cs, |_| true, t0 + ACK * 3);
        assert_eq!(cs.node_state(&me).unwrap().get(&suspect_key(&x)), Some("0"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_suspect_refutes_and_the_refutation_clears_the_suspicion() {
        let (y, x) = (id(1), id(2));
        let mut at_y = cluster(&[1, 2]);
        let mut sy = healthy();
        let t0 = Instant::now();
        sy.note_sent(x.gossip_advertise_addr, t0);
        sy.evaluate(&y, &mut at_y, |_| true, t0 + ACK);
        let key = suspect_key(&x);
        assert_eq!(at_y.node_state(&y).unwrap().get(&key), Some("0"));

        // x learns y's suspicion (y's key reaches x's copy of y) and refutes.
        let mut at_x = cluster(&[1, 2]);
        at_x.node_state_mut(&y).unwrap().set(&key, "0");
        let mut sx = Suspicion::new(HOLD, ACK);
        sx.evaluate(&x, &mut at_x, |_| true, t0 + ACK);
        assert_eq!(at_x.node_state(&x).unwrap().get(INCARNATION_KEY), Some("1"));

        // The refutation reaches y: the suspicion no longer stands, y takes its key back,
        // and x does not die when the hold has passed.
        at_y.node_state_mut(&x).unwrap().set(INCARNATION_KEY, "1");
        sy.evaluate(&y, &mut at_y, |_| true, t0 + ACK + HOLD);
        assert!(!sy.is_dead(&x));
        assert_eq!(at_y.node_state(&y).unwrap().get(&key), None);
        let live: HashSet<_> = at_y.nodes().filter(|n| !sy.is_dead(n)).collect();
        assert_eq!(live.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_suspicion_at_an_older_incarnation_is_refuted_already() {
        let (z, x, y) = (id(1), id(2), id(3));
        let mut at_z = cluster(&[1, 2, 3]);
        at_z.node_state_mut(&x).unwrap().set(INCARNATION_KEY, "4");
        at_z.node_state_mut(&y).unwrap().set(suspect_key(&x), "3");
        let mut s = Suspicion::new(HOLD, ACK);
        let t0 = Instant::now();
        s.evaluate(&z, &mut at_z, |_| true, t0);
        s.evaluate(&z, &mut at_z, |_| true, t0 + HOLD * 2);
        assert!(!s.is_dead(&x));
        // At x's current incarnation it stands, and kills after the hold.
        at_z.node_state_mut(&y).unwrap().set(suspect_key(&x), "4");
        s.evaluate(&z, &mut at_z, |_| true, t0 + HOLD * 2);
        assert!(!s.is_dead(&x));
        s.evaluate(&z, &mut at_z, |_| true, t0 + HOLD * 3);
        assert!(s.is_dead(&x));
    }
}
