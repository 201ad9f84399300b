//! Loading an exported ONNX file and running it with tract.
//!
//! The file is checked before tract sees it, so that a bad file is refused
//! with the file and the part that is wrong: the protobuf, the contract in
//! its metadata, every initializer's size, every node's domain and operator
//! (against tract's operator table) and that every value is produced before
//! it is read, and that the graph's inputs and output are the contract's.
//! tract then turns the graph into an optimised plan once, with the batch
//! left symbolic, and each [`OnnxModel::run`] executes that plan.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use prost::Message;
use tract_onnx::prelude::{
    Framework, InferenceModelExt, IntoRunnable, IntoTValue, TValue, TVec, TypedRunnableModel,
};

use crate::OnnxInputs;
use crate::contract::{BATCH, Contract, Dim, HISTORY_LEN, METADATA_KEY, SERIES_ID, SHARD_TYPE_ID};
use crate::error::{Error, Result};
use crate::proto::{
    ModelProto, TensorProto, ValueInfoProto, data_type_name, data_type_size,
    tensor_proto::{DataLocation, DataType},
    tensor_shape_proto, type_proto,
};

/// An exported forecaster, loaded and ready to run.
pub struct OnnxModel {
    path: PathBuf,
    contract: Contract,
    inputs: Vec<InputSlot>,
    nodes: usize,
    plan: Arc<TypedRunnableModel>,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("path", &self.path)
            .field("nodes", &self.nodes)
            .field("inputs", &self.inputs.len())
            .finish_non_exhaustive()
    }
}

/// A graph input: its name, element type and dimensions (`None`: the batch).
struct InputSlot {
    name: String,
    dtype: DType,
    dims: Vec<Option<usize>>,
}

fn onnx_err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Onnx {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::F64 => "float64",
        DType::I64 => "int64",
        DType::U8 => "uint8",
        _ => "unsupported",
    }
}

/// Checks that an initializer's data fits its dims (tract would read past
/// a short `raw_data` or refuse it without naming the tensor).
fn check_initializer(t: &TensorProto) -> std::result::Result<(), String> {
    if t.data_location() == DataLocation::External || !t.external_data.is_empty() {
        return Err("external data is not supported".into());
    }
    let dims = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d}")))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let count = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("dims {dims:?} overflow"))?;
    let dt = t.data_type();
    let Some(width) = data_type_size(dt) else {
        return Err(format!("data type {} is not supported", data_type_name(dt)));
    };
    let held = match &t.raw_data {
        Some(raw) if !raw.is_empty() => {
            if raw.len() != count * width {
                return Err(format!(
                    "raw_data holds {} bytes, dims {dims:?} need {}",
                    raw.len(),
                    count * width
                ));
            }
            return Ok(());
        }
        _ => match DataType::try_from(dt) {
            Ok(DataType::Float) => t.float_data.len(),
            Ok(DataType::Double) => t.double_data.len(),
            Ok(DataType::Int64) => t.int64_data.len(),
            Ok(DataType::Uint32 | DataType::Uint64) => t.uint64_data.len(),
            _ => t.int32_data.len(),
        },
    };
    if held != count {
        return Err(format!("holds {held} values, dims {dims:?} need {count}"));
    }
    Ok(())
}

