//! `variance_entropy(weights)`, `variance_entropy_norm(weights)`,
//! `variance_entropy_clean(weights [, ratio])`, `variance_entropy_clean_norm(weights [, ratio])`:
//! the variance entropy of a group of filters (usually one layer), MISSION.md section 3.
//!
//! Centre the group's `n x 9` matrix (raw weights) by its column means; `v` = eigenvalues
//! of the covariance `sum (x - mu)(x - mu)^T / (n - 1)` (= `s^2 / (n - 1)` for the singular
//! values `s` of the centred matrix); `r = v / sum v`; `H = -sum r_i log10 r_i` over
//! `r_i > 0`, in [0, log10 9]. `H = 0` when `sum v = 0` and when `n <= 2` (a covariance of
//! rank <= 1). An empty group gives NULL.
//!
//! * `variance_entropy_norm` = `H / f(n)` with the paper's expected entropy of `n` random
//!   filters `f(n) = 1.2618047 / (1 + exp(-0.88767525 (log2 n - 2.30436435))) - 0.31050834`
//!   (≈ 0.9 healthy, ≈ 0 redundant, > 1 random-like). `f(n) <= 0` for `n <= 2`, where
//!   `H = 0`; the normalised value is then defined as 0.
//! * `..._clean` variants: the same over the group's NON-sparse filters only; a filter is
//!   sparse as in `layer_sparsity` (all `|w_i| < ratio * max|w|`, the max over ALL filters of
//!   the group; `t = 1` for an all-zero group). The normalised clean variant divides by
//!   `f(n_clean)`. A group whose filters are all sparse gives 0.
//!
//! **Algorithms.** `variance_entropy(_norm)` streams: its state is the count, sums and
//! packed sums of products ([`Moments`], 55 f64) of `x - shift`, where `shift` is the first
//! filter the partial state saw. The shift (a translation, so the covariance is unchanged)
//! keeps the one-pass formula `(S2 - S1 S1^T / n) / (n - 1)` from cancelling when the
//! mean is large next to the spread — without it a layer of identical filters gets
//! rounding-noise eigenvalues and a spurious entropy near log10 9. Merging translates one
//! state to the other's shift (`S1 += n d`, `S2 += S1 d^T + d S1^T + n d d^T`, with the
//! old `S1`). The clean variants cannot stream (the threshold is known only at the end), so
//! they keep every filter exactly (Float32 for float16/float32 input, Float64 otherwise:
//! `O(filters)` state, 36 bytes per float32 filter, reported by `size()` and spillable)
//! and evaluate with the two-pass centred covariance [`variance_entropy_ref`].

use std::ops::Range;
use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array, UInt64Array};
use arrow::datatypes::{DataType, Field, FieldRef, UInt64Type};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, DocumentationBuilder, EmitTo,
    GroupsAccumulator, Signature, Volatility,
};

use super::layer_sparsity::{
    DOC_SECTION, GroupAgg, Groups, ListKind, Single, coerce_weights_ratio, filter_list_groups,
    filter_list_single, filter_list_state_fields, passes,
};
use crate::common::{
    Filters, Moments, coerce_weights, entropy_norm_factor, fsl_f64, fsl_f64_type, group_runs,
    sym_eigen_desc, tri, variance_entropy_of,
};

/// Scalar reference: `H` of a set of filters by the two-pass centred covariance (of the
/// filters minus the first one, which changes nothing but rounding)
/// (0 for `n <= 2` and when the variances sum to 0).
#[expect(
    clippy::needless_range_loop,
    reason = "index form mirrors the 9x9 formula"
)]
pub fn variance_entropy_ref(filters: &[[f64; 9]]) -> f64 {
    let n = filters.len();
    if n <= 2 {
        return 0.0;
    }
    // Translate by the first filter (exact zeros for identical filters), then centre.
    let x0 = filters[0];
    let mut mu = [0.0; 9];
    for f in filters {
        for ((m, x), s) in mu.iter_mut().zip(f).zip(&x0) {
            *m += x - s;
        }
    }
    for m in &mut mu {
        *m /= n as f64;
    }
    let mut c = [[0.0; 9]; 9];
    for f in filters {
        let d: [f64; 9] = std::array::from_fn(|i| (f[i] - x0[i]) - mu[i]);
        for i in 0..9 {
            for j in i..9 {
                c[i][j] += d[i] * d[j];
            }
        }
    }
    for i in 0..9 {
        for j in i..9 {
            c[i][j] /= (n - 1) as f64;
            c[j][i] = c[i][j];
        }
    }
    variance_entropy_of(&sym_eigen_desc(&c).0)
}

