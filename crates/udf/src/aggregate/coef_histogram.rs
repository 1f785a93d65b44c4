//! `coef_histogram(coefs, lo, hi [, bins = 70])`: per coefficient, a histogram of the 9
//! coefficients of a set of filters over one shared range (MISSION.md section 3,
//! "Histograms for drift").
//!
//! For each coefficient i = 0..8 separately: `bins` equal-width bins over `[lo, hi]`,
//! with numpy's semantics (`np.histogram(c[:, i], bins, range=(lo, hi))`): bin `b` is
//! `[lo + b w, lo + (b + 1) w)`, `w = (hi - lo) / bins`, the last bin is closed on the
//! right, values outside `[lo, hi]` and NaN are dropped ([`Histogram::bin_of`]).
//!
//! `lo`, `hi` and `bins` must be the same in every row of a group: literals or uncorrelated
//! scalar subqueries such as `(SELECT coef_range(c)['min'] FROM t)`. They are taken from
//! the first row where all three are non-NULL; a later row with other values is an
//! execution error naming the argument. `bins` must be in `1..=1048576`, `lo` and `hi`
//! finite with `lo < hi` (execution errors naming the argument).
//!
//! NULL `coefs` rows are skipped (they still fix `lo`/`hi`/`bins`), and so are rows whose
//! `lo`, `hi` or `bins` is NULL, and rows excluded by `FILTER (WHERE ...)`. A group
//! without rows gives a histogram of zeros when `lo`/`hi`/`bins` are known (literals,
//! or seen on a skipped row), otherwise NULL.
//!
//! Result: the struct of [`Histogram::data_type`]: `{lo, hi, bins, total [9] (counts in
//! range per coefficient), counts (List<Int64> of 9 * bins, coefficient-major:
//! counts[i * bins + b])}`.
//!
//! Algorithm: counting per group; partial states (lo, hi, bins, counts) merge by
//! adding counts after checking the parameters agree (exact and associative).

use std::mem::size_of;
use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, ListArray};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, DocSection, Documentation, DocumentationBuilder,
    EmitTo, GroupsAccumulator, Signature, Volatility,
};
use datafusion::physical_expr::expressions::Literal;

use crate::common::{Binner, Filters, Histogram, coerce_weights, group_runs};

const NAME: &str = "coef_histogram";

/// Bins when the `bins` argument is omitted (the paper's choice).
pub const DEFAULT_BINS: i64 = 70;

/// Largest accepted `bins` (a guard against allocating 9 x huge counts per group).
pub const MAX_BINS: i64 = 1 << 20;

/// Scalar reference: numpy's histogram of each coefficient of the non-NULL rows, found
/// by comparing with the bin edges `lo + k (hi - lo) / bins` (`hi` for the last edge).
pub fn coef_histogram_ref(rows: &[Option<[f64; 9]>], lo: f64, hi: f64, bins: usize) -> Histogram {
    let edge = |k: usize| {
        if k == bins {
            hi
        } else {
            lo + k as f64 * ((hi - lo) / bins as f64)
        }
    };
    let mut h = Histogram::new(lo, hi, bins);
    for x in rows.iter().flatten() {
        for (c, &v) in x.iter().enumerate() {
            if !(v >= lo && v <= hi) {
                continue;
            }
            // the last edge not above v
            let b = (0..bins).rev().find(|&b| edge(b) <= v).unwrap_or(0);
            h.counts[c * bins + b] += 1;
        }
    }
    h
}

/// Check the parameters; returns `bins` as usize.
fn validate(lo: f64, hi: f64, bins: i64) -> Result<usize> {
    if !(1..=MAX_BINS).contains(&bins) {
        return exec_err!("{NAME}: bins must be between 1 and {MAX_BINS}, got {bins}");
    }
    if !lo.is_finite() {
        return exec_err!("{NAME}: lo must be finite, got {lo}");
    }
    if !hi.is_finite() {
        return exec_err!("{NAME}: hi must be finite, got {hi}");
    }
    if lo >= hi {
        return exec_err!("{NAME}: lo must be less than hi, got lo = {lo}, hi = {hi}");
    }
    Ok(bins as usize)
}

