//! The agent's one network endpoint: a quinn endpoint serving gossip and RPC, chitchat
//! running over it, the membership view, and the RPC client sharing its socket.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::{
    spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig,
    ProtocolVersion,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

use crate::bindings::Bindings;
use crate::codec::GOSSIP_MESSAGE_BYTES_MAX;
use crate::conn_cache::{ConnCache, CACHED_CONNECTIONS_MAX};
use crate::error::EndpointError;
use crate::faults::FaultHook;
use crate::identity::{identity_of_connection, PeerIdentity, Role};
use crate::membership::IncompatiblePeer;
use crate::membership::{
    compute_view, publish_view, report, HeardClock, PeerView, Reported, ViewTx, VIEW_REFRESH,
};
use crate::revocation::{Revocation, RevocationError, Revoker};
use crate::rpc::{
    serve_rpc_connection, RpcClient, RpcConfigs, RpcHandler, RpcServer, RpcService,
    RPC_FRAME_BYTES_DEFAULT,
};
use crate::signed_state::Unverified;
use crate::signed_state::{
    resign_rounds, ForgedState, ForgeryLog, StateSigner, StateVerifier, K_RESIGN,
};
use crate::stats::{EndpointStats, Refusal, Stats};
use crate::summary::{LoadSummary, PROTOCOL_VERSION};
use crate::tasks::{TaskOwner, Tasks};
use crate::tls::{
    client_config, server_config, TlsBundle, ALPN_GOSSIP, ALPN_RPC, ALPN_RPC_V1,
    ANY_NODE_SERVER_NAME,
};
use crate::transport::{serve_gossip_connection, GossipParts, GossipShared, QuicTransport};

/// Most inbound connections at once (handshaking or established).
pub const INBOUND_CONNECTIONS_MAX: usize = 4_096;
/// Most inbound handshakes under way at once; more wait their turn (within the handshake
/// timeout) instead of all competing for the CPU when many nodes join together.
const HANDSHAKES_IN_MAX: usize = 16;
/// Concurrent gossip streams a peer may open on one connection.
const UNI_STREAMS_MAX: u32 = 64;
/// Concurrent RPC streams a peer may open on one connection.
const BI_STREAMS_MAX: u32 = 32;
/// Bound on waiting for connections to drain at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Default of [`EndpointConfig::gossip_digest_nodes_max`]: at ~20 bytes per compressed
/// entry a digest stays near 2.5 KiB, and each node is listed once per ~8 digests at
/// 1 000 nodes (see docs/performance.md, "Gossip at 1 000 nodes").
pub const GOSSIP_DIGEST_NODES_MAX: usize = 128;
/// Rounds an unrefuted suspicion must stand before a node counts a peer dead, in
/// clusters larger than the digest bound (docs/design-gossip.md, "Failure detection past
/// the digest bound"): long enough for the suspect to hear of it and its refutation to
/// come round (a rumour reaches every node of 1 000 in ~4 rounds, p99).
pub const GOSSIP_SUSPICION_HOLD_ROUNDS: u32 = 12;
/// Default of [`EndpointConfig::gossip_build_bytes_max`].
pub const GOSSIP_BUILD_BYTES_MAX: usize = 16 * 1024;

