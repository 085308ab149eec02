//! [`Agent`]: starting the agent (store, driver, recovery, endpoint, tasks) and stopping
//! it (signal every task, wait for each, shut the endpoint down).

use super::context::AgentContext;
use super::error::AgentError;
use super::handoff_handle::HandoffHandle;
use super::handoff_task::{Owner, INPUTS_MAX};
use super::metrics::Metrics;
use super::mover::{run_mover, MoveQueue};
use super::network::Network;
use super::rpc::AgentRpc;
use super::session_book::SessionBook;
use crate::config::{AgentConfig, DriverKind};
use crate::driver::exec::ExecDriver;
use crate::driver::qemu::QemuDriver;
use crate::driver::sim::SimDriver;
use crate::driver::{Driver, DriverError};
use crate::failpoints::TestHooks;
use crate::load::LoadModel;
use ballast_gossip::{Endpoint, EndpointConfig, RpcClientConfig, TlsBundle};
use ballast_store::{NodeId, Store};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// Bound on waiting for the agent's tasks at shutdown.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running agent.
pub struct Agent {
    ctx: Arc<AgentContext>,
    stop: watch::Sender<bool>,
    metrics_addr: Option<SocketAddr>,
}

impl Agent {
    /// Starts the agent of `cfg`: opens the store, creates the driver and adopts its VMs,
    /// recovers unresolved handoffs from the store, starts the endpoint (gossip + RPC),
    /// reconciles once, then runs rounds, sampling, publishing, reconciliation, the mover
    /// and the metrics listener.
    pub async fn start(cfg: AgentConfig) -> Result<Agent, AgentError> {
        Self::start_on(cfg, None).await
    }

    /// [`Agent::start`] on `socket`, a UDP socket already bound to `node.listen` (handed
    /// over by whoever holds the port), or on a socket of its own when `None`.
    pub async fn start_on(
        cfg: AgentConfig,
        socket: Option<std::net::UdpSocket>,
    ) -> Result<Agent, AgentError> {
        #[cfg(feature = "failpoints")]
        let hooks = TestHooks::new(&cfg)
            .map_err(|(origin, source)| AgentError::Failpoints { origin, source })?;
        #[cfg(not(feature = "failpoints"))]
        let hooks = TestHooks::default();
        let me = NodeId::from(cfg.node.id.as_str());
        let (tls, cert_validity) = load_tls(&cfg)?;
        let web_tls = match cfg.node.metrics_listen {
            Some(addr) => super::web::acceptor_for(addr, &tls).map_err(AgentError::Tls)?,
            None => None,
        };
        std::fs::create_dir_all(&cfg.node.data_dir).map_err(|source| AgentError::DataDir {
            path: cfg.node.data_dir.clone(),
            source,
        })?;
        let store = open_store(&cfg, &me).await?;
        let driver = make_driver(&cfg, &me)?;
        // A hypervisor that does not answer yet (libvirtd down) does not keep the agent
        // from starting: reconciliation retries the adoption and acts only once it worked.
        let adopted = match driver.adopt().await {
            Ok(vms) => {
                info!(node = %me, driver = driver.name(), adopted = vms.len(), "driver ready");
                true
            }
            Err(DriverError::Unavailable(why)) => {
                warn!(node = %me, driver = driver.name(), reason = %why, "hypervisor unavailable at start; the agent runs and retries (its VMs are reconciled once it answers)");
                false
            }
            Err(e) => return Err(e.into()),
        };
        let draining = cfg.node.data_dir.join(super::admin::DRAINING_FILE).exists();

        let (stop, shutdown) = watch::channel(false);
        let (handoffs, owner_ends) = HandoffHandle::new(INPUTS_MAX);
        let (moves, moves_rx) = MoveQueue::new();
        let model = LoadModel {
            weights: cfg.load.weights,
            capacity: cfg.host,
        };
        let ctx = Arc::new(AgentContext {
            me: me.clone(),
            store,
            driver,
            model,
            metrics: Arc::new(Metrics::new()),
            hooks,
            net: Network::new(tls.clone(), fresh_client_config(&cfg)),
            handoffs,
            sessions: SessionBook::default(),
            moves,
            draining: AtomicBool::new(draining),
            adopted: AtomicBool::new(adopted),
            summary_dirty: Notify::new(),
            unclaimed: Mutex::new(Vec::new()),
            unmanaged: Mutex::new(Default::default()),
            migration_progress: Mutex::new(Default::default()),
            rule_book: Default::default(),
            cert_validity,
            vm_changes: tokio::sync::Mutex::new(()),
            shutdown,
            tasks: TaskTracker::new(),
            cfg,
        });
        let owner = Owner::recover(ctx.clone(), owner_ends.in_flight).await?;
        ctx.spawn(owner.run(owner_ends.inputs));

        let handler = Arc::new(AgentRpc { ctx: ctx.clone() });
        let mut endpoint_cfg = endpoint_config(&ctx.cfg);
        endpoint_cfg.bound_socket = socket.map(Arc::new);
        endpoint_cfg.revoked = super::revocations::stored(&ctx.store);
        let endpoint = Endpoint::start(endpoint_cfg, tls, handler).await;
        let endpoint = match endpoint {
            Ok(e) => Arc::new(e),
            Err(e) => {
                stop_tasks(&ctx, &stop).await;
                return Err(e.into());
            }
        };
        ctx.net.attach(endpoint.clone());
        ctx.metrics
            .cert_expiry
            .set(ctx.cert_validity.not_after_unix);
        info!(node = %me, addr = %endpoint.local_addr(), draining, "agent started");

        super::reconcile::reconcile_once(&ctx).await;
        let metrics_addr = match ctx.cfg.node.metrics_listen {
            Some(addr) => match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => {
                    let bound = listener.local_addr().ok();
                    info!(addr = %bound.unwrap_or(addr), path = "/metrics", web = "/", tls = web_tls.is_some(), "metrics endpoint listening");
                    ctx.spawn(super::web::serve(listener, ctx.clone(), web_tls));
                    bound
                }
                Err(source) => {
                    stop_tasks(&ctx, &stop).await;
                    shut_endpoint(&ctx).await;
                    return Err(AgentError::Metrics { addr, source });
                }
            },
            None => None,
        };
        ctx.spawn(track_addresses(ctx.clone()));
        ctx.spawn(super::revocations::keep_learned(ctx.clone()));
        ctx.spawn(super::figures::publish_summaries(ctx.clone()));
        ctx.spawn(super::sampler::sample_loads(ctx.clone()));
        ctx.spawn(super::reconcile::run_reconcile(ctx.clone()));
        ctx.spawn(run_mover(ctx.clone(), moves_rx));
        ctx.spawn(super::rounds::run_rounds(ctx.clone()));
        Ok(Agent {
            ctx,
            stop,
            metrics_addr,
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.ctx.me
    }

    /// The address peers reach this node at (gossip and RPC).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.ctx.net.endpoint().map(|e| e.local_addr())
    }

