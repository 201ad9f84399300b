//! The global probabilistic forecaster: one network (or a seed ensemble)
//! over many series, emitting ordered quantiles for every horizon step.
//!
//! Inputs per context step are the window-normalised value, its seasonal
//! lags, calendar features and an event indicator; per window, its level and
//! scale relative to the series' training range and learned embeddings of
//! the series and its shard type; per horizon step, the known features
//! (lags, calendar, events). See [`features`] for the normalisation and
//! [`network`] for the architecture and why quantiles cannot cross.
//! After training come the statistical half of the forecast ([`Hybrid`]),
//! the calibration and the reversion after shock days ([`Reversion`]).
//!
//! A model is saved as a directory: `config.json` (format version, shapes,
//! features, series table with scalers, training range and settings),
//! `model.safetensors` and `metrics.json`.

mod artifact;
mod baseline;
mod config;
mod contract;
mod features;
mod hybrid;
mod network;
mod reversion;
mod settings;
mod statistical;
mod train;

use std::collections::HashMap;

use candle_core::Device;
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

pub use artifact::{CONFIG_FILE, FORMAT_VERSION};
pub use baseline::weights as baseline_weights;
pub use baseline::{Baseline, default_baselines};
pub use config::{
    CellKind, ComputeDevice, DataShape, ModelConfig, SMALL_DATA_HIDDEN, SMALL_DATA_MEMBERS,
    SMALL_DATA_POINTS, TrainConfig,
};
pub use contract::StatisticalHalf;
pub use features::{SeriesInput, SeriesScale};
pub use hybrid::Hybrid;
pub use hybrid::MISS_CAP;
pub use reversion::{MIN_GAP, Mixer, Reversion, SHOCK};
pub use settings::{BaselineChoice, Overrides, configure};
pub use statistical::Statistical;
pub use train::{FitReport, MemberReport, Progress};

use crate::error::{Error, Result};
use features::{Batch, push_window};
use network::Network;

/// Windows forecast per network call.
const CHUNK: usize = 256;
/// Most training windows the hybrid's statistical forecaster is fitted on.
const HYBRID_WINDOWS: usize = 2048;
/// Most shocked training windows the reversion's weight is fitted on
/// (evenly spaced among all of them).
const REVERSION_WINDOWS: usize = 4096;
/// Most validation windows the blend weight and the calibration are fitted
/// on (evenly spaced among every origin of the validation range).
const VAL_WINDOWS: usize = 1024;
/// The hybrid's statistical forecaster is chosen on the last this many
/// seasons (or horizons, if longer) of each series' training range...
const HYBRID_SELECT_SEASONS: usize = 8;
/// ... and its error distribution is fitted on the last this many.
const HYBRID_ERROR_SEASONS: usize = 16;

/// One series the model was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesMeta {
    /// Its name (the caller's series id, e.g. `app/type/metric/series`).
    pub name: String,
    /// Its shard type.
    pub shard_type: String,
    /// Mean of its training range.
    pub mean: f32,
    /// Mean absolute deviation of its training range.
    pub deviation: f32,
    /// Time of its first training point (ms).
    pub first_ts: i64,
    /// Time of its last training point (ms).
    pub last_ts: i64,
    /// Training points.
    pub points: usize,
}

/// A series handed to [`Model::fit`]: its training range on the grid.
#[derive(Debug, Clone)]
pub struct TrainSeries {
    /// Series id.
    pub name: String,
    /// Its shard type.
    pub shard_type: String,
    /// Time of `values[0]` (ms).
    pub start: i64,
    /// Observed values.
    pub values: Vec<f32>,
    /// Event indicator on the same grid, if any.
    pub events: Option<Vec<f32>>,
}

/// A trained forecaster.
pub struct Model {
    config: ModelConfig,
    train: TrainConfig,
    step_ms: i64,
    series: Vec<SeriesMeta>,
    shard_types: Vec<String>,
    index: HashMap<String, usize>,
    varmap: VarMap,
    members: Vec<Network>,
    calibration: Calibration,
    hybrid: Option<Hybrid>,
    reversion: Option<Reversion>,
}

