//! The choice of a round's peer: uniformly random, or the more different of two samples.

use super::config::PeerChoice;
use rand::Rng;

/// Picks a peer among `count` eligible ones (live, active, not this host), numbered
/// `0..count`, whose loads `load_of` gives. `None` when there is none.
pub fn choose_peer<R: Rng + ?Sized>(
    rng: &mut R,
    count: usize,
    own_load: f64,
    load_of: impl Fn(usize) -> f64,
    how: PeerChoice,
) -> Option<usize> {
    if count == 0 {
        return None;
    }
    let first = rng.random_range(0..count);
    match how {
        PeerChoice::Uniform => Some(first),
        PeerChoice::TwoChoice => {
            let second = rng.random_range(0..count);
            let differs = |i: usize| (load_of(i) - own_load).abs();
            Some(if differs(second) > differs(first) {
                second
            } else {
                first
            })
        }
    }
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
            let i =
                choose_peer(&mut rng, 5, 0.0, |_| 0.0, PeerChoice::Uniform).expect("peers exist");
            hits[i] += 1;
        }
        for h in hits {
            assert!((9_000..11_000).contains(&h), "counts {hits:?}");
        }
    }

    #[test]
    fn two_choice_prefers_the_more_different_peer() {
        let mut rng = StdRng::seed_from_u64(7);
        let loads = [10.0, 10.0, 10.0, 0.0];
        let mut hits = [0u32; 4];
        for _ in 0..40_000 {
            let i = choose_peer(&mut rng, 4, 10.0, |i| loads[i], PeerChoice::TwoChoice)
                .expect("peers exist");
            hits[i] += 1;
        }
        // P(the odd one is among two samples) = 1 - (3/4)^2 = 7/16.
        assert!((16_000..19_000).contains(&hits[3]), "counts {hits:?}");
        assert_eq!(
            choose_peer(&mut rng, 0, 0.0, |_| 0.0, PeerChoice::Uniform),
            None
        );
    }
}
