//! The store's error type.

use std::path::PathBuf;

/// Everything that can go wrong reading or writing a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An I/O operation on a store file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done (`creating`, `reading`, ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The directory is not a filterdb store.
    #[error(
        "{path} is not a filterdb store (no filterdb.json); create one with `filterdb init {path}`"
    )]
    NotAStore {
        /// The directory.
        path: PathBuf,
    },
    /// `init` on a directory that already holds a store or other files.
    #[error("{path} already exists and is not empty; refusing to create a store there")]
    AlreadyExists {
        /// The directory.
        path: PathBuf,
    },
    /// A store file does not have the expected content.
    #[error("corrupt store file {path}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was expected.
        message: String,
    },
    /// The store was written by a newer filterdb.
    #[error(
        "{path}: store format version {found} is newer than this filterdb understands ({supported})"
    )]
    UnsupportedFormat {
        /// The store's metadata file.
        path: PathBuf,
        /// The version found.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// Another process holds the store's write lock and we were told not to wait.
    #[error("store {path} is locked by another writer ({holder}); retry later or drop --no-wait")]
    Locked {
        /// The store.
        path: PathBuf,
        /// What the lock file says about its holder.
        holder: String,
    },
    /// A version that does not exist (or was vacuumed away) was requested.
    #[error("store {path} has no readable version {version} (readable: {min}..={max})")]
    NoSuchVersion {
        /// The store.
        path: PathBuf,
        /// The requested version.
        version: u64,
        /// The oldest readable version.
        min: u64,
        /// The newest version.
        max: u64,
    },
    /// A weight is NaN or infinite (or overflows float16) and non-finite values were not allowed.
    #[error(
        "model {model}: tensor {tensor}: filter {filter} holds a non-finite weight ({value}){hint}; pass --allow-nonfinite to store it anyway"
    )]
    NonFinite {
        /// The model's name.
        model: String,
        /// The tensor's name.
        tensor: String,
        /// Index of the filter within the layer (out-channel-major).
        filter: usize,
        /// The offending value as read (or as converted).
        value: String,
        /// Extra explanation (float16 overflow).
        hint: &'static str,
    },
    /// A layer's byte buffer does not match its declared shape and dtype.
    #[error(
        "model {model}: tensor {tensor}: expected {expected} bytes for [{out}, {inp}, 3, 3] {dtype}, found {found}"
    )]
    BadTensorSize {
        /// The model's name.
        model: String,
        /// The tensor's name.
        tensor: String,
        /// Expected byte count.
        expected: usize,
        /// Actual byte count.
        found: usize,
        /// Output channels.
        out: usize,
        /// Input channels.
        inp: usize,
        /// dtype name.
        dtype: &'static str,
    },
    /// A model with this name already exists (and no replacement was asked for).
    #[error(
        "a model named {name:?} already exists (model_id {model_id}); pass --replace to replace it"
    )]
    DuplicateName {
        /// The name.
        name: String,
        /// The existing model.
        model_id: i64,
    },
    /// Replacing or removing a model that is not in the store.
    #[error("store has no model with model_id {model_id}")]
    NoSuchModel {
        /// The id.
        model_id: i64,
    },
    /// Writing Parquet failed.
    #[error("writing {path}: {source}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The Parquet error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// Building an Arrow batch failed (an internal invariant).
    #[error("building Arrow data: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// JSON (de)serialisation of a log entry failed.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
}

/// Result with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Attach a path and an action to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn ctx(self, action: &'static str, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, action: &'static str, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| StoreError::Io {
            action,
            path: path.to_path_buf(),
            source,
        })
    }
}
