//! `orthogonality(weights, out_channel, in_channel [, gram_precision])`: how orthogonal
//! the out-channel vectors of one layer are, MISSION.md section 3 "Orthogonality".
//!
//! Rows: one vector per out channel — its in-channel kernels (9 weights each) concatenated
//! in ascending `in_channel` order, length `n_in * 9` — each L2-normalised (a zero row is
//! left as is); `W` = those rows, `n` = number of out channels;
//! `orthogonality = 1 - sum_ij |(W W^T - I)_ij| / (n (n - 1))` (Float64; 1 for an
//! orthonormal set; the diagonal counts, so a zero row adds 1 to the sum).
//!
//! Every out channel must have exactly one filter for every in channel of the group:
//! a duplicate `(out_channel, in_channel)` or a missing pair is an execution error naming
//! the pair. Rows with a NULL filter or NULL channel are skipped. A group with fewer than
//! two out channels gives NULL (the formula divides by `n (n - 1)`), as does an empty one.
//!
//! State (exact): per group, every filter with its two channels (`List<Int64>` x 2 and
//! `List<Float32|Float64>` of 9 weights per filter; Float32 for float16/float32 input):
//! `O(filters)` memory, reported by `size()`, spillable. Evaluation costs
//! `O(n^2 * n_in * 9)` multiply-adds (never an `n x n` matrix in memory), see
//! [`orthogonality_kernel`] (f64, ~1e-14 relative).
//!
//! An optional fourth argument, `gram_precision`, `'f64'` (default) or `'f32'`: with
//! `'f32'`, layers kept in Float32 with `n^2 * n_in * 9 >= 2^20` take the f32 Gram kernel
//! of [`gram32`] on AVX2 CPUs: twice the lanes, at most 3.9e-6 from the float64 value
//! (its docs give the bound). The default stays float64 accumulation, as MISSION.md
//! section 3 defines every number.

use std::mem::size_of;
use std::ops::Range;
use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array};
use arrow::datatypes::{DataType, Field, FieldRef, Float32Type, Float64Type, Int64Type};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, DocumentationBuilder, EmitTo,
    GroupsAccumulator, Signature, Volatility,
};
use datafusion::physical_expr::expressions::Literal;

use super::layer_sparsity::{
    DOC_SECTION, ExactFloat, GroupAgg, Groups, Single, list_of, list_type, passes, state_storage,
    storage,
};
use crate::common::{Filters, Flat, coerce_weights, group_runs};

const NAME: &str = "orthogonality";

/// Scalar reference: orthogonality of the out-channel vectors `rows` (equal lengths);
/// `None` for fewer than two rows.
pub fn orthogonality_ref(rows: &[Vec<f64>]) -> Option<f64> {
    let n = rows.len();
    if n < 2 {
        return None;
    }
    let unit: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| {
            let norm = r.iter().map(|v| v * v).sum::<f64>().sqrt();
            if norm > 0.0 {
                r.iter().map(|v| v / norm).collect()
            } else {
                r.clone()
            }
        })
        .collect();
    let mut s = 0.0;
    for i in 0..n {
        for j in 0..n {
            let g: f64 = unit[i].iter().zip(&unit[j]).map(|(a, b)| a * b).sum();
            s += (g - if i == j { 1.0 } else { 0.0 }).abs();
        }
    }
    Some(1.0 - s / (n * (n - 1)) as f64)
}

/// Fast kernel, the value of [`orthogonality_ref`] (to ~1e-14 relative: FMAs, another
/// summation order): `rows` is `n` row-major vectors of length `d`, normalised in place.
/// The diagonal `|u_i . u_i - 1|` is summed while normalising; the strict upper triangle
/// of `W W^T` by the fused SIMD micro-kernel of `mod gram` (runtime-chosen AVX-512 / AVX2
/// / portable, rows in parallel on rayon's pool), which never stores the Gram matrix:
/// memory is the `n * d` packed copy plus a few hundred KiB per thread, whatever `n`.
/// The value is deterministic on a given CPU (fixed blocking, partial sums added in
/// order), independent of the thread count; different instruction sets may differ in the
/// last bits.
pub fn orthogonality_kernel(rows: &mut [f64], n: usize, d: usize) -> Option<f64> {
    orthogonality_with(rows, n, d, default_plan)
}

/// The Gram kernel's plan of [`orthogonality_kernel`] for `n` rows of `d` dimensions.
fn default_plan(n: usize, d: usize) -> gram::Plan {
    // Small layers take the portable kernel (no FMA on x86-64): its result has the same
    // bits on every x86-64 CPU, where the SIMD kernels round differently in the last bits;
    // the SIMD kernels pay off only on large layers.
    let isa = if n.saturating_mul(n).saturating_mul(d) < SMALL_LAYER_WORK {
        gram::Isa::Portable
    } else {
        gram::Isa::detect()
    };
    gram::Plan::new(isa, n, d)
}

/// `n * n * d` below which [`orthogonality_kernel`] uses the portable Gram kernel.
const SMALL_LAYER_WORK: usize = 1 << 20;

/// [`orthogonality_kernel`] with the Gram kernel's plan chosen by `plan(n, d)`.
fn orthogonality_with(
    rows: &mut [f64],
    n: usize,
    d: usize,
    plan: impl FnOnce(usize, usize) -> gram::Plan,
) -> Option<f64> {
    if n < 2 || rows.len() != n * d {
        return None;
    }
    if d == 0 {
        // empty vectors: G = 0, only the diagonal |0 - 1| counts
        return Some(1.0 - n as f64 / (n * (n - 1)) as f64);
    }
    let mut diag = 0.0;
    for r in rows.chunks_exact_mut(d) {
        let norm = sum_sq(r).sqrt();
        if norm > 0.0 {
            // one division, then products (within an ulp of `v / norm`; the divisions
            // were a third of the time of a 64 x 576 layer). `1 / norm` is finite: a
            // nonzero sum of squares is >= 5e-324, so `norm >= 2e-162`.
            let inv = 1.0 / norm;
            for v in r.iter_mut() {
                *v *= inv;
            }
        }
        diag += (sum_sq(r) - 1.0).abs();
    }
    let upper = gram::upper_abs_sum(rows, n, d, plan(n, d));
    Some(1.0 - (2.0 * upper + diag) / (n * (n - 1)) as f64)
}

/// `sum x_i^2` in 8 independent partial sums: vectorises, where the one-accumulator sum
/// is bound by the add latency (it took half the time of a 64 x 576 layer).
fn sum_sq(x: &[f64]) -> f64 {
    sum_sq_of(x, |v| v)
}

/// [`sum_sq`] of `f(x_i)`, in the same order: the bits of [`sum_sq`] of the values
/// `f(x_i)` stored first.
#[inline(always)]
fn sum_sq_of<S: Copy>(x: &[S], f: impl Fn(S) -> f64) -> f64 {
    let mut acc = [0.0; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            let v = f(*v);
            *a += v * v;
        }
    }
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|v| {
            let v = f(*v);
            v * v
        })
        .sum();
    acc.iter().sum::<f64>() + tail
}

/// `sum x_i^2` in f64 of f32 values (exact products), as [`sum_sq`] of them widened.
fn sum_sq_f32(x: &[f32]) -> f64 {
    sum_sq_of(x, f64::from)
}

/// [`orthogonality_kernel`] of `n` f32 rows of length `d`, without an f64 copy of the
/// layer: the norms come from the rows widened on the fly, and the Gram kernel scales each
/// row as it packs it.
///
/// With `f32_gram` `None`, the f64 kernel of [`default_plan`]: the normalised values and
/// hence the value have the bits [`orthogonality_kernel`] gives for the widened rows
/// (without its normalisation passes and the panels' clearing). With a plan of [`gram32`]
/// (AVX2 + FMA only: check [`gram32::available`]), the dot products are f32 over k-blocks
/// of at most [`gram32::KC`] dimensions, so the value is within [`gram32::error_bound`]
/// (3.9e-6) of the exact one in the worst case.
fn orthogonality_f32(
    rows: &[f32],
    n: usize,
    d: usize,
    f32_gram: Option<gram32::Plan>,
) -> Option<f64> {
    if n < 2 || rows.len() != n * d {
        return None;
    }
    if d == 0 {
        return Some(1.0 - n as f64 / (n * (n - 1)) as f64);
    }
    let mut scale = Vec::with_capacity(n);
    let mut diag = 0.0;
    for r in rows.chunks_exact(d) {
        // as `orthogonality_with`: one reciprocal per row, zero rows as they are
        let norm = sum_sq_f32(r).sqrt();
        let inv = if norm > 0.0 { 1.0 / norm } else { 1.0 };
        scale.push(inv);
        diag += (sum_sq_of(r, |v| f64::from(v) * inv) - 1.0).abs();
    }
    let upper = match f32_gram {
        Some(plan) => gram32::upper_abs_sum(rows, &scale, n, d, plan),
        None => gram::upper_abs_sum_scaled(rows, &scale, n, d, default_plan(n, d)),
    };
    Some(1.0 - (2.0 * upper + diag) / (n * (n - 1)) as f64)
}

