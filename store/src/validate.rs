//! Checks on caller input, done before any transaction so a refused call changes nothing.

use crate::codec::{encode, VM_ID_BYTES_MAX};
use crate::error::StoreError;
use crate::types::{LoadFactors, NodeId, ScheduleEntry, VmId};

/// The most VMs one `update_factors` call may carry.
pub const FACTOR_BATCH_MAX: usize = 10_000;

fn invalid(vm: &VmId, reason: impl Into<String>) -> StoreError {
    StoreError::InvalidInput {
        vm: vm.clone(),
        reason: reason.into(),
    }
}

/// A VM id must be non-empty and at most [`VM_ID_BYTES_MAX`] bytes.
pub(crate) fn vm_id(vm: &VmId) -> Result<(), StoreError> {
    if vm.as_str().is_empty() {
        return Err(invalid(vm, "empty VM id"));
    }
    if vm.as_str().len() > VM_ID_BYTES_MAX {
        return Err(invalid(
            vm,
            format!("VM id longer than {VM_ID_BYTES_MAX} bytes"),
        ));
    }
    Ok(())
}

/// A peer named in a handoff must be non-empty and not this node.
pub(crate) fn peer(vm: &VmId, peer: &NodeId, me: &NodeId) -> Result<(), StoreError> {
    if peer.as_str().is_empty() {
        return Err(invalid(vm, "empty peer node id"));
    }
    if peer == me {
        return Err(invalid(vm, "a handoff peer cannot be this node"));
    }
    Ok(())
}

/// Load factors must be finite and not negative.
pub(crate) fn factors(vm: &VmId, f: &LoadFactors) -> Result<(), StoreError> {
    let ok = |x: f64| x.is_finite() && x >= 0.0;
    if ok(f.cpu) && ok(f.io) && ok(f.mem) {
        Ok(())
    } else {
        Err(invalid(
            vm,
            format!("load factors must be finite and >= 0, got {f:?}"),
        ))
    }
}

/// A whole entry: its id, factors, target and encoded size.
pub(crate) fn entry(entry: &ScheduleEntry) -> Result<(), StoreError> {
    vm_id(&entry.vm)?;
    factors(&entry.vm, &entry.factors)?;
    if let Some(target) = &entry.spec.target {
        factors(&entry.vm, target)?;
    }
    encode(entry)
        .map(|_| ())
        .map_err(|reason| invalid(&entry.vm, reason))
}
