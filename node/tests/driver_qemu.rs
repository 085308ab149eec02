//! The `qemu` driver against real QEMU (TCG, or KVM where `/dev/kvm` works): the
//! conformance suite, an end-to-end live migration between two "hosts" (two state
//! directories), a cancelled migration, and the bare-QMP migration timing used by
//! `ballast bench handoff`. Every test kills its QEMU processes on teardown, also when
//! it fails, and runs under a time limit.

mod common;

use ballast_node::driver::qemu::{bench, guest, Accel, QemuConfig, QemuDriver};
use ballast_node::driver::{Driver, DriverError, MigrationStatus, VmRunState};
use ballast_store::{VmId, VmSpec};
use common::conformance::{self, state_of, wait_cpu_above, wait_state};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Upper bound of one test's run time.
const TEST_LIMIT: Duration = Duration::from_secs(300);

/// A scratch area with two state dirs and disk images; kills every QEMU it holds on drop.
struct Hosts {
    root: tempfile::TempDir,
    images: AtomicUsize,
}

impl Hosts {
    fn new() -> Self {
        // Short paths: a QMP socket path must fit in 107 bytes.
        let root = tempfile::Builder::new()
            .prefix("bq")
            .tempdir_in("/tmp")
            .expect("tempdir");
        Self {
            root,
            images: AtomicUsize::new(0),
        }
    }

    fn state_dir(&self, host: &str) -> PathBuf {
        self.root.path().join(host)
    }

    fn config(&self, host: &str, ports: [u16; 2]) -> QemuConfig {
        QemuConfig {
            state_dir: self.state_dir(host),
            accel: Accel::Auto,
            port_range: ports,
            ..QemuConfig::default()
        }
    }

    fn driver(&self, host: &str, ports: [u16; 2]) -> QemuDriver {
        QemuDriver::new(self.config(host, ports)).expect("driver")
    }

    /// A spec with a fresh boot image (one image per VM; a migration shares it).
    fn spec(&self) -> VmSpec {
        let n = self.images.fetch_add(1, Ordering::Relaxed);
        let img = self.root.path().join(format!("boot{n}.img"));
        guest::write_boot_image(&img).expect("write image");
        guest::demo_spec(&img, 64)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for host in ["a", "b", "c"] {
            QemuDriver::kill_all_in(&self.state_dir(host));
        }
    }
}

async fn limited<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_LIMIT, f)
        .await
        .expect("test ran past its time limit");
}

fn pid_in(state_dir: &Path, vm: &str) -> u32 {
    let text = std::fs::read_to_string(state_dir.join(vm).join("qemu.pid")).expect("pid file");
    text.trim().parse().expect("pid")
}

