//! Conversions between wire messages and core types.

use shardcast_core::{Error, GridStep, QuantileForecast, QuantileSet, SeriesKey, Timestamp};

use crate::forecast::v1 as pb;

/// A wire key as a validated core key; `None` when the key is absent.
pub fn key_from_pb(key: Option<&pb::SeriesKey>) -> shardcast_core::Result<Option<SeriesKey>> {
    key.map(|k| {
        SeriesKey::new(
            k.app.clone(),
            k.shard_type.clone(),
            k.metric.clone(),
            k.series.clone(),
        )
    })
    .transpose()
}

/// A core key on the wire.
pub fn key_to_pb(key: &SeriesKey) -> pb::SeriesKey {
    pb::SeriesKey {
        app: key.app.clone(),
        shard_type: key.shard_type.clone(),
        metric: key.metric.clone(),
        series: key.series.clone(),
    }
}

/// Where a forecast came from, for the wire message.
#[derive(Debug, Clone, Copy)]
pub struct Provenance<'a> {
    /// The model's name.
    pub model: &'a str,
    /// The model's version.
    pub version: u32,
    /// Time of the last observed value (ms).
    pub last_observed: i64,
}

/// A core forecast on the wire, one `ForecastStep` per horizon step.
pub fn forecast_to_pb(
    key: pb::SeriesKey,
    forecast: &QuantileForecast,
    from: Provenance<'_>,
) -> pb::Forecast {
    pb::Forecast {
        key: Some(key),
        model: from.model.to_owned(),
        model_version: from.version,
        step_ms: forecast.step().millis(),
        quantiles: forecast.levels().levels().iter().map(|q| q.get()).collect(),
        steps: (0..forecast.horizon())
            .map(|i| pb::ForecastStep {
                timestamp_unix_ms: forecast.time_of(i).millis(),
                values: forecast.step_values(i).to_vec(),
            })
            .collect(),
        last_observed_unix_ms: from.last_observed,
    }
}

/// A wire forecast as a checked core forecast: levels strictly increasing in
/// (0, 1), a positive step, step times `start + i × step`, one finite value
/// per level in every step, and quantiles that do not cross. A client must
/// not trust a server further than this.
pub fn forecast_from_pb(f: &pb::Forecast) -> shardcast_core::Result<QuantileForecast> {
    let levels = QuantileSet::new(&f.quantiles)?;
    let step = GridStep::from_millis(f.step_ms).map_err(|_| Error::InvalidGridStep {
        text: format!("{} ms", f.step_ms),
    })?;
    let Some(first) = f.steps.first() else {
        return Err(Error::ForecastShape {
            got: 0,
            horizon: 0,
            quantiles: levels.len(),
        });
    };
    let start = Timestamp(first.timestamp_unix_ms);
    let mut values = Vec::with_capacity(f.steps.len() * levels.len());
    for (i, s) in f.steps.iter().enumerate() {
        let expected = i64::try_from(i)
            .ok()
            .and_then(|i| i.checked_mul(step.millis()))
            .and_then(|d| start.millis().checked_add(d));
        if expected != Some(s.timestamp_unix_ms) {
            return Err(Error::ForecastValues {
                step: i,
                reason: "its time is not the first step's time plus a whole number of steps",
            });
        }
        if s.values.len() != levels.len() {
            return Err(Error::ForecastValues {
                step: i,
                reason: "it has not one value per quantile level",
            });
        }
        values.extend_from_slice(&s.values);
    }
    QuantileForecast::new(levels, start, step, values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardcast_core::{GridStep, QuantileSet, Timestamp};

    #[test]
    fn keys_round_trip_and_bad_keys_are_refused() {
        let key = SeriesKey::new("a", "t", "m", "s").unwrap();
        let wire = key_to_pb(&key);
        assert_eq!(key_from_pb(Some(&wire)).unwrap(), Some(key));
        assert_eq!(key_from_pb(None).unwrap(), None);
        let bad = pb::SeriesKey {
            series: String::new(),
            ..wire
        };
        let err = key_from_pb(Some(&bad)).unwrap_err().to_string();
        assert!(err.contains("series"), "{err}");
    }

    #[test]
    fn forecasts_carry_times_levels_and_values() {
        let levels = QuantileSet::new(&[0.1, 0.5, 0.9]).unwrap();
        let step = GridStep::from_millis(60_000).unwrap();
        let f = QuantileForecast::new(
            levels,
            Timestamp(120_000),
            step,
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        )
        .unwrap();
        let key = key_to_pb(&SeriesKey::new("a", "t", "m", "s").unwrap());
        let from = Provenance {
            model: "default",
            version: 3,
            last_observed: 60_000,
        };
        let wire = forecast_to_pb(key, &f, from);
        assert_eq!(wire.quantiles, vec![0.1, 0.5, 0.9]);
        assert_eq!(wire.steps.len(), 2);
        assert_eq!(wire.steps[1].timestamp_unix_ms, 180_000);
        assert_eq!(wire.steps[1].values, vec![4.0, 5.0, 6.0]);
        assert_eq!((wire.model_version, wire.step_ms), (3, 60_000));
        assert_eq!(forecast_from_pb(&wire).unwrap(), f);
    }

    #[test]
    fn malformed_wire_forecasts_are_refused() {
        let good = pb::Forecast {
            step_ms: 60_000,
            quantiles: vec![0.1, 0.9],
            steps: (0..3)
                .map(|i| pb::ForecastStep {
                    timestamp_unix_ms: 60_000 * i,
                    values: vec![1.0, 2.0],
                })
                .collect(),
            ..Default::default()
        };
        assert_eq!(forecast_from_pb(&good).unwrap().horizon(), 3);
        type Breaker = fn(&mut pb::Forecast);
        let cases: Vec<(Breaker, &str)> = vec![
            (|f| f.quantiles = vec![0.9, 0.1], "strictly increasing"),
            (|f| f.quantiles = vec![0.1, 1.0], "outside"),
            (|f| f.step_ms = 0, "grid step"),
            (|f| f.steps.clear(), "0 values"),
            (|f| f.steps[2].timestamp_unix_ms += 1, "step 2"),
            (|f| f.steps[1].values.push(3.0), "one value per quantile"),
            (|f| f.steps[0].values = vec![2.0, 1.0], "cross"),
            (|f| f.steps[1].values[0] = f32::NAN, "not finite"),
        ];
        for (break_it, want) in cases {
            let mut f = good.clone();
            break_it(&mut f);
            let err = forecast_from_pb(&f).unwrap_err().to_string();
            assert!(err.contains(want), "{err} lacks {want}");
        }
    }
}
