//! `coef_range(coefs)`: the smallest and largest of all 9 coefficients of all rows.
//!
//! This is the paper's shared histogram range (MISSION.md section 3, "Histograms for
//! drift": one `[lo, hi]` = the min and max over all coefficients of all filters), meant
//! to feed `coef_histogram`:
//! `coef_histogram(c, (SELECT coef_range(c)['min'] FROM t), (SELECT coef_range(c)['max'] FROM t))`.
//!
//! Result: a struct `{min Float64, max Float64}` (both fields NULL when the struct is). NULL rows and rows excluded by
//! `FILTER (WHERE ...)` are skipped; NaN coefficients are ignored (as `np.nanmin` /
//! `np.nanmax`); infinities count. A group with no non-NaN coefficient gives NULL.
//!
//! Algorithm: a running min and max per group (merge = min of mins, max of maxes:
//! exact, associative and commutative).

use std::mem::size_of;
use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array, StructArray};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Float64Type};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, DocSection, Documentation, DocumentationBuilder,
    EmitTo, GroupsAccumulator, Signature, Volatility,
};

use crate::common::{Filters, Flat, coerce_weights, group_runs};

const NAME: &str = "coef_range";

/// Scalar reference: `(min, max)` over every non-NaN value of the non-NULL rows.
pub fn coef_range_ref(rows: &[Option<[f64; 9]>]) -> Option<(f64, f64)> {
    let vals: Vec<f64> = rows
        .iter()
        .flatten()
        .flatten()
        .copied()
        .filter(|v| !v.is_nan())
        .collect();
    if vals.is_empty() {
        return None;
    }
    let mn = vals.iter().copied().fold(f64::INFINITY, f64::min);
    let mx = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some((mn, mx))
}

/// Vectorised kernel: fold the rows into `mins[g]` / `maxs[g]`, `g = group_indices[i]`
/// (skipping NULL rows, rows whose `filter` is false/NULL, and NaN values). A group is
/// empty while its min is greater than its max (the initial `+inf` / `-inf`).
pub(crate) fn coef_range_update(
    mins: &mut [f64],
    maxs: &mut [f64],
    coefs: &Filters<'_>,
    group_indices: &[usize],
    filter: Option<&BooleanArray>,
) {
    if coefs.nulls().is_none() && filter.is_none() {
        let flat = coefs.flat();
        for (g, rows) in group_runs(group_indices) {
            let (a, b) = (9 * rows.start, 9 * rows.end);
            let (mn, mx) = match flat {
                Flat::F32(x) => {
                    let (mn, mx) = min_max(&x[a..b]);
                    (f64::from(mn), f64::from(mx))
                }
                Flat::F64(x) => min_max(&x[a..b]),
            };
            mins[g] = mins[g].min(mn);
            maxs[g] = maxs[g].max(mx);
        }
        return;
    }
    for (i, &g) in group_indices.iter().enumerate() {
        if coefs.is_null(i) || filter.is_some_and(|f| !f.is_valid(i) || !f.value(i)) {
            continue;
        }
        let x = coefs.get(i);
        let (mut mn, mut mx) = (mins[g], maxs[g]);
        for v in x {
            // comparisons with NaN are false: NaN is ignored
            if v < mn {
                mn = v;
            }
            if v > mx {
                mx = v;
            }
        }
        mins[g] = mn;
        maxs[g] = mx;
    }
}

/// Smallest and largest value of a slice, NaN ignored (`(+inf, -inf)` when there is
/// none): 16 running minima and maxima that the AVX-512 / AVX2 versions keep in vector
/// registers, folded at the end.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512bw+avx512dq",
    "x86_64+avx2+fma",
    "x86_64+avx"
))]
fn min_max<T: Copy + PartialOrd + MinMaxInit>(values: &[T]) -> (T, T) {
    const LANES: usize = 16;
    let mut mn = [T::POS_INF; LANES];
    let mut mx = [T::NEG_INF; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            // comparisons with NaN are false: NaN is ignored
            mn[l] = if c[l] < mn[l] { c[l] } else { mn[l] };
            mx[l] = if c[l] > mx[l] { c[l] } else { mx[l] };
        }
    }
    let (mut a, mut b) = (T::POS_INF, T::NEG_INF);
    for &v in chunks.remainder().iter().chain(&mn) {
        a = if v < a { v } else { a };
    }
    for &v in chunks.remainder().iter().chain(&mx) {
        b = if v > b { v } else { b };
    }
    (a, b)
}

