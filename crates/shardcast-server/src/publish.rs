//! Forecasts as gauges on `/metrics` (`shardcast serve
//! --publish-forecasts`), so that Prometheus holds forecast beside actual
//! and a Grafana panel can draw both from Prometheus alone.
//!
//! The series whose keys (`app/shard_type/metric/series`) match the
//! operator's globs are followed by an internal stream, the same machinery
//! as `StreamForecasts`: a new forecast whenever their data or the model
//! changes. Each forecast sets `shardcast_forecast{…, quantile,
//! steps_ahead}` for every step and level, and
//! `shardcast_forecast_start_timestamp_seconds` to the time of its first
//! step. The matching keys are looked up again every
//! [`RESOLVE_EVERY`], so series that appear later (remote-written, pulled)
//! are followed too.

use std::sync::Arc;
use std::time::Duration;

use shardcast_core::SeriesKey;
use shardcast_proto::forecast::v1 as pb;
use tokio::sync::mpsc;

use crate::State;

/// How often the followed keys are looked up again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(30);

/// Which forecasts to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    /// Globs over `app/shard_type/metric/series`.
    pub series: Vec<String>,
    /// Quantile levels to publish.
    pub levels: Vec<f64>,
}

impl Publish {
    /// Checks the globs and levels.
    pub fn new(series: Vec<String>, levels: Vec<f64>) -> Result<Self, String> {
        for s in &series {
            glob::Pattern::new(s).map_err(|e| format!("--publish-forecasts {s}: {e}"))?;
        }
        shardcast_core::QuantileSet::new(&levels).map_err(|e| format!("--publish-levels: {e}"))?;
        Ok(Self { series, levels })
    }

    fn matches(&self, key: &SeriesKey) -> bool {
        let key = key.to_string();
        self.series
            .iter()
            .filter_map(|s| glob::Pattern::new(s).ok())
            .any(|p| p.matches(&key))
    }
}

/// Follows the matching series until the server stops.
pub(crate) async fn run(state: Arc<State>, publish: Publish) {
    let mut stopping = state.stopping.subscribe();
    let mut keys: Vec<SeriesKey> = Vec::new();
    let mut following: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        match state.context.store().list_series().await {
            Ok(stored) => {
                let mut found: Vec<SeriesKey> = stored
                    .into_iter()
                    .map(|s| s.key)
                    .filter(|k| publish.matches(k))
                    .collect();
                found.truncate(state.limits.max_stream_keys);
                if found != keys {
                    if let Some(task) = following.take() {
                        task.abort();
                    }
                    keys = found;
                    tracing::info!(series = keys.len(), "publishing forecasts as gauges");
                    if !keys.is_empty() {
                        following = follow(&state, keys.clone(), publish.levels.clone());
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list the series to publish"),
        }
        tokio::select! {
            _ = stopping.wait_for(|s| *s) => break,
            () = tokio::time::sleep(RESOLVE_EVERY) => {}
        }
    }
    if let Some(task) = following {
        task.abort();
    }
}

/// An internal stream of `keys` whose forecasts become gauges.
fn follow(
    state: &Arc<State>,
    keys: Vec<SeriesKey>,
    levels: Vec<f64>,
) -> Option<tokio::task::JoinHandle<()>> {
    let open = match state.open_stream(keys.len()) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, "cannot follow the series to publish");
            return None;
        }
    };
    let (tx, mut rx) = mpsc::channel(keys.len().max(1));
    let streaming = tokio::spawn(Arc::clone(state).stream(keys, 0, levels, tx, open));
    let metrics = Arc::clone(&state.metrics);
    Some(tokio::spawn(async move {
        // Aborting this task drops `rx`, which ends the stream.
        let _streaming = AbortOnDrop(streaming);
        while let Some(item) = rx.recv().await {
            match item {
                Ok(f) => set(&metrics, &f),
                Err(status) => {
                    tracing::warn!(%status, "a published forecast failed");
                }
            }
        }
    }))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sets the gauges of one forecast.
fn set(metrics: &crate::metrics::Metrics, f: &pb::Forecast) {
    let Some(k) = &f.key else { return };
    let key = vec![
        ("app", k.app.clone()),
        ("shard_type", k.shard_type.clone()),
        ("metric", k.metric.clone()),
        ("series", k.series.clone()),
    ];
    if let Some(first) = f.steps.first() {
        metrics
            .forecast_start
            .get_or_create(&key)
            .set(first.timestamp_unix_ms as f64 / 1000.0);
    }
    for (i, step) in f.steps.iter().enumerate() {
        for (level, v) in f.quantiles.iter().zip(&step.values) {
            let mut labels = key.clone();
            labels.push(("quantile", level.to_string()));
            labels.push(("steps_ahead", (i + 1).to_string()));
            metrics.forecast.get_or_create(&labels).set(f64::from(*v));
        }
    }
}
