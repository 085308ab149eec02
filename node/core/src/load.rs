//! The load model (docs/design.md §Load): how much a VM weighs on a host.
//!
//! `load_h(v) = w_cpu * cpu(v) / cpu_capacity_h + w_io * io(v) / io_capacity_h
//!            + w_mem * mem(v) / mem_capacity_h`
//!
//! A VM's [`LoadFactors`] are host independent: CPU in reference cores (CPU seconds per
//! second scaled by the measuring host's speed relative to the reference), I/O in bytes
//! per second, memory in bytes. A host's capacities are in the same units, so the same
//! factors translate to a different load on an unlike host (S5, docs/design.md §Goals).
//! Pure: no I/O, no clock; times are arguments.

use crate::types::LoadFactors;
use serde::{Deserialize, Serialize};

/// How much each resource counts in a VM's load. Non-negative, not all zero.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Weights {
    /// Weight of CPU use.
    pub cpu: f64,
    /// Weight of I/O activity.
    pub io: f64,
    /// Weight of memory.
    pub mem: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            cpu: 0.6,
            io: 0.2,
            mem: 0.2,
        }
    }
}

/// What one host offers, in the units of [`LoadFactors`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostCapacity {
    /// Physical cores (or hardware threads) usable by VMs.
    pub cpu_cores: f64,
    /// This host's per-core speed relative to the cluster's reference core (1.0 = reference).
    pub cpu_speed: f64,
    /// I/O bytes per second the host sustains.
    pub io_bytes_per_s: f64,
    /// Memory available to VMs, in bytes.
    pub mem_bytes: f64,
}

impl Default for HostCapacity {
    fn default() -> Self {
        Self {
            cpu_cores: 16.0,
            cpu_speed: 1.0,
            io_bytes_per_s: 1.0e9,
            mem_bytes: 64.0 * 1024.0 * 1024.0 * 1024.0,
        }
    }
}

impl HostCapacity {
    /// CPU capacity in reference cores.
    pub fn cpu_reference_cores(&self) -> f64 {
        self.cpu_cores * self.cpu_speed
    }
}

/// Whether loads come from measurements or from each VM's target (S4, docs/design.md §Goals).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadMode {
    /// Smoothed measurements of CPU time, I/O and memory.
    #[default]
    Measured,
    /// Each VM's reservation (`VmSpec::target`), falling back to its size when unset.
    Target,
}

/// The load model of one host: weights and this host's capacities.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadModel {
    /// Resource weights, the same on every host of a cluster.
    pub weights: Weights,
    /// This host's capacities.
    pub capacity: HostCapacity,
}

impl LoadModel {
    /// The load `factors` put on this host.
    pub fn load_of(&self, f: &LoadFactors) -> f64 {
        let w = &self.weights;
        let c = &self.capacity;
        w.cpu * f.cpu / c.cpu_reference_cores()
            + w.io * f.io / c.io_bytes_per_s
            + w.mem * f.mem / c.mem_bytes
    }

    /// The load a whole set of VMs puts on this host.
    pub fn host_load<'a>(&self, factors: impl IntoIterator<Item = &'a LoadFactors>) -> f64 {
        factors.into_iter().map(|f| self.load_of(f)).sum()
    }
}

/// Cumulative counters read from a hypervisor at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counters {
    /// When they were read, in milliseconds of any monotonic clock.
    pub at_ms: u64,
    /// CPU seconds used so far on this host's cores.
    pub cpu_time_s: f64,
    /// I/O bytes so far.
    pub io_bytes: u64,
    /// Resident memory now, in bytes.
    pub mem_bytes: u64,
}

/// The raw factors over the window between two counter readings on a host whose cores
/// run at `cpu_speed` times the reference. `None` when the window is empty or the
/// counters went backwards (the VM restarted): the caller keeps its previous estimate.
pub fn factors_between(prev: &Counters, now: &Counters, cpu_speed: f64) -> Option<LoadFactors> {
    if now.at_ms <= prev.at_ms || now.cpu_time_s < prev.cpu_time_s || now.io_bytes < prev.io_bytes {
        return None;
    }
    let window_s = (now.at_ms - prev.at_ms) as f64 / 1000.0;
    Some(LoadFactors {
        cpu: (now.cpu_time_s - prev.cpu_time_s) / window_s * cpu_speed,
        io: (now.io_bytes - prev.io_bytes) as f64 / window_s,
        mem: now.mem_bytes as f64,
    })
}

/// Exponentially weighted moving average of load factors, so one spike moves nothing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ewma {
    /// Weight of a new sample, in (0, 1]: 1 keeps only the latest sample.
    pub alpha: f64,
    value: Option<LoadFactors>,
}