/// Settings of an [`Endpoint`]. Every field has a default (see [`Default`]).
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// UDP address to bind; port 0 picks a free port (read it with [`Endpoint::local_addr`]).
    pub listen_addr: SocketAddr,
    /// A socket already bound to `listen_addr` to use instead of binding one (a launcher
    /// that holds the port hands it over; see `ballast agent --stdin-socket`).
    pub bound_socket: Option<Arc<std::net::UdpSocket>>,
    /// Address peers use to reach us; defaults to the bound address, which must then not
    /// be unspecified (0.0.0.0).
    pub advertise_addr: Option<SocketAddr>,
    /// Our node id; must equal the name in our certificate.
    pub node_id: String,
    /// chitchat cluster id; nodes of other clusters are answered `BadCluster`.
    pub cluster_id: String,
    /// Addresses (`ip:port` or `host:port`) to gossip with at start.
    pub seeds: Vec<String>,
    /// Period of chitchat's gossip rounds.
    pub gossip_interval: Duration,
    /// Phi above which the failure detector marks a node dead.
    pub phi_threshold: f64,
    /// How long a dead node stays in chitchat's state before it is forgotten.
    pub dead_grace: Duration,
    /// Limit of one gossip message received (at most 65 507, chitchat's own limit).
    pub max_gossip_message_bytes: usize,
    /// Largest gossip message we build (chitchat cuts deltas to fit); at most
    /// `max_gossip_message_bytes`, so that peers with the same settings accept it.
    pub gossip_build_bytes_max: usize,
    /// Most nodes listed in one gossip digest (chitchat's `max_digest_nodes`); `None`
    /// lists every node, and a message then grows with the cluster.
    pub gossip_digest_nodes_max: Option<usize>,
    /// Failure detection by suspicion once the cluster is larger than the digest bound:
    /// rounds an unrefuted suspicion must stand ([`GOSSIP_SUSPICION_HOLD_ROUNDS`] is the
    /// designed value). `None` (the default): off, the phi detector alone, as up to
    /// the bound — see docs/design-gossip.md, "Failure detection past the digest bound",
    /// for why it is not on by default yet.
    pub gossip_suspicion_hold_rounds: Option<u32>,
    /// Most outgoing connections cached (least recently used evicted and closed).
    pub cached_connections_max: usize,
    /// Limit of an RPC frame's payload.
    pub max_rpc_frame_bytes: usize,
    /// Bound on one RPC (client: whole call; server: reading the request, handling it).
    pub rpc_timeout: Duration,
    /// Bound on a QUIC handshake.
    pub connect_timeout: Duration,
    /// The summary to publish from the start, if known.
    pub initial_summary: Option<LoadSummary>,
    /// Revocations kept from before (the agent's store): checked against the cluster CA
    /// and refused from the start.
    pub revoked: Vec<Revocation>,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            listen_addr: (std::net::Ipv4Addr::LOCALHOST, 0).into(),
            bound_socket: None,
            advertise_addr: None,
            node_id: String::new(),
            cluster_id: "ballast".to_owned(),
            seeds: Vec::new(),
            gossip_interval: Duration::from_millis(500),
            phi_threshold: 8.0,
            dead_grace: Duration::from_secs(3600),
            max_gossip_message_bytes: GOSSIP_MESSAGE_BYTES_MAX,
            gossip_build_bytes_max: GOSSIP_BUILD_BYTES_MAX,
            gossip_digest_nodes_max: Some(GOSSIP_DIGEST_NODES_MAX),
            gossip_suspicion_hold_rounds: None,
            cached_connections_max: CACHED_CONNECTIONS_MAX,
            max_rpc_frame_bytes: RPC_FRAME_BYTES_DEFAULT,
            rpc_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            initial_summary: None,
            revoked: Vec::new(),
        }
    }
}

/// A copy of a socket handed over, checked to be bound to `listen` (or to any port of
/// its address when `listen` has port 0).
fn held_socket(
    held: &std::net::UdpSocket,
    listen: SocketAddr,
) -> std::io::Result<std::net::UdpSocket> {
    let bound = held.local_addr()?;
    let matches =
        bound.ip() == listen.ip() && (listen.port() == 0 || bound.port() == listen.port());
    if !matches {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("the socket handed over is bound to {bound}, not to {listen}"),
        ));
    }
    let socket = held.try_clone()?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// quinn transport settings shared by server and clients.
pub(crate) fn transport_config(idle: Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_uni_streams(UNI_STREAMS_MAX.into());
    t.max_concurrent_bidi_streams(BI_STREAMS_MAX.into());
    let idle = idle.max(Duration::from_secs(10)) * 3;
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
    t.keep_alive_interval(Some(idle / 3));
    t
}

