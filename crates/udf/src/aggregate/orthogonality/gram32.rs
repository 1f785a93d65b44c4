//! The Gram part of `orthogonality` for layers kept in f32 (float16 or float32 input):
//! `sum_{i<j} |x_i . x_j| inv_i inv_j` over the raw rows `x` and their inverse norms `inv`,
//! with the dot products in 8-lane f32 registers — twice the lanes of the f64 kernel of
//! `mod gram`, at the same instruction count.
//!
//! **Precision.** Each dot product is summed in f32 over one k-block of at most [`KC`]
//! dimensions, then added in f64 (the partial tiles between k-blocks and the final
//! `|g| inv_i inv_j` are f64). For float16 input every product is exact in f32 (11-bit
//! significands: 22 bits < 24); for float32 input it rounds once. With `u = 2^-24`, a run
//! of `m <= KC` products summed in f32 is off by at most `gamma_m sum_k |x_ik x_jk|`
//! (`gamma_m = m u / (1 - m u)`, Higham, *Accuracy and Stability of Numerical
//! Algorithms*, 3.1), one more `u` per product for float32 input, so by Cauchy-Schwarz a
//! normalised entry `|g_ij|` is off by at most `gamma_{KC+1}` = 3.9e-6, and so is the
//! orthogonality, a mean of such entries. That is the worst case; rounding errors of
//! random sign cancel, and the measured errors on trained models are near 1e-9
//! (`docs/benchmarks.md`). When all sums are exact in f32 (small integers times powers
//! of two, as the tests use) the value is the f64 kernel's to the last few bits.
//!
//! Layout and blocking follow `mod gram` (whose `sum_blocks` it uses; `pack::plain` packs
//! its panels): rows packed transposed into panels of [`W`] rows (dimension-major,
//! zero-padded), a `4 x 16` tile of FMAs in 8 registers, tiles on
//! or above the diagonal only (the diagonal tile masked to `j > i`), row blocks as the
//! unit of parallel work, column chunks that stay in L2. The result depends only on
//! `(n, d, Plan)`, never on the thread count.
//!
//! Only an AVX2 + FMA version exists: it is the one this project can measure (an AVX-512
//! CPU runs it too). Elsewhere `orthogonality` keeps the f64 kernels.

/// Rows per panel: two 8-lane f32 registers.
const W: usize = 16;
/// Rows per tile.
const R: usize = 4;
/// Most dimensions summed in f32 before the sum goes to f64 (the k-block).
pub(super) const KC: usize = 64;
/// Bytes of column panels (one k-block) a chunk aims to keep in L2.
const CHUNK_BYTES: usize = 256 * 1024;

/// The worst-case error of the orthogonality computed through this kernel (see the
/// module docs): `gamma_{KC+1}`.
#[cfg(test)]
pub(super) fn error_bound() -> f64 {
    let mu = (KC + 1) as f64 * f64::from(f32::EPSILON) / 2.0;
    mu / (1.0 - mu)
}

/// Whether this CPU can run the kernel.
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// How [`upper_abs_sum`] blocks its work (the value depends on it: summation order).
#[derive(Clone, Copy, Debug)]
pub(super) struct Plan {
    /// Panels of rows per parallel work item.
    pub(super) bp: usize,
    /// Panels of columns per cache chunk.
    pub(super) cp: usize,
    /// Most dimensions per k-block (at most [`KC`], the precision bound's).
    pub(super) kc: usize,
    /// Run the work items on rayon's pool (same result as sequentially).
    pub(super) parallel: bool,
}

impl Plan {
    /// The plan for `n` rows of `d` dimensions: a pure function of the shape.
    pub(super) fn new(n: usize, d: usize) -> Plan {
        let np = n.div_ceil(W);
        Plan {
            // >= 16 work items when possible (the triangle makes early ones heavier), at
            // most 256 rows each
            bp: (np / 16).clamp(1, 256 / W),
            cp: (CHUNK_BYTES / (d.clamp(1, KC) * W * 4)).max(1),
            kc: KC,
            parallel: n.saturating_mul(n).saturating_mul(d) >= 1 << 22,
        }
    }
}

