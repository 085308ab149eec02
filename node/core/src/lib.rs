//! `ballast-core`: the pure heart of ballast, with no async runtime, no store, no network
//! and no clock among its dependencies (`cargo tree -p ballast-core -e normal` shows it).
//! The agent drives it; the deterministic world, the simulator and the model check run
//! the same code.
//!
//! Modules:
//! - [`types`]: ids and the records a host keeps (schedule entries, handoff records).
//! - [`units`]: value types that cannot hold an invalid value ([`units::Probability`]).
//! - [`hypervisor`]: what a hypervisor driver reports (run states, usage, migrations).
//! - [`load`]: the load model (docs/design.md §Load): weights, capacities, smoothing.
//! - [`policy`]: the balancing policy (docs/design.md §Balancing).
//! - [`rules`]: placement rules (docs/design.md §Placement rules).
//! - [`names`]: one definition of each enum's names, printed, parsed and serialized alike.
//! - [`handoff`]: the handoff state machine (docs/design.md §Handoff), events in,
//!   effects out, and its deterministic world.
#![deny(missing_docs, unreachable_pub)]

pub mod handoff;
pub mod hypervisor;
pub mod load;
pub mod names;
pub mod policy;
pub mod rules;
pub mod types;
pub mod units;