/// The infinities [`min_max`] starts from.
trait MinMaxInit {
    const POS_INF: Self;
    const NEG_INF: Self;
}

impl MinMaxInit for f32 {
    const POS_INF: f32 = f32::INFINITY;
    const NEG_INF: f32 = f32::NEG_INFINITY;
}

impl MinMaxInit for f64 {
    const POS_INF: f64 = f64::INFINITY;
    const NEG_INF: f64 = f64::NEG_INFINITY;
}

fn result_fields() -> Fields {
    Fields::from(vec![
        Field::new("min", DataType::Float64, true),
        Field::new("max", DataType::Float64, true),
    ])
}

/// Validity of each group: seen at least one value.
fn seen(mins: &[f64], maxs: &[f64]) -> Option<NullBuffer> {
    let nulls = NullBuffer::from(
        mins.iter()
            .zip(maxs)
            .map(|(a, b)| a <= b)
            .collect::<Vec<_>>(),
    );
    (nulls.null_count() > 0).then_some(nulls)
}

/// Zero out the slots of empty groups (so the arrays hold no infinities under NULLs).
fn cleaned(mins: &[f64], maxs: &[f64]) -> (Vec<f64>, Vec<f64>) {
    mins.iter()
        .zip(maxs)
        .map(|(&a, &b)| if a <= b { (a, b) } else { (0.0, 0.0) })
        .unzip()
}

/// The result struct; the fields of a NULL row are NULL too, so that `r['min']` of an
/// empty group is NULL (DataFusion's field access does not apply the struct's nulls).
fn evaluate_ranges(mins: &[f64], maxs: &[f64]) -> Result<ArrayRef> {
    let nulls = seen(mins, maxs);
    let (lo, hi) = cleaned(mins, maxs);
    Ok(Arc::new(StructArray::try_new(
        result_fields(),
        vec![
            Arc::new(Float64Array::new(lo.into(), nulls.clone())),
            Arc::new(Float64Array::new(hi.into(), nulls.clone())),
        ],
        nulls,
    )?))
}

fn state_arrays(mins: &[f64], maxs: &[f64]) -> Vec<ArrayRef> {
    let nulls = seen(mins, maxs);
    let (lo, hi) = cleaned(mins, maxs);
    vec![
        Arc::new(Float64Array::new(lo.into(), nulls.clone())),
        Arc::new(Float64Array::new(hi.into(), nulls)),
    ]
}

/// Merge partial states `[min, max]` into `mins[g]` / `maxs[g]`.
fn merge_states(
    mins: &mut [f64],
    maxs: &mut [f64],
    values: &[ArrayRef],
    group_indices: &[usize],
) -> Result<()> {
    let [smin, smax] = values else {
        return exec_err!("{NAME}: expected 2 state columns, got {}", values.len());
    };
    let (Some(smin), Some(smax)) = (
        smin.as_primitive_opt::<Float64Type>(),
        smax.as_primitive_opt::<Float64Type>(),
    ) else {
        return exec_err!("{NAME}: unexpected state types");
    };
    for (i, &g) in group_indices.iter().enumerate() {
        if smin.is_null(i) || smax.is_null(i) {
            continue;
        }
        mins[g] = mins[g].min(smin.value(i));
        maxs[g] = maxs[g].max(smax.value(i));
    }
    Ok(())
}

/// The `coef_range` aggregate.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct CoefRangeAgg {
    signature: Signature,
}

impl Default for CoefRangeAgg {
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
        "Aggregate: the range of all coefficients, min = min over rows r and i = 0..8 of c[r][i], \
         max = the same maximum; the paper's shared histogram range for coef_histogram. \
         Returns a struct {min Float64, max Float64} (both NULL with the struct). NULL rows are skipped, NaN values are \
         ignored (like numpy's nanmin/nanmax), infinities count; NULL when no value is left.",
        "coef_range(coefs)",
    )
    .with_argument(
        "coefs",
        "9 coefficients per row, typically pca_project(weights, basis): FixedSizeList of 9 \
         Float16/Float32/Float64 (other lists of 9 numbers are cast to Float64).",
    )
    .with_sql_example(
        "SELECT coef_range(make_weights(column1, 0, 0, 0, 0, 0, 0, 0, column2)) AS r
FROM (VALUES (-1.5, 2.0), (0.5, 3.0));
+-----------------------+
| r                     |
+-----------------------+
| {min: -1.5, max: 3.0} |
+-----------------------+",
    )
    .build()
});

