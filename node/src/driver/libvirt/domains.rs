//! Reading domains: one domain's state, job and XML in one blocking call, and the
//! mapping of libvirt's states onto the driver's.

use super::connection::{CallError, Libvirtd};
use super::domain_xml::{self, DomainDesc};
use crate::driver::{DriverError, VmRunState};
use ballast_store::VmId;
use virt::connect::Connect;
use virt::domain::{Domain, DomainState};
use virt::enumutil::Enum;
use virt::sys;

/// What one look at a domain found.
#[derive(Clone, Debug)]
pub(crate) struct DomainView {
    /// Its parsed XML (live XML for an active domain).
    pub desc: DomainDesc,
    /// libvirt's state.
    pub state: Option<DomainState>,
    /// Whether a job (a migration) is under way.
    pub job_active: bool,
    /// Whether it has a persistent definition.
    pub persistent: bool,
}

impl DomainView {
    /// The driver's run state.
    pub(crate) fn run_state(&self) -> VmRunState {
        match self.state {
            Some(DomainState::Running | DomainState::Blocked) => VmRunState::Running,
            Some(DomainState::Paused) if self.job_active => VmRunState::Incoming,
            Some(DomainState::Paused | DomainState::PMSuspended) => VmRunState::Paused,
            _ => VmRunState::Stopped,
        }
    }

    /// Whether the domain is running guest code.
    pub(crate) fn running(&self) -> bool {
        self.run_state() == VmRunState::Running
    }
}

/// The raw parts of a look, read on a blocking thread.
struct RawView {
    xml: String,
    state: Option<DomainState>,
    job_type: i32,
    persistent: bool,
}

fn raw_view(dom: &Domain) -> Result<RawView, virt::error::Error> {
    let xml = dom.xml_desc(0)?;
    let state = match dom.state()?.0 {
        Enum::Known(s) => Some(s),
        Enum::Unknown(_) => None,
    };
    let job_type = if dom.is_active()? {
        dom.job_info().map(|j| j.r#type).unwrap_or(0)
    } else {
        0
    };
    let persistent = dom.is_persistent()?;
    Ok(RawView {
        xml,
        state,
        job_type,
        persistent,
    })
}

fn parse_view(raw: RawView) -> Result<DomainView, DriverError> {
    let desc = domain_xml::parse(&raw.xml).map_err(|e| DriverError::Hypervisor {
        op: "read domain XML",
        reason: e.to_string(),
    })?;
    let active_job = matches!(
        u32::try_from(raw.job_type).unwrap_or(0),
        sys::VIR_DOMAIN_JOB_BOUNDED | sys::VIR_DOMAIN_JOB_UNBOUNDED
    );
    Ok(DomainView {
        desc,
        state: raw.state,
        job_active: active_job,
        persistent: raw.persistent,
    })
}

/// Looks up a domain by name: `None` when this libvirtd has no such domain.
pub(crate) async fn view(
    libvirtd: &Libvirtd,
    name: &str,
) -> Result<Option<DomainView>, DriverError> {
    let name = name.to_owned();
    let r = libvirtd
        .call(move |c| {
            let dom = c.lookup_domain_by_name(&name)?;
            raw_view(&dom)
        })
        .await;
    match r {
        Ok(raw) => parse_view(raw).map(Some),
        Err(e) if e.is_no_domain() => Ok(None),
        Err(e) => Err(e.into_driver("look up domain")),
    }
}

/// Every domain of this libvirtd (active and defined).
pub(crate) async fn all(libvirtd: &Libvirtd) -> Result<Vec<DomainView>, DriverError> {
    let raws = libvirtd
        .call(|c: &Connect| {
            let doms = c.list_all_domains(0)?;
            let mut out = Vec::with_capacity(doms.len());
            for d in doms {
                match raw_view(&d) {
                    Ok(v) => out.push(v),
                    // gone between the listing and the look
                    Err(e) if super::connection::is_no_domain(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| e.into_driver("list domains"))?;
    let mut out = Vec::with_capacity(raws.len());
    for raw in raws {
        match parse_view(raw) {
            Ok(v) => out.push(v),
            Err(e) => tracing::warn!(reason = %e, "skipping a domain whose XML does not parse"),
        }
    }
    Ok(out)
}

/// Runs `f` on the domain named `vm`; `NotFound` when there is none.
pub(crate) async fn with_domain<T, F>(
    libvirtd: &Libvirtd,
    vm: &VmId,
    op: &'static str,
    f: F,
) -> Result<T, DriverError>
where
    T: Send + 'static,
    F: Fn(&Domain) -> Result<T, virt::error::Error> + Send + 'static,
{
    let name = vm.as_str().to_owned();
    libvirtd
        .call(move |c| {
            let dom = c.lookup_domain_by_name(&name)?;
            f(&dom)
        })
        .await
        .map_err(|e: CallError| {
            if e.is_no_domain() {
                DriverError::NotFound(vm.clone())
            } else {
                e.into_driver(op)
            }
        })
}

/// Defines a domain from `xml` whose name must be `name`.
pub(crate) async fn with_domain_define(
    libvirtd: &Libvirtd,
    xml: String,
    name: String,
) -> Result<(), DriverError> {
    let desc = domain_xml::parse(&xml).map_err(|e| DriverError::InvalidSpec(e.to_string()))?;
    if desc.name != name {
        return Err(DriverError::InvalidSpec(format!(
            "the domain XML names {:?}, not the VM {name:?}",
            desc.name
        )));
    }
    libvirtd
        .call(move |c| c.define_domain_xml(&xml).map(|_| ()))
        .await
        .map_err(|e| e.into_driver("define domain"))
}
