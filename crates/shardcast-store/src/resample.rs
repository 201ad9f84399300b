//! Resampling irregular points onto a regular grid, and cutting grids into
//! training windows as plain `f32` buffers.
//!
//! The grid follows protocol F of the benchmark: bins `[t, t + Δ)` aligned
//! to the UTC epoch, from the bin of the first point to the bin of the last,
//! each holding an aggregate of the raw points that fall in it; empty bins
//! are filled as the [`GapFill`] says (linear interpolation between the
//! neighbouring filled bins for the protocol). A coarser grid of a grid
//! (the protocol's hourly NAB series are hourly means of the 5-minute grid)
//! is the same function applied to the finer grid's points. [`infer_step`]
//! tells the step a raw series was sampled at.

use serde::{Deserialize, Serialize};
use shardcast_core::{GridStep, Timestamp};

use crate::error::{Error, Result};

/// How the points of one bin are combined.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Agg {
    /// Arithmetic mean.
    Mean,
    /// Sum.
    Sum,
    /// Maximum.
    Max,
    /// Minimum.
    Min,
    /// A percentile in `[0, 100]`, linear between order statistics.
    Percentile(f64),
}

impl std::str::FromStr for Agg {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "mean" | "avg" => Agg::Mean,
            "sum" => Agg::Sum,
            "max" => Agg::Max,
            "min" => Agg::Min,
            _ => match s.strip_prefix('p').and_then(|p| p.parse::<f64>().ok()) {
                Some(p) if (0.0..=100.0).contains(&p) => Agg::Percentile(p),
                _ => {
                    return Err(Error::Grid {
                        reason: format!(
                            "unknown aggregation {s:?}: use mean, sum, max, min or pNN (e.g. p95)"
                        ),
                    });
                }
            },
        })
    }
}

/// How bins without points are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GapFill {
    /// Linear interpolation between the nearest filled bins (protocol F).
    #[default]
    Linear,
    /// Zero (natural for counts aggregated by sum).
    Zero,
    /// The previous filled bin's value.
    Previous,
    /// NaN, for callers that handle gaps themselves.
    Missing,
}

/// Values on a regular grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    /// Start of the first bin.
    pub start: Timestamp,
    /// Bin width.
    pub step: GridStep,
    /// One value per bin.
    pub values: Vec<f64>,
    /// Bins that held no raw point (filled by the gap rule).
    pub filled: usize,
}

impl Grid {
    /// Start time of bin `i`.
    pub fn time_of(&self, i: usize) -> Timestamp {
        Timestamp(self.start.millis() + self.step.millis() * i as i64)
    }

    /// Bin start times.
    pub fn timestamps(&self) -> Vec<i64> {
        (0..self.values.len())
            .map(|i| self.time_of(i).millis())
            .collect()
    }

    /// The values as `f32`, the model's input type.
    pub fn to_f32(&self) -> Vec<f32> {
        self.values.iter().map(|&v| v as f32).collect()
    }

    /// Resamples this grid onto a coarser one (e.g. 5 min → 1 h).
    pub fn coarsen(&self, step: GridStep, agg: Agg) -> Result<Grid> {
        resample(&self.timestamps(), &self.values, step, agg, GapFill::Linear)
    }
}

/// Largest number of bins a grid may have (about 19 years of minutes).
const MAX_BINS: i64 = 10_000_000;

/// Puts points `(ts[i], values[i])` on a grid of `step`. Timestamps need not
/// be sorted; NaN values count as absent.
pub fn resample(
    ts: &[i64],
    values: &[f64],
    step: GridStep,
    agg: Agg,
    gap: GapFill,
) -> Result<Grid> {
    if ts.len() != values.len() {
        return Err(Error::Grid {
            reason: format!("{} timestamps but {} values", ts.len(), values.len()),
        });
    }
    let points: Vec<(i64, f64)> = ts
        .iter()
        .copied()
        .zip(values.iter().copied())
        .filter(|p| !p.1.is_nan())
        .collect();
    let (Some(lo), Some(hi)) = (
        points.iter().map(|p| p.0).min(),
        points.iter().map(|p| p.0).max(),
    ) else {
        return Err(Error::Grid {
            reason: "the series has no points".into(),
        });
    };
    let w = step.millis();
    let first = lo.div_euclid(w);
    let n = hi.div_euclid(w) - first + 1;
    if n > MAX_BINS {
        return Err(Error::Grid {
            reason: format!("{n} bins of {step} is more than the limit of {MAX_BINS}"),
        });
    }
    let n = n as usize;
    let bin = |t: i64| (t.div_euclid(w) - first) as usize;
    let mut out = vec![f64::NAN; n];
    match agg {
        Agg::Mean | Agg::Sum => {
            let mut sum = vec![0.0; n];
            let mut count = vec![0u32; n];
            for &(t, v) in &points {
                let b = bin(t);
                sum[b] += v;
                count[b] += 1;
            }
            for b in 0..n {
                if count[b] > 0 {
                    out[b] = if agg == Agg::Mean {
                        sum[b] / f64::from(count[b])
                    } else {
                        sum[b]
                    };
                }
            }
        }
        Agg::Max | Agg::Min => {
            for &(t, v) in &points {
                let o = &mut out[bin(t)];
                *o = if o.is_nan() {
                    v
                } else if agg == Agg::Max {
                    o.max(v)
                } else {
                    o.min(v)
                };
            }
        }
        Agg::Percentile(p) => {
            let mut sorted = points.clone();
            sorted.sort_by_key(|a| a.0);
            let mut i = 0;
            while i < sorted.len() {
                let b = bin(sorted[i].0);
                let mut j = i;
                let mut vals = Vec::new();
                while j < sorted.len() && bin(sorted[j].0) == b {
                    vals.push(sorted[j].1);
                    j += 1;
                }
                vals.sort_by(f64::total_cmp);
                let pos = p / 100.0 * (vals.len() - 1) as f64;
                let (f, c) = (pos.floor() as usize, pos.ceil() as usize);
                out[b] = vals[f] + (vals[c] - vals[f]) * (pos - f as f64);
                i = j;
            }
        }
    }
    let filled = fill_gaps(&mut out, gap);
    Ok(Grid {
        start: Timestamp(first * w),
        step,
        values: out,
        filled,
    })
}