/// A running endpoint. Call [`Endpoint::shutdown`] to stop it.
pub struct Endpoint {
    node_id: String,
    local_addr: SocketAddr,
    quic: quinn::Endpoint,
    chitchat: Option<ChitchatHandle>,
    gossip: Arc<GossipShared>,
    rpc: RpcClient,
    faults: Arc<FaultHook>,
    stats: Arc<Stats>,
    view_rx: watch::Receiver<Arc<Vec<PeerView>>>,
    signer: Arc<StateSigner>,
    forgeries: Arc<ForgeryLog>,
    revoker: Arc<Revoker>,
    incompatible: Arc<std::sync::Mutex<Vec<IncompatiblePeer>>>,
    owner: TaskOwner,
}

impl Endpoint {
    /// Binds the socket, starts serving gossip and RPC (with `handler`) and joins the
    /// cluster through the seeds.
    pub async fn start<Req, Resp, H>(
        config: EndpointConfig,
        tls: TlsBundle,
        handler: Arc<H>,
    ) -> Result<Self, EndpointError>
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        H: RpcHandler<Req, Resp>,
    {
        check_identity(&config, tls.identity())?;
        Self::start_unchecked(config, tls, handler).await
    }

    /// [`Endpoint::start`] without the check that the node id is the certificate's
    /// (tests use it to play a node that lies about its id).
    pub(crate) async fn start_unchecked<Req, Resp, H>(
        config: EndpointConfig,
        tls: TlsBundle,
        handler: Arc<H>,
    ) -> Result<Self, EndpointError>
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        H: RpcHandler<Req, Resp>,
    {
        if config.max_gossip_message_bytes > GOSSIP_MESSAGE_BYTES_MAX
            || config.gossip_build_bytes_max > config.max_gossip_message_bytes
            || config.gossip_interval.is_zero()
        {
            return Err(EndpointError::Config(format!(
                "need gossip_build_bytes_max <= max_gossip_message_bytes <= {GOSSIP_MESSAGE_BYTES_MAX} and gossip_interval > 0"
            )));
        }
        let transport = Arc::new(transport_config(config.rpc_timeout));
        let server = server_config(&tls, transport.clone())?;
        let signer = Arc::new(StateSigner::new(&tls)?);
        let verifier = StateVerifier::new(&tls, config.gossip_interval)?;
        let forgeries = Arc::new(ForgeryLog::default());
        for rev in config.revoked.iter().cloned() {
            match rev.verify(&tls) {
                Ok(_) => {
                    tls.revoked().insert(rev);
                }
                Err(e) => warn!(node = %rev.node, reason = %e, "stored revocation ignored"),
            }
        }
        let bind_err = |source| EndpointError::Bind {
            addr: config.listen_addr,
            source,
        };
        let socket = match &config.bound_socket {
            Some(held) => held_socket(held, config.listen_addr).map_err(bind_err)?,
            None => std::net::UdpSocket::bind(config.listen_addr).map_err(bind_err)?,
        };
        let quic = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_err)?;
        let bound = quic.local_addr().map_err(bind_err)?;
        let local_addr = config.advertise_addr.unwrap_or(bound);
        if local_addr.ip().is_unspecified() {
            return Err(EndpointError::Config(
                "set advertise_addr when binding 0.0.0.0".into(),
            ));
        }
        let (owner, tasks) = TaskOwner::new();
        let stats = Arc::new(Stats::default());
        let faults = Arc::new(FaultHook::default());
        let bindings = Arc::new(Bindings::default());
        let cache = Arc::new(ConnCache::new(
            quic.clone(),
            config.connect_timeout,
            config.cached_connections_max,
            stats.clone(),
            tls.revoked().clone(),
        ));
        let gossip = GossipShared::new(GossipParts {
            cache: cache.clone(),
            client_config: client_config(&tls, ALPN_GOSSIP, transport.clone())?,
            faults: faults.clone(),
            bindings: bindings.clone(),
            stats: stats.clone(),
            tasks: tasks.clone(),
            max_message_bytes: config.max_gossip_message_bytes,
            local_addr,
        });
        let rpc = RpcClient::from_parts(
            cache,
            RpcConfigs::new(&tls, transport)?,
            faults.clone(),
            config.max_rpc_frame_bytes,
            config.rpc_timeout,
            None,
        );
        let service: Arc<dyn RpcService> = Arc::new(RpcServer {
            handler,
            max_frame_bytes: config.max_rpc_frame_bytes,
            timeout: config.rpc_timeout,
            stats: stats.clone(),
            faults: faults.clone(),
            _types: std::marker::PhantomData,
        });
        let acceptor = Acceptor {
            quic: quic.clone(),
            gossip: gossip.clone(),
            rpc: service,
            stats: stats.clone(),
            tasks: tasks.clone(),
            handshake_timeout: config.connect_timeout,
            revoked: tls.revoked().clone(),
        };
        tasks.spawn(acceptor.run());

