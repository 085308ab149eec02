//! Placement rules in the CLI (docs/design.md §Placement rules): the `--anti-affinity`,
//! `--affinity` and `--requires` flags of `vm create` and `vm set`, the check a
//! `vm move --to` makes before it asks, and the rules part of `status`.

use crate::cmd::admin::Member;
use ballast_node::rules::{
    admit, check_group, check_requirement, PlacementRules, RULES_LIST_LEN_MAX,
};
use ballast_store::{NodeId, ScheduleEntry, VmId};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// The rule flags (repeatable, or comma separated).
#[derive(clap::Args, Debug, Default)]
pub struct RuleArgs {
    /// An anti-affinity group: no two VMs of the group on one host (hard rule).
    #[arg(long = "anti-affinity", value_name = "GROUP", value_delimiter = ',', value_parser = parse_group)]
    pub anti_affinity: Vec<String>,
    /// An affinity group: the group's VMs are kept on one host (soft: balancing never
    /// splits the group; a drain or a hard rule may).
    #[arg(long, value_name = "GROUP", value_delimiter = ',', value_parser = parse_group)]
    pub affinity: Vec<String>,
    /// A host tag the VM needs (`gpu`, `zone=a`): only hosts with it (hard rule).
    #[arg(long, value_name = "TAG", value_delimiter = ',', value_parser = parse_requirement)]
    pub requires: Vec<String>,
}

fn parse_group(s: &str) -> Result<String, String> {
    check_group(s)
        .map(|()| s.to_owned())
        .map_err(|e| e.to_string())
}

fn parse_requirement(s: &str) -> Result<String, String> {
    check_requirement(s)
        .map(|()| s.to_owned())
        .map_err(|e| e.to_string())
}

impl RuleArgs {
    /// The rules these flags give (lists sorted, duplicates dropped).
    pub fn rules(&self) -> anyhow::Result<PlacementRules> {
        let list = |v: &[String], what: &str| -> anyhow::Result<Vec<String>> {
            let set: BTreeSet<String> = v.iter().cloned().collect();
            anyhow::ensure!(
                set.len() <= RULES_LIST_LEN_MAX,
                "at most {RULES_LIST_LEN_MAX} {what}"
            );
            Ok(set.into_iter().collect())
        };
        Ok(PlacementRules {
            anti_affinity: list(&self.anti_affinity, "anti-affinity groups")?,
            affinity: list(&self.affinity, "affinity groups")?,
            requires: list(&self.requires, "required tags")?,
            forced_on: None,
        })
    }
}

/// Refuses groups that name a VM (rules name groups, not VMs): `vm` itself or any VM
/// of `schedules`.
pub fn groups_are_not_vms<'a>(
    vm: &VmId,
    rules: &PlacementRules,
    schedules: impl IntoIterator<Item = &'a ScheduleEntry>,
) -> anyhow::Result<()> {
    let names: BTreeSet<&str> = schedules
        .into_iter()
        .map(|e| e.vm.as_str())
        .chain([vm.as_str()])
        .collect();
    for g in rules.anti_affinity.iter().chain(&rules.affinity) {
        anyhow::ensure!(
            !names.contains(g.as_str()),
            "group {g:?} is the name of a VM: rules name groups, which VMs join \
             (give each replica `--anti-affinity {g}-group`, for example)"
        );
    }
    Ok(())
}

/// The node holding the most members of one of `rules`' affinity groups, if any: where a
/// new member goes first.
pub fn affinity_home(
    rules: &PlacementRules,
    schedules: &[(NodeId, Vec<ScheduleEntry>)],
) -> Option<NodeId> {
    schedules
        .iter()
        .map(|(node, entries)| {
            let members = entries
                .iter()
                .filter(|e| {
                    e.spec
                        .rules
                        .affinity
                        .iter()
                        .any(|g| rules.affinity.contains(g))
                })
                .count();
            (members, node)
        })
        .filter(|(members, _)| *members > 0)
        .max_by_key(|(members, _)| *members)
        .map(|(_, node)| node.clone())
}

/// Why `vm` (with `rules`) may not move to the node `to` (whose status is known): the
/// hard rule it would break there, `None` when it may.
pub fn refusal_at(vm: &VmId, rules: &PlacementRules, to: &Member) -> Option<String> {
    let status = to.status.as_ref()?;
    admit(vm, rules, &status.rules.holdings)
        .err()
        .map(|r| r.to_string())
}

/// One line of rules for people: `anti-affinity db; requires gpu`.
pub fn describe(rules: &PlacementRules) -> String {
    let mut parts = Vec::new();
    for (what, list) in [
        ("anti-affinity", &rules.anti_affinity),
        ("affinity", &rules.affinity),
        ("requires", &rules.requires),
    ] {
        if !list.is_empty() {
            parts.push(format!("{what} {}", list.join(",")));
        }
    }
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join("; ")
    }
}

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

/// The rules part of `status` for people (empty when there is nothing to say).
pub fn render(r: &RulesReport) -> String {
    let mut out = String::new();
    if r.is_empty() {
        return out;
    }
    out.push_str("\nplacement rules:\n");
    for (node, tags) in &r.tags {
        out.push_str(&format!("  {node} tags: {}\n", tags.join(", ")));
    }
    if r.broken.is_empty() && r.drain_blocked.is_empty() {
        out.push_str("  every VM keeps its rules\n");
    }
    for b in &r.broken {
        let who = if b.vm.is_empty() {
            format!("on {}", b.node)
        } else {
            format!("{} on {}", b.vm, b.node)
        };
        out.push_str(&format!("  broken: {who}: {} ({})\n", b.rule, b.why));
    }
    for g in &r.unsatisfiable_groups {
        out.push_str(&format!(
            "  unsatisfiable: anti-affinity group {g} has more members than active nodes\n"
        ));
    }
    for d in &r.drain_blocked {
        out.push_str(&format!(
            "  drain of {} keeps {}: {}\n",
            d.node, d.vm, d.rule
        ));
    }
    out
}
