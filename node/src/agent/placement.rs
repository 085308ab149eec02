//! Where a new VM goes and how it is created there (`vm create`, and `Place` from node
//! to node). The answer states what the schedule and the hypervisor hold afterwards:
//! either the VM exists (its entry is stored; it runs, or the hypervisor's view of it
//! could not be read and the agent starts it — a warning says so), or nothing of it is
//! left (no entry, no VM on the hypervisor). A spec the driver refuses is never kept.

use super::admin::store_err;
use super::context::AgentContext;
use super::figures::summary;
use super::wire::{AdminError, AgentRequest, AgentResponse, Placement, Request, Response};
use crate::driver::{DriverError, VmRunState};
use ballast_store::{NodeId, ScheduleEntry, StoreError, VmId, VmState};
use rand::Rng;
use tracing::{info, warn};

/// A created VM: where it is, and what did not go as asked on the way.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Placed {
    /// The node whose schedule holds it.
    pub node: NodeId,
    /// Set when a hypervisor call failed but the VM exists anyway (it runs, or its
    /// entry stays and the agent starts it).
    pub warning: Option<String>,
}

/// Most nodes a create tries when hard placement rules make nodes refuse the VM.
const PLACEMENT_TRIES_MAX: usize = 16;

/// Picks where a new VM goes: the named node, or the less loaded of two random live,
/// active nodes (this one included) among those whose tags the VM's `requires` names.
/// A node that refuses it for a hard rule (anti-affinity, checked against what it holds)
/// is skipped for the next less loaded one; when none may take it, the error names the
/// rule.
pub(crate) async fn create(
    ctx: &AgentContext,
    p: Placement,
    node: Option<NodeId>,
) -> Result<Placed, AdminError> {
    if let Some(n) = node {
        return place_on(ctx, p, n).await;
    }
    let mut nodes: Vec<(NodeId, f64, Vec<String>)> = ctx
        .net
        .active_peers()
        .iter()
        // A node of ballast 0.1 would drop the VM's placement rules.
        .filter(|v| {
            p.spec.rules.is_empty() || !super::wire_v1::speaks_only_v1(v.summary.protocol_version)
        })
        .map(|v| {
            let id = NodeId::from(v.node_id.as_str());
            (id, v.summary.load, v.summary.tags.clone())
        })
        .collect();
    if !ctx.is_draining() {
        let own = summary(ctx).await.map_err(store_err)?;
        nodes.push((ctx.me.clone(), own.load, own.tags));
    }
    if nodes.is_empty() {
        return Err(AdminError::NoNode);
    }
    let requires = &p.spec.rules.requires;
    if let Some(tag) = requires
        .iter()
        .find(|t| !nodes.iter().any(|(_, _, tags)| tags.contains(t)))
    {
        return Err(AdminError::NoLegalNode {
            vm: p.vm.clone(),
            reason: format!("requires tag {tag}, and no active node has it"),
        });
    }
    nodes.retain(|(_, _, tags)| requires.iter().all(|t| tags.contains(t)));
    // The less loaded of two random nodes first, then the others from the least loaded.
    let (a, b) = {
        let mut rng = rand::rng();
        (
            rng.random_range(0..nodes.len()),
            rng.random_range(0..nodes.len()),
        )
    };
    let first = nodes.swap_remove(if nodes[b].1 < nodes[a].1 { b } else { a });
    nodes.sort_by(|x, y| x.1.total_cmp(&y.1));
    let mut last_refusal = None;
    for (target, _, _) in std::iter::once(first)
        .chain(nodes)
        .take(PLACEMENT_TRIES_MAX)
    {
        match place_on(ctx, p.clone(), target).await {
            Err(AdminError::BreaksRule { node, rule, .. }) => {
                info!(vm = %p.vm, node = %node, rule = %rule, "placement: node refused the VM for a rule");
                last_refusal = Some(rule);
            }
            other => return other,
        }
    }
    Err(AdminError::NoLegalNode {
        vm: p.vm,
        reason: last_refusal.map_or_else(
            || "every node that has its tags refused it".to_owned(),
            |rule| format!("every node that has its tags refused it ({rule} on the last one)"),
        ),
    })
}

/// Creates the VM on `target` (this node, or forwarded).
async fn place_on(ctx: &AgentContext, p: Placement, target: NodeId) -> Result<Placed, AdminError> {
    if target == ctx.me {
        let warning = place_here(ctx, p).await?;
        return Ok(Placed {
            node: target,
            warning,
        });
    }
    forward(ctx, p, target).await
}

