//! `shardcast.forecast.v1.ForecastService`: forecasts from the served model
//! with context read from the store.

use std::pin::Pin;
use std::sync::Arc;

use std::time::Duration;

use futures::StreamExt;
use futures::future::try_join_all;
use futures::stream::FuturesUnordered;
use prometheus_client::metrics::gauge::Gauge;
use shardcast_core::{GridStep, QuantileForecast, QuantileSet, SeriesKey, Timestamp};
use shardcast_planner::demand::shard_demand;
use shardcast_proto::forecast::v1 as pb;
use shardcast_proto::forecast::v1::forecast_service_server::ForecastService;
use shardcast_proto::{Provenance, forecast_to_pb, key_from_pb, key_to_pb};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::State;
use crate::context::GridTail;
use crate::error::{Error, Result};
use crate::registry::Served;

/// Most quantile levels one request may ask for.
const MAX_LEVELS: usize = 99;

/// A history with a value this large in magnitude that gives a non-finite
/// forecast has overflowed the model's single-precision arithmetic (`f32`
/// ends at 3.4e38, and the forecast's bands reach beyond the values);
/// below it, a non-finite forecast is the model's fault.
const OVERFLOW_MAGNITUDE: f32 = 1e30;

/// Forecasts of one stream in progress at once (all streams together are
/// bounded by the queue's stream share and the store's read slots).
const STREAM_CONCURRENCY: usize = 64;

/// First wait before a stream retries forecasts it had to put off.
const RETRY_FIRST: Duration = Duration::from_millis(50);

/// Longest wait between such retries.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// How a forecast joins the inference queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queueing {
    /// A full queue refuses it (`RESOURCE_EXHAUSTED`): unary requests.
    Refuse,
    /// It waits for room in the streams' share of the queue.
    Wait,
}

/// A forecast with where it came from.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The series.
    pub key: SeriesKey,
    /// The forecast at the requested levels and horizon.
    pub forecast: QuantileForecast,
    /// Time of the newest observed value (ms).
    pub last_observed: i64,
    /// The model version that made it.
    pub served: Arc<Served>,
    /// The history it was made from.
    pub tail: Arc<GridTail>,
}

impl Answer {
    /// The wire message.
    pub fn to_pb(&self) -> pb::Forecast {
        forecast_to_pb(
            key_to_pb(&self.key),
            &self.forecast,
            Provenance {
                model: &self.served.name,
                version: self.served.version,
                last_observed: self.last_observed,
            },
        )
    }
}

/// What to forecast, validated.
#[derive(Debug, Clone)]
pub struct Query {
    /// Steps to return.
    pub horizon: usize,
    /// Levels to return; `None` for the model's own.
    pub levels: Option<QuantileSet>,
}

impl State {
    /// Validates horizon and levels against the served model.
    pub(crate) fn query(
        &self,
        served: &Served,
        horizon: u32,
        levels: &[f64],
        field: &str,
    ) -> Result<Query> {
        let max = served.model.horizon();
        let horizon = match horizon as usize {
            0 => max,
            h if h > max => {
                return Err(Error::invalid(
                    format!("{field}horizon"),
                    format!(
                        "{h} steps asked, model {} v{} forecasts at most {max}",
                        served.name, served.version
                    ),
                ));
            }
            h => h,
        };
        let levels = if levels.is_empty() {
            None
        } else {
            if levels.len() > MAX_LEVELS {
                return Err(Error::invalid(
                    format!("{field}quantiles"),
                    format!("{} levels asked, at most {MAX_LEVELS}", levels.len()),
                ));
            }
            Some(
                QuantileSet::new(levels)
                    .map_err(|e| Error::invalid(format!("{field}quantiles"), e.to_string()))?,
            )
        };
        Ok(Query { horizon, levels })
    }

