//! The driver conformance suite of `ballast_node::driver::conformance`, for tests: each
//! function runs the library's cases and panics with the failing case, step, expected
//! and seen values.

use ballast_node::driver::conformance::{self as suite, Outcome};
use ballast_node::driver::{Driver, DriverError, UsageSample, VmRunState};
use ballast_store::VmId;
use std::future::Future;

pub use suite::SpecFactory;

/// Runs every two-host case in order; panics naming each case that failed.
pub async fn run_all(src: &dyn Driver, dst: &dyn Driver, spec: SpecFactory<'_>) {
    assert_passed(&suite::run_all(src, dst, spec).await);
}

/// The adopt case: drivers from `make` on the same state; panics when it fails.
pub async fn adopt_after_restart<D, F, Fut>(make: F, spec: SpecFactory<'_>)
where
    D: Driver,
    F: Fn() -> Fut,
    Fut: Future<Output = D>,
{
    let make = || {
        let made = make();
        async move { Ok::<D, DriverError>(made.await) }
    };
    assert_passed(&[suite::adopt_after_restart(make, spec).await]);
}

/// Panics, naming every failed case and how it failed, unless all passed.
pub fn assert_passed(outcomes: &[Outcome]) {
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().err().map(ToString::to_string))
        .collect();
    assert!(failed.is_empty(), "conformance:\n{}", failed.join("\n"));
}

/// The run state of `vm` in `d.list()`, or `None` when the VM is absent.
pub async fn state_of(d: &dyn Driver, vm: &VmId) -> Option<VmRunState> {
    suite::state_of(d, vm)
        .await
        .unwrap_or_else(|v| panic!("{}: {v}", d.name()))
}

/// Polls `list` until `vm`'s state satisfies `ok`; panics after `conformance::SETTLE`.
pub async fn wait_state(
    d: &dyn Driver,
    vm: &VmId,
    what: &'static str,
    ok: impl Fn(Option<VmRunState>) -> bool,
) {
    suite::wait_state(d, vm, "list", what, ok)
        .await
        .unwrap_or_else(|v| panic!("{}: {v}", d.name()))
}

/// Polls `usage` until its CPU time exceeds `than`; returns that sample.
pub async fn wait_cpu_above(d: &dyn Driver, vm: &VmId, than: f64) -> UsageSample {
    suite::wait_cpu_above(d, vm, "usage", than)
        .await
        .unwrap_or_else(|v| panic!("{}: {v}", d.name()))
}
