//! `pca_fit(weights)`: the PCA basis of a set of 3x3 filters (MISSION.md section 3).
//!
//! Mean `mu = sum x / n`; covariance `C = (sum x x^T - n mu mu^T) / (n - 1)`; the
//! components are the eigenvectors of `C` sorted by eigenvalue, descending, each signed so
//! that its entry of largest absolute value is positive (scikit-learn's convention);
//! `explained_variance` = the eigenvalues (rounding noise below 0 clipped to 0),
//! `explained_variance_ratio` = eigenvalues / their sum.
//!
//! Algorithm: one streaming pass accumulating the count, the sum and the packed upper
//! triangle of the sum of outer products ([`Moments`], the "sum of products" form of the
//! online covariance, as DataFusion's `covariance.rs` keeps sums per group). Within a
//! batch the sums are f64 (one `X^T X` product per run of rows of one group); across
//! batches and partial states they are fixed-point `i128` ([`ExactMoments`]), so update
//! and merge are exactly associative and commutative and the basis does not depend on
//! the number of partitions or the order in which they finish. The eigen-decomposition
//! runs once per group in `evaluate` ([`Basis::from_moments`]).
//!
//! NULL filters (and rows excluded by `FILTER (WHERE ...)`) are skipped; a group with no
//! filters gives NULL. With one filter the covariance is defined as all zeros (numpy
//! would give NaN for `n - 1 = 0`): the basis then has `mean` = that filter,
//! explained variances and ratios all 0, and the components are the unit vectors
//! (rows of the identity), the eigenvectors nalgebra returns for the zero matrix.
//! The same holds for any set of identical filters (zero covariance).

use std::mem::size_of;
use std::sync::{Arc, LazyLock};

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Decimal128Array, FixedSizeListArray, UInt64Array,
};
use arrow::datatypes::{DataType, Decimal128Type, Field, FieldRef, UInt64Type};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, DocSection, Documentation, DocumentationBuilder,
    EmitTo, GroupsAccumulator, Signature, Volatility,
};

use crate::common::{Basis, ExactMoments, Filters, Flat, Moments, coerce_weights, group_runs};

const NAME: &str = "pca_fit";

/// Scalar reference: the basis of the non-NULL rows, straight from the definition
/// (two passes: mean, then centred covariance), `None` when there are none.
pub fn pca_fit_ref(rows: &[Option<[f64; 9]>]) -> Option<Basis> {
    let xs: Vec<&[f64; 9]> = rows.iter().flatten().collect();
    if xs.is_empty() {
        return None;
    }
    let n = xs.len() as f64;
    let mut mean = [0.0; 9];
    for x in &xs {
        for i in 0..9 {
            mean[i] += x[i];
        }
    }
    for m in &mut mean {
        *m /= n;
    }
    let mut cov = [[0.0; 9]; 9];
    if xs.len() > 1 {
        for x in &xs {
            for i in 0..9 {
                for j in 0..9 {
                    cov[i][j] += (x[i] - mean[i]) * (x[j] - mean[j]);
                }
            }
        }
        for row in &mut cov {
            for v in row.iter_mut() {
                *v /= n - 1.0;
            }
        }
    }
    let (vals, vecs) = crate::common::sym_eigen_desc(&cov);
    let total: f64 = vals.iter().sum();
    let ratio = vals.map(|v| if total > 0.0 { v / total } else { 0.0 });
    Some(Basis {
        n: xs.len() as i64,
        mean,
        components: vecs,
        explained_variance: vals,
        explained_variance_ratio: ratio,
    })
}

