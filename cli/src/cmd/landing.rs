//! Where a VM stands once its move committed: the commit makes the destination's entry
//! the VM's, but the VM runs only after the destination resumed its paused copy. A
//! destination that died between the two holds the VM paused until it is back; `vm
//! move`, `drain` and `vm show` say so instead of "moved" or "not found".

use crate::cmd::admin::Cluster;
use crate::exit_status::Unfinished;
use ballast_store::{NodeId, VmId, VmState};
use std::time::Duration;

/// Bound on one look at the destination.
const LOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// A committed move's VM on its destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Landing {
    /// Running there: the destination holds it and resumed it.
    Running,
    /// The destination holds it and is resuming it.
    Resuming,
    /// The destination did not answer (why): the VM is paused there until it is back.
    Unreachable(String),
    /// The destination answered but does not hold it (it moved on, or was deleted).
    Gone,
}

impl Landing {
    /// "n3 does not answer (why)", for the messages.
    pub fn why_not_running(&self, to: &NodeId) -> String {
        match self {
            Self::Running => format!("it runs on {to}"),
            Self::Resuming => format!("{to} is resuming it"),
            Self::Unreachable(why) => format!("{to} does not answer ({why})"),
            Self::Gone => format!("{to} no longer holds it"),
        }
    }
}

/// Looks once at `vm` on `to`.
pub async fn look(cluster: &Cluster, vm: &VmId, to: &NodeId) -> Landing {
    let Some(addr) = cluster.members.get(to).map(|m| m.addr) else {
        return Landing::Unreachable("not a known member".into());
    };
    let client = match cluster.client(addr, LOOK_TIMEOUT) {
        Ok(c) => c,
        Err(e) => return Landing::Unreachable(format!("{e:#}")),
    };
    let status = match client.status().await {
        Ok(s) => s,
        Err(e) => return Landing::Unreachable(e.to_string()),
    };
    if status.handoffs.iter().any(|h| &h.vm == vm) {
        return Landing::Resuming;
    }
    match client.list_vms().await {
        Ok(entries) => match entries.iter().find(|e| &e.vm == vm) {
            Some(e) if e.state == VmState::Running => Landing::Running,
            Some(_) => Landing::Resuming,
            None => Landing::Gone,
        },
        Err(e) => Landing::Unreachable(e.to_string()),
    }
}

/// The error of a committed move whose VM does not run on `to` yet (exit 4).
pub fn not_resumed(vm: &VmId, from: &NodeId, to: &NodeId, landing: &Landing) -> Unfinished {
    Unfinished::NotResumed(format!(
        "the move of {vm} from {from} to {to} committed, but {vm} does not run yet: {}; \
         {to} holds it paused and runs it once {to} is up (see `ballast vm show {vm}`)",
        landing.why_not_running(to)
    ))
}

/// A VM that no answering node's schedule holds, but that an answering node handed
/// over (its transfer record): `(from, to, epoch)`.
pub async fn handed_over(cluster: &Cluster, vm: &VmId) -> Option<(NodeId, NodeId, u64)> {
    for m in cluster.members.values().filter(|m| m.status.is_some()) {
        let Ok(client) = cluster.client(m.addr, LOOK_TIMEOUT) else {
            continue;
        };
        let Ok(view) = client.snapshot().await else {
            continue;
        };
        if let Some(t) = view.transfers.iter().find(|t| &t.vm == vm) {
            return Some((m.node.clone(), t.to.clone(), t.epoch));
        }
    }
    None
}
