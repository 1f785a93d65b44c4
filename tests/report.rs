//! The validation report of every ingest (issue 4): warnings with stable codes printed
//! after single and manifest ingests, stored in `models.report` (queryable with SQL),
//! shown again by `info --model`; `--allow-empty` models without 3x3 kernels, and queries
//! over a store that holds them. See: issue #4.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::cli::{tricky_model, write_st};
use crate::common::{fails, ok, query, s, tree_state};

/// A new f16 store in a temporary folder.
fn store(dir: &Path) -> PathBuf {
    let p = dir.join("store");
    ok(&["init", s(&p)]);
    p
}

fn ingest(store: &Path, file: &Path, extra: &[&str]) -> String {
    let mut args = vec!["ingest", "--store", s(store), s(file)];
    args.extend_from_slice(extra);
    ok(&args)
}

/// The first column of `sql` as text, one value per row.
fn column(store: &Path, sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    for b in query(store, sql) {
        let c = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8)
            .expect("cast to Utf8");
        let a = c.as_string::<i32>();
        out.extend((0..a.len()).map(|i| a.value(i).to_owned()));
    }
    out
}

/// `sql` run by the binary with CSV output: its one value.
fn scalar(store: &Path, sql: &str) -> String {
    let out = ok(&["sql", "--store", s(store), "--format", "csv", sql]);
    out.lines().nth(1).unwrap_or_default().trim().to_owned()
}

/// Names of the models whose report has a warning with `code` (the documented query).
fn models_warning(store: &Path, code: &str) -> Vec<String> {
    column(
        store,
        &format!("SELECT name FROM models WHERE report LIKE '%\"code\":\"{code}\"%' ORDER BY name"),
    )
}

/// A model of 1x1 convolutions and a bias, and one of a fully connected layer only.
fn empty_models(dir: &Path) -> (PathBuf, PathBuf) {
    let one = dir.join("pointwise.safetensors");
    write_st(
        &one,
        &[
            ("proj.weight", vec![4, 2, 1, 1], vec![0.5; 8]),
            ("proj.bias", vec![4], vec![0.0; 4]),
        ],
    );
    let none = dir.join("mlp.safetensors");
    write_st(&none, &[("fc.weight", vec![3, 9], vec![0.25; 27])]);
    (one, none)
}

#[test]
fn allow_empty_stores_models_without_filters() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path());
    let good = dir.path().join("good.safetensors");
    tricky_model(&good, 5);
    ingest(&st, &good, &[]);
    let (one, none) = empty_models(dir.path());

    // without the flag: the old error, which now names the flag; nothing changes
    let before = tree_state(&st);
    for f in [&one, &none] {
        let err = fails(&["ingest", "--store", s(&st), s(f)]);
        assert!(
            err.contains("3x3") && err.contains("--allow-empty"),
            "{err}"
        );
    }
    assert_eq!(tree_state(&st), before);

    let out = ingest(&st, &one, &["--allow-empty"]);
    assert!(out.contains("0 layers, 0 filters"), "{out}");
    assert!(
        out.contains("  warning[no_3x3_kernels]: 1 convolution tensor(s)"),
        "{out}"
    );
    assert!(out.contains("proj.weight [4, 2, 1, 1] F32"), "{out}");
    assert!(out.contains("proj.bias [4] F32"), "{out}");
    let out = ingest(&st, &none, &["--allow-empty"]);
    assert!(out.contains("  warning[no_convolutions]: "), "{out}");

    // the models are there, with their kernel counts and no layers or filters
    let rows = column(
        &st,
        "SELECT concat_ws(' ', name, CAST(n_layers AS VARCHAR), CAST(n_filters AS VARCHAR), \
         CAST(conv_tensors AS VARCHAR), CAST(total_filters AS VARCHAR), kernel_shapes) \
         FROM models ORDER BY model_id",
    );
    assert_eq!(
        rows,
        [
            r#"good 3 23 5 59 {"(1, 1)":32,"(3, 3)":23,"(5, 5)":4}"#,
            r#"pointwise 0 0 1 8 {"(1, 1)":8}"#,
            "mlp 0 0 0 0 {}",
        ]
    );
    assert_eq!(models_warning(&st, "no_3x3_kernels"), ["pointwise"]);
    assert_eq!(models_warning(&st, "no_convolutions"), ["mlp"]);

    // queries over the store: the empty models add no rows anywhere
    assert_eq!(scalar(&st, "SELECT count(*) FROM filters"), "23");
    assert_eq!(scalar(&st, "SELECT count(*) FROM filter_columns"), "23");
    assert_eq!(scalar(&st, "SELECT count(*) FROM filters_meta"), "23");
    assert_eq!(scalar(&st, "SELECT count(*) FROM layers"), "3");
    assert_eq!(
        scalar(
            &st,
            "SELECT count(*) FROM filters WHERE model_id IN \
             (SELECT model_id FROM models WHERE n_filters = 0)"
        ),
        "0"
    );
    assert_eq!(
        scalar(
            &st,
            "SELECT count(DISTINCT model_id) FROM filters_meta WHERE name <> 'good'"
        ),
        "0"
    );
    let info = ok(&["info", "--store", s(&st)]);
    assert!(
        info.contains("models     3") && info.contains("filters    23"),
        "{info}"
    );
    let one_info = ok(&["info", "--store", s(&st), "--model", "pointwise"]);
    assert!(
        one_info.contains("1 convolution tensor(s), 0 3x3 layer(s), 0 filter(s)")
            && one_info.contains("warning[no_3x3_kernels]"),
        "{one_info}"
    );
    for args in [
        &["analyze", "degeneration", "--store", s(&st)][..],
        &["analyze", "kl-matrix", "--store", s(&st), "--by", "model"][..],
        &["analyze", "pca", "--store", s(&st)][..],
    ] {
        ok(args);
    }

    // a store holding only empty models answers with zero rows
    let only = dir.path().join("only");
    ok(&["init", s(&only)]);
    ingest(&only, &one, &["--allow-empty"]);
    assert_eq!(scalar(&only, "SELECT count(*) FROM filters"), "0");
    assert_eq!(scalar(&only, "SELECT count(*) FROM filters_meta"), "0");
    assert_eq!(
        column(&only, "SELECT model_id FROM filters GROUP BY model_id"),
        Vec::<String>::new()
    );
    ok(&["analyze", "degeneration", "--store", s(&only)]);
}

