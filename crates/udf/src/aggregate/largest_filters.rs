//! `largest_filters(weights, k)`: the `k` filters of a group with the largest L2 norm,
//! largest first.
//!
//! Order: by `sum w_i^2` (f64, summed in index order), ties broken by the nine values
//! (IEEE total order, `w0` first), so the result is one well-defined list whatever the
//! order of the rows or the partitioning. Identical filters are interchangeable; a
//! group holding fewer than `k` filters returns all of them. NULL filters, filters with
//! a NaN weight and rows excluded by `FILTER (WHERE ...)` are skipped; a group without
//! filters gives NULL. `k` must be the same for every row of a group, in
//! `1..=`[`MAX_K`].
//!
//! Result: `List<FixedSizeList<T, 9>>` in the input's element type `T` (the values are
//! kept as f64, which holds float16/float32/float64 values exactly).
//!
//! Use: `analyze kl-matrix` keeps the largest peak-scaled filters in its PCA pass
//! (`largest_filters(peak_scale(weights), k)`) and takes the histogram range from their
//! coefficients first: the extreme coefficients sit on filters of large norm
//! (`|c_i| <= |x - mu|`), so that range is usually already the whole set's, which the
//! histogram pass then confirms (see `crates/cli/src/analyze.rs`).
//!
//! Algorithm: per group, a buffer of candidates and a floor (the `k`-th largest kept at
//! the last compaction); a row at or below the floor is rejected after computing its
//! norm (no allocation, one comparison); when the buffer reaches `2k`, a selection
//! (`select_nth_unstable_by`, O(k)) keeps the `k` largest and raises the floor. Partial
//! states are the kept filters; merging offers them again. Exact, associative and
//! commutative.

use std::cmp::Ordering;
use std::mem::size_of;
use std::ops::Range;
use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, ListArray};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, FieldRef, Int64Type};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, DocumentationBuilder, EmitTo,
    GroupsAccumulator, Signature, Volatility,
};

use super::layer_sparsity::{DOC_SECTION, GroupAgg, Groups, Single, passes};
use crate::common::{Filters, Flat, coerce_weights, fsl_f64, group_runs, uniform_value};

const NAME: &str = "largest_filters";

/// The largest `k` accepted (a bound on the state: 80 bytes per kept filter, twice that
/// while buffering).
pub const MAX_K: i64 = 1 << 22;

/// A filter with its squared norm: the sort key.
#[derive(Debug, Clone, Copy)]
struct Entry {
    norm2: f64,
    x: [f64; 9],
}

impl Entry {
    /// `None` for a filter with a NaN weight.
    #[inline]
    fn new(x: [f64; 9]) -> Option<Entry> {
        let norm2 = norm2(&x);
        (!norm2.is_nan()).then_some(Entry { norm2, x })
    }

    /// The total order of the result (ascending; the result lists descending).
    fn cmp(&self, o: &Entry) -> Ordering {
        self.norm2.total_cmp(&o.norm2).then_with(|| {
            self.x
                .iter()
                .zip(&o.x)
                .map(|(a, b)| a.total_cmp(b))
                .find(|c| c.is_ne())
                .unwrap_or(Ordering::Equal)
        })
    }
}

/// `sum x_i^2` in index order (the order fixes the bits).
#[inline]
fn norm2(x: &[f64; 9]) -> f64 {
    x.iter().fold(0.0, |s, &v| s + v * v)
}

/// `sum x_i^2` in float32 as a balanced tree (4 dependent adds instead of 8): only
/// [`Candidates::reject_below`]'s pre-check uses it, whose margin covers any order.
#[inline]
fn norm2_f32(r: &[f32]) -> f32 {
    let s: [f32; 9] = std::array::from_fn(|j| r[j] * r[j]);
    ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])) + s[8]
}

/// Scalar reference: the `k` non-NULL, NaN-free rows of largest norm, largest first.
pub fn largest_filters_ref(rows: &[Option<[f64; 9]>], k: usize) -> Option<Vec<[f64; 9]>> {
    let mut e: Vec<Entry> = rows
        .iter()
        .flatten()
        .filter_map(|x| Entry::new(*x))
        .collect();
    if e.is_empty() {
        return None;
    }
    e.sort_by(|a, b| b.cmp(a));
    e.truncate(k);
    Some(e.into_iter().map(|e| e.x).collect())
}

