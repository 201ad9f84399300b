//! CPU building blocks shared by the fused recurrent ops: a register-tiled
//! small GEMM over a packed right-hand side, and branch-free activations that
//! the compiler vectorises.
//!
//! Everything here is `#[inline(always)]` and generic over `FMA` so that the
//! per-ISA entry points in the op modules (`#[target_feature(enable =
//! "avx2,fma")]` and a portable fallback) each get their own fully inlined,
//! vectorised copy. Without that the crate, built for baseline x86-64, would
//! only ever see SSE2.

/// Column padding of packed operands; the widest tile is this many columns.
pub(crate) const NR_PAD: usize = 64;

/// Rows of the widest row block handled by one micro-kernel call.
pub(crate) const MR: usize = 6;

/// The blocks of at most [`MR`] rows, `(first row, rows)`, that cover
/// `lo..hi` in order: the row blocks of one [`gemm_rows`] call each.
#[inline(always)]
pub(crate) fn row_blocks(lo: usize, hi: usize) -> RowBlocks {
    RowBlocks { next: lo, end: hi }
}

/// The iterator of [`row_blocks`]: as plain a loop as a `while` over the
/// rows, which `step_by` was not quite.
pub(crate) struct RowBlocks {
    next: usize,
    end: usize,
}

impl Iterator for RowBlocks {
    type Item = (usize, usize);

    #[inline(always)]
    fn next(&mut self) -> Option<(usize, usize)> {
        let r0 = self.next;
        if r0 >= self.end {
            return None;
        }
        let rows = (self.end - r0).min(MR);
        self.next = r0 + rows;
        Some((r0, rows))
    }
}

/// A right-hand GEMM operand `B[k, n]`, packed in panels of [`NR_PAD`]
/// columns: panel `q` holds columns `q * NR_PAD..` of every row, row after
/// row, contiguously, with the last panel padded with zeros to full width.
///
/// A tile then streams through one contiguous block (rows `NR_PAD` apart)
/// instead of rows the whole padded width apart, which the hardware prefetcher
/// follows better; at batch 1 the forward GEMM is bound by reading `B` from
/// L2.
#[derive(Debug)]
pub struct PackedB {
    data: Vec<f32>,
    k: usize,
    n: usize,
}

impl PackedB {
    /// Packs `B[p][j] = f(p, j)` for `p < k`, `j < n`.
    pub(crate) fn from_fn(k: usize, n: usize, f: impl Fn(usize, usize) -> f32) -> Self {
        let mut data = vec![0.0; k * n.div_ceil(NR_PAD) * NR_PAD];
        for (q, panel) in data.chunks_exact_mut(k * NR_PAD).enumerate() {
            let j0 = q * NR_PAD;
            let w = (n - j0).min(NR_PAD);
            for (p, row) in panel.chunks_exact_mut(NR_PAD).enumerate() {
                for (jj, v) in row[..w].iter_mut().enumerate() {
                    *v = f(p, j0 + jj);
                }
            }
        }
        Self { data, k, n }
    }

    /// An all-zero `B[k, n]`, to be filled with [`PackedB::fill_rows`].
    pub(crate) fn zeros(k: usize, n: usize) -> Self {
        let data = vec![0.0; k * n.div_ceil(NR_PAD) * NR_PAD];
        Self { data, k, n }
    }

    /// Overwrites every row `p < k` with `src[p * ld..][..n]` (the padding
    /// stays zero), reusing the allocation.
    pub(crate) fn fill_rows(&mut self, src: &[f32], ld: usize) {
        let (k, n) = (self.k, self.n);
        for (q, panel) in self.data.chunks_exact_mut(k * NR_PAD).enumerate() {
            let j0 = q * NR_PAD;
            let w = (n - j0).min(NR_PAD);
            for (p, row) in panel.chunks_exact_mut(NR_PAD).enumerate() {
                row[..w].copy_from_slice(&src[p * ld + j0..][..w]);
            }
        }
    }

