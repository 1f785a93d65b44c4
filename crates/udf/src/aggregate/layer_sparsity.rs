//! `layer_sparsity(weights [, ratio = 0.01])`: the share of sparse filters in a group
//! (usually one layer), MISSION.md section 3 "Layer sparsity", on raw (unscaled) weights.
//!
//! `t = ratio * max |w|` over every weight of the group (`t = 1` when the group is all
//! zero); a filter is sparse when all nine `|w_i| < t`; the result is
//! `sparse filters / filters` (Float64). NULL filters are skipped; a group without
//! filters gives NULL. `ratio` must be the same for every row of a group (normally a
//! literal), finite and `>= 0`.
//!
//! **Exactness and state size.** The threshold is known only once the whole group has been
//! seen, so the state keeps, per group, the largest `|w|` of every filter (Float32 for
//! Float16/Float32 input — exact, since every such value is a float32 — and Float64 for
//! Float64 input): `O(filters)` memory, 4 bytes per filter for float16/float32 data, as a
//! `List<Float32|Float64>` state column. `size()` reports the allocated bytes, so under a
//! memory limit DataFusion spills this state like any other.
//!
//! This file also holds the small generic machinery that the degeneration aggregates
//! (`layer_sparsity`, `variance_entropy*`, `orthogonality`) share: [`GroupAgg`] (the
//! per-group state of one aggregate), [`Groups`] (its `GroupsAccumulator`) and [`Single`]
//! (its plain `Accumulator`, one group), and [`FilterListAgg`], which keeps per-filter
//! values exactly.

use std::fmt::Debug;
use std::mem::size_of;
use std::ops::Range;
use std::sync::{Arc, LazyLock};

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, ListArray, PrimitiveArray,
};
use arrow::buffer::{OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{ArrowPrimitiveType, DataType, Field, FieldRef, Float32Type, Float64Type};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, DocSection, Documentation, DocumentationBuilder,
    EmitTo, GroupsAccumulator, Signature, Volatility,
};

use crate::common::{
    Filters, Moments, coerce_weights, filter_max_abs, group_runs, sparse_threshold, uniform_value,
};

/// The default sparsity threshold ratio (MISSION.md: 1 % of the layer's largest weight).
pub const DEFAULT_RATIO: f64 = 0.01;

/// Scalar reference: the sparsity of one group of filters (`None` when empty).
pub fn layer_sparsity_ref(filters: &[[f64; 9]], ratio: f64) -> Option<f64> {
    if filters.is_empty() {
        return None;
    }
    let max = filters.iter().fold(0.0f64, |m, f| m.max(filter_max_abs(f)));
    let t = sparse_threshold(max, ratio);
    let sparse = filters
        .iter()
        .filter(|f| f.iter().all(|w| w.abs() < t))
        .count();
    Some(sparse as f64 / filters.len() as f64)
}

// ---------------------------------------------------------------------------------------
// Shared machinery
// ---------------------------------------------------------------------------------------

/// The per-group state of one aggregate, for all groups at once (indexed by group).
///
/// [`Groups`] turns it into a `GroupsAccumulator`, [`Single`] into an `Accumulator`.
pub trait GroupAgg: Send + Sync + Debug + Sized + 'static {
    /// An empty state with the same configuration.
    fn fresh(&self) -> Self;
    /// Make room for `n` groups (never shrinks).
    fn resize(&mut self, n: usize);
    /// How many groups the state holds.
    fn num_groups(&self) -> usize;
    /// Add input rows (`values` are the aggregate's arguments) to their groups; rows whose
    /// filter is false/NULL or whose weights are NULL are skipped.
    ///
    /// # Errors
    /// Bad data (see each aggregate).
    fn update(
        &mut self,
        values: &[ArrayRef],
        groups: &[usize],
        filter: Option<&BooleanArray>,
    ) -> Result<()>;
    /// Merge state rows (as [`GroupAgg::state`] returns them) into their groups.
    ///
    /// # Errors
    /// Malformed state or inconsistent parameters.
    fn merge(&mut self, states: &[ArrayRef], groups: &[usize]) -> Result<()>;
    /// The results of groups `range`.
    ///
    /// # Errors
    /// Bad data found at the end (see each aggregate).
    fn evaluate(&self, range: Range<usize>) -> Result<ArrayRef>;
    /// The state of groups `range`, one array per state field.
    ///
    /// # Errors
    /// Arrow errors (internal).
    fn state(&self, range: Range<usize>) -> Result<Vec<ArrayRef>>;
    /// Forget the groups `emit` names (the first `n`, or all); the rest shift down.
    fn take(&mut self, emit: EmitTo);
    /// Bytes allocated (computed in O(1)).
    fn size(&self) -> usize;
}