fn process_exists(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// `query-status` over a fresh raw QMP connection (no driver code involved).
async fn raw_query_status(sock: &Path) -> String {
    let stream = tokio::net::UnixStream::connect(sock)
        .await
        .expect("connect QMP");
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let mut reply = async || loop {
        let line = lines.next_line().await.expect("read").expect("QMP closed");
        let v: serde_json::Value = serde_json::from_str(&line).expect("QMP JSON");
        if v.get("event").is_none() {
            return v;
        }
    };
    let greeting = reply().await;
    assert!(greeting.get("QMP").is_some(), "no QMP greeting: {greeting}");
    w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
        .await
        .expect("write");
    reply().await;
    w.write_all(b"{\"execute\":\"query-status\"}\n")
        .await
        .expect("write");
    let v = reply().await;
    v["return"]["status"].as_str().expect("status").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let hosts = Hosts::new();
    limited(async {
        // TCG explicitly: the software path must work everywhere (the other tests use
        // `auto`, i.e. KVM where /dev/kvm works).
        let tcg = |host, ports| {
            QemuDriver::new(QemuConfig {
                accel: Accel::Tcg,
                ..hosts.config(host, ports)
            })
            .expect("driver")
        };
        let a = tcg("a", [21_100, 21_149]);
        let b = tcg("b", [21_150, 21_199]);
        conformance::run_all(&a, &b, &|| hosts.spec()).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_adopt_after_restart() {
    let hosts = Hosts::new();
    limited(async {
        let make = || async { hosts.driver("a", [21_200, 21_249]) };
        conformance::adopt_after_restart(make, &|| hosts.spec()).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_migration_between_two_hosts() {
    let hosts = Hosts::new();
    limited(async {
        let vm = VmId::from("mig1");
        let spec = hosts.spec();
        let a = hosts.driver("a", [21_250, 21_299]);
        let b = hosts.driver("b", [21_300, 21_349]);
        a.start(&vm, &spec).await.expect("start");
        wait_state(&a, &vm, "Running", |s| s == Some(VmRunState::Running)).await;

        // Usage sampled twice; CPU time grows.
        let u1 = wait_cpu_above(&a, &vm, 0.0).await;
        let u2 = wait_cpu_above(&a, &vm, u1.cpu_time_s).await;
        assert!(
            u2.cpu_time_s > u1.cpu_time_s && u2.mem_bytes > 0,
            "{u1:?} {u2:?}"
        );
        let src_pid = pid_in(&hosts.state_dir("a"), "mig1");

        let target = b.prepare_incoming(&vm, &spec).await.expect("prepare");
        assert!(
            target.0.starts_with("tcp:127.0.0.1:21"),
            "target {target:?}"
        );
        let seen = std::sync::Mutex::new(Vec::new());
        let progress = |p| seen.lock().expect("lock").push(p);
        a.migrate_out(&vm, &target, &progress)
            .await
            .expect("migrate");
        assert!(
            !seen.lock().expect("lock").is_empty(),
            "no progress reported"
        );
        assert_eq!(
            a.migration_status(&vm).await.expect("status"),
            MigrationStatus::Completed
        );
        assert_eq!(state_of(&a, &vm).await, Some(VmRunState::Paused));
        assert!(b.incoming_complete(&vm).await.expect("complete"));
        b.resume_incoming(&vm).await.expect("resume");
        a.finish_outgoing(&vm).await.expect("finish");

        // The source process is gone; the destination runs on.
        assert!(
            !process_exists(src_pid),
            "source QEMU {src_pid} still exists"
        );
        assert_eq!(state_of(&a, &vm).await, None);
        let d1 = b.usage(&vm).await.expect("usage on b");

        // Wipe the source host entirely: nothing changes on the destination.
        drop(a);
        std::fs::remove_dir_all(hosts.state_dir("a")).expect("wipe host a");
        wait_cpu_above(&b, &vm, d1.cpu_time_s).await;
        assert_eq!(state_of(&b, &vm).await, Some(VmRunState::Running));

        // An independent QMP client (after the agent let go) sees it running.
        drop(b);
        let sock = hosts.state_dir("b").join("mig1").join("qmp.sock");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&sock).expect("socket").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "QMP socket mode");
        assert_eq!(raw_query_status(&sock).await, "running");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_migration_keeps_source_and_drops_destination() {
    let hosts = Hosts::new();
    limited(async {
        let vm = VmId::from("mig2");
        let spec = hosts.spec();
        // 1 Mbit/s: the transfer takes seconds, long enough to cancel mid-way.
        let slow = QemuConfig {
            bandwidth_mbps: 1,
            ..hosts.config("a", [21_350, 21_399])
        };
        let a = QemuDriver::new(slow).expect("driver");
        let b = hosts.driver("b", [21_400, 21_449]);
        a.start(&vm, &spec).await.expect("start");
        let before = wait_cpu_above(&a, &vm, 0.0).await;
        let target = b.prepare_incoming(&vm, &spec).await.expect("prepare");
        let dst_pid = pid_in(&hosts.state_dir("b"), "mig2");

        let no_progress = |_| {};
        let migrate = a.migrate_out(&vm, &target, &no_progress);
        let cancel = async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while a.migration_status(&vm).await.expect("status") != MigrationStatus::Active {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "migration never active"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            a.cancel_outgoing(&vm).await.expect("cancel_outgoing");
        };
        let (r, ()) = tokio::join!(migrate, cancel);
        assert!(
            matches!(r, Err(DriverError::MigrationFailed { .. })),
            "got {r:?}"
        );
        b.cancel_incoming(&vm).await.expect("cancel_incoming");

        wait_state(&a, &vm, "Running", |s| s == Some(VmRunState::Running)).await;
        assert_ne!(
            a.migration_status(&vm).await.expect("status"),
            MigrationStatus::Completed
        );
        wait_cpu_above(&a, &vm, before.cpu_time_s).await;
        assert_eq!(state_of(&b, &vm).await, None);
        assert!(
            !process_exists(dst_pid),
            "destination QEMU {dst_pid} still exists"
        );
        a.stop(&vm).await.expect("stop");
    })
    .await;
}

/// `resume_incoming` called while the migration is still under way (before the source
/// has even seen `completed`) waits until the copy has loaded the whole state, then
/// runs it (an early `cont` would take the disk locks from the running source).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_during_the_migration_runs_the_copy_once_loaded() {
    let hosts = Hosts::new();
    limited(async {
        let vm = VmId::from("early");
        let spec = hosts.spec();
        let a = hosts.driver("a", [21_520, 21_544]);
        let b = hosts.driver("b", [21_545, 21_569]);
        a.start(&vm, &spec).await.expect("start");
        wait_cpu_above(&a, &vm, 0.0).await;
        let target = b.prepare_incoming(&vm, &spec).await.expect("prepare");
        let (migrated, resumed) = tokio::join!(a.migrate_out(&vm, &target, &|_| {}), async {
            tokio::time::sleep(Duration::from_millis(2)).await;
            b.resume_incoming(&vm).await
        });
        migrated.expect("migrate");
        resumed.expect("resume");
        assert_eq!(state_of(&b, &vm).await, Some(VmRunState::Running));
        assert_eq!(state_of(&a, &vm).await, Some(VmRunState::Paused));
        let u = b.usage(&vm).await.expect("usage on b");
        wait_cpu_above(&b, &vm, u.cpu_time_s).await;
        a.finish_outgoing(&vm).await.expect("finish");
        b.stop(&vm).await.expect("stop");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_qmp_migration_timing() {
    let hosts = Hosts::new();
    limited(async {
        let cfg = hosts.config("c", [21_450, 21_499]);
        let spec = hosts.spec();
        // Back and forth: the second migration starts from the first one's copy.
        let mut bare = bench::BareMigrations::start(&cfg, &spec)
            .await
            .expect("start");
        for _ in 0..2 {
            let t = bare
                .migrate(Duration::from_millis(200))
                .await
                .expect("bench");
            println!("{t:?}");
            assert!(t.total_ms > 0.0 && t.total_ms.is_finite(), "{t:?}");
            assert!(t.launch_ms > 0.0 && t.migrate_ms > 0.0, "{t:?}");
            // The parts are consecutive (cont_ms is measured on QEMU's event clock, so
            // allow a millisecond of rounding).
            let parts = t.launch_ms + t.migrate_ms + t.cont_ms;
            assert!((t.total_ms - parts).abs() < 1.0, "parts {parts} vs {t:?}");
            // The guest is paused from the switchover until the destination runs.
            assert!(
                t.guest_paused_ms > 0.0 && t.guest_paused_ms < t.total_ms,
                "{t:?}"
            );
            assert!(t.transferred_bytes > 0, "{t:?}");
            assert!(t.qemu_total_ms.is_some(), "{t:?}");
        }
        // Exactly one copy runs, on the side it went to last (the first side again).
        assert_eq!(QemuDriver::kill_all_in(&cfg.state_dir.join("bench-1")), 0);
        bare.stop().await;
        assert!(
            !cfg.state_dir.join("bench-0").exists() && !cfg.state_dir.join("bench-1").exists(),
            "bench left its state behind"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_failures_are_reported() {
    let hosts = Hosts::new();
    limited(async {
        let vm = VmId::from("bad");
        let missing = QemuDriver::new(QemuConfig {
            binary: PathBuf::from("/nonexistent/qemu-system-x86_64"),
            ..hosts.config("a", [21_500, 21_509])
        })
        .expect("driver");
        let r = missing.start(&vm, &hosts.spec()).await;
        assert!(
            matches!(r, Err(DriverError::Io(_))),
            "missing binary: {r:?}"
        );
        assert_eq!(
            state_of(&missing, &vm).await,
            None,
            "failed start left a VM"
        );

        let b = hosts.driver("b", [21_510, 21_519]);
        let mut spec = hosts.spec();
        spec.memory_mib = 0;
        assert!(matches!(
            b.start(&vm, &spec).await,
            Err(DriverError::InvalidSpec(_))
        ));
        let mut spec = hosts.spec();
        spec.extra_args = vec!["-no-such-option".into()];
        let r = b.start(&vm, &spec).await;
        let Err(DriverError::Io(e)) = r else {
            panic!("QEMU refusing its arguments: {r:?}");
        };
        assert!(
            e.to_string().contains("no-such-option"),
            "message names the cause: {e}"
        );
        assert!(b.list().await.expect("list").is_empty());
    })
    .await;
}
