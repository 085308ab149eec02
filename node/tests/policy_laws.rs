//! Laws of the balancing policy, as property tests against brute force (STYLE 17).

use ballast_node::policy::{
    decide, plan_moves, Candidate, Context, Decision, PolicyConfig, Sender, Stay, View,
};
use proptest::prelude::*;

const NOW: u64 = 1_000_000;
const CTX: Context = Context { now_ms: NOW };

fn cfg(threshold: f64, min_gain: f64, max_moves: usize) -> PolicyConfig {
    PolicyConfig {
        threshold,
        min_gain,
        cooldown_ms: 0,
        max_moves_per_session: max_moves,
        ..PolicyConfig::default()
    }
}

fn unlike(loads: &[(f64, f64)]) -> Vec<Candidate> {
    loads
        .iter()
        .map(|&(h, t)| Candidate {
            load_here: h,
            load_there: t,
            mem_bytes: 1,
            pinned: false,
            last_moved_ms: None,
        })
        .collect()
}

fn same_everywhere(loads: &[f64]) -> Vec<Candidate> {
    unlike(&loads.iter().map(|&l| (l, l)).collect::<Vec<_>>())
}

fn view(load: f64, candidates: &[Candidate]) -> View<'_> {
    View {
        load,
        candidates,
        free_mem_bytes: u64::MAX,
    }
}

fn vm_loads() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(0.01f64..10.0, 1..40)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Identical hosts: the chosen VM is the one nearest (L_A - L_B) / 2.
    #[test]
    fn identical_hosts_choose_nearest_half_difference(vms in vm_loads(), peer in 0.0f64..50.0) {
        let cands = same_everywhere(&vms);
        let l_a: f64 = vms.iter().sum::<f64>() + peer; // keep A the busier
        let mut out = Vec::new();
        let c = cfg(0.0, 0.0, 1);
        prop_assert!(plan_moves(&view(l_a, &cands), peer, u64::MAX, &CTX, &c, &mut out).is_ok());
        let half = (l_a - peer) / 2.0;
        let best = vms.iter().map(|l| (l - half).abs()).fold(f64::INFINITY, f64::min);
        prop_assert!(((vms[out[0].index] - half).abs() - best).abs() < 1e-9);
    }

    /// Unlike hosts: the choice minimizes |(L_A - load_A(v)) - (L_B + load_B(v))|, and
    /// when nothing moves, that best VM would not have lowered the pair's max.
    #[test]
    fn unlike_hosts_minimize_the_gap(vms in prop::collection::vec((0.01f64..10.0, 0.01f64..20.0), 1..40),
                                    l_a in 0.0f64..200.0, l_b in 0.0f64..100.0) {
        let cands = unlike(&vms);
        let mut out = Vec::new();
        let c = cfg(0.0, 0.0, 1);
        let gap = |&(h, t): &(f64, f64)| ((l_a - h) - (l_b + t)).abs();
        let best = vms.iter().map(gap).fold(f64::INFINITY, f64::min);
        match plan_moves(&view(l_a, &cands), l_b, u64::MAX, &CTX, &c, &mut out) {
            Ok(()) => prop_assert!((gap(&vms[out[0].index]) - best).abs() < 1e-9),
            Err(Stay::WithinThreshold) => prop_assert!(l_a <= l_b),
            Err(Stay::GainTooSmall) => {
                let (h, t) = *vms.iter().find(|v| gap(v) == best).expect("non-empty");
                prop_assert!((l_a - h).max(l_b + t) > l_a, "a gainful best VM was refused");
            }
            Err(other) => prop_assert!(false, "unexpected {:?}", other),
        }
    }

    /// A plan never raises max(L_A, L_B), however many moves it holds.
    #[test]
    fn a_plan_never_raises_the_pairs_max(vms in prop::collection::vec((0.01f64..10.0, 0.01f64..20.0), 1..40),
                                        l_a in 0.0f64..200.0, l_b in 0.0f64..100.0,
                                        moves in 1usize..10, min_gain in 0.0f64..1.0) {
        let cands = unlike(&vms);
        let mut out = Vec::new();
        let c = cfg(0.0, min_gain, moves);
        if plan_moves(&view(l_a, &cands), l_b, u64::MAX, &CTX, &c, &mut out).is_ok() {
            let after_a = l_a - out.iter().map(|m| m.load_from).sum::<f64>();
            let after_b = l_b + out.iter().map(|m| m.load_to).sum::<f64>();
            prop_assert!(after_a.max(after_b) <= l_a.max(l_b) - min_gain * out.len() as f64 + 1e-9);
            prop_assert!(out.len() <= moves);
        }
    }

    /// Within the threshold nothing moves.
    #[test]
    fn no_move_within_threshold(vms in vm_loads(), l_b in 0.0f64..100.0, within in 0.0f64..1.0, thr in 0.0f64..1.0) {
        let cands = same_everywhere(&vms);
        let l_a = l_b + within * thr;
        let mut out = Vec::new();
        let r = plan_moves(&view(l_a, &cands), l_b, u64::MAX, &CTX, &cfg(thr, 0.0, 8), &mut out);
        prop_assert_eq!(r, Err(Stay::WithinThreshold));
        prop_assert!(out.is_empty());
    }

    /// Rounds between two hosts, either side opening, end: no ping-pong.
    #[test]
    fn two_hosts_stop_moving(a in prop::collection::vec(0.01f64..10.0, 0..30),
                             b in prop::collection::vec(0.01f64..10.0, 0..30),
                             cap_b in 0.5f64..2.0, min_gain in 0.01f64..1.0, moves in 1usize..5) {
        // Host A has capacity 1, host B capacity cap_b: a VM of raw load r weighs r on A, r / cap_b on B.
        let mut on = [a, b];
        let caps = [1.0, cap_b];
        let c = cfg(0.05, min_gain, moves);
        let mut rounds = 0;
        loop {
            let opener = rounds % 2;
            let other = 1 - opener;
            let build = |h: usize| -> Vec<Candidate> {
                on[h].iter().map(|r| Candidate {
                    load_here: r / caps[h], load_there: r / caps[1 - h], mem_bytes: 0, pinned: false, last_moved_ms: None,
                }).collect()
            };
            let (co, cp) = (build(opener), build(other));
            let lo: f64 = co.iter().map(|c| c.load_here).sum();
            let lp: f64 = cp.iter().map(|c| c.load_here).sum();
            let (from, mv) = match decide(&view(lo, &co), &view(lp, &cp), &CTX, &c) {
                Decision::Send(m) => (opener, m),
                Decision::Receive(m) => (other, m),
                Decision::Stay(_) => break,
            };
            let mut idx: Vec<usize> = mv.iter().map(|m| m.index).collect();
            idx.sort_unstable_by(|x, y| y.cmp(x));
            for i in idx {
                let r = on[from].swap_remove(i);
                on[1 - from].push(r);
            }
            rounds += 1;
            // Each move lowers the pair's max by >= min_gain, so this bound is generous.
            prop_assert!(rounds < 10_000, "ping-pong: still moving after {} rounds", rounds);
        }
    }
}

