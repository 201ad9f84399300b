//! Forecast accuracy as protocol F scores it: weighted quantile loss, MASE
//! of the median, interval coverage, quantile crossings, and the
//! seasonal-naive reference forecast with Gaussian bands.

use serde::{Deserialize, Serialize};

/// Levels the WQL averages over.
pub const WQL_LEVELS: [f64; 9] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];

/// Pinball loss of quantile `q` at level `tau` for actual `y`.
pub fn pinball(y: f64, q: f64, tau: f64) -> f64 {
    let d = y - q;
    (tau * d).max((tau - 1.0) * d)
}

/// Scores of one series' forecasts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// Weighted quantile loss over levels 0.1…0.9 (`2 Σ pinball / Σ |y|`,
    /// averaged over levels).
    pub wql: f64,
    /// Mean absolute error of the median over the in-sample seasonal-naive
    /// error of the training range.
    pub mase: f64,
    /// Share of actuals inside the 10–90% interval.
    pub cov80: f64,
    /// Share inside 2.5–97.5%.
    pub cov95: f64,
    /// Adjacent quantile pairs in decreasing order.
    pub crossings: usize,
}

/// Mean absolute seasonal difference of `train` (season `m`, or 1 when the
/// range is not longer than a season): the MASE denominator.
pub fn mase_scale(train: &[f32], season: usize) -> f64 {
    let m = if train.len() > season && season > 0 {
        season
    } else {
        1
    };
    if train.len() <= m {
        return f64::NAN;
    }
    let n = train.len() - m;
    (m..train.len())
        .map(|i| f64::from((train[i] - train[i - m]).abs()))
        .sum::<f64>()
        / n as f64
}

/// Scores `forecasts` (`[n, levels.len()]`, row-major) against `actual`
/// (`[n]`). `levels` must contain 0.1…0.9 and 0.025/0.975 for the full
/// score; missing levels give NaN for the figures that need them.
pub fn score(actual: &[f32], forecasts: &[f32], levels: &[f64], mase_scale: f64) -> Score {
    let q = levels.len();
    let col = |tau: f64| levels.iter().position(|&l| (l - tau).abs() < 1e-9);
    let n = actual.len();
    let at = |i: usize, c: usize| f64::from(forecasts[i * q + c]);
    let y = |i: usize| f64::from(actual[i]);
    let denom: f64 = (0..n).map(|i| y(i).abs()).sum();
    let wql = WQL_LEVELS
        .iter()
        .map(|&tau| match col(tau) {
            Some(c) => 2.0 * (0..n).map(|i| pinball(y(i), at(i, c), tau)).sum::<f64>() / denom,
            None => f64::NAN,
        })
        .sum::<f64>()
        / WQL_LEVELS.len() as f64;
    let mase = col(0.5).map_or(f64::NAN, |c| {
        (0..n).map(|i| (y(i) - at(i, c)).abs()).sum::<f64>() / n as f64 / mase_scale
    });
    let cover = |lo: f64, hi: f64| match (col(lo), col(hi)) {
        (Some(a), Some(b)) => {
            (0..n)
                .filter(|&i| y(i) >= at(i, a) && y(i) <= at(i, b))
                .count() as f64
                / n as f64
        }
        _ => f64::NAN,
    };
    let crossings = (0..n)
        .map(|i| (1..q).filter(|&c| at(i, c) - at(i, c - 1) < -1e-9).count())
        .sum();
    Score {
        wql,
        mase,
        cov80: cover(0.1, 0.9),
        cov95: cover(0.025, 0.975),
        crossings,
    }
}

/// The standard normal quantile function (Acklam's rational approximation,
/// relative error below 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// Seasonal-naive forecasts for the window starting at `start` (the first
/// forecast index into `values`, whose first `train_len` points are the
/// training range): the value one season before, repeated, with Gaussian
/// bands whose width is the RMS seasonal difference of the training range,
/// growing with the square root of the seasons ahead. Returns
/// `[steps, levels.len()]`.
pub fn seasonal_naive(
    values: &[f32],
    train_len: usize,
    season: usize,
    start: usize,
    steps: usize,
    levels: &[f64],
) -> Vec<f32> {
    let train = &values[..train_len];
    let m = if train.len() > season && season > 0 {
        season
    } else {
        1
    };
    let n = train.len().saturating_sub(m).max(1);
    let sigma = ((m..train.len())
        .map(|i| f64::from(train[i] - train[i - m]).powi(2))
        .sum::<f64>()
        / n as f64)
        .sqrt();
    let z: Vec<f64> = levels.iter().map(|&l| normal_quantile(l)).collect();
    let mut out = Vec::with_capacity(steps * levels.len());
    for k in 0..steps {
        let src = start - m + k % m;
        let ahead = (k / m + 1) as f64;
        let base = f64::from(values[src]);
        out.extend(
            z.iter()
                .map(|&zq| (base + sigma * ahead.sqrt() * zq) as f32),
        );
    }
    out
}