        let node_id = config.node_id.clone();
        let chitchat = start_chitchat(&config, local_addr, gossip.clone()).await;
        let chitchat = match chitchat {
            Ok(c) => c,
            Err(e) => {
                let mut owner = owner;
                owner.shutdown().await;
                quic.close(0u32.into(), b"start failed");
                return Err(e);
            }
        };
        let live = chitchat.with_chitchat(|c| c.live_nodes_watcher()).await;
        let incompatible = Arc::new(std::sync::Mutex::new(Vec::new()));
        let revoker = Arc::new(Revoker {
            tls: tls.clone(),
            cache: gossip.cache.clone(),
            count: watch::channel(tls.revoked().all().len()).0,
        });
        chitchat
            .with_chitchat(|c| revoker.publish(c.self_node_state()))
            .await;
        let (view_tx, view_rx) = watch::channel(Arc::new(Vec::new()));
        tasks.spawn(run_view(ViewParts {
            refresh: VIEW_REFRESH.max(config.gossip_interval / 2),
            self_id: node_id.clone(),
            live,
            state: chitchat.chitchat(),
            view_tx,
            gossip: gossip.clone(),
            stats: stats.clone(),
            signer: signer.clone(),
            verifier,
            forgeries: forgeries.clone(),
            revoker: revoker.clone(),
            incompatible_peers: incompatible.clone(),
            gossip_interval: config.gossip_interval,
        }));
        info!(node = %node_id, addr = %local_addr, "endpoint started");
        let endpoint = Self {
            node_id,
            local_addr,
            quic,
            chitchat: Some(chitchat),
            gossip,
            rpc,
            faults,
            stats,
            view_rx,
            signer,
            forgeries,
            revoker,
            incompatible,
            owner,
        };
        if let Some(summary) = config.initial_summary {
            endpoint.publish(summary).await;
        }
        Ok(endpoint)
    }

    /// Our node id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The address peers reach us at (gossip and RPC).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Publishes our load summary (its `rpc_addr` is set to our address and
    /// `protocol_version` to this crate's), signed with our node key. Only changed keys
    /// are gossiped.
    pub async fn publish(&self, mut summary: LoadSummary) {
        summary.rpc_addr = self.local_addr;
        summary.protocol_version = PROTOCOL_VERSION;
        summary.protocol_min = crate::summary::PROTOCOL_MIN;
        if let Some(c) = &self.chitchat {
            c.with_chitchat(|chitchat| {
                let id = chitchat.self_chitchat_id().clone();
                let state = chitchat.self_node_state();
                let before = state.max_version();
                for (k, v) in summary.to_kv() {
                    state.set(k, v);
                }
                if state.max_version() != before {
                    self.signer.sign(&id, state);
                }
            })
            .await;
        }
    }

    /// Revokes a node name: checks the revocation against the cluster CA (an operator's
    /// admin certificate signed it), then refuses the name in every handshake and in
    /// gossip, closes its connections and passes the revocation on in gossip. `Ok(false)`
    /// when the name was revoked already.
    pub async fn revoke(&self, rev: Revocation) -> Result<bool, RevocationError> {
        let admin = rev.verify(&self.revoker.tls)?;
        info!(node = %rev.node, %admin, "node revoked");
        match &self.chitchat {
            Some(c) => Ok(c
                .with_chitchat(|chitchat| {
                    self.revoker.apply(rev.clone(), chitchat.self_node_state())
                })
                .await),
            None => Ok(false),
        }
    }

    /// Peers that share no protocol version with this node: left alone (never in the
    /// view, never called), listed for `status`.
    pub fn incompatible_peers(&self) -> Vec<IncompatiblePeer> {
        self.incompatible
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The revocations this node holds (verified), by node name.
    pub fn revocations(&self) -> Vec<Revocation> {
        self.revoker.tls.revoked().all()
    }

    /// A receiver that changes whenever this node learns a revocation (the value is how
    /// many it holds): the agent persists them.
    pub fn watch_revocations(&self) -> watch::Receiver<usize> {
        self.revoker.count.subscribe()
    }

    /// The chitchat state (tests write into it to play a forger).
    #[cfg(test)]
    pub(crate) fn chitchat_state(&self) -> Arc<tokio::sync::Mutex<chitchat::Chitchat>> {
        self.chitchat.as_ref().expect("running").chitchat()
    }

    /// Peer states refused because they did not verify against the node's own
    /// signature (forged or relayed falsely), newest last; at most 16.
    pub fn forged_states(&self) -> Vec<ForgedState> {
        self.forgeries.recent()
    }

    /// The live, verified peers with their summaries (not us), sorted by node id.
    pub fn live_peers(&self) -> Arc<Vec<PeerView>> {
        self.view_rx.borrow().clone()
    }

    /// A receiver of the live-peer view; it changes when a peer joins, dies, or
    /// publishes a new summary.
    pub fn watch_peers(&self) -> watch::Receiver<Arc<Vec<PeerView>>> {
        self.view_rx.clone()
    }

    /// Node ids chitchat's failure detector currently considers dead.
    pub async fn dead_peers(&self) -> Vec<String> {
        match &self.chitchat {
            Some(c) => {
                c.with_chitchat(|chitchat| {
                    chitchat
                        .dead_nodes()
                        .map(|id| id.node_id.to_string())
                        .collect()
                })
                .await
            }
            None => Vec::new(),
        }
    }

    /// The RPC client sharing this endpoint's socket and connections.
    pub fn rpc_client(&self) -> &RpcClient {
        &self.rpc
    }

    /// Calls the RPC of the node `expected_node` at `addr`.
    pub async fn call<Req, Resp>(
        &self,
        addr: SocketAddr,
        expected_node: &str,
        req: &Req,
    ) -> Result<Resp, crate::error::RpcError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        self.rpc.call(addr, Some(expected_node), req).await
    }

    /// Fault hook: drop all gossip and RPC traffic to and from these addresses
    /// (replaces the previous set; an empty set heals).
    pub fn set_blocked_peers(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        self.faults.set_blocked(addrs);
    }

    /// Counters of refusals and gossip traffic.
    pub fn stats(&self) -> EndpointStats {
        self.stats.snapshot()
    }

    /// Stops gossip, signals every task and waits until each is done, then closes the
    /// QUIC endpoint (waiting a bounded time for connections to drain).
    pub async fn shutdown(mut self) {
        if let Some(c) = self.chitchat.take() {
            if let Err(e) = c.shutdown().await {
                warn!(reason = %e, "chitchat stopped with an error");
            }
        }
        self.owner.shutdown().await;
        self.quic.close(0u32.into(), b"shutdown");
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, self.quic.wait_idle()).await;
        drop(self.gossip);
        info!(node = %self.node_id, "endpoint stopped");
    }
}