    /// The history to forecast `key` from: the store's, or a validated
    /// override.
    async fn history(
        &self,
        served: &Served,
        key: &SeriesKey,
        context: Option<&pb::ContextOverride>,
        field: &str,
    ) -> Result<Arc<GridTail>> {
        let horizon = served.model.horizon();
        let step = served.model.step_ms();
        let Some(ctx) = context else {
            let need = served.model.history_points();
            let grid = GridStep::from_millis(step)?;
            return self.context.tail(key, grid, need, horizon).await;
        };
        let field_prefix = field;
        let field = format!("{field}context.values");
        if ctx.values.is_empty() {
            return Err(Error::invalid(field, "empty: give at least one value"));
        }
        if ctx.values.len() > self.limits.max_context_points {
            return Err(Error::invalid(
                field,
                format!(
                    "{} values, at most {}",
                    ctx.values.len(),
                    self.limits.max_context_points
                ),
            ));
        }
        if let Some(i) = ctx.values.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid(
                format!("{field}[{i}]"),
                format!("{} is not a finite number", ctx.values[i]),
            ));
        }
        let n = ctx.values.len();
        // Every time the forecast touches must be a valid timestamp.
        let end = (n + horizon) as i64;
        let last = step
            .checked_mul(end)
            .and_then(|d| ctx.start_unix_ms.checked_add(d));
        if Timestamp::checked(ctx.start_unix_ms).is_none()
            || last.is_none_or(|t| Timestamp::checked(t).is_none())
        {
            return Err(Error::invalid(
                format!("{field_prefix}context.start_unix_ms"),
                format!(
                    "{} puts the context or the forecast outside years 1 to 9999",
                    ctx.start_unix_ms
                ),
            ));
        }
        Ok(Arc::new(GridTail {
            start: ctx.start_unix_ms,
            step,
            values: ctx.values.clone(),
            events: self
                .context
                .events_for(key, ctx.start_unix_ms, step, n + horizon),
        }))
    }

    /// Forecasts one series.
    pub(crate) async fn forecast_key(
        &self,
        served: &Arc<Served>,
        key: SeriesKey,
        query: &Query,
        context: Option<&pb::ContextOverride>,
        field: &str,
    ) -> Result<Answer> {
        let tail = self.history(served, &key, context, field).await?;
        let given = context.is_some().then_some(field);
        self.forecast_tail(served, key, query, tail, given, Queueing::Refuse)
            .await
    }

    /// Forecasts one series from `tail`, its history; `given` is the field
    /// prefix when the history came with the request.
    async fn forecast_tail(
        &self,
        served: &Arc<Served>,
        key: SeriesKey,
        query: &Query,
        tail: Arc<GridTail>,
        given: Option<&str>,
        queueing: Queueing,
    ) -> Result<Answer> {
        let series = key.to_string();
        let shard_type = key.shard_type.clone();
        let queued = match queueing {
            Queueing::Refuse => {
                self.batcher
                    .forecast(Arc::clone(served), series, shard_type, Arc::clone(&tail))
                    .await
            }
            Queueing::Wait => {
                self.batcher
                    .forecast_waiting(Arc::clone(served), series, shard_type, Arc::clone(&tail))
                    .await
            }
        };
        let full = queued.map_err(|e| match e {
            // Queue and shutdown errors are about the server, not the series.
            Error::Overloaded { .. } | Error::ShuttingDown => e,
            // Values the forecast cannot hold: an overflow of the history, or
            // the model's fault.
            Error::Core(bad @ shardcast_core::Error::ForecastValues { .. }) => {
                bad_values(&bad, &key, served, &tail, given)
            }
            e => Error::Forecasting {
                key: key.to_string(),
                version: served.version,
                source: Box::new(e),
            },
        })?;
        let last_observed = tail.last_observed();
        let first = full.truncated(query.horizon)?;
        let forecast = match &query.levels {
            None => first,
            Some(levels) => first.at_levels(levels),
        };
        Ok(Answer {
            key,
            forecast,
            last_observed,
            served: Arc::clone(served),
            tail,
        })
    }

    /// Forecasts one wire request; `field` prefixes error fields.
    pub(crate) async fn forecast_request(
        &self,
        served: &Arc<Served>,
        req: &pb::ForecastRequest,
        field: &str,
    ) -> Result<Answer> {
        let key = required_key(req.key.as_ref(), field)?;
        let query = self.query(served, req.horizon, &req.quantiles, field)?;
        self.forecast_key(served, key, &query, req.context.as_ref(), field)
            .await
    }

    /// Forecasts every series of a shard type and sums, level by level,
    /// those observed up to the newest bin; the others are returned as
    /// stale (their forecasts would be of other times).
    pub(crate) async fn forecast_shard_type(
        &self,
        served: &Arc<Served>,
        app: &str,
        shard_type: &str,
        metric: Option<&str>,
        query: &Query,
    ) -> Result<(Answer, Vec<Answer>, Vec<SeriesKey>)> {
        let keys = self
            .context
            .view()
            .shard_type_series(app, shard_type, metric);
        if keys.is_empty() {
            return Err(Error::UnknownShardType {
                app: app.to_owned(),
                shard_type: shard_type.to_owned(),
            });
        }
        if metric.is_none() && keys.iter().any(|k| k.metric != keys[0].metric) {
            return Err(Error::invalid(
                "metric",
                format!(
                    "shard type {app}/{shard_type} has several metrics ({} and {}); name the one to sum",
                    keys[0].metric,
                    keys.iter()
                        .find(|k| k.metric != keys[0].metric)
                        .map_or("", |k| &k.metric)
                ),
            ));
        }
        if keys.len() > self.limits.max_series {
            return Err(Error::invalid(
                "shard_type",
                format!(
                    "{} series, more than the limit of {} per request",
                    keys.len(),
                    self.limits.max_series
                ),
            ));
        }
        self.batcher.admit(keys.len())?;
        let parts = try_join_all(
            keys.into_iter()
                .map(|k| self.forecast_key(served, k, query, None, "")),
        )
        .await?;
        let newest = parts.iter().map(|a| a.last_observed).max().unwrap_or(0);
        let (parts, stale): (Vec<Answer>, Vec<Answer>) =
            parts.into_iter().partition(|a| a.last_observed == newest);
        let total = sum(&parts, app, shard_type, metric)?;
        Ok((total, parts, stale.into_iter().map(|a| a.key).collect()))
    }
}

