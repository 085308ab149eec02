//! Counters of refused input and of gossip traffic, readable as a plain struct (for
//! tests and Prometheus metrics).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Why a peer or a message was refused. Each refusal is also logged with this reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The TLS/QUIC handshake failed (foreign CA, no certificate, wrong ALPN, ...).
    Handshake,
    /// The certificate verified but carries no usable ballast identity.
    BadIdentity,
    /// An admin certificate tried to gossip.
    AdminGossip,
    /// Bytes on a gossip stream are not a chitchat message.
    GossipGarbage,
    /// A gossip message exceeded the size limit.
    GossipOversized,
    /// A gossip message was dropped because the inbound queue was full.
    GossipQueueFull,
    /// An RPC frame announced more bytes than the limit.
    RpcTooLarge,
    /// An RPC frame ended early.
    RpcTruncated,
    /// An RPC frame had an unknown version, an undecodable payload or trailing bytes.
    RpcUndecodable,
    /// A gossiped node id does not match the certificate proven at its address.
    NodeIdMismatch,
    /// Traffic dropped by the fault hook.
    Blocked,
    /// A peer's gossiped state did not verify against its own signature.
    ForgedState,
}

const N: usize = 12;

/// Snapshot of an endpoint's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EndpointStats {
    /// Failed TLS/QUIC handshakes (foreign CA, no certificate, wrong ALPN, timeouts).
    pub handshake_failed: u64,
    /// Verified certificates without a usable ballast identity.
    pub bad_identity: u64,
    /// Admin certificates that tried to gossip.
    pub admin_gossip: u64,
    /// Gossip streams whose bytes were not a chitchat message.
    pub gossip_garbage: u64,
    /// Gossip messages over the size limit.
    pub gossip_oversized: u64,
    /// Gossip messages dropped because a queue was full.
    pub gossip_queue_full: u64,
    /// RPC frames over the size limit.
    pub rpc_too_large: u64,
    /// RPC frames that ended early.
    pub rpc_truncated: u64,
    /// RPC frames that could not be decoded.
    pub rpc_undecodable: u64,
    /// Gossiped node ids refused because they differ from the certificate.
    pub node_id_mismatch: u64,
    /// Messages or calls dropped by the fault hook.
    pub blocked: u64,
    /// Peer states dropped because they did not verify against the node's signature.
    pub forged_state: u64,
    /// Gossip messages sent.
    pub gossip_messages_sent: u64,
    /// Gossip payload bytes sent (chitchat bytes, before QUIC/TLS overhead).
    pub gossip_bytes_sent: u64,
    /// Gossip messages received and accepted.
    pub gossip_messages_received: u64,
    /// Gossip payload bytes received and accepted.
    pub gossip_bytes_received: u64,
    /// Largest gossip message sent (chitchat bytes).
    pub gossip_message_bytes_max: u64,
    /// TLS handshakes completed as the client (outgoing connections made).
    pub handshakes_out: u64,
    /// TLS handshakes completed as the server (incoming connections accepted).
    pub handshakes_in: u64,
}

/// The live counters.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    refusals: [AtomicU64; N],
    pub(crate) messages_sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    message_bytes_max: AtomicU64,
    pub(crate) handshakes_out: AtomicU64,
    pub(crate) handshakes_in: AtomicU64,
}

impl Stats {
    pub(crate) fn refuse(&self, r: Refusal) {
        self.refusals[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn sent(&self, bytes: usize) {
        self.messages_sent.fetch_add(1, Ordering::Relaxed);
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
        self.message_bytes_max
            .fetch_max(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn received(&self, bytes: usize) {
        self.messages_received.fetch_add(1, Ordering::Relaxed);
        self.bytes_received
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> EndpointStats {
        let r = |x: Refusal| self.refusals[x as usize].load(Ordering::Relaxed);
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        EndpointStats {
            handshake_failed: r(Refusal::Handshake),
            bad_identity: r(Refusal::BadIdentity),
            admin_gossip: r(Refusal::AdminGossip),
            gossip_garbage: r(Refusal::GossipGarbage),
            gossip_oversized: r(Refusal::GossipOversized),
            gossip_queue_full: r(Refusal::GossipQueueFull),
            rpc_too_large: r(Refusal::RpcTooLarge),
            rpc_truncated: r(Refusal::RpcTruncated),
            rpc_undecodable: r(Refusal::RpcUndecodable),
            node_id_mismatch: r(Refusal::NodeIdMismatch),
            blocked: r(Refusal::Blocked),
            forged_state: r(Refusal::ForgedState),
            gossip_messages_sent: l(&self.messages_sent),
            gossip_bytes_sent: l(&self.bytes_sent),
            gossip_messages_received: l(&self.messages_received),
            gossip_bytes_received: l(&self.bytes_received),
            gossip_message_bytes_max: l(&self.message_bytes_max),
            handshakes_out: l(&self.handshakes_out),
            handshakes_in: l(&self.handshakes_in),
        }
    }
}
