//! What a recurrent cell is: the one trait that LSTM and GRU implement, and
//! from which the layer, the stack and the fused op of this crate are
//! generic.

use std::fmt::Debug;

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::fused::{BwdStep, Dims, FwdStep};

/// A recurrent cell: [`LstmCell`](crate::LstmCell) or
/// [`GruCell`](crate::GruCell), the type parameter of
/// [`Rnn`](crate::Rnn), [`RnnLayer`](crate::RnnLayer) and their outputs.
///
/// A cell fixes the gate count (the weights are PyTorch's `[GATES * H, I]`
/// and `[GATES * H, H]`), the state a layer carries from step to step, and
/// the fused CPU kernels of one time step, forward and backward. The trait
/// is sealed: the kernels are this crate's own.
pub trait Cell: CellKernels + Copy + Debug + Send + Sync + 'static {
    /// The cell's name in errors: `lstm`, `gru`.
    const NAME: &'static str;

    /// Gates per step: 4 for the LSTM (i, f, g, o), 3 for the GRU (r, z, n).
    const GATES: usize;

    /// The names of the state's parts, in order, each `[batch, hidden]`;
    /// the hidden state `h` comes first.
    const STATE: &'static [&'static str];

    /// The state of one layer between steps.
    type State: Clone + Debug + Send + Sync;

    /// The hidden state `h` `[batch, hidden]` of a state.
    fn hidden(state: &Self::State) -> &Tensor;

    /// The state's parts in the order of [`Cell::STATE`].
    fn parts(state: &Self::State) -> Vec<&Tensor>;

    /// A state from its parts in the order of [`Cell::STATE`].
    ///
    /// # Panics
    ///
    /// When there are not exactly as many parts as [`Cell::STATE`] names.
    fn from_parts(parts: Vec<Tensor>) -> Self::State;
}

/// How a cell's two biases (`b_ih`, `b_hh`, each `[G]`) enter its kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BiasLayout {
    /// One `[G]` vector `b_ih + b_hh`: both add to every gate (LSTM).
    Summed,
    /// `b_ih | b_hh` apart, `[2G]`: part of `b_hh` is scaled inside a gate
    /// (GRU's `r ⊙ (W_hn h + b_hn)`).
    Separate,
}

impl BiasLayout {
    /// Length of the kernels' bias for `g` gate rows.
    pub(crate) fn len(self, g: usize) -> usize {
        match self {
            Self::Summed => g,
            Self::Separate => 2 * g,
        }
    }

    /// The kernels' bias as a vector; a missing bias is zeros.
    pub(crate) fn vec(
        self,
        b_ih: Option<&Tensor>,
        b_hh: Option<&Tensor>,
        g: usize,
    ) -> Result<Vec<f32>> {
        let mut bias = vec![0.0f32; self.len(g)];
        match self {
            Self::Summed => {
                for b in [b_ih, b_hh].into_iter().flatten() {
                    for (acc, v) in bias.iter_mut().zip(b.to_vec1::<f32>()?) {
                        *acc += v;
                    }
                }
            }
            Self::Separate => {
                for (dst, b) in bias.chunks_exact_mut(g).zip([b_ih, b_hh]) {
                    if let Some(b) = b {
                        dst.copy_from_slice(&b.to_vec1::<f32>()?);
                    }
                }
            }
        }
        Ok(bias)
    }

    /// The kernels' bias as tensors to concatenate, for autograd; a missing
    /// bias is zeros.
    pub(crate) fn tensors(
        self,
        b_ih: Option<&Tensor>,
        b_hh: Option<&Tensor>,
        g: usize,
        dev: &Device,
    ) -> Result<Vec<Tensor>> {
        let or_zeros = |b: Option<&Tensor>| match b {
            Some(b) => Ok(b.clone()),
            None => Tensor::zeros(g, DType::F32, dev),
        };
        Ok(match self {
            Self::Summed => vec![match (b_ih, b_hh) {
                (Some(a), Some(b)) => (a + b)?,
                (a, b) => or_zeros(a.or(b))?,
            }],
            Self::Separate => vec![or_zeros(b_ih)?, or_zeros(b_hh)?],
        })
    }

