//! The `qemu` driver moving VMs on local disks (block mirror over NBD) between two
//! "hosts" that share no file: two state directories and two image directories. The
//! guest writes a counter to its disk at every timer tick all along (`guest` module's disk
//! writer), so each test checks the disk that arrives against the source's at the
//! switchover, and that an abort leaves the source's disk as it was and nothing on the
//! destination. Real QEMU (TCG, or KVM where it works); every QEMU is killed on teardown.

use ballast_node::driver::qemu::{guest, Accel, QemuConfig, QemuDriver};
use ballast_node::driver::{Driver, DriverError, MigrationStatus, VmRunState};
use ballast_store::{VmId, VmSpec};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Upper bound of one test's run time.
const TEST_LIMIT: Duration = Duration::from_secs(300);
const MIB: u64 = 1024 * 1024;

/// Two hosts' directories under one scratch root; kills every QEMU on drop.
struct Hosts {
    root: tempfile::TempDir,
}

impl Hosts {
    fn new() -> Self {
        // Short paths: a QMP socket path must fit in 107 bytes.
        let root = tempfile::Builder::new()
            .prefix("bl")
            .tempdir_in("/tmp")
            .expect("tempdir");
        Self { root }
    }

    fn images(&self, host: &str) -> PathBuf {
        self.root.path().join(format!("{host}-img"))
    }

    fn config(&self, host: &str, ports: [u16; 2]) -> QemuConfig {
        let images = self.images(host);
        std::fs::create_dir_all(&images).expect("image dir");
        QemuConfig {
            state_dir: self.root.path().join(host),
            image_dir: images,
            accel: Accel::Auto,
            port_range: ports,
            ..QemuConfig::default()
        }
    }

    /// A qcow2 disk `name` on `host` holding the disk writer and `data_mib` MiB of data.
    fn make_disk(&self, host: &str, name: &str, size: u64, data_mib: u64) -> PathBuf {
        let raw = self.root.path().join(format!("{name}.raw"));
        guest::write_disk_writer_image(&raw, size, data_mib, 0x5eed).expect("image");
        std::fs::create_dir_all(self.images(host)).expect("image dir");
        let path = self.images(host).join(name);
        qemu_img(&["convert", "-q", "-O", "qcow2"], &[&raw, &path]);
        std::fs::remove_file(&raw).expect("rm raw");
        path
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for host in ["a", "b"] {
            QemuDriver::kill_all_in(&self.root.path().join(host));
        }
    }
}

fn qemu_img(args: &[&str], paths: &[&Path]) {
    let out = Command::new("qemu-img")
        .args(args)
        .args(paths)
        .output()
        .expect("run qemu-img");
    assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
}

/// The disk's guest-visible bytes (read while a VM may have it open).
fn contents(path: &Path) -> Vec<u8> {
    let raw = path.with_extension("check.raw");
    qemu_img(&["convert", "-U", "-q", "-O", "raw"], &[path, &raw]);
    let bytes = std::fs::read(&raw).expect("read raw");
    std::fs::remove_file(&raw).expect("rm raw");
    bytes
}

/// The bytes outside the disk writer's counter.
fn without_counter(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes[guest::COUNTER_BYTES].fill(0);
    bytes
}

fn counter(path: &Path) -> u32 {
    guest::disk_writer_counter(&contents(path)).unwrap_or(0)
}

/// Waits until the guest on `path` has written its counter past `above`.
async fn wait_counter_above(path: &Path, above: u32) -> u32 {
    for _ in 0..300 {
        let c = counter(path);
        if c > above {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the guest on {} stopped writing (counter {above})",
        path.display()
    );
}

fn spec(disk: &str) -> VmSpec {
    VmSpec {
        vcpus: 1,
        memory_mib: 64,
        disks: vec![disk.to_owned()],
        ..VmSpec::default()
    }
}

/// Files left in a directory (recursively), for "nothing left behind" checks.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_in(&p));
        } else {
            out.push(p);
        }
    }
    out
}

async fn limited<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_LIMIT, f)
        .await
        .expect("test ran past its time limit");
}

