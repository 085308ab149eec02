//! What the machine asks the agent to do: [`Effect`]s, drained with
//! [`Handoffs::poll_effect`](super::Handoffs::poll_effect) and executed in order.
//!
//! A store effect must have completed — durably — and its result fed back with
//! `handle_store` before the next effect runs and before any other input is handled.
//! Nothing queued behind a store effect depends on its outcome: what depends on a write
//! is queued when its result comes back.

use super::notices::Notice;
use super::payload::Payload;
use super::HandoffMsg;
use crate::hypervisor::MigrationTarget;
use crate::types::{NodeId, ScheduleEntry, VmId, VmState};

/// Time in milliseconds on the agent's monotonic clock, passed in with every input.
pub type ClockMs = u64;

/// One thing for the agent to do.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Effect {
    /// Run this store transition (transaction + flush), then call `handle_store` with it.
    Store(StoreOp),
    /// Send `msg` to `to` over the RPC channel (fire and forget; losses are tolerated).
    Send {
        /// The peer.
        to: NodeId,
        /// The message.
        msg: HandoffMsg,
    },
    /// Start a driver call (it may run long: spawn it) and feed its result to
    /// `handle_driver`.
    Driver(DriverCall),
    /// Call `handle_timer(timer)` once the clock reaches `at` (or later). Timers are never
    /// cancelled: a stale one is a no-op.
    ArmTimer {
        /// The timer.
        timer: Timer,
        /// When it fires.
        at: ClockMs,
    },
    /// Something happened that the agent logs or counts; nothing to execute.
    Notify(Notice),
}

/// A transition of `ballast-store`, named as the store names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StoreOp {
    /// `begin_migrate_out(vm, to, epoch)`: `Running` → `MigratingOut { to, epoch }`.
    BeginMigrateOut {
        /// The VM.
        vm: VmId,
        /// The destination.
        to: NodeId,
        /// The new epoch.
        epoch: u64,
    },
    /// `abort_migrate_out(vm, epoch)`: `MigratingOut` → `Running` (epoch kept as seen).
    AbortMigrateOut {
        /// The VM.
        vm: VmId,
        /// The epoch of the move.
        epoch: u64,
    },
    /// `commit_migrate_out(vm, epoch)`: the commit point — the entry is deleted and
    /// `Transferred { vm, to, epoch }` recorded in one transaction.
    CommitMigrateOut {
        /// The VM.
        vm: VmId,
        /// The epoch of the move.
        epoch: u64,
    },
    /// `forget_transfer(vm, epoch)`.
    ForgetTransfer {
        /// The VM.
        vm: VmId,
        /// The epoch of the move.
        epoch: u64,
    },
    /// `accept_incoming(entry)` with the entry built by [`StoreOp::incoming_entry`].
    AcceptIncoming {
        /// The VM.
        vm: VmId,
        /// The source.
        from: NodeId,
        /// The epoch of the move.
        epoch: u64,
        /// Spec and factors for the entry.
        payload: Payload,
    },
    /// `promote_incoming(vm, epoch, now_unix_ms)`: `Incoming` → `Running { epoch }`. The
    /// agent supplies the wall-clock time for `last_moved_unix_ms`.
    PromoteIncoming {
        /// The VM.
        vm: VmId,
        /// The epoch of the move.
        epoch: u64,
    },
    /// `drop_incoming(vm, epoch)`.
    DropIncoming {
        /// The VM.
        vm: VmId,
        /// The epoch of the move.
        epoch: u64,
    },
}

impl StoreOp {
    /// The VM the op is about.
    pub fn vm(&self) -> &VmId {
        match self {
            Self::BeginMigrateOut { vm, .. }
            | Self::AbortMigrateOut { vm, .. }
            | Self::CommitMigrateOut { vm, .. }
            | Self::ForgetTransfer { vm, .. }
            | Self::AcceptIncoming { vm, .. }
            | Self::PromoteIncoming { vm, .. }
            | Self::DropIncoming { vm, .. } => vm,
        }
    }

    /// The epoch of the move the op belongs to.
    pub fn epoch(&self) -> u64 {
        match self {
            Self::BeginMigrateOut { epoch, .. }
            | Self::AbortMigrateOut { epoch, .. }
            | Self::CommitMigrateOut { epoch, .. }
            | Self::ForgetTransfer { epoch, .. }
            | Self::AcceptIncoming { epoch, .. }
            | Self::PromoteIncoming { epoch, .. }
            | Self::DropIncoming { epoch, .. } => *epoch,
        }
    }

    /// Which store transition this is.
    pub fn kind(&self) -> StoreOpKind {
        match self {
            Self::BeginMigrateOut { .. } => StoreOpKind::BeginMigrateOut,
            Self::AbortMigrateOut { .. } => StoreOpKind::AbortMigrateOut,
            Self::CommitMigrateOut { .. } => StoreOpKind::CommitMigrateOut,
            Self::ForgetTransfer { .. } => StoreOpKind::ForgetTransfer,
            Self::AcceptIncoming { .. } => StoreOpKind::AcceptIncoming,
            Self::PromoteIncoming { .. } => StoreOpKind::PromoteIncoming,
            Self::DropIncoming { .. } => StoreOpKind::DropIncoming,
        }
    }