thread_local! {
    /// Per-thread scratch: the packed panels.
    static PANELS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `sum_{i<j} |rows_i . rows_j| inv_i inv_j` for `n` row-major f32 rows of length `d >= 1`
/// and one `inv` per row. Panics when the CPU lacks AVX2 + FMA ([`available`]).
pub(super) fn upper_abs_sum(rows: &[f32], inv: &[f64], n: usize, d: usize, plan: Plan) -> f64 {
    assert!(available(), "the f32 Gram kernel needs AVX2 and FMA");
    assert!(d > 0 && rows.len() == n * d && inv.len() == n);
    assert!(plan.bp > 0 && plan.cp > 0 && (1..=KC).contains(&plan.kc));
    let np = n.div_ceil(W);
    let pw = d * W;
    let mut inv_p = inv.to_vec();
    inv_p.resize(np * W, 0.0);
    PANELS.with_borrow_mut(|p| {
        // Every value is written below (padding rows as zeros), so a reused buffer
        // needs no clearing.
        super::ensure_len(p, np * pw);
        let p = &mut p[..np * pw];
        super::pack::plain(p, rows, n, d, W);
        let job = Job {
            p,
            inv: &inv_p,
            np,
            d,
            bp: plan.bp,
            cp: plan.cp,
            kc: plan.kc,
        };
        // SAFETY: the CPU has AVX2 and FMA (asserted above).
        let run = |b: usize| unsafe { block(&job, b) };
        super::gram::sum_blocks(np.div_ceil(plan.bp), plan.parallel, run)
    })
}

/// The packed panels, the padded inverse norms and the blocking.
struct Job<'a> {
    p: &'a [f32],
    inv: &'a [f64],
    np: usize,
    d: usize,
    bp: usize,
    cp: usize,
    kc: usize,
}

/// A tile's sums in f64: `R` rows x `W` columns.
type Tile64 = [[f64; W]; R];

/// The sum for row block `b` of `job`. Unsafe: the CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block(job: &Job<'_>, b: usize) -> f64 {
    use std::arch::x86_64::*;
    let (d, np, cp) = (job.d, job.np, job.cp);
    let pw = d * W;
    assert!(job.p.len() == np * pw && job.inv.len() == np * W);
    let base = job.p.as_ptr();
    let (p0, p1) = (b * job.bp, ((b + 1) * job.bp).min(np));
    let nkb = d.div_ceil(job.kc);
    let kc = d.div_ceil(nkb);
    // f64 partial tiles between k-blocks, one per (row tile, column panel) of a chunk
    let mut part: Vec<Tile64> = if nkb > 1 {
        vec![[[0.0; W]; R]; (p1 - p0) * (W / R) * cp]
    } else {
        Vec::new()
    };
    let mut sums = _mm256_setzero_pd();
    let mut on_diag = 0.0;
    for jc in (p0..np).step_by(cp) {
        let jend = (jc + cp).min(np);
        for kb in 0..nkb {
            let (k0, k1) = (kb * kc, ((kb + 1) * kc).min(d));
            let last = kb + 1 == nkb;
            let mut slot = 0;
            for ip in p0..p1 {
                for off in (0..W).step_by(R) {
                    // SAFETY: every pointer is inside a panel q < np at k*W + l, k < d.
                    let a = unsafe { base.add(ip * pw + k0 * W + off) };
                    let inv_i = &job.inv[ip * W + off..ip * W + off + R];
                    for jp in jc.max(ip)..jend {
                        let acc = unsafe { tile(a, base.add(jp * pw + k0 * W), k1 - k0) };
                        if !last {
                            unsafe { add_to(&mut part[slot], &acc, kb == 0) };
                            slot += 1;
                            continue;
                        }
                        let mut g: Tile64 = if nkb > 1 { part[slot] } else { [[0.0; W]; R] };
                        slot += 1;
                        unsafe { add_to(&mut g, &acc, nkb == 1) };
                        let inv_j = &job.inv[jp * W..jp * W + W];
                        if jp == ip {
                            // the diagonal tile: only columns right of each row's own
                            for (r, gr) in g.iter().enumerate() {
                                for (l, x) in gr.iter().enumerate().skip(off + r + 1) {
                                    on_diag += x.abs() * inv_j[l] * inv_i[r];
                                }
                            }
                        } else {
                            sums = unsafe { _mm256_add_pd(sums, scaled_abs_sum(&g, inv_i, inv_j)) };
                        }
                    }
                }
            }
        }
    }
    let mut buf = [0.0f64; 4];
    unsafe { _mm256_storeu_pd(buf.as_mut_ptr(), sums) };
    on_diag + buf.iter().sum::<f64>()
}

