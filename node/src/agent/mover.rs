//! The mover: executes planned moves (balancing sessions, pulls by a peer, drain), several
//! at once within the node's limits, each through the handoff machine. Before starting a move it re-reads
//! the entry and re-checks the destination, since the plan may be stale.

use super::context::AgentContext;
use super::handoff_task::move_vm;
use ballast_gossip::NodeRunState;
use ballast_store::{NodeId, VmId, VmState};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

/// Capacity of the mover's queue; a plan beyond it is dropped (the next round replans).
const MOVES_QUEUED_MAX: usize = 64;

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

/// The mover's queue: planned moves go in, the mover takes them in order; counts
/// the moves queued or running (a round plans nothing while any is).
pub(crate) struct MoveQueue {
    jobs: mpsc::Sender<MoveJob>,
    pending: AtomicUsize,
}

impl MoveQueue {
    /// An empty queue and the mover's end of it.
    pub(crate) fn new() -> (Self, mpsc::Receiver<MoveJob>) {
        let (tx, rx) = mpsc::channel(MOVES_QUEUED_MAX);
        let queue = Self {
            jobs: tx,
            pending: AtomicUsize::new(0),
        };
        (queue, rx)
    }

    /// Queues `job`; false when the queue is full (the next round plans again).
    pub(crate) fn push(&self, job: MoveJob) -> bool {
        // Counted before the send, so the mover never finishes a job not yet counted.
        self.pending.fetch_add(1, Ordering::Relaxed);
        let queued = self.jobs.try_send(job).is_ok();
        if !queued {
            self.pending.fetch_sub(1, Ordering::Relaxed);
        }
        queued
    }

    /// Moves queued or running.
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    fn finished(&self) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs queued moves until shutdown: up to `balancing.max_outgoing` at once, and to one
/// destination at most as many as it takes in at once (`balancing.max_incoming`, the same
/// on every node; one for a node of ballast 0.1). A job beyond either waits its turn, in
/// order.
pub(crate) async fn run_mover(ctx: Arc<AgentContext>, mut jobs: mpsc::Receiver<MoveJob>) {
    let mut shutdown = ctx.shutdown.clone();
    let limit = ctx.cfg.balancing.max_outgoing.get();
    let mut running: JoinSet<()> = JoinSet::new();
    // Each running move's destination, by task: released when the task ends, however it
    // ends (a panicking move must not hold its destination's place for good).
    let mut destinations: HashMap<tokio::task::Id, NodeId> = HashMap::new();
    let mut per_peer: HashMap<NodeId, usize> = HashMap::new();
    let mut waiting: VecDeque<MoveJob> = VecDeque::new();
    let mut open = true;
    loop {
        // Start what may start, in order.
        let mut i = 0;
        while running.len() < limit && i < waiting.len() {
            let to = &waiting[i].to;
            let cap = if super::wire_v1::speaks_only_v1(ctx.net.protocol_of(to)) {
                1
            } else {
                ctx.cfg.balancing.max_incoming.get()
            };
            if per_peer.get(to).copied().unwrap_or(0) >= cap {
                i += 1;
                continue;
            }
            let job = waiting.remove(i).expect("index in range");
            *per_peer.entry(job.to.clone()).or_default() += 1;
            let to = job.to.clone();
            let ctx = ctx.clone();
            let task = running.spawn(async move { run_one(&ctx, job).await });
            destinations.insert(task.id(), to);
        }
        if !open && waiting.is_empty() && running.is_empty() {
            return;
        }
        tokio::select! {
            job = jobs.recv(), if open => match job {
                Some(job) => waiting.push_back(job),
                None => open = false,
            },
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => {
                        warn!(reason = %e, "a move's task ended without finishing");
                        e.id()
                    }
                };
                ctx.moves.finished();
                if let Some(to) = destinations.remove(&id) {
                    if let Some(n) = per_peer.get_mut(&to) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            per_peer.remove(&to);
                        }
                    }
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

async fn run_one(ctx: &AgentContext, job: MoveJob) {
    let vm = job.vm.clone();
    let entry = match ctx.with_store(move |s| s.get(&vm)).await {
        Ok(Some(e)) => e,
        _ => return,
    };
    if entry.state != VmState::Running || (entry.pinned && !job.forced) {
        debug!(vm = %job.vm, "planned move dropped: VM no longer movable");
        return;
    }
    let target_ok = match ctx
        .net
        .peers()
        .iter()
        .find(|p| p.node_id == job.to.as_str())
    {
        Some(p) => p.summary.state == NodeRunState::Active,
        // Not in this node's view yet (this node has just started): the session that
        // planned the move heard from it a moment ago. Were it gone, the handoff would
        // abort like any other whose destination does not answer.
        None => true,
    };
    if !target_ok {
        debug!(vm = %job.vm, peer = %job.to, "planned move dropped: destination not active");
        return;
    }
    // A move the mover makes is never forced past the rules: an earlier operator's
    // `--force` must not let this one through.
    if let Err(e) = super::admin::set_forced_on(ctx, &job.vm, None).await {
        debug!(vm = %job.vm, reason = %e, "planned move dropped: cannot clear its forced mark");
        return;
    }
    match move_vm(ctx, job.vm.clone(), job.to.clone()).await {
        Ok(r) => {
            info!(vm = %job.vm, peer = %job.to, epoch = r.epoch, committed = r.committed, "move finished")
        }
        Err(e) => info!(vm = %job.vm, peer = %job.to, reason = %e, "move not done"),
    }
}
