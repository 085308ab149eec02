//! `bench_gossip`: an in-process cluster of endpoints on loopback (real QUIC + TLS),
//! measuring membership convergence, summary propagation, failure detection and gossip
//! traffic. The CLI wires it to `ballast bench gossip --nodes N --json`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::endpoint::{Endpoint, EndpointConfig};
use crate::error::EndpointError;
use crate::identity::PeerIdentity;
use crate::pki::{create_ca, issue_node_cert};
use crate::rpc::RpcHandler;
use crate::summary::{LoadSummary, NodeRunState, PROTOCOL_VERSION};
use crate::tls::TlsBundle;

/// How to run the benchmark.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GossipBenchOptions {
    /// Endpoints in the cluster.
    pub nodes: usize,
    /// Gossip interval in milliseconds.
    pub interval_ms: u64,
    /// Failure detector phi threshold.
    pub phi_threshold: f64,
    /// Load changes timed for the propagation percentiles.
    pub propagation_samples: usize,
    /// Seconds of steady-state traffic measured for `bytes_per_node_per_s`.
    pub traffic_window_s: u64,
    /// Bound on each phase (membership, one propagation, failure detection), seconds.
    pub phase_timeout_s: u64,
}

impl Default for GossipBenchOptions {
    fn default() -> Self {
        Self {
            nodes: 50,
            interval_ms: EndpointConfig::default().gossip_interval.as_millis() as u64,
            phi_threshold: EndpointConfig::default().phi_threshold,
            propagation_samples: 20,
            traffic_window_s: 10,
            phase_timeout_s: 60,
        }
    }
}

/// The figures. A phase that did not finish within its timeout reports `None`.
#[derive(Clone, Debug, Serialize)]
pub struct GossipBenchReport {
    /// Endpoints in the cluster.
    pub nodes: usize,
    /// Gossip interval in milliseconds.
    pub interval_ms: u64,
    /// Phi threshold used.
    pub phi_threshold: f64,
    /// From starting the endpoints until every node sees all others.
    pub full_membership_s: Option<f64>,
    /// Median time from a load change until every other node sees it.
    pub propagation_p50_s: Option<f64>,
    /// 99th percentile of the same (the maximum for fewer than 100 samples).
    pub propagation_p99_s: Option<f64>,
    /// Propagation samples that completed.
    pub propagation_samples: usize,
    /// From stopping one node until every other node has dropped it from its view.
    pub failure_detect_s: Option<f64>,
    /// chitchat payload bytes sent per node per second in steady state (QUIC/TLS
    /// framing not included).
    pub bytes_per_node_per_s: f64,
    /// Gossip messages sent per node per second in steady state.
    pub messages_per_node_per_s: f64,
    /// Sum of refusals counted by all endpoints (an honest cluster should show 0).
    pub refusals: u64,
}

struct NoRpc;

#[async_trait]
impl RpcHandler<(), ()> for NoRpc {
    async fn handle(&self, _peer: PeerIdentity, _req: ()) {}
}

fn summary(load: f64) -> LoadSummary {
    LoadSummary {
        load,
        cpu_capacity: 16.0,
        io_capacity: 1e9,
        mem_capacity: 64e9,
        mem_free: 32e9,
        vm_count: 0,
        state: NodeRunState::Active,
        rpc_addr: ([127, 0, 0, 1], 0).into(),
        protocol_version: PROTOCOL_VERSION,
        protocol_min: crate::summary::PROTOCOL_MIN,
        tags: Vec::new(),
    }
}

const POLL: Duration = Duration::from_millis(10);