/// One group's candidates.
#[derive(Debug, Default, Clone)]
struct Candidates {
    buf: Vec<Entry>,
    /// The `k`-th largest at the last compaction: anything not above it is not needed.
    floor: Option<Entry>,
}

impl Candidates {
    #[inline]
    fn offer(&mut self, e: Entry, k: usize) {
        if let Some(f) = &self.floor
            && (e.norm2 < f.norm2 || e.cmp(f).is_le())
        {
            return;
        }
        self.buf.push(e);
        if self.buf.len() >= 2 * k {
            self.compact(k);
        }
    }

    /// Keep the `k` largest (in no particular order) and raise the floor.
    fn compact(&mut self, k: usize) {
        if self.buf.len() > k {
            self.buf.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
            self.buf.truncate(k);
            self.floor = self.buf.iter().copied().min_by(|a, b| a.cmp(b));
        }
    }

    /// A float32 squared norm below this is below the floor for sure: the floor's, less
    /// 1e-5 relative (a float32 sum of 9 squares errs by at most ~5.4e-7 relative);
    /// `-inf` without a floor or when the floor is too small for float32 to judge.
    #[inline]
    fn reject_below(&self) -> f32 {
        match &self.floor {
            Some(f) if f.norm2 > 1e-30 && f.norm2.is_finite() => (f.norm2 * (1.0 - 1e-5)) as f32,
            _ => f32::NEG_INFINITY,
        }
    }

    /// The result: the `k` largest, largest first.
    fn top(&self, k: usize) -> Vec<Entry> {
        let mut v = self.buf.clone();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v.truncate(k);
        v
    }
}

/// The per-group state of `largest_filters`.
#[derive(Debug)]
pub struct LargestFiltersAgg {
    /// The input's element type (the result's).
    elem: DataType,
    groups: Vec<Candidates>,
    k: Vec<Option<usize>>,
    /// Bytes held by the groups' buffers (capacities), kept up to date.
    bytes: usize,
}

impl LargestFiltersAgg {
    fn new(elem: DataType) -> Self {
        LargestFiltersAgg {
            elem,
            groups: Vec::new(),
            k: Vec::new(),
            bytes: 0,
        }
    }

    fn set_k(&mut self, g: usize, k: i64) -> Result<usize> {
        if !(1..=MAX_K).contains(&k) {
            return exec_err!("{NAME}: k must be in 1..={MAX_K}, got {k}");
        }
        let k = k as usize;
        match self.k[g] {
            Some(old) if old != k => {
                exec_err!("{NAME}: k must be the same for every row of a group, got {old} and {k}")
            }
            _ => {
                self.k[g] = Some(k);
                Ok(k)
            }
        }
    }

    /// The `k` of rows `rows` of group `g`: one check when the run holds one value,
    /// else row by row (which names the NULL or the second value in the error).
    fn run_k(&mut self, g: usize, k: &Int64Array, rows: Range<usize>) -> Result<usize> {
        if let Some(v) = uniform_value(k, rows.clone(), |a, b| a == b) {
            return self.set_k(g, v);
        }
        let mut kk = 1;
        for i in rows {
            kk = self.row_k(g, k, i)?;
        }
        Ok(kk)
    }

    /// The `k` of row `i` of group `g`.
    fn row_k(&mut self, g: usize, k: &Int64Array, i: usize) -> Result<usize> {
        if k.is_null(i) {
            return exec_err!("{NAME}: k must not be NULL");
        }
        self.set_k(g, k.value(i))
    }

    #[inline]
    fn offer(&mut self, g: usize, e: Entry, k: usize) {
        let c = &mut self.groups[g];
        let before = c.buf.capacity();
        c.offer(e, k);
        self.bytes =
            self.bytes + c.buf.capacity() * size_of::<Entry>() - before * size_of::<Entry>();
    }

