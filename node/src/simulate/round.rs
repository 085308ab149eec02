//! One round of decentralized balancing: every host, in random order, opens at most one
//! session with a peer it picks; a host already in a session this round answers `Busy`.
//! Each session calls [`crate::policy::decide`] with both hosts' fresh figures.

use super::cluster::Cluster;
use super::rules::{host_breaks_a_rule, SimPairRules};
use crate::policy::{
    choose_peer, decide, swap_possible, Candidate, Context, Decision, PolicyConfig, Sender, View,
};
use rand::{seq::SliceRandom, Rng};

/// Buffers reused from round to round, so a round allocates nothing.
#[derive(Debug)]
pub struct RoundState {
    order: Vec<u32>,
    busy_in_round: Vec<u32>,
    round: u32,
    mine: Vec<Candidate>,
    theirs: Vec<Candidate>,
    indices: Vec<usize>,
    /// Every host's load, dense: peer sampling reads it at random, hundreds of millions
    /// of times.
    loads: Vec<f64>,
}

impl RoundState {
    /// Buffers for a cluster of `hosts` hosts.
    pub fn new(hosts: usize) -> Self {
        Self {
            order: (0..hosts as u32).collect(),
            busy_in_round: vec![0; hosts],
            round: 0,
            mine: Vec::new(),
            theirs: Vec::new(),
            indices: Vec::new(),
            loads: Vec::with_capacity(hosts),
        }
    }

    fn fit(&mut self, hosts: usize) {
        if self.order.len() != hosts {
            *self = Self::new(hosts);
        }
    }
}

/// What one round did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RoundOutcome {
    /// Sessions opened.
    pub sessions: u64,
    /// Sessions refused because the peer was busy.
    pub busy: u64,
    /// VMs moved (a swap counts two).
    pub migrations: u64,
    /// Swaps among the sessions.
    pub swaps: u64,
    /// Sum of the raw loads moved.
    pub load_moved: f64,
}

/// Runs one round over every host of `cluster`. `now_ms` is the round's time (for the
/// policy's cooldown).
pub fn run_round<R: Rng + ?Sized>(
    cluster: &mut Cluster,
    st: &mut RoundState,
    cfg: &PolicyConfig,
    now_ms: u64,
    rng: &mut R,
) -> RoundOutcome {
    let n = cluster.host_count();
    st.fit(n);
    st.round += 1;
    let round = st.round;
    let mut out = RoundOutcome::default();
    let ctx = Context {
        now_ms,
        rules: None,
    };
    st.order.shuffle(rng);
    st.loads.clear();
    st.loads.extend(cluster.hosts.iter().map(|h| h.load));
    for k in 0..n {
        let a = st.order[k] as usize;
        if st.busy_in_round[a] == round {
            continue;
        }
        let l_a = st.loads[a];
        // Peers are numbered 0..n-1 with `a` left out.
        let other = |i: usize| if i >= a { i + 1 } else { i };
        let Some(i) = choose_peer(
            rng,
            n - 1,
            l_a,
            |i| st.loads[other(i)],
            cfg.samples_per_round(),
        ) else {
            continue;
        };
        let b = other(i);
        // A host holding a VM that breaks a rule opens a session anyway (a repair).
        if gossip_shows_no_gap(l_a, st.loads[b], cfg)
            && !(cluster.has_rules && host_breaks_a_rule(&cluster.hosts[a]))
        {
            continue;
        }
        if st.busy_in_round[b] == round {
            out.busy += 1;
            continue;
        }
        st.busy_in_round[a] = round;
        st.busy_in_round[b] = round;
        out.sessions += 1;
        session(cluster, st, a, b, cfg, &ctx, &mut out);
        st.loads[a] = cluster.hosts[a].load;
        st.loads[b] = cluster.hosts[b].load;
    }
    out
}

/// Step 2 of the round: the gossiped loads already show there is nothing to do.
fn gossip_shows_no_gap(l_a: f64, l_b: f64, cfg: &PolicyConfig) -> bool {
    match cfg.sender {
        Sender::Initiator => l_a <= l_b + cfg.threshold,
        Sender::Busier => (l_a - l_b).abs() <= cfg.threshold,
    }
}

/// One session between `a` (opened it) and `b`: both sides' figures, one decision, the
/// planned moves applied one after another.
fn session(
    cluster: &mut Cluster,
    st: &mut RoundState,
    a: usize,
    b: usize,
    cfg: &PolicyConfig,
    ctx: &Context<'_>,
    out: &mut RoundOutcome,
) {
    // `decide` reads the less busy side's candidates only for a swap: skip weighing them
    // when no swap is possible (the simulator's hottest loop; the decision is the same).
    let (l_a, l_b) = (cluster.hosts[a].load, cluster.hosts[b].load);
    let (busier_a, busier_b) = (l_a >= l_b, l_b > l_a);
    // With placement rules either side may hold a VM to repair: weigh both.
    let swap = swap_possible(l_a.max(l_b), l_a.min(l_b), cfg) || cluster.has_rules;
    st.mine.clear();
    st.theirs.clear();
    if busier_a || swap {
        fill_candidates(cluster, a, b, &mut st.mine);
    }
    if busier_b || swap {
        fill_candidates(cluster, b, a, &mut st.theirs);
    }
    let local = View {
        load: cluster.hosts[a].load,
        candidates: &st.mine,
        free_mem_bytes: u64::MAX,
    };
    let peer = View {
        load: cluster.hosts[b].load,
        candidates: &st.theirs,
        free_mem_bytes: u64::MAX,
    };
    let pair = SimPairRules {
        local: &cluster.hosts[a],
        peer: &cluster.hosts[b],
    };
    let with_rules = Context {
        rules: Some(&pair),
        ..*ctx
    };
    let ctx = if cluster.has_rules { &with_rules } else { ctx };
    let decision = decide(&local, &peer, ctx, cfg);
    let (from, to, moves) = match decision {
        Decision::Send(m) => (a, b, m),
        Decision::Receive(m) => (b, a, m),
        Decision::Swap { give, take } => {
            // `give` leaves a first; pushing it onto b's end keeps `take.index` valid.
            out.load_moved += cluster.move_vm(a, give.index, b);
            out.load_moved += cluster.move_vm(b, take.index, a);
            out.migrations += 2;
            out.swaps += 1;
            return;
        }
        Decision::Stay(_) => return,
    };
    // Remove from the highest index down so swap_remove keeps the others in place.
    st.indices.clear();
    st.indices.extend(moves.iter().map(|m| m.index));
    st.indices.sort_unstable_by(|x, y| y.cmp(x));
    for &i in &st.indices {
        out.load_moved += cluster.move_vm(from, i, to);
        out.migrations += 1;
    }
}

/// Appends the VMs of `host`, weighed there and on `other`, to `into`.
fn fill_candidates(cluster: &Cluster, host: usize, other: usize, into: &mut Vec<Candidate>) {
    let (here, there) = (cluster.hosts[host].capacity, cluster.hosts[other].capacity);
    into.extend(cluster.hosts[host].vms.iter().map(|&raw| Candidate {
        load_here: raw / here,
        load_there: raw / there,
        mem_bytes: 0,
        pinned: false,
        last_moved_ms: None,
    }));
}
