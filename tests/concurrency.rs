//! Two writers and a reader on one store at once: the second writer waits for the lock
//! (or fails cleanly with --no-wait), readers always see whole models.

use std::process::Stdio;

use crate::common::{bin, ok, run, s, zoo};

#[test]
fn concurrent_ingests_and_queries() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    ok(&["init", s(&store)]);
    let manifest = zoo().join("manifest.csv");
    let spawn = || {
        bin()
            .args([
                "ingest",
                "--store",
                s(&store),
                "--manifest",
                s(&manifest),
                "--threads",
                "1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ingest")
    };
    let a = spawn();
    let b = spawn();
    // Query while they run: every read must succeed and see consistent counts.
    for _ in 0..5 {
        let out = run(&[
            "sql",
            "--store",
            s(&store),
            "--format",
            "csv",
            "SELECT (SELECT count(*) FROM models) AS m, (SELECT count(DISTINCT model_id) FROM filters) AS f",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let row = text.lines().nth(1).expect("a row");
        let (m, f) = row.split_once(',').unwrap();
        assert_eq!(m, f, "models and filters disagree: {row}");
    }
    let ra = a.wait_with_output().unwrap();
    let rb = b.wait_with_output().unwrap();
    assert!(
        ra.status.success(),
        "{}",
        String::from_utf8_lossy(&ra.stderr)
    );
    assert!(
        rb.status.success(),
        "{}",
        String::from_utf8_lossy(&rb.stderr)
    );
    let both = format!(
        "{}{}",
        String::from_utf8_lossy(&ra.stdout),
        String::from_utf8_lossy(&rb.stdout)
    );
    assert!(
        both.contains("6 committed") && both.contains("6 already"),
        "{both}"
    );
    let n = ok(&[
        "sql",
        "--store",
        s(&store),
        "--format",
        "csv",
        "SELECT count(*) AS n, count(DISTINCT name) AS d FROM models",
    ]);
    assert!(n.contains("\n6,6\n"), "each model exactly once: {n}");
}

#[test]
fn no_wait_fails_cleanly_while_locked() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    ok(&["init", s(&store)]);
    let st = filterdb_store::Store::open(&store).unwrap();
    let _held = st.writer(false).expect("first writer");
    let out = run(&[
        "ingest",
        "--store",
        s(&store),
        "--manifest",
        s(&zoo().join("manifest.csv")),
        "--no-wait",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("locked"), "{err}");
}