    /// The bound metrics address, if metrics are served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Signals every task, waits (bounded) until every task the agent spawned has
    /// finished, then shuts the endpoint down.
    pub async fn shutdown(self) {
        stop_tasks(&self.ctx, &self.stop).await;
        shut_endpoint(&self.ctx).await;
        info!(node = %self.ctx.me, "agent stopped");
    }
}

/// Signals shutdown and waits (bounded) for every tracked task.
async fn stop_tasks(ctx: &AgentContext, stop: &watch::Sender<bool>) {
    let _ = stop.send(true);
    ctx.tasks.close();
    if tokio::time::timeout(STOP_TIMEOUT, ctx.tasks.wait())
        .await
        .is_err()
    {
        warn!(
            running = ctx.tasks.len(),
            "agent tasks did not stop in time; left to the runtime"
        );
    }
}

/// Shuts the endpoint down once nothing else holds it.
async fn shut_endpoint(ctx: &AgentContext) {
    if let Some(endpoint) = ctx.net.detach() {
        match Arc::try_unwrap(endpoint) {
            Ok(endpoint) => endpoint.shutdown().await,
            Err(_) => warn!("endpoint still in use at shutdown; dropped"),
        }
    }
}

/// Runs the agent of `cfg` (on `socket` if given, see [`Agent::start_on`]) until
/// `shutdown` completes, then stops it.
pub async fn run_agent(
    cfg: AgentConfig,
    socket: Option<std::net::UdpSocket>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let agent = Agent::start_on(cfg, socket).await?;
    shutdown.await;
    info!("stopping agent");
    agent.shutdown().await;
    Ok(())
}

