//! How old the heartbeats a node holds get under bounded digests: a model of the
//! exchange, no chitchat, no network. Each round every node (in random order) sends a
//! SYN to 3 random peers; a SYN and the SYN-ACK answering it each carry a digest of the
//! sender itself and `digest - 1` other nodes, and for each listed node the sender's
//! freshest heartbeat of it, which the receiver keeps if fresher. A node's own
//! heartbeat is the round number. The age of a heartbeat node y holds of node x is the
//! round now minus that heartbeat; a detector that declares x dead when nothing fresher
//! than K rounds arrived must have K above the largest age of any pair, or it declares
//! live nodes dead (docs/design-gossip.md, "Failure detection past the digest bound").
//!
//! `cargo run --release -p ballast-gossip --example heartbeat_age_model -- [--nodes N]
//! [--digest D] [--rounds R] [--policy rotate|random|freshest] [--seed S]`
//!
//! Prints one JSON line: the ages at the last round (mean, p99, p99.99, max over all
//! pairs) and the largest age of any pair in each round after a warm-up (max and mean
//! over those rounds).

/// xorshift64*: enough for a model, and the same sequence for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Policy {
    /// A window rotating over the nodes (what the chitchat copy does when idle).
    Rotate,
    /// A uniform random sample.
    Random,
    /// The nodes whose heartbeat the sender holds freshest.
    Freshest,
}

struct Model {
    nodes: usize,
    digest: usize,
    policy: Policy,
    /// `known[y * nodes + x]`: the freshest heartbeat (round) of x that y holds.
    known: Vec<u32>,
    cursor: Vec<usize>,
    rng: Rng,
}

impl Model {
    /// The nodes `s` lists in its next digest.
    fn digest_of(&mut self, s: usize) -> Vec<usize> {
        let n = self.nodes;
        let others = (self.digest - 1).min(n - 1);
        let mut listed = vec![s];
        match self.policy {
            Policy::Rotate => {
                let c = self.cursor[s];
                listed.extend((c..c + others).map(|i| i % n).filter(|&x| x != s));
                self.cursor[s] = (c + others) % n;
            }
            Policy::Random => {
                for _ in 0..others {
                    listed.push(self.rng.below(n));
                }
            }
            Policy::Freshest => {
                let row = &self.known[s * n..(s + 1) * n];
                let mut order: Vec<usize> = (0..n).filter(|&x| x != s).collect();
                order.sort_by_key(|&x| std::cmp::Reverse(row[x]));
                listed.extend(order.into_iter().take(others));
            }
        }
        listed
    }

    /// `to` takes the fresher heartbeats of what `from` lists.
    fn merge(&mut self, from: usize, to: usize, listed: &[usize]) {
        let n = self.nodes;
        for &x in listed {
            let h = self.known[from * n + x];
            let k = &mut self.known[to * n + x];
            *k = (*k).max(h);
        }
    }

    fn round(&mut self, r: u32) {
        let n = self.nodes;
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, self.rng.below(i + 1));
        }
        for s in order {
            self.known[s * n + s] = r;
            for _ in 0..3 {
                let mut p = self.rng.below(n - 1);
                if p >= s {
                    p += 1;
                }
                let syn = self.digest_of(s);
                self.merge(s, p, &syn);
                let ack = self.digest_of(p);
                self.merge(p, s, &ack);
            }
        }
    }

    /// Ages of every ordered pair (y, x), y ≠ x, at round `r`, sorted.
    fn ages(&self, r: u32) -> Vec<u32> {
        let n = self.nodes;
        let mut ages: Vec<u32> = (0..n * n)
            .filter(|i| i / n != i % n)
            .map(|i| r - self.known[i].min(r))
            .collect();
        ages.sort_unstable();
        ages
    }
}

fn main() -> Result<(), String> {
    let (mut nodes, mut digest, mut rounds, mut seed) = (1_000usize, 128usize, 60u32, 1u64);
    let mut policy = Policy::Rotate;
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let [flag, value] = pair else {
            return Err(format!("flags take a value: {pair:?}"));
        };
        let bad = |e: std::num::ParseIntError| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--nodes" => nodes = value.parse().map_err(bad)?,
            "--digest" => digest = value.parse().map_err(bad)?,
            "--rounds" => rounds = value.parse().map_err(bad)?,
            "--seed" => seed = value.parse().map_err(bad)?,
            "--policy" => {
                policy = match value.as_str() {
                    "rotate" => Policy::Rotate,
                    "random" => Policy::Random,
                    "freshest" => Policy::Freshest,
                    other => return Err(format!("unknown policy {other}")),
                }
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if nodes < 2 || digest < 1 || rounds < 2 {
        return Err("need --nodes >= 2, --digest >= 1, --rounds >= 2".into());
    }
    let mut model = Model {
        nodes,
        digest,
        policy,
        known: vec![0; nodes * nodes],
        cursor: vec![0; nodes],
        rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
    };
    let warm_up = rounds / 2;
    let mut worst = Vec::new();
    for r in 1..=rounds {
        model.round(r);
        if r > warm_up {
            let n = nodes;
            let max = (0..n * n)
                .filter(|i| i / n != i % n)
                .map(|i| r - model.known[i].min(r))
                .max()
                .unwrap_or(0);
            worst.push(max);
        }
    }
    let ages = model.ages(rounds);
    let at = |q: f64| ages[((ages.len() - 1) as f64 * q) as usize];
    let mean = ages.iter().map(|&a| f64::from(a)).sum::<f64>() / ages.len() as f64;
    let worst_mean = worst.iter().map(|&a| f64::from(a)).sum::<f64>() / worst.len() as f64;
    println!(
        "{{\"nodes\":{nodes},\"digest\":{digest},\"rounds\":{rounds},\"seed\":{seed},\
         \"policy\":\"{}\",\"age_mean\":{mean:.2},\"age_p99\":{},\"age_p9999\":{},\
         \"age_max\":{},\"largest_age_per_round_max\":{},\"largest_age_per_round_mean\":{worst_mean:.1}}}",
        match policy {
            Policy::Rotate => "rotate",
            Policy::Random => "random",
            Policy::Freshest => "freshest",
        },
        at(0.99),
        at(0.9999),
        ages.last().copied().unwrap_or(0),
        worst.iter().max().copied().unwrap_or(0),
    );
    Ok(())
}
