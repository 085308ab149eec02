//! The cases between two hosts: a move committed, aborted before and after the
//! switchover, sent to a dead target, and made there and back.
//!
//! What the switchover leaves of the source depends on the driver (`Driver::source_copy`):
//! `Kept` — a paused copy that `cancel_outgoing` can resume until `finish_outgoing`;
//! `Ended` — nothing (the hypervisor ended it), `migration_status` still says `Completed`
//! and `cancel_outgoing` fails with `SwitchedOver`, so the destination must be resumed.

use super::outcome::{ensure, ensure_state, Must, Violation};
use super::poll::{absent, paused, running, state_of, wait_cpu_above, wait_state};
use super::SpecFactory;
use crate::driver::{
    Driver, DriverError, MigrationProgress, MigrationStatus, SourceCopy, UsageSample,
};
use ballast_store::{VmId, VmSpec};

/// Starts `vm` on `src`, waits for it to use some CPU, prepares `dst`, migrates.
/// Returns the last source usage sample before the migration.
async fn start_and_migrate(
    src: &dyn Driver,
    dst: &dyn Driver,
    vm: &VmId,
    spec: &VmSpec,
) -> Result<UsageSample, Violation> {
    src.start(vm, spec).await.must("start on the source")?;
    let before = wait_cpu_above(src, vm, "usage on the source", 0.0).await?;
    let target = dst
        .prepare_incoming(vm, spec)
        .await
        .must("prepare_incoming on the destination")?;
    let r = src.migration_status(vm).await;
    ensure(
        matches!(r, Ok(MigrationStatus::None)),
        "migration_status on the source before migrate_out",
        "None",
        &r,
    )?;
    let progress = |_: MigrationProgress| {};
    src.migrate_out(vm, &target, &progress)
        .await
        .must("migrate_out")?;
    Ok(before)
}

/// The whole happy path: switchover leaves both copies paused; the destination runs
/// only after resume_incoming; the source is gone after finish_outgoing; the VM keeps
/// running on the destination.
pub(crate) async fn migrate_commit(
    src: &dyn Driver,
    dst: &dyn Driver,
    spec: SpecFactory<'_>,
) -> Result<(), Violation> {
    let vm = VmId::from("conf-commit");
    let spec = spec();
    start_and_migrate(src, dst, &vm, &spec).await?;
    source_after_switchover(src, &vm).await?;
    let r = src.migration_status(&vm).await;
    ensure(
        matches!(r, Ok(MigrationStatus::Completed)),
        "migration_status on the source after migrate_out",
        "Completed",
        &r,
    )?;
    let step = "list on the destination after migrate_out";
    wait_state(dst, &vm, step, "Paused", paused).await?;
    let r = dst.incoming_complete(&vm).await;
    ensure(
        matches!(r, Ok(true)),
        "incoming_complete on the destination after migrate_out",
        "true",
        &r,
    )?;
    let s = state_of(dst, &vm).await?;
    ensure_state(
        paused(s),
        step,
        "Paused (the destination runs only after resume_incoming)",
        s,
    )?;
    // Paused copies do not run: the source's CPU time stands still.
    let s1 = match src.source_copy() {
        SourceCopy::Kept => Some(src.usage(&vm).await.must("usage of the paused source")?),
        SourceCopy::Ended => None,
    };
    dst.resume_incoming(&vm).await.must("resume_incoming")?;
    let step = "list on the destination after resume_incoming";
    wait_state(dst, &vm, step, "Running", running).await?;
    dst.resume_incoming(&vm)
        .await
        .must("second resume_incoming (idempotent)")?;
    if let Some(s1) = s1 {
        let s2 = src.usage(&vm).await.must("usage of the paused source")?;
        ensure(
            s2.cpu_time_s <= s1.cpu_time_s + 0.25,
            "usage of the paused source",
            "cpu_time_s to stand still (a paused copy does not run)",
            (s1, s2),
        )?;
    }
    src.finish_outgoing(&vm).await.must("finish_outgoing")?;
    let step = "list on the source after finish_outgoing";
    wait_state(src, &vm, step, "absent", absent).await?;
    src.finish_outgoing(&vm)
        .await
        .must("second finish_outgoing (idempotent)")?;
    // Independence (I4): the destination copy keeps running without the source.
    let d1 = dst.usage(&vm).await.must("usage on the destination")?;
    let step = "usage on the destination without the source";
    wait_cpu_above(dst, &vm, step, d1.cpu_time_s).await?;
    let s = state_of(dst, &vm).await?;
    ensure_state(running(s), "list on the destination", "Running", s)?;
    dst.stop(&vm).await.must("stop on the destination")?;
    let step = "list on the destination after stop";
    wait_state(dst, &vm, step, "absent", absent).await
}

