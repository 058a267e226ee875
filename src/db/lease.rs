//! A pooled connection lent to one export: back to the pool only after a clean COMMIT, otherwise discarded.
//!
//! An export can end early in many ways (client gone, error, shutdown); in each the connection may still be
//! mid-result or inside the transaction. Dropping a [`Lease`] that was not released cancels the query and
//! closes the socket, so Postgres stops at once and no later borrower inherits a half-read result.

use deadpool_postgres::{ClientWrapper, Object};
use tokio_postgres::CancelToken;

use super::tls::Tls;

/// A connection checked out for one export.
pub(crate) struct Lease {
    object: Option<Object>,
    cancel: CancelToken,
    /// The cancel request goes over TLS like the connection.
    tls: Tls,
}

impl Lease {
    /// Takes responsibility for `object`.
    pub(crate) fn new(object: Object, tls: Tls) -> Self {
        let cancel = object.cancel_token();
        Lease {
            object: Some(object),
            cancel,
            tls,
        }
    }

    /// The connection.
    pub(crate) fn client(&self) -> &ClientWrapper {
        self.object.as_ref().expect("only release and drop take the object")
    }

    /// Commits the (read-only) transaction and returns the connection to the pool.
    pub(crate) async fn release(mut self) -> Result<(), tokio_postgres::Error> {
        self.client().batch_execute("COMMIT").await?;
        drop(self.object.take());
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(object) = self.object.take() else {
            return;
        };
        tracing::debug!("export ended early: cancelling its query and discarding the connection");
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
