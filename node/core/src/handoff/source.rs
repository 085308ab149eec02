//! The source side (A): begin, prepare, migrate, commit point, settle; abort before the
//! commit point. A coordinates: its durable commit (or abort) is the outcome.

use super::state::{Handoff, Phase, SettleStep, Settling};
use super::{
    AbortReason, CallKind, ClockMs, DriverAction, HandoffMsg, Handoffs, IgnoreReason, Notice,
    Outcome, Payload, RefuseReason, Role, SourceCopy, StartError, StoreOp, StoreOutcome, TimerKind,
};
use crate::hypervisor::MigrationTarget;
use crate::types::{NodeId, ScheduleEntry, VmId, VmState};

impl Handoffs {
    /// Starts moving the VM of `entry` (which must be `Running` here) to `to`.
    /// `highest_epoch` is the store's `highest_epoch(vm)`; the move's epoch is
    /// `max(entry.epoch, highest_epoch) + 1`, which is returned. Queues
    /// `begin_migrate_out`; the move goes on when its result comes back.
    pub fn start_move(
        &mut self,
        now: ClockMs,
        entry: &ScheduleEntry,
        to: NodeId,
        highest_epoch: u64,
    ) -> Result<u64, StartError> {
        let vm = &entry.vm;
        if entry.state != VmState::Running {
            return Err(StartError::NotRunning(vm.clone()));
        }
        if to == self.me {
            return Err(StartError::SelfTarget {
                vm: vm.clone(),
                node: to,
            });
        }
        if self.is_busy(vm) {
            return Err(StartError::Busy(vm.clone()));
        }
        if self.active.len() >= self.config.handoffs_max {
            return Err(StartError::TooMany(self.active.len()));
        }
        let outgoing = self.count_role(Role::Source);
        if outgoing >= self.config.outgoing_max {
            return Err(StartError::OutgoingLimit(outgoing));
        }
        let payload = Payload::of_entry(entry);
        let mem_bytes = payload.mem_bytes();
        if !self.bytes_fit(mem_bytes) {
            return Err(StartError::BytesLimit(self.bytes_in_flight()));
        }
        let epoch = entry.epoch.max(highest_epoch).saturating_add(1);
        let _ = now;
        tracing::debug!(vm = %vm, to = %to, epoch, "starting move");
        self.active.insert(
            vm.clone(),
            Handoff {
                peer: to.clone(),
                epoch,
                phase: Phase::Beginning { payload },
                mem_bytes,
            },
        );
        self.store(StoreOp::BeginMigrateOut {
            vm: vm.clone(),
            to,
            epoch,
        });
        Ok(epoch)
    }

    pub(super) fn on_begun(&mut self, now: ClockMs, vm: VmId, epoch: u64, outcome: StoreOutcome) {
        let Some(h) = self.active_at(&vm, epoch) else {
            return self.ignore(&vm, epoch, "begin_migrate_out", IgnoreReason::Unknown);
        };
        let Phase::Beginning { payload } = &h.phase else {
            return self.ignore(&vm, epoch, "begin_migrate_out", IgnoreReason::WrongStep);
        };
        let payload = payload.clone();
        let peer = h.peer.clone();
        if outcome != StoreOutcome::Done {
            self.active.remove(&vm);
            return self.notify(Notice::Aborted {
                vm,
                epoch,
                peer,
                role: Role::Source,
                reason: AbortReason::StoreRefused,
            });
        }
        h.phase = Phase::Preparing {
            payload: payload.clone(),
        };
        self.send(
            &peer,
            HandoffMsg::Prepare {
                vm: vm.clone(),
                epoch,
                payload,
            },
        );
        let (retry, deadline) = (
            self.config.prepare_retry.get(),
            self.config.prepare_timeout.get(),
        );
        self.arm(now, &vm, epoch, TimerKind::PrepareRetry, retry);
        self.arm(now, &vm, epoch, TimerKind::PrepareDeadline, deadline);
    }

    pub(super) fn on_prepare_retry(&mut self, now: ClockMs, vm: VmId, epoch: u64) {
        let Some(Handoff {
            peer,
            phase: Phase::Preparing { payload },
            ..
        }) = self.active_at(&vm, epoch)
        else {
            return;
        };
        let msg = HandoffMsg::Prepare {
            vm: vm.clone(),
            epoch,
            payload: payload.clone(),
        };
        let peer = peer.clone();
        self.send(&peer, msg);
        let retry = self.config.prepare_retry.get();
        self.arm(now, &vm, epoch, TimerKind::PrepareRetry, retry);
    }

