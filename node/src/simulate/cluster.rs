//! The simulated cluster: host capacities and the raw loads of the VMs on each host.

/// A simulated VM's placement rules (`simulate::rules`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimVmRules {
    /// Its anti-affinity group.
    pub group: Option<u32>,
    /// Whether it needs a tagged host.
    pub needs_tag: bool,
}

/// One simulated host.
#[derive(Clone, Debug)]
pub struct Host {
    /// Capacity relative to the reference host (1.0).
    pub capacity: f64,
    /// Raw loads of the VMs it holds (a VM's load on a host of capacity 1).
    pub vms: Vec<f64>,
    /// Its load: the sum of `vms` divided by `capacity`.
    pub load: f64,
    /// Whether it carries the tag some VMs require.
    pub tagged: bool,
    /// The rules of its VMs, in the order of `vms` (empty in a run without rules).
    pub rules: Vec<SimVmRules>,
}

impl Host {
    /// A host of `capacity` holding `vms`.
    pub fn new(capacity: f64, vms: Vec<f64>) -> Self {
        let load = vms.iter().sum::<f64>() / capacity;
        Self {
            capacity,
            vms,
            load,
            tagged: false,
            rules: Vec::new(),
        }
    }
}

/// Every host of a simulated cluster.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    /// The hosts, by index.
    pub hosts: Vec<Host>,
    /// Whether its VMs carry placement rules (every host's `rules` is then filled).
    pub has_rules: bool,
}

impl Cluster {
    /// Number of hosts.
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// Number of VMs.
    pub fn vm_count(&self) -> usize {
        self.hosts.iter().map(|h| h.vms.len()).sum()
    }

    /// Moves the VM at `index` on host `from` to host `to`; returns its raw load.
    pub fn move_vm(&mut self, from: usize, index: usize, to: usize) -> f64 {
        let raw = self.hosts[from].vms.swap_remove(index);
        if self.has_rules {
            let r = self.hosts[from].rules.swap_remove(index);
            self.hosts[to].rules.push(r);
        }
        let src = &mut self.hosts[from];
        src.load = (src.load - raw / src.capacity).max(0.0);
        if src.vms.is_empty() {
            src.load = 0.0;
        }
        let dst = &mut self.hosts[to];
        dst.vms.push(raw);
        dst.load += raw / dst.capacity;
        raw
    }

    /// The load every host would carry if the cluster were perfectly balanced:
    /// `Σ raw / Σ capacity`.
    pub fn mean_load(&self) -> f64 {
        let (raw, cap) = self.hosts.iter().fold((0.0, 0.0), |(r, c), h| {
            (r + h.load * h.capacity, c + h.capacity)
        });
        if cap > 0.0 {
            raw / cap
        } else {
            0.0
        }
    }

    /// `(max_h L_h / mean, coefficient of variation)` where the mean is the load every
    /// host would carry if the cluster were perfectly balanced: `Σ raw / Σ capacity`.
    pub fn imbalance(&self) -> (f64, f64) {
        let (raw, cap) = self.hosts.iter().fold((0.0, 0.0), |(r, c), h| {
            (r + h.load * h.capacity, c + h.capacity)
        });
        if raw <= 0.0 || cap <= 0.0 {
            return (1.0, 0.0);
        }
        let mean = raw / cap;
        let (max, sq) = self.hosts.iter().fold((0.0f64, 0.0), |(m, s), h| {
            (m.max(h.load), s + (h.load - mean).powi(2))
        });
        let sd = (sq / self.hosts.len() as f64).sqrt();
        (max / mean, sd / mean)
    }
}