fn check_identity(config: &EndpointConfig, own: &PeerIdentity) -> Result<(), EndpointError> {
    if own.role != Role::Node {
        return Err(EndpointError::NotANode);
    }
    if own.name != config.node_id {
        return Err(EndpointError::IdentityMismatch {
            configured: config.node_id.clone(),
            certificate: own.name.clone(),
        });
    }
    Ok(())
}

async fn start_chitchat(
    config: &EndpointConfig,
    local_addr: SocketAddr,
    gossip: Arc<GossipShared>,
) -> Result<ChitchatHandle, EndpointError> {
    let generation = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let interval = config.gossip_interval;
    let cc = ChitchatConfig {
        chitchat_id: ChitchatId::new(config.node_id.clone(), generation, local_addr),
        cluster_id: config.cluster_id.clone(),
        gossip_interval: interval,
        listen_addr: local_addr,
        seed_nodes: config.seeds.clone(),
        failure_detector_config: FailureDetectorConfig {
            phi_threshold: config.phi_threshold,
            sampling_window_size: 100,
            max_interval: interval * 20,
            initial_interval: interval,
            dead_node_grace_period: config.dead_grace,
            suspicion_hold: config.gossip_suspicion_hold_rounds.map(|r| interval * r),
        },
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: ProtocolVersion::V1,
        max_digest_nodes: config.gossip_digest_nodes_max,
        max_message_bytes: Some(config.gossip_build_bytes_max),
    };
    let transport = QuicTransport { shared: gossip };
    spawn_chitchat(cc, Vec::new(), &transport)
        .await
        .map_err(|e| EndpointError::Gossip(e.into()))
}

