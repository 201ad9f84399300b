use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{ShardType, Timestamp};

/// A scale decision for one shard type, made at `at`, with the reason that
/// drove it. Serialises to one JSON object (a line of the daemon's output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// When the decision was made (the planner's `now`).
    pub at: Timestamp,
    /// The shard type it is for.
    pub shard_type: ShardType,
    /// Healthy shards (ready and pending) before the decision.
    pub current: u32,
    /// Healthy shards wanted after the decision.
    pub desired: u32,
    /// Unhealthy shards to drain, terminate and replace (rollback).
    pub rollback: u32,
    /// Pre-initialised spare shards to keep warm beyond `desired`.
    pub warm_pool: u32,
    /// Which numbers drove the decision.
    pub reason: ScaleReason,
}

impl Decision {
    /// Shards to launch: the gap to `desired` (replacements for rolled-back
    /// shards are included, since they no longer count as healthy).
    pub fn launch(&self) -> u32 {
        self.desired.saturating_sub(self.current)
    }

    /// Healthy shards to release.
    pub fn release(&self) -> u32 {
        self.current.saturating_sub(self.desired)
    }

    /// One human sentence: what changes and why.
    pub fn explain(&self) -> String {
        let change = if self.desired == self.current {
            format!("hold at {} shards", self.desired)
        } else {
            format!("scale {} → {} shards", self.current, self.desired)
        };
        let mut s = format!("{}: {change}: {}", self.shard_type, self.reason);
        if self.rollback > 0 {
            s.push_str(&format!(
                "; replace {} unhealthy shard{}",
                self.rollback,
                plural(self.rollback)
            ));
        }
        if self.warm_pool > 0 {
            s.push_str(&format!("; keep {} warm", self.warm_pool));
        }
        s.push('.');
        s
    }
}

/// Why a scale decision came out as it did: the basis (forecast or
/// reactive fallback) and every limit that changed the number afterwards,
/// in the order they were applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleReason {
    /// What produced the first recommendation.
    pub basis: ScaleBasis,
    /// Limits applied afterwards, in order.
    pub adjustments: Vec<Adjustment>,
}

impl fmt::Display for ScaleReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.basis)?;
        for a in &self.adjustments {
            write!(f, "; {a}")?;
        }
        Ok(())
    }
}

/// What produced a recommendation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "basis", rename_all = "snake_case")]
pub enum ScaleBasis {
    /// The forecast's quantiles.
    Forecast(ForecastBasis),
    /// The reactive (Kubernetes HPA) rule, because no usable forecast was
    /// at hand.
    Reactive(ReactiveBasis),
}

impl fmt::Display for ScaleBasis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScaleBasis::Forecast(b) => b.fmt(f),
            ScaleBasis::Reactive(b) => b.fmt(f),
        }
    }
}

/// Which part of the look-ahead window a forecast number came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowPart {
    /// A step at or after `now + lead time`: shards launched now can serve it.
    ScaleUp,
    /// A step before `now + lead time`: only shards already running can
    /// serve it, so it only keeps them from being released.
    Retention,
}

/// The forecast numbers behind a recommendation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForecastBasis {
    /// The configured probability of covering demand.
    pub service_level: f64,
    /// The quantile level read at every step (equal to the service level,
    /// or stricter when the level must hold jointly over the window).
    pub step_level: f64,
    /// True when `step_level` lies above the forecast's highest level, so
    /// the highest level's value was used.
    pub level_clamped: bool,
    /// True when `step_level` lies above the forecast's highest level and
    /// its value was extrapolated from the upper tail.
    #[serde(default)]
    pub level_extrapolated: bool,
    /// Start of the step whose demand needed the most shards.
    pub binding_step: Timestamp,
    /// Which part of the window that step is in.
    pub binding_part: WindowPart,
    /// Demand at `step_level` in that step, in demand units.
    pub binding_demand: f64,
    /// Capacity of one shard, in demand units.
    pub capacity_per_shard: f64,
    /// Target utilisation of one shard.
    pub target_utilisation: f64,
    /// Shards needed: `ceil(binding_demand / (capacity × target))`.
    pub required: u32,
    /// Forecast steps considered.
    pub steps_considered: u32,
    /// Demand at the warm-pool level at the binding step, when a warm pool
    /// was sized from the forecast.
    pub warm_pool_level: Option<f64>,
    /// The value of demand at `warm_pool_level`.
    pub warm_pool_demand: Option<f64>,
}

