//! The input contract of an exported graph, and the one function that turns
//! `(series, origin)` windows into its input tensors.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use shardcast_model::forecaster::{Model, SeriesInput, SeriesScale};

/// Value of [`Contract::format`].
pub const CONTRACT_FORMAT: &str = "shardcast-onnx";
/// Version of the contract this build writes and reads.
pub const CONTRACT_VERSION: u32 = 1;
/// The key of the model's `metadata_props` entry holding the contract as JSON.
pub const METADATA_KEY: &str = "shardcast.contract";

/// Name of the raw history input.
pub const VALUES: &str = "values";
/// Name of the count of observed points in `values`.
pub const HISTORY_LEN: &str = "history_len";
/// Name of the forecast origin's timestamp input.
pub const ORIGIN_TS: &str = "origin_ts";
/// Name of the event indicator input.
pub const EVENTS: &str = "events";
/// Name of the series embedding row input.
pub const SERIES_ID: &str = "series_id";
/// Name of the shard-type embedding row input.
pub const SHARD_TYPE_ID: &str = "shard_type_id";
/// Name of the per-series scaler input.
pub const SERIES_SCALE: &str = "series_scale";
/// Name of the graph's one output.
pub const QUANTILES: &str = "quantiles";

/// The name of the batch dimension in shapes.
pub const BATCH: &str = "batch";

/// What an exported graph takes and returns, and the tables a client needs
/// to fill its inputs. Stored in the ONNX file's metadata under
/// [`METADATA_KEY`] and written beside it as `<file>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    /// Always [`CONTRACT_FORMAT`].
    pub format: String,
    /// Always [`CONTRACT_VERSION`] for files this build writes.
    pub format_version: u32,
    /// The ONNX opset of the default domain the graph uses.
    pub opset: i64,
    /// Grid step in ms.
    pub step_ms: i64,
    /// Points of history in `values` (`L`): `max(context + max lag, norm_len)`.
    pub window: usize,
    /// Context steps read by the recurrent encoder (`C`).
    pub context: usize,
    /// Steps forecast (`H`).
    pub horizon: usize,
    /// Seasonal period in steps (0: none), used to fill short histories.
    pub season: usize,
    /// Points the window's mean and scale are computed over.
    pub norm_len: usize,
    /// Lags (in steps) of the value read at every context and horizon step.
    pub lags: Vec<usize>,
    /// Quantile levels of the output's last axis, ascending.
    pub quantiles: Vec<f64>,
    /// Whether the graph takes `origin_ts` (calendar features).
    pub calendar: bool,
    /// Whether the graph takes `events`.
    pub events: bool,
    /// The graph's inputs, in order.
    pub inputs: Vec<TensorSpec>,
    /// The graph's outputs.
    pub outputs: Vec<TensorSpec>,
    /// The series the model was trained on, with their embedding rows and
    /// training-range scalers (row 0 is any unknown series).
    pub series: Vec<ContractSeries>,
    /// The shard types, with their embedding rows (row 0 is unknown).
    pub shard_types: Vec<ContractShardType>,
}

/// One input or output of the graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// Its name in the graph.
    pub name: String,
    /// `float32` or `int64`.
    pub dtype: String,
    /// Dimensions: numbers, or `"batch"`.
    pub shape: Vec<Dim>,
    /// What it holds.
    pub description: String,
}

/// One dimension of a [`TensorSpec`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// A size chosen at run time (only [`BATCH`]).
    Named(String),
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Named(s) => f.write_str(s),
        }
    }
}

/// A series of the model's table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractSeries {
    /// Its `series_id` (embedding row, from 1).
    pub row: usize,
    /// Its name (`app/shard_type/metric/series`).
    pub name: String,
    /// Its shard type.
    pub shard_type: String,
    /// Mean of its training range: `series_scale[:, 0]`.
    pub mean: f32,
    /// Mean absolute deviation of its training range: `series_scale[:, 1]`.
    pub deviation: f32,
}

/// A shard type of the model's table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractShardType {
    /// Its `shard_type_id` (embedding row, from 1).
    pub row: usize,
    /// Its name.
    pub name: String,
}

/// Named input tensors of one batch, in the contract's order, on the CPU.
#[derive(Debug, Clone)]
pub struct OnnxInputs {
    /// Windows in the batch.
    pub batch: usize,
    /// `(name, tensor)` pairs.
    pub tensors: Vec<(String, Tensor)>,
}

impl OnnxInputs {
    /// The tensor named `name`, if present.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
}

