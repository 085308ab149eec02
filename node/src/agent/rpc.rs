//! The agent's RPC handler: checks the caller's role and the request's bounds, then
//! dispatches sessions and placements (nodes only), handoff messages (nodes only, queued
//! to the machine's bounded channel) and the admin API (admin certificates; a node's
//! certificate only for the read-only calls: status, schedule, recent sessions).

use super::admin::handle_admin;
use super::context::AgentContext;
use super::handoff_task::Input;
use super::placement::place_here;
use super::session::serve_session;
use super::wire::{AgentRequest, AgentResponse, Refusal, Request, Response};
use async_trait::async_trait;
use ballast_gossip::{PeerIdentity, Role, RpcHandler};
use ballast_store::NodeId;
use std::sync::Arc;
use tracing::warn;

/// Serves the agent's RPC.
pub(crate) struct AgentRpc {
    pub(crate) ctx: Arc<AgentContext>,
}

#[async_trait]
impl RpcHandler<AgentRequest, AgentResponse> for AgentRpc {
    async fn handle(&self, peer: PeerIdentity, req: AgentRequest) -> AgentResponse {
        let AgentRequest::V1(req) = req;
        AgentResponse::V1(self.handle_v1(peer, req).await)
    }
}

impl AgentRpc {
    async fn handle_v1(&self, peer: PeerIdentity, req: Request) -> Response {
        if let Err(reason) = req.validate() {
            warn!(peer = %peer.name, reason = %reason, "request refused: invalid");
            return Response::Refused(Refusal::Invalid(reason));
        }
        if self.ctx.stopping() {
            return Response::Refused(Refusal::ShuttingDown);
        }
        let ctx = &self.ctx;
        match (req, peer.role) {
            (Request::Admin(a), Role::Admin) => {
                let span = tracing::info_span!("admin", caller = %peer.name);
                let _enter = span.enter();
                drop(_enter);
                Response::Admin(handle_admin(ctx, a).await)
            }
            // Another agent's web view gathers the cluster: reads only.
            (Request::Admin(a), Role::Node) if a.reads_only() => {
                Response::Admin(handle_admin(ctx, a).await)
            }
            (Request::Session(s), Role::Node) => {
                let from = NodeId::from(peer.name);
                Response::Session(serve_session(ctx, from, s).await)
            }
            (Request::Handoff(msg), Role::Node) => {
                let from = NodeId::from(peer.name);
                match ctx.handoffs.inputs().try_send(Input::Message { from, msg }) {
                    Ok(()) => Response::HandoffQueued,
                    Err(_) => Response::Refused(Refusal::Overloaded),
                }
            }
            (Request::Place(p), Role::Node) => {
                if ctx.is_draining() {
                    return Response::Placed(Err(super::wire::AdminError::NoNode));
                }
                match place_here(ctx, p).await {
                    Ok(None) => Response::Placed(Ok(ctx.me.clone())),
                    Ok(Some(warning)) => Response::PlacedWithWarning {
                        node: ctx.me.clone(),
                        warning,
                    },
                    Err(e) => Response::Placed(Err(e)),
                }
            }
            (_, role) => {
                warn!(peer = %peer.name, ?role, "request refused: wrong certificate role");
                Response::Refused(Refusal::Forbidden)
            }
        }
    }
}
