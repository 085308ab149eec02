//! The result of a run: what was injected, what the cluster did, what broke. Printed as
//! a short summary, or as one JSON object with `--json`.

use super::invariants::Violation;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One run's report (the `--json` object).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// The seed (replays the same fault schedule).
    pub seed: u64,
    /// The workload's length, seconds (faults happen inside it).
    pub duration_s: f64,
    /// Agents started.
    pub agents: usize,
    /// The planted bug, `None` for the real protocol.
    pub planted_bug: String,
    /// What the sim hypervisors leave of a source copy after the switchover (`kept`,
    /// `ended`).
    pub source_copy: String,
    /// Faults injected, per kind.
    pub faults: BTreeMap<String, u64>,
    /// Packets the network faults dropped: `[partition, loss]` (from `tc -s qdisc`).
    pub packets_dropped: [u64; 2],
    /// Failpoints that were hit (the agent killed itself there), per name.
    pub failpoints_hit: BTreeMap<String, u64>,
    /// Handoffs committed (counted by their sources).
    pub handoffs_committed: u64,
    /// Handoff aborts (counted by each side that aborted; one handoff may count twice).
    pub handoffs_aborted: u64,
    /// Balancing rounds run, all agents together.
    pub rounds: u64,
    /// VMs created during the run (initial ones included).
    pub vms_created: u64,
    /// VMs deleted during the run.
    pub vms_deleted: u64,
    /// VMs that must exist at the end of the settle phase.
    pub vms_expected: usize,
    /// Of those, how many were found `Running` on exactly one host.
    pub vms_found: usize,
    /// Complete sweeps (every host answered) checked for I1 during the run.
    pub sweeps_checked: u64,
    /// Seconds from the last fault until every handoff resolved (I3), if it did.
    pub resolve_s: Option<f64>,
    /// Seconds from the last fault until the loads were at rest (I3), if they were.
    pub converge_s: Option<f64>,
    /// The I4 check: the VM moved, its source and destination, and the outcome.
    pub independence: Option<String>,
    /// Agent exits the harness did not cause (each one was restarted).
    pub unexpected_exits: u64,
    /// Things the harness could not do (e.g. network faults without root).
    pub notes: Vec<String>,
    /// Broken invariants; empty when all held.
    pub violations: Vec<Violation>,
    /// Wall time of the whole run, seconds.
    pub wall_s: f64,
}

impl Report {
    /// Whether every invariant held.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// A short human summary.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(
            s,
            "chaos run: seed {} agents {} duration {:.0}s planted bug {} source copy {} (wall {:.0}s)",
            self.seed, self.agents, self.duration_s, self.planted_bug, self.source_copy, self.wall_s
        );
        let _ = writeln!(s, "faults: {}", faults.join(" "));
        if self.packets_dropped != [0, 0] {
            let _ = writeln!(
                s,
                "packets dropped: {} by partitions, {} by lossy links",
                self.packets_dropped[0], self.packets_dropped[1]
            );
        }
        if !self.failpoints_hit.is_empty() {
            let hits: Vec<String> = self
                .failpoints_hit
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let _ = writeln!(s, "failpoints hit: {}", hits.join(" "));
        }
        let _ = writeln!(
            s,
            "handoffs: {} committed, {} abort events; {} rounds; {} complete sweeps checked",
            self.handoffs_committed, self.handoffs_aborted, self.rounds, self.sweeps_checked
        );
        let _ = writeln!(
            s,
            "VMs: {} created, {} deleted, {} expected, {} found",
            self.vms_created, self.vms_deleted, self.vms_expected, self.vms_found
        );
        let secs = |v: Option<f64>| v.map_or("never".to_owned(), |x| format!("{x:.1}s"));
        let _ = writeln!(
            s,
            "after the faults: resolved in {}, at rest in {}",
            secs(self.resolve_s),
            secs(self.converge_s)
        );
        if let Some(i4) = &self.independence {
            let _ = writeln!(s, "I4: {i4}");
        }
        if self.unexpected_exits > 0 {
            let _ = writeln!(s, "unexpected agent exits: {}", self.unexpected_exits);
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        if self.violations.is_empty() {
            let _ = writeln!(s, "violations: none (I1, I2, I3, I4 held)");
        } else {
            let _ = writeln!(s, "violations: {}", self.violations.len());
            for v in &self.violations {
                let _ = writeln!(
                    s,
                    "  {} {}: {}",
                    v.invariant,
                    v.vm.as_deref().unwrap_or("-"),
                    v.evidence
                );
            }
        }
        s
    }
}
