//! An in-memory cluster that steps real [`Handoffs`] machines: a model store
//! ([`MemStore`]), a model hypervisor ([`Hypervisor`]), a lossy network and timers.
//!
//! It is the harness of the handoff unit and property tests and the state of the
//! stateright model check (`ballast-chaos model`), so both exercise the agent's machine,
//! not a copy. Every step is an explicit [`SimAction`]; [`World::actions`] lists the ones
//! enabled, with faults (loss, duplication, crash, driver failure) allowed by
//! [`Faults`]. Like the agent, a node takes a new input only once it has executed every
//! effect of the previous one. [`World::check`] checks I1 and I2, [`World::resolved`] I3.
//!
//! Files: `store` (the model store), `hypervisor` (the model hypervisor), `invariants`
//! (I1–I3).

mod hypervisor;
mod invariants;
mod store;

pub use hypervisor::{CopyState, Hypervisor, OutMigration};
pub use invariants::Violation;
pub use store::{Held, MemEntry, MemStore};

use super::{
    CallKind, ClockMs, DriverAction, DriverCall, DriverOutcome, DriverReply, Effect, HandoffConfig,
    HandoffMsg, Handoffs, Notice, Payload, SourceCopy, StartError, StoreOutcome, Timer,
};
use crate::hypervisor::{MigrationStatus, MigrationTarget};
use crate::types::{NodeId, VmId};
use std::collections::{BTreeSet, VecDeque};

/// A message in flight.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Envelope {
    /// Sender index.
    pub from: usize,
    /// Receiver index.
    pub to: usize,
    /// The message.
    pub msg: HandoffMsg,
}

impl Envelope {
    fn sort_key(&self) -> (usize, usize, &'static str, &VmId, u64) {
        (
            self.from,
            self.to,
            self.msg.kind(),
            self.msg.vm(),
            self.msg.epoch(),
        )
    }
}

/// A driver call the agent has started and not yet seen return.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Call {
    /// The call.
    pub call: DriverCall,
    /// For `migrate_out`: the hypervisor has started the migration.
    pub started: bool,
    /// For `migrate_out`: a `cancel_outgoing` ran before it started; it will fail.
    pub cancelled: bool,
}

/// One simulated host: agent state (lost on crash) and durable state (kept).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SimNode {
    /// Its id.
    pub id: NodeId,
    /// The agent's machine.
    pub machine: Handoffs,
    /// Effects drained from the machine, not yet executed.
    pub queue: VecDeque<Effect>,
    /// Driver calls running.
    pub calls: Vec<Call>,
    /// Armed timers.
    pub timers: BTreeSet<(ClockMs, Timer)>,
    /// The durable store.
    pub store: MemStore,
    /// The hypervisor (survives agent crashes).
    pub hyper: Hypervisor,
    /// Decommissioned for good (host and store gone from the cluster).
    pub down: bool,
    /// Effects executed so far (counted only when a crash is planned).
    pub effects_done: u64,
}

/// Which faults [`World::actions`] may offer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Faults {
    /// Deliver a message and keep a copy in flight.
    pub duplicate: bool,
    /// Lose a message.
    pub drop: bool,
    /// Crash an agent (it restarts at once from its store).
    pub crash: bool,
    /// Fail a migration at switchover.
    pub fail_migration: bool,
    /// Fail `prepare_incoming`, `migration_status`, `incoming_complete`.
    pub fail_calls: bool,
    /// Fire timers in any order (otherwise only the earliest may fire, and only when
    /// nothing else is enabled).
    pub early_timers: bool,
}

