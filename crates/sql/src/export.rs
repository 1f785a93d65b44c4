//! Writing query results for notebooks: Parquet, Arrow IPC, CSV, JSON lines and `.npy`.
//!
//! Every writer streams: batches are written as the query produces them, so an export
//! needs memory for one batch, not for the result.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, FixedSizeListArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::prelude::SessionContext;
use futures::StreamExt;

use crate::error::{Result, SqlError};

/// An export's output file, written under a temporary name next to its destination and
/// renamed into place only once complete and synced to disk: a failed or interrupted
/// export leaves no partial file, and a file already at the destination stays as it was
/// until the new one replaces it whole.
struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl Staged {
    fn new(dest: &Path) -> Staged {
        let name = dest
            .file_name()
            .map_or_else(|| "export".into(), |n| n.to_string_lossy().into_owned());
        Staged {
            tmp: dest.with_file_name(format!(".{name}.{}.filterdb-tmp", std::process::id())),
            dest: dest.to_path_buf(),
            committed: false,
        }
    }

    /// fsync the finished file, rename it to its destination, fsync the folder.
    fn commit(mut self) -> Result<()> {
        File::open(&self.tmp)
            .and_then(|f| f.sync_all())
            .map_err(io("syncing", &self.tmp))?;
        std::fs::rename(&self.tmp, &self.dest).map_err(io("renaming into place", &self.dest))?;
        self.committed = true;
        if let Some(dir) = self.dest.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            // Best effort: not every platform can open a folder to sync it.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Output formats of [`export_query`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// Apache Parquet (zstd).
    Parquet,
    /// Arrow IPC file (Feather v2).
    Arrow,
    /// CSV with a header; list columns become `<name>_0 .. <name>_8`.
    Csv,
    /// JSON lines, one object per row.
    Json,
    /// NumPy: the `weights` column as an `(N, 9)` array of the store's dtype, plus
    /// `<stem>.parquet` with the other columns in the same row order.
    Npy,
}

impl std::str::FromStr for ExportFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "parquet" => ExportFormat::Parquet,
            "arrow" | "ipc" | "feather" => ExportFormat::Arrow,
            "csv" => ExportFormat::Csv,
            "json" | "jsonl" | "ndjson" => ExportFormat::Json,
            "npy" | "numpy" => ExportFormat::Npy,
            other => {
                return Err(format!(
                    "unknown export format {other:?}: expected parquet, arrow, csv, json or npy"
                ));
            }
        })
    }
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportSummary {
    /// Rows written.
    pub rows: u64,
    /// Files written.
    pub files: Vec<PathBuf>,
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SqlError {
    let path = path.to_path_buf();
    move |source| SqlError::Io {
        action,
        path,
        source,
    }
}

/// A sink that receives record batches.
pub trait BatchSink {
    /// Write one batch.
    ///
    /// # Errors
    /// I/O or encoding errors.
    fn write(&mut self, batch: &RecordBatch) -> Result<()>;
    /// Finish the output.
    ///
    /// # Errors
    /// I/O or encoding errors.
    fn finish(self: Box<Self>) -> Result<()>;
}

mod output;
mod raw_parquet;

use output::Output;

/// Where a sink's bytes go, closed once the sink has written all of them: an export's
/// [`Output`] file waits there for its writes (and reports their errors); a stream is
/// flushed.
pub trait SinkOutput: Write + Send {
    /// Complete the output; `path` names it in errors.
    ///
    /// # Errors
    /// I/O.
    fn close(self, path: &Path) -> Result<()>;
}

impl<W: Write + Send> SinkOutput for BufWriter<W> {
    fn close(mut self, path: &Path) -> Result<()> {
        self.flush().map_err(io("writing", path))
    }
}

impl SinkOutput for Output {
    fn close(self, _path: &Path) -> Result<()> {
        self.finish()
    }
}

struct ParquetSink<W: SinkOutput> {
    w: raw_parquet::RawParquetWriter<W>,
    path: PathBuf,
}
impl<W: SinkOutput> BatchSink for ParquetSink<W> {
    fn write(&mut self, b: &RecordBatch) -> Result<()> {
        self.w.write(b).map_err(|source| SqlError::Parquet {
            path: self.path.clone(),
            source,
        })
    }
    fn finish(self: Box<Self>) -> Result<()> {
        let path = self.path.clone();
        let w = self.w.finish().map_err(|source| SqlError::Parquet {
            path: path.clone(),
            source,
        })?;
        w.close(&path)
    }
}

struct IpcSink<W: SinkOutput>(arrow::ipc::writer::FileWriter<W>, PathBuf);
impl<W: SinkOutput> BatchSink for IpcSink<W> {
    fn write(&mut self, b: &RecordBatch) -> Result<()> {
        Ok(self.0.write(b)?)
    }
    fn finish(self: Box<Self>) -> Result<()> {
        self.0.into_inner()?.close(&self.1)
    }
}

struct CsvSink<W: SinkOutput>(arrow::csv::Writer<W>, PathBuf);
impl<W: SinkOutput> BatchSink for CsvSink<W> {
    fn write(&mut self, b: &RecordBatch) -> Result<()> {
        Ok(self.0.write(&flatten_lists(b)?)?)
    }
    fn finish(self: Box<Self>) -> Result<()> {
        self.0.into_inner().close(&self.1)
    }
}

struct JsonSink<W: SinkOutput>(arrow::json::LineDelimitedWriter<W>, PathBuf);
impl<W: SinkOutput> BatchSink for JsonSink<W> {
    fn write(&mut self, b: &RecordBatch) -> Result<()> {
        Ok(self.0.write(b)?)
    }
    fn finish(mut self: Box<Self>) -> Result<()> {
        self.0.finish()?;
        self.0.into_inner().close(&self.1)
    }
}

/// A sink writing `format` to `out` (any writer: a file, stdout).
///
/// # Errors
/// Unsupported combinations (npy needs a file path: use [`export_query`]).
pub fn sink_for<W: SinkOutput + 'static>(
    format: ExportFormat,
    out: W,
    schema: &SchemaRef,
    path: &Path,
) -> Result<Box<dyn BatchSink + Send>> {
    Ok(match format {
        ExportFormat::Parquet => {
            let w = raw_parquet::RawParquetWriter::try_new(out, schema).map_err(|source| {
                SqlError::Parquet {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
            Box::new(ParquetSink {
                w,
                path: path.to_path_buf(),
            })
        }
        ExportFormat::Arrow => Box::new(IpcSink(
            arrow::ipc::writer::FileWriter::try_new(out, schema)?,
            path.to_path_buf(),
        )),
        ExportFormat::Csv => Box::new(CsvSink(
            arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(out),
            path.to_path_buf(),
        )),
        ExportFormat::Json => Box::new(JsonSink(
            arrow::json::LineDelimitedWriter::new(out),
            path.to_path_buf(),
        )),
        ExportFormat::Npy => {
            return Err(SqlError::Export(
                "npy output needs a file path (-o PATH)".into(),
            ));
        }
    })
}

/// Replace each FixedSizeList column `c` by columns `c_0 .. c_{n-1}` (for CSV).
///
/// # Errors
/// Arrow errors.
pub fn flatten_lists(batch: &RecordBatch) -> Result<RecordBatch> {
    if !batch
        .schema()
        .fields()
        .iter()
        .any(|f| matches!(f.data_type(), DataType::FixedSizeList(..)))
    {
        return Ok(batch.clone());
    }
    let mut fields = Vec::new();
    let mut cols: Vec<ArrayRef> = Vec::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        if let DataType::FixedSizeList(child, n) = f.data_type() {
            let list = c.as_fixed_size_list();
            let values = list.values();
            for j in 0..*n as usize {
                let idx = arrow::array::UInt64Array::from_iter_values(
                    (0..list.len()).map(|i| (list.value_offset(i) as usize + j) as u64),
                );
                let col = arrow::compute::take(values.as_ref(), &idx, None)?;
                fields.push(Field::new(
                    format!("{}_{j}", f.name()),
                    child.data_type().clone(),
                    true,
                ));
                cols.push(col);
            }
        } else {
            fields.push(f.as_ref().clone());
            cols.push(Arc::clone(c));
        }
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

/// A `.npy` writer for an `(N, 9)` array whose N is known only at the end: the header
/// is written with room for any N and patched by `finish`.
///
/// Hand-written rather than a crate: the format is one fixed header (NEP 1) and we need
/// to stream with an unknown row count, which the crates' writers do not offer.
pub struct NpyWriter {
    file: Output,
    path: PathBuf,
    descr: &'static str,
    rows: u64,
}

const NPY_HEADER_LEN: usize = 128;

impl NpyWriter {
    /// Create `path` for an `(N, 9)` array of `descr` (`<f2`, `<f4`, `<f8`).
    ///
    /// # Errors
    /// I/O.
    pub fn create(path: &Path, descr: &'static str) -> Result<NpyWriter> {
        let mut w = NpyWriter {
            // The header stays in memory until `finish` patches the row count in.
            file: Output::create(path, true)?,
            path: path.to_path_buf(),
            descr,
            rows: 0,
        };
        w.write_header()?;
        Ok(w)
    }

    fn header(&self) -> Vec<u8> {
        let dict = format!(
            "{{'descr': '{}', 'fortran_order': False, 'shape': ({}, 9), }}",
            self.descr, self.rows
        );
        // magic(6) + version(2) + header_len(2) + dict padded with spaces + '\n'
        let pad = NPY_HEADER_LEN - 10 - dict.len() - 1;
        let mut h = Vec::with_capacity(NPY_HEADER_LEN);
        h.extend_from_slice(b"\x93NUMPY\x01\x00");
        h.extend_from_slice(&((NPY_HEADER_LEN - 10) as u16).to_le_bytes());
        h.extend_from_slice(dict.as_bytes());
        h.extend(std::iter::repeat_n(b' ', pad));
        h.push(b'\n');
        h
    }

    fn write_header(&mut self) -> Result<()> {
        let h = self.header();
        self.file.write_all(&h).map_err(io("writing", &self.path))
    }

    /// Append the rows of a FixedSizeList<_, 9> array (NULL rows are an error).
    ///
    /// # Errors
    /// NULL filters, a wrong element type, I/O.
    pub fn append(&mut self, list: &FixedSizeListArray) -> Result<()> {
        if list.value_length() != 9 {
            return Err(SqlError::Export(format!(
                "npy export expects 9 weights per row, got {}",
                list.value_length()
            )));
        }
        if list.null_count() > 0 {
            return Err(SqlError::Export(
                "npy export: the weights column holds NULL filters".into(),
            ));
        }
        let start = list.offset() * 9;
        let len = list.len() * 9;
        let values = list.values();
        let bytes: &[u8] = match values.data_type() {
            DataType::Float16 => {
                let v = values
                    .as_primitive::<arrow::datatypes::Float16Type>()
                    .values();
                slice_bytes(&v[start..start + len])
            }
            DataType::Float32 => {
                let v = values
                    .as_primitive::<arrow::datatypes::Float32Type>()
                    .values();
                slice_bytes(&v[start..start + len])
            }
            DataType::Float64 => {
                let v = values
                    .as_primitive::<arrow::datatypes::Float64Type>()
                    .values();
                slice_bytes(&v[start..start + len])
            }
            other => {
                return Err(SqlError::Export(format!(
                    "npy export: unsupported weight type {other}"
                )));
            }
        };
        self.file
            .write_all(bytes)
            .map_err(io("writing", &self.path))?;
        self.rows += list.len() as u64;
        Ok(())
    }

    /// Patch the header with the final row count and complete the file.
    ///
    /// # Errors
    /// I/O.
    pub fn finish(mut self) -> Result<u64> {
        let h = self.header();
        self.file.patch_head(&h)?;
        self.file.finish()?;
        Ok(self.rows)
    }
}

/// A sink that writes on a thread of its own, behind a queue of `depth` batches. Every
/// export writes through one (see [`drain`]), so the query's workers never wait for
/// the file's writes; the npy export's side file has a second one, because it encodes
/// its id columns a row group (a million rows) at a time, and on the thread that
/// writes the `.npy` that stalled the weights, and with them the query, once per row
/// group.
struct Threaded {
    tx: Option<tokio::sync::mpsc::Sender<RecordBatch>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Threaded {
    fn spawn(mut sink: Box<dyn BatchSink + Send>, depth: usize) -> Result<Threaded> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<RecordBatch>(depth);
        let thread = std::thread::Builder::new()
            .name("filterdb-export".into())
            .spawn(move || {
                while let Some(batch) = rx.blocking_recv() {
                    sink.write(&batch)?;
                }
                sink.finish()
            })
            .map_err(|e| SqlError::Export(format!("starting an export writer: {e}")))?;
        Ok(Threaded {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queue `batch` from async code; `false` when the thread has stopped (on an error,
    /// which [`Threaded::join`] returns).
    async fn send(&self, batch: RecordBatch) -> bool {
        match &self.tx {
            Some(tx) => tx.send(batch).await.is_ok(),
            None => false,
        }
    }

    /// Close the queue and wait for the thread: its result.
    fn join(&mut self) -> Result<()> {
        self.tx = None;
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| SqlError::Export("an export writer panicked".into()))?,
            None => Err(SqlError::Export("an export writer had stopped".into())),
        }
    }
}

impl BatchSink for Threaded {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if let Some(tx) = &self.tx
            && tx.blocking_send(batch.clone()).is_ok()
        {
            return Ok(());
        }
        // The thread stopped on an error: that error is the answer.
        self.join()?;
        Err(SqlError::Export(
            "an export writer stopped before its input ended".into(),
        ))
    }
    fn finish(mut self: Box<Self>) -> Result<()> {
        self.join()
    }
}

/// Batches queued for the npy export's side file: more than a row group's encoding
/// takes the query to produce (ids are ~24 bytes a row).
const SIDE_QUEUE: usize = 64;

/// The npy export's two outputs: the weights as `.npy`, the other columns as Parquet.
struct NpySink {
    npy: NpyWriter,
    side: Box<dyn BatchSink + Send>,
    /// The `weights` column, and the others in order.
    widx: usize,
    others: Vec<usize>,
}

impl BatchSink for NpySink {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.npy
            .append(batch.column(self.widx).as_fixed_size_list())?;
        self.side.write(&batch.project(&self.others)?)
    }
    fn finish(self: Box<Self>) -> Result<()> {
        self.npy.finish()?;
        self.side.finish()
    }
}

/// Batches queued between a query and its writer thread: about a million filters
/// (~20 MB of float16 weights), so the query keeps going while the writer encodes a
/// row group (a Parquet export's id chunks, a million rows at a time). With 16 the
/// query waited: paired Parquet exports of 24M filters took 0.78-0.87 of the time with
/// 128, npy exports 0.92, for 40-80 MiB more peak memory.
const WRITE_QUEUE: usize = 128;

/// Run `stream` into `sink`, which writes on a thread of its own so that the query's
/// workers never wait for the file's encoding and writes (the copies into the page
/// cache, before exports wrote directly, were a third of an export's time, serial with
/// the query). Returns the rows written; the sink is finished once the stream ends,
/// and its error or the query's is returned.
async fn drain(
    mut stream: SendableRecordBatchStream,
    sink: Box<dyn BatchSink + Send>,
) -> Result<u64> {
    let mut writer = Threaded::spawn(sink, WRITE_QUEUE)?;
    let mut rows = 0u64;
    let mut query = Ok(());
    while let Some(batch) = stream.next().await {
        match batch {
            Ok(b) => {
                rows += b.num_rows() as u64;
                // A stopped writer failed: its error is returned below.
                if !writer.send(b).await {
                    break;
                }
            }
            Err(e) => {
                query = Err(e);
                break;
            }
        }
    }
    // Waiting for the writer to finish blocks: not on the runtime's workers.
    let written = tokio::task::spawn_blocking(move || writer.join())
        .await
        .map_err(|e| SqlError::Export(format!("export writer: {e}")))?;
    query?;
    written?;
    Ok(rows)
}

/// View a slice of little-endian plain numbers as bytes.
fn slice_bytes<T: arrow::datatypes::ArrowNativeType>(v: &[T]) -> &[u8] {
    arrow::datatypes::ToByteSlice::to_byte_slice(v)
}

fn npy_descr(t: &DataType) -> Option<&'static str> {
    match t {
        DataType::Float16 => Some("<f2"),
        DataType::Float32 => Some("<f4"),
        DataType::Float64 => Some("<f8"),
        _ => None,
    }
}

/// Run `sql` and write its result to `path` in `format`. Each file appears only when
/// complete (written under a temporary name, synced, renamed); on an error nothing is
/// left behind and an earlier file at `path` is untouched.
///
/// # Errors
/// Query errors, a result without a `weights` column for npy, I/O.
pub async fn export_query(
    ctx: &SessionContext,
    sql: &str,
    format: ExportFormat,
    path: &Path,
) -> Result<ExportSummary> {
    let df = ctx.sql(sql).await?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let stream = df.execute_stream().await?;
    if format == ExportFormat::Npy {
        let Ok(widx) = schema.index_of("weights") else {
            return Err(SqlError::Export(
                "npy export needs a `weights` column (FixedSizeList of 9) in the query result"
                    .into(),
            ));
        };
        let DataType::FixedSizeList(child, 9) = schema.field(widx).data_type() else {
            return Err(SqlError::Export(format!(
                "npy export: `weights` must be a FixedSizeList of 9, got {}",
                schema.field(widx).data_type()
            )));
        };
        let Some(descr) = npy_descr(child.data_type()) else {
            return Err(SqlError::Export(format!(
                "npy export: unsupported weight type {}",
                child.data_type()
            )));
        };
        let side_path = path.with_extension("parquet");
        let others: Vec<usize> = (0..schema.fields().len()).filter(|&i| i != widx).collect();
        let side_schema = Arc::new(schema.project(&others)?);
        let npy_out = Staged::new(path);
        let side_out = Staged::new(&side_path);
        let sink = NpySink {
            npy: NpyWriter::create(&npy_out.tmp, descr)?,
            side: Box::new(Threaded::spawn(
                sink_for(
                    ExportFormat::Parquet,
                    Output::create(&side_out.tmp, false)?,
                    &side_schema,
                    &side_path,
                )?,
                SIDE_QUEUE,
            )?),
            widx,
            others,
        };
        let rows = drain(stream, Box::new(sink)).await?;
        npy_out.commit()?;
        side_out.commit()?;
        return Ok(ExportSummary {
            rows,
            files: vec![path.to_path_buf(), side_path],
        });
    }
    let out = Staged::new(path);
    let sink = sink_for(format, Output::create(&out.tmp, false)?, &schema, path)?;
    let rows = drain(stream, sink).await?;
    out.commit()?;
    Ok(ExportSummary {
        rows,
        files: vec![path.to_path_buf()],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int32Array;
    use std::sync::Mutex;

    /// Records the batches it is given; fails on the `fail_at`-th, or in `finish`.
    struct Recording {
        seen: Arc<Mutex<Vec<i32>>>,
        fail_at: Option<usize>,
        fail_finish: bool,
    }
    impl BatchSink for Recording {
        fn write(&mut self, batch: &RecordBatch) -> Result<()> {
            let mut seen = self.seen.lock().unwrap();
            if Some(seen.len()) == self.fail_at {
                return Err(SqlError::Export(format!(
                    "disk full at batch {}",
                    seen.len()
                )));
            }
            seen.extend(
                batch
                    .column(0)
                    .as_primitive::<arrow::datatypes::Int32Type>()
                    .values(),
            );
            Ok(())
        }
        fn finish(self: Box<Self>) -> Result<()> {
            if self.fail_finish {
                return Err(SqlError::Export("closing failed".into()));
            }
            Ok(())
        }
    }

    fn batch(v: i32) -> RecordBatch {
        RecordBatch::try_from_iter([("id", Arc::new(Int32Array::from(vec![v])) as ArrayRef)])
            .unwrap()
    }

    fn threaded(fail_at: Option<usize>, fail_finish: bool) -> (Threaded, Arc<Mutex<Vec<i32>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Recording {
            seen: Arc::clone(&seen),
            fail_at,
            fail_finish,
        };
        (Threaded::spawn(Box::new(sink), 2).unwrap(), seen)
    }

    #[test]
    fn a_threaded_sink_writes_every_batch_in_order() {
        let (mut t, seen) = threaded(None, false);
        for v in 0..100 {
            t.write(&batch(v)).unwrap();
        }
        Box::new(t).finish().unwrap();
        assert_eq!(*seen.lock().unwrap(), (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn a_threaded_sink_returns_its_thread_s_error() {
        let (mut t, _) = threaded(Some(3), false);
        // The queue holds 2 batches: the error comes back within a few writes.
        let err = (0..10)
            .find_map(|v| t.write(&batch(v)).err())
            .expect("the writer's error");
        assert!(err.to_string().contains("disk full at batch 3"), "{err}");

        let (mut t, _) = threaded(None, true);
        t.write(&batch(1)).unwrap();
        let err = Box::new(t).finish().unwrap_err();
        assert!(err.to_string().contains("closing failed"), "{err}");
    }
}
