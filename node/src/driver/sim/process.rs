//! Process mode, agent side: spawns one detached `ballast sim-vm` process per VM and
//! talks to it over its Unix socket `<state_dir>/vms/<name>.sock` (directory mode 0700,
//! socket mode 0600), one connection per request.
//!
//! A VM process runs in its own process group, so it survives a SIGKILL of the agent
//! and terminal signals aimed at it. A socket that refuses connections belongs to a VM
//! process that died: the driver removes it and writes a `stop` record for that VM
//! (stamped now, a safe upper bound of when it stopped running).

use super::runlog::{RunEvent, RunLog};
use super::wire::{read_msg, write_msg, VmReply, VmRequest, VmStatus};
use crate::driver::DriverError;
use ballast_store::{NodeId, VmId, VmSpec};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::BufReader;
use tokio::net::UnixStream;

/// Bound on one request/reply round trip (cancel_outgoing may wait for its task).
const CALL_TIMEOUT: Duration = Duration::from_secs(45);
/// Bound on a new VM process becoming reachable.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a call cut by an ending VM process, or refused for a full accept queue, is
/// retried, and the base back-off.
const CUT_RETRIES: u32 = 5;
const CUT_BACKOFF: Duration = Duration::from_millis(20);
/// Longest socket path we create (the OS limit is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 100;

/// Whether `e` is worth asking again: a connection cut short by the peer (an ending
/// process), or a connect refused with `EAGAIN` because the VM's accept queue is full
/// (Linux answers so for a Unix socket under a burst of callers; seen in
/// `a_starting_vm_never_refuses_a_connection` on a loaded machine).
fn is_cut(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::WouldBlock
    )
}

/// The socket file name of `vm` (`v-<id>.sock`, or `x-<hex>.sock` for other ids).
pub(crate) fn socket_name(vm: &VmId) -> String {
    crate::driver::vm_file::file_name(vm, "sock")
}

/// The VM whose socket is named `name`, if it is one of ours.
pub(crate) fn vm_of_socket(name: &str) -> Option<VmId> {
    crate::driver::vm_file::vm_of_file(name, "sock")
}

/// The directory of the VM sockets of a host.
pub(crate) fn vms_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("vms")
}

/// Creates the sockets directory, private to the user.
pub(crate) fn create_vms_dir(state_dir: &Path) -> io::Result<PathBuf> {
    let dir = vms_dir(state_dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    Ok(dir)
}

/// Sends one request on a fresh connection and reads its reply.
pub(crate) async fn call_socket(path: &Path, req: &VmRequest) -> io::Result<VmReply> {
    let round_trip = async {
        let stream = UnixStream::connect(path).await?;
        let (r, mut w) = stream.into_split();
        write_msg(&mut w, req).await?;
        let mut r = BufReader::new(r);
        read_msg::<VmReply, _>(&mut r)
            .await?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "VM closed without reply"))
    };
    tokio::time::timeout(CALL_TIMEOUT, round_trip)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "VM process did not answer"))?
}

/// The agent side of process mode for one host.
#[derive(Debug)]
pub(crate) struct ProcHost {
    state_dir: PathBuf,
    dir: PathBuf,
    host: NodeId,
    log: Arc<RunLog>,
    command: Vec<String>,
    /// Serializes creation of VMs (check-then-spawn spans awaits).
    pub(crate) create: tokio::sync::Mutex<()>,
}

impl ProcHost {
    /// Prepares the host's directories; `command` runs one VM (arguments appended).
    pub(crate) fn new(state_dir: &Path, host: NodeId, command: Vec<String>) -> io::Result<Self> {
        let dir = create_vms_dir(state_dir)?;
        let log = Arc::new(RunLog::open(state_dir, host.clone())?);
        Ok(Self {
            state_dir: state_dir.to_owned(),
            dir,
            host,
            log,
            command,
            create: Default::default(),
        })
    }

    fn socket_path(&self, vm: &VmId) -> Result<PathBuf, DriverError> {
        let p = self.dir.join(socket_name(vm));
        if p.as_os_str().len() > MAX_SOCKET_PATH {
            let msg = format!("socket path {} too long for VM {vm}", p.display());
            return Err(DriverError::InvalidSpec(msg));
        }
        Ok(p)
    }

    /// One request to `vm`'s process; `None` when no process holds `vm`.
    /// A connection cut mid-request means the VM process is ending (or was killed):
    /// ask again, a bounded number of times, until its socket is gone or answers.
    pub(crate) async fn call(
        &self,
        vm: &VmId,
        req: &VmRequest,
    ) -> Result<Option<VmReply>, DriverError> {
        let path = self.socket_path(vm)?;
        let mut attempt = 0;
        loop {
            match call_socket(&path, req).await {
                Ok(reply) => return Ok(Some(reply)),
                Err(e) if is_cut(&e) && attempt < CUT_RETRIES => {
                    attempt += 1;
                    tracing::debug!(vm = %vm, error = %e, attempt, "VM connection cut; asking again");
                    tokio::time::sleep(CUT_BACKOFF * attempt).await;
                }
                Err(e) => return self.failed_call(vm, &path, e).map(|()| None),
            }
        }
    }

