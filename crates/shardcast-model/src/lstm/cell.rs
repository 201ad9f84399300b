//! The LSTM recurrence on CPU `f32` slices: a whole sequence per call, the
//! batch split into independent chunks (one per rayon thread when there are
//! several), each chunk stepping through time with one fused GEMM +
//! activation pass per step.
//!
//! Gate order is PyTorch's: i, f, g, o.

use rayon::prelude::*;

use crate::kernel::{self, MR, PackedB, Rows};

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

/// What the forward pass keeps for backward: gate activations `[B, T, 4H]`
/// and the GEMM rows `[x_t | h_{t-1}]` as `[B, T, I + H]`.
#[derive(Debug)]
pub(crate) struct Saved {
    pub(crate) gates: Vec<f32>,
    pub(crate) xh: Vec<f32>,
}

/// Forward over a whole sequence.
///
/// `x` is `[B, T, I]`, `w_ih` `[4H, I]`, `w_hh` `[4H, H]`, `bias` `[4H]`
/// (`b_ih + b_hh`), `state0` `[B, 2H]` (`h0 | c0`, zeros when `None`).
/// Returns `[2, B, T, H]`: the hidden sequence then the cell sequence.
pub(crate) fn forward(
    d: Dims,
    x: &[f32],
    w_ih: &[f32],
    w_hh: &[f32],
    bias: &[f32],
    state0: Option<&[f32]>,
    save: bool,
) -> (Vec<f32>, Option<Saved>) {
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
    let mut out = vec![0.0f32; 2 * b * t * h];
    let mut saved = save.then(|| Saved {
        gates: vec![0.0; b * t * g],
        xh: vec![0.0; b * t * k],
    });

    let rows = kernel::batch_chunk_rows(b);
    let (hseq, cseq) = out.split_at_mut(b * t * h);
    let mut chunks = Vec::with_capacity(b.div_ceil(rows));
    {
        let mut hs = hseq.chunks_mut(rows * t * h);
        let mut cs = cseq.chunks_mut(rows * t * h);
        let mut xs = x.chunks(rows * t * i);
        let mut ss = state0.chunks(rows * 2 * h);
        let (mut gs, mut xhs) = match saved.as_mut() {
            Some(s) => (
                Some(s.gates.chunks_mut(rows * t * g)),
                Some(s.xh.chunks_mut(rows * t * k)),
            ),
            None => (None, None),
        };
        while let (Some(hc), Some(cc), Some(xc), Some(sc)) =
            (hs.next(), cs.next(), xs.next(), ss.next())
        {
            let save = match (gs.as_mut(), xhs.as_mut()) {
                (Some(gs), Some(xhs)) => gs.next().zip(xhs.next()),
                _ => None,
            };
            chunks.push(FwdChunk {
                batch: hc.len() / (t * h).max(1),
                x: xc,
                state0: sc,
                hseq: hc,
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
    (out, saved)
}

struct FwdChunk<'a> {
    batch: usize,
    x: &'a [f32],
    state0: &'a [f32],
    hseq: &'a mut [f32],
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
    let (g_ld, xh_ld) = if t_stride == 1 {
        (t_len * g, t_len * k)
    } else {
        (g, k)
    };
    let bias = &bias[..g];

    for t in 0..t_len {
        let (g_t, xh_t) = (t * t_stride * g, t * t_stride * k);
        for r in 0..bc {
            let row = &mut xh[r * xh_ld + xh_t..][..k];
            row[..i].copy_from_slice(&x[(r * t_len + t) * i..][..i]);
            let h_prev = if t == 0 {
                &state0[r * 2 * h..][..h]
            } else {
                &hseq[(r * t_len + t - 1) * h..][..h]
            };
            row[i..].copy_from_slice(h_prev);
        }
        let mut r0 = 0;
        while r0 < bc {
            let rows = (bc - r0).min(MR);
            let a = Rows {
                data: xh,
                start: r0 * xh_ld + xh_t,
                ld: xh_ld,
            };
            kernel::gemm_rows::<FMA>(a, rows, wf, |r, j0, acc| {
                let dst = &mut gates[(r0 + r) * g_ld + g_t + j0..][..acc.len()];
                let b = &bias[j0..][..acc.len()];
                for ((d, a), b) in dst.iter_mut().zip(acc).zip(b) {
                    *d = a + b;
                }
            });
            for r in r0..r0 + rows {
                let gate_row = &mut gates[r * g_ld + g_t..][..g];
                let base = (r * t_len + t) * h;
                let (c_prev_buf, c_cur) = cseq.split_at_mut(base);
                let c_prev = if t == 0 {
                    &state0[r * 2 * h + h..][..h]
                } else {
                    &c_prev_buf[base - h..]
                };
                cell_forward::<FMA>(gate_row, c_prev, &mut c_cur[..h], &mut hseq[base..][..h]);
            }
            r0 += rows;
        }
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

/// Gradients of one layer call, apart from the weight gradients that come
/// from one large GEMM over the whole sequence afterwards.
pub(crate) struct Grads {
    /// Pre-activation gate gradients `[B, T, 4H]`.
    pub(crate) dgates: Vec<f32>,
    /// `[B, T, I]`.
    pub(crate) dx: Vec<f32>,
    /// `[B, 2H]`: `dh0 | dc0`.
    pub(crate) dstate0: Vec<f32>,
}

/// Backward through time.
///
/// `gates` are the saved activations, `out` the forward result `[2, B, T, H]`
/// and `dout` its gradient.
pub(crate) fn backward(
    d: Dims,
    gates: &[f32],
    out: &[f32],
    dout: &[f32],
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
    let mut grads = Grads {
        dgates: vec![0.0; b * t * g],
        dx: vec![0.0; b * t * i],
        dstate0: vec![0.0; b * 2 * h],
    };
    let (cseq, dh_seq, dc_seq) = (&out[b * t * h..], &dout[..b * t * h], &dout[b * t * h..]);

    let rows = kernel::batch_chunk_rows(b);
    let per = |n: usize| rows * t * n;
    let chunks: Vec<BwdChunk<'_>> = gates
        .chunks(per(g))
        .zip(cseq.chunks(per(h)))
        .zip(dh_seq.chunks(per(h)).zip(dc_seq.chunks(per(h))))
        .zip(state0.chunks(rows * 2 * h))
        .zip(grads.dgates.chunks_mut(per(g)))
        .zip(
            grads
                .dx
                .chunks_mut(per(i))
                .zip(grads.dstate0.chunks_mut(rows * 2 * h)),
        )
        .map(
            |(((((gates, cseq), (dh_seq, dc_seq)), state0), dgates), (dx, dstate0))| BwdChunk {
                batch: cseq.len() / (t * h).max(1),
                gates,
                cseq,
                dh_seq,
                dc_seq,
                state0,
                dgates,
                dx,
                dstate0,
            },
        )
        .collect();
    let run = |c: BwdChunk<'_>| bwd_dispatch(d, &wb, c);
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
    cseq: &'a [f32],
    dh_seq: &'a [f32],
    dc_seq: &'a [f32],
    state0: &'a [f32],
    dgates: &'a mut [f32],
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
    let (t_len, i, h, g) = (d.seq, d.input, d.hidden, d.gates());
    let BwdChunk {
        batch: bc,
        gates,
        cseq,
        dh_seq,
        dc_seq,
        state0,
        dgates,
        dx,
        dstate0,
    } = c;
    // Gradients flowing into step t from step t + 1.
    let mut dh_next = vec![0.0f32; bc * h];
    let mut dc_next = vec![0.0f32; bc * h];
    for t in (0..t_len).rev() {
        let mut r0 = 0;
        while r0 < bc {
            let rows = (bc - r0).min(MR);
            for r in r0..r0 + rows {
                let base = (r * t_len + t) * h;
                let c_prev = if t == 0 {
                    &state0[r * 2 * h + h..][..h]
                } else {
                    &cseq[base - h..][..h]
                };
                cell_backward::<FMA>(
                    &gates[(r * t_len + t) * g..][..g],
                    &cseq[base..][..h],
                    c_prev,
                    &dh_seq[base..][..h],
                    &dc_seq[base..][..h],
                    &dh_next[r * h..][..h],
                    &mut dc_next[r * h..][..h],
                    &mut dgates[(r * t_len + t) * g..][..g],
                );
            }
            let a = Rows {
                data: dgates,
                start: (r0 * t_len + t) * g,
                ld: t_len * g,
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
