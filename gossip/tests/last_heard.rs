//! The age of the last gossip heard from each peer, over real QUIC + TLS on loopback:
//! small for a live peer, growing for a stopped one, and heartbeats alone do not wake
//! view watchers.

mod common;

use std::sync::Arc;
use std::time::Duration;

use ballast_gossip::{create_ca, Endpoint, PeerView};
use common::*;

const INTERVAL: Duration = Duration::from_millis(250);

/// Starts `name` with a high phi threshold, so a stopped peer stays in the view long
/// enough to watch its age grow.
async fn start_patient(
    ca: &ballast_gossip::CaBundle,
    name: &str,
    seeds: &[std::net::SocketAddr],
) -> Endpoint {
    let mut cfg = config(name, seeds, INTERVAL);
    cfg.phi_threshold = 40.0;
    Endpoint::start(cfg, node_tls(ca, name), Arc::new(Echo))
        .await
        .expect("endpoint starts")
}

fn peer(e: &Endpoint, id: &str) -> Option<PeerView> {
    e.live_peers().iter().find(|p| p.node_id == id).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn age_stays_small_for_live_peer_and_grows_for_stopped_one() {
    init_tracing();
    bounded(Duration::from_secs(120), async {
        let ca = create_ca("test").expect("ca");
        let e0 = start_patient(&ca, "node-0", &[]).await;
        let seeds = [e0.local_addr()];
        let e1 = start_patient(&ca, "node-1", &seeds).await;
        let e2 = start_patient(&ca, "node-2", &seeds).await;
        wait_for("full membership", Duration::from_secs(30), || {
            names(&e0) == ["node-1", "node-2"]
        })
        .await;

        // Steady state: heartbeats refresh last_heard without waking watchers.
        let mut watch = e0.watch_peers();
        watch.mark_unchanged();
        let first = peer(&e0, "node-1").expect("node-1 in view").last_heard;
        wait_for("node-1 heard again", Duration::from_secs(20), || {
            peer(&e0, "node-1").is_some_and(|p| p.last_heard > first)
        })
        .await;
        assert!(
            !watch.has_changed().expect("endpoint alive"),
            "a heartbeat alone must not wake view watchers"
        );

        // Stop node-2; node-1 keeps beating.
        e2.shutdown().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let at_stop = peer(&e0, "node-2")
            .expect("node-2 still in the view (phi threshold 40)")
            .last_heard_ms_ago();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let later = peer(&e0, "node-2").expect("node-2 still in the view");
        let later_ms = later.last_heard_ms_ago();
        eprintln!("node-2 heard {at_stop} ms ago 1 s after stop, {later_ms} ms ago 2 s later");
        assert!(later_ms > at_stop, "{later_ms} > {at_stop}");
        assert!(later_ms >= 2_000, "stopped for 3 s: {later_ms} ms");
        let live_ms = peer(&e0, "node-1").expect("node-1").last_heard_ms_ago();
        eprintln!("node-1 (live) heard {live_ms} ms ago");
        assert!(live_ms < 5_000, "live peer heard {live_ms} ms ago");

        // The JSON form carries the age in milliseconds.
        let json = serde_json::to_value(&later).expect("json");
        assert!(
            json["last_heard_ms_ago"]
                .as_u64()
                .is_some_and(|ms| ms >= later_ms),
            "{json}"
        );

        e1.shutdown().await;
        e0.shutdown().await;
    })
    .await;
}
