//! Managed domains' life: list, start (define from the spec or the given XML), stop,
//! usage, and taking existing domains under management (`adopt_domains`) or giving them
//! back (`release_domain`).

use super::disks::{record_disks, DiskRecord};
use super::domain_xml::{self, METADATA_KEY, METADATA_NS};
use super::domains::{self, DomainView};
use super::records::IncomingRecord;
use super::LibvirtDriver;
use crate::driver::{DriverError, UsageSample, VmInfo, VmRunState};
use ballast_store::{VmId, VmSpec};
use virt::domain::Domain;
use virt::sys;

/// `driver_opts` key: the VM was adopted (its domain is the operator's; never recreated).
pub(super) const ADOPTED_KEY: &str = "libvirt.adopted";
/// `driver_opts` key: the domain's UUID when adopted.
const UUID_KEY: &str = "libvirt.uuid";

/// Where a metadata change applies: the persistent definition if there is one, the
/// running domain if it runs.
fn metadata_flags(dom: &Domain) -> Result<u32, virt::error::Error> {
    let mut flags = 0;
    if dom.is_persistent()? {
        flags |= sys::VIR_DOMAIN_AFFECT_CONFIG;
    }
    if dom.is_active()? {
        flags |= sys::VIR_DOMAIN_AFFECT_LIVE;
    }
    Ok(flags)
}

/// Sets ballast's metadata element on a domain (live and persistent parts that exist).
fn mark(dom: &Domain, vm: &str) -> Result<(), virt::error::Error> {
    let element = domain_xml::metadata_element(&VmId::from(vm));
    let flags = metadata_flags(dom)?;
    dom.set_metadata(
        sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
        Some(&element),
        Some(METADATA_KEY),
        Some(METADATA_NS),
        flags,
    )
}

/// Removes ballast's metadata element.
fn unmark(dom: &Domain) -> Result<(), virt::error::Error> {
    let flags = metadata_flags(dom)?;
    dom.set_metadata(
        sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
        None,
        None,
        Some(METADATA_NS),
        flags,
    )
}

impl LibvirtDriver {
    /// The managed domains, and incoming reservations whose domain has not arrived yet
    /// (as `Incoming`).
    pub(super) async fn list_vms(&self) -> Result<Vec<VmInfo>, DriverError> {
        let all = domains::all(&self.libvirtd).await?;
        let mut out: Vec<VmInfo> = all
            .iter()
            .filter_map(|v| {
                let vm = v.desc.managed_as.clone()?;
                Some(VmInfo {
                    vm,
                    state: v.run_state(),
                })
            })
            .collect();
        for vm in self.incoming.vms() {
            if !out.iter().any(|i| i.vm == vm) {
                out.push(VmInfo {
                    vm,
                    state: VmRunState::Incoming,
                });
            }
        }
        Ok(out)
    }

    /// The managed domain of `vm`, or `None`; a domain of that name that ballast does not
    /// manage is an error (it is the operator's).
    pub(super) async fn managed(&self, vm: &VmId) -> Result<Option<DomainView>, DriverError> {
        match domains::view(&self.libvirtd, vm.as_str()).await? {
            None => Ok(None),
            Some(v) if v.desc.managed_as.as_ref() == Some(vm) => Ok(Some(v)),
            Some(_) => Err(DriverError::BadState {
                vm: vm.clone(),
                reason: "a domain of that name exists but is not managed by ballast".into(),
            }),
        }
    }

    pub(super) async fn start_vm(&self, vm: &VmId, spec: &VmSpec) -> Result<(), DriverError> {
        let _defining = self.defining.lock().await;
        if self.incoming.get::<IncomingRecord>(vm)?.is_some() {
            return Err(DriverError::BadState {
                vm: vm.clone(),
                reason: "this host holds an incoming copy".into(),
            });
        }
        match self.managed(vm).await? {
            Some(v) if v.running() => return Ok(()),
            Some(v) if v.run_state() != VmRunState::Stopped => {
                return Err(DriverError::BadState {
                    vm: vm.clone(),
                    reason: format!("the domain is {:?}", v.run_state()),
                })
            }
            Some(_) => {}
            None if spec.driver_opts.contains_key(ADOPTED_KEY) => {
                return Err(DriverError::BadState {
                    vm: vm.clone(),
                    reason: "its domain is no longer defined on this host (undefined outside \
                             ballast?); an adopted domain is not recreated: define it again or \
                             `ballast vm delete` it"
                        .into(),
                })
            }
            None => {
                let xml = domain_xml::from_spec(vm, spec, crate::driver::qemu::kvm_usable());
                let name = vm.as_str().to_owned();
                domains::with_domain_define(&self.libvirtd, xml, name).await?;
            }
        }
        let name = vm.as_str().to_owned();
        domains::with_domain(&self.libvirtd, vm, "start domain", move |d| {
            mark(d, &name)?;
            if !d.is_active()? {
                d.create()?;
            }
            Ok(())
        })
        .await?;
        self.stats.invalidate().await;
        Ok(())
    }

    /// Destroys and undefines the managed domain of `vm` (its disks stay). Absent: Ok.
    pub(super) async fn stop_vm(&self, vm: &VmId) -> Result<(), DriverError> {
        if self.managed(vm).await?.is_none() {
            return Ok(());
        }
        let r = domains::with_domain(&self.libvirtd, vm, "stop domain", |d| {
            if d.is_active()? {
                d.destroy()?;
            }
            if d.is_persistent()? {
                d.undefine_flags(
                    sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                        | sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                        | sys::VIR_DOMAIN_UNDEFINE_NVRAM,
                )?;
            }
            Ok(())
        })
        .await;
        self.stats.invalidate().await;
        match r {
            Err(DriverError::NotFound(_)) => Ok(()),
            r => r,
        }
    }

