//! filterdb's SQL functions, registered by [`register_all`] into every session filterdb
//! builds (CLI, server, distributed executors).
//!
//! Each function lives in one file with its documentation, a plain scalar reference
//! implementation, the vectorised kernel over Arrow buffers and its tests.
//!
//! ```
//! use datafusion::execution::FunctionRegistry;
//! use datafusion::prelude::SessionContext;
//! let mut ctx = SessionContext::new();
//! filterdb_udf::register_all(&mut ctx)?;
//! assert!(ctx.udfs().contains("make_weights"));
//! Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF};

pub mod aggregate;
pub mod common;
pub mod scalar;
pub mod simd;

/// Every scalar function filterdb defines.
pub fn all_scalar() -> Vec<Arc<ScalarUDF>> {
    vec![
        scalar::make_weights::make_weights_udf(),
        scalar::peak_scale::peak_scale_udf(),
        scalar::l1_norm::l1_norm_udf(),
        scalar::l2_norm::l2_norm_udf(),
        scalar::linf_norm::linf_norm_udf(),
        scalar::pca_project::pca_project_udf(),
        scalar::kl_drift::kl_drift_udf(),
        scalar::depth_bucket::depth_bucket_udf(),
    ]
}

/// Every aggregate function filterdb defines.
pub fn all_aggregate() -> Vec<Arc<AggregateUDF>> {
    vec![
        aggregate::pca_fit::pca_fit_udaf(),
        aggregate::coef_histogram::coef_histogram_udaf(),
        aggregate::coef_histogram_merge::coef_histogram_merge_udaf(),
        aggregate::coef_range::coef_range_udaf(),
        aggregate::largest_filters::largest_filters_udaf(),
        aggregate::layer_sparsity::layer_sparsity_udaf(),
        aggregate::variance_entropy::variance_entropy_udaf(),
        aggregate::variance_entropy::variance_entropy_norm_udaf(),
        aggregate::variance_entropy::variance_entropy_clean_udaf(),
        aggregate::variance_entropy::variance_entropy_clean_norm_udaf(),
        aggregate::orthogonality::orthogonality_udaf(),
        aggregate::layer_degeneration::layer_degeneration_udaf(),
    ]
}

/// Register every filterdb function into `registry`.
///
/// # Errors
/// Propagates the registry's error.
pub fn register_all(registry: &mut dyn FunctionRegistry) -> Result<()> {
    for f in all_scalar() {
        registry.register_udf(f)?;
    }
    for f in all_aggregate() {
        registry.register_udaf(f)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    #[test]
    fn no_duplicate_names() {
        let mut seen = HashSet::new();
        for f in super::all_scalar() {
            for n in std::iter::once(f.name()).chain(f.aliases().iter().map(String::as_str)) {
                assert!(
                    seen.insert(n.to_ascii_lowercase()),
                    "duplicate function name {n}"
                );
            }
        }
    }
}
