//! filterdb's scan of `filter_columns` (crates/sql/src/scan.rs): pruning by model id from
//! the log, and files in a form filterdb does not write (compressed weight pages) read
//! through parquet-rs's reader with the same answers.

use std::path::Path;
use std::process::Command;

use crate::common::{fixture_store, ok, s};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), &t).unwrap();
        }
    }
}

const SUMS: &str = "SELECT count(*) AS n, sum(CAST(w0 AS DOUBLE)) AS s0, sum(CAST(w4 AS DOUBLE)) AS s4, \
    sum(CAST(w8 AS DOUBLE)) AS s8, sum(filter_id) AS ids, sum(layer_idx) AS layers FROM filter_columns";

#[test]
fn model_id_conditions_prune_files() {
    let store = fixture_store("f16");
    let plan = ok(&[
        "sql",
        "--store",
        s(store),
        "--format",
        "csv",
        "EXPLAIN ANALYZE SELECT count(*), sum(CAST(w0 AS DOUBLE)) FROM filter_columns WHERE model_id = 2",
    ]);
    assert!(plan.contains("FilterScanExec: files=1,"), "{plan}");
    assert!(plan.contains("bytes_scanned="), "{plan}");
    let all = ok(&[
        "sql",
        "--store",
        s(store),
        "--format",
        "csv",
        "EXPLAIN SELECT count(*), sum(CAST(w0 AS DOUBLE)) FROM filter_columns WHERE model_id IN (1, 3) OR model_id > 4",
    ]);
    assert!(all.contains("FilterScanExec: files=3,"), "{all}");
    // The pruned answer equals the unpruned one.
    let q = |w: &str| {
        ok(&[
            "sql",
            "--store",
            s(store),
            "--format",
            "csv",
            &format!("SELECT count(*), sum(CAST(w3 AS DOUBLE)) FROM filter_columns WHERE {w}"),
        ])
    };
    assert_eq!(q("model_id = 2"), q("model_id + 0 = 2"));
}

#[test]
fn files_in_another_layout_read_the_same() {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let has_pyarrow = Command::new(&python)
        .args(["-c", "import pyarrow"])
        .status()
        .is_ok_and(|st| st.success());
    if !has_pyarrow {
        assert!(
            std::env::var_os("CI").is_none(),
            "pyarrow is required under CI"
        );
        eprintln!("skipped: {python} has no pyarrow");
        return;
    }
    let store = fixture_store("f32");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("store");
    copy_dir(store, &copy);
    let before = ok(&["sql", "--store", s(&copy), "--format", "csv", SUMS]);
    // Rewrite every filter file with zstd-compressed, dictionary-encoded weights.
    let script = "import sys, glob, pyarrow.parquet as pq\n\
        for f in glob.glob(sys.argv[1] + '/filters/*/*.parquet'):\n\
        \x20   t = pq.read_table(f)\n\
        \x20   pq.write_table(t, f, compression='zstd', use_dictionary=True, row_group_size=1000)\n";
    let st = Command::new(&python)
        .args(["-c", script, s(&copy)])
        .status()
        .unwrap();
    assert!(st.success());
    let after = ok(&["sql", "--store", s(&copy), "--format", "csv", SUMS]);
    assert_eq!(before, after);
}
