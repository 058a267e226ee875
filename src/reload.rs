//! Live catalog reload: on SIGHUP (the binary forwards it) and on `NOTIFY pgspout, 'reload'`, the catalog is
//! read again and swapped in whole. Running exports keep the datasets they started with; a reload that fails
//! keeps the old catalog and logs why.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use crate::db;
use crate::db::catalog::Sources;
use crate::report::chain;
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
        match self.connection.connect().await {
            Ok(client) => self.reload_on(&client, why).await,
            Err(error) => {
                let error = chain(&error);
                tracing::error!(why, %error, "catalog reload failed; still serving the previous catalog")
            }
        }
    }

    /// [`Reloader::reload`] over a connection already open (the listener's).
    async fn reload_on(&self, client: &tokio_postgres::Client, why: &str) {
        let _one_at_a_time = self.running.lock().await;
        let loaded = db::catalog::load(client, &self.sources).await.map_err(|e| chain(&e));
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
    /// backoff when the connection is lost. It reloads once listening, every time: a notification sent
    /// before (between startup's catalog read and the first LISTEN, or while the connection was down) was
    /// missed.
    pub(crate) async fn listen(self) {
        let mut backoff = Duration::from_millis(500);
        let mut reconnected = false;
        loop {
            match self.connection.named("pgspout listener").listen(CHANNEL).await {
                Ok((client, mut notifications)) => {
                    tracing::debug!(channel = CHANNEL, "listening for reload notifications");
                    backoff = Duration::from_millis(500);
                    self.reload_on(
                        &client,
                        if reconnected {
                            "the notification listener reconnected"
                        } else {
                            "the notification listener started (changes since startup)"
                        },
                    )
                    .await;
                    while let Some(notification) = notifications.next().await {
                        match notification.payload() {
                            "reload" | "" => self.reload_on(&client, "NOTIFY").await,
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