/// An open stream's place among the streams; counted while it lives.
#[derive(Debug)]
pub(crate) struct OpenStream {
    _place: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// One piece of stream work in progress; counted while it lives.
struct Working(Gauge);

impl Working {
    fn start(g: &Gauge) -> Self {
        g.inc();
        Self(g.clone())
    }
}

impl Drop for Working {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How a stream's round of forecasts ended.
enum Round {
    /// Every key was looked at; `deferred` of them must be tried again.
    Done { deferred: usize },
    /// The stream is over: its client went away or it sent an error.
    Ended,
}

/// Whether a stream should retry a failed forecast later rather than end:
/// a full queue or a failed store read.
fn transient(e: &Error) -> bool {
    match e {
        Error::Overloaded { .. } => true,
        Error::Store(shardcast_store::Error::UnknownSeries { .. }) => false,
        Error::Store(_) => true,
        Error::Shared(inner) => transient(inner),
        _ => false,
    }
}

type Sent = Option<(Arc<GridTail>, u32)>;

impl State {
    /// Takes a place for a stream of `keys` series: refused with
    /// `RESOURCE_EXHAUSTED` beyond the configured keys per stream or when
    /// every stream place is taken.
    pub(crate) fn open_stream(&self, keys: usize) -> Result<OpenStream> {
        let max_keys = self.limits.max_stream_keys;
        if keys > max_keys {
            return Err(Error::Exhausted {
                what: "keys".into(),
                reason: format!(
                    "{keys} series in one stream, at most {max_keys}; split them over several streams"
                ),
            });
        }
        let place =
            Arc::clone(&self.streams)
                .try_acquire_owned()
                .map_err(|_| Error::Exhausted {
                    what: "streams".into(),
                    reason: format!(
                        "all {} stream places are taken; retry later",
                        self.limits.max_streams
                    ),
                })?;
        self.metrics.streams_open.inc();
        Ok(OpenStream {
            _place: place,
            open: self.metrics.streams_open.clone(),
        })
    }