/// Whether row `i` passes the `FILTER (WHERE ...)` mask.
#[inline]
pub(crate) fn passes(filter: Option<&BooleanArray>, i: usize) -> bool {
    filter.is_none_or(|f| f.is_valid(i) && f.value(i))
}

fn emitted(emit: EmitTo, total: usize) -> usize {
    match emit {
        EmitTo::All => total,
        EmitTo::First(n) => n.min(total),
    }
}

/// A [`GroupAgg`] as a DataFusion `GroupsAccumulator`.
#[derive(Debug)]
pub struct Groups<A: GroupAgg>(pub A);

impl<A: GroupAgg> GroupsAccumulator for Groups<A> {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.0.resize(total_num_groups);
        self.0.update(values, group_indices, opt_filter)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let n = emitted(emit_to, self.groups_len());
        let out = self.0.evaluate(0..n)?;
        self.0.take(emit_to);
        Ok(out)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let n = emitted(emit_to, self.groups_len());
        let out = self.0.state(0..n)?;
        self.0.take(emit_to);
        Ok(out)
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.0.resize(total_num_groups);
        self.0.merge(values, group_indices)
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        // Every row is its own group.
        let n = values.first().map_or(0, |v| v.len());
        let mut one = self.0.fresh();
        one.resize(n);
        let groups: Vec<usize> = (0..n).collect();
        one.update(values, &groups, opt_filter)?;
        one.state(0..n)
    }

    fn size(&self) -> usize {
        self.0.size()
    }
}

impl<A: GroupAgg> Groups<A> {
    fn groups_len(&self) -> usize {
        self.0.num_groups()
    }
}

/// A [`GroupAgg`] as a plain DataFusion `Accumulator` (one group; used without GROUP BY
/// and in windows). `evaluate` and `state` do not reset it.
#[derive(Debug)]
pub struct Single<A: GroupAgg>(pub A);

impl<A: GroupAgg> Single<A> {
    /// Wrap a fresh state with room for one group.
    pub fn new(mut a: A) -> Self {
        a.resize(1);
        Single(a)
    }
}

impl<A: GroupAgg> Accumulator for Single<A> {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let n = values.first().map_or(0, |v| v.len());
        self.0.update(values, &vec![0; n], None)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let a = self.0.evaluate(0..1)?;
        ScalarValue::try_from_array(&a, 0)
    }

    fn size(&self) -> usize {
        size_of::<Self>() + self.0.size()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.0
            .state(0..1)?
            .iter()
            .map(|a| ScalarValue::try_from_array(a, 0))
            .collect()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let n = states.first().map_or(0, |v| v.len());
        self.0.merge(states, &vec![0; n])
    }
}

/// A float type kept exactly in a state: `Float32` (for float16/float32 input) or `Float64`.
pub trait ExactFloat: ArrowPrimitiveType + Debug + Send + Sync + 'static {
    /// From f64 (exact for values read from this type or a narrower one).
    fn narrow(x: f64) -> Self::Native;
    /// To f64 (exact).
    fn widen(x: Self::Native) -> f64;
    /// Append f32 values (exact).
    fn extend_from_f32(dst: &mut Vec<Self::Native>, src: &[f32]);
    /// Append f64 values (exact when they were read from this type or a narrower one).
    fn extend_from_f64(dst: &mut Vec<Self::Native>, src: &[f64]);
    /// Add `rows.len() / 9` filters minus `shift` to `m` (the bits of
    /// [`Moments::add`] row by row on the shifted filters).
    fn add_moments(m: &mut Moments, rows: &[Self::Native], shift: &[f64; 9]);
    /// The values as f32, when that is the native type.
    fn as_f32(rows: &[Self::Native]) -> Option<&[f32]>;
}