    /// Packs the transpose of row-major matrices stacked along `k`: `parts`
    /// are `(w, kp)` with `w` `[n, kp]`, and `B[p0 + p][j] = w[j * kp + p]`
    /// where `p0` is the sum of the earlier parts' `kp`.
    ///
    /// Same result as [`PackedB::from_fn`], but reading each source row
    /// sequentially: the element-wise closure made packing ~10% of a
    /// batch-1 forward.
    pub(crate) fn from_transposed(n: usize, parts: &[(&[f32], usize)]) -> Self {
        let k: usize = parts.iter().map(|&(_, kp)| kp).sum();
        let mut data = vec![0.0; k * n.div_ceil(NR_PAD) * NR_PAD];
        for (q, panel) in data.chunks_exact_mut(k * NR_PAD).enumerate() {
            let j0 = q * NR_PAD;
            let w = (n - j0).min(NR_PAD);
            let mut p0 = 0;
            for &(src, kp) in parts.iter().filter(|&&(_, kp)| kp > 0) {
                let block = &mut panel[p0 * NR_PAD..(p0 + kp) * NR_PAD];
                for (jj, src_row) in src[j0 * kp..(j0 + w) * kp].chunks_exact(kp).enumerate() {
                    for (dst, v) in block[jj..].iter_mut().step_by(NR_PAD).zip(src_row) {
                        *dst = *v;
                    }
                }
                p0 += kp;
            }
        }
        Self { data, k, n }
    }

    /// The columns `j0..j0 + width` of every row, as one slice whose row `p`
    /// starts at `p * NR_PAD`; `width` must divide `NR_PAD` and `j0` be a
    /// multiple of `width`.
    #[inline(always)]
    fn panel(&self, j0: usize, width: usize) -> &[f32] {
        let start = (j0 / NR_PAD) * self.k * NR_PAD + j0 % NR_PAD;
        &self.data[start..start + (self.k - 1) * NR_PAD + width]
    }
}

/// A block of left-hand GEMM rows: row `r` is `data[start + r * ld..][..k]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rows<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) start: usize,
    pub(crate) ld: usize,
}

#[inline(always)]
fn fmadd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    // Without hardware FMA `mul_add` is a libm call; an unfused multiply-add
    // is what the portable path wants.
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// Computes `C = A[rows, b.k] @ B` for `rows <= MR` and hands each output row
/// segment to `store(row, first_column, values)`.
///
/// The tile shape is chosen per row count so that every call keeps at least
/// eight independent accumulator chains in flight (FMA latency × throughput),
/// which matters most at batch 1 where there is no row reuse at all.
#[inline(always)]
pub(crate) fn gemm_rows<const FMA: bool>(
    a: Rows<'_>,
    rows: usize,
    b: &PackedB,
    store: impl FnMut(usize, usize, &[f32]),
) {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: `FMA = true` is only instantiated inside the
        // `#[target_feature(enable = "avx2,fma")]` entry points, which run
        // after `has_avx2_fma()` returned true.
        unsafe { avx2::gemm_rows(a, rows, b, store) };
        return;
    }
    match rows {
        0 => {}
        1 => tile_1x64::<FMA>(a, b, store),
        2 => tile_2x32::<FMA>(a, b, store),
        3 => tile_3x32::<FMA>(a, b, store),
        4 => tile_4x16::<FMA>(a, b, store),
        5 => tile_5x16::<FMA>(a, b, store),
        _ => tile_6x16::<FMA>(a, b, store),
    }
}

// One function per tile shape, with the row loop written out by the macro:
// the accumulators are then indexed by constants only, so LLVM keeps them
// in vector registers across the whole `k` loop (a generic row loop that it
// declines to unroll leaves them on the stack and runs ~20x slower).
macro_rules! tile {
    ($name:ident, $n:literal, [$($r:literal),+]) => {
        #[inline(always)]
        fn $name<const FMA: bool>(
            a: Rows<'_>,
            b: &PackedB,
            mut store: impl FnMut(usize, usize, &[f32]),
        ) {
            const N: usize = $n;
            let k = b.k;
            let arows = [$({
                let s = a.start + $r * a.ld;
                &a.data[s..s + k]
            }),+];
            let zero = [0.0f32; N];
            let mut j0 = 0;
            while j0 < b.n {
                let panel = b.panel(j0, N);
                let mut acc = [$({
                    let _ = $r;
                    [0.0f32; N]
                }),+];
                for p in 0..k {
                    let brow: &[f32; N] = panel[p * NR_PAD..]
                        .first_chunk::<N>()
                        .unwrap_or(&zero);
                    $({
                        let av = arows[$r][p];
                        let acc_r = &mut acc[$r];
                        for j in 0..N {
                            acc_r[j] = fmadd::<FMA>(av, brow[j], acc_r[j]);
                        }
                    })+
                }
                let nv = (b.n - j0).min(N);
                $(store($r, j0, &acc[$r][..nv]);)+
                j0 += N;
            }
        }
    };
}

