use super::*;
use crate::backtest::{self, BacktestSeries, BacktestSpec};

const STEP: i64 = 3_600_000;

/// A daily pattern with a per-series level and persistent (AR(1)) noise, so
/// that yesterday's value is a noisy guess and the recent past helps.
fn synthetic(n: usize, level: f32, seed: u64) -> Vec<f32> {
    let mut rng = shardcast_core::rng::SplitMix64::new(seed);
    let mut ar = 0f32;
    (0..n)
        .map(|i| {
            let day = (std::f32::consts::TAU * (i % 24) as f32 / 24.0).sin();
            ar = 0.9 * ar + 0.1 * (rng.unit() as f32 - 0.5);
            level * (1.0 + 0.5 * day + ar)
        })
        .collect()
}

fn small_config() -> (ModelConfig, TrainConfig) {
    let cfg = ModelConfig {
        hidden_size: 16,
        context: 12,
        horizon: 6,
        season: 24,
        lags: vec![24],
        head_hidden: 16,
        baselines: vec![
            Baseline {
                days: 3,
                weeks: 0,
                recent: 24,
            },
            Baseline {
                days: 3,
                weeks: 0,
                recent: 6,
            },
        ],
        ..ModelConfig::default()
    };
    let tc = TrainConfig {
        batch_size: 32,
        max_steps: 400,
        eval_every: 50,
        ..TrainConfig::default()
    };
    (cfg, tc)
}

fn data() -> Vec<TrainSeries> {
    (0..3)
        .map(|i| TrainSeries {
            name: format!("s{i}"),
            shard_type: if i == 0 { "api".into() } else { "db".into() },
            start: 0,
            values: synthetic(24 * 12, 10.0 * (i + 1) as f32, i as u64),
            events: None,
        })
        .collect()
}

fn windows(model: &Model, data: &[TrainSeries]) -> Vec<f32> {
    let inputs: Vec<(SeriesInput<'_>, usize)> = data
        .iter()
        .map(|s| (crate::test_util::input_of(model, s), s.values.len()))
        .collect();
    model.forecast_rows(&inputs).unwrap()
}

#[test]
fn a_model_says_whether_it_saw_a_range() {
    let (cfg, mut tc) = small_config();
    tc.max_steps = 1;
    let (model, _) = Model::fit(&cfg, &tc, STEP, &data(), |_| {}).unwrap();
    // Every series has 288 hourly points from 0: the last is at 287 h.
    let after = shardcast_core::Timestamp(288 * STEP);
    model.check_fitted_before(STEP, after).unwrap();
    let last = shardcast_core::Timestamp(287 * STEP);
    let e = model
        .check_fitted_before(STEP, last)
        .unwrap_err()
        .to_string();
    assert!(e.contains("was trained on `s0`"), "{e}");
    let e = model
        .check_fitted_before(2 * STEP, after)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("a 3600000 ms grid") && e.contains("7200000"),
        "{e}"
    );
}

#[test]
fn quantiles_never_cross_even_untrained() {
    let (cfg, mut tc) = small_config();
    tc.max_steps = 1;
    let (model, _) = Model::fit(&cfg, &tc, STEP, &data(), |_| {}).unwrap();
    let q = cfg.quantiles.len();
    for row in windows(&model, &data()).chunks(q) {
        assert!(row.windows(2).all(|w| w[0] <= w[1]), "{row:?}");
    }
}

#[test]
fn training_is_reproducible_and_beats_seasonal_naive() {
    let (cfg, tc) = small_config();
    let series: Vec<BacktestSeries> = data()
        .into_iter()
        .map(|s| BacktestSeries {
            name: s.name,
            shard_type: s.shard_type,
            start: s.start,
            values: s.values,
            events: None,
        })
        .collect();
    let spec = BacktestSpec {
        step_ms: STEP,
        horizon: 6,
        test_points: 48,
        season: 24,
    };
    let a = backtest::run(&cfg, &tc, spec, &series, |_| {}).unwrap();
    let b = backtest::run(&cfg, &tc, spec, &series, |_| {}).unwrap();
    for (x, y) in a.series.iter().zip(&b.series) {
        assert_eq!(x.forecasts, y.forecasts);
    }
    let s = a.summary();
    assert_eq!(s.crossings, 0);
    assert!(s.rel_wql_gmean < 0.8, "relative WQL {}", s.rel_wql_gmean);
    assert!(a.fit.val_windows > 0 && a.fit.train_windows > 0);
}