/// The histogram of a group for parameters `(lo, hi, bins)`: created (after validation)
/// on first use, otherwise checked to have the same parameters.
#[inline]
fn slot<'h>(
    name: &str,
    h: &'h mut Option<Histogram>,
    lo: f64,
    hi: f64,
    bins: i64,
) -> Result<&'h mut Histogram> {
    match h {
        Some(h) => {
            if h.lo != lo {
                return exec_err!(
                    "{name}: lo must be constant within a group, got {} and {lo}",
                    h.lo
                );
            }
            if h.hi != hi {
                return exec_err!(
                    "{name}: hi must be constant within a group, got {} and {hi}",
                    h.hi
                );
            }
            if h.bins as i64 != bins {
                return exec_err!(
                    "{name}: bins must be constant within a group, got {} and {bins}",
                    h.bins
                );
            }
            Ok(h)
        }
        None => {
            let b = validate(lo, hi, bins)?;
            Ok(h.insert(Histogram::new(lo, hi, b)))
        }
    }
}

/// The `lo`, `hi`, `bins` argument columns of a batch.
pub(crate) struct Params<'a> {
    lo: &'a Float64Array,
    hi: &'a Float64Array,
    /// `None`: the argument was omitted (the default).
    bins: Option<&'a Int64Array>,
}

impl<'a> Params<'a> {
    fn try_new(values: &'a [ArrayRef]) -> Result<(Filters<'a>, Params<'a>)> {
        if !(3..=4).contains(&values.len()) {
            return exec_err!("{NAME}: expected 3 or 4 arguments, got {}", values.len());
        }
        let coefs = Filters::try_new(NAME, values[0].as_ref())?;
        let (Some(lo), Some(hi)) = (
            values[1].as_primitive_opt::<Float64Type>(),
            values[2].as_primitive_opt::<Float64Type>(),
        ) else {
            return exec_err!("{NAME}: lo and hi must be Float64 after coercion");
        };
        let bins = match values.get(3) {
            None => None,
            Some(b) => match b.as_primitive_opt::<Int64Type>() {
                Some(b) => Some(b),
                None => return exec_err!("{NAME}: bins must be Int64 after coercion"),
            },
        };
        Ok((coefs, Params { lo, hi, bins }))
    }

    /// `(lo, hi, bins)` when every row has these same non-NULL values.
    fn constant(&self) -> Option<(f64, f64, i64)> {
        let (lo, hi) = (self.lo, self.hi);
        if lo.is_empty() || lo.null_count() > 0 || hi.null_count() > 0 {
            return None;
        }
        let (l, h) = (lo.value(0), hi.value(0));
        let bins = match self.bins {
            None => DEFAULT_BINS,
            Some(b) if b.null_count() > 0 => return None,
            Some(b) => {
                let v = b.value(0);
                if !b.values().iter().all(|&x| x == v) {
                    return None;
                }
                v
            }
        };
        (lo.values().iter().all(|&x| x == l) && hi.values().iter().all(|&x| x == h))
            .then_some((l, h, bins))
    }

    /// `(lo, hi, bins)` of row `i`, `None` if any is NULL.
    #[inline]
    fn get(&self, i: usize) -> Option<(f64, f64, i64)> {
        if self.lo.is_null(i) || self.hi.is_null(i) {
            return None;
        }
        let bins = match self.bins {
            None => DEFAULT_BINS,
            Some(b) if b.is_null(i) => return None,
            Some(b) => b.value(i),
        };
        Some((self.lo.value(i), self.hi.value(i), bins))
    }
}

