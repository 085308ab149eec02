//! `ballast-node`: the ballast agent.
//!
//! Modules:
//! - [`config`]: the agent's configuration (TOML), every option with a default.
//! - [`load`]: the load model of docs/design.md §Load: weights, capacities, smoothing, translation.
//! - [`policy`]: the pure balancing policy (peer choice, whether and which VM to move).
//! - [`simulate`]: an in-process simulation of many hosts running the same policy.
//! - [`handoff`]: the pure handoff machine of docs/design.md §Handoff (events in, effects out).
//! - [`driver`]: the hypervisor driver trait and its drivers (sim, qemu, exec).
//! - [`agent`]: the running agent — rounds, sessions, handoffs, admin API, metrics.
#![deny(missing_docs, unreachable_pub)]

pub mod agent;
pub mod config;
pub mod driver;
pub mod handoff;
pub mod load;
pub mod policy;
pub mod simulate;
