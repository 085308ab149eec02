//! The `/api/v1` handlers: the same JSON as `ballast status --json`, `vm list --json` and
//! `sessions --json` (built by [`crate::report`] from the whole cluster, gathered as the
//! CLI gathers it), and the load history.

use super::history::HistoryReport;
use super::{cluster, Web};
use crate::report::sessions::{sessions_report, SessionsReport};
use crate::report::status::{report_of, StatusReport};
use crate::report::vms::{vm_list, VmList};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

/// `GET /api/v1/status`: `ballast status --json`.
pub(super) async fn status(State(web): State<Web>) -> Json<StatusReport> {
    Json(report_of(&cluster::members(&web.ctx).await))
}

/// The query of `/api/v1/vms`.
#[derive(Debug, Deserialize)]
pub(super) struct VmsQuery {
    /// Only this node's entries (`vm list --node`).
    node: Option<String>,
}

/// `GET /api/v1/vms[?node=N]`: `ballast vm list --json [--node N]`.
pub(super) async fn vms(State(web): State<Web>, Query(q): Query<VmsQuery>) -> Json<VmList> {
    let members = cluster::members(&web.ctx).await;
    let (answered, missing) = cluster::schedules(&web.ctx, &members).await;
    Json(vm_list(&answered, missing, q.node.as_deref()))
}

/// The query of `/api/v1/sessions`: the options of `ballast sessions`.
#[derive(Debug, Deserialize)]
pub(super) struct SessionsQuery {
    /// Only the sessions this node started or answered.
    node: Option<String>,
    /// Only the sessions that planned moves.
    #[serde(default)]
    moves: bool,
    /// At most this many (1 to 10000; 20 by default, as the CLI).
    limit: Option<usize>,
}

/// Sessions listed when the query names no limit (`sessions --limit`'s default).
const SESSIONS_LIMIT_DEFAULT: usize = 20;
/// Largest limit (`sessions --limit`'s).
const SESSIONS_LIMIT_MAX: usize = 10_000;

/// `GET /api/v1/sessions[?node=N&moves=true&limit=K]`: `ballast sessions --json ...`.
pub(super) async fn sessions(State(web): State<Web>, Query(q): Query<SessionsQuery>) -> Response {
    let limit = q.limit.unwrap_or(SESSIONS_LIMIT_DEFAULT);
    if !(1..=SESSIONS_LIMIT_MAX).contains(&limit) {
        tracing::debug!(limit, "web: sessions limit out of range");
        return (
            StatusCode::BAD_REQUEST,
            format!("limit must be 1 to {SESSIONS_LIMIT_MAX}\n"),
        )
            .into_response();
    }
    let members = cluster::members(&web.ctx).await;
    let (records, unreachable) = cluster::sessions(&web.ctx, &members).await;
    let report: SessionsReport =
        sessions_report(records, unreachable, q.node.as_deref(), q.moves, limit);
    Json(report).into_response()
}

/// `GET /api/v1/history`: this agent's max/mean load samples of the last hour, oldest
/// first.
pub(super) async fn history(State(web): State<Web>) -> Json<HistoryReport> {
    Json(web.history.report())
}
