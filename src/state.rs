//! The application's state: what every worker shares (the catalog, settings, the job store) and what each
//! worker owns (its connection pools). Built by `startup`, read by `routes` and `jobs`.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::db::Pool;
use crate::db::replicas::{Readers, ReplicaSet};

use crate::body::Chunking;
use crate::dataset::{Catalog, Dataset};
use crate::db::jobs::JobStore;
use crate::error::ApiError;
use crate::pipeline::Limits;
use crate::query::cursor::CursorKey;
use crate::settings::{JobSettings, PageSettings};

/// State shared by all workers.
pub(crate) struct AppState {
    /// The datasets and their OpenAPI document, replaced whole by a reload.
    pub(crate) published: ArcSwap<Published>,
    /// The statements that open an export's transaction.
    pub(crate) begin_sql: String,
    /// Body chunking.
    pub(crate) chunking: Chunking,
    /// Chunk size, compression levels and the largest value, for every export's pipeline.
    pub(crate) limits: Limits,
    /// Rows per batch of a chunked export.
    pub(crate) batch_rows: u64,
    /// Page limits.
    pub(crate) pages: PageSettings,
    /// How long a request waits for an export slot.
    pub(crate) acquire_timeout: std::time::Duration,
    /// Signs page cursors.
    pub(crate) cursor_key: CursorKey,
    /// Background export jobs, when configured.
    pub(crate) jobs: Option<JobsState>,
    /// Becomes `true` when a shutdown's grace period is over: running exports are cut then.
    pub(crate) cut: tokio::sync::watch::Receiver<bool>,
    /// The metrics.
    pub(crate) metrics: std::sync::Arc<crate::telemetry::metrics::Metrics>,
    /// The read replicas, when configured.
    pub(crate) replicas: Option<Arc<ReplicaSet>>,
    /// `[auth]`, when configured.
    pub(crate) auth: Option<crate::auth::Auth>,
}

/// What the `/v1/exports` routes need.
pub(crate) struct JobsState {
    /// The job table's statements.
    pub(crate) store: JobStore,
    /// Where the files are.
    pub(crate) storage: crate::jobs::Storage,
    /// The `[jobs]` settings.
    pub(crate) settings: JobSettings,
}

/// What the API serves: the catalog and the OpenAPI document describing it.
pub(crate) struct Published {
    /// The datasets.
    pub(crate) catalog: Catalog,
    /// The OpenAPI document, rendered.
    pub(crate) openapi: String,
}

impl AppState {
    /// The catalog as it is now.
    pub(crate) fn published(&self) -> Arc<Published> {
        self.published.load_full()
    }

    /// Serves `catalog` from now on; requests already running keep the datasets they found.
    pub(crate) fn publish(&self, catalog: Catalog) {
        let openapi = crate::openapi::document(&catalog, self.pages.max_limit, self.jobs.is_some()).to_string();
        self.published.store(Arc::new(Published { catalog, openapi }));
    }

    /// The dataset called `name`, or a 404.
    pub(crate) fn dataset(&self, name: &str) -> Result<Arc<Dataset>, ApiError> {
        self.published
            .load()
            .catalog
            .get(name)
            .ok_or_else(|| ApiError::UnknownDataset(name.to_owned()))
    }
}

/// One worker's connection pools. Each actix worker is a single-threaded runtime, and a connection's task
/// lives on the runtime that opened it; a pool per worker keeps a request and its connection on one thread.
pub(crate) struct Pools {
    /// Connections to the primary: the catalog, dataset descriptions, the job table.
    pub(crate) exports: Pool,
    /// Where `/rows`, `/page` and counts read: a healthy replica, else (if allowed) the primary.
    pub(crate) readers: Readers,
    /// One connection for `/readyz`.
    pub(crate) health: Pool,
    /// Limits concurrent exports, so they cannot take every connection from pages.
    pub(crate) export_slots: std::sync::Arc<tokio::sync::Semaphore>,
}
