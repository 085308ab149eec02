//! The invariants of docs/design.md §Handoff over a [`World`]: I1 (no loss: exactly one owner),
//! I2 (no double run) and I3 (everything resolved).
//!
//! Ownership is read from durable state only. Owners of a VM are: each node holding it
//! `Running`; each node holding it `MigratingOut` (the pair A–B counts once, as A); and
//! each `Transferred { to: B, epoch }` whose B still holds `Incoming { epoch }` (the
//! commit point passed, B not yet promoted). An `Incoming` whose source holds neither is
//! an orphan about to be dropped and owns nothing. I1 holds when every VM has exactly one
//! owner and some hypervisor holds the VM's state (a running or paused copy, or an
//! incoming copy that received it): a store that names an owner whose every copy was
//! dropped has lost the VM all the same. VMs touched by a decommissioned node are skipped
//! (the operator decided).

use super::{CopyState, Held, World};
use crate::types::VmId;
use std::collections::BTreeSet;
use std::fmt;

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// I1: the VM has `owners` owners instead of exactly one.
    NotOneOwner {
        /// The VM.
        vm: VmId,
        /// How many owners it has.
        owners: usize,
    },
    /// I1: no hypervisor holds the VM's state any more (every copy dropped or never
    /// filled).
    NoCopy {
        /// The VM.
        vm: VmId,
    },
    /// I2: the VM runs on several hypervisors at once.
    DoubleRun {
        /// The VM.
        vm: VmId,
        /// The node indexes where it runs.
        nodes: Vec<usize>,
    },
    /// A node's schedule holds two members of one anti-affinity group (docs/design.md
    /// §Placement rules).
    AntiAffinity {
        /// The node index.
        node: usize,
        /// The group.
        group: String,
        /// Its members there.
        vms: Vec<VmId>,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotOneOwner { vm, owners } => {
                write!(
                    f,
                    "I1 violated: VM {vm} has {owners} owners in durable state"
                )
            }
            Self::NoCopy { vm } => {
                write!(f, "I1 violated: no hypervisor holds the state of VM {vm}")
            }
            Self::DoubleRun { vm, nodes } => {
                write!(f, "I2 violated: VM {vm} runs on nodes {nodes:?} at once")
            }
            Self::AntiAffinity { node, group, vms } => write!(
                f,
                "placement rule broken: node {node} holds {vms:?} of anti-affinity group {group}"
            ),
        }
    }
}

impl World {
    /// Every VM named anywhere (stores, transfers, hypervisors).
    pub fn vms(&self) -> BTreeSet<VmId> {
        let mut vms = BTreeSet::new();
        for n in &self.nodes {
            vms.extend(n.store.entry_map().keys().cloned());
            vms.extend(n.store.transfer_map().keys().map(|(vm, _)| vm.clone()));
            vms.extend(n.hyper.copies.keys().cloned());
        }
        vms
    }

    /// I1, I2 and the anti-affinity rule.
    pub fn check(&self) -> Result<(), Violation> {
        self.check_i1()?;
        self.check_i2()?;
        self.check_anti_affinity()
    }

    /// No node's schedule (any state) holds two members of one anti-affinity group.
    pub fn check_anti_affinity(&self) -> Result<(), Violation> {
        for (i, n) in self.nodes.iter().enumerate() {
            let mut groups: std::collections::BTreeMap<&str, Vec<VmId>> = Default::default();
            for (vm, e) in n.store.entry_map() {
                for g in &e.payload.spec.rules.anti_affinity {
                    groups.entry(g).or_default().push(vm.clone());
                }
            }
            if let Some((g, vms)) = groups.into_iter().find(|(_, v)| v.len() > 1) {
                return Err(Violation::AntiAffinity {
                    node: i,
                    group: g.to_owned(),
                    vms,
                });
            }
        }
        Ok(())
    }

    /// I1: every VM has exactly one owner in durable state.
    pub fn check_i1(&self) -> Result<(), Violation> {
        self.vms().iter().try_for_each(|vm| self.check_owners(vm))
    }