/// `H / f(n)` (0 for `n <= 2`, where `H = 0` and `f(n) <= 0`).
pub fn normalise(h: f64, n: u64) -> f64 {
    if n <= 2 {
        0.0
    } else {
        h / entropy_norm_factor(n)
    }
}

/// [`Moments`] of `x - shift` (see the module doc for why).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ShiftedMoments {
    /// The translation (the first filter seen; zeros while empty).
    pub shift: [f64; 9],
    /// Moments of the shifted filters.
    pub m: Moments,
}

impl ShiftedMoments {
    /// Add one filter.
    #[inline]
    pub fn add(&mut self, x: &[f64; 9]) {
        if self.m.n == 0 {
            self.shift = *x;
        }
        let d: [f64; 9] = std::array::from_fn(|i| x[i] - self.shift[i]);
        self.m.add(&d);
    }

    /// Merge another partial state (translated to this state's shift).
    #[expect(
        clippy::needless_range_loop,
        reason = "index form mirrors the packed-triangle formula"
    )]
    pub fn merge(&mut self, o: &ShiftedMoments) {
        if o.m.n == 0 {
            return;
        }
        if self.m.n == 0 {
            *self = *o;
            return;
        }
        let d: [f64; 9] = std::array::from_fn(|i| o.shift[i] - self.shift[i]);
        let n = o.m.n as f64;
        let mut t = o.m;
        for i in 0..9 {
            for j in i..9 {
                t.s2[tri(i, j)] += o.m.s1[i] * d[j] + d[i] * o.m.s1[j] + n * d[i] * d[j];
            }
        }
        for i in 0..9 {
            t.s1[i] += n * d[i];
        }
        self.m.merge(&t);
    }

    /// `H` (NULL when empty, 0 for `n <= 2`).
    pub fn entropy(&self) -> Option<f64> {
        match self.m.n {
            0 => None,
            1 | 2 => Some(0.0),
            _ => Some(variance_entropy_of(&self.m.variances())),
        }
    }
}

/// Streaming state of `variance_entropy(_norm)`: one [`ShiftedMoments`] per group.
#[derive(Debug)]
pub struct MomentsAgg {
    norm: bool,
    groups: Vec<ShiftedMoments>,
}

impl MomentsAgg {
    /// An empty state; `norm` selects `variance_entropy_norm`.
    pub fn new(norm: bool) -> Self {
        MomentsAgg {
            norm,
            groups: Vec::new(),
        }
    }

    fn name(&self) -> &'static str {
        if self.norm {
            "variance_entropy_norm"
        } else {
            "variance_entropy"
        }
    }
}

impl GroupAgg for MomentsAgg {
    fn fresh(&self) -> Self {
        MomentsAgg::new(self.norm)
    }

