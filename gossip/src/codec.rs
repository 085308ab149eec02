//! Turning chitchat envelopes into bytes and back, using chitchat's own codec.
//!
//! chitchat 0.13 keeps `ChitchatEnvelope::serialize`/`deserialize` crate-private
//! (quickwit-oss/chitchat#207), so an out-of-tree transport cannot call them. Its public
//! `transport::UdpSocket`, however, encodes on `send` and decodes on `recv`. This codec
//! pairs one such socket with a raw UDP socket, both on 127.0.0.1, and lets the kernel
//! carry the bytes between them: encode = chitchat socket sends to the raw socket, which
//! reads the datagram; decode = the raw socket sends the bytes, the chitchat socket reads
//! the envelope. The wire format is therefore exactly chitchat's, and nothing of it is
//! copied here. When chitchat exposes the codec, this file is the only one to change.
//!
//! chitchat's socket silently skips undecodable datagrams, so every decode is followed by
//! a sentinel (an encoded `BadCluster` message): seeing the sentinel first means the
//! bytes were invalid. Only datagrams from the paired socket are accepted. Any timeout
//! or surprise poisons the codec, and a fresh socket pair is opened for the next use.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use chitchat::transport::{RecvOutcome, Socket, UdpSocket as ChitchatUdpSocket};
use chitchat::{ChitchatEnvelope, ChitchatMessage, ProtocolVersion};
use tokio::net::UdpSocket;

/// Largest chitchat message: chitchat sizes its messages for one UDP datagram.
pub const GOSSIP_MESSAGE_BYTES_MAX: usize = 65_507;
/// chitchat's magic number, the first two bytes (LE) of every message.
const MAGIC: u16 = 45_139;
/// chitchat's message-type code of `BadCluster`.
const TYPE_BAD_CLUSTER: u8 = 3;
/// Bound on each loopback hop (normally microseconds).
const HOP_TIMEOUT: Duration = Duration::from_secs(1);

/// Why bytes could not be turned into an envelope (or back).
#[derive(Debug, thiserror::Error)]
pub(crate) enum CodecError {
    /// The bytes are not a chitchat message; nothing was delivered.
    #[error("not a chitchat message")]
    Garbage,
    /// The message exceeds [`GOSSIP_MESSAGE_BYTES_MAX`]; nothing was delivered.
    #[error("message of {0} bytes exceeds the chitchat limit")]
    TooLarge(usize),
    /// The loopback sockets failed or timed out; the codec will be reopened.
    #[error("codec sockets: {0}")]
    Io(String),
}

/// One pair of loopback sockets.
struct Pair {
    chitchat: ChitchatUdpSocket,
    chitchat_addr: SocketAddr,
    raw: UdpSocket,
    raw_addr: SocketAddr,
    sentinel: Vec<u8>,
    buf: Vec<u8>,
}

/// The codec; reopens its socket pair after any failure.
#[derive(Default)]
pub(crate) struct EnvelopeCodec {
    pair: Option<Pair>,
}

fn io(e: impl std::fmt::Display) -> CodecError {
    CodecError::Io(e.to_string())
}

impl Pair {
    async fn open() -> Result<Self, CodecError> {
        let local: SocketAddr = (Ipv4Addr::LOCALHOST, 0).into();
        let chitchat = ChitchatUdpSocket::open(local).await.map_err(io)?;
        let chitchat_addr = chitchat.local_addr().map_err(io)?;
        let raw = UdpSocket::bind(local).await.map_err(io)?;
        raw.connect(chitchat_addr).await.map_err(io)?;
        let raw_addr = raw.local_addr().map_err(io)?;
        let mut pair = Self {
            chitchat,
            chitchat_addr,
            raw,
            raw_addr,
            sentinel: Vec::new(),
            buf: vec![0u8; GOSSIP_MESSAGE_BYTES_MAX + 1],
        };
        pair.sentinel = pair
            .encode(ChitchatEnvelope {
                version: ProtocolVersion::V0,
                message: ChitchatMessage::BadCluster,
            })
            .await?;
        Ok(pair)
    }

    async fn encode(&mut self, envelope: ChitchatEnvelope) -> Result<Vec<u8>, CodecError> {
        self.chitchat
            .send(self.raw_addr, envelope)
            .await
            .map_err(io)?;
        let n = tokio::time::timeout(HOP_TIMEOUT, self.raw.recv(&mut self.buf))
            .await
            .map_err(|_| io("encode timed out"))?
            .map_err(io)?;
        if n > GOSSIP_MESSAGE_BYTES_MAX {
            return Err(CodecError::TooLarge(n));
        }
        Ok(self.buf[..n].to_vec())
    }