/// What the view task owns.
struct ViewParts {
    /// How often the view is evaluated even without changes.
    refresh: Duration,
    self_id: String,
    live: watch::Receiver<BTreeMap<ChitchatId, chitchat::NodeState>>,
    state: Arc<tokio::sync::Mutex<chitchat::Chitchat>>,
    view_tx: ViewTx,
    gossip: Arc<GossipShared>,
    stats: Arc<Stats>,
    signer: Arc<StateSigner>,
    verifier: StateVerifier,
    forgeries: Arc<ForgeryLog>,
    revoker: Arc<Revoker>,
    incompatible_peers: Arc<std::sync::Mutex<Vec<IncompatiblePeer>>>,
    /// The gossip interval: our state is signed again every `resign_rounds` of it even
    /// when it did not change (signed liveness).
    gossip_interval: Duration,
}

/// Keeps the membership view up to date, and our signed state fresh.
async fn run_view(parts: ViewParts) {
    let ViewParts {
        refresh,
        self_id,
        mut live,
        state,
        view_tx,
        gossip,
        stats,
        signer,
        mut verifier,
        forgeries,
        revoker,
        incompatible_peers,
        gossip_interval,
    } = parts;
    let mut revocations_seen: std::collections::HashMap<ChitchatId, String> = Default::default();
    let mut signed_at = tokio::time::Instant::now();
    let mut rewrites = 0;
    let mut reported = Reported::default();
    let mut probes = ProbeLimiter::default();
    let mut heard = HeardClock::default();
    let mut tick = tokio::time::interval(refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // The live-nodes watch does not carry heartbeats: read them from chitchat.
        let beats: Vec<_> = {
            let mut c = state.lock().await;
            let forged = c.self_state_rewrites() > rewrites;
            if forged {
                rewrites = c.self_state_rewrites();
                let reason = "a peer relayed a made-up version of our own state: our keys were written again past it";
                warn!(node = %self_id, reason, "own gossiped state forged");
                stats.refuse(Refusal::ForgedState);
                forgeries.record(&self_id, reason);
            }
            let learned = revoker.learn(&mut revocations_seen, c.node_states());
            for rev in learned {
                revoker.apply(rev, c.self_node_state());
            }
            let rounds = resign_rounds(c.node_states().len());
            let published = c.self_node_state().get(K_RESIGN) == Some(&*rounds.to_string());
            if forged || !published || signed_at.elapsed() >= gossip_interval * rounds {
                let id = c.self_chitchat_id().clone();
                let own = c.self_node_state();
                own.set(K_RESIGN, rounds);
                signer.sign(&id, own);
                signed_at = tokio::time::Instant::now();
            }
            c.node_states()
                .iter()
                .map(|(id, s)| (id.clone(), s.heartbeat(), s.max_version()))
                .collect()
        };
        let now = std::time::Instant::now();
        let known: std::collections::HashSet<ChitchatId> =
            beats.iter().map(|(id, _, _)| id.clone()).collect();
        verifier.retain(|id| known.contains(id));
        heard.observe(now, beats);
        let outcome = {
            let nodes = live.borrow_and_update();
            compute_view(
                &self_id,
                gossip.local_addr,
                &nodes,
                &heard,
                now,
                |a| gossip.bindings.name_at(a),
                |id, s| {
                    if revoker.tls.revoked().contains(&id.node_id) {
                        return Err(Unverified::Revoked);
                    }
                    let checked = verifier.check(id, s, now);
                    with_common_version(checked, s, verifier.accepts_unsigned(&id.node_id))
                },
            )
        };
        let incompatible = {
            let nodes = live.borrow();
            outcome.incompatible(|node| {
                nodes
                    .keys()
                    .find(|id| id.node_id.as_ref() == node)
                    .map(|id| id.gossip_advertise_addr)
            })
        };
        *incompatible_peers.lock().unwrap_or_else(|p| p.into_inner()) = incompatible;
        for _ in 0..report(&outcome, &mut reported) {
            stats.refuse(Refusal::NodeIdMismatch);
        }
        for (node, reason) in verifier.take_forged() {
            warn!(%node, %reason, "gossiped state refused: it does not verify against the node's own signature");
            stats.refuse(Refusal::ForgedState);
            forgeries.record(&node, &reason);
        }
        for addr in probes.pick(&outcome.unverified) {
            gossip.probe(addr);
        }
        publish_view(&view_tx, outcome.peers);
        tokio::select! {
            changed = live.changed() => if changed.is_err() { return },
            _ = gossip.bindings.changed.notified() => {}
            _ = tick.tick() => {}
        }
    }
}

