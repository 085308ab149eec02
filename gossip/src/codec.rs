//! Turning chitchat envelopes into bytes and back with chitchat's own wire format.
//!
//! chitchat 0.13 keeps `ChitchatEnvelope::serialize`/`deserialize` crate-private; the
//! in-tree copy of chitchat (`gossip/chitchat/`, README there) makes them public, so
//! this codec is two plain function calls: no socket, no task, no lock. The only checks
//! added here are the size limit, before any byte is parsed, and that the whole input
//! was consumed.

use chitchat::ChitchatEnvelope;

/// Largest chitchat message: chitchat sizes its messages for one UDP datagram.
pub const GOSSIP_MESSAGE_BYTES_MAX: usize = 65_507;

/// Why bytes could not be turned into an envelope (or back).
#[derive(Debug, thiserror::Error)]
pub(crate) enum CodecError {
    /// The bytes are not a chitchat message; nothing was delivered.
    #[error("not a chitchat message: {0}")]
    Garbage(String),
    /// The message exceeds [`GOSSIP_MESSAGE_BYTES_MAX`]; nothing was delivered.
    #[error("message of {0} bytes exceeds the chitchat limit")]
    TooLarge(usize),
}

/// Encodes an envelope with chitchat's wire format.
pub(crate) fn encode(envelope: &ChitchatEnvelope) -> Result<Vec<u8>, CodecError> {
    let bytes = envelope.serialize_to_vec();
    if bytes.len() > GOSSIP_MESSAGE_BYTES_MAX {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Decodes bytes with chitchat's wire format; anything left over is an error.
pub(crate) fn decode(bytes: &[u8]) -> Result<ChitchatEnvelope, CodecError> {
    if bytes.len() > GOSSIP_MESSAGE_BYTES_MAX {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    let mut rest = bytes;
    let envelope = ChitchatEnvelope::deserialize(&mut rest)
        .map_err(|e| CodecError::Garbage(format!("{e:#}")))?;
    if !rest.is_empty() {
        return Err(CodecError::Garbage(format!(
            "{} bytes after the message",
            rest.len()
        )));
    }
    Ok(envelope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chitchat::{ChitchatMessage, ProtocolVersion};
    use proptest::prelude::*;

    fn bad_cluster() -> ChitchatEnvelope {
        // Syn/SynAck/Ack need a Digest or Delta, which only chitchat builds; their round
        // trips are covered by the cluster integration tests.
        ChitchatEnvelope {
            version: ProtocolVersion::V1,
            message: ChitchatMessage::BadCluster,
        }
    }

    #[test]
    fn encodes_decodes_and_refuses_garbage() {
        let bytes = encode(&bad_cluster()).expect("encode");
        assert_eq!(decode(&bytes).expect("decode"), bad_cluster());
        for garbage in [&b""[..], b"junk", b"\x53\xb0\x00\x00\xff\xff", &[0u8; 300]] {
            assert!(
                matches!(decode(garbage), Err(CodecError::Garbage(_))),
                "{garbage:?}"
            );
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(decode(&trailing), Err(CodecError::Garbage(_))));
        let big = vec![0u8; GOSSIP_MESSAGE_BYTES_MAX + 1];
        assert!(matches!(decode(&big), Err(CodecError::TooLarge(_))));
    }

    proptest! {
        /// Whatever bytes arrive, decoding answers (never panics), and what it accepts
        /// encodes back to the same bytes.
        #[test]
        fn any_bytes_decode_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(envelope) = decode(&bytes) {
                prop_assert_eq!(encode(&envelope).expect("encode"), bytes);
            }
        }
    }
}
