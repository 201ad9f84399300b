//! The LSTM cell: PyTorch's `nn.LSTM`, gates i, f, g, o.
//!
//! Weights use PyTorch's names and layouts (`weight_ih_l{k}` `[4H, I]`,
//! `weight_hh_l{k}` `[4H, H]`, `bias_ih_l{k}`, `bias_hh_l{k}`), so a PyTorch
//! `nn.LSTM(batch_first=True)` state dict or a candle-nn `LSTM` loads
//! unchanged. Both biases add to every gate, so the kernels take their sum,
//! and one GEMM over the row `[x_t | h_{t-1}]` with `B = [W_ih^T ; W_hh^T]`
//! gives all pre-activations of a step.

use candle_core::Tensor;

use crate::cell::{BiasLayout, Cell, CellKernels};
use crate::error::Result;
use crate::fused::{BwdStep, Dims, FwdStep};
use crate::kernel::{self, PackedB, Rows, row_blocks};
use crate::layer::{LayerOutput, Rnn, RnnConfig, RnnLayer, StackOutput};
use crate::portable;

/// The LSTM cell, the type parameter of [`Lstm`] and [`LstmLayer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LstmCell;

/// Shape of an LSTM stack.
pub type LstmConfig = RnnConfig;

/// One LSTM layer's weights in PyTorch layout.
pub type LstmLayer = RnnLayer<LstmCell>;

/// Result of running one LSTM layer over a sequence.
pub type LstmOutput = LayerOutput<LstmCell>;

/// A stack of LSTM layers, as PyTorch's `nn.LSTM(batch_first=True)`.
pub type Lstm = Rnn<LstmCell>;

/// Result of running an LSTM stack.
pub type LstmStackOutput = StackOutput<LstmCell>;

/// Hidden and cell state of one LSTM layer, each `[batch, hidden]`.
#[derive(Debug, Clone)]
pub struct LstmState {
    /// Hidden state.
    pub h: Tensor,
    /// Cell state.
    pub c: Tensor,
}

impl Cell for LstmCell {
    const NAME: &'static str = "lstm";
    const GATES: usize = 4;
    const STATE: &'static [&'static str] = &["h0", "c0"];
    type State = LstmState;

    fn hidden(state: &LstmState) -> &Tensor {
        &state.h
    }

    fn parts(state: &LstmState) -> Vec<&Tensor> {
        vec![&state.h, &state.c]
    }

    fn from_parts(parts: Vec<Tensor>) -> LstmState {
        let [h, c] = <[Tensor; 2]>::try_from(parts).expect("an LSTM state has two parts");
        LstmState { h, c }
    }
}

/// The LSTM's packed forward weights.
pub struct FwdWeights {
    /// `[W_ih^T ; W_hh^T]`, `[I + H, 4H]`.
    w: PackedB,
    /// `b_ih + b_hh`, `[4H]`.
    bias: Vec<f32>,
}

/// What the backward steps of a batch chunk carry.
pub struct BwdWork {
    /// Outside gradients of step t's h: the sequence's (if any) and, at the
    /// last step, the final state's.
    dh_out: Vec<f32>,
    /// The outside gradient of c before the last step.
    no_dc: Vec<f32>,
    /// Gradients flowing into step t from step t + 1.
    dh_next: Vec<f32>,
    dc_next: Vec<f32>,
}

impl CellKernels for LstmCell {
    const OP_NAME: &'static str = "shardcast-lstm";
    const SEQ_NAME: &'static str = "shardcast-lstm-seq";
    /// The gate activations i, f, g, o.
    const SLOTS: usize = 4;
    const BIAS: BiasLayout = BiasLayout::Summed;
    const XH_GEMM: bool = true;
    type FwdWeights = FwdWeights;
    /// `[W_ih | W_hh]`, `[4H, I + H]`: one GEMM per step gives `[dx_t |
    /// dh_{t-1}]`.
    type BwdWeights = PackedB;
    type FwdWork = ();
    type BwdWork = BwdWork;

    fn pack_forward(d: Dims, w_ih: &[f32], w_hh: &[f32], bias: &[f32]) -> FwdWeights {
        FwdWeights {
            w: PackedB::from_transposed(d.gates::<Self>(), &[(w_ih, d.input), (w_hh, d.hidden)]),
            bias: bias.to_vec(),
        }
    }

