//! The driver conformance suite: generic checks of the `Driver` trait contract.
//!
//! Every check is an async function taking the driver(s) under test and a [`SpecFactory`]
//! (a VM spec valid for that driver). Checks use their own VM ids (`conf-<check>`), so
//! they can run one after another on the same two drivers; run each test on fresh state
//! directories. A check panics (assert) on the first contract violation.
//!
//! Hypervisors are allowed to be slow (a QEMU destination may report `Paused` a moment
//! after the source's `migrate_out` returned), so states that may lag are polled until
//! [`SETTLE`]; no check asserts on how long anything took.
//!
//! Sources and destinations: a migration check takes `src` and `dst`, two driver
//! instances standing for two hosts (separate state directories).
//!
//! What the switchover leaves of the source depends on the driver (`Driver::source_copy`):
//! `Kept` — a paused copy that `cancel_outgoing` can resume until `finish_outgoing`;
//! `Ended` — nothing (the hypervisor ended it), `migration_status` still says `Completed`
//! and `cancel_outgoing` fails with `SwitchedOver`, so the destination must be resumed.

use ballast_node::driver::{
    Driver, DriverError, MigrationProgress, MigrationStatus, MigrationTarget, SourceCopy,
    UsageSample, VmRunState,
};
use ballast_store::{VmId, VmSpec};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Makes a spec the driver under test accepts (for the sim driver: a usage profile).
pub type SpecFactory<'a> = &'a (dyn Fn() -> VmSpec + Sync);

/// Upper bound for waiting on a state that may lag or a counter that must grow.
pub const SETTLE: Duration = Duration::from_secs(30);

/// Poll interval while waiting.
const POLL: Duration = Duration::from_millis(20);

/// Runs every check that needs one or two plain driver instances, in order.
pub async fn run_all(src: &dyn Driver, dst: &dyn Driver, spec: SpecFactory<'_>) {
    unknown_vm_errors(src).await;
    lifecycle(src, spec).await;
    prepare_incoming_paused_idempotent(dst, spec).await;
    migrate_commit(src, dst, spec).await;
    cancel_before_migrate(src, dst, spec).await;
    cancel_after_switchover(src, dst, spec).await;
    migrate_to_dead_target_fails(src, dst, spec).await;
    migrate_back_and_forth(src, dst, spec).await;
}

/// The run state of `vm` in `d.list()`, or `None` when the VM is absent.
pub async fn state_of(d: &dyn Driver, vm: &VmId) -> Option<VmRunState> {
    let all = d.list().await.expect("list");
    let mut found = all.iter().filter(|i| &i.vm == vm);
    let first = found.next().map(|i| i.state);
    assert!(found.next().is_none(), "{vm} listed twice by {}", d.name());
    first
}

/// Polls `list` until `vm`'s state satisfies `ok`; panics after [`SETTLE`].
pub async fn wait_state(
    d: &dyn Driver,
    vm: &VmId,
    what: &str,
    ok: impl Fn(Option<VmRunState>) -> bool,
) {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let s = state_of(d, vm).await;
        if ok(s) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: {vm} never became {what}; last state {s:?}",
            d.name()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `usage` until its CPU time exceeds `than`; returns that sample.
pub async fn wait_cpu_above(d: &dyn Driver, vm: &VmId, than: f64) -> UsageSample {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let u = d.usage(vm).await.expect("usage");
        assert!(
            u.cpu_time_s.is_finite() && u.cpu_time_s >= 0.0,
            "bad sample {u:?}"
        );
        if u.cpu_time_s > than {
            return u;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: cpu_time of {vm} stuck at {} (wanted > {than})",
            d.name(),
            u.cpu_time_s
        );
        tokio::time::sleep(POLL).await;
    }
}

fn running(s: Option<VmRunState>) -> bool {
    s == Some(VmRunState::Running)
}
fn paused(s: Option<VmRunState>) -> bool {
    s == Some(VmRunState::Paused)
}
fn absent(s: Option<VmRunState>) -> bool {
    s.is_none()
}
fn waiting_incoming(s: Option<VmRunState>) -> bool {
    matches!(s, Some(VmRunState::Incoming | VmRunState::Paused))
}

