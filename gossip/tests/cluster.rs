//! Several endpoints on loopback over real QUIC + TLS: convergence, propagation of a
//! load change, partition and healing through the fault hook, failure detection.

mod common;

use std::time::Duration;

use common::*;

const INTERVAL: Duration = Duration::from_millis(250);

fn others(n: usize, me: usize, range: std::ops::Range<usize>) -> Vec<String> {
    range
        .filter(|j| *j != me)
        .map(|j| format!("node-{j}"))
        .take(n)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_endpoints_converge_split_heal_and_detect_failure() {
    init_tracing();
    bounded(Duration::from_secs(240), async {
        let n = 6;
        let (_ca, mut eps) = start_cluster(n, INTERVAL).await;

        // All see all, with their summaries.
        wait_for("full membership", Duration::from_secs(30), || {
            eps.iter()
                .enumerate()
                .all(|(i, e)| names(e) == others(n, i, 0..n))
        })
        .await;
        for e in &eps {
            for p in e.live_peers().iter() {
                assert_eq!(p.summary.load, 1.0);
                assert_eq!(
                    p.summary.rpc_addr, p.gossip_addr,
                    "rpc_addr is the endpoint address"
                );
            }
        }

        // A published load change reaches every node.
        eps[2].publish(summary(42.5)).await;
        wait_for("load change propagated", Duration::from_secs(20), || {
            eps.iter()
                .enumerate()
                .filter(|(i, _)| *i != 2)
                .all(|(_, e)| {
                    e.live_peers()
                        .iter()
                        .any(|p| p.node_id == "node-2" && p.summary.load == 42.5)
                })
        })
        .await;

        // Partition {0,1,2} | {3,4,5}: each side marks the other dead.
        let addrs: Vec<_> = eps.iter().map(|e| e.local_addr()).collect();
        for (i, e) in eps.iter().enumerate() {
            let other_side = if i < 3 { 3..6 } else { 0..3 };
            e.set_blocked_peers(other_side.map(|j| addrs[j]));
        }
        wait_for(
            "views split by the partition",
            Duration::from_secs(60),
            || {
                eps.iter().enumerate().all(|(i, e)| {
                    let side = if i < 3 { 0..3 } else { 3..6 };
                    names(e) == others(n, i, side)
                })
            },
        )
        .await;
        assert!(eps[0].stats().blocked > 0, "the fault hook dropped traffic");
        let dead = eps[0].dead_peers().await;
        assert!(
            dead.contains(&"node-4".to_owned()),
            "node-0 sees node-4 dead: {dead:?}"
        );

        // Heal: the views merge again.
        for e in &eps {
            e.set_blocked_peers([]);
        }
        wait_for(
            "views re-merged after healing",
            Duration::from_secs(60),
            || {
                eps.iter()
                    .enumerate()
                    .all(|(i, e)| names(e) == others(n, i, 0..n))
            },
        )
        .await;

        // Stop node-5: every other node marks it dead within the detection window.
        let victim = eps.pop().expect("six endpoints");
        victim.shutdown().await;
        let took = wait_for("node-5 marked dead by all", Duration::from_secs(30), || {
            eps.iter().all(|e| !names(e).contains(&"node-5".to_owned()))
        })
        .await;
        eprintln!("failure detected by all in {took:?}");
        for e in &eps {
            assert!(e.dead_peers().await.contains(&"node-5".to_owned()));
        }
        // An honest cluster refuses nothing.
        for e in &eps {
            let s = e.stats();
            assert_eq!(
                (
                    s.gossip_garbage,
                    s.gossip_oversized,
                    s.node_id_mismatch,
                    s.handshake_failed
                ),
                (0, 0, 0, 0),
                "{s:?}"
            );
            assert!(s.gossip_messages_received > 0);
        }
        for e in eps {
            e.shutdown().await;
        }
    })
    .await;
}
