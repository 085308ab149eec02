//! The handoff of docs/design.md §Handoff as a pure state machine: inputs in, [`Effect`]s out.
//!
//! This module imports no clock or randomness, and its crate (`ballast-core`) has no
//! async runtime, store or network among its dependencies. Time is an argument
//! (`now: ClockMs`), timers are values carrying the epoch they were armed for, and every
//! store write, message, driver call and timer is an [`Effect`] the agent executes. One
//! [`Handoffs`] per node manages every handoff in which the node is source (A) or
//! destination (B), keyed by VM. The same machine runs in the agent, in the unit
//! harness ([`world`]) and in the stateright model check (`ballast-chaos model`).
//!
//! Files:
//! - `messages`: [`HandoffMsg`], the wire messages, and their validation.
//! - `payload`: [`Payload`], spec + factors, hashable.
//! - `effects`: [`Effect`], [`StoreOp`], [`DriverCall`], [`Timer`].
//! - `events`: results fed back: [`StoreOutcome`], [`DriverReply`].
//! - `notices`: [`Notice`]s for logs and metrics.
//! - `config`: [`HandoffConfig`], [`PlantedBug`].
//! - `state`: the in-memory phases of a handoff.
//! - `source`, `destination`, `recovery`: the transitions of A, of B, and of restart and
//!   operator forget.
//! - [`world`]: the deterministic world, an in-memory cluster (model store, model hypervisor, lossy network) that
//!   steps these machines, with the invariant checkers I1–I3.

mod config;
mod destination;
mod effects;
mod error;
mod events;
mod messages;
mod notices;
mod payload;
mod recovery;
mod source;
mod state;
pub mod world;

#[cfg(feature = "planted-bugs")]
pub use config::PlantedBug;
pub use config::{HandoffConfig, SourceCopy};
pub use effects::{
    CallKind, ClockMs, DriverAction, DriverCall, Effect, StoreOp, StoreOpKind, Timer, TimerKind,
};
pub use error::StartError;
pub use events::{DriverOutcome, DriverReply, StoreOutcome, StoreRefusal};
pub use messages::{
    HandoffMsg, InvalidMsg, MsgKind, Outcome, RefuseReason, TARGET_LEN_MAX, VM_ID_LEN_MAX,
};
pub use notices::{AbortReason, IgnoreReason, Notice, Role};
pub use payload::{Payload, PAYLOAD_LIST_LEN_MAX, PAYLOAD_STR_LEN_MAX};

use crate::types::{NodeId, VmId};
use state::{Handoff, Settling};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Every handoff of one node, source or destination side.
///
/// # How to drive it
/// 1. On start-up build it with [`Handoffs::start`], passing the store's entries (those
///    in `MigratingOut` / `Incoming` matter) and its `Transferred` records; this is
///    recovery and must come before any other input (a fresh store passes nothing).
/// 2. Feed inputs: [`start_move`](Self::start_move), [`handle_message`](Self::handle_message)
///    (after the RPC layer authenticated the sender), [`handle_driver`](Self::handle_driver),
///    [`handle_store`](Self::handle_store), [`handle_timer`](Self::handle_timer),
///    [`handle_forget`](Self::handle_forget).
/// 3. After **each** input drain [`poll_effect`](Self::poll_effect) until `None` and
///    execute the effects in order. A [`Effect::Store`] runs to completion (durable) and
///    its result goes back through `handle_store` before the next effect and before any
///    other input; its follow-ups are queued behind the remaining effects. Driver calls
///    may run concurrently; their results come back whenever they finish.
///
/// One task owns the machine; nothing in it blocks or reads a clock.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Handoffs {
    /// This node.
    me: NodeId,
    /// Intervals and limits.
    config: HandoffConfig,
    /// Unresolved handoffs, at most one per VM.
    active: BTreeMap<VmId, Handoff>,
    /// Source records after the commit point, by VM and epoch.
    settling: BTreeMap<(VmId, u64), Settling>,
    /// VMs promoted here whose `resume_incoming` has not returned yet: not movable
    /// until they run (a move started on a paused copy left it paused when aborted).
    resuming: BTreeSet<VmId>,
    /// Effects not yet drained.
    effects: VecDeque<Effect>,
}

/// One handoff as shown by `status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandoffStatus {
    /// The VM.
    pub vm: VmId,
    /// The other side.
    pub peer: NodeId,
    /// The epoch of the move.
    pub epoch: u64,
    /// This node's side.
    pub role: Role,
    /// The step.
    pub step: HandoffStep,
}

