//! filterdb's SQL layer: the one place that builds a DataFusion session (every function
//! registered, the store's tables and views), and streaming exports of query results.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let store = filterdb_store::Store::open("filterdb-store")?;
//! let ctx = filterdb_sql::store_session(&store, None, &Default::default()).await?;
//! ctx.sql("SELECT task, count(*) FROM filters_meta GROUP BY task").await?.show().await?;
//! # Ok(()) }
//! ```

mod error;
pub mod export;
pub mod scan;
pub mod semi_filter;
pub mod semi_join;
mod session;
mod tables;

pub use error::{Result, SqlError};
pub use export::{ExportFormat, ExportSummary, export_query};
pub use session::{SessionOptions, new_session, parse_memory_size, store_session};
pub use tables::{FILTERS_META_VIEW, TABLE_NAMES, filters_view_sql, register_store};
