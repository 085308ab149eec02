//! chitchat's `Transport`/`Socket` on the QUIC endpoint: each gossip message travels on
//! its own unidirectional stream of a reused connection (ALPN `ballast-gossip/1`).
//!
//! Sending never blocks chitchat's loop: a message is encoded and queued to a per-peer
//! sender task (bounded queue; a full queue drops, as UDP would). The sender task keeps
//! one connection to its peer, reconnecting with a bounded backoff. Receiving: each
//! inbound gossip connection's streams are read up to the size limit, decoded, and
//! queued (bounded) for chitchat's `recv`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::ChitchatEnvelope;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::bindings::Bindings;
use crate::codec::{self, CodecError};
use crate::conn_cache::ConnCache;
use crate::faults::FaultHook;
use crate::identity::PeerIdentity;
use crate::stats::{Refusal, Stats};
use crate::tasks::Tasks;
use crate::tls::{ALPN_GOSSIP, ANY_NODE_SERVER_NAME};

/// Messages queued per peer before new ones are dropped.
pub(crate) const PEER_QUEUE_LEN: usize = 64;
/// Decoded messages queued for chitchat before new ones are dropped.
pub(crate) const INBOUND_QUEUE_LEN: usize = 1_024;
/// Most peers with a sender task at once.
pub(crate) const PEER_TASKS_MAX: usize = 4_096;
/// A sender task with nothing to send for this long exits.
const PEER_IDLE: Duration = Duration::from_secs(60);
/// Wait after a failed connection before trying that peer again.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);
/// Bound on writing or reading one gossip stream.
const STREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// Stream stop code for a refused gossip message.
const STOP_REFUSED: u32 = 1;

/// Everything the gossip transport shares between chitchat's socket and our tasks.
pub(crate) struct GossipShared {
    pub(crate) cache: Arc<ConnCache>,
    pub(crate) client_config: quinn::ClientConfig,
    pub(crate) faults: Arc<FaultHook>,
    pub(crate) bindings: Arc<Bindings>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) tasks: Tasks,
    pub(crate) max_message_bytes: usize,
    pub(crate) local_addr: SocketAddr,
    inbound_tx: mpsc::Sender<RecvOutcome>,
    /// Taken by the one socket chitchat opens. std lock: taken once, never across await.
    inbound_rx: Mutex<Option<mpsc::Receiver<RecvOutcome>>>,
    /// Per-peer send queues. std lock: held for map access and `try_send` only.
    peers: Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>,
}

/// Construction parameters of [`GossipShared`].
pub(crate) struct GossipParts {
    pub(crate) cache: Arc<ConnCache>,
    pub(crate) client_config: quinn::ClientConfig,
    pub(crate) faults: Arc<FaultHook>,
    pub(crate) bindings: Arc<Bindings>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) tasks: Tasks,
    pub(crate) max_message_bytes: usize,
    pub(crate) local_addr: SocketAddr,
}

impl GossipShared {
    pub(crate) fn new(p: GossipParts) -> Arc<Self> {
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE_LEN);
        Arc::new(Self {
            cache: p.cache,
            client_config: p.client_config,
            faults: p.faults,
            bindings: p.bindings,
            stats: p.stats,
            tasks: p.tasks,
            max_message_bytes: p.max_message_bytes,
            local_addr: p.local_addr,
            inbound_tx,
            inbound_rx: Mutex::new(Some(inbound_rx)),
            peers: Mutex::new(HashMap::new()),
        })
    }

    /// Queues bytes for `to`, starting its sender task if needed. Returns false if dropped.
    fn enqueue(self: &Arc<Self>, to: SocketAddr, bytes: Vec<u8>) -> bool {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = peers.get(&to) {
            return match tx.try_send(bytes) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => false,
                Err(mpsc::error::TrySendError::Closed(bytes)) => {
                    peers.remove(&to);
                    drop(peers);
                    self.enqueue(to, bytes)
                }
            };
        }
        if peers.len() >= PEER_TASKS_MAX {
            return false;
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE_LEN);
        let _ = tx.try_send(bytes);
        let shared = self.clone();
        if self.tasks.spawn(peer_sender(shared, to, rx)) {
            peers.insert(to, tx);
            true
        } else {
            false
        }
    }

    /// Makes sure the address gets verified (dialled) soon, even with nothing to send.
    pub(crate) fn probe(self: &Arc<Self>, to: SocketAddr) {
        if to != self.local_addr && !self.faults.is_blocked(&to) {
            self.enqueue(to, Vec::new());
        }
    }

    /// Removes `to`'s queue if it is empty (the task then exits). Returns true if removed.
    fn retire_if_idle(&self, to: SocketAddr, rx: &mpsc::Receiver<Vec<u8>>) -> bool {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if rx.is_empty() {
            peers.remove(&to);
            true
        } else {
            false
        }
    }

    /// A connection to `to` (cached, or new — whose incoming streams we then read too,
    /// since the peer reuses it to gossip back).
    async fn connect(self: &Arc<Self>, to: SocketAddr) -> Result<quinn::Connection, String> {
        let (conn, id, fresh) = self
            .cache
            .get_fresh(to, ALPN_GOSSIP, ANY_NODE_SERVER_NAME, &self.client_config)
            .await
            .map_err(|e| e.to_string())?;
        self.bindings.record(to, &id.name);
        if fresh {
            let shared = self.clone();
            let conn2 = conn.clone();
            self.tasks
                .spawn(async move { serve_gossip_connection(shared, conn2, id).await });
        }
        Ok(conn)
    }
}

