//! Laws of the balancing policy under placement rules (docs/design.md §Placement rules),
//! as property tests: for random pairs of hosts, VMs, rules and loads, no decision breaks
//! a hard rule, none splits an affinity group further, a VM that breaks a hard rule moves
//! when it legally can, and rules that name nothing change nothing.

use ballast_node::policy::{
    decide, Candidate, Context, Decision, MoveRules, PolicyConfig, Sender, Side, View,
};
use ballast_node::rules::{Holdings, PairRules, PairSide, PlacementRules};
use ballast_node::units::Millis;
use ballast_store::VmId;
use proptest::prelude::*;
use std::collections::BTreeSet;

const NOW: u64 = 1_000_000;

/// One VM of a generated host: its load and its rules.
#[derive(Clone, Debug)]
struct Vm {
    id: VmId,
    load: f64,
    rules: PlacementRules,
}

/// A generated host: tags, its candidates, and VMs it holds that are not candidates
/// (arriving or leaving).
#[derive(Clone, Debug)]
struct Host {
    tags: Vec<String>,
    vms: Vec<Vm>,
    others: Vec<Vm>,
}

impl Host {
    fn load(&self) -> f64 {
        self.vms.iter().chain(&self.others).map(|v| v.load).sum()
    }
    fn holdings(&self) -> Holdings {
        Holdings::of(
            &self.tags,
            self.vms
                .iter()
                .chain(&self.others)
                .map(|v| (&v.id, &v.rules)),
        )
    }
    fn rule_list(&self) -> Vec<(VmId, PlacementRules)> {
        self.vms
            .iter()
            .map(|v| (v.id.clone(), v.rules.clone()))
            .collect()
    }
    fn candidates(&self) -> Vec<Candidate> {
        self.vms
            .iter()
            .map(|v| Candidate {
                load_here: v.load,
                load_there: v.load,
                mem_bytes: 1,
                pinned: false,
                last_moved_ms: None,
            })
            .collect()
    }
}

fn pick(names: &'static [&'static str]) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(prop::sample::select(names), 0..2).prop_map(|v| {
        v.into_iter()
            .map(str::to_owned)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    })
}

fn rules() -> impl Strategy<Value = PlacementRules> {
    (
        pick(&["db", "web", "cache"]),
        pick(&["app-1", "app-2"]),
        pick(&["gpu", "zone=a"]),
        0u8..4,
    )
        .prop_map(|(anti, aff, req, keep)| PlacementRules {
            // Most VMs carry few rules, so that moves stay possible.
            anti_affinity: if keep > 0 { anti } else { Vec::new() },
            affinity: if keep > 1 { aff } else { Vec::new() },
            requires: if keep > 2 { req } else { Vec::new() },
            forced_on: None,
        })
}

fn host(prefix: &'static str) -> impl Strategy<Value = Host> {
    (
        pick(&["gpu", "zone=a"]),
        prop::collection::vec((0.05f64..3.0, rules()), 0..12),
        prop::collection::vec((0.05f64..1.0, rules()), 0..3),
    )
        .prop_map(move |(tags, vms, others)| {
            let mk = |(i, (load, rules)): (usize, (f64, PlacementRules)), kind: &str| Vm {
                id: VmId::from(format!("{prefix}-{kind}{i}")),
                load,
                rules,
            };
            Host {
                tags,
                vms: vms.into_iter().enumerate().map(|x| mk(x, "v")).collect(),
                others: others.into_iter().enumerate().map(|x| mk(x, "o")).collect(),
            }
        })
}

fn cfg(max_moves: usize, sender: Sender) -> PolicyConfig {
    PolicyConfig {
        threshold: 0.05,
        min_gain: 0.0,
        cooldown: Millis::new(0),
        max_moves_per_session: max_moves,
        sender,
        ..PolicyConfig::default()
    }
}

/// The hosts after a decision: which VMs each holds.
fn after(local: &Host, peer: &Host, d: &Decision) -> (Vec<Vm>, Vec<Vm>) {
    let mut l: Vec<Vm> = local.vms.iter().chain(&local.others).cloned().collect();
    let mut p: Vec<Vm> = peer.vms.iter().chain(&peer.others).cloned().collect();
    let carry = |from: &mut Vec<Vm>, to: &mut Vec<Vm>, src: &Host, index: usize| {
        let id = &src.vms[index].id;
        let at = from
            .iter()
            .position(|v| &v.id == id)
            .expect("moved VM is held");
        to.push(from.remove(at));
    };
    match d {
        Decision::Send(ms) => ms
            .iter()
            .for_each(|m| carry(&mut l, &mut p, local, m.index)),
        Decision::Receive(ms) => ms.iter().for_each(|m| carry(&mut p, &mut l, peer, m.index)),
        Decision::Swap { give, take } => {
            carry(&mut l, &mut p, local, give.index);
            carry(&mut p, &mut l, peer, take.index);
        }
        Decision::Stay(_) => {}
    }
    (l, p)
}

/// The moved VMs and where they went, with that host's tags and VMs afterwards.
fn arrivals<'a>(d: &Decision, local: &'a Host, peer: &'a Host) -> Vec<(&'a Vm, Side)> {
    match d {
        Decision::Send(ms) => ms
            .iter()
            .map(|m| (&local.vms[m.index], Side::Peer))
            .collect(),
        Decision::Receive(ms) => ms
            .iter()
            .map(|m| (&peer.vms[m.index], Side::Local))
            .collect(),
        Decision::Swap { give, take } => vec![
            (&local.vms[give.index], Side::Peer),
            (&peer.vms[take.index], Side::Local),
        ],
        Decision::Stay(_) => Vec::new(),
    }
}

