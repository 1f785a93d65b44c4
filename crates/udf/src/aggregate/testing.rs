//! Test harness for aggregate functions (compiled only for tests).
//!
//! [`run_all_paths`] feeds the same rows through every way DataFusion can drive an
//! aggregate and returns each path's evaluated result (one row per group), so a test
//! can check they agree with [`assert_results_close`] or [`assert_arrays_close`]:
//!
//! * `one_pass`: one `GroupsAccumulator::update_batch` over all rows, `evaluate(All)`;
//! * `split_updates`: one `GroupsAccumulator`, `update_batch` over random row slices;
//! * `merged`: several `GroupsAccumulator`s, each over a random part, each
//!   `state(EmitTo::All)` merged (`merge_batch`) into a fresh one;
//! * `converted`: `convert_to_state` over random slices, merged into a fresh one;
//! * `emit_first`: like `one_pass`, but emitted as `evaluate(First(k))` then
//!   `evaluate(All)`, and with `state(First(k))` / `state(All)` through a merge;
//! * `accumulator`: the plain `Accumulator` per group, over random parts whose `state()`
//!   are merged with `merge_batch` into a fresh accumulator.
//!
//! Rows whose `filter` is false or NULL are skipped, as `FILTER (WHERE ...)` does.
//!
//! ```ignore
//! let res = run_all_paths(&pca_fit_udaf(), &[Arg::Array(w)], &groups, 3, None, seed)?;
//! assert_results_close(&res, 1e-9, 1e-12);
//! ```
#![allow(dead_code)]

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, UInt32Array};
use arrow::compute::{cast, concat, filter, take};
use arrow::datatypes::{DataType, Field, FieldRef, Schema};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDF, EmitTo, GroupsAccumulator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{Column, Literal};

/// One argument of the aggregate call.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    /// A column: one value per row.
    Array(ArrayRef),
    /// A literal: the physical expression is a `Literal`, and the accumulators see it
    /// expanded to one value per row (as DataFusion evaluates it).
    Literal(ScalarValue),
}

/// The evaluated result of each path, one row per group.
#[derive(Debug, Clone)]
pub(crate) struct PathResults {
    /// One `update_batch` over everything.
    pub one_pass: ArrayRef,
    /// `update_batch` over random slices into one accumulator.
    pub split_updates: ArrayRef,
    /// Several accumulators, `state(All)` merged into a fresh one.
    pub merged: ArrayRef,
    /// `convert_to_state` then `merge_batch`.
    pub converted: ArrayRef,
    /// `evaluate(First(k))` + `evaluate(All)`, after a `state(First(k))`/`state(All)` merge.
    pub emit_first: ArrayRef,
    /// The plain `Accumulator` (update over parts, state, merge), per group.
    pub accumulator: ArrayRef,
}

impl PathResults {
    /// The results with their names, `one_pass` first.
    pub fn named(&self) -> [(&'static str, &ArrayRef); 6] {
        [
            ("one_pass", &self.one_pass),
            ("split_updates", &self.split_updates),
            ("merged", &self.merged),
            ("converted", &self.converted),
            ("emit_first", &self.emit_first),
            ("accumulator", &self.accumulator),
        ]
    }
}

/// A tiny deterministic PRNG (splitmix64), so tests need no extra dependency.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
    /// Random cut points: sorted, distinct, in `1..len`, at most `max_cuts` of them.
    pub fn cuts(&mut self, len: usize, max_cuts: usize) -> Vec<usize> {
        if len < 2 {
            return vec![];
        }
        let k = self.below(max_cuts + 1);
        let mut c: Vec<usize> = (0..k).map(|_| 1 + self.below(len - 1)).collect();
        c.sort_unstable();
        c.dedup();
        c
    }
}

/// Everything needed to create accumulators for one call.
struct Call {
    udaf: Arc<AggregateUDF>,
    schema: Schema,
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    fields: Vec<FieldRef>,
    return_field: FieldRef,
    /// The argument arrays, coerced, one value per row.
    arrays: Vec<ArrayRef>,
}

