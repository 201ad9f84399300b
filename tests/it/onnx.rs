//! ONNX export: `shardcast export-onnx` on the bundled model, the
//! `OnnxModel` of `shardcast-onnx` (tract) against `Model::forecast_rows`, and
//! onnxruntime (through `tests/onnx_parity.py`) against both.
//!
//! The Python interpreter is `$SHARDCAST_PYTHON`, else `.venv/bin/python`
//! at the repository root; without onnxruntime the parity part is skipped
//! with a printed reason, unless `SHARDCAST_REQUIRE_PYTHON=1`.

use std::path::{Path, PathBuf};
use std::process::Command;

use shardcast_model::forecaster::{
    Baseline, CellKind, Model, ModelConfig, SeriesInput, TrainConfig, TrainSeries,
};
use shardcast_onnx::{self as onnx, OnnxInputs, OnnxModel};

use super::{ok, repo, shardcast};

/// Largest accepted `|onnx - candle| / max(1, |candle|)`.
const TOLERANCE: f64 = 1e-4;

/// Deterministic noise in [-1, 1).
fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// A daily pattern around `mean` with amplitude of about `dev`.
fn daily(n: usize, per_day: usize, mean: f32, dev: f32, seed: u64) -> Vec<f32> {
    let e = noise(n, seed);
    (0..n)
        .map(|i| {
            let phase = std::f32::consts::TAU * (i % per_day) as f32 / per_day as f32;
            mean + dev * (1.5 * phase.sin() + 0.3 * e[i])
        })
        .collect()
}

/// An event indicator with a block of ones every `every` points.
fn events(n: usize, every: usize) -> Vec<f32> {
    (0..n)
        .map(|i| if i % every < every / 6 { 1.0 } else { 0.0 })
        .collect()
}

struct Grid {
    name: String,
    shard_type: String,
    start: i64,
    values: Vec<f32>,
    events: Vec<f32>,
}

/// Windows for every grid at `origins(len)`, plus an unknown series with a
/// history shorter than the model's window.
fn windows<'a>(
    model: &Model,
    grids: &'a [Grid],
    origins: impl Fn(usize) -> Vec<usize>,
) -> Vec<(SeriesInput<'a>, usize)> {
    let mut out = Vec::new();
    for g in grids {
        let input = SeriesInput {
            series: model.series_row(&g.name),
            shard_type: model.shard_type_row(&g.shard_type),
            start: g.start,
            step: model.step_ms(),
            values: &g.values,
            events: Some(&g.events),
        };
        out.extend(origins(g.values.len()).into_iter().map(|o| (input, o)));
    }
    out
}

