//! filterdb's scan of `filter_columns` (crates/sql/src/scan.rs): pruning by model id from
//! the log, by row-group statistics and by joins' dynamic filters (issue 5, "Selective
//! queries"), and files in a form filterdb does not write (compressed weight pages) read
//! through parquet-rs's reader with the same answers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use datafusion::physical_plan::{ExecutionPlan, collect};

use crate::common::{fixture_store, ok, s, store_ctx};

/// Rows per row group of a store's filter files (`filterdb_store::FILTERS_ROW_GROUP`).
const GROUP: i64 = 262_144;

/// A store whose two bigger models span two row groups each (278,720 and 389,312
/// filters, 10 layers per model), built once per test run (about 6 s in debug).
fn big_store() -> &'static Path {
    static STORE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, p) = STORE.get_or_init(|| {
        let dir = crate::common::fixture_dir();
        let zoo = dir.path().join("zoo");
        let p = dir.path().join("store");
        ok(&[
            "gen",
            s(&zoo),
            "--models",
            "3",
            "--seed",
            "3",
            "--max-channels",
            "256",
            "--min-layers",
            "10",
            "--max-layers",
            "10",
        ]);
        ok(&["init", s(&p), "--precision", "f16"]);
        ok(&[
            "ingest",
            "--store",
            s(&p),
            "--manifest",
            s(&zoo.join("manifest.csv")),
            "--threads",
            "1",
        ]);
        (dir, p)
    });
    p
}

/// Run `sql` in-process on `store` (dynamic filters on or off): its answer as text and
/// the metrics of its `FilterScanExec`, summed over partitions.
fn run(store: &Path, sql: &str, dynamic_filters: bool) -> (String, BTreeMap<String, usize>) {
    let (rt, ctx) = store_ctx(store);
    rt.block_on(async {
        ctx.sql(&format!(
            "SET datafusion.optimizer.enable_dynamic_filter_pushdown = {dynamic_filters}"
        ))
        .await
        .expect("set");
        let plan = ctx
            .sql(sql)
            .await
            .expect("plan")
            .create_physical_plan()
            .await
            .expect("physical plan");
        let batches = collect(Arc::clone(&plan), ctx.task_ctx())
            .await
            .expect("run");
        let answer = arrow::util::pretty::pretty_format_batches(&batches)
            .expect("format")
            .to_string();
        let mut metrics = BTreeMap::new();
        let mut stack: Vec<Arc<dyn ExecutionPlan>> = vec![plan];
        while let Some(p) = stack.pop() {
            if p.name() == "FilterScanExec" {
                for m in p.metrics().expect("metrics").aggregate_by_name().iter() {
                    *metrics.entry(m.value().name().to_string()).or_default() +=
                        m.value().as_usize();
                }
            }
            stack.extend(p.children().into_iter().cloned());
        }
        (answer, metrics)
    })
}

/// The Int64 cells of a one-or-more-column query, row by row.
fn int_rows(store: &Path, sql: &str) -> Vec<Vec<i64>> {
    let mut rows = Vec::new();
    for b in crate::common::query(store, sql) {
        for r in 0..b.num_rows() {
            rows.push(
                b.columns()
                    .iter()
                    .map(|c| {
                        let c = arrow::compute::cast(c, &arrow::datatypes::DataType::Int64)
                            .expect("integer column");
                        c.as_primitive::<Int64Type>().value(r)
                    })
                    .collect(),
            );
        }
    }
    rows
}

/// The row groups holding the layers that pass `cond` (a condition on `model_id` and
/// `layer_idx`), from the `layers` table: a model's filters are stored in layer order
/// from its first filter id.
fn row_groups_of_layers(store: &Path, cond: &str) -> usize {
    let first: BTreeMap<i64, i64> = int_rows(
        store,
        "SELECT model_id, min(first_filter_id) FROM layers GROUP BY model_id",
    )
    .into_iter()
    .map(|r| (r[0], r[1]))
    .collect();
    let mut groups = BTreeSet::new();
    for r in int_rows(
        store,
        &format!("SELECT model_id, first_filter_id, n_filters FROM layers WHERE {cond}"),
    ) {
        let start = r[1] - first[&r[0]];
        for g in start / GROUP..=(start + r[2] - 1) / GROUP {
            groups.insert((r[0], g));
        }
    }
    groups.len()
}

