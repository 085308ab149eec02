//! [`Agent`]: starting the agent (store, driver, recovery, endpoint, tasks) and stopping
//! it (signal every task, wait for each, shut the endpoint down).

use super::error::AgentError;
use super::handoff_task::{Owner, INPUTS_MAX};
use super::metrics::Metrics;
use super::mover::{run_mover, MOVES_QUEUED_MAX};
use super::rpc::AgentRpc;
use super::shared::{lock, Net, Shared};
use crate::config::{AgentConfig, DriverKind};
use crate::driver::exec::ExecDriver;
use crate::driver::qemu::QemuDriver;
use crate::driver::sim::SimDriver;
use crate::driver::Driver;
#[cfg(feature = "failpoints")]
use crate::failpoints::Failpoints;
use crate::load::LoadModel;
use ballast_gossip::{Endpoint, EndpointConfig, TlsBundle};
use ballast_store::{NodeId, Store};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Bound on waiting for the agent's tasks at shutdown.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running agent.
pub struct Agent {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    metrics_addr: Option<SocketAddr>,
}

impl Agent {
    /// Starts the agent of `cfg`: opens the store, creates the driver and adopts its VMs,
    /// recovers unresolved handoffs from the store, starts the endpoint (gossip + RPC),
    /// reconciles once, then runs rounds, sampling, publishing, reconciliation, the mover
    /// and the metrics listener.
    pub async fn start(cfg: AgentConfig) -> Result<Agent, AgentError> {
        #[cfg(feature = "failpoints")]
        let failpoints =
            Failpoints::new(&cfg.failpoints.exit_at).map_err(AgentError::Failpoints)?;
        let me = NodeId::from(cfg.node.id.as_str());
        let tls = load_tls(&cfg)?;
        std::fs::create_dir_all(&cfg.node.data_dir).map_err(|e| AgentError::DataDir {
            path: cfg.node.data_dir.clone(),
            reason: e.to_string(),
        })?;
        let store = open_store(&cfg, &me).await?;
        let driver = make_driver(&cfg, &me)?;
        let adopted = driver.adopt().await?;
        info!(node = %me, driver = driver.name(), adopted = adopted.len(), "driver ready");
        let draining = cfg.node.data_dir.join(super::admin::DRAINING_FILE).exists();

        let (stop, shutdown) = watch::channel(false);
        let (inputs_tx, inputs_rx) = mpsc::channel(INPUTS_MAX);
        let (moves_tx, moves_rx) = mpsc::channel(MOVES_QUEUED_MAX);
        let model = LoadModel {
            weights: cfg.load.weights,
            capacity: cfg.host,
        };
        let shared = Arc::new(Shared {
            me: me.clone(),
            store,
            driver,
            model,
            metrics: Arc::new(Metrics::new()),
            #[cfg(feature = "failpoints")]
            failpoints,
            tls: tls.clone(),
            inputs: inputs_tx,
            net: Mutex::new(None),
            addrs: Mutex::new(HashMap::new()),
            slot: Mutex::new(None),
            sessions: Mutex::new(VecDeque::new()),
            draining: AtomicBool::new(draining),
            out_in_flight: AtomicUsize::new(0),
            in_flight_in: AtomicUsize::new(0),
            moves_pending: AtomicUsize::new(0),
            summary_dirty: Notify::new(),
            unclaimed: Mutex::new(Vec::new()),
            started: Instant::now(),
            shutdown,
            cfg,
        });
        let owner = Owner::recover(shared.clone()).await?;
        let mut tasks = vec![tokio::spawn(owner.run(inputs_rx))];

        let handler = Arc::new(AgentRpc {
            shared: shared.clone(),
            movers: moves_tx.clone(),
        });
        let endpoint =
            match Endpoint::start(endpoint_config(&shared.cfg), tls.clone(), handler).await {
                Ok(e) => Arc::new(e),
                Err(e) => {
                    let _ = stop.send(true);
                    return Err(e.into());
                }
            };
        *lock(&shared.net) = Some(Net {
            rpc: endpoint.rpc_client().clone(),
            view: endpoint.watch_peers(),
            endpoint: endpoint.clone(),
        });
        info!(node = %me, addr = %endpoint.local_addr(), draining, "agent started");

        super::reconcile::reconcile_once(&shared).await;
        let metrics_addr = match shared.cfg.node.metrics_listen {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| AgentError::Metrics { addr, source });
                let listener = match listener {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = stop.send(true);
                        return Err(e);
                    }
                };
                let bound = listener.local_addr().ok();
                info!(addr = %bound.unwrap_or(addr), path = "/metrics", "metrics endpoint listening");
                tasks.push(tokio::spawn(super::http::serve_metrics(
                    listener,
                    shared.metrics.clone(),
                    shared.shutdown.clone(),
                )));
                bound
            }
            None => None,
        };
        let s = &shared;
        tasks.push(tokio::spawn(track_addresses(s.clone())));
        tasks.push(tokio::spawn(super::figures::publish_summaries(s.clone())));
        tasks.push(tokio::spawn(super::sampler::sample_loads(s.clone())));
        tasks.push(tokio::spawn(super::reconcile::run_reconcile(s.clone())));
        tasks.push(tokio::spawn(run_mover(s.clone(), moves_rx)));
        tasks.push(tokio::spawn(super::rounds::run_rounds(s.clone(), moves_tx)));
        Ok(Agent {
            shared,
            stop,
            tasks,
            metrics_addr,
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.shared.me
    }

    /// The address peers reach this node at (gossip and RPC).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.shared.endpoint().map(|e| e.local_addr())
    }

    /// The bound metrics address, if metrics are served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Signals every task, waits (bounded) until each has finished, then shuts the
    /// endpoint down.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            if tokio::time::timeout(STOP_TIMEOUT, t).await.is_err() {
                warn!("an agent task did not stop in time");
            }
        }
        let net = lock(&self.shared.net).take();
        if let Some(net) = net {
            drop(net.rpc);
            drop(net.view);
            match Arc::try_unwrap(net.endpoint) {
                Ok(endpoint) => endpoint.shutdown().await,
                Err(_) => warn!("endpoint still in use at shutdown; dropped"),
            }
        }
        info!(node = %self.shared.me, "agent stopped");
    }
}

