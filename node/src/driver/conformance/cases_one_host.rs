//! The cases on one host: unknown VMs, a VM's lifecycle, an incoming copy's preparation,
//! and adoption by a re-created driver.

use super::outcome::{ensure, ensure_listed, ensure_state, Must, Violation};
use super::poll::{absent, running, state_of, wait_cpu_above, wait_state, waiting_incoming};
use super::SpecFactory;
use crate::driver::{Driver, DriverError, MigrationStatus, MigrationTarget};
use ballast_store::VmId;
use std::future::Future;

/// Calls on a VM the driver never saw: reads fail with `NotFound`, idempotent removals
/// are Ok, nothing appears in `list`.
pub(crate) async fn unknown_vm(d: &dyn Driver) -> Result<(), Violation> {
    let vm = VmId::from("conf-unknown");
    let r = d.usage(&vm).await;
    ensure(
        matches!(r, Err(DriverError::NotFound(_))),
        "usage of an unknown VM",
        "NotFound",
        &r,
    )?;
    let r = d.resume_incoming(&vm).await;
    ensure(
        r.is_err(),
        "resume_incoming of an unknown VM",
        "an error",
        &r,
    )?;
    let target = MigrationTarget("tcp:127.0.0.1:9".into());
    let r = d.migrate_out(&vm, &target, &|_| {}).await;
    ensure(
        matches!(r, Err(DriverError::NotFound(_))),
        "migrate_out of an unknown VM",
        "NotFound",
        &r,
    )?;
    d.stop(&vm)
        .await
        .must("stop of an unknown VM (idempotent)")?;
    d.cancel_incoming(&vm)
        .await
        .must("cancel_incoming of an unknown VM (idempotent)")?;
    d.finish_outgoing(&vm)
        .await
        .must("finish_outgoing of an unknown VM (idempotent)")?;
    let r = d.migration_status(&vm).await;
    ensure(
        matches!(r, Ok(MigrationStatus::None) | Err(DriverError::NotFound(_))),
        "migration_status of an unknown VM",
        "None or NotFound",
        &r,
    )?;
    let r = d.incoming_complete(&vm).await;
    ensure(
        matches!(r, Ok(false) | Err(DriverError::NotFound(_))),
        "incoming_complete of an unknown VM",
        "false or NotFound",
        &r,
    )?;
    let s = state_of(d, &vm).await?;
    ensure_state(absent(s), "list after those calls", "the VM absent", s)
}

/// start / list / usage (CPU time grows) / start again / stop / stop again.
pub(crate) async fn lifecycle(d: &dyn Driver, spec: SpecFactory<'_>) -> Result<(), Violation> {
    let vm = VmId::from("conf-life");
    let spec = spec();
    let s = state_of(d, &vm).await?;
    ensure_state(absent(s), "list before start", "the VM absent", s)?;
    d.start(&vm, &spec).await.must("start")?;
    wait_state(d, &vm, "list after start", "Running", running).await?;
    let a = d.usage(&vm).await.must("usage")?;
    let b = wait_cpu_above(d, &vm, "usage of a running VM", a.cpu_time_s).await?;
    ensure(
        b.io_bytes >= a.io_bytes,
        "usage of a running VM",
        "io_bytes never to go back",
        (a, b),
    )?;
    ensure(
        b.mem_bytes > 0,
        "usage of a running VM",
        "mem_bytes > 0 (a running VM uses memory)",
        b,
    )?;
    d.start(&vm, &spec)
        .await
        .must("start of a running VM (idempotent)")?;
    wait_state(d, &vm, "list after the second start", "Running", running).await?;
    let c = d.usage(&vm).await.must("usage after the second start")?;
    ensure(
        c.cpu_time_s >= b.cpu_time_s,
        "usage after the second start",
        "cpu_time_s not reset (the second start must not restart the VM)",
        (b, c),
    )?;
    d.stop(&vm).await.must("stop")?;
    wait_state(d, &vm, "list after stop", "absent", absent).await?;
    d.stop(&vm).await.must("second stop (idempotent)")?;
    let r = d.usage(&vm).await;
    ensure(
        matches!(r, Err(DriverError::NotFound(_))),
        "usage after stop",
        "NotFound",
        &r,
    )
}

