//! Writing a [`Model`] as an ONNX graph: the window normalisation, lag
//! gathering, calendar features, every ensemble member's encoder and head,
//! the ensemble mean, calibration and de-normalisation, all in standard
//! opset-17 operators.
//!
//! The arithmetic follows [`Model::forecast_rows`] operation by operation (the
//! window statistics in float64, as the Rust code accumulates them), so the
//! two agree to float32 rounding.

use std::path::{Path, PathBuf};

use prost::Message;

use crate::contract::{
    self, Contract, EVENTS, HISTORY_LEN, METADATA_KEY, ORIGIN_TS, QUANTILES, SERIES_ID,
    SERIES_SCALE, SHARD_TYPE_ID, VALUES,
};
use crate::error::{Error, Result};
use crate::proto::attribute_proto::AttributeType;
use crate::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto, tensor_shape_proto, type_proto,
};
use shardcast_model::forecaster::{
    CellKind, MIN_GAP, Mixer, Model, Reversion, SHOCK, baseline_weights,
};

/// The opset of the default domain the exported graph declares.
pub const OPSET: i64 = 17;
/// ONNX IR version matching [`OPSET`].
const IR_VERSION: i64 = 8;

/// The `TensorProto.DataType` values the graph uses.
mod data_type {
    use crate::proto::tensor_proto::DataType;

    pub(super) const FLOAT: i32 = DataType::Float as i32;
    pub(super) const DOUBLE: i32 = DataType::Double as i32;
    pub(super) const INT64: i32 = DataType::Int64 as i32;
}

const DAY_MS: i64 = 86_400_000;
/// Normalised inputs are clipped to this magnitude (as in `features`).
const INPUT_CLIP: f32 = 10.0;

/// The ONNX file of `model`, as bytes.
pub fn to_bytes(model: &Model) -> Result<Vec<u8>> {
    Ok(model_proto(model)?.encode_to_vec())
}

/// Writes `model` as an ONNX file at `path` and its input contract as JSON
/// beside it (`<path>.json`). Each file is written aside and renamed into
/// place, so a reader sees a whole file or the previous one.
pub fn export(model: &Model, path: &Path) -> Result<()> {
    let bytes = to_bytes(model)?;
    let contract = Contract::of(model);
    let json = serde_json::to_vec_pretty(&contract).map_err(|e| onnx_err(path, e))?;
    write_atomic(path, &bytes)?;
    write_atomic(&contract_path(path), &json)
}

/// Where [`export`] writes the contract of the ONNX file at `path`.
pub fn contract_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".json");
    path.with_file_name(name)
}

fn onnx_err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Onnx {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    shardcast_fs::write_bytes(path, bytes).map_err(|e| onnx_err(path, e))
}

fn model_proto(model: &Model) -> Result<ModelProto> {
    let contract = Contract::of(model);
    let mut g = Graph::default();
    let out = build(model, &contract, &mut g)?;
    debug_assert_eq!(out, QUANTILES);
    let input = contract.inputs.iter().map(value_info).collect::<Vec<_>>();
    let output = contract.outputs.iter().map(value_info).collect();
    let meta = serde_json::to_string(&contract).map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        producer_name: Some("shardcast".to_owned()),
        producer_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
        domain: Some("shardcast".to_owned()),
        model_version: Some(1),
        doc_string: Some(format!(
            "shardcast demand forecaster ({:?} encoder, {} layer(s), {} member(s)): \
             quantiles [batch, {}, {}] in the series' units",
            model.config().cell,
            model.config().num_layers,
            model.config().members,
            contract.horizon,
            contract.quantiles.len()
        )),
        graph: Some(GraphProto {
            node: g.nodes,
            name: Some("shardcast_forecaster".to_owned()),
            initializer: g.inits,
            input,
            output,
            ..GraphProto::default()
        }),
        metadata_props: vec![StringStringEntryProto {
            key: Some(METADATA_KEY.to_owned()),
            value: Some(meta),
        }],
        ..ModelProto::default()
    })
}

fn value_info(spec: &contract::TensorSpec) -> ValueInfoProto {
    let elem_type = match spec.dtype.as_str() {
        "int64" => data_type::INT64,
        _ => data_type::FLOAT,
    };
    let dim = spec
        .shape
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                contract::Dim::Fixed(n) => {
                    tensor_shape_proto::dimension::Value::DimValue(*n as i64)
                }
                contract::Dim::Named(s) => {
                    tensor_shape_proto::dimension::Value::DimParam(s.clone())
                }
            }),
            denotation: None,
        })
        .collect();
    ValueInfoProto {
        name: Some(spec.name.clone()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem_type),
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: None,
        }),
        doc_string: Some(spec.description.clone()),
        ..ValueInfoProto::default()
    }
}

/// Nodes and initializers under construction.
#[derive(Default)]
struct Graph {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
}

fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_owned()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(i),
        ..AttributeProto::default()
    }
}

fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_owned()),
        r#type: Some(AttributeType::Ints as i32),
        ints: ints.to_vec(),
        ..AttributeProto::default()
    }
}

fn attr_string(name: &str, s: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_owned()),
        r#type: Some(AttributeType::String as i32),
        s: Some(s.as_bytes().to_vec()),
        ..AttributeProto::default()
    }
}

impl Graph {
    /// Adds a node with one output named `out`; returns `out`.
    fn op(&mut self, op: &str, out: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.op_n(op, &[out], inputs, attrs);
        out.to_owned()
    }