/// Portable stand-in so the module compiles elsewhere; never called ([`available`]).
#[cfg(not(target_arch = "x86_64"))]
unsafe fn block(_job: &Job<'_>, _b: usize) -> f64 {
    unreachable!("the f32 Gram kernel needs x86-64")
}

/// `A B^T` in f32 for the `R` rows at `a` and the `W` columns at `b` over `k` dimensions
/// (both advance `W` values per dimension), from zero.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile(a: *const f32, b: *const f32, k: usize) -> [[std::arch::x86_64::__m256; 2]; R] {
    use std::arch::x86_64::*;
    // SAFETY (all below): the caller's contract (features and bounds).
    let mut acc = [[unsafe { _mm256_setzero_ps() }; 2]; R];
    for k in 0..k {
        let b0 = unsafe { _mm256_loadu_ps(b.add(k * W)) };
        let b1 = unsafe { _mm256_loadu_ps(b.add(k * W + 8)) };
        for (r, ar) in acc.iter_mut().enumerate() {
            let x = unsafe { _mm256_broadcast_ss(&*a.add(k * W + r)) };
            ar[0] = unsafe { _mm256_fmadd_ps(x, b0, ar[0]) };
            ar[1] = unsafe { _mm256_fmadd_ps(x, b1, ar[1]) };
        }
    }
    acc
}

/// `t = acc` (when `fresh`) or `t += acc`, widened to f64.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn add_to(t: &mut Tile64, acc: &[[std::arch::x86_64::__m256; 2]; R], fresh: bool) {
    use std::arch::x86_64::*;
    for (tr, ar) in t.iter_mut().zip(acc) {
        for (v, x) in ar.iter().enumerate() {
            // SAFETY: AVX2 is the caller's contract; the 4-value stores are inside `tr`.
            unsafe {
                let lo = _mm256_cvtps_pd(_mm256_castps256_ps128(*x));
                let hi = _mm256_cvtps_pd(_mm256_extractf128_ps(*x, 1));
                let p = tr.as_mut_ptr().add(v * 8);
                if fresh {
                    _mm256_storeu_pd(p, lo);
                    _mm256_storeu_pd(p.add(4), hi);
                } else {
                    _mm256_storeu_pd(p, _mm256_add_pd(_mm256_loadu_pd(p), lo));
                    _mm256_storeu_pd(p.add(4), _mm256_add_pd(_mm256_loadu_pd(p.add(4)), hi));
                }
            }
        }
    }
}

/// `sum_{r,l} |g_rl| inv_j[l] inv_i[r]` in one register, row by row.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn scaled_abs_sum(g: &Tile64, inv_i: &[f64], inv_j: &[f64]) -> std::arch::x86_64::__m256d {
    use std::arch::x86_64::*;
    // SAFETY (all below): AVX2 is the caller's contract; loads of 4 inside `W`-long rows.
    unsafe {
        let sign = _mm256_set1_pd(-0.0);
        let ij: [__m256d; W / 4] =
            std::array::from_fn(|v| _mm256_loadu_pd(inv_j.as_ptr().add(4 * v)));
        let mut total = _mm256_setzero_pd();
        for (gr, &ii) in g.iter().zip(inv_i) {
            let mut row = _mm256_setzero_pd();
            for (v, s) in ij.iter().enumerate() {
                let x = _mm256_andnot_pd(sign, _mm256_loadu_pd(gr.as_ptr().add(4 * v)));
                row = _mm256_fmadd_pd(x, *s, row);
            }
            total = _mm256_fmadd_pd(row, _mm256_set1_pd(ii), total);
        }
        total
    }
}