fn no_progress() -> impl Fn(MigrationProgress) + Send + Sync {
    |_| {}
}

/// Calls on a VM the driver never saw: reads fail with `NotFound`, idempotent removals
/// are Ok, nothing appears in `list`.
pub async fn unknown_vm_errors(d: &dyn Driver) {
    let vm = VmId::from("conf-unknown");
    assert!(
        matches!(d.usage(&vm).await, Err(DriverError::NotFound(_))),
        "usage of unknown"
    );
    assert!(
        d.resume_incoming(&vm).await.is_err(),
        "resume_incoming of unknown VM must fail"
    );
    let target = MigrationTarget("tcp:127.0.0.1:9".into());
    let r = d.migrate_out(&vm, &target, &no_progress()).await;
    assert!(
        matches!(r, Err(DriverError::NotFound(_))),
        "migrate_out of unknown: {r:?}"
    );
    d.stop(&vm)
        .await
        .expect("stop of unknown VM is Ok (idempotent)");
    d.cancel_incoming(&vm)
        .await
        .expect("cancel_incoming of unknown VM is Ok");
    d.finish_outgoing(&vm)
        .await
        .expect("finish_outgoing of unknown VM is Ok");
    match d.migration_status(&vm).await {
        Ok(MigrationStatus::None) | Err(DriverError::NotFound(_)) => {}
        other => panic!("migration_status of unknown VM: {other:?}"),
    }
    match d.incoming_complete(&vm).await {
        Ok(false) | Err(DriverError::NotFound(_)) => {}
        other => panic!("incoming_complete of unknown VM: {other:?}"),
    }
    assert!(absent(state_of(d, &vm).await));
}

/// start / list / usage (CPU time grows) / start again / stop / stop again.
pub async fn lifecycle(d: &dyn Driver, spec: SpecFactory<'_>) {
    let vm = VmId::from("conf-life");
    let spec = spec();
    assert!(absent(state_of(d, &vm).await), "{vm} present before start");
    d.start(&vm, &spec).await.expect("start");
    wait_state(d, &vm, "Running", running).await;
    let a = d.usage(&vm).await.expect("usage");
    let b = wait_cpu_above(d, &vm, a.cpu_time_s).await;
    assert!(
        b.io_bytes >= a.io_bytes,
        "io_bytes went back: {a:?} then {b:?}"
    );
    assert!(b.mem_bytes > 0, "a running VM uses memory: {b:?}");
    d.start(&vm, &spec)
        .await
        .expect("start of a running VM is Ok");
    wait_state(d, &vm, "Running", running).await;
    let c = d.usage(&vm).await.expect("usage");
    assert!(
        c.cpu_time_s >= b.cpu_time_s,
        "second start restarted the VM: {b:?} then {c:?}"
    );
    d.stop(&vm).await.expect("stop");
    wait_state(d, &vm, "absent", absent).await;
    d.stop(&vm).await.expect("second stop is Ok");
    assert!(
        matches!(d.usage(&vm).await, Err(DriverError::NotFound(_))),
        "usage after stop"
    );
}

/// prepare_incoming leaves a paused (or still-incoming) copy, a second call returns the
/// same target, the copy is not complete and cannot be resumed, cancel_incoming drops it.
pub async fn prepare_incoming_paused_idempotent(d: &dyn Driver, spec: SpecFactory<'_>) {
    let vm = VmId::from("conf-prep");
    let spec = spec();
    let t1 = d
        .prepare_incoming(&vm, &spec)
        .await
        .expect("prepare_incoming");
    assert!(
        waiting_incoming(state_of(d, &vm).await),
        "incoming copy must not run"
    );
    let t2 = d
        .prepare_incoming(&vm, &spec)
        .await
        .expect("second prepare_incoming");
    assert_eq!(t1, t2, "prepare_incoming is idempotent");
    assert!(!d.incoming_complete(&vm).await.expect("incoming_complete"));
    assert!(
        d.resume_incoming(&vm).await.is_err(),
        "resumed an incoming copy with no state"
    );
    assert!(
        waiting_incoming(state_of(d, &vm).await),
        "failed resume changed the copy"
    );
    assert!(
        d.start(&vm, &spec).await.is_err(),
        "start over an incoming copy must fail"
    );
    d.cancel_incoming(&vm).await.expect("cancel_incoming");
    wait_state(d, &vm, "absent", absent).await;
    d.cancel_incoming(&vm)
        .await
        .expect("second cancel_incoming");
}