impl ExactFloat for Float32Type {
    #[inline]
    fn narrow(x: f64) -> f32 {
        x as f32
    }
    #[inline]
    fn widen(x: f32) -> f64 {
        f64::from(x)
    }
    fn extend_from_f32(dst: &mut Vec<f32>, src: &[f32]) {
        dst.extend_from_slice(src);
    }
    fn extend_from_f64(dst: &mut Vec<f32>, src: &[f64]) {
        dst.extend(src.iter().map(|&x| x as f32));
    }
    fn add_moments(m: &mut Moments, rows: &[f32], shift: &[f64; 9]) {
        m.add_rows_f32(rows, shift);
    }
    fn as_f32(rows: &[f32]) -> Option<&[f32]> {
        Some(rows)
    }
}

impl ExactFloat for Float64Type {
    #[inline]
    fn narrow(x: f64) -> f64 {
        x
    }
    #[inline]
    fn widen(x: f64) -> f64 {
        x
    }
    fn extend_from_f32(dst: &mut Vec<f64>, src: &[f32]) {
        dst.extend(src.iter().map(|&x| f64::from(x)));
    }
    fn extend_from_f64(dst: &mut Vec<f64>, src: &[f64]) {
        dst.extend_from_slice(src);
    }
    fn add_moments(m: &mut Moments, rows: &[f64], shift: &[f64; 9]) {
        m.add_rows_shifted(rows, shift);
    }
    fn as_f32(_rows: &[f64]) -> Option<&[f32]> {
        None
    }
}

/// The element type a state keeps for a weights column of type `input`:
/// Float64 for `FixedSizeList<Float64, _>`, Float32 otherwise (float16/float32 exact).
pub fn exact_storage_type(input: &DataType) -> DataType {
    match input {
        DataType::FixedSizeList(f, _) if f.data_type() == &DataType::Float64 => DataType::Float64,
        DataType::FixedSizeList(..) => DataType::Float32,
        _ => DataType::Float64,
    }
}

/// `List<t>` (item field nullable, as `ListArray::try_new` below builds it).
pub fn list_type(t: DataType) -> DataType {
    DataType::List(Arc::new(Field::new_list_field(t, true)))
}

/// Build a `List<T>` from per-group vectors.
pub fn list_of<T: ArrowPrimitiveType>(rows: &[Vec<T::Native>]) -> Result<ArrayRef> {
    let total: usize = rows.iter().map(Vec::len).sum();
    let mut flat = Vec::with_capacity(total);
    for r in rows {
        flat.extend_from_slice(r);
    }
    Ok(Arc::new(ListArray::try_new(
        Arc::new(Field::new_list_field(T::DATA_TYPE, true)),
        OffsetBuffer::from_lengths(rows.iter().map(Vec::len)),
        Arc::new(PrimitiveArray::<T>::new(ScalarBuffer::from(flat), None)),
        None,
    )?))
}

/// The per-group parameter `ratio`, checked to be constant within a group.
pub(crate) fn set_ratio(func: &str, slot: &mut Option<f64>, r: f64) -> Result<()> {
    match slot {
        Some(old) if old.to_bits() != r.to_bits() => {
            exec_err!("{func}: ratio must be the same for every row of a group, got {old} and {r}")
        }
        _ => {
            *slot = Some(r);
            Ok(())
        }
    }
}

/// Read the optional `ratio` argument (`values[1]`, coerced to Float64) of row `i`.
pub(crate) fn ratio_at(func: &str, ratio: Option<&Float64Array>, i: usize) -> Result<f64> {
    let Some(a) = ratio else {
        return Ok(DEFAULT_RATIO);
    };
    if a.is_null(i) {
        return exec_err!("{func}: ratio must not be NULL");
    }
    let r = a.value(i);
    if !r.is_finite() || r < 0.0 {
        return exec_err!("{func}: ratio must be a finite number >= 0, got {r}");
    }
    Ok(r)
}

