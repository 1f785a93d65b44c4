//! filterdb's ingest: reading trained CNNs, normalising their meta-parameters and
//! writing them into a [`filterdb_store`] store.
//!
//! The pipeline for one model file:
//!
//! 1. the reader is picked by extension. [`safetensors::read_safetensors`] memory-maps
//!    and hashes the file and parses its header into a [`RawModel`] (clear errors for
//!    missing, empty, truncated or corrupt files and unsupported dtypes); for `.onnx`
//!    files [`onnx::read_onnx`] decodes the graph into an [`OnnxModel`] (Conv weights,
//!    graph levels, producer, opsets), which [`normalise::normalise_onnx`] normalises
//!    with the graph depth rule; NumPy `.npz` archives and `.npy` arrays are read by
//!    [`npy::read_numpy`] into the same [`RawModel`] ([`npy::normalise_numpy`]);
//! 2. [`card::read_card`] reads an optional TOML model card, validated against
//!    `schemas/model-card.schema.json`;
//! 3. [`normalise::normalise`] merges command-line / manifest overrides over the card,
//!    checks `task` and `visual_category` against the [`vocab`]ularies, orders the 3x3
//!    layers by [`natural_sort()`] of their tensor names and builds a [`ModelInput`]
//!    that borrows the weights from the map, with a [`ValidationReport`] of what was
//!    skipped and why, and warnings with stable codes ([`Warning`]);
//! 4. [`ingest::ingest_one`] / [`ingest::ingest_manifest`] stage it in the store and
//!    commit it as a new version (a no-op when the same bytes are already stored).
//!
//! [`manifest`] reads bulk-ingest manifests (`.csv` / `.jsonl`), and [`synth`] writes
//! deterministic synthetic model zoos for tests and benchmarks.
//!
//! The CNN Filter DB release (an HDF5 file, `dataset.h5`) is imported without Python by
//! [`cnnfilterdb::import_cnnfilterdb`]: [`hdf5`] reads its `/filters` array in
//! hyperslabs and its pandas `/meta` table, and each release model is committed through
//! the same store protocol (`docs/import-cnnfilterdb.md`).
//!
//! ```no_run
//! use std::path::Path;
//! use filterdb_ingest::{IngestOptions, IngestOutcome, ModelOverrides, ingest_one};
//! use filterdb_store::Store;
//!
//! let store = Store::open("/data/zoo-store")?;
//! let mut writer = store.writer(true)?;
//! let outcome = ingest_one(
//!     &mut writer,
//!     Path::new("models/resnet18.safetensors"),
//!     Some(Path::new("models/resnet18.toml")),
//!     &ModelOverrides::default(),
//!     &IngestOptions::default(),
//! )?;
//! if let IngestOutcome::Committed { version, n_filters, .. } = outcome {
//!     println!("version {version}: {n_filters} filters");
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod card;
pub mod cnnfilterdb;
pub mod error;
pub mod hdf5;
pub mod ingest;
pub mod manifest;
pub mod natural_sort;
pub mod normalise;
pub mod npy;
pub mod onnx;
pub mod safetensors;
pub mod synth;
pub mod vocab;

pub use filterdb_store::{
    KernelData, KernelLayout, LayerInput, ModelInput, ModelMeta, SkippedTensor, SourceDtype,
    StoreError, ValidationReport, Warning,
};

pub use card::{LayerCard, ModelCard, ModelOverrides, parse_card, read_card};
pub use cnnfilterdb::{
    FailedModel, ImportOptions, ImportProgress, ImportReport, ImportedModel, NoImportProgress,
    SkippedModel, import_cnnfilterdb,
};
pub use error::{IngestError, Result, error_chain};
pub use hdf5::{MetaTable, MetaValue, ReleaseFile, read_meta_file};
pub use ingest::{
    BulkReport, CommittedRow, FailedRow, IngestOptions, IngestOutcome, NoProgress, Progress,
    SkippedRow, ingest_generated, ingest_manifest, ingest_one, vocab_extra,
};
pub use manifest::{Manifest, ManifestRow, RowError, read_manifest};
pub use natural_sort::{natural_cmp, natural_sort};
pub use normalise::{
    NormaliseOptions, VocabExtra, normalise, normalise_onnx, normalise_onnx_with, normalise_with,
};
pub use npy::{
    NumpyModel, is_numpy_path, normalise_numpy, normalise_numpy_with, read_npy, read_npz,
    read_numpy,
};
pub use onnx::{OnnxConv, OnnxModel, read_onnx};
pub use safetensors::{RawModel, RawTensor, read_safetensors};
pub use synth::{
    GenModel, GenOptions, GenSummary, GenTensor, Generator, generate_model, generate_zoo,
};
pub use vocab::canonicalise;