    /// I2: no VM runs on two hypervisors at once.
    pub fn check_i2(&self) -> Result<(), Violation> {
        self.vms()
            .iter()
            .try_for_each(|vm| self.check_single_run(vm))
    }

    fn touched_by_down_node(&self, vm: &VmId) -> bool {
        self.nodes.iter().any(|n| {
            n.down
                && (n.store.entry(vm).is_some()
                    || n.store.transfer_map().keys().any(|(v, _)| v == vm))
        }) || self.nodes.iter().any(|n| {
            n.store.transfer_map().iter().any(|((v, _), to)| {
                v == vm && self.index_of(to).is_some_and(|i| self.nodes[i].down)
            })
        })
    }

    /// How many owners `vm` has in durable state (see the module doc).
    pub fn owners(&self, vm: &VmId) -> usize {
        let mut owners = 0;
        for n in self.nodes.iter().filter(|n| !n.down) {
            if let Some(e) = n.store.entry(vm) {
                if matches!(e.held, Held::Running | Held::MigratingOut { .. }) {
                    owners += 1;
                }
            }
            for ((v, epoch), to) in n.store.transfer_map() {
                if v != vm {
                    continue;
                }
                let Some(b) = self.index_of(to) else { continue };
                let incoming = self.nodes[b].store.entry(vm).is_some_and(|e| {
                    e.held
                        == Held::Incoming {
                            from: n.id.clone(),
                            epoch: *epoch,
                        }
                });
                if incoming {
                    owners += 1;
                }
            }
        }
        owners
    }

    fn check_owners(&self, vm: &VmId) -> Result<(), Violation> {
        if self.touched_by_down_node(vm) {
            return Ok(());
        }
        let held = self.nodes.iter().any(|n| {
            matches!(
                n.hyper.copy(vm),
                Some(CopyState::Running | CopyState::Paused | CopyState::Received)
            )
        });
        if !held {
            return Err(Violation::NoCopy { vm: vm.clone() });
        }
        match self.owners(vm) {
            1 => Ok(()),
            owners => Err(Violation::NotOneOwner {
                vm: vm.clone(),
                owners,
            }),
        }
    }

    fn check_single_run(&self, vm: &VmId) -> Result<(), Violation> {
        let nodes: Vec<usize> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.hyper.copy(vm) == Some(CopyState::Running))
            .map(|(i, _)| i)
            .collect();
        if nodes.len() > 1 {
            return Err(Violation::DoubleRun {
                vm: vm.clone(),
                nodes,
            });
        }
        Ok(())
    }

    /// I3: nothing in flight, every machine idle, every store free of handoff records,
    /// and every VM held `Running` by exactly one live node whose hypervisor runs it and
    /// no other copy anywhere. Returns what is still unresolved.
    pub fn resolved(&self) -> Result<(), String> {
        if !self.net.is_empty() {
            return Err(format!("{} messages in flight", self.net.len()));
        }
        for n in self.nodes.iter().filter(|n| !n.down) {
            if !n.machine.is_idle() || !n.queue.is_empty() || !n.calls.is_empty() {
                return Err(format!(
                    "node {} still busy: {:?}",
                    n.id,
                    n.machine.handoffs()
                ));
            }
            if !n.store.transfer_map().is_empty() {
                return Err(format!("node {} keeps transfer records", n.id));
            }
            if n.store
                .entry_map()
                .values()
                .any(|e| e.held != Held::Running)
            {
                return Err(format!("node {} holds a handoff entry", n.id));
            }
        }
        for vm in self.vms() {
            if self.touched_by_down_node(&vm) {
                continue;
            }
            let holders: Vec<usize> = (0..self.nodes.len())
                .filter(|&i| !self.nodes[i].down && self.nodes[i].store.entry(&vm).is_some())
                .collect();
            let copies: Vec<(usize, CopyState)> = (0..self.nodes.len())
                .filter_map(|i| self.nodes[i].hyper.copy(&vm).map(|c| (i, c)))
                .collect();
            if holders.len() != 1 || copies != [(holders[0], CopyState::Running)] {
                return Err(format!("VM {vm}: held by {holders:?}, copies {copies:?}"));
            }
        }
        Ok(())
    }
}
