//! A node whose gossiped id is not the one in its certificate is refused by the others.
//! In-crate because it needs `Endpoint::start_unchecked` to make such a liar.

use std::sync::Arc;
use std::time::Duration;

use crate::endpoint::{Endpoint, EndpointConfig};
use crate::endpoint_test_util::{summary, tls, wait, Nothing};
use crate::pki::create_ca;

fn cfg(id: &str, seeds: &[std::net::SocketAddr], load: f64) -> EndpointConfig {
    EndpointConfig {
        node_id: id.to_owned(),
        seeds: seeds.iter().map(ToString::to_string).collect(),
        gossip_interval: Duration::from_millis(200),
        initial_summary: Some(summary(load)),
        ..EndpointConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_claiming_another_id_is_refused() {
    let ca = create_ca("test").expect("ca");
    let a = Endpoint::start(
        cfg("node-a", &[], 1.0),
        tls(&ca, "node-a"),
        Arc::new(Nothing),
    )
    .await
    .expect("a");
    let b = Endpoint::start(
        cfg("node-b", &[a.local_addr()], 2.0),
        tls(&ca, "node-b"),
        Arc::new(Nothing),
    )
    .await
    .expect("b");
    // The liar holds a valid certificate for "evil" but gossips as "node-b".
    let liar = Endpoint::start_unchecked(
        cfg("node-b", &[a.local_addr()], 99.0),
        tls(&ca, "evil"),
        Arc::new(Nothing),
    )
    .await
    .expect("liar");
    wait("node-a refuses the liar", || {
        a.stats().node_id_mismatch >= 1
    })
    .await;
    wait("node-b refuses the liar", || {
        b.stats().node_id_mismatch >= 1
    })
    .await;
    // node-a sees the real node-b only: right address, right load.
    wait("node-a sees node-b", || a.live_peers().len() == 1).await;
    for _ in 0..10 {
        let peers = a.live_peers();
        assert_eq!(peers.len(), 1, "{peers:?}");
        assert_eq!(peers[0].node_id, "node-b");
        assert_eq!(peers[0].gossip_addr, b.local_addr());
        assert_eq!(peers[0].summary.load, 2.0);
        assert!(peers.iter().all(|p| p.gossip_addr != liar.local_addr()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    liar.shutdown().await;
    b.shutdown().await;
    a.shutdown().await;
}
