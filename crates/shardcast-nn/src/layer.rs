//! The layer and the stack, generic over the [`Cell`]: weights in PyTorch's
//! names and layouts, the fused op on the CPU (with autograd, or the
//! inference path that keeps nothing), the standard-op recurrence elsewhere.

use std::marker::PhantomData;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::cell::Cell;
use crate::error::{Error, Result};
use crate::fused::{self, Dims};
use crate::op::RecurrentOp;
use crate::portable;
use crate::seq_out::{SeqOp, Shared};
use crate::storage::{self, with_f32};

/// Shape of a stack of LSTM or GRU layers; saved next to the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RnnConfig {
    /// Features per time step of the input.
    pub input_size: usize,
    /// Width of the hidden state (and of the LSTM's cell state).
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

impl RnnConfig {
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
pub struct LayerOutput<C: Cell> {
    /// Hidden state at every step, `[batch, seq, hidden]`.
    pub hidden: Tensor,
    /// State after the last step.
    pub state: C::State,
}

/// One layer's weights in PyTorch layout: `weight_ih` `[G, input]`,
/// `weight_hh` `[G, hidden]` and optional `bias_ih`, `bias_hh` `[G]`, with
/// `G = C::GATES * hidden`.
#[derive(Debug, Clone)]
pub struct RnnLayer<C: Cell> {
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Option<Tensor>,
    b_hh: Option<Tensor>,
    input_size: usize,
    hidden_size: usize,
    cell: PhantomData<C>,
}

impl<C: Cell> RnnLayer<C> {
    /// Loads (or, with a `VarMap`-backed builder, creates) layer `layer` from
    /// `vb`, initialised like PyTorch: uniform in `±1/sqrt(hidden)`.
    pub fn new(
        input_size: usize,
        hidden_size: usize,
        bias: bool,
        layer: usize,
        vb: &VarBuilder<'_>,
    ) -> Result<Self> {
        let g = C::GATES * hidden_size;
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
        if g % C::GATES != 0 || g == 0 || input_size == 0 {
            return Err(Error::Shape {
                op: C::NAME,
                tensor: "weight_ih",
                actual: w_ih.dims().to_vec(),
                expected: format!("[{} * hidden, input] with hidden, input >= 1", C::GATES),
            });
        }
        let hidden_size = g / C::GATES;
        storage::check(&w_ih, C::NAME, "weight_ih", &[g, input_size])?;
        storage::check(&w_hh, C::NAME, "weight_hh", &[g, hidden_size])?;
        for (t, name) in [(&b_ih, "bias_ih"), (&b_hh, "bias_hh")] {
            if let Some(t) = t {
                storage::check(t, C::NAME, name, &[g])?;
            }
        }
        Ok(Self {
            w_ih,
            w_hh,
            b_ih,
            b_hh,
            input_size,
            hidden_size,
            cell: PhantomData,
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
    pub fn forward(&self, x: &Tensor, state: Option<&C::State>) -> Result<LayerOutput<C>> {
        let tracked = x.track_op()
            || self.w_ih.track_op()
            || self.w_hh.track_op()
            || self.b_ih.as_ref().is_some_and(Tensor::track_op)
            || self.b_hh.as_ref().is_some_and(Tensor::track_op)
            || state.is_some_and(|s| C::parts(s).into_iter().any(Tensor::track_op));
        if tracked {
            self.forward_train(x, state)
        } else {
            self.infer(x, state)
        }
    }

    /// Runs the layer without recording anything for autograd, even when the
    /// weights are trainable variables: the serving path.
    pub fn infer(&self, x: &Tensor, state: Option<&C::State>) -> Result<LayerOutput<C>> {
        let d = self.dims(x, state)?;
        let bias = C::BIAS.vec(self.b_ih.as_ref(), self.b_hh.as_ref(), d.gates::<C>())?;
        let state0 = state.map(|s| state_rows::<C>(s, d)).transpose()?;
        let (hseq, fin, _) = with_f32(x, C::NAME, "input", |xs| {
            with_f32(&self.w_ih, C::NAME, "weight_ih", |wi| {
                with_f32(&self.w_hh, C::NAME, "weight_hh", |wh| {
                    Ok(fused::forward::<C>(
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
        let fin = Tensor::from_vec(fin, (d.batch, d.state::<C>()), &Device::Cpu)?;
        split_output::<C>(hidden, &fin, d)
    }

    fn forward_train(&self, x: &Tensor, state: Option<&C::State>) -> Result<LayerOutput<C>> {
        let d = self.dims(x, state)?;
        let mut params = vec![self.w_ih.flatten_all()?, self.w_hh.flatten_all()?];
        params.extend(C::BIAS.tensors(
            self.b_ih.as_ref(),
            self.b_hh.as_ref(),
            d.gates::<C>(),
            x.device(),
        )?);
        let params = Tensor::cat(&params, 0)?;
        let state0 = match state {
            Some(s) => Tensor::cat(&C::parts(s), 1)?,
            None => Tensor::zeros((d.batch, d.state::<C>()), DType::F32, x.device())?,
        };
        let shared = Shared::new(C::NAME);
        let op = RecurrentOp::<C>::new(d, Arc::clone(&shared));
        let fin = x.contiguous()?.apply_op3(&params, &state0, op)?;
        let hidden = fin.apply_op1(SeqOp {
            name: C::SEQ_NAME,
            dims: (d.batch, d.seq, d.hidden),
            shared,
        })?;
        split_output::<C>(hidden, &fin, d)
    }

    fn dims(&self, x: &Tensor, state: Option<&C::State>) -> Result<Dims> {
        let bad = || Error::Shape {
            op: C::NAME,
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
        storage::check(x, C::NAME, "input", &[batch, seq, input])?;
        if let Some(s) = state {
            for (part, &name) in C::parts(s).into_iter().zip(C::STATE) {
                storage::check(part, C::NAME, name, &[batch, self.hidden_size])?;
            }
        }
        Ok(Dims {
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
        state: Option<&C::State>,
    ) -> Result<(Vec<Tensor>, C::State)> {
        let hs = self.hidden_size;
        let (w_ih, w_hh) = (self.w_ih.t()?, self.w_hh.t()?);
        let (b_x, b_h) = C::BIAS.portable(self.b_ih.as_ref(), self.b_hh.as_ref())?;
        let mut state: Vec<Tensor> = match state {
            Some(s) => C::parts(s).into_iter().cloned().collect(),
            None => {
                let zeros = Tensor::zeros((xs[0].dim(0)?, hs), DType::F32, xs[0].device())?;
                vec![zeros; C::STATE.len()]
            }
        };
        let mut out = Vec::with_capacity(xs.len());
        for x in xs {
            let gi = portable::affine(x, &w_ih, b_x.as_ref())?;
            let gh = portable::affine(&state[0], &w_hh, b_h.as_ref())?;
            state = C::portable_step(&gi, &gh, &state, hs)?;
            out.push(state[0].clone());
        }
        Ok((out, C::from_parts(state)))
    }
}

/// `[B, STATE * H]` rows of the state's parts side by side, for the kernel.
fn state_rows<C: Cell>(s: &C::State, d: Dims) -> Result<Vec<f32>> {
    let mut parts = C::parts(s)
        .into_iter()
        .map(|t| t.flatten_all()?.to_vec1::<f32>())
        .collect::<candle_core::Result<Vec<_>>>()?;
    if parts.len() == 1 {
        return Ok(parts.swap_remove(0));
    }
    let mut rows = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    for r in 0..d.batch {
        for part in &parts {
            rows.extend_from_slice(&part[r * d.hidden..][..d.hidden]);
        }
    }
    Ok(rows)
}

/// The output from the hidden sequence and the final state `[B, STATE * H]`.
fn split_output<C: Cell>(hidden: Tensor, fin: &Tensor, d: Dims) -> Result<LayerOutput<C>> {
    let h = d.hidden;
    let parts = (0..C::STATE.len())
        .map(|k| fin.narrow(1, k * h, h))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(LayerOutput {
        hidden,
        state: C::from_parts(parts),
    })
}

/// A stack of layers, as PyTorch's `nn.LSTM(batch_first=True)` or
/// `nn.GRU(batch_first=True)`.
#[derive(Debug, Clone)]
pub struct Rnn<C: Cell> {
    config: RnnConfig,
    layers: Vec<RnnLayer<C>>,
}

/// Result of running the stack.
#[derive(Debug, Clone)]
pub struct StackOutput<C: Cell> {
    /// The last layer's hidden sequence, `[batch, seq, hidden]`.
    pub hidden: Tensor,
    /// Each layer's final state.
    pub states: Vec<C::State>,
}

impl<C: Cell> Rnn<C> {
    /// Builds the stack from `vb` (weights named `weight_ih_l0`, ... in its
    /// scope).
    pub fn new(config: RnnConfig, vb: VarBuilder<'_>) -> Result<Self> {
        config.validate()?;
        let layers = (0..config.num_layers)
            .map(|k| {
                let input = if k == 0 {
                    config.input_size
                } else {
                    config.hidden_size
                };
                RnnLayer::new(input, config.hidden_size, config.bias, k, &vb)
            })
            .collect::<Result<_>>()?;
        Ok(Self { config, layers })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &RnnConfig {
        &self.config
    }

    /// The layers, first to last.
    pub fn layers(&self) -> &[RnnLayer<C>] {
        &self.layers
    }

    /// Runs the stack from zero states.
    pub fn forward(&self, x: &Tensor) -> Result<StackOutput<C>> {
        self.forward_with_state(x, None)
    }

    /// Runs the stack from the given per-layer states.
    pub fn forward_with_state(
        &self,
        x: &Tensor,
        states: Option<&[C::State]>,
    ) -> Result<StackOutput<C>> {
        self.run(x, states, RnnLayer::forward)
    }

    /// Runs the stack without recording anything for autograd.
    pub fn infer(&self, x: &Tensor, states: Option<&[C::State]>) -> Result<StackOutput<C>> {
        self.run(x, states, RnnLayer::infer)
    }

    fn run(
        &self,
        x: &Tensor,
        states: Option<&[C::State]>,
        f: impl Fn(&RnnLayer<C>, &Tensor, Option<&C::State>) -> Result<LayerOutput<C>>,
    ) -> Result<StackOutput<C>> {
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
        Ok(StackOutput {
            hidden,
            states: out_states,
        })
    }

    /// The stack from standard tensor ops (see [`crate::portable`]): what
    /// runs on a device other than the CPU.
    pub(crate) fn run_portable(
        &self,
        x: &Tensor,
        states: Option<&[C::State]>,
    ) -> Result<StackOutput<C>> {
        let mut xs = portable::steps(x, C::NAME, self.config.input_size)?;
        let mut out_states = Vec::with_capacity(self.layers.len());
        for (k, layer) in self.layers.iter().enumerate() {
            let (hs, state) = layer.forward_portable(&xs, states.map(|s| &s[k]))?;
            xs = hs;
            out_states.push(state);
        }
        Ok(StackOutput {
            hidden: Tensor::stack(&xs, 1)?,
            states: out_states,
        })
    }
}
