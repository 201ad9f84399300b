//! The statistical half of the hybrid forecast: a level-plus-shape
//! forecaster ([`Statistical`]) with a normal error distribution, blended
//! with the network's quantiles.
//!
//! After the network is trained, the member of the statistical family with
//! the smallest absolute error over the latest training windows (the last
//! eight seasons of each series) is chosen. Its normalised errors at every
//! horizon step over a longer span (sixteen seasons) give the mean and
//! standard deviation of a normal error distribution, whose quantiles are
//! its forecast distribution (`forecast + mean + sd * z`, ordered by
//! construction). A normal fitted to the errors beats their empirical
//! quantiles: the windows overlap and hold few independent surprises, so
//! the empirical tails are noisy and often lopsided. The forecast is then
//! `weight * network + (1 - weight) * statistical` level by level (a
//! quantile average of two ordered forecasts is ordered), with the weight
//! nearest to equal shares whose pinball loss on the validation windows is
//! within one standard error of the smallest ([`choose_weight`]). A
//! statistical forecaster adapts to a shift it has never seen in training
//! (a storm, a new level) where a network trained on little data does not;
//! the network is far sharper in normal times; the blend keeps both.
//!
//! The statistical forecaster also watches for shifts: its forecast made
//! one horizon before the origin is compared with what happened since. When
//! that miss exceeds what nine in ten training windows saw
//! (`miss_reference`), the blended spread is widened by the ratio, at most
//! [`MISS_CAP`] times, so the bands open up after a surprise instead of
//! staying as narrow as in calm weeks.

use serde::{Deserialize, Serialize};

use super::config::ModelConfig;
use super::features::Batch;
use super::statistical::Statistical;
use crate::error::{Error, Result};
use crate::metrics::normal_quantile;

/// Network weights tried on the validation windows.
const WEIGHTS: [f32; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];
/// Most widening after a miss.
pub const MISS_CAP: f32 = 2.0;
/// Share of training windows whose miss stays below `miss_reference`.
const MISS_QUANTILE: f64 = 0.9;

/// The fitted statistical half (see the module documentation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hybrid {
    /// The chosen statistical forecaster.
    pub statistical: Statistical,
    /// Weight of the network's quantiles; the statistical forecast gets
    /// `1 - weight`.
    pub weight: f32,
    /// `[horizon, quantiles]` normalised error quantiles of the statistical
    /// forecast (those of a normal fitted to its errors at each step).
    pub errors: Vec<f32>,
    /// Mean absolute normalised error over a horizon of the statistical
    /// forecast that nine in ten training windows stay below; the spread is
    /// widened by the ratio of the last horizon's miss to it (0: never).
    #[serde(default)]
    pub miss_reference: f32,
}

impl Hybrid {
    /// Checks it against the model's shape.
    pub(crate) fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        self.statistical.validate(cfg.season, cfg.horizon)?;
        let ok = (0.0..=1.0).contains(&self.weight)
            && self.miss_reference.is_finite()
            && self.miss_reference >= 0.0
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
                "hybrid: weight {}, {} error quantiles (want a weight in [0, 1] and {} ascending per step)",
                self.weight,
                self.errors.len(),
                cfg.horizon * cfg.quantiles.len()
            )))
        }
    }

    /// Points of normalised history the hybrid reads: the statistical
    /// forecast's lookback, one horizon earlier (to measure its last miss).
    pub fn lookback(&self, cfg: &ModelConfig) -> usize {
        self.statistical.lookback(cfg.season) + cfg.horizon
    }

    /// The spread factor of window `w` of `batch`: the statistical
    /// forecast's mean absolute miss over the last horizon relative to
    /// `miss_reference`, within `[1, MISS_CAP]` (1 when off).
    pub(crate) fn miss_factor(&self, cfg: &ModelConfig, batch: &Batch, w: usize) -> f32 {
        if self.miss_reference <= 0.0 {
            return 1.0;
        }
        let miss = recent_miss(cfg, batch, w, &self.statistical);
        (miss / self.miss_reference).clamp(1.0, MISS_CAP)
    }

    /// Blends the network's normalised quantiles `net` (`[windows, h, q]`)
    /// with the statistical forecast of each window of `batch` (whose
    /// `history` holds at least [`Self::lookback`] points), in place.
    pub(crate) fn blend(&self, cfg: &ModelConfig, batch: &Batch, net: &mut [f32]) {
        let (h, q) = (cfg.horizon, cfg.quantiles.len());
        let mut base = vec![0f32; h];
        for (w, win) in net.chunks_mut(h * q).enumerate() {
            forecast_of(cfg, batch, w, &self.statistical, &mut base);
            for (k, row) in win.chunks_mut(q).enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v =
                        self.weight * *v + (1.0 - self.weight) * (base[k] + self.errors[k * q + j]);
                }
            }
        }
    }
}

