//! The machine's in-memory record of each handoff: who the peer is, the epoch, and the
//! step it is at ([`Phase`]). Every phase whose name ends a store or driver call waits
//! for exactly that call's result.

use super::effects::StoreOp;
use super::notices::{AbortReason, Role};
use super::payload::Payload;
use super::HandoffStep;
use crate::hypervisor::MigrationTarget;
use crate::types::{NodeId, VmId};

/// One handoff before it resolves (source before its commit is durable; destination
/// before its entry is `Running` or dropped).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Handoff {
    /// The other side.
    pub(crate) peer: NodeId,
    /// The epoch of the move.
    pub(crate) epoch: u64,
    /// The step.
    pub(crate) phase: Phase,
    /// The VM's guest memory in bytes (`HandoffConfig::bytes_max`).
    pub(crate) mem_bytes: u64,
}

/// What the destination does once `prepare_incoming` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum AfterPrepare {
    /// Answer the source (`Prepared` or `PrepareRefused`).
    Answer,
    /// The source aborted meanwhile: cancel the copy and drop the entry.
    Abort,
    /// The operator forgot the source meanwhile: check whether the copy is complete.
    CheckComplete,
}

/// The step a handoff is at.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Phase {
    /// Source: `begin_migrate_out` running.
    Beginning { payload: Payload },
    /// Source: `Prepare` sent, waiting for `Prepared`.
    Preparing { payload: Payload },
    /// Source: `migrate_out` running.
    Migrating,
    /// Source: `commit_migrate_out` running (or waiting for its retry).
    Committing,
    /// Source recovery: `migration_status` running.
    CheckingStatus,
    /// Source: `cancel_outgoing` running, then abort.
    Cancelling { reason: AbortReason },
    /// Source: `abort_migrate_out` running (or waiting for its retry).
    Aborting { reason: AbortReason },
    /// Destination: `accept_incoming` running.
    Accepting { payload: Payload },
    /// Destination: `prepare_incoming` running.
    PreparingIncoming {
        payload: Payload,
        then: AfterPrepare,
    },
    /// Destination: waiting for `Commit` / `Abort`, asking the source now and then.
    /// `target` is known when this incarnation answered `Prepared`.
    Waiting {
        payload: Option<Payload>,
        target: Option<MigrationTarget>,
    },
    /// Destination: `promote_incoming` running (or waiting for its retry).
    Promoting,
    /// Destination: `cancel_incoming` running, then drop.
    CancellingIncoming { reason: AbortReason },
    /// Destination: `drop_incoming` running (or waiting for its retry).
    Dropping { reason: AbortReason },
    /// Destination after forget of the source: `incoming_complete` running.
    CheckingComplete,
}

impl Phase {
    /// Which side of the handoff this phase belongs to.
    pub(crate) fn role(&self) -> Role {
        match self {
            Self::Beginning { .. }
            | Self::Preparing { .. }
            | Self::Migrating
            | Self::Committing
            | Self::CheckingStatus
            | Self::Cancelling { .. }
            | Self::Aborting { .. } => Role::Source,
            _ => Role::Destination,
        }
    }

    /// The phase as `status` shows it.
    pub(crate) fn step(&self) -> HandoffStep {
        match self {
            Self::Beginning { .. } => HandoffStep::Beginning,
            Self::Preparing { .. } => HandoffStep::Preparing,
            Self::Migrating => HandoffStep::Migrating,
            Self::Committing => HandoffStep::Committing,
            Self::CheckingStatus => HandoffStep::CheckingStatus,
            Self::Cancelling { .. } => HandoffStep::Cancelling,
            Self::Aborting { .. } => HandoffStep::Aborting,
            Self::Accepting { .. } => HandoffStep::Accepting,
            Self::PreparingIncoming { .. } => HandoffStep::PreparingIncoming,
            Self::Waiting { .. } => HandoffStep::Waiting,
            Self::Promoting => HandoffStep::Promoting,
            Self::CancellingIncoming { .. } => HandoffStep::CancellingIncoming,
            Self::Dropping { .. } => HandoffStep::Dropping,
            Self::CheckingComplete => HandoffStep::CheckingComplete,
        }
    }

    /// The store op this phase waits for, to re-run it after a failure.
    pub(crate) fn store_op(&self, vm: &VmId, peer: &NodeId, epoch: u64) -> Option<StoreOp> {
        let vm = vm.clone();
        Some(match self {
            Self::Beginning { .. } => StoreOp::BeginMigrateOut {
                vm,
                to: peer.clone(),
                epoch,
            },
            Self::Committing => StoreOp::CommitMigrateOut { vm, epoch },
            Self::Aborting { .. } => StoreOp::AbortMigrateOut { vm, epoch },
            Self::Accepting { payload } => StoreOp::AcceptIncoming {
                vm,
                from: peer.clone(),
                epoch,
                payload: payload.clone(),
            },
            Self::Promoting => StoreOp::PromoteIncoming { vm, epoch },
            Self::Dropping { .. } => StoreOp::DropIncoming { vm, epoch },
            _ => return None,
        })
    }
}

/// A source's handoff after its commit point, until the destination acks and the
/// `Transferred` record is forgotten.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Settling {
    /// The destination.
    pub(crate) peer: NodeId,
    /// The step.
    pub(crate) step: SettleStep,
}

/// The step of a settling record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum SettleStep {
    /// Re-sending `Commit` until `CommitAck`.
    AwaitAck,
    /// `finish_outgoing` running.
    Finishing,
    /// `forget_transfer` running (or waiting for its retry); `orphaned` when the
    /// destination was forgotten rather than acked.
    Forgetting { orphaned: bool },
}
