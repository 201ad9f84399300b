//! The recurrence of any [`Cell`] on CPU `f32` slices: a whole sequence per
//! call, the batch split into independent chunks (one per rayon thread when
//! there are several), each chunk stepping through time with the cell's
//! fused step kernels (GEMMs and one activation pass per step).
//!
//! What every cell shares lives here: the buffers and their layout, the
//! chunking, the dispatch to the AVX2 + FMA or the portable kernels, the
//! time loops, and in backward the weight and bias gradients, which are
//! accumulated step by step (`dW^T += [x_t | h_{t-1}]^T dgates_t`) while a
//! step's gate gradients are still in cache, so that the `[B, T, SLOTS * H]`
//! gate gradients never exist as a whole.

use rayon::prelude::*;

use crate::cell::Cell;
use crate::kernel::{self, PackedB, Rows, row_blocks};
use crate::scratch::{self, Buf};

/// Sizes of one layer call.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    pub(crate) batch: usize,
    pub(crate) seq: usize,
    pub(crate) input: usize,
    pub(crate) hidden: usize,
}

impl Dims {
    /// Gate rows of the weights, `G`.
    pub(crate) fn gates<C: Cell>(&self) -> usize {
        C::GATES * self.hidden
    }

    /// Width of a saved activation row.
    pub(crate) fn slots<C: Cell>(&self) -> usize {
        C::SLOTS * self.hidden
    }

    /// Width of a state row: all its parts.
    pub(crate) fn state<C: Cell>(&self) -> usize {
        C::STATE.len() * self.hidden
    }

    /// Width of a GEMM row `[x_t | h_{t-1}]`.
    pub(crate) fn xh(&self) -> usize {
        self.input + self.hidden
    }
}

/// What the forward pass keeps for backward, in recycled buffers (every
/// element is written).
#[derive(Debug)]
pub(crate) struct Saved {
    /// Gate activations, `SLOTS * H` per batch row and step.
    pub(crate) gates: Buf,
    /// The GEMM rows `[x_t | h_{t-1}]`, `I + H` per batch row and step.
    pub(crate) xh: Buf,
    /// The state's parts after `h` (the LSTM's cell state), `(STATE - 1) *
    /// H` per batch row and step; empty for the GRU.
    ///
    /// All three are split like the batch (see
    /// [`kernel::batch_chunk_rows`]), and time-major within each chunk:
    /// `[chunk][T][chunk rows][..]`, so that a step reads and writes one
    /// contiguous block, forward and backward.
    pub(crate) cseq: Buf,
}

/// Forward over a whole sequence.
///
/// `x` is `[B, T, I]`, `w_ih` `[G, I]`, `w_hh` `[G, H]`, `bias` as the
/// cell's [`BiasLayout`](crate::cell::BiasLayout) says, `state0` `[B,
/// STATE * H]` (zeros when `None`). Returns the hidden sequence `[B, T, H]`,
/// the final state `[B, STATE * H]` and, when `save`, what backward needs.
pub(crate) fn forward<C: Cell>(
    d: Dims,
    x: &[f32],
    w_ih: &[f32],
    w_hh: &[f32],
    bias: &[f32],
    state0: Option<&[f32]>,
    save: bool,
) -> (Vec<f32>, Vec<f32>, Option<Saved>) {
    run_forward::<C, true>(d, x, w_ih, w_hh, bias, state0, save)
}

/// [`forward`] on the portable kernels, whatever the CPU has.
#[cfg(test)]
pub(crate) fn forward_portable<C: Cell>(
    d: Dims,
    x: &[f32],
    w_ih: &[f32],
    w_hh: &[f32],
    bias: &[f32],
    state0: Option<&[f32]>,
    save: bool,
) -> (Vec<f32>, Vec<f32>, Option<Saved>) {
    run_forward::<C, false>(d, x, w_ih, w_hh, bias, state0, save)
}

