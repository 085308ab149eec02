//! Every handoff failpoint while the `qemu` driver moves a VM on a local disk (block
//! mirror over NBD): two real agents with their own state and image directories (no file
//! shared), a VM created on n1 whose guest writes a counter to its disk at every timer
//! tick, moved to n2 with the admin `MoveVm` while the side armed with the failpoint kills
//! itself (SIGKILL) at that step. The dead agent is restarted on the same store and the
//! handoff resolves. Abort-path failpoints make the migration fail: the source copies at
//! 1 Mbit/s with a 1.5 s migration timeout, too little for the disk.
//!
//! Checked for every failpoint: the agent died where armed; the VM is `Running` in
//! exactly one schedule with no handoff record left; its QEMU runs on that node's host
//! only, polled every 200 ms through a second QMP monitor of each host (never running on
//! both at once); the disk there holds everything it held before the move (all but the
//! counter sector is unchanged) and the counter never went back (the guest was never
//! restarted nor given an older disk); the other host keeps no copy of the disk (the
//! destination's is deleted on abort, the source's after the commit).
//!
//! The source side also dies at four steps inside its driver's migration (see
//! [`DRIVER_STEPS`]).
//!
//! One agent pair serves the scenarios of a test; the agents are restarted with the next
//! failpoint armed, and each scenario's VM is deleted at its end.

mod agent_util;

use agent_util::*;
use ballast_node::driver::qemu::{guest, QemuDriver};
use ballast_store::{LoadFactors, VmId, VmSpec};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Guest RAM, MiB.
const MEMORY_MIB: u64 = 32;
const MIB: u64 = 1024 * 1024;

/// The scratch root of both hosts; kills their QEMUs on drop (declared before the
/// cluster, so it runs after the agents are gone).
struct Hosts(tempfile::TempDir);

impl Hosts {
    fn state(&self, i: usize) -> PathBuf {
        self.0.path().join(format!("s{i}"))
    }
    fn images(&self, i: usize) -> PathBuf {
        self.0.path().join(format!("i{i}"))
    }
    fn monitor(&self, i: usize) -> PathBuf {
        self.0.path().join(format!("m{i}.sock"))
    }
    fn disk(&self, i: usize, name: &str) -> PathBuf {
        self.images(i).join(format!("{name}.qcow2"))
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for i in 0..2 {
            QemuDriver::kill_all_in(&self.state(i));
        }
    }
}

/// `query-status` over host `i`'s second monitor: the run state of the VM there, `None`
/// when no QEMU listens.
fn run_state(hosts: &Hosts, i: usize) -> Option<String> {
    let s = UnixStream::connect(hosts.monitor(i)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut w = s.try_clone().ok()?;
    let mut r = BufReader::new(s);
    let mut reply = || -> Option<serde_json::Value> {
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let v: serde_json::Value = serde_json::from_str(&line).ok()?;
            if v.get("event").is_none() {
                return Some(v);
            }
        }
    };
    reply()?;
    w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n").ok()?;
    reply()?;
    w.write_all(b"{\"execute\":\"query-status\"}\n").ok()?;
    Some(reply()?["return"]["status"].as_str()?.to_owned())
}

fn running_on(hosts: &Hosts) -> Vec<usize> {
    (0..2)
        .filter(|&i| run_state(hosts, i).as_deref() == Some("running"))
        .collect()
}

fn assert_not_on_both(hosts: &Hosts, what: &str) {
    assert!(
        running_on(hosts).len() < 2,
        "{what}: the VM runs on both hosts at once"
    );
}

/// The disk's guest-visible bytes.
fn contents(path: &Path) -> Vec<u8> {
    let raw = path.with_extension("check.raw");
    let ok = Command::new("qemu-img")
        .args(["convert", "-U", "-q", "-O", "raw"])
        .arg(path)
        .arg(&raw)
        .status()
        .expect("qemu-img")
        .success();
    assert!(ok, "qemu-img cannot read {}", path.display());
    let bytes = std::fs::read(&raw).expect("read");
    std::fs::remove_file(&raw).expect("rm");
    bytes
}

fn without_counter(mut b: Vec<u8>) -> Vec<u8> {
    b[guest::COUNTER_BYTES].fill(0);
    b
}

