//! Scale decisions: how many shards of one type to run.
//!
//! # How the forecast becomes a count
//!
//! With `n` shards of capacity `c` run at target utilisation `u`, demand `D`
//! of a step is covered when `D ≤ n·c·u`, so the probability of covering the
//! step is the forecast CDF at `n·c·u`. The smallest `n` whose probability
//! meets the service level `s` is `ceil(Q(s) / (c·u))`, where `Q(s)` is the
//! forecast's `s`-quantile of that step (interpolated linearly between the
//! forecast's levels, flat beyond its lowest and highest level; the reason
//! records when the level lay beyond the highest one).
//!
//! A shard launched at `now` serves from `now + lead`. The window is split:
//! - **scale-up steps**, from `now + lead` to `now + lead + hold`: shards
//!   launched now can serve them, so the count must cover each of them;
//! - **retention steps**, from `now` to `now + lead`: a launch cannot help
//!   them any more, but a release would hurt, so they only stop running
//!   shards from being released.
//!
//! The recommendation is `max(scale_up, min(healthy, retention))`, where each
//! part is the largest per-step count over its steps.
//!
//! How the steps combine is [`StepCombination`]: by default the service
//! level holds at every step on its own (the marginal probability of each
//! step is at least `s`). `joint` instead reads each step at level
//! `1 − (1 − s)/k` for `k` steps, which by the union bound makes the
//! probability of covering all `k` steps together at least `s` whatever the
//! dependence between steps.
//!
//! Then, in order: clamp to `[min, max]` (this is the recommendation that
//! the stabilisation window remembers); scale-down stabilisation (the
//! Kubernetes HPA rule: never scale below the highest recommendation of the
//! window); in fallback, never below the healthy count; the step limits; and
//! a final clamp to `[min, max]`, so the count always lies within them.
//!
//! # Fallback
//!
//! Without a usable forecast (missing, older than `max_forecast_age_secs`, or
//! ending before `now + lead`) the planner applies the reactive HPA rule
//! `ceil(ready × utilisation / target)` with a tolerance band, and never
//! scales below the healthy count.
//!
//! # Rollback
//!
//! Unhealthy shards do not count as healthy: the decision says to drain and
//! terminate them (`rollback`) and the gap to `desired` launches their
//! replacements.

use serde::{Deserialize, Serialize};
use shardcast_core::{
    Adjustment, Decision, FallbackCause, ForecastBasis, QuantileForecast, ReactiveBasis,
    ScaleBasis, ScaleReason, ShardType, Timestamp, WindowPart,
};

use crate::error::{Error, Result, check_open_unit, check_range};

/// How the service level applies over the steps of the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepCombination {
    /// The service level holds at each step on its own.
    #[default]
    EachStep,
    /// The service level holds for all steps together (union bound).
    Joint,
}

/// How a service level above the forecast's highest quantile level is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tail {
    /// The highest level's value (the reason records the clamp), so levels
    /// above it buy nothing more.
    #[default]
    Flat,
    /// An exponential upper tail through the two highest levels `a < b`:
    /// `Q(s) = Q(b) + (Q(b) − Q(a)) · ln((1 − b)/(1 − s)) / ln((1 − a)/(1 − b))`,
    /// so every halving of the exceedance probability adds as much demand as
    /// the step from `a` to `b` did (for 0.95 and 0.975). Heavier than a
    /// normal tail, which suits demand spikes.
    Exponential,
}

/// The reactive rule of the Kubernetes Horizontal Pod Autoscaler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReactivePolicy {
    /// Utilisation the rule steers to, in (0, 1].
    pub target_utilisation: f64,
    /// Ratios `utilisation / target` within `1 ± tolerance` change nothing.
    pub tolerance: f64,
}

impl Default for ReactivePolicy {
    fn default() -> Self {
        Self {
            target_utilisation: 0.7,
            tolerance: 0.1,
        }
    }
}

impl ReactivePolicy {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        check_range(
            "reactive.target_utilisation",
            self.target_utilisation,
            f64::MIN_POSITIVE,
            1.0,
            "must lie in (0, 1]",
        )?;
        check_range(
            "reactive.tolerance",
            self.tolerance,
            0.0,
            1.0,
            "must lie in [0, 1]",
        )
    }
}

