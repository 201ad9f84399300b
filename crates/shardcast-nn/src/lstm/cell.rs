//! The LSTM recurrence on CPU `f32` slices: a whole sequence per call, the
//! batch split into independent chunks (one per rayon thread when there are
//! several), each chunk stepping through time with one fused GEMM +
//! activation pass per step.
//!
//! Gate order is PyTorch's: i, f, g, o.

use rayon::prelude::*;

use crate::kernel::{self, MR, PackedB, Rows};
use crate::scratch::{self, Buf};

/// Sizes of one LSTM layer call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub(crate) batch: usize,
    pub(crate) seq: usize,
    pub(crate) input: usize,
    pub(crate) hidden: usize,
}

impl Dims {
    fn gates(&self) -> usize {
        4 * self.hidden
    }
    fn xh(&self) -> usize {
        self.input + self.hidden
    }
}

/// What the forward pass keeps for backward, in recycled buffers (every
/// element is written).
#[derive(Debug)]
pub(crate) struct Saved {
    /// Gate activations, `4H` per batch row and step.
    pub(crate) gates: Buf,
    /// The GEMM rows `[x_t | h_{t-1}]`, `I + H` per batch row and step.
    pub(crate) xh: Buf,
    /// The cell sequence, `H` per batch row and step.
    ///
    /// All three are split like the batch (see
    /// [`kernel::batch_chunk_rows`]), and time-major within each chunk:
    /// `[chunk][T][chunk rows][..]`.
    pub(crate) cseq: Buf,
}

/// Forward over a whole sequence.
///
/// `x` is `[B, T, I]`, `w_ih` `[4H, I]`, `w_hh` `[4H, H]`, `bias` `[4H]`
/// (`b_ih + b_hh`), `state0` `[B, 2H]` (`h0 | c0`, zeros when `None`).
/// Returns the hidden sequence `[B, T, H]` and the final state `[B, 2H]`
/// (`h_T | c_T`); the cell sequence is internal.
pub(crate) fn forward(
    d: Dims,
    x: &[f32],
    w_ih: &[f32],
    w_hh: &[f32],
    bias: &[f32],
    state0: Option<&[f32]>,
    save: bool,
) -> (Vec<f32>, Vec<f32>, Option<Saved>) {
    let (b, t, i, h, g, k) = (d.batch, d.seq, d.input, d.hidden, d.gates(), d.xh());
    // B = [W_ih^T ; W_hh^T], so one GEMM over the row [x_t | h_{t-1}] gives
    // all pre-activations of a step.
    let wf = PackedB::from_transposed(g, &[(w_ih, i), (w_hh, h)]);
    let zeros;
    let state0 = match state0 {
        Some(s) => s,
        None => {
            zeros = vec![0.0; b * 2 * h];
            &zeros
        }
    };
    let mut out = vec![0.0f32; b * t * h];
    let mut fin = vec![0.0f32; b * 2 * h];
    let mut saved = save.then(|| Saved {
        gates: scratch::take(b * t * g),
        xh: scratch::take(b * t * k),
        cseq: scratch::take(b * t * h),
    });
    // Inference needs the cell sequence only while it runs.
    let mut cseq_scratch = if save {
        Buf::default()
    } else {
        scratch::take(b * t * h)
    };

    let rows = kernel::batch_chunk_rows(b);
    let mut chunks = Vec::with_capacity(b.div_ceil(rows));
    {
        let (cseq, mut gs, mut xhs) = match saved.as_mut() {
            Some(s) => (
                &mut s.cseq[..],
                Some(s.gates.chunks_mut(rows * t * g)),
                Some(s.xh.chunks_mut(rows * t * k)),
            ),
            None => (&mut cseq_scratch[..], None, None),
        };
        let mut hs = out.chunks_mut(rows * t * h);
        let mut fs = fin.chunks_mut(rows * 2 * h);
        let mut cs = cseq.chunks_mut(rows * t * h);
        let mut xs = x.chunks(rows * t * i);
        let mut ss = state0.chunks(rows * 2 * h);
        while let (Some(hc), Some(fc), Some(cc), Some(xc), Some(sc)) =
            (hs.next(), fs.next(), cs.next(), xs.next(), ss.next())
        {
            let save = match (gs.as_mut(), xhs.as_mut()) {
                (Some(gs), Some(xhs)) => gs.next().zip(xhs.next()),
                _ => None,
            };
            chunks.push(FwdChunk {
                batch: cc.len() / (t * h).max(1),
                x: xc,
                state0: sc,
                hseq: hc,
                fin: fc,
                cseq: cc,
                save,
            });
        }
    }
    let run = |c: FwdChunk<'_>| fwd_dispatch(d, &wf, bias, c);
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
    /// `[bc, 2H]`.
    fin: &'a mut [f32],
    /// `[bc, T, H]`.
    cseq: &'a mut [f32],
    save: Option<(&'a mut [f32], &'a mut [f32])>,
}

