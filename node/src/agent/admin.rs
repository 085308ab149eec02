//! The admin API's handlers (admin certificate required, checked by the RPC layer) and
//! the placement of new VMs (`Place`, node to node).

use super::context::{lock, AgentContext};
use super::figures::summary;
use super::handoff_task::{handoffs_in_flight, move_vm, Input};
use super::placement::{create, Placed};
use super::rule_book::rule_breaks;
use super::session_history;
use super::wire::{
    AdminError, AdminRequest, AdminResponse, BusyDetail, HandoffInfo, NodeRules, NodeStatus,
    PeerStatus, Placement, SessionRecord, StoreView,
};
use ballast_core::rules::{broken_here, PlacementRules};
use ballast_store::{NodeId, ScheduleEntry, StoreError, VmId, VmState};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tracing::info;

/// Most records one `SessionHistory` answer holds (then the frame budget).
const SESSION_HISTORY_ANSWER_MAX: usize = 10_000;

/// Name of the marker file that keeps a node draining across restarts.
pub(crate) const DRAINING_FILE: &str = "draining";

pub(crate) fn store_err(e: StoreError) -> AdminError {
    match e {
        StoreError::NotFound { vm } => AdminError::NotFound(vm),
        StoreError::AlreadyExists { vm, detail } => AdminError::AlreadyExists { vm, detail },
        StoreError::WrongState { vm, found, .. } => AdminError::Busy {
            vm,
            detail: BusyDetail::Other(format!("{found:?}")),
        },
        StoreError::InvalidInput { reason, .. } => AdminError::Invalid(reason),
        other => AdminError::Store(other.to_string()),
    }
}

/// Handles one admin request.
pub(crate) async fn handle_admin(
    ctx: &AgentContext,
    req: AdminRequest,
) -> Result<AdminResponse, AdminError> {
    match req {
        AdminRequest::CreateVm {
            vm,
            spec,
            node,
            pinned,
        } => {
            let p = Placement { vm, spec, pinned };
            Ok(match create(ctx, p, node).await? {
                Placed {
                    node,
                    warning: None,
                } => AdminResponse::Created { node },
                Placed {
                    node,
                    warning: Some(warning),
                } => AdminResponse::CreatedWithWarning { node, warning },
            })
        }
        AdminRequest::ListVms => ctx
            .with_store(|s| s.list())
            .await
            .map(AdminResponse::Vms)
            .map_err(store_err),
        AdminRequest::DeleteVm { vm } => delete(ctx, vm).await,
        AdminRequest::SetPinned { vm, pinned } => {
            let _outcome = ctx
                .with_store(move |s| s.set_pinned(&vm, pinned))
                .await
                .map_err(store_err)?;
            Ok(AdminResponse::Done)
        }
        AdminRequest::Status => Ok(AdminResponse::Status(Box::new(status(ctx).await?))),
        AdminRequest::Snapshot => {
            let snap = ctx.with_store(|s| s.snapshot()).await.map_err(store_err)?;
            Ok(AdminResponse::Snapshot(Box::new(StoreView {
                entries: snap.entries,
                transfers: snap.transfers,
                highest_epochs: snap.highest_epochs,
            })))
        }
        AdminRequest::Drain => set_draining(ctx, true),
        AdminRequest::Undrain => set_draining(ctx, false),
        AdminRequest::RevokeNode { revocation } => revoke(ctx, revocation).await,
        AdminRequest::ForgetNode { node } => {
            if node == ctx.me {
                return Err(AdminError::Invalid("a node cannot forget itself".into()));
            }
            info!(node = %node, "operator: forget node");
            ctx.net.forget(&node);
            ctx.handoffs
                .inputs()
                .send(Input::Forget(node))
                .await
                .map_err(|_| AdminError::Timeout("agent shutting down".into()))?;
            Ok(AdminResponse::Done)
        }
        AdminRequest::MoveVm { vm, to, force } => {
            if to == ctx.me {
                return Err(AdminError::Invalid(format!("{vm} is already on {to}")));
            }
            if ctx.net.addr_of(&to).is_none() {
                return Err(AdminError::UnknownNode(to));
            }
            set_forced_on(ctx, &vm, force.then(|| to.clone())).await?;
            // Answer before the RPC layer's own deadline drops the call; the handoff
            // does not depend on this call and goes on.
            let answer_by = Duration::from_millis(ctx.cfg.gossip.rpc_timeout.get() * 4 / 5);
            info!(vm = %vm, peer = %to, "operator: move VM");
            match tokio::time::timeout(answer_by, move_vm(ctx, vm.clone(), to.clone())).await {
                Ok(Ok(r)) if !r.committed && ctx.rule_book.recently_refused(&vm, &to) => {
                    Err(AdminError::BreaksRule {
                        vm,
                        node: to,
                        rule: "a hard placement rule (refused by that node)".into(),
                    })
                }
                Ok(Ok(r)) => Ok(AdminResponse::Moved {
                    committed: r.committed,
                    epoch: r.epoch,
                }),
                Ok(Err(refused)) => Err(AdminError::Busy {
                    vm,
                    detail: refused.into(),
                }),
                Err(_) => {
                    info!(vm = %vm, peer = %to, "operator move still under way at the answer");
                    Ok(AdminResponse::MoveUnderway)
                }
            }
        }
        AdminRequest::AdoptVms { names } => adopt(ctx, names).await,
        AdminRequest::ReleaseVm { vm } => release(ctx, vm).await,
        AdminRequest::SetRules { vm, rules } => set_rules(ctx, vm, rules).await,
        AdminRequest::RecentSessions => {
            // The store's history (it survives restarts); the memory's if it cannot
            // be read.
            let newest = super::session_book::SESSION_RECORDS_MAX;
            let records = match session_history::read(ctx, 0, None, newest).await {
                Ok(kept) if !kept.is_empty() => kept,
                _ => ctx.sessions.recent(),
            };
            Ok(AdminResponse::Sessions(newest_within(
                records,
                sessions_budget(ctx),
            )))
        }
        AdminRequest::SessionHistory { since_unix_ms, vm } => {
            let records = session_history::read(ctx, since_unix_ms, vm, SESSION_HISTORY_ANSWER_MAX)
                .await
                .map_err(store_err)?;
            Ok(AdminResponse::Sessions(newest_within(
                records,
                sessions_budget(ctx),
            )))
        }
    }
}