/// The node's TLS bundle and its certificate's validity; an expired (or not yet valid)
/// certificate is an error naming the file and the date.
fn load_tls(cfg: &AgentConfig) -> Result<(TlsBundle, ballast_gossip::Validity), AgentError> {
    let t = &cfg.tls;
    let bundle = ballast_gossip::load_cert_bundle(&t.cert, &t.key, &t.ca_cert)
        .map_err(AgentError::Certificates)?;
    let validity =
        ballast_gossip::Validity::of_pem(&bundle.cert_pem).map_err(AgentError::Certificates)?;
    let now = i64::try_from(super::unix_ms() / 1_000).unwrap_or(i64::MAX);
    if now > validity.not_after_unix {
        return Err(AgentError::CertificateOutOfDate {
            path: t.cert.clone(),
            what: "expired on",
            date: validity.not_after_date(),
        });
    }
    if now < validity.not_before_unix {
        return Err(AgentError::CertificateOutOfDate {
            path: t.cert.clone(),
            what: "is not valid before",
            date: ballast_gossip::utc_date(validity.not_before_unix),
        });
    }
    TlsBundle::from_cert_bundle(&bundle)
        .map(|tls| (tls, validity))
        .map_err(AgentError::Tls)
}

async fn open_store(cfg: &AgentConfig, me: &NodeId) -> Result<Arc<Store>, AgentError> {
    let dir = cfg.node.data_dir.join("store");
    let cluster = cfg.node.cluster.clone();
    let me = me.clone();
    let opened = tokio::task::spawn_blocking(move || Store::open(&dir, &cluster, &me))
        .await
        .map_err(|e| ballast_store::StoreError::Storage {
            op: "open",
            source: e.into(),
        })??;
    opened.set_host_tags(cfg.node.tags.clone());
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
        #[cfg(feature = "libvirt")]
        DriverKind::Libvirt => Arc::new(crate::driver::libvirt::LibvirtDriver::new(
            cfg.driver.libvirt.clone(),
        )?),
        #[cfg(not(feature = "libvirt"))]
        DriverKind::Libvirt => {
            return Err(crate::driver::DriverError::Unsupported {
                driver: "libvirt",
                what: "run: this ballast was built without the cargo feature `libvirt` \
                       (build with `cargo build --release --features libvirt`, which needs libvirt-dev)",
            }
            .into())
        }
    })
}

/// Settings of a fresh RPC client on its own socket (see [`Network::renew_rpc`]).
fn fresh_client_config(cfg: &AgentConfig) -> RpcClientConfig {
    let g = &cfg.gossip;
    let ip = if cfg.node.listen.ip().is_loopback() {
        std::net::Ipv4Addr::LOCALHOST
    } else {
        std::net::Ipv4Addr::UNSPECIFIED
    };
    RpcClientConfig {
        bind_addr: (ip, 0).into(),
        max_frame_bytes: g.max_rpc_frame_bytes,
        timeout: g.rpc_timeout.duration(),
        connect_timeout: g.connect_timeout.duration(),
    }
}

fn endpoint_config(cfg: &AgentConfig) -> EndpointConfig {
    let g = &cfg.gossip;
    EndpointConfig {
        listen_addr: cfg.node.listen,
        advertise_addr: cfg.node.advertise,
        node_id: cfg.node.id.clone(),
        cluster_id: cfg.node.cluster.clone(),
        seeds: cfg.node.seeds.iter().map(ToString::to_string).collect(),
        gossip_interval: g.interval.duration(),
        phi_threshold: g.phi_threshold,
        dead_grace: g.dead_grace.duration(),
        max_rpc_frame_bytes: g.max_rpc_frame_bytes,
        rpc_timeout: g.rpc_timeout.duration(),
        connect_timeout: g.connect_timeout.duration(),
        ..EndpointConfig::default()
    }
}

/// Remembers every peer's address (so handoff messages reach peers that left the live
/// view), and renews the RPC client when a peer restarted (a new gossip generation).
async fn track_addresses(ctx: Arc<AgentContext>) {
    let Some(mut view) = ctx.net.view() else {
        return;
    };
    let mut shutdown = ctx.shutdown.clone();
    let mut generations: HashMap<String, u64> = HashMap::new();
    loop {
        let restarted = {
            let peers = view.borrow_and_update().clone();
            ctx.net.remember(&peers);
            let mut restarted = false;
            for p in peers.iter() {
                let old = generations.insert(p.node_id.clone(), p.generation);
                restarted |= old.is_some_and(|g| g != p.generation);
            }
            restarted
        };
        if restarted {
            ctx.net.renew_rpc();
        }
        tokio::select! {
            changed = view.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}
