//! Writing one model's three Parquet files into the staging area.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::{ArrowPrimitiveType, Float16Type, Float32Type, SchemaRef, ToByteSlice};
use bytes::Bytes;
use half::f16;
use parquet::arrow::{ArrowSchemaConverter, ArrowWriter, add_encoded_arrow_schema_to_metadata};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::column::page::{CompressedPage, Page, PageWriter};
use parquet::column::writer::ColumnCloseResult;
use parquet::file::metadata::{ColumnChunkMetaData, OffsetIndexBuilder};
use parquet::file::properties::{WriterProperties, WriterVersion};
use parquet::file::writer::{SerializedFileWriter, SerializedPageWriter, TrackedWrite};

use crate::convert::{ConvertTo, LayerScan, NonFiniteCount, convert_any, count_f16_overflow};
use crate::delta;
use crate::error::{IoContext, Result, StoreError};
use crate::input::{KernelData, ModelInput, ValidationReport, Warning};
use crate::schema::{Precision, filters_schema, layers_schema, models_schema};

/// Rows per Parquet row group of a `filters` file: small enough that a layer-selective
/// query skips most of a big model, large enough to amortise per-group overhead.
pub const FILTERS_ROW_GROUP: usize = 262_144;

/// Number of leading id columns of a `filters` file (filter_id .. in_channel).
const ID_COLUMNS: usize = 5;

/// Summary of one written model, used for the log entry.
#[derive(Debug, Clone)]
pub(crate) struct Written {
    pub n_layers: u64,
    pub n_filters: u64,
    /// Bytes of the three files.
    pub bytes: u64,
    /// Bytes of the `models` file alone (it is rewritten when the report changes).
    pub models_bytes: u64,
    /// The `models` row as written.
    pub models_row: RecordBatch,
    pub report: ValidationReport,
}

/// Options for [`crate::StoreWriter::stage`].
#[derive(Debug, Clone, Copy, Default)]
pub struct StageOptions {
    /// Store NaN / infinite weights (and float16 overflows) instead of rejecting the model.
    pub allow_nonfinite: bool,
}

/// File-level properties of a `filters` file. No column goes through parquet-rs's
/// column writers: the id columns are written by [`delta::int_chunk`] (DELTA, zstd,
/// chunk statistics) and the weights by [`raw_plain_chunk`] (PLAIN, uncompressed,
/// without statistics: float weights hardly compress, measured 1.08x with zstd, and
/// min/max of a weight column prunes nothing).
fn props_filters() -> WriterProperties {
    WriterProperties::builder()
        .set_writer_version(WriterVersion::PARQUET_2_0)
        .build()
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
    /// NaN / infinite source values (stored only with `allow_nonfinite`).
    nonfinite: NonFiniteCount,
    /// Finite source values that became infinite in float16 (only with `allow_nonfinite`).
    f16_overflow: u64,
}

/// Converts and writes `filters`; returns per-layer stats and the file's size.
///
/// Two threads: this one converts layers into row-group buffers of
/// [`FILTERS_ROW_GROUP`] filters; an encoder thread writes each full buffer as a row
/// group (see [`RowGroupEncoder`]) and hands the emptied buffer back. At most three
/// buffers exist, so memory stays bounded whatever the model's size.
fn write_filters(
    path: &Path,
    precision: Precision,
    model: &ModelInput<'_>,
    model_id: i64,
    first_filter_id: i64,
    opts: &StageOptions,
) -> Result<(Vec<LayerStats>, u64)> {
    let file = File::create(path).ctx("creating", path)?;
    let (stats, file) = match precision {
        Precision::F16 => pipeline::<Float16Type>(
            file,
            path,
            precision,
            model,
            model_id,
            first_filter_id,
            opts,
        )?,
        Precision::F32 => pipeline::<Float32Type>(
            file,
            path,
            precision,
            model,
            model_id,
            first_filter_id,
            opts,
        )?,
    };
    file.sync_all().ctx("syncing", path)?;
    let bytes = file.metadata().ctx("reading size of", path)?.len();
    Ok((stats, bytes))
}

/// The rows of one row group, converted.
struct RowGroupBuf<N> {
    layer_idx: Vec<i32>,
    out_channel: Vec<i32>,
    in_channel: Vec<i32>,
    weights: [Vec<N>; 9],
}

impl<N> RowGroupBuf<N> {
    fn new() -> Self {
        RowGroupBuf {
            layer_idx: Vec::with_capacity(FILTERS_ROW_GROUP),
            out_channel: Vec::with_capacity(FILTERS_ROW_GROUP),
            in_channel: Vec::with_capacity(FILTERS_ROW_GROUP),
            weights: std::array::from_fn(|_| Vec::with_capacity(FILTERS_ROW_GROUP)),
        }
    }

    fn len(&self) -> usize {
        self.layer_idx.len()
    }

    fn clear(&mut self) {
        self.layer_idx.clear();
        self.out_channel.clear();
        self.in_channel.clear();
        for w in &mut self.weights {
            w.clear();
        }
    }
}

