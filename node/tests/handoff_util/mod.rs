//! Shared helpers of the handoff tests: building a simulated cluster and stepping it
//! (deterministically, or with a seeded RNG and faults) while checking I1 and I2 after
//! every step.
#![allow(dead_code)]

use ballast_node::handoff::world::{Faults, SimAction, World};
#[cfg(feature = "planted-bugs")]
use ballast_node::handoff::PlantedBug;
use ballast_node::handoff::{HandoffConfig, TimerKind};
use rand::rngs::StdRng;
use rand::Rng;

/// Most steps any test run may take before it counts as not converging.
pub const STEPS_MAX: usize = 20_000;

/// Three nodes; vm0 on n0, vm1 on n1; notices and sent messages recorded.
pub fn world() -> World {
    world_of(HandoffConfig::default())
}

/// Like [`world`] with a planted bug (builds with the `planted-bugs` feature).
#[cfg(feature = "planted-bugs")]
pub fn world_with(bug: PlantedBug) -> World {
    world_of(HandoffConfig {
        planted_bug: bug,
        ..HandoffConfig::default()
    })
}

/// Like [`world`] with the machine's configuration `config`.
pub fn world_of(config: HandoffConfig) -> World {
    let mut w = World::new(3, &[0, 1], config);
    w.record = true;
    w
}

/// Applies one action and checks I1 and I2.
pub fn step(w: &mut World, action: &SimAction) -> Result<(), String> {
    // `BALLAST_TRACE_SIM=1` prints every action and notice (to replay a failing seed).
    let trace = std::env::var_os("BALLAST_TRACE_SIM").is_some();
    if trace {
        let what = match action {
            SimAction::Deliver { index, .. } | SimAction::Drop { index } => {
                format!("{:?}", w.net.get(*index))
            }
            SimAction::RunCall { node, index, .. } => {
                format!("{:?}", w.nodes[*node].calls.get(*index))
            }
            _ => String::new(),
        };
        eprintln!("ACT {action:?} {what}");
    }
    let before = w.notices.len();
    w.apply(action);
    if trace {
        for n in &w.notices[before..] {
            eprintln!("   NOTICE {n:?}");
        }
    }
    w.check().map_err(|v| format!("{v} after {action:?}"))
}

/// The deterministic schedule: always the first enabled protocol step (effects first,
/// then hypervisor, driver calls, messages in order; timers only when nothing else).
pub fn first_action(w: &World) -> Option<SimAction> {
    let mut out = Vec::new();
    w.actions(Faults::default(), &mut out);
    out.into_iter().next()
}

/// Steps deterministically until nothing is enabled; returns the number of steps.
pub fn run_to_idle(w: &mut World) -> Result<usize, String> {
    for n in 0..STEPS_MAX {
        let Some(a) = first_action(w) else {
            return Ok(n);
        };
        step(w, &a)?;
    }
    Err(format!("no quiescence after {STEPS_MAX} steps"))
}

/// Steps deterministically `k` times (or until idle).
pub fn run_steps(w: &mut World, k: usize) -> Result<(), String> {
    for _ in 0..k {
        let Some(a) = first_action(w) else {
            return Ok(());
        };
        step(w, &a)?;
    }
    Ok(())
}

/// Fault odds of a random run.
#[derive(Clone, Copy, Debug)]
pub struct Odds {
    /// Chance that a step is a fault (when one is enabled).
    pub fault: f64,
    /// Crashes allowed in the run.
    pub crashes_max: u32,
    /// Chance per step of starting a move.
    pub start_move: f64,
}

