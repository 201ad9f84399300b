//! The statistical half of the hybrid forecast: one of the model's seasonal
//! baselines with empirical error quantiles, blended with the network's
//! quantiles.
//!
//! After the network is trained, the baseline with the smallest absolute
//! error over the latest windows of the training range (the last eight
//! seasons of each series) is chosen, and the quantiles of its
//! normalised errors at every horizon step become its forecast distribution
//! (`baseline + error quantile`, ordered by construction). The forecast is
//! then `weight * network + (1 - weight) * baseline` level by level (a
//! quantile average of two ordered forecasts is ordered), with the weight
//! that gives the smallest pinball loss on the validation windows. A
//! statistical forecaster adapts to a shift it has never seen in training
//! (a storm, a new level) where a network trained on little data does not;
//! the network is far sharper in normal times; the blend keeps both.

use serde::{Deserialize, Serialize};

use super::config::ModelConfig;
use super::features::Batch;
use crate::error::{Error, Result};

/// Network weights tried on the validation windows.
const WEIGHTS: [f32; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];

/// The fitted statistical half (see the module documentation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hybrid {
    /// Index of the chosen baseline in the model's `baselines`.
    pub baseline: usize,
    /// Weight of the network's quantiles; the baseline gets `1 - weight`.
    pub weight: f32,
    /// `[horizon, quantiles]` normalised error quantiles of the baseline.
    pub errors: Vec<f32>,
}

impl Hybrid {
    /// Checks it against the model's shape.
    pub(crate) fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        let ok = self.baseline < cfg.baselines.len()
            && (0.0..=1.0).contains(&self.weight)
            && self.errors.len() == cfg.horizon * cfg.quantiles.len()
            && self.errors.iter().all(|e| e.is_finite())
            && self
                .errors
                .chunks(cfg.quantiles.len())
                .all(|row| row.windows(2).all(|p| p[0] <= p[1]));
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "hybrid: baseline {} of {}, weight {}, {} error quantiles (want {} ascending per step)",
                self.baseline,
                cfg.baselines.len(),
                self.weight,
                self.errors.len(),
                cfg.horizon * cfg.quantiles.len()
            )))
        }
    }

    /// The baseline's normalised forecast of window `w`, step `k` in `batch`.
    pub(crate) fn base(&self, cfg: &ModelConfig, batch: &Batch, w: usize, k: usize) -> f32 {
        base_of(cfg, batch, w, k, self.baseline)
    }

    /// Blends the network's normalised quantiles `net` (`[windows, h, q]`)
    /// with the baseline's, in place.
    pub(crate) fn blend(&self, cfg: &ModelConfig, batch: &Batch, net: &mut [f32]) {
        let (h, q) = (cfg.horizon, cfg.quantiles.len());
        for (w, win) in net.chunks_mut(h * q).enumerate() {
            for (k, row) in win.chunks_mut(q).enumerate() {
                let b = self.base(cfg, batch, w, k);
                for (j, v) in row.iter_mut().enumerate() {
                    *v = self.weight * *v + (1.0 - self.weight) * (b + self.errors[k * q + j]);
                }
            }
        }
    }
}

fn base_of(cfg: &ModelConfig, batch: &Batch, w: usize, k: usize, b: usize) -> f32 {
    let f = cfg.future_size();
    let first = f - cfg.baselines.len();
    batch.future[(w * cfg.horizon + k) * f + first + b]
}

/// Chooses the baseline and its error quantiles from the training windows
/// in `train` (targets included), or `None` when the model has no
/// baselines or the batch is empty.
pub(crate) fn fit_baseline(cfg: &ModelConfig, train: &Batch) -> Option<Hybrid> {
    let (h, nb) = (cfg.horizon, cfg.baselines.len());
    if nb == 0 || train.n == 0 {
        return None;
    }
    let err = |b: usize, w: usize, k: usize| train.target[w * h + k] - base_of(cfg, train, w, k, b);
    let mae = |b: usize| -> f64 {
        (0..train.n)
            .flat_map(|w| (0..h).map(move |k| (w, k)))
            .map(|(w, k)| f64::from(err(b, w, k).abs()))
            .sum()
    };
    let best = (0..nb).min_by(|&a, &b| mae(a).total_cmp(&mae(b)))?;
    let mut errors = Vec::with_capacity(h * cfg.quantiles.len());
    let mut col = Vec::with_capacity(train.n);
    for k in 0..h {
        col.clear();
        col.extend((0..train.n).map(|w| err(best, w, k)));
        col.sort_by(f32::total_cmp);
        errors.extend(cfg.quantiles.iter().map(|&tau| quantile(&col, tau)));
    }
    Some(Hybrid {
        baseline: best,
        weight: 1.0,
        errors,
    })
}

/// The `tau` quantile of sorted `v` by linear interpolation.
fn quantile(v: &[f32], tau: f64) -> f32 {
    let pos = tau * (v.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, (pos - pos.floor()) as f32);
    let j = (i + 1).min(v.len() - 1);
    v[i] + frac * (v[j] - v[i])
}

