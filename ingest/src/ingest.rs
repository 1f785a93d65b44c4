//! Ingest orchestration used by the CLI: one file, or a manifest in parallel.
//!
//! A model is identified by the sha256 of its file: ingesting bytes that are already
//! stored is a no-op that says so ([`IngestOutcome::AlreadyPresent`]), so re-running a
//! manifest ingests only what is missing. A different file under a stored model's name
//! is an error unless [`IngestOptions::replace`]; the replacing model's report then warns
//! `duplicate_name`, naming the model it replaced.
//!
//! [`ingest_manifest`] reads, normalises and stages models on a rayon pool, largest
//! files first (staging only needs `&StoreWriter`), and commits them one at a time, in
//! manifest order, on the calling thread: each model is its own version, and a failing
//! row does not stop the others. Model ids are handed out as models are staged, so
//! they follow the staging order, not the manifest's.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock, mpsc};

use filterdb_store::{
    CommitMode, Snapshot, StageOptions, StagedModel, StoreWriter, ValidationReport, Warning,
};

use crate::card::{ModelOverrides, read_card};
use crate::error::{IngestError, Result, error_chain};
use crate::manifest::{ManifestRow, RowError};
use crate::normalise::{NormaliseOptions, VocabExtra, normalise_onnx_with, normalise_with};
use crate::npy::{is_numpy_path, normalise_numpy_with, read_numpy};
use crate::onnx::{is_onnx_path, read_onnx};
use crate::safetensors::{RawModel, read_safetensors};
use crate::synth::Generator;
use crate::vocab::{KIND_TASK, KIND_VISUAL_CATEGORY};

/// Options of an ingest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestOptions {
    /// Store NaN / infinite weights instead of rejecting the model.
    pub allow_nonfinite: bool,
    /// Replace a stored model of the same name (and other bytes) instead of failing.
    pub replace: bool,
    /// Store a model without 3x3 kernels (or without convolutions) with its
    /// meta-parameters and kernel counts, instead of failing with
    /// [`IngestError::NoConvKernels`].
    pub allow_empty: bool,
}

/// What [`ingest_one`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum IngestOutcome {
    /// The model was committed as a new version.
    Committed {
        /// The new store version.
        version: u64,
        /// The model's id.
        model_id: i64,
        /// The model's name.
        name: String,
        /// Number of 3x3 layers stored.
        n_layers: u64,
        /// Number of 3x3 filters stored.
        n_filters: u64,
        /// The validation report as stored (normaliser's and store's).
        report: ValidationReport,
    },
    /// A model with the same sha256 is already stored; nothing was done.
    AlreadyPresent {
        /// The stored model's id.
        model_id: i64,
        /// The stored model's name.
        name: String,
    },
}

/// The store's user-added vocabulary, for [`normalise`](crate::normalise()).
pub fn vocab_extra(snapshot: &Snapshot) -> VocabExtra {
    VocabExtra {
        tasks: snapshot.vocab_extra(KIND_TASK),
        visual_categories: snapshot.vocab_extra(KIND_VISUAL_CATEGORY),
    }
}

enum Prepared {
    Present {
        model_id: i64,
        name: String,
    },
    Staged {
        staged: Box<StagedModel>,
        sha256: String,
    },
}

fn store_err(
    path: &Path,
    action: &'static str,
) -> impl FnOnce(filterdb_store::StoreError) -> IngestError {
    let path = path.to_owned();
    move |source| IngestError::Store {
        path,
        action,
        source: Box::new(source),
    }
}

/// A parsed model file of any format.
enum Raw {
    Safetensors(crate::safetensors::RawModel),
    Onnx(crate::onnx::OnnxModel),
    Numpy(crate::npy::NumpyModel),
}

/// Reads, normalises and stages one model (needs only `&StoreWriter`).
fn prepare(
    writer: &StoreWriter,
    path: &Path,
    card: Option<&Path>,
    overrides: &ModelOverrides,
    opts: &IngestOptions,
) -> Result<Prepared> {
    // The reader is picked by extension: `.onnx` -> ONNX, `.npz` / `.npy` -> NumPy,
    // anything else -> safetensors.
    let raw = if is_onnx_path(path) {
        Raw::Onnx(read_onnx(path)?)
    } else if is_numpy_path(path) {
        Raw::Numpy(read_numpy(path)?)
    } else {
        Raw::Safetensors(read_safetensors(path)?)
    };
    prepare_raw(writer, path, &raw, card, overrides, opts)
}