    /// The kept filters of groups `range` as a list column (`None` for empty groups).
    fn lists(&self, range: Range<usize>, flat_type: &DataType) -> Result<ArrayRef> {
        let tops: Vec<Option<Vec<Entry>>> = range
            .map(|g| {
                let c = &self.groups[g];
                (!c.buf.is_empty()).then(|| c.top(self.k[g].unwrap_or(usize::MAX)))
            })
            .collect();
        let values: Vec<f64> = tops.iter().flatten().flatten().flat_map(|e| e.x).collect();
        let rows = values.len() / 9;
        let fsl = fsl_f64(9, values, None)?;
        let fsl: ArrayRef = if flat_type == &DataType::Float64 {
            Arc::new(fsl)
        } else {
            // Exact: every value came from the narrower type.
            let item = Arc::new(Field::new_list_field(flat_type.clone(), true));
            let vals = arrow::compute::cast(fsl.values(), flat_type)?;
            Arc::new(arrow::array::FixedSizeListArray::try_new(
                item, 9, vals, None,
            )?)
        };
        debug_assert_eq!(fsl.len(), rows);
        let nulls =
            arrow::buffer::NullBuffer::from(tops.iter().map(Option::is_some).collect::<Vec<_>>());
        Ok(Arc::new(ListArray::try_new(
            Arc::new(Field::new_list_field(fsl.data_type().clone(), true)),
            OffsetBuffer::from_lengths(tops.iter().map(|t| t.as_ref().map_or(0, Vec::len))),
            fsl,
            (nulls.null_count() > 0).then_some(nulls),
        )?))
    }
}

/// The rows of a flat slice as f64 filters.
#[inline]
fn row_f32(v: &[f32], i: usize) -> [f64; 9] {
    std::array::from_fn(|j| f64::from(v[9 * i + j]))
}

impl GroupAgg for LargestFiltersAgg {
    fn fresh(&self) -> Self {
        Self::new(self.elem.clone())
    }

    fn resize(&mut self, n: usize) {
        if n > self.groups.len() {
            self.groups.resize_with(n, Candidates::default);
            self.k.resize(n, None);
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
        let [w, k] = values else {
            return exec_err!("{NAME}: expected 2 arguments, got {}", values.len());
        };
        let f = Filters::try_new(NAME, w.as_ref())?;
        let Some(k) = k.as_primitive_opt::<Int64Type>() else {
            return exec_err!("{NAME}: k must be Int64, got {}", k.data_type());
        };
        let flat = f.flat();
        if let (None, None, Flat::F32(v)) = (f.nulls(), filter, flat) {
            // The usual batch (float16/float32 filters in runs of one group): most rows
            // fall below the floor, which a float32 norm decides without widening.
            for (g, rows) in group_runs(groups) {
                let kk = self.run_k(g, k, rows.clone())?;
                let mut reject = self.groups[g].reject_below();
                for i in rows {
                    if norm2_f32(&v[9 * i..9 * i + 9]) < reject {
                        continue;
                    }
                    if let Some(e) = Entry::new(row_f32(v, i)) {
                        self.offer(g, e, kk);
                        reject = self.groups[g].reject_below();
                    }
                }
            }
            return Ok(());
        }
        for (g, rows) in group_runs(groups) {
            for i in rows {
                if f.is_null(i) || !passes(filter, i) {
                    continue;
                }
                let kk = self.row_k(g, k, i)?;
                let x = match flat {
                    Flat::F32(v) => row_f32(v, i),
                    Flat::F64(v) => std::array::from_fn(|j| v[9 * i + j]),
                };
                if let Some(e) = Entry::new(x) {
                    self.offer(g, e, kk);
                }
            }
        }
        Ok(())
    }

    fn merge(&mut self, states: &[ArrayRef], groups: &[usize]) -> Result<()> {
        let (Some(list), Some(k)) = (
            states.first().and_then(|a| a.as_list_opt::<i32>()),
            states
                .get(1)
                .and_then(|a| a.as_primitive_opt::<Int64Type>()),
        ) else {
            return exec_err!("{NAME}: malformed state");
        };
        let Some(flat) = list
            .values()
            .as_primitive_opt::<arrow::datatypes::Float64Type>()
        else {
            return exec_err!(
                "{NAME}: malformed state values {}",
                list.values().data_type()
            );
        };
        let flat = flat.values();
        let offsets = list.value_offsets();
        for (j, &g) in groups.iter().enumerate() {
            if list.is_null(j) || k.is_null(j) {
                continue;
            }
            let kk = self.set_k(g, k.value(j))?;
            let (a, b) = (offsets[j] as usize, offsets[j + 1] as usize);
            if (b - a) % 9 != 0 {
                return exec_err!("{NAME}: malformed state (length {})", b - a);
            }
            for x in flat[a..b].chunks_exact(9) {
                if let Some(e) = Entry::new(std::array::from_fn(|i| x[i])) {
                    self.offer(g, e, kk);
                }
            }
        }
        Ok(())
    }

    fn evaluate(&self, range: Range<usize>) -> Result<ArrayRef> {
        self.lists(range, &self.elem)
    }

    fn state(&self, range: Range<usize>) -> Result<Vec<ArrayRef>> {
        let kept = self.lists(range.clone(), &DataType::Float64)?;
        let kept = kept.as_list::<i32>();
        // The state is List<Float64> of 9 values per kept filter.
        let flat = Arc::clone(kept.values().as_fixed_size_list().values());
        let state = ListArray::try_new(
            Arc::new(Field::new_list_field(DataType::Float64, true)),
            OffsetBuffer::from_lengths(
                kept.value_offsets()
                    .windows(2)
                    .map(|w| 9 * (w[1] - w[0]) as usize),
            ),
            flat,
            kept.nulls().cloned(),
        )?;
        let ks: Int64Array = self.k[range].iter().map(|k| k.map(|k| k as i64)).collect();
        Ok(vec![Arc::new(state), Arc::new(ks)])
    }

    fn take(&mut self, emit: EmitTo) {
        let gone = emit.take_needed(&mut self.groups);
        self.bytes -= gone
            .iter()
            .map(|c| c.buf.capacity() * size_of::<Entry>())
            .sum::<usize>();
        let _ = emit.take_needed(&mut self.k);
    }

    fn size(&self) -> usize {
        self.bytes
            + self.groups.capacity() * size_of::<Candidates>()
            + self.k.capacity() * size_of::<Option<usize>>()
    }
}

/// The `largest_filters` aggregate.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LargestFiltersUdaf {
    signature: Signature,
}

