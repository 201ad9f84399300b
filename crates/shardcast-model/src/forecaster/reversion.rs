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
//! The return scenario is the forecast's own distribution moved so that its
//! median is last week's value at each horizon step, and the mixture's
//! quantiles are read off its CDF exactly (see [`Mixer`]). Where the two
//! scenarios are far apart, the bands take in both; where they agree,
//! little changes. Quantiles of one CDF stay ordered, and an ONNX graph
//! computes the same with elementwise operators and reductions.
//!
//! The weight is fitted after training, on a grid, by the pinball loss over
//! every level on the training windows that follow a shock. The persisting
//! scenario there is the hybrid's statistical forecast, not the network's:
//! the network has trained on those windows and would forecast them too
//! well to ask for any return. The reversion needs weekly structure (the
//! one-week lag among the inputs), since otherwise last week's values are
//! no scenario. With fewer shocked windows than a season of origins there
//! is no reversion.

use serde::{Deserialize, Serialize};

use super::config::ModelConfig;
use crate::error::{Error, Result};

/// Smallest `|ln(last season's mean / the same season a week earlier)|`
/// (and two weeks earlier) that counts as a shock (about a quarter up or
/// down).
pub const SHOCK: f64 = 0.25;
/// Weights of the return scenario tried when fitting.
const WEIGHTS: [f32; 10] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];
/// Smallest gap between neighbouring quantiles that the CDF divides by.
pub const MIN_GAP: f32 = 1e-6;

/// The fitted reversion (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reversion {
    /// Weight of the return to last week's values after a shock, in (0, 1).
    pub weight: f32,
}

/// The mixture of a forecast with its copy moved onto the return
/// scenario, at one horizon step.
///
/// A row of quantiles stands for the distribution whose CDF is linear
/// between them, its outer segments extended with the same slopes down to
/// 0 and up to 1 (two extra knots, at levels 0 and 1). The return scenario
/// is the same distribution shifted so that its median is last week's
/// value. The mixture's CDF `(1 - p) F(x) + p F(x - shift)` is then linear
/// between the knots of both, so each of its quantiles is found exactly:
/// between the highest knot whose CDF is below the level and the lowest
/// whose CDF is not, by linear interpolation. That needs no sorting (a
/// largest and a smallest value under a mask), so the ONNX graph does the
/// same with elementwise operators and reductions.
#[derive(Debug, Clone)]
pub struct Mixer {
    /// Index of the median.
    pub mid: usize,
    /// The quantile levels.
    pub taus: Vec<f32>,
    /// `[q + 1]` level steps between the extended knots (from level 0 to
    /// the first level, …, from the last to 1).
    pub steps: Vec<f32>,
    /// The extra knots sit this many first (last) gaps below the first
    /// (above the last) quantile.
    pub below: f32,
    /// See `below`.
    pub above: f32,
    knots: Vec<f32>,
    gaps: Vec<f32>,
    /// The knots of both scenarios and the mixture's CDF there.
    points: Vec<(f32, f32)>,
}

impl Mixer {
    /// The mixer of `cfg`'s levels; `None` with fewer than two.
    pub fn of(cfg: &ModelConfig) -> Option<Self> {
        let taus: Vec<f32> = cfg.quantiles.iter().map(|&t| t as f32).collect();
        let q = taus.len();
        if q < 2 {
            return None;
        }
        let mut steps = Vec::with_capacity(q + 1);
        steps.push(taus[0]);
        steps.extend(taus.windows(2).map(|w| w[1] - w[0]));
        steps.push(1.0 - taus[q - 1]);
        Some(Self {
            mid: cfg.median_index(),
            below: taus[0] / (taus[1] - taus[0]),
            above: (1.0 - taus[q - 1]) / (taus[q - 1] - taus[q - 2]),
            taus,
            steps,
            knots: vec![0.0; q + 2],
            gaps: vec![0.0; q + 1],
            points: Vec::with_capacity(2 * (q + 2)),
        })
    }

    /// Sets the extended knots and their gaps from `row`.
    fn extend(&mut self, row: &[f32]) {
        let q = row.len();
        let gap = |a: f32, b: f32| (b - a).max(MIN_GAP);
        self.knots[0] = row[0] - gap(row[0], row[1]) * self.below;
        self.knots[1..=q].copy_from_slice(row);
        self.knots[q + 1] = row[q - 1] + gap(row[q - 2], row[q - 1]) * self.above;
        for j in 0..=q {
            self.gaps[j] = gap(self.knots[j], self.knots[j + 1]);
        }
    }

    /// The CDF of the extended row, shifted by `shift`, at `x`.
    fn cdf(&self, x: f32, shift: f32) -> f32 {
        self.steps
            .iter()
            .zip(&self.knots)
            .zip(&self.gaps)
            .map(|((&step, &k), &g)| step * ((x - (k + shift)) / g).clamp(0.0, 1.0))
            .sum()
    }

