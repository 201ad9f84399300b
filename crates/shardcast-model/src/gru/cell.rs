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
}

/// Forward over a whole sequence.
///
/// `x` is `[B, T, I]`, `w_ih` `[3H, I]`, `w_hh` `[3H, H]`, `bias` `[6H]`
/// (`b_ih | b_hh`, zeros for a missing one), `state0` `[B, H]` (zeros when
/// `None`). Returns the hidden sequence `[B, T, H]` and, when `save`, the
/// activations backward needs: `[B, T, 4H]` rows `r | z | n | W_hn h + b_hn`.
pub(crate) fn forward(
    d: Dims,
    x: &[f32],
    w_ih: &[f32],
    w_hh: &[f32],
    bias: &[f32],
    state0: Option<&[f32]>,
    save: bool,
) -> (Vec<f32>, Option<Buf>) {
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
) -> (Vec<f32>, Option<Buf>) {
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
) -> (Vec<f32>, Option<Buf>) {
    let (b, t, i, h, g, s) = (d.batch, d.seq, d.input, d.hidden, d.gates(), d.slots());
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
    // Recycled: every element is written (see `cell_forward`).
    let mut saved = save.then(|| scratch::take(b * t * s));

    let rows = kernel::batch_chunk_rows(b);
    let mut gs = saved.as_mut().map(|v| v.chunks_mut(rows * t * s));
    let chunks: Vec<FwdChunk<'_>> = out
        .chunks_mut(rows * t * h)
        .zip(x.chunks(rows * t * i))
        .zip(state0.chunks(rows * h))
        .map(|((hseq, x), state0)| FwdChunk {
            batch: hseq.len() / (t * h).max(1),
            x,
            state0,
            hseq,
            gates: gs.as_mut().and_then(Iterator::next),
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
    gates: Option<&'a mut [f32]>,
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
    let (t_len, i, h, g, s) = (d.seq, d.input, d.hidden, d.gates(), d.slots());
    let FwdChunk {
        batch: bc,
        x,
        state0,
        hseq,
        gates,
    } = c;
    // Training keeps every step's rows; inference reuses one step's worth.
    let mut scratch;
    let (gates, t_stride) = match gates {
        Some(gs) => (gs, 1),
        None => {
            scratch = vec![0.0f32; bc * s];
            (&mut scratch[..], 0)
        }
    };
    let g_ld = if t_stride == 1 { t_len * s } else { s };
    // One step's hidden projections, kept apart from the input ones until
    // the activation pass (n needs them apart).
    let mut gh = vec![0.0f32; bc * g];
    let (bias_x, bias_h) = (&ctx.bias_x[..g], &ctx.bias_h[..g]);

    for t in 0..t_len {
        let g_t = t * t_stride * s;
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
                let dst = &mut gates[(r0 + r) * g_ld + g_t + j0..][..acc.len()];
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
                    &mut gates[r * g_ld + g_t..][..s],
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

/// Gradients of one layer call, apart from those of the weights and the
/// input, which come from large GEMMs over the whole sequence afterwards.
pub(crate) struct Grads {
    /// Pre-activation gradients `[B, T, 4H]`, rows `dn | dr | dz | dn ⊙ r`:
    /// columns `0..3H` are the gradient of the input projection
    /// `x_t W_ih^T + b_ih` with its gates in the order n, r, z, and columns
    /// `H..4H` that of the hidden projection `h_{t-1} W_hh^T + b_hh` in
    /// PyTorch's order r, z, n. One buffer serves both: they differ only in
    /// n, which `r` scales on the hidden side.
    pub(crate) dg: Vec<f32>,
    /// `[B, H]`.
    pub(crate) dh0: Vec<f32>,
}

/// Backward through time.
///
/// `gates` are the saved activations, `hseq` the forward result `[B, T, H]`
/// and `dout` its gradient.
pub(crate) fn backward(
    d: Dims,
    gates: &[f32],
    hseq: &[f32],
    dout: &[f32],
    w_hh: &[f32],
    state0: Option<&[f32]>,
) -> Grads {
    run_backward::<true>(d, gates, hseq, dout, w_hh, state0)
}

/// [`backward`] on the portable kernels, whatever the CPU has.
#[cfg(test)]
pub(crate) fn backward_portable(
    d: Dims,
    gates: &[f32],
    hseq: &[f32],
    dout: &[f32],
    w_hh: &[f32],
    state0: Option<&[f32]>,
) -> Grads {
    run_backward::<false>(d, gates, hseq, dout, w_hh, state0)
}

fn run_backward<const SIMD: bool>(
    d: Dims,
    gates: &[f32],
    hseq: &[f32],
    dout: &[f32],
    w_hh: &[f32],
    state0: Option<&[f32]>,
) -> Grads {
    let (b, t, h, g, s) = (d.batch, d.seq, d.hidden, d.gates(), d.slots());
    // dh_{t-1} gets dgh_t @ W_hh.
    let wb = PackedB::from_fn(g, h, |p, j| w_hh[p * h + j]);
    let zeros;
    let state0 = match state0 {
        Some(s) => s,
        None => {
            zeros = vec![0.0; b * h];
            &zeros
        }
    };
    let mut grads = Grads {
        dg: vec![0.0; b * t * s],
        dh0: vec![0.0; b * h],
    };
    let rows = kernel::batch_chunk_rows(b);
    let per = |n: usize| rows * t * n;
    let chunks: Vec<BwdChunk<'_>> = gates
        .chunks(per(s))
        .zip(hseq.chunks(per(h)).zip(dout.chunks(per(h))))
        .zip(state0.chunks(rows * h))
        .zip(grads.dg.chunks_mut(per(s)))
        .zip(grads.dh0.chunks_mut(rows * h))
        .map(|((((gates, (hseq, dh_seq)), state0), dg), dh0)| BwdChunk {
            batch: hseq.len() / (t * h).max(1),
            gates,
            hseq,
            dh_seq,
            state0,
            dg,
            dh0,
        })
        .collect();
    let run = |c: BwdChunk<'_>| bwd_dispatch::<SIMD>(d, &wb, c);
    if chunks.len() > 1 {
        chunks.into_par_iter().for_each(run);
    } else {
        chunks.into_iter().for_each(run);
    }
    grads
}

struct BwdChunk<'a> {
    batch: usize,
    gates: &'a [f32],
    hseq: &'a [f32],
    dh_seq: &'a [f32],
    state0: &'a [f32],
    dg: &'a mut [f32],
    dh0: &'a mut [f32],
}

fn bwd_dispatch<const SIMD: bool>(d: Dims, wb: &PackedB, c: BwdChunk<'_>) {
    #[cfg(target_arch = "x86_64")]
    if SIMD && kernel::has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        unsafe { bwd_avx2(d, wb, c) };
        return;
    }
    bwd_chunk::<false>(d, wb, c);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn bwd_avx2(d: Dims, wb: &PackedB, c: BwdChunk<'_>) {
    bwd_chunk::<true>(d, wb, c);
}

#[inline(always)]
fn bwd_chunk<const FMA: bool>(d: Dims, wb: &PackedB, c: BwdChunk<'_>) {
    let (t_len, h, s) = (d.seq, d.hidden, d.slots());
    let BwdChunk {
        batch: bc,
        gates,
        hseq,
        dh_seq,
        state0,
        dg,
        dh0,
    } = c;
    // On entry to a step: the gradient flowing into h_t from step t + 1.
    let mut dh_next = vec![0.0f32; bc * h];
    for t in (0..t_len).rev() {
        let mut r0 = 0;
        while r0 < bc {
            let rows = (bc - r0).min(MR);
            for r in r0..r0 + rows {
                let base = (r * t_len + t) * h;
                let h_prev = if t == 0 {
                    &state0[r * h..][..h]
                } else {
                    &hseq[base - h..][..h]
                };
                let row = (r * t_len + t) * s;
                cell_backward::<FMA>(
                    &gates[row..][..s],
                    h_prev,
                    &dh_seq[base..][..h],
                    &mut dh_next[r * h..][..h],
                    &mut dg[row..][..s],
                );
            }
            // The hidden-side gradient `dr | dz | dn ⊙ r`, the last 3H.
            let a = Rows {
                data: dg,
                start: (r0 * t_len + t) * s + h,
                ld: t_len * s,
            };
            kernel::gemm_rows::<FMA>(a, rows, wb, |r, j0, acc| {
                let dst = &mut dh_next[(r0 + r) * h + j0..][..acc.len()];
                for (d, a) in dst.iter_mut().zip(acc) {
                    *d += a;
                }
            });
            r0 += rows;
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
