//! NumPy `.npz` / `.npy` ingest end to end: numpy writes the files (compressed and stored
//! archives, big-endian and Fortran-order arrays, float32 and float64, a bias and an
//! integer step counter), `filterdb ingest` reads them, and the stored weights equal,
//! bit for bit, those of a safetensors file holding the same arrays.
//!
//! Needs `python3` with numpy. Without numpy the test is skipped, unless `CI` is set,
//! where a missing numpy is a failure.

use std::path::Path;
use std::process::Command;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float32Type, Int32Type};
use safetensors::Dtype;
use safetensors::tensor::TensorView;

use crate::cli::values;
use crate::common::{fails, ok, query, s};

/// Whether `python3 -c "import numpy"` works; panics under CI when it does not.
fn numpy_or_skip() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 with numpy is required under CI for the .npz tests"
        );
        eprintln!("skipping the .npz tests: python3 with numpy is not installed");
    }
    ok
}

/// The arrays of the test model: (name, shape, values, is f64).
fn arrays() -> Vec<(&'static str, Vec<usize>, Vec<f32>, bool)> {
    vec![
        (
            "features.conv10.weight",
            vec![4, 3, 3, 3],
            values(108, 1),
            false,
        ),
        (
            "features.conv2.weight",
            vec![3, 2, 3, 3],
            values(54, 2),
            false,
        ),
        ("features.dw3.weight", vec![5, 1, 3, 3], values(45, 3), true),
        (
            "features.proj.weight",
            vec![8, 4, 1, 1],
            values(32, 4),
            false,
        ),
        ("features.conv2.bias", vec![3], values(3, 5), false),
    ]
}