/// Moves `vm` from `a` to `b` through the driver calls the handoff makes.
async fn move_vm(a: &QemuDriver, b: &QemuDriver, vm: &VmId, spec: &VmSpec) -> VmSpec {
    let spec = a
        .current_spec(vm, spec)
        .await
        .expect("spec")
        .unwrap_or_else(|| spec.clone());
    assert!(
        spec.driver_opts.keys().any(|k| k.starts_with("qemu.disk.")),
        "no copy record in {spec:?}"
    );
    let target = b.prepare_incoming(vm, &spec).await.expect("prepare");
    assert!(target.0.contains(";nbd:"), "target {target:?}");
    let seen = std::sync::Mutex::new(Vec::new());
    let progress = |p| seen.lock().expect("lock").push(p);
    a.migrate_out(vm, &target, &progress)
        .await
        .expect("migrate");
    let last = seen
        .lock()
        .expect("lock")
        .last()
        .copied()
        .expect("progress");
    assert!(last.transferred_bytes >= MIB, "progress {last:?}");
    assert_eq!(
        a.migration_status(vm).await.expect("status"),
        MigrationStatus::Completed
    );
    assert!(b.incoming_complete(vm).await.expect("complete"));
    b.resume_incoming(vm).await.expect("resume");
    a.finish_outgoing(vm).await.expect("finish");
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writing_guest_moves_with_its_local_disk_and_back() {
    let hosts = Hosts::new();
    limited(async {
        let vm = VmId::from("w1");
        let src = hosts.make_disk("a", "w1.qcow2", 256 * MIB, 16);
        let spec = spec("w1.qcow2");
        let a = QemuDriver::new(QemuConfig {
            keep_source_disks: true,
            ..hosts.config("a", [23_000, 23_049])
        })
        .expect("driver a");
        let b = QemuDriver::new(hosts.config("b", [23_050, 23_099])).expect("driver b");
        a.start(&vm, &spec).await.expect("start");
        let before = wait_counter_above(&src, 3).await;

        let spec = move_vm(&a, &b, &vm, &spec).await;
        let dst = hosts.images("b").join("w1.qcow2");
        // a's copy was kept, renamed, as it was at the switchover.
        assert!(!src.exists(), "a's disk still under its name");
        let kept: Vec<PathBuf> = files_in(&hosts.images("a"))
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("w1.qcow2.moved-"))
            .collect();
        assert_eq!(kept.len(), 1, "{kept:?}");
        let at_switchover = contents(&kept[0]);
        let on_b = contents(&dst);
        let (c_a, c_b) = (
            guest::disk_writer_counter(&at_switchover).expect("counter on a"),
            guest::disk_writer_counter(&on_b).expect("counter on b"),
        );
        eprintln!("counter: {before} before, {c_a} at the switchover, {c_b} on b");
        assert!(c_a >= before && c_b >= c_a, "counter went back");
        assert!(
            without_counter(at_switchover) == without_counter(on_b),
            "b's disk differs from a's at the switchover"
        );
        // The guest goes on writing on b.
        assert_eq!(b.list().await.expect("list")[0].state, VmRunState::Running);
        wait_counter_above(&dst, c_b).await;

        // And back to a (deleting b's copy this time): a gets a fresh file.
        std::fs::remove_file(&kept[0]).expect("rm kept");
        move_vm(&b, &a, &vm, &spec).await;
        assert!(!dst.exists(), "b's disk was not deleted");
        let c = wait_counter_above(&src, c_b).await;
        eprintln!("counter on a after moving back: {c}");
        assert!(files_in(&hosts.images("b")).is_empty());
        assert!(files_in(&hosts.root.path().join("b")).is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborts_keep_the_source_disk_and_leave_nothing_on_the_destination() {
    let hosts = Hosts::new();
    limited(async {
        let vm = VmId::from("w2");
        let src = hosts.make_disk("a", "w2.qcow2", 64 * MIB, 24);
        let a = QemuDriver::new(QemuConfig {
            // 8 Mbit/s: the 24 MiB copy takes ~25 s, so it is cancelled mid-way.
            bandwidth_mbps: 8,
            ..hosts.config("a", [23_100, 23_149])
        })
        .expect("driver a");
        let b = QemuDriver::new(hosts.config("b", [23_150, 23_199])).expect("driver b");
        let spec = spec("w2.qcow2");
        a.start(&vm, &spec).await.expect("start");
        wait_counter_above(&src, 2).await;
        let original = without_counter(contents(&src));

        // 1. Cancelled while the mirror copies.
        let spec = a
            .current_spec(&vm, &spec)
            .await
            .expect("spec")
            .expect("records");
        let target = b.prepare_incoming(&vm, &spec).await.expect("prepare");
        assert!(hosts.images("b").join("w2.qcow2").exists());
        let migrate = async { a.migrate_out(&vm, &target, &|_| {}).await };
        let cancel = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            a.cancel_outgoing(&vm).await
        };
        let (migrated, cancelled) = tokio::join!(migrate, cancel);
        assert!(migrated.is_err(), "the migration was not stopped");
        cancelled.expect("cancel");
        b.cancel_incoming(&vm).await.expect("cancel incoming");
        assert!(
            files_in(&hosts.images("b")).is_empty(),
            "left on b: {:?}",
            files_in(&hosts.images("b"))
        );
        assert!(files_in(&hosts.root.path().join("b")).is_empty());
        let c = counter(&src);
        wait_counter_above(&src, c).await;
        assert!(
            original == without_counter(contents(&src)),
            "a's disk changed"
        );
        assert_ne!(
            a.migration_status(&vm).await.expect("status"),
            MigrationStatus::Completed
        );

        // 2. Aborted after the switchover (the destination holds memory and disk).
        drop(a); // one QMP client per QEMU: the slow driver lets go first
        let fast = QemuDriver::new(hosts.config("a", [23_100, 23_149])).expect("driver a");
        let target = b.prepare_incoming(&vm, &spec).await.expect("prepare");
        fast.migrate_out(&vm, &target, &|_| {})
            .await
            .expect("migrate");
        assert_eq!(state_of(&fast, &vm).await, Some(VmRunState::Paused));
        fast.cancel_outgoing(&vm)
            .await
            .expect("cancel after switchover");
        b.cancel_incoming(&vm).await.expect("cancel incoming");
        assert_eq!(state_of(&fast, &vm).await, Some(VmRunState::Running));
        assert_eq!(
            fast.migration_status(&vm).await.expect("status"),
            MigrationStatus::Failed,
            "a resumed source is not a completed migration"
        );
        assert!(files_in(&hosts.images("b")).is_empty());
        let c = counter(&src);
        wait_counter_above(&src, c).await;
        assert!(
            original == without_counter(contents(&src)),
            "a's disk changed"
        );
    })
    .await;
}

async fn state_of(d: &QemuDriver, vm: &VmId) -> Option<VmRunState> {
    d.list()
        .await
        .expect("list")
        .into_iter()
        .find(|i| &i.vm == vm)
        .map(|i| i.state)
}

/// A tmpfs of `mib` MiB mounted at `dir` (root only), unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: u64) -> Self {
        std::fs::create_dir_all(dir).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(out.status.success(), "mount tmpfs (needs root): {out:?}");
        Self(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_out_of_space_refuses_or_fails_the_copy_cleanly() {
    let hosts = Hosts::new();
    limited(async {
        let vm = VmId::from("w3");
        let src = hosts.make_disk("a", "w3.qcow2", 256 * MIB, 32);
        let a = QemuDriver::new(hosts.config("a", [23_200, 23_249])).expect("driver a");
        let spec = spec("w3.qcow2");
        a.start(&vm, &spec).await.expect("start");
        wait_counter_above(&src, 2).await;
        let original = without_counter(contents(&src));
        let spec = a.current_spec(&vm, &spec).await.expect("spec").expect("records");

        // Too small from the start: a clear refusal, nothing created.
        let small = Tmpfs::mount(&hosts.images("b"), 48);
        let b = QemuDriver::new(hosts.config("b", [23_250, 23_299])).expect("driver b");
        match b.prepare_incoming(&vm, &spec).await {
            Err(DriverError::NoRoom(why)) => eprintln!("refused: {why}"),
            other => panic!("expected NoRoom, got {other:?}"),
        }
        assert!(files_in(&hosts.images("b")).is_empty());
        drop(small);

        // Room at the check, filled up while the mirror copies.
        let _fs = Tmpfs::mount(&hosts.images("b"), 140);
        let target = b.prepare_incoming(&vm, &spec).await.expect("prepare");
        let filler = hosts.images("b").join("filler");
        let free = fs_free(&hosts.images("b"));
        std::fs::write(&filler, vec![0x11u8; usize::try_from(free - 4 * MIB).expect("size")])
            .expect("fill");
        let err = a
            .migrate_out(&vm, &target, &|_| {})
            .await
            .expect_err("the copy cannot fit");
        eprintln!("migration failed: {err}");
        assert!(
            matches!(err, DriverError::MigrationFailed { ref reason, .. } if reason.contains("disk mirror")),
            "{err:?}"
        );
        a.cancel_outgoing(&vm).await.expect("cancel");
        b.cancel_incoming(&vm).await.expect("cancel incoming");
        std::fs::remove_file(&filler).expect("rm filler");
        assert!(files_in(&hosts.images("b")).is_empty(), "left on b");
        assert_eq!(state_of(&a, &vm).await, Some(VmRunState::Running));
        let c = counter(&src);
        wait_counter_above(&src, c).await;
        assert!(original == without_counter(contents(&src)), "a's disk changed");
    })
    .await;
}

fn fs_free(dir: &Path) -> u64 {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df avail")
}