/// Bytes of session records one answer may hold: half of what any client accepts by
/// default, whatever this node's own limit.
fn sessions_budget(ctx: &AgentContext) -> usize {
    ctx.cfg
        .gossip
        .max_rpc_frame_bytes
        .min(ballast_gossip::RPC_FRAME_BYTES_DEFAULT)
        / 2
}

/// The newest of `records` (given oldest first) whose encoded sizes add up to at most
/// `budget` bytes, still oldest first: a node with many VMs keeps large records, and an
/// answer over the RPC frame limit would fail as a whole.
fn newest_within(mut records: Vec<SessionRecord>, budget: usize) -> Vec<SessionRecord> {
    let mut used = 0usize;
    let mut keep = 0;
    for r in records.iter().rev() {
        let size =
            ballast_gossip::frame::encode_frame(r, usize::MAX).map_or(usize::MAX, |f| f.len());
        used = used.saturating_add(size);
        if used > budget {
            break;
        }
        keep += 1;
    }
    records.split_off(records.len() - keep)
}

/// Sets the node an operator forces `vm` onto (its rules' `forced_on`: that node admits
/// it whatever its hard rules say), or clears it for a move that is not forced. Writes
/// only when it changes.
pub(crate) async fn set_forced_on(
    ctx: &AgentContext,
    vm: &VmId,
    forced_on: Option<NodeId>,
) -> Result<(), AdminError> {
    let vm2 = vm.clone();
    let Some(entry) = ctx
        .with_store(move |s| s.get(&vm2))
        .await
        .map_err(store_err)?
    else {
        return Ok(()); // the move itself answers for a VM that is not here
    };
    if entry.spec.rules.is_empty() || entry.spec.rules.forced_on == forced_on {
        return Ok(());
    }
    let mut spec = entry.spec;
    spec.rules.forced_on = forced_on.clone();
    let vm2 = vm.clone();
    let _outcome = ctx
        .with_store(move |s| s.update_spec(&vm2, &spec))
        .await
        .map_err(store_err)?;
    if let Some(to) = forced_on {
        info!(vm = %vm, peer = %to, "operator: move forced past the placement rules");
    }
    Ok(())
}

