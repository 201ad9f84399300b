//! The model versions a server can serve, and which one it serves.
//!
//! Versions live in `<models_dir>/<name>/<version>/` as `shardcast train`
//! writes them: each directory appears complete (written aside, then
//! renamed), so a version that is visible can be loaded. The registry
//! serves the newest version that loads; [`ModelRegistry::poll`] picks up a
//! newer one without a restart, and a version that fails to load (corrupt,
//! incompatible) is remembered as refused while the current one keeps
//! serving. A refused version is tried again once its files change (names,
//! sizes or modification times), so a version copied in slowly instead of
//! renamed into place is served when the copy is complete.
//! [`ModelRegistry::rollback`] serves an older version and pins it until
//! [`ModelRegistry::reload`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use shardcast_core::{ForecastSpec, Forecaster, GridStep, QuantileForecast, Timestamp, Window};
use shardcast_model::forecaster::Model;
use shardcast_model::versions::versions;
use shardcast_onnx::OnnxModel;

use crate::error::{Error, Result};

/// Which artifact of a model version runs the forecasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModelFormat {
    /// `model.safetensors` with `config.json`, on Candle.
    #[default]
    Candle,
    /// `model.onnx` (from `shardcast export-onnx`), loaded and run by
    /// `shardcast-onnx`.
    Onnx,
}

impl std::str::FromStr for ModelFormat {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "candle" => Ok(Self::Candle),
            "onnx" => Ok(Self::Onnx),
            other => Err(format!(
                "unknown model format `{other}`, expected candle or onnx"
            )),
        }
    }
}

impl ModelFormat {
    /// The file a version directory must hold for this format.
    pub fn file(self) -> &'static str {
        match self {
            Self::Candle => "model.safetensors",
            Self::Onnx => "model.onnx",
        }
    }
}

/// A loaded model, whichever its format: what the server asks of it.
#[derive(Debug)]
pub enum Engine {
    /// A Candle model.
    Candle(Model),
    /// An ONNX graph and its input contract.
    Onnx(OnnxModel),
}

impl Engine {
    /// Steps forecast.
    pub fn horizon(&self) -> usize {
        match self {
            Self::Candle(m) => m.config().horizon,
            Self::Onnx(m) => m.contract().horizon,
        }
    }

    /// Grid spacing (ms).
    pub fn step_ms(&self) -> i64 {
        match self {
            Self::Candle(m) => m.step_ms(),
            Self::Onnx(m) => m.contract().step_ms,
        }
    }

    /// Points of history one forecast reads.
    pub fn history_points(&self) -> usize {
        match self {
            Self::Candle(m) => m.window().max(1),
            Self::Onnx(m) => m.contract().window.max(1),
        }
    }

    /// Series the model was trained on.
    pub fn series_count(&self) -> usize {
        match self {
            Self::Candle(m) => m.series().len(),
            Self::Onnx(m) => m.contract().series.len(),
        }
    }

    /// A short description: the cell (`gru`, `lstm`) or `onnx`.
    pub fn kind(&self) -> String {
        match self {
            Self::Candle(m) => format!("{:?}", m.config().cell).to_lowercase(),
            Self::Onnx(_) => "onnx".into(),
        }
    }
}

impl Forecaster for Engine {
    type Error = Error;

    fn spec(&self) -> ForecastSpec {
        match self {
            Self::Candle(m) => m.spec(),
            Self::Onnx(m) => m.spec(),
        }
    }