tile!(tile_1x64, 64, [0]);
tile!(tile_2x32, 32, [0, 1]);
tile!(tile_3x32, 32, [0, 1, 2]);
tile!(tile_4x16, 16, [0, 1, 2, 3]);
tile!(tile_5x16, 16, [0, 1, 2, 3, 4]);
tile!(tile_6x16, 16, [0, 1, 2, 3, 4, 5]);

/// Explicit AVX2 + FMA micro-kernels: auto-vectorisation of the portable
/// tiles leaves multi-row tiles scalar, about 20x slower.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{__m256, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps};
    use std::arch::x86_64::{_mm256_setzero_ps, _mm256_storeu_ps};
    use std::mem::MaybeUninit;

    use super::{NR_PAD, PackedB, Rows};

    /// Row length the stack buffer for the interleaved A rows holds.
    const PACK_K: usize = 256;

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) fn gemm_rows(
        a: Rows<'_>,
        rows: usize,
        b: &PackedB,
        store: impl FnMut(usize, usize, &[f32]),
    ) {
        match rows {
            0 => {}
            1 => tile_1x64(a, b, store),
            2 => tile_2x32(a, b, store),
            3 => tile_3x32(a, b, store),
            4 => tile_4x16(a, b, store),
            5 => tile_5x16(a, b, store),
            _ => tile_6x16(a, b, store),
        }
    }

    // `$vs` is the list of 8-lane vectors per row; it is passed as one token
    // tree so that the row macro can expand it once per row, which keeps
    // every accumulator index a constant (and so in a register).
    macro_rules! fma_row {
        ($acc:ident, $bv:ident, $av:expr, $r:literal, [$($v:literal),+]) => {
            let av = _mm256_set1_ps($av);
            $($acc[$r][$v] = _mm256_fmadd_ps(av, $bv[$v], $acc[$r][$v]);)+
        };
    }

    macro_rules! tile {
        ($name:ident, $nv:literal, [$($r:literal),+], $vs:tt) => {
            #[target_feature(enable = "avx2,fma")]
            #[inline]
            fn $name(a: Rows<'_>, b: &PackedB, mut store: impl FnMut(usize, usize, &[f32])) {
                const NV: usize = $nv;
                const N: usize = NV * 8;
                const M: usize = [$($r),+].len();
                let k = b.k;
                // Interleave the rows (`pack[p * M + r]`) so the inner loop
                // broadcasts from one moving pointer instead of M.
                // Left uninitialised: zeroing all of it on every call cost
                // ~5% of a forward pass, and only `kk * M` entries are used.
                let mut pack = [MaybeUninit::<f32>::uninit(); PACK_K * M];
                let kk = k.min(PACK_K);
                $({
                    let s = a.start + $r * a.ld;
                    for (p, v) in a.data[s..s + kk].iter().enumerate() {
                        pack[p * M + $r].write(*v);
                    }
                })+
                // SAFETY: the loops above wrote `pack[p * M + r]` for every
                // `p < kk` and `r < M`, i.e. all of `pack[..kk * M]`.
                let pack: &[f32] =
                    unsafe { std::slice::from_raw_parts(pack.as_ptr().cast::<f32>(), kk * M) };
                let arows = [$({
                    let s = a.start + $r * a.ld;
                    &a.data[s..s + k]
                }),+];
                let mut j0 = 0;
                while j0 < b.n {
                    // Every padded B row holds the full tile: panels are
                    // a multiple of the widest tile wide.
                    let panel = b.panel(j0, N);
                    let mut acc: [[__m256; NV]; [$($r),+].len()] =
                        [[_mm256_setzero_ps(); NV]; [$($r),+].len()];
                    let mut row = panel.as_ptr();
                    for ap in pack.chunks_exact(M) {
                        let bv: [__m256; NV] = std::array::from_fn(|v| {
                            // SAFETY: `row` is `panel[p * NR_PAD..]` for this
                            // `p < kk <= k`, and `panel` holds `(k - 1) *
                            // NR_PAD + N` elements, so N = 8 * NV are in range.
                            unsafe { _mm256_loadu_ps(row.add(8 * v)) }
                        });
                        $(fma_row!(acc, bv, ap[$r], $r, $vs);)+
                        // Only dereferenced while `p < k` (see above).
                        row = row.wrapping_add(NR_PAD);
                    }
                    // Rows longer than the packing buffer finish unpacked.
                    for p in kk..k {
                        let row = &panel[p * NR_PAD..p * NR_PAD + N];
                        let bv: [__m256; NV] = std::array::from_fn(|v| {
                            // SAFETY: `row` has N = 8 * NV elements.
                            unsafe { _mm256_loadu_ps(row.as_ptr().add(8 * v)) }
                        });
                        $(fma_row!(acc, bv, arows[$r][p], $r, $vs);)+
                    }
                    let nv = (b.n - j0).min(N);
                    let mut out = [0.0f32; N];
                    $(
                        for (v, reg) in acc[$r].iter().enumerate() {
                            // SAFETY: `out` has N = 8 * NV elements.
                            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * v), *reg) };
                        }
                        store($r, j0, &out[..nv]);
                    )+
                    j0 += N;
                }
            }
        };
    }

    tile!(tile_1x64, 8, [0], [0, 1, 2, 3, 4, 5, 6, 7]);
    tile!(tile_2x32, 4, [0, 1], [0, 1, 2, 3]);
    tile!(tile_3x32, 4, [0, 1, 2], [0, 1, 2, 3]);
    tile!(tile_4x16, 2, [0, 1, 2, 3], [0, 1]);
    tile!(tile_5x16, 2, [0, 1, 2, 3, 4], [0, 1]);
    tile!(tile_6x16, 2, [0, 1, 2, 3, 4, 5], [0, 1]);
}

