//! Forged node state (issue 16): a node with a valid certificate relays made-up state
//! about another node — its load and its state, then with a signature of its own — and
//! nothing changes anywhere: every node keeps the real values, the victim stays in every
//! view and keeps publishing, and the forgery is counted (`EndpointStats::forged_state`)
//! and listed (`Endpoint::forged_states`, which `status` shows). In-crate because the
//! forger writes into its own chitchat state directly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chitchat::{ChitchatId, DeletionStatus, VersionedValue};

use crate::endpoint::{Endpoint, EndpointConfig};
use crate::endpoint_test_util::{summary, tls, wait, Nothing};
use crate::pki::{create_ca, CaBundle};
use crate::signed_state::{
    signed_message, StateSigner, K_CERT, K_SIG, RESIGN_ROUNDS, STALE_ROUNDS,
};
use crate::summary::NodeRunState;

/// How long node-b is cut off while a forgery of its state goes round: well within the
/// stale bound of its signed state (24 rounds of 200 ms, less the 8 between signatures).
const CUT_OFF: Duration = Duration::from_millis(1500);

async fn start(ca: &CaBundle, id: &str, seeds: &[std::net::SocketAddr], load: f64) -> Endpoint {
    let config = EndpointConfig {
        node_id: id.to_owned(),
        seeds: seeds.iter().map(ToString::to_string).collect(),
        gossip_interval: Duration::from_millis(200),
        // The victim is cut off for moments below: the failure detector must not
        // declare it dead meanwhile (its signed state's own stale bound still holds).
        phi_threshold: 1e6,
        initial_summary: Some(summary(load)),
        ..EndpointConfig::default()
    };
    Endpoint::start(config, tls(ca, id), Arc::new(Nothing))
        .await
        .expect("endpoint")
}

/// What `viewer` believes of `node`: its load and state, if it is in the view.
fn seen(viewer: &Endpoint, node: &str) -> Option<(f64, NodeRunState)> {
    viewer
        .live_peers()
        .iter()
        .find(|p| p.node_id == node)
        .map(|p| (p.summary.load, p.summary.state))
}

/// In the forger's chitchat, replaces what it holds of `victim` with `values` (and every
/// other key it holds of it), at versions far past the victim's own, so that the forger
/// relays them to everyone. With `Signature::As`, the forged keys also carry a signature
/// made with that signer's key and certificate; with `Signature::None`, the victim's
/// signature and certificate are left out (unsigned state, as ballast 0.1 gossips).
async fn forge(forger: &Endpoint, victim: &str, values: &[(&str, &str)], sign: Signature<'_>) {
    let chitchat = forger.chitchat_state();
    let mut c = chitchat.lock().await;
    let (id, state): (ChitchatId, Vec<(String, String)>) = {
        let (id, s) = c
            .node_states()
            .iter()
            .find(|(id, _)| id.node_id.as_ref() == victim)
            .expect("the forger knows the victim");
        let mut kv: Vec<(String, String)> = s
            .key_values()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        for (k, v) in values {
            match kv.iter_mut().find(|(key, _)| key == k) {
                Some(e) => e.1 = (*v).to_owned(),
                None => kv.push(((*k).to_owned(), (*v).to_owned())),
            }
        }
        (id.clone(), kv)
    };
    let max = c.node_state(&id).expect("state").max_version() + 1_000;
    let mut kv = state;
    if !matches!(sign, Signature::Victims) {
        kv.retain(|(k, _)| k != K_SIG && k != K_CERT);
    }
    if let Signature::As(signer) = sign {
        kv.push((K_CERT.to_owned(), signer.cert_value().to_owned()));
        kv.sort();
        let signed: Vec<(&str, &str)> = crate::summary::SUMMARY_KEYS
            .iter()
            .chain([&K_CERT])
            .filter_map(|k| {
                kv.iter()
                    .find(|(key, _)| key == k)
                    .map(|(key, v)| (key.as_str(), v.as_str()))
            })
            .collect();
        let msg = signed_message(&id.node_id, id.generation_id, 1_000_000, signed.into_iter());
        let sig = signer.signature(&msg).expect("sign");
        kv.push((K_SIG.to_owned(), format!("1000000:{sig}")));
    }
    let n = kv.len() as u64;
    let versioned = kv.into_iter().enumerate().map(|(i, (k, v))| {
        (
            k,
            VersionedValue {
                value: v,
                version: max + i as u64,
                status: DeletionStatus::Set,
            },
        )
    });
    c.reset_node_state_if_update(&id, versioned, max + n, 0);
}

