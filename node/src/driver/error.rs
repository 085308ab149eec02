//! Errors of the driver layer.

use ballast_store::VmId;

/// A driver call failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The hypervisor holds no such VM. Nothing changed.
    #[error("VM {0} is not known to this hypervisor")]
    NotFound(VmId),
    /// The VM is not in a state that allows the call (e.g. resume of a VM not incoming).
    /// Nothing changed.
    #[error("VM {vm}: {reason}")]
    BadState {
        /// The VM.
        vm: VmId,
        /// Why the call is not allowed now.
        reason: String,
    },
    /// The migration failed or was cancelled; the source copy still holds the VM.
    #[error("migration of {vm} failed: {reason}")]
    MigrationFailed {
        /// The VM.
        vm: VmId,
        /// What the hypervisor said.
        reason: String,
    },
    /// The hypervisor (process, QMP socket, plugin) did not answer in time. The VM's state
    /// is unknown; ask again.
    #[error("hypervisor timed out: {0}")]
    Timeout(String),
    /// The hypervisor answered something that could not be understood (garbage, protocol
    /// violation). The VM's state is unknown.
    #[error("hypervisor protocol error: {0}")]
    Protocol(String),
    /// The exec plugin `plugin` died during the call `op`: it exited, closed its output,
    /// or broke the protocol (`reason` says which). It was killed; the next call starts a
    /// new one. The VM's state is unknown.
    #[error("during {op}, exec plugin {plugin} {reason}; it is restarted on the next call")]
    PluginDied {
        /// The plugin, named by its script or program.
        plugin: String,
        /// The call.
        op: &'static str,
        /// What the plugin did, e.g. `exited (exit status: 3)`.
        reason: String,
    },
    /// Starting or talking to the hypervisor failed at the OS level.
    #[error("hypervisor I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// `cancel_outgoing` came too late: the switchover is complete and the hypervisor
    /// ended the source copy itself (drivers whose `source_copy()` is `Ended`), so the
    /// destination holds the only copy and the move must go forward.
    #[error("VM {0}: the migration completed and the source copy is gone; nothing to cancel")]
    SwitchedOver(VmId),
    /// The hypervisor could not be reached (libvirtd down or restarting). Nothing is known
    /// to have changed; ask again.
    #[error("hypervisor unavailable: {0}")]
    Unavailable(String),
    /// The hypervisor refused or failed the call `op` and said why. Nothing changed
    /// unless the call's doc says otherwise.
    #[error("hypervisor {op} failed: {reason}")]
    Hypervisor {
        /// The call.
        op: &'static str,
        /// What the hypervisor said.
        reason: String,
    },
    /// This host lacks the room (disk space, memory) for the VM. Nothing changed.
    #[error("no room: {0}")]
    NoRoom(String),
    /// The driver does not do this (e.g. adopting existing VMs on the sim driver).
    #[error("the {driver} driver cannot {what}")]
    Unsupported {
        /// The driver.
        driver: &'static str,
        /// What was asked.
        what: &'static str,
    },
    /// The driver refused the VM spec (e.g. zero memory). Nothing changed.
    #[error("invalid VM spec: {0}")]
    InvalidSpec(String),
}
