use std::path::Path;

use candle_core::{DType, Device, Tensor};
use prost::Message;

use super::*;
use crate::proto::tensor_proto::DataType;
use crate::proto::{
    GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto,
    TypeProto, ValueInfoProto, tensor_shape_proto, type_proto,
};
use shardcast_model::forecaster::{
    Baseline, Calibration, CellKind, Hybrid, Model, ModelConfig, Reversion, SeriesInput,
    TrainConfig, TrainSeries,
};

/// Deterministic pseudo-random values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = shardcast_core::rng::SplitMix64::new(seed);
    (0..n).map(|_| (rng.unit() * 2.0 - 1.0) as f32).collect()
}

/// The model's view of a training series (its rows, grid and events).
fn input_of<'a>(m: &Model, s: &'a TrainSeries) -> SeriesInput<'a> {
    SeriesInput {
        series: m.series_row(&s.name),
        shard_type: m.shard_type_row(&s.shard_type),
        start: s.start,
        step: m.step_ms(),
        values: &s.values,
        events: s.events.as_deref(),
    }
}

const STEP: i64 = 3_600_000;
/// A Monday, 2024-01-01T00:00Z, so windows cross day and week boundaries.
const START: i64 = 1_704_067_200_000;

fn series(n: usize, level: f32, seed: u64) -> Vec<f32> {
    let noise = values(n, seed);
    (0..n)
        .map(|i| {
            let day = (std::f32::consts::TAU * (i % 24) as f32 / 24.0).sin();
            level * (1.0 + 0.4 * day + 0.1 * noise[i])
        })
        .collect()
}

fn events(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| if (i / 7) % 5 == 0 { 1.0 } else { 0.0 })
        .collect()
}

fn data(with_events: bool) -> Vec<TrainSeries> {
    (0..3)
        .map(|i| TrainSeries {
            name: format!("app/type{}/value/s{i}", i % 2),
            shard_type: format!("type{}", i % 2),
            start: START,
            values: series(24 * 10, 10.0 * (i + 1) as f32, i as u64),
            events: with_events.then(|| events(24 * 10 + 12)),
        })
        .collect()
}

fn config(cell: CellKind, layers: usize) -> ModelConfig {
    ModelConfig {
        cell,
        num_layers: layers,
        hidden_size: 8,
        context: 12,
        horizon: 6,
        season: 24,
        lags: vec![24],
        head_hidden: 8,
        series_embedding: 3,
        shard_type_embedding: 2,
        ..ModelConfig::default()
    }
}

/// A briefly trained model with asymmetric calibration, so that every part
/// of the forecast path matters.
fn model(cfg: &ModelConfig, with_events: bool) -> Model {
    let tc = TrainConfig {
        batch_size: 16,
        max_steps: 3,
        eval_every: 3,
        ..TrainConfig::default()
    };
    let (mut m, _) = Model::fit(cfg, &tc, STEP, &data(with_events), |_| {}).unwrap();
    m.set_calibration(Calibration {
        lower: 1.3,
        upper: 0.7,
    });
    m
}

/// Windows of every kind: known series at several origins, an unknown
/// series scaled by its own history, histories shorter than the window
/// and than the season, events running into the horizon or absent.
fn windows<'a>(m: &Model, d: &'a [TrainSeries], ev: &'a [f32]) -> Vec<(SeriesInput<'a>, usize)> {
    let mut out = Vec::new();
    for (i, s) in d.iter().enumerate() {
        let input = input_of(m, s);
        for origin in [
            s.values.len(),
            s.values.len() - 17 - i,
            100 + 5 * i,
            30,
            7,
            1,
        ] {
            out.push((input, origin));
        }
    }
    let unknown = SeriesInput {
        series: 0,
        shard_type: 0,
        start: START - 5 * STEP,
        step: STEP,
        values: &d[1].values[..150],
        events: Some(ev),
    };
    out.push((unknown, 150));
    out.push((unknown, 20));
    out
}