impl Default for LargestFiltersUdaf {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

/// The element type of the (coerced) weights argument.
fn elem_type(t: Option<&DataType>) -> DataType {
    match t {
        Some(DataType::FixedSizeList(f, _)) => f.data_type().clone(),
        _ => DataType::Float64,
    }
}

static DOC: LazyLock<Documentation> = LazyLock::new(|| {
    DocumentationBuilder::new_with_details(
        DOC_SECTION,
        "Aggregate: the k filters of a group with the largest L2 norm, largest first, as a \
         List of filters in the input's element type. Ties in the norm are broken by the \
         weights (IEEE total order, w0 first), so the list does not depend on row order or \
         partitioning. NULL filters and filters with a NaN weight are skipped; an empty group \
         gives NULL. `analyze kl-matrix` uses it on peak-scaled filters in its PCA pass: the \
         extreme PCA coefficients sit on filters of large norm, so their range usually is the \
         whole set's and saves a pass.",
        "largest_filters(weights, k)",
    )
    .with_argument(
        "weights",
        "A filter: FixedSizeList<Float16|Float32|Float64, 9> (other lists of 9 numbers are cast to Float64).",
    )
    .with_argument(
        "k",
        "How many filters to keep: an integer in 1..=4194304, the same for every row of a group.",
    )
    .with_sql_example(
        "SELECT largest_filters(make_weights(column1, 0, 0, 0, 0, 0, 0, 0, 0), 2) AS top
FROM (VALUES (1.0), (-3.0), (2.0));
-- [[-3.0, 0.0, ...], [2.0, 0.0, ...]]",
    )
    .build()
});

impl AggregateUDFImpl for LargestFiltersUdaf {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types {
            [w, k] if k.is_integer() || k == &DataType::Null => {
                Ok(vec![coerce_weights(NAME, w)?, DataType::Int64])
            }
            [_, k] => plan_err!("{NAME} expects k as an integer, got {k}"),
            _ => plan_err!(
                "{NAME} expects 2 arguments (weights, k), got {}",
                arg_types.len()
            ),
        }
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        let Some(w) = arg_types.first() else {
            return plan_err!("{NAME} expects 2 arguments (weights, k)");
        };
        Ok(DataType::List(Arc::new(Field::new_list_field(
            w.clone(),
            true,
        ))))
    }

