//! The simulator of protocol P: replay a demand trace through a policy.
//!
//! # Model
//!
//! Demand is given on a regular grid in **shard units** (demand divided by
//! the capacity of one shard), so one ready shard serves one unit. At the
//! start of step `t` a policy names the number of shards it wants
//! (`shards_requested`); new shards requested at step `t` serve from step
//! `t + lead`. Releasing is immediate and cancels pending shards before
//! ready ones (newest first). The run starts warm: what a policy asks for
//! at step 0 is ready at step 0.
//!
//! Policies decide from what they could know at the start of step `t`:
//! - **reactive** sees the demand of step `t − 1` (of step 0 at step 0) and
//!   applies the Kubernetes HPA rule with a tolerance and scale-down
//!   stabilisation. A step up at step `T` is seen at `T + 1` and served from
//!   `T + 1 + lead`: the reactive policy is short for `lead + 1` steps.
//! - **oracle** knows the whole trace: at step `t` it asks for
//!   `max(ceil(demand[s]))` over `s ∈ [t, t + lead]`, the fewest shards
//!   that keep demand covered at every step (a shard needed at `s` must be
//!   requested by `s − lead` and must not be released before `s`); with
//!   newest-first releases this covers every step and no schedule has fewer
//!   shards at any step.
//! - **shardcast** asks a [`Forecaster`] for a forecast from the
//!   history before step `t` ([`collect_forecasts`]) and runs [`crate::scale::plan_scale`] on it.
//!
//! # Figures
//!
//! A step is under-provisioned when demand exceeds the ready shards; the
//! excess is unserved demand. Shard-hours count requested shards (pending
//! ones are paid for too). A scale action is a step whose requested count
//! differs from the step before.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use shardcast_core::{
    FallbackCause, Forecaster, GridStep, QuantileForecast, ScaleBasis, ShardType, Timestamp, Window,
};

use crate::error::{Error, Result, check_open_unit};
use crate::scale::{
    ReactivePolicy, Recommendation, ScalePolicy, ScaleState, Tail, WarmPoolPolicy, plan_scale,
    reactive_count, shards_needed,
};

/// Demand on a regular grid, in shard units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    /// Time of the first value.
    pub start: Timestamp,
    /// Grid spacing.
    pub step: GridStep,
    /// Demand per step, in shard units; finite and not negative.
    pub values: Vec<f64>,
}

impl Trace {
    /// Checks the values and builds a trace.
    pub fn new(start: Timestamp, step: GridStep, values: Vec<f64>) -> Result<Self> {
        if values.is_empty() {
            return Err(Error::EmptyTrace);
        }
        if let Some((index, &value)) = values
            .iter()
            .enumerate()
            .find(|(_, v)| !v.is_finite() || **v < 0.0)
        {
            return Err(Error::InvalidTrace { index, value });
        }
        Ok(Self {
            start,
            step,
            values,
        })
    }

    /// Builds a trace from raw demand and the capacity of one shard.
    pub fn from_demand(
        start: Timestamp,
        step: GridStep,
        demand: &[f64],
        capacity_per_shard: f64,
    ) -> Result<Self> {
        crate::error::check_range(
            "capacity_per_shard",
            capacity_per_shard,
            f64::MIN_POSITIVE,
            f64::MAX,
            "must be positive",
        )?;
        Self::new(
            start,
            step,
            demand.iter().map(|d| d / capacity_per_shard).collect(),
        )
    }

    /// Time of step `t`.
    pub fn time_of(&self, t: usize) -> Timestamp {
        Timestamp(self.start.0 + self.step.millis() * t as i64)
    }
}

/// Whole steps a lead time takes on a grid, rounded up.
pub fn lead_steps(lead_secs: u64, step: GridStep) -> usize {
    let lead_ms = u128::from(lead_secs) * 1000;
    let step_ms = step.millis().max(1) as u128;
    lead_ms.div_ceil(step_ms) as usize
}

