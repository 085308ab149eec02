//! Balancing sessions (docs/design.md §Balancing, steps 3–5): the initiator's side
//! ([`run_session`]) and the peer's side ([`serve_session`]).
//!
//! A sends `L_A` and the raw factors of its movable VMs; B answers its fresh `L_B`, what
//! each of A's candidates would weigh on B, its free memory and its own movable VMs
//! (with raw factors, for the case where B is the busier side). A weighs B's VMs on
//! itself and calls the pure policy (`policy::decide`) with both sides' figures: A sends,
//! pulls (`Pull`), or swaps — hands one VM over and pulls one back, two independent
//! handoffs. A node takes part in one session at a time (its slot), so two sessions of
//! one pair never overlap; a busy peer answers `Busy`. A served session's slot frees
//! itself after `balancing.session_timeout`; an own session's slot is held until the
//! session ends. The VMs a session decides to bring to a node count in its figures from
//! the decision on (queued on the sender first, then announced with `Sent`, or pulled),
//! until they arrive or stop being awaited, so that the pair's next session sees them;
//! meanwhile the node, like a node whose planned moves out are not done, opens no
//! session and answers `Busy`.

use super::context::AgentContext;
use super::figures::local_figures;
use super::mover::MoveJob;
use super::session_book::Arriving;
use super::wire::{check_figures, RuleSkip, RULE_SKIPS_MAX};
use super::wire::{
    AgentRequest, AgentResponse, CandidateView, PlanKind, PlannedVm, Request, Response,
    SessionOutcome, SessionRecord, SessionRequest, SessionResponse, SideFigures,
};
use crate::policy::{self, decide, Candidate, Decision, PlannedMove, Side, View};
use ballast_core::rules::{PairRules, PairSide, PlacementRules};
use ballast_gossip::PeerView;
use ballast_store::{NodeId, VmId};
use std::time::Duration;
use tracing::{debug, info, Instrument};

/// How long VMs a session decided to bring here are awaited without any arriving: the
/// sender starts each queued move within a session timeout and a prepare.
fn await_window(ctx: &AgentContext) -> Duration {
    ctx.cfg.balancing.session_timeout.duration() * 2 + ctx.cfg.handoff.prepare_timeout.duration()
}

fn candidates_of(figures: &SideFigures, loads_there: impl Fn(usize) -> f64) -> Vec<Candidate> {
    figures
        .candidates
        .iter()
        .enumerate()
        .map(|(i, c)| Candidate {
            load_here: c.load_here,
            load_there: loads_there(i),
            mem_bytes: c.mem_bytes,
            pinned: c.pinned,
            last_moved_ms: c.last_moved_unix_ms,
        })
        .collect()
}

/// Each candidate's VM and rules, in candidate order.
fn rules_of(figures: &SideFigures) -> Vec<(VmId, PlacementRules)> {
    figures
        .candidates
        .iter()
        .map(|c| (c.vm.clone(), c.rules.clone()))
        .collect()
}

/// The candidates of `side` that a placement rule keeps from going to the other host.
fn rule_skips(pair: &PairRules<'_>, side: Side) -> Vec<RuleSkip> {
    let candidates = match side {
        Side::Local => pair.local.candidates,
        Side::Peer => pair.peer.candidates,
    };
    (0..candidates.len())
        .filter_map(|i| {
            pair.blocked(side, i, &[], None).map(|why| RuleSkip {
                vm: candidates[i].0.clone(),
                rule: why.to_string(),
            })
        })
        .take(RULE_SKIPS_MAX)
        .collect()
}

fn views(figures: &SideFigures, candidates: &[Candidate]) -> Vec<CandidateView> {
    figures
        .candidates
        .iter()
        .zip(candidates)
        .map(|(f, c)| CandidateView {
            vm: f.vm.clone(),
            load_here: c.load_here,
            load_there: c.load_there,
            mem_bytes: c.mem_bytes,
            pinned: c.pinned,
            last_moved_unix_ms: c.last_moved_ms,
        })
        .collect()
}