/// Widening of the quantiles around the median, fitted on the validation
/// windows after training so that their 10% and 90% quantiles are exceeded
/// at most 10% of the time (networks trained on little data are
/// overconfident). Scaling each side by one factor of at least 1 keeps the
/// levels ordered. It never narrows: the validation windows are few and sit
/// at the end of the training range, and narrowing on them (as an earlier
/// version did) cost coverage on every protocol F setup whose test weeks
/// differ from them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// Factor on the distance from the median of levels below 0.5.
    pub lower: f32,
    /// Factor on the distance of levels above 0.5.
    pub upper: f32,
}

impl Default for Calibration {
    fn default() -> Self {
        Self {
            lower: 1.0,
            upper: 1.0,
        }
    }
}

impl Model {
    /// Fits a model on `data` (all on one grid of `step_ms`), calling
    /// `progress` after every optimiser step.
    pub fn fit(
        config: &ModelConfig,
        train: &TrainConfig,
        step_ms: i64,
        data: &[TrainSeries],
        progress: impl FnMut(&Progress),
    ) -> Result<(Self, FitReport)> {
        Self::fit_from(config, train, step_ms, data, None, progress)
    }

    /// [`Model::fit`], warm-started from `from`: every weight of `from` whose
    /// name and shape match is copied over the fresh initialisation (member
    /// `k` starts from member `k mod n` of `from`).
    pub fn fit_from(
        config: &ModelConfig,
        train: &TrainConfig,
        step_ms: i64,
        data: &[TrainSeries],
        from: Option<&Model>,
        mut progress: impl FnMut(&Progress),
    ) -> Result<(Self, FitReport)> {
        config.validate()?;
        train.validate()?;
        if data.is_empty() {
            return Err(Error::Invalid("no series to train on".into()));
        }
        if step_ms <= 0 {
            return Err(Error::Invalid(format!(
                "grid step {step_ms} ms must be positive"
            )));
        }
        let mut shard_types: Vec<String> = data.iter().map(|s| s.shard_type.clone()).collect();
        shard_types.sort();
        shard_types.dedup();
        let series: Vec<SeriesMeta> = data
            .iter()
            .map(|s| {
                let sc = SeriesScale::of(&s.values);
                SeriesMeta {
                    name: s.name.clone(),
                    shard_type: s.shard_type.clone(),
                    mean: sc.mean,
                    deviation: sc.deviation,
                    first_ts: s.start,
                    last_ts: s.start + step_ms * (s.values.len() as i64 - 1),
                    points: s.values.len(),
                }
            })
            .collect();
        let mut model =
            Self::assemble(config.clone(), train.clone(), step_ms, series, shard_types)?;
        let inputs: Vec<SeriesInput<'_>> = data
            .iter()
            .enumerate()
            .map(|(i, s)| SeriesInput {
                series: i + 1,
                shard_type: model.shard_type_row(&s.shard_type),
                start: s.start,
                step: step_ms,
                values: &s.values,
                events: s.events.as_deref(),
            })
            .collect();
        let scales: Vec<SeriesScale> = model.series.iter().map(SeriesMeta::scale).collect();
        let lengths: Vec<usize> = data.iter().map(|s| s.values.len()).collect();
        let split = train::split(config, train, &lengths);
        let fitter = train::Fitter {
            cfg: config,
            tc: train,
            inputs: &inputs,
            scales: &scales,
        };
        let dev = train.device.open()?;
        let start = std::time::Instant::now();
        // The members train as copies on the device, and their weights are
        // copied into the model after training: the model runs on the CPU.
        let trained = VarMap::new();
        let nets = train::build_members(
            config,
            model.series.len(),
            model.shard_types.len(),
            &trained,
            &dev,
        )?;
        let mut members = Vec::new();
        for (k, net) in nets.iter().enumerate() {
            let vars = train::member_vars(&trained, k);
            let warm = from.map(|m| {
                let j = k % m.members.len();
                train::member_vars(&m.varmap, j)
                    .into_iter()
                    .map(|(name, v)| (name.replacen(&format!("m{j}."), &format!("m{k}."), 1), v))
                    .collect::<Vec<_>>()
            });
            members.push(fitter.fit_member(
                k,
                net,
                &vars,
                warm.as_deref(),
                &split,
                &mut progress,
            )?);
        }
        {
            let trained = trained.data().lock().expect("var map lock");
            let cpu = model.varmap.data().lock().expect("var map lock");
            for (name, var) in trained.iter() {
                cpu[name].set(&var.as_tensor().to_device(&Device::Cpu)?)?;
            }
        }
        let val = every_val_origin(config, &inputs, &split.val);
        model.hybrid = model.fit_hybrid(&inputs, &scales, &val)?;
        model.calibration = model.calibrate(&inputs, &val)?;
        model.reversion = model.fit_reversion(&inputs, &scales, &split)?;
        let report = FitReport {
            calibration: model.calibration,
            hybrid: model.hybrid.clone(),
            reversion: model.reversion,
            train_windows: split.train.len(),
            val_windows: split.val.len(),
            members,
            seconds: start.elapsed().as_secs_f64(),
        };
        model.index = model.build_index();
        Ok((model, report))
    }

