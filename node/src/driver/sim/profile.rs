//! Synthetic usage profiles of sim VMs: pure functions of the VM's spec, its seed and its
//! guest run time (no clock, no I/O).
//!
//! A profile gives rates (CPU in reference cores, I/O in bytes per second) that are
//! piecewise constant over guest run time; [`ProfileCursor`] integrates them into the
//! cumulative counters a driver reports. Keys read from `VmSpec.driver_opts`:
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `profile` | `constant`, `step` or `walk` | `constant` |
//! | `cpu` | CPU rate, reference cores | `target.cpu`, else 0.5 |
//! | `io` | I/O rate, bytes per second | `target.io`, else 0 |
//! | `mem` | resident memory, bytes | `target.mem`, else `memory_mib` MiB |
//! | `step_at_ms` | `step`: guest run time of the step | 10000 |
//! | `cpu_after`, `io_after` | `step`: rates after the step | 2 × `cpu`, 2 × `io` |
//! | `period_ms` | `walk`: length of one constant segment (≥ 10) | 1000 |
//! | `walk_step` | `walk`: largest relative change per segment | 0.2 |
//! | `cpu_max`, `io_max` | `walk`: upper bounds of the rates | max(`vcpus`, `cpu`), 4 × `io` |
//! | `seed` | the VM's own seed (travels with the VM) | from the driver's seed and VM id |
//!
//! Unknown keys are ignored (other drivers' options may share the map).

use ballast_store::VmSpec;

const MIB: f64 = 1024.0 * 1024.0;
const NS_PER_S: f64 = 1e9;

/// A spec whose usage profile cannot be understood. Nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// A key holds a value that does not parse or is out of range.
    #[error("driver_opts `{key}` = `{value}`: {why}")]
    BadValue {
        /// The key.
        key: String,
        /// Its value.
        value: String,
        /// What is wrong.
        why: &'static str,
    },
}

/// The shape of a VM's usage over its guest run time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ProfileKind {
    /// Constant rates.
    Constant,
    /// Rates `cpu`/`io` until `step_at_ns`, then `cpu_after`/`io_after`.
    Step {
        /// Guest run time of the step, nanoseconds.
        step_at_ns: u64,
        /// CPU rate after the step.
        cpu_after: f64,
        /// I/O rate after the step.
        io_after: f64,
    },
    /// A bounded multiplicative random walk, one step per segment.
    Walk {
        /// Segment length, nanoseconds.
        period_ns: u64,
        /// Largest relative change per segment.
        step: f64,
        /// Upper bound of the CPU rate.
        cpu_max: f64,
        /// Upper bound of the I/O rate.
        io_max: f64,
    },
}

/// A parsed usage profile.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UsageProfile {
    /// Its shape.
    pub kind: ProfileKind,
    /// Initial CPU rate, reference cores.
    pub cpu: f64,
    /// Initial I/O rate, bytes per second.
    pub io: f64,
    /// Resident memory, bytes.
    pub mem: u64,
    /// The VM's own seed when the spec names one.
    pub seed: Option<u64>,
}

impl UsageProfile {
    /// Reads the profile from `spec.driver_opts`, falling back to `spec.target`.
    pub fn from_spec(spec: &VmSpec) -> Result<Self, ProfileError> {
        let o = Opts(spec);
        let target = spec.target.unwrap_or_default();
        let has_target = spec.target.is_some();
        let cpu = o.rate("cpu", if has_target { target.cpu } else { 0.5 })?;
        let io = o.rate("io", if has_target { target.io } else { 0.0 })?;
        let mem_default = if has_target && target.mem > 0.0 {
            target.mem
        } else {
            spec.memory_mib as f64 * MIB
        };
        let mem = o.rate("mem", mem_default)? as u64;
        let seed = o.get("seed").map(|v| parse_u64("seed", v)).transpose()?;
        let kind = match o.get("profile").unwrap_or("constant") {
            "constant" => ProfileKind::Constant,
            "step" => ProfileKind::Step {
                step_at_ns: o.u64("step_at_ms", 10_000)?.saturating_mul(1_000_000),
                cpu_after: o.rate("cpu_after", 2.0 * cpu)?,
                io_after: o.rate("io_after", 2.0 * io)?,
            },
            "walk" => {
                let period_ms = o.u64("period_ms", 1000)?;
                if period_ms < 10 {
                    return Err(bad("period_ms", &period_ms.to_string(), "must be >= 10"));
                }
                ProfileKind::Walk {
                    period_ns: period_ms * 1_000_000,
                    step: o.rate("walk_step", 0.2)?.min(1.0),
                    cpu_max: o.rate("cpu_max", f64::from(spec.vcpus).max(cpu))?,
                    io_max: o.rate("io_max", 4.0 * io)?,
                }
            }
            other => return Err(bad("profile", other, "expected constant, step or walk")),
        };
        Ok(Self {
            kind,
            cpu,
            io,
            mem,
            seed,
        })
    }
}

