//! The handoff protocol as a stateright [`Model`]: a simulated cluster
//! (`ballast_node::handoff::world::World`, which steps the agent's own `Handoffs`
//! machines) whose next states are every enabled protocol step and fault — message loss,
//! duplication and reordering, agent crashes that keep only durable state, migration and
//! driver failures, timers firing at any moment — within the bounds of [`Bounds`].
//!
//! Properties: I1 and I2 (`always`) and "a handoff commits" (`sometimes`).
//!
//! Files: `check` (runs the checker and reports).

mod check;

pub use check::{run, CheckReport, PropertyResult};

use ballast_node::handoff::world::{vm_id, Faults, Held, SimAction, World};
use ballast_node::handoff::{HandoffConfig, PlantedBug, Role, SourceCopy};
use stateright::{Model, Property};

/// Name of the I1 property.
pub const I1: &str = "I1 no loss: exactly one owner per VM";
/// Name of the I2 property.
pub const I2: &str = "I2 no double run";
/// Name of the reachability property.
pub const COMMITS: &str = "a handoff commits";
/// Property name: a node has two handoffs out at once (checked when `limit` > 1).
pub const CONCURRENT: &str = "two handoffs out of one node at once";

/// What bounds the state space. `None` means unbounded.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Bounds {
    /// Hosts.
    pub nodes: usize,
    /// VMs (VM `i` starts on node `i % nodes`).
    pub vms: usize,
    /// Moves started per VM.
    pub moves_per_vm: u8,
    /// Agent crashes (each followed at once by recovery).
    pub crashes: u8,
    /// Duplicated deliveries.
    pub duplicates: u8,
    /// Lost messages (`None`: any number).
    pub drops: Option<u8>,
    /// Failed migrations or driver calls.
    pub driver_failures: u8,
    /// Messages in flight at most (a send beyond it is lost).
    pub net_capacity: usize,
    /// Whether a VM may move to any other node; otherwise VM `i` moves only to the
    /// next node after its holder (so with 3 nodes and 2 VMs, n1 is at once the
    /// destination of vm0 and the source of vm1).
    pub any_destination: bool,
    /// Handoffs each way at once per node (`outgoing_max`, `incoming_max`), and as many
    /// VMs' memory in flight (`bytes_max`). Above 1, every VM starts on node 0, so that
    /// node 0 hands several off at once and node 1 takes several in.
    pub limit: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            nodes: 3,
            vms: 2,
            moves_per_vm: 1,
            crashes: 1,
            duplicates: 1,
            drops: None,
            driver_failures: 0,
            net_capacity: 2,
            any_destination: false,
            limit: 1,
        }
    }
}

/// The model: bounds and the machines' planted bug (off for the real check).
#[derive(Clone, Debug)]
pub struct HandoffModel {
    /// State-space bounds.
    pub bounds: Bounds,
    /// A deliberate protocol bug, to show the check can fail.
    pub bug: PlantedBug,
    /// What the simulated hypervisors leave of a source copy after the switchover.
    pub source_copy: SourceCopy,
}

/// A state: the cluster and the fault budgets left.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ModelState {
    /// The simulated cluster.
    pub world: World,
    /// Moves left per VM.
    pub moves_left: Vec<u8>,
    /// Crashes left.
    pub crashes_left: u8,
    /// Duplicates left.
    pub duplicates_left: u8,
    /// Drops left (`None`: unbounded).
    pub drops_left: Option<u8>,
    /// Driver failures left.
    pub failures_left: u8,
}

/// A step of the model.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ModelAction {
    /// The balancer on `from` starts moving VM `vm` to `to`.
    Move {
        /// VM index.
        vm: usize,
        /// Source node index.
        from: usize,
        /// Destination node index.
        to: usize,
    },
    /// A protocol step or fault of the cluster.
    Step(SimAction),
}

impl Model for HandoffModel {
    type State = ModelState;
    type Action = ModelAction;

