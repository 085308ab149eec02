//! Shared test support: record builders, the operations the tests run, and a plain-map
//! model of the store's transition rules that the real store is compared against.
#![allow(dead_code)] // each test binary uses a part of this module

use ballast_store::{
    LoadFactors, NodeId, Outcome, ScheduleEntry, Store, StoreError, StoreSnapshot, Transferred,
    VmId, VmSpec, VmState,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The cluster every test store belongs to.
pub const CLUSTER: &str = "test-cluster";

/// The node every test store belongs to.
pub fn me() -> NodeId {
    NodeId::from("node-a")
}

/// A small spec, different per VM so that mix-ups show.
pub fn spec(vm: &str) -> VmSpec {
    VmSpec {
        vcpus: 2,
        memory_mib: 512,
        disks: vec![format!("/images/{vm}.qcow2")],
        ..VmSpec::default()
    }
}

/// A new `Running` entry.
pub fn running(vm: &str, epoch: u64) -> ScheduleEntry {
    ScheduleEntry {
        vm: VmId::from(vm),
        spec: spec(vm),
        factors: LoadFactors {
            cpu: 0.5,
            io: 1000.0,
            mem: 256.0 * 1024.0 * 1024.0,
        },
        state: VmState::Running,
        epoch,
        pinned: false,
        last_moved_unix_ms: None,
    }
}

/// An `Incoming` entry as a destination builds it from a `Prepare` message.
pub fn incoming(vm: &str, from: &str, epoch: u64) -> ScheduleEntry {
    ScheduleEntry {
        state: VmState::Incoming {
            from: NodeId::from(from),
            epoch,
        },
        ..running(vm, epoch)
    }
}

/// One call on the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// `create(running(vm, epoch))`
    Create { vm: String, epoch: u64 },
    /// `delete(vm)`
    Delete { vm: String },
    /// `begin_migrate_out(vm, to, epoch)`
    Begin { vm: String, to: String, epoch: u64 },
    /// `abort_migrate_out(vm, epoch)`
    Abort { vm: String, epoch: u64 },
    /// `commit_migrate_out(vm, epoch)`
    Commit { vm: String, epoch: u64 },
    /// `forget_transfer(vm, epoch)`
    Forget { vm: String, epoch: u64 },
    /// `accept_incoming(incoming(vm, from, epoch))`
    Accept {
        vm: String,
        from: String,
        epoch: u64,
    },
    /// `promote_incoming(vm, epoch, now)`
    Promote { vm: String, epoch: u64, now: u64 },
    /// `drop_incoming(vm, epoch)`
    Drop { vm: String, epoch: u64 },
    /// `set_pinned(vm, pinned)`
    Pin { vm: String, pinned: bool },
    /// `update_factors(&[(vm, cpu)])` (not flushed by the call)
    Factors { vm: String, cpu: u32 },
}

/// What a call did, with errors reduced to their kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Applied,
    Duplicate,
    Invalid,
    NotFound,
    AlreadyExists,
    WrongState,
    StaleEpoch,
    EpochMismatch,
}

fn verdict(result: Result<Outcome, StoreError>) -> Verdict {
    match result {
        Ok(Outcome::Applied) => Verdict::Applied,
        Ok(Outcome::Duplicate) => Verdict::Duplicate,
        Err(StoreError::InvalidInput { .. }) => Verdict::Invalid,
        Err(StoreError::NotFound { .. }) => Verdict::NotFound,
        Err(StoreError::AlreadyExists { .. }) => Verdict::AlreadyExists,
        Err(StoreError::WrongState { .. }) => Verdict::WrongState,
        Err(StoreError::StaleEpoch { .. }) => Verdict::StaleEpoch,
        Err(StoreError::EpochMismatch { .. }) => Verdict::EpochMismatch,
        Err(other) => panic!("store failed: {other}"),
    }
}

