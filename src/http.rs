//! The small HTTP endpoint for operators: `/metrics` (Prometheus text format) and
//! `/clients/slow` (JSON: the clients dropping the most messages, with their queue depths and
//! drop reasons). Deliberately minimal: GET only, one request per connection, bounded request
//! size, time and concurrency, so that it needs no HTTP framework and cannot hurt the broker.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::router::Router;

/// Largest request head read; anything longer is refused.
const MAX_REQUEST: usize = 8 * 1024;
/// Time a scraper has to send its request and read the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent HTTP connections at most.
const MAX_CONCURRENT: usize = 16;
/// Clients listed by `/clients/slow`.
pub const SLOW_CLIENTS_LISTED: usize = 20;

/// Serves HTTP on `listener` until shutdown.
pub async fn serve(listener: TcpListener, router: Arc<Router>, shutdown: CancellationToken) {
    let limit = Arc::new(Semaphore::new(MAX_CONCURRENT));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.cancelled() => return,
        };
        let Ok((socket, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            debug!("Too many concurrent HTTP requests; closing {peer}.");
            continue;
        };
        let router = router.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(socket, &router)).await;
            drop(permit);
        });
    }
}

async fn answer(mut socket: TcpStream, router: &Router) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return respond(
                &mut socket,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request too large\n",
            )
            .await;
        }
    }
    let line = buf.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        return respond(
            &mut socket,
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n",
        )
        .await;
    }
    match path.split('?').next().unwrap_or("") {
        "/metrics" => {
            let body = router
                .metrics()
                .render(&router.gauges())
                .unwrap_or_default();
            respond(&mut socket, "200 OK", "text/plain; version=0.0.4", &body).await
        }
        "/clients/slow" => {
            let body = serde_json::to_string_pretty(&router.slow_clients(SLOW_CLIENTS_LISTED))
                .unwrap_or_else(|_| "[]".into());
            respond(&mut socket, "200 OK", "application/json", &body).await
        }
        "/" => {
            respond(
                &mut socket,
                "200 OK",
                "text/plain",
                "roostd: /metrics (Prometheus), /clients/slow (JSON)\n",
            )
            .await
        }
        _ => respond(&mut socket, "404 Not Found", "text/plain", "not found\n").await,
    }
}

async fn respond(
    socket: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(body.as_bytes()).await?;
    socket.shutdown().await
}
