//! `ballast vm move` against real agents whose live migration outlasts an RPC: the
//! agent answers "under way" before its RPC deadline, the CLI follows the VM's entry
//! until it runs on the destination, then pins it there. Meanwhile the source reports
//! the migration's progress in `status`. Each VM stays in exactly one
//! schedule (I1) and never runs on two hosts at once (I2).

mod agent_util;

use agent_util::*;
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

/// The simulated migration's length, well beyond the agents' RPC timeout.
const MIGRATION_MS: u64 = 2_500;

#[test]
fn a_move_longer_than_an_rpc_is_followed_to_its_end() {
    let quiet = NodeOpts {
        balancing: false,
        ..NodeOpts::default()
    };
    let mut c = Cluster::new(&[quiet.clone(), quiet]);
    for n in &c.nodes {
        set_in_config(&n.config, "rpc_timeout = \"3s\"", "rpc_timeout = \"1s\"");
        set_in_config(
            &n.config,
            "migration = \"30ms\"",
            &format!("migration = \"{MIGRATION_MS}ms\""),
        );
    }
    c.start_all();
    let bundle = c.write_admin_bundle();
    let vm = ballast_store::VmId::from("big-1");
    run_bounded(Duration::from_secs(90), async {
        c.wait_membership(Duration::from_secs(20)).await;
        let n1 = nid(&c, 0);
        c.admin(0)
            .create_vm(&vm, &spec(1.0), Some(&n1), false)
            .await
            .expect("create");
    });

    let started = Instant::now();
    let cli = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args([
            "vm", "move", "big-1", "--to", "n2", "--pin", "--json", "--admin",
        ])
        .arg(&bundle)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ballast vm move");
    // While it migrates, the source reports the bytes sent in `status` (what `vm move`
    // and `drain` show).
    run_bounded(Duration::from_secs(30), async {
        wait_until(
            Duration::from_secs(10),
            "migration progress in status",
            || async {
                c.admin(0).status().await.is_ok_and(|s| {
                    s.handoffs
                        .iter()
                        .any(|h| h.vm == vm && h.progress.is_some_and(|p| p.transferred_bytes > 0))
                })
            },
        )
        .await;
    });
    let out = cli.wait_with_output().expect("ballast vm move");
    let took = started.elapsed();
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["moved"], true, "{report}");
    assert_eq!(report["from"], "n1", "{report}");
    assert_eq!(report["node"], "n2", "{report}");
    assert_eq!(report["pinned"], true, "{report}");
    assert!(
        took >= Duration::from_millis(MIGRATION_MS),
        "the CLI returned after {took:?}, before the migration could end"
    );
    // The agent answered before its RPC deadline instead of letting the call fail.
    assert!(
        c.logs(0)
            .contains("operator move still under way at the answer"),
        "n1 did not answer 'under way'"
    );

    run_bounded(Duration::from_secs(60), async {
        wait_until(Duration::from_secs(20), "big-1 resolved on n2", || async {
            let snaps = c.snapshots().await;
            let on_n2 = snaps[1].as_ref().is_some_and(|s| {
                s.entries
                    .iter()
                    .any(|e| e.vm == vm && e.pinned && e.state == ballast_store::VmState::Running)
            });
            on_n2 && all_resolved(&snaps, std::slice::from_ref(&vm))
        })
        .await;
    });
    c.assert_no_double_run();
}
