//! KEDA's external scaler API over the daemon's latest shard counts.
//!
//! A `ScaledObject` names its shard type in the trigger's metadata
//! (`shardType`, and optionally `app`). The metric spec asks for
//! `keda_target` per replica and the metric's value is
//! `shards × keda_target`, so the HPA's `ceil(value / target)` asks for the
//! planned number of shards (the HPA's own tolerance and behaviour still
//! apply; see the README). Before the first round, and always in dry-run,
//! there is no count to publish: `IsActive` and `GetMetrics` answer
//! `UNAVAILABLE`, which makes KEDA keep the current replica count.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use shardcast_proto::externalscaler::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec,
    MetricValue, ScaledObjectRef,
    external_scaler_server::{ExternalScaler, ExternalScalerServer},
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// What KEDA should run for one shard type.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The application the shard type belongs to.
    pub app: String,
    /// Shards to run; `None` while there is nothing to publish (before the
    /// first round, or in dry-run), with the reason.
    pub shards: Result<u32, &'static str>,
    /// Metric value per replica.
    pub per_replica: f64,
}

/// The counts the scaler serves, keyed by shard type; replaced whole after
/// every planning round.
pub type Targets = Arc<BTreeMap<String, Target>>;

/// The scaler service, reading the daemon's latest targets.
#[derive(Debug, Clone)]
pub struct KedaScaler {
    targets: watch::Receiver<Targets>,
}

impl KedaScaler {
    /// A scaler that serves whatever `targets` holds at each call.
    pub fn new(targets: watch::Receiver<Targets>) -> Self {
        Self { targets }
    }

    /// The tonic service.
    pub fn into_service(self) -> ExternalScalerServer<Self> {
        ExternalScalerServer::new(self)
    }

    /// The count to publish for `r`, or UNAVAILABLE when there is none.
    fn shards(&self, r: &ScaledObjectRef) -> Result<(String, Target, u32), Status> {
        let (name, t) = self.lookup(r)?;
        match t.shards {
            Ok(n) => Ok((name, t, n)),
            Err(why) => Err(Status::unavailable(format!(
                "shard type {name:?}: no count to publish ({why})"
            ))),
        }
    }

    fn lookup(&self, r: &ScaledObjectRef) -> Result<(String, Target), Status> {
        let which = format!("scaled object {}/{}", r.namespace, r.name);
        let name = r.scaler_metadata.get("shardType").ok_or_else(|| {
            Status::invalid_argument(format!(
                "{which}: scalerMetadata.shardType is required (the shard type to scale)"
            ))
        })?;
        let targets = self.targets.borrow().clone();
        let target = targets.get(name).ok_or_else(|| {
            let known: Vec<&str> = targets.keys().map(String::as_str).collect();
            Status::not_found(format!(
                "{which}: the daemon does not plan shard type {name:?} (it plans {known:?})"
            ))
        })?;
        if let Some(app) = r.scaler_metadata.get("app")
            && *app != target.app
        {
            return Err(Status::not_found(format!(
                "{which}: shard type {name:?} belongs to app {:?}, not {app:?}",
                target.app
            )));
        }
        Ok((name.clone(), target.clone()))
    }
}

/// The integer target of older KEDA releases: the target rounded, at least 1.
fn target_size(per_replica: f64) -> i64 {
    (per_replica.round() as i64).max(1)
}

/// The metric's name for a shard type: `shardcast-` and the name in lower
/// case with anything but letters, digits and `-` as `-`.
pub fn metric_name(shard_type: &str) -> String {
    let mut s = String::from("shardcast-");
    s.extend(shard_type.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '-' {
            c.to_ascii_lowercase()
        } else {
            '-'
        }
    }));
    s
}

type ActiveStream = Pin<Box<dyn Stream<Item = Result<IsActiveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalScaler for KedaScaler {
    async fn is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<IsActiveResponse>, Status> {
        let (_, _, n) = self.shards(request.get_ref())?;
        Ok(Response::new(IsActiveResponse { result: n > 0 }))
    }

    type StreamIsActiveStream = ActiveStream;

    async fn stream_is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        let r = request.into_inner();
        self.lookup(&r)?;
        let scaler = self.clone();
        let mut rx = self.targets.clone();
        let stream = async_stream(move |tx| async move {
            let mut last = None;
            loop {
                // Nothing to publish yet (or dry run): wait for a count; a
                // shard type that went away ends the stream.
                match scaler.shards(&r).map(|(_, _, n)| n > 0) {
                    Ok(active) if last != Some(active) => {
                        last = Some(active);
                        let answer = Ok(IsActiveResponse { result: active });
                        if tx.send(answer).await.is_err() {
                            return;
                        }
                    }
                    Err(status) if status.code() != tonic::Code::Unavailable => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    _ => {}
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    changed = rx.changed() => if changed.is_err() { return },
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn get_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        let (name, t) = self.lookup(request.get_ref())?;
        Ok(Response::new(GetMetricSpecResponse {
            metric_specs: vec![MetricSpec {
                metric_name: metric_name(&name),
                target_size: target_size(t.per_replica),
                target_size_float: t.per_replica,
            }],
        }))
    }

    async fn get_metrics(
        &self,
        request: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        let r = request.into_inner();
        let object = r
            .scaled_object_ref
            .ok_or_else(|| Status::invalid_argument("scaledObjectRef is required"))?;
        let (name, t, n) = self.shards(&object)?;
        let value = f64::from(n) * t.per_replica;
        // Older KEDA reads the integer fields: shards × the integer target
        // keeps their ratio exact whatever the fractional target.
        let integer = i64::from(n) * target_size(t.per_replica);
        Ok(Response::new(GetMetricsResponse {
            metric_values: vec![MetricValue {
                metric_name: if r.metric_name.is_empty() {
                    metric_name(&name)
                } else {
                    r.metric_name
                },
                metric_value: integer,
                metric_value_float: value,
            }],
        }))
    }
}

/// A stream fed by a task: `f` gets the sending half of a small channel.
fn async_stream<F, Fut>(f: F) -> ActiveStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<IsActiveResponse, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