fn pipeline<T>(
    file: File,
    path: &Path,
    precision: Precision,
    model: &ModelInput<'_>,
    model_id: i64,
    first_filter_id: i64,
    opts: &StageOptions,
) -> Result<(Vec<LayerStats>, File)>
where
    T: ArrowPrimitiveType,
    f32: ConvertTo<T::Native>,
    f64: ConvertTo<T::Native>,
    f16: ConvertTo<T::Native>,
    half::bf16: ConvertTo<T::Native>,
{
    let mut encoder = RowGroupEncoder::new(file, path, precision, model_id, first_filter_id)?;
    std::thread::scope(|scope| {
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<RowGroupBuf<T::Native>>(1);
        let (empty_tx, empty_rx) = std::sync::mpsc::channel::<RowGroupBuf<T::Native>>();
        let encoder_thread = scope.spawn(move || -> Result<File> {
            for mut buf in full_rx {
                encoder.write::<T>(&buf)?;
                buf.clear();
                // The converter may be gone (an error); then the buffer is just dropped.
                let _ = empty_tx.send(buf);
            }
            encoder.finish()
        });
        let converted = convert_layers::<T>(model, opts, precision, &full_tx, &empty_rx);
        drop(full_tx);
        let written = encoder_thread.join().unwrap_or_else(|_| {
            Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                message: "invariant: the row-group encoder thread panicked".into(),
            })
        });
        // A conversion error (e.g. NaN weights) is the one to report.
        let stats = converted?;
        Ok((stats, written?))
    })
}

/// Convert every layer into row-group buffers, sending each full one to the encoder.
fn convert_layers<T>(
    model: &ModelInput<'_>,
    opts: &StageOptions,
    precision: Precision,
    full: &std::sync::mpsc::SyncSender<RowGroupBuf<T::Native>>,
    empty: &std::sync::mpsc::Receiver<RowGroupBuf<T::Native>>,
) -> Result<Vec<LayerStats>>
where
    T: ArrowPrimitiveType,
    f32: ConvertTo<T::Native>,
    f64: ConvertTo<T::Native>,
    f16: ConvertTo<T::Native>,
    half::bf16: ConvertTo<T::Native>,
{
    let encoder_gone = || StoreError::Corrupt {
        path: std::path::PathBuf::from(&model.meta.name),
        message: "invariant: the row-group encoder stopped early".into(),
    };
    let mut buf = RowGroupBuf::<T::Native>::new();
    let mut spare = 1; // buffers that may still be allocated (at most three in flight)
    let mut stats = Vec::with_capacity(model.layers.len());
    for (layer_idx, layer) in model.layers.iter().enumerate() {
        let (out, inp) = (layer.out_channels, layer.in_channels);
        check_size(
            &model.meta.name,
            &layer.layer_name,
            &layer.weights,
            out,
            inp,
        )?;
        let w = &layer.weights;
        let layer_i32 = i32::try_from(layer_idx).unwrap_or(i32::MAX);
        let n = out * inp;
        let mut scan: Option<LayerScan> = None;
        let mut k = 0;
        while k < n {
            let take = (n - k).min(FILTERS_ROW_GROUP - buf.len());
            let part = convert_any(
                w.dtype,
                &w.bytes,
                w.layout,
                out,
                inp,
                k..k + take,
                &mut buf.weights,
            );
            scan = Some(match scan {
                None => part,
                Some(s) => s.then(part),
            });
            for f in k..k + take {
                buf.layer_idx.push(layer_i32);
                buf.out_channel.push((f / inp) as i32);
                buf.in_channel.push((f % inp) as i32);
            }
            k += take;
            if buf.len() == FILTERS_ROW_GROUP {
                let next = match empty.try_recv() {
                    Ok(b) => b,
                    Err(_) if spare > 0 => {
                        spare -= 1;
                        RowGroupBuf::new()
                    }
                    Err(_) => empty.recv().map_err(|_| encoder_gone())?,
                };
                full.send(std::mem::replace(&mut buf, next))
                    .map_err(|_| encoder_gone())?;
            }
        }
        let scan = scan.unwrap_or_default();
        let overflows = precision == Precision::F16 && scan.max_abs > f64::from(f16::MAX);
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
            if overflows {
                return Err(StoreError::NonFinite {
                    model: model.meta.name.clone(),
                    tensor: layer.layer_name.clone(),
                    filter: 0,
                    value: scan.max_abs.to_string(),
                    hint: " (larger than float16's 65504: use an f32 store)",
                });
            }
        }
        let stored_max = match precision {
            Precision::F16 => f64::from(crate::convert::f64_to_f16(scan.max_abs)),
            Precision::F32 => f64::from(scan.max_abs as f32),
        };
        stats.push(LayerStats {
            max_abs: stored_max,
            nonfinite: scan.nonfinite,
            // A second pass over this layer only: it holds values beyond float16's range.
            f16_overflow: if overflows {
                count_f16_overflow(w.dtype, &w.bytes)
            } else {
                0
            },
        });
    }
    if buf.len() > 0 {
        full.send(buf).map_err(|_| encoder_gone())?;
    }
    Ok(stats)
}

