//! The SQL layer's error type and its conversions to and from DataFusion's.

use std::path::PathBuf;

use datafusion::error::DataFusionError;

/// Errors of the SQL layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqlError {
    /// Opening or reading the store failed.
    #[error(transparent)]
    Store(#[from] filterdb_store::StoreError),
    /// Planning or running a query failed.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    /// An Arrow error.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// Writing an export failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Writing Parquet failed.
    #[error("writing Parquet {path}: {source}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The Parquet error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// The query result does not fit the requested export.
    #[error("{0}")]
    Export(String),
}

/// Result with [`SqlError`].
pub type Result<T, E = SqlError> = std::result::Result<T, E>;

impl From<SqlError> for DataFusionError {
    fn from(e: SqlError) -> Self {
        match e {
            SqlError::DataFusion(e) => e,
            SqlError::Arrow(e) => DataFusionError::ArrowError(Box::new(e), None),
            other => DataFusionError::External(Box::new(other)),
        }
    }
}
