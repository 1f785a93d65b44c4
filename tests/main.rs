//! filterdb's integration tests: one binary (see `crates/cli/Cargo.toml`).
//!
//! - `slt`: every `tests/slt/**/*.slt` file through sqllogictest, over fixture stores;
//! - `cli`: the `filterdb` binary end to end (init, ingest, sql, export, info, vacuum);
//! - `bad_input`: each malformed input gives a clear error and leaves the store unchanged;
//! - `crash`: `kill -9` during ingest, repeated, never corrupts a store;
//! - `concurrency`: two writers and readers on one store;
//! - `report`: the validation report of every ingest (warning codes, `--allow-empty`);
//! - `scan`: filterdb's scan of the filter files (pruning by model, statistics and join
//!   filters; other Parquet layouts).
//!
//! `FILTERDB_SLT_COMPLETE=1 cargo test --test integration slt` rewrites the `.slt`
//! goldens (check every changed value by hand before committing).

mod analyze;
mod bad_input;
mod cli;
mod common;
mod concurrency;
mod crash;
mod import_h5;
mod npz;
mod report;
mod scan;
mod slt;
