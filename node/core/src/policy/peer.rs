//! The choice of a round's peer: uniformly random, or the most different of `d` samples.

use rand::Rng;

/// Picks a peer among `count` eligible ones (live, active, not this host), numbered
/// `0..count`, whose loads `load_of` gives: `samples` uniform draws (with replacement),
/// keeping the one whose load differs most from `own_load` (the first drawn wins a
/// tie). `samples` = 1 is a uniformly random peer. `None` when there is no peer.
pub fn choose_peer<R: Rng + ?Sized>(
    rng: &mut R,
    count: usize,
    own_load: f64,
    load_of: impl Fn(usize) -> f64,
    samples: usize,
) -> Option<usize> {
    if count == 0 {
        return None;
    }
    let first = index_below(rng, count);
    if samples <= 1 {
        return Some(first);
    }
    let differs = |i: usize| (load_of(i) - own_load).abs();
    let (mut best, mut best_diff) = (first, differs(first));
    for _ in 1..samples {
        let next = index_below(rng, count);
        let d = differs(next);
        if d > best_diff {
            (best, best_diff) = (next, d);
        }
    }
    Some(best)
}

/// A uniform index in `0..count` (`count > 0`) from one 64-bit draw, by multiply and
/// shift: biased by at most `count / 2^64`, and far cheaper than rejection sampling
/// when the simulator draws hundreds of millions of them.
fn index_below<R: Rng + ?Sized>(rng: &mut R, count: usize) -> usize {
    ((u128::from(rng.next_u64()) * count as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn uniform_choice_hits_every_peer_about_equally() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut hits = [0u32; 5];
        for _ in 0..50_000 {
            let i = choose_peer(&mut rng, 5, 0.0, |_| 0.0, 1).expect("peers exist");
            hits[i] += 1;
        }
        for h in hits {
            assert!((9_000..11_000).contains(&h), "counts {hits:?}");
        }
    }

    #[test]
    fn d_choice_prefers_the_most_different_peer() {
        let mut rng = StdRng::seed_from_u64(7);
        let loads = [10.0, 10.0, 10.0, 0.0];
        for (d, lo, hi) in [(2, 16_000, 19_000), (4, 26_000, 28_500)] {
            let mut hits = [0u32; 4];
            for _ in 0..40_000 {
                let i = choose_peer(&mut rng, 4, 10.0, |i| loads[i], d).expect("peers exist");
                hits[i] += 1;
            }
            // P(the odd one is among d samples) = 1 - (3/4)^d: 7/16 for 2, 175/256 for 4.
            assert!((lo..hi).contains(&hits[3]), "d = {d}: counts {hits:?}");
        }
        assert_eq!(choose_peer(&mut rng, 0, 0.0, |_| 0.0, 1), None);
    }
}