/// Element type and dimensions (`None` where not a fixed number) of a
/// graph input or output.
fn value_type(v: &ValueInfoProto) -> std::result::Result<(i32, Vec<Option<usize>>), String> {
    let Some(type_proto::Value::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Err(format!("`{}` is not a tensor", v.name()));
    };
    let dims = t
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(tensor_shape_proto::dimension::Value::DimValue(n)) => {
                        usize::try_from(n).ok()
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((t.elem_type(), dims))
}

fn spec_dtype(dtype: &str) -> Option<(i32, DType)> {
    match dtype {
        "float32" => Some((DataType::Float as i32, DType::F32)),
        "int64" => Some((DataType::Int64 as i32, DType::I64)),
        _ => None,
    }
}

fn show_dims(d: &[Option<usize>]) -> String {
    let parts: Vec<String> = d
        .iter()
        .map(|x| x.map_or_else(|| "?".to_owned(), |n| n.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
}

fn show_spec(s: &[Dim]) -> String {
    let parts: Vec<String> = s.iter().map(ToString::to_string).collect();
    format!("[{}]", parts.join(", "))
}

/// A Candle tensor as a tract value (the input types of the contract).
fn to_tract(t: &Tensor) -> Result<TValue> {
    let flat = t.flatten_all()?;
    let tensor = match t.dtype() {
        DType::F32 => tract_onnx::prelude::Tensor::from_shape(t.dims(), &flat.to_vec1::<f32>()?),
        DType::I64 => tract_onnx::prelude::Tensor::from_shape(t.dims(), &flat.to_vec1::<i64>()?),
        other => {
            return Err(Error::Invalid(format!(
                "{other:?} inputs are not supported"
            )));
        }
    }
    .map_err(|e| Error::Invalid(format!("{e:#}")))?;
    Ok(tensor.into_tvalue())
}

impl OnnxModel {
    /// Reads and checks an ONNX file written by [`export`](crate::export).
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| onnx_err(path, e))?;
        Self::from_bytes(path, &bytes)
    }

    /// [`OnnxModel::load`] from bytes; `path` names the source in errors.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self> {
        let err = |reason: String| onnx_err(path, reason);
        let model = ModelProto::decode(bytes).map_err(|e| {
            err(format!(
                "not a valid ONNX protobuf (truncated or corrupt?): {e}"
            ))
        })?;
        if !model
            .opset_import
            .iter()
            .any(|o| o.domain().is_empty() || o.domain() == "ai.onnx")
        {
            return Err(err("opset_import names no default-domain opset".into()));
        }
        let meta = model
            .metadata_props
            .iter()
            .find(|m| m.key() == METADATA_KEY)
            .ok_or_else(|| {
                err(format!(
                    "metadata `{METADATA_KEY}` is missing: not a file written by `shardcast export-onnx`"
                ))
            })?;
        let contract: Contract = serde_json::from_str(meta.value())
            .map_err(|e| err(format!("metadata `{METADATA_KEY}`: {e}")))?;
        contract
            .validate()
            .map_err(|e| err(format!("metadata `{METADATA_KEY}`: {e}")))?;
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| err("the model has no graph".into()))?;

        let mut defined: HashSet<&str> = HashSet::new();
        for t in &graph.initializer {
            check_initializer(t).map_err(|e| err(format!("initializer `{}`: {e}", t.name())))?;
            if !defined.insert(t.name()) {
                return Err(err(format!("initializer `{}` is defined twice", t.name())));
            }
        }
        let inits = defined.clone();

        // The graph's inputs (initializers may be listed too, as defaults)
        // must be the contract's, in order, with its types and shapes.
        let graph_inputs: Vec<&ValueInfoProto> = graph
            .input
            .iter()
            .filter(|v| !inits.contains(v.name()))
            .collect();
        let expected: Vec<&str> = contract.inputs.iter().map(|s| s.name.as_str()).collect();
        let mut inputs = Vec::new();
        for (i, v) in graph_inputs.iter().enumerate() {
            let Some(spec) = contract.inputs.get(i).filter(|s| s.name == v.name()) else {
                return Err(err(format!(
                    "graph input `{}` (position {i}) is not the contract's; expected inputs {expected:?}",
                    v.name()
                )));
            };
            let (elem, dims) = value_type(v).map_err(|e| err(format!("graph input: {e}")))?;
            let (want_elem, dtype) = spec_dtype(&spec.dtype).ok_or_else(|| {
                err(format!(
                    "contract input `{}` has unsupported dtype {}",
                    spec.name, spec.dtype
                ))
            })?;
            if elem != want_elem {
                return Err(err(format!(
                    "graph input `{}` has element type {}, the contract says {}",
                    v.name(),
                    data_type_name(elem),
                    spec.dtype
                )));
            }
            let shape_ok = dims.len() == spec.shape.len()
                && dims.iter().zip(&spec.shape).all(|(d, s)| match s {
                    Dim::Fixed(n) => *d == Some(*n),
                    Dim::Named(_) => d.is_none(),
                });
            if !shape_ok {
                return Err(err(format!(
                    "graph input `{}` has shape {}, the contract says {}",
                    v.name(),
                    show_dims(&dims),
                    show_spec(&spec.shape)
                )));
            }
            if !defined.insert(v.name()) {
                return Err(err(format!("graph input `{}` is listed twice", v.name())));
            }
            inputs.push(InputSlot {
                name: v.name().to_owned(),
                dtype,
                dims: spec
                    .shape
                    .iter()
                    .map(|s| match s {
                        Dim::Fixed(n) => Some(*n),
                        Dim::Named(_) => None,
                    })
                    .collect(),
            });
        }
        if graph_inputs.len() != contract.inputs.len() {
            return Err(err(format!(
                "the graph has {} inputs, the contract {expected:?}",
                graph_inputs.len()
            )));
        }

        let onnx = tract_onnx::onnx();
        for (k, node) in graph.node.iter().enumerate() {
            let name = if node.name().is_empty() {
                format!("#{k}")
            } else {
                node.name().to_owned()
            };
            let node_err =
                |reason: String| err(format!("node `{name}` ({}): {reason}", node.op_type()));
            if !(node.domain().is_empty() || node.domain() == "ai.onnx") {
                return Err(node_err(format!(
                    "domain `{}` is not supported",
                    node.domain()
                )));
            }
            if !onnx.op_register.0.contains_key(node.op_type()) {
                return Err(node_err(format!(
                    "operator {} is not supported",
                    node.op_type()
                )));
            }
            if let Some(n) = node
                .input
                .iter()
                .find(|n| !n.is_empty() && !defined.contains(n.as_str()))
            {
                return Err(node_err(format!(
                    "input `{n}` is not produced before this node"
                )));
            }
            for o in node.output.iter().filter(|o| !o.is_empty()) {
                if !defined.insert(o) {
                    return Err(node_err(format!("output `{o}` is already defined")));
                }
            }
        }

        let [out] = graph.output.as_slice() else {
            return Err(err(format!(
                "the graph has {} outputs, expected one (`{}`)",
                graph.output.len(),
                contract
                    .outputs
                    .first()
                    .map_or("quantiles", |o| o.name.as_str())
            )));
        };
        let spec = contract
            .outputs
            .first()
            .filter(|s| s.name == out.name())
            .ok_or_else(|| {
                err(format!(
                    "graph output `{}` is not the contract's output",
                    out.name()
                ))
            })?;
        let (elem, _) = value_type(out).map_err(|e| err(format!("graph output: {e}")))?;
        if Some(elem) != spec_dtype(&spec.dtype).map(|d| d.0) {
            return Err(err(format!(
                "graph output `{}` has element type {}, the contract says {}",
                out.name(),
                data_type_name(elem),
                spec.dtype
            )));
        }
        if !defined.contains(out.name()) {
            return Err(err(format!(
                "graph output `{}` is never produced",
                out.name()
            )));
        }

        let plan = onnx
            .model_for_read(&mut &bytes[..])
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| err(format!("tract cannot prepare the graph: {e:#}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            contract,
            inputs,
            nodes: graph.node.len(),
            plan,
        })
    }

    /// The input contract stored in the file.
    pub fn contract(&self) -> &Contract {
        &self.contract
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs the graph; returns `quantiles` `[batch, horizon, quantiles]`.
    pub fn run(&self, inputs: &OnnxInputs) -> Result<Tensor> {
        let err = |reason: String| onnx_err(&self.path, reason);
        let names: Vec<&str> = self.inputs.iter().map(|i| i.name.as_str()).collect();
        if let Some((extra, _)) = inputs
            .tensors
            .iter()
            .find(|(n, _)| !names.contains(&n.as_str()))
        {
            return Err(err(format!(
                "input `{extra}` is not an input of the model (it takes {names:?})"
            )));
        }
        if let Some((dup, _)) = inputs
            .tensors
            .iter()
            .enumerate()
            .find(|(i, (n, _))| inputs.tensors[..*i].iter().any(|(m, _)| m == n))
            .map(|(_, t)| t)
        {
            return Err(err(format!("input `{dup}` is given twice")));
        }
        let mut values: TVec<TValue> = TVec::new();
        let mut batch = None;
        for spec in &self.inputs {
            let t = inputs.get(&spec.name).ok_or_else(|| {
                err(format!(
                    "input `{}` is missing (the model takes {names:?})",
                    spec.name
                ))
            })?;
            if t.dtype() != spec.dtype {
                return Err(err(format!(
                    "input `{}` is {}, expected {}",
                    spec.name,
                    dtype_name(t.dtype()),
                    dtype_name(spec.dtype)
                )));
            }
            let dims = t.dims();
            let mut ok = dims.len() == spec.dims.len();
            for (d, s) in dims.iter().zip(&spec.dims) {
                match s {
                    Some(n) => ok &= d == n,
                    None => match batch {
                        None => batch = Some(*d),
                        Some(b) => ok &= b == *d,
                    },
                }
            }
            if !ok {
                return Err(err(format!(
                    "input `{}` has shape {dims:?}, expected {} with one batch size {} for all inputs",
                    spec.name,
                    show_dims(&spec.dims),
                    batch.map_or_else(|| BATCH.to_owned(), |b| b.to_string())
                )));
            }
            self.check_range(&spec.name, t)?;
            values.push(to_tract(t).map_err(|e| err(format!("input `{}`: {e}", spec.name)))?);
        }
        let c = &self.contract;
        let (h, q) = (c.horizon, c.quantiles.len());
        let batch = batch.unwrap_or(0);
        if batch == 0 {
            return Ok(Tensor::zeros((0, h, q), DType::F32, &Device::Cpu)?);
        }
        let out = self
            .plan
            .run(values)
            .map_err(|e| err(format!("running the graph failed: {e:#}")))?;
        let quantiles = out
            .first()
            .ok_or_else(|| err("the graph did not produce its output".into()))?;
        if quantiles.shape() != [batch, h, q] {
            return Err(err(format!(
                "the output has shape {:?}, expected [{batch}, {h}, {q}]",
                quantiles.shape()
            )));
        }
        let data: Vec<f32> = quantiles
            .to_plain_array_view::<f32>()
            .map_err(|e| err(format!("the output is not float32: {e:#}")))?
            .iter()
            .copied()
            .collect();
        Ok(Tensor::from_vec(data, (batch, h, q), &Device::Cpu)?)
    }

    /// Checks the value ranges the contract states for integer inputs.
    fn check_range(&self, name: &str, t: &Tensor) -> Result<()> {
        let c = &self.contract;
        let (lo, hi) = match name {
            HISTORY_LEN => (1, c.window),
            SERIES_ID => (0, c.series.len()),
            SHARD_TYPE_ID => (0, c.shard_types.len()),
            _ => return Ok(()),
        };
        let v = t.flatten_all()?.to_vec1::<i64>()?;
        if let Some((i, bad)) = v
            .iter()
            .enumerate()
            .find(|(_, x)| **x < lo as i64 || **x > hi as i64)
        {
            return Err(onnx_err(
                &self.path,
                format!("input `{name}`[{i}] is {bad}, outside {lo}..={hi}"),
            ));
        }
        Ok(())
    }
}
