//! `filterdb import-cnnfilterdb`: the CNN Filter DB release (`dataset.h5`) into a store.
//! See `docs/import-cnnfilterdb.md`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::StoreArg;

/// `filterdb import-cnnfilterdb`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    store: StoreArg,
    /// The release file (`/filters` or `/filter`: N x 9 float32; `/meta`: the pandas table).
    dataset: PathBuf,
    /// A Parquet or CSV export of `/meta`, for files whose `/meta` pandas wrote in its
    /// default 'fixed' format (pickled: only Python reads it). Make it with
    /// `pd.read_hdf("dataset.h5", "meta").to_parquet("meta.parquet")`.
    #[arg(long, value_name = "FILE")]
    meta: Option<PathBuf>,
    /// Apply the paper notebook's label fix: every task containing "Segmentation" becomes
    /// "Segmentation" (kept in each model's extra.label_fixes and report).
    #[arg(long)]
    fix_labels: bool,
    /// Add task / visual-category values that are not in the vocabulary to this store's
    /// vocabulary (one `vocab add` version each) instead of stopping.
    #[arg(long)]
    add_vocab: bool,
    /// Store NaN / infinite weights instead of failing the model.
    #[arg(long)]
    allow_nonfinite: bool,
    /// Models whose filters are larger than this are buffered in a temporary file (in the
    /// store's _tmp/) instead of memory, e.g. 512M, 4G.
    #[arg(long, default_value = "1G", value_parser = filterdb_sql::parse_memory_size)]
    buffer: usize,
    /// Fail at once if another writer holds the store instead of waiting.
    #[arg(long)]
    no_wait: bool,
}

/// A progress bar in filters read: rows, bytes, rate, ETA. indicatif draws only when
/// stderr is a terminal, so piped output stays quiet.
struct Bar {
    bar: ProgressBar,
    models: AtomicU64,
    total_models: AtomicU64,
    bytes_per_filter: AtomicU64,
}

impl Bar {
    fn new() -> Bar {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} filters, \
                 {msg}, ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Bar {
            bar,
            models: AtomicU64::new(0),
            total_models: AtomicU64::new(0),
            bytes_per_filter: AtomicU64::new(36),
        }
    }

    fn message(&self) {
        let filters = self.bar.position() as f64;
        let mib = filters * self.bytes_per_filter.load(Ordering::Relaxed) as f64 / 1_048_576.0;
        let secs = self.bar.elapsed().as_secs_f64().max(1e-3);
        self.bar.set_message(format!(
            "{:.2}M filters/s, {mib:.0} MiB ({:.0} MiB/s), {}/{} models",
            filters / secs / 1e6,
            mib / secs,
            self.models.load(Ordering::Relaxed),
            self.total_models.load(Ordering::Relaxed)
        ));
    }
}

impl filterdb_ingest::ImportProgress for Bar {
    fn start(&self, models: u64, filters: u64, bytes_per_filter: u64) {
        self.total_models.store(models, Ordering::Relaxed);
        self.bytes_per_filter
            .store(bytes_per_filter, Ordering::Relaxed);
        self.bar.set_length(filters);
        self.message();
    }

    fn filters_read(&self, filters: u64) {
        self.bar.inc(filters);
        self.message();
    }

    fn model_done(&self) {
        self.models.fetch_add(1, Ordering::Relaxed);
        self.message();
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

pub fn run(a: ImportArgs) -> Result<ExitCode> {
    let store = filterdb_store::Store::open(&a.store.store)
        .with_context(|| format!("opening store {}", a.store.store.display()))?;
    let opts = filterdb_ingest::ImportOptions {
        meta: a.meta.clone(),
        fix_labels: a.fix_labels,
        add_vocab: a.add_vocab,
        allow_nonfinite: a.allow_nonfinite,
        buffer_bytes: a.buffer as u64,
        ..Default::default()
    };
    let mut writer = store.writer(!a.no_wait)?;
    let bar = Bar::new();
    let started = std::time::Instant::now();
    let report = filterdb_ingest::import_cnnfilterdb(&mut writer, &a.dataset, &opts, &bar)
        .with_context(|| format!("importing {}", a.dataset.display()))?;
    let secs = started.elapsed().as_secs_f64();
    println!("filters: {}", report.filters);
    println!("meta:    {}", report.meta_source);
    for (kind, value, version) in &report.vocab_added {
        println!("vocab    added {kind} {value:?} (version {version})");
    }
    for c in &report.committed {
        println!(
            "committed  model_id {:<5} -> model {} '{}' ({} layers, {} filters, version {})",
            c.release_model_id, c.model_id, c.name, c.n_layers, c.n_filters, c.version
        );
        for line in crate::report::warning_lines(&c.report) {
            println!("           {line}");
        }
    }
    for s in &report.skipped {
        println!(
            "skipped    model_id {:<5} already stored as model {} '{}'",
            s.release_model_id, s.model_id, s.name
        );
    }
    for f in &report.failed {
        eprintln!(
            "failed     model_id {:<5} {}: {}",
            f.release_model_id,
            f.name.as_deref().unwrap_or("?"),
            f.error
        );
    }
    if report.unreferenced_filters > 0 {
        println!(
            "note: {} rows of the filter array are in no valid meta row's range and were not imported",
            report.unreferenced_filters
        );
    }
    Ok(crate::report::print_totals(
        report.committed.len(),
        report.skipped.len(),
        "already stored",
        report.failed.len(),
        report.filters_committed(),
        secs,
    ))
}
