//! The checks of docs/design.md §Handoff over what the harness read: pure functions of store
//! views, run records and the harness's own bookkeeping. No I/O.
//!
//! What is checkable when:
//! - **I1 during the run** needs a view of every live host's store. The harness reads
//!   them one after another, so one sweep is not an instant: a VM moving between two
//!   reads can look missing or doubled. A sweep is used only if every host answered
//!   (a host that is down or paused has no readable view; its last one is stale), and a
//!   suspicious placement is reported only if the *same* placement (hosts, states,
//!   epochs) is seen in [`CONFIRM_SWEEPS`] consecutive complete sweeps. Entries carry
//!   epochs that only rise, so an identical placement read in two sweeps held at the
//!   moment between them: it is a real state, not an artefact of the reading order.
//! - **I1 at the end** is exact: faults are over, every host answers, and the harness
//!   waits until no handoff is left (I3), then each VM must be `Running` on one host.
//! - **I2** is checked on the complete run logs at the end (process mode: VM processes
//!   write their own records; host crashes come from the harness).
//! - **I3**: within a bound after the last fault, no handoff entry or transfer record
//!   remains, and the loads reach a resting spread.
//! - **I4**: after the final move, the source host is wiped; the VM must still run on
//!   the destination, with the same entry.
//! - **R1**: no host's schedule ever holds two members of one anti-affinity group
//!   (checked on every view read, complete sweep or not: one view is one instant).

use ballast_node::agent::wire::StoreView;
use ballast_node::driver::sim::Violation as DoubleRun;
use ballast_store::{NodeId, VmId, VmState};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Consecutive complete sweeps that must show the same bad placement.
pub const CONFIRM_SWEEPS: u32 = 3;

/// One broken invariant.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Violation {
    /// `I1`..`I4`, `R1`.
    pub invariant: &'static str,
    /// The VM, when one is concerned.
    pub vm: Option<String>,
    /// What was seen.
    pub evidence: String,
}

/// What the harness knows about the VMs it created and deleted.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    /// Created and not deleted: must exist.
    pub expected: BTreeSet<VmId>,
    /// A create or delete whose outcome is unknown (timeout, forwarding failure): may
    /// exist once, or not at all.
    pub uncertain: BTreeSet<VmId>,
    /// Destroyed with a wiped host: must not be running anywhere else.
    pub destroyed: BTreeSet<VmId>,
}

/// Where each VM is: `vm -> [(host, state, epoch)]`.
pub fn placements(views: &[(NodeId, StoreView)]) -> BTreeMap<VmId, Vec<(NodeId, VmState, u64)>> {
    let mut out: BTreeMap<VmId, Vec<(NodeId, VmState, u64)>> = BTreeMap::new();
    for (n, v) in views {
        for e in &v.entries {
            out.entry(e.vm.clone())
                .or_default()
                .push((n.clone(), e.state.clone(), e.epoch));
        }
    }
    out
}

fn describe(h: &[(NodeId, VmState, u64)]) -> String {
    let parts: Vec<String> = h
        .iter()
        .map(|(n, s, e)| match s {
            VmState::Running => format!("{n}:Running@{e}"),
            VmState::MigratingOut { to, epoch } => {
                format!("{n}:MigratingOut(to {to}, {epoch})@{e}")
            }
            VmState::Incoming { from, epoch } => format!("{n}:Incoming(from {from}, {epoch})@{e}"),
        })
        .collect();
    if parts.is_empty() {
        "in no schedule".into()
    } else {
        parts.join(", ")
    }
}

