//! The gossip protocol alone at scale: N chitchat nodes in one process on chitchat's
//! in-memory transport (every message encoded, decoded and size-checked; no QUIC, no
//! TLS), with the settings `ballast-gossip`'s endpoint uses. Prints one JSON object:
//! membership after the last join, propagation and failure detection in rounds, bytes
//! per node per round, the largest message. Handshakes and certificate checks are left
//! out: `ballast bench gossip` measures those, with real endpoints.
//!
//! `cargo run --release -p ballast-gossip --example sim_gossip_protocol -- [--nodes N]
//! [--interval-ms MS] [--digest-nodes D (0: all)] [--samples K] [--join-delay-ms MS]
//! [--timeout-rounds R] [--phi X] [--suspicion-hold-rounds R (0: off)]`

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ballast_gossip::{
    GOSSIP_BUILD_BYTES_MAX, GOSSIP_DIGEST_NODES_MAX, GOSSIP_MESSAGE_BYTES_MAX,
    GOSSIP_SUSPICION_HOLD_ROUNDS,
};
use chitchat::transport::{ChannelTransport, RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::{
    spawn_chitchat, Chitchat, ChitchatConfig, ChitchatEnvelope, ChitchatHandle, ChitchatId,
    FailureDetectorConfig, ProtocolVersion,
};

struct Opts {
    nodes: usize,
    interval_ms: u64,
    digest_nodes: Option<usize>,
    samples: usize,
    join_delay_ms: u64,
    timeout_rounds: u32,
    phi_threshold: f64,
    suspicion_hold_rounds: u32,
}

/// chitchat's channel transport, recording the largest message sent.
#[derive(Clone)]
struct Recording {
    inner: ChannelTransport,
    largest: Arc<AtomicUsize>,
}

struct RecordingSocket {
    inner: Box<dyn Socket>,
    largest: Arc<AtomicUsize>,
}

#[async_trait]
impl Transport for Recording {
    async fn open(&self, addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        Ok(Box::new(RecordingSocket {
            inner: self.inner.open(addr).await?,
            largest: self.largest.clone(),
        }))
    }
}

#[async_trait]
impl Socket for RecordingSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.inner.local_addr()
    }

    async fn send(&mut self, to: SocketAddr, env: ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
        self.largest
            .fetch_max(env.serialize_to_vec().len(), Ordering::Relaxed);
        self.inner.send(to, env).await
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        self.inner.recv().await
    }
}

fn addr(i: usize) -> SocketAddr {
    ([127, 0, 0, 1], 10_000 + i as u16).into()
}

fn config(i: usize, opts: &Opts) -> ChitchatConfig {
    let interval = Duration::from_millis(opts.interval_ms);
    ChitchatConfig {
        chitchat_id: ChitchatId::new(format!("node-{i}"), 1, addr(i)),
        cluster_id: "ballast".into(),
        gossip_interval: interval,
        listen_addr: addr(i),
        seed_nodes: (0..i.min(3)).map(|s| addr(s).to_string()).collect(),
        failure_detector_config: FailureDetectorConfig {
            phi_threshold: opts.phi_threshold,
            sampling_window_size: 100,
            max_interval: interval * 20,
            initial_interval: interval,
            dead_node_grace_period: Duration::from_secs(3600),
            suspicion_hold: (opts.suspicion_hold_rounds > 0)
                .then(|| interval * opts.suspicion_hold_rounds),
        },
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: ProtocolVersion::V1,
        max_digest_nodes: opts.digest_nodes,
        max_message_bytes: Some(GOSSIP_BUILD_BYTES_MAX),
    }
}

/// Polls until `check` holds on every node, or `timeout`; the time it took, in s.
async fn wait_all(
    handles: &[ChitchatHandle],
    timeout: Duration,
    poll: Duration,
    check: impl Fn(&Chitchat) -> bool,
) -> Option<f64> {
    let t0 = Instant::now();
    for polls in 0u64.. {
        let mut holding = 0;
        for h in handles {
            if h.with_chitchat(|c| check(c)).await {
                holding += 1;
            }
        }
        if holding == handles.len() {
            return Some(t0.elapsed().as_secs_f64());
        }
        if polls % 8 == 0 {
            eprintln!(
                "{:.1} s: {holding} of {} nodes there",
                t0.elapsed().as_secs_f64(),
                handles.len()
            );
        }
        if t0.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(poll).await;
    }
    None
}