/// Where a handoff is, as `status` shows it: a phase of the source (A) or of the
/// destination (B), or `settling` (A committed and waits for B's ack).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandoffStep {
    /// A: writing `MigratingOut`.
    Beginning,
    /// A: waiting for `Prepared`.
    Preparing,
    /// A: the hypervisor migrates.
    Migrating,
    /// A: writing the commit.
    Committing,
    /// A: asking its hypervisor what became of a migration (recovery).
    CheckingStatus,
    /// A: cancelling the migration before aborting.
    Cancelling,
    /// A: writing the abort.
    Aborting,
    /// A: committed, waiting for B's ack.
    Settling,
    /// B: writing `Incoming`.
    Accepting,
    /// B: its hypervisor prepares the paused copy.
    PreparingIncoming,
    /// B: waiting for A's decision.
    Waiting,
    /// B: writing `Running` and resuming.
    Promoting,
    /// B: dropping its copy after an abort.
    CancellingIncoming,
    /// B: writing the drop of its entry.
    Dropping,
    /// B: asking its hypervisor whether the copy is complete (after a forget of A).
    CheckingComplete,
}
crate::named_enum!(HandoffStep {
    Beginning => "beginning",
    Preparing => "preparing",
    Migrating => "migrating",
    Committing => "committing",
    CheckingStatus => "checking_status",
    Cancelling => "cancelling",
    Aborting => "aborting",
    Settling => "settling",
    Accepting => "accepting",
    PreparingIncoming => "preparing_incoming",
    Waiting => "waiting",
    Promoting => "promoting",
    CancellingIncoming => "cancelling_incoming",
    Dropping => "dropping",
    CheckingComplete => "checking_complete",
});

impl Handoffs {
    /// This node's id.
    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// The configuration.
    pub fn config(&self) -> &HandoffConfig {
        &self.config
    }

    /// The next effect to execute, in order.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// Whether the machine handles (or still settles) a handoff of `vm`.
    pub fn is_busy(&self, vm: &VmId) -> bool {
        self.active.contains_key(vm)
            || self.resuming.contains(vm)
            || self.settling.keys().any(|(v, _)| v == vm)
    }

    /// Number of unresolved handoffs (not counting settling records).
    pub fn active_count(&self) -> usize {
        self.active.len()
    }

    /// Number of unresolved handoffs in which this node is `role` (settling records,
    /// which are past their commit point, not counted).
    pub fn count_role(&self, role: Role) -> usize {
        self.active
            .values()
            .filter(|h| h.phase.role() == role)
            .count()
    }

    /// Guest memory of the VMs in handoffs here, both roles (not counting settling
    /// records), in bytes.
    pub fn bytes_in_flight(&self) -> u64 {
        self.active
            .values()
            .map(|h| h.mem_bytes)
            .fold(0, u64::saturating_add)
    }

    /// Whether a handoff of `mem_bytes` more stays within `bytes_max`; always when no
    /// handoff is under way.
    fn bytes_fit(&self, mem_bytes: u64) -> bool {
        self.active.is_empty()
            || self.bytes_in_flight().saturating_add(mem_bytes) <= self.config.bytes_max
    }

    /// Whether nothing is in progress at all (no handoff, no settling record).
    pub fn is_idle(&self) -> bool {
        self.active.is_empty() && self.settling.is_empty() && self.resuming.is_empty()
    }

    /// Every handoff in progress, for `status`.
    pub fn handoffs(&self) -> Vec<HandoffStatus> {
        let active = self.active.iter().map(|(vm, h)| HandoffStatus {
            vm: vm.clone(),
            peer: h.peer.clone(),
            epoch: h.epoch,
            role: h.phase.role(),
            step: h.phase.step(),
        });
        let settling = self.settling.iter().map(|((vm, epoch), s)| HandoffStatus {
            vm: vm.clone(),
            peer: s.peer.clone(),
            epoch: *epoch,
            role: Role::Source,
            step: HandoffStep::Settling,
        });
        active.chain(settling).collect()
    }

