//! The `filterdb` binary end to end: round trips, idempotence, replace, manifests, export, info.

use std::collections::HashMap;
use std::path::Path;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float16Type, Float32Type};
use half::f16;
use safetensors::Dtype;
use safetensors::tensor::TensorView;

use crate::common::{fails, fixture_store, ok, query, s, tree_state, zoo};

/// Write a safetensors file of f32 tensors.
pub fn write_st(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(n, shape, v)| {
            (
                n.to_string(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                shape.clone(),
            )
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, b, shape)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, shape.clone(), b).expect("valid view"),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).expect("write safetensors");
}

/// Deterministic awkward values: signed zeros, subnormals, tiny and large magnitudes.
pub fn values(n: usize, salt: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(salt);
            match x % 11 {
                0 => -0.0,
                1 => f32::from_bits(1 + x % 1000), // subnormal
                2 => 1e-7 * (x % 97) as f32,
                3 => -3.0e3,
                _ => ((x % 20_001) as f32 - 10_000.0) / 7_777.0,
            }
        })
        .collect()
}

/// A model with layers named so that string order differs from natural order, a 1x1
/// conv, a 5x5 conv and a bias.
pub fn tricky_model(path: &Path, salt: u32) -> HashMap<&'static str, Vec<f32>> {
    let l10 = values(4 * 3 * 9, salt);
    let l2 = values(3 * 2 * 9, salt + 1);
    let dw = values(5 * 9, salt + 2);
    write_st(
        path,
        &[
            ("features.conv10.weight", vec![4, 3, 3, 3], l10.clone()),
            ("features.conv2.weight", vec![3, 2, 3, 3], l2.clone()),
            ("features.dw3.weight", vec![5, 1, 3, 3], dw.clone()),
            ("features.proj.weight", vec![8, 4, 1, 1], values(32, 9)),
            ("features.big.weight", vec![2, 2, 5, 5], values(100, 10)),
            ("features.conv2.bias", vec![3], values(3, 11)),
        ],
    );
    HashMap::from([
        ("features.conv10.weight", l10),
        ("features.conv2.weight", l2),
        ("features.dw3.weight", dw),
    ])
}