/// A condition that never holds and reads a weight column: `(cond) OR NEVER` keeps the
/// answer of `cond` but gives the scan nothing to prune with.
const NEVER: &str = "w0 < -1e30";

const SLICE_SUMS: &str = "SELECT count(*) AS n, sum(filter_id) AS ids, \
    sum(CAST(w0 AS DOUBLE)) AS s0, sum(CAST(w8 AS DOUBLE)) AS s8 FROM filter_columns";

// See: issue 5. One layer, one model's layers, layers of every model: only their row
// groups are read, and the answer is that of a scan that cannot prune.
#[test]
fn layer_conditions_read_only_their_row_groups() {
    let store = big_store();
    let (_, all) = run(store, &format!("{SLICE_SUMS} WHERE {NEVER}"), true);
    let total = all["row_groups_scanned"];
    assert!(total >= 5, "{all:?}");
    for cond in [
        "layer_idx = 9",
        "model_id = 1 AND layer_idx = 9",
        "model_id = 0 AND layer_idx BETWEEN 0 AND 2",
        "layer_idx IN (0, 1)",
    ] {
        let (got, m) = run(store, &format!("{SLICE_SUMS} WHERE {cond}"), true);
        let (want, full) = run(
            store,
            &format!("{SLICE_SUMS} WHERE ({cond}) OR {NEVER}"),
            true,
        );
        assert_eq!(got, want, "{cond}");
        assert_eq!(full["row_groups_scanned"], total, "{cond}: {full:?}");
        let groups = row_groups_of_layers(store, cond);
        assert!(groups < total, "{cond}: a test that cannot show pruning");
        assert_eq!(m["row_groups_scanned"], groups, "{cond}: {m:?}");
        assert!(
            m["bytes_scanned"] < full["bytes_scanned"],
            "{cond}: {m:?} vs {full:?}"
        );
        assert!(
            m["row_groups_pruned"] + m["files_pruned"] > 0,
            "{cond}: {m:?}"
        );
    }
}

// See: issue 5. A condition on the models table (task, name) reaches the filter scan
// as the hash join's dynamic filter: only the matching models' files are read.
#[test]
fn task_and_model_name_conditions_read_only_their_models() {
    let store = fixture_store("f16");
    let models = int_rows(store, "SELECT count(*) FROM models")[0][0] as usize;
    let cases = [
        (
            "SELECT count(*), sum(filter_id), sum(CAST(weights[5] AS DOUBLE)) FROM filters_meta \
             WHERE task = 'Object Detection'",
            "task = 'Object Detection'",
        ),
        (
            "SELECT count(*), sum(f.filter_id), sum(CAST(f.weights[1] AS DOUBLE)) \
             FROM filters f JOIN models m ON f.model_id = m.model_id WHERE m.name = 'densenet_00002'",
            "name = 'densenet_00002'",
        ),
    ];
    for (sql, cond) in cases {
        let matching = int_rows(store, &format!("SELECT count(*) FROM models WHERE {cond}"))[0][0];
        assert!(matching > 0 && (matching as usize) < models, "{cond}");
        let (got, m) = run(store, sql, true);
        let (want, full) = run(store, sql, false);
        assert_eq!(got, want, "{cond}");
        // Every fixture model is one file of one row group.
        assert_eq!(full["row_groups_scanned"], models, "{full:?}");
        assert_eq!(m["row_groups_scanned"], matching as usize, "{cond}: {m:?}");
        assert_eq!(
            m["files_pruned_dynamic"],
            models - matching as usize,
            "{cond}: {m:?}"
        );
        assert!(m["bytes_scanned"] < full["bytes_scanned"], "{cond}: {m:?}");
    }
    // The metrics as the command shows them.
    let plan = ok(&[
        "sql",
        "--store",
        s(store),
        "--format",
        "csv",
        "EXPLAIN ANALYZE SELECT count(*) FROM filters_meta WHERE task = 'Object Detection'",
    ]);
    let line = plan
        .lines()
        .find(|l| l.contains("FilterScanExec"))
        .unwrap_or_else(|| panic!("{plan}"));
    assert!(line.contains("predicate=DynamicFilter"), "{line}");
    assert!(line.contains("files_pruned_dynamic=4"), "{line}");
    assert!(
        line.contains("row_groups_scanned=2,") || line.contains("row_groups_scanned=2]"),
        "{line}"
    );
}

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
    assert!(plan.contains("pruned=[files=5, row_groups=0]"), "{plan}");
    assert!(plan.contains("files_pruned=5"), "{plan}");
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

