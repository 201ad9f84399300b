//! The statistical forecaster of the hybrid: level plus seasonal shape, one
//! of a small family chosen per model on its latest training windows.
//!
//! A forecast of step `k` from origin `o` (season `m`) is
//! `level + (1 - weekly_share) * daily(k) + weekly_share * weekly(k)`:
//! - `daily` is the mean over the last `days` seasons of each season's
//!   values minus that season's mean, at the phase of `k`;
//! - `weekly` (with `weeks > 0`) is the mean over the last `weeks` weeks of
//!   the value at the same point of the week minus the mean of the season
//!   before it (weekday and weekend profiles differ);
//! - `level` moves from the last season's mean towards the recent level,
//!   the mean over the last `recent` points of their value minus their daily
//!   shape, by `recent_share`: a shift seen in the last hours carries into
//!   the forecast, with `recent_share < 1` only part of it.
//!
//! Every term is linear in the history with weights summing to one, so the
//! forecast commutes with the window normalisation: it is computed on the
//! normalised window, and an ONNX graph computes it as one matrix product.
//! Unlike the model's [`Baseline`](super::Baseline) features this family is
//! not an input of the network, so trying many members costs no training.

use serde::{Deserialize, Serialize};

use super::baseline::{linear_map, mean};
use crate::error::{Error, Result};

/// One member of the family (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statistical {
    /// Seasons averaged into the daily shape.
    pub days: usize,
    /// Weeks (of seven seasons) averaged into the weekly shape; 0: none.
    pub weeks: usize,
    /// Share of the weekly shape (0 when `weeks` is 0).
    pub weekly_share: f32,
    /// Points whose deviation from the daily shape give the recent level.
    pub recent: usize,
    /// How far the level moves from the last season's mean to the recent
    /// level (0..=1).
    pub recent_share: f32,
}

impl Statistical {
    /// Points of history it reads for a season of `season` steps.
    pub fn lookback(&self, season: usize) -> usize {
        let weekly = if self.weeks > 0 {
            self.weeks * 7 * season + season
        } else {
            0
        };
        (self.days * season)
            .max(self.recent)
            .max(season)
            .max(weekly)
    }

    /// Checks it against the model's season and horizon.
    pub(crate) fn validate(&self, season: usize, horizon: usize) -> Result<()> {
        let share = |s: f32| (0.0..=1.0).contains(&s);
        let ok = season >= 2
            && self.days >= 1
            && self.recent >= 1
            && share(self.weekly_share)
            && share(self.recent_share)
            && (self.weeks > 0 || self.weekly_share == 0.0)
            && (self.weeks == 0 || horizon <= 7 * season);
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "statistical forecaster {self:?} does not fit season {season} and horizon {horizon}"
            )))
        }
    }

    /// The forecast of horizon step `k` for `k < horizon`, from the history
    /// `x(j)` (`j = -1` is the newest point).
    pub(crate) fn forecast(
        &self,
        season: usize,
        horizon: usize,
        x: impl Fn(isize) -> f32,
        out: &mut impl FnMut(usize, f32),
    ) {
        let m = season as isize;
        let x = &x;
        let mut profile = vec![0f32; season];
        for d in 0..self.days as isize {
            let block = -(d + 1) * m;
            let dm = mean((block..block + m).map(x));
            for (p, v) in profile.iter_mut().enumerate() {
                *v += x(block + p as isize) - dm;
            }
        }
        profile.iter_mut().for_each(|v| *v /= self.days as f32);
        let daily = |j: isize| profile[j.rem_euclid(m) as usize];
        let last_season = mean((-m..0).map(x));
        let recent = mean((-(self.recent as isize)..0).map(|j| x(j) - daily(j)));
        let level = last_season + self.recent_share * (recent - last_season);
        let week = 7 * m;
        let day_means: Vec<f32> = (1..=self.weeks as isize)
            .map(|w| mean((-w * week - m..-w * week).map(x)))
            .collect();
        for k in 0..horizon {
            let j = k as isize;
            let mut shape = daily(j);
            if !day_means.is_empty() {
                let weekly = day_means
                    .iter()
                    .enumerate()
                    .map(|(w, dm)| x(j - (w as isize + 1) * week) - dm)
                    .sum::<f32>()
                    / day_means.len() as f32;
                shape += self.weekly_share * (weekly - shape);
            }
            out(k, level + shape);
        }
    }

    /// Its weights `[window, horizon]` over the last `window` points (oldest
    /// first): the forecast is the window times this matrix.
    pub fn weights(&self, season: usize, horizon: usize, window: usize) -> Vec<f32> {
        linear_map(window, horizon, |x, out| {
            self.forecast(season, horizon, x, &mut |k, v| out(k, v));
        })
    }
}

