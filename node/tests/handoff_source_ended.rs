//! The handoff over a hypervisor that ends the source copy at the switchover (libvirt's
//! peer-to-peer migration; `SourceCopy::Ended`): after the switchover the paused
//! destination is the only copy, so every path rolls forward. A deadline, a failed
//! migration call or a failed cancel after the switchover must commit, never abort.

mod handoff_util;

use ballast_node::handoff::world::{vm_id, CopyState, OutMigration, SimAction, World};
use ballast_node::handoff::{HandoffConfig, Notice, Role, SourceCopy, TimerKind};
use handoff_util::*;

fn ended() -> HandoffConfig {
    HandoffConfig {
        source_copy: SourceCopy::Ended,
        ..HandoffConfig::default()
    }
}

fn ended_world() -> World {
    world_of(ended())
}

/// Where vm0 lives after a resolved run (checks I3 first).
fn home(w: &World) -> usize {
    w.resolved().expect("resolved");
    (0..w.nodes.len())
        .find(|&i| w.nodes[i].store.entry(&vm_id(0)).is_some())
        .expect("vm0 has a home")
}

fn switched_over(w: &World) -> bool {
    w.nodes[0].hyper.outgoing.get(&vm_id(0)) == Some(&OutMigration::Completed)
}

fn aborted(w: &World) -> bool {
    w.notices
        .iter()
        .any(|(_, n)| matches!(n, Notice::Aborted { .. }))
}

#[test]
fn the_switchover_ends_the_source_copy_and_the_move_commits() {
    let mut w = ended_world();
    w.start_move(0, &vm_id(0), 1).unwrap();
    run_until(&mut w, switched_over);
    assert_eq!(w.nodes[0].hyper.copy(&vm_id(0)), None, "source copy ended");
    assert_eq!(w.nodes[1].hyper.copy(&vm_id(0)), Some(CopyState::Received));
    run_to_idle(&mut w).unwrap();
    assert_eq!(home(&w), 1);
    assert_eq!(w.nodes[1].hyper.copy(&vm_id(0)), Some(CopyState::Running));
}

#[test]
fn a_deadline_after_the_switchover_rolls_forward() {
    let mut w = ended_world();
    w.start_move(0, &vm_id(0), 1).unwrap();
    run_until(&mut w, switched_over);
    force_deadlines(&mut w).unwrap();
    run_to_idle(&mut w).unwrap();
    assert_eq!(home(&w), 1, "rolled forward to the destination");
    assert!(!aborted(&w), "{:?}", w.notices);
    let committed = w.notices.iter().any(|(i, n)| {
        *i == 0
            && matches!(
                n,
                Notice::Committed {
                    role: Role::Source,
                    ..
                }
            )
    });
    assert!(committed, "{:?}", w.notices);
}

/// Runs the source's pending `cancel_outgoing`, failing it.
fn fail_cancel(w: &mut World) -> bool {
    run_cancel(w, true)
}

/// Runs the source's pending `cancel_outgoing` (failing it when `fail`); false if none.
fn run_cancel(w: &mut World, fail: bool) -> bool {
    let index = w.nodes[0].calls.iter().position(|c| {
        matches!(
            c.call.action,
            ballast_node::handoff::DriverAction::CancelOutgoing
        )
    });
    let Some(index) = index else { return false };
    step(
        w,
        &SimAction::RunCall {
            node: 0,
            index,
            fail,
        },
    )
    .unwrap();
    true
}

#[test]
fn a_failed_cancel_is_retried_not_taken_as_cancelled() {
    let mut w = ended_world();
    w.start_move(0, &vm_id(0), 1).unwrap();
    run_until(&mut w, switched_over);
    force_deadlines(&mut w).unwrap();
    run_until(&mut w, |w| {
        w.nodes[0]
            .calls
            .iter()
            .any(|c| c.call.action == ballast_node::handoff::DriverAction::CancelOutgoing)
    });
    for _ in 0..3 {
        assert!(fail_cancel(&mut w), "no cancel to fail");
        assert!(!aborted(&w), "aborted after a failed cancel");
        let retry = w.nodes[0]
            .timers
            .iter()
            .find(|(_, t)| t.kind == TimerKind::CancelRetry)
            .cloned()
            .expect("a cancel retry is armed");
        run_steps_exec(&mut w, 0).unwrap();
        step(
            &mut w,
            &SimAction::Fire {
                node: 0,
                at: retry.0,
                timer: retry.1,
            },
        )
        .unwrap();
        run_steps_exec(&mut w, 0).unwrap();
    }
    run_to_idle(&mut w).unwrap();
    assert_eq!(home(&w), 1);
    assert!(!aborted(&w));
}

#[test]
fn a_cancel_before_the_switchover_still_aborts() {
    let mut w = ended_world();
    w.start_move(0, &vm_id(0), 1).unwrap();
    run_until(&mut w, |w| {
        matches!(
            w.nodes[0].hyper.outgoing.get(&vm_id(0)),
            Some(OutMigration::Active { .. })
        )
    });
    force_deadlines(&mut w).unwrap();
    run_steps_exec(&mut w, 0).unwrap();
    assert!(run_cancel(&mut w, false), "no cancel pending");
    run_to_idle(&mut w).unwrap();
    assert_eq!(home(&w), 0, "rolled back to the source");
    assert!(aborted(&w));
}

#[test]
fn every_deadline_and_driver_failure_resolves_to_one_running_copy() {
    let n = {
        let mut w = ended_world();
        w.start_move(0, &vm_id(0), 1).unwrap();
        run_to_idle(&mut w).unwrap()
    };
    let (mut back, mut forward) = (0, 0);
    for k in 0..=n {
        let mut probe = ended_world();
        probe.start_move(0, &vm_id(0), 1).unwrap();
        run_steps(&mut probe, k).unwrap();
        let mut w = probe.clone();
        force_deadlines(&mut w).unwrap();
        run_to_idle(&mut w).unwrap_or_else(|e| panic!("deadline at step {k}: {e}"));
        let mut outcomes = vec![home(&w)];
        for fail in failures(&probe) {
            let mut w = probe.clone();
            step(&mut w, &fail).unwrap();
            run_to_idle(&mut w).unwrap_or_else(|e| panic!("{fail:?} at step {k}: {e}"));
            outcomes.push(home(&w));
        }
        for h in outcomes {
            if h == 0 {
                back += 1;
            } else {
                forward += 1;
            }
        }
    }
    assert!(back > 0 && forward > 0, "back {back}, forward {forward}");
}
