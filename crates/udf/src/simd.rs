//! Per-filter SIMD kernels of `peak_scale` and `pca_project`, with `std::arch` versions
//! for AVX-512 and AVX2 chosen at run time and a portable one.
//!
//! A filter is 9 values, stored row after row. Left to the compiler, both loops were
//! vectorised *across* filters with gathers and scatters at stride 9 (measured: slower
//! than scalar code, 20 % of `analyze kl-matrix`). Written by hand, one filter is one
//! masked 16-lane vector (AVX-512) or an 8-lane vector plus one value (AVX2), so the
//! loads and stores are plain.
//!
//! Outputs are written into uninitialised memory (`&mut [MaybeUninit<_>]`, every value
//! written once), so the result buffers are not zero-filled first: that fill cost as
//! much as the projection itself.
//!
//! Every version performs the same IEEE operations on each value (a division by the
//! same divisor; multiplies and adds, never fused, in the same order), so the results
//! are bit-identical across versions and CPUs; the tests check each version the CPU
//! supports against the portable one.

use std::mem::MaybeUninit;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    Avx512,
    Avx2,
    Portable,
}

fn isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            if is_x86_feature_detected!("avx512f") {
                Isa::Avx512
            } else if is_x86_feature_detected!("avx2") {
                Isa::Avx2
            } else {
                Isa::Portable
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    Isa::Portable
}

/// `dst = src / max|src|` per filter of 9 f32 (`src / 1`, i.e. unchanged, when the
/// maximum is 0; all NaN when any weight is NaN).
pub fn peak_scale_f32(src: &[f32], dst: &mut [MaybeUninit<f32>]) {
    assert_eq!(src.len(), dst.len());
    assert_eq!(src.len() % 9, 0);
    peak_scale_with(isa(), src, dst);
}

fn peak_scale_with(isa: Isa, src: &[f32], dst: &mut [MaybeUninit<f32>]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports the features (checked by `isa`); lengths are checked.
        Isa::Avx512 => unsafe { x86::peak_scale_avx512(src, dst) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { x86::peak_scale_avx2(src, dst) },
        _ => peak_scale_portable(src, dst),
    }
}

fn peak_scale_portable(src: &[f32], dst: &mut [MaybeUninit<f32>]) {
    for (out, x) in dst.chunks_exact_mut(9).zip(src.chunks_exact(9)) {
        let mut m = 0f32;
        let mut nan = false;
        for v in x {
            let a = v.abs();
            nan |= a.is_nan();
            if a > m {
                m = a;
            }
        }
        let d = if m == 0.0 { 1.0 } else { m };
        for (o, v) in out.iter_mut().zip(x) {
            o.write(if nan { f32::NAN } else { v / d });
        }
    }
}

/// `out = (rows - mean) . ct` per filter of 9, `ct` = the components transposed
/// (`ct[j][k]` = weight j of component k); rows of f32.
pub fn project_f32(
    mean: &[f64; 9],
    ct: &[[f64; 9]; 9],
    rows: &[f32],
    out: &mut [MaybeUninit<f64>],
) {
    assert_eq!(rows.len(), out.len());
    assert_eq!(rows.len() % 9, 0);
    project_with(isa(), mean, ct, rows, out);
}

