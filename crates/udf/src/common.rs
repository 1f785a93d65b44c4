//! Shared pieces of the filter functions: reading a `weights` column of any float type,
//! the streaming moments behind PCA and variance entropy, the 9x9 eigen-decomposition
//! with the paper's sign convention, and the Arrow shapes of the `pca_fit` basis and of
//! `coef_histogram` values.

use std::borrow::Cow;
use std::mem::MaybeUninit;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float64Array, Int64Array, ListArray, StructArray,
};
use arrow::buffer::{NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, Fields, Float16Type, Float32Type, Float64Type};
use datafusion::common::{Result, exec_err, plan_err};

/// float32 machine epsilon: the density the paper's rule gives empty histogram bins.
pub const EPS32: f64 = f32::EPSILON as f64;

/// `FixedSizeList<Float64, n>`.
pub fn fsl_f64_type(n: i32) -> DataType {
    DataType::FixedSizeList(Arc::new(Field::new_list_field(DataType::Float64, true)), n)
}

/// Check a `weights` argument type for `coerce_types`: a FixedSizeList of 9 Float16,
/// Float32 or Float64 is kept (no cast); any other list of numbers is coerced to
/// `FixedSizeList<Float64, 9>` (a wrong length then fails at run time).
///
/// # Errors
/// A plan error naming the function and the type found.
pub fn coerce_weights(func: &str, t: &DataType) -> Result<DataType> {
    match t {
        DataType::FixedSizeList(f, 9)
            if matches!(
                f.data_type(),
                DataType::Float16 | DataType::Float32 | DataType::Float64
            ) =>
        {
            Ok(t.clone())
        }
        DataType::FixedSizeList(f, _) | DataType::List(f) | DataType::LargeList(f)
            if f.data_type().is_numeric() =>
        {
            Ok(fsl_f64_type(9))
        }
        DataType::Null => Ok(fsl_f64_type(9)),
        other => plan_err!(
            "{func} expects weights as a list of 9 numbers (FixedSizeList<Float16|Float32|Float64, 9>), got {other}"
        ),
    }
}

/// The float values of a weights column: float16 is widened to float32 once per batch
/// (F16C, 8 values per instruction, through `half`'s slice conversion) so that the row
/// loops of every kernel read f32 or f64 only.
#[derive(Debug, Clone)]
enum Values<'a> {
    F32(Cow<'a, [f32]>),
    F64(&'a [f64]),
}

/// Read access to a `FixedSizeList<Float16|Float32|Float64, 9>` array, row by row as `[f64; 9]`.
#[derive(Debug, Clone)]
pub struct Filters<'a> {
    values: Values<'a>,
    list: &'a FixedSizeListArray,
}

