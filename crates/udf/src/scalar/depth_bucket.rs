//! `depth_bucket(conv_depth_norm)`: the paper's depth bucket label of a layer's relative depth.
//!
//! MISSION.md section 3, "Depth buckets": ten labels `[0.0, 0.1]`, `(0.1, 0.2]`, ...,
//! `(0.9, 1.0]`; the first is closed on both sides, so 0.0 and 0.1 are both in it, and
//! every other bucket is open on the left. Comparisons are strict, against the edges
//! `k / 10` computed in the input's precision (Float64, or Float32 for Float32 and
//! Float16 input): `x` is in bucket `k - 1` for the smallest `k` with `x <= k / 10`. A
//! stored `conv_depth_norm = i / (n - 1)` equal to a decimal boundary is the same double
//! as `k / 10` (both are correctly rounded), so it lands in the bucket it closes; a value
//! a hair above an edge (`0.1 + 1e-12`) is in the next bucket, as the definition says.
//! Values outside `[0, 1]`, NaN and NULL give NULL. Result: Utf8. As text the labels do *not* sort in
//! depth order (`(` sorts before `[`): order groups by the depth itself, e.g.
//! `ORDER BY min(conv_depth_norm)`, or by the position in [`DEPTH_BUCKETS`].

use std::sync::{Arc, LazyLock};

use arrow::array::{Array, AsArray, StringArray};
use arrow::buffer::{NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Float32Type, Float64Type};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, DocSection, Documentation, DocumentationBuilder, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};

/// The ten labels, in depth order.
pub const DEPTH_BUCKETS: [&str; 10] = [
    "[0.0, 0.1]",
    "(0.1, 0.2]",
    "(0.2, 0.3]",
    "(0.3, 0.4]",
    "(0.4, 0.5]",
    "(0.5, 0.6]",
    "(0.6, 0.7]",
    "(0.7, 0.8]",
    "(0.8, 0.9]",
    "(0.9, 1.0]",
];

/// Bucket edges `k / 10` in Float64.
pub const EDGES_F64: [f64; 11] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
/// Bucket edges `k / 10` computed in Float32 (for Float32 and Float16 input).
pub const EDGES_F32: [f64; 11] = [
    0.0,
    0.1f32 as f64,
    0.2f32 as f64,
    0.3f32 as f64,
    0.4f32 as f64,
    0.5f32 as f64,
    0.6f32 as f64,
    0.7f32 as f64,
    0.8f32 as f64,
    0.9f32 as f64,
    1.0,
];

/// Scalar reference: the bucket index 0..=9 of `x`, `None` outside `[0, 1]` or NaN.
pub fn depth_bucket_ref(x: f64, edges: &[f64; 11]) -> Option<usize> {
    if !(x >= edges[0] && x <= edges[10]) {
        return None;
    }
    (1..=10).find(|&k| x <= edges[k]).map(|k| k - 1)
}

/// Vectorised kernel: bucket indices of a float column, then one Utf8 array built from the
/// static labels (two buffer writes per row, no per-row allocation).
pub fn depth_bucket_kernel(
    x: &[f64],
    nulls: Option<&NullBuffer>,
    edges: &[f64; 11],
) -> Result<StringArray> {
    let mut offsets = Vec::with_capacity(x.len() + 1);
    let mut bytes = Vec::with_capacity(x.len() * 10);
    let mut valid = Vec::with_capacity(x.len());
    offsets.push(0i32);
    for (i, &v) in x.iter().enumerate() {
        let b = if nulls.is_some_and(|n| n.is_null(i)) {
            None
        } else {
            depth_bucket_ref(v, edges)
        };
        if let Some(b) = b {
            bytes.extend_from_slice(DEPTH_BUCKETS[b].as_bytes());
        }
        valid.push(b.is_some());
        let Ok(end) = i32::try_from(bytes.len()) else {
            return exec_err!("depth_bucket: output larger than 2 GiB");
        };
        offsets.push(end);
    }
    let nulls = NullBuffer::from(valid);
    let nulls = (nulls.null_count() > 0).then_some(nulls);
    Ok(StringArray::try_new(
        OffsetBuffer::new(ScalarBuffer::from(offsets)),
        bytes.into(),
        nulls,
    )?)
}

/// The `depth_bucket` SQL function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct DepthBucketFunc {
    signature: Signature,
}

