//! A move between two real agent processes on the qemu driver: one real QEMU VM (the
//! demo boot sector, no OS image) created on n1 and moved to n2 with the admin `MoveVm`.
//! Checked: n2's schedule holds it Running and n1's does not; n2's QEMU process runs
//! guest code (its CPU time grows) and n1's is gone; after n1 is killed and its data
//! and driver state are wiped, the VM still runs on n2 (I4). Every QEMU process is
//! killed by a guard, also when the test fails.

mod agent_util;

use agent_util::*;
use ballast_node::driver::qemu::guest::{demo_spec, write_boot_image};
use ballast_node::driver::qemu::QemuDriver;
use ballast_store::{LoadFactors, VmId, VmState};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The VM's memory, in MiB.
const MEMORY_MIB: u64 = 64;

/// Kills every QEMU process under its state directories when dropped. Declared before
/// the cluster, so it runs after the agents were killed (no agent restarts a VM behind
/// its back) and before its directories are removed.
struct QemuGuard(Vec<PathBuf>);

impl Drop for QemuGuard {
    fn drop(&mut self) {
        for d in &self.0 {
            QemuDriver::kill_all_in(d);
        }
    }
}

/// The pid in `state_dir/<vm>/qemu.pid` when that process is a live QEMU.
fn live_qemu(state_dir: &Path, vm: &str) -> Option<u32> {
    let text = std::fs::read_to_string(state_dir.join(vm).join("qemu.pid")).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    let is_qemu = String::from_utf8_lossy(&cmdline).contains("qemu");
    (is_qemu && state != "Z").then_some(pid)
}

/// User + system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the command name: state is field 3, utime 14 and stime 15 (1-based).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Asserts that the QEMU of `vm` under `state_dir` is alive and runs guest code: the
/// demo guest spins half of the time, a paused or stopped one uses (almost) no CPU.
async fn assert_runs_guest_code(state_dir: &Path, vm: &str, when: &str) {
    let pid = live_qemu(state_dir, vm).unwrap_or_else(|| panic!("{when}: no live QEMU"));
    let before = cpu_ticks(pid).expect("cpu ticks");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        live_qemu(state_dir, vm),
        Some(pid),
        "{when}: the QEMU process went away"
    );
    let used = cpu_ticks(pid).expect("cpu ticks") - before;
    // ~50% of a core over 2 s is ~100 ticks; a paused QEMU uses ~0.
    assert!(
        used >= 10,
        "{when}: QEMU used {used} ticks in 2 s: the guest is not running"
    );
}

#[test]
fn a_qemu_vm_moves_between_agents_and_outlives_its_source() {
    move_and_outlive("qemu", |state, [first, last]| {
        format!(
            "\n[driver.qemu]\nstate_dir = \"{}\"\naccel = \"auto\"\n\
             port_range = [{first}, {last}]\nbandwidth_mbps = 0\n",
            state.display()
        )
    });
}

#[test]
fn an_exec_plugin_vm_moves_between_agents_and_outlives_its_source() {
    let plugin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/qemu_plugin.py");
    assert!(plugin.exists(), "{}", plugin.display());
    move_and_outlive("exec", |state, [first, last]| {
        format!(
            "\n[driver.exec]\ncommand = [\"python3\", \"{}\", \"--state-dir\", \"{}\", \
             \"--port-range\", \"{first}-{last}\", \"--accel\", \"auto\"]\n",
            plugin.display(),
            state.display()
        )
    });
}

