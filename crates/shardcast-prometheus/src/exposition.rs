//! The `/metrics` endpoint every shardcast process serves: OpenMetrics
//! text from a `prometheus-client` registry on `GET` and `HEAD /metrics`
//! (query strings ignored), anything else 404, and the HTTP serving under
//! it, which other routes (the server's remote-write) can join.
//!
//! Requests are routed by axum and connections served by hyper. A
//! connection answers one request and is closed; within [`Limits`] it must
//! send its request head in time and be done in time, only so many are
//! served at once (more wait in the listen backlog), a failing `accept` (out
//! of file descriptors) is retried after a pause, and on shutdown the open
//! connections finish their request.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// What one client may hold of the HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a client may take to send its request head.
    pub head_timeout: Duration,
    /// How long one connection may last, request and answer together.
    pub connection_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            head_timeout: Duration::from_secs(10),
            connection_timeout: Duration::from_secs(30),
            max_connections: 64,
        }
    }
}
/// Pause after a failed `accept` before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(200);

/// The content type of the OpenMetrics text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry in the OpenMetrics text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

/// `GET /metrics` answering `render()`, anything else 404; merge more
/// routes into it before serving.
pub fn router(render: impl Fn() -> String + Clone + Send + Sync + 'static) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let text = render();
                async move { ([(header::CONTENT_TYPE, OPENMETRICS)], text) }
            }),
        )
        .fallback(not_found)
}

async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, "try GET /metrics\n")
}

/// Serves `router` on `listener` until `shutdown`, then lets the open
/// connections finish (each is bounded by `limits.connection_timeout`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .keep_alive(false);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            conn = listener.accept() => match conn {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, pause = ?ACCEPT_BACKOFF, "HTTP accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(router.clone());
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            match tokio::time::timeout(limits.connection_timeout, conn).await {
                Ok(Err(e)) => tracing::debug!(error = %e, "HTTP connection failed"),
                Err(_) => tracing::debug!("HTTP connection timed out"),
                Ok(Ok(())) => {}
            }
            drop(slot);
        });
    }
    // Connections are bounded by the connection timeout, so this ends.
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;

    /// A server of a router answering "hello" on `/metrics`, its address
    /// and the sender that stops it.
    async fn start(
        limits: Limits,
    ) -> (
        std::net::SocketAddr,
        oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new()
            .route("/metrics", get(|| async { "hello\n" }))
            .fallback(not_found);
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(serve(listener, router, limits, async move {
            let _ = rx.await;
        }));
        (addr, tx, task)
    }

    /// Sends `request` on a new connection and reads until the server
    /// closes it.
    async fn exchange(addr: std::net::SocketAddr, request: String) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    fn request(path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n")
    }

    #[tokio::test]
    async fn answers_get_head_and_query_strings_and_404_elsewhere() {
        let (addr, _stop, _task) = start(Limits::default()).await;
        let ok = exchange(addr, request("/metrics")).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nhello\n"), "{ok}");
        let query = exchange(addr, request("/metrics?name[]=x")).await;
        assert!(
            query.starts_with("HTTP/1.1 200") && query.ends_with("hello\n"),
            "{query}"
        );
        let head = exchange(addr, "HEAD /metrics HTTP/1.1\r\nhost: x\r\n\r\n".into()).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
        let missing = exchange(addr, request("/nope")).await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        assert!(missing.ends_with("try GET /metrics\n"), "{missing}");
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_and_frees_its_slot() {
        let limits = Limits {
            head_timeout: Duration::from_millis(200),
            max_connections: 1,
            ..Limits::default()
        };
        let (addr, _stop, _task) = start(limits).await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        // The only slot is the silent client's until its head times out;
        // then the server closes it (EOF) and answers the next client.
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), silent.read_to_end(&mut buf))
            .await
            .expect("a silent connection is closed")
            .unwrap();
        let ok = exchange(addr, request("/metrics")).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_for_a_slot() {
        let limits = Limits {
            head_timeout: Duration::from_secs(600),
            max_connections: 1,
            ..Limits::default()
        };
        let (addr, _stop, _task) = start(limits).await;
        let silent = TcpStream::connect(addr).await.unwrap();
        let waiting = tokio::spawn(exchange(addr, request("/metrics")));
        // Held while the silent client keeps the only slot.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), async {
                while !waiting.is_finished() {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .is_err(),
            "answered beyond the connection limit"
        );
        drop(silent);
        let ok = waiting.await.unwrap();
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    }

    #[tokio::test]
    async fn shutdown_stops_accepting_and_returns() {
        let (addr, stop, task) = start(Limits::default()).await;
        assert!(
            exchange(addr, request("/metrics"))
                .await
                .starts_with("HTTP/1.1 200")
        );
        stop.send(()).unwrap();
        task.await.unwrap();
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