    /// The op's store method name, for logs.
    pub fn name(&self) -> &'static str {
        self.kind().as_str()
    }

    /// For `AcceptIncoming`: the entry to pass to `accept_incoming` (state
    /// `Incoming { from, epoch }`, entry epoch = the move's epoch, not pinned).
    pub fn incoming_entry(&self) -> Option<ScheduleEntry> {
        match self {
            Self::AcceptIncoming {
                vm,
                from,
                epoch,
                payload,
            } => Some(ScheduleEntry {
                vm: vm.clone(),
                spec: payload.spec.clone(),
                factors: payload.factors,
                state: VmState::Incoming {
                    from: from.clone(),
                    epoch: *epoch,
                },
                epoch: *epoch,
                pinned: false,
                last_moved_unix_ms: None,
            }),
            _ => None,
        }
    }
}

/// A driver call for one VM, tagged with the epoch of the move it serves so that its
/// result can be matched (a result for another epoch is stale and ignored).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DriverCall {
    /// The VM.
    pub vm: VmId,
    /// The epoch of the move; hand it back in the [`DriverReply`](super::DriverReply).
    pub epoch: u64,
    /// What to call.
    pub action: DriverAction,
}

/// The `Driver` trait method to call (`node::driver::Driver`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DriverAction {
    /// `prepare_incoming(vm, &payload.spec)`.
    PrepareIncoming {
        /// Spec (and factors) of the VM.
        payload: Payload,
    },
    /// `migrate_out(vm, target, progress)`.
    MigrateOut {
        /// Where B's paused copy waits.
        target: MigrationTarget,
    },
    /// `migration_status(vm)` (source recovery).
    MigrationStatus,
    /// `cancel_outgoing(vm)`. Must also make a `migrate_out` of the same VM that has not
    /// started yet fail.
    CancelOutgoing,
    /// `finish_outgoing(vm)`.
    FinishOutgoing,
    /// `resume_incoming(vm)`.
    ResumeIncoming,
    /// `cancel_incoming(vm)`.
    CancelIncoming,
    /// `incoming_complete(vm)` (only after an operator's forget of the source).
    IncomingComplete,
}

impl DriverAction {
    /// The call's kind, without its arguments.
    pub fn kind(&self) -> CallKind {
        match self {
            Self::PrepareIncoming { .. } => CallKind::PrepareIncoming,
            Self::MigrateOut { .. } => CallKind::MigrateOut,
            Self::MigrationStatus => CallKind::MigrationStatus,
            Self::CancelOutgoing => CallKind::CancelOutgoing,
            Self::FinishOutgoing => CallKind::FinishOutgoing,
            Self::ResumeIncoming => CallKind::ResumeIncoming,
            Self::CancelIncoming => CallKind::CancelIncoming,
            Self::IncomingComplete => CallKind::IncomingComplete,
        }
    }
}

/// The kind of a driver call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CallKind {
    /// `prepare_incoming`.
    PrepareIncoming,
    /// `migrate_out`.
    MigrateOut,
    /// `migration_status`.
    MigrationStatus,
    /// `cancel_outgoing`.
    CancelOutgoing,
    /// `finish_outgoing`.
    FinishOutgoing,
    /// `resume_incoming`.
    ResumeIncoming,
    /// `cancel_incoming`.
    CancelIncoming,
    /// `incoming_complete`.
    IncomingComplete,
}

/// A timer, armed for one move (VM + epoch) and one purpose. When it fires and the
/// machine is no longer at that step of that move, it does nothing.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timer {
    /// The VM.
    pub vm: VmId,
    /// The epoch of the move it was armed for.
    pub epoch: u64,
    /// Its purpose.
    pub kind: TimerKind,
}

/// What a timer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimerKind {
    /// Source: re-send `Prepare` while waiting for `Prepared`.
    PrepareRetry,
    /// Source: give up waiting for `Prepared` (abort).
    PrepareDeadline,
    /// Source: give up the migration (cancel, abort).
    MigrateDeadline,
    /// Source, after the commit point: re-send `Commit` until `CommitAck`.
    CommitRetry,
    /// Destination: ask the source for the outcome (`QueryOutcome`).
    Query,
    /// Either side: re-run a store op that failed.
    StoreRetry,
    /// Source with a driver that ends the source copy: re-run a `cancel_outgoing` that
    /// failed (the migration may have completed; only the driver can tell).
    CancelRetry,
}

/// The store transitions a [`StoreOp`] can be, named as the store's methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StoreOpKind {
    /// `begin_migrate_out`.
    BeginMigrateOut,
    /// `abort_migrate_out`.
    AbortMigrateOut,
    /// `commit_migrate_out`.
    CommitMigrateOut,
    /// `forget_transfer`.
    ForgetTransfer,
    /// `accept_incoming`.
    AcceptIncoming,
    /// `promote_incoming`.
    PromoteIncoming,
    /// `drop_incoming`.
    DropIncoming,
}
crate::named_enum!(StoreOpKind {
    BeginMigrateOut => "begin_migrate_out",
    AbortMigrateOut => "abort_migrate_out",
    CommitMigrateOut => "commit_migrate_out",
    ForgetTransfer => "forget_transfer",
    AcceptIncoming => "accept_incoming",
    PromoteIncoming => "promote_incoming",
    DropIncoming => "drop_incoming",
});
