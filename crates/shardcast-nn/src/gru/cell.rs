//! The GRU recurrence on CPU `f32` slices: a whole sequence per call, the
//! batch split into independent chunks (one per rayon thread when there are
//! several), each chunk stepping through time with two small GEMMs and one
//! fused activation pass per step.
//!
//! Gate order is PyTorch's: r, z, n. Unlike the LSTM's, the input and hidden
//! projections cannot be summed into one GEMM over `[x_t | h_{t-1}]`: the
//! candidate gate needs `W_hn h + b_hn` on its own (it is scaled by `r`).
//! Each step therefore runs `x_t W_ih^T` and `h_{t-1} W_hh^T` as two GEMMs
//! (a fused `[x_t | h_{t-1}]` GEMM would need a fourth, half-zero block of
//! columns) and the activation pass combines them.
//!
//! Backward steps through time the same way; each step's gate gradients go
//! through `W_hh` and `W_ih` (the gradients of `h_{t-1}` and `x_t`) and into
//! the weight gradients while still in cache.

use rayon::prelude::*;

use crate::kernel::{self, MR, PackedB, Rows};
use crate::scratch::{self, Buf};

/// Sizes of one GRU layer call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub(crate) batch: usize,
    pub(crate) seq: usize,
    pub(crate) input: usize,
    pub(crate) hidden: usize,
}

impl Dims {
    /// Width of one projection: r, z and n.
    pub(crate) fn gates(&self) -> usize {
        3 * self.hidden
    }

    /// Width of a saved gate row: r, z, n and `W_hn h + b_hn`.
    fn slots(&self) -> usize {
        4 * self.hidden
    }

    /// Width of a saved GEMM row `[x_t | h_{t-1}]`.
    fn xh(&self) -> usize {
        self.input + self.hidden
    }
}

/// What the forward pass keeps for backward, in recycled buffers (every
/// element is written).
#[derive(Debug)]
pub(crate) struct Saved {
    /// Activations, `4H` per batch row and step: `r | z | n | W_hn h + b_hn`.
    pub(crate) gates: Buf,
    /// The GEMM rows `[x_t | h_{t-1}]`, `I + H` per batch row and step.
    ///
    /// Both are split like the batch (see [`kernel::batch_chunk_rows`]) and
    /// time-major within each chunk, `[chunk][T][chunk rows][..]`, so that
    /// a step reads one contiguous block.
    pub(crate) xh: Buf,
}

/// Forward over a whole sequence.
///
/// `x` is `[B, T, I]`, `w_ih` `[3H, I]`, `w_hh` `[3H, H]`, `bias` `[6H]`
/// (`b_ih | b_hh`, zeros for a missing one), `state0` `[B, H]` (zeros when
/// `None`). Returns the hidden sequence `[B, T, H]` and, when `save`, what
/// backward needs.
pub(crate) fn forward(
    d: Dims,
    x: &[f32],
    w_ih: &[f32],
    w_hh: &[f32],
    bias: &[f32],
    state0: Option<&[f32]>,
    save: bool,
) -> (Vec<f32>, Option<Saved>) {
    run_forward::<true>(d, x, w_ih, w_hh, bias, state0, save)
}

/// [`forward`] on the portable kernels, whatever the CPU has.
#[cfg(test)]
pub(crate) fn forward_portable(
    d: Dims,
    x: &[f32],
    w_ih: &[f32],
    w_hh: &[f32],
    bias: &[f32],
    state0: Option<&[f32]>,
    save: bool,
) -> (Vec<f32>, Option<Saved>) {
    run_forward::<false>(d, x, w_ih, w_hh, bias, state0, save)
}

