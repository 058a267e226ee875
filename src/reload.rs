//! Live catalog reload: on SIGHUP (the binary forwards it) and on `NOTIFY pgspout, 'reload'`, the catalog is
//! read again and swapped in whole. Running exports keep the datasets they started with; a reload that fails
//! keeps the old catalog and logs why.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use crate::db;
use crate::db::catalog::Sources;
use crate::error::chain;
use crate::state::AppState;

/// The channel pgspout listens on, as PostgREST listens on `pgrst`.
pub const CHANNEL: &str = "pgspout";

/// Reads the catalog again on request. Cheap to clone; reloads run one at a time.
#[derive(Clone)]
pub struct Reloader {
    state: Arc<AppState>,
    connection: db::Connection,
    sources: Arc<Sources>,
    running: Arc<tokio::sync::Mutex<()>>,
}

impl Reloader {
    pub(crate) fn new(state: Arc<AppState>, connection: db::Connection, sources: Sources) -> Reloader {
        Reloader {
            state,
            connection,
            sources: Arc::new(sources),
            running: Arc::default(),
        }
    }

    /// Reads the catalog and serves it; `why` is logged. On failure the old catalog stays and the error is
    /// logged.
    pub async fn reload(&self, why: &str) {
        let _one_at_a_time = self.running.lock().await;
        let loaded = async {
            let client = self.connection.connect().await.map_err(|e| chain(&e))?;
            db::catalog::load(&client, &self.sources).await.map_err(|e| chain(&e))
        }
        .await;
        match loaded {
            Ok(catalog) => {
                let old = self.state.published().catalog.names();
                let new = catalog.names();
                let added: Vec<&String> = new.iter().filter(|n| !old.contains(n)).collect();
                let removed: Vec<&String> = old.iter().filter(|n| !new.contains(n)).collect();
                self.state.publish(catalog);
                tracing::info!(why, datasets = new.len(), ?added, ?removed, "catalog reloaded");
            }
            Err(error) => {
                tracing::error!(why, %error, "catalog reload failed; still serving the previous catalog")
            }
        }
    }

    /// Listens for `NOTIFY pgspout, 'reload'` on its own connection until dropped, reconnecting with a
    /// backoff when the connection is lost, and reloading after every reconnect (a notification may have
    /// been missed while it was down).
    pub(crate) async fn listen(self) {
        let mut backoff = Duration::from_millis(500);
        let mut reconnected = false;
        loop {
            match self.connection.named("pgspout listener").listen(CHANNEL).await {
                Ok((_client, mut notifications)) => {
                    tracing::debug!(channel = CHANNEL, "listening for reload notifications");
                    backoff = Duration::from_millis(500);
                    if reconnected {
                        self.reload("the notification listener reconnected").await;
                    }
                    while let Some(notification) = notifications.next().await {
                        match notification.payload() {
                            "reload" | "" => {
                                self.reload("NOTIFY").await;
                            }
                            other => tracing::warn!(payload = other, "ignoring a notification on pgspout's channel"),
                        }
                    }
                    tracing::warn!("the notification listener lost its connection; reconnecting");
                }
                Err(error) => {
                    tracing::warn!(error = %chain(&error), retry_in = ?backoff, "cannot listen for reload notifications")
                }
            }
            reconnected = true;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
}
