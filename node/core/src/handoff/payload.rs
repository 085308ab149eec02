//! [`Payload`]: what travels with a `Prepare` — the VM's spec and load factors.
//!
//! The shared record types hold `f64`s and so are neither `Eq` nor `Hash`; the machine's
//! state (and the model checker that explores it) needs both, so the payload implements
//! them over the floats' bit patterns.

use crate::types::{LoadFactors, ScheduleEntry, VmSpec};
use serde::{Deserialize, Serialize};
use std::hash::{Hash, Hasher};

/// Most disks, extra arguments or driver options a payload may carry (each list).
pub const PAYLOAD_LIST_LEN_MAX: usize = 64;
/// Longest string inside a payload, in bytes.
pub const PAYLOAD_STR_LEN_MAX: usize = 4096;

/// A VM's spec and last load factors, as sent in `Prepare` and stored by the destination.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// How to run the VM.
    pub spec: VmSpec,
    /// Its last smoothed load factors (or its target).
    pub factors: LoadFactors,
}

impl Payload {
    /// The VM's guest memory in bytes: what its migration puts on the wire, counted
    /// against `HandoffConfig::bytes_max`.
    pub fn mem_bytes(&self) -> u64 {
        self.spec.memory_mib.saturating_mul(1 << 20)
    }

    /// The payload of a schedule entry.
    pub fn of_entry(entry: &ScheduleEntry) -> Self {
        Self {
            spec: entry.spec.clone(),
            factors: entry.factors,
        }
    }

    /// Checks bounds: finite non-negative factors, bounded lists and strings.
    pub fn validate(&self) -> Result<(), &'static str> {
        let finite = |f: &LoadFactors| {
            [f.cpu, f.io, f.mem]
                .iter()
                .all(|x| x.is_finite() && *x >= 0.0)
        };
        if !finite(&self.factors) {
            return Err("load factors must be finite and not negative");
        }
        if self.spec.target.as_ref().is_some_and(|t| !finite(t)) {
            return Err("target factors must be finite and not negative");
        }
        let spec = &self.spec;
        if spec.disks.len() > PAYLOAD_LIST_LEN_MAX
            || spec.extra_args.len() > PAYLOAD_LIST_LEN_MAX
            || spec.driver_opts.len() > PAYLOAD_LIST_LEN_MAX
        {
            return Err("too many disks, arguments or driver options");
        }
        let long = |s: &String| s.len() > PAYLOAD_STR_LEN_MAX;
        if spec.disks.iter().any(long)
            || spec.extra_args.iter().any(long)
            || spec.driver_opts.iter().any(|(k, v)| long(k) || long(v))
        {
            return Err("string too long");
        }
        if spec.rules.validate().is_err() {
            return Err("malformed placement rules");
        }
        Ok(())
    }
}

/// Floats compare by value; a NaN payload (refused by [`Payload::validate`]) is the only
/// case where `Eq`'s reflexivity would not hold.
impl Eq for Payload {}

impl Hash for Payload {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let spec = &self.spec;
        spec.vcpus.hash(state);
        spec.memory_mib.hash(state);
        spec.target.map(factor_bits).hash(state);
        spec.disks.hash(state);
        spec.extra_args.hash(state);
        spec.driver_opts.hash(state);
        spec.rules.hash(state);
        factor_bits(self.factors).hash(state);
    }
}

fn factor_bits(f: LoadFactors) -> [u64; 3] {
    [f.cpu.to_bits(), f.io.to_bits(), f.mem.to_bits()]
}
