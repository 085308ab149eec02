//! The records the store keeps: schedule entries, handoff records and node metadata.
//!
//! These are plain data, shared by the agent, the handoff state machine and the chaos
//! harness. They are encoded with bincode 2 (serde) inside sled.

use crate::rules::PlacementRules;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The name of a host in the cluster, as written in its certificate.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub String);

/// The cluster-unique name of a VM.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VmId(pub String);

macro_rules! string_id {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl From<&str> for $t {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }
        impl From<String> for $t {
            fn from(s: String) -> Self {
                Self(s)
            }
        }
        impl $t {
            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    };
}
string_id!(NodeId);
string_id!(VmId);

/// A VM's raw use of resources, independent of the host it runs on (docs/design.md §Load).
///
/// `cpu` is in reference cores (CPU seconds per second, normalized to the reference
/// speed), `io` in bytes per second, `mem` in bytes. In target mode these are the VM's
/// programmed reservation rather than measurements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadFactors {
    /// Reference cores in use.
    pub cpu: f64,
    /// I/O bytes per second.
    pub io: f64,
    /// Resident memory in bytes.
    pub mem: f64,
}

/// What the operator asked for: everything a driver needs to start the VM anywhere.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VmSpec {
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Guest memory in MiB; the destination must have this much free.
    pub memory_mib: u64,
    /// The programmed reservation, used as the VM's load factors in target mode.
    pub target: Option<LoadFactors>,
    /// Disk images (driver-specific paths or URLs).
    pub disks: Vec<String>,
    /// Extra hypervisor arguments, passed through by drivers that support them.
    pub extra_args: Vec<String>,
    /// Driver-specific options (for the sim driver: its usage profile).
    pub driver_opts: BTreeMap<String, String>,
    /// Placement rules (docs/design.md §Placement rules); they move with the VM.
    pub rules: Box<PlacementRules>,
}

/// Where a schedule entry stands in the handoff protocol (docs/design.md §Handoff).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// This host runs the VM.
    Running,
    /// This host (the source) has decided to move the VM to `to` under `epoch`.
    MigratingOut {
        /// The destination.
        to: NodeId,
        /// The epoch of the move (the entry's epoch + 1).
        epoch: u64,
    },
    /// This host (the destination) is receiving the VM from `from` under `epoch`.
    Incoming {
        /// The source.
        from: NodeId,
        /// The epoch of the move.
        epoch: u64,
    },
}

/// One VM this host is to run (or is handing over or receiving).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleEntry {
    /// The VM.
    pub vm: VmId,
    /// How to run it.
    pub spec: VmSpec,
    /// Its last smoothed load factors (or its target in target mode).
    pub factors: LoadFactors,
    /// Protocol state.
    pub state: VmState,
    /// Raised on each move; the epoch under which this host holds the entry.
    pub epoch: u64,
    /// A pinned VM is never moved by balancing.
    pub pinned: bool,
    /// Unix time in milliseconds of the VM's last move, for the post-migration cooldown.
    pub last_moved_unix_ms: Option<u64>,
}

/// What a source remembers after its commit point until the destination acknowledges.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transferred {
    /// The VM that left.
    pub vm: VmId,
    /// Where it went.
    pub to: NodeId,
    /// The epoch of that move.
    pub epoch: u64,
}

/// Who a store belongs to; checked on every open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    /// The cluster this store belongs to.
    pub cluster_id: String,
    /// The node this store belongs to.
    pub node_id: NodeId,
    /// The on-disk format version.
    pub format_version: u32,
}
