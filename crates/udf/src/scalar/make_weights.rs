//! `make_weights(w0, ..., w8)`: nine weight columns -> one `FixedSizeList<_, 9>` filter.
//!
//! The store keeps a filter's nine weights (row-major (kh, kw)) as nine flat Parquet
//! columns, which decode fastest; the `filters` view turns them into the `weights`
//! column with this function. All nine arguments are Float16, or are coerced to one of
//! Float32 / Float64; the list's element type is that type. A NULL in any argument gives
//! a NULL filter.

use std::mem::{MaybeUninit, size_of};
use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, AsArray, FixedSizeListArray, PrimitiveArray};
use arrow::buffer::{NullBuffer, ScalarBuffer};
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Field, Float16Type, Float32Type, Float64Type,
};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, DocSection, Documentation, DocumentationBuilder, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};

/// Scalar reference: the filter assembled from nine values.
pub fn make_weights_ref<T: Copy>(w: [T; 9]) -> [T; 9] {
    w
}

/// Vectorised kernel: interleave nine equally long primitive arrays into one list array.
pub fn make_weights_kernel<T: ArrowPrimitiveType>(
    cols: &[&PrimitiveArray<T>],
) -> Result<FixedSizeListArray> {
    if cols.len() != 9 {
        return exec_err!("make_weights expects 9 columns, got {}", cols.len());
    }
    let n = cols[0].len();
    if cols.iter().any(|c| c.len() != n) {
        return exec_err!("make_weights: the nine columns differ in length");
    }
    let s: [&[T::Native]; 9] = std::array::from_fn(|k| &cols[k].values()[..n]);
    let values = if size_of::<T::Native>() == 2 && cfg!(target_endian = "little") {
        // SAFETY: a 2-byte native type (f16, i16, u16) is plain bits, as u16.
        let s16: [&[u16]; 9] = s.map(|c| unsafe { c.align_to::<u16>().1 });
        // SAFETY: `interleave_u16` writes all 18 bytes of each of the n rows.
        unsafe {
            crate::simd::filled_vec(n * 9, |values: &mut [MaybeUninit<T::Native>]| {
                interleave_u16(&s16, values.as_mut_ptr().cast::<u8>(), n)
            })
        }
    } else {
        // A fixed-size array of equally long slices: the loop has no bounds checks or
        // capacity checks and writes each 9-value row in place, into memory that is not
        // zero-filled first.
        // SAFETY: the loop writes all 9 values of each of the n rows.
        unsafe {
            crate::simd::filled_vec(n * 9, |values| {
                for (i, out) in values.chunks_exact_mut(9).enumerate() {
                    for (o, col) in out.iter_mut().zip(&s) {
                        o.write(col[i]);
                    }
                }
            })
        }
    };
    let nulls = cols.iter().fold(None::<NullBuffer>, |acc, c| {
        NullBuffer::union(acc.as_ref(), c.nulls())
    });
    let child = PrimitiveArray::<T>::new(ScalarBuffer::from(values), None);
    Ok(FixedSizeListArray::try_new(
        Arc::new(Field::new_list_field(T::DATA_TYPE, true)),
        9,
        Arc::new(child),
        nulls,
    )?)
}

