//! `filter_columns`: the store's filter files as a DataFusion table with its own scan.
//!
//! DataFusion's Parquet reader decodes a FLOAT16 column one value at a time (parquet-rs
//! reads it as fixed-size binary, then converts each 2-byte value), which costs more
//! than everything else in a scan of an f16 store. filterdb writes the weight columns
//! itself as PLAIN pages without compression or levels (docs/store-format.md), so their
//! values are the page bytes: this scan copies each page into an aligned Arrow buffer
//! (one `memcpy`) and reads the id columns with parquet-rs's Arrow reader. A column chunk
//! in any other form (another writer's file) goes through the Arrow reader as well, so
//! the fast path is an optimisation, never a requirement.
//!
//! It also knows what the store's log knows: every file holds one model, so a condition
//! on `model_id` prunes whole files before they are opened, and the number of rows is
//! exact without reading a footer. Conditions on the id columns (`filter_id`, `model_id`,
//! `layer_idx`, `out_channel`, `in_channel`) prune row groups through DataFusion's
//! [`PruningPredicate`] over each row group's min/max statistics (a file's rows are
//! sorted by layer, so a layer is a few contiguous row groups). At execution, filters
//! that DataFusion pushes into the plan (a hash join's dynamic filter built from its
//! build side, a TopK bound) skip the row groups and files they rule out as each file
//! is opened. Pruning is always inexact: DataFusion still filters the rows it reads.
//!
//! Work is split into contiguous runs of about equal size, one per target partition:
//! whole models when that balances (range partitioning on `model_id`), else whole
//! layers, cut at the layer starts nearest the equal shares (range partitioning on
//! `(model_id, layer_idx)`; a row group holding a cut is read by both sides, each keeping
//! its own layers), so aggregates grouped by layer never repartition the weights and a
//! store of a few large models still keeps every core busy. Batches never span a row
//! group and start at fixed offsets inside it (multiples of the batch size), so the same
//! rows form the same batches whatever the number of partitions (batches also end where
//! a layer starts, so a layer cut never splits one).

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, BooleanArray, Int64Array, PrimitiveArray, RecordBatch, RecordBatchOptions,
    UInt64Array,
};
use arrow::buffer::{Buffer, MutableBuffer, ScalarBuffer};
use arrow::compute::SortOptions;
use arrow::datatypes::{
    DataType, Float16Type, Float32Type, Int32Type, Int64Type, Schema, SchemaRef,
};
use async_trait::async_trait;
use bytes::Bytes;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::config::ConfigOptions;
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, Result, ScalarValue, Statistics, exec_datafusion_err};
use datafusion::datasource::TableType;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::utils::expr_to_columns;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{
    EquivalenceProperties, LexOrdering, PhysicalExpr, PhysicalSortExpr, RangePartitioning,
    SplitPoint, conjunction,
};
use datafusion::physical_optimizer::pruning::{PruningPredicate, PruningPredicateBuilder};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::filter_pushdown::{
    ChildPushdownResult, FilterPushdownPhase, FilterPushdownPropagation, PushedDown,
};
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::{
    RecordBatchReceiverStreamBuilder, RecordBatchStreamAdapter,
};
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning,
    PlanProperties, ReplaceChildrenOptions, SendableRecordBatchStream, StatisticsArgs,
    apply_expression_roots,
};
use filterdb_store::delta::{Decoder, DeltaInt};
use filterdb_store::{Precision as WeightPrecision, Snapshot, Store, filters_schema};
use futures::StreamExt;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::basic::{Compression, Encoding};
use parquet::column::page::{Page, PageReader};
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use parquet::file::serialized_reader::SerializedPageReader;

/// Index of the first weight column (`w0`) in the `filters` schema.
const FIRST_WEIGHT: usize = 5;

/// Index of `layer_idx` in the `filters` schema.
const LAYER_COLUMN: usize = 2;

/// The id columns: row-group statistics are written for them (the weight columns have
/// none), so conditions on them can prune.
const ID_COLUMNS: [&str; 5] = [
    "filter_id",
    "model_id",
    "layer_idx",
    "out_channel",
    "in_channel",
];

/// One filter file of the snapshot.
#[derive(Debug, Clone)]
struct ScanFile {
    path: PathBuf,
    model_id: i64,
    rows: u64,
}

/// The `filter_columns` table of one snapshot.
#[derive(Debug)]
pub struct FilterColumnsTable {
    schema: SchemaRef,
    precision: WeightPrecision,
    files: Vec<ScanFile>,
}

impl FilterColumnsTable {
    /// The filter files of `snapshot`, in model id order.
    pub fn new(store: &Store, snapshot: &Snapshot) -> FilterColumnsTable {
        let files = snapshot
            .models
            .values()
            .map(|m| ScanFile {
                path: store.path_of(&m.files.filters),
                model_id: m.model_id,
                rows: m.n_filters,
            })
            .collect();
        FilterColumnsTable {
            schema: filters_schema(snapshot.precision),
            precision: snapshot.precision,
            files,
        }
    }
}

#[cfg(test)]
impl FilterColumnsTable {
    /// A table over filter files written by a test: `(path, model_id, rows)`, in model order.
    fn from_files(
        precision: WeightPrecision,
        files: Vec<(PathBuf, i64, u64)>,
    ) -> FilterColumnsTable {
        FilterColumnsTable {
            schema: filters_schema(precision),
            precision,
            files: files
                .into_iter()
                .map(|(path, model_id, rows)| ScanFile {
                    path,
                    model_id,
                    rows,
                })
                .collect(),
        }
    }
}

/// Whether `e` reads columns and every one of them is in `names`.
fn reads_only(e: &Expr, names: &[&str]) -> bool {
    let mut cols = HashSet::new();
    expr_to_columns(e, &mut cols).is_ok()
        && !cols.is_empty()
        && cols.iter().all(|c| names.contains(&c.name.as_str()))
}

/// Whether `e` reads no column but `model_id` (then it can prune files from the log).
fn only_model_id(e: &Expr) -> bool {
    reads_only(e, &["model_id"])
}

/// Whether `e` reads only id columns (then row-group statistics can prune).
fn only_id_columns(e: &Expr) -> bool {
    reads_only(e, &ID_COLUMNS)
}

/// The threads partition readers run on: the blocking pool of a runtime of their own,
/// not the caller's. A reader holds its thread until its partition is read (it waits
/// for room in its channel), so in a runtime whose blocking pool is bounded (the CLI
/// bounds it, for the object store's short file reads) readers could take every thread
/// while a merge waits for a partition still queued for one: a deadlock. `None` (the
/// runtime could not be built) falls back to the caller's pool.
fn reader_threads() -> Option<&'static tokio::runtime::Handle> {
    static POOL: std::sync::LazyLock<Option<tokio::runtime::Runtime>> =
        std::sync::LazyLock::new(|| {
            tokio::runtime::Builder::new_current_thread()
                .thread_name("filterdb-scan")
                .build()
                .ok()
        });
    POOL.as_ref().map(tokio::runtime::Runtime::handle)
}

