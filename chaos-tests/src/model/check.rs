//! Runs the stateright checker on a [`HandoffModel`] and reports: states explored, each
//! property's result, and the counterexample (or example) trace of each discovery.

use super::{HandoffModel, ModelAction, ModelState};
use stateright::{Checker, Expectation, HasDiscoveries, Model};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// The result of one property.
#[derive(Clone, Debug)]
pub struct PropertyResult {
    /// Its name.
    pub name: &'static str,
    /// `always` or `sometimes`.
    pub expectation: Expectation,
    /// The discovered path, rendered (a counterexample for `always`, an example for
    /// `sometimes`), if any.
    pub trace: Option<String>,
}

impl PropertyResult {
    /// Whether this property's result is what a correct protocol gives.
    pub fn holds(&self) -> bool {
        match self.expectation {
            Expectation::Sometimes => self.trace.is_some(),
            _ => self.trace.is_none(),
        }
    }
}

/// What a model check found.
#[derive(Clone, Debug)]
pub struct CheckReport {
    /// States generated (with repeats).
    pub states: usize,
    /// Distinct states.
    pub unique_states: usize,
    /// Deepest path explored.
    pub max_depth: usize,
    /// Whether the whole bounded state space was explored (no timeout, no violation).
    pub exhausted: bool,
    /// Wall time.
    pub elapsed: Duration,
    /// One entry per property.
    pub properties: Vec<PropertyResult>,
}

impl CheckReport {
    /// The `always` properties that were violated.
    pub fn violations(&self) -> Vec<&PropertyResult> {
        self.properties
            .iter()
            .filter(|p| p.expectation == Expectation::Always && p.trace.is_some())
            .collect()
    }

    /// Whether every property came out as a correct protocol requires.
    pub fn ok(&self) -> bool {
        self.properties.iter().all(PropertyResult::holds)
    }

    /// The report as text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "states explored: {} ({} unique), max depth {}, {} in {:.2?}",
            self.states,
            self.unique_states,
            self.max_depth,
            if self.exhausted {
                "exhaustive"
            } else {
                "NOT exhaustive"
            },
            self.elapsed
        );
        for p in &self.properties {
            let verdict = match (&p.expectation, p.trace.is_some()) {
                (Expectation::Sometimes, true) => "example found",
                (Expectation::Sometimes, false) => "NOT FOUND",
                (_, false) => "holds",
                (_, true) => "VIOLATED",
            };
            let _ = writeln!(out, "{:?} \"{}\": {}", p.expectation, p.name, verdict);
        }
        for p in self.properties.iter().filter(|p| !p.holds()) {
            if let Some(trace) = &p.trace {
                let _ = writeln!(out, "\ncounterexample for \"{}\":\n{}", p.name, trace);
            }
        }
        out
    }
}

/// Checks `model` breadth-first on `threads` threads (or depth-first when `dfs`), giving
/// up after `timeout`. Stops at the first violated `always` property; otherwise explores
/// the whole bounded state space.
pub fn run(model: HandoffModel, threads: usize, dfs: bool, timeout: Duration) -> CheckReport {
    let started = Instant::now();
    let properties = model.properties();
    let render_model = model.clone();
    let builder = model
        .checker()
        .threads(threads.max(1))
        .timeout(timeout)
        .finish_when(HasDiscoveries::AnyFailures);
    let (states, unique_states, max_depth, discoveries) = if dfs {
        let c = builder.spawn_dfs().join();
        (
            c.state_count(),
            c.unique_state_count(),
            c.max_depth(),
            c.discoveries(),
        )
    } else {
        let c = builder.spawn_bfs().join();
        (
            c.state_count(),
            c.unique_state_count(),
            c.max_depth(),
            c.discoveries(),
        )
    };
    let elapsed = started.elapsed();
    let results = properties
        .iter()
        .map(|p| PropertyResult {
            name: p.name,
            expectation: p.expectation.clone(),
            trace: discoveries
                .get(p.name)
                .map(|path| render_trace(&render_model, path.clone().into_vec())),
        })
        .collect();
    let mut report = CheckReport {
        states,
        unique_states,
        max_depth,
        exhausted: false,
        elapsed,
        properties: results,
    };
    report.exhausted = elapsed < timeout && report.violations().is_empty();
    report
}

/// One line per action, then the final state's durable records and hypervisors.
fn render_trace(_model: &HandoffModel, steps: Vec<(ModelState, Option<ModelAction>)>) -> String {
    let mut out = String::new();
    let mut last = None;
    for (i, (state, action)) in steps.into_iter().enumerate() {
        if let Some(action) = action {
            let _ = writeln!(out, "  {i:>3}. {action:?}");
        }
        last = Some(state);
    }
    if let Some(state) = last {
        let _ = writeln!(out, "  final state:");
        for n in &state.world.nodes {
            let _ = writeln!(
                out,
                "    {}: entries {:?} transfers {:?} hypervisor {:?} handoffs {:?}",
                n.id,
                n.store
                    .entry_map()
                    .iter()
                    .map(|(vm, e)| format!("{vm}={:?}@{}", e.held, e.epoch))
                    .collect::<Vec<_>>(),
                n.store.transfer_map(),
                n.hyper.copies,
                n.machine.handoffs()
            );
        }
        if let Err(v) = state.world.check() {
            let _ = writeln!(out, "  {v}");
        }
    }
    out
}
