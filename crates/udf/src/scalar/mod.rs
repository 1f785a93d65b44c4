//! Scalar SQL functions.

pub mod make_weights;
