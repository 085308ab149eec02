//! One running plugin process: spawns it, writes request lines to its stdin, routes
//! reply lines from its stdout to the waiting calls, and logs its stderr.
//!
//! A plugin that prints a line that is not a valid reply, a reply for a request nobody
//! sent, or a line longer than the limit, or that closes its stdout or exits, is
//! **dead**: it is killed, every waiting call fails with the reason, and the driver
//! starts a new one on its next call. A call that gets no reply in time kills it too
//! (it counts as hung).

use super::config::ExecConfig;
use super::wire::{self, Frame, RemoteError, Request};
use crate::driver::MigrationProgress;
use serde_json::Value;
use std::collections::{HashMap, HashSet, VecDeque};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Most abandoned request ids remembered (their late replies are ignored, not fatal).
const ABANDONED_MAX: usize = 1024;
/// Longest stderr line logged, in bytes.
const STDERR_LINE_MAX: usize = 4096;
/// Progress reports buffered per call; more are dropped (they are advisory).
pub(crate) const PROGRESS_QUEUE: usize = 16;

/// Why a call failed.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The plugin answered with an error object.
    Remote(RemoteError),
    /// The plugin is dead (exited, printed garbage, was killed); what it did, said of it
    /// (`exited (exit status: 3)`).
    Dead(String),
    /// No reply within the limit (given); the plugin was killed.
    Timeout(Duration),
    /// The request could not be encoded or is too long.
    Request(String),
}

type Reply = Result<Value, CallError>;

/// A call waiting for its reply.
struct Waiter {
    done: oneshot::Sender<Reply>,
    progress: Option<mpsc::Sender<MigrationProgress>>,
}

#[derive(Default)]
struct Table {
    pending: HashMap<u64, Waiter>,
    /// Ids of calls whose caller went away; a late reply to one is dropped.
    abandoned: HashSet<u64>,
    abandoned_order: VecDeque<u64>,
    /// Set once the plugin is dead: why.
    dead: Option<String>,
}

/// State shared with the reader tasks. Std mutexes: never held across `.await`.
struct Shared {
    table: Mutex<Table>,
    child: Mutex<Child>,
}

impl Shared {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the plugin dead (first reason wins), fails every waiting call, kills it.
    fn kill(&self, reason: String) {
        self.end(reason, true);
    }

    /// [`Self::kill`]; `failed` says whether the plugin failed (logged as a warning) or
    /// the driver shut it down (logged at debug level).
    fn end(&self, reason: String, failed: bool) {
        let waiters: Vec<Waiter> = {
            let mut t = self.table();
            if t.dead.is_none() {
                if failed {
                    tracing::warn!(reason = %reason, "exec plugin is dead");
                } else {
                    tracing::debug!(reason = %reason, "exec plugin shut down");
                }
                t.dead = Some(reason.clone());
            }
            t.pending.drain().map(|(_, w)| w).collect()
        };
        let why = self.table().dead.clone().unwrap_or(reason);
        for w in waiters {
            let _ = w.done.send(Err(CallError::Dead(why.clone())));
        }
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let _ = child.start_kill();
    }

    fn exit_status(&self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        child.try_wait().ok().flatten()
    }
}

/// A running plugin.
pub(crate) struct Plugin {
    /// Held while one request line is written; a tokio mutex because writing awaits.
    stdin: tokio::sync::Mutex<ChildStdin>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    in_flight: Semaphore,
    max_line: usize,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Plugin {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.shared.end("was shut down by the driver".into(), false);
    }
}

/// Removes a call's waiter when the call ends early (timeout, cancellation).
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let mut t = self.shared.table();
        if t.pending.remove(&self.id).is_some() {
            t.abandoned.insert(self.id);
            t.abandoned_order.push_back(self.id);
            if t.abandoned_order.len() > ABANDONED_MAX {
                if let Some(old) = t.abandoned_order.pop_front() {
                    t.abandoned.remove(&old);
                }
            }
        }
    }
}