/// Starts `vm` on `src`, waits for it to use some CPU, prepares `dst`, migrates.
/// Returns the last source usage sample before the migration.
async fn start_and_migrate(
    src: &dyn Driver,
    dst: &dyn Driver,
    vm: &VmId,
    spec: &VmSpec,
) -> UsageSample {
    src.start(vm, spec).await.expect("start on src");
    let before = wait_cpu_above(src, vm, 0.0).await;
    let target = dst
        .prepare_incoming(vm, spec)
        .await
        .expect("prepare_incoming on dst");
    assert_eq!(
        src.migration_status(vm).await.expect("status"),
        MigrationStatus::None
    );
    let calls = AtomicU64::new(0);
    let progress = |_: MigrationProgress| {
        calls.fetch_add(1, Ordering::Relaxed);
    };
    src.migrate_out(vm, &target, &progress)
        .await
        .expect("migrate_out");
    before
}

/// The whole happy path: switchover leaves both copies paused; the destination runs
/// only after resume_incoming; the source is gone after finish_outgoing; the VM keeps
/// running on the destination.
pub async fn migrate_commit(src: &dyn Driver, dst: &dyn Driver, spec: SpecFactory<'_>) {
    let vm = VmId::from("conf-commit");
    let spec = spec();
    start_and_migrate(src, dst, &vm, &spec).await;
    assert_source_after_switchover(src, &vm).await;
    let st = src.migration_status(&vm).await.expect("migration_status");
    assert_eq!(st, MigrationStatus::Completed);
    wait_state(dst, &vm, "Paused", paused).await;
    assert!(dst.incoming_complete(&vm).await.expect("incoming_complete"));
    assert!(
        paused(state_of(dst, &vm).await),
        "destination ran before resume_incoming"
    );
    // Paused copies do not run: the source's CPU time stands still.
    let kept = src.source_copy() == SourceCopy::Kept;
    let s1 = if kept {
        Some(src.usage(&vm).await.expect("usage of paused source"))
    } else {
        None
    };
    dst.resume_incoming(&vm).await.expect("resume_incoming");
    wait_state(dst, &vm, "Running", running).await;
    dst.resume_incoming(&vm)
        .await
        .expect("second resume_incoming is Ok");
    if let Some(s1) = s1 {
        let s2 = src.usage(&vm).await.expect("usage of paused source");
        assert!(
            s2.cpu_time_s <= s1.cpu_time_s + 0.25,
            "paused source still runs: {s1:?} {s2:?}"
        );
    }
    src.finish_outgoing(&vm).await.expect("finish_outgoing");
    wait_state(src, &vm, "absent", absent).await;
    src.finish_outgoing(&vm)
        .await
        .expect("second finish_outgoing");
    // Independence (I4): the destination copy keeps running without the source.
    let d1 = dst.usage(&vm).await.expect("usage on dst");
    wait_cpu_above(dst, &vm, d1.cpu_time_s).await;
    assert!(running(state_of(dst, &vm).await));
    dst.stop(&vm).await.expect("stop on dst");
    wait_state(dst, &vm, "absent", absent).await;
}

/// Abort before any transfer: cancel_outgoing leaves the source running, cancel_incoming
/// drops the destination copy.
pub async fn cancel_before_migrate(src: &dyn Driver, dst: &dyn Driver, spec: SpecFactory<'_>) {
    let vm = VmId::from("conf-cancel-early");
    let spec = spec();
    src.start(&vm, &spec).await.expect("start");
    dst.prepare_incoming(&vm, &spec)
        .await
        .expect("prepare_incoming");
    src.cancel_outgoing(&vm)
        .await
        .expect("cancel_outgoing with no migration");
    assert!(
        running(state_of(src, &vm).await),
        "cancel_outgoing must leave the VM running"
    );
    dst.cancel_incoming(&vm).await.expect("cancel_incoming");
    wait_state(dst, &vm, "absent", absent).await;
    assert_eq!(
        src.migration_status(&vm).await.expect("status"),
        MigrationStatus::None
    );
    let a = src.usage(&vm).await.expect("usage");
    wait_cpu_above(src, &vm, a.cpu_time_s).await;
    src.stop(&vm).await.expect("stop");
    wait_state(src, &vm, "absent", absent).await;
}