    fn resize(&mut self, n: usize) {
        if n > self.groups.len() {
            self.groups.resize(n, ShiftedMoments::default());
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
        let Some(w) = values.first() else {
            return exec_err!("{}: missing weights", self.name());
        };
        let f = Filters::try_new(self.name(), w.as_ref())?;
        if f.nulls().is_none() && filter.is_none() {
            let flat32 = f.flat_f32();
            for (g, rows) in group_runs(groups) {
                let st = &mut self.groups[g];
                match flat32 {
                    // The SIMD kernel: the bits of `ShiftedMoments::add` row by row.
                    Some(x) => {
                        let run = &x[9 * rows.start..9 * rows.end];
                        if st.m.n == 0 && !run.is_empty() {
                            st.shift = std::array::from_fn(|i| f64::from(run[i]));
                        }
                        let shift = st.shift;
                        st.m.add_rows_f32(run, &shift);
                    }
                    None => {
                        for i in rows {
                            st.add(&f.get(i));
                        }
                    }
                }
            }
        } else {
            for (i, &g) in groups.iter().enumerate() {
                if !f.is_null(i) && passes(filter, i) {
                    self.groups[g].add(&f.get(i));
                }
            }
        }
        Ok(())
    }

    fn merge(&mut self, states: &[ArrayRef], groups: &[usize]) -> Result<()> {
        let name = self.name();
        let [n, shift, s1, s2] = states else {
            return exec_err!("{name}: malformed state ({} columns)", states.len());
        };
        let Some(n) = n.as_primitive_opt::<UInt64Type>() else {
            return exec_err!("{name}: malformed state count");
        };
        let shift = Filters::try_new(name, shift.as_ref())?;
        let s1 = Filters::try_new(name, s1.as_ref())?;
        let Some(s2l) = s2.as_fixed_size_list_opt() else {
            return exec_err!("{name}: malformed state sums of products");
        };
        if s2l.value_length() != 45 {
            return exec_err!("{name}: malformed state sums of products");
        }
        let Some(s2v) = s2l
            .values()
            .as_primitive_opt::<arrow::datatypes::Float64Type>()
        else {
            return exec_err!("{name}: malformed state sums of products");
        };
        let s2v = s2v.values();
        for (j, &g) in groups.iter().enumerate() {
            if n.is_null(j) || n.value(j) == 0 {
                continue;
            }
            let o = s2l.value_offset(j) as usize;
            let mut s2 = [0.0; 45];
            s2.copy_from_slice(&s2v[o..o + 45]);
            let part = ShiftedMoments {
                shift: shift.get(j),
                m: Moments {
                    n: n.value(j),
                    s1: s1.get(j),
                    s2,
                },
            };
            self.groups[g].merge(&part);
        }
        Ok(())
    }

    fn evaluate(&self, range: Range<usize>) -> Result<ArrayRef> {
        let out: Float64Array = self.groups[range]
            .iter()
            .map(|s| {
                s.entropy()
                    .map(|h| if self.norm { normalise(h, s.m.n) } else { h })
            })
            .collect();
        Ok(Arc::new(out))
    }

    fn state(&self, range: Range<usize>) -> Result<Vec<ArrayRef>> {
        let g = &self.groups[range];
        Ok(vec![
            Arc::new(UInt64Array::from_iter_values(g.iter().map(|s| s.m.n))),
            Arc::new(fsl_f64(9, g.iter().flat_map(|s| s.shift).collect(), None)?),
            Arc::new(fsl_f64(9, g.iter().flat_map(|s| s.m.s1).collect(), None)?),
            Arc::new(fsl_f64(45, g.iter().flat_map(|s| s.m.s2).collect(), None)?),
        ])
    }

    fn take(&mut self, emit: EmitTo) {
        let _ = emit.take_needed(&mut self.groups);
    }

    fn size(&self) -> usize {
        self.groups.capacity() * std::mem::size_of::<ShiftedMoments>()
    }
}

/// The `GroupsAccumulator` of `variance_entropy` and `variance_entropy_norm`.
pub type VarianceEntropyGroupsAccumulator = Groups<MomentsAgg>;
/// The plain `Accumulator` of `variance_entropy` and `variance_entropy_norm`.
pub type VarianceEntropyAccumulator = Single<MomentsAgg>;

const FORMULA: &str = "Centre the group's n x 9 matrix of raw weights by its column means; v = eigenvalues \
    of its covariance (divisor n - 1), i.e. s^2 / (n - 1) for its singular values s; r = v / sum(v); \
    H = -sum r_i log10 r_i over r_i > 0 (range [0, log10 9]); H = 0 when sum(v) = 0 or n <= 2. \
    NULL filters are skipped; an empty group gives NULL.";

const NORM: &str = "Normalised by the paper's expected entropy of n random filters: H / f(n), \
    f(n) = 1.2618047 / (1 + exp(-0.88767525 (log2 n - 2.30436435))) - 0.31050834 \
    (about 0.9 healthy, about 0 redundant, > 1 random-like); 0 for n <= 2 (where H = 0 and f(n) <= 0).";

const CLEAN: &str = "Only the group's non-sparse filters count: t = ratio * max|w| over ALL filters of \
    the group (t = 1 if all zero); a filter is sparse when all 9 |w_i| < t (as layer_sparsity). \
    A group whose filters are all sparse gives 0. Exact: the state keeps every filter (36 bytes \
    per float16/float32 filter), reported to the memory pool and spillable.";

const WEIGHTS: &str = "A filter: FixedSizeList<Float16|Float32|Float64, 9> (other lists of 9 numbers are cast to Float64).";

const RATIO: &str = "Sparsity threshold as a fraction of the group's largest |w|; a number >= 0, default 0.01; constant within a group.";

static DOC: LazyLock<Documentation> = LazyLock::new(|| {
    DocumentationBuilder::new_with_details(
        DOC_SECTION,
        format!("Variance entropy of a group of filters (usually one layer). {FORMULA} One streaming pass (shifted moments)."),
        "variance_entropy(weights)",
    )
    .with_argument("weights", WEIGHTS)
    .with_sql_example(
        "SELECT layer_name, variance_entropy(weights) FROM filters GROUP BY layer_name;\n\
         SELECT round(variance_entropy(w), 6) FROM (VALUES (make_weights(1,0,0,0,0,0,0,0,0)), \
         (make_weights(0,1,0,0,0,0,0,0,0)), (make_weights(0,0,1,0,0,0,0,0,0))) t(w);\n\
         -- 0.30103 (two equal variances: log10 2)",
    )
    .build()
});

static DOC_NORM: LazyLock<Documentation> = LazyLock::new(|| {
    DocumentationBuilder::new_with_details(
        DOC_SECTION,
        format!("Normalised variance entropy of a group of filters. {FORMULA} {NORM}"),
        "variance_entropy_norm(weights)",
    )
    .with_argument("weights", WEIGHTS)
    .with_sql_example(
        "SELECT layer_name, variance_entropy_norm(weights) FROM filters GROUP BY layer_name;",
    )
    .build()
});

static DOC_CLEAN: LazyLock<Documentation> = LazyLock::new(|| {
    DocumentationBuilder::new_with_details(
        DOC_SECTION,
        format!("Variance entropy of the non-sparse filters of a group. {FORMULA} {CLEAN}"),
        "variance_entropy_clean(weights [, ratio])",
    )
    .with_argument("weights", WEIGHTS)
    .with_argument("ratio", RATIO)
    .with_sql_example(
        "SELECT layer_name, variance_entropy_clean(weights, 0.01) FROM filters GROUP BY layer_name;",
    )
    .build()
});

static DOC_CLEAN_NORM: LazyLock<Documentation> = LazyLock::new(|| {
    DocumentationBuilder::new_with_details(
        DOC_SECTION,
        format!(
            "Normalised variance entropy of the non-sparse filters of a group: H_clean / f(n_clean). \
             {FORMULA} {NORM} {CLEAN}"
        ),
        "variance_entropy_clean_norm(weights [, ratio])",
    )
    .with_argument("weights", WEIGHTS)
    .with_argument("ratio", RATIO)
    .with_sql_example(
        "SELECT layer_name, variance_entropy_clean_norm(weights) FROM filters GROUP BY layer_name;",
    )
    .build()
});

/// The `variance_entropy` (`norm = false`) and `variance_entropy_norm` aggregates.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct VarianceEntropyAgg {
    signature: Signature,
    norm: bool,
}

