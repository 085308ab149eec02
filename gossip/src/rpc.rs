//! The RPC channel: one request and one response per bidirectional stream, each a frame
//! (see `frame`), with a per-request timeout and the caller's certificate identity given
//! to the handler. Generic over the request/response types, which the agent defines.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{debug, warn};

use crate::conn_cache::{ConnCache, ConnectFailure, CACHED_CONNECTIONS_MAX};
use crate::error::{EndpointError, FrameError, RpcError};
use crate::faults::FaultHook;
use crate::frame::{encode_frame, read_frame, write_frame};
use crate::identity::PeerIdentity;
use crate::stats::{Refusal, Stats};
use crate::tasks::Tasks;
use crate::tls::{client_config, TlsBundle, ALPN_RPC, ALPN_RPC_V1, ANY_NODE_SERVER_NAME};

/// Stream reset code: the request frame was refused (too large, truncated, undecodable).
pub const REFUSE_BAD_FRAME: u32 = 1;
/// Stream reset code: the request or the handler timed out.
pub const REFUSE_TIMEOUT: u32 = 2;
/// Stream reset code: the response could not be encoded within the limit.
pub const REFUSE_RESPONSE: u32 = 3;
/// Stream reset code: traffic from this peer is blocked by the fault hook.
pub const REFUSE_BLOCKED: u32 = 4;

/// Default limit of an RPC frame's payload: 4 MiB.
pub const RPC_FRAME_BYTES_DEFAULT: usize = 4 * 1024 * 1024;

/// Serves RPC requests. Returns the response; the endpoint sends it.
#[async_trait]
pub trait RpcHandler<Req, Resp>: Send + Sync + 'static {
    /// Handles one request from an authenticated peer.
    async fn handle(&self, peer: PeerIdentity, req: Req) -> Resp;
}

/// The server half, type-erased so the endpoint itself is not generic.
#[async_trait]
pub(crate) trait RpcService: Send + Sync + 'static {
    async fn serve_stream(
        &self,
        peer: PeerIdentity,
        from: SocketAddr,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    );
}

/// Limits and shared parts of the server half.
pub(crate) struct RpcServer<Req, Resp, H> {
    pub(crate) handler: Arc<H>,
    pub(crate) max_frame_bytes: usize,
    pub(crate) timeout: Duration,
    pub(crate) stats: Arc<Stats>,
    pub(crate) faults: Arc<FaultHook>,
    pub(crate) _types: PhantomData<fn(Req) -> Resp>,
}

fn refusal_of(e: &FrameError) -> Option<Refusal> {
    match e {
        FrameError::TooLarge { .. } => Some(Refusal::RpcTooLarge),
        FrameError::Truncated => Some(Refusal::RpcTruncated),
        FrameError::UnknownVersion(_)
        | FrameError::Decode(_)
        | FrameError::TrailingBytes { .. } => Some(Refusal::RpcUndecodable),
        FrameError::Reset(_) | FrameError::Stream(_) | FrameError::Encode(_) => None,
    }
}

#[async_trait]
impl<Req, Resp, H> RpcService for RpcServer<Req, Resp, H>
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    H: RpcHandler<Req, Resp>,
{
    async fn serve_stream(
        &self,
        peer: PeerIdentity,
        from: SocketAddr,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let refuse = |send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, code: u32| {
            let _ = recv.stop(code.into());
            let _ = send.reset(code.into());
        };
        if self.faults.is_blocked(&from) {
            self.stats.refuse(Refusal::Blocked);
            refuse(&mut send, &mut recv, REFUSE_BLOCKED);
            return;
        }
        let read = tokio::time::timeout(
            self.timeout,
            read_frame::<Req>(&mut recv, self.max_frame_bytes),
        )
        .await;
        let req = match read {
            Ok(Ok(req)) => req,
            Ok(Err(e)) => {
                if let Some(r) = refusal_of(&e) {
                    self.stats.refuse(r);
                    warn!(%from, peer = %peer.name, reason = %e, "RPC request refused");
                } else {
                    debug!(%from, peer = %peer.name, reason = %e, "RPC stream failed");
                }
                refuse(&mut send, &mut recv, REFUSE_BAD_FRAME);
                return;
            }
            Err(_) => {
                warn!(%from, peer = %peer.name, reason = "request not received in time", "RPC request refused");
                refuse(&mut send, &mut recv, REFUSE_TIMEOUT);
                return;
            }
        };
        let handled =
            tokio::time::timeout(self.timeout, self.handler.handle(peer.clone(), req)).await;
        let Ok(resp) = handled else {
            warn!(%from, peer = %peer.name, reason = "handler timed out", "RPC request dropped");
            refuse(&mut send, &mut recv, REFUSE_TIMEOUT);
            return;
        };
        let frame = match encode_frame(&resp, self.max_frame_bytes) {
            Ok(frame) => frame,
            Err(e) => {
                warn!(%from, peer = %peer.name, reason = %e, "RPC response cannot be sent");
                refuse(&mut send, &mut recv, REFUSE_RESPONSE);
                return;
            }
        };
        match tokio::time::timeout(self.timeout, write_frame(&mut send, &frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                debug!(%from, peer = %peer.name, reason = %e, "RPC response not delivered")
            }
            Err(_) => debug!(%from, peer = %peer.name, "RPC response write timed out"),
        }
    }
}

