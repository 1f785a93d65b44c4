//! `import-cnnfilterdb`: the CNN Filter DB release (`dataset.h5`) into a store, one
//! commit per model.
//!
//! The release has one `/meta` row per (model, conv layer) and one `/filters` row per
//! filter (see [`crate::hdf5`]). [`plan_import`] maps the table onto filterdb's data model;
//! [`import_cnnfilterdb`] then reads each model's filters in bounded hyperslabs, hashes
//! them, and stages and commits the model through the normal protocol.
//!
//! # Mapping
//!
//! - **One store model per `model_id`.** `name` = `model` (the release's unique string
//!   id; `Name` if absent; `cnnfilterdb_<model_id>` if both are); a name that two model
//!   ids share gets ` (model_id N)` appended (and a `duplicate_name` warning). `architecture` = `Name`; `task` = `Task`;
//!   `training_dataset` / `pretraining_dataset` = `Training-Dataset` /
//!   `Pretraining-Dataset`; `visual_category` = `Visual Category` (older copies:
//!   `Datatype`); `depth` = `depth`; `kernel_shape_counts` = the `"(X, Y) filters"`
//!   columns; `conv_tensors` = the `Conv` operator count (else the number of meta rows);
//!   `source_format` = `hdf5`, `source_path` = the file, `source_bytes` = the model's
//!   bytes in `/filters`. Task and visual category go through the vocabularies like every
//!   ingest ([`crate::vocab::canonicalise`], any case); values outside them stop the
//!   import before anything is written unless [`ImportOptions::add_vocab`] adds them
//!   (each a `vocab add` version in the store's history, as `filterdb vocab add` does).
//! - **`models.extra`** gets what has no column: `producer`, `opset` (`op_set`), `paper`
//!   (`Paper`), `url` (`Accessible`), `dataset_url` (`Dataset URL`), `operator_counts`
//!   (a JSON object of the ONNX operator-count columns, as the ONNX reader stores it),
//!   `cnnfilterdb_model_id`, `meta_source`, `channels` (why the channel columns are what
//!   they are), `label_fixes` when `--fix-labels` changed a label, the release's
//!   `total_filters` / `3x3_filter_share` when they disagree with the kernel counts (or
//!   there are none), and
//!   any other column under its own name. Operator-count columns are the numeric columns
//!   named like ONNX operators (`Conv`, `BatchNormalization`: an upper-case letter, then
//!   letters and digits) that are not one of the known columns.
//! - **One layer per meta row**, ordered by the start of its filter range (`layer_idx`).
//!   `layer_name` = the row's inclusive range `"start:end"` in `/filters`;
//!   `conv_depth` and `conv_depth_norm` are the row's (`depth_rule = "cnnfilterdb"`).
//! - **Channels are not in the release**: a layer's filters are a flat range. Each is
//!   stored with `out_channels = n_filters`, `in_channels = 1`, `groups = 1`, so
//!   `out_channel` = the filter's position in the range and `in_channel = 0`; the
//!   release's filter id is `start + out_channel`. Per-channel analyses (orthogonality)
//!   are not meaningful on these layers; `extra.channels` and the report say so.
//! - **Identity**: a model's `source_sha256` is the sha256 of its layer structure
//!   (ranges and depths) followed by its filters' bytes. A model whose hash is stored is
//!   skipped, so re-running an import commits nothing new; another model with a stored
//!   name fails (imports never replace).
//! - **`--fix-labels`** applies the paper notebook's fix: every task containing
//!   `Segmentation` becomes `Segmentation`. Each change is kept in `extra.label_fixes`
//!   and as a `label_fix` warning in the model's report.
//!
//! Errors that concern one model (a range outside `/filters`, overlapping ranges, a
//! non-numeric depth, non-finite weights, a name conflict) fail that model only; the
//! others still commit. Errors of the file (no `/filters`, a wrong shape, an unreadable
//! `/meta`, a missing column) fail the import before anything is committed.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use filterdb_store::{CommitMode, StageOptions, StoreWriter};

use crate::error::{IngestError, Result, error_chain};
use crate::hdf5::{MetaTable, MetaValue, ReleaseFile, read_meta_file};
use crate::normalise::VocabExtra;
use crate::vocab::{KIND_TASK, KIND_VISUAL_CATEGORY, canonicalise, check_new_value};
use crate::{
    KernelData, KernelLayout, LayerInput, ModelInput, ModelMeta, ValidationReport, Warning,
};

/// `depth_rule` of layers whose depth the CNN Filter DB release gives.
pub const DEPTH_RULE_RELEASE: &str = "cnnfilterdb";

/// What `extra.channels` says about imported layers.
pub const CHANNELS_NOTE: &str = "not in the CNN Filter DB release: out_channel is the \
    filter's position in the layer's filter_ids range (release filter id = range start + \
    out_channel), in_channel is 0";

const COL_MODEL_ID: &str = "model_id";
const COL_CONV_DEPTH: &str = "conv_depth";
const COL_CONV_DEPTH_NORM: &str = "conv_depth_norm";
const COL_FILTER_IDS: &str = "filter_ids";
const COL_MODEL: &str = "model";
const COL_NAME: &str = "Name";
const COL_TASK: &str = "Task";
const COL_TRAINING: &str = "Training-Dataset";
const COL_PRETRAINING: &str = "Pretraining-Dataset";
const COL_VISUAL: [&str; 2] = ["Visual Category", "Datatype"];
const COL_DEPTH: &str = "depth";
const COL_TOTAL: &str = "total_filters";
const COL_SHARE: &str = "3x3_filter_share";
/// Columns stored in `extra` under another key.
const EXTRA_RENAMES: [(&str, &str); 5] = [
    ("producer", "producer"),
    ("op_set", "opset"),
    ("Paper", "paper"),
    ("Accessible", "url"),
    ("Dataset URL", "dataset_url"),
];
/// Columns that are never model fields (pandas' own index).
const IGNORED: [&str; 2] = ["index", "Unnamed: 0"];

/// Options of [`import_cnnfilterdb`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOptions {
    /// A Parquet or CSV export of `/meta`, read instead of the file's own `/meta`
    /// (needed for pandas' `fixed` format).
    pub meta: Option<PathBuf>,
    /// Apply the paper notebook's label fixes (every task containing `Segmentation`
    /// becomes `Segmentation`).
    pub fix_labels: bool,
    /// Add task / visual-category values outside the vocabulary to the store's vocabulary
    /// (one `vocab add` version each) instead of failing.
    pub add_vocab: bool,
    /// Store NaN / infinite weights instead of failing the model.
    pub allow_nonfinite: bool,
    /// Models whose filters take more bytes than this are buffered in an unnamed
    /// temporary file in the store's `_tmp/` (memory-mapped) instead of memory.
    pub buffer_bytes: u64,
    /// Filters per hyperslab read (rounded to whole HDF5 chunks).
    pub block_rows: usize,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            meta: None,
            fix_labels: false,
            add_vocab: false,
            allow_nonfinite: false,
            buffer_bytes: 1 << 30,
            block_rows: 262_144,
        }
    }
}

