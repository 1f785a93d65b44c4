//! Full-table scans through SQL (`filterdb_sql::store_session`), in filters/s:
//!
//! - `scan/sum9_columns/<store>`: `count(*)` and the sum of each of the 9 weight columns
//!   as f64 over the physical `filter_columns` table;
//! - `scan/weights_list/<store>`: `count(*), sum(weights[5])` through the `filters` view
//!   (builds the FixedSizeList per row with `make_weights`).
//!
//! Stores: `FILTERDB_SCAN_STORE=/path/to/store` scans an existing store; otherwise an f16
//! and an f32 store are built in a tempdir from `FILTERDB_SCAN_COPIES` (default 4) copies
//! of the bench model (~1M filters each). Session planning is inside the timed part (as
//! for a CLI query); store opening and session creation are not.
//!
//! ```text
//! CARGO_TARGET_DIR=/var/tmp/filterdb-target-release cargo bench -p filterdb-benches --bench scan
//! FILTERDB_SCAN_STORE=/var/tmp/fdb-bench/store-f16 cargo bench -p filterdb-benches --bench scan
//! ```

#[path = "common.rs"]
mod common;

use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{Float64Type, Int64Type};
use datafusion::prelude::SessionContext;
use filterdb_store::{CommitMode, Precision, StageOptions, Store};

/// `SELECT count(*), sum(CAST(w0 AS DOUBLE)), ..., sum(CAST(w8 AS DOUBLE)) FROM filter_columns`.
pub fn sum9_sql() -> String {
    let sums: Vec<String> = (0..9)
        .map(|j| format!("sum(CAST(w{j} AS DOUBLE)) AS s{j}"))
        .collect();
    format!(
        "SELECT count(*) AS n, {} FROM filter_columns",
        sums.join(", ")
    )
}

const WEIGHTS_SQL: &str =
    "SELECT count(*) AS n, sum(CAST(weights[5] AS DOUBLE)) AS s4 FROM filters";

fn build_store(
    root: PathBuf,
    precision: Precision,
    model: &filterdb_ingest::GenModel,
    copies: usize,
) {
    let store = Store::init(&root, precision).expect("init");
    let mut w = store.writer(false).expect("writer");
    let mut input = common::model_input(model);
    let base = input.meta.name.clone();
    for i in 0..copies {
        input.meta.name = format!("{base}_copy{i}");
        input.meta.source_sha256 = format!("{i:064}");
        let staged = w.stage(&input, &StageOptions::default()).expect("stage");
        w.commit(staged, CommitMode::Add).expect("commit");
    }
}

async fn run(ctx: &SessionContext, sql: &str) -> (i64, f64) {
    let batches = ctx
        .sql(sql)
        .await
        .expect("plan")
        .collect()
        .await
        .expect("run");
    let b = &batches[0];
    let n = b.column(0).as_primitive::<Int64Type>().value(0);
    let mut s = 0.0;
    for c in 1..b.num_columns() {
        let col = b.column(c).as_primitive::<Float64Type>();
        if !col.is_null(0) {
            s += col.value(0);
        }
    }
    (n, s)
}

fn bench_scan(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _keep; // tempdir of generated stores, deleted at the end
    let stores: Vec<(String, Store)> = match std::env::var_os("FILTERDB_SCAN_STORE") {
        Some(p) => {
            _keep = None;
            let s = Store::open(&p).expect("open FILTERDB_SCAN_STORE");
            vec![(format!("{}", s.precision()), s)]
        }
        None => {
            let dir = tempfile::Builder::new()
                .prefix("filterdb-bench-scan")
                .tempdir()
                .expect("tempdir");
            let model = common::bench_model();
            let copies = common::env_usize("FILTERDB_SCAN_COPIES", 4);
            let mut v = Vec::new();
            for p in [Precision::F16, Precision::F32] {
                let root = dir.path().join(format!("store-{p}"));
                build_store(root.clone(), p, &model, copies);
                v.push((p.to_string(), Store::open(&root).expect("open")));
            }
            _keep = Some(dir);
            v
        }
    };

    let mut g = c.benchmark_group("scan");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    for (label, store) in &stores {
        let n = store.snapshot(None).expect("snapshot").n_filters();
        let ctx = rt
            .block_on(filterdb_sql::store_session(
                store,
                None,
                &Default::default(),
            ))
            .expect("session");
        let (rows, sum) = rt.block_on(run(&ctx, &sum9_sql()));
        assert_eq!(rows as u64, n);
        eprintln!("store {label}: {n} filters; sum of all weights {sum:.9e}");
        g.throughput(Throughput::Elements(n));
        g.bench_function(format!("sum9_columns/{label}"), |b| {
            b.iter(|| rt.block_on(run(&ctx, &sum9_sql())))
        });
        g.bench_function(format!("weights_list/{label}"), |b| {
            b.iter(|| rt.block_on(run(&ctx, WEIGHTS_SQL)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_scan);
criterion_main!(benches);
