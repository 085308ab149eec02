//! [`Shared`]: what every task of one agent reaches — configuration, store, driver,
//! load model, metrics, the handoff machine's input channel, the network handles, the
//! session slot and the draining flag.

use super::handoff_task::Input;
use super::metrics::Metrics;
use super::wire::SessionRecord;
use crate::config::AgentConfig;
use crate::driver::Driver;
use crate::failpoints::Failpoint;
#[cfg(feature = "failpoints")]
use crate::failpoints::Failpoints;
use crate::load::LoadModel;
use ballast_gossip::{Endpoint, PeerView, RpcClient};
use ballast_store::{NodeId, Store};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::{mpsc, watch, Notify};

/// Recent session records kept for `RecentSessions`.
pub(crate) const SESSION_RECORDS_MAX: usize = 256;

/// The network half, set once the endpoint runs.
pub(crate) struct Net {
    /// The endpoint (publishing, shutdown). Taken out at shutdown.
    pub(crate) endpoint: Arc<Endpoint>,
    /// The RPC client in use: the endpoint's own at first; a fresh standalone one after
    /// a peer restarted (see `renew_rpc`).
    pub(crate) rpc: RpcClient,
    /// The live-peer view.
    pub(crate) view: watch::Receiver<Arc<Vec<PeerView>>>,
}

/// The one balancing session a node takes part in at a time.
#[derive(Clone, Debug)]
pub(crate) struct SessionSlot {
    /// The other node.
    pub(crate) peer: NodeId,
    /// The session id.
    pub(crate) session: u64,
    /// When the slot frees itself.
    pub(crate) expires: Instant,
}

/// Everything the agent's tasks share.
pub(crate) struct Shared {
    pub(crate) cfg: AgentConfig,
    pub(crate) me: NodeId,
    pub(crate) store: Arc<Store>,
    pub(crate) driver: Arc<dyn Driver>,
    pub(crate) model: LoadModel,
    pub(crate) metrics: Arc<Metrics>,
    /// Armed failpoints (test builds only).
    #[cfg(feature = "failpoints")]
    pub(crate) failpoints: Failpoints,
    /// This node's certificate, for fresh RPC clients.
    pub(crate) tls: ballast_gossip::TlsBundle,
    /// The handoff machine's one bounded input channel.
    pub(crate) inputs: mpsc::Sender<Input>,
    /// Set once the endpoint runs; a std mutex, never held across `.await`.
    pub(crate) net: Mutex<Option<Net>>,
    /// Last known address of every node seen (peers that died keep theirs, so the
    /// handoff machine can keep retrying them). A std mutex, never held across `.await`.
    pub(crate) addrs: Mutex<HashMap<NodeId, SocketAddr>>,
    /// The session slot; a std mutex, never held across `.await`.
    pub(crate) slot: Mutex<Option<SessionSlot>>,
    /// Recent sessions; a std mutex, never held across `.await`.
    pub(crate) sessions: Mutex<VecDeque<SessionRecord>>,
    /// Whether this node drains.
    pub(crate) draining: AtomicBool,
    /// Unresolved handoffs with this node as source / destination (set by the owner).
    pub(crate) out_in_flight: AtomicUsize,
    /// See `out_in_flight`.
    pub(crate) in_flight_in: AtomicUsize,
    /// Moves queued or running in the mover.
    pub(crate) moves_pending: AtomicUsize,
    /// Wakes the summary publisher (the schedule or the state changed).
    pub(crate) summary_dirty: Notify,
    /// VMs the hypervisor runs that no entry claims (last reconciliation).
    pub(crate) unclaimed: Mutex<Vec<ballast_store::VmId>>,
    /// The agent's start, origin of the handoff machine's clock.
    pub(crate) started: Instant,
    /// Set when shutting down.
    pub(crate) shutdown: watch::Receiver<bool>,
}

