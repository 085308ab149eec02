//! ballast on libvirt hosts, end to end with real processes: two libvirtds on this
//! machine (`scripts/libvirt-hosts`), one agent in each host's mount namespace (so each
//! sees its own `/var/lib/libvirt/images`, as on two machines), six domains defined and
//! started with `virsh` on host a, each booting from its own local qcow2 disk with known
//! contents; `ballast vm adopt --all`; balancing moves some to b live, copying their disks.
//! Checked afterwards: every domain is defined and running on exactly one host and in
//! exactly one schedule; every moved guest went on across its move instead of starting
//! again (the QEMU on b was started to receive a migration, libvirt does not say it
//! booted, and the guest's own clock, the BIOS tick counter in guest memory, continued
//! from where it was on a and keeps advancing); every moved disk has the same contents
//! on b, and gone from a (`remove_source_disks`). Domains that ballast does not manage
//! are never moved. The memory streams went to ports that b picked from its
//! `port_range` (outside the hosts' qemu.conf ranges).
#![cfg(feature = "libvirt")]

mod agent_libvirt_util;
mod agent_util;
#[path = "../../node/tests/libvirt_util/mod.rs"]
mod libvirt_util;

use agent_libvirt_util::{
    define_guest, disk_sha, guest_ticks, libvirt_cluster, make_disk, set_libvirt_option,
};
use agent_util::*;
use libvirt_util::{domain_xml, LibvirtHosts};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const VMS: usize = 6;

/// Whether the QEMU that runs `name` on host `h` was started to receive a migration
/// (`-incoming` on its command line): its state came from the source, it did not boot.
fn started_as_incoming(hosts: &LibvirtHosts, h: &str, name: &str) -> bool {
    let pid_file = hosts
        .dir()
        .join(h)
        .join(format!("run/libvirt/qemu/{name}.pid"));
    let Some(pid) = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    else {
        return false;
    };
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split(|b| *b == 0).any(|a| a == b"-incoming"))
        .unwrap_or(false)
}