/// Writes row groups of a `filters` file.
///
/// The five id columns are one DELTA_BINARY_PACKED page each, zstd, with statistics
/// ([`delta::int_chunk`]; parquet-rs's column writers for them took ~25 % of an ingest's
/// CPU). The nine weight columns are required, PLAIN, uncompressed
/// and without statistics, so each column chunk is one data page whose payload is
/// exactly the Arrow value buffer, and it is written as such. This avoids parquet-rs's
/// generic FIXED_LEN_BYTE_ARRAY path for FLOAT16, which makes one `Bytes` handle per
/// value and took about half of f16 ingest time (measured, docs/benchmarks.md).
struct RowGroupEncoder {
    writer: SerializedFileWriter<File>,
    descr: parquet::schema::types::SchemaDescPtr,
    path: std::path::PathBuf,
    model_id: i64,
    next_filter_id: i64,
    /// The `filter_id` values of the current row group (refilled for each).
    filter_ids: Vec<i64>,
    /// `model_id` once per row of the longest row group so far (sliced for shorter ones).
    model_ids: Vec<i64>,
    row_groups: usize,
}

impl RowGroupEncoder {
    fn new(
        file: File,
        path: &Path,
        precision: Precision,
        model_id: i64,
        first_filter_id: i64,
    ) -> Result<Self> {
        let schema = filters_schema(precision);
        let perr = |source| StoreError::Parquet {
            path: path.to_path_buf(),
            source,
        };
        let descr = Arc::new(ArrowSchemaConverter::new().convert(&schema).map_err(perr)?);
        let mut props = props_filters();
        add_encoded_arrow_schema_to_metadata(&schema, &mut props);
        let writer = SerializedFileWriter::new(file, descr.root_schema_ptr(), Arc::new(props))
            .map_err(perr)?;
        Ok(RowGroupEncoder {
            writer,
            descr,
            path: path.to_path_buf(),
            model_id,
            next_filter_id: first_filter_id,
            filter_ids: Vec::new(),
            model_ids: Vec::new(),
            row_groups: 0,
        })
    }

    /// Write `buf` as one row group: the id columns DELTA-encoded by [`delta::int_chunk`]
    /// (zstd, with min / max statistics), the weights PLAIN by [`raw_plain_chunk`], each
    /// chunk one page, written back to back.
    fn write<T: ArrowPrimitiveType>(&mut self, buf: &RowGroupBuf<T::Native>) -> Result<()> {
        let n = buf.len();
        let path = self.path.clone();
        let perr = |source| StoreError::Parquet {
            path: path.clone(),
            source,
        };
        let first = self.next_filter_id;
        self.filter_ids.clear();
        self.filter_ids.extend(first..first + n as i64);
        self.next_filter_id += n as i64;
        if self.model_ids.len() < n {
            self.model_ids.resize(n, self.model_id);
        }
        let column = |k: usize| self.descr.column(k);
        let ids = [
            delta::int_chunk(&[&self.filter_ids[..]], column(0)),
            delta::int_chunk(&[&self.model_ids[..n]], column(1)),
            delta::int_chunk(&[&buf.layer_idx[..]], column(2)),
            delta::int_chunk(&[&buf.out_channel[..]], column(3)),
            delta::int_chunk(&[&buf.in_channel[..]], column(4)),
        ];
        // Where the next chunk starts in the file: chunks are written back to back.
        let mut at = self.writer.bytes_written() as u64;
        let mut rg = self.writer.next_row_group().map_err(perr)?;
        for chunk in ids {
            let (bytes, close) = chunk.map_err(perr)?;
            at += bytes.len() as u64;
            rg.append_column(&bytes, close).map_err(perr)?;
        }
        let width = size_of::<T::Native>();
        for (j, col) in buf.weights.iter().enumerate() {
            let (bytes, close) = raw_plain_chunk(
                col.to_byte_slice(),
                n,
                self.descr.column(ID_COLUMNS + j),
                at,
                width,
            )
            .map_err(perr)?;
            at += bytes.len() as u64;
            rg.append_column(&bytes, close).map_err(perr)?;
        }
        rg.close().map_err(perr)?;
        self.row_groups += 1;
        Ok(())
    }

    fn finish(self) -> Result<File> {
        let path = self.path.clone();
        self.writer
            .into_inner()
            .map_err(|source| StoreError::Parquet { path, source })
    }
}

