//! Measured load (docs/design.md §Load): every `load.sample_interval` the driver's cumulative
//! usage counters of each running VM are read, turned into raw factors over the window
//! (`factors_between`, normalized by this host's CPU speed), smoothed per VM (`Ewma`) and
//! written back with `update_factors` (soft state). Does nothing in target mode.

use super::context::AgentContext;
use crate::load::{factors_between, Counters, Ewma, LoadMode};
use ballast_store::{LoadFactors, VmId, VmState, FACTOR_BATCH_MAX};
use std::collections::HashMap;
use std::sync::Arc;

struct Track {
    prev: Counters,
    ewma: Ewma,
}

/// Samples usage until shutdown.
pub(crate) async fn sample_loads(ctx: Arc<AgentContext>) {
    if ctx.cfg.load.mode != LoadMode::Measured {
        return;
    }
    let period = ctx.cfg.load.sample_interval.duration();
    let alpha = ctx.cfg.load.smoothing_alpha;
    let speed = ctx.cfg.host.cpu_speed;
    let mut tracks: HashMap<VmId, Track> = HashMap::new();
    let mut unmanaged: Option<Track> = None;
    let mut shutdown = ctx.shutdown.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => return,
        }
        let Ok(entries) = ctx.with_store(|s| s.list()).await else {
            continue;
        };
        let mut updates: Vec<(VmId, LoadFactors)> = Vec::new();
        let mut seen = Vec::with_capacity(entries.len());
        for e in entries.iter().filter(|e| e.state == VmState::Running) {
            let Ok(u) = ctx.driver.usage(&e.vm).await else {
                continue;
            };
            seen.push(e.vm.clone());
            let now = Counters {
                at_ms: ctx.handoffs.now_ms(),
                cpu_time_s: u.cpu_time_s,
                io_bytes: u.io_bytes,
                mem_bytes: u.mem_bytes,
            };
            match tracks.get_mut(&e.vm) {
                Some(t) => {
                    if let Some(f) = factors_between(&t.prev, &now, speed) {
                        let smoothed = t.ewma.update(f);
                        updates.push((e.vm.clone(), smoothed));
                    }
                    t.prev = now;
                }
                None => {
                    let ewma = if e.factors == LoadFactors::default() {
                        Ewma::new(alpha)
                    } else {
                        Ewma::starting_at(alpha, e.factors)
                    };
                    tracks.insert(e.vm.clone(), Track { prev: now, ewma });
                }
            }
        }
        tracks.retain(|vm, _| seen.contains(vm));
        sample_unmanaged(&ctx, &mut unmanaged, alpha, speed).await;
        for chunk in updates.chunks(FACTOR_BATCH_MAX) {
            let batch = chunk.to_vec();
            match ctx.with_store(move |s| s.update_factors(&batch)).await {
                Ok(n) if n > 0 => ctx.summary_dirty.notify_one(),
                Ok(_) => {}
                Err(e) => tracing::warn!(reason = %e, "cannot store load factors"),
            }
        }
    }
}

/// The driver's unmanaged VMs as one background load (`ctx.unmanaged`), smoothed like a VM.
async fn sample_unmanaged(ctx: &AgentContext, track: &mut Option<Track>, alpha: f64, speed: f64) {
    let u = match ctx.driver.unmanaged_usage().await {
        Ok(Some(u)) => u,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!(reason = %e, "cannot read the unmanaged VMs' usage");
            return;
        }
    };
    let now = Counters {
        at_ms: ctx.handoffs.now_ms(),
        cpu_time_s: u.cpu_time_s,
        io_bytes: u.io_bytes,
        mem_bytes: u.mem_bytes,
    };
    match track {
        Some(t) => {
            // A domain that stopped lowers the sums: start over rather than go negative.
            if now.cpu_time_s < t.prev.cpu_time_s || now.io_bytes < t.prev.io_bytes {
                t.prev = now;
                return;
            }
            if let Some(f) = factors_between(&t.prev, &now, speed) {
                let smoothed = t.ewma.update(f);
                *super::context::lock(&ctx.unmanaged) = smoothed;
                ctx.summary_dirty.notify_one();
            }
            t.prev = now;
        }
        None => {
            *track = Some(Track {
                prev: now,
                ewma: Ewma::new(alpha),
            });
        }
    }
}