/// The `ratio` of rows `rows` when they all hold the same one (the default without the
/// argument): one check per run of a group instead of one per row. `None` when the run
/// has NULLs or several values (the caller then checks row by row for the error).
pub(crate) fn uniform_ratio(
    func: &str,
    ratio: Option<&Float64Array>,
    rows: Range<usize>,
) -> Result<Option<f64>> {
    let Some(r) = ratio else {
        return Ok(Some(DEFAULT_RATIO));
    };
    match uniform_value(r, rows.clone(), |a, b| a.to_bits() == b.to_bits()) {
        Some(_) => ratio_at(func, Some(r), rows.start).map(Some),
        None => Ok(None),
    }
}

/// The `ratio` argument column, if given.
pub(crate) fn ratio_column<'a>(
    func: &str,
    values: &'a [ArrayRef],
) -> Result<Option<&'a Float64Array>> {
    match values.get(1) {
        None => Ok(None),
        Some(a) => match a.as_primitive_opt::<Float64Type>() {
            Some(p) => Ok(Some(p)),
            None => exec_err!("{func}: ratio must be Float64, got {}", a.data_type()),
        },
    }
}

/// What a [`FilterListAgg`] computes from its kept per-filter values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListKind {
    /// `layer_sparsity`: keeps each filter's max |w|.
    Sparsity,
    /// `variance_entropy_clean` (`norm = false`) or `variance_entropy_clean_norm`: keeps
    /// each filter's nine weights.
    Clean {
        /// Divide by `f(n_clean)`.
        norm: bool,
    },
}

impl ListKind {
    /// The SQL name.
    pub fn name(self) -> &'static str {
        match self {
            ListKind::Sparsity => "layer_sparsity",
            ListKind::Clean { norm: false } => "variance_entropy_clean",
            ListKind::Clean { norm: true } => "variance_entropy_clean_norm",
        }
    }

    /// Values kept per filter.
    fn per_filter(self) -> usize {
        match self {
            ListKind::Sparsity => 1,
            ListKind::Clean { .. } => 9,
        }
    }
}

/// Exact per-filter state: per group, `per_filter` values of every filter (in `T`) and
/// the group's `ratio`. `O(filters)` memory.
#[derive(Debug)]
pub struct FilterListAgg<T: ExactFloat> {
    kind: ListKind,
    values: Vec<Vec<T::Native>>,
    ratio: Vec<Option<f64>>,
    /// Bytes allocated by `values` (capacities), kept up to date incrementally.
    bytes: usize,
}

impl<T: ExactFloat> FilterListAgg<T> {
    /// An empty state.
    pub fn new(kind: ListKind) -> Self {
        FilterListAgg {
            kind,
            values: Vec::new(),
            ratio: Vec::new(),
            bytes: 0,
        }
    }

    fn push(&mut self, g: usize, vals: &[T::Native]) {
        let v = &mut self.values[g];
        let before = v.capacity();
        v.extend_from_slice(vals);
        self.bytes += (v.capacity() - before) * size_of::<T::Native>();
    }

    fn eval_group(&self, g: usize) -> Result<Option<f64>> {
        let v = &self.values[g];
        if v.is_empty() {
            return Ok(None);
        }
        let ratio = self.ratio[g].unwrap_or(DEFAULT_RATIO);
        let max = v.iter().fold(0.0f64, |m, x| m.max(T::widen(*x).abs()));
        let t = sparse_threshold(max, ratio);
        match self.kind {
            ListKind::Sparsity => {
                let sparse = v.iter().filter(|x| T::widen(**x) < t).count();
                Ok(Some(sparse as f64 / v.len() as f64))
            }
            ListKind::Clean { norm } => {
                let clean: Vec<[f64; 9]> = v
                    .chunks_exact(9)
                    .map(|c| std::array::from_fn(|i| T::widen(c[i])))
                    .filter(|f: &[f64; 9]| !f.iter().all(|w| w.abs() < t))
                    .collect();
                let h = super::variance_entropy::variance_entropy_ref(&clean);
                Ok(Some(if norm {
                    super::variance_entropy::normalise(h, clean.len() as u64)
                } else {
                    h
                }))
            }
        }
    }
}

impl<T: ExactFloat> GroupAgg for FilterListAgg<T> {
    fn fresh(&self) -> Self {
        Self::new(self.kind)
    }

