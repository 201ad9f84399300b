//! The recurrence from Candle's standard tensor ops, for devices the fused
//! CPU kernels of [`crate::fused`] do not run on (CUDA): the layer loops
//! over the steps and each cell's
//! [`portable_step`](crate::cell::CellKernels::portable_step) updates the
//! state. Autograd goes through Candle's own ops.
//!
//! The input is split into one `[batch, features]` tensor per step once,
//! and each layer maps that list to the next, so no step slices a long
//! tensor that carries gradients (the network's input is data and carries
//! none): slicing one per step makes Candle allocate a zero tensor of its
//! full size per step in the backward pass, which goes quadratic in the
//! sequence length.

use candle_core::Tensor;

use crate::error::{Error, Result};

/// The steps of `x` `[batch, seq, input]` as `seq` tensors `[batch,
/// input]`; the input of `op` must have at least one step and row.
pub(crate) fn steps(x: &Tensor, op: &'static str, input: usize) -> Result<Vec<Tensor>> {
    let &[batch, seq, width] = x.dims() else {
        return Err(shape_error(x, op, input));
    };
    if batch == 0 || seq == 0 || width != input {
        return Err(shape_error(x, op, input));
    }
    (0..seq)
        .map(|t| Ok(x.narrow(1, t, 1)?.squeeze(1)?))
        .collect()
}

/// `1 / (1 + e^-x)`.
pub(crate) fn sigmoid(x: &Tensor) -> Result<Tensor> {
    Ok((x.neg()?.exp()? + 1.0)?.recip()?)
}

/// `x @ w^T + b` for one step: `x` `[batch, in]`, `w_t` `[in, out]` (already
/// transposed), `b` `[out]`.
pub(crate) fn affine(x: &Tensor, w_t: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = x.matmul(w_t)?;
    Ok(match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// Gate `k` of width `h` from the stacked gates `g` `[batch, n * h]`.
pub(crate) fn gate(g: &Tensor, k: usize, h: usize) -> Result<Tensor> {
    Ok(g.narrow(1, k * h, h)?)
}

fn shape_error(x: &Tensor, op: &'static str, input: usize) -> Error {
    Error::Shape {
        op,
        tensor: "input",
        actual: x.dims().to_vec(),
        expected: format!("[batch >= 1, seq >= 1, {input}]"),
    }
}
