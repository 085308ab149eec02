//! `ballast driver check` as an operator runs it, on real QEMU: it passes (exit 0, every
//! case `ok`) on examples/qemu_plugin.py, and fails (exit 1, the case named with what
//! was expected and seen) on a variant that lists an incoming copy as running. Each run
//! is bounded in time; every QEMU under the test's state directories is killed by a
//! guard, also when the test fails.

mod cli_util;

use ballast_node::driver::qemu::QemuDriver;
use cli_util::{code, stderr, stdout};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Upper bound of one `ballast driver check` run.
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// The example plugin of the repository.
fn example_plugin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/qemu_plugin.py")
}

/// A temporary directory holding the plugins' state directories `a` and `b`; kills
/// every QEMU under them when dropped.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("bdc")
            .tempdir_in("/tmp")
            .expect("tempdir");
        Self(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for host in ["a", "b"] {
            QemuDriver::kill_all_in(&self.path().join(host));
        }
    }
}

/// `ballast driver check` on `python3 SCRIPT ARGS... --state-dir DIR/{host}
/// --port-range PORTS` plus `more`; killed past [`RUN_LIMIT`].
fn check(s: &Scratch, script: &Path, args: &[&str], ports: &str, more: &[&str]) -> Output {
    let state = format!("{}/{{host}}", s.path().display());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ballast"));
    cmd.args(["driver", "check", "--exec-command", "python3"])
        .arg("--exec-arg")
        .arg(script);
    for a in args
        .iter()
        .chain(&["--state-dir", &state, "--port-range", ports])
    {
        cmd.arg(format!("--exec-arg={a}"));
    }
    let child = cmd
        .args(more)
        .current_dir(s.path())
        .env_remove("BALLAST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ballast");
    wait_bounded(child)
}

/// Waits for `child` at most [`RUN_LIMIT`], killing it past that.
fn wait_bounded(mut child: std::process::Child) -> Output {
    let deadline = Instant::now() + RUN_LIMIT;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ballast driver check ran past {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn the_example_plugin_passes_every_case() {
    let s = Scratch::new();
    let o = check(&s, &example_plugin(), &[], "21800-21849", &[]);
    let out = stdout(&o);
    assert_eq!(code(&o), 0, "{out}{}", stderr(&o));
    for case in [
        "unknown_vm",
        "lifecycle",
        "prepare_incoming",
        "migrate_commit",
        "cancel_before_migrate",
        "cancel_after_switchover",
        "migrate_to_dead_target",
        "migrate_back_and_forth",
        "adopt_after_restart",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with("ok") && l.contains(case)),
            "{case} not passed: {out}"
        );
    }
    assert!(out.contains("9 of 9 cases passed"), "{out}");
    assert!(
        std::fs::read_dir(s.path().join("a"))
            .expect("state a")
            .next()
            .is_none(),
        "the check left VMs behind"
    );
}

/// The example plugin, except that an incoming copy (QEMU's `inmigrate`) is listed as
/// `running`: wrong right after `prepare_incoming`.
const WRONG_STATE_PY: &str = r#"
import importlib.util, sys
path = sys.argv.pop(1)
spec = importlib.util.spec_from_file_location("qemu_plugin", path)
plugin = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plugin)
plugin.RUN_STATES["inmigrate"] = "running"
plugin.main()
"#;

#[test]
fn a_plugin_listing_an_incoming_copy_as_running_fails_prepare_incoming() {
    let s = Scratch::new();
    let script = s.path().join("wrong_state.py");
    std::fs::write(&script, WRONG_STATE_PY).expect("write plugin");
    let example = example_plugin();
    let o = check(
        &s,
        &script,
        &[&example.to_string_lossy()],
        "21850-21899",
        &["--case", "lifecycle", "--case", "prepare_incoming"],
    );
    let (out, err) = (stdout(&o), stderr(&o));
    assert_eq!(code(&o), 1, "{out}{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok") && l.contains("lifecycle")),
        "{out}"
    );
    let fail = out
        .lines()
        .find(|l| l.starts_with("FAIL") && l.contains("prepare_incoming"))
        .unwrap_or_else(|| panic!("prepare_incoming not failed: {out}"));
    assert!(
        fail.contains("list after prepare_incoming")
            && fail.contains("expected Incoming or Paused")
            && fail.contains("got Running"),
        "{fail}"
    );
    assert!(out.contains("1 of 2 cases passed"), "{out}");
    assert!(err.contains("the plugin failed prepare_incoming"), "{err}");
}