    /// Adds a node with several outputs (`""` for an omitted optional one).
    fn op_n(&mut self, op: &str, outs: &[&str], inputs: &[&str], attrs: Vec<AttributeProto>) {
        let name = outs.iter().find(|o| !o.is_empty()).copied().unwrap_or(op);
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: outs.iter().map(|s| (*s).to_owned()).collect(),
            name: Some(format!("{op}:{name}")),
            op_type: Some(op.to_owned()),
            ..NodeProto::default()
        });
        self.nodes.last_mut().expect("just pushed").attribute = attrs;
    }

    fn init(&mut self, name: &str, dims: &[usize], data_type: i32, raw: Vec<u8>) -> String {
        self.inits.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(data_type),
            name: Some(name.to_owned()),
            raw_data: Some(raw),
            ..TensorProto::default()
        });
        name.to_owned()
    }

    fn f32s(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        debug_assert_eq!(dims.iter().product::<usize>(), data.len());
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.init(name, dims, data_type::FLOAT, raw)
    }

    fn f64s(&mut self, name: &str, dims: &[usize], data: &[f64]) -> String {
        debug_assert_eq!(dims.iter().product::<usize>(), data.len());
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.init(name, dims, data_type::DOUBLE, raw)
    }

    fn i64s(&mut self, name: &str, dims: &[usize], data: &[i64]) -> String {
        debug_assert_eq!(dims.iter().product::<usize>(), data.len());
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.init(name, dims, data_type::INT64, raw)
    }

    /// A model weight as an initializer, optionally transposed (2-D only).
    fn weight(&mut self, model: &Model, name: &str, transpose: bool) -> Result<String> {
        let mut t = model.weight(name)?;
        if transpose {
            t = t.t()?.contiguous()?;
        }
        let dims = t.dims().to_vec();
        let data = t.flatten_all()?.to_vec1::<f32>()?;
        Ok(self.f32s(name, &dims, &data))
    }

    fn cast(&mut self, out: &str, x: &str, to: i32) -> String {
        self.op("Cast", out, &[x], vec![attr_int("to", i64::from(to))])
    }

    fn unsqueeze(&mut self, out: &str, x: &str, axes: &str) -> String {
        self.op("Unsqueeze", out, &[x, axes], vec![])
    }

    /// `x[..., start:end]` along `axis` (constant bounds).
    fn slice(&mut self, out: &str, x: &str, axis: i64, start: usize, end: usize) -> String {
        let s = self.i64s(&format!("{out}.starts"), &[1], &[start as i64]);
        let e = self.i64s(&format!("{out}.ends"), &[1], &[end as i64]);
        let a = self.i64s(&format!("{out}.axes"), &[1], &[axis]);
        self.op("Slice", out, &[x, &s, &e, &a], vec![])
    }
}

/// Reorders the gate blocks of a `[gates * h, …]` (or `[gates * h]`) tensor
/// from PyTorch's order to ONNX's: block `k` of the result is block
/// `order[k]` of `data`.
fn reorder_gates(data: &[f32], h: usize, order: &[usize]) -> Vec<f32> {
    let block = data.len() / order.len();
    debug_assert_eq!(block % h, 0);
    order
        .iter()
        .flat_map(|&k| data[k * block..(k + 1) * block].iter().copied())
        .collect()
}

