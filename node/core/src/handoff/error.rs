//! [`StartError`]: why a move was not started.

use crate::types::{NodeId, VmId};

/// A move could not start. In every case nothing changed and no effect was queued.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// The entry is not `Running` here (already in a handoff, or incoming).
    #[error("VM {0} is not running here")]
    NotRunning(VmId),
    /// This machine already handles a handoff of the VM (or still settles one).
    #[error("VM {0} is already in a handoff")]
    Busy(VmId),
    /// The destination is this node.
    #[error("cannot move VM {vm} to its own node {node}")]
    SelfTarget {
        /// The VM.
        vm: VmId,
        /// This node.
        node: NodeId,
    },
    /// `handoffs_max` handoffs are already running.
    #[error("too many handoffs at once ({0})")]
    TooMany(usize),
    /// `outgoing_max` handoffs as source are already running.
    #[error("outgoing migration limit reached ({0} under way)")]
    OutgoingLimit(usize),
    /// The VMs in handoffs here already hold this many bytes of guest memory, and this
    /// VM's would pass `bytes_max`.
    #[error("migration bytes limit reached ({0} bytes of guest memory under way)")]
    BytesLimit(u64),
}
