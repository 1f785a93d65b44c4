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

use crate::commands::runtime;
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
    /// How many of the largest peak-scaled filters the PCA pass keeps to guess the
    /// histogram range from. A right guess (checked exactly) saves a pass over the
    /// filters; a wrong one costs nothing but that pass. 80-160 bytes each; under
    /// `--memory-limit`, at most an eighth of the limit.
    #[arg(long, default_value_t = RANGE_CANDIDATES as u32,
          value_parser = clap::value_parser!(u32).range(1..=filterdb_udf::aggregate::largest_filters::MAX_K))]
    range_candidates: u32,
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
    /// Orthogonality's Gram products: f64 accumulates in float64 (MISSION.md's definition);
    /// f32 sums large float16/float32 layers in float32 over blocks of 64 dimensions on
    /// AVX2 CPUs, about twice as fast, at most 3.9e-6 from the f64 value.
    #[arg(long, value_enum, default_value = "f64")]
    gram_precision: GramPrecision,
}

/// `analyze degeneration --gram-precision`: the `gram_precision` argument of
/// `layer_degeneration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum GramPrecision {
    F64,
    F32,
}

#[derive(Debug, Args)]
struct PcaArgs {
    #[command(flatten)]
    common: Common,
    /// Fit on raw filters instead of peak-scaled ones.
    #[arg(long)]
    raw: bool,
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

/// How many of the largest peak-scaled filters the PCA pass keeps, by default, for the
/// first guess of the histogram range (`largest_filters`; 80 bytes each, twice that
/// while buffering). On `benches/pipeline.py`'s collections the extreme coefficients
/// sat on the 75th-544th (10M filters) and 537th-1436th (100M) largest.
pub const RANGE_CANDIDATES: usize = 16_384;

/// The statements of `analyze kl-matrix`; also shown in `docs/paper.md`.
///
/// The paper's pipeline needs three results in turn: the PCA basis, the range of all
/// coefficients, then the histograms over that range. filterdb reads the filters twice,
/// not three times, whenever it can prove the range early:
///
/// 1. `basis` (pass 1): the basis, and the `candidates` largest peak-scaled filters
///    (`largest_filters`; [`RANGE_CANDIDATES`] by default).
/// 2. `range_guess` (no pass): the range of those filters' coefficients. They are filters
///    of the set, so the true range contains it; and a coefficient is at most the
///    filter's distance from the mean (`|c_i| <= |x - mu|`), so the extremes usually sit
///    on them.
/// 3. `hist` (pass 2): per group, the histograms over `_range` and the exact range of
///    the group's coefficients (`coef_range` of the same projection, which DataFusion
///    computes once for both).
/// 4. `check`: the exact range of all groups against `_range`. Equal (bit for bit): the
///    histograms are those of the true range, done. Otherwise `range_exact` replaces
///    `_range` with the exact range and `hist` runs again (pass 3), as the paper's
///    three-pass pipeline would.
/// 5. `pairs`: the drift of every pair of groups.
///
/// Without `--where`, every pass reads `filters` alone: the histogram pass groups by
/// `model_id` (by `(model_id, layer_idx)` for `--by depth`), and `coef_histogram_merge`
/// adds those per-model (per-layer) histograms into the groups after joining `models`
/// (`layers`) on one row per model (layer), so no per-filter join or string grouping
/// runs. With `--where`, every pass reads `filters_meta`, whose columns the condition
/// may use.
#[derive(Debug, Clone)]
pub struct KlSql {
    /// Pass 1: `_basis(b, top)`.
    pub basis: String,
    /// `_range(r)` from the coefficients of `_basis.top`.
    pub range_guess: String,
    /// Pass 2 (and 3): `_hist(grp, models, filters, h, lo, hi)`.
    pub hist: String,
    /// One row: the exact `lo`, `hi` of all groups, then `_range`'s.
    pub check: String,
    /// `_range(r)` from `_hist`'s exact range.
    pub range_exact: String,
    /// `(a, b, d)` for every pair of groups.
    pub pairs: String,
}

/// The statements of `analyze kl-matrix` (see [`KlSql`]).
pub fn kl_sql(
    by: GroupBy,
    where_clause: &str,
    bins: u32,
    uniform: bool,
    candidates: usize,
) -> KlSql {
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
                 coef_histogram_merge(p.h) AS h, min(p.r['min']) AS lo, max(p.r['max']) AS hi \
                 FROM (SELECT model_id, layer_idx, count(*) AS n, {hist} AS h, coef_range({project}) AS r \
                 FROM filters GROUP BY model_id, layer_idx) p \
                 JOIN layers l ON p.model_id = l.model_id AND p.layer_idx = l.layer_idx \
                 GROUP BY {g}"
            ),
            _ => format!(
                "SELECT {g} AS grp, count(*) AS models, sum(p.n) AS filters, \
                 coef_histogram_merge(p.h) AS h, min(p.r['min']) AS lo, max(p.r['max']) AS hi \
                 FROM (SELECT model_id, count(*) AS n, {hist} AS h, coef_range({project}) AS r \
                 FROM filters GROUP BY model_id) p \
                 JOIN models m ON p.model_id = m.model_id \
                 GROUP BY {g}"
            ),
        };
        ("filters", grouped)
    } else {
        let grouped = format!(
            "SELECT grp, models, filters, h, r['min'] AS lo, r['max'] AS hi FROM \
             (SELECT {g} AS grp, count(DISTINCT model_id) AS models, count(*) AS filters, \
             {hist} AS h, coef_range({project}) AS r FROM filters_meta {where_clause} GROUP BY {g})"
        );
        ("filters_meta", grouped)
    };
    let weights = if uniform {
        String::new()
    } else {
        ", (SELECT b['explained_variance_ratio'] FROM _basis)".to_string()
    };
    KlSql {
        basis: format!(
            "CREATE OR REPLACE TABLE _basis AS SELECT pca_fit({scaled}) AS b, \
             largest_filters({scaled}, {candidates}) AS top FROM {all} {where_clause}"
        ),
        range_guess: "CREATE OR REPLACE TABLE _range AS \
             SELECT coef_range(pca_project(x, (SELECT b FROM _basis))) AS r \
             FROM (SELECT unnest(top) AS x FROM _basis)"
            .to_string(),
        hist: format!("CREATE OR REPLACE TABLE _hist AS {grouped}"),
        check: "SELECT (SELECT min(lo) FROM _hist) AS lo, (SELECT max(hi) FROM _hist) AS hi, \
             r['min'] AS guess_lo, r['max'] AS guess_hi FROM _range"
            .to_string(),
        range_exact: "CREATE OR REPLACE TABLE _range AS \
             SELECT named_struct('min', min(lo), 'max', max(hi)) AS r FROM _hist"
            .to_string(),
        pairs: format!(
            "SELECT a.grp AS a, b.grp AS b, kl_drift(a.h, b.h{weights}) AS d FROM _hist a CROSS JOIN _hist b"
        ),
    }
}

