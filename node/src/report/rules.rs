//! The placement rules part of `status` (docs/design-placement-rules.md): node tags, VMs
//! that break a hard rule and why, unsatisfiable anti-affinity groups, split affinity
//! groups and what a drain keeps, from the nodes that answered.

use super::Member;
use ballast_store::{NodeId, VmId};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// A VM that breaks a rule, in `status`.
#[derive(Clone, Debug, Serialize)]
pub struct BrokenRow {
    /// The VM.
    pub vm: String,
    /// Where it is.
    pub node: String,
    /// The rule.
    pub rule: String,
    /// `forced` (an operator's `--force`), `waiting for a legal node` (balancing moves
    /// it when a legal node has room), `unsatisfiable` (more members than nodes), or
    /// `split` for a soft affinity group.
    pub why: String,
}

/// The rules part of `status --json`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RulesReport {
    /// Each node's tags (nodes without tags left out).
    pub tags: BTreeMap<String, Vec<String>>,
    /// VMs that break a hard rule where they are, and affinity groups split across
    /// nodes.
    pub broken: Vec<BrokenRow>,
    /// Anti-affinity groups with more members than active nodes: one node must hold two.
    pub unsatisfiable_groups: Vec<String>,
    /// VMs a drain found no legal destination for, with the rule.
    pub drain_blocked: Vec<BrokenRow>,
}

impl RulesReport {
    /// Whether there is nothing to say.
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
            && self.broken.is_empty()
            && self.unsatisfiable_groups.is_empty()
            && self.drain_blocked.is_empty()
    }
}

/// The rules as they stand on the members that answered.
pub fn report<'a>(members: impl IntoIterator<Item = &'a Member>) -> RulesReport {
    let mut r = RulesReport::default();
    let mut anti: BTreeMap<&str, BTreeSet<&VmId>> = BTreeMap::new();
    let mut affinity: BTreeMap<&str, BTreeSet<&NodeId>> = BTreeMap::new();
    let mut active = 0usize;
    let answered: Vec<&Member> = members.into_iter().filter(|m| m.status.is_some()).collect();
    for m in &answered {
        let Some(s) = &m.status else { continue };
        if !s.draining {
            active += 1;
        }
        let node = m.node.to_string();
        if !s.rules.holdings.tags.is_empty() {
            r.tags.insert(node.clone(), s.rules.holdings.tags.clone());
        }
        for b in &s.rules.breaks {
            r.broken.push(BrokenRow {
                vm: b.vm.to_string(),
                node: node.clone(),
                rule: b.rule.clone(),
                why: if b.forced {
                    "forced"
                } else {
                    "waiting for a legal node"
                }
                .to_owned(),
            });
        }
        for d in &s.rules.drain_blocked {
            r.drain_blocked.push(BrokenRow {
                vm: d.vm.to_string(),
                node: node.clone(),
                rule: d.rule.clone(),
                why: "no legal destination for the drain".to_owned(),
            });
        }
        for h in &s.rules.holdings.vms {
            for g in &h.anti_affinity {
                anti.entry(g).or_default().insert(&h.vm);
            }
            for g in &h.affinity {
                affinity.entry(g).or_default().insert(&m.node);
            }
        }
    }
    for (g, members) in &anti {
        if members.len() > active.max(1) {
            r.unsatisfiable_groups.push((*g).to_owned());
            for b in r
                .broken
                .iter_mut()
                .filter(|b| b.rule.contains(&format!("group {g} ")))
            {
                b.why = format!(
                    "unsatisfiable: {} members, {active} active nodes",
                    members.len()
                );
            }
        }
    }
    for (g, nodes) in &affinity {
        if nodes.len() > 1 {
            let on: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
            r.broken.push(BrokenRow {
                vm: String::new(),
                node: on.join(","),
                rule: format!("affinity group {g}"),
                why: "split (soft rule: balancing never splits a group further)".to_owned(),
            });
        }
    }
    r
}
