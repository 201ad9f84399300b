//! ONNX engines side by side on the bundled model's exported graph:
//! `Model::forecast_rows` on Candle (what the graph computes), [`OnnxModel`]
//! (tract) and, with the `bench-ort` feature, onnxruntime through `ort`
//! (its `load-dynamic` feature: the `libonnxruntime.so` of the PyPI wheel,
//! found under `.venv` or named by `ORT_DYLIB_PATH`).
//!
//! ```text
//! cargo build --profile perf --workspace --examples --features shardcast-onnx/bench-ort
//! target/perf/examples/onnx_engines
//! ```
//!
//! Prints the operators the export emits, checks that the engines agree,
//! then times each at batch 1 and 64, interleaved (engine after engine,
//! round after round) so that a slow phase of the machine hits all alike,
//! and prints the median time per call. The choice of tract, and its
//! timings against the hand-written evaluator it replaced, are in the
//! history of this file (issue 18).

#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::error::Error;
use std::path::Path;
#[cfg(feature = "bench-ort")]
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[cfg(feature = "bench-ort")]
use candle_core::DType;
use prost::Message;
use shardcast_model::forecaster::{Model, SeriesInput};
use shardcast_onnx::{OnnxInputs, OnnxModel};

type Res<T> = Result<T, Box<dyn Error>>;

/// A daily pattern around `mean` with amplitude of about `dev`.
fn daily(n: usize, per_day: usize, mean: f32, dev: f32, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let e = (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
            let phase = std::f32::consts::TAU * (i % per_day) as f32 / per_day as f32;
            mean + dev * (1.5 * phase.sin() + 0.3 * e)
        })
        .collect()
}

/// Operator histogram of an ONNX file, read with a two-field view of the
/// protobuf (graph = 7, node = 1, op_type = 4).
fn ops(bytes: &[u8]) -> Res<BTreeMap<String, usize>> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct ModelView {
        #[prost(message, optional, tag = "7")]
        graph: Option<GraphView>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct GraphView {
        #[prost(message, repeated, tag = "1")]
        node: Vec<NodeView>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct NodeView {
        #[prost(string, tag = "4")]
        op_type: String,
    }
    let m = ModelView::decode(bytes)?;
    let mut out = BTreeMap::new();
    for n in m.graph.map(|g| g.node).unwrap_or_default() {
        *out.entry(n.op_type).or_insert(0) += 1;
    }
    Ok(out)
}

/// A forecast function over prepared inputs.
type RunFn<'a> = Box<dyn FnMut(&OnnxInputs) -> Res<Vec<f32>> + 'a>;

/// One engine: a name and a forecast function over prepared inputs.
struct Engine<'a> {
    name: &'static str,
    /// Time to load the file and prepare it to run.
    load: Duration,
    run: RunFn<'a>,
}

fn candle_engine<'a>(model: &'a Model, windows: &'a [(SeriesInput<'a>, usize)]) -> Engine<'a> {
    Engine {
        name: "candle (Model::forecast_rows)",
        load: Duration::ZERO,
        // The windows, not the tensors: this is the path without ONNX.
        run: Box::new(move |_| Ok(model.forecast_rows(windows)?)),
    }
}

fn tract_engine(bytes: &[u8]) -> Res<Engine<'static>> {
    let t0 = Instant::now();
    let m = OnnxModel::from_bytes(Path::new("bundled.onnx"), bytes)?;
    Ok(Engine {
        name: "tract (OnnxModel)",
        load: t0.elapsed(),
        run: Box::new(move |x| Ok(m.run(x)?.flatten_all()?.to_vec1::<f32>()?)),
    })
}

/// The onnxruntime library of the Python wheel, if there is one.
#[cfg(feature = "bench-ort")]
fn ort_dylib(repo: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return Some(PathBuf::from(p));
    }
    let lib = repo.join(".venv/lib");
    for py in std::fs::read_dir(lib).ok()?.flatten() {
        let capi = py.path().join("site-packages/onnxruntime/capi");
        for f in std::fs::read_dir(capi).ok()?.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.starts_with("libonnxruntime.so") {
                return Some(f.path());
            }
        }
    }
    None
}

