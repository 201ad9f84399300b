use super::*;
use proptest::prelude::*;

const MIN: i64 = 60_000;

fn step(ms: i64) -> GridStep {
    GridStep::from_millis(ms).unwrap()
}

/// The protocol written as plainly as possible: for each bin from the
/// first point's to the last point's, scan every point.
fn naive(points: &[(i64, f64)], w: i64, agg: Agg) -> Vec<f64> {
    let lo = points.iter().map(|p| p.0).min().unwrap().div_euclid(w);
    let hi = points.iter().map(|p| p.0).max().unwrap().div_euclid(w);
    let mut out: Vec<Option<f64>> = Vec::new();
    for b in lo..=hi {
        let mut inbin: Vec<f64> = points
            .iter()
            .filter(|p| p.0.div_euclid(w) == b)
            .map(|p| p.1)
            .collect();
        out.push(if inbin.is_empty() {
            None
        } else {
            Some(match agg {
                Agg::Mean => inbin.iter().sum::<f64>() / inbin.len() as f64,
                Agg::Sum => inbin.iter().sum(),
                Agg::Max => inbin.iter().cloned().fold(f64::MIN, f64::max),
                Agg::Min => inbin.iter().cloned().fold(f64::MAX, f64::min),
                Agg::Percentile(p) => {
                    inbin.sort_by(f64::total_cmp);
                    let pos = p / 100.0 * (inbin.len() - 1) as f64;
                    let (f, c) = (pos.floor() as usize, pos.ceil() as usize);
                    inbin[f] + (inbin[c] - inbin[f]) * (pos - f as f64)
                }
            })
        });
    }
    // Linear interpolation between the nearest filled bins on each side.
    (0..out.len())
        .map(|i| match out[i] {
            Some(v) => v,
            None => {
                let l = (0..i).rev().find(|&j| out[j].is_some()).unwrap();
                let r = (i + 1..out.len()).find(|&j| out[j].is_some()).unwrap();
                let (a, b) = (out[l].unwrap(), out[r].unwrap());
                a + (b - a) * (i - l) as f64 / (r - l) as f64
            }
        })
        .collect()
}

fn agg_strategy() -> impl Strategy<Value = Agg> {
    prop_oneof![
        Just(Agg::Mean),
        Just(Agg::Sum),
        Just(Agg::Max),
        Just(Agg::Min),
        (0.0..=100.0f64).prop_map(Agg::Percentile)
    ]
}

proptest! {
    #[test]
    fn matches_naive(
        points in proptest::collection::vec((-500_000i64..5_000_000, -1e3f64..1e3), 1..200),
        w in prop_oneof![Just(MIN), Just(5 * MIN), Just(7_919i64)],
        agg in agg_strategy(),
    ) {
        let ts: Vec<i64> = points.iter().map(|p| p.0).collect();
        let vs: Vec<f64> = points.iter().map(|p| p.1).collect();
        let g = resample(&ts, &vs, step(w), agg, GapFill::Linear).unwrap();
        let want = naive(&points, w, agg);
        prop_assert_eq!(g.values.len(), want.len());
        prop_assert_eq!(g.start.millis(), ts.iter().min().unwrap().div_euclid(w) * w);
        for (a, b) in g.values.iter().zip(&want) {
            prop_assert!((a - b).abs() <= 1e-9 * (1.0 + b.abs()), "{} vs {}", a, b);
        }
    }

    #[test]
    fn windows_cover_the_series(n in 1usize..200, context in 1usize..20, horizon in 1usize..10, stride in 1usize..5) {
        let values: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let w = windows(&values, context, horizon, stride);
        prop_assert_eq!(w.inputs.len(), w.count * context);
        prop_assert_eq!(w.targets.len(), w.count * horizon);
        for (k, &o) in w.origins.iter().enumerate() {
            prop_assert_eq!(w.inputs[k * context + context - 1], (o - 1) as f32);
            prop_assert_eq!(w.targets[k * horizon], o as f32);
        }
        let expect = if n >= context + horizon { (n - context - horizon) / stride + 1 } else { 0 };
        prop_assert_eq!(w.count, expect);
    }
}

#[test]
fn gap_rules() {
    let ts = [0, 3 * MIN];
    let vs = [1.0, 4.0];
    let g = |gap| {
        resample(&ts, &vs, step(MIN), Agg::Mean, gap)
            .unwrap()
            .values
    };
    assert_eq!(g(GapFill::Linear), vec![1.0, 2.0, 3.0, 4.0]);
    assert_eq!(g(GapFill::Zero), vec![1.0, 0.0, 0.0, 4.0]);
    assert_eq!(g(GapFill::Previous), vec![1.0, 1.0, 1.0, 4.0]);
    assert!(g(GapFill::Missing)[1].is_nan());
    assert_eq!(
        resample(&ts, &vs, step(MIN), Agg::Mean, GapFill::Linear)
            .unwrap()
            .filled,
        2
    );
}

#[test]
fn duplicates_are_averaged_and_nan_ignored() {
    let g = resample(
        &[0, 0, 10, 20],
        &[1.0, 3.0, f64::NAN, 5.0],
        step(MIN),
        Agg::Mean,
        GapFill::Linear,
    )
    .unwrap();
    assert_eq!(g.values, vec![3.0]);
}

#[test]
fn rejects_empty_and_mismatched() {
    assert!(resample(&[], &[], step(MIN), Agg::Mean, GapFill::Linear).is_err());
    assert!(resample(&[1], &[], step(MIN), Agg::Mean, GapFill::Linear).is_err());
    assert!(
        resample(
            &[0, i64::MAX / 2],
            &[1.0, 2.0],
            step(1),
            Agg::Mean,
            GapFill::Linear
        )
        .is_err()
    );
}

#[test]
fn coarsen_is_mean_of_fine_bins() {
    let ts: Vec<i64> = (0..24).map(|i| i * 5 * MIN).collect();
    let vs: Vec<f64> = (0..24).map(f64::from).collect();
    let fine = resample(&ts, &vs, step(5 * MIN), Agg::Mean, GapFill::Linear).unwrap();
    let hourly = fine.coarsen(GridStep::HOUR, Agg::Mean).unwrap();
    assert_eq!(hourly.values, vec![5.5, 17.5]);
}

#[test]
fn parses_aggregations() {
    assert_eq!("mean".parse::<Agg>().unwrap(), Agg::Mean);
    assert_eq!("p95".parse::<Agg>().unwrap(), Agg::Percentile(95.0));
    assert!("p101".parse::<Agg>().is_err());
    assert!("median-ish".parse::<Agg>().is_err());
}

#[test]
fn the_step_of_a_series_is_its_median_spacing_in_whole_minutes() {
    let minutes = |m: &[i64]| m.iter().map(|m| m * 60_000).collect::<Vec<_>>();
    // One gap of an hour and a repeated timestamp do not move the median.
    let ts = minutes(&[0, 5, 10, 10, 15, 75, 80]);
    assert_eq!(infer_step(&ts), GridStep::FIVE_MINUTES);
    // 59.6 minutes rounds to an hour; 10 seconds to one minute.
    assert_eq!(infer_step(&[0, 3_576_000, 7_152_000]), GridStep::HOUR);
    assert_eq!(infer_step(&[0, 10_000, 20_000]).millis(), 60_000);
    assert_eq!(infer_step(&[7]), GridStep::FIVE_MINUTES);
    assert_eq!(infer_step(&[]), GridStep::FIVE_MINUTES);
}
