//! Two real agents whose round timers fire together (same interval, no jitter), so
//! that they keep opening sessions with each other at the same instant, while slow
//! migrations keep the moves of one session in flight over several rounds. A node
//! takes part in one session at a time (crossed opens are refused, never served
//! beside the node's own session), and a pair's next session sees the moves the
//! previous one decided: 12 equal VMs on n1 end 6 and 6 (one move per session), every
//! VM planned and moved once (a strict 60 s cooldown would keep any overshoot), no VM in a
//! session's candidates after an earlier session decided to move it off that node, and
//! no VM ran on two hosts.

mod agent_util;

use agent_util::*;
use ballast_node::agent::wire::{SessionOutcome, SessionRecord};
use ballast_store::{NodeId, VmId};
use std::collections::BTreeMap;
use std::time::Duration;

#[test]
fn crossed_sessions_of_a_pair_never_overlap_and_see_each_others_moves() {
    let mut c = Cluster::new(&[NodeOpts::default(), NodeOpts::default()]);
    for n in &c.nodes {
        set_in_config(
            &n.config,
            "round_interval = \"300ms\"",
            "round_interval = \"100ms\"",
        );
        set_in_config(
            &n.config,
            "round_jitter = \"150ms\"",
            "round_jitter = \"0ms\"",
        );
        // One move per session: many sessions, crossing again and again.
        set_in_config(
            &n.config,
            "cooldown = \"0s\"",
            "cooldown = \"60s\"\ncooldown_allows_onward = false\nmax_moves_per_session = 1",
        );
        set_in_config(&n.config, "migration = \"30ms\"", "migration = \"400ms\"");
    }
    c.start_all();
    let vms: Vec<VmId> = (0..12).map(|i| VmId::from(format!("p-{i:02}"))).collect();
    run_bounded(Duration::from_secs(120), async {
        c.wait_membership(Duration::from_secs(20)).await;
        let n1 = nid(&c, 0);
        for vm in &vms {
            c.admin(0)
                .create_vm(vm, &spec(1.0), Some(&n1), false)
                .await
                .expect("create");
        }
        wait_until(Duration::from_secs(60), "6 VMs on each node", || async {
            let (Ok(a), Ok(b)) = (c.admin(0).status().await, c.admin(1).status().await) else {
                return false;
            };
            a.summary.vm_count == 6
                && b.summary.vm_count == 6
                && a.handoffs.is_empty()
                && b.handoffs.is_empty()
        })
        .await;
        // Rounds go on: nothing moves any more (an overshoot would have shown above).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let snaps = c.snapshots().await;
        assert!(all_resolved(&snaps, &vms));
        for (i, s) in snaps.iter().enumerate() {
            let s = s.as_ref().expect("snapshot");
            assert_eq!(s.entries.len(), 6, "n{} holds {:?}", i + 1, s.entries);
            for e in &s.entries {
                assert!(
                    e.epoch <= 1,
                    "{} moved more than once (epoch {})",
                    e.vm,
                    e.epoch
                );
            }
        }
        let records = sessions_of(&c, 2).await;
        let crossed = records
            .iter()
            .filter(|r| {
                matches!(
                    r.outcome,
                    SessionOutcome::PeerBusy | SessionOutcome::SelfBusy
                )
            })
            .count();
        println!("{} sessions, {crossed} refused as busy", records.len());
        check_sessions_see_earlier_moves(&records);
        check_planned_once(&records);
    });
    c.assert_no_double_run();
}

/// The session records of the first `nodes` agents, oldest first, each printed (what a
/// failure leaves to explain itself).
async fn sessions_of(c: &Cluster, nodes: usize) -> Vec<SessionRecord> {
    let mut records = Vec::new();
    for i in 0..nodes {
        records.extend(c.admin(i).recent_sessions().await.expect("sessions"));
    }
    records.sort_by_key(|r| r.now_unix_ms);
    for r in &records {
        let moves: Vec<String> = r
            .moves
            .iter()
            .map(|m| format!("{} {}>{}", m.vm, m.from, m.to))
            .collect();
        println!(
            "{} {} -> {} {} loads {:.3}/{:.3} moves {moves:?}",
            r.now_unix_ms, r.initiator, r.peer, r.outcome, r.load_initiator, r.load_peer
        );
    }
    records
}

