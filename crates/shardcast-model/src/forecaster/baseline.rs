//! Seasonal baselines: simple statistical forecasts that the network sees as
//! known features of every horizon step (the hybrid idea of ES-RNN, where a
//! statistical model supplies level and season and the network corrects it).
//!
//! A baseline forecasts `level + shape(k)`:
//! - the **shape** is the seasonal profile: with `weeks = 0`, the mean over
//!   the last `days` seasons of each season's values minus that season's
//!   mean; with `weeks > 0`, the mean over the last `weeks` weeks of the
//!   value at the same point of the week minus the mean of the season before
//!   it (weekday and weekend profiles differ);
//! - the **level** is the mean over the last `recent` points of their value
//!   minus their own shape, so a level shift seen in the last hours carries
//!   into the forecast (with `recent` = one season and a daily shape, it is
//!   simply the last season's mean).
//!
//! Every baseline is a linear function of the history whose weights sum to
//! one, so it commutes with the window normalisation: the network's feature
//! is the baseline of the normalised values, and an exported ONNX graph
//! computes it as one matrix product ([`weights`]).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One seasonal baseline (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    /// Seasons averaged into a daily shape (used when `weeks` is 0).
    pub days: usize,
    /// Weeks (of seven seasons) averaged into a weekly shape; 0: daily shape.
    pub weeks: usize,
    /// Points whose deviation from the shape sets the level.
    pub recent: usize,
}

impl Baseline {
    /// Points of history it reads for a season of `season` steps.
    pub fn lookback(&self, season: usize) -> usize {
        if self.weeks > 0 {
            self.weeks * 7 * season + season
        } else {
            (self.days * season).max(self.recent)
        }
    }

    /// Checks it against the model's season and horizon.
    pub(crate) fn validate(&self, season: usize, horizon: usize) -> Result<()> {
        let bad = |reason: &str| Err(Error::Invalid(format!("baseline {self:?}: {reason}")));
        if season == 0 {
            return bad("baselines need a season");
        }
        if self.recent == 0 {
            return bad("recent must be at least 1");
        }
        if self.weeks == 0 && self.days == 0 {
            return bad("days or weeks must be at least 1");
        }
        if self.weeks > 0 && (horizon > 7 * season || self.recent > 7 * season) {
            return bad("a weekly shape covers horizon and recent points of at most a week");
        }
        Ok(())
    }

    /// The forecast of horizon step `k` for `k < horizon`, from the history
    /// `x(j)` (`j = -1` is the newest point) of a season of `season` steps.
    pub(crate) fn forecast(
        &self,
        season: usize,
        horizon: usize,
        x: impl Fn(isize) -> f32,
        out: &mut impl FnMut(usize, f32),
    ) {
        let m = season as isize;
        let week = 7 * m;
        let x = &x;
        // Weekly: each week's mean of the season before the same point.
        let day_means: Vec<f32> = (1..=self.weeks as isize)
            .map(|w| mean((-w * week - m..-w * week).map(x)))
            .collect();
        // Daily: the mean profile of the last `days` seasons.
        let mut profile = vec![0f32; if self.weeks > 0 { 0 } else { season }];
        if self.weeks == 0 {
            let days = self.days as isize;
            for d in 0..days {
                let block = -(d + 1) * m;
                let dm = mean((block..block + m).map(x));
                for (p, v) in profile.iter_mut().enumerate() {
                    *v += x(block + p as isize) - dm;
                }
            }
            profile.iter_mut().for_each(|v| *v /= days as f32);
        }
        let shape = |j: isize| -> f32 {
            if self.weeks > 0 {
                let n = day_means.len() as f32;
                day_means
                    .iter()
                    .enumerate()
                    .map(|(w, dm)| x(j - (w as isize + 1) * week) - dm)
                    .sum::<f32>()
                    / n
            } else {
                profile[j.rem_euclid(m) as usize]
            }
        };
        let level = mean((-(self.recent as isize)..0).map(|j| x(j) - shape(j)));
        for k in 0..horizon {
            out(k, level + shape(k as isize));
        }
    }
}

/// The mean of `it` (0 when empty), summed in f64.
pub(super) fn mean(it: impl Iterator<Item = f32>) -> f32 {
    let (mut s, mut n) = (0f64, 0usize);
    for v in it {
        s += f64::from(v);
        n += 1;
    }
    (s / n.max(1) as f64) as f32
}

/// The matrix `[window, cols]` of a forecast that is linear in the last
/// `window` points (oldest first): `forecast(x, out)` reads the history
/// `x(j)` (`j = -1` the newest point) and writes column `c` with
/// `out(c, value)`; it is run on each unit vector in turn.
pub(super) fn linear_map(
    window: usize,
    cols: usize,
    mut forecast: impl FnMut(&dyn Fn(isize) -> f32, &mut dyn FnMut(usize, f32)),
) -> Vec<f32> {
    let mut w = vec![0f32; window * cols];
    for i in 0..window {
        // The unit vector at window index i, i.e. history offset i - window.
        let at = i as isize - window as isize;
        let row = &mut w[i * cols..(i + 1) * cols];
        forecast(&|j| if j == at { 1.0 } else { 0.0 }, &mut |c, v| row[c] = v);
    }
    w
}

/// The baselines as one matrix `[window, horizon * baselines]` over the last
/// `window` points (oldest first): column `k * baselines + b` holds baseline
/// `b`'s weights for horizon step `k`.
pub fn weights(baselines: &[Baseline], season: usize, horizon: usize, window: usize) -> Vec<f32> {
    let nb = baselines.len();
    linear_map(window, horizon * nb, |x, out| {
        for (b, base) in baselines.iter().enumerate() {
            base.forecast(season, horizon, x, &mut |k, v| out(k * nb + b, v));
        }
    })
}

