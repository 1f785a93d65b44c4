//! The store's tables as DataFusion tables: `models`, `layers`, `filter_columns` (the
//! physical w0..w8 layout), and the views `filters` and `filters_meta`.

use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::common::{Constraint, Constraints};
use datafusion::datasource::empty::EmptyTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::SessionContext;
use filterdb_store::{
    Snapshot, Store, WEIGHT_COLUMNS, filters_schema, layers_schema, models_schema,
};

use crate::error::Result;
use crate::scan::FilterColumnsTable;

/// Names of the tables and views [`register_store`] creates.
pub const TABLE_NAMES: [&str; 5] = [
    "models",
    "layers",
    "filter_columns",
    "filters",
    "filters_meta",
];

/// A listing table over `files` whose rows are unique on the columns `key` (declared as
/// its primary key, which [`crate::semi_join`] relies on).
fn listing(
    store: &Store,
    files: Vec<String>,
    schema: arrow::datatypes::SchemaRef,
    key: &[&str],
) -> Result<Arc<dyn TableProvider>> {
    if files.is_empty() {
        // A store without models: the tables exist, with their schema, and are empty.
        return Ok(Arc::new(EmptyTable::new(schema)));
    }
    let urls = files
        .iter()
        .map(|f| ListingTableUrl::parse(store.path_of(f).to_string_lossy()))
        .collect::<datafusion::error::Result<Vec<_>>>()?;
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let key = key
        .iter()
        .map(|k| schema.index_of(k))
        .collect::<std::result::Result<Vec<usize>, _>>()?;
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .with_schema(schema);
    let table = ListingTable::try_new(config)?.with_constraints(Constraints::new_unverified(vec![
        Constraint::PrimaryKey(key),
    ]));
    Ok(Arc::new(table))
}

/// SQL of the `filters` view: the physical columns with the weights as one list.
pub fn filters_view_sql() -> String {
    format!(
        "CREATE VIEW filters AS SELECT filter_id, model_id, layer_idx, out_channel, in_channel, \
         make_weights({}) AS weights FROM filter_columns",
        WEIGHT_COLUMNS.join(", ")
    )
}

/// SQL of the `filters_meta` view: every filter with its layer's and model's columns.
pub const FILTERS_META_VIEW: &str = "CREATE VIEW filters_meta AS SELECT \
    f.filter_id, f.model_id, f.layer_idx, f.out_channel, f.in_channel, f.weights, \
    l.layer_name, l.conv_depth, l.conv_depth_norm, l.out_channels, l.in_channels, l.groups, \
    m.name, m.architecture, m.task, m.training_dataset, m.pretraining_dataset, m.visual_category, \
    m.source_format, m.depth \
    FROM filters f \
    JOIN layers l ON f.model_id = l.model_id AND f.layer_idx = l.layer_idx \
    JOIN models m ON f.model_id = m.model_id";

/// Register the tables of `snapshot` in `ctx`.
///
/// # Errors
/// Planning errors (should not happen for a valid store).
pub async fn register_store(
    ctx: &SessionContext,
    store: &Store,
    snapshot: &Snapshot,
) -> Result<()> {
    let models = snapshot.models.values();
    let pick = |f: fn(&filterdb_store::ModelEntry) -> &String| {
        models.clone().map(|m| f(m).clone()).collect::<Vec<_>>()
    };
    ctx.register_table(
        "models",
        listing(
            store,
            pick(|m| &m.files.models),
            models_schema(),
            &["model_id"],
        )?,
    )?;
    ctx.register_table(
        "layers",
        listing(
            store,
            pick(|m| &m.files.layers),
            layers_schema(),
            &["model_id", "layer_idx"],
        )?,
    )?;
    // The filter files get filterdb's own scan (crate::scan): fast weight pages, file
    // pruning by model_id from the log, exact row counts.
    let filter_columns: Arc<dyn TableProvider> = if snapshot.models.is_empty() {
        Arc::new(EmptyTable::new(filters_schema(snapshot.precision)))
    } else {
        Arc::new(FilterColumnsTable::new(store, snapshot))
    };
    ctx.register_table("filter_columns", filter_columns)?;
    ctx.sql(&filters_view_sql()).await?;
    ctx.sql(FILTERS_META_VIEW).await?;
    Ok(())
}
