//! The subcommands. Each is a thin layer over the libraries; errors carry context and
//! become a non-zero exit in `main`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use filterdb_store::{Precision, Store};

use crate::output::{OutputFormat, print_dataframe};
use crate::{QueryArgs, StoreArg};

/// Blocking threads of the runtime: the object store's file reads (the `models` and
/// `layers` tables' footers at planning, a file per model), which are short. Unbounded
/// (tokio's 512), reading them 32 at a time started a thread for each, ~35 for a
/// 51-model store, and each new thread's first allocation had the kernel zero a 2 MiB
/// page: an empty export took 52 ms instead of 40. Scans read on threads of their own
/// (`filterdb_sql`'s scan), never these.
const BLOCKING_THREADS: usize = 8;

/// The runtime every command runs its queries on.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(BLOCKING_THREADS)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn open(store: &Path) -> Result<Store> {
    Store::open(store).with_context(|| format!("opening store {}", store.display()))
}

fn session_options(q: &QueryArgs) -> filterdb_sql::SessionOptions {
    filterdb_sql::SessionOptions {
        memory_limit: q.memory_limit,
        target_partitions: q.threads,
        batch_size: None,
    }
}

/// `filterdb init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory of the new store (default: $FILTERDB_STORE or ./filterdb-store).
    #[arg(env = "FILTERDB_STORE", default_value = "./filterdb-store")]
    store: PathBuf,
    /// Precision of stored weights: f16 halves I/O (as the paper analysed); f32 keeps
    /// f32 sources bit-exact.
    #[arg(long, default_value = "f16")]
    precision: Precision,
}