/// Settings of a simulation run. Data: parse it from TOML or JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Steps from requesting a shard until it serves.
    pub lead_steps: usize,
    /// Fewest shards any policy may run.
    pub min_shards: u32,
    /// Most shards any policy may run.
    pub max_shards: u32,
    /// The reactive rule (its target utilisation is the reactive knob).
    pub reactive: ReactivePolicy,
    /// Scale-down stabilisation of the reactive policy, in seconds.
    pub reactive_stabilisation_secs: u64,
    /// The planner's policy for the shardcast run (its service level is the
    /// knob; its lead time, capacity and min/max are set by the simulator).
    pub shardcast: ScalePolicy,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            lead_steps: 2,
            min_shards: 1,
            max_shards: 100_000,
            reactive: ReactivePolicy::default(),
            reactive_stabilisation_secs: 300,
            shardcast: ScalePolicy {
                // The quantile is the headroom: plan shards for full use.
                target_utilisation: 1.0,
                // Service levels above the forecast's highest level (0.975
                // for the protocol's levels) still buy headroom.
                tail: Tail::Exponential,
                max_step_up: 100_000,
                max_step_down: 100_000,
                warm_pool: WarmPoolPolicy {
                    level: None,
                    min: 0,
                    max: 0,
                },
                ..ScalePolicy::default()
            },
        }
    }
}

impl SimConfig {
    /// The planner policy of a shardcast run at `service_level` on `step`.
    pub fn shardcast_policy(&self, service_level: f64, step: GridStep) -> ScalePolicy {
        let lead_ms = step.millis().saturating_mul(self.lead_steps as i64);
        ScalePolicy {
            service_level,
            capacity_per_shard: 1.0,
            lead_time_secs: u64::try_from(lead_ms / 1000).unwrap_or(0),
            min_shards: self.min_shards,
            max_shards: self.max_shards,
            ..self.shardcast.clone()
        }
    }

    fn validate(&self) -> Result<()> {
        if self.min_shards > self.max_shards {
            return Err(Error::InvalidValue {
                field: "sim.min_shards",
                value: f64::from(self.min_shards),
                reason: "must not exceed max_shards",
            });
        }
        self.reactive.validate()
    }
}

/// Which policy produced a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// The Kubernetes HPA rule.
    Reactive,
    /// Perfect foresight.
    Oracle,
    /// The planner on forecasts.
    Shardcast,
}

impl PolicyKind {
    /// Lower-case name, as in the records.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Reactive => "reactive",
            PolicyKind::Oracle => "oracle",
            PolicyKind::Shardcast => "shardcast",
        }
    }
}

/// One step of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Start of the step.
    pub ts: Timestamp,
    /// The policy.
    pub policy: PolicyKind,
    /// The policy's knob (target utilisation or service level); `None` for
    /// the oracle.
    pub knob: Option<f64>,
    /// Demand, in shard units.
    pub demand: f64,
    /// Shards serving during the step.
    pub shards_ready: u32,
    /// Shards requested (ready and pending).
    pub shards_requested: u32,
}

/// The figures of protocol P for one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The policy.
    pub policy: PolicyKind,
    /// Its knob.
    pub knob: Option<f64>,
    /// Steps replayed.
    pub steps: usize,
    /// Steps whose demand exceeded the ready shards.
    pub under_provisioned_steps: usize,
    /// The same as a percentage of all steps.
    pub under_provisioned_pct: f64,
    /// Demand above the ready shards, as a percentage of all demand.
    pub unserved_demand_pct: f64,
    /// Requested shards × hours.
    pub shard_hours: f64,
    /// `shard_hours` divided by the oracle's, when known.
    pub shard_hours_vs_oracle: Option<f64>,
    /// Steps whose requested count changed.
    pub scale_actions: usize,
    /// Mean of ready shards beyond demand, per step.
    pub mean_idle_shards: f64,
    /// Steps decided by the reactive fallback for want of a usable forecast.
    pub fallback_steps: usize,
}

/// A run: its per-step records and summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimRun {
    /// Figures.
    pub summary: Summary,
    /// One record per step.
    pub records: Vec<StepRecord>,
}

/// Forecasts computed per forecaster call: windows of consecutive steps
/// are batched, as one call is much cheaper than one per window.
const BLOCK: usize = 256;

/// The series a trace was made from, in its own units, as the shardcast
/// policy's forecaster reads it: the trace is `values[offset..] /
/// capacity`, and the forecast for trace step `t` is made from
/// `values[..offset + t]` alone.
#[derive(Debug, Clone, Copy)]
pub struct Demand<'a> {
    /// The series id the forecaster knows it by.
    pub series: &'a str,
    /// Its shard type.
    pub shard_type: &'a str,
    /// Time of `values[0]`.
    pub start: Timestamp,
    /// Observed demand on the trace's grid, the points before the trace
    /// included.
    pub values: &'a [f32],
    /// Event indicator on the same grid (events are known ahead).
    pub events: Option<&'a [f32]>,
    /// Demand one shard serves.
    pub capacity: f64,
}