/// The peer's side: answers one session step from `from`.
pub(crate) async fn serve_session(
    ctx: &AgentContext,
    from: NodeId,
    req: SessionRequest,
) -> SessionResponse {
    match req {
        SessionRequest::Open { session, figures } => {
            if ctx.is_draining() {
                return SessionResponse::Draining;
            }
            let in_flight = ctx.handoffs.in_flight();
            if in_flight.incoming >= ctx.cfg.balancing.max_incoming.get() {
                return SessionResponse::Busy;
            }
            // Moves this node planned but has not finished are not yet in its figures'
            // place: a peer pulling on those figures would pull the same load twice (with
            // migrations of seconds, every session until they end). Busy until they end.
            if ctx.moves.pending() > 0 || in_flight.outgoing >= ctx.cfg.balancing.max_outgoing.get()
            {
                return SessionResponse::Busy;
            }
            // Likewise for VMs decided to come here that have not arrived: this node's
            // figures hold them, but a move planned on top would wait for the incoming
            // limit, be refused and be planned again and again.
            if ctx.sessions.awaiting() {
                return SessionResponse::Busy;
            }
            let timeout = ctx.cfg.balancing.session_timeout.duration();
            if !ctx.sessions.take_slot(&from, session, Some(timeout)) {
                return SessionResponse::Busy;
            }
            let mine = match local_figures(ctx).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(reason = %e, "cannot read own figures for a session");
                    ctx.sessions.release_slot(&from, session);
                    return SessionResponse::Busy;
                }
            };
            let loads_there: Vec<f64> = figures
                .candidates
                .iter()
                .map(|c| ctx.model.load_of(&c.factors))
                .collect();
            let offered = figures
                .candidates
                .iter()
                .zip(&loads_there)
                .map(|(c, &load)| Arriving {
                    vm: c.vm.clone(),
                    load,
                    mem_bytes: c.mem_bytes,
                })
                .collect();
            ctx.sessions.offered(&from, session, offered);
            debug!(session, peer = %from, load_peer = figures.load, load_here = mine.load, "session offer");
            SessionResponse::Offer {
                session,
                figures: mine,
                loads_there,
            }
        }
        SessionRequest::Pull { session, vms } => {
            if !ctx.sessions.release_slot(&from, session) {
                return SessionResponse::NoSession;
            }
            if ctx.cfg.balancing.dry_run {
                info!(session, peer = %from, vms = vms.len(), "dry run: a peer's pull not run");
                return SessionResponse::Done;
            }
            info!(session, peer = %from, vms = vms.len(), "session: peer pulls VMs");
            for vm in vms {
                let job = MoveJob {
                    vm,
                    to: from.clone(),
                    forced: false,
                };
                if !ctx.moves.push(job) {
                    debug!(peer = %from, "mover queue full; pulled VM left for a later round");
                }
            }
            SessionResponse::Done
        }
        SessionRequest::Close { session } => {
            if ctx.sessions.release_slot(&from, session) {
                SessionResponse::Done
            } else {
                SessionResponse::NoSession
            }
        }
        SessionRequest::Sent { session, vms } => {
            let Some(offered) = ctx.sessions.take_back(&from, session) else {
                return SessionResponse::NoSession;
            };
            let arriving: Vec<Arriving> = offered
                .into_iter()
                .filter(|o| vms.contains(&o.vm))
                .collect();
            info!(session, peer = %from, vms = arriving.len(), "session: peer sends VMs");
            ctx.sessions.await_vms(&from, arriving, await_window(ctx));
            ctx.summary_dirty.notify_one();
            SessionResponse::Done
        }
    }
}

/// The initiator's side: one session with `peer`. Returns the record (also kept).
pub(crate) async fn run_session(
    ctx: &AgentContext,
    peer: &PeerView,
    session: u64,
) -> SessionRecord {
    let peer_id = NodeId::from(peer.node_id.as_str());
    let span = tracing::info_span!("session", session, peer = %peer_id);
    let record = session_inner(ctx, peer, &peer_id, session)
        .instrument(span)
        .await;
    ctx.metrics.session(record.outcome.label());
    ctx.sessions.record(record.clone());
    super::session_history::persist(ctx, &record).await;
    record
}

async fn session_inner(
    ctx: &AgentContext,
    peer: &PeerView,
    peer_id: &NodeId,
    session: u64,
) -> SessionRecord {
    let mut record = SessionRecord {
        session,
        initiator: ctx.me.clone(),
        peer: peer_id.clone(),
        load_initiator: 0.0,
        load_peer: peer.summary.load,
        outcome: SessionOutcome::Undecided,
        moves: Vec::new(),
        initiator_candidates: Vec::new(),
        peer_candidates: Vec::new(),
        free_mem_bytes: (0, 0),
        now_unix_ms: super::unix_ms(),
        skipped_by_rule: Vec::new(),
    };
    if !ctx.sessions.take_slot(peer_id, session, None) {
        record.outcome = SessionOutcome::SelfBusy;
        return record;
    }
    ctx.metrics.sessions_opened.inc();
    let outcome = negotiate(ctx, peer, peer_id, session, &mut record).await;
    record.outcome = outcome;
    ctx.sessions.release_slot(peer_id, session);
    info!(
        outcome = %record.outcome,
        load_here = record.load_initiator,
        load_peer = record.load_peer,
        moves = ?record.moves.iter().map(|m| (m.vm.as_str(), m.load_from, m.load_to)).collect::<Vec<_>>(),
        "session decided"
    );
    record
}

