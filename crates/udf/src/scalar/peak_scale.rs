//! `peak_scale(weights)`: a 3x3 filter divided by its largest absolute weight.
//!
//! `s(f) = f / max_i |f_i|` (MISSION.md section 3, "Peak scaling"): every filter of the
//! result has its largest |w| equal to 1, so PCA over peak-scaled filters compares
//! shapes, not magnitudes. Input: `FixedSizeList<Float16|Float32|Float64, 9>` (other
//! lists of numbers are coerced to Float64); the arithmetic is f64 and the result is
//! `FixedSizeList<Float32, 9>`. An all-zero filter stays zero (signs of -0.0 kept);
//! a NULL filter gives NULL; a NaN weight makes every weight of that filter NaN and an
//! infinite one gives NaN/0 weights, as `f / np.abs(f).max()` does in numpy.

use std::sync::{Arc, LazyLock};

use arrow::array::AsArray;
use arrow::array::{Array, FixedSizeListArray, Float32Array};
use arrow::buffer::{NullBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field};
use datafusion::common::{Result, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, DocSection, Documentation, DocumentationBuilder, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};

use crate::common::{Filters, coerce_weights, f16_rows, for_each_widened, zero_null_rows};

/// Largest |w|, NaN if any weight is NaN (numpy's `np.abs(f).max()`).
#[inline]
fn max_abs_nan(x: &[f64; 9]) -> f64 {
    x.iter().fold(0.0f64, |m, v| {
        let a = v.abs();
        if a.is_nan() || m.is_nan() {
            f64::NAN
        } else {
            m.max(a)
        }
    })
}

/// Scalar reference: `f / max|f|` in f64, or `f` unchanged when `max|f| == 0`.
pub fn peak_scale_ref(x: &[f64; 9]) -> [f64; 9] {
    let m = max_abs_nan(x);
    if m == 0.0 {
        return *x;
    }
    let mut out = [0.0; 9];
    for (o, v) in out.iter_mut().zip(x) {
        *o = v / m;
    }
    out
}

/// The result type, `FixedSizeList<Float32, 9>`.
fn return_type() -> DataType {
    DataType::FixedSizeList(Arc::new(Field::new_list_field(DataType::Float32, true)), 9)
}

/// Vectorised kernel: one pass over the rows, writing the flat f32 child buffer; NULL
/// rows hold zeros under the input's validity bitmap.
///
/// Float16 and float32 input is scaled in f32: for operands with 24-bit significands an
/// f32 division gives the same bits as the reference's f64 division rounded to f32
/// (double rounding is innocuous when the wider format has at least 2 x 24 + 2 bits),
/// and the row loop has no conversions. Float64 input is divided in f64.
pub fn peak_scale_kernel(f: &Filters<'_>) -> Result<FixedSizeListArray> {
    let n = f.len();
    let values = if let Some(src) = f.flat_f32() {
        // SAFETY: the kernel writes every weight of every filter.
        unsafe { crate::simd::filled_vec(n * 9, |o| crate::simd::peak_scale_f32(src, o)) }
    } else {
        let mut values = vec![0f32; n * 9];
        for (i, out) in values.chunks_exact_mut(9).enumerate() {
            let x = f.get(i);
            let m = max_abs_nan(&x);
            if m == 0.0 {
                for (o, v) in out.iter_mut().zip(&x) {
                    *o = *v as f32;
                }
            } else {
                // Divide (not multiply by 1/m): bit-equal to numpy's `f / m`.
                for (o, v) in out.iter_mut().zip(&x) {
                    *o = (v / m) as f32;
                }
            }
        }
        values
    };
    scaled_array(values, f.nulls())
}

/// The result array: `values` (9 per filter) with the NULL rows zeroed, under `nulls`.
fn scaled_array(mut values: Vec<f32>, nulls: Option<&NullBuffer>) -> Result<FixedSizeListArray> {
    zero_null_rows(&mut values, nulls);
    Ok(FixedSizeListArray::try_new(
        Arc::new(Field::new_list_field(DataType::Float32, true)),
        9,
        Arc::new(Float32Array::new(ScalarBuffer::from(values), None)),
        nulls.cloned(),
    )?)
}

