//! `filterdb import-cnnfilterdb` on CNN Filter DB releases written by h5py, pandas and
//! PyTables (`tests/reference/make_h5_fixtures.py`): both pandas formats of `/meta`, a
//! gzip-compressed `/filters` chunked smaller than the file, `/filter`, `Datatype`, CSV
//! bytes, and broken copies. Weights are checked through SQL against the raw values the
//! generator wrote. See: issue #4.
//!
//! The generator needs python3 with h5py, pandas, tables and pyarrow
//! (`pip install -r tests/reference/requirements.txt`); without them these tests are
//! skipped with a message, except when `CI` is set, where they fail.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float16Type, Float32Type, Int32Type, Int64Type};
use half::f16;

use crate::common::{fails, ok, query, repo_root, run, s, tree_state};

/// The fixture folder, generated once per test run; `None` (after a message) when python3
/// cannot run the generator outside CI.
fn fixtures() -> Option<&'static Path> {
    static FX: OnceLock<Option<(tempfile::TempDir, PathBuf)>> = OnceLock::new();
    FX.get_or_init(|| {
        let probe = Command::new("python3")
            .args(["-c", "import h5py, pandas, tables, pyarrow"])
            .output();
        if !probe.as_ref().is_ok_and(|o| o.status.success()) {
            let why = match &probe {
                Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
                Err(e) => format!("python3: {e}"),
            };
            let msg = format!(
                "import_h5: python3 cannot import h5py, pandas, tables and pyarrow ({why}); \
                 install them with `pip install -r tests/reference/requirements.txt`"
            );
            assert!(std::env::var_os("CI").is_none(), "CI is set: {msg}");
            eprintln!("SKIPPED {msg}");
            return None;
        }
        let dir = crate::common::fixture_dir();
        let out = dir.path().join("fx");
        let gen_out = Command::new("python3")
            .arg(repo_root().join("tests/reference/make_h5_fixtures.py"))
            .arg(&out)
            .output()
            .expect("running make_h5_fixtures.py");
        assert!(
            gen_out.status.success(),
            "make_h5_fixtures.py failed:\n{}",
            String::from_utf8_lossy(&gen_out.stderr)
        );
        Some((dir, out))
    })
    .as_ref()
    .map(|(_, p)| p.as_path())
}

macro_rules! fixtures_or_skip {
    () => {
        match fixtures() {
            Some(p) => p,
            None => return,
        }
    };
}

/// Every cell of a query as text (for comparisons of meta columns).
fn rows(store: &Path, sql: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for b in query(store, sql) {
        for r in 0..b.num_rows() {
            out.push(
                b.columns()
                    .iter()
                    .map(|c| {
                        if c.is_null(r) {
                            "NULL".to_owned()
                        } else {
                            arrow::util::display::array_value_to_string(c, r).expect("display")
                        }
                    })
                    .collect(),
            );
        }
    }
    out
}

fn new_store(dir: &Path, name: &str, precision: &str) -> PathBuf {
    let p = dir.join(name);
    ok(&["init", s(&p), "--precision", precision]);
    p
}

fn import(store: &Path, file: &Path, extra: &[&str]) -> String {
    let mut args = vec!["import-cnnfilterdb", "--store", s(store), s(file)];
    args.extend_from_slice(extra);
    ok(&args)
}

fn expected(fx: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fx.join("expected.json")).expect("expected.json"))
        .expect("json")
}

/// The canonical vocabulary spelling of the generator's lower-case visual categories.
fn canonical_category(v: &str) -> String {
    match v {
        "medical ct" => "Medical CT".to_owned(),
        other => {
            let mut c = other.chars();
            c.next()
                .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                .unwrap_or_default()
        }
    }
}

