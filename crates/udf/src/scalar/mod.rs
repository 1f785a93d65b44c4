//! Scalar SQL functions.

pub mod depth_bucket;
pub mod kl_drift;
pub mod l1_norm;
pub mod l2_norm;
pub mod linf_norm;
pub mod make_weights;
pub mod pca_project;
pub mod peak_scale;
