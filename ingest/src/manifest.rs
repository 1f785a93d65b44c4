//! Bulk-ingest manifests: `.csv` (header row) or `.jsonl` (one JSON object per line).
//!
//! Keys / columns: `path` (required), `card` (optional path of a model-card TOML) and any
//! model field of [`FIELD_NAMES`] (`name`, `task`, ...), which override the card. Paths
//! are relative to the manifest's folder and must stay inside it (after resolving `..`
//! and symbolic links).
//!
//! Problems with the manifest as a whole (missing file, unknown extension, unknown CSV
//! column, no `path` column) fail [`read_manifest`]; a bad row is reported in
//! [`Manifest::errors`] and the good rows can still be ingested.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use crate::card::{FIELD_NAMES, ModelOverrides, io_error};
use crate::error::{IngestError, Result};

/// One good manifest row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRow {
    /// 1-based line number in the manifest file.
    pub line: usize,
    /// The model file, canonical (absolute, inside the manifest's folder).
    pub path: PathBuf,
    /// The model card, canonical, if the row names one.
    pub card: Option<PathBuf>,
    /// Model fields given in the row.
    pub overrides: ModelOverrides,
}

/// One bad manifest row.
#[derive(Debug)]
pub struct RowError {
    /// 1-based line number in the manifest file.
    pub line: usize,
    /// The row's `path` as written, if it had one.
    pub path: Option<String>,
    /// What is wrong (names the manifest, the line and the field).
    pub error: IngestError,
}

/// A read manifest: good rows and bad rows, in file order.
#[derive(Debug)]
pub struct Manifest {
    /// The manifest file.
    pub path: PathBuf,
    /// Good rows.
    pub rows: Vec<ManifestRow>,
    /// Bad rows.
    pub errors: Vec<RowError>,
}

const PATH: &str = "path";
const CARD: &str = "card";

fn known_key(k: &str) -> bool {
    k == PATH || k == CARD || FIELD_NAMES.contains(&k)
}

fn expected_keys() -> String {
    let mut v = vec![PATH, CARD];
    v.extend(FIELD_NAMES);
    v.join(", ")
}

/// Reads a `.csv` or `.jsonl` manifest.
///
/// # Errors
/// [`IngestError::FileNotFound`] / [`IngestError::Io`] if it cannot be read;
/// [`IngestError::Manifest`] for an unknown extension, an unknown CSV column or a missing
/// `path` column. Row problems are returned in [`Manifest::errors`].
pub fn read_manifest(path: &Path) -> Result<Manifest> {
    let text = std::fs::read_to_string(path).map_err(|e| io_error(path, "reading manifest", e))?;
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let root = folder
        .canonicalize()
        .map_err(|e| io_error(&folder, "resolving manifest folder", e))?;
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let raw_rows = match ext.as_str() {
        "csv" => csv_rows(path, &text)?,
        "jsonl" | "ndjson" => jsonl_rows(path, &text),
        _ => {
            return Err(IngestError::Manifest {
                path: path.to_owned(),
                detail: format!("unknown manifest extension {ext:?}; expected .csv or .jsonl"),
            });
        }
    };
    let mut manifest = Manifest {
        path: path.to_owned(),
        rows: Vec::new(),
        errors: Vec::new(),
    };
    for row in raw_rows {
        match row {
            Ok((line, fields)) => {
                let given_path = fields.get(PATH).cloned();
                match build_row(path, &root, line, fields) {
                    Ok(r) => manifest.rows.push(r),
                    Err(error) => manifest.errors.push(RowError {
                        line,
                        path: given_path,
                        error,
                    }),
                }
            }
            Err((line, error)) => manifest.errors.push(RowError {
                line,
                path: None,
                error,
            }),
        }
    }
    Ok(manifest)
}

type RawRow = std::result::Result<(usize, BTreeMap<String, String>), (usize, IngestError)>;