fn spec(name: &str, dtype: &str, shape: Vec<Dim>, description: &str) -> TensorSpec {
    TensorSpec {
        name: name.to_owned(),
        dtype: dtype.to_owned(),
        shape,
        description: description.to_owned(),
    }
}

impl Contract {
    /// The contract of `model`'s export.
    pub fn of(model: &Model) -> Self {
        let cfg = model.config();
        let window = model.window();
        let (c, h) = (cfg.context, cfg.horizon);
        let b = || Dim::Named(BATCH.to_owned());
        let mut inputs = vec![
            spec(
                VALUES,
                "float32",
                vec![b(), Dim::Fixed(window)],
                "the last `window` grid values before the forecast origin, oldest first; \
                 with a shorter history, right-aligned (the first window - history_len \
                 entries are ignored)",
            ),
            spec(
                HISTORY_LEN,
                "int64",
                vec![b()],
                "observed points at the end of `values`: min(points before the origin, window), \
                 at least 1; missing history is filled inside the graph from the same phase \
                 of the earliest observed season",
            ),
        ];
        if cfg.calendar {
            inputs.push(spec(
                ORIGIN_TS,
                "int64",
                vec![b()],
                "time of the first forecast point, ms since the Unix epoch (UTC); \
                 the calendar features of every step are computed from it",
            ));
        }
        if cfg.events {
            inputs.push(spec(
                EVENTS,
                "float32",
                vec![b(), Dim::Fixed(c + h)],
                "event indicator (0 or 1) of the `context` steps before the origin, \
                 then of the `horizon` forecast steps",
            ));
        }
        inputs.extend([
            spec(
                SERIES_ID,
                "int64",
                vec![b()],
                "the series' row in `series` (0: a series the model does not know)",
            ),
            spec(
                SHARD_TYPE_ID,
                "int64",
                vec![b()],
                "the shard type's row in `shard_types` (0: unknown)",
            ),
            spec(
                SERIES_SCALE,
                "float32",
                vec![b(), Dim::Fixed(2)],
                "(mean, mean absolute deviation) of the series' training range from \
                 `series`; for row 0, of the whole observed history",
            ),
        ]);
        let outputs = vec![spec(
            QUANTILES,
            "float32",
            vec![b(), Dim::Fixed(h), Dim::Fixed(cfg.quantiles.len())],
            "forecast quantiles in the series' units, ascending along the last axis \
             (levels in `quantiles`), calibrated",
        )];
        Self {
            format: CONTRACT_FORMAT.to_owned(),
            format_version: CONTRACT_VERSION,
            opset: super::OPSET,
            step_ms: model.step_ms(),
            window,
            context: c,
            horizon: h,
            season: cfg.season,
            norm_len: cfg.norm_len(),
            lags: cfg.lags.clone(),
            quantiles: cfg.quantiles.clone(),
            calendar: cfg.calendar,
            events: cfg.events,
            inputs,
            outputs,
            series: model
                .series()
                .iter()
                .enumerate()
                .map(|(i, s)| ContractSeries {
                    row: i + 1,
                    name: s.name.clone(),
                    shard_type: s.shard_type.clone(),
                    mean: s.mean,
                    deviation: s.deviation,
                })
                .collect(),
            shard_types: model
                .shard_types()
                .iter()
                .enumerate()
                .map(|(i, t)| ContractShardType {
                    row: i + 1,
                    name: t.clone(),
                })
                .collect(),
        }
    }

    /// Checks the fields against each other; `what` names the source in errors.
    pub(crate) fn validate(&self) -> std::result::Result<(), String> {
        if self.format != CONTRACT_FORMAT || self.format_version != CONTRACT_VERSION {
            return Err(format!(
                "contract format {} version {} is not supported (this build reads {CONTRACT_FORMAT} version {CONTRACT_VERSION})",
                self.format, self.format_version
            ));
        }
        let max_lag = self.lags.iter().copied().max().unwrap_or(0);
        if self.step_ms <= 0
            || self.context == 0
            || self.horizon == 0
            || self.window < self.context + max_lag
            || self.window < self.norm_len
            || self.quantiles.is_empty()
        {
            return Err(format!(
                "contract sizes are inconsistent: step_ms {}, window {}, context {}, horizon {}, norm_len {}, lags {:?}, {} quantiles",
                self.step_ms,
                self.window,
                self.context,
                self.horizon,
                self.norm_len,
                self.lags,
                self.quantiles.len()
            ));
        }
        for (i, s) in self.series.iter().enumerate() {
            if s.row != i + 1 {
                return Err(format!(
                    "series `{}` has row {}, expected {}",
                    s.name,
                    s.row,
                    i + 1
                ));
            }
        }
        for (i, s) in self.shard_types.iter().enumerate() {
            if s.row != i + 1 {
                return Err(format!(
                    "shard type `{}` has row {}, expected {}",
                    s.name,
                    s.row,
                    i + 1
                ));
            }
        }
        Ok(())
    }

