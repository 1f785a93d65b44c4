//! A physical optimizer rule: a semi join against a small build side runs as a filter
//! of the probe side's batches by a set of keys.
//!
//! `filters_meta` queries that read no column of `layers` or `models` become semi joins
//! (crate::semi_join). DataFusion's `HashJoinExec` then still hashes the keys of every
//! filter row, looks each one up, gathers the indices of the matches and copies
//! (`take`) every matching row, weights included, into a new batch, even when every row
//! matches: about a third of the CPU of exporting a task's slice. Yet the probe side is
//! usually the store's scan, whose batches never cross a layer (crate::scan), so the
//! keys `(model_id, layer_idx)` are constant within a batch.
//!
//! [`SemiFilterExec`] keeps the join's meaning (the probe rows whose keys equal some
//! build row's keys; NULL keys match nothing) and its output order and partitioning:
//! - it collects the build side once, into a set of row-encoded keys;
//! - a probe batch whose key columns are each constant is looked up once and passed on
//!   whole (no copy) or dropped;
//! - any other batch is masked row by row and filtered (`filter_record_batch`, no index
//!   gathering);
//! - the join's dynamic filter, already wired into the probe-side scan by DataFusion's
//!   filter pushdown, is set from the build keys (per key column: its bounds and, when
//!   there are few, its values) before the probe side is read, so the scan still skips
//!   the files and row groups no build key can match.
//!
//! [`SemiJoinAsFilter`] replaces a `HashJoinExec` by it when the join is a right semi
//! join in `CollectLeft` mode (the build side is one partition: a small table) with no
//! extra join condition or limit, NULLs never equal, and key types that agree on both
//! sides; a join's projection becomes a `ProjectionExec` above the filter.

use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, BooleanBufferBuilder, RecordBatch};
use arrow::compute::kernels::cmp::eq;
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::Schema;
use arrow::datatypes::{Int32Type, Int64Type};
use arrow::row::{RowConverter, SortField};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::common::{HashSet, NullEquality, Result, ScalarValue, Statistics, internal_err};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::logical_expr::{JoinType, Operator};
use datafusion::physical_expr::expressions::{
    BinaryExpr, Column, DynamicFilterPhysicalExpr, in_list, lit,
};
use datafusion::physical_expr::projection::ProjectionExpr;
use datafusion::physical_expr::{PhysicalExpr, PhysicalExprRef, conjunction};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, Distribution, ExecutionPlan,
    InputDistributionRequirements, PlanProperties, ReplaceChildrenOptions,
    SendableRecordBatchStream, StatisticsArgs, apply_expression_roots, collect,
};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::OnceCell;

/// A key column with at most this many distinct build values also gets an `IN` list
/// in the dynamic filter (DataFusion's pruning uses lists of up to 20 values).
const IN_LIST_MAX: usize = 20;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct SemiJoinAsFilter;

