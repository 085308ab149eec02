//! Scenario tests of the handoff machine on the simulated cluster: the happy path,
//! abort at every step, duplicates and stale epochs, crash at every effect index,
//! store failures, operator forget, and a planted bug the checkers must catch.

mod handoff_util;

use ballast_node::handoff::world::{vm_id, CopyState, Held, SimAction, World};
use ballast_node::handoff::{Notice, Role};
#[cfg(feature = "planted-bugs")]
use ballast_node::handoff::{PlantedBug, TimerKind};
use handoff_util::*;

fn vm0() -> ballast_store::VmId {
    vm_id(0)
}

/// Where vm0 lives after a resolved run: the node holding it `Running`.
fn home(w: &World) -> usize {
    w.resolved().expect("resolved");
    (0..w.nodes.len())
        .find(|&i| w.nodes[i].store.entry(&vm0()).is_some())
        .expect("vm0 has a home")
}

#[test]
fn happy_path_moves_the_vm_and_settles() {
    let mut w = world();
    assert_eq!(w.start_move(0, &vm0(), 1), Ok(1));
    run_to_idle(&mut w).unwrap();
    w.resolved().unwrap();
    let entry = w.nodes[1].store.entry(&vm0()).expect("vm0 on n1");
    assert_eq!(entry.held, Held::Running);
    assert_eq!(entry.epoch, 1);
    assert_eq!(w.nodes[1].hyper.copy(&vm0()), Some(CopyState::Running));
    assert!(w.nodes[0].store.entry(&vm0()).is_none());
    assert!(w.nodes[0].hyper.copy(&vm0()).is_none());
    let committed = |role| {
        w.notices
            .iter()
            .any(|(_, n)| matches!(n, Notice::Committed { role: r, epoch: 1, .. } if *r == role))
    };
    assert!(committed(Role::Source) && committed(Role::Destination));
    assert!(w
        .notices
        .iter()
        .any(|(i, n)| *i == 0 && matches!(n, Notice::Settled { .. })));
    // and back again, under the next epoch
    assert_eq!(w.start_move(1, &vm0(), 0), Ok(2));
    run_to_idle(&mut w).unwrap();
    assert_eq!(home(&w), 0);
    assert_eq!(w.nodes[0].store.entry(&vm0()).map(|e| e.epoch), Some(2));
}

fn happy_steps() -> usize {
    let mut w = world();
    w.start_move(0, &vm0(), 1).unwrap();
    run_to_idle(&mut w).unwrap()
}

#[test]
fn abort_at_every_step_resolves_to_one_owner() {
    let n = happy_steps();
    let (mut aborted, mut committed) = (0, 0);
    for k in 0..=n {
        // a) the source's deadlines expire right after step k
        let mut w = world();
        w.start_move(0, &vm0(), 1).unwrap();
        run_steps(&mut w, k).unwrap();
        force_deadlines(&mut w).unwrap();
        run_to_idle(&mut w).unwrap_or_else(|e| panic!("deadline at step {k}: {e}"));
        match home(&w) {
            0 => aborted += 1,
            _ => committed += 1,
        }
        // b) every driver failure possible right after step k
        let mut probe = world();
        probe.start_move(0, &vm0(), 1).unwrap();
        run_steps(&mut probe, k).unwrap();
        for fail in failures(&probe) {
            let mut w = probe.clone();
            step(&mut w, &fail).unwrap();
            run_to_idle(&mut w).unwrap_or_else(|e| panic!("{fail:?} at step {k}: {e}"));
            match home(&w) {
                0 => aborted += 1,
                _ => committed += 1,
            }
        }
    }
    assert!(
        aborted > 0 && committed > 0,
        "aborted {aborted}, committed {committed}"
    );
}

#[test]
fn refused_prepare_aborts_without_a_trace() {
    let mut w = world();
    // n1 has seen epoch 5 of vm0 before (an old, dropped attempt): it refuses epoch 1.
    let n2 = w.nodes[2].id.clone();
    w.nodes[1].store.apply(
        &ballast_node::handoff::StoreOp::AcceptIncoming {
            vm: vm0(),
            from: n2,
            epoch: 5,
            payload: Default::default(),
        },
        0,
    );
    w.nodes[1].store.apply(
        &ballast_node::handoff::StoreOp::DropIncoming {
            vm: vm0(),
            epoch: 5,
        },
        0,
    );
    w.start_move(0, &vm0(), 1).unwrap();
    run_to_idle(&mut w).unwrap();
    assert_eq!(home(&w), 0);
    assert!(w.notices.iter().any(|(i, n)| *i == 0
        && matches!(
            n,
            Notice::Aborted {
                reason: ballast_node::handoff::AbortReason::Refused(
                    ballast_node::handoff::RefuseReason::StaleEpoch
                ),
                ..
            }
        )));
    // the next move uses an epoch above what n0 knows, the store picks max + 1
    assert_eq!(w.start_move(0, &vm0(), 2), Ok(2));
}