/// `SIMD`: whether to use the AVX2 + FMA kernels when the CPU has them.
fn run_forward<const SIMD: bool>(
    d: Dims,
    x: &[f32],
    w_ih: &[f32],
    w_hh: &[f32],
    bias: &[f32],
    state0: Option<&[f32]>,
    save: bool,
) -> (Vec<f32>, Option<Saved>) {
    let (b, t, i, h, g, s, k) = (
        d.batch,
        d.seq,
        d.input,
        d.hidden,
        d.gates(),
        d.slots(),
        d.xh(),
    );
    let wx = PackedB::from_transposed(g, &[(w_ih, i)]);
    let wh = PackedB::from_transposed(g, &[(w_hh, h)]);
    // The r and z biases of both projections add up (on the input side);
    // n keeps `b_hn` apart, inside `r ⊙ (W_hn h + b_hn)`.
    let (b_ih, b_hh) = bias.split_at(g);
    let mut bias_x = b_ih.to_vec();
    for (acc, v) in bias_x[..2 * h].iter_mut().zip(b_hh) {
        *acc += v;
    }
    let mut bias_h = vec![0.0f32; g];
    bias_h[2 * h..].copy_from_slice(&b_hh[2 * h..]);
    let zeros;
    let state0 = match state0 {
        Some(s) => s,
        None => {
            zeros = vec![0.0; b * h];
            &zeros
        }
    };
    let mut out = vec![0.0f32; b * t * h];
    // Recycled: every element is written (see `fwd_chunk`).
    let mut saved = save.then(|| Saved {
        gates: scratch::take(b * t * s),
        xh: scratch::take(b * t * k),
    });

    let rows = kernel::batch_chunk_rows(b);
    let mut gs = saved.as_mut().map(|v| {
        v.gates
            .chunks_mut(rows * t * s)
            .zip(v.xh.chunks_mut(rows * t * k))
    });
    let chunks: Vec<FwdChunk<'_>> = out
        .chunks_mut(rows * t * h)
        .zip(x.chunks(rows * t * i))
        .zip(state0.chunks(rows * h))
        .map(|((hseq, x), state0)| FwdChunk {
            batch: hseq.len() / (t * h).max(1),
            x,
            state0,
            hseq,
            save: gs.as_mut().and_then(Iterator::next),
        })
        .collect();
    let ctx = FwdCtx {
        d,
        wx: &wx,
        wh: &wh,
        bias_x: &bias_x,
        bias_h: &bias_h,
    };
    let run = |c: FwdChunk<'_>| fwd_dispatch::<SIMD>(&ctx, c);
    if chunks.len() > 1 {
        chunks.into_par_iter().for_each(run);
    } else {
        chunks.into_iter().for_each(run);
    }
    (out, saved)
}

/// What every forward chunk shares.
struct FwdCtx<'a> {
    d: Dims,
    /// `W_ih^T` `[I, 3H]`.
    wx: &'a PackedB,
    /// `W_hh^T` `[H, 3H]`.
    wh: &'a PackedB,
    /// Added to the input projection: `b_ir + b_hr | b_iz + b_hz | b_in`.
    bias_x: &'a [f32],
    /// Added to the hidden projection: `0 | 0 | b_hn`.
    bias_h: &'a [f32],
}

struct FwdChunk<'a> {
    batch: usize,
    x: &'a [f32],
    state0: &'a [f32],
    hseq: &'a mut [f32],
    /// Where to save the gates and the GEMM rows, see [`Saved`].
    save: Option<(&'a mut [f32], &'a mut [f32])>,
}

fn fwd_dispatch<const SIMD: bool>(ctx: &FwdCtx<'_>, c: FwdChunk<'_>) {
    #[cfg(target_arch = "x86_64")]
    if SIMD && kernel::has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        unsafe { fwd_avx2(ctx, c) };
        return;
    }
    fwd_chunk::<false>(ctx, c);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fwd_avx2(ctx: &FwdCtx<'_>, c: FwdChunk<'_>) {
    fwd_chunk::<true>(ctx, c);
}