/// Runs `op` on the real store.
pub fn apply_store(store: &Store, op: &Op) -> Verdict {
    let vm_id = |vm: &str| VmId::from(vm);
    verdict(match op {
        Op::Create { vm, epoch } => store
            .create(&running(vm, *epoch))
            .map(|()| Outcome::Applied),
        Op::Delete { vm } => store.delete(&vm_id(vm)).map(|_| Outcome::Applied),
        Op::Begin { vm, to, epoch } => {
            store.begin_migrate_out(&vm_id(vm), &NodeId::from(to.as_str()), *epoch)
        }
        Op::Abort { vm, epoch } => store.abort_migrate_out(&vm_id(vm), *epoch),
        Op::Commit { vm, epoch } => store.commit_migrate_out(&vm_id(vm), *epoch).map(|(o, _)| o),
        Op::Forget { vm, epoch } => store.forget_transfer(&vm_id(vm), *epoch),
        Op::Accept { vm, from, epoch } => store.accept_incoming(&incoming(vm, from, *epoch)),
        Op::Promote { vm, epoch, now } => store.promote_incoming(&vm_id(vm), *epoch, *now),
        Op::Drop { vm, epoch } => store.drop_incoming(&vm_id(vm), *epoch),
        Op::Pin { vm, pinned } => store.set_pinned(&vm_id(vm), *pinned),
        Op::Factors { vm, cpu } => store
            .update_factors(&[(vm_id(vm), factors(*cpu))])
            .map(|n| {
                if n > 0 {
                    Outcome::Applied
                } else {
                    Outcome::Duplicate
                }
            }),
    })
}

/// The factors a `Factors` op writes.
pub fn factors(cpu: u32) -> LoadFactors {
    LoadFactors {
        cpu: f64::from(cpu),
        io: 1000.0,
        mem: 256.0 * 1024.0 * 1024.0,
    }
}

/// The store's rules, written as directly as possible over plain maps.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Model {
    pub entries: BTreeMap<String, ScheduleEntry>,
    pub transfers: BTreeMap<(String, u64), Transferred>,
    pub highest: BTreeMap<String, u64>,
}

impl Model {
    /// A model holding what a snapshot holds.
    pub fn from_snapshot(s: &StoreSnapshot) -> Model {
        Model {
            entries: s
                .entries
                .iter()
                .map(|e| (e.vm.0.clone(), e.clone()))
                .collect(),
            transfers: s
                .transfers
                .iter()
                .map(|t| ((t.vm.0.clone(), t.epoch), t.clone()))
                .collect(),
            highest: s
                .highest_epochs
                .iter()
                .map(|(vm, e)| (vm.0.clone(), *e))
                .collect(),
        }
    }

    /// True if the model holds exactly what the snapshot holds.
    pub fn matches(&self, s: &StoreSnapshot) -> bool {
        *self == Model::from_snapshot(s)
    }

    pub fn highest(&self, vm: &str) -> u64 {
        self.highest.get(vm).copied().unwrap_or(0)
    }

    fn see(&mut self, vm: &str, epoch: u64) {
        // The store keeps no record for epoch 0 (it is the default).
        if epoch > self.highest(vm) {
            self.highest.insert(vm.to_owned(), epoch);
        }
    }

    pub fn transfers_of(&self, vm: &str) -> Vec<u64> {
        self.transfers
            .keys()
            .filter(|(v, _)| v == vm)
            .map(|(_, e)| *e)
            .collect()
    }

