//! Crash safety: a real `filterdb ingest` child killed with SIGKILL at random moments,
//! repeatedly. After every kill the store opens, every model the log shows is complete
//! (its filter count matches), no model is half visible, and `vacuum` removes the debris.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rand::{Rng, SeedableRng};

use crate::common::{bin, ok, s};

fn big_zoo(dir: &Path) -> std::path::PathBuf {
    let z = dir.join("zoo");
    ok(&[
        "gen",
        s(&z),
        "--models",
        "12",
        "--seed",
        "11",
        "--max-channels",
        "96",
        "--max-layers",
        "10",
    ]);
    z.join("manifest.csv")
}

/// Per model: filters in the log vs rows actually readable.
fn check_consistent(store: &Path) -> usize {
    let st = filterdb_store::Store::open(store).expect("store opens after a crash");
    let snap = st.snapshot(None).expect("log readable after a crash");
    let csv = ok(&[
        "sql",
        "--store",
        s(store),
        "--format",
        "csv",
        "SELECT model_id, count(*) AS n FROM filters GROUP BY model_id ORDER BY model_id",
    ]);
    let counted: BTreeMap<i64, u64> = csv
        .lines()
        .skip(1)
        .map(|l| {
            let (a, b) = l.split_once(',').expect("two columns");
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    let logged: BTreeMap<i64, u64> = snap
        .models
        .values()
        .map(|m| (m.model_id, m.n_filters))
        .collect();
    assert_eq!(
        counted, logged,
        "visible filters differ from the committed models"
    );
    let models = ok(&[
        "sql",
        "--store",
        s(store),
        "--format",
        "csv",
        "SELECT count(*) AS n FROM models",
    ]);
    assert!(
        models.contains(&format!("\n{}\n", snap.models.len())),
        "{models}"
    );
    snap.models.len()
}

#[test]
fn kill_9_during_ingest_never_corrupts() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = big_zoo(dir.path());
    let store = dir.path().join("store");
    ok(&["init", s(&store)]);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2022);
    let mut last = 0;
    for round in 0..8 {
        let mut child = bin()
            .args([
                "ingest",
                "--store",
                s(&store),
                "--manifest",
                s(&manifest),
                "--threads",
                "2",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn ingest");
        std::thread::sleep(Duration::from_millis(rng.random_range(20..700)));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let n = check_consistent(&store);
        assert!(
            n >= last,
            "round {round}: committed models disappeared ({last} -> {n})"
        );
        last = n;
    }
    ok(&["vacuum", "--store", s(&store)]);
    assert!(
        std::fs::read_dir(store.join("_tmp"))
            .unwrap()
            .next()
            .is_none(),
        "vacuum must empty the staging area"
    );
    check_consistent(&store);
    // Finishing the job afterwards ingests exactly what is missing.
    ok(&["ingest", "--store", s(&store), "--manifest", s(&manifest)]);
    assert_eq!(check_consistent(&store), 12);
}