    pub(super) fn on_prepare_deadline(&mut self, vm: VmId, epoch: u64) {
        if let Some(h) = self.active_at(&vm, epoch) {
            if matches!(h.phase, Phase::Preparing { .. }) {
                self.abort_source(vm, epoch, AbortReason::PrepareTimeout, false);
            }
        }
    }

    pub(super) fn on_prepared(
        &mut self,
        now: ClockMs,
        from: &NodeId,
        vm: VmId,
        epoch: u64,
        target: MigrationTarget,
    ) {
        let Some(h) = self.active_at(&vm, epoch).filter(|h| &h.peer == from) else {
            return self.ignore(&vm, epoch, "prepared", IgnoreReason::Unknown);
        };
        if !matches!(h.phase, Phase::Preparing { .. }) {
            return self.ignore(&vm, epoch, "prepared", IgnoreReason::WrongStep);
        }
        h.phase = Phase::Migrating;
        self.call(&vm, epoch, DriverAction::MigrateOut { target });
        let deadline = self.config.migrate_timeout.get();
        self.arm(now, &vm, epoch, TimerKind::MigrateDeadline, deadline);
    }

    pub(super) fn on_refused(&mut self, from: &NodeId, vm: VmId, epoch: u64, reason: RefuseReason) {
        let Some(h) = self.active_at(&vm, epoch).filter(|h| &h.peer == from) else {
            return self.ignore(&vm, epoch, "prepare_refused", IgnoreReason::Unknown);
        };
        if !matches!(h.phase, Phase::Preparing { .. }) {
            return self.ignore(&vm, epoch, "prepare_refused", IgnoreReason::WrongStep);
        }
        self.abort_source(vm, epoch, AbortReason::Refused(reason), false);
    }

    pub(super) fn on_migrated(&mut self, vm: VmId, epoch: u64, ok: bool) {
        let Some(h) = self.active_at(&vm, epoch) else {
            return self.ignore(&vm, epoch, "migrate_out", IgnoreReason::Unknown);
        };
        if h.phase != Phase::Migrating {
            return self.ignore(&vm, epoch, "migrate_out", IgnoreReason::WrongStep);
        }
        if ok {
            h.phase = Phase::Committing;
            self.store(StoreOp::CommitMigrateOut { vm, epoch });
        } else {
            self.abort_source(vm, epoch, AbortReason::MigrateFailed, true);
        }
    }

    pub(super) fn on_migrate_deadline(&mut self, vm: VmId, epoch: u64) {
        if let Some(h) = self.active_at(&vm, epoch) {
            if h.phase == Phase::Migrating {
                self.abort_source(vm, epoch, AbortReason::MigrateTimeout, true);
            }
        }
    }

    /// Aborts before the commit point: `cancel_outgoing` first when a migration may have
    /// started (a crash between the two then finds no completed migration), then
    /// `abort_migrate_out`; `Abort` goes to B only once that is durable.
    pub(super) fn abort_source(&mut self, vm: VmId, epoch: u64, reason: AbortReason, cancel: bool) {
        let Some(h) = self.active_at(&vm, epoch) else {
            return;
        };
        if cancel {
            h.phase = Phase::Cancelling { reason };
            self.call(&vm, epoch, DriverAction::CancelOutgoing);
        } else {
            h.phase = Phase::Aborting { reason };
            self.store(StoreOp::AbortMigrateOut { vm, epoch });
        }
    }

    pub(super) fn on_cancelled_outgoing(&mut self, now: ClockMs, vm: VmId, epoch: u64, ok: bool) {
        let ends_source = self.config.source_copy == SourceCopy::Ended;
        let Some(h) = self.active_at(&vm, epoch) else {
            return self.ignore(&vm, epoch, "cancel_outgoing", IgnoreReason::Unknown);
        };
        let Phase::Cancelling { reason } = h.phase else {
            return self.ignore(&vm, epoch, "cancel_outgoing", IgnoreReason::WrongStep);
        };
        if !ok {
            self.notify(Notice::DriverTrouble {
                vm: vm.clone(),
                epoch,
                call: CallKind::CancelOutgoing,
            });
            if ends_source && !self.bug_aborts_after_switchover() {
                // The switchover may have ended the source copy: aborting now could
                // leave B to drop the only copy. Ask the driver again.
                let retry = self.config.store_retry.get();
                return self.arm(now, &vm, epoch, TimerKind::CancelRetry, retry);
            }
        }
        let Some(h) = self.active_at(&vm, epoch) else {
            return;
        };
        h.phase = Phase::Aborting { reason };
        self.store(StoreOp::AbortMigrateOut { vm, epoch });
    }

