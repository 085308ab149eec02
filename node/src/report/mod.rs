//! The cluster reports that `ballast status`, `vm list` and `sessions` print with
//! `--json` and that the agent's `/api/v1` serves: one set of types and builders, so the
//! two are equal JSON by construction (docs/operations.md §Web view).
//!
//! Files:
//! - `mod.rs`: [`Member`] (one node as reached through the admin API), [`MissingNode`],
//!   [`missing_of`], [`age`].
//! - [`status`]: [`status::StatusReport`], one row per node and the cluster's load.
//! - [`vms`]: [`vms::VmList`], one row per schedule entry.
//! - [`sessions`]: [`sessions::SessionsReport`], the recent sessions, newest first.

pub mod rules;
pub mod sessions;
pub mod status;
pub mod vms;

use crate::agent::wire::NodeStatus;
use ballast_store::NodeId;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// One node as a caller of the admin API reached it.
#[derive(Clone, Debug)]
pub struct Member {
    /// The node id.
    pub node: NodeId,
    /// Its RPC address.
    pub addr: SocketAddr,
    /// Its own status, when it answered.
    pub status: Option<NodeStatus>,
    /// Why it did not answer, when it did not.
    pub error: Option<String>,
}

/// A node whose part of an answer is missing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MissingNode {
    /// The node.
    pub node: String,
    /// Why it did not answer.
    pub reason: String,
    /// The VMs it held when a node that answered last heard from it; `None` when no
    /// answering node reports it.
    pub vms: Option<u32>,
}

/// The `members` that did not answer, with the VM count a member that answered last
/// heard from each (the largest among their peer views).
pub fn missing_of(members: &BTreeMap<NodeId, Member>) -> Vec<MissingNode> {
    let heard = |node: &NodeId| {
        members
            .values()
            .filter_map(|m| m.status.as_ref())
            .flat_map(|s| s.peers.iter())
            .filter(|p| &p.node == node)
            .map(|p| p.summary.vm_count)
            .max()
    };
    members
        .values()
        .filter(|m| m.status.is_none())
        .map(|m| MissingNode {
            node: m.node.to_string(),
            reason: m.error.clone().unwrap_or_else(|| "no answer".into()),
            vms: heard(&m.node),
        })
        .collect()
}

/// An age for people: `0.4s ago` under 10 s, then seconds, minutes, hours.
pub fn age(ms: u64) -> String {
    let secs = ms / 1_000;
    if ms < 10_000 {
        // Tenths, truncated.
        format!("{}.{}s ago", secs, (ms % 1_000) / 100)
    } else if secs < 600 {
        format!("{secs}s ago")
    } else if secs < 7_200 {
        format!("{}m ago", secs / 60)
    } else {
        format!("{}h ago", secs / 3_600)
    }
}
