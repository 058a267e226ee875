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

/// A running export: its connection and the rows still to come.
pub struct Export {
    lease: Lease,
    rows: Pin<Box<RowStream>>,
    first: Option<Row>,
}

/// Why an export could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Every connection stayed busy for the whole acquire timeout.
    #[error("every database connection is busy")]
    PoolExhausted,
    /// No connection could be made, or the server is shutting down or full.
    #[error("the database is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
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
    /// Checks out a connection, opens the transaction with `begin_sql`, runs `sql` and waits for its first row.
    pub async fn open(pool: &Pool, begin_sql: &str, sql: &str) -> Result<Export, OpenError> {
        let lease = Lease::new(pool.get().await?);
        let client = lease.client();
        client.batch_execute(begin_sql).await?;
        let statement = client.prepare_cached(sql).await?;
        let no_params: [&str; 0] = [];
        let mut rows = Box::pin(client.query_raw(&statement, no_params).await?);
        let first = rows.next().await.transpose()?;
        Ok(Export { lease, rows, first })
    }

    /// The next row; `None` once the result is complete.
    pub async fn next_row(&mut self) -> Result<Option<Row>, tokio_postgres::Error> {
        if let Some(row) = self.first.take() {
            return Ok(Some(row));
        }
        self.rows.next().await.transpose()
    }

    /// Ends a fully read export, returning its connection to the pool.
    pub async fn finish(self) -> Result<(), tokio_postgres::Error> {
        self.lease.release().await
    }
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
