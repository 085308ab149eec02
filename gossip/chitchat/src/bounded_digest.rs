//! Bounded digests: which nodes a digest lists when `ChitchatConfig::max_digest_nodes` is
//! set, so that a message's size does not grow with the cluster.
//!
//! A bounded digest lists, in this order and up to the bound:
//! 1. the node itself (its own heartbeat is the freshest there is);
//! 2. nodes a peer's digest showed with a newer max version than our copy ("wanted"):
//!    listing them asks the peer for their delta (at most half the bound);
//! 3. nodes whose state advanced here recently, for a few digests, so that peers learn
//!    there is something newer and ask for it (at most a quarter of the bound);
//! 4. a window rotating over all the other nodes, so that every node (and its
//!    heartbeat) is listed within `nodes / window` digests.
//!
//! A peer answering a bounded digest sends deltas only for the nodes listed: a node
//! missing from the digest is not one the peer knows nothing of.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ops::Bound;

use crate::digest::Digest;
use crate::{ChitchatId, NodeState, Version};

/// Digests a node that advanced here stays listed in.
const RECENT_DIGESTS: u8 = 8;
/// Wanted and recent nodes remembered, as a multiple of the bound.
const MEMORY_FACTOR: usize = 4;

/// The state behind bounded digests: the rotating window's position and the wanted and
/// recent nodes (each bounded by `MEMORY_FACTOR` × the bound).
#[derive(Debug)]
pub(crate) struct DigestBudget {
    nodes_max: usize,
    /// Last node of the previous rotating window; the next one starts after it.
    cursor: Option<ChitchatId>,
    wanted: BTreeSet<ChitchatId>,
    /// Node → digests it is still to be listed in.
    recent: BTreeMap<ChitchatId, u8>,
}

impl DigestBudget {
    pub(crate) fn new(nodes_max: usize) -> Self {
        DigestBudget {
            nodes_max: nodes_max.max(1),
            cursor: None,
            wanted: BTreeSet::new(),
            recent: BTreeMap::new(),
        }
    }

    fn memory_max(&self) -> usize {
        self.nodes_max * MEMORY_FACTOR
    }

    /// Records the nodes a peer's digest shows newer than `ours` (our max version of a
    /// node, `None` if unknown).
    pub(crate) fn note_peer_digest(
        &mut self,
        digest: &Digest,
        ours: impl Fn(&ChitchatId) -> Option<Version>,
    ) {
        for (chitchat_id, node_digest) in &digest.node_digests {
            if node_digest.max_version > ours(chitchat_id).unwrap_or(0)
                && self.wanted.len() < self.memory_max()
            {
                self.wanted.insert(chitchat_id.clone());
            }
        }
    }

    /// Records that our copy of a node advanced (a delta brought newer key-values).
    pub(crate) fn note_advanced(&mut self, chitchat_id: &ChitchatId) {
        if self.recent.len() < self.memory_max() || self.recent.contains_key(chitchat_id) {
            self.recent.insert(chitchat_id.clone(), RECENT_DIGESTS);
        }
    }

    /// Chooses the nodes of the next digest (see the module doc), skipping `skip`.
    pub(crate) fn select<'a>(
        &mut self,
        self_id: &'a ChitchatId,
        node_states: &'a BTreeMap<ChitchatId, NodeState>,
        skip: &HashSet<&ChitchatId>,
    ) -> BTreeSet<&'a ChitchatId> {
        let mut chosen = BTreeSet::new();
        let listable = |id: &ChitchatId| !skip.contains(id);
        if listable(self_id) {
            chosen.insert(self_id);
        }
        self.take_wanted(node_states, &listable, &mut chosen);
        self.take_recent(node_states, &listable, &mut chosen);
        self.take_window(node_states, &listable, &mut chosen);
        chosen
    }

    fn take_wanted<'a>(
        &mut self,
        node_states: &'a BTreeMap<ChitchatId, NodeState>,
        listable: &impl Fn(&ChitchatId) -> bool,
        chosen: &mut BTreeSet<&'a ChitchatId>,
    ) {
        let room = self.nodes_max / 2;
        let mut taken = 0;
        while taken < room && chosen.len() < self.nodes_max {
            let Some(id) = self.wanted.pop_first() else {
                return;
            };
            if let Some((id, _)) = node_states.get_key_value(&id) {
                if listable(id) && chosen.insert(id) {
                    taken += 1;
                }
            }
        }
    }

    fn take_recent<'a>(
        &mut self,
        node_states: &'a BTreeMap<ChitchatId, NodeState>,
        listable: &impl Fn(&ChitchatId) -> bool,
        chosen: &mut BTreeSet<&'a ChitchatId>,
    ) {
        let room = self.nodes_max / 4;
        let mut taken = 0;
        self.recent.retain(|id, left| {
            let Some((id, _)) = node_states.get_key_value(id) else {
                return false;
            };
            if taken < room && chosen.len() < self.nodes_max && listable(id) {
                if chosen.insert(id) {
                    taken += 1;
                }
                *left -= 1;
            }
            *left > 0
        });
    }

    fn take_window<'a>(
        &mut self,
        node_states: &'a BTreeMap<ChitchatId, NodeState>,
        listable: &impl Fn(&ChitchatId) -> bool,
        chosen: &mut BTreeSet<&'a ChitchatId>,
    ) {
        let after = match &self.cursor {
            Some(cursor) => node_states.range((Bound::Excluded(cursor), Bound::Unbounded)),
            None => node_states.range::<ChitchatId, _>(..),
        };
        let mut last = None;
        for (id, _) in after.chain(node_states.iter()).take(node_states.len()) {
            if chosen.len() >= self.nodes_max {
                break;
            }
            if listable(id) {
                chosen.insert(id);
            }
            last = Some(id);
        }
        self.cursor = last.cloned();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Heartbeat;

    fn id(i: usize) -> ChitchatId {
        ChitchatId::new(format!("node-{i:04}"), 1, ([127, 0, 0, 1], 10_000).into())
    }

    fn states(n: usize) -> BTreeMap<ChitchatId, NodeState> {
        (0..n).map(|i| (id(i), NodeState::for_test())).collect()
    }

    #[test]
    fn the_window_covers_every_node_and_the_bound_holds() {
        let nodes = states(1_000);
        let mut budget = DigestBudget::new(100);
        let me = id(0);
        let mut seen = BTreeSet::new();
        for _ in 0..11 {
            let chosen = budget.select(&me, &nodes, &HashSet::new());
            assert_eq!(chosen.len(), 100);
            assert!(chosen.contains(&me));
            seen.extend(chosen.into_iter().cloned());
        }
        assert_eq!(seen.len(), 1_000, "11 windows of 99 cover 1 000 nodes");
    }

    #[test]
    fn wanted_and_recent_nodes_come_first() {
        let nodes = states(1_000);
        let mut budget = DigestBudget::new(10);
        let mut peer = Digest::default();
        peer.add_node(id(500), Heartbeat(1), 0, 7);
        peer.add_node(id(501), Heartbeat(1), 0, 3);
        budget.note_peer_digest(&peer, |i| (*i == id(501)).then_some(3));
        budget.note_advanced(&id(900));
        let me = id(0);
        let chosen = budget.select(&me, &nodes, &HashSet::new());
        assert!(chosen.contains(&id(500)), "peer has newer: wanted");
        assert!(!chosen.contains(&id(501)), "same version: not wanted");
        assert!(chosen.contains(&id(900)), "advanced here: listed");
        assert_eq!(chosen.len(), 10);
    }
}