#[inline(always)]
fn fwd_chunk<const FMA: bool>(ctx: &FwdCtx<'_>, c: FwdChunk<'_>) {
    let d = ctx.d;
    let (t_len, i, h, g, s, k) = (d.seq, d.input, d.hidden, d.gates(), d.slots(), d.xh());
    let FwdChunk {
        batch: bc,
        x,
        state0,
        hseq,
        save,
    } = c;
    // Training keeps every step's rows; inference reuses one step's worth.
    let mut scratch;
    let (gates, mut xh, t_stride) = match save {
        Some((gs, xh)) => (gs, Some(xh), 1),
        None => {
            scratch = vec![0.0f32; bc * s];
            (&mut scratch[..], None, 0)
        }
    };
    // One step's hidden projections, kept apart from the input ones until
    // the activation pass (n needs them apart).
    let mut gh = vec![0.0f32; bc * g];
    let (bias_x, bias_h) = (&ctx.bias_x[..g], &ctx.bias_h[..g]);

    for t in 0..t_len {
        // Row `r` of this step's gates is row `t0 + r`.
        let t0 = t * t_stride * bc;
        if let Some(xh) = xh.as_deref_mut() {
            for r in 0..bc {
                let row = &mut xh[(t * bc + r) * k..][..k];
                row[..i].copy_from_slice(&x[(r * t_len + t) * i..][..i]);
                let h_prev = if t == 0 {
                    &state0[r * h..][..h]
                } else {
                    &hseq[(r * t_len + t - 1) * h..][..h]
                };
                row[i..].copy_from_slice(h_prev);
            }
        }
        let mut r0 = 0;
        while r0 < bc {
            let rows = (bc - r0).min(MR);
            let xa = Rows {
                data: x,
                start: (r0 * t_len + t) * i,
                ld: t_len * i,
            };
            // Both stores add a bias (zeros for the hidden r and z): that
            // keeps them vector loops, where a plain copy would become a
            // `memcpy` call per tile row.
            kernel::gemm_rows::<FMA>(xa, rows, ctx.wx, |r, j0, acc| {
                let dst = &mut gates[(t0 + r0 + r) * s + j0..][..acc.len()];
                for ((d, a), b) in dst.iter_mut().zip(acc).zip(&bias_x[j0..]) {
                    *d = a + b;
                }
            });
            let ha = if t == 0 {
                Rows {
                    data: state0,
                    start: r0 * h,
                    ld: h,
                }
            } else {
                Rows {
                    data: hseq,
                    start: (r0 * t_len + t - 1) * h,
                    ld: t_len * h,
                }
            };
            kernel::gemm_rows::<FMA>(ha, rows, ctx.wh, |r, j0, acc| {
                let dst = &mut gh[(r0 + r) * g + j0..][..acc.len()];
                for ((d, a), b) in dst.iter_mut().zip(acc).zip(&bias_h[j0..]) {
                    *d = a + b;
                }
            });
            for r in r0..r0 + rows {
                let base = (r * t_len + t) * h;
                let (before, cur) = hseq.split_at_mut(base);
                let h_prev = if t == 0 {
                    &state0[r * h..][..h]
                } else {
                    &before[base - h..]
                };
                cell_forward::<FMA>(
                    &mut gates[(t0 + r) * s..][..s],
                    &gh[r * g..][..g],
                    h_prev,
                    &mut cur[..h],
                );
            }
            r0 += rows;
        }
    }
}

