//! Writing one model's three Parquet files into the staging area.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, PrimitiveArray, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow::buffer::ScalarBuffer;
use arrow::datatypes::{ArrowPrimitiveType, Float16Type, Float32Type, SchemaRef};
use half::f16;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
use parquet::schema::types::ColumnPath;

use crate::convert::{ConvertTo, LayerScan, convert_any};
use crate::error::{IoContext, Result, StoreError};
use crate::input::{KernelData, ModelInput};
use crate::schema::{Precision, WEIGHT_COLUMNS, filters_schema, layers_schema, models_schema};

/// Rows per Parquet row group of a `filters` file: small enough that a layer-selective
/// query skips most of a big model, large enough to amortise per-group overhead.
pub const FILTERS_ROW_GROUP: usize = 262_144;

/// Summary of one written model, used for the log entry.
#[derive(Debug, Clone)]
pub(crate) struct Written {
    pub n_layers: u64,
    pub n_filters: u64,
    pub bytes: u64,
    pub report: Vec<String>,
}

/// Options for [`crate::StoreWriter::stage`].
#[derive(Debug, Clone, Copy, Default)]
pub struct StageOptions {
    /// Store NaN / infinite weights (and float16 overflows) instead of rejecting the model.
    pub allow_nonfinite: bool,
}

fn props_filters() -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_writer_version(WriterVersion::PARQUET_2_0)
        .set_max_row_group_row_count(Some(FILTERS_ROW_GROUP))
        .set_data_page_row_count_limit(FILTERS_ROW_GROUP)
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default()))
        .set_dictionary_enabled(false)
        .set_statistics_enabled(EnabledStatistics::Chunk);
    for c in ["filter_id", "layer_idx", "out_channel", "in_channel"] {
        b = b.set_column_encoding(ColumnPath::from(c), Encoding::DELTA_BINARY_PACKED);
    }
    for w in WEIGHT_COLUMNS {
        // Float weights hardly compress (measured 1.08x with zstd); plain and
        // uncompressed decodes fastest. Min/max of a weight column prunes nothing.
        let p = ColumnPath::from(w);
        b = b
            .set_column_compression(p.clone(), Compression::UNCOMPRESSED)
            .set_column_encoding(p.clone(), Encoding::PLAIN)
            .set_column_statistics_enabled(p, EnabledStatistics::None);
    }
    b.build()
}

fn props_small() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .build()
}

fn write_batches(
    path: &Path,
    schema: SchemaRef,
    props: WriterProperties,
    batches: &[RecordBatch],
) -> Result<u64> {
    let file = File::create(path).ctx("creating", path)?;
    let perr = |source| StoreError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let mut w = ArrowWriter::try_new(file, schema, Some(props)).map_err(perr)?;
    for b in batches {
        w.write(b).map_err(perr)?;
    }
    let file = w.into_inner().map_err(perr)?;
    file.sync_all().ctx("syncing", path)?;
    Ok(file.metadata().ctx("reading size of", path)?.len())
}

/// Per-layer values computed while writing filters.
struct LayerStats {
    max_abs: f64,
}

