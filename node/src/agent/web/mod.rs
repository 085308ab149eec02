//! The agent's local HTTP server (axum on hyper, HTTP/1.1): `GET /metrics` (Prometheus),
//! `GET /api/v1/...` (the JSON of `status`, `vm list`, `sessions`, and the load history)
//! and the web view at `/` (docs/operations.md §Web view). Read-only: every route is a
//! GET that reads; anything else is 404 or 405.
//!
//! It binds at `node.metrics_listen`. On a loopback address it speaks plain HTTP; on any
//! other it requires TLS with a client certificate from the cluster CA (`tls`).
//!
//! Bounds: at most [`CONNECTIONS_MAX`] connections, a request head of at most
//! [`REQUEST_HEAD_BYTES_MAX`] read within [`HEADER_READ_TIMEOUT`] (else the connection is
//! cut: 431 or closed), a connection lives at most [`CONNECTION_TIME_MAX`].
//!
//! Files:
//! - `mod.rs`: the accept loop, the per-connection bounds, the router.
//! - `api`: the `/api/v1` handlers; `cluster`: the whole cluster gathered from the peers
//!   (as the CLI does), `history`: the max/mean load ring.
//! - `assets`: the page, its script and style, embedded in the binary.
//! - `tls`: the TLS acceptor for a non-loopback address.
//! - `dashboard_check`: a test of `packaging/grafana-dashboard.json` against the metrics.

mod api;
mod assets;
mod cluster;
mod dashboard_check;
mod history;
mod tls;

pub(crate) use tls::acceptor_for;

use super::context::AgentContext;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use history::History;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info};

/// Most connections served at once; more are closed at once.
pub(crate) const CONNECTIONS_MAX: usize = 32;
/// Longest request head (request line and headers); hyper's smallest buffer is 8 KiB.
pub(crate) const REQUEST_HEAD_BYTES_MAX: usize = 16 * 1024;
/// Bound on reading a request head (and a TLS handshake).
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest life of one connection (a browser's keep-alive connection is then renewed).
pub(crate) const CONNECTION_TIME_MAX: Duration = Duration::from_secs(120);

/// A connection of the web server failed; the connection is closed, nothing changed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WebError {
    /// The TLS handshake failed (no client certificate, one of another CA, not TLS).
    #[error("TLS handshake refused: {0}")]
    Tls(#[source] std::io::Error),
    /// The TLS handshake did not finish in time.
    #[error("TLS handshake not finished within {HEADER_READ_TIMEOUT:?}")]
    TlsTimeout,
    /// HTTP failed: a request head too large or too slow, a malformed request, a
    /// client gone.
    #[error("HTTP: {0}")]
    Http(#[source] hyper::Error),
}

/// What the handlers reach.
#[derive(Clone)]
struct Web {
    ctx: Arc<AgentContext>,
    history: Arc<History>,
}

/// Serves on `listener` until the agent shuts down (with TLS when `tls` is given); each
/// connection, and the load-history sampler, is a tracked task of the agent.
pub(crate) async fn serve(listener: TcpListener, ctx: Arc<AgentContext>, tls: Option<TlsAcceptor>) {
    let history = Arc::new(History::default());
    ctx.spawn(history::sample(ctx.clone(), history.clone()));
    let app = router(Web {
        ctx: ctx.clone(),
        history,
    });
    let mut shutdown = ctx.shutdown.clone();
    let limit = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                debug!(reason = %e, "web: accept failed");
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            info!(peer = %peer, limit = CONNECTIONS_MAX, "web: too many connections, one closed");
            continue;
        };
        let (app, tls, shutdown) = (app.clone(), tls.clone(), ctx.shutdown.clone());
        ctx.spawn(async move {
            connection(stream, peer, app, tls, shutdown).await;
            drop(permit);
        });
    }
}

/// Serves one connection within its bounds; logs why it was cut.
async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    tls: Option<TlsAcceptor>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let served = async {
        match tls {
            None => serve_http(stream, app).await,
            Some(acceptor) => serve_http(tls::accept(&acceptor, stream).await?, app).await,
        }
    };
    tokio::select! {
        r = tokio::time::timeout(CONNECTION_TIME_MAX, served) => match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => info!(peer = %peer, reason = %e, "web: connection cut"),
            Err(_) => debug!(peer = %peer, "web: connection closed at its time limit"),
        },
        _ = shutdown.changed() => {}
    }
}

async fn serve_http<S>(stream: S, app: Router) -> Result<(), WebError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(REQUEST_HEAD_BYTES_MAX)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
        .await
        .map_err(WebError::Http)
}

fn router(web: Web) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(api::status))
        .route("/api/v1/vms", get(api::vms))
        .route("/api/v1/sessions", get(api::sessions))
        .route("/api/v1/history", get(api::history))
        .route("/", get(assets::index))
        .route("/app.js", get(assets::script))
        .route("/style.css", get(assets::style))
        .fallback(not_found)
        .layer(axum::middleware::map_response(safe_headers))
        .with_state(web)
}

async fn metrics(axum::extract::State(web): axum::extract::State<Web>) -> Response {
    if let Some(endpoint) = web.ctx.net.endpoint() {
        web.ctx.metrics.sync_gossip(&endpoint.stats());
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        web.ctx.metrics.render(),
    )
        .into_response()
}

async fn not_found(uri: Uri) -> Response {
    debug!(path = %uri.path(), "web: no such path");
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// Every answer: no caching, no content sniffing, and a page that runs only the
/// binary's own script and style.
async fn safe_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    r
}