/// Builds the whole graph; returns the name of the output.
fn build(model: &Model, contract: &Contract, g: &mut Graph) -> Result<String> {
    let cfg = model.config();
    let (l, c, h) = (contract.window, contract.context, contract.horizon);
    let q = cfg.quantiles.len();
    let mid = cfg.median_index();
    let nl = cfg.lags.len();

    let ax0 = g.i64s("axes0", &[1], &[0]);
    let ax1 = g.i64s("axes1", &[1], &[1]);
    let ax2 = g.i64s("axes2", &[1], &[2]);

    // Fill the history: window index w holds point w - first; points before
    // the first observed one read the same phase of the earliest observed
    // season, or the first value (as `features::push_window`).
    let n = g.unsqueeze("hist", HISTORY_LEN, &ax1); // [B, 1]
    let l_c = g.i64s("L", &[], &[l as i64]);
    let first = g.op("Sub", "first", &[&l_c, &n], vec![]);
    let pos_data: Vec<i64> = (0..l as i64).collect();
    let pos = g.i64s("positions", &[l], &pos_data);
    let rel = g.op("Sub", "rel", &[&pos, &first], vec![]); // [B, L]
    let back = if cfg.season > 0 {
        let p = cfg.season as i64;
        let p_c = g.i64s("season", &[], &[p]);
        let pm1 = g.i64s("season_minus_1", &[], &[p - 1]);
        let neg = g.op("Neg", "rel_neg", &[&rel], vec![]);
        let num = g.op("Add", "fill_num", &[&neg, &pm1], vec![]);
        let seasons = g.op("Div", "fill_seasons", &[&num, &p_c], vec![]);
        let shift = g.op("Mul", "fill_shift", &[&seasons, &p_c], vec![]);
        let j = g.op("Add", "fill_phase", &[&rel, &shift], vec![]);
        let ok = g.op("Less", "fill_phase_ok", &[&j, &n], vec![]);
        let at = g.op("Add", "fill_at", &[&first, &j], vec![]);
        g.op("Where", "fill_src", &[&ok, &at, &first], vec![])
    } else {
        first.clone()
    };
    let zero_i = g.i64s("zero_i64", &[], &[0]);
    let observed = g.op("GreaterOrEqual", "observed", &[&rel, &zero_i], vec![]);
    let src = g.op("Where", "src", &[&observed, &pos, &back], vec![]);
    let x = g.op(
        "GatherElements",
        "x",
        &[VALUES, &src],
        vec![attr_int("axis", 1)],
    );

    // Window statistics over the last min(norm_len, observed) points, in f64.
    let lo_c = g.i64s("norm_start", &[], &[(l - contract.norm_len) as i64]);
    let lo = g.op("Max", "norm_lo", &[&first, &lo_c], vec![]);
    let mask = g.op("GreaterOrEqual", "norm_mask", &[&pos, &lo], vec![]);
    let maskd = g.cast("norm_mask_f64", &mask, data_type::DOUBLE);
    let cnt = g.op(
        "ReduceSum",
        "norm_count",
        &[&maskd, &ax1],
        vec![attr_int("keepdims", 1)],
    );
    let zero_d = g.f64s("zero_f64", &[], &[0.0]);
    let xd = g.cast("x_f64", &x, data_type::DOUBLE);
    let xw = g.op("Where", "x_norm", &[&mask, &xd, &zero_d], vec![]);
    let sum = g.op(
        "ReduceSum",
        "norm_sum",
        &[&xw, &ax1],
        vec![attr_int("keepdims", 1)],
    );
    let mean_d = g.op("Div", "loc_f64", &[&sum, &cnt], vec![]);
    let loc = g.cast("loc", &mean_d, data_type::FLOAT); // [B, 1]
    let d = g.op("Sub", "x_centred", &[&x, &loc], vec![]);
    let ad = g.op("Abs", "x_abs_dev", &[&d], vec![]);
    let add = g.cast("x_abs_dev_f64", &ad, data_type::DOUBLE);
    let adw = g.op("Where", "x_abs_dev_norm", &[&mask, &add, &zero_d], vec![]);
    let dsum = g.op(
        "ReduceSum",
        "norm_dev_sum",
        &[&adw, &ax1],
        vec![attr_int("keepdims", 1)],
    );
    let dev_d = g.op("Div", "dev_f64", &[&dsum, &cnt], vec![]);
    let dev = g.cast("dev", &dev_d, data_type::FLOAT);

    // Scale: max(dev, 0.1 * training deviation), floored above zero.
    let tmean = g.slice("train_mean", SERIES_SCALE, 1, 0, 1);
    let tdev = g.slice("train_dev", SERIES_SCALE, 1, 1, 2);
    let tenth = g.f32s("tenth", &[], &[0.1]);
    let one = g.f32s("one", &[], &[1.0]);
    let tiny = g.f32s("tiny", &[], &[1e-6]);
    let tdev10 = g.op("Mul", "train_dev_tenth", &[&tdev, &tenth], vec![]);
    let s1 = g.op("Max", "scale_raw", &[&dev, &tdev10], vec![]);
    let level = g.op("Abs", "train_level", &[&tmean], vec![]);
    let level = g.op("Max", "train_level_1", &[&level, &one], vec![]);
    let floor = g.op("Mul", "scale_floor", &[&level, &tiny], vec![]);
    let scale = g.op("Max", "scale", &[&s1, &floor], vec![]); // [B, 1]

    let lo_clip = g.f32s("clip_lo", &[], &[-INPUT_CLIP]);
    let hi_clip = g.f32s("clip_hi", &[], &[INPUT_CLIP]);
    let zr = g.op("Div", "z_raw", &[&d, &scale], vec![]);
    let z = g.op("Clip", "z", &[&zr, &lo_clip, &hi_clip], vec![]); // [B, L]
    let ratio = g.op("Div", "scale_ratio", &[&scale, &tdev], vec![]);
    let lratio = g.op("Log", "scale_ratio_log", &[&ratio], vec![]);
    let stat = g.op("Clip", "static", &[&lratio, &lo_clip, &hi_clip], vec![]); // [B, 1]

    // Context step j is point origin - C + j, window index L - C + j.
    let mut ctx_idx = Vec::with_capacity(c * (1 + nl));
    for j in 0..c {
        let w = l - c + j;
        ctx_idx.push(w as i64);
        ctx_idx.extend(cfg.lags.iter().map(|&lag| (w - lag) as i64));
    }
    let ctx_idx = g.i64s("context_index", &[c, 1 + nl], &ctx_idx);
    let zc = g.op(
        "Gather",
        "context_values",
        &[&z, &ctx_idx],
        vec![attr_int("axis", 1)],
    );
    let mut ctx_parts = vec![zc];
    // Horizon step k is point origin + k, window index L + k.
    let mut fut_parts = Vec::new();
    if nl > 0 {
        let idx: Vec<i64> = (0..h)
            .flat_map(|k| cfg.lags.iter().map(move |&lag| (l + k - lag) as i64))
            .collect();
        let idx = g.i64s("horizon_lag_index", &[h, nl], &idx);
        fut_parts.push(g.op(
            "Gather",
            "horizon_lags",
            &[&z, &idx],
            vec![attr_int("axis", 1)],
        ));
    }
    if cfg.calendar {
        let offsets: Vec<i64> = (0..c + h)
            .map(|k| (k as i64 - c as i64) * model.step_ms())
            .collect();
        let offsets = g.i64s("step_offsets", &[c + h], &offsets);
        let o = g.unsqueeze("origin_ts_col", ORIGIN_TS, &ax1);
        let ts = g.op("Add", "ts", &[&o, &offsets], vec![]); // [B, C+H]
        let day = g.i64s("day_ms", &[], &[DAY_MS]);
        let three = g.i64s("three", &[], &[3]);
        let seven = g.i64s("seven", &[], &[7]);
        let rem = g.op("Mod", "ts_in_day", &[&ts, &day], vec![attr_int("fmod", 0)]);
        let whole = g.op("Sub", "ts_day_start", &[&ts, &rem], vec![]);
        let days = g.op("Div", "days", &[&whole, &day], vec![]);
        let shifted = g.op("Add", "days_from_monday", &[&days, &three], vec![]);
        let dow_i = g.op(
            "Mod",
            "day_of_week",
            &[&shifted, &seven],
            vec![attr_int("fmod", 0)],
        );
        let day_d = g.f64s("day_ms_f64", &[], &[DAY_MS as f64]);
        let seven_d = g.f64s("seven_f64", &[], &[7.0]);
        let tau = g.f64s("tau", &[], &[std::f64::consts::TAU]);
        let rem_d = g.cast("ts_in_day_f64", &rem, data_type::DOUBLE);
        let tod = g.op("Div", "time_of_day", &[&rem_d, &day_d], vec![]);
        let dow_d = g.cast("day_of_week_f64", &dow_i, data_type::DOUBLE);
        let dow_t = g.op("Add", "week_days", &[&dow_d, &tod], vec![]);
        let dow = g.op("Div", "time_of_week", &[&dow_t, &seven_d], vec![]);
        let a_day = g.op("Mul", "angle_day", &[&tau, &tod], vec![]);
        let a_week = g.op("Mul", "angle_week", &[&tau, &dow], vec![]);
        let mut feats = Vec::new();
        for (op, a, name) in [
            ("Sin", &a_day, "tod_sin"),
            ("Cos", &a_day, "tod_cos"),
            ("Sin", &a_week, "dow_sin"),
            ("Cos", &a_week, "dow_cos"),
        ] {
            let v = g.op(op, name, &[a], vec![]);
            feats.push(g.unsqueeze(&format!("{name}_col"), &v, &ax2));
        }
        let refs: Vec<&str> = feats
            .iter()
            .take(cfg.calendar_size())
            .map(String::as_str)
            .collect();
        let cal_d = g.op("Concat", "calendar_f64", &refs, vec![attr_int("axis", 2)]);
        let cal = g.cast("calendar", &cal_d, data_type::FLOAT); // [B, C+H, 4 or 2]
        ctx_parts.push(g.slice("calendar_context", &cal, 1, 0, c));
        fut_parts.push(g.slice("calendar_horizon", &cal, 1, c, c + h));
    }
    if cfg.events {
        let ev = g.unsqueeze("events_col", EVENTS, &ax2); // [B, C+H, 1]
        ctx_parts.push(g.slice("events_context", &ev, 1, 0, c));
        fut_parts.push(g.slice("events_horizon", &ev, 1, c, c + h));
    }
    let last_idx = g.i64s("last_index", &[h, 1], &vec![(l - 1) as i64; h]);
    fut_parts.push(g.op(
        "Gather",
        "last_value",
        &[&z, &last_idx],
        vec![attr_int("axis", 1)],
    ));
    if !cfg.baselines.is_empty() {
        // Every baseline is linear in the normalised window: one product.
        let nb = cfg.baselines.len();
        let w = baseline_weights(&cfg.baselines, cfg.season, h, l);
        let w = g.f32s("baseline_weights", &[l, h * nb], &w);
        let flat = g.op("MatMul", "baselines_flat", &[&z, &w], vec![]); // [B, H*NB]
        let shape = g.i64s("baselines_shape", &[3], &[-1, h as i64, nb as i64]);
        fut_parts.push(g.op("Reshape", "baselines", &[&flat, &shape], vec![]));
    }
    let refs: Vec<&str> = ctx_parts.iter().map(String::as_str).collect();
    let ctx = g.op("Concat", "context", &refs, vec![attr_int("axis", 2)]); // [B, C, I]
    let refs: Vec<&str> = fut_parts.iter().map(String::as_str).collect();
    let fut = g.op("Concat", "future", &refs, vec![attr_int("axis", 2)]); // [B, H, F]
    let seq = g.op(
        "Transpose",
        "context_seq",
        &[&ctx],
        vec![attr_ints("perm", &[1, 0, 2])],
    );

    let mut acc: Option<String> = None;
    for k in 0..cfg.members {
        let p = format!("m{k}");
        let hidden = encoder(model, g, &p, &seq, &ax0, &ax1)?; // [B, hidden]
        let se_w = g.weight(model, &format!("{p}.series.weight"), false)?;
        let te_w = g.weight(model, &format!("{p}.type.weight"), false)?;
        let se = g.op(
            "Gather",
            &format!("{p}/series_emb"),
            &[&se_w, SERIES_ID],
            vec![],
        );
        let te = g.op(
            "Gather",
            &format!("{p}/type_emb"),
            &[&te_w, SHARD_TYPE_ID],
            vec![],
        );
        let whole = g.op(
            "Concat",
            &format!("{p}/static_features"),
            &[&hidden, &stat, &se, &te],
            vec![attr_int("axis", 1)],
        );
        let sw = g.weight(model, &format!("{p}.head.static.weight"), false)?;
        let sb = g.weight(model, &format!("{p}.head.static.bias"), false)?;
        let a = g.op(
            "Gemm",
            &format!("{p}/static_hidden"),
            &[&whole, &sw, &sb],
            vec![attr_int("transB", 1)],
        );
        let a3 = g.unsqueeze(&format!("{p}/static_hidden_row"), &a, &ax1); // [B, 1, d]
        let fw = g.weight(model, &format!("{p}.head.future.weight"), true)?;
        let f = g.op(
            "MatMul",
            &format!("{p}/future_hidden"),
            &[&fut, &fw],
            vec![],
        );
        let sum = g.op("Add", &format!("{p}/hidden_sum"), &[&f, &a3], vec![]);
        let bias = g.weight(model, &format!("{p}.head.step_bias"), false)?;
        let pre = g.op("Add", &format!("{p}/hidden_pre"), &[&sum, &bias], vec![]);
        let u = g.op("Relu", &format!("{p}/hidden"), &[&pre], vec![]);
        let ow = g.weight(model, &format!("{p}.head.out.weight"), true)?;
        let ob = g.weight(model, &format!("{p}.head.out.bias"), false)?;
        let raw0 = g.op("MatMul", &format!("{p}/raw_mm"), &[&u, &ow], vec![]);
        let raw = g.op("Add", &format!("{p}/raw"), &[&raw0, &ob], vec![]); // [B, H, Q]
        let kw = g.weight(model, &format!("{p}.head.skip.weight"), true)?;
        let skip = g.op("MatMul", &format!("{p}/skip"), &[&fut, &kw], vec![]);
        let raw_mid = g.slice(&format!("{p}/raw_median"), &raw, 2, mid, mid + 1);
        let med = g.op("Add", &format!("{p}/median"), &[&raw_mid, &skip], vec![]);
        let sp = g.op("Softplus", &format!("{p}/gaps_raw"), &[&raw], vec![]);
        let mut gm = vec![0f32; q * q];
        for r in 0..q {
            for col in 0..q {
                if mid < r && r <= col {
                    gm[r * q + col] = 1.0;
                } else if col <= r && r < mid {
                    gm[r * q + col] = -1.0;
                }
            }
        }
        let gmat = g.f32s(&format!("{p}.gap_matrix"), &[q, q], &gm);
        let gaps = g.op("MatMul", &format!("{p}/gaps"), &[&sp, &gmat], vec![]);
        let out = g.op("Add", &format!("{p}/quantiles"), &[&gaps, &med], vec![]);
        acc = Some(match acc {
            None => out,
            Some(prev) => g.op("Add", &format!("{p}/ensemble_sum"), &[&prev, &out], vec![]),
        });
    }
    let acc = acc.ok_or_else(|| Error::Invalid("the model has no ensemble members".into()))?;
    let k_c = g.f32s("members", &[], &[cfg.members as f32]);
    let mut zk = g.op("Div", "ensemble_mean", &[&acc, &k_c], vec![]);
    if let Some(hy) = model.hybrid() {
        // The statistical half: its forecast (linear in the normalised
        // window: one product) plus its error quantiles, blended level by
        // level (as `Hybrid::blend`).
        let w = hy.statistical.weights(cfg.season, h, l);
        let w = g.f32s("hybrid_weights", &[l, h], &w);
        let flat = g.op("MatMul", "hybrid_forecast", &[&z, &w], vec![]); // [B, H]
        let base = g.unsqueeze("hybrid_baseline", &flat, &ax2); // [B, H, 1]
        let errors = g.f32s("hybrid_errors", &[h, q], &hy.errors);
        let stat = g.op("Add", "hybrid_statistical", &[&base, &errors], vec![]);
        let wn = g.f32s("hybrid_weight", &[], &[hy.weight]);
        let ws = g.f32s("hybrid_statistical_weight", &[], &[1.0 - hy.weight]);
        let a = g.op("Mul", "hybrid_network_part", &[&zk, &wn], vec![]);
        let b = g.op("Mul", "hybrid_statistical_part", &[&stat, &ws], vec![]);
        zk = g.op("Add", "hybrid_quantiles", &[&a, &b], vec![]);
    }
    let medk = g.slice("ensemble_median", &zk, 2, mid, mid + 1);
    let diff = g.op("Sub", "spread", &[&zk, &medk], vec![]);
    let cal = model.calibration();
    let factors: Vec<f32> = (0..q)
        .map(|j| if j < mid { cal.lower } else { cal.upper })
        .collect();
    let fac = g.f32s("calibration", &[q], &factors);
    let mut wide = g.op("Mul", "spread_calibrated", &[&fac, &diff], vec![]);
    if let Some(hy) = model.hybrid().filter(|hy| hy.miss_reference > 0.0) {
        // Widening after a miss (as `Hybrid::miss_factor`): the statistical
        // forecast from one horizon before the origin against the last
        // horizon's values, mean absolute error over `miss_reference`.
        let mut w = hy.statistical.weights(cfg.season, h, l - h);
        w.resize(l * h, 0.0);
        let w = g.f32s("miss_weights", &[l, h], &w);
        let past = g.op("MatMul", "miss_forecast", &[&z, &w], vec![]); // [B, H]
        let seen = g.slice("miss_seen", &z, 1, l - h, l);
        let err = g.op("Sub", "miss_error", &[&seen, &past], vec![]);
        let abs = g.op("Abs", "miss_abs", &[&err], vec![]);
        let sum = g.op(
            "ReduceSum",
            "miss_sum",
            &[&abs, &ax1],
            vec![attr_int("keepdims", 1)],
        ); // [B, 1]
        let denom = g.f32s("miss_denominator", &[], &[h as f32 * hy.miss_reference]);
        let ratio = g.op("Div", "miss_ratio", &[&sum, &denom], vec![]);
        let lo = g.f32s("miss_floor", &[], &[1.0]);
        let hi = g.f32s("miss_cap", &[], &[shardcast_model::forecaster::MISS_CAP]);
        let f = g.op("Clip", "miss_factor", &[&ratio, &lo, &hi], vec![]);
        let f3 = g.unsqueeze("miss_factor_3d", &f, &ax2);
        wide = g.op("Mul", "spread_after_miss", &[&wide, &f3], vec![]);
    }
    let mut zq = g.op("Add", "normalised_quantiles", &[&medk, &wide], vec![]);
    if let Some(rev) = model.reversion() {
        zq = reversion(g, model, rev, &zq, &xd, &zr)?;
    }
    let s3 = g.unsqueeze("scale_3d", &scale, &ax2);
    let m3 = g.unsqueeze("loc_3d", &loc, &ax2);
    let scaled = g.op("Mul", "scaled_quantiles", &[&s3, &zq], vec![]);
    Ok(g.op("Add", QUANTILES, &[&m3, &scaled], vec![]))
}