/// Progress callbacks of [`import_cnnfilterdb`] (the CLI draws a bar with them).
pub trait ImportProgress: Sync {
    /// Once, before the first model: models to import and their filters.
    fn start(&self, models: u64, filters: u64, bytes_per_filter: u64);
    /// After every hyperslab read.
    fn filters_read(&self, filters: u64);
    /// After every model (committed, skipped or failed).
    fn model_done(&self);
    /// Once at the end.
    fn finish(&self);
}

/// An [`ImportProgress`] that does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoImportProgress;

impl ImportProgress for NoImportProgress {
    fn start(&self, _models: u64, _filters: u64, _bytes_per_filter: u64) {}
    fn filters_read(&self, _filters: u64) {}
    fn model_done(&self) {}
    fn finish(&self) {}
}

/// A model committed by an import.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportedModel {
    /// The release's `model_id`.
    pub release_model_id: i64,
    /// The store's model id.
    pub model_id: i64,
    /// Its name.
    pub name: String,
    /// The store version of its commit.
    pub version: u64,
    /// Layers stored.
    pub n_layers: u64,
    /// Filters stored.
    pub n_filters: u64,
    /// The validation report as stored.
    pub report: ValidationReport,
}

/// A model that was already stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedModel {
    /// The release's `model_id`.
    pub release_model_id: i64,
    /// The stored model's id.
    pub model_id: i64,
    /// The stored model's name.
    pub name: String,
}

/// A model that failed; nothing of it was committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedModel {
    /// The release's `model_id`.
    pub release_model_id: i64,
    /// Its name, when known.
    pub name: Option<String>,
    /// The error and its causes, on one line.
    pub error: String,
}

/// What [`import_cnnfilterdb`] did; every model is in exactly one list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportReport {
    /// Where `/meta` was read from.
    pub meta_source: String,
    /// The filter array (`/filters` or `/filter`), its rows and storage.
    pub filters: String,
    /// Committed models, in release `model_id` order.
    pub committed: Vec<ImportedModel>,
    /// Models already stored.
    pub skipped: Vec<SkippedModel>,
    /// Failed models.
    pub failed: Vec<FailedModel>,
    /// Vocabulary values added (kind, value, version).
    pub vocab_added: Vec<(String, String, u64)>,
    /// Rows of `/filters` that no meta row references.
    pub unreferenced_filters: u64,
}

impl ImportReport {
    /// Filters committed.
    pub fn filters_committed(&self) -> u64 {
        self.committed.iter().map(|c| c.n_filters).sum()
    }
}

/// One layer of a planned model: a meta row.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedLayer {
    /// The meta row (0-based).
    pub row: usize,
    /// First filter (row of `/filters`).
    pub start: u64,
    /// Last filter, inclusive.
    pub end: u64,
    /// The row's `conv_depth`.
    pub conv_depth: i64,
    /// The row's `conv_depth_norm`.
    pub conv_depth_norm: f64,
}

impl PlannedLayer {
    /// Number of filters.
    pub fn n_filters(&self) -> u64 {
        self.end - self.start + 1
    }
}

/// A model as [`plan_import`] mapped it, before vocabulary checks and reading filters.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedModel {
    /// The release's `model_id`.
    pub release_model_id: i64,
    /// Meta-parameters (task and visual category as in the file, after label fixes;
    /// `source_sha256` empty until the filters are read).
    pub meta: ModelMeta,
    /// Layers in `layer_idx` order.
    pub layers: Vec<PlannedLayer>,
}

impl PlannedModel {
    /// Number of filters.
    pub fn n_filters(&self) -> u64 {
        self.layers.iter().map(PlannedLayer::n_filters).sum()
    }
}

/// The result of [`plan_import`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Models that can be imported, by release `model_id`.
    pub models: Vec<PlannedModel>,
    /// Models whose meta rows are wrong.
    pub failed: Vec<FailedModel>,
    /// Rows of `/filters` no meta row references.
    pub unreferenced_filters: u64,
}

fn text(v: &MetaValue) -> Option<String> {
    v.as_text()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// `"(3, 3) filters"` -> `"(3, 3)"`.
fn kernel_key(col: &str) -> Option<String> {
    let inner = col.strip_prefix('(')?.strip_suffix(") filters")?;
    let (a, b) = inner.split_once(',')?;
    let (a, b) = (a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?);
    Some(format!("({a}, {b})"))
}

fn looks_like_operator(col: &str) -> bool {
    let mut chars = col.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase()) && chars.all(|c| c.is_ascii_alphanumeric())
}

fn parse_range(s: &str) -> std::result::Result<(u64, u64), String> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}; expected an inclusive range \"start:end\""))?;
    let p = |x: &str| {
        x.trim()
            .parse::<u64>()
            .map_err(|_| format!("{s:?}; expected an inclusive range \"start:end\" of filter ids"))
    };
    let (a, b) = (p(a)?, p(b)?);
    if a > b {
        return Err(format!("{s:?}: start {a} is after end {b}"));
    }
    Ok((a, b))
}

/// How a column of the meta table is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Key,
    Field,
    Kernel,
    Operator,
    Extra,
}

/// The paper notebook's label fix: every task containing `Segmentation` is `Segmentation`.
pub fn fix_task_label(task: &str) -> Option<&'static str> {
    (task.contains("Segmentation") && task != "Segmentation").then_some("Segmentation")
}

