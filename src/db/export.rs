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
use crate::query::{CountMethod, Plan};

/// A running export: its connection and the rows still to come.
pub struct Export {
    lease: Lease,
    rows: Pin<Box<RowStream>>,
    first: Option<Row>,
    /// The result is complete (a finished `RowStream` must not be polled again: it would report an error).
    ended: bool,
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
                lease,
                rows,
                first,
                ended,
            },
            total,
        ))
    }

    /// The next row; `None` once the result is complete.
    pub async fn next_row(&mut self) -> Result<Option<Row>, tokio_postgres::Error> {
        if let Some(row) = self.first.take() {
            return Ok(Some(row));
        }
        if self.ended {
            return Ok(None);
        }
        let next = self.rows.next().await.transpose()?;
        self.ended = next.is_none();
        Ok(next)
    }

    /// Ends a fully read export, returning its connection to the pool.
    pub async fn finish(self) -> Result<(), tokio_postgres::Error> {
        // Drop the row stream first: should any message of it remain, the connection then discards it
        // instead of waiting for a reader while COMMIT's answer queues behind it.
        let Export { lease, rows, .. } = self;
        drop(rows);
        lease.release().await
    }
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
