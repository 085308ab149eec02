//! The schedule's transitions (docs/design.md §Handoff): creating and deleting VMs, the source's
//! `begin` / `abort` / `commit` of a move, the destination's `accept` / `promote` / `drop`,
//! and the soft-state updates (pinning, load factors).
//!
//! Each method checks the stored state inside its transaction and returns a typed error,
//! changing nothing, when the transition does not start from that state. Transitions
//! that a retried or replayed message can repeat are idempotent and say so with
//! [`Outcome::Duplicate`].

use crate::error::{Outcome, StoreError};
use crate::store::{abort, Durability, Store, Tx, TxResult};
use crate::types::{LoadFactors, NodeId, ScheduleEntry, Transferred, VmId, VmSpec, VmState};
use crate::validate;

fn wrong_state<A>(entry: &ScheduleEntry, expected: &'static str) -> TxResult<A> {
    abort(StoreError::WrongState {
        vm: entry.vm.clone(),
        expected,
        found: entry.state.clone(),
    })
}

/// The handoff state a step of a move expects its entry in.
#[derive(Clone, Copy)]
enum Leg {
    /// The source's `MigratingOut`.
    Out,
    /// The destination's `Incoming`.
    In,
}

impl Leg {
    /// The state's name, for `WrongState`.
    fn name(self) -> &'static str {
        match self {
            Leg::Out => "MigratingOut",
            Leg::In => "Incoming",
        }
    }

    /// The move's epoch when `state` is this leg.
    fn epoch_of(self, state: &VmState) -> Option<u64> {
        match (self, state) {
            (Leg::Out, VmState::MigratingOut { epoch, .. })
            | (Leg::In, VmState::Incoming { epoch, .. }) => Some(*epoch),
            _ => None,
        }
    }
}

/// Whether `entry` is in `leg` at `epoch`: `true` if so, `EpochMismatch` if it is in
/// `leg` for another move, `false` if it is in another state (the caller answers
/// `Duplicate` or `WrongState`).
fn in_leg(entry: &ScheduleEntry, leg: Leg, epoch: u64) -> TxResult<bool> {
    match leg.epoch_of(&entry.state) {
        Some(e) if e == epoch => Ok(true),
        Some(found) => abort(StoreError::EpochMismatch {
            vm: entry.vm.clone(),
            epoch,
            found,
        }),
        None => Ok(false),
    }
}

fn check_not_stale(tx: &Tx<'_>, vm: &VmId, epoch: u64) -> TxResult<()> {
    let highest = tx.highest_epoch(vm)?;
    if epoch <= highest {
        return abort(StoreError::StaleEpoch {
            vm: vm.clone(),
            epoch,
            highest,
        });
    }
    Ok(())
}

impl Store {
    /// Adds a new VM in state `Running`. Refused if the VM already has an entry here, or
    /// a transfer record (it was handed off and the record is not yet forgotten).
    pub fn create(&self, entry: &ScheduleEntry) -> Result<(), StoreError> {
        validate::entry(entry)?;
        if entry.state != VmState::Running {
            return Err(StoreError::InvalidInput {
                vm: entry.vm.clone(),
                reason: format!("a new VM must be Running, not {:?}", entry.state),
            });
        }
        let pre = |store: &Store| {
            store.check_rules_ungated(entry)?;
            store.transfers_of_ungated(&entry.vm)
        };
        self.write("create", Durability::Flush, pre, |tx, transfers| {
            if let Some(existing) = tx.entry(&entry.vm)? {
                let detail = format!("{:?} at epoch {}", existing.state, existing.epoch);
                return abort(StoreError::AlreadyExists {
                    vm: entry.vm.clone(),
                    detail,
                });
            }
            if let Some(t) = transfers.first() {
                let detail = format!(
                    "handed off to {} at epoch {}, not yet forgotten",
                    t.to, t.epoch
                );
                return abort(StoreError::AlreadyExists {
                    vm: entry.vm.clone(),
                    detail,
                });
            }
            tx.put_entry(entry)?;
            tx.see_epoch(&entry.vm, entry.epoch)
        })?;
        tracing::debug!(vm = %entry.vm, epoch = entry.epoch, "created VM entry");
        Ok(())
    }

