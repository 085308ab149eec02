//! Run records for the I2 check: one JSON line per run-state transition of a sim VM,
//! appended to `<state_dir>/runlog.jsonl`.
//!
//! Ordering rule (so recorded running intervals always cover the real ones): a `run`
//! record is durable (fsynced) **before** the VM starts running, a `pause` or `stop`
//! record is written **after** it stopped running. `pause` and `stop` records are not
//! fsynced on their own (the source's switchover is on every handoff's critical path):
//! they survive any process kill (the page cache keeps them), the host's next fsync
//! makes them durable, and losing one in a power loss only lengthens a recorded
//! interval — the checker may then report a double run that did not happen, never miss
//! one that did. A `boot` record (no VM) is written when an
//! in-process host starts in a fresh agent process: every VM the log shows running on
//! that host before it died with the previous process.
//!
//! Several processes (process-mode VMs, the agent) append to the same file; each record
//! is one `write` of one line on an `O_APPEND` descriptor, so lines do not interleave.

use ballast_store::{NodeId, VmId};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// The file name of a host's run log inside its state directory.
pub const RUNLOG_FILE: &str = "runlog.jsonl";

/// A run-state transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunEvent {
    /// The VM is about to run (written before it runs).
    Run,
    /// The VM stopped running but still exists (written after it paused).
    Pause,
    /// The VM is gone (written after it stopped).
    Stop,
    /// An in-process host came up in a fresh process: all its earlier VMs are dead.
    Boot,
}

impl RunEvent {
    /// Whether the record must be durable before `append` returns: a `run` (written
    /// before running) and a `boot` (ends every earlier interval of the host).
    fn needs_sync(self) -> bool {
        matches!(self, RunEvent::Run | RunEvent::Boot)
    }
}

/// One line of a run log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The VM (`None` for `boot`).
    pub vm: Option<VmId>,
    /// The host that wrote the record.
    pub host: NodeId,
    /// What happened.
    pub event: RunEvent,
    /// Wall-clock time, Unix nanoseconds.
    pub t_ns: u64,
}

/// Reading a run log failed.
#[derive(Debug, thiserror::Error)]
pub enum RunLogError {
    /// The file could not be read. Nothing changed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A complete line is not a run record (the file is corrupt). Nothing changed.
    #[error("{path}:{line}: not a run record: {reason}")]
    Garbage {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The decoder's complaint.
        reason: String,
    },
}

/// Wall-clock now in Unix nanoseconds (0 if the clock is before 1970).
pub fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// An append-only run log of one host (`run` and `boot` records fsynced).
#[derive(Debug)]
pub struct RunLog {
    host: NodeId,
    path: PathBuf,
    /// Serializes appends from this process; held only for one write (+ fsync), no await.
    file: Mutex<File>,
}

impl RunLog {
    /// Opens (creating) `<state_dir>/runlog.jsonl` for appending.
    pub fn open(state_dir: &Path, host: NodeId) -> std::io::Result<Self> {
        std::fs::create_dir_all(state_dir)?;
        let path = state_dir.join(RUNLOG_FILE);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Self {
            host,
            path,
            file: Mutex::new(file),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record stamped now (fsynced for `run` and `boot`); returns the stamp.
    pub fn append(&self, vm: Option<&VmId>, event: RunEvent) -> std::io::Result<u64> {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let t_ns = now_unix_ns();
        let rec = RunRecord {
            vm: vm.cloned(),
            host: self.host.clone(),
            event,
            t_ns,
        };
        let mut line = serde_json::to_vec(&rec).map_err(std::io::Error::other)?;
        line.push(b'\n');
        file.write_all(&line)?;
        if event.needs_sync() {
            file.sync_data()?;
        }
        tracing::debug!(vm = ?rec.vm, host = %rec.host, event = ?event, t_ns, "run record");
        Ok(t_ns)
    }
}

/// Reads every record of one run log. A final line without its newline (a write torn
/// by a crash) is skipped: a torn `run` was never followed by running, and a missing
/// `pause`/`stop` only lengthens the recorded interval.
pub fn read_runlog(path: &Path) -> Result<Vec<RunRecord>, RunLogError> {
    let text = std::fs::read_to_string(path).map_err(|source| RunLogError::Io {
        path: path.to_owned(),
        source,
    })?;
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    let mut out = Vec::new();
    for (i, line) in complete.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let rec = serde_json::from_str(line).map_err(|e| RunLogError::Garbage {
            path: path.to_owned(),
            line: i + 1,
            reason: e.to_string(),
        })?;
        out.push(rec);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_then_read_back_and_skip_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = RunLog::open(dir.path(), NodeId::from("h1")).unwrap();
        let vm = VmId::from("v1");
        let t1 = log.append(Some(&vm), RunEvent::Run).unwrap();
        let t2 = log.append(Some(&vm), RunEvent::Stop).unwrap();
        log.append(None, RunEvent::Boot).unwrap();
        assert!(t2 >= t1);
        let mut f = OpenOptions::new().append(true).open(log.path()).unwrap();
        f.write_all(b"{\"vm\":\"v1\",\"ho").unwrap();
        let recs = read_runlog(log.path()).unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0].event, RunEvent::Run);
        assert_eq!(recs[0].vm.as_ref(), Some(&vm));
        assert_eq!(recs[2].vm, None);
        let line = std::fs::read_to_string(log.path()).unwrap();
        assert!(line.starts_with("{\"vm\":\"v1\",\"host\":\"h1\",\"event\":\"run\",\"t_ns\":"));
    }

    #[test]
    fn garbage_in_the_middle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(RUNLOG_FILE);
        std::fs::write(&p, "nonsense\n{}\n").unwrap();
        assert!(matches!(
            read_runlog(&p),
            Err(RunLogError::Garbage { line: 1, .. })
        ));
    }
}