fn check_matches(m: &Model, with_events: bool) -> f32 {
    let d = data(with_events);
    let ev = events(40);
    check_windows(m, &windows(m, &d, &ev))
}

/// Runs the exported graph on `w` and compares it with `Model::forecast_rows`;
/// returns the largest difference.
fn check_windows(m: &Model, w: &[(SeriesInput<'_>, usize)]) -> f32 {
    let want = m.forecast_rows(w).unwrap();
    let bytes = to_bytes(m).unwrap();
    let onnx = OnnxModel::from_bytes(Path::new("test.onnx"), &bytes).unwrap();
    let inputs = onnx.contract().inputs(w).unwrap();
    let got = onnx.run(&inputs).unwrap();
    let (h, q) = (m.config().horizon, m.config().quantiles.len());
    assert_eq!(got.dims(), &[w.len(), h, q]);
    let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let diff = want
        .iter()
        .zip(&got)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        diff <= 1e-4,
        "{:?} {} layer(s): max |candle - onnx| = {diff}",
        m.config().cell,
        m.config().num_layers
    );
    assert!(got.chunks(q).all(|r| r.windows(2).all(|p| p[0] <= p[1])));
    diff
}

#[test]
fn gru_one_and_two_layers_match_forecast() {
    for layers in [1, 2] {
        check_matches(&model(&config(CellKind::Gru, layers), true), true);
    }
}

#[test]
fn lstm_one_and_two_layers_match_forecast() {
    for layers in [1, 2] {
        check_matches(&model(&config(CellKind::Lstm, layers), true), true);
    }
}

#[test]
fn models_without_events_calendar_or_lags_and_ensembles_match_forecast() {
    let plain = ModelConfig {
        events: false,
        ..config(CellKind::Gru, 1)
    };
    check_matches(&model(&plain, false), false);
    let bare = ModelConfig {
        calendar: false,
        events: false,
        lags: vec![],
        season: 0,
        ..config(CellKind::Lstm, 1)
    };
    check_matches(&model(&bare, false), false);
    let ensemble = ModelConfig {
        members: 2,
        ..config(CellKind::Gru, 2)
    };
    check_matches(&model(&ensemble, true), true);
}

#[test]
fn models_with_baselines_and_a_hybrid_match_forecast() {
    let cfg = ModelConfig {
        baselines: vec![
            Baseline {
                days: 3,
                weeks: 0,
                recent: 6,
            },
            Baseline {
                days: 0,
                weeks: 1,
                recent: 24,
            },
        ],
        // Time of day only: the day-of-week pair is left out.
        weekday: false,
        ..config(CellKind::Gru, 1)
    };
    let mut m = model(&cfg, true);
    let hybrid = m
        .hybrid()
        .expect("a model with a season gets a hybrid")
        .clone();
    assert!(Contract::of(&m).window >= hybrid.lookback(&cfg));
    assert!(hybrid.miss_reference > 0.0);
    check_matches(&m, true);
    // A small miss reference widens every window's spread after its miss,
    // in both: the forecasts change and still match.
    let d = data(true);
    let ev = events(40);
    let before = m.forecast_rows(&windows(&m, &d, &ev)).unwrap();
    m.set_hybrid(Some(Hybrid {
        miss_reference: hybrid.miss_reference / 4.0,
        ..hybrid
    }));
    let after = m.forecast_rows(&windows(&m, &d, &ev)).unwrap();
    assert!(before.iter().zip(&after).any(|(a, b)| (a - b).abs() > 1e-3));
    check_matches(&m, true);
}

#[test]
fn models_with_a_reversion_match_forecast() {
    // Eighteen days with the weekly lag; the last day of series 0 drops to
    // half and the last 30 hours of series 1 rise by 60%: both are shocks.
    let cfg = ModelConfig {
        lags: vec![24, 168],
        ..config(CellKind::Gru, 1)
    };
    let n = 24 * 18;
    let mut d: Vec<TrainSeries> = (0..3)
        .map(|i| TrainSeries {
            name: format!("app/type{}/value/s{i}", i % 2),
            shard_type: format!("type{}", i % 2),
            start: START,
            values: series(n, 10.0 * (i + 1) as f32, i as u64),
            events: Some(events(n + 12)),
        })
        .collect();
    d[0].values[n - 24..].iter_mut().for_each(|v| *v *= 0.5);
    d[1].values[n - 30..].iter_mut().for_each(|v| *v *= 1.6);
    let tc = TrainConfig {
        batch_size: 16,
        max_steps: 3,
        eval_every: 3,
        ..TrainConfig::default()
    };
    let (mut m, _) = Model::fit(&cfg, &tc, STEP, &d, |_| {}).unwrap();
    m.set_calibration(Calibration {
        lower: 1.2,
        upper: 0.9,
    });
    m.set_reversion(Some(Reversion { weight: 0.4 }));
    assert!(Contract::of(&m).window >= 15 * 24);
    let mut w = Vec::new();
    for (i, s) in d.iter().enumerate() {
        let input = input_of(&m, s);
        // Shocked (series 0 and 1 at the end), calm, and too short a
        // history for the shock test.
        for origin in [n, n - 3, n - 24 - i, 15 * 24, 15 * 24 - 1, 100] {
            w.push((input, origin));
        }
    }
    // The shocked windows move: the reversion is in the path.
    let with = m.forecast_rows(&w).unwrap();
    m.set_reversion(None);
    let without = m.forecast_rows(&w).unwrap();
    m.set_reversion(Some(Reversion { weight: 0.4 }));
    let per = cfg.horizon * cfg.quantiles.len();
    let moved: Vec<bool> = with
        .chunks(per)
        .zip(without.chunks(per))
        .map(|(a, b)| a.iter().zip(b).any(|(x, y)| (x - y).abs() > 1e-3))
        .collect();
    assert!(moved[0] && moved[6], "{moved:?}");
    assert!(!moved[12] && !moved[3] && !moved[5], "{moved:?}");
    check_windows(&m, &w);
}

#[test]
fn contract_inputs_follow_the_documented_layout() {
    let m = model(&config(CellKind::Gru, 1), true);
    let c = Contract::of(&m);
    // window = max(context + largest lag, max(context, season)) = 36
    assert_eq!(c.window, 36);
    let d = data(true);
    let input = SeriesInput {
        series: 2,
        shard_type: m.shard_type_row("type1"),
        start: START,
        step: STEP,
        values: &d[1].values,
        events: d[1].events.as_deref(),
    };
    let x = c.inputs(&[(input, 20)]).unwrap();
    let names: Vec<&str> = x.tensors.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            VALUES,
            HISTORY_LEN,
            ORIGIN_TS,
            EVENTS,
            SERIES_ID,
            SHARD_TYPE_ID,
            SERIES_SCALE
        ]
    );
    let v = x.get(VALUES).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(&v[0][16..], &d[1].values[..20]);
    assert!(v[0][..16].iter().all(|&x| x == 0.0));
    assert_eq!(x.get(HISTORY_LEN).unwrap().to_vec1::<i64>().unwrap(), [20]);
    assert_eq!(
        x.get(ORIGIN_TS).unwrap().to_vec1::<i64>().unwrap(),
        [START + 20 * STEP]
    );
    let e = x.get(EVENTS).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(e[0], d[1].events.as_ref().unwrap()[8..26]);
    let s = x.get(SERIES_SCALE).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(s[0], [m.series()[1].mean, m.series()[1].deviation]);
    // Bad windows are refused like Model::forecast_rows refuses them.
    assert!(c.inputs(&[(input, 0)]).is_err());
    let other_grid = SeriesInput {
        step: 60_000,
        ..input
    };
    assert!(c.inputs(&[(other_grid, 5)]).is_err());
}