#[test]
fn artifact_round_trip_gives_identical_forecasts() {
    let (cfg, mut tc) = small_config();
    tc.max_steps = 20;
    let d = data();
    let (model, report) = Model::fit(&cfg, &tc, STEP, &d, |_| {}).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m").join("1");
    model
        .save(&path, &serde_json::to_value(&report).unwrap())
        .unwrap();
    let loaded = Model::load(&path).unwrap();
    assert_eq!(windows(&model, &d), windows(&loaded, &d));
    assert_eq!(loaded.series(), model.series());
    assert!(model.hybrid().is_some());
    assert_eq!(loaded.hybrid(), model.hybrid());
    assert!(Model::load_metrics(&path).unwrap()["members"].is_array());
    // Saving over an existing version is refused.
    assert!(model.save(&path, &serde_json::Value::Null).is_err());
}

#[test]
fn a_reversion_survives_the_round_trip() {
    let (mut cfg, mut tc) = small_config();
    cfg.lags = vec![24, 168];
    tc.max_steps = 5;
    let d: Vec<TrainSeries> = (0..2)
        .map(|i| TrainSeries {
            values: synthetic(24 * 17, 10.0 * (i + 1) as f32, i as u64),
            ..data()[i].clone()
        })
        .collect();
    let (mut model, _) = Model::fit(&cfg, &tc, STEP, &d, |_| {}).unwrap();
    model.set_reversion(Some(Reversion { weight: 0.3 }));
    assert!(model.window() >= 15 * 24);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m");
    model.save(&path, &serde_json::Value::Null).unwrap();
    let loaded = Model::load(&path).unwrap();
    assert_eq!(loaded.reversion(), Some(&Reversion { weight: 0.3 }));
    assert_eq!(windows(&model, &d), windows(&loaded, &d));
}

#[test]
fn malformed_artifacts_are_refused_with_the_reason() {
    let (cfg, mut tc) = small_config();
    tc.max_steps = 1;
    let (model, _) = Model::fit(&cfg, &tc, STEP, &data(), |_| {}).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fresh = |name: &str| {
        let p = dir.path().join(name);
        model.save(&p, &serde_json::Value::Null).unwrap();
        p
    };
    let err = |p: &std::path::Path| Model::load(p).unwrap_err().to_string();

    let p = fresh("truncated");
    let w = std::fs::read(p.join("model.safetensors")).unwrap();
    std::fs::write(p.join("model.safetensors"), &w[..w.len() / 2]).unwrap();
    assert!(err(&p).contains("model.safetensors"), "{}", err(&p));

    let p = fresh("unknown-field");
    let c = std::fs::read_to_string(p.join("config.json")).unwrap();
    std::fs::write(
        p.join("config.json"),
        c.replacen('{', "{\"surprise\": 1,", 1),
    )
    .unwrap();
    assert!(err(&p).contains("surprise"), "{}", err(&p));

    let p = fresh("version");
    let c = std::fs::read_to_string(p.join("config.json")).unwrap();
    std::fs::write(
        p.join("config.json"),
        c.replace("\"format_version\": 1", "\"format_version\": 99"),
    )
    .unwrap();
    assert!(err(&p).contains("format_version 99"), "{}", err(&p));

    let p = fresh("shape");
    let c = std::fs::read_to_string(p.join("config.json")).unwrap();
    std::fs::write(
        p.join("config.json"),
        c.replace("\"hidden_size\": 16", "\"hidden_size\": 17"),
    )
    .unwrap();
    assert!(err(&p).contains("model.safetensors"), "{}", err(&p));

    let p = fresh("hybrid");
    let c = std::fs::read_to_string(p.join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&c).unwrap();
    v["hybrid"]["weight"] = serde_json::json!(7.0);
    std::fs::write(p.join("config.json"), v.to_string()).unwrap();
    assert!(err(&p).contains("hybrid"), "{}", err(&p));

    // A reversion on a model without the weekly lag, or with a bad weight.
    for weight in [0.4, 1.5] {
        let p = fresh(&format!("reversion-{weight}"));
        let c = std::fs::read_to_string(p.join("config.json")).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&c).unwrap();
        v["reversion"] = serde_json::json!({ "weight": weight });
        std::fs::write(p.join("config.json"), v.to_string()).unwrap();
        assert!(err(&p).contains("reversion"), "{}", err(&p));
    }

    assert!(err(&dir.path().join("missing")).contains("config.json"));
}

