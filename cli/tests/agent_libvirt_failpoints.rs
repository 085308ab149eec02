//! Every handoff failpoint during a libvirt live migration: two real libvirtds
//! (`scripts/libvirt-hosts`), an agent on each (in the host's mount namespace), a guest
//! defined with `virsh` on host a with a local qcow2 disk, adopted, and moved to b with
//! the admin `MoveVm` while the side armed with the failpoint kills itself (SIGKILL) at
//! that step. The dead agent is restarted on the same store and the handoff resolves.
//! libvirt ends the source domain when a migration completes, so a crash after the
//! switchover can only go forward (docs/design.md §Handoff).
//!
//! Checked for every failpoint: the agent died where armed (on the path of the
//! scenario); afterwards the VM is `Running` in exactly one schedule with no handoff
//! record left; its domain is defined on exactly one host, that node's, and runs there;
//! the guest went on (its own clock, the BIOS tick counter, did not go back: never
//! rebooted, never lost); and at no moment, polled every 200 ms, did the domain run on
//! both hosts. Abort-path failpoints make the migration fail: the source's driver gets 1
//! MiB/s and 1 s for a migration that needs more, so it gives up and the handoff aborts.
//!
//! The same checks when the source's or the destination's libvirtd dies while the
//! migration runs (at 1 MiB/s: seconds) and is started again, as after a crash or a
//! `systemctl restart` that timed out waiting for the migration job: the migration fails,
//! the VM stays on a. And
//! an adopted domain that the operator undefines behind ballast's back is reported by
//! the agent and never recreated; its schedule entry stays until the operator deletes it.
//! A VM made with `ballast vm create` on a local disk moves with its disk copied. An
//! agent started while its libvirtd is down runs, gossips and answers, and its driver
//! works once libvirtd is back.
//!
//! One libvirt host pair serves the scenarios of a test (starting one takes seconds);
//! the agents are restarted with the next failpoint armed, and each scenario's VM is
//! deleted at its end.
#![cfg(feature = "libvirt")]

mod agent_libvirt_util;
mod agent_util;
#[path = "../../node/tests/libvirt_util/mod.rs"]
mod libvirt_util;

use agent_libvirt_util::{
    define_guest, disk_sha, domain_state, guest_ticks, libvirt_cluster, make_disk, set_launchers,
    set_libvirt_option,
};
use agent_util::*;
use ballast_store::{VmId, VmSpec};
use libvirt_util::LibvirtHosts;
use std::time::{Duration, Instant};

/// Guest RAM, MiB.
const MEMORY_MIB: u64 = 32;
/// The hosts' names, by node index.
const HOSTS: [&str; 2] = ["a", "b"];

/// Where the domain runs now: hosts (by node index) whose domain state is `running`.
fn running_on(hosts: &LibvirtHosts, name: &str) -> Vec<usize> {
    (0..2)
        .filter(|&i| domain_state(hosts, HOSTS[i], name).as_deref() == Some("running"))
        .collect()
}

/// Asserts that the domain does not run on both hosts now.
fn assert_not_on_both(hosts: &LibvirtHosts, name: &str, what: &str) {
    let on = running_on(hosts, name);
    assert!(on.len() < 2, "{what}: {name} runs on both hosts at once");
}

/// What goes wrong during a move n1 → n2.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// The armed side kills itself at a failpoint.
    Failpoint(FailpointCase),
    /// Host a's (0) or b's (1) libvirtd dies while the migration runs (SIGKILL) and is
    /// started again.
    LibvirtdRestart(usize),
}

impl Fault {
    fn name(&self) -> String {
        match self {
            Self::Failpoint(fp) => fp.name.to_owned(),
            Self::LibvirtdRestart(h) => {
                format!("libvirtd of host {} killed and restarted", HOSTS[*h])
            }
        }
    }
}

