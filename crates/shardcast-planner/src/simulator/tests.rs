use proptest::prelude::*;

use shardcast_core::{ForecastSpec, QuantileSet, SeasonalNaive};

use super::*;

fn trace(values: Vec<f64>) -> Trace {
    Trace::new(Timestamp(0), GridStep::FIVE_MINUTES, values).unwrap()
}

fn step_trace() -> Trace {
    let mut v = vec![2.0; 10];
    v.extend([10.0; 10]);
    trace(v)
}

fn cfg(lead: usize) -> SimConfig {
    SimConfig {
        lead_steps: lead,
        ..SimConfig::default()
    }
}

/// A test forecaster: `answer(t, horizon)` gives the levels' values of each
/// step of the forecast made before trace step `t`, or no forecast.
struct Fake<A> {
    levels: QuantileSet,
    horizon: usize,
    answer: A,
}

impl<A> Forecaster for Fake<A>
where
    A: Fn(usize, usize) -> Option<Vec<f32>>,
{
    type Error = shardcast_core::Error;

    fn spec(&self) -> ForecastSpec {
        ForecastSpec {
            step: None,
            horizon: self.horizon,
            levels: self.levels.clone(),
            history: 1,
        }
    }

    fn forecast_batch(
        &self,
        windows: &[Window<'_>],
    ) -> shardcast_core::Result<Vec<shardcast_core::Result<QuantileForecast>>> {
        Ok(windows
            .iter()
            .map(|w| match (self.answer)(w.history.len(), self.horizon) {
                Some(v) => QuantileForecast::new(self.levels.clone(), w.origin(), w.step, v),
                None => Err(shardcast_core::Error::InvalidContext {
                    reason: "no forecast".into(),
                }),
            })
            .collect())
    }
}

/// Forecasts for every step of `tr` (demand in shard units, capacity 1).
fn forecasts_of<F: Forecaster>(tr: &Trace, c: &SimConfig, f: &F) -> Vec<Option<QuantileForecast>> {
    let values: Vec<f32> = tr.values.iter().map(|&v| v as f32).collect();
    collect_forecasts(tr, c, f, &Demand::of_trace(tr, &values)).unwrap()
}

/// A forecaster that knows the future: every level equals the actual
/// demand (the last value beyond the end of the trace).
fn perfect(values: Vec<f64>) -> Fake<impl Fn(usize, usize) -> Option<Vec<f32>>> {
    Fake {
        levels: QuantileSet::new(&[0.1, 0.5, 0.9]).unwrap(),
        horizon: 64,
        answer: move |t: usize, horizon: usize| {
            Some(
                (0..horizon)
                    .flat_map(|i| {
                        let v = values[(t + i).min(values.len() - 1)] as f32;
                        [v, v, v]
                    })
                    .collect(),
            )
        },
    }
}

/// The planner on `source`'s forecasts.
fn run_with<F: Forecaster>(tr: &Trace, c: &SimConfig, level: f64, source: &F) -> Result<SimRun> {
    simulate_shardcast(tr, c, level, &forecasts_of(tr, c, source))
}

#[test]
fn oracle_on_a_step_has_exact_counts() {
    let run = simulate_oracle(&step_trace(), &cfg(2)).unwrap();
    let req: Vec<u32> = run.records.iter().map(|r| r.shards_requested).collect();
    let mut want = vec![2; 8];
    want.extend([10; 12]);
    assert_eq!(req, want);
    let s = &run.summary;
    assert_eq!(s.under_provisioned_steps, 0);
    assert_eq!(s.unserved_demand_pct, 0.0);
    assert_eq!(s.scale_actions, 1);
    assert!((s.shard_hours - 136.0 / 12.0).abs() < 1e-9);
    // The shards requested at step 8 serve from step 10, exactly in time.
    assert_eq!(run.records[9].shards_ready, 2);
    assert_eq!(run.records[10].shards_ready, 10);
}

#[test]
fn reactive_lags_by_the_lead_plus_the_observation_step() {
    for lead in 0..5 {
        let run = simulate_reactive(&step_trace(), &cfg(lead), 0.7).unwrap();
        let s = &run.summary;
        assert_eq!(s.under_provisioned_steps, lead + 1, "lead {lead}");
        // Steady state before the step: ceil(2 / 0.7) = 3.
        assert_eq!(run.records[5].shards_requested, 3);
        // Short by 10 − 3 for lead + 1 steps out of 140 units of demand.
        let unserved = 7.0 * (lead + 1) as f64 / 120.0 * 100.0;
        assert!((s.unserved_demand_pct - unserved).abs() < 1e-9, "{s:?}");
    }
}

#[test]
fn reactive_scale_down_waits_for_the_stabilisation_window() {
    let mut v = vec![10.0; 5];
    v.extend([1.0; 10]);
    let run = simulate_reactive(&trace(v), &cfg(1), 0.5).unwrap();
    let req: Vec<u32> = run.records.iter().map(|r| r.shards_requested).collect();
    // 20 until the low demand is seen at step 6; the 300 s window (one
    // step of 5 minutes back) holds 20 until step 7, then 2.
    assert_eq!(&req[..8], &[20, 20, 20, 20, 20, 20, 20, 2]);
}

#[test]
fn perfect_forecast_meets_the_oracle() {
    let values: Vec<f64> = (0..200)
        .map(|t| 10.0 + 8.0 * (t as f64 / 12.0).sin() + if t % 37 < 3 { 6.0 } else { 0.0 })
        .collect();
    let tr = trace(values.clone());
    for lead in [0, 1, 2, 5] {
        let mut c = cfg(lead);
        c.shardcast.scale_down_stabilisation_secs = 0;
        let oracle = simulate_oracle(&tr, &c).unwrap();
        let run = run_with(&tr, &c, 0.9, &perfect(values.clone())).unwrap();
        assert_eq!(run.summary.under_provisioned_steps, 0, "lead {lead}");
        assert_eq!(run.summary.fallback_steps, 0);
        let a: Vec<u32> = run.records.iter().map(|r| r.shards_requested).collect();
        let b: Vec<u32> = oracle.records.iter().map(|r| r.shards_requested).collect();
        assert_eq!(a, b, "lead {lead}");
        assert_eq!(run.summary.shard_hours, oracle.summary.shard_hours);
    }
}

#[test]
fn seasonal_naive_runs_and_falls_back_without_history() {
    let values: Vec<f64> = (0..96)
        .map(|t| 10.0 + 5.0 * ((t % 24) as f64 / 24.0 * std::f64::consts::TAU).sin())
        .collect();
    let tr = trace(values);
    let run = run_with(&tr, &cfg(2), 0.9, &SeasonalNaive::new(24, 48, 8)).unwrap();
    // No forecast until a season plus one step of history exists.
    assert_eq!(run.summary.fallback_steps, 25);
    // A perfectly periodic trace is forecast exactly after that.
    let late = &run.records[30..];
    assert!(
        late.iter()
            .all(|r| f64::from(r.shards_ready) >= r.demand - 1e-9)
    );
}

#[test]
fn sweep_reports_relative_shard_hours() {
    let tr = step_trace();
    let values = tr.values.clone();
    let spec = SweepSpec::default();
    let fc = forecasts_of(&tr, &cfg(2), &perfect(values));
    let s = sweep(&tr, &cfg(2), &spec, Some(&fc)).unwrap();
    assert_eq!(s.runs.len(), 10);
    assert_eq!(s.oracle.summary.shard_hours_vs_oracle, Some(1.0));
    for r in &s.runs {
        assert!(
            r.summary.shard_hours_vs_oracle.unwrap() >= 1.0 - 1e-12,
            "{:?}",
            r.summary
        );
    }
    // Higher target utilisation runs fewer shard-hours.
    let reactive: Vec<f64> = s.runs[..5].iter().map(|r| r.summary.shard_hours).collect();
    assert!(reactive.windows(2).all(|w| w[0] >= w[1]), "{reactive:?}");
    let json = serde_json::to_value(&s.runs[0].records[0]).unwrap();
    assert_eq!(json["policy"], "reactive");
    assert_eq!(json["knob"], 0.5);
    let csv = s.to_csv();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("ts,policy,knob,demand,shards_ready,shards_requested")
    );
    let records: usize = s.all_runs().map(|r| r.records.len()).sum();
    assert_eq!(lines.clone().count(), records);
    assert!(lines.next().unwrap().contains(",oracle,,"), "{csv:.200}");
    let spec: SweepSpec = serde_json::from_str(r#"{"service_levels":[0.9]}"#).unwrap();
    assert_eq!(spec.target_utilisations.len(), 5);
    assert!(serde_json::from_str::<SimConfig>(r#"{"lead":2}"#).is_err());
}

#[test]
fn inputs_are_checked() {
    assert_eq!(
        Trace::new(Timestamp(0), GridStep::HOUR, vec![]),
        Err(Error::EmptyTrace)
    );
    assert!(matches!(
        Trace::new(Timestamp(0), GridStep::HOUR, vec![1.0, -1.0]),
        Err(Error::InvalidTrace { index: 1, .. })
    ));
    let t = Trace::from_demand(Timestamp(0), GridStep::HOUR, &[50.0, 100.0], 25.0).unwrap();
    assert_eq!(t.values, vec![2.0, 4.0]);
    assert_eq!(lead_steps(600, GridStep::FIVE_MINUTES), 2);
    assert_eq!(lead_steps(600, GridStep::HOUR), 1);
    assert_eq!(lead_steps(0, GridStep::HOUR), 0);
    assert!(simulate_reactive(&step_trace(), &cfg(1), 0.0).is_err());
    assert!(run_with(&step_trace(), &cfg(1), 1.0, &perfect(vec![1.0])).is_err());
}

proptest! {
    #[test]
    fn oracle_covers_every_step_and_is_pointwise_minimal(
        values in prop::collection::vec(0.0f64..30.0, 1..60),
        lead in 0usize..6,
    ) {
        let tr = trace(values.clone());
        let c = cfg(lead);
        let run = simulate_oracle(&tr, &c).unwrap();
        prop_assert_eq!(run.summary.under_provisioned_steps, 0);
        // Any covering schedule has at least the oracle's count at each step:
        // shards needed within the next `lead` steps must already exist.
        for (t, r) in run.records.iter().enumerate() {
            let end = (t + lead).min(values.len() - 1);
            let lower = values[t..=end].iter().map(|&d| shards_needed(d, 1.0).max(1)).max().unwrap();
            prop_assert_eq!(r.shards_requested, lower);
        }
    }

    #[test]
    fn perfect_forecast_never_under_provisions(
        values in prop::collection::vec(0.0f64..30.0, 1..60),
        lead in 0usize..6,
    ) {
        let tr = trace(values.clone());
        let mut c = cfg(lead);
        c.shardcast.scale_down_stabilisation_secs = 0;
        let run = run_with(&tr, &c, 0.5, &perfect(values)).unwrap();
        let oracle = simulate_oracle(&tr, &c).unwrap();
        prop_assert_eq!(run.summary.under_provisioned_steps, 0);
        prop_assert!((run.summary.shard_hours - oracle.summary.shard_hours).abs() < 1e-9);
    }
}

#[test]
fn missing_forecasts_fall_back_to_the_hpa_rule_and_are_counted() {
    let tr = step_trace();
    let none = Fake {
        levels: QuantileSet::new(&[0.5]).unwrap(),
        horizon: 8,
        answer: |_: usize, _: usize| None,
    };
    let run = run_with(&tr, &cfg(2), 0.9, &none).unwrap();
    let req: Vec<u32> = run.records.iter().map(|r| r.shards_requested).collect();
    // Step 0 sizes from demand at the fallback's target 0.7: ceil(2 / 0.7)
    // = 3, which the tolerance then keeps. The step to 10 is seen at step
    // 11: ceil(3 × (10 / 3) / 0.7) = 15, ready from step 13.
    let mut want = vec![3; 11];
    want.extend([15; 9]);
    assert_eq!(req, want);
    let s = &run.summary;
    assert_eq!(s.fallback_steps, 20);
    assert_eq!(s.under_provisioned_steps, 3);
    assert!((s.unserved_demand_pct - 100.0 * 3.0 * 7.0 / 120.0).abs() < 1e-9);
    assert!((s.shard_hours - (3.0 * 11.0 + 15.0 * 9.0) / 12.0).abs() < 1e-9);
    assert_eq!(s.scale_actions, 1);
}

/// Every step forecast with levels 0.5 and 0.9 at 9.2 and 9.7.
fn fixed_forecast() -> Fake<impl Fn(usize, usize) -> Option<Vec<f32>>> {
    Fake {
        levels: QuantileSet::new(&[0.5, 0.9]).unwrap(),
        horizon: 8,
        answer: |_: usize, horizon: usize| Some((0..horizon).flat_map(|_| [9.2f32, 9.7]).collect()),
    }
}

#[test]
fn service_levels_beyond_the_forecast_read_the_exponential_tail() {
    // Demand 10.4 at every step. The 0.9 level (9.7) gives 10 shards: every
    // step is short by 0.4. The tail adds (9.7 − 9.2) per fivefold fall of
    // the exceedance probability: 0.98 → 10.2 → 11 shards, never short;
    // 0.9999 → 9.7 + 0.5 · ln(1000) / ln(5) ≈ 11.85 → 12.
    let tr = trace(vec![10.4; 24]);
    let c = cfg(2);
    assert_eq!(c.shardcast.tail, Tail::Exponential);
    let run = |c: &SimConfig, level: f64| run_with(&tr, c, level, &fixed_forecast()).unwrap();
    let low = run(&c, 0.9);
    assert!(low.records.iter().all(|r| r.shards_requested == 10));
    assert_eq!(low.summary.under_provisioned_steps, 24);
    assert!((low.summary.unserved_demand_pct - 100.0 * 0.4 / 10.4).abs() < 1e-6);
    let high = run(&c, 0.98);
    assert!(high.records.iter().all(|r| r.shards_requested == 11));
    assert_eq!(high.summary.under_provisioned_steps, 0);
    assert!((high.summary.shard_hours - 11.0 * 24.0 / 12.0).abs() < 1e-9);
    assert!(
        run(&c, 0.9999)
            .records
            .iter()
            .all(|r| r.shards_requested == 12)
    );
    // A flat tail buys nothing above the highest level.
    let mut flat = c.clone();
    flat.shardcast.tail = Tail::Flat;
    assert_eq!(run(&flat, 0.98).summary.under_provisioned_steps, 24);
}

fn summary(policy: PolicyKind, knob: Option<f64>, under: usize, hours: f64) -> SimRun {
    SimRun {
        summary: Summary {
            policy,
            knob,
            steps: 100,
            under_provisioned_steps: under,
            under_provisioned_pct: under as f64,
            unserved_demand_pct: 0.0,
            shard_hours: hours,
            shard_hours_vs_oracle: Some(hours / 100.0),
            scale_actions: 0,
            mean_idle_shards: 0.0,
            fallback_steps: 0,
        },
        records: Vec::new(),
    }
}

#[test]
fn targets_pick_the_runs_that_decide_them() {
    use PolicyKind::{Oracle, Reactive, Shardcast};
    let sweep = |shardcast: &[(f64, usize, f64)]| Sweep {
        oracle: summary(Oracle, None, 0, 100.0),
        runs: [
            summary(Reactive, Some(0.6), 4, 140.0),
            summary(Reactive, Some(0.7), 10, 120.0),
        ]
        .into_iter()
        .chain(
            shardcast
                .iter()
                .map(|&(k, u, h)| summary(Shardcast, Some(k), u, h)),
        )
        .collect(),
    };
    // 0.9 is cheaper than the reference with 5 steps (<= 10 / 2): target 1
    // met; 0.99 is as safe (3 steps) at 1.12 x oracle: target 2 met.
    let s = sweep(&[(0.5, 20, 100.0), (0.9, 5, 118.0), (0.99, 3, 112.0)]);
    let t = Targets::of(&s);
    assert_eq!(t.reference.unwrap().knob, Some(0.7));
    assert_eq!(t.allowed_steps(), Some(5));
    assert_eq!(
        t.cheaper.unwrap().knob,
        Some(0.99),
        "fewest steps at no more hours"
    );
    assert_eq!(t.as_safe.unwrap().knob, Some(0.99));
    assert_eq!((t.cheaper_met(), t.as_safe_met()), (Some(true), Some(true)));
    assert_eq!(t.shown_level(), Some(0.99));
    // Every shardcast run costs more than the reference, and the safe one
    // is 1.3 x oracle: both missed.
    let s = sweep(&[(0.9, 8, 121.0), (0.99, 2, 130.0)]);
    let t = Targets::of(&s);
    assert!(t.cheaper.is_none());
    assert_eq!(t.as_safe.unwrap().knob, Some(0.9));
    assert_eq!(
        (t.cheaper_met(), t.as_safe_met()),
        (Some(false), Some(false))
    );
    assert_eq!(t.shown_level(), Some(0.9));
    // Without the protocol's reactive rule nothing can be checked.
    let mut s = sweep(&[(0.9, 5, 100.0)]);
    s.runs.remove(1);
    let t = Targets::of(&s);
    assert_eq!((t.cheaper_met(), t.as_safe_met()), (None, None));
    assert_eq!(t.shown_level(), Some(0.9));
}

#[test]
fn forecasts_come_from_the_history_before_each_step_only() {
    // Demand in its own units (capacity 5), with 30 points before the trace.
    let values: Vec<f32> = (0..90).map(|i| 10.0 + (i % 7) as f32).collect();
    let capacity = 5.0;
    let start = Timestamp(0);
    let step = GridStep::FIVE_MINUTES;
    let offset = 30;
    let shards: Vec<f64> = values[offset..]
        .iter()
        .map(|&v| f64::from(v) / capacity)
        .collect();
    let tr = Trace::new(Timestamp(step.millis() * offset as i64), step, shards).unwrap();
    let demand = Demand {
        series: "a/t/m/s",
        shard_type: "t",
        start,
        values: &values,
        events: None,
        capacity,
    };
    // The forecast of trace step t is made from exactly the points before
    // it: its first level echoes the history's length and last value.
    let echo = Fake {
        levels: QuantileSet::new(&[0.5]).unwrap(),
        horizon: 8,
        answer: |n: usize, horizon: usize| Some(vec![n as f32; horizon]),
    };
    let c = cfg(2);
    let fc = collect_forecasts(&tr, &c, &echo, &demand).unwrap();
    for (t, f) in fc.iter().enumerate() {
        let f = f.as_ref().unwrap();
        assert_eq!(f.start(), tr.time_of(t));
        assert_eq!(f.horizon(), shardcast_horizon(&c, step));
        // In shard units.
        assert_eq!(f.values()[0], (offset + t) as f32 / 5.0);
    }

    // A trace that is not this series over its capacity is refused.
    let other = Demand {
        capacity: 4.0,
        ..demand
    };
    let err = collect_forecasts(&tr, &c, &echo, &other)
        .unwrap_err()
        .to_string();
    assert!(err.contains("differs from the series"), "{err}");
    // So is a trace that starts before the series or off its grid.
    let early = Demand {
        start: Timestamp(step.millis() * 31),
        ..demand
    };
    assert!(collect_forecasts(&tr, &c, &echo, &early).is_err());
    // A forecaster that looks less far ahead than the policy.
    let short = Fake { horizon: 2, ..echo };
    let err = collect_forecasts(&tr, &c, &short, &demand)
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs"), "{err}");
}