/// What a forgery carries as its signature.
enum Signature<'a> {
    /// The victim's own (older) signature and certificate, as relayed.
    Victims,
    /// None at all.
    None,
    /// One made with this signer's key and certificate.
    As(&'a StateSigner),
}

/// For `span`, every honest viewer sees `victim` with `load`, active.
async fn keeps_seeing(viewers: &[&Endpoint], victim: &str, load: f64, span: Duration) {
    let start = Instant::now();
    while start.elapsed() < span {
        for v in viewers {
            assert_eq!(
                seen(v, victim),
                Some((load, NodeRunState::Active)),
                "{} sees {victim} changed by the forgery (after {:?}; refused: {:?})",
                v.node_id(),
                start.elapsed(),
                v.forged_states()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_forged_state_changes_nothing_and_is_counted() {
    let ca = create_ca("test").expect("ca");
    let a = start(&ca, "node-a", &[], 1.0).await;
    let b = start(&ca, "node-b", &[a.local_addr()], 2.0).await;
    let c = start(&ca, "node-c", &[a.local_addr()], 3.0).await;
    let f = start(&ca, "node-f", &[a.local_addr()], 0.5).await;
    wait("everyone sees node-b's real load", || {
        [&a, &c, &f]
            .iter()
            .all(|v| seen(v, "node-b") == Some((2.0, NodeRunState::Active)))
    })
    .await;

    // While node-b is cut off (so it cannot outrun the forgery at once), node-f relays
    // made-up load and state for it: 1. under node-b's own (older) signature, 2. unsigned,
    // 3. signed with node-f's own valid certificate and key. Each time, a and c keep node-b's real
    // values, and the forgery is counted; node-b, back, outruns it and is not frozen.
    let cut_off = [a.local_addr(), c.local_addr(), f.local_addr()];
    b.set_blocked_peers(cut_off);
    forge(
        &f,
        "node-b",
        &[("ballast.load", "0.01"), ("ballast.state", "draining")],
        Signature::Victims,
    )
    .await;
    keeps_seeing(&[&a, &c], "node-b", 2.0, CUT_OFF).await;
    b.set_blocked_peers(Vec::new());
    wait("node-b notices its state was forged", || {
        b.stats().forged_state >= 1
    })
    .await;
    let listed = b.forged_states();
    assert!(
        listed.iter().any(|s| s.node == "node-b"),
        "node-b lists the forgery of its state: {listed:?}"
    );
    keeps_seeing(&[&a, &c], "node-b", 2.0, Duration::from_secs(1)).await;
    b.publish(summary(2.5)).await;
    wait("a and c see node-b's new load", || {
        seen(&a, "node-b") == Some((2.5, NodeRunState::Active))
            && seen(&c, "node-b") == Some((2.5, NodeRunState::Active))
    })
    .await;

    let before = a.stats().forged_state + c.stats().forged_state;
    b.set_blocked_peers(cut_off);
    // 2. Unsigned state of protocol 1, as a node of ballast 0.1 gossips during a rolling
    // upgrade: a name that has signed its state is never taken unsigned again.
    forge(
        &f,
        "node-b",
        &[
            ("ballast.load", "0.01"),
            ("ballast.protocol_version", "1"),
            ("ballast.protocol_min", "1"),
        ],
        Signature::None,
    )
    .await;
    keeps_seeing(&[&a, &c], "node-b", 2.5, CUT_OFF / 2).await;
    // 3. Signed with node-f's own key.
    let forger_key = StateSigner::new(&tls(&ca, "node-f")).expect("signer");
    forge(
        &f,
        "node-b",
        &[("ballast.load", "0.01")],
        Signature::As(&forger_key),
    )
    .await;
    wait("a and c refuse the state signed by node-f", || {
        a.stats().forged_state + c.stats().forged_state >= before + 2
    })
    .await;
    keeps_seeing(&[&a, &c], "node-b", 2.5, CUT_OFF / 2).await;
    b.set_blocked_peers(Vec::new());
    keeps_seeing(&[&a, &c], "node-b", 2.5, Duration::from_secs(2)).await;
    let refused: Vec<_> = a
        .forged_states()
        .into_iter()
        .chain(c.forged_states())
        .collect();
    assert!(
        refused
            .iter()
            .any(|s| s.node == "node-b" && s.reason.contains("node-f")),
        "the refusal names node-b and the certificate used: {refused:?}"
    );
    // 4. Liveness: node-b stops being heard while chitchat still counts it live (the
    // failure detector is off here, as if heartbeats for it were relayed): once its
    // signed state is older than the stale bound, a and c leave it out; back, it returns.
    b.set_blocked_peers(cut_off);
    let cut_at = Instant::now();
    wait(
        "a and c leave out node-b, whose signed state went stale",
        || seen(&a, "node-b").is_none() && seen(&c, "node-b").is_none(),
    )
    .await;
    let dropped_after = cut_at.elapsed();
    assert!(
        dropped_after >= Duration::from_millis(200) * (STALE_ROUNDS - RESIGN_ROUNDS),
        "dropped after {dropped_after:?}: before the stale bound"
    );
    let live_in_chitchat = a
        .chitchat_state()
        .lock()
        .await
        .live_nodes()
        .any(|id| id.node_id.as_ref() == "node-b");
    assert!(live_in_chitchat, "chitchat still counts node-b live");
    b.set_blocked_peers(Vec::new());
    wait("node-b is back in a's and c's views", || {
        seen(&a, "node-b").is_some() && seen(&c, "node-b").is_some()
    })
    .await;
    println!("node-b left the views {dropped_after:?} after it was cut off");
    println!(
        "forged states: a {}, b {}, c {}; a lists {:?}",
        a.stats().forged_state,
        b.stats().forged_state,
        c.stats().forged_state,
        a.forged_states()
    );
    for e in [f, c, b, a] {
        e.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sharing_no_protocol_version_is_left_alone_and_listed() {
    let ca = create_ca("test").expect("ca");
    let a = start(&ca, "node-a", &[], 1.0).await;
    let b = start(&ca, "node-b", &[a.local_addr()], 2.0).await;
    let old = start(&ca, "node-old", &[a.local_addr()], 3.0).await;
    wait("a sees b and node-old", || a.live_peers().len() == 2).await;
    // node-old now speaks only a future protocol (as a release that dropped this one's
    // versions would), signed as its own.
    {
        let state = old.chitchat_state();
        let mut c = state.lock().await;
        let own = c.self_node_state();
        own.set("ballast.protocol_version", "9");
        own.set("ballast.protocol_min", "9");
    }
    wait("a leaves node-old alone and lists it", || {
        let listed = a.incompatible_peers();
        listed.len() == 1
            && listed[0].node == "node-old"
            && (listed[0].min, listed[0].max) == (9, 9)
            && seen(&a, "node-old").is_none()
    })
    .await;
    assert_eq!(seen(&a, "node-b"), Some((2.0, NodeRunState::Active)));
    for e in [old, b, a] {
        e.shutdown().await;
    }
}
