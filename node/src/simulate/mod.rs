//! An in-process simulation of many hosts running the balancing rounds of docs/design.md §Balancing
//! with the same policy code as the agent ([`crate::policy`]), next to a central-greedy
//! baseline on the same initial state. One seed reproduces a run. No I/O, no clock.
//!
//! - [`scenario`]: the initial states (`uniform`, `hotspot`, `new-hosts`, `heterogeneous`).
//! - [`cluster`]: hosts, their capacities and VMs, and the imbalance figures.
//! - [`round`]: one round of decentralized sessions.
//! - [`greedy`]: the central-greedy baseline (it ignores placement rules).
//! - [`rules`]: anti-affinity groups and a host tag added to a scenario.
//! - [`report`]: what a run reports (also its JSON form).

pub mod cluster;
pub mod greedy;
pub mod report;
pub mod round;
pub mod rules;
pub mod scenario;

use crate::policy::PolicyConfig;
use crate::units::Millis;
use rand::{
    rngs::{SmallRng, StdRng},
    Rng, SeedableRng,
};

pub use cluster::Cluster;
pub use report::{BaselineReport, RoundStat, SimReport, Summary};
pub use scenario::Scenario;

/// The policy settings the simulator uses by default, in its units (a VM's mean load is
/// 1 on a host of capacity 1; hosts hold ~20 VMs).
pub fn default_sim_policy() -> PolicyConfig {
    PolicyConfig {
        threshold: 0.25,
        min_gain: 0.1,
        swap_min_gain: 0.25,
        cooldown: Millis::ZERO,
        ..PolicyConfig::default()
    }
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Number of hosts (after any join).
    pub hosts: usize,
    /// The initial state.
    pub scenario: Scenario,
    /// Seeds everything: the initial state and every round.
    pub seed: u64,
    /// Rounds to run.
    pub rounds: u32,
    /// The policy, in the simulator's units.
    pub policy: PolicyConfig,
    /// Whether to run the central-greedy baseline too.
    pub baseline: bool,
    /// Placement rules to add to the scenario.
    pub rules: Option<rules::SimRuleOptions>,
}

/// Runs the simulation; `on_round` sees each round's figures as they come (for progress).
pub fn run(opts: &SimOptions, on_round: &mut dyn FnMut(&RoundStat)) -> SimReport {
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut cluster = scenario::build(opts.scenario, opts.hosts, &opts.policy, &mut rng);
    // Drawn from its own stream, so a run with rules starts from the same loads.
    if let Some(r) = &opts.rules {
        let mut rule_rng = StdRng::seed_from_u64(opts.seed ^ 0x5eed_0f7a_9500);
        rules::assign(&mut cluster, r, &mut rule_rng);
    }
    let broken_initial = rules::broken(&cluster);
    // The rounds draw millions of peer samples: a fast generator, seeded from the same seed.
    let mut rng = SmallRng::seed_from_u64(rng.random());
    let baseline = opts
        .baseline
        .then(|| greedy::run(&cluster.clone(), opts.policy.min_gain));
    let vms = cluster.vm_count();
    let mut rounds = Vec::with_capacity(opts.rounds as usize + 1);
    let first = RoundStat::of(0, &cluster, &round::RoundOutcome::default());
    on_round(&first);
    rounds.push(first);
    let mut state = round::RoundState::new(cluster.host_count());
    let mut load_moved = 0.0;
    for r in 1..=opts.rounds {
        let out = round::run_round(
            &mut cluster,
            &mut state,
            &opts.policy,
            u64::from(r) * 1000,
            &mut rng,
        );
        load_moved += out.load_moved;
        let stat = RoundStat::of(r, &cluster, &out);
        on_round(&stat);
        rounds.push(stat);
    }
    let mut report = SimReport::new(opts, vms, rounds, load_moved, baseline);
    if opts.rules.is_some() {
        report.rules = Some(report::RulesOutcome {
            broken_initial,
            broken_final: rules::broken(&cluster),
        });
    }
    report
}