impl AggregateUDFImpl for CoefRangeAgg {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [t] = arg_types else {
            return plan_err!("{NAME} expects 1 argument (coefs), got {}", arg_types.len());
        };
        Ok(vec![coerce_weights(NAME, t)?])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(result_fields()))
    }

    fn state_fields(&self, args: StateFieldsArgs<'_>) -> Result<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new(
                format_state_name(args.name, "min"),
                DataType::Float64,
                true,
            )),
            Arc::new(Field::new(
                format_state_name(args.name, "max"),
                DataType::Float64,
                true,
            )),
        ])
    }

    fn accumulator(&self, _args: AccumulatorArgs<'_>) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(CoefRangeAccumulator::default()))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs<'_>) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        _args: AccumulatorArgs<'_>,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(CoefRangeGroupsAccumulator::default()))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}

/// `coef_range` without GROUP BY: one running min and max.
#[derive(Debug)]
pub struct CoefRangeAccumulator {
    min: f64,
    max: f64,
}

impl Default for CoefRangeAccumulator {
    fn default() -> Self {
        Self {
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
}

impl Accumulator for CoefRangeAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let Some(c) = values.first() else {
            return exec_err!("{NAME}: missing argument");
        };
        let c = Filters::try_new(NAME, c.as_ref())?;
        let groups = vec![0usize; c.len()];
        coef_range_update(
            std::slice::from_mut(&mut self.min),
            std::slice::from_mut(&mut self.max),
            &c,
            &groups,
            None,
        );
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let a = evaluate_ranges(&[self.min], &[self.max])?;
        ScalarValue::try_from_array(&a, 0)
    }

    fn size(&self) -> usize {
        size_of::<Self>()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        state_arrays(&[self.min], &[self.max])
            .iter()
            .map(|a| ScalarValue::try_from_array(a, 0))
            .collect()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let n = states.first().map_or(0, |a| a.len());
        let groups = vec![0usize; n];
        merge_states(
            std::slice::from_mut(&mut self.min),
            std::slice::from_mut(&mut self.max),
            states,
            &groups,
        )
    }
}

/// `coef_range` per group: running mins and maxes indexed by group.
#[derive(Debug, Default)]
pub struct CoefRangeGroupsAccumulator {
    mins: Vec<f64>,
    maxs: Vec<f64>,
}

impl CoefRangeGroupsAccumulator {
    fn resize(&mut self, n: usize) {
        self.mins.resize(n, f64::INFINITY);
        self.maxs.resize(n, f64::NEG_INFINITY);
    }
}

impl GroupsAccumulator for CoefRangeGroupsAccumulator {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        let Some(c) = values.first() else {
            return exec_err!("{NAME}: missing argument");
        };
        self.resize(total_num_groups);
        let c = Filters::try_new(NAME, c.as_ref())?;
        coef_range_update(
            &mut self.mins,
            &mut self.maxs,
            &c,
            group_indices,
            opt_filter,
        );
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let mins = emit_to.take_needed(&mut self.mins);
        let maxs = emit_to.take_needed(&mut self.maxs);
        evaluate_ranges(&mins, &maxs)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let mins = emit_to.take_needed(&mut self.mins);
        let maxs = emit_to.take_needed(&mut self.maxs);
        Ok(state_arrays(&mins, &maxs))
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.resize(total_num_groups);
        merge_states(&mut self.mins, &mut self.maxs, values, group_indices)
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let Some(c) = values.first() else {
            return exec_err!("{NAME}: missing argument");
        };
        let c = Filters::try_new(NAME, c.as_ref())?;
        let mut mins = vec![f64::INFINITY; c.len()];
        let mut maxs = vec![f64::NEG_INFINITY; c.len()];
        let groups: Vec<usize> = (0..c.len()).collect();
        coef_range_update(&mut mins, &mut maxs, &c, &groups, opt_filter);
        Ok(state_arrays(&mins, &maxs))
    }

    fn size(&self) -> usize {
        (self.mins.capacity() + self.maxs.capacity()) * size_of::<f64>()
    }
}

