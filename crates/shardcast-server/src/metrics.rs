//! Prometheus metrics of the server, served as text on `/metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Every metric the server exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests by `method` and gRPC `code`.
    pub requests: Family<Labels, Counter>,
    /// Request latency in seconds by `method`.
    pub latency: Family<Labels, Histogram, fn() -> Histogram>,
    /// Forecasts per inference batch.
    pub batch_size: Histogram,
    /// Forecasts waiting for an inference thread.
    pub queue_depth: Gauge,
    /// Forecasts run by the inference threads (jobs whose caller went away
    /// before their turn are not run, nor counted).
    pub forecasts_run: Counter,
    /// The version of the model being served.
    pub model_version: Gauge,
    /// Model versions refused at load.
    pub models_refused: Counter,
    /// Passes of the model poller (also while a rollback pins the version).
    pub model_polls: Counter,
    /// `StreamForecasts` calls open now.
    pub streams_open: Gauge,
    /// Forecasts of open streams in progress now (reading history, queued
    /// or running).
    pub stream_work: Gauge,
    /// Stream forecasts put off because the queue was full or the store
    /// failed; each is retried.
    pub stream_deferred: Counter,
    /// Reads of series history from the store in flight (running or
    /// waiting for a read slot).
    pub store_reads: Gauge,
    /// Remote-write requests by HTTP `code`.
    pub remote_write_requests: Family<Labels, Counter>,
    /// Remote-written samples by `outcome`: `stored`, `stale`,
    /// `non_finite`, `unmatched` (skipped), `refused` (in a request
    /// answered 400 or 503).
    pub remote_write_samples: Family<Labels, Counter>,
    /// Published forecasts: a series' quantile `steps_ahead` grid steps
    /// after its last observation.
    pub forecast: Family<Labels, Gauge<f64, AtomicU64>>,
    /// Time of the first step of a series' published forecast.
    pub forecast_start: Family<Labels, Gauge<f64, AtomicU64>>,
}

fn latency_histogram() -> Histogram {
    // 50 µs to about 3.3 s.
    Histogram::new([
        5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("shardcast");
        let requests = Family::<Labels, Counter>::default();
        let latency =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let batch_size = Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]);
        let queue_depth = Gauge::default();
        let forecasts_run = Counter::default();
        let model_version = Gauge::default();
        let models_refused = Counter::default();
        let model_polls = Counter::default();
        let streams_open = Gauge::default();
        let stream_work = Gauge::default();
        let stream_deferred = Counter::default();
        let store_reads = Gauge::default();
        let remote_write_requests = Family::<Labels, Counter>::default();
        let remote_write_samples = Family::<Labels, Counter>::default();
        let forecast = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let forecast_start = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "forecast",
            "Published forecasts (--publish-forecasts): the quantile of a series \
             steps_ahead grid steps after its last observation",
            forecast.clone(),
        );
        registry.register(
            "forecast_start_timestamp_seconds",
            "Time of the first step of a series' published forecast",
            forecast_start.clone(),
        );
        registry.register(
            "remote_write_requests",
            "Prometheus remote-write requests by HTTP status code",
            remote_write_requests.clone(),
        );
        registry.register(
            "remote_write_samples",
            "Prometheus remote-write samples by outcome",
            remote_write_samples.clone(),
        );
        registry.register(
            "grpc_requests",
            "gRPC requests by method and status code",
            requests.clone(),
        );
        registry.register(
            "grpc_request_duration_seconds",
            "gRPC request latency by method",
            latency.clone(),
        );
        registry.register(
            "inference_batch_size",
            "Forecasts per inference batch",
            batch_size.clone(),
        );
        registry.register(
            "inference_queue_depth",
            "Forecasts waiting for an inference thread",
            queue_depth.clone(),
        );
        registry.register(
            "inference_forecasts",
            "Forecasts run by the inference threads",
            forecasts_run.clone(),
        );
        registry.register(
            "model_version",
            "Version of the model being served",
            model_version.clone(),
        );
        registry.register(
            "models_refused",
            "Model versions refused at load",
            models_refused.clone(),
        );
        registry.register(
            "model_polls",
            "Passes of the model poller",
            model_polls.clone(),
        );
        registry.register(
            "streams_open",
            "StreamForecasts calls open",
            streams_open.clone(),
        );
        registry.register(
            "stream_forecasts_in_flight",
            "Forecasts of open streams in progress (reading history, queued or running)",
            stream_work.clone(),
        );
        registry.register(
            "stream_forecasts_deferred",
            "Stream forecasts put off (queue full or store failed) and retried",
            stream_deferred.clone(),
        );
        registry.register(
            "store_reads_in_flight",
            "Reads of series history from the store in flight",
            store_reads.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            batch_size,
            queue_depth,
            forecasts_run,
            model_version,
            models_refused,
            model_polls,
            streams_open,
            stream_work,
            stream_deferred,
            store_reads,
            remote_write_requests,
            remote_write_samples,
            forecast,
            forecast_start,
        }
    }
}

impl Metrics {
    /// Records one finished request.
    pub fn observe(&self, method: &'static str, code: tonic::Code, seconds: f64) {
        self.requests
            .get_or_create(&vec![
                ("method", method.to_owned()),
                ("code", format!("{code:?}")),
            ])
            .inc();
        self.latency
            .get_or_create(&vec![("method", method.to_owned())])
            .observe(seconds);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        shardcast_prometheus::exposition::render(&self.registry)
    }
}
