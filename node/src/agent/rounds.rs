//! Balancing rounds (docs/design.md §Balancing, steps 1–2) and draining.
//!
//! Every `round_interval_ms` plus a random jitter, a node picks a live, active peer
//! (`policy::choose_peer`: uniform, or the most different of `d` samples) and, unless gossip
//! already shows no gap above the threshold, opens a session. A draining node instead
//! hands its VMs off one at a time, each to the less loaded of two random active peers,
//! pinned VMs included (an operator's drain overrides pinning).

use super::mover::MoveJob;
use super::session::run_session;
use super::shared::Shared;
use crate::policy::{choose_peer, Sender};
use ballast_store::{NodeId, VmState};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Runs rounds (or drain steps) until shutdown.
pub(crate) async fn run_rounds(shared: Arc<Shared>, movers: mpsc::Sender<MoveJob>) {
    let b = shared.cfg.balancing.clone();
    let mut shutdown = shared.shutdown.clone();
    let mut rng = StdRng::from_os_rng();
    loop {
        let jitter = if b.round_jitter_ms > 0 {
            rng.random_range(0..=b.round_jitter_ms)
        } else {
            0
        };
        let pause = Duration::from_millis(b.round_interval_ms.saturating_add(jitter));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => return,
        }
        let busy = shared.moves_pending.load(Ordering::Relaxed) > 0
            || shared.out_in_flight.load(Ordering::Relaxed) >= b.max_outgoing;
        if busy {
            continue;
        }
        if shared.is_draining() {
            drain_step(&shared, &movers, &mut rng).await;
        } else if b.enabled {
            shared.metrics.rounds.inc();
            round(&shared, &movers, &mut rng).await;
        }
    }
}

async fn round(shared: &Shared, movers: &mpsc::Sender<MoveJob>, rng: &mut impl Rng) {
    let peers = shared.active_peers();
    let Ok(own) = super::figures::summary(shared).await else {
        return;
    };
    let cfg = &shared.cfg.policy;
    let Some(i) = choose_peer(
        rng,
        peers.len(),
        own.load,
        |i| peers[i].summary.load,
        cfg.samples_per_round(),
    ) else {
        return;
    };
    let peer = &peers[i];
    let gap = own.load - peer.summary.load;
    let worth = match cfg.sender {
        Sender::Busier => gap.abs() > cfg.threshold,
        Sender::Initiator => gap > cfg.threshold,
    };
    if !worth {
        shared.metrics.session("skipped");
        return;
    }
    let session = rng.random::<u64>();
    run_session(shared, movers, peer, session).await;
}

async fn drain_step(shared: &Shared, movers: &mpsc::Sender<MoveJob>, rng: &mut impl Rng) {
    let Ok(entries) = shared.with_store(|s| s.list()).await else {
        return;
    };
    let Some(entry) = entries.iter().find(|e| e.state == VmState::Running) else {
        return;
    };
    let peers = shared.active_peers();
    if peers.is_empty() {
        tracing::warn!("draining, but no active peer can take VMs");
        return;
    }
    let a = &peers[rng.random_range(0..peers.len())];
    let b = &peers[rng.random_range(0..peers.len())];
    let to = if b.summary.load < a.summary.load {
        b
    } else {
        a
    };
    let job = MoveJob {
        vm: entry.vm.clone(),
        to: NodeId::from(to.node_id.as_str()),
        forced: true,
    };
    tracing::info!(vm = %job.vm, peer = %job.to, "draining: handing VM off");
    if movers.try_send(job).is_ok() {
        shared.moves_pending.fetch_add(1, Ordering::Relaxed);
    }
}