/// Vectorised kernel: count the rows into `hists[group_indices[i]]` (see the module doc
/// for skipped rows). Errors when a group's parameters are invalid or change.
pub(crate) fn coef_histogram_update(
    hists: &mut [Option<Histogram>],
    coefs: &Filters<'_>,
    params: &Params<'_>,
    group_indices: &[usize],
    filter: Option<&BooleanArray>,
) -> Result<()> {
    if filter.is_none()
        && coefs.nulls().is_none()
        && let Some((lo, hi, bins)) = params.constant()
    {
        // The usual batch: no NULLs, parameters from literals or scalar subqueries.
        let flat = coefs.flat_f64();
        for (g, rows) in group_runs(group_indices) {
            let h = slot(NAME, &mut hists[g], lo, hi, bins)?;
            Binner::new(h.lo, h.hi, h.bins)
                .count_into(&flat[9 * rows.start..9 * rows.end], &mut h.counts);
        }
        return Ok(());
    }
    // The lookup of the group met last (a batch is mostly one group).
    let mut cached: Option<(usize, Binner)> = None;
    for (i, &g) in group_indices.iter().enumerate() {
        if filter.is_some_and(|f| !f.is_valid(i) || !f.value(i)) {
            continue;
        }
        let Some((lo, hi, bins)) = params.get(i) else {
            continue;
        };
        let h = slot(NAME, &mut hists[g], lo, hi, bins)?;
        if coefs.is_null(i) {
            continue;
        }
        let binner = match cached {
            Some((cg, b)) if cg == g => b,
            _ => {
                let b = Binner::new(h.lo, h.hi, h.bins);
                cached = Some((g, b));
                b
            }
        };
        binner.count_into(&coefs.get(i), &mut h.counts);
    }
    Ok(())
}

/// Partial states: `lo`, `hi`, `bins` (NULL for a group with unknown parameters) and
/// `counts` (9 * bins, NULL when unknown).
pub(crate) fn state_arrays(hists: &[Option<Histogram>]) -> Result<Vec<ArrayRef>> {
    let nulls = NullBuffer::from(hists.iter().map(Option::is_some).collect::<Vec<_>>());
    let nulls = (nulls.null_count() > 0).then_some(nulls);
    let get = |f: fn(&Histogram) -> f64| hists.iter().map(move |h| h.as_ref().map_or(0.0, f));
    let lo = Float64Array::new(get(|h| h.lo).collect(), nulls.clone());
    let hi = Float64Array::new(get(|h| h.hi).collect(), nulls.clone());
    let bins = Int64Array::new(
        hists
            .iter()
            .map(|h| h.as_ref().map_or(0, |h| h.bins as i64))
            .collect(),
        nulls.clone(),
    );
    let lens = hists
        .iter()
        .map(|h| h.as_ref().map_or(0, |h| h.counts.len()));
    let offsets = OffsetBuffer::from_lengths(lens);
    let mut flat = Vec::with_capacity(offsets.last().copied().unwrap_or(0) as usize);
    for h in hists.iter().flatten() {
        flat.extend_from_slice(&h.counts);
    }
    let counts = ListArray::try_new(
        Arc::new(Field::new_list_field(DataType::Int64, true)),
        offsets,
        Arc::new(Int64Array::from(flat)),
        nulls,
    )?;
    Ok(vec![
        Arc::new(lo),
        Arc::new(hi),
        Arc::new(bins),
        Arc::new(counts),
    ])
}

/// The state fields of an aggregate named `name`: `lo`, `hi`, `bins`, `counts`.
pub(crate) fn state_fields(name: &str) -> Vec<FieldRef> {
    let f = |part: &str, t: DataType| Arc::new(Field::new(format_state_name(name, part), t, true));
    vec![
        f("lo", DataType::Float64),
        f("hi", DataType::Float64),
        f("bins", DataType::Int64),
        f(
            "counts",
            DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true))),
        ),
    ]
}

/// Bytes held by a vector of per-group histograms.
pub(crate) fn hists_size(hists: &Vec<Option<Histogram>>) -> usize {
    hists.capacity() * size_of::<Option<Histogram>>()
        + hists
            .iter()
            .flatten()
            .map(|h| h.counts.capacity() * size_of::<i64>())
            .sum::<usize>()
}

