//! The planner's [`ForecastSource`] over the demand model: each step's
//! forecast comes from [`Model::forecast`], the call the inference server
//! makes, on the series as loaded from the store, cut before the step.

use anyhow::{Result, anyhow};
use shardcast_core::{QuantileForecast, QuantileSet};
use shardcast_model::forecaster::{Model, SeriesInput};
use shardcast_planner::simulator::{ForecastSource, SourceRequest};

/// Forecasts computed per model call: windows of consecutive origins are
/// batched, as one call is much cheaper than one per window.
const BLOCK: usize = 256;

/// A series on its grid, as loaded from the store.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GridView<'a> {
    /// The model's id of the series (`app/shard_type/metric/series`).
    pub(crate) name: &'a str,
    pub(crate) shard_type: &'a str,
    /// Time of `values[0]` (ms).
    pub(crate) start: i64,
    /// Grid step (ms).
    pub(crate) step: i64,
    pub(crate) values: &'a [f32],
    /// Event indicator on the same grid (events are known ahead).
    pub(crate) events: Option<&'a [f32]>,
}

/// Forecasts of one series by a model, in shard units.
///
/// The simulator's trace is `values[offset..]` divided by `capacity`: the
/// forecast for trace step `t` is made at origin `offset + t` from
/// `values[..offset + t]` alone (the slice the model gets ends there) and
/// divided by `capacity`.
pub(crate) struct ModelSource<'a> {
    model: &'a Model,
    grid: GridView<'a>,
    series_row: usize,
    shard_type_row: usize,
    offset: usize,
    capacity: f64,
    levels: QuantileSet,
    /// Forecasts of origins `cached_from..`, `[origin, horizon, quantile]`.
    cached_from: usize,
    cache: Vec<f32>,
    /// The first failure; the caller reports it after the run.
    error: Option<anyhow::Error>,
    /// Model calls made.
    calls: usize,
}

impl<'a> ModelSource<'a> {
    /// A source for the trace `grid.values[offset..] / capacity`.
    pub(crate) fn new(
        model: &'a Model,
        grid: GridView<'a>,
        offset: usize,
        capacity: f64,
    ) -> Result<Self> {
        if grid.step != model.step_ms() {
            return Err(anyhow!(
                "the series is on a {} ms grid, the model was trained on {} ms",
                grid.step,
                model.step_ms()
            ));
        }
        if !(capacity.is_finite() && capacity > 0.0) {
            return Err(anyhow!("capacity per shard {capacity} must be positive"));
        }
        let levels = QuantileSet::new(&model.config().quantiles)?;
        Ok(Self {
            model,
            grid,
            series_row: model.series_row(grid.name),
            shard_type_row: model.shard_type_row(grid.shard_type),
            offset,
            capacity,
            levels,
            cached_from: 0,
            cache: Vec::new(),
            error: None,
            calls: 0,
        })
    }

    /// The first error met while forecasting, if any. The simulator treats
    /// a missing forecast as a fallback step, so a run must check this.
    pub(crate) fn take_error(&mut self) -> Option<anyhow::Error> {
        self.error.take()
    }

    /// Model calls made so far.
    pub(crate) fn calls(&self) -> usize {
        self.calls
    }

    fn per_origin(&self) -> usize {
        let c = self.model.config();
        c.horizon * c.quantiles.len()
    }

    /// The cached forecast of `origin`, computing a block from it if needed.
    fn forecast_at(&mut self, origin: usize) -> Result<&[f32]> {
        let per = self.per_origin();
        let cached = self.cache.len() / per;
        if !(origin >= self.cached_from && origin < self.cached_from + cached) {
            let end = (origin + BLOCK).min(self.grid.values.len());
            let g = self.grid;
            // Each window sees only the values before its origin.
            let windows: Vec<(SeriesInput<'_>, usize)> = (origin..=end.max(origin))
                .take(BLOCK)
                .map(|o| {
                    (
                        SeriesInput {
                            series: self.series_row,
                            shard_type: self.shard_type_row,
                            start: g.start,
                            step: g.step,
                            values: &g.values[..o],
                            events: g.events,
                        },
                        o,
                    )
                })
                .collect();
            self.cache = self.model.forecast(&windows)?;
            self.cached_from = origin;
            self.calls += 1;
        }
        let i = origin - self.cached_from;
        Ok(&self.cache[i * per..(i + 1) * per])
    }

    fn try_forecast(&mut self, r: &SourceRequest<'_>) -> Result<Option<QuantileForecast>> {
        let origin = self.offset + r.history.len();
        let at = self.grid.start + self.grid.step * origin as i64;
        if r.start.0 != at || r.step.millis() != self.grid.step {
            return Err(anyhow!(
                "asked for a forecast at {} on a {} grid; the series has step {} ms and point {origin} at {}",
                r.start,
                r.step,
                self.grid.step,
                shardcast_core::Timestamp(at)
            ));
        }
        if origin > self.grid.values.len() {
            return Err(anyhow!(
                "asked for a forecast at point {origin}, past the end of the series ({} points)",
                self.grid.values.len()
            ));
        }
        if let Some(&last) = r.history.last() {
            let stored = f64::from(self.grid.values[origin - 1]) / self.capacity;
            if (last - stored).abs() > 1e-6 * stored.abs().max(1.0) {
                return Err(anyhow!(
                    "the simulator's history ({last}) differs from the stored series ({stored}) at point {}",
                    origin - 1
                ));
            }
        }
        if origin == 0 {
            return Ok(None);
        }
        let horizon = self.model.config().horizon;
        if r.horizon > horizon {
            return Err(anyhow!(
                "the planner needs {} forecast steps, the model forecasts {horizon}",
                r.horizon
            ));
        }
        let q = self.levels.len();
        let capacity = self.capacity;
        let values: Vec<f32> = self.forecast_at(origin)?[..r.horizon * q]
            .iter()
            .map(|&v| (f64::from(v) / capacity).max(0.0) as f32)
            .collect();
        Ok(Some(QuantileForecast::new(
            self.levels.clone(),
            r.start,
            r.step,
            values,
        )?))
    }
}

impl ForecastSource for ModelSource<'_> {
    fn forecast(&mut self, request: &SourceRequest<'_>) -> Option<QuantileForecast> {
        if self.error.is_some() {
            return None;
        }
        match self.try_forecast(request) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, at = %request.start, "no forecast");
                self.error = Some(e);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use shardcast_core::{GridStep, Timestamp};
    use shardcast_model::forecaster::{ModelConfig, TrainConfig, TrainSeries};
    use shardcast_planner::simulator::{SimConfig, Trace, collect_forecasts};

