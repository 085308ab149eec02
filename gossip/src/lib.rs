//! `ballast-gossip`: the one network endpoint of a ballast agent (QUIC + mutual TLS).
//!
//! Modules:
//! - `endpoint` — [`Endpoint`]: the quinn endpoint, chitchat on it, view, RPC, shutdown.
//! - `transport` — chitchat's `Transport`/`Socket` over QUIC unidirectional streams.
//! - `codec` — chitchat envelopes to bytes and back (chitchat's own wire format, in-tree copy).
//! - `rpc` — [`RpcHandler`], [`RpcClient`]: request/response on bidirectional streams.
//! - `frame` — RPC framing: version, u64 length, bincode 2 payload, hard limits.
//! - `membership` — [`PeerView`]: live peers, checked against certificate bindings.
//! - `bindings` — which certificate name was proven at which address.
//! - `summary` — [`LoadSummary`] and its chitchat keys.
//! - `signed_state` — each node signs its own keys; peers' summaries are used only signed.
//! - `revocation` — [`Revocation`]: node names an operator revoked, refused everywhere.
//! - `tls` — [`TlsBundle`], rustls/quinn configs (ring), the server-name verifier.
//! - `pki` — the cluster CA: [`create_ca`], [`issue_node_cert`], [`issue_admin_cert`].
//! - `pem_files` — saving/loading PEM files (keys 0600).
//! - `identity` — [`PeerIdentity`] and [`Role`] read from certificates.
//! - `conn_cache` — outgoing connections reused per peer.
//! - `faults` — the fault hook that drops traffic to chosen addresses.
//! - `stats` — [`EndpointStats`]: refusal and traffic counters.
//! - `tasks` — spawning tasks and waiting for them at shutdown.
//! - `bench` — [`bench_gossip`]: in-process cluster measurements.
//! - `error` — the error enums.
#![deny(missing_docs, unreachable_pub)]

pub mod bench;
mod bindings;
#[cfg(test)]
mod bounded_tests;
mod codec;
mod conn_cache;
mod endpoint;
#[cfg(test)]
mod endpoint_test_util;
pub mod error;
mod faults;
#[cfg(test)]
mod forged_state_tests;
pub mod frame;
mod identity;
mod membership;
mod pem_files;
mod pki;
mod revocation;
mod rpc;
mod signed_state;
#[cfg(test)]
mod spoof_tests;
mod stats;
mod summary;
#[cfg(test)]
mod suspicion_tests;
mod tasks;
mod tls;
mod transport;

pub use bench::{bench_gossip, GossipBenchOptions, GossipBenchReport};
pub use codec::GOSSIP_MESSAGE_BYTES_MAX;
pub use conn_cache::CACHED_CONNECTIONS_MAX;
pub use endpoint::{
    Endpoint, EndpointConfig, GOSSIP_BUILD_BYTES_MAX, GOSSIP_DIGEST_NODES_MAX,
    GOSSIP_SUSPICION_HOLD_ROUNDS, INBOUND_CONNECTIONS_MAX,
};
pub use error::{EndpointError, FrameError, IdentityError, PkiError, RpcError, TlsError};
pub use identity::{
    identity_from_cert, validate_name, AdminRole, PeerIdentity, Role, NAME_LEN_MAX,
};
pub use membership::{IncompatiblePeer, PeerView};
pub use pem_files::{
    load_ca, load_cert_bundle, save_ca, save_cert_bundle, CERT_FILE_MODE, KEY_FILE_MODE,
};
pub use pki::{
    create_ca, issue_admin_cert, issue_node_cert, issue_node_cert_valid, utc_date, CaBundle,
    CertBundle, Validity,
};
pub use revocation::{Revocation, RevocationError, RevokedSet, REVOCATIONS_MAX};
pub use rpc::{
    RpcClient, RpcClientConfig, RpcHandler, REFUSE_BAD_FRAME, REFUSE_BLOCKED, REFUSE_RESPONSE,
    REFUSE_TIMEOUT, RPC_FRAME_BYTES_DEFAULT,
};
pub use signed_state::ForgedState;
pub use stats::EndpointStats;
pub use summary::{speaks_with, LoadSummary, NodeRunState, PROTOCOL_MIN, PROTOCOL_VERSION};
pub use tls::{https_server_config, TlsBundle, ALPN_GOSSIP, ALPN_RPC, ALPN_RPC_V1};
