//! Failure detection past the digest bound (issue 18): real endpoints (QUIC + TLS) in a
//! cluster larger than their digest bound, where suspicion detects failures
//! (docs/design-gossip.md, "Failure detection past the digest bound"). A node whose
//! probes of a live peer go unanswered suspects it; the peer refutes, and no other node
//! loses it meanwhile. A node that stops is suspected and leaves every view. In-crate
//! because the test reads the suspicion keys in chitchat's state.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chitchat::{INCARNATION_KEY, SUSPECT_KEY_PREFIX};

use crate::endpoint::{Endpoint, EndpointConfig, GOSSIP_SUSPICION_HOLD_ROUNDS};
use crate::endpoint_test_util::{summary, tls, wait, Nothing};
use crate::pki::{create_ca, CaBundle};

/// Enough nodes that one peer is a small share of a node's probes (a node whose probes
/// go unanswered more than one in eight times suspects nobody: local health).
const NODES: usize = 16;
/// Digests of 3 nodes out of 16: the cluster is past the bound, suspicion is on.
const DIGEST_NODES: usize = 3;
const INTERVAL: Duration = Duration::from_millis(200);
const LAST: &str = "node-15";

async fn start(ca: &CaBundle, i: usize, seeds: &[SocketAddr]) -> Endpoint {
    let id = format!("node-{i}");
    let config = EndpointConfig {
        node_id: id.clone(),
        seeds: seeds.iter().map(ToString::to_string).collect(),
        gossip_interval: INTERVAL,
        gossip_digest_nodes_max: Some(DIGEST_NODES),
        gossip_suspicion_hold_rounds: Some(GOSSIP_SUSPICION_HOLD_ROUNDS),
        initial_summary: Some(summary(1.0)),
        ..EndpointConfig::default()
    };
    Endpoint::start(config, tls(ca, &id), Arc::new(Nothing))
        .await
        .expect("endpoint")
}

fn sees(viewer: &Endpoint, node: &str) -> bool {
    viewer.live_peers().iter().any(|p| p.node_id == node)
}

/// The incarnation `ep` has written for itself (0: never suspected).
async fn own_incarnation(ep: &Endpoint) -> u64 {
    let chitchat = ep.chitchat_state();
    let c = chitchat.lock().await;
    c.node_state(c.self_chitchat_id())
        .and_then(|s| s.get(INCARNATION_KEY))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Whether any node's state, as `ep` holds it, carries a suspicion of `node`.
async fn holds_suspicion_of(ep: &Endpoint, node: &str) -> bool {
    let chitchat = ep.chitchat_state();
    let c = chitchat.lock().await;
    c.node_states().values().any(|s| {
        s.iter_prefix(SUSPECT_KEY_PREFIX)
            .any(|(k, _)| k.ends_with(&format!(":{node}")))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_digest_bound_suspicion_is_refuted_and_a_stopped_node_leaves_every_view() {
    let ca = create_ca("ballast").expect("ca");
    let mut eps = vec![start(&ca, 0, &[]).await];
    let seed = eps[0].local_addr();
    for i in 1..NODES {
        eps.push(start(&ca, i, &[seed]).await);
    }
    wait("every node sees all the others", || {
        eps.iter().all(|e| e.live_peers().len() == NODES - 1)
    })
    .await;

    // node-1 hears nothing from the last node (one-sided: that node still hears node-1's
    // gossip through the others). node-1's probes of it go unanswered, it suspects it,
    // the suspect refutes; nobody else loses it meanwhile.
    let victim = eps[NODES - 1].local_addr();
    eps[1].set_blocked_peers([victim]);
    let watched = Duration::from_secs(8);
    let start_at = Instant::now();
    while start_at.elapsed() < watched {
        for (i, e) in eps.iter().enumerate() {
            if i != 1 && i != NODES - 1 {
                assert!(
                    sees(e, LAST),
                    "node-{i} lost {LAST} after {:?} while only node-1 could not reach it",
                    start_at.elapsed()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refuted = own_incarnation(&eps[NODES - 1]).await;
    eprintln!("{LAST} refuted {refuted} suspicion(s) in {watched:?}");
    assert!(
        refuted > 0,
        "node-1 never suspected {LAST}, or {LAST} never refuted"
    );
    eps[1].set_blocked_peers([]);
    wait("node-1 sees the last node again", || sees(&eps[1], LAST)).await;

    // The last node stops: it is suspected and leaves every view.
    let stopped = eps.pop().expect(LAST);
    stopped.shutdown().await;
    let t0 = Instant::now();
    wait("every node drops the stopped node", || {
        eps.iter().all(|e| !sees(e, LAST))
    })
    .await;
    let rounds = t0.elapsed().as_secs_f64() / INTERVAL.as_secs_f64();
    eprintln!("{LAST} left every view {rounds:.1} rounds after it stopped");
    let mut suspected = false;
    for e in &eps {
        suspected |= holds_suspicion_of(e, LAST).await;
    }
    assert!(suspected, "{LAST} left the views but nobody suspected it");
    for e in eps {
        e.shutdown().await;
    }
}
