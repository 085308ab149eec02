//! [`HandoffConfig`]: the machine's intervals and limits, and the planted bugs that let
//! the model check prove it can fail.

use crate::units::Millis;
use serde::{Deserialize, Serialize};

/// Intervals (milliseconds on the agent's clock) and limits of the handoff machine.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HandoffConfig {
    /// Source: re-send `Prepare` this often while waiting for `Prepared`.
    #[serde(alias = "prepare_retry_ms")]
    pub prepare_retry: Millis,
    /// Source: abort if `Prepared` has not come this long after the first `Prepare`.
    #[serde(alias = "prepare_timeout_ms")]
    pub prepare_timeout: Millis,
    /// Source: cancel and abort a migration still running after this long.
    #[serde(alias = "migrate_timeout_ms")]
    pub migrate_timeout: Millis,
    /// Source, after its commit point: re-send `Commit` this often until `CommitAck`.
    #[serde(alias = "commit_retry_ms")]
    pub commit_retry: Millis,
    /// Destination: ask the source for the outcome this often while waiting.
    #[serde(alias = "query_interval_ms")]
    pub query_interval: Millis,
    /// Re-run a failed store op after this long.
    #[serde(alias = "store_retry_ms")]
    pub store_retry: Millis,
    /// Most handoffs (either side, not counting settling records) at once; a `Prepare`
    /// beyond it is refused `Busy`, a move beyond it is not started.
    pub handoffs_max: usize,
    /// Most handoffs as source at once (not counting settling records): a move beyond it
    /// is not started (`StartError::OutgoingLimit`). The agent sets it from
    /// `balancing.max_outgoing`.
    #[serde(skip)]
    pub outgoing_max: usize,
    /// Most handoffs as destination at once: a new `Prepare` beyond it is refused `Busy`.
    /// The agent sets it from `balancing.max_incoming`.
    #[serde(skip)]
    pub incoming_max: usize,
    /// Most guest memory, in bytes, of the VMs in handoffs here at once, both roles (not
    /// counting settling records): a move that would pass it is not started
    /// (`StartError::BytesLimit`), a `Prepare` is refused `Busy`; a handoff alone is
    /// never held back, so a VM larger than the limit still moves. The agent sets it from
    /// `balancing.max_bytes_in_flight`.
    #[serde(skip)]
    pub bytes_max: u64,
    /// What the driver leaves of the source copy once a migration's switchover is
    /// complete. The agent sets it from its driver.
    #[serde(skip)]
    pub source_copy: SourceCopy,
    /// Deliberate protocol bugs, for the model check and the chaos harness only (builds
    /// with the `planted-bugs` feature).
    #[cfg(feature = "planted-bugs")]
    #[serde(skip)]
    pub planted_bug: PlantedBug,
}

impl Default for HandoffConfig {
    fn default() -> Self {
        Self {
            prepare_retry: Millis::new(1_000),
            prepare_timeout: Millis::new(10_000),
            migrate_timeout: Millis::new(600_000),
            commit_retry: Millis::new(1_000),
            query_interval: Millis::new(2_000),
            store_retry: Millis::new(500),
            handoffs_max: 16,
            outgoing_max: 16,
            incoming_max: 16,
            bytes_max: u64::MAX,
            source_copy: SourceCopy::Kept,
            #[cfg(feature = "planted-bugs")]
            planted_bug: PlantedBug::None,
        }
    }
}

/// What a driver leaves on the source once a migration's switchover is complete.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SourceCopy {
    /// A paused source copy stays until `finish_outgoing` (QEMU driven over QMP): before
    /// the commit point `cancel_outgoing` can still resume it, so every failure before
    /// the commit point may roll back.
    #[default]
    Kept,
    /// The hypervisor ends the source copy itself when the switchover completes
    /// (libvirt's peer-to-peer migration with `UNDEFINE_SOURCE`): from then on the paused
    /// destination is the only copy, so the move must roll forward. `cancel_outgoing`
    /// answers `SwitchedOver` instead of cancelling, and a cancel that failed is retried
    /// (never taken as cancelled).
    Ended,
}

crate::named_enum!(SourceCopy { Kept => "kept", Ended => "ended" });

/// A deliberate violation of docs/design.md §Handoff, so that tests can show the model check and
/// the invariant checkers find real bugs. Off (`None`) by default.
#[cfg(feature = "planted-bugs")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PlantedBug {
    /// The correct protocol.
    #[default]
    None,
    /// The destination promotes itself when its query timer fires instead of asking the
    /// source ("B decides on a timeout").
    PromoteOnTimeout,
    /// The destination acks `Commit` before its `Running` entry is durable.
    AckBeforeDurable,
    /// The source treats a cancel that came after the switchover (or failed) as done and
    /// aborts, as it may with a driver that keeps the source copy; with a driver that
    /// ends it, the destination then drops the only copy.
    AbortAfterSwitchover,
}
