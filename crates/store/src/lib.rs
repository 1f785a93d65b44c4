//! filterdb's store: trained CNN filters as immutable, per-model Parquet files plus a
//! versioned commit log that makes every change atomic.
//!
//! A store is a directory:
//!
//! ```text
//! STORE/filterdb.json                      format marker and precision
//! STORE/_log/00000000000000000007.json     version 7: what it added / removed
//! STORE/models/model-7/<uuid>.parquet      one row: model 7's meta-parameters
//! STORE/layers/model-7/<uuid>.parquet      model 7's 3x3 layers
//! STORE/filters/model-7/<uuid>.parquet     model 7's filters (w0..w8)
//! STORE/_tmp/                              staging area of running writers
//! ```
//!
//! `docs/store-format.md` describes the format for readers outside filterdb.
//!
//! ```no_run
//! use filterdb_store::{Precision, Store};
//! let store = Store::init("/tmp/zoo-store", Precision::F16)?;
//! let snap = store.snapshot(None)?;
//! println!("version {} holds {} filters", snap.version, snap.n_filters());
//! Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod convert;
pub mod delta;
mod error;
mod input;
mod log;
mod schema;
mod write;

use std::fs::{self, File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use error::{Result, StoreError};
pub use input::{
    KernelData, KernelLayout, LayerInput, ModelInput, ModelMeta, SkippedTensor, SourceDtype,
    ValidationReport, Warning,
};
pub use log::{Action, CHECKPOINT_INTERVAL, Commit, ModelEntry, ModelFiles, Snapshot};
pub use schema::{
    Precision, WEIGHT_COLUMNS, filters_schema, layers_schema, models_schema, schema_to_json,
};
pub use write::{FILTERS_ROW_GROUP, OnePageChunk, StageOptions};

use error::IoContext;

/// Version of the on-disk format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The store's marker file.
pub const META_FILE: &str = "filterdb.json";
const LOCK_FILE: &str = "_lock";
const TMP_DIR: &str = "_tmp";
/// The three table directories.
pub const TABLES: [&str; 3] = ["models", "layers", "filters"];

/// Contents of `filterdb.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreMeta {
    /// Always `"filterdb"`.
    pub format: String,
    /// On-disk format version.
    pub format_version: u32,
    /// Weight precision.
    pub precision: Precision,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: i64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// An opened store (read-only handle; see [`Store::writer`] for changes).
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    meta: StoreMeta,
}

impl Store {
    /// Create a new, empty store at `root` (which must not exist or be empty).
    ///
    /// # Errors
    /// [`StoreError::AlreadyExists`] if `root` holds anything; I/O errors.
    pub fn init(root: impl AsRef<Path>, precision: Precision) -> Result<Store> {
        let root = root.as_ref();
        if root.exists() {
            let mut entries = fs::read_dir(root).ctx("listing", root)?;
            if entries.next().is_some() {
                return Err(StoreError::AlreadyExists {
                    path: root.to_path_buf(),
                });
            }
        }
        fs::create_dir_all(root).ctx("creating", root)?;
        for d in [log::LOG_DIR, TMP_DIR, "models", "layers", "filters"] {
            let p = root.join(d);
            fs::create_dir_all(&p).ctx("creating", &p)?;
        }
        let meta = StoreMeta {
            format: "filterdb".into(),
            format_version: FORMAT_VERSION,
            precision,
            created_ms: now_ms(),
        };
        let commit = Commit {
            version: 0,
            timestamp_ms: meta.created_ms,
            operation: "init".into(),
            detail: format!("precision {precision}"),
            actions: vec![Action::Init { precision }],
            next_model_id: 0,
            next_filter_id: 0,
        };
        log::write_commit(root, &commit)?;
        // The marker is written last: a directory without it is not (yet) a store.
        let bytes = serde_json::to_vec_pretty(&meta).map_err(|source| StoreError::Json {
            path: root.join(META_FILE),
            source,
        })?;
        log::write_durable(root, &root.join(META_FILE), &bytes, false)?;
        Ok(Store {
            root: root.to_path_buf(),
            meta,
        })
    }

