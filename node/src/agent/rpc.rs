//! The agent's RPC handler: checks the caller's role and the request's bounds, then
//! dispatches sessions and placements (nodes only), handoff messages (nodes only, queued
//! to the machine's bounded channel) and the admin API (an operator's admin certificate;
//! a read-only admin's or a node's certificate only for the calls that read:
//! `AdminRequest::reads_only`).

use super::admin::handle_admin;
use super::context::AgentContext;
use super::handoff_task::Input;
use super::placement::place_here;
use super::session::serve_session;
use super::wire::{AgentRequest, AgentResponse, Refusal, Request, Response};
use super::wire_v1;
use super::wire_v1::translate::{request_of_v1, response_to_v1};
use async_trait::async_trait;
use ballast_gossip::{AdminRole, PeerIdentity, Role, RpcHandler};
use ballast_store::NodeId;
use std::sync::Arc;
use tracing::{warn, Instrument};

/// Serves the agent's RPC.
pub(crate) struct AgentRpc {
    pub(crate) ctx: Arc<AgentContext>,
}

#[async_trait]
impl RpcHandler<AgentRequest, AgentResponse> for AgentRpc {
    async fn handle(&self, peer: PeerIdentity, req: AgentRequest) -> AgentResponse {
        match req {
            AgentRequest::V2(req) => AgentResponse::V2(self.handle_request(peer, req).await),
            // A node of ballast 0.1 (a rolling upgrade): its request in this build's
            // terms, the answer back in its own.
            AgentRequest::V1(req) => AgentResponse::V1(match request_of_v1(req) {
                Ok(req) => response_to_v1(self.handle_request(peer, req).await),
                Err(refusal) => {
                    warn!(peer = %peer.name, reason = ?refusal, "request of ballast 0.1 refused");
                    wire_v1::Response::Refused(refusal)
                }
            }),
        }
    }
}

impl AgentRpc {
    async fn handle_request(&self, peer: PeerIdentity, req: Request) -> Response {
        if let Err(reason) = req.validate() {
            warn!(peer = %peer.name, reason = %reason, "request refused: invalid");
            return Response::Refused(Refusal::Invalid(reason));
        }
        if self.ctx.stopping() {
            return Response::Refused(Refusal::ShuttingDown);
        }
        let ctx = &self.ctx;
        match (req, peer.role) {
            // Every admin call runs in a span naming the caller's certificate, so the
            // agent's log says who did what.
            (Request::Admin(a), Role::Admin(AdminRole::Operator)) => {
                let span = tracing::info_span!("admin", caller = %peer.name);
                Response::Admin(handle_admin(ctx, a).instrument(span).await)
            }
            // A read-only admin, or another agent's web view gathering the cluster.
            (Request::Admin(a), Role::Admin(AdminRole::ReadOnly) | Role::Node)
                if a.reads_only() =>
            {
                let span = tracing::info_span!("admin", caller = %peer.name);
                Response::Admin(handle_admin(ctx, a).instrument(span).await)
            }
            (Request::Admin(a), Role::Admin(AdminRole::ReadOnly)) => {
                warn!(peer = %peer.name, request = a.name(), "admin request refused: the caller's certificate is read-only");
                Response::Refused(Refusal::ReadOnlyRole)
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