async fn call(
    ctx: &AgentContext,
    peer: &PeerView,
    req: SessionRequest,
) -> Result<SessionResponse, String> {
    let rpc = ctx.net.rpc().ok_or("no endpoint")?;
    let timeout = ctx.cfg.balancing.session_timeout.duration();
    let protocol = peer.summary.protocol_version;
    let req =
        AgentRequest::for_protocol(protocol, Request::Session(req)).map_err(|e| e.to_string())?;
    let call = rpc.call_speaking::<_, AgentResponse>(
        peer.gossip_addr,
        Some(&peer.node_id),
        protocol,
        &req,
    );
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(answer)) => match answer.into_current() {
            Response::Session(r) => Ok(r),
            other => Err(format!("unexpected answer {other:?}")),
        },
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("session timed out".into()),
    }
}

async fn negotiate(
    ctx: &AgentContext,
    peer: &PeerView,
    peer_id: &NodeId,
    session: u64,
    record: &mut SessionRecord,
) -> SessionOutcome {
    let mut mine = match local_figures(ctx).await {
        Ok(f) => f,
        Err(e) => return SessionOutcome::Failed(e.to_string()),
    };
    if super::wire_v1::speaks_only_v1(peer.summary.protocol_version) {
        // A node of ballast 0.1 knows no placement rules: a VM with rules never goes
        // there (its rules would be lost on the way).
        mine.candidates.retain(|c| c.rules.is_empty());
    }
    record.load_initiator = mine.load;
    let open = SessionRequest::Open {
        session,
        figures: mine.clone(),
    };
    let (theirs, loads_there) = match call(ctx, peer, open).await {
        Ok(SessionResponse::Offer {
            figures,
            loads_there,
            ..
        }) if loads_there.len() == mine.candidates.len() => (figures, loads_there),
        Ok(SessionResponse::Offer { .. }) => return SessionOutcome::Failed("bad offer".into()),
        Ok(SessionResponse::Busy) => return SessionOutcome::PeerBusy,
        Ok(SessionResponse::Draining) => return SessionOutcome::PeerDraining,
        Ok(other) => return SessionOutcome::Failed(format!("{other:?}")),
        Err(e) => return SessionOutcome::Failed(e),
    };
    if let Err(why) = check_figures(&theirs) {
        return SessionOutcome::Failed(format!("bad offer: {why}"));
    }
    record.load_peer = theirs.load;
    let local_c = candidates_of(&mine, |i| loads_there[i]);
    let peer_c = candidates_of(&theirs, |i| {
        ctx.model.load_of(&theirs.candidates[i].factors)
    });
    let local = View {
        load: mine.load,
        candidates: &local_c,
        free_mem_bytes: mine.free_mem_bytes,
    };
    let remote = View {
        load: theirs.load,
        candidates: &peer_c,
        free_mem_bytes: theirs.free_mem_bytes,
    };
    let local_rules = rules_of(&mine);
    let peer_rules = rules_of(&theirs);
    let pair = PairRules {
        local: PairSide {
            holdings: &mine.holdings,
            candidates: &local_rules,
        },
        peer: PairSide {
            holdings: &theirs.holdings,
            candidates: &peer_rules,
        },
    };
    let any_rules = local_rules
        .iter()
        .chain(&peer_rules)
        .any(|(_, r)| !r.is_empty());
    let at = policy::Context {
        now_ms: super::unix_ms(),
        rules: any_rules.then_some(&pair as &dyn policy::MoveRules),
    };
    record.initiator_candidates = views(&mine, &local_c);
    record.peer_candidates = views(&theirs, &peer_c);
    record.free_mem_bytes = (mine.free_mem_bytes, theirs.free_mem_bytes);
    record.now_unix_ms = at.now_ms;
    let decision = decide(&local, &remote, &at, &ctx.cfg.policy);
    let planned = |moves: &[PlannedMove], side: Side, from: &NodeId, to: &NodeId| {
        let figs = if side == Side::Local { &mine } else { &theirs };
        moves
            .iter()
            .map(|m| PlannedVm {
                vm: figs.candidates[m.index].vm.clone(),
                load_from: m.load_from,
                load_to: m.load_to,
                from: from.clone(),
                to: to.clone(),
                repairs: pair
                    .broken_where_it_is(side, m.index)
                    .map(|r| r.to_string()),
            })
            .collect::<Vec<_>>()
    };
    record.moves = match &decision {
        Decision::Send(moves) => planned(moves, Side::Local, &ctx.me, peer_id),
        Decision::Receive(moves) => planned(moves, Side::Peer, peer_id, &ctx.me),
        Decision::Swap { give, take } => {
            let mut m = planned(&[*give], Side::Local, &ctx.me, peer_id);
            m.extend(planned(&[*take], Side::Peer, peer_id, &ctx.me));
            m
        }
        Decision::Stay(_) => Vec::new(),
    };
    if any_rules {
        let busier = if mine.load >= theirs.load {
            Side::Local
        } else {
            Side::Peer
        };
        record.skipped_by_rule = rule_skips(&pair, busier);
    }
    if ctx.cfg.balancing.dry_run && !record.moves.is_empty() {
        let _ = call(ctx, peer, SessionRequest::Close { session }).await;
        let what = match decision {
            Decision::Send(_) => PlanKind::Send,
            Decision::Receive(_) => PlanKind::Receive,
            _ => PlanKind::Swap,
        };
        info!(
            moves = record.moves.len(),
            "dry run: moves planned, none made"
        );
        return SessionOutcome::DryRun(what);
    }
    match decision {
        Decision::Send(_) => {
            // Queued first: from now on this node is busy for other sessions.
            queue_sends(ctx, &record.moves, peer_id);
            let vms = record.moves.iter().map(|m| m.vm.clone()).collect();
            let _ = call(ctx, peer, SessionRequest::Sent { session, vms }).await;
            SessionOutcome::Moved(PlanKind::Send)
        }
        Decision::Receive(_) => {
            let vms = record.moves.iter().map(|m| m.vm.clone()).collect();
            match call(ctx, peer, SessionRequest::Pull { session, vms }).await {
                Ok(SessionResponse::Done) => {
                    await_pulled(ctx, peer_id, &record.moves, &theirs);
                    SessionOutcome::Moved(PlanKind::Receive)
                }
                Ok(other) => SessionOutcome::Failed(format!("pull answered {other:?}")),
                Err(e) => SessionOutcome::Failed(e),
            }
        }
        Decision::Swap { .. } => {
            // Two independent handoffs, each one crash-safe on its own: this node hands
            // `give` over, the peer hands `take` back (a pull). If one fails, the pair is
            // merely less balanced until a later round.
            queue_sends(ctx, &record.moves[..1], peer_id);
            let vms = vec![record.moves[1].vm.clone()];
            match call(ctx, peer, SessionRequest::Pull { session, vms }).await {
                Ok(SessionResponse::Done) => {
                    await_pulled(ctx, peer_id, &record.moves[1..], &theirs);
                    SessionOutcome::Moved(PlanKind::Swap)
                }
                Ok(other) => SessionOutcome::Failed(format!("swap pull answered {other:?}")),
                Err(e) => SessionOutcome::Failed(e),
            }
        }
        Decision::Stay(why) => {
            let _ = call(ctx, peer, SessionRequest::Close { session }).await;
            SessionOutcome::Stay(why)
        }
    }
}

/// Awaits the VMs of `moves` pulled from `from` (whose figures were `theirs`).
fn await_pulled(ctx: &AgentContext, from: &NodeId, moves: &[PlannedVm], theirs: &SideFigures) {
    let arriving = moves
        .iter()
        .map(|m| Arriving {
            vm: m.vm.clone(),
            load: m.load_to,
            mem_bytes: theirs
                .candidates
                .iter()
                .find(|c| c.vm == m.vm)
                .map_or(0, |c| c.mem_bytes),
        })
        .collect();
    ctx.sessions.await_vms(from, arriving, await_window(ctx));
    ctx.summary_dirty.notify_one();
}

/// Queues a handoff of each of `moves` (VMs of this node) to `to`.
fn queue_sends(ctx: &AgentContext, moves: &[PlannedVm], to: &NodeId) {
    for m in moves {
        let job = MoveJob {
            vm: m.vm.clone(),
            to: to.clone(),
            forced: false,
        };
        if !ctx.moves.push(job) {
            debug!(peer = %to, "mover queue full; planned move left for a later round");
        }
    }
}
