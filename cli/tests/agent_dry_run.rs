//! `balancing.dry_run`: two real agents whose sessions decide as usual and record the
//! moves they would make (outcome `dry-run:<decision>`), while nothing moves; an
//! operator's move still works (advise, then act by hand). Each agent, configured with
//! metrics port 0, logs the port it bound.

mod agent_util;

use agent_util::*;
use ballast_node::agent::wire::SessionOutcome;
use ballast_store::{VmId, VmState};
use std::time::Duration;

#[test]
fn a_dry_run_plans_moves_and_makes_none() {
    let mut c = Cluster::new(&[NodeOpts::default(), NodeOpts::default()]);
    for n in &c.nodes {
        set_in_config(
            &n.config,
            "enabled = true",
            "enabled = true\ndry_run = true",
        );
    }
    c.start_all();
    let vms: Vec<VmId> = (0..6).map(|i| VmId::from(format!("d-{i}"))).collect();
    run_bounded(Duration::from_secs(90), async {
        c.wait_membership(Duration::from_secs(20)).await;
        let n1 = nid(&c, 0);
        for vm in &vms {
            c.admin(0)
                .create_vm(vm, &spec(1.0), Some(&n1), false)
                .await
                .expect("create");
        }
        // Sessions keep planning moves off n1 (each round anew, since none is made).
        let advised = std::cell::Cell::new(0);
        wait_until(
            Duration::from_secs(30),
            "three dry-run sessions",
            || async {
                let mut n = 0;
                for i in 0..2 {
                    let Ok(records) = c.admin(i).recent_sessions().await else {
                        return false;
                    };
                    for r in records.iter().filter(|r| !r.moves.is_empty()) {
                        assert!(matches!(r.outcome, SessionOutcome::DryRun(_)), "{r:?}");
                        assert!(r.moves.iter().all(|m| m.from.as_str() == "n1"), "{r:?}");
                        n += 1;
                    }
                }
                advised.set(n);
                n >= 3
            },
        )
        .await;
        println!("{} dry-run sessions planned moves", advised.get());
        // Nothing moved: every VM still runs on n1, n2 holds none, no handoff record.
        let snaps = c.snapshots().await;
        assert!(all_resolved(&snaps, &vms), "{snaps:?}");
        let on_n1 = snaps[0].as_ref().expect("n1 answers");
        assert_eq!(on_n1.entries.len(), vms.len(), "{on_n1:?}");
        assert!(snaps[1].as_ref().is_some_and(|s| s.entries.is_empty()));
        // The operator acts on the advice: a manual move is made.
        let (committed, _) = c
            .admin(0)
            .move_vm(&vms[0], &nid(&c, 1))
            .await
            .expect("operator move");
        assert!(committed);
        // The source has committed; the destination promotes its copy right after.
        wait_until(Duration::from_secs(20), "d-0 running on n2", || async {
            let snaps = c.snapshots().await;
            let on_n2 = snaps[1].as_ref().is_some_and(|s| {
                s.entries
                    .iter()
                    .any(|e| e.vm == vms[0] && e.state == VmState::Running)
            });
            on_n2 && all_resolved(&snaps, &vms)
        })
        .await;
    });
    c.assert_no_double_run();
    for i in 0..2 {
        let port = c.logged_metrics_port(i);
        assert!(
            port.is_some_and(|p| p != 0),
            "node {i} logged metrics port {port:?}"
        );
    }
}
