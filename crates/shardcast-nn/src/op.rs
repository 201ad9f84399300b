//! The whole-sequence recurrence of one layer as a Candle custom op, with a
//! hand-written backward pass: one op for every [`Cell`].

use std::marker::PhantomData;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use crate::cell::Cell;
use crate::error::{Error, Result};
use crate::fused::{self, Dims, Saved};
use crate::seq_out::Shared;
use crate::storage::{cpu_f32, with_f32};

/// `(x [B, T, I], params, state0 [B, STATE * H]) -> [B, STATE * H]`, the
/// final state. `params` is `W_ih` `[G, I]`, `W_hh` `[G, H]` and the bias
/// in the cell's [`BiasLayout`](crate::cell::BiasLayout), flattened and
/// concatenated. The hidden sequence is a [`SeqOp`](crate::seq_out::SeqOp)
/// on this result (see [`crate::seq_out`]).
pub(crate) struct RecurrentOp<C> {
    dims: Dims,
    shared: Arc<Shared<Saved>>,
    cell: PhantomData<C>,
}

impl<C: Cell> RecurrentOp<C> {
    /// The op of one forward call; `shared` goes to its `SeqOp` too.
    pub(crate) fn new(dims: Dims, shared: Arc<Shared<Saved>>) -> Self {
        Self {
            dims,
            shared,
            cell: PhantomData,
        }
    }

    fn split_params<'a>(&self, p: &'a [f32]) -> Result<(&'a [f32], &'a [f32], &'a [f32])> {
        let d = self.dims;
        let g = d.gates::<C>();
        let (n_ih, n_hh, n_b) = (g * d.input, g * d.hidden, C::BIAS.len(g));
        if p.len() != n_ih + n_hh + n_b {
            return Err(Error::Shape {
                op: C::NAME,
                tensor: "params",
                actual: vec![p.len()],
                expected: format!("[{}]", n_ih + n_hh + n_b),
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
        let xs = cpu_f32(x.0, x.1, C::NAME, "input")?;
        let ps = cpu_f32(params.0, params.1, C::NAME, "params")?;
        let s0 = cpu_f32(state0.0, state0.1, C::NAME, "state0")?;
        if xs.len() != d.batch * d.seq * d.input || s0.len() != d.batch * d.state::<C>() {
            return Err(Error::Shape {
                op: C::NAME,
                tensor: "input",
                actual: x.1.dims().to_vec(),
                expected: format!("[{}, {}, {}]", d.batch, d.seq, d.input),
            });
        }
        let (w_ih, w_hh, bias) = self.split_params(ps)?;
        let (hseq, fin, saved) = fused::forward::<C>(d, xs, w_ih, w_hh, bias, Some(s0), true);
        self.shared.put(saved, hseq);
        let shape = Shape::from((d.batch, d.state::<C>()));
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
        let grads = with_f32(params, C::NAME, "params", |ps| {
            let (w_ih, w_hh, _) = self.split_params(ps)?;
            with_f32(grad, C::NAME, "final state grad", |dfin| {
                with_f32(state0, C::NAME, "state0", |s0| {
                    let run = |dseq: Option<&[f32]>| {
                        fused::backward::<C>(d, saved, dseq, dfin, w_ih, w_hh, s0)
                    };
                    match &dseq {
                        Some(t) => with_f32(t, C::NAME, "hidden grad", |s| Ok(run(Some(s)))),
                        None => Ok(run(None)),
                    }
                })
            })
        })?;
        let dev = x.device();
        let (b, t, i, h, g) = (d.batch, d.seq, d.input, d.hidden, d.gates::<C>());
        // `[dW_ih | dW_hh | bias]` from the transposed `[I + H, G]` gradient
        // and the column sums.
        let dw_t = &grads.dw_t;
        let n_params = g * (i + h) + C::BIAS.len(g);
        let mut dparams = Vec::with_capacity(n_params);
        for q in 0..g {
            let col = C::input_grad_column(q, h);
            dparams.extend((0..i).map(|p| dw_t[p * g + col]));
        }
        for q in 0..g {
            dparams.extend((i..i + h).map(|p| dw_t[p * g + q]));
        }
        C::bias_grads(h, &grads.sums, &mut dparams);
        let dparams = Tensor::from_vec(dparams, n_params, dev)?;
        let dx = Tensor::from_vec(grads.dx, (b, t, i), dev)?;
        let dstate0 = Tensor::from_vec(grads.dstate0, (b, d.state::<C>()), dev)?;
        Ok((dx, dparams, dstate0))
    }
}

impl<C: Cell> CustomOp3 for RecurrentOp<C> {
    fn name(&self) -> &'static str {
        C::OP_NAME
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
            RecurrentOp::bwd(self, x, params, state0, grad).map_err(candle_core::Error::wrap)?;
        Ok((Some(dx), Some(dp), Some(ds)))
    }
}
