//! `shardcast.model.v1.ModelService`: list, reload and roll back the served
//! model's versions.

use std::sync::Arc;

use shardcast_model::versions::versions;
use shardcast_proto::model::v1 as pb;
use shardcast_proto::model::v1::model_service_server::ModelService;
use tonic::{Request, Response, Status};

use crate::State;
use crate::error::Result;
use crate::registry::{Served, validation_loss};

/// The gRPC service over a shared [`State`].
#[derive(Debug, Clone)]
pub struct ModelApi {
    state: Arc<State>,
}

impl ModelApi {
    /// A service over `state`.
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }
}

fn describe(s: &Served, serving: bool) -> pb::ModelVersion {
    pb::ModelVersion {
        name: s.name.clone(),
        version: s.version,
        serving,
        cell: s.model.kind(),
        horizon: s.model.horizon() as u32,
        step_ms: s.model.step_ms(),
        series: s.model.series_count() as u32,
        validation_loss: s.validation_loss,
        refused_reason: String::new(),
    }
}

/// A version on disk described from its `config.json` without loading the
/// weights; `None` when the file does not parse.
fn describe_on_disk(name: &str, version: u32, dir: &std::path::Path) -> Option<pb::ModelVersion> {
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let c: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(pb::ModelVersion {
        name: name.to_owned(),
        version,
        serving: false,
        cell: c.pointer("/model/cell")?.as_str()?.to_owned(),
        horizon: c.pointer("/model/horizon")?.as_u64()? as u32,
        step_ms: c.get("step_ms")?.as_i64()?,
        series: c.get("series")?.as_array()?.len() as u32,
        validation_loss: validation_loss(dir),
        refused_reason: String::new(),
    })
}

impl State {
    fn status(&self) -> pb::ModelStatus {
        pb::ModelStatus {
            serving: Some(describe(&self.registry.current(), true)),
            refused: self.registry.refused(),
        }
    }

    /// Runs blocking registry work off the async threads, then publishes
    /// the served version.
    async fn registry_op<T: Send + 'static>(
        self: &Arc<Self>,
        op: impl FnOnce(&State) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let state = Arc::clone(self);
        let out = crate::blocking("model registry task", move || op(&state)).await?;
        self.publish_model();
        Ok(out)
    }
}

#[tonic::async_trait]
impl ModelService for ModelApi {
    async fn list_models(
        &self,
        _request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let call = self.state.call("ListModels");
        let out = self
            .state
            .registry_op(|s| {
                let current = s.registry.current();
                let dir = s.registry.dir();
                Ok(versions(dir)
                    .into_iter()
                    .filter_map(|v| {
                        if v == current.version {
                            return Some(describe(&current, true));
                        }
                        let on_disk =
                            describe_on_disk(s.registry.name(), v, &dir.join(v.to_string()));
                        // A refused version is listed as refused, even when
                        // its config does not parse.
                        match s.registry.refusal(v) {
                            Some(reason) => Some(pb::ModelVersion {
                                refused_reason: reason,
                                ..on_disk.unwrap_or_else(|| pb::ModelVersion {
                                    name: s.registry.name().to_owned(),
                                    version: v,
                                    ..Default::default()
                                })
                            }),
                            None => on_disk,
                        }
                    })
                    .collect())
            })
            .await
            .map(|versions| pb::ListModelsResponse { versions });
        call.finish(out)
    }

    async fn reload(
        &self,
        _request: Request<pb::ReloadRequest>,
    ) -> Result<Response<pb::ModelStatus>, Status> {
        let call = self.state.call("Reload");
        let out = self
            .state
            .registry_op(|s| {
                s.registry.reload();
                Ok(s.status())
            })
            .await;
        call.finish(out)
    }

    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::ModelStatus>, Status> {
        let call = self.state.call("Rollback");
        let version = match request.get_ref().version {
            0 => None,
            v => Some(v),
        };
        let out = self
            .state
            .registry_op(move |s| {
                s.registry.rollback(version)?;
                Ok(s.status())
            })
            .await;
        call.finish(out)
    }
}
