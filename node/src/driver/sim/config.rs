//! The sim driver's configuration (the `[driver.sim]` section of the agent's TOML).

use ballast_core::handoff::SourceCopy;
use ballast_core::units::Millis;
use ballast_core::units::Probability;
use ballast_store::NodeId;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where the simulated VMs live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimMode {
    /// VMs are objects in the agent's process: killing the agent kills its VMs (a host
    /// crash). Dropping and re-creating the driver within the process keeps them.
    #[default]
    InProcess,
    /// Each VM is a detached `ballast sim-vm` process that outlives its agent.
    Process,
}

/// Configuration of one host's sim driver. Every field has a default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Directory of this host's run log (`runlog.jsonl`) and, in process mode, of the VM
    /// sockets (`vms/*.sock`). One per host; default `sim-state`.
    pub state_dir: PathBuf,
    /// The host's name, written in every run record. Must not be empty; the agent sets it
    /// to its node id.
    pub host: NodeId,
    /// Seed of the driver's failure injection and of VM seeds not named in the spec.
    pub seed: u64,
    /// How long the transfer phase of a migration lasts (the VM keeps running on the
    /// source meanwhile), milliseconds. Default 200.
    #[serde(alias = "migration_ms")]
    pub migration: Millis,
    /// Probability that a migration fails (before its switchover). Default 0.
    pub fail_prob: Probability,
    /// The next this many migrations fail (before their switchover). Default 0.
    pub fail_next: u32,
    /// The next this many starts of a new VM answer with an error although the VM was
    /// started (a hypervisor whose answer is lost). Default 0.
    pub fail_next_starts: u32,
    /// In-process VMs (default) or one detached process per VM.
    pub mode: SimMode,
    /// What a completed migration leaves of the source copy: `"kept"` (default: paused
    /// until the handoff finishes it, as QEMU over QMP) or `"ended"` (stopped at once, as
    /// libvirt does; the handoff must then roll forward).
    pub source_copy: SourceCopy,
    /// Process mode: the command that runs one VM; the driver appends its arguments.
    /// Empty (default) means `[<current executable>, "sim-vm"]`.
    pub vm_command: Vec<String>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("sim-state"),
            host: NodeId::from(""),
            seed: 0,
            migration: Millis::new(200),
            fail_prob: Probability::NEVER,
            fail_next: 0,
            fail_next_starts: 0,
            mode: SimMode::InProcess,
            source_copy: SourceCopy::Kept,
            vm_command: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_with_defaults() {
        let c: SimConfig = toml::from_str("host = \"h1\"\nmode = \"process\"\n").unwrap();
        assert_eq!(c.host, NodeId::from("h1"));
        assert_eq!(c.source_copy, SourceCopy::Kept);
        assert_eq!(c.mode, SimMode::Process);
        assert_eq!(c.migration.get(), 200);
        let c: SimConfig = toml::from_str("source_copy = \"ended\"\n").unwrap();
        assert_eq!(c.source_copy, SourceCopy::Ended);
        assert!(toml::from_str::<SimConfig>("source_copy = \"gone\"").is_err());
        assert!(toml::from_str::<SimConfig>("bogus = 1").is_err());
    }
}
