//! RPC framing: `[version: u8 = 1][length: u64 LE][bincode 2 payload]`.
//!
//! The length is checked against the configured limit before anything is allocated;
//! the payload is decoded with a bincode size limit and must be consumed exactly.
//! Decoding is a pure function of bytes ([`decode_frame`]) so it can be fuzzed.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::FrameError;

/// The framing version written first in every frame.
pub const FRAME_VERSION: u8 = 1;
/// Bytes before the payload: version (1) + length (8).
pub const FRAME_HEADER_LEN: usize = 9;
/// Absolute cap on any frame payload, whatever the configuration says (64 MiB). Also the
/// bincode limit, so no size claim inside a payload can make the decoder allocate more.
pub const FRAME_PAYLOAD_CAP: usize = 64 * 1024 * 1024;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<FRAME_PAYLOAD_CAP>()
}

/// Encodes `value` as one frame, refusing payloads over `max_payload`.
pub fn encode_frame<T: Serialize + ?Sized>(
    value: &T,
    max_payload: usize,
) -> Result<Vec<u8>, FrameError> {
    let payload = bincode::serde::encode_to_vec(value, bincode_config())
        .map_err(|e| FrameError::Encode(e.to_string()))?;
    if payload.len() > max_payload.min(FRAME_PAYLOAD_CAP) {
        return Err(FrameError::Encode(format!(
            "payload of {} bytes exceeds the limit of {max_payload}",
            payload.len()
        )));
    }
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    out.push(FRAME_VERSION);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Checks a frame header and returns the payload length it announces.
pub fn parse_header(
    header: &[u8; FRAME_HEADER_LEN],
    max_payload: usize,
) -> Result<usize, FrameError> {
    if header[0] != FRAME_VERSION {
        return Err(FrameError::UnknownVersion(header[0]));
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&header[1..]);
    let len = u64::from_le_bytes(len_bytes);
    let max = max_payload.min(FRAME_PAYLOAD_CAP);
    match usize::try_from(len) {
        Ok(n) if n <= max => Ok(n),
        _ => Err(FrameError::TooLarge { len, max }),
    }
}

/// Decodes a payload (the bytes after the header) into `T`; every byte must be used.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let (value, used) = bincode::serde::decode_from_slice::<T, _>(payload, bincode_config())
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    if used != payload.len() {
        return Err(FrameError::TrailingBytes {
            extra: payload.len() - used,
        });
    }
    Ok(value)
}

/// Decodes one whole frame held in memory (header + payload, nothing after it).
pub fn decode_frame<T: DeserializeOwned>(
    bytes: &[u8],
    max_payload: usize,
) -> Result<T, FrameError> {
    let header: &[u8; FRAME_HEADER_LEN] = bytes
        .get(..FRAME_HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(FrameError::Truncated)?;
    let len = parse_header(header, max_payload)?;
    let rest = &bytes[FRAME_HEADER_LEN..];
    if rest.len() < len {
        return Err(FrameError::Truncated);
    }
    if rest.len() > len {
        return Err(FrameError::TrailingBytes {
            extra: rest.len() - len,
        });
    }
    decode_payload(rest)
}

/// Reads one frame from a QUIC stream (header, then exactly the announced payload).
pub(crate) async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    max_payload: usize,
) -> Result<T, FrameError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    recv.read_exact(&mut header).await.map_err(read_err)?;
    let len = parse_header(&header, max_payload)?;
    let mut payload = vec![0u8; len];
    recv.read_exact(&mut payload).await.map_err(read_err)?;
    decode_payload(&payload)
}

fn read_err(e: quinn::ReadExactError) -> FrameError {
    match e {
        quinn::ReadExactError::FinishedEarly(_) => FrameError::Truncated,
        quinn::ReadExactError::ReadError(quinn::ReadError::Reset(code)) => {
            FrameError::Reset(code.into_inner())
        }
        quinn::ReadExactError::ReadError(e) => FrameError::Stream(e.to_string()),
    }
}

/// Writes one frame and finishes the stream.
pub(crate) async fn write_frame(
    send: &mut quinn::SendStream,
    frame: &[u8],
) -> Result<(), FrameError> {
    send.write_all(frame).await.map_err(|e| match e {
        quinn::WriteError::Stopped(code) => FrameError::Reset(code.into_inner()),
        e => FrameError::Stream(e.to_string()),
    })?;
    send.finish().map_err(|e| FrameError::Stream(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Msg {
        Ping(u64),
        Text(String),
        Blob(Vec<u8>),
    }

    #[test]
    fn every_variant_round_trips() {
        for m in [
            Msg::Ping(7),
            Msg::Text("hé".into()),
            Msg::Blob(vec![1, 2, 3]),
        ] {
            let f = encode_frame(&m, 1024).expect("encode");
            assert_eq!(decode_frame::<Msg>(&f, 1024).expect("decode"), m);
        }
    }

    #[test]
    fn max_length_prefix_is_refused_before_allocation() {
        let mut f = vec![FRAME_VERSION];
        f.extend_from_slice(&u64::MAX.to_le_bytes());
        let err = decode_frame::<Msg>(&f, 4 << 20).expect_err("must refuse");
        assert!(
            matches!(err, FrameError::TooLarge { len: u64::MAX, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn truncated_unknown_tag_and_trailing_are_refused() {
        let f = encode_frame(&Msg::Text("hello".into()), 1024).expect("encode");
        assert_eq!(
            decode_frame::<Msg>(&f[..f.len() - 1], 1024),
            Err(FrameError::Truncated)
        );
        assert_eq!(
            decode_frame::<Msg>(&f[..4], 1024),
            Err(FrameError::Truncated)
        );
        let mut tag = vec![FRAME_VERSION];
        tag.extend_from_slice(&1u64.to_le_bytes());
        tag.push(99); // variant index 99 does not exist
        assert!(matches!(
            decode_frame::<Msg>(&tag, 1024),
            Err(FrameError::Decode(_))
        ));
        let mut long = f.clone();
        long.push(0);
        assert!(matches!(
            decode_frame::<Msg>(&long, 1024),
            Err(FrameError::TrailingBytes { .. })
        ));
        let mut v = f;
        v[0] = 9;
        assert_eq!(
            decode_frame::<Msg>(&v, 1024),
            Err(FrameError::UnknownVersion(9))
        );
    }

    #[test]
    fn oversized_values_are_not_encoded() {
        let big = Msg::Blob(vec![0; 2000]);
        assert!(matches!(
            encode_frame(&big, 1000),
            Err(FrameError::Encode(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frame::<Msg>(&bytes, 4096);
        }

        #[test]
        fn mutated_frames_never_panic(
            s in ".{0,64}",
            idx in 0usize..80,
            byte in any::<u8>(),
        ) {
            let mut f = encode_frame(&Msg::Text(s), 4096).expect("encode");
            let i = idx % f.len();
            f[i] = byte;
            let _ = decode_frame::<Msg>(&f, 4096);
        }
    }
}