#[test]
fn bad_inputs_are_refused() {
    let (cfg, tc) = small_config();
    let mut short = data();
    for s in &mut short {
        s.values.truncate(20);
    }
    let e = Model::fit(&cfg, &tc, STEP, &short, |_| {}).unwrap_err();
    assert!(e.to_string().contains("no training windows"), "{e}");
    let bad = ModelConfig {
        lags: vec![3],
        ..cfg.clone()
    };
    assert!(Model::fit(&bad, &tc, STEP, &data(), |_| {}).is_err());
    let bad = ModelConfig {
        quantiles: vec![0.1, 0.9],
        ..cfg.clone()
    };
    assert!(Model::fit(&bad, &tc, STEP, &data(), |_| {}).is_err());
    let cfg_json = serde_json::to_string(&cfg)
        .unwrap()
        .replacen('{', "{\"hiden\":3,", 1);
    assert!(serde_json::from_str::<ModelConfig>(&cfg_json).is_err());
}

/// Training on CUDA: in a build without the `cuda` feature it is refused
/// with the reason; with it, on a machine with a GPU, the members train
/// there and the model (back on the CPU) forecasts like a CPU-trained one.
/// Without a GPU the test says so and passes: CI has none.
#[test]
fn cuda_training_is_refused_without_support_and_works_with_it() {
    let (cfg, mut tc) = small_config();
    tc.device = ComputeDevice::Cuda;
    let fitted = Model::fit(&cfg, &tc, STEP, &data(), |_| {});
    if !cfg!(feature = "cuda") {
        let e = fitted.unwrap_err().to_string();
        assert!(e.contains("--features cuda"), "{e}");
        return;
    }
    if !candle_core::utils::cuda_is_available() || candle_core::Device::new_cuda(0).is_err() {
        eprintln!("no CUDA GPU here: skipping the GPU training check");
        assert!(fitted.is_err());
        return;
    }
    let (gpu, report) = fitted.unwrap();
    assert!(report.members[0].steps > 0);
    tc.device = ComputeDevice::Cpu;
    let (cpu, _) = Model::fit(&cfg, &tc, STEP, &data(), |_| {}).unwrap();
    // Same seed and data, different kernels and summation order: close
    // forecasts, not equal ones.
    let (a, b) = (windows(&gpu, &data()), windows(&cpu, &data()));
    let scale = b.iter().map(|v| v.abs()).sum::<f32>() / b.len() as f32;
    let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
    assert!(
        diff < 0.1 * scale,
        "mean difference {diff} against scale {scale}"
    );
}

#[test]
fn validation_fits_use_every_origin_of_the_range() {
    let cfg = ModelConfig {
        horizon: 4,
        ..ModelConfig::default()
    };
    let (a, b) = (vec![0f32; 20], vec![0f32; 30]);
    let input = |values| SeriesInput {
        series: 0,
        shard_type: 0,
        start: 0,
        step: STEP,
        values,
        events: None,
    };
    let inputs = [input(&a), input(&b)];
    // Windows stepping by the horizon: series 0 from 12, series 1 from 18.
    let val = [(0, 12), (0, 16), (1, 18), (1, 22), (1, 26)];
    let all = every_val_origin(&cfg, &inputs, &val);
    let want: Vec<(usize, usize)> = (12..=16)
        .map(|o| (0, o))
        .chain((18..=26).map(|o| (1, o)))
        .collect();
    assert_eq!(all, want);
    // A series without validation windows has none; too many are thinned
    // evenly.
    assert_eq!(every_val_origin(&cfg, &inputs, &val[2..]).len(), 9);
    let long = vec![0f32; 3 * VAL_WINDOWS];
    let many = every_val_origin(&cfg, &[input(&long)], &[(0, 0)]);
    assert!(many.len() <= VAL_WINDOWS && many.len() > VAL_WINDOWS / 2);
    assert_eq!(many[0], (0, 0));
    assert!(many.windows(2).all(|p| p[1].1 - p[0].1 == 3));
}