    fn state_fields(&self, args: StateFieldsArgs<'_>) -> Result<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new(
                format_state_name(args.name, "filters"),
                DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true))),
                true,
            )),
            Arc::new(Field::new(
                format_state_name(args.name, "k"),
                DataType::Int64,
                true,
            )),
        ])
    }

    fn accumulator(&self, args: AccumulatorArgs<'_>) -> Result<Box<dyn Accumulator>> {
        let elem = elem_type(args.expr_fields.first().map(|f| f.data_type()));
        Ok(Box::new(Single::new(LargestFiltersAgg::new(elem))))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs<'_>) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs<'_>,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        let elem = elem_type(args.expr_fields.first().map(|f| f.data_type()));
        Ok(Box::new(Groups(LargestFiltersAgg::new(elem))))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}

/// The singleton `largest_filters` UDAF.
pub fn largest_filters_udaf() -> Arc<AggregateUDF> {
    static UDAF: LazyLock<Arc<AggregateUDF>> =
        LazyLock::new(|| Arc::new(AggregateUDF::from(LargestFiltersUdaf::default())));
    Arc::clone(&UDAF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::layer_sparsity::tests::fsl64;
    use crate::aggregate::testing::{Arg, Rng, assert_results_close, run_all_paths};
    use datafusion::common::ScalarValue;
    use proptest::prelude::*;

    fn rows_of(a: &ArrayRef, g: usize) -> Option<Vec<[f64; 9]>> {
        let l = a.as_list::<i32>();
        if l.is_null(g) {
            return None;
        }
        let v = l.value(g);
        let f = Filters::try_new("t", v.as_ref()).unwrap();
        Some((0..f.len()).map(|i| f.get(i)).collect())
    }

    #[test]
    fn hand_case_order_ties_nan_null_and_empty() {
        let unit = |i: usize, v: f64| {
            let mut x = [0.0; 9];
            x[i] = v;
            x
        };
        let mut nan = [0.0; 9];
        nan[4] = f64::NAN;
        // g0: norms 1, 3, 2, 3 (tie: [0,..,3] > [-3,..] by w0), NaN and NULL skipped
        let rows = [
            Some(unit(0, 1.0)),
            Some(unit(8, 3.0)),
            None,
            Some(unit(2, 2.0)),
            Some(nan),
            Some(unit(0, -3.0)),
            Some(unit(1, 5.0)),
        ];
        let groups = [0, 0, 0, 0, 0, 0, 1];
        let r = run_all_paths(
            &largest_filters_udaf(),
            &[
                Arg::Array(fsl64(&rows)),
                Arg::Literal(ScalarValue::Int64(Some(3))),
            ],
            &groups,
            3,
            None,
            5,
        )
        .unwrap();
        assert_results_close(&r, 0.0, 0.0);
        assert_eq!(
            rows_of(&r.one_pass, 0),
            Some(vec![unit(8, 3.0), unit(0, -3.0), unit(2, 2.0)])
        );
        assert_eq!(rows_of(&r.one_pass, 1), Some(vec![unit(1, 5.0)]));
        assert_eq!(rows_of(&r.one_pass, 2), None);
    }

    #[test]
    fn float16_input_comes_back_as_float16() {
        use arrow::array::{FixedSizeListArray, Float16Array};
        let vals: Vec<half::f16> = (0..27)
            .map(|i| half::f16::from_f32(i as f32 * 0.25))
            .collect();
        let w: ArrayRef = Arc::new(
            FixedSizeListArray::try_new(
                Arc::new(Field::new_list_field(DataType::Float16, true)),
                9,
                Arc::new(Float16Array::from(vals.clone())),
                None,
            )
            .unwrap(),
        );
        let r = run_all_paths(
            &largest_filters_udaf(),
            &[Arg::Array(w), Arg::Literal(ScalarValue::Int64(Some(1)))],
            &[0, 0, 0],
            1,
            None,
            3,
        )
        .unwrap();
        let top = r.one_pass.as_list::<i32>().value(0);
        assert_eq!(top.len(), 1);
        let f = top.as_fixed_size_list();
        assert_eq!(f.value_type(), DataType::Float16);
        let got: Vec<half::f16> = f
            .values()
            .as_primitive::<arrow::datatypes::Float16Type>()
            .values()
            .to_vec();
        assert_eq!(got, vals[18..27].to_vec());
    }

    #[test]
    fn bad_k_is_an_error_naming_it() {
        let rows = [Some([1.0; 9])];
        for k in [0, MAX_K + 1] {
            let e = run_all_paths(
                &largest_filters_udaf(),
                &[
                    Arg::Array(fsl64(&rows)),
                    Arg::Literal(ScalarValue::Int64(Some(k))),
                ],
                &[0],
                1,
                None,
                1,
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("k must be in 1..="), "{e}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Every path (one pass, split, merged states, converted, emit-first, plain
        /// accumulator) gives the reference's list, bit for bit: the compactions and
        /// merges keep exactly the k largest. Values are drawn from a small set so that
        /// norms tie often.
        #[test]
        fn all_paths_match_reference(seed in any::<u64>(), n in 0usize..300, groups in 1usize..4, k in 1usize..20) {
            let mut rng = Rng::new(seed);
            let rows: Vec<Option<[f64; 9]>> = (0..n).map(|i| {
                let x: [f64; 9] = std::array::from_fn(|_| (rng.below(7) as f64 - 3.0) * 0.5);
                (i % 11 != 4).then_some(x)
            }).collect();
            let gi: Vec<usize> = (0..n).map(|_| rng.below(groups)).collect();
            let mask = BooleanArray::from((0..n).map(|_| rng.below(4) != 0).collect::<Vec<_>>());
            let use_mask = seed % 2 == 1;
            let r = run_all_paths(&largest_filters_udaf(),
                &[Arg::Array(fsl64(&rows)), Arg::Literal(ScalarValue::Int64(Some(k as i64)))],
                &gi, groups, use_mask.then_some(&mask), seed).unwrap();
            assert_results_close(&r, 0.0, 0.0);
            for g in 0..groups {
                let sel: Vec<Option<[f64; 9]>> = (0..n)
                    .filter(|&i| gi[i] == g && (!use_mask || mask.value(i)))
                    .map(|i| rows[i]).collect();
                prop_assert_eq!(rows_of(&r.one_pass, g), largest_filters_ref(&sel, k));
            }
        }

        /// The float32 fast path (no NULLs, no FILTER; its float32 pre-check against the
        /// floor) keeps the same filters as the reference, with ties and near-ties.
        #[test]
        fn float32_fast_path_matches_reference(seed in any::<u64>(), n in 0usize..2000, k in 1usize..40, tiny in any::<bool>()) {
            let mut rng = Rng::new(seed);
            let scale = if tiny { 1e-20 } else { 1.0 };
            let rows: Vec<[f64; 9]> = (0..n).map(|_| std::array::from_fn(|_| {
                let v = if rng.below(2) == 0 {
                    (rng.below(5) as f64 - 2.0) * 0.5
                } else {
                    rng.uniform(-1.0, 1.0)
                };
                f64::from((v * scale) as f32)
            })).collect();
            let gi: Vec<usize> = (0..n).map(|i| usize::from(i >= n / 2)).collect();
            let r = run_all_paths(&largest_filters_udaf(),
                &[Arg::Array(crate::aggregate::layer_sparsity::tests::fsl32(&rows)),
                  Arg::Literal(ScalarValue::Int64(Some(k as i64)))],
                &gi, 2, None, seed).unwrap();
            assert_results_close(&r, 0.0, 0.0);
            for g in 0..2 {
                let sel: Vec<Option<[f64; 9]>> = (0..n).filter(|&i| gi[i] == g).map(|i| Some(rows[i])).collect();
                prop_assert_eq!(rows_of(&r.one_pass, g), largest_filters_ref(&sel, k));
            }
        }
    }
}
