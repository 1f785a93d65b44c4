//! The commit log: one JSON file per version under `_log/`, plus periodic checkpoints.
//!
//! Version `N` is the file `_log/{N:020}.json`. A commit is made visible by hard-linking a
//! fully written and fsynced temporary file to that name: `link(2)` fails if the name
//! exists, so a version is written exactly once and is never seen half-written.
//! Every [`CHECKPOINT_INTERVAL`] versions the whole snapshot is also written to
//! `_log/{N:020}.checkpoint.json` (atomically, by rename) so opening a store replays at
//! most that many commits.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result, StoreError};
use crate::schema::Precision;

/// Directory of the commit log inside a store.
pub const LOG_DIR: &str = "_log";
/// A checkpoint is written every this many versions.
pub const CHECKPOINT_INTERVAL: u64 = 100;

/// The three data files of one model, relative to the store root (`/`-separated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFiles {
    /// The one-row `models` file.
    pub models: String,
    /// The `layers` file.
    pub layers: String,
    /// The `filters` file.
    pub filters: String,
}

impl ModelFiles {
    /// The three paths.
    pub fn all(&self) -> [&str; 3] {
        [&self.models, &self.layers, &self.filters]
    }
}

/// A model as the log knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelEntry {
    /// Store-wide unique id (never reused).
    pub model_id: i64,
    /// Unique name.
    pub name: String,
    /// sha256 of the source file.
    pub source_sha256: String,
    /// Number of 3x3 layers.
    pub n_layers: u64,
    /// Number of 3x3 filters.
    pub n_filters: u64,
    /// Id of the first filter; the model's filters are `first_filter_id..first_filter_id + n_filters`.
    pub first_filter_id: i64,
    /// Bytes of the three data files.
    pub bytes: u64,
    /// Task (for summaries without opening Parquet).
    #[serde(default)]
    pub task: Option<String>,
    /// Visual category (for summaries without opening Parquet).
    #[serde(default)]
    pub visual_category: Option<String>,
    /// The data files.
    pub files: ModelFiles,
    /// The version that added it.
    pub added_in: u64,
}

/// One change inside a commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Version 0: the store was created.
    Init {
        /// Weight precision of the store.
        precision: Precision,
    },
    /// A model and its files became visible.
    AddModel(ModelEntry),
    /// A model stopped being visible (its files stay for older versions until vacuumed).
    RemoveModel {
        /// The model.
        model_id: i64,
    },
    /// A vocabulary value was added (`kind` = `task` or `visual_category`).
    VocabAdd {
        /// Which vocabulary.
        kind: String,
        /// The canonical spelling.
        value: String,
    },
    /// History before `min_readable_version` was vacuumed: older versions cannot be read.
    Vacuum {
        /// Oldest version whose files still exist.
        min_readable_version: u64,
    },
}

/// One version of the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Commit {
    /// The version number.
    pub version: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// What was done (`init`, `ingest`, `replace`, `vocab add`, `vacuum`, ...).
    pub operation: String,
    /// Free-form details (e.g. the ingested model's name).
    #[serde(default)]
    pub detail: String,
    /// The changes.
    pub actions: Vec<Action>,
    /// Next unused model id after this commit.
    pub next_model_id: i64,
    /// Next unused filter id after this commit.
    pub next_filter_id: i64,
}

/// The state of the store at one version: the replay of the log up to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The version.
    pub version: u64,
    /// Weight precision.
    pub precision: Precision,
    /// Visible models by id.
    pub models: BTreeMap<i64, ModelEntry>,
    /// User-added vocabulary by kind.
    pub vocab: BTreeMap<String, BTreeSet<String>>,
    /// Next unused model id.
    pub next_model_id: i64,
    /// Next unused filter id.
    pub next_filter_id: i64,
    /// Oldest version that can be read.
    pub min_readable_version: u64,
}

