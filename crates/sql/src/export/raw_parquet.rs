//! The Parquet writer of exports: parquet-rs's Arrow encoders for most columns, raw
//! PLAIN pages for the filter columns, and raw DELTA_BINARY_PACKED pages for integer
//! columns.
//!
//! A `FixedSizeList<Float16|Float32|Float64, N>` column without NULLs (the `weights` of
//! every filter query) is written as one uncompressed DataPage v2 per row group: the
//! values' little-endian bytes as they are in the Arrow buffer, the repetition levels (a
//! list starts every N values) as bit-packed runs of one repeating byte pattern, and the
//! definition levels (every value present) as one RLE run. parquet-rs's generic path
//! turns each float16 into a `FixedLenByteArray` with its own reference-counted buffer
//! and walks the levels value by value, which held exports to ~100 MB/s; this one is a
//! copy. Any other column, and a list column of a row group that holds a NULL, goes
//! through `ArrowColumnWriter` as usual, so the file is an ordinary Parquet file with the
//! Arrow schema embedded (readers get `FixedSizeList<Float16, 9>` back).
//!
//! An Int32 or Int64 column without NULLs (the ids and channels of a slice) is written
//! as one DataPage v2 per row group by [`filterdb_store::delta`], zstd-compressed when
//! that saves an eighth, with the chunk's min / max statistics: parquet-rs's encoder was
//! ~30 % of the CPU of an npy export (whose side file holds only these columns).
//!
//! Why by hand: parquet-rs offers no way to hand it pre-encoded pages for a nested column
//! except its low-level page writer, which copies the page after its header into a
//! buffer of its own. The list chunk is handed to `append_column` as pieces instead
//! ([`Pieces`]: a page header written here, tested equal to the page writer's, the
//! levels, and the values where the Arrow arrays hold them), so the values are copied
//! once, into the file's chunks; the metadata comes from
//! [`filterdb_store::OnePageChunk::close_result`], as for the store's weight columns.

use std::io::{Read, Write};
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::buffer::Buffer;
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Field, Float16Type, Float32Type, Float64Type, Int32Type,
    Int64Type, SchemaRef,
};
use bytes::Bytes;
use filterdb_store::OnePageChunk;
use parquet::arrow::arrow_writer::{ArrowRowGroupWriterFactory, compute_leaves};
use parquet::arrow::{ArrowSchemaConverter, add_encoded_arrow_schema_to_metadata};
use parquet::basic::{Compression, Encoding, LogicalType, Type as PhysicalType, ZstdLevel};
use parquet::column::writer::ColumnCloseResult;
use parquet::errors::{ParquetError, Result};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::{ColumnDescPtr, SchemaDescPtr, SchemaDescriptor};

use filterdb_store::delta::{self, definition_levels, put_varint};

/// Rows per row group (parquet-rs's default).
const ROW_GROUP_ROWS: usize = 1 << 20;

/// Bit-packed groups (of 8 values) per run of repetition levels: parquet-rs's own writer
/// never makes longer runs, so every reader takes them.
const MAX_GROUPS_PER_RUN: usize = 63;

/// A streaming Parquet writer with the raw path for filter columns (module doc).
pub(crate) struct RawParquetWriter<W: Write + Send> {
    writer: SerializedFileWriter<W>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    descr: SchemaDescPtr,
    /// The leaf columns of each top-level field.
    leaves: Vec<Range<usize>>,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    row_group_rows: usize,
    row_groups: usize,
    /// Column chunks written by the raw path.
    raw_chunks: usize,
}