impl Ewma {
    /// An empty average with sample weight `alpha`.
    pub fn new(alpha: f64) -> Self {
        Self { alpha, value: None }
    }

    /// An average that starts from an earlier estimate (e.g. the one stored with the VM).
    pub fn starting_at(alpha: f64, value: LoadFactors) -> Self {
        Self {
            alpha,
            value: Some(value),
        }
    }

    /// Folds in one sample and returns the new average.
    pub fn update(&mut self, sample: LoadFactors) -> LoadFactors {
        let a = self.alpha;
        let next = match self.value {
            None => sample,
            Some(v) => LoadFactors {
                cpu: v.cpu + a * (sample.cpu - v.cpu),
                io: v.io + a * (sample.io - v.io),
                mem: v.mem + a * (sample.mem - v.mem),
            },
        };
        self.value = Some(next);
        next
    }

    /// The current average, if any sample was folded in.
    pub fn value(&self) -> Option<LoadFactors> {
        self.value
    }
}

/// The factors a VM is weighed by in `mode`: its smoothed measurement, or in target mode
/// its programmed reservation (its vCPUs and memory when it has none).
pub fn effective_factors(
    mode: LoadMode,
    measured: LoadFactors,
    spec: &crate::types::VmSpec,
) -> LoadFactors {
    match mode {
        LoadMode::Measured => measured,
        LoadMode::Target => spec.target.unwrap_or(LoadFactors {
            cpu: f64::from(spec.vcpus),
            io: 0.0,
            mem: spec.memory_mib as f64 * 1024.0 * 1024.0,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(cores: f64, speed: f64) -> LoadModel {
        LoadModel {
            weights: Weights {
                cpu: 1.0,
                io: 0.0,
                mem: 0.0,
            },
            capacity: HostCapacity {
                cpu_cores: cores,
                cpu_speed: speed,
                ..HostCapacity::default()
            },
        }
    }

    #[test]
    fn one_vm_weighs_less_on_a_bigger_faster_host() {
        let f = LoadFactors {
            cpu: 2.0,
            io: 0.0,
            mem: 0.0,
        };
        let small = model(8.0, 1.0);
        let big = model(16.0, 2.0);
        assert!((small.load_of(&f) - 0.25).abs() < 1e-12);
        assert!((big.load_of(&f) - 0.0625).abs() < 1e-12);
    }

    #[test]
    fn cpu_time_is_normalized_to_the_reference_speed() {
        let prev = Counters {
            at_ms: 0,
            cpu_time_s: 0.0,
            io_bytes: 0,
            mem_bytes: 10,
        };
        let now = Counters {
            at_ms: 2000,
            cpu_time_s: 1.0,
            io_bytes: 4000,
            mem_bytes: 20,
        };
        // Half a core on a host twice as fast as the reference is one reference core.
        let f = factors_between(&prev, &now, 2.0).expect("window is valid");
        assert!((f.cpu - 1.0).abs() < 1e-12);
        assert!((f.io - 2000.0).abs() < 1e-9);
        assert_eq!(f.mem, 20.0);
        assert_eq!(
            factors_between(&now, &prev, 1.0),
            None,
            "counters going back are refused"
        );
    }

    #[test]
    fn ewma_damps_a_single_spike() {
        let mut e = Ewma::new(0.2);
        let calm = LoadFactors {
            cpu: 1.0,
            io: 0.0,
            mem: 0.0,
        };
        for _ in 0..20 {
            e.update(calm);
        }
        let after_spike = e.update(LoadFactors { cpu: 11.0, ..calm });
        assert!(
            (after_spike.cpu - 3.0).abs() < 1e-9,
            "one spike moves the average by alpha only"
        );
    }

    #[test]
    fn target_mode_uses_the_reservation() {
        let mut spec = crate::types::VmSpec {
            vcpus: 2,
            memory_mib: 1024,
            ..Default::default()
        };
        let measured = LoadFactors {
            cpu: 0.1,
            io: 5.0,
            mem: 1.0,
        };
        assert_eq!(
            effective_factors(LoadMode::Measured, measured, &spec),
            measured
        );
        assert_eq!(
            effective_factors(LoadMode::Target, measured, &spec).cpu,
            2.0
        );
        spec.target = Some(LoadFactors {
            cpu: 0.5,
            io: 1.0,
            mem: 2.0,
        });
        assert_eq!(
            effective_factors(LoadMode::Target, measured, &spec),
            spec.target.unwrap_or_default()
        );
    }
}