/// One random step with faults; returns false when nothing was enabled.
pub fn random_step(
    w: &mut World,
    rng: &mut StdRng,
    odds: Odds,
    crashes: &mut u32,
) -> Result<bool, String> {
    if rng.random_bool(odds.start_move) {
        random_move(w, rng);
    }
    let faults = Faults {
        duplicate: true,
        drop: true,
        crash: *crashes < odds.crashes_max,
        fail_migration: true,
        fail_calls: true,
        early_timers: true,
    };
    let mut steps = Vec::new();
    w.actions(
        Faults {
            early_timers: true,
            ..Faults::default()
        },
        &mut steps,
    );
    let mut all = Vec::new();
    w.actions(faults, &mut all);
    let only_faults: Vec<SimAction> = all.into_iter().filter(|a| !steps.contains(a)).collect();
    let action = if !only_faults.is_empty() && (steps.is_empty() || rng.random_bool(odds.fault)) {
        only_faults[rng.random_range(0..only_faults.len())].clone()
    } else if !steps.is_empty() {
        steps[rng.random_range(0..steps.len())].clone()
    } else {
        return Ok(false);
    };
    if matches!(action, SimAction::Crash { .. }) {
        *crashes += 1;
    }
    step(w, &action)?;
    Ok(true)
}

/// Starts a move of a random VM from its holder to a random other node, if possible.
pub fn random_move(w: &mut World, rng: &mut StdRng) {
    let vms: Vec<_> = w.vms().into_iter().collect();
    if vms.is_empty() {
        return;
    }
    let vm = &vms[rng.random_range(0..vms.len())];
    let holder = (0..w.nodes.len()).find(|&i| {
        w.can_input(i)
            && w.nodes[i]
                .store
                .entry(vm)
                .is_some_and(|e| e.held == ballast_node::handoff::world::Held::Running)
    });
    if let Some(from) = holder {
        let to = (from + 1 + rng.random_range(0..w.nodes.len() - 1)) % w.nodes.len();
        let _ = w.start_move(from, vm, to);
    }
}

/// Fault-free random steps (timers only when nothing else is enabled) until quiescent.
pub fn settle(w: &mut World, rng: &mut StdRng) -> Result<usize, String> {
    for n in 0..STEPS_MAX {
        let mut out = Vec::new();
        w.actions(Faults::default(), &mut out);
        if out.is_empty() {
            return Ok(n);
        }
        let a = out[rng.random_range(0..out.len())].clone();
        step(w, &a)?;
    }
    Err(format!("no quiescence after {STEPS_MAX} fault-free steps"))
}

/// Fires every pending deadline timer of the source now.
pub fn force_deadlines(w: &mut World) -> Result<(), String> {
    let due: Vec<_> = w.nodes[0]
        .timers
        .iter()
        .filter(|(_, t)| {
            matches!(
                t.kind,
                TimerKind::PrepareDeadline | TimerKind::MigrateDeadline
            )
        })
        .cloned()
        .collect();
    for (at, timer) in due {
        if !w.can_input(0) {
            run_steps_exec(w, 0)?;
        }
        step(w, &SimAction::Fire { node: 0, at, timer })?;
    }
    Ok(())
}

pub fn run_steps_exec(w: &mut World, node: usize) -> Result<(), String> {
    while !w.nodes[node].queue.is_empty() {
        step(w, &SimAction::Exec { node })?;
    }
    Ok(())
}

/// The failures one can inject at a given point, each as the list of fault actions
/// enabled there.
pub fn failures(w: &World) -> Vec<SimAction> {
    let mut all = Vec::new();
    w.actions(
        Faults {
            fail_migration: true,
            fail_calls: true,
            ..Faults::default()
        },
        &mut all,
    );
    all.into_iter()
        .filter(|a| {
            matches!(
                a,
                SimAction::Switchover { fail: true, .. } | SimAction::RunCall { fail: true, .. }
            )
        })
        .collect()
}

/// Steps until `pred` holds.
pub fn run_until(w: &mut World, pred: impl Fn(&World) -> bool) {
    for _ in 0..STEPS_MAX {
        if pred(w) {
            return;
        }
        let a = first_action(w).expect("stuck before the condition held");
        step(w, &a).unwrap();
    }
    panic!("condition never held");
}