/// Forecast of `stat` for window `w` of `batch` into `out` (`[horizon]`),
/// from the origin `back` points before the window's.
fn forecast_back(
    cfg: &ModelConfig,
    batch: &Batch,
    w: usize,
    back: usize,
    stat: &Statistical,
    out: &mut [f32],
) {
    let l = batch.history_len;
    let hist = &batch.history[w * l..(w + 1) * l - back];
    let end = hist.len() as isize;
    stat.forecast(
        cfg.season,
        cfg.horizon,
        |j| hist[(end + j) as usize],
        &mut |k, v| out[k] = v,
    );
}

/// Forecast of `stat` for window `w` of `batch` into `out` (`[horizon]`).
fn forecast_of(cfg: &ModelConfig, batch: &Batch, w: usize, stat: &Statistical, out: &mut [f32]) {
    forecast_back(cfg, batch, w, 0, stat, out);
}

/// Mean absolute error over the last horizon before window `w`'s origin of
/// `stat`'s forecast made one horizon earlier (normalised units).
fn recent_miss(cfg: &ModelConfig, batch: &Batch, w: usize, stat: &Statistical) -> f32 {
    let (h, l) = (cfg.horizon, batch.history_len);
    let mut past = vec![0f32; h];
    forecast_back(cfg, batch, w, h, stat, &mut past);
    let seen = &batch.history[(w + 1) * l - h..(w + 1) * l];
    past.iter()
        .zip(seen)
        .map(|(p, y)| (y - p).abs())
        .sum::<f32>()
        / h as f32
}

/// Chooses the member of `candidates` with the smallest absolute error over
/// the windows of `train` marked in `select` (targets and a history of
/// every candidate's lookback included), and the quantiles of a normal
/// fitted to its errors over all windows of `train` at each step; `None`
/// without candidates or windows.
pub(crate) fn fit_statistical(
    cfg: &ModelConfig,
    train: &Batch,
    select: &[bool],
    candidates: &[Statistical],
) -> Option<Hybrid> {
    let h = cfg.horizon;
    if train.n == 0 || !select.contains(&true) {
        return None;
    }
    let mut base = vec![0f32; h];
    let errors_of = |c: &Statistical, w: usize, base: &mut [f32]| {
        forecast_of(cfg, train, w, c, base);
        let t = &train.target[w * h..(w + 1) * h];
        base.iter_mut().zip(t).for_each(|(b, &t)| *b = t - *b);
    };
    let mut best: Option<(f64, Statistical)> = None;
    for c in candidates {
        let mut err = 0f64;
        for w in (0..train.n).filter(|&w| select[w]) {
            errors_of(c, w, &mut base);
            err += relative_error(train, w, &base);
        }
        if best.is_none_or(|(b, _)| err < b) {
            best = Some((err, *c));
        }
    }
    let (_, statistical) = best?;
    let mut by_step = vec![Vec::with_capacity(train.n); h];
    for w in 0..train.n {
        errors_of(&statistical, w, &mut base);
        for (col, &e) in by_step.iter_mut().zip(&base) {
            col.push(e);
        }
    }
    let z: Vec<f64> = cfg
        .quantiles
        .iter()
        .map(|&tau| normal_quantile(tau))
        .collect();
    let mut errors = Vec::with_capacity(h * z.len());
    for col in &by_step {
        let n = col.len() as f64;
        let mean = col.iter().map(|&e| f64::from(e)).sum::<f64>() / n;
        let var = col
            .iter()
            .map(|&e| (f64::from(e) - mean).powi(2))
            .sum::<f64>()
            / n;
        errors.extend(z.iter().map(|z| (mean + var.sqrt() * z) as f32));
    }
    // The miss of a horizon: its errors' mean absolute value, per window.
    let mut misses: Vec<f32> = (0..train.n)
        .map(|w| {
            errors_of(&statistical, w, &mut base);
            base.iter().map(|e| e.abs()).sum::<f32>() / h as f32
        })
        .collect();
    misses.sort_by(f32::total_cmp);
    Some(Hybrid {
        statistical,
        weight: 1.0,
        errors,
        miss_reference: quantile(&misses, MISS_QUANTILE),
    })
}