fn fwd_dispatch(d: Dims, wf: &PackedB, bias: &[f32], c: FwdChunk<'_>) {
    #[cfg(target_arch = "x86_64")]
    if kernel::has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        unsafe { fwd_avx2(d, wf, bias, c) };
        return;
    }
    fwd_chunk::<false>(d, wf, bias, c);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fwd_avx2(d: Dims, wf: &PackedB, bias: &[f32], c: FwdChunk<'_>) {
    fwd_chunk::<true>(d, wf, bias, c);
}

#[inline(always)]
fn fwd_chunk<const FMA: bool>(d: Dims, wf: &PackedB, bias: &[f32], c: FwdChunk<'_>) {
    let (t_len, i, h, g, k) = (d.seq, d.input, d.hidden, d.gates(), d.xh());
    let FwdChunk {
        batch: bc,
        x,
        state0,
        hseq,
        fin,
        cseq,
        save,
    } = c;
    // Training keeps every step's rows; inference reuses one step's worth.
    let (mut gates_scratch, mut xh_scratch);
    let (gates, xh, t_stride) = match save {
        Some((gs, xhs)) => (gs, xhs, 1),
        None => {
            gates_scratch = vec![0.0f32; bc * g];
            xh_scratch = vec![0.0f32; bc * k];
            (&mut gates_scratch[..], &mut xh_scratch[..], 0)
        }
    };
    let bias = &bias[..g];
    let hs = t_len * h;

    // `gates`, `xh` and `cseq` are time-major within the chunk (row `r` of
    // step `t` is row `t * bc + r`), so that each step reads and writes one
    // contiguous block, forward and backward.
    for t in 0..t_len {
        let t0 = t * t_stride * bc;
        for r in 0..bc {
            let row = &mut xh[(t0 + r) * k..][..k];
            row[..i].copy_from_slice(&x[(r * t_len + t) * i..][..i]);
            let h_prev = if t == 0 {
                &state0[r * 2 * h..][..h]
            } else {
                &hseq[r * hs + (t - 1) * h..][..h]
            };
            row[i..].copy_from_slice(h_prev);
        }
        let mut r0 = 0;
        while r0 < bc {
            let rows = (bc - r0).min(MR);
            let a = Rows {
                data: xh,
                start: (t0 + r0) * k,
                ld: k,
            };
            kernel::gemm_rows::<FMA>(a, rows, wf, |r, j0, acc| {
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
            r0 += rows;
        }
    }
    for r in 0..bc {
        let (h_last, c_last) = fin[r * 2 * h..][..2 * h].split_at_mut(h);
        h_last.copy_from_slice(&hseq[r * hs + (t_len - 1) * h..][..h]);
        c_last.copy_from_slice(&cseq[((t_len - 1) * bc + r) * h..][..h]);
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

/// Gradients of one layer call.
pub(crate) struct Grads {
    /// `[I + H, 4H]`: the gradient of `[W_ih | W_hh]`, transposed.
    pub(crate) dw_t: Vec<f32>,
    /// `[4H]`: the gradient of the summed bias.
    pub(crate) db: Vec<f32>,
    /// `[B, T, I]`.
    pub(crate) dx: Vec<f32>,
    /// `[B, 2H]`: `dh0 | dc0`.
    pub(crate) dstate0: Vec<f32>,
}

/// Backward through time.
///
/// `saved` is what [`forward`] kept; `dseq` the gradient of the hidden
/// sequence `[B, T, H]` (`None`: zero) and `dfin` that of the final state
/// `[B, 2H]`. The weight gradient is accumulated step by step
/// (`dW^T += [x_t | h_{t-1}]^T dgates_t`) while this step's gate gradients
/// are still in cache, so the `[B, T, 4H]` gate gradients never exist as a
/// whole.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    d: Dims,
    saved: &Saved,
    dseq: Option<&[f32]>,
    dfin: &[f32],
    w_ih: &[f32],
    w_hh: &[f32],
    state0: Option<&[f32]>,
) -> Grads {
    let (b, t, i, h, g, k) = (d.batch, d.seq, d.input, d.hidden, d.gates(), d.xh());
    // B = [W_ih | W_hh]: one GEMM per step gives [dx_t | dh_{t-1}].
    let wb = PackedB::from_fn(g, k, |p, j| {
        if j < i {
            w_ih[p * i + j]
        } else {
            w_hh[p * h + j - i]
        }
    });
    let zeros;
    let state0 = match state0 {
        Some(s) => s,
        None => {
            zeros = vec![0.0; b * 2 * h];
            &zeros
        }
    };
    let mut dx = vec![0.0; b * t * i];
    let mut dstate0 = vec![0.0; b * 2 * h];

    let rows = kernel::batch_chunk_rows(b);
    let n_chunks = b.div_ceil(rows);
    // Per chunk: its `dW^T` then its `db`, summed into the first at the end.
    let acc_len = k * g + g;
    let mut acc = vec![0.0f32; n_chunks * acc_len];
    let per = |n: usize| rows * t * n;
    let dseq_chunks: Vec<Option<&[f32]>> = match dseq {
        Some(s) => s.chunks(per(h)).map(Some).collect(),
        None => vec![None; n_chunks],
    };
    let chunks: Vec<BwdChunk<'_>> = saved
        .gates
        .chunks(per(g))
        .zip(saved.xh.chunks(per(k)))
        .zip(saved.cseq.chunks(per(h)))
        .zip(dfin.chunks(rows * 2 * h).zip(dseq_chunks))
        .zip(state0.chunks(rows * 2 * h))
        .zip(acc.chunks_mut(acc_len))
        .zip(dx.chunks_mut(per(i)).zip(dstate0.chunks_mut(rows * 2 * h)))
        .map(
            |((((((gates, xh), cseq), (dfin, dseq)), state0), acc), (dx, dstate0))| {
                let (dw_t, db) = acc.split_at_mut(k * g);
                BwdChunk {
                    batch: cseq.len() / (t * h).max(1),
                    gates,
                    xh,
                    cseq,
                    dseq,
                    dfin,
                    state0,
                    dw_t,
                    db,
                    dx,
                    dstate0,
                }
            },
        )
        .collect();
    let run = |c: BwdChunk<'_>| bwd_dispatch(d, &wb, c);
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
    let db = acc.split_off(k * g);
    Grads {
        dw_t: acc,
        db,
        dx,
        dstate0,
    }
}

struct BwdChunk<'a> {
    batch: usize,
    gates: &'a [f32],
    xh: &'a [f32],
    cseq: &'a [f32],
    /// `[bc, T, H]`, `None` when zero.
    dseq: Option<&'a [f32]>,
    /// `[bc, 2H]`.
    dfin: &'a [f32],
    state0: &'a [f32],
    /// `[I + H, 4H]`, accumulated into.
    dw_t: &'a mut [f32],
    /// `[4H]`, accumulated into.
    db: &'a mut [f32],
    dx: &'a mut [f32],
    dstate0: &'a mut [f32],
}

fn bwd_dispatch(d: Dims, wb: &PackedB, c: BwdChunk<'_>) {
    #[cfg(target_arch = "x86_64")]
    if kernel::has_avx2_fma() {
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
    let (t_len, i, h, g, k) = (d.seq, d.input, d.hidden, d.gates(), d.xh());
    let BwdChunk {
        batch: bc,
        gates,
        xh,
        cseq,
        dseq,
        dfin,
        state0,
        dw_t,
        db,
        dx,
        dstate0,
    } = c;
    // Outside gradients of step t's h and c: the sequence's (if any) and,
    // at the last step, the final state's.
    let mut dh_out = vec![0.0f32; bc * h];
    let no_dc = vec![0.0f32; h];
    // Gradients flowing into step t from step t + 1.
    let mut dh_next = vec![0.0f32; bc * h];
    let mut dc_next = vec![0.0f32; bc * h];
    // This step's pre-activation gate gradients `[bc, 4H]`, the same packed
    // as the right-hand side of the weight-gradient GEMM, and this step's
    // GEMM rows transposed, `[I + H, bc]`, as its left-hand side.
    let mut dg = vec![0.0f32; bc * g];
    let mut dg_packed = PackedB::zeros(bc, g);
    let mut xh_t = vec![0.0f32; k * bc];
    for t in (0..t_len).rev() {
        for r in 0..bc {
            let dst = &mut dh_out[r * h..][..h];
            match dseq {
                Some(s) => dst.copy_from_slice(&s[(r * t_len + t) * h..][..h]),
                None => dst.fill(0.0),
            }
            if t + 1 == t_len {
                for (d, v) in dst.iter_mut().zip(&dfin[r * 2 * h..][..h]) {
                    *d += v;
                }
            }
        }
        let mut r0 = 0;
        while r0 < bc {
            let rows = (bc - r0).min(MR);
            for r in r0..r0 + rows {
                let base = (t * bc + r) * h;
                let c_prev = if t == 0 {
                    &state0[r * 2 * h + h..][..h]
                } else {
                    &cseq[base - bc * h..][..h]
                };
                cell_backward::<FMA>(
                    &gates[(t * bc + r) * g..][..g],
                    &cseq[base..][..h],
                    c_prev,
                    &dh_out[r * h..][..h],
                    if t + 1 == t_len {
                        &dfin[r * 2 * h + h..][..h]
                    } else {
                        &no_dc
                    },
                    &dh_next[r * h..][..h],
                    &mut dc_next[r * h..][..h],
                    &mut dg[r * g..][..g],
                );
            }
            let a = Rows {
                data: &dg,
                start: r0 * g,
                ld: g,
            };
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
            r0 += rows;
        }

        // Weight and bias gradients of this step.
        for row in dg.chunks_exact(g) {
            for (a, v) in db.iter_mut().zip(row) {
                *a += v;
            }
        }
        dg_packed.fill_rows(&dg, g);
        for (r, src) in xh[t * bc * k..][..bc * k].chunks_exact(k).enumerate() {
            for (p, v) in src.iter().enumerate() {
                xh_t[p * bc + r] = *v;
            }
        }
        let mut p0 = 0;
        while p0 < k {
            let rows = (k - p0).min(MR);
            let a = Rows {
                data: &xh_t,
                start: p0 * bc,
                ld: bc,
            };
            kernel::gemm_rows::<FMA>(a, rows, &dg_packed, |r, j0, acc| {
                let dst = &mut dw_t[(p0 + r) * g + j0..][..acc.len()];
                for (d, a) in dst.iter_mut().zip(acc) {
                    *d += a;
                }
            });
            p0 += rows;
        }
    }
    for r in 0..bc {
        dstate0[r * 2 * h..][..h].copy_from_slice(&dh_next[r * h..][..h]);
        dstate0[r * 2 * h + h..][..h].copy_from_slice(&dc_next[r * h..][..h]);
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
