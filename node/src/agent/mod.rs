//! The agent (docs/design.md §Layout): the long-running process that wires the store, the gossip
//! endpoint and a driver, runs balancing rounds and sessions, drives the handoff state
//! machine, serves the admin API and metrics, and reconciles the hypervisor.
//!
//! Files:
//! - [`wire`]: the versioned wire enum (sessions, handoff messages, placement, admin).
//! - [`admin_client`]: [`AdminClient`], the typed admin client for the CLI and harness.
//! - `runtime`: [`Agent`] start-up and shutdown, [`run_agent`].
//! - `context`: [`AgentContext`](context::AgentContext), the handles every task reaches;
//!   one typed handle per concern: `network` (endpoint, RPC client, peer addresses),
//!   `handoff_handle` (the machine's inputs, clock and in-flight counts),
//!   `session_book` (the session slot and records), the mover's queue (`mover`).
//! - `handoff_task`: the one task that owns the handoff machine and executes its effects.
//! - `rounds`: balancing rounds and drain steps; `session`: both sides of a session;
//!   `mover`: executes planned moves one after another.
//! - `figures`: the node's load, free memory, candidates and gossiped summary;
//!   `sampler`: measured load factors (EWMA of usage samples).
//! - `reconcile`: the hypervisor against the schedule (docs/design.md §Drivers).
//! - `revocations`: revoked node names kept in the store.
//! - `admin`: the admin handlers and VM placement; `rpc`: the RPC dispatcher.
//! - `metrics`: Prometheus metrics; `web`: the local HTTP server (axum): `/metrics`,
//!   `/api/v1` and the web view.
//! - [`bench`]: `ballast bench handoff` (two in-process agents, timed handoffs).
//! - `error`: [`AgentError`].

mod admin;
pub mod admin_client;
pub mod bench;
mod context;
mod error;
mod figures;
mod handoff_handle;
mod handoff_task;
mod metrics;
mod mover;
mod network;
pub mod outcome;
mod placement;
mod reconcile;
mod revocations;
mod rounds;
mod rpc;
mod rule_book;
mod runtime;
mod sampler;
mod session;
mod session_book;
mod session_history;
mod web;
pub mod wire;
pub mod wire_v1;

pub use admin_client::{AdminClient, AdminClientError};
pub use error::AgentError;
pub use runtime::{run_agent, Agent};

/// Wall-clock Unix milliseconds: cooldowns, `last_moved_unix_ms`, the start of a session
/// record (and the CLI's "ago" of one).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
