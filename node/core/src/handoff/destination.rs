//! The destination side (B): accept, prepare a paused copy, wait; promote on `Commit`,
//! drop on `Abort`. B never decides on a timeout: while it waits it asks A
//! (`QueryOutcome`); only an operator's forget of A lets it decide alone (`recovery`).

use super::state::{AfterPrepare, Handoff, Phase};
#[cfg(feature = "planted-bugs")]
use super::PlantedBug;
use super::{
    AbortReason, CallKind, ClockMs, DriverAction, HandoffMsg, Handoffs, IgnoreReason, Notice,
    Payload, RefuseReason, Role, StoreOp, StoreOutcome, StoreRefusal, TimerKind,
};
use crate::hypervisor::MigrationTarget;
use crate::types::{NodeId, VmId};

impl Handoffs {
    pub(super) fn on_prepare(
        &mut self,
        _now: ClockMs,
        from: &NodeId,
        vm: VmId,
        epoch: u64,
        payload: Payload,
    ) {
        if let Some(h) = self.active.get_mut(&vm) {
            if h.epoch != epoch || &h.peer != from || h.phase.role() != Role::Destination {
                let reason = if epoch < h.epoch {
                    RefuseReason::StaleEpoch
                } else {
                    RefuseReason::Busy
                };
                return self.refuse(from, vm, epoch, reason);
            }
            match &h.phase {
                Phase::Waiting {
                    target: Some(target),
                    ..
                } => {
                    // A duplicate: answer again, idempotently.
                    let target = target.clone();
                    self.send(from, HandoffMsg::Prepared { vm, epoch, target });
                }
                Phase::Waiting { target: None, .. } => {
                    // Recovered (or a failed prepare): prepare again; the driver call is
                    // idempotent and returns the same target for an existing copy.
                    h.phase = Phase::PreparingIncoming {
                        payload: payload.clone(),
                        then: AfterPrepare::Answer,
                    };
                    self.call(&vm, epoch, DriverAction::PrepareIncoming { payload });
                }
                _ => self.ignore(&vm, epoch, "prepare", IgnoreReason::WrongStep),
            }
            return;
        }
        if self.is_busy(&vm)
            || self.active.len() >= self.config.handoffs_max
            || self.count_role(Role::Destination) >= self.config.incoming_max
            || !self.bytes_fit(payload.mem_bytes())
        {
            return self.refuse(from, vm, epoch, RefuseReason::Busy);
        }
        self.active.insert(
            vm.clone(),
            Handoff {
                peer: from.clone(),
                epoch,
                phase: Phase::Accepting {
                    payload: payload.clone(),
                },
                mem_bytes: payload.mem_bytes(),
            },
        );
        self.store(StoreOp::AcceptIncoming {
            vm,
            from: from.clone(),
            epoch,
            payload,
        });
    }

    fn refuse(&mut self, to: &NodeId, vm: VmId, epoch: u64, reason: RefuseReason) {
        self.send(to, HandoffMsg::PrepareRefused { vm, epoch, reason });
    }

    pub(super) fn on_accepted(&mut self, vm: VmId, epoch: u64, outcome: StoreOutcome) {
        let Some(h) = self.active_at(&vm, epoch) else {
            return self.ignore(&vm, epoch, "accept_incoming", IgnoreReason::Unknown);
        };
        let Phase::Accepting { payload } = &h.phase else {
            return self.ignore(&vm, epoch, "accept_incoming", IgnoreReason::WrongStep);
        };
        let payload = payload.clone();
        let peer = h.peer.clone();
        let reason = match outcome {
            StoreOutcome::Done => {
                h.phase = Phase::PreparingIncoming {
                    payload: payload.clone(),
                    then: AfterPrepare::Answer,
                };
                return self.call(&vm, epoch, DriverAction::PrepareIncoming { payload });
            }
            StoreOutcome::Refused(StoreRefusal::StaleEpoch) => RefuseReason::StaleEpoch,
            StoreOutcome::Refused(StoreRefusal::WrongState) => RefuseReason::Busy,
            StoreOutcome::Refused(StoreRefusal::BreaksRule) => RefuseReason::BreaksRule,
            StoreOutcome::Failed => RefuseReason::Failed,
        };
        self.active.remove(&vm);
        self.refuse(&peer, vm, epoch, reason);
    }