/// Compares `OnnxModel` (tract) with `Model::forecast_rows`, writes the parity
/// case for onnxruntime, and returns tract's largest absolute difference.
fn case(
    name: &str,
    model: &Model,
    path: &Path,
    windows: &[(SeriesInput<'_>, usize)],
    dir: &Path,
) -> (PathBuf, f64) {
    let want = model.forecast_rows(windows).unwrap();
    let loaded = OnnxModel::load(path).unwrap();
    let inputs = loaded.contract().inputs(windows).unwrap();
    let got = loaded
        .run(&inputs)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(got.len(), want.len());
    let (mut abs, mut rel) = (0f64, 0f64);
    for (g, w) in got.iter().zip(&want) {
        let d = f64::from((g - w).abs());
        abs = abs.max(d);
        rel = rel.max(d / f64::from(w.abs()).max(1.0));
    }
    eprintln!("{name}: tract vs candle, max abs diff {abs:.3e}, max rel diff {rel:.3e}");
    assert!(rel <= TOLERANCE, "{name}: tract off by {rel} (abs {abs})");

    let (h, q) = (model.config().horizon, model.config().quantiles.len());
    let json = serde_json::json!({
        "name": name,
        "model": path,
        "inputs": inputs_json(loaded.contract(), &inputs),
        "expected": want,
        "expected_shape": [windows.len(), h, q],
        "tolerance": TOLERANCE,
    });
    let file = dir.join(format!("{name}.json"));
    std::fs::write(&file, serde_json::to_vec(&json).unwrap()).unwrap();
    (file, abs)
}

fn inputs_json(contract: &onnx::Contract, inputs: &OnnxInputs) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for spec in &contract.inputs {
        let t = inputs.get(&spec.name).unwrap();
        let flat = t.flatten_all().unwrap();
        let data = match spec.dtype.as_str() {
            "float32" => serde_json::json!(flat.to_vec1::<f32>().unwrap()),
            _ => serde_json::json!(flat.to_vec1::<i64>().unwrap()),
        };
        map.insert(
            spec.name.clone(),
            serde_json::json!({ "dtype": spec.dtype, "shape": t.dims(), "data": data }),
        );
    }
    serde_json::Value::Object(map)
}

/// Runs the parity script on `cases`; returns its per-case JSON lines.
fn onnxruntime_parity(py: &Path, cases: &[PathBuf]) -> Vec<serde_json::Value> {
    let out = Command::new(py)
        .arg(repo().join("tests/onnx_parity.py"))
        .args(cases)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "onnxruntime parity failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), cases.len(), "{stdout}");
    for l in &lines {
        eprintln!("onnxruntime vs candle: {l}");
        assert_eq!(l["ok"], true, "{l}");
    }
    lines
}

const HOUR: i64 = 3_600_000;

/// A short training run on `grids`, leaving out the last `cut` points of
/// each.
fn fit(cfg: &ModelConfig, grids: &[Grid], cut: usize) -> Model {
    let tc = TrainConfig {
        batch_size: 32,
        max_steps: 20,
        eval_every: 10,
        ..TrainConfig::default()
    };
    let data: Vec<TrainSeries> = grids
        .iter()
        .map(|g| TrainSeries {
            name: g.name.clone(),
            shard_type: g.shard_type.clone(),
            start: g.start,
            values: g.values[..g.values.len() - cut].to_vec(),
            events: Some(g.events.clone()),
        })
        .collect();
    Model::fit(cfg, &tc, HOUR, &data, |_| {}).unwrap().0
}

fn small_model(cell: CellKind, layers: usize) -> (Model, Vec<Grid>) {
    let grids: Vec<Grid> = (0..4)
        .map(|i| Grid {
            name: format!("shop/{}/rps/s{i}", ["api", "db"][i % 2]),
            shard_type: ["api", "db"][i % 2].to_owned(),
            start: 1_700_000_000_000 - 1_700_000_000_000 % HOUR,
            values: daily(24 * 12, 24, 20.0 * (i + 1) as f32, 4.0, i as u64),
            events: events(24 * 12 + 12, 37),
        })
        .collect();
    let cfg = ModelConfig {
        cell,
        num_layers: layers,
        hidden_size: 12,
        context: 24,
        horizon: 6,
        season: 24,
        lags: vec![24, 48],
        head_hidden: 12,
        // One case also exercises the baselines and the hybrid blend.
        baselines: if cell == CellKind::Gru && layers == 1 {
            vec![
                Baseline {
                    days: 3,
                    weeks: 0,
                    recent: 6,
                },
                Baseline {
                    days: 0,
                    weeks: 1,
                    recent: 12,
                },
            ]
        } else {
            Vec::new()
        },
        ..ModelConfig::default()
    };
    (fit(&cfg, &grids[1..], 0), grids)
}

/// Ten weeks of hourly data with a weekly pattern; one day in every three
/// weeks drops to a third and the next is normal again, and the last day of
/// the first two series is such a day.
fn shocky_model() -> (Model, Vec<Grid>) {
    let n = 24 * 7 * 10;
    let start = 1_700_006_400_000 - 1_700_006_400_000 % HOUR;
    let grids: Vec<Grid> = (0..3)
        .map(|i| {
            let mut values = daily(n, 24, 30.0 * (i + 1) as f32, 5.0, 40 + i as u64);
            for (t, v) in values.iter_mut().enumerate() {
                let day = t / 24;
                *v *= 1.0 + 0.1 * (day % 7) as f32;
                let last = i < 2 && day == n / 24 - 1;
                if day % 21 == 10 || last {
                    *v /= 3.0;
                }
            }
            Grid {
                name: format!("shop/api/rps/w{i}"),
                shard_type: "api".to_owned(),
                start,
                values,
                events: events(n + 12, 53),
            }
        })
        .collect();
    let cfg = ModelConfig {
        hidden_size: 8,
        context: 24,
        horizon: 6,
        season: 24,
        lags: vec![24, 168],
        head_hidden: 8,
        ..ModelConfig::default()
    };
    (fit(&cfg, &grids, 24), grids)
}

#[test]
fn exported_models_match_candle_in_tract_and_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    for (cell, layers) in [
        (CellKind::Gru, 1),
        (CellKind::Gru, 2),
        (CellKind::Lstm, 1),
        (CellKind::Lstm, 2),
    ] {
        let name = format!("{cell:?}_{layers}").to_lowercase();
        let (model, grids) = small_model(cell, layers);
        let path = dir.path().join(&name).join("model.onnx");
        onnx::export(&model, &path).unwrap();
        // Whole histories, mid-series origins, and histories shorter than
        // the window (72 points) and than a season.
        let w = windows(&model, &grids, |n| vec![n, n - 7, 60, 30, 5]);
        cases.push(case(&name, &model, &path, &w, dir.path()).0);
    }

    // A model with weekly structure whose series drop to a third for a day
    // every three weeks and come back: the fit mixes in the return after
    // such days (the reversion), and its shock test and mixture are in the
    // graph.
    let (model, grids) = shocky_model();
    let r = model
        .reversion()
        .expect("shocks that end call for a reversion");
    eprintln!("reversion weight {}", r.weight);
    let path = dir.path().join("reversion").join("model.onnx");
    onnx::export(&model, &path).unwrap();
    // Origins right after a shock day, in calm weeks, and with too little
    // history for the shock test (fifteen days).
    let w = windows(&model, &grids, |n| {
        vec![n, n - 5, n - 24, n - 24 * 7, 15 * 24, 15 * 24 - 2, 30]
    });
    // After the shock day (a third of the level) the upper band reaches
    // last week's values: the return scenario is in the forecast.
    let fc = model.forecast_rows(&w).unwrap();
    let q = model.config().quantiles.len();
    let n = grids[0].values.len();
    let back = grids[0].values[n - 168];
    assert!(
        fc[q - 3] > 0.9 * back,
        "90% quantile {} against {back}",
        fc[q - 3]
    );
    cases.push(case("gru_reversion", &model, &path, &w, dir.path()).0);

    // The bundled model, exported by the CLI.
    let out = dir.path().join("bundled").join("model.onnx");
    let stdout = ok(&[
        "export-onnx",
        "--model",
        "models/default/1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        stdout.contains("values") && stdout.contains("quantiles"),
        "{stdout}"
    );
    assert!(onnx::contract_path(&out).is_file());
    let model = Model::load(&repo().join("models/default/1")).unwrap();
    let start = 1_714_000_000_000 - 1_714_000_000_000 % 300_000;
    let grids: Vec<Grid> = std::iter::once(Grid {
        name: "unknown/series".into(),
        shard_type: "unknown".into(),
        start,
        values: daily(900, 288, 55.0, 9.0, 99),
        events: events(912, 500),
    })
    .chain(model.series().iter().enumerate().map(|(i, s)| Grid {
        name: s.name.clone(),
        shard_type: s.shard_type.clone(),
        start,
        values: daily(2600, 288, s.mean, s.deviation, i as u64),
        events: events(2612, 700),
    }))
    .collect();
    let w = windows(&model, &grids, |n| vec![n, n - 150, 400]);
    let (file, abs) = case("bundled_gru", &model, &out, &w, dir.path());
    cases.push(file);
    eprintln!("bundled model: tract max abs diff {abs:.3e} (series up to ~2e6)");

    if let Some(py) = super::python_with("onnxruntime, numpy", "onnxruntime parity") {
        onnxruntime_parity(&py, &cases);
    }
}

#[test]
fn export_onnx_refuses_a_missing_model() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing");
    let out = shardcast(&["export-onnx", "--model", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nothing") && err.contains("no config.json"),
        "{err}"
    );
}
