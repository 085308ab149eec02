//! The driver conformance suite on the sim driver in process mode: every VM is a real,
//! detached `ballast sim-vm` process (this crate's binary). Also: adoption after the
//! driver and its runtime are gone, a killed VM process, a wiped state directory, and a
//! migration from an in-process host to a process-mode host. Every test kills the VM
//! processes it made, even when it fails (see [`Reaper`]).

#[path = "../../node/tests/common/mod.rs"]
mod common;

use ballast_node::driver::sim::{
    check_no_double_run, read_runlog, RunEvent, SimConfig, SimDriver, SimMode,
};
use ballast_node::driver::{Driver, VmRunState};
use ballast_node::units::Millis;
use ballast_store::{NodeId, VmId, VmSpec};
use common::conformance;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// Bound of every test.
const TEST_BOUND: Duration = Duration::from_secs(180);

fn spec() -> VmSpec {
    VmSpec {
        vcpus: 1,
        memory_mib: 32,
        driver_opts: BTreeMap::from([("cpu".into(), "1.0".into())]),
        ..VmSpec::default()
    }
}

fn config(dir: &Path, host: &str, mode: SimMode) -> SimConfig {
    SimConfig {
        state_dir: dir.join(host),
        host: NodeId::from(host),
        seed: 7,
        migration: Millis::new(30),
        mode,
        vm_command: vec![sim_vm_binary(), "sim-vm".to_owned()],
        ..SimConfig::default()
    }
}

/// The `ballast` binary, after checking that it has the hidden `sim-vm` subcommand
/// (`ballast sim-vm` without arguments must exit 2 with `ballast sim-vm:` on stderr).
fn sim_vm_binary() -> String {
    static CHECKED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let bin = env!("CARGO_BIN_EXE_ballast");
    let check = CHECKED.get_or_init(|| {
        let out = std::process::Command::new(bin)
            .arg("sim-vm")
            .output()
            .map_err(|e| e.to_string())?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() == Some(2) && stderr.contains("ballast sim-vm:") {
            Ok(())
        } else {
            Err(format!(
                "`ballast sim-vm` is not wired to ballast_node::driver::sim::vm_process_main \
                 (exit {:?}, stderr {stderr:?})",
                out.status.code()
            ))
        }
    });
    if let Err(e) = check {
        panic!("{e}");
    }
    bin.to_owned()
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next());
            !matches!(state, None | Some('Z' | 'X'))
        }
        Err(_) => false,
    }
}

fn kill9(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
}

/// Remembers every VM process seen and SIGKILLs the survivors when dropped.
#[derive(Default)]
struct Reaper(Mutex<BTreeSet<u32>>);

impl Reaper {
    async fn note(&self, d: &SimDriver) {
        let pids = d.vm_pids().await.expect("vm_pids");
        self.0
            .lock()
            .unwrap()
            .extend(pids.into_iter().map(|(_, p)| p));
    }
    fn live(&self) -> Vec<u32> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|p| alive(*p))
            .collect()
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in self.0.get_mut().unwrap().iter() {
            if alive(*pid) {
                kill9(*pid);
            }
        }
    }
}

