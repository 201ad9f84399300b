//! Reversion after a shock day: a second scenario mixed into the forecast
//! when the last season broke from the weekly pattern.
//!
//! A shock is a last season (day) whose mean is off by more than [`SHOCK`]
//! in log from the same season one week and two weeks earlier, in the same
//! direction: a storm, a holiday, an outage. (Comparing with one week alone
//! would also flag the normal day that follows such a day by a week.)
//! After a shock there are two futures. Either the shock goes on, which is
//! what a forecaster anchored on the last day's level predicts, or demand
//! returns to its weekly pattern, which last week's values at the same
//! points predict. The forecast then becomes a mixture of the two, with
//! weight `weight` on the return.
//!
//! The mixture is matched by its first two moments per horizon step. Its
//! median moves to `(1 - p) * median + p * last_week`. Its spread around
//! the median is scaled by `sqrt(1 + p (1 - p) d² / σ²)`, where `d` is the
//! distance between the two scenarios and `σ` the forecast's own spread
//! (read from its 10% and 90% quantiles). Both maps are affine in the
//! values, so the result is the same in normalised and in original units,
//! the levels stay ordered, and an ONNX graph computes it with elementwise
//! operators.
//!
//! The weight is fitted after training, on a grid, by the pinball loss over
//! every level on the training windows that follow a shock. It needs weekly
//! structure (the one-week lag among the inputs), since otherwise last
//! week's values are no scenario. With fewer shocked windows than a season
//! of origins there is no reversion.

use serde::{Deserialize, Serialize};

use super::config::ModelConfig;
use crate::error::{Error, Result};
use crate::metrics::normal_quantile;

/// Smallest `|ln(last season's mean / the same season a week earlier)|`
/// (and two weeks earlier) that counts as a shock (about a quarter up or
/// down).
pub(crate) const SHOCK: f64 = 0.25;
/// Weights of the return scenario tried when fitting.
const WEIGHTS: [f32; 10] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];
/// Floor of the spread `σ` (in the units of the quantiles).
pub(crate) const MIN_SPREAD: f32 = 1e-6;

/// The fitted reversion (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reversion {
    /// Weight of the return to last week's values after a shock, in (0, 1).
    pub weight: f32,
}

/// Where in a row of quantiles the mixture reads: the median and the 10%
/// and 90% levels, and the standard-normal distance between the latter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Levels {
    pub mid: usize,
    pub lo: usize,
    pub hi: usize,
    pub z_gap: f32,
}

impl Levels {
    /// The levels of `cfg`; `None` without a 10% or a 90% level.
    pub(crate) fn of(cfg: &ModelConfig) -> Option<Self> {
        let level = |tau: f64| cfg.quantiles.iter().position(|&l| (l - tau).abs() < 1e-9);
        let (lo, hi) = (level(0.1)?, level(0.9)?);
        Some(Self {
            mid: cfg.median_index(),
            lo,
            hi,
            z_gap: (normal_quantile(0.9) - normal_quantile(0.1)) as f32,
        })
    }
}

impl Reversion {
    /// Points of history before an origin that the shock test reads.
    pub(crate) fn lookback(season: usize) -> usize {
        15 * season
    }

    /// Whether the model's shape allows a reversion: a season, the one-week
    /// lag among the inputs, a horizon within a week, and 10% and 90%
    /// levels.
    pub(crate) fn applies(cfg: &ModelConfig) -> bool {
        cfg.season > 0
            && cfg.lags.contains(&(7 * cfg.season))
            && cfg.horizon <= 7 * cfg.season
            && Levels::of(cfg).is_some()
    }