fn bad(key: &str, value: &str, why: &'static str) -> ProfileError {
    ProfileError::BadValue {
        key: key.to_owned(),
        value: value.to_owned(),
        why,
    }
}

fn parse_u64(key: &str, v: &str) -> Result<u64, ProfileError> {
    v.trim()
        .parse()
        .map_err(|_| bad(key, v, "expected an unsigned integer"))
}

/// Typed access to `driver_opts`.
struct Opts<'a>(&'a VmSpec);

impl Opts<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.driver_opts.get(key).map(String::as_str)
    }
    fn u64(&self, key: &str, default: u64) -> Result<u64, ProfileError> {
        self.get(key).map_or(Ok(default), |v| parse_u64(key, v))
    }
    /// A finite, non-negative number.
    fn rate(&self, key: &str, default: f64) -> Result<f64, ProfileError> {
        let Some(v) = self.get(key) else {
            return Ok(default);
        };
        match v.trim().parse::<f64>() {
            Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
            _ => Err(bad(key, v, "expected a finite number >= 0")),
        }
    }
}

/// SplitMix64: a tiny, stable, seedable generator (the walk must replay identically on
/// any host and any build).
#[derive(Clone, Copy, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A uniform number in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Derives a VM's seed from a host seed and the VM's name (FNV-1a, then mixed).
pub fn vm_seed(host_seed: u64, vm: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in vm.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    SplitMix64(h ^ host_seed).next_u64()
}

/// Cumulative usage of one VM as a function of its guest run time. Samples must be
/// asked with non-decreasing run times (the cursor only moves forward).
#[derive(Clone, Debug)]
pub struct ProfileCursor {
    profile: UsageProfile,
    rng: SplitMix64,
    /// Start of the current walk segment (guest run time, ns).
    seg_start_ns: u64,
    /// Counters at `seg_start_ns`.
    cpu_s_at_seg: f64,
    io_at_seg: f64,
    /// Rates within the current walk segment.
    cpu_rate: f64,
    io_rate: f64,
}

/// Cumulative counters at one guest run time.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cumulative {
    /// CPU seconds.
    pub cpu_time_s: f64,
    /// I/O bytes.
    pub io_bytes: u64,
    /// Resident memory, bytes.
    pub mem_bytes: u64,
}

impl ProfileCursor {
    /// A cursor at run time zero.
    pub fn new(profile: UsageProfile, seed: u64) -> Self {
        Self {
            profile,
            rng: SplitMix64(seed),
            seg_start_ns: 0,
            cpu_s_at_seg: 0.0,
            io_at_seg: 0.0,
            cpu_rate: profile.cpu,
            io_rate: profile.io,
        }
    }

    /// The counters after `run_ns` nanoseconds of guest run time.
    pub fn at(&mut self, run_ns: u64) -> Cumulative {
        let p = self.profile;
        let (cpu, io) = match p.kind {
            ProfileKind::Constant => {
                let t = run_ns as f64 / NS_PER_S;
                (p.cpu * t, p.io * t)
            }
            ProfileKind::Step {
                step_at_ns,
                cpu_after,
                io_after,
            } => {
                let before = run_ns.min(step_at_ns) as f64 / NS_PER_S;
                let after = run_ns.saturating_sub(step_at_ns) as f64 / NS_PER_S;
                (
                    p.cpu * before + cpu_after * after,
                    p.io * before + io_after * after,
                )
            }
            ProfileKind::Walk {
                period_ns,
                step,
                cpu_max,
                io_max,
            } => self.advance_walk(run_ns, period_ns, step, cpu_max, io_max),
        };
        Cumulative {
            cpu_time_s: cpu,
            io_bytes: io as u64,
            mem_bytes: p.mem,
        }
    }