/// Maps the meta table onto store models (see the module docs). `n_rows` is the number
/// of rows of `/filters`; `path` names the release in messages.
///
/// # Errors
/// [`IngestError::Release`] when a required column (`model_id`, `filter_ids`,
/// `conv_depth`, `conv_depth_norm`) is missing or a row's `model_id` is not an integer.
/// Problems of one model's rows go into [`Plan::failed`].
pub fn plan_import(
    table: &MetaTable,
    path: &Path,
    n_rows: u64,
    filters_name: &str,
    fix_labels: bool,
) -> Result<Plan> {
    // Whole-table errors carry the file in `path`; name only the table in `location`.
    let short = table
        .source
        .strip_prefix(&format!("{}:", path.display()))
        .unwrap_or(&table.source)
        .to_owned();
    let col = |name: &str| -> Result<usize> {
        table.column(name).ok_or_else(|| IngestError::Release {
            path: path.to_owned(),
            location: short.clone(),
            detail: format!(
                "no column {name:?}; expected the CNN Filter DB meta table (model_id, \
                 conv_depth, conv_depth_norm, filter_ids, ...); found: {}",
                table.columns.join(", ")
            ),
        })
    };
    let (c_id, c_depth, c_norm, c_ids) = (
        col(COL_MODEL_ID)?,
        col(COL_CONV_DEPTH)?,
        col(COL_CONV_DEPTH_NORM)?,
        col(COL_FILTER_IDS)?,
    );
    let visual = COL_VISUAL.iter().find_map(|c| table.column(c));

    // Roles of the other columns.
    let renames: HashMap<&str, &str> = EXTRA_RENAMES.iter().copied().collect();
    let fields: BTreeSet<&str> = [
        COL_MODEL,
        COL_NAME,
        COL_TASK,
        COL_TRAINING,
        COL_PRETRAINING,
        COL_DEPTH,
        COL_TOTAL,
        COL_SHARE,
    ]
    .into_iter()
    .chain(COL_VISUAL)
    .collect();
    let roles: Vec<Role> = table
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if [c_id, c_depth, c_norm, c_ids].contains(&i) || IGNORED.contains(&c.as_str()) {
                Role::Key
            } else if fields.contains(c.as_str()) {
                Role::Field
            } else if kernel_key(c).is_some() {
                Role::Kernel
            } else if !renames.contains_key(c.as_str())
                && looks_like_operator(c)
                && table.rows.iter().all(|r| r[i].as_f64().is_ok())
            {
                Role::Operator
            } else {
                Role::Extra
            }
        })
        .collect();

    // Group rows by model_id.
    let mut by_model: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (r, row) in table.rows.iter().enumerate() {
        let bad = |detail: String| IngestError::Release {
            path: path.to_owned(),
            location: format!("{short}, row {r}, column {COL_MODEL_ID}"),
            detail,
        };
        match row[c_id].as_i64() {
            Ok(Some(id)) => by_model.entry(id).or_default().push(r),
            Ok(None) => return Err(bad("empty; expected an integer model id".to_owned())),
            Err(v) => return Err(bad(format!("{v:?}; expected an integer model id"))),
        }
    }

    // Layers of every model; row errors fail their model.
    let mut errors: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    let mut layers: BTreeMap<i64, Vec<PlannedLayer>> = BTreeMap::new();
    for (&id, rows) in &by_model {
        for &r in rows {
            let row = &table.rows[r];
            let at = |c: &str| format!("{}, row {r}, column {c}", table.source);
            let mut errs = Vec::new();
            let range = match text(&row[c_ids]) {
                None => Err(format!(
                    "{}: empty; expected \"start:end\"",
                    at(COL_FILTER_IDS)
                )),
                Some(s) => parse_range(&s).map_err(|e| format!("{}: {e}", at(COL_FILTER_IDS))),
            }
            .and_then(|(a, b)| {
                if b >= n_rows {
                    Err(format!(
                        "{}: range {a}:{b} ends beyond {filters_name}, which holds {n_rows} \
                         filters (ids 0..={})",
                        at(COL_FILTER_IDS),
                        n_rows.saturating_sub(1)
                    ))
                } else {
                    Ok((a, b))
                }
            });
            let depth = match row[c_depth].as_i64() {
                Ok(Some(d)) if d >= 0 => Ok(d),
                Ok(Some(d)) => Err(format!(
                    "{}: {d}; expected a non-negative integer",
                    at(COL_CONV_DEPTH)
                )),
                Ok(None) => Err(format!(
                    "{}: empty; expected a non-negative integer",
                    at(COL_CONV_DEPTH)
                )),
                Err(v) => Err(format!(
                    "{}: {v:?} is not an integer; expected a non-negative integer",
                    at(COL_CONV_DEPTH)
                )),
            };
            let norm = match row[c_norm].as_f64() {
                Ok(Some(n)) if (0.0..=1.0).contains(&n) => Ok(n),
                Ok(Some(n)) => Err(format!(
                    "{}: {n}; expected a number in [0, 1]",
                    at(COL_CONV_DEPTH_NORM)
                )),
                Ok(None) => Err(format!(
                    "{}: empty; expected a number in [0, 1]",
                    at(COL_CONV_DEPTH_NORM)
                )),
                Err(v) => Err(format!(
                    "{}: {v:?} is not a number; expected a number in [0, 1]",
                    at(COL_CONV_DEPTH_NORM)
                )),
            };
            match (range, depth, norm) {
                (Ok((start, end)), Ok(conv_depth), Ok(conv_depth_norm)) => {
                    layers.entry(id).or_default().push(PlannedLayer {
                        row: r,
                        start,
                        end,
                        conv_depth,
                        conv_depth_norm,
                    });
                }
                (a, b, c) => {
                    errs.extend(a.err());
                    errs.extend(b.err());
                    errs.extend(c.err());
                }
            }
            errors.entry(id).or_default().extend(errs);
        }
    }

    // Overlapping ranges (within or across models) fail every model involved.
    let mut all: Vec<(u64, u64, i64, usize)> = layers
        .iter()
        .flat_map(|(&id, ls)| ls.iter().map(move |l| (l.start, l.end, id, l.row)))
        .collect();
    all.sort_unstable();
    let mut covered = 0u64;
    let mut reach: Option<(u64, i64, usize, u64)> = None; // furthest end so far, its model, row, start
    for &(s, e, id, r) in &all {
        match reach {
            Some((re, rid, rr, rs)) if s <= re => {
                let msg = format!(
                    "{src}: filter_ids of row {r} (model_id {id}, {s}:{e}) overlaps row {rr} \
                     (model_id {rid}, {rs}:{re}); every filter belongs to one layer",
                    src = table.source
                );
                errors.entry(id).or_default().push(msg.clone());
                if rid != id {
                    errors.entry(rid).or_default().push(msg);
                }
                covered += e.saturating_sub(re);
                if e > re {
                    reach = Some((e, id, r, s));
                }
            }
            _ => {
                covered += e - s + 1;
                reach = Some((e, id, r, s));
            }
        }
    }

    // Names: `model`, else `Name`, else cnnfilterdb_<id>; shared names get the id.
    let first = |id: i64| by_model[&id][0];
    let get = |r: usize, c: Option<usize>| c.and_then(|c| text(&table.rows[r][c]));
    let (c_model, c_name) = (table.column(COL_MODEL), table.column(COL_NAME));
    let mut names: BTreeMap<i64, String> = BTreeMap::new();
    let mut uses: HashMap<String, usize> = HashMap::new();
    for &id in by_model.keys() {
        let r = first(id);
        let n = get(r, c_model)
            .or_else(|| get(r, c_name))
            .unwrap_or_else(|| format!("cnnfilterdb_{id}"));
        *uses.entry(n.clone()).or_default() += 1;
        names.insert(id, n);
    }

    let mut plan = Plan {
        unreferenced_filters: n_rows.saturating_sub(covered),
        ..Plan::default()
    };
    for (&id, rows) in &by_model {
        let base = names[&id].clone();
        let shared = uses[&base] > 1;
        let name = if shared {
            format!("{base} (model_id {id})")
        } else {
            base.clone()
        };
        let errs = errors.remove(&id).unwrap_or_default();
        if !errs.is_empty() {
            plan.failed.push(FailedModel {
                release_model_id: id,
                name: Some(name),
                error: errs.join("; "),
            });
            continue;
        }
        let mut ls = layers.remove(&id).unwrap_or_default();
        ls.sort_by_key(|l| l.start);
        let r0 = rows[0];
        let mut report = ValidationReport::default();
        report.note(format!(
            "imported from the CNN Filter DB release {} (model_id {id}, {} meta row(s), \
             filters {})",
            path.display(),
            rows.len(),
            filters_name
        ));
        report.note(
            "out/in channels are not in the release: out_channel = position in the layer's \
             filter_ids range, in_channel = 0",
        );
        if shared {
            report.warn(
                Warning::DUPLICATE_NAME,
                format!(
                    "the name {base:?} is used by {} model ids in the release; stored as \
                     {name:?}",
                    uses[&base]
                ),
            );
        }
        // Model-level columns must agree between the model's rows; the first row wins.
        let differing: Vec<&str> = table
            .columns
            .iter()
            .enumerate()
            .filter(|&(i, _)| roles[i] != Role::Key)
            .filter(|&(i, _)| rows.iter().any(|&r| table.rows[r][i] != table.rows[r0][i]))
            .map(|(_, c)| c.as_str())
            .collect();
        if !differing.is_empty() {
            report.warn(
                Warning::RELEASE_MISMATCH,
                format!(
                    "model column(s) differ between the model's meta rows, the first row's \
                     values are used: {}",
                    differing.join(", ")
                ),
            );
        }
        let val = |c: &str| table.column(c).and_then(|i| text(&table.rows[r0][i]));
        let mut extra: BTreeMap<String, String> = BTreeMap::new();
        let mut kernel_shape_counts: BTreeMap<String, u64> = BTreeMap::new();
        let mut operators: BTreeMap<String, i64> = BTreeMap::new();
        for (i, c) in table.columns.iter().enumerate() {
            let v = &table.rows[r0][i];
            match roles[i] {
                Role::Key | Role::Field => {}
                Role::Kernel => {
                    if let (Some(k), Ok(Some(n))) = (kernel_key(c), v.as_f64())
                        && n > 0.0
                    {
                        kernel_shape_counts.insert(k, n as u64);
                    }
                }
                Role::Operator => {
                    if let Ok(Some(n)) = v.as_f64() {
                        operators.insert(c.clone(), n as i64);
                    }
                }
                Role::Extra => {
                    if let Some(t) = text(v) {
                        let key = renames.get(c.as_str()).copied().unwrap_or(c);
                        extra.insert(key.to_owned(), t);
                    }
                }
            }
        }
        if !operators.is_empty() {
            extra.insert(
                "operator_counts".to_owned(),
                serde_json::json!(operators).to_string(),
            );
        }
        extra.insert("cnnfilterdb_model_id".to_owned(), id.to_string());
        extra.insert("meta_source".to_owned(), table.source.clone());
        extra.insert("channels".to_owned(), CHANNELS_NOTE.to_owned());
        let n_filters: u64 = ls.iter().map(PlannedLayer::n_filters).sum();
        if let Some(&n3) = kernel_shape_counts.get("(3, 3)")
            && n3 != n_filters
        {
            report.warn(
                Warning::RELEASE_MISMATCH,
                format!(
                    "the release's \"(3, 3) filters\" says {n3}, its filter_ids ranges hold \
                     {n_filters}"
                ),
            );
        }
        let total_counts: u64 = kernel_shape_counts.values().sum();
        for (c, key) in [
            (COL_TOTAL, "release_total_filters"),
            (COL_SHARE, "release_3x3_filter_share"),
        ] {
            let Some(v) = table.column(c).map(|i| &table.rows[r0][i]) else {
                continue;
            };
            let Ok(Some(x)) = v.as_f64() else {
                continue;
            };
            if kernel_shape_counts.is_empty() {
                // nothing to check against: keep the release's value
                extra.insert(key.to_owned(), x.to_string());
                continue;
            }
            let ours = if c == COL_TOTAL {
                total_counts as f64
            } else {
                kernel_shape_counts.get("(3, 3)").copied().unwrap_or(0) as f64 / total_counts as f64
            };
            if (x - ours).abs() > 1e-9 * x.abs().max(1.0) {
                extra.insert(key.to_owned(), x.to_string());
                report.warn(
                    Warning::RELEASE_MISMATCH,
                    format!(
                        "the release's {c} ({x}) differs from its \"(X, Y) filters\" columns \
                         ({ours})"
                    ),
                );
            }
        }
        let mut task = val(COL_TASK);
        if fix_labels
            && let Some(t) = &task
            && let Some(fixed) = fix_task_label(t)
        {
            report.warn(
                Warning::LABEL_FIX,
                format!(
                    "--fix-labels: task {t:?} -> {fixed:?} (the paper's notebook: every task \
                     containing \"Segmentation\" is Segmentation)"
                ),
            );
            extra.insert(
                "label_fixes".to_owned(),
                serde_json::json!({ "Task": { "from": t, "to": fixed } }).to_string(),
            );
            task = Some(fixed.to_owned());
        }
        if ls.len() == 1 || ls.iter().all(|l| l.conv_depth == ls[0].conv_depth) {
            report.warn(
                Warning::SINGLE_CONV_LEVEL,
                format!(
                    "single conv level: every layer has conv_depth {}",
                    ls[0].conv_depth
                ),
            );
        }
        let conv_tensors = operators
            .get("Conv")
            .map_or(ls.len() as u64, |&n| n.max(0) as u64);
        let depth = table
            .column(COL_DEPTH)
            .and_then(|i| table.rows[r0][i].as_i64().ok().flatten());
        plan.models.push(PlannedModel {
            release_model_id: id,
            meta: ModelMeta {
                name,
                architecture: val(COL_NAME),
                task,
                training_dataset: val(COL_TRAINING),
                pretraining_dataset: val(COL_PRETRAINING),
                visual_category: visual.and_then(|i| text(&table.rows[r0][i])),
                source_format: "hdf5".to_owned(),
                source_path: path.display().to_string(),
                source_sha256: String::new(),
                source_bytes: 0,
                depth,
                kernel_shape_counts,
                conv_tensors,
                extra,
                report,
            },
            layers: ls,
        });
    }
    Ok(plan)
}