#[async_trait]
impl TableProvider for FilterColumnsTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Inexact: files and row groups are pruned, DataFusion still filters the rows.
        Ok(filters
            .iter()
            .map(|f| {
                if only_id_columns(f) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    fn statistics(&self) -> Option<Statistics> {
        let rows: u64 = self.files.iter().map(|f| f.rows).sum();
        Some(Statistics::new_unknown(&self.schema).with_num_rows(Precision::Exact(rows as usize)))
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let files = self.prune(state, filters)?;
        let mut pruned = Pruned {
            files: self.files.len() - files.len(),
            row_groups: 0,
        };
        let row_group_filter = self.row_group_predicate(state, filters)?;
        let projection: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let schema = Arc::new(self.schema.project(&projection)?);
        // Footers are read here, once per query and file: they give the row groups.
        let mut units = Vec::new();
        for f in files {
            let file = File::open(&f.path).map_err(|e| {
                exec_datafusion_err!("opening filter file {}: {e}", f.path.display())
            })?;
            let meta = ParquetMetaDataReader::new()
                .parse_and_finish(&file)
                .map_err(|e| {
                    exec_datafusion_err!("reading the footer of {}: {e}", f.path.display())
                })?;
            let meta = Arc::new(meta);
            let arrow_meta =
                ArrowReaderMetadata::try_new(Arc::clone(&meta), ArrowReaderOptions::new())?;
            let shared = Arc::new(OpenFile {
                path: f.path.clone(),
                model_id: f.model_id,
                meta,
                arrow_meta,
            });
            let groups: Vec<usize> = (0..shared.meta.num_row_groups())
                .filter(|&rg| shared.meta.row_group(rg).num_rows() > 0)
                .collect();
            let keep = match &row_group_filter {
                Some(p) => p.prune(&RowGroupStats::new(&shared, &groups))?,
                None => vec![true; groups.len()],
            };
            let kept = keep.iter().filter(|k| **k).count();
            pruned.row_groups += groups.len() - kept;
            if kept == 0 {
                pruned.files += 1;
                continue;
            }
            let kept: Vec<usize> = groups
                .into_iter()
                .zip(keep)
                .filter(|(_, k)| *k)
                .map(|(rg, _)| rg)
                .collect();
            let layers = RowGroupStats::new(&shared, &kept).layer_ranges();
            for (i, &rg) in kept.iter().enumerate() {
                units.push(Unit {
                    file: Arc::clone(&shared),
                    row_group: rg,
                    rows: shared.meta.row_group(rg).num_rows() as usize,
                    first_of_file: i == 0,
                    layers: layers.as_ref().and_then(|l| l[i]),
                    from: None,
                    to: None,
                });
            }
        }
        let target = state.config().target_partitions().max(1);
        // With `model_id` but not `layer_idx` projected, a layer split cannot be declared
        // (it is a range on both), so GROUP BY model_id would run in two stages, whose
        // order-preserving repartition holds each partition back to the pace of the
        // partition with the smaller models (measured: the 100M store's histogram pass
        // ran one core busy for 40 % of its time). Whole models per partition are then
        // preferred up to 1.10x an equal share (beyond that the imbalance costs more: on
        // the 10M store, 1.13x was 12 % slower than the layer split).
        let whole_models =
            schema.index_of("model_id").is_ok() && schema.index_of("layer_idx").is_err();
        let (partitions, layout) = split(units, target, whole_models);
        Ok(Arc::new(FilterScanExec::new(
            schema,
            projection,
            partitions,
            layout,
            state.config().batch_size(),
            limit,
            self.precision,
            pruned,
            None,
        )))
    }
}

impl FilterColumnsTable {
    /// The files whose `model_id` passes every filter on `model_id` alone.
    fn prune(&self, state: &dyn Session, filters: &[Expr]) -> Result<Vec<ScanFile>> {
        let usable: Vec<&Expr> = filters.iter().filter(|f| only_model_id(f)).collect();
        if usable.is_empty() || self.files.is_empty() {
            return Ok(self.files.clone());
        }
        let ids_schema = Arc::new(Schema::new(vec![
            self.schema.field_with_name("model_id")?.clone(),
        ]));
        let ids = RecordBatch::try_new(
            Arc::clone(&ids_schema),
            vec![Arc::new(Int64Array::from_iter_values(
                self.files.iter().map(|f| f.model_id),
            ))],
        )?;
        let df_schema = DFSchema::try_from(ids_schema.as_ref().clone())?;
        let mut keep = vec![true; self.files.len()];
        for f in usable {
            let unqualified = datafusion::logical_expr::expr_rewriter::unnormalize_col(f.clone());
            let phys = state.create_physical_expr(unqualified, &df_schema)?;
            let mask = phys.evaluate(&ids)?.into_array(ids.num_rows())?;
            let Some(mask) = mask.as_any().downcast_ref::<BooleanArray>() else {
                continue;
            };
            for (k, m) in keep.iter_mut().zip(mask.iter()) {
                *k &= m == Some(true);
            }
        }
        Ok(self
            .files
            .iter()
            .zip(keep)
            .filter(|(_, k)| *k)
            .map(|(f, _)| f.clone())
            .collect())
    }
}

impl FilterColumnsTable {
    /// The conditions on id columns as one predicate over row-group statistics, or
    /// `None` when there is none (or it cannot prune).
    fn row_group_predicate(
        &self,
        state: &dyn Session,
        filters: &[Expr],
    ) -> Result<Option<Arc<PruningPredicate>>> {
        let usable = filters
            .iter()
            .filter(|f| only_id_columns(f))
            .map(|f| datafusion::logical_expr::expr_rewriter::unnormalize_col(f.clone()));
        let Some(expr) = datafusion::logical_expr::utils::conjunction(usable) else {
            return Ok(None);
        };
        let df_schema = DFSchema::try_from(self.schema.as_ref().clone())?;
        // A condition that cannot be planned or rewritten here prunes nothing; DataFusion
        // still applies it to the rows.
        let Ok(phys) = state.create_physical_expr(expr, &df_schema) else {
            return Ok(None);
        };
        Ok(PruningPredicateBuilder::new()
            .with_file_schema(Arc::clone(&self.schema))
            .try_build(phys)
            .ok()
            .filter(|p| !p.always_true())
            .map(Arc::new))
    }
}

/// What was pruned when the scan was planned: files ruled out by `model_id` (without
/// opening them) or whose row groups were all ruled out, and row groups ruled out by
/// their statistics (in the files that were opened).
#[derive(Debug, Clone, Copy, Default)]
struct Pruned {
    files: usize,
    row_groups: usize,
}

/// Row-group statistics of some row groups of one file, for [`PruningPredicate`]: the
/// Parquet min/max/null counts through parquet-rs's [`StatisticsConverter`], and
/// `model_id` exactly, from the log (one model per file).
struct RowGroupStats<'a> {
    file: &'a OpenFile,
    row_groups: &'a [usize],
}

impl<'a> RowGroupStats<'a> {
    fn new(file: &'a OpenFile, row_groups: &'a [usize]) -> RowGroupStats<'a> {
        RowGroupStats { file, row_groups }
    }

    fn converter(&self, column: &str) -> Option<StatisticsConverter<'a>> {
        StatisticsConverter::try_new(
            column,
            self.file.arrow_meta.schema(),
            self.file.meta.file_metadata().schema_descr(),
        )
        .ok()
    }

    fn metadata(&self) -> impl Iterator<Item = &'a parquet::file::metadata::RowGroupMetaData> {
        let (meta, groups) = (&self.file.meta, self.row_groups);
        groups.iter().map(move |&rg| meta.row_group(rg))
    }

    /// Each row group's smallest and largest `layer_idx`, where the statistics have them.
    fn layer_ranges(&self) -> Option<Vec<Option<(i32, i32)>>> {
        let c = self.converter("layer_idx")?;
        let mins = c.row_group_mins(self.metadata()).ok()?;
        let maxes = c.row_group_maxes(self.metadata()).ok()?;
        let (mins, maxes) = (
            mins.as_primitive_opt::<Int32Type>()?,
            maxes.as_primitive_opt::<Int32Type>()?,
        );
        Some(
            mins.iter()
                .zip(maxes.iter())
                .map(|(lo, hi)| lo.zip(hi))
                .collect(),
        )
    }

    fn model_ids(&self) -> ArrayRef {
        Arc::new(Int64Array::from_value(
            self.file.model_id,
            self.row_groups.len(),
        ))
    }
}

impl PruningStatistics for RowGroupStats<'_> {
    fn min_values(&self, column: &datafusion::common::Column) -> Option<ArrayRef> {
        if column.name == "model_id" {
            return Some(self.model_ids());
        }
        self.converter(&column.name)?
            .row_group_mins(self.metadata())
            .ok()
    }

    fn max_values(&self, column: &datafusion::common::Column) -> Option<ArrayRef> {
        if column.name == "model_id" {
            return Some(self.model_ids());
        }
        self.converter(&column.name)?
            .row_group_maxes(self.metadata())
            .ok()
    }

    fn num_containers(&self) -> usize {
        self.row_groups.len()
    }

    fn null_counts(&self, column: &datafusion::common::Column) -> Option<ArrayRef> {
        let counts = self
            .converter(&column.name)?
            .row_group_null_counts(self.metadata())
            .ok()?;
        Some(Arc::new(counts))
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        Some(Arc::new(UInt64Array::from_iter_values(
            self.metadata().map(|rg| rg.num_rows() as u64),
        )))
    }

    fn contained(
        &self,
        column: &datafusion::common::Column,
        values: &HashSet<ScalarValue>,
    ) -> Option<BooleanArray> {
        // `model_id` holds one value per file: it is in the set or not at all. Answer
        // only for a set of Int64 values (the column's type), else a value of another
        // type would look absent.
        let typed = values.iter().all(|v| matches!(v, ScalarValue::Int64(_)));
        (column.name == "model_id" && typed).then(|| {
            let inside = values.contains(&ScalarValue::Int64(Some(self.file.model_id)));
            BooleanArray::from(vec![inside; self.row_groups.len()])
        })
    }
}

/// A file with its parsed footer.
#[derive(Debug)]
struct OpenFile {
    path: PathBuf,
    model_id: i64,
    meta: Arc<ParquetMetaData>,
    arrow_meta: ArrowReaderMetadata,
}

/// A position in the store's sort order: `(model_id, layer_idx)`.
type Key = (i64, i32);

/// One row group to read.
#[derive(Debug, Clone)]
struct Unit {
    file: Arc<OpenFile>,
    row_group: usize,
    rows: usize,
    /// The first unit of its file (a file pruned at execution is counted there).
    first_of_file: bool,
    /// The smallest and largest `layer_idx` in the row group (its statistics), when known.
    layers: Option<(i32, i32)>,
    /// Only the rows with `from <= (model_id, layer_idx) < to` belong to this partition
    /// (`None`: unbounded): a row group that a layer split cuts is read by both sides,
    /// each keeping its own layers.
    from: Option<Key>,
    to: Option<Key>,
}

impl Unit {
    /// Whether every row of the row group is read.
    fn whole(&self) -> bool {
        self.from.is_none() && self.to.is_none()
    }

    /// The keys of the first and last rows, from the statistics.
    fn key_range(&self) -> Option<(Key, Key)> {
        let (lo, hi) = self.layers?;
        Some(((self.file.model_id, lo), (self.file.model_id, hi)))
    }
}

/// How the scan's partitions divide the rows, which decides the partitioning declared.
#[derive(Debug, Clone)]
enum Layout {
    /// Each model in one partition: range partitioning on `model_id`.
    ByModel,
    /// Each layer in one partition; partition `p > 0` starts at key `starts[p - 1]`:
    /// range partitioning on `(model_id, layer_idx)`.
    ByLayer(Vec<Key>),
    /// Contiguous runs of row groups: no partitioning declared.
    Rows,
}

/// Cut `units` into at most `n` contiguous runs of about equal row counts:
/// - whole files per partition when that is balanced (no partition over 1.05x its
///   share): each model lives in one partition ([`Layout::ByModel`]);
/// - else whole layers per partition, cut at the layer starts nearest the equal shares
///   ([`Layout::ByLayer`]), when the statistics give every row group's layers and that
///   is better balanced or gives more partitions than whole files (a store of a few
///   large models, where whole files leave a core idle);
/// - else whole files when within 1.25x, else row groups ([`Layout::Rows`]).
///
/// With `whole_models`, whole files within 1.10x come before a layer split.
fn split(units: Vec<Unit>, n: usize, whole_models: bool) -> (Vec<Vec<Unit>>, Layout) {
    let total: usize = units.iter().map(|u| u.rows).sum();
    let by_file = split_even(units.clone(), n, true);
    let largest = |parts: &[Vec<Unit>]| {
        parts
            .iter()
            .map(|p| p.iter().map(|u| u.rows).sum::<usize>())
            .max()
            .unwrap_or(0)
    };
    // within `percent` % of an equal share of `share_of` partitions
    let within = |parts: &[Vec<Unit>], largest: usize, percent: usize, share_of: usize| {
        parts.len() > 1 && largest * 100 <= total.div_ceil(share_of) * percent
    };
    // The share is of `n` even with fewer row groups than partitions: a layer split can
    // still give every partition work, where fewer partitions would make DataFusion
    // add a round-robin repartition (which coalesces small batches, so batches would
    // no longer be the same for every partitioning).
    let n = n.max(1);
    let file_largest = largest(&by_file);
    if within(&by_file, file_largest, 105, n)
        || (whole_models && within(&by_file, file_largest, 110, n))
    {
        return (by_file, Layout::ByModel);
    }
    if let Some((parts, starts, largest)) = split_by_layer(&units, n)
        && (largest < file_largest || parts.len() > by_file.len())
    {
        return (parts, Layout::ByLayer(starts));
    }
    if within(&by_file, file_largest, 125, by_file.len()) {
        return (by_file, Layout::ByModel);
    }
    (split_even(units, n, false), Layout::Rows)
}

