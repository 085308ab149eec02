//! What a conformance case found: [`Case`] names a case, [`Violation`] says what the
//! driver contract expected and what the driver did, [`CaseFailure`] joins the two.

use crate::driver::{DriverError, VmInfo, VmRunState};
use ballast_store::VmId;
use std::fmt;

/// One case of the conformance suite (`docs/driver-protocol.md` §Checking a plugin).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Case {
    /// Calls on a VM the driver never saw.
    UnknownVm,
    /// start, list, usage, start again, stop, stop again.
    Lifecycle,
    /// `prepare_incoming` leaves a copy that does not run; idempotent; cancel drops it.
    PrepareIncoming,
    /// The whole happy path of a move: switchover, resume, finish.
    MigrateCommit,
    /// Abort before any transfer.
    CancelBeforeMigrate,
    /// Abort after the switchover, before the commit point.
    CancelAfterSwitchover,
    /// A migration to a target nobody listens on fails; the source runs on.
    MigrateToDeadTarget,
    /// A VM moved A → B → A.
    MigrateBackAndForth,
    /// A re-created driver adopts the running VM and the incoming copy.
    AdoptAfterRestart,
}

impl Case {
    /// The cases that need two plain driver instances, in the order they run.
    pub const PAIR: [Case; 8] = [
        Case::UnknownVm,
        Case::Lifecycle,
        Case::PrepareIncoming,
        Case::MigrateCommit,
        Case::CancelBeforeMigrate,
        Case::CancelAfterSwitchover,
        Case::MigrateToDeadTarget,
        Case::MigrateBackAndForth,
    ];

    /// The case's name, as `ballast driver check` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Case::UnknownVm => "unknown_vm",
            Case::Lifecycle => "lifecycle",
            Case::PrepareIncoming => "prepare_incoming",
            Case::MigrateCommit => "migrate_commit",
            Case::CancelBeforeMigrate => "cancel_before_migrate",
            Case::CancelAfterSwitchover => "cancel_after_switchover",
            Case::MigrateToDeadTarget => "migrate_to_dead_target",
            Case::MigrateBackAndForth => "migrate_back_and_forth",
            Case::AdoptAfterRestart => "adopt_after_restart",
        }
    }
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a driver broke its contract in one step of a case.
#[derive(Debug, thiserror::Error)]
pub enum Violation {
    /// A call the contract says succeeds failed.
    #[error("{step}: expected success, got: {error}")]
    Failed {
        /// The step (the call and on which host).
        step: &'static str,
        /// What the driver answered.
        #[source]
        error: DriverError,
    },
    /// A call answered, or a VM was in, something other than what the contract says.
    #[error("{step}: expected {expected}, got {seen}")]
    Unexpected {
        /// The step.
        step: &'static str,
        /// What the contract says.
        expected: &'static str,
        /// What the driver answered or listed.
        seen: String,
    },
    /// A state that may lag (the hypervisor is slow) did not come in time.
    #[error("{step}: expected {vm} to become {expected} within {settle_s} s, last listed {seen}")]
    NeverSettled {
        /// The step.
        step: &'static str,
        /// The VM.
        vm: VmId,
        /// The state waited for.
        expected: &'static str,
        /// The last state listed.
        seen: String,
        /// How long the case waited, in seconds.
        settle_s: u64,
    },
    /// [`Case::AdoptAfterRestart`] was run without a driver factory (it re-creates the
    /// driver): run it with `conformance::adopt_after_restart`.
    #[error("this case re-creates the driver: run it with adopt_after_restart")]
    NeedsFactory,
    /// The case did not finish within its time limit (a driver call hung).
    #[error("the case did not finish within {limit_s} s")]
    TimedOut {
        /// The limit, in seconds.
        limit_s: u64,
    },
}

/// A case that failed, and how.
#[derive(Debug, thiserror::Error)]
#[error("case {case} failed: {violation}")]
pub struct CaseFailure {
    /// The case.
    pub case: Case,
    /// The first violation it found.
    #[source]
    pub violation: Violation,
}

/// A driver call that must succeed, as a step of a case.
pub(crate) trait Must<T> {
    /// `Ok` as is; an error becomes [`Violation::Failed`] at `step`.
    fn must(self, step: &'static str) -> Result<T, Violation>;
}

impl<T> Must<T> for Result<T, DriverError> {
    fn must(self, step: &'static str) -> Result<T, Violation> {
        self.map_err(|error| Violation::Failed { step, error })
    }
}

/// [`Violation::Unexpected`] unless `ok`; `seen` is what was observed.
pub(crate) fn ensure(
    ok: bool,
    step: &'static str,
    expected: &'static str,
    seen: impl fmt::Debug,
) -> Result<(), Violation> {
    unexpected_unless(ok, step, expected, || format!("{seen:?}"))
}

/// [`Violation::Unexpected`] unless `ok`; `seen` is the state listed.
pub(crate) fn ensure_state(
    ok: bool,
    step: &'static str,
    expected: &'static str,
    seen: Option<VmRunState>,
) -> Result<(), Violation> {
    unexpected_unless(ok, step, expected, || shown(seen))
}

/// [`Violation::Unexpected`] unless `ok`; `seen` is what `list` or `adopt` returned.
pub(crate) fn ensure_listed(
    ok: bool,
    step: &'static str,
    expected: &'static str,
    seen: &[VmInfo],
) -> Result<(), Violation> {
    unexpected_unless(ok, step, expected, || {
        let all: Vec<String> = seen
            .iter()
            .map(|i| format!("{} {:?}", i.vm, i.state))
            .collect();
        format!("[{}]", all.join(", "))
    })
}

fn unexpected_unless(
    ok: bool,
    step: &'static str,
    expected: &'static str,
    seen: impl FnOnce() -> String,
) -> Result<(), Violation> {
    if ok {
        return Ok(());
    }
    Err(Violation::Unexpected {
        step,
        expected,
        seen: seen(),
    })
}

/// A listed state as the violations say it: `Running`, ..., or `absent`.
pub(crate) fn shown(s: Option<VmRunState>) -> String {
    s.map_or_else(|| "absent".to_owned(), |s| format!("{s:?}"))
}