/// Abort before any transfer: cancel_outgoing leaves the source running, cancel_incoming
/// drops the destination copy.
pub(crate) async fn cancel_before_migrate(
    src: &dyn Driver,
    dst: &dyn Driver,
    spec: SpecFactory<'_>,
) -> Result<(), Violation> {
    let vm = VmId::from("conf-cancel-early");
    let spec = spec();
    src.start(&vm, &spec).await.must("start on the source")?;
    dst.prepare_incoming(&vm, &spec)
        .await
        .must("prepare_incoming on the destination")?;
    src.cancel_outgoing(&vm)
        .await
        .must("cancel_outgoing with no migration")?;
    let s = state_of(src, &vm).await?;
    ensure_state(
        running(s),
        "list on the source after cancel_outgoing",
        "Running",
        s,
    )?;
    dst.cancel_incoming(&vm).await.must("cancel_incoming")?;
    let step = "list on the destination after cancel_incoming";
    wait_state(dst, &vm, step, "absent", absent).await?;
    let r = src.migration_status(&vm).await;
    ensure(
        matches!(r, Ok(MigrationStatus::None)),
        "migration_status on the source",
        "None",
        &r,
    )?;
    let a = src.usage(&vm).await.must("usage on the source")?;
    wait_cpu_above(src, &vm, "usage on the source", a.cpu_time_s).await?;
    src.stop(&vm).await.must("stop")?;
    wait_state(src, &vm, "list after stop", "absent", absent).await
}

/// Abort after the switchover but before the commit point: the source runs again (its
/// CPU time continues, not reset) and the destination copy is dropped.
pub(crate) async fn cancel_after_switchover(
    src: &dyn Driver,
    dst: &dyn Driver,
    spec: SpecFactory<'_>,
) -> Result<(), Violation> {
    let vm = VmId::from("conf-cancel-late");
    let spec = spec();
    let before = start_and_migrate(src, dst, &vm, &spec).await?;
    source_after_switchover(src, &vm).await?;
    if src.source_copy() == SourceCopy::Ended {
        return cancel_after_switchover_rolls_forward(src, dst, &vm, before).await;
    }
    src.cancel_outgoing(&vm)
        .await
        .must("cancel_outgoing after the switchover")?;
    let step = "list on the source after cancel_outgoing";
    wait_state(src, &vm, step, "Running (resumed)", running).await?;
    src.cancel_outgoing(&vm)
        .await
        .must("second cancel_outgoing (idempotent)")?;
    let s = state_of(src, &vm).await?;
    ensure_state(running(s), step, "Running", s)?;
    let r = src.migration_status(&vm).await;
    ensure(
        matches!(r, Ok(st) if st != MigrationStatus::Active),
        "migration_status after cancel_outgoing",
        "not Active",
        &r,
    )?;
    dst.cancel_incoming(&vm).await.must("cancel_incoming")?;
    let step = "list on the destination after cancel_incoming";
    wait_state(dst, &vm, step, "absent", absent).await?;
    let step = "usage on the resumed source";
    let u = wait_cpu_above(src, &vm, step, before.cpu_time_s).await?;
    ensure(
        u.cpu_time_s >= before.cpu_time_s,
        step,
        "cpu_time_s not reset (resumed, not restarted)",
        (before, u),
    )?;
    src.stop(&vm).await.must("stop")?;
    wait_state(src, &vm, "list after stop", "absent", absent).await
}