/// Merge partial states into `hists[group_indices[i]]`.
pub(crate) fn merge_states(
    name: &str,
    hists: &mut [Option<Histogram>],
    values: &[ArrayRef],
    group_indices: &[usize],
) -> Result<()> {
    let [lo, hi, bins, counts] = values else {
        return exec_err!("{name}: expected 4 state columns, got {}", values.len());
    };
    let (Some(lo), Some(hi), Some(bins), Some(counts)) = (
        lo.as_primitive_opt::<Float64Type>(),
        hi.as_primitive_opt::<Float64Type>(),
        bins.as_primitive_opt::<Int64Type>(),
        counts.as_list_opt::<i32>(),
    ) else {
        return exec_err!("{name}: unexpected state types");
    };
    let Some(flat) = counts.values().as_primitive_opt::<Int64Type>() else {
        return exec_err!("{name}: unexpected state types");
    };
    let flat = flat.values();
    let offsets = counts.value_offsets();
    for (i, &g) in group_indices.iter().enumerate() {
        if lo.is_null(i) || hi.is_null(i) || bins.is_null(i) || counts.is_null(i) {
            continue;
        }
        let h = slot(name, &mut hists[g], lo.value(i), hi.value(i), bins.value(i))?;
        let (s, e) = (offsets[i] as usize, offsets[i + 1] as usize);
        if e - s != h.counts.len() {
            return exec_err!(
                "{name}: state has {} counts, expected {}",
                e - s,
                h.counts.len()
            );
        }
        for (a, b) in h.counts.iter_mut().zip(&flat[s..e]) {
            *a += b;
        }
    }
    Ok(())
}

/// The results: each group's histogram; a group never given parameters gets zeros over
/// `preset` when known, else NULL.
pub(crate) fn evaluate_hists(
    hists: Vec<Option<Histogram>>,
    preset: Option<(f64, f64, usize)>,
) -> Result<ArrayRef> {
    let hists: Vec<Option<Histogram>> = hists
        .into_iter()
        .map(|h| h.or_else(|| preset.map(|(lo, hi, b)| Histogram::new(lo, hi, b))))
        .collect();
    Histogram::to_array(&hists)
}

/// `(lo, hi, bins)` when all of them are literals (then known before any row), validated.
fn preset_of(args: &AccumulatorArgs<'_>) -> Result<Option<(f64, f64, usize)>> {
    let lit = |k: usize| {
        args.exprs
            .get(k)
            .and_then(|e| e.downcast_ref::<Literal>())
            .map(|l| l.value().clone())
    };
    let (Some(lo), Some(hi)) = (lit(1), lit(2)) else {
        return Ok(None);
    };
    let bins = if args.exprs.len() > 3 {
        match lit(3) {
            Some(b) => b,
            None => return Ok(None),
        }
    } else {
        ScalarValue::Int64(Some(DEFAULT_BINS))
    };
    let (
        ScalarValue::Float64(Some(lo)),
        ScalarValue::Float64(Some(hi)),
        ScalarValue::Int64(Some(bins)),
    ) = (
        lo.cast_to(&DataType::Float64)?,
        hi.cast_to(&DataType::Float64)?,
        bins.cast_to(&DataType::Int64)?,
    )
    else {
        // a NULL literal: every row is skipped
        return Ok(None);
    };
    let b = validate(lo, hi, bins)?;
    Ok(Some((lo, hi, b)))
}

/// The `coef_histogram` aggregate.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct CoefHistogramAgg {
    signature: Signature,
}