    /// Serves one stream until its client goes away, it fails, or the
    /// server stops: a round of forecasts, then a wait for new data or a new
    /// model (or, after forecasts were put off, a retry). Both the round and
    /// the wait end the moment the client goes away, dropping the work in
    /// progress: queued forecasts are skipped, and store reads nobody else
    /// waits for are dropped.
    pub(crate) async fn stream(
        self: Arc<Self>,
        keys: Vec<SeriesKey>,
        horizon: u32,
        levels: Vec<f64>,
        tx: mpsc::Sender<Result<pb::Forecast, Status>>,
        open: OpenStream,
    ) {
        let _open = open;
        let mut changes = self.context.changes();
        let mut models = self.models.subscribe();
        let mut stopping = self.stopping.subscribe();
        // What each key's last forecast was made from: the history it read
        // and the model version. A new forecast goes out when either changes
        // (new, replaced or back-filled data, new events, a new model).
        let mut sent: Vec<Sent> = vec![None; keys.len()];
        let mut backoff = RETRY_FIRST;
        loop {
            let round = self.stream_round(&keys, horizon, &levels, &mut sent, &tx);
            let outcome = tokio::select! {
                () = tx.closed() => return,
                _ = stopping.wait_for(|s| *s) => None,
                r = round => Some(r),
            };
            let deferred = match outcome {
                Some(Round::Done { deferred }) => deferred,
                Some(Round::Ended) => return,
                None => {
                    let _ = tx
                        .send(Err(Status::unavailable("server is shutting down")))
                        .await;
                    return;
                }
            };
            let retry = async {
                if deferred > 0 {
                    tokio::time::sleep(backoff).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            let stop = tokio::select! {
                changed = changes.changed() => if changed.is_err() { return } else { false },
                () = tx.closed() => return,
                changed = models.changed() => if changed.is_err() { return } else { false },
                r = stopping.wait_for(|s| *s) => r.is_ok(),
                () = retry => false,
            };
            if stop {
                let _ = tx
                    .send(Err(Status::unavailable("server is shutting down")))
                    .await;
                return;
            }
            backoff = if deferred > 0 {
                (backoff * 2).min(RETRY_MAX)
            } else {
                RETRY_FIRST
            };
        }
    }

    /// One round of a stream: the history of every key (shared reads), and
    /// a forecast for each whose history or model changed since the last
    /// one sent, sent as it is ready. Forecasts that hit a full queue or a
    /// failing store are counted, logged and left for a retry.
    async fn stream_round(
        &self,
        keys: &[SeriesKey],
        horizon: u32,
        levels: &[f64],
        sent: &mut [Sent],
        tx: &mpsc::Sender<Result<pb::Forecast, Status>>,
    ) -> Round {
        let served = self.registry.current();
        let query = match self.query(&served, horizon, levels, "") {
            Ok(q) => q,
            Err(e) => {
                let _ = tx.send(Err(Status::from(e))).await;
                return Round::Ended;
            }
        };
        let last: Vec<Sent> = sent.to_vec();
        let mut pending = keys.iter().zip(last).enumerate();
        let mut work = FuturesUnordered::new();
        let mut deferred = 0;
        let mut first_cause = None;
        loop {
            while work.len() < STREAM_CONCURRENCY {
                let Some((i, (key, last))) = pending.next() else {
                    break;
                };
                work.push(self.stream_key(i, &served, &query, key, last));
            }
            let Some((i, out)) = work.next().await else {
                break;
            };
            let item = match out {
                Ok(None) => continue,
                Ok(Some(a)) => {
                    sent[i] = Some((Arc::clone(&a.tail), a.served.version));
                    Ok(a.to_pb())
                }
                Err(e) if transient(&e) => {
                    deferred += 1;
                    self.metrics.stream_deferred.inc();
                    first_cause.get_or_insert(e);
                    continue;
                }
                Err(e) => Err(Status::from(e)),
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return Round::Ended;
            }
        }
        if let Some(e) = first_cause {
            tracing::warn!(
                deferred,
                keys = keys.len(),
                error = %crate::error::chain(&e),
                "stream forecasts put off; retrying them"
            );
        }
        Round::Done { deferred }
    }

    /// Key `i` of a stream's round: its history, then a forecast unless
    /// the history and model are those of `last`, the forecast sent before
    /// (`Ok(None)`).
    async fn stream_key(
        &self,
        i: usize,
        served: &Arc<Served>,
        query: &Query,
        key: &SeriesKey,
        last: Sent,
    ) -> (usize, Result<Option<Answer>>) {
        let _working = Working::start(&self.metrics.stream_work);
        let tail = match self.history(served, key, None, "").await {
            Ok(t) => t,
            Err(e) => return (i, Err(e)),
        };
        let same = last
            .is_some_and(|(t, v)| v == served.version && (Arc::ptr_eq(&t, &tail) || *t == *tail));
        if same {
            return (i, Ok(None));
        }
        let answer = self
            .forecast_tail(served, key.clone(), query, tail, None, Queueing::Wait)
            .await;
        (i, answer.map(Some))
    }
}

/// The level-by-level sum ([`QuantileForecast::sum`]) of forecasts that
/// share their time axis, under the shard type's key.
fn sum(parts: &[Answer], app: &str, shard_type: &str, metric: Option<&str>) -> Result<Answer> {
    let newest = parts
        .iter()
        .max_by_key(|a| a.last_observed)
        .expect("at least one series");
    let forecast = QuantileForecast::sum(parts.iter().map(|a| &a.forecast))?;
    Ok(Answer {
        key: SeriesKey {
            app: app.to_owned(),
            shard_type: shard_type.to_owned(),
            metric: metric.unwrap_or("*").to_owned(),
            series: "*".to_owned(),
        },
        forecast,
        last_observed: newest.last_observed,
        served: Arc::clone(&newest.served),
        tail: Arc::clone(&newest.tail),
    })
}

/// The error of a forecast whose values are not finite or cross: an
/// overflow when the history holds values too large for the model's `f32`
/// arithmetic, else the model's fault.
fn bad_values(
    bad: &shardcast_core::Error,
    key: &SeriesKey,
    served: &Served,
    tail: &GridTail,
    given: Option<&str>,
) -> Error {
    let largest = tail.values.iter().fold(0f32, |m, v| m.max(v.abs()));
    if largest >= OVERFLOW_MAGNITUDE {
        return Error::Overflow {
            field: match given {
                Some(f) => format!("{f}context.values"),
                None => format!("series {key}"),
            },
            largest,
            from_request: given.is_some(),
        };
    }
    Error::Forecasting {
        key: key.to_string(),
        version: served.version,
        source: Box::new(Error::BadModelOutput {
            version: served.version,
            reason: format!("{bad}, from a history of values at most {largest:e} in magnitude"),
        }),
    }
}

/// A required key, validated.
fn required_key(key: Option<&pb::SeriesKey>, field: &str) -> Result<SeriesKey> {
    key_from_pb(key)
        .map_err(|e| Error::invalid(format!("{field}key"), e.to_string()))?
        .ok_or_else(|| Error::invalid(format!("{field}key"), "missing"))
}

/// A number for a message: as written when short, else in scientific
/// notation (`1e-300`, not three hundred digits).
fn number(v: f64) -> String {
    let plain = v.to_string();
    if plain.len() <= 16 {
        plain
    } else {
        format!("{v:e}")
    }
}

/// "in the next 1 h 30 min".
fn span(ms: i64) -> String {
    let min = ms / 60_000;
    match (min / 60, min % 60) {
        (0, m) => format!("{m} min"),
        (h, 0) => format!("{h} h"),
        (h, m) => format!("{h} h {m} min"),
    }
}

/// The gRPC service over a shared [`State`].
#[derive(Debug, Clone)]
pub struct ForecastApi {
    state: Arc<State>,
}

impl ForecastApi {
    /// A service over `state`.
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }
}

type ForecastStream = Pin<Box<dyn Stream<Item = Result<pb::Forecast, Status>> + Send>>;

#[tonic::async_trait]
impl ForecastService for ForecastApi {
    async fn forecast(
        &self,
        request: Request<pb::ForecastRequest>,
    ) -> Result<Response<pb::ForecastResponse>, Status> {
        let call = self.state.call("Forecast");
        let s = &self.state;
        let served = s.registry.current();
        let out = s
            .forecast_request(&served, request.get_ref(), "")
            .await
            .map(|a| pb::ForecastResponse {
                forecast: Some(a.to_pb()),
            });
        call.finish(out)
    }