/// How many spare, pre-initialised shards to keep warm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WarmPoolPolicy {
    /// Upper quantile level the pool is sized from: the pool covers the gap
    /// between this level's count and the desired count. `None` sizes the
    /// pool at `min` only.
    pub level: Option<f64>,
    /// Smallest pool (also used in fallback).
    pub min: u32,
    /// Largest pool.
    pub max: u32,
}

impl Default for WarmPoolPolicy {
    fn default() -> Self {
        Self {
            level: Some(0.975),
            min: 0,
            max: 4,
        }
    }
}

/// Scale policy of one shard type. Data: parse it from TOML or JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScalePolicy {
    /// Probability of covering demand that the count must reach, in (0, 1).
    pub service_level: f64,
    /// How the service level applies over several steps.
    pub step_combination: StepCombination,
    /// How levels above the forecast's highest level are read.
    pub tail: Tail,
    /// Demand one shard can serve at full utilisation, in demand units.
    pub capacity_per_shard: f64,
    /// Utilisation to plan each shard for, in (0, 1].
    pub target_utilisation: f64,
    /// Time from launching a shard until it serves, in seconds.
    pub lead_time_secs: u64,
    /// How long after the lead time the count must keep covering demand,
    /// in seconds (0: the step at `now + lead` only).
    pub hold_secs: u64,
    /// Fewest shards.
    pub min_shards: u32,
    /// Most shards.
    pub max_shards: u32,
    /// Scale-down stabilisation window, in seconds: the count never drops
    /// below a recommendation made at most this long ago.
    pub scale_down_stabilisation_secs: u64,
    /// Most shards one decision may add.
    pub max_step_up: u32,
    /// Most shards one decision may remove.
    pub max_step_down: u32,
    /// Warm pool sizing.
    pub warm_pool: WarmPoolPolicy,
    /// Forecasts whose first step is older than this are stale, in seconds.
    pub max_forecast_age_secs: u64,
    /// The rule used when no usable forecast is at hand.
    pub fallback: ReactivePolicy,
}

impl Default for ScalePolicy {
    fn default() -> Self {
        Self {
            service_level: 0.95,
            step_combination: StepCombination::EachStep,
            tail: Tail::Flat,
            capacity_per_shard: 1.0,
            target_utilisation: 0.8,
            lead_time_secs: 600,
            hold_secs: 0,
            min_shards: 1,
            max_shards: 1000,
            scale_down_stabilisation_secs: 300,
            max_step_up: 20,
            max_step_down: 10,
            warm_pool: WarmPoolPolicy::default(),
            max_forecast_age_secs: 900,
            fallback: ReactivePolicy::default(),
        }
    }
}

impl ScalePolicy {
    /// Checks every field's range and that `min_shards <= max_shards`.
    pub fn validate(&self) -> Result<()> {
        check_open_unit("scale.service_level", self.service_level)?;
        check_range(
            "scale.capacity_per_shard",
            self.capacity_per_shard,
            f64::MIN_POSITIVE,
            f64::MAX,
            "must be positive",
        )?;
        check_range(
            "scale.target_utilisation",
            self.target_utilisation,
            f64::MIN_POSITIVE,
            1.0,
            "must lie in (0, 1]",
        )?;
        if self.min_shards > self.max_shards {
            return Err(Error::InvalidValue {
                field: "scale.min_shards",
                value: f64::from(self.min_shards),
                reason: "must not exceed max_shards",
            });
        }
        if let Some(level) = self.warm_pool.level {
            check_open_unit("scale.warm_pool.level", level)?;
        }
        if self.warm_pool.min > self.warm_pool.max {
            return Err(Error::InvalidValue {
                field: "scale.warm_pool.min",
                value: f64::from(self.warm_pool.min),
                reason: "must not exceed warm_pool.max",
            });
        }
        self.fallback.validate()
    }

    fn ms(secs: u64) -> i64 {
        i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
    }
}

/// A past recommendation, remembered for scale-down stabilisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recommendation {
    /// When it was made.
    pub at: Timestamp,
    /// The count recommended (after clamping to min and max, before
    /// stabilisation and step limits).
    pub shards: u32,
}

