//! `ballast-chaos`: the chaos harness and the model check of ballast.
//!
//! Modules:
//! - [`model`]: the stateright model check of the handoff protocol (`ballast-chaos model`),
//!   driving the agent's own `ballast_node::handoff` machine.
//! - [`run`]: the chaos harness (`ballast-chaos run`): real agent processes, faults drawn
//!   from a seed, and the invariant checks I1-I4.
#![deny(missing_docs, unreachable_pub)]

pub mod model;
pub mod run;