/// Stored weights, in filter_id order, as f32 (exact for both precisions).
fn stored_weights(store: &Path, precision: &str) -> Vec<(String, i32, i32, Vec<f32>)> {
    let batches = query(
        store,
        "SELECT l.layer_name, f.out_channel, f.in_channel, f.weights FROM filters f \
         JOIN layers l ON f.model_id = l.model_id AND f.layer_idx = l.layer_idx ORDER BY f.filter_id",
    );
    let mut out = Vec::new();
    for b in &batches {
        let names = b
            .column(0)
            .as_string_view_opt()
            .map(|a| {
                (0..a.len())
                    .map(|i| a.value(i).to_string())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_else(|| {
                let a = b.column(0).as_string::<i32>();
                (0..a.len()).map(|i| a.value(i).to_string()).collect()
            });
        let oc = b.column(1).as_primitive::<arrow::datatypes::Int32Type>();
        let ic = b.column(2).as_primitive::<arrow::datatypes::Int32Type>();
        let w = b.column(3).as_fixed_size_list();
        for (i, name) in names.into_iter().enumerate() {
            let v = w.value(i);
            let vals: Vec<f32> = if precision == "f16" {
                v.as_primitive::<Float16Type>()
                    .values()
                    .iter()
                    .map(|x| x.to_f32())
                    .collect()
            } else {
                v.as_primitive::<Float32Type>().values().to_vec()
            };
            out.push((name, oc.value(i), ic.value(i), vals));
        }
    }
    out
}

fn check_round_trip(precision: &str) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tricky.safetensors");
    let src = tricky_model(&model, 1);
    let store = dir.path().join("store");
    ok(&["init", s(&store), "--precision", precision]);
    let out = ok(&[
        "ingest",
        "--store",
        s(&store),
        s(&model),
        "--task",
        "classification",
        "--visual-category",
        "natural",
    ]);
    assert!(out.contains("tricky"), "{out}");
    let rows = stored_weights(&store, precision);
    // Natural order: conv2 < conv10 < dw3; out-channel-major inside each layer.
    let order = [
        "features.conv2.weight",
        "features.conv10.weight",
        "features.dw3.weight",
    ];
    let mut expected = Vec::new();
    for name in order {
        let v = &src[name];
        let n = v.len() / 9;
        let inp = match name {
            "features.conv10.weight" => 3,
            "features.conv2.weight" => 2,
            _ => 1,
        };
        for k in 0..n {
            expected.push((
                name.to_string(),
                (k / inp) as i32,
                (k % inp) as i32,
                v[k * 9..k * 9 + 9].to_vec(),
            ));
        }
    }
    assert_eq!(rows.len(), expected.len());
    for (got, want) in rows.iter().zip(&expected) {
        assert_eq!((&got.0, got.1, got.2), (&want.0, want.1, want.2));
        for (g, w) in got.3.iter().zip(&want.3) {
            let w = if precision == "f16" {
                f16::from_f32(*w).to_f32()
            } else {
                *w
            };
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{} ({}, {}): {g} vs {w}",
                got.0,
                got.1,
                got.2
            );
        }
    }
    // depth by name order, shares of kernel shapes as the paper's meta counted them
    let b = query(
        &store,
        "SELECT layer_name, conv_depth, conv_depth_norm, depth_rule FROM layers ORDER BY layer_idx",
    );
    let text = arrow::util::pretty::pretty_format_batches(&b)
        .unwrap()
        .to_string();
    assert!(
        // conv levels in name order: big (5x5) 0, conv2 1, conv10 2, dw3 3, proj (1x1) 4
        text.contains("features.conv2.weight  | 1          | 0.25")
            && text.contains("features.dw3.weight    | 3          | 0.75"),
        "{text}"
    );
    assert!(text.contains("name_order"), "{text}");
    let m = query(
        &store,
        "SELECT total_filters, filters_3x3, share_3x3, kernel_shapes, task, visual_category FROM models",
    );
    let text = arrow::util::pretty::pretty_format_batches(&m)
        .unwrap()
        .to_string();
    // 3x3: 12 + 6 + 5 = 23 kernels; 1x1: 32; 5x5: 4 -> total 59
    assert!(text.contains("| 59 ") && text.contains("| 23 "), "{text}");
    assert!(
        text.contains("(1, 1)") && text.contains("Classification") && text.contains("Natural"),
        "{text}"
    );
}

#[test]
fn round_trip_f32_is_bit_exact() {
    check_round_trip("f32");
}

#[test]
fn round_trip_f16_rounds_once() {
    check_round_trip("f16");
}

#[test]
fn hwio_layout_gives_the_same_filters() {
    let dir = tempfile::tempdir().unwrap();
    let (out, inp) = (3usize, 2usize);
    let oihw = values(out * inp * 9, 5);
    let mut hwio = vec![0f32; oihw.len()];
    for o in 0..out {
        for i in 0..inp {
            for j in 0..9 {
                hwio[(j * inp + i) * out + o] = oihw[(o * inp + i) * 9 + j];
            }
        }
    }
    let a = dir.path().join("a.safetensors");
    let b = dir.path().join("b.safetensors");
    write_st(&a, &[("conv.weight", vec![out, inp, 3, 3], oihw)]);
    write_st(&b, &[("conv/kernel", vec![3, 3, inp, out], hwio)]);
    let sa = dir.path().join("sa");
    let sb = dir.path().join("sb");
    ok(&["init", s(&sa), "--precision", "f32"]);
    ok(&["init", s(&sb), "--precision", "f32"]);
    ok(&["ingest", "--store", s(&sa), s(&a)]);
    ok(&["ingest", "--store", s(&sb), s(&b), "--layout", "hwio"]);
    let wa: Vec<_> = stored_weights(&sa, "f32")
        .into_iter()
        .map(|r| (r.1, r.2, r.3))
        .collect();
    let wb: Vec<_> = stored_weights(&sb, "f32")
        .into_iter()
        .map(|r| (r.1, r.2, r.3))
        .collect();
    assert_eq!(wa, wb);
}

