//! Sim migrations over loopback TCP: the source VM's transfer task and the destination
//! copy's listener. The target is `tcp:127.0.0.1:PORT`, reachable from any process.
//!
//! Stream: source `Hello{vm,seed}` → destination `Ready`; source `Chunk`s for the
//! configured duration (the VM keeps running); then either `Abort` (cancelled or an
//! injected failure: nothing changes on either side) or the switchover: the source
//! pauses, sends `Complete{run_ns}`, and the destination marks its copy complete, still
//! paused, and answers `Ack`. Only an `Ack` makes the source's migration `Completed`.

use super::core::VmCore;
use super::wire::{read_msg, write_msg, MigMsg};
use crate::driver::MigrationProgress;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncWrite, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Bound on connecting to a target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on waiting for any one message from the peer.
const MSG_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound on transfer steps (progress reports) per migration.
const MAX_STEPS: u64 = 100;
/// Target length of one transfer step.
const STEP_MS: u64 = 50;

/// How an outgoing migration ended.
#[derive(Debug, PartialEq)]
pub(crate) enum Outcome {
    /// The destination acknowledged the switchover; the source is paused.
    Completed,
    /// Stopped by `cancel_outgoing` before the switchover; the source still runs.
    Cancelled,
    /// Failed; the source runs if the switchover was not reached, else stays paused.
    Failed(String),
}

/// Parses `tcp:HOST:PORT`.
pub(crate) fn parse_target(target: &str) -> Result<SocketAddr, String> {
    let addr = target
        .strip_prefix("tcp:")
        .ok_or_else(|| format!("not a sim target: {target}"))?;
    addr.parse()
        .map_err(|e| format!("bad target address {addr}: {e}"))
}

async fn recv<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<MigMsg, String> {
    match tokio::time::timeout(MSG_TIMEOUT, read_msg::<MigMsg, _>(r)).await {
        Err(_) => Err("peer silent".to_owned()),
        Ok(Err(e)) => Err(format!("receive: {e}")),
        Ok(Ok(None)) => Err("peer closed the stream".to_owned()),
        Ok(Ok(Some(m))) => Ok(m),
    }
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, m: &MigMsg) -> Result<(), String> {
    match tokio::time::timeout(MSG_TIMEOUT, write_msg(w, m)).await {
        Err(_) => Err("send timed out".to_owned()),
        Ok(r) => r.map_err(|e| format!("send: {e}")),
    }
}

/// The source side: transfers for `duration_ms`, then switches over (unless cancelled
/// or told to `fail`, which happens before the switchover).
pub(crate) async fn run_outgoing(
    core: &Arc<VmCore>,
    target: &str,
    duration_ms: u64,
    fail: bool,
    cancel: &AtomicBool,
) -> Outcome {
    let addr = match parse_target(target) {
        Ok(a) => a,
        Err(e) => return Outcome::Failed(e),
    };
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Outcome::Failed(format!("connect {addr}: {e}")),
        Err(_) => return Outcome::Failed(format!("connect {addr}: timed out")),
    };
    // Small messages back to back: without this, Nagle and delayed ACKs add ~40 ms.
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    match transfer(core, &mut r, &mut w, duration_ms, fail, cancel).await {
        Ok(o) => o,
        Err(e) => Outcome::Failed(e),
    }
}

async fn transfer<R: AsyncBufRead + Unpin, W: AsyncWrite + Unpin>(
    core: &Arc<VmCore>,
    r: &mut R,
    w: &mut W,
    duration_ms: u64,
    fail: bool,
    cancel: &AtomicBool,
) -> Result<Outcome, String> {
    let (seed, mem) = core.seed_and_mem();
    send(
        w,
        &MigMsg::Hello {
            vm: core.vm().clone(),
            seed,
        },
    )
    .await?;
    match recv(r).await? {
        MigMsg::Ready => {}
        MigMsg::Refused { reason } => return Err(format!("destination refused: {reason}")),
        other => return Err(format!("unexpected {other:?}")),
    }
    let steps = (duration_ms / STEP_MS).clamp(1, MAX_STEPS);
    let step = Duration::from_millis(duration_ms) / u32::try_from(steps).unwrap_or(1);
    for i in 1..=steps {
        // An instant migration (`migration_ms = 0`) does not sleep: a zero sleep still
        // waits for the timer wheel's next millisecond tick.
        if !step.is_zero() {
            tokio::time::sleep(step).await;
        }
        if cancel.load(Ordering::SeqCst) {
            let _ = send(w, &MigMsg::Abort).await;
            return Ok(Outcome::Cancelled);
        }
        let done = mem / steps * i;
        send(w, &MigMsg::Chunk { bytes: mem / steps }).await?;
        let p = MigrationProgress {
            transferred_bytes: done,
            remaining_bytes: mem - done.min(mem),
        };
        core.set_progress(p);
    }
    if fail {
        let _ = send(w, &MigMsg::Abort).await;
        return Err("injected failure".to_owned());
    }
    let run_ns = core.switchover()?;
    send(w, &MigMsg::Complete { run_ns }).await?;
    match recv(r).await? {
        MigMsg::Ack => Ok(Outcome::Completed),
        other => Err(format!("switchover not acknowledged: {other:?}")),
    }
}

/// The destination side: serves one source connection at a time until the task is
/// aborted (copy resumed, cancelled or stopped).
pub(crate) async fn serve_incoming(core: Arc<VmCore>, listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(vm = %core.vm(), error = %e, "sim incoming accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        if let Err(e) = receive(&core, &mut r, &mut w).await {
            tracing::warn!(vm = %core.vm(), peer = %peer, error = %e, "sim incoming stream ended");
        }
    }
}

async fn receive<R: AsyncBufRead + Unpin, W: AsyncWrite + Unpin>(
    core: &VmCore,
    r: &mut R,
    w: &mut W,
) -> Result<(), String> {
    let MigMsg::Hello { vm, seed } = recv(r).await? else {
        return Err("expected hello".to_owned());
    };
    if let Err(reason) = core.accept_hello(&vm, seed) {
        send(
            w,
            &MigMsg::Refused {
                reason: reason.clone(),
            },
        )
        .await?;
        return Err(reason);
    }
    send(w, &MigMsg::Ready).await?;
    loop {
        match recv(r).await? {
            MigMsg::Chunk { .. } => {}
            MigMsg::Abort => return Ok(()),
            MigMsg::Complete { run_ns } => {
                core.complete_incoming(run_ns)?;
                return send(w, &MigMsg::Ack).await;
            }
            other => return Err(format!("unexpected {other:?}")),
        }
    }
}