#[test]
fn the_contract_gives_the_model_rows_and_answers_every_window() {
    use shardcast_core::{Forecaster, GridStep, Timestamp, Window};
    let (cfg, mut tc) = small_config();
    tc.max_steps = 20;
    let d = data();
    let (model, _) = Model::fit(&cfg, &tc, STEP, &d, |_| {}).unwrap();
    let spec = model.spec();
    assert_eq!(spec.horizon, 6);
    assert_eq!(spec.step, Some(GridStep::HOUR));
    assert_eq!(spec.levels.len(), cfg.quantiles.len());
    assert_eq!(spec.history, model.window());

    fn window(s: &TrainSeries, upto: usize) -> Window<'_> {
        Window {
            series: &s.name,
            shard_type: &s.shard_type,
            start: Timestamp(s.start),
            step: GridStep::HOUR,
            history: &s.values[..upto],
            events: None,
        }
    }
    let n = d[0].values.len();
    let batch = [window(&d[0], n), window(&d[1], 0), window(&d[2], n - 5)];
    let out = model.forecast_batch(&batch).unwrap();
    assert_eq!(out.len(), 3);
    // The window without history has no forecast; the others do.
    let err = out[1].as_ref().unwrap_err().to_string();
    assert!(err.contains("no history"), "{err}");
    let rows = |s: &TrainSeries, upto: usize| {
        let input = crate::test_util::input_of(&model, s);
        model.forecast_rows(&[(input, upto)]).unwrap()
    };
    let first = out[0].as_ref().unwrap();
    assert_eq!(first.values(), rows(&d[0], n).as_slice());
    assert_eq!(first.start(), Timestamp(STEP * n as i64));
    assert_eq!(
        out[2].as_ref().unwrap().values(),
        rows(&d[2], n - 5).as_slice()
    );
    // One window alone gives what it gave in the batch.
    assert_eq!(&model.forecast(&batch[0]).unwrap(), first);
}

#[test]
fn the_statistical_half_forecasts_a_steady_day_without_the_network() {
    use shardcast_core::{Forecaster, GridStep, Timestamp, Window};
    let (cfg, mut tc) = small_config();
    tc.max_steps = 5;
    // A day that repeats exactly: level plus shape forecasts it exactly,
    // whatever the (barely trained) network says.
    let day: Vec<f32> = (0..24 * 14)
        .map(|i| 50.0 + 20.0 * (std::f32::consts::TAU * (i % 24) as f32 / 24.0).sin())
        .collect();
    let d = [TrainSeries {
        name: "s".into(),
        shard_type: "t".into(),
        start: 0,
        values: day.clone(),
        events: None,
    }];
    let (model, _) = Model::fit(&cfg, &tc, STEP, &d, |_| {}).unwrap();
    let half = model.statistical().expect("a hybrid model");
    assert_eq!(half.hybrid().weight, 0.0);
    let n = day.len() - 6;
    let w = Window {
        series: "s",
        shard_type: "t",
        start: Timestamp(0),
        step: GridStep::HOUR,
        history: &day[..n],
        events: None,
    };
    let f = half.forecast(&w).unwrap();
    let median = f.level_path(0.5).unwrap();
    for (k, (m, want)) in median.iter().zip(&day[n..]).enumerate() {
        assert!((m - want).abs() < 0.5, "step {k}: {m} vs {want}");
    }
    assert!(half.spec().history <= model.window());
}
