//! The driver conformance suite on the sim driver in in-process mode, plus sim-only
//! checks: injected failures, run records and the I2 checker on real logs.

mod common;

use ballast_node::driver::sim::{
    check_no_double_run, read_runlog, RunEvent, RunRecord, SimConfig, SimDriver, SimMode,
};
use ballast_node::driver::{Driver, DriverError, MigrationStatus, SourceCopy, VmRunState};
use ballast_node::units::Millis;
use ballast_store::{NodeId, VmId, VmSpec};
use common::conformance;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn spec() -> VmSpec {
    VmSpec {
        vcpus: 1,
        memory_mib: 64,
        driver_opts: BTreeMap::from([("cpu".into(), "1.0".into()), ("io".into(), "1e6".into())]),
        ..VmSpec::default()
    }
}

fn config(dir: &Path, host: &str) -> SimConfig {
    SimConfig {
        state_dir: dir.join(host),
        host: NodeId::from(host),
        seed: 42,
        migration: Millis::new(30),
        mode: SimMode::InProcess,
        ..SimConfig::default()
    }
}

fn pair(dir: &Path) -> (SimDriver, SimDriver) {
    (
        SimDriver::new(config(dir, "a")).unwrap(),
        SimDriver::new(config(dir, "b")).unwrap(),
    )
}

fn all_records(ds: &[&SimDriver]) -> Vec<RunRecord> {
    ds.iter()
        .flat_map(|d| read_runlog(&d.runlog_path()).unwrap())
        .collect()
}

#[tokio::test]
async fn conformance_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(dir.path());
    tokio::time::timeout(
        Duration::from_secs(120),
        conformance::run_all(&a, &b, &spec),
    )
    .await
    .expect("suite bound");
    let v = check_no_double_run(&all_records(&[&a, &b]), &[]);
    assert!(v.is_empty(), "I2 violated during the suite: {v:?}");
}

/// The suite with the sim hypervisor ending the source copy at the switchover (as
/// libvirt does), plus the marker that keeps `Completed` / `SwitchedOver` across a new
/// driver instance (an agent restart).
#[tokio::test]
async fn conformance_source_copy_ended() {
    let dir = tempfile::tempdir().unwrap();
    let ended = |host| SimConfig {
        source_copy: SourceCopy::Ended,
        ..config(dir.path(), host)
    };
    let (a, b) = (
        SimDriver::new(ended("a")).unwrap(),
        SimDriver::new(ended("b")).unwrap(),
    );
    assert_eq!(a.source_copy(), SourceCopy::Ended);
    tokio::time::timeout(
        Duration::from_secs(120),
        conformance::run_all(&a, &b, &spec),
    )
    .await
    .expect("suite bound");
    let v = check_no_double_run(&all_records(&[&a, &b]), &[]);
    assert!(v.is_empty(), "I2 violated during the suite: {v:?}");

    let vm = VmId::from("ended-restart");
    a.start(&vm, &spec()).await.unwrap();
    let target = b.prepare_incoming(&vm, &spec()).await.unwrap();
    a.migrate_out(&vm, &target, &|_| {}).await.unwrap();
    drop(a);
    let a = SimDriver::new(ended("a")).unwrap();
    assert_eq!(
        a.migration_status(&vm).await.unwrap(),
        MigrationStatus::Completed
    );
    assert!(matches!(
        a.cancel_outgoing(&vm).await,
        Err(DriverError::SwitchedOver(_))
    ));
    a.finish_outgoing(&vm).await.unwrap();
    assert_eq!(
        a.migration_status(&vm).await.unwrap(),
        MigrationStatus::None
    );
    b.resume_incoming(&vm).await.unwrap();
    b.stop(&vm).await.unwrap();

    // A source copy lost with its host before any switchover: cancel finds nothing to
    // cancel and says so, rather than failing for ever (the source would never abort).
    let lost = VmId::from("ended-lost");
    a.start(&lost, &spec()).await.unwrap();
    b.prepare_incoming(&lost, &spec()).await.unwrap();
    a.stop(&lost).await.unwrap();
    assert_eq!(
        a.migration_status(&lost).await.unwrap(),
        MigrationStatus::None
    );
    a.cancel_outgoing(&lost).await.unwrap();
    b.cancel_incoming(&lost).await.unwrap();
}