    fn resize(&mut self, n: usize) {
        if n > self.values.len() {
            self.values.resize_with(n, Vec::new);
            self.ratio.resize(n, None);
        }
    }

    fn num_groups(&self) -> usize {
        self.values.len()
    }

    fn update(
        &mut self,
        values: &[ArrayRef],
        groups: &[usize],
        filter: Option<&BooleanArray>,
    ) -> Result<()> {
        let func = self.kind.name();
        let Some(w) = values.first() else {
            return exec_err!("{func}: missing weights");
        };
        let f = Filters::try_new(func, w.as_ref())?;
        let ratio = ratio_column(func, values)?;
        if self.kind == ListKind::Sparsity
            && f.nulls().is_none()
            && filter.is_none()
            && let Some(flat) = f.flat_f32()
        {
            // The usual batch: a run of rows per group; each filter's max |w| straight
            // from the widened f32 values (exact for float16 and float32 stores).
            for (g, rows) in group_runs(groups) {
                match uniform_ratio(func, ratio, rows.clone())? {
                    Some(r) => set_ratio(func, &mut self.ratio[g], r)?,
                    None => {
                        for i in rows.clone() {
                            set_ratio(func, &mut self.ratio[g], ratio_at(func, ratio, i)?)?;
                        }
                    }
                }
                let v = &mut self.values[g];
                let before = v.capacity();
                v.extend(
                    flat[9 * rows.start..9 * rows.end]
                        .chunks_exact(9)
                        .map(|c| T::narrow(f64::from(c.iter().fold(0f32, |m, x| m.max(x.abs()))))),
                );
                self.bytes += (v.capacity() - before) * size_of::<T::Native>();
            }
            return Ok(());
        }
        for (i, &g) in groups.iter().enumerate() {
            if f.is_null(i) || !passes(filter, i) {
                continue;
            }
            set_ratio(func, &mut self.ratio[g], ratio_at(func, ratio, i)?)?;
            let x = f.get(i);
            match self.kind {
                ListKind::Sparsity => self.push(g, &[T::narrow(filter_max_abs(&x))]),
                ListKind::Clean { .. } => {
                    let n: [T::Native; 9] = std::array::from_fn(|k| T::narrow(x[k]));
                    self.push(g, &n);
                }
            }
        }
        Ok(())
    }

    fn merge(&mut self, states: &[ArrayRef], groups: &[usize]) -> Result<()> {
        let func = self.kind.name();
        let (Some(list), Some(ratio)) = (
            states.first().and_then(|a| a.as_list_opt::<i32>()),
            states
                .get(1)
                .and_then(|a| a.as_primitive_opt::<Float64Type>()),
        ) else {
            return exec_err!("{func}: malformed state");
        };
        let Some(flat) = list.values().as_primitive_opt::<T>() else {
            return exec_err!(
                "{func}: malformed state values {}",
                list.values().data_type()
            );
        };
        let flat = flat.values();
        let offsets = list.value_offsets();
        let per = self.kind.per_filter();
        for (j, &g) in groups.iter().enumerate() {
            if list.is_null(j) {
                continue;
            }
            let (a, b) = (offsets[j] as usize, offsets[j + 1] as usize);
            if (b - a) % per != 0 {
                return exec_err!("{func}: malformed state (length {})", b - a);
            }
            if ratio.is_valid(j) {
                set_ratio(func, &mut self.ratio[g], ratio.value(j))?;
            }
            self.push(g, &flat[a..b]);
        }
        Ok(())
    }

    fn evaluate(&self, range: Range<usize>) -> Result<ArrayRef> {
        let out: Vec<Option<f64>> = range.map(|g| self.eval_group(g)).collect::<Result<_>>()?;
        Ok(Arc::new(Float64Array::from(out)))
    }

    fn state(&self, range: Range<usize>) -> Result<Vec<ArrayRef>> {
        Ok(vec![
            list_of::<T>(&self.values[range.clone()])?,
            Arc::new(Float64Array::from(self.ratio[range].to_vec())),
        ])
    }

    fn take(&mut self, emit: EmitTo) {
        let gone = emit.take_needed(&mut self.values);
        self.bytes -= gone
            .iter()
            .map(|v| v.capacity() * size_of::<T::Native>())
            .sum::<usize>();
        let _ = emit.take_needed(&mut self.ratio);
    }

