//! The driver conformance suite: checks of the [`Driver`] contract that every driver
//! (sim, qemu, libvirt, an exec plugin) must pass. `node/tests/driver_*.rs` run it on
//! each driver, `ballast driver check` on an exec plugin.
//!
//! Each [`Case`] takes the driver(s) under test and a [`SpecFactory`] (a VM spec valid
//! for that driver) and returns `Ok` or a [`CaseFailure`]: the case, the step, what the
//! contract expected and what the driver did. Cases use their own VM ids
//! (`conf-<case>`), so they run one after another on the same two drivers; a failed
//! case's VMs are stopped before the next starts.
//!
//! Hypervisors may be slow (a QEMU destination may report `Paused` a moment after the
//! source's `migrate_out` returned), so states that may lag are polled until
//! [`SETTLE`]; no case checks how long anything took. A case that runs past
//! [`CASE_LIMIT`] fails.
//!
//! Migration cases take `src` and `dst`, two driver instances standing for two hosts
//! (separate state directories).
//!
//! Files: [`outcome`] (cases, violations), `poll` (reading and waiting for states),
//! `cases_one_host`, `cases_migration`.

mod cases_migration;
mod cases_one_host;
pub mod outcome;
mod poll;

pub use outcome::{Case, CaseFailure, Violation};
pub use poll::{state_of, wait_cpu_above, wait_state, SETTLE};

use crate::driver::{Driver, DriverError};
use ballast_store::{VmId, VmSpec};
use std::future::Future;
use std::time::{Duration, Instant};

/// Makes a spec the driver under test accepts (for the sim driver: a usage profile).
pub type SpecFactory<'a> = &'a (dyn Fn() -> VmSpec + Sync);

/// Upper bound of one case's run time.
pub const CASE_LIMIT: Duration = Duration::from_secs(300);

/// The prefix of every VM id the cases use.
pub const VM_PREFIX: &str = "conf-";

/// How one case went.
#[derive(Debug)]
pub struct Outcome {
    /// The case.
    pub case: Case,
    /// `Ok`, or how it failed.
    pub result: Result<(), CaseFailure>,
    /// How long it ran.
    pub took: Duration,
}

/// Runs every case of [`Case::PAIR`] in order, each after the previous one ended, and
/// returns how each went.
pub async fn run_all(src: &dyn Driver, dst: &dyn Driver, spec: SpecFactory<'_>) -> Vec<Outcome> {
    let mut all = Vec::with_capacity(Case::PAIR.len());
    for case in Case::PAIR {
        all.push(run_case(case, src, dst, spec).await);
    }
    all
}

/// Runs one case of [`Case::PAIR`] on `src` and `dst` (one-host cases use `src`, except
/// `prepare_incoming`, which uses `dst`); after a failure, stops the case's VMs on both.
/// [`Case::AdoptAfterRestart`] needs a driver factory: [`adopt_after_restart`].
pub async fn run_case(
    case: Case,
    src: &dyn Driver,
    dst: &dyn Driver,
    spec: SpecFactory<'_>,
) -> Outcome {
    let run = async {
        match case {
            Case::UnknownVm => cases_one_host::unknown_vm(src).await,
            Case::Lifecycle => cases_one_host::lifecycle(src, spec).await,
            Case::PrepareIncoming => cases_one_host::prepare_incoming(dst, spec).await,
            Case::MigrateCommit => cases_migration::migrate_commit(src, dst, spec).await,
            Case::CancelBeforeMigrate => {
                cases_migration::cancel_before_migrate(src, dst, spec).await
            }
            Case::CancelAfterSwitchover => {
                cases_migration::cancel_after_switchover(src, dst, spec).await
            }
            Case::MigrateToDeadTarget => {
                cases_migration::migrate_to_dead_target(src, dst, spec).await
            }
            Case::MigrateBackAndForth => {
                cases_migration::migrate_back_and_forth(src, dst, spec).await
            }
            Case::AdoptAfterRestart => Err(Violation::NeedsFactory),
        }
    };
    let outcome = limited(case, run).await;
    if outcome.result.is_err() {
        clean_up(&[src, dst]).await;
    }
    outcome
}

/// [`Case::AdoptAfterRestart`]: a driver from `make` starts a VM and prepares an incoming
/// copy, is dropped, and a second one from `make` (same state) must adopt both without
/// restarting them.
pub async fn adopt_after_restart<D, F, Fut>(make: F, spec: SpecFactory<'_>) -> Outcome
where
    D: Driver,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<D, DriverError>>,
{
    let case = Case::AdoptAfterRestart;
    let outcome = limited(case, cases_one_host::adopt_after_restart(&make, spec)).await;
    if outcome.result.is_err() {
        if let Ok(d) = make().await {
            clean_up(&[&d]).await;
        }
    }
    outcome
}

/// Runs `run` as `case` within [`CASE_LIMIT`].
async fn limited(case: Case, run: impl Future<Output = Result<(), Violation>>) -> Outcome {
    let started = Instant::now();
    let result = match tokio::time::timeout(CASE_LIMIT, run).await {
        Ok(r) => r,
        Err(_) => Err(Violation::TimedOut {
            limit_s: CASE_LIMIT.as_secs(),
        }),
    };
    Outcome {
        case,
        result: result.map_err(|violation| CaseFailure { case, violation }),
        took: started.elapsed(),
    }
}

/// Stops every VM of the suite (ids starting with [`VM_PREFIX`]) on `drivers`, ignoring
/// errors: a failed case leaves nothing behind for the next.
pub async fn clean_up(drivers: &[&dyn Driver]) {
    for d in drivers {
        let Ok(vms) = d.list().await else { continue };
        for info in vms.iter().filter(|i| is_suite_vm(&i.vm)) {
            let _ = d.stop(&info.vm).await;
        }
    }
}

fn is_suite_vm(vm: &VmId) -> bool {
    vm.0.starts_with(VM_PREFIX)
}