/// New addresses dialled per view evaluation, to avoid a handshake storm at start-up.
const PROBES_PER_ROUND: usize = 4;
/// An address is dialled for verification at most once per this period.
const PROBE_PERIOD: Duration = Duration::from_secs(2);

/// Chooses which unverified addresses to dial now.
#[derive(Default)]
struct ProbeLimiter {
    last: std::collections::HashMap<SocketAddr, tokio::time::Instant>,
}

impl ProbeLimiter {
    fn pick(&mut self, unverified: &[SocketAddr]) -> Vec<SocketAddr> {
        let now = tokio::time::Instant::now();
        self.last
            .retain(|_, t| now.duration_since(*t) < PROBE_PERIOD);
        let picked: Vec<SocketAddr> = unverified
            .iter()
            .filter(|a| !self.last.contains_key(a))
            .take(PROBES_PER_ROUND)
            .copied()
            .collect();
        for a in &picked {
            self.last.insert(*a, now);
        }
        picked
    }
}

/// Accepts connections and hands each to the gossip or RPC server by ALPN.
struct Acceptor {
    quic: quinn::Endpoint,
    gossip: Arc<GossipShared>,
    rpc: Arc<dyn RpcService>,
    stats: Arc<Stats>,
    tasks: Tasks,
    handshake_timeout: Duration,
    revoked: Arc<crate::revocation::RevokedSet>,
}

