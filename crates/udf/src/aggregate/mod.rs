//! Aggregate SQL functions (each with a `GroupsAccumulator`).
pub mod coef_histogram;
pub mod coef_histogram_merge;
pub mod coef_range;
pub mod largest_filters;
pub mod layer_degeneration;
pub mod layer_sparsity;
pub mod orthogonality;
pub mod pca_fit;
#[cfg(test)]
pub(crate) mod testing;
pub mod variance_entropy;