/// `exp(x)` to about 2e-7 relative error, without branches.
///
/// Range reduction `x = n ln2 + r` with `|r| <= ln2 / 2` (the rounding done by
/// adding 1.5 * 2^23, which also leaves `n` in the low mantissa bits), a
/// degree-7 Taylor polynomial in `r`, and `2^n` built from its exponent bits.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let m = x * std::f32::consts::LOG2_E + MAGIC;
    let n = m - MAGIC;
    let ni = (m.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    let scale = f32::from_bits((ni.wrapping_add(127) << 23) as u32);
    p * scale
}

/// The logistic function.
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// The hyperbolic tangent, as `1 - 2 / (1 + e^{2x})`: absolute error about
/// 1e-7, which is what the gradients and outputs need.
#[inline(always)]
pub(crate) fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (1.0 + exp(2.0 * x))
}

/// Eight-lane AVX2 versions of [`exp`], [`sigmoid`] and [`tanh`], same
/// algorithm. The scalar ones stay in use for row tails and the portable path.
#[cfg(target_arch = "x86_64")]
pub(crate) mod simd {
    use std::arch::x86_64::*;

    /// Loads 8 lanes from the front of `s` (which must hold at least 8).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) fn load(s: &[f32]) -> __m256 {
        let s = &s[..8];
        // SAFETY: `s` has 8 elements.
        unsafe { _mm256_loadu_ps(s.as_ptr()) }
    }

    /// Stores 8 lanes to the front of `s` (which must hold at least 8).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) fn store(s: &mut [f32], v: __m256) {
        let s = &mut s[..8];
        // SAFETY: `s` has 8 elements.
        unsafe { _mm256_storeu_ps(s.as_mut_ptr(), v) }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) fn splat(x: f32) -> __m256 {
        _mm256_set1_ps(x)
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) fn exp(x: __m256) -> __m256 {
        const MAGIC: f32 = 12_582_912.0;
        let x = _mm256_min_ps(_mm256_max_ps(x, splat(-87.0)), splat(88.0));
        let m = _mm256_fmadd_ps(x, splat(std::f32::consts::LOG2_E), splat(MAGIC));
        let n = _mm256_sub_ps(m, splat(MAGIC));
        let ni = _mm256_sub_epi32(
            _mm256_castps_si256(m),
            _mm256_set1_epi32(MAGIC.to_bits() as i32),
        );
        let r = _mm256_fnmadd_ps(n, splat(0.693_145_75), x);
        let r = _mm256_fnmadd_ps(n, splat(1.428_606_8e-6), r);
        let mut p = splat(1.0 / 5040.0);
        for c in [
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ] {
            p = _mm256_fmadd_ps(p, r, splat(c));
        }
        let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            ni,
            _mm256_set1_epi32(127),
        )));
        _mm256_mul_ps(p, scale)
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) fn sigmoid(x: __m256) -> __m256 {
        let e = exp(_mm256_sub_ps(_mm256_setzero_ps(), x));
        _mm256_div_ps(splat(1.0), _mm256_add_ps(splat(1.0), e))
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) fn tanh(x: __m256) -> __m256 {
        let e = exp(_mm256_add_ps(x, x));
        _mm256_sub_ps(
            splat(1.0),
            _mm256_div_ps(splat(2.0), _mm256_add_ps(splat(1.0), e)),
        )
    }
}

