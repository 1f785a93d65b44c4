//! Printing query results on stdout: table, CSV, JSON lines or Parquet.

use std::io::Write;

use anyhow::{Context, Result};
use arrow::array::RecordBatch;
use datafusion::dataframe::DataFrame;
use futures::StreamExt;

/// How `filterdb sql` prints results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// An aligned text table.
    Table,
    /// CSV with a header (list columns flattened).
    Csv,
    /// JSON lines.
    Json,
    /// Parquet bytes (redirect to a file).
    Parquet,
}

/// Run `df` and print its result; returns the number of rows.
pub async fn print_dataframe(df: DataFrame, format: OutputFormat) -> Result<u64> {
    let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
    let mut stream = df.execute_stream().await?;
    let mut rows = 0u64;
    match format {
        OutputFormat::Table => {
            // A table needs its column widths: print in chunks of up to 10 000 rows.
            let mut pending: Vec<RecordBatch> = Vec::new();
            let mut pending_rows = 0usize;
            let mut printed_any = false;
            let mut out = std::io::stdout().lock();
            while let Some(b) = stream.next().await {
                let b = b?;
                rows += b.num_rows() as u64;
                pending_rows += b.num_rows();
                pending.push(b);
                if pending_rows >= 10_000 {
                    writeln!(
                        out,
                        "{}",
                        arrow::util::pretty::pretty_format_batches(&pending)?
                    )?;
                    pending.clear();
                    pending_rows = 0;
                    printed_any = true;
                }
            }
            if !pending.is_empty() || !printed_any {
                if pending.is_empty() {
                    pending.push(RecordBatch::new_empty(schema));
                }
                writeln!(
                    out,
                    "{}",
                    arrow::util::pretty::pretty_format_batches(&pending)?
                )?;
            }
            eprintln!("{rows} row{}", if rows == 1 { "" } else { "s" });
        }
        OutputFormat::Csv | OutputFormat::Json | OutputFormat::Parquet => {
            let export = match format {
                OutputFormat::Csv => filterdb_sql::ExportFormat::Csv,
                OutputFormat::Json => filterdb_sql::ExportFormat::Json,
                _ => filterdb_sql::ExportFormat::Parquet,
            };
            let stdout = std::io::BufWriter::new(std::io::stdout());
            let mut sink = filterdb_sql::export::sink_for(
                export,
                stdout,
                &schema,
                std::path::Path::new("<stdout>"),
            )?;
            while let Some(b) = stream.next().await {
                let b = b?;
                rows += b.num_rows() as u64;
                sink.write(&b)?;
            }
            sink.finish().context("writing to stdout")?;
        }
    }
    Ok(rows)
}