    /// For the recurrence from standard tensor ops: the biases of the input
    /// and of the hidden projection.
    pub(crate) fn portable(
        self,
        b_ih: Option<&Tensor>,
        b_hh: Option<&Tensor>,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok(match self {
            Self::Summed => match (b_ih, b_hh) {
                (Some(a), Some(b)) => (Some((a + b)?), None),
                (a, b) => (a.or(b).cloned(), None),
            },
            Self::Separate => (b_ih.cloned(), b_hh.cloned()),
        })
    }
}

/// The kernels behind [`Cell`]: the step functions the generic recurrence
/// of [`crate::fused`] calls, with their packed weights and workspaces, and
/// the step of the standard-op recurrence of [`crate::portable`].
///
/// A public trait in a private module, so that [`Cell`] is sealed.
pub trait CellKernels {
    /// The fused op's name in Candle.
    const OP_NAME: &'static str;

    /// The name in Candle of the op that hands out the hidden sequence (see
    /// [`crate::seq_out`]).
    const SEQ_NAME: &'static str;

    /// Activations saved per batch row and step, in units of the hidden
    /// width; also the width of a step's pre-activation gradients.
    const SLOTS: usize;

    /// How the two biases enter the kernels.
    const BIAS: BiasLayout;

    /// Whether the forward GEMM reads the rows `[x_t | h_{t-1}]`, which are
    /// then built at every step, not only when training saves them.
    const XH_GEMM: bool;

    /// The weights (and biases) packed for the forward step.
    type FwdWeights: Sync;

    /// The weights packed for the backward step.
    type BwdWeights: Sync;

    /// A batch chunk's scratch space in forward.
    type FwdWork;

    /// A batch chunk's gradients carried from step to step in backward.
    type BwdWork;

    /// Packs `w_ih` `[G, I]`, `w_hh` `[G, H]` and the bias (see
    /// [`CellKernels::BIAS`]).
    fn pack_forward(d: Dims, w_ih: &[f32], w_hh: &[f32], bias: &[f32]) -> Self::FwdWeights;

    /// Packs the weights for backward.
    fn pack_backward(d: Dims, w_ih: &[f32], w_hh: &[f32]) -> Self::BwdWeights;

    /// Forward scratch space for a chunk of `rows` batch rows.
    fn forward_work(d: Dims, rows: usize) -> Self::FwdWork;

    /// Step `s.t` of a chunk: the gates (activated, into `s.gates`), the
    /// hidden state into `s.hseq` and the other state parts into `s.cseq`.
    fn forward_step<const FMA: bool>(
        d: Dims,
        w: &Self::FwdWeights,
        s: FwdStep<'_>,
        work: &mut Self::FwdWork,
    );

    /// Backward state of a chunk before its last step; `dfin` is the
    /// gradient of its final state.
    fn backward_work(d: Dims, rows: usize, dfin: &[f32]) -> Self::BwdWork;

    /// Step `s.t` of a chunk backward: its pre-activation gradients into
    /// `s.dg`, the input's into `s.dx`, and the state's for step `t - 1`
    /// into `work`.
    fn backward_step<const FMA: bool>(
        d: Dims,
        w: &Self::BwdWeights,
        s: BwdStep<'_>,
        work: &mut Self::BwdWork,
    );

    /// The gradient of the chunk's initial state, `[rows, STATE * H]`.
    fn backward_finish(d: Dims, work: Self::BwdWork, dstate0: &mut [f32]);

    /// The columns of a step's pre-activation gradients (`SLOTS * H` wide)
    /// at which the `G` columns of the input weights' gradient start, and
    /// those of the hidden weights'.
    fn grad_columns(h: usize) -> (usize, usize);

    /// Which of the input weights' gradient columns (from
    /// [`CellKernels::grad_columns`]) holds gate row `q` of `W_ih`.
    fn input_grad_column(q: usize, h: usize) -> usize;

    /// Appends the gradients of the kernels' bias to `out`, from the column
    /// sums of the pre-activation gradients (`SLOTS * H`).
    fn bias_grads(h: usize, sums: &[f32], out: &mut Vec<f32>);

    /// One step from standard tensor ops: the new state's parts from the
    /// input projection `gi` and the hidden one `gh` (`[batch, G]` each,
    /// with the biases of [`BiasLayout::portable`]) and the state's parts.
    fn portable_step(gi: &Tensor, gh: &Tensor, state: &[Tensor], h: usize) -> Result<Vec<Tensor>>;
}