impl PhysicalOptimizerRule for SemiJoinAsFilter {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(join) = node.downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(node));
            };
            let Some(exec) = SemiFilterExec::try_from_join(join)? else {
                return Ok(Transformed::no(node));
            };
            let exec: Arc<dyn ExecutionPlan> = Arc::new(exec);
            // A join that projects its output (e.g. no column for `count(*)`) becomes
            // the filter under a projection of the same columns.
            let Some(projection) = &join.projection else {
                return Ok(Transformed::yes(exec));
            };
            let schema = exec.schema();
            let exprs: Vec<ProjectionExpr> = projection
                .iter()
                .map(|&i| {
                    let name = schema.field(i).name();
                    ProjectionExpr::new(Arc::new(Column::new(name, i)), name.clone())
                })
                .collect();
            Ok(Transformed::yes(Arc::new(ProjectionExec::try_new(
                exprs, exec,
            )?)))
        })
        .data()
    }

    fn name(&self) -> &str {
        "filterdb_semi_join_as_filter"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The probe side's rows whose keys are among the build side's. See the module
/// documentation.
#[derive(Debug)]
pub struct SemiFilterExec {
    build: Arc<dyn ExecutionPlan>,
    probe: Arc<dyn ExecutionPlan>,
    /// Key expressions over the build side's and the probe side's schema, pairwise.
    build_keys: Vec<PhysicalExprRef>,
    probe_keys: Vec<PhysicalExprRef>,
    /// The join's dynamic filter, over `probe_keys`, pushed into the probe side.
    dynamic_filter: Option<Arc<DynamicFilterPhysicalExpr>>,
    /// The build side's keys, collected by the first partition that runs.
    keys: Arc<OnceCell<Arc<KeySet>>>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl SemiFilterExec {
    /// The filter equivalent to `join`, or `None` when the join is not one this node
    /// can stand in for (see the module documentation).
    ///
    /// # Errors
    /// Key expressions whose types cannot be computed.
    pub fn try_from_join(join: &HashJoinExec) -> Result<Option<SemiFilterExec>> {
        if *join.join_type() != JoinType::RightSemi
            || *join.partition_mode() != PartitionMode::CollectLeft
            || join.filter().is_some()
            || join.fetch().is_some()
            || join.null_equality() != NullEquality::NullEqualsNothing
            || join.on().is_empty()
        {
            return Ok(None);
        }
        let (build, probe) = (join.left(), join.right());
        // The join's output (before its projection) is the probe side's rows.
        if join.join_schema().fields() != probe.schema().fields() {
            return Ok(None);
        }
        for (b, p) in join.on() {
            if b.data_type(&build.schema())? != p.data_type(&probe.schema())? {
                return Ok(None);
            }
        }
        // The join's one dynamic filter, if filter pushdown gave it one.
        let dynamic_filter = join
            .dynamic_expressions_produced()
            .into_iter()
            .find_map(|e| Arc::downcast::<DynamicFilterPhysicalExpr>(e).ok());
        let (build_keys, probe_keys) = join
            .on()
            .iter()
            .map(|(b, p)| (Arc::clone(b), Arc::clone(p)))
            .unzip();
        Ok(Some(SemiFilterExec::new(
            Arc::clone(build),
            Arc::clone(probe),
            build_keys,
            probe_keys,
            dynamic_filter,
        )))
    }

    fn new(
        build: Arc<dyn ExecutionPlan>,
        probe: Arc<dyn ExecutionPlan>,
        build_keys: Vec<PhysicalExprRef>,
        probe_keys: Vec<PhysicalExprRef>,
        dynamic_filter: Option<Arc<DynamicFilterPhysicalExpr>>,
    ) -> SemiFilterExec {
        // A filter keeps its input's partitioning, ordering and equivalences.
        let properties = Arc::clone(probe.properties());
        SemiFilterExec {
            build,
            probe,
            build_keys,
            probe_keys,
            dynamic_filter,
            keys: Arc::new(OnceCell::new()),
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    fn key_list(&self) -> String {
        self.build_keys
            .iter()
            .zip(&self.probe_keys)
            .map(|(b, p)| format!("({b}, {p})"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl DisplayAs for SemiFilterExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => {
                write!(f, "SemiFilterExec: on=[{}]", self.key_list())
            }
            DisplayFormatType::TreeRender => write!(f, "on={}", self.key_list()),
        }
    }
}

impl ExecutionPlan for SemiFilterExec {
    fn name(&self) -> &'static str {
        "SemiFilterExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.build, &self.probe]
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        InputDistributionRequirements::new(vec![
            Distribution::SinglePartition,
            Distribution::UnspecifiedDistribution,
        ])
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false, true]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        let dynamic = self
            .dynamic_filter
            .iter()
            .map(|d| Arc::clone(d) as Arc<dyn PhysicalExpr>);
        let exprs: Vec<Arc<dyn PhysicalExpr>> = self
            .build_keys
            .iter()
            .chain(&self.probe_keys)
            .cloned()
            .chain(dynamic)
            .collect();
        apply_expression_roots(exprs.iter(), f)
    }

    fn dynamic_expressions_produced(&self) -> Vec<Arc<dyn PhysicalExpr>> {
        self.dynamic_filter
            .iter()
            .map(|d| Arc::clone(d) as Arc<dyn PhysicalExpr>)
            .collect()
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [build, probe]: [Arc<dyn ExecutionPlan>; 2] = match children.try_into() {
            Ok(c) => c,
            Err(c) => return internal_err!("SemiFilterExec: 2 children, got {}", c.len()),
        };
        Ok(Arc::new(SemiFilterExec::new(
            build,
            probe,
            self.build_keys.clone(),
            self.probe_keys.clone(),
            self.dynamic_filter.clone(),
        )))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let build = Arc::clone(&self.build);
        let probe = Arc::clone(&self.probe);
        let build_keys = self.build_keys.clone();
        let probe_keys = self.probe_keys.clone();
        let dynamic_filter = self.dynamic_filter.clone();
        let cell = Arc::clone(&self.keys);
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let metric =
            |name: &'static str| MetricBuilder::new(&self.metrics).counter(name, partition);
        let counters = Counters {
            input_rows: metric("input_rows"),
            whole_batches: metric("whole_batches"),
            masked_batches: metric("masked_batches"),
        };
        let build_rows = MetricBuilder::new(&self.metrics).global_counter("build_rows");
        let stream = futures::stream::once(async move {
            // The partition that collects the keys also sets the dynamic filter, once.
            let keys = cell
                .get_or_try_init(|| async {
                    let keys = KeySet::collect(build, &build_keys, &context, build_rows).await?;
                    if let Some(filter) = &dynamic_filter {
                        filter.update(keys.pruning_expr(&probe_keys, &probe.schema())?)?;
                        filter.mark_complete();
                    }
                    Ok::<_, datafusion::error::DataFusionError>(keys)
                })
                .await?;
            // The probe side is started only now, as a hash join does: a scan that
            // opens files lazily then already sees the dynamic filter.
            let input = probe.execute(partition, context)?;
            let keys = Arc::clone(keys);
            let stream = input.try_filter_map(move |batch| {
                let out = keys.filter(&batch, &probe_keys, &baseline, &counters);
                futures::future::ready(out)
            });
            Ok::<_, datafusion::error::DataFusionError>(stream)
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            stream.boxed(),
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        let rows = input_stats
            .get(1)
            .map(|s| s.num_rows.to_inexact())
            .unwrap_or_default();
        Ok(Arc::new(
            Statistics::new_unknown(&self.schema()).with_num_rows(rows),
        ))
    }
}

/// Per-partition counters shown by `EXPLAIN ANALYZE`.
struct Counters {
    input_rows: Count,
    /// Probe batches passed on or dropped whole (constant keys).
    whole_batches: Count,
    /// Probe batches masked row by row.
    masked_batches: Count,
}

/// The build side's keys, row-encoded.
#[derive(Debug)]
struct KeySet {
    converter: RowConverter,
    rows: HashSet<Box<[u8]>>,
    /// Per key column, over the rows with every key; `None` when there is no such row.
    columns: Option<Vec<ColumnSummary>>,
    _reservation: MemoryReservation,
}

impl KeySet {
    async fn collect(
        build: Arc<dyn ExecutionPlan>,
        keys: &[PhysicalExprRef],
        context: &Arc<TaskContext>,
        build_rows: Count,
    ) -> Result<Arc<KeySet>> {
        let schema = build.schema();
        let batches = collect(build, Arc::clone(context)).await?;
        let batch = concat_batches(&schema, &batches)?;
        build_rows.add(batch.num_rows());
        let arrays = keys
            .iter()
            .map(|k| k.evaluate(&batch)?.into_array(batch.num_rows()))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let converter = RowConverter::new(
            arrays
                .iter()
                .map(|a| SortField::new(a.data_type().clone()))
                .collect(),
        )?;
        // NULL keys match nothing: only rows with every key present count.
        let valid: Vec<usize> = (0..batch.num_rows())
            .filter(|&i| arrays.iter().all(|a| a.is_valid(i)))
            .collect();
        let encoded = converter.convert_columns(&arrays)?;
        let rows: HashSet<Box<[u8]>> = valid
            .iter()
            .map(|&i| Box::<[u8]>::from(encoded.row(i).as_ref()))
            .collect();
        let columns = if valid.is_empty() {
            None
        } else {
            Some(
                arrays
                    .iter()
                    .map(|a| column_summary(a, &valid))
                    .collect::<Result<Vec<_>>>()?,
            )
        };
        let reservation = MemoryConsumer::new("SemiFilterExec").register(context.memory_pool());
        reservation.try_grow(rows.iter().map(|r| r.len() + 16).sum::<usize>())?;
        Ok(Arc::new(KeySet {
            converter,
            rows,
            columns,
            _reservation: reservation,
        }))
    }

    /// A predicate over `probe_keys` that every matching probe row satisfies: per key
    /// column its bounds and, with few distinct values, an `IN` list of them
    /// (`false` when no build row can match).
    fn pruning_expr(
        &self,
        probe_keys: &[PhysicalExprRef],
        probe_schema: &Schema,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        let Some(columns) = &self.columns else {
            return Ok(lit(false));
        };
        let mut parts: Vec<Arc<dyn PhysicalExpr>> = Vec::new();
        for (key, ColumnSummary { min, max, values }) in probe_keys.iter().zip(columns) {
            let cmp = |op, v: &ScalarValue| -> Arc<dyn PhysicalExpr> {
                Arc::new(BinaryExpr::new(Arc::clone(key), op, lit(v.clone())))
            };
            parts.push(cmp(Operator::GtEq, min));
            parts.push(cmp(Operator::LtEq, max));
            if let Some(values) = values {
                let list = values.iter().map(|v| lit(v.clone())).collect();
                parts.push(in_list(Arc::clone(key), list, &false, probe_schema)?);
            }
        }
        Ok(conjunction(parts))
    }

    /// `batch` without the rows whose keys are not in the set (`None`: no row left).
    fn filter(
        &self,
        batch: &RecordBatch,
        probe_keys: &[PhysicalExprRef],
        baseline: &BaselineMetrics,
        counters: &Counters,
    ) -> Result<Option<RecordBatch>> {
        let _timer = baseline.elapsed_compute().timer();
        let n = batch.num_rows();
        counters.input_rows.add(n);
        if n == 0 {
            return Ok(None);
        }
        let arrays = probe_keys
            .iter()
            .map(|k| k.evaluate(batch)?.into_array(n))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let out = if arrays.iter().all(constant) {
            counters.whole_batches.add(1);
            let first: Vec<ArrayRef> = arrays.iter().map(|a| a.slice(0, 1)).collect();
            let row = self.converter.convert_columns(&first)?;
            self.rows
                .contains(row.row(0).as_ref())
                .then(|| batch.clone())
        } else {
            counters.masked_batches.add(1);
            let encoded = self.converter.convert_columns(&arrays)?;
            let mut mask = BooleanBufferBuilder::new(n);
            for (i, row) in encoded.iter().enumerate() {
                let valid = arrays.iter().all(|a| a.is_valid(i));
                mask.append(valid && self.rows.contains(row.as_ref()));
            }
            let mask = BooleanArray::new(mask.finish(), None);
            let kept = filter_record_batch(batch, &mask)?;
            (kept.num_rows() > 0).then_some(kept)
        };
        if let Some(b) = &out {
            baseline.record_output(b.num_rows());
        }
        Ok(out)
    }
}

/// Whether every value of `a` is the same non-NULL value.
fn constant(a: &ArrayRef) -> bool {
    if a.null_count() > 0 {
        return false;
    }
    if a.len() <= 1 {
        return true;
    }
    // The store's keys are Int32 / Int64: compare the values in place (the generic
    // comparison below builds a boolean array per batch).
    if let Some(v) = a.as_primitive_opt::<Int32Type>() {
        return all_equal(v.values());
    }
    if let Some(v) = a.as_primitive_opt::<Int64Type>() {
        return all_equal(v.values());
    }
    let first = arrow::array::Scalar::new(a.slice(0, 1));
    eq(a, &first).is_ok_and(|m| m.null_count() == 0 && m.true_count() == a.len())
}

/// Whether every value equals the first.
fn all_equal<T: PartialEq + Copy>(v: &[T]) -> bool {
    v.first()
        .is_none_or(|&f| v.iter().fold(true, |all, &x| all & (x == f)))
}

/// A build key column's values.
#[derive(Debug)]
struct ColumnSummary {
    min: ScalarValue,
    max: ScalarValue,
    /// The distinct values, when there are at most [`IN_LIST_MAX`].
    values: Option<Vec<ScalarValue>>,
}

/// The summary of `a` over the rows `valid` (at least one).
fn column_summary(a: &ArrayRef, valid: &[usize]) -> Result<ColumnSummary> {
    let mut values: Vec<ScalarValue> = valid
        .iter()
        .map(|&i| ScalarValue::try_from_array(a, i))
        .collect::<Result<_>>()?;
    values.sort_by(|x, y| x.partial_cmp(y).unwrap_or(std::cmp::Ordering::Equal));
    values.dedup();
    let min = values[0].clone();
    let max = values[values.len() - 1].clone();
    let values = (values.len() <= IN_LIST_MAX).then_some(values);
    Ok(ColumnSummary { min, max, values })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int32Array;
    use arrow::datatypes::{DataType, Field};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
    use datafusion::prelude::SessionContext;
    use proptest::prelude::*;

    type Keys = Vec<(Option<i32>, Option<i32>)>;

    fn schema() -> arrow::datatypes::SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int32, true),
            Field::new("b", DataType::Int32, true),
            Field::new("row", DataType::Int32, false),
        ]))
    }

    fn batch(keys: &[(Option<i32>, Option<i32>)], first_row: i32) -> RecordBatch {
        let a: Int32Array = keys.iter().map(|k| k.0).collect();
        let b: Int32Array = keys.iter().map(|k| k.1).collect();
        let row: Int32Array = (first_row..first_row + keys.len() as i32).collect();
        RecordBatch::try_new(schema(), vec![Arc::new(a), Arc::new(b), Arc::new(row)]).unwrap()
    }

    /// A right semi join of `probe` (partitions of batches) with `build` on (a, b),
    /// projecting `projection` of the probe's columns.
    fn join(
        build: &[(Option<i32>, Option<i32>)],
        probe: &[Vec<Keys>],
        projection: Option<Vec<usize>>,
    ) -> HashJoinExec {
        let build =
            MemorySourceConfig::try_new_exec(&[vec![batch(build, 0)]], schema(), None).unwrap();
        let mut row = 0;
        let partitions: Vec<Vec<RecordBatch>> = probe
            .iter()
            .map(|p| {
                p.iter()
                    .map(|keys| {
                        row += keys.len() as i32;
                        batch(keys, row - keys.len() as i32)
                    })
                    .collect()
            })
            .collect();
        let probe = MemorySourceConfig::try_new_exec(&partitions, schema(), None).unwrap();
        let s = schema();
        let col = |name: &str| -> PhysicalExprRef {
            Arc::new(Column::new(name, s.index_of(name).unwrap()))
        };
        HashJoinExec::try_new(
            Arc::new(CoalescePartitionsExec::new(build)),
            probe,
            vec![(col("a"), col("a")), (col("b"), col("b"))],
            None,
            &JoinType::RightSemi,
            projection,
            PartitionMode::CollectLeft,
            NullEquality::NullEqualsNothing,
            false,
        )
        .unwrap()
    }

    /// Each partition's rows, in order.
    fn run(plan: Arc<dyn ExecutionPlan>) -> Vec<RecordBatch> {
        let ctx = SessionContext::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        (0..plan.properties().partitioning.partition_count())
            .map(|p| {
                let stream = plan.execute(p, ctx.task_ctx()).unwrap();
                let batches: Vec<RecordBatch> = rt.block_on(stream.try_collect()).unwrap();
                concat_batches(&plan.schema(), &batches).unwrap()
            })
            .collect()
    }

    fn rewrite(join: HashJoinExec) -> (Arc<dyn ExecutionPlan>, Arc<dyn ExecutionPlan>) {
        let join: Arc<dyn ExecutionPlan> = Arc::new(join);
        let rewritten = SemiJoinAsFilter
            .optimize(Arc::clone(&join), &ConfigOptions::default())
            .unwrap();
        (join, rewritten)
    }

    fn key() -> impl Strategy<Value = (Option<i32>, Option<i32>)> {
        let v = prop_oneof![9 => (0..4).prop_map(Some), 1 => Just(None)];
        (v.clone(), v)
    }

    /// A probe batch: one key repeated (as the store's scan gives) or any keys.
    fn probe_batch() -> impl Strategy<Value = Keys> {
        prop_oneof![
            (key(), 1..20usize).prop_map(|(k, n)| vec![k; n]),
            prop::collection::vec(key(), 0..20),
        ]
    }

    proptest! {
        /// The filter returns what DataFusion's hash join returns, partition by
        /// partition and row by row: NULL keys match nothing, duplicate build keys
        /// keep a probe row once.
        #[test]
        fn filter_equals_hash_join(
            build in prop::collection::vec(key(), 0..12),
            probe in prop::collection::vec(prop::collection::vec(probe_batch(), 0..6), 1..3),
            project in any::<bool>(),
        ) {
            let projection = project.then(|| vec![2, 0]);
            let (join, rewritten) = rewrite(join(&build, &probe, projection));
            let names = rewritten.children().iter().map(|c| c.name()).collect::<Vec<_>>();
            if project {
                prop_assert_eq!(rewritten.name(), "ProjectionExec");
                prop_assert_eq!(names, vec!["SemiFilterExec"]);
            } else {
                prop_assert_eq!(rewritten.name(), "SemiFilterExec");
            }
            prop_assert_eq!(rewritten.schema(), join.schema());
            prop_assert_eq!(run(rewritten), run(join));
        }
    }

    #[test]
    fn constant_batches_pass_whole_and_mixed_ones_are_masked() {
        let k = |a, b| (Some(a), Some(b));
        let build = vec![k(1, 1), k(2, 2), k(2, 2)];
        let probe = vec![vec![
            vec![k(1, 1); 5],
            vec![k(3, 3); 4],
            vec![k(1, 1), k(2, 2), k(1, 2), (None, Some(1))],
        ]];
        let (_, plan) = rewrite(join(&build, &probe, None));
        let out = run(Arc::clone(&plan));
        let rows = out[0]
            .column(2)
            .as_any()
            .downcast_ref::<Int32Array>()
            .unwrap();
        assert_eq!(rows.values().to_vec(), vec![0, 1, 2, 3, 4, 9, 10]);
        let m = plan.metrics().unwrap().aggregate_by_name();
        let get = |name: &str| {
            m.iter()
                .find(|x| x.value().name() == name)
                .map(|x| x.value().as_usize())
        };
        assert_eq!(get("whole_batches"), Some(2));
        assert_eq!(get("masked_batches"), Some(1));
        assert_eq!(get("build_rows"), Some(3));
        assert_eq!(get("output_rows"), Some(7));
    }

    #[test]
    fn constant_columns() {
        use arrow::array::{Int64Array, StringArray};
        let a = |v: ArrayRef| constant(&v);
        assert!(a(Arc::new(Int32Array::from(vec![4, 4, 4]))));
        assert!(!a(Arc::new(Int32Array::from(vec![4, 4, 5]))));
        assert!(!a(Arc::new(Int32Array::from(vec![Some(4), None]))));
        assert!(a(Arc::new(Int64Array::from(vec![-1; 300]))));
        assert!(!a(Arc::new(Int64Array::from(vec![-1, 2]))));
        assert!(a(Arc::new(StringArray::from(vec!["x", "x"]))));
        assert!(!a(Arc::new(StringArray::from(vec!["x", "y"]))));
        assert!(a(Arc::new(Int32Array::from(Vec::<i32>::new()))));
        // a slice compares its own values only
        let s = Int32Array::from(vec![1, 2, 2, 3]).slice(1, 2);
        assert!(a(Arc::new(s)));
    }

    #[test]
    fn joins_it_cannot_stand_in_for_are_kept() {
        let k = (Some(1), Some(1));
        for join_type in [JoinType::LeftSemi, JoinType::Inner, JoinType::RightAnti] {
            let j = join(&[k], &[vec![vec![k]]], None);
            let j = j.builder().with_type(join_type).build().unwrap();
            let (_, plan) = rewrite(j);
            assert_eq!(plan.name(), "HashJoinExec", "{join_type}");
        }
        let j = join(&[k], &[vec![vec![k]]], None);
        let j = j
            .builder()
            .with_null_equality(NullEquality::NullEqualsNull)
            .build()
            .unwrap();
        assert_eq!(rewrite(j).1.name(), "HashJoinExec");
    }

    #[test]
    fn pruning_expression_bounds_and_lists_the_build_keys() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let ctx = SessionContext::new();
        let s = schema();
        let keys: Vec<PhysicalExprRef> =
            vec![Arc::new(Column::new("a", 0)), Arc::new(Column::new("b", 1))];
        let set = |rows: Keys| {
            let build =
                MemorySourceConfig::try_new_exec(&[vec![batch(&rows, 0)]], Arc::clone(&s), None)
                    .unwrap();
            rt.block_on(KeySet::collect(build, &keys, &ctx.task_ctx(), Count::new()))
                .unwrap()
        };
        let e = set(vec![
            (Some(3), Some(7)),
            (Some(1), None),
            (Some(5), Some(7)),
        ])
        .pruning_expr(&keys, &s)
        .unwrap();
        assert_eq!(
            e.to_string(),
            "a@0 >= 3 AND a@0 <= 5 AND a@0 IN (SET) ([3, 5]) AND b@1 >= 7 AND b@1 <= 7 \
             AND b@1 IN (SET) ([7])"
        );
        let none = set(vec![(None, Some(1))]).pruning_expr(&keys, &s).unwrap();
        assert_eq!(none.to_string(), "false");
        let many: Keys = (0..30).map(|i| (Some(i), Some(0))).collect();
        let e = set(many).pruning_expr(&keys, &s).unwrap().to_string();
        assert!(e.starts_with("a@0 >= 0 AND a@0 <= 29 AND b@1 >= 0"), "{e}");
    }
}
