//! The hypervisor driver plugin of docs/design.md §Drivers: what the agent needs from a hypervisor.
//!
//! Submodules hold the drivers: `sim` (synthetic, for demo, simulation and tests), `qemu`
//! (one `qemu-system` process per VM, QMP, live migration over TCP) and `exec` (any
//! executable speaking the line-delimited JSON protocol of `docs/driver-protocol.md`).
//! [`conformance`] is the suite of contract checks every driver must pass.
//!
//! Handoff contract (docs/design.md §Handoff): `prepare_incoming` leaves a new copy that does
//! not run (listed `Incoming` until it holds the whole VM, then `Paused`);
//! `migrate_out` returns once the hypervisor's switchover is complete, leaving the source
//! copy paused; the destination copy runs only after `resume_incoming`. Before the commit
//! point the source may `cancel_outgoing` (the source runs again) and the destination
//! `cancel_incoming` (its copy is dropped). After the commit point the source calls
//! `finish_outgoing` (quits its paused copy). Every call is idempotent where the doc says so.

pub mod conformance;
mod disk_image;
mod error;
pub mod exec;
pub mod libvirt;
pub mod qemu;
pub mod sim;
mod vm_file;

pub use error::DriverError;

use async_trait::async_trait;
pub use ballast_core::handoff::SourceCopy;
use ballast_store::{VmId, VmSpec};

pub use ballast_core::hypervisor::{
    MigrationProgress, MigrationStatus, MigrationTarget, UsageSample, VmInfo, VmRunState,
};

/// A hypervisor, as the agent drives it. Implementations must be safe to call from
/// several tasks at once.
#[async_trait]
pub trait Driver: Send + Sync + 'static {
    /// The driver's name (`sim`, `qemu`, `exec`).
    fn name(&self) -> &'static str;

    /// What this hypervisor leaves of a source copy once a migration's switchover is
    /// complete: `Kept` (paused until `finish_outgoing`; `cancel_outgoing` can still resume
    /// it) or `Ended` (the hypervisor ends it; `cancel_outgoing` then fails with
    /// [`DriverError::SwitchedOver`] and the handoff rolls forward).
    fn source_copy(&self) -> SourceCopy {
        SourceCopy::Kept
    }

    /// Every VM this hypervisor holds on this host.
    async fn list(&self) -> Result<Vec<VmInfo>, DriverError>;

    /// Starts `vm` from `spec` and lets it run. Idempotent: a running VM is left alone.
    async fn start(&self, vm: &VmId, spec: &VmSpec) -> Result<(), DriverError>;

    /// Stops `vm` and frees its resources. Idempotent: an absent VM is Ok.
    async fn stop(&self, vm: &VmId) -> Result<(), DriverError>;

    /// Cumulative usage counters of `vm` now.
    async fn usage(&self, vm: &VmId) -> Result<UsageSample, DriverError>;

    /// Readies a copy of `vm` that does not run to receive its state (listed `Incoming`,
    /// or `Paused` once it holds the whole VM); returns where to send it.
    /// Idempotent: a second call for the same VM returns the same target.
    async fn prepare_incoming(
        &self,
        vm: &VmId,
        spec: &VmSpec,
    ) -> Result<MigrationTarget, DriverError>;

    /// Migrates `vm` to `target` and returns once the switchover is complete; the source
    /// copy is left paused. `progress` is called now and then while it runs.
    async fn migrate_out(
        &self,
        vm: &VmId,
        target: &MigrationTarget,
        progress: &(dyn Fn(MigrationProgress) + Send + Sync),
    ) -> Result<(), DriverError>;

    /// What became of an outgoing migration of `vm` (used on recovery).
    async fn migration_status(&self, vm: &VmId) -> Result<MigrationStatus, DriverError>;

    /// Before the commit point: stops an outgoing migration and lets the source copy run
    /// again (QEMU: `migrate_cancel`, or `cont` when paused). Idempotent.
    async fn cancel_outgoing(&self, vm: &VmId) -> Result<(), DriverError>;

    /// After the commit point: quits the paused source copy. Idempotent.
    async fn finish_outgoing(&self, vm: &VmId) -> Result<(), DriverError>;

    /// Starts the paused incoming copy (QEMU: `cont`). Idempotent when already running.
    async fn resume_incoming(&self, vm: &VmId) -> Result<(), DriverError>;

    /// Drops the incoming copy of `vm`. Idempotent.
    async fn cancel_incoming(&self, vm: &VmId) -> Result<(), DriverError>;

    /// Whether this host holds a complete incoming copy of `vm` (all state received),
    /// asked only when an operator has forgotten the source (`ballast node forget`).
    async fn incoming_complete(&self, vm: &VmId) -> Result<bool, DriverError>;

    /// Usage summed over the VMs this hypervisor runs that the driver does not manage
    /// (they weigh on the host but are never moved); `None` when the driver has no such
    /// notion.
    async fn unmanaged_usage(&self) -> Result<Option<UsageSample>, DriverError> {
        Ok(None)
    }

    /// The spec to move `vm` with when the hypervisor's view of it differs from the
    /// recorded `spec` (a disk grew or was added since it was recorded), else `None`.
    /// The source asks before each move and records the answer, so the destination
    /// prepares for what will arrive.
    async fn current_spec(&self, vm: &VmId, spec: &VmSpec) -> Result<Option<VmSpec>, DriverError> {
        let _ = (vm, spec);
        Ok(None)
    }

    /// Whether it can take over VMs it did not start and give them back (`vm adopt`,
    /// `vm release`); asked before either changes anything.
    fn adopts(&self) -> bool {
        false
    }

    /// `ballast vm adopt`: takes the hypervisor's existing VMs named in `names` (all that
    /// run or are defined when empty) under management and returns each with the spec its
    /// schedule entry records. Idempotent: an already managed VM is returned again.
    async fn adopt_existing(&self, names: &[String]) -> Result<Vec<(VmId, VmSpec)>, DriverError> {
        let _ = names;
        Err(DriverError::Unsupported {
            driver: self.name(),
            what: "adopt VMs it did not start",
        })
    }

    /// `ballast vm release`: gives `vm` back to the operator (it keeps running, unmanaged
    /// and never moved again). Idempotent.
    async fn release(&self, vm: &VmId) -> Result<(), DriverError> {
        let _ = vm;
        Err(DriverError::Unsupported {
            driver: self.name(),
            what: "release VMs",
        })
    }

    /// After an agent restart: finds the VMs still running from the previous agent and
    /// takes them over (QEMU: reconnects to their QMP sockets) without restarting them.
    async fn adopt(&self) -> Result<Vec<VmInfo>, DriverError>;
}
