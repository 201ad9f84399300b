//! GRU layers whose whole-sequence recurrence is one Candle custom op with a
//! hand-written backward pass.
//!
//! Weights use PyTorch's names and layouts (`weight_ih_l{k}` `[3H, I]`,
//! `weight_hh_l{k}` `[3H, H]`, `bias_ih_l{k}`, `bias_hh_l{k}`, gates r, z,
//! n), so a PyTorch `nn.GRU(batch_first=True)` state dict or a candle-nn
//! `GRU` loads unchanged. The update is PyTorch's:
//!
//! ```text
//! r  = σ(W_ir x + b_ir + W_hr h + b_hr)
//! z  = σ(W_iz x + b_iz + W_hz h + b_hz)
//! n  = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
//! h' = (1 − z) ⊙ n + z ⊙ h
//! ```

mod cell;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::portable;
use crate::seq_out::{SeqOp, Shared};
use crate::storage::{self, cpu_f32, with_f32};

const OP: &str = "gru";

/// Shape of a GRU stack; saved next to the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GruConfig {
    /// Features per time step of the input.
    pub input_size: usize,
    /// Width of the hidden state.
    pub hidden_size: usize,
    /// Stacked layers; layer `k > 0` reads layer `k - 1`'s hidden sequence.
    #[serde(default = "one")]
    pub num_layers: usize,
    /// Whether the layers have `bias_ih` / `bias_hh`.
    #[serde(default = "yes")]
    pub bias: bool,
}

fn one() -> usize {
    1
}

fn yes() -> bool {
    true
}

impl GruConfig {
    /// One layer with biases.
    pub fn new(input_size: usize, hidden_size: usize) -> Self {
        Self {
            input_size,
            hidden_size,
            num_layers: 1,
            bias: true,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        for (field, value) in [
            ("input_size", self.input_size),
            ("hidden_size", self.hidden_size),
            ("num_layers", self.num_layers),
        ] {
            if value == 0 {
                return Err(Error::Config {
                    field,
                    value,
                    reason: "must be at least 1",
                });
            }
        }
        Ok(())
    }
}

/// Result of running one layer over a sequence.
#[derive(Debug, Clone)]
pub struct GruOutput {
    /// Hidden state at every step, `[batch, seq, hidden]`.
    pub hidden: Tensor,
    /// Hidden state after the last step, `[batch, hidden]`.
    pub state: Tensor,
}

/// One GRU layer's weights in PyTorch layout.
#[derive(Debug, Clone)]
pub struct GruLayer {
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Option<Tensor>,
    b_hh: Option<Tensor>,
    input_size: usize,
    hidden_size: usize,
}

impl GruLayer {
    /// Loads (or, with a `VarMap`-backed builder, creates) layer `layer` from
    /// `vb`, initialised like PyTorch: uniform in `±1/sqrt(hidden)`.
    pub fn new(
        input_size: usize,
        hidden_size: usize,
        bias: bool,
        layer: usize,
        vb: &VarBuilder<'_>,
    ) -> Result<Self> {
        let g = 3 * hidden_size;
        let k = 1.0 / (hidden_size as f64).sqrt();
        let init = Init::Uniform { lo: -k, up: k };
        let w_ih = vb.get_with_hints((g, input_size), &format!("weight_ih_l{layer}"), init)?;
        let w_hh = vb.get_with_hints((g, hidden_size), &format!("weight_hh_l{layer}"), init)?;
        let (b_ih, b_hh) = if bias {
            (
                Some(vb.get_with_hints(g, &format!("bias_ih_l{layer}"), init)?),
                Some(vb.get_with_hints(g, &format!("bias_hh_l{layer}"), init)?),
            )
        } else {
            (None, None)
        };
        Self::from_tensors(w_ih, w_hh, b_ih, b_hh)
    }

