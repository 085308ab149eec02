//! VM spec → QEMU command line. Pure: the same spec and config give the same arguments
//! on every host, which live migration needs (the destination must be started with the
//! same devices as the source).
//!
//! Spec mapping:
//! - `vcpus` → `-smp N`, `memory_mib` → `-m N`.
//! - each `disks` entry: a path → `-drive file=PATH,format=raw|qcow2,if=<disk_interface>`
//!   (format from the extension: `.qcow2` → qcow2, else raw; a relative path lies under
//!   `image_dir`, see `disks`); an entry holding `=` is a complete `-drive` option
//!   string, passed as is.
//! - `driver_opts["net"]`: `none` (default), `user`, `tap:IFNAME` or `bridge:BRIDGE`,
//!   giving one `virtio-net-pci` NIC whose MAC is `driver_opts["mac"]` or derived from
//!   the VM id (stable, so it survives migration).
//! - config `extra_args`, then the spec's `extra_args`, are appended verbatim.

use super::config::{Accel, QemuConfig};
use super::disks::{self, Disk};
use super::vm_dir::VmDir;
use crate::driver::DriverError;
use ballast_store::{VmId, VmSpec};

/// Most vCPUs a spec may ask for.
const VCPUS_MAX: u32 = 288;
/// Least and most guest memory a spec may ask for, in MiB.
const MEMORY_MIB_MIN: u64 = 16;
const MEMORY_MIB_MAX: u64 = 16 * 1024 * 1024;

/// How the process is launched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Launch {
    /// Boots and runs.
    Run,
    /// Paused (`-S`), waiting for a migration stream (`-incoming defer`, then
    /// `migrate-incoming` over QMP).
    Incoming,
}

/// The accelerator arguments for `accel`; `kvm_usable` says whether `/dev/kvm` opens.
pub(crate) fn accel_args(accel: Accel, kvm_usable: bool) -> Vec<String> {
    let names: &[&str] = match (accel, kvm_usable) {
        (Accel::Kvm, _) => &["kvm"],
        (Accel::Tcg, _) | (Accel::Auto, false) => &["tcg"],
        (Accel::Auto, true) => &["kvm", "tcg"],
    };
    names
        .iter()
        .flat_map(|n| ["-accel".to_owned(), (*n).to_owned()])
        .collect()
}

/// Whether `/dev/kvm` can be opened read-write by this process.
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Escapes a value for QEMU's option syntax (a comma is written twice).
fn esc(s: &str) -> String {
    s.replace(',', ",,")
}

/// Checks what QEMU would refuse or what makes no sense.
pub(crate) fn validate(cfg: &QemuConfig, spec: &VmSpec) -> Result<(), DriverError> {
    if spec.vcpus == 0 || spec.vcpus > VCPUS_MAX {
        return Err(DriverError::InvalidSpec(format!(
            "vcpus must be 1..={VCPUS_MAX}, got {}",
            spec.vcpus
        )));
    }
    if !(MEMORY_MIB_MIN..=MEMORY_MIB_MAX).contains(&spec.memory_mib) {
        return Err(DriverError::InvalidSpec(format!(
            "memory_mib must be {MEMORY_MIB_MIN}..={MEMORY_MIB_MAX}, got {}",
            spec.memory_mib
        )));
    }
    if spec.disks.iter().any(|d| d.trim().is_empty()) {
        return Err(DriverError::InvalidSpec("empty disk entry".into()));
    }
    net_args(spec, &VmId::from("check"))?;
    disks::plan(cfg, spec)?;
    Ok(())
}

fn disk_args(disk: &Disk, disk_interface: &str) -> [String; 2] {
    let opts = match disk {
        Disk::Drive(opts) => opts.clone(),
        Disk::Image { path, format, .. } => format!(
            "file={},format={format},if={disk_interface}",
            esc(&path.to_string_lossy())
        ),
    };
    ["-drive".to_owned(), opts]
}

/// A locally administered MAC derived from the VM id (FNV-1a, stable across builds).
pub(crate) fn derived_mac(vm: &VmId) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in vm.as_str().bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let [_, a, b, c] = h.to_be_bytes();
    format!("52:54:00:{a:02x}:{b:02x}:{c:02x}")
}

