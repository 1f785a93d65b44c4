//! Aggregate SQL functions (each with a `GroupsAccumulator`).