/// The reversion after a shock day (as `Model::forecast_rows` with
/// `reversion::Mixer::mix`): the shock test on the window's values `xd` (`[B, L]`,
/// f64), last week's values from the unclipped normalised window `zr`, and
/// the mixture of the normalised quantiles `zq` with their copy moved there.
fn reversion(
    g: &mut Graph,
    model: &Model,
    rev: &Reversion,
    zq: &str,
    xd: &str,
    zr: &str,
) -> Result<String> {
    let cfg = model.config();
    let (m, h) = (cfg.season, cfg.horizon);
    let l = model.window();
    let q = cfg.quantiles.len();
    let mixer = Mixer::of(cfg)
        .ok_or_else(|| Error::Invalid("reversion needs two quantile levels or more".into()))?;
    let ax1 = g.i64s("shock_axes", &[1], &[1]);
    let ax2 = g.i64s("reversion_axes", &[1], &[2]);
    // A comparison as 0 or 1 (f64), and the product of several.
    let test = |g: &mut Graph, op: &str, name: &str, a: &str, b: &str| {
        let t = g.op(op, name, &[a, b], vec![]);
        g.cast(&format!("{name}_f64"), &t, data_type::DOUBLE)
    };
    let all = |g: &mut Graph, name: &str, parts: &[String]| {
        parts[1..]
            .iter()
            .enumerate()
            .fold(parts[0].clone(), |acc, (i, p)| {
                g.op("Mul", &format!("{name}_{i}"), &[&acc, p], vec![])
            })
    };
    // The means of the last season and of the same season one and two
    // weeks earlier, each positive, and enough history (the conditions that
    // must all hold, with a rise or a fall against both weeks); f64
    // throughout, as `reversion::shocked`.
    let zero = g.f64s("shock_zero", &[], &[0.0]);
    let count = g.f64s("shock_count", &[], &[m as f64]);
    let mut means = Vec::new();
    let mut conditions = Vec::new();
    for weeks in 0..3 {
        let end = l - 7 * weeks * m;
        let part = g.slice(&format!("shock_values_{weeks}"), xd, 1, end - m, end);
        let sum = g.op(
            "ReduceSum",
            &format!("shock_sum_{weeks}"),
            &[&part, &ax1],
            vec![attr_int("keepdims", 1)],
        );
        let mean = g.op(
            "Div",
            &format!("shock_mean_{weeks}"),
            &[&sum, &count],
            vec![],
        );
        conditions.push(test(
            g,
            "Greater",
            &format!("shock_positive_{weeks}"),
            &mean,
            &zero,
        ));
        means.push(mean);
    }
    let need = g.i64s("shock_history", &[], &[Reversion::lookback(m) as i64]);
    let n = g.unsqueeze("shock_history_len", HISTORY_LEN, &ax1);
    conditions.push(test(g, "GreaterOrEqual", "shock_enough", &n, &need));
    let up = g.f64s("shock_up", &[], &[SHOCK]);
    let down = g.f64s("shock_down", &[], &[-SHOCK]);
    let (mut rises, mut falls) = (Vec::new(), Vec::new());
    for weeks in 1..3 {
        let ratio = g.op(
            "Div",
            &format!("shock_ratio_{weeks}"),
            &[&means[0], &means[weeks]],
            vec![],
        );
        let log = g.op("Log", &format!("shock_log_{weeks}"), &[&ratio], vec![]);
        rises.push(test(
            g,
            "Greater",
            &format!("shock_rise_{weeks}"),
            &log,
            &up,
        ));
        falls.push(test(g, "Less", &format!("shock_fall_{weeks}"), &log, &down));
    }
    let rise = all(g, "shock_rise", &rises);
    let fall = all(g, "shock_fall", &falls);
    let either = g.op("Add", "shock_either", &[&rise, &fall], vec![]);
    conditions.push(either);
    let shock = all(g, "shock_f64", &conditions); // [B, 1]: all hold
    let shock = g.cast("shock", &shock, data_type::FLOAT);
    let weight = g.f32s("reversion_weight", &[], &[rev.weight]);
    let p = g.op("Mul", "reversion_p", &[&shock, &weight], vec![]);
    let p = g.unsqueeze("reversion_p_3d", &p, &ax2); // [B, 1, 1]
    // Last week's values at the horizon steps, normalised, unclipped.
    let idx: Vec<i64> = (0..h).map(|k| (l + k - 7 * m) as i64).collect();
    let idx = g.i64s("reversion_index", &[h], &idx);
    let back = g.op(
        "Gather",
        "reversion_back_2d",
        &[zr, &idx],
        vec![attr_int("axis", 1)],
    );
    let back = g.unsqueeze("reversion_back", &back, &ax2); // [B, H, 1]
    let mid = mixer.mid;
    let med = g.slice("reversion_median", zq, 2, mid, mid + 1);
    let shift = g.op("Sub", "reversion_shift", &[&back, &med], vec![]); // [B, H, 1]
    // The knots extended to levels 0 and 1, and their gaps (as
    // `Mixer::extend`).
    let tiny = g.f32s("mix_min_gap", &[], &[MIN_GAP]);
    let gap = |g: &mut Graph, name: &str, a: &str, b: &str| {
        let d = g.op("Sub", &format!("{name}_raw"), &[b, a], vec![]);
        g.op("Max", name, &[&d, &tiny], vec![])
    };
    let k0 = g.slice("mix_k0", zq, 2, 0, 1);
    let k1 = g.slice("mix_k1", zq, 2, 1, 2);
    let kp = g.slice("mix_kp", zq, 2, q - 2, q - 1);
    let kl = g.slice("mix_kl", zq, 2, q - 1, q);
    let g0 = gap(g, "mix_gap_first", &k0, &k1);
    let gl = gap(g, "mix_gap_last", &kp, &kl);
    let below = g.f32s("mix_below_ratio", &[], &[mixer.below]);
    let above = g.f32s("mix_above_ratio", &[], &[mixer.above]);
    let down = g.op("Mul", "mix_down", &[&g0, &below], vec![]);
    let up = g.op("Mul", "mix_up", &[&gl, &above], vec![]);
    let first = g.op("Sub", "mix_first", &[&k0, &down], vec![]);
    let last = g.op("Add", "mix_last", &[&kl, &up], vec![]);
    let knots = g.op(
        "Concat",
        "mix_knots",
        &[&first, zq, &last],
        vec![attr_int("axis", 2)],
    ); // [B, H, Q + 2]
    let lower = g.slice("mix_lower", &knots, 2, 0, q + 1);
    let upper = g.slice("mix_upper", &knots, 2, 1, q + 2);
    let gaps = gap(g, "mix_gaps", &lower, &upper);
    let lower = g.unsqueeze("mix_lower_4d", &lower, &ax2); // [B, H, 1, Q + 1]
    let gaps = g.unsqueeze("mix_gaps_4d", &gaps, &ax2);
    let steps = g.f32s("mix_steps", &[q + 1], &mixer.steps);
    let ax3 = g.i64s("mix_axes3", &[1], &[3]);
    let zero = g.f32s("mix_zero", &[], &[0.0]);
    let one = g.f32s("mix_one", &[], &[1.0]);
    // The knots of both scenarios, and the CDF of the extended row at them
    // unshifted and shifted (as `Mixer::cdf`).
    let moved = g.op("Add", "mix_knots_return", &[&knots, &shift], vec![]);
    let x = g.op(
        "Concat",
        "mix_points",
        &[&knots, &moved],
        vec![attr_int("axis", 2)],
    ); // [B, H, 2Q + 4]
    let x4 = g.unsqueeze("mix_points_4d", &x, &ax3); // [B, H, 2Q + 4, 1]
    let shift4 = g.unsqueeze("mix_shift_4d", &shift, &ax3); // [B, H, 1, 1]
    let lower_b = g.op("Add", "mix_lower_return", &[&lower, &shift4], vec![]);
    let mut cdfs = Vec::new();
    for (name, lo) in [("mix_cdf", &lower), ("mix_cdf_return", &lower_b)] {
        let d = g.op("Sub", &format!("{name}_d"), &[&x4, lo], vec![]);
        let r = g.op("Div", &format!("{name}_r"), &[&d, &gaps], vec![]);
        let c = g.op("Clip", &format!("{name}_c"), &[&r, &zero, &one], vec![]);
        let m = g.op("Mul", &format!("{name}_m"), &[&steps, &c], vec![]);
        cdfs.push(g.op(
            "ReduceSum",
            name,
            &[&m, &ax3],
            vec![attr_int("keepdims", 0)],
        )); // [B, H, 2Q + 4]
    }
    let keep = g.op("Sub", "mix_keep", &[&one, &p], vec![]);
    let a = g.op("Mul", "mix_cdf_keep", &[&keep, &cdfs[0]], vec![]);
    let b = g.op("Mul", "mix_cdf_turn", &[&p, &cdfs[1]], vec![]);
    let c = g.op("Add", "mix_cdf_mixed", &[&a, &b], vec![]);
    // Per level: the highest point below it and the lowest at or above,
    // with their CDFs (as `Mixer::mix`).
    let c4 = g.unsqueeze("mix_cdf_4d", &c, &ax2); // [B, H, 1, 2Q + 4]
    let xs4 = g.unsqueeze("mix_points_row", &x, &ax2);
    let taus = g.f32s("mix_levels", &[q, 1], &mixer.taus);
    let below = g.op("Less", "mix_below", &[&c4, &taus], vec![]); // [B, H, Q, 2Q + 4]
    let low = g.f32s("mix_minus_inf", &[], &[f32::NEG_INFINITY]);
    let high = g.f32s("mix_plus_inf", &[], &[f32::INFINITY]);
    let mut ends = Vec::new();
    for (name, v) in [("mix_x", &xs4), ("mix_c", &c4)] {
        let a = g.op(
            "Where",
            &format!("{name}_below"),
            &[&below, v, &low],
            vec![],
        );
        let b = g.op(
            "Where",
            &format!("{name}_above"),
            &[&below, &high, v],
            vec![],
        );
        let attrs = || vec![attr_ints("axes", &[3]), attr_int("keepdims", 0)];
        ends.push(g.op("ReduceMax", &format!("{name}_a"), &[&a], attrs()));
        ends.push(g.op("ReduceMin", &format!("{name}_b"), &[&b], attrs()));
    }
    let (xa, xb, ca, cb) = (&ends[0], &ends[1], &ends[2], &ends[3]); // [B, H, Q]
    let levels = g.f32s("mix_levels_row", &[q], &mixer.taus);
    let rise = g.op("Sub", "mix_rise", &[&levels, ca], vec![]);
    let span = g.op("Sub", "mix_span", &[cb, ca], vec![]);
    let frac = g.op("Div", "mix_frac", &[&rise, &span], vec![]);
    let width = g.op("Sub", "mix_width", &[xb, xa], vec![]);
    let step = g.op("Mul", "mix_step", &[&frac, &width], vec![]);
    let mixed = g.op("Add", "mixed_quantiles", &[xa, &step], vec![]);
    let on = g.op("Greater", "reversion_on", &[&p, &zero], vec![]);
    Ok(g.op("Where", "reverted_quantiles", &[&on, &mixed, zq], vec![]))
}

