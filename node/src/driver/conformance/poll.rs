//! Reading a driver's view of a VM, and waiting for states and counters that may lag.

use super::outcome::{shown, Must, Violation};
use crate::driver::{Driver, UsageSample, VmRunState};
use ballast_store::VmId;
use std::time::Duration;

/// Upper bound for waiting on a state that may lag or a counter that must grow.
pub const SETTLE: Duration = Duration::from_secs(30);

/// Poll interval while waiting.
const POLL: Duration = Duration::from_millis(20);

/// The run state of `vm` in `d.list()`, or `None` when the VM is absent.
pub async fn state_of(d: &dyn Driver, vm: &VmId) -> Result<Option<VmRunState>, Violation> {
    let all = d.list().await.must("list")?;
    let mut found = all.iter().filter(|i| &i.vm == vm);
    let first = found.next().map(|i| i.state);
    if let Some(again) = found.next() {
        return Err(Violation::Unexpected {
            step: "list",
            expected: "each VM listed once",
            seen: format!("{vm} listed as {} and as {:?}", shown(first), again.state),
        });
    }
    Ok(first)
}

/// Polls `list` until `vm`'s state satisfies `ok`, at most [`SETTLE`]; `expected` names
/// the state for the violation.
pub async fn wait_state(
    d: &dyn Driver,
    vm: &VmId,
    step: &'static str,
    expected: &'static str,
    ok: impl Fn(Option<VmRunState>) -> bool,
) -> Result<(), Violation> {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let s = state_of(d, vm).await?;
        if ok(s) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Violation::NeverSettled {
                step,
                vm: vm.clone(),
                expected,
                seen: shown(s),
                settle_s: SETTLE.as_secs(),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `usage` until its CPU time exceeds `than`, at most [`SETTLE`]; returns that
/// sample. A counter that is negative or not finite is a violation at once.
pub async fn wait_cpu_above(
    d: &dyn Driver,
    vm: &VmId,
    step: &'static str,
    than: f64,
) -> Result<UsageSample, Violation> {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let u = d.usage(vm).await.must(step)?;
        if !(u.cpu_time_s.is_finite() && u.cpu_time_s >= 0.0) {
            return Err(Violation::Unexpected {
                step,
                expected: "a finite, non-negative cpu_time_s",
                seen: format!("{u:?}"),
            });
        }
        if u.cpu_time_s > than {
            return Ok(u);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Violation::Unexpected {
                step,
                expected: "cpu_time_s to grow (the VM runs guest code)",
                seen: format!(
                    "{} s after {} s of waiting (wanted more than {than})",
                    u.cpu_time_s,
                    SETTLE.as_secs()
                ),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The VM runs guest code.
pub(crate) fn running(s: Option<VmRunState>) -> bool {
    s == Some(VmRunState::Running)
}

/// The VM is paused (a switched-over source, a complete incoming copy).
pub(crate) fn paused(s: Option<VmRunState>) -> bool {
    s == Some(VmRunState::Paused)
}

/// The VM is not listed.
pub(crate) fn absent(s: Option<VmRunState>) -> bool {
    s.is_none()
}

/// An incoming copy that does not run: still waiting for its state, or holding it.
pub(crate) fn waiting_incoming(s: Option<VmRunState>) -> bool {
    matches!(s, Some(VmRunState::Incoming | VmRunState::Paused))
}