fn row_err(manifest: &Path, line: usize, field: Option<&str>, detail: String) -> IngestError {
    IngestError::ManifestRow {
        path: manifest.to_owned(),
        line,
        field: field.map(str::to_owned),
        detail,
    }
}

fn csv_rows(manifest: &Path, text: &str) -> Result<Vec<RawRow>> {
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = rdr
        .headers()
        .map_err(|e| IngestError::Manifest {
            path: manifest.to_owned(),
            detail: format!("cannot read the CSV header row: {e}"),
        })?
        .iter()
        .map(str::to_owned)
        .collect();
    for h in &headers {
        if !known_key(h) {
            return Err(IngestError::Manifest {
                path: manifest.to_owned(),
                detail: format!(
                    "unknown column {h:?} in the header; expected {}",
                    expected_keys()
                ),
            });
        }
    }
    if !headers.iter().any(|h| h == PATH) {
        return Err(IngestError::Manifest {
            path: manifest.to_owned(),
            detail: "the header has no `path` column".to_owned(),
        });
    }
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        match rec {
            Err(e) => {
                let line = e.position().map_or(i + 2, |p| p.line() as usize);
                out.push(Err((
                    line,
                    row_err(manifest, line, None, format!("malformed CSV: {e}")),
                )));
            }
            Ok(rec) => {
                let line = rec.position().map_or(i + 2, |p| p.line() as usize);
                if rec.len() != headers.len() {
                    out.push(Err((
                        line,
                        row_err(
                            manifest,
                            line,
                            None,
                            format!(
                                "has {} fields, the header has {} columns",
                                rec.len(),
                                headers.len()
                            ),
                        ),
                    )));
                    continue;
                }
                let fields = headers
                    .iter()
                    .zip(rec.iter())
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(h, v)| (h.clone(), v.to_owned()))
                    .collect();
                out.push(Ok((line, fields)));
            }
        }
    }
    Ok(out)
}

fn jsonl_rows(manifest: &Path, text: &str) -> Vec<RawRow> {
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let line = i + 1;
        if l.trim().is_empty() {
            continue;
        }
        let obj = match serde_json::from_str::<serde_json::Value>(l) {
            Ok(serde_json::Value::Object(o)) => o,
            Ok(_) => {
                out.push(Err((
                    line,
                    row_err(manifest, line, None, "expected a JSON object".to_owned()),
                )));
                continue;
            }
            Err(e) => {
                out.push(Err((
                    line,
                    row_err(manifest, line, None, format!("malformed JSON: {e}")),
                )));
                continue;
            }
        };
        let mut fields = BTreeMap::new();
        let mut bad = None;
        for (k, v) in obj {
            if !known_key(&k) {
                bad = Some(row_err(
                    manifest,
                    line,
                    Some(&k),
                    format!("unknown key; expected {}", expected_keys()),
                ));
                break;
            }
            match v {
                serde_json::Value::String(s) => {
                    if !s.trim().is_empty() {
                        fields.insert(k, s);
                    }
                }
                serde_json::Value::Null => {}
                other => {
                    bad = Some(row_err(
                        manifest,
                        line,
                        Some(&k),
                        format!("expected a string, got {other}"),
                    ));
                    break;
                }
            }
        }
        out.push(match bad {
            Some(e) => Err((line, e)),
            None => Ok((line, fields)),
        });
    }
    out
}

fn build_row(
    manifest: &Path,
    root: &Path,
    line: usize,
    mut fields: BTreeMap<String, String>,
) -> Result<ManifestRow> {
    let Some(p) = fields.remove(PATH) else {
        return Err(row_err(
            manifest,
            line,
            Some(PATH),
            "missing; every row needs the path of a model file".to_owned(),
        ));
    };
    let path = resolve_inside(manifest, root, line, PATH, &p)?;
    let card = fields
        .remove(CARD)
        .map(|c| resolve_inside(manifest, root, line, CARD, &c))
        .transpose()?;
    let mut overrides = ModelOverrides::default();
    let source_name = format!("manifest {}, line {line}", manifest.display());
    for (k, v) in fields {
        overrides.set(&k, &v, &source_name)?;
    }
    Ok(ManifestRow {
        line,
        path,
        card,
        overrides,
    })
}