    pub(super) fn on_prepare_done(
        &mut self,
        now: ClockMs,
        vm: VmId,
        epoch: u64,
        result: Result<MigrationTarget, bool>,
    ) {
        let Some(h) = self.active_at(&vm, epoch) else {
            return self.ignore(&vm, epoch, "prepare_incoming", IgnoreReason::Unknown);
        };
        let Phase::PreparingIncoming { payload, then } = &h.phase else {
            return self.ignore(&vm, epoch, "prepare_incoming", IgnoreReason::WrongStep);
        };
        let (payload, then, peer) = (payload.clone(), *then, h.peer.clone());
        match then {
            AfterPrepare::Abort => {
                return self.abort_destination(vm, epoch, AbortReason::SourceAborted)
            }
            AfterPrepare::CheckComplete => {
                h.phase = Phase::CheckingComplete;
                return self.call(&vm, epoch, DriverAction::IncomingComplete);
            }
            AfterPrepare::Answer => {}
        }
        let target = result.as_ref().ok().cloned();
        h.phase = Phase::Waiting {
            payload: Some(payload),
            target: target.clone(),
        };
        let msg = match result {
            Ok(target) => HandoffMsg::Prepared {
                vm: vm.clone(),
                epoch,
                target,
            },
            Err(no_room) => HandoffMsg::PrepareRefused {
                vm: vm.clone(),
                epoch,
                reason: if no_room {
                    RefuseReason::NoRoom
                } else {
                    RefuseReason::Failed
                },
            },
        };
        self.send(&peer, msg);
        let interval = self.config.query_interval.get();
        self.arm(now, &vm, epoch, TimerKind::Query, interval);
    }

    /// `Commit` (or `Outcome::Committed`) from A. Without a matching unresolved handoff
    /// the VM was promoted before (A only commits after B accepted, and B drops only when
    /// A aborted), so the answer is an idempotent `CommitAck`.
    pub(super) fn on_commit(
        &mut self,
        _now: ClockMs,
        from: &NodeId,
        vm: VmId,
        epoch: u64,
        input: &'static str,
    ) {
        let Some(h) = self
            .active_at(&vm, epoch)
            .filter(|h| &h.peer == from && h.phase.role() == Role::Destination)
        else {
            return self.send(from, HandoffMsg::CommitAck { vm, epoch });
        };
        match h.phase {
            Phase::Waiting { .. } | Phase::PreparingIncoming { .. } | Phase::CheckingComplete => {
                self.promote(vm, epoch)
            }
            Phase::CancellingIncoming { .. } | Phase::Dropping { .. } => {
                self.ignore(&vm, epoch, input, IgnoreReason::Conflict)
            }
            _ => self.ignore(&vm, epoch, input, IgnoreReason::WrongStep),
        }
    }

    /// Promotes: `promote_incoming`, then (once durable) resume and ack.
    pub(super) fn promote(&mut self, vm: VmId, epoch: u64) {
        #[cfg(feature = "planted-bugs")]
        let bug = self.config.planted_bug;
        let Some(h) = self.active_at(&vm, epoch) else {
            return;
        };
        h.phase = Phase::Promoting;
        #[cfg(feature = "planted-bugs")]
        if bug == PlantedBug::AckBeforeDurable {
            let peer = h.peer.clone();
            self.send(
                &peer,
                HandoffMsg::CommitAck {
                    vm: vm.clone(),
                    epoch,
                },
            );
        }
        self.store(StoreOp::PromoteIncoming { vm, epoch });
    }

    pub(super) fn on_promoted(&mut self, vm: VmId, epoch: u64, outcome: StoreOutcome) {
        let Some(h) = self.active_at(&vm, epoch) else {
            return self.ignore(&vm, epoch, "promote_incoming", IgnoreReason::Unknown);
        };
        if h.phase != Phase::Promoting {
            return self.ignore(&vm, epoch, "promote_incoming", IgnoreReason::WrongStep);
        }
        if outcome != StoreOutcome::Done {
            return self.anomaly(StoreOp::PromoteIncoming { vm, epoch });
        }
        let peer = h.peer.clone();
        self.active.remove(&vm);
        self.resuming.insert(vm.clone());
        self.call(&vm, epoch, DriverAction::ResumeIncoming);
        self.send(
            &peer,
            HandoffMsg::CommitAck {
                vm: vm.clone(),
                epoch,
            },
        );
        self.notify(Notice::Committed {
            vm,
            epoch,
            peer,
            role: Role::Destination,
        });
    }

    /// `Abort` (or `Outcome::Aborted`) from A.
    pub(super) fn on_abort(&mut self, from: &NodeId, vm: VmId, epoch: u64, input: &'static str) {
        let Some(h) = self
            .active_at(&vm, epoch)
            .filter(|h| &h.peer == from && h.phase.role() == Role::Destination)
        else {
            return self.ignore(&vm, epoch, input, IgnoreReason::Unknown);
        };
        match &mut h.phase {
            Phase::Waiting { .. } => self.abort_destination(vm, epoch, AbortReason::SourceAborted),
            Phase::PreparingIncoming { then, .. } => {
                if *then == AfterPrepare::Answer {
                    *then = AfterPrepare::Abort;
                }
            }
            Phase::Promoting => self.ignore(&vm, epoch, input, IgnoreReason::Conflict),
            _ => self.ignore(&vm, epoch, input, IgnoreReason::WrongStep),
        }
    }

