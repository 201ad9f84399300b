//! The distribution of the number of shards a forecast demand needs over a
//! look-ahead window ("80% probability of needing 2 more shards within the
//! next hour").
//!
//! Each step's demand distribution is read off its quantiles: linear
//! between the forecast levels, and beyond the outermost levels the slope of
//! the outermost segment continued until the probability reaches 0 or 1.
//! The steps of a window are taken as comonotone (their forecast errors move
//! together, which is what level errors of a recurrent forecaster do), so
//! the probability that `n` shards cover the whole window is the smallest
//! over its steps of the probability that `n` shards cover that step.

use shardcast_core::QuantileForecast;

use crate::error::{Error, Result};
use crate::scale::shards_needed;

/// Most shard counts a distribution may span.
pub const MAX_SPAN: u32 = 10_000;

/// The cumulative distribution of the most shards needed at any step of a
/// window.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardDemand {
    /// `(n, P(needed ≤ n))`, `n` increasing by one, from a count with no
    /// chance of sufficing (or 0) to the first with probability ≥ 0.999.
    pub cdf: Vec<(u32, f64)>,
    /// Shards running now.
    pub current: u32,
    /// Steps of the window.
    pub steps: usize,
}

impl ShardDemand {
    /// Probability that more than the current shards are needed.
    pub fn probability_more(&self) -> f64 {
        1.0 - self.probability_at_most(self.current)
    }

    /// `P(needed ≤ n)`.
    pub fn probability_at_most(&self, n: u32) -> f64 {
        let Some(&(first, _)) = self.cdf.first() else {
            return 1.0;
        };
        match self.cdf.get((n.saturating_sub(first)) as usize) {
            _ if n < first => 0.0,
            Some(&(_, p)) => p,
            // Past the last count, which covers the window with p ≥ 0.999.
            None => 1.0,
        }
    }

    /// The fewest shards that cover the window with probability `level`.
    pub fn shards_at(&self, level: f64) -> u32 {
        self.cdf
            .iter()
            .find(|(_, p)| *p >= level)
            .or(self.cdf.last())
            .map_or(0, |(n, _)| *n)
    }
}

/// `P(demand ≤ x)` for one step with quantile `values` at `levels`.
pub fn demand_cdf(levels: &[f64], values: &[f32], x: f64) -> f64 {
    let k = levels.len();
    let q = |i: usize| f64::from(values[i]);
    if k == 1 {
        return if x >= q(0) { 1.0 } else { 0.0 };
    }
    if x < q(0) {
        let run = q(1) - q(0);
        if run <= 0.0 {
            return 0.0;
        }
        return (levels[0] - (q(0) - x) * (levels[1] - levels[0]) / run).max(0.0);
    }
    if x >= q(k - 1) {
        let run = q(k - 1) - q(k - 2);
        if run <= 0.0 {
            return 1.0;
        }
        return (levels[k - 1] + (x - q(k - 1)) * (levels[k - 1] - levels[k - 2]) / run).min(1.0);
    }
    // The last level whose value is at most x; x < q(k-1) so i + 1 exists.
    let i = (0..k - 1).rev().find(|&i| q(i) <= x).unwrap_or(0);
    let run = q(i + 1) - q(i);
    if run <= 0.0 {
        return levels[i];
    }
    levels[i] + (x - q(i)) / run * (levels[i + 1] - levels[i])
}

/// Demand where a step's distribution reaches probability 0 (lower) or 1
/// (upper), by the same tail rule as [`demand_cdf`].
fn support(levels: &[f64], values: &[f32]) -> (f64, f64) {
    let k = levels.len();
    let q = |i: usize| f64::from(values[i]);
    if k == 1 {
        return (q(0), q(0));
    }
    let lo = q(0) - levels[0] * (q(1) - q(0)) / (levels[1] - levels[0]);
    let hi =
        q(k - 1) + (1.0 - levels[k - 1]) * (q(k - 1) - q(k - 2)) / (levels[k - 1] - levels[k - 2]);
    (lo, hi)
}