    /// Whether the planted bug `AbortAfterSwitchover` is on (never without the
    /// `planted-bugs` feature).
    fn bug_aborts_after_switchover(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        return self.config.planted_bug == super::PlantedBug::AbortAfterSwitchover;
        #[cfg(not(feature = "planted-bugs"))]
        false
    }

    pub(super) fn on_cancel_retry(&mut self, vm: VmId, epoch: u64) {
        if let Some(h) = self.active_at(&vm, epoch) {
            if matches!(h.phase, Phase::Cancelling { .. }) {
                self.call(&vm, epoch, DriverAction::CancelOutgoing);
            }
        }
    }

    /// `cancel_outgoing` found the switchover complete and the source copy ended by the
    /// hypervisor: the paused destination holds the only copy, so the move rolls forward
    /// to the commit point instead of aborting.
    pub(super) fn on_switched_over(&mut self, vm: VmId, epoch: u64) {
        let planted_abort = self.bug_aborts_after_switchover();
        let Some(h) = self.active_at(&vm, epoch) else {
            return self.ignore(&vm, epoch, "cancel_outgoing", IgnoreReason::Unknown);
        };
        if !matches!(h.phase, Phase::Cancelling { .. }) {
            return self.ignore(&vm, epoch, "cancel_outgoing", IgnoreReason::WrongStep);
        }
        if planted_abort {
            h.phase = Phase::Aborting {
                reason: AbortReason::MigrateFailed,
            };
            return self.store(StoreOp::AbortMigrateOut { vm, epoch });
        }
        tracing::info!(vm = %vm, epoch, "cancel came after the switchover: rolling forward");
        h.phase = Phase::Committing;
        self.store(StoreOp::CommitMigrateOut { vm, epoch });
    }

    pub(super) fn on_aborted(&mut self, vm: VmId, epoch: u64, outcome: StoreOutcome) {
        let Some(h) = self.active_at(&vm, epoch) else {
            return self.ignore(&vm, epoch, "abort_migrate_out", IgnoreReason::Unknown);
        };
        let Phase::Aborting { reason } = h.phase else {
            return self.ignore(&vm, epoch, "abort_migrate_out", IgnoreReason::WrongStep);
        };
        if outcome != StoreOutcome::Done {
            return self.anomaly(StoreOp::AbortMigrateOut { vm, epoch });
        }
        let peer = h.peer.clone();
        self.active.remove(&vm);
        self.send(
            &peer,
            HandoffMsg::Abort {
                vm: vm.clone(),
                epoch,
            },
        );
        self.notify(Notice::Aborted {
            vm,
            epoch,
            peer,
            role: Role::Source,
            reason,
        });
    }

    /// The commit point is durable: from now on the VM is B's, and A re-sends `Commit`
    /// (bounded interval, unbounded count) until `CommitAck`.
    pub(super) fn on_committed(
        &mut self,
        now: ClockMs,
        vm: VmId,
        epoch: u64,
        outcome: StoreOutcome,
    ) {
        let Some(h) = self.active_at(&vm, epoch) else {
            return self.ignore(&vm, epoch, "commit_migrate_out", IgnoreReason::Unknown);
        };
        if h.phase != Phase::Committing {
            return self.ignore(&vm, epoch, "commit_migrate_out", IgnoreReason::WrongStep);
        }
        if outcome != StoreOutcome::Done {
            return self.anomaly(StoreOp::CommitMigrateOut { vm, epoch });
        }
        let peer = h.peer.clone();
        self.active.remove(&vm);
        self.notify(Notice::Committed {
            vm: vm.clone(),
            epoch,
            peer: peer.clone(),
            role: Role::Source,
        });
        self.begin_settling(now, vm, epoch, peer);
    }

