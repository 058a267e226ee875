//! Keyset reading: a row's position in a sort order, the predicate "after this position", and exports read
//! as keyset batches.

use serde::{Deserialize, Serialize};

use super::params::OrderTerm;
use super::{CountMethod, Plan, Request, Sql, effective_order, filtered, select_list};
use crate::dataset::Dataset;
use crate::encode::{EncodedColumn, Format};

/// Where a row sits in a keyset order: its value of each sort term, as the type's output function prints it
/// (`None` is NULL). Chunked exports continue after one, page cursors carry one, job checkpoints store one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Position(pub(crate) Vec<Option<String>>);

/// A request read as keyset batches (chunked exports, background jobs): the plan of each batch, and where
/// the scan starts.
#[derive(Clone, Debug)]
pub(crate) struct KeysetScan {
    dataset: Dataset,
    request: Request,
    format: Format,
    /// Rows per batch.
    batch_rows: u64,
    /// The scan starts after this position (a resumed job); `None`: from the beginning.
    start: Option<Position>,
    /// The most rows all batches together return (the request's `limit`, less what was read before).
    limit: Option<u64>,
}

impl KeysetScan {
    /// A scan of `request` over `dataset` (which must have a key) in `batch_rows`-row batches.
    pub(crate) fn new(dataset: &Dataset, request: &Request, format: Format, batch_rows: u64) -> KeysetScan {
        debug_assert!(
            dataset.key.is_some() && request.summary.is_none(),
            "a keyset scan needs a key"
        );
        KeysetScan {
            dataset: dataset.clone(),
            request: request.clone(),
            format,
            batch_rows: batch_rows.max(1),
            start: None,
            limit: request.limit,
        }
    }

    /// The same scan, continued after `position` with `read` of its rows already read.
    pub(crate) fn resumed(mut self, position: Option<Position>, read: u64) -> KeysetScan {
        self.start = position;
        self.limit = self.limit.map(|limit| limit.saturating_sub(read));
        self
    }

    /// The encoded columns of every batch.
    pub(crate) fn columns(&self) -> Vec<EncodedColumn> {
        select_list(&self.dataset, &self.request.select, self.format).1
    }

    /// The most rows the scan still returns.
    pub(crate) fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// Rows per batch.
    pub(crate) fn batch_rows(&self) -> u64 {
        self.batch_rows
    }

    /// Where the scan starts.
    pub(crate) fn start(&self) -> Option<&Position> {
        self.start.as_ref()
    }

    /// The plan of the batch after `after` (`None`: from the very beginning), of at most `limit` rows. Each
    /// row carries its position as hidden text columns after the encoded ones.
    pub(crate) fn batch(&self, after: Option<&Position>, limit: u64, count: Option<CountMethod>) -> Plan {
        plan_keyset(&self.dataset, &self.request, self.format, after, Some(limit), count)
    }
}

/// The matching rows after `after` in the request's order (with the key as tie-breaker), up to `limit`,
/// each followed by its position.
pub(super) fn plan_keyset(
    dataset: &Dataset,
    request: &Request,
    format: Format,
    after: Option<&Position>,
    limit: Option<u64>,
    count: Option<CountMethod>,
) -> Plan {
    let (mut sql, count) = filtered(dataset, request, count);
    let keyset = effective_order(dataset, request);
    if let Some(after) = after {
        let predicate = keyset_predicate(&mut sql, &keyset, &after.0);
        sql.where_clauses.push(predicate);
    }
    let (expressions, columns) = select_list(request.output(dataset), &request.select, format);
    sql.into_plan(expressions, keyset, limit, count, columns, true)
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