/// Task and visual-category values of `models` that the vocabulary (built in plus
/// `vocab`) lacks: `(kind, value) -> model names`.
fn unknown_labels(
    models: &[PlannedModel],
    vocab: &VocabExtra,
) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for m in models {
        for (kind, value, extra) in [
            (KIND_TASK, &m.meta.task, &vocab.tasks),
            (
                KIND_VISUAL_CATEGORY,
                &m.meta.visual_category,
                &vocab.visual_categories,
            ),
        ] {
            if let Some(v) = value
                && canonicalise(kind, v, extra).is_err()
            {
                out.entry((kind.to_owned(), v.clone()))
                    .or_default()
                    .push(m.meta.name.clone());
            }
        }
    }
    out
}

fn describe_unknown(kind: &str, value: &str, models: &[String], vocab: &VocabExtra) -> String {
    let extra = if kind == KIND_TASK {
        &vocab.tasks
    } else {
        &vocab.visual_categories
    };
    let hint = match canonicalise(kind, value, extra) {
        Err(IngestError::UnknownVocabulary { suggestions, .. }) if !suggestions.is_empty() => {
            format!("; close: {}", suggestions.join(", "))
        }
        _ => String::new(),
    };
    let shown: Vec<&str> = models.iter().take(3).map(String::as_str).collect();
    format!(
        "{kind} {value:?} ({} model(s): {}{}){hint}",
        models.len(),
        shown.join(", "),
        if models.len() > 3 { ", ..." } else { "" }
    )
}

/// A model's filters, read: in memory or in a memory-mapped temporary file.
enum Filters {
    Memory(Vec<u8>),
    Mapped(memmap2::Mmap),
}

impl Filters {
    fn bytes(&self) -> &[u8] {
        match self {
            Filters::Memory(v) => v,
            Filters::Mapped(m) => m,
        }
    }
}