/// Two agents with `driver.kind = kind` (`section` gives each node's driver section
/// from its state directory and migration ports): create on n1, move to n2, check both
/// sides, kill and wipe n1, check n2 again.
fn move_and_outlive(kind: &str, section: impl Fn(&Path, [u16; 2]) -> String) {
    let qdir = tempfile::tempdir().expect("qemu tempdir");
    let states = [qdir.path().join("a"), qdir.path().join("b")];
    let _guard = QemuGuard(states.to_vec());
    let image = qdir.path().join("boot.img");
    write_boot_image(&image).expect("boot image");
    // Ports below the kernel's ephemeral range (and apart from the bench's), per process
    // and per driver kind so parallel runs and the tests of this file differ.
    let base =
        10_000 + (std::process::id() % 200) as u16 * 50 + if kind == "qemu" { 0 } else { 20 };
    let opts: Vec<NodeOpts> = states
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let first = base + 10 * i as u16;
            NodeOpts {
                balancing: false,
                extra: section(s, [first, first + 9]),
                ..NodeOpts::default()
            }
        })
        .collect();
    let mut c = Cluster::new(&opts);
    for n in &c.nodes {
        set_in_config(&n.config, "kind = \"sim\"", &format!("kind = \"{kind}\""));
        // Launching QEMU under TCG on a busy host can take seconds.
        set_in_config(
            &n.config,
            "prepare_timeout = \"3s\"",
            "prepare_timeout = \"30s\"",
        );
        set_in_config(&n.config, "rpc_timeout = \"3s\"", "rpc_timeout = \"20s\"");
    }
    c.start_all();
    run_bounded(Duration::from_secs(150), async {
        c.wait_membership(Duration::from_secs(30)).await;
        let vm = VmId::from("vm-q");
        let (n1, n2) = (nid(&c, 0), nid(&c, 1));
        let mut spec = demo_spec(&image, MEMORY_MIB);
        spec.target = Some(LoadFactors {
            cpu: 0.5,
            io: 0.0,
            mem: 0.0,
        });
        c.admin(0)
            .create_vm(&vm, &spec, Some(&n1), false)
            .await
            .expect("create");
        wait_until(Duration::from_secs(30), "QEMU running on n1", || async {
            live_qemu(&states[0], "vm-q").is_some()
        })
        .await;
        assert_runs_guest_code(&states[0], "vm-q", "before the move, on n1").await;

        let (committed, epoch) = c.admin(0).move_vm(&vm, &n2).await.expect("move");
        assert!(committed, "the move committed");
        wait_until(Duration::from_secs(30), "move settled", || async {
            all_resolved(&c.snapshots().await, std::slice::from_ref(&vm))
        })
        .await;
        let on_b = c.admin(1).list_vms().await.expect("list n2");
        assert_eq!(on_b.len(), 1, "{on_b:?}");
        assert_eq!(on_b[0].vm, vm);
        assert_eq!(on_b[0].state, VmState::Running);
        assert_eq!(on_b[0].epoch, epoch);
        let on_a = c.admin(0).list_vms().await.expect("list n1");
        assert!(
            on_a.iter().all(|e| e.vm != vm),
            "n1 still holds it: {on_a:?}"
        );
        wait_until(Duration::from_secs(30), "n1's QEMU gone", || async {
            live_qemu(&states[0], "vm-q").is_none()
        })
        .await;
        assert_runs_guest_code(&states[1], "vm-q", "after the move, on n2").await;

        // I4: the source goes away with all its state; the destination does not care.
        let pid_b = live_qemu(&states[1], "vm-q").expect("n2's QEMU");
        c.kill(0);
        std::fs::remove_dir_all(c.nodes[0].dir.join("data")).expect("wipe n1's data");
        let _ = std::fs::remove_dir_all(&states[0]);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            live_qemu(&states[1], "vm-q"),
            Some(pid_b),
            "same QEMU on n2"
        );
        assert_runs_guest_code(&states[1], "vm-q", "after n1 was wiped").await;
        let on_b = c.admin(1).list_vms().await.expect("list n2 again");
        assert_eq!(on_b.len(), 1, "{on_b:?}");
        assert_eq!(on_b[0].state, VmState::Running);
        let s = c.admin(1).status().await.expect("status");
        assert!(s.handoffs.is_empty(), "{:?}", s.handoffs);
    });
}

/// Runs `ballast bench handoff --driver qemu --count 2 --memory-mib 64 --json` with
/// `extra` arguments (bounded: the bench kills its QEMU processes itself; it is killed if
/// it hangs) and returns its JSON.
fn run_qemu_bench(extra: &[&str]) -> serde_json::Value {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args([
            "bench",
            "handoff",
            "--driver",
            "qemu",
            "--count",
            "2",
            "--memory-mib",
            "64",
            "--json",
        ])
        .args(extra)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn bench");
    let start = std::time::Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if start.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the bench did not finish in 180 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("output");
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

/// The local-disk variant: the same figures, and the disks compared after every move.
#[test]
fn the_qemu_local_disk_bench_copies_the_disk_whole() {
    let v = run_qemu_bench(&[
        "--storage",
        "local",
        "--disk-mib",
        "64",
        "--disk-data-mib",
        "8",
    ]);
    let num = |k: &str| {
        v[k].as_f64()
            .unwrap_or_else(|| panic!("{k} missing in {v}"))
    };
    assert_eq!(v["storage"], "local", "{v}");
    assert_eq!(v["disk_mib"], 64, "{v}");
    assert_eq!(v["moves"], 2, "{v}");
    assert_eq!(v["aborted"], 0, "{v}");
    assert_eq!(v["disk_identical"], true, "{v}");
    let (bare, p50) = (num("bare_p50_ms"), num("p50_ms"));
    assert!(bare > 0.0 && p50 > 0.0, "{v}");
    assert!((num("ratio") - p50 / bare).abs() < 1e-6, "{v}");
}

#[test]
fn the_qemu_handoff_bench_reports_both_figures() {
    let v = run_qemu_bench(&[]);
    let num = |k: &str| {
        v[k].as_f64()
            .unwrap_or_else(|| panic!("{k} missing in {v}"))
    };
    assert_eq!(v["driver"], "qemu");
    assert_eq!(v["memory_mib"], 64);
    assert_eq!(v["moves"], 2, "{v}");
    assert_eq!(v["aborted"], 0, "{v}");
    let (qmp, handoff) = (num("bare_p50_ms"), num("p50_ms"));
    assert!(qmp > 0.0 && handoff > 0.0, "{v}");
    // A handoff contains a migration of the same VM, so it cannot be faster than the
    // migration alone (the full bare sequence, launch included, is within noise of it).
    assert!(handoff > num("qmp_migrate_only_ms"), "{v}");
    assert!(num("qemu_launch_ms") > 0.0, "{v}");
    assert!((num("ratio") - handoff / qmp).abs() < 1e-6, "{v}");
}