#[test]
fn same_bytes_twice_is_a_noop_and_replace_is_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let m1 = dir.path().join("m.safetensors");
    tricky_model(&m1, 1);
    ok(&["init", s(&store)]);
    ok(&["ingest", "--store", s(&store), s(&m1)]);
    let before = tree_state(&store);
    let out = ok(&["ingest", "--store", s(&store), s(&m1)]);
    assert!(out.contains("already"), "{out}");
    assert_eq!(
        before,
        tree_state(&store),
        "a no-op ingest changed the store"
    );
    // Same name, other bytes: refused without --replace.
    let m2dir = dir.path().join("v2");
    std::fs::create_dir(&m2dir).unwrap();
    let m2 = m2dir.join("m.safetensors");
    tricky_model(&m2, 2);
    let err = fails(&["ingest", "--store", s(&store), s(&m2)]);
    assert!(
        err.contains("already stored") && err.contains("--replace"),
        "{err}"
    );
    assert_eq!(before, tree_state(&store));
    ok(&["ingest", "--store", s(&store), s(&m2), "--replace"]);
    let info = ok(&["info", "--store", s(&store)]);
    assert!(
        info.contains("version    2") && info.contains("models     1"),
        "{info}"
    );
    // The old version still reads the old weights.
    let old = ok(&[
        "sql",
        "--store",
        s(&store),
        "--version",
        "1",
        "--format",
        "csv",
        "SELECT sum(CAST(weights[1] AS DOUBLE)) AS s FROM filters",
    ]);
    let new = ok(&[
        "sql",
        "--store",
        s(&store),
        "--format",
        "csv",
        "SELECT sum(CAST(weights[1] AS DOUBLE)) AS s FROM filters",
    ]);
    assert_ne!(old, new);
}

#[test]
fn manifest_ingests_everything_then_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    ok(&["init", s(&store)]);
    let manifest = zoo().join("manifest.csv");
    let out = ok(&["ingest", "--store", s(&store), "--manifest", s(&manifest)]);
    assert!(out.contains("6 committed"), "{out}");
    let again = ok(&["ingest", "--store", s(&store), "--manifest", s(&manifest)]);
    assert!(
        again.contains("0 committed") && again.contains("6 already"),
        "{again}"
    );
    let info = ok(&["info", "--store", s(&store)]);
    assert!(info.contains("models     6"), "{info}");
}

#[test]
fn fixture_stores_agree_across_precisions() {
    let q = "SELECT count(*) AS n, count(DISTINCT model_id) AS m FROM filters";
    let a = ok(&[
        "sql",
        "--store",
        s(fixture_store("f16")),
        "--format",
        "csv",
        q,
    ]);
    let b = ok(&[
        "sql",
        "--store",
        s(fixture_store("f32")),
        "--format",
        "csv",
        q,
    ]);
    assert_eq!(a, b);
    assert!(a.contains(",6"), "{a}");
}

/// An export that fails part way leaves no file behind and the file it would have
/// replaced as it was.
#[test]
fn failed_export_leaves_no_file_and_keeps_the_old_one() {
    let store = fixture_store("f16");
    let dir = tempfile::tempdir().unwrap();
    for format in ["parquet", "npy", "csv", "arrow"] {
        let out = dir.path().join(format!("{format}-slice.{format}"));
        std::fs::write(&out, b"old").unwrap();
        let err = fails(&[
            "export",
            "--store",
            s(store),
            "--query",
            "SELECT weights, filter_id / (filter_id - filter_id) AS x FROM filters",
            "--format",
            format,
            "-o",
            s(&out),
        ]);
        assert!(
            err.to_lowercase().contains("divide by zero"),
            "{format}: {err}"
        );
        assert_eq!(std::fs::read(&out).unwrap(), b"old", "{format}");
    }
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "arrow-slice.arrow",
            "csv-slice.csv",
            "npy-slice.npy",
            "parquet-slice.parquet"
        ]
    );
}