pub fn init(a: InitArgs) -> Result<ExitCode> {
    let store = Store::init(&a.store, a.precision)?;
    println!(
        "created {} store {} (version 0)",
        store.precision(),
        store.root().display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `filterdb sql`.
#[derive(Debug, Args)]
pub struct SqlArgs {
    #[command(flatten)]
    store: StoreArg,
    #[command(flatten)]
    query: QueryArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: OutputFormat,
    /// The query; without it an interactive shell opens.
    sql: Option<String>,
}

pub fn sql(a: SqlArgs) -> Result<ExitCode> {
    let store = open(&a.store.store)?;
    runtime()?.block_on(async {
        let ctx = filterdb_sql::store_session(&store, a.query.version, &session_options(&a.query))
            .await?;
        match a.sql {
            Some(q) => {
                let df = ctx.sql(&q).await?;
                print_dataframe(df, a.format).await?;
            }
            None => crate::shell::run(&ctx, a.format).await?,
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `filterdb export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    store: StoreArg,
    #[command(flatten)]
    query: QueryArgs,
    /// The query whose result is written.
    #[arg(long = "query", value_name = "SQL")]
    query_sql: Option<String>,
    /// parquet, arrow, npy, csv or json.
    #[arg(long, default_value = "parquet")]
    format: filterdb_sql::ExportFormat,
    /// Output file (for npy also `<stem>.parquet` with the non-weight columns).
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
}

pub fn export(a: ExportArgs) -> Result<ExitCode> {
    let Some(query) = a.query_sql else {
        bail!("export needs --query SQL");
    };
    let store = open(&a.store.store)?;
    runtime()?.block_on(async {
        let ctx = filterdb_sql::store_session(&store, a.query.version, &session_options(&a.query))
            .await?;
        let started = std::time::Instant::now();
        let summary = filterdb_sql::export_query(&ctx, &query, a.format, &a.output)
            .await
            .with_context(|| format!("exporting to {}", a.output.display()))?;
        let files: Vec<String> = summary
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect();
        eprintln!(
            "wrote {} rows to {} in {:.2} s",
            summary.rows,
            files.join(" and "),
            started.elapsed().as_secs_f64()
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// `filterdb info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    #[command(flatten)]
    store: StoreArg,
    /// Describe the store as of this version.
    #[arg(long)]
    version: Option<u64>,
    /// Show one model: its row and validation report.
    #[arg(long)]
    model: Option<String>,
    /// List every version.
    #[arg(long)]
    history: bool,
}

fn human_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// The lines `info --model` prints for a stored `report` value: the structured report,
/// or the free-text lines of stores written before it (a JSON array).
fn info_report_lines(stored: &str) -> Vec<String> {
    let legacy = stored.trim_start().starts_with('[');
    match filterdb_store::ValidationReport::from_json(stored) {
        Ok(r) if legacy => {
            let mut lines = r.notes;
            if lines.is_empty() {
                lines.push("(nothing to report)".to_owned());
            }
            lines.push("(free-text report of a store written before structured reports)".into());
            lines
        }
        Ok(r) => {
            let mut lines = crate::report::report_lines(&r, 20, true);
            if r.skipped.is_empty() && r.warnings.is_empty() {
                lines.push("no warnings, nothing skipped".to_owned());
            }
            lines
        }
        Err(_) => vec![stored.to_owned()],
    }
}

pub fn info(a: InfoArgs) -> Result<ExitCode> {
    let store = open(&a.store.store)?;
    let snap = store.snapshot(a.version)?;
    if let Some(name) = &a.model {
        let Some(entry) = snap.find_by_name(name) else {
            bail!(
                "store {} has no model named {name:?} at version {}",
                store.root().display(),
                snap.version
            );
        };
        let id = entry.model_id;
        return runtime()?.block_on(async {
            let ctx = filterdb_sql::store_session(&store, Some(snap.version), &Default::default()).await?;
            let df = ctx
                .sql(&format!(
                    "SELECT model_id, name, architecture, task, training_dataset, pretraining_dataset, visual_category, \
                     source_format, source_path, source_sha256, depth, n_layers, n_filters, total_filters, share_3x3, \
                     kernel_shapes, extra, ingested_at FROM models WHERE model_id = {id}"
                ))
                .await?;
            let batches = df.collect().await?;
            for b in &batches {
                for row in 0..b.num_rows() {
                    for (f, c) in b.schema().fields().iter().zip(b.columns()) {
                        let v = arrow::util::display::array_value_to_string(c, row)?;
                        println!("{:>20}: {v}", f.name());
                    }
                }
            }
            let rep = ctx.sql(&format!("SELECT report FROM models WHERE model_id = {id}")).await?.collect().await?;
            println!("{:>20}:", "report");
            for b in &rep {
                for row in 0..b.num_rows() {
                    let v = arrow::util::display::array_value_to_string(b.column(0), row)?;
                    for l in info_report_lines(&v) {
                        println!("{:>20}  {l}", "");
                    }
                }
            }
            let layers = ctx
                .sql(&format!(
                    "SELECT layer_idx, layer_name, conv_depth, round(conv_depth_norm, 3) AS conv_depth_norm, depth_rule, \
                     out_channels, in_channels, groups, n_filters, source_dtype, max_abs FROM layers \
                     WHERE model_id = {id} ORDER BY layer_idx"
                ))
                .await?;
            print_dataframe(layers, OutputFormat::Table).await?;
            Ok(ExitCode::SUCCESS)
        });
    }
    let history = store.history()?;
    println!("store      {}", store.root().display());
    println!("precision  {}", store.precision());
    println!(
        "version    {}{}",
        snap.version,
        if a.version.is_some() {
            " (pinned)"
        } else {
            " (latest)"
        }
    );
    println!("models     {}", snap.models.len());
    println!("layers     {}", snap.n_layers());
    println!("filters    {}", snap.n_filters());
    println!(
        "on disk    {} in the visible models' files",
        human_bytes(snap.bytes())
    );
    for (label, key) in [("task", 0), ("visual category", 1)] {
        let mut groups: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
        for m in snap.models.values() {
            let k = if key == 0 {
                &m.task
            } else {
                &m.visual_category
            };
            let g = groups
                .entry(k.clone().unwrap_or_else(|| "(unknown)".into()))
                .or_default();
            g.0 += 1;
            g.1 += m.n_filters;
        }
        if groups.is_empty() {
            continue;
        }
        println!("\nper {label}:");
        println!("  {:<32} {:>7} {:>14}", label, "models", "filters");
        for (k, (m, f)) in groups {
            println!("  {k:<32} {m:>7} {f:>14}");
        }
    }
    let shown: Vec<_> = if a.history {
        history.iter().collect()
    } else {
        history.iter().rev().take(5).rev().collect()
    };
    println!(
        "\n{}:",
        if a.history {
            "history"
        } else {
            "recent versions"
        }
    );
    for c in shown {
        println!("  v{:<6} {:<10} {}", c.version, c.operation, c.detail);
    }
    Ok(ExitCode::SUCCESS)
}

/// `filterdb vacuum`.
#[derive(Debug, Args)]
pub struct VacuumArgs {
    #[command(flatten)]
    store: StoreArg,
    /// Also delete files only older versions need (those versions become unreadable).
    #[arg(long)]
    prune_history: bool,
}

pub fn vacuum(a: VacuumArgs) -> Result<ExitCode> {
    let store = open(&a.store.store)?;
    let mut w = store.writer(true)?;
    let r = w.vacuum(a.prune_history)?;
    println!(
        "removed {} staging leftovers and {} unreferenced files ({}){}",
        r.staging,
        r.files,
        human_bytes(r.bytes),
        r.version
            .map(|v| format!("; recorded as version {v}"))
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

/// `filterdb ingest`.
#[derive(Debug, Args)]
pub struct IngestArgs {
    #[command(flatten)]
    store: StoreArg,
    /// The model file: .safetensors, .onnx (depth from the graph), .npz or .npy (NumPy).
    model: Option<PathBuf>,
    /// Bulk ingest: a .csv or .jsonl manifest (column `path` plus card fields).
    #[arg(long, conflicts_with = "model")]
    manifest: Option<PathBuf>,
    /// The model card (TOML).
    #[arg(long, requires = "model")]
    card: Option<PathBuf>,
    /// Model name (default: the file stem).
    #[arg(long)]
    name: Option<String>,
    /// Architecture family, e.g. ResNet-50.
    #[arg(long)]
    architecture: Option<String>,
    /// Task (see `filterdb vocab list`).
    #[arg(long)]
    task: Option<String>,
    /// Training dataset(s).
    #[arg(long)]
    training_dataset: Option<String>,
    /// Pretraining dataset(s).
    #[arg(long)]
    pretraining_dataset: Option<String>,
    /// Visual category of the training data (see `filterdb vocab list`).
    #[arg(long)]
    visual_category: Option<String>,
    /// Layout of rank-4 weights: oihw (PyTorch, ONNX) or hwio (Keras, TensorFlow).
    #[arg(long)]
    layout: Option<String>,
    /// Replace a stored model of the same name in one commit.
    #[arg(long)]
    replace: bool,
    /// Store NaN / infinite weights instead of rejecting the model (the report counts
    /// them per layer: warning non_finite).
    #[arg(long)]
    allow_nonfinite: bool,
    /// Store a model without 3x3 convolutions (or without any) with its meta-parameters
    /// and kernel counts and no filters, instead of rejecting it (warning
    /// no_3x3_kernels / no_convolutions). Applies to every row of a manifest.
    #[arg(long)]
    allow_empty: bool,
    /// Worker threads for --manifest (default: the number of cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Fail at once if another writer holds the store instead of waiting.
    #[arg(long)]
    no_wait: bool,
}

fn overrides(a: &IngestArgs) -> Result<filterdb_ingest::ModelOverrides> {
    let layout = match &a.layout {
        Some(l) => Some(filterdb_ingest::card::parse_layout(l, "--layout")?),
        None => None,
    };
    Ok(filterdb_ingest::ModelOverrides {
        name: a.name.clone(),
        architecture: a.architecture.clone(),
        task: a.task.clone(),
        training_dataset: a.training_dataset.clone(),
        pretraining_dataset: a.pretraining_dataset.clone(),
        visual_category: a.visual_category.clone(),
        layout,
        ..Default::default()
    })
}

pub fn ingest(a: IngestArgs) -> Result<ExitCode> {
    let store = open(&a.store.store)?;
    let opts = filterdb_ingest::IngestOptions {
        allow_nonfinite: a.allow_nonfinite,
        replace: a.replace,
        allow_empty: a.allow_empty,
    };
    let ov = overrides(&a)?;
    if let Some(manifest) = &a.manifest {
        let m = filterdb_ingest::read_manifest(manifest)?;
        let mut writer = store.writer(!a.no_wait)?;
        let progress = crate::progress::BarProgress::new();
        let started = std::time::Instant::now();
        let mut report =
            filterdb_ingest::ingest_manifest(&mut writer, &m.rows, &opts, a.threads, &progress)?;
        report.add_manifest_errors(&m.errors);
        return Ok(print_bulk(&report, started.elapsed().as_secs_f64()));
    }
    let Some(model) = &a.model else {
        bail!("ingest needs a model file or --manifest FILE");
    };
    let mut writer = store.writer(!a.no_wait)?;
    let started = std::time::Instant::now();
    let outcome = filterdb_ingest::ingest_one(&mut writer, model, a.card.as_deref(), &ov, &opts)
        .with_context(|| format!("ingesting {}", model.display()))?;
    match outcome {
        filterdb_ingest::IngestOutcome::Committed {
            version,
            model_id,
            name,
            n_layers,
            n_filters,
            report,
        } => {
            println!(
                "committed '{name}' as model {model_id}: {n_layers} layers, {n_filters} filters, version {version} ({:.2} s)",
                started.elapsed().as_secs_f64()
            );
            for line in crate::report::report_lines(&report, 5, false) {
                println!("  {line}");
            }
        }
        filterdb_ingest::IngestOutcome::AlreadyPresent { model_id, name } => {
            println!(
                "already stored: {} has the same bytes as model {model_id} '{name}'; nothing to do",
                model.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a bulk ingest's rows (committed with their warnings, skipped, failed) and a
/// summary line; the exit code is non-zero if any row failed.
fn print_bulk(report: &filterdb_ingest::BulkReport, secs: f64) -> ExitCode {
    for c in &report.committed {
        println!(
            "committed  line {:<5} {} -> model {} '{}' ({} layers, {} filters, version {})",
            c.line,
            c.path.display(),
            c.model_id,
            c.name,
            c.n_layers,
            c.n_filters,
            c.version
        );
        // Warnings only: the full report is one `info --model` away.
        for line in crate::report::warning_lines(&c.report) {
            println!("           {line}");
        }
    }
    for sk in &report.skipped_present {
        println!(
            "skipped    line {:<5} {}: {}",
            sk.line,
            sk.path.display(),
            sk.reason
        );
    }
    for f in &report.failed {
        eprintln!(
            "failed     line {:<5} {}: {}",
            f.line,
            f.path.display(),
            f.error
        );
    }
    crate::report::print_totals(
        report.committed.len(),
        report.skipped_present.len(),
        "already stored or repeated",
        report.failed.len(),
        report.filters_committed(),
        secs,
    )
}

/// `filterdb gen`.
#[derive(Debug, Args)]
pub struct GenArgs {
    /// Output folder for the zoo (safetensors, cards, manifest.csv).
    #[arg(required_unless_present = "store", conflicts_with = "store")]
    out: Option<PathBuf>,
    /// Ingest the zoo straight into this store (made by `filterdb init`) instead of
    /// writing files: the same models, bytes and names as `gen OUT` followed by
    /// `ingest --manifest OUT/manifest.csv`, without the intermediate files. A rerun
    /// commits nothing new.
    #[arg(long)]
    store: Option<PathBuf>,
    /// With --store: worker threads (default: the number of cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// With --store: fail at once if another writer holds the store instead of waiting.
    #[arg(long)]
    no_wait: bool,
    /// Number of models.
    #[arg(long, default_value_t = 10)]
    models: usize,
    /// Seed: the same seed and options give the same bytes.
    #[arg(long, default_value_t = 20_220_607)]
    seed: u64,
    /// Fewest 3x3 layers per model.
    #[arg(long, default_value_t = 10)]
    min_layers: usize,
    /// Most 3x3 layers per model.
    #[arg(long, default_value_t = 50)]
    max_layers: usize,
    /// Widest layer (channels).
    #[arg(long, default_value_t = 512)]
    max_channels: usize,
}

pub fn gen_zoo(a: GenArgs) -> Result<ExitCode> {
    let defaults = filterdb_ingest::GenOptions::default();
    let opts = filterdb_ingest::GenOptions {
        models: a.models,
        seed: a.seed,
        min_layers: a.min_layers.min(a.max_layers),
        max_layers: a.max_layers,
        max_channels: a.max_channels,
        ..defaults
    };
    let started = std::time::Instant::now();
    if let Some(store) = &a.store {
        let generator = filterdb_ingest::Generator::new(&opts)?;
        let store = open(store)?;
        let mut writer = store.writer(!a.no_wait)?;
        let progress = crate::progress::BarProgress::new();
        let report = filterdb_ingest::ingest_generated(
            &mut writer,
            &generator,
            &filterdb_ingest::IngestOptions::default(),
            a.threads,
            &progress,
        )?;
        return Ok(print_bulk(&report, started.elapsed().as_secs_f64()));
    }
    let out = a.out.as_deref().expect("clap requires OUT without --store");
    let s = filterdb_ingest::generate_zoo(out, &opts)?;
    println!(
        "wrote {} models ({} layers, {} filters, {}) to {} in {:.2} s; manifest: {}",
        s.models,
        s.layers,
        s.filters,
        human_bytes(s.bytes),
        out.display(),
        started.elapsed().as_secs_f64(),
        out.join("manifest.csv").display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `filterdb vocab`.
#[derive(Debug, Args)]
pub struct VocabArgs {
    #[command(subcommand)]
    action: VocabAction,
}

#[derive(Debug, clap::Subcommand)]
enum VocabAction {
    /// Add a value to the store's vocabulary.
    Add {
        #[command(flatten)]
        store: StoreArg,
        /// task or visual_category.
        #[arg(long)]
        kind: String,
        /// The canonical spelling to add.
        value: String,
    },
    /// List the built-in and the store's added values.
    List {
        #[command(flatten)]
        store: StoreArg,
        /// task or visual_category (default: both).
        #[arg(long)]
        kind: Option<String>,
    },
}

pub fn vocab(a: VocabArgs) -> Result<ExitCode> {
    match a.action {
        VocabAction::Add { store, kind, value } => {
            let kind = kind.replace('-', "_");
            let store = open(&store.store)?;
            let mut w = store.writer(true)?;
            let extra = w.snapshot().vocab_extra(&kind);
            let value = filterdb_ingest::vocab::check_new_value(&kind, &value, &extra)?;
            let v = w.commit_vocab_add(&kind, &value)?;
            println!("added {kind} {value:?} (version {v})");
        }
        VocabAction::List { store, kind } => {
            let snap = Store::open(&store.store)
                .ok()
                .and_then(|s| s.snapshot(None).ok());
            let kinds: Vec<String> = match kind {
                Some(k) => vec![k.replace('-', "_")],
                None => vec!["task".into(), "visual_category".into()],
            };
            for k in kinds {
                println!("{k}:");
                for v in filterdb_ingest::vocab::builtin(&k)? {
                    println!("  {v}");
                }
                if let Some(s) = &snap {
                    for v in s.vocab_extra(&k) {
                        println!("  {v}  (added to this store)");
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