#[test]
fn allow_nonfinite_warns_with_counts() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path());
    let f = dir.path().join("nan.safetensors");
    let mut v = vec![0.25f32; 4 * 9];
    v[3] = f32::NAN;
    v[5] = f32::NAN;
    v[30] = f32::INFINITY;
    write_st(&f, &[("block.conv.weight", vec![2, 2, 3, 3], v)]);
    let out = ingest(&st, &f, &["--allow-nonfinite"]);
    let want = "  warning[non_finite]: layer block.conv.weight: 2 NaN and 1 infinite weight(s) \
                in 2 of 4 filters, stored as they are (--allow-nonfinite)";
    assert!(out.contains(want), "{out}");
    assert_eq!(models_warning(&st, "non_finite"), ["nan"]);

    // float16 overflows: counted per layer
    let big = dir.path().join("big.safetensors");
    let mut v = vec![0.5f32; 2 * 9];
    v[0] = 1e6;
    v[17] = -7e4;
    write_st(&big, &[("conv.weight", vec![2, 1, 3, 3], v)]);
    let out = ingest(&st, &big, &["--allow-nonfinite"]);
    assert!(
        out.contains(
            "warning[non_finite]: layer conv.weight: 2 weight(s) beyond float16's range (65504) \
             stored as infinity"
        ),
        "{out}"
    );
}

#[test]
fn replace_and_all_zero_layers_warn() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path());
    let a = dir.path().join("a.safetensors");
    tricky_model(&a, 1);
    let out = ingest(&st, &a, &[]);
    assert!(!out.contains("warning[duplicate_name]"), "{out}");
    let sha = scalar(&st, "SELECT source_sha256 FROM models");

    // all-zero layer, under the same name with --replace
    let b = dir.path().join("b.safetensors");
    write_st(
        &b,
        &[
            ("layer1.weight", vec![2, 1, 3, 3], vec![0.5; 18]),
            ("layer2.weight", vec![3, 2, 3, 3], vec![0.0; 54]),
        ],
    );
    let out = ingest(&st, &b, &["--name", "a", "--replace"]);
    let dup = format!(
        "  warning[duplicate_name]: replaced model_id 0 of the same name \"a\" (sha256 {}, 23 \
         filters; --replace)",
        &sha[..12]
    );
    assert!(out.contains(&dup), "{out}");
    assert!(
        out.contains("  warning[all_zero_layer]: layer layer2.weight: all 6 filters are zero"),
        "{out}"
    );
    assert_eq!(models_warning(&st, "duplicate_name"), ["a"]);
    assert_eq!(models_warning(&st, "all_zero_layer"), ["a"]);
    let info = ok(&["info", "--store", s(&st), "--model", "a"]);
    for needle in [
        "2 convolution tensor(s), 2 3x3 layer(s), 8 filter(s)",
        "warning[duplicate_name]: replaced model_id 0",
        "warning[all_zero_layer]",
        "warning[depth_from_name_order]",
    ] {
        assert!(info.contains(needle), "{needle} missing:\n{info}");
    }
}