    /// Applies `op` and says what the store must answer.
    pub fn apply(&mut self, op: &Op) -> Verdict {
        use Verdict::*;
        let me = me().0;
        match op {
            Op::Create { vm, epoch } => {
                if self.entries.contains_key(vm) || !self.transfers_of(vm).is_empty() {
                    return AlreadyExists;
                }
                self.entries.insert(vm.clone(), running(vm, *epoch));
                self.see(vm, *epoch);
                Applied
            }
            Op::Delete { vm } => match self.entries.get(vm) {
                None => NotFound,
                Some(e) if e.state != VmState::Running => WrongState,
                Some(_) => {
                    self.entries.remove(vm);
                    Applied
                }
            },
            Op::Begin { vm, to, epoch } => {
                if *to == me {
                    return Invalid;
                }
                let highest = self.highest(vm);
                let Some(e) = self.entries.get_mut(vm) else {
                    return NotFound;
                };
                let wanted = VmState::MigratingOut {
                    to: NodeId::from(to.as_str()),
                    epoch: *epoch,
                };
                if e.state == wanted {
                    return Duplicate;
                }
                if e.state != VmState::Running {
                    return WrongState;
                }
                if *epoch <= highest || *epoch <= e.epoch {
                    return StaleEpoch;
                }
                e.state = wanted;
                self.see(vm, *epoch);
                Applied
            }
            Op::Abort { vm, epoch } => {
                let highest = self.highest(vm);
                let Some(e) = self.entries.get_mut(vm) else {
                    return NotFound;
                };
                match e.state {
                    VmState::MigratingOut { epoch: x, .. } if x == *epoch => {
                        e.state = VmState::Running;
                        Applied
                    }
                    VmState::MigratingOut { .. } => EpochMismatch,
                    VmState::Running if e.epoch < *epoch && highest >= *epoch => Duplicate,
                    _ => WrongState,
                }
            }
            Op::Commit { vm, epoch } => {
                let Some(e) = self.entries.get(vm) else {
                    return if self.transfers.contains_key(&(vm.clone(), *epoch)) {
                        Duplicate
                    } else {
                        NotFound
                    };
                };
                match &e.state {
                    VmState::MigratingOut { to, epoch: x } if x == epoch => {
                        let record = Transferred {
                            vm: VmId::from(vm.as_str()),
                            to: to.clone(),
                            epoch: *epoch,
                        };
                        self.entries.remove(vm);
                        self.transfers.insert((vm.clone(), *epoch), record);
                        Applied
                    }
                    VmState::MigratingOut { .. } => EpochMismatch,
                    _ => WrongState,
                }
            }
            Op::Forget { vm, epoch } => match self.transfers.remove(&(vm.clone(), *epoch)) {
                Some(_) => Applied,
                None => Duplicate,
            },
            Op::Accept { vm, from, epoch } => {
                if *from == me {
                    return Invalid;
                }
                let wanted = incoming(vm, from, *epoch);
                match self.entries.get(vm) {
                    Some(e) if e.state == wanted.state => Duplicate,
                    _ if *epoch <= self.highest(vm) => StaleEpoch,
                    Some(_) => WrongState,
                    None => {
                        self.entries.insert(vm.clone(), wanted);
                        self.see(vm, *epoch);
                        Applied
                    }
                }
            }
            Op::Promote { vm, epoch, now } => {
                let Some(e) = self.entries.get_mut(vm) else {
                    return NotFound;
                };
                match e.state {
                    VmState::Incoming { epoch: x, .. } if x == *epoch => {
                        e.state = VmState::Running;
                        e.epoch = *epoch;
                        e.last_moved_unix_ms = Some(*now);
                        Applied
                    }
                    VmState::Incoming { .. } => EpochMismatch,
                    _ if e.epoch == *epoch => Duplicate,
                    _ => WrongState,
                }
            }
            Op::Drop { vm, epoch } => {
                let Some(e) = self.entries.get(vm) else {
                    return Duplicate;
                };
                match e.state {
                    VmState::Incoming { epoch: x, .. } if x == *epoch => {
                        self.entries.remove(vm);
                        Applied
                    }
                    VmState::Incoming { .. } => EpochMismatch,
                    _ => WrongState,
                }
            }
            Op::Pin { vm, pinned } => {
                let Some(e) = self.entries.get_mut(vm) else {
                    return NotFound;
                };
                if e.pinned == *pinned {
                    return Duplicate;
                }
                e.pinned = *pinned;
                Applied
            }
            Op::Factors { vm, cpu } => {
                let Some(e) = self.entries.get_mut(vm) else {
                    return Duplicate;
                };
                if e.factors == factors(*cpu) {
                    return Duplicate;
                }
                e.factors = factors(*cpu);
                Applied
            }
        }
    }
}

