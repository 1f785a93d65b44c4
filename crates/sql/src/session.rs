//! The one place that builds a DataFusion session for filterdb: configuration, memory
//! limit, every SQL function, and the store's tables.

use std::sync::Arc;

use datafusion::execution::SessionStateBuilder;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use filterdb_store::Store;

use crate::error::Result;
use crate::tables::register_store;

/// How to build a session.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// Bytes of memory queries may use; spills to disk beyond it (`None`: unbounded).
    pub memory_limit: Option<usize>,
    /// Threads / partitions (default: the number of cores).
    pub target_partitions: Option<usize>,
    /// Rows per batch (default 8192).
    pub batch_size: Option<usize>,
}

/// Parse a human memory size: `512M`, `2G`, `1.5GiB`, `1000000`.
///
/// # Errors
/// A message naming the value when it is not a size.
pub fn parse_memory_size(s: &str) -> std::result::Result<usize, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let split = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(split);
    let num: f64 = num.parse().map_err(|_| {
        format!("invalid memory size {s:?}: expected a number with an optional unit (K, M, G)")
    })?;
    let mult = match unit.trim() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "invalid memory size {s:?}: unknown unit {other:?} (use K, M, G or T)"
            ));
        }
    };
    Ok((num * mult) as usize)
}

/// A session with every filterdb function registered and no tables.
///
/// # Errors
/// Invalid configuration.
pub fn new_session(opts: &SessionOptions) -> Result<SessionContext> {
    let mut config = SessionConfig::new()
        .with_information_schema(true)
        .with_collect_statistics(true)
        .with_target_partitions(opts.target_partitions.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }));
    if let Some(b) = opts.batch_size {
        config = config.with_batch_size(b);
    }
    // Parquet: evaluate filters while decoding so selective queries skip rows, not just row groups.
    config.options_mut().execution.parquet.pushdown_filters = true;
    // filter_columns declares range partitioning on model_id (crate::scan): let it satisfy
    // GROUP BY model_id, layer_idx (a subset key) at any partition count, so per-layer
    // aggregates run in one sorted, streaming stage.
    config.options_mut().optimizer.subset_repartition_threshold = 1;
    let mut runtime = RuntimeEnvBuilder::new();
    if let Some(limit) = opts.memory_limit {
        runtime = runtime.with_memory_pool(Arc::new(FairSpillPool::new(limit)));
        // Sorts reserve this much up front for merging their spills (10 MiB by default),
        // which alone would exceed a small limit.
        let reserve = &mut config.options_mut().execution.sort_spill_reservation_bytes;
        *reserve = (*reserve).min(limit / 8);
    }
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime.build_arc()?)
        .with_default_features()
        // Semi joins against a small table filter the scan's batches by key (after
        // DataFusion's own rules, so the join's dynamic filter is already in the scan).
        .with_physical_optimizer_rule(Arc::new(crate::semi_filter::SemiJoinAsFilter))
        .build();
    let mut ctx = SessionContext::new_with_state(state);
    // `filters_meta` queries that read no layer or model column join as semi joins.
    ctx.add_optimizer_rule(Arc::new(crate::semi_join::KeyedJoinToSemiJoin));
    filterdb_udf::register_all(&mut ctx)?;
    Ok(ctx)
}

/// A session over `store` at `version` (newest when `None`), with every function.
///
/// # Errors
/// Store errors (unknown version, unreadable log), planning errors.
pub async fn store_session(
    store: &Store,
    version: Option<u64>,
    opts: &SessionOptions,
) -> Result<SessionContext> {
    let ctx = new_session(opts)?;
    let snapshot = store.snapshot(version)?;
    register_store(&ctx, store, &snapshot).await?;
    Ok(ctx)
}