#[test]
fn pinned_cooling_and_too_big_vms_stay() {
    let mut cands = same_everywhere(&[4.0, 5.0, 6.0]);
    cands[0].pinned = true;
    cands[1].last_moved_ms = Some(NOW - 10);
    cands[2].mem_bytes = 100;
    let c = PolicyConfig {
        cooldown_ms: 1_000,
        ..cfg(0.0, 0.0, 1)
    };
    let mut out = Vec::new();
    let sender = View {
        load: 20.0,
        candidates: &cands,
        free_mem_bytes: 50,
    };
    assert_eq!(
        plan_moves(&sender, 0.0, 50, &CTX, &c, &mut out),
        Err(Stay::NoEligibleVm)
    );
    // Once the cooldown is over the 5.0 VM may move.
    assert!(plan_moves(
        &sender,
        0.0,
        50,
        &Context {
            now_ms: NOW + 2_000
        },
        &c,
        &mut out
    )
    .is_ok());
    assert_eq!(out[0].index, 1);
}

#[test]
fn the_busier_side_sends_unless_only_the_initiator_may() {
    let mine = same_everywhere(&[1.0]);
    let theirs = same_everywhere(&[3.0, 3.0, 3.0]);
    let local = view(1.0, &mine);
    let peer = view(9.0, &theirs);
    let busier = cfg(0.1, 0.1, 1);
    assert!(
        matches!(decide(&local, &peer, &CTX, &busier), Decision::Receive(ref m) if m.len() == 1)
    );
    let initiator = PolicyConfig {
        sender: Sender::Initiator,
        ..busier
    };
    assert_eq!(
        decide(&local, &peer, &CTX, &initiator),
        Decision::Stay(Stay::PeerIsBusier)
    );
}

#[test]
fn several_moves_reapply_the_rule_on_updated_loads() {
    // 8 VMs of 1 on A (load 8), B empty: the rule moves one at a time until 4/4.
    let cands = same_everywhere(&[1.0; 8]);
    let mut out = Vec::new();
    let c = cfg(0.25, 0.1, 8);
    assert!(plan_moves(&view(8.0, &cands), 0.0, u64::MAX, &CTX, &c, &mut out).is_ok());
    assert_eq!(
        out.len(),
        4,
        "moves until the pair is within the threshold: {out:?}"
    );
}