impl<'a> Filters<'a> {
    /// Wrap an array.
    ///
    /// # Errors
    /// An execution error if the array is not a list of 9 floats.
    pub fn try_new(func: &str, array: &'a dyn Array) -> Result<Filters<'a>> {
        let Some(list) = array.as_fixed_size_list_opt() else {
            return exec_err!(
                "{func}: expected FixedSizeList weights, got {}",
                array.data_type()
            );
        };
        if list.value_length() != 9 {
            return exec_err!(
                "{func}: expected 9 weights per filter, got {}",
                list.value_length()
            );
        }
        let v = list.values();
        let values = match v.data_type() {
            DataType::Float16 => {
                let src = v.as_primitive::<Float16Type>().values();
                let mut wide = vec![0f32; src.len()];
                crate::simd::widen_f16(src, &mut wide);
                Values::F32(Cow::Owned(wide))
            }
            DataType::Float32 => {
                Values::F32(Cow::Borrowed(v.as_primitive::<Float32Type>().values()))
            }
            DataType::Float64 => Values::F64(v.as_primitive::<Float64Type>().values()),
            other => return exec_err!("{func}: expected float weights, got {other}"),
        };
        Ok(Filters { values, list })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether row `i` is NULL (a NULL filter; NULL elements inside a filter are not
    /// supported and read as their underlying value).
    #[inline]
    pub fn is_null(&self, i: usize) -> bool {
        self.list.is_null(i)
    }

    /// The validity of the rows.
    pub fn nulls(&self) -> Option<&NullBuffer> {
        self.list.nulls()
    }

    /// Row `i` as nine f64 (exact for every input type).
    #[inline]
    pub fn get(&self, i: usize) -> [f64; 9] {
        let o = self.list.value_offset(i) as usize;
        let mut out = [0f64; 9];
        match &self.values {
            Values::F32(v) => {
                for (d, s) in out.iter_mut().zip(&v[o..o + 9]) {
                    *d = f64::from(*s);
                }
            }
            Values::F64(v) => out.copy_from_slice(&v[o..o + 9]),
        }
        out
    }

    /// The rows as one flat slice, `9 * len()` values (row `i` at `9 i`; NULL rows hold
    /// whatever their slots hold), in the type the values are held in: f32 for float16
    /// (widened once) and float32 input, f64 for float64 input. Never copies.
    pub fn flat(&self) -> Flat<'_> {
        let start = if self.is_empty() {
            0
        } else {
            self.list.value_offset(0) as usize
        };
        let end = start + 9 * self.len();
        match &self.values {
            Values::F32(v) => Flat::F32(&v[start..end]),
            Values::F64(v) => Flat::F64(&v[start..end]),
        }
    }

    /// The rows as one flat f32 slice when the input is float16 (widened once) or
    /// float32; `None` for float64 input.
    pub fn flat_f32(&self) -> Option<&[f32]> {
        match self.flat() {
            Flat::F32(v) => Some(v),
            Flat::F64(_) => None,
        }
    }

    /// The rows as one flat f64 slice: borrowed for float64 input, widened otherwise.
    pub fn flat_f64(&self) -> Cow<'_, [f64]> {
        match self.flat() {
            Flat::F64(v) => Cow::Borrowed(v),
            Flat::F32(v) => Cow::Owned(v.iter().map(|&x| f64::from(x)).collect()),
        }
    }
}

/// The values of a [`Filters`] as one flat slice, see [`Filters::flat`].
#[derive(Debug, Clone, Copy)]
pub enum Flat<'a> {
    /// float16 (widened) or float32 input.
    F32(&'a [f32]),
    /// float64 input.
    F64(&'a [f64]),
}

/// Build a `FixedSizeList<Float64, n>` from `rows * n` flat values.
pub fn fsl_f64(n: i32, values: Vec<f64>, nulls: Option<NullBuffer>) -> Result<FixedSizeListArray> {
    Ok(FixedSizeListArray::try_new(
        Arc::new(Field::new_list_field(DataType::Float64, true)),
        n,
        Arc::new(Float64Array::new(ScalarBuffer::from(values), None)),
        nulls,
    )?)
}

/// Rows per chunk of [`for_each_widened`]: 256 filters, 9 KiB of f32, stay in L1.
pub const WIDEN_CHUNK: usize = 256;

/// The flat float16 values of the rows of a `FixedSizeList<Float16, 9>` array (`None`
/// for any other array), for kernels that widen them a chunk at a time.
pub fn f16_rows(array: &dyn Array) -> Option<&[half::f16]> {
    let list = array.as_fixed_size_list_opt()?;
    if list.value_length() != 9 || list.values().data_type() != &DataType::Float16 {
        return None;
    }
    let values = list.values().as_primitive::<Float16Type>().values();
    let start = if list.is_empty() {
        0
    } else {
        list.value_offset(0) as usize
    };
    values.get(start..start + 9 * list.len())
}

/// Calls `f(first_row, rows)` on consecutive chunks of [`WIDEN_CHUNK`] rows of `src`
/// (flat, 9 values per row) widened to f32 in a small buffer: the widening and whatever
/// `f` does next happen while the chunk is in L1, instead of a batch-sized f32 copy
/// being allocated, written and read back.
pub fn for_each_widened(src: &[half::f16], mut f: impl FnMut(usize, &[f32])) {
    let mut buf = [0f32; WIDEN_CHUNK * 9];
    for (k, c) in src.chunks(WIDEN_CHUNK * 9).enumerate() {
        let b = &mut buf[..c.len()];
        crate::simd::widen_f16(c, b);
        f(k * WIDEN_CHUNK, b);
    }
}

/// Filter rows, flat (9 values per filter), for [`Basis::project_into`].
#[derive(Debug, Clone, Copy)]
pub enum Src<'a> {
    F16(&'a [half::f16]),
    F32(&'a [f32]),
    F64(&'a [f64]),
}

impl<'a> Src<'a> {
    /// The rows of `filters` (float16 input has been widened to f32 by [`Filters`]; use
    /// [`f16_rows`] to avoid that).
    pub fn of(filters: &'a Filters<'a>) -> Src<'a> {
        match filters.flat() {
            Flat::F32(r) => Src::F32(r),
            Flat::F64(r) => Src::F64(r),
        }
    }

    /// Number of values (9 per filter).
    pub fn values(&self) -> usize {
        match self {
            Src::F16(r) => r.len(),
            Src::F32(r) => r.len(),
            Src::F64(r) => r.len(),
        }
    }

    /// Filters `rows`.
    pub fn rows(&self, rows: std::ops::Range<usize>) -> Src<'a> {
        let r = 9 * rows.start..9 * rows.end;
        match self {
            Src::F16(x) => Src::F16(&x[r]),
            Src::F32(x) => Src::F32(&x[r]),
            Src::F64(x) => Src::F64(&x[r]),
        }
    }
}

/// Set the 9 values of every row that `nulls` marks NULL to zero (flat rows, 9 per
/// filter), so the values under a NULL filter are defined.
pub fn zero_null_rows<T: Copy + Default>(values: &mut [T], nulls: Option<&NullBuffer>) {
    let Some(nulls) = nulls else {
        return;
    };
    for i in (0..values.len() / 9).filter(|&i| nulls.is_null(i)) {
        values[9 * i..9 * i + 9].fill(T::default());
    }
}

/// An initialised slice as a slice of `MaybeUninit`, for a kernel that overwrites it.
fn as_uninit(s: &mut [f32]) -> &mut [std::mem::MaybeUninit<f32>] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and the kernels only write
    // initialised values into it.
    unsafe { &mut *(s as *mut [f32] as *mut [std::mem::MaybeUninit<f32>]) }
}

/// The value a parameter column holds in every row of `rows`, when none of them is
/// NULL and each is `same` as the first: one check per run of a group instead of one
/// per row. `None` otherwise (and for an empty run); the caller then checks row by row,
/// which also finds the row to name in the error.
pub fn uniform_value<T: arrow::datatypes::ArrowPrimitiveType>(
    a: &arrow::array::PrimitiveArray<T>,
    rows: std::ops::Range<usize>,
    same: impl Fn(T::Native, T::Native) -> bool,
) -> Option<T::Native> {
    if a.null_count() > 0 && rows.clone().any(|i| a.is_null(i)) {
        return None;
    }
    let vals = &a.values()[rows];
    let first = *vals.first()?;
    vals.iter().all(|&v| same(first, v)).then_some(first)
}

/// The maximal runs of equal group indices, in order: `(group, rows)`. A batch without
/// GROUP BY is one run; the aggregates process a run with one product or lookup.
pub fn group_runs(groups: &[usize]) -> impl Iterator<Item = (usize, std::ops::Range<usize>)> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        let g = *groups.get(start)?;
        let end = groups[start..]
            .iter()
            .position(|&x| x != g)
            .map_or(groups.len(), |p| start + p);
        let rows = start..end;
        start = end;
        Some((g, rows))
    })
}

/// Index of `(i, j)`, `i <= j`, in the packed upper triangle of a 9x9 matrix.
#[inline]
pub const fn tri(i: usize, j: usize) -> usize {
    i * 9 - i * (i + 1) / 2 + j
}

/// Count, sums and sums of products of 9-vectors (f64): enough for a mean and covariance.
///
/// `s2` holds the 45 entries of the upper triangle of `sum x x^T`. Merging adds the
/// three parts, so partial results combine exactly (up to f64 rounding) in any order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments {
    /// Number of vectors.
    pub n: u64,
    /// Sum of the vectors.
    pub s1: [f64; 9],
    /// Upper triangle of the sum of outer products.
    pub s2: [f64; 45],
}