/// Runs the agent of `cfg` until `shutdown` completes, then stops it.
pub async fn run_agent(
    cfg: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let agent = Agent::start(cfg).await?;
    shutdown.await;
    info!("stopping agent");
    agent.shutdown().await;
    Ok(())
}

fn load_tls(cfg: &AgentConfig) -> Result<TlsBundle, AgentError> {
    let t = &cfg.tls;
    let bundle = ballast_gossip::load_cert_bundle(&t.cert, &t.key, &t.ca_cert)
        .map_err(|e| AgentError::Tls(e.to_string()))?;
    TlsBundle::from_cert_bundle(&bundle).map_err(|e| AgentError::Tls(e.to_string()))
}

async fn open_store(cfg: &AgentConfig, me: &NodeId) -> Result<Arc<Store>, AgentError> {
    let dir = cfg.node.data_dir.join("store");
    let cluster = cfg.node.cluster.clone();
    let me = me.clone();
    let opened = tokio::task::spawn_blocking(move || Store::open(&dir, &cluster, &me))
        .await
        .map_err(|e| ballast_store::StoreError::Storage {
            op: "open",
            reason: e.to_string(),
        })??;
    Ok(Arc::new(opened))
}

fn make_driver(cfg: &AgentConfig, me: &NodeId) -> Result<Arc<dyn Driver>, AgentError> {
    Ok(match cfg.driver.kind {
        DriverKind::Sim => {
            let mut c = cfg.driver.sim.clone();
            if c.host.as_str().is_empty() {
                c.host = me.clone();
            }
            Arc::new(SimDriver::new(c)?)
        }
        DriverKind::Qemu => Arc::new(QemuDriver::new(cfg.driver.qemu.clone())?),
        DriverKind::Exec => Arc::new(ExecDriver::new(cfg.driver.exec.clone())?),
    })
}

fn endpoint_config(cfg: &AgentConfig) -> EndpointConfig {
    let g = &cfg.gossip;
    EndpointConfig {
        listen_addr: cfg.node.listen,
        advertise_addr: cfg.node.advertise,
        node_id: cfg.node.id.clone(),
        cluster_id: cfg.node.cluster.clone(),
        seeds: cfg.node.seeds.iter().map(ToString::to_string).collect(),
        gossip_interval: Duration::from_millis(g.interval_ms),
        phi_threshold: g.phi_threshold,
        dead_grace: Duration::from_millis(g.dead_grace_ms),
        max_rpc_frame_bytes: g.max_rpc_frame_bytes,
        rpc_timeout: Duration::from_millis(g.rpc_timeout_ms),
        connect_timeout: Duration::from_millis(g.connect_timeout_ms),
        ..EndpointConfig::default()
    }
}

/// Remembers every peer's address (so handoff messages reach peers that left the live
/// view), and renews the RPC client when a peer restarted (a new gossip generation).
async fn track_addresses(shared: Arc<Shared>) {
    let Some(mut view) = lock(&shared.net).as_ref().map(|n| n.view.clone()) else {
        return;
    };
    let mut shutdown = shared.shutdown.clone();
    let mut generations: HashMap<String, u64> = HashMap::new();
    loop {
        let restarted = {
            let peers = view.borrow_and_update().clone();
            let mut addrs = lock(&shared.addrs);
            let mut restarted = false;
            for p in peers.iter() {
                addrs.insert(NodeId::from(p.node_id.as_str()), p.gossip_addr);
                let old = generations.insert(p.node_id.clone(), p.generation);
                restarted |= old.is_some_and(|g| g != p.generation);
            }
            restarted
        };
        if restarted {
            shared.renew_rpc();
        }
        tokio::select! {
            changed = view.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}
