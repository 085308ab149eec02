//! The `exec` driver: the conformance suite on the example Python plugin (which drives
//! real QEMU over QMP), and misbehaving plugins — garbage, hangs, exits, over-long
//! lines, replies to unknown requests — each giving a clear `DriverError`, followed by a
//! restart on the next call. Every test runs under a time limit and kills its QEMU
//! processes on teardown.

mod common;

use ballast_node::driver::exec::{ExecConfig, ExecDriver};
use ballast_node::driver::qemu::{guest, QemuDriver};
use ballast_node::driver::{Driver, DriverError, MigrationTarget, SourceCopy};
use ballast_node::units::Millis;
use ballast_store::{VmId, VmSpec};
use common::conformance;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Upper bound of one test's run time.
const TEST_LIMIT: Duration = Duration::from_secs(300);

async fn limited<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_LIMIT, f)
        .await
        .expect("test ran past its time limit");
}

fn example_plugin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/qemu_plugin.py")
}

/// Scratch space for plugins and VMs; kills every QEMU under it on drop.
struct Scratch {
    root: tempfile::TempDir,
    images: AtomicUsize,
}

impl Scratch {
    fn new() -> Self {
        let root = tempfile::Builder::new()
            .prefix("be")
            .tempdir_in("/tmp")
            .expect("tempdir");
        Self {
            root,
            images: AtomicUsize::new(0),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    fn qemu_plugin(&self, host: &str, ports: &str) -> ExecDriver {
        let cfg = ExecConfig {
            command: vec![
                "python3".into(),
                example_plugin().to_string_lossy().into_owned(),
                "--state-dir".into(),
                self.path(host).to_string_lossy().into_owned(),
                "--port-range".into(),
                ports.into(),
            ],
            restart_backoff: Millis::new(10),
            ..ExecConfig::default()
        };
        ExecDriver::new(cfg).expect("driver")
    }

    fn spec(&self) -> VmSpec {
        let n = self.images.fetch_add(1, Ordering::Relaxed);
        let img = self.path(&format!("boot{n}.img"));
        guest::write_boot_image(&img).expect("image");
        guest::demo_spec(&img, 64)
    }

    /// A misbehaving plugin: `script` (shell) gets the start-counter file as `$1`.
    fn bad_plugin(&self, name: &str, script: &str, timeout_ms: u64) -> ExecDriver {
        let path = self.path(name);
        std::fs::write(&path, script).expect("write plugin");
        let cfg = ExecConfig {
            command: vec![
                "sh".into(),
                path.to_string_lossy().into_owned(),
                self.path(&format!("{name}.starts"))
                    .to_string_lossy()
                    .into_owned(),
            ],
            timeout: Millis::new(timeout_ms),
            hello_timeout: Millis::new(timeout_ms),
            restart_backoff: Millis::new(10),
            max_line_bytes: 64 * 1024,
            ..ExecConfig::default()
        };
        ExecDriver::new(cfg).expect("driver")
    }

    /// A plugin that answers `hello` properly and then behaves as `mode` says.
    fn flaky_plugin(&self, mode: &str, timeout_ms: u64) -> ExecDriver {
        self.flaky_plugin_leaving(mode, timeout_ms, SourceCopy::Kept)
    }

    /// [`Self::flaky_plugin`], with `driver.exec.source_copy` set.
    fn flaky_plugin_leaving(&self, mode: &str, timeout_ms: u64, source: SourceCopy) -> ExecDriver {
        let path = self.path("flaky.py");
        std::fs::write(&path, FLAKY_PY).expect("write plugin");
        let cfg = ExecConfig {
            command: vec![
                "python3".into(),
                path.to_string_lossy().into_owned(),
                mode.into(),
                self.path(&format!("{mode}.starts"))
                    .to_string_lossy()
                    .into_owned(),
            ],
            timeout: Millis::new(timeout_ms),
            restart_backoff: Millis::new(10),
            max_line_bytes: 64 * 1024,
            source_copy: source,
            ..ExecConfig::default()
        };
        ExecDriver::new(cfg).expect("driver")
    }

    fn starts(&self, name: &str) -> usize {
        std::fs::read_to_string(self.path(&format!("{name}.starts")))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for host in ["a", "b"] {
            QemuDriver::kill_all_in(&self.path(host));
        }
    }
}

/// Answers `hello`, then misbehaves as argv[1] says; appends a line to argv[2] per start.
const FLAKY_PY: &str = r#"
import json, sys, time
mode, counter = sys.argv[1], sys.argv[2]
with open(counter, "a") as f:
    f.write("start\n")
def send(o):
    sys.stdout.write(json.dumps(o) + "\n"); sys.stdout.flush()
for line in sys.stdin:
    req = json.loads(line); rid, m, p = req["id"], req["method"], req.get("params", {})
    if m == "hello":
        hello = {"protocol": 2 if mode == "protocol_2" else 1, "name": "flaky"}
        if mode.startswith("source_copy_"):
            hello["source_copy"] = mode[len("source_copy_"):]
        send({"id": rid, "result": hello}); continue
    if m == "list":
        if mode == "garbage_on_list":
            print("Traceback (most recent call last): oops", flush=True); continue
        if mode == "hang_on_list":
            time.sleep(600)
        if mode == "huge_on_list":
            send({"id": rid, "result": [{"vm": "x" * 200000, "state": "running"}]}); continue
        if mode == "unknown_id_on_list":
            send({"id": rid + 1000, "result": []}); continue
        if mode == "bad_result_on_list":
            send({"id": rid, "result": {"not": "a list"}}); continue
        send({"id": rid, "result": []}); continue
    if m == "usage" and mode == "exit_on_usage":
        sys.exit(4)
    if m == "migrate_out":
        for i in range(3):
            send({"id": rid, "progress": {"transferred_bytes": i, "remaining_bytes": 3 - i}})
        send({"id": rid, "result": None}); continue
    # Error replies: the VM's name is the error kind.
    send({"id": rid, "error": {"kind": p.get("vm", "io"), "message": "as asked"}})
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_on_example_plugin() {
    let s = Scratch::new();
    limited(async {
        let a = s.qemu_plugin("a", "21600-21649");
        let b = s.qemu_plugin("b", "21650-21699");
        conformance::run_all(&a, &b, &|| s.spec()).await;
        assert_eq!(
            a.plugin_starts().await,
            1,
            "the plugin never needed a restart"
        );
    })
    .await;
}

/// The example plugin's `hello` lists only shared storage: a VM on local disks is
/// refused before its paused copy would start on an empty disk; a shared one is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_without_local_storage_refuses_a_local_disk_vm() {
    let s = Scratch::new();
    limited(async {
        let b = s.qemu_plugin("b", "21750-21759");
        let vm = VmId::from("loc1");
        let mut spec = s.spec();
        spec.driver_opts.insert("storage".into(), "local".into());
        match b.prepare_incoming(&vm, &spec).await {
            Err(DriverError::InvalidSpec(why)) => assert!(why.contains("local"), "{why}"),
            other => panic!("expected invalid_spec, got {other:?}"),
        }
        assert!(
            b.list().await.expect("list").is_empty(),
            "a copy was started"
        );
        spec.driver_opts.insert("storage".into(), "shared".into());
        b.prepare_incoming(&vm, &spec)
            .await
            .expect("shared storage is fine");
        b.cancel_incoming(&vm).await.expect("cancel");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_adopt_on_example_plugin() {
    let s = Scratch::new();
    limited(async {
        let make = || async { s.qemu_plugin("a", "21700-21749") };
        conformance::adopt_after_restart(make, &|| s.spec()).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_a_protocol_error_and_the_plugin_restarts() {
    let s = Scratch::new();
    limited(async {
        let d = s.bad_plugin(
            "junk",
            "echo start >> \"$1\"\necho 'this is not JSON'\nexec cat > /dev/null\n",
            5_000,
        );
        let r = d.list().await;
        let Err(e @ DriverError::PluginDied { .. }) = &r else {
            panic!("garbage: {r:?}");
        };
        let msg = e.to_string();
        let script = s.path("junk").display().to_string();
        assert_eq!(
            msg,
            format!(
                "during hello, exec plugin {script} printed a line that is not a JSON object \
                 (expected ident at line 1 column 2): \"this is not JSON\"; \
                 it is restarted on the next call"
            ),
            "message says what went wrong"
        );
        assert!(d.list().await.is_err());
        assert_eq!(s.starts("junk"), 2, "restarted on the next call");
        assert_eq!(d.plugin_starts().await, 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_plugin_times_out_and_restarts() {
    let s = Scratch::new();
    limited(async {
        let d = s.bad_plugin("hang", "echo start >> \"$1\"\nexec sleep 600\n", 300);
        let r = d.list().await;
        assert!(matches!(r, Err(DriverError::Timeout(_))), "hang: {r:?}");
        let r = d.usage(&VmId::from("v")).await;
        assert!(
            matches!(r, Err(DriverError::Timeout(_))),
            "hang again: {r:?}"
        );
        assert_eq!(s.starts("hang"), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exiting_plugin_is_reported_and_restarted() {
    let s = Scratch::new();
    limited(async {
        let d = s.bad_plugin("exit", "echo start >> \"$1\"\nexit 3\n", 5_000);
        let r = d.list().await;
        let Err(DriverError::PluginDied { reason, .. }) = &r else {
            panic!("exit: {r:?}");
        };
        assert!(
            reason == "exited (exit status: 3)" || reason.starts_with("could not be written to"),
            "{reason}"
        );
        assert!(d.list().await.is_err());
        assert_eq!(s.starts("exit"), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaviour_after_the_handshake() {
    let s = Scratch::new();
    limited(async {
        let vm = VmId::from("v");
        // Exits in the middle of a call; the next call gets a fresh plugin that works.
        let d = s.flaky_plugin("exit_on_usage", 5_000);
        assert_eq!(d.list().await.expect("list"), vec![]);
        let r = d.usage(&vm).await;
        let flaky = s.path("flaky.py").display().to_string();
        assert_eq!(
            r.expect_err("the plugin exited").to_string(),
            format!(
                "during usage, exec plugin {flaky} exited (exit status: 4); \
                 it is restarted on the next call"
            )
        );
        assert_eq!(d.list().await.expect("list after restart"), vec![]);
        assert_eq!(s.starts("exit_on_usage"), 2);

        for (mode, what) in [
            ("garbage_on_list", "printed a line that is not a JSON object"),
            ("huge_on_list", "printed a line longer than 65536 bytes"),
            ("unknown_id_on_list", "replied to request 1002, which was never sent"),
        ] {
            let d = s.flaky_plugin(mode, 5_000);
            let r = d.list().await;
            assert!(
                matches!(&r, Err(DriverError::PluginDied { op: "list", reason, .. }) if reason.starts_with(what)),
                "{mode}: {r:?}"
            );
        }
        let d = s.flaky_plugin("bad_result_on_list", 5_000);
        let r = d.list().await;
        assert_eq!(
            r.expect_err("bad result").to_string(),
            "hypervisor protocol error: plugin returned a bad result for list: {\"not\":\"a list\"}"
        );

        let d = s.flaky_plugin("hang_on_list", 2_000);
        assert_eq!(
            d.list().await.expect_err("hung").to_string(),
            format!(
                "hypervisor timed out: exec plugin {flaky} did not answer list within 2000 ms; \
                 it was killed and is restarted on the next call"
            )
        );
        // The hung plugin was killed; a new one answers other calls.
        let r = d.usage(&VmId::from("not_found")).await;
        assert!(matches!(r, Err(DriverError::NotFound(_))), "{r:?}");
        assert_eq!(s.starts("hang_on_list"), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_objects_and_progress_reach_the_caller() {
    let s = Scratch::new();
    limited(async {
        let d = s.flaky_plugin("errors", 5_000);
        let e = |kind: &str| VmId::from(kind);
        assert!(matches!(
            d.usage(&e("not_found")).await,
            Err(DriverError::NotFound(_))
        ));
        assert!(matches!(
            d.stop(&e("bad_state")).await,
            Err(DriverError::BadState { .. })
        ));
        assert!(matches!(
            d.cancel_outgoing(&e("migration_failed")).await,
            Err(DriverError::MigrationFailed { .. })
        ));
        assert!(matches!(
            d.cancel_outgoing(&e("switched_over")).await,
            Err(DriverError::SwitchedOver(_))
        ));
        assert!(matches!(
            d.stop(&e("timeout")).await,
            Err(DriverError::Timeout(_))
        ));
        assert!(matches!(
            d.stop(&e("invalid_spec")).await,
            Err(DriverError::InvalidSpec(_))
        ));
        assert!(matches!(d.stop(&e("io")).await, Err(DriverError::Io(_))));
        let r = d.stop(&e("internal")).await;
        assert!(
            matches!(&r, Err(DriverError::Hypervisor { op: "stop", reason }) if reason == "as asked"),
            "an error reply is no protocol error: {r:?}"
        );
        assert_eq!(
            d.stop(&e("unsupported")).await.expect_err("refused").to_string(),
            "hypervisor stop failed: unsupported: as asked"
        );
        assert!(matches!(
            d.stop(&e("no_room")).await,
            Err(DriverError::NoRoom(_))
        ));
        // Error replies are normal: the plugin was not restarted.
        assert_eq!(s.starts("errors"), 1);

        let seen = std::sync::Mutex::new(Vec::new());
        let progress = |p| seen.lock().expect("lock").push(p);
        let target = MigrationTarget("tcp:127.0.0.1:1".into());
        d.migrate_out(&e("v"), &target, &progress)
            .await
            .expect("migrate");
        let seen = seen.into_inner().expect("lock");
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!(seen[2].transferred_bytes, 2);
    })
    .await;
}

/// A plugin says in `hello` what its migrations leave of the source copy; the agent's
/// setting must agree, else the plugin is refused with a message naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_ends_the_source_must_be_configured_so() {
    let s = Scratch::new();
    limited(async {
        let d = s.flaky_plugin("source_copy_ended", 5_000);
        assert_eq!(d.source_copy(), SourceCopy::Kept);
        match d.list().await {
            Err(DriverError::Protocol(m)) => assert!(m.contains("driver.exec.source_copy"), "{m}"),
            other => panic!("a mismatch must refuse the plugin: {other:?}"),
        }
        let d = s.flaky_plugin("protocol_2", 5_000);
        let flaky = s.path("flaky.py").display().to_string();
        assert_eq!(
            d.list().await.expect_err("refused").to_string(),
            format!(
                "hypervisor protocol error: exec plugin {flaky} speaks protocol 2, this agent 1"
            )
        );
        let d = s.flaky_plugin_leaving("source_copy_ended", 5_000, SourceCopy::Ended);
        assert_eq!(d.source_copy(), SourceCopy::Ended);
        assert!(d.list().await.expect("list").is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_program_is_an_io_error() {
    let d = ExecDriver::new(ExecConfig {
        command: vec!["/nonexistent/plugin".into()],
        restart_backoff: Millis::new(1),
        ..ExecConfig::default()
    })
    .expect("driver");
    let r = tokio::time::timeout(TEST_LIMIT, d.list())
        .await
        .expect("in time");
    assert!(matches!(r, Err(DriverError::Io(_))), "{r:?}");
    assert!(
        ExecDriver::new(ExecConfig::default()).is_err(),
        "empty command refused"
    );
}
