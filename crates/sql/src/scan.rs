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
//! exact without reading a footer. Work is split into contiguous runs of row groups of
//! about equal size, one per target partition; batches never span a row group and start
//! at fixed offsets inside it (multiples of the batch size), so the same rows form the
//! same batches whatever the number of partitions.

use std::fmt;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Int64Array, PrimitiveArray, RecordBatch, RecordBatchOptions,
};
use arrow::buffer::{MutableBuffer, ScalarBuffer};
use arrow::compute::SortOptions;
use arrow::datatypes::{Float16Type, Float32Type, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
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
    SplitPoint,
};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning,
    PlanProperties, ReplaceChildrenOptions, SendableRecordBatchStream, StatisticsArgs,
};
use filterdb_store::{Precision as WeightPrecision, Snapshot, Store, filters_schema};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::basic::{Compression, Encoding};
use parquet::column::page::{Page, PageReader};
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use parquet::file::serialized_reader::SerializedPageReader;

/// Index of the first weight column (`w0`) in the `filters` schema.
const FIRST_WEIGHT: usize = 5;

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

/// Whether `e` reads no column but `model_id` (then it can prune files).
fn only_model_id(e: &Expr) -> bool {
    let mut cols = std::collections::HashSet::new();
    expr_to_columns(e, &mut cols).is_ok()
        && !cols.is_empty()
        && cols.iter().all(|c| c.name == "model_id")
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
        // Inexact: files are pruned, DataFusion still filters the rows.
        Ok(filters
            .iter()
            .map(|f| {
                if only_model_id(f) {
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
            for rg in 0..shared.meta.num_row_groups() {
                let rows = shared.meta.row_group(rg).num_rows() as usize;
                if rows > 0 {
                    units.push(Unit {
                        file: Arc::clone(&shared),
                        row_group: rg,
                        rows,
                    });
                }
            }
        }
        let target = state.config().target_partitions().max(1);
        let (partitions, by_model) = split(units, target);
        Ok(Arc::new(FilterScanExec::new(
            schema,
            projection,
            partitions,
            by_model,
            state.config().batch_size(),
            limit,
            self.precision,
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

/// A file with its parsed footer.
#[derive(Debug)]
struct OpenFile {
    path: PathBuf,
    model_id: i64,
    meta: Arc<ParquetMetaData>,
    arrow_meta: ArrowReaderMetadata,
}

/// One row group to read.
#[derive(Debug, Clone)]
struct Unit {
    file: Arc<OpenFile>,
    row_group: usize,
    rows: usize,
}

/// Cut `units` into at most `n` contiguous runs of about equal row counts: whole files
/// per partition when that is balanced (no partition over 1.25x its share; then each
/// model lives in one partition: `true`), else row groups (`false`).
fn split(units: Vec<Unit>, n: usize) -> (Vec<Vec<Unit>>, bool) {
    let total: usize = units.iter().map(|u| u.rows).sum();
    let by_file = split_even(units.clone(), n, true);
    let largest = by_file
        .iter()
        .map(|p| p.iter().map(|u| u.rows).sum::<usize>())
        .max()
        .unwrap_or(0);
    if by_file.len() > 1 && largest * 4 <= total.div_ceil(by_file.len()) * 5 {
        return (by_file, true);
    }
    (split_even(units, n, false), false)
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

/// The partitioning to declare: when every model lives in one partition and `model_id`
/// is projected, range partitioning on `model_id` (split points: the first model of each
/// partition after the first), so aggregates grouped by model or by layer run in one
/// stage without repartitioning (DataFusion treats a range split as co-partitioned only
/// with the same split, so joins stay correct); otherwise unknown.
fn partitioning(schema: &SchemaRef, partitions: &[Vec<Unit>], by_model: bool) -> Partitioning {
    let n = partitions.len();
    let Ok(idx) = schema.index_of("model_id") else {
        return Partitioning::UnknownPartitioning(n);
    };
    if !by_model || n < 2 {
        return Partitioning::UnknownPartitioning(n);
    }
    let key = PhysicalSortExpr::new(
        Arc::new(Column::new("model_id", idx)),
        SortOptions {
            descending: false,
            nulls_first: false,
        },
    );
    let splits: Vec<SplitPoint> = partitions[1..]
        .iter()
        .map(|p| SplitPoint::new(vec![ScalarValue::Int64(Some(p[0].file.model_id))]))
        .collect();
    match LexOrdering::new([key]).map(|o| RangePartitioning::try_new(o, splits)) {
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
    let key = |name: &str| -> Option<PhysicalSortExpr> {
        let idx = schema.index_of(name).ok()?;
        Some(PhysicalSortExpr::new(
            Arc::new(Column::new(name, idx)),
            SortOptions {
                descending: false,
                nulls_first: false,
            },
        ))
    };
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
    batch_size: usize,
    limit: Option<usize>,
    precision: WeightPrecision,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl FilterScanExec {
    fn new(
        schema: SchemaRef,
        projection: Vec<usize>,
        partitions: Vec<Vec<Unit>>,
        by_model: bool,
        batch_size: usize,
        limit: Option<usize>,
        precision: WeightPrecision,
    ) -> FilterScanExec {
        let properties = PlanProperties::new(
            equivalence(&schema),
            partitioning(&schema, &partitions, by_model),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        FilterScanExec {
            schema,
            projection,
            partitions,
            batch_size: batch_size.max(1),
            limit,
            precision,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    fn rows(&self, partition: Option<usize>) -> usize {
        let parts: &[Vec<Unit>] = match partition {
            Some(p) => std::slice::from_ref(&self.partitions[p]),
            None => &self.partitions,
        };
        let rows: usize = parts.iter().flatten().map(|u| u.rows).sum();
        self.limit.map_or(rows, |l| rows.min(l))
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
            DisplayFormatType::Default | DisplayFormatType::Verbose => write!(
                f,
                "FilterScanExec: files={}, row_groups={groups}, partitions={}, projection=[{}]{}",
                files.len(),
                self.partitions.len(),
                names.join(", "),
                self.limit
                    .map(|l| format!(", limit={l}"))
                    .unwrap_or_default()
            ),
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
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
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
        let reader = PartitionReader {
            schema: Arc::clone(&self.schema),
            projection: self.projection.clone(),
            units: units.clone(),
            batch_size: self.batch_size,
            limit: self.limit,
            precision: self.precision,
            bytes: MetricBuilder::new(&self.metrics).counter("bytes_scanned", partition),
            row_groups: MetricBuilder::new(&self.metrics).counter("row_groups_scanned", partition),
            rows: MetricBuilder::new(&self.metrics).output_rows(partition),
        };
        // Two batches in flight per partition: memory stays at about one row group.
        let mut builder = RecordBatchReceiverStreamBuilder::new(Arc::clone(&self.schema), 2);
        let tx = builder.tx();
        builder.spawn_blocking(move || reader.run(|b| tx.blocking_send(Ok(b)).is_ok()));
        Ok(builder.build())
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn statistics_from_inputs(
        &self,
        _input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        let rows = self.rows(args.partition());
        Ok(Arc::new(
            Statistics::new_unknown(&self.schema).with_num_rows(Precision::Exact(rows)),
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
    bytes: Count,
    row_groups: Count,
    rows: Count,
}

impl PartitionReader {
    /// Read every unit, handing batches to `send` (false: the consumer is gone).
    fn run(self, mut send: impl FnMut(RecordBatch) -> bool) -> Result<()> {
        let mut left = self.limit.unwrap_or(usize::MAX);
        let mut open: Option<(PathBuf, File)> = None;
        for u in &self.units {
            if left == 0 {
                break;
            }
            if open.as_ref().is_none_or(|(p, _)| *p != u.file.path) {
                let f = File::open(&u.file.path).map_err(|e| {
                    exec_datafusion_err!("opening filter file {}: {e}", u.file.path.display())
                })?;
                open = Some((u.file.path.clone(), f));
            }
            let (_, file) = open.as_ref().expect("opened above");
            let columns = self.read_row_group(file, u)?;
            self.row_groups.add(1);
            let mut offset = 0;
            while offset < u.rows && left > 0 {
                let len = self.batch_size.min(u.rows - offset).min(left);
                let cols: Vec<ArrayRef> = columns.iter().map(|c| c.slice(offset, len)).collect();
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
    fn read_row_group(&self, file: &File, u: &Unit) -> Result<Vec<ArrayRef>> {
        let rg = u.file.meta.row_group(u.row_group);
        let mut columns: Vec<Option<ArrayRef>> = vec![None; self.projection.len()];
        let mut slow: Vec<usize> = Vec::new();
        for (k, &c) in self.projection.iter().enumerate() {
            if c >= FIRST_WEIGHT {
                let chunk = rg.column(c);
                if let Some(a) = self.read_plain_weights(file, u, c)? {
                    self.bytes.add(chunk.compressed_size() as usize);
                    columns[k] = Some(a);
                    continue;
                }
            }
            slow.push(k);
        }
        if !slow.is_empty() {
            let leaves: Vec<usize> = slow.iter().map(|&k| self.projection[k]).collect();
            for &c in &leaves {
                self.bytes.add(rg.column(c).compressed_size() as usize);
            }
            let mask = ProjectionMask::leaves(
                u.file.meta.file_metadata().schema_descr(),
                leaves.iter().copied(),
            );
            let handle = file.try_clone().map_err(|e| {
                exec_datafusion_err!("reading filter file {}: {e}", u.file.path.display())
            })?;
            let mut reader = ParquetRecordBatchReaderBuilder::new_with_metadata(
                handle,
                u.file.arrow_meta.clone(),
            )
            .with_row_groups(vec![u.row_group])
            .with_projection(mask)
            .with_batch_size(u.rows)
            .build()?;
            let batch = reader.next().transpose()?.ok_or_else(|| {
                exec_datafusion_err!(
                    "{}: row group {} is empty",
                    u.file.path.display(),
                    u.row_group
                )
            })?;
            // The reader returns the leaves in file order, which is the order of `leaves`
            // sorted; map them back by name.
            for &k in &slow {
                let name = self.schema.field(k).name();
                let col = batch.column_by_name(name).ok_or_else(|| {
                    exec_datafusion_err!("{}: no column {name}", u.file.path.display())
                })?;
                columns[k] = Some(Arc::clone(col));
            }
        }
        Ok(columns
            .into_iter()
            .map(|c| c.expect("every column read"))
            .collect())
    }

    /// A weight column chunk written as filterdb writes it (uncompressed PLAIN data pages
    /// without levels), copied page by page into one aligned buffer; `None` when the
    /// chunk has any other form.
    fn read_plain_weights(&self, file: &File, u: &Unit, c: usize) -> Result<Option<ArrayRef>> {
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
        let handle = file.try_clone().map_err(|e| {
            exec_datafusion_err!("reading filter file {}: {e}", u.file.path.display())
        })?;
        let mut pages = SerializedPageReader::new(Arc::new(handle), chunk, u.rows, None)?;
        let mut buf = MutableBuffer::with_capacity(u.rows * width);
        while let Some(page) = pages.get_next_page()? {
            let (data, encoding, values) = match page {
                Page::DataPage {
                    buf,
                    num_values,
                    encoding,
                    ..
                } => (buf, encoding, num_values),
                Page::DataPageV2 {
                    buf,
                    num_values,
                    encoding,
                    num_nulls: 0,
                    def_levels_byte_len: 0,
                    rep_levels_byte_len: 0,
                    ..
                } => (buf, encoding, num_values),
                _ => return Ok(None),
            };
            if encoding != Encoding::PLAIN || data.len() != values as usize * width {
                return Ok(None);
            }
            buf.extend_from_slice(&data);
        }
        if buf.len() != u.rows * width {
            return Ok(None);
        }
        let array: ArrayRef = match self.precision {
            WeightPrecision::F16 => Arc::new(PrimitiveArray::<Float16Type>::new(
                ScalarBuffer::new(buf.into(), 0, u.rows),
                None,
            )),
            WeightPrecision::F32 => Arc::new(PrimitiveArray::<Float32Type>::new(
                ScalarBuffer::new(buf.into(), 0, u.rows),
                None,
            )),
        };
        Ok(Some(array))
    }
}