/// One column chunk holding one PLAIN, uncompressed data page (v2) of `n` required
/// values whose encoded form is `values` (little-endian values `width` bytes each),
/// to be written at file offset `at`: its page header is lengthened so that the values
/// start at a multiple of `width` (see [`OnePageChunk::write_aligned`]).
fn raw_plain_chunk(
    values: &[u8],
    n: usize,
    descr: parquet::schema::types::ColumnDescPtr,
    at: u64,
    width: usize,
) -> parquet::errors::Result<(Bytes, ColumnCloseResult)> {
    let count = u32::try_from(n).map_err(|_| {
        parquet::errors::ParquetError::General(format!("{n} rows do not fit one page"))
    })?;
    let page = Page::DataPageV2 {
        buf: Bytes::copy_from_slice(values),
        num_values: count,
        encoding: Encoding::PLAIN,
        num_nulls: 0,
        num_rows: count,
        def_levels_byte_len: 0,
        rep_levels_byte_len: 0,
        is_compressed: false,
        statistics: None,
    };
    let chunk = OnePageChunk {
        uncompressed: values.len(),
        rows: n,
        encodings: vec![Encoding::PLAIN],
        compression: Compression::UNCOMPRESSED,
        statistics: None,
    };
    chunk.write_aligned(page, descr, at, width)
}

/// What a column chunk of one page declares besides the page (the store's weight and
/// id columns, exports' list and integer columns in `filterdb_sql`).
#[derive(Debug, Clone)]
pub struct OnePageChunk {
    /// Bytes of the page's buffer before compression (levels and values).
    pub uncompressed: usize,
    /// Rows in the page.
    pub rows: usize,
    /// The page's value and level encodings.
    pub encodings: Vec<Encoding>,
    /// The codec the page's values are compressed with.
    pub compression: Compression,
    /// The chunk's statistics (min / max / nulls), for readers to prune with.
    pub statistics: Option<parquet::file::statistics::Statistics>,
}

impl OnePageChunk {
    /// The chunk's bytes and the close result that
    /// `SerializedRowGroupWriter::append_column` takes.
    ///
    /// # Errors
    /// Parquet errors writing the page header.
    pub fn write(
        self,
        page: Page,
        descr: parquet::schema::types::ColumnDescPtr,
    ) -> parquet::errors::Result<(Bytes, ColumnCloseResult)> {
        self.write_at(page, descr, None)
    }

    /// [`OnePageChunk::write`] for a chunk that will be written at file offset `at`:
    /// the page header is lengthened by up to `width - 1` bytes so that the values
    /// start at a multiple of `width` in the file, where a reader can use them in
    /// place (mapped, or read into an aligned buffer) as an Arrow array. Thrift's
    /// compact protocol writes a field header in a short form (the field id as a
    /// delta from the last one) or a long form (one byte longer, the id in full), and
    /// every reader decodes both: the header's first fields are written in the long
    /// form. A header that does not begin as expected is left as it is.
    ///
    /// # Errors
    /// Parquet errors writing the page header.
    pub fn write_aligned(
        self,
        page: Page,
        descr: parquet::schema::types::ColumnDescPtr,
        at: u64,
        width: usize,
    ) -> parquet::errors::Result<(Bytes, ColumnCloseResult)> {
        self.write_at(page, descr, Some((at, width)))
    }

    fn write_at(
        self,
        page: Page,
        descr: parquet::schema::types::ColumnDescPtr,
        align: Option<(u64, usize)>,
    ) -> parquet::errors::Result<(Bytes, ColumnCloseResult)> {
        let num_values = i64::from(page.num_values());
        let stored = page.buffer().len() as i64;
        let mut sink = TrackedWrite::new(Vec::with_capacity(page.buffer().len() + 64));
        {
            let mut pw = SerializedPageWriter::new(&mut sink);
            pw.write_page(CompressedPage::new(page, self.uncompressed))?;
            pw.close()?;
        }
        let mut bytes = sink.into_inner()?;
        if let Some((at, width)) = align {
            let header = bytes.len() - stored as usize;
            let pad = (width - ((at % width as u64) as usize + header) % width) % width;
            if let Some(longer) = lengthen_page_header(&bytes[..header], pad) {
                // in place: the values move up by `pad` within the spare capacity
                bytes.splice(..header, longer);
            }
        }
        let len = bytes.len() as i64;
        let close = self.close_result(descr, num_values, len, stored)?;
        Ok((Bytes::from(bytes), close))
    }

    /// The close result of this chunk written elsewhere as `len` bytes: a page header
    /// and the page's `stored` bytes of `num_values` values. What
    /// `SerializedRowGroupWriter::append_column` takes with the chunk's bytes.
    ///
    /// # Errors
    /// Parquet errors building the metadata.
    pub fn close_result(
        self,
        descr: parquet::schema::types::ColumnDescPtr,
        num_values: i64,
        len: i64,
        stored: i64,
    ) -> parquet::errors::Result<ColumnCloseResult> {
        // One page covering every row; offsets are relative to the chunk and rewritten
        // by `append_column`. (The file writer needs an offset index for every column
        // once any column has one.)
        let mut offsets = OffsetIndexBuilder::new();
        offsets.append_row_count(self.rows as i64);
        offsets.append_offset_and_size(0, i32::try_from(len).unwrap_or(i32::MAX));
        let mut metadata = ColumnChunkMetaData::builder(descr)
            .set_encodings(self.encodings)
            .set_compression(self.compression)
            .set_num_values(num_values)
            .set_total_compressed_size(len)
            // the page header plus the page before compression
            .set_total_uncompressed_size(len - stored + self.uncompressed as i64)
            .set_data_page_offset(0);
        if let Some(stats) = self.statistics {
            metadata = metadata.set_statistics(stats);
        }
        Ok(ColumnCloseResult {
            bytes_written: len as u64,
            rows_written: self.rows as u64,
            metadata: metadata.build()?,
            bloom_filter: None,
            column_index: None,
            offset_index: Some(offsets.build()),
        })
    }
}