/// Whole layers per partition: the partitions, the key each partition after the first
/// starts at, and the largest partition's estimated rows. `None` when a row group's
/// layers are unknown, the rows are not in key order, or there is no cut to make.
///
/// A layer starts either at a row group's first row (known exactly) or inside a row
/// group; inside, its position is estimated by spreading the row group's layers evenly,
/// which only moves a cut by less than one row group.
fn split_by_layer(units: &[Unit], n: usize) -> Option<(Vec<Vec<Unit>>, Vec<Key>, usize)> {
    let total: usize = units.iter().map(|u| u.rows).sum();
    // (estimated first row, key) of every layer start after the first row
    let mut starts: Vec<(usize, Key)> = Vec::new();
    let mut pos = 0usize;
    let mut prev: Option<Key> = None;
    for u in units {
        let ((m, lo), (_, hi)) = u.key_range()?;
        if hi < lo || prev.is_some_and(|p| p > (m, lo)) {
            return None;
        }
        if prev.is_some_and(|p| p < (m, lo)) {
            starts.push((pos, (m, lo)));
        }
        let span = (hi - lo) as usize + 1;
        for l in lo + 1..=hi {
            starts.push((pos + u.rows * (l - lo) as usize / span, (m, l)));
        }
        prev = Some((m, hi));
        pos += u.rows;
    }
    let mut cuts: Vec<(usize, Key)> = Vec::new();
    for k in 1..n {
        let target = total * k / n;
        let best = starts
            .iter()
            .filter(|(_, key)| cuts.last().is_none_or(|(_, c)| key > c))
            .min_by_key(|(p, _)| p.abs_diff(target));
        if let Some(&c) = best {
            cuts.push(c);
        }
    }
    if cuts.is_empty() {
        return None;
    }
    let keys: Vec<Key> = cuts.iter().map(|&(_, k)| k).collect();
    let mut parts: Vec<Vec<Unit>> = vec![Vec::new(); keys.len() + 1];
    for u in units {
        let (first, last) = u.key_range()?;
        for (p, part) in parts.iter_mut().enumerate() {
            let from = p.checked_sub(1).map(|i| keys[i]);
            let to = keys.get(p).copied();
            if from.is_some_and(|f| last < f) || to.is_some_and(|t| first >= t) {
                continue;
            }
            let from = from.filter(|&f| first < f);
            part.push(Unit {
                first_of_file: u.first_of_file && from.is_none(),
                from,
                to: to.filter(|&t| last >= t),
                ..u.clone()
            });
        }
    }
    let mut bounds: Vec<usize> = vec![0];
    bounds.extend(cuts.iter().map(|&(p, _)| p));
    bounds.push(total);
    let largest = bounds.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    Some((parts, keys, largest))
}

/// Contiguous runs of about `total / n` rows; with `whole_files`, a run only ends where
/// a file ends.
fn split_even(units: Vec<Unit>, n: usize, whole_files: bool) -> Vec<Vec<Unit>> {
    let total: usize = units.iter().map(|u| u.rows).sum();
    let n = n.min(units.len()).max(1);
    let mut out: Vec<Vec<Unit>> = vec![Vec::new()];
    let mut seen = 0usize;
    for u in units {
        let k = out.len();
        let last = &out[k - 1];
        let new_file = last.last().is_some_and(|p| !Arc::ptr_eq(&p.file, &u.file));
        // Start the next run once this one holds its share.
        if k < n && !last.is_empty() && seen >= total * k / n && (!whole_files || new_file) {
            out.push(Vec::new());
        }
        seen += u.rows;
        out.last_mut().expect("non-empty").push(u);
    }
    out
}

/// Column `name` of `schema`, ascending (nulls last), if the schema has it.
fn ascending(schema: &SchemaRef, name: &str) -> Option<PhysicalSortExpr> {
    let idx = schema.index_of(name).ok()?;
    Some(PhysicalSortExpr::new(
        Arc::new(Column::new(name, idx)),
        SortOptions {
            descending: false,
            nulls_first: false,
        },
    ))
}

/// The partitioning to declare, so aggregates grouped by model or by layer run in one
/// stage without repartitioning (DataFusion treats a range split as co-partitioned only
/// with the same split, so joins stay correct):
/// - [`Layout::ByModel`] with `model_id` projected: range partitioning on `model_id`
///   (split points: the first model of each partition after the first);
/// - [`Layout::ByLayer`] with `model_id` and `layer_idx` projected: range partitioning
///   on `(model_id, layer_idx)` at the partitions' start keys;
/// - otherwise unknown.
fn partitioning(schema: &SchemaRef, partitions: &[Vec<Unit>], layout: &Layout) -> Partitioning {
    let n = partitions.len();
    let key = |name: &str| ascending(schema, name);
    let (keys, splits): (Vec<Option<PhysicalSortExpr>>, Vec<SplitPoint>) = match layout {
        _ if n < 2 => return Partitioning::UnknownPartitioning(n),
        Layout::Rows => return Partitioning::UnknownPartitioning(n),
        Layout::ByModel => (
            vec![key("model_id")],
            partitions[1..]
                .iter()
                .map(|p| SplitPoint::new(vec![ScalarValue::Int64(Some(p[0].file.model_id))]))
                .collect(),
        ),
        Layout::ByLayer(starts) => (
            vec![key("model_id"), key("layer_idx")],
            starts
                .iter()
                .map(|&(m, l)| {
                    SplitPoint::new(vec![
                        ScalarValue::Int64(Some(m)),
                        ScalarValue::Int32(Some(l)),
                    ])
                })
                .collect(),
        ),
    };
    let Some(keys) = keys.into_iter().collect::<Option<Vec<_>>>() else {
        return Partitioning::UnknownPartitioning(n);
    };
    match LexOrdering::new(keys).map(|o| RangePartitioning::try_new(o, splits)) {
        Some(Ok(range)) => Partitioning::Range(range),
        _ => Partitioning::UnknownPartitioning(n),
    }
}

/// What every partition's output is sorted by: the files are read in model id order and
/// each holds its layers in order, each layer its filters by (out, in) channel, and
/// filter ids ascend the same way. Declared for the projected prefix of
/// `(model_id, layer_idx, out_channel, in_channel)` and for `filter_id`, so an aggregate
/// grouped by layer runs in sorted (streaming) mode and emits each layer when it ends.
fn equivalence(schema: &SchemaRef) -> EquivalenceProperties {
    let key = |name: &str| ascending(schema, name);
    let prefix: Vec<PhysicalSortExpr> = ["model_id", "layer_idx", "out_channel", "in_channel"]
        .iter()
        .map_while(|n| key(n))
        .collect();
    let orderings: Vec<Vec<PhysicalSortExpr>> = [prefix, key("filter_id").into_iter().collect()]
        .into_iter()
        .filter(|o| !o.is_empty())
        .collect();
    EquivalenceProperties::new_with_orderings(Arc::clone(schema), orderings)
}

/// The scan of `filter_columns`.
#[derive(Debug)]
pub struct FilterScanExec {
    schema: SchemaRef,
    projection: Vec<usize>,
    partitions: Vec<Vec<Unit>>,
    layout: Layout,
    batch_size: usize,
    limit: Option<usize>,
    precision: WeightPrecision,
    /// Pruned when planned (shown as metrics `files_pruned`, `row_groups_pruned`).
    pruned: Pruned,
    /// Filters pushed down by the physical optimizer (dynamic join / TopK filters),
    /// over the output schema; checked against each file's row groups when it opens.
    predicate: Option<Arc<dyn PhysicalExpr>>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl FilterScanExec {
    #[expect(
        clippy::too_many_arguments,
        reason = "private constructor; every field is set here"
    )]
    fn new(
        schema: SchemaRef,
        projection: Vec<usize>,
        partitions: Vec<Vec<Unit>>,
        layout: Layout,
        batch_size: usize,
        limit: Option<usize>,
        precision: WeightPrecision,
        pruned: Pruned,
        predicate: Option<Arc<dyn PhysicalExpr>>,
    ) -> FilterScanExec {
        let properties = PlanProperties::new(
            equivalence(&schema),
            partitioning(&schema, &partitions, &layout),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        let metrics = ExecutionPlanMetricsSet::new();
        MetricBuilder::new(&metrics)
            .global_counter("files_pruned")
            .add(pruned.files);
        MetricBuilder::new(&metrics)
            .global_counter("row_groups_pruned")
            .add(pruned.row_groups);
        FilterScanExec {
            schema,
            projection,
            partitions,
            layout,
            batch_size: batch_size.max(1),
            limit,
            precision,
            pruned,
            predicate,
            properties: Arc::new(properties),
            metrics,
        }
    }

    /// This scan with `predicate` added to its pushed-down filters.
    fn with_predicate(&self, predicate: Arc<dyn PhysicalExpr>) -> FilterScanExec {
        let predicate = match &self.predicate {
            Some(p) => conjunction([Arc::clone(p), predicate]),
            None => predicate,
        };
        FilterScanExec::new(
            Arc::clone(&self.schema),
            self.projection.clone(),
            self.partitions.clone(),
            self.layout.clone(),
            self.batch_size,
            self.limit,
            self.precision,
            self.pruned,
            Some(predicate),
        )
    }

    /// Rows of one partition or all, and whether the count is exact. A row group cut
    /// by a layer split is counted once in the total (in the first partition that
    /// reads it, where it has no `from`) and as half its rows in each partition.
    fn rows(&self, partition: Option<usize>) -> (usize, bool) {
        let (rows, exact) = match partition {
            Some(p) => {
                let units = &self.partitions[p];
                let rows = units
                    .iter()
                    .map(|u| if u.whole() { u.rows } else { u.rows / 2 })
                    .sum();
                (rows, units.iter().all(Unit::whole))
            }
            None => {
                let rows = self
                    .partitions
                    .iter()
                    .flatten()
                    .filter(|u| u.from.is_none())
                    .map(|u| u.rows)
                    .sum();
                (rows, true)
            }
        };
        (self.limit.map_or(rows, |l| rows.min(l)), exact)
    }
}

impl DisplayAs for FilterScanExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let files: std::collections::BTreeSet<&PathBuf> = self
            .partitions
            .iter()
            .flatten()
            .map(|u| &u.file.path)
            .collect();
        let groups: usize = self.partitions.iter().map(Vec::len).sum();
        let names: Vec<&str> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => {
                write!(
                    f,
                    "FilterScanExec: files={}, row_groups={groups}, partitions={}, projection=[{}]{}",
                    files.len(),
                    self.partitions.len(),
                    names.join(", "),
                    self.limit
                        .map(|l| format!(", limit={l}"))
                        .unwrap_or_default()
                )?;
                if self.pruned.files + self.pruned.row_groups > 0 {
                    write!(
                        f,
                        ", pruned=[files={}, row_groups={}]",
                        self.pruned.files, self.pruned.row_groups
                    )?;
                }
                if let Some(p) = &self.predicate {
                    write!(f, ", predicate={p}")?;
                }
                Ok(())
            }
            DisplayFormatType::TreeRender => write!(f, "files={}", files.len()),
        }
    }
}

