use proptest::prelude::*;
use shardcast_core::{GridStep, QuantileSet};

use super::*;

const MIN5: i64 = 300_000;

fn api() -> ShardType {
    ShardType::new("api-cpu").unwrap()
}

/// A forecast starting at `now` on a 5-minute grid with levels 0.1/0.5/0.9,
/// each row `(q10, q50, q90)`.
fn forecast(rows: &[(f32, f32, f32)]) -> QuantileForecast {
    let values = rows.iter().flat_map(|&(a, b, c)| [a, b, c]).collect();
    QuantileForecast::new(
        QuantileSet::new(&[0.1, 0.5, 0.9]).unwrap(),
        Timestamp(0),
        GridStep::FIVE_MINUTES,
        values,
    )
    .unwrap()
}

fn policy() -> ScalePolicy {
    ScalePolicy {
        service_level: 0.9,
        capacity_per_shard: 100.0,
        target_utilisation: 0.5,
        lead_time_secs: 600,
        warm_pool: WarmPoolPolicy {
            level: None,
            min: 0,
            max: 0,
        },
        ..ScalePolicy::default()
    }
}

fn state(ready: u32) -> ScaleState {
    ScaleState {
        ready,
        ..ScaleState::default()
    }
}

#[test]
fn forecast_quantile_at_lead_time_sets_the_count() {
    // Step 2 (now + 10 min) is the first that a launch can serve.
    let f = forecast(&[(0., 0., 0.), (0., 0., 0.), (100., 200., 420.), (0., 0., 0.)]);
    let out = plan_scale(Timestamp(0), &api(), &policy(), &state(3), Some(&f)).unwrap();
    let d = &out.decision;
    assert_eq!(d.desired, 9, "ceil(420 / 50)");
    let ScaleBasis::Forecast(b) = &d.reason.basis else {
        panic!("expected a forecast basis: {d:?}")
    };
    assert_eq!(b.binding_step, Timestamp(2 * MIN5));
    assert_eq!(b.binding_part, WindowPart::ScaleUp);
    assert_eq!(b.binding_demand, 420.0);
    assert_eq!(b.steps_considered, 3);
    // Interpolation between levels: 0.7 is halfway between 200 and 420.
    let p = ScalePolicy {
        service_level: 0.7,
        ..policy()
    };
    let out = plan_scale(Timestamp(0), &api(), &p, &state(3), Some(&f)).unwrap();
    assert_eq!(out.decision.desired, 7, "ceil(310 / 50)");
}

#[test]
fn retention_steps_keep_running_shards_but_launch_nothing() {
    // A spike before now + lead cannot be served by a launch, but keeps the
    // shards that are running.
    let f = forecast(&[(0., 0., 1000.), (0., 0., 0.), (0., 0., 100.)]);
    let p = ScalePolicy {
        scale_down_stabilisation_secs: 0,
        max_step_down: 100,
        ..policy()
    };
    let out = plan_scale(Timestamp(0), &api(), &p, &state(5), Some(&f)).unwrap();
    assert_eq!(out.decision.desired, 5);
    let ScaleBasis::Forecast(b) = &out.decision.reason.basis else {
        panic!()
    };
    assert_eq!(b.binding_part, WindowPart::Retention);
    let out = plan_scale(Timestamp(0), &api(), &p, &state(1), Some(&f)).unwrap();
    assert_eq!(out.decision.desired, 2, "only the scale-up step counts");
}

#[test]
fn joint_combination_reads_a_stricter_level() {
    let f = forecast(&[
        (0., 0., 0.),
        (0., 0., 0.),
        (100., 200., 300.),
        (100., 200., 300.),
    ]);
    let p = ScalePolicy {
        service_level: 0.7,
        step_combination: StepCombination::Joint,
        hold_secs: 300,
        ..policy()
    };
    let out = plan_scale(Timestamp(0), &api(), &p, &state(3), Some(&f)).unwrap();
    let ScaleBasis::Forecast(b) = &out.decision.reason.basis else {
        panic!()
    };
    assert_eq!(b.steps_considered, 4);
    assert!((b.step_level - (1.0 - 0.3 / 4.0)).abs() < 1e-12);
    // level 0.925 lies beyond 0.9: flat at 300.
    assert!(b.level_clamped);
    assert_eq!(out.decision.desired, 6);
}