/// Resolves `given` relative to `root` and checks it stays inside `root`.
fn resolve_inside(
    manifest: &Path,
    root: &Path,
    line: usize,
    field: &str,
    given: &str,
) -> Result<PathBuf> {
    let escapes = || IngestError::PathEscapes {
        manifest: manifest.to_owned(),
        line,
        path: given.to_owned(),
        root: root.to_owned(),
    };
    let rel = Path::new(given);
    // Lexical check first, so that `../x` is refused even when it does not exist.
    if rel.is_absolute() {
        if !rel.starts_with(root) {
            return Err(escapes());
        }
    } else {
        let mut depth = 0i64;
        for c in rel.components() {
            match c {
                Component::ParentDir => depth -= 1,
                Component::Normal(_) => depth += 1,
                Component::CurDir => {}
                Component::RootDir | Component::Prefix(_) => return Err(escapes()),
            }
            if depth < 0 {
                return Err(escapes());
            }
        }
    }
    let joined = root.join(rel);
    let canon = joined.canonicalize().map_err(|e| {
        row_err(
            manifest,
            line,
            Some(field),
            if e.kind() == std::io::ErrorKind::NotFound {
                format!("{given}: no such file")
            } else {
                format!("{given}: {e}")
            },
        )
    })?;
    // Symbolic links may still point outside.
    if !canon.starts_with(root) {
        return Err(escapes());
    }
    if !canon.is_file() {
        return Err(row_err(
            manifest,
            line,
            Some(field),
            format!("{given}: not a regular file"),
        ));
    }
    Ok(canon)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn setup() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("models")).unwrap();
        fs::write(dir.path().join("models/a.safetensors"), b"x").unwrap();
        fs::write(dir.path().join("models/b.safetensors"), b"x").unwrap();
        fs::write(dir.path().join("models/a.toml"), b"").unwrap();
        dir
    }

    #[test]
    fn csv_good_and_bad_rows() {
        let dir = setup();
        let m = dir.path().join("m.csv");
        fs::write(
            &m,
            "path,card,task,name\n\
             models/a.safetensors,models/a.toml,Classification,alpha\n\
             ./models/b.safetensors,,,\n\
             ,,Classification,x\n\
             ../outside.safetensors,,,\n\
             models/../../etc/passwd,,,\n\
             /etc/passwd,,,\n\
             models/missing.safetensors,,,\n\
             models/a.safetensors,,,,extra\n\
             models/a.safetensors,,,\n",
        )
        .unwrap();
        let man = read_manifest(&m).unwrap();
        let good: Vec<usize> = man.rows.iter().map(|r| r.line).collect();
        assert_eq!(good, vec![2, 3, 10]);
        assert_eq!(
            man.rows[0].overrides.task.as_deref(),
            Some("Classification")
        );
        assert_eq!(man.rows[0].overrides.name.as_deref(), Some("alpha"));
        assert!(
            man.rows[0]
                .card
                .as_ref()
                .unwrap()
                .ends_with("models/a.toml")
        );
        assert!(man.rows[1].path.ends_with("models/b.safetensors"));
        assert!(man.rows[1].path.is_absolute());
        assert_eq!(man.rows[1].card, None);
        let bad: Vec<(usize, String)> = man
            .errors
            .iter()
            .map(|e| (e.line, e.error.to_string()))
            .collect();
        assert_eq!(bad.len(), 6, "{bad:#?}");
        assert_eq!(bad[0].0, 4);
        assert!(
            bad[0].1.contains("line 4, field path: missing"),
            "{}",
            bad[0].1
        );
        for (line, msg) in &bad[1..4] {
            assert!(
                msg.contains("is outside the manifest's folder"),
                "{line}: {msg}"
            );
            assert!(msg.contains(&format!("line {line}")), "{msg}");
            assert!(msg.contains("m.csv"), "{msg}");
        }
        assert!(
            bad[4].1.contains("missing.safetensors: no such file"),
            "{}",
            bad[4].1
        );
        assert!(
            bad[5].1.contains("line 9") && bad[5].1.contains("5 fields"),
            "{}",
            bad[5].1
        );
    }

    #[test]
    fn csv_unknown_column_fails_whole_manifest() {
        let dir = setup();
        let m = dir.path().join("m.csv");
        fs::write(&m, "path,taks\nmodels/a.safetensors,x\n").unwrap();
        let e = read_manifest(&m).unwrap_err();
        assert!(e.to_string().contains("unknown column \"taks\""), "{e}");
        fs::write(&m, "name\nx\n").unwrap();
        let e = read_manifest(&m).unwrap_err();
        assert!(e.to_string().contains("no `path` column"), "{e}");
    }

    #[test]
    fn jsonl_rows_and_errors() {
        let dir = setup();
        let m = dir.path().join("m.jsonl");
        fs::write(
            &m,
            "{\"path\": \"models/a.safetensors\", \"layout\": \"hwio\", \"card\": null}\n\
             \n\
             {\"path\": \"models/b.safetensors\", \"colour\": \"red\"}\n\
             {\"path\": 3}\n\
             not json\n\
             {\"path\": \"models/b.safetensors\", \"layout\": \"nchw\"}\n\
             [1]\n",
        )
        .unwrap();
        let man = read_manifest(&m).unwrap();
        assert_eq!(man.rows.len(), 1);
        assert_eq!(man.rows[0].line, 1);
        assert_eq!(
            man.rows[0].overrides.layout,
            Some(crate::KernelLayout::Hwio)
        );
        let bad: Vec<(usize, String)> = man
            .errors
            .iter()
            .map(|e| (e.line, e.error.to_string()))
            .collect();
        assert_eq!(
            bad.iter().map(|b| b.0).collect::<Vec<_>>(),
            vec![3, 4, 5, 6, 7]
        );
        assert!(
            bad[0].1.contains("field colour: unknown key"),
            "{}",
            bad[0].1
        );
        assert!(
            bad[1].1.contains("field path: expected a string"),
            "{}",
            bad[1].1
        );
        assert!(bad[2].1.contains("malformed JSON"), "{}", bad[2].1);
        assert!(
            bad[3].1.contains("layout") && bad[3].1.contains("line 6"),
            "{}",
            bad[3].1
        );
        assert!(bad[4].1.contains("expected a JSON object"), "{}", bad[4].1);
    }

    #[cfg(unix)]
    #[test]
    fn symlink_escape_is_refused() {
        let dir = setup();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("x.safetensors"), b"x").unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("x.safetensors"),
            dir.path().join("models/link.safetensors"),
        )
        .unwrap();
        let m = dir.path().join("m.csv");
        fs::write(&m, "path\nmodels/link.safetensors\n").unwrap();
        let man = read_manifest(&m).unwrap();
        assert!(man.rows.is_empty());
        assert!(
            man.errors[0].error.to_string().contains("outside"),
            "{:?}",
            man.errors
        );
    }

    #[test]
    fn unknown_extension_and_missing() {
        let dir = setup();
        let m = dir.path().join("m.txt");
        fs::write(&m, "path\n").unwrap();
        assert!(
            read_manifest(&m)
                .unwrap_err()
                .to_string()
                .contains(".csv or .jsonl")
        );
        let e = read_manifest(&dir.path().join("none.csv")).unwrap_err();
        assert!(matches!(e, IngestError::FileNotFound { .. }));
    }
}
