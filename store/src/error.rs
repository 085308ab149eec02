//! The store's error type and the outcome of an idempotent transition.
//!
//! Errors are split in three groups: opening (the directory is not this node's store, or
//! cannot be read), refused transitions (normal at runtime: the VM is not in the state the
//! caller expected, or an epoch is stale; nothing changed) and storage failures (sled or
//! the file system failed; each variant says whether the change may have happened).

use crate::types::{NodeId, VmId, VmState};
use ballast_core::rules::BrokenRule;
use std::path::PathBuf;

/// The underlying error of a storage failure, kept as the error's source (sled's own
/// type stays behind this crate's API).
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a successful idempotent transition did.
#[must_use = "a duplicate may need a different reaction than a fresh change"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The change was made and flushed.
    Applied,
    /// The store already held the result of this exact change (a retried or replayed
    /// message); nothing was written.
    Duplicate,
}

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store files could not be read as a ballast store: sled reported corruption or
    /// panicked while reading them, the metadata is missing, or a record does not decode.
    /// Nothing was changed; the operator must repair or remove the directory.
    #[error("store at {path} is corrupt or unreadable: {reason}")]
    Corrupt {
        /// The store directory.
        path: PathBuf,
        /// What was found wrong.
        reason: String,
    },
    /// Another process (or another `Store` in this process) holds the store open.
    /// Nothing was opened or changed.
    #[error("store at {path} is locked: another process (or handle) has it open")]
    Locked {
        /// The store directory.
        path: PathBuf,
    },
    /// The store belongs to another cluster. Nothing was changed.
    #[error("store at {path} belongs to cluster {found:?}, not {expected:?} (wrong data directory or config?)")]
    WrongCluster {
        /// The store directory.
        path: PathBuf,
        /// The cluster the caller is configured for.
        expected: String,
        /// The cluster recorded in the store.
        found: String,
    },
    /// The store belongs to another node of the cluster. Nothing was changed.
    #[error(
        "store at {path} belongs to node {found}, not {expected} (wrong data directory or config?)"
    )]
    WrongNode {
        /// The store directory.
        path: PathBuf,
        /// The node the caller is configured as.
        expected: NodeId,
        /// The node recorded in the store.
        found: NodeId,
    },
    /// The store was written by a newer ballast with a format this one does not know.
    /// Nothing was changed; run the newer version.
    #[error("store at {path} has format version {found}; this build supports up to {supported}")]
    NewerFormat {
        /// The store directory.
        path: PathBuf,
        /// The version recorded in the store.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// The store directory could not be created or accessed (permissions, disk full...).
    /// Nothing was opened; a half-made store from a first start is discarded on the next.
    #[error("store at {path}: I/O error: {source}")]
    Io {
        /// The store directory.
        path: PathBuf,
        /// The operating system's (or sled's) error.
        #[source]
        source: Cause,
    },
    /// An argument is not acceptable (empty id, non-finite factors, oversized spec, a
    /// state that does not fit the call). Nothing was changed.
    #[error("invalid input for {vm}: {reason}")]
    InvalidInput {
        /// The VM concerned (empty when the input was not about one VM).
        vm: VmId,
        /// What is wrong.
        reason: String,
    },
    /// The VM has no entry in this store. Nothing was changed.
    #[error("VM {vm} is not in this store")]
    NotFound {
        /// The VM.
        vm: VmId,
    },
    /// The VM is already in this store (or was handed off and not yet forgotten).
    /// Nothing was changed.
    #[error("VM {vm} already exists here: {detail}")]
    AlreadyExists {
        /// The VM.
        vm: VmId,
        /// What this store holds for it.
        detail: String,
    },
    /// The VM is not in the state this transition starts from. Nothing was changed.
    #[error("VM {vm} is {found:?}, but this change needs it {expected}")]
    WrongState {
        /// The VM.
        vm: VmId,
        /// The state the transition needs.
        expected: &'static str,
        /// The state the store holds.
        found: VmState,
    },
    /// The epoch is not above the highest this store has seen for the VM (a stale or
    /// replayed message, or a reused epoch). Nothing was changed.
    #[error("epoch {epoch} for VM {vm} is stale: this store has seen epoch {highest}")]
    StaleEpoch {
        /// The VM.
        vm: VmId,
        /// The epoch offered.
        epoch: u64,
        /// The highest epoch this store has seen for the VM.
        highest: u64,
    },
    /// The entry is in the right state but for another epoch (another attempt of the
    /// handoff). Nothing was changed.
    #[error("VM {vm} is held under epoch {found}, not {epoch}")]
    EpochMismatch {
        /// The VM.
        vm: VmId,
        /// The epoch the caller named.
        epoch: u64,
        /// The epoch of the stored state.
        found: u64,
    },
    /// The VM would break a hard placement rule on this host (docs/design.md §Placement
    /// rules). Nothing was changed.
    #[error("VM {vm} may not be on this node: {rule}")]
    BreaksRule {
        /// The VM.
        vm: VmId,
        /// The rule it would break.
        rule: BrokenRule,
    },
    /// sled failed while running the transaction. The transaction did not commit:
    /// nothing was changed.
    #[error("store operation {op} failed, nothing changed: {source}")]
    Storage {
        /// The operation.
        op: &'static str,
        /// sled's error (or the blocking task's).
        #[source]
        source: Cause,
    },
    /// The transaction committed in memory but the flush to disk failed: the change is
    /// visible in this process but may be lost on a crash. Treat it as not done and do
    /// not act on it; the store is probably unusable (disk full or failing).
    #[error("store operation {op} committed but was not flushed to disk: {source}")]
    NotFlushed {
        /// The operation.
        op: &'static str,
        /// sled's (or the file system's) error.
        #[source]
        source: Cause,
    },
}

impl StoreError {
    /// True for the refusals that are normal at runtime (stale epochs, wrong states,
    /// duplicates of finished work): the store is healthy and nothing changed.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::InvalidInput { .. }
                | Self::NotFound { .. }
                | Self::AlreadyExists { .. }
                | Self::WrongState { .. }
                | Self::StaleEpoch { .. }
                | Self::EpochMismatch { .. }
                | Self::BreaksRule { .. }
        )
    }
}