/// Absolute error of window `w` of `batch` given its normalised errors
/// `e`, relative to the absolute target in the series' units (at least the
/// window's scale per step), so that every window and series counts alike.
fn relative_error(batch: &Batch, w: usize, e: &[f32]) -> f64 {
    let (m, s) = (f64::from(batch.loc[w]), f64::from(batch.scale[w]));
    let h = e.len();
    let abs_err: f64 = e.iter().map(|&e| f64::from(e.abs())).sum::<f64>() * s;
    let abs_y: f64 = batch.target[w * h..(w + 1) * h]
        .iter()
        .map(|&z| (m + s * f64::from(z)).abs())
        .sum();
    abs_err / abs_y.max(s * h as f64)
}

/// The `tau` quantile of sorted `v` by linear interpolation.
fn quantile(v: &[f32], tau: f64) -> f32 {
    let pos = tau * (v.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, (pos - pos.floor()) as f32);
    let j = (i + 1).min(v.len() - 1);
    v[i] + frac * (v[j] - v[i])
}

/// Sets `hybrid.weight` from the pinball losses on the validation windows
/// `val` (in series order, consecutive origins of a series together), given
/// the network's normalised quantiles `net` for them.
///
/// The weight is the one nearest to equal shares ([`EQUAL`]) whose loss
/// exceeds the smallest by at most one standard error of the difference
/// (the one-standard-error rule). Weights estimated on few windows tend to
/// lose to the plain average of two forecasts (the forecast combination
/// puzzle), and here the network was also early-stopped on these windows,
/// which flatters its loss. The standard error is taken over blocks of
/// `horizon` consecutive windows of one series (overlapping windows are not
/// independent); with fewer than two blocks the shares stay equal.
pub(crate) fn choose_weight(cfg: &ModelConfig, hybrid: &mut Hybrid, val: &Batch, net: &[f32]) {
    let (h, q) = (cfg.horizon, cfg.quantiles.len());
    // Block of each window: a new one at each series change and every
    // `h` windows within a series.
    let mut block = Vec::with_capacity(val.n);
    let (mut id, mut run) = (0usize, 0usize);
    for w in 0..val.n {
        if w > 0 && (val.series.get(w) != val.series.get(w - 1) || run == h) {
            id += 1;
            run = 0;
        }
        block.push(id);
        run += 1;
    }
    let blocks = if val.n == 0 { 0 } else { id + 1 };
    // Loss per weight and block.
    let losses: Vec<Vec<f64>> = WEIGHTS
        .iter()
        .map(|&wt| {
            let trial = Hybrid {
                weight: wt,
                ..hybrid.clone()
            };
            let mut z = net.to_vec();
            trial.blend(cfg, val, &mut z);
            let mut per_block = vec![0f64; blocks];
            for w in 0..val.n {
                for k in 0..h {
                    let y = val.target[w * h + k];
                    for (j, &tau) in cfg.quantiles.iter().enumerate() {
                        let d = f64::from(y - z[(w * h + k) * q + j]);
                        per_block[block[w]] += (tau * d).max((tau - 1.0) * d);
                    }
                }
            }
            per_block
        })
        .collect();
    hybrid.weight = one_se_choice(&losses);
}

/// Network share of equal weights.
const EQUAL: f32 = 0.5;