    /// Removes a `Running` VM (an operator's delete). Returns the removed entry. Its highest
    /// seen epoch is kept. A VM in a handoff cannot be deleted (`WrongState`).
    pub fn delete(&self, vm: &VmId) -> Result<ScheduleEntry, StoreError> {
        let removed = self.write("delete", Durability::Flush, Self::check_vm(vm), |tx, ()| {
            let entry = tx.existing(vm)?;
            if entry.state != VmState::Running {
                return wrong_state(&entry, "Running");
            }
            tx.remove_entry(vm)?;
            Ok(entry)
        })?;
        tracing::debug!(vm = %vm, epoch = removed.epoch, "deleted VM entry");
        Ok(removed)
    }

    /// Source, step 1: `Running` → `MigratingOut { to, epoch: new_epoch }`. `new_epoch` must
    /// be above the highest epoch this store has seen for the VM (use
    /// [`Store::next_epoch`]), which implies above the entry's epoch. The entry's own epoch
    /// is unchanged until the move commits. Repeating the same call is a `Duplicate`.
    pub fn begin_migrate_out(
        &self,
        vm: &VmId,
        to: &NodeId,
        new_epoch: u64,
    ) -> Result<Outcome, StoreError> {
        validate::peer(vm, to, &self.meta().node_id)?;
        let outcome = self.write(
            "begin_migrate_out",
            Durability::Flush,
            Self::check_vm(vm),
            |tx, ()| {
                let mut entry = tx.existing(vm)?;
                match &entry.state {
                    VmState::MigratingOut { to: t, epoch } if t == to && *epoch == new_epoch => {
                        return Ok(Outcome::Duplicate);
                    }
                    VmState::Running => {}
                    _ => return wrong_state(&entry, "Running"),
                }
                check_not_stale(tx, vm, new_epoch)?;
                if new_epoch <= entry.epoch {
                    return abort(StoreError::StaleEpoch {
                        vm: vm.clone(),
                        epoch: new_epoch,
                        highest: entry.epoch,
                    });
                }
                entry.state = VmState::MigratingOut {
                    to: to.clone(),
                    epoch: new_epoch,
                };
                tx.put_entry(&entry)?;
                tx.see_epoch(vm, new_epoch)?;
                Ok(Outcome::Applied)
            },
        )?;
        tracing::debug!(vm = %vm, to = %to, epoch = new_epoch, ?outcome, "began migration out");
        Ok(outcome)
    }

    /// Source, failure before the commit point: `MigratingOut { epoch }` → `Running`, the
    /// entry's epoch unchanged (`epoch` stays recorded as seen, so the next attempt uses a
    /// higher one). `Duplicate` if the VM is already back to `Running` below `epoch`.
    pub fn abort_migrate_out(&self, vm: &VmId, epoch: u64) -> Result<Outcome, StoreError> {
        let outcome = self.write(
            "abort_migrate_out",
            Durability::Flush,
            Self::check_vm(vm),
            |tx, ()| {
                let mut entry = tx.existing(vm)?;
                if !in_leg(&entry, Leg::Out, epoch)? {
                    let back = entry.state == VmState::Running && entry.epoch < epoch;
                    if back && tx.highest_epoch(vm)? >= epoch {
                        return Ok(Outcome::Duplicate);
                    }
                    return wrong_state(&entry, Leg::Out.name());
                }
                entry.state = VmState::Running;
                tx.put_entry(&entry)?;
                tx.see_epoch(vm, epoch)?;
                Ok(Outcome::Applied)
            },
        )?;
        tracing::debug!(vm = %vm, epoch, ?outcome, "aborted migration out");
        Ok(outcome)
    }

    /// Source, the commit point: deletes the `MigratingOut { to, epoch }` entry and records
    /// `Transferred { vm, to, epoch }`, in one transaction. `Duplicate` if the entry is
    /// gone and that record is there. Returns the record's destination with the outcome.
    pub fn commit_migrate_out(
        &self,
        vm: &VmId,
        epoch: u64,
    ) -> Result<(Outcome, Transferred), StoreError> {
        let result = self.write(
            "commit_migrate_out",
            Durability::Flush,
            Self::check_vm(vm),
            |tx, ()| {
                let Some(entry) = tx.entry(vm)? else {
                    return match tx.transfer(vm, epoch)? {
                        Some(record) => Ok((Outcome::Duplicate, record)),
                        None => abort(StoreError::NotFound { vm: vm.clone() }),
                    };
                };
                let (true, VmState::MigratingOut { to, .. }) =
                    (in_leg(&entry, Leg::Out, epoch)?, &entry.state)
                else {
                    return wrong_state(&entry, Leg::Out.name());
                };
                let to = to.clone();
                let record = Transferred {
                    vm: vm.clone(),
                    to,
                    epoch,
                };
                tx.remove_entry(vm)?;
                tx.put_transfer(&record)?;
                tx.see_epoch(vm, epoch)?;
                Ok((Outcome::Applied, record))
            },
        )?;
        tracing::debug!(vm = %vm, to = %result.1.to, epoch, outcome = ?result.0, "committed migration out");
        Ok(result)
    }