    fn size(&self) -> usize {
        self.bytes
            + self.values.capacity() * size_of::<Vec<T::Native>>()
            + self.ratio.capacity() * size_of::<Option<f64>>()
    }
}

/// `coerce_types` for `(weights [, ratio])` functions.
pub(crate) fn coerce_weights_ratio(func: &str, arg_types: &[DataType]) -> Result<Vec<DataType>> {
    match arg_types {
        [w] => Ok(vec![coerce_weights(func, w)?]),
        [w, r] if r.is_numeric() || r == &DataType::Null => {
            Ok(vec![coerce_weights(func, w)?, DataType::Float64])
        }
        [_, r] => plan_err!("{func} expects ratio as a number, got {r}"),
        _ => plan_err!(
            "{func} expects 1 or 2 arguments (weights [, ratio]), got {}",
            arg_types.len()
        ),
    }
}

/// The element type a state keeps for the weights (the first argument) of a call.
pub(crate) fn storage(args: &AccumulatorArgs<'_>) -> DataType {
    args.expr_fields
        .first()
        .map_or(DataType::Float64, |f| exact_storage_type(f.data_type()))
}

/// [`storage`] as `state_fields` sees the call.
pub(crate) fn state_storage(args: &StateFieldsArgs<'_>) -> DataType {
    args.input_fields
        .first()
        .map_or(DataType::Float64, |f| exact_storage_type(f.data_type()))
}

/// State fields of a [`FilterListAgg`]: `<name>[filter_values]` and `<name>[ratio]`.
pub(crate) fn filter_list_state_fields(args: &StateFieldsArgs<'_>, what: &str) -> Vec<FieldRef> {
    vec![
        Arc::new(Field::new(
            format_state_name(args.name, what),
            list_type(state_storage(args)),
            true,
        )),
        Arc::new(Field::new(
            format_state_name(args.name, "ratio"),
            DataType::Float64,
            true,
        )),
    ]
}

/// The accumulators of a [`FilterListAgg`] for the weights type of `args`.
pub(crate) fn filter_list_groups(
    kind: ListKind,
    args: &AccumulatorArgs<'_>,
) -> Box<dyn GroupsAccumulator> {
    match storage(args) {
        DataType::Float32 => Box::new(Groups(FilterListAgg::<Float32Type>::new(kind))),
        _ => Box::new(Groups(FilterListAgg::<Float64Type>::new(kind))),
    }
}

/// The plain accumulator of a [`FilterListAgg`].
pub(crate) fn filter_list_single(
    kind: ListKind,
    args: &AccumulatorArgs<'_>,
) -> Box<dyn Accumulator> {
    match storage(args) {
        DataType::Float32 => Box::new(Single::new(FilterListAgg::<Float32Type>::new(kind))),
        _ => Box::new(Single::new(FilterListAgg::<Float64Type>::new(kind))),
    }
}

/// The documentation section of every filter function.
pub(crate) const DOC_SECTION: DocSection = DocSection {
    include: true,
    label: "Filter functions",
    description: Some("Functions over 3x3 convolution filters"),
};

// ---------------------------------------------------------------------------------------
// layer_sparsity
// ---------------------------------------------------------------------------------------

/// The `layer_sparsity` aggregate.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LayerSparsityAgg {
    signature: Signature,
}

