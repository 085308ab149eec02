//! `bench_gossip` runs end to end on a small cluster and reports every figure.

use std::time::Duration;

use ballast_gossip::{bench_gossip, GossipBenchOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_every_figure() {
    let opts = GossipBenchOptions {
        nodes: 5,
        interval_ms: 250,
        propagation_samples: 3,
        traffic_window_s: 1,
        phase_timeout_s: 30,
        ..GossipBenchOptions::default()
    };
    let report = tokio::time::timeout(Duration::from_secs(150), bench_gossip(opts))
        .await
        .expect("bench bounded")
        .expect("bench runs");
    assert_eq!(report.nodes, 5);
    assert!(report.full_membership_s.is_some(), "{report:?}");
    assert_eq!(report.propagation_samples, 3, "{report:?}");
    assert!(report.propagation_p99_s >= report.propagation_p50_s);
    assert!(report.failure_detect_s.is_some(), "{report:?}");
    assert!(report.bytes_per_node_per_s > 0.0);
    let json = serde_json::to_value(&report).expect("serializes");
    for key in [
        "nodes",
        "interval_ms",
        "full_membership_s",
        "propagation_p50_s",
        "propagation_p99_s",
        "failure_detect_s",
        "bytes_per_node_per_s",
    ] {
        assert!(json.get(key).is_some(), "missing {key}");
    }
}
