//! The workload: VMs whose simulated usage is a bounded random walk (so measured loads
//! keep changing and balancing never rests), names, and the choice of creates and
//! deletes. Pure: everything comes from the RNG passed in.

use ballast_node::rules::PlacementRules;
use ballast_store::{VmId, VmSpec};
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::BTreeMap;

/// The name of the `k`-th VM of a run.
pub fn vm_name(k: u64) -> VmId {
    VmId::from(format!("vm-{k:04}"))
}

/// The anti-affinity group of VM number `k` in a cluster of `agents` hosts: every
/// fourth VM joins one, `agents - 1` members per group, so that each group always has a
/// legal place for every member even with one host down.
pub fn anti_affinity_group(k: u64, agents: usize) -> Option<String> {
    let per_group = (agents.max(2) - 1) as u64;
    k.is_multiple_of(4)
        .then(|| format!("aa-{}", (k / 4) / per_group))
}

/// A VM of 1-2 vCPUs whose CPU use walks between 0.05 and its vCPU count, changing by
/// up to 30 % every second; 64 MiB; no I/O. Its walk seed comes from the RNG. `group`:
/// its anti-affinity group.
pub fn vm_spec(rng: &mut StdRng, group: Option<String>) -> VmSpec {
    let vcpus: u32 = rng.random_range(1..=2);
    let cpu: f64 = rng.random_range(0.1..=0.9) * f64::from(vcpus);
    let seed: u64 = rng.random();
    VmSpec {
        vcpus,
        memory_mib: 64,
        target: None,
        driver_opts: BTreeMap::from([
            ("profile".to_owned(), "walk".to_owned()),
            ("cpu".to_owned(), format!("{cpu:.3}")),
            ("cpu_max".to_owned(), format!("{vcpus}")),
            ("period_ms".to_owned(), "1000".to_owned()),
            ("walk_step".to_owned(), "0.3".to_owned()),
            ("seed".to_owned(), seed.to_string()),
        ]),
        rules: Box::new(PlacementRules {
            anti_affinity: group.into_iter().collect(),
            ..PlacementRules::default()
        }),
        ..VmSpec::default()
    }
}
