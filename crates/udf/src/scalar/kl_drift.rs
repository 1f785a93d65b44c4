//! `kl_drift(hist_a, hist_b [, weights])`: the paper's drift between two groups of filters,
//! a weighted symmetric Kullback–Leibler divergence of their coefficient histograms, in nats.
//!
//! MISSION.md section 3, "Drift": for each PCA coefficient `i`, `p_i` and `q_i` are the
//! bin probabilities of `hist_a` and `hist_b` (values of `coef_histogram`, see
//! [`Histogram`]) by the paper's rule — density `count / (total * bin_width)`, empty bins set
//! to float32 epsilon, renormalised ([`Histogram::probabilities`]) — and
//!
//! `D = sum_i w_i * (KL(p_i || q_i) + KL(q_i || p_i))`, `KL(p || q) = sum_b p_b ln(p_b / q_b)`,
//!
//! with `w` = `weights` (9 numbers, typically `pca_fit(...)['explained_variance_ratio']`;
//! not renormalised) or uniform `1/9` when omitted. Every probability is positive, so `D`
//! is finite. Each term equals `scipy.stats.entropy(p, q) + scipy.stats.entropy(q, p)`.
//! A coefficient with no counts in range has uniform probabilities.
//! NULL in any argument gives NULL; histograms with different `lo`, `hi` or `bins` are an
//! execution error (they would compare different bins).

use std::sync::{Arc, LazyLock};

use arrow::array::{Array, AsArray, Float64Array, StructArray};
use arrow::buffer::{NullBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Fields, Float64Type, Int64Type};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, DocSection, Documentation, DocumentationBuilder, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};

use crate::common::{EPS32, Filters, Histogram, coerce_weights};
use crate::scalar::pca_project::conform_struct;

/// Uniform coefficient weights, the documented default.
const UNIFORM: [f64; 9] = [1.0 / 9.0; 9];

/// Whether two histogram ranges are the same up to float rounding: a relative
/// difference of at most 1e-9 of the range width. Ranges computed by the same query
/// in different parallel plans differ in the last bits (f64 sums in another order);
/// bins that far apart are the same bins for any count.
pub fn same_range(lo_a: f64, hi_a: f64, lo_b: f64, hi_b: f64) -> bool {
    let tol = 1e-9 * (hi_a - lo_a).abs().max(hi_b - lo_b).max(f64::MIN_POSITIVE);
    (lo_a - lo_b).abs() <= tol && (hi_a - hi_b).abs() <= tol
}

/// Scalar reference: `sum_i w_i (KL(p_i||q_i) + KL(q_i||p_i))` from
/// [`Histogram::probabilities`], two plain KL sums per coefficient.
///
/// # Errors
/// An execution error when the histograms have different `lo`, `hi` (beyond
/// [`same_range`]'s rounding tolerance) or `bins`.
pub fn kl_drift_ref(a: &Histogram, b: &Histogram, w: &[f64; 9]) -> Result<f64> {
    if !same_range(a.lo, a.hi, b.lo, b.hi) || a.bins != b.bins {
        return exec_err!(
            "kl_drift: histograms differ in range or bins: [{}, {}] x {} vs [{}, {}] x {}",
            a.lo,
            a.hi,
            a.bins,
            b.lo,
            b.hi,
            b.bins
        );
    }
    let kl = |p: &[f64], q: &[f64]| -> f64 { p.iter().zip(q).map(|(p, q)| p * (p / q).ln()).sum() };
    let mut d = 0.0;
    for (i, wi) in w.iter().enumerate() {
        let (p, q) = (a.probabilities(i), b.probabilities(i));
        d += wi * (kl(&p, &q) + kl(&q, &p));
    }
    Ok(d)
}

/// The paper's probabilities of one coefficient's counts, written into `out`
/// (same rule and operation order as [`Histogram::probabilities`]).
#[inline]
fn probabilities_into(counts: &[i64], width: f64, out: &mut [f64]) {
    let total = counts.iter().sum::<i64>() as f64;
    let mut s = 0.0;
    for (d, &k) in out.iter_mut().zip(counts) {
        *d = if k == 0 || total == 0.0 {
            EPS32
        } else {
            k as f64 / (total * width)
        };
        s += *d;
    }
    for d in out.iter_mut() {
        *d /= s;
    }
}