/// Normalises and stages one parsed model, unless its bytes are already stored.
fn prepare_raw(
    writer: &StoreWriter,
    path: &Path,
    raw: &Raw,
    card: Option<&Path>,
    overrides: &ModelOverrides,
    opts: &IngestOptions,
) -> Result<Prepared> {
    let sha256 = match raw {
        Raw::Onnx(m) => m.sha256.as_str(),
        Raw::Safetensors(r) => r.sha256(),
        Raw::Numpy(m) => m.sha256(),
    };
    let snap = writer.snapshot();
    if let Some(e) = snap.find_by_sha256(sha256) {
        return Ok(Prepared::Present {
            model_id: e.model_id,
            name: e.name.clone(),
        });
    }
    let card = card.map(read_card).transpose()?;
    let vocab = vocab_extra(snap);
    let nopts = NormaliseOptions {
        allow_empty: opts.allow_empty,
    };
    let card = card.as_ref();
    let input = match raw {
        Raw::Onnx(m) => normalise_onnx_with(m, card, overrides, &vocab, &nopts)?,
        Raw::Safetensors(r) => normalise_with(r, card, overrides, &vocab, &nopts)?,
        Raw::Numpy(m) => normalise_numpy_with(m, card, overrides, &vocab, &nopts)?,
    };
    check_name(snap, path, &input.meta.name, opts)?;
    let staged = writer
        .stage(
            &input,
            &StageOptions {
                allow_nonfinite: opts.allow_nonfinite,
            },
        )
        .map_err(store_err(path, "staging"))?;
    Ok(Prepared::Staged {
        staged: Box::new(staged),
        sha256: sha256.to_owned(),
    })
}

/// The commit mode for `name`: `Add`, `Replace` (with `opts.replace`), or a conflict.
fn check_name(
    snap: &Snapshot,
    path: &Path,
    name: &str,
    opts: &IngestOptions,
) -> Result<CommitMode> {
    match snap.find_by_name(name) {
        None => Ok(CommitMode::Add),
        Some(e) if opts.replace => Ok(CommitMode::Replace {
            model_id: e.model_id,
        }),
        Some(e) => Err(IngestError::NameConflict {
            path: path.to_owned(),
            name: name.to_owned(),
            model_id: e.model_id,
            stored_sha256: e.source_sha256.clone(),
        }),
    }
}

/// Commits a staged model, re-checking hash and name against the latest snapshot.
fn commit_prepared(
    writer: &mut StoreWriter,
    path: &Path,
    staged: Box<StagedModel>,
    sha256: &str,
    opts: &IngestOptions,
) -> Result<IngestOutcome> {
    if let Some(e) = writer.snapshot().find_by_sha256(sha256) {
        // committed meanwhile (e.g. an earlier manifest row with the same bytes)
        return Ok(IngestOutcome::AlreadyPresent {
            model_id: e.model_id,
            name: e.name.clone(),
        });
    }
    let mode = check_name(writer.snapshot(), path, staged.name(), opts)?;
    let mut staged = staged;
    if let CommitMode::Replace { model_id } = mode
        && let Some(old) = writer.snapshot().models.get(&model_id)
    {
        let warning = Warning::new(
            Warning::DUPLICATE_NAME,
            format!(
                "replaced model_id {model_id} of the same name {:?} (sha256 {}, {} filters; \
                 --replace)",
                old.name,
                &old.source_sha256[..old.source_sha256.len().min(12)],
                old.n_filters
            ),
        );
        staged
            .add_warning(warning)
            .map_err(store_err(path, "staging"))?;
    }
    let model_id = staged.model_id();
    let name = staged.name().to_owned();
    let n_layers = staged.n_layers();
    let n_filters = staged.n_filters();
    let report = staged.report().clone();
    let version = writer
        .commit(*staged, mode)
        .map_err(store_err(path, "committing"))?;
    Ok(IngestOutcome::Committed {
        version,
        model_id,
        name,
        n_layers,
        n_filters,
        report,
    })
}