    fn forecast_batch(
        &self,
        windows: &[Window<'_>],
    ) -> Result<Vec<shardcast_core::Result<QuantileForecast>>> {
        Ok(match self {
            Self::Candle(m) => m.forecast_batch(windows)?,
            Self::Onnx(m) => m.forecast_batch(windows)?,
        })
    }
}

/// A loaded model version.
#[derive(Debug)]
pub struct Served {
    /// The model's name (its directory under the models directory).
    pub name: String,
    /// Its version number.
    pub version: u32,
    /// Its directory.
    pub dir: PathBuf,
    /// The model.
    pub model: Engine,
    /// Validation loss of the best member, from `metrics.json`, if recorded.
    pub validation_loss: Option<f64>,
}

impl Served {
    /// Loads version `version` of `name` from `dir` in `format`.
    pub fn load(name: &str, version: u32, dir: &Path, format: ModelFormat) -> Result<Self> {
        let unavailable = |e: &dyn std::error::Error| Error::ModelUnavailable {
            name: name.to_owned(),
            version,
            reason: crate::error::chain(e),
        };
        let model = match format {
            ModelFormat::Candle => Engine::Candle(Model::load(dir).map_err(|e| unavailable(&e))?),
            ModelFormat::Onnx => Engine::Onnx(
                OnnxModel::load(&dir.join(format.file())).map_err(|e| unavailable(&e))?,
            ),
        };
        probe(&model).map_err(|reason| Error::ModelUnavailable {
            name: name.to_owned(),
            version,
            reason,
        })?;
        let validation_loss = validation_loss(dir);
        Ok(Self {
            name: name.to_owned(),
            version,
            dir: dir.to_owned(),
            model,
            validation_loss,
        })
    }
}

/// Runs one synthetic forecast: a model that loads but cannot forecast, or
/// answers with the wrong shape or non-finite values, is refused.
fn probe(model: &Engine) -> std::result::Result<(), String> {
    let n = model.history_points();
    let values: Vec<f32> = (0..n).map(|i| 1.0 + (i % 7) as f32).collect();
    let events = vec![0f32; n + model.horizon()];
    let step = GridStep::from_millis(model.step_ms()).map_err(|e| e.to_string())?;
    let window = Window {
        series: "",
        shard_type: "",
        start: Timestamp(0),
        step,
        history: &values,
        events: Some(&events),
    };
    // The contract checks the shape, finiteness and order of the answer.
    let forecast = model
        .forecast(&window)
        .map_err(|e| format!("a test forecast failed: {}", crate::error::chain(&e)))?;
    if forecast.horizon() != model.horizon() {
        return Err(format!(
            "a test forecast gave {} steps, expected {}",
            forecast.horizon(),
            model.horizon()
        ));
    }
    Ok(())
}

/// The best validation loss over a version's members, from its
/// `metrics.json`, when recorded.
pub fn validation_loss(dir: &Path) -> Option<f64> {
    Model::load_metrics(dir).ok().and_then(|m| {
        m.pointer("/fit/members")?
            .as_array()?
            .iter()
            .filter_map(|x| x.get("best_val_loss")?.as_f64())
            .reduce(f64::min)
    })
}

/// The files of a version directory as name, size and modification time,
/// sorted: when it differs from the one taken at a refusal, the version is
/// tried again.
type Fingerprint = Vec<(String, u64, Option<SystemTime>)>;

fn fingerprint(dir: &Path) -> Fingerprint {
    let mut files: Fingerprint = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            let name = e.file_name().to_string_lossy().into_owned();
            Some((name, meta.len(), meta.modified().ok()))
        })
        .collect();
    files.sort();
    files
}

/// Why a version was refused, and what its files looked like just before.
#[derive(Debug)]
struct Refusal {
    reason: String,
    files: Fingerprint,
}

#[derive(Debug, Default)]
struct History {
    /// Versions served before the current one, oldest first.
    previous: Vec<u32>,
    /// Set by a rollback: do not follow newer versions until a reload.
    pinned: bool,
    /// Versions that failed to load.
    refused: BTreeMap<u32, Refusal>,
}

/// The served model of one name, swappable while requests run.
#[derive(Debug)]
pub struct ModelRegistry {
    name: String,
    dir: PathBuf,
    format: ModelFormat,
    current: RwLock<Arc<Served>>,
    history: Mutex<History>,
}

