//! `pca_project(weights, basis [, peak_scale])`: the 9 PCA coefficients of a filter,
//! `c = (x - mean) . V^T`.
//!
//! MISSION.md section 3, "PCA projection": `basis` is the struct `pca_fit` returns
//! ([`Basis`]: `n`, `mean`, `components` (rows, by explained variance descending),
//! `explained_variance`, `explained_variance_ratio`); coefficient `k` is the dot product
//! of component `k` with the centred filter, in f64. `basis` is usually one value for the
//! whole query — an uncorrelated scalar subquery `(SELECT pca_fit(...) FROM ...)` — and is
//! then read once; a basis column (e.g. after a join) is read row by row. A struct with
//! the same five field names (e.g. a `named_struct` literal) is cast to the basis type.
//! NULL weights or a NULL basis give NULL. Like scikit-learn's `PCA.transform`.
//!
//! `pca_project(weights, basis, true)` peak-scales each filter first. The planner
//! rewrites `pca_project(peak_scale(w), basis)` to it ([`ScalarUDFImpl::simplify`]), so
//! the KL pipeline's passes widen, scale and project float16 filters a chunk at a time
//! while the chunk is in L1 ([`Basis::project_into`]) instead of materialising the
//! widened and the scaled batch; the bits are those of the two steps.

use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, AsArray, FixedSizeListArray, StructArray};
use arrow::buffer::NullBuffer;
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Fields, Float64Type, Int64Type};
use datafusion::common::{Result, ScalarValue, exec_datafusion_err, exec_err, plan_err};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, DocSection, Documentation, DocumentationBuilder, Expr, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, Volatility, lit,
};

use crate::common::{
    Basis, Filters, Flat, Src, coerce_weights, f16_rows, fsl_f64, fsl_f64_type, zero_null_rows,
};
use crate::scalar::peak_scale::peak_scale_kernel;

/// Scalar reference: a naive matrix-vector product, `c_k = sum_j (x_j - mean_j) V_kj`.
pub fn pca_project_ref(x: &[f64; 9], mean: &[f64; 9], components: &[[f64; 9]; 9]) -> [f64; 9] {
    let mut c = [0.0; 9];
    for k in 0..9 {
        for j in 0..9 {
            c[k] += (x[j] - mean[j]) * components[k][j];
        }
    }
    c
}

/// Vectorised kernel for one basis shared by every row: a flat f64 output buffer, the
/// input's validity bitmap.
pub fn pca_project_kernel(f: &Filters<'_>, basis: &Basis) -> Result<FixedSizeListArray> {
    let src = Src::of(f);
    // SAFETY: `project_into` writes every coefficient of every row.
    let mut values =
        unsafe { crate::simd::filled_vec(src.values(), |o| basis.project_into(src, false, o)) };
    zero_null_rows(&mut values, f.nulls());
    fsl_f64(9, values, f.nulls().cloned())
}

