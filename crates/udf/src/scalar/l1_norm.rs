//! `l1_norm(weights)`: the L1 norm of a 3x3 filter, `sum_i |w_i|`.
//!
//! MISSION.md section 3, "Norms per filter". Input: `FixedSizeList<Float16|Float32|Float64, 9>`
//! (other lists of numbers are coerced to Float64); f64 arithmetic; result Float64.
//! A NULL filter gives NULL; a NaN weight gives NaN. Equals `np.linalg.norm(f, 1)`.

use std::sync::{Arc, LazyLock};

use datafusion::logical_expr::{DocSection, Documentation, DocumentationBuilder, ScalarUDF};

use crate::common::FilterReduceFunc;

/// Scalar reference: `sum_i |w_i|`.
pub fn l1_norm_ref(x: &[f64; 9]) -> f64 {
    x.iter().map(|v| v.abs()).sum()
}

static DOC: LazyLock<Documentation> = LazyLock::new(|| {
    DocumentationBuilder::new_with_details(
        DocSection {
            include: true,
            label: "Filter functions",
            description: Some("Functions over 3x3 convolution filters"),
        },
        "The L1 norm of a 3x3 filter, `sum_i |w_i|`, computed in Float64. \
         NULL gives NULL; a NaN weight gives NaN.",
        "l1_norm(weights)",
    )
    .with_argument(
        "weights",
        "A filter: FixedSizeList<Float16|Float32|Float64, 9> (row-major (kh, kw)); other lists \
         of 9 numbers are cast to Float64.",
    )
    .with_sql_example(
        r#"```sql
> SELECT l1_norm([3.0, -4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]) AS n;
+-----+
| n   |
+-----+
| 7.0 |
+-----+
```"#,
    )
    .build()
});

/// The singleton `l1_norm` UDF.
pub fn l1_norm_udf() -> Arc<ScalarUDF> {
    static UDF: LazyLock<Arc<ScalarUDF>> = LazyLock::new(|| {
        Arc::new(ScalarUDF::from(FilterReduceFunc::new(
            "l1_norm",
            l1_norm_ref,
            &DOC,
        )))
    });
    Arc::clone(&UDF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::{Filters, filter_reduce_kernel, fsl_f64};
    use arrow::array::Array;
    use arrow::array::Float64Array;
    use arrow::buffer::NullBuffer;
    use proptest::prelude::*;

    fn run(rows: &[[f64; 9]], nulls: Option<NullBuffer>) -> Float64Array {
        let a = fsl_f64(9, rows.iter().flatten().copied().collect(), nulls).unwrap();
        filter_reduce_kernel(&Filters::try_new("t", &a).unwrap(), l1_norm_ref)
    }

    #[test]
    fn hand_cases() {
        let out = run(
            &[
                [3.0, -4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                [0.0; 9],
                [-1.0; 9],
                [0.5, -0.25, 2.0, -2.0, 1.0, 0.0, -0.0, 0.125, 1.5],
            ],
            None,
        );
        assert_eq!(out.values().as_ref(), &[7.0, 0.0, 9.0, 7.375]);
    }

    #[test]
    fn empty_null_and_nan() {
        assert_eq!(run(&[], None).len(), 0);
        let out = run(
            &[[1.0; 9], [2.0; 9]],
            Some(NullBuffer::from(vec![false, true])),
        );
        assert!(out.is_null(0));
        assert!(out.is_valid(1));
        let mut x = [1.0; 9];
        x[4] = f64::NAN;
        assert!(run(&[x], None).value(0).is_nan());
    }

    proptest! {
        #[test]
        // Weights of trained filters are small; +-100 covers them with room to spare.
        fn kernel_matches_reference(rows in proptest::collection::vec(proptest::array::uniform9(-100f64..100f64), 0..64)) {
            let out = run(&rows, None);
            for (i, r) in rows.iter().enumerate() {
                prop_assert_eq!(out.value(i).to_bits(), l1_norm_ref(r).to_bits());
            }
        }

        #[test]
        fn norm_inequalities(x in proptest::array::uniform9(-100f64..100f64)) {
            // linf <= l2 <= l1 <= 9 linf, and l2 <= 3 linf (sqrt(9)).
            let (l1, l2, li) = (
                x.iter().map(|v| v.abs()).sum::<f64>(),
                x.iter().map(|v| v * v).sum::<f64>().sqrt(),
                x.iter().fold(0f64, |m, v| m.max(v.abs())),
            );
            let got = l1_norm_ref(&x);
            let want = l1;
            prop_assert!((got - want).abs() <= 1e-12 * want.max(1.0));
            prop_assert!(li <= l2 * (1.0 + 1e-12) && l2 <= l1 * (1.0 + 1e-12) && l1 <= 9.0 * li * (1.0 + 1e-12));
        }
    }
}
