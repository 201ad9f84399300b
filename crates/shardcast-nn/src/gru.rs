//! The GRU cell: PyTorch's `nn.GRU`, gates r, z, n.
//!
//! Weights use PyTorch's names and layouts (`weight_ih_l{k}` `[3H, I]`,
//! `weight_hh_l{k}` `[3H, H]`, `bias_ih_l{k}`, `bias_hh_l{k}`), so a PyTorch
//! `nn.GRU(batch_first=True)` state dict or a candle-nn `GRU` loads
//! unchanged. The update is PyTorch's:
//!
//! ```text
//! r  = σ(W_ir x + b_ir + W_hr h + b_hr)
//! z  = σ(W_iz x + b_iz + W_hz h + b_hz)
//! n  = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
//! h' = (1 − z) ⊙ n + z ⊙ h
//! ```
//!
//! Unlike the LSTM's, the input and hidden projections cannot be summed
//! into one GEMM over `[x_t | h_{t-1}]`: the candidate gate needs `W_hn h +
//! b_hn` on its own (it is scaled by `r`). Each step therefore runs `x_t
//! W_ih^T` and `h_{t-1} W_hh^T` as two GEMMs (a fused `[x_t | h_{t-1}]` GEMM
//! would need a fourth, half-zero block of columns) and the activation pass
//! combines them. Backward steps through time the same way; each step's
//! gate gradients go through `W_hh` and `W_ih` (the gradients of `h_{t-1}`
//! and `x_t`) and into the weight gradients while still in cache.

use candle_core::Tensor;

use crate::cell::{BiasLayout, Cell, CellKernels};
use crate::error::Result;
use crate::fused::{BwdStep, Dims, FwdStep};
use crate::kernel::{self, PackedB, Rows, row_blocks};
use crate::layer::{LayerOutput, Rnn, RnnConfig, RnnLayer, StackOutput};
use crate::portable;

/// The GRU cell, the type parameter of [`Gru`] and [`GruLayer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GruCell;

/// Shape of a GRU stack.
pub type GruConfig = RnnConfig;

/// One GRU layer's weights in PyTorch layout.
pub type GruLayer = RnnLayer<GruCell>;

/// Result of running one GRU layer over a sequence; its state is the
/// hidden state `[batch, hidden]`.
pub type GruOutput = LayerOutput<GruCell>;

/// A stack of GRU layers, as PyTorch's `nn.GRU(batch_first=True)`.
pub type Gru = Rnn<GruCell>;

/// Result of running a GRU stack.
pub type GruStackOutput = StackOutput<GruCell>;

impl Cell for GruCell {
    const NAME: &'static str = "gru";
    const GATES: usize = 3;
    const STATE: &'static [&'static str] = &["h0"];
    /// The hidden state, `[batch, hidden]`.
    type State = Tensor;

    fn hidden(state: &Tensor) -> &Tensor {
        state
    }

    fn parts(state: &Tensor) -> Vec<&Tensor> {
        vec![state]
    }

    fn from_parts(parts: Vec<Tensor>) -> Tensor {
        let [h] = <[Tensor; 1]>::try_from(parts).expect("a GRU state has one part");
        h
    }
}

/// The GRU's packed forward weights and biases.
pub struct FwdWeights {
    /// `W_ih^T` `[I, 3H]`.
    wx: PackedB,
    /// `W_hh^T` `[H, 3H]`.
    wh: PackedB,
    /// Added to the input projection: `b_ir + b_hr | b_iz + b_hz | b_in`.
    bias_x: Vec<f32>,
    /// Added to the hidden projection: `0 | 0 | b_hn`.
    bias_h: Vec<f32>,
}

/// The GRU's packed backward weights.
pub struct BwdWeights {
    /// `W_ih` `[3H, I]`, gates in the order n, r, z.
    wx: PackedB,
    /// `W_hh` `[3H, H]`.
    wh: PackedB,
}