/// The kernel behind the SQL function: the filters of `weights` (peak-scaled first
/// when `scale`) projected on one basis (`Scalar`) or row `i` on basis `i` (a basis
/// column); NULL where the filter or its basis is NULL. Each run of rows sharing a basis
/// (a basis column usually holds one, from a join with the fitted basis) is decoded once
/// and projected straight into the output ([`Basis::project_into`]); float16 filters are
/// widened a chunk at a time, never whole.
///
/// # Errors
/// An execution error if `weights` is not a list of 9 floats or `bases` is not a basis
/// array of the same length.
pub fn pca_project_batch(
    weights: &dyn Array,
    bases: &ColumnarValue,
    scale: bool,
) -> Result<FixedSizeListArray> {
    let n = weights.len();
    // float64 filters are scaled by peak_scale's kernel first: its f32 output is what
    // the two-step form projects.
    let prescaled = match (scale, f16_rows(weights)) {
        (true, None) => {
            let f = Filters::try_new("pca_project", weights)?;
            match f.flat() {
                Flat::F64(_) => Some(peak_scale_kernel(&f)?),
                Flat::F32(_) => None,
            }
        }
        _ => None,
    };
    let (weights, scale) = match &prescaled {
        Some(p) => (p as &dyn Array, false),
        None => (weights, scale),
    };
    let filters = match f16_rows(weights) {
        Some(_) => None,
        None => Some(Filters::try_new("pca_project", weights)?),
    };
    let src = match (&filters, f16_rows(weights)) {
        (Some(f), _) => Src::of(f),
        (None, Some(r)) => Src::F16(r),
        (None, None) => unreachable!("float16 rows were found above"),
    };
    // (rows, basis) runs
    let runs: Vec<(Range<usize>, Option<Basis>)> = match bases {
        ColumnarValue::Scalar(ScalarValue::Null) => vec![(0..n, None)],
        ColumnarValue::Scalar(s) => {
            let b = conform_struct(
                "pca_project",
                "a PCA basis",
                &s.to_array()?,
                &Basis::fields(),
            )?;
            vec![(0..n, Basis::from_array(b.as_ref(), 0)?)]
        }
        ColumnarValue::Array(bases) => {
            let b = conform_struct("pca_project", "a PCA basis", bases, &Basis::fields())?;
            if b.len() != n {
                return exec_err!("pca_project: {n} filters but {} bases", b.len());
            }
            let rows = BasisRows::try_new(b.as_ref())?;
            let mut runs = Vec::new();
            let mut i = 0;
            while i < n {
                let mut end = i + 1;
                while end < n && rows.same(i, end) {
                    end += 1;
                }
                runs.push((i..end, rows.get(i)?));
                i = end;
            }
            runs
        }
    };
    let fill = |o: &mut [MaybeUninit<f64>]| {
        for (r, b) in &runs {
            let out = &mut o[9 * r.start..9 * r.end];
            match b {
                Some(b) => b.project_into(src.rows(r.clone()), scale, out),
                None => {
                    for v in out {
                        v.write(0.0);
                    }
                }
            }
        }
    };
    // SAFETY: the runs cover every row, and each writes all 9 values of its rows.
    let mut values = unsafe { crate::simd::filled_vec(9 * n, fill) };
    let mut valid: Option<Vec<bool>> = None;
    for (r, b) in &runs {
        if b.is_none() {
            valid.get_or_insert_with(|| vec![true; n])[r.clone()].fill(false);
        }
    }
    zero_null_rows(&mut values, weights.nulls());
    if let Some(nulls) = weights.nulls() {
        let v = valid.get_or_insert_with(|| vec![true; n]);
        for i in (0..n).filter(|&i| nulls.is_null(i)) {
            v[i] = false;
        }
    }
    let nulls = valid.map(NullBuffer::from).filter(|v| v.null_count() > 0);
    fsl_f64(9, values, nulls)
}

/// A basis column read row by row: [`Basis::from_array`], plus a cheap test of whether
/// two rows hold the same basis (their raw float64 fields compared) when the fields are
/// float64, as `pca_fit` returns them.
struct BasisRows<'a> {
    array: &'a dyn Array,
    /// The float64 values of mean, components, explained_variance and
    /// explained_variance_ratio (9, 81, 9, 9 per row) and n, when they are float64.
    raw: Option<([&'a [f64]; 4], &'a [i64])>,
}