impl Default for Moments {
    fn default() -> Self {
        Moments {
            n: 0,
            s1: [0.0; 9],
            s2: [0.0; 45],
        }
    }
}

impl Moments {
    /// Add one vector.
    #[inline]
    pub fn add(&mut self, x: &[f64; 9]) {
        self.n += 1;
        let mut k = 0;
        for i in 0..9 {
            self.s1[i] += x[i];
            for j in i..9 {
                self.s2[k] += x[i] * x[j];
                k += 1;
            }
        }
    }

    /// Runs `f` on the sums with `s2` unpacked to a full 9x9 matrix (upper triangle
    /// meaningful), then packs it back.
    #[expect(
        clippy::needless_range_loop,
        reason = "index form mirrors the packed-triangle formula"
    )]
    fn with_full(&mut self, f: impl FnOnce(&mut [f64; 9], &mut [[f64; 9]; 9])) {
        let mut full = [[0.0; 9]; 9];
        for i in 0..9 {
            for j in i..9 {
                full[i][j] = self.s2[tri(i, j)];
            }
        }
        f(&mut self.s1, &mut full);
        for i in 0..9 {
            for j in i..9 {
                self.s2[tri(i, j)] = full[i][j];
            }
        }
    }

    /// Add `rows.len() / 9` vectors stored row after row; the bits of [`Moments::add`]
    /// called row by row.
    pub fn add_rows(&mut self, rows: &[f64]) {
        self.add_rows_shifted(rows, &[0.0; 9]);
    }

    /// Add `rows.len() / 9` f64 vectors minus `shift`; the bits of [`Moments::add`]
    /// called row by row on the shifted vectors.
    pub fn add_rows_shifted(&mut self, rows: &[f64], shift: &[f64; 9]) {
        self.n += (rows.len() / 9) as u64;
        self.with_full(|s1, s2| crate::simd::moments_portable(rows, shift, s1, s2));
    }

    /// Add `rows.len() / 9` f32 vectors minus `shift`, through the SIMD kernel
    /// [`crate::simd::moments_add_f32`]; the bits of [`Moments::add`] called row by row
    /// on the shifted vectors.
    pub fn add_rows_f32(&mut self, rows: &[f32], shift: &[f64; 9]) {
        self.n += (rows.len() / 9) as u64;
        self.with_full(|s1, s2| crate::simd::moments_add_f32(rows, shift, s1, s2));
    }

    /// Add another partial result.
    pub fn merge(&mut self, o: &Moments) {
        self.n += o.n;
        for (a, b) in self.s1.iter_mut().zip(&o.s1) {
            *a += b;
        }
        for (a, b) in self.s2.iter_mut().zip(&o.s2) {
            *a += b;
        }
    }

    /// Mean vector (zeros when empty).
    pub fn mean(&self) -> [f64; 9] {
        let mut m = [0.0; 9];
        if self.n > 0 {
            for (d, s) in m.iter_mut().zip(&self.s1) {
                *d = s / self.n as f64;
            }
        }
        m
    }

    /// Sample covariance `(sum x x^T - n mu mu^T) / (n - 1)`; zeros when `n < 2`.
    pub fn covariance(&self) -> [[f64; 9]; 9] {
        let mut c = [[0.0; 9]; 9];
        if self.n < 2 {
            return c;
        }
        let n = self.n as f64;
        let (s1, s2) = (&self.s1, &self.s2);
        let cov = |i: usize, j: usize| {
            let (a, b) = (i.min(j), i.max(j));
            (s2[tri(a, b)] - s1[a] * s1[b] / n) / (n - 1.0)
        };
        for (i, row) in c.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = cov(i, j);
            }
        }
        c
    }

    /// Eigenvalues of the covariance, descending, clipped at 0.
    pub fn variances(&self) -> [f64; 9] {
        sym_eigen_desc(&self.covariance()).0
    }
}

/// The grid of [`ExactMoments`]: sums are kept as integer multiples of 2^-64.
const FIXED_SCALE: f64 = 18_446_744_073_709_551_616.0;

/// Largest |value| kept on the grid (2^125 / 2^64), leaving headroom for additions.
const FIXED_LIMIT: f64 = 4.253_529_586_511_731e37;

/// [`Moments`] whose sums add up the same in any order.
///
/// f64 addition is not associative, so sums accumulated row by row would depend on how
/// the rows are split between partitions and in which order the partial states merge
/// (a basis differing in its last bits moves filters that sit on a histogram bin edge,
/// and the KL values with them). Here each batch is summed in f64 (deterministic for
/// the batch's rows), then every sum is rounded once onto the fixed grid 2^-64 and
/// added as an `i128`: integer addition is exact, so the result does not depend on the
/// order of batches or partial states — with 1 or many partitions the basis is the same
/// as long as the batches hold the same rows (the store's scans cut batches at fixed
/// row positions of each file). Rounding adds at most 2^-65 per sum and batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExactMoments {
    /// Number of vectors.
    pub n: u64,
    /// Sum of the vectors, in units of 2^-64.
    pub s1: [i128; 9],
    /// Upper triangle of the sum of outer products, in units of 2^-64.
    pub s2: [i128; 45],
    /// A NaN or infinite value was added: the moments are NaN.
    pub non_finite: bool,
}

impl Default for ExactMoments {
    fn default() -> Self {
        ExactMoments {
            n: 0,
            s1: [0; 9],
            s2: [0; 45],
            non_finite: false,
        }
    }
}

/// `x` on the grid, `None` when it is not finite; an error when it is too large.
fn to_fixed(x: f64) -> std::result::Result<Option<i128>, f64> {
    if !x.is_finite() {
        return Ok(None);
    }
    let y = x * FIXED_SCALE;
    if y.abs() >= FIXED_LIMIT {
        return Err(x);
    }
    Ok(Some(y as i128))
}