    /// Drops the incoming copy, then (once the driver returned) the `Incoming` entry.
    pub(super) fn abort_destination(&mut self, vm: VmId, epoch: u64, reason: AbortReason) {
        let Some(h) = self.active_at(&vm, epoch) else {
            return;
        };
        h.phase = Phase::CancellingIncoming { reason };
        self.call(&vm, epoch, DriverAction::CancelIncoming);
    }

    pub(super) fn on_cancelled_incoming(&mut self, vm: VmId, epoch: u64, ok: bool) {
        let Some(h) = self.active_at(&vm, epoch) else {
            return self.ignore(&vm, epoch, "cancel_incoming", IgnoreReason::Unknown);
        };
        let Phase::CancellingIncoming { reason } = h.phase else {
            return self.ignore(&vm, epoch, "cancel_incoming", IgnoreReason::WrongStep);
        };
        h.phase = Phase::Dropping { reason };
        if !ok {
            self.notify(Notice::DriverTrouble {
                vm: vm.clone(),
                epoch,
                call: CallKind::CancelIncoming,
            });
        }
        self.store(StoreOp::DropIncoming { vm, epoch });
    }

    pub(super) fn on_dropped(&mut self, vm: VmId, epoch: u64, outcome: StoreOutcome) {
        let Some(h) = self.active_at(&vm, epoch) else {
            return self.ignore(&vm, epoch, "drop_incoming", IgnoreReason::Unknown);
        };
        let Phase::Dropping { reason } = h.phase else {
            return self.ignore(&vm, epoch, "drop_incoming", IgnoreReason::WrongStep);
        };
        if outcome != StoreOutcome::Done {
            return self.anomaly(StoreOp::DropIncoming { vm, epoch });
        }
        let peer = h.peer.clone();
        self.active.remove(&vm);
        self.notify(Notice::Aborted {
            vm,
            epoch,
            peer,
            role: Role::Destination,
            reason,
        });
    }

    /// B's periodic question while it waits. (With `PlantedBug::PromoteOnTimeout` B
    /// wrongly decides alone instead.)
    pub(super) fn on_query_timer(&mut self, now: ClockMs, vm: VmId, epoch: u64) {
        #[cfg(feature = "planted-bugs")]
        let bug = self.config.planted_bug;
        let Some(h) = self.active_at(&vm, epoch) else {
            return;
        };
        if !matches!(h.phase, Phase::Waiting { .. }) {
            return;
        }
        #[cfg(feature = "planted-bugs")]
        if bug == PlantedBug::PromoteOnTimeout {
            return self.promote(vm, epoch);
        }
        let peer = h.peer.clone();
        self.send(
            &peer,
            HandoffMsg::QueryOutcome {
                vm: vm.clone(),
                epoch,
            },
        );
        let interval = self.config.query_interval.get();
        self.arm(now, &vm, epoch, TimerKind::Query, interval);
    }

    pub(super) fn on_complete(&mut self, vm: VmId, epoch: u64, complete: bool) {
        let Some(h) = self.active_at(&vm, epoch) else {
            return self.ignore(&vm, epoch, "incoming_complete", IgnoreReason::Unknown);
        };
        if h.phase != Phase::CheckingComplete {
            return self.ignore(&vm, epoch, "incoming_complete", IgnoreReason::WrongStep);
        }
        if complete {
            self.promote(vm, epoch);
        } else {
            self.abort_destination(vm, epoch, AbortReason::PeerForgotten);
        }
    }

    /// Results of the driver calls without a value, dispatched by kind.
    pub(super) fn on_finished(
        &mut self,
        now: ClockMs,
        vm: VmId,
        epoch: u64,
        call: CallKind,
        ok: bool,
    ) {
        match call {
            CallKind::CancelOutgoing => self.on_cancelled_outgoing(now, vm, epoch, ok),
            CallKind::FinishOutgoing => self.on_finished_outgoing(vm, epoch, ok),
            CallKind::CancelIncoming => self.on_cancelled_incoming(vm, epoch, ok),
            CallKind::ResumeIncoming => {
                // Movable again either way; a copy that did not resume is the agent's
                // reconciliation's to resume (its entry is `Running`).
                self.resuming.remove(&vm);
                if !ok {
                    self.notify(Notice::DriverTrouble { vm, epoch, call });
                }
            }
            _ => self.ignore(&vm, epoch, "driver", IgnoreReason::WrongStep),
        }
    }
}