/// The singleton `coef_range` UDAF.
pub fn coef_range_udaf() -> Arc<AggregateUDF> {
    static UDAF: LazyLock<Arc<AggregateUDF>> =
        LazyLock::new(|| Arc::new(AggregateUDF::from(CoefRangeAgg::default())));
    Arc::clone(&UDAF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::testing::{Arg, Rng, assert_results_close, run_all_paths};
    use crate::common::fsl_f64;
    use proptest::prelude::*;

    fn coefs(rows: &[Option<[f64; 9]>]) -> ArrayRef {
        let flat: Vec<f64> = rows.iter().flat_map(|r| r.unwrap_or([0.0; 9])).collect();
        let nulls = NullBuffer::from(rows.iter().map(Option::is_some).collect::<Vec<_>>());
        Arc::new(fsl_f64(9, flat, Some(nulls)).unwrap())
    }

    fn get(a: &ArrayRef, g: usize) -> Option<(f64, f64)> {
        let s = a.as_struct();
        if s.is_null(g) {
            return None;
        }
        let v = |k: usize| s.column(k).as_primitive::<Float64Type>().value(g);
        Some((v(0), v(1)))
    }

    #[test]
    fn hand_cases_nan_null_empty() {
        let mut a = [0.0; 9];
        a[3] = -2.5;
        a[8] = f64::NAN;
        let mut b = [1.0; 9];
        b[0] = 4.0;
        let all_nan = [f64::NAN; 9];
        // g0: a, b -> [-2.5, 4]; g1: NULL; g2: all NaN; g3: no rows; g4: zeros
        let rows = [Some(a), None, Some(all_nan), Some(b), Some([0.0; 9])];
        let r = run_all_paths(
            &coef_range_udaf(),
            &[Arg::Array(coefs(&rows))],
            &[0, 1, 2, 0, 4],
            5,
            None,
            11,
        )
        .unwrap();
        assert_results_close(&r, 0.0, 0.0);
        assert_eq!(get(&r.one_pass, 0), Some((-2.5, 4.0)));
        assert_eq!(get(&r.one_pass, 1), None);
        assert_eq!(get(&r.one_pass, 2), None);
        assert_eq!(get(&r.one_pass, 3), None);
        assert_eq!(get(&r.one_pass, 4), Some((0.0, 0.0)));
    }

    #[test]
    fn infinities_count() {
        let mut a = [0.0; 9];
        a[1] = f64::NEG_INFINITY;
        assert_eq!(coef_range_ref(&[Some(a)]), Some((f64::NEG_INFINITY, 0.0)));
        let r = run_all_paths(
            &coef_range_udaf(),
            &[Arg::Array(coefs(&[Some(a)]))],
            &[0],
            1,
            None,
            1,
        )
        .unwrap();
        assert_results_close(&r, 0.0, 0.0);
        assert_eq!(get(&r.one_pass, 0), Some((f64::NEG_INFINITY, 0.0)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn all_paths_match_reference(seed in any::<u64>(), n in 0usize..200, groups in 1usize..6) {
            let mut rng = Rng::new(seed);
            let rows: Vec<Option<[f64; 9]>> = (0..n).map(|i| {
                let mut x: [f64; 9] = std::array::from_fn(|_| rng.uniform(-5.0, 5.0));
                if rng.below(10) == 0 { x[rng.below(9)] = f64::NAN; }
                (i % 6 != 2).then_some(x)
            }).collect();
            let gi: Vec<usize> = (0..n).map(|_| rng.below(groups)).collect();
            let mask = BooleanArray::from((0..n).map(|_| rng.below(4) != 0).collect::<Vec<_>>());
            let use_mask = seed % 2 == 1;
            let r = run_all_paths(&coef_range_udaf(), &[Arg::Array(coefs(&rows))], &gi, groups,
                use_mask.then_some(&mask), seed).unwrap();
            assert_results_close(&r, 0.0, 0.0);
            for g in 0..groups {
                let sel: Vec<Option<[f64; 9]>> = (0..n)
                    .filter(|&i| gi[i] == g && (!use_mask || mask.value(i)))
                    .map(|i| rows[i]).collect();
                prop_assert_eq!(get(&r.one_pass, g), coef_range_ref(&sel));
            }
        }
    }
}