/// What the caller knows about one shard type now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScaleState {
    /// Shards serving.
    pub ready: u32,
    /// Shards launched but not yet serving.
    pub pending: u32,
    /// Shards failing health checks.
    pub unhealthy: u32,
    /// Demand observed over the last step, in demand units (for fallback).
    pub observed_demand: Option<f64>,
    /// Recommendations of earlier decisions (from [`ScaleOutcome`]).
    pub recommendations: Vec<Recommendation>,
}

impl ScaleState {
    /// Ready plus pending shards.
    pub fn healthy(&self) -> u32 {
        self.ready.saturating_add(self.pending)
    }
}

/// A decision and the state the next call needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleOutcome {
    /// The decision with its reason.
    pub decision: Decision,
    /// Recommendations to pass back in the next [`ScaleState`].
    pub recommendations: Vec<Recommendation>,
}

/// `ceil(demand / per_shard)`, ignoring rounding noise just above an
/// integer, and 0 for no demand.
pub fn shards_needed(demand: f64, per_shard: f64) -> u32 {
    let x = demand / per_shard;
    if x.is_nan() || x <= 0.0 {
        return 0;
    }
    let c = (x - 1e-9 * x.max(1.0)).ceil();
    if c >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        c as u32
    }
}

/// The reactive HPA rule alone: `ceil(ready × utilisation / target)` where
/// `utilisation = demand / (ready × capacity)`, unchanged (`healthy`) when
/// the ratio is within the tolerance. With no ready shard, the count that
/// serves `demand` at the target. With no observed demand, `healthy`.
pub fn reactive_count(
    healthy: u32,
    ready: u32,
    observed_demand: Option<f64>,
    capacity_per_shard: f64,
    policy: &ReactivePolicy,
    cause: FallbackCause,
) -> ReactiveBasis {
    let mut basis = ReactiveBasis {
        cause,
        observed_demand,
        utilisation: None,
        target_utilisation: policy.target_utilisation,
        tolerance: policy.tolerance,
        ratio: None,
        required: healthy,
    };
    let Some(demand) = observed_demand else {
        return basis;
    };
    if ready == 0 {
        basis.required = shards_needed(demand, capacity_per_shard * policy.target_utilisation);
        return basis;
    }
    let utilisation = demand / (f64::from(ready) * capacity_per_shard);
    let ratio = utilisation / policy.target_utilisation;
    basis.utilisation = Some(utilisation);
    basis.ratio = Some(ratio);
    basis.required = if (ratio - 1.0).abs() <= policy.tolerance {
        healthy
    } else {
        shards_needed(f64::from(ready) * ratio, 1.0)
    };
    basis
}

/// Plans one shard type at `now`. Pure: the same arguments give the same
/// outcome, and replanning at the same `now` with the returned
/// recommendations gives the same decision.
pub fn plan_scale(
    now: Timestamp,
    shard_type: &ShardType,
    policy: &ScalePolicy,
    state: &ScaleState,
    forecast: Option<&QuantileForecast>,
) -> Result<ScaleOutcome> {
    plan_scale_or(
        now,
        shard_type,
        policy,
        state,
        forecast.ok_or(FallbackCause::Missing),
    )
}