impl<W: Write + Send> RawParquetWriter<W> {
    /// A writer of `schema` to `out` with [`export_properties`] (the Arrow schema is
    /// embedded).
    pub(crate) fn try_new(out: W, schema: &SchemaRef) -> Result<Self> {
        let descr = Arc::new(ArrowSchemaConverter::new().convert(schema)?);
        let mut props = export_properties(&descr)?;
        add_encoded_arrow_schema_to_metadata(schema, &mut props);
        let writer = SerializedFileWriter::new(out, descr.root_schema_ptr(), Arc::new(props))?;
        let factory = ArrowRowGroupWriterFactory::new(&writer, Arc::clone(schema));
        let mut leaves = Vec::with_capacity(schema.fields().len());
        let mut start = 0;
        for f in schema.fields() {
            let n = descr.columns()[start..]
                .iter()
                .take_while(|c| c.path().parts().first() == Some(f.name()))
                .count();
            leaves.push(start..start + n);
            start += n;
        }
        if start != descr.num_columns() {
            return Err(ParquetError::General(format!(
                "export: {} Parquet columns for {} leaves of the schema",
                descr.num_columns(),
                start
            )));
        }
        Ok(RawParquetWriter {
            writer,
            factory,
            schema: Arc::clone(schema),
            descr,
            leaves,
            pending: Vec::new(),
            pending_rows: 0,
            row_group_rows: ROW_GROUP_ROWS,
            row_groups: 0,
            raw_chunks: 0,
        })
    }

    /// Queue a batch; a row group is written once enough rows are queued.
    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.pending.push(batch.clone());
        self.pending_rows += batch.num_rows();
        if self.pending_rows >= self.row_group_rows {
            self.flush()?;
        }
        Ok(())
    }

    /// Write the queued rows as one row group.
    fn flush(&mut self) -> Result<()> {
        if self.pending_rows == 0 {
            return Ok(());
        }
        let mut writers = self.factory.create_column_writers(self.row_groups)?;
        let mut raw: Vec<Option<(Pieces, ColumnCloseResult)>> = std::iter::repeat_with(|| None)
            .take(writers.len())
            .collect();
        for (k, field) in self.schema.fields().iter().enumerate() {
            let leaves = self.leaves[k].clone();
            let arrays: Vec<&ArrayRef> = self.pending.iter().map(|b| b.column(k)).collect();
            let chunk = if leaves.len() == 1 {
                let descr = self.descr.column(leaves.start);
                match raw_list_chunk(field, &arrays, Arc::clone(&descr))? {
                    Some(chunk) => Some(chunk),
                    None => raw_int_chunk(field, &arrays, descr)?
                        .map(|(bytes, close)| (Pieces::new(vec![bytes]), close)),
                }
            } else {
                None
            };
            if let Some(chunk) = chunk {
                raw[leaves.start] = Some(chunk);
                self.raw_chunks += 1;
                continue;
            }
            for a in arrays {
                for (j, leaf) in compute_leaves(field, a)?.iter().enumerate() {
                    writers[leaves.start + j].write(leaf)?;
                }
            }
        }
        let mut rg = self.writer.next_row_group()?;
        for (w, raw) in writers.into_iter().zip(raw) {
            match raw {
                Some((pieces, close)) => rg.append_column(&pieces, close)?,
                None => w.close()?.append_to_row_group(&mut rg)?,
            }
        }
        rg.close()?;
        self.row_groups += 1;
        self.pending.clear();
        self.pending_rows = 0;
        Ok(())
    }

    /// Write what is queued and the footer; returns the writer.
    pub(crate) fn finish(mut self) -> Result<W> {
        self.flush()?;
        self.writer.into_inner()
    }

    #[cfg(test)]
    fn with_row_group_rows(mut self, n: usize) -> Self {
        self.row_group_rows = n;
        self
    }
}

/// Parquet settings of an export: zstd (level 1); integer leaves (ids, channels)
/// DELTA_BINARY_PACKED without dictionary (runs of equal or consecutive ids shrink to a
/// few bits per value either way, and the dictionary's hash lookups were a third of an
/// npy export's side file); floating-point leaves (the weights) PLAIN, uncompressed,
/// without dictionary and without statistics — trained weights hardly compress (1.08x
/// with zstd, measured on the store's columns), a dictionary of them only grows until
/// parquet-rs gives it up, and their min/max prune nothing, while computing all three
/// took half of a Parquet export's time (the store's own writer does the same,
/// `filterdb_store::write`).
fn export_properties(descr: &SchemaDescriptor) -> Result<WriterProperties> {
    let mut b =
        WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?));
    for col in descr.columns() {
        let float = matches!(
            col.physical_type(),
            PhysicalType::FLOAT | PhysicalType::DOUBLE
        ) || matches!(col.logical_type_ref(), Some(LogicalType::Float16));
        let integer = matches!(
            col.physical_type(),
            PhysicalType::INT32 | PhysicalType::INT64
        );
        if integer {
            b = b
                .set_column_dictionary_enabled(col.path().clone(), false)
                .set_column_encoding(col.path().clone(), Encoding::DELTA_BINARY_PACKED);
        }
        if float {
            let p = col.path().clone();
            b = b
                .set_column_compression(p.clone(), Compression::UNCOMPRESSED)
                .set_column_dictionary_enabled(p.clone(), false)
                .set_column_encoding(p.clone(), Encoding::PLAIN)
                .set_column_statistics_enabled(p, EnabledStatistics::None);
        }
    }
    Ok(b.build())
}

