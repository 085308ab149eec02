//! The two libvirt calls the `virt` crate (0.5) does not wrap: `virDomainAbortJob` and the
//! records of `virConnectGetAllDomainStats` (the crate returns raw pointers and leaks
//! them). The only `unsafe` code of the project: each block says why it is sound.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::CStr;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;

/// Aborts the domain's current job (an outgoing migration). Errors as libvirt reports them.
pub(super) fn abort_job(dom: &Domain) -> Result<(), virt::error::Error> {
    // SAFETY: `dom` holds a live reference to a virDomain for the duration of the call;
    // virDomainAbortJob only reads it.
    let r = unsafe { sys::virDomainAbortJob(dom.as_ptr()) };
    if r < 0 {
        return Err(virt::error::Error::last_error());
    }
    Ok(())
}

/// One value of a domain's statistics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum StatValue {
    /// An integer field (any width, signedness folded into `f64` would lose counters).
    Int(u64),
    /// A floating point field.
    Float(f64),
}

/// `virConnectGetAllDomainStats(conn, stats, flags)`: every domain's statistics, by
/// domain name, as `field → value` (string and boolean fields are left out).
pub(super) fn all_domain_stats(
    conn: &Connect,
    stats: u32,
    flags: u32,
) -> Result<HashMap<String, HashMap<String, StatValue>>, virt::error::Error> {
    let mut records: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    // SAFETY: `conn` holds a live connection; libvirt allocates the NULL-terminated array
    // of records and stores it in `records`, which we free below with the matching
    // virDomainStatsRecordListFree.
    let n = unsafe { sys::virConnectGetAllDomainStats(conn.as_ptr(), stats, &mut records, flags) };
    if n < 0 {
        return Err(virt::error::Error::last_error());
    }
    let mut out = HashMap::new();
    for i in 0..usize::try_from(n).unwrap_or(0) {
        // SAFETY: libvirt returned `n` valid record pointers at the start of the array;
        // each record's `dom` is a valid domain and `params` points to `nparams` typed
        // parameters, all alive until the list is freed. Strings are NUL-terminated.
        unsafe {
            let rec = *records.add(i);
            if rec.is_null() {
                continue;
            }
            let name_ptr = sys::virDomainGetName((*rec).dom);
            if name_ptr.is_null() {
                continue;
            }
            let name = CStr::from_ptr(name_ptr).to_string_lossy().into_owned();
            let mut fields = HashMap::new();
            let count = usize::try_from((*rec).nparams).unwrap_or(0);
            for j in 0..count {
                let p = &*(*rec).params.add(j);
                let key = CStr::from_ptr(p.field.as_ptr())
                    .to_string_lossy()
                    .into_owned();
                let value = match u32::try_from(p.type_).unwrap_or(u32::MAX) {
                    sys::VIR_TYPED_PARAM_INT => StatValue::Int(p.value.i.max(0) as u64),
                    sys::VIR_TYPED_PARAM_UINT => StatValue::Int(u64::from(p.value.ui)),
                    sys::VIR_TYPED_PARAM_LLONG => StatValue::Int(p.value.l.max(0) as u64),
                    sys::VIR_TYPED_PARAM_ULLONG => StatValue::Int(p.value.ul),
                    sys::VIR_TYPED_PARAM_DOUBLE => StatValue::Float(p.value.d),
                    _ => continue,
                };
                fields.insert(key, value);
            }
            out.insert(name, fields);
        }
    }
    if !records.is_null() {
        // SAFETY: `records` came from virConnectGetAllDomainStats and is freed once.
        unsafe { sys::virDomainStatsRecordListFree(records) };
    }
    Ok(out)
}

/// The address of a connection's libvirt handle: two `Connect`s are the same connection
/// when it is equal.
pub(super) fn connect_addr(c: &Connect) -> usize {
    // SAFETY: reading the handle's pointer value does not dereference it.
    unsafe { c.as_ptr() as usize }
}