impl Snapshot {
    /// Apply one commit on top of this state.
    pub(crate) fn apply(&mut self, commit: &Commit) {
        self.version = commit.version;
        self.next_model_id = self.next_model_id.max(commit.next_model_id);
        self.next_filter_id = self.next_filter_id.max(commit.next_filter_id);
        for action in &commit.actions {
            match action {
                Action::Init { precision } => self.precision = *precision,
                Action::AddModel(entry) => {
                    self.models.insert(entry.model_id, entry.clone());
                }
                Action::RemoveModel { model_id } => {
                    self.models.remove(model_id);
                }
                Action::VocabAdd { kind, value } => {
                    self.vocab
                        .entry(kind.clone())
                        .or_default()
                        .insert(value.clone());
                }
                Action::Vacuum {
                    min_readable_version,
                } => self.min_readable_version = *min_readable_version,
            }
        }
    }

    /// The model whose source file had this sha256, if any.
    pub fn find_by_sha256(&self, sha256: &str) -> Option<&ModelEntry> {
        self.models.values().find(|m| m.source_sha256 == sha256)
    }

    /// The model with this name, if any.
    pub fn find_by_name(&self, name: &str) -> Option<&ModelEntry> {
        self.models.values().find(|m| m.name == name)
    }

    /// User-added vocabulary of one kind (`task`, `visual_category`).
    pub fn vocab_extra(&self, kind: &str) -> Vec<String> {
        self.vocab
            .get(kind)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Total 3x3 filters of the visible models.
    pub fn n_filters(&self) -> u64 {
        self.models.values().map(|m| m.n_filters).sum()
    }

    /// Total 3x3 layers of the visible models.
    pub fn n_layers(&self) -> u64 {
        self.models.values().map(|m| m.n_layers).sum()
    }

    /// Bytes of the visible models' data files.
    pub fn bytes(&self) -> u64 {
        self.models.values().map(|m| m.bytes).sum()
    }
}

pub(crate) fn log_dir(root: &Path) -> PathBuf {
    root.join(LOG_DIR)
}

fn commit_path(root: &Path, version: u64) -> PathBuf {
    log_dir(root).join(format!("{version:020}.json"))
}

fn checkpoint_path(root: &Path, version: u64) -> PathBuf {
    log_dir(root).join(format!("{version:020}.checkpoint.json"))
}

/// Versions present in the log, and checkpoint versions, sorted ascending.
pub(crate) fn list_log(root: &Path) -> Result<(Vec<u64>, Vec<u64>)> {
    let dir = log_dir(root);
    let mut versions = Vec::new();
    let mut checkpoints = Vec::new();
    for entry in fs::read_dir(&dir).ctx("listing", &dir)? {
        let entry = entry.ctx("listing", &dir)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".checkpoint.json") {
            if let Ok(v) = stem.parse::<u64>() {
                checkpoints.push(v);
            }
        } else if let Some(stem) = name.strip_suffix(".json")
            && stem.len() == 20
            && let Ok(v) = stem.parse::<u64>()
        {
            versions.push(v);
        }
    }
    versions.sort_unstable();
    checkpoints.sort_unstable();
    Ok((versions, checkpoints))
}

pub(crate) fn read_commit(root: &Path, version: u64) -> Result<Commit> {
    let path = commit_path(root, version);
    let bytes = fs::read(&path).ctx("reading", &path)?;
    let commit: Commit = serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
        path: path.clone(),
        source,
    })?;
    if commit.version != version {
        return Err(StoreError::Corrupt {
            path,
            message: format!("holds version {} instead of {version}", commit.version),
        });
    }
    Ok(commit)
}

