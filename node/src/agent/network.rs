//! [`Network`]: the agent's handle on the gossip endpoint — the RPC client, the live
//! peer view and the last known address of every node seen.

use super::context::lock;
use ballast_gossip::{Endpoint, NodeRunState, PeerView, RpcClient, RpcClientConfig, TlsBundle};
use ballast_store::NodeId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The endpoint's parts in use, set once it runs.
struct Live {
    /// The endpoint (publishing, shutdown). Taken out at shutdown.
    endpoint: Arc<Endpoint>,
    /// The RPC client in use: the endpoint's own at first; a fresh standalone one after
    /// a peer restarted (see [`Network::renew_rpc`]).
    rpc: RpcClient,
    /// The live-peer view.
    view: watch::Receiver<Arc<Vec<PeerView>>>,
}

/// The network handle. Its std mutexes are never held across `.await`.
pub(crate) struct Network {
    live: Mutex<Option<Live>>,
    /// Last known address of every node seen (peers that died keep theirs, so the
    /// handoff machine can keep retrying them).
    known: Mutex<HashMap<NodeId, SocketAddr>>,
    /// The highest protocol version each node seen speaks (its gossiped
    /// `protocol_version`), kept like its address.
    protocols: Mutex<HashMap<NodeId, u32>>,
    /// This node's certificate and the settings of a fresh RPC client.
    tls: TlsBundle,
    fresh_client: RpcClientConfig,
}

impl Network {
    /// A handle with no endpoint yet.
    pub(crate) fn new(tls: TlsBundle, fresh_client: RpcClientConfig) -> Self {
        Self {
            live: Mutex::new(None),
            known: Mutex::new(HashMap::new()),
            protocols: Mutex::new(HashMap::new()),
            tls,
            fresh_client,
        }
    }

    /// Starts using `endpoint`.
    pub(crate) fn attach(&self, endpoint: Arc<Endpoint>) {
        *lock(&self.live) = Some(Live {
            rpc: endpoint.rpc_client().clone(),
            view: endpoint.watch_peers(),
            endpoint,
        });
    }

    /// Stops using the endpoint and hands it back (for its shutdown).
    pub(crate) fn detach(&self) -> Option<Arc<Endpoint>> {
        lock(&self.live).take().map(|live| live.endpoint)
    }

    /// The RPC client, once the endpoint runs.
    pub(crate) fn rpc(&self) -> Option<RpcClient> {
        lock(&self.live).as_ref().map(|n| n.rpc.clone())
    }

    /// Replaces the RPC client by a fresh one on its own socket. A peer that restarted
    /// at the same address leaves our cached QUIC connection to its old process
    /// half-open until the idle timeout (its stateless resets cannot be verified), and
    /// calls on it time out; a fresh client connects to the new process at once.
    pub(crate) fn renew_rpc(&self) {
        match RpcClient::new(self.tls.clone(), self.fresh_client.clone()) {
            Ok(client) => {
                if let Some(live) = lock(&self.live).as_mut() {
                    live.rpc = client;
                    tracing::info!("a peer restarted: RPC client renewed");
                }
            }
            Err(e) => tracing::warn!(reason = %e, "cannot renew the RPC client"),
        }
    }

    /// The endpoint, once it runs.
    pub(crate) fn endpoint(&self) -> Option<Arc<Endpoint>> {
        lock(&self.live).as_ref().map(|n| n.endpoint.clone())
    }

    /// The live-peer view, once the endpoint runs.
    pub(crate) fn view(&self) -> Option<watch::Receiver<Arc<Vec<PeerView>>>> {
        lock(&self.live).as_ref().map(|n| n.view.clone())
    }

    /// The live, verified peers.
    pub(crate) fn peers(&self) -> Arc<Vec<PeerView>> {
        lock(&self.live)
            .as_ref()
            .map(|n| n.view.borrow().clone())
            .unwrap_or_default()
    }

    /// The live peers that take VMs (active, same protocol).
    pub(crate) fn active_peers(&self) -> Vec<PeerView> {
        self.peers()
            .iter()
            .filter(|p| p.summary.state == NodeRunState::Active)
            .cloned()
            .collect()
    }

    /// The address of `node`: live view first, then the last one known.
    pub(crate) fn addr_of(&self, node: &NodeId) -> Option<SocketAddr> {
        if let Some(p) = self.peers().iter().find(|p| p.node_id == node.as_str()) {
            return Some(p.gossip_addr);
        }
        lock(&self.known).get(node).copied()
    }

    /// Every node seen since the start (or since it was forgotten), with its last known
    /// address: the web view lists the ones that stopped answering as unreachable.
    pub(crate) fn known(&self) -> Vec<(NodeId, SocketAddr)> {
        lock(&self.known)
            .iter()
            .map(|(n, a)| (n.clone(), *a))
            .collect()
    }

    /// The highest protocol version `node` speaks: live view first, then the last one
    /// known; this build's own for a node never seen.
    pub(crate) fn protocol_of(&self, node: &NodeId) -> u32 {
        if let Some(p) = self.peers().iter().find(|p| p.node_id == node.as_str()) {
            return p.summary.protocol_version;
        }
        lock(&self.protocols)
            .get(node)
            .copied()
            .unwrap_or(ballast_gossip::PROTOCOL_VERSION)
    }

    /// Forgets `node`'s address (`ballast node forget`: it is gone for good).
    pub(crate) fn forget(&self, node: &NodeId) {
        lock(&self.known).remove(node);
        lock(&self.protocols).remove(node);
    }

    /// Remembers the address and protocol version of each of `peers`.
    pub(crate) fn remember(&self, peers: &[PeerView]) {
        let mut known = lock(&self.known);
        let mut protocols = lock(&self.protocols);
        for p in peers {
            let node = NodeId::from(p.node_id.as_str());
            protocols.insert(node.clone(), p.summary.protocol_version);
            known.insert(node, p.gossip_addr);
        }
    }
}
