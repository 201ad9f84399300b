//! Loading an exported ONNX file and running it on Candle tensors.
//!
//! A small evaluator of the operators [`export`](super::export) writes (see
//! the module docs of [`onnx`](super) for the list), on the CPU. The graph
//! is checked when it is loaded: every node's operator, attributes and
//! constant inputs, that every value is produced before it is read, and that
//! the graph's inputs and output are those of the contract stored in the
//! file. GRU and LSTM nodes run on this crate's fused kernels, with their
//! weights converted back from ONNX's gate order; their `Y` output is the
//! full hidden sequence for any batch size.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Shape, Tensor};
use prost::Message;

use crate::OnnxInputs;
use crate::contract::{BATCH, Contract, Dim, HISTORY_LEN, METADATA_KEY, SERIES_ID, SHARD_TYPE_ID};
use crate::error::{Error, Result};
use crate::proto::{
    AttributeProto, ModelProto, NodeProto, TensorProto, ValueInfoProto, attribute_type, data_type,
    tensor_shape_proto, type_proto,
};
use shardcast_model::gru::GruLayer;
use shardcast_model::lstm::LstmLayer;

/// The oldest default-domain opset whose operator signatures the evaluator
/// implements (axes as inputs of `Squeeze`, `Unsqueeze`, `ReduceSum`; as an
/// attribute of `ReduceMax` and `ReduceMin`).
const MIN_OPSET: i64 = 13;

/// An exported forecaster, loaded and ready to run.
pub struct OnnxModel {
    path: PathBuf,
    contract: Contract,
    inputs: Vec<InputSlot>,
    output: usize,
    consts: Vec<(usize, Tensor)>,
    steps: Vec<Step>,
    slots: usize,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("path", &self.path)
            .field("nodes", &self.steps.len())
            .field("initializers", &self.consts.len())
            .finish_non_exhaustive()
    }
}

struct InputSlot {
    name: String,
    slot: usize,
    dtype: DType,
    dims: Vec<Option<usize>>,
}

struct Step {
    name: String,
    op_type: String,
    op: Op,
    inputs: Vec<Option<usize>>,
    outputs: Vec<Option<usize>>,
    /// Slots read for the last time by this step.
    free: Vec<usize>,
}

#[derive(Debug, Clone, Copy)]
enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

#[derive(Debug, Clone, Copy)]
enum Cmp {
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
    Equal,
}

#[derive(Debug, Clone, Copy)]
enum Unary {
    Neg,
    Abs,
    Exp,
    Log,
    Sin,
    Cos,
    Relu,
    Softplus,
    Identity,
}

#[derive(Debug, Clone, Copy)]
enum Reduction {
    Sum,
    Max,
    Min,
}

enum Recurrent {
    Gru(GruLayer),
    Lstm(LstmLayer),
}

enum Op {
    Arith(Arith),
    Cmp(Cmp),
    Unary(Unary),
    Max,
    Min,
    Where,
    Clip,
    Cast(DType),
    Concat(i64),
    Gather(i64),
    GatherElements(i64),
    Transpose(Option<Vec<usize>>),
    Reshape(Vec<i64>),
    Squeeze(Option<Vec<i64>>),
    Unsqueeze(Vec<i64>),
    Slice {
        starts: Vec<i64>,
        ends: Vec<i64>,
        axes: Option<Vec<i64>>,
    },
    Reduce {
        how: Reduction,
        axes: Option<Vec<i64>>,
        keepdims: bool,
    },
    MatMul,
    Gemm {
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    },
    Rnn(Box<Recurrent>),
}

fn onnx_err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Onnx {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::Invalid(reason.into())
}

/// The Candle dtype of an ONNX element type, for the types the evaluator runs.
fn dtype_of(t: i32) -> Option<DType> {
    match t {
        data_type::FLOAT => Some(DType::F32),
        data_type::DOUBLE => Some(DType::F64),
        data_type::INT64 => Some(DType::I64),
        data_type::BOOL => Some(DType::U8),
        _ => None,
    }
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::F64 => "float64",
        DType::I64 => "int64",
        DType::U8 => "bool",
        _ => "unsupported",
    }
}

/// An initializer as a tensor.
fn tensor_from_proto(t: &TensorProto) -> Result<Tensor> {
    if t.data_location != 0 || !t.external_data.is_empty() {
        return Err(invalid("external data is not supported"));
    }
    let dims = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| invalid(format!("negative dimension {d}"))))
        .collect::<Result<Vec<_>>>()?;
    let count = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| invalid(format!("dims {dims:?} overflow")))?;
    let dev = Device::Cpu;
    let raw = |width: usize| -> Result<Option<&[u8]>> {
        if t.raw_data.is_empty() {
            return Ok(None);
        }
        if t.raw_data.len() != count * width {
            return Err(invalid(format!(
                "raw_data holds {} bytes, dims {dims:?} need {}",
                t.raw_data.len(),
                count * width
            )));
        }
        Ok(Some(&t.raw_data))
    };
    let check = |n: usize| -> Result<()> {
        if n == count {
            Ok(())
        } else {
            Err(invalid(format!(
                "holds {n} values, dims {dims:?} need {count}"
            )))
        }
    };
    let tensor = match t.data_type {
        data_type::FLOAT => {
            let v: Vec<f32> = match raw(4)? {
                Some(b) => b
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                None => t.float_data.clone(),
            };
            check(v.len())?;
            Tensor::from_vec(v, dims, &dev)?
        }
        data_type::DOUBLE => {
            let v: Vec<f64> = match raw(8)? {
                Some(b) => b
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
                None => t.double_data.clone(),
            };
            check(v.len())?;
            Tensor::from_vec(v, dims, &dev)?
        }
        data_type::INT64 => {
            let v: Vec<i64> = match raw(8)? {
                Some(b) => b
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
                None => t.int64_data.clone(),
            };
            check(v.len())?;
            Tensor::from_vec(v, dims, &dev)?
        }
        data_type::BOOL => {
            let v: Vec<u8> = match raw(1)? {
                Some(b) => b.iter().map(|&x| u8::from(x != 0)).collect(),
                None => t.int32_data.iter().map(|&x| u8::from(x != 0)).collect(),
            };
            check(v.len())?;
            Tensor::from_vec(v, dims, &dev)?
        }
        other => {
            return Err(invalid(format!(
                "data type {} is not supported",
                data_type::name(other)
            )));
        }
    };
    Ok(tensor)
}