impl ExactMoments {
    /// Add a batch's f64 moments.
    ///
    /// # Errors
    /// An execution error naming `func` when a sum exceeds the grid's range (|sum| of
    /// about 2^61: weights or counts far beyond any trained network's).
    pub fn absorb(&mut self, func: &str, m: &Moments) -> Result<()> {
        self.n += m.n;
        let pairs = self
            .s1
            .iter_mut()
            .zip(&m.s1)
            .chain(self.s2.iter_mut().zip(&m.s2));
        for (acc, &v) in pairs {
            match to_fixed(v) {
                Ok(Some(q)) => match acc.checked_add(q) {
                    Some(t) => *acc = t,
                    None => return exec_err!("{func}: sums overflow the exact accumulator"),
                },
                Ok(None) => self.non_finite = true,
                Err(x) => {
                    return exec_err!(
                        "{func}: a partial sum of {x:e} exceeds the exact accumulator's range (2^61)"
                    );
                }
            }
        }
        Ok(())
    }

    /// Add another exact partial result.
    ///
    /// # Errors
    /// An execution error naming `func` on overflow.
    pub fn merge(&mut self, func: &str, o: &ExactMoments) -> Result<()> {
        self.n += o.n;
        self.non_finite |= o.non_finite;
        let pairs = self
            .s1
            .iter_mut()
            .zip(&o.s1)
            .chain(self.s2.iter_mut().zip(&o.s2));
        for (acc, &v) in pairs {
            match acc.checked_add(v) {
                Some(t) => *acc = t,
                None => return exec_err!("{func}: sums overflow the exact accumulator"),
            }
        }
        Ok(())
    }

    /// The sums as f64 (each rounded once); NaN sums when a non-finite value was added.
    pub fn to_moments(&self) -> Moments {
        let f = |q: i128| {
            if self.non_finite {
                f64::NAN
            } else {
                q as f64 / FIXED_SCALE
            }
        };
        Moments {
            n: self.n,
            s1: self.s1.map(f),
            s2: self.s2.map(f),
        }
    }
}

/// Eigen-decomposition of a symmetric 9x9 matrix: eigenvalues in descending order
/// (negative rounding noise clipped to 0) and the eigenvectors as rows, each signed so
/// that its entry of largest magnitude is positive (scikit-learn's convention).
pub fn sym_eigen_desc(m: &[[f64; 9]; 9]) -> ([f64; 9], [[f64; 9]; 9]) {
    let mat = nalgebra::SMatrix::<f64, 9, 9>::from_fn(|i, j| m[i][j]);
    let eig = nalgebra::SymmetricEigen::new(mat);
    let mut order: Vec<usize> = (0..9).collect();
    order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
    let mut vals = [0.0; 9];
    let mut vecs = [[0.0; 9]; 9];
    for (r, &k) in order.iter().enumerate() {
        vals[r] = eig.eigenvalues[k].max(0.0);
        let col = eig.eigenvectors.column(k);
        let mut best = 0;
        for i in 1..9 {
            if col[i].abs() > col[best].abs() {
                best = i;
            }
        }
        let sign = if col[best] < 0.0 { -1.0 } else { 1.0 };
        for i in 0..9 {
            vecs[r][i] = sign * col[i];
        }
    }
    (vals, vecs)
}

/// Base-10 entropy of a variance spectrum: `-sum r log10 r` over `r = v / sum v > 0`;
/// 0 when the variances sum to 0.
pub fn variance_entropy_of(v: &[f64; 9]) -> f64 {
    let total: f64 = v.iter().map(|x| x.max(0.0)).sum();
    if total <= 0.0 {
        return 0.0;
    }
    v.iter()
        .map(|x| x.max(0.0) / total)
        .filter(|&r| r > 0.0)
        .map(|r| -r * r.log10())
        .sum()
}

/// The paper's expected entropy of `n` random filters, `f(n)`, used to normalise.
pub fn entropy_norm_factor(n: u64) -> f64 {
    let n = n as f64;
    1.2618047 / (1.0 + (-0.88767525 * (n.log2() - 2.30436435)).exp()) - 0.31050834
}

/// The sparsity threshold of a layer: `ratio * max|w|`, or 1 for an all-zero layer.
pub fn sparse_threshold(max_abs: f64, ratio: f64) -> f64 {
    if max_abs == 0.0 { 1.0 } else { ratio * max_abs }
}

/// Largest |w| of a filter.
#[inline]
pub fn filter_max_abs(x: &[f64; 9]) -> f64 {
    x.iter().fold(0.0f64, |m, v| m.max(v.abs()))
}

/// A PCA basis, as `pca_fit` returns it and `pca_project` takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Basis {
    /// Number of filters fitted.
    pub n: i64,
    /// Mean filter.
    pub mean: [f64; 9],
    /// Components as rows, by explained variance descending.
    pub components: [[f64; 9]; 9],
    /// Eigenvalues of the covariance (descending).
    pub explained_variance: [f64; 9],
    /// `explained_variance / sum(explained_variance)` (zeros when the sum is 0).
    pub explained_variance_ratio: [f64; 9],
}

impl Basis {
    /// Fit from moments (MISSION.md section 3: covariance with n - 1, sign convention).
    pub fn from_moments(m: &Moments) -> Basis {
        let (vals, vecs) = sym_eigen_desc(&m.covariance());
        let total: f64 = vals.iter().sum();
        let mut ratio = [0.0; 9];
        if total > 0.0 {
            for (r, v) in ratio.iter_mut().zip(&vals) {
                *r = v / total;
            }
        }
        Basis {
            n: m.n as i64,
            mean: m.mean(),
            components: vecs,
            explained_variance: vals,
            explained_variance_ratio: ratio,
        }
    }

    /// Coefficients of one filter: `(x - mean) . components^T`, each coefficient summed
    /// in the order of the nine weights (as [`Basis::project_into`] does).
    #[inline]
    pub fn project(&self, x: &[f64; 9]) -> [f64; 9] {
        let mut c = [0.0; 9];
        let mut d = [0.0; 9];
        for i in 0..9 {
            d[i] = x[i] - self.mean[i];
        }
        for (k, comp) in self.components.iter().enumerate() {
            let mut acc = comp[0] * d[0];
            for j in 1..9 {
                acc += comp[j] * d[j];
            }
            c[k] = acc;
        }
        c
    }

    /// The components transposed: `[j][k]` = weight j of component k.
    fn components_t(&self) -> [[f64; 9]; 9] {
        let mut ct = [[0.0; 9]; 9];
        for (k, comp) in self.components.iter().enumerate() {
            for (j, &v) in comp.iter().enumerate() {
                ct[j][k] = v;
            }
        }
        ct
    }