impl<'a> Demand<'a> {
    /// Demand in shard units on one grid, for tests and callers that have
    /// no other history: capacity 1, values as given.
    pub fn of_trace(trace: &Trace, values: &'a [f32]) -> Self {
        Self {
            series: "",
            shard_type: "",
            start: trace.start,
            values,
            events: None,
            capacity: 1.0,
        }
    }

    /// Where trace step 0 sits in `values`, checking that the trace is
    /// this series divided by the capacity.
    fn offset_of(&self, trace: &Trace) -> Result<usize> {
        let step = trace.step.millis();
        let since = trace.start.0 - self.start.0;
        let bad = |reason: String| Error::Forecasts(format!("series `{}`: {reason}", self.series));
        if since < 0 || since % step != 0 {
            return Err(bad(format!(
                "the trace starts at {}, not on the series' grid from {} by {}",
                trace.start, self.start, trace.step
            )));
        }
        let offset = (since / step) as usize;
        if offset + trace.values.len() > self.values.len() {
            return Err(bad(format!(
                "the trace ends after the series ({} points from point {offset}, {} in all)",
                trace.values.len(),
                self.values.len()
            )));
        }
        crate::error::check_range(
            "capacity",
            self.capacity,
            f64::MIN_POSITIVE,
            f64::MAX,
            "must be positive",
        )?;
        for (t, &v) in trace.values.iter().enumerate() {
            let stored = f64::from(self.values[offset + t]) / self.capacity;
            if (v - stored).abs() > 1e-6 * stored.abs().max(1.0) {
                return Err(bad(format!(
                    "the trace ({v}) differs from the series divided by the capacity ({stored}) at point {}",
                    offset + t
                )));
            }
        }
        Ok(offset)
    }
}

/// Asks `forecaster` for the forecast of every step of `trace`, each from
/// the history of `demand` before it, in shard units (never negative).
/// Forecasts do not depend on the service level, so a sweep collects them
/// once. A step without a forecast (no history yet, a window the
/// forecaster refuses) is `None`, and the planner falls back there; a
/// forecaster that cannot run at all, or forecasts fewer steps than the
/// policy looks ahead, is an error.
pub fn collect_forecasts<F: Forecaster + ?Sized>(
    trace: &Trace,
    cfg: &SimConfig,
    forecaster: &F,
    demand: &Demand<'_>,
) -> Result<Vec<Option<QuantileForecast>>> {
    let offset = demand.offset_of(trace)?;
    let horizon = shardcast_horizon(cfg, trace.step);
    let spec = forecaster.spec();
    if spec.horizon < horizon {
        return Err(Error::Forecasts(format!(
            "the planner needs {horizon} forecast steps, the forecaster forecasts {}",
            spec.horizon
        )));
    }
    if spec.step.is_some_and(|s| s != trace.step) {
        return Err(Error::Forecasts(format!(
            "the trace is on a {} grid, the forecaster's is {:?}",
            trace.step, spec.step
        )));
    }
    let failed = |e: F::Error| {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text = format!("{text}: {s}");
            source = s.source();
        }
        Error::Forecasts(text)
    };
    let mut out: Vec<Option<QuantileForecast>> = vec![None; trace.values.len()];
    let mut refused = 0usize;
    for from in (0..trace.values.len()).step_by(BLOCK) {
        let to = (from + BLOCK).min(trace.values.len());
        let windows: Vec<Window<'_>> = (from..to)
            .map(|t| Window {
                series: demand.series,
                shard_type: demand.shard_type,
                start: demand.start,
                step: trace.step,
                history: &demand.values[..offset + t],
                events: demand.events,
            })
            .collect();
        let answers = forecaster.forecast_batch(&windows).map_err(failed)?;
        if answers.len() != windows.len() {
            return Err(Error::Forecasts(format!(
                "{} forecasts for {} windows",
                answers.len(),
                windows.len()
            )));
        }
        for (t, answer) in (from..to).zip(answers) {
            match answer.and_then(|f| in_shards(&f, horizon, demand.capacity)) {
                Ok(f) => out[t] = Some(f),
                Err(e) => {
                    if refused == 0 {
                        tracing::warn!(error = %e, at = %trace.time_of(t), "no forecast; the planner falls back");
                    }
                    refused += 1;
                }
            }
        }
    }
    if refused > 1 {
        tracing::warn!(steps = refused, "steps without a forecast");
    }
    Ok(out)
}