async fn forward(ctx: &AgentContext, p: Placement, node: NodeId) -> Result<Placed, AdminError> {
    let addr = ctx
        .net
        .addr_of(&node)
        .ok_or_else(|| AdminError::UnknownNode(node.clone()))?;
    let rpc = ctx
        .net
        .rpc()
        .ok_or_else(|| AdminError::Timeout("no endpoint".into()))?;
    let protocol = ctx.net.protocol_of(&node);
    let vm = p.vm.clone();
    let req = AgentRequest::for_protocol(protocol, Request::Place(p)).map_err(|why| {
        AdminError::BreaksRule {
            vm,
            node: node.clone(),
            rule: format!("it runs ballast 0.1: {why}"),
        }
    })?;
    let fail = |reason: String| AdminError::Forward {
        node: node.clone(),
        reason,
    };
    match rpc
        .call_speaking::<_, AgentResponse>(addr, Some(node.as_str()), protocol, &req)
        .await
        .map(AgentResponse::into_current)
    {
        Ok(Response::Placed(r)) => r.map(|node| Placed {
            node,
            warning: None,
        }),
        Ok(Response::PlacedWithWarning { node, warning }) => Ok(Placed {
            node,
            warning: Some(warning),
        }),
        Ok(other) => Err(fail(format!("unexpected answer {other:?}"))),
        Err(e) => Err(fail(e.to_string())),
    }
}

/// Creates a VM on this node: durable entry first, then the hypervisor. When the
/// hypervisor's start fails, its own view decides the outcome (see the module doc);
/// `Ok(Some(warning))` is a VM that exists despite the failure.
pub(crate) async fn place_here(
    ctx: &AgentContext,
    p: Placement,
) -> Result<Option<String>, AdminError> {
    // Reconciliation waits meanwhile: it never starts the entry of a refused create.
    let _changes = ctx.vm_changes.lock().await;
    let entry = ScheduleEntry {
        vm: p.vm.clone(),
        factors: p.spec.target.unwrap_or_default(),
        spec: p.spec,
        state: VmState::Running,
        epoch: 0,
        pinned: p.pinned,
        last_moved_unix_ms: None,
    };
    let e2 = entry.clone();
    ctx.with_store(move |s| s.create(&e2))
        .await
        .map_err(|e| match e {
            StoreError::BreaksRule { vm, rule } => AdminError::BreaksRule {
                vm,
                node: ctx.me.clone(),
                rule: rule.to_string(),
            },
            other => store_err(other),
        })?;
    ctx.summary_dirty.notify_one();
    let warning = match ctx.driver.start(&entry.vm, &entry.spec).await {
        Ok(()) => None,
        Err(e) => Some(settle_failed_start(ctx, &entry.vm, e).await?),
    };
    info!(vm = %entry.vm, warning = warning.as_deref().unwrap_or(""), "VM created");
    Ok(warning)
}

/// What a failed start of the new `vm` leaves: `Ok(warning)` when the VM exists after
/// all, `Err(NotCreated)` once its entry is removed and the hypervisor holds nothing of it.
async fn settle_failed_start(
    ctx: &AgentContext,
    vm: &VmId,
    err: DriverError,
) -> Result<String, AdminError> {
    let refused = matches!(
        err,
        DriverError::InvalidSpec(_) | DriverError::NoRoom(_) | DriverError::Unsupported { .. }
    );
    if !refused {
        match run_state(ctx, vm).await {
            Ok(Some(VmRunState::Running)) => {
                warn!(vm = %vm, error = %err, "start reported an error, but the VM runs");
                return Ok(format!(
                    "the hypervisor reported an error while starting it ({err}), but it runs"
                ));
            }
            Ok(_) => {}
            Err(e) => {
                warn!(vm = %vm, error = %e, "cannot read the hypervisor's VMs after a failed start")
            }
        }
    }
    // A refused start changed nothing on the hypervisor (the driver's contract).
    let cleaned = if refused {
        Ok(())
    } else {
        ctx.driver.stop(vm).await
    };
    if let Err(stop) = cleaned {
        warn!(vm = %vm, start_error = %err, error = %stop, "a failed start could not be cleaned up; the entry stays");
        return Ok(format!(
            "starting it failed ({err}) and what the hypervisor holds of it could not be \
             removed ({stop}); it stays in {}'s schedule and the agent starts it once the \
             hypervisor answers (`ballast vm delete {vm}` removes it)",
            ctx.me
        ));
    }
    let vm2 = vm.clone();
    ctx.with_store(move |s| s.delete(&vm2))
        .await
        .map_err(store_err)?;
    ctx.summary_dirty.notify_one();
    info!(vm = %vm, error = %err, "VM not created: its start failed and nothing of it is left");
    Err(AdminError::NotCreated {
        vm: vm.clone(),
        node: ctx.me.clone(),
        reason: err.to_string(),
    })
}

/// The hypervisor's run state of `vm`, `None` when it does not hold it.
async fn run_state(ctx: &AgentContext, vm: &VmId) -> Result<Option<VmRunState>, DriverError> {
    Ok(ctx
        .driver
        .list()
        .await?
        .into_iter()
        .find(|i| &i.vm == vm)
        .map(|i| i.state))
}