    /// The `series_id` of series `name` (0 when unknown).
    pub fn series_row(&self, name: &str) -> usize {
        self.series
            .iter()
            .find(|s| s.name == name)
            .map_or(0, |s| s.row)
    }

    /// The `shard_type_id` of a shard type (0 when unknown).
    pub fn shard_type_row(&self, name: &str) -> usize {
        self.shard_types
            .iter()
            .find(|s| s.name == name)
            .map_or(0, |s| s.row)
    }

    /// The input tensors forecasting each `(series, origin)` window, exactly
    /// as [`Model::forecast_rows`] reads them: only `values[..origin]` and the
    /// events up to `origin + horizon` are used.
    pub fn inputs(&self, windows: &[(SeriesInput<'_>, usize)]) -> Result<OnnxInputs> {
        let (l, c, h) = (self.window, self.context, self.horizon);
        let n = windows.len();
        let mut values = vec![0f32; n * l];
        let mut history = Vec::with_capacity(n);
        let mut origin_ts = Vec::with_capacity(n);
        let mut events = Vec::with_capacity(n * (c + h));
        let mut series = Vec::with_capacity(n);
        let mut types = Vec::with_capacity(n);
        let mut scale = Vec::with_capacity(2 * n);
        for (w, (input, origin)) in windows.iter().enumerate() {
            let origin = *origin;
            if input.step != self.step_ms {
                return Err(Error::Invalid(format!(
                    "series on a {} ms grid, the model was trained on {} ms",
                    input.step, self.step_ms
                )));
            }
            if origin == 0 || origin > input.values.len() {
                return Err(Error::Invalid(format!(
                    "a forecast window at point {origin} needs 1 point of history and {} exist",
                    input.values.len().min(origin)
                )));
            }
            if input.series > self.series.len() || input.shard_type > self.shard_types.len() {
                return Err(Error::Invalid(
                    "series or shard type row out of range".into(),
                ));
            }
            let k = origin.min(l);
            values[w * l + l - k..(w + 1) * l].copy_from_slice(&input.values[origin - k..origin]);
            history.push(k as i64);
            let ts = i64::try_from(origin)
                .ok()
                .and_then(|o| input.step.checked_mul(o))
                .and_then(|d| input.start.checked_add(d))
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "the time of point {origin} overflows (start {} ms, step {} ms)",
                        input.start, input.step
                    ))
                })?;
            origin_ts.push(ts);
            for i in origin as isize - c as isize..(origin + h) as isize {
                let e = usize::try_from(i)
                    .ok()
                    .and_then(|i| input.events.and_then(|e| e.get(i).copied()))
                    .unwrap_or(0.0);
                events.push(e);
            }
            series.push(input.series as i64);
            types.push(input.shard_type as i64);
            let sc = match input.series {
                0 => SeriesScale::of(&input.values[..origin]),
                i => SeriesScale {
                    mean: self.series[i - 1].mean,
                    deviation: self.series[i - 1].deviation,
                },
            };
            scale.extend([sc.mean, sc.deviation]);
        }
        let dev = Device::Cpu;
        let mut tensors = vec![
            (VALUES.to_owned(), Tensor::from_vec(values, (n, l), &dev)?),
            (HISTORY_LEN.to_owned(), Tensor::from_vec(history, n, &dev)?),
        ];
        if self.calendar {
            tensors.push((ORIGIN_TS.to_owned(), Tensor::from_vec(origin_ts, n, &dev)?));
        }
        if self.events {
            tensors.push((
                EVENTS.to_owned(),
                Tensor::from_vec(events, (n, c + h), &dev)?,
            ));
        }
        tensors.extend([
            (SERIES_ID.to_owned(), Tensor::from_vec(series, n, &dev)?),
            (SHARD_TYPE_ID.to_owned(), Tensor::from_vec(types, n, &dev)?),
            (
                SERIES_SCALE.to_owned(),
                Tensor::from_vec(scale, (n, 2), &dev)?,
            ),
        ]);
        Ok(OnnxInputs { batch: n, tensors })
    }
}
