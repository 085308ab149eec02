//! A QMP client for one VM: the `qapi` crate's async transport (greeting, capability
//! negotiation, command ids, reply routing) with a timeout on every step, and our own
//! small command types.
//!
//! Why our own command types: `qapi-qmp`'s generated types follow one QEMU schema (≈9.0)
//! and mark newer reply fields as required (e.g. `MigrationStats::downtime-bytes`, added in
//! 8.1), so decoding `query-migrate` fails on older QEMUs such as Debian 12's 7.2. The
//! types below hold only the fields the driver reads, all optional, so any QEMU ≥ 4.0
//! decodes; `qapi::Command` is implemented for them, which is all the transport needs.
//!
//! Events: the reader task counts the events QEMU sends (`STOP`, `RESUME`, `MIGRATION`
//! when the `events` capability is on, ...) in a watch channel, so a caller waiting
//! for a state change wakes when one happens instead of at its next poll.

use futures::StreamExt;
use qapi::futures::{QapiService, QmpStreamTokio};
use qapi::ExecuteError;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::Path;
use std::time::Duration;
use tokio::io::WriteHalf;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// A QMP call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum QmpError {
    /// No reply in time; the connection is dropped (a late reply would desynchronize it).
    #[error("QMP {0} timed out")]
    Timeout(&'static str),
    /// The socket failed or closed (QEMU quit or crashed).
    #[error("QMP {command}: {source}")]
    Io {
        /// The command (or `connect`).
        command: &'static str,
        /// What failed.
        source: io::Error,
    },
    /// QEMU refused the command.
    #[error("QMP {command} refused: {desc}")]
    Refused {
        /// The command.
        command: &'static str,
        /// QEMU's error description.
        desc: String,
    },
}

impl QmpError {
    /// Whether the connection is unusable after this error.
    pub(crate) fn breaks_connection(&self) -> bool {
        !matches!(self, QmpError::Refused { .. })
    }
}

type Writer = QmpStreamTokio<WriteHalf<UnixStream>>;

/// One negotiated QMP connection. Commands may be issued from several tasks at once.
pub(crate) struct Qmp {
    service: QapiService<Writer>,
    /// Routes replies to waiting commands; ends when the socket closes.
    reader: JoinHandle<()>,
    /// How many events QEMU has sent on this connection.
    events: watch::Receiver<u64>,
    limit: Duration,
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Qmp {
    /// Connects to the socket at `path` and negotiates capabilities, within `limit`; every
    /// later command has the same limit.
    pub(crate) async fn connect(path: &Path, limit: Duration) -> Result<Self, QmpError> {
        let open = async {
            let negotiation = QmpStreamTokio::open_uds(path).await?;
            negotiation.negotiate().await
        };
        let stream = match timeout(limit, open).await {
            Err(_) => return Err(QmpError::Timeout("connect")),
            Ok(Err(source)) => {
                return Err(QmpError::Io {
                    command: "connect",
                    source,
                })
            }
            Ok(Ok(s)) => s,
        };
        let (service, mut events) = stream.into_parts();
        let (count, seen) = watch::channel(0u64);
        // `release` ties the reader's life to the service: dropping the service ends it.
        let released = events.release().is_ok();
        let reader = tokio::spawn(async move {
            if !released {
                return;
            }
            // Polling the stream also routes command replies; it yields only events.
            while let Some(item) = events.next().await {
                match item {
                    Ok(_) => count.send_modify(|n| *n = n.wrapping_add(1)),
                    Err(e) => {
                        tracing::debug!(error = %e, "QMP connection closed");
                        break;
                    }
                }
            }
        });
        Ok(Self {
            service,
            reader,
            events: seen,
            limit,
        })
    }

    /// Whether the socket has closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.reader.is_finished()
    }

    /// A receiver that changes whenever QEMU sends an event on this connection.
    pub(crate) fn events(&self) -> watch::Receiver<u64> {
        self.events.clone()
    }

    /// Runs one command.
    pub(crate) async fn run<C>(&self, cmd: C) -> Result<C::Ok, QmpError>
    where
        C: qapi::qmp::QmpCommand + 'static,
    {
        let name = C::NAME;
        match timeout(self.limit, self.service.execute(cmd)).await {
            Err(_) => Err(QmpError::Timeout(name)),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(ExecuteError::Io(source))) => Err(QmpError::Io {
                command: name,
                source,
            }),
            Ok(Err(ExecuteError::Qapi(e))) => Err(QmpError::Refused {
                command: name,
                desc: e.desc,
            }),
        }
    }
}