/// Attributes of one node, looked up by name with their type checked.
struct Attrs<'a>(&'a [AttributeProto]);

impl Attrs<'_> {
    fn get(&self, name: &str, kind: i32) -> Result<Option<&AttributeProto>> {
        match self.0.iter().find(|a| a.name == name) {
            None => Ok(None),
            Some(a) if a.r#type == kind => Ok(Some(a)),
            Some(a) => Err(invalid(format!(
                "attribute `{name}` has type {}, expected {kind}",
                a.r#type
            ))),
        }
    }

    fn int(&self, name: &str) -> Result<Option<i64>> {
        Ok(self.get(name, attribute_type::INT)?.map(|a| a.i))
    }

    fn float(&self, name: &str) -> Result<Option<f32>> {
        Ok(self.get(name, attribute_type::FLOAT)?.map(|a| a.f))
    }

    fn ints(&self, name: &str) -> Result<Option<Vec<i64>>> {
        Ok(self
            .get(name, attribute_type::INTS)?
            .map(|a| a.ints.clone()))
    }

    fn string(&self, name: &str) -> Result<Option<String>> {
        self.get(name, attribute_type::STRING)?
            .map(|a| {
                String::from_utf8(a.s.clone())
                    .map_err(|_| invalid(format!("attribute `{name}` is not UTF-8")))
            })
            .transpose()
    }

    fn strings(&self, name: &str) -> Result<Option<Vec<String>>> {
        Ok(self.get(name, attribute_type::STRINGS)?.map(|a| {
            a.strings
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        }))
    }

    /// Refuses attributes the evaluator does not know for this operator.
    fn only(&self, known: &[&str]) -> Result<()> {
        match self.0.iter().find(|a| !known.contains(&a.name.as_str())) {
            Some(a) => Err(invalid(format!("attribute `{}` is not supported", a.name))),
            None => Ok(()),
        }
    }

    /// Whether any attribute holds a tensor (no operator here takes one).
    fn has_tensor(&self) -> bool {
        self.0.iter().any(|a| a.r#type == attribute_type::TENSOR)
    }
}

/// A constant input of a node (an initializer), as integers.
fn const_ints(consts: &HashMap<&str, Tensor>, name: &str, what: &str) -> Result<Vec<i64>> {
    let t = consts
        .get(name)
        .ok_or_else(|| invalid(format!("{what} `{name}` must be an initializer")))?;
    if t.dtype() != DType::I64 {
        return Err(invalid(format!(
            "{what} `{name}` must be int64, not {}",
            dtype_name(t.dtype())
        )));
    }
    Ok(t.flatten_all()?.to_vec1::<i64>()?)
}

fn const_tensor(consts: &HashMap<&str, Tensor>, name: &str, what: &str) -> Result<Tensor> {
    consts
        .get(name)
        .cloned()
        .ok_or_else(|| invalid(format!("{what} `{name}` must be an initializer")))
}

/// `ONNX gate order → PyTorch gate order` for a `[1, gates * h, …]` weight:
/// block `k` of the result is block `order[k]` of the input.
fn pytorch_gates(t: &Tensor, gates: usize, order: &[usize]) -> Result<Tensor> {
    let t = t.squeeze(0)?;
    let rows = t.dim(0)?;
    if rows % gates != 0 {
        return Err(invalid(format!(
            "recurrent weight has {rows} rows, not a multiple of {gates} gates"
        )));
    }
    let h = rows / gates;
    let blocks = order
        .iter()
        .map(|&k| t.narrow(0, k * h, h))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&blocks, 0)?.contiguous()?)
}