/// Checks models, layers and every weight of a store holding the fixture release.
fn check_store(store: &Path, fx: &Path, precision: &str, fixed_labels: bool) {
    let exp = expected(fx);
    let models = exp["models"].as_array().expect("models");
    let n_expected: u64 = models
        .iter()
        .flat_map(|m| m["layers"].as_array().expect("layers"))
        .map(|l| l["end"].as_u64().unwrap() - l["start"].as_u64().unwrap() + 1)
        .sum();
    let counts = rows(
        store,
        "SELECT (SELECT count(*) FROM models) AS m, (SELECT count(*) FROM layers) AS l, \
         (SELECT count(*) FROM filters) AS f",
    );
    let n_layers: usize = models
        .iter()
        .map(|m| m["layers"].as_array().unwrap().len())
        .sum();
    assert_eq!(
        counts,
        vec![vec![
            models.len().to_string(),
            n_layers.to_string(),
            n_expected.to_string()
        ]]
    );

    // models: names and labels through the vocabulary, meta columns in extra
    let got: Vec<Vec<String>> = rows(
        store,
        "SELECT name, architecture, task, visual_category, training_dataset, pretraining_dataset, \
         n_layers, source_format, extra FROM models ORDER BY name",
    )
    .into_iter()
    .map(|mut r| {
        let extra: serde_json::Value = serde_json::from_str(&r[8]).expect("extra is JSON");
        r[8] = extra["cnnfilterdb_model_id"]
            .as_str()
            .expect("cnnfilterdb_model_id")
            .to_owned();
        r
    })
    .collect();
    let mut want: Vec<Vec<String>> = models
        .iter()
        .map(|m| {
            let task = m["task"].as_str().unwrap();
            let task = if fixed_labels && task.contains("Segmentation") {
                "Segmentation"
            } else {
                task
            };
            let opt = |k: &str| m[k].as_str().map_or("NULL".to_owned(), str::to_owned);
            vec![
                m["name"].as_str().unwrap().to_owned(),
                m["architecture"].as_str().unwrap().to_owned(),
                task.to_owned(),
                canonical_category(m["visual_category"].as_str().unwrap()),
                opt("training_dataset"),
                opt("pretraining_dataset"),
                m["layers"].as_array().unwrap().len().to_string(),
                "hdf5".to_owned(),
                m["model_id"].to_string(),
            ]
        })
        .collect();
    want.sort();
    assert_eq!(got, want);

    // layers: one per meta row, by range start, depths as in the file, channels flat
    let got = rows(
        store,
        "SELECT m.name, l.layer_idx, l.layer_name, l.conv_depth, l.conv_depth_norm, l.depth_rule, \
         l.out_channels, l.in_channels, l.groups, l.n_filters FROM layers l JOIN models m \
         ON l.model_id = m.model_id ORDER BY m.name, l.layer_idx",
    );
    let mut want = Vec::new();
    for m in models {
        let mut ls: Vec<&serde_json::Value> = m["layers"].as_array().unwrap().iter().collect();
        ls.sort_by_key(|l| l["start"].as_u64());
        for (i, l) in ls.iter().enumerate() {
            let (a, b) = (l["start"].as_u64().unwrap(), l["end"].as_u64().unwrap());
            want.push(vec![
                m["name"].as_str().unwrap().to_owned(),
                i.to_string(),
                format!("{a}:{b}"),
                l["conv_depth"].to_string(),
                format!("{:?}", l["conv_depth_norm"].as_f64().unwrap()),
                "cnnfilterdb".to_owned(),
                (b - a + 1).to_string(),
                "1".to_owned(),
                "1".to_owned(),
                (b - a + 1).to_string(),
            ]);
        }
    }
    want.sort_by(|x, y| {
        (&x[0], x[1].parse::<usize>().unwrap()).cmp(&(&y[0], y[1].parse().unwrap()))
    });
    assert_eq!(got, want);

    // every weight: the release row is the layer's range start + out_channel
    let raw = std::fs::read(fx.join("filters.f32")).expect("filters.f32");
    let src: Vec<f32> = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let batches = query(
        store,
        "SELECT CAST(split_part(l.layer_name, ':', 1) AS BIGINT) + f.out_channel AS src, \
         f.in_channel, f.weights FROM filters f JOIN layers l \
         ON f.model_id = l.model_id AND f.layer_idx = l.layer_idx ORDER BY src",
    );
    let mut seen = 0u64;
    let mut last: i64 = -1;
    for b in &batches {
        let row = b.column(0).as_primitive::<Int64Type>();
        let inc = b.column(1).as_primitive::<Int32Type>();
        let w = b.column(2).as_fixed_size_list();
        for i in 0..b.num_rows() {
            let r = row.value(i);
            assert!(r > last, "release row {r} stored twice");
            last = r;
            assert_eq!(inc.value(i), 0);
            let v = w.value(i);
            let got: Vec<u32> = if precision == "f16" {
                v.as_primitive::<Float16Type>()
                    .values()
                    .iter()
                    .map(|x| x.to_f32().to_bits())
                    .collect()
            } else {
                v.as_primitive::<Float32Type>()
                    .values()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect()
            };
            let want: Vec<u32> = src[r as usize * 9..r as usize * 9 + 9]
                .iter()
                .map(|&x| {
                    if precision == "f16" {
                        f16::from_f32(x).to_f32().to_bits()
                    } else {
                        x.to_bits()
                    }
                })
                .collect();
            assert_eq!(got, want, "release filter {r}");
            seen += 1;
        }
    }
    assert_eq!(seen, n_expected);
}