/// One step of the simulation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SimAction {
    /// Run the store op a node left queued after telling someone, and what follows.
    Exec {
        /// Node index.
        node: usize,
    },
    /// Deliver message `index` (keeping a copy in flight when `duplicate`).
    Deliver {
        /// Index in [`World::net`].
        index: usize,
        /// Keep a copy in flight.
        duplicate: bool,
    },
    /// Lose message `index`.
    Drop {
        /// Index in [`World::net`].
        index: usize,
    },
    /// Fire a timer.
    Fire {
        /// Node index.
        node: usize,
        /// When it was due.
        at: ClockMs,
        /// The timer.
        timer: Timer,
    },
    /// Complete (or for `migrate_out` start) driver call `index` of `node`.
    RunCall {
        /// Node index.
        node: usize,
        /// Index in [`SimNode::calls`].
        index: usize,
        /// Make it fail.
        fail: bool,
    },
    /// The hypervisor's switchover of an active migration.
    Switchover {
        /// Source node index.
        node: usize,
        /// The VM.
        vm: VmId,
        /// Make it fail.
        fail: bool,
    },
    /// Crash `node`'s agent; it restarts at once and recovers from its store.
    Crash {
        /// Node index.
        node: usize,
    },
}

/// The simulated cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct World {
    /// The hosts.
    pub nodes: Vec<SimNode>,
    /// Messages in flight (a multiset, kept sorted).
    pub net: Vec<Envelope>,
    /// Most messages in flight; a send beyond it is lost.
    pub net_capacity: usize,
    /// The clock (stays 0 unless `clocked`).
    pub now: ClockMs,
    /// Whether the network is a set: a message identical to one in flight is merged
    /// with it (the model's reduction; duplication is then an explicit fault).
    pub net_dedup: bool,
    /// Whether firing a timer advances the clock.
    pub clocked: bool,
    /// Crash node `.0` right after its `.1`-th executed effect (tests).
    pub crash_plan: Option<(usize, u64)>,
    /// Make store ops of node `.0` fail: after `.1` more successful ops, the next `.2`
    /// ops fail without changing anything (tests).
    pub store_failures: Option<(usize, u32, u32)>,
    /// Notices, kept only when `record` (tests; the model keeps none).
    pub notices: Vec<(usize, Notice)>,
    /// Every message sent, kept only when `record`.
    pub sent: Vec<Envelope>,
    /// Whether to keep notices and sent messages.
    pub record: bool,
    /// The machines' configuration.
    pub config: HandoffConfig,
}

/// The id of node `i`.
pub fn node_id(i: usize) -> NodeId {
    NodeId(format!("n{i}"))
}

/// The id of VM `i`.
pub fn vm_id(i: usize) -> VmId {
    VmId(format!("vm{i}"))
}

impl World {
    /// `nodes` hosts; VM `i` starts running on node `homes[i]`.
    pub fn new(nodes: usize, homes: &[usize], config: HandoffConfig) -> Self {
        let mut world = Self {
            nodes: (0..nodes)
                .map(|i| SimNode {
                    id: node_id(i),
                    machine: Handoffs::start(node_id(i), config.clone(), 0, [], []),
                    queue: VecDeque::new(),
                    calls: Vec::new(),
                    timers: BTreeSet::new(),
                    store: MemStore::default(),
                    hyper: Hypervisor::default(),
                    down: false,
                    effects_done: 0,
                })
                .collect(),
            net: Vec::new(),
            net_capacity: 64,
            now: 0,
            net_dedup: false,
            clocked: true,
            crash_plan: None,
            store_failures: None,
            notices: Vec::new(),
            sent: Vec::new(),
            record: false,
            config,
        };
        for (i, &home) in homes.iter().enumerate() {
            let payload = Payload {
                spec: crate::types::VmSpec {
                    vcpus: 1,
                    memory_mib: 64,
                    ..Default::default()
                },
                factors: crate::types::LoadFactors {
                    cpu: 0.5,
                    io: 0.0,
                    mem: 64.0,
                },
            };
            world.nodes[home].store.create(vm_id(i), payload);
            world.nodes[home]
                .hyper
                .copies
                .insert(vm_id(i), CopyState::Running);
        }
        world
    }