fn make_disk(path: &Path, seed: u64) {
    let raw = path.with_extension("raw");
    guest::write_disk_writer_image(&raw, 16 * MIB, 4, seed).expect("image");
    let ok = Command::new("qemu-img")
        .args(["convert", "-q", "-O", "qcow2"])
        .arg(&raw)
        .arg(path)
        .status()
        .expect("qemu-img")
        .success();
    assert!(ok);
    std::fs::remove_file(&raw).expect("rm raw");
}

/// Two qemu agents on `hosts`, local disks under their image directories.
fn cluster(hosts: &Hosts) -> Cluster {
    let base = 24_000 + (std::process::id() % 50) as u16 * 20;
    let opts: Vec<NodeOpts> = (0..2)
        .map(|i| {
            std::fs::create_dir_all(hosts.images(i)).expect("image dir");
            let first = base + 10 * i as u16;
            NodeOpts {
                balancing: false,
                extra: format!(
                    "\n[driver.qemu]\nstate_dir = \"{}\"\nimage_dir = \"{}\"\naccel = \"auto\"\n\
                     port_range = [{first}, {}]\nbandwidth_mbps = 0\n\
                     extra_args = [\"-qmp\", \"unix:{},server=on,wait=off\"]\n\
                     [driver.qemu.timeouts]\nmigration_ms = 120000\n",
                    hosts.state(i).display(),
                    hosts.images(i).display(),
                    first + 9,
                    hosts.monitor(i).display()
                ),
                ..NodeOpts::default()
            }
        })
        .collect();
    let c = Cluster::new(&opts);
    for n in &c.nodes {
        set_in_config(&n.config, "kind = \"sim\"", "kind = \"qemu\"");
        set_in_config(
            &n.config,
            "prepare_timeout = \"3s\"",
            "prepare_timeout = \"30s\"",
        );
        set_in_config(&n.config, "rpc_timeout = \"3s\"", "rpc_timeout = \"20s\"");
    }
    c
}

/// Restarts both agents; the source's migrations fail when `fp` is on the abort path; the
/// failpoint armed on its side.
fn restart_agents(c: &mut Cluster, fp: FailpointCase) {
    for i in 0..2 {
        c.kill(i);
    }
    let config = c.nodes[0].config.clone();
    let text = std::fs::read_to_string(&config).expect("config");
    let (bw, timeout) = if fp.fail_migration {
        ("bandwidth_mbps = 1", "migration_ms = 1500")
    } else {
        ("bandwidth_mbps = 0", "migration_ms = 120000")
    };
    let text = text
        .replace("bandwidth_mbps = 0", bw)
        .replace("bandwidth_mbps = 1\n", &format!("{bw}\n"))
        .replace("migration_ms = 120000", timeout)
        .replace("migration_ms = 1500", timeout);
    std::fs::write(&config, text).expect("write config");
    for i in 0..2 {
        let armed = usize::from(fp.side == Side::Destination) == i;
        c.start(i, if armed { fp.name } else { "" });
    }
}

