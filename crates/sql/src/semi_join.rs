//! An optimizer rule: an inner join with a table on one of its keys, whose columns the
//! query never reads, becomes a semi join.
//!
//! `filters_meta` joins every filter with its layer and its model. A query such as
//! `SELECT weights FROM filters_meta WHERE task = 'X'` reads no column of `layers` or
//! `models` (the condition is pushed into the `models` scan), yet each inner join still
//! builds its output by copying (`take`) every filter row, weights included: two copies
//! of the slice before it reaches the writer. When the other side is unique on the join
//! keys, each row finds at most one partner, so the inner join keeps exactly the rows a
//! semi join keeps, and a semi join only filters them (and DataFusion builds its hash
//! table on the small side). Uniqueness is what the table declares: the store registers
//! `models` with primary key `model_id` and `layers` with `(model_id, layer_idx)`
//! (crate::tables); a table without such a key is never rewritten.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, Constraint, NullEquality, Result};
use datafusion::logical_expr::{Expr, Join, JoinType, LogicalPlan, Projection};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

/// See the module documentation.
#[derive(Debug, Default)]
pub struct KeyedJoinToSemiJoin;

impl OptimizerRule for KeyedJoinToSemiJoin {
    fn name(&self) -> &str {
        "filterdb_keyed_join_to_semi_join"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Projection(p) = &plan else {
            return Ok(Transformed::no(plan));
        };
        let LogicalPlan::Join(j) = p.input.as_ref() else {
            return Ok(Transformed::no(plan));
        };
        if j.join_type != JoinType::Inner || j.filter.is_some() || j.on.is_empty() {
            return Ok(Transformed::no(plan));
        }
        let used: HashSet<&Column> = p.expr.iter().flat_map(|e| e.column_refs()).collect();
        let reads_only = |side: &LogicalPlan| used.iter().all(|c| side.schema().has_column(c));
        let keys = |right: bool| -> Option<Vec<Column>> {
            j.on.iter()
                .map(|(l, r)| match if right { r } else { l } {
                    Expr::Column(c) => Some(c.clone()),
                    _ => None,
                })
                .collect()
        };
        let nulls_match = j.null_equality == NullEquality::NullEqualsNull;
        let unique = |side: &LogicalPlan, right: bool| {
            keys(right).is_some_and(|k| unique_on(side, &k, nulls_match))
        };
        let join_type = if reads_only(&j.left) && unique(&j.right, true) {
            JoinType::LeftSemi
        } else if reads_only(&j.right) && unique(&j.left, false) {
            JoinType::RightSemi
        } else {
            return Ok(Transformed::no(plan));
        };
        let join = Join::try_new(
            Arc::clone(&j.left),
            Arc::clone(&j.right),
            j.on.clone(),
            None,
            join_type,
            j.join_constraint,
            j.null_equality,
            false,
        )?;
        let projection = Projection::try_new(p.expr.clone(), Arc::new(LogicalPlan::Join(join)))?;
        Ok(Transformed::yes(LogicalPlan::Projection(projection)))
    }
}

/// Whether the rows of `plan` are unique on the columns `keys`: `plan` reads one table,
/// through aliases, filters and projections that pass the keys through unchanged, and
/// that table declares a primary key (or, when NULL keys do not match each other, a
/// unique key) whose columns are all among `keys`.
fn unique_on(plan: &LogicalPlan, keys: &[Column], nulls_match: bool) -> bool {
    match plan {
        LogicalPlan::SubqueryAlias(a) => {
            let inner: Vec<Column> = keys
                .iter()
                .map(|k| Column::new_unqualified(k.name.clone()))
                .collect();
            unique_on(&a.input, &inner, nulls_match)
        }
        LogicalPlan::Filter(f) => unique_on(&f.input, keys, nulls_match),
        LogicalPlan::Projection(p) => {
            let mut inner = Vec::with_capacity(keys.len());
            for k in keys {
                let found: Vec<usize> = p
                    .schema
                    .iter()
                    .enumerate()
                    .filter(|(_, (q, f))| {
                        f.name() == &k.name && (k.relation.is_none() || q.cloned() == k.relation)
                    })
                    .map(|(i, _)| i)
                    .collect();
                let [i] = found[..] else {
                    return false;
                };
                match p.expr[i].clone().unalias() {
                    Expr::Column(c) => inner.push(c),
                    _ => return false,
                }
            }
            unique_on(&p.input, &inner, nulls_match)
        }
        LogicalPlan::TableScan(scan) => {
            let Some(constraints) = scan.source.constraints() else {
                return false;
            };
            let schema = scan.source.schema();
            let Some(idx) = keys
                .iter()
                .map(|k| schema.index_of(&k.name).ok())
                .collect::<Option<Vec<usize>>>()
            else {
                return false;
            };
            constraints.iter().any(|c| match c {
                Constraint::PrimaryKey(cols) => cols.iter().all(|i| idx.contains(i)),
                Constraint::Unique(cols) => !nulls_match && cols.iter().all(|i| idx.contains(i)),
            })
        }
        _ => false,
    }
}