/// The first `horizon` steps of `f` divided by `capacity`, never negative.
fn in_shards(
    f: &QuantileForecast,
    horizon: usize,
    capacity: f64,
) -> shardcast_core::Result<QuantileForecast> {
    let f = f.truncated(horizon)?;
    let values = f
        .values()
        .iter()
        .map(|&v| (f64::from(v) / capacity).max(0.0) as f32)
        .collect();
    QuantileForecast::new(f.levels().clone(), f.start(), f.step(), values)
}

/// Shards of a run, oldest request first, each with the step it serves from.
struct Fleet {
    ready_from: VecDeque<usize>,
}

impl Fleet {
    fn ready(&self, t: usize) -> u32 {
        // Requests are pushed in time order and released from the back, so
        // `ready_from` stays sorted.
        self.ready_from.partition_point(|&r| r <= t) as u32
    }

    fn request(&mut self, target: u32, t: usize, lead: usize) {
        let target = target as usize;
        while self.ready_from.len() > target {
            self.ready_from.pop_back();
        }
        let from = if t == 0 { 0 } else { t + lead };
        while self.ready_from.len() < target {
            self.ready_from.push_back(from);
        }
    }
}

/// What a policy sees at the start of step `t`.
struct View {
    t: usize,
    ready: u32,
    requested: u32,
}

/// Replays `trace`, asking `decide` for the requested count at each step.
fn replay(
    trace: &Trace,
    cfg: &SimConfig,
    policy: PolicyKind,
    knob: Option<f64>,
    mut decide: impl FnMut(&View) -> Result<(u32, bool)>,
) -> Result<SimRun> {
    let mut fleet = Fleet {
        ready_from: VecDeque::new(),
    };
    let mut records = Vec::with_capacity(trace.values.len());
    let (mut under, mut unserved, mut total, mut idle) = (0usize, 0.0, 0.0, 0.0);
    let (mut requested_sum, mut actions, mut fallbacks) = (0u64, 0usize, 0usize);
    let mut last = None;
    for (t, &demand) in trace.values.iter().enumerate() {
        let view = View {
            t,
            ready: fleet.ready(t),
            requested: fleet.ready_from.len() as u32,
        };
        let (want, fell_back) = decide(&view)?;
        let want = want.clamp(cfg.min_shards, cfg.max_shards);
        fleet.request(want, t, cfg.lead_steps);
        if last.is_some_and(|l| l != want) {
            actions += 1;
        }
        last = Some(want);
        fallbacks += usize::from(fell_back);
        let ready = fleet.ready(t);
        let short = (demand - f64::from(ready)).max(0.0);
        if short > 1e-9 {
            under += 1;
            unserved += short;
        }
        total += demand;
        idle += (f64::from(ready) - demand).max(0.0);
        requested_sum += u64::from(want);
        records.push(StepRecord {
            ts: trace.time_of(t),
            policy,
            knob,
            demand,
            shards_ready: ready,
            shards_requested: want,
        });
    }
    let steps = trace.values.len();
    let hours = trace.step.millis() as f64 / 3_600_000.0;
    let summary = Summary {
        policy,
        knob,
        steps,
        under_provisioned_steps: under,
        under_provisioned_pct: 100.0 * under as f64 / steps as f64,
        unserved_demand_pct: if total > 0.0 {
            100.0 * unserved / total
        } else {
            0.0
        },
        shard_hours: requested_sum as f64 * hours,
        shard_hours_vs_oracle: None,
        scale_actions: actions,
        mean_idle_shards: idle / steps as f64,
        fallback_steps: fallbacks,
    };
    tracing::debug!(
        policy = policy.as_str(),
        knob,
        under_provisioned_steps = under,
        shard_hours = summary.shard_hours,
        "simulated"
    );
    Ok(SimRun { summary, records })
}

/// Demand the policies observe at the start of step `t`.
fn observed(trace: &Trace, t: usize) -> f64 {
    trace.values[t.saturating_sub(1)]
}