mod gram32;
mod pack;

mod gram {
    //! The Gram part of [`orthogonality_kernel`]: `sum_{i<j} |u_i . u_j|` over unit rows
    //! `u`, without ever storing the Gram matrix.
    //!
    //! The rows are packed transposed into panels of `w` rows (dimension-major inside a
    //! panel, so the `w` values of one dimension are contiguous); a register-blocked
    //! micro-kernel computes an `R x w` tile of dot products with FMAs and adds `|g|` straight
    //! into `f64` lane sums. Only tiles on or above the diagonal are computed; the diagonal
    //! tile is masked to `j > i`. Rows are grouped into blocks of `bp` panels, the unit of
    //! parallel work; inside a block the columns go by chunks of `cp` panels and the
    //! dimensions by blocks of at most `kc` (partial tiles kept in a small buffer), so the
    //! data a block sweeps stays in L2 for any `d` (no separate GEMM path: this beat
    //! nalgebra's matrixmultiply-backed product for every shape measured, d = 9..4608).
    //!
    //! The result depends only on `(n, d, Plan)` — fixed blocks, partial sums added in block
    //! order — never on thread count or timing.
    //!
    //! Why hand-written `std::arch` intrinsics and not a crate: the kernel needs five
    //! operations (load, broadcast, FMA, add, abs) on two x86 register widths plus a portable
    //! fallback; `multiversion`/`pulp` would add a dependency for ~60 lines, and plain
    //! auto-vectorised code under `#[target_feature]` was measured to be fragile (an 8-row
    //! tile compiled to gathers and scatters, 20x slower).

    use rayon::prelude::*;

    /// The micro-kernel's instruction set, chosen at run time. (On the benchmark machine,
    /// an AVX-512 Zen 5 VM, zmm FMAs issued at half the ymm rate, so both x86 variants ran
    /// at the same speed there; AVX-512 is ahead where the datapath is 512 bits wide.)
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(super) enum Isa {
        /// AVX-512F + FMA: 4 x 32 tiles in 16 zmm accumulators.
        Avx512,
        /// AVX2 + FMA: 4 x 8 tiles in 8 ymm accumulators.
        Avx2,
        /// Plain Rust (SSE2 on x86-64, no FMA there): 4 x 4 tiles.
        Portable,
    }

    impl Isa {
        /// The best instruction set this CPU has.
        pub(super) fn detect() -> Isa {
            Isa::available()[0]
        }

        /// Every instruction set this CPU can run, best first.
        pub(super) fn available() -> Vec<Isa> {
            [Isa::Avx512, Isa::Avx2, Isa::Portable]
                .into_iter()
                .filter(|i| i.is_available())
                .collect()
        }

        fn is_available(self) -> bool {
            match self {
                Isa::Portable => true,
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => {
                    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma")
                }
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
                #[cfg(not(target_arch = "x86_64"))]
                _ => false,
            }
        }

        /// Rows per panel (the width of a tile).
        fn width(self) -> usize {
            match self {
                Isa::Avx512 => 32,
                Isa::Avx2 => 8,
                Isa::Portable => 4,
            }
        }
    }

    /// How [`upper_abs_sum`] blocks its work. The value depends on it (summation order), so
    /// [`Plan::new`] is a pure function of the shape and the instruction set.
    #[derive(Clone, Copy, Debug)]
    pub(super) struct Plan {
        pub(super) isa: Isa,
        /// Panels of rows per parallel work item.
        pub(super) bp: usize,
        /// Panels of columns per cache chunk.
        pub(super) cp: usize,
        /// Most dimensions per k-block.
        pub(super) kc: usize,
        /// Run the work items on rayon's pool (same result as sequentially).
        pub(super) parallel: bool,
    }

    /// Bytes of column panels (one k-block) a chunk aims to keep in L2.
    const CHUNK_BYTES: usize = 256 * 1024;
    /// Most dimensions per k-block.
    const KC: usize = 256;

    impl Plan {
        pub(super) fn new(isa: Isa, n: usize, d: usize) -> Plan {
            let w = isa.width();
            let np = n.div_ceil(w);
            Plan {
                isa,
                // >= 16 work items when possible (the triangle makes early ones heavier), at
                // most 256 rows each.
                bp: (np / 16).clamp(1, (256 / w).max(1)),
                cp: (CHUNK_BYTES / (d.clamp(1, KC) * w * 8)).max(1),
                kc: KC,
                // below ~4M multiply-adds (~0.2 ms) threads cost more than they bring
                parallel: n.saturating_mul(n).saturating_mul(d) >= 1 << 22,
            }
        }
    }

    /// `sum_{i<j} |rows_i . rows_j|` for `n` row-major rows of length `d >= 1`.
    pub(super) fn upper_abs_sum(rows: &[f64], n: usize, d: usize, plan: Plan) -> f64 {
        assert_eq!(rows.len(), n * d);
        upper_abs_sum_with(n, d, plan, |p, w| pack(p, rows, n, d, w, |v, _| v))
    }

    /// [`upper_abs_sum`] of the rows `f64(rows_l) * scale[l]`, packed straight from the f32
    /// rows (no f64 copy of the layer): the same panels, so the same bits, as
    /// [`upper_abs_sum`] of those products computed beforehand.
    pub(super) fn upper_abs_sum_scaled(
        rows: &[f32],
        scale: &[f64],
        n: usize,
        d: usize,
        plan: Plan,
    ) -> f64 {
        assert_eq!(scale.len(), n);
        assert_eq!(rows.len(), n * d);
        upper_abs_sum_with(n, d, plan, |p, w| {
            super::pack::scaled(p, rows, scale, n, d, w)
        })
    }

    /// The sum over the `n` rows of length `d` that `pack_into(panels, w)` packs.
    fn upper_abs_sum_with(
        n: usize,
        d: usize,
        plan: Plan,
        pack_into: impl FnOnce(&mut [f64], usize),
    ) -> f64 {
        assert!(plan.isa.is_available(), "{:?} is not available", plan.isa);
        assert!(d > 0 && plan.bp > 0 && plan.cp > 0 && plan.kc > 0);
        let w = plan.isa.width();
        let np = n.div_ceil(w);
        let pw = d * w;
        // The panels live in a buffer the thread keeps (a fresh one per layer cost a page
        // fault per 4 KiB); `pack` writes every value, so it is not cleared first.
        PANELS.with_borrow_mut(|p| {
            super::ensure_len(p, np * pw);
            pack_into(&mut p[..np * pw], w);
            let sum = upper_abs_sum_packed(&p[..np * pw], np, d, plan);
            super::release_large(p);
            sum
        })
    }

    thread_local! {
        /// Per-thread scratch for the packed panels of `upper_abs_sum`.
        static PANELS: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// Panel `q` of `p` gets rows `q*w..`: dimension `k` of its row `l` at `k*w + l` (as
    /// `value(rows[l * d + k], l)`), rows past `n` as zeros. Copied in 32-dimension strips
    /// so the strided writes stay in L1. f32 rows take [`super::pack`]'s transposes
    /// instead (same values); this one is their reference and packs f64 rows.
    pub(super) fn pack<S: Copy, D: Copy + Default>(
        p: &mut [D],
        rows: &[S],
        n: usize,
        d: usize,
        w: usize,
        value: impl Fn(S, usize) -> D,
    ) {
        let pw = d * w;
        for (q, dst) in p.chunks_exact_mut(pw).enumerate() {
            let live = n.saturating_sub(q * w).min(w);
            let src = &rows[q * w * d..(q * w + live) * d];
            for k0 in (0..d).step_by(32) {
                let k1 = (k0 + 32).min(d);
                for (l, r) in src.chunks_exact(d).enumerate() {
                    for (k, v) in (k0..k1).zip(&r[k0..k1]) {
                        dst[k * w + l] = value(*v, q * w + l);
                    }
                }
                for k in k0..k1 {
                    dst[k * w + live..(k + 1) * w].fill(D::default());
                }
            }
        }
    }

    /// The sum over the packed panels `p`.
    fn upper_abs_sum_packed(p: &[f64], np: usize, d: usize, plan: Plan) -> f64 {
        let job = Job {
            p,
            np,
            d,
            bp: plan.bp,
            cp: plan.cp,
            kc: plan.kc,
        };
        let f: BlockFn = match plan.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => block_avx512,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => block_avx2,
            _ => block_portable,
        };
        // SAFETY: `plan.isa` is available on this CPU (asserted above).
        let run = |b: usize| unsafe { f(&job, b) };
        sum_blocks(np.div_ceil(plan.bp), plan.parallel, run)
    }