impl Default for DepthBucketFunc {
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
        "The paper's depth bucket of a relative depth in [0, 1]: one of the ten labels \
         `[0.0, 0.1]`, `(0.1, 0.2]`, ..., `(0.9, 1.0]` (Utf8). The first \
         bucket holds 0.0 and 0.1; a boundary such as 0.2 belongs to the bucket it closes, \
         `(0.1, 0.2]`: x is in bucket k - 1 for the smallest k with x <= k / 10, compared \
         strictly with the edges in the input's precision (Float32 edges for Float32 input). \
         Values outside [0, 1], NaN and NULL give NULL. As text the labels do not sort in \
         depth order (`(` < `[`): order groups by `min(conv_depth_norm)`.",
        "depth_bucket(conv_depth_norm)",
    )
    .with_argument(
        "conv_depth_norm",
        "A number in [0, 1], usually `layers.conv_depth_norm` (Float64); integers and decimals \
         are cast to Float64, Float16 to Float32.",
    )
    .with_sql_example(
        r#"```sql
> SELECT depth_bucket(0.0) AS a, depth_bucket(0.1) AS b, depth_bucket(0.15) AS c, depth_bucket(1.0) AS d;
+------------+------------+------------+------------+
| a          | b          | c          | d          |
+------------+------------+------------+------------+
| [0.0, 0.1] | [0.0, 0.1] | (0.1, 0.2] | (0.9, 1.0] |
+------------+------------+------------+------------+
```"#,
    )
    .build()
});

impl ScalarUDFImpl for DepthBucketFunc {
    fn name(&self) -> &str {
        "depth_bucket"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [t] = arg_types else {
            return plan_err!(
                "depth_bucket expects 1 argument (conv_depth_norm), got {}",
                arg_types.len()
            );
        };
        match t {
            DataType::Float32 | DataType::Float16 => Ok(vec![DataType::Float32]),
            DataType::Null => Ok(vec![DataType::Float64]),
            t if t.is_numeric() => Ok(vec![DataType::Float64]),
            other => plan_err!("depth_bucket expects a number in [0, 1], got {other}"),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [x] = args.args.as_slice() else {
            return plan_err!(
                "depth_bucket expects 1 argument (conv_depth_norm), got {}",
                args.args.len()
            );
        };
        let a = x.to_array(args.number_rows)?;
        let out = match a.data_type() {
            DataType::Float64 => {
                let p = a.as_primitive::<Float64Type>();
                depth_bucket_kernel(p.values(), p.nulls(), &EDGES_F64)?
            }
            DataType::Float32 => {
                let p = a.as_primitive::<Float32Type>();
                let wide: Vec<f64> = p.values().iter().map(|&v| f64::from(v)).collect();
                depth_bucket_kernel(&wide, p.nulls(), &EDGES_F32)?
            }
            other => return exec_err!("depth_bucket: unexpected argument type {other}"),
        };
        Ok(ColumnarValue::Array(Arc::new(out)))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}

/// The singleton `depth_bucket` UDF.
pub fn depth_bucket_udf() -> Arc<ScalarUDF> {
    static UDF: LazyLock<Arc<ScalarUDF>> =
        LazyLock::new(|| Arc::new(ScalarUDF::from(DepthBucketFunc::default())));
    Arc::clone(&UDF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn label(x: f64) -> Option<&'static str> {
        depth_bucket_ref(x, &EDGES_F64).map(|b| DEPTH_BUCKETS[b])
    }

    #[test]
    fn hand_cases_and_boundaries() {
        assert_eq!(label(0.0), Some("[0.0, 0.1]"));
        assert_eq!(label(-0.0), Some("[0.0, 0.1]"));
        assert_eq!(label(0.05), Some("[0.0, 0.1]"));
        assert_eq!(label(0.1), Some("[0.0, 0.1]"));
        assert_eq!(label(0.100001), Some("(0.1, 0.2]"));
        assert_eq!(label(0.15), Some("(0.1, 0.2]"));
        assert_eq!(label(0.2), Some("(0.1, 0.2]"));
        assert_eq!(label(0.3), Some("(0.2, 0.3]"));
        // 0.1 + 0.2 = 0.30000000000000004 lies above the edge 0.3: strictly the next bucket.
        assert_eq!(label(0.1 + 0.2), Some("(0.3, 0.4]"));
        assert_eq!(label(0.1 + 1e-12), Some("(0.1, 0.2]"));
        assert_eq!(label(0.7), Some("(0.6, 0.7]")); // 0.7 * 10 = 7.000000000000001
        assert_eq!(label(0.95), Some("(0.9, 1.0]"));
        assert_eq!(label(1.0), Some("(0.9, 1.0]"));
        assert_eq!(label(-0.01), None);
        assert_eq!(label(1.01), None);
        assert_eq!(label(f64::NAN), None);
        assert_eq!(label(f64::INFINITY), None);
        // Every k / 10 and every i / (n - 1) that equals a decimal boundary closes its bucket.
        for k in 1..=10 {
            assert_eq!(
                depth_bucket_ref(f64::from(k) / 10.0, &EDGES_F64),
                Some(k as usize - 1)
            );
            assert_eq!(
                depth_bucket_ref(f64::from(k as f32 / 10.0), &EDGES_F32),
                Some(k as usize - 1)
            );
        }
        for n in [11u32, 21, 51, 101] {
            for k in 1..=10 {
                let i = k * (n - 1) / 10;
                let x = f64::from(i) / f64::from(n - 1);
                assert_eq!(
                    depth_bucket_ref(x, &EDGES_F64),
                    Some(k as usize - 1),
                    "{i}/{}",
                    n - 1
                );
            }
        }
    }

    #[test]
    fn kernel_nulls_and_empty() {
        let nulls = NullBuffer::from(vec![true, false, true, true]);
        let out = depth_bucket_kernel(&[0.15, 0.5, 2.0, 1.0], Some(&nulls), &EDGES_F64).unwrap();
        assert_eq!(out.value(0), "(0.1, 0.2]");
        assert!(out.is_null(1) && out.is_null(2));
        assert_eq!(out.value(3), "(0.9, 1.0]");
        assert_eq!(depth_bucket_kernel(&[], None, &EDGES_F64).unwrap().len(), 0);
    }

    proptest! {
        #[test]
        fn kernel_matches_reference_and_bucket_contains_x(xs in proptest::collection::vec(-0.5f64..1.5, 0..64)) {
            let out = depth_bucket_kernel(&xs, None, &EDGES_F64).unwrap();
            for (i, &x) in xs.iter().enumerate() {
                let want = depth_bucket_ref(x, &EDGES_F64);
                prop_assert_eq!(out.is_valid(i), want.is_some());
                if let Some(b) = want {
                    prop_assert_eq!(out.value(i), DEPTH_BUCKETS[b]);
                    // The bucket (b/10, (b+1)/10] contains x, strictly.
                    prop_assert!(x <= (b as f64 + 1.0) / 10.0);
                    prop_assert!(b == 0 || x > b as f64 / 10.0);
                }
            }
        }
    }
}