#[test]
fn export_writes_the_file_and_its_contract_atomically() {
    let m = model(&config(CellKind::Gru, 1), true);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join("model.onnx");
    export(&m, &path).unwrap();
    let json = std::fs::read_to_string(contract_path(&path)).unwrap();
    let c: Contract = serde_json::from_str(&json).unwrap();
    let loaded = OnnxModel::load(&path).unwrap();
    assert_eq!(&c, loaded.contract());
    assert_eq!(c.series.len(), 3);
    assert_eq!(c.series_row(&m.series()[2].name), 3);
    assert_eq!(c.shard_type_row("type1"), 2);
    // Only the two files, no temp files left behind; a second export replaces them.
    export(&m, &path).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["model.onnx", "model.onnx.json"]);
}

/// A float tensor's type, `dims` `None` for any shape.
fn float_type(dims: Option<&[usize]>) -> TypeProto {
    TypeProto {
        value: Some(type_proto::Value::TensorType(type_proto::Tensor {
            elem_type: Some(DataType::Float as i32),
            shape: dims.map(|d| TensorShapeProto {
                dim: d
                    .iter()
                    .map(|&n| tensor_shape_proto::Dimension {
                        value: Some(tensor_shape_proto::dimension::Value::DimValue(n as i64)),
                        denotation: None,
                    })
                    .collect(),
            }),
        })),
        denotation: None,
    }
}