/// `vm set`: new rules for a settled VM of this node; says which hard rule it now breaks
/// here (balancing repairs that when a legal node has room).
async fn set_rules(
    ctx: &AgentContext,
    vm: VmId,
    mut rules: PlacementRules,
) -> Result<AdminResponse, AdminError> {
    rules
        .validate()
        .map_err(|e| AdminError::Invalid(e.to_string()))?;
    rules.forced_on = None;
    ensure_settled(ctx, &vm).await?;
    let vm2 = vm.clone();
    let broken = ctx
        .with_store(move |s| {
            let mut spec = s
                .get(&vm2)?
                .ok_or_else(|| StoreError::NotFound { vm: vm2.clone() })?
                .spec;
            *spec.rules = rules.clone();
            let _outcome = s.update_spec(&vm2, &spec)?;
            Ok(broken_here(&vm2, &rules, &s.holdings()?, &[]))
        })
        .await
        .map_err(store_err)?;
    ctx.summary_dirty.notify_one();
    info!(vm = %vm, breaks = ?broken, "operator: placement rules set");
    Ok(AdminResponse::RulesSet {
        breaks: broken.map(|r| r.to_string()),
    })
}

fn set_draining(ctx: &AgentContext, on: bool) -> Result<AdminResponse, AdminError> {
    let marker = ctx.cfg.node.data_dir.join(DRAINING_FILE);
    let r = if on {
        std::fs::write(&marker, b"draining\n")
    } else {
        match std::fs::remove_file(&marker) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    };
    r.map_err(|e| AdminError::Store(format!("{}: {e}", marker.display())))?;
    ctx.draining.store(on, Ordering::Relaxed);
    ctx.rule_book.clear_drain_blocks();
    ctx.summary_dirty.notify_one();
    info!(draining = on, "operator: drain state changed");
    Ok(AdminResponse::Done)
}

/// Ok when `vm` is this node's, `Running` and in no handoff; else `NotFound` or `Busy`.
async fn ensure_settled(ctx: &AgentContext, vm: &ballast_store::VmId) -> Result<(), AdminError> {
    let busy = handoffs_in_flight(ctx).await.iter().any(|h| &h.vm == vm);
    let vm2 = vm.clone();
    let entry = ctx
        .with_store(move |s| s.get(&vm2))
        .await
        .map_err(store_err)?
        .ok_or_else(|| AdminError::NotFound(vm.clone()))?;
    if busy || entry.state != VmState::Running {
        return Err(AdminError::Busy {
            vm: vm.clone(),
            detail: BusyDetail::Other("in a handoff".into()),
        });
    }
    Ok(())
}

async fn delete(ctx: &AgentContext, vm: ballast_store::VmId) -> Result<AdminResponse, AdminError> {
    let _changes = ctx.vm_changes.lock().await;
    ensure_settled(ctx, &vm).await?;
    ctx.driver
        .stop(&vm)
        .await
        .map_err(|e| AdminError::Driver(e.to_string()))?;
    let vm2 = vm.clone();
    ctx.with_store(move |s| s.delete(&vm2))
        .await
        .map_err(store_err)?;
    info!(vm = %vm, "VM deleted");
    ctx.summary_dirty.notify_one();
    Ok(AdminResponse::Done)
}

/// `Err` naming the driver when it cannot adopt and release VMs; nothing changed.
fn refuse_unless_adopting(ctx: &AgentContext, what: &'static str) -> Result<(), AdminError> {
    if ctx.driver.adopts() {
        return Ok(());
    }
    Err(AdminError::Driver(
        crate::driver::DriverError::Unsupported {
            driver: ctx.driver.name(),
            what,
        }
        .to_string(),
    ))
}

/// Most names one `AdoptVms` may carry.
const ADOPT_NAMES_MAX: usize = 4096;