/// One member's recurrent encoder over `seq` `[C, B, I]`; returns the last
/// layer's final hidden state `[B, hidden]`.
fn encoder(
    model: &Model,
    g: &mut Graph,
    p: &str,
    seq: &str,
    ax0: &str,
    ax1: &str,
) -> Result<String> {
    let cfg = model.config();
    let hs = cfg.hidden_size;
    // ONNX gate orders: GRU z, r, h (PyTorch r, z, n); LSTM i, o, f, c
    // (PyTorch i, f, g, o).
    let (op, order): (&str, &[usize]) = match cfg.cell {
        CellKind::Gru => ("GRU", &[1, 0, 2]),
        CellKind::Lstm => ("LSTM", &[0, 3, 1, 2]),
    };
    // The initial state, zeros [1, B, hidden], given explicitly: engines
    // such as tract need the batch size of an omitted one when they
    // prepare the graph, which an input's batch leaves open. Taken from
    // `history_len` (a checked integer, so always finite) times zero
    // weights.
    let axes = g.i64s(&format!("{p}.rnn_state_axes"), &[2], &[0, 2]);
    let n = g.unsqueeze(&format!("{p}/rnn_state_count"), HISTORY_LEN, &axes); // [1, B, 1]
    let n = g.cast(&format!("{p}/rnn_state_count_f32"), &n, data_type::FLOAT);
    let zeros = g.f32s(&format!("{p}.rnn_state_zeros"), &[1, hs], &vec![0.0; hs]);
    let h0 = g.op("MatMul", &format!("{p}/rnn_state"), &[&n, &zeros], vec![]); // [1, B, hidden]
    let mut x = seq.to_owned();
    let mut last = String::new();
    for layer in 0..cfg.num_layers {
        let get = |name: &str| -> Result<(Vec<usize>, Vec<f32>)> {
            let t = model.weight(&format!("{p}.rnn.{name}_l{layer}"))?;
            Ok((t.dims().to_vec(), t.flatten_all()?.to_vec1::<f32>()?))
        };
        let (wd, w) = get("weight_ih")?;
        let (rd, r) = get("weight_hh")?;
        let (_, bi) = get("bias_ih")?;
        let (_, bh) = get("bias_hh")?;
        let w = g.f32s(
            &format!("{p}.{op}.W_l{layer}"),
            &[1, wd[0], wd[1]],
            &reorder_gates(&w, hs, order),
        );
        let r = g.f32s(
            &format!("{p}.{op}.R_l{layer}"),
            &[1, rd[0], rd[1]],
            &reorder_gates(&r, hs, order),
        );
        let mut b = reorder_gates(&bi, hs, order);
        b.extend(reorder_gates(&bh, hs, order));
        let b = g.f32s(&format!("{p}.{op}.B_l{layer}"), &[1, b.len()], &b);
        let mut attrs = vec![
            attr_int("hidden_size", hs as i64),
            attr_string("direction", "forward"),
        ];
        if cfg.cell == CellKind::Gru {
            // PyTorch applies the reset gate after the recurrent matmul.
            attrs.push(attr_int("linear_before_reset", 1));
        }
        let top = layer + 1 == cfg.num_layers;
        let y = format!("{p}/rnn_y_l{layer}");
        let yh = format!("{p}/rnn_h_l{layer}");
        // X, W, R, B, sequence_lens (none), initial_h (, initial_c).
        let mut ins: Vec<&str> = vec![&x, &w, &r, &b, "", &h0];
        if cfg.cell == CellKind::Lstm {
            ins.push(&h0);
        }
        if top {
            g.op_n(op, &["", &yh], &ins, attrs);
        } else {
            g.op_n(op, &[&y], &ins, attrs);
            // Y is [C, 1, B, hidden]: drop the direction axis for the next layer.
            x = g.op(
                "Squeeze",
                &format!("{p}/rnn_x_l{}", layer + 1),
                &[&y, ax1],
                vec![],
            );
        }
        last = yh;
    }
    Ok(g.op("Squeeze", &format!("{p}/encoding"), &[&last, ax0], vec![]))
}