/// What the backward steps of a batch chunk carry.
pub struct BwdWork {
    /// The outside gradient of h when the sequence has none.
    no_dh: Vec<f32>,
    /// On entry to a step: the gradient flowing into h_t from step t + 1
    /// (from the final state's gradient at the last step).
    dh_next: Vec<f32>,
}

impl CellKernels for GruCell {
    const OP_NAME: &'static str = "shardcast-gru";
    const SEQ_NAME: &'static str = "shardcast-gru-seq";
    /// `r | z | n | W_hn h + b_hn`.
    const SLOTS: usize = 4;
    const BIAS: BiasLayout = BiasLayout::Separate;
    const XH_GEMM: bool = false;
    type FwdWeights = FwdWeights;
    type BwdWeights = BwdWeights;
    /// One step's hidden projections `[rows, 3H]`, kept apart from the
    /// input ones until the activation pass (n needs them apart).
    type FwdWork = Vec<f32>;
    type BwdWork = BwdWork;

    fn pack_forward(d: Dims, w_ih: &[f32], w_hh: &[f32], bias: &[f32]) -> FwdWeights {
        let (i, h, g) = (d.input, d.hidden, d.gates::<Self>());
        // The r and z biases of both projections add up (on the input side);
        // n keeps `b_hn` apart, inside `r ⊙ (W_hn h + b_hn)`.
        let (b_ih, b_hh) = bias.split_at(g);
        let mut bias_x = b_ih.to_vec();
        for (acc, v) in bias_x[..2 * h].iter_mut().zip(b_hh) {
            *acc += v;
        }
        let mut bias_h = vec![0.0f32; g];
        bias_h[2 * h..].copy_from_slice(&b_hh[2 * h..]);
        FwdWeights {
            wx: PackedB::from_transposed(g, &[(w_ih, i)]),
            wh: PackedB::from_transposed(g, &[(w_hh, h)]),
            bias_x,
            bias_h,
        }
    }

    fn pack_backward(d: Dims, w_ih: &[f32], w_hh: &[f32]) -> BwdWeights {
        let (i, h, g) = (d.input, d.hidden, d.gates::<Self>());
        // dh_{t-1} gets `(dr | dz | dn ⊙ r) @ W_hh`, dx_t `(dn | dr | dz) @
        // W_ih` with `W_ih`'s gates in that order.
        BwdWeights {
            wh: PackedB::from_fn(g, h, |p, j| w_hh[p * h + j]),
            wx: PackedB::from_fn(g, i, |p, j| {
                let q = if p < h { p + 2 * h } else { p - h };
                w_ih[q * i + j]
            }),
        }
    }

    fn forward_work(d: Dims, rows: usize) -> Vec<f32> {
        vec![0.0f32; rows * d.gates::<Self>()]
    }