#[test]
fn duplicates_and_stale_messages_change_nothing() {
    let mut w = world();
    w.start_move(0, &vm0(), 1).unwrap();
    run_to_idle(&mut w).unwrap();
    let stores: Vec<_> = w.nodes.iter().map(|n| n.store.clone()).collect();
    let hypers: Vec<_> = w.nodes.iter().map(|n| n.hyper.clone()).collect();
    let sent = w.sent.clone();
    assert!(sent.len() >= 4, "prepare, prepared, commit, ack at least");
    for env in sent.iter().chain(sent.iter().rev()) {
        w.net.push(env.clone());
        run_to_idle(&mut w).unwrap();
        w.resolved().unwrap();
        for (i, n) in w.nodes.iter().enumerate() {
            assert_eq!(
                n.store, stores[i],
                "store of n{i} changed by replay of {env:?}"
            );
            assert_eq!(
                n.hyper, hypers[i],
                "hypervisor of n{i} changed by replay of {env:?}"
            );
        }
    }
    // messages from a node that has nothing to do with the move
    let mut forged = sent.clone();
    for env in &mut forged {
        env.from = 2;
        env.to = if env.to == 2 { 0 } else { env.to };
    }
    for env in forged {
        w.net.push(env);
        run_to_idle(&mut w).unwrap();
    }
    for (i, n) in w.nodes.iter().enumerate() {
        assert_eq!(
            n.store, stores[i],
            "store of n{i} changed by a forged message"
        );
    }
}

#[test]
fn duplicated_messages_during_the_move_change_nothing() {
    // Deliver every message twice while the move runs.
    let mut w = world();
    w.start_move(0, &vm0(), 1).unwrap();
    for _ in 0..STEPS_MAX {
        let Some(a) = first_action(&w) else { break };
        if let SimAction::Deliver { index, .. } = a {
            step(
                &mut w,
                &SimAction::Deliver {
                    index,
                    duplicate: true,
                },
            )
            .unwrap();
        }
        step(&mut w, &a).unwrap();
    }
    assert_eq!(home(&w), 1);
}

#[test]
fn crash_at_every_effect_index_of_both_sides_resolves() {
    for node in [0, 1] {
        let mut count = world();
        count.crash_plan = Some((node, u64::MAX));
        count.start_move(0, &vm0(), 1).unwrap();
        run_to_idle(&mut count).unwrap();
        let effects = count.nodes[node].effects_done;
        assert!(effects >= 5, "n{node} executed only {effects} effects");
        let mut homes = [0; 2];
        for k in 1..=effects {
            let mut w = world();
            w.crash_plan = Some((node, k));
            w.start_move(0, &vm0(), 1).unwrap();
            run_to_idle(&mut w)
                .unwrap_or_else(|e| panic!("crash of n{node} after effect {k}: {e}"));
            assert!(
                w.crash_plan.is_none(),
                "crash of n{node} after effect {k} did not happen"
            );
            w.resolved()
                .unwrap_or_else(|e| panic!("crash of n{node} after effect {k}: {e}"));
            homes[home(&w)] += 1;
        }
        assert!(homes[1] > 0, "n{node}: some crash points must still commit");
    }
}

#[test]
fn failed_store_ops_are_retried() {
    // n0 writes begin, commit, forget; n1 accept, promote.
    for (node, ops) in [(0, 3), (1, 2)] {
        for skip in 0..ops {
            let mut w = world();
            w.store_failures = Some((node, skip, 2));
            w.start_move(0, &vm0(), 1).unwrap();
            run_to_idle(&mut w).unwrap();
            w.resolved().unwrap();
            assert!(
                w.notices.iter().any(|(_, n)| matches!(
                    n,
                    Notice::StoreRetrying { .. } | Notice::Aborted { .. }
                )),
                "n{node} skip {skip}: the failure was not seen"
            );
        }
    }
}