/// Abort after the switchover but before the commit point: the source runs again (its
/// CPU time continues, not reset) and the destination copy is dropped.
pub async fn cancel_after_switchover(src: &dyn Driver, dst: &dyn Driver, spec: SpecFactory<'_>) {
    let vm = VmId::from("conf-cancel-late");
    let spec = spec();
    let before = start_and_migrate(src, dst, &vm, &spec).await;
    assert_source_after_switchover(src, &vm).await;
    if src.source_copy() == SourceCopy::Ended {
        return cancel_after_switchover_rolls_forward(src, dst, &vm, before).await;
    }
    src.cancel_outgoing(&vm).await.expect("cancel_outgoing");
    wait_state(src, &vm, "Running", running).await;
    src.cancel_outgoing(&vm)
        .await
        .expect("second cancel_outgoing");
    assert!(running(state_of(src, &vm).await));
    let st = src.migration_status(&vm).await.expect("status");
    assert_ne!(
        st,
        MigrationStatus::Active,
        "cancelled migration still active"
    );
    dst.cancel_incoming(&vm).await.expect("cancel_incoming");
    wait_state(dst, &vm, "absent", absent).await;
    let u = wait_cpu_above(src, &vm, before.cpu_time_s).await;
    assert!(
        u.cpu_time_s >= before.cpu_time_s,
        "source restarted instead of resumed"
    );
    src.stop(&vm).await.expect("stop");
    wait_state(src, &vm, "absent", absent).await;
}

/// What a completed switchover leaves on the source: a paused copy (`Kept`) or none
/// (`Ended`).
async fn assert_source_after_switchover(src: &dyn Driver, vm: &VmId) {
    match src.source_copy() {
        SourceCopy::Kept => assert!(
            paused(state_of(src, vm).await),
            "source must be paused after switchover"
        ),
        SourceCopy::Ended => wait_state(src, vm, "absent (ended by the switchover)", absent).await,
    }
}

/// `Ended` drivers: a cancel after the switchover fails with `SwitchedOver` (twice: it
/// changes nothing), the status stays `Completed`, and the destination's complete copy
/// resumes with the CPU time the guest had (moved, not restarted).
async fn cancel_after_switchover_rolls_forward(
    src: &dyn Driver,
    dst: &dyn Driver,
    vm: &VmId,
    before: UsageSample,
) {
    for _ in 0..2 {
        let r = src.cancel_outgoing(vm).await;
        assert!(
            matches!(r, Err(DriverError::SwitchedOver(_))),
            "cancel_outgoing after the switchover: {r:?}"
        );
    }
    assert_eq!(
        src.migration_status(vm).await.expect("status"),
        MigrationStatus::Completed
    );
    wait_state(dst, vm, "Paused", paused).await;
    assert!(dst.incoming_complete(vm).await.expect("incoming_complete"));
    dst.resume_incoming(vm).await.expect("resume_incoming");
    let u = wait_cpu_above(dst, vm, before.cpu_time_s).await;
    assert!(u.cpu_time_s >= before.cpu_time_s);
    src.finish_outgoing(vm).await.expect("finish_outgoing");
    assert!(absent(state_of(src, vm).await));
    dst.stop(vm).await.expect("stop on dst");
    wait_state(dst, vm, "absent", absent).await;
}