    pub(super) async fn usage_of(&self, vm: &VmId) -> Result<UsageSample, DriverError> {
        let snap = self.stats.snapshot(&self.libvirtd).await?;
        snap.get(vm.as_str())
            .copied()
            .ok_or_else(|| DriverError::NotFound(vm.clone()))
    }

    /// Usage summed over the active domains ballast does not manage.
    pub(super) async fn unmanaged(&self) -> Result<UsageSample, DriverError> {
        let all = domains::all(&self.libvirtd).await?;
        let snap = self.stats.snapshot(&self.libvirtd).await?;
        let mut sum = UsageSample::default();
        for v in all.iter().filter(|v| v.desc.managed_as.is_none()) {
            if let Some(u) = snap.get(&v.desc.name) {
                sum.cpu_time_s += u.cpu_time_s;
                sum.io_bytes = sum.io_bytes.saturating_add(u.io_bytes);
                sum.mem_bytes = sum.mem_bytes.saturating_add(u.mem_bytes);
            }
        }
        Ok(sum)
    }

    /// Marks the named domains (every active or persistent one when `names` is empty) as
    /// managed and returns each with its spec. A name that is not defined is an error and
    /// nothing after it is adopted.
    pub(super) async fn adopt_domains(
        &self,
        names: &[String],
    ) -> Result<Vec<(VmId, VmSpec)>, DriverError> {
        let _defining = self.defining.lock().await;
        let views = domains::all(&self.libvirtd).await?;
        let chosen: Vec<&DomainView> = if names.is_empty() {
            views
                .iter()
                .filter(|v| v.persistent || v.run_state() != VmRunState::Stopped)
                .collect()
        } else {
            let mut out = Vec::new();
            for n in names {
                let v = views
                    .iter()
                    .find(|v| &v.desc.name == n)
                    .ok_or_else(|| DriverError::NotFound(VmId::from(n.as_str())))?;
                out.push(v);
            }
            out
        };
        let mut adopted = Vec::new();
        for v in chosen {
            if v.job_active
                || self
                    .incoming
                    .get::<IncomingRecord>(&VmId::from(v.desc.name.as_str()))?
                    .is_some()
            {
                tracing::warn!(domain = %v.desc.name, "not adopted: a migration is under way");
                continue;
            }
            let vm = VmId::from(v.desc.name.as_str());
            let spec = self.spec_of(v).await?;
            let name = v.desc.name.clone();
            domains::with_domain(&self.libvirtd, &vm, "set metadata", move |d| mark(d, &name))
                .await?;
            tracing::info!(vm = %vm, "domain adopted");
            adopted.push((vm, spec));
        }
        Ok(adopted)
    }

    /// The spec recorded for an adopted domain: memory, vCPUs, disk files and one disk
    /// record per disk.
    async fn spec_of(&self, v: &DomainView) -> Result<VmSpec, DriverError> {
        let mut spec = VmSpec::default();
        self.describe(v, &mut spec).await;
        spec.driver_opts.insert(ADOPTED_KEY.into(), "true".into());
        spec.driver_opts
            .insert(UUID_KEY.into(), v.desc.uuid.clone());
        Ok(spec)
    }

    /// The spec to move `vm` with: `spec` with memory, vCPUs, disk files and disk records
    /// as the domain has them now; `None` when nothing changed (or no managed domain).
    pub(super) async fn refreshed_spec(
        &self,
        vm: &VmId,
        spec: &VmSpec,
    ) -> Result<Option<VmSpec>, DriverError> {
        let Some(v) = self.managed(vm).await? else {
            return Ok(None);
        };
        let mut fresh = spec.clone();
        self.describe(&v, &mut fresh).await;
        Ok((fresh != *spec).then_some(fresh))
    }

    /// Writes into `spec` what the domain says of itself: memory, vCPUs, disk files and
    /// a disk record per disk (format, virtual size and allocation from
    /// `virDomainGetBlockInfo` while it runs; 0 when unknown).
    async fn describe(&self, v: &DomainView, spec: &mut VmSpec) {
        let mut disks = Vec::new();
        for d in &v.desc.disks {
            let (capacity, allocation) = if v.run_state() != VmRunState::Stopped {
                let target = d.target.clone();
                domains::with_domain(
                    &self.libvirtd,
                    &VmId::from(v.desc.name.as_str()),
                    "block info",
                    move |dom| {
                        dom.block_info(&target, 0)
                            .map(|b| (b.capacity, b.allocation))
                    },
                )
                .await
                .unwrap_or((0, 0))
            } else {
                (0, 0)
            };
            disks.push(DiskRecord {
                target: d.target.clone(),
                kind: d.kind.clone(),
                format: d.format.clone(),
                capacity,
                allocation,
                readonly: d.readonly,
                path: d.file.clone(),
            });
        }
        spec.vcpus = v.desc.vcpus;
        spec.memory_mib = v.desc.memory_mib;
        spec.disks = disks
            .iter()
            .filter_map(|d| d.path.as_ref().map(|p| p.display().to_string()))
            .collect();
        record_disks(&mut spec.driver_opts, &disks);
    }

    /// Removes the metadata element: the domain is the operator's again. Absent: Ok.
    pub(super) async fn release_domain(&self, vm: &VmId) -> Result<(), DriverError> {
        if self.managed(vm).await?.is_none() {
            return Ok(());
        }
        domains::with_domain(&self.libvirtd, vm, "remove metadata", unmark).await?;
        tracing::info!(vm = %vm, "domain released");
        Ok(())
    }
}
