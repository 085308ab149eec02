//! `ballast-node`: the ballast agent.
//!
//! Modules:
//! - [`config`]: the agent's configuration (TOML), every option with a default.
//! - [`load`], [`policy`], [`handoff`]: the pure core, re-exported from `ballast-core`
//!   (the load model, the balancing policy, the handoff machine and its deterministic world).
//! - [`simulate`]: an in-process simulation of many hosts running the same policy.
//! - [`failpoints`]: named handoff steps where a test build's agent kills itself.
//! - [`driver`]: the hypervisor driver trait and its drivers (sim, qemu, exec).
//! - [`agent`]: the running agent — rounds, sessions, handoffs, admin API, metrics, web view.
//! - [`report`]: the cluster reports of `status`, `vm list`, `sessions` (CLI `--json` and `/api/v1`).
#![deny(missing_docs, unreachable_pub)]

pub mod agent;
pub mod config;
pub mod driver;
pub mod failpoints;
pub mod report;
pub mod simulate;

pub use ballast_core::{handoff, load, policy, rules, units};
