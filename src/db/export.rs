//! Opening an export (lease, read-only transaction, query, first row) and reading its rows.
//!
//! The first row is awaited before any response is sent, so a failing query still gets a proper status.

use std::pin::Pin;

use deadpool_postgres::{Pool, PoolError};
use futures::StreamExt;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Row, RowStream};

use super::lease::Lease;
use crate::encode::{Cells, EncodeError};
use crate::query::{CountMethod, KeysetScan, Plan};

/// A running export: its connection and the rows still to come.
pub struct Export {
    /// The connection; away in `next` while a new batch starts.
    lease: Option<Lease>,
    rows: Pin<Box<RowStream>>,
    first: Option<Row>,
    /// The result is complete (a finished `RowStream` must not be polled again: it would report an error).
    ended: bool,
    /// Set when the export reads in keyset batches rather than one statement.
    batches: Option<Batches>,
    /// The next batch being started. Kept here, not in a local, because `next_row` must be cancel-safe: the
    /// body polls it with timeouts, and a dropped half-started batch would be lost.
    next: Option<NextBatch>,
}

/// Starting a batch: the connection travels with the future and comes back with the result.
type NextBatch = Pin<Box<dyn Future<Output = (Lease, Result<RowStream, tokio_postgres::Error>)> + Send>>;

/// The state of an export read in keyset batches, each in a transaction of its own on the same connection.
struct Batches {
    scan: KeysetScan,
    begin_sql: String,
    /// The current batch's row limit, and how many of its rows have been read.
    limit: u64,
    read: u64,
    /// Rows the request's `limit` still allows after the current batch; `None`: no limit.
    remaining: Option<u64>,
    /// Where the last row read sits in the sort order.
    last: Position,
}

/// The sort values of the last row seen: a keyset plan's hidden text columns after the encoded ones. The buffers
/// are reused from row to row.
pub struct Position {
    values: Vec<Option<Vec<u8>>>,
    /// Index of the first hidden column.
    hidden: usize,
}

impl Position {
    /// Tracks the rows of a plan with `encoded` encoded columns.
    pub fn new(encoded: usize) -> Position {
        Position {
            values: Vec::new(),
            hidden: encoded,
        }
    }

    /// Remembers `row`'s sort values.
    pub fn note(&mut self, row: &Row) -> Result<(), tokio_postgres::Error> {
        self.values.resize_with(row.len() - self.hidden, || None);
        for (slot, index) in self.values.iter_mut().zip(self.hidden..) {
            match row.try_get::<_, Option<Raw<'_>>>(index)? {
                Some(raw) => {
                    let buffer = slot.get_or_insert_with(Vec::new);
                    buffer.clear();
                    buffer.extend_from_slice(raw.0);
                }
                None => *slot = None,
            }
        }
        Ok(())
    }

    /// The last row's sort values as text (a keyset plan's `after`).
    pub fn values(&self) -> Vec<Option<String>> {
        self.values
            .iter()
            .map(|value| value.as_ref().map(|raw| String::from_utf8_lossy(raw).into_owned()))
            .collect()
    }
}