/// Vectorised kernel: add the rows of `weights` (skipping NULL rows and rows whose
/// `filter` is false/NULL) into `moments[group_indices[i]]`, pushing each group that
/// was empty (n = 0) onto `touched`.
pub(crate) fn pca_fit_update(
    moments: &mut [Moments],
    weights: &Filters<'_>,
    group_indices: &[usize],
    filter: Option<&BooleanArray>,
    touched: &mut Vec<usize>,
) {
    if weights.nulls().is_none() && filter.is_none() {
        // Runs of one group (a whole batch without GROUP BY) through the SIMD kernel
        // (the bits of `Moments::add` row by row).
        let flat = weights.flat();
        for (g, rows) in group_runs(group_indices) {
            if moments[g].n == 0 {
                touched.push(g);
            }
            let (a, b) = (9 * rows.start, 9 * rows.end);
            match flat {
                Flat::F32(x) => moments[g].add_rows_f32(&x[a..b], &[0.0; 9]),
                Flat::F64(x) => moments[g].add_rows(&x[a..b]),
            }
        }
    } else {
        for (i, &g) in group_indices.iter().enumerate() {
            if weights.is_null(i) || filter.is_some_and(|f| !f.is_valid(i) || !f.value(i)) {
                continue;
            }
            if moments[g].n == 0 {
                touched.push(g);
            }
            moments[g].add(&weights.get(i));
        }
    }
}

/// The sums of every group: exact across batches ([`ExactMoments`]), f64 within one.
#[derive(Debug, Default)]
struct FitState {
    exact: Vec<ExactMoments>,
    /// This batch's sums per group; all zero between batches.
    batch: Vec<Moments>,
    touched: Vec<usize>,
}

impl FitState {
    fn resize(&mut self, n: usize) {
        self.exact.resize(n, ExactMoments::default());
        self.batch.resize(n, Moments::default());
    }

    fn update(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        filter: Option<&BooleanArray>,
    ) -> Result<()> {
        let Some(w) = values.first() else {
            return exec_err!("{NAME}: missing argument");
        };
        let w = Filters::try_new(NAME, w.as_ref())?;
        pca_fit_update(
            &mut self.batch,
            &w,
            group_indices,
            filter,
            &mut self.touched,
        );
        for g in self.touched.drain(..) {
            self.exact[g].absorb(NAME, &self.batch[g])?;
            self.batch[g] = Moments::default();
        }
        Ok(())
    }

    fn merge(&mut self, states: &[ArrayRef], group_indices: &[usize]) -> Result<()> {
        let s = StateCols::try_new(states)?;
        for (i, &g) in group_indices.iter().enumerate() {
            if let Some(m) = s.get(i) {
                self.exact[g].merge(NAME, &m)?;
            }
        }
        Ok(())
    }

    fn take(&mut self, emit_to: EmitTo) -> Vec<ExactMoments> {
        let out = emit_to.take_needed(&mut self.exact);
        let _ = emit_to.take_needed(&mut self.batch);
        out
    }

    fn size(&self) -> usize {
        self.exact.capacity() * size_of::<ExactMoments>()
            + self.batch.capacity() * size_of::<Moments>()
    }
}

/// The state columns `n`, `s1`, `s2`, `non_finite` of a batch of partial states.
struct StateCols<'a> {
    n: &'a UInt64Array,
    s1: &'a FixedSizeListArray,
    s1v: &'a [i128],
    s2: &'a FixedSizeListArray,
    s2v: &'a [i128],
    non_finite: &'a BooleanArray,
}