/// Gate activations and the state update of one row. `gates` holds the
/// input projection `x W_ih^T + b_ih (+ b_hr, b_hz)` in its first `3H` on
/// entry and `r | z | n | W_hn h + b_hn` on exit; `gh` is the hidden
/// projection `h W_hh^T (+ b_hn)`.
#[inline(always)]
fn cell_forward<const FMA: bool>(gates: &mut [f32], gh: &[f32], h_prev: &[f32], h: &mut [f32]) {
    let n = h.len();
    let (gr, rest) = gates.split_at_mut(n);
    let (gz, rest) = rest.split_at_mut(n);
    let (gn, ghn) = rest.split_at_mut(n);
    let (gr, gz, gn, ghn, h_prev) = (
        &mut gr[..n],
        &mut gz[..n],
        &mut gn[..n],
        &mut ghn[..n],
        &h_prev[..n],
    );
    let (hr, hz, hn) = (&gh[..n], &gh[n..2 * n], &gh[2 * n..3 * n]);
    let mut start = 0;
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: `FMA = true` only runs behind the AVX2 + FMA check.
        start = unsafe { avx2::cell_forward([gr, gz, gn, ghn], [hr, hz, hn], h_prev, h) };
    }
    for j in start..n {
        let rv = kernel::sigmoid(gr[j] + hr[j]);
        let zv = kernel::sigmoid(gz[j] + hz[j]);
        let nv = kernel::tanh(gn[j] + rv * hn[j]);
        gr[j] = rv;
        gz[j] = zv;
        gn[j] = nv;
        ghn[j] = hn[j];
        h[j] = nv + zv * (h_prev[j] - nv);
    }
}

/// Gradients of one layer call.
pub(crate) struct Grads {
    /// `[I + H, 3H]`: rows `0..I` the gradient of `W_ih`, transposed, with
    /// its gates in the order n, r, z; rows `I..` that of `W_hh`, transposed,
    /// in PyTorch's order r, z, n.
    pub(crate) dw_t: Vec<f32>,
    /// `[4H]`: column sums of the pre-activation gradients
    /// `dn | dr | dz | dn ⊙ r` (see [`cell_backward`]), from which both
    /// bias gradients follow.
    pub(crate) sums: Vec<f32>,
    /// `[B, T, I]`.
    pub(crate) dx: Vec<f32>,
    /// `[B, H]`.
    pub(crate) dh0: Vec<f32>,
}

/// Backward through time.
///
/// `saved` is what [`forward`] kept; `dseq` the gradient of the hidden
/// sequence `[B, T, H]` (`None`: zero) and `dfin` that of the final state
/// `[B, H]`. Each step's pre-activation gradients feed, while still in
/// cache, the gradients of the input and of the previous state and the
/// weight gradients (`dW^T += rows^T dgates_t`), so that the `[B, T, 4H]`
/// gate gradients never exist as a whole.
pub(crate) fn backward(
    d: Dims,
    saved: &Saved,
    dseq: Option<&[f32]>,
    dfin: &[f32],
    w_ih: &[f32],
    w_hh: &[f32],
) -> Grads {
    run_backward::<true>(d, saved, dseq, dfin, w_ih, w_hh)
}

/// [`backward`] on the portable kernels, whatever the CPU has.
#[cfg(test)]
pub(crate) fn backward_portable(
    d: Dims,
    saved: &Saved,
    dseq: Option<&[f32]>,
    dfin: &[f32],
    w_ih: &[f32],
    w_hh: &[f32],
) -> Grads {
    run_backward::<false>(d, saved, dseq, dfin, w_ih, w_hh)
}

