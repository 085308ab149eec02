//! [`Notice`]s: what the machine tells the agent for logs and metrics. They require no
//! action.

use super::effects::{CallKind, StoreOp};
use super::messages::RefuseReason;
use crate::hypervisor::MigrationStatus;
use crate::types::{NodeId, VmId};

/// Which side of a handoff this node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The source (A): it coordinates.
    Source,
    /// The destination (B): it follows.
    Destination,
}
crate::named_enum!(Role { Source => "source", Destination => "destination" });

/// Something that happened in a handoff.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Notice {
    /// The move committed: for the source its commit point is durable, for the
    /// destination its entry is `Running`.
    Committed {
        /// The VM.
        vm: VmId,
        /// The epoch of the move.
        epoch: u64,
        /// The other side.
        peer: NodeId,
        /// This node's side.
        role: Role,
    },
    /// The move was aborted and this node's store no longer shows it.
    Aborted {
        /// The VM.
        vm: VmId,
        /// The epoch of the move.
        epoch: u64,
        /// The other side.
        peer: NodeId,
        /// This node's side.
        role: Role,
        /// Why.
        reason: AbortReason,
    },
    /// The source forgot its `Transferred` record after the destination's ack.
    Settled {
        /// The VM.
        vm: VmId,
        /// The epoch of the move.
        epoch: u64,
        /// The destination.
        peer: NodeId,
    },
    /// The source forgot its `Transferred` record because the operator forgot the
    /// destination; its paused copy is kept (not quit) for the operator to inspect.
    Orphaned {
        /// The VM.
        vm: VmId,
        /// The epoch of the move.
        epoch: u64,
        /// The forgotten destination.
        peer: NodeId,
    },
    /// An input was not acted on (duplicate, stale, unexpected); nothing changed.
    Ignored {
        /// The VM.
        vm: VmId,
        /// The epoch named by the input.
        epoch: u64,
        /// What was ignored (message kind, timer or driver call).
        input: &'static str,
        /// Why.
        reason: IgnoreReason,
    },
    /// A driver call failed where the protocol goes on regardless (cancel, finish, resume):
    /// the agent's reconciliation has to look at this VM.
    DriverTrouble {
        /// The VM.
        vm: VmId,
        /// The epoch of the move.
        epoch: u64,
        /// The call that failed.
        call: CallKind,
    },
    /// A store op failed; it is retried after `store_retry_ms`.
    StoreRetrying {
        /// The op that failed.
        op: StoreOp,
    },
    /// The store refused a transition the machine expected to be allowed: its durable
    /// state is not what the machine believed. The machine forgot the handoff (it does
    /// not guess); the store's records are resolved at the next restart's recovery.
    Anomaly {
        /// The refused op.
        op: StoreOp,
    },
}

/// Why a handoff was aborted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AbortReason {
    /// The store refused or failed the first step; nothing changed.
    StoreRefused,
    /// The destination did not answer `Prepare` in time.
    PrepareTimeout,
    /// The destination refused.
    Refused(RefuseReason),
    /// The driver reported the migration failed.
    MigrateFailed,
    /// The migration did not finish in time.
    MigrateTimeout,
    /// Source recovery: the hypervisor did not report a completed migration
    /// (`None` when it could not be asked).
    Recovered(Option<MigrationStatus>),
    /// Destination: the source said abort (message or durable outcome).
    SourceAborted,
    /// The operator forgot the peer; for a destination, its copy was incomplete.
    PeerForgotten,
}

/// Why an input was ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IgnoreReason {
    /// No handoff of this VM under this epoch with this peer (stale or duplicate).
    Unknown,
    /// The handoff is at another step; the input is a duplicate or arrived late.
    WrongStep,
    /// The message failed validation.
    Invalid,
    /// The message contradicts what this node knows (e.g. `Commit` after `Abort`).
    Conflict,
}
