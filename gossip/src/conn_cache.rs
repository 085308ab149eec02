//! A cache of outgoing QUIC connections, one per (address, ALPN, expected server name),
//! so messages and calls reuse a connection instead of handshaking each time. Bounded,
//! least recently used first out: an evicted connection is closed, so that its peer and
//! its reader task let go of it too.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::identity::{identity_of_connection, PeerIdentity, Role};
use crate::revocation::RevokedSet;
use crate::stats::Stats;

/// Default bound on cached connections (`EndpointConfig::cached_connections_max`).
pub const CACHED_CONNECTIONS_MAX: usize = 4_096;
/// Most outgoing handshakes under way at once; more wait their turn (within the
/// connect timeout). A joining node learns of every peer within a few rounds and dials
/// them all: unbounded, those handshakes compete for the CPU until they time out.
pub(crate) const HANDSHAKES_OUT_MAX: usize = 8;
/// Close code of a connection evicted from the cache.
const CLOSE_EVICTED: u32 = 4;

type Key = (SocketAddr, &'static [u8], String);

/// Why no connection could be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectFailure {
    /// The peer's TLS refused every protocol version offered (ALPN): it runs another
    /// release of ballast.
    #[error(
        "the peer speaks none of the protocol versions offered (TLS: no_application_protocol)"
    )]
    NoCommonProtocol,
    /// Anything else: unreachable, handshake timed out, wrong certificate, revoked.
    #[error("{0}")]
    Failed(String),
}

/// TLS alert `no_application_protocol` (RFC 8446 §6.2, RFC 7301 §3.2).
const ALERT_NO_APPLICATION_PROTOCOL: u8 = 120;

impl From<quinn::ConnectionError> for ConnectFailure {
    fn from(e: quinn::ConnectionError) -> Self {
        let code = match &e {
            quinn::ConnectionError::ConnectionClosed(close) => Some(close.error_code),
            quinn::ConnectionError::TransportError(t) => Some(t.code),
            _ => None,
        };
        if code
            == Some(quinn::TransportErrorCode::crypto(
                ALERT_NO_APPLICATION_PROTOCOL,
            ))
        {
            ConnectFailure::NoCommonProtocol
        } else {
            ConnectFailure::Failed(e.to_string())
        }
    }
}

/// A cached connection, the identity it proved and when it was last used (a tick).
type Entry = (quinn::Connection, PeerIdentity, u64);

/// What a turn at dialling found: a new connection, or one another task made meanwhile.
enum Dialled {
    New(quinn::Connection),
    Cached(quinn::Connection, PeerIdentity),
}

/// Cached connections and the use counter behind the LRU order.
#[derive(Debug, Default)]
struct Lru {
    map: HashMap<Key, Entry>,
    tick: u64,
    /// Destinations whose last dial or connection failed (bounded by the cache's size).
    failed: HashSet<Key>,
}

impl Lru {
    /// Records that the last dial or connection to `key` failed, while fewer than `max`
    /// destinations are recorded.
    fn note_failed(&mut self, key: Key, max: usize) {
        if self.failed.len() < max {
            self.failed.insert(key);
        }
    }
}

/// Outgoing connections by destination.
#[derive(Debug)]
pub(crate) struct ConnCache {
    endpoint: quinn::Endpoint,
    connect_timeout: Duration,
    connections_max: usize,
    stats: Arc<Stats>,
    /// std lock: only map operations under it, never an await.
    lru: Mutex<Lru>,
    /// Inbound connections being served, by quinn's stable id, with the peer's name (so
    /// a revoked node's connections can be closed).
    inbound: Mutex<HashMap<usize, (String, quinn::Connection)>>,
    /// Revoked node names: a connection to one is closed at once, also when TLS
    /// resumed a session from before the revocation (resumption skips the certificate).
    revoked: Arc<RevokedSet>,
    /// Permits for outgoing handshakes (`HANDSHAKES_OUT_MAX`).
    handshakes: tokio::sync::Semaphore,
}

impl ConnCache {
    /// A cache of at most `connections_max` connections (at least 1); counts each
    /// handshake it makes in `stats`.
    pub(crate) fn new(
        endpoint: quinn::Endpoint,
        connect_timeout: Duration,
        connections_max: usize,
        stats: Arc<Stats>,
        revoked: Arc<RevokedSet>,
    ) -> Self {
        Self {
            endpoint,
            connect_timeout,
            connections_max: connections_max.max(1),
            stats,
            lru: Mutex::new(Lru::default()),
            inbound: Mutex::new(HashMap::new()),
            revoked,
            handshakes: tokio::sync::Semaphore::new(HANDSHAKES_OUT_MAX),
        }
    }