/// Accepts the RPC streams of one authenticated connection.
pub(crate) async fn serve_rpc_connection(
    service: Arc<dyn RpcService>,
    tasks: Tasks,
    conn: quinn::Connection,
    peer: PeerIdentity,
) {
    let from = conn.remote_address();
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(streams) => streams,
            Err(e) => {
                debug!(%from, peer = %peer.name, reason = %e, "RPC connection ended");
                return;
            }
        };
        let service = service.clone();
        let peer = peer.clone();
        tasks.spawn(async move { service.serve_stream(peer, from, send, recv).await });
    }
}

/// Settings of a client that is not part of an endpoint (e.g. the admin CLI).
#[derive(Clone, Debug)]
pub struct RpcClientConfig {
    /// Local address of the client's UDP socket.
    pub bind_addr: SocketAddr,
    /// Limit of a frame's payload, both directions.
    pub max_frame_bytes: usize,
    /// Bound on a whole call: connect, send, wait for and read the response.
    pub timeout: Duration,
    /// Bound on a handshake.
    pub connect_timeout: Duration,
}

impl Default for RpcClientConfig {
    fn default() -> Self {
        Self {
            bind_addr: (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            max_frame_bytes: RPC_FRAME_BYTES_DEFAULT,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
        }
    }
}

/// Calls the RPC of cluster nodes, reusing one connection per peer.
#[derive(Clone)]
pub struct RpcClient {
    inner: Arc<ClientInner>,
}

/// The client's QUIC settings, one per RPC protocol version it can call in.
pub(crate) struct RpcConfigs {
    /// `ballast-rpc/2`.
    current: quinn::ClientConfig,
    /// `ballast-rpc/1`, for nodes of ballast 0.1.
    v1: quinn::ClientConfig,
}

impl RpcConfigs {
    pub(crate) fn new(
        tls: &TlsBundle,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<Self, EndpointError> {
        Ok(Self {
            current: client_config(tls, ALPN_RPC, transport.clone())?,
            v1: client_config(tls, ALPN_RPC_V1, transport)?,
        })
    }

    /// The ALPN and settings that call a node speaking at most `protocol`.
    fn speaking(&self, protocol: u32) -> (&'static [u8], &quinn::ClientConfig) {
        if protocol <= 1 {
            (ALPN_RPC_V1, &self.v1)
        } else {
            (ALPN_RPC, &self.current)
        }
    }
}

struct ClientInner {
    cache: Arc<ConnCache>,
    configs: RpcConfigs,
    faults: Arc<FaultHook>,
    max_frame_bytes: usize,
    timeout: Duration,
    /// Set for a standalone client, which owns its endpoint.
    own_endpoint: Option<quinn::Endpoint>,
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        if let Some(ep) = &self.own_endpoint {
            ep.close(0u32.into(), b"client dropped");
        }
    }
}

impl RpcClient {
    /// A client-only endpoint (no gossip, no server) presenting `tls`'s certificate —
    /// node or admin. Must be called inside a tokio runtime.
    pub fn new(tls: TlsBundle, config: RpcClientConfig) -> Result<Self, EndpointError> {
        let transport = Arc::new(crate::endpoint::transport_config(config.timeout));
        let configs = RpcConfigs::new(&tls, transport)?;
        let socket =
            std::net::UdpSocket::bind(config.bind_addr).map_err(|source| EndpointError::Bind {
                addr: config.bind_addr,
                source,
            })?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| EndpointError::Bind {
            addr: config.bind_addr,
            source,
        })?;
        let cache = Arc::new(ConnCache::new(
            endpoint.clone(),
            config.connect_timeout,
            CACHED_CONNECTIONS_MAX,
            Arc::default(),
            tls.revoked().clone(),
        ));
        Ok(Self::from_parts(
            cache,
            configs,
            Arc::default(),
            config.max_frame_bytes,
            config.timeout,
            Some(endpoint),
        ))
    }

