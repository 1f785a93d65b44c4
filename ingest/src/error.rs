//! The one error type of `filterdb-ingest`.

use std::path::PathBuf;

/// Everything that can go wrong while reading, normalising or ingesting a model.
///
/// Every variant names the file (and where it applies the tensor, field or row) and says
/// what was expected, so that a user can fix the input without reading the source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The input file does not exist.
    #[error("{path}: no such file")]
    FileNotFound {
        /// The path as given.
        path: PathBuf,
    },

    /// Any other I/O failure on a file.
    #[error("{path}: {action}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done (`reading`, `writing`, `memory-mapping`, ...).
        action: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// An ONNX model that cannot be read: not a protobuf, no graph, a cycle, a Conv
    /// without weights, weights that do not fit their shape, bad external data.
    #[error("{path}: ONNX model: {what}: {detail}")]
    Onnx {
        /// The .onnx file.
        path: PathBuf,
        /// The part of the model (node, tensor, graph).
        what: String,
        /// What is wrong and what was expected.
        detail: String,
    },

    /// A NumPy `.npz` archive or `.npy` file that cannot be read: not a zip archive or
    /// not an `.npy` array (bad magic), truncated, a header that does not parse, a member
    /// that fails its CRC, a pickled (`object`) array, a rank-4 array of a dtype other
    /// than float16/32/64.
    #[error("{path}: {}{detail}", member.as_ref().map(|m| format!("member {m}: ")).unwrap_or_default())]
    Numpy {
        /// The .npz / .npy file.
        path: PathBuf,
        /// The archive member at fault, if one.
        member: Option<String>,
        /// What is wrong and what was expected.
        detail: String,
    },

    /// The CNN Filter DB release (or its `--meta` export) does not have the expected
    /// shape: a missing dataset, a wrong shape or type, a bad meta row or column.
    #[error("{path}: {location}: {detail}")]
    Release {
        /// The release file (or the `--meta` file).
        path: PathBuf,
        /// The dataset, field, row and column (`dataset /filters`, `/meta/table row 7,
        /// column filter_ids`).
        location: String,
        /// What is wrong and what was expected.
        detail: String,
    },

    /// The HDF5 library failed on a release file.
    #[error("{path}: {location}: HDF5 error: {message}")]
    Hdf5 {
        /// The file.
        path: PathBuf,
        /// What was being read (`opening the file`, `dataset /filters, rows 0..4096`).
        location: String,
        /// The library's message (its error stack, innermost first).
        message: String,
    },

    /// `/meta` is in a pandas format that only Python can read.
    #[error(
        "{path}: {dataset}: {detail}. Export it once with pandas and pass the export with \
         --meta (Parquet or CSV):\n    import pandas as pd\n    \
         pd.read_hdf({path:?}, \"meta\").to_parquet(\"meta.parquet\")   # or .to_csv(\"meta.csv\")\n\
         then: filterdb import-cnnfilterdb --meta meta.parquet {path:?}"
    )]
    PickledMeta {
        /// The release file.
        path: PathBuf,
        /// The group (`/meta`).
        dataset: String,
        /// What was found.
        detail: String,
    },

    /// Task or visual-category labels of a release that are not in the vocabulary.
    #[error(
        "{path}: {} label(s) of the release are not in the store's vocabulary:\n  {}\n\
         Fix: rerun with --add-vocab to add them to this store (one `vocab add` version each, \
         in the store's history), add the ones you want with `filterdb vocab add --kind KIND \
         VALUE`, or use --fix-labels for the paper's own label fixes",
        values.len(),
        values.join("\n  ")
    )]
    UnknownReleaseVocabulary {
        /// The release file.
        path: PathBuf,
        /// One line per value: kind, value, the models that use it and close matches.
        values: Vec<String>,
    },

    /// The file holds no bytes at all.
    #[error("{path}: the file is empty (0 bytes); expected a model file (safetensors or ONNX)")]
    EmptyFile {
        /// The file.
        path: PathBuf,
    },

    /// The file is shorter than its header says.
    #[error("{path}: truncated safetensors file: {detail}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was expected and what was found.
        detail: String,
    },

    /// The JSON header cannot be read or does not describe the data.
    #[error("{path}: corrupt safetensors header: {detail}")]
    CorruptHeader {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },

    /// The header-length prefix is over the 100 MB limit of the safetensors format.
    #[error(
        "{path}: safetensors header of {declared} bytes is over the 100 MB limit \
         (corrupt file or not a safetensors file?)"
    )]
    HeaderTooLarge {
        /// The file.
        path: PathBuf,
        /// The length the 8-byte prefix declares.
        declared: u64,
    },

    /// Any other error of the `safetensors` crate.
    #[error("{path}: reading safetensors file")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The original error.
        #[source]
        source: safetensors::SafeTensorError,
    },

    /// A rank-4 (convolution) tensor has an element type filterdb cannot store.
    #[error(
        "{path}: tensor {tensor} has dtype {dtype} and shape {shape:?}; convolution weights \
         must be F16, BF16, F32 or F64"
    )]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// Tensor name.
        tensor: String,
        /// The dtype found, as safetensors spells it.
        dtype: String,
        /// The tensor's shape.
        shape: Vec<usize>,
    },

    /// The file holds no rank-4 tensor with a 3x3 spatial kernel.
    #[error(
        "{path}: no 3x3 convolution weights found (layout {layout}); expected at least one \
         rank-4 tensor with a 3x3 kernel; found: {found}. Pass --allow-empty to store the \
         model without filters (its meta-parameters and kernel counts)"
    )]
    NoConvKernels {
        /// The file.
        path: PathBuf,
        /// The layout used to find the spatial dimensions.
        layout: &'static str,
        /// A few tensor names and shapes that were found.
        found: String,
    },

    /// A vocabulary value (task, visual category) is not in the vocabulary.
    #[error(
        "unknown {field} {value:?}{}; if it is right, add it with \
         `filterdb vocab add --kind {field} {value:?}`",
        did_you_mean(suggestions)
    )]
    UnknownVocabulary {
        /// `task` or `visual_category`.
        field: String,
        /// The value given.
        value: String,
        /// Up to three close matches, canonical spelling.
        suggestions: Vec<String>,
    },

    /// A vocabulary kind other than `task` or `visual_category`.
    #[error("unknown vocabulary kind {kind:?}; expected `task` or `visual_category`")]
    UnknownVocabularyKind {
        /// The kind given.
        kind: String,
    },

    /// The model card is not valid TOML.
    #[error("model card {path}: not valid TOML: {message}")]
    CardSyntax {
        /// The card file.
        path: PathBuf,
        /// The TOML parser's message (with line and column).
        message: String,
    },

    /// The model card does not match `schemas/model-card.schema.json`.
    #[error("model card {path} does not match the model-card schema:\n  {}", errors.join("\n  "))]
    CardInvalid {
        /// The card file.
        path: PathBuf,
        /// One line per failure: `at '/field': what was expected`.
        errors: Vec<String>,
    },

    /// The card's per-layer entries do not fit the model's tensors.
    #[error("model card {path}: {detail}")]
    CardLayers {
        /// The card file.
        path: PathBuf,
        /// What is wrong, naming the layers.
        detail: String,
    },

    /// A value given for a model field is not allowed (e.g. a bad `layout`).
    #[error("{source_name}: field {field}: {detail}")]
    InvalidField {
        /// Where the value came from (card path, manifest row, command line).
        source_name: String,
        /// The field.
        field: String,
        /// What was expected.
        detail: String,
    },

    /// The manifest as a whole cannot be read (missing, unknown extension, bad header).
    #[error("manifest {path}: {detail}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },

    /// One manifest row is bad.
    #[error("manifest {path}, line {line}{}: {detail}", field.as_ref().map(|f| format!(", field {f}")).unwrap_or_default())]
    ManifestRow {
        /// The manifest file.
        path: PathBuf,
        /// 1-based line number in the manifest file.
        line: usize,
        /// The offending column or key, if one.
        field: Option<String>,
        /// What is wrong and what was expected.
        detail: String,
    },

    /// A manifest row names a file outside the manifest's folder.
    #[error(
        "manifest {manifest}, line {line}: path {path} is outside the manifest's folder {root}; \
         paths must be relative and stay inside it"
    )]
    PathEscapes {
        /// The manifest file.
        manifest: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The path as written in the manifest.
        path: String,
        /// The manifest's folder.
        root: PathBuf,
    },

    /// Another model with this name but different bytes is already stored.
    #[error(
        "{path}: a different model named {name:?} is already stored (model_id {model_id}, \
         sha256 {stored_sha256}); use --replace to replace it, or give another --name"
    )]
    NameConflict {
        /// The file being ingested.
        path: PathBuf,
        /// The model name.
        name: String,
        /// The stored model's id.
        model_id: i64,
        /// The stored model's source hash.
        stored_sha256: String,
    },

    /// A generator option is out of range.
    #[error("generator option {option}: {detail}")]
    GenOption {
        /// The option.
        option: &'static str,
        /// What was expected.
        detail: String,
    },

    /// The ingest worker pool cannot be started.
    #[error("cannot start {threads} ingest worker threads: {detail}")]
    ThreadPool {
        /// Threads asked for.
        threads: usize,
        /// The OS's reason.
        detail: String,
    },

    /// The store refused an operation on a model.
    #[error("{path}: {action}")]
    Store {
        /// The model file.
        path: PathBuf,
        /// `staging`, `committing`, ...
        action: &'static str,
        /// The store's error.
        #[source]
        source: Box<crate::StoreError>,
    },
}

fn did_you_mean(suggestions: &[String]) -> String {
    if suggestions.is_empty() {
        String::new()
    } else {
        format!(" (did you mean {}?)", suggestions.join(", "))
    }
}

/// Formats an error and its chain of sources on one line, `outer: inner: innermost`.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

/// `Result` with [`IngestError`] as the default error.
pub type Result<T, E = IngestError> = std::result::Result<T, E>;
