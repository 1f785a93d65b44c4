//! Helpers shared by the integration tests: running the binary, fixture stores.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The `filterdb` binary under test.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_filterdb"));
    c.env_remove("FILTERDB_STORE");
    c
}

/// Run `filterdb ARGS`, returning the output (whatever the exit code).
pub fn run(args: &[&str]) -> Output {
    bin()
        .args(args)
        .output()
        .expect("running the filterdb binary")
}

/// Run `filterdb ARGS` and require success; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "filterdb {args:?} failed with {}:\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run `filterdb ARGS` and require failure; returns stderr.
pub fn fails(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        !out.status.success(),
        "filterdb {args:?} should have failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A tokio runtime and a session over the latest version of `store`, as the CLI builds it.
pub fn store_ctx(store: &Path) -> (tokio::runtime::Runtime, datafusion::prelude::SessionContext) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let ctx = rt.block_on(async {
        let st = filterdb_store::Store::open(store).expect("open store");
        filterdb_sql::store_session(&st, None, &Default::default())
            .await
            .expect("session")
    });
    (rt, ctx)
}

/// Run `sql` over the latest version of `store` in-process; panics on any error.
pub fn query(store: &Path, sql: &str) -> Vec<arrow::array::RecordBatch> {
    let (rt, ctx) = store_ctx(store);
    rt.block_on(async {
        ctx.sql(sql)
            .await
            .expect("plan")
            .collect()
            .await
            .expect("run")
    })
}

/// A path as &str (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 test path")
}

/// The repository's root, from the `CARGO_MANIFEST_DIR` cargo gives the test process
/// (`crates/cli`). The value compiled in with `env!` is that of the checkout the binary
/// was built in, which one target directory shared by several checkouts (a CI clone
/// and a working copy) does not rebuild for: tests then read another checkout's files.
pub fn repo_root() -> PathBuf {
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    crate_dir.join("../..")
}

/// A folder for the fixtures built once per test run, `filterdb-tests-<pid>` in the
/// system's temporary folder. Fixtures live in statics, which are never dropped, so
/// their `TempDir`s never delete themselves; instead, the first call of each run removes
/// the folders of earlier runs whose process is gone (checked in `/proc`; where there
/// is no `/proc`, nothing is removed). Every run used to leave ~40 MB behind.
pub fn run_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = std::env::temp_dir();
        let proc_fs = Path::new("/proc/self").exists();
        if proc_fs && let Ok(entries) = std::fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let name = e.file_name();
                let Some(pid) = name
                    .to_str()
                    .and_then(|n| n.strip_prefix("filterdb-tests-"))
                    .and_then(|p| p.parse::<u32>().ok())
                else {
                    continue;
                };
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = tmp.join(format!("filterdb-tests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the test run's folder");
        dir
    })
}

/// A temporary folder for a fixture kept for the whole run (see [`run_dir`]).
pub fn fixture_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(run_dir()).expect("tempdir")
}

/// A small deterministic zoo (safetensors + cards + manifest.csv), generated once per test run.
pub fn zoo() -> &'static Path {
    static ZOO: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, p) = ZOO.get_or_init(|| {
        let dir = fixture_dir();
        let p = dir.path().join("zoo");
        ok(&[
            "gen",
            s(&p),
            "--models",
            "6",
            "--seed",
            "7",
            "--max-channels",
            "32",
            "--max-layers",
            "6",
        ]);
        (dir, p)
    });
    p
}

/// A store of `precision` holding [`zoo`], ingested on one thread (largest file first,
/// so the ids are deterministic).
pub fn fixture_store(precision: &str) -> &'static Path {
    static F16: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    static F32: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let cell = if precision == "f16" { &F16 } else { &F32 };
    let (_, p) = cell.get_or_init(|| {
        let dir = fixture_dir();
        let p = dir.path().join("store");
        ok(&["init", s(&p), "--precision", precision]);
        ok(&[
            "ingest",
            "--store",
            s(&p),
            "--manifest",
            s(&zoo().join("manifest.csv")),
            "--threads",
            "1",
        ]);
        (dir, p)
    });
    p
}

/// Every file under `root`, relative, with its size and modification time (to prove a store unchanged).
pub fn tree_state(root: &Path) -> Vec<(String, u64)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, u64)>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p
                    .strip_prefix(root)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned();
                if rel == "_lock" {
                    continue;
                }
                out.push((rel, e.metadata().map(|m| m.len()).unwrap_or(0)));
            }
        }
    }
    let mut v = Vec::new();
    walk(root, root, &mut v);
    v.sort();
    v
}