#[test]
fn table_format_f32_bit_exact_and_rerun_commits_nothing() {
    let fx = fixtures_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s", "f32");
    let out = import(&store, &fx.join("table.h5"), &["--fix-labels"]);
    assert!(
        out.contains("6 committed, 0 already stored, 0 failed"),
        "{out}"
    );
    // each committed model's warnings are printed under it (issue 4)
    let lines: Vec<&str> = out.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("committed") && l.contains("'unet_lits_12'"))
        .unwrap_or_else(|| panic!("no committed line for unet_lits_12:\n{out}"));
    let warnings: Vec<&str> = lines[at + 1..]
        .iter()
        .take_while(|l| l.starts_with("           warning["))
        .copied()
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("warning[label_fix]: --fix-labels: task \"Semantic Segmentation\"")),
        "{out}"
    );
    assert!(out.contains("chunked 4096 x 9"), "{out}");
    assert!(
        out.contains("72 rows of the filter array are in no valid meta row"),
        "{out}"
    );
    check_store(&store, fx, "f32", true);

    // extra keeps the columns without a filterdb column; the report says what was done
    let extra = rows(
        &store,
        "SELECT extra, kernel_shapes, total_filters, depth FROM models WHERE name = 'resnet18_imagenet_11'",
    );
    let e = &extra[0][0];
    for key in [
        "\"producer\":\"pytorch\"",
        "\"opset\":\"11\"",
        "\"paper\":\"https://arxiv.org/abs/1512.03385\"",
        "\"url\":\"https://github.com/example/resnet18_imagenet_11\"",
        "\"operator_counts\"",
        "\"channels\"",
    ] {
        assert!(e.contains(key), "{key} not in {e}");
    }
    assert!(
        extra[0][1].contains("\"(3, 3)\":9719") && extra[0][1].contains("\"(7, 7)\":3"),
        "{:?}",
        extra[0]
    );
    assert_eq!(extra[0][2], (9719 + 64 + 3).to_string());
    assert_eq!(extra[0][3], "10");
    let info = ok(&["info", "--store", s(&store), "--model", "unet_lits_12"]);
    assert!(
        info.contains("--fix-labels: task \"Semantic Segmentation\" -> \"Segmentation\""),
        "{info}"
    );
    assert!(info.contains("label_fixes"), "{info}");
    // ... and the history records the fix with the version that added the model
    let history = ok(&["info", "--store", s(&store), "--history"]);
    assert!(
        history.contains("unet_lits_12")
            && history.contains("import-cnnfilterdb --fix-labels:")
            && history.contains("Semantic Segmentation"),
        "{history}"
    );

    // the same file again: nothing new, not one file touched
    let before = tree_state(&store);
    let out = import(&store, &fx.join("table.h5"), &["--fix-labels"]);
    assert!(
        out.contains("0 committed, 6 already stored, 0 failed"),
        "{out}"
    );
    assert_eq!(tree_state(&store), before);
}

#[test]
fn f16_store_rounds_once() {
    let fx = fixtures_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s", "f16");
    import(&store, &fx.join("table.h5"), &["--fix-labels"]);
    check_store(&store, fx, "f16", true);
}