/// `SIMD`: whether to use the AVX2 + FMA kernels when the CPU has them.
fn run_forward<C: Cell, const SIMD: bool>(
    d: Dims,
    x: &[f32],
    w_ih: &[f32],
    w_hh: &[f32],
    bias: &[f32],
    state0: Option<&[f32]>,
    save: bool,
) -> (Vec<f32>, Vec<f32>, Option<Saved>) {
    let (b, t, i, h, s, k) = (d.batch, d.seq, d.input, d.hidden, d.slots::<C>(), d.xh());
    let (sw, cw) = (d.state::<C>(), d.state::<C>() - h);
    let w = C::pack_forward(d, w_ih, w_hh, bias);
    let zeros;
    let state0 = match state0 {
        Some(s) => s,
        None => {
            zeros = vec![0.0; b * sw];
            &zeros
        }
    };
    let mut out = vec![0.0f32; b * t * h];
    let mut fin = vec![0.0f32; b * sw];
    let mut saved = save.then(|| Saved {
        gates: scratch::take(b * t * s),
        xh: scratch::take(b * t * k),
        cseq: scratch::take(b * t * cw),
    });
    // Inference needs the other state parts only while it runs.
    let mut cseq_scratch = if save {
        Buf::default()
    } else {
        scratch::take(b * t * cw)
    };

    let rows = kernel::batch_chunk_rows(b);
    let mut chunks = Vec::with_capacity(b.div_ceil(rows));
    {
        let (cseq, mut gs, mut xhs) = match saved.as_mut() {
            Some(v) => (
                &mut v.cseq[..],
                Some(v.gates.chunks_mut(rows * t * s)),
                Some(v.xh.chunks_mut(rows * t * k)),
            ),
            None => (&mut cseq_scratch[..], None, None),
        };
        let mut hs = out.chunks_mut(rows * t * h);
        let mut fs = fin.chunks_mut(rows * sw);
        // Empty for a cell without state parts besides `h`: then every
        // chunk gets an empty slice.
        let mut cs = cseq.chunks_mut((rows * t * cw).max(1));
        let mut xs = x.chunks(rows * t * i);
        let mut ss = state0.chunks(rows * sw);
        while let (Some(hc), Some(fc), Some(xc), Some(sc)) =
            (hs.next(), fs.next(), xs.next(), ss.next())
        {
            let save = match (gs.as_mut(), xhs.as_mut()) {
                (Some(gs), Some(xhs)) => gs.next().zip(xhs.next()),
                _ => None,
            };
            chunks.push(FwdChunk {
                batch: hc.len() / (t * h),
                x: xc,
                state0: sc,
                hseq: hc,
                fin: fc,
                cseq: cs.next().unwrap_or_default(),
                save,
            });
        }
    }
    let run = |c: FwdChunk<'_>| fwd_dispatch::<C, SIMD>(d, &w, c);
    if chunks.len() > 1 {
        chunks.into_par_iter().for_each(run);
    } else {
        chunks.into_iter().for_each(run);
    }
    (out, fin, saved)
}

struct FwdChunk<'a> {
    batch: usize,
    x: &'a [f32],
    state0: &'a [f32],
    /// `[bc, T, H]`.
    hseq: &'a mut [f32],
    /// `[bc, STATE * H]`.
    fin: &'a mut [f32],
    /// `[T, bc, (STATE - 1) * H]`.
    cseq: &'a mut [f32],
    /// Where to save the gates and the GEMM rows, see [`Saved`].
    save: Option<(&'a mut [f32], &'a mut [f32])>,
}

/// One time step of one batch chunk in forward, for
/// [`CellKernels::forward_step`](crate::cell::CellKernels::forward_step).
pub struct FwdStep<'a> {
    /// The step.
    pub(crate) t: usize,
    /// Rows of the chunk, `bc`.
    pub(crate) batch: usize,
    /// The chunk's input, `[bc, T, I]`.
    pub(crate) x: &'a [f32],
    /// The chunk's initial state, `[bc, STATE * H]`.
    pub(crate) state0: &'a [f32],
    /// The chunk's hidden sequence, `[bc, T, H]`; steps before `t` are done.
    pub(crate) hseq: &'a mut [f32],
    /// The chunk's other state parts, `[T, bc, (STATE - 1) * H]`.
    pub(crate) cseq: &'a mut [f32],
    /// Where this step's rows start in `gates` and `xh`: row `r` of the
    /// step is row `t0 + r` of both.
    pub(crate) t0: usize,
    /// The gates, `SLOTS * H` a row.
    pub(crate) gates: &'a mut [f32],
    /// The GEMM rows `[x_t | h_{t-1}]`, `I + H` a row; empty unless the
    /// cell's forward reads them or training saves them.
    pub(crate) xh: &'a [f32],
}