/// Polls `done` every 10 ms until it holds or `timeout` passes; returns the elapsed time.
async fn wait_until(
    start: Instant,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) -> Option<f64> {
    loop {
        if done() {
            return Some(start.elapsed().as_secs_f64());
        }
        if start.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Runs the benchmark (see [`GossipBenchOptions`]); takes roughly membership time +
/// the traffic window + the propagation samples + failure detection.
pub async fn bench_gossip(opts: GossipBenchOptions) -> Result<GossipBenchReport, EndpointError> {
    let n = opts.nodes.max(2);
    let timeout = Duration::from_secs(opts.phase_timeout_s);
    let interval = Duration::from_millis(opts.interval_ms.max(1));
    let ca = create_ca("bench").map_err(|e| EndpointError::Config(e.to_string()))?;
    let mut tls = Vec::with_capacity(n);
    for i in 0..n {
        let bundle = issue_node_cert(&ca, &format!("node-{i}"), &[])
            .map_err(|e| EndpointError::Config(e.to_string()))?;
        tls.push(TlsBundle::from_cert_bundle(&bundle)?);
    }
    let start = Instant::now();
    let mut eps: Vec<Endpoint> = Vec::with_capacity(n);
    let mut seeds: Vec<SocketAddr> = Vec::new();
    for (i, t) in tls.into_iter().enumerate() {
        let config = EndpointConfig {
            node_id: format!("node-{i}"),
            seeds: seeds.iter().map(|s| s.to_string()).collect(),
            gossip_interval: interval,
            phi_threshold: opts.phi_threshold,
            initial_summary: Some(summary(i as f64)),
            ..EndpointConfig::default()
        };
        let ep = Endpoint::start(config, t, Arc::new(NoRpc)).await?;
        if seeds.len() < 3 {
            seeds.push(ep.local_addr());
        }
        eps.push(ep);
    }
    let full_membership_s = wait_until(start, timeout, || {
        eps.iter().all(|e| e.live_peers().len() == n - 1)
    })
    .await;

    let before: Vec<_> = eps.iter().map(Endpoint::stats).collect();
    let window_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(opts.traffic_window_s.max(1))).await;
    let secs = window_start.elapsed().as_secs_f64();
    let after: Vec<_> = eps.iter().map(Endpoint::stats).collect();
    let bytes: u64 = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.gossip_bytes_sent - b.gossip_bytes_sent)
        .sum();
    let msgs: u64 = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.gossip_messages_sent - b.gossip_messages_sent)
        .sum();

    let mut samples = Vec::new();
    for k in 0..opts.propagation_samples {
        let i = k % n;
        let value = 1000.0 + k as f64;
        let name = format!("node-{i}");
        let t0 = Instant::now();
        eps[i].publish(summary(value)).await;
        let seen = wait_until(t0, timeout, || {
            eps.iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .all(|(_, e)| {
                    e.live_peers()
                        .iter()
                        .any(|p| p.node_id == name && p.summary.load == value)
                })
        })
        .await;
        samples.extend(seen);
    }
    samples.sort_by(f64::total_cmp);

    let victim = eps.pop().map(|e| (e.node_id().to_owned(), e));
    let mut failure_detect_s = None;
    if let Some((name, ep)) = victim {
        let t0 = Instant::now();
        ep.shutdown().await;
        failure_detect_s = wait_until(t0, timeout, || {
            eps.iter()
                .all(|e| !e.live_peers().iter().any(|p| p.node_id == name))
        })
        .await;
    }
    let refusals = eps
        .iter()
        .map(|e| {
            let s = e.stats();
            s.handshake_failed
                + s.bad_identity
                + s.admin_gossip
                + s.gossip_garbage
                + s.gossip_oversized
                + s.rpc_too_large
                + s.rpc_truncated
                + s.rpc_undecodable
                + s.node_id_mismatch
        })
        .sum();
    futures::future::join_all(eps.into_iter().map(Endpoint::shutdown)).await;
    Ok(GossipBenchReport {
        nodes: n,
        interval_ms: interval.as_millis() as u64,
        phi_threshold: opts.phi_threshold,
        full_membership_s,
        propagation_p50_s: percentile(&samples, 0.50),
        propagation_p99_s: percentile(&samples, 0.99),
        propagation_samples: samples.len(),
        failure_detect_s,
        bytes_per_node_per_s: bytes as f64 / n as f64 / secs,
        messages_per_node_per_s: msgs as f64 / n as f64 / secs,
        refusals,
    })
}