    /// Records a settling source handoff and sends the first `Commit`.
    pub(super) fn begin_settling(&mut self, now: ClockMs, vm: VmId, epoch: u64, peer: NodeId) {
        self.send(
            &peer,
            HandoffMsg::Commit {
                vm: vm.clone(),
                epoch,
            },
        );
        let retry = self.config.commit_retry.get();
        self.arm(now, &vm, epoch, TimerKind::CommitRetry, retry);
        self.settling.insert(
            (vm, epoch),
            Settling {
                peer,
                step: SettleStep::AwaitAck,
            },
        );
    }

    pub(super) fn on_commit_retry(&mut self, now: ClockMs, vm: VmId, epoch: u64) {
        let Some(s) = self.settling.get(&(vm.clone(), epoch)) else {
            return;
        };
        if s.step != SettleStep::AwaitAck {
            return;
        }
        let peer = s.peer.clone();
        self.send(
            &peer,
            HandoffMsg::Commit {
                vm: vm.clone(),
                epoch,
            },
        );
        let retry = self.config.commit_retry.get();
        self.arm(now, &vm, epoch, TimerKind::CommitRetry, retry);
    }

    pub(super) fn on_commit_ack(&mut self, from: &NodeId, vm: VmId, epoch: u64) {
        let key = (vm.clone(), epoch);
        let Some(s) = self.settling.get_mut(&key).filter(|s| &s.peer == from) else {
            return self.ignore(&vm, epoch, "commit_ack", IgnoreReason::Unknown);
        };
        if s.step != SettleStep::AwaitAck {
            return self.ignore(&vm, epoch, "commit_ack", IgnoreReason::WrongStep);
        }
        s.step = SettleStep::Finishing;
        self.call(&vm, epoch, DriverAction::FinishOutgoing);
    }

    pub(super) fn on_finished_outgoing(&mut self, vm: VmId, epoch: u64, ok: bool) {
        let key = (vm.clone(), epoch);
        let Some(s) = self.settling.get_mut(&key) else {
            return self.ignore(&vm, epoch, "finish_outgoing", IgnoreReason::Unknown);
        };
        if s.step != SettleStep::Finishing {
            return self.ignore(&vm, epoch, "finish_outgoing", IgnoreReason::WrongStep);
        }
        s.step = SettleStep::Forgetting { orphaned: false };
        if !ok {
            self.notify(Notice::DriverTrouble {
                vm: vm.clone(),
                epoch,
                call: CallKind::FinishOutgoing,
            });
        }
        self.store(StoreOp::ForgetTransfer { vm, epoch });
    }

    /// `forget_transfer` is done (a refusal means it was already gone: done too).
    pub(super) fn on_forgotten(&mut self, vm: VmId, epoch: u64) {
        let key = (vm.clone(), epoch);
        let Some(s) = self.settling.get(&key) else {
            return self.ignore(&vm, epoch, "forget_transfer", IgnoreReason::Unknown);
        };
        let SettleStep::Forgetting { orphaned } = s.step else {
            return self.ignore(&vm, epoch, "forget_transfer", IgnoreReason::WrongStep);
        };
        let peer = s.peer.clone();
        self.settling.remove(&key);
        self.notify(if orphaned {
            Notice::Orphaned { vm, epoch, peer }
        } else {
            Notice::Settled { vm, epoch, peer }
        });
    }

    /// Answers B's `QueryOutcome` from what this node's store holds durably: a
    /// `Transferred` record at that epoch → `Committed`; the entry `MigratingOut` at that
    /// epoch → `Pending`; anything else → `Aborted`. The machine's records mirror the
    /// store: a handoff is in `settling` exactly while its record exists and in `active`
    /// (source side) exactly while the entry may be `MigratingOut`.
    pub(super) fn on_query(&mut self, from: &NodeId, vm: VmId, epoch: u64) {
        let committed = self
            .settling
            .get(&(vm.clone(), epoch))
            .is_some_and(|s| &s.peer == from);
        let pending = self
            .active
            .get(&vm)
            .is_some_and(|h| h.epoch == epoch && &h.peer == from && h.phase.role() == Role::Source);
        let outcome = if committed {
            Outcome::Committed
        } else if pending {
            Outcome::Pending
        } else {
            Outcome::Aborted
        };
        self.send(from, HandoffMsg::Outcome { vm, epoch, outcome });
    }
}
