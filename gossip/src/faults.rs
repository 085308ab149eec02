//! The fault hook: drop all traffic to and from chosen addresses (tests, chaos).
//!
//! Gossip messages to or from a blocked address are dropped silently (as a lossy network
//! would); RPC calls to it fail with `RpcError::Blocked` and its RPC streams are reset.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::RwLock;

/// The set of addresses whose traffic is dropped.
#[derive(Debug, Default)]
pub(crate) struct FaultHook {
    /// std lock: held only to copy or test membership, never across an await.
    blocked: RwLock<HashSet<SocketAddr>>,
}

impl FaultHook {
    /// Replaces the set of blocked addresses.
    pub(crate) fn set_blocked(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        let mut set = self.blocked.write().unwrap_or_else(|p| p.into_inner());
        *set = addrs.into_iter().collect();
    }

    /// Whether traffic to or from `addr` is dropped.
    pub(crate) fn is_blocked(&self, addr: &SocketAddr) -> bool {
        let set = self.blocked.read().unwrap_or_else(|p| p.into_inner());
        set.contains(addr)
    }
}