    fn assemble(
        config: ModelConfig,
        train: TrainConfig,
        step_ms: i64,
        series: Vec<SeriesMeta>,
        shard_types: Vec<String>,
    ) -> Result<Self> {
        let varmap = VarMap::new();
        let members = train::build_members(
            &config,
            series.len(),
            shard_types.len(),
            &varmap,
            &Device::Cpu,
        )?;
        let mut model = Self {
            config,
            train,
            step_ms,
            series,
            shard_types,
            index: HashMap::new(),
            varmap,
            members,
            calibration: Calibration::default(),
            hybrid: None,
            reversion: None,
        };
        model.index = model.build_index();
        Ok(model)
    }

    /// Fits the statistical half of the forecast ([`Hybrid`]): the member of
    /// the statistical family and its error distribution on (at most
    /// [`HYBRID_WINDOWS`] of) the windows from every origin of the latest
    /// seasons, validation range included (nothing of the family is
    /// trained, so those windows are as fair a test as any), the blend
    /// weight on the validation windows `val` ([`every_val_origin`]). `None`
    /// without a season, or when the series are mostly too short for any
    /// member.
    fn fit_hybrid(
        &self,
        inputs: &[SeriesInput<'_>],
        scales: &[SeriesScale],
        val: &[(usize, usize)],
    ) -> Result<Option<Hybrid>> {
        let cfg = &self.config;
        let span = cfg.season.max(cfg.horizon);
        // Every member must find its history before the selection windows
        // of at least half the series (shorter ones are filled, as in
        // forecasts).
        let mut lengths: Vec<usize> = inputs.iter().map(|s| s.values.len()).collect();
        lengths.sort_unstable();
        let median = lengths.get(lengths.len() / 2).copied().unwrap_or(0);
        let max_lookback = median.saturating_sub(HYBRID_SELECT_SEASONS * span + cfg.horizon);
        let candidates = statistical::candidates(cfg.season, cfg.horizon, max_lookback);
        let Some(history_len) = candidates.iter().map(|c| c.lookback(cfg.season)).max() else {
            return Ok(None);
        };
        let recent =
            |s: usize, o: usize, seasons: usize| o + seasons * span >= inputs[s].values.len();
        let need = cfg.history_needed().max(1);
        let pool: Vec<(usize, usize)> = inputs
            .iter()
            .enumerate()
            .flat_map(|(s, input)| {
                (need..=input.values.len().saturating_sub(cfg.horizon)).map(move |o| (s, o))
            })
            .filter(|&(s, o)| recent(s, o, HYBRID_ERROR_SEASONS))
            .collect();
        let stride = pool.len().div_ceil(HYBRID_WINDOWS).max(1);
        let mut batch = Batch {
            history_len,
            ..Batch::default()
        };
        let mut select = Vec::new();
        for (s, o) in pool.iter().step_by(stride) {
            push_window(cfg, &scales[*s], &inputs[*s], *o, true, &mut batch)?;
            select.push(recent(*s, *o, HYBRID_SELECT_SEASONS));
        }
        let Some(mut hybrid) = hybrid::fit_statistical(cfg, &batch, &select, &candidates) else {
            return Ok(None);
        };
        let mut val_batch = Batch {
            history_len: hybrid.lookback(cfg),
            ..Batch::default()
        };
        for &(s, o) in val {
            push_window(cfg, &scales[s], &inputs[s], o, true, &mut val_batch)?;
        }
        let net = self.network_quantiles(&val_batch)?;
        hybrid::choose_weight(cfg, &mut hybrid, &val_batch, &net);
        Ok(Some(hybrid))
    }

    /// The ensemble's mean normalised quantiles `[n, horizon, quantiles]` of
    /// a batch, before blending and calibration.
    fn network_quantiles(&self, batch: &Batch) -> Result<Vec<f32>> {
        let (h, q) = (self.config.horizon, self.config.quantiles.len());
        let mut sum = vec![0f32; batch.n * h * q];
        for net in &self.members {
            let z = net.forward(batch, false)?.flatten_all()?.to_vec1::<f32>()?;
            sum.iter_mut().zip(z).for_each(|(s, v)| *s += v);
        }
        let k = self.members.len() as f32;
        sum.iter_mut().for_each(|v| *v /= k);
        Ok(sum)
    }

    fn build_index(&self) -> HashMap<String, usize> {
        self.series
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i + 1))
            .collect()
    }

    /// Fits the [`Reversion`] on (at most [`REVERSION_WINDOWS`] of) the
    /// training and validation windows that follow a shock. The persisting
    /// scenario there is the statistical half's forecast alone: the network
    /// has been fitted to those very windows (a holiday it trained on, it
    /// forecasts well), so its in-sample forecasts would call for no
    /// reversion at all. `None` where it does not apply, without a
    /// statistical half, with too few shocked windows, or where it does not
    /// help.
    fn fit_reversion(
        &self,
        inputs: &[SeriesInput<'_>],
        scales: &[SeriesScale],
        split: &train::Split,
    ) -> Result<Option<Reversion>> {
        let cfg = &self.config;
        let Some(hybrid) = self.hybrid.as_ref().filter(|_| Reversion::applies(cfg)) else {
            return Ok(None);
        };
        let statistical = Hybrid {
            weight: 0.0,
            ..hybrid.clone()
        };
        let shocked: Vec<(usize, usize)> = split
            .train
            .iter()
            .chain(&split.val)
            .copied()
            .filter(|&(s, o)| reversion::shocked(cfg.season, inputs[s].values, o))
            .collect();
        let stride = shocked.len().div_ceil(REVERSION_WINDOWS).max(1);
        let shocked: Vec<(usize, usize)> = shocked.into_iter().step_by(stride).collect();
        let windows: Vec<(SeriesInput<'_>, usize)> =
            shocked.iter().map(|&(s, o)| (inputs[s], o)).collect();
        let fc = self.forecast_with(&windows, Some(&statistical), Calibration::default(), None)?;
        let scored: Vec<(&[f32], usize, f32)> = shocked
            .iter()
            .map(|&(s, o)| (inputs[s].values, o, scales[s].deviation))
            .collect();
        Ok(Reversion::fit(cfg, &scored, &fc))
    }

    /// Fits the [`Calibration`] on the validation windows.
    fn calibrate(&self, inputs: &[SeriesInput<'_>], val: &[(usize, usize)]) -> Result<Calibration> {
        let cfg = &self.config;
        let (h, q) = (cfg.horizon, cfg.quantiles.len());
        let level = |tau: f64| cfg.quantiles.iter().position(|&l| (l - tau).abs() < 1e-9);
        let (Some(lo), Some(hi)) = (level(0.1), level(0.9)) else {
            return Ok(Calibration::default());
        };
        if val.is_empty() {
            return Ok(Calibration::default());
        }
        let windows: Vec<(SeriesInput<'_>, usize)> =
            val.iter().map(|&(s, o)| (inputs[s], o)).collect();
        let fc = self.forecast_rows(&windows)?;
        let mid = cfg.median_index();
        let (mut down, mut up) = (Vec::new(), Vec::new());
        for (w, (input, origin)) in windows.iter().enumerate() {
            for k in 0..h {
                let row = &fc[(w * h + k) * q..][..q];
                let y = input.values[origin + k];
                let (m, a, b) = (row[mid], row[lo], row[hi]);
                if m - a > 0.0 {
                    down.push((m - y) / (m - a));
                }
                if b - m > 0.0 {
                    up.push((y - m) / (b - m));
                }
            }
        }
        let factor = |mut t: Vec<f32>| {
            if t.len() < 10 {
                return 1.0;
            }
            t.sort_by(f32::total_cmp);
            t[(0.9 * (t.len() - 1) as f64).round() as usize].clamp(1.0, 10.0)
        };
        Ok(Calibration {
            lower: factor(down),
            upper: factor(up),
        })
    }

    /// The quantile widening fitted after training.
    pub fn calibration(&self) -> Calibration {
        self.calibration
    }

    /// The statistical half of the forecast, when the model has one.
    pub fn hybrid(&self) -> Option<&Hybrid> {
        self.hybrid.as_ref()
    }

    /// Points of history before an origin that a forecast reads: the
    /// network's context and lags, the window normalisation, the hybrid's
    /// statistical forecaster and the reversion's shock test. Shorter
    /// histories are filled from the same phase of the earliest observed
    /// season.
    pub fn window(&self) -> usize {
        let cfg = &self.config;
        let stat = self.hybrid.as_ref().map_or(0, |hy| hy.lookback(cfg));
        let shock = self
            .reversion
            .map_or(0, |_| Reversion::lookback(cfg.season));
        cfg.history_needed()
            .max(cfg.norm_len())
            .max(stat)
            .max(shock)
    }

    /// The reversion after shock days, when the model has one.
    pub fn reversion(&self) -> Option<&Reversion> {
        self.reversion.as_ref()
    }

    /// What the fit chose after the network, one line each: the quantile
    /// widening, and the reversion and the statistical half if it has them.
    pub fn fitted_parts(&self) -> String {
        let c = self.calibration();
        let mut out = format!(
            "calibration: distances from the median widened by {:.3} below, {:.3} above\n",
            c.lower, c.upper
        );
        if let Some(r) = self.reversion() {
            out += &format!(
                "reversion: after a shock day, weight {} on last week's values\n",
                r.weight
            );
        }
        if let Some(h) = self.hybrid() {
            let s = &h.statistical;
            out += &format!(
                "hybrid: statistical forecaster (daily shape over {} days, weekly over {} weeks at share {}, \
                 level of the last {} points at share {}) blended at network weight {}\n",
                s.days, s.weeks, s.weekly_share, s.recent, s.recent_share, h.weight
            );
        }
        out
    }

    /// The network shape.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The settings it was trained with.
    pub fn train_config(&self) -> &TrainConfig {
        &self.train
    }

    /// Grid step in ms.
    pub fn step_ms(&self) -> i64 {
        self.step_ms
    }

    /// The series it was trained on.
    pub fn series(&self) -> &[SeriesMeta] {
        &self.series
    }

    /// Checks that the model can forecast a `step_ms` grid from `from` on
    /// out of sample: it was fitted on that grid, and on no point at or
    /// after `from` (a backtest or simulation that starts at `from` would
    /// otherwise score a model that has seen its answers).
    pub fn check_fitted_before(&self, step_ms: i64, from: shardcast_core::Timestamp) -> Result<()> {
        if self.step_ms != step_ms {
            return Err(Error::Invalid(format!(
                "the model forecasts a {} ms grid, the series is on a {step_ms} ms grid",
                self.step_ms
            )));
        }
        match self.series.iter().find(|m| m.last_ts >= from.0) {
            Some(late) => Err(Error::Invalid(format!(
                "the model was trained on `{}` up to {}, not before {from}",
                late.name,
                shardcast_core::Timestamp(late.last_ts)
            ))),
            None => Ok(()),
        }
    }

    /// The shard types it knows; row `i + 1` of its shard-type embedding is
    /// `shard_types()[i]` (row 0 is "unknown").
    pub fn shard_types(&self) -> &[String] {
        &self.shard_types
    }

    /// A weight by its name in `model.safetensors` (`m0.rnn.weight_ih_l0`, …).
    pub fn weight(&self, name: &str) -> Result<candle_core::Tensor> {
        let data = self.varmap.data().lock().expect("var map lock");
        data.get(name)
            .map(|v| v.as_tensor().clone())
            .ok_or_else(|| Error::Invalid(format!("the model has no weight `{name}`")))
    }

    /// Replaces the statistical half (`None`: the network alone). For
    /// tests here and of the ONNX export, which exercise every part.
    pub fn set_hybrid(&mut self, hybrid: Option<Hybrid>) {
        self.hybrid = hybrid;
    }

    /// Replaces the reversion after shocks (`None`: off). For tests, like
    /// [`Model::set_hybrid`].
    pub fn set_reversion(&mut self, reversion: Option<Reversion>) {
        self.reversion = reversion;
    }

    /// Replaces the calibration (tests exercise non-trivial factors).
    pub fn set_calibration(&mut self, calibration: Calibration) {
        self.calibration = calibration;
    }

    /// The embedding row of series `name` (0 when the model does not know it).
    pub fn series_row(&self, name: &str) -> usize {
        self.index.get(name).copied().unwrap_or(0)
    }

    /// The embedding row of a shard type (0 when unknown).
    pub fn shard_type_row(&self, shard_type: &str) -> usize {
        self.shard_types
            .iter()
            .position(|t| t == shard_type)
            .map_or(0, |i| i + 1)
    }

    /// The scale used for a series row: its training statistics, or the
    /// statistics of `values` for an unknown series.
    fn scale_for(&self, input: &SeriesInput<'_>, origin: usize) -> SeriesScale {
        match input.series {
            0 => SeriesScale::of(&input.values[..origin]),
            i => self.series[i - 1].scale(),
        }
    }

    /// Forecasts each `(series, origin)` window: only `values[..origin]` is
    /// read. Returns `[windows, horizon, quantiles]` in the series' units,
    /// each step's quantiles ascending.
    pub fn forecast_rows(&self, windows: &[(SeriesInput<'_>, usize)]) -> Result<Vec<f32>> {
        self.forecast_with(
            windows,
            self.hybrid.as_ref(),
            self.calibration,
            self.reversion,
        )
    }

    /// [`Model::forecast_rows`] with the given post-processing in place of the
    /// model's own.
    fn forecast_with(
        &self,
        windows: &[(SeriesInput<'_>, usize)],
        hybrid: Option<&Hybrid>,
        calibration: Calibration,
        reversion: Option<Reversion>,
    ) -> Result<Vec<f32>> {
        let (h, q) = (self.config.horizon, self.config.quantiles.len());
        for (input, _) in windows {
            if input.step != self.step_ms {
                return Err(Error::Invalid(format!(
                    "series on a {} ms grid, the model was trained on {} ms",
                    input.step, self.step_ms
                )));
            }
            if input.series > self.series.len() || input.shard_type > self.shard_types.len() {
                return Err(Error::Invalid(
                    "series or shard type row out of range".into(),
                ));
            }
        }
        let mut out = vec![0f32; windows.len() * h * q];
        let mut mixer = reversion.and_then(|_| reversion::Mixer::of(&self.config));
        let mut row = vec![0f32; q];
        let mut batch = Batch {
            history_len: hybrid.map_or(0, |hy| hy.lookback(&self.config)),
            ..Batch::default()
        };
        for (c, chunk) in windows.chunks(CHUNK).enumerate() {
            batch.clear();
            for (input, origin) in chunk {
                let scale = self.scale_for(input, *origin);
                push_window(&self.config, &scale, input, *origin, false, &mut batch)?;
            }
            // All weight on the statistical half: the network is not asked.
            let mut z = match hybrid {
                Some(hy) if hy.weight == 0.0 => vec![0f32; chunk.len() * h * q],
                _ => self.network_quantiles(&batch)?,
            };
            if let Some(hybrid) = hybrid {
                hybrid.blend(&self.config, &batch, &mut z);
            }
            let mid = self.config.median_index();
            let Calibration { lower, upper } = calibration;
            let dst = &mut out[c * CHUNK * h * q..][..chunk.len() * h * q];
            for (w, vals) in dst.chunks_mut(h * q).enumerate() {
                let (m, s) = (batch.loc[w], batch.scale[w]);
                let miss = hybrid.map_or(1.0, |hy| hy.miss_factor(&self.config, &batch, w));
                let (lower, upper) = (lower * miss, upper * miss);
                let (input, origin) = &chunk[w];
                let p = reversion.map_or(0.0, |r| {
                    r.weight_at(self.config.season, input.values, *origin)
                });
                for (k, (d, z)) in vals.chunks_mut(q).zip(z[w * h * q..].chunks(q)).enumerate() {
                    let med = z[mid];
                    for (j, (r, &z)) in row.iter_mut().zip(z).enumerate() {
                        let f = if j < mid { lower } else { upper };
                        *r = med + f * (z - med);
                    }
                    if let Some(mixer) = mixer.as_mut().filter(|_| p > 0.0) {
                        let back = input.values[origin + k - 7 * self.config.season];
                        mixer.mix(&mut row, (back - m) / s, p);
                    }
                    for (d, &r) in d.iter_mut().zip(&row) {
                        *d = m + s * r;
                    }
                }
            }
        }
        Ok(out)
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.config)
            .field("step_ms", &self.step_ms)
            .field("series", &self.series.len())
            .field("shard_types", &self.shard_types)
            .finish_non_exhaustive()
    }
}

impl SeriesMeta {
    fn scale(&self) -> SeriesScale {
        SeriesScale {
            mean: self.mean,
            deviation: self.deviation,
        }
    }
}

/// Every origin of each series' validation range, from its first window of
/// `val` to the last origin with a whole horizon after it (at most
/// [`VAL_WINDOWS`], evenly spaced). The windows of `val` step by a horizon,
/// so their forecasts all start at the same phase (at midnight, say, with a
/// daily horizon); overlapping windows from every origin measure every
/// phase, and a fit on them depends less on where the range happens to
/// start.
fn every_val_origin(
    cfg: &ModelConfig,
    inputs: &[SeriesInput<'_>],
    val: &[(usize, usize)],
) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (s, input) in inputs.iter().enumerate() {
        if let Some(&(_, first)) = val.iter().find(|v| v.0 == s) {
            let last = input.values.len().saturating_sub(cfg.horizon);
            out.extend((first..=last).map(|o| (s, o)));
        }
    }
    let stride = out.len().div_ceil(VAL_WINDOWS).max(1);
    out.into_iter().step_by(stride).collect()
}

#[cfg(test)]
mod tests;