/// Whether a placement of a VM that must exist is one I1 allows: `Running` on one host
/// (possibly with a stale `Incoming` from that host elsewhere, after an abort), or one
/// handoff between two hosts.
fn allowed(h: &[(NodeId, VmState, u64)]) -> bool {
    // An `Incoming` of an older move than another entry knows is an aborted handoff whose
    // destination has not heard the outcome yet (a committed one would have made it the
    // holder, and only the holder moves a VM on): it never ran, and I3 checks it goes.
    let newest = h
        .iter()
        .map(|(_, s, e)| match s {
            VmState::Running => *e,
            VmState::MigratingOut { epoch, .. } | VmState::Incoming { epoch, .. } => *epoch.max(e),
        })
        .max()
        .unwrap_or(0);
    let live: Vec<(NodeId, VmState, u64)> = h
        .iter()
        .filter(|(_, s, _)| !matches!(s, VmState::Incoming { epoch, .. } if *epoch < newest))
        .cloned()
        .collect();
    let h = &live[..];
    let running: Vec<&NodeId> = h
        .iter()
        .filter(|(_, s, _)| *s == VmState::Running)
        .map(|(n, _, _)| n)
        .collect();
    match (h.len(), running.len()) {
        (1, _) => true,
        (2, 1) => h
            .iter()
            .any(|(_, s, _)| matches!(s, VmState::Incoming { from, .. } if from == running[0])),
        (2, 0) => {
            let out = h.iter().find_map(|(n, s, _)| match s {
                VmState::MigratingOut { to, epoch } => Some((n, to, *epoch)),
                _ => None,
            });
            let inc = h.iter().find_map(|(n, s, _)| match s {
                VmState::Incoming { from, epoch } => Some((n, from, *epoch)),
                _ => None,
            });
            matches!((out, inc), (Some((a, to, e1)), Some((b, from, e2))) if to == b && from == a && e1 == e2)
        }
        _ => false,
    }
}

/// The bad placements of one complete sweep: `vm -> description`.
pub fn sweep_problems(views: &[(NodeId, StoreView)], ledger: &Ledger) -> BTreeMap<VmId, String> {
    let p = placements(views);
    let mut out = BTreeMap::new();
    for vm in &ledger.expected {
        match p.get(vm) {
            None => {
                out.insert(vm.clone(), "in no schedule".to_owned());
            }
            Some(h) if !allowed(h) => {
                out.insert(vm.clone(), describe(h));
            }
            Some(_) => {}
        }
    }
    for (vm, h) in &p {
        if ledger.expected.contains(vm) {
            continue;
        }
        let running = h.iter().filter(|(_, s, _)| *s == VmState::Running).count();
        let bad = if ledger.uncertain.contains(vm) {
            !allowed(h)
        } else {
            // Deleted, destroyed, or never created: a stale handoff entry may linger,
            // a Running one is a resurrection.
            running > 0
        };
        if bad {
            out.insert(vm.clone(), describe(h));
        }
    }
    out
}