fn fwd_dispatch<C: Cell, const SIMD: bool>(d: Dims, w: &C::FwdWeights, c: FwdChunk<'_>) {
    #[cfg(target_arch = "x86_64")]
    if SIMD && kernel::has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        unsafe { fwd_avx2::<C>(d, w, c) };
        return;
    }
    fwd_chunk::<C, false>(d, w, c);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fwd_avx2<C: Cell>(d: Dims, w: &C::FwdWeights, c: FwdChunk<'_>) {
    fwd_chunk::<C, true>(d, w, c);
}

#[inline(always)]
fn fwd_chunk<C: Cell, const FMA: bool>(d: Dims, w: &C::FwdWeights, c: FwdChunk<'_>) {
    let (t_len, i, h, s, k, sw) = (
        d.seq,
        d.input,
        d.hidden,
        d.slots::<C>(),
        d.xh(),
        d.state::<C>(),
    );
    let FwdChunk {
        batch: bc,
        x,
        state0,
        hseq,
        fin,
        cseq,
        save,
    } = c;
    let with_xh = C::XH_GEMM || save.is_some();
    // Training keeps every step's rows; inference reuses one step's worth.
    let (mut gates_scratch, mut xh_scratch);
    let (gates, xh, t_stride) = match save {
        Some((gs, xhs)) => (gs, xhs, 1),
        None => {
            gates_scratch = vec![0.0f32; bc * s];
            xh_scratch = vec![0.0f32; if with_xh { bc * k } else { 0 }];
            (&mut gates_scratch[..], &mut xh_scratch[..], 0)
        }
    };
    let mut work = C::forward_work(d, bc);
    let hs = t_len * h;

    for t in 0..t_len {
        // Row `r` of this step is row `t0 + r` of `gates` and `xh`.
        let t0 = t * t_stride * bc;
        if with_xh {
            for r in 0..bc {
                let row = &mut xh[(t0 + r) * k..][..k];
                row[..i].copy_from_slice(&x[(r * t_len + t) * i..][..i]);
                let h_prev = if t == 0 {
                    &state0[r * sw..][..h]
                } else {
                    &hseq[r * hs + (t - 1) * h..][..h]
                };
                row[i..].copy_from_slice(h_prev);
            }
        }
        let step = FwdStep {
            t,
            batch: bc,
            x,
            state0,
            hseq: &mut *hseq,
            cseq: &mut *cseq,
            t0,
            gates: &mut *gates,
            xh: &*xh,
        };
        C::forward_step::<FMA>(d, w, step, &mut work);
    }
    let cw = sw - h;
    for (r, row) in fin.chunks_exact_mut(sw).enumerate() {
        let (h_last, rest) = row.split_at_mut(h);
        h_last.copy_from_slice(&hseq[r * hs + (t_len - 1) * h..][..h]);
        if cw > 0 {
            rest.copy_from_slice(&cseq[((t_len - 1) * bc + r) * cw..][..cw]);
        }
    }
}

/// Gradients of one layer call.
pub(crate) struct Grads {
    /// `[I + H, G]`: the gradient of `[W_ih | W_hh]`, transposed; the
    /// input rows' gates in the order of
    /// [`CellKernels::input_grad_column`](crate::cell::CellKernels::input_grad_column).
    pub(crate) dw_t: Vec<f32>,
    /// `[SLOTS * H]`: column sums of the pre-activation gradients, from
    /// which the bias gradients follow.
    pub(crate) sums: Vec<f32>,
    /// `[B, T, I]`.
    pub(crate) dx: Vec<f32>,
    /// `[B, STATE * H]`.
    pub(crate) dstate0: Vec<f32>,
}

/// Backward through time.
///
/// `saved` is what [`forward`] kept from `state0` `[B, STATE * H]`; `dseq`
/// the gradient of the hidden sequence `[B, T, H]` (`None`: zero) and
/// `dfin` that of the final state `[B, STATE * H]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<C: Cell>(
    d: Dims,
    saved: &Saved,
    dseq: Option<&[f32]>,
    dfin: &[f32],
    w_ih: &[f32],
    w_hh: &[f32],
    state0: &[f32],
) -> Grads {
    run_backward::<C, true>(d, saved, dseq, dfin, w_ih, w_hh, state0)
}

/// [`backward`] on the portable kernels, whatever the CPU has.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_portable<C: Cell>(
    d: Dims,
    saved: &Saved,
    dseq: Option<&[f32]>,
    dfin: &[f32],
    w_ih: &[f32],
    w_hh: &[f32],
    state0: &[f32],
) -> Grads {
    run_backward::<C, false>(d, saved, dseq, dfin, w_ih, w_hh, state0)
}