/// Restarts both agents for `fault`: the source's migrations fail (1 MiB/s for 1 s, too
/// little for the guest's disk and memory) or are slow (1 MiB/s: seconds), or run at
/// full speed (also with no fault); the failpoint armed on its side.
fn restart_agents(c: &mut Cluster, fault: Option<Fault>) {
    for i in 0..2 {
        c.kill(i);
        let (bandwidth, timeout) = match fault {
            Some(Fault::Failpoint(fp)) if fp.fail_migration && i == 0 => ("1", "\"1s\""),
            Some(Fault::LibvirtdRestart(_)) if i == 0 => ("1", "\"60s\""),
            _ => ("0", "\"60s\""),
        };
        set_libvirt_option(&c.nodes[i].config, "bandwidth_mibps", bandwidth);
        set_libvirt_option(&c.nodes[i].config, "migrate_timeout", timeout);
    }
    for i in 0..2 {
        match fault {
            Some(Fault::Failpoint(fp)) if usize::from(fp.side == Side::Destination) == i => {
                c.start(i, fp.name)
            }
            _ => c.start(i, ""),
        }
    }
}

/// Waits until the move has hit `fault`: the armed agent died (`true`), or host `h`'s
/// libvirtd was restarted mid-migration; or the move ended first (`false`).
async fn hit(
    hosts: &LibvirtHosts,
    c: &mut Cluster,
    name: &str,
    fault: Fault,
    moving: &tokio::task::JoinHandle<impl Sized>,
) -> bool {
    let start = Instant::now();
    let mut ended_at: Option<Instant> = None;
    while start.elapsed() < Duration::from_secs(60) {
        assert_not_on_both(hosts, name, &fault.name());
        match fault {
            Fault::Failpoint(fp) => {
                let victim = usize::from(fp.side == Side::Destination);
                if c.exited(victim) {
                    c.start(victim, "");
                    return true;
                }
            }
            Fault::LibvirtdRestart(h) => {
                // The incoming domain exists on b: the migration is under way.
                if domain_state(hosts, "b", name).is_some() {
                    hosts.crash_and_restart_daemon(HOSTS[h]);
                    // Agents started from now on enter the new daemon's namespace.
                    set_launchers(c, hosts);
                    return true;
                }
            }
        }
        // The caller's answer may come before the peer's last step (the destination
        // drops its copy after the source has aborted): a few seconds more for that.
        if ended_at.is_none() && moving.is_finished() {
            ended_at = Some(Instant::now());
        }
        if ended_at.is_some_and(|t| t.elapsed() > Duration::from_secs(5)) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// One scenario: `k` numbers its guest.
fn scenario(hosts: &LibvirtHosts, c: &mut Cluster, k: usize, fault: Fault) {
    restart_agents(c, Some(fault));
    let fp = fault.name();
    let name = format!("fp-{k}");
    let vm = VmId::from(name.as_str());
    run_bounded(Duration::from_secs(180), async {
        let t0 = Instant::now();
        c.wait_membership(Duration::from_secs(30)).await;
        define_guest(hosts, "a", &name, k, MEMORY_MIB);
        let adopted = c.admin(0).adopt_vms(std::slice::from_ref(&name)).await;
        assert_eq!(adopted.expect("adopt"), vec![vm.clone()]);
        let booted = Instant::now();
        let ticks_before = loop {
            match guest_ticks(hosts, "a", &name) {
                Some(t) if t > 0 => break t,
                _ => assert!(
                    booted.elapsed() < Duration::from_secs(20),
                    "the guest's clock"
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };

        let mover = c.admin(0);
        let (vm2, to) = (vm.clone(), nid(c, 1));
        let moving = tokio::spawn(async move { mover.move_vm(&vm2, &to).await });
        let start = Instant::now();
        let fired = hit(hosts, c, &name, fault, &moving).await;
        let must_fire = match fault {
            Fault::Failpoint(f) => f.must_fire,
            Fault::LibvirtdRestart(_) => true,
        };
        if must_fire {
            assert!(fired, "{fp}: the fault did not happen during the move");
        }
        // The caller's node may be one that died: do not wait for its answer.
        moving.abort();
        let died = start.elapsed().as_secs_f64();
        wait_until(Duration::from_secs(90), "the handoff resolved", || async {
            assert_not_on_both(hosts, &name, &fp);
            let snaps = c.snapshots().await;
            if !all_resolved(&snaps, std::slice::from_ref(&vm)) {
                return false;
            }
            let holder = holders(&snaps)[&vm][0].0;
            running_on(hosts, &name) == [holder]
                && domain_state(hosts, HOSTS[1 - holder], &name).is_none()
        })
        .await;
        let holder = holders(&c.snapshots().await)[&vm][0].0;
        let failed = match fault {
            Fault::Failpoint(f) => f.fail_migration,
            Fault::LibvirtdRestart(_) => true,
        };
        if failed {
            assert_eq!(holder, 0, "{fp}: a failed migration must leave the VM on a");
        }
        let ticks_after = guest_ticks(hosts, HOSTS[holder], &name).expect("ticks");
        assert!(
            ticks_after >= ticks_before,
            "{fp}: the guest's clock went from {ticks_before} back to {ticks_after}: it restarted"
        );
        println!(
            "{fp}: fired={fired} after {died:.1}s, resolved {:.1}s later; VM on host {} \
             (ticks {ticks_before} -> {ticks_after}); scenario {:.1}s",
            start.elapsed().as_secs_f64() - died,
            HOSTS[holder],
            t0.elapsed().as_secs_f64()
        );
        c.admin(holder).delete_vm(&vm).await.expect("delete");
    });
    for h in HOSTS {
        let _ = std::fs::remove_file(hosts.images(h).join(format!("{name}.qcow2")));
    }
}

/// Runs the scenarios of every failpoint of `side` on one host pair.
fn failpoints_of(side: Side) {
    let hosts = LibvirtHosts::start();
    let mut c = libvirt_cluster(&hosts, false, "");
    let cases: Vec<FailpointCase> = FAILPOINT_CASES
        .iter()
        .copied()
        .filter(|f| f.side == side)
        .collect();
    for (k, fp) in cases.into_iter().enumerate() {
        scenario(&hosts, &mut c, k, Fault::Failpoint(fp));
    }
}

#[test]
fn source_killed_at_every_failpoint_of_a_libvirt_migration() {
    failpoints_of(Side::Source);
}

#[test]
fn destination_killed_at_every_failpoint_of_a_libvirt_migration() {
    failpoints_of(Side::Destination);
}

#[test]
fn a_libvirtd_restarted_during_a_migration_leaves_the_vm_on_its_source() {
    let hosts = LibvirtHosts::start();
    let mut c = libvirt_cluster(&hosts, false, "");
    scenario(&hosts, &mut c, 0, Fault::LibvirtdRestart(0));
    scenario(&hosts, &mut c, 1, Fault::LibvirtdRestart(1));
    undefined_behind_ballasts_back(&hosts, &mut c);
    created_vm_moves_with_its_local_disk(&hosts, &mut c);
    libvirtd_down_when_the_agent_starts(&hosts, &mut c);
}

/// Host a's libvirtd is down when its agent starts: the agent starts anyway, gossips and
/// answers `status`, and reports the driver's errors; once libvirtd is back, the same
/// agent process adopts a domain (every call reconnects).
fn libvirtd_down_when_the_agent_starts(hosts: &LibvirtHosts, c: &mut Cluster) {
    c.kill(0);
    hosts.kill_daemon("a");
    // No daemon's namespace to enter: this agent runs in the machine's (no disk is
    // touched here) and reaches its libvirtd by the socket's path outside it.
    c.set_launcher(0, Vec::new());
    let config = c.nodes[0].config.clone();
    set_libvirt_option(&config, "uri", &format!("\"{}\"", hosts.uri("a")));
    c.start(0, "");
    let name = "late";
    let vm = VmId::from(name);
    run_bounded(Duration::from_secs(120), async {
        c.wait_membership(Duration::from_secs(30)).await;
        wait_until(
            Duration::from_secs(30),
            "the agent reports that libvirt is unreachable",
            || async {
                let logs = c.logs(0);
                logs.contains("hypervisor unavailable at start")
                    && logs.contains("reconcile: the hypervisor is unavailable")
            },
        )
        .await;
        assert!(!c.exited(0), "the agent exited without its libvirtd");
        hosts.start_missing();
        set_launchers(c, hosts);
        define_guest(hosts, "a", name, 8, MEMORY_MIB);
        wait_until(
            Duration::from_secs(30),
            "an adopt once libvirtd is back",
            || async {
                c.admin(0)
                    .adopt_vms(&[name.to_owned()])
                    .await
                    .is_ok_and(|v| v == [vm.clone()])
            },
        )
        .await;
        c.admin(0).delete_vm(&vm).await.expect("delete");
    });
    set_libvirt_option(&config, "uri", "\"qemu:///system\"");
}

/// A VM made with `ballast vm create` (defined by ballast from its spec, not adopted) on
/// a local disk: before the move the source records its disks from libvirt (the spec has
/// only the file), so the destination pre-creates the disk and the migration copies it.
fn created_vm_moves_with_its_local_disk(hosts: &LibvirtHosts, c: &mut Cluster) {
    let name = "made";
    let vm = VmId::from(name);
    let disk = hosts.images("a").join("made.qcow2");
    make_disk(&disk, 7);
    let sum = disk_sha(&disk);
    restart_agents(c, None);
    run_bounded(Duration::from_secs(120), async {
        c.wait_membership(Duration::from_secs(30)).await;
        let spec = VmSpec {
            vcpus: 1,
            memory_mib: MEMORY_MIB,
            disks: vec!["/var/lib/libvirt/images/made.qcow2".into()],
            ..VmSpec::default()
        };
        let (n1, n2) = (nid(c, 0), nid(c, 1));
        c.admin(0)
            .create_vm(&vm, &spec, Some(&n1), false)
            .await
            .expect("create");
        wait_until(Duration::from_secs(30), "made running on a", || async {
            running_on(hosts, name) == [0]
        })
        .await;
        let (committed, _) = c.admin(0).move_vm(&vm, &n2).await.expect("move");
        assert!(committed, "the move of a created VM did not commit");
        wait_until(Duration::from_secs(30), "made running on b", || async {
            running_on(hosts, name) == [1] && domain_state(hosts, "a", name).is_none()
        })
        .await;
        let copy = hosts.images("b").join("made.qcow2");
        assert_eq!(disk_sha(&copy), sum, "the disk differs on b");
        c.admin(1).delete_vm(&vm).await.expect("delete");
    });
}

/// An adopted domain undefined by its operator with `virsh`: the agent reports why it
/// does not start it, never recreates it, and keeps its schedule entry until the
/// operator deletes it.
fn undefined_behind_ballasts_back(hosts: &LibvirtHosts, c: &mut Cluster) {
    let name = "gone";
    let vm = VmId::from(name);
    define_guest(hosts, "a", name, 9, MEMORY_MIB);
    run_bounded(Duration::from_secs(90), async {
        c.wait_membership(Duration::from_secs(30)).await;
        let adopted = c.admin(0).adopt_vms(&[name.to_owned()]).await;
        assert_eq!(adopted.expect("adopt"), vec![vm.clone()]);
        // Undefined first (it runs on, transient), then stopped: gone at once. (Stopped
        // first, it would be restarted before the undefine: a stopped VM that the
        // schedule holds is started again, as it should be.)
        hosts.virsh("a", &["undefine", name]);
        hosts.virsh("a", &["destroy", name]);
        let reported = "its domain is no longer defined on this host";
        wait_until(
            Duration::from_secs(30),
            "the agent reports the missing domain",
            || async { c.logs(0).contains(reported) },
        )
        .await;
        // A few more reconciliation rounds (every 1 s): still nothing recreated.
        tokio::time::sleep(Duration::from_secs(3)).await;
        for h in HOSTS {
            assert_eq!(domain_state(hosts, h, name), None, "recreated on {h}");
        }
        let snaps = c.snapshots().await;
        let held = &holders(&snaps)[&vm];
        assert_eq!(held.len(), 1, "{held:?}");
        assert_eq!(held[0].0, 0, "{held:?}");
        c.admin(0).delete_vm(&vm).await.expect("delete");
        assert!(holders(&c.snapshots().await).is_empty());
    });
}