/// Interleave nine columns of 2-byte values into `n` rows of 18 bytes at `out`. On x86-64
/// eight rows at a time go through an 8 x 8 SSE2 transpose of columns 0-7 (three rounds
/// of unpacks; SSE2 is part of x86-64, so no detection): a 16-byte store per row plus the
/// u16 of column 8 (5 % of `analyze kl-matrix` and 9 % of `analyze degeneration` was the
/// scalar loop, session 13). The remaining rows, and other targets, go through
/// [`interleave_u16_rows`].
///
/// Little-endian only: value 0 lands in the low bits of the first u64, so first in memory.
///
/// # Safety
/// `out` must be valid for `18 n` bytes of writes; every column holds `n` values.
unsafe fn interleave_u16(cols: &[&[u16]; 9], out: *mut u8, n: usize) {
    let cols: [&[u16]; 9] = std::array::from_fn(|k| &cols[k][..n]);
    #[cfg(target_arch = "x86_64")]
    let done = {
        use std::arch::x86_64::*;
        let blocks = n / 8;
        for b in 0..blocks {
            let i = 8 * b;
            // SAFETY: rows i..i+8 are below n, so the loads read inside each column and the
            // stores write bytes 18 i .. 18 (i + 8) of `out` (the caller's bound).
            unsafe {
                let c: [__m128i; 8] =
                    std::array::from_fn(|k| _mm_loadu_si128(cols[k].as_ptr().add(i).cast()));
                // (c0 c1) pairs of rows 0-3 | 4-7, then (c2 c3), (c4 c5), (c6 c7)
                let t: [__m128i; 8] = std::array::from_fn(|j| {
                    let (a, b) = (c[2 * (j / 2)], c[2 * (j / 2) + 1]);
                    if j % 2 == 0 {
                        _mm_unpacklo_epi16(a, b)
                    } else {
                        _mm_unpackhi_epi16(a, b)
                    }
                });
                // columns 0-3 of rows (0 1), (2 3), (4 5), (6 7), then columns 4-7
                let u: [__m128i; 8] = std::array::from_fn(|j| {
                    let h = 4 * (j / 4);
                    let (a, b) = (t[h + (j % 4) / 2], t[h + 2 + (j % 4) / 2]);
                    if j % 2 == 0 {
                        _mm_unpacklo_epi32(a, b)
                    } else {
                        _mm_unpackhi_epi32(a, b)
                    }
                });
                for r in 0..8 {
                    let (a, b) = (u[r / 2], u[4 + r / 2]);
                    let row = if r % 2 == 0 {
                        _mm_unpacklo_epi64(a, b)
                    } else {
                        _mm_unpackhi_epi64(a, b)
                    };
                    let dst = out.add(18 * (i + r));
                    _mm_storeu_si128(dst.cast(), row);
                    dst.add(16).cast::<u16>().write_unaligned(cols[8][i + r]);
                }
            }
        }
        8 * blocks
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    // SAFETY: the caller's bound.
    unsafe { interleave_u16_rows(&cols, out, done..n) };
}

/// [`interleave_u16`] of rows `rows`, one at a time: each row is packed into two u64 and
/// one u16 in registers and written with 3 stores instead of 9 (the stores bounded the
/// value-by-value loop: criterion 416M filters/s against 321M/s).
///
/// # Safety
/// As [`interleave_u16`], for the rows `rows`.
unsafe fn interleave_u16_rows(cols: &[&[u16]; 9], out: *mut u8, rows: std::ops::Range<usize>) {
    for i in rows {
        let v: [u64; 9] = std::array::from_fn(|k| u64::from(cols[k][i]));
        let lo = v[0] | v[1] << 16 | v[2] << 32 | v[3] << 48;
        let hi = v[4] | v[5] << 16 | v[6] << 32 | v[7] << 48;
        // SAFETY: row i is bytes 18 i .. 18 i + 18 of `out` (the caller's bound).
        unsafe {
            let row = out.add(18 * i);
            row.cast::<u64>().write_unaligned(lo);
            row.add(8).cast::<u64>().write_unaligned(hi);
            row.add(16).cast::<u16>().write_unaligned(cols[8][i]);
        }
    }
}

/// The `make_weights` SQL function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct MakeWeightsFunc {
    signature: Signature,
}

impl Default for MakeWeightsFunc {
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
        "Builds one 3x3 filter (FixedSizeList of 9, row-major (kh, kw)) from nine weight values. \
         The `filters` view uses it to present the stored columns w0..w8 as `weights`.",
        "make_weights(w0, w1, w2, w3, w4, w5, w6, w7, w8)",
    )
    .with_argument(
        "w0..w8",
        "The nine weights; Float16 stays Float16, other numbers become Float32 (or Float64).",
    )
    .with_sql_example("SELECT make_weights(1, 0, 0, 0, 1, 0, 0, 0, 1) AS identity;")
    .build()
});

