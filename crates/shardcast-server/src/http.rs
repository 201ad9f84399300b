//! The HTTP side of the server: `/metrics` (served by
//! `shardcast_prometheus::exposition`) and, when the server has label rules
//! for it, `POST /api/v1/write` (Prometheus remote-write).

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::post;
use shardcast_prometheus::{LabelRules, exposition, remote_write};
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// Prometheus remote-write into the server's store.
#[derive(Debug, Clone)]
pub(crate) struct Receiver {
    /// The server, whose store takes the points.
    pub(crate) state: Arc<crate::State>,
    /// How labels become keys.
    pub(crate) rules: Arc<LabelRules>,
    /// The largest body, compressed; decompressed it may be 8 times that.
    pub(crate) max_body: usize,
}

/// Serves `/metrics` (and remote-write with a `receiver`) on `listener`
/// until `shutdown`.
pub(crate) async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    receiver: Option<Receiver>,
    shutdown: impl Future<Output = ()>,
) {
    let mut router = exposition::router(move || metrics.render());
    if let Some(r) = receiver {
        let write = Router::new()
            .route("/api/v1/write", post(receive))
            .layer(DefaultBodyLimit::max(r.max_body))
            .with_state(r);
        router = router.merge(write);
    }
    exposition::serve(listener, router, exposition::Limits::default(), shutdown).await;
}

/// One remote-write request: 204 when stored (or when all of it was
/// skipped), 400 with the reason when it can never be stored (Prometheus
/// drops it), 503 when the store failed (Prometheus retries). Counted by
/// status, and its samples by outcome.
async fn receive(State(r): State<Receiver>, body: Bytes) -> (StatusCode, String) {
    let (code, answer) = write(&r, &body).await;
    r.state
        .metrics
        .remote_write_requests
        .get_or_create(&vec![("code", code.as_u16().to_string())])
        .inc();
    (code, answer)
}

async fn write(r: &Receiver, body: &[u8]) -> (StatusCode, String) {
    let count = |outcome: &'static str, n: u64| {
        if n > 0 {
            r.state
                .metrics
                .remote_write_samples
                .get_or_create(&vec![("outcome", outcome.to_owned())])
                .inc_by(n);
        }
    };
    let req = match remote_write::decode(body, r.max_body.saturating_mul(8)) {
        Ok(req) => req,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let (batch, skipped) = match remote_write::points(&req, &r.rules) {
        Ok(p) => p,
        Err(e) => {
            count(
                "refused",
                req.timeseries.iter().map(|t| t.samples.len() as u64).sum(),
            );
            return (StatusCode::BAD_REQUEST, format!("{e}\n"));
        }
    };
    count("stale", skipped.stale);
    count("non_finite", skipped.non_finite);
    count("unmatched", skipped.unmatched);
    if batch.is_empty() {
        return (StatusCode::NO_CONTENT, String::new());
    }
    let n = batch.len() as u64;
    if let Err(e) = r.state.context.store().write_points(batch).await {
        count("refused", n);
        let e = crate::error::chain(&e);
        tracing::warn!(error = %e, "remote write: the store refused the batch");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the store refused the write: {e}\n"),
        );
    }
    count("stored", n);
    // Committed; a failed refresh only delays when forecasts see it.
    if let Err(e) = r.state.context.refresh().await {
        tracing::warn!(error = %crate::error::chain(&e), "store refresh after a remote write failed");
    }
    (StatusCode::NO_CONTENT, String::new())
}