/// A serialized Thrift (compact protocol) `PageHeader` made `pad` bytes longer, by
/// writing the field headers of its first `pad` fields (`type`,
/// `uncompressed_page_size`, `compressed_page_size`: field ids 1, 2, 3, all i32) in the
/// long form: the type byte with a zero delta, then the field id as a zigzag varint.
/// `None` when `pad` is not 1 to 3 (nothing to do, or more than this can add) or the
/// header does not start with those three fields in the short form.
fn lengthen_page_header(header: &[u8], pad: usize) -> Option<Vec<u8>> {
    const SHORT_I32_NEXT_FIELD: u8 = 0x15; // delta 1, type i32 (5)
    const LONG_I32: u8 = 0x05; // delta 0: the field id follows
    if !(1..=3).contains(&pad) {
        return None;
    }
    let mut out = Vec::with_capacity(header.len() + pad);
    let mut at = 0;
    for field in 1..=3u8 {
        if *header.get(at)? != SHORT_I32_NEXT_FIELD {
            return None;
        }
        let long = usize::from(field) <= pad;
        if long {
            out.extend_from_slice(&[LONG_I32, field << 1]);
        } else {
            out.push(SHORT_I32_NEXT_FIELD);
        }
        at += 1;
        // the field's value: a varint
        let len = header.get(at..)?.iter().position(|b| b & 0x80 == 0)? + 1;
        out.extend_from_slice(&header[at..at + len]);
        at += len;
    }
    out.extend_from_slice(&header[at..]);
    Some(out)
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
    // A model without 3x3 layers (ingest --allow-empty) is written like any other: its
    // `layers` and `filters` files have no rows.
    let (stats, filters_bytes) = write_filters(
        &dir.join("filters.parquet"),
        precision,
        model,
        model_id,
        first_filter_id,
        opts,
    )?;
    let report = store_report(model, &stats);

    // layers
    let n_layers = model.layers.len();
    let mut first = first_filter_id;
    let mut firsts = Vec::with_capacity(n_layers);
    for l in &model.layers {
        firsts.push(first);
        first += l.n_filters() as i64;
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
    let models_row = RecordBatch::try_new(
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
            one_str(&report.to_json()),
            one_i64(first_filter_id),
            Arc::new(TimestampMillisecondArray::from(vec![ingested_at_ms]).with_timezone("UTC")),
        ],
    )?;
    let models_bytes = write_models(dir, &models_row)?;
    Ok(Written {
        n_layers: n_layers as u64,
        n_filters,
        bytes: filters_bytes + layers_bytes + models_bytes,
        models_bytes,
        models_row,
        report,
    })
}

/// Write the one-row `models` file of a staged model; returns its size.
fn write_models(dir: &Path, row: &RecordBatch) -> Result<u64> {
    write_batches(
        &dir.join("models.parquet"),
        models_schema(),
        props_small(),
        std::slice::from_ref(row),
    )
}

/// Rewrite the `models` file of a staged model in `dir` with another report; returns
/// the new row and the file's size.
pub(crate) fn rewrite_report(
    dir: &Path,
    row: &RecordBatch,
    report: &ValidationReport,
) -> Result<(RecordBatch, u64)> {
    let idx = models_schema().index_of("report")?;
    let mut columns = row.columns().to_vec();
    columns[idx] = one_str(&report.to_json());
    let row = RecordBatch::try_new(models_schema(), columns)?;
    let bytes = write_models(dir, &row)?;
    Ok((row, bytes))
}

