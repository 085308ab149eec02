//! Launching and ending QEMU processes.
//!
//! QEMU is started with `-daemonize`: the launched process returns only once the VM is
//! set up and its QMP socket listens (or exits non-zero with the reason on stderr), and
//! the VM process is not a child of the agent, so it outlives an agent restart and is
//! adopted later through its pid file and QMP socket.

use super::procfs;
use super::vm_dir::VmDir;
use crate::driver::DriverError;
use rustix::process::{kill_process, Pid, Signal};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::time::{sleep, timeout, Instant};

/// Most bytes of QEMU's start-up stderr kept for an error message.
const STDERR_MAX: u64 = 16 * 1024;
/// Interval between two checks whether a process has gone.
const GONE_POLL: Duration = Duration::from_millis(20);
/// How long a SIGKILLed process may take to disappear.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Runs `binary args` (which daemonizes) and returns the VM process's pid.
pub(crate) async fn launch(
    binary: &Path,
    args: &[String],
    dir: &VmDir,
    limit: Duration,
) -> Result<u32, DriverError> {
    let mut child = tokio::process::Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run {}: {e}", binary.display())))?;
    let stderr = child.stderr.take();
    let run = async {
        let mut text = Vec::new();
        if let Some(s) = stderr {
            // Errors reading stderr only lose the message, not the outcome.
            let _ = s.take(STDERR_MAX).read_to_end(&mut text).await;
        }
        let status = child.wait().await?;
        Ok::<_, io::Error>((status, text))
    };
    let (status, text) = match timeout(limit, run).await {
        Ok(r) => r?,
        Err(_) => {
            if let Some(pid) = dir.read_pid() {
                kill(pid, &dir.qmp).await;
            }
            return Err(DriverError::Timeout(format!(
                "QEMU did not finish starting within {} ms",
                limit.as_millis()
            )));
        }
    };
    let text = String::from_utf8_lossy(&text);
    if !status.success() {
        return Err(DriverError::Io(io::Error::other(format!(
            "QEMU failed to start ({status}): {}",
            text.trim()
        ))));
    }
    if !text.trim().is_empty() {
        tracing::debug!(stderr = %text.trim(), "QEMU start-up messages");
    }
    match dir.read_pid() {
        Some(pid) if alive(pid, &dir.qmp) => Ok(pid),
        _ => Err(DriverError::Protocol(format!(
            "QEMU started but {} names no live process",
            dir.pid.display()
        ))),
    }
}

/// Whether `pid` is our live QEMU process for the QMP socket `qmp`.
pub(crate) fn alive(pid: u32, qmp: &Path) -> bool {
    procfs::is_our_process(pid, qmp.as_os_str().as_bytes())
}

fn signal(pid: u32, sig: Signal) {
    let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return;
    };
    if let Err(e) = kill_process(p, sig) {
        tracing::debug!(pid, error = %e, "signal not delivered");
    }
}

/// Waits until `pid` is no longer our process; false when `limit` passed first.
pub(crate) async fn wait_gone(pid: u32, qmp: &Path, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while alive(pid, qmp) {
        if Instant::now() >= deadline {
            return false;
        }
        sleep(GONE_POLL).await;
    }
    true
}

/// Kills our process `pid` (SIGKILL) and waits until it has gone.
pub(crate) async fn kill(pid: u32, qmp: &Path) {
    if !alive(pid, qmp) {
        return;
    }
    signal(pid, Signal::KILL);
    if !wait_gone(pid, qmp, KILL_WAIT).await {
        tracing::warn!(pid, "QEMU process survived SIGKILL");
        return;
    }
    let deadline = Instant::now() + KILL_WAIT;
    while !procfs::exited(pid) && Instant::now() < deadline {
        sleep(GONE_POLL).await;
    }
}

/// Blocking variant of [`kill`] for `Drop` guards and teardown outside a runtime.
pub(crate) fn kill_blocking(pid: u32, qmp: &Path) {
    let ours = alive(pid, qmp);
    signal(pid, Signal::KILL);
    let deadline = std::time::Instant::now() + KILL_WAIT;
    while (alive(pid, qmp) || (ours && !procfs::exited(pid)))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(GONE_POLL);
    }
}