/// The distribution of shards needed over the first `lookahead` steps of
/// `forecast` (all of them when `lookahead` is 0 or beyond the horizon),
/// when one shard serves `per_shard` units of demand.
pub fn shard_demand(
    forecast: &QuantileForecast,
    per_shard: f64,
    lookahead: usize,
    current: u32,
) -> Result<ShardDemand> {
    if !(per_shard.is_finite() && per_shard > 0.0) {
        return Err(Error::InvalidValue {
            field: "shard_capacity",
            value: per_shard,
            reason: "must be a positive number",
        });
    }
    let steps = match lookahead {
        0 => forecast.horizon(),
        n => n.min(forecast.horizon()),
    };
    let levels: Vec<f64> = forecast.levels().levels().iter().map(|l| l.get()).collect();
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for i in 0..steps {
        let (a, b) = support(&levels, forecast.step_values(i));
        lo = lo.min(a);
        hi = hi.max(b);
    }
    if hi / per_shard >= f64::from(u32::MAX) {
        return Err(Error::InvalidValue {
            field: "shard_capacity",
            value: per_shard,
            reason: "too small: the demand needs more shards than can be counted",
        });
    }
    // Shards that surely do not suffice for the step with the lowest demand,
    // up to the count that covers every step's upper support.
    let first = (lo.max(0.0) / per_shard).floor().max(0.0) as u32;
    let first = first.saturating_sub(1);
    let last = shards_needed(hi.max(0.0), per_shard).max(first);
    if last - first > MAX_SPAN {
        return Err(Error::InvalidValue {
            field: "shard_capacity",
            value: per_shard,
            reason: "too small: the demand distribution spans more than 10000 shard counts",
        });
    }
    let mut cdf = Vec::new();
    for n in first..=last {
        let x = f64::from(n) * per_shard;
        let p = (0..steps)
            .map(|i| demand_cdf(&levels, forecast.step_values(i), x))
            .fold(1.0_f64, f64::min);
        cdf.push((n, p));
        if p >= 0.999 {
            break;
        }
    }
    Ok(ShardDemand {
        cdf,
        current,
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardcast_core::{GridStep, QuantileSet, Timestamp};

    fn forecast(levels: &[f64], rows: &[&[f32]]) -> QuantileForecast {
        QuantileForecast::new(
            QuantileSet::new(levels).unwrap(),
            Timestamp(0),
            GridStep::from_millis(60_000).unwrap(),
            rows.concat(),
        )
        .unwrap()
    }

    #[test]
    fn cdf_interpolates_between_levels_and_extends_the_tails() {
        let levels = [0.1, 0.5, 0.9];
        let values = [10.0, 20.0, 30.0];
        assert!((demand_cdf(&levels, &values, 20.0) - 0.5).abs() < 1e-12);
        assert!((demand_cdf(&levels, &values, 25.0) - 0.7).abs() < 1e-12);
        // Below 10 the slope 0.4/10 continues: 0 at 7.5.
        assert!((demand_cdf(&levels, &values, 8.75) - 0.05).abs() < 1e-12);
        assert_eq!(demand_cdf(&levels, &values, 5.0), 0.0);
        // Above 30: 1 at 32.5.
        assert!((demand_cdf(&levels, &values, 31.25) - 0.95).abs() < 1e-12);
        assert_eq!(demand_cdf(&levels, &values, 40.0), 1.0);
        // A degenerate forecast is a step function.
        assert_eq!(demand_cdf(&levels, &[5.0, 5.0, 5.0], 4.9), 0.0);
        assert_eq!(demand_cdf(&levels, &[5.0, 5.0, 5.0], 5.0), 1.0);
    }

    #[test]
    fn window_probability_is_the_smallest_over_steps() {
        let levels = [0.1, 0.5, 0.9];
        // Step 0 needs less than step 1; the window is ruled by step 1.
        let f = forecast(&levels, &[&[10.0, 20.0, 30.0], &[30.0, 40.0, 50.0]]);
        let d = shard_demand(&f, 10.0, 0, 3).unwrap();
        assert_eq!(d.steps, 2);
        // P(4 shards = 40 units) = min(F0(40) = 1, F1(40) = 0.5).
        assert!((d.probability_at_most(4) - 0.5).abs() < 1e-12);
        assert_eq!(d.shards_at(0.5), 4);
        assert_eq!(d.shards_at(0.9), 5);
        // 3 shards = 30 units: F1(30) = 0.1.
        assert!((d.probability_more() - 0.9).abs() < 1e-12);
        // The CDF rises, ends at ≥ 0.999 and counts up by one.
        assert!(
            d.cdf
                .windows(2)
                .all(|w| w[1].0 == w[0].0 + 1 && w[1].1 >= w[0].1)
        );
        assert!(d.cdf.last().unwrap().1 >= 0.999);
        // A one-step window sees step 0 only.
        let d1 = shard_demand(&f, 10.0, 1, 3).unwrap();
        assert!((d1.probability_at_most(2) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn bad_capacity_is_refused() {
        let f = forecast(&[0.5], &[&[10.0]]);
        assert!(shard_demand(&f, 0.0, 0, 1).is_err());
        assert!(shard_demand(&f, f64::NAN, 0, 1).is_err());
        assert!(shard_demand(&f, 1e-9, 0, 1).is_err());
        let d = shard_demand(&f, 4.0, 0, 1).unwrap();
        assert_eq!(d.shards_at(0.999), 3);
        // A wide distribution over a tiny capacity spans too many counts.
        let wide = forecast(&[0.1, 0.9], &[&[0.0, 1000.0]]);
        let err = shard_demand(&wide, 0.01, 0, 1).unwrap_err().to_string();
        assert!(err.contains("10000"), "{err}");
    }
}