    /// Open an existing store.
    ///
    /// # Errors
    /// [`StoreError::NotAStore`] when `root` has no `filterdb.json`; a newer format.
    pub fn open(root: impl AsRef<Path>) -> Result<Store> {
        let root = root.as_ref();
        let meta_path = root.join(META_FILE);
        let bytes = match fs::read(&meta_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotAStore {
                    path: root.to_path_buf(),
                });
            }
            Err(e) => return Err(e).ctx("reading", &meta_path),
        };
        let meta: StoreMeta =
            serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
                path: meta_path.clone(),
                source,
            })?;
        if meta.format != "filterdb" {
            return Err(StoreError::Corrupt {
                path: meta_path,
                message: format!("format is {:?}, expected \"filterdb\"", meta.format),
            });
        }
        if meta.format_version > FORMAT_VERSION {
            return Err(StoreError::UnsupportedFormat {
                path: meta_path,
                found: meta.format_version,
                supported: FORMAT_VERSION,
            });
        }
        Ok(Store {
            root: root.to_path_buf(),
            meta,
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Weight precision.
    pub fn precision(&self) -> Precision {
        self.meta.precision
    }

    /// Contents of `filterdb.json`.
    pub fn meta(&self) -> &StoreMeta {
        &self.meta
    }

    /// The state at `version` (the newest when `None`).
    ///
    /// # Errors
    /// [`StoreError::NoSuchVersion`] for a version that does not exist or was vacuumed.
    pub fn snapshot(&self, version: Option<u64>) -> Result<Snapshot> {
        log::load_snapshot(&self.root, version)
    }

    /// Every commit, oldest first.
    ///
    /// # Errors
    /// I/O or a corrupt log file.
    pub fn history(&self) -> Result<Vec<Commit>> {
        log::history(&self.root)
    }

    /// Absolute path of a file named in the log.
    pub fn path_of(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    /// Take the store's write lock. With `wait`, block until another writer finishes;
    /// otherwise fail with [`StoreError::Locked`].
    ///
    /// # Errors
    /// [`StoreError::Locked`]; I/O errors.
    pub fn writer(&self, wait: bool) -> Result<StoreWriter> {
        let lock_path = self.root.join(LOCK_FILE);
        let mut lock = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .ctx("opening", &lock_path)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = lock.read_to_string(&mut holder);
                let holder = if holder.trim().is_empty() {
                    "unknown process".to_string()
                } else {
                    holder.trim().to_string()
                };
                if !wait {
                    return Err(StoreError::Locked {
                        path: self.root.clone(),
                        holder,
                    });
                }
                eprintln!("filterdb: waiting for the store's write lock ({holder}) ...");
                lock.lock().ctx("locking", &lock_path)?;
            }
            Err(TryLockError::Error(e)) => return Err(e).ctx("locking", &lock_path),
        }
        // Best effort: say who holds the lock, for the message above.
        let _ = lock.set_len(0);
        let _ = lock.rewind();
        let _ = write!(lock, "pid {}", std::process::id());
        let snapshot = self.snapshot(None)?;
        let ids = (snapshot.next_model_id, snapshot.next_filter_id);
        Ok(StoreWriter {
            store: self.clone(),
            _lock: lock,
            snapshot,
            ids: Mutex::new(ids),
        })
    }
}

/// A model written to the staging area, not yet visible.
#[derive(Debug)]
pub struct StagedModel {
    dir: PathBuf,
    entry: ModelEntry,
    /// The validation report as stored (the normaliser's plus the store's own checks,
    /// with the counts); change it with [`StagedModel::add_warning`].
    report: ValidationReport,
    /// The `models` row as written (to rewrite its report).
    models_row: arrow::array::RecordBatch,
    /// Size of the staged `models` file (part of `entry.bytes`).
    models_bytes: u64,
    /// Appended to the commit's `detail` in the log (e.g. label fixes an import applied).
    note: Option<String>,
}