impl Default for CoefHistogramAgg {
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
        "Aggregate: per coefficient i = 0..8, the histogram of c[i] over all rows with `bins` \
         equal-width bins over [lo, hi], exactly as numpy's np.histogram(c[:, i], bins, \
         range=(lo, hi)): bin b = [lo + b w, lo + (b + 1) w), w = (hi - lo) / bins, the last \
         bin also holds hi, values outside [lo, hi] and NaN are dropped. Returns a struct \
         {lo Float64, hi Float64, bins Int64, total [9] Int64 (counts in range per \
         coefficient), counts List<Int64> (9 * bins, counts[i * bins + b])}, the input of \
         the drift functions. lo, hi and bins must be constant within a group (literals or \
         scalar subqueries); the paper's shared range is coef_range(c) over all filters. \
         NULL coefs rows are skipped; a group with no rows gives zero counts (NULL if lo/hi \
         are unknown). Errors: bins outside 1..1048576, non-finite lo/hi, lo >= hi, or lo, \
         hi, bins changing within a group.",
        "coef_histogram(coefs, lo, hi [, bins])",
    )
    .with_argument(
        "coefs",
        "9 coefficients per row, typically pca_project(weights, basis): FixedSizeList of 9 \
         Float16/Float32/Float64 (other lists of 9 numbers are cast to Float64).",
    )
    .with_argument("lo", "Lower edge of the range (a number, constant within a group).")
    .with_argument(
        "hi",
        "Upper edge of the range, > lo (the last bin is closed on the right).",
    )
    .with_argument("bins", "Bins per coefficient, an integer >= 1; default 70.")
    .with_sql_example(
        "SELECT coef_histogram(weights, (SELECT coef_range(weights)['min'] FROM filters),
                          (SELECT coef_range(weights)['max'] FROM filters), 10)['total'] AS total
FROM filters;
SELECT h['counts'] FROM (SELECT coef_histogram(make_weights(column1, 0, 0, 0, 0, 0, 0, 0, 0), 0, 1, 2) AS h
                         FROM (VALUES (0.25), (1.0), (2.0)));
+--------------------------------------------------------+
| h[counts]                                              |
+--------------------------------------------------------+
| [1, 1, 3, 0, 3, 0, 3, 0, 3, 0, 3, 0, 3, 0, 3, 0, 3, 0] |
+--------------------------------------------------------+",
    )
    .build()
});

impl AggregateUDFImpl for CoefHistogramAgg {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if !(3..=4).contains(&arg_types.len()) {
            return plan_err!(
                "{NAME} expects 3 or 4 arguments (coefs, lo, hi [, bins]), got {}",
                arg_types.len()
            );
        }
        let mut out = vec![coerce_weights(NAME, &arg_types[0])?];
        for (name, t) in [("lo", &arg_types[1]), ("hi", &arg_types[2])] {
            if !(t.is_numeric() || *t == DataType::Null) {
                return plan_err!("{NAME} expects {name} as a number, got {t}");
            }
            out.push(DataType::Float64);
        }
        if let Some(t) = arg_types.get(3) {
            if !(t.is_integer() || *t == DataType::Null) {
                return plan_err!("{NAME} expects bins as an integer, got {t}");
            }
            out.push(DataType::Int64);
        }
        Ok(out)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(Histogram::data_type())
    }

    fn state_fields(&self, args: StateFieldsArgs<'_>) -> Result<Vec<FieldRef>> {
        Ok(state_fields(args.name))
    }

    fn accumulator(&self, args: AccumulatorArgs<'_>) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(CoefHistogramAccumulator {
            hist: None,
            preset: preset_of(&args)?,
        }))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs<'_>) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs<'_>,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(CoefHistogramGroupsAccumulator {
            hists: Vec::new(),
            preset: preset_of(&args)?,
        }))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}

/// `coef_histogram` without GROUP BY: one histogram, created with the first row's
/// parameters (or from literal parameters).
#[derive(Debug)]
pub struct CoefHistogramAccumulator {
    hist: Option<Histogram>,
    preset: Option<(f64, f64, usize)>,
}

impl Accumulator for CoefHistogramAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let (coefs, params) = Params::try_new(values)?;
        let groups = vec![0usize; coefs.len()];
        coef_histogram_update(
            std::slice::from_mut(&mut self.hist),
            &coefs,
            &params,
            &groups,
            None,
        )
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let a = evaluate_hists(vec![self.hist.clone()], self.preset)?;
        ScalarValue::try_from_array(&a, 0)
    }

    fn size(&self) -> usize {
        size_of::<Self>() + self.hist.as_ref().map_or(0, |h| h.counts.capacity() * 8)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        state_arrays(std::slice::from_ref(&self.hist))?
            .iter()
            .map(|a| ScalarValue::try_from_array(a, 0))
            .collect()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let n = states.first().map_or(0, |a| a.len());
        let groups = vec![0usize; n];
        merge_states(NAME, std::slice::from_mut(&mut self.hist), states, &groups)
    }
}