#[test]
fn export_npy_and_parquet_match_sql() {
    let store = fixture_store("f16");
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("slice.npy");
    let q =
        "SELECT filter_id, layer_idx, weights FROM filters WHERE model_id = 1 ORDER BY filter_id";
    ok(&[
        "export",
        "--store",
        s(store),
        "--query",
        q,
        "--format",
        "npy",
        "-o",
        s(&npy),
    ]);
    let bytes = std::fs::read(&npy).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let header = String::from_utf8_lossy(&bytes[10..128]).to_string();
    let n: usize = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(header.contains("'<f2'"), "{header}");
    assert_eq!(bytes.len(), 128 + n * 9 * 2);
    let rows = query(store, q);
    let total: usize = rows.iter().map(|b| b.num_rows()).sum();
    assert_eq!(total, n);
    let first = rows[0].column(2).as_fixed_size_list().value(0);
    let first = first.as_primitive::<Float16Type>();
    let from_npy: Vec<u16> = bytes[128..128 + 18]
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let from_sql: Vec<u16> = first.values().iter().map(|v| v.to_bits()).collect();
    assert_eq!(from_npy, from_sql);
    assert!(dir.path().join("slice.parquet").exists());
    let pq = dir.path().join("slice2.parquet");
    ok(&[
        "export",
        "--store",
        s(store),
        "--query",
        q,
        "--format",
        "parquet",
        "-o",
        s(&pq),
    ]);
    // the Parquet file holds the query's rows (the weights through the raw page writer)
    let (rt, ctx) = crate::common::store_ctx(store);
    let back = rt.block_on(async {
        ctx.read_parquet(s(&pq), Default::default())
            .await
            .unwrap()
            .collect()
            .await
            .unwrap()
    });
    let want = arrow::compute::concat_batches(&rows[0].schema(), &rows).unwrap();
    let got = arrow::compute::concat_batches(&back[0].schema(), &back).unwrap();
    assert_eq!(got.num_rows(), want.num_rows());
    for c in 0..want.num_columns() {
        assert_eq!(
            got.column(c).as_ref(),
            want.column(c).as_ref(),
            "column {c}"
        );
    }
    let arrow_out = dir.path().join("slice.arrow");
    ok(&[
        "export",
        "--store",
        s(store),
        "--query",
        q,
        "--format",
        "arrow",
        "-o",
        s(&arrow_out),
    ]);
    let csv_out = dir.path().join("slice.csv");
    ok(&[
        "export",
        "--store",
        s(store),
        "--query",
        q,
        "--format",
        "csv",
        "-o",
        s(&csv_out),
    ]);
    let csv = std::fs::read_to_string(&csv_out).unwrap();
    assert!(
        csv.starts_with("filter_id,layer_idx,weights_0,"),
        "{}",
        &csv[..80.min(csv.len())]
    );
    assert_eq!(csv.lines().count(), n + 1);
}

#[test]
fn info_shows_counts_groups_and_reports() {
    let store = fixture_store("f16");
    let info = ok(&["info", "--store", s(store)]);
    for needle in [
        "models     6",
        "per task",
        "per visual category",
        "recent versions",
    ] {
        assert!(info.contains(needle), "{needle} missing:\n{info}");
    }
    let name = ok(&[
        "sql",
        "--store",
        s(store),
        "--format",
        "csv",
        "SELECT name FROM models ORDER BY model_id LIMIT 1",
    ]);
    let name = name.lines().nth(1).unwrap().trim().to_string();
    let one = ok(&["info", "--store", s(store), "--model", &name]);
    assert!(
        one.contains("report") && one.contains("name_order"),
        "{one}"
    );
}

#[test]
fn gen_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    ok(&[
        "gen",
        s(&a),
        "--models",
        "2",
        "--seed",
        "3",
        "--max-channels",
        "16",
        "--max-layers",
        "4",
    ]);
    ok(&[
        "gen",
        s(&b),
        "--models",
        "2",
        "--seed",
        "3",
        "--max-channels",
        "16",
        "--max-layers",
        "4",
    ]);
    let mut names: Vec<_> = std::fs::read_dir(&a)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    assert!(names.len() >= 3);
    for n in names {
        assert_eq!(
            std::fs::read(a.join(&n)).unwrap(),
            std::fs::read(b.join(&n)).unwrap(),
            "{n:?} differs"
        );
    }
}