    /// Wraps existing tensors, checking their shapes.
    pub fn from_tensors(
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Option<Tensor>,
        b_hh: Option<Tensor>,
    ) -> Result<Self> {
        let (g, input_size) = w_ih.dims2()?;
        if g % 3 != 0 || g == 0 || input_size == 0 {
            return Err(Error::Shape {
                op: OP,
                tensor: "weight_ih",
                actual: w_ih.dims().to_vec(),
                expected: "[3 * hidden, input] with hidden, input >= 1".to_owned(),
            });
        }
        let hidden_size = g / 3;
        storage::check(&w_ih, OP, "weight_ih", &[g, input_size])?;
        storage::check(&w_hh, OP, "weight_hh", &[g, hidden_size])?;
        for (t, name) in [(&b_ih, "bias_ih"), (&b_hh, "bias_hh")] {
            if let Some(t) = t {
                storage::check(t, OP, name, &[g])?;
            }
        }
        Ok(Self {
            w_ih,
            w_hh,
            b_ih,
            b_hh,
            input_size,
            hidden_size,
        })
    }

    /// Width of the hidden state.
    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// Features per input step.
    pub fn input_size(&self) -> usize {
        self.input_size
    }

    /// Runs the layer over `x` `[batch, seq, input]` from the hidden state
    /// `state` `[batch, hidden]` (zeros when `None`). Records the op for
    /// autograd when any input needs gradients; otherwise takes the inference
    /// path, which keeps no activations.
    pub fn forward(&self, x: &Tensor, state: Option<&Tensor>) -> Result<GruOutput> {
        let tracked = x.track_op()
            || self.w_ih.track_op()
            || self.w_hh.track_op()
            || self.b_ih.as_ref().is_some_and(Tensor::track_op)
            || self.b_hh.as_ref().is_some_and(Tensor::track_op)
            || state.is_some_and(Tensor::track_op);
        if tracked {
            self.forward_train(x, state)
        } else {
            self.infer(x, state)
        }
    }

    /// Runs the layer without recording anything for autograd, even when the
    /// weights are trainable variables: the serving path.
    pub fn infer(&self, x: &Tensor, state: Option<&Tensor>) -> Result<GruOutput> {
        let d = self.dims(x, state)?;
        let bias = self.bias_vec()?;
        let state0 = state
            .map(|s| s.flatten_all()?.to_vec1::<f32>())
            .transpose()?;
        let out = with_f32(x, OP, "input", |xs| {
            with_f32(&self.w_ih, OP, "weight_ih", |wi| {
                with_f32(&self.w_hh, OP, "weight_hh", |wh| {
                    Ok(cell::forward(d, xs, wi, wh, &bias, state0.as_deref(), false).0)
                })
            })
        })?;
        let out = Tensor::from_vec(out, (d.batch, d.seq, d.hidden), &Device::Cpu)?;
        split_output(out, d)
    }

    fn forward_train(&self, x: &Tensor, state: Option<&Tensor>) -> Result<GruOutput> {
        let d = self.dims(x, state)?;
        let g = d.gates();
        let bias = |b: &Option<Tensor>| match b {
            Some(b) => Ok(b.clone()),
            None => Tensor::zeros(g, DType::F32, x.device()),
        };
        let params = Tensor::cat(
            &[
                self.w_ih.flatten_all()?,
                self.w_hh.flatten_all()?,
                bias(&self.b_ih)?,
                bias(&self.b_hh)?,
            ],
            0,
        )?;
        let state0 = match state {
            Some(s) => s.clone(),
            None => Tensor::zeros((d.batch, d.hidden), DType::F32, x.device())?,
        };
        let shared = Shared::new(OP);
        let op = GruOp {
            dims: d,
            shared: Arc::clone(&shared),
        };
        let state = x.contiguous()?.apply_op3(&params, &state0, op)?;
        let hidden = state.apply_op1(SeqOp {
            name: "shardcast-gru-seq",
            dims: (d.batch, d.seq, d.hidden),
            shared,
        })?;
        Ok(GruOutput { hidden, state })
    }

