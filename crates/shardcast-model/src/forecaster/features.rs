//! Turning a series and a forecast origin into the network's input buffers.
//!
//! Every window is normalised on its own: `z = (x - m) / s` with `m` the mean
//! and `s` the mean absolute deviation of the last `max(context, season)`
//! observed points, floored by a tenth of the series' training-range
//! deviation. The window's level and scale relative to the series' training
//! range are static inputs, so the network still sees absolute levels.

use super::config::ModelConfig;
use crate::error::{Error, Result};

/// Normalised inputs beyond this magnitude are clipped (spikes would
/// otherwise saturate the recurrent gates).
const INPUT_CLIP: f32 = 10.0;
/// Targets are clipped further out, only to keep one wild point from
/// dominating a batch.
const TARGET_CLIP: f32 = 50.0;
/// Static features per window.
pub(crate) const STATIC: usize = 1;

/// One series as the model sees it: a regular grid of values.
#[derive(Debug, Clone, Copy)]
pub struct SeriesInput<'a> {
    /// Row of the series in the model's series table (0: unknown series).
    pub series: usize,
    /// Row of its shard type (0: unknown).
    pub shard_type: usize,
    /// Time of `values[0]`, ms since the epoch (UTC).
    pub start: i64,
    /// Grid step in ms.
    pub step: i64,
    /// Observed values on the grid.
    pub values: &'a [f32],
    /// Event indicator (0 or 1) on the same grid; may extend past `values`
    /// into the forecast horizon (events are known ahead). Missing: no events.
    pub events: Option<&'a [f32]>,
}

/// Per-series statistics of the training range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeriesScale {
    /// Mean.
    pub mean: f32,
    /// Mean absolute deviation from the mean (floored above zero).
    pub deviation: f32,
}

impl SeriesScale {
    /// Statistics of `values`.
    pub fn of(values: &[f32]) -> Self {
        let n = values.len().max(1) as f64;
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let dev = values
            .iter()
            .map(|&v| (f64::from(v) - mean).abs())
            .sum::<f64>()
            / n;
        Self {
            mean: mean as f32,
            deviation: floor_scale(dev as f32, mean as f32),
        }
    }
}

fn floor_scale(s: f32, level: f32) -> f32 {
    s.max(1e-6 * level.abs().max(1.0))
}

/// Input buffers of a batch, laid out as the network's tensors.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub n: usize,
    /// `[n, context, input_size]`.
    pub context: Vec<f32>,
    /// `[n, horizon, future_size]`.
    pub future: Vec<f32>,
    /// `[n, STATIC]`.
    pub statics: Vec<f32>,
    /// `[n]`.
    pub series: Vec<u32>,
    /// `[n]`.
    pub shard_types: Vec<u32>,
    /// `[n, horizon]` normalised targets (training only).
    pub target: Vec<f32>,
    /// `[n]` window mean and scale, to map outputs back.
    pub loc: Vec<f32>,
    /// See `loc`.
    pub scale: Vec<f32>,
    /// Normalised points of history kept per window in `history` (set by
    /// the caller; 0 keeps none).
    pub history_len: usize,
    /// `[n, history_len]` the normalised (and clipped) values before each
    /// window's origin, oldest first: what the hybrid's statistical
    /// forecast reads.
    pub history: Vec<f32>,
}

impl Batch {
    pub(crate) fn clear(&mut self) {
        self.n = 0;
        self.context.clear();
        self.future.clear();
        self.statics.clear();
        self.series.clear();
        self.shard_types.clear();
        self.target.clear();
        self.loc.clear();
        self.scale.clear();
        self.history.clear();
    }
}

fn calendar(ts: i64, weekday: bool, out: &mut Vec<f32>) {
    const DAY: i64 = 86_400_000;
    let tod = ts.rem_euclid(DAY) as f64 / DAY as f64;
    // 1970-01-01 was a Thursday: shift so that 0 is Monday.
    let dow = ((ts.div_euclid(DAY) + 3).rem_euclid(7) as f64 + tod) / 7.0;
    let tau = std::f64::consts::TAU;
    out.extend([(tau * tod).sin() as f32, (tau * tod).cos() as f32]);
    if weekday {
        out.extend([(tau * dow).sin() as f32, (tau * dow).cos() as f32]);
    }
}

