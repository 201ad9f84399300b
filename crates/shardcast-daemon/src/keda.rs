//! KEDA's external scaler API over the daemon's latest shard counts.
//!
//! A `ScaledObject` names its shard type in the trigger's metadata
//! (`shardType`, and optionally `app`). The metric spec asks for
//! `keda_target` per replica and the metric's value is
//! `shards × keda_target`, so the HPA's `ceil(value / target)` runs exactly
//! the planned number of shards. In dry-run the scaler reports the shards
//! running now, so KEDA changes nothing.

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
    /// Shards to run.
    pub shards: u32,
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
        let (_, t) = self.lookup(request.get_ref())?;
        Ok(Response::new(IsActiveResponse {
            result: t.shards > 0,
        }))
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
                let now = scaler.lookup(&r).map(|(_, t)| t.shards > 0);
                if now.as_ref().ok() != last.as_ref() {
                    let stop = now.is_err();
                    last = now.as_ref().ok().copied();
                    if tx
                        .send(now.map(|result| IsActiveResponse { result }))
                        .await
                        .is_err()
                        || stop
                    {
                        return;
                    }
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
                target_size: (t.per_replica.round() as i64).max(1),
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
        let (name, t) = self.lookup(&object)?;
        let value = f64::from(t.shards) * t.per_replica;
        Ok(Response::new(GetMetricsResponse {
            metric_values: vec![MetricValue {
                metric_name: if r.metric_name.is_empty() {
                    metric_name(&name)
                } else {
                    r.metric_name
                },
                metric_value: value.round() as i64,
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