impl ExecutionPlan for FilterScanExec {
    fn name(&self) -> &'static str {
        "FilterScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        // A hash join computes its dynamic filter only when it finds the filter's
        // expression id here, in its probe side.
        apply_expression_roots(self.predicate.iter(), f)
    }

    /// Takes the filters of the `Post` phase: the dynamic filters of hash joins (and
    /// TopK / aggregate bounds) on this scan's columns. They only prune, so every one
    /// is answered `No` and stays where it is. (The `Pre` phase brings the static
    /// filters the table provider already got in `scan`.)
    fn handle_child_pushdown_result(
        &self,
        phase: FilterPushdownPhase,
        child_pushdown_result: ChildPushdownResult,
        _config: &ConfigOptions,
    ) -> Result<FilterPushdownPropagation<Arc<dyn ExecutionPlan>>> {
        let filters: Vec<Arc<dyn PhysicalExpr>> = child_pushdown_result
            .parent_filters
            .into_iter()
            .map(|f| f.filter)
            .collect();
        let answer = vec![PushedDown::No; filters.len()];
        if phase != FilterPushdownPhase::Post || filters.is_empty() {
            return Ok(FilterPushdownPropagation::with_parent_pushdown_result(
                answer,
            ));
        }
        let node: Arc<dyn ExecutionPlan> = Arc::new(self.with_predicate(conjunction(filters)));
        Ok(FilterPushdownPropagation::with_parent_pushdown_result(answer).with_updated_node(node))
    }

    fn replace_children(
        self: Arc<Self>,
        _: Vec<Arc<dyn ExecutionPlan>>,
        _: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
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
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let Some(units) = self.partitions.get(partition) else {
            return Err(exec_datafusion_err!(
                "FilterScanExec: no partition {partition}"
            ));
        };
        let metric =
            |name: &'static str| MetricBuilder::new(&self.metrics).counter(name, partition);
        let reader = PartitionReader {
            schema: Arc::clone(&self.schema),
            projection: self.projection.clone(),
            units: units.clone(),
            batch_size: self.batch_size,
            limit: self.limit,
            precision: self.precision,
            predicate: self.predicate.clone(),
            bytes: metric("bytes_scanned"),
            row_groups: metric("row_groups_scanned"),
            files_pruned: metric("files_pruned_dynamic"),
            row_groups_pruned: metric("row_groups_pruned_dynamic"),
            in_place: metric("weight_chunks_in_place"),
            mapped: metric("weight_chunks_mapped"),
            decoded: metric("id_chunks_decoded"),
            rows: MetricBuilder::new(&self.metrics).output_rows(partition),
        };
        // Reading starts when the stream is first polled, not here: a hash join polls
        // its probe side (this scan) only once its build side is done and its dynamic
        // filter is set, so the first file opened already sees that filter.
        let schema = Arc::clone(&self.schema);
        let start = futures::stream::once(async move {
            // Two batches in flight per partition: memory stays at about one row group.
            let mut builder = RecordBatchReceiverStreamBuilder::new(schema, 2);
            let tx = builder.tx();
            let run = move || reader.run(|b| tx.blocking_send(Ok(b)).is_ok());
            match reader_threads() {
                Some(pool) => builder.spawn_blocking_on(run, pool),
                None => builder.spawn_blocking(run),
            }
            builder.build()
        })
        .flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            start,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn statistics_from_inputs(
        &self,
        _input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        let (rows, exact) = self.rows(args.partition());
        // A pushed-down filter may skip row groups at execution: then at most `rows`.
        let rows = if self.predicate.is_some() || !exact {
            Precision::Inexact(rows)
        } else {
            Precision::Exact(rows)
        };
        Ok(Arc::new(
            Statistics::new_unknown(&self.schema).with_num_rows(rows),
        ))
    }
}

/// The work of one partition, run on a blocking thread.
struct PartitionReader {
    schema: SchemaRef,
    projection: Vec<usize>,
    units: Vec<Unit>,
    batch_size: usize,
    limit: Option<usize>,
    precision: WeightPrecision,
    predicate: Option<Arc<dyn PhysicalExpr>>,
    bytes: Count,
    row_groups: Count,
    files_pruned: Count,
    row_groups_pruned: Count,
    /// Weight chunks whose page was used where it was read (`read_plain_weights`).
    in_place: Count,
    /// Of those, the ones used where the file is mapped.
    mapped: Count,
    /// Id chunks decoded a batch at a time (`delta_ids`).
    decoded: Count,
    rows: Count,
}

impl PartitionReader {
    /// Which of `units` (consecutive units of one file) the pushed-down filters, as they
    /// are now, may need. A dynamic filter that is not complete yet is still a valid
    /// (weaker) filter, and one that cannot be turned into a pruning predicate keeps
    /// every unit.
    fn keep(&self, units: &[Unit]) -> Result<Vec<bool>> {
        let Some(predicate) = &self.predicate else {
            return Ok(vec![true; units.len()]);
        };
        // The builder snapshots the dynamic filters it contains (their current value).
        let Ok(pruning) = PruningPredicateBuilder::new()
            .with_file_schema(Arc::clone(&self.schema))
            .try_build(Arc::clone(predicate))
        else {
            return Ok(vec![true; units.len()]);
        };
        if pruning.always_true() {
            return Ok(vec![true; units.len()]);
        }
        let groups: Vec<usize> = units.iter().map(|u| u.row_group).collect();
        let keep = pruning.prune(&RowGroupStats::new(&units[0].file, &groups))?;
        let skipped = keep.iter().filter(|k| !**k).count();
        self.row_groups_pruned.add(skipped);
        if skipped == units.len() && units[0].first_of_file {
            self.files_pruned.add(1);
        }
        Ok(keep)
    }

    /// Read every unit, handing batches to `send` (false: the consumer is gone).
    fn run(self, mut send: impl FnMut(RecordBatch) -> bool) -> Result<()> {
        let mut left = self.limit.unwrap_or(usize::MAX);
        let mut open: Option<(PathBuf, File)> = None;
        let mut keep: Vec<bool> = Vec::new();
        // A row group's layer_idx values, where its layer starts are needed.
        let mut layers: Vec<i32> = Vec::new();
        for (i, u) in self.units.iter().enumerate() {
            if left == 0 {
                break;
            }
            // Entering a file: decide which of its units to read, with the filters as
            // they are now.
            if i == 0 || !Arc::ptr_eq(&self.units[i - 1].file, &u.file) {
                let end = self.units[i..]
                    .iter()
                    .position(|v| !Arc::ptr_eq(&v.file, &u.file))
                    .map_or(self.units.len(), |n| i + n);
                keep = self.keep(&self.units[i..end])?;
                keep.reverse();
            }
            if !keep.pop().unwrap_or(true) {
                continue;
            }
            if open.as_ref().is_none_or(|(p, _)| *p != u.file.path) {
                let f = File::open(&u.file.path).map_err(|e| {
                    exec_datafusion_err!("opening filter file {}: {e}", u.file.path.display())
                })?;
                open = Some((u.file.path.clone(), f));
            }
            let (_, file) = open.as_ref().expect("opened above");
            let mut columns = self.read_row_group(file, u)?;
            // A row group cut by a layer split is counted where its first rows are read.
            if u.from.is_none() {
                self.row_groups.add(1);
            }
            let (mut offset, end, layer_starts) = self.row_span(file, u, &columns, &mut layers)?;
            for (k, c) in columns.iter_mut().enumerate() {
                c.skip(offset)
                    .map_err(|e| column_error(u, self.projection[k], &e))?;
            }
            while offset < end && left > 0 {
                // Batches end at multiples of the batch size inside the row group and
                // where a layer starts.
                let grid = (offset / self.batch_size + 1) * self.batch_size;
                let layer = layer_starts[layer_starts.partition_point(|&s| s <= offset)..]
                    .first()
                    .copied();
                let stop = layer.map_or(grid, |s| s.min(grid));
                let len = (stop.min(end) - offset).min(left);
                let cols = columns
                    .iter_mut()
                    .enumerate()
                    .map(|(k, c)| {
                        c.next(offset, len)
                            .map_err(|e| column_error(u, self.projection[k], &e))
                    })
                    .collect::<Result<Vec<ArrayRef>>>()?;
                let batch = RecordBatch::try_new_with_options(
                    Arc::clone(&self.schema),
                    cols,
                    &RecordBatchOptions::new().with_row_count(Some(len)),
                )?;
                self.rows.add(len);
                if !send(batch) {
                    return Ok(());
                }
                offset += len;
                left -= len;
            }
        }
        Ok(())
    }

    /// The projected columns of one row group.
    fn read_row_group(&self, file: &File, u: &Unit) -> Result<Vec<RowGroupColumn>> {
        let rg = u.file.meta.row_group(u.row_group);
        // The projected weight chunks, mapped as one range (they are adjacent in files
        // filterdb writes). The map lives as long as the batches that use it, so memory
        // stays bounded by the batches in flight, as with reads.
        let weights = self.projection.iter().filter(|&&c| c >= FIRST_WEIGHT);
        let (lo, hi) = weights.fold((u64::MAX, 0), |(lo, hi), &c| {
            let (start, len) = rg.column(c).byte_range();
            (lo.min(start), hi.max(start + len))
        });
        // From a multiple of 8 on, so that a chunk's bytes before its first aligned
        // address are in the map too.
        let lo = lo & !7;
        let map = (lo < hi).then(|| Mapped::new(file, lo, hi - lo)).flatten();
        let map = map.as_ref();
        let mut columns: Vec<Option<RowGroupColumn>> = Vec::new();
        columns.resize_with(self.projection.len(), || None);
        let mut slow: Vec<usize> = Vec::new();
        for (k, &c) in self.projection.iter().enumerate() {
            let chunk = rg.column(c);
            if c >= FIRST_WEIGHT {
                if let Some(a) = self.read_plain_weights(file, map, u, c)? {
                    self.bytes.add(chunk.compressed_size() as usize);
                    columns[k] = Some(RowGroupColumn::Array(a));
                    continue;
                }
            } else if let Some(ids) = delta_ids(file, u, c, self.schema.field(k).data_type())? {
                self.bytes.add(chunk.compressed_size() as usize);
                self.decoded.add(1);
                columns[k] = Some(ids);
                continue;
            }
            slow.push(k);
        }
        if !slow.is_empty() {
            let leaves: Vec<usize> = slow.iter().map(|&k| self.projection[k]).collect();
            let batch = self.read_leaves(file, u, &leaves)?;
            // The reader returns the leaves in file order, which is the order of `leaves`
            // sorted; map them back by name.
            for &k in &slow {
                let name = self.schema.field(k).name();
                let col = batch.column_by_name(name).ok_or_else(|| {
                    exec_datafusion_err!("{}: no column {name}", u.file.path.display())
                })?;
                columns[k] = Some(RowGroupColumn::Array(Arc::clone(col)));
            }
        }
        Ok(columns
            .into_iter()
            .map(|c| c.expect("every column read"))
            .collect())
    }