#[tokio::test]
async fn conformance_adopt_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "a");
    let make = || {
        let cfg = cfg.clone();
        async move { SimDriver::new(cfg).unwrap() }
    };
    tokio::time::timeout(
        Duration::from_secs(60),
        conformance::adopt_after_restart(make, &spec),
    )
    .await
    .expect("suite bound");
}

#[tokio::test]
async fn injected_failures_fail_before_switchover() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(dir.path());
    let vm = VmId::from("flaky");
    a.start(&vm, &spec()).await.unwrap();
    let target = b.prepare_incoming(&vm, &spec()).await.unwrap();
    a.fail_next_migrations(2);
    for _ in 0..2 {
        let r = a.migrate_out(&vm, &target, &|_| {}).await;
        assert!(
            matches!(r, Err(DriverError::MigrationFailed { .. })),
            "{r:?}"
        );
        assert_eq!(
            conformance::state_of(&a, &vm).await,
            Some(VmRunState::Running)
        );
        assert_eq!(
            a.migration_status(&vm).await.unwrap(),
            MigrationStatus::Failed
        );
        assert!(
            !b.incoming_complete(&vm).await.unwrap(),
            "failed migration completed the copy"
        );
    }
    // The third one is not injected: it completes.
    let calls = std::sync::atomic::AtomicU32::new(0);
    let progress = |p: ballast_node::driver::MigrationProgress| {
        assert!(p.transferred_bytes <= 64 * 1024 * 1024);
        calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    };
    a.migrate_out(&vm, &target, &progress).await.unwrap();
    assert!(calls.into_inner() > 0, "progress was never reported");
    assert!(b.incoming_complete(&vm).await.unwrap());
    // fail_prob = 1: every migration fails.
    b.resume_incoming(&vm).await.unwrap();
    a.finish_outgoing(&vm).await.unwrap();
    b.set_fail_prob(1.0);
    let back = a.prepare_incoming(&vm, &spec()).await.unwrap();
    let r = b.migrate_out(&vm, &back, &|_| {}).await;
    assert!(
        matches!(r, Err(DriverError::MigrationFailed { .. })),
        "{r:?}"
    );
    assert_eq!(
        conformance::state_of(&b, &vm).await,
        Some(VmRunState::Running)
    );
    a.cancel_incoming(&vm).await.unwrap();
    b.stop(&vm).await.unwrap();
}

#[tokio::test]
async fn usage_and_run_records_follow_the_vm() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(dir.path());
    let vm = VmId::from("mover");
    a.start(&vm, &spec()).await.unwrap();
    let before = conformance::wait_cpu_above(&a, &vm, 0.01).await;
    let target = b.prepare_incoming(&vm, &spec()).await.unwrap();
    a.migrate_out(&vm, &target, &|_| {}).await.unwrap();
    let paused = b.usage(&vm).await.unwrap();
    assert!(
        paused.cpu_time_s >= before.cpu_time_s,
        "profile restarted on the destination"
    );
    b.resume_incoming(&vm).await.unwrap();
    a.finish_outgoing(&vm).await.unwrap();
    b.stop(&vm).await.unwrap();

    let recs = all_records(&[&a, &b]);
    let of = |host: &str, ev: RunEvent| {
        recs.iter()
            .filter(|r| r.host.as_str() == host && r.event == ev && r.vm.as_ref() == Some(&vm))
            .map(|r| r.t_ns)
            .collect::<Vec<_>>()
    };
    let (run_a, pause_a, stop_a) = (
        of("a", RunEvent::Run),
        of("a", RunEvent::Pause),
        of("a", RunEvent::Stop),
    );
    let (run_b, stop_b) = (of("b", RunEvent::Run), of("b", RunEvent::Stop));
    assert_eq!(
        (
            run_a.len(),
            pause_a.len(),
            stop_a.len(),
            run_b.len(),
            stop_b.len()
        ),
        (1, 1, 1, 1, 1)
    );
    assert!(run_a[0] < pause_a[0] && pause_a[0] < run_b[0] && run_b[0] < stop_b[0]);
    assert!(check_no_double_run(&recs, &[]).is_empty());
    // Each fresh in-process host wrote a boot record.
    assert!(recs
        .iter()
        .any(|r| r.event == RunEvent::Boot && r.host.as_str() == "a"));
}