    /// The index of node `id`.
    pub fn index_of(&self, id: &NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| &n.id == id)
    }

    /// Whether `node` can take an input now (up, every effect executed).
    pub fn can_input(&self, node: usize) -> bool {
        let n = &self.nodes[node];
        !n.down && n.queue.is_empty()
    }

    /// Starts moving `vm` from `node` to `to` (the balancing decision).
    pub fn start_move(&mut self, node: usize, vm: &VmId, to: usize) -> Result<u64, StartError> {
        let n = &mut self.nodes[node];
        let entry = n
            .store
            .entries()
            .into_iter()
            .find(|e| &e.vm == vm)
            .ok_or_else(|| StartError::NotRunning(vm.clone()))?;
        let highest = n.store.highest_epoch(vm);
        let epoch = n
            .machine
            .start_move(self.now, &entry, node_id(to), highest)?;
        self.after_input(node);
        Ok(epoch)
    }

    /// The operator's `forget` of `peer`, run on `node`.
    pub fn forget(&mut self, node: usize, peer: usize) {
        let id = self.nodes[peer].id.clone();
        self.nodes[node].machine.handle_forget(self.now, &id);
        self.after_input(node);
    }

    /// Takes `node` out of the cluster for good: its host, VMs and agent are gone.
    pub fn decommission(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        n.down = true;
        n.queue.clear();
        n.calls.clear();
        n.timers.clear();
        n.hyper = Hypervisor::default();
    }

    /// Moves the machine's effects to the node's queue.
    fn drain(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        while let Some(effect) = n.machine.poll_effect() {
            n.queue.push_back(effect);
        }
    }

    /// After an input: queue its effects and run them up to the first store op.
    fn after_input(&mut self, node: usize) {
        self.drain(node);
        self.run_until_store(node);
    }

    /// Every enabled action: protocol steps, plus the faults `faults` allows. Timers
    /// fire only when no other protocol step is enabled (the earliest first), unless
    /// `faults.early_timers`.
    pub fn actions(&self, faults: Faults, out: &mut Vec<SimAction>) {
        let before = out.len();
        self.step_actions(out);
        let idle = out.len() == before;
        if idle || faults.early_timers {
            self.timer_actions(faults.early_timers, out);
        }
        self.fault_actions(faults, out);
    }

    fn step_actions(&self, out: &mut Vec<SimAction>) {
        for (node, n) in self.nodes.iter().enumerate() {
            if n.down {
                continue;
            }
            if !n.queue.is_empty() {
                out.push(SimAction::Exec { node });
            }
            for (vm, m) in &n.hyper.outgoing {
                if matches!(m, OutMigration::Active { .. }) {
                    out.push(SimAction::Switchover {
                        node,
                        vm: vm.clone(),
                        fail: false,
                    });
                }
            }
            if !self.can_input(node) {
                continue;
            }
            for (index, c) in n.calls.iter().enumerate() {
                let waiting = c.started
                    && matches!(
                        n.hyper.outgoing.get(&c.call.vm),
                        Some(OutMigration::Active { .. })
                    );
                if !waiting {
                    out.push(SimAction::RunCall {
                        node,
                        index,
                        fail: false,
                    });
                }
            }
        }
        for (index, e) in self.net.iter().enumerate() {
            if self.nodes[e.to].down || self.can_input(e.to) {
                out.push(SimAction::Deliver {
                    index,
                    duplicate: false,
                });
            }
        }
    }

    fn fault_actions(&self, faults: Faults, out: &mut Vec<SimAction>) {
        for (node, n) in self.nodes.iter().enumerate() {
            if n.down {
                continue;
            }
            // A crash of an agent with nothing in memory and nothing to reconcile
            // changes nothing: not offered, so as not to waste the crash budget.
            let volatile = !n.machine.is_idle()
                || !n.queue.is_empty()
                || !n.calls.is_empty()
                || !n.timers.is_empty()
                || n.hyper.copies.values().any(|c| *c != CopyState::Running);
            if faults.crash && volatile {
                out.push(SimAction::Crash { node });
            }
            if faults.fail_migration {
                for (vm, m) in &n.hyper.outgoing {
                    if matches!(m, OutMigration::Active { .. }) {
                        out.push(SimAction::Switchover {
                            node,
                            vm: vm.clone(),
                            fail: true,
                        });
                    }
                }
            }
            if faults.fail_calls && self.can_input(node) {
                for (index, c) in n.calls.iter().enumerate() {
                    let failable = matches!(
                        c.call.action.kind(),
                        CallKind::PrepareIncoming
                            | CallKind::MigrationStatus
                            | CallKind::IncomingComplete
                    );
                    if failable {
                        out.push(SimAction::RunCall {
                            node,
                            index,
                            fail: true,
                        });
                    }
                }
            }
        }
        for (index, e) in self.net.iter().enumerate() {
            if faults.duplicate && (self.nodes[e.to].down || self.can_input(e.to)) {
                out.push(SimAction::Deliver {
                    index,
                    duplicate: true,
                });
            }
            if faults.drop {
                out.push(SimAction::Drop { index });
            }
        }
    }

    fn timer_actions(&self, any: bool, out: &mut Vec<SimAction>) {
        let timers = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| self.can_input(*i))
            .flat_map(|(node, n)| n.timers.iter().map(move |(at, t)| (*at, node, t)));
        let mut push = |(at, node, timer): (ClockMs, usize, &Timer)| {
            out.push(SimAction::Fire {
                node,
                at,
                timer: timer.clone(),
            })
        };
        if any {
            timers.for_each(push);
        } else if let Some(first) = timers.min_by_key(|(at, node, t)| (*at, *node, (*t).clone())) {
            push(first);
        }
    }

    /// Applies one action (which must be enabled), then forgets timers that can no
    /// longer do anything (see [`Handoffs::wants_timer`]).
    pub fn apply(&mut self, action: &SimAction) {
        self.apply_step(action);
        for n in &mut self.nodes {
            let machine = &n.machine;
            n.timers.retain(|(_, t)| machine.wants_timer(t));
        }
    }

    fn apply_step(&mut self, action: &SimAction) {
        match action {
            SimAction::Exec { node } => self.exec(*node),
            SimAction::Deliver { index, duplicate } => self.deliver(*index, *duplicate),
            SimAction::Drop { index } => {
                self.net.remove(*index);
            }
            SimAction::Fire { node, at, timer } => self.fire(*node, *at, timer),
            SimAction::RunCall { node, index, fail } => self.run_call(*node, *index, *fail),
            SimAction::Switchover { node, vm, fail } => self.switchover(*node, vm, *fail),
            SimAction::Crash { node } => self.crash(*node),
        }
    }

    /// Runs the store op at the head of the queue (a crash may have come right before
    /// it), feeds its result back, then runs what follows.
    fn exec(&mut self, node: usize) {
        if let Some(effect) = self.nodes[node].queue.pop_front() {
            if self.execute_counted(node, effect) {
                self.run_until_store(node);
            }
        }
    }

    /// Executes queued effects. A store op that follows a send or a driver call of
    /// the same run stays queued (an [`SimAction::Exec`] runs it), so a crash can fall
    /// between "told someone" and "wrote it down". Elsewhere nothing is lost by running
    /// on: a crash right before such a store op equals a crash before the input plus a
    /// lost message, and a crash right after one equals a crash after its follow-ups
    /// plus lost messages — both covered by the other faults.
    fn run_until_store(&mut self, node: usize) {
        let mut told = false;
        while let Some(effect) = self.nodes[node].queue.front() {
            match effect {
                Effect::Store(_) if told => return,
                Effect::Store(_) => told = false,
                Effect::Send { .. } | Effect::Driver(_) => told = true,
                Effect::ArmTimer { .. } | Effect::Notify(_) => {}
            }
            let Some(effect) = self.nodes[node].queue.pop_front() else {
                return;
            };
            if !self.execute_counted(node, effect) {
                return;
            }
        }
    }

    /// Executes one effect; false when the crash plan crashed the node right after it.
    fn execute_counted(&mut self, node: usize, effect: Effect) -> bool {
        self.execute(node, effect);
        if let Some((crash_node, after)) = self.crash_plan {
            if crash_node == node {
                self.nodes[node].effects_done += 1;
                if self.nodes[node].effects_done == after {
                    self.crash_plan = None;
                    self.crash(node);
                    return false;
                }
            }
        }
        true
    }

    fn execute(&mut self, node: usize, effect: Effect) {
        let now = self.now;
        match effect {
            Effect::Store(op) => {
                let fail = self.store_fails(node);
                let n = &mut self.nodes[node];
                let outcome = if fail {
                    StoreOutcome::Failed
                } else {
                    n.store.apply(&op, now)
                };
                n.machine.handle_store(now, op, outcome);
                self.drain(node);
            }
            Effect::Send { to, msg } => {
                let Some(to) = self.index_of(&to) else {
                    return;
                };
                let env = Envelope {
                    from: node,
                    to,
                    msg,
                };
                if self.record {
                    self.sent.push(env.clone());
                }
                if self.net_dedup && self.net.contains(&env) {
                    return;
                }
                if self.net.len() < self.net_capacity {
                    self.net.push(env);
                    self.net.sort_by(|a, b| {
                        a.sort_key()
                            .cmp(&b.sort_key())
                            .then_with(|| format!("{a:?}").cmp(&format!("{b:?}")))
                    });
                }
            }
            Effect::Driver(call) => {
                let calls = &mut self.nodes[node].calls;
                calls.push(Call {
                    call,
                    started: false,
                    cancelled: false,
                });
                calls.sort_by(|a, b| {
                    let key = |c: &Call| (c.call.vm.clone(), c.call.epoch, c.call.action.kind());
                    key(a).cmp(&key(b))
                });
            }
            Effect::ArmTimer { timer, at } => {
                self.nodes[node].timers.insert((at, timer));
            }
            Effect::Notify(notice) => {
                if self.record {
                    self.notices.push((node, notice));
                }
            }
        }
    }

    fn store_fails(&mut self, node: usize) -> bool {
        match &mut self.store_failures {
            Some((n, skip, _)) if *n == node && *skip > 0 => {
                *skip -= 1;
                false
            }
            Some((n, _, count)) if *n == node && *count > 0 => {
                *count -= 1;
                true
            }
            _ => false,
        }
    }

    fn deliver(&mut self, index: usize, duplicate: bool) {
        let env = if duplicate {
            self.net[index].clone()
        } else {
            self.net.remove(index)
        };
        if self.nodes[env.to].down {
            return;
        }
        let from = self.nodes[env.from].id.clone();
        let now = self.now;
        self.nodes[env.to]
            .machine
            .handle_message(now, &from, env.msg);
        self.after_input(env.to);
    }

    fn fire(&mut self, node: usize, at: ClockMs, timer: &Timer) {
        let n = &mut self.nodes[node];
        if !n.timers.remove(&(at, timer.clone())) {
            return;
        }
        if self.clocked {
            self.now = self.now.max(at);
        }
        n.machine.handle_timer(self.now, timer.clone());
        self.after_input(node);
    }

    fn switchover(&mut self, node: usize, vm: &VmId, fail: bool) {
        let Some(OutMigration::Active { to }) = self.nodes[node].hyper.outgoing.get(vm).copied()
        else {
            return;
        };
        let receiving = self.nodes[to].hyper.copy(vm) == Some(CopyState::Receiving);
        let src = &mut self.nodes[node].hyper;
        if fail || !receiving || src.copy(vm) != Some(CopyState::Running) {
            src.outgoing.insert(vm.clone(), OutMigration::Failed);
            return;
        }
        src.outgoing.insert(vm.clone(), OutMigration::Completed);
        match self.config.source_copy {
            SourceCopy::Kept => src.copies.insert(vm.clone(), CopyState::Paused),
            SourceCopy::Ended => src.copies.remove(vm),
        };
        self.nodes[to]
            .hyper
            .copies
            .insert(vm.clone(), CopyState::Received);
    }

    fn run_call(&mut self, node: usize, index: usize, fail: bool) {
        let now = self.now;
        let c = self.nodes[node].calls[index].clone();
        let vm = c.call.vm.clone();
        let outcome = match &c.call.action {
            DriverAction::MigrateOut { target } if !c.started && !c.cancelled && !fail => {
                let to = self.index_of(&NodeId(target.0.clone()));
                let started = to.is_some_and(|to| self.nodes[node].hyper.start_migration(&vm, to));
                if started {
                    self.nodes[node].calls[index].started = true;
                    return;
                }
                DriverOutcome::MigrateFailed
            }
            DriverAction::MigrateOut { .. } => match self.nodes[node].hyper.outgoing.get(&vm) {
                Some(OutMigration::Completed) if c.started && !fail => DriverOutcome::Migrated,
                _ => DriverOutcome::MigrateFailed,
            },
            action => self.run_simple(node, &vm, action, fail),
        };
        let n = &mut self.nodes[node];
        n.calls.remove(index);
        let reply = DriverReply {
            vm,
            epoch: c.call.epoch,
            outcome,
        };
        n.machine.handle_driver(now, reply);
        self.after_input(node);
    }

    fn run_simple(
        &mut self,
        node: usize,
        vm: &VmId,
        action: &DriverAction,
        fail: bool,
    ) -> DriverOutcome {
        let me = self.nodes[node].id.clone();
        let ends_source = self.config.source_copy == SourceCopy::Ended;
        let n = &mut self.nodes[node];
        let h = &mut n.hyper;
        let finished = |call, ok| DriverOutcome::Finished { call, ok };
        match action {
            DriverAction::PrepareIncoming { .. } => {
                if !fail && h.prepare_incoming(vm) {
                    DriverOutcome::Prepared(MigrationTarget(me.0))
                } else {
                    DriverOutcome::PrepareFailed { no_room: false }
                }
            }
            DriverAction::MigrationStatus if fail => DriverOutcome::StatusUnknown,
            DriverAction::MigrationStatus => DriverOutcome::Status(match h.outgoing.get(vm) {
                None => MigrationStatus::None,
                Some(OutMigration::Active { .. }) => MigrationStatus::Active,
                Some(OutMigration::Completed) => MigrationStatus::Completed,
                Some(OutMigration::Failed) => MigrationStatus::Failed,
            }),
            DriverAction::CancelOutgoing if ends_source && fail => {
                finished(CallKind::CancelOutgoing, false)
            }
            DriverAction::CancelOutgoing if ends_source && !h.cancel_outgoing_ended(vm) => {
                DriverOutcome::SwitchedOver
            }
            DriverAction::CancelOutgoing => {
                h.cancel_outgoing(vm);
                for c in &mut n.calls {
                    if &c.call.vm == vm && !c.started {
                        c.cancelled = true;
                    }
                }
                finished(CallKind::CancelOutgoing, true)
            }
            DriverAction::FinishOutgoing => {
                h.finish_outgoing(vm);
                finished(CallKind::FinishOutgoing, true)
            }
            DriverAction::ResumeIncoming => {
                let ok = h.resume_incoming(vm);
                finished(CallKind::ResumeIncoming, ok)
            }
            DriverAction::CancelIncoming => {
                let ok = h.cancel_incoming(vm);
                finished(CallKind::CancelIncoming, ok)
            }
            DriverAction::IncomingComplete => {
                DriverOutcome::Complete(!fail && h.copy(vm) == Some(CopyState::Received))
            }
            DriverAction::MigrateOut { .. } => DriverOutcome::MigrateFailed,
        }
    }

    /// Crashes `node`'s agent and restarts it from its store (the hypervisor keeps its
    /// VMs, as QEMU processes outlive their agent).
    pub fn crash(&mut self, node: usize) {
        let now = self.now;
        let config = self.config.clone();
        let n = &mut self.nodes[node];
        n.queue.clear();
        n.calls.clear();
        n.timers.clear();
        n.machine = Handoffs::start(
            n.id.clone(),
            config,
            now,
            n.store.entries(),
            n.store.transferred(),
        );
        Self::reconcile(n);
        self.after_input(node);
    }

    /// The agent's start-up reconciliation (docs/design.md §Drivers), as far as handoffs need it: a
    /// VM whose entry is `Running` here runs (a paused copy is resumed, a missing one
    /// started). Copies of VMs in a handoff are left to the machine.
    fn reconcile(n: &mut SimNode) {
        for (vm, e) in n.store.entry_map() {
            if e.held == Held::Running {
                n.hyper.copies.insert(vm.clone(), CopyState::Running);
            }
        }
    }
}