fn net_args(spec: &VmSpec, vm: &VmId) -> Result<Vec<String>, DriverError> {
    let net = spec.driver_opts.get("net").map_or("none", String::as_str);
    let netdev = match net.split_once(':') {
        _ if net == "none" => return Ok(Vec::new()),
        _ if net == "user" => "user,id=net0".to_owned(),
        Some(("tap", ifname)) if !ifname.is_empty() => {
            format!("tap,id=net0,ifname={},script=no,downscript=no", esc(ifname))
        }
        Some(("bridge", br)) if !br.is_empty() => format!("bridge,id=net0,br={}", esc(br)),
        _ => {
            return Err(DriverError::InvalidSpec(format!(
                "driver_opts.net must be none, user, tap:IFNAME or bridge:BRIDGE, got {net:?}"
            )))
        }
    };
    let mac = match spec.driver_opts.get("mac") {
        Some(m) if is_mac(m) => m.clone(),
        Some(m) => return Err(DriverError::InvalidSpec(format!("bad MAC address {m:?}"))),
        None => derived_mac(vm),
    };
    Ok(vec![
        "-netdev".into(),
        netdev,
        "-device".into(),
        format!("virtio-net-pci,netdev=net0,mac={mac}"),
    ])
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The full argument list (without the binary) for `vm` in `dir`.
pub(crate) fn build(
    cfg: &QemuConfig,
    kvm_usable: bool,
    dir: &VmDir,
    vm: &VmId,
    spec: &VmSpec,
    launch: Launch,
) -> Result<Vec<String>, DriverError> {
    validate(cfg, spec)?;
    let mut a: Vec<String> = vec![
        "-name".into(),
        format!("guest={},debug-threads=on", esc(vm.as_str())),
        "-machine".into(),
        esc(&cfg.machine),
    ];
    a.extend(accel_args(cfg.accel, kvm_usable));
    a.extend([
        "-m".into(),
        spec.memory_mib.to_string(),
        "-smp".into(),
        spec.vcpus.to_string(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-qmp".into(),
        format!(
            "unix:{},server=on,wait=off",
            esc(&dir.qmp.to_string_lossy())
        ),
        "-pidfile".into(),
        dir.pid.to_string_lossy().into_owned(),
        "-daemonize".into(),
    ]);
    if launch == Launch::Incoming {
        a.extend(["-S".into(), "-incoming".into(), "defer".into()]);
    }
    for d in disks::plan(cfg, spec)? {
        a.extend(disk_args(&d, &cfg.disk_interface));
    }
    a.extend(net_args(spec, vm)?);
    a.extend(cfg.extra_args.iter().cloned());
    a.extend(spec.extra_args.iter().cloned());
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn spec() -> VmSpec {
        VmSpec {
            vcpus: 2,
            memory_mib: 128,
            disks: vec!["/img/a,b.qcow2".into(), "file=/x,if=ide,format=raw".into()],
            extra_args: vec!["-rtc".into(), "base=utc".into()],
            ..VmSpec::default()
        }
    }

    fn argv(spec: &VmSpec, launch: Launch) -> Result<Vec<String>, DriverError> {
        let dir = VmDir::of(Path::new("/st"), &VmId::from("vm1")).expect("dir");
        build(
            &QemuConfig::default(),
            false,
            &dir,
            &VmId::from("vm1"),
            spec,
            launch,
        )
    }

    fn has(a: &[String], pair: [&str; 2]) -> bool {
        a.windows(2).any(|w| w[0] == pair[0] && w[1] == pair[1])
    }

    #[test]
    fn spec_maps_to_arguments() {
        let a = argv(&spec(), Launch::Run).expect("argv");
        assert!(has(&a, ["-smp", "2"]) && has(&a, ["-m", "128"]));
        assert!(has(&a, ["-accel", "tcg"]));
        assert!(has(
            &a,
            ["-qmp", "unix:/st/vm1/qmp.sock,server=on,wait=off"]
        ));
        assert!(has(
            &a,
            ["-drive", "file=/img/a,,b.qcow2,format=qcow2,if=virtio"]
        ));
        assert!(has(&a, ["-drive", "file=/x,if=ide,format=raw"]));
        assert!(has(&a, ["-rtc", "base=utc"]));
        assert!(!a.iter().any(|x| x == "-S" || x == "-incoming"));
        let i = argv(&spec(), Launch::Incoming).expect("argv");
        assert!(has(&i, ["-incoming", "defer"]) && i.iter().any(|x| x == "-S"));
    }

    #[test]
    fn network_options() {
        let mut s = spec();
        s.driver_opts.insert("net".into(), "tap:tap7".into());
        let a = argv(&s, Launch::Run).expect("argv");
        assert!(has(
            &a,
            ["-netdev", "tap,id=net0,ifname=tap7,script=no,downscript=no"]
        ));
        let mac = derived_mac(&VmId::from("vm1"));
        assert!(has(
            &a,
            ["-device", &format!("virtio-net-pci,netdev=net0,mac={mac}")]
        ));
        assert_eq!(mac, derived_mac(&VmId::from("vm1")), "stable");
        assert!(is_mac(&mac));
        s.driver_opts.insert("net".into(), "carrier-pigeon".into());
        assert!(matches!(
            argv(&s, Launch::Run),
            Err(DriverError::InvalidSpec(_))
        ));
        s.driver_opts.insert("net".into(), "user".into());
        s.driver_opts.insert("mac".into(), "zz".into());
        assert!(matches!(
            argv(&s, Launch::Run),
            Err(DriverError::InvalidSpec(_))
        ));
    }

    #[test]
    fn invalid_specs_are_refused() {
        let mut s = spec();
        s.vcpus = 0;
        assert!(matches!(
            argv(&s, Launch::Run),
            Err(DriverError::InvalidSpec(_))
        ));
        let mut s = spec();
        s.memory_mib = 1;
        assert!(matches!(
            argv(&s, Launch::Run),
            Err(DriverError::InvalidSpec(_))
        ));
    }

    #[test]
    fn accelerators() {
        assert_eq!(
            accel_args(Accel::Auto, true),
            ["-accel", "kvm", "-accel", "tcg"]
        );
        assert_eq!(accel_args(Accel::Auto, false), ["-accel", "tcg"]);
        assert_eq!(accel_args(Accel::Kvm, false), ["-accel", "kvm"]);
    }
}
