//! Fitting the ensemble: window sampling, AdamW with warmup and cosine decay,
//! global-norm gradient clipping, validation on the end of each series'
//! training range, early stopping that keeps the best weights.

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::config::{ModelConfig, TrainConfig};
use super::features::{Batch, SeriesInput, SeriesScale, push_window};
use super::network::{Network, levels_tensor, pinball_loss};
use crate::error::{Error, Result};
use shardcast_core::rng::SplitMix64;

/// Where a fit stands, for progress display.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Ensemble member being trained (from 0).
    pub member: usize,
    /// Members in all.
    pub members: usize,
    /// Optimiser steps taken by this member.
    pub step: usize,
    /// Its step budget.
    pub max_steps: usize,
    /// Smoothed training loss.
    pub train_loss: f64,
    /// Best validation loss so far (NaN before the first pass or without
    /// validation data).
    pub best_val_loss: f64,
    /// Seconds since this member started.
    pub seconds: f64,
}

/// What happened while fitting one member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberReport {
    /// Seed it was trained from.
    pub seed: u64,
    /// Optimiser steps taken.
    pub steps: usize,
    /// Step whose weights were kept.
    pub best_step: usize,
    /// Validation pinball loss of the kept weights (normalised units); NaN
    /// without validation data.
    pub best_val_loss: f64,
    /// Smoothed training loss at the end.
    pub final_train_loss: f64,
    /// Whether early stopping ended it.
    pub stopped_early: bool,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// What happened while fitting the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FitReport {
    /// Training windows available.
    pub train_windows: usize,
    /// Validation windows.
    pub val_windows: usize,
    /// One entry per ensemble member.
    pub members: Vec<MemberReport>,
    /// Quantile widening fitted on the validation windows.
    pub calibration: super::Calibration,
    /// The statistical half of the forecast, if any.
    #[serde(default)]
    pub hybrid: Option<super::Hybrid>,
    /// The reversion after shock days, if any.
    #[serde(default)]
    pub reversion: Option<super::Reversion>,
    /// Wall time of the whole fit in seconds.
    pub seconds: f64,
}

/// Windows `(series row in the input slice, origin)`.
pub(crate) struct Split {
    pub train: Vec<(usize, usize)>,
    pub val: Vec<(usize, usize)>,
}

/// Chooses training and validation windows from each series' values.
pub(crate) fn split(cfg: &ModelConfig, tc: &TrainConfig, lengths: &[usize]) -> Split {
    let need = cfg.history_needed().max(1);
    let h = cfg.horizon;
    let mut out = Split {
        train: Vec::new(),
        val: Vec::new(),
    };
    for (s, &n) in lengths.iter().enumerate() {
        let val_points = if tc.validation_points > 0 {
            tc.validation_points
        } else {
            (2 * h).max(cfg.season.min(n / 10))
        };
        let val_start = n.saturating_sub(val_points).max(need);
        let mut o = val_start;
        while o + h <= n {
            out.val.push((s, o));
            o += h;
        }
        let train_end = if out.val.last().is_some_and(|&(vs, _)| vs == s) {
            val_start
        } else {
            n
        };
        out.train
            .extend((need..=train_end.saturating_sub(h)).map(|o| (s, o)));
    }
    out
}

/// Re-initialises every variable of `vars` from `rng` (names decide the
/// distribution), so that a seed fixes the starting point.
pub(crate) fn init_vars(vars: &[(String, Var)], hidden: usize, rng: &mut SplitMix64) -> Result<()> {
    let dims_of = |name: &str| {
        vars.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.dims().to_vec())
    };
    for (name, var) in vars {
        let dims = var.dims().to_vec();
        let bound = if name.contains(".rnn.") {
            1.0 / (hidden as f64).sqrt()
        } else if name.ends_with("step_bias") || name.contains("head.skip") {
            0.0
        } else if name.ends_with("embeddings") {
            0.5
        } else if let Some(prefix) = name.strip_suffix(".bias") {
            let fan_in = dims_of(&format!("{prefix}.weight")).map_or(1, |d| d[1]);
            1.0 / (fan_in as f64).sqrt()
        } else {
            1.0 / (dims.last().copied().unwrap_or(1) as f64).sqrt()
        };
        let n: usize = dims.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| (bound * (2.0 * rng.unit() - 1.0)) as f32)
            .collect();
        var.set(&Tensor::from_vec(data, dims, var.device())?)?;
    }
    Ok(())
}