/// The first hard rule `vm` breaks among `held` on a host with `tags`.
fn hard_break(vm: &Vm, tags: &[String], held: &[Vm]) -> Option<String> {
    if let Some(t) = vm.rules.requires.iter().find(|t| !tags.contains(t)) {
        return Some(format!("requires {t}"));
    }
    vm.rules.anti_affinity.iter().find_map(|g| {
        held.iter()
            .find(|o| o.id != vm.id && o.rules.anti_affinity.contains(g))
            .map(|o| format!("anti-affinity {g} with {}", o.id))
    })
}

/// Hosts (of two) each affinity group spans.
fn spans(l: &[Vm], p: &[Vm]) -> Vec<(String, usize)> {
    let groups: BTreeSet<&String> = l.iter().chain(p).flat_map(|v| &v.rules.affinity).collect();
    groups
        .into_iter()
        .map(|g| {
            let on = |h: &[Vm]| h.iter().any(|v| v.rules.affinity.contains(g));
            (g.clone(), usize::from(on(l)) + usize::from(on(p)))
        })
        .collect()
}

fn decide_with(local: &Host, peer: &Host, c: &PolicyConfig) -> Decision {
    let (lh, ph) = (local.holdings(), peer.holdings());
    let (lr, pr) = (local.rule_list(), peer.rule_list());
    let pair = PairRules {
        local: PairSide {
            holdings: &lh,
            candidates: &lr,
        },
        peer: PairSide {
            holdings: &ph,
            candidates: &pr,
        },
    };
    let (lc, pc) = (local.candidates(), peer.candidates());
    let ctx = Context {
        now_ms: NOW,
        rules: Some(&pair as &dyn MoveRules),
    };
    decide(
        &View {
            load: local.load(),
            candidates: &lc,
            free_mem_bytes: u64::MAX,
        },
        &View {
            load: peer.load(),
            candidates: &pc,
            free_mem_bytes: u64::MAX,
        },
        &ctx,
        c,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// No decision moves a VM to a host where it breaks a hard rule (required tags,
    /// anti-affinity against what the host holds afterwards).
    #[test]
    fn no_decision_breaks_a_hard_rule(
        local in host("l"), peer in host("p"), moves in 1usize..4, swaps in any::<bool>(),
    ) {
        let mut c = cfg(moves, Sender::Busier);
        c.swaps = swaps;
        let d = decide_with(&local, &peer, &c);
        let (l, p) = after(&local, &peer, &d);
        for (vm, to) in arrivals(&d, &local, &peer) {
            let (tags, held) = match to {
                Side::Local => (&local.tags, &l),
                Side::Peer => (&peer.tags, &p),
            };
            prop_assert_eq!(hard_break(vm, tags, held), None, "{:?} moved {}", d, vm.id);
        }
    }

    /// No decision makes an affinity group span more hosts than before.
    #[test]
    fn no_decision_splits_an_affinity_group(
        local in host("l"), peer in host("p"), moves in 1usize..4,
    ) {
        let d = decide_with(&local, &peer, &cfg(moves, Sender::Busier));
        let before_l: Vec<Vm> = local.vms.iter().chain(&local.others).cloned().collect();
        let before_p: Vec<Vm> = peer.vms.iter().chain(&peer.others).cloned().collect();
        let before = spans(&before_l, &before_p);
        let (l, p) = after(&local, &peer, &d);
        for (g, n) in spans(&l, &p) {
            let was = before.iter().find(|(b, _)| *b == g).map_or(0, |(_, n)| *n);
            prop_assert!(n <= was, "{:?} split affinity group {} ({} -> {})", d, g, was, n);
        }
    }

    /// A VM that breaks a hard rule on the local host and may legally go to the peer is
    /// moved (the repair comes before the loads).
    #[test]
    fn a_broken_rule_is_repaired_when_it_can_be(local in host("l"), peer in host("p")) {
        let held: Vec<Vm> = local.vms.iter().chain(&local.others).cloned().collect();
        let peer_held: Vec<Vm> = peer.vms.iter().chain(&peer.others).cloned().collect();
        let repairable = local.vms.iter().any(|v| {
            hard_break(v, &local.tags, &held).is_some()
                && hard_break(v, &peer.tags, &peer_held).is_none()
                && v.rules.affinity.iter().all(|g| {
                    // Balancing keeps affinity groups whole: only a VM whose group has no
                    // other member here, or one there, may go.
                    !held.iter().any(|o| o.id != v.id && o.rules.affinity.contains(g))
                        || peer_held.iter().any(|o| o.rules.affinity.contains(g))
                })
        });
        let d = decide_with(&local, &peer, &cfg(1, Sender::Initiator));
        if repairable {
            prop_assert!(matches!(d, Decision::Send(ref m) if m.len() == 1), "{:?}", d);
        }
    }

    /// Rules that name nothing change no decision.
    #[test]
    fn empty_rules_change_nothing(local in host("l"), peer in host("p"), moves in 1usize..4) {
        let strip = |h: &Host| Host {
            tags: h.tags.clone(),
            vms: h.vms.iter().map(|v| Vm { rules: PlacementRules::default(), ..v.clone() }).collect(),
            others: h.others.iter().map(|v| Vm { rules: PlacementRules::default(), ..v.clone() }).collect(),
        };
        let (local, peer) = (strip(&local), strip(&peer));
        let c = cfg(moves, Sender::Busier);
        let (lc, pc) = (local.candidates(), peer.candidates());
        let plain = decide(
            &View { load: local.load(), candidates: &lc, free_mem_bytes: u64::MAX },
            &View { load: peer.load(), candidates: &pc, free_mem_bytes: u64::MAX },
            &Context { now_ms: NOW, rules: None },
            &c,
        );
        prop_assert_eq!(decide_with(&local, &peer, &c), plain);
    }
}