/// Repetition levels of `rows` lists of `size` values (0 at each list's first value, 1
/// elsewhere), RLE/bit-packed hybrid with bit width 1 and no length prefix.
fn repetition_levels(rows: usize, size: usize) -> Vec<u8> {
    // The bits repeat every `size` bytes (8 lists); runs hold a multiple of that.
    let pattern: Vec<u8> = (0..size)
        .map(|b| {
            (0..8).fold(0u8, |byte, j| {
                byte | (u8::from((b * 8 + j) % size != 0) << j)
            })
        })
        .collect();
    let per_run = (MAX_GROUPS_PER_RUN / size).max(1) * size;
    let total = rows * size;
    let groups = total.div_ceil(8);
    let mut out = Vec::with_capacity(groups + groups / per_run * 2 + 8);
    let mut done = 0;
    while done < groups {
        let n = per_run.min(groups - done);
        put_varint(&mut out, ((n as u64) << 1) | 1);
        out.extend((done..done + n).map(|g| pattern[g % size]));
        done += n;
    }
    // zero the padding bits after the last value
    let tail = total % 8;
    if tail != 0
        && let Some(last) = out.last_mut()
    {
        *last &= (1u8 << tail) - 1;
    }
    out
}

/// The column chunk of `arrays` (one per queued batch) if the field is a list of floats
/// of fixed size without NULLs at either level; `None` sends it down the generic path.
/// The chunk is its pieces: the page header, the levels, and the values where the
/// arrays hold them.
fn raw_list_chunk(
    field: &Field,
    arrays: &[&ArrayRef],
    descr: ColumnDescPtr,
) -> Result<Option<(Pieces, ColumnCloseResult)>> {
    let DataType::FixedSizeList(child, size) = field.data_type() else {
        return Ok(None);
    };
    let width = match child.data_type() {
        DataType::Float16 => 2,
        DataType::Float32 => 4,
        DataType::Float64 => 8,
        _ => return Ok(None),
    };
    let size = usize::try_from(*size).unwrap_or(0);
    if size == 0 || descr.max_rep_level() != 1 {
        return Ok(None);
    }
    let mut rows = 0;
    for a in arrays {
        let list = a.as_fixed_size_list();
        if list.null_count() > 0 || list.values().null_count() > 0 {
            return Ok(None);
        }
        rows += list.len();
    }
    let values = rows * size;
    let rep = repetition_levels(rows, size);
    let def = definition_levels(values, descr.max_def_level());
    let stored = rep.len() + def.len() + values * width;
    let header = match (
        u32::try_from(values),
        u32::try_from(rows),
        u32::try_from(rep.len()),
        u32::try_from(def.len()),
        u32::try_from(stored),
    ) {
        (Ok(v), Ok(r), Ok(rep), Ok(def), Ok(stored)) => {
            plain_page_v2_header(stored, v, r, def, rep)
        }
        _ => return Ok(None),
    };
    let mut parts = Vec::with_capacity(arrays.len() + 3);
    parts.extend([Bytes::from(header), Bytes::from(rep), Bytes::from(def)]);
    for a in arrays {
        // (a sliced list's values are sliced with it: they are exactly its rows')
        let v = a.as_fixed_size_list().values();
        let buffer = match v.data_type() {
            DataType::Float16 => v.as_primitive::<Float16Type>().values().inner(),
            DataType::Float32 => v.as_primitive::<Float32Type>().values().inner(),
            _ => v.as_primitive::<Float64Type>().values().inner(),
        };
        parts.push(Bytes::from_owner(ArrowBytes(buffer.clone())));
    }
    let pieces = Pieces::new(parts);
    let len = i64::try_from(pieces.len).unwrap_or(i64::MAX);
    let chunk = OnePageChunk {
        uncompressed: stored,
        rows,
        encodings: vec![Encoding::PLAIN, Encoding::RLE],
        compression: Compression::UNCOMPRESSED,
        statistics: None,
    };
    let close = chunk.close_result(descr, values as i64, len, stored as i64)?;
    Ok(Some((pieces, close)))
}