/// Ingests one safetensors file, with an optional card and overrides (which win over the
/// card), as one new version.
///
/// # Errors
/// Any read, card, vocabulary or normalisation error of the file;
/// [`IngestError::NameConflict`] if another model has the name (without `replace`);
/// [`IngestError::Store`] if the store rejects it (e.g. NaN weights).
pub fn ingest_one(
    writer: &mut StoreWriter,
    path: &Path,
    card: Option<&Path>,
    overrides: &ModelOverrides,
    opts: &IngestOptions,
) -> Result<IngestOutcome> {
    match prepare(writer, path, card, overrides, opts)? {
        Prepared::Present { model_id, name } => {
            Ok(IngestOutcome::AlreadyPresent { model_id, name })
        }
        Prepared::Staged { staged, sha256 } => commit_prepared(writer, path, staged, &sha256, opts),
    }
}

/// Progress callbacks of [`ingest_manifest`] (the CLI draws a bar with them).
pub trait Progress: Sync {
    /// Called once before any model: the number of rows and their total file size.
    fn start(&self, total_models: u64, total_bytes: u64);
    /// Called once per row when it is done (committed, skipped or failed).
    fn model_done(&self, filters: u64, bytes: u64);
    /// Called once at the end.
    fn finish(&self);
}

/// A [`Progress`] that does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _total_models: u64, _total_bytes: u64) {}
    fn model_done(&self, _filters: u64, _bytes: u64) {}
    fn finish(&self) {}
}

/// A committed manifest row.
#[derive(Debug, Clone, PartialEq)]
pub struct CommittedRow {
    /// Manifest line.
    pub line: usize,
    /// Model file.
    pub path: PathBuf,
    /// Store version of its commit.
    pub version: u64,
    /// Its model id.
    pub model_id: i64,
    /// Its name.
    pub name: String,
    /// 3x3 layers stored.
    pub n_layers: u64,
    /// 3x3 filters stored.
    pub n_filters: u64,
    /// The validation report as stored.
    pub report: ValidationReport,
}

/// A manifest row that needed no ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRow {
    /// Manifest line.
    pub line: usize,
    /// Model file.
    pub path: PathBuf,
    /// The stored model with the same bytes, if known.
    pub model_id: Option<i64>,
    /// Its name, if known.
    pub name: Option<String>,
    /// Why: already stored, or a duplicate of an earlier row.
    pub reason: String,
}

/// A manifest row that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRow {
    /// Manifest line.
    pub line: usize,
    /// Model file (as resolved, or as written for bad rows).
    pub path: PathBuf,
    /// The error with its causes, on one line.
    pub error: String,
}

/// The outcome of a bulk ingest; every row is in exactly one list, ordered by line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BulkReport {
    /// Rows committed, each as its own version.
    pub committed: Vec<CommittedRow>,
    /// Rows already in the store, or duplicates within the manifest.
    pub skipped_present: Vec<SkippedRow>,
    /// Rows that failed.
    pub failed: Vec<FailedRow>,
}

impl BulkReport {
    /// Adds the manifest's bad rows as failures (keeps `failed` ordered by line).
    pub fn add_manifest_errors(&mut self, errors: &[RowError]) {
        for e in errors {
            self.failed.push(FailedRow {
                line: e.line,
                path: PathBuf::from(e.path.clone().unwrap_or_default()),
                error: error_chain(&e.error),
            });
        }
        self.failed.sort_by_key(|f| f.line);
    }

    /// Total filters committed.
    pub fn filters_committed(&self) -> u64 {
        self.committed.iter().map(|c| c.n_filters).sum()
    }
}