    /// Source, after the destination acknowledged: removes the transfer record.
    /// `Duplicate` if it was not there.
    pub fn forget_transfer(&self, vm: &VmId, epoch: u64) -> Result<Outcome, StoreError> {
        let outcome = self.write(
            "forget_transfer",
            Durability::Flush,
            Self::check_vm(vm),
            |tx, ()| {
                Ok(if tx.remove_transfer(vm, epoch)? {
                    Outcome::Applied
                } else {
                    Outcome::Duplicate
                })
            },
        )?;
        tracing::debug!(vm = %vm, epoch, ?outcome, "forgot transfer record");
        Ok(outcome)
    }

    /// Destination, step 2: inserts `entry`, whose state must be `Incoming { from, epoch }`
    /// (and `entry.epoch <= epoch`). Refused with `StaleEpoch` unless `epoch` is above the
    /// highest epoch this store has seen for the VM; `Duplicate` if the same
    /// `Incoming { from, epoch }` is already there; `WrongState` if the VM has another
    /// entry here.
    pub fn accept_incoming(&self, entry: &ScheduleEntry) -> Result<Outcome, StoreError> {
        validate::entry(entry)?;
        let VmState::Incoming { from, epoch } = &entry.state else {
            return Err(StoreError::InvalidInput {
                vm: entry.vm.clone(),
                reason: format!("an incoming VM must be Incoming, not {:?}", entry.state),
            });
        };
        validate::peer(&entry.vm, from, &self.meta().node_id)?;
        if entry.epoch > *epoch {
            return Err(StoreError::InvalidInput {
                vm: entry.vm.clone(),
                reason: format!("entry epoch {} above the move's epoch {epoch}", entry.epoch),
            });
        }
        let vm = &entry.vm;
        let outcome = self.write(
            "accept_incoming",
            Durability::Flush,
            |store| store.check_rules_ungated(entry),
            |tx, ()| {
                let existing = tx.entry(vm)?;
                if existing.as_ref().is_some_and(|e| e.state == entry.state) {
                    return Ok(Outcome::Duplicate);
                }
                check_not_stale(tx, vm, *epoch)?;
                if let Some(existing) = existing {
                    return wrong_state(&existing, "absent");
                }
                tx.put_entry(entry)?;
                tx.see_epoch(vm, *epoch)?;
                Ok(Outcome::Applied)
            },
        )?;
        tracing::debug!(vm = %vm, from = %from, epoch, ?outcome, "accepted incoming VM");
        Ok(outcome)
    }

    /// Destination, step 5: `Incoming { epoch }` → `Running` with the entry's epoch set to
    /// `epoch` and `last_moved_unix_ms = now_unix_ms` (the caller's clock). `Duplicate` if
    /// the entry is already held at `epoch` in another state (promoted before).
    pub fn promote_incoming(
        &self,
        vm: &VmId,
        epoch: u64,
        now_unix_ms: u64,
    ) -> Result<Outcome, StoreError> {
        let outcome = self.write(
            "promote_incoming",
            Durability::Flush,
            Self::check_vm(vm),
            |tx, ()| {
                let mut entry = tx.existing(vm)?;
                if !in_leg(&entry, Leg::In, epoch)? {
                    if entry.epoch == epoch {
                        return Ok(Outcome::Duplicate);
                    }
                    return wrong_state(&entry, Leg::In.name());
                }
                entry.state = VmState::Running;
                entry.epoch = epoch;
                entry.last_moved_unix_ms = Some(now_unix_ms);
                tx.put_entry(&entry)?;
                Ok(Outcome::Applied)
            },
        )?;
        tracing::debug!(vm = %vm, epoch, ?outcome, "promoted incoming VM");
        Ok(outcome)
    }