/// prepare_incoming leaves a copy that does not run (`Incoming`, or `Paused`), a second
/// call returns the same target, the copy is not complete and cannot be resumed or
/// started over, cancel_incoming drops it.
pub(crate) async fn prepare_incoming(
    d: &dyn Driver,
    spec: SpecFactory<'_>,
) -> Result<(), Violation> {
    let vm = VmId::from("conf-prep");
    let spec = spec();
    let t1 = d
        .prepare_incoming(&vm, &spec)
        .await
        .must("prepare_incoming")?;
    let s = state_of(d, &vm).await?;
    ensure_state(
        waiting_incoming(s),
        "list after prepare_incoming",
        "Incoming or Paused (an incoming copy does not run)",
        s,
    )?;
    let t2 = d
        .prepare_incoming(&vm, &spec)
        .await
        .must("second prepare_incoming (idempotent)")?;
    ensure(
        t1 == t2,
        "second prepare_incoming",
        "the same target as the first",
        (&t1, &t2),
    )?;
    let r = d.incoming_complete(&vm).await;
    ensure(
        matches!(r, Ok(false)),
        "incoming_complete of a copy that received nothing",
        "false",
        &r,
    )?;
    let r = d.resume_incoming(&vm).await;
    ensure(
        r.is_err(),
        "resume_incoming of a copy that received nothing",
        "an error (BadState)",
        &r,
    )?;
    let s = state_of(d, &vm).await?;
    ensure_state(
        waiting_incoming(s),
        "list after the refused resume_incoming",
        "Incoming or Paused (unchanged)",
        s,
    )?;
    let r = d.start(&vm, &spec).await;
    ensure(
        r.is_err(),
        "start over an incoming copy",
        "an error (BadState)",
        &r,
    )?;
    d.cancel_incoming(&vm).await.must("cancel_incoming")?;
    wait_state(d, &vm, "list after cancel_incoming", "absent", absent).await?;
    d.cancel_incoming(&vm)
        .await
        .must("second cancel_incoming (idempotent)")
}

/// After the driver is dropped and re-created on the same state, `adopt` finds the
/// running VM and the incoming copy without restarting them (CPU time does not reset).
pub(crate) async fn adopt_after_restart<D, F, Fut>(
    make: F,
    spec: SpecFactory<'_>,
) -> Result<(), Violation>
where
    D: Driver,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<D, DriverError>>,
{
    let vm = VmId::from("conf-adopt");
    let inc = VmId::from("conf-adopt-incoming");
    let spec = spec();
    let first = make().await.must("create the first driver")?;
    first.start(&vm, &spec).await.must("start")?;
    let before = wait_cpu_above(&first, &vm, "usage before the restart", 0.0).await?;
    let target = first
        .prepare_incoming(&inc, &spec)
        .await
        .must("prepare_incoming")?;
    drop(first);

    let second = make().await.must("create the second driver")?;
    let adopted = second.adopt().await.must("adopt")?;
    let find = |id: &VmId| adopted.iter().find(|i| &i.vm == id).map(|i| i.state);
    ensure_listed(running(find(&vm)), "adopt", "conf-adopt Running", &adopted)?;
    ensure_listed(
        waiting_incoming(find(&inc)),
        "adopt",
        "conf-adopt-incoming Incoming or Paused",
        &adopted,
    )?;
    let after = second.usage(&vm).await.must("usage after adopt")?;
    ensure(
        after.cpu_time_s >= before.cpu_time_s,
        "usage after adopt",
        "cpu_time_s not reset (the VM must not be restarted)",
        (before, after),
    )?;
    let s = state_of(&second, &vm).await?;
    ensure_state(running(s), "list after adopt", "Running", s)?;
    let again = second
        .prepare_incoming(&inc, &spec)
        .await
        .must("prepare_incoming after adopt")?;
    ensure(
        again == target,
        "prepare_incoming after adopt",
        "the target given before the restart",
        (&target, &again),
    )?;
    second.cancel_incoming(&inc).await.must("cancel_incoming")?;
    second.stop(&vm).await.must("stop")?;
    wait_state(&second, &vm, "list after stop", "absent", absent).await?;
    wait_state(
        &second,
        &inc,
        "list after cancel_incoming",
        "absent",
        absent,
    )
    .await?;
    Ok(())
}