impl Call {
    fn new(udaf: &Arc<AggregateUDF>, args: &[Arg], rows: usize) -> Result<Call> {
        let types: Vec<DataType> = args
            .iter()
            .map(|a| match a {
                Arg::Array(a) => a.data_type().clone(),
                Arg::Literal(s) => s.data_type(),
            })
            .collect();
        // As the planner does for user-defined signatures; other signatures keep the types.
        let coerced = udaf.coerce_types(&types).unwrap_or_else(|_| types.clone());
        let mut fields = Vec::with_capacity(args.len());
        let mut exprs: Vec<Arc<dyn PhysicalExpr>> = Vec::with_capacity(args.len());
        let mut arrays = Vec::with_capacity(args.len());
        for (i, (a, t)) in args.iter().zip(&coerced).enumerate() {
            let name = format!("c{i}");
            let arr = match a {
                Arg::Array(a) => {
                    assert_eq!(a.len(), rows, "argument {i} has the wrong length");
                    exprs.push(Arc::new(Column::new(&name, i)));
                    Arc::clone(a)
                }
                Arg::Literal(s) => {
                    let s = s.cast_to(t)?;
                    exprs.push(Arc::new(Literal::new(s.clone())));
                    s.to_array_of_size(rows)?
                }
            };
            let arr = if arr.data_type() == t {
                arr
            } else {
                cast(&arr, t)?
            };
            fields.push(Arc::new(Field::new(name, t.clone(), true)));
            arrays.push(arr);
        }
        let return_field = udaf.return_field(&fields)?;
        let schema = Schema::new(fields.clone());
        Ok(Call {
            udaf: Arc::clone(udaf),
            schema,
            exprs,
            fields,
            return_field,
            arrays,
        })
    }

    fn acc_args(&self) -> AccumulatorArgs<'_> {
        AccumulatorArgs {
            return_field: Arc::clone(&self.return_field),
            schema: &self.schema,
            ignore_nulls: false,
            order_bys: &[],
            is_reversed: false,
            name: self.udaf.name(),
            is_distinct: false,
            exprs: &self.exprs,
            expr_fields: &self.fields,
        }
    }

    fn groups(&self) -> Result<Box<dyn GroupsAccumulator>> {
        assert!(
            self.udaf.groups_accumulator_supported(self.acc_args()),
            "{} does not support GroupsAccumulator",
            self.udaf.name()
        );
        self.udaf.create_groups_accumulator(self.acc_args())
    }

    fn plain(&self) -> Result<Box<dyn Accumulator>> {
        self.udaf.accumulator(self.acc_args())
    }

    /// The state fields (checks they can be built and match the states' types).
    fn state_fields(&self) -> Result<Vec<FieldRef>> {
        self.udaf.state_fields(StateFieldsArgs {
            name: self.udaf.name(),
            input_fields: &self.fields,
            return_field: Arc::clone(&self.return_field),
            ordering_fields: &[],
            is_distinct: false,
        })
    }
}

fn slice_all(arrays: &[ArrayRef], off: usize, len: usize) -> Vec<ArrayRef> {
    arrays.iter().map(|a| a.slice(off, len)).collect()
}

fn ranges(len: usize, cuts: &[usize]) -> Vec<(usize, usize)> {
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for &c in cuts.iter().chain(std::iter::once(&len)) {
        out.push((start, c - start));
        start = c;
    }
    out
}

fn check_state_types(fields: &[FieldRef], state: &[ArrayRef], path: &str) {
    assert_eq!(
        fields.len(),
        state.len(),
        "{path}: state has {} columns, state_fields {}",
        state.len(),
        fields.len()
    );
    for (f, s) in fields.iter().zip(state) {
        assert_eq!(
            f.data_type(),
            s.data_type(),
            "{path}: state column {} has the wrong type",
            f.name()
        );
    }
}