impl<'a> StateCols<'a> {
    fn try_new(values: &'a [ArrayRef]) -> Result<StateCols<'a>> {
        let [n, s1, s2, non_finite] = values else {
            return exec_err!("{NAME}: expected 4 state columns, got {}", values.len());
        };
        let (Some(n), Some(s1), Some(s2), Some(non_finite)) = (
            n.as_primitive_opt::<UInt64Type>(),
            s1.as_fixed_size_list_opt(),
            s2.as_fixed_size_list_opt(),
            non_finite.as_boolean_opt(),
        ) else {
            return exec_err!("{NAME}: unexpected state types");
        };
        let (Some(s1v), Some(s2v)) = (
            s1.values().as_primitive_opt::<Decimal128Type>(),
            s2.values().as_primitive_opt::<Decimal128Type>(),
        ) else {
            return exec_err!("{NAME}: unexpected state types");
        };
        if s1.value_length() != 9 || s2.value_length() != 45 {
            return exec_err!("{NAME}: unexpected state list lengths");
        }
        Ok(StateCols {
            n,
            s1,
            s1v: s1v.values(),
            s2,
            s2v: s2v.values(),
            non_finite,
        })
    }

    /// Row `i` (`None` when NULL).
    fn get(&self, i: usize) -> Option<ExactMoments> {
        if self.n.is_null(i) || self.s1.is_null(i) || self.s2.is_null(i) {
            return None;
        }
        let o1 = self.s1.value_offset(i) as usize;
        let o2 = self.s2.value_offset(i) as usize;
        let mut m = ExactMoments {
            n: self.n.value(i),
            non_finite: self.non_finite.is_valid(i) && self.non_finite.value(i),
            ..ExactMoments::default()
        };
        m.s1.copy_from_slice(&self.s1v[o1..o1 + 9]);
        m.s2.copy_from_slice(&self.s2v[o2..o2 + 45]);
        Some(m)
    }
}

/// `FixedSizeList<Decimal128(38, 0), n>`: the fixed-point sums as plain `i128`s.
fn fsl_i128_type(n: i32) -> DataType {
    DataType::FixedSizeList(
        Arc::new(Field::new_list_field(DataType::Decimal128(38, 0), true)),
        n,
    )
}

fn fsl_i128(n: i32, values: Vec<i128>) -> Result<FixedSizeListArray> {
    Ok(FixedSizeListArray::try_new(
        Arc::new(Field::new_list_field(DataType::Decimal128(38, 0), true)),
        n,
        Arc::new(Decimal128Array::from(values).with_precision_and_scale(38, 0)?),
        None,
    )?)
}

/// Partial states as Arrow columns `n` UInt64, `s1` / `s2` fixed-size lists of 9 / 45
/// `Decimal128(38, 0)` (the [`ExactMoments`] sums in units of 2^-64) and `non_finite`.
fn state_arrays(ms: &[ExactMoments]) -> Result<Vec<ArrayRef>> {
    let n = UInt64Array::from_iter_values(ms.iter().map(|m| m.n));
    let s1 = fsl_i128(9, ms.iter().flat_map(|m| m.s1).collect())?;
    let s2 = fsl_i128(45, ms.iter().flat_map(|m| m.s2).collect())?;
    let nf = BooleanArray::from(ms.iter().map(|m| m.non_finite).collect::<Vec<_>>());
    Ok(vec![Arc::new(n), Arc::new(s1), Arc::new(s2), Arc::new(nf)])
}

/// The bases of `ms` (NULL where no filter was seen).
fn evaluate_moments(ms: &[ExactMoments]) -> Result<ArrayRef> {
    let bases: Vec<Option<Basis>> = ms
        .iter()
        .map(|m| (m.n > 0).then(|| Basis::from_moments(&m.to_moments())))
        .collect();
    Basis::to_array(&bases)
}

/// The `pca_fit` aggregate.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PcaFitAgg {
    signature: Signature,
}

impl Default for PcaFitAgg {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

static DOC: LazyLock<Documentation> = LazyLock::new(|| {
    DocumentationBuilder::new_with_details(
        DocSection {
            include: true,
            label: "Filter functions",
            description: Some("Functions over 3x3 convolution filters"),
        },
        "Aggregate: fits the PCA basis of a set of filters. With n filters x (NULLs skipped): \
         mean mu = sum(x) / n; covariance C = sum((x - mu)(x - mu)^T) / (n - 1); \
         components = eigenvectors of C as rows, sorted by eigenvalue descending, each \
         multiplied by -1 if needed so that its entry of largest absolute value is positive \
         (scikit-learn's convention); explained_variance = eigenvalues of C; \
         explained_variance_ratio = eigenvalues / sum(eigenvalues) (all 0 if the sum is 0). \
         Returns a struct {n Int64, mean [9], components [9][9] (row k = component k), \
         explained_variance [9], explained_variance_ratio [9]} of Float64, the input of \
         pca_project. Computed in one pass (f64 sums of x and x x^T), so it merges across \
         partitions. NULL when there are no filters; one filter (or identical filters) gives \
         a zero covariance: variances and ratios 0, components the identity rows.",
        "pca_fit(weights)",
    )
    .with_argument(
        "weights",
        "A filter: FixedSizeList of 9 Float16/Float32/Float64 (other lists of 9 numbers are cast to Float64).",
    )
    .with_sql_example(
        "SELECT round(b['explained_variance_ratio'][1], 4) AS r0
FROM (SELECT pca_fit(make_weights(column1, column2, 0, 0, 0, 0, 0, 0, 0)) AS b
      FROM (VALUES (1.0, 1.0), (2.0, 2.5), (3.0, 2.5)));
+--------+
| r0     |
+--------+
| 0.9345 |
+--------+",
    )
    .build()
});

impl AggregateUDFImpl for PcaFitAgg {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [t] = arg_types else {
            return plan_err!(
                "{NAME} expects 1 argument (weights), got {}",
                arg_types.len()
            );
        };
        Ok(vec![coerce_weights(NAME, t)?])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(Basis::data_type())
    }