/// [`plan_scale`] where the caller says why it has no forecast (the server
/// was unreachable, answered garbage, …); the reason carries that cause.
pub fn plan_scale_or(
    now: Timestamp,
    shard_type: &ShardType,
    policy: &ScalePolicy,
    state: &ScaleState,
    forecast: std::result::Result<&QuantileForecast, FallbackCause>,
) -> Result<ScaleOutcome> {
    policy.validate()?;
    if let Some(d) = state.observed_demand {
        check_range(
            "state.observed_demand",
            d,
            0.0,
            f64::MAX,
            "must be finite and not negative",
        )?;
    }
    let healthy = state.healthy();
    let (basis, raw, warm) = match forecast_basis(now, policy, healthy, forecast) {
        Ok((basis, warm)) => {
            let raw = basis.required;
            (ScaleBasis::Forecast(basis), raw, warm)
        }
        Err(cause) => {
            let basis = reactive_count(
                healthy,
                state.ready,
                state.observed_demand,
                policy.capacity_per_shard,
                &policy.fallback,
                cause,
            );
            let raw = basis.required;
            (ScaleBasis::Reactive(basis), raw, policy.warm_pool.min)
        }
    };
    let fallback = matches!(basis, ScaleBasis::Reactive(_));

    let mut adjustments = Vec::new();
    let mut n = clamp(raw, policy, &mut adjustments);
    let recommendation = n;

    let window_ms = ScalePolicy::ms(policy.scale_down_stabilisation_secs);
    // Recommendations from the future (a clock that jumped back) are
    // ignored rather than holding the count up indefinitely.
    let in_window =
        |r: &&Recommendation| r.at.0 >= now.0.saturating_sub(window_ms) && r.at.0 < now.0;
    if n < healthy && window_ms > 0 {
        let highest = state
            .recommendations
            .iter()
            .filter(in_window)
            .map(|r| r.shards)
            .max()
            .unwrap_or(0);
        let to = highest.min(healthy);
        if to > n {
            adjustments.push(Adjustment::Stabilised {
                from: n,
                to,
                window_secs: policy.scale_down_stabilisation_secs,
            });
            n = to;
        }
    }
    if fallback && n < healthy {
        adjustments.push(Adjustment::Floor {
            from: n,
            to: healthy,
        });
        n = healthy;
    }
    if n > healthy.saturating_add(policy.max_step_up) {
        let to = healthy.saturating_add(policy.max_step_up);
        adjustments.push(Adjustment::Step {
            from: n,
            to,
            max_step: policy.max_step_up,
        });
        n = to;
    } else if n < healthy.saturating_sub(policy.max_step_down) {
        let to = healthy.saturating_sub(policy.max_step_down);
        adjustments.push(Adjustment::Step {
            from: n,
            to,
            max_step: policy.max_step_down,
        });
        n = to;
    }
    let desired = clamp(n, policy, &mut adjustments);

    let mut recommendations: Vec<Recommendation> = state
        .recommendations
        .iter()
        .filter(in_window)
        .copied()
        .collect();
    recommendations.push(Recommendation {
        at: now,
        shards: recommendation,
    });
    recommendations.sort_by_key(|r| r.at);

    let decision = Decision {
        at: now,
        shard_type: shard_type.clone(),
        current: healthy,
        desired,
        rollback: state.unhealthy,
        warm_pool: warm.clamp(policy.warm_pool.min, policy.warm_pool.max),
        reason: ScaleReason { basis, adjustments },
    };
    tracing::debug!(
        shard_type = %shard_type,
        current = healthy,
        desired,
        fallback,
        "scale decision"
    );
    Ok(ScaleOutcome {
        decision,
        recommendations,
    })
}

fn clamp(n: u32, policy: &ScalePolicy, adjustments: &mut Vec<Adjustment>) -> u32 {
    if n < policy.min_shards {
        adjustments.push(Adjustment::Min {
            from: n,
            to: policy.min_shards,
        });
        policy.min_shards
    } else if n > policy.max_shards {
        adjustments.push(Adjustment::Max {
            from: n,
            to: policy.max_shards,
        });
        policy.max_shards
    } else {
        n
    }
}