/// Borrowed columns of a histogram struct array.
struct HistColumns<'a> {
    lo: &'a [f64],
    hi: &'a [f64],
    bins: &'a [i64],
    offsets: &'a [i32],
    counts: &'a [i64],
    nulls: Option<&'a NullBuffer>,
}

impl<'a> HistColumns<'a> {
    fn try_new(s: &'a StructArray) -> Result<HistColumns<'a>> {
        let col = |name: &str| match s.column_by_name(name) {
            Some(c) => Ok(c),
            None => exec_err!("kl_drift: histogram has no field {name}"),
        };
        let (Some(lo), Some(hi), Some(bins), Some(counts)) = (
            col("lo")?.as_primitive_opt::<Float64Type>(),
            col("hi")?.as_primitive_opt::<Float64Type>(),
            col("bins")?.as_primitive_opt::<Int64Type>(),
            col("counts")?.as_list_opt::<i32>(),
        ) else {
            return exec_err!("kl_drift: expected a histogram as coef_histogram returns");
        };
        let Some(values) = counts.values().as_primitive_opt::<Int64Type>() else {
            return exec_err!("kl_drift: histogram counts must be List<Int64>");
        };
        Ok(HistColumns {
            lo: lo.values(),
            hi: hi.values(),
            bins: bins.values(),
            offsets: counts.value_offsets(),
            counts: values.values(),
            nulls: s.nulls(),
        })
    }

    fn is_null(&self, i: usize) -> bool {
        self.nulls.is_some_and(|n| n.is_null(i))
    }

    /// Counts of row `i`, checked to hold 9 x bins values.
    fn counts(&self, i: usize) -> Result<&'a [i64]> {
        let (s, e) = (self.offsets[i] as usize, self.offsets[i + 1] as usize);
        let bins = usize::try_from(self.bins[i]).unwrap_or(0);
        if bins == 0 || e - s != 9 * bins {
            return exec_err!(
                "kl_drift: histogram has {} counts, expected 9 x {}",
                e - s,
                self.bins[i]
            );
        }
        Ok(&self.counts[s..e])
    }
}

/// Vectorised kernel over equally long histogram columns (and optional weights column):
/// two reused probability buffers, `(p - q) ln(p / q)` per bin (one log), f64 throughout.
///
/// # Errors
/// An execution error for malformed histograms or histograms of different range/bins.
pub fn kl_drift_kernel(
    a: &StructArray,
    b: &StructArray,
    weights: Option<&Filters<'_>>,
) -> Result<Float64Array> {
    let n = a.len();
    if b.len() != n || weights.is_some_and(|w| w.len() != n) {
        return exec_err!("kl_drift: arguments have different lengths");
    }
    let (ha, hb) = (HistColumns::try_new(a)?, HistColumns::try_new(b)?);
    let mut out = vec![0f64; n];
    let mut valid = vec![true; n];
    let (mut p, mut q) = (Vec::new(), Vec::new());
    for i in 0..n {
        if ha.is_null(i) || hb.is_null(i) || weights.is_some_and(|w| w.is_null(i)) {
            valid[i] = false;
            continue;
        }
        let (ca, cb) = (ha.counts(i)?, hb.counts(i)?);
        if !same_range(ha.lo[i], ha.hi[i], hb.lo[i], hb.hi[i]) || ha.bins[i] != hb.bins[i] {
            return exec_err!(
                "kl_drift: histograms differ in range or bins: [{}, {}] x {} vs [{}, {}] x {}",
                ha.lo[i],
                ha.hi[i],
                ha.bins[i],
                hb.lo[i],
                hb.hi[i],
                hb.bins[i]
            );
        }
        let w = weights.map_or(UNIFORM, |w| w.get(i));
        let bins = ca.len() / 9;
        let width = (ha.hi[i] - ha.lo[i]) / bins as f64;
        p.resize(bins, 0.0);
        q.resize(bins, 0.0);
        let mut d = 0.0;
        for (c, wc) in w.iter().enumerate() {
            probabilities_into(&ca[c * bins..(c + 1) * bins], width, &mut p);
            probabilities_into(&cb[c * bins..(c + 1) * bins], width, &mut q);
            let sym: f64 = p.iter().zip(&q).map(|(p, q)| (p - q) * (p / q).ln()).sum();
            d += wc * sym;
        }
        out[i] = d;
    }
    let nulls = NullBuffer::from(valid);
    let nulls = (nulls.null_count() > 0).then_some(nulls);
    Ok(Float64Array::new(ScalarBuffer::from(out), nulls))
}

