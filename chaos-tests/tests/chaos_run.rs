//! `ballast-chaos run` end to end: real agents under faults on two fixed seeds must keep
//! every invariant while doing real work, and a planted handoff bug must be reported.
//!
//! Each run is a `ballast-chaos` child process in its own process group, bounded in
//! time; a guard kills the group and removes the run's directory (which ends the
//! detached VM processes) also when a test fails. The runs take a lock so that they do
//! not share the two cores with each other (cargo test and nextest alike). The agent
//! binary comes from `BALLAST_BIN` (scripts/test sets it to the release build) or from
//! the workspace's `target/{release,debug}`.

use rustix::process::{kill_process_group, Pid, Signal};
use serde_json::Value;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the harness's process group and removes its directory on drop.
struct RunGuard {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = i32::try_from(c.id()).ok().and_then(Pid::from_raw) {
                let _ = kill_process_group(pid, Signal::KILL);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // VM processes exit once their socket files are gone.
        let _ = std::fs::remove_dir_all(self.dir.path());
    }
}

/// A lock directory shared by every chaos test process; stale locks (dead owner) are
/// taken over.
struct SerialLock(PathBuf);

impl SerialLock {
    fn take(bound: Duration) -> Self {
        let dir = std::env::temp_dir().join("ballast-chaos-tests.lock");
        let start = Instant::now();
        loop {
            if std::fs::create_dir(&dir).is_ok() {
                std::fs::write(dir.join("pid"), std::process::id().to_string()).expect("pid file");
                return Self(dir);
            }
            let owner = std::fs::read_to_string(dir.join("pid")).unwrap_or_default();
            let alive = owner
                .trim()
                .parse::<u32>()
                .is_ok_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
            if !alive && start.elapsed() > Duration::from_secs(2) {
                let _ = std::fs::remove_dir_all(&dir);
                continue;
            }
            assert!(
                start.elapsed() < bound,
                "waited too long for the chaos test lock"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for SerialLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ballast_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BALLAST_BIN") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or(root.join("target"), PathBuf::from);
    for profile in ["release-hooks", "debug"] {
        let p = target.join(profile).join("ballast");
        if p.exists() {
            return p;
        }
    }
    panic!(
        "no ballast binary with test hooks: build it \
         (cargo build --profile release-hooks --workspace --bins) or set BALLAST_BIN"
    );
}

/// Runs `ballast-chaos run ARGS --json` within `bound`; returns (exit code, report).
fn chaos_run(args: &[&str], bound: Duration) -> (i32, Value) {
    let _lock = SerialLock::take(Duration::from_secs(1_200));
    let dir = tempfile::tempdir().expect("tempdir");
    let keep = dir.path().join("run");
    let child = Command::new(env!("CARGO_BIN_EXE_ballast-chaos"))
        .arg("run")
        .args(args)
        .arg("--json")
        .arg("--keep-dir")
        .arg(&keep)
        .env("BALLAST_BIN", ballast_bin())
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ballast-chaos");
    let mut guard = RunGuard {
        child: Some(child),
        dir,
    };
    let start = Instant::now();
    let status = loop {
        let c = guard.child.as_mut().expect("child");
        if let Some(s) = c.try_wait().expect("wait") {
            break s;
        }
        assert!(
            start.elapsed() < bound,
            "ballast-chaos run {args:?} exceeded its bound of {bound:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let mut out = String::new();
    if let Some(mut stdout) = guard.child.as_mut().and_then(|c| c.stdout.take()) {
        use std::io::Read;
        stdout.read_to_string(&mut out).expect("read stdout");
    }
    guard.child = None;
    let report: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("no JSON report ({e}) from {args:?}: {out}"));
    eprintln!("ballast-chaos run {args:?}: {report}");
    (status.code().unwrap_or(-1), report)
}

fn count(report: &Value, key: &str) -> u64 {
    report["faults"][key].as_u64().unwrap_or(0)
}

fn assert_clean_busy_run(seed: &str) {
    assert_clean_busy_run_with(seed, "kept");
}

/// A 5-agent, 120 s run of `seed` with every fault kind must find no violation, commit
/// many handoffs and find every VM; `source_copy` is the sim hypervisors' mode.
fn assert_clean_busy_run_with(seed: &str, source_copy: &str) {
    eprintln!("chaos seed {seed}, source copy {source_copy}");
    let (code, r) = chaos_run(
        &[
            "--agents",
            "5",
            "--duration",
            "120",
            "--seed",
            seed,
            "--source-copy",
            source_copy,
        ],
        Duration::from_secs(420),
    );
    assert_eq!(r["source_copy"].as_str(), Some(source_copy));
    assert_eq!(r["seed"].as_u64(), seed.parse().ok(), "seed echoed");
    assert_eq!(
        r["violations"].as_array().map(Vec::len),
        Some(0),
        "seed {seed}: violations: {}",
        r["violations"]
    );
    assert_eq!(code, 0, "seed {seed}: exit status");
    for kind in ["kill", "pause", "partition"] {
        assert!(
            count(&r, kind) >= 3,
            "seed {seed}: {kind} only {} times: {}",
            count(&r, kind),
            r["faults"]
        );
    }
    let committed = r["handoffs_committed"].as_u64().unwrap_or(0);
    assert!(
        committed >= 50,
        "seed {seed}: only {committed} handoffs committed"
    );
    assert_eq!(r["vms_found"], r["vms_expected"], "seed {seed}");
    assert!(r["vms_expected"].as_u64().unwrap_or(0) > 0);
}

#[test]
fn chaos_seed_1_holds_every_invariant() {
    assert_clean_busy_run("1");
}

#[test]
fn chaos_seed_2_holds_every_invariant() {
    assert_clean_busy_run("2");
}

/// Sim hypervisors that end the source copy at the switchover, as libvirt does: every
/// handoff whose migration completed must roll forward through every fault.
#[test]
fn chaos_seed_4_holds_every_invariant_when_the_source_copy_ends() {
    assert_clean_busy_run_with("4", "ended");
}

#[test]
fn a_planted_handoff_bug_is_reported() {
    eprintln!("chaos seed 3, planted bug promote-on-timeout");
    let (code, r) = chaos_run(
        &[
            "--agents",
            "4",
            "--duration",
            "30",
            "--seed",
            "3",
            "--settle",
            "15",
            "--plant-bug",
            "promote-on-timeout",
        ],
        Duration::from_secs(240),
    );
    let violations = r["violations"].as_array().cloned().unwrap_or_default();
    assert!(
        !violations.is_empty(),
        "the planted bug went unnoticed: {r}"
    );
    assert!(
        violations
            .iter()
            .any(|v| v["invariant"] == "I1" || v["invariant"] == "I2"),
        "expected I1 or I2 among {violations:?}"
    );
    assert!(violations
        .iter()
        .all(|v| !v["evidence"].as_str().unwrap_or("").is_empty()));
    assert_eq!(code, 1, "exit status 1 on violations");
}
