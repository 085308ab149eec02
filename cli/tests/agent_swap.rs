//! Two real agents on loopback (sim driver) in the state no single move can improve: n1
//! holds four VMs of 2.0 cores (8.0), n2 five of 1.3 (6.5). Moving a 2.0 would lift n2 to
//! 8.5, above n1's 8.0, so the policy plans a swap (a 2.0 for a 1.3, net 0.7, nearest
//! half the difference): n1 hands one VM over and pulls one back, each with the normal
//! handoff. Then the pair is within the threshold and nothing more moves.

mod agent_util;

use agent_util::*;
use ballast_node::agent::wire::{PlanKind, SessionOutcome};
use ballast_store::VmId;
use std::time::Duration;

#[test]
fn a_pair_no_single_move_can_balance_swaps_two_vms() {
    let mut c = Cluster::new(&vec![NodeOpts::default(); 2]);
    c.start_all();
    run_bounded(Duration::from_secs(120), async {
        c.wait_membership(Duration::from_secs(20)).await;
        // Created pinned, so nothing moves while the pair is built.
        let mut vms = Vec::new();
        for (node, cpu, count) in [(0, 2.0, 4), (1, 1.3, 5)] {
            let at = nid(&c, node);
            for i in 0..count {
                let vm = VmId::from(format!("vm-{node}-{i}"));
                let got = c
                    .admin(node)
                    .create_vm(&vm, &spec(cpu), Some(&at), true)
                    .await
                    .expect("create");
                assert_eq!(got, at);
                vms.push((node, cpu, vm));
            }
        }
        // The less busy side first: its VMs may only leave as half of a swap.
        for (node, _, vm) in vms.iter().rev() {
            c.admin(*node).unpin(vm).await.expect("unpin");
        }
        wait_until(Duration::from_secs(60), "a swap", || async {
            let Ok(on_n1) = c.admin(0).list_vms().await else {
                return false;
            };
            let small_on_n1 = on_n1
                .iter()
                .filter(|e| e.vm.as_str().starts_with("vm-1-"))
                .count();
            small_on_n1 == 1 && on_n1.len() == 4
        })
        .await;
        let all: Vec<VmId> = vms.iter().map(|(_, _, v)| v.clone()).collect();
        wait_until(Duration::from_secs(20), "all resolved", || async {
            all_resolved(&c.snapshots().await, &all)
        })
        .await;
        let mut swaps = Vec::new();
        for i in 0..2 {
            let recs = c.admin(i).recent_sessions().await.expect("sessions");
            swaps.extend(
                recs.into_iter()
                    .filter(|r| r.outcome == SessionOutcome::Moved(PlanKind::Swap)),
            );
        }
        assert_eq!(swaps.len(), 1, "one swap session: {swaps:?}");
        let s = &swaps[0];
        assert_eq!(s.moves.len(), 2);
        let (give, take) = (&s.moves[0], &s.moves[1]);
        assert_eq!((&give.from, &give.to), (&s.initiator, &s.peer));
        assert_eq!((&take.from, &take.to), (&s.peer, &s.initiator));
        // Net transfer 2.0 - 1.3 cores from the busier side, whichever side opened it.
        let big = if give.load_from > take.load_from {
            give
        } else {
            take
        };
        assert_eq!(big.from, nid(&c, 0));
        // Settled: n1 7.3 cores, n2 7.2, within the threshold; nothing else moved.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let on_n1 = c.admin(0).list_vms().await.expect("list");
        let on_n2 = c.admin(1).list_vms().await.expect("list");
        assert_eq!((on_n1.len(), on_n2.len()), (4, 5), "{on_n1:?} {on_n2:?}");
        let (l1, l2) = (
            c.admin(0).status().await.expect("status").summary.load,
            c.admin(1).status().await.expect("status").summary.load,
        );
        assert!((l1 - l2).abs() < 0.02, "loads {l1} / {l2}");
    });
    c.assert_no_double_run();
}
