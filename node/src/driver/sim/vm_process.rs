//! Process mode, VM side: the body of `ballast sim-vm`, one simulated VM per process.
//!
//! Arguments (all required except `--incoming`):
//! `--state-dir DIR --host NAME --vm ID --seed N --spec JSON [--incoming]`.
//! The process writes its own run records to `DIR/runlog.jsonl`, serves the control
//! protocol on `DIR/vms/<name>.sock` (mode 0600), and exits after a request that ends
//! the VM (stop, finish_outgoing, cancel_incoming), on SIGTERM/SIGINT (writing `stop`),
//! or when its socket file disappears (its host's state was wiped). Exit codes: 0 done,
//! 1 runtime failure, 2 bad arguments, 3 another live process already holds this VM.

use super::core::VmCore;
use super::process::{call_socket, create_vms_dir, socket_name};
use super::runlog::RunLog;
use super::wire::{read_msg, write_msg, VmReply, VmRequest};
use ballast_store::{NodeId, VmId, VmSpec};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::BufReader;
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{Notify, Semaphore};

/// Most control connections served at once; more wait for the kernel's backlog.
const MAX_CONNECTIONS: usize = 16;
/// An idle control connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the process checks that its socket file still exists.
const WATCHDOG: Duration = Duration::from_millis(500);

/// Parsed `sim-vm` arguments.
#[derive(Debug)]
struct VmArgs {
    state_dir: PathBuf,
    host: NodeId,
    vm: VmId,
    seed: u64,
    spec: VmSpec,
    incoming: bool,
}

fn parse(args: &[String]) -> Result<VmArgs, String> {
    let mut it = args.iter().skip_while(|a| *a == "sim-vm");
    let (mut state_dir, mut host, mut vm, mut seed, mut spec) = (None, None, None, None, None);
    let mut incoming = false;
    while let Some(flag) = it.next() {
        if flag == "--incoming" {
            incoming = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--state-dir" => state_dir = Some(PathBuf::from(value)),
            "--host" => host = Some(NodeId::from(value.as_str())),
            "--vm" => vm = Some(VmId::from(value.as_str())),
            "--seed" => seed = Some(value.parse().map_err(|_| format!("bad --seed {value}"))?),
            "--spec" => {
                spec = Some(serde_json::from_str(value).map_err(|e| format!("bad --spec: {e}"))?)
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(VmArgs {
        state_dir: state_dir.ok_or("--state-dir missing")?,
        host: host.ok_or("--host missing")?,
        vm: vm.ok_or("--vm missing")?,
        seed: seed.ok_or("--seed missing")?,
        spec: spec.ok_or("--spec missing")?,
        incoming,
    })
}

/// Runs one sim VM until it ends; returns the process exit code. `args` are the
/// arguments after the subcommand (a leading `sim-vm` is skipped).
pub fn vm_process_main(args: Vec<String>) -> i32 {
    let a = match parse(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ballast sim-vm: {e}");
            return 2;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ballast sim-vm: runtime: {e}");
            return 1;
        }
    };
    rt.block_on(run(a))
}

async fn run(a: VmArgs) -> i32 {
    let path = match claim_socket_path(&a).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    let log = match RunLog::open(&a.state_dir, a.host.clone()) {
        Ok(l) => Arc::new(l),
        Err(e) => {
            eprintln!("ballast sim-vm: run log: {e}");
            return 1;
        }
    };
    let core = if a.incoming {
        VmCore::incoming(&a.vm, &a.spec, a.seed, log).await
    } else {
        VmCore::start(&a.vm, &a.spec, a.seed, log)
    };
    let core = match core {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ballast sim-vm: {}: {e}", a.vm);
            return 1;
        }
    };
    let listener = match bind_private(&path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ballast sim-vm: bind {}: {e}", path.display());
            core.handle(VmRequest::Stop, 0).await;
            return 1;
        }
    };
    let sock = match OwnSocket::new(path) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("ballast sim-vm: socket: {e}");
            core.handle(VmRequest::Stop, 0).await;
            return 1;
        }
    };
    tracing::info!(vm = %a.vm, host = %a.host, pid = std::process::id(), "sim VM process serving");
    serve(&core, listener, &sock).await;
    if !core.is_stopped() {
        core.handle(VmRequest::Stop, 0).await;
    }
    sock.remove();
    0
}

/// This process's socket file, identified by device, inode and change time, so that a
/// later process's socket at the same path is never removed by this one. The inode alone
/// is not enough: when the next process for the same VM removes this (stale) socket and
/// binds its own, the file system may give the new socket the freed inode number, and
/// this process, ending, would then delete the new socket (seen as "bind: No such file"
/// when a VM was started again right after it stopped).
#[derive(Debug)]
struct OwnSocket {
    path: PathBuf,
    id: (u64, u64, i64, i64),
}

