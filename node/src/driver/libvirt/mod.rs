//! The `libvirt` driver (docs/design.md §Drivers): the VMs an operator already runs under
//! libvirt, balanced by live peer-to-peer migration with their local disks copied.
//!
//! A VM is a libvirt domain whose name is the VM id and which carries ballast's metadata
//! element (`ballast vm adopt` sets it, `ballast vm release` removes it); other domains
//! are never touched, only counted in the host's load. Every libvirt call runs on the
//! blocking pool under a timeout (`connection`), on a connection reopened after libvirtd
//! restarts.
//!
//! Migration: the destination's `prepare_incoming` checks that nothing of that name is
//! defined there, that read-only and block disks exist and that there is room, pre-creates
//! each copied file disk with `qemu-img` and answers a [`target::LibvirtTarget`]; the
//! source runs `virDomainMigrateToURI3` with `LIVE | PEER2PEER | PERSIST_DEST |
//! UNDEFINE_SOURCE | PAUSED` (+ `NON_SHARED_DISK` with the copied disks listed, + `TLS`),
//! so libvirt ends the source domain when the migration completes and the destination
//! stays paused until the handoff commits: [`SourceCopy::Ended`].
//!
//! Files: [`config`] (the TOML section), `connection` (calls and reconnects), `ffi` (the
//! two unwrapped libvirt calls), `domains` (reading domains), [`domain_xml`] (XML),
//! `disks` (disk records, destination checks, pre-creation), `records` (the driver's
//! durable records), `target` (the migration target), `stats` (usage), `lifecycle`
//! (list, start, stop, adopt, release), `incoming` (destination side), `outgoing` (source
//! side).

pub mod config;
#[cfg(feature = "libvirt")]
mod connection;
#[cfg(feature = "libvirt")]
mod disks;
#[cfg(feature = "libvirt")]
pub mod domain_xml;
#[cfg(feature = "libvirt")]
mod domains;
#[cfg(feature = "libvirt")]
mod ffi;
#[cfg(feature = "libvirt")]
mod incoming;
#[cfg(feature = "libvirt")]
mod lifecycle;
#[cfg(feature = "libvirt")]
mod outgoing;
#[cfg(feature = "libvirt")]
mod records;
#[cfg(feature = "libvirt")]
mod stats;
#[cfg(feature = "libvirt")]
mod target;

pub use config::LibvirtConfig;
#[cfg(feature = "libvirt")]
pub(crate) use outgoing::migrate_flags;

#[cfg(feature = "libvirt")]
pub use driver::LibvirtDriver;

#[cfg(feature = "libvirt")]
mod driver {
    use super::config::LibvirtConfig;
    use super::connection::Libvirtd;
    use super::records::Records;
    use super::stats::StatsCache;
    use crate::driver::{
        Driver, DriverError, MigrationProgress, MigrationStatus, MigrationTarget, SourceCopy,
        UsageSample, VmInfo,
    };
    use async_trait::async_trait;
    use ballast_store::{VmId, VmSpec};

    /// The libvirt driver of one host. Cheap to share behind an `Arc`.
    #[derive(Debug)]
    pub struct LibvirtDriver {
        pub(super) cfg: LibvirtConfig,
        pub(super) libvirtd: Libvirtd,
        pub(super) incoming: Records,
        pub(super) outgoing: Records,
        pub(super) stats: StatsCache,
        /// Serializes the steps that define or undefine domains of one host (prepare,
        /// adopt, start), so two of them never race on one name.
        pub(super) defining: tokio::sync::Mutex<()>,
    }