/// The forecast part of a decision, or why the forecast cannot be used.
/// Returns the basis and the warm-pool size before clamping.
fn forecast_basis(
    now: Timestamp,
    policy: &ScalePolicy,
    healthy: u32,
    forecast: std::result::Result<&QuantileForecast, FallbackCause>,
) -> Result<(ForecastBasis, u32), FallbackCause> {
    let f = forecast?;
    let max_age_ms = ScalePolicy::ms(policy.max_forecast_age_secs);
    let age_ms = now.0.saturating_sub(f.start().0);
    if age_ms > max_age_ms {
        return Err(FallbackCause::Stale { age_ms, max_age_ms });
    }
    let lead_end = now.0.saturating_add(ScalePolicy::ms(policy.lead_time_secs));
    let hold_end = lead_end.saturating_add(ScalePolicy::ms(policy.hold_secs));
    let dt = f.step().millis();
    let mut up = Vec::new();
    let mut retention = Vec::new();
    for i in 0..f.horizon() {
        let s = f.time_of(i).0;
        let e = s.saturating_add(dt);
        if e > lead_end && s <= hold_end {
            up.push(i);
        } else if e > now.0 && s < lead_end {
            retention.push(i);
        }
    }
    if up.is_empty() {
        return Err(FallbackCause::ShortHorizon {
            forecast_end: f.time_of(f.horizon().saturating_sub(1)),
            needed: Timestamp(lead_end),
        });
    }
    let k = (up.len() + retention.len()) as f64;
    let step_level = match policy.step_combination {
        StepCombination::EachStep => policy.service_level,
        StepCombination::Joint => 1.0 - (1.0 - policy.service_level) / k,
    };
    let per_shard = policy.capacity_per_shard * policy.target_utilisation;
    let worst = |steps: &[usize]| -> Option<(u32, usize, f64)> {
        let mut best: Option<(u32, usize, f64)> = None;
        for &i in steps {
            let d = quantile(f, i, step_level, policy.tail);
            let n = shards_needed(d, per_shard);
            if best.is_none_or(|(bn, _, bd)| n > bn || (n == bn && d > bd)) {
                best = Some((n, i, d));
            }
        }
        best
    };
    let (up_n, up_i, up_d) = worst(&up).ok_or(FallbackCause::Missing)?;
    let (mut required, mut binding, mut part) = ((up_n, up_i, up_d), up_i, WindowPart::ScaleUp);
    if let Some((ret_n, ret_i, ret_d)) = worst(&retention) {
        let kept = ret_n.min(healthy);
        if kept > up_n {
            required = (kept, ret_i, ret_d);
            binding = ret_i;
            part = WindowPart::Retention;
        }
    }
    let highest = f.levels().levels().last().map_or(1.0, |q| q.get());
    let (warm, warm_level, warm_demand) = match policy.warm_pool.level {
        Some(level) => {
            let d = up
                .iter()
                .map(|&i| quantile(f, i, level, policy.tail))
                .fold(f64::NEG_INFINITY, f64::max);
            let n = shards_needed(d, per_shard);
            (n.saturating_sub(required.0), Some(level), Some(d))
        }
        None => (0, None, None),
    };
    Ok((
        ForecastBasis {
            service_level: policy.service_level,
            step_level,
            level_clamped: step_level > highest && policy.tail == Tail::Flat,
            level_extrapolated: step_level > highest && policy.tail != Tail::Flat,
            binding_step: f.time_of(binding),
            binding_part: part,
            binding_demand: required.2,
            capacity_per_shard: policy.capacity_per_shard,
            target_utilisation: policy.target_utilisation,
            required: required.0,
            steps_considered: k as u32,
            warm_pool_level: warm_level,
            warm_pool_demand: warm_demand,
        },
        warm,
    ))
}

/// The `level` quantile of step `i`: interpolated between the forecast's
/// levels, flat below the lowest and read from `tail` above the highest.
fn quantile(f: &QuantileForecast, i: usize, level: f64, tail: Tail) -> f64 {
    let levels = f.levels().levels();
    let k = levels.len();
    let top = levels[k - 1].get();
    if tail == Tail::Flat || level <= top || k < 2 {
        return f64::from(f.interpolate(i, level));
    }
    let row = f.step_values(i);
    let (qa, qb) = (f64::from(row[k - 2]), f64::from(row[k - 1]));
    let (a, b) = (levels[k - 2].get(), top);
    let per_nat = (qb - qa).max(0.0) / ((1.0 - a) / (1.0 - b)).ln();
    qb + per_nat * ((1.0 - b) / (1.0 - level)).ln()
}

/// One shard type's inputs to [`plan_all`].
#[derive(Debug, Clone, Copy)]
pub struct ScaleInput<'a> {
    /// The shard type.
    pub shard_type: &'a ShardType,
    /// Its policy.
    pub policy: &'a ScalePolicy,
    /// Its state.
    pub state: &'a ScaleState,
    /// Its demand forecast, if any.
    pub forecast: Option<&'a QuantileForecast>,
}

/// Plans every shard type at `now`, in the order given.
pub fn plan_all(now: Timestamp, inputs: &[ScaleInput<'_>]) -> Result<Vec<ScaleOutcome>> {
    inputs
        .iter()
        .map(|i| plan_scale(now, i.shard_type, i.policy, i.state, i.forecast))
        .collect()
}

#[cfg(test)]
mod tests;