/// The variables of member `k`, sorted by name.
pub(crate) fn member_vars(varmap: &VarMap, k: usize) -> Vec<(String, Var)> {
    let prefix = format!("m{k}.");
    let data = varmap.data().lock().expect("var map lock");
    let mut vars: Vec<(String, Var)> = data
        .iter()
        .filter(|(n, _)| n.starts_with(&prefix))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

pub(crate) struct Fitter<'a> {
    pub cfg: &'a ModelConfig,
    pub tc: &'a TrainConfig,
    pub inputs: &'a [SeriesInput<'a>],
    pub scales: &'a [SeriesScale],
}

impl Fitter<'_> {
    fn fill(&self, windows: &[(usize, usize)], batch: &mut Batch) -> Result<()> {
        batch.clear();
        for &(s, o) in windows {
            push_window(self.cfg, &self.scales[s], &self.inputs[s], o, true, batch)?;
        }
        Ok(())
    }

    fn val_loss(&self, net: &Network, val: &[(usize, usize)], levels: &Tensor) -> Result<f64> {
        let mut batch = Batch::default();
        let (mut sum, mut n) = (0.0, 0usize);
        for chunk in val.chunks(512) {
            self.fill(chunk, &mut batch)?;
            let q = net.forward(&batch, false)?;
            let t = Tensor::from_slice(&batch.target, (batch.n, self.cfg.horizon), net.device())?;
            let l = pinball_loss(&q, &t, levels)?.to_scalar::<f32>()?;
            sum += f64::from(l) * chunk.len() as f64;
            n += chunk.len();
        }
        Ok(sum / n as f64)
    }

    /// Trains member `k` in place (its variables are `vars`).
    pub(crate) fn fit_member(
        &self,
        k: usize,
        net: &Network,
        vars: &[(String, Var)],
        warm: Option<&[(String, Var)]>,
        split: &Split,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<MemberReport> {
        let tc = self.tc;
        let seed = tc.seed.wrapping_add(k as u64 * 1_000_003);
        let mut rng = SplitMix64::new(seed);
        init_vars(vars, self.cfg.hidden_size, &mut rng)?;
        for (name, var) in vars {
            if let Some((_, w)) = warm.into_iter().flatten().find(|(n, _)| n == name)
                && w.dims() == var.dims()
            {
                var.set(&w.as_tensor().to_device(var.device())?)?;
            }
        }
        if split.train.is_empty() {
            return Err(Error::Invalid(format!(
                "no training windows: each series needs at least {} points",
                self.cfg.history_needed() + self.cfg.horizon
            )));
        }
        let params = ParamsAdamW {
            lr: tc.learning_rate,
            weight_decay: tc.weight_decay,
            ..ParamsAdamW::default()
        };
        let mut opt = AdamW::new(vars.iter().map(|(_, v)| v.clone()).collect(), params)?;
        let levels = levels_tensor(&self.cfg.quantiles, net.device())?;
        let start = Instant::now();
        let mut batch = Batch::default();
        let mut picks = Vec::with_capacity(tc.batch_size);
        let mut order: Vec<usize> = (0..split.train.len()).collect();
        let mut cursor = order.len();
        let (mut ema, mut best, mut best_step, mut bad) = (f64::NAN, f64::INFINITY, 0, 0);
        let mut best_weights: Option<Vec<Tensor>> = None;
        let mut stopped_early = false;
        let mut step = 0;
        let warm = ((tc.max_steps as f64 * tc.warmup) as usize).max(1);
        while step < tc.max_steps {
            picks.clear();
            while picks.len() < tc.batch_size.min(split.train.len()) {
                if cursor == order.len() {
                    rng.shuffle(&mut order);
                    cursor = 0;
                }
                picks.push(split.train[order[cursor]]);
                cursor += 1;
            }
            self.fill(&picks, &mut batch)?;
            let lr = if step < warm {
                tc.learning_rate * (step + 1) as f64 / warm as f64
            } else {
                let p = (step - warm) as f64 / (tc.max_steps - warm).max(1) as f64;
                tc.learning_rate * (0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))
            };
            opt.set_learning_rate(lr);
            let q = net.forward(&batch, true)?;
            let t = Tensor::from_slice(&batch.target, (batch.n, self.cfg.horizon), net.device())?;
            let loss = pinball_loss(&q, &t, &levels)?;
            let lv = f64::from(loss.to_scalar::<f32>()?);
            if !lv.is_finite() {
                return Err(Error::Invalid(format!(
                    "training diverged at step {step} (loss {lv}); lower the learning rate"
                )));
            }
            ema = if ema.is_nan() {
                lv
            } else {
                0.95 * ema + 0.05 * lv
            };
            let mut grads = loss.backward()?;
            clip(&mut grads, vars, tc.clip_norm)?;
            opt.step(&grads)?;
            step += 1;
            let seconds = start.elapsed().as_secs_f64();
            let out_of_time = tc.max_seconds > 0.0 && seconds >= tc.max_seconds;
            if (step % tc.eval_every == 0 || step == tc.max_steps || out_of_time)
                && !split.val.is_empty()
            {
                let v = self.val_loss(net, &split.val, &levels)?;
                if v < best {
                    best = v;
                    best_step = step;
                    bad = 0;
                    best_weights = Some(
                        vars.iter()
                            .map(|(_, var)| var.as_tensor().copy())
                            .collect::<candle_core::Result<_>>()?,
                    );
                } else {
                    bad += 1;
                }
            }
            progress(&Progress {
                member: k,
                members: self.cfg.members,
                step,
                max_steps: tc.max_steps,
                train_loss: ema,
                best_val_loss: if best.is_finite() { best } else { f64::NAN },
                seconds,
            });
            if tc.patience > 0 && bad >= tc.patience {
                stopped_early = true;
                break;
            }
            if out_of_time {
                break;
            }
        }
        if let Some(w) = best_weights {
            for ((_, var), t) in vars.iter().zip(w) {
                var.set(&t)?;
            }
        } else {
            best_step = step;
        }
        Ok(MemberReport {
            seed,
            steps: step,
            best_step,
            best_val_loss: if best.is_finite() { best } else { f64::NAN },
            final_train_loss: ema,
            stopped_early,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

/// Rescales the gradients of `vars` so that their global norm is at most
/// `max_norm`.
fn clip(
    grads: &mut candle_core::backprop::GradStore,
    vars: &[(String, Var)],
    max_norm: f64,
) -> Result<()> {
    let mut total = 0f64;
    for (_, v) in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            total += f64::from(
                g.sqr()?
                    .sum_all()?
                    .to_dtype(DType::F32)?
                    .to_scalar::<f32>()?,
            );
        }
    }
    let norm = total.sqrt();
    if norm > max_norm {
        let f = max_norm / norm;
        for (_, v) in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * f)?);
            }
        }
    }
    Ok(())
}

/// Builds every member's network under `m{k}` in `varmap`, on `dev`.
pub(crate) fn build_members(
    cfg: &ModelConfig,
    n_series: usize,
    n_types: usize,
    varmap: &VarMap,
    dev: &Device,
) -> Result<Vec<Network>> {
    let vb = VarBuilder::from_varmap(varmap, DType::F32, dev);
    (0..cfg.members)
        .map(|k| Network::new(cfg, n_series, n_types, vb.pp(format!("m{k}"))))
        .collect()
}