fn others_live(c: &Chitchat) -> usize {
    let me = c.self_chitchat_id();
    c.live_nodes().filter(|id| *id != me).count()
}

async fn run(opts: Opts) -> anyhow::Result<serde_json::Value> {
    let n = opts.nodes.max(2);
    let interval = Duration::from_millis(opts.interval_ms);
    let (timeout, poll) = (interval * opts.timeout_rounds, interval / 4);
    let transport = Recording {
        inner: ChannelTransport::with_mtu(GOSSIP_MESSAGE_BYTES_MAX),
        largest: Arc::default(),
    };
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(opts.join_delay_ms)).await;
        }
        let kvs = vec![("load".to_owned(), format!("{i}"))];
        handles.push(spawn_chitchat(config(i, &opts), kvs, &transport).await?);
    }
    let membership = wait_all(&handles, timeout, poll, |c| others_live(c) == n - 1).await;
    eprintln!("membership after the last join: {membership:?} s");

    let before = transport.inner.statistics();
    let window = interval * 10;
    tokio::time::sleep(window).await;
    let after = transport.inner.statistics();
    let bytes_per_node_per_round = (after.num_bytes_total - before.num_bytes_total) as f64
        / n as f64
        / (window.as_secs_f64() / interval.as_secs_f64());

    let mut propagation = Vec::new();
    for k in 0..opts.samples {
        let (i, value) = (k % n, format!("sample-{k}"));
        let id = handles[i].chitchat_id().clone();
        let v = value.clone();
        handles[i]
            .with_chitchat(move |c| c.self_node_state().set("load", v.clone()))
            .await;
        let seen = wait_all(&handles, timeout, poll, |c| {
            c.node_state(&id).and_then(|s| s.get("load")) == Some(value.as_str())
        })
        .await;
        eprintln!("propagation sample {k}: {seen:?} s");
        propagation.extend(seen);
    }
    propagation.sort_by(f64::total_cmp);

    let victim = handles.pop().expect("two nodes or more");
    let victim_id = victim.chitchat_id().clone();
    victim.shutdown().await?;
    let failure = wait_all(&handles, timeout, poll, |c| {
        !c.live_nodes().any(|id| *id == victim_id)
    })
    .await;
    for h in handles {
        h.shutdown().await?;
    }
    let rounds = |s: Option<f64>| s.map(|s| s / interval.as_secs_f64());
    Ok(serde_json::json!({
        "nodes": n,
        "interval_ms": opts.interval_ms,
        "digest_nodes_max": opts.digest_nodes,
        "phi_threshold": opts.phi_threshold,
        "suspicion_hold_rounds": opts.suspicion_hold_rounds,
        "full_membership_rounds": rounds(membership),
        "propagation_p50_rounds": rounds(propagation.get(propagation.len() / 2).copied()),
        "propagation_max_rounds": rounds(propagation.last().copied()),
        "propagation_samples": propagation.len(),
        "failure_detect_rounds": rounds(failure),
        "bytes_per_node_per_round": bytes_per_node_per_round,
        "max_message_bytes": transport.largest.load(Ordering::Relaxed),
    }))
}

fn main() -> anyhow::Result<()> {
    let mut opts = Opts {
        nodes: 1_000,
        interval_ms: 1_000,
        digest_nodes: Some(GOSSIP_DIGEST_NODES_MAX),
        samples: 10,
        join_delay_ms: 10,
        timeout_rounds: 200,
        phi_threshold: 8.0,
        suspicion_hold_rounds: GOSSIP_SUSPICION_HOLD_ROUNDS,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let [flag, value] = pair else {
            anyhow::bail!("flags take a value: {pair:?}");
        };
        match flag.as_str() {
            "--nodes" => opts.nodes = value.parse()?,
            "--interval-ms" => opts.interval_ms = value.parse()?,
            "--digest-nodes" => opts.digest_nodes = Some(value.parse()?).filter(|d| *d > 0),
            "--samples" => opts.samples = value.parse()?,
            "--join-delay-ms" => opts.join_delay_ms = value.parse()?,
            "--timeout-rounds" => opts.timeout_rounds = value.parse()?,
            "--phi" => opts.phi_threshold = value.parse()?,
            "--suspicion-hold-rounds" => opts.suspicion_hold_rounds = value.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(opts))?;
    println!("{report}");
    Ok(())
}
