//! Saving and loading a model directory: `config.json`, `model.safetensors`,
//! `metrics.json`. A directory is written aside and renamed into place, so a
//! reader sees a whole model or none.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::config::{ModelConfig, TrainConfig};
use super::{Calibration, Hybrid, Model, Reversion, SeriesMeta};
use crate::error::{Error, Result};

/// Version of the directory format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// The file of a model directory that holds its configuration.
pub const CONFIG_FILE: &str = "config.json";
const WEIGHTS: &str = "model.safetensors";
const METRICS: &str = "metrics.json";

/// Contents of `config.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ArtifactConfig {
    format_version: u32,
    model: ModelConfig,
    train: TrainConfig,
    step_ms: i64,
    features: Vec<String>,
    series: Vec<SeriesMeta>,
    shard_types: Vec<String>,
    calibration: Calibration,
    /// The statistical half of the forecast (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hybrid: Option<Hybrid>,
    /// The reversion after shock days (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reversion: Option<Reversion>,
    /// First and last training timestamp over all series (ms).
    training_range: [i64; 2],
}

fn artifact_err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Artifact {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

impl Model {
    /// Writes the model to `dir` (which must not exist yet) with `metrics`
    /// as `metrics.json`.
    pub fn save(&self, dir: &Path, metrics: &serde_json::Value) -> Result<()> {
        if dir.exists() {
            return Err(artifact_err(dir, "already exists; pick a new version"));
        }
        let range = [
            self.series.iter().map(|s| s.first_ts).min().unwrap_or(0),
            self.series.iter().map(|s| s.last_ts).max().unwrap_or(0),
        ];
        let cfg = ArtifactConfig {
            format_version: FORMAT_VERSION,
            model: self.config.clone(),
            train: self.train.clone(),
            step_ms: self.step_ms,
            features: self.config.feature_names(),
            series: self.series.clone(),
            shard_types: self.shard_types.clone(),
            calibration: self.calibration,
            hybrid: self.hybrid.clone(),
            reversion: self.reversion,
            training_range: range,
        };
        // The directory appears whole (config, weights, metrics) or not at
        // all, so the server never loads a half-written version.
        shardcast_fs::write_dir(
            dir,
            |tmp| {
                let json = serde_json::to_vec_pretty(&cfg).map_err(|e| artifact_err(tmp, e))?;
                std::fs::write(tmp.join(CONFIG_FILE), json).map_err(|e| artifact_err(tmp, e))?;
                self.varmap.save(tmp.join(WEIGHTS))?;
                let m = serde_json::to_vec_pretty(metrics).map_err(|e| artifact_err(tmp, e))?;
                std::fs::write(tmp.join(METRICS), m).map_err(|e| artifact_err(tmp, e))
            },
            artifact_err,
        )
    }

    /// Loads a model directory written by [`Model::save`], refusing unknown
    /// format versions, unknown fields and weights that do not match the
    /// configuration.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| artifact_err(&path, e))?;
        let raw: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| artifact_err(&path, e))?;
        match raw
            .get("format_version")
            .and_then(serde_json::Value::as_u64)
        {
            Some(v) if v == u64::from(FORMAT_VERSION) => {}
            Some(v) => {
                return Err(artifact_err(
                    &path,
                    format!(
                        "format_version {v} is not supported (this build reads {FORMAT_VERSION})"
                    ),
                ));
            }
            None => return Err(artifact_err(&path, "format_version is missing")),
        }
        let cfg: ArtifactConfig =
            serde_json::from_value(raw).map_err(|e| artifact_err(&path, e))?;
        if cfg.step_ms <= 0 {
            return Err(artifact_err(&path, "step_ms must be positive"));
        }
        cfg.model.validate().map_err(|e| artifact_err(&path, e))?;
        let mut model = Self::assemble(
            cfg.model,
            cfg.train,
            cfg.step_ms,
            cfg.series,
            cfg.shard_types,
        )
        .map_err(|e| artifact_err(&path, e))?;
        if !(cfg.calibration.lower > 0.0 && cfg.calibration.upper > 0.0) {
            return Err(artifact_err(&path, "calibration factors must be positive"));
        }
        model.calibration = cfg.calibration;
        if let Some(h) = &cfg.hybrid {
            h.validate(&model.config)
                .map_err(|e| artifact_err(&path, e))?;
        }
        model.hybrid = cfg.hybrid;
        if let Some(r) = &cfg.reversion {
            r.validate(&model.config)
                .map_err(|e| artifact_err(&path, e))?;
        }
        model.reversion = cfg.reversion;
        let weights = dir.join(WEIGHTS);
        model
            .varmap
            .load(&weights)
            .map_err(|e| artifact_err(&weights, format!("{e}")))?;
        Ok(model)
    }

    /// The `metrics.json` of a model directory.
    pub fn load_metrics(dir: &Path) -> Result<serde_json::Value> {
        let path = dir.join(METRICS);
        let text = std::fs::read_to_string(&path).map_err(|e| artifact_err(&path, e))?;
        serde_json::from_str(&text).map_err(|e| artifact_err(&path, e))
    }
}