#[allow(clippy::too_many_arguments)]
fn run_backward<C: Cell, const SIMD: bool>(
    d: Dims,
    saved: &Saved,
    dseq: Option<&[f32]>,
    dfin: &[f32],
    w_ih: &[f32],
    w_hh: &[f32],
    state0: &[f32],
) -> Grads {
    let (b, t, i, h, g, s, k) = (
        d.batch,
        d.seq,
        d.input,
        d.hidden,
        d.gates::<C>(),
        d.slots::<C>(),
        d.xh(),
    );
    let (sw, cw) = (d.state::<C>(), d.state::<C>() - h);
    let w = C::pack_backward(d, w_ih, w_hh);
    let mut dx = vec![0.0; b * t * i];
    let mut dstate0 = vec![0.0; b * sw];

    let rows = kernel::batch_chunk_rows(b);
    let n_chunks = b.div_ceil(rows);
    // Per chunk: its `dW^T` then its column sums, summed into the first at
    // the end.
    let acc_len = k * g + s;
    let mut acc = vec![0.0f32; n_chunks * acc_len];
    let per = |n: usize| rows * t * n;
    let dseq_chunks: Vec<Option<&[f32]>> = match dseq {
        Some(v) => v.chunks(per(h)).map(Some).collect(),
        None => vec![None; n_chunks],
    };
    // As in forward: empty slices for a cell without other state parts.
    let mut cs = saved.cseq.chunks(per(cw).max(1));
    let chunks: Vec<BwdChunk<'_>> = saved
        .gates
        .chunks(per(s))
        .zip(saved.xh.chunks(per(k)))
        .zip(dfin.chunks(rows * sw).zip(dseq_chunks))
        .zip(state0.chunks(rows * sw))
        .zip(acc.chunks_mut(acc_len))
        .zip(dx.chunks_mut(per(i)).zip(dstate0.chunks_mut(rows * sw)))
        .map(
            |(((((gates, xh), (dfin, dseq)), state0), acc), (dx, dstate0))| {
                let (dw_t, sums) = acc.split_at_mut(k * g);
                BwdChunk {
                    batch: dfin.len() / sw,
                    gates,
                    xh,
                    cseq: cs.next().unwrap_or_default(),
                    dseq,
                    dfin,
                    state0,
                    dw_t,
                    sums,
                    dx,
                    dstate0,
                }
            },
        )
        .collect();
    let run = |c: BwdChunk<'_>| bwd_dispatch::<C, SIMD>(d, &w, c);
    if chunks.len() > 1 {
        chunks.into_par_iter().for_each(run);
    } else {
        chunks.into_iter().for_each(run);
    }
    let (first, rest) = acc.split_at_mut(acc_len);
    for other in rest.chunks_exact(acc_len) {
        for (a, v) in first.iter_mut().zip(other) {
            *a += v;
        }
    }
    acc.truncate(acc_len);
    let sums = acc.split_off(k * g);
    Grads {
        dw_t: acc,
        sums,
        dx,
        dstate0,
    }
}

struct BwdChunk<'a> {
    batch: usize,
    /// See [`Saved`].
    gates: &'a [f32],
    xh: &'a [f32],
    cseq: &'a [f32],
    /// `[bc, T, H]`, `None` when zero.
    dseq: Option<&'a [f32]>,
    /// `[bc, STATE * H]`.
    dfin: &'a [f32],
    /// `[bc, STATE * H]`.
    state0: &'a [f32],
    /// `[I + H, G]`, accumulated into (see [`Grads`]).
    dw_t: &'a mut [f32],
    /// `[SLOTS * H]`, accumulated into.
    sums: &'a mut [f32],
    dx: &'a mut [f32],
    dstate0: &'a mut [f32],
}

