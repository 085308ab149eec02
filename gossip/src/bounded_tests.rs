//! Bounded gossip messages (issue 18): chitchat nodes on chitchat's in-memory transport,
//! with the settings the endpoint uses, every message measured with our codec.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chitchat::transport::{ChannelTransport, RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::{
    spawn_chitchat, ChitchatConfig, ChitchatEnvelope, ChitchatHandle, ChitchatId, DeletionStatus,
    FailureDetectorConfig, ProtocolVersion, VersionedValue,
};

use crate::codec;
use crate::endpoint::{
    GOSSIP_BUILD_BYTES_MAX, GOSSIP_DIGEST_NODES_MAX, GOSSIP_SUSPICION_HOLD_ROUNDS,
};
use crate::summary::{LoadSummary, NodeRunState, PROTOCOL_VERSION};

const KNOWN_NODES: usize = 1_000;

/// chitchat's channel transport, recording the largest message sent.
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
        let len = codec::encode(&env).map_or(usize::MAX, |b| b.len());
        self.largest.fetch_max(len, Ordering::Relaxed);
        self.inner.send(to, env).await
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        self.inner.recv().await
    }

    fn counts_as_probe(&self, to: SocketAddr) -> bool {
        self.inner.counts_as_probe(to)
    }
}

fn addr(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

fn config(port: u16, seeds: &[u16], bounded: bool) -> ChitchatConfig {
    let interval = Duration::from_millis(20);
    ChitchatConfig {
        chitchat_id: ChitchatId::new(format!("node-{port}"), 1, addr(port)),
        cluster_id: "ballast".into(),
        gossip_interval: interval,
        listen_addr: addr(port),
        seed_nodes: seeds.iter().map(|p| addr(*p).to_string()).collect(),
        failure_detector_config: FailureDetectorConfig {
            initial_interval: interval,
            suspicion_hold: Some(interval * GOSSIP_SUSPICION_HOLD_ROUNDS),
            ..FailureDetectorConfig::default()
        },
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: ProtocolVersion::V1,
        max_digest_nodes: bounded.then_some(GOSSIP_DIGEST_NODES_MAX),
        max_message_bytes: bounded.then_some(GOSSIP_BUILD_BYTES_MAX),
    }
}

/// A load summary's key-values, as an agent publishes them.
fn summary_kvs(i: usize) -> Vec<(String, VersionedValue)> {
    let summary = LoadSummary {
        load: i as f64 * 0.37,
        cpu_capacity: 16.0,
        io_capacity: 1e9,
        mem_capacity: 64e9,
        mem_free: 32e9,
        vm_count: 20,
        state: NodeRunState::Active,
        rpc_addr: addr(20_000 + i as u16),
        protocol_version: PROTOCOL_VERSION,
        protocol_min: crate::summary::PROTOCOL_MIN,
        tags: Vec::new(),
    };
    summary
        .to_kv()
        .into_iter()
        .zip(1..)
        .map(|((k, value), version)| {
            let status = DeletionStatus::Set;
            (
                k.to_owned(),
                VersionedValue {
                    value,
                    version,
                    status,
                },
            )
        })
        .collect()
}

/// Starts a node knowing `KNOWN_NODES` others (their summaries) and a newcomer seeded
/// with it; returns both and the largest message size recorded.
async fn knower_and_newcomer(
    bounded: bool,
) -> anyhow::Result<(ChitchatHandle, ChitchatHandle, Arc<AtomicUsize>)> {
    let largest = Arc::new(AtomicUsize::new(0));
    let transport = Recording {
        inner: ChannelTransport::with_mtu(codec::GOSSIP_MESSAGE_BYTES_MAX),
        largest: largest.clone(),
    };
    let knower = spawn_chitchat(config(10_000, &[], bounded), Vec::new(), &transport).await?;
    knower
        .with_chitchat(|c| {
            for i in 0..KNOWN_NODES {
                let id = ChitchatId::new(format!("host-{i}"), 1, addr(20_000 + i as u16));
                let kvs = summary_kvs(i);
                let max_version = kvs.len() as u64;
                c.reset_node_state_if_update(&id, kvs.into_iter(), max_version, 0);
            }
        })
        .await;
    let newcomer =
        spawn_chitchat(config(10_001, &[10_000], bounded), Vec::new(), &transport).await?;
    Ok((knower, newcomer, largest))
}

/// Nodes the newcomer holds with every key-value of their summary.
async fn complete_nodes(newcomer: &ChitchatHandle) -> usize {
    let complete = summary_kvs(0).len() as u64;
    newcomer
        .with_chitchat(|c| {
            c.node_states()
                .values()
                .filter(|s| s.max_version() == complete && s.key_values().count() > 0)
                .count()
        })
        .await
}

#[tokio::test]
async fn messages_stay_bounded_with_1000_nodes_and_a_newcomer_catches_up() {
    let (knower, newcomer, largest) = knower_and_newcomer(true).await.expect("start");
    let mut complete = 0;
    for _ in 0..1_500 {
        complete = complete_nodes(&newcomer).await;
        if complete == KNOWN_NODES {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let largest = largest.load(Ordering::Relaxed);
    assert_eq!(
        complete, KNOWN_NODES,
        "the newcomer learns every node's summary"
    );
    assert!(
        largest <= GOSSIP_BUILD_BYTES_MAX,
        "largest message {largest} B"
    );
    knower.shutdown().await.expect("stop");
    newcomer.shutdown().await.expect("stop");
}

#[tokio::test]
async fn unbounded_digests_outgrow_the_bound() {
    // The control: upstream behaviour, the same cluster, a digest of every node.
    let (knower, newcomer, largest) = knower_and_newcomer(false).await.expect("start");
    for _ in 0..500 {
        if largest.load(Ordering::Relaxed) > GOSSIP_BUILD_BYTES_MAX {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let largest = largest.load(Ordering::Relaxed);
    assert!(
        largest > GOSSIP_BUILD_BYTES_MAX,
        "largest message {largest} B"
    );
    knower.shutdown().await.expect("stop");
    newcomer.shutdown().await.expect("stop");
}
