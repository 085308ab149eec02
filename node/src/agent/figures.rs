//! This node's figures from its schedule: its load `L` (docs/design.md §Load), free memory, its
//! movable VMs with raw factors, and the load summary it gossips. Also the publisher
//! task that gossips the summary after each change, and what peers' VMs weigh here.

use super::context::AgentContext;
use super::rule_book::rule_breaks;
use super::wire::{CandidateFactors, SideFigures};
use crate::load::effective_factors;
use ballast_gossip::{LoadSummary, NodeRunState, PROTOCOL_VERSION};
use ballast_store::{LoadFactors, ScheduleEntry, StoreError, VmState};
use std::sync::Arc;
use std::time::Duration;

/// Bytes in a MiB.
const MIB: f64 = 1024.0 * 1024.0;

/// The factors an entry is weighed by on any host (mode-dependent).
pub(crate) fn factors_of(ctx: &AgentContext, e: &ScheduleEntry) -> LoadFactors {
    effective_factors(ctx.cfg.load.mode, e.factors, &e.spec)
}

/// Memory a VM needs, in bytes.
pub(crate) fn mem_bytes_of(e: &ScheduleEntry) -> u64 {
    e.spec.memory_mib.saturating_mul(1024 * 1024)
}

/// This node's figures computed from `entries`: every entry counts in the load (a VM
/// leaving still runs here; an incoming one is about to), and so does every VM a session
/// decided to bring here that is not in the schedule yet; only `Running` entries are
/// candidates.
pub(crate) fn figures_from(ctx: &AgentContext, entries: &[ScheduleEntry]) -> SideFigures {
    let mut load = 0.0;
    let mut mem_used = 0.0;
    let mut candidates = Vec::new();
    for e in entries {
        let f = factors_of(ctx, e);
        let l = ctx.model.load_of(&f);
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
                rules: (*e.spec.rules).clone(),
            });
        }
    }
    // VMs that sessions decided to bring here weigh here from the decision on (the next
    // session must see them), until they are in the schedule.
    for a in ctx
        .sessions
        .still_awaited(|vm| entries.iter().any(|e| &e.vm == vm))
    {
        load += a.load;
        mem_used += a.mem_bytes as f64;
    }
    // VMs the driver does not manage weigh here but are no candidates.
    let unmanaged = *super::context::lock(&ctx.unmanaged);
    if unmanaged != LoadFactors::default() {
        load += ctx.model.load_of(&unmanaged);
        mem_used += unmanaged.mem;
    }
    let free = (ctx.cfg.host.mem_bytes - mem_used).max(0.0);
    SideFigures {
        load,
        free_mem_bytes: free as u64,
        candidates,
        holdings: super::rule_book::holdings_of(ctx, entries),
    }
}

/// This node's fresh figures, read from the store.
pub(crate) async fn local_figures(ctx: &AgentContext) -> Result<SideFigures, StoreError> {
    let entries = ctx.with_store(|s| s.list()).await?;
    Ok(figures_from(ctx, &entries))
}

/// The summary this node gossips.
pub(crate) async fn summary(ctx: &AgentContext) -> Result<LoadSummary, StoreError> {
    let entries = ctx.with_store(|s| s.list()).await?;
    let figures = figures_from(ctx, &entries);
    let cap = &ctx.cfg.host;
    Ok(LoadSummary {
        load: figures.load,
        cpu_capacity: cap.cpu_reference_cores(),
        io_capacity: cap.io_bytes_per_s,
        mem_capacity: cap.mem_bytes,
        mem_free: figures.free_mem_bytes as f64,
        vm_count: u32::try_from(entries.len()).unwrap_or(u32::MAX),
        state: if ctx.is_draining() {
            NodeRunState::Draining
        } else {
            NodeRunState::Active
        },
        rpc_addr: ctx
            .net
            .endpoint()
            .map_or(ctx.cfg.node.listen, |e| e.local_addr()),
        protocol_version: PROTOCOL_VERSION,
        protocol_min: ballast_gossip::PROTOCOL_MIN,
        tags: ctx.cfg.node.tags.clone(),
    })
}

/// Gossips the summary whenever the schedule changes (and at least every sample
/// interval), and keeps the load gauges current.
pub(crate) async fn publish_summaries(ctx: Arc<AgentContext>) {
    let period = Duration::from_millis(ctx.cfg.load.sample_interval.get().max(100));
    let mut shutdown = ctx.shutdown.clone();
    let mut last: Option<LoadSummary> = None;
    loop {
        match summary(&ctx).await {
            Ok(s) => {
                ctx.metrics.load.set(s.load);
                ctx.metrics.vms.set(i64::from(s.vm_count));
                if let Ok(entries) = ctx.with_store(|s| s.list()).await {
                    let holdings = super::rule_book::holdings_of(&ctx, &entries);
                    let broken = rule_breaks(&ctx.me, &entries, &holdings).len();
                    ctx.metrics
                        .rules_broken
                        .set(i64::try_from(broken).unwrap_or(i64::MAX));
                }
                ctx.metrics
                    .peers
                    .set(i64::try_from(ctx.net.peers().len()).unwrap_or(0));
                if last.as_ref() != Some(&s) {
                    if let Some(ep) = ctx.net.endpoint() {
                        ep.publish(s.clone()).await;
                    }
                    last = Some(s);
                }
            }
            Err(e) => tracing::warn!(reason = %e, "cannot compute the load summary"),
        }
        tokio::select! {
            _ = ctx.summary_dirty.notified() => {
                // Coalesce a burst of changes.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => return,
        }
    }
}