fn run_backward<const SIMD: bool>(
    d: Dims,
    saved: &Saved,
    dseq: Option<&[f32]>,
    dfin: &[f32],
    w_ih: &[f32],
    w_hh: &[f32],
) -> Grads {
    let (b, t, i, h, g, s, k) = (
        d.batch,
        d.seq,
        d.input,
        d.hidden,
        d.gates(),
        d.slots(),
        d.xh(),
    );
    // dh_{t-1} gets `(dr | dz | dn ⊙ r) @ W_hh`, dx_t `(dn | dr | dz) @ W_ih`
    // with `W_ih`'s gates in that order.
    let wh = PackedB::from_fn(g, h, |p, j| w_hh[p * h + j]);
    let wx = PackedB::from_fn(g, i, |p, j| {
        let q = if p < h { p + 2 * h } else { p - h };
        w_ih[q * i + j]
    });
    let mut dx = vec![0.0f32; b * t * i];
    let mut dh0 = vec![0.0f32; b * h];

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
    let chunks: Vec<BwdChunk<'_>> = saved
        .gates
        .chunks(per(s))
        .zip(saved.xh.chunks(per(k)))
        .zip(dfin.chunks(rows * h).zip(dseq_chunks))
        .zip(acc.chunks_mut(acc_len))
        .zip(dx.chunks_mut(per(i)).zip(dh0.chunks_mut(rows * h)))
        .map(|((((gates, xh), (dfin, dseq)), acc), (dx, dh0))| {
            let (dw_t, sums) = acc.split_at_mut(k * g);
            BwdChunk {
                batch: dfin.len() / h,
                gates,
                xh,
                dseq,
                dfin,
                dw_t,
                sums,
                dx,
                dh0,
            }
        })
        .collect();
    let ctx = BwdCtx {
        d,
        wx: &wx,
        wh: &wh,
    };
    let run = |c: BwdChunk<'_>| bwd_dispatch::<SIMD>(&ctx, c);
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
        dh0,
    }
}

/// What every backward chunk shares.
struct BwdCtx<'a> {
    d: Dims,
    /// `W_ih` `[3H, I]`, gates in the order n, r, z.
    wx: &'a PackedB,
    /// `W_hh` `[3H, H]`.
    wh: &'a PackedB,
}

struct BwdChunk<'a> {
    batch: usize,
    /// See [`Saved`].
    gates: &'a [f32],
    xh: &'a [f32],
    /// `[bc, T, H]`, `None` when zero.
    dseq: Option<&'a [f32]>,
    /// `[bc, H]`.
    dfin: &'a [f32],
    /// `[I + H, 3H]`, accumulated into (see [`Grads`]).
    dw_t: &'a mut [f32],
    /// `[4H]`, accumulated into.
    sums: &'a mut [f32],
    dx: &'a mut [f32],
    dh0: &'a mut [f32],
}

fn bwd_dispatch<const SIMD: bool>(ctx: &BwdCtx<'_>, c: BwdChunk<'_>) {
    #[cfg(target_arch = "x86_64")]
    if SIMD && kernel::has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        unsafe { bwd_avx2(ctx, c) };
        return;
    }
    bwd_chunk::<false>(ctx, c);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn bwd_avx2(ctx: &BwdCtx<'_>, c: BwdChunk<'_>) {
    bwd_chunk::<true>(ctx, c);
}

