//! `coef_histogram_merge(h)`: the sum of `coef_histogram` values over the same range.
//!
//! Histograms of disjoint sets of filters with equal `lo`, `hi` and `bins` add up to the
//! histogram of their union: counts (and totals) add bin by bin. This rolls fine groups
//! up into coarse ones without touching the filters again — per-model histograms into
//! per-task ones, which is how `filterdb analyze kl-matrix` builds its groups: the pass
//! over the filters groups by the integer `model_id` only, and the join with `models`
//! and the grouping by task or category run on one row per model.
//!
//! NULL histograms are skipped; a group with none gives NULL. Histograms over different
//! `lo`, `hi` or `bins` in one group are an execution error naming the two values.
//!
//! State: the state of `coef_histogram` (`lo`, `hi`, `bins`, `counts`), so update and
//! merge are the same exact, associative addition of counts.

use std::mem::size_of;
use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, DocumentationBuilder, EmitTo,
    GroupsAccumulator, Signature, Volatility,
};

use super::coef_histogram::{evaluate_hists, hists_size, merge_states, state_arrays, state_fields};
use super::layer_sparsity::DOC_SECTION;
use crate::common::Histogram;

const NAME: &str = "coef_histogram_merge";

/// Scalar reference: add the non-NULL histograms (all over the same range) bin by bin.
pub fn coef_histogram_merge_ref(hists: &[Option<Histogram>]) -> Option<Histogram> {
    let mut out: Option<Histogram> = None;
    for h in hists.iter().flatten() {
        match &mut out {
            None => out = Some(h.clone()),
            Some(o) => {
                for (a, b) in o.counts.iter_mut().zip(&h.counts) {
                    *a += b;
                }
            }
        }
    }
    out
}

/// The state columns `(lo, hi, bins, counts)` of a batch of histogram values, with the
/// rows `filter` rejects made NULL (so `merge_states` skips them).
fn as_states(values: &[ArrayRef], filter: Option<&BooleanArray>) -> Result<Vec<ArrayRef>> {
    let [h] = values else {
        return exec_err!("{NAME} expects 1 argument, got {}", values.len());
    };
    let Some(s) = h.as_struct_opt() else {
        return exec_err!(
            "{NAME} expects a coef_histogram value, got {}",
            h.data_type()
        );
    };
    let mut cols = Vec::with_capacity(4);
    for name in ["lo", "hi", "bins", "counts"] {
        let Some(c) = s.column_by_name(name) else {
            return exec_err!("{NAME}: the histogram has no field {name:?}");
        };
        // A NULL histogram: NULL in every state column.
        let nulls = arrow::buffer::NullBuffer::union(s.nulls(), c.nulls());
        let c = arrow::array::make_array(c.to_data().into_builder().nulls(nulls).build()?);
        cols.push(c);
    }
    if let Some(f) = filter {
        // Rows the FILTER clause rejects (false or NULL) become NULL histograms.
        let keep = arrow::compute::prep_null_mask_filter(f);
        let nulls = arrow::buffer::NullBuffer::new(keep.values().clone());
        for c in &mut cols {
            let joined = arrow::buffer::NullBuffer::union(c.nulls(), Some(&nulls));
            *c = arrow::array::make_array(c.to_data().into_builder().nulls(joined).build()?);
        }
    }
    Ok(cols)
}

static DOC: LazyLock<Documentation> = LazyLock::new(|| {
    DocumentationBuilder::new_with_details(
        DOC_SECTION,
        "Aggregate: the sum of coef_histogram values that share lo, hi and bins — counts \
         and totals added bin by bin, so the histograms of disjoint sets of filters give \
         the histogram of their union. Rolls per-model histograms up into per-task ones \
         without reading the filters again. NULL histograms are skipped; a group of none \
         gives NULL. Error: histograms with different lo, hi or bins in one group.",
        "coef_histogram_merge(h)",
    )
    .with_argument("h", "A histogram as coef_histogram returns it.")
    .with_sql_example(
        "SELECT coef_histogram_merge(h)['counts'] AS counts FROM (
  SELECT coef_histogram(make_weights(column1, 0, 0, 0, 0, 0, 0, 0, 0), 0, 1, 2) AS h
  FROM (VALUES (0.25), (1.0)) GROUP BY column1);
+--------------------------------------------------------+
| counts                                                 |
+--------------------------------------------------------+
| [1, 1, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0] |
+--------------------------------------------------------+",
    )
    .build()
});

/// The `coef_histogram_merge` aggregate.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct CoefHistogramMergeAgg {
    signature: Signature,
}

impl Default for CoefHistogramMergeAgg {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for CoefHistogramMergeAgg {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types {
            [DataType::Struct(fields)]
                if ["lo", "hi", "bins", "counts"]
                    .iter()
                    .all(|n| fields.iter().any(|f| f.name() == n)) =>
            {
                Ok(vec![Histogram::data_type()])
            }
            [DataType::Null] => Ok(vec![Histogram::data_type()]),
            [other] => plan_err!(
                "{NAME} expects a histogram as coef_histogram returns it (a struct with lo, hi, \
                 bins, counts), got {other}"
            ),
            _ => plan_err!("{NAME} expects 1 argument, got {}", arg_types.len()),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(Histogram::data_type())
    }

