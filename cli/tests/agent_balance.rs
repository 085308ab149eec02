//! Four real agents on loopback (sim driver, process mode): 40 VMs created on one node
//! spread until every node holds VMs and max/mean load ≤ 1.10, each VM `Running` in
//! exactly one schedule, no VM ever ran on two hosts at once.

mod agent_util;

use agent_util::*;
use ballast_store::VmId;
use std::time::Duration;

#[test]
fn forty_vms_on_one_node_spread_over_four() {
    let mut c = Cluster::new(&vec![NodeOpts::default(); 4]);
    c.start_all();
    run_bounded(Duration::from_secs(120), async {
        c.wait_membership(Duration::from_secs(20)).await;
        let first = c.admin(0);
        let n1 = nid(&c, 0);
        let mut vms = Vec::new();
        for i in 0..40 {
            let vm = VmId::from(format!("vm-{i:02}"));
            let cpu = 0.5 + f64::from(i % 5) * 0.25;
            let at = first
                .create_vm(&vm, &spec(cpu), Some(&n1), false)
                .await
                .expect("create");
            assert_eq!(at, n1);
            vms.push(vm);
        }
        let start = std::time::Instant::now();
        wait_until(Duration::from_secs(60), "balance", || async {
            let mut loads = Vec::new();
            for i in 0..4 {
                let Ok(s) = c.admin(i).status().await else {
                    return false;
                };
                if s.summary.vm_count == 0 || !s.handoffs.is_empty() {
                    return false;
                }
                loads.push(s.summary.load);
            }
            let mean = loads.iter().sum::<f64>() / 4.0;
            let max = loads.iter().cloned().fold(0.0, f64::max);
            max / mean <= 1.10
        })
        .await;
        println!("balanced after {:.1} s", start.elapsed().as_secs_f64());
        wait_until(Duration::from_secs(20), "all resolved", || async {
            all_resolved(&c.snapshots().await, &vms)
        })
        .await;
        let mut loads = Vec::new();
        for i in 0..4 {
            let s = c.admin(i).status().await.expect("status");
            println!(
                "{}: load {:.4} vms {} committed {}",
                s.node, s.summary.load, s.summary.vm_count, s.counters.handoffs_committed
            );
            loads.push(s.summary.load);
        }
    });
    c.assert_no_double_run();
}
