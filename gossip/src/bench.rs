//! `bench_gossip`: an in-process cluster of endpoints on loopback (real QUIC + TLS),
//! measuring membership convergence, summary propagation, failure detection and gossip
//! traffic. The CLI wires it to `ballast bench gossip --nodes N --json`.
//!
//! Nodes join one after another (`join_delay_ms` apart), each told only the first three
//! nodes as seeds, as in a real cluster. Times are also given in gossip rounds (seconds
//! divided by the interval), so that runs at different intervals compare.

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
use crate::stats::EndpointStats;
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
    /// Delay between two nodes joining, ms; `None`: a twentieth of the interval.
    pub join_delay_ms: Option<u64>,
    /// Most nodes in one digest (`EndpointConfig::gossip_digest_nodes_max`).
    pub digest_nodes_max: Option<usize>,
    /// Each endpoint's connection cache bound (`EndpointConfig::cached_connections_max`).
    pub cached_connections_max: usize,
    /// Suspicion past the digest bound (`EndpointConfig::gossip_suspicion_hold_rounds`).
    pub suspicion_hold_rounds: Option<u32>,
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
            join_delay_ms: None,
            digest_nodes_max: EndpointConfig::default().gossip_digest_nodes_max,
            cached_connections_max: EndpointConfig::default().cached_connections_max,
            suspicion_hold_rounds: EndpointConfig::default().gossip_suspicion_hold_rounds,
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
    /// Most nodes in one digest (`None`: all).
    pub digest_nodes_max: Option<usize>,
    /// Each endpoint's connection cache bound.
    pub cached_connections_max: usize,
    /// From starting the first endpoint to starting the last.
    pub join_span_s: f64,
    /// From starting the last endpoint until every node sees all others.
    pub full_membership_s: Option<f64>,
    /// `full_membership_s` in gossip intervals.
    pub full_membership_rounds: Option<f64>,
    /// Median time from a load change until every other node sees it.
    pub propagation_p50_s: Option<f64>,
    /// 99th percentile of the same (the maximum for fewer than 100 samples).
    pub propagation_p99_s: Option<f64>,
    /// `propagation_p99_s` in gossip intervals.
    pub propagation_p99_rounds: Option<f64>,
    /// Propagation samples that completed.
    pub propagation_samples: usize,
    /// From stopping one node until every other node has dropped it from its view.
    pub failure_detect_s: Option<f64>,
    /// `failure_detect_s` in gossip intervals.
    pub failure_detect_rounds: Option<f64>,
    /// chitchat payload bytes sent per node per second in steady state (QUIC/TLS
    /// framing not included).
    pub bytes_per_node_per_s: f64,
    /// The same per gossip interval.
    pub bytes_per_node_per_round: f64,
    /// Largest chitchat message any node sent.
    pub max_message_bytes: u64,
    /// TLS handshakes (outgoing connections made plus incoming accepted, all endpoints)
    /// divided by the nodes.
    pub handshakes_per_node: f64,
    /// Process CPU time over (cores × wall time), from the start (issuing certificates,
    /// the joins) to the end of failure detection; `None` where `/proc/self/stat` is not
    /// readable.
    pub cpu_busy_fraction: Option<f64>,
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

/// User + system CPU time of this process, from `/proc/self/stat` (Linux; its tick is
/// `USER_HZ`, 100 on every Linux ABI).
fn process_cpu_s() -> Option<f64> {
    const USER_HZ: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces): state is the first, utime
    // the 12th and stime the 13th.
    let rest = stat.rsplit_once(") ")?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// Measures the CPU this process is busy with, as a fraction of all cores.
struct CpuMeter {
    cpu_s: Option<f64>,
    wall: Instant,
}

impl CpuMeter {
    fn start() -> Self {
        Self {
            cpu_s: process_cpu_s(),
            wall: Instant::now(),
        }
    }