    fn dims(&self, x: &Tensor, state: Option<&Tensor>) -> Result<cell::Dims> {
        let bad = || Error::Shape {
            op: OP,
            tensor: "input",
            actual: x.dims().to_vec(),
            expected: format!("[batch >= 1, seq >= 1, {}]", self.input_size),
        };
        let &[batch, seq, input] = x.dims() else {
            return Err(bad());
        };
        if batch == 0 || seq == 0 || input != self.input_size {
            return Err(bad());
        }
        storage::check(x, OP, "input", &[batch, seq, input])?;
        if let Some(s) = state {
            storage::check(s, OP, "h0", &[batch, self.hidden_size])?;
        }
        Ok(cell::Dims {
            batch,
            seq,
            input,
            hidden: self.hidden_size,
        })
    }

    /// The layer from standard tensor ops on any device (see
    /// [`crate::portable`]): per-step inputs `xs` (`[batch, input]` each) to
    /// per-step hidden states; the last is the final state.
    fn forward_portable(&self, xs: &[Tensor], state: Option<&Tensor>) -> Result<Vec<Tensor>> {
        let hs = self.hidden_size;
        let (w_ih, w_hh) = (self.w_ih.t()?, self.w_hh.t()?);
        let mut h = match state {
            Some(s) => s.clone(),
            None => Tensor::zeros((xs[0].dim(0)?, hs), DType::F32, xs[0].device())?,
        };
        let mut out = Vec::with_capacity(xs.len());
        for x in xs {
            let gi = portable::affine(x, &w_ih, self.b_ih.as_ref())?;
            let gh = portable::affine(&h, &w_hh, self.b_hh.as_ref())?;
            let r =
                portable::sigmoid(&(portable::gate(&gi, 0, hs)? + portable::gate(&gh, 0, hs)?)?)?;
            let z =
                portable::sigmoid(&(portable::gate(&gi, 1, hs)? + portable::gate(&gh, 1, hs)?)?)?;
            let n = (portable::gate(&gi, 2, hs)? + (r * portable::gate(&gh, 2, hs)?)?)?.tanh()?;
            // (1 - z) n + z h = n + z (h - n)
            h = (&n + (z * (&h - &n)?)?)?;
            out.push(h.clone());
        }
        Ok(out)
    }

    /// `b_ih | b_hh`, zeros for a missing one.
    fn bias_vec(&self) -> Result<Vec<f32>> {
        let g = 3 * self.hidden_size;
        let mut bias = vec![0.0f32; 2 * g];
        for (dst, b) in bias.chunks_exact_mut(g).zip([&self.b_ih, &self.b_hh]) {
            if let Some(b) = b {
                dst.copy_from_slice(&b.to_vec1::<f32>()?);
            }
        }
        Ok(bias)
    }
}

fn split_output(hidden: Tensor, d: cell::Dims) -> Result<GruOutput> {
    Ok(GruOutput {
        state: hidden.narrow(1, d.seq - 1, 1)?.squeeze(1)?,
        hidden,
    })
}

/// The whole-sequence op: `(x [B,T,I], params [3H*I + 3H*H + 3H + 3H],
/// h0 [B, H]) -> [B, H]`, the final hidden state. `params` is `W_ih`,
/// `W_hh`, `b_ih`, `b_hh` flattened and concatenated. The hidden sequence
/// is a [`SeqOp`] on this result (see [`crate::seq_out`]).
struct GruOp {
    dims: cell::Dims,
    shared: Arc<Shared<cell::Saved>>,
}

impl GruOp {
    fn split_params<'a>(&self, p: &'a [f32]) -> Result<(&'a [f32], &'a [f32], &'a [f32])> {
        let d = self.dims;
        let g = d.gates();
        let (n_ih, n_hh) = (g * d.input, g * d.hidden);
        if p.len() != n_ih + n_hh + 2 * g {
            return Err(Error::Shape {
                op: OP,
                tensor: "params",
                actual: vec![p.len()],
                expected: format!("[{}]", n_ih + n_hh + 2 * g),
            });
        }
        let (w_ih, rest) = p.split_at(n_ih);
        let (w_hh, bias) = rest.split_at(n_hh);
        Ok((w_ih, w_hh, bias))
    }

