//! Balancing rounds (docs/design.md §Balancing, steps 1–2) and draining.
//!
//! Every `round_interval_ms` plus a random jitter, a node picks a live, active peer
//! (`policy::choose_peer`: uniform, or the most different of `d` samples) and, unless gossip
//! already shows no gap above the threshold, opens a session. A draining node instead
//! hands its VMs off one at a time, each to the less loaded of two random active peers,
//! pinned VMs included (an operator's drain overrides pinning).

use super::context::AgentContext;
use super::mover::MoveJob;
use super::session::run_session;
use crate::policy::{choose_peer, Sender};
use ballast_core::rules::PlacementRules;
use ballast_gossip::PeerView;
use ballast_store::{NodeId, VmState};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::Duration;

/// The pause before a follow-up round: after a round that handed VMs off, once they
/// have left (polled this often), the node goes again rather than waiting a whole
/// interval, for as long as its rounds find VMs to hand off.
const FOLLOW_UP_PAUSE: Duration = Duration::from_millis(100);

/// Runs rounds (or drain steps) until shutdown.
pub(crate) async fn run_rounds(ctx: Arc<AgentContext>) {
    let b = ctx.cfg.balancing.clone();
    let mut shutdown = ctx.shutdown.clone();
    let mut rng = StdRng::from_os_rng();
    let mut follow_up = false;
    loop {
        let pause = if follow_up {
            FOLLOW_UP_PAUSE
        } else {
            let jitter = if b.round_jitter.get() > 0 {
                rng.random_range(0..=b.round_jitter.get())
            } else {
                0
            };
            Duration::from_millis(b.round_interval.get().saturating_add(jitter))
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => return,
        }
        // Moves decided earlier, either way, not done yet: a session now would plan on
        // figures they are about to change (docs/design.md §Balancing).
        let in_flight = ctx.handoffs.in_flight();
        let busy = ctx.moves.pending() > 0
            || in_flight.outgoing >= b.max_outgoing.get()
            || in_flight.incoming >= b.max_incoming.get()
            || ctx.sessions.awaiting();
        if busy {
            // A sender whose moves are leaving goes again once they have left.
            follow_up = follow_up && ctx.moves.pending() > 0;
            continue;
        }
        follow_up = false;
        if ctx.is_draining() {
            drain_step(&ctx, &mut rng).await;
        } else if b.enabled {
            ctx.metrics.rounds.inc();
            round(&ctx, &mut rng).await;
            // This round's session handed VMs off: the node was the busier side of a
            // gap above the threshold, and likely still is of another.
            follow_up = ctx.moves.pending() > 0;
        }
    }
}

async fn round(ctx: &AgentContext, rng: &mut impl Rng) {
    let peers = ctx.net.active_peers();
    let Ok(own) = super::figures::summary(ctx).await else {
        return;
    };
    let cfg = &ctx.cfg.policy;
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
    // A VM breaking a hard rule here is worth a session whatever the loads (a repair).
    if !worth && !breaks_a_rule(ctx).await {
        ctx.metrics.session("skipped");
        return;
    }
    let session = rng.random::<u64>();
    run_session(ctx, peer, session).await;
}

/// Whether a VM of this node breaks a hard placement rule here.
async fn breaks_a_rule(ctx: &AgentContext) -> bool {
    let Ok(entries) = ctx.with_store(|s| s.list()).await else {
        return false;
    };
    if entries.iter().all(|e| e.spec.rules.is_empty()) {
        return false;
    }
    let holdings = super::rule_book::holdings_of(ctx, &entries);
    !super::rule_book::rule_breaks(&ctx.me, &entries, &holdings).is_empty()
}

/// Hands one VM off: the first running VM that some active peer may take (its tags
/// match the VM's `requires`, and it has not refused the VM for a rule lately), to the
/// less loaded of two random such peers. A VM no peer may take is recorded as blocked,
/// with its rule, and the drain goes on with the others.
async fn drain_step(ctx: &AgentContext, rng: &mut impl Rng) {
    let Ok(entries) = ctx.with_store(|s| s.list()).await else {
        return;
    };
    let peers = ctx.net.active_peers();
    if peers.is_empty() {
        tracing::warn!("draining, but no active peer can take VMs");
        return;
    }
    for entry in entries.iter().filter(|e| e.state == VmState::Running) {
        let rules = &entry.spec.rules;
        let legal: Vec<&PeerView> = peers
            .iter()
            .filter(|p| rules.requires.iter().all(|t| p.summary.tags.contains(t)))
            .filter(|p| {
                let peer = NodeId::from(p.node_id.as_str());
                !ctx.rule_book.recently_refused(&entry.vm, &peer)
            })
            .collect();
        if legal.is_empty() {
            let why = no_legal_peer(rules, &peers);
            tracing::warn!(vm = %entry.vm, rule = %why, "draining: no node may take this VM");
            ctx.rule_book.block(&entry.vm, why);
            continue;
        }
        let a = legal[rng.random_range(0..legal.len())];
        let b = legal[rng.random_range(0..legal.len())];
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
        ctx.rule_book.unblock(&job.vm);
        tracing::info!(vm = %job.vm, peer = %job.to, "draining: handing VM off");
        if !ctx.moves.push(job) {
            tracing::debug!("mover queue full; the next drain step tries again");
        }
        return;
    }
}

/// Why no peer may take a VM with `rules` (all of `peers` lack a tag or refused it).
fn no_legal_peer(rules: &PlacementRules, peers: &[PeerView]) -> String {
    if let Some(tag) = rules
        .requires
        .iter()
        .find(|t| !peers.iter().any(|p| p.summary.tags.contains(t)))
    {
        return format!("requires tag {tag}: no other active node has it");
    }
    if rules.anti_affinity.is_empty() {
        "every other active node that has its tags refused it".to_owned()
    } else {
        format!(
            "anti-affinity group {}: every other active node that could take it holds a member",
            rules.anti_affinity.join(", ")
        )
    }
}
