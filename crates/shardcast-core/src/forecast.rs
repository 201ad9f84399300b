use serde::{Deserialize, Serialize};

#[cfg(doc)]
use crate::SeriesKey;
use crate::{Error, GridStep, QuantileSet, Result, Timestamp};

/// A probabilistic forecast: for every horizon step, the values of a set of
/// quantile levels. Quantiles never cross: within a step, values are
/// non-decreasing in the level (checked on construction).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantileForecast {
    levels: QuantileSet,
    start: Timestamp,
    step: GridStep,
    /// Row-major `[horizon step][quantile level]`.
    values: Vec<f32>,
}

impl QuantileForecast {
    /// Builds a forecast whose first step is at `start`, checking the shape,
    /// that every value is finite and that quantiles do not cross.
    pub fn new(
        levels: QuantileSet,
        start: Timestamp,
        step: GridStep,
        values: Vec<f32>,
    ) -> Result<Self> {
        let nq = levels.len();
        if values.is_empty() || !values.len().is_multiple_of(nq) {
            return Err(Error::ForecastShape {
                got: values.len(),
                horizon: values.len() / nq,
                quantiles: nq,
            });
        }
        for (step_idx, row) in values.chunks_exact(nq).enumerate() {
            if row.iter().any(|v| !v.is_finite()) {
                return Err(Error::ForecastValues {
                    step: step_idx,
                    reason: "a value is not finite",
                });
            }
            if row.windows(2).any(|w| w[0] > w[1]) {
                return Err(Error::ForecastValues {
                    step: step_idx,
                    reason: "quantiles cross",
                });
            }
        }
        Ok(Self {
            levels,
            start,
            step,
            values,
        })
    }

    /// The quantile levels, increasing.
    pub fn levels(&self) -> &QuantileSet {
        &self.levels
    }

    /// Number of horizon steps.
    pub fn horizon(&self) -> usize {
        self.values.len() / self.levels.len()
    }

    /// Time of the first forecast step.
    pub fn start(&self) -> Timestamp {
        self.start
    }

    /// Spacing of the steps.
    pub fn step(&self) -> GridStep {
        self.step
    }

    /// Time of horizon step `i` (zero-based).
    pub fn time_of(&self, i: usize) -> Timestamp {
        Timestamp(self.start.0 + self.step.millis() * i as i64)
    }

    /// The quantile values of horizon step `i`, one per level.
    pub fn step_values(&self, i: usize) -> &[f32] {
        let nq = self.levels.len();
        &self.values[i * nq..(i + 1) * nq]
    }

    /// All values, row-major `[step][level]`.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// The value of `level` at every step, if the level is in the set.
    pub fn level_path(&self, level: f64) -> Option<Vec<f32>> {
        let j = self.levels.position(level)?;
        Some(
            (0..self.horizon())
                .map(|i| self.step_values(i)[j])
                .collect(),
        )
    }

    /// The value at an arbitrary level in (0, 1) for step `i`, by linear
    /// interpolation between the neighbouring levels (flat beyond the ends).
    pub fn interpolate(&self, i: usize, level: f64) -> f32 {
        let row = self.step_values(i);
        let ls = self.levels.levels();
        if level <= ls[0].get() {
            return row[0];
        }
        for k in 1..ls.len() {
            let (lo, hi) = (ls[k - 1].get(), ls[k].get());
            if level <= hi {
                let w = ((level - lo) / (hi - lo)) as f32;
                return (row[k - 1] + w * (row[k] - row[k - 1])).clamp(row[k - 1], row[k]);
            }
        }
        row[row.len() - 1]
    }
}

impl QuantileForecast {
    /// The first `horizon` steps, or an error when it has fewer.
    pub fn truncated(&self, horizon: usize) -> Result<Self> {
        if horizon == 0 || horizon > self.horizon() {
            return Err(Error::ForecastShape {
                got: self.values.len(),
                horizon,
                quantiles: self.levels.len(),
            });
        }
        Ok(Self {
            values: self.values[..horizon * self.levels.len()].to_vec(),
            ..self.clone()
        })
    }

    /// The same forecast at other levels, each read by
    /// [`QuantileForecast::interpolate`] (ordered, as interpolation keeps
    /// the order).
    pub fn at_levels(&self, levels: &QuantileSet) -> Self {
        let values = (0..self.horizon())
            .flat_map(|i| levels.levels().iter().map(move |l| (i, l.get())))
            .map(|(i, l)| self.interpolate(i, l))
            .collect();
        Self {
            levels: levels.clone(),
            values,
            ..self.clone()
        }
    }

