//! A pooled connection lent to one borrower: back to the pool only when released outside a transaction,
//! otherwise discarded. Every checkout in pgspout goes through it ([`super::Pool`] hands out nothing else).
//!
//! A borrower can end early in many ways (client gone, a handler dropped between two statements, an error,
//! shutdown); in each the connection may still be mid-result or inside a transaction. Dropping a [`Lease`]
//! that was not released cancels the query and closes the socket, so Postgres stops at once and no later
//! borrower inherits a half-read result, an open transaction or another caller's role.

use deadpool_postgres::Object;
use tokio_postgres::{CancelToken, Client};

use super::tls::Tls;

/// A connection checked out for one request, export or job step.
pub(crate) struct Lease {
    object: Option<Object>,
    cancel: CancelToken,
    /// The cancel request goes over TLS like the connection.
    tls: Tls,
    /// Whether [`Lease::begin`] opened a transaction that [`Lease::release`] must commit.
    in_transaction: bool,
}

impl Lease {
    /// Takes responsibility for `object`.
    pub(crate) fn new(object: Object, tls: Tls) -> Self {
        let cancel = object.cancel_token();
        Lease {
            object: Some(object),
            cancel,
            tls,
            in_transaction: false,
        }
    }

    /// The connection. Transactions are opened with [`Lease::begin`] (or tokio-postgres's `transaction()`
    /// through [`Lease::client_mut`], which rolls back when dropped), never with a hand-written `BEGIN`.
    pub(crate) fn client(&self) -> &Client {
        self.object.as_ref().expect("only release and drop take the object")
    }

    /// The connection, for tokio-postgres's own transactions.
    pub(crate) fn client_mut(&mut self) -> &mut Client {
        self.object.as_mut().expect("only release and drop take the object")
    }

    /// Runs `sql`, which opens a transaction (with its settings, in one round trip); from here the lease
    /// goes back to the pool only through [`Lease::release`]'s COMMIT.
    pub(crate) async fn begin(&mut self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.in_transaction = true;
        self.client().batch_execute(sql).await
    }

    /// Commits the transaction [`Lease::begin`] opened, if any, and returns the connection to the pool.
    pub(crate) async fn release(mut self) -> Result<(), tokio_postgres::Error> {
        if self.in_transaction {
            self.client().batch_execute("COMMIT").await?;
        }
        drop(self.object.take());
        Ok(())
    }

    /// Returns a connection that never began a transaction to the pool.
    pub(super) fn give_back(mut self) {
        debug_assert!(!self.in_transaction, "a transaction ends with release");
        if !self.in_transaction {
            drop(self.object.take());
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(object) = self.object.take() else {
            return;
        };
        tracing::debug!("a borrower ended early: cancelling its query and discarding the connection");
        // The cancel request stops a backend that is busy before it next writes (a long sort, a scan that
        // filters everything); closing the socket stops one that is sending. The connection is never reused,
        // so a late cancel cannot hit another query.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (cancel, tls) = (self.cancel.clone(), self.tls.clone());
            runtime.spawn(async move {
                if let Err(error) = cancel.cancel_query(tls).await {
                    tracing::debug!(%error, "cancel request failed");
                }
            });
        }
        // Detached from the pool, the wrapper aborts its connection task on drop, which closes the socket.
        drop(Object::take(object));
    }
}