#[test]
fn forget_of_a_dead_source_commits_a_complete_copy() {
    let mut w = world();
    w.start_move(0, &vm0(), 1).unwrap();
    run_until(&mut w, |w| {
        w.nodes[1].hyper.copy(&vm0()) == Some(CopyState::Received)
    });
    w.decommission(0);
    run_steps(&mut w, 50).unwrap();
    assert!(
        matches!(
            w.nodes[1].store.entry(&vm0()).map(|e| &e.held),
            Some(Held::Incoming { .. })
        ),
        "B must not decide alone before the operator's forget"
    );
    w.forget(1, 0);
    run_to_idle(&mut w).unwrap();
    assert_eq!(
        w.nodes[1].store.entry(&vm0()).map(|e| &e.held),
        Some(&Held::Running)
    );
    assert_eq!(w.nodes[1].hyper.copy(&vm0()), Some(CopyState::Running));
}

#[test]
fn forget_of_a_dead_source_drops_an_incomplete_copy() {
    let mut w = world();
    w.start_move(0, &vm0(), 1).unwrap();
    run_until(&mut w, |w| {
        w.nodes[1].hyper.copy(&vm0()) == Some(CopyState::Receiving)
    });
    w.decommission(0);
    run_steps(&mut w, 50).unwrap();
    w.forget(1, 0);
    run_to_idle(&mut w).unwrap();
    assert!(w.nodes[1].store.entry(&vm0()).is_none());
    assert!(w.nodes[1].hyper.copy(&vm0()).is_none());
}

#[test]
fn forget_of_a_dead_destination_after_commit_orphans_the_record() {
    let mut w = world();
    w.start_move(0, &vm0(), 1).unwrap();
    run_until(&mut w, |w| !w.nodes[0].store.transfer_map().is_empty());
    w.decommission(1);
    run_steps(&mut w, 50).unwrap();
    assert!(
        !w.nodes[0].store.transfer_map().is_empty(),
        "A keeps its record until ack"
    );
    w.forget(0, 1);
    run_to_idle(&mut w).unwrap();
    assert!(w.nodes[0].store.transfer_map().is_empty());
    assert!(w
        .notices
        .iter()
        .any(|(i, n)| *i == 0 && matches!(n, Notice::Orphaned { .. })));
    assert_eq!(
        w.nodes[0].hyper.copy(&vm0()),
        Some(CopyState::Paused),
        "copy kept for the operator"
    );
}

#[test]
#[cfg(feature = "planted-bugs")]
fn planted_promote_on_timeout_is_caught() {
    let mut w = world_with(PlantedBug::PromoteOnTimeout);
    w.start_move(0, &vm0(), 1).unwrap();
    // B has answered Prepared; A times out and aborts while B's query timer fires.
    run_until(&mut w, |w| {
        w.nodes[1]
            .timers
            .iter()
            .any(|(_, t)| t.kind == TimerKind::Query)
            && w.nodes[0].queue.is_empty()
    });
    force_deadlines(&mut w).unwrap();
    let query = w.nodes[1]
        .timers
        .iter()
        .find(|(_, t)| t.kind == TimerKind::Query)
        .cloned()
        .expect("query timer");
    let mut violation = None;
    let fire = SimAction::Fire {
        node: 1,
        at: query.0,
        timer: query.1,
    };
    if let Err(e) = step(&mut w, &fire) {
        violation = Some(e);
    }
    for _ in 0..STEPS_MAX {
        if violation.is_some() {
            break;
        }
        let Some(a) = first_action(&w) else { break };
        if let Err(e) = step(&mut w, &a) {
            violation = Some(e);
        }
    }
    let violation = violation.expect("the planted bug must break an invariant");
    assert!(
        violation.contains("I1") || violation.contains("I2"),
        "{violation}"
    );
}

/// Each of the first `vms` VMs is in exactly one node's store.
fn each_vm_held_once(w: &World, vms: usize) {
    for i in 0..vms {
        let holders = (0..w.nodes.len())
            .filter(|&n| w.nodes[n].store.entry(&vm_id(i)).is_some())
            .count();
        assert_eq!(holders, 1, "vm{i} held by exactly one node");
    }
}

