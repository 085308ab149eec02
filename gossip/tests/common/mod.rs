//! Helpers shared by the integration tests: a CA, endpoints on loopback, an echo RPC
//! handler and bounded waiting.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ballast_gossip::{
    create_ca, issue_node_cert, CaBundle, Endpoint, EndpointConfig, LoadSummary, NodeRunState,
    PeerIdentity, RpcHandler, TlsBundle, PROTOCOL_VERSION,
};
use serde::{Deserialize, Serialize};

/// The test protocol's request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Req {
    Echo(String),
    Add(u64, u64),
    WhoAmI,
    Sleep(u64),
}

/// The test protocol's response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Resp {
    Echo(String),
    Sum(u64),
    You(PeerIdentity),
    Slept,
}

pub struct Echo;

#[async_trait]
impl RpcHandler<Req, Resp> for Echo {
    async fn handle(&self, peer: PeerIdentity, req: Req) -> Resp {
        match req {
            Req::Echo(s) => Resp::Echo(s),
            Req::Add(a, b) => Resp::Sum(a.wrapping_add(b)),
            Req::WhoAmI => Resp::You(peer),
            Req::Sleep(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Resp::Slept
            }
        }
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "ballast_gossip=info".into()),
        )
        .with_test_writer()
        .try_init();
}

pub fn summary(load: f64) -> LoadSummary {
    LoadSummary {
        load,
        cpu_capacity: 8.0,
        io_capacity: 1e9,
        mem_capacity: 32e9,
        mem_free: 16e9,
        vm_count: 1,
        state: NodeRunState::Active,
        rpc_addr: ([127, 0, 0, 1], 0).into(),
        protocol_version: PROTOCOL_VERSION,
        protocol_min: ballast_gossip::PROTOCOL_MIN,
        tags: Vec::new(),
    }
}

pub fn node_tls(ca: &CaBundle, name: &str) -> TlsBundle {
    let bundle = issue_node_cert(ca, name, &[]).expect("issue node cert");
    TlsBundle::from_cert_bundle(&bundle).expect("tls bundle")
}

pub fn config(name: &str, seeds: &[std::net::SocketAddr], interval: Duration) -> EndpointConfig {
    EndpointConfig {
        node_id: name.to_owned(),
        seeds: seeds.iter().map(ToString::to_string).collect(),
        gossip_interval: interval,
        initial_summary: Some(summary(1.0)),
        rpc_timeout: Duration::from_secs(5),
        ..EndpointConfig::default()
    }
}

pub async fn start(
    ca: &CaBundle,
    name: &str,
    seeds: &[std::net::SocketAddr],
    interval: Duration,
) -> Endpoint {
    Endpoint::start(
        config(name, seeds, interval),
        node_tls(ca, name),
        Arc::new(Echo),
    )
    .await
    .expect("endpoint starts")
}

/// Starts `n` endpoints `node-0..`, each seeded with node-0.
pub async fn start_cluster(n: usize, interval: Duration) -> (CaBundle, Vec<Endpoint>) {
    let ca = create_ca("test").expect("ca");
    let mut eps = Vec::new();
    let mut seeds = Vec::new();
    for i in 0..n {
        let ep = start(&ca, &format!("node-{i}"), &seeds, interval).await;
        if seeds.is_empty() {
            seeds.push(ep.local_addr());
        }
        eps.push(ep);
    }
    (ca, eps)
}

/// Waits until `cond` holds, polling every 20 ms; panics with `what` after `deadline`.
pub async fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs a whole test body under a hard bound.
pub async fn bounded<F: Future<Output = ()>>(limit: Duration, body: F) {
    tokio::time::timeout(limit, body)
        .await
        .expect("test exceeded its time bound");
}

pub fn names(ep: &Endpoint) -> Vec<String> {
    ep.live_peers().iter().map(|p| p.node_id.clone()).collect()
}

/// A bare quinn client for hostile tests: optional client certificate, any ALPN, and a
/// server check against `ca` for the name `server`.
pub fn raw_client(
    ca: &CaBundle,
    client: Option<&ballast_gossip::CertBundle>,
    alpn: &[u8],
) -> (quinn::Endpoint, quinn::ClientConfig) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca.cert_pem.as_bytes()) {
        roots.add(c.expect("ca pem")).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots);
    let mut cfg = match client {
        Some(b) => {
            let chain = rustls_pemfile::certs(&mut b.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("cert pem");
            let key = rustls_pemfile::private_key(&mut b.key_pem.as_bytes())
                .expect("key pem")
                .expect("a key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(cfg).expect("quic config");
    let endpoint = quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).expect("client endpoint");
    (endpoint, quinn::ClientConfig::new(Arc::new(quic)))
}

/// Connects with a bare client; `Err` if the handshake (or the first stream) fails.
pub async fn raw_connect(
    endpoint: &quinn::Endpoint,
    config: &quinn::ClientConfig,
    addr: std::net::SocketAddr,
    server: &str,
) -> Result<quinn::Connection, String> {
    let connecting = endpoint
        .connect_with(config.clone(), addr, server)
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .map_err(|_| "handshake timeout".to_owned())?
        .map_err(|e| e.to_string())
}
