//! Inputs that answer the machine's own effects: store results and driver results.
//! (Messages, timers, moves, recovery and forget are plain arguments of the
//! `handle_*` methods.)

use crate::hypervisor::{MigrationStatus, MigrationTarget};
use crate::types::VmId;

use super::effects::CallKind;

/// How a [`StoreOp`](super::StoreOp) ended. The agent maps the store's result:
/// `Ok(Applied | Duplicate)` → `Done`; `Err(StaleEpoch)` → `Refused(StaleEpoch)`; any
/// other refusal (`StoreError::is_refusal`) → `Refused(WrongState)`; a storage failure
/// (`Storage`, `NotFlushed`, I/O) → `Failed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreOutcome {
    /// The transition is durable (or was already).
    Done,
    /// The store refused it; nothing changed and retrying will not help.
    Refused(StoreRefusal),
    /// The store failed; nothing durable changed and retrying may help.
    Failed,
}

/// Why the store refused a transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreRefusal {
    /// The epoch is not above the highest the store has seen for the VM.
    StaleEpoch,
    /// The VM is absent, in another state or held under another epoch.
    WrongState,
    /// The VM would break a hard placement rule here.
    BreaksRule,
}

/// The result of a [`DriverCall`](super::DriverCall), handed back with its VM and epoch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DriverReply {
    /// The VM of the call.
    pub vm: VmId,
    /// The epoch the call carried.
    pub epoch: u64,
    /// What the driver said.
    pub outcome: DriverOutcome,
}

/// What a driver call returned.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DriverOutcome {
    /// `prepare_incoming` succeeded.
    Prepared(MigrationTarget),
    /// `prepare_incoming` failed; `no_room` when the hypervisor lacks the resources.
    PrepareFailed {
        /// The failure was for lack of room.
        no_room: bool,
    },
    /// `migrate_out` returned Ok: switchover complete.
    Migrated,
    /// `migrate_out` failed.
    MigrateFailed,
    /// `migration_status` answered.
    Status(MigrationStatus),
    /// `migration_status` failed (the machine treats it as "not completed").
    StatusUnknown,
    /// `cancel_outgoing` found the switchover complete and the source copy gone (drivers
    /// with [`SourceCopy::Ended`](super::SourceCopy::Ended)): nothing was cancelled, the
    /// destination holds the only copy.
    SwitchedOver,
    /// `incoming_complete` answered (an error counts as `false`).
    Complete(bool),
    /// One of the calls without a value (`cancel_outgoing`, `finish_outgoing`,
    /// `resume_incoming`, `cancel_incoming`) returned; `ok` is false on error.
    Finished {
        /// Which call.
        call: CallKind,
        /// Whether it succeeded.
        ok: bool,
    },
}