/// The admission limits live in the machine: with one handoff in per node, a second
/// source's `Prepare` to a busy destination is refused `Busy` and that move aborts
/// (its VM runs on where it was); with one handoff out, a second move is not started.
#[test]
fn admission_limits_refuse_the_second_handoff_and_lose_nothing() {
    use ballast_node::handoff::{AbortReason, HandoffConfig, RefuseReason, StartError};
    let limited = HandoffConfig {
        incoming_max: 1,
        outgoing_max: 1,
        ..HandoffConfig::default()
    };
    // vm0 on n0, vm1 on n1, both sent to n2 at once.
    let mut w = world_of(limited.clone());
    w.start_move(0, &vm0(), 2).expect("first move starts");
    w.start_move(1, &vm_id(1), 2)
        .expect("second move starts at its source");
    run_to_idle(&mut w).unwrap();
    w.resolved().unwrap();
    let on_n2 = (0..2)
        .filter(|&i| w.nodes[2].store.entry(&vm_id(i)).is_some())
        .count();
    assert_eq!(on_n2, 1, "n2 took exactly one of the two VMs");
    assert!(
        w.notices.iter().any(|(i, n)| *i < 2
            && matches!(
                n,
                Notice::Aborted {
                    reason: AbortReason::Refused(RefuseReason::Busy),
                    ..
                }
            )),
        "the second source aborted on n2's Busy: {:?}",
        w.notices
    );
    each_vm_held_once(&w, 2);
    // Outgoing: vm0 and a second VM on n0; the second move is not started.
    let mut w = ballast_node::handoff::world::World::new(3, &[0, 0], limited);
    w.record = true;
    w.start_move(0, &vm0(), 1).expect("first move starts");
    assert!(matches!(
        w.start_move(0, &vm_id(1), 2),
        Err(StartError::OutgoingLimit(1))
    ));
    run_to_idle(&mut w).unwrap();
    assert_eq!(
        w.start_move(0, &vm_id(1), 2).map(|_| ()),
        Ok(()),
        "free again"
    );
    run_to_idle(&mut w).unwrap();
    w.resolved().unwrap();
}

/// The bytes limit lives in the machine too (the world's VMs have 64 MiB each): with room
/// for one VM's memory, a second move out of the same node is not started, and a second
/// `Prepare` to a destination already taking one in is refused `Busy`; a handoff alone
/// always runs, even of a VM larger than the limit. Nothing is lost either way.
#[test]
fn the_bytes_limit_holds_back_a_second_handoff_but_never_a_lone_one() {
    use ballast_node::handoff::{AbortReason, HandoffConfig, RefuseReason, StartError};
    let one_vm = HandoffConfig {
        bytes_max: 64 << 20,
        ..HandoffConfig::default()
    };
    // Outgoing: vm0 and vm1 on n0.
    let mut w = World::new(3, &[0, 0], one_vm.clone());
    w.record = true;
    w.start_move(0, &vm0(), 1).expect("first move starts");
    assert!(matches!(
        w.start_move(0, &vm_id(1), 2),
        Err(StartError::BytesLimit(b)) if b == 64 << 20
    ));
    run_to_idle(&mut w).unwrap();
    w.start_move(0, &vm_id(1), 2).expect("free again");
    run_to_idle(&mut w).unwrap();
    w.resolved().unwrap();
    // Incoming: vm0 on n0, vm1 on n1, both sent to n2 at once.
    let mut w = World::new(3, &[0, 1], one_vm);
    w.record = true;
    w.start_move(0, &vm0(), 2).expect("first move starts");
    w.start_move(1, &vm_id(1), 2)
        .expect("second starts at its own source");
    run_to_idle(&mut w).unwrap();
    w.resolved().unwrap();
    assert!(
        w.notices.iter().any(|(_, n)| matches!(
            n,
            Notice::Aborted {
                reason: AbortReason::Refused(RefuseReason::Busy),
                ..
            }
        )),
        "one Prepare refused Busy: {:?}",
        w.notices
    );
    each_vm_held_once(&w, 2);
    // A limit below one VM's memory: a lone handoff still runs and commits.
    let tiny = HandoffConfig {
        bytes_max: 1,
        ..HandoffConfig::default()
    };
    let mut w = World::new(2, &[0], tiny);
    w.start_move(0, &vm0(), 1).expect("a lone move starts");
    run_to_idle(&mut w).unwrap();
    w.resolved().unwrap();
    assert!(w.nodes[1].store.entry(&vm0()).is_some(), "vm0 moved to n1");
}