    async fn forecast_shard_type(
        &self,
        request: Request<pb::ForecastShardTypeRequest>,
    ) -> Result<Response<pb::ForecastShardTypeResponse>, Status> {
        let call = self.state.call("ForecastShardType");
        let s = &self.state;
        let req = request.get_ref();
        let served = s.registry.current();
        let out = async {
            let query = s.query(&served, req.horizon, &req.quantiles, "")?;
            let metric = (!req.metric.is_empty()).then_some(req.metric.as_str());
            let (total, parts, stale) = s
                .forecast_shard_type(&served, &req.app, &req.shard_type, metric, &query)
                .await?;
            Ok(pb::ForecastShardTypeResponse {
                total: Some(total.to_pb()),
                series: if req.per_series {
                    parts.iter().map(Answer::to_pb).collect()
                } else {
                    Vec::new()
                },
                stale: stale.iter().map(key_to_pb).collect(),
            })
        }
        .await;
        call.finish(out)
    }

    async fn forecast_batch(
        &self,
        request: Request<pb::ForecastBatchRequest>,
    ) -> Result<Response<pb::ForecastBatchResponse>, Status> {
        let call = self.state.call("ForecastBatch");
        let s = &self.state;
        let reqs = &request.get_ref().requests;
        let served = s.registry.current();
        let out = async {
            if reqs.is_empty() {
                return Err(Error::invalid("requests", "empty batch"));
            }
            if reqs.len() > s.limits.max_series {
                return Err(Error::invalid(
                    "requests",
                    format!(
                        "{} requests, at most {} per batch",
                        reqs.len(),
                        s.limits.max_series
                    ),
                ));
            }
            s.batcher.admit(reqs.len())?;
            let fields: Vec<String> = (0..reqs.len()).map(|i| format!("requests[{i}].")).collect();
            let answers = try_join_all(
                reqs.iter()
                    .zip(&fields)
                    .map(|(r, f)| s.forecast_request(&served, r, f)),
            )
            .await?;
            Ok(pb::ForecastBatchResponse {
                forecasts: answers.iter().map(Answer::to_pb).collect(),
            })
        }
        .await;
        call.finish(out)
    }

