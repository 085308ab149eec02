//! The mover: executes planned moves one after another (balancing sessions, pulls by a
//! peer, drain), each through the handoff machine. Before starting a move it re-reads
//! the entry and re-checks the destination, since the plan may be stale.

use super::handoff_task::move_vm;
use super::shared::Shared;
use ballast_gossip::NodeRunState;
use ballast_store::{NodeId, VmId, VmState};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::{debug, info};

/// Capacity of the mover's queue; a plan beyond it is dropped (the next round replans).
pub(crate) const MOVES_QUEUED_MAX: usize = 64;

/// One planned move.
#[derive(Clone, Debug)]
pub(crate) struct MoveJob {
    /// The VM (of this node).
    pub(crate) vm: VmId,
    /// The destination.
    pub(crate) to: NodeId,
    /// A drain's move: pinned VMs move too.
    pub(crate) forced: bool,
}

/// Runs queued moves until shutdown.
pub(crate) async fn run_mover(shared: Arc<Shared>, mut jobs: mpsc::Receiver<MoveJob>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let job = tokio::select! {
            j = jobs.recv() => j,
            _ = shutdown.changed() => None,
        };
        let Some(job) = job else { return };
        run_one(&shared, job).await;
        shared.moves_pending.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn run_one(shared: &Shared, job: MoveJob) {
    let vm = job.vm.clone();
    let entry = match shared.with_store(move |s| s.get(&vm)).await {
        Ok(Some(e)) => e,
        _ => return,
    };
    if entry.state != VmState::Running || (entry.pinned && !job.forced) {
        debug!(vm = %job.vm, "planned move dropped: VM no longer movable");
        return;
    }
    let target_ok = shared
        .peers()
        .iter()
        .any(|p| p.node_id == job.to.as_str() && p.summary.state == NodeRunState::Active);
    if !target_ok {
        debug!(vm = %job.vm, peer = %job.to, "planned move dropped: destination not active");
        return;
    }
    match move_vm(shared, job.vm.clone(), job.to.clone()).await {
        Ok(r) => {
            info!(vm = %job.vm, peer = %job.to, epoch = r.epoch, committed = r.committed, "move finished")
        }
        Err(e) => info!(vm = %job.vm, peer = %job.to, reason = %e, "move not done"),
    }
}