/// The baselines a model gets by default for a season of `season` steps,
/// horizon `horizon` and a shortest training series of `shortest` points:
/// a daily shape over up to a week with the level of the last season and
/// of the last half season, and the same with a weekly shape over up to
/// three weeks when the series hold that much beyond the windows it is
/// needed for. (Quarter-season levels and a one-week shape beside the
/// longest were tried too: more candidates made protocol F worse.)
pub fn default_baselines(season: usize, horizon: usize, shortest: usize) -> Vec<Baseline> {
    if season < 2 || horizon > 7 * season {
        return Vec::new();
    }
    let recents = [season, (season / 2).max(1)];
    let room = |lookback: usize| shortest >= lookback + 4 * season.max(horizon) + horizon;
    let days = (1..=7).rev().find(|&d| room(d * season)).unwrap_or(0);
    let mut out = Vec::new();
    if days > 0 {
        out.extend(recents.map(|recent| Baseline {
            days,
            weeks: 0,
            recent,
        }));
    }
    if let Some(most) = (1..=3).rev().find(|&w| room(w * 7 * season + season)) {
        out.extend(recents.map(|recent| Baseline {
            days: 0,
            weeks: most,
            recent,
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(b: &Baseline, season: usize, horizon: usize, hist: &[f32]) -> Vec<f32> {
        let n = hist.len() as isize;
        let mut out = vec![0f32; horizon];
        b.forecast(season, horizon, |j| hist[(n + j) as usize], &mut |k, v| {
            out[k] = v
        });
        out
    }

    #[test]
    fn daily_shape_with_last_season_level() {
        // Two seasons of 4: [0, 2, 4, 2] and [10, 12, 14, 12].
        let hist = [0.0, 2.0, 4.0, 2.0, 10.0, 12.0, 14.0, 12.0];
        let b = Baseline {
            days: 2,
            weeks: 0,
            recent: 4,
        };
        // shape [-2, 0, 2, 0], level = mean of the last season = 12
        assert_eq!(
            run(&b, 4, 6, &hist),
            vec![10.0, 12.0, 14.0, 12.0, 10.0, 12.0]
        );
    }

    #[test]
    fn recent_level_follows_a_shift() {
        // Flat, until the last two points jump by 8.
        let hist = [5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 13.0, 13.0];
        let b = Baseline {
            days: 2,
            weeks: 0,
            recent: 2,
        };
        let f = run(&b, 4, 2, &hist);
        // shape: season 1 [0,0,0,0], season 2 [-4,-4,4,4] → mean [-2,-2,2,2];
        // level = mean(13 - 2, 13 - 2) = 11; step 0 has phase 0: 11 - 2.
        assert_eq!(f, vec![9.0, 9.0]);
    }

    #[test]
    fn weekly_shape_reads_the_same_point_of_the_week() {
        let season = 2;
        // Three weeks of 14 points: a value that depends on the point of the
        // week, plus 100 per week.
        let hist: Vec<f32> = (0..42)
            .map(|i| (i % 14) as f32 + 100.0 * (i / 14) as f32)
            .collect();
        let b = Baseline {
            days: 0,
            weeks: 2,
            recent: 2,
        };
        let f = run(&b, season, 3, &hist);
        // The pattern is a ramp within each week: the next points are 0, 1, 2
        // plus the week's 300, and the level follows the latest points.
        let want = [300.0, 301.0, 302.0];
        for (a, b) in f.iter().zip(want) {
            assert!((a - b).abs() < 1e-3, "{f:?}");
        }
    }

    #[test]
    fn weights_reproduce_the_forecast_and_sum_to_one() {
        let bs = [
            Baseline {
                days: 3,
                weeks: 0,
                recent: 2,
            },
            Baseline {
                days: 0,
                weeks: 1,
                recent: 3,
            },
        ];
        let (season, horizon) = (4, 5);
        let window = bs.iter().map(|b| b.lookback(season)).max().unwrap();
        let w = weights(&bs, season, horizon, window);
        let hist: Vec<f32> = (0..window).map(|i| ((i * 7) % 11) as f32).collect();
        for (bi, b) in bs.iter().enumerate() {
            let f = run(b, season, horizon, &hist);
            for (k, fk) in f.iter().enumerate() {
                let col = k * bs.len() + bi;
                let lin: f32 = (0..window)
                    .map(|i| hist[i] * w[i * horizon * bs.len() + col])
                    .sum();
                let total: f32 = (0..window).map(|i| w[i * horizon * bs.len() + col]).sum();
                assert!((lin - fk).abs() < 1e-4, "{lin} vs {fk}");
                assert!((total - 1.0).abs() < 1e-5, "weights sum to {total}");
            }
        }
    }

    #[test]
    fn defaults_follow_the_history() {
        assert!(default_baselines(0, 12, 10_000).is_empty());
        let short = default_baselines(288, 12, 3000);
        assert!(short.iter().all(|b| b.weeks == 0 && b.days >= 1));
        let long = default_baselines(48, 48, 10_000);
        assert_eq!(long.len(), 4);
        assert!(long.iter().any(|b| b.weeks == 3));
    }

    #[test]
    fn invalid_baselines_are_refused() {
        let b = Baseline {
            days: 0,
            weeks: 0,
            recent: 1,
        };
        assert!(b.validate(24, 24).is_err());
        let b = Baseline {
            days: 1,
            weeks: 0,
            recent: 0,
        };
        assert!(b.validate(24, 24).is_err());
        assert!(
            Baseline {
                days: 1,
                weeks: 0,
                recent: 1
            }
            .validate(0, 24)
            .is_err()
        );
    }
}