/// The normaliser's report plus the store's own checks, with the counts filled in.
fn store_report(model: &ModelInput<'_>, stats: &[LayerStats]) -> ValidationReport {
    let mut report = model.meta.report.clone();
    report.conv_tensors = model.meta.conv_tensors;
    report.layers_3x3 = model.layers.len() as u64;
    report.filters = model.n_filters() as u64;
    if model.layers.is_empty()
        && !report.has_warning(Warning::NO_CONVOLUTIONS)
        && !report.has_warning(Warning::NO_3X3_KERNELS)
    {
        // Every model without layers says why, whoever built its input.
        if model.meta.conv_tensors == 0 {
            report.warn(
                Warning::NO_CONVOLUTIONS,
                "no convolution tensors: only the model's meta-parameters are stored",
            );
        } else {
            report.warn(
                Warning::NO_3X3_KERNELS,
                format!(
                    "{} convolution tensor(s) but no 3x3 layer: only the model's \
                     meta-parameters and kernel counts are stored",
                    model.meta.conv_tensors
                ),
            );
        }
    }
    for (l, s) in model.layers.iter().zip(stats) {
        if s.max_abs == 0.0 && s.nonfinite.is_zero() {
            report.warn(
                Warning::ALL_ZERO_LAYER,
                format!(
                    "layer {}: all {} filters are zero (as stored)",
                    l.layer_name,
                    l.n_filters()
                ),
            );
        }
        let n = s.nonfinite;
        if !n.is_zero() {
            report.warn(
                Warning::NON_FINITE,
                format!(
                    "layer {}: {} NaN and {} infinite weight(s) in {} of {} filters, stored \
                     as they are (--allow-nonfinite)",
                    l.layer_name,
                    n.nan,
                    n.inf,
                    n.filters,
                    l.n_filters()
                ),
            );
        }
        if s.f16_overflow > 0 {
            report.warn(
                Warning::NON_FINITE,
                format!(
                    "layer {}: {} weight(s) beyond float16's range (65504) stored as \
                     infinity (--allow-nonfinite; an f32 store keeps them)",
                    l.layer_name, s.f16_overflow
                ),
            );
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use arrow::array::AsArray;
    use arrow::datatypes::{Float16Type, Float32Type, Int32Type, Int64Type};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::file::statistics::Statistics;

    use super::*;
    use crate::input::{KernelLayout, LayerInput, ModelMeta, SourceDtype};

    fn layer(name: &str, out: usize, inp: usize, salt: u32) -> (LayerInput<'static>, Vec<f32>) {
        let vals: Vec<f32> = (0..out * inp * 9)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ salt) as f32 / u32::MAX as f32 - 0.5)
            .collect();
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let l = LayerInput {
            layer_name: name.into(),
            conv_depth: 0,
            conv_depth_norm: 0.0,
            depth_rule: "name_order".into(),
            out_channels: out,
            in_channels: inp,
            groups: 1,
            weights: KernelData {
                dtype: SourceDtype::F32,
                layout: KernelLayout::Oihw,
                bytes: Cow::Owned(bytes),
            },
        };
        (l, vals)
    }

    fn f32_layer(name: &str, vals: &[f32], out: usize) -> LayerInput<'static> {
        let (mut l, _) = layer(name, out, vals.len() / 9 / out, 0);
        l.weights.bytes = Cow::Owned(vals.iter().flat_map(|v| v.to_le_bytes()).collect());
        l
    }

    fn model(layers: Vec<LayerInput<'static>>, conv_tensors: u64) -> ModelInput<'static> {
        ModelInput {
            meta: ModelMeta {
                name: "m".into(),
                conv_tensors,
                ..Default::default()
            },
            layers,
        }
    }

    /// The `report` cell of a written `models` file.
    fn stored_report(dir: &Path) -> ValidationReport {
        let f = File::open(dir.join("models.parquet")).unwrap();
        let mut r = ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap();
        let b = r.next().unwrap().unwrap();
        let col = b.column_by_name("report").unwrap().as_string::<i32>();
        ValidationReport::from_json(col.value(0)).unwrap()
    }

    fn rows_of(path: &Path) -> i64 {
        let f = File::open(path).unwrap();
        let b = ParquetRecordBatchReaderBuilder::try_new(f).unwrap();
        b.metadata().file_metadata().num_rows()
    }

    /// The store fills in the counts and warns about all-zero layers and, with
    /// `allow_nonfinite`, about NaN / infinite weights with their counts.
    #[test]
    fn report_counts_zero_layers_and_nonfinite() {
        let dir = tempfile::tempdir().unwrap();
        let (good, _) = layer("good", 2, 2, 5);
        let zero = f32_layer("zero", &[0.0; 18], 2);
        let mut bad = vec![0.5f32; 27];
        bad[0] = f32::NAN;
        bad[4] = f32::NAN;
        bad[26] = f32::NEG_INFINITY;
        let bad = f32_layer("bad", &bad, 3);
        let m = model(vec![good, zero, bad], 4);
        let strict = write_model(
            dir.path(),
            Precision::F32,
            &m,
            0,
            0,
            0,
            &StageOptions::default(),
        );
        assert!(
            matches!(strict, Err(StoreError::NonFinite { .. })),
            "{strict:?}"
        );
        let opts = StageOptions {
            allow_nonfinite: true,
        };
        let w = write_model(dir.path(), Precision::F32, &m, 0, 0, 0, &opts).unwrap();
        let r = &w.report;
        assert_eq!((r.conv_tensors, r.layers_3x3, r.filters), (4, 3, 4 + 2 + 3));
        let got: Vec<(&str, &str)> = r
            .warnings
            .iter()
            .map(|w| (w.code.as_str(), w.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    Warning::ALL_ZERO_LAYER,
                    "layer zero: all 2 filters are zero (as stored)"
                ),
                (
                    Warning::NON_FINITE,
                    "layer bad: 2 NaN and 1 infinite weight(s) in 2 of 3 filters, stored as \
                     they are (--allow-nonfinite)"
                ),
            ]
        );
        assert_eq!(&stored_report(dir.path()), r);
    }

    /// Values beyond float16's range become infinity in an f16 store: counted.
    #[test]
    fn float16_overflow_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut v = vec![0.25f32; 18];
        v[3] = 1e6;
        v[9] = -7e4;
        let m = model(vec![f32_layer("big", &v, 2)], 1);
        let opts = StageOptions {
            allow_nonfinite: true,
        };
        let w = write_model(dir.path(), Precision::F16, &m, 0, 0, 0, &opts).unwrap();
        assert_eq!(w.report.warnings.len(), 1, "{:?}", w.report);
        assert_eq!(w.report.warnings[0].code, Warning::NON_FINITE);
        assert!(
            w.report.warnings[0]
                .message
                .starts_with("layer big: 2 weight(s) beyond float16's range"),
            "{:?}",
            w.report
        );
        // the same in an f32 store is fine
        let w = write_model(dir.path(), Precision::F32, &m, 0, 0, 0, &opts).unwrap();
        assert!(w.report.warnings.is_empty(), "{:?}", w.report);
    }

    /// A model without layers is written with empty `layers` and `filters` files, and
    /// its report says why it has none (even when its builder did not).
    #[test]
    fn empty_model_has_zero_row_files() {
        for (conv_tensors, code) in [(0, Warning::NO_CONVOLUTIONS), (3, Warning::NO_3X3_KERNELS)] {
            let dir = tempfile::tempdir().unwrap();
            let m = model(Vec::new(), conv_tensors);
            let w = write_model(
                dir.path(),
                Precision::F16,
                &m,
                7,
                100,
                0,
                &StageOptions::default(),
            )
            .unwrap();
            assert_eq!((w.n_layers, w.n_filters), (0, 0));
            assert_eq!(rows_of(&dir.path().join("filters.parquet")), 0);
            assert_eq!(rows_of(&dir.path().join("layers.parquet")), 0);
            assert_eq!(rows_of(&dir.path().join("models.parquet")), 1);
            let codes: Vec<&str> = w.report.warnings.iter().map(|w| w.code.as_str()).collect();
            assert_eq!(codes, [code]);
            assert_eq!(w.report.conv_tensors, conv_tensors);
            // a builder's own warning is not repeated
            let mut m = model(Vec::new(), conv_tensors);
            m.meta.report.warn(code, "mine");
            let w = write_model(
                dir.path(),
                Precision::F16,
                &m,
                7,
                100,
                0,
                &StageOptions::default(),
            )
            .unwrap();
            assert_eq!(w.report.warnings, [Warning::new(code, "mine")]);
        }
    }

    /// Row groups split inside a layer and across layers; every value and id survives.
    #[test]
    fn multi_row_group_file_round_trips() {
        for precision in [Precision::F32, Precision::F16] {
            let dir = tempfile::tempdir().unwrap();
            let (a, va) = layer("a", 600, 500, 1); // 300 000 filters: crosses a row group
            let (b, vb) = layer("b", 7, 3, 2);
            let (c, vc) = layer("c", 512, 460, 3); // ends exactly past the second boundary
            let model = ModelInput {
                meta: ModelMeta {
                    name: "m".into(),
                    ..Default::default()
                },
                layers: vec![a, b, c],
            };
            let path = dir.path().join("filters.parquet");
            let (stats, _) =
                write_filters(&path, precision, &model, 4, 1000, &StageOptions::default()).unwrap();
            assert_eq!(stats.len(), 3);
            let reader =
                ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap()).unwrap();
            assert_eq!(reader.metadata().num_row_groups(), 3);
            // Every weight chunk's values start at a multiple of the value's width.
            let width = match precision {
                Precision::F16 => 2,
                Precision::F32 => 4,
            };
            for rg in reader.metadata().row_groups() {
                for c in &rg.columns()[5..] {
                    let (start, len) = c.byte_range();
                    let header = len - (rg.num_rows() as u64) * width;
                    assert_eq!(
                        (start + header) % width,
                        0,
                        "{precision:?} chunk at {start}"
                    );
                }
            }
            let meta = Arc::clone(reader.metadata());
            let mut got = Vec::new();
            let mut ids = Vec::new();
            let mut all_ids: Vec<[i64; 5]> = Vec::new();
            for batch in reader.build().unwrap() {
                let batch = batch.unwrap();
                let fid = batch.column(0).as_primitive::<Int64Type>();
                let mid = batch.column(1).as_primitive::<Int64Type>();
                let lay = batch.column(2).as_primitive::<Int32Type>();
                let out = batch.column(3).as_primitive::<Int32Type>();
                let inp = batch.column(4).as_primitive::<Int32Type>();
                for r in 0..batch.num_rows() {
                    ids.push((fid.value(r), mid.value(r), lay.value(r)));
                    all_ids.push([
                        fid.value(r),
                        mid.value(r),
                        lay.value(r).into(),
                        out.value(r).into(),
                        inp.value(r).into(),
                    ]);
                    for j in 0..9 {
                        let col = batch.column(5 + j);
                        got.push(match precision {
                            Precision::F16 => col.as_primitive::<Float16Type>().value(r).to_f32(),
                            Precision::F32 => col.as_primitive::<Float32Type>().value(r),
                        });
                    }
                }
            }
            let src: Vec<f32> = va.iter().chain(&vb).chain(&vc).copied().collect();
            assert_eq!(got.len(), src.len());
            for (g, s) in got.iter().zip(&src) {
                let want = if precision == Precision::F16 {
                    f16::from_f32(*s).to_f32()
                } else {
                    *s
                };
                assert_eq!(g.to_bits(), want.to_bits());
            }
            let n = ids.len() as i64;
            assert!(
                ids.iter()
                    .enumerate()
                    .all(|(i, &(f, m, _))| f == 1000 + i as i64 && m == 4)
            );
            assert_eq!(ids[300_000].2, 1);
            assert_eq!(ids[(n - 1) as usize].2, 2);
            // Channels: filter f of a layer with `inp` in-channels is (f / inp, f % inp).
            let firsts = [0usize, 300_000, 300_021];
            for (l, (&first, inp)) in firsts.iter().zip([500, 3, 460]).enumerate() {
                let row = all_ids[first + inp + 1];
                assert_eq!((row[2], row[3], row[4]), (l as i64, 1, 1));
            }
            // Each id chunk: DELTA-encoded, its statistics the row group's min and max.
            let mut at = 0;
            for rg in meta.row_groups() {
                let rows = &all_ids[at..at + rg.num_rows() as usize];
                at += rows.len();
                for (k, c) in rg.columns()[..ID_COLUMNS].iter().enumerate() {
                    assert!(c.encodings().any(|e| e == Encoding::DELTA_BINARY_PACKED));
                    let lo = rows.iter().map(|r| r[k]).min().unwrap();
                    let hi = rows.iter().map(|r| r[k]).max().unwrap();
                    let bounds = match c.statistics().unwrap() {
                        Statistics::Int32(v) => (
                            i64::from(*v.min_opt().unwrap()),
                            i64::from(*v.max_opt().unwrap()),
                        ),
                        Statistics::Int64(v) => (*v.min_opt().unwrap(), *v.max_opt().unwrap()),
                        other => panic!("id column {k}: {other:?}"),
                    };
                    assert_eq!(bounds, (lo, hi), "id column {k}");
                }
            }
        }
    }

    #[test]
    fn page_headers_are_lengthened_in_thrift_s_long_form() {
        let page = Page::DataPageV2 {
            buf: Bytes::from(vec![7u8; 18]),
            num_values: 2,
            encoding: Encoding::PLAIN,
            num_nulls: 0,
            num_rows: 2,
            def_levels_byte_len: 0,
            rep_levels_byte_len: 0,
            is_compressed: false,
            statistics: None,
        };
        let schema = ArrowSchemaConverter::new()
            .convert(&filters_schema(Precision::F16))
            .unwrap();
        let descr = schema.column(ID_COLUMNS);
        let chunk = || OnePageChunk {
            uncompressed: 18,
            rows: 2,
            encodings: vec![Encoding::PLAIN],
            compression: Compression::UNCOMPRESSED,
            statistics: None,
        };
        let (plain, _) = chunk().write(page.clone(), Arc::clone(&descr)).unwrap();
        let header = plain.len() - 18;
        for width in [2usize, 4, 8] {
            for at in 0..8u64 {
                let (bytes, close) = chunk()
                    .write_aligned(page.clone(), Arc::clone(&descr), at, width)
                    .unwrap();
                let pad = bytes.len() - plain.len();
                assert!(pad < width.min(4), "width {width} at {at}: {pad}");
                if width <= 4 {
                    assert_eq!(
                        (at as usize + bytes.len() - 18) % width,
                        0,
                        "width {width} at {at}"
                    );
                }
                assert_eq!(close.metadata.compressed_size(), bytes.len() as i64);
                // The same values follow, and parquet-rs decodes the longer header.
                assert_eq!(&bytes[header + pad..], &plain[header..]);
                let mut pages = parquet::file::serialized_reader::SerializedPageReader::new(
                    Arc::new(bytes.clone()),
                    &close.metadata,
                    2,
                    None,
                )
                .unwrap();
                let got = parquet::column::page::PageReader::get_next_page(&mut pages)
                    .unwrap()
                    .unwrap();
                assert_eq!(got.buffer().as_ref(), &[7u8; 18][..]);
                assert_eq!(got.num_values(), 2);
            }
        }
        // Headers of another shape are left alone.
        assert_eq!(
            lengthen_page_header(&[0x16, 0x02, 0x15, 0x04, 0x15, 0x06, 0], 1),
            None
        );
        assert_eq!(
            lengthen_page_header(&[0x15, 0x86, 0x01, 0x15, 0x04, 0x15, 0x06, 0], 2).unwrap(),
            [0x05, 0x02, 0x86, 0x01, 0x05, 0x04, 0x04, 0x15, 0x06, 0]
        );
    }
}