    fn fwd(
        &self,
        x: (&CpuStorage, &Layout),
        params: (&CpuStorage, &Layout),
        state0: (&CpuStorage, &Layout),
    ) -> Result<(CpuStorage, Shape)> {
        let d = self.dims;
        let xs = cpu_f32(x.0, x.1, OP, "input")?;
        let ps = cpu_f32(params.0, params.1, OP, "params")?;
        let s0 = cpu_f32(state0.0, state0.1, OP, "state0")?;
        if xs.len() != d.batch * d.seq * d.input || s0.len() != d.batch * d.hidden {
            return Err(Error::Shape {
                op: OP,
                tensor: "input",
                actual: x.1.dims().to_vec(),
                expected: format!("[{}, {}, {}]", d.batch, d.seq, d.input),
            });
        }
        let (w_ih, w_hh, bias) = self.split_params(ps)?;
        let (hseq, saved) = cell::forward(d, xs, w_ih, w_hh, bias, Some(s0), true);
        let (t, h) = (d.seq, d.hidden);
        let mut fin = Vec::with_capacity(d.batch * h);
        for row in hseq.chunks_exact(t * h) {
            fin.extend_from_slice(&row[(t - 1) * h..]);
        }
        self.shared.put(saved, hseq);
        Ok((CpuStorage::F32(fin), Shape::from((d.batch, h))))
    }

    fn bwd(&self, x: &Tensor, params: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let d = self.dims;
        let (b, t, i, h, g) = (d.batch, d.seq, d.input, d.hidden, d.gates());
        let saved = self.shared.saved()?;
        let dseq = self.shared.take_dseq();
        let grads = with_f32(params, OP, "params", |ps| {
            let (w_ih, w_hh, _) = self.split_params(ps)?;
            with_f32(grad, OP, "final state grad", |dfin| {
                let run = |dseq: Option<&[f32]>| cell::backward(d, saved, dseq, dfin, w_ih, w_hh);
                match &dseq {
                    Some(t) => with_f32(t, OP, "hidden grad", |s| Ok(run(Some(s)))),
                    None => Ok(run(None)),
                }
            })
        })?;
        let dev = x.device();
        // `[dW_ih | dW_hh | db_ih | db_hh]`, the weights from the transposed
        // `[I + H, 3H]` gradient whose input rows have the gates in the
        // order n, r, z.
        let dw_t = &grads.dw_t;
        let mut dparams = Vec::with_capacity(g * (i + h + 2));
        for q in 0..g {
            let col = if q < 2 * h { q + h } else { q - 2 * h };
            dparams.extend((0..i).map(|p| dw_t[p * g + col]));
        }
        for q in 0..g {
            dparams.extend((i..i + h).map(|p| dw_t[p * g + q]));
        }
        let sums = &grads.sums;
        let (s_n, s_rz, s_hn) = (&sums[..h], &sums[h..3 * h], &sums[3 * h..]);
        for part in [s_rz, s_n, s_rz, s_hn] {
            dparams.extend_from_slice(part);
        }
        let dparams = Tensor::from_vec(dparams, g * (i + h + 2), dev)?;
        let dx = Tensor::from_vec(grads.dx, (b, t, i), dev)?;
        let dstate0 = Tensor::from_vec(grads.dh0, (b, h), dev)?;
        Ok((dx, dparams, dstate0))
    }
}

