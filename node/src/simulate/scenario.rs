//! Initial states for the simulator. Units: a VM's raw load is its load on a host of
//! capacity 1; loads are lognormal with mean 1; hosts hold Poisson(20) VMs on average.

use super::{cluster::Cluster, cluster::Host, round};
use crate::policy::PolicyConfig;
use rand::Rng;
use rand_distr::{Distribution, LogNormal, Poisson};
use std::str::FromStr;

/// Mean number of VMs per host.
pub const VMS_PER_HOST: f64 = 20.0;
/// Sigma of the lognormal VM loads (their mean is 1).
pub const LOAD_SIGMA: f64 = 0.6;
/// The largest VM load drawn (half a mean host): larger draws are drawn again. A VM that
/// alone outweighs a mean host would make max/mean <= 1.05 impossible for any scheduler,
/// and a real VM's size is bounded by its host's.
pub const MAX_VM_LOAD: f64 = VMS_PER_HOST / 2.0;

/// The initial state of a simulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Poisson(20) VMs on every host, lognormal loads, identical hosts.
    Uniform,
    /// 10 % of the hosts hold 60 % of the VMs.
    Hotspot,
    /// A balanced cluster that 10 % new, empty hosts join.
    NewHosts,
    /// Host capacities from 0.5× to 2× (log-uniform); loads translate per host.
    Heterogeneous,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 4] = [
        Self::Uniform,
        Self::Hotspot,
        Self::NewHosts,
        Self::Heterogeneous,
    ];

    /// The scenario's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Uniform => "uniform",
            Self::Hotspot => "hotspot",
            Self::NewHosts => "new-hosts",
            Self::Heterogeneous => "heterogeneous",
        }
    }
}

impl FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| format!("unknown scenario {s:?}; expected one of uniform, hotspot, new-hosts, heterogeneous"))
    }
}

/// Builds the initial cluster of `hosts` hosts for `scenario`.
pub fn build<R: Rng + ?Sized>(
    scenario: Scenario,
    hosts: usize,
    policy: &PolicyConfig,
    rng: &mut R,
) -> Cluster {
    let hosts = hosts.max(2);
    match scenario {
        Scenario::Uniform => Cluster {
            hosts: (0..hosts).map(|_| host(1.0, VMS_PER_HOST, rng)).collect(),
            has_rules: false,
        },
        Scenario::Hotspot => {
            let hot = (hosts / 10).max(1);
            let hot_mean = 0.6 * VMS_PER_HOST * hosts as f64 / hot as f64;
            let cold_mean = 0.4 * VMS_PER_HOST * hosts as f64 / (hosts - hot) as f64;
            let mut c = Cluster {
                hosts: (0..hosts)
                    .map(|h| host(1.0, if h < hot { hot_mean } else { cold_mean }, rng))
                    .collect(),
                has_rules: false,
            };
            c.hosts.reverse();
            c
        }
        Scenario::Heterogeneous => Cluster {
            hosts: (0..hosts)
                .map(|_| host(2f64.powf(rng.random_range(-1.0..=1.0)), VMS_PER_HOST, rng))
                .collect(),
            has_rules: false,
        },
        Scenario::NewHosts => {
            let new = (hosts / 10).max(1);
            let old = hosts - new;
            let mean = VMS_PER_HOST * hosts as f64 / old as f64;
            let mut c = Cluster {
                hosts: (0..old).map(|_| host(1.0, mean, rng)).collect(),
                has_rules: false,
            };
            // Balance the old hosts first, with the same rounds, so the join is what is measured.
            let mut st = round::RoundState::new(old);
            for r in 0..200u64 {
                if c.imbalance().0 <= 1.05 {
                    break;
                }
                round::run_round(&mut c, &mut st, policy, r * 1000, rng);
            }
            c.hosts.extend((0..new).map(|_| Host::new(1.0, Vec::new())));
            c
        }
    }
}

/// A host of `capacity` with Poisson(`mean_vms`) VMs of lognormal load.
fn host<R: Rng + ?Sized>(capacity: f64, mean_vms: f64, rng: &mut R) -> Host {
    let count = Poisson::new(mean_vms).map_or(0.0, |p| p.sample(rng)) as usize;
    let loads = LogNormal::new(-LOAD_SIGMA * LOAD_SIGMA / 2.0, LOAD_SIGMA)
        .expect("sigma is a valid constant");
    let mut draw = || loop {
        let l = loads.sample(rng);
        if l <= MAX_VM_LOAD {
            return l;
        }
    };
    Host::new(capacity, (0..count).map(|_| draw()).collect())
}
