//! The session history survives `kill -9` (issue 16, durable session history): an
//! agent that balanced, SIGKILLed and restarted, still lists the sessions it started and
//! the VMs they moved; `ballast sessions --vm` and `--since` read that history; a bad
//! `--since` is refused.

mod agent_util;
mod cli_util;

use agent_util::*;
use ballast_node::agent::wire::SessionRecord;
use ballast_store::VmId;
use std::time::Duration;

use cli_util::with_admin as cli;

/// The first session of `records` that moved a VM: (session id, the VM).
fn a_move(records: &[SessionRecord]) -> Option<(u64, VmId)> {
    records
        .iter()
        .find_map(|r| r.moves.first().map(|m| (r.session, m.vm.clone())))
}

#[test]
fn kept_sessions_survive_kill_9_and_answer_by_vm_and_time() {
    let mut c = Cluster::new(&vec![
        NodeOpts {
            sim_mode: "in_process",
            ..NodeOpts::default()
        };
        2
    ]);
    c.start_all();
    let bundle = c.write_admin_bundle();
    let found = std::sync::Mutex::new(None);
    run_bounded(Duration::from_secs(90), async {
        c.wait_membership(Duration::from_secs(20)).await;
        let n1 = nid(&c, 0);
        for i in 0..6 {
            let vm = VmId::from(format!("h-{i}"));
            c.admin(0)
                .create_vm(&vm, &spec(1.0), Some(&n1), false)
                .await
                .expect("create");
        }
        wait_until(
            Duration::from_secs(30),
            "a session that moved a VM",
            || async {
                for i in 0..2 {
                    if let Ok(r) = c.admin(i).recent_sessions().await {
                        if let Some((session, vm)) = a_move(&r) {
                            *found.lock().expect("lock") = Some((i, session, vm));
                            return true;
                        }
                    }
                }
                false
            },
        )
        .await;
    });
    let (i, session, vm) = found
        .into_inner()
        .expect("lock")
        .expect("a session moved a VM");
    println!(
        "node n{} started session {session}, which moved {vm}",
        i + 1
    );
    c.kill(i);
    c.start(i, "");
    run_bounded(Duration::from_secs(60), async {
        wait_until(
            Duration::from_secs(30),
            "the restarted node answers",
            || async { c.admin(i).status().await.is_ok() },
        )
        .await;
        let kept = c.admin(i).recent_sessions().await.expect("sessions");
        assert!(
            kept.iter().any(|r| r.session == session),
            "session {session} lost with the restart: {:?}",
            kept.iter().map(|r| r.session).collect::<Vec<_>>()
        );
    });
    let o = cli(
        &bundle,
        &["sessions", "--vm", vm.as_str(), "--json", "--limit", "1000"],
    );
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(
        cli_util::code(&o),
        0,
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let sessions = report["sessions"].as_array().expect("sessions");
    assert!(
        sessions.iter().any(|s| s["session"] == session),
        "sessions --vm {vm} lacks session {session}: {out}"
    );
    let o = cli(&bundle, &["sessions", "--vm", "no-such-vm", "--json"]);
    let none: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(none["sessions"].as_array().map(Vec::len), Some(0), "{none}");
    let o = cli(
        &bundle,
        &[
            "sessions", "--since", "1h", "--moves", "--json", "--limit", "1000",
        ],
    );
    let recent: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert!(
        recent["sessions"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["session"] == session)),
        "{recent}"
    );
    let o = cli(&bundle, &["sessions", "--since", "yesterday"]);
    assert_eq!(cli_util::code(&o), 2);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("expected a duration such as 90m"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