/// Runs a recurrent `node` of an exported graph alone in tract: `x`
/// (`[seq, batch, input]`) as its `X`, its weights from `inits`, no initial
/// state; returns its `Y` output.
fn run_node(node: &NodeProto, inits: &[TensorProto], x: &[f32], dims: [usize; 3]) -> Vec<f32> {
    use tract_onnx::prelude::{Framework, InferenceModelExt, IntoRunnable, IntoTValue, tvec};
    let mut alone = node.clone();
    alone.input = vec!["x".into()];
    alone.input.extend(node.input[1..4].iter().cloned());
    alone.output = vec!["y".into()];
    let value = |name: &str, dims: Option<&[usize]>| ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(float_type(dims)),
        ..ValueInfoProto::default()
    };
    let model = ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        graph: Some(GraphProto {
            initializer: inits
                .iter()
                .filter(|t| alone.input[1..].iter().any(|n| n == t.name()))
                .cloned()
                .collect(),
            node: vec![alone],
            input: vec![value("x", Some(&dims))],
            output: vec![value("y", None)],
            ..GraphProto::default()
        }),
        ..ModelProto::default()
    };
    let bytes = model.encode_to_vec();
    let plan = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .unwrap();
    let x = tract_onnx::prelude::Tensor::from_shape(&dims, x).unwrap();
    let out = plan.run(tvec![x.into_tvalue()]).unwrap();
    out[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

/// The GRU and LSTM nodes as exported follow the ONNX operator definitions
/// (gate orders z r h and i o f c): run alone in tract, they agree with a
/// direct transcription of the ONNX equations.
#[test]
fn recurrent_nodes_follow_the_onnx_equations() {
    for cell in [CellKind::Gru, CellKind::Lstm] {
        let m = model(&config(cell, 1), true);
        let proto = ModelProto::decode(to_bytes(&m).unwrap().as_slice()).unwrap();
        let g = proto.graph.unwrap();
        let node = g
            .node
            .iter()
            .find(|n| n.op_type() == "GRU" || n.op_type() == "LSTM")
            .unwrap();
        let init = |name: &str| {
            let t = g.initializer.iter().find(|t| t.name() == name).unwrap();
            let v: Vec<f32> = t
                .raw_data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            v
        };
        let (w, r, b) = (
            init(&node.input[1]),
            init(&node.input[2]),
            init(&node.input[3]),
        );
        let hs = 8;
        let input = w.len() / (if cell == CellKind::Gru { 3 } else { 4 } * hs);
        let (seq, batch) = (5, 3);
        let x = values(seq * batch * input, 9);
        let y = run_node(node, &g.initializer, &x, [seq, batch, input]);

        let sig = |v: f32| 1.0 / (1.0 + (-v).exp());
        let dot = |m: &[f32], row: usize, v: &[f32]| -> f32 {
            let n = v.len();
            m[row * n..(row + 1) * n]
                .iter()
                .zip(v)
                .map(|(a, b)| a * b)
                .sum()
        };
        let mut max = 0f32;
        for bi in 0..batch {
            let mut h = vec![0f32; hs];
            let mut c = vec![0f32; hs];
            for t in 0..seq {
                let xt = &x[(t * batch + bi) * input..][..input];
                let gates = if cell == CellKind::Gru { 3 } else { 4 };
                let wx = |k: usize, j: usize| dot(&w, k * hs + j, xt) + b[k * hs + j];
                let rh = |k: usize, j: usize, h: &[f32]| {
                    dot(&r, k * hs + j, h) + b[(gates + k) * hs + j]
                };
                let mut next = vec![0f32; hs];
                for j in 0..hs {
                    if cell == CellKind::Gru {
                        // z, r, h; linear_before_reset = 1
                        let z = sig(wx(0, j) + rh(0, j, &h));
                        let rr = sig(wx(1, j) + rh(1, j, &h));
                        let n = (wx(2, j) + rr * rh(2, j, &h)).tanh();
                        next[j] = (1.0 - z) * n + z * h[j];
                    } else {
                        // i, o, f, c
                        let i = sig(wx(0, j) + rh(0, j, &h));
                        let o = sig(wx(1, j) + rh(1, j, &h));
                        let f = sig(wx(2, j) + rh(2, j, &h));
                        let cc = (wx(3, j) + rh(3, j, &h)).tanh();
                        c[j] = f * c[j] + i * cc;
                        next[j] = o * c[j].tanh();
                    }
                }
                h = next;
                // Y is [seq, 1, batch, hidden]
                for j in 0..hs {
                    max = max.max((y[(t * batch + bi) * hs + j] - h[j]).abs());
                }
            }
        }
        assert!(
            max < 1e-5,
            "{cell:?}: max deviation from the ONNX equations {max}"
        );
    }
}

/// The tensor type of graph input `i`.
fn input_type(p: &mut ModelProto, i: usize) -> &mut type_proto::Tensor {
    let ty = p.graph.as_mut().unwrap().input[i].r#type.as_mut().unwrap();
    let Some(type_proto::Value::TensorType(t)) = ty.value.as_mut() else {
        unreachable!("inputs are tensors")
    };
    t
}

fn tweak(m: &Model, f: impl FnOnce(&mut ModelProto)) -> Vec<u8> {
    let mut p = ModelProto::decode(to_bytes(m).unwrap().as_slice()).unwrap();
    f(&mut p);
    p.encode_to_vec()
}

#[test]
fn malformed_files_are_refused_naming_the_file() {
    let m = model(&config(CellKind::Gru, 1), true);
    let dir = tempfile::tempdir().unwrap();
    let load = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let e = OnnxModel::load(&p).unwrap_err().to_string();
        assert!(e.contains(&p.display().to_string()), "{e}");
        e
    };
    let good = to_bytes(&m).unwrap();

    let e = load("truncated.onnx", &good[..good.len() / 2]);
    assert!(e.contains("truncated or corrupt"), "{e}");

    let e = load(
        "renamed.onnx",
        &tweak(&m, |p| {
            p.graph.as_mut().unwrap().input[0].name = Some("valuez".into())
        }),
    );
    assert!(
        e.contains("`valuez`") && e.contains("expected inputs"),
        "{e}"
    );

    let e = load(
        "shape.onnx",
        &tweak(&m, |p| {
            let t = input_type(p, 0);
            t.shape.as_mut().unwrap().dim[1].value =
                Some(tensor_shape_proto::dimension::Value::DimValue(99));
        }),
    );
    assert!(
        e.contains("`values` has shape [?, 99]") && e.contains("[batch, 36]"),
        "{e}"
    );

    let e = load(
        "dtype.onnx",
        &tweak(&m, |p| {
            let t = input_type(p, 1);
            t.elem_type = Some(DataType::Float as i32);
        }),
    );
    assert!(e.contains("`history_len` has element type float32"), "{e}");

    let e = load(
        "op.onnx",
        &tweak(&m, |p| {
            p.graph.as_mut().unwrap().node[3].op_type = Some("Frobnicate".into())
        }),
    );
    assert!(e.contains("operator Frobnicate is not supported"), "{e}");

    let e = load(
        "dangling.onnx",
        &tweak(&m, |p| {
            p.graph.as_mut().unwrap().node.remove(0);
        }),
    );
    assert!(e.contains("is not produced before this node"), "{e}");

    let e = load(
        "weights.onnx",
        &tweak(&m, |p| {
            let g = p.graph.as_mut().unwrap();
            let t = g
                .initializer
                .iter_mut()
                .find(|t| t.name().contains("GRU.W"))
                .unwrap();
            t.raw_data.as_mut().unwrap().truncate(12);
        }),
    );
    assert!(
        e.contains("initializer `m0.GRU.W_l0`") && e.contains("raw_data"),
        "{e}"
    );

    let e = load("meta.onnx", &tweak(&m, |p| p.metadata_props.clear()));
    assert!(e.contains("shardcast.contract"), "{e}");

    let e = OnnxModel::load(&dir.path().join("missing.onnx"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.onnx"), "{e}");
}

#[test]
fn bad_inputs_are_refused_naming_the_file_and_input() {
    let m = model(&config(CellKind::Lstm, 1), true);
    let onnx = OnnxModel::from_bytes(Path::new("bad-inputs.onnx"), &to_bytes(&m).unwrap()).unwrap();
    let d = data(true);
    let ev = events(40);
    let good = onnx.contract().inputs(&windows(&m, &d, &ev)).unwrap();
    let run = |f: &dyn Fn(&mut OnnxInputs)| {
        let mut x = good.clone();
        f(&mut x);
        let e = onnx.run(&x).unwrap_err().to_string();
        assert!(e.contains("bad-inputs.onnx"), "{e}");
        e
    };
    // An empty batch gives an empty forecast, as Model::forecast_rows does.
    let empty = onnx.contract().inputs(&[]).unwrap();
    assert_eq!(onnx.run(&empty).unwrap().dims(), &[0, 6, 13]);
    let e = run(&|x| x.tensors.retain(|(n, _)| n != EVENTS));
    assert!(e.contains("input `events` is missing"), "{e}");
    let e = run(&|x| x.tensors[0].0 = "valus".into());
    assert!(e.contains("input `valus` is not an input"), "{e}");
    let e = run(&|x| x.tensors[1].0 = VALUES.into());
    assert!(e.contains("input `values` is given twice"), "{e}");
    let e = run(&|x| x.tensors[0].0 = "valus".into());
    assert!(e.contains("input `valus` is not an input"), "{e}");
    let e = run(&|x| x.tensors[0].1 = Tensor::zeros((2, 5), DType::F32, &Device::Cpu).unwrap());
    assert!(e.contains("input `values` has shape [2, 5]"), "{e}");
    let e = run(&|x| {
        x.tensors[1].1 = x.tensors[1].1.to_dtype(DType::F32).unwrap();
    });
    assert!(
        e.contains("input `history_len` is float32, expected int64"),
        "{e}"
    );
    let e = run(&|x| {
        x.tensors[1].1 = x.tensors[1].1.zeros_like().unwrap();
    });
    assert!(
        e.contains("input `history_len`[0] is 0, outside 1..=36"),
        "{e}"
    );
    let e = run(&|x| {
        let i = x.tensors.iter().position(|(n, _)| n == SERIES_ID).unwrap();
        x.tensors[i].1 = Tensor::full(9i64, x.batch, &Device::Cpu).unwrap();
    });
    assert!(
        e.contains("input `series_id`[0] is 9, outside 0..=3"),
        "{e}"
    );
}