    /// The coefficients of the filters `src` written into `out` (9 per filter), the
    /// filters peak-scaled first when `scale` (bit-equal to projecting `peak_scale`'s f32
    /// output). The bits equal [`Basis::project`]'s, row by row, on every CPU: f32 rows go
    /// through the SIMD kernel [`crate::simd::project_f32`] (a hand-written loop rather
    /// than a matrix-product crate: with k = n = 9 the packing of a general GEMM cost more
    /// than the arithmetic), f64 rows through the portable one. float16 rows are widened,
    /// scaled and projected a chunk at a time while the chunk is in L1, so neither the
    /// widened nor the scaled filters become a batch-sized buffer.
    ///
    /// # Panics
    /// If `scale` is asked of f64 rows (scale them with `peak_scale` first, whose f32
    /// output is what is projected), or `out` is not 9 values per filter.
    pub fn project_into(&self, src: Src<'_>, scale: bool, out: &mut [MaybeUninit<f64>]) {
        assert_eq!(out.len(), src.values());
        let ct = self.components_t();
        let mut buf = [0f32; WIDEN_CHUNK * 9];
        let mut chunk = |first: usize, x: &[f32], out: &mut [MaybeUninit<f64>]| {
            let out = &mut out[9 * first..9 * first + x.len()];
            if scale {
                let s = &mut buf[..x.len()];
                crate::simd::peak_scale_f32(x, as_uninit(s));
                crate::simd::project_f32(&self.mean, &ct, s, out);
            } else {
                crate::simd::project_f32(&self.mean, &ct, x, out);
            }
        };
        match src {
            Src::F16(rows) => for_each_widened(rows, |first, x| chunk(first, x, out)),
            Src::F32(rows) if scale => {
                for (k, x) in rows.chunks(WIDEN_CHUNK * 9).enumerate() {
                    chunk(k * WIDEN_CHUNK, x, out);
                }
            }
            Src::F32(rows) => crate::simd::project_f32(&self.mean, &ct, rows, out),
            Src::F64(rows) => {
                assert!(!scale, "project_into: peak-scale f64 rows first");
                crate::simd::project_portable(&self.mean, &ct, rows, out);
            }
        }
    }

    /// The struct fields of a basis value.
    pub fn fields() -> Fields {
        Fields::from(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("mean", fsl_f64_type(9), false),
            Field::new(
                "components",
                DataType::FixedSizeList(Arc::new(Field::new_list_field(fsl_f64_type(9), true)), 9),
                false,
            ),
            Field::new("explained_variance", fsl_f64_type(9), false),
            Field::new("explained_variance_ratio", fsl_f64_type(9), false),
        ])
    }

    /// The Arrow type of a basis value.
    pub fn data_type() -> DataType {
        DataType::Struct(Self::fields())
    }

    /// An array of bases (NULL where `None`).
    ///
    /// # Errors
    /// Arrow errors (internal).
    pub fn to_array(bases: &[Option<Basis>]) -> Result<ArrayRef> {
        let zero = Basis {
            n: 0,
            mean: [0.0; 9],
            components: [[0.0; 9]; 9],
            explained_variance: [0.0; 9],
            explained_variance_ratio: [0.0; 9],
        };
        let get = |b: &Option<Basis>| b.clone().unwrap_or_else(|| zero.clone());
        let all: Vec<Basis> = bases.iter().map(get).collect();
        let nulls = NullBuffer::from(bases.iter().map(Option::is_some).collect::<Vec<_>>());
        let nulls = (nulls.null_count() > 0).then_some(nulls);
        let flat =
            |f: &dyn Fn(&Basis) -> &[f64; 9]| all.iter().flat_map(|b| *f(b)).collect::<Vec<f64>>();
        let comps_inner = fsl_f64(
            9,
            all.iter()
                .flat_map(|b| b.components.iter().flatten().copied())
                .collect(),
            None,
        )?;
        let comps = FixedSizeListArray::try_new(
            Arc::new(Field::new_list_field(fsl_f64_type(9), true)),
            9,
            Arc::new(comps_inner),
            None,
        )?;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(all.iter().map(|b| b.n))),
            Arc::new(fsl_f64(9, flat(&|b| &b.mean), None)?),
            Arc::new(comps),
            Arc::new(fsl_f64(9, flat(&|b| &b.explained_variance), None)?),
            Arc::new(fsl_f64(9, flat(&|b| &b.explained_variance_ratio), None)?),
        ];
        Ok(Arc::new(StructArray::try_new(
            Self::fields(),
            columns,
            nulls,
        )?))
    }

    /// Read row `row` of a basis array (`None` if NULL).
    ///
    /// # Errors
    /// An execution error when `array` is not a basis (as `pca_fit` returns).
    pub fn from_array(array: &dyn Array, row: usize) -> Result<Option<Basis>> {
        let Some(s) = array.as_struct_opt() else {
            return exec_err!(
                "expected a PCA basis (the struct pca_fit returns), got {}",
                array.data_type()
            );
        };
        if s.is_null(row) {
            return Ok(None);
        }
        let col = |name: &str| {
            s.column_by_name(name).ok_or_else(|| {
                datafusion::error::DataFusionError::Execution(format!(
                    "PCA basis has no field {name}"
                ))
            })
        };
        let nine = |name: &str| -> Result<[f64; 9]> {
            let a = col(name)?;
            let f = Filters::try_new(name, a.as_ref())?;
            Ok(f.get(row))
        };
        let n = col("n")?;
        let n = n
            .as_primitive_opt::<arrow::datatypes::Int64Type>()
            .map(|a| a.value(row))
            .unwrap_or_default();
        let comps = col("components")?;
        let Some(outer) = comps.as_fixed_size_list_opt() else {
            return exec_err!("PCA basis field components must be a 9x9 FixedSizeList");
        };
        let inner = outer.values();
        let inner = Filters::try_new("components", inner.as_ref())?;
        let base = outer.value_offset(row) as usize;
        let mut components = [[0.0; 9]; 9];
        for (k, c) in components.iter_mut().enumerate() {
            *c = inner.get(base + k);
        }
        Ok(Some(Basis {
            n,
            mean: nine("mean")?,
            components,
            explained_variance: nine("explained_variance")?,
            explained_variance_ratio: nine("explained_variance_ratio")?,
        }))
    }
}

