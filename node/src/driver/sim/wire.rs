//! The sim driver's two line-JSON protocols, both versioned and size-limited:
//! - control (driver ↔ VM, over the VM's Unix socket in process mode): [`VmRequest`] →
//!   [`VmReply`], one request per line, one reply per line;
//! - migration (source VM → destination VM over loopback TCP): [`MigMsg`].
//!
//! Every line is `{"v":1,"msg":...}`; another version or an over-long line is an error.

use crate::driver::{DriverError, MigrationProgress, MigrationStatus, UsageSample, VmRunState};
use ballast_store::VmId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Protocol version of both protocols.
pub(crate) const WIRE_VERSION: u32 = 1;
/// Longest accepted line, bytes (newline included).
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// A request to one VM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum VmRequest {
    Info,
    Usage,
    ResumeIncoming,
    CancelOutgoing,
    FinishOutgoing,
    CancelIncoming,
    Stop,
    Migrate {
        target: String,
        duration_ms: u64,
        fail: bool,
    },
    MigrationStatus,
    /// The outgoing migration's status once it changes, or after `wait_ms` (bounded by
    /// the VM) if it does not: no polling on timers. Answered like `MigrationStatus`.
    WaitMigration {
        wait_ms: u64,
    },
    IncomingComplete,
}

/// What a VM says about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct VmStatus {
    pub(crate) vm: VmId,
    pub(crate) state: VmRunState,
    /// Where an incoming copy listens (`tcp:127.0.0.1:PORT`).
    pub(crate) target: Option<String>,
    /// The VM's OS process (process mode).
    pub(crate) pid: u32,
}

/// Why a request failed, as it travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ErrKind {
    NotFound,
    BadState,
    MigrationFailed,
    Timeout,
    Protocol,
    Io,
    InvalidSpec,
}

/// The answer to a [`VmRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub(crate) enum VmReply {
    Ok,
    Info {
        status: VmStatus,
    },
    Usage {
        sample: UsageSample,
    },
    Migration {
        status: MigrationStatus,
        progress: MigrationProgress,
        reason: Option<String>,
    },
    Bool {
        value: bool,
    },
    Err {
        kind: ErrKind,
        reason: String,
    },
}

impl VmReply {
    /// The reply carrying `e`.
    pub(crate) fn from_error(e: &DriverError) -> Self {
        let kind = match e {
            DriverError::NotFound(_) => ErrKind::NotFound,
            // Answered by the driver itself, never by a VM; carried as a bad state.
            DriverError::BadState { .. } | DriverError::SwitchedOver(_) => ErrKind::BadState,
            DriverError::MigrationFailed { .. } => ErrKind::MigrationFailed,
            DriverError::Timeout(_) | DriverError::Unavailable(_) => ErrKind::Timeout,
            DriverError::Hypervisor { .. }
            | DriverError::NoRoom(_)
            | DriverError::Unsupported { .. } => ErrKind::BadState,
            DriverError::Protocol(_) | DriverError::PluginDied { .. } => ErrKind::Protocol,
            DriverError::Io(_) => ErrKind::Io,
            DriverError::InvalidSpec(_) => ErrKind::InvalidSpec,
        };
        let reason = match e {
            DriverError::BadState { reason, .. } | DriverError::MigrationFailed { reason, .. } => {
                reason.clone()
            }
            other => other.to_string(),
        };
        Self::Err { kind, reason }
    }

    /// Whether this is the `NotFound` error (the VM is gone).
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(
            self,
            Self::Err {
                kind: ErrKind::NotFound,
                ..
            }
        )
    }

    /// Ok, or the error this reply carries; any other reply is a protocol error.
    pub(crate) fn into_unit(self, vm: &VmId) -> Result<(), DriverError> {
        match self {
            Self::Ok => Ok(()),
            other => Err(other.into_error(vm)),
        }
    }

    /// The error this reply stands for (a non-error reply where another was expected is
    /// a protocol error).
    pub(crate) fn into_error(self, vm: &VmId) -> DriverError {
        let Self::Err { kind, reason } = self else {
            return DriverError::Protocol(format!("unexpected reply {self:?}"));
        };
        let vm = vm.clone();
        match kind {
            ErrKind::NotFound => DriverError::NotFound(vm),
            ErrKind::BadState => DriverError::BadState { vm, reason },
            ErrKind::MigrationFailed => DriverError::MigrationFailed { vm, reason },
            ErrKind::Timeout => DriverError::Timeout(reason),
            ErrKind::Protocol => DriverError::Protocol(reason),
            ErrKind::Io => DriverError::Io(io::Error::other(reason)),
            ErrKind::InvalidSpec => DriverError::InvalidSpec(reason),
        }
    }
}

/// One message of the migration stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum MigMsg {
    /// Source → destination: which VM is coming, and its seed (the profile travels).
    Hello { vm: VmId, seed: u64 },
    /// Destination → source: send it.
    Ready,
    /// Destination → source: not here (wrong VM, copy already running, …).
    Refused { reason: String },
    /// Source → destination: some memory was transferred.
    Chunk { bytes: u64 },
    /// Source → destination: the migration is abandoned; stay incomplete.
    Abort,
    /// Source → destination: switchover; the source is paused after `run_ns` of guest
    /// run time.
    Complete { run_ns: u64 },
    /// Destination → source: the copy is complete (and paused).
    Ack,
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    v: u32,
    msg: T,
}