/// Waits (bounded) until none of `pids` is alive.
async fn wait_dead(pids: &[u32]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while pids.iter().any(|p| alive(*p)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "VM processes still alive: {pids:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the suite while a background task notes the VM processes for the reaper.
async fn with_reaper<F: std::future::Future<Output = ()>>(
    reaper: &Reaper,
    ds: &[&SimDriver],
    f: F,
) {
    let watch = async {
        loop {
            for d in ds {
                reaper.note(d).await;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::select! {
        () = f => {}
        () = watch => {}
    }
}

#[tokio::test]
async fn conformance_process_mode() {
    let dir = tempfile::tempdir().unwrap();
    let reaper = Reaper::default();
    let a = SimDriver::new(config(dir.path(), "a", SimMode::Process)).unwrap();
    let b = SimDriver::new(config(dir.path(), "b", SimMode::Process)).unwrap();
    let suite = conformance::run_all(&a, &b, &spec);
    tokio::time::timeout(TEST_BOUND, with_reaper(&reaper, &[&a, &b], suite))
        .await
        .expect("bound");
    // Every VM of the suite ended with its process.
    wait_dead(&reaper.live()).await;
    let mut recs = read_runlog(&a.runlog_path()).unwrap();
    recs.extend(read_runlog(&b.runlog_path()).unwrap());
    assert!(
        recs.iter().any(|r| r.event == RunEvent::Run),
        "VM processes wrote no records"
    );
    let v = check_no_double_run(&recs, &[]);
    assert!(v.is_empty(), "I2 violated: {v:?}");
}

#[tokio::test]
async fn conformance_adopt_process_mode() {
    let dir = tempfile::tempdir().unwrap();
    let reaper = Reaper::default();
    let cfg = config(dir.path(), "a", SimMode::Process);
    let probe = SimDriver::new(cfg.clone()).unwrap();
    let make = || {
        let cfg = cfg.clone();
        async move { SimDriver::new(cfg).unwrap() }
    };
    let suite = conformance::adopt_after_restart(make, &spec);
    tokio::time::timeout(TEST_BOUND, with_reaper(&reaper, &[&probe], suite))
        .await
        .expect("bound");
    wait_dead(&reaper.live()).await;
}

/// The VM process outlives the driver *and* the tokio runtime that spawned it, lives
/// in its own process group, and a new driver adopts it without a restart.
#[test]
fn vm_process_outlives_its_agent_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let reaper = Reaper::default();
    let cfg = config(dir.path(), "a", SimMode::Process);
    let vm = VmId::from("survivor");
    let rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let (pid, before) = rt().block_on(async {
        let d = SimDriver::new(cfg.clone()).unwrap();
        d.start(&vm, &spec()).await.unwrap();
        reaper.note(&d).await;
        let before = conformance::wait_cpu_above(&d, &vm, 0.01).await;
        (d.vm_pids().await.unwrap()[0].1, before)
    });
    assert_ne!(pid, std::process::id());
    let pgid = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let pgid: u32 = pgid
        .rsplit_once(") ")
        .unwrap()
        .1
        .split(' ')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(pgid, pid, "VM process must lead its own process group");
    assert!(alive(pid), "VM process died with its driver's runtime");
    rt().block_on(async {
        let d = SimDriver::new(cfg.clone()).unwrap();
        let adopted = d.adopt().await.unwrap();
        assert_eq!(adopted.len(), 1);
        assert_eq!(adopted[0].state, VmRunState::Running);
        let after = d.usage(&vm).await.unwrap();
        assert!(
            after.cpu_time_s >= before.cpu_time_s,
            "{before:?} then {after:?}"
        );
        d.stop(&vm).await.unwrap();
        wait_dead(&[pid]).await;
    });
}

/// A VM process killed with SIGKILL (its host crashed) disappears from `list`; the
/// driver closes its recorded interval with a `stop` record.
#[tokio::test]
async fn killed_vm_process_is_reported_gone() {
    let dir = tempfile::tempdir().unwrap();
    let reaper = Reaper::default();
    let d = SimDriver::new(config(dir.path(), "a", SimMode::Process)).unwrap();
    let vm = VmId::from("victim");
    d.start(&vm, &spec()).await.unwrap();
    reaper.note(&d).await;
    let pid = d.vm_pids().await.unwrap()[0].1;
    kill9(pid);
    wait_dead(&[pid]).await;
    assert!(d.list().await.unwrap().is_empty(), "dead VM still listed");
    assert!(d.adopt().await.unwrap().is_empty());
    let recs = read_runlog(&d.runlog_path()).unwrap();
    let events: Vec<_> = recs
        .iter()
        .filter(|r| r.vm.as_ref() == Some(&vm))
        .map(|r| r.event)
        .collect();
    assert_eq!(events, vec![RunEvent::Run, RunEvent::Stop]);
    // The host can start it again.
    d.start(&vm, &spec()).await.unwrap();
    reaper.note(&d).await;
    d.stop(&vm).await.unwrap();
}

/// Wiping a host's state directory ends its VM processes (no leaks from deleted test
/// directories) and they write a final `stop` if the log is still there.
#[tokio::test]
async fn wiped_socket_ends_the_vm_process() {
    let dir = tempfile::tempdir().unwrap();
    let reaper = Reaper::default();
    let d = SimDriver::new(config(dir.path(), "a", SimMode::Process)).unwrap();
    let vm = VmId::from("orphan");
    d.start(&vm, &spec()).await.unwrap();
    reaper.note(&d).await;
    let pid = d.vm_pids().await.unwrap()[0].1;
    std::fs::remove_dir_all(dir.path().join("a").join("vms")).unwrap();
    wait_dead(&[pid]).await;
    let recs = read_runlog(&d.runlog_path()).unwrap();
    assert_eq!(recs.last().map(|r| r.event), Some(RunEvent::Stop));
}

/// Targets are loopback TCP addresses: an in-process host and a process-mode host can
/// migrate to each other.
#[tokio::test]
async fn in_process_to_process_mode_migration() {
    let dir = tempfile::tempdir().unwrap();
    let reaper = Reaper::default();
    let a = SimDriver::new(config(dir.path(), "a", SimMode::InProcess)).unwrap();
    let b = SimDriver::new(config(dir.path(), "b", SimMode::Process)).unwrap();
    let vm = VmId::from("crossing");
    a.start(&vm, &spec()).await.unwrap();
    let before = conformance::wait_cpu_above(&a, &vm, 0.01).await;
    let target = b.prepare_incoming(&vm, &spec()).await.unwrap();
    reaper.note(&b).await;
    a.migrate_out(&vm, &target, &|_| {}).await.unwrap();
    b.resume_incoming(&vm).await.unwrap();
    a.finish_outgoing(&vm).await.unwrap();
    let u = conformance::wait_cpu_above(&b, &vm, before.cpu_time_s).await;
    assert!(u.cpu_time_s > before.cpu_time_s);
    b.stop(&vm).await.unwrap();
    wait_dead(&reaper.live()).await;
    let mut recs = read_runlog(&a.runlog_path()).unwrap();
    recs.extend(read_runlog(&b.runlog_path()).unwrap());
    assert!(check_no_double_run(&recs, &[]).is_empty());
}

/// Stopping and at once restarting a VM never trips over the ending process (its
/// socket lingers for a moment and answers `NotFound`).
#[tokio::test]
async fn restart_right_after_stop() {
    let dir = tempfile::tempdir().unwrap();
    let reaper = Reaper::default();
    let d = SimDriver::new(config(dir.path(), "a", SimMode::Process)).unwrap();
    let vm = VmId::from("phoenix");
    let rounds = async {
        for _ in 0..15 {
            d.start(&vm, &spec()).await.unwrap();
            reaper.note(&d).await;
            assert_eq!(
                conformance::state_of(&d, &vm).await,
                Some(VmRunState::Running)
            );
            d.stop(&vm).await.unwrap();
        }
    };
    tokio::time::timeout(TEST_BOUND, rounds)
        .await
        .expect("bound");
    wait_dead(&reaper.live()).await;
    let recs = read_runlog(&d.runlog_path()).unwrap();
    let runs = recs.iter().filter(|r| r.event == RunEvent::Run).count();
    let stops = recs.iter().filter(|r| r.event == RunEvent::Stop).count();
    assert_eq!((runs, stops), (15, 15));
}

/// A VM's socket appears only once its process accepts connections: a caller hammering
/// the path while VMs start never gets "connection refused" (which the driver takes for
/// a dead process: it removed the new VM's socket and logged a false `stop`).
#[tokio::test]
async fn a_starting_vm_never_refuses_a_connection() {
    let dir = tempfile::tempdir().unwrap();
    let reaper = Reaper::default();
    let d = SimDriver::new(config(dir.path(), "a", SimMode::Process)).unwrap();
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for i in 0..20 {
        let vm = VmId::from(format!("eager-{i}"));
        let path = dir.path().join("a/vms").join(format!("v-{vm}.sock"));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hammer = {
            let (stop, refused) = (stop.clone(), refused.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match std::os::unix::net::UnixStream::connect(&path) {
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                            refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
            })
        };
        d.start(&vm, &spec()).await.unwrap();
        reaper.note(&d).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        hammer.join().unwrap();
        d.stop(&vm).await.unwrap();
    }
    assert_eq!(refused.load(std::sync::atomic::Ordering::Relaxed), 0);
}
