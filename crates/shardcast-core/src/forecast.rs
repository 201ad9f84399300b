use serde::{Deserialize, Serialize};

use crate::{Error, GridStep, Horizon, QuantileSet, Result, SeriesKey, Timestamp};

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

/// What a forecaster is asked: a series, its recent history on a regular
/// grid, and which future steps and quantiles to return.
#[derive(Debug, Clone, Copy)]
pub struct ForecastRequest<'a> {
    /// The series being forecast.
    pub key: &'a SeriesKey,
    /// Observed values on the grid, oldest first, ending just before `start`.
    pub context: &'a [f32],
    /// Time of the first step to forecast.
    pub start: Timestamp,
    /// Grid spacing of the context and the forecast.
    pub step: GridStep,
    /// How many steps to forecast.
    pub horizon: Horizon,
    /// Which quantile levels to return.
    pub levels: &'a QuantileSet,
}

/// Anything that turns a context into a quantile forecast: the recurrent
/// models, the baselines, and the fakes of tests.
pub trait Forecaster {
    /// The error a forecast can fail with.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Forecasts one series.
    fn forecast(&self, request: &ForecastRequest<'_>) -> Result<QuantileForecast, Self::Error>;
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