    fn pack_backward(d: Dims, w_ih: &[f32], w_hh: &[f32]) -> PackedB {
        let (i, h) = (d.input, d.hidden);
        PackedB::from_fn(d.gates::<Self>(), d.xh(), |p, j| {
            if j < i {
                w_ih[p * i + j]
            } else {
                w_hh[p * h + j - i]
            }
        })
    }

    fn forward_work(_d: Dims, _rows: usize) {}

    #[inline(always)]
    fn forward_step<const FMA: bool>(d: Dims, w: &FwdWeights, s: FwdStep<'_>, _work: &mut ()) {
        let (h, g, k) = (d.hidden, d.gates::<Self>(), d.xh());
        let hs = d.seq * h;
        let FwdStep {
            t,
            batch: bc,
            state0,
            hseq,
            cseq,
            t0,
            gates,
            xh,
            ..
        } = s;
        let bias = &w.bias[..g];
        for (r0, rows) in row_blocks(0, bc) {
            let a = Rows {
                data: xh,
                start: (t0 + r0) * k,
                ld: k,
            };
            kernel::gemm_rows::<FMA>(a, rows, &w.w, |r, j0, acc| {
                let dst = &mut gates[(t0 + r0 + r) * g + j0..][..acc.len()];
                let b = &bias[j0..][..acc.len()];
                for ((d, a), b) in dst.iter_mut().zip(acc).zip(b) {
                    *d = a + b;
                }
            });
            for r in r0..r0 + rows {
                let gate_row = &mut gates[(t0 + r) * g..][..g];
                let base = (t * bc + r) * h;
                let (c_prev_buf, c_cur) = cseq.split_at_mut(base);
                let c_prev = if t == 0 {
                    &state0[r * 2 * h + h..][..h]
                } else {
                    &c_prev_buf[base - bc * h..][..h]
                };
                let h_cur = &mut hseq[r * hs + t * h..][..h];
                cell_forward::<FMA>(gate_row, c_prev, &mut c_cur[..h], h_cur);
            }
        }
    }

    fn backward_work(d: Dims, rows: usize, _dfin: &[f32]) -> BwdWork {
        let h = d.hidden;
        BwdWork {
            dh_out: vec![0.0; rows * h],
            no_dc: vec![0.0; h],
            dh_next: vec![0.0; rows * h],
            dc_next: vec![0.0; rows * h],
        }
    }

    #[inline(always)]
    fn backward_step<const FMA: bool>(d: Dims, wb: &PackedB, s: BwdStep<'_>, work: &mut BwdWork) {
        let (t_len, i, h, g) = (d.seq, d.input, d.hidden, d.gates::<Self>());
        let BwdStep {
            t,
            batch: bc,
            gates,
            cseq,
            state0,
            dseq,
            dfin,
            dx,
            dg,
            ..
        } = s;
        let last = t + 1 == t_len;
        for r in 0..bc {
            let dst = &mut work.dh_out[r * h..][..h];
            match dseq {
                Some(s) => dst.copy_from_slice(&s[(r * t_len + t) * h..][..h]),
                None => dst.fill(0.0),
            }
            if last {
                for (d, v) in dst.iter_mut().zip(&dfin[r * 2 * h..][..h]) {
                    *d += v;
                }
            }
        }
        for (r0, rows) in row_blocks(0, bc) {
            for r in r0..r0 + rows {
                let base = (t * bc + r) * h;
                let c_prev = if t == 0 {
                    &state0[r * 2 * h + h..][..h]
                } else {
                    &cseq[base - bc * h..][..h]
                };
                cell_backward::<FMA>(
                    &gates[r * g..][..g],
                    &cseq[base..][..h],
                    c_prev,
                    &work.dh_out[r * h..][..h],
                    if last {
                        &dfin[r * 2 * h + h..][..h]
                    } else {
                        &work.no_dc
                    },
                    &work.dh_next[r * h..][..h],
                    &mut work.dc_next[r * h..][..h],
                    &mut dg[r * g..][..g],
                );
            }
            let a = Rows {
                data: dg,
                start: r0 * g,
                ld: g,
            };
            let dh_next = &mut work.dh_next;
            kernel::gemm_rows::<FMA>(a, rows, wb, |r, j0, acc| {
                let row = r0 + r;
                let split = i.saturating_sub(j0).min(acc.len());
                let (to_dx, to_dh) = acc.split_at(split);
                if !to_dx.is_empty() {
                    dx[(row * t_len + t) * i + j0..][..to_dx.len()].copy_from_slice(to_dx);
                }
                if !to_dh.is_empty() {
                    let col = j0 + split - i;
                    dh_next[row * h + col..][..to_dh.len()].copy_from_slice(to_dh);
                }
            });
        }
    }