impl StagedModel {
    /// Record `note` in the history: [`StoreWriter::commit`] appends it to the version's
    /// `detail` (shown by `filterdb info --history`).
    #[must_use]
    pub fn with_note(mut self, note: impl Into<String>) -> StagedModel {
        self.note = Some(note.into());
        self
    }

    /// The validation report as it will be stored.
    pub fn report(&self) -> &ValidationReport {
        &self.report
    }

    /// Add a warning to the stored report (rewrites the staged one-row `models` file),
    /// e.g. [`Warning::DUPLICATE_NAME`] once the caller knows the commit replaces a model.
    ///
    /// # Errors
    /// I/O and Parquet errors; the staged model is then still intact.
    pub fn add_warning(&mut self, warning: Warning) -> Result<()> {
        let mut report = self.report.clone();
        report.warnings.push(warning);
        let (row, bytes) = write::rewrite_report(&self.dir, &self.models_row, &report)?;
        self.entry.bytes = self.entry.bytes - self.models_bytes + bytes;
        self.models_bytes = bytes;
        self.models_row = row;
        self.report = report;
        Ok(())
    }

    /// The model id this model will get.
    pub fn model_id(&self) -> i64 {
        self.entry.model_id
    }
    /// Number of filters written.
    pub fn n_filters(&self) -> u64 {
        self.entry.n_filters
    }
    /// Number of layers written.
    pub fn n_layers(&self) -> u64 {
        self.entry.n_layers
    }
    /// Bytes written.
    pub fn bytes(&self) -> u64 {
        self.entry.bytes
    }
    /// The model's name.
    pub fn name(&self) -> &str {
        &self.entry.name
    }
}