impl fmt::Display for ForecastBasis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per = self.capacity_per_shard * self.target_utilisation;
        write!(
            f,
            "the {} quantile of demand at {} is {}",
            num(self.step_level),
            self.binding_step,
            num(self.binding_demand)
        )?;
        if self.level_clamped {
            f.write_str(" (the forecast's highest level)")?;
        }
        if self.level_extrapolated {
            f.write_str(" (extrapolated beyond the forecast's highest level)")?;
        }
        write!(
            f,
            "; at {} per shard (capacity {} × target utilisation {}) that needs {} shard{}",
            num(per),
            num(self.capacity_per_shard),
            num(self.target_utilisation),
            self.required,
            plural(self.required)
        )?;
        if self.binding_part == WindowPart::Retention {
            f.write_str(", kept because it is needed before replacements could be ready")?;
        }
        if self.step_level != self.service_level {
            write!(
                f,
                " (service level {} held jointly over {} steps)",
                num(self.service_level),
                self.steps_considered
            )?;
        }
        Ok(())
    }
}

/// Why the forecast was not used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum FallbackCause {
    /// No forecast was supplied.
    Missing,
    /// The forecast is older than allowed.
    Stale {
        /// `now − forecast start`, in milliseconds.
        age_ms: i64,
        /// The largest accepted age, in milliseconds.
        max_age_ms: i64,
    },
    /// The forecast could not be had: the server was unreachable, too slow,
    /// refused the request or answered with something unusable.
    Unavailable {
        /// What went wrong, in words.
        detail: String,
    },
    /// The forecast ends before the end of the provisioning lead time.
    ShortHorizon {
        /// Start of the forecast's last step.
        forecast_end: Timestamp,
        /// The first instant a new shard could serve.
        needed: Timestamp,
    },
}

impl fmt::Display for FallbackCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FallbackCause::Missing => f.write_str("no forecast"),
            FallbackCause::Stale { age_ms, max_age_ms } => write!(
                f,
                "the forecast is stale ({} s old, limit {} s)",
                age_ms / 1000,
                max_age_ms / 1000
            ),
            FallbackCause::Unavailable { detail } => {
                write!(f, "no usable forecast ({detail})")
            }
            FallbackCause::ShortHorizon {
                forecast_end,
                needed,
            } => write!(
                f,
                "the forecast ends at {forecast_end}, before {needed} when new shards could serve"
            ),
        }
    }
}

/// The numbers of the reactive rule
/// `desired = ceil(current × utilisation / target)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReactiveBasis {
    /// Why the forecast was not used.
    pub cause: FallbackCause,
    /// Observed demand, in demand units; `None` when unknown.
    pub observed_demand: Option<f64>,
    /// Observed utilisation of the ready shards.
    pub utilisation: Option<f64>,
    /// Target utilisation.
    pub target_utilisation: f64,
    /// Ratios within `1 ± tolerance` leave the count unchanged.
    pub tolerance: f64,
    /// `utilisation / target`.
    pub ratio: Option<f64>,
    /// The rule's count.
    pub required: u32,
}

impl fmt::Display for ReactiveBasis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "reactive fallback because of {}: ", self.cause)?;
        match (self.utilisation, self.ratio) {
            (Some(u), Some(r)) if (r - 1.0).abs() <= self.tolerance => write!(
                f,
                "utilisation {} is within {} of target {}, so {} shard{} stay",
                num(u),
                num(self.tolerance),
                num(self.target_utilisation),
                self.required,
                plural(self.required)
            ),
            (Some(u), Some(_)) => write!(
                f,
                "utilisation {} against target {} needs {} shard{}",
                num(u),
                num(self.target_utilisation),
                self.required,
                plural(self.required)
            ),
            _ => match self.observed_demand {
                Some(d) => write!(
                    f,
                    "demand {} at target {} needs {} shard{}",
                    num(d),
                    num(self.target_utilisation),
                    self.required,
                    plural(self.required)
                ),
                None => write!(
                    f,
                    "no observed demand either, so {} shard{} stay",
                    self.required,
                    plural(self.required)
                ),
            },
        }
    }
}