impl ModelRegistry {
    /// Opens `<models_dir>/<name>` and loads its newest loadable version.
    pub fn open(models_dir: &Path, name: &str, format: ModelFormat) -> Result<Self> {
        let dir = models_dir.join(name);
        let mut history = History::default();
        let mut served = None;
        for v in versions(&dir).into_iter().rev() {
            let vdir = dir.join(v.to_string());
            let files = fingerprint(&vdir);
            match Served::load(name, v, &vdir, format) {
                Ok(s) => {
                    served = Some(s);
                    break;
                }
                Err(e) => {
                    tracing::warn!(model = name, version = v, error = %e, "refusing model version");
                    let reason = e.to_string();
                    history.refused.insert(v, Refusal { reason, files });
                }
            }
        }
        let Some(served) = served else {
            let reason = if history.refused.is_empty() {
                format!("no version directories under {}", dir.display())
            } else {
                let all: Vec<String> = history
                    .refused
                    .iter()
                    .map(|(v, r)| format!("version {v}: {}", r.reason))
                    .collect();
                format!("every version was refused: {}", all.join("; "))
            };
            return Err(Error::NoModel { dir, reason });
        };
        tracing::info!(model = name, version = served.version, "serving model");
        Ok(Self {
            name: name.to_owned(),
            dir,
            format,
            current: RwLock::new(Arc::new(served)),
            history: Mutex::new(history),
        })
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The directory holding the versions.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The version being served. Requests hold the `Arc` for their whole
    /// life, so a swap never changes the model under a running request.
    pub fn current(&self) -> Arc<Served> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Versions refused since the last reload, with the reason.
    pub fn refused(&self) -> Vec<String> {
        self.lock()
            .refused
            .iter()
            .map(|(v, r)| format!("version {v}: {}", r.reason))
            .collect()
    }

    /// Why `version` was refused, if it was (and has not changed since).
    pub fn refusal(&self, version: u32) -> Option<String> {
        self.lock().refused.get(&version).map(|r| r.reason.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves `served`; `remember` pushes the outgoing version on the
    /// rollback stack (not done when rolling back).
    fn swap(&self, served: Served, history: &mut History, remember: bool) {
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        tracing::info!(model = %self.name, from = cur.version, to = served.version, "switching model version");
        if remember {
            history.previous.push(cur.version);
        }
        *cur = Arc::new(served);
    }

    /// Serves the newest version newer than the current one that loads,
    /// unless pinned by a rollback. A version refused before is tried again
    /// only when its files changed since. Returns the version switched to.
    /// Blocking (reads files); call it off the async threads.
    pub fn poll(&self) -> Option<u32> {
        let mut history = self.lock();
        if history.pinned {
            return None;
        }
        let current = self.current().version;
        for v in versions(&self.dir).into_iter().rev() {
            if v <= current {
                break;
            }
            let dir = self.dir.join(v.to_string());
            // A version without this format's file yet (an ONNX export still
            // to come) is passed over, not refused.
            if !dir.join(self.format.file()).exists() {
                continue;
            }
            // Taken before loading: files that change during the load are
            // seen as changed on the next poll.
            let files = fingerprint(&dir);
            if let Some(r) = history.refused.get(&v) {
                if r.files == files {
                    continue;
                }
                tracing::info!(model = %self.name, version = v, "a refused model version changed; trying it again");
                history.refused.remove(&v);
            }
            match Served::load(&self.name, v, &dir, self.format) {
                Ok(s) => {
                    self.swap(s, &mut history, true);
                    return Some(v);
                }
                Err(e) => {
                    tracing::warn!(model = %self.name, version = v, error = %e, "refusing model version; the current one keeps serving");
                    let reason = e.to_string();
                    history.refused.insert(v, Refusal { reason, files });
                }
            }
        }
        None
    }

    /// Forgets refusals and any rollback pin, then [`poll`](Self::poll)s.
    pub fn reload(&self) -> Arc<Served> {
        {
            let mut history = self.lock();
            history.pinned = false;
            history.refused.clear();
        }
        self.poll();
        self.current()
    }

    /// Serves `version` (or, for `None`, the version served before the
    /// current one) and pins it. The current version keeps serving when the
    /// target cannot be loaded.
    pub fn rollback(&self, version: Option<u32>) -> Result<Arc<Served>> {
        let mut history = self.lock();
        let current = self.current().version;
        let target = match version {
            Some(v) => v,
            None => {
                // The rollback stack: the version served before, then the
                // one before that, never forward again.
                while history.previous.last() == Some(&current) {
                    history.previous.pop();
                }
                *history
                    .previous
                    .last()
                    .ok_or_else(|| Error::ModelUnavailable {
                        name: self.name.clone(),
                        version: 0,
                        reason: "no version was served before the current one".into(),
                    })?
            }
        };
        if !versions(&self.dir).contains(&target) {
            return Err(Error::UnknownVersion {
                name: self.name.clone(),
                version: target,
            });
        }
        if target != current {
            let served = Served::load(
                &self.name,
                target,
                &self.dir.join(target.to_string()),
                self.format,
            )?;
            if version.is_none() {
                history.previous.pop();
            }
            self.swap(served, &mut history, version.is_some());
        }
        history.pinned = true;
        drop(history);
        Ok(self.current())
    }
}

#[cfg(test)]
mod tests;
