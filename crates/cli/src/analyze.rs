//! `filterdb analyze`: the paper's analyses as a few SQL passes over the store.
//!
//! Each analysis is plain SQL over the store's tables and filterdb's functions, so the
//! same numbers are one query away in `filterdb sql`; `docs/paper.md` lists the queries.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type};
use clap::{Args, Subcommand, ValueEnum};
use datafusion::prelude::SessionContext;

use crate::{QueryArgs, StoreArg};

/// `filterdb analyze`.
#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    #[command(subcommand)]
    what: Analysis,
}

#[derive(Debug, Subcommand)]
enum Analysis {
    /// Drift between groups: the paper's symmetric KL matrix of PCA-coefficient histograms.
    KlMatrix(KlArgs),
    /// Degenerated layers: sparsity, variance entropy and orthogonality per layer and model.
    Degeneration(DegenerationArgs),
    /// The PCA basis of peak-scaled filters: eigen-images and explained variance.
    Pca(PcaArgs),
}

/// Grouping of `kl-matrix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GroupBy {
    /// The model's task.
    Task,
    /// The visual category of the training data.
    VisualCategory,
    /// Depth bucket of the layer (`depth_bucket(conv_depth_norm)`).
    Depth,
    /// Architecture family.
    Architecture,
    /// Every model on its own.
    Model,
}

impl GroupBy {
    fn expr(self) -> &'static str {
        match self {
            GroupBy::Task => "coalesce(task, '(unknown)')",
            GroupBy::VisualCategory => "coalesce(visual_category, '(unknown)')",
            GroupBy::Depth => "depth_bucket(conv_depth_norm)",
            GroupBy::Architecture => "coalesce(architecture, '(unknown)')",
            GroupBy::Model => "name",
        }
    }
}

/// Output format of the analyses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned text.
    Table,
    /// CSV.
    Csv,
    /// JSON.
    Json,
}