/// Every accepted source dtype lands in an f32 store as its exact f32 value (f16, bf16)
/// or rounded once (f64).
#[test]
fn every_source_dtype_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let vals = values(2 * 3 * 9, 77);
    let f16b: Vec<u8> = vals
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect();
    let bf16b: Vec<u8> = vals
        .iter()
        .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
        .collect();
    let f64b: Vec<u8> = vals
        .iter()
        .flat_map(|v| (f64::from(*v) * 1.000_000_1).to_le_bytes())
        .collect();
    let shape = vec![2usize, 3, 3, 3];
    let views = vec![
        (
            "a_f16.weight".to_string(),
            TensorView::new(Dtype::F16, shape.clone(), &f16b).unwrap(),
        ),
        (
            "b_bf16.weight".to_string(),
            TensorView::new(Dtype::BF16, shape.clone(), &bf16b).unwrap(),
        ),
        (
            "c_f64.weight".to_string(),
            TensorView::new(Dtype::F64, shape.clone(), &f64b).unwrap(),
        ),
    ];
    let model = dir.path().join("dtypes.safetensors");
    safetensors::serialize_to_file(views, None, &model).unwrap();
    let store = dir.path().join("store");
    ok(&["init", s(&store), "--precision", "f32"]);
    ok(&["ingest", "--store", s(&store), s(&model)]);
    let rows = stored_weights(&store, "f32");
    assert_eq!(rows.len(), 18);
    for (k, (name, _, _, w)) in rows.iter().enumerate() {
        let src = &vals[(k % 6) * 9..(k % 6) * 9 + 9];
        for (g, v) in w.iter().zip(src) {
            let want = match name.as_str() {
                "a_f16.weight" => half::f16::from_f32(*v).to_f32(),
                "b_bf16.weight" => half::bf16::from_f32(*v).to_f32(),
                _ => (f64::from(*v) * 1.000_000_1) as f32,
            };
            assert_eq!(g.to_bits(), want.to_bits(), "{name}");
        }
    }
    let dtypes = ok(&[
        "sql",
        "--store",
        s(&store),
        "--format",
        "csv",
        "SELECT source_dtype FROM layers ORDER BY layer_idx",
    ]);
    assert_eq!(dtypes, "source_dtype\nf16\nbf16\nf64\n");
}

/// The interactive shell reads statements (multi-line, ending in ';') and `\d` from stdin.
#[test]
fn shell_runs_statements_and_describes_tables() {
    use std::io::Write;
    let store = fixture_store("f16");
    let mut child = crate::common::bin()
        .args(["sql", "--store", s(store), "--format", "csv"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"SELECT count(*) AS n\n  FROM models;\n\\d\n\\q\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("n\n6\n"), "{text}");
    assert!(
        text.contains("filters_meta") && text.contains("layer_name"),
        "{text}"
    );
}

#[test]
fn gen_into_a_store_equals_gen_then_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let (zoo, a, b) = (
        dir.path().join("zoo"),
        dir.path().join("a"),
        dir.path().join("b"),
    );
    let opts = [
        "--models",
        "3",
        "--seed",
        "5",
        "--min-layers",
        "2",
        "--max-layers",
        "4",
        "--max-channels",
        "8",
    ];
    ok(&[&["gen", s(&zoo)][..], &opts].concat());
    ok(&["init", s(&a)]);
    let manifest = zoo.join("manifest.csv");
    ok(&["ingest", "--store", s(&a), "--manifest", s(&manifest)]);
    ok(&["init", s(&b)]);
    let out = ok(&[&["gen", "--store", s(&b)][..], &opts].concat());
    assert!(out.contains("3 committed, 0 already stored"), "{out}");
    // the same models, bytes, names, labels and weights
    let sql = "SELECT m.name, m.task, m.visual_category, m.architecture, m.source_sha256, \
               m.n_layers, count(*) AS n, sum(f.w0) AS s0, sum(f.w4) AS s4, sum(f.w8) AS s8, \
               sum(f.layer_idx * f.out_channel + f.in_channel) AS ids \
               FROM filter_columns f JOIN models m ON f.model_id = m.model_id \
               GROUP BY m.name, m.task, m.visual_category, m.architecture, m.source_sha256, \
               m.n_layers ORDER BY m.name";
    let show = |store: &Path| {
        arrow::util::pretty::pretty_format_batches(&query(store, sql))
            .unwrap()
            .to_string()
    };
    let (ta, tb) = (show(&a), show(&b));
    assert_eq!(ta, tb);
    assert_eq!(ta.lines().count(), 3 + 4, "{ta}");
    // a rerun commits nothing new; OUT and --store are exclusive
    let again = ok(&[&["gen", "--store", s(&b)][..], &opts].concat());
    assert!(again.contains("0 committed, 3 already stored"), "{again}");
    fails(&["gen", s(&zoo), "--store", s(&b)]);
    fails(&["gen"]);
}