fn scenario(hosts: &Hosts, c: &mut Cluster, k: usize, fp: FailpointCase) {
    restart_agents(c, fp);
    let name = format!("fp-{k}");
    let vm = VmId::from(name.as_str());
    let src = hosts.disk(0, &name);
    make_disk(&src, 0x1000 + k as u64);
    run_bounded(Duration::from_secs(180), async {
        let t0 = Instant::now();
        c.wait_membership(Duration::from_secs(30)).await;
        let mut spec = VmSpec {
            vcpus: 1,
            memory_mib: MEMORY_MIB,
            disks: vec![format!("{name}.qcow2")],
            target: Some(LoadFactors {
                cpu: 0.2,
                io: 0.0,
                mem: (MEMORY_MIB * MIB) as f64,
            }),
            ..VmSpec::default()
        };
        spec.driver_opts.insert("storage".into(), "local".into());
        let (n1, n2) = (nid(c, 0), nid(c, 1));
        c.admin(0)
            .create_vm(&vm, &spec, Some(&n1), false)
            .await
            .expect("create");
        let mut counter_before = 0;
        wait_until(Duration::from_secs(30), "the guest writes its disk", || {
            counter_before = guest::disk_writer_counter(&contents(&src)).unwrap_or(0);
            async move { counter_before > 0 }
        })
        .await;
        let data_before = without_counter(contents(&src));

        let mover = c.admin(0);
        let vm2 = vm.clone();
        let moving = tokio::spawn(async move { mover.move_vm(&vm2, &n2).await });
        let victim = usize::from(fp.side == Side::Destination);
        let start = Instant::now();
        let mut fired = false;
        let mut ended_at: Option<Instant> = None;
        while start.elapsed() < Duration::from_secs(60) {
            assert_not_on_both(hosts, fp.name);
            if c.exited(victim) {
                c.start(victim, "");
                fired = true;
                break;
            }
            if ended_at.is_none() && moving.is_finished() {
                ended_at = Some(Instant::now());
            }
            if ended_at.is_some_and(|t| t.elapsed() > Duration::from_secs(5)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if fp.must_fire {
            assert!(fired, "{}: the agent did not die during the move", fp.name);
        }
        moving.abort();
        let died = start.elapsed().as_secs_f64();
        wait_until(Duration::from_secs(90), "the handoff resolved", || async {
            assert_not_on_both(hosts, fp.name);
            let snaps = c.snapshots().await;
            if !all_resolved(&snaps, std::slice::from_ref(&vm)) {
                return false;
            }
            let holder = holders(&snaps)[&vm][0].0;
            running_on(hosts) == [holder]
                && run_state(hosts, 1 - holder).is_none()
                && !hosts.disk(1 - holder, &name).exists()
        })
        .await;
        let holder = holders(&c.snapshots().await)[&vm][0].0;
        if fp.fail_migration {
            assert_eq!(
                holder, 0,
                "{}: a failed migration must leave the VM on n1",
                fp.name
            );
        }
        let disk = hosts.disk(holder, &name);
        let now = contents(&disk);
        let counter = guest::disk_writer_counter(&now).unwrap_or(0);
        assert!(
            counter >= counter_before,
            "{}: the disk's counter went from {counter_before} back to {counter}",
            fp.name
        );
        assert!(
            without_counter(now) == data_before,
            "{}: the disk on {} lost or changed data",
            fp.name,
            ["n1", "n2"][holder]
        );
        println!(
            "{}: fired={fired} after {died:.1}s, resolved {:.1}s later; VM on n{} \
             (counter {counter_before} -> {counter}); scenario {:.1}s",
            fp.name,
            start.elapsed().as_secs_f64() - died,
            holder + 1,
            t0.elapsed().as_secs_f64()
        );
        c.admin(holder).delete_vm(&vm).await.expect("delete");
    });
    for i in 0..2 {
        let _ = std::fs::remove_file(hosts.disk(i, &name));
    }
}

/// The steps inside the source driver's migration (mirrors copying, ready, memory
/// migrating, paused before the switchover with the mirrors not yet completed, switched
/// over), where the restarted agent decides from QEMU's state and the driver's mark:
/// before the switchover the move aborts (the mirrors are abandoned, the source resumes
/// on its own disks), after it the move commits.
const DRIVER_STEPS: [FailpointCase; 5] = [
    FailpointCase {
        name: "driver:mirror-running",
        side: Side::Source,
        fail_migration: false,
        must_fire: true,
    },
    FailpointCase {
        name: "driver:mirror-ready",
        side: Side::Source,
        fail_migration: false,
        must_fire: true,
    },
    FailpointCase {
        name: "driver:memory-migrating",
        side: Side::Source,
        fail_migration: false,
        must_fire: true,
    },
    FailpointCase {
        name: "driver:paused-before-switchover",
        side: Side::Source,
        fail_migration: false,
        must_fire: true,
    },
    FailpointCase {
        name: "driver:switched-over",
        side: Side::Source,
        fail_migration: false,
        must_fire: true,
    },
];

fn failpoints_of(side: Side) {
    let hosts = Hosts(
        tempfile::Builder::new()
            .prefix("bf")
            .tempdir_in("/tmp")
            .expect("tempdir"),
    );
    let mut c = cluster(&hosts);
    let mut cases: Vec<FailpointCase> = FAILPOINT_CASES
        .iter()
        .copied()
        .filter(|f| f.side == side)
        .collect();
    if side == Side::Source {
        cases.extend(DRIVER_STEPS);
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for (k, fp) in cases.into_iter().enumerate() {
            scenario(&hosts, &mut c, k, fp);
        }
    }));
    if let Err(panic) = result {
        c.print_log_tails(40);
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn source_killed_at_every_failpoint_of_a_local_disk_move() {
    failpoints_of(Side::Source);
}

#[test]
fn destination_killed_at_every_failpoint_of_a_local_disk_move() {
    failpoints_of(Side::Destination);
}