/// Writes one message as one line.
pub(crate) async fn write_msg<T: Serialize, W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &T,
) -> io::Result<()> {
    let mut line = serde_json::to_vec(&Envelope {
        v: WIRE_VERSION,
        msg,
    })?;
    line.push(b'\n');
    if line.len() > MAX_LINE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "message too long",
        ));
    }
    w.write_all(&line).await?;
    w.flush().await
}

/// Reads one message; `None` at a clean end of stream.
pub(crate) async fn read_msg<T: DeserializeOwned, R: AsyncBufRead + Unpin>(
    r: &mut R,
) -> io::Result<Option<T>> {
    let mut buf = Vec::new();
    let n = r.take(MAX_LINE as u64).read_until(b'\n', &mut buf).await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        let why = if n >= MAX_LINE {
            "line too long"
        } else {
            "truncated line"
        };
        return Err(io::Error::new(io::ErrorKind::InvalidData, why));
    }
    let env: Envelope<T> =
        serde_json::from_slice(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if env.v != WIRE_VERSION {
        let why = format!("unsupported protocol version {}", env.v);
        return Err(io::Error::new(io::ErrorKind::InvalidData, why));
    }
    Ok(Some(env.msg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    async fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(m: T) {
        let mut buf = Vec::new();
        write_msg(&mut buf, &m).await.unwrap();
        let mut r = BufReader::new(&buf[..]);
        assert_eq!(read_msg::<T, _>(&mut r).await.unwrap(), Some(m));
        assert_eq!(read_msg::<T, _>(&mut r).await.unwrap(), None);
    }

    #[tokio::test]
    async fn every_variant_round_trips() {
        let reqs = [
            VmRequest::Info,
            VmRequest::Usage,
            VmRequest::ResumeIncoming,
            VmRequest::CancelOutgoing,
            VmRequest::FinishOutgoing,
            VmRequest::CancelIncoming,
            VmRequest::Stop,
            VmRequest::Migrate {
                target: "tcp:127.0.0.1:1".into(),
                duration_ms: 5,
                fail: true,
            },
            VmRequest::MigrationStatus,
            VmRequest::WaitMigration { wait_ms: 10 },
            VmRequest::IncomingComplete,
        ];
        for r in reqs {
            round_trip(r).await;
        }
        let status = VmStatus {
            vm: VmId::from("v"),
            state: VmRunState::Paused,
            target: Some("t".into()),
            pid: 7,
        };
        let replies = [
            VmReply::Ok,
            VmReply::Info { status },
            VmReply::Usage {
                sample: UsageSample {
                    cpu_time_s: 1.5,
                    io_bytes: 2,
                    mem_bytes: 3,
                },
            },
            VmReply::Migration {
                status: MigrationStatus::Active,
                progress: MigrationProgress {
                    transferred_bytes: 1,
                    remaining_bytes: 2,
                },
                reason: None,
            },
            VmReply::Bool { value: true },
            VmReply::Err {
                kind: ErrKind::BadState,
                reason: "no".into(),
            },
        ];
        for r in replies {
            round_trip(r).await;
        }
        let migs = [
            MigMsg::Hello {
                vm: VmId::from("v"),
                seed: 3,
            },
            MigMsg::Ready,
            MigMsg::Refused { reason: "x".into() },
            MigMsg::Chunk { bytes: 9 },
            MigMsg::Abort,
            MigMsg::Complete { run_ns: 11 },
            MigMsg::Ack,
        ];
        for m in migs {
            round_trip(m).await;
        }
    }

    #[tokio::test]
    async fn bad_input_is_an_error_not_a_panic() {
        let cases: [&[u8]; 4] = [
            b"{\"v\":2,\"msg\":{\"op\":\"info\"}}\n",
            b"{\"v\":1,\"msg\":{\"op\":\"reboot\"}}\n",
            b"\xff\xfe garbage\n",
            b"{\"v\":1,\"msg\":{\"op\":\"info\"}}",
        ];
        for c in cases {
            let mut r = BufReader::new(c);
            assert!(read_msg::<VmRequest, _>(&mut r).await.is_err(), "{c:?}");
        }
        let long = vec![b'x'; MAX_LINE + 10];
        let mut r = BufReader::new(&long[..]);
        assert!(read_msg::<VmRequest, _>(&mut r).await.is_err());
    }

    #[test]
    fn errors_survive_the_trip() {
        let vm = VmId::from("v");
        let e = DriverError::BadState {
            vm: vm.clone(),
            reason: "paused".into(),
        };
        let back = VmReply::from_error(&e).into_error(&vm);
        assert!(matches!(back, DriverError::BadState { reason, .. } if reason == "paused"));
        assert!(matches!(
            VmReply::Ok.into_error(&vm),
            DriverError::Protocol(_)
        ));
    }
}