#[tokio::test]
async fn checker_catches_a_real_double_run() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(dir.path());
    let vm = VmId::from("twin");
    a.start(&vm, &spec()).await.unwrap();
    b.start(&vm, &spec()).await.unwrap(); // the bug the checker exists for
    a.stop(&vm).await.unwrap();
    b.stop(&vm).await.unwrap();
    let v = check_no_double_run(&all_records(&[&a, &b]), &[]);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].vm, vm);
}

#[tokio::test]
async fn concurrent_migrations_keep_i2() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(dir.path());
    let (a, b) = (Arc::new(a), Arc::new(b));
    let vms: Vec<VmId> = (0..6).map(|i| VmId::from(format!("c{i}"))).collect();
    for vm in &vms {
        a.start(vm, &spec()).await.unwrap();
    }
    a.fail_next_migrations(2);
    let mut moves = tokio::task::JoinSet::new();
    for vm in vms.clone() {
        let (a, b) = (Arc::clone(&a), Arc::clone(&b));
        moves.spawn(async move {
            let target = b.prepare_incoming(&vm, &spec()).await.unwrap();
            match a.migrate_out(&vm, &target, &|_| {}).await {
                Ok(()) => {
                    b.resume_incoming(&vm).await.unwrap();
                    a.finish_outgoing(&vm).await.unwrap();
                    true
                }
                Err(DriverError::MigrationFailed { .. }) => {
                    a.cancel_outgoing(&vm).await.unwrap();
                    b.cancel_incoming(&vm).await.unwrap();
                    false
                }
                Err(e) => panic!("{e}"),
            }
        });
    }
    let all = tokio::time::timeout(Duration::from_secs(60), moves.join_all())
        .await
        .unwrap();
    assert_eq!(
        all.iter().filter(|m| **m).count(),
        4,
        "two injected failures"
    );
    let on_a = a.list().await.unwrap().len();
    let on_b = b.list().await.unwrap().len();
    assert_eq!((on_a, on_b), (2, 4));
    for vm in &vms {
        a.stop(vm).await.unwrap();
        b.stop(vm).await.unwrap();
    }
    assert!(check_no_double_run(&all_records(&[&a, &b]), &[]).is_empty());
}

#[tokio::test]
async fn invalid_specs_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _b) = pair(dir.path());
    let vm = VmId::from("bad");
    let mut s = spec();
    s.vcpus = 0;
    assert!(matches!(
        a.start(&vm, &s).await,
        Err(DriverError::InvalidSpec(_))
    ));
    let mut s = spec();
    s.driver_opts.insert("profile".into(), "zigzag".into());
    assert!(matches!(
        a.start(&vm, &s).await,
        Err(DriverError::InvalidSpec(_))
    ));
    assert!(matches!(
        a.prepare_incoming(&vm, &s).await,
        Err(DriverError::InvalidSpec(_))
    ));
    assert!(a.list().await.unwrap().is_empty());
    assert!(SimDriver::new(SimConfig {
        host: NodeId::from(""),
        ..config(dir.path(), "c")
    })
    .is_err());
    // A fail_prob outside [0, 1] cannot be built: `Probability` refuses it (the config
    // test `a_probability_out_of_range_is_refused_at_its_line`).
}
