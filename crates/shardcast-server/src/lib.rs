//! The shardcast inference server: probabilistic forecasts of the series in
//! a store, from the newest trained model, over gRPC.
//!
//! It owns the services of `proto/` — `ForecastService` (one series, a shard
//! type's sum, batches, streams, shard demand), `IngestService` (atomic
//! client-streamed writes into the store) and `ModelService` (list, reload,
//! roll back versions) — plus gRPC health and reflection, bearer-token
//! auth, optional TLS and a Prometheus `/metrics` endpoint.
//!
//! How a forecast is served: the request is validated; the recent history
//! of the series is read from the store (cached per store version, see
//! [`context`]); the job joins a micro-batch on an inference thread
//! ([`batcher`]) and runs through the model version that was current when
//! it arrived ([`registry`]); the answer is cut to the requested horizon and
//! levels. New model versions written by `shardcast train` and new data
//! written to the store are picked up by background polls without a
//! restart.
//!
//! Streams are bounded ([`Limits::max_streams`], [`Limits::max_stream_keys`]:
//! `RESOURCE_EXHAUSTED` beyond), share their store reads with everyone else,
//! wait for room in their half of the inference queue instead of being
//! refused, and stop their work the moment their client goes away;
//! [`State::in_flight`] counts what is still running.
//!
//! It must not train models or parse files: the store crate owns stored
//! data, the model crate owns inference. Neighbours: `shardcast-proto` (wire
//! types), `shardcast-planner` (shard-demand distribution), and the binary's
//! `serve` subcommand, which parses flags into [`ServerConfig`] and calls
//! [`run`].

pub mod batcher;
pub mod context;
mod error;
pub mod forecast;
mod http;
pub mod ingest;
pub mod metrics;
pub mod model;
mod oversize;
pub mod publish;
pub mod registry;
pub mod token;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardcast_proto::forecast::v1::forecast_service_server::ForecastServiceServer;
use shardcast_proto::ingest::v1::ingest_service_server::IngestServiceServer;
use shardcast_proto::model::v1::model_service_server::ModelServiceServer;
use shardcast_store::Store;
use shardcast_store::resample::Agg;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Response, Status};

pub use error::{Error, Result};

use batcher::{BatchConfig, Batcher};
use context::StoreContext;
use metrics::Metrics;
use oversize::TooLarge;
use registry::ModelRegistry;

/// Limits on what one request, and all streams together, may ask for; as
/// command-line flags, `shardcast serve`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct Limits {
    /// Most series in one batch or shard type request; keep it well below
    /// --queue, since each series is one queued forecast.
    #[arg(long, env = "SHARDCAST_MAX_SERIES", default_value_t = LIMITS.max_series)]
    pub max_series: usize,
    /// Most values in a context override.
    #[arg(skip = LIMITS.max_context_points)]
    pub max_context_points: usize,
    /// Most points in one `Write` stream.
    #[arg(skip = LIMITS.max_write_points)]
    pub max_write_points: usize,
    /// Largest request message, bytes; a bigger one is answered
    /// RESOURCE_EXHAUSTED (a remote-write body, 413).
    #[arg(long, env = "SHARDCAST_MAX_MESSAGE_BYTES", default_value_t = LIMITS.max_message_bytes)]
    pub max_message_bytes: usize,
    /// Most StreamForecasts calls open at once; more are answered
    /// RESOURCE_EXHAUSTED. Streams' forecasts together use at most half of
    /// --queue, waiting for room rather than being refused.
    #[arg(long, env = "SHARDCAST_MAX_STREAMS", default_value_t = LIMITS.max_streams)]
    pub max_streams: usize,
    /// Most series in one StreamForecasts call; more are answered
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "SHARDCAST_MAX_STREAM_KEYS", default_value_t = LIMITS.max_stream_keys)]
    pub max_stream_keys: usize,
    /// Most reads of series history from the store at once (requests for
    /// the same series and store version share one read).
    #[arg(
        long,
        env = "SHARDCAST_STORE_READS",
        default_value_t = LIMITS.store_reads,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    pub store_reads: usize,
}

/// The default limits.
const LIMITS: Limits = Limits {
    max_series: 256,
    max_context_points: 100_000,
    max_write_points: 10_000_000,
    max_message_bytes: 16 << 20,
    max_streams: 64,
    max_stream_keys: 256,
    store_reads: context::DEFAULT_READS,
};

impl Default for Limits {
    fn default() -> Self {
        LIMITS
    }
}

