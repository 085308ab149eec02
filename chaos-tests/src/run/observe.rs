//! Reading the cluster: one sweep asks every reachable agent for its store view and its
//! status (concurrently, each call bounded); counters are summed across agent restarts.

use ballast_node::agent::wire::{NodeStatus, StoreView};
use ballast_node::agent::AdminClient;
use tokio::task::JoinSet;

/// What one sweep got; `None` where a host was not asked or did not answer.
#[derive(Debug, Default)]
pub struct Sweep {
    /// Store views, by host index.
    pub views: Vec<Option<StoreView>>,
    /// Statuses, by host index.
    pub statuses: Vec<Option<NodeStatus>>,
}

impl Sweep {
    /// Whether every host in `want` answered both questions.
    pub fn complete(&self, want: &[bool]) -> bool {
        want.iter()
            .enumerate()
            .all(|(i, w)| !w || (self.views[i].is_some() && self.statuses[i].is_some()))
    }
}

/// Asks the hosts with `ask[i]` for their view and status. The view is read first, so
/// the status is never older than the view.
pub async fn sweep(clients: &[AdminClient], ask: &[bool]) -> Sweep {
    let mut set = JoinSet::new();
    for (i, c) in clients.iter().enumerate() {
        if !ask[i] {
            continue;
        }
        let c = c.clone();
        set.spawn(async move {
            let view = c.snapshot().await.ok();
            let status = match view {
                Some(_) => c.status().await.ok(),
                None => None,
            };
            (i, view, status)
        });
    }
    let mut out = Sweep {
        views: vec![None; clients.len()],
        statuses: vec![None; clients.len()],
    };
    while let Some(joined) = set.join_next().await {
        if let Ok((i, v, s)) = joined {
            out.views[i] = v;
            out.statuses[i] = s;
        }
    }
    out
}

/// The counters the report needs, per agent process.
#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    committed_out: u64,
    aborted: u64,
    rounds: u64,
}

/// Counters summed over every process each host ran.
#[derive(Debug)]
pub struct CounterBook {
    base: Vec<Figures>,
    last: Vec<Figures>,
}

impl CounterBook {
    /// A book for `n` hosts.
    pub fn new(n: usize) -> Self {
        Self {
            base: vec![Figures::default(); n],
            last: vec![Figures::default(); n],
        }
    }

    /// Records the newest counters of host `i`'s current process.
    pub fn update(&mut self, i: usize, s: &NodeStatus) {
        self.last[i] = Figures {
            committed_out: s.counters.committed_out,
            aborted: s.counters.handoffs_aborted,
            rounds: s.counters.rounds,
        };
    }

    /// Host `i` got a new process: what the old one counted is kept.
    pub fn restarted(&mut self, i: usize) {
        let (b, l) = (&mut self.base[i], self.last[i]);
        b.committed_out += l.committed_out;
        b.aborted += l.aborted;
        b.rounds += l.rounds;
        self.last[i] = Figures::default();
    }

    /// `(committed, aborted, rounds)` over all hosts and processes.
    pub fn totals(&self) -> (u64, u64, u64) {
        let mut t = (0, 0, 0);
        for (b, l) in self.base.iter().zip(&self.last) {
            t.0 += b.committed_out + l.committed_out;
            t.1 += b.aborted + l.aborted;
            t.2 += b.rounds + l.rounds;
        }
        t
    }
}