/// The Thrift (compact protocol) `PageHeader` of an uncompressed PLAIN DataPage v2 of
/// `stored` bytes without NULLs, as parquet-rs's page writer writes it (tested): the
/// header alone, where the page writer would also copy the page.
fn plain_page_v2_header(stored: u32, values: u32, rows: u32, def: u32, rep: u32) -> Vec<u8> {
    /// A field header (delta 1 from the last field id) and an i32's zigzag varint.
    fn next_i32(out: &mut Vec<u8>, v: u32) {
        out.push(0x15);
        let v = i32::try_from(v).unwrap_or(i32::MAX);
        put_varint(out, u64::from(((v << 1) ^ (v >> 31)) as u32));
    }
    const DATA_PAGE_V2: u32 = 3;
    const PLAIN: u32 = 0;
    let mut out = Vec::with_capacity(40);
    next_i32(&mut out, DATA_PAGE_V2); // 1: type
    next_i32(&mut out, stored); // 2: uncompressed_page_size
    next_i32(&mut out, stored); // 3: compressed_page_size
    out.push(0x5c); // 8 (delta 5): data_page_header_v2, a struct
    next_i32(&mut out, values); // 1: num_values
    next_i32(&mut out, 0); // 2: num_nulls
    next_i32(&mut out, rows); // 3: num_rows
    next_i32(&mut out, PLAIN); // 4: encoding
    next_i32(&mut out, def); // 5: definition_levels_byte_length
    next_i32(&mut out, rep); // 6: repetition_levels_byte_length
    out.push(0x12); // 7: is_compressed, false
    out.push(0); // end of data_page_header_v2
    out.push(0); // end of PageHeader
    out
}

/// An Arrow buffer as the owner of a [`Bytes`] (no copy).
struct ArrowBytes(Buffer);

impl AsRef<[u8]> for ArrowBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

/// A column chunk as pieces in file order, for `append_column`, which copies them into
/// the file: the one copy of the values an export makes. Gathering a row group's
/// values into one page buffer, which the page writer then copied with its header into
/// another, made two fresh ~19 MB buffers per row group of filters: in a profile of a
/// Parquet export, 37 % of the CPU went to the kernel zeroing their pages and 13 % to
/// the copies.
struct Pieces {
    parts: Vec<Bytes>,
    len: u64,
}

impl Pieces {
    fn new(parts: Vec<Bytes>) -> Pieces {
        let len = parts.iter().map(|p| p.len() as u64).sum();
        Pieces { parts, len }
    }
}

impl Length for Pieces {
    fn len(&self) -> u64 {
        self.len
    }
}

impl ChunkReader for Pieces {
    type T = PiecesRead;

    fn get_read(&self, start: u64) -> Result<PiecesRead> {
        let mut read = PiecesRead(self.parts.iter().cloned().collect());
        let skip = usize::try_from(start).unwrap_or(usize::MAX);
        std::io::copy(&mut (&mut read).take(skip as u64), &mut std::io::sink())?;
        Ok(read)
    }

    fn get_bytes(&self, start: u64, length: usize) -> Result<Bytes> {
        let mut out = Vec::with_capacity(length);
        self.get_read(start)?
            .take(length as u64)
            .read_to_end(&mut out)?;
        if out.len() != length {
            return Err(ParquetError::EOF(format!(
                "{length} bytes at {start} of a {}-byte chunk",
                self.len
            )));
        }
        Ok(Bytes::from(out))
    }
}