/// Run every path (see the module doc) and return each result.
///
/// `group_indices[i]` is the group of row `i` (`< num_groups`); `filter` is the
/// `FILTER (WHERE ...)` mask; `seed` drives the random splits.
///
/// # Panics
/// On mismatched lengths or state types (test code).
pub(crate) fn run_all_paths(
    udaf: &Arc<AggregateUDF>,
    args: &[Arg],
    group_indices: &[usize],
    num_groups: usize,
    filter_mask: Option<&BooleanArray>,
    seed: u64,
) -> Result<PathResults> {
    let rows = group_indices.len();
    assert!(group_indices.iter().all(|&g| g < num_groups));
    if let Some(f) = filter_mask {
        assert_eq!(f.len(), rows);
    }
    let call = Call::new(udaf, args, rows)?;
    let state_fields = call.state_fields()?;
    let arrays = &call.arrays;
    let mut rng = Rng::new(seed);

    // (a) one pass
    let mut acc = call.groups()?;
    acc.update_batch(arrays, group_indices, filter_mask, num_groups)?;
    let one_pass = acc.evaluate(EmitTo::All)?;

    // (b) random slices into one accumulator
    let mut acc = call.groups()?;
    for (off, len) in ranges(rows, &rng.cuts(rows, 5)) {
        let f = filter_mask.map(|f| f.slice(off, len));
        acc.update_batch(
            &slice_all(arrays, off, len),
            &group_indices[off..off + len],
            f.as_ref(),
            num_groups,
        )?;
    }
    let split_updates = acc.evaluate(EmitTo::All)?;

    // (c) several accumulators, states merged into a fresh one (in a random order)
    let mut parts = ranges(rows, &rng.cuts(rows, 5));
    for i in (1..parts.len()).rev() {
        parts.swap(i, rng.below(i + 1));
    }
    let mut target = call.groups()?;
    for (off, len) in parts {
        let mut acc = call.groups()?;
        let f = filter_mask.map(|f| f.slice(off, len));
        // Only the groups seen so far exist in a partial accumulator's numbering in
        // DataFusion; here every accumulator knows all groups, which is also valid.
        acc.update_batch(
            &slice_all(arrays, off, len),
            &group_indices[off..off + len],
            f.as_ref(),
            num_groups,
        )?;
        let state = acc.state(EmitTo::All)?;
        check_state_types(&state_fields, &state, "merged");
        let gi: Vec<usize> = (0..num_groups).collect();
        target.merge_batch(&state, &gi, num_groups)?;
    }
    let merged = target.evaluate(EmitTo::All)?;

    // (d) convert_to_state over slices, then merge
    let mut target = call.groups()?;
    let acc = call.groups()?;
    for (off, len) in ranges(rows, &rng.cuts(rows, 3)) {
        let f = filter_mask.map(|f| f.slice(off, len));
        let state = acc.convert_to_state(&slice_all(arrays, off, len), f.as_ref())?;
        check_state_types(&state_fields, &state, "converted");
        for s in &state {
            assert_eq!(
                s.len(),
                len,
                "convert_to_state must give one row per input row"
            );
        }
        target.merge_batch(&state, &group_indices[off..off + len], num_groups)?;
    }
    let converted = target.evaluate(EmitTo::All)?;

    // (e) partial emission: state(First(k)) + state(All) merged, evaluate(First(j)) + (All)
    let mut acc = call.groups()?;
    acc.update_batch(arrays, group_indices, filter_mask, num_groups)?;
    let k = rng.below(num_groups + 1);
    let mut target = call.groups()?;
    if k > 0 {
        let s1 = acc.state(EmitTo::First(k))?;
        check_state_types(&state_fields, &s1, "emit_first");
        target.merge_batch(&s1, &(0..k).collect::<Vec<_>>(), num_groups)?;
    }
    let s2 = acc.state(EmitTo::All)?;
    target.merge_batch(&s2, &(k..num_groups).collect::<Vec<_>>(), num_groups)?;
    let j = rng.below(num_groups + 1);
    let emit_first = if j > 0 && j < num_groups {
        let a = target.evaluate(EmitTo::First(j))?;
        let b = target.evaluate(EmitTo::All)?;
        concat(&[a.as_ref(), b.as_ref()])?
    } else {
        target.evaluate(EmitTo::All)?
    };

    // (f) the plain Accumulator, per group, over random parts merged through state()
    let mut per_group: Vec<ScalarValue> = Vec::with_capacity(num_groups);
    for g in 0..num_groups {
        let idx: Vec<u32> = (0..rows)
            .filter(|&i| group_indices[i] == g)
            .filter(|&i| filter_mask.is_none_or(|f| f.is_valid(i) && f.value(i)))
            .map(|i| i as u32)
            .collect();
        let idx = UInt32Array::from(idx);
        let rows_g: Vec<ArrayRef> = arrays
            .iter()
            .map(|a| take(a.as_ref(), &idx, None))
            .collect::<std::result::Result<_, _>>()?;
        let n = idx.len();
        let mut target = call.plain()?;
        for (off, len) in ranges(n, &rng.cuts(n, 3)) {
            let mut part = call.plain()?;
            part.update_batch(&slice_all(&rows_g, off, len))?;
            let state = part.state()?;
            let state: Vec<ArrayRef> = state.iter().map(|s| s.to_array()).collect::<Result<_>>()?;
            check_state_types(&state_fields, &state, "accumulator");
            target.merge_batch(&state)?;
        }
        per_group.push(target.evaluate()?);
    }
    let accumulator = if per_group.is_empty() {
        arrow::array::new_empty_array(call.return_field.data_type())
    } else {
        ScalarValue::iter_to_array(per_group)?
    };

    for (name, r) in [
        ("one_pass", &one_pass),
        ("split_updates", &split_updates),
        ("merged", &merged),
        ("converted", &converted),
        ("emit_first", &emit_first),
        ("accumulator", &accumulator),
    ] {
        assert_eq!(r.len(), num_groups, "{name}: one row per group expected");
    }
    Ok(PathResults {
        one_pass,
        split_updates,
        merged,
        converted,
        emit_first,
        accumulator,
    })
}