/// Locks a std mutex, taking over a poisoned one (no invariant spans a panic here).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Kills the process if `point` is armed; nothing in a build without the
    /// `failpoints` feature.
    pub(crate) fn fail_at(&self, point: Failpoint) {
        #[cfg(feature = "failpoints")]
        self.failpoints.hit(point);
        #[cfg(not(feature = "failpoints"))]
        let _ = point;
    }

    /// How many times to send each handoff message: twice with the test hook
    /// `failpoints.duplicate_sends` (duplicates must change nothing), else once.
    pub(crate) fn send_copies(&self) -> usize {
        #[cfg(feature = "failpoints")]
        if self.cfg.failpoints.duplicate_sends {
            return 2;
        }
        1
    }

    /// Milliseconds since the agent started (the handoff machine's clock).
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The RPC client, once the endpoint runs.
    pub(crate) fn rpc(&self) -> Option<RpcClient> {
        lock(&self.net).as_ref().map(|n| n.rpc.clone())
    }

    /// Replaces the RPC client by a fresh one on its own socket. A peer that restarted
    /// at the same address leaves our cached QUIC connection to its old process
    /// half-open until the idle timeout (its stateless resets cannot be verified), and
    /// calls on it time out; a fresh client connects to the new process at once.
    pub(crate) fn renew_rpc(&self) {
        let g = &self.cfg.gossip;
        let ip = if self.cfg.node.listen.ip().is_loopback() {
            std::net::Ipv4Addr::LOCALHOST
        } else {
            std::net::Ipv4Addr::UNSPECIFIED
        };
        let config = ballast_gossip::RpcClientConfig {
            bind_addr: (ip, 0).into(),
            max_frame_bytes: g.max_rpc_frame_bytes,
            timeout: std::time::Duration::from_millis(g.rpc_timeout_ms),
            connect_timeout: std::time::Duration::from_millis(g.connect_timeout_ms),
        };
        match RpcClient::new(self.tls.clone(), config) {
            Ok(client) => {
                if let Some(net) = lock(&self.net).as_mut() {
                    net.rpc = client;
                    tracing::info!("a peer restarted: RPC client renewed");
                }
            }
            Err(e) => tracing::warn!(reason = %e, "cannot renew the RPC client"),
        }
    }

    /// The endpoint, once it runs.
    pub(crate) fn endpoint(&self) -> Option<Arc<Endpoint>> {
        lock(&self.net).as_ref().map(|n| n.endpoint.clone())
    }

    /// The live, verified peers.
    pub(crate) fn peers(&self) -> Arc<Vec<PeerView>> {
        lock(&self.net)
            .as_ref()
            .map(|n| n.view.borrow().clone())
            .unwrap_or_default()
    }

    /// The live peers that take VMs (active, same protocol).
    pub(crate) fn active_peers(&self) -> Vec<PeerView> {
        self.peers()
            .iter()
            .filter(|p| p.summary.state == ballast_gossip::NodeRunState::Active)
            .cloned()
            .collect()
    }

    /// The address of `node`: live view first, then the last one known.
    pub(crate) fn addr_of(&self, node: &NodeId) -> Option<SocketAddr> {
        if let Some(p) = self.peers().iter().find(|p| p.node_id == node.as_str()) {
            return Some(p.gossip_addr);
        }
        lock(&self.addrs).get(node).copied()
    }

    /// Whether this node drains.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Keeps a session record (bounded).
    pub(crate) fn record_session(&self, record: SessionRecord) {
        let mut s = lock(&self.sessions);
        if s.len() >= SESSION_RECORDS_MAX {
            s.pop_front();
        }
        s.push_back(record);
    }

    /// Runs a blocking store call off the async threads.
    pub(crate) async fn with_store<T, F>(&self, f: F) -> Result<T, ballast_store::StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, ballast_store::StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(r) => r,
            Err(e) => Err(ballast_store::StoreError::Storage {
                op: "blocking task",
                reason: e.to_string(),
            }),
        }
    }

    /// Runs a blocking store call on this task's own thread. On a multi-thread runtime
    /// `block_in_place` first hands this worker's other tasks to another thread, so
    /// nothing waits behind the call, and the caller goes on without a hop to a blocking
    /// thread and back (two thread wake-ups per call, on the handoff's critical path).
    /// On any other runtime it is [`Shared::with_store`].
    pub(crate) async fn with_store_here<T, F>(&self, f: F) -> Result<T, ballast_store::StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, ballast_store::StoreError> + Send + 'static,
    {
        let flavor = tokio::runtime::Handle::current().runtime_flavor();
        if flavor == tokio::runtime::RuntimeFlavor::MultiThread {
            tokio::task::block_in_place(|| f(&self.store))
        } else {
            self.with_store(f).await
        }
    }

    /// Whether shutdown was asked.
    pub(crate) fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }
}