    #[inline(always)]
    fn forward_step<const FMA: bool>(d: Dims, w: &FwdWeights, s: FwdStep<'_>, gh: &mut Vec<f32>) {
        let (t_len, i, h, g, sl) = (
            d.seq,
            d.input,
            d.hidden,
            d.gates::<Self>(),
            d.slots::<Self>(),
        );
        let FwdStep {
            t,
            batch: bc,
            x,
            state0,
            hseq,
            t0,
            gates,
            ..
        } = s;
        let (bias_x, bias_h) = (&w.bias_x[..g], &w.bias_h[..g]);
        for (r0, rows) in row_blocks(0, bc) {
            let xa = Rows {
                data: x,
                start: (r0 * t_len + t) * i,
                ld: t_len * i,
            };
            // Both stores add a bias (zeros for the hidden r and z): that
            // keeps them vector loops, where a plain copy would become a
            // `memcpy` call per tile row.
            kernel::gemm_rows::<FMA>(xa, rows, &w.wx, |r, j0, acc| {
                let dst = &mut gates[(t0 + r0 + r) * sl + j0..][..acc.len()];
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
            kernel::gemm_rows::<FMA>(ha, rows, &w.wh, |r, j0, acc| {
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
                    &mut gates[(t0 + r) * sl..][..sl],
                    &gh[r * g..][..g],
                    h_prev,
                    &mut cur[..h],
                );
            }
        }
    }

    fn backward_work(d: Dims, _rows: usize, dfin: &[f32]) -> BwdWork {
        BwdWork {
            no_dh: vec![0.0f32; d.hidden],
            dh_next: dfin.to_vec(),
        }
    }

    #[inline(always)]
    fn backward_step<const FMA: bool>(d: Dims, w: &BwdWeights, s: BwdStep<'_>, work: &mut BwdWork) {
        let (t_len, i, h, sl, k) = (d.seq, d.input, d.hidden, d.slots::<Self>(), d.xh());
        let BwdStep {
            t,
            batch: bc,
            gates,
            xh,
            dseq,
            dx,
            dg,
            ..
        } = s;
        for (r0, rows) in row_blocks(0, bc) {
            for r in r0..r0 + rows {
                cell_backward::<FMA>(
                    &gates[r * sl..][..sl],
                    &xh[r * k + i..][..h],
                    match dseq {
                        Some(v) => &v[(r * t_len + t) * h..][..h],
                        None => &work.no_dh,
                    },
                    &mut work.dh_next[r * h..][..h],
                    &mut dg[r * sl..][..sl],
                );
            }
            // The hidden-side gradient, the last 3H.
            let a = Rows {
                data: dg,
                start: r0 * sl + h,
                ld: sl,
            };
            let dh_next = &mut work.dh_next;
            kernel::gemm_rows::<FMA>(a, rows, &w.wh, |r, j0, acc| {
                let dst = &mut dh_next[(r0 + r) * h + j0..][..acc.len()];
                for (d, a) in dst.iter_mut().zip(acc) {
                    *d += a;
                }
            });
            // The input-side gradient, the first 3H.
            let a = Rows {
                data: dg,
                start: r0 * sl,
                ld: sl,
            };
            kernel::gemm_rows::<FMA>(a, rows, &w.wx, |r, j0, acc| {
                dx[((r0 + r) * t_len + t) * i + j0..][..acc.len()].copy_from_slice(acc);
            });
        }
    }

    fn backward_finish(_d: Dims, work: BwdWork, dstate0: &mut [f32]) {
        dstate0.copy_from_slice(&work.dh_next);
    }

    /// The input weights pair with `dn | dr | dz`, the hidden weights with
    /// `dr | dz | dn ⊙ r` (see [`cell_backward`]).
    fn grad_columns(h: usize) -> (usize, usize) {
        (0, h)
    }

    fn input_grad_column(q: usize, h: usize) -> usize {
        if q < 2 * h { q + h } else { q - 2 * h }
    }

    fn bias_grads(h: usize, sums: &[f32], out: &mut Vec<f32>) {
        // `b_ih` gets `dr | dz | dn`, `b_hh` `dr | dz | dn ⊙ r`.
        let (s_n, s_rz, s_hn) = (&sums[..h], &sums[h..3 * h], &sums[3 * h..]);
        for part in [s_rz, s_n, s_rz, s_hn] {
            out.extend_from_slice(part);
        }
    }

    fn portable_step(gi: &Tensor, gh: &Tensor, state: &[Tensor], hs: usize) -> Result<Vec<Tensor>> {
        let h = &state[0];
        let r = portable::sigmoid(&(portable::gate(gi, 0, hs)? + portable::gate(gh, 0, hs)?)?)?;
        let z = portable::sigmoid(&(portable::gate(gi, 1, hs)? + portable::gate(gh, 1, hs)?)?)?;
        let n = (portable::gate(gi, 2, hs)? + (r * portable::gate(gh, 2, hs)?)?)?.tanh()?;
        // (1 - z) n + z h = n + z (h - n)
        Ok(vec![(&n + (z * (h - &n)?)?)?])
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

/// Backward of one row of one step, writing `dg`: the pre-activation
/// gradients `dn | dr | dz | dn ⊙ r`. `dh_next` holds the gradient of `h_t`
/// from step t + 1 on entry and the direct part `dh_t ⊙ z` of the gradient
/// of `h_{t-1}` on exit (the GEMM through `W_hh` adds the rest).
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