    async fn recv_from_raw(&mut self) -> Result<ChitchatEnvelope, CodecError> {
        loop {
            let outcome: RecvOutcome = tokio::time::timeout(HOP_TIMEOUT, self.chitchat.recv())
                .await
                .map_err(|_| io("decode timed out"))?
                .map_err(io)?;
            if outcome.from_addr == self.raw_addr {
                return Ok(outcome.envelope);
            }
            tracing::warn!(from = %outcome.from_addr, codec = %self.chitchat_addr, "stray datagram on the gossip codec socket ignored");
        }
    }

    async fn decode(&mut self, bytes: &[u8]) -> Result<ChitchatEnvelope, CodecError> {
        if let Some(envelope) = bad_cluster_fast_path(bytes)? {
            return Ok(envelope);
        }
        self.raw.send(bytes).await.map_err(io)?;
        self.raw.send(&self.sentinel).await.map_err(io)?;
        let first = self.recv_from_raw().await?;
        if first.message == ChitchatMessage::BadCluster {
            return Err(CodecError::Garbage);
        }
        let sentinel = self.recv_from_raw().await?;
        if sentinel.message != ChitchatMessage::BadCluster {
            return Err(io("codec out of step"));
        }
        Ok(first)
    }
}

/// `BadCluster` messages are decoded here, because the decode path uses one as sentinel.
fn bad_cluster_fast_path(bytes: &[u8]) -> Result<Option<ChitchatEnvelope>, CodecError> {
    if bytes.len() > GOSSIP_MESSAGE_BYTES_MAX {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    let [m0, m1, version, kind, ..] = bytes else {
        return Err(CodecError::Garbage);
    };
    if u16::from_le_bytes([*m0, *m1]) != MAGIC || *kind != TYPE_BAD_CLUSTER {
        return Ok(None);
    }
    let version = ProtocolVersion::from_code(*version).ok_or(CodecError::Garbage)?;
    Ok(Some(ChitchatEnvelope {
        version,
        message: ChitchatMessage::BadCluster,
    }))
}

impl EnvelopeCodec {
    async fn pair(&mut self) -> Result<&mut Pair, CodecError> {
        if self.pair.is_none() {
            self.pair = Some(Pair::open().await?);
        }
        self.pair.as_mut().ok_or_else(|| io("codec unavailable"))
    }

    /// Encodes an envelope with chitchat's wire format.
    pub(crate) async fn encode(
        &mut self,
        envelope: ChitchatEnvelope,
    ) -> Result<Vec<u8>, CodecError> {
        let result = self.pair().await?.encode(envelope).await;
        if matches!(result, Err(CodecError::Io(_))) {
            self.pair = None;
        }
        result
    }

    /// Decodes bytes with chitchat's wire format.
    pub(crate) async fn decode(&mut self, bytes: &[u8]) -> Result<ChitchatEnvelope, CodecError> {
        let result = self.pair().await?.decode(bytes).await;
        if matches!(result, Err(CodecError::Io(_))) {
            self.pair = None;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syn() -> ChitchatEnvelope {
        // A SynAck/Syn needs a Digest, which only chitchat can build; BadCluster and
        // garbage are what a test can make. Real Syn/SynAck/Ack round trips are covered
        // by the cluster integration tests.
        ChitchatEnvelope {
            version: ProtocolVersion::V1,
            message: ChitchatMessage::BadCluster,
        }
    }

    #[tokio::test]
    async fn encodes_decodes_and_refuses_garbage() {
        let mut codec = EnvelopeCodec::default();
        let bytes = codec.encode(syn()).await.expect("encode");
        assert_eq!(codec.decode(&bytes).await.expect("decode"), syn());
        for garbage in [&b""[..], b"junk", b"\x53\xb0\x00\x00\xff\xff", &[0u8; 300]] {
            assert!(
                matches!(codec.decode(garbage).await, Err(CodecError::Garbage)),
                "{garbage:?}"
            );
        }
        let big = vec![0u8; GOSSIP_MESSAGE_BYTES_MAX + 1];
        assert!(matches!(
            codec.decode(&big).await,
            Err(CodecError::TooLarge(_))
        ));
        // Still in step after the refusals.
        assert_eq!(codec.decode(&bytes).await.expect("decode again"), syn());
    }
}