    /// Whether `timer` would still do something if it fired now (its move is at the
    /// step the timer was armed for). The agent may drop timers for which this is false;
    /// firing them is a no-op anyway.
    pub fn wants_timer(&self, timer: &Timer) -> bool {
        let active = self
            .active
            .get(&timer.vm)
            .filter(|h| h.epoch == timer.epoch);
        let settling = self.settling.get(&(timer.vm.clone(), timer.epoch));
        match timer.kind {
            TimerKind::PrepareRetry | TimerKind::PrepareDeadline => {
                active.is_some_and(|h| matches!(h.phase, state::Phase::Preparing { .. }))
            }
            TimerKind::MigrateDeadline => {
                active.is_some_and(|h| h.phase == state::Phase::Migrating)
            }
            TimerKind::Query => {
                active.is_some_and(|h| matches!(h.phase, state::Phase::Waiting { .. }))
            }
            TimerKind::CommitRetry => {
                settling.is_some_and(|s| s.step == state::SettleStep::AwaitAck)
            }
            TimerKind::CancelRetry => {
                active.is_some_and(|h| matches!(h.phase, state::Phase::Cancelling { .. }))
            }
            TimerKind::StoreRetry => {
                active.is_some_and(|h| h.phase.store_op(&timer.vm, &h.peer, h.epoch).is_some())
                    || settling
                        .is_some_and(|s| matches!(s.step, state::SettleStep::Forgetting { .. }))
            }
        }
    }

    /// A message from `from` (authenticated by the RPC layer). Invalid, stale and
    /// duplicate messages change nothing (an idempotent answer or an `Ignored` notice).
    pub fn handle_message(&mut self, now: ClockMs, from: &NodeId, msg: HandoffMsg) {
        if msg.validate().is_err() {
            self.ignore(msg.vm(), msg.epoch(), msg.kind(), IgnoreReason::Invalid);
            return;
        }
        let _span =
            tracing::debug_span!("handoff", vm = %msg.vm(), epoch = msg.epoch(), peer = %from)
                .entered();
        match msg {
            HandoffMsg::Prepare { vm, epoch, payload } => {
                self.on_prepare(now, from, vm, epoch, payload)
            }
            HandoffMsg::Prepared { vm, epoch, target } => {
                self.on_prepared(now, from, vm, epoch, target)
            }
            HandoffMsg::PrepareRefused { vm, epoch, reason } => {
                self.on_refused(from, vm, epoch, reason)
            }
            HandoffMsg::Commit { vm, epoch } => self.on_commit(now, from, vm, epoch, "commit"),
            HandoffMsg::CommitAck { vm, epoch } => self.on_commit_ack(from, vm, epoch),
            HandoffMsg::Abort { vm, epoch } => self.on_abort(from, vm, epoch, "abort"),
            HandoffMsg::QueryOutcome { vm, epoch } => self.on_query(from, vm, epoch),
            HandoffMsg::Outcome { vm, epoch, outcome } => match outcome {
                Outcome::Committed => self.on_commit(now, from, vm, epoch, "outcome"),
                Outcome::Aborted => self.on_abort(from, vm, epoch, "outcome"),
                Outcome::Pending => {}
            },
        }
    }

    /// The result of a store effect (see [`StoreOutcome`] for the mapping).
    pub fn handle_store(&mut self, now: ClockMs, op: StoreOp, outcome: StoreOutcome) {
        let _span = tracing::debug_span!("handoff", vm = %op.vm(), epoch = op.epoch()).entered();
        tracing::debug!(op = op.name(), ?outcome, "store result");
        if outcome == StoreOutcome::Failed && self.store_retry_applies(&op) {
            self.notify(Notice::StoreRetrying { op: op.clone() });
            self.arm(
                now,
                op.vm(),
                op.epoch(),
                TimerKind::StoreRetry,
                self.config.store_retry.get(),
            );
            return;
        }
        match op {
            StoreOp::BeginMigrateOut { vm, epoch, .. } => self.on_begun(now, vm, epoch, outcome),
            StoreOp::CommitMigrateOut { vm, epoch } => self.on_committed(now, vm, epoch, outcome),
            StoreOp::AbortMigrateOut { vm, epoch } => self.on_aborted(vm, epoch, outcome),
            StoreOp::ForgetTransfer { vm, epoch } => self.on_forgotten(vm, epoch),
            StoreOp::AcceptIncoming { vm, epoch, .. } => self.on_accepted(vm, epoch, outcome),
            StoreOp::PromoteIncoming { vm, epoch } => self.on_promoted(vm, epoch, outcome),
            StoreOp::DropIncoming { vm, epoch } => self.on_dropped(vm, epoch, outcome),
        }
    }