fn parse_rnn(
    node: &NodeProto,
    attrs: &Attrs<'_>,
    consts: &HashMap<&str, Tensor>,
    lstm: bool,
) -> Result<Recurrent> {
    attrs.only(&[
        "hidden_size",
        "direction",
        "linear_before_reset",
        "activations",
        "layout",
        "input_forget",
    ])?;
    let hidden = attrs
        .int("hidden_size")?
        .ok_or_else(|| invalid("attribute `hidden_size` is missing"))?;
    if let Some(d) = attrs.string("direction")?
        && d != "forward"
    {
        return Err(invalid(format!(
            "direction `{d}` is not supported, only forward"
        )));
    }
    if attrs.int("layout")?.unwrap_or(0) != 0 {
        return Err(invalid("only layout 0 ([seq, batch, input]) is supported"));
    }
    let default_acts: &[&str] = if lstm {
        &["Sigmoid", "Tanh", "Tanh"]
    } else {
        &["Sigmoid", "Tanh"]
    };
    if let Some(acts) = attrs.strings("activations")?
        && acts
            .iter()
            .map(String::as_str)
            .ne(default_acts.iter().copied())
    {
        return Err(invalid(format!(
            "activations {acts:?} are not supported, only {default_acts:?}"
        )));
    }
    if lstm && attrs.int("input_forget")?.unwrap_or(0) != 0 {
        return Err(invalid("input_forget is not supported"));
    }
    if !lstm && attrs.int("linear_before_reset")?.unwrap_or(0) != 1 {
        return Err(invalid(
            "only linear_before_reset = 1 (PyTorch's GRU) is supported",
        ));
    }
    // Inputs: X, W, R, B, sequence_lens, initial_h (, initial_c, P).
    let optional_from = 4;
    if let Some(extra) = node
        .input
        .iter()
        .skip(optional_from)
        .find(|n| !n.is_empty())
    {
        return Err(invalid(format!(
            "optional input `{extra}` (sequence lengths, initial state or peepholes) is not supported"
        )));
    }
    let w = const_tensor(consts, input_name(node, 1)?, "weight W")?;
    let r = const_tensor(consts, input_name(node, 2)?, "weight R")?;
    let (gates, order): (usize, &[usize]) = if lstm {
        // ONNX i, o, f, c → PyTorch i, f, g, o.
        (4, &[0, 2, 3, 1])
    } else {
        // ONNX z, r, h → PyTorch r, z, n.
        (3, &[1, 0, 2])
    };
    let g = gates * hidden as usize;
    let check = |t: &Tensor, what: &str, second: Option<usize>| -> Result<()> {
        let d = t.dims();
        let ok = d.len() == 3 && d[0] == 1 && d[1] == g && second.is_none_or(|s| d[2] == s);
        if ok && t.dtype() == DType::F32 {
            Ok(())
        } else {
            Err(invalid(format!(
                "{what} has shape {d:?} ({}), expected [1, {g}, …] float32",
                dtype_name(t.dtype())
            )))
        }
    };
    check(&w, "W", None)?;
    check(&r, "R", Some(hidden as usize))?;
    let w_pt = pytorch_gates(&w, gates, order)?;
    let r_pt = pytorch_gates(&r, gates, order)?;
    let (b_ih, b_hh) = match node.input.get(3).filter(|n| !n.is_empty()) {
        Some(name) => {
            let b = const_tensor(consts, name, "bias B")?;
            if b.dims() != [1, 2 * g] || b.dtype() != DType::F32 {
                return Err(invalid(format!(
                    "B has shape {:?}, expected [1, {}] float32",
                    b.dims(),
                    2 * g
                )));
            }
            let bi = pytorch_gates(&b.narrow(1, 0, g)?.unsqueeze(2)?, gates, order)?;
            let bh = pytorch_gates(&b.narrow(1, g, g)?.unsqueeze(2)?, gates, order)?;
            (Some(bi.squeeze(1)?), Some(bh.squeeze(1)?))
        }
        None => (None, None),
    };
    Ok(if lstm {
        Recurrent::Lstm(LstmLayer::from_tensors(w_pt, r_pt, b_ih, b_hh)?)
    } else {
        Recurrent::Gru(GruLayer::from_tensors(w_pt, r_pt, b_ih, b_hh)?)
    })
}

fn input_name(node: &NodeProto, i: usize) -> Result<&str> {
    node.input
        .get(i)
        .map(String::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid(format!("input {i} is missing")))
}