    /// Splits `values`, `[windows, horizon, levels]` row-major as models
    /// compute them, into one forecast per window (each starting at its
    /// window's origin); a window whose values are not finite or cross
    /// gets that error. `None` when `values` is not a whole number of
    /// forecasts of `levels` per window.
    pub fn split(
        levels: &QuantileSet,
        windows: &[Window<'_>],
        values: &[f32],
    ) -> Option<Vec<Result<Self>>> {
        if windows.is_empty() {
            return values.is_empty().then(Vec::new);
        }
        let per = values.len() / windows.len();
        if per * windows.len() != values.len() || per == 0 || !per.is_multiple_of(levels.len()) {
            return None;
        }
        Some(
            windows
                .iter()
                .zip(values.chunks_exact(per))
                .map(|(w, v)| Self::new(levels.clone(), w.origin(), w.step, v.to_vec()))
                .collect(),
        )
    }

    /// The level-by-level sum of forecasts on one time axis: the demand of
    /// a shard type from those of its series. Summing each level is exact
    /// for the median only when the series move together, and it keeps the
    /// levels ordered; it is the planner's conservative total.
    pub fn sum<'a>(parts: impl IntoIterator<Item = &'a Self>) -> Result<Self> {
        let mut parts = parts.into_iter();
        let Some(first) = parts.next() else {
            return Err(Error::InvalidContext {
                reason: "a sum of no forecasts".into(),
            });
        };
        let mut total = first.clone();
        for p in parts {
            if p.levels != total.levels
                || p.start != total.start
                || p.step != total.step
                || p.values.len() != total.values.len()
            {
                return Err(Error::InvalidContext {
                    reason: format!(
                        "forecasts from {} and {} ({} and {} values) do not share levels and time axis",
                        total.start,
                        p.start,
                        total.values.len(),
                        p.values.len()
                    ),
                });
            }
            total
                .values
                .iter_mut()
                .zip(&p.values)
                .for_each(|(s, v)| *s += v);
        }
        Self::new(total.levels, total.start, total.step, total.values)
    }
}

/// One forecast to make: a series' history up to the origin. The forecast
/// starts one step after the last value of `history`.
#[derive(Debug, Clone, Copy)]
pub struct Window<'a> {
    /// The series id as the forecaster knows it: [`SeriesKey`]'s display
    /// form (`app/shard_type/metric/series`) for stored series. A forecaster
    /// that learnt per-series parameters uses them; others ignore it.
    pub series: &'a str,
    /// Its shard type.
    pub shard_type: &'a str,
    /// Time of `history[0]`.
    pub start: Timestamp,
    /// Grid spacing of the history and the forecast.
    pub step: GridStep,
    /// Observed values on the grid, oldest first.
    pub history: &'a [f32],
    /// Event indicator on the same grid from `history[0]` on, known ahead:
    /// it should cover the horizon too. `None`: no events.
    pub events: Option<&'a [f32]>,
}