impl ScalarUDFImpl for MakeWeightsFunc {
    fn name(&self) -> &str {
        "make_weights"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if arg_types.len() != 9 {
            return plan_err!(
                "make_weights expects 9 arguments (w0..w8), got {}",
                arg_types.len()
            );
        }
        let mut target = DataType::Float16;
        for t in arg_types {
            match t {
                DataType::Float16 | DataType::Null => {}
                DataType::Float64 => target = DataType::Float64,
                t if t.is_numeric() => {
                    if target != DataType::Float64 {
                        target = DataType::Float32;
                    }
                }
                other => return plan_err!("make_weights expects numeric arguments, got {other}"),
            }
        }
        Ok(vec![target; 9])
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        let Some(t) = arg_types.first() else {
            return plan_err!("make_weights expects 9 arguments (w0..w8), got 0");
        };
        Ok(DataType::FixedSizeList(
            Arc::new(Field::new_list_field(t.clone(), true)),
            9,
        ))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays: Vec<ArrayRef> = args
            .args
            .iter()
            .map(|a| a.to_array(args.number_rows))
            .collect::<Result<_>>()?;
        let out: FixedSizeListArray = match arrays[0].data_type() {
            DataType::Float16 => make_weights_kernel::<Float16Type>(&prims(&arrays))?,
            DataType::Float32 => make_weights_kernel::<Float32Type>(&prims(&arrays))?,
            DataType::Float64 => make_weights_kernel::<Float64Type>(&prims(&arrays))?,
            other => return exec_err!("make_weights: unexpected argument type {other}"),
        };
        Ok(ColumnarValue::Array(Arc::new(out)))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}

fn prims<T: ArrowPrimitiveType>(arrays: &[ArrayRef]) -> Vec<&PrimitiveArray<T>> {
    arrays.iter().map(|a| a.as_primitive::<T>()).collect()
}

/// The singleton `make_weights` UDF.
pub fn make_weights_udf() -> Arc<ScalarUDF> {
    static UDF: LazyLock<Arc<ScalarUDF>> =
        LazyLock::new(|| Arc::new(ScalarUDF::from(MakeWeightsFunc::default())));
    Arc::clone(&UDF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Float32Array;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn kernel_matches_reference(rows in proptest::collection::vec(proptest::array::uniform9(-10f32..10f32), 0..64)) {
            let cols: Vec<Float32Array> = (0..9).map(|j| Float32Array::from_iter_values(rows.iter().map(|r| r[j]))).collect();
            let refs: Vec<&Float32Array> = cols.iter().collect();
            let out = make_weights_kernel::<Float32Type>(&refs).unwrap();
            prop_assert_eq!(out.len(), rows.len());
            for (i, r) in rows.iter().enumerate() {
                let v = out.value(i);
                let v = v.as_primitive::<Float32Type>();
                prop_assert_eq!(v.values().as_ref(), &make_weights_ref(*r)[..]);
            }
        }
    }

    proptest! {
        /// The packed 2-byte path (float16) on columns that are slices at odd offsets.
        #[test]
        fn f16_kernel_matches_reference(
            bits in proptest::collection::vec(proptest::array::uniform9(any::<u16>()), 0..300),
            skip in 0usize..3,
        ) {
            use arrow::array::Float16Array;
            let cols: Vec<Float16Array> = (0..9)
                .map(|j| {
                    let vals: Vec<half::f16> = std::iter::repeat_n(half::f16::ONE, skip)
                        .chain(bits.iter().map(|r| half::f16::from_bits(r[j])))
                        .collect();
                    Float16Array::from(vals).slice(skip, bits.len())
                })
                .collect();
            let refs: Vec<&Float16Array> = cols.iter().collect();
            let out = make_weights_kernel::<Float16Type>(&refs).unwrap();
            prop_assert_eq!(out.len(), bits.len());
            for (i, r) in bits.iter().enumerate() {
                let v = out.value(i);
                let got: Vec<u16> = v.as_primitive::<Float16Type>().values().iter().map(|x| x.to_bits()).collect();
                prop_assert_eq!(&got[..], &r[..]);
            }
        }
    }

    #[test]
    fn null_in_any_column_nulls_the_filter() {
        let mut cols: Vec<Float32Array> =
            (0..9).map(|_| Float32Array::from(vec![1.0, 2.0])).collect();
        cols[4] = Float32Array::from(vec![Some(1.0), None]);
        let refs: Vec<&Float32Array> = cols.iter().collect();
        let out = make_weights_kernel::<Float32Type>(&refs).unwrap();
        assert!(out.is_valid(0));
        assert!(out.is_null(1));
    }
}