/// Parses one node into an [`Op`], reading its constant inputs.
fn parse_op(node: &NodeProto, consts: &HashMap<&str, Tensor>) -> Result<Op> {
    let attrs = Attrs(&node.attribute);
    if attrs.has_tensor() {
        return Err(invalid("tensor attributes are not supported"));
    }
    let n_in = |lo: usize, hi: usize| -> Result<()> {
        let n = node.input.len();
        if n < lo || n > hi {
            Err(invalid(format!(
                "has {n} inputs, {} takes {lo} to {hi}",
                node.op_type
            )))
        } else {
            Ok(())
        }
    };
    let axis = |default: i64| -> Result<i64> { Ok(attrs.int("axis")?.unwrap_or(default)) };
    let op = match node.op_type.as_str() {
        "Add" | "Sub" | "Mul" | "Div" => {
            n_in(2, 2)?;
            attrs.only(&[])?;
            Op::Arith(match node.op_type.as_str() {
                "Add" => Arith::Add,
                "Sub" => Arith::Sub,
                "Mul" => Arith::Mul,
                _ => Arith::Div,
            })
        }
        "Mod" => {
            n_in(2, 2)?;
            attrs.only(&["fmod"])?;
            if attrs.int("fmod")?.unwrap_or(0) != 0 {
                return Err(invalid("only fmod = 0 (integer modulo) is supported"));
            }
            Op::Arith(Arith::Mod)
        }
        "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" | "Equal" => {
            n_in(2, 2)?;
            attrs.only(&[])?;
            Op::Cmp(match node.op_type.as_str() {
                "Less" => Cmp::Less,
                "LessOrEqual" => Cmp::LessOrEqual,
                "Greater" => Cmp::Greater,
                "GreaterOrEqual" => Cmp::GreaterOrEqual,
                _ => Cmp::Equal,
            })
        }
        "Neg" | "Abs" | "Exp" | "Log" | "Sin" | "Cos" | "Relu" | "Softplus" | "Identity" => {
            n_in(1, 1)?;
            attrs.only(&[])?;
            Op::Unary(match node.op_type.as_str() {
                "Neg" => Unary::Neg,
                "Abs" => Unary::Abs,
                "Exp" => Unary::Exp,
                "Log" => Unary::Log,
                "Sin" => Unary::Sin,
                "Cos" => Unary::Cos,
                "Relu" => Unary::Relu,
                "Softplus" => Unary::Softplus,
                _ => Unary::Identity,
            })
        }
        "Max" | "Min" => {
            n_in(1, usize::MAX)?;
            attrs.only(&[])?;
            if node.op_type == "Max" {
                Op::Max
            } else {
                Op::Min
            }
        }
        "Where" => {
            n_in(3, 3)?;
            attrs.only(&[])?;
            Op::Where
        }
        "Clip" => {
            n_in(1, 3)?;
            attrs.only(&[])?;
            Op::Clip
        }
        "Cast" => {
            n_in(1, 1)?;
            attrs.only(&["to", "saturate"])?;
            let to = attrs
                .int("to")?
                .ok_or_else(|| invalid("attribute `to` is missing"))?;
            let to = i32::try_from(to)
                .ok()
                .and_then(dtype_of)
                .ok_or_else(|| invalid(format!("cast to data type {to} is not supported")))?;
            Op::Cast(to)
        }
        "Concat" => {
            n_in(1, usize::MAX)?;
            attrs.only(&["axis"])?;
            Op::Concat(
                attrs
                    .int("axis")?
                    .ok_or_else(|| invalid("attribute `axis` is missing"))?,
            )
        }
        "Gather" => {
            n_in(2, 2)?;
            attrs.only(&["axis"])?;
            Op::Gather(axis(0)?)
        }
        "GatherElements" => {
            n_in(2, 2)?;
            attrs.only(&["axis"])?;
            Op::GatherElements(axis(0)?)
        }
        "Transpose" => {
            n_in(1, 1)?;
            attrs.only(&["perm"])?;
            let perm = attrs
                .ints("perm")?
                .map(|p| {
                    p.into_iter()
                        .map(|v| {
                            usize::try_from(v).map_err(|_| invalid(format!("bad perm entry {v}")))
                        })
                        .collect::<Result<Vec<_>>>()
                })
                .transpose()?;
            Op::Transpose(perm)
        }
        "Reshape" => {
            n_in(2, 2)?;
            attrs.only(&["allowzero"])?;
            if attrs.int("allowzero")?.unwrap_or(0) != 0 {
                return Err(invalid("allowzero = 1 is not supported"));
            }
            Op::Reshape(const_ints(consts, input_name(node, 1)?, "shape")?)
        }
        "Squeeze" => {
            n_in(1, 2)?;
            attrs.only(&[])?;
            Op::Squeeze(match node.input.get(1).filter(|n| !n.is_empty()) {
                Some(n) => Some(const_ints(consts, n, "axes")?),
                None => None,
            })
        }
        "Unsqueeze" => {
            n_in(2, 2)?;
            attrs.only(&[])?;
            Op::Unsqueeze(const_ints(consts, input_name(node, 1)?, "axes")?)
        }
        "Slice" => {
            n_in(3, 5)?;
            attrs.only(&[])?;
            let starts = const_ints(consts, input_name(node, 1)?, "starts")?;
            let ends = const_ints(consts, input_name(node, 2)?, "ends")?;
            let axes = match node.input.get(3).filter(|n| !n.is_empty()) {
                Some(n) => Some(const_ints(consts, n, "axes")?),
                None => None,
            };
            if let Some(n) = node.input.get(4).filter(|n| !n.is_empty())
                && const_ints(consts, n, "steps")?.iter().any(|&s| s != 1)
            {
                return Err(invalid("only steps of 1 are supported"));
            }
            if starts.len() != ends.len() || axes.as_ref().is_some_and(|a| a.len() != starts.len())
            {
                return Err(invalid("starts, ends and axes differ in length"));
            }
            Op::Slice { starts, ends, axes }
        }
        "ReduceSum" => {
            n_in(1, 2)?;
            attrs.only(&["keepdims", "noop_with_empty_axes"])?;
            if attrs.int("noop_with_empty_axes")?.unwrap_or(0) != 0 {
                return Err(invalid("noop_with_empty_axes = 1 is not supported"));
            }
            let axes = match node.input.get(1).filter(|n| !n.is_empty()) {
                Some(n) => Some(const_ints(consts, n, "axes")?),
                None => None,
            };
            Op::Reduce {
                how: Reduction::Sum,
                axes,
                keepdims: attrs.int("keepdims")?.unwrap_or(1) != 0,
            }
        }
        // Opset 17: their axes are an attribute.
        "ReduceMax" | "ReduceMin" => {
            n_in(1, 1)?;
            attrs.only(&["axes", "keepdims"])?;
            Op::Reduce {
                how: if node.op_type == "ReduceMax" {
                    Reduction::Max
                } else {
                    Reduction::Min
                },
                axes: attrs.ints("axes")?,
                keepdims: attrs.int("keepdims")?.unwrap_or(1) != 0,
            }
        }
        "MatMul" => {
            n_in(2, 2)?;
            attrs.only(&[])?;
            Op::MatMul
        }
        "Gemm" => {
            n_in(2, 3)?;
            attrs.only(&["alpha", "beta", "transA", "transB"])?;
            Op::Gemm {
                alpha: attrs.float("alpha")?.unwrap_or(1.0),
                beta: attrs.float("beta")?.unwrap_or(1.0),
                trans_a: attrs.int("transA")?.unwrap_or(0) != 0,
                trans_b: attrs.int("transB")?.unwrap_or(0) != 0,
            }
        }
        "GRU" => {
            n_in(3, 6)?;
            Op::Rnn(Box::new(parse_rnn(node, &attrs, consts, false)?))
        }
        "LSTM" => {
            n_in(3, 8)?;
            Op::Rnn(Box::new(parse_rnn(node, &attrs, consts, true)?))
        }
        other => {
            return Err(invalid(format!(
                "operator {other} is not supported by this evaluator"
            )));
        }
    };
    let max_out = match &op {
        Op::Rnn(r) => match **r {
            Recurrent::Gru(_) => 2,
            Recurrent::Lstm(_) => 3,
        },
        _ => 1,
    };
    if node.output.is_empty() || node.output.len() > max_out {
        return Err(invalid(format!(
            "has {} outputs, {} gives 1 to {max_out}",
            node.output.len(),
            node.op_type
        )));
    }
    Ok(op)
}

/// Element type and dimensions (`None`: symbolic) of a graph input or output.
fn value_type(v: &ValueInfoProto) -> Result<(i32, Vec<Option<usize>>)> {
    let Some(type_proto::Value::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.clone())
    else {
        return Err(invalid(format!("`{}` is not a tensor", v.name)));
    };
    let dims = t
        .shape
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
    Ok((t.elem_type, dims))
}