    /// The live entry under `key`, marked as just used.
    fn lookup(&self, key: &Key) -> Option<(quinn::Connection, PeerIdentity)> {
        let mut lru = self.lru.lock().unwrap_or_else(|p| p.into_inner());
        lru.tick += 1;
        let tick = lru.tick;
        let (conn, id, used) = lru.map.get_mut(key)?;
        if conn.close_reason().is_some() {
            return None;
        }
        *used = tick;
        Some((conn.clone(), id.clone()))
    }

    /// Whether a message to (`addr`, `alpn`, `server_name`) would not first wait for a
    /// first handshake: a connection is cached (live, or one that ended), or the last dial
    /// or connection there failed. Neither dials nor counts as a use.
    pub(crate) fn has_history(
        &self,
        addr: SocketAddr,
        alpn: &'static [u8],
        server_name: &str,
    ) -> bool {
        let key = (addr, alpn, server_name.to_owned());
        let lru = self.lru.lock().unwrap_or_else(|p| p.into_inner());
        lru.map.contains_key(&key) || lru.failed.contains(&key)
    }

    /// Records how a dial to `key` ended.
    fn dialled(&self, key: &Key, ok: bool) {
        let mut lru = self.lru.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            lru.failed.remove(key);
        } else {
            lru.note_failed(key.clone(), self.connections_max);
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
    ) -> Result<(quinn::Connection, PeerIdentity), ConnectFailure> {
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
    ) -> Result<(quinn::Connection, PeerIdentity, bool), ConnectFailure> {
        let key = (addr, alpn, server_name.to_owned());
        if let Some((conn, id)) = self.lookup(&key) {
            return Ok((conn, id, false));
        }
        let handshake = async {
            let _turn = self.handshakes.acquire().await;
            // Another task may have connected while this one waited its turn.
            if let Some((conn, id)) = self.lookup(&key) {
                return Ok::<_, ConnectFailure>(Dialled::Cached(conn, id));
            }
            let connecting = self
                .endpoint
                .connect_with(config.clone(), addr, server_name)
                .map_err(|e| ConnectFailure::Failed(e.to_string()))?;
            Ok(Dialled::New(connecting.await?))
        };
        let dialled = tokio::time::timeout(self.connect_timeout, handshake)
            .await
            .map_err(|_| ConnectFailure::Failed("handshake timed out".to_owned()))
            .and_then(|r| r);
        self.dialled(&key, dialled.is_ok());
        let dialled = dialled?;
        let conn = match dialled {
            Dialled::New(conn) => conn,
            Dialled::Cached(conn, id) => return Ok((conn, id, false)),
        };
        self.stats.handshakes_out.fetch_add(1, Ordering::Relaxed);
        let id =
            identity_of_connection(&conn).map_err(|e| ConnectFailure::Failed(e.to_string()))?;
        if id.role == Role::Node && self.revoked.contains(&id.name) {
            conn.close(4u32.into(), b"revoked");
            return Err(ConnectFailure::Failed(format!(
                "node {} is revoked",
                id.name
            )));
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
        if self.lookup(&key).is_none() {
            self.insert(key, conn.clone(), id.clone());
        }
    }

    /// Caches `conn` under `key`; when full, drops closed connections, then closes and
    /// evicts the least recently used one.
    fn insert(&self, key: Key, conn: quinn::Connection, id: PeerIdentity) {
        let mut lru = self.lru.lock().unwrap_or_else(|p| p.into_inner());
        if lru.map.len() >= self.connections_max && !lru.map.contains_key(&key) {
            lru.map.retain(|_, (c, _, _)| c.close_reason().is_none());
        }
        if lru.map.len() >= self.connections_max && !lru.map.contains_key(&key) {
            let oldest = lru
                .map
                .iter()
                .min_by_key(|(_, (_, _, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some((old, _, _)) = oldest.and_then(|k| lru.map.remove(&k)) {
                old.close(CLOSE_EVICTED.into(), b"evicted");
            }
        }
        lru.tick += 1;
        let tick = lru.tick;
        lru.map.insert(key, (conn, id, tick));
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
            let mut lru = self.lru.lock().unwrap_or_else(|p| p.into_inner());
            lru.map.retain(|_, (c, id, _)| {
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

    /// Drops `conn` from the cache (after it failed), unless it was already replaced; its
    /// destination counts as one whose last dial failed.
    pub(crate) fn forget(&self, conn: &quinn::Connection) {
        let mut lru = self.lru.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<Key> = lru
            .map
            .iter()
            .filter(|(_, (c, _, _))| c.stable_id() == conn.stable_id())
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            lru.map.remove(&key);
            lru.note_failed(key, self.connections_max);
        }
    }
}