/// Converts and writes `filters`; returns per-layer stats.
fn write_filters(
    path: &Path,
    precision: Precision,
    model: &ModelInput<'_>,
    model_id: i64,
    first_filter_id: i64,
    opts: &StageOptions,
) -> Result<(Vec<LayerStats>, u64)> {
    let schema = filters_schema(precision);
    let file = File::create(path).ctx("creating", path)?;
    let perr = |source| StoreError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let mut writer =
        ArrowWriter::try_new(file, Arc::clone(&schema), Some(props_filters())).map_err(perr)?;
    let mut stats = Vec::with_capacity(model.layers.len());
    let mut next_id = first_filter_id;
    for (layer_idx, layer) in model.layers.iter().enumerate() {
        let (out, inp) = (layer.out_channels, layer.in_channels);
        let n = out * inp;
        check_size(
            &model.meta.name,
            &layer.layer_name,
            &layer.weights,
            out,
            inp,
        )?;
        let (weights, scan) = match precision {
            Precision::F16 => convert_to_arrays::<Float16Type>(&layer.weights, out, inp),
            Precision::F32 => convert_to_arrays::<Float32Type>(&layer.weights, out, inp),
        };
        if !opts.allow_nonfinite {
            if let Some((filter, value)) = scan.first_nonfinite {
                return Err(StoreError::NonFinite {
                    model: model.meta.name.clone(),
                    tensor: layer.layer_name.clone(),
                    filter,
                    value: value.to_string(),
                    hint: "",
                });
            }
            if precision == Precision::F16 && scan.max_abs > f64::from(f16::MAX) {
                return Err(StoreError::NonFinite {
                    model: model.meta.name.clone(),
                    tensor: layer.layer_name.clone(),
                    filter: 0,
                    value: scan.max_abs.to_string(),
                    hint: " (larger than float16's 65504: use an f32 store)",
                });
            }
        }
        let layer_i32 = i32::try_from(layer_idx).unwrap_or(i32::MAX);
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(14);
        columns.push(Arc::new(Int64Array::from_iter_values(
            next_id..next_id + n as i64,
        )));
        columns.push(Arc::new(Int64Array::from_value(model_id, n)));
        columns.push(Arc::new(Int32Array::from_value(layer_i32, n)));
        columns.push(Arc::new(Int32Array::from_iter_values(
            (0..out).flat_map(|o| std::iter::repeat_n(o as i32, inp)),
        )));
        columns.push(Arc::new(Int32Array::from_iter_values(
            (0..out).flat_map(|_| 0..inp as i32),
        )));
        columns.extend(weights);
        let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
        writer.write(&batch).map_err(perr)?;
        next_id += n as i64;
        let stored_max = match precision {
            Precision::F16 => f64::from(f16::from_f64(scan.max_abs)),
            Precision::F32 => f64::from(scan.max_abs as f32),
        };
        stats.push(LayerStats {
            max_abs: stored_max,
        });
    }
    let file = writer.into_inner().map_err(perr)?;
    file.sync_all().ctx("syncing", path)?;
    let bytes = file.metadata().ctx("reading size of", path)?.len();
    Ok((stats, bytes))
}