#[derive(Debug, Args)]
struct Common {
    #[command(flatten)]
    store: StoreArg,
    #[command(flatten)]
    query: QueryArgs,
    /// Restrict to filters matching this SQL condition over `filters_meta` columns,
    /// e.g. "task = 'Classification' AND conv_depth_norm < 0.5".
    #[arg(long = "where", value_name = "SQL")]
    filter: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

impl Common {
    fn where_clause(&self) -> String {
        match &self.filter {
            Some(w) => format!("WHERE ({w})"),
            None => String::new(),
        }
    }
}

#[derive(Debug, Args)]
struct KlArgs {
    #[command(flatten)]
    common: Common,
    /// What a group is.
    #[arg(long, value_enum)]
    by: GroupBy,
    /// Histogram bins per coefficient.
    #[arg(long, default_value_t = 70)]
    bins: u32,
    /// Weights of the nine coefficients: the basis's explained-variance ratio (the
    /// paper) or uniform 1/9.
    #[arg(long, value_enum, default_value = "evr")]
    weights: KlWeights,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum KlWeights {
    Evr,
    Uniform,
}

#[derive(Debug, Args)]
struct DegenerationArgs {
    #[command(flatten)]
    common: Common,
    /// Sparsity threshold ratio: a filter is sparse when all |w| < ratio * layer max.
    #[arg(long, default_value_t = 0.01)]
    ratio: f64,
    /// Flag a layer as sparse when at least this share of its filters is sparse.
    #[arg(long, default_value_t = 0.1)]
    sparse_share: f64,
    /// Flag a layer as low-diversity when its normalised clean variance entropy is below this.
    #[arg(long, default_value_t = 0.5)]
    low_diversity_below: f64,
    /// Flag a layer as random-like when its normalised variance entropy is above this.
    #[arg(long, default_value_t = 1.0)]
    random_above: f64,
    /// Print per-layer rows too (default: only flagged layers and the per-model summary).
    #[arg(long)]
    all_layers: bool,
}

#[derive(Debug, Args)]
struct PcaArgs {
    #[command(flatten)]
    common: Common,
    /// Fit on raw filters instead of peak-scaled ones.
    #[arg(long)]
    raw: bool,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn session(c: &Common) -> Result<SessionContext> {
    let store = filterdb_store::Store::open(&c.store.store)
        .with_context(|| format!("opening store {}", c.store.store.display()))?;
    let opts = filterdb_sql::SessionOptions {
        memory_limit: c.query.memory_limit,
        target_partitions: c.query.threads,
        batch_size: None,
    };
    Ok(filterdb_sql::store_session(&store, c.query.version, &opts).await?)
}

async fn collect(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
    let df = ctx
        .sql(sql)
        .await
        .with_context(|| format!("planning: {sql}"))?;
    df.collect()
        .await
        .with_context(|| format!("running: {sql}"))
}

/// SQL of the three passes of the KL pipeline; also printed by `docs/paper.md`.
///
/// Without `--where`, every pass reads `filters` alone: the histogram pass groups by
/// `model_id` (by `(model_id, layer_idx)` for `--by depth`), and `coef_histogram_merge`
/// adds those per-model (per-layer) histograms into the groups after joining `models`
/// (`layers`) on one row per model (layer), so no per-filter join or string grouping
/// runs. With `--where`, every pass reads `filters_meta`, whose columns the condition
/// may use.
pub fn kl_sql(by: GroupBy, where_clause: &str, bins: u32, uniform: bool) -> [String; 4] {
    let scaled = "peak_scale(weights)";
    let project = format!("pca_project({scaled}, (SELECT b FROM _basis))");
    let hist = format!(
        "coef_histogram({project}, (SELECT r['min'] FROM _range), (SELECT r['max'] FROM _range), {bins})"
    );
    let g = by.expr();
    let (all, grouped) = if where_clause.is_empty() {
        let grouped = match by {
            GroupBy::Depth => format!(
                "SELECT {g} AS grp, count(DISTINCT p.model_id) AS models, sum(p.n) AS filters, \
                 coef_histogram_merge(p.h) AS h \
                 FROM (SELECT model_id, layer_idx, count(*) AS n, {hist} AS h FROM filters \
                 GROUP BY model_id, layer_idx) p \
                 JOIN layers l ON p.model_id = l.model_id AND p.layer_idx = l.layer_idx \
                 GROUP BY {g}"
            ),
            _ => format!(
                "SELECT {g} AS grp, count(*) AS models, sum(p.n) AS filters, \
                 coef_histogram_merge(p.h) AS h \
                 FROM (SELECT model_id, count(*) AS n, {hist} AS h FROM filters GROUP BY model_id) p \
                 JOIN models m ON p.model_id = m.model_id \
                 GROUP BY {g}"
            ),
        };
        ("filters", grouped)
    } else {
        let grouped = format!(
            "SELECT {g} AS grp, count(DISTINCT model_id) AS models, count(*) AS filters, \
             {hist} AS h FROM filters_meta {where_clause} GROUP BY {g}"
        );
        ("filters_meta", grouped)
    };
    let weights = if uniform {
        String::new()
    } else {
        ", (SELECT b['explained_variance_ratio'] FROM _basis)".to_string()
    };
    [
        format!(
            "CREATE OR REPLACE TABLE _basis AS SELECT pca_fit({scaled}) AS b FROM {all} {where_clause}"
        ),
        format!(
            "CREATE OR REPLACE TABLE _range AS SELECT coef_range({project}) AS r FROM {all} {where_clause}"
        ),
        format!("CREATE OR REPLACE TABLE _hist AS {grouped}"),
        format!(
            "SELECT a.grp AS a, b.grp AS b, kl_drift(a.h, b.h{weights}) AS d FROM _hist a CROSS JOIN _hist b"
        ),
    ]
}

fn strings(b: &RecordBatch, col: usize) -> Vec<String> {
    let c = b.column(col);
    (0..b.num_rows())
        .map(|i| arrow::util::display::array_value_to_string(c, i).unwrap_or_default())
        .collect()
}

fn kl_matrix(a: KlArgs) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let ctx = session(&a.common).await?;
        let started = std::time::Instant::now();
        let sql = kl_sql(
            a.by,
            &a.common.where_clause(),
            a.bins,
            a.weights == KlWeights::Uniform,
        );
        for s in &sql[..3] {
            collect(&ctx, s).await?;
        }
        let sizes = collect(&ctx, "SELECT grp, models, filters FROM _hist").await?;
        let mut size: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for b in &sizes {
            let g = strings(b, 0);
            let m = b.column(1).as_primitive::<Int64Type>();
            let f = b.column(2).as_primitive::<Int64Type>();
            for (i, g) in g.into_iter().enumerate() {
                size.insert(g, (m.value(i), f.value(i)));
            }
        }
        if size.is_empty() {
            bail!(
                "no filters match{}",
                a.common
                    .filter
                    .as_deref()
                    .map(|w| format!(" --where {w}"))
                    .unwrap_or_default()
            );
        }
        let pairs = collect(&ctx, &sql[3]).await?;
        let mut d: BTreeMap<(String, String), f64> = BTreeMap::new();
        for b in &pairs {
            let x = strings(b, 0);
            let y = strings(b, 1);
            let v = b.column(2).as_primitive::<Float64Type>();
            for i in 0..b.num_rows() {
                d.insert(
                    (x[i].clone(), y[i].clone()),
                    if v.is_null(i) { f64::NAN } else { v.value(i) },
                );
            }
        }
        let mut groups: Vec<String> = size.keys().cloned().collect();
        if a.by == GroupBy::Depth {
            // Labels `[0.0, 0.1]`, `(0.1, 0.2]`, ...: in depth order, not text order.
            groups.sort_by(|p, q| depth_key(p).total_cmp(&depth_key(q)));
        } else {
            // The paper sorts rows and columns by the column mean.
            let mean = |g: &String| groups_mean(&d, &size, g);
            let mut keyed: Vec<(f64, String)> =
                groups.iter().map(|g| (mean(g), g.clone())).collect();
            keyed.sort_by(|p, q| p.0.total_cmp(&q.0).then_with(|| p.1.cmp(&q.1)));
            groups = keyed.into_iter().map(|k| k.1).collect();
        }
        let secs = started.elapsed().as_secs_f64();
        let total: i64 = size.values().map(|s| s.1).sum();
        print_matrix(a.common.format, &groups, &size, &d)?;
        eprintln!(
            "{} groups, {total} filters, {:.2} s ({:.1}M filters/s over 3 passes)",
            groups.len(),
            secs,
            total as f64 / secs / 1e6
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// The lower edge of a depth-bucket label (`(0.3, 0.4]` -> 0.3).
fn depth_key(label: &str) -> f64 {
    label
        .trim_start_matches(['[', '('])
        .split(',')
        .next()
        .and_then(|x| x.trim().parse().ok())
        .unwrap_or(f64::INFINITY)
}

fn groups_mean(
    d: &BTreeMap<(String, String), f64>,
    size: &BTreeMap<String, (i64, i64)>,
    col: &str,
) -> f64 {
    let vals: Vec<f64> = size
        .keys()
        .filter_map(|r| d.get(&(r.clone(), col.to_string())).copied())
        .collect();
    vals.iter().sum::<f64>() / vals.len().max(1) as f64
}

fn print_matrix(
    format: Format,
    groups: &[String],
    size: &BTreeMap<String, (i64, i64)>,
    d: &BTreeMap<(String, String), f64>,
) -> Result<()> {
    let get = |r: &String, c: &String| d.get(&(r.clone(), c.clone())).copied().unwrap_or(f64::NAN);
    match format {
        Format::Csv => {
            let mut w =
                csv_line(std::iter::once("group".to_string()).chain(groups.iter().cloned()));
            for r in groups {
                w.push_str(&csv_line(
                    std::iter::once(r.clone())
                        .chain(groups.iter().map(|c| format!("{}", get(r, c)))),
                ));
            }
            print!("{w}");
        }
        Format::Json => {
            let v = serde_json::json!({
                "groups": groups,
                "models": groups.iter().map(|g| size[g].0).collect::<Vec<_>>(),
                "filters": groups.iter().map(|g| size[g].1).collect::<Vec<_>>(),
                "matrix": groups.iter().map(|r| groups.iter().map(|c| get(r, c)).collect::<Vec<_>>()).collect::<Vec<_>>(),
            });
            println!("{v}");
        }
        Format::Table => {
            let w = groups.iter().map(|g| g.len()).max().unwrap_or(5).max(5);
            print!("{:w$}  {:>7} {:>12} ", "", "models", "filters");
            for (i, _) in groups.iter().enumerate() {
                print!(" {:>8}", format!("[{i}]"));
            }
            println!();
            for (i, r) in groups.iter().enumerate() {
                let (m, f) = size[r];
                print!("{:w$}  {m:>7} {f:>12} ", format!("[{i}] {r}"), w = w + 4);
                for c in groups {
                    print!(" {:>8.4}", get(r, c));
                }
                println!();
            }
        }
    }
    Ok(())
}

fn csv_line(cells: impl Iterator<Item = String>) -> String {
    let mut s: Vec<String> = Vec::new();
    for c in cells {
        if c.contains([',', '"', '\n']) {
            s.push(format!("\"{}\"", c.replace('"', "\"\"")));
        } else {
            s.push(c);
        }
    }
    s.join(",") + "\n"
}

/// SQL of `analyze degeneration`: one pass over the filters grouped by layer, every
/// statistic from the one `layer_degeneration` aggregate (the layer is kept and read once,
/// not once per statistic). Without `--where` it reads `filters` alone (grouped by the two
/// integer ids) and joins the layer's and model's names onto the per-layer rows; with
/// `--where` it reads `filters_meta`.
pub fn degeneration_sql(where_clause: &str, ratio: f64) -> String {
    let aggregate = format!("layer_degeneration(weights, out_channel, in_channel, {ratio}) AS d");
    let fields = "d['n_filters'] AS n_filters, d['sparsity'] AS sparsity, d['entropy'] AS entropy, \
         d['entropy_norm'] AS entropy_norm, d['entropy_clean_norm'] AS entropy_clean_norm, \
         d['orthogonality'] AS orthogonality";
    if where_clause.is_empty() {
        format!(
            "SELECT p.model_id, m.name, p.layer_idx, l.layer_name, l.conv_depth_norm, {fields} \
             FROM (SELECT model_id, layer_idx, {aggregate} FROM filters GROUP BY model_id, layer_idx) p \
             JOIN layers l ON p.model_id = l.model_id AND p.layer_idx = l.layer_idx \
             JOIN models m ON p.model_id = m.model_id \
             ORDER BY p.model_id, p.layer_idx"
        )
    } else {
        format!(
            "SELECT model_id, name, layer_idx, layer_name, conv_depth_norm, {fields} \
             FROM (SELECT model_id, name, layer_idx, layer_name, conv_depth_norm, {aggregate} \
             FROM filters_meta {where_clause} \
             GROUP BY model_id, name, layer_idx, layer_name, conv_depth_norm) \
             ORDER BY model_id, layer_idx"
        )
    }
}

fn degeneration(a: DegenerationArgs) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let ctx = session(&a.common).await?;
        let started = std::time::Instant::now();
        let sql = degeneration_sql(&a.common.where_clause(), a.ratio);
        let flags = format!(
            "concat_ws(' ', CASE WHEN sparsity >= {s} THEN 'sparse' END, \
             CASE WHEN entropy_clean_norm < {l} THEN 'low-diversity' END, \
             CASE WHEN entropy_norm > {r} THEN 'random-like' END)",
            s = a.sparse_share,
            l = a.low_diversity_below,
            r = a.random_above
        );
        collect(&ctx, &format!("CREATE OR REPLACE TABLE _layers AS SELECT *, {flags} AS flags FROM ({sql})")).await?;
        let layer_filter = if a.all_layers { "" } else { "WHERE flags <> ''" };
        let layers = ctx
            .sql(&format!(
                "SELECT name AS model, layer_idx, layer_name, round(conv_depth_norm, 3) AS depth, n_filters, \
                 round(sparsity, 4) AS sparsity, round(entropy, 4) AS entropy, round(entropy_norm, 4) AS entropy_norm, \
                 round(entropy_clean_norm, 4) AS entropy_clean_norm, round(orthogonality, 4) AS orthogonality, flags \
                 FROM _layers {layer_filter} ORDER BY model_id, layer_idx"
            ))
            .await?;
        let models = ctx
            .sql(
                "SELECT name AS model, count(*) AS layers, sum(n_filters) AS filters, \
                 round(sum(sparsity * n_filters) / sum(n_filters), 4) AS sparsity, \
                 round(avg(entropy_norm), 4) AS mean_entropy_norm, \
                 sum(CASE WHEN flags LIKE '%sparse%' THEN 1 ELSE 0 END) AS sparse_layers, \
                 sum(CASE WHEN flags LIKE '%low-diversity%' THEN 1 ELSE 0 END) AS low_diversity_layers, \
                 sum(CASE WHEN flags LIKE '%random-like%' THEN 1 ELSE 0 END) AS random_like_layers \
                 FROM _layers GROUP BY model_id, name ORDER BY model_id",
            )
            .await?;
        let fmt = match a.common.format {
            Format::Table => crate::output::OutputFormat::Table,
            Format::Csv => crate::output::OutputFormat::Csv,
            Format::Json => crate::output::OutputFormat::Json,
        };
        if a.common.format == Format::Table {
            println!(
                "Layers{} (sparse: >= {} of filters have all |w| < {} x layer max; low-diversity: clean normalised \
                 variance entropy < {}; random-like: normalised variance entropy > {}):",
                if a.all_layers { "" } else { " flagged" },
                a.sparse_share,
                a.ratio,
                a.low_diversity_below,
                a.random_above
            );
        }
        crate::output::print_dataframe(layers, fmt).await?;
        if a.common.format == Format::Table {
            println!("\nPer model:");
        }
        crate::output::print_dataframe(models, fmt).await?;
        eprintln!("({:.2} s)", started.elapsed().as_secs_f64());
        Ok(ExitCode::SUCCESS)
    })
}

fn pca(a: PcaArgs) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let ctx = session(&a.common).await?;
        let x = if a.raw { "weights" } else { "peak_scale(weights)" };
        let sql = format!("SELECT pca_fit({x}) AS b FROM filters_meta {}", a.common.where_clause());
        let batches = collect(&ctx, &sql).await?;
        let Some(b) = batches.iter().find(|b| b.num_rows() > 0) else {
            bail!("no result");
        };
        let Some(basis) = filterdb_udf::common::Basis::from_array(b.column(0).as_ref(), 0)? else {
            bail!("no filters match");
        };
        match a.common.format {
            Format::Json => {
                let v = serde_json::json!({
                    "n": basis.n,
                    "mean": basis.mean,
                    "components": basis.components,
                    "explained_variance": basis.explained_variance,
                    "explained_variance_ratio": basis.explained_variance_ratio,
                });
                println!("{v}");
            }
            Format::Csv => {
                println!("component,explained_variance,explained_variance_ratio,cumulative,v0,v1,v2,v3,v4,v5,v6,v7,v8");
                let mut cum = 0.0;
                for k in 0..9 {
                    cum += basis.explained_variance_ratio[k];
                    let v: Vec<String> = basis.components[k].iter().map(|x| x.to_string()).collect();
                    println!(
                        "{k},{},{},{cum},{}",
                        basis.explained_variance[k],
                        basis.explained_variance_ratio[k],
                        v.join(",")
                    );
                }
            }
            Format::Table => {
                println!("PCA of {} {} filters (eigen-images, row-major 3x3):\n", basis.n, if a.raw { "raw" } else { "peak-scaled" });
                let mut cum = 0.0;
                for k in 0..9 {
                    cum += basis.explained_variance_ratio[k];
                    println!(
                        "component {k}: explained variance ratio {:.4}, cumulative {:.4}",
                        basis.explained_variance_ratio[k], cum
                    );
                    for r in 0..3 {
                        let c = &basis.components[k][r * 3..r * 3 + 3];
                        println!("    {:>8.4} {:>8.4} {:>8.4}   {}", c[0], c[1], c[2], shade(c));
                    }
                }
                println!("\nmean filter:");
                for r in 0..3 {
                    let c = &basis.mean[r * 3..r * 3 + 3];
                    println!("    {:>8.4} {:>8.4} {:>8.4}", c[0], c[1], c[2]);
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// A three-character picture of a row of an eigen-image (negative to positive).
fn shade(row: &[f64]) -> String {
    const RAMP: [char; 5] = ['█', '▓', '·', '░', ' '];
    row.iter()
        .map(|v| {
            let i = ((1.0 - v.clamp(-1.0, 1.0)) / 2.0 * 4.0).round() as usize;
            RAMP[i.min(4)]
        })
        .collect()
}

/// Run `filterdb analyze`.
pub fn run(a: AnalyzeArgs) -> Result<ExitCode> {
    match a.what {
        Analysis::KlMatrix(k) => kl_matrix(k),
        Analysis::Degeneration(d) => degeneration(d),
        Analysis::Pca(p) => pca(p),
    }
}