    fn busy_fraction(&self) -> Option<f64> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let used = process_cpu_s()? - self.cpu_s?;
        Some(used / (cores * self.wall.elapsed().as_secs_f64()))
    }
}

/// Whether `ep` sees `name` with load `value` (its view is sorted by node id).
fn sees(ep: &Endpoint, name: &str, value: f64) -> bool {
    let peers = ep.live_peers();
    peers
        .binary_search_by(|p| p.node_id.as_str().cmp(name))
        .is_ok_and(|k| peers[k].summary.load == value)
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Starts `opts.nodes` endpoints one after another, each told only the first three as
/// seeds; returns them and the time from the first start to the last.
async fn start_cluster(
    opts: &GossipBenchOptions,
    n: usize,
    interval: Duration,
) -> Result<(Vec<Endpoint>, f64), EndpointError> {
    let ca = create_ca("bench").map_err(|e| EndpointError::Config(e.to_string()))?;
    let mut tls = Vec::with_capacity(n);
    for i in 0..n {
        let bundle = issue_node_cert(&ca, &format!("node-{i}"), &[])
            .map_err(|e| EndpointError::Config(e.to_string()))?;
        tls.push(TlsBundle::from_cert_bundle(&bundle)?);
    }
    let join_delay = opts
        .join_delay_ms
        .map_or(interval / 20, Duration::from_millis);
    let first_join = Instant::now();
    let mut eps: Vec<Endpoint> = Vec::with_capacity(n);
    let mut seeds: Vec<SocketAddr> = Vec::new();
    for (i, t) in tls.into_iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(join_delay).await;
        }
        let config = EndpointConfig {
            node_id: format!("node-{i}"),
            seeds: seeds.iter().map(|s| s.to_string()).collect(),
            gossip_interval: interval,
            phi_threshold: opts.phi_threshold,
            initial_summary: Some(summary(i as f64)),
            gossip_digest_nodes_max: opts.digest_nodes_max,
            cached_connections_max: opts.cached_connections_max,
            gossip_suspicion_hold_rounds: opts.suspicion_hold_rounds,
            ..EndpointConfig::default()
        };
        let ep = Endpoint::start(config, t, Arc::new(NoRpc)).await?;
        if seeds.len() < 3 {
            seeds.push(ep.local_addr());
        }
        eps.push(ep);
    }
    Ok((eps, first_join.elapsed().as_secs_f64()))
}

/// Gossip bytes and messages sent by all endpoints over `window`, and its length in s.
async fn measure_traffic(eps: &[Endpoint], window: Duration) -> (u64, u64, f64) {
    let before: Vec<_> = eps.iter().map(Endpoint::stats).collect();
    let window_start = Instant::now();
    tokio::time::sleep(window).await;
    let secs = window_start.elapsed().as_secs_f64();
    let after: Vec<_> = eps.iter().map(Endpoint::stats).collect();
    let delta = |f: fn(&EndpointStats) -> u64| -> u64 {
        after.iter().zip(&before).map(|(a, b)| f(a) - f(b)).sum()
    };
    (
        delta(|s| s.gossip_bytes_sent),
        delta(|s| s.gossip_messages_sent),
        secs,
    )
}

/// Times `samples` load changes until every other node sees them; sorted.
async fn measure_propagation(eps: &[Endpoint], samples: usize, timeout: Duration) -> Vec<f64> {
    let mut times = Vec::new();
    for k in 0..samples {
        let i = k % eps.len();
        let value = 1000.0 + k as f64;
        let name = eps[i].node_id().to_owned();
        let t0 = Instant::now();
        eps[i].publish(summary(value)).await;
        let seen = wait_until(t0, timeout, || {
            eps.iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .all(|(_, e)| sees(e, &name, value))
        })
        .await;
        tracing::info!(sample = k, seen_s = ?seen, "bench: propagation");
        times.extend(seen);
    }
    times.sort_by(f64::total_cmp);
    times
}