/// The reactive HPA policy at `target_utilisation`.
pub fn simulate_reactive(
    trace: &Trace,
    cfg: &SimConfig,
    target_utilisation: f64,
) -> Result<SimRun> {
    cfg.validate()?;
    let policy = ReactivePolicy {
        target_utilisation,
        ..cfg.reactive.clone()
    };
    policy.validate()?;
    let window_ms =
        i64::try_from(cfg.reactive_stabilisation_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let mut history: VecDeque<(i64, u32)> = VecDeque::new();
    replay(
        trace,
        cfg,
        PolicyKind::Reactive,
        Some(target_utilisation),
        |v| {
            let demand = observed(trace, v.t);
            let rec = if v.t == 0 {
                shards_needed(demand, target_utilisation)
            } else {
                reactive_count(
                    v.requested,
                    v.ready,
                    Some(demand),
                    1.0,
                    &policy,
                    FallbackCause::Missing,
                )
                .required
            }
            .clamp(cfg.min_shards, cfg.max_shards);
            let now = trace.time_of(v.t).0;
            while history
                .front()
                .is_some_and(|&(at, _)| at < now.saturating_sub(window_ms))
            {
                history.pop_front();
            }
            history.push_back((now, rec));
            let want = if v.t > 0 && rec < v.requested {
                let highest = history.iter().map(|&(_, r)| r).max().unwrap_or(rec);
                highest.min(v.requested)
            } else {
                rec
            };
            Ok((want, false))
        },
    )
}

/// The fewest requested shards per step that keep demand covered at every
/// step (the oracle's schedule).
pub fn oracle_schedule(trace: &Trace, cfg: &SimConfig) -> Vec<u32> {
    let need: Vec<u32> = trace
        .values
        .iter()
        .map(|&d| shards_needed(d, 1.0).clamp(cfg.min_shards, cfg.max_shards))
        .collect();
    // Sliding maximum over [t, t + lead] with a monotone deque.
    let n = need.len();
    let mut out = vec![0; n];
    let mut window: VecDeque<usize> = VecDeque::new();
    let mut next = 0;
    for (t, slot) in out.iter_mut().enumerate() {
        let end = (t + cfg.lead_steps).min(n - 1);
        while next <= end {
            while window.back().is_some_and(|&j| need[j] <= need[next]) {
                window.pop_back();
            }
            window.push_back(next);
            next += 1;
        }
        while window.front().is_some_and(|&j| j < t) {
            window.pop_front();
        }
        *slot = window.front().map_or(0, |&j| need[j]);
    }
    out
}

/// The perfect-foresight oracle.
pub fn simulate_oracle(trace: &Trace, cfg: &SimConfig) -> Result<SimRun> {
    cfg.validate()?;
    let schedule = oracle_schedule(trace, cfg);
    replay(trace, cfg, PolicyKind::Oracle, None, |v| {
        Ok((schedule[v.t], false))
    })
}

/// Horizon the shardcast policy asks its source for.
fn shardcast_horizon(cfg: &SimConfig, step: GridStep) -> usize {
    cfg.lead_steps + lead_steps(cfg.shardcast.hold_secs, step) + 1
}

/// The planner on precomputed forecasts (`forecasts[t]` starts at step `t`).
pub fn simulate_shardcast(
    trace: &Trace,
    cfg: &SimConfig,
    service_level: f64,
    forecasts: &[Option<QuantileForecast>],
) -> Result<SimRun> {
    cfg.validate()?;
    check_open_unit("service_level", service_level)?;
    let policy = cfg.shardcast_policy(service_level, trace.step);
    policy.validate()?;
    // Warm start: at step 0 whatever is asked for is ready at once, so the
    // whole look-ahead is scale-up window.
    let first = ScalePolicy {
        lead_time_secs: 0,
        hold_secs: policy.lead_time_secs + policy.hold_secs,
        ..policy.clone()
    };
    let shard_type = ShardType::new("simulated")?;
    let mut recommendations: Vec<Recommendation> = Vec::new();
    replay(
        trace,
        cfg,
        PolicyKind::Shardcast,
        Some(service_level),
        |v| {
            let state = ScaleState {
                ready: v.ready,
                pending: v.requested - v.ready,
                unhealthy: 0,
                observed_demand: Some(observed(trace, v.t)),
                recommendations: std::mem::take(&mut recommendations),
            };
            let forecast = forecasts.get(v.t).and_then(Option::as_ref);
            let p = if v.t == 0 { &first } else { &policy };
            let out = plan_scale(trace.time_of(v.t), &shard_type, p, &state, forecast)?;
            recommendations = out.recommendations;
            let fell_back = matches!(out.decision.reason.basis, ScaleBasis::Reactive(_));
            // Warm start: without any shards the fallback's floor is 0, so
            // the first step sizes from the observed demand instead.
            let want = if v.t == 0 && fell_back {
                shards_needed(observed(trace, 0), policy.fallback.target_utilisation)
            } else {
                out.decision.desired
            };
            Ok((want, fell_back))
        },
    )
}

/// Knob values to sweep. Data: parse it from TOML or JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SweepSpec {
    /// Target utilisations of the reactive policy.
    pub target_utilisations: Vec<f64>,
    /// Service levels of the shardcast policy.
    pub service_levels: Vec<f64>,
}