/// PEM files of the server's certificate chain and private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// Everything [`run`] needs besides its listeners.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Store location (directory or URL).
    pub store: String,
    /// Directory holding `<name>/<version>/` model directories.
    pub models_dir: PathBuf,
    /// The model to serve.
    pub model: String,
    /// Which artifact of each version runs the forecasts.
    pub format: registry::ModelFormat,
    /// Aggregation used to put stored points on the model's grid.
    pub agg: Agg,
    /// Micro-batching.
    pub batch: BatchConfig,
    /// Request limits.
    pub limits: Limits,
    /// How often to look for new model versions.
    pub model_poll: Duration,
    /// How often to look for new data in the store.
    pub store_poll: Duration,
    /// Bearer token every call (but health) must carry, if set.
    pub token: Option<String>,
    /// Serve TLS with these files, if set.
    pub tls: Option<TlsFiles>,
    /// Label rules of Prometheus remote-write: with them, the metrics port
    /// also takes `POST /api/v1/write`.
    pub remote_write: Option<shardcast_prometheus::LabelRules>,
    /// Forecasts to publish as gauges on the metrics address.
    pub publish: Option<publish::Publish>,
}

impl ServerConfig {
    /// Defaults for everything but the store and the models directory.
    pub fn new(store: impl Into<String>, models_dir: impl Into<PathBuf>) -> Self {
        Self {
            store: store.into(),
            models_dir: models_dir.into(),
            model: "default".into(),
            format: registry::ModelFormat::Candle,
            agg: Agg::Mean,
            batch: BatchConfig::default(),
            limits: Limits::default(),
            model_poll: Duration::from_secs(2),
            store_poll: Duration::from_secs(1),
            token: None,
            tls: None,
            remote_write: None,
            publish: None,
        }
    }
}

/// What every service shares.
#[derive(Debug)]
pub struct State {
    /// The served model's versions.
    pub registry: Arc<ModelRegistry>,
    /// The store as forecasts read it.
    pub context: Arc<StoreContext>,
    /// The inference queue.
    pub batcher: Batcher,
    /// Exported metrics.
    pub metrics: Arc<Metrics>,
    /// Request limits.
    pub limits: Limits,
    /// The served model version, for streams to follow.
    pub models: watch::Sender<u32>,
    /// Set when the server starts shutting down; open streams end on it.
    pub stopping: watch::Sender<bool>,
    /// Places for open streams (`limits.max_streams`).
    streams: Arc<tokio::sync::Semaphore>,
}

impl State {
    /// Opens the store and the model and starts the inference threads.
    pub async fn open(cfg: &ServerConfig) -> Result<Arc<Self>> {
        let store = Store::open(&cfg.store)?;
        let (models_dir, name, format) = (cfg.models_dir.clone(), cfg.model.clone(), cfg.format);
        let registry = blocking("loading the model", move || {
            ModelRegistry::open(&models_dir, &name, format)
        })
        .await?;
        let metrics = Arc::new(Metrics::default());
        let context = StoreContext::with_reads(
            store,
            cfg.agg,
            cfg.limits.store_reads,
            metrics.store_reads.clone(),
        );
        context.refresh().await?;
        let (batcher, _workers) = Batcher::start(cfg.batch, Arc::clone(&metrics));
        let version = registry.current().version;
        metrics.model_version.set(i64::from(version));
        Ok(Arc::new(Self {
            registry: Arc::new(registry),
            context: Arc::new(context),
            batcher,
            metrics,
            limits: cfg.limits,
            models: watch::channel(version).0,
            stopping: watch::channel(false).0,
            streams: Arc::new(tokio::sync::Semaphore::new(cfg.limits.max_streams)),
        }))
    }

    /// Work in flight now: open streams, their forecasts in progress,
    /// forecasts queued for inference and store reads. All four are zero on
    /// an idle server, and return to zero once every client has gone.
    pub fn in_flight(&self) -> InFlight {
        InFlight {
            streams: self.metrics.streams_open.get(),
            stream_work: self.metrics.stream_work.get(),
            queued: self.metrics.queue_depth.get(),
            store_reads: self.metrics.store_reads.get(),
        }
    }

