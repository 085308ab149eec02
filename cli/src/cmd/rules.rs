//! Placement rules in the CLI (docs/design.md §Placement rules): the `--anti-affinity`,
//! `--affinity` and `--requires` flags of `vm create` and `vm set`, the check a
//! `vm move --to` makes before it asks, and the rules part of `status`.

use crate::cmd::admin::Member;
use ballast_node::report::rules::RulesReport;
use ballast_node::rules::{
    admit, check_group, check_requirement, PlacementRules, RULES_LIST_LEN_MAX,
};
use ballast_store::{NodeId, ScheduleEntry, VmId};
use std::collections::BTreeSet;

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