#[test]
fn adopted_libvirt_domains_balance_live_with_their_local_disks() {
    let hosts = LibvirtHosts::start();
    let mut sums = BTreeMap::new();
    for i in 0..VMS {
        let name = format!("guest-{i}");
        let disk = define_guest(&hosts, "a", &name, i, 32);
        sums.insert(name, disk_sha(&disk));
    }
    let started = Instant::now();
    // Measured loads of TCG guests on two shared cores are noisy: a VM moves at most
    // once here, and only for a clear difference, so that the cluster comes to rest.
    let mut c = libvirt_cluster(
        &hosts,
        true,
        "cooldown = \"300s\"\ncooldown_allows_onward = false\nthreshold = 0.15\nmin_gain = 0.05\nswaps = false",
    );
    for n in &c.nodes {
        set_libvirt_option(&n.config, "remove_source_disks", "true");
    }
    c.start_all();
    let bundle = c.write_admin_bundle();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_bounded(Duration::from_secs(420), async {
            c.wait_membership(Duration::from_secs(30)).await;
            // Watch the guests' clocks while balancing runs: the last tick count seen on
            // a and the first seen on b. The first readings on a are taken before the
            // adoption, since a guest may move before the loop below sees it on a.
            let mut last_on_a: BTreeMap<String, u64> = BTreeMap::new();
            let mut first_on_b: BTreeMap<String, u64> = BTreeMap::new();
            for i in 0..VMS {
                let name = format!("guest-{i}");
                let t = guest_ticks(&hosts, "a", &name).expect("ticks before adoption");
                last_on_a.insert(name, t);
            }
            let out = Command::new(env!("CARGO_BIN_EXE_ballast"))
                .args(["vm", "adopt", "--all", "--node", "n1", "--json", "--admin"])
                .arg(&bundle)
                .output()
                .expect("run ballast vm adopt");
            assert!(out.status.success(), "vm adopt: {out:?}");
            let adopted: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
            assert_eq!(
                adopted["adopted"].as_array().map(Vec::len),
                Some(VMS),
                "{adopted}"
            );
            // A domain the operator keeps to themself: counted, never moved.
            let own = hosts.images("a").join("own.qcow2");
            make_disk(&own, 99);
            let xml = hosts.dir().join("own.xml");
            std::fs::write(
                &xml,
                domain_xml("own", Path::new("/var/lib/libvirt/images/own.qcow2"), 32),
            )
            .expect("xml");
            hosts.virsh("a", &["define", &xml.display().to_string()]);
            hosts.virsh("a", &["start", "own"]);

            let deadline = Instant::now() + Duration::from_secs(240);
            let mut quiet_since: Option<Instant> = None;
            loop {
                for i in 0..VMS {
                    let name = format!("guest-{i}");
                    if first_on_b.contains_key(&name) {
                        continue;
                    }
                    if let Some(t) = guest_ticks(&hosts, "b", &name) {
                        if hosts.virsh("b", &["domstate", &name]).trim() == "running" {
                            first_on_b.insert(name, t);
                        }
                    } else if let Some(t) = guest_ticks(&hosts, "a", &name) {
                        last_on_a.insert(name, t);
                    }
                }
                let snaps = c.snapshots().await;
                let resolved = all_resolved(
                    &snaps,
                    &(0..VMS)
                        .map(|i| ballast_store::VmId::from(format!("guest-{i}").as_str()))
                        .collect::<Vec<_>>(),
                );
                let moved = holders(&snaps)
                    .values()
                    .filter(|h| h.iter().any(|(n, _, _)| *n == 1))
                    .count();
                if resolved && moved > 0 {
                    let since = *quiet_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(15) {
                        break;
                    }
                } else {
                    quiet_since = None;
                }
                assert!(
                    Instant::now() < deadline,
                    "no balanced rest within 240 s: moved {moved}, resolved {resolved}"
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            eprintln!(
                "balanced after {:?}: first ticks on b {first_on_b:?}, last on a {last_on_a:?}",
                started.elapsed()
            );

            // Every guest: defined and running on exactly one host, in exactly one schedule.
            let on_a: BTreeMap<String, String> = hosts.domains("a").into_iter().collect();
            let on_b: BTreeMap<String, String> = hosts.domains("b").into_iter().collect();
            let snaps = c.snapshots().await;
            let held = holders(&snaps);
            let mut moved = Vec::new();
            for i in 0..VMS {
                let name = format!("guest-{i}");
                let (a, b) = (on_a.get(&name), on_b.get(&name));
                assert!(a.is_some() != b.is_some(), "{name}: on a {a:?}, on b {b:?}");
                let state = a.or(b).expect("somewhere");
                assert_eq!(state, "running", "{name}");
                let vm = ballast_store::VmId::from(name.as_str());
                let holders = &held[&vm];
                assert_eq!(holders.len(), 1, "{name}: {holders:?}");
                assert_eq!(
                    holders[0].0,
                    usize::from(b.is_some()),
                    "{name}: {holders:?}"
                );
                if b.is_some() {
                    moved.push(name);
                }
            }
            for i in 0..2 {
                for l in c
                    .logs(i)
                    .lines()
                    .filter(|l| l.contains("session decided") && !l.contains("stay"))
                {
                    eprintln!("n{}: {l}", i + 1);
                }
            }
            // How many move depends on the loads measured at that moment, the unmanaged
            // domain's boot on a included: a session may send all six at once.
            assert!(!moved.is_empty(), "nothing moved");
            // b answered every reservation with a port of its `port_range`.
            let [first, last] = agent_libvirt_util::port_range("b");
            let answers: Vec<String> = c
                .logs(1)
                .lines()
                .filter(|l| l.contains("reserved as migration destination"))
                .map(str::to_owned)
                .collect();
            assert!(!answers.is_empty());
            for l in &answers {
                let port = l
                    .split("tcp://127.0.0.1:")
                    .nth(1)
                    .and_then(|r| r.get(..5))
                    .and_then(|p| p.parse::<u16>().ok());
                assert!(
                    port.is_some_and(|p| (first..=last).contains(&p)),
                    "not a port of b's port_range: {l}"
                );
            }
            assert_eq!(on_a.get("own").map(String::as_str), Some("running"));
            assert!(!on_b.contains_key("own"), "an unmanaged domain was moved");
            for name in &moved {
                // The guest went on: its clock on b started where a's had got to.
                let (Some(a), Some(b)) = (last_on_a.get(name), first_on_b.get(name)) else {
                    panic!("{name}: ticks on a {last_on_a:?}, on b {first_on_b:?}");
                };
                assert!(
                    b >= a,
                    "{name}: guest clock {a} on a, then {b} on b: restarted"
                );
                assert!(
                    started_as_incoming(&hosts, "b", name),
                    "{name}: the QEMU on b was not started by a migration"
                );
                let reason = hosts.virsh("b", &["domstate", "--reason", name]);
                assert!(!reason.contains("booted"), "{name} on b: {reason}");
                let later = guest_ticks(&hosts, "b", name).expect("ticks");
                assert!(later > *b, "{name}: guest clock stands still on b");
                // The disk arrived whole, and a's copy is gone (`remove_source_disks`).
                let disk = hosts.images("b").join(format!("{name}.qcow2"));
                assert_eq!(
                    disk_sha(&disk),
                    sums[name],
                    "{name}: disk contents differ on b"
                );
                let old = hosts.images("a").join(format!("{name}.qcow2"));
                assert!(!old.exists(), "{name}: the source's disk file stayed");
            }
        });
    }));
    if let Err(panic) = result {
        c.print_log_tails(60);
        std::panic::resume_unwind(panic);
    }
}