/// Each VM is planned once: nothing is planned on top of moves on their way (which the
/// receiver would take twice, or refuse at its incoming limit to be planned again and
/// again).
fn check_planned_once(records: &[SessionRecord]) {
    let mut planned: BTreeMap<&VmId, usize> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| matches!(r.outcome, SessionOutcome::Moved(_)))
    {
        for m in &r.moves {
            *planned.entry(&m.vm).or_default() += 1;
        }
    }
    assert!(
        planned.values().all(|&n| n == 1),
        "VMs planned more than once: {planned:?}"
    );
}

/// No session offers, on a node's side, a VM that an earlier session already decided
/// to move off that node (it is gone, or still leaving and so not movable).
fn check_sessions_see_earlier_moves(records: &[SessionRecord]) {
    let mut decided: BTreeMap<VmId, (NodeId, u64)> = BTreeMap::new();
    for r in records {
        let sides = [
            (&r.initiator, &r.initiator_candidates),
            (&r.peer, &r.peer_candidates),
        ];
        for (node, candidates) in sides {
            for c in candidates {
                if let Some((from, at)) = decided.get(&c.vm) {
                    assert!(
                        from != node,
                        "session {} (at {}) offered {} on {node}, which the session at {at} \
                         had decided to move off {node}",
                        r.session,
                        r.now_unix_ms,
                        c.vm
                    );
                }
            }
        }
        if matches!(r.outcome, SessionOutcome::Moved(_)) {
            for m in &r.moves {
                decided.insert(m.vm.clone(), (m.from.clone(), r.now_unix_ms));
            }
        }
    }
}

/// Three agents: n1 and n3 hold 6 equal VMs each, n2 none. n2 takes VMs from one of
/// them; while those are on their way (slow migrations, one at a time) n2 plans nothing
/// more: a plan on top would either take its share a second time (the 60 s cooldown
/// would keep the overshoot) or be refused by n2's incoming limit and planned again and
/// again. Each VM is planned once, and no node ends with more than 5.
#[test]
fn vms_on_their_way_count_in_the_receivers_next_sessions() {
    let quiet = NodeOpts {
        balancing: false,
        ..NodeOpts::default()
    };
    let mut c = Cluster::new(&[quiet.clone(), quiet.clone(), quiet]);
    for n in &c.nodes {
        set_in_config(
            &n.config,
            "round_interval = \"300ms\"",
            "round_interval = \"100ms\"",
        );
        set_in_config(
            &n.config,
            "cooldown = \"0s\"",
            "cooldown = \"60s\"\ncooldown_allows_onward = false",
        );
        set_in_config(&n.config, "migration = \"30ms\"", "migration = \"500ms\"");
    }
    c.start_all();
    let vms: Vec<VmId> = (0..12).map(|i| VmId::from(format!("w-{i:02}"))).collect();
    run_bounded(Duration::from_secs(40), async {
        c.wait_membership(Duration::from_secs(20)).await;
        for (i, vm) in vms.iter().enumerate() {
            let on = if i < 6 { 0 } else { 2 };
            c.admin(on)
                .create_vm(vm, &spec(1.0), Some(&nid(&c, on)), false)
                .await
                .expect("create");
        }
    });
    // Balancing on, everywhere at once (the VMs outlive their agents).
    for i in 0..3 {
        c.kill(i);
        set_in_config(&c.nodes[i].config, "enabled = false", "enabled = true");
    }
    c.start_all();
    run_bounded(Duration::from_secs(120), async {
        c.wait_membership(Duration::from_secs(20)).await;
        let settled_since = std::cell::Cell::new(None);
        wait_until(Duration::from_secs(60), "moves settled for 3 s", || async {
            let mut quiet = true;
            for i in 0..3 {
                match c.admin(i).status().await {
                    Ok(s) => quiet &= s.handoffs.is_empty(),
                    Err(_) => quiet = false,
                }
            }
            if !quiet || !all_resolved(&c.snapshots().await, &vms) {
                settled_since.set(None);
                return false;
            }
            let since = settled_since.get().unwrap_or_else(std::time::Instant::now);
            settled_since.set(Some(since));
            since.elapsed() > Duration::from_secs(3)
        })
        .await;
        let snaps = c.snapshots().await;
        let counts: Vec<usize> = snaps
            .iter()
            .map(|s| s.as_ref().map_or(0, |s| s.entries.len()))
            .collect();
        println!("VMs per node: {counts:?}");
        check_planned_once(&sessions_of(&c, 3).await);
        assert_eq!(counts.iter().sum::<usize>(), 12, "{counts:?}");
        assert!(
            counts.iter().all(|&n| n <= 5),
            "a node took more than its share: {counts:?}"
        );
    });
    c.assert_no_double_run();
}
