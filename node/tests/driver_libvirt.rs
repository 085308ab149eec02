//! The `libvirt` driver against two real libvirtds on this machine (`scripts/libvirt-hosts`):
//! the conformance suite (VMs on a directory both hosts see, configured as shared), adopt
//! after a restart, a migration to a dead host, and the refusals of a destination (a
//! name already defined there). Local disks copied between the hosts are covered by the
//! end-to-end test with agents in each host's namespace (cli/tests/agent_libvirt.rs).
#![cfg(feature = "libvirt")]

mod common;
mod libvirt_util;

use ballast_node::driver::libvirt::{LibvirtConfig, LibvirtDriver};
use ballast_node::driver::{Driver, DriverError, MigrationTarget, SourceCopy, VmRunState};
use ballast_node::units::Millis;
use ballast_store::{VmId, VmSpec};
use common::conformance::{self, state_of, wait_state};
use libvirt_util::{boot_image, LibvirtHosts};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Upper bound of one test's run time.
const TEST_LIMIT: Duration = Duration::from_secs(300);

fn config(hosts: &LibvirtHosts, h: &str) -> LibvirtConfig {
    LibvirtConfig {
        uri: hosts.uri(h),
        peer_uri: Some(hosts.uri(h)),
        migrate_uri: Some("tcp://127.0.0.1".into()),
        listen_address: Some("127.0.0.1".into()),
        shared_paths: vec![shared(hosts)],
        allow_unsafe: true,
        state_dir: hosts.dir().join(format!("{h}-state")),
        call_timeout: Millis::new(30_000),
        migrate_timeout: Millis::new(120_000),
        ..LibvirtConfig::default()
    }
}

fn shared(hosts: &LibvirtHosts) -> PathBuf {
    hosts.dir().join("shared")
}

/// Specs of VMs booting the tiny guest from their own image in the shared directory.
struct Specs {
    dir: PathBuf,
    n: AtomicUsize,
}

impl Specs {
    fn spec(&self) -> VmSpec {
        let n = self.n.fetch_add(1, Ordering::Relaxed);
        let img = self.dir.join(format!("boot{n}.qcow2"));
        boot_image(&img, 16 << 20);
        VmSpec {
            vcpus: 1,
            memory_mib: 32,
            disks: vec![img.display().to_string()],
            driver_opts: BTreeMap::new(),
            ..VmSpec::default()
        }
    }
}