/// `coef_histogram` per group: one optional histogram per group index (allocated at the
/// group's first row with parameters).
#[derive(Debug)]
pub struct CoefHistogramGroupsAccumulator {
    hists: Vec<Option<Histogram>>,
    preset: Option<(f64, f64, usize)>,
}

impl GroupsAccumulator for CoefHistogramGroupsAccumulator {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.hists.resize(total_num_groups, None);
        let (coefs, params) = Params::try_new(values)?;
        coef_histogram_update(&mut self.hists, &coefs, &params, group_indices, opt_filter)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        evaluate_hists(emit_to.take_needed(&mut self.hists), self.preset)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        state_arrays(&emit_to.take_needed(&mut self.hists))
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.hists.resize(total_num_groups, None);
        merge_states(NAME, &mut self.hists, values, group_indices)
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let (coefs, params) = Params::try_new(values)?;
        let mut hists = vec![None; coefs.len()];
        let groups: Vec<usize> = (0..coefs.len()).collect();
        coef_histogram_update(&mut hists, &coefs, &params, &groups, opt_filter)?;
        state_arrays(&hists)
    }

    fn size(&self) -> usize {
        hists_size(&self.hists)
    }
}

/// The singleton `coef_histogram` UDAF.
pub fn coef_histogram_udaf() -> Arc<AggregateUDF> {
    static UDAF: LazyLock<Arc<AggregateUDF>> =
        LazyLock::new(|| Arc::new(AggregateUDF::from(CoefHistogramAgg::default())));
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

    fn lit_args(c: ArrayRef, lo: f64, hi: f64, bins: Option<i64>) -> Vec<Arg> {
        let mut v = vec![
            Arg::Array(c),
            Arg::Literal(ScalarValue::Float64(Some(lo))),
            Arg::Literal(ScalarValue::Float64(Some(hi))),
        ];
        if let Some(b) = bins {
            v.push(Arg::Literal(ScalarValue::Int64(Some(b))));
        }
        v
    }

    fn col_args(
        c: ArrayRef,
        lo: Vec<Option<f64>>,
        hi: Vec<Option<f64>>,
        bins: Vec<Option<i64>>,
    ) -> Vec<Arg> {
        vec![
            Arg::Array(c),
            Arg::Array(Arc::new(Float64Array::from(lo))),
            Arg::Array(Arc::new(Float64Array::from(hi))),
            Arg::Array(Arc::new(Int64Array::from(bins))),
        ]
    }

    fn hist(a: &ArrayRef, g: usize) -> Option<Histogram> {
        Histogram::from_array(a.as_ref(), g).unwrap()
    }

    /// numpy: np.histogram([0, .25, .5, .75, 1, -0.1, 1.1, nan], 4, (0, 1)) -> [1, 1, 1, 2]
    #[test]
    fn numpy_edges_hand_case() {
        let vals = [0.0, 0.25, 0.5, 0.75, 1.0, -0.1, 1.1, f64::NAN];
        let rows: Vec<Option<[f64; 9]>> = vals.iter().map(|&v| Some([v; 9])).collect();
        let h = coef_histogram_ref(&rows, 0.0, 1.0, 4);
        assert_eq!(&h.counts[..4], &[1, 1, 1, 2]);
        let r = run_all_paths(
            &coef_histogram_udaf(),
            &lit_args(coefs(&rows), 0.0, 1.0, Some(4)),
            &[0; 8],
            1,
            None,
            5,
        )
        .unwrap();
        assert_results_close(&r, 0.0, 0.0);
        assert_eq!(hist(&r.one_pass, 0), Some(h));
    }

    /// numpy: np.histogram(np.arange(10) / 10, 3, (0, 0.9)) -> [3, 3, 4]: the edges 0.3
    /// and 0.6 are computed as 0 + k * 0.3 (0.6 = 0.6 exactly, 0.3 = 0.3).
    #[test]
    fn numpy_rounding_of_edges() {
        let rows: Vec<Option<[f64; 9]>> = (0..10).map(|k| Some([k as f64 / 10.0; 9])).collect();
        let h = coef_histogram_ref(&rows, 0.0, 0.9, 3);
        assert_eq!(&h.counts[..3], &[3, 3, 4]);
        let r = run_all_paths(
            &coef_histogram_udaf(),
            &lit_args(coefs(&rows), 0.0, 0.9, Some(3)),
            &[0; 10],
            1,
            None,
            5,
        )
        .unwrap();
        assert_eq!(hist(&r.one_pass, 0), Some(h));
    }

    #[test]
    fn empty_groups_nulls_and_default_bins() {
        let rows = [Some([0.5; 9]), None];
        // literal parameters: a group without rows is all zeros; default 70 bins
        let r = run_all_paths(
            &coef_histogram_udaf(),
            &lit_args(coefs(&rows), -1.0, 1.0, None),
            &[0, 1],
            3,
            None,
            2,
        )
        .unwrap();
        assert_results_close(&r, 0.0, 0.0);
        let h0 = hist(&r.one_pass, 0).unwrap();
        assert_eq!(h0.bins, 70);
        assert_eq!(h0.total(4), 1);
        assert_eq!(h0.counts[4 * 70 + 52], 1); // (0.5 + 1) / (2 / 70) = 52.5
        for g in [1, 2] {
            assert_eq!(hist(&r.one_pass, g), Some(Histogram::new(-1.0, 1.0, 70)));
        }
        // column parameters: NULL coefs row fixes the parameters (zeros), no row -> NULL
        let r = run_all_paths(
            &coef_histogram_udaf(),
            &col_args(
                coefs(&rows),
                vec![Some(0.0); 2],
                vec![Some(1.0); 2],
                vec![Some(2); 2],
            ),
            &[0, 1],
            3,
            None,
            2,
        )
        .unwrap();
        assert_results_close(&r, 0.0, 0.0);
        assert_eq!(hist(&r.one_pass, 1), Some(Histogram::new(0.0, 1.0, 2)));
        assert_eq!(hist(&r.one_pass, 2), None);
        // NULL lo on a row: the row is skipped
        let r = run_all_paths(
            &coef_histogram_udaf(),
            &col_args(
                coefs(&rows),
                vec![None; 2],
                vec![Some(1.0); 2],
                vec![Some(2); 2],
            ),
            &[0, 0],
            1,
            None,
            2,
        )
        .unwrap();
        assert_results_close(&r, 0.0, 0.0);
        assert_eq!(hist(&r.one_pass, 0), None);
    }

    #[test]
    fn bad_parameters_are_errors_naming_the_argument() {
        let rows = [Some([0.5; 9])];
        let run = |lo: f64, hi: f64, bins: i64| {
            run_all_paths(
                &coef_histogram_udaf(),
                &col_args(
                    coefs(&rows),
                    vec![Some(lo)],
                    vec![Some(hi)],
                    vec![Some(bins)],
                ),
                &[0],
                1,
                None,
                1,
            )
            .unwrap_err()
            .to_string()
        };
        assert!(run(0.0, 1.0, 0).contains("bins must be between 1 and"));
        assert!(run(1.0, 1.0, 5).contains("lo must be less than hi"));
        assert!(run(f64::NAN, 1.0, 5).contains("lo must be finite"));
        assert!(run(0.0, f64::INFINITY, 5).contains("hi must be finite"));
        // literals are checked when the accumulator is created
        let e = run_all_paths(
            &coef_histogram_udaf(),
            &lit_args(coefs(&[]), 2.0, 1.0, Some(3)),
            &[],
            0,
            None,
            1,
        )
        .unwrap_err();
        assert!(e.to_string().contains("lo must be less than hi"), "{e}");
        // changing within a group
        let rows = [Some([0.5; 9]), Some([0.5; 9])];
        let e = run_all_paths(
            &coef_histogram_udaf(),
            &col_args(
                coefs(&rows),
                vec![Some(0.0), Some(0.0)],
                vec![Some(1.0), Some(2.0)],
                vec![Some(3); 2],
            ),
            &[0, 0],
            1,
            None,
            1,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("hi must be constant within a group"),
            "{e}"
        );
        // but different groups may differ
        let r = run_all_paths(
            &coef_histogram_udaf(),
            &col_args(
                coefs(&rows),
                vec![Some(0.0), Some(0.0)],
                vec![Some(1.0), Some(2.0)],
                vec![Some(3), Some(4)],
            ),
            &[0, 1],
            2,
            None,
            1,
        )
        .unwrap();
        assert_results_close(&r, 0.0, 0.0);
        assert_eq!(hist(&r.one_pass, 1).unwrap().bins, 4);
    }

    #[test]
    fn coercion() {
        let f = CoefHistogramAgg::default();
        let w = crate::common::fsl_f64_type(9);
        assert_eq!(
            f.coerce_types(&[
                w.clone(),
                DataType::Int64,
                DataType::Float32,
                DataType::Int32
            ])
            .unwrap(),
            vec![
                w.clone(),
                DataType::Float64,
                DataType::Float64,
                DataType::Int64
            ]
        );
        let e = |t: &[DataType]| f.coerce_types(t).unwrap_err().to_string();
        assert!(e(&[w.clone(), DataType::Float64]).contains("expects 3 or 4 arguments"));
        assert!(
            e(&[w.clone(), DataType::Utf8, DataType::Float64]).contains("expects lo as a number")
        );
        assert!(
            e(&[
                w.clone(),
                DataType::Float64,
                DataType::Float64,
                DataType::Float64
            ])
            .contains("expects bins as an integer")
        );
        assert!(
            e(&[DataType::Float64, DataType::Float64, DataType::Float64])
                .contains("expects weights")
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn all_paths_match_reference(seed in any::<u64>(), n in 0usize..200, groups in 1usize..5, bins in 1usize..12) {
            let mut rng = Rng::new(seed);
            let (lo, hi) = (-2.0 + rng.uniform(-1.0, 1.0), 2.0 + rng.uniform(-1.0, 1.0));
            let rows: Vec<Option<[f64; 9]>> = (0..n).map(|i| {
                let mut x: [f64; 9] = std::array::from_fn(|_| rng.uniform(-3.5, 3.5));
                // hit the edges exactly now and then
                if rng.below(4) == 0 {
                    let k = rng.below(bins + 1);
                    x[rng.below(9)] = if k == bins { hi } else { lo + k as f64 * ((hi - lo) / bins as f64) };
                }
                if rng.below(20) == 0 { x[rng.below(9)] = f64::NAN; }
                (i % 9 != 4).then_some(x)
            }).collect();
            let gi: Vec<usize> = (0..n).map(|_| rng.below(groups)).collect();
            let mask = BooleanArray::from((0..n).map(|_| rng.below(4) != 0).collect::<Vec<_>>());
            let use_mask = seed % 2 == 1;
            let args = if seed % 3 == 0 {
                col_args(coefs(&rows), vec![Some(lo); n], vec![Some(hi); n], vec![Some(bins as i64); n])
            } else {
                lit_args(coefs(&rows), lo, hi, Some(bins as i64))
            };
            let r = run_all_paths(&coef_histogram_udaf(), &args, &gi, groups, use_mask.then_some(&mask), seed).unwrap();
            assert_results_close(&r, 0.0, 0.0);
            for g in 0..groups {
                let sel: Vec<usize> = (0..n).filter(|&i| gi[i] == g && (!use_mask || mask.value(i))).collect();
                let rows_g: Vec<Option<[f64; 9]>> = sel.iter().map(|&i| rows[i]).collect();
                let expected = (!sel.is_empty() || seed % 3 != 0)
                    .then(|| coef_histogram_ref(&rows_g, lo, hi, bins));
                prop_assert_eq!(hist(&r.one_pass, g), expected);
            }
        }
    }
}