impl Drop for StagedModel {
    fn drop(&mut self) {
        // A staged model that was never committed leaves nothing behind.
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// How a staged model enters the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitMode {
    /// A new model; its name must not exist.
    Add,
    /// Replace `model_id` in the same commit.
    Replace {
        /// The model to remove.
        model_id: i64,
    },
}

/// Exclusive writer of a store: holds the lock until dropped.
///
/// [`StoreWriter::stage`] takes `&self` and may run on many threads at once;
/// [`StoreWriter::commit`] publishes one staged model per version.
#[derive(Debug)]
pub struct StoreWriter {
    store: Store,
    _lock: File,
    snapshot: Snapshot,
    ids: Mutex<(i64, i64)>,
}

impl StoreWriter {
    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The latest committed state.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Convert and write `model` into the staging area. Ids are reserved now; the
    /// model becomes visible only through [`StoreWriter::commit`].
    ///
    /// A model without layers is staged too: its `layers` and `filters` files have no
    /// rows, and its report warns [`Warning::NO_3X3_KERNELS`] or
    /// [`Warning::NO_CONVOLUTIONS`].
    ///
    /// # Errors
    /// Non-finite weights (unless allowed), a tensor whose bytes do not match its
    /// shape, I/O and Parquet errors.
    pub fn stage(&self, model: &ModelInput<'_>, opts: &StageOptions) -> Result<StagedModel> {
        let n_filters = model.n_filters() as i64;
        let (model_id, first_filter_id) = {
            let mut ids = self
                .ids
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let got = *ids;
            *ids = (got.0 + 1, got.1 + n_filters);
            got
        };
        let dir = self
            .store
            .root
            .join(TMP_DIR)
            .join(format!("model-{model_id}-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&dir).ctx("creating", &dir)?;
        let staged_dir = dir.clone();
        let result = write::write_model(
            &dir,
            self.store.precision(),
            model,
            model_id,
            first_filter_id,
            now_ms(),
            opts,
        );
        let written = match result {
            Ok(w) => w,
            Err(e) => {
                let _ = fs::remove_dir_all(&staged_dir);
                return Err(e);
            }
        };
        let uuid = uuid::Uuid::new_v4();
        let rel = |table: &str| format!("{table}/model-{model_id}/{uuid}.parquet");
        Ok(StagedModel {
            dir,
            note: None,
            report: written.report,
            models_row: written.models_row,
            models_bytes: written.models_bytes,
            entry: ModelEntry {
                model_id,
                name: model.meta.name.clone(),
                source_sha256: model.meta.source_sha256.clone(),
                n_layers: written.n_layers,
                n_filters: written.n_filters,
                first_filter_id,
                bytes: written.bytes,
                task: model.meta.task.clone(),
                visual_category: model.meta.visual_category.clone(),
                files: ModelFiles {
                    models: rel("models"),
                    layers: rel("layers"),
                    filters: rel("filters"),
                },
                added_in: 0,
            },
        })
    }

    /// Publish a staged model as a new version; returns the version.
    ///
    /// The data files are moved into their table directories first, then the log entry
    /// is written: a crash before the entry leaves only unreferenced files (removed by
    /// `vacuum`), never a partly visible model.
    ///
    /// # Errors
    /// A duplicate name with [`CommitMode::Add`]; an unknown model to replace; I/O.
    pub fn commit(&mut self, mut staged: StagedModel, mode: CommitMode) -> Result<u64> {
        let mut actions = Vec::with_capacity(2);
        let operation = match mode {
            CommitMode::Add => {
                if let Some(existing) = self.snapshot.find_by_name(&staged.entry.name) {
                    return Err(StoreError::DuplicateName {
                        name: staged.entry.name.clone(),
                        model_id: existing.model_id,
                    });
                }
                "ingest"
            }
            CommitMode::Replace { model_id } => {
                if !self.snapshot.models.contains_key(&model_id) {
                    return Err(StoreError::NoSuchModel { model_id });
                }
                if let Some(other) = self.snapshot.find_by_name(&staged.entry.name)
                    && other.model_id != model_id
                {
                    return Err(StoreError::DuplicateName {
                        name: staged.entry.name.clone(),
                        model_id: other.model_id,
                    });
                }
                actions.push(Action::RemoveModel { model_id });
                "replace"
            }
        };
        let version = self.snapshot.version + 1;
        staged.entry.added_in = version;
        for (table, file) in TABLES.iter().zip(staged.entry.files.all()) {
            let src = staged.dir.join(format!("{table}.parquet"));
            let dest = self.store.root.join(file);
            let parent = dest.parent().unwrap_or(&self.store.root).to_path_buf();
            fs::create_dir_all(&parent).ctx("creating", &parent)?;
            fs::rename(&src, &dest).ctx("moving staged file to", &dest)?;
            log::sync_dir(&parent)?;
        }
        let mut detail = format!("{} (model_id {})", staged.entry.name, staged.entry.model_id);
        if let Some(note) = &staged.note {
            detail.push_str("; ");
            detail.push_str(note);
        }
        actions.push(Action::AddModel(staged.entry.clone()));
        let ids = *self
            .ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.write_version(operation, detail, actions, ids)?;
        Ok(version)
    }

    /// Add a value to a vocabulary (`task` or `visual_category`) in its own version.
    ///
    /// # Errors
    /// I/O.
    pub fn commit_vocab_add(&mut self, kind: &str, value: &str) -> Result<u64> {
        let ids = *self
            .ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.write_version(
            "vocab add",
            format!("{kind}: {value}"),
            vec![Action::VocabAdd {
                kind: kind.to_string(),
                value: value.to_string(),
            }],
            ids,
        )
    }

    /// Remove a model in its own version (its files stay for older versions until vacuumed).
    ///
    /// # Errors
    /// [`StoreError::NoSuchModel`]; I/O.
    pub fn remove_model(&mut self, model_id: i64) -> Result<u64> {
        let Some(entry) = self.snapshot.models.get(&model_id) else {
            return Err(StoreError::NoSuchModel { model_id });
        };
        let detail = format!("{} (model_id {model_id})", entry.name);
        let ids = *self
            .ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.write_version(
            "remove",
            detail,
            vec![Action::RemoveModel { model_id }],
            ids,
        )
    }

    fn write_version(
        &mut self,
        operation: &str,
        detail: String,
        actions: Vec<Action>,
        ids: (i64, i64),
    ) -> Result<u64> {
        let commit = Commit {
            version: self.snapshot.version + 1,
            timestamp_ms: now_ms(),
            operation: operation.to_string(),
            detail,
            actions,
            next_model_id: ids.0,
            next_filter_id: ids.1,
        };
        log::write_commit(&self.store.root, &commit)?;
        let mut snap = self.snapshot.clone();
        snap.apply(&commit);
        if snap.version.is_multiple_of(CHECKPOINT_INTERVAL) {
            // Best effort: a missing checkpoint only costs replay time.
            let _ = log::write_checkpoint(&self.store.root, &snap);
        }
        self.snapshot = snap;
        Ok(commit.version)
    }

    /// Delete what no readable version references: staging leftovers of crashed
    /// writers, unreferenced data files and, with `prune_history`, the files of models
    /// removed before the current version (older versions then become unreadable).
    ///
    /// # Errors
    /// I/O.
    pub fn vacuum(&mut self, prune_history: bool) -> Result<VacuumReport> {
        let root = self.store.root.clone();
        let mut report = VacuumReport::default();
        // 1. staging area and temp files of the log
        let tmp = root.join(TMP_DIR);
        if tmp.exists() {
            for e in fs::read_dir(&tmp).ctx("listing", &tmp)? {
                let p = e.ctx("listing", &tmp)?.path();
                report.bytes += dir_size(&p);
                report.staging += 1;
                if p.is_dir() {
                    fs::remove_dir_all(&p).ctx("removing", &p)?;
                } else {
                    fs::remove_file(&p).ctx("removing", &p)?;
                }
            }
        }
        let logdir = log::log_dir(&root);
        for e in fs::read_dir(&logdir).ctx("listing", &logdir)? {
            let p = e.ctx("listing", &logdir)?.path();
            if p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(".tmp-"))
            {
                fs::remove_file(&p).ctx("removing", &p)?;
                report.staging += 1;
            }
        }
        // 2. which files are still referenced
        let history = self.store.history()?;
        let min_readable = if prune_history {
            self.snapshot.version
        } else {
            self.snapshot.min_readable_version
        };
        let mut keep = std::collections::HashSet::new();
        for m in self.snapshot.models.values() {
            keep.extend(m.files.all().map(str::to_string));
        }
        if !prune_history {
            for c in &history {
                for a in &c.actions {
                    if let Action::AddModel(m) = a {
                        keep.extend(m.files.all().map(str::to_string));
                    }
                }
            }
        }
        for table in TABLES {
            let tdir = root.join(table);
            if !tdir.exists() {
                continue;
            }
            for part in fs::read_dir(&tdir).ctx("listing", &tdir)? {
                let part = part.ctx("listing", &tdir)?.path();
                if !part.is_dir() {
                    continue;
                }
                for f in fs::read_dir(&part).ctx("listing", &part)? {
                    let f = f.ctx("listing", &part)?.path();
                    let rel = f
                        .strip_prefix(&root)
                        .map(|r| r.to_string_lossy().replace('\\', "/"))
                        .unwrap_or_default();
                    if !keep.contains(&rel) {
                        report.bytes += dir_size(&f);
                        fs::remove_file(&f).ctx("removing", &f)?;
                        report.files += 1;
                    }
                }
                if fs::read_dir(&part)
                    .map(|mut d| d.next().is_none())
                    .unwrap_or(false)
                {
                    let _ = fs::remove_dir(&part);
                }
            }
        }
        if prune_history && min_readable > self.snapshot.min_readable_version {
            let ids = *self
                .ids
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            report.version = Some(self.write_version(
                "vacuum",
                format!("history before version {min_readable} pruned"),
                vec![Action::Vacuum {
                    min_readable_version: min_readable,
                }],
                ids,
            )?);
        }
        Ok(report)
    }
}

fn dir_size(p: &Path) -> u64 {
    match fs::metadata(p) {
        Ok(m) if m.is_file() => m.len(),
        Ok(m) if m.is_dir() => fs::read_dir(p)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| dir_size(&e.path())).sum())
            .unwrap_or(0),
        _ => 0,
    }
}

