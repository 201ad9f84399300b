//! The daemon's metrics, for Prometheus to scrape (`shardcast plan
//! --metrics-listen`): per shard type the current, desired and warm-pool
//! counts, the forecast's quantiles at the lead time, fallback rounds by
//! cause and when a forecast was last used; per round its duration.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use shardcast_core::{Decision, FallbackCause, QuantileForecast, ScaleBasis, Timestamp};

type Labels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric the daemon exports.
#[derive(Debug)]
pub struct DaemonMetrics {
    registry: Registry,
    current: Family<Labels, Gauge>,
    desired: Family<Labels, Gauge>,
    warm_pool: Family<Labels, Gauge>,
    forecast: Family<Labels, FloatGauge>,
    fallbacks: Family<Labels, Counter>,
    last_forecast: Family<Labels, FloatGauge>,
    rounds: Counter,
    round_seconds: Histogram,
    /// The quantile labels last set per shard type, removed when a round
    /// falls back.
    levels: Mutex<HashMap<Labels, Vec<String>>>,
}

impl Default for DaemonMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("shardcast_plan");
        let m = Self {
            current: Family::default(),
            desired: Family::default(),
            warm_pool: Family::default(),
            forecast: Family::default(),
            fallbacks: Family::default(),
            last_forecast: Family::default(),
            rounds: Counter::default(),
            // 1 ms to about 16 s.
            round_seconds: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            registry: Registry::default(),
            levels: Mutex::default(),
        };
        registry.register(
            "shards_current",
            "Healthy shards (ready and pending) before the round's decision",
            m.current.clone(),
        );
        registry.register(
            "shards_desired",
            "Healthy shards the round's decision wants",
            m.desired.clone(),
        );
        registry.register(
            "shards_warm_pool",
            "Spare shards the round's decision keeps warm beyond the desired count",
            m.warm_pool.clone(),
        );
        registry.register(
            "forecast_demand",
            "The shard type's summed demand forecast at the lead time, by quantile \
             (absent while the round fell back to the reactive rule)",
            m.forecast.clone(),
        );
        registry.register(
            "fallbacks",
            "Rounds planned by the reactive rule instead of the forecast, by cause",
            m.fallbacks.clone(),
        );
        registry.register(
            "last_forecast_timestamp_seconds",
            "Wall-clock time of the last round that planned from the forecast",
            m.last_forecast.clone(),
        );
        registry.register("rounds", "Planning rounds run", m.rounds.clone());
        registry.register(
            "round_duration_seconds",
            "Wall-clock time of a planning round, forecasts included",
            m.round_seconds.clone(),
        );
        Self { registry, ..m }
    }
}

/// Every value of the `cause` label.
const CAUSES: [&str; 4] = ["missing", "stale", "unavailable", "short_horizon"];

/// The label value of a fallback cause (its serialised tag).
fn cause(c: &FallbackCause) -> &'static str {
    match c {
        FallbackCause::Missing => "missing",
        FallbackCause::Stale { .. } => "stale",
        FallbackCause::Unavailable { .. } => "unavailable",
        FallbackCause::ShortHorizon { .. } => "short_horizon",
    }
}

impl DaemonMetrics {
    /// Records one shard type's decision, with the forecast it was planned
    /// on (if any) read at `now + lead_ms`.
    pub(crate) fn decision(
        &self,
        app: &str,
        d: &Decision,
        forecast: Option<&QuantileForecast>,
        lead_ms: i64,
    ) {
        let labels = vec![
            ("app", app.to_owned()),
            ("shard_type", d.shard_type.as_str().to_owned()),
        ];
        self.current
            .get_or_create(&labels)
            .set(i64::from(d.current));
        self.desired
            .get_or_create(&labels)
            .set(i64::from(d.desired));
        self.warm_pool
            .get_or_create(&labels)
            .set(i64::from(d.warm_pool));
        let with_level = |level: &str| {
            let mut l = labels.clone();
            l.push(("quantile", level.to_owned()));
            l
        };
        let with_cause = |cause: &str| {
            let mut l = labels.clone();
            l.push(("cause", cause.to_owned()));
            l
        };
        // Every cause's counter exists from the first round, at zero, so
        // that `increase()` sees the first fallback.
        for c in CAUSES {
            self.fallbacks.get_or_create(&with_cause(c)).inc_by(0);
        }
        let mut set = self.levels.lock().unwrap_or_else(|e| e.into_inner());
        for level in set.remove(&labels).unwrap_or_default() {
            self.forecast.remove(&with_level(&level));
        }
        match (&d.reason.basis, forecast) {
            (ScaleBasis::Forecast(_), Some(f)) => {
                let at = Timestamp(d.at.0.saturating_add(lead_ms));
                let i = (0..f.horizon())
                    .find(|&i| f.time_of(i) >= at)
                    .unwrap_or(f.horizon() - 1);
                let mut names = Vec::with_capacity(f.levels().len());
                for (level, &v) in f.levels().levels().iter().zip(f.step_values(i)) {
                    let name = level.to_string();
                    self.forecast
                        .get_or_create(&with_level(&name))
                        .set(f64::from(v));
                    names.push(name);
                }
                set.insert(labels.clone(), names);
                self.last_forecast
                    .get_or_create(&labels)
                    .set(unix_seconds());
            }
            (ScaleBasis::Reactive(r), _) => {
                self.fallbacks
                    .get_or_create(&with_cause(cause(&r.cause)))
                    .inc();
            }
            (ScaleBasis::Forecast(_), None) => {}
        }
    }

    /// Records a finished round of `seconds`.
    pub(crate) fn round(&self, seconds: f64) {
        self.rounds.inc();
        self.round_seconds.observe(seconds);
    }

    /// The metrics in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
