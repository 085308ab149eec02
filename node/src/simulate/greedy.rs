//! The central-greedy baseline: one scheduler that sees everything and repeatedly moves,
//! from the most to the least loaded host, the VM that most lowers the pair's maximum,
//! until no move gains `min_gain`.

use super::cluster::Cluster;
use std::collections::BTreeSet;

/// What the baseline did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GreedyOutcome {
    /// max/mean when it stopped.
    pub final_max_over_mean: f64,
    /// VMs moved.
    pub migrations: u64,
    /// Sum of the raw loads moved.
    pub load_moved: f64,
}

/// Runs the baseline on its own copy of `initial`.
pub fn run(initial: &Cluster, min_gain: f64) -> GreedyOutcome {
    let mut c = initial.clone();
    // Positive f64s sort like their bit patterns. Zero (and -0.0, which an empty f64
    // sum yields) keys as 0, the lowest.
    let key = |c: &Cluster, h: usize| {
        let l = c.hosts[h].load;
        (if l > 0.0 { l.to_bits() } else { 0 }, h)
    };
    let mut by_load: BTreeSet<(u64, usize)> = (0..c.host_count()).map(|h| key(&c, h)).collect();
    let (mut migrations, mut load_moved) = (0u64, 0.0);
    let limit = 100 * c.vm_count() as u64 + 1;
    while migrations < limit {
        let (Some(&lo), Some(&hi)) = (by_load.first(), by_load.last()) else {
            break;
        };
        let (min_h, max_h) = (lo.1, hi.1);
        if min_h == max_h {
            break;
        }
        let Some((index, gain)) = best_move(&c, max_h, min_h) else {
            break;
        };
        if gain < min_gain {
            break;
        }
        by_load.remove(&lo);
        by_load.remove(&hi);
        load_moved += c.move_vm(max_h, index, min_h);
        migrations += 1;
        by_load.insert(key(&c, min_h));
        by_load.insert(key(&c, max_h));
    }
    GreedyOutcome {
        final_max_over_mean: c.imbalance().0,
        migrations,
        load_moved,
    }
}

/// The VM of `from` whose move to `to` leaves the lower pair maximum, and the gain.
fn best_move(c: &Cluster, from: usize, to: usize) -> Option<(usize, f64)> {
    let (f, t) = (&c.hosts[from], &c.hosts[to]);
    let before = f.load.max(t.load);
    f.vms
        .iter()
        .enumerate()
        .map(|(i, &raw)| {
            (
                i,
                (f.load - raw / f.capacity).max(t.load + raw / t.capacity),
            )
        })
        .min_by(|x, y| x.1.total_cmp(&y.1))
        .map(|(i, after)| (i, before - after))
}