/// Ingests manifest rows on a pool of `threads` workers (0 = rayon's default), committing
/// each model on its own, in manifest order. Rows whose bytes are already stored, and
/// repeated rows, are skipped; failing rows are reported and do not stop the others.
///
/// # Errors
/// Only if the worker pool cannot be built; per-row problems go into the report.
pub fn ingest_manifest(
    writer: &mut StoreWriter,
    rows: &[ManifestRow],
    opts: &IngestOptions,
    threads: usize,
    progress: &dyn Progress,
) -> Result<BulkReport> {
    let mut report = BulkReport::default();
    // Each file's size, read once (for the progress bar's bytes).
    let sizes: Vec<u64> = rows
        .iter()
        .map(|r| std::fs::metadata(&r.path).map(|m| m.len()).unwrap_or(0))
        .collect();
    progress.start(rows.len() as u64, sizes.iter().sum());

    // The same file twice: only the first row counts.
    let mut first_line: HashMap<&Path, usize> = HashMap::new();
    let mut todo: Vec<Job<'_>> = Vec::with_capacity(rows.len());
    for (r, &bytes) in rows.iter().zip(&sizes) {
        if let Some(&l) = first_line.get(r.path.as_path()) {
            report.skipped_present.push(SkippedRow {
                line: r.line,
                path: r.path.clone(),
                model_id: None,
                name: None,
                reason: format!("same file as line {l}"),
            });
            progress.model_done(0, bytes);
        } else {
            first_line.insert(&r.path, r.line);
            todo.push(Job {
                line: r.line,
                path: r.path.clone(),
                bytes,
                source: JobSource::File {
                    card: r.card.as_deref(),
                    overrides: &r.overrides,
                },
            });
        }
    }
    ingest_jobs(writer, &todo, report, opts, threads, progress)
}

/// Generates the models of `generator`'s zoo and ingests them straight into the store,
/// as [`ingest_manifest`] would ingest the zoo's files (the same bytes, so the same
/// sha256, names and filters; a rerun commits nothing new), without writing them out.
/// Model `i` is reported as line `i + 1`, its path
/// `filterdb-gen/seed-<seed>/model-<i>.safetensors` (also its `source_path`).
///
/// # Errors
/// Only if the worker pool cannot be built; per-model problems go into the report.
pub fn ingest_generated(
    writer: &mut StoreWriter,
    generator: &Generator,
    opts: &IngestOptions,
    threads: usize,
    progress: &dyn Progress,
) -> Result<BulkReport> {
    let g = generator.options();
    progress.start(g.models as u64, 0);
    let todo: Vec<Job<'_>> = (0..g.models)
        .map(|index| Job {
            line: index + 1,
            path: PathBuf::from(format!(
                "filterdb-gen/seed-{}/model-{index:05}.safetensors",
                g.seed
            )),
            bytes: 0,
            source: JobSource::Generated { generator, index },
        })
        .collect();
    ingest_jobs(
        writer,
        &todo,
        BulkReport::default(),
        opts,
        threads,
        progress,
    )
}

/// Where a bulk job's model comes from.
enum JobSource<'a> {
    /// A model file with its card and overrides.
    File {
        card: Option<&'a Path>,
        overrides: &'a ModelOverrides,
    },
    /// Model `index` of a synthetic zoo.
    Generated {
        generator: &'a Generator,
        index: usize,
    },
}

/// One model of a bulk ingest.
struct Job<'a> {
    line: usize,
    path: PathBuf,
    bytes: u64,
    source: JobSource<'a>,
}

fn prepare_job(writer: &StoreWriter, job: &Job<'_>, opts: &IngestOptions) -> Result<Prepared> {
    match &job.source {
        JobSource::File { card, overrides } => prepare(writer, &job.path, *card, overrides, opts),
        JobSource::Generated { generator, index } => {
            let (m, bytes) = generator.safetensors(*index)?;
            let raw = Raw::Safetensors(RawModel::from_bytes(&job.path, bytes)?);
            prepare_raw(writer, &job.path, &raw, None, &m.card, opts)
        }
    }
}

