//! Placement rules in the deterministic world (docs/design.md §Placement rules): two
//! sources send members of one anti-affinity group to the same destination at once; the
//! destination's accept decides against everything it holds (incoming entries too), so
//! at most one of them gets there, under random interleavings, message loss,
//! duplication and crashes. Two groups, three nodes; every seed printed on failure.

mod handoff_util;

use ballast_node::handoff::world::World;
use ballast_node::handoff::{AbortReason, HandoffConfig, Notice, RefuseReason, Role};
use ballast_node::rules::PlacementRules;
use handoff_util::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

/// vm0 and vm1 in group db on nodes 0 and 1, vm2 and vm3 in group web on nodes 0 and 1;
/// every one of them starts a move to node 2 at once.
fn crossing_world() -> World {
    let mut w = World::new(3, &[0, 1, 0, 1], HandoffConfig::default());
    w.record = true;
    for (vm, home, group) in [(0, 0, "db"), (1, 1, "db"), (2, 0, "web"), (3, 1, "web")] {
        w.nodes[home].store.set_rules(
            &ballast_node::handoff::world::vm_id(vm),
            PlacementRules {
                anti_affinity: vec![group.into()],
                ..Default::default()
            },
        );
    }
    for (vm, home) in [(0, 0), (1, 1), (2, 0), (3, 1)] {
        w.start_move(home, &ballast_node::handoff::world::vm_id(vm), 2)
            .expect("move starts");
    }
    w
}

/// Members of `group` in node 2's schedule.
fn on_node_2(w: &World, group: &str) -> usize {
    w.nodes[2]
        .store
        .entry_map()
        .values()
        .filter(|e| {
            e.payload
                .spec
                .rules
                .anti_affinity
                .iter()
                .any(|g| g == group)
        })
        .count()
}

#[test]
fn one_member_of_a_group_reaches_a_node_and_the_other_is_refused() {
    for seed in 0..300u64 {
        let mut w = crossing_world();
        let mut rng = StdRng::seed_from_u64(seed);
        settle(&mut w, &mut rng).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        w.resolved()
            .unwrap_or_else(|e| panic!("seed {seed}: I3 violated: {e}"));
        for g in ["db", "web"] {
            assert_eq!(on_node_2(&w, g), 1, "seed {seed}: group {g} on node 2");
        }
        let refused = w
            .notices
            .iter()
            .filter(|(_, n)| {
                matches!(
                    n,
                    Notice::Aborted {
                        role: Role::Source,
                        reason: AbortReason::Refused(RefuseReason::BreaksRule),
                        ..
                    }
                )
            })
            .count();
        let aborted: Vec<_> = w
            .notices
            .iter()
            .filter(|(_, n)| matches!(n, Notice::Aborted { .. }))
            .collect();
        assert_eq!(
            refused, 2,
            "seed {seed}: one refusal per group: {aborted:?}"
        );
    }
}

#[test]
fn faults_never_let_two_members_of_a_group_meet() {
    for seed in 0..300u64 {
        let mut w = crossing_world();
        w.net_capacity = 16;
        let mut rng = StdRng::seed_from_u64(seed);
        let odds = Odds {
            fault: 0.2,
            crashes_max: 2,
            start_move: 0.05,
        };
        let mut crashes = 0;
        for _ in 0..400 {
            // `step` checks I1, I2 and the anti-affinity rule after every action.
            random_step(&mut w, &mut rng, odds, &mut crashes)
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        }
        settle(&mut w, &mut rng).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        w.resolved()
            .unwrap_or_else(|e| panic!("seed {seed}: I3 violated: {e}"));
        w.check_anti_affinity()
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
}