    /// Maps a failed call: absent socket or dead process → `Ok` (no VM), else an error.
    fn failed_call(&self, vm: &VmId, path: &Path, e: io::Error) -> Result<(), DriverError> {
        match e.kind() {
            io::ErrorKind::NotFound => Ok(()),
            io::ErrorKind::ConnectionRefused => {
                self.lost(vm, path);
                Ok(())
            }
            io::ErrorKind::TimedOut => Err(DriverError::Timeout(format!("VM {vm}: {e}"))),
            io::ErrorKind::InvalidData => Err(DriverError::Protocol(format!("VM {vm}: {e}"))),
            _ => Err(DriverError::Io(e)),
        }
    }

    /// A VM process died without cleaning up: forget its socket, close its interval.
    fn lost(&self, vm: &VmId, path: &Path) {
        tracing::warn!(vm = %vm, host = %self.host, "sim VM process gone; removing its socket");
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(vm = %vm, error = %e, "removing dead VM socket failed");
        }
        if let Err(e) = self.log.append(Some(vm), RunEvent::Stop) {
            tracing::error!(vm = %vm, error = %e, "run log: stop record lost");
        }
    }

    /// Every live VM process of this host (dead ones are cleaned up on the way).
    pub(crate) async fn scan(&self) -> Result<Vec<VmStatus>, DriverError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(vm) = name.to_str().and_then(vm_of_socket) else {
                continue;
            };
            match self.call(&vm, &VmRequest::Info).await? {
                Some(VmReply::Info { status }) => out.push(status),
                Some(other) if other.is_not_found() => {}
                Some(other) => return Err(other.into_error(&vm)),
                None => {}
            }
        }
        out.sort_by(|a, b| a.vm.cmp(&b.vm));
        Ok(out)
    }

    /// Starts a VM process (running, or a paused incoming copy) and waits until it
    /// answers on its socket.
    pub(crate) async fn spawn(
        &self,
        vm: &VmId,
        spec: &VmSpec,
        seed: u64,
        incoming: bool,
    ) -> Result<VmStatus, DriverError> {
        let path = self.socket_path(vm)?;
        let spec_json =
            serde_json::to_string(spec).map_err(|e| DriverError::InvalidSpec(e.to_string()))?;
        let (program, pre_args) = match self.command.split_first() {
            Some((p, rest)) => (PathBuf::from(p), rest.to_vec()),
            None => (std::env::current_exe()?, vec!["sim-vm".to_owned()]),
        };
        let stderr_path = path.with_extension("log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)?;
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(&pre_args)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args([
                "--host",
                self.host.as_str(),
                "--vm",
                vm.as_str(),
                "--seed",
                &seed.to_string(),
            ])
            .args(["--spec", &spec_json])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .process_group(0)
            .kill_on_drop(false);
        if incoming {
            cmd.arg("--incoming");
        }
        let mut child = cmd.spawn()?;
        tracing::info!(vm = %vm, pid = ?child.id(), incoming, "sim VM process spawned");
        let deadline = tokio::time::Instant::now() + SPAWN_TIMEOUT;
        loop {
            if let Ok(VmReply::Info { status }) = call_socket(&path, &VmRequest::Info).await {
                // Dropping `child` leaves the process running; tokio reaps it on exit.
                return Ok(status);
            }
            if let Some(exit) = child.try_wait()? {
                let msg = format!(
                    "sim-vm for {vm} exited with {exit}: {} (log: {})",
                    log_tail(&stderr_path),
                    stderr_path.display()
                );
                return Err(DriverError::Io(io::Error::other(msg)));
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.start_kill();
                return Err(DriverError::Timeout(format!(
                    "sim-vm for {vm} never answered"
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The last lines a VM process wrote to its log (what it said before exiting), at
/// most 3 lines and 1 KiB, on one line.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[text.len().saturating_sub(1024)..]).into_owned();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    match &lines[lines.len().saturating_sub(3)..] {
        [] => "it wrote nothing".to_owned(),
        tail => tail.join(" | "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_tail_is_the_last_lines_on_one_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("vm.log");
        assert_eq!(log_tail(&p), "it wrote nothing");
        std::fs::write(&p, "one\ntwo\n\nthree\nfour\n").expect("write");
        assert_eq!(log_tail(&p), "two | three | four");
        std::fs::write(&p, "x".repeat(5000)).expect("write");
        assert_eq!(log_tail(&p).len(), 1024);
    }

    #[test]
    fn socket_names_round_trip() {
        for id in ["web-1", "a.b_c", "with space", "ünï/../x", "x-41", "v-"] {
            let vm = VmId::from(id);
            let name = socket_name(&vm);
            assert!(!name.contains('/'), "{name}");
            assert_eq!(vm_of_socket(&name), Some(vm), "{name}");
        }
        assert_eq!(vm_of_socket("x-4.sock"), None);
        assert_eq!(vm_of_socket("other.log"), None);
        assert_ne!(
            socket_name(&VmId::from("x-41")),
            socket_name(&VmId::from("A"))
        );
    }
}