    /// Tells metrics and streams which version is served now.
    pub(crate) fn publish_model(&self) {
        let v = self.registry.current().version;
        self.metrics.model_version.set(i64::from(v));
        self.metrics.models_refused.inner().store(
            self.registry.refused().len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.models
            .send_if_modified(|cur| std::mem::replace(cur, v) != v);
    }

    /// Starts recording a call of `method`; a call dropped before
    /// [`Call::finish`] (its caller went away or its deadline passed) is
    /// counted as `Cancelled`.
    pub(crate) fn call(&self, method: &'static str) -> Call<'_> {
        Call {
            metrics: &self.metrics,
            method,
            started: Instant::now(),
            done: false,
        }
    }
}

/// Counts of work in flight; see [`State::in_flight`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InFlight {
    /// Open `StreamForecasts` calls.
    pub streams: i64,
    /// Forecasts of open streams in progress.
    pub stream_work: i64,
    /// Forecasts waiting for an inference thread.
    pub queued: i64,
    /// Reads of series history from the store.
    pub store_reads: i64,
}

impl InFlight {
    /// Whether nothing is in flight.
    pub fn is_idle(&self) -> bool {
        *self == Self::default()
    }
}

/// One call being served, for the metrics.
#[derive(Debug)]
pub(crate) struct Call<'a> {
    metrics: &'a Metrics,
    method: &'static str,
    started: Instant,
    done: bool,
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.metrics.observe(
                self.method,
                tonic::Code::Cancelled,
                self.started.elapsed().as_secs_f64(),
            );
        }
    }
}

impl Call<'_> {
    /// Records the finished call and turns its result into a gRPC answer.
    pub(crate) fn finish<T>(mut self, out: Result<T>) -> Result<Response<T>, Status> {
        self.done = true;
        let (method, started) = (self.method, self.started);
        let out = out.map(Response::new).map_err(|e| {
            let status = Status::from(e);
            if status.code() == tonic::Code::Internal {
                tracing::error!(method, error = %status.message(), "request failed");
            } else {
                tracing::debug!(method, code = ?status.code(), error = %status.message(), "request refused");
            }
            status
        });
        let code = out.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok);
        self.metrics
            .observe(method, code, started.elapsed().as_secs_f64());
        out
    }
}

/// Runs blocking work (file reads, model loads) off the async threads; a
/// panic in it becomes an error naming `what`.
pub(crate) async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Io {
            context: what.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?
}

/// Checks the `authorization: Bearer <token>` metadata.
#[derive(Debug, Clone)]
struct Auth(Option<Arc<str>>, Arc<Metrics>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let Some(token) = &self.0 else {
            return Ok(req);
        };
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let refused = match given {
            Some(t) if constant_time_eq(t.as_bytes(), token.as_bytes()) => return Ok(req),
            Some(_) => Status::unauthenticated("wrong bearer token"),
            None => Status::unauthenticated("missing `authorization: Bearer <token>` metadata"),
        };
        // The interceptor does not see the method: count under `*`.
        self.1.observe("*", refused.code(), 0.0);
        Err(refused)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A server serving on a spawned task (as [`serve`] does) until
/// [`Running::stop`]: for programs and tests that run the server beside
/// their own work.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Running {
    /// Starts serving `state` on `listener` (and metrics on `metrics`).
    pub fn spawn(
        listener: TcpListener,
        metrics: Option<TcpListener>,
        state: Arc<State>,
        cfg: ServerConfig,
    ) -> Result<Self> {
        let addr = listener.local_addr().map_err(|source| Error::Io {
            context: "reading the listener's address".into(),
            source,
        })?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve(listener, metrics, state, &cfg, async {
                let _ = stopped.await;
            })
            .await
        });
        Ok(Self { addr, stop, task })
    }

    /// The address it serves gRPC on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops taking calls, lets those in flight finish (as [`serve`] does
    /// on shutdown), and returns how serving ended.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(Error::Io {
                context: "the server task".into(),
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }
}