macro_rules! qmp_command {
    ($ty:ident, $name:literal, $ok:ty) => {
        impl qapi::Command for $ty {
            type Ok = $ok;
            const NAME: &'static str = $name;
            const ALLOW_OOB: bool = false;
        }
        impl qapi::qmp::QmpCommand for $ty {}
    };
}
pub(crate) use qmp_command;

/// `query-status`.
#[derive(Debug, Serialize)]
pub(crate) struct QueryStatus {}
qmp_command!(QueryStatus, "query-status", StatusInfo);

/// Reply of `query-status`.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct StatusInfo {
    /// The run state (`running`, `paused`, `inmigrate`, `postmigrate`, ...).
    pub(crate) status: String,
}

/// `query-migrate`.
#[derive(Debug, Serialize)]
pub(crate) struct QueryMigrate {}
qmp_command!(QueryMigrate, "query-migrate", MigrationInfo);

/// Reply of `query-migrate` (the fields we read).
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct MigrationInfo {
    /// `none`, `setup`, `active`, `completed`, `failed`, `cancelled`, ...; absent when no
    /// migration ever ran.
    #[serde(default)]
    pub(crate) status: Option<String>,
    /// RAM transfer counters while active or completed.
    #[serde(default)]
    pub(crate) ram: Option<RamStats>,
    /// Why a migration failed.
    #[serde(default, rename = "error-desc")]
    pub(crate) error_desc: Option<String>,
    /// Milliseconds from start to completion (or so far).
    #[serde(default, rename = "total-time")]
    pub(crate) total_time: Option<u64>,
    /// Milliseconds the guest was stopped at the switchover.
    #[serde(default)]
    pub(crate) downtime: Option<u64>,
}

/// RAM counters of `query-migrate`.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub(crate) struct RamStats {
    /// Bytes sent so far.
    #[serde(default)]
    pub(crate) transferred: u64,
    /// Bytes left (estimate).
    #[serde(default)]
    pub(crate) remaining: u64,
}

/// `cont`.
#[derive(Debug, Serialize)]
pub(crate) struct Cont {}
qmp_command!(Cont, "cont", qapi::Empty);

/// `quit`.
#[derive(Debug, Serialize)]
pub(crate) struct Quit {}
qmp_command!(Quit, "quit", qapi::Empty);

/// `migrate_cancel`.
#[derive(Debug, Serialize)]
pub(crate) struct MigrateCancel {}
qmp_command!(MigrateCancel, "migrate_cancel", qapi::Empty);

/// `migrate-continue`: lets a migration paused in `state` (`pre-switchover`) go on.
#[derive(Debug, Serialize)]
pub(crate) struct MigrateContinue {
    /// The state the migration is paused in.
    pub(crate) state: &'static str,
}
qmp_command!(MigrateContinue, "migrate-continue", qapi::Empty);

/// `migrate` to `uri`.
#[derive(Debug, Serialize)]
pub(crate) struct Migrate {
    /// Where to (`tcp:HOST:PORT`).
    pub(crate) uri: String,
}
qmp_command!(Migrate, "migrate", qapi::Empty);

/// `migrate-incoming` on `uri` (for a QEMU started with `-incoming defer`).
#[derive(Debug, Serialize)]
pub(crate) struct MigrateIncoming {
    /// Where to listen (`tcp:HOST:PORT`).
    pub(crate) uri: String,
}
qmp_command!(MigrateIncoming, "migrate-incoming", qapi::Empty);

/// `migrate-set-capabilities`.
#[derive(Debug, Serialize)]
pub(crate) struct MigrateSetCapabilities {
    /// The capabilities to set.
    pub(crate) capabilities: Vec<CapabilityState>,
}
qmp_command!(
    MigrateSetCapabilities,
    "migrate-set-capabilities",
    qapi::Empty
);

/// One migration capability and whether it is on.
#[derive(Debug, Serialize)]
pub(crate) struct CapabilityState {
    /// The capability's QMP name.
    pub(crate) capability: &'static str,
    /// On or off.
    pub(crate) state: bool,
}

/// `migrate-set-parameters` (the ones the driver sets).
#[derive(Debug, Serialize)]
pub(crate) struct MigrateSetParameters {
    /// Maximum downtime in milliseconds.
    #[serde(rename = "downtime-limit", skip_serializing_if = "Option::is_none")]
    pub(crate) downtime_limit: Option<u64>,
    /// Bandwidth cap in bytes per second.
    #[serde(rename = "max-bandwidth", skip_serializing_if = "Option::is_none")]
    pub(crate) max_bandwidth: Option<u64>,
}
qmp_command!(MigrateSetParameters, "migrate-set-parameters", qapi::Empty);