    /// Columns `leaves` (indices into the `filters` schema) of one row group, through
    /// parquet-rs's Arrow reader.
    fn read_leaves(&self, file: &File, u: &Unit, leaves: &[usize]) -> Result<RecordBatch> {
        let rg = u.file.meta.row_group(u.row_group);
        for &c in leaves {
            self.bytes.add(rg.column(c).compressed_size() as usize);
        }
        let mask = ProjectionMask::leaves(
            u.file.meta.file_metadata().schema_descr(),
            leaves.iter().copied(),
        );
        let handle = file.try_clone().map_err(|e| {
            exec_datafusion_err!("reading filter file {}: {e}", u.file.path.display())
        })?;
        let mut reader =
            ParquetRecordBatchReaderBuilder::new_with_metadata(handle, u.file.arrow_meta.clone())
                .with_row_groups(vec![u.row_group])
                .with_projection(mask)
                .with_batch_size(u.rows)
                .build()?;
        reader.next().transpose()?.ok_or_else(|| {
            exec_datafusion_err!(
                "{}: row group {} is empty",
                u.file.path.display(),
                u.row_group
            )
        })
    }

    /// The rows `start..end` of the row group that belong to this partition, and the
    /// rows inside it where a layer starts (batches end there).
    ///
    /// The rows are all of them, or for a row group a layer split cuts, those whose
    /// `(model_id, layer_idx)` lies in the unit's `[from, to)` (rows are in layer
    /// order). A row group whose statistics show more than one layer has its
    /// `layer_idx` column read (when it is not projected) to find where layers start:
    /// batches never span a layer, so a cut at a layer start never splits a batch and
    /// every partitioning forms the same batches (the aggregates' float sums are exact
    /// across batches, not inside one). `values` is the partition's buffer for the
    /// layer_idx values (decoded again from the page where the column is decoded a
    /// batch at a time).
    fn row_span(
        &self,
        file: &File,
        u: &Unit,
        columns: &[RowGroupColumn],
        values: &mut Vec<i32>,
    ) -> Result<(usize, usize, Vec<usize>)> {
        let several = u.layers.is_some_and(|(lo, hi)| lo < hi);
        if u.whole() && !several {
            return Ok((0, u.rows, Vec::new()));
        }
        let projected = self.projection.iter().position(|&c| c == LAYER_COLUMN);
        let layers = match projected.map(|k| &columns[k]) {
            Some(c) => c.clone(),
            None => match delta_ids(file, u, LAYER_COLUMN, &DataType::Int32)? {
                Some(c) => c,
                None => RowGroupColumn::Array(Arc::clone(
                    self.read_leaves(file, u, &[LAYER_COLUMN])?.column(0),
                )),
            },
        };
        values.clear();
        match layers {
            RowGroupColumn::Int32(mut d) => d
                .read(u.rows, values)
                .map_err(|e| column_error(u, LAYER_COLUMN, &e))?,
            RowGroupColumn::Array(a) => match a.as_primitive_opt::<Int32Type>() {
                Some(a) => values.extend_from_slice(a.values()),
                None => {
                    return Err(exec_datafusion_err!(
                        "{}: layer_idx is {}, expected Int32",
                        u.file.path.display(),
                        a.data_type()
                    ));
                }
            },
            RowGroupColumn::Int64(_) => {
                return Err(exec_datafusion_err!(
                    "{}: layer_idx is Int64, expected Int32",
                    u.file.path.display()
                ));
            }
        }
        let values = &values[..];
        let m = u.file.model_id;
        let bound = |key: Option<Key>, unbounded: usize| match key {
            None => unbounded,
            Some((km, _)) if m < km => u.rows,
            Some((km, _)) if m > km => 0,
            Some((_, kl)) => values.partition_point(|&l| l < kl),
        };
        let (start, end) = (bound(u.from, 0), bound(u.to, u.rows));
        let end = end.max(start);
        let starts = (start + 1..end)
            .filter(|&r| values[r] != values[r - 1])
            .collect();
        Ok((start, end, starts))
    }

    /// A weight column chunk in the form filterdb writes (uncompressed PLAIN data pages
    /// without levels), used where it lies when it can be; `None` when the chunk has
    /// any other form.
    ///
    /// filterdb writes one page per chunk: its header, then the values, placed at a
    /// multiple of the value's width in the file (since session 7; see
    /// `filterdb_store::OnePageChunk::write_aligned`). The header's length is the
    /// chunk's bytes minus the values'. Where the values are aligned and the file is
    /// mapped, the array is the mapped page cache itself (`weight_chunks_mapped`): no
    /// read, no copy, no fresh memory. Otherwise the chunk is read with one `pread` into
    /// an aligned buffer, placed so that its values land aligned, and used there. Either
    /// way parquet-rs's page reader checks the page first, and both count as
    /// `weight_chunks_in_place`. Chunks of several pages (files another tool wrote) have
    /// their pages copied into one aligned buffer.
    fn read_plain_weights(
        &self,
        file: &File,
        map: Option<&Mapped>,
        u: &Unit,
        c: usize,
    ) -> Result<Option<ArrayRef>> {
        use std::os::unix::fs::FileExt;
        let chunk = u.file.meta.row_group(u.row_group).column(c);
        let width = match self.precision {
            WeightPrecision::F16 => 2,
            WeightPrecision::F32 => 4,
        };
        if chunk.compression() != Compression::UNCOMPRESSED
            || chunk.dictionary_page_offset().is_some()
            || chunk.column_descr().max_def_level() != 0
        {
            return Ok(None);
        }
        let (start, len) = chunk.byte_range();
        let values = u.rows * width;
        let (Some(header), Ok(len)) = (
            usize::try_from(len)
                .ok()
                .and_then(|l| l.checked_sub(values)),
            usize::try_from(len),
        ) else {
            return Ok(None);
        };
        // `whole` holds the chunk from byte `lead` on, and starts at an aligned address.
        let mapped = map.and_then(|m| m.chunk(start, len, header, width));
        let is_mapped = mapped.is_some();
        let (whole, lead) = match mapped {
            Some(m) => m,
            None => {
                let pad = (width - header % width) % width;
                let mut buf = MutableBuffer::from_len_zeroed(pad + len);
                file.read_exact_at(&mut buf.as_slice_mut()[pad..], start)
                    .map_err(|e| {
                        exec_datafusion_err!("reading filter file {}: {e}", u.file.path.display())
                    })?;
                (Buffer::from(buf), pad)
            }
        };
        let bytes = ChunkBytes {
            start,
            bytes: Bytes::from_owner(ArrowBytes(whole.slice(lead))),
        };
        let mut pages = SerializedPageReader::new(Arc::new(bytes), chunk, u.rows, None)?;
        let mut data: Vec<Bytes> = Vec::with_capacity(1);
        while let Some(page) = pages.get_next_page()? {
            match plain_values(page, width) {
                Some(d) => data.push(d),
                None => return Ok(None),
            }
        }
        if data.iter().map(Bytes::len).sum::<usize>() != values {
            return Ok(None);
        }
        if let [only] = &data[..]
            && only.as_ptr() == whole.as_ptr().wrapping_add(lead + header)
        {
            self.in_place.add(1);
            if is_mapped {
                self.mapped.add(1);
            }
            return Ok(Some(self.weights_array(
                whole,
                (lead + header) / width,
                u.rows,
            )));
        }
        let mut out = MutableBuffer::with_capacity(values);
        for d in &data {
            out.extend_from_slice(d);
        }
        Ok(Some(self.weights_array(out.into(), 0, u.rows)))
    }

    /// `rows` weights of the buffer from element `offset` on.
    fn weights_array(&self, buf: Buffer, offset: usize, rows: usize) -> ArrayRef {
        match self.precision {
            WeightPrecision::F16 => Arc::new(PrimitiveArray::<Float16Type>::new(
                ScalarBuffer::new(buf, offset, rows),
                None,
            )),
            WeightPrecision::F32 => Arc::new(PrimitiveArray::<Float32Type>::new(
                ScalarBuffer::new(buf, offset, rows),
                None,
            )),
        }
    }
}

/// A projected column of one row group, as the scan hands it out a batch at a time.
#[derive(Clone)]
enum RowGroupColumn {
    /// Read whole (weights, and columns in forms other than the ones below): batches
    /// are slices of it.
    Array(ArrayRef),
    /// An id column in the form filterdb writes (one DELTA_BINARY_PACKED page),
    /// decoded as the batches are formed.
    Int32(Decoder<i32>),
    Int64(Decoder<i64>),
}

impl RowGroupColumn {
    /// Pass over the row group's first `n` rows.
    fn skip(&mut self, n: usize) -> parquet::errors::Result<()> {
        match self {
            RowGroupColumn::Array(_) => Ok(()),
            RowGroupColumn::Int32(d) => d.skip(n),
            RowGroupColumn::Int64(d) => d.skip(n),
        }
    }

    /// Rows `offset..offset + len`: the rows after those read or skipped so far.
    fn next(&mut self, offset: usize, len: usize) -> parquet::errors::Result<ArrayRef> {
        fn decode<T: DeltaInt>(d: &mut Decoder<T>, len: usize) -> parquet::errors::Result<Vec<T>> {
            let mut v = Vec::with_capacity(len);
            d.read(len, &mut v)?;
            Ok(v)
        }
        Ok(match self {
            RowGroupColumn::Array(a) => a.slice(offset, len),
            RowGroupColumn::Int32(d) => Arc::new(PrimitiveArray::<Int32Type>::new(
                ScalarBuffer::from(decode(d, len)?),
                None,
            )),
            RowGroupColumn::Int64(d) => Arc::new(PrimitiveArray::<Int64Type>::new(
                ScalarBuffer::from(decode(d, len)?),
                None,
            )),
        })
    }
}

/// An error reading column `c` (of the `filters` schema) of unit `u`'s row group,
/// naming the file and the column.
fn column_error(u: &Unit, c: usize, e: &dyn fmt::Display) -> datafusion::error::DataFusionError {
    exec_datafusion_err!(
        "{}: column {}, row group {}: {e}",
        u.file.path.display(),
        u.file.meta.row_group(u.row_group).column(c).column_path(),
        u.row_group
    )
}

