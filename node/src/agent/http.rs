//! A minimal HTTP/1.1 responder for `GET /metrics` on a local TCP address: one request
//! per connection, bounded head size and time, `Connection: close`.

use super::context::AgentContext;
use super::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest request head read.
const HEAD_BYTES_MAX: usize = 8 * 1024;
/// Bound on reading a request and writing its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Most connections served at once.
const CONNECTIONS_MAX: usize = 16;

/// Serves `/metrics` on `listener` until the agent shuts down; each connection is a
/// tracked task of the agent.
pub(crate) async fn serve_metrics(listener: TcpListener, ctx: Arc<AgentContext>) {
    let mut shutdown = ctx.shutdown.clone();
    let limit = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        let metrics = ctx.metrics.clone();
        ctx.spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &metrics)).await;
            drop(permit);
        });
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > HEAD_BYTES_MAX {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = if method == "GET" && (path == "/metrics" || path == "/") {
        (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        )
    } else {
        ("404 Not Found", "text/plain", "not found\n".to_owned())
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}