/// The family tried for a season of `season` steps and horizon `horizon`,
/// limited to members reading at most `max_lookback` points: daily shapes
/// over 1, 3, 7 or 14 seasons, weekly shapes over 1 to 3 weeks at half or
/// full share, recent levels over a quarter, half or whole season, moved
/// half or fully towards.
pub(crate) fn candidates(season: usize, horizon: usize, max_lookback: usize) -> Vec<Statistical> {
    let mut out = Vec::new();
    if season < 2 {
        return out;
    }
    let mut recents = vec![(season / 4).max(1), (season / 2).max(1), season];
    recents.dedup();
    for days in [1, 3, 7, 14] {
        for weeks in 0..=3 {
            let weekly_shares: &[f32] = if weeks == 0 { &[0.0] } else { &[0.5, 1.0] };
            for &weekly_share in weekly_shares {
                for &recent in &recents {
                    let shares: &[f32] = if recent < season { &[0.5, 1.0] } else { &[1.0] };
                    for &recent_share in shares {
                        let c = Statistical {
                            days,
                            weeks,
                            weekly_share,
                            recent,
                            recent_share,
                        };
                        if c.lookback(season) <= max_lookback && c.validate(season, horizon).is_ok()
                        {
                            out.push(c);
                        }
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &Statistical, season: usize, h: usize, hist: &[f32]) -> Vec<f32> {
        let n = hist.len() as isize;
        let mut out = vec![0f32; h];
        s.forecast(season, h, |j| hist[(n + j) as usize], &mut |k, v| {
            out[k] = v
        });
        out
    }

    #[test]
    fn repeats_a_clean_season_and_carries_a_level_shift() {
        let shape = [1.0f32, 3.0, 2.0, 6.0];
        let hist: Vec<f32> = (0..16).map(|i| shape[i % 4]).collect();
        let s = Statistical {
            days: 3,
            weeks: 0,
            weekly_share: 0.0,
            recent: 2,
            recent_share: 1.0,
        };
        assert_eq!(run(&s, 4, 6, &hist), vec![1.0, 3.0, 2.0, 6.0, 1.0, 3.0]);
        // The last two points 4 higher. Profile over 3 seasons:
        // (-8, -2, -1, 11) / 3; last season's mean 5; recent level 19 / 3.
        let mut up = hist.clone();
        up[14] += 4.0;
        up[15] += 4.0;
        let f = run(&s, 4, 1, &up);
        assert!((f[0] - 11.0 / 3.0).abs() < 1e-5, "{f:?}");
        // Half the way from 5 to 19 / 3.
        let half = Statistical {
            recent_share: 0.5,
            ..s
        };
        let f = run(&half, 4, 1, &up);
        assert!((f[0] - 3.0).abs() < 1e-5, "{f:?}");
    }

    #[test]
    fn weekly_shape_follows_the_same_day_last_week() {
        // Season 2, week 14 points: day 3 of the week has a spike.
        let week: Vec<f32> = (0..14)
            .map(|i| if i / 2 == 3 { 10.0 } else { 1.0 })
            .collect();
        let hist: Vec<f32> = week.iter().cycle().take(42).copied().collect();
        let s = Statistical {
            days: 1,
            weeks: 2,
            weekly_share: 1.0,
            recent: 2,
            recent_share: 1.0,
        };
        // Three weeks of history: the next days are days 0, 1, 2, 3.
        let f = run(&s, 2, 8, &hist);
        assert_eq!(f, vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 10.0, 10.0]);
    }

    #[test]
    fn weights_reproduce_the_forecast_and_sum_to_one() {
        let hist: Vec<f32> = (0..40)
            .map(|i| ((i * 7) % 11) as f32 + 0.1 * i as f32)
            .collect();
        for s in candidates(4, 6, 40) {
            let w = s.weights(4, 6, 40);
            let f = run(&s, 4, 6, &hist);
            for k in 0..6 {
                let dot: f32 = (0..40).map(|i| hist[i] * w[i * 6 + k]).sum();
                let sum: f32 = (0..40).map(|i| w[i * 6 + k]).sum();
                assert!((dot - f[k]).abs() < 1e-3, "{s:?} step {k}");
                assert!((sum - 1.0).abs() < 1e-5, "{s:?} step {k}");
            }
        }
    }

    #[test]
    fn candidates_respect_the_lookback_and_reject_bad_members() {
        let all = candidates(24, 24, usize::MAX);
        assert!(all.len() > 100);
        let short = candidates(24, 24, 7 * 24);
        assert!(!short.is_empty());
        assert!(
            short
                .iter()
                .all(|c| c.lookback(24) <= 7 * 24 && c.weeks == 0)
        );
        assert!(candidates(1, 4, usize::MAX).is_empty());
        let bad = Statistical { days: 0, ..all[0] };
        assert!(bad.validate(24, 24).is_err());
        let share = Statistical {
            recent_share: 1.5,
            ..all[0]
        };
        assert!(share.validate(24, 24).is_err());
    }
}
