//! sqllogictest over filterdb sessions.
//!
//! Files under `tests/slt/` run on a session with every function and no tables;
//! files under `tests/slt/store_f16/` and `tests/slt/store_f32/` run on a session
//! over the fixture store of that precision ([`crate::common::fixture_store`]).
//! Floats print in Rust's shortest round-trip form; wrap computed floats in `round()`.

use std::path::{Path, PathBuf};

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::DataType;
use datafusion::prelude::SessionContext;
use sqllogictest::{DBOutput, DefaultColumnType};

/// One sqllogictest "connection": a DataFusion session.
pub struct FilterDb {
    ctx: SessionContext,
}

/// A failed statement, as sqllogictest sees it.
#[derive(Debug)]
pub struct SltError(String);

impl std::fmt::Display for SltError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for SltError {}

fn column_type(t: &DataType) -> DefaultColumnType {
    match t {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => DefaultColumnType::Integer,
        DataType::Float16 | DataType::Float32 | DataType::Float64 | DataType::Decimal128(..) => {
            DefaultColumnType::FloatingPoint
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DefaultColumnType::Text,
        _ => DefaultColumnType::Any,
    }
}

fn cell(col: &dyn Array, row: usize) -> Result<String, SltError> {
    if col.is_null(row) {
        return Ok("NULL".into());
    }
    let s = arrow::util::display::array_value_to_string(col, row)
        .map_err(|e| SltError(e.to_string()))?;
    Ok(if s.is_empty() { "(empty)".into() } else { s })
}

fn to_rows(batches: &[RecordBatch]) -> Result<Vec<Vec<String>>, SltError> {
    let mut rows = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            rows.push(
                b.columns()
                    .iter()
                    .map(|c| cell(c.as_ref(), r))
                    .collect::<Result<Vec<_>, _>>()?,
            );
        }
    }
    Ok(rows)
}

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for FilterDb {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let df = self
            .ctx
            .sql(sql)
            .await
            .map_err(|e| SltError(e.to_string()))?;
        let schema = df.schema().as_arrow().clone();
        let is_statement = schema.fields().is_empty()
            || sql.trim_start().to_ascii_uppercase().starts_with("CREATE")
            || sql.trim_start().to_ascii_uppercase().starts_with("SET");
        let batches = df.collect().await.map_err(|e| SltError(e.to_string()))?;
        if is_statement {
            return Ok(DBOutput::StatementComplete(0));
        }
        Ok(DBOutput::Rows {
            types: schema
                .fields()
                .iter()
                .map(|f| column_type(f.data_type()))
                .collect(),
            rows: to_rows(&batches)?,
        })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "filterdb"
    }
}

fn slt_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("tests/slt exists")
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            slt_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "slt") {
            out.push(p);
        }
    }
}

async fn session_for(file: &Path) -> SessionContext {
    let parent = file
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("");
    let opts = filterdb_sql::SessionOptions::default();
    match parent {
        "store_f16" | "store_f32" => {
            let store = filterdb_store::Store::open(crate::common::fixture_store(&parent[6..]))
                .expect("fixture store");
            filterdb_sql::store_session(&store, None, &opts)
                .await
                .expect("store session")
        }
        _ => filterdb_sql::new_session(&opts).expect("session"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqllogictests() {
    let root = crate::common::repo_root().join("tests/slt");
    let mut files = Vec::new();
    slt_files(&root, &mut files);
    assert!(!files.is_empty(), "no .slt files under {}", root.display());
    let filter = std::env::var("FILTERDB_SLT_FILTER").unwrap_or_default();
    let complete = std::env::var_os("FILTERDB_SLT_COMPLETE").is_some();
    let mut failures = Vec::new();
    for file in files
        .iter()
        .filter(|f| f.to_string_lossy().contains(&filter))
    {
        let ctx = session_for(file).await;
        let mut runner = sqllogictest::Runner::new(move || {
            let ctx = ctx.clone();
            async move { Ok::<_, SltError>(FilterDb { ctx }) }
        });
        if complete {
            runner
                .update_test_file(
                    file,
                    " ",
                    sqllogictest::default_validator,
                    sqllogictest::default_normalizer,
                    sqllogictest::strict_column_validator,
                )
                .await
                .unwrap_or_else(|e| panic!("completing {}: {e}", file.display()));
        } else if let Err(e) = runner.run_file_async(file).await {
            failures.push(format!("{}:\n{}", file.display(), e.display(false)));
        }
    }
    assert!(
        failures.is_empty(),
        "sqllogictest failures:\n{}",
        failures.join("\n\n")
    );
}
