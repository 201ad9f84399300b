//! The model behind the workspace's forecasting contract
//! ([`shardcast_core::Forecaster`]): the whole model, and its statistical
//! half on its own.

use shardcast_core::{ForecastSpec, Forecaster, GridStep, QuantileForecast, QuantileSet, Window};

use super::{Calibration, Hybrid, Model, SeriesInput};
use crate::error::{Error, Result};

impl Model {
    /// The levels it forecasts, increasing (checked when it was fitted or
    /// loaded).
    pub fn levels(&self) -> QuantileSet {
        QuantileSet::new(&self.config.quantiles).expect("levels are checked on fit and load")
    }

    /// The model's statistical half on its own: the level-plus-shape
    /// forecaster and the error distribution fitted beside the network,
    /// without the network. `None` for a model without one.
    pub fn statistical(&self) -> Option<StatisticalHalf<'_>> {
        self.hybrid.as_ref().map(|hybrid| StatisticalHalf {
            model: self,
            hybrid: Hybrid {
                weight: 0.0,
                ..hybrid.clone()
            },
        })
    }

    /// A contract window as the network reads it: rows of its tables and
    /// the history up to the origin.
    fn input_of<'a>(&self, w: &Window<'a>) -> (SeriesInput<'a>, usize) {
        let input = SeriesInput {
            series: self.series_row(w.series),
            shard_type: self.shard_type_row(w.shard_type),
            start: w.start.millis(),
            step: w.step.millis(),
            values: w.history,
            events: w.events,
        };
        (input, w.history.len())
    }

    fn spec_with(&self, history: usize) -> ForecastSpec {
        ForecastSpec {
            step: GridStep::from_millis(self.step_ms).ok(),
            horizon: self.config.horizon,
            levels: self.levels(),
            history: history.max(1),
        }
    }

    /// Runs `windows` through [`Model::forecast_with`] and splits the rows.
    fn contract_batch(
        &self,
        windows: &[Window<'_>],
        hybrid: Option<&Hybrid>,
        calibration: Calibration,
        reversion: Option<super::Reversion>,
    ) -> Result<Vec<shardcast_core::Result<QuantileForecast>>> {
        Window::with_history(windows, |full| {
            let inputs: Vec<_> = full.iter().map(|w| self.input_of(w)).collect();
            let flat = self.forecast_with(&inputs, hybrid, calibration, reversion)?;
            QuantileForecast::split(&self.levels(), full, &flat).ok_or_else(|| {
                Error::Invalid(format!(
                    "{} values for {} windows of {} steps",
                    flat.len(),
                    full.len(),
                    self.config.horizon
                ))
            })
        })
    }
}

impl Forecaster for Model {
    type Error = Error;

    fn spec(&self) -> ForecastSpec {
        self.spec_with(self.window())
    }

    fn forecast_batch(
        &self,
        windows: &[Window<'_>],
    ) -> Result<Vec<shardcast_core::Result<QuantileForecast>>> {
        self.contract_batch(
            windows,
            self.hybrid.as_ref(),
            self.calibration,
            self.reversion,
        )
    }
}

/// A model's statistical half as a forecaster of its own (see
/// [`Model::statistical`]): what the network is blended with, for a
/// comparison or where the network cannot be trusted.
#[derive(Debug)]
pub struct StatisticalHalf<'a> {
    model: &'a Model,
    /// The model's hybrid with all weight on the statistical forecast.
    hybrid: Hybrid,
}

impl StatisticalHalf<'_> {
    /// The fitted half (its statistical forecaster and error quantiles).
    pub fn hybrid(&self) -> &Hybrid {
        &self.hybrid
    }
}

impl Forecaster for StatisticalHalf<'_> {
    type Error = Error;

    fn spec(&self) -> ForecastSpec {
        let cfg = &self.model.config;
        self.model
            .spec_with(self.hybrid.lookback(cfg).max(cfg.norm_len()))
    }

    fn forecast_batch(
        &self,
        windows: &[Window<'_>],
    ) -> Result<Vec<shardcast_core::Result<QuantileForecast>>> {
        self.model
            .contract_batch(windows, Some(&self.hybrid), Calibration::default(), None)
    }
}