    /// Destination, the move was aborted: removes the `Incoming { epoch }` entry.
    /// `Duplicate` if the VM has no entry; `WrongState` / `EpochMismatch` (nothing removed)
    /// if the entry is anything else.
    pub fn drop_incoming(&self, vm: &VmId, epoch: u64) -> Result<Outcome, StoreError> {
        let outcome = self.write(
            "drop_incoming",
            Durability::Flush,
            Self::check_vm(vm),
            |tx, ()| {
                let Some(entry) = tx.entry(vm)? else {
                    return Ok(Outcome::Duplicate);
                };
                if !in_leg(&entry, Leg::In, epoch)? {
                    return wrong_state(&entry, Leg::In.name());
                }
                tx.remove_entry(vm)?;
                Ok(Outcome::Applied)
            },
        )?;
        tracing::debug!(vm = %vm, epoch, ?outcome, "dropped incoming VM");
        Ok(outcome)
    }

    /// Pins or unpins a VM (a pinned VM is never moved by balancing), in any state.
    /// `Duplicate` if it already was.
    pub fn set_pinned(&self, vm: &VmId, pinned: bool) -> Result<Outcome, StoreError> {
        let outcome = self.write(
            "set_pinned",
            Durability::Flush,
            Self::check_vm(vm),
            |tx, ()| {
                let mut entry = tx.existing(vm)?;
                if entry.pinned == pinned {
                    return Ok(Outcome::Duplicate);
                }
                entry.pinned = pinned;
                tx.put_entry(&entry)?;
                Ok(Outcome::Applied)
            },
        )?;
        tracing::debug!(vm = %vm, pinned, ?outcome, "set pinned");
        Ok(outcome)
    }

    /// Replaces a `Running` VM's spec: its hypervisor's view changed since it was recorded
    /// (a disk grew or was added). `Duplicate` if it is the same. A VM in a handoff keeps
    /// the spec it was sent with (`WrongState`).
    pub fn update_spec(&self, vm: &VmId, spec: &VmSpec) -> Result<Outcome, StoreError> {
        let outcome = self.write(
            "update_spec",
            Durability::Flush,
            Self::check_vm(vm),
            |tx, ()| {
                let mut entry = tx.existing(vm)?;
                if entry.state != VmState::Running {
                    return wrong_state(&entry, "Running");
                }
                if entry.spec == *spec {
                    return Ok(Outcome::Duplicate);
                }
                entry.spec = spec.clone();
                if let Err(e) = validate::entry(&entry) {
                    return abort(e);
                }
                tx.put_entry(&entry)?;
                Ok(Outcome::Applied)
            },
        )?;
        tracing::debug!(vm = %vm, ?outcome, "updated spec");
        Ok(outcome)
    }

    /// Records new load factors for many VMs in one transaction; VMs without an entry are
    /// skipped (they may have left since the sample). Returns how many entries changed.
    ///
    /// Load factors are soft state, so this write is **not** flushed before returning: it
    /// becomes durable with sled's background flush (every 500 ms) or the next flushed
    /// write, and a crash may bring back older factors (never a torn entry). At most
    /// [`FACTOR_BATCH_MAX`](crate::FACTOR_BATCH_MAX) VMs per call; all factors must be
    /// finite and not negative, else nothing is written.
    pub fn update_factors(&self, updates: &[(VmId, LoadFactors)]) -> Result<usize, StoreError> {
        if updates.len() > validate::FACTOR_BATCH_MAX {
            return Err(StoreError::InvalidInput {
                vm: VmId::from(""),
                reason: format!(
                    "{} updates, more than {}",
                    updates.len(),
                    validate::FACTOR_BATCH_MAX
                ),
            });
        }
        for (vm, factors) in updates {
            validate::vm_id(vm)?;
            validate::factors(vm, factors)?;
        }
        let changed = self.write(
            "update_factors",
            Durability::Deferred,
            |_| Ok(()),
            |tx, ()| {
                let mut changed = 0;
                for (vm, factors) in updates {
                    if let Some(mut entry) = tx.entry(vm)? {
                        if entry.factors != *factors {
                            entry.factors = *factors;
                            tx.put_entry(&entry)?;
                            changed += 1;
                        }
                    }
                }
                Ok(changed)
            },
        )?;
        tracing::trace!(changed, "updated load factors");
        Ok(changed)
    }
}