fn project_with(
    isa: Isa,
    mean: &[f64; 9],
    ct: &[[f64; 9]; 9],
    rows: &[f32],
    out: &mut [MaybeUninit<f64>],
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports the features (checked by `isa`); lengths are checked.
        Isa::Avx512 => unsafe { x86::project_avx512(mean, ct, rows, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { x86::project_avx2(mean, ct, rows, out) },
        _ => project_portable(mean, ct, rows, out),
    }
}

/// The portable projection, generic over the input float (also used for f64 rows).
pub fn project_portable<T: Copy + Into<f64>>(
    mean: &[f64; 9],
    ct: &[[f64; 9]; 9],
    rows: &[T],
    out: &mut [MaybeUninit<f64>],
) {
    for (o, x) in out.chunks_exact_mut(9).zip(rows.chunks_exact(9)) {
        let d: [f64; 9] = std::array::from_fn(|j| x[j].into() - mean[j]);
        for (k, o) in o.iter_mut().enumerate() {
            let mut acc = ct[0][k] * d[0];
            for j in 1..9 {
                acc += ct[j][k] * d[j];
            }
            o.write(acc);
        }
    }
}

/// Adds rows of 9 values (`rows`, row-major, f32), each minus `shift`, to the running
/// sums `s1 += d` and `s2 += d d^T` (`s2` full 9x9, only the upper triangle `j >= i`
/// is kept meaningful). Row after row into the same accumulators, with separate
/// multiplies and adds: the bits of [`crate::common::Moments::add`] called row by row,
/// on every CPU.
pub fn moments_add_f32(rows: &[f32], shift: &[f64; 9], s1: &mut [f64; 9], s2: &mut [[f64; 9]; 9]) {
    assert_eq!(rows.len() % 9, 0);
    moments_with(isa(), rows, shift, s1, s2);
}

fn moments_with(
    isa: Isa,
    rows: &[f32],
    shift: &[f64; 9],
    s1: &mut [f64; 9],
    s2: &mut [[f64; 9]; 9],
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports AVX-512F (checked by `isa`); rows are whole.
        Isa::Avx512 => unsafe { x86::moments_avx512(rows, shift, s1, s2) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports AVX2 (checked by `isa`); rows are whole.
        Isa::Avx2 => unsafe { x86::moments_avx2(rows, shift, s1, s2) },
        _ => moments_portable(rows, shift, s1, s2),
    }
}

/// The portable [`moments_add_f32`], generic over the input float.
pub fn moments_portable<T: Copy + Into<f64>>(
    rows: &[T],
    shift: &[f64; 9],
    s1: &mut [f64; 9],
    s2: &mut [[f64; 9]; 9],
) {
    for x in rows.chunks_exact(9) {
        let d: [f64; 9] = std::array::from_fn(|j| x[j].into() - shift[j]);
        for i in 0..9 {
            s1[i] += d[i];
            for j in i..9 {
                s2[i][j] += d[i] * d[j];
            }
        }
    }
}

/// `dst = src` widened from f16 to f32 (the same values, bit for bit, as
/// `half`'s conversion).
///
/// With F16C, one loop under that feature converts 8 values an instruction. `half`'s
/// slice conversion calls a function per 8 values (a `#[target_feature]` function
/// cannot be inlined into its caller); in one build of session 10 that call loop took
/// 22 % of `analyze kl-matrix` instead of 3 %, with the same code at other addresses.
pub fn widen_f16(src: &[half::f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static F16C: OnceLock<bool> = OnceLock::new();
        if *F16C.get_or_init(|| is_x86_feature_detected!("f16c") && is_x86_feature_detected!("avx"))
        {
            // SAFETY: the CPU supports F16C and AVX (checked above); lengths are equal.
            unsafe { x86::widen_f16c(src, dst) };
            return;
        }
    }
    half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, dst);
}

