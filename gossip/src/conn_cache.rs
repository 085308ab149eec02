//! A cache of outgoing QUIC connections, one per (address, ALPN, expected server name),
//! so messages and calls reuse a connection instead of handshaking each time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use crate::identity::{identity_of_connection, PeerIdentity, Role};
use crate::revocation::RevokedSet;
use std::sync::Arc;

/// Most cached connections; past it, closed ones are evicted, then an arbitrary one.
pub(crate) const CACHED_CONNECTIONS_MAX: usize = 4_096;

type Key = (SocketAddr, &'static [u8], String);

/// Outgoing connections by destination.
#[derive(Debug)]
pub(crate) struct ConnCache {
    endpoint: quinn::Endpoint,
    connect_timeout: Duration,
    /// std lock: only map operations under it, never an await.
    map: Mutex<HashMap<Key, (quinn::Connection, PeerIdentity)>>,
    /// Inbound connections being served, by quinn's stable id, with the peer's name (so
    /// a revoked node's connections can be closed).
    inbound: Mutex<HashMap<usize, (String, quinn::Connection)>>,
    /// Revoked node names: a connection to one is closed at once, also when TLS
    /// resumed a session from before the revocation (resumption skips the certificate).
    revoked: Arc<RevokedSet>,
}

impl ConnCache {
    pub(crate) fn new(
        endpoint: quinn::Endpoint,
        connect_timeout: Duration,
        revoked: Arc<RevokedSet>,
    ) -> Self {
        Self {
            revoked,
            endpoint,
            connect_timeout,
            map: Mutex::new(HashMap::new()),
            inbound: Mutex::new(HashMap::new()),
        }
    }

    /// Returns a live cached connection or makes a new one (bounded by the connect
    /// timeout), with the identity the server proved.
    pub(crate) async fn get(
        &self,
        addr: SocketAddr,
        alpn: &'static [u8],
        server_name: &str,
        config: &quinn::ClientConfig,
    ) -> Result<(quinn::Connection, PeerIdentity), String> {
        self.get_fresh(addr, alpn, server_name, config)
            .await
            .map(|(conn, id, _)| (conn, id))
    }

    /// Like [`ConnCache::get`], also telling whether the connection was just made.
    pub(crate) async fn get_fresh(
        &self,
        addr: SocketAddr,
        alpn: &'static [u8],
        server_name: &str,
        config: &quinn::ClientConfig,
    ) -> Result<(quinn::Connection, PeerIdentity, bool), String> {
        let key = (addr, alpn, server_name.to_owned());
        let cached = {
            let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.get(&key).cloned()
        };
        if let Some((conn, id)) = cached {
            if conn.close_reason().is_none() {
                return Ok((conn, id, false));
            }
        }
        let connecting = self
            .endpoint
            .connect_with(config.clone(), addr, server_name)
            .map_err(|e| e.to_string())?;
        let conn = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| "handshake timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let id = identity_of_connection(&conn).map_err(|e| e.to_string())?;
        if id.role == Role::Node && self.revoked.contains(&id.name) {
            conn.close(4u32.into(), b"revoked");
            return Err(format!("node {} is revoked", id.name));
        }
        self.insert(key, conn.clone(), id.clone());
        Ok((conn, id, true))
    }

    /// Offers an inbound connection for reuse in the other direction: a peer that dialled
    /// us (proving `id`) is reached over the same connection, saving a handshake. Only
    /// fills an empty or dead slot.
    pub(crate) fn adopt_inbound(
        &self,
        alpn: &'static [u8],
        server_name: &str,
        conn: &quinn::Connection,
        id: &PeerIdentity,
    ) {
        let key = (conn.remote_address(), alpn, server_name.to_owned());
        let live = {
            let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.get(&key)
                .is_some_and(|(c, _)| c.close_reason().is_none())
        };
        if !live {
            self.insert(key, conn.clone(), id.clone());
        }
    }

    fn insert(&self, key: Key, conn: quinn::Connection, id: PeerIdentity) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= CACHED_CONNECTIONS_MAX {
            map.retain(|_, (c, _)| c.close_reason().is_none());
            if map.len() >= CACHED_CONNECTIONS_MAX {
                if let Some(k) = map.keys().next().cloned() {
                    map.remove(&k);
                }
            }
        }
        map.insert(key, (conn, id));
    }

    /// Records an inbound connection from `name` while it is served.
    pub(crate) fn serving(&self, name: &str, conn: &quinn::Connection) {
        let mut inbound = self.inbound.lock().unwrap_or_else(|p| p.into_inner());
        inbound.insert(conn.stable_id(), (name.to_owned(), conn.clone()));
    }

    /// Forgets an inbound connection whose serving ended.
    pub(crate) fn served(&self, conn: &quinn::Connection) {
        let mut inbound = self.inbound.lock().unwrap_or_else(|p| p.into_inner());
        inbound.remove(&conn.stable_id());
    }

    /// Closes every connection to or from node `name` (it was revoked).
    pub(crate) fn close_node(&self, name: &str) {
        let mut closing = Vec::new();
        {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, (c, id)| {
                let hit = id.name == name;
                if hit {
                    closing.push(c.clone());
                }
                !hit
            });
        }
        {
            let inbound = self.inbound.lock().unwrap_or_else(|p| p.into_inner());
            closing.extend(
                inbound
                    .values()
                    .filter(|(n, _)| n == name)
                    .map(|(_, c)| c.clone()),
            );
        }
        for c in closing {
            c.close(4u32.into(), b"revoked");
        }
    }

    /// Drops `conn` from the cache (after it failed), unless it was already replaced.
    pub(crate) fn forget(&self, conn: &quinn::Connection) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, (c, _)| c.stable_id() != conn.stable_id());
    }
}
