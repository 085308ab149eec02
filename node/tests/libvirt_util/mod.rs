//! Two real libvirt "hosts" on this machine for a test (`scripts/libvirt-hosts`): started
//! in a fresh short directory, stopped (daemons and their QEMUs, by pid) when dropped,
//! also when the test fails.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The two hosts `a` and `b`.
pub struct LibvirtHosts {
    dir: tempfile::TempDir,
    script: PathBuf,
}

impl LibvirtHosts {
    /// Starts both daemons; panics with the script's output if they do not come up.
    pub fn start() -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("scripts")
            .join("libvirt-hosts");
        // Short: libvirt's socket path DIR/a/run/libvirt/libvirt-sock must fit 107 bytes.
        let dir = tempfile::Builder::new()
            .prefix("blv")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let out = Command::new(&script)
            .arg("start")
            .arg(dir.path())
            .output()
            .expect("run scripts/libvirt-hosts");
        let hosts = Self { dir, script };
        assert!(
            out.status.success(),
            "libvirt hosts did not start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        hosts
    }

    /// The directory holding both hosts.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The URI that reaches host `h` (`a` or `b`) from anywhere on this machine.
    pub fn uri(&self, h: &str) -> String {
        format!(
            "qemu+unix:///system?socket={}/{h}/run/libvirt/libvirt-sock",
            self.dir.path().display()
        )
    }

    /// Host `h`'s `/var/lib/libvirt/images`, as seen from outside its namespace.
    pub fn images(&self, h: &str) -> PathBuf {
        self.dir.path().join(h).join("lib/libvirt/images")
    }

    /// The pid of host `h`'s libvirtd (its mount namespace is the host's view).
    pub fn daemon_pid(&self, h: &str) -> u32 {
        let p = self.dir.path().join(h).join("libvirtd.pid");
        std::fs::read_to_string(&p)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pid in {}", p.display()))
    }

    /// Kills host `h`'s libvirtd (SIGKILL: a crash, or systemd's stop timeout when a
    /// migration job keeps it from exiting on SIGTERM) and waits until it is gone. Its
    /// guests run on.
    pub fn kill_daemon(&self, h: &str) {
        let pid = self.daemon_pid(h);
        let stat = format!("/proc/{pid}/stat");
        // Gone, or a zombie not yet reaped by pid 1.
        let exited = || !std::fs::read_to_string(&stat).is_ok_and(|s| !s.contains(") Z "));
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        let t0 = std::time::Instant::now();
        while !exited() && t0.elapsed() < std::time::Duration::from_secs(20) {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(exited(), "libvirtd {pid} did not exit");
    }

    /// Starts the hosts' daemons that are not running (after [`Self::kill_daemon`]): each
    /// finds its guests' status in the host's run directory and reconnects to them. A
    /// restarted daemon has a new pid.
    pub fn start_missing(&self) {
        let out = Command::new(&self.script)
            .arg("start")
            .arg(self.dir.path())
            .output()
            .expect("run scripts/libvirt-hosts");
        assert!(
            out.status.success(),
            "libvirtd did not start again: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// [`Self::kill_daemon`] then [`Self::start_missing`].
    pub fn crash_and_restart_daemon(&self, h: &str) {
        self.kill_daemon(h);
        self.start_missing();
    }

    /// `virsh -c <host h> ARGS...`; panics unless it succeeds; returns its stdout.
    pub fn virsh(&self, h: &str, args: &[&str]) -> String {
        let out = Command::new("virsh")
            .arg("-c")
            .arg(self.uri(h))
            .args(args)
            .output()
            .expect("run virsh");
        assert!(
            out.status.success(),
            "virsh {args:?} on {h}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The domains host `h` has, by name, with their state (`running`, `paused`, `shut off`).
    pub fn domains(&self, h: &str) -> Vec<(String, String)> {
        self.virsh(h, &["list", "--all", "--name"])
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|name| {
                let state = self.virsh(h, &["domstate", name]).trim().to_owned();
                (name.to_owned(), state)
            })
            .collect()
    }
}

impl Drop for LibvirtHosts {
    fn drop(&mut self) {
        let out = Command::new(&self.script)
            .arg("stop")
            .arg(self.dir.path())
            .output();
        if let Ok(o) = out {
            if !o.status.success() {
                eprintln!("libvirt-hosts stop: {}", String::from_utf8_lossy(&o.stderr));
            }
        }
    }
}

/// The tiny boot sector (the qemu driver's demo guest) as a qcow2 image of `size` bytes at
/// `path`.
pub fn boot_image(path: &Path, size: u64) {
    qcow2_image(
        path,
        &ballast_node::driver::qemu::guest::boot_sector(),
        size,
    );
}

/// A qcow2 image at `path` of virtual size `size` whose first bytes are `contents`, made
/// with `qemu-img`.
pub fn qcow2_image(path: &Path, contents: &[u8], size: u64) {
    let raw = path.with_extension("seed.raw");
    std::fs::write(&raw, contents).expect("write the image's contents");
    let ok = Command::new("qemu-img")
        .args(["convert", "-q", "-O", "qcow2"])
        .arg(&raw)
        .arg(path)
        .status()
        .expect("qemu-img convert")
        .success()
        && Command::new("qemu-img")
            .args(["resize", "-q"])
            .arg(path)
            .arg(size.to_string())
            .status()
            .expect("qemu-img resize")
            .success();
    let _ = std::fs::remove_file(&raw);
    assert!(ok, "qemu-img could not make {}", path.display());
}

/// A domain XML that boots the image at `disk` (IDE, which every SeaBIOS boots).
pub fn domain_xml(name: &str, disk: &Path, memory_mib: u64) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>\
         <cpu mode='custom'><model>qemu64</model></cpu>\
         <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
         <source file='{}'/><target dev='hda' bus='ide'/></disk><serial type='pty'/></devices></domain>",
        disk.display()
    )
}