#[cfg(feature = "bench-ort")]
fn ort_engine<'a>(bytes: &[u8], env: &'a ort::environment::Environment) -> Res<Engine<'a>> {
    use ort::session::Session;
    use ort::value::{DynValue, Tensor as OrtTensor};
    let t0 = Instant::now();
    let mut session = Session::builder(env)?.commit_from_memory(bytes)?;
    Ok(Engine {
        name: "onnxruntime (ort)",
        load: t0.elapsed(),
        run: Box::new(move |x| {
            let mut inputs: Vec<(String, DynValue)> = Vec::new();
            for (name, t) in &x.tensors {
                let dims: Vec<i64> = t.dims().iter().map(|&d| d as i64).collect();
                let flat = t.flatten_all()?;
                let v: DynValue = match t.dtype() {
                    DType::F32 => OrtTensor::from_array((dims, flat.to_vec1::<f32>()?))?.into_dyn(),
                    DType::I64 => OrtTensor::from_array((dims, flat.to_vec1::<i64>()?))?.into_dyn(),
                    d => return Err(format!("unexpected input dtype {d:?}").into()),
                };
                inputs.push((name.clone(), v));
            }
            let out = session.run(inputs)?;
            let (_, data) = out[0].try_extract_tensor::<f32>()?;
            Ok(data.to_vec())
        }),
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Res<()> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model = Model::load(&repo.join("models/default/1"))?;
    let bytes = shardcast_onnx::to_bytes(&model)?;
    let ops = ops(&bytes)?;
    println!(
        "bundled model: {:?} encoder, hidden {}, window {}, {} nodes, {:.0} KiB",
        model.config().cell,
        model.config().hidden_size,
        model.window(),
        ops.values().sum::<usize>(),
        bytes.len() as f64 / 1024.0
    );
    let list: Vec<String> = ops.iter().map(|(k, v)| format!("{k}×{v}")).collect();
    println!("operators: {}", list.join(" "));

    // Windows of the model's own series (known rows) and an unknown one.
    let start = 1_714_000_000_000 - 1_714_000_000_000 % model.step_ms();
    let per_day = (86_400_000 / model.step_ms()) as usize;
    let grids: Vec<(usize, usize, Vec<f32>)> = model
        .series()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (
                model.series_row(&s.name),
                model.shard_type_row(&s.shard_type),
                daily(2600, per_day, s.mean, s.deviation, i as u64),
            )
        })
        .collect();
    let events = vec![0f32; 2600 + model.config().horizon];
    let mut windows: Vec<(SeriesInput<'_>, usize)> = Vec::new();
    for k in 0..64 {
        let (series, shard_type, values) = &grids[k % grids.len()];
        windows.push((
            SeriesInput {
                series: *series,
                shard_type: *shard_type,
                start,
                step: model.step_ms(),
                values,
                events: Some(&events),
            },
            values.len() - 7 * (k / grids.len()),
        ));
    }

    // onnxruntime allows one environment per process.
    #[cfg(feature = "bench-ort")]
    let ort_env = match ort_dylib(&repo) {
        Some(p) => Some(ort::init_from(p)?.build()?),
        None => None,
    };
    let contract = shardcast_onnx::Contract::of(&model);
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    println!();
    println!("| batch | engine | load ms | median ms / call | × candle | max rel. |Δ| vs candle |");
    println!("|---|---|---|---|---|---|");
    for batch in [1usize, 64] {
        let w = &windows[..batch];
        let want = model.forecast_rows(w)?;
        let inputs = contract.inputs(w)?;
        let mut engines = vec![candle_engine(&model, w), tract_engine(&bytes)?];
        #[cfg(feature = "bench-ort")]
        match &ort_env {
            Some(env) => engines.push(ort_engine(&bytes, env)?),
            None => println!("(no libonnxruntime.so found: set ORT_DYLIB_PATH)"),
        }
        let mut diffs = Vec::new();
        for e in &mut engines {
            let got = (e.run)(&inputs)?;
            assert_eq!(got.len(), want.len(), "{}", e.name);
            let d = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
                .fold(0f32, f32::max);
            diffs.push(d);
        }
        // Calls per timing sample: about the same work at both batch sizes.
        let iters = if batch == 1 { 20 } else { 2 };
        let mut times: Vec<Vec<Duration>> = vec![Vec::new(); engines.len()];
        for _ in 0..rounds {
            for (e, t) in engines.iter_mut().zip(&mut times) {
                let t0 = Instant::now();
                for _ in 0..iters {
                    std::hint::black_box((e.run)(&inputs)?);
                }
                t.push(t0.elapsed() / iters);
            }
        }
        let base = median(times[0].clone());
        for ((e, t), d) in engines.iter().zip(times).zip(diffs) {
            let m = median(t);
            println!(
                "| {batch} | {} | {:.1} | {:.3} | {:.2} | {d:.1e} |",
                e.name,
                e.load.as_secs_f64() * 1e3,
                m.as_secs_f64() * 1e3,
                m.as_secs_f64() / base.as_secs_f64()
            );
        }
    }
    Ok(())
}