/// The histogram fields `kl_drift` reads (`total` is not needed).
const USED: [&str; 4] = ["lo", "hi", "bins", "counts"];

/// The histogram fields `kl_drift` reads, with the types of [`Histogram::fields`].
fn used_fields() -> Fields {
    Histogram::fields()
        .iter()
        .filter(|f| USED.contains(&f.name().as_str()))
        .cloned()
        .collect()
}

/// Check a histogram argument for `coerce_types`: a struct with the fields `lo`, `hi`,
/// `bins` and `counts` is kept as is and those fields are cast at run time (DataFusion
/// does not cast a struct to one with non-nullable fields); NULL becomes the histogram type.
fn coerce_histogram(t: &DataType) -> Result<DataType> {
    match t {
        DataType::Null => Ok(Histogram::data_type()),
        DataType::Struct(fields)
            if USED
                .iter()
                .all(|want| fields.iter().any(|f| f.name() == want)) =>
        {
            Ok(t.clone())
        }
        other => plan_err!(
            "kl_drift expects histograms as the struct coef_histogram returns \
             (lo, hi, bins, total, counts), got {other}"
        ),
    }
}

/// The `kl_drift` SQL function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct KlDriftFunc {
    signature: Signature,
}

impl Default for KlDriftFunc {
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
        "The paper's drift between two groups of filters, in nats: \
         `D = sum_i w_i * (KL(p_i || q_i) + KL(q_i || p_i))`, `KL(p || q) = sum_b p_b ln(p_b / q_b)`, \
         where `p_i`, `q_i` are the bin probabilities of PCA coefficient i in the two histograms: \
         density `count / (total * bin_width)`, every empty bin set to float32 epsilon \
         (1.1920929e-07), divided by the sum. The weights are not renormalised. NULL in any \
         argument gives NULL; histograms with different bins, or lo and hi that differ by more than 1e-9 of the range width (float rounding between parallel plans), are an error.",
        "kl_drift(hist_a, hist_b [, weights])",
    )
    .with_argument(
        "hist_a",
        "A `coef_histogram` value: struct {lo, hi: Float64, bins: Int64, total: FixedSizeList<Int64, 9>, \
         counts: List<Int64> (9 x bins, coefficient-major)}.",
    )
    .with_argument("hist_b", "A `coef_histogram` value over the same lo, hi and bins.")
    .with_argument(
        "weights",
        "Optional: 9 numbers w_i, typically `pca_fit(...)['explained_variance_ratio']`; default 1/9 each.",
    )
    .with_sql_example(
        r#"```sql
> SELECT round(kl_drift(a, b), 6) AS d FROM (
    SELECT coef_histogram([-0.5, 0, 0, 0, 0, 0, 0, 0, 0], -1, 1, 2) AS a,
           coef_histogram([0.5, 0, 0, 0, 0, 0, 0, 0, 0], -1, 1, 2) AS b);
+----------+
| d        |
+----------+
| 3.542751 |
+----------+
-- Typical use: the KL matrix between tasks, weighted by explained-variance ratio
> WITH b AS (SELECT pca_fit(peak_scale(weights)) AS basis FROM filters),
       c AS (SELECT layer_name AS task, pca_project(peak_scale(weights), (SELECT basis FROM b)) AS c FROM filters),
       h AS (SELECT task, coef_histogram(c, (SELECT coef_range(c)['min'] FROM c), (SELECT coef_range(c)['max'] FROM c), 70) AS hist
             FROM c GROUP BY task)
  SELECT x.task, y.task, kl_drift(x.hist, y.hist, (SELECT basis['explained_variance_ratio'] FROM b)) AS d
  FROM h x, h y;
```"#,
    )
    .build()
});

impl ScalarUDFImpl for KlDriftFunc {
    fn name(&self) -> &str {
        "kl_drift"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types {
            [a, b] => Ok(vec![coerce_histogram(a)?, coerce_histogram(b)?]),
            [a, b, w] => Ok(vec![
                coerce_histogram(a)?,
                coerce_histogram(b)?,
                coerce_weights("kl_drift", w)?,
            ]),
            _ => plan_err!(
                "kl_drift expects 2 or 3 arguments (hist_a, hist_b [, weights]), got {}",
                arg_types.len()
            ),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let arrays = args
            .args
            .iter()
            .map(|a| a.to_array(n))
            .collect::<Result<Vec<_>>>()?;
        let (a, b, w) = match arrays.as_slice() {
            [a, b] => (a, b, None),
            [a, b, w] => (a, b, Some(Filters::try_new("kl_drift", w.as_ref())?)),
            _ => {
                return plan_err!(
                    "kl_drift expects 2 or 3 arguments (hist_a, hist_b [, weights]), got {}",
                    arrays.len()
                );
            }
        };
        let what = "a histogram (the struct coef_histogram returns)";
        let a = conform_struct("kl_drift", what, a, &used_fields())?;
        let b = conform_struct("kl_drift", what, b, &used_fields())?;
        let (Some(a), Some(b)) = (a.as_struct_opt(), b.as_struct_opt()) else {
            return exec_err!("kl_drift: expected histograms as coef_histogram returns");
        };
        Ok(ColumnarValue::Array(Arc::new(kl_drift_kernel(
            a,
            b,
            w.as_ref(),
        )?)))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}

/// The singleton `kl_drift` UDF.
pub fn kl_drift_udf() -> Arc<ScalarUDF> {
    static UDF: LazyLock<Arc<ScalarUDF>> =
        LazyLock::new(|| Arc::new(ScalarUDF::from(KlDriftFunc::default())));
    Arc::clone(&UDF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::fsl_f64;
    use proptest::prelude::*;

    fn hist(lo: f64, hi: f64, bins: usize, counts: &[i64]) -> Histogram {
        Histogram {
            lo,
            hi,
            bins,
            counts: counts.to_vec(),
        }
    }

    fn run(
        a: &[Option<Histogram>],
        b: &[Option<Histogram>],
        w: Option<&[[f64; 9]]>,
    ) -> Result<Float64Array> {
        let (a, b) = (Histogram::to_array(a)?, Histogram::to_array(b)?);
        let w = w.map(|w| fsl_f64(9, w.iter().flatten().copied().collect(), None).unwrap());
        let wf = w.as_ref().map(|w| Filters::try_new("t", w).unwrap());
        kl_drift_kernel(a.as_struct(), b.as_struct(), wf.as_ref())
    }

    /// Two bins per coefficient; coefficient 0 differs, the others are equal.
    fn pair() -> (Histogram, Histogram) {
        let mut a = vec![1i64; 18];
        let mut b = vec![1i64; 18];
        (a[0], a[1]) = (3, 1);
        (b[0], b[1]) = (1, 3);
        (hist(-1.0, 1.0, 2, &a), hist(-1.0, 1.0, 2, &b))
    }

    #[test]
    fn hand_case_two_bins() {
        // p0 = (3/4, 1/4), q0 = (1/4, 3/4): KL(p||q) = KL(q||p) = 1/2 ln 3, so the symmetric
        // term is ln 3 and D = ln 3 / 9 with uniform weights, w0 ln 3 with weights w.
        let (a, b) = pair();
        let out = run(&[Some(a.clone())], &[Some(b.clone())], None).unwrap();
        assert!((out.value(0) - 3f64.ln() / 9.0).abs() < 1e-15);
        let mut w = [0.0; 9];
        w[0] = 0.5;
        w[1] = 0.5;
        let out = run(&[Some(a.clone())], &[Some(b.clone())], Some(&[w])).unwrap();
        assert!((out.value(0) - 0.5 * 3f64.ln()).abs() < 1e-15);
        assert!((kl_drift_ref(&a, &b, &w).unwrap() - 0.5 * 3f64.ln()).abs() < 1e-15);
    }

    #[test]
    fn hand_case_empty_bin_gets_eps_density() {
        // Coefficient 0: a = (2, 0) over bins of width 1 -> densities (1, eps) -> p = (1, eps)/(1+eps);
        // b = (1, 1) -> q = (1/2, 1/2). Other coefficients identical.
        let mut ca = vec![1i64; 18];
        (ca[0], ca[1]) = (2, 0);
        let a = hist(0.0, 2.0, 2, &ca);
        let b = hist(0.0, 2.0, 2, &[1; 18]);
        let e = EPS32;
        let (p0, p1) = (1.0 / (1.0 + e), e / (1.0 + e));
        let want = ((p0 - 0.5) * (p0 / 0.5).ln() + (p1 - 0.5) * (p1 / 0.5).ln()) / 9.0;
        let got = run(&[Some(a)], &[Some(b)], None).unwrap().value(0);
        assert!((got - want).abs() < 1e-14, "{got} vs {want}");
        // scipy.stats.entropy(p, q) + entropy(q, p) for coefficient 0: 7.97119067595919.
        assert!((got * 9.0 - 7.971_190_675_959_19).abs() < 1e-12);
    }

    #[test]
    fn identical_histograms_have_zero_drift_and_symmetry_holds() {
        let (a, b) = pair();
        let out = run(
            &[Some(a.clone()), Some(b.clone())],
            &[Some(a.clone()), Some(a.clone())],
            None,
        )
        .unwrap();
        assert_eq!(out.value(0), 0.0);
        let back = run(&[Some(a)], &[Some(b)], None).unwrap();
        assert!((out.value(1) - back.value(0)).abs() < 1e-15);
    }

    #[test]
    fn ranges_equal_up_to_rounding_are_the_same() {
        assert!(same_range(
            -2.107075734807672,
            1.9966452677469262,
            -2.1070757348076725,
            1.996645267746936
        ));
        assert!(!same_range(-2.1, 2.0, -2.1, 2.0001));
    }

    #[test]
    fn nulls_empty_and_mismatch() {
        let (a, b) = pair();
        let out = run(
            &[None, Some(a.clone())],
            &[Some(b.clone()), Some(b.clone())],
            None,
        )
        .unwrap();
        assert!(out.is_null(0) && out.is_valid(1));
        assert_eq!(run(&[], &[], None).unwrap().len(), 0);
        let c = hist(-1.0, 2.0, 2, &[1; 18]);
        let err = run(&[Some(a.clone())], &[Some(c)], None).unwrap_err();
        assert!(err.to_string().contains("differ in range or bins"), "{err}");
        let d = hist(-1.0, 1.0, 1, &[1; 9]);
        assert!(run(&[Some(a.clone())], &[Some(d.clone())], None).is_err());
        assert!(kl_drift_ref(&a, &d, &UNIFORM).is_err());
    }

    #[test]
    fn empty_histograms_are_uniform() {
        let a = hist(0.0, 1.0, 4, &[0; 36]);
        let b = hist(0.0, 1.0, 4, &[5; 36]);
        assert!(run(&[Some(a)], &[Some(b)], None).unwrap().value(0).abs() < 1e-15);
    }

    fn hist_pair(bins: usize) -> impl Strategy<Value = (Histogram, Histogram, [f64; 9])> {
        // Counts up to 50 with many zeros (the eps rule matters), 1..=12 bins.
        let counts = move || proptest::collection::vec(prop_oneof![Just(0i64), 0i64..50], 9 * bins);
        (counts(), counts(), proptest::array::uniform9(0f64..1f64))
            .prop_map(move |(a, b, w)| (hist(-2.0, 3.0, bins, &a), hist(-2.0, 3.0, bins, &b), w))
    }

    proptest! {
        #[test]
        fn kernel_matches_reference((a, b, w) in (1usize..=12).prop_flat_map(hist_pair)) {
            let want = kl_drift_ref(&a, &b, &w).unwrap();
            let got = run(&[Some(a.clone())], &[Some(b.clone())], Some(&[w])).unwrap().value(0);
            prop_assert!((got - want).abs() <= 1e-9 * want.abs().max(1e-12), "{} vs {}", got, want);
            let back = run(&[Some(b)], &[Some(a)], Some(&[w])).unwrap().value(0);
            prop_assert!((got - back).abs() <= 1e-9 * want.abs().max(1e-12));
            prop_assert!(got >= 0.0);
        }
    }
}