#[inline(always)]
fn bwd_chunk<const FMA: bool>(ctx: &BwdCtx<'_>, c: BwdChunk<'_>) {
    let d = ctx.d;
    let (t_len, i, h, g, s, k) = (d.seq, d.input, d.hidden, d.gates(), d.slots(), d.xh());
    let BwdChunk {
        batch: bc,
        gates,
        xh,
        dseq,
        dfin,
        dw_t,
        sums,
        dx,
        dh0,
    } = c;
    let no_dh = vec![0.0f32; h];
    // On entry to a step: the gradient flowing into h_t from step t + 1
    // (from the final state's gradient at the last step).
    let mut dh_next = dfin.to_vec();
    // This step's pre-activation gradients `[bc, 4H]`; their input-side
    // (`dn | dr | dz`) and hidden-side (`dr | dz | dn ⊙ r`) columns packed
    // as right-hand sides of the weight-gradient GEMMs, and this step's
    // GEMM rows transposed, `[I + H, bc]`, as their left-hand side.
    let mut dg = vec![0.0f32; bc * s];
    let mut dg_x = PackedB::zeros(bc, g);
    let mut dg_h = PackedB::zeros(bc, g);
    let mut xh_t = vec![0.0f32; k * bc];
    for t in (0..t_len).rev() {
        let mut r0 = 0;
        while r0 < bc {
            let rows = (bc - r0).min(MR);
            for r in r0..r0 + rows {
                let row = t * bc + r;
                cell_backward::<FMA>(
                    &gates[row * s..][..s],
                    &xh[row * k + i..][..h],
                    match dseq {
                        Some(v) => &v[(r * t_len + t) * h..][..h],
                        None => &no_dh,
                    },
                    &mut dh_next[r * h..][..h],
                    &mut dg[r * s..][..s],
                );
            }
            // The hidden-side gradient, the last 3H.
            let a = Rows {
                data: &dg,
                start: r0 * s + h,
                ld: s,
            };
            kernel::gemm_rows::<FMA>(a, rows, ctx.wh, |r, j0, acc| {
                let dst = &mut dh_next[(r0 + r) * h + j0..][..acc.len()];
                for (d, a) in dst.iter_mut().zip(acc) {
                    *d += a;
                }
            });
            // The input-side gradient, the first 3H.
            let a = Rows {
                data: &dg,
                start: r0 * s,
                ld: s,
            };
            kernel::gemm_rows::<FMA>(a, rows, ctx.wx, |r, j0, acc| {
                dx[((r0 + r) * t_len + t) * i + j0..][..acc.len()].copy_from_slice(acc);
            });
            r0 += rows;
        }

        // Weight and bias gradients of this step.
        for row in dg.chunks_exact(s) {
            for (a, v) in sums.iter_mut().zip(row) {
                *a += v;
            }
        }
        dg_x.fill_rows(&dg, s);
        dg_h.fill_rows(&dg[h..], s);
        for (r, src) in xh[t * bc * k..][..bc * k].chunks_exact(k).enumerate() {
            for (p, v) in src.iter().enumerate() {
                xh_t[p * bc + r] = *v;
            }
        }
        for (lo, hi, dg_packed) in [(0, i, &dg_x), (i, k, &dg_h)] {
            let mut p0 = lo;
            while p0 < hi {
                let rows = (hi - p0).min(MR);
                let a = Rows {
                    data: &xh_t,
                    start: p0 * bc,
                    ld: bc,
                };
                kernel::gemm_rows::<FMA>(a, rows, dg_packed, |r, j0, acc| {
                    let dst = &mut dw_t[(p0 + r) * g + j0..][..acc.len()];
                    for (d, a) in dst.iter_mut().zip(acc) {
                        *d += a;
                    }
                });
                p0 += rows;
            }
        }
    }
    dh0.copy_from_slice(&dh_next);
}

/// Backward of one row of one step, writing `dg` (`dn | dr | dz | dn ⊙ r`,
/// see [`Grads`]). `dh_next` holds the gradient of `h_t` from step t + 1 on
/// entry and the direct part `dh_t ⊙ z` of the gradient of `h_{t-1}` on exit
/// (the GEMM through `W_hh` adds the rest).
#[inline(always)]
fn cell_backward<const FMA: bool>(
    gates: &[f32],
    h_prev: &[f32],
    dh_out: &[f32],
    dh_next: &mut [f32],
    dg: &mut [f32],
) {
    let n = h_prev.len();
    let (gr, rest) = gates.split_at(n);
    let (gz, rest) = rest.split_at(n);
    let (gn, ghn) = rest.split_at(n);
    let (dn, rest) = dg.split_at_mut(n);
    let (dr, rest) = rest.split_at_mut(n);
    let (dz, dhn) = rest.split_at_mut(n);
    let (gr, gz, gn, ghn) = (&gr[..n], &gz[..n], &gn[..n], &ghn[..n]);
    let (dn, dr, dz, dhn) = (&mut dn[..n], &mut dr[..n], &mut dz[..n], &mut dhn[..n]);
    let (dh_out, dh_next) = (&dh_out[..n], &mut dh_next[..n]);
    let mut start = 0;
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: `FMA = true` only runs behind the AVX2 + FMA check.
        start = unsafe {
            avx2::cell_backward(
                [gr, gz, gn, ghn],
                h_prev,
                dh_out,
                dh_next,
                [dn, dr, dz, dhn],
            )
        };
    }
    for j in start..n {
        let (rv, zv, nv) = (gr[j], gz[j], gn[j]);
        let dh = dh_out[j] + dh_next[j];
        let dnv = dh * (1.0 - zv) * (1.0 - nv * nv);
        dn[j] = dnv;
        dr[j] = dnv * ghn[j] * rv * (1.0 - rv);
        dz[j] = dh * (h_prev[j] - nv) * zv * (1.0 - zv);
        dhn[j] = dnv * rv;
        dh_next[j] = dh * zv;
    }
}