/// What [`StoreWriter::vacuum`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VacuumReport {
    /// Staging directories and temp files of crashed writers.
    pub staging: u64,
    /// Unreferenced data files.
    pub files: u64,
    /// Bytes freed.
    pub bytes: u64,
    /// The version recording pruned history, if any.
    pub version: Option<u64>,
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use arrow::array::AsArray;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;

    fn one_layer_model(name: &str) -> ModelInput<'static> {
        ModelInput {
            meta: ModelMeta {
                name: name.into(),
                conv_tensors: 1,
                ..Default::default()
            },
            layers: vec![LayerInput {
                layer_name: "conv".into(),
                conv_depth: 0,
                conv_depth_norm: 0.0,
                depth_rule: "name_order".into(),
                out_channels: 1,
                in_channels: 1,
                groups: 1,
                weights: KernelData {
                    dtype: SourceDtype::F32,
                    layout: KernelLayout::Oihw,
                    bytes: Cow::Owned([0.5f32; 9].iter().flat_map(|v| v.to_le_bytes()).collect()),
                },
            }],
        }
    }

    /// A warning added to a staged model is in the committed `models` file, and the log's
    /// byte count matches the files.
    #[test]
    fn added_warning_is_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path().join("s"), Precision::F16).unwrap();
        let mut w = store.writer(false).unwrap();
        let mut staged = w
            .stage(&one_layer_model("a"), &StageOptions::default())
            .unwrap();
        assert!(staged.report().warnings.is_empty());
        staged
            .add_warning(Warning::new(Warning::DUPLICATE_NAME, "replaced model_id 9"))
            .unwrap();
        assert_eq!(staged.report().warnings.len(), 1);
        w.commit(staged, CommitMode::Add).unwrap();
        let snap = store.snapshot(None).unwrap();
        let entry = &snap.models[&0];
        let sizes: u64 = entry
            .files
            .all()
            .iter()
            .map(|f| fs::metadata(store.path_of(f)).unwrap().len())
            .sum();
        assert_eq!(entry.bytes, sizes);
        let file = File::open(store.path_of(&entry.files.models)).unwrap();
        let batch = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let json = batch
            .column_by_name("report")
            .unwrap()
            .as_string::<i32>()
            .value(0)
            .to_owned();
        let report = ValidationReport::from_json(&json).unwrap();
        assert_eq!(
            report.warnings,
            [Warning::new(Warning::DUPLICATE_NAME, "replaced model_id 9")]
        );
        assert_eq!((report.layers_3x3, report.filters), (1, 1));
        assert!(json.contains(r#""code":"duplicate_name""#), "{json}");
    }

    /// A model without layers commits, and the store still counts it.
    #[test]
    fn empty_model_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path().join("s"), Precision::F32).unwrap();
        let mut w = store.writer(false).unwrap();
        let mut m = one_layer_model("empty");
        m.layers.clear();
        let staged = w.stage(&m, &StageOptions::default()).unwrap();
        assert!(staged.report().has_warning(Warning::NO_3X3_KERNELS));
        w.commit(staged, CommitMode::Add).unwrap();
        let staged = w
            .stage(&one_layer_model("full"), &StageOptions::default())
            .unwrap();
        w.commit(staged, CommitMode::Add).unwrap();
        let snap = store.snapshot(None).unwrap();
        assert_eq!(snap.models.len(), 2);
        assert_eq!(snap.n_filters(), 1);
        assert_eq!(snap.models[&0].n_filters, 0);
        assert_eq!(snap.models[&1].first_filter_id, 0);
    }
}
