//! The fault schedule: a pure function of the seed and the run's shape, so the same seed
//! replays the same faults (kinds, targets, start times, lengths). No clock, no I/O.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::fmt;
use std::str::FromStr;

/// The kinds of fault the harness injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// SIGKILL of an agent (its VM processes live on), restart on the same store.
    Kill,
    /// SIGKILL of an agent and of its VM processes (a host crash), restart on the same
    /// store; the agent restarts its VMs.
    HostKill,
    /// SIGSTOP of an agent, SIGCONT later.
    Pause,
    /// Every packet between two groups of agents is dropped, both ways.
    Partition,
    /// The links of one agent to the others are congested: a rate limit with a tiny
    /// queue drops most of a burst.
    Loss,
    /// An agent is restarted with a handoff failpoint armed (it kills itself there);
    /// restarted clean afterwards.
    Restart,
}

impl FaultKind {
    /// Every kind, in a fixed order.
    pub const ALL: [FaultKind; 6] = [
        FaultKind::Kill,
        FaultKind::HostKill,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::Loss,
        FaultKind::Restart,
    ];

    /// The name used on the command line and in the JSON report.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::HostKill => "host_kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::Loss => "loss",
            FaultKind::Restart => "restart",
        }
    }

    /// Whether the fault needs the packet filter (private network namespace).
    pub fn needs_network(self) -> bool {
        matches!(self, FaultKind::Partition | FaultKind::Loss)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FaultKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == s || (s == "host-kill" && *k == FaultKind::HostKill))
            .ok_or_else(|| {
                format!("unknown fault {s:?} (kill, host_kill, pause, partition, loss, restart)")
            })
    }
}

/// The failpoints a `Restart` fault arms (one per fault, drawn from the seed).
pub const RESTART_FAILPOINTS: &[&str] = &[
    "after:begin_migrate_out",
    "before-send:prepare",
    "after:accept_incoming",
    "after-send:prepared",
    "before:commit_migrate_out",
    "after:commit_migrate_out",
    "before-send:commit",
    "after-send:commit",
    "before:promote_incoming",
    "after:promote_incoming",
    "before-send:commit_ack",
    "after:abort_migrate_out",
];

/// One fault of the schedule.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FaultEvent {
    /// Milliseconds after the workload started.
    pub at_ms: u64,
    /// How long the fault lasts (down, paused, cut, lossy, or armed), milliseconds.
    pub len_ms: u64,
    /// The kind.
    pub kind: FaultKind,
    /// The agents it hits (indexes): one for kills, pauses, loss and restarts; for a
    /// partition, the group cut from the others.
    pub nodes: Vec<usize>,
    /// The failpoint armed by a `Restart`.
    pub failpoint: Option<String>,
}

/// The shape of the schedule.
#[derive(Clone, Debug)]
pub struct PlanShape {
    /// Agents in the cluster (at least 2).
    pub agents: usize,
    /// First fault no earlier than this, milliseconds.
    pub start_ms: u64,
    /// Every fault is over by this, milliseconds.
    pub end_ms: u64,
    /// The kinds to inject (none: an empty schedule).
    pub kinds: Vec<FaultKind>,
}

/// Shortest and longest fault, milliseconds.
const LEN_MS: (u64, u64) = (1_500, 4_000);
/// Shortest and longest gap between two faults, milliseconds.
const GAP_MS: (u64, u64) = (1_000, 3_000);

/// Draws the schedule: faults one after another, kinds dealt from a shuffled deck of
/// the enabled kinds (so every kind recurs evenly), targets and lengths from the seed.
pub fn draw(seed: u64, shape: &PlanShape) -> Vec<FaultEvent> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    if shape.kinds.is_empty() || shape.agents < 2 {
        return out;
    }
    let mut deck: Vec<FaultKind> = Vec::new();
    let mut t = shape.start_ms;
    loop {
        let len = rng.random_range(LEN_MS.0..=LEN_MS.1);
        if t + len > shape.end_ms {
            break;
        }
        if deck.is_empty() {
            deck = shape.kinds.clone();
            deck.shuffle(&mut rng);
        }
        let kind = deck.pop().unwrap_or(FaultKind::Kill);
        let nodes = targets(&mut rng, kind, shape.agents);
        let failpoint = (kind == FaultKind::Restart).then(|| {
            let i = rng.random_range(0..RESTART_FAILPOINTS.len());
            RESTART_FAILPOINTS[i].to_owned()
        });
        out.push(FaultEvent {
            at_ms: t,
            len_ms: len,
            kind,
            nodes,
            failpoint,
        });
        t += len + rng.random_range(GAP_MS.0..=GAP_MS.1);
    }
    out
}

fn targets(rng: &mut StdRng, kind: FaultKind, agents: usize) -> Vec<usize> {
    if kind == FaultKind::Partition {
        let mut all: Vec<usize> = (0..agents).collect();
        all.shuffle(rng);
        let size = rng.random_range(1..=agents / 2);
        let mut group = all[..size].to_vec();
        group.sort_unstable();
        group
    } else {
        vec![rng.random_range(0..agents)]
    }
}

/// How many faults of each kind a schedule holds.
pub fn counts(plan: &[FaultEvent]) -> std::collections::BTreeMap<FaultKind, u64> {
    let mut out = std::collections::BTreeMap::new();
    for e in plan {
        *out.entry(e.kind).or_insert(0) += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_restart_failpoint_is_one_the_agent_knows() {
        for name in RESTART_FAILPOINTS {
            let parsed = name.parse::<ballast_node::failpoints::Failpoint>();
            assert_eq!(parsed.map(|f| f.to_string()).as_deref(), Ok(*name));
        }
    }

    fn shape() -> PlanShape {
        PlanShape {
            agents: 5,
            start_ms: 5_000,
            end_ms: 110_000,
            kinds: FaultKind::ALL.to_vec(),
        }
    }

    #[test]
    fn the_same_seed_replays_the_same_schedule() {
        assert_eq!(draw(7, &shape()), draw(7, &shape()));
        assert_ne!(draw(7, &shape()), draw(8, &shape()));
    }

    #[test]
    fn faults_do_not_overlap_and_stay_inside_the_window() {
        let plan = draw(1, &shape());
        assert!(!plan.is_empty());
        let mut end = 0;
        for e in &plan {
            assert!(e.at_ms >= 5_000 && e.at_ms >= end, "{e:?}");
            end = e.at_ms + e.len_ms;
            assert!(end <= 110_000);
            assert!(e.nodes.iter().all(|n| *n < 5));
            if e.kind == FaultKind::Partition {
                assert!(!e.nodes.is_empty() && e.nodes.len() <= 2);
            }
        }
    }

    #[test]
    fn a_two_minute_run_has_each_kind_at_least_three_times() {
        for seed in [1, 2, 42] {
            let c = counts(&draw(seed, &shape()));
            for k in FaultKind::ALL {
                assert!(c.get(&k).copied().unwrap_or(0) >= 3, "seed {seed}: {c:?}");
            }
        }
    }

    #[test]
    fn kinds_parse_by_name() {
        for k in FaultKind::ALL {
            assert_eq!(k.name().parse::<FaultKind>(), Ok(k));
        }
        assert!("flood".parse::<FaultKind>().is_err());
    }
}
