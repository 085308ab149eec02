//! [`MemStore`]: an in-memory model of `ballast-store`'s handoff transitions, with the
//! same preconditions, idempotence and epoch rules. Everything in it counts as durable:
//! a simulated crash keeps it whole.

use crate::handoff::{ClockMs, Payload, StoreOp, StoreOutcome, StoreRefusal};
use crate::rules::{admit, Holdings, PlacementRules};
use crate::types::{NodeId, ScheduleEntry, Transferred, VmId, VmState};
use std::collections::BTreeMap;

/// A schedule entry's protocol state (mirrors `VmState`, which is not `Hash`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Held {
    /// This node runs the VM.
    Running,
    /// Moving out to node `to` under `epoch`.
    MigratingOut {
        /// The destination.
        to: NodeId,
        /// The epoch of the move.
        epoch: u64,
    },
    /// Coming in from node `from` under `epoch`.
    Incoming {
        /// The source.
        from: NodeId,
        /// The epoch of the move.
        epoch: u64,
    },
}

/// One schedule entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MemEntry {
    /// Protocol state.
    pub held: Held,
    /// The epoch under which the node holds the entry.
    pub epoch: u64,
    /// Spec and factors.
    pub payload: Payload,
    /// Time of the last move (the simulation's clock).
    pub last_moved: Option<ClockMs>,
}

/// The durable state of one simulated node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MemStore {
    entries: BTreeMap<VmId, MemEntry>,
    transfers: BTreeMap<(VmId, u64), NodeId>,
    highest: BTreeMap<VmId, u64>,
}

impl MemStore {
    /// Adds a VM running here under epoch 0 (an operator's `vm create`).
    pub fn create(&mut self, vm: VmId, payload: Payload) {
        self.highest.entry(vm.clone()).or_insert(0);
        self.entries.insert(
            vm,
            MemEntry {
                held: Held::Running,
                epoch: 0,
                payload,
                last_moved: None,
            },
        );
    }

    /// The VM's entry.
    pub fn entry(&self, vm: &VmId) -> Option<&MemEntry> {
        self.entries.get(vm)
    }

    /// Every entry.
    pub fn entry_map(&self) -> &BTreeMap<VmId, MemEntry> {
        &self.entries
    }

    /// Every transfer record, as (vm, epoch) → destination.
    pub fn transfer_map(&self) -> &BTreeMap<(VmId, u64), NodeId> {
        &self.transfers
    }

    /// The highest epoch seen for the VM (0 if none).
    pub fn highest_epoch(&self, vm: &VmId) -> u64 {
        self.highest.get(vm).copied().unwrap_or(0)
    }

    /// The entries as the real store lists them.
    pub fn entries(&self) -> Vec<ScheduleEntry> {
        self.entries
            .iter()
            .map(|(vm, e)| ScheduleEntry {
                vm: vm.clone(),
                spec: e.payload.spec.clone(),
                factors: e.payload.factors,
                state: match &e.held {
                    Held::Running => VmState::Running,
                    Held::MigratingOut { to, epoch } => VmState::MigratingOut {
                        to: to.clone(),
                        epoch: *epoch,
                    },
                    Held::Incoming { from, epoch } => VmState::Incoming {
                        from: from.clone(),
                        epoch: *epoch,
                    },
                },
                epoch: e.epoch,
                pinned: false,
                last_moved_unix_ms: e.last_moved,
            })
            .collect()
    }

    /// The transfer records as the real store lists them.
    pub fn transferred(&self) -> Vec<Transferred> {
        self.transfers
            .iter()
            .map(|((vm, epoch), to)| Transferred {
                vm: vm.clone(),
                to: to.clone(),
                epoch: *epoch,
            })
            .collect()
    }

    /// Sets a VM's placement rules (a simulated `vm set`).
    pub fn set_rules(&mut self, vm: &VmId, rules: PlacementRules) {
        if let Some(e) = self.entries.get_mut(vm) {
            *e.payload.spec.rules = rules;
        }
    }