/// Replay the log up to `version` (the newest when `None`).
pub(crate) fn load_snapshot(root: &Path, version: Option<u64>) -> Result<Snapshot> {
    let (versions, checkpoints) = list_log(root)?;
    let Some(&latest) = versions.last() else {
        return Err(StoreError::Corrupt {
            path: log_dir(root),
            message: "the commit log is empty (no version 0)".into(),
        });
    };
    let target = version.unwrap_or(latest);
    if target > latest {
        return Err(StoreError::NoSuchVersion {
            path: root.to_path_buf(),
            version: target,
            min: 0,
            max: latest,
        });
    }
    let mut snap = match checkpoints.iter().rev().find(|&&c| c <= target) {
        Some(&c) => {
            let path = checkpoint_path(root, c);
            let bytes = fs::read(&path).ctx("reading", &path)?;
            serde_json::from_slice::<Snapshot>(&bytes)
                .map_err(|source| StoreError::Json { path, source })?
        }
        None => Snapshot {
            version: 0,
            precision: Precision::F16,
            models: BTreeMap::new(),
            vocab: BTreeMap::new(),
            next_model_id: 0,
            next_filter_id: 0,
            min_readable_version: 0,
        },
    };
    let start = if checkpoints.iter().any(|&c| c <= target) {
        snap.version + 1
    } else {
        0
    };
    for v in start..=target {
        let commit = read_commit(root, v)?;
        snap.apply(&commit);
    }
    // The vacuum record of a later version still forbids reading an old one.
    let latest_min = if target == latest {
        snap.min_readable_version
    } else {
        load_min_readable(root, &versions, target)?
    };
    if target < latest_min {
        return Err(StoreError::NoSuchVersion {
            path: root.to_path_buf(),
            version: target,
            min: latest_min,
            max: latest,
        });
    }
    Ok(snap)
}

fn load_min_readable(root: &Path, versions: &[u64], after: u64) -> Result<u64> {
    let mut min = 0;
    for &v in versions.iter().filter(|&&v| v > after) {
        for action in read_commit(root, v)?.actions {
            if let Action::Vacuum {
                min_readable_version,
            } = action
            {
                min = min.max(min_readable_version);
            }
        }
    }
    Ok(min)
}

/// Write a new file durably: temp file, fsync, then `publish` it under `dest`.
pub(crate) fn write_durable(dir: &Path, dest: &Path, bytes: &[u8], exclusive: bool) -> Result<()> {
    let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
    {
        let mut f = File::create(&tmp).ctx("creating", &tmp)?;
        f.write_all(bytes).ctx("writing", &tmp)?;
        f.sync_all().ctx("syncing", &tmp)?;
    }
    let published = if exclusive {
        // link(2) refuses to replace an existing name: a version is written once.
        fs::hard_link(&tmp, dest).ctx("publishing", dest)
    } else {
        fs::rename(&tmp, dest).ctx("publishing", dest)
    };
    if exclusive {
        let _ = fs::remove_file(&tmp);
    }
    published?;
    sync_dir(dir)
}

/// fsync a directory so that renames and links in it survive a power cut.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("syncing", dir)
}

/// Append `commit` as its version; fails if that version exists.
pub(crate) fn write_commit(root: &Path, commit: &Commit) -> Result<()> {
    let dest = commit_path(root, commit.version);
    let bytes = serde_json::to_vec_pretty(commit).map_err(|source| StoreError::Json {
        path: dest.clone(),
        source,
    })?;
    write_durable(&log_dir(root), &dest, &bytes, true)
}

/// Write a checkpoint of `snap` (best effort: a missing checkpoint only costs replay time).
pub(crate) fn write_checkpoint(root: &Path, snap: &Snapshot) -> Result<()> {
    let dest = checkpoint_path(root, snap.version);
    let bytes = serde_json::to_vec(snap).map_err(|source| StoreError::Json {
        path: dest.clone(),
        source,
    })?;
    write_durable(&log_dir(root), &dest, &bytes, false)
}

/// All commits, oldest first (for `info` / history).
pub(crate) fn history(root: &Path) -> Result<Vec<Commit>> {
    let (versions, _) = list_log(root)?;
    versions.into_iter().map(|v| read_commit(root, v)).collect()
}
