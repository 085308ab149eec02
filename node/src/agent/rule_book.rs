//! What the agent remembers about placement rules between rounds (docs/design.md
//! §Placement rules): which destination refused which VM for a rule (a drain tries
//! another one meanwhile), and which VMs a drain found no legal destination for.

use super::context::{lock, AgentContext};
use super::wire::{RuleBreak, RuleSkip};
use ballast_core::rules::{broken_here, Holdings};
use ballast_store::{NodeId, ScheduleEntry, VmId, VmState};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a destination's refusal of a VM for a rule keeps a drain from offering it
/// that VM again (the destination's VMs may have moved since).
pub(crate) const REFUSAL_MEMORY: Duration = Duration::from_secs(60);

/// Refusals and drain blocks; std mutexes, never held across `.await`.
#[derive(Default)]
pub(crate) struct RuleBook {
    refusals: Mutex<HashMap<(VmId, NodeId), Instant>>,
    drain_blocked: Mutex<BTreeMap<VmId, String>>,
}

impl RuleBook {
    /// `peer` refused `vm` because of a placement rule.
    pub(crate) fn refused(&self, vm: &VmId, peer: &NodeId) {
        let mut r = lock(&self.refusals);
        r.retain(|_, at| at.elapsed() < REFUSAL_MEMORY);
        r.insert((vm.clone(), peer.clone()), Instant::now());
    }

    /// Whether `peer` refused `vm` for a rule within [`REFUSAL_MEMORY`].
    pub(crate) fn recently_refused(&self, vm: &VmId, peer: &NodeId) -> bool {
        lock(&self.refusals)
            .get(&(vm.clone(), peer.clone()))
            .is_some_and(|at| at.elapsed() < REFUSAL_MEMORY)
    }

    /// A drain found no legal destination for `vm`.
    pub(crate) fn block(&self, vm: &VmId, reason: String) {
        lock(&self.drain_blocked).insert(vm.clone(), reason);
    }

    /// A drain found a destination for `vm` after all.
    pub(crate) fn unblock(&self, vm: &VmId) {
        lock(&self.drain_blocked).remove(vm);
    }

    /// The VMs a drain found no legal destination for, with the rule.
    pub(crate) fn drain_blocked(&self) -> Vec<RuleSkip> {
        lock(&self.drain_blocked)
            .iter()
            .map(|(vm, rule)| RuleSkip {
                vm: vm.clone(),
                rule: rule.clone(),
            })
            .collect()
    }

    /// Forgets the drain blocks (the drain ended, or a new pass looks again).
    pub(crate) fn clear_drain_blocks(&self) {
        lock(&self.drain_blocked).clear();
    }
}

/// What this host holds for the placement rules, its schedule being `entries`.
pub(crate) fn holdings_of(ctx: &AgentContext, entries: &[ScheduleEntry]) -> Holdings {
    Holdings::of(
        &ctx.cfg.node.tags,
        entries.iter().map(|e| (&e.vm, &*e.spec.rules)),
    )
}

/// The VMs of `entries` that break a hard rule on this host (`holdings` is the host's),
/// with the rule and whether an operator forced them here.
pub(crate) fn rule_breaks(
    me: &NodeId,
    entries: &[ScheduleEntry],
    holdings: &Holdings,
) -> Vec<RuleBreak> {
    entries
        .iter()
        .filter(|e| e.state == VmState::Running && !e.spec.rules.is_empty())
        .filter_map(|e| {
            broken_here(&e.vm, &e.spec.rules, holdings, &[]).map(|rule| RuleBreak {
                vm: e.vm.clone(),
                rule: rule.to_string(),
                forced: e.spec.rules.forced_on.as_ref() == Some(me),
            })
        })
        .collect()
}
