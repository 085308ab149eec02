//! Start-up recovery from the store's durable records, and the operator's `forget` of a
//! node that is gone for good.
//!
//! | store holds | action |
//! |---|---|
//! | `MigratingOut { to, epoch }` | ask the hypervisor `migration_status`: `Completed` → commit; anything else → `cancel_outgoing`, abort |
//! | `Transferred { to, epoch }` | re-send `Commit` until `CommitAck`, then finish and forget |
//! | `Incoming { from, epoch }` | ask `from` (`QueryOutcome`) now and periodically; never decide alone |

use super::state::{AfterPrepare, Handoff, Phase, SettleStep};
use super::{
    AbortReason, ClockMs, DriverAction, HandoffConfig, HandoffMsg, Handoffs, IgnoreReason, Payload,
    StoreOp, TimerKind,
};
use crate::hypervisor::MigrationStatus;
use crate::types::{NodeId, ScheduleEntry, Transferred, VmId, VmState};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

impl Handoffs {
    /// Builds the machine of node `me` from its store's records: every schedule entry
    /// (only `MigratingOut` and `Incoming` ones matter) and every `Transferred` record.
    /// Queues the recovery effects; drain them before any other input. A node with a
    /// fresh store passes empty lists.
    pub fn start(
        me: NodeId,
        config: HandoffConfig,
        now: ClockMs,
        entries: impl IntoIterator<Item = ScheduleEntry>,
        transferred: impl IntoIterator<Item = Transferred>,
    ) -> Self {
        let mut machine = Self {
            me,
            config,
            active: BTreeMap::new(),
            settling: BTreeMap::new(),
            resuming: BTreeSet::new(),
            effects: VecDeque::new(),
        };
        for entry in entries {
            machine.recover_entry(now, entry);
        }
        for record in transferred {
            tracing::info!(vm = %record.vm, to = %record.to, epoch = record.epoch, "recovering committed handoff");
            machine.begin_settling(now, record.vm, record.epoch, record.to);
        }
        machine
    }

    fn recover_entry(&mut self, now: ClockMs, entry: ScheduleEntry) {
        let payload = Payload::of_entry(&entry);
        let mem_bytes = payload.mem_bytes();
        let vm = entry.vm;
        match entry.state {
            VmState::Running => {}
            VmState::MigratingOut { to, epoch } => {
                tracing::info!(vm = %vm, to = %to, epoch, "recovering outgoing handoff");
                self.active.insert(
                    vm.clone(),
                    Handoff {
                        peer: to,
                        epoch,
                        phase: Phase::CheckingStatus,
                        mem_bytes,
                    },
                );
                self.call(&vm, epoch, DriverAction::MigrationStatus);
            }
            VmState::Incoming { from, epoch } => {
                tracing::info!(vm = %vm, from = %from, epoch, "recovering incoming handoff");
                self.send(
                    &from,
                    HandoffMsg::QueryOutcome {
                        vm: vm.clone(),
                        epoch,
                    },
                );
                let interval = self.config.query_interval.get();
                self.arm(now, &vm, epoch, TimerKind::Query, interval);
                self.active.insert(
                    vm,
                    Handoff {
                        peer: from,
                        epoch,
                        phase: Phase::Waiting {
                            payload: Some(payload),
                            target: None,
                        },
                        mem_bytes,
                    },
                );
            }
        }
    }

    /// Source recovery: what the hypervisor says about the migration decides.
    pub(super) fn on_status(&mut self, vm: VmId, epoch: u64, status: Option<MigrationStatus>) {
        let Some(h) = self.active_at(&vm, epoch) else {
            return self.ignore(&vm, epoch, "migration_status", IgnoreReason::Unknown);
        };
        if h.phase != Phase::CheckingStatus {
            return self.ignore(&vm, epoch, "migration_status", IgnoreReason::WrongStep);
        }
        if status == Some(MigrationStatus::Completed) {
            h.phase = Phase::Committing;
            self.store(StoreOp::CommitMigrateOut { vm, epoch });
        } else {
            self.abort_source(vm, epoch, AbortReason::Recovered(status), true);
        }
    }

    /// The operator says `node` is gone for good (`ballast node forget`). As destination
    /// of a move from `node`, decide alone: commit if the hypervisor holds the complete
    /// incoming VM, else abort. As source of a move to `node`, abort before the commit
    /// point; after it, forget the record without quitting the paused copy (the VM went
    /// with `node`; the copy is kept for the operator and reported as orphaned).
    pub fn handle_forget(&mut self, _now: ClockMs, node: &NodeId) {
        tracing::warn!(node = %node, "operator forgot node; resolving its handoffs alone");
        let vms: Vec<(VmId, u64)> = self
            .active
            .iter()
            .filter(|(_, h)| &h.peer == node)
            .map(|(vm, h)| (vm.clone(), h.epoch))
            .collect();
        for (vm, epoch) in vms {
            self.forget_active(vm, epoch);
        }
        let settling: Vec<(VmId, u64)> = self
            .settling
            .iter()
            .filter(|(_, s)| &s.peer == node && s.step == SettleStep::AwaitAck)
            .map(|(key, _)| key.clone())
            .collect();
        for (vm, epoch) in settling {
            if let Some(s) = self.settling.get_mut(&(vm.clone(), epoch)) {
                s.step = SettleStep::Forgetting { orphaned: true };
            }
            self.store(StoreOp::ForgetTransfer { vm, epoch });
        }
    }

    fn forget_active(&mut self, vm: VmId, epoch: u64) {
        let Some(h) = self.active_at(&vm, epoch) else {
            return;
        };
        match &mut h.phase {
            Phase::Preparing { .. } => {
                self.abort_source(vm, epoch, AbortReason::PeerForgotten, false)
            }
            Phase::Migrating => self.abort_source(vm, epoch, AbortReason::PeerForgotten, true),
            Phase::Waiting { .. } => {
                h.phase = Phase::CheckingComplete;
                self.call(&vm, epoch, DriverAction::IncomingComplete);
            }
            Phase::PreparingIncoming { then, .. } => *then = AfterPrepare::CheckComplete,
            // Other steps are already resolving (or wait for a store result).
            _ => {}
        }
    }
}