/// Appends the window whose first forecast point is `origin` (an index into
/// the grid; only `values[..origin]` is read as history). With `target`, the
/// next `horizon` values are appended as training targets and must exist.
pub(crate) fn push_window(
    cfg: &ModelConfig,
    scale: &SeriesScale,
    input: &SeriesInput<'_>,
    origin: usize,
    target: bool,
    batch: &mut Batch,
) -> Result<()> {
    let need = cfg.history_needed().max(1);
    if origin == 0 || origin > input.values.len() || (target && origin < need) {
        return Err(Error::Invalid(format!(
            "a {} window at point {origin} needs {} points of history and {} exist",
            if target { "training" } else { "forecast" },
            if target { need } else { 1 },
            input.values.len().min(origin)
        )));
    }
    if target && origin + cfg.horizon > input.values.len() {
        return Err(Error::Invalid(format!(
            "training window at {origin} runs past the end of the series"
        )));
    }
    let v = input.values;
    let win = &v[origin - cfg.norm_len().min(origin)..origin];
    let n = win.len() as f64;
    let m = (win.iter().map(|&x| f64::from(x)).sum::<f64>() / n) as f32;
    let dev = (win.iter().map(|&x| (f64::from(x - m)).abs()).sum::<f64>() / n) as f32;
    let s = floor_scale(dev.max(0.1 * scale.deviation), scale.mean);
    // History before the first point (only when forecasting a short series)
    // is filled from the same phase of the earliest observed season, or the
    // first value.
    let at = |i: isize| -> f32 {
        if i >= 0 {
            return v[i as usize];
        }
        if cfg.season > 0 {
            let p = cfg.season as isize;
            let j = i + p * ((-i + p - 1) / p);
            if (j as usize) < origin {
                return v[j as usize];
            }
        }
        v[0]
    };
    let z = |i: isize| ((at(i) - m) / s).clamp(-INPUT_CLIP, INPUT_CLIP);
    let event = |i: isize| {
        usize::try_from(i)
            .ok()
            .and_then(|i| input.events.and_then(|e| e.get(i).copied()))
            .unwrap_or(0.0)
    };
    let ts = |i: isize| input.start + input.step * i as i64;
    let o = origin as isize;
    for i in o - cfg.context as isize..o {
        batch.context.push(z(i));
        batch
            .context
            .extend(cfg.lags.iter().map(|&l| z(i - l as isize)));
        if cfg.calendar {
            calendar(ts(i), cfg.weekday, &mut batch.context);
        }
        if cfg.events {
            batch.context.push(event(i));
        }
    }
    let last = z(o - 1);
    let nb = cfg.baselines.len();
    let mut base = vec![0f32; cfg.horizon * nb];
    for (b, baseline) in cfg.baselines.iter().enumerate() {
        baseline.forecast(cfg.season, cfg.horizon, |j| z(o + j), &mut |k, v| {
            base[k * nb + b] = v;
        });
    }
    for (k, i) in (o..o + cfg.horizon as isize).enumerate() {
        batch
            .future
            .extend(cfg.lags.iter().map(|&l| z(i - l as isize)));
        if cfg.calendar {
            calendar(ts(i), cfg.weekday, &mut batch.future);
        }
        if cfg.events {
            batch.future.push(event(i));
        }
        batch.future.push(last);
        batch.future.extend_from_slice(&base[k * nb..(k + 1) * nb]);
    }
    if target {
        batch.target.extend(
            v[origin..origin + cfg.horizon]
                .iter()
                .map(|&x| ((x - m) / s).clamp(-TARGET_CLIP, TARGET_CLIP)),
        );
    }
    batch
        .statics
        .push((s / scale.deviation).ln().clamp(-INPUT_CLIP, INPUT_CLIP));
    batch.series.push(input.series as u32);
    batch.shard_types.push(input.shard_type as u32);
    batch
        .history
        .extend((o - batch.history_len as isize..o).map(z));
    batch.loc.push(m);
    batch.scale.push(s);
    batch.n += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ModelConfig {
        ModelConfig {
            context: 3,
            horizon: 2,
            season: 4,
            lags: vec![4],
            events: true,
            ..ModelConfig::default()
        }
    }

    #[test]
    fn window_layout_and_normalisation() {
        let values: Vec<f32> = (0..10).map(|i| i as f32).collect();
        let events = vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let input = SeriesInput {
            series: 1,
            shard_type: 1,
            start: 0,
            step: 3_600_000,
            values: &values,
            events: Some(&events),
        };
        let c = cfg();
        let scale = SeriesScale::of(&values);
        let mut b = Batch::default();
        push_window(&c, &scale, &input, 8, true, &mut b).unwrap();
        // norm window: values 4..8 → mean 5.5, mean abs dev 1.0
        assert_eq!(b.loc, vec![5.5]);
        assert_eq!(b.scale, vec![1.0]);
        assert_eq!(b.context.len(), 3 * c.input_size());
        assert_eq!(b.future.len(), 2 * c.future_size());
        // first context step is point 5: z = -0.5, its lag-4 is point 1: z = -4.5
        assert_eq!(&b.context[..2], &[-0.5, -4.5]);
        // time of day of point 5 (05:00): sin(2π·5/24)
        let want = (std::f64::consts::TAU * 5.0 / 24.0).sin() as f32;
        assert!((b.context[2] - want).abs() < 1e-6);
        // future step 0 is point 8: its lag-4 is point 4 (z = -1.5), event 1, last z = 1.5
        assert_eq!(b.future[0], -1.5);
        assert_eq!(b.future[5], 1.0);
        assert_eq!(b.future[6], 1.5);
        assert_eq!(b.target, vec![2.5, 3.5]);
        // not enough history, and a target past the end
        assert!(push_window(&c, &scale, &input, 6, true, &mut b).is_err());
        assert!(push_window(&c, &scale, &input, 0, false, &mut b).is_err());
        assert!(push_window(&c, &scale, &input, 2, false, &mut b).is_ok());
        assert!(push_window(&c, &scale, &input, 9, true, &mut b).is_err());
        assert!(push_window(&c, &scale, &input, 10, false, &mut b).is_ok());
    }

    #[test]
    fn flat_windows_get_a_floored_scale() {
        let mut values = vec![5.0f32; 20];
        values[0] = 0.0;
        values[1] = 10.0;
        let scale = SeriesScale::of(&values);
        let input = SeriesInput {
            series: 0,
            shard_type: 0,
            start: 0,
            step: 1000,
            values: &values,
            events: None,
        };
        let mut b = Batch::default();
        push_window(&cfg(), &scale, &input, 20, false, &mut b).unwrap();
        assert!(b.scale[0] >= 0.1 * scale.deviation);
        assert!(b.context.iter().all(|x| x.is_finite()));
    }
}
