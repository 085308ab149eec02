//! The whole cluster as `ballast status`, `vm list` and `sessions` gather it: this node's
//! own answer, then every peer it sees (and the peers they see), each asked over RPC
//! with this node's certificate (peers answer a node only the read-only admin calls).

use crate::agent::admin::handle_admin;
use crate::agent::context::AgentContext;
use crate::agent::wire::{
    AdminRequest, AdminResponse, AgentRequest, AgentResponse, Request, Response, SessionRecord,
};
use crate::report::{missing_of, Member, MissingNode};
use ballast_store::{NodeId, ScheduleEntry};
use futures::future::join_all;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Bound on one node's answer (the CLI's).
const CALL_TIMEOUT: Duration = Duration::from_secs(8);

/// Asks `node` (this one directly, a peer over RPC) a read-only admin request.
async fn ask(
    ctx: &AgentContext,
    node: &NodeId,
    addr: SocketAddr,
    req: AdminRequest,
) -> Result<AdminResponse, String> {
    debug_assert!(req.reads_only());
    if node == &ctx.me {
        return handle_admin(ctx, req).await.map_err(|e| e.to_string());
    }
    let rpc = ctx.net.rpc().ok_or("no endpoint yet")?;
    if ctx.net.protocol_of(node) < 2 {
        return Err("runs ballast 0.1, which this view cannot read: upgrade it".into());
    }
    let req = AgentRequest::V2(Request::Admin(req));
    let call = rpc.call::<_, AgentResponse>(addr, Some(node.as_str()), &req);
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(answer)) => match answer.into_current() {
            Response::Admin(Ok(r)) => Ok(r),
            Response::Admin(Err(e)) => Err(e.to_string()),
            Response::Refused(r) => Err(format!("refused: {r}")),
            other => Err(format!("unexpected answer {other:?}")),
        },
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("did not answer within {CALL_TIMEOUT:?}")),
    }
}

async fn probe(ctx: &AgentContext, node: NodeId, addr: SocketAddr) -> Member {
    match ask(ctx, &node, addr, AdminRequest::Status).await {
        Ok(AdminResponse::Status(s)) => Member {
            node: s.node.clone(),
            addr,
            status: Some(*s),
            error: None,
        },
        Ok(other) => Member {
            node,
            addr,
            status: None,
            error: Some(format!("unexpected answer {other:?}")),
        },
        Err(e) => Member {
            node,
            addr,
            status: None,
            error: Some(e),
        },
    }
}

/// Every node reached: this one, the peers it sees, then the peers those see, and the
/// nodes it saw before that no longer gossip (as the CLI adds the admin bundle's nodes:
/// a host that went down is shown unreachable, not left out).
pub(super) async fn members(ctx: &AgentContext) -> BTreeMap<NodeId, Member> {
    let own_addr = ctx
        .net
        .endpoint()
        .map_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)), |e| e.local_addr());
    let me = probe(ctx, ctx.me.clone(), own_addr).await;
    let own_addr = me.status.as_ref().map_or(own_addr, |s| s.summary.rpc_addr);
    let mut members = BTreeMap::from([(
        ctx.me.clone(),
        Member {
            addr: own_addr,
            ..me
        },
    )]);
    // Two passes through the peer views (a young view may lack some), then the nodes
    // seen before.
    for pass in 0..3 {
        let mut targets: Vec<(NodeId, SocketAddr)> = Vec::new();
        let seen = members.values().filter_map(|m| m.status.as_ref());
        let viewed =
            seen.flat_map(|s| s.peers.iter().map(|p| (p.node.clone(), p.summary.rpc_addr)));
        let before = if pass == 2 {
            ctx.net.known()
        } else {
            Vec::new()
        };
        for (node, addr) in viewed.chain(before) {
            if !members.contains_key(&node) && !targets.iter().any(|t| t.0 == node) {
                targets.push((node, addr));
            }
        }
        let found = join_all(targets.into_iter().map(|(n, a)| probe(ctx, n, a))).await;
        for m in found {
            members.entry(m.node.clone()).or_insert(m);
        }
    }
    members
}

/// Asks every answering member `req`, at once; each member with its answer.
async fn ask_answering<'a>(
    ctx: &AgentContext,
    members: &'a BTreeMap<NodeId, Member>,
    req: AdminRequest,
) -> Vec<(&'a Member, Result<AdminResponse, String>)> {
    let answering = members.values().filter(|m| m.status.is_some());
    join_all(answering.map(|m| {
        let req = req.clone();
        async move { (m, ask(ctx, &m.node, m.addr, req).await) }
    }))
    .await
}

/// Every answering member's schedule (by node), and the members whose part is missing
/// (by node).
pub(super) async fn schedules(
    ctx: &AgentContext,
    members: &BTreeMap<NodeId, Member>,
) -> (Vec<(NodeId, Vec<ScheduleEntry>)>, Vec<MissingNode>) {
    let asked = ask_answering(ctx, members, AdminRequest::ListVms).await;
    let mut answered = Vec::new();
    let mut missing = missing_of(members);
    for (m, r) in asked {
        match r {
            Ok(AdminResponse::Vms(entries)) => answered.push((m.node.clone(), entries)),
            other => missing.push(MissingNode {
                node: m.node.to_string(),
                reason: other.err().unwrap_or_else(|| "unexpected answer".into()),
                vms: m.status.as_ref().map(|s| s.summary.vm_count),
            }),
        }
    }
    answered.sort_by(|a, b| a.0.cmp(&b.0));
    missing.sort_by(|a, b| a.node.cmp(&b.node));
    (answered, missing)
}

/// Every answering member's recent sessions, and the nodes whose sessions are missing
/// with the reason.
pub(super) async fn sessions(
    ctx: &AgentContext,
    members: &BTreeMap<NodeId, Member>,
) -> (Vec<SessionRecord>, Vec<(String, String)>) {
    let mut unreachable = Vec::new();
    for m in members.values().filter(|m| m.status.is_none()) {
        let why = m.error.clone().unwrap_or_else(|| "no answer".into());
        unreachable.push((m.node.to_string(), why));
    }
    let asked = ask_answering(ctx, members, AdminRequest::RecentSessions).await;
    let mut records = Vec::new();
    for (m, r) in asked {
        match r {
            Ok(AdminResponse::Sessions(s)) => records.extend(s),
            other => unreachable.push((
                m.node.to_string(),
                other.err().unwrap_or_else(|| "unexpected answer".into()),
            )),
        }
    }
    (records, unreachable)
}