/// Geometric mean of `a[i] / b[i]` over pairs where both are positive and
/// finite.
pub fn gmean_ratio(a: &[f64], b: &[f64]) -> f64 {
    let logs: Vec<f64> = a
        .iter()
        .zip(b)
        .filter(|(x, y)| x.is_finite() && y.is_finite() && **x > 0.0 && **y > 0.0)
        .map(|(x, y)| (x / y).ln())
        .collect();
    if logs.is_empty() {
        return f64::NAN;
    }
    (logs.iter().sum::<f64>() / logs.len() as f64).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinball_and_scores_match_hand_computation() {
        assert!((pinball(10.0, 8.0, 0.9) - 1.8).abs() < 1e-12);
        assert!((pinball(10.0, 12.0, 0.9) - 0.2).abs() < 1e-12);
        // Two points, every level predicting 1.0 and 3.0 respectively.
        let levels = [
            0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.975,
        ];
        let actual = [2.0f32, 2.0];
        let mut f = vec![1.0f32; 13];
        f.extend(vec![3.0f32; 13]);
        let s = score(&actual, &f, &levels, 0.5);
        // Point 1: y - q = 1 → pinball τ; point 2: y - q = -1 → 1 - τ. Sum 1 per level.
        // WQL = mean over levels of 2·1 / (|2| + |2|) = 0.5.
        assert!((s.wql - 0.5).abs() < 1e-12);
        // MASE: mean |2 - median| = 1, over 0.5.
        assert!((s.mase - 2.0).abs() < 1e-12);
        assert_eq!(s.cov80, 0.0);
        assert_eq!(s.crossings, 0);
        let mut crossed = f.clone();
        crossed[0] = 5.0;
        crossed[25] = 0.0;
        assert_eq!(score(&actual, &crossed, &levels, 1.0).crossings, 2);
        assert!((mase_scale(&[1.0, 2.0, 4.0, 8.0], 2) - 4.5).abs() < 1e-12);
        assert!((mase_scale(&[1.0, 2.0], 5) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn normal_quantiles_are_accurate() {
        for (p, z) in [
            (0.5, 0.0),
            (0.975, 1.959_963_984_540_054),
            (0.9, 1.281_551_565_544_600_9),
            (0.025, -1.959_963_984_540_054),
            (1e-6, -4.753_424_308_822_899),
        ] {
            assert!(
                (normal_quantile(p) - z).abs() < 1e-8,
                "{p}: {}",
                normal_quantile(p)
            );
        }
    }

    #[test]
    fn seasonal_naive_repeats_the_last_season_with_widening_bands() {
        let values: Vec<f32> = vec![1.0, 2.0, 3.0, 1.0, 2.0, 5.0, 9.0, 9.0, 9.0];
        // train = first 6, season 3: diffs 0, 0, 2 → sigma = sqrt(4/3)
        let f = seasonal_naive(&values, 6, 3, 6, 4, &[0.5, 0.975]);
        assert_eq!(f.len(), 8);
        assert_eq!([f[0], f[2], f[4], f[6]], [1.0, 2.0, 5.0, 1.0]);
        let sigma = (4.0f64 / 3.0).sqrt();
        assert!((f64::from(f[1]) - (1.0 + 1.959_964 * sigma)).abs() < 1e-4);
        assert!((f64::from(f[7]) - (1.0 + 1.959_964 * sigma * 2f64.sqrt())).abs() < 1e-4);
        assert!((gmean_ratio(&[1.0, 8.0], &[2.0, 2.0]) - 2f64.sqrt()).abs() < 1e-12);
    }
}