/// Serves gRPC on `listener` (and Prometheus text on `metrics`, if given)
/// until `shutdown` resolves, then stops taking calls and lets the calls in
/// flight finish.
pub async fn serve(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    state: Arc<State>,
    cfg: &ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ForecastServiceServer<forecast::ForecastApi>>()
        .await;
    health
        .set_serving::<IngestServiceServer<ingest::IngestApi>>()
        .await;
    health
        .set_serving::<ModelServiceServer<model::ModelApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(shardcast_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Io {
            context: "building the reflection service".into(),
            source: std::io::Error::other(e.to_string()),
        })?;

    let auth = Auth(
        cfg.token.as_deref().map(Arc::from),
        Arc::clone(&state.metrics),
    );
    let max = cfg.limits.max_message_bytes;
    let forecast = ForecastServiceServer::new(forecast::ForecastApi::new(Arc::clone(&state)))
        .max_decoding_message_size(max);
    let ingest = IngestServiceServer::new(ingest::IngestApi::new(Arc::clone(&state)))
        .max_decoding_message_size(max);
    let models = ModelServiceServer::new(model::ModelApi::new(Arc::clone(&state)))
        .max_decoding_message_size(max);

    let mut server = Server::builder();
    if let Some(tls) = &cfg.tls {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|source| Error::Io {
                context: format!("reading {}", p.display()),
                source,
            })
        };
        let identity = Identity::from_pem(read(&tls.cert)?, read(&tls.key)?);
        server = server.tls_config(ServerTlsConfig::new().identity(identity))?;
    }
    // Everything fallible is done: start the background work.
    let stopped = {
        let mut rx = state.stopping.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    {
        let (state, health) = (Arc::clone(&state), health.clone());
        tokio::spawn(async move {
            shutdown.await;
            health
                .set_not_serving::<ForecastServiceServer<forecast::ForecastApi>>()
                .await;
            health
                .set_not_serving::<IngestServiceServer<ingest::IngestApi>>()
                .await;
            health
                .set_not_serving::<ModelServiceServer<model::ModelApi>>()
                .await;
            state.stopping.send_replace(true);
        });
    }
    let mut pollers = spawn_pollers(&state, cfg);
    if let Some(p) = cfg.publish.clone() {
        pollers.push(tokio::spawn(publish::run(Arc::clone(&state), p)));
    }
    if let Some(l) = metrics {
        let (m, mut rx) = (Arc::clone(&state.metrics), state.stopping.subscribe());
        let receiver = cfg.remote_write.clone().map(|rules| http::Receiver {
            state: Arc::clone(&state),
            rules: Arc::new(rules),
            max_body: cfg.limits.max_message_bytes,
        });
        tokio::spawn(http::serve_metrics(l, m, receiver, async move {
            let _ = rx.wait_for(|s| *s).await;
        }));
    }
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(
        ?addr,
        tls = cfg.tls.is_some(),
        auth = cfg.token.is_some(),
        "serving gRPC"
    );
    // Every service but health asks for the token; reflection too, since
    // it tells who asks what the server offers.
    let serving = server
        .add_service(health_service)
        .add_service(InterceptedService::new(reflection, auth.clone()))
        .add_service(TooLarge(InterceptedService::new(forecast, auth.clone())))
        .add_service(TooLarge(InterceptedService::new(ingest, auth.clone())))
        .add_service(TooLarge(InterceptedService::new(models, auth)))
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            stopped,
        );
    tokio::pin!(serving);
    // In-flight calls get SHUTDOWN_GRACE to finish; connections a client
    // keeps open past it are dropped rather than holding the process.
    let mut stopping = state.stopping.subscribe();
    let grace_over = async move {
        let _ = stopping.wait_for(|s| *s).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let result = tokio::select! {
        r = &mut serving => r,
        () = grace_over => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after shutdown; dropping them");
            Ok(())
        }
    };
    health
        .set_not_serving::<ForecastServiceServer<forecast::ForecastApi>>()
        .await;
    for p in pollers {
        p.abort();
    }
    tracing::info!("server stopped");
    Ok(result?)
}

/// How long in-flight calls get to finish after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Background polls for new model versions and new store data.
fn spawn_pollers(state: &Arc<State>, cfg: &ServerConfig) -> Vec<tokio::task::JoinHandle<()>> {
    let stop = state.stopping.subscribe();
    let model = {
        let (state, every, mut stop) = (Arc::clone(state), cfg.model_poll, stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                let s = Arc::clone(&state);
                match tokio::task::spawn_blocking(move || s.registry.poll()).await {
                    Ok(Some(v)) => tracing::info!(version = v, "new model version serving"),
                    Ok(None) => {}
                    Err(e) => tracing::error!(error = %e, "model poll failed"),
                }
                state.metrics.model_polls.inc();
                state.publish_model();
            }
        })
    };
    let store = {
        let (state, every, mut stop) = (Arc::clone(state), cfg.store_poll, stop);
        let cfg_store = cfg.store.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                if let Err(e) = state.context.refresh().await {
                    tracing::warn!(
                        store = %cfg_store,
                        error = %error::chain(&e),
                        "store refresh failed; serving the previous view"
                    );
                }
            }
        })
    };
    vec![model, store]
}

/// Opens everything in `cfg` and serves until `shutdown`.
pub async fn run(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let state = State::open(&cfg).await?;
    serve(listener, metrics, state, &cfg, shutdown).await
}
