//! For every failpoint: two real agents (sim driver, process mode, so VMs outlive their
//! agent), a VM moved n1 → n2; the side armed with the failpoint kills itself (SIGKILL)
//! at that step, is restarted on the same store, and the handoff resolves (commit or
//! abort): afterwards the VM is `Running` in exactly one schedule, no handoff record
//! remains (I1, I3), and the sim run logs show it never ran on two hosts at once (I2).
//! Abort-path failpoints make the migration fail (`fail_next = 1` on the source).

mod agent_util;

use agent_util::*;
use ballast_store::VmId;
use std::time::Duration;

fn scenario(failpoint: &str) {
    let FailpointCase {
        side,
        fail_migration,
        must_fire,
        ..
    } = failpoint_case(failpoint);
    let mut source = NodeOpts {
        balancing: false,
        ..NodeOpts::default()
    };
    if fail_migration {
        source.extra = "fail_next = 1".into();
    }
    let dest = NodeOpts {
        balancing: false,
        ..NodeOpts::default()
    };
    let mut c = Cluster::new(&[source, dest]);
    let victim = if side == Side::Source { 0 } else { 1 };
    c.start(0, if victim == 0 { failpoint } else { "" });
    c.start(1, if victim == 1 { failpoint } else { "" });
    let mut fired = false;
    run_bounded(Duration::from_secs(90), async {
        let t0 = std::time::Instant::now();
        c.wait_membership(Duration::from_secs(20)).await;
        println!("{failpoint}: membership {:.1}s", t0.elapsed().as_secs_f64());
        let vm = VmId::from("vm-fp");
        let n1 = nid(&c, 0);
        let n2 = nid(&c, 1);
        c.admin(0)
            .create_vm(&vm, &spec(1.0), Some(&n1), false)
            .await
            .expect("create");
        let mover = c.admin(0);
        let vm2 = vm.clone();
        let moving = tokio::spawn(async move { mover.move_vm(&vm2, &n2).await });
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if c.exited(victim) {
                fired = true;
                break;
            }
            if moving.is_finished() && start.elapsed() > Duration::from_secs(3) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if must_fire {
            assert!(fired, "failpoint {failpoint} did not kill the agent");
        }
        println!(
            "{failpoint}: phase move/die {:.1}s",
            start.elapsed().as_secs_f64()
        );
        if fired {
            c.start(victim, "");
        }
        if fired {
            // The caller's node may be the one that died: do not wait for its answer.
            moving.abort();
        } else {
            let _ = moving.await;
        }
        println!(
            "{failpoint}: move call returned {:.1}s",
            start.elapsed().as_secs_f64()
        );
        wait_until(Duration::from_secs(40), "handoff resolved", || async {
            all_resolved(&c.snapshots().await, std::slice::from_ref(&vm))
        })
        .await;
        println!(
            "{failpoint}: resolved {:.1}s",
            start.elapsed().as_secs_f64()
        );
        // The holder's hypervisor runs the VM (reconciliation or the handoff did).
        let snaps = c.snapshots().await;
        let h = holders(&snaps);
        let holder = h[&vm][0].0;
        wait_until(
            Duration::from_secs(20),
            "VM running on its holder",
            || async {
                c.run_records()
                    .iter()
                    .rev()
                    .find(|r| r.vm.as_ref() == Some(&vm))
                    .is_some_and(|r| {
                        r.host.as_str() == c.nodes[holder].id
                            && r.event == ballast_node::driver::sim::RunEvent::Run
                    })
            },
        )
        .await;
        println!("{failpoint}: fired={fired}, VM on {}", c.nodes[holder].id);
    });
    c.assert_no_double_run();
}

macro_rules! failpoint_tests {
    ($($name:ident: $fp:expr;)*) => {
        $(
            #[test]
            fn $name() {
                scenario($fp);
            }
        )*
    };
}

failpoint_tests! {
    src_before_begin: "before:begin_migrate_out";
    src_after_begin: "after:begin_migrate_out";
    src_before_send_prepare: "before-send:prepare";
    src_after_send_prepare: "after-send:prepare";
    src_before_commit: "before:commit_migrate_out";
    src_after_commit: "after:commit_migrate_out";
    src_before_send_commit: "before-send:commit";
    src_after_send_commit: "after-send:commit";
    src_before_forget: "before:forget_transfer";
    src_after_forget: "after:forget_transfer";
    src_before_abort: "before:abort_migrate_out";
    src_after_abort: "after:abort_migrate_out";
    src_before_send_abort: "before-send:abort";
    src_after_send_abort: "after-send:abort";
    dst_before_accept: "before:accept_incoming";
    dst_after_accept: "after:accept_incoming";
    dst_before_send_prepared: "before-send:prepared";
    dst_after_send_prepared: "after-send:prepared";
    dst_before_promote: "before:promote_incoming";
    dst_after_promote: "after:promote_incoming";
    dst_before_send_commit_ack: "before-send:commit_ack";
    dst_after_send_commit_ack: "after-send:commit_ack";
    dst_before_drop: "before:drop_incoming";
    dst_after_drop: "after:drop_incoming";
    dst_before_send_query: "before-send:query_outcome";
    src_before_send_outcome: "before-send:outcome";
}

/// Every case in the table has its test above.
#[test]
fn every_failpoint_case_has_a_test() {
    let here = include_str!("agent_failpoints.rs");
    for c in FAILPOINT_CASES {
        assert!(
            here.contains(&format!("\"{}\";", c.name)),
            "no test for {}",
            c.name
        );
    }
}