    use super::*;

    const STEP: i64 = 3_600_000;

    fn series(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| 50.0 + 20.0 * (i as f32 / 24.0 * std::f32::consts::TAU).sin())
            .collect()
    }

    fn tiny_model(values: &[f32]) -> Model {
        let config = ModelConfig {
            hidden_size: 8,
            head_hidden: 8,
            context: 12,
            horizon: 4,
            season: 24,
            lags: vec![24],
            ..ModelConfig::default()
        };
        let train = TrainConfig {
            max_steps: 5,
            batch_size: 16,
            ..TrainConfig::default()
        };
        let data = [TrainSeries {
            name: "a/t/m/s".into(),
            shard_type: "t".into(),
            start: 0,
            values: values.to_vec(),
            events: None,
        }];
        Model::fit(&config, &train, STEP, &data, |_| {}).unwrap().0
    }

    fn view<'a>(values: &'a [f32]) -> GridView<'a> {
        GridView {
            name: "a/t/m/s",
            shard_type: "t",
            start: 0,
            step: STEP,
            values,
            events: None,
        }
    }

    fn trace(values: &[f32], offset: usize, capacity: f64) -> Trace {
        let demand: Vec<f64> = values[offset..].iter().map(|&v| f64::from(v)).collect();
        Trace::from_demand(
            Timestamp(STEP * offset as i64),
            GridStep::HOUR,
            &demand,
            capacity,
        )
        .unwrap()
    }

    #[test]
    fn forecasts_match_the_model_and_ignore_the_future() {
        let values = series(24 * 12);
        let model = tiny_model(&values[..24 * 8]);
        let offset = 24 * 8;
        let capacity = 5.0;
        let cfg = SimConfig::default();
        let tr = trace(&values, offset, capacity);
        let mut src = ModelSource::new(&model, view(&values), offset, capacity).unwrap();
        let fc = collect_forecasts(&tr, &cfg, &mut src);
        assert!(src.take_error().is_none());
        assert_eq!(fc.len(), values.len() - offset);
        // 96 origins in one block of 256.
        assert_eq!(src.calls(), 1);

        // One forecast by hand, through the model's own call.
        let t = 30;
        let o = offset + t;
        let direct = model
            .forecast(&[(
                SeriesInput {
                    series: model.series_row("a/t/m/s"),
                    shard_type: model.shard_type_row("t"),
                    start: 0,
                    step: STEP,
                    values: &values[..o],
                    events: None,
                },
                o,
            )])
            .unwrap();
        let f = fc[t].as_ref().unwrap();
        assert_eq!(f.start(), Timestamp(STEP * o as i64));
        let q = model.config().quantiles.len();
        // Demand in shards, never negative (as the source converts it).
        for (got, want) in f.values().iter().zip(&direct[..f.horizon() * q]) {
            let want = (f64::from(*want) / capacity).max(0.0);
            assert!((f64::from(*got) - want).abs() < 1e-5, "{got} vs {want}");
        }

        // Changing every value from step t on leaves forecasts up to t as
        // they were, and changes the one after.
        let mut future = values.clone();
        for v in &mut future[o..] {
            *v *= 3.0;
        }
        let tr2 = trace(&future, offset, capacity);
        let mut src2 = ModelSource::new(&model, view(&future), offset, capacity).unwrap();
        let fc2 = collect_forecasts(&tr2, &cfg, &mut src2);
        assert!(src2.take_error().is_none());
        for s in 0..=t {
            assert_eq!(fc[s], fc2[s], "step {s} saw the future");
        }
        assert_ne!(fc[t + 1], fc2[t + 1]);
    }

    #[test]
    fn mismatches_are_errors() {
        let values = series(24 * 10);
        let model = tiny_model(&values);
        assert!(ModelSource::new(&model, view(&values), 0, 0.0).is_err());
        let mut other = view(&values);
        other.step = 60_000;
        assert!(ModelSource::new(&model, other, 0, 1.0).is_err());

        // A trace that is not the stored series (scaled differently).
        let offset = 24 * 8;
        let tr = trace(&values, offset, 2.0);
        let mut src = ModelSource::new(&model, view(&values), offset, 1.0).unwrap();
        let fc = collect_forecasts(&tr, &SimConfig::default(), &mut src);
        assert!(fc.iter().skip(1).all(Option::is_none));
        let err = src.take_error().unwrap().to_string();
        assert!(err.contains("differs from the stored series"), "{err}");

        // A planner window longer than the model's horizon.
        let cfg = SimConfig {
            lead_steps: 6,
            ..SimConfig::default()
        };
        let tr = trace(&values, offset, 1.0);
        let mut src = ModelSource::new(&model, view(&values), offset, 1.0).unwrap();
        collect_forecasts(&tr, &cfg, &mut src);
        let err = src.take_error().unwrap().to_string();
        assert!(err.contains("needs 7 forecast steps"), "{err}");
    }
}
