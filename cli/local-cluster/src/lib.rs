//! Agents of one cluster on one machine — what the demo (`ballast demo`), the chaos
//! harness and the agent tests share:
//!
//! - [`HeldPort`]: a loopback UDP socket bound once and kept by the launcher for the
//!   node's whole life; each start of the agent gets a copy of it on its standard input
//!   (`ballast agent --stdin-socket`), so no port is ever released and bound again (no
//!   race with another process taking it, also across restarts).
//! - [`write_node_certs`]: a node's certificate, key and the CA, as the agent reads them.
//! - [`AgentProcess`]: one `ballast agent` process — start, SIGTERM with a grace period,
//!   SIGKILL, SIGSTOP/SIGCONT, exit check, log tail; killed when dropped.
//! - [`LocalCluster`]: nodes `dir/NAME` with a held port, certificates and a config
//!   written by the caller, started and stopped by index.

#![warn(missing_docs, unreachable_pub)]

mod certs;
mod cluster;
mod error;
mod port;
mod process;

pub use certs::{write_node_certs, CertPaths};
pub use cluster::{LocalCluster, NodeFiles, NodeSlot};
pub use error::KitError;
pub use port::HeldPort;
pub use process::{log_tail, AgentProcess};