    pub(crate) fn from_parts(
        cache: Arc<ConnCache>,
        configs: RpcConfigs,
        faults: Arc<FaultHook>,
        max_frame_bytes: usize,
        timeout: Duration,
        own_endpoint: Option<quinn::Endpoint>,
    ) -> Self {
        Self {
            inner: Arc::new(ClientInner {
                cache,
                configs,
                faults,
                max_frame_bytes,
                timeout,
                own_endpoint,
            }),
        }
    }

    /// Sends `req` to the node at `addr` and returns its response. With `expected_node`
    /// the server must prove that node id; with `None`, any node of the cluster will do.
    /// One attempt on a fresh connection is made if a cached one turns out dead.
    pub async fn call<Req, Resp>(
        &self,
        addr: SocketAddr,
        expected_node: Option<&str>,
        req: &Req,
    ) -> Result<Resp, RpcError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        self.call_speaking(addr, expected_node, crate::PROTOCOL_VERSION, req)
            .await
    }

    /// Like [`RpcClient::call`], to a node that speaks protocol versions up to
    /// `protocol` (its gossiped `protocol_version`): the connection asks for that
    /// version's ALPN, so a node of ballast 0.1 is called as it expects. `req` must be
    /// encoded in that version.
    pub async fn call_speaking<Req, Resp>(
        &self,
        addr: SocketAddr,
        expected_node: Option<&str>,
        protocol: u32,
        req: &Req,
    ) -> Result<Resp, RpcError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let inner = &self.inner;
        if inner.faults.is_blocked(&addr) {
            return Err(RpcError::Blocked { addr });
        }
        let frame = encode_frame(req, inner.max_frame_bytes)?;
        let name = expected_node.unwrap_or(ANY_NODE_SERVER_NAME);
        tokio::time::timeout(inner.timeout, self.call_inner(addr, name, protocol, &frame))
            .await
            .map_err(|_| RpcError::Timeout { addr })?
    }

    async fn call_inner<Resp: DeserializeOwned>(
        &self,
        addr: SocketAddr,
        name: &str,
        protocol: u32,
        frame: &[u8],
    ) -> Result<Resp, RpcError> {
        let inner = &self.inner;
        let (alpn, config) = inner.configs.speaking(protocol);
        let mut attempts = 0;
        let (mut send, mut recv) = loop {
            attempts += 1;
            let (conn, _) =
                inner
                    .cache
                    .get(addr, alpn, name, config)
                    .await
                    .map_err(|e| match e {
                        ConnectFailure::NoCommonProtocol => RpcError::NoCommonProtocol { addr },
                        ConnectFailure::Failed(reason) => RpcError::Connect { addr, reason },
                    })?;
            match conn.open_bi().await {
                Ok(streams) => break streams,
                Err(e) => {
                    inner.cache.forget(&conn);
                    if attempts >= 2 {
                        return Err(RpcError::Connect {
                            addr,
                            reason: e.to_string(),
                        });
                    }
                }
            }
        };
        let refused = |e: FrameError| match e {
            FrameError::Reset(code) => RpcError::Refused { code },
            e => RpcError::Frame(e),
        };
        write_frame(&mut send, frame).await.map_err(refused)?;
        read_frame(&mut recv, inner.max_frame_bytes)
            .await
            .map_err(refused)
    }
}