/// Takes the hypervisor's existing VMs into the schedule: the driver marks each as
/// managed and says its spec, then its `Running` entry is stored (an entry that exists
/// already counts as adopted: the call is idempotent).
async fn adopt(ctx: &AgentContext, names: Vec<String>) -> Result<AdminResponse, AdminError> {
    if names.len() > ADOPT_NAMES_MAX {
        return Err(AdminError::Invalid(format!(
            "{} names; at most {ADOPT_NAMES_MAX} per call",
            names.len()
        )));
    }
    if let Some(bad) = names.iter().find(|n| n.is_empty() || n.len() > 255) {
        return Err(AdminError::Invalid(format!("bad VM name {bad:?}")));
    }
    refuse_unless_adopting(ctx, "adopt VMs it did not start")?;
    let _changes = ctx.vm_changes.lock().await;
    let found = ctx
        .driver
        .adopt_existing(&names)
        .await
        .map_err(|e| AdminError::Driver(e.to_string()))?;
    let mut adopted = Vec::with_capacity(found.len());
    for (vm, spec) in found {
        let entry = ScheduleEntry {
            vm: vm.clone(),
            factors: spec.target.unwrap_or_default(),
            spec,
            state: VmState::Running,
            epoch: 0,
            pinned: false,
            last_moved_unix_ms: None,
        };
        match ctx.with_store(move |s| s.create(&entry)).await {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {
                info!(vm = %vm, "VM adopted");
                adopted.push(vm);
            }
            Err(e) => return Err(store_err(e)),
        }
    }
    ctx.summary_dirty.notify_one();
    Ok(AdminResponse::Adopted(adopted))
}

/// Gives a VM back: its entry leaves the schedule first (durably), then the driver
/// unmarks it. Should the second step fail, the VM is reported as unclaimed, never moved.
async fn release(ctx: &AgentContext, vm: ballast_store::VmId) -> Result<AdminResponse, AdminError> {
    // Refused before the entry goes: on a driver that cannot release, the VM would run
    // on with nothing claiming it.
    refuse_unless_adopting(ctx, "release VMs")?;
    let _changes = ctx.vm_changes.lock().await;
    ensure_settled(ctx, &vm).await?;
    let vm2 = vm.clone();
    ctx.with_store(move |s| s.delete(&vm2))
        .await
        .map_err(store_err)?;
    ctx.summary_dirty.notify_one();
    ctx.driver.release(&vm).await.map_err(|e| {
        AdminError::Driver(format!(
            "{vm} left the schedule, but the hypervisor still marks it as ballast's: {e}"
        ))
    })?;
    info!(vm = %vm, "VM released");
    Ok(AdminResponse::Done)
}

async fn status(ctx: &AgentContext) -> Result<NodeStatus, AdminError> {
    let summary = summary(ctx).await.map_err(store_err)?;
    let entries = ctx.with_store(|s| s.list()).await.map_err(store_err)?;
    let holdings = super::rule_book::holdings_of(ctx, &entries);
    let rules = NodeRules {
        breaks: rule_breaks(&ctx.me, &entries, &holdings),
        holdings,
        drain_blocked: ctx.rule_book.drain_blocked(),
    };
    let handoffs = handoffs_in_flight(ctx).await;
    let handoffs = {
        let progress = lock(&ctx.migration_progress);
        handoffs
            .into_iter()
            .map(|h| HandoffInfo {
                progress: progress.get(&h.vm).copied(),
                vm: h.vm,
                peer: h.peer,
                epoch: h.epoch,
                role: h.role,
                step: h.step,
            })
            .collect()
    };
    let peers = ctx
        .net
        .peers()
        .iter()
        .map(|p| PeerStatus {
            node: NodeId::from(p.node_id.as_str()),
            summary: p.summary.clone(),
            last_heard_ms_ago: Some(p.last_heard_ms_ago()),
        })
        .collect();
    Ok(NodeStatus {
        node: ctx.me.clone(),
        summary,
        draining: ctx.is_draining(),
        peers,
        handoffs,
        counters: ctx.metrics.counters(),
        unclaimed_vms: lock(&ctx.unclaimed).clone(),
        rules,
        forged: forged_gossip(ctx),
        revoked: ctx
            .net
            .endpoint()
            .map(|e| e.revocations())
            .unwrap_or_default()
            .into_iter()
            .map(|r| super::wire::RevokedNode {
                node: r.node,
                unix_ms: r.unix_ms,
            })
            .collect(),
        cert_expires_unix: ctx.cert_validity.not_after_unix,
        incompatible: ctx
            .net
            .endpoint()
            .map(|e| e.incompatible_peers())
            .unwrap_or_default(),
    })
}