#[test]
fn manifest_prints_warnings_under_each_committed_row() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path());
    let zoo = dir.path().join("zoo");
    std::fs::create_dir(&zoo).unwrap();
    empty_models(&zoo);
    tricky_model(&zoo.join("tricky.safetensors"), 3);
    let manifest = zoo.join("manifest.csv");
    std::fs::write(
        &manifest,
        "path,name\ntricky.safetensors,\npointwise.safetensors,\nmlp.safetensors,\n",
    )
    .unwrap();
    let args = ["ingest", "--store", s(&st), "--manifest", s(&manifest)];
    // without --allow-empty the two empty models fail, naming the flag
    let err = fails(&[&args[..], &["--threads", "1"]].concat());
    assert!(err.contains("--allow-empty"), "{err}");
    let rm = ["sql", "--store", s(&st), "--format", "csv"];
    let n = ok(&[&rm[..], &["SELECT count(*) AS n FROM models"]].concat());
    assert!(n.contains("\n1\n"), "{n}");

    let out = ok(&[&args[..], &["--threads", "1", "--allow-empty"]].concat());
    let lines: Vec<&str> = out.lines().collect();
    let at = |name: &str| {
        lines
            .iter()
            .position(|l| l.starts_with("committed") && l.contains(name))
            .unwrap_or_else(|| panic!("no committed line for {name}:\n{out}"))
    };
    let p = at("pointwise");
    assert!(
        lines[p + 1].starts_with("           warning[no_3x3_kernels]: "),
        "{out}"
    );
    let m = at("mlp");
    assert!(
        lines[m + 1].starts_with("           warning[no_convolutions]: "),
        "{out}"
    );
    // skipped tensors and notes stay out of the bulk report; `info --model` has them
    assert!(
        !out.contains("skipped 2 tensor(s)") && !out.contains("note:"),
        "{out}"
    );
    assert!(out.contains("2 committed, 1 already stored"), "{out}");
    let info = ok(&["info", "--store", s(&st), "--model", "pointwise"]);
    assert!(info.contains("skipped 2 tensor(s):"), "{info}");
}

/// Stores written before the structured report hold a JSON array of lines: `info --model`
/// still prints them.
#[test]
fn info_reads_reports_of_older_stores() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path());
    let f = dir.path().join("old.safetensors");
    tricky_model(&f, 4);
    ingest(&st, &f, &[]);
    // rewrite the one models file with an old-style report
    let models_dir = st.join("models").join("model-0");
    let file = std::fs::read_dir(&models_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let batch: RecordBatch =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&file).unwrap())
            .unwrap()
            .build()
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
    let idx = batch.schema().index_of("report").unwrap();
    let mut cols = batch.columns().to_vec();
    cols[idx] = Arc::new(StringArray::from(vec![
        r#"["warning: layer features.conv2.weight is all zero","conv_depth from the natural order of tensor names, not from a graph"]"#,
    ]));
    let old = RecordBatch::try_new(batch.schema(), cols).unwrap();
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(&file).unwrap(), old.schema(), None).unwrap();
    w.write(&old).unwrap();
    w.close().unwrap();

    let info = ok(&["info", "--store", s(&st), "--model", "old"]);
    for needle in [
        "warning: layer features.conv2.weight is all zero",
        "conv_depth from the natural order of tensor names",
        "free-text report",
    ] {
        assert!(info.contains(needle), "{needle} missing:\n{info}");
    }
    // and the new form, for comparison, prints codes and counts
    let g = dir.path().join("new.safetensors");
    tricky_model(&g, 6);
    ingest(&st, &g, &[]);
    let info = ok(&["info", "--store", s(&st), "--model", "new"]);
    for needle in [
        "5 convolution tensor(s), 3 3x3 layer(s), 23 filter(s)",
        "skipped 3 tensor(s):",
        "  not rank 4: not a convolution weight (1): features.conv2.bias [3] F32",
        "warning[depth_from_name_order]",
    ] {
        assert!(info.contains(needle), "{needle} missing:\n{info}");
    }
}