    /// `sum_b run(b)` over the `nb` work items, on rayon's pool when `parallel`; the
    /// partial sums are added in item order either way, so the bits do not depend on it.
    pub(super) fn sum_blocks(
        nb: usize,
        parallel: bool,
        run: impl Fn(usize) -> f64 + Sync + Send,
    ) -> f64 {
        let parts: Vec<f64> = if parallel {
            (0..nb).into_par_iter().with_max_len(1).map(run).collect()
        } else {
            (0..nb).map(run).collect()
        };
        parts.iter().sum()
    }

    /// The packed panels and the blocking, shared by the work items.
    struct Job<'a> {
        p: &'a [f64],
        np: usize,
        d: usize,
        bp: usize,
        cp: usize,
        kc: usize,
    }

    /// One work item: the sum for row block `b`. Unsafe: the CPU must have the features.
    type BlockFn = unsafe fn(&Job<'_>, usize) -> f64;

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn block_avx512(job: &Job<'_>, b: usize) -> f64 {
        // SAFETY: the caller checked the features; `block` checks the bounds.
        unsafe { block::<Avx512, 4, 4>(job, b) }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block_avx2(job: &Job<'_>, b: usize) -> f64 {
        // SAFETY: as above.
        unsafe { block::<Avx2, 4, 2>(job, b) }
    }

    unsafe fn block_portable(job: &Job<'_>, b: usize) -> f64 {
        // SAFETY: plain Rust.
        unsafe { block::<Portable, 4, 2>(job, b) }
    }

    /// A SIMD register of `LANES` f64 values and what the micro-kernel does with it.
    /// Unsafe: only on a CPU with the implementation's features, and with pointers valid for
    /// `LANES` values (one for `splat`).
    trait Simd {
        const LANES: usize;
        type V: Copy;
        unsafe fn zero() -> Self::V;
        unsafe fn load(p: *const f64) -> Self::V;
        unsafe fn splat(p: *const f64) -> Self::V;
        /// `a * b + c`
        unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
        unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
        unsafe fn abs(a: Self::V) -> Self::V;
        unsafe fn store(p: *mut f64, v: Self::V);
    }

    #[cfg(target_arch = "x86_64")]
    struct Avx512;

    #[cfg(target_arch = "x86_64")]
    impl Simd for Avx512 {
        const LANES: usize = 8;
        type V = std::arch::x86_64::__m512d;
        #[inline(always)]
        unsafe fn zero() -> Self::V {
            unsafe { std::arch::x86_64::_mm512_setzero_pd() }
        }
        #[inline(always)]
        unsafe fn load(p: *const f64) -> Self::V {
            unsafe { std::arch::x86_64::_mm512_loadu_pd(p) }
        }
        #[inline(always)]
        unsafe fn splat(p: *const f64) -> Self::V {
            unsafe { std::arch::x86_64::_mm512_set1_pd(*p) }
        }
        #[inline(always)]
        unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
            unsafe { std::arch::x86_64::_mm512_fmadd_pd(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
            unsafe { std::arch::x86_64::_mm512_add_pd(a, b) }
        }
        #[inline(always)]
        unsafe fn abs(a: Self::V) -> Self::V {
            unsafe { std::arch::x86_64::_mm512_abs_pd(a) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f64, v: Self::V) {
            unsafe { std::arch::x86_64::_mm512_storeu_pd(p, v) }
        }
    }

    #[cfg(target_arch = "x86_64")]
    struct Avx2;

    #[cfg(target_arch = "x86_64")]
    impl Simd for Avx2 {
        const LANES: usize = 4;
        type V = std::arch::x86_64::__m256d;
        #[inline(always)]
        unsafe fn zero() -> Self::V {
            unsafe { std::arch::x86_64::_mm256_setzero_pd() }
        }
        #[inline(always)]
        unsafe fn load(p: *const f64) -> Self::V {
            unsafe { std::arch::x86_64::_mm256_loadu_pd(p) }
        }
        #[inline(always)]
        unsafe fn splat(p: *const f64) -> Self::V {
            unsafe { std::arch::x86_64::_mm256_set1_pd(*p) }
        }
        #[inline(always)]
        unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
            unsafe { std::arch::x86_64::_mm256_fmadd_pd(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
            unsafe { std::arch::x86_64::_mm256_add_pd(a, b) }
        }
        #[inline(always)]
        unsafe fn abs(a: Self::V) -> Self::V {
            use std::arch::x86_64::{_mm256_andnot_pd, _mm256_set1_pd};
            unsafe { _mm256_andnot_pd(_mm256_set1_pd(-0.0), a) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f64, v: Self::V) {
            unsafe { std::arch::x86_64::_mm256_storeu_pd(p, v) }
        }
    }

    /// Two plain lanes; fused multiply-add only where the target has it natively (a libm
    /// `fma` call per product would be slower than none).
    struct Portable;

    impl Simd for Portable {
        const LANES: usize = 2;
        type V = [f64; 2];
        #[inline(always)]
        unsafe fn zero() -> Self::V {
            [0.0; 2]
        }
        #[inline(always)]
        unsafe fn load(p: *const f64) -> Self::V {
            unsafe { [*p, *p.add(1)] }
        }
        #[inline(always)]
        unsafe fn splat(p: *const f64) -> Self::V {
            unsafe { [*p; 2] }
        }
        #[inline(always)]
        unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
            if cfg!(any(target_arch = "aarch64", target_feature = "fma")) {
                [a[0].mul_add(b[0], c[0]), a[1].mul_add(b[1], c[1])]
            } else {
                [a[0] * b[0] + c[0], a[1] * b[1] + c[1]]
            }
        }
        #[inline(always)]
        unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
            [a[0] + b[0], a[1] + b[1]]
        }
        #[inline(always)]
        unsafe fn abs(a: Self::V) -> Self::V {
            [a[0].abs(), a[1].abs()]
        }
        #[inline(always)]
        unsafe fn store(p: *mut f64, v: Self::V) {
            unsafe { p.cast::<[f64; 2]>().write_unaligned(v) }
        }
    }

    /// The sum over row block `b` of `job`: tiles of `R` rows x `NV` registers.
    #[inline(always)]
    unsafe fn block<S: Simd, const R: usize, const NV: usize>(job: &Job<'_>, b: usize) -> f64 {
        let w = NV * S::LANES;
        let (d, np, cp) = (job.d, job.np, job.cp);
        let pw = d * w;
        // Every pointer below is inside a panel q < np, at offset k*w + l, k < d, l < w.
        assert!(job.p.len() == np * pw && w.is_multiple_of(R) && S::LANES <= 8);
        let base = job.p.as_ptr();
        let (p0, p1) = (b * job.bp, ((b + 1) * job.bp).min(np));
        let nkb = d.div_ceil(job.kc);
        let kc = d.div_ceil(nkb);
        // SAFETY (all `unsafe` below): the features are the caller's contract; bounds as above.
        // Partial tiles between k-blocks, one per (row tile, column panel) of a chunk.
        let mut part = if nkb > 1 {
            vec![[[unsafe { S::zero() }; NV]; R]; (p1 - p0) * (w / R) * cp]
        } else {
            Vec::new()
        };
        let mut sums = unsafe { S::zero() };
        let mut diag = 0.0;
        let mut buf = [0.0f64; 8];
        for jc in (p0..np).step_by(cp) {
            let jend = (jc + cp).min(np);
            for kb in 0..nkb {
                let (k0, k1) = (kb * kc, ((kb + 1) * kc).min(d));
                let init = |part: &[[[S::V; NV]; R]], slot: usize| {
                    if kb == 0 {
                        [[unsafe { S::zero() }; NV]; R]
                    } else {
                        part[slot]
                    }
                };
                let mut slot = 0;
                for ip in p0..p1 {
                    for off in (0..w).step_by(R) {
                        let a = unsafe { base.add(ip * pw + k0 * w + off) };
                        let col = |jp: usize| unsafe { base.add(jp * pw + k0 * w) };
                        let mut j0 = jc.max(ip);
                        if kb + 1 < nkb {
                            for jp in j0..jend {
                                part[slot] = unsafe {
                                    tile::<S, R, NV>(init(&part, slot), a, col(jp), k1 - k0, w)
                                };
                                slot += 1;
                            }
                            continue;
                        }
                        if j0 == ip && j0 < jend {
                            // the diagonal tile: only columns right of each row's own
                            let g = unsafe {
                                tile::<S, R, NV>(init(&part, slot), a, col(j0), k1 - k0, w)
                            };
                            for (r, gr) in g.iter().enumerate() {
                                for (v, x) in gr.iter().enumerate() {
                                    unsafe { S::store(buf.as_mut_ptr(), *x) };
                                    for (l, y) in buf[..S::LANES].iter().enumerate() {
                                        if v * S::LANES + l > off + r {
                                            diag += y.abs();
                                        }
                                    }
                                }
                            }
                            slot += 1;
                            j0 += 1;
                        }
                        for jp in j0..jend {
                            let g = unsafe {
                                tile::<S, R, NV>(init(&part, slot), a, col(jp), k1 - k0, w)
                            };
                            sums = unsafe { S::add(sums, abs_sum::<S, R, NV>(&g)) };
                            slot += 1;
                        }
                    }
                }
            }
        }
        unsafe { S::store(buf.as_mut_ptr(), sums) };
        diag + buf[..S::LANES].iter().sum::<f64>()
    }

    /// `sum |g|` over a tile in one register: down the rows, then across the registers.
    #[inline(always)]
    unsafe fn abs_sum<S: Simd, const R: usize, const NV: usize>(g: &[[S::V; NV]; R]) -> S::V {
        let col = |v: usize| {
            g[1..]
                .iter()
                .fold(unsafe { S::abs(g[0][v]) }, |u, gr| unsafe {
                    S::add(u, S::abs(gr[v]))
                })
        };
        (1..NV).fold(col(0), |t, v| unsafe { S::add(t, col(v)) })
    }

    /// `acc + A B^T` for the `R` rows at `a` and the `w` columns at `b`, `d` dimensions
    /// (both pointers advance `w` values per dimension).
    #[inline(always)]
    unsafe fn tile<S: Simd, const R: usize, const NV: usize>(
        mut acc: [[S::V; NV]; R],
        a: *const f64,
        b: *const f64,
        d: usize,
        w: usize,
    ) -> [[S::V; NV]; R] {
        for k in 0..d {
            let mut bv = [unsafe { S::zero() }; NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = unsafe { S::load(b.add(k * w + v * S::LANES)) };
            }
            for (r, ar) in acc.iter_mut().enumerate() {
                let x = unsafe { S::splat(a.add(k * w + r)) };
                for (y, bv) in ar.iter_mut().zip(&bv) {
                    *y = unsafe { S::fma(x, *bv, *y) };
                }
            }
        }
        acc
    }
}

/// The filters of one group, with their channels.
#[derive(Debug, Default)]
struct Layer<N> {
    out: Vec<i64>,
    inp: Vec<i64>,
    w: Vec<N>,
}

impl<N> Layer<N> {
    fn bytes(&self) -> usize {
        (self.out.capacity() + self.inp.capacity()) * size_of::<i64>()
            + self.w.capacity() * size_of::<N>()
    }
}

/// Makes a scratch buffer whose values are all written before they are read at least
/// `len` long: one too short is replaced by a fresh zeroed one, not grown. Growing would
/// copy the old, dead contents into fresh pages, then write zeros past them; a zeroed
/// allocation of fresh pages is left to the kernel, which zeroes each page as it is first
/// written (`vec![0.0; len]` allocates zeroed; `resize` writes every value).
fn ensure_len<N: Clone + Default>(v: &mut Vec<N>, len: usize) {
    if v.len() < len {
        *v = Vec::new(); // the old buffer is freed before the new one is allocated
        *v = vec![N::default(); len];
    }
}

/// Frees a per-thread scratch buffer that grew past 64 MiB (a group far larger than any
/// layer, e.g. a whole model): smaller ones stay for the next layer.
fn release_large<N>(v: &mut Vec<N>) {
    if v.capacity() * size_of::<N>() > 64 << 20 {
        *v = Vec::new();
    }
}

thread_local! {
    /// Per-thread scratch for a layer's out-channel vectors (see `eval_group`).
    static ROWS: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The same for f32 layers whose filters arrived out of order.
    static ROWS32: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Exact state of `orthogonality`: per group, every filter and its channels.
///
/// `layer_degeneration` keeps its layers in this state too (under its own name in
/// errors) and evaluates more than the orthogonality from them.
#[derive(Debug)]
pub struct OrthogonalityState<T: ExactFloat> {
    name: &'static str,
    groups: Vec<Layer<T::Native>>,
    /// Emptied buffers of emitted groups, reused by new ones (at most [`SPARE_LAYERS`]).
    spare: Vec<Layer<T::Native>>,
    /// Bytes allocated by `groups` and `spare`.
    bytes: usize,
    /// The call asked for the f32 Gram kernel (`'f32'`, see [`gram32`]).
    f32_gram: bool,
}

/// Emptied layer buffers an [`OrthogonalityState`] keeps for reuse.
const SPARE_LAYERS: usize = 2;

impl<T: ExactFloat> Default for OrthogonalityState<T> {
    fn default() -> Self {
        Self::named(NAME)
    }
}

/// The `GroupsAccumulator` of `orthogonality`.
pub type OrthogonalityGroupsAccumulator<T> = Groups<OrthogonalityState<T>>;
/// The plain `Accumulator` of `orthogonality`.
pub type OrthogonalityAccumulator<T> = Single<OrthogonalityState<T>>;

impl<T: ExactFloat> OrthogonalityState<T> {
    /// An empty state whose errors name the SQL function `name`.
    pub(crate) fn named(name: &'static str) -> Self {
        OrthogonalityState {
            name,
            groups: Vec::new(),
            spare: Vec::new(),
            bytes: 0,
            f32_gram: false,
        }
    }

    /// This state with the Gram precision a call asked for ([`gram_f32_arg`]).
    pub(crate) fn with_f32_gram(mut self, f32_gram: bool) -> Self {
        self.f32_gram = f32_gram;
        self
    }

    fn push(&mut self, g: usize, out: i64, inp: i64, w: &[T::Native]) {
        let l = &mut self.groups[g];
        let before = l.bytes();
        l.out.push(out);
        l.inp.push(inp);
        l.w.extend_from_slice(w);
        self.bytes += l.bytes() - before;
    }

    /// Append rows `rows` of a batch without NULLs to group `g` (one copy per column).
    fn push_run(
        &mut self,
        g: usize,
        rows: Range<usize>,
        out: &[i64],
        inp: &[i64],
        f: &Filters<'_>,
    ) {
        let l = &mut self.groups[g];
        let before = l.bytes();
        l.out.extend_from_slice(&out[rows.clone()]);
        l.inp.extend_from_slice(&inp[rows.clone()]);
        match f.flat() {
            Flat::F32(v) => T::extend_from_f32(&mut l.w, &v[9 * rows.start..9 * rows.end]),
            Flat::F64(v) => T::extend_from_f64(&mut l.w, &v[9 * rows.start..9 * rows.end]),
        }
        self.bytes += l.bytes() - before;
    }

    /// The weights of group `g`'s filters, 9 per filter, in the order they arrived.
    pub(crate) fn weights(&self, g: usize) -> &[T::Native] {
        &self.groups[g].w
    }

    /// The orthogonality of group `g` (`None` when it has fewer than two out channels).
    ///
    /// # Errors
    /// A duplicate or missing `(out_channel, in_channel)` pair.
    pub(crate) fn eval_group(&self, g: usize) -> Result<Option<f64>> {
        let name = self.name;
        let l = &self.groups[g];
        let k = l.out.len();
        if k == 0 {
            return Ok(None);
        }
        // Filters usually arrive in (out, in) order (the store's order): then the pairs
        // are strictly increasing and neither a sort nor a duplicate check is needed.
        let in_order = (1..k).all(|i| (l.out[i - 1], l.inp[i - 1]) < (l.out[i], l.inp[i]));
        // The filters in (out, in) order: `sorted[j]`, or `j` itself when they arrived in
        // order (no index vector then: a large layer's would be megabytes of fresh pages).
        let sorted: Option<Vec<usize>> = if in_order {
            None
        } else {
            let mut idx: Vec<usize> = (0..k).collect();
            idx.sort_unstable_by_key(|&i| (l.out[i], l.inp[i]));
            for p in idx.windows(2) {
                if (l.out[p[0]], l.inp[p[0]]) == (l.out[p[1]], l.inp[p[1]]) {
                    return exec_err!(
                        "{name}: duplicate filter (out_channel {}, in_channel {}) in one group",
                        l.out[p[0]],
                        l.inp[p[0]]
                    );
                }
            }
            Some(idx)
        };
        let at = |j: usize| sorted.as_ref().map_or(j, |idx| idx[j]);
        // The group's in channels: when the pairs arrived in order, the first out
        // channel's (every other one is checked against them below; a mismatch falls back
        // to the full list for the error message).
        let all_ins = || {
            let mut ins: Vec<i64> = l.inp.clone();
            ins.sort_unstable();
            ins.dedup();
            ins
        };
        let ins: Vec<i64> = if in_order {
            l.inp[..l.out.iter().take_while(|&&o| o == l.out[0]).count()].to_vec()
        } else {
            all_ins()
        };
        let n_in = ins.len();
        // Sorted by (out, in) with no duplicates: complete iff each out channel's run is
        // exactly `ins`.
        let mut start = 0;
        let mut runs = 0;
        while start < k {
            let o = l.out[at(start)];
            let mut end = start;
            while end < k && l.out[at(end)] == o {
                end += 1;
            }
            if end - start != n_in || (start..end).zip(&ins).any(|(j, &c)| l.inp[at(j)] != c) {
                let have: Vec<i64> = (start..end).map(|j| l.inp[at(j)]).collect();
                let missing = all_ins()
                    .into_iter()
                    .find(|c| !have.contains(c))
                    .unwrap_or(-1);
                return exec_err!(
                    "{name}: missing filter (out_channel {o}, in_channel {missing}): every out \
                     channel needs one filter per in channel of the group"
                );
            }
            runs += 1;
            start = end;
        }
        let n_out: usize = runs;
        let d = n_in * 9;
        // Layers kept in f32 are read straight from the state when the filters arrived in
        // order (else gathered in order): widened to f64 on the fly (the bits of the
        // `ROWS` path below) or, asked for ('f32') and large, through the f32 Gram kernel
        // (see `gram32` for its precision).
        if let Some(w) = T::as_f32(&l.w) {
            let f32_gram = self.f32_gram
                && n_out.saturating_mul(n_out).saturating_mul(d) >= SMALL_LAYER_WORK
                && gram32::available();
            let plan = f32_gram.then(|| gram32::Plan::new(n_out, d));
            let eval = |rows: &[f32]| orthogonality_f32(rows, n_out, d, plan);
            return Ok(match &sorted {
                None => eval(&w[..k * 9]),
                Some(idx) => ROWS32.with_borrow_mut(|rows| {
                    rows.clear();
                    for &i in idx {
                        rows.extend_from_slice(&w[i * 9..i * 9 + 9]);
                    }
                    let v = eval(rows);
                    release_large(rows);
                    v
                }),
            });
        }
        // The out-channel vectors in a scratch buffer kept by the thread, so the pages of a
        // large layer are not faulted in (and zeroed by the kernel) again for every layer.
        ROWS.with_borrow_mut(|rows| {
            rows.clear();
            rows.reserve(k * 9);
            match &sorted {
                None => rows.extend(l.w[..k * 9].iter().map(|v| T::widen(*v))),
                Some(idx) => {
                    for &i in idx {
                        rows.extend(l.w[i * 9..i * 9 + 9].iter().map(|v| T::widen(*v)));
                    }
                }
            }
            let v = orthogonality_kernel(rows, n_out, d);
            release_large(rows);
            Ok(v)
        })
    }
}

impl<T: ExactFloat> GroupAgg for OrthogonalityState<T> {
    fn fresh(&self) -> Self {
        Self::named(self.name).with_f32_gram(self.f32_gram)
    }

    fn resize(&mut self, n: usize) {
        if n > self.groups.len() {
            let spare = &mut self.spare;
            self.groups
                .resize_with(n, || spare.pop().unwrap_or_default());
        }
    }

    fn num_groups(&self) -> usize {
        self.groups.len()
    }

    fn update(
        &mut self,
        values: &[ArrayRef],
        groups: &[usize],
        filter: Option<&BooleanArray>,
    ) -> Result<()> {
        let name = self.name;
        let [w, out, inp, ..] = values else {
            return exec_err!("{name}: expected 3 arguments, got {}", values.len());
        };
        let f = Filters::try_new(name, w.as_ref())?;
        let (Some(out), Some(inp)) = (
            out.as_primitive_opt::<Int64Type>(),
            inp.as_primitive_opt::<Int64Type>(),
        ) else {
            return exec_err!("{name}: channels must be Int64");
        };
        if filter.is_none() && f.nulls().is_none() && out.nulls().is_none() && inp.nulls().is_none()
        {
            for (g, rows) in group_runs(groups) {
                self.push_run(g, rows, out.values(), inp.values(), &f);
            }
            return Ok(());
        }
        for (i, &g) in groups.iter().enumerate() {
            if f.is_null(i) || out.is_null(i) || inp.is_null(i) || !passes(filter, i) {
                continue;
            }
            let x = f.get(i);
            let n: [T::Native; 9] = std::array::from_fn(|k| T::narrow(x[k]));
            self.push(g, out.value(i), inp.value(i), &n);
        }
        Ok(())
    }

    fn merge(&mut self, states: &[ArrayRef], groups: &[usize]) -> Result<()> {
        let name = self.name;
        let [out, inp, w, ..] = states else {
            return exec_err!("{name}: malformed state");
        };
        let (Some(out), Some(inp), Some(w)) = (
            out.as_list_opt::<i32>(),
            inp.as_list_opt::<i32>(),
            w.as_list_opt::<i32>(),
        ) else {
            return exec_err!("{name}: malformed state");
        };
        let (Some(ov), Some(iv), Some(wv)) = (
            out.values().as_primitive_opt::<Int64Type>(),
            inp.values().as_primitive_opt::<Int64Type>(),
            w.values().as_primitive_opt::<T>(),
        ) else {
            return exec_err!("{name}: malformed state values");
        };
        let (ov, iv, wv) = (ov.values(), iv.values(), wv.values());
        let (oo, wo) = (out.value_offsets(), w.value_offsets());
        for (j, &g) in groups.iter().enumerate() {
            if out.is_null(j) {
                continue;
            }
            let (a, b) = (oo[j] as usize, oo[j + 1] as usize);
            let (c, d) = (wo[j] as usize, wo[j + 1] as usize);
            if d - c != 9 * (b - a) || inp.value_length(j) as usize != b - a {
                return exec_err!("{name}: malformed state (lengths)");
            }
            let io = inp.value_offsets()[j] as usize;
            for r in 0..b - a {
                self.push(g, ov[a + r], iv[io + r], &wv[c + 9 * r..c + 9 * r + 9]);
            }
        }
        Ok(())
    }

    fn evaluate(&self, range: Range<usize>) -> Result<ArrayRef> {
        let out: Vec<Option<f64>> = range.map(|g| self.eval_group(g)).collect::<Result<_>>()?;
        Ok(Arc::new(Float64Array::from(out)))
    }

    fn state(&self, range: Range<usize>) -> Result<Vec<ArrayRef>> {
        let g = &self.groups[range];
        let outs: Vec<Vec<i64>> = g.iter().map(|l| l.out.clone()).collect();
        let ins: Vec<Vec<i64>> = g.iter().map(|l| l.inp.clone()).collect();
        let ws: Vec<Vec<T::Native>> = g.iter().map(|l| l.w.clone()).collect();
        Ok(vec![
            list_of::<Int64Type>(&outs)?,
            list_of::<Int64Type>(&ins)?,
            list_of::<T>(&ws)?,
        ])
    }

    fn take(&mut self, emit: EmitTo) {
        // Keep the largest buffers of the emitted groups for the next ones: a layer's
        // buffers grow by doubling into fresh pages (page faults and zeroing) when every
        // layer starts empty.
        for mut l in emit.take_needed(&mut self.groups) {
            l.out.clear();
            l.inp.clear();
            l.w.clear();
            self.spare.push(l);
        }
        // Smallest first: `resize` pops the largest, the smallest are dropped.
        self.spare.sort_unstable_by_key(Layer::bytes);
        let extra = self.spare.len().saturating_sub(SPARE_LAYERS);
        for l in self.spare.drain(..extra) {
            self.bytes -= l.bytes();
        }
    }

    fn size(&self) -> usize {
        self.bytes
            + (self.groups.capacity() + self.spare.capacity()) * size_of::<Layer<T::Native>>()
    }
}

/// The `orthogonality` aggregate.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct OrthogonalityAgg {
    signature: Signature,
}

impl Default for OrthogonalityAgg {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

static DOC: LazyLock<Documentation> = LazyLock::new(|| {
    DocumentationBuilder::new_with_details(
        DOC_SECTION,
        "Orthogonality of one layer's out-channel vectors. Each out channel's vector is its \
         in-channel kernels concatenated in ascending in_channel order (length n_in * 9), \
         L2-normalised (zero rows left as is); with W their matrix and n the number of out \
         channels: 1 - sum |W W^T - I| / (n (n - 1)) (1 = orthonormal). Every out channel needs \
         exactly one filter per in channel of the group (a duplicate or missing (out, in) pair \
         is an error); rows with NULLs are skipped; fewer than 2 out channels give NULL. \
         The state keeps the group's filters; dot products are accumulated in float64. \
         With gram_precision 'f32', float16/float32 weights in layers with \
         n^2 * n_in * 9 >= 2^20 on AVX2 CPUs are summed in float32 over blocks of 64 \
         dimensions (exact products for float16), about twice as fast: at most 3.9e-6 from \
         the float64 value, ~1e-9 measured on trained models.",
        "orthogonality(weights, out_channel, in_channel [, gram_precision])",
    )
    .with_argument(
        "weights",
        "A filter: FixedSizeList<Float16|Float32|Float64, 9> (other lists of 9 numbers are cast to Float64).",
    )
    .with_argument("out_channel", "The filter's output channel (an integer).")
    .with_argument("in_channel", "The filter's input channel (an integer).")
    .with_argument(
        "gram_precision",
        "'f64' (default): float64 accumulation, as MISSION.md defines the analyses; 'f32': the faster float32 Gram kernel for large float16/float32 layers (error at most 3.9e-6).",
    )
    .with_sql_example(
        "SELECT model_id, layer_name, orthogonality(weights, out_channel, in_channel) \
         FROM filters GROUP BY model_id, layer_name;",
    )
    .build()
});

impl AggregateUDFImpl for OrthogonalityAgg {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let (w, o, i, p) = match arg_types {
            [w, o, i] => (w, o, i, None),
            [w, o, i, p] => (w, o, i, Some(p)),
            _ => {
                return plan_err!(
                    "{NAME} expects 3 or 4 arguments (weights, out_channel, in_channel \
                     [, gram_precision]), got {}",
                    arg_types.len()
                );
            }
        };
        let mut out = coerce_layer_args(NAME, w, o, i)?;
        if let Some(p) = p {
            out.push(coerce_precision(NAME, p)?);
        }
        Ok(out)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn accumulator(&self, acc_args: AccumulatorArgs<'_>) -> Result<Box<dyn Accumulator>> {
        let f = gram_f32_arg(NAME, &acc_args, 3)?;
        Ok(match storage(&acc_args) {
            DataType::Float32 => Box::new(Single::new(
                OrthogonalityState::<Float32Type>::default().with_f32_gram(f),
            )),
            _ => Box::new(Single::new(OrthogonalityState::<Float64Type>::default())),
        })
    }

    fn state_fields(&self, args: StateFieldsArgs<'_>) -> Result<Vec<FieldRef>> {
        Ok(layer_state_fields(&args))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs<'_>) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs<'_>,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        let f = gram_f32_arg(NAME, &args, 3)?;
        Ok(match storage(&args) {
            DataType::Float32 => Box::new(Groups(
                OrthogonalityState::<Float32Type>::default().with_f32_gram(f),
            )),
            _ => Box::new(Groups(OrthogonalityState::<Float64Type>::default())),
        })
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}

/// `coerce_types` of `(weights, out_channel, in_channel)`: the weights as
/// [`coerce_weights`] takes them, the channels as Int64.
pub(crate) fn coerce_layer_args(
    func: &str,
    w: &DataType,
    o: &DataType,
    i: &DataType,
) -> Result<Vec<DataType>> {
    for (what, t) in [("out_channel", o), ("in_channel", i)] {
        if !(t.is_integer() || t == &DataType::Null) {
            return plan_err!("{func} expects {what} as an integer, got {t}");
        }
    }
    Ok(vec![
        coerce_weights(func, w)?,
        DataType::Int64,
        DataType::Int64,
    ])
}

/// `coerce_types` of the optional `gram_precision` argument: a string.
pub(crate) fn coerce_precision(func: &str, p: &DataType) -> Result<DataType> {
    match p {
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 | DataType::Null => {
            Ok(DataType::Utf8)
        }
        _ => plan_err!("{func} expects gram_precision as a string ('f64' or 'f32'), got {p}"),
    }
}

/// Whether argument `pos` of the call (the optional `gram_precision`) asks for the f32
/// Gram kernel: absent, NULL or `'f64'` is float64 throughout; `'f32'` lets large
/// float16/float32 layers take [`gram32`]. Anything else, or a non-constant, is an error.
pub(crate) fn gram_f32_arg(func: &str, args: &AccumulatorArgs<'_>, pos: usize) -> Result<bool> {
    let Some(e) = args.exprs.get(pos) else {
        return Ok(false);
    };
    let Some(lit) = e.downcast_ref::<Literal>() else {
        return plan_err!("{func}: gram_precision must be a constant, 'f64' or 'f32'");
    };
    match lit.value() {
        ScalarValue::Utf8(None) | ScalarValue::Null => Ok(false),
        ScalarValue::Utf8(Some(v)) if v.eq_ignore_ascii_case("f64") => Ok(false),
        ScalarValue::Utf8(Some(v)) if v.eq_ignore_ascii_case("f32") => Ok(true),
        v => plan_err!("{func}: gram_precision must be 'f64' or 'f32', got {v}"),
    }
}

/// The state fields of an [`OrthogonalityState`]: each group's out and in channels and
/// weights as lists.
pub(crate) fn layer_state_fields(args: &StateFieldsArgs<'_>) -> Vec<FieldRef> {
    let t = state_storage(args);
    let f =
        |what: &str, t: DataType| Arc::new(Field::new(format_state_name(args.name, what), t, true));
    vec![
        f("out_channel", list_type(DataType::Int64)),
        f("in_channel", list_type(DataType::Int64)),
        f("weights", list_type(t)),
    ]
}

/// The singleton `orthogonality` UDAF.
pub fn orthogonality_udaf() -> Arc<AggregateUDF> {
    static UDAF: LazyLock<Arc<AggregateUDF>> =
        LazyLock::new(|| Arc::new(AggregateUDF::from(OrthogonalityAgg::default())));
    Arc::clone(&UDAF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::layer_sparsity::tests::{fsl32, fsl64};
    use crate::aggregate::testing::{Arg, Rng, assert_results_close, run_all_paths};
    use arrow::array::Int64Array;
    use proptest::prelude::*;

    fn f64_at(a: &ArrayRef, i: usize) -> Option<f64> {
        let a = a.as_primitive::<Float64Type>();
        a.is_valid(i).then(|| a.value(i))
    }

    /// A layer as (weights, out, in) columns from `rows[out][in]`, rows shuffled.
    fn layer(rows: &[Vec<[f64; 9]>], rng: &mut Rng) -> (Vec<[f64; 9]>, Vec<i64>, Vec<i64>) {
        let mut items: Vec<([f64; 9], i64, i64)> = Vec::new();
        for (o, r) in rows.iter().enumerate() {
            for (i, w) in r.iter().enumerate() {
                items.push((*w, o as i64, i as i64));
            }
        }
        for i in (1..items.len()).rev() {
            items.swap(i, rng.below(i + 1));
        }
        (
            items.iter().map(|t| t.0).collect(),
            items.iter().map(|t| t.1).collect(),
            items.iter().map(|t| t.2).collect(),
        )
    }

    fn args(w: &[[f64; 9]], o: &[i64], i: &[i64]) -> Vec<Arg> {
        vec![
            Arg::Array(fsl64(&w.iter().copied().map(Some).collect::<Vec<_>>())),
            Arg::Array(Arc::new(Int64Array::from(o.to_vec()))),
            Arg::Array(Arc::new(Int64Array::from(i.to_vec()))),
        ]
    }

    fn run1(a: &[Arg], n: usize) -> Result<Option<f64>> {
        let r = run_all_paths(&orthogonality_udaf(), a, &vec![0; n], 1, None, 9)?;
        assert_results_close(&r, 1e-9, 1e-12);
        Ok(f64_at(&r.one_pass, 0))
    }

    fn unit(k: usize) -> [f64; 9] {
        let mut e = [0.0; 9];
        e[k] = 1.0;
        e
    }

    #[test]
    fn orthonormal_set_is_one() {
        // 3 out channels x 2 in channels: out o has e_o in channel 0 and e_{o+3} * 2 in
        // channel 1 (scaled: normalisation removes it).
        let rows: Vec<Vec<[f64; 9]>> = (0..3)
            .map(|o| vec![unit(o), unit(o + 3).map(|v| 2.0 * v)])
            .collect();
        let (w, o, i) = layer(&rows, &mut Rng::new(1));
        assert_eq!(run1(&args(&w, &o, &i), 6).unwrap(), Some(1.0));
    }

    #[test]
    fn hand_cases() {
        // numpy: W = [[1,0,..],[1,1,0..]] normalised; G01 = 1/sqrt(2);
        // 1 - 2 * 0.70710678 / 2 = 0.29289321881345254.
        let mut b = unit(0);
        b[1] = 1.0;
        let (w, o, i) = layer(&[vec![unit(0)], vec![b]], &mut Rng::new(2));
        let got = run1(&args(&w, &o, &i), 2).unwrap().unwrap();
        assert!((got - 0.292_893_218_813_452_54).abs() < 1e-15, "{got}");
        // identical rows: G = all ones -> 1 - n(n-1)/(n(n-1)) = 0
        let (w, o, i) = layer(&[vec![b], vec![b], vec![b]], &mut Rng::new(3));
        assert!(run1(&args(&w, &o, &i), 3).unwrap().unwrap().abs() < 1e-15);
        // all-zero layer, 2 out channels: |0 - I| sums to 2 -> 1 - 2/2 = 0
        let (w, o, i) = layer(&[vec![[0.0; 9]], vec![[0.0; 9]]], &mut Rng::new(4));
        assert_eq!(run1(&args(&w, &o, &i), 2).unwrap(), Some(0.0));
        // one out channel / empty: NULL
        assert_eq!(run1(&args(&[b, b], &[0, 0], &[0, 1]), 2).unwrap(), None);
        assert_eq!(run1(&args(&[], &[], &[]), 0).unwrap(), None);
        // float32 input
        let a = vec![
            Arg::Array(fsl32(&[unit(0), b])),
            Arg::Array(Arc::new(Int64Array::from(vec![0, 1]))),
            Arg::Array(Arc::new(Int64Array::from(vec![0, 0]))),
        ];
        let got = run1(&a, 2).unwrap().unwrap();
        assert!((got - 0.292_893_218_813_452_54).abs() < 1e-7, "{got}");
    }

    #[test]
    fn missing_and_duplicate_pairs_are_errors() {
        let e = run1(&args(&[unit(0); 3], &[0, 0, 1], &[0, 1, 0]), 3).unwrap_err();
        assert!(
            e.to_string()
                .contains("missing filter (out_channel 1, in_channel 1)"),
            "{e}"
        );
        let e = run1(&args(&[unit(0); 3], &[0, 1, 1], &[0, 0, 0]), 3).unwrap_err();
        assert!(
            e.to_string()
                .contains("duplicate filter (out_channel 1, in_channel 0)"),
            "{e}"
        );
    }

    /// Shapes around the default plan's boundaries: several row blocks, a partial last
    /// panel, more than one k-block (d > 256), d = 0, and the parallel path.
    #[test]
    fn kernel_matches_reference_on_block_boundaries() {
        let mut rng = Rng::new(7);
        for (n, d) in [
            (2, 1),
            (3, 0),
            (33, 9),
            (65, 27),
            (513, 9),
            (600, 18),
            (97, 300),
            (40, 600),
        ] {
            let mut rows: Vec<Vec<f64>> = (0..n)
                .map(|_| (0..d).map(|_| rng.uniform(-1.0, 1.0)).collect())
                .collect();
            if n > 40 {
                rows[n / 2] = vec![0.0; d];
            }
            let want = orthogonality_ref(&rows).unwrap();
            let flat: Vec<f64> = rows.iter().flatten().copied().collect();
            for isa in gram::Isa::available() {
                let plan = gram::Plan::new(isa, n, d);
                let got = orthogonality_with(&mut flat.clone(), n, d, |_, _| plan).unwrap();
                assert!(
                    (got - want).abs() <= 1e-12 * want.abs().max(1.0),
                    "n {n} d {d} {plan:?}: {got} vs {want}"
                );
            }
        }
        // orthonormal rows padded with zero columns: exactly representable Gram entries
        let n = 40;
        let mut flat = vec![0.0; n * 64];
        for i in 0..n {
            flat[i * 64 + i] = if i % 2 == 0 { 3.0 } else { -0.5 };
        }
        assert_eq!(orthogonality_kernel(&mut flat, n, 64), Some(1.0));
    }

    /// `n` rows of `d` small integers in -4..=4, row `i` scaled by `2^(i % 5 - 2)`: every
    /// f32 dot product is exact, so the f32 kernel must give the f64 kernel's value (up to
    /// the order of the final f64 operations). Every 7th row is zero.
    fn exact_in_f32(n: usize, d: usize, rng: &mut Rng) -> Vec<f32> {
        let mut rows = Vec::with_capacity(n * d);
        for i in 0..n {
            let scale = 2f32.powi(i as i32 % 5 - 2);
            for _ in 0..d {
                let v = if i % 7 == 3 {
                    0.0
                } else {
                    rng.below(9) as f32 - 4.0
                };
                rows.push(v * scale);
            }
        }
        rows
    }

    /// The f64 value of the same rows through the portable f64 kernel.
    fn f64_kernel(rows: &[f32], n: usize, d: usize) -> Option<f64> {
        let mut flat: Vec<f64> = rows.iter().map(|&v| f64::from(v)).collect();
        orthogonality_with(&mut flat, n, d, |n, d| {
            gram::Plan::new(gram::Isa::Portable, n, d)
        })
    }

    #[test]
    fn f32_kernel_is_exact_when_the_sums_are() {
        if !gram32::available() {
            eprintln!("skipped: no AVX2 + FMA");
            return;
        }
        let mut rng = Rng::new(11);
        // partial panels (n % 16), one or several row blocks and k-blocks (d > 64)
        for (n, d) in [
            (2, 1),
            (17, 9),
            (33, 64),
            (65, 65),
            (100, 27),
            (40, 300),
            (300, 18),
        ] {
            let rows = exact_in_f32(n, d, &mut rng);
            let want = f64_kernel(&rows, n, d).unwrap();
            let got = orthogonality_f32(&rows, n, d, Some(gram32::Plan::new(n, d))).unwrap();
            assert!((got - want).abs() <= 1e-13, "n {n} d {d}: {got} vs {want}");
        }
    }

    /// f32 rows widened on the fly give the bits of the f64 path over the widened copy, on
    /// shapes for the portable kernel and for the SIMD one (partial panels, several row
    /// blocks and k-blocks), with zero rows.
    #[test]
    fn widened_f32_rows_give_the_f64_paths_bits() {
        let mut rng = Rng::new(14);
        for (n, d) in [
            (2, 1),
            (3, 0),
            (33, 9),
            (65, 27),
            (40, 600),
            (130, 576),
            (513, 18),
        ] {
            let mut rows: Vec<f32> = (0..n * d).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
            if n > 30 {
                rows[7 * d..8 * d].fill(0.0);
            }
            let mut wide: Vec<f64> = rows.iter().map(|&v| f64::from(v)).collect();
            let want = orthogonality_kernel(&mut wide, n, d);
            let got = orthogonality_f32(&rows, n, d, None);
            assert_eq!(got.map(f64::to_bits), want.map(f64::to_bits), "n {n} d {d}");
        }
    }

    #[test]
    fn f32_kernel_is_within_its_bound_on_float16_values() {
        if !gram32::available() {
            return;
        }
        let mut rng = Rng::new(12);
        let (n, d) = (200, 576);
        let rows: Vec<f32> = (0..n * d)
            .map(|_| half::f16::from_f64(rng.uniform(-0.3, 0.3)).to_f32())
            .collect();
        let want = f64_kernel(&rows, n, d).unwrap();
        let got = orthogonality_f32(&rows, n, d, Some(gram32::Plan::new(n, d))).unwrap();
        let err = (got - want).abs();
        // the bound the docs, check.py and the kernels bench quote
        assert!((gram32::error_bound() - 3.9e-6).abs() < 5e-8);
        assert!(err <= gram32::error_bound(), "{got} vs {want}: {err:e}");
        // and far inside it here: random rounding errors cancel
        assert!(err <= 1e-8, "{got} vs {want}: {err:e}");
    }

    /// A float32 layer large enough for the f32 kernel, through every accumulator path,
    /// in the store's order and shuffled (the gather path): with `'f32'` the same value,
    /// within the kernel's bound of the f64 reference; by default (and with `'f64'`) the
    /// f64 kernel's 1e-12; another precision is an error.
    #[test]
    fn large_float32_layer_takes_the_f32_kernel_when_asked() {
        let mut rng = Rng::new(13);
        let (n_out, n_in) = (64, 64);
        let rows: Vec<Vec<[f64; 9]>> = (0..n_out)
            .map(|_| {
                (0..n_in)
                    .map(|_| std::array::from_fn(|_| f64::from(rng.uniform(-1.0, 1.0) as f32)))
                    .collect()
            })
            .collect();
        let flat: Vec<Vec<f64>> = rows
            .iter()
            .map(|r| r.iter().flatten().copied().collect())
            .collect();
        let want = orthogonality_ref(&flat).unwrap();
        let with = |w: &[[f64; 9]], o: &[i64], i: &[i64], p: Option<&str>| {
            let mut a = vec![
                Arg::Array(fsl32(w)),
                Arg::Array(Arc::new(Int64Array::from(o.to_vec()))),
                Arg::Array(Arc::new(Int64Array::from(i.to_vec()))),
            ];
            a.extend(p.map(|p| Arg::Literal(ScalarValue::Utf8(Some(p.into())))));
            a
        };
        let f32_args = |w: &[[f64; 9]], o: &[i64], i: &[i64]| with(w, o, i, Some("f32"));
        let in_order: Vec<([f64; 9], i64, i64)> = rows
            .iter()
            .enumerate()
            .flat_map(|(o, r)| {
                r.iter()
                    .enumerate()
                    .map(move |(i, w)| (*w, o as i64, i as i64))
            })
            .collect();
        let (w, o, i) = layer(&rows, &mut rng);
        let mut got = Vec::new();
        for (w, o, i) in [
            (
                in_order.iter().map(|t| t.0).collect::<Vec<_>>(),
                in_order.iter().map(|t| t.1).collect::<Vec<_>>(),
                in_order.iter().map(|t| t.2).collect::<Vec<_>>(),
            ),
            (w, o, i),
        ] {
            let r = run_all_paths(
                &orthogonality_udaf(),
                &f32_args(&w, &o, &i),
                &vec![0; w.len()],
                1,
                None,
                5,
            )
            .unwrap();
            assert_results_close(&r, 0.0, 0.0);
            got.push(f64_at(&r.one_pass, 0).unwrap());
        }
        assert_eq!(got[0].to_bits(), got[1].to_bits());
        let bound = if gram32::available() {
            gram32::error_bound()
        } else {
            1e-12
        };
        assert!((got[0] - want).abs() <= bound, "{} vs {want}", got[0]);
        let (w, o, i) = layer(&rows, &mut rng);
        let groups = vec![0; w.len()];
        for p in [None, Some("f64"), Some("F64")] {
            let r = run_all_paths(
                &orthogonality_udaf(),
                &with(&w, &o, &i, p),
                &groups,
                1,
                None,
                6,
            )
            .unwrap();
            let v = f64_at(&r.one_pass, 0).unwrap();
            assert!((v - want).abs() <= 1e-12, "{p:?}: {v} vs {want}");
        }
        let e = run_all_paths(
            &orthogonality_udaf(),
            &with(&w, &o, &i, Some("f16")),
            &groups,
            1,
            None,
            6,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("gram_precision must be 'f64' or 'f32'"),
            "{e}"
        );
    }

    proptest! {
        /// The kernel equals the pairwise reference for every instruction set this CPU has,
        /// with its own plan and with tiny random blocking (many row blocks, column chunks
        /// and k-blocks, so every boundary is crossed), sequential or parallel.
        #[test]
        fn kernel_matches_reference(
            seed in 0u64..1000,
            n in 0usize..80,
            d in prop_oneof![Just(1usize), Just(9), Just(18), Just(27), 1usize..40],
            zero_rows in proptest::collection::vec(0usize..80, 0..3),
            bp in 1usize..4,
            cp in 1usize..4,
            kc in 1usize..12,
        ) {
            let mut rng = Rng::new(seed);
            let mut rows: Vec<Vec<f64>> = (0..n).map(|_| (0..d).map(|_| rng.uniform(-1.0, 1.0)).collect()).collect();
            for z in zero_rows.into_iter().filter(|&z| z < n) {
                rows[z] = vec![0.0; d];
            }
            let want = orthogonality_ref(&rows);
            let flat: Vec<f64> = rows.iter().flatten().copied().collect();
            let mut got = vec![orthogonality_kernel(&mut flat.clone(), n, d)];
            for isa in gram::Isa::available() {
                got.push(orthogonality_with(&mut flat.clone(), n, d, |n, d| gram::Plan::new(isa, n, d)));
                let mut tiny = gram::Plan::new(isa, n, d);
                (tiny.bp, tiny.cp, tiny.kc) = (bp, cp, kc);
                let seq = orthogonality_with(&mut flat.clone(), n, d, |_, _| gram::Plan { parallel: false, ..tiny });
                let par = orthogonality_with(&mut flat.clone(), n, d, |_, _| gram::Plan { parallel: true, ..tiny });
                // a fixed plan gives the same bits whatever the threads do
                prop_assert_eq!(seq.map(f64::to_bits), par.map(f64::to_bits));
                got.push(seq);
            }
            for got in got {
                match (got, want) {
                    (Some(g), Some(w)) => prop_assert!((g - w).abs() <= 1e-12 * w.abs().max(1.0), "{g} vs {w}"),
                    (g, w) => prop_assert_eq!(g, w),
                }
            }
        }

        /// The f32 kernel with tiny random blocking (every boundary crossed), sequential
        /// and parallel, on rows whose sums are exact in f32: the f64 kernel's value, and
        /// the same bits for a fixed plan whatever the threads do.
        #[test]
        fn f32_kernel_matches_f64_kernel(
            seed in 0u64..1000,
            n in 2usize..70,
            d in prop_oneof![Just(1usize), Just(9), Just(18), 1usize..150],
            bp in 1usize..4,
            cp in 1usize..4,
            kc in 1usize..=gram32::KC,
        ) {
            if gram32::available() {
                let rows = exact_in_f32(n, d, &mut Rng::new(seed));
                let want = f64_kernel(&rows, n, d).unwrap();
                let tiny = gram32::Plan { bp, cp, kc, parallel: false };
                let seq = orthogonality_f32(&rows, n, d, Some(tiny)).unwrap();
                let par = orthogonality_f32(&rows, n, d, Some(gram32::Plan { parallel: true, ..tiny })).unwrap();
                prop_assert_eq!(seq.to_bits(), par.to_bits());
                prop_assert!((seq - want).abs() <= 1e-13, "{} vs {}", seq, want);
            }
        }

        #[test]
        fn every_path_matches_reference(seed in 0u64..500, n_out in 1usize..6, n_in in 1usize..4, groups in 1usize..3) {
            let mut rng = Rng::new(seed);
            let mut w = Vec::new();
            let mut o = Vec::new();
            let mut i = Vec::new();
            let mut gi = Vec::new();
            let mut want = Vec::new();
            for g in 0..groups {
                let rows: Vec<Vec<[f64; 9]>> = (0..n_out)
                    .map(|_| (0..n_in).map(|_| std::array::from_fn(|_| rng.uniform(-1.0, 1.0))).collect())
                    .collect();
                let flat: Vec<Vec<f64>> = rows.iter().map(|r| r.iter().flatten().copied().collect()).collect();
                want.push(orthogonality_ref(&flat));
                let (ww, oo, ii) = layer(&rows, &mut rng);
                gi.extend(std::iter::repeat_n(g, ww.len()));
                w.extend(ww);
                // channels need not start at 0
                o.extend(oo.iter().map(|v| v * 3 + 5));
                i.extend(ii.iter().map(|v| v * 2 - 1));
            }
            let r = run_all_paths(&orthogonality_udaf(), &args(&w, &o, &i), &gi, groups, None, seed).unwrap();
            assert_results_close(&r, 1e-9, 1e-12);
            for (g, want) in want.iter().enumerate() {
                match (f64_at(&r.one_pass, g), *want) {
                    (Some(a), Some(b)) => prop_assert!((a - b).abs() < 1e-12, "{} vs {}", a, b),
                    (a, b) => prop_assert_eq!(a, b),
                }
            }
        }
    }
}