/// `requested` candidates, fewer under a memory limit: their states (160 bytes a
/// candidate while buffering, in every partition) stay within an eighth of it, since an
/// aggregate without GROUP BY cannot spill.
fn candidates_within(requested: usize, memory_limit: Option<usize>, partitions: usize) -> usize {
    match memory_limit {
        Some(limit) => requested.min(limit / 8 / (160 * partitions.max(1))).max(1),
        None => requested,
    }
}

/// Whether `check`'s row says the guessed range is the exact one (bit for bit; both
/// NULL when no coefficient is a number).
fn range_confirmed(batches: &[RecordBatch]) -> Result<bool> {
    let b = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .context("the range check returned no row")?;
    let v = |c: usize| -> Option<u64> {
        let a = b.column(c).as_primitive::<Float64Type>();
        a.is_valid(0).then(|| a.value(0).to_bits())
    };
    Ok(v(0) == v(2) && v(1) == v(3))
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
            candidates_within(
                a.range_candidates as usize,
                a.common.query.memory_limit,
                ctx.copied_config().target_partitions(),
            ),
        );
        collect(&ctx, &sql.basis).await?;
        collect(&ctx, &sql.range_guess).await?;
        collect(&ctx, &sql.hist).await?;
        let mut passes = 2;
        if !range_confirmed(&collect(&ctx, &sql.check).await?)? {
            collect(&ctx, &sql.range_exact).await?;
            collect(&ctx, &sql.hist).await?;
            passes = 3;
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
        let pairs = collect(&ctx, &sql.pairs).await?;
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
            "{} groups, {total} filters, {:.2} s ({:.1}M filters/s over {passes} passes)",
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
pub fn degeneration_sql(where_clause: &str, ratio: f64, f32_gram: bool) -> String {
    let precision = if f32_gram { "'f32'" } else { "'f64'" };
    let aggregate =
        format!("layer_degeneration(weights, out_channel, in_channel, {ratio}, {precision}) AS d");
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
        let sql = degeneration_sql(
            &a.common.where_clause(),
            a.ratio,
            a.gram_precision == GramPrecision::F32,
        );
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