impl Window<'_> {
    /// Time of the first forecast step.
    pub fn origin(&self) -> Timestamp {
        Timestamp(self.start.0 + self.step.millis() * self.history.len() as i64)
    }

    /// For forecasters that cannot read an empty history: runs `run` on the
    /// windows that have history (when there are any) and answers the
    /// others that they have none, keeping the windows' order.
    pub fn with_history<E: From<Error>>(
        windows: &[Window<'_>],
        run: impl FnOnce(&[Window<'_>]) -> Result<Vec<Result<QuantileForecast>>, E>,
    ) -> Result<Vec<Result<QuantileForecast>>, E> {
        let full: Vec<Window<'_>> = windows
            .iter()
            .filter(|w| !w.history.is_empty())
            .copied()
            .collect();
        let ran = if full.is_empty() {
            Vec::new()
        } else {
            run(&full)?
        };
        if ran.len() != full.len() {
            return Err(Error::InvalidContext {
                reason: format!("{} forecasts for {} windows", ran.len(), full.len()),
            }
            .into());
        }
        let mut ran = ran.into_iter();
        Ok(windows
            .iter()
            .map(|w| match w.history {
                [] => Err(Error::InvalidContext {
                    reason: "no history before the origin".into(),
                }),
                _ => ran.next().expect("counted above"),
            })
            .collect())
    }
}

/// What a forecaster gives: the grid it forecasts on, how far, at which
/// levels, and how much history one forecast reads.
#[derive(Debug, Clone, PartialEq)]
pub struct ForecastSpec {
    /// The grid it was fitted on; `None` when any grid will do.
    pub step: Option<GridStep>,
    /// Steps of every forecast.
    pub horizon: usize,
    /// Levels of every forecast, increasing.
    pub levels: QuantileSet,
    /// Points of history one forecast reads; older points are ignored.
    pub history: usize,
}

/// Anything that turns histories into quantile forecasts: the recurrent
/// model, its statistical half, seasonal naive, an ONNX graph, and the
/// fakes of tests. The server, the planner's simulator and the backtest
/// ask every forecaster the same way.
///
/// Fitting is not part of the contract: each forecaster is fitted its own
/// way (the network by gradient descent over many series, seasonal naive
/// not at all) and is a fitted value by the time it is asked.
pub trait Forecaster {
    /// Why a whole call failed (the model could not run at all).
    type Error: std::error::Error + From<Error> + Send + Sync + 'static;

    /// Grid, horizon, levels and history of its forecasts.
    fn spec(&self) -> ForecastSpec;

    /// Forecasts every window, in one pass where the forecaster batches.
    /// Per window: its forecast in the series' units at [`Self::spec`]'s
    /// horizon and levels, or why that window has none (history too short,
    /// values the model cannot represent); one bad window does not fail the
    /// others.
    fn forecast_batch(
        &self,
        windows: &[Window<'_>],
    ) -> Result<Vec<Result<QuantileForecast>>, Self::Error>;

    /// Forecasts one window.
    fn forecast(&self, window: &Window<'_>) -> Result<QuantileForecast, Self::Error> {
        let out = self.forecast_batch(std::slice::from_ref(window))?;
        let n = out.len();
        match <[_; 1]>::try_from(out) {
            Ok([one]) => Ok(one?),
            Err(_) => Err(Error::InvalidContext {
                reason: format!("a forecaster gave {n} forecasts for one window"),
            }
            .into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn levels() -> QuantileSet {
        QuantileSet::new(&[0.1, 0.5, 0.9]).unwrap()
    }

    #[test]
    fn rejects_crossing_and_bad_shape() {
        let ok = QuantileForecast::new(
            levels(),
            Timestamp(0),
            GridStep::HOUR,
            vec![1., 2., 3., 2., 2., 2.],
        );
        let ok = ok.unwrap();
        assert_eq!(ok.horizon(), 2);
        assert_eq!(ok.time_of(1), Timestamp(3_600_000));
        assert_eq!(ok.level_path(0.9), Some(vec![3., 2.]));
        let crossing =
            QuantileForecast::new(levels(), Timestamp(0), GridStep::HOUR, vec![1., 0., 3.]);
        assert!(matches!(
            crossing,
            Err(Error::ForecastValues { step: 0, .. })
        ));
        let shape = QuantileForecast::new(levels(), Timestamp(0), GridStep::HOUR, vec![1., 2.]);
        assert!(matches!(shape, Err(Error::ForecastShape { .. })));
        let nan = QuantileForecast::new(
            levels(),
            Timestamp(0),
            GridStep::HOUR,
            vec![1., f32::NAN, 3.],
        );
        assert!(nan.is_err());
    }

    #[test]
    fn interpolates_between_levels() {
        let f = QuantileForecast::new(levels(), Timestamp(0), GridStep::HOUR, vec![0., 10., 20.])
            .unwrap();
        assert_eq!(f.interpolate(0, 0.5), 10.0);
        assert!((f.interpolate(0, 0.7) - 15.0).abs() < 1e-5);
        assert_eq!(f.interpolate(0, 0.01), 0.0);
        assert_eq!(f.interpolate(0, 0.99), 20.0);
    }

    #[test]
    fn truncates_reads_other_levels_and_sums() {
        let f = QuantileForecast::new(
            levels(),
            Timestamp(0),
            GridStep::HOUR,
            vec![0., 10., 20., 1., 2., 3.],
        )
        .unwrap();
        assert_eq!(f.truncated(1).unwrap().values(), &[0., 10., 20.]);
        assert!(f.truncated(3).is_err());
        assert!(f.truncated(0).is_err());
        let mid = QuantileSet::new(&[0.5, 0.7]).unwrap();
        let g = f.at_levels(&mid);
        assert_eq!(g.levels(), &mid);
        assert_eq!(g.step_values(1), &[2.0, 2.5]);
        let total = QuantileForecast::sum([&f, &f, &f]).unwrap();
        assert_eq!(total.values(), &[0., 30., 60., 3., 6., 9.]);
        assert_eq!(total.start(), f.start());
        let later = QuantileForecast::new(levels(), Timestamp(1), GridStep::HOUR, vec![0., 1., 2.])
            .unwrap();
        let err = QuantileForecast::sum([&f, &later]).unwrap_err().to_string();
        assert!(err.contains("do not share"), "{err}");
        assert!(QuantileForecast::sum([]).is_err());
    }

    proptest! {
        #[test]
        fn sorted_rows_are_accepted(mut rows in proptest::collection::vec(proptest::collection::vec(-1e6f32..1e6, 3), 1..20)) {
            for r in &mut rows { r.sort_by(f32::total_cmp); }
            let flat: Vec<f32> = rows.concat();
            let f = QuantileForecast::new(levels(), Timestamp(0), GridStep::HOUR, flat).unwrap();
            for i in 0..f.horizon() {
                let mut last = f32::NEG_INFINITY;
                for l in [0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95] {
                    let v = f.interpolate(i, l);
                    prop_assert!(v >= last);
                    last = v;
                }
            }
        }
    }
}