/// [`peak_scale_kernel`] for float16 filters (flat `rows`, validity `nulls`), widened
/// and scaled a chunk at a time ([`for_each_widened`]) rather than widened whole first:
/// the same bits, one batch-sized buffer fewer.
pub fn peak_scale_f16_kernel(
    rows: &[half::f16],
    nulls: Option<&NullBuffer>,
) -> Result<FixedSizeListArray> {
    // SAFETY: every chunk is written by the kernel.
    let values = unsafe {
        crate::simd::filled_vec(rows.len(), |o| {
            for_each_widened(rows, |first, x| {
                crate::simd::peak_scale_f32(x, &mut o[9 * first..9 * first + x.len()]);
            })
        })
    };
    scaled_array(values, nulls)
}

/// The `peak_scale` SQL function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PeakScaleFunc {
    signature: Signature,
}

impl Default for PeakScaleFunc {
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
        "Peak-scales a 3x3 filter: `s(f) = f / max_i |f_i|`, computed in Float64 and returned \
         as FixedSizeList<Float32, 9>, so that the largest |weight| becomes 1. An all-zero \
         filter stays zero; NULL gives NULL; a NaN weight makes the whole filter NaN (as numpy).",
        "peak_scale(weights)",
    )
    .with_argument(
        "weights",
        "A filter: FixedSizeList<Float16|Float32|Float64, 9> (row-major (kh, kw)); other lists \
         of 9 numbers are cast to Float64.",
    )
    .with_sql_example(
        r#"```sql
> SELECT peak_scale([1.0, -4.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]) AS s;
+--------------------------------------------------+
| s                                                |
+--------------------------------------------------+
| [0.25, -1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.25] |
+--------------------------------------------------+
```"#,
    )
    .build()
});

impl ScalarUDFImpl for PeakScaleFunc {
    fn name(&self) -> &str {
        "peak_scale"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [t] = arg_types else {
            return plan_err!(
                "peak_scale expects 1 argument (weights), got {}",
                arg_types.len()
            );
        };
        Ok(vec![coerce_weights("peak_scale", t)?])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(return_type())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [w] = args.args.as_slice() else {
            return plan_err!(
                "peak_scale expects 1 argument (weights), got {}",
                args.args.len()
            );
        };
        let a = w.to_array(args.number_rows)?;
        if let Some(rows) = f16_rows(a.as_ref()) {
            let list = a.as_fixed_size_list();
            return Ok(ColumnarValue::Array(Arc::new(peak_scale_f16_kernel(
                rows,
                list.nulls(),
            )?)));
        }
        let f = Filters::try_new("peak_scale", a.as_ref())?;
        Ok(ColumnarValue::Array(Arc::new(peak_scale_kernel(&f)?)))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}

/// The singleton `peak_scale` UDF.
pub fn peak_scale_udf() -> Arc<ScalarUDF> {
    static UDF: LazyLock<Arc<ScalarUDF>> =
        LazyLock::new(|| Arc::new(ScalarUDF::from(PeakScaleFunc::default())));
    Arc::clone(&UDF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::fsl_f64;
    use arrow::array::{Array, AsArray};
    use arrow::buffer::NullBuffer;
    use arrow::datatypes::Float32Type;
    use proptest::prelude::*;

    fn run(rows: &[[f64; 9]], nulls: Option<NullBuffer>) -> FixedSizeListArray {
        let a = fsl_f64(9, rows.iter().flatten().copied().collect(), nulls).unwrap();
        let f = Filters::try_new("t", &a).unwrap();
        peak_scale_kernel(&f).unwrap()
    }

    fn row(out: &FixedSizeListArray, i: usize) -> Vec<f32> {
        out.value(i).as_primitive::<Float32Type>().values().to_vec()
    }

    #[test]
    fn hand_cases() {
        let out = run(
            &[
                [1.0, -4.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
                [0.0; 9],
                [-0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                [0.5, 0.25, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -0.125],
            ],
            None,
        );
        assert_eq!(
            row(&out, 0),
            vec![0.25, -1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.25]
        );
        assert_eq!(row(&out, 1), vec![0.0; 9]);
        assert!(row(&out, 2)[0].is_sign_negative());
        assert_eq!(
            row(&out, 3),
            vec![1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -0.25]
        );
    }

    #[test]
    fn empty_null_and_nan() {
        assert_eq!(run(&[], None).len(), 0);
        let out = run(
            &[[1.0; 9], [2.0; 9]],
            Some(NullBuffer::from(vec![false, true])),
        );
        assert!(out.is_null(0));
        assert_eq!(row(&out, 1), vec![1.0; 9]);
        let mut x = [1.0; 9];
        x[4] = f64::NAN;
        assert!(row(&run(&[x], None), 0).iter().all(|v| v.is_nan()));
    }

    #[test]
    fn float16_input_is_exact() {
        use arrow::array::Float16Array;
        use half::f16;
        let vals: Vec<f16> = [3.0f32, -6.0, 1.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.75]
            .iter()
            .map(|&v| f16::from_f32(v))
            .collect();
        let a = FixedSizeListArray::try_new(
            Arc::new(Field::new_list_field(DataType::Float16, true)),
            9,
            Arc::new(Float16Array::from(vals)),
            None,
        )
        .unwrap();
        let out = peak_scale_kernel(&Filters::try_new("t", &a).unwrap()).unwrap();
        assert_eq!(
            row(&out, 0),
            vec![0.5, -1.0, 0.25, 0.0, 0.0, 0.0, 0.0, 0.0, 0.125]
        );
    }

    proptest! {
        #[test]
        // Weights of trained filters are small; +-100 covers them with room to spare.
        fn kernel_matches_reference(rows in proptest::collection::vec(proptest::array::uniform9(-100f64..100f64), 0..64)) {
            let out = run(&rows, None);
            for (i, r) in rows.iter().enumerate() {
                let want: Vec<f32> = peak_scale_ref(r).iter().map(|&v| v as f32).collect();
                prop_assert_eq!(row(&out, i), want);
                let m = row(&out, i).iter().fold(0f32, |m, v| m.max(v.abs()));
                prop_assert!(m == 0.0 || m == 1.0);
            }
        }

        // The f32 path (float32 and float16 input) gives the reference's bits: f64
        // division rounded to f32.
        #[test]
        fn f32_path_matches_reference(
            rows in proptest::collection::vec(proptest::array::uniform9(any::<f32>()), 0..64),
        ) {
            let rows: Vec<[f32; 9]> = rows
                .into_iter()
                .map(|r| r.map(|v| if v.is_finite() { v } else { 0.5 }))
                .collect();
            let a = FixedSizeListArray::try_new(
                Arc::new(Field::new_list_field(DataType::Float32, true)),
                9,
                Arc::new(Float32Array::from(rows.iter().flatten().copied().collect::<Vec<_>>())),
                None,
            )
            .unwrap();
            let out = peak_scale_kernel(&Filters::try_new("t", &a).unwrap()).unwrap();
            for (i, r) in rows.iter().enumerate() {
                let want: Vec<u32> = peak_scale_ref(&r.map(f64::from))
                    .iter()
                    .map(|&v| (v as f32).to_bits())
                    .collect();
                let got: Vec<u32> = row(&out, i).iter().map(|v| v.to_bits()).collect();
                prop_assert_eq!(got, want);
            }
        }
    }

    proptest! {
        /// The chunked float16 kernel gives the bits of widening the whole batch first,
        /// across chunk boundaries, for NULL, NaN, infinite and subnormal weights, on a
        /// slice of a longer list.
        #[test]
        fn f16_chunked_kernel_matches_widened(
            bits in proptest::collection::vec(proptest::array::uniform9(any::<u16>()), 0..600),
            nulls in proptest::collection::vec(any::<bool>(), 601),
        ) {
            use arrow::array::Float16Array;
            let mut vals = vec![half::f16::from_f32(2.0); 9];
            vals.extend(bits.iter().flatten().map(|&b| half::f16::from_bits(b)));
            let a = FixedSizeListArray::try_new(
                Arc::new(Field::new_list_field(DataType::Float16, true)),
                9,
                Arc::new(Float16Array::from(vals)),
                Some(NullBuffer::from(nulls[..=bits.len()].iter().map(|n| !n).collect::<Vec<_>>())),
            )
            .unwrap()
            .slice(1, bits.len());
            let chunked = peak_scale_f16_kernel(f16_rows(&a).unwrap(), a.nulls()).unwrap();
            let whole = peak_scale_kernel(&Filters::try_new("t", &a).unwrap()).unwrap();
            prop_assert_eq!(chunked.nulls(), whole.nulls());
            let (x, y) = (
                chunked.values().as_primitive::<Float32Type>(),
                whole.values().as_primitive::<Float32Type>(),
            );
            prop_assert_eq!(x.len(), y.len());
            for (p, q) in x.values().iter().zip(y.values()) {
                prop_assert!(p.to_bits() == q.to_bits() || (p.is_nan() && q.is_nan()), "{p} vs {q}");
            }
        }
    }
}
