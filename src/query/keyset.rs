//! Keyset reading: the predicate "after this row in this order", and exports read as keyset batches.

use super::params::OrderTerm;
use super::{CountMethod, Plan, Request, Sql, effective_order, filtered, select_list};
use crate::db::catalog::Dataset;
use crate::encode::{EncodedColumn, Format};

/// How an export reads its rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// One statement in one transaction: every row from one consistent snapshot, which is held (and holds
    /// back VACUUM) for the whole download.
    #[default]
    Snapshot,
    /// Keyset batches, each a short statement in a transaction of its own: no snapshot outlives a batch, but
    /// rows changed during the download may be seen in either state. Needs a key.
    Chunked,
}

/// An export read as keyset batches ([`Consistency::Chunked`]): the request, and the plan of each batch.
#[derive(Clone, Debug)]
pub struct KeysetScan {
    dataset: Dataset,
    request: Request,
    format: Format,
    /// Rows per batch.
    pub batch_rows: u64,
}

impl KeysetScan {
    /// A scan of `request` over `dataset` (which must have a key) in `batch_rows`-row batches.
    pub fn new(dataset: &Dataset, request: &Request, format: Format, batch_rows: u64) -> KeysetScan {
        debug_assert!(dataset.key.is_some(), "a keyset scan needs a key");
        KeysetScan {
            dataset: dataset.clone(),
            request: request.clone(),
            format,
            batch_rows: batch_rows.max(1),
        }
    }

    /// The encoded columns of every batch.
    pub fn columns(&self) -> Vec<EncodedColumn> {
        select_list(&self.dataset, &self.request.select, self.format).1
    }

    /// The request's `limit`: the most rows all batches together return.
    pub fn limit(&self) -> Option<u64> {
        self.request.limit
    }

    /// The plan of the batch after the row whose sort values are `after` (`None`: the first batch), of at
    /// most `limit` rows. Each row carries its sort values as hidden text columns after the encoded ones.
    pub fn batch(&self, after: Option<&[Option<String>]>, limit: u64, count: Option<CountMethod>) -> Plan {
        plan_keyset(&self.dataset, &self.request, self.format, after, limit, count)
    }
}

/// Up to `limit` matching rows after `after` in the request's order (with the key as tie-breaker), each
/// followed by its sort values as text.
pub(super) fn plan_keyset(
    dataset: &Dataset,
    request: &Request,
    format: Format,
    after: Option<&[Option<String>]>,
    limit: u64,
    count: Option<CountMethod>,
) -> Plan {
    let (mut sql, count) = filtered(dataset, request, count);
    let keyset = effective_order(dataset, request);
    if let Some(values) = after {
        let predicate = keyset_predicate(&mut sql, &keyset, values);
        sql.where_clauses.push(predicate);
    }
    let (expressions, columns) = select_list(dataset, &request.select, format);
    sql.into_plan(expressions, keyset, Some(limit), count, columns, true)
}

/// Rows strictly after `values` in the order `terms` (the last of which is the unique key):
/// `(a after va) OR (a = va AND b after vb) OR …`, with NULLs placed as each term says.
///
/// The key is taken as NOT NULL (a key with NULLs is no key; for tables this is checked at start-up), and so
/// are NOT NULL columns: `IS NULL` alternatives on them would stop Postgres (before 17) from using an index
/// range scan, making every batch of a chunked export rescan the rows before it. When every term is NOT NULL
/// and sorts the same way, the predicate is a row comparison, `(a, key) > ($1, $2)`, which an index on the
/// sort columns serves directly.
fn keyset_predicate(sql: &mut Sql<'_>, terms: &[OrderTerm], values: &[Option<String>]) -> String {
    let dataset = sql.dataset;
    let not_null = |term: &OrderTerm| Some(term.column) == dataset.key || !dataset.columns[term.column].nullable;
    let operator = |term: &OrderTerm| if term.descending { "<" } else { ">" };
    if let Some(first) = terms.first()
        && terms.iter().all(|t| not_null(t) && t.descending == first.descending)
        && values.iter().all(Option::is_some)
    {
        let (targets, placeholders): (Vec<String>, Vec<String>) = terms
            .iter()
            .zip(values.iter().flatten())
            .map(|(term, value)| {
                let column = &dataset.columns[term.column];
                (format!("t.{}", column.ident), sql.bind(value, column, "cursor"))
            })
            .unzip();
        return format!(
            "({}) {} ({})",
            targets.join(", "),
            operator(first),
            placeholders.join(", ")
        );
    }
    let mut alternatives = Vec::new();
    let mut equal_prefix: Vec<String> = Vec::new();
    for (term, value) in terms.iter().zip(values) {
        let column = &dataset.columns[term.column];
        let target = format!("t.{}", column.ident);
        let (after, equal) = match value {
            None => {
                let after = if term.nulls_first {
                    Some(format!("{target} IS NOT NULL"))
                } else {
                    None
                };
                (after, format!("{target} IS NULL"))
            }
            Some(value) => {
                let placeholder = sql.bind(value, column, "cursor");
                let comparison = format!("{target} {} {placeholder}", operator(term));
                let after = if term.nulls_first || not_null(term) {
                    comparison
                } else {
                    format!("({comparison} OR {target} IS NULL)")
                };
                (Some(after), format!("{target} = {placeholder}"))
            }
        };
        if let Some(after) = after {
            let mut conjunction = equal_prefix.clone();
            conjunction.push(after);
            alternatives.push(format!("({})", conjunction.join(" AND ")));
        }
        equal_prefix.push(equal);
    }
    if alternatives.is_empty() {
        "false".to_owned()
    } else {
        format!("({})", alternatives.join(" OR "))
    }
}