impl Acceptor {
    async fn run(self) {
        let this = Arc::new(self);
        let limit = Arc::new(Semaphore::new(INBOUND_CONNECTIONS_MAX));
        let handshakes = Arc::new(Semaphore::new(HANDSHAKES_IN_MAX));
        while let Some(incoming) = this.quic.accept().await {
            let from = incoming.remote_address();
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                warn!(%from, reason = "too many connections", "connection refused");
                incoming.refuse();
                continue;
            };
            let this2 = this.clone();
            let handshakes = handshakes.clone();
            this.tasks.spawn(async move {
                this2.serve(incoming, from, &handshakes).await;
                drop(permit);
            });
        }
    }

    async fn serve(&self, incoming: quinn::Incoming, from: SocketAddr, handshakes: &Semaphore) {
        let handshake = async {
            let _turn = handshakes.acquire().await;
            incoming.await
        };
        let conn = match tokio::time::timeout(self.handshake_timeout, handshake).await {
            Ok(Ok(conn)) => {
                self.stats
                    .handshakes_in
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                conn
            }
            Ok(Err(e)) => {
                self.stats.refuse(Refusal::Handshake);
                warn!(%from, reason = %e, "handshake refused");
                return;
            }
            Err(_) => {
                self.stats.refuse(Refusal::Handshake);
                warn!(%from, reason = "handshake timed out", "handshake refused");
                return;
            }
        };
        let peer = match identity_of_connection(&conn) {
            Ok(peer) => peer,
            Err(e) => {
                self.stats.refuse(Refusal::BadIdentity);
                warn!(%from, reason = %e, "connection refused");
                conn.close(1u32.into(), b"bad identity");
                return;
            }
        };
        if peer.role == Role::Node && self.revoked.contains(&peer.name) {
            // A TLS session resumed from before the revocation skips the certificate.
            self.stats.refuse(Refusal::Handshake);
            warn!(%from, peer = %peer.name, reason = "the node is revoked", "connection refused");
            conn.close(4u32.into(), b"revoked");
            return;
        }
        self.gossip.cache.serving(&peer.name, &conn);
        self.serve_as(conn.clone(), from, peer).await;
        self.gossip.cache.served(&conn);
    }

    async fn serve_as(&self, conn: quinn::Connection, from: SocketAddr, peer: PeerIdentity) {
        let alpn = conn
            .handshake_data()
            .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|d| d.protocol);
        match alpn.as_deref() {
            Some(ALPN_GOSSIP) if peer.role == Role::Node => {
                self.gossip.bindings.record(from, &peer.name);
                self.gossip
                    .cache
                    .adopt_inbound(ALPN_GOSSIP, ANY_NODE_SERVER_NAME, &conn, &peer);
                debug!(%from, peer = %peer.name, "gossip connection accepted");
                serve_gossip_connection(self.gossip.clone(), conn, peer).await;
            }
            Some(ALPN_GOSSIP) => {
                self.stats.refuse(Refusal::AdminGossip);
                warn!(%from, peer = %peer.name, reason = "admin certificates may not gossip", "connection refused");
                conn.close(2u32.into(), b"admins may not gossip");
            }
            // ballast 0.1 calls with `ballast-rpc/1`; the request itself says which
            // protocol version it is in.
            Some(ALPN_RPC | ALPN_RPC_V1) => {
                if peer.role == Role::Node {
                    self.gossip.bindings.record(from, &peer.name);
                }
                serve_rpc_connection(self.rpc.clone(), self.tasks.clone(), conn, peer).await;
            }
            other => {
                self.stats.refuse(Refusal::Handshake);
                warn!(%from, alpn = ?other.map(String::from_utf8_lossy), reason = "no known ALPN", "connection refused");
                conn.close(3u32.into(), b"unknown protocol");
            }
        }
    }
}

/// A peer's checked summary, unless it shares no protocol version with us. An unsigned
/// state is read for its version range: a node of protocol 1 (ballast 0.1 signs nothing)
/// is used as it is, during a rolling upgrade, unless its name signed before
/// (`accepts_unsigned`); any other unsigned state only says why it is left alone.
fn with_common_version(
    checked: Result<LoadSummary, Unverified>,
    state: &chitchat::NodeState,
    accepts_unsigned: bool,
) -> Result<LoadSummary, Unverified> {
    let unsigned = match &checked {
        Err(Unverified::Unsigned) => LoadSummary::from_lookup(|k| state.get(k)).ok(),
        _ => None,
    };
    let range = match (&checked, &unsigned) {
        (Ok(s), _) | (_, Some(s)) => Some((s.protocol_min, s.protocol_version)),
        _ => None,
    };
    match range {
        Some((min, max)) if !crate::summary::speaks_with(min, max) => {
            Err(Unverified::Incompatible { min, max })
        }
        _ => match unsigned {
            Some(s) if s.protocol_version < crate::summary::SIGNED_SINCE => {
                if accepts_unsigned {
                    Ok(s)
                } else {
                    Err(Unverified::UnsignedAfterSigned)
                }
            }
            _ => checked,
        },
    }
}