    type StreamForecastsStream = ForecastStream;

    async fn stream_forecasts(
        &self,
        request: Request<pb::StreamForecastsRequest>,
    ) -> Result<Response<Self::StreamForecastsStream>, Status> {
        let call = self.state.call("StreamForecasts");
        let s = Arc::clone(&self.state);
        let req = request.into_inner();
        let checked = (|| {
            if req.keys.is_empty() {
                return Err(Error::invalid("keys", "no series to stream"));
            }
            let keys = req
                .keys
                .iter()
                .enumerate()
                .map(|(i, k)| required_key(Some(k), &format!("keys[{i}].")))
                .collect::<Result<Vec<_>>>()?;
            // Validate horizon and levels now, against the current model.
            s.query(&s.registry.current(), req.horizon, &req.quantiles, "")?;
            let open = s.open_stream(keys.len())?;
            Ok((keys, open))
        })();
        let (keys, open) = match checked {
            Ok(k) => k,
            Err(e) => return call.finish(Err(e)),
        };
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(Arc::clone(&s).stream(keys, req.horizon, req.quantiles, tx, open));
        call.finish(Ok(Box::pin(ReceiverStream::new(rx)) as ForecastStream))
    }

    async fn shard_demand(
        &self,
        request: Request<pb::ShardDemandRequest>,
    ) -> Result<Response<pb::ShardDemandResponse>, Status> {
        let call = self.state.call("ShardDemand");
        let s = &self.state;
        let req = request.get_ref();
        let served = s.registry.current();
        let out = async {
            let key = req
                .key
                .as_ref()
                .ok_or_else(|| Error::invalid("key", "missing"))?;
            if !(req.shard_capacity.is_finite() && req.shard_capacity > 0.0) {
                return Err(Error::invalid(
                    "shard_capacity",
                    format!("{} is not a positive number", number(req.shard_capacity)),
                ));
            }
            let h = served.model.horizon();
            if req.lookahead_steps as usize > h {
                return Err(Error::invalid(
                    "lookahead_steps",
                    format!("{} steps asked, the model forecasts at most {h}", req.lookahead_steps),
                ));
            }
            let query = s.query(&served, req.lookahead_steps, &[], "")?;
            let answer = if key.series.is_empty() {
                let metric = (!key.metric.is_empty()).then_some(key.metric.as_str());
                s.forecast_shard_type(&served, &key.app, &key.shard_type, metric, &query)
                    .await?
                    .0
            } else {
                let key = required_key(Some(key), "")?;
                s.forecast_key(&served, key, &query, None, "").await?
            };
            let d = shard_demand(
                &answer.forecast,
                req.shard_capacity,
                query.horizon,
                req.current_shards,
            )
            .map_err(|e| match e {
                shardcast_planner::Error::InvalidValue { value, reason, .. } => Error::invalid(
                    "shard_capacity",
                    format!("{} is invalid: {reason}", number(value)),
                ),
                e => Error::invalid("shard_capacity", e.to_string()),
            })?;
            let window = answer.forecast.step().millis() * d.steps as i64;
            let p80 = d.shards_at(0.8);
            let summary = if p80 > req.current_shards {
                format!(
                    "80% probability of needing {} more shards ({p80} in all) within the next {}; {:.0}% probability that the {} running are not enough",
                    p80 - req.current_shards,
                    span(window),
                    100.0 * d.probability_more(),
                    req.current_shards
                )
            } else {
                format!(
                    "the {} running shards cover the next {} with {:.0}% probability (80% level: {p80} needed)",
                    req.current_shards,
                    span(window),
                    100.0 * (1.0 - d.probability_more())
                )
            };
            Ok(pb::ShardDemandResponse {
                model: served.name.clone(),
                model_version: served.version,
                current_shards: req.current_shards,
                lookahead_steps: d.steps as u32,
                step_ms: answer.forecast.step().millis(),
                cdf: d
                    .cdf
                    .iter()
                    .map(|&(shards, probability)| pb::ShardProbability { shards, probability })
                    .collect(),
                probability_more: d.probability_more(),
                shards_p50: d.shards_at(0.5),
                shards_p80: p80,
                shards_p90: d.shards_at(0.9),
                shards_p95: d.shards_at(0.95),
                shards_p99: d.shards_at(0.99),
                summary,
            })
        }
        .await;
        call.finish(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_messages_stay_short() {
        assert_eq!(number(20.0), "20");
        assert_eq!(number(-1.5), "-1.5");
        assert_eq!(number(0.001), "0.001");
        assert_eq!(number(1e-300), "1e-300");
        assert_eq!(number(-1e300), "-1e300");
    }
}