    fn state_fields(&self, args: StateFieldsArgs<'_>) -> Result<Vec<FieldRef>> {
        Ok(state_fields(args.name))
    }

    fn accumulator(&self, _args: AccumulatorArgs<'_>) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(CoefHistogramMergeAccumulator { hist: None }))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs<'_>) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        _args: AccumulatorArgs<'_>,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(CoefHistogramMergeGroupsAccumulator {
            hists: Vec::new(),
        }))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}

/// `coef_histogram_merge` without GROUP BY.
#[derive(Debug)]
pub struct CoefHistogramMergeAccumulator {
    hist: Option<Histogram>,
}

impl Accumulator for CoefHistogramMergeAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let states = as_states(values, None)?;
        self.merge_batch(&states)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let a = evaluate_hists(vec![self.hist.clone()], None)?;
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
        merge_states(
            NAME,
            std::slice::from_mut(&mut self.hist),
            states,
            &vec![0; n],
        )
    }
}

/// `coef_histogram_merge` per group.
#[derive(Debug)]
pub struct CoefHistogramMergeGroupsAccumulator {
    hists: Vec<Option<Histogram>>,
}

impl GroupsAccumulator for CoefHistogramMergeGroupsAccumulator {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        let states = as_states(values, opt_filter)?;
        self.merge_batch(&states, group_indices, total_num_groups)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        evaluate_hists(emit_to.take_needed(&mut self.hists), None)
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
        as_states(values, opt_filter)
    }

    fn size(&self) -> usize {
        hists_size(&self.hists)
    }
}

/// The singleton `coef_histogram_merge` UDAF.
pub fn coef_histogram_merge_udaf() -> Arc<AggregateUDF> {
    static UDAF: LazyLock<Arc<AggregateUDF>> =
        LazyLock::new(|| Arc::new(AggregateUDF::from(CoefHistogramMergeAgg::default())));
    Arc::clone(&UDAF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::coef_histogram::coef_histogram_ref;
    use proptest::prelude::*;

    fn hist_array(hists: &[Option<Histogram>]) -> ArrayRef {
        Histogram::to_array(hists).unwrap()
    }

    fn groups_result(hists: &[Option<Histogram>], split: usize) -> Option<Histogram> {
        let mut acc = CoefHistogramMergeGroupsAccumulator { hists: Vec::new() };
        let (a, b) = hists.split_at(split.min(hists.len()));
        for part in [a, b] {
            let arr = hist_array(part);
            acc.update_batch(&[arr], &vec![0; part.len()], None, 1)
                .unwrap();
        }
        let out = acc.evaluate(EmitTo::All).unwrap();
        Histogram::from_array(out.as_ref(), 0).unwrap()
    }

    proptest! {
        #[test]
        fn merged_parts_equal_the_whole(
            rows in proptest::collection::vec(proptest::array::uniform9(-1f64..1f64), 1..200),
            cuts in proptest::collection::vec(0usize..200, 0..6),
            split in 0usize..8,
        ) {
            let all: Vec<Option<[f64; 9]>> = rows.iter().copied().map(Some).collect();
            let whole = coef_histogram_ref(&all, -1.0, 1.0, 7);
            let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c.min(all.len())).collect();
            bounds.extend([0, all.len()]);
            bounds.sort_unstable();
            let mut parts: Vec<Option<Histogram>> = bounds
                .windows(2)
                .map(|w| Some(coef_histogram_ref(&all[w[0]..w[1]], -1.0, 1.0, 7)))
                .collect();
            parts.push(None);
            let merged = coef_histogram_merge_ref(&parts);
            prop_assert_eq!(merged.as_ref(), Some(&whole));
            let grouped = groups_result(&parts, split);
            prop_assert_eq!(grouped.as_ref(), Some(&whole));
        }
    }

    #[test]
    fn nulls_filter_and_mismatch() {
        let h = coef_histogram_ref(&[Some([0.5; 9])], 0.0, 1.0, 2);
        let mut acc = CoefHistogramMergeGroupsAccumulator { hists: Vec::new() };
        let arr = hist_array(&[Some(h.clone()), None, Some(h.clone())]);
        let keep = BooleanArray::from(vec![Some(true), Some(true), None]);
        acc.update_batch(&[arr], &[0, 1, 1], Some(&keep), 2)
            .unwrap();
        let out = acc.evaluate(EmitTo::All).unwrap();
        assert_eq!(
            Histogram::from_array(out.as_ref(), 0).unwrap(),
            Some(h.clone())
        );
        assert_eq!(Histogram::from_array(out.as_ref(), 1).unwrap(), None);

        let other = coef_histogram_ref(&[Some([0.5; 9])], 0.0, 2.0, 2);
        let mut acc = CoefHistogramMergeAccumulator { hist: None };
        let err = acc
            .update_batch(&[hist_array(&[Some(h), Some(other)])])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("coef_histogram_merge: hi must be constant"),
            "{err}"
        );
    }
}