impl Plugin {
    /// Starts the plugin process of `cfg`.
    pub(crate) fn spawn(cfg: &ExecConfig) -> std::io::Result<Self> {
        let (program, args) = cfg.command.split_first().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "exec driver: empty command",
            )
        })?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .envs(&cfg.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group: a Ctrl-C meant for the agent does not kill it.
            .process_group(0);
        if let Some(d) = &cfg.working_dir {
            cmd.current_dir(d);
        }
        let mut child = cmd.spawn().map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot run exec plugin {program}: {e}"))
        })?;
        let pid = child.id();
        let missing = || std::io::Error::other("plugin pipes missing");
        let stdin = child.stdin.take().ok_or_else(missing)?;
        let stdout = child.stdout.take().ok_or_else(missing)?;
        let stderr = child.stderr.take().ok_or_else(missing)?;
        let shared = Arc::new(Shared {
            table: Mutex::new(Table::default()),
            child: Mutex::new(child),
        });
        let max_line = cfg.max_line_bytes.max(64);
        let tasks = vec![
            tokio::spawn(read_replies(shared.clone(), stdout, max_line)),
            tokio::spawn(log_stderr(stderr, pid)),
        ];
        tracing::info!(pid, command = ?cfg.command, "exec plugin started");
        Ok(Self {
            stdin: tokio::sync::Mutex::new(stdin),
            shared,
            next_id: AtomicU64::new(1),
            in_flight: Semaphore::new(cfg.max_in_flight.max(1)),
            max_line,
            tasks,
        })
    }

    /// Why the plugin is dead, if it is.
    pub(crate) fn dead(&self) -> Option<String> {
        self.shared.table().dead.clone()
    }

    /// Kills the plugin with `reason`.
    pub(crate) fn kill(&self, reason: String) {
        self.shared.kill(reason);
    }

    /// Sends `method(params)` and waits at most `limit` for its reply; progress reports
    /// go to `progress` when given.
    pub(crate) async fn call(
        &self,
        method: &str,
        params: &Value,
        limit: Duration,
        progress: Option<mpsc::Sender<MigrationProgress>>,
    ) -> Reply {
        let run = async {
            let _permit = self
                .in_flight
                .acquire()
                .await
                .map_err(|_| CallError::Dead("was shut down by the driver".into()))?;
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let mut line = serde_json::to_vec(&Request { id, method, params })
                .map_err(|e| CallError::Request(e.to_string()))?;
            if line.len() > self.max_line {
                return Err(CallError::Request(format!(
                    "request of {} bytes exceeds max_line_bytes",
                    line.len()
                )));
            }
            line.push(b'\n');
            let (tx, rx) = oneshot::channel();
            {
                let mut t = self.shared.table();
                if let Some(why) = &t.dead {
                    return Err(CallError::Dead(why.clone()));
                }
                t.pending.insert(id, Waiter { done: tx, progress });
            }
            let _guard = PendingGuard {
                shared: &self.shared,
                id,
            };
            self.write(&line).await?;
            rx.await
                .unwrap_or_else(|_| Err(CallError::Dead(self.dead().unwrap_or_default())))
        };
        match timeout(limit, run).await {
            Ok(r) => r,
            Err(_) => {
                self.kill(format!(
                    "did not answer {method} within {} ms",
                    limit.as_millis()
                ));
                Err(CallError::Timeout(limit))
            }
        }
    }

    async fn write(&self, line: &[u8]) -> Result<(), CallError> {
        let mut stdin = self.stdin.lock().await;
        let r = async {
            stdin.write_all(line).await?;
            stdin.flush().await
        }
        .await;
        r.map_err(|e| {
            let why = format!("could not be written to: {e}");
            self.kill(why.clone());
            CallError::Dead(self.dead().unwrap_or(why))
        })
    }
}

/// Why a line could not be read.
enum LineError {
    /// Longer than the limit; the first `max + 1` bytes were consumed.
    TooLong(String),
    /// The pipe failed.
    Io(String),
}

impl LineError {
    fn into_reason(self) -> String {
        match self {
            LineError::TooLong(s) | LineError::Io(s) => s,
        }
    }
}

/// Reads one line of at most `max` bytes; `Ok(None)` at end of stream.
async fn read_line<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    max: usize,
) -> Result<Option<Vec<u8>>, LineError> {
    let mut buf = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let n = (&mut *r)
        .take(limit)
        .read_until(b'\n', &mut buf)
        .await
        .map_err(|e| LineError::Io(format!("could not be read from: {e}")))?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() > max {
        return Err(LineError::TooLong(format!(
            "printed a line longer than {max} bytes"
        )));
    }
    Ok(Some(buf))
}

/// Routes reply lines until the plugin dies.
async fn read_replies<R: AsyncRead + Unpin>(shared: Arc<Shared>, stdout: R, max: usize) {
    let mut r = BufReader::new(stdout);
    let reason = loop {
        let line = match read_line(&mut r, max).await {
            Ok(Some(l)) => l,
            Ok(None) => break exit_reason(&shared).await,
            Err(e) => break e.into_reason(),
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let frame = match wire::decode(&line) {
            Ok(f) => f,
            Err(e) => break e,
        };
        if let Err(e) = route(&shared, frame) {
            break e;
        }
    };
    shared.kill(reason);
}

/// Delivers one frame to its waiting call.
fn route(shared: &Shared, frame: Frame) -> Result<(), String> {
    let mut t = shared.table();
    let id = match &frame {
        Frame::Result(id, _) | Frame::Error(id, _) | Frame::Progress(id, _) => *id,
    };
    if !t.pending.contains_key(&id) {
        return if t.abandoned.contains(&id) {
            if !matches!(frame, Frame::Progress(..)) {
                t.abandoned.remove(&id);
            }
            Ok(())
        } else {
            Err(format!("replied to request {id}, which was never sent"))
        };
    }
    match frame {
        Frame::Progress(_, p) => {
            if let Some(tx) = t.pending.get(&id).and_then(|w| w.progress.as_ref()) {
                let _ = tx.try_send(p);
            }
        }
        Frame::Result(_, v) => {
            if let Some(w) = t.pending.remove(&id) {
                let _ = w.done.send(Ok(v));
            }
        }
        Frame::Error(_, e) => {
            if let Some(w) = t.pending.remove(&id) {
                let _ = w.done.send(Err(CallError::Remote(e)));
            }
        }
    }
    Ok(())
}

/// Says how the plugin ended once its stdout closed (waits a moment for the exit).
async fn exit_reason(shared: &Shared) -> String {
    for _ in 0..50 {
        if let Some(status) = shared.exit_status() {
            return format!("exited ({status})");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    "closed its stdout".into()
}

/// Logs the plugin's stderr, line by line.
async fn log_stderr<R: AsyncRead + Unpin>(stderr: R, pid: Option<u32>) {
    let mut r = BufReader::new(stderr);
    loop {
        match read_line(&mut r, STDERR_LINE_MAX).await {
            Ok(Some(l)) => {
                tracing::info!(pid, line = %String::from_utf8_lossy(&l), "exec plugin stderr");
            }
            Ok(None) => return,
            Err(LineError::Io(_)) => return,
            Err(LineError::TooLong(_)) => {
                // An over-long line: its first part was dropped; the rest follows.
                tracing::info!(pid, "exec plugin stderr: over-long line dropped");
            }
        }
    }
}