    fn advance_walk(
        &mut self,
        run_ns: u64,
        period_ns: u64,
        step: f64,
        cpu_max: f64,
        io_max: f64,
    ) -> (f64, f64) {
        let period_s = period_ns as f64 / NS_PER_S;
        while run_ns >= self.seg_start_ns.saturating_add(period_ns) {
            self.cpu_s_at_seg += self.cpu_rate * period_s;
            self.io_at_seg += self.io_rate * period_s;
            self.seg_start_ns += period_ns;
            let (dc, di) = (self.rng.next_f64(), self.rng.next_f64());
            self.cpu_rate = (self.cpu_rate * (1.0 + step * (2.0 * dc - 1.0))).clamp(0.0, cpu_max);
            self.io_rate = (self.io_rate * (1.0 + step * (2.0 * di - 1.0))).clamp(0.0, io_max);
        }
        let part = run_ns.saturating_sub(self.seg_start_ns) as f64 / NS_PER_S;
        (
            self.cpu_s_at_seg + self.cpu_rate * part,
            self.io_at_seg + self.io_rate * part,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn spec(opts: &[(&str, &str)]) -> VmSpec {
        VmSpec {
            vcpus: 2,
            memory_mib: 64,
            driver_opts: opts
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            ..VmSpec::default()
        }
    }

    #[test]
    fn constant_grows_linearly() {
        let p = UsageProfile::from_spec(&spec(&[("cpu", "0.5"), ("io", "1e6")])).unwrap();
        let mut c = ProfileCursor::new(p, 1);
        let a = c.at(2_000_000_000);
        assert!((a.cpu_time_s - 1.0).abs() < 1e-9);
        assert_eq!(a.io_bytes, 2_000_000);
        assert_eq!(a.mem_bytes, 64 * 1024 * 1024);
    }

    #[test]
    fn target_is_used_when_no_opts() {
        let mut s = spec(&[]);
        s.target = Some(ballast_store::LoadFactors {
            cpu: 1.5,
            io: 10.0,
            mem: 1000.0,
        });
        let p = UsageProfile::from_spec(&s).unwrap();
        assert_eq!((p.cpu, p.io, p.mem), (1.5, 10.0, 1000));
        s.driver_opts = BTreeMap::from([("cpu".into(), "0.25".into())]);
        assert_eq!(UsageProfile::from_spec(&s).unwrap().cpu, 0.25);
    }

    #[test]
    fn step_changes_rate() {
        let s = spec(&[
            ("profile", "step"),
            ("cpu", "1"),
            ("cpu_after", "3"),
            ("step_at_ms", "1000"),
        ]);
        let mut c = ProfileCursor::new(UsageProfile::from_spec(&s).unwrap(), 0);
        assert!((c.at(1_000_000_000).cpu_time_s - 1.0).abs() < 1e-9);
        assert!((c.at(2_000_000_000).cpu_time_s - 4.0).abs() < 1e-9);
    }

    #[test]
    fn walk_is_deterministic_monotone_and_bounded() {
        let s = spec(&[
            ("profile", "walk"),
            ("cpu", "1"),
            ("period_ms", "10"),
            ("cpu_max", "2"),
        ]);
        let p = UsageProfile::from_spec(&s).unwrap();
        let (mut a, mut b, mut other) = (
            ProfileCursor::new(p, 7),
            ProfileCursor::new(p, 7),
            ProfileCursor::new(p, 8),
        );
        let mut last = 0.0;
        for i in 1..500u64 {
            let t = i * 3_333_333;
            let x = a.at(t);
            assert!(x.cpu_time_s >= last, "cpu time went back at {t}");
            assert!(
                x.cpu_time_s <= 2.0 * t as f64 / 1e9 + 1e-9,
                "rate above cpu_max"
            );
            last = x.cpu_time_s;
        }
        assert_eq!(
            a.at(5_000_000_000),
            b.at(5_000_000_000),
            "same seed, same walk"
        );
        assert_ne!(a.at(6_000_000_000), other.at(6_000_000_000), "seed matters");
    }

    #[test]
    fn bad_values_are_refused() {
        for opts in [
            [("profile", "zigzag")],
            [("cpu", "-1")],
            [("cpu", "NaN")],
            [("seed", "x")],
        ] {
            assert!(UsageProfile::from_spec(&spec(&opts)).is_err(), "{opts:?}");
        }
        let s = spec(&[("profile", "walk"), ("period_ms", "1")]);
        assert!(UsageProfile::from_spec(&s).is_err());
    }

    #[test]
    fn vm_seed_depends_on_both_inputs() {
        assert_ne!(vm_seed(1, "a"), vm_seed(2, "a"));
        assert_ne!(vm_seed(1, "a"), vm_seed(1, "b"));
        assert_eq!(vm_seed(1, "a"), vm_seed(1, "a"));
    }
}
