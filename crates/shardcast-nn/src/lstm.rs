//! LSTM layers whose whole-sequence recurrence is one Candle custom op with a
//! hand-written backward pass.
//!
//! Weights use PyTorch's names and layouts (`weight_ih_l{k}` `[4H, I]`,
//! `weight_hh_l{k}` `[4H, H]`, `bias_ih_l{k}`, `bias_hh_l{k}`, gates i, f, g,
//! o), so a PyTorch `nn.LSTM(batch_first=True)` state dict or a candle-nn
//! `LSTM` loads unchanged.

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

const OP: &str = "lstm";

/// Shape of an LSTM stack; saved next to the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LstmConfig {
    /// Features per time step of the input.
    pub input_size: usize,
    /// Width of the hidden and cell state.
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

impl LstmConfig {
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

/// Hidden and cell state of one layer, each `[batch, hidden]`.
#[derive(Debug, Clone)]
pub struct LstmState {
    /// Hidden state.
    pub h: Tensor,
    /// Cell state.
    pub c: Tensor,
}

/// Result of running one layer over a sequence.
#[derive(Debug, Clone)]
pub struct LstmOutput {
    /// Hidden state at every step, `[batch, seq, hidden]`.
    pub hidden: Tensor,
    /// State after the last step.
    pub state: LstmState,
}

/// One LSTM layer's weights in PyTorch layout.
#[derive(Debug, Clone)]
pub struct LstmLayer {
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Option<Tensor>,
    b_hh: Option<Tensor>,
    input_size: usize,
    hidden_size: usize,
}

impl LstmLayer {
    /// Loads (or, with a `VarMap`-backed builder, creates) layer `layer` from
    /// `vb`, initialised like PyTorch: uniform in `±1/sqrt(hidden)`.
    pub fn new(
        input_size: usize,
        hidden_size: usize,
        bias: bool,
        layer: usize,
        vb: &VarBuilder<'_>,
    ) -> Result<Self> {
        let g = 4 * hidden_size;
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
        if g % 4 != 0 || g == 0 || input_size == 0 {
            return Err(Error::Shape {
                op: OP,
                tensor: "weight_ih",
                actual: w_ih.dims().to_vec(),
                expected: "[4 * hidden, input] with hidden, input >= 1".to_owned(),
            });
        }
        let hidden_size = g / 4;
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

    /// Runs the layer over `x` `[batch, seq, input]` from `state` (zeros when
    /// `None`). Records the op for autograd when any input needs gradients;
    /// otherwise takes the inference path, which keeps no activations.
    pub fn forward(&self, x: &Tensor, state: Option<&LstmState>) -> Result<LstmOutput> {
        let tracked = x.track_op()
            || self.w_ih.track_op()
            || self.w_hh.track_op()
            || self.b_ih.as_ref().is_some_and(Tensor::track_op)
            || self.b_hh.as_ref().is_some_and(Tensor::track_op)
            || state.is_some_and(|s| s.h.track_op() || s.c.track_op());
        if tracked {
            self.forward_train(x, state)
        } else {
            self.infer(x, state)
        }
    }

    /// Runs the layer without recording anything for autograd, even when the
    /// weights are trainable variables: the serving path.
    pub fn infer(&self, x: &Tensor, state: Option<&LstmState>) -> Result<LstmOutput> {
        let d = self.dims(x, state)?;
        let bias = self.bias_vec()?;
        let state0 = state.map(|s| state_rows(s, d)).transpose()?;
        let (hseq, fin, _) = with_f32(x, OP, "input", |xs| {
            with_f32(&self.w_ih, OP, "weight_ih", |wi| {
                with_f32(&self.w_hh, OP, "weight_hh", |wh| {
                    Ok(cell::forward(
                        d,
                        xs,
                        wi,
                        wh,
                        &bias,
                        state0.as_deref(),
                        false,
                    ))
                })
            })
        })?;
        let hidden = Tensor::from_vec(hseq, (d.batch, d.seq, d.hidden), &Device::Cpu)?;
        let fin = Tensor::from_vec(fin, (d.batch, 2 * d.hidden), &Device::Cpu)?;
        split_output(hidden, &fin, d)
    }

    fn forward_train(&self, x: &Tensor, state: Option<&LstmState>) -> Result<LstmOutput> {
        let d = self.dims(x, state)?;
        let bias = match (&self.b_ih, &self.b_hh) {
            (Some(a), Some(b)) => (a + b)?,
            (Some(b), None) | (None, Some(b)) => b.clone(),
            (None, None) => Tensor::zeros(4 * d.hidden, DType::F32, x.device())?,
        };
        let params = Tensor::cat(
            &[self.w_ih.flatten_all()?, self.w_hh.flatten_all()?, bias],
            0,
        )?;
        let state0 = match state {
            Some(s) => Tensor::cat(&[&s.h, &s.c], 1)?,
            None => Tensor::zeros((d.batch, 2 * d.hidden), DType::F32, x.device())?,
        };
        let shared = Shared::new(OP);
        let op = LstmOp {
            dims: d,
            shared: Arc::clone(&shared),
        };
        let fin = x.contiguous()?.apply_op3(&params, &state0, op)?;
        let hidden = fin.apply_op1(SeqOp {
            name: "shardcast-lstm-seq",
            dims: (d.batch, d.seq, d.hidden),
            shared,
        })?;
        split_output(hidden, &fin, d)
    }

    fn dims(&self, x: &Tensor, state: Option<&LstmState>) -> Result<cell::Dims> {
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
            storage::check(&s.h, OP, "h0", &[batch, self.hidden_size])?;
            storage::check(&s.c, OP, "c0", &[batch, self.hidden_size])?;
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
    /// per-step hidden states and the final state.
    fn forward_portable(
        &self,
        xs: &[Tensor],
        state: Option<&LstmState>,
    ) -> Result<(Vec<Tensor>, LstmState)> {
        let hs = self.hidden_size;
        let (w_ih, w_hh) = (self.w_ih.t()?, self.w_hh.t()?);
        let bias = match (&self.b_ih, &self.b_hh) {
            (Some(a), Some(b)) => Some((a + b)?),
            (a, b) => a.clone().or_else(|| b.clone()),
        };
        let (mut h, mut c) = match state {
            Some(s) => (s.h.clone(), s.c.clone()),
            None => {
                let zeros = Tensor::zeros((xs[0].dim(0)?, hs), DType::F32, xs[0].device())?;
                (zeros.clone(), zeros)
            }
        };
        let mut out = Vec::with_capacity(xs.len());
        for x in xs {
            let g = (portable::affine(x, &w_ih, bias.as_ref())? + h.matmul(&w_hh)?)?;
            let i = portable::sigmoid(&portable::gate(&g, 0, hs)?)?;
            let f = portable::sigmoid(&portable::gate(&g, 1, hs)?)?;
            let cand = portable::gate(&g, 2, hs)?.tanh()?;
            let o = portable::sigmoid(&portable::gate(&g, 3, hs)?)?;
            c = ((f * &c)? + (i * cand)?)?;
            h = (o * c.tanh()?)?;
            out.push(h.clone());
        }
        Ok((out, LstmState { h, c }))
    }

    fn bias_vec(&self) -> Result<Vec<f32>> {
        let mut bias = vec![0.0f32; 4 * self.hidden_size];
        for b in [&self.b_ih, &self.b_hh].into_iter().flatten() {
            for (acc, v) in bias.iter_mut().zip(b.to_vec1::<f32>()?) {
                *acc += v;
            }
        }
        Ok(bias)
    }
}

/// `[B, 2H]` rows `h0 | c0` for the kernel.
fn state_rows(s: &LstmState, d: cell::Dims) -> Result<Vec<f32>> {
    let h = s.h.flatten_all()?.to_vec1::<f32>()?;
    let c = s.c.flatten_all()?.to_vec1::<f32>()?;
    let mut rows = Vec::with_capacity(2 * h.len());
    for (hr, cr) in h.chunks(d.hidden).zip(c.chunks(d.hidden)) {
        rows.extend_from_slice(hr);
        rows.extend_from_slice(cr);
    }
    Ok(rows)
}

/// The output from the hidden sequence and the final state `[B, 2H]`.
fn split_output(hidden: Tensor, fin: &Tensor, d: cell::Dims) -> Result<LstmOutput> {
    let h = d.hidden;
    Ok(LstmOutput {
        state: LstmState {
            h: fin.narrow(1, 0, h)?,
            c: fin.narrow(1, h, h)?,
        },
        hidden,
    })
}

/// The whole-sequence op: `(x [B,T,I], params [4H*I + 4H*H + 4H], state0
/// [B, 2H]) -> [B, 2H]`, the final state `h_T | c_T`. The hidden sequence
/// is a [`SeqOp`] on this result (see [`crate::seq_out`]).
struct LstmOp {
    dims: cell::Dims,
    shared: Arc<Shared<cell::Saved>>,
}

impl LstmOp {
    fn split_params<'a>(&self, p: &'a [f32]) -> Result<(&'a [f32], &'a [f32], &'a [f32])> {
        let d = self.dims;
        let g = 4 * d.hidden;
        let (n_ih, n_hh) = (g * d.input, g * d.hidden);
        if p.len() != n_ih + n_hh + g {
            return Err(Error::Shape {
                op: OP,
                tensor: "params",
                actual: vec![p.len()],
                expected: format!("[{}]", n_ih + n_hh + g),
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
        if xs.len() != d.batch * d.seq * d.input || s0.len() != d.batch * 2 * d.hidden {
            return Err(Error::Shape {
                op: OP,
                tensor: "input",
                actual: x.1.dims().to_vec(),
                expected: format!("[{}, {}, {}]", d.batch, d.seq, d.input),
            });
        }
        let (w_ih, w_hh, bias) = self.split_params(ps)?;
        let (hseq, fin, saved) = cell::forward(d, xs, w_ih, w_hh, bias, Some(s0), true);
        self.shared.put(saved, hseq);
        let shape = Shape::from((d.batch, 2 * d.hidden));
        Ok((CpuStorage::F32(fin), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        state0: &Tensor,
        grad: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let d = self.dims;
        let saved = self.shared.saved()?;
        let dseq = self.shared.take_dseq();
        let grads = with_f32(params, OP, "params", |ps| {
            let (w_ih, w_hh, _) = self.split_params(ps)?;
            with_f32(grad, OP, "final state grad", |dfin| {
                with_f32(state0, OP, "state0", |s0| {
                    let run = |dseq: Option<&[f32]>| {
                        cell::backward(d, saved, dseq, dfin, w_ih, w_hh, Some(s0))
                    };
                    match &dseq {
                        Some(t) => with_f32(t, OP, "hidden grad", |s| Ok(run(Some(s)))),
                        None => Ok(run(None)),
                    }
                })
            })
        })?;
        let dev = x.device();
        let (b, t, i, h, g) = (d.batch, d.seq, d.input, d.hidden, 4 * d.hidden);
        // `[dW_ih | dW_hh | db]` from the transposed `[I + H, 4H]` gradient.
        let dw_t = &grads.dw_t;
        let mut dparams = Vec::with_capacity(g * (i + h + 1));
        for (lo, hi) in [(0, i), (i, i + h)] {
            for j in 0..g {
                dparams.extend((lo..hi).map(|p| dw_t[p * g + j]));
            }
        }
        dparams.extend_from_slice(&grads.db);
        let dparams = Tensor::from_vec(dparams, g * (i + h + 1), dev)?;
        let dx = Tensor::from_vec(grads.dx, (b, t, i), dev)?;
        let dstate0 = Tensor::from_vec(grads.dstate0, (b, 2 * h), dev)?;
        Ok((dx, dparams, dstate0))
    }
}

impl CustomOp3 for LstmOp {
    fn name(&self) -> &'static str {
        "shardcast-lstm"
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
        state0: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dp, ds) =
            LstmOp::bwd(self, x, params, state0, grad).map_err(candle_core::Error::wrap)?;
        Ok((Some(dx), Some(dp), Some(ds)))
    }
}

/// A stack of LSTM layers, as PyTorch's `nn.LSTM(batch_first=True)`.
#[derive(Debug, Clone)]
pub struct Lstm {
    config: LstmConfig,
    layers: Vec<LstmLayer>,
}

/// Result of running the stack.
#[derive(Debug, Clone)]
pub struct LstmStackOutput {
    /// The last layer's hidden sequence, `[batch, seq, hidden]`.
    pub hidden: Tensor,
    /// Each layer's final state.
    pub states: Vec<LstmState>,
}

impl Lstm {
    /// Builds the stack from `vb` (weights named `weight_ih_l0`, ... in its
    /// scope).
    pub fn new(config: LstmConfig, vb: VarBuilder<'_>) -> Result<Self> {
        config.validate()?;
        let layers = (0..config.num_layers)
            .map(|k| {
                let input = if k == 0 {
                    config.input_size
                } else {
                    config.hidden_size
                };
                LstmLayer::new(input, config.hidden_size, config.bias, k, &vb)
            })
            .collect::<Result<_>>()?;
        Ok(Self { config, layers })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &LstmConfig {
        &self.config
    }

    /// The layers, first to last.
    pub fn layers(&self) -> &[LstmLayer] {
        &self.layers
    }

    /// Runs the stack from zero states.
    pub fn forward(&self, x: &Tensor) -> Result<LstmStackOutput> {
        self.forward_with_state(x, None)
    }

    /// Runs the stack from the given per-layer states.
    pub fn forward_with_state(
        &self,
        x: &Tensor,
        states: Option<&[LstmState]>,
    ) -> Result<LstmStackOutput> {
        self.run(x, states, LstmLayer::forward)
    }

    /// Runs the stack without recording anything for autograd.
    pub fn infer(&self, x: &Tensor, states: Option<&[LstmState]>) -> Result<LstmStackOutput> {
        self.run(x, states, LstmLayer::infer)
    }

    fn run(
        &self,
        x: &Tensor,
        states: Option<&[LstmState]>,
        f: impl Fn(&LstmLayer, &Tensor, Option<&LstmState>) -> Result<LstmOutput>,
    ) -> Result<LstmStackOutput> {
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
        Ok(LstmStackOutput {
            hidden,
            states: out_states,
        })
    }

    /// The stack from standard tensor ops (see [`crate::portable`]): what
    /// runs on a device other than the CPU.
    pub(crate) fn run_portable(
        &self,
        x: &Tensor,
        states: Option<&[LstmState]>,
    ) -> Result<LstmStackOutput> {
        let mut xs = portable::steps(x, OP, self.config.input_size)?;
        let mut out_states = Vec::with_capacity(self.layers.len());
        for (k, layer) in self.layers.iter().enumerate() {
            let (hs, state) = layer.forward_portable(&xs, states.map(|s| &s[k]))?;
            xs = hs;
            out_states.push(state);
        }
        Ok(LstmStackOutput {
            hidden: Tensor::stack(&xs, 1)?,
            states: out_states,
        })
    }
}
