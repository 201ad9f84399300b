//! Seasonal naive: the simplest forecaster worth beating, and the one the
//! planner falls back to comparing against.

use crate::forecast::{ForecastSpec, Forecaster, QuantileForecast, Window};
use crate::{Error, QuantileSet, Result};

/// Forecasts the value one season before each step, plus the empirical
/// quantiles of the seasonal differences (`x[t] - x[t - season]`) over the
/// last `window` points as its spread.
#[derive(Debug, Clone, PartialEq)]
pub struct SeasonalNaive {
    /// Season length in steps (at least 1).
    pub season: usize,
    /// How many recent seasonal differences estimate the spread (at least 1).
    pub window: usize,
    /// Steps forecast.
    pub horizon: usize,
    /// Levels emitted.
    pub levels: QuantileSet,
}

impl SeasonalNaive {
    /// Seasonal naive at the protocol's 13 levels.
    pub fn new(season: usize, window: usize, horizon: usize) -> Self {
        Self {
            season: season.max(1),
            window: window.max(1),
            horizon: horizon.max(1),
            levels: QuantileSet::protocol(),
        }
    }

    fn one(&self, w: &Window<'_>) -> Result<QuantileForecast> {
        let (h, s) = (w.history, self.season);
        if h.len() <= s {
            return Err(Error::InvalidContext {
                reason: format!(
                    "seasonal naive needs more than one season ({s} points) of history, got {}",
                    h.len()
                ),
            });
        }
        let from = h.len().saturating_sub(self.window).max(s);
        let mut diffs: Vec<f64> = (from..h.len())
            .map(|j| f64::from(h[j]) - f64::from(h[j - s]))
            .collect();
        diffs.sort_by(f64::total_cmp);
        let offsets: Vec<f64> = self
            .levels
            .levels()
            .iter()
            .map(|q| empirical_quantile(&diffs, q.get()))
            .collect();
        let mut values = Vec::with_capacity(self.horizon * offsets.len());
        for i in 0..self.horizon {
            let base = f64::from(h[h.len() - s + (i % s)]);
            values.extend(offsets.iter().map(|o| (base + o) as f32));
        }
        QuantileForecast::new(self.levels.clone(), w.origin(), w.step, values)
    }
}

impl Forecaster for SeasonalNaive {
    type Error = Error;

    fn spec(&self) -> ForecastSpec {
        ForecastSpec {
            step: None,
            horizon: self.horizon,
            levels: self.levels.clone(),
            history: self.window.max(self.season) + self.season,
        }
    }

    fn forecast_batch(&self, windows: &[Window<'_>]) -> Result<Vec<Result<QuantileForecast>>> {
        Ok(windows.iter().map(|w| self.one(w)).collect())
    }
}

/// Linear-interpolated empirical quantile of sorted, non-empty data.
fn empirical_quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (pos - lo as f64) * (sorted[hi] - sorted[lo])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GridStep, Timestamp};

    fn window(history: &[f32]) -> Window<'_> {
        Window {
            series: "a/t/m/s",
            shard_type: "t",
            start: Timestamp(0),
            step: GridStep::HOUR,
            history,
            events: None,
        }
    }

    #[test]
    fn repeats_the_last_season_with_the_spread_of_its_differences() {
        // Two seasons of 4; the second is the first plus 1, 2, 3, 4.
        let h = [1.0, 2.0, 3.0, 4.0, 2.0, 4.0, 6.0, 8.0];
        let naive = SeasonalNaive {
            levels: QuantileSet::new(&[0.1, 0.5, 0.9]).unwrap(),
            ..SeasonalNaive::new(4, 4, 6)
        };
        let f = naive.forecast(&window(&h)).unwrap();
        assert_eq!(f.start(), Timestamp(8 * 3_600_000));
        assert_eq!(f.horizon(), 6);
        // Differences 1..=4: median 2.5, 10% 1.3, 90% 3.7; bases cycle.
        let median = f.level_path(0.5).unwrap();
        assert_eq!(median, vec![4.5, 6.5, 8.5, 10.5, 4.5, 6.5]);
        let low = f.level_path(0.1).unwrap();
        assert!((low[0] - 3.3).abs() < 1e-6, "{low:?}");
    }

    #[test]
    fn a_season_of_history_or_less_has_no_forecast_but_the_batch_goes_on() {
        let naive = SeasonalNaive::new(4, 8, 2);
        let short = [1.0; 4];
        let long = [1.0; 5];
        let out = naive
            .forecast_batch(&[window(&short), window(&long)])
            .unwrap();
        let err = out[0].as_ref().unwrap_err().to_string();
        assert!(err.contains("more than one season"), "{err}");
        assert_eq!(out[1].as_ref().unwrap().values(), &[1.0; 26]);
    }
}