impl CustomOp3 for GruOp {
    fn name(&self) -> &'static str {
        "shardcast-gru"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.fwd((s1, l1), (s2, l2), (s3, l3))
            .map_err(candle_core::Error::wrap)
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        _state0: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dp, ds) = GruOp::bwd(self, x, params, grad).map_err(candle_core::Error::wrap)?;
        Ok((Some(dx), Some(dp), Some(ds)))
    }
}

/// A stack of GRU layers, as PyTorch's `nn.GRU(batch_first=True)`.
#[derive(Debug, Clone)]
pub struct Gru {
    config: GruConfig,
    layers: Vec<GruLayer>,
}

/// Result of running the stack.
#[derive(Debug, Clone)]
pub struct GruStackOutput {
    /// The last layer's hidden sequence, `[batch, seq, hidden]`.
    pub hidden: Tensor,
    /// Each layer's final hidden state, `[batch, hidden]`.
    pub states: Vec<Tensor>,
}

impl Gru {
    /// Builds the stack from `vb` (weights named `weight_ih_l0`, ... in its
    /// scope).
    pub fn new(config: GruConfig, vb: VarBuilder<'_>) -> Result<Self> {
        config.validate()?;
        let layers = (0..config.num_layers)
            .map(|k| {
                let input = if k == 0 {
                    config.input_size
                } else {
                    config.hidden_size
                };
                GruLayer::new(input, config.hidden_size, config.bias, k, &vb)
            })
            .collect::<Result<_>>()?;
        Ok(Self { config, layers })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &GruConfig {
        &self.config
    }

    /// The layers, first to last.
    pub fn layers(&self) -> &[GruLayer] {
        &self.layers
    }

    /// Runs the stack from zero states.
    pub fn forward(&self, x: &Tensor) -> Result<GruStackOutput> {
        self.forward_with_state(x, None)
    }

    /// Runs the stack from the given per-layer hidden states.
    pub fn forward_with_state(
        &self,
        x: &Tensor,
        states: Option<&[Tensor]>,
    ) -> Result<GruStackOutput> {
        self.run(x, states, GruLayer::forward)
    }

    /// Runs the stack without recording anything for autograd.
    pub fn infer(&self, x: &Tensor, states: Option<&[Tensor]>) -> Result<GruStackOutput> {
        self.run(x, states, GruLayer::infer)
    }

    fn run(
        &self,
        x: &Tensor,
        states: Option<&[Tensor]>,
        f: impl Fn(&GruLayer, &Tensor, Option<&Tensor>) -> Result<GruOutput>,
    ) -> Result<GruStackOutput> {
        if let Some(s) = states
            && s.len() != self.layers.len()
        {
            return Err(Error::Config {
                field: "states",
                value: s.len(),
                reason: "need one state per layer",
            });
        }
        if !x.device().is_cpu() {
            return self.run_portable(x, states);
        }
        let mut hidden = x.clone();
        let mut out_states = Vec::with_capacity(self.layers.len());
        for (k, layer) in self.layers.iter().enumerate() {
            let out = f(layer, &hidden, states.map(|s| &s[k]))?;
            hidden = out.hidden;
            out_states.push(out.state);
        }
        Ok(GruStackOutput {
            hidden,
            states: out_states,
        })
    }

    /// The stack from standard tensor ops (see [`crate::portable`]): what
    /// runs on a device other than the CPU.
    pub(crate) fn run_portable(
        &self,
        x: &Tensor,
        states: Option<&[Tensor]>,
    ) -> Result<GruStackOutput> {
        let mut xs = portable::steps(x, OP, self.config.input_size)?;
        let mut out_states = Vec::with_capacity(self.layers.len());
        for (k, layer) in self.layers.iter().enumerate() {
            xs = layer.forward_portable(&xs, states.map(|s| &s[k]))?;
            out_states.push(xs.last().expect("at least one step").clone());
        }
        Ok(GruStackOutput {
            hidden: Tensor::stack(&xs, 1)?,
            states: out_states,
        })
    }
}