/// Shuts the last endpoint down and times until no other one lists it; returns that
/// time and the stopped endpoint's counters.
async fn measure_failure(
    eps: &mut Vec<Endpoint>,
    timeout: Duration,
) -> (Option<f64>, Option<EndpointStats>) {
    let Some(victim) = eps.pop() else {
        return (None, None);
    };
    let name = victim.node_id().to_owned();
    let stats = victim.stats();
    let t0 = Instant::now();
    victim.shutdown().await;
    let gone = wait_until(t0, timeout, || {
        eps.iter().all(|e| {
            e.live_peers()
                .binary_search_by(|p| p.node_id.as_str().cmp(&name))
                .is_err()
        })
    })
    .await;
    (gone, Some(stats))
}

/// Refusals, handshakes (both directions) and the largest message over all endpoints.
fn totals(all: &[EndpointStats]) -> (u64, u64, u64) {
    let refusals = all
        .iter()
        .map(|s| {
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
    let handshakes = all.iter().map(|s| s.handshakes_out + s.handshakes_in).sum();
    let largest = all
        .iter()
        .map(|s| s.gossip_message_bytes_max)
        .max()
        .unwrap_or(0);
    (refusals, handshakes, largest)
}

/// Runs the benchmark (see [`GossipBenchOptions`]); takes roughly the join span +
/// membership time + the traffic window + the propagation samples + failure detection.
pub async fn bench_gossip(opts: GossipBenchOptions) -> Result<GossipBenchReport, EndpointError> {
    let n = opts.nodes.max(2);
    let timeout = Duration::from_secs(opts.phase_timeout_s);
    let interval = Duration::from_millis(opts.interval_ms.max(1));
    let cpu = CpuMeter::start();
    let (mut eps, join_span_s) = start_cluster(&opts, n, interval).await?;
    let full_membership_s = wait_until(Instant::now(), timeout, || {
        eps.iter().all(|e| e.live_peers().len() == n - 1)
    })
    .await;
    tracing::info!(join_span_s, ?full_membership_s, "bench: membership");
    let window = Duration::from_secs(opts.traffic_window_s.max(1));
    let (bytes, msgs, secs) = measure_traffic(&eps, window).await;
    let samples = measure_propagation(&eps, opts.propagation_samples, timeout).await;
    let (failure_detect_s, victim) = measure_failure(&mut eps, timeout).await;
    let cpu_busy_fraction = cpu.busy_fraction();
    let all: Vec<EndpointStats> = victim
        .into_iter()
        .chain(eps.iter().map(Endpoint::stats))
        .collect();
    let (refusals, handshakes, max_message_bytes) = totals(&all);
    futures::future::join_all(eps.into_iter().map(Endpoint::shutdown)).await;
    let interval_s = interval.as_secs_f64();
    let rounds = |s: Option<f64>| s.map(|s| s / interval_s);
    let propagation_p99_s = percentile(&samples, 0.99);
    let bytes_per_node_per_s = bytes as f64 / n as f64 / secs;
    Ok(GossipBenchReport {
        nodes: n,
        interval_ms: interval.as_millis() as u64,
        phi_threshold: opts.phi_threshold,
        digest_nodes_max: opts.digest_nodes_max,
        cached_connections_max: opts.cached_connections_max,
        join_span_s,
        full_membership_s,
        full_membership_rounds: rounds(full_membership_s),
        propagation_p50_s: percentile(&samples, 0.50),
        propagation_p99_s,
        propagation_p99_rounds: rounds(propagation_p99_s),
        propagation_samples: samples.len(),
        failure_detect_s,
        failure_detect_rounds: rounds(failure_detect_s),
        bytes_per_node_per_s,
        bytes_per_node_per_round: bytes_per_node_per_s * interval_s,
        max_message_bytes,
        handshakes_per_node: handshakes as f64 / n as f64,
        cpu_busy_fraction,
        messages_per_node_per_s: msgs as f64 / n as f64 / secs,
        refusals,
    })
}
