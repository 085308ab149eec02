//! What a hypervisor driver reports, as plain data: a VM's run state, the VMs a host
//! holds, usage samples, and where and how a migration goes. The driver trait itself
//! (asynchronous, I/O) lives in `ballast-node`; the handoff machine and the load model
//! need only these words.

use crate::types::VmId;
use serde::{Deserialize, Serialize};

/// What a hypervisor says about one VM it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmRunState {
    /// Running guest code.
    Running,
    /// Paused: an incoming copy waiting for resume, or a source after its switchover.
    Paused,
    /// An incoming copy still receiving its state.
    Incoming,
    /// Stopped or crashed but not yet cleaned up.
    Stopped,
}

/// One VM the hypervisor holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// The VM.
    pub vm: VmId,
    /// Its run state.
    pub state: VmRunState,
}

/// Cumulative usage counters of one VM at one instant; the agent differentiates them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageSample {
    /// CPU time used since the VM started, in seconds on this host's CPUs.
    pub cpu_time_s: f64,
    /// I/O bytes (read + written) since the VM started.
    pub io_bytes: u64,
    /// Resident memory now, in bytes.
    pub mem_bytes: u64,
}

/// Where an incoming VM waits for its state: opaque to the agent, meaningful to drivers
/// of the same kind (for QEMU `tcp:HOST:PORT`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MigrationTarget(pub String);

/// What the hypervisor says about an outgoing migration, asked during recovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MigrationStatus {
    /// No migration known for this VM (never started, or cancelled).
    None,
    /// Still transferring.
    Active,
    /// Switchover complete: the source copy is paused and the destination has the VM.
    Completed,
    /// The migration failed; the source copy still holds the VM.
    Failed,
}

/// Progress of an outgoing migration, reported while it runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationProgress {
    /// Bytes transferred so far.
    pub transferred_bytes: u64,
    /// Bytes remaining (an estimate).
    pub remaining_bytes: u64,
}
