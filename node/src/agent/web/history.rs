//! The cluster's max and mean load over the last hour, as this agent saw it through
//! gossip: a bounded ring of samples taken every [`SAMPLE_INTERVAL`], kept in memory (a
//! restarted agent starts empty).

use crate::agent::context::{lock, AgentContext};
use crate::agent::figures::summary;
use ballast_gossip::NodeRunState;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Time between two samples.
pub(super) const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// Samples kept: one hour.
pub(super) const SAMPLES_MAX: usize = 720;

/// One sample.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub(super) struct Sample {
    /// When (Unix ms).
    pub(super) at_unix_ms: u64,
    /// Largest load among the active nodes.
    pub(super) max_load: f64,
    /// Mean load of the active nodes.
    pub(super) mean_load: f64,
    /// Active nodes counted.
    pub(super) nodes: usize,
}

/// What `GET /api/v1/history` answers.
#[derive(Clone, Debug, Serialize)]
pub(super) struct HistoryReport {
    /// Milliseconds between two samples.
    pub(super) interval_ms: u64,
    /// The samples of the last hour, oldest first.
    pub(super) samples: Vec<Sample>,
}

/// The ring. Its std mutex is never held across `.await`.
#[derive(Debug, Default)]
pub(super) struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    /// Adds `s`, dropping the oldest beyond [`SAMPLES_MAX`].
    pub(super) fn push(&self, s: Sample) {
        let mut samples = lock(&self.samples);
        if samples.len() == SAMPLES_MAX {
            samples.pop_front();
        }
        samples.push_back(s);
    }

    /// The samples, oldest first.
    pub(super) fn samples(&self) -> Vec<Sample> {
        lock(&self.samples).iter().copied().collect()
    }

    /// The samples as the API serves them.
    pub(super) fn report(&self) -> HistoryReport {
        HistoryReport {
            interval_ms: u64::try_from(SAMPLE_INTERVAL.as_millis()).unwrap_or(u64::MAX),
            samples: self.samples(),
        }
    }
}

/// The sample of these `(load, active)` node figures at `at_unix_ms`.
pub(super) fn sample_of(at_unix_ms: u64, nodes: &[(f64, bool)]) -> Sample {
    let active: Vec<f64> = nodes.iter().filter(|n| n.1).map(|n| n.0).collect();
    let max_load = active.iter().copied().fold(0.0, f64::max);
    let mean_load = if active.is_empty() {
        0.0
    } else {
        active.iter().sum::<f64>() / active.len() as f64
    };
    Sample {
        at_unix_ms,
        max_load,
        mean_load,
        nodes: active.len(),
    }
}

/// Samples this node's figures and its peers' gossiped ones until shutdown.
pub(super) async fn sample(ctx: Arc<AgentContext>, history: Arc<History>) {
    let mut shutdown = ctx.shutdown.clone();
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let mut nodes: Vec<(f64, bool)> = ctx
            .net
            .peers()
            .iter()
            .map(|p| (p.summary.load, p.summary.state == NodeRunState::Active))
            .collect();
        match summary(&ctx).await {
            Ok(own) => nodes.push((own.load, !ctx.is_draining())),
            Err(e) => tracing::debug!(reason = %e, "web: no own figures for the history"),
        }
        history.push(sample_of(crate::agent::unix_ms(), &nodes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_and_mean_of_active_nodes_in_a_bounded_ring() {
        let s = sample_of(7, &[(0.8, true), (0.2, true), (5.0, false)]);
        assert_eq!((s.max_load, s.nodes, s.at_unix_ms), (0.8, 2, 7));
        assert!((s.mean_load - 0.5).abs() < 1e-12);
        assert_eq!(sample_of(0, &[]).mean_load, 0.0);
        let h = History::default();
        for i in 0..(SAMPLES_MAX as u64 + 10) {
            h.push(sample_of(i, &[(0.1, true)]));
        }
        let all = h.samples();
        assert_eq!(all.len(), SAMPLES_MAX);
        assert_eq!(all[0].at_unix_ms, 10, "the oldest went first");
    }
}