/// Reads [`Pieces`] in order.
struct PiecesRead(std::collections::VecDeque<Bytes>);

impl Read for PiecesRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while let Some(front) = self.0.front_mut() {
            if front.is_empty() {
                self.0.pop_front();
                continue;
            }
            let n = buf.len().min(front.len());
            buf[..n].copy_from_slice(&front[..n]);
            *front = front.slice(n..);
            return Ok(n);
        }
        Ok(0)
    }
}

/// The column chunk of `arrays` (one per queued batch) if the field is an Int32 or
/// Int64 column without NULLs: [`delta::int_chunk`] of the arrays' values where they
/// are. `None` sends it down the generic path.
fn raw_int_chunk(
    field: &Field,
    arrays: &[&ArrayRef],
    descr: ColumnDescPtr,
) -> Result<Option<(Bytes, ColumnCloseResult)>> {
    let rows: usize = arrays.iter().map(|a| a.len()).sum();
    if descr.max_rep_level() != 0
        || arrays.iter().any(|a| a.null_count() > 0)
        || rows == 0
        || u32::try_from(rows).is_err()
    {
        return Ok(None);
    }
    match (field.data_type(), descr.physical_type()) {
        (DataType::Int32, PhysicalType::INT32) => {
            delta::int_chunk(&values_of::<Int32Type>(arrays), descr).map(Some)
        }
        (DataType::Int64, PhysicalType::INT64) => {
            delta::int_chunk(&values_of::<Int64Type>(arrays), descr).map(Some)
        }
        _ => Ok(None),
    }
}