    /// Checks it against the model's shape.
    pub(crate) fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        if !(self.weight > 0.0 && self.weight < 1.0) {
            return Err(Error::Invalid(format!(
                "reversion weight {} must lie in (0, 1)",
                self.weight
            )));
        }
        if !Self::applies(cfg) {
            return Err(Error::Invalid(
                "reversion needs a season, the one-week lag among the inputs, a horizon \
                 within a week and 10% and 90% quantile levels"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The weight in effect for a forecast from `origin` over `values`: the
    /// fitted weight after a shock, 0 otherwise.
    pub(crate) fn weight_at(&self, season: usize, values: &[f32], origin: usize) -> f32 {
        if shocked(season, values, origin) {
            self.weight
        } else {
            0.0
        }
    }

    /// Fits the weight on `windows` (`(values, origin, scale)`, each with a
    /// target horizon after its origin) given the forecasts without
    /// reversion `fc` (`[windows, horizon, quantiles]`, original units):
    /// the shocked windows' pinball loss, each divided by its series'
    /// scale. `None` with fewer than a season of shocked windows, or when
    /// no weight above 0 lowers the loss.
    pub(crate) fn fit(
        cfg: &ModelConfig,
        windows: &[(&[f32], usize, f32)],
        fc: &[f32],
    ) -> Option<Self> {
        let levels = Levels::of(cfg)?;
        let (h, q, m) = (cfg.horizon, cfg.quantiles.len(), cfg.season);
        if windows.len() < m.max(1) {
            return None;
        }
        let mut row = vec![0f32; q];
        let loss: Vec<f64> = WEIGHTS
            .iter()
            .map(|&p| {
                let mut total = 0.0;
                for (w, &(values, origin, scale)) in windows.iter().enumerate() {
                    for k in 0..h {
                        row.copy_from_slice(&fc[(w * h + k) * q..][..q]);
                        mix(&mut row, values[origin + k - 7 * m], p, levels);
                        let y = f64::from(values[origin + k]);
                        total += row
                            .iter()
                            .zip(&cfg.quantiles)
                            .map(|(&v, &tau)| crate::metrics::pinball(y, f64::from(v), tau))
                            .sum::<f64>()
                            / f64::from(scale);
                    }
                }
                total
            })
            .collect();
        let best = (0..WEIGHTS.len()).min_by(|&a, &b| loss[a].total_cmp(&loss[b]))?;
        (WEIGHTS[best] > 0.0).then_some(Self {
            weight: WEIGHTS[best],
        })
    }
}

/// Whether the season before `origin` is a shock: its mean against the
/// same season one and two weeks earlier (all positive) beyond [`SHOCK`] in
/// log, in the same direction.
pub(crate) fn shocked(season: usize, values: &[f32], origin: usize) -> bool {
    let m = season;
    if m == 0 || origin < Reversion::lookback(m) || origin > values.len() {
        return false;
    }
    let mean = |weeks: usize| {
        let s = &values[origin - 7 * weeks * m - m..origin - 7 * weeks * m];
        s.iter().map(|&v| f64::from(v)).sum::<f64>() / s.len() as f64
    };
    let (last, one, two) = (mean(0), mean(1), mean(2));
    if last <= 0.0 || one <= 0.0 || two <= 0.0 {
        return false;
    }
    let (r1, r2) = ((last / one).ln(), (last / two).ln());
    (r1 > SHOCK && r2 > SHOCK) || (r1 < -SHOCK && r2 < -SHOCK)
}

/// Mixes one horizon step's quantiles `row` with the return scenario
/// `back` (last week's value at that step) at weight `p` (see the module
/// documentation), in place.
pub(crate) fn mix(row: &mut [f32], back: f32, p: f32, levels: Levels) {
    if p <= 0.0 {
        return;
    }
    let med = row[levels.mid];
    let sigma = ((row[levels.hi] - row[levels.lo]) / levels.z_gap).max(MIN_SPREAD);
    let d = med - back;
    let f = (1.0 + p * (1.0 - p) * (d * d) / (sigma * sigma)).sqrt();
    let centre = (1.0 - p) * med + p * back;
    for v in row.iter_mut() {
        *v = centre + (*v - med) * f;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ModelConfig {
        ModelConfig {
            season: 4,
            horizon: 2,
            context: 4,
            lags: vec![4, 28],
            ..ModelConfig::default()
        }
    }

    #[test]
    fn the_mixture_moves_the_median_and_widens_by_the_moments() {
        let levels = Levels::of(&cfg()).unwrap();
        // A forecast centred on 10 with σ = 2 (10% and 90% at ±2·1.2816).
        let z = normal_quantile(0.9) as f32;
        let mut row: Vec<f32> = cfg()
            .quantiles
            .iter()
            .map(|&t| 10.0 + 2.0 * normal_quantile(t) as f32)
            .collect();
        let before = row.clone();
        mix(&mut row, 22.0, 0.5, levels);
        // Median (1 - p)·10 + p·22 = 16; spread factor
        // sqrt(1 + p(1 - p)·12²/2²) = sqrt(1 + 0.25·36) = sqrt(10).
        let f = 10f32.sqrt();
        assert!((row[levels.mid] - 16.0).abs() < 1e-4);
        assert!((row[levels.hi] - (16.0 + f * 2.0 * z)).abs() < 1e-3);
        assert!((row[levels.lo] - (16.0 - f * 2.0 * z)).abs() < 1e-3);
        assert!(row.windows(2).all(|p| p[0] <= p[1]));
        // Weight 0 changes nothing.
        let mut same = before.clone();
        mix(&mut same, 20.0, 0.0, levels);
        assert_eq!(same, before);
    }

    #[test]
    fn shocks_are_days_far_from_the_same_day_one_and_two_weeks_earlier() {
        let m = 4;
        let n = 16 * m;
        let mut v = vec![10.0f32; n];
        assert!(!shocked(m, &v, n));
        // The last season at 7: ln(0.7) = -0.36 is a shock, 8 (-0.22) is not.
        let set = |v: &mut Vec<f32>, x: f32| v[15 * m..].iter_mut().for_each(|y| *y = x);
        set(&mut v, 7.0);
        assert!(shocked(m, &v, n));
        set(&mut v, 14.0);
        assert!(shocked(m, &v, n));
        set(&mut v, 8.0);
        assert!(!shocked(m, &v, n));
        // A normal day after an odd one a week earlier is no shock.
        set(&mut v, 10.0);
        v[8 * m..9 * m].iter_mut().for_each(|y| *y = 3.0);
        assert!(!shocked(m, &v, n));
        // Too little history, and non-positive means, are never shocks.
        set(&mut v, 7.0);
        assert!(!shocked(m, &v[m..], n - m));
        set(&mut v, -1.0);
        assert!(!shocked(m, &v, n));
    }

    /// A weekly series (season 4, so a week is 28 points) with shocks.
    /// `returns`: one day in every four weeks drops to a fifth and the next
    /// day is normal again; otherwise the level moves between 1 and a fifth
    /// every four weeks and stays.
    fn shocky(returns: bool) -> Vec<f32> {
        let m = 4;
        let weeks = 60;
        let mut v: Vec<f32> = (0..weeks * 7 * m)
            .map(|i| 100.0 + 10.0 * ((i % m) as f32) + 5.0 * (((i / m) % 7) as f32))
            .collect();
        for (i, x) in v.iter_mut().enumerate() {
            let (day, week) = (i / m, i / (7 * m));
            let low = if returns {
                week % 4 == 2 && day % 7 == 3
            } else {
                (week / 4) % 2 == 1
            };
            if low {
                *x *= 0.2;
            }
        }
        v
    }

    /// Forecasts that persist the last day's level: the day before's
    /// values with a spread of 2 (what a forecaster anchored on the level
    /// of the last day predicts).
    fn persistent(cfg: &ModelConfig, v: &[f32], origins: &[usize]) -> Vec<f32> {
        let mut out = Vec::new();
        for &o in origins {
            for k in 0..cfg.horizon {
                let base = v[o + k - cfg.season];
                out.extend(
                    cfg.quantiles
                        .iter()
                        .map(|&t| base + 2.0 * normal_quantile(t) as f32),
                );
            }
        }
        out
    }

    #[test]
    fn the_weight_is_high_where_shocks_end_and_absent_where_they_last() {
        let c = cfg();
        assert!(Reversion::applies(&c));
        for returns in [true, false] {
            let v = shocky(returns);
            let origins: Vec<usize> = (0..v.len() - c.horizon)
                .filter(|&o| shocked(c.season, &v, o))
                .collect();
            assert!(origins.len() >= c.season);
            let windows: Vec<(&[f32], usize, f32)> =
                origins.iter().map(|&o| (&v[..], o, 10.0)).collect();
            let fc = persistent(&c, &v, &origins);
            let fit = Reversion::fit(&c, &windows, &fc);
            if returns {
                let w = fit.expect("a reversion where shocks end").weight;
                assert!(w >= 0.5, "weight {w}");
            } else {
                // After a lasting shift the persistence forecasts are right.
                assert_eq!(fit, None);
            }
        }
        // Too few shocked windows: none.
        let v = shocky(true);
        let o = Reversion::lookback(c.season);
        let fc = persistent(&c, &v, &[o]);
        assert_eq!(Reversion::fit(&c, &[(&v[..], o, 1.0)], &fc), None);
    }

    #[test]
    fn bad_weights_and_shapes_are_refused() {
        let c = cfg();
        assert!(Reversion { weight: 0.3 }.validate(&c).is_ok());
        assert!(Reversion { weight: 0.0 }.validate(&c).is_err());
        assert!(Reversion { weight: 1.0 }.validate(&c).is_err());
        assert!(Reversion { weight: f32::NAN }.validate(&c).is_err());
        let no_week = ModelConfig {
            lags: vec![4],
            ..cfg()
        };
        let err = Reversion { weight: 0.3 }.validate(&no_week).unwrap_err();
        assert!(err.to_string().contains("one-week lag"), "{err}");
    }
}
