//! Bad input: each case fails with a message naming the file and what was expected,
//! exits non-zero, and leaves the store byte-for-byte unchanged.

use std::path::{Path, PathBuf};

use crate::cli::{tricky_model, write_st};
use crate::common::{fails, ok, run, s, tree_state};

struct Case {
    dir: tempfile::TempDir,
    store: PathBuf,
}

impl Case {
    fn new() -> Case {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        ok(&["init", s(&store)]);
        // One committed model, so "nothing stored before is lost" is checked too.
        let good = dir.path().join("good.safetensors");
        tricky_model(&good, 42);
        ok(&["ingest", "--store", s(&store), s(&good)]);
        Case { dir, store }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// Ingest `args`, expect failure mentioning every needle, and an unchanged store.
    fn rejects(&self, args: &[&str], needles: &[&str]) {
        let before = tree_state(&self.store);
        let mut full = vec!["ingest", "--store", s(&self.store)];
        full.extend_from_slice(args);
        let err = fails(&full);
        for n in needles {
            assert!(
                err.contains(n),
                "error for {args:?} should mention {n:?}:\n{err}"
            );
        }
        assert_eq!(
            before,
            tree_state(&self.store),
            "store changed after failed ingest {args:?}"
        );
        let count = ok(&[
            "sql",
            "--store",
            s(&self.store),
            "--format",
            "csv",
            "SELECT count(*) AS n FROM filters",
        ]);
        assert!(
            count.contains("\n23\n"),
            "the committed model must stay intact: {count}"
        );
    }
}

fn write(p: &Path, bytes: &[u8]) {
    std::fs::write(p, bytes).unwrap();
}

/// A safetensors file with a hand-written header.
fn with_header(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(data);
    v
}

#[test]
fn missing_and_empty_files() {
    let c = Case::new();
    c.rejects(&[s(&c.path("nope.safetensors"))], &["nope.safetensors"]);
    let empty = c.path("empty.safetensors");
    write(&empty, b"");
    c.rejects(&[s(&empty)], &["empty.safetensors", "empty"]);
}

#[test]
fn truncated_corrupt_and_oversized_headers() {
    let c = Case::new();
    let good = c.path("t.safetensors");
    tricky_model(&good, 3);
    let bytes = std::fs::read(&good).unwrap();
    let trunc = c.path("truncated.safetensors");
    write(&trunc, &bytes[..bytes.len() - 100]);
    c.rejects(&[s(&trunc)], &["truncated.safetensors"]);
    let corrupt = c.path("corrupt.safetensors");
    write(&corrupt, &with_header("{\"a\": [1, 2", &[0u8; 16]));
    c.rejects(&[s(&corrupt)], &["corrupt.safetensors", "header"]);
    let huge = c.path("huge.safetensors");
    let mut v = (u64::MAX / 2).to_le_bytes().to_vec();
    v.extend_from_slice(b"{}");
    write(&huge, &v);
    c.rejects(&[s(&huge)], &["huge.safetensors", "header"]);
}

#[test]
fn unknown_dtype_and_wrong_rank() {
    let c = Case::new();
    let ints = c.path("ints.safetensors");
    write(
        &ints,
        &with_header(
            r#"{"conv.weight":{"dtype":"I8","shape":[2,1,3,3],"data_offsets":[0,18]}}"#,
            &[1u8; 18],
        ),
    );
    c.rejects(&[s(&ints)], &["ints.safetensors", "conv.weight", "I8"]);
    let weird = c.path("weird.safetensors");
    write(
        &weird,
        &with_header(
            r#"{"conv.weight":{"dtype":"Q4","shape":[2,1,3,3],"data_offsets":[0,18]}}"#,
            &[1u8; 18],
        ),
    );
    c.rejects(&[s(&weird)], &["weird.safetensors"]);
    let flat = c.path("flat.safetensors");
    write_st(
        &flat,
        &[
            ("fc.weight", vec![10, 9], vec![0.5; 90]),
            ("fc.bias", vec![10], vec![0.0; 10]),
        ],
    );
    c.rejects(&[s(&flat)], &["flat.safetensors", "3x3"]);
}

#[test]
fn non_finite_weights_need_a_flag() {
    let c = Case::new();
    let nan = c.path("nan.safetensors");
    let mut v = vec![0.25f32; 2 * 2 * 9];
    v[20] = f32::NAN;
    write_st(&nan, &[("block.conv.weight", vec![2, 2, 3, 3], v)]);
    c.rejects(
        &[s(&nan)],
        &["block.conv.weight", "non-finite", "--allow-nonfinite"],
    );
    let inf = c.path("inf.safetensors");
    let mut v = vec![0.25f32; 2 * 9];
    v[3] = f32::NEG_INFINITY;
    write_st(&inf, &[("conv.weight", vec![2, 1, 3, 3], v)]);
    c.rejects(&[s(&inf)], &["conv.weight", "non-finite"]);
    let big = c.path("big.safetensors");
    write_st(&big, &[("conv.weight", vec![1, 1, 3, 3], vec![1e6; 9])]);
    c.rejects(&[s(&big)], &["conv.weight", "float16"]);
    ok(&[
        "ingest",
        "--store",
        s(&c.store),
        s(&nan),
        "--allow-nonfinite",
    ]);
}

#[test]
fn card_that_fails_the_schema_or_vocabulary() {
    let c = Case::new();
    let m = c.path("m.safetensors");
    tricky_model(&m, 8);
    let card = c.path("card.toml");
    std::fs::write(&card, "name = \"x\"\ndepth_of_field = 3\n").unwrap();
    c.rejects(
        &[s(&m), "--card", s(&card)],
        &["card.toml", "depth_of_field"],
    );
    std::fs::write(&card, "name = 7\n").unwrap();
    c.rejects(&[s(&m), "--card", s(&card)], &["card.toml", "name"]);
    c.rejects(
        &[s(&m), "--task", "clasification"],
        &["clasification", "Classification"],
    );
}

#[test]
fn vocabulary_can_be_extended() {
    let c = Case::new();
    let m = c.path("m.safetensors");
    tricky_model(&m, 9);
    c.rejects(
        &[s(&m), "--task", "weather nowcasting"],
        &["weather nowcasting", "vocab add"],
    );
    ok(&[
        "vocab",
        "add",
        "--store",
        s(&c.store),
        "--kind",
        "task",
        "Weather Nowcasting",
    ]);
    ok(&[
        "ingest",
        "--store",
        s(&c.store),
        s(&m),
        "--task",
        "weather nowcasting",
    ]);
    let t = ok(&[
        "sql",
        "--store",
        s(&c.store),
        "--format",
        "csv",
        "SELECT task FROM models WHERE task IS NOT NULL",
    ]);
    assert!(t.contains("Weather Nowcasting"), "{t}");
}

#[test]
fn manifest_with_bad_rows_commits_the_good_ones() {
    let c = Case::new();
    let zoo = c.path("zoo");
    std::fs::create_dir(&zoo).unwrap();
    tricky_model(&zoo.join("a.safetensors"), 100);
    tricky_model(&zoo.join("b.safetensors"), 101);
    write(&zoo.join("broken.safetensors"), b"not a model");
    let outside = c.path("outside.safetensors");
    tricky_model(&outside, 102);
    let manifest = zoo.join("manifest.csv");
    std::fs::write(
        &manifest,
        "path,task\na.safetensors,classification\nbroken.safetensors,classification\n../outside.safetensors,classification\nb.safetensors,no-such-task\n",
    )
    .unwrap();
    let out = run(&["ingest", "--store", s(&c.store), "--manifest", s(&manifest)]);
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for n in [
        "broken.safetensors",
        "outside",
        "no-such-task",
        "1 committed",
        "3 failed",
    ] {
        assert!(
            text.contains(n),
            "bulk report should mention {n:?}:\n{text}"
        );
    }
    let models = ok(&[
        "sql",
        "--store",
        s(&c.store),
        "--format",
        "csv",
        "SELECT count(*) AS n FROM models",
    ]);
    assert!(models.contains("\n2\n"), "{models}");
}