    fn backward_finish(d: Dims, work: BwdWork, dstate0: &mut [f32]) {
        let h = d.hidden;
        for (r, row) in dstate0.chunks_exact_mut(2 * h).enumerate() {
            row[..h].copy_from_slice(&work.dh_next[r * h..][..h]);
            row[h..].copy_from_slice(&work.dc_next[r * h..][..h]);
        }
    }

    fn grad_columns(_h: usize) -> (usize, usize) {
        (0, 0)
    }

    fn input_grad_column(q: usize, _h: usize) -> usize {
        q
    }

    fn bias_grads(_h: usize, sums: &[f32], out: &mut Vec<f32>) {
        out.extend_from_slice(sums);
    }

    fn portable_step(gi: &Tensor, gh: &Tensor, state: &[Tensor], hs: usize) -> Result<Vec<Tensor>> {
        let g = (gi + gh)?;
        let i = portable::sigmoid(&portable::gate(&g, 0, hs)?)?;
        let f = portable::sigmoid(&portable::gate(&g, 1, hs)?)?;
        let cand = portable::gate(&g, 2, hs)?.tanh()?;
        let o = portable::sigmoid(&portable::gate(&g, 3, hs)?)?;
        let c = ((f * &state[1])? + (i * cand)?)?;
        let h = (o * c.tanh()?)?;
        Ok(vec![h, c])
    }
}

/// Gate activations and the state update of one row, in place on `gates`.
#[inline(always)]
fn cell_forward<const FMA: bool>(gates: &mut [f32], c_prev: &[f32], c: &mut [f32], h: &mut [f32]) {
    let n = h.len();
    let (gi, rest) = gates.split_at_mut(n);
    let (gf, rest) = rest.split_at_mut(n);
    let (gg, go) = rest.split_at_mut(n);
    let (gi, gf, gg, go, c_prev, c) = (
        &mut gi[..n],
        &mut gf[..n],
        &mut gg[..n],
        &mut go[..n],
        &c_prev[..n],
        &mut c[..n],
    );
    let mut start = 0;
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: `FMA = true` only runs behind the AVX2 + FMA check.
        start = unsafe { avx2::cell_forward(gi, gf, gg, go, c_prev, c, h) };
    }
    for j in start..n {
        let iv = kernel::sigmoid(gi[j]);
        let fv = kernel::sigmoid(gf[j]);
        let gv = kernel::tanh(gg[j]);
        let ov = kernel::sigmoid(go[j]);
        let cv = fv * c_prev[j] + iv * gv;
        gi[j] = iv;
        gf[j] = fv;
        gg[j] = gv;
        go[j] = ov;
        c[j] = cv;
        h[j] = ov * kernel::tanh(cv);
    }
}

/// Backward of one row of one step. `dc_next` holds the cell gradient from
/// step t + 1 on entry and the one for step t - 1 on exit.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn cell_backward<const FMA: bool>(
    gates: &[f32],
    c: &[f32],
    c_prev: &[f32],
    dh_out: &[f32],
    dc_out: &[f32],
    dh_next: &[f32],
    dc_next: &mut [f32],
    dgates: &mut [f32],
) {
    let n = c.len();
    let (gi, rest) = gates.split_at(n);
    let (gf, rest) = rest.split_at(n);
    let (gg, go) = rest.split_at(n);
    let (di, rest) = dgates.split_at_mut(n);
    let (df, rest) = rest.split_at_mut(n);
    let (dg, d_o) = rest.split_at_mut(n);
    let (gi, gf, gg, go) = (&gi[..n], &gf[..n], &gg[..n], &go[..n]);
    let (di, df, dg, d_o) = (&mut di[..n], &mut df[..n], &mut dg[..n], &mut d_o[..n]);
    let (c_prev, dh_out, dc_out, dh_next, dc_next) = (
        &c_prev[..n],
        &dh_out[..n],
        &dc_out[..n],
        &dh_next[..n],
        &mut dc_next[..n],
    );
    let mut start = 0;
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: `FMA = true` only runs behind the AVX2 + FMA check.
        start = unsafe {
            avx2::cell_backward(
                [gi, gf, gg, go],
                c,
                c_prev,
                [dh_out, dc_out, dh_next],
                dc_next,
                [di, df, dg, d_o],
            )
        };
    }
    for j in start..n {
        let (iv, fv, gv, ov) = (gi[j], gf[j], gg[j], go[j]);
        let tc = kernel::tanh(c[j]);
        let dh = dh_out[j] + dh_next[j];
        let dc = dc_out[j] + dc_next[j] + dh * ov * (1.0 - tc * tc);
        d_o[j] = dh * tc * ov * (1.0 - ov);
        di[j] = dc * gv * iv * (1.0 - iv);
        dg[j] = dc * iv * (1.0 - gv * gv);
        df[j] = dc * c_prev[j] * fv * (1.0 - fv);
        dc_next[j] = dc * fv;
    }
}

