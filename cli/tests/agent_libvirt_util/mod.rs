//! Agents on libvirt hosts for the end-to-end tests: a two-node [`Cluster`] whose agents
//! run the libvirt driver, each in its host's mount namespace (so each sees its own
//! `/var/lib/libvirt/images`, as on two machines), and guests defined with `virsh`, each
//! booting from its own local qcow2 disk with known contents.
//!
//! A test file that uses it declares `mod agent_util;` and the libvirt hosts' module
//! (`#[path = "../../node/tests/libvirt_util/mod.rs"] mod libvirt_util;`).
#![allow(dead_code)]

use crate::agent_util::{set_in_config, Cluster, NodeOpts};
use crate::libvirt_util::{domain_xml, qcow2_image, LibvirtHosts};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Virtual size of each guest's disk.
pub const DISK_BYTES: u64 = 64 << 20;

/// The guest's BIOS tick counter (18.2 Hz, in guest RAM at 0x46c): the guest's own
/// clock, carried over by a live migration and reset by a restart.
pub fn guest_ticks(hosts: &LibvirtHosts, h: &str, name: &str) -> Option<u64> {
    let out = Command::new("virsh")
        .arg("-c")
        .arg(hosts.uri(h))
        .args(["qemu-monitor-command", name, "--hmp", "xp /1wx 0x46c"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.rsplit_once("0x")?.1.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// SHA-256 of the disk's contents as the guest sees them (read while the VM runs).
pub fn disk_sha(path: &Path) -> String {
    let raw = path.with_extension("check.raw");
    let ok = Command::new("qemu-img")
        .args(["convert", "-U", "-q", "-O", "raw"])
        .arg(path)
        .arg(&raw)
        .status()
        .expect("qemu-img")
        .success();
    assert!(ok, "qemu-img could not read {}", path.display());
    let out = Command::new("sha256sum")
        .arg(&raw)
        .output()
        .expect("sha256sum");
    let _ = std::fs::remove_file(&raw);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A boot disk for guest `i`: the boot sector, then 2 MiB of bytes that depend on `i`.
pub fn make_disk(path: &Path, i: usize) {
    let mut bytes = ballast_node::driver::qemu::guest::boot_sector().to_vec();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1);
    while bytes.len() < (2 << 20) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    qcow2_image(path, &bytes, DISK_BYTES);
}

/// Defines and starts guest `name` (disk contents `i`, `memory_mib` of RAM) on host `h`
/// with `virsh`, as an operator does; returns its disk as seen from outside the host.
pub fn define_guest(
    hosts: &LibvirtHosts,
    h: &str,
    name: &str,
    i: usize,
    memory_mib: u64,
) -> PathBuf {
    let disk = hosts.images(h).join(format!("{name}.qcow2"));
    make_disk(&disk, i);
    let xml = hosts.dir().join(format!("{name}.xml"));
    let inside = Path::new("/var/lib/libvirt/images").join(format!("{name}.qcow2"));
    std::fs::write(&xml, domain_xml(name, &inside, memory_mib)).expect("xml");
    hosts.virsh(h, &["define", &xml.display().to_string()]);
    hosts.virsh(h, &["start", name]);
    disk
}

/// The ports host `h` picks incoming memory streams' from (`port_range`): outside the
/// ranges in the hosts' qemu.conf (scripts/libvirt-hosts), so a port of this range in a
/// migration was ballast's choice.
pub fn port_range(h: &str) -> [u16; 2] {
    if h == "a" {
        [49210, 49219]
    } else {
        [49200, 49209]
    }
}

/// The `[driver.libvirt]` section of host `h`'s agent; `extra` is appended to it.
pub fn libvirt_section(hosts: &LibvirtHosts, h: &str, extra: &str) -> String {
    let [first, last] = port_range(h);
    format!(
        "\n[driver.libvirt]\npeer_uri = \"{}\"\nmigrate_uri = \"tcp://127.0.0.1\"\n\
         listen_address = \"127.0.0.1\"\ncall_timeout = \"30s\"\nmigrate_timeout = \"60s\"\n\
         port_range = [{first}, {last}]\n{extra}",
        hosts.uri(h)
    )
}

/// Two agents, `n1` on host a and `n2` on host b, on the libvirt driver with measured
/// loads and timeouts that suit TCG migrations on two shared cores; a non-empty `policy`
/// replaces the `[policy]` section's lines (not started).
pub fn libvirt_cluster(hosts: &LibvirtHosts, balancing: bool, policy: &str) -> Cluster {
    let opts: Vec<NodeOpts> = ["a", "b"]
        .iter()
        .map(|h| NodeOpts {
            cpu_cores: 1.0,
            balancing,
            extra: libvirt_section(hosts, h, ""),
            ..NodeOpts::default()
        })
        .collect();
    let mut c = Cluster::new(&opts);
    for n in &c.nodes {
        set_in_config(&n.config, "kind = \"sim\"", "kind = \"libvirt\"");
        set_in_config(&n.config, "mode = \"target\"", "mode = \"measured\"");
        set_in_config(
            &n.config,
            "prepare_timeout = \"3s\"",
            "prepare_timeout = \"30s\"",
        );
        set_in_config(
            &n.config,
            "migrate_timeout = \"20s\"",
            "migrate_timeout = \"60s\"",
        );
        set_in_config(&n.config, "rpc_timeout = \"3s\"", "rpc_timeout = \"20s\"");
        if !policy.is_empty() {
            set_in_config(&n.config, "cooldown = \"0s\"", policy);
        }
    }
    set_launchers(&mut c, hosts);
    c
}

/// Runs each agent from its next start on in its host's mount namespace, the one of the
/// host's libvirtd now (call again after a libvirtd restart: its pid changed).
pub fn set_launchers(c: &mut Cluster, hosts: &LibvirtHosts) {
    for (i, h) in ["a", "b"].iter().enumerate() {
        let pid = hosts.daemon_pid(h).to_string();
        c.set_launcher(
            i,
            ["nsenter", "-t", &pid, "-m", "--"]
                .iter()
                .map(Into::into)
                .collect(),
        );
    }
}

/// Sets `key = value` in the `[driver.libvirt]` section of a node's config (the last
/// section: [`libvirt_section`] is appended to the config), replacing the key's line if
/// there is one.
pub fn set_libvirt_option(config: &Path, key: &str, value: &str) {
    let text = std::fs::read_to_string(config).expect("read config");
    let (head, section) = text
        .split_once("[driver.libvirt]\n")
        .expect("a [driver.libvirt] section");
    let prefix = format!("{key} =");
    let mut lines: Vec<String> = section
        .lines()
        .filter(|l| !l.starts_with(&prefix))
        .map(str::to_owned)
        .collect();
    lines.push(format!("{key} = {value}"));
    let out = format!("{head}[driver.libvirt]\n{}\n", lines.join("\n"));
    std::fs::write(config, out).expect("write config");
}

/// The state of domain `name` on host `h` (`running`, `paused`, `shut off`), or `None`
/// when the host has no such domain.
pub fn domain_state(hosts: &LibvirtHosts, h: &str, name: &str) -> Option<String> {
    let out = Command::new("virsh")
        .arg("-c")
        .arg(hosts.uri(h))
        .args(["domstate", name])
        .output()
        .expect("run virsh");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
