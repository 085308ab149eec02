//! This node's figures from its schedule: its load `L` (docs/design.md §Load), free memory, its
//! movable VMs with raw factors, and the load summary it gossips. Also the publisher
//! task that gossips the summary after each change, and what peers' VMs weigh here.

use super::shared::Shared;
use super::wire::{CandidateFactors, SideFigures};
use crate::load::effective_factors;
use ballast_gossip::{LoadSummary, NodeRunState, PROTOCOL_VERSION};
use ballast_store::{LoadFactors, ScheduleEntry, StoreError, VmState};
use std::sync::Arc;
use std::time::Duration;

/// Bytes in a MiB.
const MIB: f64 = 1024.0 * 1024.0;

/// The factors an entry is weighed by on any host (mode-dependent).
pub(crate) fn factors_of(shared: &Shared, e: &ScheduleEntry) -> LoadFactors {
    effective_factors(shared.cfg.load.mode, e.factors, &e.spec)
}

/// Memory a VM needs, in bytes.
pub(crate) fn mem_bytes_of(e: &ScheduleEntry) -> u64 {
    e.spec.memory_mib.saturating_mul(1024 * 1024)
}

/// This node's figures computed from `entries`: every entry counts in the load (a VM
/// leaving still runs here; an incoming one is about to), only `Running` ones are
/// candidates.
pub(crate) fn figures_from(shared: &Shared, entries: &[ScheduleEntry]) -> SideFigures {
    let mut load = 0.0;
    let mut mem_used = 0.0;
    let mut candidates = Vec::new();
    for e in entries {
        let f = factors_of(shared, e);
        let l = shared.model.load_of(&f);
        load += l;
        mem_used += e.spec.memory_mib as f64 * MIB;
        if e.state == VmState::Running {
            candidates.push(CandidateFactors {
                vm: e.vm.clone(),
                factors: f,
                load_here: l,
                mem_bytes: mem_bytes_of(e),
                pinned: e.pinned,
                last_moved_unix_ms: e.last_moved_unix_ms,
            });
        }
    }
    let free = (shared.cfg.host.mem_bytes - mem_used).max(0.0);
    SideFigures {
        load,
        free_mem_bytes: free as u64,
        candidates,
    }
}

/// This node's fresh figures, read from the store.
pub(crate) async fn local_figures(shared: &Shared) -> Result<SideFigures, StoreError> {
    let entries = shared.with_store(|s| s.list()).await?;
    Ok(figures_from(shared, &entries))
}

/// The summary this node gossips.
pub(crate) async fn summary(shared: &Shared) -> Result<LoadSummary, StoreError> {
    let entries = shared.with_store(|s| s.list()).await?;
    let figures = figures_from(shared, &entries);
    let cap = &shared.cfg.host;
    Ok(LoadSummary {
        load: figures.load,
        cpu_capacity: cap.cpu_reference_cores(),
        io_capacity: cap.io_bytes_per_s,
        mem_capacity: cap.mem_bytes,
        mem_free: figures.free_mem_bytes as f64,
        vm_count: u32::try_from(entries.len()).unwrap_or(u32::MAX),
        state: if shared.is_draining() {
            NodeRunState::Draining
        } else {
            NodeRunState::Active
        },
        rpc_addr: shared
            .endpoint()
            .map_or(shared.cfg.node.listen, |e| e.local_addr()),
        protocol_version: PROTOCOL_VERSION,
    })
}

/// Gossips the summary whenever the schedule changes (and at least every sample
/// interval), and keeps the load gauges current.
pub(crate) async fn publish_summaries(shared: Arc<Shared>) {
    let period = Duration::from_millis(shared.cfg.load.sample_interval_ms.max(100));
    let mut shutdown = shared.shutdown.clone();
    let mut last: Option<LoadSummary> = None;
    loop {
        match summary(&shared).await {
            Ok(s) => {
                shared.metrics.load.set(s.load);
                shared.metrics.vms.set(i64::from(s.vm_count));
                shared
                    .metrics
                    .peers
                    .set(i64::try_from(shared.peers().len()).unwrap_or(0));
                if last.as_ref() != Some(&s) {
                    if let Some(ep) = shared.endpoint() {
                        ep.publish(s.clone()).await;
                    }
                    last = Some(s);
                }
            }
            Err(e) => tracing::warn!(reason = %e, "cannot compute the load summary"),
        }
        tokio::select! {
            _ = shared.summary_dirty.notified() => {
                // Coalesce a burst of changes.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => return,
        }
    }
}