/// Reads `m`'s filters in blocks aligned to `block` rows, hashing the layer structure and
/// the bytes; returns the bytes (layer after layer) and the hex sha256.
fn read_model(
    file: &ReleaseFile,
    m: &PlannedModel,
    opts: &ImportOptions,
    spill_dir: &Path,
    progress: &dyn ImportProgress,
) -> Result<(Filters, String)> {
    let elem = 9 * file.dtype().size();
    let total = m.n_filters() as usize * elem;
    let chunk = file.chunk_rows().unwrap_or(1).max(1);
    let block = (opts.block_rows.max(1)).div_ceil(chunk) * chunk;
    let mut hash = Sha256::new();
    hash.update(format!(
        "filterdb import-cnnfilterdb v1\n{}\n",
        file.dtype().name()
    ));
    for l in &m.layers {
        hash.update(format!(
            "{}:{} {} {:?}\n",
            l.start, l.end, l.conv_depth, l.conv_depth_norm
        ));
    }
    let io = |action: &'static str| {
        let path = spill_dir.to_owned();
        move |source| IngestError::Io {
            path,
            action,
            source,
        }
    };
    let mut spill = if total as u64 > opts.buffer_bytes {
        Some(tempfile::tempfile_in(spill_dir).map_err(io("creating a buffer file in"))?)
    } else {
        None
    };
    let mut mem: Vec<u8> = Vec::with_capacity(if spill.is_some() { 0 } else { total });
    let mut scratch: Vec<u8> = Vec::new();
    for l in &m.layers {
        let mut pos = l.start;
        let end = l.end + 1;
        while pos < end {
            let next = ((pos / block as u64 + 1) * block as u64).min(end);
            let n = (next - pos) as usize * elem;
            let buf: &mut [u8] = if spill.is_some() {
                scratch.resize(n, 0);
                &mut scratch
            } else {
                let at = mem.len();
                mem.resize(at + n, 0);
                &mut mem[at..]
            };
            file.read_rows(pos, next, buf)?;
            hash.update(&*buf);
            if let Some(f) = spill.as_mut() {
                f.write_all(buf).map_err(io("writing a buffer file in"))?;
            }
            progress.filters_read(next - pos);
            pos = next;
        }
    }
    let sha = format!("{:x}", hash.finalize());
    let filters = match spill.take() {
        None => Filters::Memory(mem),
        Some(f) => {
            // SAFETY: the file is unnamed (unlinked) and private to this process; nothing
            // else can change it while it is mapped.
            let map =
                unsafe { memmap2::Mmap::map(&f) }.map_err(io("memory-mapping a buffer file in"))?;
            Filters::Mapped(map)
        }
    };
    Ok((filters, sha))
}

enum Outcome {
    Committed(ImportedModel),
    Skipped(SkippedModel),
}

fn import_model(
    writer: &mut StoreWriter,
    file: &ReleaseFile,
    m: &PlannedModel,
    opts: &ImportOptions,
    progress: &dyn ImportProgress,
) -> Result<Outcome> {
    let path = file.path();
    let spill_dir = writer.store().root().join("_tmp");
    let (filters, sha) = read_model(file, m, opts, &spill_dir, progress)?;
    if let Some(e) = writer.snapshot().find_by_sha256(&sha) {
        return Ok(Outcome::Skipped(SkippedModel {
            release_model_id: m.release_model_id,
            model_id: e.model_id,
            name: e.name.clone(),
        }));
    }
    if let Some(e) = writer.snapshot().find_by_name(&m.meta.name) {
        return Err(IngestError::Release {
            path: path.to_owned(),
            location: format!("model_id {}", m.release_model_id),
            detail: format!(
                "a different model named {:?} is already stored (model_id {}, sha256 {}); an \
                 import never replaces models: import into a new store",
                m.meta.name, e.model_id, e.source_sha256
            ),
        });
    }
    let bytes = filters.bytes();
    let elem = 9 * file.dtype().size();
    let mut meta = m.meta.clone();
    meta.source_sha256 = sha;
    meta.source_bytes = bytes.len() as u64;
    let mut layers = Vec::with_capacity(m.layers.len());
    let mut at = 0usize;
    for l in &m.layers {
        let n = l.n_filters() as usize;
        layers.push(LayerInput {
            layer_name: format!("{}:{}", l.start, l.end),
            conv_depth: l.conv_depth,
            conv_depth_norm: l.conv_depth_norm,
            depth_rule: DEPTH_RULE_RELEASE.to_owned(),
            out_channels: n,
            in_channels: 1,
            groups: 1,
            weights: KernelData {
                dtype: file.dtype(),
                layout: KernelLayout::Oihw,
                bytes: Cow::Borrowed(&bytes[at..at + n * elem]),
            },
        });
        at += n * elem;
    }
    let input = ModelInput { meta, layers };
    let store_err = |action: &'static str| {
        let path = path.to_owned();
        move |source| IngestError::Store {
            path,
            action,
            source: Box::new(source),
        }
    };
    let staged = writer
        .stage(
            &input,
            &StageOptions {
                allow_nonfinite: opts.allow_nonfinite,
            },
        )
        .map_err(store_err("staging"))?;
    let (model_id, n_layers, n_filters, report) = (
        staged.model_id(),
        staged.n_layers(),
        staged.n_filters(),
        staged.report().clone(),
    );
    // The label fixes go into the commit's detail too, so the history shows them.
    let staged = match m.meta.extra.get("label_fixes") {
        Some(fixes) => staged.with_note(format!("import-cnnfilterdb --fix-labels: {fixes}")),
        None => staged,
    };
    let version = writer
        .commit(staged, CommitMode::Add)
        .map_err(store_err("committing"))?;
    Ok(Outcome::Committed(ImportedModel {
        release_model_id: m.release_model_id,
        model_id,
        name: m.meta.name.clone(),
        version,
        n_layers,
        n_filters,
        report,
    }))
}