/// Host `h`'s driver, and specs of VMs whose images are in the shared directory.
fn driver_on(hosts: &LibvirtHosts, h: &str) -> (LibvirtDriver, Specs) {
    std::fs::create_dir_all(shared(hosts)).unwrap();
    let d = LibvirtDriver::new(config(hosts, h)).unwrap();
    let specs = Specs {
        dir: shared(hosts),
        n: AtomicUsize::new(0),
    };
    (d, specs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_two_libvirtds() {
    let hosts = LibvirtHosts::start();
    std::fs::create_dir_all(shared(&hosts)).unwrap();
    let a = LibvirtDriver::new(config(&hosts, "a")).unwrap();
    let b = LibvirtDriver::new(config(&hosts, "b")).unwrap();
    assert_eq!(a.source_copy(), SourceCopy::Ended);
    let specs = Specs {
        dir: shared(&hosts),
        n: AtomicUsize::new(0),
    };
    let spec = || specs.spec();
    tokio::time::timeout(TEST_LIMIT, conformance::run_all(&a, &b, &spec))
        .await
        .expect("suite bound");
    let cfg = config(&hosts, "a");
    let make = || {
        let cfg = cfg.clone();
        async move { LibvirtDriver::new(cfg).unwrap() }
    };
    tokio::time::timeout(TEST_LIMIT, conformance::adopt_after_restart(make, &spec))
        .await
        .expect("adopt bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_destination_fails_the_migration_and_the_source_runs_on() {
    let hosts = LibvirtHosts::start();
    let (a, specs) = driver_on(&hosts, "a");
    let vm = VmId::from("dead-dst");
    a.start(&vm, &specs.spec()).await.unwrap();
    wait_state(&a, &vm, "Running", |s| s == Some(VmRunState::Running)).await;
    let dead = format!(
        "libvirt:{{\"peer_uri\":\"qemu+unix:///system?socket={}/nobody/libvirt-sock\",\"migrate_uri\":\"tcp://127.0.0.1\",\"listen_address\":null}}",
        hosts.dir().display()
    );
    let r = a.migrate_out(&vm, &MigrationTarget(dead), &|_| {}).await;
    assert!(
        matches!(r, Err(DriverError::MigrationFailed { .. })),
        "{r:?}"
    );
    assert_eq!(state_of(&a, &vm).await, Some(VmRunState::Running));
    // The migration never happened: a cancel is a no-op, not `SwitchedOver`.
    a.cancel_outgoing(&vm).await.unwrap();
    assert_eq!(state_of(&a, &vm).await, Some(VmRunState::Running));
    // A target that is not libvirt's is refused before anything starts.
    let r = a
        .migrate_out(&vm, &MigrationTarget("tcp:127.0.0.1:1".into()), &|_| {})
        .await;
    assert!(matches!(r, Err(DriverError::InvalidSpec(_))), "{r:?}");
    a.stop(&vm).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_refuses_a_name_it_already_has_and_a_missing_disk() {
    let hosts = LibvirtHosts::start();
    std::fs::create_dir_all(shared(&hosts)).unwrap();
    let b = LibvirtDriver::new(config(&hosts, "b")).unwrap();
    // A domain "taken" defined on b by its operator (not managed by ballast).
    let img = shared(&hosts).join("taken.qcow2");
    boot_image(&img, 16 << 20);
    let xml = hosts.dir().join("taken.xml");
    std::fs::write(&xml, libvirt_util::domain_xml("taken", &img, 32)).unwrap();
    hosts.virsh("b", &["define", &xml.display().to_string()]);
    let spec = VmSpec {
        vcpus: 1,
        memory_mib: 32,
        ..VmSpec::default()
    };
    let r = b.prepare_incoming(&VmId::from("taken"), &spec).await;
    assert!(matches!(r, Err(DriverError::BadState { .. })), "{r:?}");
    // A read-only medium that the destination lacks.
    let mut spec = spec;
    spec.driver_opts.insert(
        "libvirt.disk.sda".into(),
        format!(
            "file:raw:1024:1024:ro:{}",
            Path::new("/nonexistent/seed.iso").display()
        ),
    );
    let r = b.prepare_incoming(&VmId::from("other"), &spec).await;
    assert!(matches!(r, Err(DriverError::BadState { .. })), "{r:?}");
    // Neither refusal left a reservation behind.
    assert_eq!(state_of(&b, &VmId::from("other")).await, None);
    // The operator's domain is no VM of ballast's.
    assert_eq!(state_of(&b, &VmId::from("taken")).await, None);
}

/// The spec a source sends with a move follows the domain: a VM started from a spec with
/// no disk records gets them (format, virtual size, allocation), a disk grown with
/// `virsh blockresize` is sent with its new size, and an up-to-date spec is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_sent_with_a_move_follows_the_domain() {
    let hosts = LibvirtHosts::start();
    let (a, specs) = driver_on(&hosts, "a");
    let vm = VmId::from("grows");
    let spec = specs.spec();
    a.start(&vm, &spec).await.unwrap();
    wait_state(&a, &vm, "Running", |s| s == Some(VmRunState::Running)).await;
    let record = |s: &VmSpec| s.driver_opts.get("libvirt.disk.vda").cloned();
    assert_eq!(record(&spec), None);
    let fresh = a
        .current_spec(&vm, &spec)
        .await
        .unwrap()
        .expect("disk records");
    let r = record(&fresh).expect("vda recorded");
    assert!(r.starts_with(&format!("file:qcow2:{}:", 16 << 20)), "{r}");
    assert_eq!(a.current_spec(&vm, &fresh).await.unwrap(), None);

    hosts.virsh("a", &["blockresize", "grows", "vda", "32M"]);
    let grown = a
        .current_spec(&vm, &fresh)
        .await
        .unwrap()
        .expect("new size");
    let r = record(&grown).expect("vda recorded");
    assert!(r.starts_with(&format!("file:qcow2:{}:", 32 << 20)), "{r}");
    assert_eq!(grown.disks, fresh.disks);
    a.stop(&vm).await.unwrap();
}