fn spec_dtype(dtype: &str) -> Option<(i32, DType)> {
    match dtype {
        "float32" => Some((data_type::FLOAT, DType::F32)),
        "int64" => Some((data_type::INT64, DType::I64)),
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

impl OnnxModel {
    /// Reads and checks an ONNX file written by [`export`](super::export).
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
        let opset = model
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
            .ok_or_else(|| err("opset_import names no default-domain opset".into()))?;
        if opset < MIN_OPSET {
            return Err(err(format!(
                "opset {opset} is too old; this evaluator reads opset {MIN_OPSET} and later"
            )));
        }
        let meta = model
            .metadata_props
            .iter()
            .find(|m| m.key == METADATA_KEY)
            .ok_or_else(|| {
                err(format!(
                    "metadata `{METADATA_KEY}` is missing: not a file written by `shardcast export-onnx`"
                ))
            })?;
        let contract: Contract = serde_json::from_str(&meta.value)
            .map_err(|e| err(format!("metadata `{METADATA_KEY}`: {e}")))?;
        contract
            .validate()
            .map_err(|e| err(format!("metadata `{METADATA_KEY}`: {e}")))?;
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| err("the model has no graph".into()))?;

        let mut slot_of: HashMap<&str, usize> = HashMap::new();
        let mut consts_by_name: HashMap<&str, Tensor> = HashMap::new();
        let mut consts = Vec::new();
        for t in &graph.initializer {
            let tensor =
                tensor_from_proto(t).map_err(|e| err(format!("initializer `{}`: {e}", t.name)))?;
            if slot_of.insert(&t.name, slot_of.len()).is_some() {
                return Err(err(format!("initializer `{}` is defined twice", t.name)));
            }
            consts.push((slot_of[t.name.as_str()], tensor.clone()));
            consts_by_name.insert(&t.name, tensor);
        }

        // The graph's inputs (initializers may be listed too, as defaults)
        // must be the contract's, in order, with its types and shapes.
        let graph_inputs: Vec<&ValueInfoProto> = graph
            .input
            .iter()
            .filter(|v| !consts_by_name.contains_key(v.name.as_str()))
            .collect();
        let expected: Vec<&str> = contract.inputs.iter().map(|s| s.name.as_str()).collect();
        let mut inputs = Vec::new();
        for (i, v) in graph_inputs.iter().enumerate() {
            let Some(spec) = contract.inputs.get(i).filter(|s| s.name == v.name) else {
                return Err(err(format!(
                    "graph input `{}` (position {i}) is not the contract's; expected inputs {expected:?}",
                    v.name
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
                    v.name,
                    data_type::name(elem),
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
                    v.name,
                    show_dims(&dims),
                    show_spec(&spec.shape)
                )));
            }
            if slot_of.insert(&v.name, slot_of.len()).is_some() {
                return Err(err(format!("graph input `{}` is listed twice", v.name)));
            }
            inputs.push(InputSlot {
                name: v.name.clone(),
                slot: slot_of[v.name.as_str()],
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

        let mut steps = Vec::with_capacity(graph.node.len());
        for (k, node) in graph.node.iter().enumerate() {
            let name = if node.name.is_empty() {
                format!("#{k}")
            } else {
                node.name.clone()
            };
            let node_err =
                |reason: String| err(format!("node `{name}` ({}): {reason}", node.op_type));
            if !(node.domain.is_empty() || node.domain == "ai.onnx") {
                return Err(node_err(format!(
                    "domain `{}` is not supported",
                    node.domain
                )));
            }
            let op = parse_op(node, &consts_by_name).map_err(|e| node_err(e.to_string()))?;
            let ins = node
                .input
                .iter()
                .map(|n| {
                    if n.is_empty() {
                        Ok(None)
                    } else {
                        slot_of.get(n.as_str()).copied().map(Some).ok_or_else(|| {
                            node_err(format!("input `{n}` is not produced before this node"))
                        })
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            let mut outs = Vec::with_capacity(node.output.len());
            for o in &node.output {
                if o.is_empty() {
                    outs.push(None);
                    continue;
                }
                if slot_of.insert(o, slot_of.len()).is_some() {
                    return Err(node_err(format!("output `{o}` is already defined")));
                }
                outs.push(Some(slot_of[o.as_str()]));
            }
            steps.push(Step {
                name,
                op_type: node.op_type.clone(),
                op,
                inputs: ins,
                outputs: outs,
                free: Vec::new(),
            });
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
            .filter(|s| s.name == out.name)
            .ok_or_else(|| {
                err(format!(
                    "graph output `{}` is not the contract's output",
                    out.name
                ))
            })?;
        let (elem, _) = value_type(out).map_err(|e| err(format!("graph output: {e}")))?;
        if Some(elem) != spec_dtype(&spec.dtype).map(|d| d.0) {
            return Err(err(format!(
                "graph output `{}` has element type {}, the contract says {}",
                out.name,
                data_type::name(elem),
                spec.dtype
            )));
        }
        let output = *slot_of
            .get(out.name.as_str())
            .ok_or_else(|| err(format!("graph output `{}` is never produced", out.name)))?;

        // Free every value after its last reader.
        let mut last_use: HashMap<usize, usize> = HashMap::new();
        for (k, s) in steps.iter().enumerate() {
            for slot in s.inputs.iter().flatten() {
                last_use.insert(*slot, k);
            }
        }
        for (slot, k) in last_use {
            if slot != output {
                steps[k].free.push(slot);
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            contract,
            inputs,
            output,
            consts,
            steps,
            slots: slot_of.len(),
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
        let mut values: Vec<Option<Tensor>> = vec![None; self.slots];
        for (slot, t) in &self.consts {
            values[*slot] = Some(t.clone());
        }
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
            values[spec.slot] = Some(t.to_device(&Device::Cpu)?);
        }
        if batch == Some(0) {
            let c = &self.contract;
            return Ok(Tensor::zeros(
                (0, c.horizon, c.quantiles.len()),
                DType::F32,
                &Device::Cpu,
            )?);
        }
        for step in &self.steps {
            let args = step
                .inputs
                .iter()
                .map(|s| s.and_then(|s| values[s].clone()))
                .collect::<Vec<_>>();
            let outs = eval(&step.op, &args).map_err(|e| Error::OnnxNode {
                path: self.path.clone(),
                node: step.name.clone(),
                op: step.op_type.clone(),
                source: Box::new(e),
            })?;
            for slot in &step.free {
                values[*slot] = None;
            }
            for (slot, t) in step.outputs.iter().zip(outs) {
                if let (Some(slot), Some(t)) = (slot, t) {
                    values[*slot] = Some(t);
                }
            }
        }
        values[self.output]
            .take()
            .ok_or_else(|| err("the graph did not produce its output".into()))
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

/// Normalises a possibly negative `axis` against `rank`.
fn norm_axis(axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if (0..r).contains(&a) {
        Ok(a as usize)
    } else {
        Err(invalid(format!(
            "axis {axis} is out of range for rank {rank}"
        )))
    }
}

fn arg(args: &[Option<Tensor>], i: usize) -> Result<&Tensor> {
    args.get(i)
        .and_then(Option::as_ref)
        .ok_or_else(|| invalid(format!("input {i} has no value")))
}

/// Both tensors broadcast to their common shape, as flat `i64` vectors.
fn int_pair(a: &Tensor, b: &Tensor) -> Result<(Vec<i64>, Vec<i64>, Shape)> {
    let shape = a.shape().broadcast_shape_binary_op(b.shape(), "onnx")?;
    let flat = |t: &Tensor| -> Result<Vec<i64>> {
        Ok(t.broadcast_as(&shape)?.flatten_all()?.to_vec1::<i64>()?)
    };
    Ok((flat(a)?, flat(b)?, shape))
}

fn same_dtype(a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dtype() == b.dtype() {
        Ok(())
    } else {
        Err(invalid(format!(
            "operands are {} and {}",
            dtype_name(a.dtype()),
            dtype_name(b.dtype())
        )))
    }
}

fn arith(op: Arith, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    same_dtype(a, b)?;
    if a.dtype() == DType::I64 {
        // Integer arithmetic wraps like ONNX runtimes; division by zero is
        // an error rather than a panic.
        let (x, y, shape) = int_pair(a, b)?;
        let out = x
            .iter()
            .zip(&y)
            .map(|(&x, &y)| match op {
                Arith::Add => Some(x.wrapping_add(y)),
                Arith::Sub => Some(x.wrapping_sub(y)),
                Arith::Mul => Some(x.wrapping_mul(y)),
                Arith::Div => x.checked_div(y),
                Arith::Mod => x.checked_rem(y).map(|r| {
                    // The result takes the divisor's sign (fmod = 0).
                    if r != 0 && (r < 0) != (y < 0) {
                        r + y
                    } else {
                        r
                    }
                }),
            })
            .collect::<Option<Vec<i64>>>()
            .ok_or_else(|| invalid("integer division by zero or overflow"))?;
        return Ok(Tensor::from_vec(out, shape, &Device::Cpu)?);
    }
    Ok(match op {
        Arith::Add => a.broadcast_add(b)?,
        Arith::Sub => a.broadcast_sub(b)?,
        Arith::Mul => a.broadcast_mul(b)?,
        Arith::Div => a.broadcast_div(b)?,
        Arith::Mod => return Err(invalid("Mod is only supported on int64")),
    })
}

fn float_only(x: &Tensor) -> Result<()> {
    match x.dtype() {
        DType::F32 | DType::F64 => Ok(()),
        d => Err(invalid(format!("{} is not supported here", dtype_name(d)))),
    }
}

fn unary(op: Unary, x: &Tensor) -> Result<Tensor> {
    if x.dtype() == DType::I64 {
        let v = x.flatten_all()?.to_vec1::<i64>()?;
        let out: Vec<i64> = match op {
            Unary::Neg => v.iter().map(|x| x.wrapping_neg()).collect(),
            Unary::Abs => v.iter().map(|x| x.wrapping_abs()).collect(),
            Unary::Identity => v,
            _ => return Err(invalid(format!("{op:?} is not supported on int64"))),
        };
        return Ok(Tensor::from_vec(out, x.shape(), &Device::Cpu)?);
    }
    if !matches!(op, Unary::Identity) {
        float_only(x)?;
    }
    Ok(match op {
        Unary::Neg => x.neg()?,
        Unary::Abs => x.abs()?,
        Unary::Exp => x.exp()?,
        Unary::Log => x.log()?,
        Unary::Sin => x.sin()?,
        Unary::Cos => x.cos()?,
        Unary::Relu => x.relu()?,
        // As the network computes it: relu(x) + log(1 + e^-|x|).
        Unary::Softplus => (x.relu()? + ((x.abs()?.neg()?.exp()? + 1.0)?).log()?)?,
        Unary::Identity => x.clone(),
    })
}

fn compare(op: Cmp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    same_dtype(a, b)?;
    Ok(match op {
        Cmp::Less => a.broadcast_lt(b)?,
        Cmp::LessOrEqual => a.broadcast_le(b)?,
        Cmp::Greater => a.broadcast_gt(b)?,
        Cmp::GreaterOrEqual => a.broadcast_ge(b)?,
        Cmp::Equal => a.broadcast_eq(b)?,
    })
}

/// Indices as `u32` after normalising negative ones against `dim`.
fn indices(ids: &Tensor, dim: usize) -> Result<Tensor> {
    if ids.dtype() != DType::I64 {
        return Err(invalid(format!(
            "indices are {}, expected int64",
            dtype_name(ids.dtype())
        )));
    }
    let v = ids.flatten_all()?.to_vec1::<i64>()?;
    let out = v
        .iter()
        .map(|&i| {
            let j = if i < 0 { i + dim as i64 } else { i };
            u32::try_from(j)
                .ok()
                .filter(|&j| (j as usize) < dim)
                .ok_or_else(|| {
                    invalid(format!(
                        "index {i} is out of range for a dimension of {dim}"
                    ))
                })
        })
        .collect::<Result<Vec<u32>>>()?;
    Ok(Tensor::from_vec(out, ids.shape(), &Device::Cpu)?)
}

fn rnn(r: &Recurrent, x: &Tensor) -> Result<Vec<Option<Tensor>>> {
    if x.rank() != 3 {
        return Err(invalid(format!(
            "X has shape {:?}, expected [seq, batch, input]",
            x.dims()
        )));
    }
    let xb = x.permute((1, 0, 2))?.contiguous()?;
    let seq_major =
        |h: &Tensor| -> Result<Tensor> { Ok(h.permute((1, 0, 2))?.contiguous()?.unsqueeze(1)?) };
    Ok(match r {
        Recurrent::Gru(layer) => {
            let out = layer.infer(&xb, None)?;
            vec![Some(seq_major(&out.hidden)?), Some(out.state.unsqueeze(0)?)]
        }
        Recurrent::Lstm(layer) => {
            let out = layer.infer(&xb, None)?;
            vec![
                Some(seq_major(&out.hidden)?),
                Some(out.state.h.unsqueeze(0)?),
                Some(out.state.c.unsqueeze(0)?),
            ]
        }
    })
}

/// Runs one operator.
fn eval(op: &Op, args: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>> {
    let one = |t: Tensor| Ok(vec![Some(t)]);
    match op {
        Op::Arith(a) => one(arith(*a, arg(args, 0)?, arg(args, 1)?)?),
        Op::Cmp(c) => one(compare(*c, arg(args, 0)?, arg(args, 1)?)?),
        Op::Unary(u) => one(unary(*u, arg(args, 0)?)?),
        Op::Max | Op::Min => {
            let mut acc = arg(args, 0)?.clone();
            for i in 1..args.len() {
                let b = arg(args, i)?;
                same_dtype(&acc, b)?;
                acc = if matches!(op, Op::Max) {
                    acc.broadcast_maximum(b)?
                } else {
                    acc.broadcast_minimum(b)?
                };
            }
            one(acc)
        }
        Op::Where => {
            let (c, x, y) = (arg(args, 0)?, arg(args, 1)?, arg(args, 2)?);
            if c.dtype() != DType::U8 {
                return Err(invalid("the condition must be bool"));
            }
            same_dtype(x, y)?;
            let shape = c
                .shape()
                .broadcast_shape_binary_op(x.shape(), "Where")?
                .broadcast_shape_binary_op(y.shape(), "Where")?;
            let b = |t: &Tensor| t.broadcast_as(&shape)?.contiguous();
            one(b(c)?.where_cond(&b(x)?, &b(y)?)?)
        }
        Op::Clip => {
            let mut x = arg(args, 0)?.clone();
            if let Some(lo) = args.get(1).and_then(Option::as_ref) {
                same_dtype(&x, lo)?;
                x = x.broadcast_maximum(lo)?;
            }
            if let Some(hi) = args.get(2).and_then(Option::as_ref) {
                same_dtype(&x, hi)?;
                x = x.broadcast_minimum(hi)?;
            }
            one(x)
        }
        Op::Cast(to) => {
            let x = arg(args, 0)?;
            if *to == DType::U8 && x.dtype() != DType::U8 {
                return one(x.ne(0f64)?);
            }
            one(x.to_dtype(*to)?)
        }
        Op::Concat(axis) => {
            let ts = (0..args.len())
                .map(|i| arg(args, i))
                .collect::<Result<Vec<_>>>()?;
            let axis = norm_axis(*axis, ts[0].rank())?;
            one(Tensor::cat(&ts, axis)?)
        }
        Op::Gather(axis) => {
            let (data, ids) = (arg(args, 0)?, arg(args, 1)?);
            let axis = norm_axis(*axis, data.rank())?;
            let dim = data.dim(axis)?;
            let ids_u = indices(ids, dim)?;
            let picked = data.index_select(&ids_u.flatten_all()?, axis)?;
            let mut dims = data.dims()[..axis].to_vec();
            dims.extend_from_slice(ids.dims());
            dims.extend_from_slice(&data.dims()[axis + 1..]);
            one(picked.reshape(dims)?)
        }
        Op::GatherElements(axis) => {
            let (data, ids) = (arg(args, 0)?, arg(args, 1)?);
            let axis = norm_axis(*axis, data.rank())?;
            let ids_u = indices(ids, data.dim(axis)?)?;
            one(data.contiguous()?.gather(&ids_u, axis)?)
        }
        Op::Transpose(perm) => {
            let x = arg(args, 0)?;
            let perm = perm
                .clone()
                .unwrap_or_else(|| (0..x.rank()).rev().collect());
            let mut seen = perm.clone();
            seen.sort_unstable();
            if seen != (0..x.rank()).collect::<Vec<_>>() {
                return Err(invalid(format!(
                    "perm {perm:?} is not a permutation of rank {}",
                    x.rank()
                )));
            }
            one(x.permute(perm)?.contiguous()?)
        }
        Op::Reshape(shape) => {
            let x = arg(args, 0)?;
            let mut dims = Vec::with_capacity(shape.len());
            let mut infer = None;
            for (i, &s) in shape.iter().enumerate() {
                match s {
                    0 => dims.push(*x.dims().get(i).ok_or_else(|| {
                        invalid(format!("shape entry {i} copies a missing dimension"))
                    })?),
                    -1 if infer.is_none() => {
                        infer = Some(i);
                        dims.push(1);
                    }
                    s if s > 0 => dims.push(s as usize),
                    s => return Err(invalid(format!("bad shape entry {s}"))),
                }
            }
            if let Some(i) = infer {
                let known: usize = dims.iter().product();
                if known == 0 || x.elem_count() % known != 0 {
                    return Err(invalid(format!(
                        "cannot reshape {:?} to {shape:?}",
                        x.dims()
                    )));
                }
                dims[i] = x.elem_count() / known;
            }
            one(x.reshape(dims)?)
        }
        Op::Squeeze(axes) => {
            let x = arg(args, 0)?;
            let rank = x.rank();
            let drop: Vec<usize> = match axes {
                Some(a) => a
                    .iter()
                    .map(|&a| norm_axis(a, rank))
                    .collect::<Result<_>>()?,
                None => (0..rank).filter(|&i| x.dims()[i] == 1).collect(),
            };
            if let Some(&a) = drop.iter().find(|&&a| x.dims()[a] != 1) {
                return Err(invalid(format!(
                    "cannot squeeze axis {a} of shape {:?}",
                    x.dims()
                )));
            }
            let dims: Vec<usize> = (0..rank)
                .filter(|i| !drop.contains(i))
                .map(|i| x.dims()[i])
                .collect();
            one(x.reshape(dims)?)
        }
        Op::Unsqueeze(axes) => {
            let x = arg(args, 0)?;
            let rank = x.rank() + axes.len();
            let mut at: Vec<usize> = axes
                .iter()
                .map(|&a| norm_axis(a, rank))
                .collect::<Result<_>>()?;
            at.sort_unstable();
            at.dedup();
            if at.len() != axes.len() {
                return Err(invalid(format!("axes {axes:?} repeat")));
            }
            let mut src = x.dims().iter();
            let dims: Vec<usize> = (0..rank)
                .map(|i| {
                    if at.contains(&i) {
                        1
                    } else {
                        *src.next().expect("rank counts the source dims")
                    }
                })
                .collect();
            one(x.reshape(dims)?)
        }
        Op::Slice { starts, ends, axes } => {
            let mut x = arg(args, 0)?.clone();
            for (i, (&s, &e)) in starts.iter().zip(ends).enumerate() {
                let axis = match axes {
                    Some(a) => norm_axis(a[i], x.rank())?,
                    None => norm_axis(i as i64, x.rank())?,
                };
                let dim = x.dim(axis)? as i64;
                let clamp = |v: i64| {
                    let v = if v < 0 { v.saturating_add(dim) } else { v };
                    v.clamp(0, dim) as usize
                };
                let (s, e) = (clamp(s), clamp(e));
                x = x.narrow(axis, s, e.saturating_sub(s))?;
            }
            one(x)
        }
        Op::Reduce {
            how,
            axes,
            keepdims,
        } => {
            let x = arg(args, 0)?;
            let rank = x.rank();
            let mut axes: Vec<usize> = match axes {
                Some(a) if !a.is_empty() => a
                    .iter()
                    .map(|&a| norm_axis(a, rank))
                    .collect::<Result<_>>()?,
                _ => (0..rank).collect(),
            };
            axes.sort_unstable();
            axes.dedup();
            let mut y = x.clone();
            for &a in axes.iter().rev() {
                y = match (how, *keepdims) {
                    (Reduction::Sum, true) => y.sum_keepdim(a)?,
                    (Reduction::Sum, false) => y.sum(a)?,
                    (Reduction::Max, true) => y.max_keepdim(a)?,
                    (Reduction::Max, false) => y.max(a)?,
                    (Reduction::Min, true) => y.min_keepdim(a)?,
                    (Reduction::Min, false) => y.min(a)?,
                };
            }
            one(y)
        }
        Op::MatMul => {
            let (a, b) = (arg(args, 0)?, arg(args, 1)?);
            same_dtype(a, b)?;
            float_only(a)?;
            if a.rank() < 2 || b.rank() < 2 {
                return Err(invalid("MatMul of vectors is not supported"));
            }
            if a.rank() == 2 && b.rank() == 2 {
                one(a.matmul(b)?)
            } else {
                one(a.broadcast_matmul(b)?)
            }
        }
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
        } => {
            let (mut a, mut b) = (arg(args, 0)?.clone(), arg(args, 1)?.clone());
            same_dtype(&a, &b)?;
            float_only(&a)?;
            if a.rank() != 2 || b.rank() != 2 {
                return Err(invalid("Gemm takes 2-D operands"));
            }
            if *trans_a {
                a = a.t()?;
            }
            if *trans_b {
                b = b.t()?;
            }
            let mut y = a.matmul(&b)?;
            if *alpha != 1.0 {
                y = (y * f64::from(*alpha))?;
            }
            if let Some(c) = args.get(2).and_then(Option::as_ref) {
                let c = if *beta != 1.0 {
                    (c * f64::from(*beta))?
                } else {
                    c.clone()
                };
                y = y.broadcast_add(&c)?;
            }
            Ok(vec![Some(y)])
        }
        Op::Rnn(r) => rnn(r, arg(args, 0)?),
    }
}

/// Runs one node of a graph on `x` as its first input, the rest from
/// `inits` (the recurrent-node reference test).
#[cfg(test)]
pub(super) fn run_node(node: &NodeProto, inits: &[TensorProto], x: Tensor) -> Result<Vec<Tensor>> {
    let mut consts = HashMap::new();
    for t in inits {
        consts.insert(t.name.as_str(), tensor_from_proto(t)?);
    }
    let op = parse_op(node, &consts)?;
    let mut args = vec![Some(x)];
    args.extend(
        node.input
            .iter()
            .skip(1)
            .map(|n| consts.get(n.as_str()).cloned()),
    );
    Ok(eval(&op, &args)?.into_iter().flatten().collect())
}