/// What a completed switchover leaves on the source: a paused copy (`Kept`) or none
/// (`Ended`).
async fn source_after_switchover(src: &dyn Driver, vm: &VmId) -> Result<(), Violation> {
    let step = "list on the source after migrate_out";
    match src.source_copy() {
        SourceCopy::Kept => {
            let s = state_of(src, vm).await?;
            ensure_state(paused(s), step, "Paused", s)
        }
        SourceCopy::Ended => {
            let expected = "absent (ended by the switchover)";
            wait_state(src, vm, step, expected, absent).await
        }
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
) -> Result<(), Violation> {
    for _ in 0..2 {
        let r = src.cancel_outgoing(vm).await;
        ensure(
            matches!(r, Err(DriverError::SwitchedOver(_))),
            "cancel_outgoing after the switchover",
            "SwitchedOver",
            &r,
        )?;
    }
    let r = src.migration_status(vm).await;
    ensure(
        matches!(r, Ok(MigrationStatus::Completed)),
        "migration_status after the refused cancel",
        "Completed",
        &r,
    )?;
    let step = "list on the destination after migrate_out";
    wait_state(dst, vm, step, "Paused", paused).await?;
    let r = dst.incoming_complete(vm).await;
    ensure(
        matches!(r, Ok(true)),
        "incoming_complete on the destination",
        "true",
        &r,
    )?;
    dst.resume_incoming(vm).await.must("resume_incoming")?;
    let step = "usage on the destination";
    wait_cpu_above(dst, vm, step, before.cpu_time_s).await?;
    src.finish_outgoing(vm).await.must("finish_outgoing")?;
    let s = state_of(src, vm).await?;
    ensure_state(absent(s), "list on the source", "absent", s)?;
    dst.stop(vm).await.must("stop on the destination")?;
    let step = "list on the destination after stop";
    wait_state(dst, vm, step, "absent", absent).await
}

/// A migration to a target nobody listens on fails with `MigrationFailed` and the
/// source keeps running.
pub(crate) async fn migrate_to_dead_target(
    src: &dyn Driver,
    dst: &dyn Driver,
    spec: SpecFactory<'_>,
) -> Result<(), Violation> {
    if src.source_copy() == SourceCopy::Ended {
        // A libvirt destination accepts any migration while its libvirtd runs (a cancelled
        // reservation leaves nothing that refuses); its own tests cover a dead target.
        return Ok(());
    }
    let vm = VmId::from("conf-dead-target");
    let spec = spec();
    src.start(&vm, &spec).await.must("start on the source")?;
    let target = dst
        .prepare_incoming(&vm, &spec)
        .await
        .must("prepare_incoming on the destination")?;
    dst.cancel_incoming(&vm).await.must("cancel_incoming")?;
    let step = "list on the destination after cancel_incoming";
    wait_state(dst, &vm, step, "absent", absent).await?;
    let r = src.migrate_out(&vm, &target, &|_| {}).await;
    ensure(
        matches!(r, Err(DriverError::MigrationFailed { .. })),
        "migrate_out to the cancelled target",
        "MigrationFailed",
        &r,
    )?;
    let step = "list on the source after the failed migration";
    wait_state(src, &vm, step, "Running", running).await?;
    let r = src.migration_status(&vm).await;
    ensure(
        matches!(r, Ok(MigrationStatus::Failed | MigrationStatus::None)),
        "migration_status after the failed migration",
        "Failed or None",
        &r,
    )?;
    src.cancel_outgoing(&vm)
        .await
        .must("cancel_outgoing after a failed migration")?;
    let s = state_of(src, &vm).await?;
    ensure_state(running(s), "list after cancel_outgoing", "Running", s)?;
    src.stop(&vm).await.must("stop")
}

/// A VM moved A → B → A: the second move works like the first (no leftovers block it).
pub(crate) async fn migrate_back_and_forth(
    src: &dyn Driver,
    dst: &dyn Driver,
    spec: SpecFactory<'_>,
) -> Result<(), Violation> {
    let vm = VmId::from("conf-round-trip");
    let spec = spec();
    start_and_migrate(src, dst, &vm, &spec).await?;
    dst.resume_incoming(&vm)
        .await
        .must("resume_incoming on B")?;
    src.finish_outgoing(&vm)
        .await
        .must("finish_outgoing on A")?;
    wait_state(
        src,
        &vm,
        "list on A after finish_outgoing",
        "absent",
        absent,
    )
    .await?;
    let target = src
        .prepare_incoming(&vm, &spec)
        .await
        .must("prepare_incoming back on A")?;
    dst.migrate_out(&vm, &target, &|_| {})
        .await
        .must("migrate_out from B back to A")?;
    wait_state(src, &vm, "list on A after migrate_out", "Paused", paused).await?;
    src.resume_incoming(&vm)
        .await
        .must("resume_incoming on A")?;
    dst.finish_outgoing(&vm)
        .await
        .must("finish_outgoing on B")?;
    wait_state(
        src,
        &vm,
        "list on A after resume_incoming",
        "Running",
        running,
    )
    .await?;
    wait_state(
        dst,
        &vm,
        "list on B after finish_outgoing",
        "absent",
        absent,
    )
    .await?;
    src.stop(&vm).await.must("stop")
}