/// numpy's uniform-bin lookup for one `(lo, hi, bins)`, with its two quotients computed
/// once (a row of 9 coefficients would otherwise pay 18 divisions).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Binner {
    lo: f64,
    hi: f64,
    bins: usize,
    /// `bins / (hi - lo)`, numpy's `norm`.
    norm: f64,
    /// `(hi - lo) / bins`, the step of numpy's `linspace` edges.
    step: f64,
}

impl Binner {
    /// The lookup for `bins` bins over `[lo, hi]`.
    ///
    /// # Panics
    /// If `bins` is 0 or above `i32::MAX` (`coef_histogram` allows up to 2^20).
    pub fn new(lo: f64, hi: f64, bins: usize) -> Binner {
        assert!(
            (1..=i32::MAX as usize).contains(&bins),
            "Binner: bins {bins} out of range"
        );
        Binner {
            lo,
            hi,
            bins,
            norm: bins as f64 / (hi - lo),
            step: (hi - lo) / bins as f64,
        }
    }

    /// The bin of `x` with numpy's semantics (`np.histogram` with uniform bins):
    /// `None` outside `[lo, hi]`; `hi` falls into the last bin.
    #[inline]
    pub fn bin_of(&self, x: f64) -> Option<usize> {
        if !(x >= self.lo && x <= self.hi) {
            return None;
        }
        let bins = self.bins;
        let mut i = ((x - self.lo) * self.norm) as usize;
        if i >= bins {
            i = bins - 1;
        }
        // numpy corrects the computed index against the linspace edges.
        let edge = |k: usize| {
            if k == bins {
                self.hi
            } else {
                self.lo + k as f64 * self.step
            }
        };
        if x < edge(i) {
            i = i.saturating_sub(1);
        } else if i + 1 < bins && x >= edge(i + 1) {
            i += 1;
        }
        Some(i)
    }
}

impl Binner {
    /// Adds rows of 9 coefficients (`values`, row-major) to `counts`
    /// (`counts[c * bins + b]`), with [`Binner::bin_of`]'s semantics for every value.
    ///
    /// Fewer than 64 rows (a single row, or many small groups) are counted value by
    /// value. Longer runs take two stages per block of rows: the bin of every value,
    /// computed without branches (out-of-range and NaN values go to a discard slot
    /// after each coefficient's bins) by a loop the AVX-512 / AVX2 versions run 8
    /// values per instruction; then one increment per value into a local table, whose
    /// nine rows are added to `counts` at the end.
    pub fn count_into(&self, values: &[f64], counts: &mut [i64]) {
        const BLOCK: usize = 9 * 512;
        if values.len() < 9 * 64 {
            // no block tables to set up and fold
            for row in values.chunks_exact(9) {
                for (c, &v) in row.iter().enumerate() {
                    if let Some(b) = self.bin_of(v) {
                        counts[c * self.bins + b] += 1;
                    }
                }
            }
            return;
        }
        let stride = self.bins + 1;
        let mut idx = vec![0u32; values.len().min(BLOCK)];
        let mut local = vec![0u64; 9 * stride];
        for block in values.chunks(BLOCK) {
            let idx = &mut idx[..block.len()];
            bin_indices(self, block, idx);
            for row in idx.chunks_exact(9) {
                for (c, &b) in row.iter().enumerate() {
                    local[c * stride + b as usize] += 1;
                }
            }
        }
        for c in 0..9 {
            let src = &local[c * stride..c * stride + self.bins];
            for (d, &s) in counts[c * self.bins..(c + 1) * self.bins]
                .iter_mut()
                .zip(src)
            {
                *d += s as i64;
            }
        }
    }
}

/// `idx[p]` = the bin of `values[p]`, or `bins` (the discard slot) for a value outside
/// `[lo, hi]` or NaN; [`Binner::bin_of`]'s arithmetic without its branches.
///
/// The index stays a float until the store: a bin number is below 2^31 (`Binner::new`),
/// so it and the `+ 1` / `- 1` corrections are exact in f64, and a float index compares and
/// selects in the same registers as the values. An integer index cost AVX2 (no
/// unsigned conversions or compares before AVX-512) a several-instruction emulation of
/// each `u32 -> f64` and of the unsigned compares: this loop was the pipeline's hottest
/// there (14 % of `analyze kl-matrix`).
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512bw+avx512dq",
    "x86_64+avx2+fma",
    "x86_64+avx"
))]
fn bin_indices(b: &Binner, values: &[f64], idx: &mut [u32]) {
    let (lo, hi, norm, step) = (b.lo, b.hi, b.norm, b.step);
    let bins = b.bins as f64;
    let last = bins - 1.0;
    for (d, &x) in idx.iter_mut().zip(values) {
        let t = (x - lo) * norm;
        let t = if t > 0.0 { t } else { 0.0 };
        let t = if t < last { t } else { last };
        // `t` is in `[0, last]` (NaN failed `t > 0.0` above): `i` is the integer part
        let i = t.trunc();
        let below = x < lo + i * step;
        let up = i + 1.0;
        let i = if below && i > 0.0 {
            i - 1.0
        } else if !below && up < bins && x >= lo + up * step {
            up
        } else {
            i
        };
        let valid = x >= lo && x <= hi;
        let i = if valid { i } else { bins };
        // SAFETY: `i` is a whole number in `[0, bins]`, `bins <= i32::MAX` (`Binner::new`),
        // so it converts exactly. Unlike `as` (saturating, which LLVM scalarises lane by
        // lane here), this is one vector conversion.
        *d = unsafe { i.to_int_unchecked::<i32>() } as u32;
    }
}

/// A `coef_histogram` value: per coefficient, `bins` counts over `[lo, hi]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Lower edge of the range.
    pub lo: f64,
    /// Upper edge of the range (the last bin is closed).
    pub hi: f64,
    /// Bins per coefficient.
    pub bins: usize,
    /// Counts, coefficient-major: `counts[c * bins + b]`.
    pub counts: Vec<i64>,
}