    fn init_states(&self) -> Vec<ModelState> {
        let b = &self.bounds;
        // The limits per node (`balancing.max_outgoing`, `max_incoming`,
        // `max_bytes_in_flight`), enforced inside the machine: `limit` handoffs each way,
        // and the memory of `limit` VMs (the world's VMs have 64 MiB each).
        let limit = b.limit.max(1);
        let config = HandoffConfig {
            planted_bug: self.bug,
            outgoing_max: limit,
            incoming_max: limit,
            bytes_max: (limit as u64) * (64 << 20),
            source_copy: self.source_copy,
            ..HandoffConfig::default()
        };
        let homes: Vec<usize> = if limit > 1 {
            vec![0; b.vms]
        } else {
            (0..b.vms).map(|i| i % b.nodes).collect()
        };
        let mut world = World::new(b.nodes, &homes, config);
        world.clocked = false;
        world.net_dedup = true;
        world.net_capacity = b.net_capacity;
        vec![ModelState {
            world,
            moves_left: vec![b.moves_per_vm; b.vms],
            crashes_left: b.crashes,
            duplicates_left: b.duplicates,
            drops_left: b.drops,
            failures_left: b.driver_failures,
        }]
    }

    fn actions(&self, state: &ModelState, actions: &mut Vec<ModelAction>) {
        let w = &state.world;
        for (vm, left) in state.moves_left.iter().enumerate() {
            if *left == 0 {
                continue;
            }
            let id = vm_id(vm);
            let holder = (0..w.nodes.len()).find(|&i| {
                w.can_input(i)
                    && !w.nodes[i].machine.is_busy(&id)
                    && w.nodes[i]
                        .store
                        .entry(&id)
                        .is_some_and(|e| e.held == Held::Running)
            });
            if let Some(from) = holder {
                let n = w.nodes.len();
                if self.bounds.any_destination {
                    for to in (0..n).filter(|&to| to != from) {
                        actions.push(ModelAction::Move { vm, from, to });
                    }
                } else {
                    actions.push(ModelAction::Move {
                        vm,
                        from,
                        to: (from + 1) % n,
                    });
                }
            }
        }
        let faults = Faults {
            duplicate: state.duplicates_left > 0,
            drop: state.drops_left != Some(0),
            crash: state.crashes_left > 0,
            fail_migration: state.failures_left > 0,
            fail_calls: state.failures_left > 0,
            early_timers: true,
        };
        let mut steps = Vec::new();
        w.actions(faults, &mut steps);
        actions.extend(steps.into_iter().map(ModelAction::Step));
    }

    fn next_state(&self, state: &ModelState, action: ModelAction) -> Option<ModelState> {
        let mut next = state.clone();
        match action {
            ModelAction::Move { vm, from, to } => {
                next.world.start_move(from, &vm_id(vm), to).ok()?;
                next.moves_left[vm] -= 1;
            }
            ModelAction::Step(step) => {
                match &step {
                    SimAction::Deliver {
                        duplicate: true, ..
                    } => next.duplicates_left -= 1,
                    SimAction::Drop { .. } => {
                        if let Some(d) = &mut next.drops_left {
                            *d -= 1;
                        }
                    }
                    SimAction::Crash { .. } => next.crashes_left -= 1,
                    SimAction::Switchover { fail: true, .. }
                    | SimAction::RunCall { fail: true, .. } => next.failures_left -= 1,
                    _ => {}
                }
                next.world.apply(&step);
            }
        }
        Some(next)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut properties = vec![
            Property::always(I1, |_, s: &ModelState| s.world.check_i1().is_ok()),
            Property::always(I2, |_, s: &ModelState| s.world.check_i2().is_ok()),
            Property::sometimes(COMMITS, |_, s: &ModelState| {
                s.world.nodes.iter().any(|n| {
                    n.store
                        .entry_map()
                        .values()
                        .any(|e| e.held == Held::Running && e.epoch >= 1)
                })
            }),
        ];
        if self.bounds.limit > 1 {
            // The check covers concurrent handoffs only if they happen.
            properties.push(Property::sometimes(CONCURRENT, |_, s: &ModelState| {
                s.world
                    .nodes
                    .iter()
                    .any(|n| n.machine.count_role(Role::Source) >= 2)
            }));
        }
        properties
    }
}