impl VarianceEntropyAgg {
    /// `variance_entropy` or, with `norm`, `variance_entropy_norm`.
    pub fn new(norm: bool) -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
            norm,
        }
    }
}

impl AggregateUDFImpl for VarianceEntropyAgg {
    fn name(&self) -> &str {
        if self.norm {
            "variance_entropy_norm"
        } else {
            "variance_entropy"
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types {
            [w] => Ok(vec![coerce_weights(self.name(), w)?]),
            _ => plan_err!(
                "{} expects 1 argument (weights), got {}",
                self.name(),
                arg_types.len()
            ),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn accumulator(&self, _acc_args: AccumulatorArgs<'_>) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(Single::new(MomentsAgg::new(self.norm))))
    }

    fn state_fields(&self, args: StateFieldsArgs<'_>) -> Result<Vec<FieldRef>> {
        let f = |what: &str, t: DataType| {
            Arc::new(Field::new(format_state_name(args.name, what), t, true))
        };
        Ok(vec![
            f("count", DataType::UInt64),
            f("shift", fsl_f64_type(9)),
            f("sum", fsl_f64_type(9)),
            f("sum_products", fsl_f64_type(45)),
        ])
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs<'_>) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        _args: AccumulatorArgs<'_>,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(Groups(MomentsAgg::new(self.norm))))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(if self.norm { &DOC_NORM } else { &DOC })
    }
}

/// The `variance_entropy_clean` (`norm = false`) and `variance_entropy_clean_norm` aggregates.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct VarianceEntropyCleanAgg {
    signature: Signature,
    norm: bool,
}

impl VarianceEntropyCleanAgg {
    /// `variance_entropy_clean` or, with `norm`, `variance_entropy_clean_norm`.
    pub fn new(norm: bool) -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
            norm,
        }
    }

    fn kind(&self) -> ListKind {
        ListKind::Clean { norm: self.norm }
    }
}