    impl LibvirtDriver {
        /// A driver for `cfg`: creates the state directory; connects on first use (a
        /// libvirtd that is down is retried on every call, the agent keeps running).
        pub fn new(cfg: LibvirtConfig) -> Result<Self, DriverError> {
            cfg.validate().map_err(DriverError::InvalidSpec)?;
            // libvirt prints every error on stderr by default; the driver reports them.
            virt::error::clear_error_callback();
            std::fs::create_dir_all(&cfg.state_dir)?;
            if cfg.peer_uri.is_none() {
                tracing::warn!(
                    "driver.libvirt.peer_uri is not set: this host will refuse incoming VMs"
                );
            }
            let libvirtd = Libvirtd::new(cfg.uri.clone(), cfg.call_timeout.duration());
            tracing::info!(uri = %cfg.uri, state_dir = %cfg.state_dir.display(), "libvirt driver ready");
            Ok(Self {
                incoming: Records::new(&cfg.state_dir, "incoming"),
                outgoing: Records::new(&cfg.state_dir, "outgoing"),
                stats: StatsCache::default(),
                defining: tokio::sync::Mutex::new(()),
                libvirtd,
                cfg,
            })
        }

        /// The configuration.
        pub fn config(&self) -> &LibvirtConfig {
            &self.cfg
        }
    }

    #[async_trait]
    impl Driver for LibvirtDriver {
        fn name(&self) -> &'static str {
            "libvirt"
        }

        fn adopts(&self) -> bool {
            true
        }

        fn source_copy(&self) -> SourceCopy {
            SourceCopy::Ended
        }

        async fn list(&self) -> Result<Vec<VmInfo>, DriverError> {
            self.list_vms().await
        }

        async fn start(&self, vm: &VmId, spec: &VmSpec) -> Result<(), DriverError> {
            self.start_vm(vm, spec).await
        }

        async fn stop(&self, vm: &VmId) -> Result<(), DriverError> {
            self.stop_vm(vm).await
        }

        async fn usage(&self, vm: &VmId) -> Result<UsageSample, DriverError> {
            self.usage_of(vm).await
        }

        async fn unmanaged_usage(&self) -> Result<Option<UsageSample>, DriverError> {
            self.unmanaged().await.map(Some)
        }

        async fn prepare_incoming(
            &self,
            vm: &VmId,
            spec: &VmSpec,
        ) -> Result<MigrationTarget, DriverError> {
            self.prepare(vm, spec).await
        }

        async fn migrate_out(
            &self,
            vm: &VmId,
            target: &MigrationTarget,
            progress: &(dyn Fn(MigrationProgress) + Send + Sync),
        ) -> Result<(), DriverError> {
            self.migrate(vm, target, progress).await
        }

        async fn migration_status(&self, vm: &VmId) -> Result<MigrationStatus, DriverError> {
            self.outgoing_status(vm).await
        }

        async fn cancel_outgoing(&self, vm: &VmId) -> Result<(), DriverError> {
            self.cancel_out(vm).await
        }

        async fn finish_outgoing(&self, vm: &VmId) -> Result<(), DriverError> {
            self.finish_out(vm).await
        }

        async fn resume_incoming(&self, vm: &VmId) -> Result<(), DriverError> {
            self.resume_in(vm).await
        }

        async fn cancel_incoming(&self, vm: &VmId) -> Result<(), DriverError> {
            self.cancel_in(vm).await
        }

        async fn incoming_complete(&self, vm: &VmId) -> Result<bool, DriverError> {
            self.incoming_done(vm).await
        }

        async fn adopt(&self) -> Result<Vec<VmInfo>, DriverError> {
            self.list_vms().await
        }

        async fn adopt_existing(
            &self,
            names: &[String],
        ) -> Result<Vec<(VmId, VmSpec)>, DriverError> {
            self.adopt_domains(names).await
        }

        async fn release(&self, vm: &VmId) -> Result<(), DriverError> {
            self.release_domain(vm).await
        }

        async fn current_spec(
            &self,
            vm: &VmId,
            spec: &VmSpec,
        ) -> Result<Option<VmSpec>, DriverError> {
            self.refreshed_spec(vm, spec).await
        }
    }
}
