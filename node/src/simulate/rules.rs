//! Placement rules in the simulator (docs/design-placement-rules.md): anti-affinity
//! groups and one host tag, assigned at random to a scenario's VMs and hosts, and the
//! rules of one session as the policy asks them ([`SimPairRules`], the same
//! `policy::MoveRules` the agent implements over its holdings).

use super::cluster::{Cluster, Host, SimVmRules};
use crate::policy::{MoveRules, PlannedMove, Side};
use rand::seq::SliceRandom;
use rand::Rng;

/// Rules to add to a scenario.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SimRuleOptions {
    /// Anti-affinity groups.
    pub groups: u32,
    /// Members per group.
    pub group_size: u32,
    /// Share of the hosts that carry the tag.
    pub tagged_hosts: f64,
    /// Share of the VMs that require it.
    pub tagged_vms: f64,
}

/// Gives the cluster's hosts the tag and its VMs groups and requirements, at random;
/// the initial placement may break them (balancing repairs what it can).
pub fn assign<R: Rng + ?Sized>(cluster: &mut Cluster, opts: &SimRuleOptions, rng: &mut R) {
    let n = cluster.host_count();
    let tagged = ((n as f64 * opts.tagged_hosts).round() as usize).min(n);
    let mut hosts: Vec<usize> = (0..n).collect();
    hosts.shuffle(rng);
    for (k, &h) in hosts.iter().enumerate() {
        let host = &mut cluster.hosts[h];
        host.tagged = k < tagged;
        host.rules = vec![SimVmRules::default(); host.vms.len()];
    }
    let mut vms: Vec<(usize, usize)> = cluster
        .hosts
        .iter()
        .enumerate()
        .flat_map(|(h, host)| (0..host.vms.len()).map(move |i| (h, i)))
        .collect();
    vms.shuffle(rng);
    let members = (opts.groups as usize * opts.group_size as usize).min(vms.len());
    for (k, &(h, i)) in vms[..members].iter().enumerate() {
        cluster.hosts[h].rules[i].group = Some((k / opts.group_size.max(1) as usize) as u32);
    }
    let needing = (vms.len() as f64 * opts.tagged_vms).round() as usize;
    for &(h, i) in vms[members..].iter().take(needing) {
        cluster.hosts[h].rules[i].needs_tag = true;
    }
    cluster.has_rules = true;
}

/// Whether the VM with `rules` breaks a hard rule on `host`, counting the host's VMs but
/// `own` (its index there, if it is there) and `leaving`.
fn breaks(rules: SimVmRules, host: &Host, own: Option<usize>, leaving: Option<usize>) -> bool {
    if rules.needs_tag && !host.tagged {
        return true;
    }
    rules.group.is_some_and(|g| {
        host.rules
            .iter()
            .enumerate()
            .any(|(j, r)| Some(j) != own && Some(j) != leaving && r.group == Some(g))
    })
}

/// Whether one of `host`'s VMs breaks a hard rule there.
pub fn host_breaks_a_rule(host: &Host) -> bool {
    (0..host.rules.len()).any(|i| breaks(host.rules[i], host, Some(i), None))
}

/// The number of VMs of the cluster that break a hard rule where they are.
pub fn broken(cluster: &Cluster) -> usize {
    cluster
        .hosts
        .iter()
        .map(|h| {
            (0..h.rules.len())
                .filter(|&i| breaks(h.rules[i], h, Some(i), None))
                .count()
        })
        .sum()
}

/// The rules of a session between hosts `local` and `peer`.
#[derive(Debug)]
pub struct SimPairRules<'a> {
    /// The host that opened the session.
    pub local: &'a Host,
    /// The other host.
    pub peer: &'a Host,
}

impl SimPairRules<'_> {
    fn host(&self, side: Side) -> &Host {
        match side {
            Side::Local => self.local,
            Side::Peer => self.peer,
        }
    }
}

impl MoveRules for SimPairRules<'_> {
    fn allows(
        &self,
        from: Side,
        index: usize,
        moving_with: &[PlannedMove],
        back: Option<usize>,
    ) -> bool {
        let (src, dst) = (self.host(from), self.host(from.other()));
        let Some(&r) = src.rules.get(index) else {
            return true;
        };
        if breaks(r, dst, None, back) {
            return false;
        }
        r.group.is_none_or(|g| {
            !moving_with
                .iter()
                .any(|m| src.rules.get(m.index).is_some_and(|o| o.group == Some(g)))
        })
    }

    fn breaks_here(&self, side: Side, index: usize) -> bool {
        let h = self.host(side);
        h.rules
            .get(index)
            .is_some_and(|&r| breaks(r, h, Some(index), None))
    }
}