/// Eight lanes at a time; each returns how many leading elements it did.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256, _mm256_add_ps, _mm256_fmadd_ps, _mm256_fnmadd_ps, _mm256_mul_ps, _mm256_sub_ps,
    };

    use crate::kernel::simd::{load, sigmoid, splat, store, tanh};

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) fn cell_forward(
        [gr, gz, gn, ghn]: [&mut [f32]; 4],
        [hr, hz, hn]: [&[f32]; 3],
        h_prev: &[f32],
        h: &mut [f32],
    ) -> usize {
        let n = h.len() / 8 * 8;
        let mut j = 0;
        while j < n {
            let rv = sigmoid(_mm256_add_ps(load(&gr[j..]), load(&hr[j..])));
            let zv = sigmoid(_mm256_add_ps(load(&gz[j..]), load(&hz[j..])));
            let hnv = load(&hn[j..]);
            let nv = tanh(_mm256_fmadd_ps(rv, hnv, load(&gn[j..])));
            let hv = _mm256_fmadd_ps(zv, _mm256_sub_ps(load(&h_prev[j..]), nv), nv);
            store(&mut gr[j..], rv);
            store(&mut gz[j..], zv);
            store(&mut gn[j..], nv);
            store(&mut ghn[j..], hnv);
            store(&mut h[j..], hv);
            j += 8;
        }
        n
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) fn cell_backward(
        [gr, gz, gn, ghn]: [&[f32]; 4],
        h_prev: &[f32],
        dh_out: &[f32],
        dh_next: &mut [f32],
        [dn, dr, dz, dhn]: [&mut [f32]; 4],
    ) -> usize {
        let n = h_prev.len() / 8 * 8;
        let one = splat(1.0);
        let dsig = |v: __m256| _mm256_mul_ps(v, _mm256_sub_ps(one, v));
        let mut j = 0;
        while j < n {
            let (rv, zv, nv) = (load(&gr[j..]), load(&gz[j..]), load(&gn[j..]));
            let dh = _mm256_add_ps(load(&dh_out[j..]), load(&dh_next[j..]));
            // dn = dh (1 - z) (1 - n^2)
            let dnv = _mm256_mul_ps(
                _mm256_mul_ps(dh, _mm256_sub_ps(one, zv)),
                _mm256_fnmadd_ps(nv, nv, one),
            );
            store(&mut dn[j..], dnv);
            // dr = dn (W_hn h + b_hn) r (1 - r)
            store(
                &mut dr[j..],
                _mm256_mul_ps(_mm256_mul_ps(dnv, load(&ghn[j..])), dsig(rv)),
            );
            // dz = dh (h_prev - n) z (1 - z)
            store(
                &mut dz[j..],
                _mm256_mul_ps(
                    _mm256_mul_ps(dh, _mm256_sub_ps(load(&h_prev[j..]), nv)),
                    dsig(zv),
                ),
            );
            store(&mut dhn[j..], _mm256_mul_ps(dnv, rv));
            store(&mut dh_next[j..], _mm256_mul_ps(dh, zv));
            j += 8;
        }
        n
    }
}