    fn state_fields(&self, args: StateFieldsArgs<'_>) -> Result<Vec<FieldRef>> {
        let f = |part: &str, t: DataType| {
            Arc::new(Field::new(format_state_name(args.name, part), t, true))
        };
        Ok(vec![
            f("n", DataType::UInt64),
            f("s1", fsl_i128_type(9)),
            f("s2", fsl_i128_type(45)),
            f("non_finite", DataType::Boolean),
        ])
    }

    fn accumulator(&self, _args: AccumulatorArgs<'_>) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(PcaFitAccumulator::default()))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs<'_>) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        _args: AccumulatorArgs<'_>,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(PcaFitGroupsAccumulator::default()))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}

/// `pca_fit` without GROUP BY: the state of one group.
#[derive(Debug)]
pub struct PcaFitAccumulator {
    state: FitState,
}

impl Default for PcaFitAccumulator {
    fn default() -> Self {
        let mut state = FitState::default();
        state.resize(1);
        PcaFitAccumulator { state }
    }
}

impl Accumulator for PcaFitAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let n = values.first().map_or(0, |a| a.len());
        self.state.update(values, &vec![0; n], None)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let a = evaluate_moments(&self.state.exact)?;
        ScalarValue::try_from_array(&a, 0)
    }

    fn size(&self) -> usize {
        size_of::<Self>() + self.state.size()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        state_arrays(&self.state.exact)?
            .iter()
            .map(|a| ScalarValue::try_from_array(a, 0))
            .collect()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let n = states.first().map_or(0, |a| a.len());
        self.state.merge(states, &vec![0; n])
    }
}

/// `pca_fit` per group.
#[derive(Debug, Default)]
pub struct PcaFitGroupsAccumulator {
    state: FitState,
}

impl GroupsAccumulator for PcaFitGroupsAccumulator {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.state.resize(total_num_groups);
        self.state.update(values, group_indices, opt_filter)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        evaluate_moments(&self.state.take(emit_to))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        state_arrays(&self.state.take(emit_to))
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.state.resize(total_num_groups);
        self.state.merge(values, group_indices)
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let n = values.first().map_or(0, |a| a.len());
        let mut rows = FitState::default();
        rows.resize(n);
        let groups: Vec<usize> = (0..n).collect();
        rows.update(values, &groups, opt_filter)?;
        state_arrays(&rows.exact)
    }

    fn size(&self) -> usize {
        self.state.size()
    }
}