fn file_id(m: &std::fs::Metadata) -> (u64, u64, i64, i64) {
    (m.dev(), m.ino(), m.ctime(), m.ctime_nsec())
}

impl OwnSocket {
    fn new(path: PathBuf) -> std::io::Result<Self> {
        let id = file_id(&std::fs::symlink_metadata(&path)?);
        Ok(Self { path, id })
    }

    /// Whether the path still holds a socket with this one's inode (the watchdog's
    /// test: a `chmod` or `touch` of the socket changes its change time, not its inode,
    /// and must not end the VM).
    fn present(&self) -> bool {
        std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| (m.dev(), m.ino()) == (self.id.0, self.id.1))
    }

    /// Removes the socket if it is exactly ours (idempotent).
    fn remove(&self) {
        let ours = std::fs::symlink_metadata(&self.path).is_ok_and(|m| file_id(&m) == self.id);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The socket path, after making sure no live process holds this VM.
async fn claim_socket_path(a: &VmArgs) -> Result<PathBuf, i32> {
    let dir = create_vms_dir(&a.state_dir).map_err(|e| {
        eprintln!("ballast sim-vm: {e}");
        1
    })?;
    let path = dir.join(socket_name(&a.vm));
    // A live VM answers `Info`; an ending one (stopped, not yet exited) answers
    // `NotFound` and its stale socket may be replaced (it only removes its own inode).
    if let Ok(VmReply::Info { .. }) = call_socket(&path, &VmRequest::Info).await {
        eprintln!("ballast sim-vm: {} already runs on this host", a.vm);
        return Err(3);
    }
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(path),
        Err(e) => {
            eprintln!("ballast sim-vm: removing stale {}: {e}", path.display());
            Err(1)
        }
    }
}

/// Binds the VM's socket so that it appears at `path` only once it accepts
/// connections: bound and made private (0600) under a temporary name, then renamed into
/// place. Bound in place, a caller connecting between the bind and the listen got
/// "connection refused", took the new VM for a dead one and removed its socket (seen as
/// the VM process failing at start, and a false `stop` in the run log).
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let tmp = dir.join(format!("t-{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    let published = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = published {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

/// Serves control connections until the VM ends, a signal arrives or the socket file
/// is gone.
async fn serve(core: &Arc<VmCore>, listener: UnixListener, sock: &Arc<OwnSocket>) {
    let ended = Arc::new(Notify::new());
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            eprintln!("ballast sim-vm: cannot install signal handlers");
            return;
        }
    };
    let mut watchdog = tokio::time::interval(WATCHDOG);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let Ok(permit) = Arc::clone(&slots).acquire_owned().await else { return };
                let (core, ended, sock) = (Arc::clone(core), Arc::clone(&ended), Arc::clone(sock));
                tokio::spawn(async move {
                    connection(&core, stream).await;
                    if core.is_stopped() {
                        // Gone from the directory at once: later callers see "absent".
                        sock.remove();
                        ended.notify_one();
                    }
                    drop(permit);
                });
            }
            () = ended.notified() => return,
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = watchdog.tick() => {
                if core.is_stopped() || !sock.present() {
                    return;
                }
            }
        }
    }
}

/// One control connection: requests in, replies out, until EOF, idle or the VM ended.
async fn connection(core: &Arc<VmCore>, stream: UnixStream) {
    let pid = std::process::id();
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    loop {
        let req = match tokio::time::timeout(IDLE_TIMEOUT, read_msg::<VmRequest, _>(&mut r)).await {
            Ok(Ok(Some(req))) => req,
            Ok(Err(e)) => {
                tracing::warn!(vm = %core.vm(), error = %e, "bad control request");
                return;
            }
            _ => return,
        };
        let reply = core.handle(req, pid).await;
        if write_msg(&mut w, &reply).await.is_err() || core.is_stopped() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_parse_and_refuse() {
        let spec = serde_json::to_string(&VmSpec {
            vcpus: 1,
            memory_mib: 8,
            ..Default::default()
        })
        .unwrap();
        let ok: Vec<String> = [
            "sim-vm",
            "--state-dir",
            "/tmp/x",
            "--host",
            "h",
            "--vm",
            "v",
            "--seed",
            "5",
            "--spec",
            &spec,
            "--incoming",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let a = parse(&ok).unwrap();
        assert!(a.incoming);
        assert_eq!((a.seed, a.vm.as_str(), a.spec.memory_mib), (5, "v", 8));
        assert!(parse(&ok[..ok.len() - 3]).is_err(), "missing --spec");
        assert!(parse(&["--bogus".to_string(), "1".to_string()]).is_err());
        assert!(parse(&["--seed".to_string()]).is_err());
        assert_eq!(vm_process_main(vec!["--nonsense".into()]), 2);
    }
}
