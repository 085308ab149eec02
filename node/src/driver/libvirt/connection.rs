//! The connection to this host's libvirtd: opened lazily, shared by every call (libvirt
//! connections are thread-safe), dropped and reopened when libvirtd went away (a restart).
//! Every call runs on tokio's blocking pool, bounded by a timeout, so no libvirt call ever
//! blocks the async runtime; a call that outlives its bound keeps its blocking thread
//! until libvirt returns, but its caller has its answer (`Timeout`).

use crate::driver::DriverError;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use virt::connect::Connect;
use virt::error::ErrorNumber;

/// What went wrong with one libvirt call.
#[derive(Debug)]
pub(super) enum CallError {
    /// libvirtd could not be reached (down, restarting, socket gone, auth refused).
    Unavailable(String),
    /// libvirt answered with an error.
    Libvirt(virt::error::Error),
    /// The call did not return within its bound.
    Timeout,
}

impl CallError {
    /// Whether libvirt said the domain does not exist.
    pub(super) fn is_no_domain(&self) -> bool {
        matches!(self, Self::Libvirt(e) if is_no_domain(e))
    }

    /// The driver's error for operation `op` (on `vm` when it is about one).
    pub(super) fn into_driver(self, op: &'static str) -> DriverError {
        match self {
            Self::Unavailable(why) => DriverError::Unavailable(format!("libvirt {op}: {why}")),
            Self::Timeout => DriverError::Timeout(format!("libvirt {op} did not return in time")),
            Self::Libvirt(e) => DriverError::Hypervisor {
                op,
                reason: e.message().to_owned(),
            },
        }
    }
}

/// Whether `e` is libvirt's "no such domain".
pub(super) fn is_no_domain(e: &virt::error::Error) -> bool {
    matches!(e.code(), virt::enumutil::Enum::Known(ErrorNumber::NoDomain))
}

/// Whether `e` says the connection itself is broken (the call may be retried on a new one).
fn breaks_connection(e: &virt::error::Error) -> bool {
    use virt::enumutil::Enum::Known;
    matches!(
        e.code(),
        Known(ErrorNumber::NoConnect | ErrorNumber::SystemError | ErrorNumber::Rpc)
    ) || e.message().contains("client socket is closed")
        || e.message().contains("End of file while reading data")
}

/// One host's libvirtd.
#[derive(Clone)]
pub(super) struct Libvirtd {
    uri: String,
    timeout: Duration,
    conn: Arc<Mutex<Option<Connect>>>,
}

impl std::fmt::Debug for Libvirtd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Libvirtd").field("uri", &self.uri).finish()
    }
}

impl Libvirtd {
    /// A handle on the libvirtd at `uri`; nothing is opened yet.
    pub(super) fn new(uri: String, timeout: Duration) -> Self {
        Self {
            uri,
            timeout,
            conn: Arc::new(Mutex::new(None)),
        }
    }

    /// Runs `f` with a live connection on the blocking pool, bounded by the call timeout.
    /// A failure that broke the connection drops it and runs `f` once more on a fresh one
    /// (the calls made this way are idempotent at the driver's level).
    pub(super) async fn call<T, F>(&self, f: F) -> Result<T, CallError>
    where
        T: Send + 'static,
        F: Fn(&Connect) -> Result<T, virt::error::Error> + Send + 'static,
    {
        self.call_within(self.timeout, true, f).await
    }

    /// Like [`Self::call`] with its own bound and no retry (migrations).
    pub(super) async fn call_once_within<T, F>(&self, bound: Duration, f: F) -> Result<T, CallError>
    where
        T: Send + 'static,
        F: Fn(&Connect) -> Result<T, virt::error::Error> + Send + 'static,
    {
        self.call_within(bound, false, f).await
    }

    async fn call_within<T, F>(&self, bound: Duration, retry: bool, f: F) -> Result<T, CallError>
    where
        T: Send + 'static,
        F: Fn(&Connect) -> Result<T, virt::error::Error> + Send + 'static,
    {
        let this = self.clone();
        let task = tokio::task::spawn_blocking(move || {
            let attempts = if retry { 2 } else { 1 };
            let mut last = CallError::Timeout;
            for _ in 0..attempts {
                let conn = this.connection()?;
                match f(&conn) {
                    Ok(v) => return Ok(v),
                    Err(e) if breaks_connection(&e) || !conn.is_alive().unwrap_or(false) => {
                        tracing::info!(uri = %this.uri, reason = %e.message(), "libvirt connection lost; reconnecting");
                        this.forget(&conn);
                        last = CallError::Unavailable(e.message().to_owned());
                    }
                    Err(e) => return Err(CallError::Libvirt(e)),
                }
            }
            Err(last)
        });
        match tokio::time::timeout(bound, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(join)) => Err(CallError::Unavailable(format!(
                "libvirt call panicked: {join}"
            ))),
            Err(_) => Err(CallError::Timeout),
        }
    }

    /// The cached connection if it is alive, else a new one. Runs on a blocking thread.
    fn connection(&self) -> Result<Connect, CallError> {
        let cached = self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(c) = cached {
            if c.is_alive().unwrap_or(false) {
                return Ok(c);
            }
            self.forget(&c);
        }
        let c = Connect::open(Some(&self.uri))
            .map_err(|e| CallError::Unavailable(e.message().to_owned()))?;
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
        Ok(c)
    }

    /// Drops the cached connection if it is still `dead`.
    fn forget(&self, dead: &Connect) {
        let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let same = slot
            .as_ref()
            .is_some_and(|c| connect_ptr(c) == connect_ptr(dead));
        if same {
            *slot = None;
        }
    }
}

/// The identity of a connection (its libvirt handle's address).
fn connect_ptr(c: &Connect) -> usize {
    super::ffi::connect_addr(c)
}