/// Id column `c` of a row group as a [`Decoder`] of `data_type` (Int32 or Int64), when
/// its chunk has the form filterdb writes: one data page of DELTA_BINARY_PACKED values
/// without NULLs (any codec). `None` for any other form, which parquet-rs's reader then
/// reads.
fn delta_ids(
    file: &File,
    u: &Unit,
    c: usize,
    data_type: &DataType,
) -> Result<Option<RowGroupColumn>> {
    use parquet::basic::Type as Physical;
    use std::os::unix::fs::FileExt;
    let chunk = u.file.meta.row_group(u.row_group).column(c);
    let descr = chunk.column_descr();
    let typed = matches!(
        (data_type, chunk.column_type()),
        (DataType::Int32, Physical::INT32) | (DataType::Int64, Physical::INT64)
    );
    if !typed
        || chunk.dictionary_page_offset().is_some()
        || descr.max_rep_level() != 0
        || !chunk
            .encodings()
            .any(|e| e == Encoding::DELTA_BINARY_PACKED)
    {
        return Ok(None);
    }
    let (start, len) = chunk.byte_range();
    let Ok(len) = usize::try_from(len) else {
        return Ok(None);
    };
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, start)
        .map_err(|e| exec_datafusion_err!("reading filter file {}: {e}", u.file.path.display()))?;
    let bytes = ChunkBytes {
        start,
        bytes: Bytes::from(buf),
    };
    let mut pages = SerializedPageReader::new(Arc::new(bytes), chunk, u.rows, None)?;
    let Some(page) = pages.get_next_page()? else {
        return Ok(None);
    };
    if pages.get_next_page()?.is_some() {
        return Ok(None);
    }
    let values = match page {
        Page::DataPageV2 {
            buf,
            num_values,
            encoding: Encoding::DELTA_BINARY_PACKED,
            num_nulls: 0,
            def_levels_byte_len,
            rep_levels_byte_len: 0,
            ..
        } if num_values as usize == u.rows && def_levels_byte_len as usize <= buf.len() => {
            buf.slice(def_levels_byte_len as usize..)
        }
        Page::DataPage {
            buf,
            num_values,
            encoding: Encoding::DELTA_BINARY_PACKED,
            ..
        } if num_values as usize == u.rows && descr.max_def_level() == 0 => buf,
        _ => return Ok(None),
    };
    /// A decoder of the page's values, which must be the row group's rows.
    fn decoder<T: DeltaInt>(values: Bytes, u: &Unit, c: usize) -> Result<Decoder<T>> {
        let d = Decoder::<T>::new(values).map_err(|e| column_error(u, c, &e))?;
        if d.remaining() != u.rows {
            let held = format!("{} values, expected {}", d.remaining(), u.rows);
            return Err(column_error(u, c, &held));
        }
        Ok(d)
    }
    Ok(Some(if *data_type == DataType::Int32 {
        RowGroupColumn::Int32(decoder(values, u, c)?)
    } else {
        RowGroupColumn::Int64(decoder(values, u, c)?)
    }))
}

/// A data page's values when it is PLAIN without levels and holds `width`-byte values
/// only.
fn plain_values(page: Page, width: usize) -> Option<Bytes> {
    let (data, values) = match page {
        Page::DataPage {
            buf,
            num_values,
            encoding: Encoding::PLAIN,
            ..
        }
        | Page::DataPageV2 {
            buf,
            num_values,
            encoding: Encoding::PLAIN,
            num_nulls: 0,
            def_levels_byte_len: 0,
            rep_levels_byte_len: 0,
            ..
        } => (buf, num_values),
        _ => return None,
    };
    (data.len() == values as usize * width).then_some(data)
}

/// An Arrow buffer as the owner of `Bytes`.
struct ArrowBytes(Buffer);

impl AsRef<[u8]> for ArrowBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

/// A range of a filter file mapped into memory, to use its weight chunks where they
/// lie.
///
/// Sound as long as nobody truncates or rewrites the file while it is mapped: store
/// files are written once under a temporary name and renamed into place, never
/// changed after, and removed only by `vacuum` (removing a mapped file keeps its pages
/// until they are unmapped). Someone who truncates a store file by hand during a query
/// gets SIGBUS, as with any tool that maps Parquet files.
#[derive(Clone)]
struct Mapped {
    map: Arc<memmap2::Mmap>,
    /// The file offset of the map's first byte.
    start: u64,
}

impl Mapped {
    /// Bytes `start..start + len` of `file`; `None` where mapping fails (the scan then
    /// reads the file).
    fn new(file: &File, start: u64, len: u64) -> Option<Mapped> {
        let len = usize::try_from(len).ok()?;
        // SAFETY: store files are immutable once renamed into place (see above).
        let map = unsafe { memmap2::MmapOptions::new().offset(start).len(len).map(file) }.ok()?;
        Some(Mapped {
            map: Arc::new(map),
            start,
        })
    }

    /// The chunk at file offset `first`, `len` bytes, as a buffer that starts at an
    /// aligned address and the chunk's offset in it, when its values (`header` bytes
    /// in) start at a multiple of `width` in the file and the chunk is in the map.
    /// (The map places each byte at an address congruent to its file offset modulo
    /// the page size.)
    fn chunk(
        &self,
        first: u64,
        len: usize,
        header: usize,
        width: usize,
    ) -> Option<(Buffer, usize)> {
        let at = usize::try_from(first.checked_sub(self.start)?).ok()?;
        let lead = (first % width as u64) as usize;
        if !(lead + header).is_multiple_of(width)
            || at < lead
            || at.checked_add(len)? > self.map.len()
        {
            return None;
        }
        let bytes = Bytes::from_owner(self.clone()).slice(at - lead..at + len);
        Some((Buffer::from(bytes), lead))
    }
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

/// A column chunk held in memory, read by parquet-rs's page reader at the file offsets
/// it was read from (`start` is the chunk's first byte in the file). Pages come back as
/// slices of `bytes`, not copies.
struct ChunkBytes {
    start: u64,
    bytes: Bytes,
}

impl ChunkBytes {
    fn range(&self, at: u64, len: usize) -> parquet::errors::Result<Bytes> {
        let from = at
            .checked_sub(self.start)
            .and_then(|o| usize::try_from(o).ok())
            .filter(|&o| o + len <= self.bytes.len())
            .ok_or_else(|| {
                parquet::errors::ParquetError::EOF(format!(
                    "{len} bytes at offset {at} are outside the chunk read"
                ))
            })?;
        Ok(self.bytes.slice(from..from + len))
    }
}

impl parquet::file::reader::Length for ChunkBytes {
    fn len(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }
}

impl parquet::file::reader::ChunkReader for ChunkBytes {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        let rest = parquet::file::reader::Length::len(self).saturating_sub(start);
        let len = usize::try_from(rest).unwrap_or(usize::MAX);
        Ok(bytes::Buf::reader(self.range(start, len)?))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.range(start, length)
    }
}

#[cfg(test)]
mod tests {
    //! Pruning on files written with small row groups (the store writes 262,144 rows per
    //! group; these tests need many groups per file). See: issue 5 "Selective queries".

    use std::collections::BTreeMap;
    use std::path::Path;

    use arrow::array::{Float32Array, Int32Array, StringArray};
    use arrow::datatypes::{DataType, Field};
    use arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::MemTable;
    use datafusion::physical_plan::collect;
    use datafusion::prelude::SessionContext;
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    use super::*;
    use crate::{SessionOptions, new_session};

    /// Models 0..3, each with layers 0..4 of `FILTERS_PER_LAYER` filters, rows in
    /// (layer, out, in) order; row groups of `GROUP` rows, so a layer spans 2.5 groups.
    const MODELS: i64 = 3;
    const LAYERS: i32 = 4;
    const FILTERS_PER_LAYER: i32 = 250;
    const GROUP: usize = 100;
    const GROUPS_PER_FILE: usize = 10;