/// Convert one layer's tensor into the nine weight arrays of element type `T`.
fn convert_to_arrays<T>(w: &KernelData<'_>, out: usize, inp: usize) -> (Vec<ArrayRef>, LayerScan)
where
    T: ArrowPrimitiveType,
    f32: ConvertTo<T::Native>,
    f64: ConvertTo<T::Native>,
    f16: ConvertTo<T::Native>,
    half::bf16: ConvertTo<T::Native>,
{
    let mut cols: [Vec<T::Native>; 9] = Default::default();
    let scan = convert_any(w.dtype, &w.bytes, w.layout, out, inp, &mut cols);
    let arrays = cols
        .into_iter()
        .map(|c| Arc::new(PrimitiveArray::<T>::new(ScalarBuffer::from(c), None)) as ArrayRef)
        .collect();
    (arrays, scan)
}

fn check_size(model: &str, tensor: &str, w: &KernelData<'_>, out: usize, inp: usize) -> Result<()> {
    let expected = out * inp * 9 * w.dtype.size();
    if w.bytes.len() != expected {
        return Err(StoreError::BadTensorSize {
            model: model.to_string(),
            tensor: tensor.to_string(),
            expected,
            found: w.bytes.len(),
            out,
            inp,
            dtype: w.dtype.name(),
        });
    }
    Ok(())
}

fn opt_str(v: &Option<String>) -> ArrayRef {
    Arc::new(StringArray::from(vec![v.as_deref()]))
}
fn one_str(v: &str) -> ArrayRef {
    Arc::new(StringArray::from(vec![v]))
}
fn one_i64(v: i64) -> ArrayRef {
    Arc::new(Int64Array::from(vec![v]))
}

/// Write all three files of one model into `dir`; names are `models.parquet` etc.
pub(crate) fn write_model(
    dir: &Path,
    precision: Precision,
    model: &ModelInput<'_>,
    model_id: i64,
    first_filter_id: i64,
    ingested_at_ms: i64,
    opts: &StageOptions,
) -> Result<Written> {
    if model.layers.is_empty() {
        return Err(StoreError::EmptyModel {
            model: model.meta.name.clone(),
        });
    }
    let (stats, filters_bytes) = write_filters(
        &dir.join("filters.parquet"),
        precision,
        model,
        model_id,
        first_filter_id,
        opts,
    )?;
    let mut report = model.meta.report.clone();

    // layers
    let n_layers = model.layers.len();
    let mut first = first_filter_id;
    let mut firsts = Vec::with_capacity(n_layers);
    for l in &model.layers {
        firsts.push(first);
        first += l.n_filters() as i64;
    }
    for (l, s) in model.layers.iter().zip(&stats) {
        if s.max_abs == 0.0 {
            report.push(format!("warning: layer {} is all zero", l.layer_name));
        }
    }
    let layers = RecordBatch::try_new(
        layers_schema(),
        vec![
            Arc::new(Int64Array::from_value(model_id, n_layers)),
            Arc::new(Int32Array::from_iter_values(0..n_layers as i32)),
            Arc::new(StringArray::from_iter_values(
                model.layers.iter().map(|l| l.layer_name.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(
                model.layers.iter().map(|l| l.conv_depth),
            )),
            Arc::new(Float64Array::from_iter_values(
                model.layers.iter().map(|l| l.conv_depth_norm),
            )),
            Arc::new(StringArray::from_iter_values(
                model.layers.iter().map(|l| l.depth_rule.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(
                model.layers.iter().map(|l| l.out_channels as i64),
            )),
            Arc::new(Int64Array::from_iter_values(
                model.layers.iter().map(|l| l.in_channels as i64),
            )),
            Arc::new(Int64Array::from_iter_values(
                model.layers.iter().map(|l| l.groups),
            )),
            Arc::new(Int64Array::from_value(3, n_layers)),
            Arc::new(Int64Array::from_value(3, n_layers)),
            Arc::new(Int64Array::from_iter_values(
                model.layers.iter().map(|l| l.n_filters() as i64),
            )),
            Arc::new(Int64Array::from_iter_values(firsts.iter().copied())),
            Arc::new(StringArray::from_iter_values(
                model.layers.iter().map(|l| l.weights.dtype.name()),
            )),
            Arc::new(Float64Array::from_iter_values(
                stats.iter().map(|s| s.max_abs),
            )),
        ],
    )?;
    let layers_bytes = write_batches(
        &dir.join("layers.parquet"),
        layers_schema(),
        props_small(),
        &[layers],
    )?;

    // models
    let m = &model.meta;
    let n_filters = model.n_filters() as u64;
    let total_filters: u64 = m.kernel_shape_counts.values().sum::<u64>().max(n_filters);
    let filters_3x3 = m
        .kernel_shape_counts
        .get("(3, 3)")
        .copied()
        .unwrap_or(n_filters);
    let share = if total_filters == 0 {
        0.0
    } else {
        filters_3x3 as f64 / total_filters as f64
    };
    let json = |v: serde_json::Value| v.to_string();
    let row = RecordBatch::try_new(
        models_schema(),
        vec![
            one_i64(model_id),
            one_str(&m.name),
            opt_str(&m.architecture),
            opt_str(&m.task),
            opt_str(&m.training_dataset),
            opt_str(&m.pretraining_dataset),
            opt_str(&m.visual_category),
            one_str(&m.source_format),
            one_str(&m.source_path),
            one_str(&m.source_sha256),
            one_i64(m.source_bytes as i64),
            Arc::new(Int64Array::from(vec![m.depth])),
            one_i64(n_layers as i64),
            one_i64(n_filters as i64),
            one_i64(total_filters as i64),
            one_i64(filters_3x3 as i64),
            Arc::new(Float64Array::from(vec![share])),
            one_i64(m.conv_tensors as i64),
            one_str(&json(
                serde_json::to_value(&m.kernel_shape_counts).unwrap_or_default(),
            )),
            one_str(&json(serde_json::to_value(&m.extra).unwrap_or_default())),
            one_str(&json(serde_json::to_value(&report).unwrap_or_default())),
            one_i64(first_filter_id),
            Arc::new(TimestampMillisecondArray::from(vec![ingested_at_ms]).with_timezone("UTC")),
        ],
    )?;
    let models_bytes = write_batches(
        &dir.join("models.parquet"),
        models_schema(),
        props_small(),
        &[row],
    )?;
    Ok(Written {
        n_layers: n_layers as u64,
        n_filters,
        bytes: filters_bytes + layers_bytes + models_bytes,
        report,
    })
}