impl<'a> BasisRows<'a> {
    fn try_new(array: &'a dyn Array) -> Result<BasisRows<'a>> {
        let Some(s) = array.as_struct_opt() else {
            return exec_err!(
                "expected a PCA basis (the struct pca_fit returns), got {}",
                array.data_type()
            );
        };
        let flat = |name: &str, per: usize| -> Option<&'a [f64]> {
            let mut a = s.column_by_name(name)?.as_fixed_size_list_opt()?;
            let mut width = a.value_length() as usize;
            let mut unsliced = a.offset() == 0;
            if let Some(inner) = a.values().as_fixed_size_list_opt() {
                width *= inner.value_length() as usize;
                unsliced &= inner.offset() == 0;
                a = inner;
            }
            let v = a.values().as_primitive_opt::<Float64Type>()?;
            (width == per && unsliced)
                .then(|| v.values().as_ref())
                .filter(|v| v.len() >= per * s.len())
        };
        let n = s
            .column_by_name("n")
            .and_then(|a| a.as_primitive_opt::<Int64Type>())
            .filter(|a| a.offset() == 0)
            .map(|a| a.values().as_ref());
        let raw = match (
            flat("mean", 9),
            flat("components", 81),
            flat("explained_variance", 9),
            flat("explained_variance_ratio", 9),
            n,
        ) {
            (Some(a), Some(b), Some(c), Some(d), Some(n)) if s.nulls().is_none() => {
                Some(([a, b, c, d], n))
            }
            _ => None,
        };
        Ok(BasisRows { array, raw })
    }

    fn get(&self, row: usize) -> Result<Option<Basis>> {
        Basis::from_array(self.array, row)
    }

    /// Whether rows `a` and `b` hold bit-identical bases (false when unknown).
    fn same(&self, a: usize, b: usize) -> bool {
        let Some((fields, n)) = &self.raw else {
            return false;
        };
        n[a] == n[b]
            && fields.iter().zip([9, 81, 9, 9]).all(|(v, per)| {
                v[per * a..per * (a + 1)]
                    .iter()
                    .zip(&v[per * b..per * (b + 1)])
                    .all(|(x, y)| x.to_bits() == y.to_bits())
            })
    }
}

/// Check the basis argument for `coerce_types`: a struct with (at least) the five basis
/// fields is kept as is and cast field by field at run time ([`conform_struct`]), since
/// DataFusion does not cast a struct to one with non-nullable fields; NULL becomes the
/// basis type.
fn coerce_basis(t: &DataType) -> Result<DataType> {
    match t {
        DataType::Null => Ok(Basis::data_type()),
        DataType::Struct(fields)
            if Basis::fields()
                .iter()
                .all(|want| fields.iter().any(|f| f.name() == want.name())) =>
        {
            Ok(t.clone())
        }
        other => plan_err!(
            "pca_project expects basis as the struct pca_fit returns \
             (n, mean, components, explained_variance, explained_variance_ratio), got {other}"
        ),
    }
}

/// Cast the fields of a struct array, picked by name, to `target` (e.g. a `named_struct`
/// literal, whose lists are `List`, to the basis type); unchanged if already `target`.
///
/// # Errors
/// An execution error naming `func` and `what` when a field is missing or does not cast
/// (e.g. a list of the wrong length) or is NULL in a non-NULL row.
pub(crate) fn conform_struct(
    func: &str,
    what: &str,
    array: &ArrayRef,
    target: &Fields,
) -> Result<ArrayRef> {
    let Some(s) = array.as_struct_opt() else {
        return exec_err!("{func}: expected {what}, got {}", array.data_type());
    };
    if s.fields() == target {
        return Ok(Arc::clone(array));
    }
    let opts = CastOptions {
        safe: false,
        ..CastOptions::default()
    };
    let columns = target
        .iter()
        .map(|f| match s.column_by_name(f.name()) {
            Some(c) => cast_with_options(c, f.data_type(), &opts)
                .map_err(|e| exec_datafusion_err!("{func}: {what} field {}: {e}", f.name())),
            None => exec_err!("{func}: {what} has no field {}", f.name()),
        })
        .collect::<Result<Vec<_>>>()?;
    let out = StructArray::try_new(target.clone(), columns, s.nulls().cloned())
        .map_err(|e| exec_datafusion_err!("{func}: invalid {what}: {e}"))?;
    Ok(Arc::new(out))
}

/// The `pca_project` SQL function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PcaProjectFunc {
    signature: Signature,
}