/// Why an export could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Every connection stayed busy for the whole acquire timeout.
    #[error("every database connection is busy")]
    PoolExhausted,
    /// Every export slot stayed busy for the whole acquire timeout.
    #[error("the maximum number of concurrent exports is running")]
    ExportsBusy,
    /// No connection could be made, or the server is shutting down or full.
    #[error("the database is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A request value does not parse as its column's type.
    #[error("query parameter {parameter:?}: {message}")]
    InvalidValue {
        /// The query parameter.
        parameter: String,
        /// Postgres's message, which quotes the value and names the type.
        message: String,
    },
    /// The query ran into `statement_timeout`.
    #[error("the query exceeded the statement timeout")]
    StatementTimeout(#[source] tokio_postgres::Error),
    /// The database refused the query for lack of privileges.
    #[error("the database role may not read this dataset")]
    Forbidden(#[source] tokio_postgres::Error),
    /// Any other failure of the query.
    #[error("the query failed")]
    Query(#[source] tokio_postgres::Error),
}

impl From<PoolError> for OpenError {
    fn from(error: PoolError) -> Self {
        match error {
            PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => OpenError::PoolExhausted,
            PoolError::Backend(error) => OpenError::from(error),
            other => OpenError::Unavailable(Box::new(other)),
        }
    }
}

impl From<tokio_postgres::Error> for OpenError {
    fn from(error: tokio_postgres::Error) -> Self {
        let Some(code) = error.code() else {
            // No SQLSTATE: the connection itself failed.
            return OpenError::Unavailable(Box::new(error));
        };
        if *code == SqlState::QUERY_CANCELED {
            OpenError::StatementTimeout(error)
        } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
            OpenError::Forbidden(error)
        } else if code.code().starts_with("53") // insufficient resources, e.g. too many connections
            || code.code().starts_with("57P")   // admin shutdown, crash shutdown, cannot connect now
            || code.code().starts_with("08")
        {
            OpenError::Unavailable(Box::new(error))
        } else {
            OpenError::Query(error)
        }
    }
}

impl Export {
    /// Like [`Export::open`], for an export read in keyset batches: each batch is a short statement in a
    /// transaction of its own, so no snapshot is held for the whole download. The count, if any, runs with the
    /// first batch.
    pub async fn open_chunked(
        pool: &Pool,
        begin_sql: &str,
        scan: KeysetScan,
        count: Option<CountMethod>,
    ) -> Result<(Export, Option<i64>), OpenError> {
        let limit = batch_limit(scan.batch_rows, scan.limit());
        let plan = scan.batch(None, limit, count);
        let (mut export, total) = Self::open(pool, begin_sql, &plan).await?;
        export.batches = Some(Batches {
            remaining: scan.limit().map(|l| l - limit),
            scan,
            begin_sql: begin_sql.to_owned(),
            limit,
            read: 0,
            last: Position::new(plan.columns.len()),
        });
        if let (Some(row), Some(batches)) = (&export.first, export.batches.as_mut()) {
            batches.note(row)?;
        }
        Ok((export, total))
    }

    /// Checks out a connection, opens the transaction with `begin_sql`, checks the plan's values, runs its
    /// count (in the same snapshot as the rows) and its query, and waits for the first row.
    pub async fn open(pool: &Pool, begin_sql: &str, plan: &Plan) -> Result<(Export, Option<i64>), OpenError> {
        let lease = Lease::new(pool.get().await?);
        let client = lease.client();
        client.batch_execute(begin_sql).await?;
        for check in &plan.checks {
            if let Err(error) = client.query_typed(&check.sql, &[(&check.value, Type::TEXT)]).await {
                return Err(match error.as_db_error() {
                    Some(db) if db.code().code().starts_with("22") => OpenError::InvalidValue {
                        parameter: check.parameter.clone(),
                        message: db.message().to_owned(),
                    },
                    _ => OpenError::from(error),
                });
            }
        }
        let total = match &plan.count {
            None => None,
            Some(count) => {
                let params = text_params(&plan.params[..count.params]);
                let row = client.query_typed_raw(&count.sql, params).await?;
                let rows: Vec<Row> = futures::TryStreamExt::try_collect(row).await?;
                let first = rows
                    .first()
                    .ok_or_else(|| OpenError::Unavailable("the count returned no row".into()))?;
                Some(match count.method {
                    CountMethod::Exact => first.try_get::<_, i64>(0)?,
                    CountMethod::Estimated => planned_rows(first.try_get::<_, Raw<'_>>(0)?.0)
                        .ok_or_else(|| OpenError::Unavailable("EXPLAIN gave no row estimate".into()))?,
                })
            }
        };
        // Prepared first, not `query_typed_raw`: that pipelines the execution with the description, and a
        // result type the connection does not know yet (an enum, a domain) is then looked up by a query queued
        // behind rows that nobody reads yet — a deadlock. Uncached, as filters make every SQL text different.
        let types = vec![Type::TEXT; plan.params.len()];
        let statement = client.prepare_typed(&plan.sql, &types).await?;
        let params = plan.params.iter().map(String::as_str);
        let mut rows = Box::pin(client.query_raw(&statement, params).await?);
        let first = rows.next().await.transpose()?;
        let ended = first.is_none();
        Ok((
            Export {
                lease: Some(lease),
                rows,
                first,
                ended,
                batches: None,
                next: None,
            },
            total,
        ))
    }

    /// The next row; `None` once the result is complete.
    pub async fn next_row(&mut self) -> Result<Option<Row>, tokio_postgres::Error> {
        if let Some(row) = self.first.take() {
            return Ok(Some(row));
        }
        loop {
            if let Some(next) = self.next.as_mut() {
                let (lease, rows) = next.await;
                self.next = None;
                self.lease = Some(lease);
                self.rows = Box::pin(rows?);
                self.ended = false;
            }
            if self.ended {
                return Ok(None);
            }
            match self.rows.next().await.transpose()? {
                Some(row) => {
                    self.note(&row)?;
                    return Ok(Some(row));
                }
                None => {
                    self.ended = true;
                    self.next = self.next_batch();
                }
            }
        }
    }

    /// In a batched export, remembers `row`'s sort values: the next batch starts after them.
    fn note(&mut self, row: &Row) -> Result<(), tokio_postgres::Error> {
        match self.batches.as_mut() {
            Some(batches) => batches.note(row),
            None => Ok(()),
        }
    }

    /// After a full batch: the start of the next one, in a new transaction (so with a fresh snapshot).
    fn next_batch(&mut self) -> Option<NextBatch> {
        let batches = self.batches.as_mut()?;
        // A short batch was the last; so was one that used up the request's limit.
        if batches.read < batches.limit || batches.remaining == Some(0) {
            return None;
        }
        let limit = batch_limit(batches.scan.batch_rows, batches.remaining);
        let plan = batches.scan.batch(Some(&batches.last.values()), limit, None);
        batches.remaining = batches.remaining.map(|r| r - limit);
        batches.limit = limit;
        batches.read = 0;
        let lease = self.lease.take().expect("the lease is home between batches");
        let begin = format!("COMMIT; {}", batches.begin_sql);
        Some(Box::pin(async move {
            let rows = start_batch(&lease, &begin, &plan).await;
            (lease, rows)
        }))
    }

    /// Ends a fully read export, returning its connection to the pool.
    pub async fn finish(self) -> Result<(), tokio_postgres::Error> {
        // Drop the row stream first: should any message of it remain, the connection then discards it
        // instead of waiting for a reader while COMMIT's answer queues behind it.
        let Export { lease, rows, .. } = self;
        drop(rows);
        lease.expect("a finished export is not between batches").release().await
    }
}

impl Batches {
    fn note(&mut self, row: &Row) -> Result<(), tokio_postgres::Error> {
        self.read += 1;
        self.last.note(row)
    }
}

/// Commits the last batch's transaction, opens the next, and runs the batch's query.
async fn start_batch(lease: &Lease, begin: &str, plan: &Plan) -> Result<RowStream, tokio_postgres::Error> {
    let client = lease.client();
    client.batch_execute(begin).await?;
    let types = vec![Type::TEXT; plan.params.len()];
    let statement = client.prepare_typed(&plan.sql, &types).await?;
    client
        .query_raw(&statement, plan.params.iter().map(String::as_str))
        .await
}

/// The row limit of the next batch: a full batch, or what the request's limit leaves.
fn batch_limit(batch_rows: u64, remaining: Option<u64>) -> u64 {
    remaining.map_or(batch_rows, |r| r.min(batch_rows))
}

/// Request values travel as text; the SQL casts each to its column's type.
fn text_params(params: &[String]) -> impl Iterator<Item = (&str, Type)> {
    params.iter().map(|p| (p.as_str(), Type::TEXT))
}

/// The planner's estimate of the rows in `relation` (quoted SQL from the catalog).
pub async fn estimate_rows(
    client: &tokio_postgres::Client,
    relation: &str,
) -> Result<Option<i64>, tokio_postgres::Error> {
    let rows = client
        .query_typed(&format!("EXPLAIN (FORMAT JSON) SELECT 1 FROM {relation}"), &[])
        .await?;
    Ok(match rows.first() {
        Some(row) => planned_rows(row.try_get::<_, Raw<'_>>(0)?.0),
        None => None,
    })
}

/// The top plan node's row estimate from `EXPLAIN (FORMAT JSON)` output (binary `json` is its text).
fn planned_rows(explain: &[u8]) -> Option<i64> {
    let plans: serde_json::Value = serde_json::from_slice(explain).ok()?;
    plans
        .get(0)?
        .get("Plan")?
        .get("Plan Rows")?
        .as_f64()
        .map(|rows| rows as i64)
}

/// Any column's raw binary bytes.
struct Raw<'a>(&'a [u8]);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

impl Cells for Row {
    #[inline]
    fn cell(&self, index: usize) -> Result<Option<&[u8]>, EncodeError> {
        self.try_get::<_, Option<Raw<'_>>>(index)
            .map(|raw| raw.map(|r| r.0))
            .map_err(|_| EncodeError::Unreadable(index))
    }
}