#[test]
fn exponential_tail_reads_levels_above_the_highest() {
    // Levels 0.5 and 0.9 at 200 and 300: the exceedance probability falls
    // fivefold from 0.5 to 0.9, so every further fivefold fall adds 100.
    let f = forecast(&[(0., 0., 0.), (0., 0., 0.), (100., 200., 300.)]);
    let plan = |level: f64, tail: Tail| {
        let p = ScalePolicy {
            service_level: level,
            tail,
            ..policy()
        };
        let out = plan_scale(Timestamp(0), &api(), &p, &state(3), Some(&f)).unwrap();
        let ScaleBasis::Forecast(b) = out.decision.reason.basis.clone() else {
            panic!()
        };
        (out.decision, b)
    };
    // 0.98: exceedance 0.02 = 0.1 / 5, so 300 + 100 = 400 → 8 shards of 50.
    let (d, b) = plan(0.98, Tail::Exponential);
    assert!((b.binding_demand - 400.0).abs() < 1e-6, "{b:?}");
    assert_eq!(d.desired, 8);
    assert!(b.level_extrapolated && !b.level_clamped);
    assert!(
        d.reason.to_string().contains("extrapolated"),
        "{}",
        d.reason
    );
    // 0.996: exceedance 0.1 / 25, two fivefold falls → 500 → 10 shards.
    let (d, b) = plan(0.996, Tail::Exponential);
    assert!((b.binding_demand - 500.0).abs() < 1e-6, "{b:?}");
    assert_eq!(d.desired, 10);
    // Flat: the highest level's 300 → 6 shards, and the clamp is recorded.
    let (d, b) = plan(0.98, Tail::Flat);
    assert_eq!(d.desired, 6);
    assert!(b.level_clamped && !b.level_extrapolated);
    // Within the levels both tails interpolate alike.
    assert_eq!(
        plan(0.7, Tail::Exponential).0.desired,
        plan(0.7, Tail::Flat).0.desired
    );
    let p: ScalePolicy = serde_json::from_str(r#"{"tail":"exponential"}"#).unwrap();
    assert_eq!(p.tail, Tail::Exponential);
}

#[test]
fn missing_forecast_falls_back_to_hpa_rule() {
    let p = ScalePolicy {
        capacity_per_shard: 1.0,
        ..policy()
    };
    // utilisation 0.9 against 0.7: ceil(10 × 0.9 / 0.7) = 13.
    let s = ScaleState {
        ready: 10,
        observed_demand: Some(9.0),
        ..ScaleState::default()
    };
    let out = plan_scale(Timestamp(0), &api(), &p, &s, None).unwrap();
    assert_eq!(out.decision.desired, 13);
    let ScaleBasis::Reactive(b) = &out.decision.reason.basis else {
        panic!()
    };
    assert_eq!(b.cause, FallbackCause::Missing);
    assert_eq!(b.required, 13);
    // Within the tolerance nothing changes: 0.75 / 0.7 = 1.07.
    let s = ScaleState {
        observed_demand: Some(7.5),
        ..s
    };
    let out = plan_scale(Timestamp(0), &api(), &p, &s, None).unwrap();
    assert_eq!(out.decision.desired, 10);
    // Low utilisation would scale to 3, but fallback never goes below the
    // healthy count.
    let s = ScaleState {
        observed_demand: Some(2.0),
        pending: 2,
        ..s
    };
    let out = plan_scale(Timestamp(0), &api(), &p, &s, None).unwrap();
    assert_eq!(out.decision.desired, 12);
    assert!(matches!(
        out.decision.reason.adjustments.as_slice(),
        [Adjustment::Floor { from: 3, to: 12 }]
    ));
}

#[test]
fn stale_and_short_forecasts_fall_back() {
    let f = forecast(&[(1., 2., 3.); 4]);
    let p = policy();
    let late = Timestamp(3_600_000);
    let out = plan_scale(late, &api(), &p, &state(2), Some(&f)).unwrap();
    let ScaleBasis::Reactive(b) = &out.decision.reason.basis else {
        panic!()
    };
    assert_eq!(
        b.cause,
        FallbackCause::Stale {
            age_ms: 3_600_000,
            max_age_ms: 900_000
        }
    );
    let short = forecast(&[(1., 2., 3.)]);
    let out = plan_scale(Timestamp(0), &api(), &p, &state(2), Some(&short)).unwrap();
    let ScaleBasis::Reactive(b) = &out.decision.reason.basis else {
        panic!()
    };
    assert!(matches!(b.cause, FallbackCause::ShortHorizon { .. }));
    assert_eq!(out.decision.desired, 2);
}

#[test]
fn scale_down_is_stabilised_and_step_limited() {
    let f = forecast(&[(0., 0., 0.), (0., 0., 0.), (0., 0., 100.)]);
    let p = ScalePolicy {
        max_step_down: 3,
        ..policy()
    };
    let s = ScaleState {
        ready: 10,
        recommendations: vec![
            Recommendation {
                at: Timestamp(-200_000),
                shards: 8,
            },
            Recommendation {
                at: Timestamp(-400_000),
                shards: 10,
            },
        ],
        ..ScaleState::default()
    };
    let out = plan_scale(Timestamp(0), &api(), &p, &s, Some(&f)).unwrap();
    // Needs 2; the window (300 s) remembers 8; the step limit allows 7.
    assert_eq!(out.decision.desired, 8);
    assert_eq!(
        out.decision.reason.adjustments,
        vec![Adjustment::Stabilised {
            from: 2,
            to: 8,
            window_secs: 300
        }]
    );
    assert_eq!(
        out.recommendations,
        vec![
            Recommendation {
                at: Timestamp(-200_000),
                shards: 8
            },
            Recommendation {
                at: Timestamp(0),
                shards: 2
            },
        ]
    );
    let s = ScaleState {
        recommendations: vec![],
        ..s
    };
    let out = plan_scale(Timestamp(0), &api(), &p, &s, Some(&f)).unwrap();
    assert_eq!(out.decision.desired, 7);

    // A recommendation dated after now (a clock that went back) neither
    // holds the count up nor survives into the next state.
    let s = ScaleState {
        recommendations: vec![Recommendation {
            at: Timestamp(3_600_000),
            shards: 10,
        }],
        ..s
    };
    let out = plan_scale(Timestamp(0), &api(), &p, &s, Some(&f)).unwrap();
    assert_eq!(out.decision.desired, 7);
    assert!(out.recommendations.iter().all(|r| r.at <= Timestamp(0)));
}

#[test]
fn rollback_and_warm_pool() {
    let f = forecast(&[(0., 0., 0.), (0., 0., 0.), (100., 200., 300.)]);
    let p = ScalePolicy {
        service_level: 0.5,
        warm_pool: WarmPoolPolicy {
            level: Some(0.9),
            min: 0,
            max: 10,
        },
        ..policy()
    };
    let s = ScaleState {
        ready: 3,
        unhealthy: 1,
        ..ScaleState::default()
    };
    let out = plan_scale(Timestamp(0), &api(), &p, &s, Some(&f)).unwrap();
    let d = &out.decision;
    assert_eq!(
        (d.current, d.desired, d.rollback, d.warm_pool),
        (3, 4, 1, 2)
    );
    assert_eq!(d.launch(), 1);
    assert_eq!(
        d.explain(),
        "api-cpu: scale 3 → 4 shards: the 0.5 quantile of demand at 1970-01-01T00:10:00Z \
         is 200; at 50 per shard (capacity 100 × target utilisation 0.5) that needs 4 \
         shards; replace 1 unhealthy shard; keep 2 warm."
    );
}

#[test]
fn reason_text_lists_limits_in_order() {
    let f = forecast(&[(0., 0., 0.), (0., 0., 0.), (0., 0., 5000.)]);
    let p = ScalePolicy {
        max_shards: 50,
        max_step_up: 5,
        ..policy()
    };
    let out = plan_scale(Timestamp(0), &api(), &p, &state(2), Some(&f)).unwrap();
    assert_eq!(out.decision.desired, 7);
    assert!(
        out.decision.explain().ends_with(
            "that needs 100 shards; lowered from 100 to the maximum 50; \
             limited from 50 to 7 by the step limit of 5."
        ),
        "{}",
        out.decision.explain()
    );
    let json = serde_json::to_value(&out.decision).unwrap();
    assert_eq!(json["reason"]["adjustments"][0]["limit"], "max");
    assert_eq!(json["reason"]["adjustments"][1]["max_step"], 5);
}

#[test]
fn policy_is_data() {
    let p: ScalePolicy =
        serde_json::from_str(r#"{"service_level":0.99,"fallback":{"target_utilisation":0.6}}"#)
            .unwrap();
    assert_eq!(p.service_level, 0.99);
    assert_eq!(p.fallback.tolerance, 0.1);
    assert_eq!(p.min_shards, 1);
    assert!(serde_json::from_str::<ScalePolicy>(r#"{"servce_level":0.9}"#).is_err());
    let bad = ScalePolicy {
        service_level: 1.0,
        ..ScalePolicy::default()
    };
    assert!(matches!(
        plan_scale(Timestamp(0), &api(), &bad, &state(1), None),
        Err(Error::InvalidValue {
            field: "scale.service_level",
            ..
        })
    ));
}

fn arb_forecast() -> impl Strategy<Value = QuantileForecast> {
    prop::collection::vec(prop::collection::vec(0.0f32..5000.0, 3), 1..8).prop_map(|rows| {
        let values = rows
            .into_iter()
            .flat_map(|mut r| {
                r.sort_by(f32::total_cmp);
                r
            })
            .collect();
        QuantileForecast::new(
            QuantileSet::new(&[0.1, 0.5, 0.9]).unwrap(),
            Timestamp(0),
            GridStep::FIVE_MINUTES,
            values,
        )
        .unwrap()
    })
}

fn arb_policy() -> impl Strategy<Value = ScalePolicy> {
    (
        0.01f64..0.99,
        0u32..20,
        0u32..30,
        0u64..1200,
        0u64..900,
        1u32..10,
        1u32..10,
        any::<bool>(),
    )
        .prop_map(|(sl, min, span, lead, stab, up, down, joint)| ScalePolicy {
            service_level: sl,
            min_shards: min,
            max_shards: min + span,
            lead_time_secs: lead,
            scale_down_stabilisation_secs: stab,
            max_step_up: up,
            max_step_down: down,
            step_combination: if joint {
                StepCombination::Joint
            } else {
                StepCombination::EachStep
            },
            capacity_per_shard: 100.0,
            ..ScalePolicy::default()
        })
}

fn arb_state() -> impl Strategy<Value = ScaleState> {
    (
        0u32..60,
        0u32..5,
        0u32..3,
        prop::option::of(0.0f64..6000.0),
        prop::collection::vec((-900_000i64..0, 0u32..60), 0..4),
    )
        .prop_map(|(ready, pending, unhealthy, demand, recs)| ScaleState {
            ready,
            pending,
            unhealthy,
            observed_demand: demand,
            recommendations: recs
                .into_iter()
                .map(|(at, shards)| Recommendation {
                    at: Timestamp(at),
                    shards,
                })
                .collect(),
        })
}

proptest! {
    #[test]
    fn never_below_min_or_above_max(
        p in arb_policy(),
        s in arb_state(),
        f in prop::option::of(arb_forecast()),
        now in 0i64..1_200_000,
    ) {
        let out = plan_scale(Timestamp(now), &api(), &p, &s, f.as_ref()).unwrap();
        let d = out.decision;
        prop_assert!(d.desired >= p.min_shards && d.desired <= p.max_shards, "{d:?}");
        prop_assert!(d.warm_pool <= p.warm_pool.max);
        // Step limits hold unless min or max forces a bigger change.
        let healthy = s.healthy();
        if healthy >= p.min_shards && healthy <= p.max_shards {
            prop_assert!(d.desired <= healthy + p.max_step_up);
            prop_assert!(d.desired + p.max_step_down >= healthy);
        }
        // Without a forecast the count never drops below the healthy count.
        if matches!(d.reason.basis, ScaleBasis::Reactive(_)) {
            prop_assert!(d.desired >= healthy.min(p.max_shards));
        }
    }

    #[test]
    fn replanning_is_idempotent(
        p in arb_policy(),
        s in arb_state(),
        f in prop::option::of(arb_forecast()),
        now in 0i64..1_200_000,
    ) {
        let now = Timestamp(now);
        let a = plan_scale(now, &api(), &p, &s, f.as_ref()).unwrap();
        let b = plan_scale(now, &api(), &p, &s, f.as_ref()).unwrap();
        prop_assert_eq!(&a, &b);
        // Feeding back the recommendations at the same instant changes
        // nothing either.
        let s2 = ScaleState { recommendations: a.recommendations.clone(), ..s };
        let c = plan_scale(now, &api(), &p, &s2, f.as_ref()).unwrap();
        prop_assert_eq!(a.decision, c.decision);
        prop_assert_eq!(a.recommendations, c.recommendations);
    }
}