impl Default for PcaProjectFunc {
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
        "Projects a 3x3 filter onto a PCA basis: `c = (x - mean) . components^T`, the 9 \
         coefficients in order of explained variance (Float64). `basis` is the struct `pca_fit` \
         returns, usually from a scalar subquery; a struct with the same five field names is \
         cast to it. NULL weights or a NULL basis give NULL.",
        "pca_project(weights, basis [, peak_scale])",
    )
    .with_argument(
        "weights",
        "A filter: FixedSizeList<Float16|Float32|Float64, 9> (row-major (kh, kw)); other lists \
         of 9 numbers are cast to Float64. Project the same kind of filters the basis was fitted \
         on (usually `peak_scale(weights)`).",
    )
    .with_argument(
        "peak_scale",
        "Optional constant Boolean, default false: when true each filter is peak-scaled \
         first, exactly as `pca_project(peak_scale(weights), basis)`, which the planner \
         rewrites to this form so the scaled filters are never materialised.",
    )
    .with_argument(
        "basis",
        "Struct {n: Int64, mean: FixedSizeList<Float64, 9>, components: FixedSizeList<FixedSizeList<Float64, 9>, 9>, \
         explained_variance, explained_variance_ratio: FixedSizeList<Float64, 9>}, as returned by `pca_fit`; \
         a constant or a column.",
    )
    .with_sql_example(
        r#"```sql
> SELECT round(pca_project([0, 0, 0, 0, 0, 0, 0, 0, 0],
         (SELECT pca_fit(w) FROM (VALUES ([0, 0, 0, 0, 0, 0, 0, 0, 0]), ([-3, -4, 0, 0, 0, 0, 0, 0, 0])) AS t(w)))[1], 6) AS c0;
+-----+
| c0  |
+-----+
| 2.5 |
+-----+
-- Typical use: coefficients of every filter in the basis of all peak-scaled filters
> SELECT pca_project(peak_scale(weights), (SELECT pca_fit(peak_scale(weights)) FROM filters)) AS c FROM filters;
```"#,
    )
    .build()
});

impl ScalarUDFImpl for PcaProjectFunc {
    fn name(&self) -> &str {
        "pca_project"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types {
            [w, b] => Ok(vec![coerce_weights("pca_project", w)?, coerce_basis(b)?]),
            [w, b, DataType::Boolean | DataType::Null] => Ok(vec![
                coerce_weights("pca_project", w)?,
                coerce_basis(b)?,
                DataType::Boolean,
            ]),
            [_, _, other] => plan_err!("pca_project: peak_scale must be a boolean, got {other}"),
            _ => plan_err!(
                "pca_project expects 2 or 3 arguments (weights, basis [, peak_scale]), got {}",
                arg_types.len()
            ),
        }
    }

    /// `pca_project(peak_scale(w), basis)` becomes `pca_project(w, basis, true)`: the same
    /// bits, computed without materialising the scaled filters.
    fn simplify(&self, mut args: Vec<Expr>, _info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        if args.len() == 2
            && let Expr::ScalarFunction(inner) = &args[0]
            && inner.func.name() == "peak_scale"
            && inner.args.len() == 1
        {
            let w = inner.args[0].clone();
            let b = args.swap_remove(1);
            return Ok(ExprSimplifyResult::Simplified(
                pca_project_udf().call(vec![w, b, lit(true)]),
            ));
        }
        Ok(ExprSimplifyResult::Original(args))
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(fsl_f64_type(9))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (w, b, scale) = match args.args.as_slice() {
            [w, b] => (w, b, false),
            [w, b, ColumnarValue::Scalar(ScalarValue::Boolean(Some(s)))] => (w, b, *s),
            [_, _, _] => {
                return exec_err!("pca_project: peak_scale must be a constant true or false");
            }
            other => {
                return plan_err!(
                    "pca_project expects 2 or 3 arguments (weights, basis [, peak_scale]), got {}",
                    other.len()
                );
            }
        };
        let a = w.to_array(args.number_rows)?;
        let out = pca_project_batch(a.as_ref(), b, scale)?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}

/// The singleton `pca_project` UDF.
pub fn pca_project_udf() -> Arc<ScalarUDF> {
    static UDF: LazyLock<Arc<ScalarUDF>> =
        LazyLock::new(|| Arc::new(ScalarUDF::from(PcaProjectFunc::default())));
    Arc::clone(&UDF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::Moments;
    use arrow::array::AsArray;
    use arrow::datatypes::{Field, Float64Type};
    use datafusion::config::ConfigOptions;
    use proptest::prelude::*;

    fn filters(rows: &[[f64; 9]], nulls: Option<NullBuffer>) -> FixedSizeListArray {
        fsl_f64(9, rows.iter().flatten().copied().collect(), nulls).unwrap()
    }

    fn row(out: &FixedSizeListArray, i: usize) -> Vec<f64> {
        out.value(i).as_primitive::<Float64Type>().values().to_vec()
    }

    /// A basis with mean (1, 2, ..., 9) and the permutation components e_8, e_7, ..., e_0.
    fn reversed_basis() -> Basis {
        let mut components = [[0.0; 9]; 9];
        for (k, c) in components.iter_mut().enumerate() {
            c[8 - k] = 1.0;
        }
        Basis {
            n: 10,
            mean: std::array::from_fn(|i| (i + 1) as f64),
            components,
            explained_variance: std::array::from_fn(|i| (9 - i) as f64),
            explained_variance_ratio: std::array::from_fn(|i| (9 - i) as f64 / 45.0),
        }
    }

    fn invoke(w: ColumnarValue, b: ColumnarValue, rows: usize) -> FixedSizeListArray {
        call(vec![(fsl_f64_type(9), w), (Basis::data_type(), b)], rows)
    }

    /// `pca_project` on `args` (each with its type), `rows` rows.
    fn call(args: Vec<(DataType, ColumnarValue)>, rows: usize) -> FixedSizeListArray {
        let (types, args): (Vec<DataType>, Vec<ColumnarValue>) = args.into_iter().unzip();
        let args = ScalarFunctionArgs {
            arg_fields: types
                .into_iter()
                .enumerate()
                .map(|(i, t)| Arc::new(Field::new(format!("a{i}"), t, true)))
                .collect(),
            args,
            number_rows: rows,
            return_field: Arc::new(Field::new("r", fsl_f64_type(9), true)),
            config_options: Arc::new(ConfigOptions::default()),
        };
        let out = PcaProjectFunc::default().invoke_with_args(args).unwrap();
        let ColumnarValue::Array(a) = out else {
            panic!("expected an array")
        };
        a.as_fixed_size_list().clone()
    }

    #[test]
    fn hand_case_permutation_basis() {
        let b = reversed_basis();
        let a = filters(
            &[[0.0; 9], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0]],
            None,
        );
        let out = pca_project_kernel(&Filters::try_new("t", &a).unwrap(), &b).unwrap();
        // x - mean reversed.
        assert_eq!(
            row(&out, 0),
            vec![-9.0, -8.0, -7.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0]
        );
        assert_eq!(
            row(&out, 1),
            vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        );
    }

    /// A basis column with runs of equal bases, a change of basis and a NULL basis:
    /// every row is projected on its own basis, as row-by-row `project` does.
    #[test]
    fn basis_column_with_runs_projects_each_row_on_its_basis() {
        let b1 = reversed_basis();
        let mut b2 = reversed_basis();
        b2.mean[0] = -3.5;
        b2.components.swap(0, 1);
        // with a NULL basis (decoded row by row) and without (runs compared raw)
        for which in [
            [
                Some(&b1),
                Some(&b1),
                Some(&b2),
                None,
                Some(&b2),
                Some(&b1),
                Some(&b1),
            ],
            [
                Some(&b1),
                Some(&b1),
                Some(&b2),
                Some(&b2),
                Some(&b2),
                Some(&b1),
                Some(&b1),
            ],
        ] {
            check_basis_runs(&which);
        }
    }

    fn check_basis_runs(which: &[Option<&Basis>]) {
        let bases: Vec<Option<Basis>> = which.iter().map(|b| b.cloned()).collect();
        let rows: Vec<[f64; 9]> = (0..which.len())
            .map(|i| std::array::from_fn(|j| (i * 9 + j) as f64 * 0.37 - 4.0))
            .collect();
        let a = filters(&rows, None);
        let out = invoke(
            ColumnarValue::Array(Arc::new(a)),
            ColumnarValue::Array(Basis::to_array(&bases).unwrap()),
            rows.len(),
        );
        for (i, b) in which.iter().enumerate() {
            match b {
                Some(b) => {
                    let want: Vec<u64> = b.project(&rows[i]).iter().map(|v| v.to_bits()).collect();
                    let got: Vec<u64> = row(&out, i).iter().map(|v| v.to_bits()).collect();
                    assert_eq!(got, want, "row {i}");
                }
                None => assert!(out.is_null(i), "row {i}"),
            }
        }
    }

    #[test]
    fn scalar_and_array_basis_agree_and_nulls_propagate() {
        let b = reversed_basis();
        let rows = [[1.0; 9], [2.0; 9], [3.0; 9]];
        let a = filters(&rows, Some(NullBuffer::from(vec![true, false, true])));
        let scalar =
            ScalarValue::try_from_array(&Basis::to_array(&[Some(b.clone())]).unwrap(), 0).unwrap();
        let out_s = invoke(
            ColumnarValue::Array(Arc::new(a.clone())),
            ColumnarValue::Scalar(scalar),
            3,
        );
        let bases = Basis::to_array(&[Some(b.clone()), Some(b.clone()), None]).unwrap();
        let out_a = invoke(
            ColumnarValue::Array(Arc::new(a.clone())),
            ColumnarValue::Array(bases),
            3,
        );
        assert!(out_s.is_valid(0) && out_s.is_null(1) && out_s.is_valid(2));
        assert!(out_a.is_valid(0) && out_a.is_null(1) && out_a.is_null(2));
        assert_eq!(row(&out_s, 0), row(&out_a, 0));
        assert_eq!(
            row(&out_s, 2),
            pca_project_ref(&[3.0; 9], &b.mean, &b.components)
        );
        let null_basis = invoke(
            ColumnarValue::Array(Arc::new(a)),
            ColumnarValue::Scalar(ScalarValue::Null),
            3,
        );
        assert_eq!(null_basis.null_count(), 3);
    }

    #[test]
    fn empty_input() {
        let a = filters(&[], None);
        let out =
            pca_project_kernel(&Filters::try_new("t", &a).unwrap(), &reversed_basis()).unwrap();
        assert_eq!(out.len(), 0);
    }

    #[test]
    fn fitted_basis_decorrelates_and_preserves_norm() {
        // Projecting the fitting set gives mean-zero coefficients whose sample variances
        // are the explained variances, and (orthonormal basis) |c| = |x - mean|.
        let rows: Vec<[f64; 9]> = (0..50)
            .map(|k| {
                std::array::from_fn(|i| {
                    (((k * 13 + i * 7) % 17) as f64 - 8.0) * (1.0 + i as f64 / 4.0)
                })
            })
            .collect();
        let mut m = Moments::default();
        rows.iter().for_each(|r| m.add(r));
        let b = Basis::from_moments(&m);
        let a = filters(&rows, None);
        let out = pca_project_kernel(&Filters::try_new("t", &a).unwrap(), &b).unwrap();
        let mut var = [0.0; 9];
        for (i, r) in rows.iter().enumerate() {
            let c = row(&out, i);
            let dn: f64 = r.iter().zip(&b.mean).map(|(x, mu)| (x - mu).powi(2)).sum();
            let cn: f64 = c.iter().map(|v| v * v).sum();
            assert!((dn - cn).abs() <= 1e-9 * dn.max(1.0));
            for (v, ck) in var.iter_mut().zip(&c) {
                *v += ck * ck / 49.0;
            }
        }
        for (v, ev) in var.iter().zip(&b.explained_variance) {
            assert!((v - ev).abs() <= 1e-9 * b.explained_variance[0]);
        }
    }

    proptest! {
        #[test]
        // Bounded so that f64 rounding stays far below the 1e-9 tolerance.
        fn kernel_matches_reference(
            rows in proptest::collection::vec(proptest::array::uniform9(-10f64..10f64), 0..160),
            mean in proptest::array::uniform9(-1f64..1f64),
            comps in proptest::array::uniform9(proptest::array::uniform9(-1f64..1f64)),
        ) {
            let b = Basis { n: 1, mean, components: comps, explained_variance: [0.0; 9], explained_variance_ratio: [0.0; 9] };
            let a = filters(&rows, None);
            let out = pca_project_kernel(&Filters::try_new("t", &a).unwrap(), &b).unwrap();
            for (i, r) in rows.iter().enumerate() {
                let want = pca_project_ref(r, &mean, &comps);
                for (g, w) in row(&out, i).iter().zip(&want) {
                    prop_assert!((g - w).abs() <= 1e-9 * w.abs().max(1.0));
                }
            }
        }
    }

    /// float16 filters (rows of random f16 bit patterns, some NaN or infinite), with
    /// NULL rows, as a slice of a longer list: the fused `pca_project(w, b, true)`.
    fn f16_filters(bits: &[[u16; 9]], nulls: &[bool]) -> FixedSizeListArray {
        use arrow::array::Float16Array;
        let mut vals: Vec<half::f16> = vec![half::f16::from_f32(0.5); 9];
        vals.extend(bits.iter().flatten().map(|&b| half::f16::from_bits(b)));
        let mut valid = vec![true];
        valid.extend(nulls.iter().map(|n| !n));
        FixedSizeListArray::try_new(
            Arc::new(Field::new_list_field(DataType::Float16, true)),
            9,
            Arc::new(Float16Array::from(vals)),
            Some(NullBuffer::from(valid)),
        )
        .unwrap()
        .slice(1, bits.len())
    }

    fn invoke_scaled(w: &FixedSizeListArray, b: &Basis) -> FixedSizeListArray {
        let basis =
            ScalarValue::try_from_array(&Basis::to_array(&[Some(b.clone())]).unwrap(), 0).unwrap();
        call(
            vec![
                (
                    w.data_type().clone(),
                    ColumnarValue::Array(Arc::new(w.clone())),
                ),
                (Basis::data_type(), ColumnarValue::Scalar(basis)),
                (
                    DataType::Boolean,
                    ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))),
                ),
            ],
            w.len(),
        )
    }

    proptest! {
        /// The fused form gives the bits of `pca_project(peak_scale(w), b)`, across
        /// chunk boundaries, for NULL, NaN and infinite filters.
        #[test]
        fn fused_peak_scale_matches_the_two_steps(
            bits in proptest::collection::vec(proptest::array::uniform9(any::<u16>()), 0..700),
            nulls in proptest::collection::vec(any::<bool>(), 700),
        ) {
            let w = f16_filters(&bits, &nulls[..bits.len()]);
            let b = reversed_basis();
            let fused = invoke_scaled(&w, &b);
            let f = Filters::try_new("t", &w).unwrap();
            let scaled = peak_scale_kernel(&f).unwrap();
            let two = pca_project_kernel(&Filters::try_new("t", &scaled).unwrap(), &b).unwrap();
            let nulls = |a: &FixedSizeListArray| (0..a.len()).map(|i| a.is_null(i)).collect::<Vec<_>>();
            prop_assert_eq!(nulls(&fused), nulls(&two));
            let (x, y) = (fused.values().as_primitive::<Float64Type>(), two.values().as_primitive::<Float64Type>());
            prop_assert_eq!(x.len(), y.len());
            for (a, c) in x.values().iter().zip(y.values()) {
                prop_assert!(a.to_bits() == c.to_bits() || (a.is_nan() && c.is_nan()), "{a} vs {c}");
            }
        }
    }
}