/// Prepares `todo` on a pool of `threads` and commits each, in order, on this thread.
fn ingest_jobs(
    writer: &mut StoreWriter,
    todo: &[Job<'_>],
    mut report: BulkReport,
    opts: &IngestOptions,
    threads: usize,
    progress: &dyn Progress,
) -> Result<BulkReport> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("filterdb-ingest-{i}"))
        .build()
        .map_err(|e| IngestError::ThreadPool {
            threads,
            detail: e.to_string(),
        })?;

    let lock = RwLock::new(writer);
    let mut committed_sha: HashMap<String, usize> = HashMap::new();
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel::<(usize, Result<Prepared>)>();
        let lock_ref = &lock;
        // Largest files first (the longest-processing-time rule): a big model started
        // last would run alone at the end while the other workers idle. Commits stay
        // in manifest order; models prepared early wait as staged files.
        let mut order: Vec<usize> = (0..todo.len()).collect();
        order.sort_by_key(|&pos| std::cmp::Reverse(todo[pos].bytes));
        let taken = AtomicUsize::new(0);
        scope.spawn(move || {
            pool.broadcast(|_| {
                let tx = tx.clone();
                while let Some(&pos) = order.get(taken.fetch_add(1, Ordering::Relaxed)) {
                    let guard = lock_ref.read().unwrap_or_else(PoisonError::into_inner);
                    let r = prepare_job(&guard, &todo[pos], opts);
                    drop(guard);
                    // the receiver lives until all senders are gone
                    let _ = tx.send((pos, r));
                }
            });
        });

        let mut pending: BTreeMap<usize, Result<Prepared>> = BTreeMap::new();
        let mut next = 0usize;
        for (pos, r) in rx {
            pending.insert(pos, r);
            while let Some(r) = pending.remove(&next) {
                let row = &todo[next];
                next += 1;
                let bytes = row.bytes;
                let mut filters = 0;
                let outcome = match r {
                    Err(e) => Err(e),
                    Ok(Prepared::Present { model_id, name }) => {
                        Ok(IngestOutcome::AlreadyPresent { model_id, name })
                    }
                    Ok(Prepared::Staged { staged, sha256 }) => {
                        let mut guard = lock.write().unwrap_or_else(PoisonError::into_inner);
                        let out = commit_prepared(&mut guard, &row.path, staged, &sha256, opts);
                        if matches!(out, Ok(IngestOutcome::Committed { .. })) {
                            committed_sha.insert(sha256, row.line);
                        } else if let (Ok(IngestOutcome::AlreadyPresent { .. }), Some(&l)) =
                            (&out, committed_sha.get(&sha256))
                        {
                            report.skipped_present.push(SkippedRow {
                                line: row.line,
                                path: row.path.clone(),
                                model_id: None,
                                name: None,
                                reason: format!("same bytes as line {l}"),
                            });
                            progress.model_done(0, bytes);
                            continue;
                        }
                        out
                    }
                };
                match outcome {
                    Ok(IngestOutcome::Committed {
                        version,
                        model_id,
                        name,
                        n_layers,
                        n_filters,
                        report: lines,
                    }) => {
                        filters = n_filters;
                        report.committed.push(CommittedRow {
                            line: row.line,
                            path: row.path.clone(),
                            version,
                            model_id,
                            name,
                            n_layers,
                            n_filters,
                            report: lines,
                        });
                    }
                    Ok(IngestOutcome::AlreadyPresent { model_id, name }) => {
                        report.skipped_present.push(SkippedRow {
                            line: row.line,
                            path: row.path.clone(),
                            model_id: Some(model_id),
                            name: Some(name),
                            reason: "already stored".to_owned(),
                        });
                    }
                    Err(e) => report.failed.push(FailedRow {
                        line: row.line,
                        path: row.path.clone(),
                        error: error_chain(&e),
                    }),
                }
                progress.model_done(filters, bytes);
            }
        }
    });
    report.skipped_present.sort_by_key(|s| s.line);
    progress.finish();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::read_manifest;
    use crate::synth::{GenOptions, generate_zoo};
    use filterdb_store::{Precision, Store};
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Default)]
    struct Count {
        started: AtomicU64,
        done: AtomicU64,
        filters: AtomicU64,
        finished: AtomicU64,
    }
    impl Progress for Count {
        fn start(&self, total_models: u64, _total_bytes: u64) {
            self.started.store(total_models, Ordering::SeqCst);
        }
        fn model_done(&self, filters: u64, _bytes: u64) {
            self.done.fetch_add(1, Ordering::SeqCst);
            self.filters.fetch_add(filters, Ordering::SeqCst);
        }
        fn finish(&self) {
            self.finished.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn one_model_add_present_conflict_replace() {
        let zoo = tempfile::tempdir().unwrap();
        let s = generate_zoo(zoo.path(), &GenOptions::tiny(2, 3)).unwrap();
        let st = tempfile::tempdir().unwrap();
        let store = Store::init(st.path().join("s"), Precision::F16).unwrap();
        let mut w = store.writer(true).unwrap();
        let opts = IngestOptions::default();
        let card = s.files[0].with_extension("toml");
        let out = ingest_one(
            &mut w,
            &s.files[0],
            Some(&card),
            &ModelOverrides::default(),
            &opts,
        )
        .unwrap();
        let IngestOutcome::Committed {
            model_id,
            name,
            n_filters,
            ..
        } = out.clone()
        else {
            panic!("expected Committed, got {out:?}");
        };
        assert!(n_filters > 0);
        let again =
            ingest_one(&mut w, &s.files[0], None, &ModelOverrides::default(), &opts).unwrap();
        assert_eq!(
            again,
            IngestOutcome::AlreadyPresent {
                model_id,
                name: name.clone()
            }
        );

        // other bytes under the same name
        let same_name = ModelOverrides {
            name: Some(name.clone()),
            ..Default::default()
        };
        let e = ingest_one(&mut w, &s.files[1], None, &same_name, &opts).unwrap_err();
        assert!(matches!(e, IngestError::NameConflict { .. }), "{e}");
        assert!(e.to_string().contains("--replace"), "{e}");
        let replace = IngestOptions {
            replace: true,
            ..opts
        };
        let out = ingest_one(&mut w, &s.files[1], None, &same_name, &replace).unwrap();
        let IngestOutcome::Committed { report, .. } = &out else {
            panic!("expected Committed, got {out:?}");
        };
        // See: issue 4 (duplicate_name names the replaced model)
        let dup: Vec<&Warning> = report
            .warnings
            .iter()
            .filter(|w| w.code == Warning::DUPLICATE_NAME)
            .collect();
        assert_eq!(dup.len(), 1, "{report:?}");
        let sha = store_sha(&s.files[0]);
        assert!(
            dup[0]
                .message
                .contains(&format!("replaced model_id {model_id} "))
                && dup[0].message.contains(&sha[..12]),
            "{dup:?}"
        );
        assert!(
            w.snapshot()
                .find_by_sha256(&store_sha(&s.files[0]))
                .is_none()
        );
        assert!(w.snapshot().find_by_name(&name).is_some());
    }

    /// See: issue 4. `allow_empty` stores a model without 3x3 kernels; without it the
    /// error names the flag.
    #[test]
    fn allow_empty_stores_models_without_layers() {
        use crate::safetensors::tests::{build, f32_bytes};
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("one.safetensors");
        std::fs::write(
            &one,
            build(&[("proj.weight", "F32", vec![4, 2, 1, 1], f32_bytes(8))]),
        )
        .unwrap();
        let none = dir.path().join("none.safetensors");
        std::fs::write(
            &none,
            build(&[("fc.weight", "F32", vec![3, 2], f32_bytes(6))]),
        )
        .unwrap();
        let store = Store::init(dir.path().join("s"), Precision::F16).unwrap();
        let mut w = store.writer(true).unwrap();
        let o = ModelOverrides::default();
        let e = ingest_one(&mut w, &one, None, &o, &IngestOptions::default()).unwrap_err();
        assert!(matches!(e, IngestError::NoConvKernels { .. }), "{e}");
        assert!(e.to_string().contains("--allow-empty"), "{e}");
        let opts = IngestOptions {
            allow_empty: true,
            ..Default::default()
        };
        for (path, code, convs) in [
            (&one, Warning::NO_3X3_KERNELS, 1),
            (&none, Warning::NO_CONVOLUTIONS, 0),
        ] {
            let out = ingest_one(&mut w, path, None, &o, &opts).unwrap();
            let IngestOutcome::Committed {
                n_layers,
                n_filters,
                report,
                ..
            } = out
            else {
                panic!("expected Committed, got {out:?}");
            };
            assert_eq!((n_layers, n_filters), (0, 0));
            let codes: Vec<&str> = report.warnings.iter().map(|w| w.code.as_str()).collect();
            assert_eq!(codes, [code], "{report:?}");
            assert_eq!((report.conv_tensors, report.layers_3x3), (convs, 0));
        }
        assert_eq!(w.snapshot().models.len(), 2);
        assert_eq!(w.snapshot().n_filters(), 0);
    }

    fn store_sha(p: &Path) -> String {
        read_safetensors(p).unwrap().sha256().to_owned()
    }

    #[test]
    fn manifest_bulk_rerun_and_failures() {
        let zoo = tempfile::tempdir().unwrap();
        let s = generate_zoo(zoo.path(), &GenOptions::tiny(5, 11)).unwrap();
        // a broken file, a duplicate row and a bad row
        std::fs::write(zoo.path().join("broken.safetensors"), b"12345678").unwrap();
        let mut text = std::fs::read_to_string(&s.manifest).unwrap();
        let first_row = text.lines().nth(1).unwrap().to_owned();
        text.push_str("broken.safetensors,,,,,,,\n");
        text.push_str(&first_row);
        text.push('\n');
        text.push_str("../escape.safetensors,,,,,,,\n");
        std::fs::write(&s.manifest, text).unwrap();
        let man = read_manifest(&s.manifest).unwrap();
        assert_eq!(man.rows.len(), 7);
        assert_eq!(man.errors.len(), 1);

        let st = tempfile::tempdir().unwrap();
        let store = Store::init(st.path().join("s"), Precision::F16).unwrap();
        let mut w = store.writer(true).unwrap();
        let progress = Count::default();
        let mut rep =
            ingest_manifest(&mut w, &man.rows, &IngestOptions::default(), 2, &progress).unwrap();
        rep.add_manifest_errors(&man.errors);
        assert_eq!(rep.committed.len(), 5, "{rep:#?}");
        assert_eq!(rep.filters_committed(), s.filters);
        assert_eq!(rep.skipped_present.len(), 1);
        assert!(
            rep.skipped_present[0]
                .reason
                .contains("same file as line 2")
        );
        assert_eq!(rep.failed.len(), 2, "{rep:#?}");
        assert!(
            rep.failed[0].error.contains("broken.safetensors"),
            "{:?}",
            rep.failed
        );
        assert!(rep.failed[1].error.contains("outside"), "{:?}", rep.failed);
        // committed in manifest order, one version each
        let lines: Vec<usize> = rep.committed.iter().map(|c| c.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 6]);
        assert!(
            rep.committed
                .windows(2)
                .all(|p| p[1].version == p[0].version + 1)
        );
        assert_eq!(progress.started.load(Ordering::SeqCst), 7);
        assert_eq!(progress.done.load(Ordering::SeqCst), 7);
        assert_eq!(progress.filters.load(Ordering::SeqCst), s.filters);
        assert_eq!(progress.finished.load(Ordering::SeqCst), 1);
        assert_eq!(w.snapshot().n_filters(), s.filters);

        // a rerun ingests nothing new
        let rep2 =
            ingest_manifest(&mut w, &man.rows, &IngestOptions::default(), 2, &NoProgress).unwrap();
        assert!(rep2.committed.is_empty());
        assert_eq!(rep2.skipped_present.len(), 6);
        assert_eq!(rep2.failed.len(), 1);
    }

    #[test]
    fn same_bytes_twice_in_one_manifest() {
        let zoo = tempfile::tempdir().unwrap();
        let s = generate_zoo(zoo.path(), &GenOptions::tiny(1, 5)).unwrap();
        std::fs::copy(&s.files[0], zoo.path().join("copy.safetensors")).unwrap();
        let m = zoo.path().join("m.csv");
        let f0 = s.files[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        std::fs::write(&m, format!("path,name\n{f0},\ncopy.safetensors,other\n")).unwrap();
        let man = read_manifest(&m).unwrap();
        let st = tempfile::tempdir().unwrap();
        let store = Store::init(st.path().join("s"), Precision::F16).unwrap();
        let mut w = store.writer(true).unwrap();
        let rep =
            ingest_manifest(&mut w, &man.rows, &IngestOptions::default(), 2, &NoProgress).unwrap();
        assert_eq!(rep.committed.len(), 1, "{rep:#?}");
        assert_eq!(rep.skipped_present.len(), 1);
        assert!(
            rep.skipped_present[0]
                .reason
                .contains("same bytes as line 2"),
            "{rep:#?}"
        );
    }
}