/// Imports a CNN Filter DB release into the store of `writer`: one version per model.
///
/// Reads `/meta` (or `opts.meta`), maps it ([`plan_import`]), checks every task and
/// visual category against the vocabulary (adding the missing ones with
/// `opts.add_vocab`), then reads each model's filters in hyperslabs of at most
/// `opts.block_rows` rows and commits it. Memory holds one model's filters (at most
/// `opts.buffer_bytes`; larger models go through a temporary file) plus one block.
///
/// # Errors
/// Errors of the file as a whole (see the module docs) and
/// [`IngestError::UnknownReleaseVocabulary`]; nothing is committed then. Errors of one
/// model are in [`ImportReport::failed`].
pub fn import_cnnfilterdb(
    writer: &mut StoreWriter,
    path: &Path,
    opts: &ImportOptions,
    progress: &dyn ImportProgress,
) -> Result<ImportReport> {
    let file = ReleaseFile::open(path)?;
    let table = match &opts.meta {
        Some(p) => read_meta_file(p)?,
        None => file.read_meta()?,
    };
    let mut plan = plan_import(
        &table,
        path,
        file.n_rows(),
        file.filters_name(),
        opts.fix_labels,
    )?;
    let mut report = ImportReport {
        meta_source: table.source.clone(),
        filters: format!(
            "{} ({} x 9 {}, {})",
            file.filters_name(),
            file.n_rows(),
            file.dtype().name(),
            file.storage()
        ),
        failed: std::mem::take(&mut plan.failed),
        unreferenced_filters: plan.unreferenced_filters,
        ..ImportReport::default()
    };

    // Vocabulary: stop before writing anything, or add what is missing.
    let mut vocab = crate::ingest::vocab_extra(writer.snapshot());
    let unknown = unknown_labels(&plan.models, &vocab);
    if !unknown.is_empty() {
        if !opts.add_vocab {
            return Err(IngestError::UnknownReleaseVocabulary {
                path: path.to_owned(),
                values: unknown
                    .iter()
                    .map(|((k, v), ms)| describe_unknown(k, v, ms, &vocab))
                    .collect(),
            });
        }
        for (kind, value) in unknown.keys() {
            let extra = writer.snapshot().vocab_extra(kind);
            let value = check_new_value(kind, value, &extra)?;
            let version =
                writer
                    .commit_vocab_add(kind, &value)
                    .map_err(|source| IngestError::Store {
                        path: path.to_owned(),
                        action: "adding a vocabulary value",
                        source: Box::new(source),
                    })?;
            report.vocab_added.push((kind.clone(), value, version));
        }
        vocab = crate::ingest::vocab_extra(writer.snapshot());
    }
    for m in &mut plan.models {
        if let Some(t) = &m.meta.task {
            m.meta.task = Some(canonicalise(KIND_TASK, t, &vocab.tasks)?);
        }
        if let Some(v) = &m.meta.visual_category {
            m.meta.visual_category = Some(canonicalise(
                KIND_VISUAL_CATEGORY,
                v,
                &vocab.visual_categories,
            )?);
        }
    }

    progress.start(
        plan.models.len() as u64,
        plan.models.iter().map(PlannedModel::n_filters).sum(),
        9 * file.dtype().size() as u64,
    );
    for m in &plan.models {
        match import_model(writer, &file, m, opts, progress) {
            Ok(Outcome::Committed(c)) => report.committed.push(c),
            Ok(Outcome::Skipped(s)) => report.skipped.push(s),
            Err(e) => report.failed.push(FailedModel {
                release_model_id: m.release_model_id,
                name: Some(m.meta.name.clone()),
                error: error_chain(&e),
            }),
        }
        progress.model_done();
    }
    progress.finish();
    report.failed.sort_by_key(|f| f.release_model_id);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use MetaValue::{Float, Int, Null, Text};

    fn t(s: &str) -> MetaValue {
        Text(s.to_owned())
    }

    const COLUMNS: [&str; 12] = [
        "model_id",
        "conv_depth",
        "conv_depth_norm",
        "filter_ids",
        "model",
        "Name",
        "Task",
        "Visual Category",
        "(3, 3) filters",
        "Conv",
        "producer",
        "Paper",
    ];

    fn row(
        id: i64,
        depth: i64,
        norm: f64,
        ids: &str,
        model: &str,
        task: &str,
        n3: i64,
    ) -> Vec<MetaValue> {
        vec![
            Int(id),
            Int(depth),
            Float(norm),
            t(ids),
            t(model),
            t("Net"),
            t(task),
            t("natural"),
            Int(n3),
            Float(2.0),
            t("pytorch"),
            Null,
        ]
    }

    fn table(rows: Vec<Vec<MetaValue>>) -> MetaTable {
        MetaTable {
            source: "t.h5:/meta/table".to_owned(),
            columns: COLUMNS.iter().map(|s| (*s).to_owned()).collect(),
            rows,
        }
    }

    fn plan(rows: Vec<Vec<MetaValue>>, n: u64, fix: bool) -> Plan {
        plan_import(&table(rows), Path::new("t.h5"), n, "/filters", fix).unwrap()
    }

    #[test]
    fn maps_models_layers_and_extra() {
        let p = plan(
            vec![
                row(5, 1, 1.0, "10:19", "b", "Classification", 15),
                row(2, 0, 0.0, "0:4", "a", "Semantic Segmentation", 5),
                row(5, 0, 0.0, "20:24", "b", "Classification", 15),
            ],
            30,
            false,
        );
        assert!(p.failed.is_empty(), "{:?}", p.failed);
        assert_eq!(p.unreferenced_filters, 10);
        let ids: Vec<i64> = p.models.iter().map(|m| m.release_model_id).collect();
        assert_eq!(ids, vec![2, 5]);
        let b = &p.models[1];
        assert_eq!(b.meta.name, "b");
        assert_eq!(b.meta.architecture.as_deref(), Some("Net"));
        assert_eq!(b.n_filters(), 15);
        // layers by range start, depths from the rows
        let l: Vec<(u64, u64, i64)> = b
            .layers
            .iter()
            .map(|l| (l.start, l.end, l.conv_depth))
            .collect();
        assert_eq!(l, vec![(10, 19, 1), (20, 24, 0)]);
        assert_eq!(b.meta.kernel_shape_counts["(3, 3)"], 15);
        assert_eq!(b.meta.conv_tensors, 2);
        assert_eq!(b.meta.extra["producer"], "pytorch");
        assert_eq!(b.meta.extra["operator_counts"], r#"{"Conv":2}"#);
        assert_eq!(b.meta.extra["cnnfilterdb_model_id"], "5");
        assert!(!b.meta.extra.contains_key("paper"));
        assert_eq!(
            p.models[0].meta.task.as_deref(),
            Some("Semantic Segmentation")
        );
        assert!(
            p.models[0]
                .meta
                .report
                .has_warning(Warning::SINGLE_CONV_LEVEL)
        );
        assert!(!b.meta.report.has_warning(Warning::SINGLE_CONV_LEVEL));
    }

    #[test]
    fn fix_labels_follows_the_notebook() {
        assert_eq!(
            fix_task_label("Semantic Segmentation"),
            Some("Segmentation")
        );
        assert_eq!(
            fix_task_label("Instance Segmentation"),
            Some("Segmentation")
        );
        assert_eq!(fix_task_label("Segmentation"), None);
        assert_eq!(fix_task_label("segmentation"), None); // case-sensitive, as the notebook
        assert_eq!(fix_task_label("Classification"), None);
        let p = plan(
            vec![row(1, 0, 0.0, "0:4", "a", "Semantic Segmentation", 5)],
            5,
            true,
        );
        let m = &p.models[0];
        assert_eq!(m.meta.task.as_deref(), Some("Segmentation"));
        assert!(m.meta.extra["label_fixes"].contains("Semantic Segmentation"));
        let fix = m
            .meta
            .report
            .warnings
            .iter()
            .find(|w| w.code == Warning::LABEL_FIX);
        assert!(
            fix.is_some_and(|w| w.message.contains("--fix-labels")),
            "{:?}",
            m.meta.report
        );
    }

    #[test]
    fn bad_rows_fail_their_model_only() {
        let mut bad_depth = row(3, 0, 0.0, "10:14", "c", "Classification", 5);
        bad_depth[1] = t("deep");
        let mut bad_norm = row(4, 0, 0.0, "15:19", "d", "Classification", 5);
        bad_norm[2] = Float(1.5);
        let p = plan(
            vec![
                row(1, 0, 0.0, "0:4", "a", "Classification", 5),
                row(2, 0, 0.0, "5:99", "b", "Classification", 5),
                bad_depth,
                bad_norm,
                row(5, 0, 0.0, "20:x", "e", "Classification", 5),
                row(6, 0, 0.0, "24:21", "f", "Classification", 5),
            ],
            30,
            false,
        );
        assert_eq!(p.models.len(), 1);
        assert_eq!(p.models[0].meta.name, "a");
        let errs: BTreeMap<i64, &str> = p
            .failed
            .iter()
            .map(|f| (f.release_model_id, f.error.as_str()))
            .collect();
        assert!(
            errs[&2].contains("column filter_ids") && errs[&2].contains("beyond /filters"),
            "{}",
            errs[&2]
        );
        assert!(errs[&2].contains("holds 30 filters"), "{}", errs[&2]);
        assert!(
            errs[&3].contains("row 2, column conv_depth")
                && errs[&3].contains("\"deep\" is not an integer"),
            "{}",
            errs[&3]
        );
        assert!(
            errs[&4].contains("conv_depth_norm") && errs[&4].contains("[0, 1]"),
            "{}",
            errs[&4]
        );
        assert!(errs[&5].contains("\"20:x\""), "{}", errs[&5]);
        assert!(errs[&6].contains("after end"), "{}", errs[&6]);
    }

    #[test]
    fn overlapping_ranges_fail_both_models() {
        let p = plan(
            vec![
                row(1, 0, 0.0, "0:9", "a", "Classification", 10),
                row(2, 0, 0.0, "8:12", "b", "Classification", 5),
                row(3, 0, 0.0, "13:20", "c", "Classification", 8),
                row(3, 1, 1.0, "20:20", "c", "Classification", 8),
            ],
            30,
            false,
        );
        let failed: Vec<i64> = p.failed.iter().map(|f| f.release_model_id).collect();
        assert_eq!(failed, vec![1, 2, 3]);
        assert!(p.failed[0].error.contains("overlaps"), "{:?}", p.failed);
        assert!(p.models.is_empty());
    }

    #[test]
    fn table_errors_and_names() {
        let mut tb = table(vec![row(1, 0, 0.0, "0:4", "a", "Classification", 5)]);
        tb.columns[3] = "ids".to_owned();
        let e = plan_import(&tb, Path::new("t.h5"), 5, "/filters", false).unwrap_err();
        assert!(e.to_string().contains("no column \"filter_ids\""), "{e}");
        let mut r = row(1, 0, 0.0, "0:4", "a", "Classification", 5);
        r[0] = t("x");
        let e = plan_import(&table(vec![r]), Path::new("t.h5"), 5, "/filters", false).unwrap_err();
        assert!(e.to_string().contains("row 0, column model_id"), "{e}");
        // shared names are disambiguated, missing ones made up
        let mut unnamed = row(9, 0, 0.0, "10:14", "", "Classification", 5);
        unnamed[5] = Null;
        let p = plan(
            vec![
                row(1, 0, 0.0, "0:4", "same", "Classification", 5),
                row(2, 0, 0.0, "5:9", "same", "Classification", 5),
                unnamed,
            ],
            15,
            false,
        );
        let names: Vec<&str> = p.models.iter().map(|m| m.meta.name.as_str()).collect();
        assert_eq!(
            names,
            vec!["same (model_id 1)", "same (model_id 2)", "cnnfilterdb_9"]
        );
        // the shared name is a duplicate_name warning of both models, not of the third
        let dup: Vec<bool> = p
            .models
            .iter()
            .map(|m| m.meta.report.has_warning(Warning::DUPLICATE_NAME))
            .collect();
        assert_eq!(dup, [true, true, false]);
        assert!(
            p.models[0].meta.report.warnings[0]
                .message
                .contains("2 model ids")
        );
    }

    #[test]
    fn unknown_labels_are_listed() {
        let p = plan(
            vec![
                row(1, 0, 0.0, "0:4", "a", "Semantic Segmentation", 5),
                row(2, 0, 0.0, "5:9", "b", "semantic segmentation", 5),
                row(3, 0, 0.0, "10:14", "c", "classification", 5),
            ],
            15,
            false,
        );
        let u = unknown_labels(&p.models, &VocabExtra::default());
        assert_eq!(u.len(), 2);
        let (k, ms) = u.iter().next().unwrap();
        assert_eq!(k.0, "task");
        assert_eq!(ms, &vec!["a".to_owned()]);
        let d = describe_unknown("task", "Semantic Segmentation", ms, &VocabExtra::default());
        assert!(d.contains("close: ") && d.contains("Segmentation"), "{d}");
        let extra = VocabExtra {
            tasks: vec!["Semantic Segmentation".to_owned()],
            ..Default::default()
        };
        assert!(unknown_labels(&p.models, &extra).is_empty());
    }
}

/// End to end on HDF5 files written here with hdf5-metno in the shapes pandas writes
/// (no Python needed; the Python-written fixtures are tested in `tests/import_h5.rs`).
#[cfg(test)]
mod h5_tests {
    use super::*;
    use filterdb_store::{Precision, Store};
    use hdf5_metno::types::FixedAscii;

    #[derive(hdf5_metno::H5Type, Clone, Copy)]
    #[repr(C)]
    struct Row {
        index: i64,
        values_block_0: [i64; 2],
        values_block_1: [f64; 1],
        values_block_2: [FixedAscii<12>; 2],
        values_block_3: [FixedAscii<24>; 1],
        conv_depth_norm: f64,
        conv_depth: i64,
        model_id: i64,
    }

    fn fa<const N: usize>(s: &str) -> FixedAscii<N> {
        FixedAscii::<N>::from_ascii(s).unwrap()
    }

    fn str_attr(loc: &hdf5_metno::Location, name: &str, value: &str) {
        loc.new_attr::<FixedAscii<128>>()
            .create(name)
            .unwrap()
            .write_scalar(&fa::<128>(value))
            .unwrap();
    }

    /// `n` filters, chunked 7 x 9 with gzip; a pandas-like `table` with models 4 (two
    /// layers) and 9 (one layer; task missing as pandas' "nan").
    fn write_release(path: &Path, n: usize, table: bool, dims3: bool) -> Vec<f32> {
        let values: Vec<f32> = (0..n * 9)
            .map(|i| match i % 7 {
                0 => -0.0,
                1 => f32::from_bits(1 + i as u32), // subnormal
                _ => (i as f32 * 0.37).sin() * 3.0,
            })
            .collect();
        let f = hdf5_metno::File::create(path).unwrap();
        let ds = if dims3 {
            // N x 3 x 3, contiguous
            f.new_dataset::<f32>().shape((n, 3, 3)).create("filters")
        } else {
            f.new_dataset::<f32>()
                .shape((n, 9))
                .chunk((7, 9))
                .deflate(4)
                .create("filters")
        }
        .unwrap();
        ds.write_raw(&values).unwrap();
        let rows = [
            (4, 1, 1.0, "10:29", "net-a", "Semantic Segmentation"),
            (4, 0, 0.0, "3:9", "net-a", "Semantic Segmentation"),
            (9, 0, 0.0, "30:30", "net-b", "nan"),
        ];
        if table {
            let data: Vec<Row> = rows
                .iter()
                .enumerate()
                .map(|(i, &(id, d, norm, ids, model, task))| Row {
                    index: i as i64,
                    values_block_0: [10 + id, 2],
                    values_block_1: [0.75],
                    values_block_2: [fa(ids), fa(model)],
                    values_block_3: [fa(task)],
                    conv_depth_norm: norm,
                    conv_depth: d,
                    model_id: id,
                })
                .collect();
            let g = f.create_group("meta").unwrap();
            let t = g
                .new_dataset::<Row>()
                .shape(data.len())
                .create("table")
                .unwrap();
            t.write_raw(&data).unwrap();
            str_attr(
                &t,
                "values_block_0_kind",
                "(lp0\nVdepth\np1\naVConv\np2\na.",
            );
            str_attr(&t, "values_block_1_kind", "(lp0\nV3x3_filter_share\np1\na.");
            str_attr(
                &t,
                "values_block_2_kind",
                "(lp0\nVfilter_ids\np1\naVmodel\np2\na.",
            );
            str_attr(&t, "values_block_3_kind", "(lp0\nVTask\np1\na.");
            str_attr(&t, "values_block_3_nan_rep", "nan");
            str_attr(&g, "nan_rep", "N.");
        } else {
            // the CSV-bytes form
            let mut csv = "model_id,conv_depth,conv_depth_norm,filter_ids,model,Task\n".to_owned();
            for (id, d, norm, ids, model, task) in rows {
                let task = if task == "nan" { "" } else { task };
                csv.push_str(&format!("{id},{d},{norm},{ids},{model},{task}\n"));
            }
            f.new_dataset::<u8>()
                .shape(csv.len())
                .create("meta")
                .unwrap()
                .write_raw(csv.as_bytes())
                .unwrap();
        }
        values
    }

    fn stored(store: &Store) -> Vec<(i64, i32, i32, i32, [f32; 9])> {
        use arrow::array::AsArray;
        use arrow::datatypes::{Float32Type, Int32Type, Int64Type};
        let snap = store.snapshot(None).unwrap();
        let mut out = Vec::new();
        for m in snap.models.values() {
            let file = std::fs::File::open(store.path_of(&m.files.filters)).unwrap();
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .unwrap()
                    .build()
                    .unwrap();
            for b in reader {
                let b = b.unwrap();
                let col = |n: &str| std::sync::Arc::clone(b.column_by_name(n).unwrap());
                let id = col("filter_id");
                let id = id.as_primitive::<Int64Type>();
                let (l, o, i) = (col("layer_idx"), col("out_channel"), col("in_channel"));
                let ws: Vec<_> = (0..9).map(|k| col(&format!("w{k}"))).collect();
                for r in 0..b.num_rows() {
                    let w: [f32; 9] =
                        std::array::from_fn(|k| ws[k].as_primitive::<Float32Type>().value(r));
                    out.push((
                        id.value(r),
                        l.as_primitive::<Int32Type>().value(r),
                        o.as_primitive::<Int32Type>().value(r),
                        i.as_primitive::<Int32Type>().value(r),
                        w,
                    ));
                }
            }
        }
        out.sort_by_key(|r| r.0);
        out
    }

    fn import(table: bool, dims3: bool) {
        let dir = tempfile::tempdir().unwrap();
        let h5 = dir.path().join("dataset.h5");
        let values = write_release(&h5, 40, table, dims3);
        let store = Store::init(dir.path().join("s"), Precision::F32).unwrap();
        let mut w = store.writer(true).unwrap();
        let opts = ImportOptions {
            fix_labels: true,
            block_rows: 5, // rounded up to one 7-row chunk
            ..Default::default()
        };
        let rep = import_cnnfilterdb(&mut w, &h5, &opts, &NoImportProgress).unwrap();
        assert!(rep.failed.is_empty(), "{rep:#?}");
        assert_eq!(rep.committed.len(), 2, "{rep:#?}");
        assert_eq!(rep.unreferenced_filters, 40 - 28);
        let a = &rep.committed[0];
        assert_eq!(
            (a.release_model_id, a.name.as_str(), a.n_layers, a.n_filters),
            (4, "net-a", 2, 27)
        );
        let snap = w.snapshot().clone();
        let m = snap.find_by_name("net-a").unwrap();
        assert_eq!(m.task.as_deref(), Some("Segmentation"));
        assert_eq!(snap.find_by_name("net-b").unwrap().task, None);
        // every weight bit-equal to its source row; layer = sorted by range start
        let rows = stored(&store);
        assert_eq!(rows.len(), 28);
        let src_rows: Vec<usize> = (3..=29).chain([30]).collect();
        for (k, (&src, r)) in src_rows.iter().zip(&rows).enumerate() {
            let layer_start = [3, 10, 30][r.1 as usize + if k == 27 { 2 } else { 0 }];
            assert_eq!(src, layer_start + r.2 as usize, "{r:?}");
            assert_eq!(r.3, 0);
            for j in 0..9 {
                assert_eq!(
                    r.4[j].to_bits(),
                    values[src * 9 + j].to_bits(),
                    "row {src} col {j}"
                );
            }
        }
        // a rerun commits nothing
        let again = import_cnnfilterdb(&mut w, &h5, &opts, &NoImportProgress).unwrap();
        assert!(again.committed.is_empty(), "{again:#?}");
        assert_eq!(again.skipped.len(), 2);
        assert_eq!(w.snapshot().version, snap.version);
    }

    #[test]
    fn imports_a_pandas_table() {
        import(true, false);
    }

    #[test]
    fn imports_csv_bytes_meta() {
        import(false, false);
    }

    #[test]
    fn imports_n_x_3_x_3_filters() {
        import(false, true);
    }

    #[test]
    fn file_errors_commit_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path().join("s"), Precision::F16).unwrap();
        let mut w = store.writer(true).unwrap();
        let opts = ImportOptions::default();
        // not HDF5
        let junk = dir.path().join("junk.h5");
        std::fs::write(&junk, b"not hdf5").unwrap();
        let e = import_cnnfilterdb(&mut w, &junk, &opts, &NoImportProgress).unwrap_err();
        assert!(matches!(e, IngestError::Hdf5 { .. }), "{e}");
        // no filters, wrong width
        let p = dir.path().join("nofilters.h5");
        hdf5_metno::File::create(&p)
            .unwrap()
            .new_dataset::<f32>()
            .shape((4, 9))
            .create("w")
            .unwrap();
        let e = import_cnnfilterdb(&mut w, &p, &opts, &NoImportProgress)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no dataset /filters") && e.contains("w"), "{e}");
        let p = dir.path().join("w8.h5");
        hdf5_metno::File::create(&p)
            .unwrap()
            .new_dataset::<f32>()
            .shape((4, 8))
            .create("filter")
            .unwrap();
        let e = import_cnnfilterdb(&mut w, &p, &opts, &NoImportProgress)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("dataset /filter") && e.contains("[4, 8]") && e.contains("N x 9"),
            "{e}"
        );
        // unknown labels without --fix-labels / --add-vocab
        let p = dir.path().join("d.h5");
        write_release(&p, 40, true, false);
        let e = import_cnnfilterdb(&mut w, &p, &opts, &NoImportProgress)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"Semantic Segmentation\"") && e.contains("--add-vocab"),
            "{e}"
        );
        assert_eq!(w.snapshot().version, 0);
        // --add-vocab adds it in its own version
        let add = ImportOptions {
            add_vocab: true,
            ..Default::default()
        };
        let rep = import_cnnfilterdb(&mut w, &p, &add, &NoImportProgress).unwrap();
        assert_eq!(
            rep.vocab_added,
            vec![("task".to_owned(), "Semantic Segmentation".to_owned(), 1)]
        );
        assert_eq!(rep.committed.len(), 2);
        assert_eq!(
            w.snapshot().find_by_name("net-a").unwrap().task.as_deref(),
            Some("Semantic Segmentation")
        );
    }
}