/// The one-standard-error choice among [`WEIGHTS`] given each weight's loss
/// per block (see [`choose_weight`]).
fn one_se_choice(losses: &[Vec<f64>]) -> f32 {
    let blocks = losses.first().map_or(0, Vec::len);
    if blocks < 2 {
        return EQUAL;
    }
    let total = |i: usize| losses[i].iter().sum::<f64>();
    let best = (0..WEIGHTS.len())
        .min_by(|&a, &b| total(a).total_cmp(&total(b)))
        .unwrap_or(0);
    // Nearest to equal shares first; between two as near, the lower loss.
    let mut order: Vec<usize> = (0..WEIGHTS.len()).collect();
    order.sort_by(|&a, &b| {
        (WEIGHTS[a] - EQUAL)
            .abs()
            .total_cmp(&(WEIGHTS[b] - EQUAL).abs())
            .then(total(a).total_cmp(&total(b)))
    });
    let n = blocks as f64;
    for i in order {
        let d: Vec<f64> = losses[i]
            .iter()
            .zip(&losses[best])
            .map(|(a, b)| a - b)
            .collect();
        let mean = d.iter().sum::<f64>() / n;
        let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        // The standard error of the total difference over `n` blocks.
        if mean * n <= (var * n).sqrt() {
            return WEIGHTS[i];
        }
    }
    WEIGHTS[best]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ModelConfig {
        ModelConfig {
            horizon: 2,
            season: 4,
            context: 4,
            lags: vec![],
            calendar: false,
            events: false,
            quantiles: vec![0.1, 0.5, 0.9],
            ..ModelConfig::default()
        }
    }

    fn stat(days: usize) -> Statistical {
        Statistical {
            days,
            weeks: 0,
            weekly_share: 0.0,
            recent: 4,
            recent_share: 1.0,
        }
    }

    /// Windows over `series` at `origins` with 8 points of history.
    fn batch(series: &[f32], origins: &[usize]) -> Batch {
        let mut b = Batch {
            history_len: 8,
            ..Batch::default()
        };
        for &o in origins {
            b.history.extend(&series[o - 8..o]);
            b.target.extend(&series[o..o + 2]);
            b.loc.push(0.0);
            b.scale.push(1.0);
            b.series.push(1);
            b.n += 1;
        }
        b
    }

    #[test]
    fn picks_the_better_forecaster_and_its_error_quantiles() {
        // A season whose first point alternates between seasons: the mean
        // of two seasons is off by a constant, the last season by more.
        let series: Vec<f32> = (0..40)
            .map(|i| match i % 8 {
                0 => 10.0,
                4 => 0.0,
                _ => 5.0,
            })
            .collect();
        let origins: Vec<usize> = (8..38).filter(|o| o % 4 == 0).collect();
        let b = batch(&series, &origins);
        let select = vec![true; b.n];
        let h = fit_statistical(&cfg(), &b, &select, &[stat(1), stat(2)]).unwrap();
        assert_eq!(h.statistical, stat(2));
        // Two seasons' mean: step 0 off by 6.25 either way in equal counts
        // (a normal of mean 0 and sd 6.25), step 1 by at most 1.25 (the
        // last season alone: 10 and 0).
        let z90 = normal_quantile(0.9) as f32;
        let close = |a: f32, b: f32| (a - b).abs() < 1e-4;
        assert!(
            close(h.errors[0], -6.25 * z90)
                && close(h.errors[1], 0.0)
                && close(h.errors[2], 6.25 * z90),
            "{:?}",
            h.errors
        );
        assert!(
            h.errors[3..].iter().all(|e| e.abs() <= 1.25 * z90 + 1e-5),
            "{:?}",
            h.errors
        );
        assert!(h.validate(&cfg()).is_ok());
        // Nothing selected: no hybrid.
        assert!(fit_statistical(&cfg(), &b, &vec![false; b.n], &[stat(1)]).is_none());
    }

    #[test]
    fn blend_keeps_levels_ordered_and_weight_follows_the_better_half() {
        let c = cfg();
        let series: Vec<f32> = (0..20).map(|i| (i % 4) as f32).collect();
        // Two blocks of a horizon (2) of consecutive origins.
        let val = batch(&series, &[8, 9, 10, 11]);
        let mut hy = Hybrid {
            statistical: stat(1),
            weight: 1.0,
            errors: vec![-0.1, 0.0, 0.1, -0.1, 0.0, 0.1],
            miss_reference: 0.0,
        };
        // A network that is 3 off: the exact statistical forecast wins.
        let net: Vec<f32> = val
            .target
            .iter()
            .flat_map(|&t| [t + 2.0, t + 3.0, t + 4.0])
            .collect();
        choose_weight(&c, &mut hy, &val, &net);
        assert_eq!(hy.weight, 0.0);
        let mut z = net.clone();
        hy.weight = 0.5;
        hy.blend(&c, &val, &mut z);
        assert!(z.chunks(3).all(|r| r[0] <= r[1] && r[1] <= r[2]));
        // Window 0, step 0: target 0, network median 3, statistical 0.
        assert!((z[1] - 1.5).abs() < 1e-6, "{z:?}");
    }

    #[test]
    fn one_se_rule_keeps_equal_shares_unless_the_gain_is_clear() {
        // Loss per block for the weights 0, 0.25, 0.5, 0.75 and 1.
        let losses = |blocks: &[[f64; 5]]| -> Vec<Vec<f64>> {
            (0..WEIGHTS.len())
                .map(|i| blocks.iter().map(|b| b[i]).collect())
                .collect()
        };
        // 0.75 is best in total, but only thanks to one block of three.
        let noisy = losses(&[
            [12.0, 11.0, 10.0, 7.0, 9.0],
            [12.0, 11.0, 10.0, 10.5, 11.0],
            [12.0, 11.0, 10.0, 10.5, 11.0],
        ]);
        assert_eq!(one_se_choice(&noisy), 0.5);
        // The network alone wins by about as much in every block.
        let clear = losses(&[
            [12.0, 11.0, 10.0, 9.0, 8.0],
            [12.0, 11.0, 10.0, 9.1, 8.1],
            [12.0, 11.0, 10.0, 8.9, 7.9],
        ]);
        assert_eq!(one_se_choice(&clear), 1.0);
        // Between 1 and 0.75, a gain within one standard error keeps the
        // weight nearer equal shares.
        let near = losses(&[
            [12.0, 11.0, 10.0, 8.0, 7.5],
            [12.0, 11.0, 10.0, 8.1, 8.6],
            [12.0, 11.0, 10.0, 7.9, 7.4],
        ]);
        assert_eq!(one_se_choice(&near), 0.75);
        // One block: no spread to judge by.
        assert_eq!(one_se_choice(&losses(&[[9.0, 8.0, 7.0, 6.0, 5.0]])), 0.5);
        assert_eq!(one_se_choice(&[]), 0.5);
    }

    #[test]
    fn spread_widens_after_a_miss_up_to_the_cap() {
        let c = cfg();
        let mut series: Vec<f32> = (0..20).map(|i| (i % 4) as f32).collect();
        let hy = |miss_reference| Hybrid {
            statistical: stat(1),
            weight: 0.5,
            errors: vec![0.0; 6],
            miss_reference,
        };
        // The last season repeats: no miss, no widening.
        let calm = batch(&series, &[12]);
        assert_eq!(hy(0.5).miss_factor(&c, &calm, 0), 1.0);
        // The last horizon 1 higher than the season before: miss 1.
        series[10] += 1.0;
        series[11] += 1.0;
        let shifted = batch(&series, &[12]);
        assert!((hy(0.8).miss_factor(&c, &shifted, 0) - 1.25).abs() < 1e-6);
        assert_eq!(hy(0.1).miss_factor(&c, &shifted, 0), MISS_CAP);
        assert_eq!(hy(0.0).miss_factor(&c, &shifted, 0), 1.0);
    }

    #[test]
    fn malformed_hybrids_are_refused() {
        let c = cfg();
        let good = Hybrid {
            statistical: stat(1),
            weight: 0.5,
            errors: vec![0.0; 6],
            miss_reference: 1.0,
        };
        assert!(good.validate(&c).is_ok());
        for bad in [
            Hybrid {
                statistical: stat(0),
                ..good.clone()
            },
            Hybrid {
                weight: 1.5,
                ..good.clone()
            },
            Hybrid {
                miss_reference: -1.0,
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