/// Eight lanes at a time; each returns how many leading elements it did.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{_mm256_fmadd_ps, _mm256_fnmadd_ps, _mm256_mul_ps, _mm256_sub_ps};

    use crate::kernel::simd::{load, sigmoid, splat, store, tanh};

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) fn cell_forward(
        gi: &mut [f32],
        gf: &mut [f32],
        gg: &mut [f32],
        go: &mut [f32],
        c_prev: &[f32],
        c: &mut [f32],
        h: &mut [f32],
    ) -> usize {
        let n = h.len() / 8 * 8;
        let mut j = 0;
        while j < n {
            let iv = sigmoid(load(&gi[j..]));
            let fv = sigmoid(load(&gf[j..]));
            let gv = tanh(load(&gg[j..]));
            let ov = sigmoid(load(&go[j..]));
            let cv = _mm256_fmadd_ps(fv, load(&c_prev[j..]), _mm256_mul_ps(iv, gv));
            store(&mut gi[j..], iv);
            store(&mut gf[j..], fv);
            store(&mut gg[j..], gv);
            store(&mut go[j..], ov);
            store(&mut c[j..], cv);
            store(&mut h[j..], _mm256_mul_ps(ov, tanh(cv)));
            j += 8;
        }
        n
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) fn cell_backward(
        [gi, gf, gg, go]: [&[f32]; 4],
        c: &[f32],
        c_prev: &[f32],
        [dh_out, dc_out, dh_next]: [&[f32]; 3],
        dc_next: &mut [f32],
        [di, df, dg, d_o]: [&mut [f32]; 4],
    ) -> usize {
        let n = c.len() / 8 * 8;
        let one = splat(1.0);
        let mut j = 0;
        while j < n {
            let (iv, fv, gv, ov) = (
                load(&gi[j..]),
                load(&gf[j..]),
                load(&gg[j..]),
                load(&go[j..]),
            );
            let tc = tanh(load(&c[j..]));
            let dh = _mm256_add(load(&dh_out[j..]), load(&dh_next[j..]));
            // dc = dc_out + dc_next + dh * o * (1 - tc^2)
            let dc = _mm256_fmadd_ps(
                _mm256_mul_ps(dh, ov),
                _mm256_fnmadd_ps(tc, tc, one),
                _mm256_add(load(&dc_out[j..]), load(&dc_next[j..])),
            );
            let dsig = |v| _mm256_mul_ps(v, _mm256_sub_ps(one, v));
            store(
                &mut d_o[j..],
                _mm256_mul_ps(_mm256_mul_ps(dh, tc), dsig(ov)),
            );
            store(&mut di[j..], _mm256_mul_ps(_mm256_mul_ps(dc, gv), dsig(iv)));
            store(
                &mut dg[j..],
                _mm256_mul_ps(_mm256_mul_ps(dc, iv), _mm256_fnmadd_ps(gv, gv, one)),
            );
            store(
                &mut df[j..],
                _mm256_mul_ps(_mm256_mul_ps(dc, load(&c_prev[j..])), dsig(fv)),
            );
            store(&mut dc_next[j..], _mm256_mul_ps(dc, fv));
            j += 8;
        }
        n
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn _mm256_add(
        a: std::arch::x86_64::__m256,
        b: std::arch::x86_64::__m256,
    ) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_add_ps(a, b)
    }
}