/// Checks the invariants that hold for any store, whatever ran before: no VM both
/// `MigratingOut` and `Transferred` under one epoch, no epoch above the VM's highest
/// seen, transfer records consistent with their keys. Returns a description of the
/// first violation.
pub fn check_invariants(s: &StoreSnapshot) -> Result<(), String> {
    let highest: BTreeMap<&VmId, u64> = s.highest_epochs.iter().map(|(v, e)| (v, *e)).collect();
    let seen = |vm: &VmId| highest.get(vm).copied().unwrap_or(0);
    let transferred: BTreeSet<(&VmId, u64)> =
        s.transfers.iter().map(|t| (&t.vm, t.epoch)).collect();
    for e in &s.entries {
        if let VmState::MigratingOut { epoch, .. } = e.state {
            if transferred.contains(&(&e.vm, epoch)) {
                return Err(format!(
                    "{} is both MigratingOut and Transferred at epoch {epoch}",
                    e.vm
                ));
            }
            if epoch > seen(&e.vm) {
                return Err(format!(
                    "{} migrates at epoch {epoch} above its highest seen",
                    e.vm
                ));
            }
        }
        if e.epoch > seen(&e.vm) {
            return Err(format!(
                "{} held at epoch {} above its highest seen",
                e.vm, e.epoch
            ));
        }
    }
    for t in &s.transfers {
        if t.epoch > seen(&t.vm) {
            return Err(format!(
                "transfer of {} at epoch {} above its highest seen",
                t.vm, t.epoch
            ));
        }
    }
    Ok(())
}

/// The peers valid-history generators hand VMs to and receive them from.
pub const PEERS: [&str; 2] = ["node-b", "node-c"];

/// How many distinct VMs valid-history generators use.
pub const VALID_HISTORY_VMS: usize = 24;

/// A call that the model accepts (`Applied`), chosen at random: VMs are created, handed
/// off (begin, then commit or abort), come back (accept, then promote or drop), get
/// pinned, and have their transfer records forgotten. Every VM ever created stays in the
/// schedule or in a transfer record: records are forgotten only while the VM is back
/// here, and an incoming VM is dropped only while its transfer record is kept.
pub fn next_valid_op(model: &Model, rng: &mut impl rand::Rng) -> Op {
    let vm = format!("vm-{:02}", rng.random_range(0..VALID_HISTORY_VMS));
    let peer = PEERS[rng.random_range(0..PEERS.len())].to_owned();
    let highest = model.highest(&vm);
    let next_epoch = highest + 1;
    let transfers = model.transfers_of(&vm);
    match model.entries.get(&vm).map(|e| (&e.state, e.pinned)) {
        None if transfers.is_empty() => Op::Create { vm, epoch: highest },
        None => Op::Accept {
            vm,
            from: peer,
            epoch: next_epoch,
        },
        Some((VmState::MigratingOut { epoch, .. }, _)) => {
            if rng.random_ratio(7, 10) {
                Op::Commit { vm, epoch: *epoch }
            } else {
                Op::Abort { vm, epoch: *epoch }
            }
        }
        Some((VmState::Incoming { epoch, .. }, _)) => {
            if !transfers.is_empty() && rng.random_ratio(1, 4) {
                Op::Drop { vm, epoch: *epoch }
            } else {
                Op::Promote {
                    vm,
                    epoch: *epoch,
                    now: rng.random_range(0..1_000_000),
                }
            }
        }
        Some((VmState::Running, pinned)) => match rng.random_range(0..10) {
            0 => Op::Pin {
                vm,
                pinned: !pinned,
            },
            1..=3 if !transfers.is_empty() => Op::Forget {
                vm,
                epoch: transfers[0],
            },
            _ => Op::Begin {
                vm,
                to: peer,
                epoch: next_epoch,
            },
        },
    }
}
