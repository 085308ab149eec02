//! The handoff wire messages (docs/design.md §Handoff): one enum, every variant naming the VM and
//! the epoch of the move it belongs to, so a duplicate or a stale replay can be recognised.
//!
//! The RPC layer wraps [`HandoffMsg`] in its versioned envelope and encodes it with
//! bincode 2; [`HandoffMsg::validate`] bounds what the machine accepts after decoding.

use super::payload::Payload;
use crate::hypervisor::MigrationTarget;
use crate::types::VmId;
use serde::{Deserialize, Serialize};

/// Longest VM id accepted in a message, in bytes.
pub const VM_ID_LEN_MAX: usize = 256;
/// Longest migration target accepted in a message, in bytes.
pub const TARGET_LEN_MAX: usize = 1024;

/// A message between the source (A) and the destination (B) of a handoff.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HandoffMsg {
    /// A → B: take `vm` under `epoch`; B stores `Incoming` and prepares a paused copy.
    Prepare {
        /// The VM.
        vm: VmId,
        /// The epoch of the move.
        epoch: u64,
        /// Its spec and load factors.
        payload: Payload,
    },
    /// B → A: the paused copy waits for the VM's state at `target`.
    Prepared {
        /// The VM.
        vm: VmId,
        /// The epoch of the move.
        epoch: u64,
        /// Where to migrate to.
        target: MigrationTarget,
    },
    /// B → A: B will not (or cannot) take the VM under this epoch.
    PrepareRefused {
        /// The VM.
        vm: VmId,
        /// The epoch of the move.
        epoch: u64,
        /// Why.
        reason: RefuseReason,
    },
    /// A → B: A's commit point is durable; B owns the VM now.
    Commit {
        /// The VM.
        vm: VmId,
        /// The epoch of the move.
        epoch: u64,
    },
    /// B → A: B's store says `Running` under this epoch; A may quit its copy and forget.
    CommitAck {
        /// The VM.
        vm: VmId,
        /// The epoch of the move.
        epoch: u64,
    },
    /// A → B: A's abort is durable; B drops its incoming copy and entry.
    Abort {
        /// The VM.
        vm: VmId,
        /// The epoch of the move.
        epoch: u64,
    },
    /// B → A: what became of this move? (B waiting, or recovering with `Incoming`.)
    QueryOutcome {
        /// The VM.
        vm: VmId,
        /// The epoch of the move.
        epoch: u64,
    },
    /// A → B: the answer to [`HandoffMsg::QueryOutcome`], read from A's durable state.
    Outcome {
        /// The VM.
        vm: VmId,
        /// The epoch of the move.
        epoch: u64,
        /// What A's store says.
        outcome: Outcome,
    },
}

/// Why a destination refused a `Prepare`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RefuseReason {
    /// The epoch is not above the highest this node has seen for the VM. Nothing stored.
    StaleEpoch,
    /// This node is busy with the VM (another handoff of it) or with too many handoffs.
    /// Nothing stored.
    Busy,
    /// The hypervisor has no room for the VM. `Incoming` stays stored until A aborts.
    NoRoom,
    /// The store or the hypervisor failed. If `Incoming` was stored it stays until A aborts.
    Failed,
    /// The VM would break a hard placement rule on this node (docs/design.md §Placement
    /// rules). Nothing stored.
    BreaksRule,
}

/// A source's durable answer about one move.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// A holds `Transferred` for this epoch: the destination owns the VM.
    Committed,
    /// A holds the VM as `MigratingOut` under this epoch: not decided yet.
    Pending,
    /// A holds neither: the move did not commit and never will.
    Aborted,
}

/// A decoded message that must not be acted on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMsg {
    /// The VM id is empty or longer than [`VM_ID_LEN_MAX`]. The message is dropped.
    #[error("bad VM id length {0}")]
    VmId(usize),
    /// Epoch 0 names no move (every move raises the epoch to at least 1). Dropped.
    #[error("epoch 0 names no move")]
    EpochZero,
    /// The migration target is empty or longer than [`TARGET_LEN_MAX`]. Dropped.
    #[error("bad migration target length {0}")]
    Target(usize),
    /// The payload's spec or factors are out of bounds. Dropped.
    #[error("bad payload: {0}")]
    Payload(&'static str),
}

impl HandoffMsg {
    /// The VM the message is about.
    pub fn vm(&self) -> &VmId {
        match self {
            Self::Prepare { vm, .. }
            | Self::Prepared { vm, .. }
            | Self::PrepareRefused { vm, .. }
            | Self::Commit { vm, .. }
            | Self::CommitAck { vm, .. }
            | Self::Abort { vm, .. }
            | Self::QueryOutcome { vm, .. }
            | Self::Outcome { vm, .. } => vm,
        }
    }

    /// The epoch of the move the message belongs to.
    pub fn epoch(&self) -> u64 {
        match self {
            Self::Prepare { epoch, .. }
            | Self::Prepared { epoch, .. }
            | Self::PrepareRefused { epoch, .. }
            | Self::Commit { epoch, .. }
            | Self::CommitAck { epoch, .. }
            | Self::Abort { epoch, .. }
            | Self::QueryOutcome { epoch, .. }
            | Self::Outcome { epoch, .. } => *epoch,
        }
    }

    /// Which message this is.
    pub fn msg_kind(&self) -> MsgKind {
        match self {
            Self::Prepare { .. } => MsgKind::Prepare,
            Self::Prepared { .. } => MsgKind::Prepared,
            Self::PrepareRefused { .. } => MsgKind::PrepareRefused,
            Self::Commit { .. } => MsgKind::Commit,
            Self::CommitAck { .. } => MsgKind::CommitAck,
            Self::Abort { .. } => MsgKind::Abort,
            Self::QueryOutcome { .. } => MsgKind::QueryOutcome,
            Self::Outcome { .. } => MsgKind::Outcome,
        }
    }

    /// The message's name, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        self.msg_kind().as_str()
    }

    /// Checks the bounds the machine relies on. Called by the machine on every message;
    /// the RPC layer may call it earlier to refuse garbage before queueing it.
    pub fn validate(&self) -> Result<(), InvalidMsg> {
        let vm_len = self.vm().as_str().len();
        if vm_len == 0 || vm_len > VM_ID_LEN_MAX {
            return Err(InvalidMsg::VmId(vm_len));
        }
        if self.epoch() == 0 {
            return Err(InvalidMsg::EpochZero);
        }
        match self {
            Self::Prepared { target, .. } => {
                let len = target.0.len();
                if len == 0 || len > TARGET_LEN_MAX {
                    return Err(InvalidMsg::Target(len));
                }
            }
            Self::Prepare { payload, .. } => payload.validate().map_err(InvalidMsg::Payload)?,
            _ => {}
        }
        Ok(())
    }
}

/// The kinds of [`HandoffMsg`], by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MsgKind {
    /// `prepare`.
    Prepare,
    /// `prepared`.
    Prepared,
    /// `prepare_refused`.
    PrepareRefused,
    /// `commit`.
    Commit,
    /// `commit_ack`.
    CommitAck,
    /// `abort`.
    Abort,
    /// `query_outcome`.
    QueryOutcome,
    /// `outcome`.
    Outcome,
}
crate::named_enum!(MsgKind {
    Prepare => "prepare",
    Prepared => "prepared",
    PrepareRefused => "prepare_refused",
    Commit => "commit",
    CommitAck => "commit_ack",
    Abort => "abort",
    QueryOutcome => "query_outcome",
    Outcome => "outcome",
});