/// `ballast node revoke`: checked and enforced by the endpoint, then kept (flushed)
/// before the answer.
async fn revoke(
    ctx: &AgentContext,
    revocation: ballast_gossip::Revocation,
) -> Result<AdminResponse, AdminError> {
    let endpoint = ctx
        .net
        .endpoint()
        .ok_or_else(|| AdminError::Timeout("agent shutting down".into()))?;
    if revocation.node == ctx.me.0 {
        return Err(AdminError::Invalid("a node cannot revoke itself".into()));
    }
    let new = endpoint
        .revoke(revocation.clone())
        .await
        .map_err(|e| AdminError::Invalid(e.to_string()))?;
    super::revocations::persist(ctx, &revocation)
        .await
        .map_err(AdminError::Store)?;
    info!(node = %revocation.node, new, "operator: node revoked");
    Ok(AdminResponse::Done)
}

/// The forged gossip this node refused, and the metric brought up to date.
fn forged_gossip(ctx: &AgentContext) -> super::wire::ForgedGossip {
    let Some(endpoint) = ctx.net.endpoint() else {
        return Default::default();
    };
    let stats = endpoint.stats();
    ctx.metrics.sync_gossip(&stats);
    super::wire::ForgedGossip {
        total: stats.forged_state,
        recent: endpoint.forged_states(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::wire::{CandidateView, PlanKind, SessionOutcome};
    use ballast_store::VmId;

    fn record(session: u64, candidates: usize) -> SessionRecord {
        SessionRecord {
            session,
            initiator: NodeId::from("n1"),
            peer: NodeId::from("n2"),
            load_initiator: 0.5,
            load_peer: 0.1,
            outcome: SessionOutcome::Moved(PlanKind::Send),
            moves: Vec::new(),
            initiator_candidates: (0..candidates)
                .map(|i| CandidateView {
                    vm: VmId::from(format!("vm-{i:05}")),
                    load_here: 0.01,
                    load_there: 0.02,
                    mem_bytes: 1 << 30,
                    pinned: false,
                    last_moved_unix_ms: None,
                })
                .collect(),
            peer_candidates: Vec::new(),
            free_mem_bytes: (0, 0),
            now_unix_ms: 0,
            skipped_by_rule: Vec::new(),
        }
    }

    #[test]
    fn recent_sessions_keep_the_newest_that_fit() {
        let records: Vec<SessionRecord> = (0..256).map(|s| record(s, 500)).collect();
        let one = ballast_gossip::frame::encode_frame(&records[0], usize::MAX)
            .expect("encode")
            .len();
        // All 256 would need far more than the 2 MiB budget.
        assert!(one * 256 > 2 << 20, "record of {one} bytes");
        let kept = newest_within(records.clone(), 2 << 20);
        assert_eq!(kept.len(), (2 << 20) / one);
        assert_eq!(kept.last().map(|r| r.session), Some(255));
        assert!(kept.windows(2).all(|w| w[0].session + 1 == w[1].session));
        let frame = ballast_gossip::frame::encode_frame(
            &AdminResponse::Sessions(kept),
            ballast_gossip::RPC_FRAME_BYTES_DEFAULT,
        );
        assert!(frame.is_ok(), "the answer fits one default frame");
        // Small records all fit; an empty log stays empty.
        let small: Vec<SessionRecord> = (0..10).map(|s| record(s, 1)).collect();
        assert_eq!(newest_within(small, 2 << 20).len(), 10);
        assert!(newest_within(Vec::new(), 0).is_empty());
    }
}