/// Sets `hybrid.weight` to the network weight with the smallest pinball
/// loss on the validation windows `val`, given the network's normalised
/// quantiles `net` for them.
pub(crate) fn choose_weight(cfg: &ModelConfig, hybrid: &mut Hybrid, val: &Batch, net: &[f32]) {
    let (h, q) = (cfg.horizon, cfg.quantiles.len());
    if val.n == 0 {
        hybrid.weight = 0.5;
        return;
    }
    let mut best = (f64::INFINITY, 1.0);
    for wt in WEIGHTS {
        let trial = Hybrid {
            weight: wt,
            ..hybrid.clone()
        };
        let mut z = net.to_vec();
        trial.blend(cfg, val, &mut z);
        let mut loss = 0f64;
        for w in 0..val.n {
            for k in 0..h {
                let y = val.target[w * h + k];
                for (j, &tau) in cfg.quantiles.iter().enumerate() {
                    let d = f64::from(y - z[(w * h + k) * q + j]);
                    loss += (tau * d).max((tau - 1.0) * d);
                }
            }
        }
        if loss < best.0 {
            best = (loss, wt);
        }
    }
    hybrid.weight = best.1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecaster::Baseline;

    fn cfg() -> ModelConfig {
        ModelConfig {
            horizon: 2,
            season: 4,
            context: 4,
            lags: vec![],
            calendar: false,
            events: false,
            quantiles: vec![0.1, 0.5, 0.9],
            baselines: vec![
                Baseline {
                    days: 1,
                    weeks: 0,
                    recent: 4,
                },
                Baseline {
                    days: 2,
                    weeks: 0,
                    recent: 1,
                },
            ],
            ..ModelConfig::default()
        }
    }

    /// A batch whose baseline features are given per window and step.
    fn batch(base: &[[f32; 2]], target: &[f32]) -> Batch {
        let c = cfg();
        let f = c.future_size();
        let mut b = Batch::default();
        for (i, pair) in base.chunks(c.horizon).enumerate() {
            for row in pair {
                let mut v = vec![0f32; f];
                v[f - 2..].copy_from_slice(row);
                b.future.extend(v);
            }
            b.target.extend(&target[i * c.horizon..(i + 1) * c.horizon]);
            b.n += 1;
        }
        b
    }

    #[test]
    fn picks_the_better_baseline_and_its_error_quantiles() {
        // Baseline 1 is always 0.5 below the target, baseline 0 far off.
        let n = 11;
        let target: Vec<f32> = (0..2 * n).map(|i| i as f32).collect();
        let base: Vec<[f32; 2]> = target.iter().map(|&t| [t + 5.0, t - 0.5]).collect();
        let h = fit_baseline(&cfg(), &batch(&base, &target)).unwrap();
        assert_eq!(h.baseline, 1);
        assert!(
            h.errors.iter().all(|&e| (e - 0.5).abs() < 1e-6),
            "{:?}",
            h.errors
        );
        assert!(h.validate(&cfg()).is_ok());
    }

    #[test]
    fn blend_keeps_levels_ordered_and_weight_follows_the_better_half() {
        let c = cfg();
        let target = vec![1.0f32, 2.0, 3.0, 4.0];
        let base = vec![[0.0, 1.0], [0.0, 2.0], [0.0, 3.0], [0.0, 4.0]];
        let val = batch(&base, &target);
        let mut hy = Hybrid {
            baseline: 1,
            weight: 1.0,
            errors: vec![-0.1, 0.0, 0.1, -0.1, 0.0, 0.1],
        };
        // A network that is 3 off: the exact baseline should win.
        let net: Vec<f32> = target
            .iter()
            .flat_map(|&t| [t + 2.0, t + 3.0, t + 4.0])
            .collect();
        choose_weight(&c, &mut hy, &val, &net);
        assert_eq!(hy.weight, 0.0);
        let mut z = net.clone();
        hy.weight = 0.5;
        hy.blend(&c, &val, &mut z);
        assert!(z.chunks(3).all(|r| r[0] <= r[1] && r[1] <= r[2]));
        assert!((z[1] - (0.5 * 4.0 + 0.5 * 1.0)).abs() < 1e-6);
    }

    #[test]
    fn malformed_hybrids_are_refused() {
        let c = cfg();
        let good = Hybrid {
            baseline: 0,
            weight: 0.5,
            errors: vec![0.0; 6],
        };
        assert!(good.validate(&c).is_ok());
        for bad in [
            Hybrid {
                baseline: 2,
                ..good.clone()
            },
            Hybrid {
                weight: 1.5,
                ..good.clone()
            },
            Hybrid {
                errors: vec![0.0; 5],
                ..good.clone()
            },
            Hybrid {
                errors: vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                ..good.clone()
            },
        ] {
            assert!(bad.validate(&c).is_err(), "{bad:?}");
        }
    }
}
