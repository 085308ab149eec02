//! Reconciliation of the hypervisor with the schedule (docs/design.md §Drivers), on start-up
//! and every `reconcile.interval`: a `Running` entry whose VM the hypervisor does not hold (or
//! holds stopped) is started (after `adopt`, a VM whose process survived is simply
//! held); a VM the hypervisor holds that no entry claims is reported (log + metric),
//! never killed. VMs in a handoff are left to the handoff machine.

use super::context::{lock, AgentContext};
use super::handoff_task::handoffs_in_flight;
use crate::driver::VmRunState;
use ballast_store::{VmId, VmState};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tracing::{info, warn};

/// One reconciliation pass.
pub(crate) async fn reconcile_once(ctx: &AgentContext) {
    let _changes = ctx.vm_changes.lock().await;
    if !ctx.adopted.load(Ordering::Acquire) {
        // Never act on a hypervisor whose surviving VMs were not taken over yet: a VM
        // that only looks absent would be started twice.
        match ctx.driver.adopt().await {
            Ok(vms) => {
                info!(adopted = vms.len(), "driver ready: the hypervisor answers");
                ctx.adopted.store(true, Ordering::Release);
            }
            Err(e) => {
                warn!(reason = %e, "reconcile: the hypervisor is unavailable; VMs are reconciled once it answers");
                return;
            }
        }
    }
    let listed = match ctx.driver.list().await {
        Ok(l) => l,
        Err(e) => {
            warn!(reason = %e, "reconcile: cannot list the hypervisor's VMs");
            return;
        }
    };
    let Ok(entries) = ctx.with_store(|s| s.list()).await else {
        return;
    };
    let busy: BTreeSet<VmId> = handoffs_in_flight(ctx)
        .await
        .into_iter()
        .map(|h| h.vm)
        .collect();
    let held: HashMap<&VmId, VmRunState> = listed.iter().map(|i| (&i.vm, i.state)).collect();
    for e in &entries {
        if e.state != VmState::Running || busy.contains(&e.vm) {
            continue;
        }
        match held.get(&e.vm) {
            Some(VmRunState::Running) => {}
            Some(VmRunState::Paused) => resume(ctx, &e.vm).await,
            Some(VmRunState::Incoming) => {
                warn!(vm = %e.vm, "reconcile: scheduled VM is an incomplete incoming copy; left for the operator");
            }
            None | Some(VmRunState::Stopped) => {
                info!(vm = %e.vm, "reconcile: scheduled VM not running; starting it");
                if let Err(err) = ctx.driver.start(&e.vm, &e.spec).await {
                    warn!(vm = %e.vm, reason = %err, "reconcile: start failed");
                }
            }
        }
    }
    let claimed: BTreeSet<&VmId> = entries.iter().map(|e| &e.vm).collect();
    let unclaimed: Vec<VmId> = listed
        .iter()
        .filter(|i| i.state != VmRunState::Stopped)
        .filter(|i| !claimed.contains(&i.vm) && !busy.contains(&i.vm))
        .map(|i| i.vm.clone())
        .collect();
    {
        let mut known = lock(&ctx.unclaimed);
        for vm in unclaimed.iter().filter(|v| !known.contains(v)) {
            warn!(vm = %vm, "reconcile: hypervisor runs a VM no schedule entry claims (not killed)");
        }
        *known = unclaimed;
        ctx.metrics
            .unclaimed_vms
            .set(i64::try_from(known.len()).unwrap_or(0));
    }
}

/// A `Running` entry, in no handoff, whose VM is paused here: the handoff that paused it
/// is resolved with this node as the owner (a crash between promote and resume, or a
/// failed cancel), so the VM must run. An incoming copy is resumed; a source copy whose
/// migration was cancelled is let run again.
async fn resume(ctx: &AgentContext, vm: &VmId) {
    info!(vm = %vm, "reconcile: scheduled VM is paused here; resuming it");
    if ctx.driver.resume_incoming(vm).await.is_ok() {
        return;
    }
    if let Err(err) = ctx.driver.cancel_outgoing(vm).await {
        warn!(vm = %vm, reason = %err, "reconcile: cannot resume a paused VM");
    }
}

/// Reconciles periodically until shutdown.
pub(crate) async fn run_reconcile(ctx: Arc<AgentContext>) {
    let period = ctx.cfg.reconcile.interval.duration();
    let mut shutdown = ctx.shutdown.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => return,
        }
        reconcile_once(&ctx).await;
    }
}
