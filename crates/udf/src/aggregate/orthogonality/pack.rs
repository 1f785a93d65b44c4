//! Packing a layer's f32 rows into the Gram kernels' panels, eight rows by eight
//! dimensions at a time: the layout and the values of [`super::gram::pack`] (which stays
//! as the reference and serves everything else), with 8 x 8 AVX transposes.
//!
//! Why: `gram::pack` writes one value at a time with a stride of a panel row, and the
//! closure that widens and scales it keeps LLVM from vectorising that loop. On the 10M
//! pipeline store it was 12 % of `analyze degeneration`'s samples (perf, AVX-512 host),
//! a quarter as much as the Gram kernel itself: `n d` values against `n^2 d / 2`
//! multiply-adds, but 0.6-1.4 ns per value (measured) against ~0.04 ns per multiply-add.
//! Here eight rows of eight dimensions are loaded, transposed in registers, and stored as
//! eight contiguous runs of a panel row.
//!
//! Same bits: a value is `f64::from(v) * scale[l]` (one exact widening, one IEEE multiply,
//! whether by `vcvtps2pd` + `vmulpd` or scalar) or `v` itself.

use super::gram::pack as pack_values;

/// `gram::pack(p, rows, n, d, w, |v, l| f64::from(v) * scale[l])`: f64 panels of the rows
/// scaled by one factor per row, the same bits.
pub(super) fn scaled(p: &mut [f64], rows: &[f32], scale: &[f64], n: usize, d: usize, w: usize) {
    assert!(scale.len() >= n, "one scale per row");
    #[cfg(target_arch = "x86_64")]
    if x86::usable(p.len(), rows.len(), n, d, w) {
        // SAFETY: AVX is available and the shapes are checked (`usable`); `scale` has a
        // value for every row (asserted above).
        unsafe { x86::pack_scaled(p, rows, scale, n, d, w) };
        return;
    }
    pack_values(p, rows, n, d, w, |v, l| f64::from(v) * scale[l]);
}