    fn write_model(dir: &Path, model_id: i64) -> (PathBuf, i64, u64) {
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(GROUP))
            .build();
        write_model_with(dir, model_id, props)
    }

    fn write_model_with(dir: &Path, model_id: i64, props: WriterProperties) -> (PathBuf, i64, u64) {
        let schema = filters_schema(WeightPrecision::F32);
        let n = (LAYERS * FILTERS_PER_LAYER) as usize;
        let first_id = model_id * n as i64;
        let layer: Vec<i32> = (0..LAYERS)
            .flat_map(|l| std::iter::repeat_n(l, FILTERS_PER_LAYER as usize))
            .collect();
        let within: Vec<i32> = (0..LAYERS).flat_map(|_| 0..FILTERS_PER_LAYER).collect();
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(first_id..first_id + n as i64)),
            Arc::new(Int64Array::from_value(model_id, n)),
            Arc::new(Int32Array::from(layer)),
            Arc::new(Int32Array::from_iter_values(within.iter().map(|i| i / 10))),
            Arc::new(Int32Array::from_iter_values(within.iter().map(|i| i % 10))),
        ];
        for w in 0..9 {
            cols.push(Arc::new(Float32Array::from_iter_values(
                (0..n).map(|r| ((r * 7 + w) % 13) as f32 - 6.0 + model_id as f32),
            )));
        }
        let batch = RecordBatch::try_new(Arc::clone(&schema), cols).unwrap();
        let path = dir.join(format!("model-{model_id}.parquet"));
        let mut w =
            ArrowWriter::try_new(File::create(&path).unwrap(), schema, Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        (path, model_id, n as u64)
    }

    /// A session with `filter_columns` over the test files and a `models` table
    /// (`model_id`, `name`, `task`).
    fn session(dir: &Path, dynamic_filters: bool) -> SessionContext {
        session_with(dir, dynamic_filters, 2)
    }

    /// [`session`] with `partitions` target partitions.
    fn session_with(dir: &Path, dynamic_filters: bool, partitions: usize) -> SessionContext {
        let files = (0..MODELS).map(|m| write_model(dir, m)).collect();
        let ctx = new_session(&SessionOptions {
            target_partitions: Some(partitions),
            ..Default::default()
        })
        .unwrap();
        // Through `set`, which also switches the join/TopK/aggregate filters.
        ctx.state_ref()
            .write()
            .config_mut()
            .options_mut()
            .set(
                "datafusion.optimizer.enable_dynamic_filter_pushdown",
                &dynamic_filters.to_string(),
            )
            .unwrap();
        let table = FilterColumnsTable::from_files(WeightPrecision::F32, files);
        ctx.register_table("filter_columns", Arc::new(table))
            .unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("model_id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("task", DataType::Utf8, false),
        ]));
        let models = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(vec![0, 1, 2])),
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
                Arc::new(StringArray::from(vec!["x", "y", "x"])),
            ],
        )
        .unwrap();
        let models = MemTable::try_new(schema, vec![vec![models]]).unwrap();
        ctx.register_table("models", Arc::new(models)).unwrap();
        ctx
    }

    /// The answer and scan metrics of `sql` over the test models written with
    /// `props(true)` (PLAIN weights), then with `props(false)` (dictionary-encoded
    /// weights, decoded by parquet-rs's reader); the two answers must be equal.
    async fn plain_and_dictionary(
        sql: &str,
        props: impl Fn(bool) -> WriterProperties,
    ) -> [BTreeMap<String, usize>; 2] {
        let mut answers = Vec::new();
        let mut metrics = Vec::new();
        for plain in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let files = (0..MODELS)
                .map(|m| write_model_with(dir.path(), m, props(plain)))
                .collect();
            let ctx = new_session(&SessionOptions::default()).unwrap();
            let table = FilterColumnsTable::from_files(WeightPrecision::F32, files);
            ctx.register_table("filter_columns", Arc::new(table))
                .unwrap();
            let (answer, m) = run(&ctx, sql).await;
            answers.push(answer);
            metrics.push(m);
        }
        assert!(answers[0].lines().count() > 4, "{}", answers[0]);
        assert_eq!(answers[0], answers[1]);
        metrics.try_into().unwrap()
    }

    /// Partition readers do not take the caller's blocking threads: with one, a merge
    /// of three partitions (which needs a batch of each before it gives any) completes.
    /// On that thread the first reader would fill its channel and wait while the other
    /// two stayed queued: the query would hang, and the timeout fail the test.
    #[test]
    fn a_merge_of_more_partitions_than_blocking_threads_completes() {
        use datafusion::physical_plan::displayable;
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let rows = rt.block_on(async {
            let ctx = session_with(dir.path(), false, 3);
            ctx.state_ref()
                .write()
                .config_mut()
                .options_mut()
                .set("datafusion.execution.batch_size", "16")
                .unwrap();
            let df = ctx
                .sql("SELECT filter_id FROM filter_columns ORDER BY filter_id")
                .await
                .unwrap();
            let plan = df.create_physical_plan().await.unwrap();
            let shown = format!("{}", displayable(plan.as_ref()).indent(true));
            assert!(shown.contains("SortPreservingMergeExec"), "{shown}");
            assert!(!shown.contains("SortExec"), "{shown}");
            let run = collect(plan, ctx.task_ctx());
            tokio::time::timeout(std::time::Duration::from_secs(30), run)
                .await
                .expect("the merge hung")
                .unwrap()
        });
        let ids: Vec<i64> = rows
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect();
        let n = MODELS * i64::from(LAYERS * FILTERS_PER_LAYER);
        assert_eq!(ids, (0..n).collect::<Vec<_>>());
    }

    /// Weight chunks of several uncompressed PLAIN pages (as another tool may write
    /// them) are copied page by page and give the answer of the same rows in
    /// dictionary-encoded files (parquet-rs's reader); neither is read in place.
    #[tokio::test]
    async fn plain_weight_chunks_of_several_pages_are_copied() {
        let sql = "SELECT model_id, count(*) AS n, sum(w0) AS a, sum(w4) AS b, sum(w8) AS c \
                   FROM filter_columns GROUP BY model_id ORDER BY model_id";
        let metrics = plain_and_dictionary(sql, |plain| {
            WriterProperties::builder()
                .set_max_row_group_row_count(Some(GROUP))
                .set_dictionary_enabled(!plain)
                .set_data_page_row_count_limit(16)
                .set_write_batch_size(16)
                .build()
        })
        .await;
        for m in metrics {
            assert_eq!(m.get("weight_chunks_in_place"), Some(&0), "{m:?}");
        }
    }

    /// Chunks of one PLAIN page are used where they lie: mapped where their values are
    /// aligned in the file, else read into an aligned buffer. Files written by
    /// parquet-rs (page headers of any length) give both; the answers equal those of
    /// dictionary-encoded files, which are decoded.
    #[tokio::test]
    async fn single_page_chunks_are_used_mapped_or_read_in_place() {
        let sql = "SELECT model_id, count(*), sum(w0), sum(w1), sum(w2), sum(w3), sum(w4), \
                   sum(w5), sum(w6), sum(w7), sum(w8) \
                   FROM filter_columns GROUP BY model_id ORDER BY model_id";
        let [plain, dictionary] = plain_and_dictionary(sql, |plain| {
            // Compressed ids move the weight chunks to offsets of any kind.
            WriterProperties::builder()
                .set_max_row_group_row_count(Some(GROUP))
                .set_dictionary_enabled(!plain)
                .set_column_compression(
                    parquet::schema::types::ColumnPath::from("filter_id"),
                    Compression::SNAPPY,
                )
                .build()
        })
        .await;
        let chunks = 9 * MODELS as usize * GROUPS_PER_FILE;
        assert_eq!(plain["weight_chunks_in_place"], chunks, "{plain:?}");
        let mapped = plain["weight_chunks_mapped"];
        assert!(mapped > 0 && mapped < chunks, "{plain:?}");
        assert_eq!(dictionary["weight_chunks_in_place"], 0, "{dictionary:?}");
    }

    /// Id chunks of one DELTA_BINARY_PACKED page (the form filterdb writes; here
    /// zstd-compressed, v2 pages) are decoded a batch at a time and give the answers of
    /// parquet-rs's reader on the same rows in other forms (PLAIN, and DELTA in several
    /// pages), over 1 to 4 partitions: layer splits start inside row groups, so the
    /// decoders skip rows, and queries without `layer_idx` decode it for the layer
    /// starts.
    #[tokio::test]
    async fn delta_id_chunks_are_decoded_a_batch_at_a_time() {
        use parquet::file::properties::WriterVersion;
        use parquet::schema::types::ColumnPath;
        let form = |delta: bool, pages: usize| {
            let mut b = WriterProperties::builder()
                .set_max_row_group_row_count(Some(GROUP))
                .set_writer_version(WriterVersion::PARQUET_2_0)
                .set_data_page_row_count_limit(pages)
                .set_write_batch_size(pages);
            for c in ID_COLUMNS {
                if delta {
                    b = b
                        .set_column_encoding(ColumnPath::from(c), Encoding::DELTA_BINARY_PACKED)
                        .set_column_dictionary_enabled(ColumnPath::from(c), false)
                        .set_column_compression(
                            ColumnPath::from(c),
                            Compression::ZSTD(Default::default()),
                        );
                }
            }
            b.build()
        };
        let queries = [
            "SELECT model_id, layer_idx, count(*) AS n, sum(filter_id) AS f, \
             sum(out_channel) AS o, sum(in_channel * (out_channel + 1)) AS i, \
             max(in_channel) AS m FROM filter_columns \
             GROUP BY model_id, layer_idx ORDER BY model_id, layer_idx",
            "SELECT model_id, count(*) AS n, sum(filter_id) AS f, sum(in_channel) AS i \
             FROM filter_columns GROUP BY model_id ORDER BY model_id",
            "SELECT filter_id, layer_idx, out_channel, in_channel FROM filter_columns \
             WHERE layer_idx = 2 AND out_channel = 7 ORDER BY filter_id",
        ];
        let chunks_per_file = ID_COLUMNS.len() * GROUPS_PER_FILE;
        for (delta, pages, decoded) in [(true, 20_000, true), (true, 16, false), (false, 16, false)]
        {
            let dir = tempfile::tempdir().unwrap();
            let files: Vec<_> = (0..MODELS)
                .map(|m| write_model_with(dir.path(), m, form(delta, pages)))
                .collect();
            for sql in queries {
                let mut answers = Vec::new();
                for partitions in 1..=4 {
                    let ctx = new_session(&SessionOptions {
                        target_partitions: Some(partitions),
                        ..Default::default()
                    })
                    .unwrap();
                    let table = FilterColumnsTable::from_files(WeightPrecision::F32, files.clone());
                    ctx.register_table("filter_columns", Arc::new(table))
                        .unwrap();
                    let (answer, m) = run(&ctx, sql).await;
                    let n = m.get("id_chunks_decoded").copied().unwrap_or(0);
                    if decoded && sql.contains("GROUP BY model_id, layer_idx") {
                        // Every chunk, and those of a row group a layer split cuts once
                        // more (both sides read it).
                        let all = MODELS as usize * chunks_per_file;
                        assert!(n % ID_COLUMNS.len() == 0 && n >= all, "{partitions}: {m:?}");
                        if partitions == 1 {
                            assert_eq!(n, all, "{m:?}");
                        }
                    } else {
                        assert_eq!(n > 0, decoded, "{delta} {pages} {partitions}: {m:?}");
                    }
                    answers.push(answer);
                }
                assert!(answers[0].lines().count() > 4, "{}", answers[0]);
                for a in &answers[1..] {
                    assert_eq!(a, &answers[0], "{sql}");
                }
                let plain = tempfile::tempdir().unwrap();
                let reference: Vec<_> = (0..MODELS).map(|m| write_model(plain.path(), m)).collect();
                let ctx = new_session(&SessionOptions::default()).unwrap();
                let table = FilterColumnsTable::from_files(WeightPrecision::F32, reference);
                ctx.register_table("filter_columns", Arc::new(table))
                    .unwrap();
                assert_eq!(run(&ctx, sql).await.0, answers[0], "{sql}");
            }
        }
    }

    /// The answer of `sql` (pretty-printed) and the summed metrics of its scan.
    async fn run(ctx: &SessionContext, sql: &str) -> (String, BTreeMap<String, usize>) {
        let plan = ctx
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let batches = collect(Arc::clone(&plan), ctx.task_ctx()).await.unwrap();
        let answer = pretty_format_batches(&batches).unwrap().to_string();
        let mut stack = vec![plan];
        let mut metrics = BTreeMap::new();
        while let Some(p) = stack.pop() {
            if p.name() == "FilterScanExec" {
                for m in p.metrics().unwrap().aggregate_by_name().iter() {
                    *metrics.entry(m.value().name().to_string()).or_default() +=
                        m.value().as_usize();
                }
            }
            stack.extend(p.children().into_iter().cloned());
        }
        (answer, metrics)
    }

    const AGG: &str =
        "SELECT count(*), sum(filter_id), sum(CAST(w4 AS DOUBLE)) FROM filter_columns";

    /// Each condition prunes row groups, and its answer equals that of the same
    /// condition made unprunable: `OR w0 < -1e30` (never true) reads a weight column,
    /// so the scan is not given the condition.
    #[tokio::test]
    async fn id_conditions_prune_row_groups() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = session(dir.path(), true);
        let all = MODELS as usize * GROUPS_PER_FILE;
        // (condition, row groups that must be read): a layer is rows 250 l .. 250 l + 249.
        let cases = [
            ("model_id = 1 AND layer_idx = 2", 3),
            ("layer_idx = 0", 3 * 3),
            ("layer_idx BETWEEN 1 AND 2", 3 * 6),
            ("layer_idx IN (0, 3)", 3 * 6),
            ("filter_id < 150", 2),
            // out channels 20..24 end each layer: groups 2, 4, 7 and 9
            ("model_id = 2 AND out_channel >= 20", 4),
            ("layer_idx = 9", 0),
        ];
        for (cond, groups) in cases {
            let (got, m) = run(&ctx, &format!("{AGG} WHERE {cond}")).await;
            let unprunable = format!("({cond}) OR w0 < -1e30");
            let (want, full) = run(&ctx, &format!("{AGG} WHERE {unprunable}")).await;
            assert_eq!(got, want, "{cond}");
            assert_eq!(full["row_groups_scanned"], all, "{unprunable}");
            assert_eq!(full["row_groups_pruned"], 0, "{unprunable}");
            assert_eq!(m["row_groups_scanned"], groups, "{cond}: {m:?}");
            assert!(m["bytes_scanned"] < full["bytes_scanned"], "{cond}: {m:?}");
            // Grouped by model and layer (range partitioning on model_id, sorted input),
            // over what is left after pruning.
            let grouped = |w: &str| {
                format!(
                    "SELECT model_id, layer_idx, count(*), sum(filter_id) FROM filter_columns \
                     WHERE {w} GROUP BY model_id, layer_idx ORDER BY model_id, layer_idx"
                )
            };
            assert_eq!(
                run(&ctx, &grouped(cond)).await.0,
                run(&ctx, &grouped(&unprunable)).await.0,
                "{cond}"
            );
            let pruned_files =
                MODELS as usize - groups.div_ceil(GROUPS_PER_FILE).min(MODELS as usize);
            if cond.starts_with("model_id") || groups == 0 {
                assert_eq!(m["files_pruned"], pruned_files, "{cond}: {m:?}");
            }
        }
    }

    /// A join with `models` reads only the row groups of the matching models: the hash
    /// join's dynamic filter reaches the scan. Without dynamic filters, the same answer
    /// from every row group.
    #[tokio::test]
    async fn join_filters_prune_at_execution() {
        let dir = tempfile::tempdir().unwrap();
        let on = session(dir.path(), true);
        let off = session(dir.path(), false);
        let all = MODELS as usize * GROUPS_PER_FILE;
        for (cond, models) in [("m.name = 'b'", 1), ("m.task = 'x'", 2)] {
            let sql = format!(
                "SELECT count(*), sum(f.filter_id), sum(CAST(f.w0 AS DOUBLE)) \
                 FROM filter_columns f JOIN models m ON f.model_id = m.model_id WHERE {cond}"
            );
            let (got, m) = run(&on, &sql).await;
            let (want, full) = run(&off, &sql).await;
            assert_eq!(got, want, "{cond}");
            assert_eq!(full["row_groups_scanned"], all, "{cond}: {full:?}");
            assert_eq!(
                m["row_groups_scanned"],
                models * GROUPS_PER_FILE,
                "{cond}: {m:?}"
            );
            assert_eq!(
                m["row_groups_pruned_dynamic"],
                (MODELS as usize - models) * GROUPS_PER_FILE,
                "{cond}: {m:?}"
            );
            assert_eq!(
                m["files_pruned_dynamic"],
                MODELS as usize - models,
                "{cond}: {m:?}"
            );
        }
        // No model matches: the join never polls the scan, which has not started reading.
        let (_, m) = run(
            &on,
            "SELECT count(*) FROM filter_columns f JOIN models m ON f.model_id = m.model_id \
             WHERE m.name = 'none'",
        )
        .await;
        assert_eq!(m["row_groups_scanned"], 0, "{m:?}");
        // Joined on (model_id, layer_idx): the filter's bounds and membership on both.
        let sql = "SELECT count(*) FROM filter_columns f \
            JOIN (SELECT model_id, 2 AS layer_idx FROM models WHERE name = 'c') l \
            ON f.model_id = l.model_id AND f.layer_idx = l.layer_idx";
        let (got, m) = run(&on, sql).await;
        let (want, _) = run(&off, sql).await;
        assert_eq!(got, want);
        assert_eq!(m["row_groups_scanned"], 3, "{m:?}");
    }

    /// The plan shows what was pruned and the filter pushed into the scan.
    #[tokio::test]
    async fn plan_shows_pruning() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = session(dir.path(), true);
        let (plan, _) = run(
            &ctx,
            "EXPLAIN ANALYZE SELECT count(*) FROM filter_columns f JOIN models m \
             ON f.model_id = m.model_id WHERE m.name = 'b' AND f.layer_idx = 3",
        )
        .await;
        assert!(plan.contains("pruned=[files=0, row_groups=21]"), "{plan}");
        assert!(
            plan.contains("predicate=DynamicFilter [ model_id@0 >= 1 AND model_id@0 <= 1"),
            "{plan}"
        );
        assert!(plan.contains("row_groups_pruned_dynamic=6"), "{plan}");
        assert!(plan.contains("row_groups_scanned=3"), "{plan}");
    }

    /// Three equal models do not share out evenly to 2, 4, 5 or 6 partitions by whole
    /// files, so the scan cuts at layer starts, some inside a row group (4 partitions:
    /// layer 3 of model 0 starts at row 750, in the row group of rows 700..799). Every
    /// row is read by exactly one partition, the grouped aggregate needs no repartition
    /// (the scan declares range partitioning on `(model_id, layer_idx)`), and the
    /// answer is that of one partition.
    #[tokio::test]
    async fn layer_splits_read_each_row_once() {
        let sql = "SELECT model_id, layer_idx, count(*) AS n, sum(filter_id) AS ids, \
                   sum(CAST(w4 AS DOUBLE)) AS w, min(out_channel) AS o FROM filter_columns \
                   GROUP BY model_id, layer_idx ORDER BY model_id, layer_idx";
        let dir = tempfile::tempdir().unwrap();
        let (one, _) = run(&session_with(dir.path(), true, 1), sql).await;
        assert_eq!(
            one.lines().count(),
            4 + (MODELS * LAYERS as i64) as usize,
            "{one}"
        );
        let rows = MODELS as usize * (LAYERS * FILTERS_PER_LAYER) as usize;
        for partitions in 2..=6 {
            let ctx = session_with(dir.path(), true, partitions);
            let (answer, metrics) = run(&ctx, sql).await;
            assert_eq!(answer, one, "{partitions} partitions");
            assert_eq!(metrics["output_rows"], rows, "{partitions} partitions");
            let (plan, _) = run(&ctx, &format!("EXPLAIN {sql}")).await;
            assert!(
                !plan.contains("RepartitionExec"),
                "{partitions} partitions: {plan}"
            );
            assert!(
                plan.contains(&format!("partitions={partitions}")),
                "{partitions} partitions: {plan}"
            );
        }
        // A row group cut by a layer split is read by both sides, counted once.
        let (_, metrics) = run(&session_with(dir.path(), true, 4), sql).await;
        assert_eq!(
            metrics["row_groups_scanned"],
            MODELS as usize * GROUPS_PER_FILE
        );
    }

    /// The cuts of a layer split: at layer starts nearest the equal shares, estimated
    /// inside a row group by spreading its layers evenly.
    #[test]
    fn layer_split_cuts_at_layer_starts() {
        let dir = tempfile::tempdir().unwrap();
        let units: Vec<Unit> = (0..MODELS)
            .flat_map(|m| {
                let (path, model_id, _) = write_model(dir.path(), m);
                let f = File::open(&path).unwrap();
                let meta = Arc::new(ParquetMetaDataReader::new().parse_and_finish(&f).unwrap());
                let arrow_meta =
                    ArrowReaderMetadata::try_new(Arc::clone(&meta), ArrowReaderOptions::new())
                        .unwrap();
                let file = Arc::new(OpenFile {
                    path,
                    model_id,
                    meta,
                    arrow_meta,
                });
                let groups: Vec<usize> = (0..GROUPS_PER_FILE).collect();
                let layers = RowGroupStats::new(&file, &groups).layer_ranges().unwrap();
                groups
                    .into_iter()
                    .map(|rg| Unit {
                        file: Arc::clone(&file),
                        row_group: rg,
                        rows: GROUP,
                        first_of_file: rg == 0,
                        layers: layers[rg],
                        from: None,
                        to: None,
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let (parts, layout) = split(units.clone(), 3, false);
        assert!(matches!(layout, Layout::ByModel), "{layout:?}");
        assert_eq!(parts.len(), 3);
        // 3 models over 4 partitions: one partition of 1000 rows is 1.33x a share of
        // 750, so even whole_models takes the layer split
        assert!(matches!(
            split(units.clone(), 4, true).1,
            Layout::ByLayer(_)
        ));
        // Two models of 1000 and 855 rows (one layer per row group, made up) over 2
        // partitions: whole models are 1.08x an equal share (927.5 rows), a cut at the
        // layer start at row 900 is better balanced (900 / 955). Only a projection without
        // layer_idx takes whole models, and only within 1.10x.
        let made_up = |model: usize, groups: i32, rows: usize| -> Vec<Unit> {
            (0..groups)
                .map(|l| Unit {
                    rows,
                    layers: Some((l, l)),
                    row_group: l as usize,
                    first_of_file: l == 0,
                    ..units[model * GROUPS_PER_FILE].clone()
                })
                .collect()
        };
        let two: Vec<Unit> = made_up(0, 10, 100)
            .into_iter()
            .chain(made_up(1, 9, 95))
            .collect();
        assert!(matches!(split(two.clone(), 2, false).1, Layout::ByLayer(_)));
        let (whole, layout) = split(two, 2, true);
        assert!(matches!(layout, Layout::ByModel), "{layout:?}");
        assert_eq!(whole.iter().map(Vec::len).collect::<Vec<_>>(), vec![10, 9]);
        // 1000 and 600 rows: whole models would be 1.25x, so a layer split either way.
        let uneven: Vec<Unit> = made_up(0, 10, 100)
            .into_iter()
            .chain(made_up(1, 6, 100))
            .collect();
        assert!(matches!(split(uneven, 2, true).1, Layout::ByLayer(_)));
        let (parts, layout) = split(units.clone(), 4, false);
        let Layout::ByLayer(starts) = layout else {
            panic!("{layout:?}")
        };
        // shares of 750 rows: layer 3 of model 0, layer 2 of model 1, layer 1 of model 2
        assert_eq!(starts, vec![(0, 3), (1, 2), (2, 1)]);
        // Cut row groups: (model, row group, from, to). Rows 700..799 of model 0 hold
        // layers 2 and 3; rows 200..299 of model 2 layers 0 and 1. Model 1's layer 2
        // starts a row group (row 500), so that cut reads no row group twice.
        let cut = |p: usize| -> Vec<(i64, usize, Option<Key>, Option<Key>)> {
            parts[p]
                .iter()
                .filter(|u| !u.whole())
                .map(|u| (u.file.model_id, u.row_group, u.from, u.to))
                .collect()
        };
        assert_eq!(cut(0), vec![(0, 7, None, Some((0, 3)))]);
        assert_eq!(cut(1), vec![(0, 7, Some((0, 3)), None)]);
        assert_eq!(cut(2), vec![(2, 2, None, Some((2, 1)))]);
        assert_eq!(cut(3), vec![(2, 2, Some((2, 1)), None)]);
    }
}