fn le_bytes(v: &[f32], f64_: bool) -> Vec<u8> {
    if f64_ {
        v.iter().flat_map(|x| f64::from(*x).to_le_bytes()).collect()
    } else {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
}

/// Writes the reference safetensors file and one raw little-endian `.bin` per array.
fn write_sources(dir: &Path) {
    let arrays = arrays();
    let bytes: Vec<Vec<u8>> = arrays.iter().map(|(_, _, v, d)| le_bytes(v, *d)).collect();
    let views: Vec<(String, TensorView<'_>)> = arrays
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _, d), b)| {
            let dtype = if *d { Dtype::F64 } else { Dtype::F32 };
            (
                (*name).to_owned(),
                TensorView::new(dtype, shape.clone(), b).expect("valid view"),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("ref.safetensors"))
        .expect("write safetensors");
    for ((name, _, _, _), b) in arrays.iter().zip(&bytes) {
        std::fs::write(dir.join(format!("{name}.bin")), b).expect("write .bin");
    }
}

/// numpy writes `model.npz` (compressed; conv10 big-endian, conv2 Fortran order, an
/// int64 step counter), `stored.npz` (uncompressed, plain arrays) and `conv2.npy`
/// (Fortran order), and prints the sha256 of `model.npz`.
const NUMPY_SCRIPT: &str = r#"
import hashlib, json, sys
import numpy as np
d = sys.argv[1]
spec = json.loads(sys.argv[2])
plain = {}
for name, shape, is_f64 in spec:
    a = np.fromfile(f"{d}/{name}.bin", dtype="<f8" if is_f64 else "<f4").reshape(shape)
    plain[name] = a
odd = dict(plain)
odd["features.conv10.weight"] = plain["features.conv10.weight"].astype(">f4")
odd["features.conv2.weight"] = np.asfortranarray(plain["features.conv2.weight"])
assert odd["features.conv2.weight"].flags.f_contiguous and not odd["features.conv2.weight"].flags.c_contiguous
odd["bn.num_batches_tracked"] = np.array(7, dtype=np.int64)
np.savez_compressed(f"{d}/model.npz", **odd)
np.savez(f"{d}/stored.npz", **plain)
np.save(f"{d}/conv2.npy", odd["features.conv2.weight"])
print(hashlib.sha256(open(f"{d}/model.npz", "rb").read()).hexdigest())
"#;

fn run_numpy(dir: &Path) -> String {
    let spec: Vec<serde_json::Value> = arrays()
        .iter()
        .map(|(n, shape, _, d)| serde_json::json!([n, shape, d]))
        .collect();
    let out = Command::new("python3")
        .args([
            "-c",
            NUMPY_SCRIPT,
            s(dir),
            &serde_json::Value::from(spec).to_string(),
        ])
        .output()
        .expect("running python3");
    assert!(
        out.status.success(),
        "numpy fixture script failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn strings(col: &dyn Array) -> Vec<String> {
    let c = arrow::compute::cast(col, &DataType::Utf8).expect("cast to Utf8");
    let a = c.as_string::<i32>();
    (0..a.len()).map(|i| a.value(i).to_owned()).collect()
}

/// Every stored filter of an f32 store: (layer name, out, in, weight bits).
fn stored(store: &Path) -> Vec<(String, i32, i32, Vec<u32>)> {
    let batches = query(
        store,
        "SELECT l.layer_name, f.out_channel, f.in_channel, f.weights FROM filters f \
         JOIN layers l ON f.model_id = l.model_id AND f.layer_idx = l.layer_idx ORDER BY f.filter_id",
    );
    let mut out = Vec::new();
    for b in &batches {
        let names = strings(b.column(0));
        let oc = b.column(1).as_primitive::<Int32Type>();
        let ic = b.column(2).as_primitive::<Int32Type>();
        let w = b.column(3).as_fixed_size_list();
        for (i, name) in names.into_iter().enumerate() {
            let v = w.value(i);
            let bits = v
                .as_primitive::<Float32Type>()
                .values()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            out.push((name, oc.value(i), ic.value(i), bits));
        }
    }
    out
}

/// One text row per layer: name, depth, shape, dtype, as the layers table has them.
fn layers(store: &Path) -> Vec<String> {
    let b = query(
        store,
        "SELECT layer_name, conv_depth, conv_depth_norm, depth_rule, out_channels, in_channels, \
         n_filters, source_dtype FROM layers ORDER BY layer_idx",
    );
    arrow::util::pretty::pretty_format_batches(&b)
        .expect("format")
        .to_string()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn ingest(store: &Path, file: &Path) -> String {
    ok(&["init", s(store), "--precision", "f32"]);
    ok(&["ingest", "--store", s(store), s(file), "--name", "m"])
}

#[test]
fn npz_ingests_like_safetensors() {
    if !numpy_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write_sources(d);
    let sha = run_numpy(d);

    let reference = d.join("store-st");
    ingest(&reference, &d.join("ref.safetensors"));
    let want = stored(&reference);
    assert_eq!(
        want.len(),
        12 + 6 + 5,
        "3x3 filters of the three 3x3 layers"
    );

    for (file, label) in [("model.npz", "compressed"), ("stored.npz", "stored")] {
        let store = d.join(format!("store-{label}"));
        let out = ingest(&store, &d.join(file));
        assert!(out.contains('m'), "{out}");
        assert_eq!(
            stored(&store),
            want,
            "{file}: weights differ from safetensors"
        );
        assert_eq!(layers(&store), layers(&reference), "{file}: layers differ");
    }

    // the model row describes the .npz file itself
    let store = d.join("store-compressed");
    let b = query(
        &store,
        "SELECT source_format, source_sha256, conv_tensors, total_filters, report FROM models",
    );
    let fmt = strings(b[0].column(0));
    let hash = strings(b[0].column(1));
    assert_eq!(fmt, ["npz"]);
    assert_eq!(hash, [sha]);
    let report = strings(b[0].column(4)).join("");
    let parsed = filterdb_store::ValidationReport::from_json(&report).expect("report JSON");
    assert!(
        parsed
            .skipped
            .iter()
            .any(|t| t.describe() == "bn.num_batches_tracked [] int64"),
        "{report}"
    );
    // the same bytes again are a no-op; so is the file under another name
    let again = ok(&["ingest", "--store", s(&store), s(&d.join("model.npz"))]);
    assert!(again.to_lowercase().contains("already"), "{again}");
    std::fs::copy(d.join("model.npz"), d.join("copy.npz")).expect("copy");
    let again = ok(&["ingest", "--store", s(&store), s(&d.join("copy.npz"))]);
    assert!(again.to_lowercase().contains("already"), "{again}");

    // a .npy file: one array, named by the file stem
    let store = d.join("store-npy");
    ok(&["init", s(&store), "--precision", "f32"]);
    ok(&["ingest", "--store", s(&store), s(&d.join("conv2.npy"))]);
    let got = stored(&store);
    let conv2: Vec<_> = want
        .iter()
        .filter(|r| r.0 == "features.conv2.weight")
        .map(|r| ("conv2".to_owned(), r.1, r.2, r.3.clone()))
        .collect();
    assert_eq!(got, conv2);
    let b = query(&store, "SELECT name, source_format FROM models");
    assert_eq!(strings(b[0].column(0)), ["conv2"]);
    assert_eq!(strings(b[0].column(1)), ["npy"]);
}

#[test]
fn broken_npz_is_a_clear_error_and_commits_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let store = d.join("store");
    ok(&["init", s(&store)]);
    std::fs::write(d.join("bad.npz"), b"PK\x03\x04 not really a zip archive").expect("write");
    let err = fails(&["ingest", "--store", s(&store), s(&d.join("bad.npz"))]);
    assert!(err.contains("bad.npz"), "{err}");
    assert!(err.contains("not a readable .npz (zip) archive"), "{err}");
    std::fs::write(d.join("bad.npy"), b"\x93NUMPY\x01\x00\x40\x00{'descr'").expect("write");
    let err = fails(&["ingest", "--store", s(&store), s(&d.join("bad.npy"))]);
    assert!(
        err.contains("bad.npy") && err.contains("truncated"),
        "{err}"
    );
    let info = ok(&["info", "--store", s(&store)]);
    assert!(!info.contains("bad"), "{info}");
}