/// One time step of one batch chunk in backward, for
/// [`CellKernels::backward_step`](crate::cell::CellKernels::backward_step).
pub struct BwdStep<'a> {
    /// The step.
    pub(crate) t: usize,
    /// Rows of the chunk, `bc`.
    pub(crate) batch: usize,
    /// This step's saved gates, `[bc, SLOTS * H]`.
    pub(crate) gates: &'a [f32],
    /// This step's saved GEMM rows, `[bc, I + H]`.
    pub(crate) xh: &'a [f32],
    /// The chunk's other state parts, `[T, bc, (STATE - 1) * H]`.
    pub(crate) cseq: &'a [f32],
    /// The chunk's initial state, `[bc, STATE * H]`.
    pub(crate) state0: &'a [f32],
    /// The gradient of the chunk's hidden sequence, `[bc, T, H]`, `None`
    /// when zero.
    pub(crate) dseq: Option<&'a [f32]>,
    /// The gradient of the chunk's final state, `[bc, STATE * H]`.
    pub(crate) dfin: &'a [f32],
    /// The gradient of the chunk's input, `[bc, T, I]`, written at step t.
    pub(crate) dx: &'a mut [f32],
    /// This step's pre-activation gradients, `[bc, SLOTS * H]`, written.
    pub(crate) dg: &'a mut [f32],
}

fn bwd_dispatch<C: Cell, const SIMD: bool>(d: Dims, w: &C::BwdWeights, c: BwdChunk<'_>) {
    #[cfg(target_arch = "x86_64")]
    if SIMD && kernel::has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        unsafe { bwd_avx2::<C>(d, w, c) };
        return;
    }
    bwd_chunk::<C, false>(d, w, c);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn bwd_avx2<C: Cell>(d: Dims, w: &C::BwdWeights, c: BwdChunk<'_>) {
    bwd_chunk::<C, true>(d, w, c);
}

#[inline(always)]
fn bwd_chunk<C: Cell, const FMA: bool>(d: Dims, w: &C::BwdWeights, c: BwdChunk<'_>) {
    let (t_len, i, g, s, k) = (d.seq, d.input, d.gates::<C>(), d.slots::<C>(), d.xh());
    let BwdChunk {
        batch: bc,
        gates,
        xh,
        cseq,
        dseq,
        dfin,
        state0,
        dw_t,
        sums,
        dx,
        dstate0,
    } = c;
    let mut work = C::backward_work(d, bc, dfin);
    // This step's pre-activation gradients `[bc, SLOTS * H]`; the columns
    // that pair with the input rows and with the hidden rows of `[x_t |
    // h_{t-1}]` packed as right-hand sides of the weight-gradient GEMMs (one
    // GEMM over all rows where they are the same columns), and this step's
    // GEMM rows transposed, `[I + H, bc]`, as their left-hand side.
    let mut dg = vec![0.0f32; bc * s];
    let blocks: Vec<(usize, usize, usize)> = match C::grad_columns(d.hidden) {
        (x_col, h_col) if x_col == h_col => vec![(0, k, x_col)],
        (x_col, h_col) => vec![(0, i, x_col), (i, k, h_col)],
    };
    let mut dg_packed: Vec<PackedB> = blocks.iter().map(|_| PackedB::zeros(bc, g)).collect();
    let mut xh_t = vec![0.0f32; k * bc];
    for t in (0..t_len).rev() {
        let xh_step = &xh[t * bc * k..][..bc * k];
        let step = BwdStep {
            t,
            batch: bc,
            gates: &gates[t * bc * s..][..bc * s],
            xh: xh_step,
            cseq,
            state0,
            dseq,
            dfin,
            dx: &mut *dx,
            dg: &mut dg,
        };
        C::backward_step::<FMA>(d, w, step, &mut work);

        // Weight and bias gradients of this step.
        for row in dg.chunks_exact(s) {
            for (a, v) in sums.iter_mut().zip(row) {
                *a += v;
            }
        }
        for (packed, &(_, _, col)) in dg_packed.iter_mut().zip(&blocks) {
            packed.fill_rows(&dg[col..], s);
        }
        for (r, src) in xh_step.chunks_exact(k).enumerate() {
            for (p, v) in src.iter().enumerate() {
                xh_t[p * bc + r] = *v;
            }
        }
        for (packed, &(lo, hi, _)) in dg_packed.iter().zip(&blocks) {
            for (p0, rows) in row_blocks(lo, hi) {
                let a = Rows {
                    data: &xh_t,
                    start: p0 * bc,
                    ld: bc,
                };
                kernel::gemm_rows::<FMA>(a, rows, packed, |r, j0, acc| {
                    let dst = &mut dw_t[(p0 + r) * g + j0..][..acc.len()];
                    for (d, a) in dst.iter_mut().zip(acc) {
                        *d += a;
                    }
                });
            }
        }
    }
    C::backward_finish(d, work, dstate0);
}