/// `gram::pack(p, rows, n, d, w, |v, _| v)`: f32 panels of the rows as they are.
pub(super) fn plain(p: &mut [f32], rows: &[f32], n: usize, d: usize, w: usize) {
    #[cfg(target_arch = "x86_64")]
    if x86::usable(p.len(), rows.len(), n, d, w) {
        // SAFETY: AVX is available and the shapes are checked (`usable`).
        unsafe { x86::pack_plain(p, rows, n, d, w) };
        return;
    }
    pack_values(p, rows, n, d, w, |v, _| v);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Dimensions per strip: a strip of a panel (64 x 32 f64 = 16 KiB) stays in L1
    /// while its row groups are stored into it.
    const STRIP: usize = 64;

    /// Whether the AVX path can pack these shapes: `w` a multiple of 8, whole panels,
    /// `rows` holding `n` rows of `d`, and the CPU has AVX.
    pub(super) fn usable(p_len: usize, rows_len: usize, n: usize, d: usize, w: usize) -> bool {
        w > 0
            && w.is_multiple_of(8)
            && d > 0
            && rows_len == n * d
            && p_len.is_multiple_of(d * w)
            && p_len / (d * w) >= n.div_ceil(w)
            && is_x86_feature_detected!("avx")
    }

    /// Where the eight values of one dimension for rows `row..row + 8` go.
    trait Sink {
        type D: Copy + Default;
        /// Stores `c` (lane `i` = row `row + i`) at `dst..dst + 8`.
        unsafe fn put8(&self, dst: *mut Self::D, c: __m256, row: usize);
        /// The value of `v` in row `row`.
        fn put1(&self, v: f32, row: usize) -> Self::D;
    }

    /// `f64::from(v) * scale[row]`.
    struct Scaled<'a>(&'a [f64]);

    impl Sink for Scaled<'_> {
        type D = f64;
        #[inline(always)]
        unsafe fn put8(&self, dst: *mut f64, c: __m256, row: usize) {
            // SAFETY: the caller's: AVX, `row + 8 <= scale.len()`, `dst` valid for 8.
            unsafe {
                let s = self.0.as_ptr().add(row);
                let lo = _mm256_cvtps_pd(_mm256_castps256_ps128(c));
                let hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(c));
                _mm256_storeu_pd(dst, _mm256_mul_pd(lo, _mm256_loadu_pd(s)));
                _mm256_storeu_pd(dst.add(4), _mm256_mul_pd(hi, _mm256_loadu_pd(s.add(4))));
            }
        }
        #[inline(always)]
        fn put1(&self, v: f32, row: usize) -> f64 {
            f64::from(v) * self.0[row]
        }
    }

    /// `v` as it is.
    struct Plain;

    impl Sink for Plain {
        type D = f32;
        #[inline(always)]
        unsafe fn put8(&self, dst: *mut f32, c: __m256, _row: usize) {
            // SAFETY: the caller's: AVX, `dst` valid for 8.
            unsafe { _mm256_storeu_ps(dst, c) }
        }
        #[inline(always)]
        fn put1(&self, v: f32, _row: usize) -> f32 {
            v
        }
    }

    /// # Safety
    /// AVX; `usable` holds; `scale.len() >= n`.
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn pack_scaled(
        p: &mut [f64],
        rows: &[f32],
        scale: &[f64],
        n: usize,
        d: usize,
        w: usize,
    ) {
        // SAFETY: the caller's.
        unsafe { pack(&Scaled(scale), p, rows, n, d, w) }
    }

    /// # Safety
    /// AVX; `usable` holds.
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn pack_plain(p: &mut [f32], rows: &[f32], n: usize, d: usize, w: usize) {
        // SAFETY: the caller's.
        unsafe { pack(&Plain, p, rows, n, d, w) }
    }

    /// `gram::pack` with `sink`'s values: full groups of 8 rows x 8 dimensions by
    /// transposes, the rest (the last `d % 8` dimensions, the last panel's last `live % 8`
    /// rows) one value at a time, the padding rows as zeros.
    ///
    /// # Safety
    /// AVX; `usable(p.len(), rows.len(), n, d, w)`; `sink` valid for rows `0..n`.
    #[inline(always)]
    unsafe fn pack<K: Sink>(sink: &K, p: &mut [K::D], rows: &[f32], n: usize, d: usize, w: usize) {
        let pw = d * w;
        let d8 = d - d % 8;
        for (q, dst) in p.chunks_exact_mut(pw).take(n.div_ceil(w)).enumerate() {
            let r0 = q * w;
            let live = (n - r0).min(w);
            let l8 = live - live % 8;
            let src = &rows[r0 * d..(r0 + live) * d];
            for k0 in (0..d8).step_by(STRIP) {
                let k1 = (k0 + STRIP).min(d8);
                for l0 in (0..l8).step_by(8) {
                    for k in (k0..k1).step_by(8) {
                        // SAFETY: rows l0..l0 + 8 <= live of `src`, dimensions k..k + 8 <= d;
                        // the stores go to (k + j) w + l0 .. + 8 <= (d - 1) w + w = pw, and
                        // rows r0 + l0 + 8 <= n of `sink`.
                        unsafe {
                            let s = src.as_ptr().add(l0 * d + k);
                            let r: [__m256; 8] =
                                std::array::from_fn(|i| _mm256_loadu_ps(s.add(i * d)));
                            for (j, c) in transpose(r).into_iter().enumerate() {
                                sink.put8(dst.as_mut_ptr().add((k + j) * w + l0), c, r0 + l0);
                            }
                        }
                    }
                }
            }
            for (l, r) in src.chunks_exact(d).enumerate() {
                let from = if l < l8 { d8 } else { 0 };
                for (k, v) in r.iter().enumerate().skip(from) {
                    dst[k * w + l] = sink.put1(*v, r0 + l);
                }
            }
            if live < w {
                for k in 0..d {
                    dst[k * w + live..(k + 1) * w].fill(K::D::default());
                }
            }
        }
    }

    /// The 8 x 8 transpose: lane `i` of output `j` is lane `j` of input `i`.
    #[inline(always)]
    unsafe fn transpose(r: [__m256; 8]) -> [__m256; 8] {
        // SAFETY: register operations only (AVX, the caller's).
        unsafe {
            // pairs of rows interleaved: (0 1), (2 3), (4 5), (6 7), low and high halves
            let t: [__m256; 8] = std::array::from_fn(|i| {
                let (a, b) = (r[2 * (i / 2)], r[2 * (i / 2) + 1]);
                if i % 2 == 0 {
                    _mm256_unpacklo_ps(a, b)
                } else {
                    _mm256_unpackhi_ps(a, b)
                }
            });
            // four rows of one dimension per 128-bit lane: rows 0-3 from t0..t3, 4-7 from t4..t7
            let u: [__m256; 8] = std::array::from_fn(|i| {
                let h = 4 * (i / 4);
                let (a, b) = (t[h + (i % 4) / 2], t[h + 2 + (i % 4) / 2]);
                if i % 2 == 0 {
                    _mm256_shuffle_ps::<0x44>(a, b)
                } else {
                    _mm256_shuffle_ps::<0xEE>(a, b)
                }
            });
            // rows 0-3 and 4-7 of one dimension joined: u[j] low lanes hold dimension j,
            // high lanes dimension j + 4
            std::array::from_fn(|j| {
                let (a, b) = (u[j % 4], u[4 + j % 4]);
                if j < 4 {
                    _mm256_permute2f128_ps::<0x20>(a, b)
                } else {
                    _mm256_permute2f128_ps::<0x31>(a, b)
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values with every kind of bits a layer can hold: signs, tiny and huge magnitudes,
    /// subnormals, zeros.
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                match x % 11 {
                    0 => 0.0,
                    1 => -0.0,
                    2 => f32::from_bits((x >> 40) as u32 & 0x007f_ffff), // subnormal
                    _ => f32::from_bits(
                        ((x >> 32) as u32 & 0x807f_ffff) | (((x % 60) as u32 + 97) << 23),
                    ),
                }
            })
            .collect()
    }

    /// Both fast packs equal `gram::pack` bit for bit, padding included, for every row
    /// count mod 8 and dimension count mod 8, panel widths 8, 16 and 32, over a buffer
    /// full of garbage first (every value must be written).
    #[test]
    fn fast_packs_are_gram_pack() {
        for w in [8, 16, 32] {
            for n in [1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 40, 64, 70] {
                for d in [1, 3, 8, 9, 16, 27, 63, 64, 65, 72, 129, 200] {
                    let rows = values(n * d, (n * 1000 + d * 7 + w) as u64);
                    let scale: Vec<f64> = (0..n).map(|l| 1.0 / (l as f64 + 0.37)).collect();
                    let len = n.div_ceil(w) * d * w;

                    let mut want = vec![f64::NAN; len];
                    pack_values(&mut want, &rows, n, d, w, |v, l| f64::from(v) * scale[l]);
                    let mut got = vec![f64::NAN; len];
                    scaled(&mut got, &rows, &scale, n, d, w);
                    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&want), "scaled n={n} d={d} w={w}");

                    let mut want = vec![f32::NAN; len];
                    pack_values(&mut want, &rows, n, d, w, |v, _| v);
                    let mut got = vec![f32::NAN; len];
                    plain(&mut got, &rows, n, d, w);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&want), "plain n={n} d={d} w={w}");
                }
            }
        }
    }
}