/// The store's weight chunks (one PLAIN page each, values aligned) are used where the
/// file is mapped, for both precisions; `files_in_another_layout_read_the_same`
/// checks the answers against files that take the page-by-page path.
#[test]
fn weight_pages_are_used_where_read() {
    for precision in ["f16", "f32"] {
        let store = fixture_store(precision);
        let sql = "SELECT count(*), sum(l1_norm(weights)) FROM filters";
        let (_, m) = run(store, sql, true);
        assert!(m["row_groups_scanned"] > 0, "{m:?}");
        assert_eq!(
            m["weight_chunks_in_place"],
            9 * m["row_groups_scanned"],
            "{precision}: {m:?}"
        );
        // The store writes the values aligned, so every chunk is used where it is mapped.
        assert_eq!(
            m["weight_chunks_mapped"],
            9 * m["row_groups_scanned"],
            "{precision}: {m:?}"
        );
    }
}

/// The plan of `sql` (logical and physical) as text.
fn explain(store: &Path, sql: &str) -> String {
    let batches = crate::common::query(store, &format!("EXPLAIN {sql}"));
    arrow::util::pretty::pretty_format_batches(&batches)
        .expect("format")
        .to_string()
}

/// A `filters_meta` query that reads no layer or model column joins `layers` and
/// `models` as semi joins (crates/sql/src/semi_join.rs: they are unique on their keys),
/// so the filter rows are filtered, not copied; one that reads a model column keeps the
/// inner join. The answers are those of the same slice written with `IN`, and of the
/// inner join (a `HashJoinExec`).
#[test]
fn unused_keyed_joins_become_semi_joins() {
    let store = big_store();
    let sql = "SELECT filter_id, model_id, layer_idx, out_channel, in_channel, weights[5] AS w4 \
               FROM filters_meta WHERE task = (SELECT min(task) FROM models) \
               ORDER BY filter_id";
    let plan = explain(store, sql);
    assert!(!plan.contains("Inner Join"), "{plan}");
    assert_eq!(plan.matches("LeftSemi Join").count(), 2, "{plan}");
    // Both run as filters of the scan's batches by key (crates/sql/src/semi_filter.rs),
    // not as hash joins.
    assert_eq!(plan.matches("SemiFilterExec: on=").count(), 2, "{plan}");
    assert!(!plan.contains("HashJoinExec"), "{plan}");
    // The same slice through IN, and through the inner joins (a model column read,
    // then dropped).
    let via_in = "SELECT filter_id, model_id, layer_idx, out_channel, in_channel, weights[5] AS w4 \
                  FROM filters WHERE model_id IN (SELECT model_id FROM models \
                  WHERE task = (SELECT min(task) FROM models)) ORDER BY filter_id";
    let inner = "SELECT CASE WHEN name = '' THEN -1 ELSE filter_id END AS filter_id, model_id, \
                 layer_idx, out_channel, in_channel, weights[5] AS w4 FROM filters_meta \
                 WHERE task = (SELECT min(task) FROM models) ORDER BY filter_id";
    let inner_plan = explain(store, inner);
    assert!(inner_plan.contains("Inner Join"), "{inner_plan}");
    assert!(inner_plan.contains("HashJoinExec"), "{inner_plan}");
    let (a, _) = run(store, sql, true);
    let (b, _) = run(store, via_in, true);
    let (c, _) = run(store, inner, true);
    assert!(a.lines().count() > 1000, "{} rows", a.lines().count());
    assert_eq!(a, b);
    assert_eq!(a, c);
    // Reading a layer column keeps that join inner, the models join still becomes semi.
    let plan = explain(
        store,
        "SELECT filter_id, layer_name FROM filters_meta WHERE task = 'x'",
    );
    assert!(plan.contains("Inner Join"), "{plan}");
    assert_eq!(plan.matches("LeftSemi Join").count(), 1, "{plan}");
}