impl Histogram {
    /// An empty histogram.
    pub fn new(lo: f64, hi: f64, bins: usize) -> Histogram {
        Histogram {
            lo,
            hi,
            bins,
            counts: vec![0; 9 * bins],
        }
    }

    /// Counts in range of coefficient `c`.
    pub fn total(&self, c: usize) -> i64 {
        self.counts[c * self.bins..(c + 1) * self.bins].iter().sum()
    }

    /// The bin of `x` with numpy's semantics (`np.histogram` with uniform bins):
    /// `None` outside `[lo, hi]`; `hi` falls into the last bin.
    #[inline]
    pub fn bin_of(&self, x: f64) -> Option<usize> {
        Binner::new(self.lo, self.hi, self.bins).bin_of(x)
    }

    /// Probabilities of coefficient `c` by the paper's rule: density
    /// `count / (total * bin_width)`, empty bins set to float32 eps, renormalised.
    pub fn probabilities(&self, c: usize) -> Vec<f64> {
        let total = self.total(c) as f64;
        let width = (self.hi - self.lo) / self.bins as f64;
        let mut d: Vec<f64> = self.counts[c * self.bins..(c + 1) * self.bins]
            .iter()
            .map(|&k| {
                if k == 0 || total == 0.0 {
                    EPS32
                } else {
                    k as f64 / (total * width)
                }
            })
            .collect();
        let s: f64 = d.iter().sum();
        for v in &mut d {
            *v /= s;
        }
        d
    }

