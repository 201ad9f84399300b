//! An exported graph behind the workspace's forecasting contract.

use shardcast_core::{ForecastSpec, Forecaster, GridStep, QuantileForecast, QuantileSet, Window};

use shardcast_model::forecaster::SeriesInput;

use crate::OnnxModel;
use crate::error::{Error, Result};

impl Forecaster for OnnxModel {
    type Error = Error;

    fn spec(&self) -> ForecastSpec {
        let c = self.contract();
        ForecastSpec {
            step: GridStep::from_millis(c.step_ms).ok(),
            horizon: c.horizon,
            levels: QuantileSet::new(&c.quantiles).expect("levels are checked on load"),
            history: c.window.max(1),
        }
    }

    fn forecast_batch(
        &self,
        windows: &[Window<'_>],
    ) -> Result<Vec<shardcast_core::Result<QuantileForecast>>> {
        let c = self.contract();
        let levels = QuantileSet::new(&c.quantiles)?;
        Window::with_history(windows, |full| {
            let inputs: Vec<(SeriesInput<'_>, usize)> = full
                .iter()
                .map(|w| {
                    let input = SeriesInput {
                        series: c.series_row(w.series),
                        shard_type: c.shard_type_row(w.shard_type),
                        start: w.start.millis(),
                        step: w.step.millis(),
                        values: w.history,
                        events: w.events,
                    };
                    (input, w.history.len())
                })
                .collect();
            let tensors = c.inputs(&inputs)?;
            let flat = self.run(&tensors)?.flatten_all()?.to_vec1::<f32>()?;
            QuantileForecast::split(&levels, full, &flat).ok_or_else(|| {
                Error::Invalid(format!(
                    "the graph gave {} values for {} windows of {} steps",
                    flat.len(),
                    full.len(),
                    c.horizon
                ))
            })
        })
    }
}
