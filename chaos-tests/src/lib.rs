//! `ballast-chaos`: the chaos harness and the model check of ballast.
//!
//! Modules:
//! - [`model`]: the stateright model check of the handoff protocol (`ballast-chaos model`),
//!   driving the agent's own `ballast_node::handoff` machine.
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]

pub mod model;
