//! [`AgentProcess`]: one `ballast agent` process on a held port.

use crate::{HeldPort, KitError};
use rustix::process::{kill_process, Pid, Signal};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running (or exited, not yet reaped) agent; SIGKILLed and reaped when dropped.
#[derive(Debug)]
pub struct AgentProcess {
    child: Child,
    log: PathBuf,
    paused: bool,
}

impl AgentProcess {
    /// Starts `bin agent --config CONFIG --stdin-socket` (under `launcher` when it is not
    /// empty: a command that ends by executing its arguments in its own process) with a
    /// copy of `port`'s socket as its standard input, `env` added to its environment, and
    /// its standard output and error appended to `log`.
    pub fn start(
        launcher: &[OsString],
        bin: &Path,
        config: &Path,
        port: &HeldPort,
        log: &Path,
        env: &[(OsString, OsString)],
    ) -> Result<Self, KitError> {
        let socket = port.share().map_err(|source| KitError::Bind {
            ip: port.addr().ip(),
            source,
        })?;
        Self::spawn(launcher, bin, config, Some(socket), log, env)
    }

    /// Starts `bin agent --config CONFIG`, which binds its `listen` address itself (as
    /// ballast 0.1 does: it has no `--stdin-socket`), its output appended to `log`.
    pub fn start_binding(bin: &Path, config: &Path, log: &Path) -> Result<Self, KitError> {
        Self::spawn(&[], bin, config, None, log, &[])
    }

    fn spawn(
        launcher: &[OsString],
        bin: &Path,
        config: &Path,
        socket: Option<std::os::fd::OwnedFd>,
        log: &Path,
        env: &[(OsString, OsString)],
    ) -> Result<Self, KitError> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(KitError::io("opening the agent log", log))?;
        let err = out
            .try_clone()
            .map_err(KitError::io("opening the agent log", log))?;
        let mut command = match launcher.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        command.arg("agent");
        let stdin = match socket {
            Some(socket) => {
                command.arg("--stdin-socket");
                Stdio::from(socket)
            }
            None => Stdio::null(),
        };
        let child = command
            .arg("--config")
            .arg(config)
            .env_remove("BALLAST_CONFIG")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(stdin)
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| KitError::Spawn {
                bin: bin.to_owned(),
                source,
            })?;
        Ok(Self {
            child,
            log: log.to_owned(),
            paused: false,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// How it exited, if it has (reaped then).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL, then reaped: a crash.
    pub fn kill(&mut self) {
        self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn stop(&mut self, grace: Duration) {
        self.resume();
        self.signal(Signal::TERM);
        let deadline = Instant::now() + grace;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= deadline => return self.kill(),
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// SIGSTOP.
    pub fn pause(&mut self) -> bool {
        self.paused = self.signal(Signal::STOP);
        self.paused
    }

    /// SIGCONT (if paused).
    pub fn resume(&mut self) {
        if self.paused {
            self.signal(Signal::CONT);
            self.paused = false;
        }
    }

    /// Whether it is stopped with SIGSTOP.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    fn signal(&self, signal: Signal) -> bool {
        let pid = i32::try_from(self.child.id()).ok().and_then(Pid::from_raw);
        pid.is_some_and(|pid| kill_process(pid, signal).is_ok())
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `lines` lines of the file at `path` (empty if unreadable).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