/// A limit that changed the recommended count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "limit", rename_all = "snake_case")]
pub enum Adjustment {
    /// Raised to the configured minimum.
    Min {
        /// Count before.
        from: u32,
        /// Count after.
        to: u32,
    },
    /// Lowered to the configured maximum.
    Max {
        /// Count before.
        from: u32,
        /// Count after.
        to: u32,
    },
    /// Scale-down held back by a higher recommendation within the
    /// stabilisation window.
    Stabilised {
        /// Count before.
        from: u32,
        /// Count after: the highest recommendation in the window.
        to: u32,
        /// Length of the window in seconds.
        window_secs: u64,
    },
    /// Without a forecast the planner never scales below the healthy count.
    Floor {
        /// Count before.
        from: u32,
        /// Count after.
        to: u32,
    },
    /// The change was larger than one decision may make.
    Step {
        /// Count before.
        from: u32,
        /// Count after.
        to: u32,
        /// The largest change allowed in this direction.
        max_step: u32,
    },
}

impl fmt::Display for Adjustment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Adjustment::Min { from, to } => write!(f, "raised from {from} to the minimum {to}"),
            Adjustment::Max { from, to } => write!(f, "lowered from {from} to the maximum {to}"),
            Adjustment::Stabilised {
                from,
                to,
                window_secs,
            } => write!(
                f,
                "scale-down to {from} held at {to}, the highest recommendation of the last {window_secs} s"
            ),
            Adjustment::Floor { from, to } => write!(
                f,
                "held at {to} instead of {from}: no scale-down without a forecast"
            ),
            Adjustment::Step { from, to, max_step } => write!(
                f,
                "limited from {from} to {to} by the step limit of {max_step}"
            ),
        }
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Formats a number with at most three decimals and no trailing zeros.
fn num(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forecast_decision() -> Decision {
        Decision {
            at: Timestamp(0),
            shard_type: ShardType::new("api-cpu").unwrap(),
            current: 4,
            desired: 6,
            rollback: 1,
            warm_pool: 2,
            reason: ScaleReason {
                basis: ScaleBasis::Forecast(ForecastBasis {
                    service_level: 0.95,
                    step_level: 0.95,
                    level_clamped: false,
                    level_extrapolated: false,
                    binding_step: Timestamp(600_000),
                    binding_part: WindowPart::ScaleUp,
                    binding_demand: 520.0,
                    capacity_per_shard: 125.0,
                    target_utilisation: 0.8,
                    required: 6,
                    steps_considered: 3,
                    warm_pool_level: Some(0.975),
                    warm_pool_demand: Some(700.0),
                }),
                adjustments: vec![],
            },
        }
    }

    #[test]
    fn forecast_sentence_names_quantile_and_numbers() {
        let d = forecast_decision();
        assert_eq!(
            d.explain(),
            "api-cpu: scale 4 → 6 shards: the 0.95 quantile of demand at \
             1970-01-01T00:10:00Z is 520; at 100 per shard (capacity 125 × target \
             utilisation 0.8) that needs 6 shards; replace 1 unhealthy shard; keep 2 warm."
        );
        assert_eq!(d.launch(), 2);
        assert_eq!(d.release(), 0);
    }

    #[test]
    fn reactive_sentence_and_adjustments() {
        let mut d = forecast_decision();
        d.rollback = 0;
        d.warm_pool = 0;
        d.desired = 4;
        d.reason = ScaleReason {
            basis: ScaleBasis::Reactive(ReactiveBasis {
                cause: FallbackCause::Stale {
                    age_ms: 1_800_000,
                    max_age_ms: 900_000,
                },
                observed_demand: Some(100.0),
                utilisation: Some(0.2),
                target_utilisation: 0.7,
                tolerance: 0.1,
                ratio: Some(0.2 / 0.7),
                required: 2,
            }),
            adjustments: vec![Adjustment::Floor { from: 2, to: 4 }],
        };
        assert_eq!(
            d.explain(),
            "api-cpu: hold at 4 shards: reactive fallback because of the forecast is stale \
             (1800 s old, limit 900 s): utilisation 0.2 against target 0.7 needs 2 shards; \
             held at 4 instead of 2: no scale-down without a forecast."
        );
    }

    #[test]
    fn serialises_with_tags() {
        let d = forecast_decision();
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["reason"]["basis"]["basis"], "forecast");
        assert_eq!(json["reason"]["basis"]["binding_part"], "scale_up");
        let back: Decision = serde_json::from_value(json).unwrap();
        assert_eq!(back, d);
        let a = serde_json::to_value(Adjustment::Step {
            from: 9,
            to: 6,
            max_step: 2,
        })
        .unwrap();
        assert_eq!(a["limit"], "step");
    }
}
