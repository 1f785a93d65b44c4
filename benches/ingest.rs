//! Ingest throughput (filters/s) of one synthetic model (~1M 3x3 filters, f32 OIHW):
//!
//! - `ingest/stage_commit/{f16,f32}`: `StoreWriter::stage` + `commit` of an in-memory
//!   `ModelInput` into a fresh store (convert, Parquet encode, fsync, rename, log);
//! - `ingest/ingest_one/{f16,f32}`: `filterdb_ingest::ingest_one` of the same model as an
//!   f32 safetensors file (page-cached): adds mmap + sha256 + header parse + card + normalise.
//!
//! Each iteration gets a fresh store (set up outside the timed part).
//!
//! ```text
//! CARGO_TARGET_DIR=/var/tmp/filterdb-target-release cargo bench -p filterdb-benches --bench ingest
//! FILTERDB_BENCH_LAYERS=32 FILTERDB_BENCH_CHANNELS=512 cargo bench ... --bench ingest   # ~3.5M filters
//! ```

#[path = "common.rs"]
mod common;

use std::time::Duration;

use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use filterdb_ingest::{IngestOptions, IngestOutcome, ModelOverrides, ingest_one};
use filterdb_store::{CommitMode, Precision, StageOptions, Store, StoreWriter};

fn fresh_store(precision: Precision) -> (tempfile::TempDir, StoreWriter) {
    let dir = tempfile::Builder::new()
        .prefix("filterdb-bench-store")
        .tempdir()
        .expect("tempdir");
    let store = Store::init(dir.path().join("store"), precision).expect("init store");
    let writer = store.writer(false).expect("writer");
    (dir, writer)
}

fn bench_ingest(c: &mut Criterion) {
    let model = common::bench_model();
    let input = common::model_input(&model);
    let n = model.n_filters;

    let src = tempfile::Builder::new()
        .prefix("filterdb-bench-src")
        .tempdir()
        .expect("tempdir");
    let file = src.path().join("bench_model.safetensors");
    common::write_safetensors(&model, &file);
    let card = file.with_extension("toml");

    let mut g = c.benchmark_group("ingest");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(n));

    for precision in [Precision::F16, Precision::F32] {
        g.bench_function(format!("stage_commit/{precision}"), |b| {
            b.iter_batched(
                || fresh_store(precision),
                |(dir, mut writer)| {
                    let staged = writer
                        .stage(&input, &StageOptions::default())
                        .expect("stage");
                    writer.commit(staged, CommitMode::Add).expect("commit");
                    (dir, writer) // dropped (store deleted) outside the timed part
                },
                BatchSize::PerIteration,
            );
        });
        g.bench_function(format!("ingest_one/{precision}"), |b| {
            b.iter_batched(
                || fresh_store(precision),
                |(dir, mut writer)| {
                    let out = ingest_one(
                        &mut writer,
                        &file,
                        Some(&card),
                        &ModelOverrides::default(),
                        &IngestOptions::default(),
                    )
                    .expect("ingest_one");
                    assert!(matches!(out, IngestOutcome::Committed { .. }));
                    (dir, writer)
                },
                BatchSize::PerIteration,
            );
        });
    }
    g.finish();
}

criterion_group!(benches, bench_ingest);
criterion_main!(benches);