/// Fills NaN bins in place; returns how many there were. The first and last
/// bins always hold points, so interpolation has both neighbours.
fn fill_gaps(values: &mut [f64], gap: GapFill) -> usize {
    let mut filled = 0;
    let mut last: Option<usize> = None;
    let mut i = 0;
    while i < values.len() {
        if !values[i].is_nan() {
            last = Some(i);
            i += 1;
            continue;
        }
        let mut j = i;
        while j < values.len() && values[j].is_nan() {
            j += 1;
        }
        filled += j - i;
        for k in i..j {
            values[k] = match (gap, last) {
                (GapFill::Linear, Some(l)) if j < values.len() => {
                    let frac = (k - l) as f64 / (j - l) as f64;
                    values[l] + (values[j] - values[l]) * frac
                }
                (GapFill::Linear | GapFill::Previous, Some(l)) => values[l],
                (GapFill::Zero, _) => 0.0,
                _ => f64::NAN,
            };
        }
        i = j;
    }
    filled
}

/// Training examples cut from a grid: `count` windows, each `context`
/// inputs followed by `horizon` targets, as two flat row-major buffers.
#[derive(Debug, Clone, PartialEq)]
pub struct Windows {
    /// Inputs per window.
    pub context: usize,
    /// Targets per window.
    pub horizon: usize,
    /// Number of windows.
    pub count: usize,
    /// Index in the source of each window's first target.
    pub origins: Vec<usize>,
    /// `[count][context]` inputs.
    pub inputs: Vec<f32>,
    /// `[count][horizon]` targets.
    pub targets: Vec<f32>,
}

/// Cuts every window whose first target is at `origin = context + k·stride`
/// and whose targets end within `values`.
pub fn windows(values: &[f32], context: usize, horizon: usize, stride: usize) -> Windows {
    let stride = stride.max(1);
    let mut w = Windows {
        context,
        horizon,
        count: 0,
        origins: Vec::new(),
        inputs: Vec::new(),
        targets: Vec::new(),
    };
    let mut origin = context;
    while origin + horizon <= values.len() {
        w.inputs
            .extend_from_slice(&values[origin - context..origin]);
        w.targets
            .extend_from_slice(&values[origin..origin + horizon]);
        w.origins.push(origin);
        w.count += 1;
        origin += stride;
    }
    w
}

/// The event covariate of a series on a grid of `len` bins starting at
/// `start` (ms) with spacing `step` (ms): 1 for bins that overlap an event
/// whose scope covers the series (`*`, its app, or `app/shard_type`), else 0.
pub fn event_indicator(
    events: &[crate::ingest::Event],
    key: &shardcast_core::SeriesKey,
    start: i64,
    step: i64,
    len: usize,
) -> Vec<f32> {
    let mut ind = vec![0f32; len];
    let scoped = format!("{}/{}", key.app, key.shard_type);
    for e in events {
        if e.scope != "*" && e.scope != key.app && e.scope != scoped {
            continue;
        }
        let first = (e.start - start).div_euclid(step).max(0);
        let last = (e.end - start).div_euclid(step).min(len as i64 - 1);
        for i in first..=last {
            ind[i as usize] = 1.0;
        }
    }
    ind
}

/// The grid step a series was sampled at: the median spacing of its
/// increasing timestamps (milliseconds), rounded to whole minutes; five
/// minutes when there are fewer than two distinct timestamps.
pub fn infer_step(ts: &[i64]) -> GridStep {
    let mut gaps: Vec<i64> = ts
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|&d| d > 0)
        .collect();
    gaps.sort_unstable();
    let median = gaps.get(gaps.len() / 2).copied().unwrap_or(300_000);
    GridStep::from_millis(((median + 30_000) / 60_000).max(1) * 60_000)
        .unwrap_or(GridStep::FIVE_MINUTES)
}

#[cfg(test)]
mod tests;