/// A migration to a target nobody listens on fails with `MigrationFailed` and the
/// source keeps running.
pub async fn migrate_to_dead_target_fails(
    src: &dyn Driver,
    dst: &dyn Driver,
    spec: SpecFactory<'_>,
) {
    if src.source_copy() == SourceCopy::Ended {
        // A libvirt destination accepts any migration while its libvirtd runs (a cancelled
        // reservation leaves nothing that refuses); its own tests cover a dead target.
        return;
    }
    let vm = VmId::from("conf-dead-target");
    let spec = spec();
    src.start(&vm, &spec).await.expect("start");
    let target = dst
        .prepare_incoming(&vm, &spec)
        .await
        .expect("prepare_incoming");
    dst.cancel_incoming(&vm).await.expect("cancel_incoming");
    wait_state(dst, &vm, "absent", absent).await;
    let r = src.migrate_out(&vm, &target, &no_progress()).await;
    assert!(
        matches!(r, Err(DriverError::MigrationFailed { .. })),
        "got {r:?}"
    );
    wait_state(src, &vm, "Running", running).await;
    let st = src.migration_status(&vm).await.expect("status");
    assert!(
        matches!(st, MigrationStatus::Failed | MigrationStatus::None),
        "status {st:?}"
    );
    src.cancel_outgoing(&vm)
        .await
        .expect("cancel_outgoing after a failure");
    assert!(running(state_of(src, &vm).await));
    src.stop(&vm).await.expect("stop");
}

/// A VM moved A → B → A: the second move works like the first (no leftovers block it).
pub async fn migrate_back_and_forth(src: &dyn Driver, dst: &dyn Driver, spec: SpecFactory<'_>) {
    let vm = VmId::from("conf-round-trip");
    let spec = spec();
    start_and_migrate(src, dst, &vm, &spec).await;
    dst.resume_incoming(&vm).await.expect("resume on dst");
    src.finish_outgoing(&vm).await.expect("finish on src");
    wait_state(src, &vm, "absent", absent).await;
    let target = src
        .prepare_incoming(&vm, &spec)
        .await
        .expect("prepare back on src");
    dst.migrate_out(&vm, &target, &no_progress())
        .await
        .expect("migrate back");
    wait_state(src, &vm, "Paused", paused).await;
    src.resume_incoming(&vm).await.expect("resume on src");
    dst.finish_outgoing(&vm).await.expect("finish on dst");
    wait_state(src, &vm, "Running", running).await;
    wait_state(dst, &vm, "absent", absent).await;
    src.stop(&vm).await.expect("stop");
}

/// After the driver is dropped and re-created on the same state, `adopt` finds the
/// running VM and the incoming copy without restarting them (CPU time does not reset).
pub async fn adopt_after_restart<D, F, Fut>(make: F, spec: SpecFactory<'_>)
where
    D: Driver,
    F: Fn() -> Fut,
    Fut: Future<Output = D>,
{
    let vm = VmId::from("conf-adopt");
    let inc = VmId::from("conf-adopt-incoming");
    let spec = spec();
    let first = make().await;
    first.start(&vm, &spec).await.expect("start");
    let before = wait_cpu_above(&first, &vm, 0.0).await;
    let target = first
        .prepare_incoming(&inc, &spec)
        .await
        .expect("prepare_incoming");
    drop(first);

    let second = make().await;
    let adopted = second.adopt().await.expect("adopt");
    let find = |id: &VmId| adopted.iter().find(|i| &i.vm == id).map(|i| i.state);
    assert!(
        running(find(&vm)),
        "adopt did not find the running VM: {adopted:?}"
    );
    assert!(
        waiting_incoming(find(&inc)),
        "adopt did not find the incoming copy: {adopted:?}"
    );
    let after = second.usage(&vm).await.expect("usage after adopt");
    assert!(
        after.cpu_time_s >= before.cpu_time_s,
        "VM was restarted: cpu_time {} then {}",
        before.cpu_time_s,
        after.cpu_time_s
    );
    assert!(running(state_of(&second, &vm).await));
    let again = second
        .prepare_incoming(&inc, &spec)
        .await
        .expect("prepare after adopt");
    assert_eq!(again, target, "adopted incoming copy keeps its target");
    second.cancel_incoming(&inc).await.expect("cancel_incoming");
    second.stop(&vm).await.expect("stop");
    wait_state(&second, &vm, "absent", absent).await;
    wait_state(&second, &inc, "absent", absent).await;
}