    /// The result of a driver effect.
    pub fn handle_driver(&mut self, now: ClockMs, reply: DriverReply) {
        let DriverReply { vm, epoch, outcome } = reply;
        let _span = tracing::debug_span!("handoff", vm = %vm, epoch).entered();
        match outcome {
            DriverOutcome::Prepared(target) => self.on_prepare_done(now, vm, epoch, Ok(target)),
            DriverOutcome::PrepareFailed { no_room } => {
                self.on_prepare_done(now, vm, epoch, Err(no_room))
            }
            DriverOutcome::Migrated => self.on_migrated(vm, epoch, true),
            DriverOutcome::MigrateFailed => self.on_migrated(vm, epoch, false),
            DriverOutcome::Status(status) => self.on_status(vm, epoch, Some(status)),
            DriverOutcome::StatusUnknown => self.on_status(vm, epoch, None),
            DriverOutcome::Complete(complete) => self.on_complete(vm, epoch, complete),
            DriverOutcome::Finished { call, ok } => self.on_finished(now, vm, epoch, call, ok),
            DriverOutcome::SwitchedOver => self.on_switched_over(vm, epoch),
        }
    }

    /// A timer armed earlier has come due. A timer whose step has passed does nothing.
    pub fn handle_timer(&mut self, now: ClockMs, timer: Timer) {
        let Timer { vm, epoch, kind } = timer;
        let _span = tracing::debug_span!("handoff", vm = %vm, epoch).entered();
        match kind {
            TimerKind::PrepareRetry => self.on_prepare_retry(now, vm, epoch),
            TimerKind::PrepareDeadline => self.on_prepare_deadline(vm, epoch),
            TimerKind::MigrateDeadline => self.on_migrate_deadline(vm, epoch),
            TimerKind::CommitRetry => self.on_commit_retry(now, vm, epoch),
            TimerKind::Query => self.on_query_timer(now, vm, epoch),
            TimerKind::StoreRetry => self.on_store_retry(vm, epoch),
            TimerKind::CancelRetry => self.on_cancel_retry(vm, epoch),
        }
    }

    // ----- effect helpers -----

    fn push(&mut self, effect: Effect) {
        self.effects.push_back(effect);
    }

    fn send(&mut self, to: &NodeId, msg: HandoffMsg) {
        self.push(Effect::Send {
            to: to.clone(),
            msg,
        });
    }

    fn store(&mut self, op: StoreOp) {
        self.push(Effect::Store(op));
    }

    fn call(&mut self, vm: &VmId, epoch: u64, action: DriverAction) {
        self.push(Effect::Driver(DriverCall {
            vm: vm.clone(),
            epoch,
            action,
        }));
    }

    fn arm(&mut self, now: ClockMs, vm: &VmId, epoch: u64, kind: TimerKind, after_ms: u64) {
        let timer = Timer {
            vm: vm.clone(),
            epoch,
            kind,
        };
        self.push(Effect::ArmTimer {
            timer,
            at: now.saturating_add(after_ms),
        });
    }

    fn notify(&mut self, notice: Notice) {
        tracing::debug!(?notice, "handoff notice");
        self.push(Effect::Notify(notice));
    }

    fn ignore(&mut self, vm: &VmId, epoch: u64, input: &'static str, reason: IgnoreReason) {
        self.notify(Notice::Ignored {
            vm: vm.clone(),
            epoch,
            input,
            reason,
        });
    }

    /// The active handoff of `vm` under `epoch`, if any.
    fn active_at(&mut self, vm: &VmId, epoch: u64) -> Option<&mut Handoff> {
        self.active.get_mut(vm).filter(|h| h.epoch == epoch)
    }

    /// Whether a failed `op` is retried (everything but the first step of either side,
    /// which is simply given up: nothing changed).
    fn store_retry_applies(&self, op: &StoreOp) -> bool {
        !matches!(
            op,
            StoreOp::BeginMigrateOut { .. } | StoreOp::AcceptIncoming { .. }
        )
    }

    fn on_store_retry(&mut self, vm: VmId, epoch: u64) {
        let op = match self.active.get(&vm).filter(|h| h.epoch == epoch) {
            Some(h) => h.phase.store_op(&vm, &h.peer, epoch),
            None => match self.settling.get(&(vm.clone(), epoch)) {
                Some(s) if matches!(s.step, state::SettleStep::Forgetting { .. }) => {
                    Some(StoreOp::ForgetTransfer {
                        vm: vm.clone(),
                        epoch,
                    })
                }
                _ => None,
            },
        };
        match op {
            Some(op) => self.store(op),
            None => self.ignore(&vm, epoch, "store_retry_timer", IgnoreReason::WrongStep),
        }
    }

    /// Forgets `vm`'s handoff after the store refused a step the machine expected.
    fn anomaly(&mut self, op: StoreOp) {
        tracing::warn!(op = op.name(), vm = %op.vm(), epoch = op.epoch(), "store refused an expected handoff step");
        self.active.remove(op.vm());
        self.notify(Notice::Anomaly { op });
    }
}
