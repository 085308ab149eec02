//! The crate's error enums, one per concern. Each variant's doc says what happened and
//! whether any state changed.

use std::net::SocketAddr;
use std::path::PathBuf;

/// A certificate does not carry a usable ballast identity.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum IdentityError {
    /// The name is not 1–63 letters, digits or `-` starting with a letter; nothing was issued.
    #[error("invalid node/admin name {name:?}: use 1-63 ASCII letters, digits and '-', starting with a letter")]
    InvalidName {
        /// The rejected name (at most 80 characters of it).
        name: String,
    },
    /// The certificate's DER could not be parsed; the peer is refused.
    #[error("certificate cannot be parsed")]
    Unparseable,
    /// The peer presented no certificate; the peer is refused.
    #[error("peer presented no certificate")]
    NoCertificate,
    /// The certificate has no `ballast-node`/`ballast-admin` unit; the peer is refused.
    #[error("certificate carries no ballast role")]
    NoRole,
    /// The certificate claims both roles; the peer is refused.
    #[error("certificate carries both ballast roles")]
    AmbiguousRole,
    /// The certificate has no DNS subject-alternative name; the peer is refused.
    #[error("certificate carries no DNS name")]
    NoName,
    /// The certificate has several DNS names, so it names no single node; refused.
    #[error("certificate carries more than one DNS name")]
    AmbiguousName,
}

/// Creating, signing, writing or reading certificates failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen could not generate a key or sign a certificate; nothing was written.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// The requested name is not a valid identity; nothing was issued.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A file could not be read or written; a write may have left a `.tmp` file behind
    /// but never a half-written target file (writes go through a rename).
    #[error("file {path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A PEM file holds no certificate/key of the expected kind; nothing changed.
    #[error("{path}: {what}")]
    Pem {
        /// The file concerned (empty for in-memory PEM).
        path: PathBuf,
        /// What is missing or wrong.
        what: String,
    },
}

/// Building the TLS configuration failed; no endpoint was started.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls rejected the certificates, key or settings.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The CA certificate could not be used as a trust root.
    #[error("CA certificate unusable as a trust root: {0}")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    /// quinn refused the rustls configuration (no TLS 1.3 cipher suite).
    #[error("QUIC crypto configuration: {0}")]
    Quic(#[source] quinn::crypto::rustls::NoInitialCipherSuite),
    /// The PEM material is missing a certificate or key.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// Our own certificate does not carry a usable identity.
    #[error("own certificate: {0}")]
    Identity(#[from] IdentityError),
}

/// A frame on an RPC stream could not be written or read. Normal at runtime for bad
/// peers; the stream is dropped, the connection and the endpoint keep going.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The frame starts with a framing version we do not speak.
    #[error("unknown frame version {0}")]
    UnknownVersion(u8),
    /// The length prefix exceeds the configured limit; nothing was allocated or read.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The announced length.
        len: u64,
        /// The configured limit.
        max: usize,
    },
    /// The stream ended before the header or the announced payload was complete.
    #[error("truncated frame")]
    Truncated,
    /// The peer reset (or stopped) the stream with this application code.
    #[error("stream reset by peer with code {0}")]
    Reset(u64),
    /// Reading or writing the stream failed (connection lost, stream closed).
    #[error("stream I/O: {0}")]
    Stream(String),
    /// The payload is not a valid bincode encoding of the expected type (unknown enum
    /// tag, bad UTF-8, size claims over the limit, ...).
    #[error("undecodable payload: {0}")]
    Decode(String),
    /// The payload decoded but left bytes unread.
    #[error("{extra} trailing bytes after the payload")]
    TrailingBytes {
        /// How many bytes were left.
        extra: usize,
    },
    /// Our own value could not be encoded (or encodes over the limit); nothing was sent.
    #[error("cannot encode: {0}")]
    Encode(String),
}

/// An RPC call failed. No retry is made; the caller decides.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// No connection could be made (refused handshake, unreachable, wrong peer
    /// certificate); nothing was sent.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The address called.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The peer's TLS refused every protocol version this build offered (ALPN): it runs
    /// another release of ballast. Nothing was sent.
    #[error("{addr} speaks none of this build's protocol versions (TLS refused the ALPN)")]
    NoCommonProtocol {
        /// The address called.
        addr: SocketAddr,
    },
    /// The whole call (connect, send, wait for the reply) exceeded the timeout; the
    /// request may or may not have been handled by the peer.
    #[error("RPC to {addr} timed out")]
    Timeout {
        /// The address called.
        addr: SocketAddr,
    },
    /// The fault hook blocks this address; nothing was sent.
    #[error("traffic to {addr} is blocked by the fault hook")]
    Blocked {
        /// The address called.
        addr: SocketAddr,
    },
    /// The request could not be encoded, or the reply not read or decoded; the request
    /// may have been handled by the peer.
    #[error("RPC frame: {0}")]
    Frame(#[from] FrameError),
    /// The peer refused the request (reset the stream) with this code, e.g. because it
    /// could not decode it; the request was not handled.
    #[error("peer refused the request with code {code}")]
    Refused {
        /// The peer's stream reset code (see `rpc::REFUSE_*`).
        code: u64,
    },
}

/// Starting or running the endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The UDP socket could not be bound; nothing is running.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS material is unusable; nothing is running.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The configured node id is not the one in our certificate; nothing is running.
    #[error("configured node id {configured:?} differs from the certificate's {certificate:?}")]
    IdentityMismatch {
        /// The id in the configuration.
        configured: String,
        /// The id in the certificate.
        certificate: String,
    },
    /// The certificate is an admin certificate, which may not run an endpoint.
    #[error("an admin certificate cannot run a gossip endpoint")]
    NotANode,
    /// The configuration is inconsistent; nothing is running.
    #[error("invalid endpoint configuration: {0}")]
    Config(String),
    /// chitchat could not be started; the QUIC endpoint was closed again.
    #[error("gossip failed to start: {0}")]
    Gossip(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}