#[test]
fn labels_outside_the_vocabulary() {
    let fx = fixtures_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s", "f32");
    let before = tree_state(&store);
    let err = fails(&[
        "import-cnnfilterdb",
        "--store",
        s(&store),
        s(&fx.join("table.h5")),
    ]);
    for want in [
        "task \"Semantic Segmentation\"",
        "unet_lits_12",
        "--add-vocab",
        "--fix-labels",
        "filterdb vocab add",
    ] {
        assert!(err.contains(want), "{want:?} not in {err}");
    }
    assert_eq!(
        tree_state(&store),
        before,
        "a refused import wrote something"
    );

    let out = import(&store, &fx.join("table.h5"), &["--add-vocab"]);
    assert!(
        out.contains("added task \"Semantic Segmentation\" (version 1)"),
        "{out}"
    );
    assert!(out.contains("6 committed"), "{out}");
    check_store(&store, fx, "f32", false);
    let history = ok(&["info", "--store", s(&store), "--history"]);
    assert!(
        history.contains("vocab add") && history.contains("task: Semantic Segmentation"),
        "{history}"
    );
}

#[test]
fn fixed_format_needs_a_meta_export() {
    let fx = fixtures_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s", "f32");
    let before = tree_state(&store);
    let err = fails(&[
        "import-cnnfilterdb",
        "--store",
        s(&store),
        s(&fx.join("fixed.h5")),
        "--fix-labels",
    ]);
    for want in [
        "fixed.h5",
        "/meta",
        "'fixed' format",
        "pickled",
        "pd.read_hdf(",
        ".to_parquet(\"meta.parquet\")",
        "--meta",
    ] {
        assert!(err.contains(want), "{want:?} not in {err}");
    }
    assert_eq!(tree_state(&store), before);

    for (i, meta) in ["meta.parquet", "meta.csv"].into_iter().enumerate() {
        let store = new_store(dir.path(), &format!("m{i}"), "f32");
        let out = import(
            &store,
            &fx.join("fixed.h5"),
            &["--fix-labels", "--meta", s(&fx.join(meta))],
        );
        assert!(
            out.contains("6 committed") && out.contains("contiguous"),
            "{out}"
        );
        check_store(&store, fx, "f32", true);
    }
}

#[test]
fn other_copies_of_the_release() {
    let fx = fixtures_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    for (file, note) in [
        ("filter_name.h5", "/filter ("),
        ("datatype.h5", "/meta/table"),
        ("csv_meta.h5", "/meta (CSV bytes)"),
    ] {
        let store = new_store(dir.path(), file, "f32");
        let out = import(&store, &fx.join(file), &["--fix-labels"]);
        assert!(
            out.contains("6 committed") && out.contains(note),
            "{file}: {out}"
        );
        check_store(&store, fx, "f32", true);
    }
}

#[test]
fn broken_files() {
    let fx = fixtures_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s", "f32");
    let before = tree_state(&store);
    for (file, wants) in [
        (
            "no_filters.h5",
            &["no_filters.h5", "no dataset /filters", "N x 9"][..],
        ),
        (
            "width8.h5",
            &[
                "width8.h5",
                "dataset /filters",
                "[20000, 8]",
                "expected N x 9",
            ][..],
        ),
        ("missing.h5", &["missing.h5", "no such file"][..]),
    ] {
        let err = fails(&[
            "import-cnnfilterdb",
            "--store",
            s(&store),
            s(&fx.join(file)),
            "--fix-labels",
        ]);
        for w in wants {
            assert!(err.contains(w), "{file}: {w:?} not in {err}");
        }
        assert_eq!(tree_state(&store), before, "{file} changed the store");
    }

    // one model's range beyond the array: that model fails, the others commit
    let out = run(&[
        "import-cnnfilterdb",
        "--store",
        s(&store),
        s(&fx.join("range_beyond.h5")),
        "--fix-labels",
    ]);
    assert!(!out.status.success());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stdout.contains("5 committed, 0 already stored, 1 failed"),
        "{stdout}"
    );
    for w in [
        "model_id 12",
        "dcgan_celeba_9",
        "column filter_ids",
        ":20004",
        "holds 20000 filters",
    ] {
        assert!(stderr.contains(w), "{w:?} not in {stderr}");
    }
    let names = rows(&store, "SELECT name FROM models ORDER BY name");
    assert_eq!(names.len(), 5);
    assert!(!names.iter().any(|n| n[0] == "dcgan_celeba_9"));
}