    /// The struct fields of a histogram value.
    pub fn fields() -> Fields {
        Fields::from(vec![
            Field::new("lo", DataType::Float64, false),
            Field::new("hi", DataType::Float64, false),
            Field::new("bins", DataType::Int64, false),
            Field::new(
                "total",
                DataType::FixedSizeList(Arc::new(Field::new_list_field(DataType::Int64, true)), 9),
                false,
            ),
            Field::new(
                "counts",
                DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true))),
                false,
            ),
        ])
    }

    /// The Arrow type of a histogram value.
    pub fn data_type() -> DataType {
        DataType::Struct(Self::fields())
    }

    /// An array of histograms (NULL where `None`).
    ///
    /// # Errors
    /// Arrow errors (internal).
    pub fn to_array(hists: &[Option<Histogram>]) -> Result<ArrayRef> {
        let nulls = NullBuffer::from(hists.iter().map(Option::is_some).collect::<Vec<_>>());
        let nulls = (nulls.null_count() > 0).then_some(nulls);
        let mut lo = Vec::with_capacity(hists.len());
        let mut hi = Vec::with_capacity(hists.len());
        let mut bins = Vec::with_capacity(hists.len());
        let mut totals = Vec::with_capacity(hists.len() * 9);
        let mut counts = Vec::new();
        let mut lens = Vec::with_capacity(hists.len());
        for h in hists {
            match h {
                Some(h) => {
                    lo.push(h.lo);
                    hi.push(h.hi);
                    bins.push(h.bins as i64);
                    totals.extend((0..9).map(|c| h.total(c)));
                    counts.extend_from_slice(&h.counts);
                    lens.push(h.counts.len());
                }
                None => {
                    lo.push(0.0);
                    hi.push(0.0);
                    bins.push(0);
                    totals.extend([0; 9]);
                    lens.push(0);
                }
            }
        }
        let totals = FixedSizeListArray::try_new(
            Arc::new(Field::new_list_field(DataType::Int64, true)),
            9,
            Arc::new(Int64Array::from(totals)),
            None,
        )?;
        let counts = ListArray::try_new(
            Arc::new(Field::new_list_field(DataType::Int64, true)),
            OffsetBuffer::from_lengths(lens),
            Arc::new(Int64Array::from(counts)),
            None,
        )?;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Float64Array::from(lo)),
            Arc::new(Float64Array::from(hi)),
            Arc::new(Int64Array::from(bins)),
            Arc::new(totals),
            Arc::new(counts),
        ];
        Ok(Arc::new(StructArray::try_new(
            Self::fields(),
            columns,
            nulls,
        )?))
    }

    /// Read row `row` of a histogram array (`None` if NULL).
    ///
    /// # Errors
    /// An execution error when `array` is not a histogram (as `coef_histogram` returns).
    pub fn from_array(array: &dyn Array, row: usize) -> Result<Option<Histogram>> {
        let Some(s) = array.as_struct_opt() else {
            return exec_err!(
                "expected a histogram (the struct coef_histogram returns), got {}",
                array.data_type()
            );
        };
        if s.is_null(row) {
            return Ok(None);
        }
        let get = |name: &str| {
            s.column_by_name(name).ok_or_else(|| {
                datafusion::error::DataFusionError::Execution(format!(
                    "histogram has no field {name}"
                ))
            })
        };
        let f64_at = |name: &str| -> Result<f64> {
            let a = get(name)?;
            match a.as_primitive_opt::<Float64Type>() {
                Some(p) => Ok(p.value(row)),
                None => exec_err!("histogram field {name} must be Float64"),
            }
        };
        let bins_arr = get("bins")?;
        let Some(bins) = bins_arr.as_primitive_opt::<arrow::datatypes::Int64Type>() else {
            return exec_err!("histogram field bins must be Int64");
        };
        let bins = usize::try_from(bins.value(row)).unwrap_or(0);
        let counts_arr = get("counts")?;
        let Some(counts) = counts_arr.as_list_opt::<i32>() else {
            return exec_err!("histogram field counts must be a List<Int64>");
        };
        let row_counts = counts.value(row);
        let Some(row_counts) = row_counts.as_primitive_opt::<arrow::datatypes::Int64Type>() else {
            return exec_err!("histogram field counts must be a List<Int64>");
        };
        if bins == 0 || row_counts.len() != 9 * bins {
            return exec_err!(
                "histogram has {} counts, expected 9 x {bins}",
                row_counts.len()
            );
        }
        Ok(Some(Histogram {
            lo: f64_at("lo")?,
            hi: f64_at("hi")?,
            bins,
            counts: row_counts.values().to_vec(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_triangle_indices_are_dense() {
        let mut seen = [false; 45];
        for i in 0..9 {
            for j in i..9 {
                assert!(!seen[tri(i, j)]);
                seen[tri(i, j)] = true;
            }
        }
        assert!(seen.iter().all(|&x| x));
    }

    #[test]
    fn eigen_of_diagonal_sorted_and_signed() {
        let mut m = [[0.0; 9]; 9];
        for (i, row) in m.iter_mut().enumerate() {
            row[i] = i as f64;
        }
        let (vals, vecs) = sym_eigen_desc(&m);
        assert_eq!(vals[0], 8.0);
        assert_eq!(vals[8], 0.0);
        assert_eq!(vecs[0][8], 1.0);
    }

    /// `count_into`'s blocked path (64 rows and more: `bin_indices`, vectorised) bins every
    /// value as `bin_of` does: the computed edges, their neighbouring floats, both ends,
    /// values outside the range, infinities and NaN, for 1, 3, 70 and 2^20 bins.
    #[test]
    fn blocked_binning_matches_bin_of_on_edges() {
        for (lo, hi, bins) in [
            (-1.0, 1.0, 70),
            (0.0, 0.9, 3),
            (-3.3, 3.3, 1),
            (-0.3, 0.7, 1 << 20),
            (1e-300, 3e-300, 70),
        ] {
            let b = Binner::new(lo, hi, bins);
            let mut values = vec![
                lo,
                hi,
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                0.0,
                -0.0,
            ];
            values.extend([
                lo.next_down(),
                hi.next_up(),
                lo - 1.0,
                hi + 1.0,
                1e308,
                -1e308,
            ]);
            for k in (0..=bins).step_by((bins / 97).max(1)) {
                let e = lo + k as f64 * b.step;
                values.extend([e, e.next_up(), e.next_down(), (e + b.step / 2.0)]);
            }
            while values.len() % 9 != 0 || values.len() < 9 * 64 {
                values.push(lo + (values.len() as f64 * 0.618_034).fract() * (hi - lo));
            }
            let mut got = vec![0i64; 9 * bins];
            b.count_into(&values, &mut got);
            let mut want = vec![0i64; 9 * bins];
            for (p, &v) in values.iter().enumerate() {
                if let Some(i) = b.bin_of(v) {
                    want[(p % 9) * bins + i] += 1;
                }
            }
            assert_eq!(got, want, "lo {lo} hi {hi} bins {bins}");
        }
    }

    #[test]
    fn histogram_edges_follow_numpy() {
        let h = Histogram::new(-1.0, 1.0, 4);
        assert_eq!(h.bin_of(-1.0), Some(0));
        assert_eq!(h.bin_of(1.0), Some(3));
        assert_eq!(h.bin_of(0.0), Some(2));
        assert_eq!(h.bin_of(-0.5), Some(1));
        assert_eq!(h.bin_of(1.0000001), None);
        assert_eq!(h.bin_of(f64::NAN), None);
    }

    #[test]
    fn basis_and_histogram_round_trip_through_arrow() {
        let mut m = Moments::default();
        for k in 0..20 {
            let x: [f64; 9] = std::array::from_fn(|i| ((k * 7 + i * 3) % 11) as f64 - 5.0);
            m.add(&x);
        }
        let b = Basis::from_moments(&m);
        let a = Basis::to_array(&[Some(b.clone()), None]).unwrap();
        assert_eq!(Basis::from_array(a.as_ref(), 0).unwrap(), Some(b));
        assert_eq!(Basis::from_array(a.as_ref(), 1).unwrap(), None);
        let mut h = Histogram::new(-2.0, 3.0, 5);
        h.counts[7] = 4;
        let a = Histogram::to_array(&[Some(h.clone())]).unwrap();
        assert_eq!(Histogram::from_array(a.as_ref(), 0).unwrap(), Some(h));
    }
}

/// A scalar function that maps each filter to one Float64 (the norms): the shared
/// signature, coercion, kernel and NULL handling; each function supplies its name, its
/// per-filter reference implementation and its documentation.
#[derive(Debug)]
pub struct FilterReduceFunc {
    name: &'static str,
    reduce: fn(&[f64; 9]) -> f64,
    doc: &'static std::sync::LazyLock<datafusion::logical_expr::Documentation>,
    signature: datafusion::logical_expr::Signature,
}

impl PartialEq for FilterReduceFunc {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
impl Eq for FilterReduceFunc {}
impl std::hash::Hash for FilterReduceFunc {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl FilterReduceFunc {
    /// A function `name(weights) -> Float64` computing `reduce` per filter.
    pub fn new(
        name: &'static str,
        reduce: fn(&[f64; 9]) -> f64,
        doc: &'static std::sync::LazyLock<datafusion::logical_expr::Documentation>,
    ) -> Self {
        FilterReduceFunc {
            name,
            reduce,
            doc,
            signature: datafusion::logical_expr::Signature::user_defined(
                datafusion::logical_expr::Volatility::Immutable,
            ),
        }
    }
}

/// Vectorised kernel of a [`FilterReduceFunc`]: one f64 per row into a flat buffer, the
/// input's validity as is (no per-row allocation).
pub fn filter_reduce_kernel(f: &Filters<'_>, reduce: impl Fn(&[f64; 9]) -> f64) -> Float64Array {
    let mut values = vec![0f64; f.len()];
    for (i, o) in values.iter_mut().enumerate() {
        if !f.is_null(i) {
            *o = reduce(&f.get(i));
        }
    }
    Float64Array::new(ScalarBuffer::from(values), f.nulls().cloned())
}

impl datafusion::logical_expr::ScalarUDFImpl for FilterReduceFunc {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [t] = arg_types else {
            return plan_err!(
                "{} expects 1 argument (weights), got {}",
                self.name,
                arg_types.len()
            );
        };
        Ok(vec![coerce_weights(self.name, t)?])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> Result<datafusion::logical_expr::ColumnarValue> {
        let [w] = args.args.as_slice() else {
            return plan_err!(
                "{} expects 1 argument (weights), got {}",
                self.name,
                args.args.len()
            );
        };
        let a = w.to_array(args.number_rows)?;
        let f = Filters::try_new(self.name, a.as_ref())?;
        Ok(datafusion::logical_expr::ColumnarValue::Array(Arc::new(
            filter_reduce_kernel(&f, self.reduce),
        )))
    }

    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        Some(self.doc)
    }
}
