//! [`Hypervisor`]: what one simulated host's hypervisor holds — VM copies and outgoing
//! migrations — with the semantics the `Driver` trait documents. It survives a crash of
//! the agent (as QEMU processes do); only decommissioning the host wipes it.

use crate::types::VmId;
use std::collections::BTreeMap;

/// One VM copy on a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CopyState {
    /// Running guest code.
    Running,
    /// A source copy paused by a completed switchover.
    Paused,
    /// A paused incoming copy that has not received the VM's state.
    Receiving,
    /// A paused incoming copy holding the complete state.
    Received,
}

/// An outgoing migration as the hypervisor sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutMigration {
    /// Transferring to node index `to`.
    Active {
        /// Destination node index.
        to: usize,
    },
    /// Switchover done: the source copy is paused, the destination holds the state.
    Completed,
    /// Failed; the source copy still runs.
    Failed,
}

/// The VMs of one host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Hypervisor {
    /// Copies by VM.
    pub copies: BTreeMap<VmId, CopyState>,
    /// Outgoing migrations by VM.
    pub outgoing: BTreeMap<VmId, OutMigration>,
}

impl Hypervisor {
    /// The VM's copy here.
    pub fn copy(&self, vm: &VmId) -> Option<CopyState> {
        self.copies.get(vm).copied()
    }

    /// `prepare_incoming`: a paused receiving copy (idempotent for a receiving copy).
    pub fn prepare_incoming(&mut self, vm: &VmId) -> bool {
        match self.copy(vm) {
            None => {
                self.copies.insert(vm.clone(), CopyState::Receiving);
                true
            }
            Some(CopyState::Receiving) => true,
            Some(_) => false,
        }
    }

    /// Starts `migrate_out` to node `to`: needs a running copy and no migration.
    pub fn start_migration(&mut self, vm: &VmId, to: usize) -> bool {
        let free = !matches!(
            self.outgoing.get(vm),
            Some(OutMigration::Active { .. } | OutMigration::Completed)
        );
        if self.copy(vm) == Some(CopyState::Running) && free {
            self.outgoing
                .insert(vm.clone(), OutMigration::Active { to });
            true
        } else {
            false
        }
    }

    /// `cancel_outgoing` of a driver that ends the source copy at the switchover: after a
    /// completed switchover there is nothing to cancel (false: "switched over"); before
    /// it, as [`Hypervisor::cancel_outgoing`] (true).
    pub fn cancel_outgoing_ended(&mut self, vm: &VmId) -> bool {
        if self.outgoing.get(vm) == Some(&OutMigration::Completed) {
            return false;
        }
        self.cancel_outgoing(vm);
        true
    }

    /// `cancel_outgoing`: forget the migration; a paused source runs again (`cont`).
    pub fn cancel_outgoing(&mut self, vm: &VmId) {
        self.outgoing.remove(vm);
        if let Some(c) = self.copies.get_mut(vm) {
            if *c == CopyState::Paused {
                *c = CopyState::Running;
            }
        }
    }

    /// `finish_outgoing`: quit the (paused) source copy.
    pub fn finish_outgoing(&mut self, vm: &VmId) {
        self.outgoing.remove(vm);
        if self.copy(vm) == Some(CopyState::Paused) {
            self.copies.remove(vm);
        }
    }

    /// `resume_incoming`: a complete incoming copy starts running.
    pub fn resume_incoming(&mut self, vm: &VmId) -> bool {
        match self.copies.get_mut(vm) {
            Some(c @ CopyState::Received) => {
                *c = CopyState::Running;
                true
            }
            Some(CopyState::Running) => true,
            _ => false,
        }
    }

    /// `cancel_incoming`: drop an incoming copy; never a running one.
    pub fn cancel_incoming(&mut self, vm: &VmId) -> bool {
        match self.copy(vm) {
            Some(CopyState::Receiving | CopyState::Received) => {
                self.copies.remove(vm);
                true
            }
            Some(CopyState::Running | CopyState::Paused) => false,
            None => true,
        }
    }
}