/// A vector of `len` values written by `fill`.
///
/// # Safety
/// `fill` must write every one of the `len` values it is given.
pub unsafe fn filled_vec<T: Copy>(len: usize, fill: impl FnOnce(&mut [MaybeUninit<T>])) -> Vec<T> {
    let mut v = Vec::with_capacity(len);
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: the caller's `fill` initialised all `len` values.
    unsafe { v.set_len(len) };
    v
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support F16C and AVX; `dst.len() == src.len()`.
    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn widen_f16c(src: &[half::f16], dst: &mut [f32]) {
        let n = src.len() / 8 * 8;
        for i in (0..n).step_by(8) {
            // SAFETY: values i..i + 8 are in bounds of both slices (i + 8 <= n).
            unsafe {
                let v = _mm_loadu_si128(src.as_ptr().add(i).cast());
                _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(v));
            }
        }
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(&src[n..], &mut dst[n..]);
    }
    use std::mem::MaybeUninit;

    /// # Safety
    /// The CPU must support AVX-512F; `dst.len() >= src.len()`, a multiple of 9.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn peak_scale_avx512(src: &[f32], dst: &mut [MaybeUninit<f32>]) {
        const NINE: __mmask16 = 0x1ff;
        let one = _mm512_set1_ps(1.0);
        let nan = _mm512_set1_ps(f32::NAN);
        for i in 0..src.len() / 9 {
            // SAFETY: lanes 0..9 of row i are in bounds; the other lanes are masked.
            let v = unsafe { _mm512_maskz_loadu_ps(NINE, src.as_ptr().add(9 * i)) };
            let m = _mm512_reduce_max_ps(_mm512_abs_ps(v));
            let has_nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v) != 0;
            let d = if m == 0.0 { one } else { _mm512_set1_ps(m) };
            let q = if has_nan { nan } else { _mm512_div_ps(v, d) };
            // SAFETY: as for the load.
            unsafe { _mm512_mask_storeu_ps(dst.as_mut_ptr().add(9 * i).cast(), NINE, q) };
        }
    }

    /// # Safety
    /// The CPU must support AVX2; `dst.len() >= src.len()`, a multiple of 9.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn peak_scale_avx2(src: &[f32], dst: &mut [MaybeUninit<f32>]) {
        let sign = _mm256_set1_ps(-0.0);
        for (out, x) in dst.chunks_exact_mut(9).zip(src.chunks_exact(9)) {
            // SAFETY: x has 9 values; 8 are read.
            let v = unsafe { _mm256_loadu_ps(x.as_ptr()) };
            let a = _mm256_andnot_ps(sign, v);
            let h = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
            let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
            let h = _mm_max_ss(h, _mm_shuffle_ps::<1>(h, h));
            let a8 = x[8].abs();
            let m = _mm_cvtss_f32(h);
            let m = if a8 > m { a8 } else { m };
            let has_nan =
                _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v)) != 0 || a8.is_nan();
            let d = if m == 0.0 { 1.0 } else { m };
            let (q, q8) = if has_nan {
                (_mm256_set1_ps(f32::NAN), f32::NAN)
            } else {
                (_mm256_div_ps(v, _mm256_set1_ps(d)), x[8] / d)
            };
            // SAFETY: out has 9 values; 8 are written.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().cast(), q) };
            out[8].write(q8);
        }
    }

    /// # Safety
    /// The CPU must support AVX-512F; `out.len() >= rows.len()`, a multiple of 9.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn project_avx512(
        mean: &[f64; 9],
        ct: &[[f64; 9]; 9],
        rows: &[f32],
        out: &mut [MaybeUninit<f64>],
    ) {
        // SAFETY: every array read below has 9 values; 8 are loaded.
        let (m8, c8) = unsafe {
            (
                _mm512_loadu_pd(mean.as_ptr()),
                std::array::from_fn::<__m512d, 9, _>(|j| _mm512_loadu_pd(ct[j].as_ptr())),
            )
        };
        for (o, x) in out.chunks_exact_mut(9).zip(rows.chunks_exact(9)) {
            // SAFETY: x has 9 values; 8 are read.
            let d8 = _mm512_sub_pd(_mm512_cvtps_pd(unsafe { _mm256_loadu_ps(x.as_ptr()) }), m8);
            let mut d = [0f64; 8];
            // SAFETY: d has 8 lanes.
            unsafe { _mm512_storeu_pd(d.as_mut_ptr(), d8) };
            let d9 = f64::from(x[8]) - mean[8];
            // lanes k = 0..8 for coefficients 0..8; coefficient 8 separately
            let mut acc = _mm512_mul_pd(c8[0], _mm512_set1_pd(d[0]));
            let mut last = ct[0][8] * d[0];
            for j in 1..8 {
                acc = _mm512_add_pd(acc, _mm512_mul_pd(c8[j], _mm512_set1_pd(d[j])));
                last += ct[j][8] * d[j];
            }
            acc = _mm512_add_pd(acc, _mm512_mul_pd(c8[8], _mm512_set1_pd(d9)));
            last += ct[8][8] * d9;
            // SAFETY: o has 9 values; 8 are written.
            unsafe { _mm512_storeu_pd(o.as_mut_ptr().cast(), acc) };
            o[8].write(last);
        }
    }

    /// # Safety
    /// The CPU must support AVX-512F; `rows.len()` is a multiple of 9.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn moments_avx512(
        rows: &[f32],
        shift: &[f64; 9],
        s1: &mut [f64; 9],
        s2: &mut [[f64; 9]; 9],
    ) {
        // SAFETY (all loads and stores below): every array has 9 values; 8 are accessed.
        let sh = unsafe { _mm512_loadu_pd(shift.as_ptr()) };
        let mut v1 = unsafe { _mm512_loadu_pd(s1.as_ptr()) };
        let mut acc: [__m512d; 9] =
            std::array::from_fn(|i| unsafe { _mm512_loadu_pd(s2[i].as_ptr()) });
        let mut last: [f64; 9] = std::array::from_fn(|i| s2[i][8]);
        let mut s18 = s1[8];
        for x in rows.chunks_exact(9) {
            let d8 = _mm512_sub_pd(_mm512_cvtps_pd(unsafe { _mm256_loadu_ps(x.as_ptr()) }), sh);
            let mut d = [0f64; 8];
            unsafe { _mm512_storeu_pd(d.as_mut_ptr(), d8) };
            let dl = f64::from(x[8]) - shift[8];
            v1 = _mm512_add_pd(v1, d8);
            s18 += dl;
            for i in 0..8 {
                acc[i] = _mm512_add_pd(acc[i], _mm512_mul_pd(_mm512_set1_pd(d[i]), d8));
                last[i] += d[i] * dl;
            }
            // row 8: only (8, 8) is in the upper triangle
            last[8] += dl * dl;
        }
        unsafe { _mm512_storeu_pd(s1.as_mut_ptr(), v1) };
        s1[8] = s18;
        for i in 0..8 {
            unsafe { _mm512_storeu_pd(s2[i].as_mut_ptr(), acc[i]) };
        }
        for i in 0..9 {
            s2[i][8] = last[i];
        }
    }

    /// Row `x` widened to f64 minus `c` (lanes 0..4 in `c_lo`, 4..8 in `c_hi`, 8 in `c8`):
    /// values 0..4 and 4..8 in registers, all nine in an array.
    ///
    /// # Safety
    /// Only inside a function with AVX2 enabled; `x` has at least 9 values.
    #[inline(always)]
    unsafe fn centred_avx2(
        x: &[f32],
        c_lo: __m256d,
        c_hi: __m256d,
        c8: f64,
    ) -> (__m256d, __m256d, [f64; 9]) {
        debug_assert!(x.len() >= 9);
        // SAFETY: the caller's contract; 8 of x's values are loaded, 8 of d's stored.
        unsafe {
            let v = _mm256_loadu_ps(x.as_ptr());
            let d_lo = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), c_lo);
            let d_hi = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)), c_hi);
            let mut d = [0f64; 9];
            _mm256_storeu_pd(d.as_mut_ptr(), d_lo);
            _mm256_storeu_pd(d.as_mut_ptr().add(4), d_hi);
            d[8] = f64::from(x[8]) - c8;
            (d_lo, d_hi, d)
        }
    }

    /// [`moments_avx512`] in 4-lane registers: of row `i`'s products `d_i d_j`, lanes
    /// `j = 0..4` (needed for `i < 4` only, the upper triangle) and `j = 4..8` go to
    /// separate accumulators, `j = 8` to a scalar. Multiplies and adds stay separate (no
    /// FMA), in the portable order, so the bits are the portable version's. Without it,
    /// AVX2 CPUs ran the scalar loop, 9 % of `analyze kl-matrix` on one of them.
    ///
    /// # Safety
    /// The CPU must support AVX2; `rows.len()` is a multiple of 9.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn moments_avx2(
        rows: &[f32],
        shift: &[f64; 9],
        s1: &mut [f64; 9],
        s2: &mut [[f64; 9]; 9],
    ) {
        // SAFETY (all loads and stores below): every array has 9 values; 0..8 are accessed.
        let (sh_lo, sh_hi) = unsafe {
            (
                _mm256_loadu_pd(shift.as_ptr()),
                _mm256_loadu_pd(shift.as_ptr().add(4)),
            )
        };
        let (mut v_lo, mut v_hi) = unsafe {
            (
                _mm256_loadu_pd(s1.as_ptr()),
                _mm256_loadu_pd(s1.as_ptr().add(4)),
            )
        };
        let mut lo: [__m256d; 4] =
            std::array::from_fn(|i| unsafe { _mm256_loadu_pd(s2[i].as_ptr()) });
        let mut hi: [__m256d; 8] =
            std::array::from_fn(|i| unsafe { _mm256_loadu_pd(s2[i].as_ptr().add(4)) });
        let mut last: [f64; 9] = std::array::from_fn(|i| s2[i][8]);
        let mut s18 = s1[8];
        for x in rows.chunks_exact(9) {
            // SAFETY: AVX2 is this function's; x has 9 values.
            let (d_lo, d_hi, d) = unsafe { centred_avx2(x, sh_lo, sh_hi, shift[8]) };
            let dl = d[8];
            v_lo = _mm256_add_pd(v_lo, d_lo);
            v_hi = _mm256_add_pd(v_hi, d_hi);
            s18 += dl;
            for i in 0..8 {
                let b = _mm256_set1_pd(d[i]);
                if i < 4 {
                    lo[i] = _mm256_add_pd(lo[i], _mm256_mul_pd(b, d_lo));
                }
                hi[i] = _mm256_add_pd(hi[i], _mm256_mul_pd(b, d_hi));
                last[i] += d[i] * dl;
            }
            // row 8: only (8, 8) is in the upper triangle
            last[8] += dl * dl;
        }
        unsafe {
            _mm256_storeu_pd(s1.as_mut_ptr(), v_lo);
            _mm256_storeu_pd(s1.as_mut_ptr().add(4), v_hi);
        }
        s1[8] = s18;
        for i in 0..8 {
            if i < 4 {
                unsafe { _mm256_storeu_pd(s2[i].as_mut_ptr(), lo[i]) };
            }
            unsafe { _mm256_storeu_pd(s2[i].as_mut_ptr().add(4), hi[i]) };
        }
        for i in 0..9 {
            s2[i][8] = last[i];
        }
    }

    /// # Safety
    /// The CPU must support AVX2; `out.len() >= rows.len()`, a multiple of 9.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn project_avx2(
        mean: &[f64; 9],
        ct: &[[f64; 9]; 9],
        rows: &[f32],
        out: &mut [MaybeUninit<f64>],
    ) {
        // SAFETY: every array read below has 9 values; lanes 0..8 are loaded.
        let (m_lo, m_hi, c_lo, c_hi) = unsafe {
            (
                _mm256_loadu_pd(mean.as_ptr()),
                _mm256_loadu_pd(mean.as_ptr().add(4)),
                std::array::from_fn::<__m256d, 9, _>(|j| _mm256_loadu_pd(ct[j].as_ptr())),
                std::array::from_fn::<__m256d, 9, _>(|j| _mm256_loadu_pd(ct[j].as_ptr().add(4))),
            )
        };
        for (o, x) in out.chunks_exact_mut(9).zip(rows.chunks_exact(9)) {
            // SAFETY: AVX2 is this function's; x has 9 values.
            let (_, _, d) = unsafe { centred_avx2(x, m_lo, m_hi, mean[8]) };
            let b = _mm256_set1_pd(d[0]);
            let mut lo = _mm256_mul_pd(c_lo[0], b);
            let mut hi = _mm256_mul_pd(c_hi[0], b);
            let mut last = ct[0][8] * d[0];
            for j in 1..9 {
                let b = _mm256_set1_pd(d[j]);
                lo = _mm256_add_pd(lo, _mm256_mul_pd(c_lo[j], b));
                hi = _mm256_add_pd(hi, _mm256_mul_pd(c_hi[j], b));
                last += ct[j][8] * d[j];
            }
            // SAFETY: o has 9 values; 8 are written.
            unsafe {
                _mm256_storeu_pd(o.as_mut_ptr().cast(), lo);
                _mm256_storeu_pd(o.as_mut_ptr().add(4).cast(), hi);
            }
            o[8].write(last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn supported() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") {
                v.push(Isa::Avx2);
            }
            if is_x86_feature_detected!("avx512f") {
                v.push(Isa::Avx512);
            }
        }
        v
    }

    fn run<T: Copy>(n: usize, f: impl FnOnce(&mut [MaybeUninit<T>])) -> Vec<T> {
        // SAFETY: every caller's kernel writes all n values.
        unsafe { filled_vec(n, f) }
    }

    fn bits32(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    fn bits64(v: &[f64]) -> Vec<u64> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    fn special() -> impl Strategy<Value = f32> {
        prop_oneof![
            8 => -4.0f32..4.0,
            1 => Just(0.0f32),
            1 => Just(-0.0f32),
            1 => Just(f32::NAN),
            1 => Just(f32::INFINITY),
            1 => Just(f32::MIN_POSITIVE / 4.0),
        ]
    }

    #[test]
    fn widen_f16_matches_half_for_every_value() {
        let all: Vec<half::f16> = (0..=u16::MAX).map(half::f16::from_bits).collect();
        // Every length mod 8, so the tail path runs too.
        for cut in 0..8 {
            let src = &all[cut..];
            let mut got = vec![0f32; src.len()];
            widen_f16(src, &mut got);
            for (x, y) in src.iter().zip(&got) {
                let want = x.to_f32();
                assert!(
                    want.to_bits() == y.to_bits() || (want.is_nan() && y.is_nan()),
                    "{:#06x}: {want} vs {y}",
                    x.to_bits()
                );
            }
        }
    }

    proptest! {
        #[test]
        fn peak_scale_versions_agree(x in proptest::collection::vec(special(), 0..30usize)
            .prop_map(|mut v| { v.truncate(v.len() / 9 * 9); v })) {
            let want = run(x.len(), |o| peak_scale_portable(&x, o));
            for isa in supported() {
                let got = run(x.len(), |o| peak_scale_with(isa, &x, o));
                prop_assert_eq!(bits32(&got), bits32(&want), "{:?}", isa);
            }
        }

        #[test]
        fn project_versions_agree(x in proptest::collection::vec(-2.0f32..2.0, 0..40usize)
            .prop_map(|mut v| { v.truncate(v.len() / 9 * 9); v }),
            m in proptest::array::uniform9(-1.0f64..1.0),
            c in proptest::array::uniform9(proptest::array::uniform9(-1.0f64..1.0))) {
            let want = run(x.len(), |o| project_portable(&m, &c, &x, o));
            for isa in supported() {
                let got = run(x.len(), |o| project_with(isa, &m, &c, &x, o));
                prop_assert_eq!(bits64(&got), bits64(&want), "{:?}", isa);
            }
        }
    }

    proptest! {
        #[test]
        fn moments_versions_agree(x in proptest::collection::vec(-2.0f32..2.0, 0..60usize)
            .prop_map(|mut v| { v.truncate(v.len() / 9 * 9); v }),
            shift in proptest::array::uniform9(-1.0f64..1.0),
            start in proptest::array::uniform9(-1.0f64..1.0)) {
            let s2_0: [[f64; 9]; 9] = std::array::from_fn(|i| std::array::from_fn(|j| start[i] * start[j]));
            let (mut a1, mut a2) = (start, s2_0);
            moments_portable(&x, &shift, &mut a1, &mut a2);
            for isa in supported() {
                let (mut b1, mut b2) = (start, s2_0);
                moments_with(isa, &x, &shift, &mut b1, &mut b2);
                prop_assert_eq!(bits64(&a1), bits64(&b1), "{:?}", isa);
                for i in 0..9 {
                    prop_assert_eq!(bits64(&a2[i][i..]), bits64(&b2[i][i..]), "{:?} row {}", isa, i);
                }
            }
            let (mut b1, mut b2) = (start, s2_0);
            moments_add_f32(&x, &shift, &mut b1, &mut b2);
            prop_assert_eq!(bits64(&a1), bits64(&b1));
        }
    }

    #[test]
    fn peak_scale_cases() {
        let x = [
            1.0f32, -4.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, -0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
            0.0, 0.0,
        ];
        for isa in supported() {
            let out = run(18, |o| peak_scale_with(isa, &x, o));
            assert_eq!(&out[..9], &[0.25, -1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.25]);
            assert!(out[9].is_sign_negative() && out[9] == 0.0, "{isa:?}");
        }
    }
}