/// Sends one peer's queued messages over one reused connection.
async fn peer_sender(shared: Arc<GossipShared>, to: SocketAddr, mut rx: mpsc::Receiver<Vec<u8>>) {
    loop {
        let bytes = match tokio::time::timeout(PEER_IDLE, rx.recv()).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return,
            Err(_) if shared.retire_if_idle(to, &rx) => return,
            Err(_) => continue,
        };
        if shared.faults.is_blocked(&to) {
            shared.stats.refuse(Refusal::Blocked);
            continue;
        }
        let conn = match shared.connect(to).await {
            Ok(conn) => conn,
            Err(reason) => {
                debug!(peer = %to, %reason, "gossip connection failed; dropping queued messages");
                tokio::time::sleep(RECONNECT_BACKOFF).await;
                while rx.try_recv().is_ok() {}
                continue;
            }
        };
        if bytes.is_empty() {
            continue; // a probe: connecting was the point
        }
        match tokio::time::timeout(STREAM_TIMEOUT, send_on_stream(&conn, &bytes)).await {
            Ok(Ok(())) => shared.stats.sent(bytes.len()),
            Ok(Err(reason)) => {
                debug!(peer = %to, %reason, "gossip send failed; reconnecting next time");
                shared.cache.forget(&conn);
            }
            Err(_) => {
                debug!(peer = %to, "gossip send timed out; reconnecting next time");
                shared.cache.forget(&conn);
            }
        }
    }
}

async fn send_on_stream(conn: &quinn::Connection, bytes: &[u8]) -> Result<(), String> {
    let mut send = conn.open_uni().await.map_err(|e| e.to_string())?;
    send.write_all(bytes).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())
}

/// Reads the gossip streams of one authenticated inbound connection.
pub(crate) async fn serve_gossip_connection(
    shared: Arc<GossipShared>,
    conn: quinn::Connection,
    peer: PeerIdentity,
) {
    let from = conn.remote_address();
    loop {
        let recv = match conn.accept_uni().await {
            Ok(recv) => recv,
            Err(e) => {
                debug!(%from, peer = %peer.name, reason = %e, "gossip connection ended");
                return;
            }
        };
        let shared2 = shared.clone();
        let name = peer.name.clone();
        shared.tasks.spawn(async move {
            let _ = tokio::time::timeout(
                STREAM_TIMEOUT,
                read_gossip_stream(shared2, from, name, recv),
            )
            .await;
        });
    }
}

async fn read_gossip_stream(
    shared: Arc<GossipShared>,
    from: SocketAddr,
    peer: String,
    mut recv: quinn::RecvStream,
) {
    let bytes = match recv.read_to_end(shared.max_message_bytes).await {
        Ok(bytes) => bytes,
        Err(quinn::ReadToEndError::TooLong) => {
            shared.stats.refuse(Refusal::GossipOversized);
            warn!(%from, %peer, limit = shared.max_message_bytes, reason = "gossip message over the size limit", "gossip message refused");
            let _ = recv.stop(STOP_REFUSED.into());
            return;
        }
        Err(e) => {
            debug!(%from, %peer, reason = %e, "gossip stream failed");
            return;
        }
    };
    if shared.faults.is_blocked(&from) {
        shared.stats.refuse(Refusal::Blocked);
        return;
    }
    let envelope = match codec::decode(&bytes) {
        Ok(envelope) => envelope,
        Err(e) => {
            shared.stats.refuse(match e {
                CodecError::TooLarge(_) => Refusal::GossipOversized,
                _ => Refusal::GossipGarbage,
            });
            warn!(%from, %peer, len = bytes.len(), reason = %e, "gossip message refused");
            return;
        }
    };
    let outcome = RecvOutcome {
        from_addr: from,
        envelope,
        num_bytes_received: bytes.len(),
    };
    match shared.inbound_tx.try_send(outcome) {
        Ok(()) => shared.stats.received(bytes.len()),
        Err(_) => {
            shared.stats.refuse(Refusal::GossipQueueFull);
            debug!(%from, "inbound gossip queue full; message dropped");
        }
    }
}

/// chitchat's transport: opens the one socket bound to the endpoint.
pub(crate) struct QuicTransport {
    pub(crate) shared: Arc<GossipShared>,
}

#[async_trait]
impl Transport for QuicTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let rx = self
            .shared
            .inbound_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| anyhow::anyhow!("the gossip socket of {listen_addr} is already open"))?;
        Ok(Box::new(QuicSocket {
            shared: self.shared.clone(),
            rx,
        }))
    }
}

struct QuicSocket {
    shared: Arc<GossipShared>,
    rx: mpsc::Receiver<RecvOutcome>,
}

#[async_trait]
impl Socket for QuicSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.shared.local_addr)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let bytes = match codec::encode(&envelope) {
            Ok(bytes) => bytes,
            Err(e) => {
                // Not fatal for chitchat: report zero bytes, the next round retries.
                warn!(peer = %to, reason = %e, "gossip message could not be encoded; dropped");
                return Ok(SendOutcome { num_bytes_sent: 0 });
            }
        };
        let num_bytes_sent = bytes.len();
        if bytes.len() > self.shared.max_message_bytes {
            warn!(peer = %to, len = bytes.len(), "own gossip message over the limit; dropped");
        } else if self.shared.faults.is_blocked(&to) {
            self.shared.stats.refuse(Refusal::Blocked);
        } else if !self.shared.enqueue(to, bytes) {
            self.shared.stats.refuse(Refusal::GossipQueueFull);
        }
        Ok(SendOutcome { num_bytes_sent })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        self.rx
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("gossip transport closed"))
    }

    /// A SYN to an address never reached before (and not failed) waits for a first
    /// handshake; chitchat then does not count it as a probe (suspicion).
    fn counts_as_probe(&self, to: SocketAddr) -> bool {
        self.shared
            .cache
            .has_history(to, ALPN_GOSSIP, ANY_NODE_SERVER_NAME)
    }
}