impl Default for LayerSparsityAgg {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

/// The `GroupsAccumulator` of `layer_sparsity` (per-filter maxima kept exactly).
pub type LayerSparsityGroupsAccumulator<T> = Groups<FilterListAgg<T>>;
/// The plain `Accumulator` of `layer_sparsity`.
pub type LayerSparsityAccumulator<T> = Single<FilterListAgg<T>>;

static DOC: LazyLock<Documentation> = LazyLock::new(|| {
    DocumentationBuilder::new_with_details(
        DOC_SECTION,
        "Share of sparse filters in a group (usually one layer), on raw weights. \
         `t = ratio * max|w|` over all weights of the group (`t = 1` if the group is all zero); \
         a filter is sparse when all 9 `|w_i| < t`; result = sparse filters / filters (Float64). \
         NULL filters are skipped; an empty group gives NULL. `ratio` must be constant within a \
         group. The state keeps each filter's max |w| (4 bytes per float16/float32 filter), so \
         the result is exact; it spills under a memory limit.",
        "layer_sparsity(weights [, ratio])",
    )
    .with_argument(
        "weights",
        "A filter: FixedSizeList<Float16|Float32|Float64, 9> (other lists of 9 numbers are cast to Float64).",
    )
    .with_argument(
        "ratio",
        "Threshold as a fraction of the group's largest |w|; a number >= 0, default 0.01.",
    )
    .with_sql_example(
        "SELECT layer_name, layer_sparsity(weights) FROM filters GROUP BY layer_name;\n\
         SELECT layer_sparsity(w) FROM (VALUES (make_weights(1,1,1,1,1,1,1,1,1)), (make_weights(0,0,0,0,0,0,0,0,0))) t(w);\n\
         -- 0.5",
    )
    .build()
});

impl AggregateUDFImpl for LayerSparsityAgg {
    fn name(&self) -> &str {
        "layer_sparsity"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        coerce_weights_ratio(self.name(), arg_types)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn accumulator(&self, acc_args: AccumulatorArgs<'_>) -> Result<Box<dyn Accumulator>> {
        Ok(filter_list_single(ListKind::Sparsity, &acc_args))
    }

    fn state_fields(&self, args: StateFieldsArgs<'_>) -> Result<Vec<FieldRef>> {
        Ok(filter_list_state_fields(&args, "filter_max"))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs<'_>) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs<'_>,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(filter_list_groups(ListKind::Sparsity, &args))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}

/// The singleton `layer_sparsity` UDAF.
pub fn layer_sparsity_udaf() -> Arc<AggregateUDF> {
    static UDAF: LazyLock<Arc<AggregateUDF>> =
        LazyLock::new(|| Arc::new(AggregateUDF::from(LayerSparsityAgg::default())));
    Arc::clone(&UDAF)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::aggregate::testing::{Arg, Rng, assert_results_close, run_all_paths};
    use crate::common::fsl_f64;
    use arrow::array::{FixedSizeListArray, Float32Array};
    use proptest::prelude::*;

    /// `FixedSizeList<Float64, 9>` from rows (`None` = NULL filter).
    pub(crate) fn fsl64(rows: &[Option<[f64; 9]>]) -> ArrayRef {
        let vals: Vec<f64> = rows.iter().flat_map(|r| r.unwrap_or([0.0; 9])).collect();
        let nulls =
            arrow::buffer::NullBuffer::from(rows.iter().map(Option::is_some).collect::<Vec<_>>());
        Arc::new(fsl_f64(9, vals, Some(nulls)).unwrap())
    }

    /// `FixedSizeList<Float32, 9>` from rows.
    pub(crate) fn fsl32(rows: &[[f64; 9]]) -> ArrayRef {
        let vals: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
        Arc::new(
            FixedSizeListArray::try_new(
                Arc::new(Field::new_list_field(DataType::Float32, true)),
                9,
                Arc::new(Float32Array::from(vals)),
                None,
            )
            .unwrap(),
        )
    }

    fn one(args: &[Arg], rows: usize) -> ArrayRef {
        let r = run_all_paths(&layer_sparsity_udaf(), args, &vec![0; rows], 1, None, 7).unwrap();
        assert_results_close(&r, 1e-12, 0.0);
        r.one_pass
    }

    fn f64_at(a: &ArrayRef, i: usize) -> Option<f64> {
        let a = a.as_primitive::<Float64Type>();
        a.is_valid(i).then(|| a.value(i))
    }

    #[test]
    fn hand_cases() {
        // max |w| = 10, t = 0.1: filters 2 (max 0.05) and 3 (zero) are sparse, 1 is not.
        let mut a = [0.0; 9];
        a[4] = -10.0;
        let b = [0.05; 9];
        let mut c = [0.0; 9];
        c[0] = 0.1; // |w| = t is not < t
        let z = [0.0; 9];
        let rows = [Some(a), Some(b), Some(c), Some(z), None];
        let r = one(&[Arg::Array(fsl64(&rows))], rows.len());
        assert_eq!(f64_at(&r, 0), Some(0.5));
        // ratio 0.02 -> t = 0.2: c is sparse too.
        let r = one(
            &[
                Arg::Array(fsl64(&rows)),
                Arg::Literal(ScalarValue::Float64(Some(0.02))),
            ],
            rows.len(),
        );
        assert_eq!(f64_at(&r, 0), Some(0.75));
        // all zero: t = 1, everything sparse
        let r = one(&[Arg::Array(fsl64(&[Some(z), Some(z)]))], 2);
        assert_eq!(f64_at(&r, 0), Some(1.0));
        // only NULLs / empty: NULL
        let r = one(&[Arg::Array(fsl64(&[None]))], 1);
        assert_eq!(f64_at(&r, 0), None);
        let r = one(&[Arg::Array(fsl64(&[]))], 0);
        assert_eq!(r.len(), 1);
        assert_eq!(f64_at(&r, 0), None);
    }

    #[test]
    fn ratio_must_be_constant_and_valid() {
        let w = fsl64(&[Some([1.0; 9]), Some([2.0; 9])]);
        let udaf = layer_sparsity_udaf();
        let bad = Arg::Array(Arc::new(Float64Array::from(vec![0.01, 0.02])));
        let e = run_all_paths(
            &udaf,
            &[Arg::Array(Arc::clone(&w)), bad],
            &[0, 0],
            1,
            None,
            1,
        )
        .unwrap_err();
        assert!(e.to_string().contains("ratio must be the same"), "{e}");
        let neg = Arg::Literal(ScalarValue::Float64(Some(-1.0)));
        let e = run_all_paths(&udaf, &[Arg::Array(w), neg], &[0, 0], 1, None, 1).unwrap_err();
        assert!(e.to_string().contains("finite number >= 0"), "{e}");
    }

    #[test]
    fn state_of_f32_input_is_f32() {
        let w = fsl32(&[[0.5; 9]]);
        let r = run_all_paths(&layer_sparsity_udaf(), &[Arg::Array(w)], &[0], 1, None, 3).unwrap();
        assert_eq!(f64_at(&r.one_pass, 0), Some(0.0));
    }

    fn random_layer(rng: &mut Rng, n: usize) -> Vec<[f64; 9]> {
        (0..n)
            .map(|_| {
                let scale = if rng.below(4) == 0 { 1e-3 } else { 1.0 };
                std::array::from_fn(|_| rng.uniform(-1.0, 1.0) * scale)
            })
            .collect()
    }

    proptest! {
        #[test]
        fn every_path_matches_reference(seed in 0u64..1000, n in 0usize..60, groups in 1usize..4) {
            let mut rng = Rng::new(seed);
            let rows = random_layer(&mut rng, n);
            let gi: Vec<usize> = (0..n).map(|_| rng.below(groups)).collect();
            let mask = BooleanArray::from((0..n).map(|_| rng.below(5) != 0).collect::<Vec<_>>());
            let ratio = 0.01 + rng.uniform(0.0, 0.5);
            let args = [
                Arg::Array(fsl64(&rows.iter().copied().map(Some).collect::<Vec<_>>())),
                Arg::Literal(ScalarValue::Float64(Some(ratio))),
            ];
            let r = run_all_paths(&layer_sparsity_udaf(), &args, &gi, groups, Some(&mask), seed).unwrap();
            assert_results_close(&r, 1e-12, 0.0);
            for g in 0..groups {
                let sel: Vec<[f64; 9]> = (0..n).filter(|&i| gi[i] == g && mask.value(i)).map(|i| rows[i]).collect();
                prop_assert_eq!(f64_at(&r.one_pass, g), layer_sparsity_ref(&sel, ratio));
            }
        }
    }

    #[test]
    fn size_grows_with_filters() {
        let mut acc = Groups(FilterListAgg::<Float32Type>::new(ListKind::Sparsity));
        let before = acc.size();
        let w = fsl64(&vec![Some([1.0; 9]); 1000]);
        acc.update_batch(&[w], &vec![0; 1000], None, 1).unwrap();
        assert!(acc.size() >= before + 4000);
        let _ = acc.evaluate(EmitTo::All).unwrap();
        assert_eq!(acc.0.bytes, 0);
    }
}