impl AggregateUDFImpl for VarianceEntropyCleanAgg {
    fn name(&self) -> &str {
        self.kind().name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        coerce_weights_ratio(self.name(), arg_types)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn accumulator(&self, acc_args: AccumulatorArgs<'_>) -> Result<Box<dyn Accumulator>> {
        Ok(filter_list_single(self.kind(), &acc_args))
    }

    fn state_fields(&self, args: StateFieldsArgs<'_>) -> Result<Vec<FieldRef>> {
        Ok(filter_list_state_fields(&args, "filters"))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs<'_>) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs<'_>,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(filter_list_groups(self.kind(), &args))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(if self.norm {
            &DOC_CLEAN_NORM
        } else {
            &DOC_CLEAN
        })
    }
}

/// The singleton `variance_entropy` UDAF.
pub fn variance_entropy_udaf() -> Arc<AggregateUDF> {
    static UDAF: LazyLock<Arc<AggregateUDF>> =
        LazyLock::new(|| Arc::new(AggregateUDF::from(VarianceEntropyAgg::new(false))));
    Arc::clone(&UDAF)
}

/// The singleton `variance_entropy_norm` UDAF.
pub fn variance_entropy_norm_udaf() -> Arc<AggregateUDF> {
    static UDAF: LazyLock<Arc<AggregateUDF>> =
        LazyLock::new(|| Arc::new(AggregateUDF::from(VarianceEntropyAgg::new(true))));
    Arc::clone(&UDAF)
}

/// The singleton `variance_entropy_clean` UDAF.
pub fn variance_entropy_clean_udaf() -> Arc<AggregateUDF> {
    static UDAF: LazyLock<Arc<AggregateUDF>> =
        LazyLock::new(|| Arc::new(AggregateUDF::from(VarianceEntropyCleanAgg::new(false))));
    Arc::clone(&UDAF)
}

/// The singleton `variance_entropy_clean_norm` UDAF.
pub fn variance_entropy_clean_norm_udaf() -> Arc<AggregateUDF> {
    static UDAF: LazyLock<Arc<AggregateUDF>> =
        LazyLock::new(|| Arc::new(AggregateUDF::from(VarianceEntropyCleanAgg::new(true))));
    Arc::clone(&UDAF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::layer_sparsity::tests::{fsl32, fsl64};
    use crate::aggregate::testing::{Arg, Rng, assert_results_close, run_all_paths};
    use arrow::datatypes::Float64Type;
    use datafusion::common::ScalarValue;
    use proptest::prelude::*;

    fn f64_at(a: &ArrayRef, i: usize) -> Option<f64> {
        let a = a.as_primitive::<Float64Type>();
        a.is_valid(i).then(|| a.value(i))
    }

    fn run1(udaf: &Arc<AggregateUDF>, args: &[Arg], rows: usize) -> Option<f64> {
        let r = run_all_paths(udaf, args, &vec![0; rows], 1, None, 11).unwrap();
        assert_results_close(&r, 1e-9, 1e-12);
        f64_at(&r.one_pass, 0)
    }

    fn all4() -> [Arc<AggregateUDF>; 4] {
        [
            variance_entropy_udaf(),
            variance_entropy_norm_udaf(),
            variance_entropy_clean_udaf(),
            variance_entropy_clean_norm_udaf(),
        ]
    }

    /// numpy: `v = np.linalg.svd(x - x.mean(0), compute_uv=False)**2 / (n-1); r = v / v.sum();
    /// -(r[r>0] * np.log10(r[r>0])).sum()`, for this 6-filter layer (printed with %.12f).
    const LAYER: [[f64; 9]; 6] = [
        [0.2, -0.1, 0.0, 0.5, 0.3, -0.2, 0.1, 0.0, 0.4],
        [-0.3, 0.2, 0.1, 0.0, -0.4, 0.2, 0.3, 0.1, -0.1],
        [0.1, 0.1, -0.2, 0.3, 0.0, -0.1, -0.2, 0.4, 0.2],
        [0.0, -0.3, 0.2, -0.1, 0.2, 0.3, 0.0, -0.2, 0.1],
        [0.4, 0.0, 0.1, 0.2, -0.1, 0.0, 0.2, 0.1, -0.3],
        [0.001, 0.002, 0.0, -0.001, 0.0, 0.003, 0.0, 0.0, 0.001],
    ];

    #[test]
    fn hand_cases_against_numpy() {
        let rows: Vec<Option<[f64; 9]>> = LAYER.iter().copied().map(Some).collect();
        let h = run1(&variance_entropy_udaf(), &[Arg::Array(fsl64(&rows))], 6).unwrap();
        assert!((h - NP_H6).abs() < 1e-11, "{h}");
        let hn = run1(
            &variance_entropy_norm_udaf(),
            &[Arg::Array(fsl64(&rows))],
            6,
        )
        .unwrap();
        assert!((hn - NP_H6 / NP_F6).abs() < 1e-9, "{hn}");
        // The last filter is sparse at ratio 0.01 (max 0.003 < 0.005): clean = first five.
        let hc = run1(
            &variance_entropy_clean_udaf(),
            &[Arg::Array(fsl64(&rows))],
            6,
        )
        .unwrap();
        assert!((hc - NP_H5).abs() < 1e-9, "{hc}");
        let hcn = run1(
            &variance_entropy_clean_norm_udaf(),
            &[Arg::Array(fsl64(&rows))],
            6,
        )
        .unwrap();
        assert!((hcn - NP_H5 / NP_F5).abs() < 1e-9, "{hcn}");
        assert!((variance_entropy_ref(&LAYER) - NP_H6).abs() < 1e-12);
    }

    const NP_H6: f64 = 0.557_464_151_315;
    const NP_F6: f64 = 0.398_562_877_865;
    const NP_H5: f64 = 0.531_369_659_466;
    const NP_F5: f64 = 0.325_312_078_618;

    #[test]
    fn degenerate_groups() {
        for udaf in all4() {
            // all zero: 0
            let z = fsl64(&[Some([0.0; 9]); 4]);
            assert_eq!(run1(&udaf, &[Arg::Array(z)], 4), Some(0.0));
            // one filter: 0
            assert_eq!(
                run1(&udaf, &[Arg::Array(fsl64(&[Some([0.3; 9])]))], 1),
                Some(0.0)
            );
            // identical filters (a large mean): exactly 0 thanks to the shift
            let same = [0.1, -0.7, 0.3, 1e3, 0.2, -0.1, 0.05, 0.9, -0.4];
            let w = fsl64(&vec![Some(same); 50]);
            assert_eq!(run1(&udaf, &[Arg::Array(w)], 50), Some(0.0));
            let w = fsl32(&vec![same; 50]);
            assert_eq!(run1(&udaf, &[Arg::Array(w)], 50), Some(0.0));
            // NULL only / empty: NULL
            assert_eq!(run1(&udaf, &[Arg::Array(fsl64(&[None, None]))], 2), None);
            assert_eq!(run1(&udaf, &[Arg::Array(fsl64(&[]))], 0), None);
        }
    }

    #[test]
    fn two_equal_axes_give_log10_2() {
        let mut a = [0.0; 9];
        a[0] = 1.0;
        let mut b = [0.0; 9];
        b[1] = 1.0;
        let c = [0.0; 9];
        // e1, e2, 0: covariance [[1/3, -1/6], [-1/6, 1/3]] -> eigenvalues 1/2, 1/6.
        let h = variance_entropy_ref(&[a, b, c]);
        let (p, q) = (0.75f64, 0.25f64);
        assert!((h - (-p * p.log10() - q * q.log10())).abs() < 1e-12, "{h}");
    }

    #[test]
    fn isotropic_random_layer_normalises_near_one() {
        let mut rng = Rng::new(42);
        // Box-Muller normal samples: i.i.d. weights are "random-like".
        let rows: Vec<Option<[f64; 9]>> = (0..512)
            .map(|_| {
                Some(std::array::from_fn(|_| {
                    let (u, v) = (rng.uniform(1e-12, 1.0), rng.uniform(0.0, 1.0));
                    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
                }))
            })
            .collect();
        let hn = run1(
            &variance_entropy_norm_udaf(),
            &[Arg::Array(fsl64(&rows))],
            512,
        )
        .unwrap();
        assert!((hn - 1.0).abs() < 0.05, "{hn}");
        let h = run1(&variance_entropy_udaf(), &[Arg::Array(fsl64(&rows))], 512).unwrap();
        assert!(h > 0.95 && h <= 9f64.log10() + 1e-12, "{h}");
    }

    #[test]
    fn shifted_merge_matches_one_pass_moments() {
        let mut rng = Rng::new(5);
        let xs: Vec<[f64; 9]> = (0..40)
            .map(|_| std::array::from_fn(|_| 100.0 + rng.uniform(-1.0, 1.0)))
            .collect();
        let mut all = ShiftedMoments::default();
        let (mut a, mut b) = (ShiftedMoments::default(), ShiftedMoments::default());
        for (i, x) in xs.iter().enumerate() {
            all.add(x);
            if i % 3 == 0 { a.add(x) } else { b.add(x) }
        }
        a.merge(&b);
        let (ca, call) = (a.m.covariance(), all.m.covariance());
        for i in 0..9 {
            for j in 0..9 {
                assert!((ca[i][j] - call[i][j]).abs() < 1e-12 * call[i][i].abs().max(1.0));
            }
        }
        assert!((a.entropy().unwrap() - variance_entropy_ref(&xs)).abs() < 1e-9);
    }

    proptest! {
        #[test]
        fn every_path_matches_reference(seed in 0u64..1000, n in 0usize..40, groups in 1usize..4, f32_in in any::<bool>()) {
            let mut rng = Rng::new(seed);
            let offset = rng.uniform(-3.0, 3.0);
            let rows: Vec<[f64; 9]> = (0..n).map(|_| {
                let scale = if rng.below(5) == 0 { 1e-3 } else { 1.0 };
                std::array::from_fn(|_| {
                    let v = offset * scale + rng.uniform(-1.0, 1.0) * scale;
                    if f32_in { f64::from(v as f32) } else { v }
                })
            }).collect();
            let gi: Vec<usize> = (0..n).map(|_| rng.below(groups)).collect();
            let mask = BooleanArray::from((0..n).map(|_| rng.below(6) != 0).collect::<Vec<_>>());
            let w = if f32_in { fsl32(&rows) } else { fsl64(&rows.iter().copied().map(Some).collect::<Vec<_>>()) };
            for (k, udaf) in all4().iter().enumerate() {
                let mut args = vec![Arg::Array(Arc::clone(&w))];
                let ratio = if k >= 2 && rng.below(2) == 0 {
                    let r = rng.uniform(0.0, 0.4);
                    args.push(Arg::Literal(ScalarValue::Float64(Some(r))));
                    r
                } else { 0.01 };
                let r = run_all_paths(udaf, &args, &gi, groups, Some(&mask), seed).unwrap();
                assert_results_close(&r, 1e-9, 1e-10);
                for g in 0..groups {
                    let sel: Vec<[f64; 9]> = (0..n).filter(|&i| gi[i] == g && mask.value(i)).map(|i| rows[i]).collect();
                    let want = if sel.is_empty() { None } else {
                        let set: Vec<[f64; 9]> = if k >= 2 {
                            let max = sel.iter().flatten().fold(0.0f64, |m, v| m.max(v.abs()));
                            let t = crate::common::sparse_threshold(max, ratio);
                            sel.iter().copied().filter(|f| !f.iter().all(|v| v.abs() < t)).collect()
                        } else { sel };
                        let h = variance_entropy_ref(&set);
                        Some(if k % 2 == 1 { normalise(h, set.len() as u64) } else { h })
                    };
                    let got = f64_at(&r.one_pass, g);
                    match (got, want) {
                        (Some(a), Some(b)) => prop_assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{} {} vs {}", udaf.name(), a, b),
                        (a, b) => prop_assert_eq!(a, b),
                    }
                }
            }
        }
    }
}