/// R1 (docs/design.md §Placement rules): the anti-affinity groups `node`'s schedule (any
/// state: running, leaving, arriving) holds two members of, as violations. One node's
/// view is one read of its store, so no sweep confirmation is needed.
pub fn rule_problems(node: &NodeId, view: &StoreView, at_s: f64) -> Vec<Violation> {
    let mut groups: BTreeMap<&str, Vec<&VmId>> = BTreeMap::new();
    for e in &view.entries {
        for g in &e.spec.rules.anti_affinity {
            groups.entry(g).or_default().push(&e.vm);
        }
    }
    groups
        .into_iter()
        .filter(|(_, vms)| vms.len() > 1)
        .map(|(g, vms)| Violation {
            invariant: "R1",
            vm: Some(vms[0].to_string()),
            evidence: format!(
                "at {at_s:.1}s node {node} holds {} members of anti-affinity group {g}: {}",
                vms.len(),
                vms.iter()
                    .map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
        .collect()
}

/// Confirms bad placements over consecutive complete sweeps.
#[derive(Debug, Default)]
pub struct Confirmer {
    seen: BTreeMap<VmId, (String, u32)>,
    reported: BTreeSet<(VmId, String)>,
}

impl Confirmer {
    /// Feeds one complete sweep's problems; returns the newly confirmed violations.
    pub fn feed(&mut self, problems: BTreeMap<VmId, String>, at_s: f64) -> Vec<Violation> {
        let mut next = BTreeMap::new();
        let mut out = Vec::new();
        for (vm, desc) in problems {
            let count = match self.seen.get(&vm) {
                Some((d, c)) if *d == desc => c + 1,
                _ => 1,
            };
            if count >= CONFIRM_SWEEPS && self.reported.insert((vm.clone(), desc.clone())) {
                out.push(Violation {
                    invariant: "I1",
                    vm: Some(vm.to_string()),
                    evidence: format!(
                        "at {at_s:.1}s, the same placement in {count} consecutive complete sweeps: {desc}"
                    ),
                });
            }
            next.insert(vm, (desc, count));
        }
        self.seen = next;
        out
    }
}

/// Whether nothing is in a handoff: no entry but `Running`, no transfer record.
pub fn resolved(views: &[(NodeId, StoreView)]) -> bool {
    views.iter().all(|(_, v)| {
        v.transfers.is_empty() && v.entries.iter().all(|e| e.state == VmState::Running)
    })
}

/// The exact I1 check once everything is resolved: every expected VM `Running` on
/// exactly one host, uncertain ones at most once, nothing else anywhere.
pub fn final_i1(views: &[(NodeId, StoreView)], ledger: &Ledger) -> Vec<Violation> {
    let p = placements(views);
    let mut out = Vec::new();
    let mut v = |vm: &VmId, evidence: String| {
        out.push(Violation {
            invariant: "I1",
            vm: Some(vm.to_string()),
            evidence,
        })
    };
    for vm in &ledger.expected {
        match p.get(vm) {
            Some(h) if h.len() == 1 && h[0].1 == VmState::Running => {}
            Some(h) => v(vm, format!("at the end: {}", describe(h))),
            None => v(
                vm,
                "at the end: created, never deleted, in no schedule".into(),
            ),
        }
    }
    for (vm, h) in &p {
        if ledger.expected.contains(vm) {
            continue;
        }
        if ledger.uncertain.contains(vm) && h.len() == 1 && h[0].1 == VmState::Running {
            continue;
        }
        let why = if ledger.destroyed.contains(vm) {
            "destroyed with its wiped host"
        } else if ledger.uncertain.contains(vm) {
            "outcome of its create/delete unknown"
        } else {
            "deleted (or never created)"
        };
        v(vm, format!("at the end, {why}, yet: {}", describe(h)));
    }
    out
}

/// The I2 checker's findings as violations.
pub fn double_runs(found: &[DoubleRun]) -> Vec<Violation> {
    found
        .iter()
        .map(|d| {
            let end = |t: u64| {
                if t == u64::MAX {
                    "still running".to_owned()
                } else {
                    t.to_string()
                }
            };
            Violation {
                invariant: "I2",
                vm: Some(d.vm.to_string()),
                evidence: format!(
                    "ran on {} [{} ns .. {}] and on {} [{} ns .. {}] at once, from {} ns",
                    d.first.host,
                    d.first.start_ns,
                    end(d.first.end_ns),
                    d.second.host,
                    d.second.start_ns,
                    end(d.second.end_ns),
                    d.overlap_start_ns
                ),
            }
        })
        .collect()
}

/// Whether the loads are at rest for the policy: the spread is no larger than the
/// heaviest VM (a lighter VM would still be worth moving otherwise) plus the threshold.
pub fn balanced(host_loads: &[f64], vm_load_max: f64, threshold: f64) -> bool {
    let max = host_loads.iter().copied().fold(f64::MIN, f64::max);
    let min = host_loads.iter().copied().fold(f64::MAX, f64::min);
    host_loads.is_empty() || max - min <= vm_load_max + threshold + 1e-9
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballast_store::{LoadFactors, ScheduleEntry, VmSpec};

    fn entry(vm: &str, state: VmState, epoch: u64) -> ScheduleEntry {
        ScheduleEntry {
            vm: VmId::from(vm),
            spec: VmSpec::default(),
            factors: LoadFactors::default(),
            state,
            epoch,
            pinned: false,
            last_moved_unix_ms: None,
        }
    }

    fn view(node: &str, entries: Vec<ScheduleEntry>) -> (NodeId, StoreView) {
        (
            NodeId::from(node),
            StoreView {
                entries,
                transfers: Vec::new(),
                highest_epochs: Vec::new(),
            },
        )
    }

    fn ledger(vms: &[&str]) -> Ledger {
        Ledger {
            expected: vms.iter().map(|v| VmId::from(*v)).collect(),
            ..Ledger::default()
        }
    }

    #[test]
    fn two_members_of_a_group_on_one_host_break_r1_whatever_their_states() {
        let member = |vm: &str, state: VmState| {
            let mut e = entry(vm, state, 1);
            e.spec.rules.anti_affinity = vec!["db".into()];
            e
        };
        let (node, one) = view(
            "a",
            vec![
                member("d1", VmState::Running),
                entry("x", VmState::Running, 1),
            ],
        );
        assert!(rule_problems(&node, &one, 1.0).is_empty());
        let arriving = VmState::Incoming {
            from: "b".into(),
            epoch: 2,
        };
        let (node, two) = view(
            "a",
            vec![member("d1", VmState::Running), member("d2", arriving)],
        );
        let found = rule_problems(&node, &two, 2.5);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].invariant, "R1");
        assert!(
            found[0]
                .evidence
                .contains("node a holds 2 members of anti-affinity group db: d1, d2"),
            "{}",
            found[0].evidence
        );
    }

    #[test]
    fn a_handoff_between_two_hosts_is_allowed() {
        let views = vec![
            view(
                "a",
                vec![entry(
                    "v",
                    VmState::MigratingOut {
                        to: "b".into(),
                        epoch: 2,
                    },
                    1,
                )],
            ),
            view(
                "b",
                vec![entry(
                    "v",
                    VmState::Incoming {
                        from: "a".into(),
                        epoch: 2,
                    },
                    2,
                )],
            ),
        ];
        assert!(sweep_problems(&views, &ledger(&["v"])).is_empty());
        assert!(!resolved(&views));
    }

    #[test]
    fn two_running_copies_and_a_missing_vm_are_problems() {
        let views = vec![
            view("a", vec![entry("v", VmState::Running, 1)]),
            view("b", vec![entry("v", VmState::Running, 2)]),
        ];
        let p = sweep_problems(&views, &ledger(&["v", "w"]));
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[&VmId::from("v")].contains("a:Running@1"));
        assert_eq!(p[&VmId::from("w")], "in no schedule");
        assert_eq!(final_i1(&views, &ledger(&["v", "w"])).len(), 2);
    }

    #[test]
    fn a_problem_is_reported_only_once_confirmed() {
        let mut c = Confirmer::default();
        let p = |d: &str| BTreeMap::from([(VmId::from("v"), d.to_owned())]);
        assert!(c.feed(p("x"), 1.0).is_empty());
        assert!(c.feed(p("x"), 2.0).is_empty());
        assert!(
            c.feed(p("y"), 3.0).is_empty(),
            "a changed placement restarts the count"
        );
        assert!(c.feed(p("y"), 4.0).is_empty());
        assert_eq!(c.feed(p("y"), 5.0).len(), 1);
        assert!(c.feed(p("y"), 6.0).is_empty(), "reported once");
    }

    #[test]
    fn a_stale_incoming_of_an_older_move_is_allowed() {
        // n4 -> n5 at epoch 5 aborted; n4 then moved it to n2 at epoch 6; n5 has not
        // heard of the abort yet.
        let views = vec![
            view("n2", vec![entry("v", VmState::Running, 6)]),
            view(
                "n5",
                vec![entry(
                    "v",
                    VmState::Incoming {
                        from: "n4".into(),
                        epoch: 5,
                    },
                    5,
                )],
            ),
        ];
        assert!(sweep_problems(&views, &ledger(&["v"])).is_empty());
        assert!(!resolved(&views));
        // The same with a newer incoming entry is not stale: two live copies.
        let views = vec![
            view("n2", vec![entry("v", VmState::Running, 6)]),
            view(
                "n5",
                vec![entry(
                    "v",
                    VmState::Incoming {
                        from: "n4".into(),
                        epoch: 7,
                    },
                    7,
                )],
            ),
        ];
        assert_eq!(sweep_problems(&views, &ledger(&["v"])).len(), 1);
    }

    #[test]
    fn a_deleted_vm_running_again_is_a_resurrection() {
        let views = vec![view("a", vec![entry("gone", VmState::Running, 3)])];
        assert_eq!(sweep_problems(&views, &ledger(&[])).len(), 1);
        let stale = vec![view(
            "a",
            vec![entry(
                "gone",
                VmState::Incoming {
                    from: "b".into(),
                    epoch: 3,
                },
                3,
            )],
        )];
        assert!(sweep_problems(&stale, &ledger(&[])).is_empty());
    }

    #[test]
    fn balance_is_judged_against_the_heaviest_vm() {
        assert!(balanced(&[0.5, 0.4, 0.45], 0.1, 0.01));
        assert!(!balanced(&[0.9, 0.1, 0.4], 0.1, 0.01));
    }
}