    /// Whether `vm` with `payload` would break a hard rule here, as `ballast-store`
    /// checks it (simulated hosts have no tags).
    fn breaks_rule(&self, vm: &VmId, payload: &Payload) -> bool {
        let rules = &payload.spec.rules;
        let held = Holdings::of(
            &[],
            self.entries
                .iter()
                .map(|(v, e)| (v, &*e.payload.spec.rules)),
        );
        !rules.is_empty() && admit(vm, rules, &held).is_err()
    }

    fn see(&mut self, vm: &VmId, epoch: u64) {
        let h = self.highest.entry(vm.clone()).or_insert(0);
        *h = (*h).max(epoch);
    }

    /// Runs one transition, as `ballast-store` would.
    pub fn apply(&mut self, op: &StoreOp, now: ClockMs) -> StoreOutcome {
        use StoreOutcome::{Done, Refused};
        const WRONG: StoreOutcome = Refused(StoreRefusal::WrongState);
        const STALE: StoreOutcome = Refused(StoreRefusal::StaleEpoch);
        let highest = self.highest_epoch(op.vm());
        match op {
            StoreOp::BeginMigrateOut { vm, to, epoch } => match self.entries.get_mut(vm) {
                Some(e) if e.held == Held::Running && *epoch > highest.max(e.epoch) => {
                    e.held = Held::MigratingOut {
                        to: to.clone(),
                        epoch: *epoch,
                    };
                    self.see(vm, *epoch);
                    Done
                }
                Some(e)
                    if e.held
                        == (Held::MigratingOut {
                            to: to.clone(),
                            epoch: *epoch,
                        }) =>
                {
                    Done
                }
                Some(e) if e.held == Held::Running => STALE,
                _ => WRONG,
            },
            StoreOp::AbortMigrateOut { vm, epoch } => match self.entries.get_mut(vm) {
                Some(e) if matches!(&e.held, Held::MigratingOut { epoch: x, .. } if x == epoch) => {
                    e.held = Held::Running;
                    self.see(vm, *epoch);
                    Done
                }
                Some(e) if e.held == Held::Running && highest >= *epoch && e.epoch < *epoch => Done,
                _ => WRONG,
            },
            StoreOp::CommitMigrateOut { vm, epoch } => match self.entries.get(vm) {
                Some(MemEntry {
                    held: Held::MigratingOut { to, epoch: x },
                    ..
                }) if x == epoch => {
                    let to = to.clone();
                    self.entries.remove(vm);
                    self.transfers.insert((vm.clone(), *epoch), to);
                    self.see(vm, *epoch);
                    Done
                }
                _ if self.transfers.contains_key(&(vm.clone(), *epoch)) => Done,
                _ => WRONG,
            },
            StoreOp::ForgetTransfer { vm, epoch } => {
                self.transfers.remove(&(vm.clone(), *epoch));
                Done
            }
            StoreOp::AcceptIncoming {
                vm,
                from,
                epoch,
                payload,
            } => {
                let incoming = Held::Incoming {
                    from: from.clone(),
                    epoch: *epoch,
                };
                match self.entries.get(vm) {
                    Some(e) if e.held == incoming => Done,
                    _ if *epoch <= highest => STALE,
                    Some(_) => WRONG,
                    None if self.breaks_rule(vm, payload) => Refused(StoreRefusal::BreaksRule),
                    None => {
                        self.entries.insert(
                            vm.clone(),
                            MemEntry {
                                held: incoming,
                                epoch: *epoch,
                                payload: payload.clone(),
                                last_moved: None,
                            },
                        );
                        self.see(vm, *epoch);
                        Done
                    }
                }
            }
            StoreOp::PromoteIncoming { vm, epoch } => match self.entries.get_mut(vm) {
                Some(e) if matches!(&e.held, Held::Incoming { epoch: x, .. } if x == epoch) => {
                    e.held = Held::Running;
                    e.epoch = *epoch;
                    e.last_moved = Some(now);
                    Done
                }
                Some(e) if e.epoch == *epoch && !matches!(e.held, Held::Incoming { .. }) => Done,
                _ => WRONG,
            },
            StoreOp::DropIncoming { vm, epoch } => match self.entries.get(vm) {
                None => Done,
                Some(e) if matches!(&e.held, Held::Incoming { epoch: x, .. } if x == epoch) => {
                    self.entries.remove(vm);
                    Done
                }
                Some(_) => WRONG,
            },
        }
    }
}