impl Default for SweepSpec {
    fn default() -> Self {
        Self {
            target_utilisations: vec![0.5, 0.6, 0.7, 0.8, 0.9],
            service_levels: vec![0.5, 0.8, 0.9, 0.95, 0.975],
        }
    }
}

/// Every run of a sweep; summaries carry shard-hours relative to the oracle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sweep {
    /// The oracle's run.
    pub oracle: SimRun,
    /// Reactive runs, then shardcast runs, in knob order.
    pub runs: Vec<SimRun>,
}

impl Sweep {
    /// Every run, the oracle first, then in knob order.
    pub fn all_runs(&self) -> impl Iterator<Item = &SimRun> {
        std::iter::once(&self.oracle).chain(&self.runs)
    }

    /// Protocol P's per-step CSV (`ts, policy, knob, demand, shards_ready,
    /// shards_requested`; demand in shard units, the oracle's knob empty),
    /// every run in [`Sweep::all_runs`] order. The caller writes it.
    pub fn to_csv(&self) -> String {
        // Into memory: writing cannot fail, and every field is UTF-8.
        let mut csv = csv::Writer::from_writer(Vec::new());
        let mut row = |fields: [String; 6]| csv.write_record(fields).expect("writes to memory");
        row([
            "ts",
            "policy",
            "knob",
            "demand",
            "shards_ready",
            "shards_requested",
        ]
        .map(String::from));
        for r in self.all_runs().flat_map(|run| &run.records) {
            row([
                r.ts.to_string(),
                r.policy.as_str().to_owned(),
                r.knob.map(|k| k.to_string()).unwrap_or_default(),
                format!("{:.6}", r.demand),
                r.shards_ready.to_string(),
                r.shards_requested.to_string(),
            ]);
        }
        let bytes = csv.into_inner().expect("writes to memory");
        String::from_utf8(bytes).expect("fields are UTF-8")
    }

    /// All summaries, the oracle first.
    pub fn summaries(&self) -> impl Iterator<Item = &Summary> {
        std::iter::once(&self.oracle.summary).chain(self.runs.iter().map(|r| &r.summary))
    }
}

/// Runs the oracle, the reactive policy at each target utilisation and,
/// given forecasts (from [`collect_forecasts`]), shardcast at each service
/// level.
pub fn sweep(
    trace: &Trace,
    cfg: &SimConfig,
    spec: &SweepSpec,
    forecasts: Option<&[Option<QuantileForecast>]>,
) -> Result<Sweep> {
    let mut oracle = simulate_oracle(trace, cfg)?;
    let mut runs = Vec::new();
    for &target in &spec.target_utilisations {
        runs.push(simulate_reactive(trace, cfg, target)?);
    }
    if let Some(forecasts) = forecasts {
        for &level in &spec.service_levels {
            runs.push(simulate_shardcast(trace, cfg, level, forecasts)?);
        }
    }
    let base = oracle.summary.shard_hours;
    let relative = |h: f64| (base > 0.0).then(|| h / base);
    oracle.summary.shard_hours_vs_oracle = relative(base);
    for r in &mut runs {
        r.summary.shard_hours_vs_oracle = relative(r.summary.shard_hours);
    }
    Ok(Sweep { oracle, runs })
}

mod setup;
mod targets;
pub use setup::{DEFAULT_DAYS, shard_capacity, simulated_range};
pub use targets::{ORACLE_SLACK, PROTOCOL_UTILISATION, Targets};

#[cfg(test)]
mod tests;