/// The values of primitive `arrays`, where they are.
fn values_of<'a, T: ArrowPrimitiveType>(arrays: &[&'a ArrayRef]) -> Vec<&'a [T::Native]> {
    arrays
        .iter()
        .map(|a| a.as_primitive::<T>().values().as_ref())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        FixedSizeListArray, Float16Array, Float32Array, Float64Array, Int32Array, Int64Array,
        StringArray, StructArray,
    };
    use arrow::buffer::NullBuffer;
    use arrow::datatypes::{Fields, Schema};
    use half::f16;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::file::statistics::Statistics;

    fn fsl(values: ArrayRef, size: i32, nulls: Option<NullBuffer>) -> ArrayRef {
        let field = Arc::new(Field::new_list_field(values.data_type().clone(), true));
        Arc::new(FixedSizeListArray::new(field, size, values, nulls))
    }

    /// Batches with f16 / f32 / f64 lists of 9 and 3, ints (consecutive Int64 ids,
    /// scattered Int32s), strings and a struct; batch `null_at` has a NULL list and a
    /// NULL Int32 (their row group takes the generic path for those two columns).
    fn batches(rows: &[usize], null_at: Option<usize>) -> (SchemaRef, Vec<RecordBatch>) {
        let mut out = Vec::new();
        let mut schema = None;
        let mut base = 0usize;
        for (b, &n) in rows.iter().enumerate() {
            let v = |k: usize, size: usize| (base * size + k) as f64 * 0.25 - 7.0;
            let nulls = (null_at == Some(b) && n > 0)
                .then(|| NullBuffer::from((0..n).map(|i| i != n / 2).collect::<Vec<_>>()));
            let w16 = fsl(
                Arc::new(Float16Array::from_iter_values(
                    (0..n * 9).map(|k| f16::from_f64(v(k, 9))),
                )),
                9,
                nulls.clone(),
            );
            let w32 = fsl(
                Arc::new(Float32Array::from_iter_values(
                    (0..n * 9).map(|k| v(k, 9) as f32),
                )),
                9,
                None,
            );
            let w64 = fsl(
                Arc::new(Float64Array::from_iter_values((0..n * 3).map(|k| v(k, 3)))),
                3,
                None,
            );
            let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(
                (base..base + n).map(|i| i as i64),
            ));
            let k: ArrayRef = Arc::new(Int32Array::new(
                (base..base + n)
                    .map(|i| ((i * 7919) % 1013) as i32 - 500 + (i as i32 >> 3) * 100_000)
                    .collect(),
                nulls.clone(),
            ));
            let names: ArrayRef = Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| format!("r{}", base + i)),
            ));
            let st: ArrayRef = Arc::new(StructArray::new(
                Fields::from(vec![
                    Field::new("a", DataType::Int64, false),
                    Field::new("b", DataType::Utf8, false),
                ]),
                vec![Arc::clone(&ids), Arc::clone(&names)],
                None,
            ));
            let fields = vec![
                Field::new("id", DataType::Int64, false),
                Field::new("w16", w16.data_type().clone(), true),
                Field::new("name", DataType::Utf8, false),
                Field::new("w32", w32.data_type().clone(), false),
                Field::new("s", st.data_type().clone(), false),
                Field::new("w64", w64.data_type().clone(), true),
                Field::new("k", DataType::Int32, true),
            ];
            let sch = Arc::new(Schema::new(fields));
            out.push(
                RecordBatch::try_new(Arc::clone(&sch), vec![ids, w16, names, w32, st, w64, k])
                    .unwrap(),
            );
            schema = Some(sch);
            base += n;
        }
        (schema.unwrap(), out)
    }

    /// Write and read back; returns (row groups, column chunks written raw).
    fn round_trip(rows: &[usize], null_at: Option<usize>, row_group_rows: usize) -> (usize, usize) {
        let (schema, input) = batches(rows, null_at);
        let mut w = RawParquetWriter::try_new(Vec::new(), &schema)
            .unwrap()
            .with_row_group_rows(row_group_rows);
        for b in &input {
            w.write(b).unwrap();
        }
        w.flush().unwrap();
        let counts = (w.row_groups, w.raw_chunks);
        let bytes = Bytes::from(w.finish().unwrap());
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
        assert_eq!(reader.schema().as_ref(), schema.as_ref());
        let got: Vec<RecordBatch> = reader
            .build()
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        let got = arrow::compute::concat_batches(&schema, &got).unwrap();
        let want = arrow::compute::concat_batches(&schema, &input).unwrap();
        assert_eq!(
            got, want,
            "rows {rows:?} null_at {null_at:?} row groups of {row_group_rows}"
        );
        counts
    }

    #[test]
    fn lists_and_ints_round_trip_through_raw_pages() {
        // the three list columns and the two integer columns of every row group go the
        // raw way
        assert_eq!(round_trip(&[5], None, 1 << 20), (1, 5));
        assert_eq!(round_trip(&[1, 7, 8, 9, 64, 1000], None, 1 << 20), (1, 5));
        // several row groups: [100, 3, 500] [57, 8, 1] with 128 rows each at least
        assert_eq!(round_trip(&[100, 3, 500, 57, 8, 1], None, 128), (2, 10));
        // a NULL list and a NULL Int32 in the first row group ([100, 3, 500]): its w16 and
        // k go the generic way
        assert_eq!(round_trip(&[100, 3, 500, 57, 8, 1], Some(2), 600), (2, 8));
        assert_eq!(round_trip(&[0, 4], None, 2), (1, 5));
        assert_eq!(round_trip(&[0], None, 8), (0, 0));
    }

    /// The raw integer chunks carry the min / max a reader prunes with, and runs take a
    /// few bytes.
    #[test]
    fn int_chunks_have_statistics() {
        // One row group from three batches: the chunks are encoded from the pieces.
        let (schema, input) = batches(&[1000, 1, 1999], None);
        let mut w = RawParquetWriter::try_new(Vec::new(), &schema).unwrap();
        for b in &input {
            w.write(b).unwrap();
        }
        let bytes = Bytes::from(w.finish().unwrap());
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
        let rg = reader.metadata().row_group(0);
        let col = |name: &str| {
            rg.columns()
                .iter()
                .find(|c| c.column_path().string() == name)
                .unwrap()
        };
        let id = col("id");
        assert_eq!(
            id.statistics(),
            Some(&Statistics::int64(
                Some(0),
                Some(2999),
                None,
                Some(0),
                false
            ))
        );
        assert!(id.encodings().any(|e| e == Encoding::DELTA_BINARY_PACKED));
        // consecutive ids: five bytes per block of 128 before zstd
        assert!(id.uncompressed_size() < 300, "{}", id.uncompressed_size());
        let k = col("k");
        let v: Vec<i32> = input
            .iter()
            .flat_map(|b| b.column(6).as_primitive::<Int32Type>().values().to_vec())
            .collect();
        let (min, max) = (v.iter().min().copied(), v.iter().max().copied());
        assert_eq!(
            k.statistics(),
            Some(&Statistics::int32(min, max, None, Some(0), false))
        );
        assert!(k.uncompressed_size() >= k.compressed_size());
    }

    /// The hand-written page header is the one parquet-rs's page writer writes for
    /// the same page, at sizes whose varints take 1 to 4 bytes.
    #[test]
    fn page_headers_are_the_page_writer_s() {
        use parquet::column::page::{CompressedPage, Page, PageWriter};
        use parquet::file::writer::{SerializedPageWriter, TrackedWrite};
        for (rows, size, width) in [
            (1usize, 9usize, 2usize),
            (7, 9, 8),
            (100, 9, 2),
            (70_000, 9, 4),
            (1 << 20, 9, 2),
            (3, 1, 2),
        ] {
            let values = rows * size;
            let (rep, def) = (rows / 7 + 1, 5);
            let stored = rep + def + values * width;
            let page = Page::DataPageV2 {
                buf: Bytes::from(vec![0u8; stored]),
                num_values: u32::try_from(values).unwrap(),
                encoding: Encoding::PLAIN,
                num_nulls: 0,
                num_rows: u32::try_from(rows).unwrap(),
                def_levels_byte_len: u32::try_from(def).unwrap(),
                rep_levels_byte_len: u32::try_from(rep).unwrap(),
                is_compressed: false,
                statistics: None,
            };
            let mut sink = TrackedWrite::new(Vec::new());
            {
                let mut pw = SerializedPageWriter::new(&mut sink);
                pw.write_page(CompressedPage::new(page, stored)).unwrap();
                pw.close().unwrap();
            }
            let written = sink.into_inner().unwrap();
            let ours = plain_page_v2_header(
                u32::try_from(stored).unwrap(),
                u32::try_from(values).unwrap(),
                u32::try_from(rows).unwrap(),
                u32::try_from(def).unwrap(),
                u32::try_from(rep).unwrap(),
            );
            assert_eq!(ours, &written[..written.len() - stored], "{rows} rows");
        }
    }

    /// A chunk's pieces read as one run of bytes from any start.
    #[test]
    fn pieces_read_in_order_from_any_start() {
        let parts = vec![
            Bytes::from_static(b"ab"),
            Bytes::new(),
            Bytes::from_static(b"cdef"),
        ];
        let pieces = Pieces::new(parts);
        assert_eq!(pieces.len(), 6);
        for start in 0..=6u64 {
            let mut out = Vec::new();
            pieces
                .get_read(start)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, &b"abcdef"[start as usize..]);
        }
        assert_eq!(pieces.get_bytes(1, 4).unwrap(), &b"bcde"[..]);
        assert!(pieces.get_bytes(3, 4).is_err());
    }

    #[test]
    fn level_encodings() {
        // 2 lists of 3: levels 0 1 1 0 1 1 -> one bit-packed group 0b110110, 6 values
        assert_eq!(repetition_levels(2, 3), vec![0b11, 0b0011_0110]);
        // 8 lists of 9 = 72 values = 9 groups, a multiple of the period
        let r = repetition_levels(8, 9);
        assert_eq!(r[0], (9 << 1) | 1);
        assert_eq!(r.len(), 10);
        // 150 lists of 9: runs of 63 groups (504 values)
        let r = repetition_levels(150, 9);
        assert_eq!((r[0], r[64]), (127, 127));
        assert_eq!(definition_levels(10, 1), vec![20, 1]);
        assert_eq!(definition_levels(300, 2), vec![0xd8, 0x04, 2]);
        assert!(definition_levels(10, 0).is_empty());
    }
}