    /// Mixes one horizon step's quantiles `row` with the return scenario
    /// whose median is `back` (last week's value at that step) at weight
    /// `p`, in place. Nothing changes at weight 0.
    pub(crate) fn mix(&mut self, row: &mut [f32], back: f32, p: f32) {
        if p <= 0.0 {
            return;
        }
        let shift = back - row[self.mid];
        self.extend(row);
        let n = self.knots.len();
        self.points.clear();
        for b in 0..2 * n {
            let x = if b < n {
                self.knots[b]
            } else {
                self.knots[b - n] + shift
            };
            let c = (1.0 - p) * self.cdf(x, 0.0) + p * self.cdf(x, shift);
            self.points.push((x, c));
        }
        for (v, &tau) in row.iter_mut().zip(&self.taus) {
            let (mut xa, mut ca) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
            let (mut xb, mut cb) = (f32::INFINITY, f32::INFINITY);
            for &(x, c) in &self.points {
                if c < tau {
                    xa = xa.max(x);
                    ca = ca.max(c);
                } else {
                    xb = xb.min(x);
                    cb = cb.min(c);
                }
            }
            *v = xa + (tau - ca) / (cb - ca) * (xb - xa);
        }
    }
}

impl Reversion {
    /// Points of history before an origin that the shock test reads.
    pub fn lookback(season: usize) -> usize {
        15 * season
    }

    /// Whether the model's shape allows a reversion: a season, the one-week
    /// lag among the inputs, a horizon within a week, and two quantile
    /// levels or more.
    pub(crate) fn applies(cfg: &ModelConfig) -> bool {
        cfg.season > 0
            && cfg.lags.contains(&(7 * cfg.season))
            && cfg.horizon <= 7 * cfg.season
            && cfg.quantiles.len() >= 2
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
                 within a week and two quantile levels or more"
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
        let mut mixer = Mixer::of(cfg)?;
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
                        mixer.mix(&mut row, values[origin + k - 7 * m], p);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::normal_quantile;

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
    fn far_apart_scenarios_split_the_levels_between_them() {
        let c = cfg();
        let mut mixer = Mixer::of(&c).unwrap();
        // Quantiles 100·τ: with the extended outer segments, uniform on
        // [0, 100]. The return scenario is uniform on [1000, 1100]; at
        // weight 1/2 the mixture's τ-quantile is 200·τ up to the median
        // (the lowest point where the CDF reaches 1/2), then
        // 1000 + 100·(2τ - 1).
        let row: Vec<f32> = c.quantiles.iter().map(|&t| 100.0 * t as f32).collect();
        let mut mixed = row.clone();
        mixer.mix(&mut mixed, 1050.0, 0.5);
        for (&t, &v) in c.quantiles.iter().zip(&mixed) {
            let want = if t <= 0.5 {
                200.0 * t
            } else {
                1000.0 + 100.0 * (2.0 * t - 1.0)
            };
            assert!(
                (f64::from(v) - want).abs() < 1e-2,
                "level {t}: {v} against {want}"
            );
        }
        // Weight 0 changes nothing.
        let mut same = row.clone();
        mixer.mix(&mut same, 1050.0, 0.0);
        assert_eq!(same, row);
    }

    #[test]
    fn mixture_quantiles_are_ordered_and_invert_its_cdf() {
        let c = cfg();
        let mut mixer = Mixer::of(&c).unwrap();
        let row: Vec<f32> = c
            .quantiles
            .iter()
            .map(|&t| 10.0 + 2.0 * normal_quantile(t) as f32 + if t > 0.5 { 1.0 } else { 0.0 })
            .collect();
        for (back, p) in [(12.0, 0.3), (3.0, 0.7), (10.5, 0.5)] {
            let mut mixed = row.clone();
            mixer.mix(&mut mixed, back, p);
            assert!(mixed.windows(2).all(|w| w[0] <= w[1]), "{mixed:?}");
            // Between the two medians; wider than the forecast alone.
            let (lo, hi) = (row[mixer.mid].min(back), row[mixer.mid].max(back));
            assert!(mixed[mixer.mid] >= lo && mixed[mixer.mid] <= hi);
            assert!(mixed[12] - mixed[0] >= row[12] - row[0] - 1e-4);
            // The mixture's CDF at each of its quantiles is that level.
            let shift = back - row[mixer.mid];
            mixer.extend(&row);
            for (&v, &t) in mixed.iter().zip(&mixer.taus) {
                let cdf = (1.0 - p) * mixer.cdf(v, 0.0) + p * mixer.cdf(v, shift);
                assert!((cdf - t).abs() < 1e-4, "level {t}: cdf {cdf}");
            }
        }
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
