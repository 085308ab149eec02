//! What a simulation reports; serialized as the `--json` output of `ballast simulate`.

use super::{cluster::Cluster, greedy::GreedyOutcome, round::RoundOutcome, SimOptions};
use serde::Serialize;

/// The cluster's state after one round.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct RoundStat {
    /// The round (0 = the initial state).
    pub round: u32,
    /// `max_h L_h / mean`.
    pub max_over_mean: f64,
    /// Coefficient of variation of the host loads.
    pub cv: f64,
    /// Migrations in this round (a swap counts two).
    pub migrations: u64,
    /// Sessions opened in this round (the peer was free and gossip showed a gap).
    pub sessions: u64,
    /// Sessions that planned a swap.
    pub swaps: u64,
}

impl RoundStat {
    /// The figures of `cluster` after round `round`, which did `out`.
    pub fn of(round: u32, cluster: &Cluster, out: &RoundOutcome) -> Self {
        let (max_over_mean, cv) = cluster.imbalance();
        Self {
            round,
            max_over_mean,
            cv,
            migrations: out.migrations,
            sessions: out.sessions,
            swaps: out.swaps,
        }
    }
}

/// The run in a few figures.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// First round at which max/mean ≤ 1.10 (`None` when never).
    pub rounds_to_1_10: Option<u32>,
    /// First round at which max/mean ≤ 1.05 (`None` when never).
    pub rounds_to_1_05: Option<u32>,
    /// max/mean after the last round.
    pub final_max_over_mean: f64,
    /// Migrations in all rounds.
    pub migrations: u64,
    /// Sum of the raw loads of the VMs moved.
    pub load_moved: f64,
    /// Migrations in the last 50 rounds (how quiet a balanced cluster is).
    pub migrations_last_50_rounds: u64,
    /// Sessions opened in all rounds (each is a round trip between two agents).
    pub sessions: u64,
    /// Sessions that planned a swap.
    pub swaps: u64,
}

/// The central-greedy baseline on the same initial state.
#[derive(Clone, Debug, Serialize)]
pub struct BaselineReport {
    /// Always `central-greedy`.
    pub name: &'static str,
    /// max/mean when it stops.
    pub final_max_over_mean: f64,
    /// Its migrations.
    pub migrations: u64,
    /// Sum of the raw loads of the VMs it moved.
    pub load_moved: f64,
}

/// A whole run.
#[derive(Clone, Debug, Serialize)]
pub struct SimReport {
    /// The scenario's name.
    pub scenario: &'static str,
    /// Hosts.
    pub hosts: usize,
    /// VMs.
    pub vms: usize,
    /// The seed.
    pub seed: u64,
    /// Figures per round, from round 0.
    pub rounds: Vec<RoundStat>,
    /// The run in a few figures.
    pub summary: Summary,
    /// The baseline, when it ran.
    pub baseline: Option<BaselineReport>,
    /// Wall-clock seconds, filled in by the caller (the simulation reads no clock).
    pub elapsed_s: f64,
    /// Placement rules, when the run had some.
    pub rules: Option<RulesOutcome>,
    /// The same run without the rules, for their cost (filled in by the caller).
    pub without_rules: Option<Summary>,
}

/// What became of a run's placement rules.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct RulesOutcome {
    /// VMs that broke a hard rule in the initial state.
    pub broken_initial: usize,
    /// VMs that break one after the last round (an unsatisfiable group keeps some).
    pub broken_final: usize,
}

impl SimReport {
    pub(super) fn new(
        opts: &SimOptions,
        vms: usize,
        rounds: Vec<RoundStat>,
        load_moved: f64,
        baseline: Option<GreedyOutcome>,
    ) -> Self {
        let first = |limit: f64| {
            rounds
                .iter()
                .find(|r| r.max_over_mean <= limit)
                .map(|r| r.round)
        };
        let last_50 = rounds.len().saturating_sub(50).max(1);
        let summary = Summary {
            rounds_to_1_10: first(1.10),
            rounds_to_1_05: first(1.05),
            final_max_over_mean: rounds.last().map_or(1.0, |r| r.max_over_mean),
            migrations: rounds.iter().map(|r| r.migrations).sum(),
            load_moved,
            migrations_last_50_rounds: rounds[last_50.min(rounds.len())..]
                .iter()
                .map(|r| r.migrations)
                .sum(),
            sessions: rounds.iter().map(|r| r.sessions).sum(),
            swaps: rounds.iter().map(|r| r.swaps).sum(),
        };
        Self {
            scenario: opts.scenario.name(),
            hosts: opts.hosts,
            vms,
            seed: opts.seed,
            rounds,
            summary,
            baseline: baseline.map(|b| BaselineReport {
                name: "central-greedy",
                final_max_over_mean: b.final_max_over_mean,
                migrations: b.migrations,
                load_moved: b.load_moved,
            }),
            elapsed_s: 0.0,
            rules: None,
            without_rules: None,
        }
    }
}
