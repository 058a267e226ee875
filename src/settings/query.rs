//! `[query]`: what requests may ask of the database beyond reading rows.

use serde::Deserialize;

/// `[query]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuerySettings {
    /// Whether `select` may hold aggregates (`count()`, `amount.sum()`, …), for every dataset that does not
    /// say otherwise. Off by default, as PostgREST's `db-aggregates-enabled`: a `GROUP BY` over a large table
    /// costs the database far more than streaming its rows.
    pub aggregates: bool,
    /// A summary whose plan the planner estimates above this cost (as `EXPLAIN` prints it, under the
    /// caller's role) is refused with a 400 before it runs. Unset: no cap.
    pub max_cost: Option<f64>,
}

impl QuerySettings {
    pub(super) fn validate(&self) -> Result<(), String> {
        match self.max_cost {
            Some(cost) if !(cost.is_finite() && cost > 0.0) => {
                Err(format!("query.max_cost must be a positive number, not {cost}"))
            }
            _ => Ok(()),
        }
    }
}