/// Whether the AVX2 + FMA kernels can run on this CPU.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// How many independent batch chunks to run on the rayon pool: one (and no
/// pool at all) unless there are several threads and enough rows per thread
/// to fill full micro-kernel row blocks.
pub(crate) fn batch_chunk_rows(batch: usize) -> usize {
    let threads = rayon::current_num_threads();
    if threads <= 1 || batch < 2 * MR * 2 {
        return batch.max(1);
    }
    let per = batch.div_ceil(threads);
    per.div_ceil(MR) * MR
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std() {
        let mut x = -80.0f32;
        while x < 80.0 {
            let rel = ((exp(x) - x.exp()) / x.exp()).abs();
            assert!(rel < 5e-7, "exp({x}) rel err {rel}");
            x += 0.0137;
        }
    }

    #[test]
    fn activations_match_std() {
        let mut x = -30.0f32;
        while x < 30.0 {
            assert!((tanh(x) - x.tanh()).abs() < 3e-7, "tanh({x})");
            let s = 1.0 / (1.0 + (-x).exp());
            assert!((sigmoid(x) - s).abs() < 3e-7, "sigmoid({x})");
            x += 0.0071;
        }
        assert_eq!(sigmoid(-1e30), sigmoid(-200.0));
        assert!(tanh(1e30) <= 1.0 && tanh(-1e30) >= -1.0);
    }

    #[test]
    fn from_transposed_matches_from_fn() {
        for &(n, k1, k2) in &[(5, 3, 0), (64, 8, 64), (130, 7, 9), (192, 1, 70)] {
            let w1: Vec<f32> = (0..n * k1).map(|v| v as f32 * 0.5).collect();
            let w2: Vec<f32> = (0..n * k2).map(|v| -(v as f32)).collect();
            let fast = PackedB::from_transposed(n, &[(&w1, k1), (&w2, k2)]);
            let slow = PackedB::from_fn(k1 + k2, n, |p, j| {
                if p < k1 {
                    w1[j * k1 + p]
                } else {
                    w2[j * k2 + p - k1]
                }
            });
            assert_eq!((fast.k, fast.n), (slow.k, slow.n));
            assert_eq!(fast.data, slow.data, "n={n} k1={k1} k2={k2}");
            // The same B given row-major, with a row stride above n.
            let ld = n + 3;
            let rows: Vec<f32> = (0..(k1 + k2) * ld)
                .map(|v| {
                    let (p, j) = (v / ld, v % ld);
                    if j >= n {
                        f32::NAN
                    } else if p < k1 {
                        w1[j * k1 + p]
                    } else {
                        w2[j * k2 + p - k1]
                    }
                })
                .collect();
            let mut filled = PackedB::zeros(k1 + k2, n);
            filled.fill_rows(&rows, ld);
            assert_eq!(filled.data, slow.data, "fill_rows n={n}");
        }
    }

    #[test]
    fn gemm_rows_matches_naive() {
        for &(rows, k, n) in &[
            (1, 3, 5),
            (2, 7, 70),
            (3, 9, 33),
            (4, 2, 17),
            (5, 11, 64),
            (6, 5, 130),
        ] {
            let a: Vec<f32> = (0..rows * (k + 2))
                .map(|v| (v as f32 * 0.37).sin())
                .collect();
            let bm: Vec<f32> = (0..k * n).map(|v| (v as f32 * 0.11).cos()).collect();
            let packed = PackedB::from_fn(k, n, |p, j| bm[p * n + j]);
            let mut c = vec![0.0f32; rows * n];
            let rows_view = Rows {
                data: &a,
                start: 1,
                ld: k + 2,
            };
            gemm_rows::<false>(rows_view, rows, &packed, |r, j0, v| {
                c[r * n + j0..r * n + j0 + v.len()].copy_from_slice(v);
            });
            for r in 0..rows {
                for j in 0..n {
                    let want: f32 = (0..k).map(|p| a[1 + r * (k + 2) + p] * bm[p * n + j]).sum();
                    assert!(
                        (c[r * n + j] - want).abs() < 1e-4,
                        "{rows}x{k}x{n} at {r},{j}"
                    );
                }
            }
        }
    }
}