/// Keep only the rows of `arrays` where `mask` is true (for building expected values).
pub(crate) fn filter_rows(arrays: &[ArrayRef], mask: &BooleanArray) -> Result<Vec<ArrayRef>> {
    Ok(arrays
        .iter()
        .map(|a| filter(a.as_ref(), mask))
        .collect::<std::result::Result<_, _>>()?)
}

/// Whether two floats agree: both NaN, equal, or `|a - b| <= rel * max(|a|, |b|)` or
/// `|a - b| <= abs`.
pub(crate) fn close(a: f64, b: f64, rel: f64, abs: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a == b {
        return true;
    }
    let d = (a - b).abs();
    d <= abs || d <= rel * a.abs().max(b.abs())
}

/// Compare row `i` of `a` with row `j` of `b`, recursing into structs and lists; floats
/// with [`close`]; other leaves exactly. Returns the path of the first difference.
fn diff_at(
    a: &dyn Array,
    i: usize,
    b: &dyn Array,
    j: usize,
    rel: f64,
    abs: f64,
    path: &str,
) -> Option<String> {
    if a.data_type() != b.data_type() {
        return Some(format!(
            "{path}: types {} vs {}",
            a.data_type(),
            b.data_type()
        ));
    }
    match (a.is_null(i), b.is_null(j)) {
        (true, true) => return None,
        (false, false) => {}
        (x, y) => return Some(format!("{path}: null {x} vs {y}")),
    }
    match a.data_type() {
        DataType::Float64 => {
            let (x, y) = (
                a.as_primitive::<arrow::datatypes::Float64Type>().value(i),
                b.as_primitive::<arrow::datatypes::Float64Type>().value(j),
            );
            (!close(x, y, rel, abs)).then(|| format!("{path}: {x} vs {y}"))
        }
        DataType::Float32 => {
            let (x, y) = (
                f64::from(a.as_primitive::<arrow::datatypes::Float32Type>().value(i)),
                f64::from(b.as_primitive::<arrow::datatypes::Float32Type>().value(j)),
            );
            (!close(x, y, rel, abs)).then(|| format!("{path}: {x} vs {y}"))
        }
        DataType::Struct(fields) => {
            let (sa, sb) = (a.as_struct(), b.as_struct());
            fields.iter().enumerate().find_map(|(k, f)| {
                diff_at(
                    sa.column(k).as_ref(),
                    i,
                    sb.column(k).as_ref(),
                    j,
                    rel,
                    abs,
                    &format!("{path}.{}", f.name()),
                )
            })
        }
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(_, _) => {
            let (va, vb) = (list_value(a, i), list_value(b, j));
            if va.len() != vb.len() {
                return Some(format!("{path}: list lengths {} vs {}", va.len(), vb.len()));
            }
            (0..va.len()).find_map(|k| {
                diff_at(
                    va.as_ref(),
                    k,
                    vb.as_ref(),
                    k,
                    rel,
                    abs,
                    &format!("{path}[{k}]"),
                )
            })
        }
        _ => {
            let x = ScalarValue::try_from_array(a, i);
            let y = ScalarValue::try_from_array(b, j);
            match (x, y) {
                (Ok(x), Ok(y)) if x == y => None,
                (x, y) => Some(format!("{path}: {x:?} vs {y:?}")),
            }
        }
    }
}

fn list_value(a: &dyn Array, i: usize) -> ArrayRef {
    match a.data_type() {
        DataType::List(_) => a.as_list::<i32>().value(i),
        DataType::LargeList(_) => a.as_list::<i64>().value(i),
        _ => a.as_fixed_size_list().value(i),
    }
}

/// Assert that two arrays agree row by row (floats within `rel`/`abs`, see [`close`];
/// NULL rows must match; values under NULL rows are ignored).
#[track_caller]
pub(crate) fn assert_arrays_close(a: &dyn Array, b: &dyn Array, rel: f64, abs: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    for i in 0..a.len() {
        if let Some(d) = diff_at(a, i, b, i, rel, abs, &format!("row {i}")) {
            panic!("{what}: {d}");
        }
    }
}

/// Assert that every path agrees with `one_pass`.
#[track_caller]
pub(crate) fn assert_results_close(r: &PathResults, rel: f64, abs: f64) {
    for (name, arr) in r.named().into_iter().skip(1) {
        assert_arrays_close(
            r.one_pass.as_ref(),
            arr.as_ref(),
            rel,
            abs,
            &format!("{name} vs one_pass"),
        );
    }
}