/// The singleton `pca_fit` UDAF.
pub fn pca_fit_udaf() -> Arc<AggregateUDF> {
    static UDAF: LazyLock<Arc<AggregateUDF>> =
        LazyLock::new(|| Arc::new(AggregateUDF::from(PcaFitAgg::default())));
    Arc::clone(&UDAF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::testing::{
        Arg, Rng, assert_arrays_close, assert_results_close, run_all_paths,
    };
    use crate::common::{fsl_f64, fsl_f64_type};
    use arrow::array::Float32Array;
    use proptest::prelude::*;

    fn weights(rows: &[Option<[f64; 9]>]) -> ArrayRef {
        let flat: Vec<f64> = rows.iter().flat_map(|r| r.unwrap_or([0.0; 9])).collect();
        let nulls =
            arrow::buffer::NullBuffer::from(rows.iter().map(Option::is_some).collect::<Vec<_>>());
        Arc::new(fsl_f64(9, flat, Some(nulls)).unwrap())
    }

    fn random_rows(rng: &mut Rng, n: usize, null_every: usize) -> Vec<Option<[f64; 9]>> {
        (0..n)
            .map(|i| {
                // anisotropic scales so the eigenvalues are well separated
                let x: [f64; 9] = std::array::from_fn(|k| rng.uniform(-1.0, 1.0) * (9 - k) as f64);
                (null_every == 0 || i % null_every != 1).then_some(x)
            })
            .collect()
    }

    /// Hand case: filters on a line x = t * (1, 2, 0, ...) have one component.
    #[test]
    fn points_on_a_line() {
        let rows: Vec<Option<[f64; 9]>> = [-1.0, 0.0, 1.0, 2.0]
            .iter()
            .map(|&t| {
                let mut x = [0.0; 9];
                x[0] = -t;
                x[1] = -2.0 * t;
                Some(x)
            })
            .collect();
        let b = pca_fit_ref(&rows).unwrap();
        assert_eq!(b.n, 4);
        assert!((b.mean[0] + 0.5).abs() < 1e-15 && (b.mean[1] + 1.0).abs() < 1e-15);
        // var of t = 5/3, along (1,2)/sqrt5 -> eigenvalue 5/3 * 5
        assert!((b.explained_variance[0] - 25.0 / 3.0).abs() < 1e-12);
        assert!((b.explained_variance_ratio[0] - 1.0).abs() < 1e-12);
        // largest |entry| positive
        let s5 = 5f64.sqrt();
        assert!((b.components[0][0] - 1.0 / s5).abs() < 1e-12);
        assert!((b.components[0][1] - 2.0 / s5).abs() < 1e-12);
    }

    #[test]
    fn empty_and_null_groups_are_null_and_one_filter_is_zero_variance() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0];
        let w = weights(&[Some(x), None, None]);
        // group 0: one filter, group 1: only NULL, group 2: no rows
        let r = run_all_paths(&pca_fit_udaf(), &[Arg::Array(w)], &[0, 1, 1], 3, None, 7).unwrap();
        assert_results_close(&r, 0.0, 0.0);
        let b = Basis::from_array(r.one_pass.as_ref(), 0).unwrap().unwrap();
        assert_eq!(b.n, 1);
        assert_eq!(b.mean, x);
        assert_eq!(b.explained_variance, [0.0; 9]);
        assert_eq!(b.explained_variance_ratio, [0.0; 9]);
        assert!(r.one_pass.is_null(1) && r.one_pass.is_null(2));
    }

    #[test]
    fn float16_and_float32_inputs_are_read_exactly() {
        let vals: Vec<f32> = (0..27).map(|k| ((k * 5) % 7) as f32 - 3.0).collect();
        let f32s = Arc::new(
            FixedSizeListArray::try_new(
                Arc::new(Field::new_list_field(DataType::Float32, true)),
                9,
                Arc::new(Float32Array::from(vals.clone())),
                None,
            )
            .unwrap(),
        ) as ArrayRef;
        let f16s = arrow::compute::cast(
            &f32s,
            &DataType::FixedSizeList(Arc::new(Field::new_list_field(DataType::Float16, true)), 9),
        )
        .unwrap();
        let f64s = arrow::compute::cast(&f32s, &fsl_f64_type(9)).unwrap();
        let a =
            run_all_paths(&pca_fit_udaf(), &[Arg::Array(f32s)], &[0, 0, 0], 1, None, 1).unwrap();
        let b =
            run_all_paths(&pca_fit_udaf(), &[Arg::Array(f16s)], &[0, 0, 0], 1, None, 1).unwrap();
        let c =
            run_all_paths(&pca_fit_udaf(), &[Arg::Array(f64s)], &[0, 0, 0], 1, None, 1).unwrap();
        assert_arrays_close(
            a.one_pass.as_ref(),
            b.one_pass.as_ref(),
            0.0,
            0.0,
            "f32 vs f16",
        );
        assert_arrays_close(
            a.one_pass.as_ref(),
            c.one_pass.as_ref(),
            0.0,
            0.0,
            "f32 vs f64",
        );
    }

    #[test]
    fn basis_is_orthonormal() {
        let mut rng = Rng::new(3);
        let b = pca_fit_ref(&random_rows(&mut rng, 200, 0)).unwrap();
        for i in 0..9 {
            for j in 0..9 {
                let d: f64 = (0..9)
                    .map(|k| b.components[i][k] * b.components[j][k])
                    .sum();
                let e = if i == j { 1.0 } else { 0.0 };
                assert!((d - e).abs() < 1e-9, "{i} {j} {d}");
            }
        }
    }

    #[test]
    fn list_input_is_coerced() {
        let t = DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true)));
        assert_eq!(
            PcaFitAgg::default().coerce_types(&[t]).unwrap(),
            vec![fsl_f64_type(9)]
        );
        assert!(
            PcaFitAgg::default()
                .coerce_types(&[DataType::Utf8])
                .is_err()
        );
        assert!(PcaFitAgg::default().coerce_types(&[]).is_err());
    }

    /// Bases agree: same n; mean, variances and ratios within `tol` (relative to the
    /// largest variance); each component up to `sqrt(tol)`-ish where its eigenvalue is
    /// separated from its neighbours (within a degenerate eigenspace, e.g. the null
    /// space of fewer than 10 filters, the eigenvectors are not unique).
    fn bases_close(a: &Option<Basis>, b: &Option<Basis>, tol: f64) -> bool {
        let (a, b) = match (a, b) {
            (None, None) => return true,
            (Some(a), Some(b)) => (a, b),
            _ => return false,
        };
        let scale = 1.0 + a.explained_variance[0];
        let near = |x: f64, y: f64, t: f64| (x - y).abs() <= t;
        if a.n != b.n {
            return false;
        }
        for k in 0..9 {
            if !near(a.mean[k], b.mean[k], tol * (1.0 + a.mean[k].abs()))
                || !near(
                    a.explained_variance[k],
                    b.explained_variance[k],
                    tol * scale * 10.0,
                )
                || !near(
                    a.explained_variance_ratio[k],
                    b.explained_variance_ratio[k],
                    tol * 10.0,
                )
            {
                return false;
            }
            let ev = &a.explained_variance;
            let gap = [
                k.checked_sub(1).map(|j| ev[j] - ev[k]),
                (k < 8).then(|| ev[k] - ev[k + 1]),
            ]
            .into_iter()
            .flatten()
            .fold(f64::INFINITY, f64::min);
            if gap > 1e-3 * scale {
                // eigenvector perturbation ~ |dC| / gap
                let t = 1e-6;
                if !(0..9).all(|i| near(a.components[k][i], b.components[k][i], t)) {
                    return false;
                }
            }
        }
        true
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Every accumulator path equals the two-pass reference per group.
        #[test]
        fn all_paths_match_reference(seed in any::<u64>(), n in 0usize..300, groups in 1usize..5) {
            let mut rng = Rng::new(seed);
            let rows = random_rows(&mut rng, n, 7);
            let gi: Vec<usize> = (0..n).map(|_| rng.below(groups)).collect();
            let mask: Vec<bool> = (0..n).map(|_| rng.below(5) != 0).collect();
            let mask = BooleanArray::from(mask);
            let use_mask = seed % 2 == 0;
            let r = run_all_paths(&pca_fit_udaf(), &[Arg::Array(weights(&rows))], &gi, groups,
                use_mask.then_some(&mask), seed).unwrap();
            let expected: Vec<Option<Basis>> = (0..groups).map(|g| {
                let sel: Vec<Option<[f64; 9]>> = (0..n)
                    .filter(|&i| gi[i] == g && (!use_mask || mask.value(i)))
                    .map(|i| rows[i]).collect();
                pca_fit_ref(&sel)
            }).collect();
            for (name, arr) in r.named() {
                for (g, e) in expected.iter().enumerate() {
                    let got = Basis::from_array(arr.as_ref(), g).unwrap();
                    prop_assert!(bases_close(e, &got, 1e-9), "{name} group {g}: {e:?} vs {got:?}");
                }
            }
        }
    }
}
