//! Wiring: resolve the datasets, bind the listener, build one connection pool per worker, run the server.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};

use crate::body::Chunking;
use crate::db;
pub use crate::db::catalog::CatalogError;
use crate::query::cursor::CursorKey;
use crate::reload::Reloader;
use crate::routes;
use crate::settings::Settings;
use crate::state::{AppState, JobsState, Pools, Published};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::request::Telemetry;

/// Why pgspout could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The settings are invalid (every way to start validates them, not only `Settings::load`).
    #[error(transparent)]
    Settings(#[from] crate::settings::SettingsError),
    /// `database.url` or the TLS settings are unusable.
    #[error(transparent)]
    Connection(#[from] db::ConnectionError),
    /// The database could not be reached to check the datasets.
    #[error("cannot connect to the database to check the datasets")]
    Connect(#[source] tokio_postgres::Error),
    /// A replica is down, lagging or not a standby (`pgspout check` only; `serve` skips it).
    #[error("{0}")]
    Replicas(String),
    /// `[auth]` keys could not be loaded.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthSetupError),
    /// A role of `[auth]` is missing or out of reach.
    #[error("{0}")]
    Role(String),
    /// A dataset does not match the database.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The job schema could not be created or migrated.
    #[error("cannot migrate the job schema {schema:?}")]
    Migrate {
        /// The schema.
        schema: String,
        /// The database error.
        source: tokio_postgres::Error,
    },
    /// The job directory could not be created.
    #[error("cannot create the job directory {directory}")]
    JobDirectory {
        /// The directory.
        directory: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `jobs.storage` names no usable object store.
    #[error("jobs.storage: {0}")]
    Storage(String),
    /// The object store refuses what jobs need (writing, reading back, deleting an object).
    #[error("jobs.storage {location}: cannot write, read back and delete an object")]
    StorageRefused {
        /// `jobs.storage`.
        location: String,
        /// The failed request.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {address}")]
    Listen {
        /// The address.
        address: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A built server, bound but not yet running.
pub struct Application {
    port: u16,
    server: Server,
    /// `/metrics` on `server.metrics_listen`, and its port.
    metrics_server: Option<(u16, Server)>,
    /// Arrow Flight's bound listener on `server.flight_listen`; served from `run_until_stopped`.
    flight_listener: Option<TcpListener>,
    export_slots: usize,
    /// The job runner, when jobs are on, starts with the server and needs these.
    state: Arc<AppState>,
    connection: db::Connection,
    database: crate::settings::DatabaseSettings,
    reloader: Reloader,
    /// Tells running exports that the shutdown grace period is over.
    cut: tokio::sync::watch::Sender<bool>,
    shutdown_grace: std::time::Duration,
}

impl Application {
    /// Validates `settings`, checks every dataset against the database, binds the listener and builds the
    /// server.
    pub async fn build(settings: Settings) -> Result<Application, StartupError> {
        let (connection, mut client, catalog) = connect_and_load(&settings).await?;
        let auth = match &settings.auth {
            Some(auth_settings) => {
                let auth = crate::auth::Auth::new(auth_settings).await?;
                check_roles(&client, &auth).await?;
                if let Some(function) = &auth_settings.pre_request {
                    let found: bool = client
                        .query_one("SELECT pg_catalog.to_regproc($1) IS NOT NULL", &[function])
                        .await
                        .map_err(StartupError::Connect)?
                        .get(0);
                    if !found {
                        return Err(StartupError::Role(format!(
                            "auth.pre_request: no function {function:?} (or more than one of that name)"
                        )));
                    }
                }
                Some(auth)
            }
            None => {
                tracing::warn!(
                    "serving without authentication: every client reads as pgspout's own role ([auth] is not set)"
                );
                None
            }
        };
        let replicas = db::replicas::ReplicaSet::new(&settings.database)?.map(Arc::new);
        if let Some(set) = &replicas {
            set.check_once(&connection, settings.database.connect_timeout).await;
        }
        let jobs = match job_storage(&settings.jobs)? {
            Some(storage) => {
                let schema = settings.jobs.schema.clone();
                db::jobs::migrate(&mut client, &schema)
                    .await
                    .map_err(|source| StartupError::Migrate { schema, source })?;
                Some(JobsState {
                    store: db::jobs::JobStore::new(&settings.jobs.schema, &settings.jobs.webhooks),
                    storage,
                    settings: settings.jobs.clone(),
                })
            }
            None => None,
        };
        drop(client);

        let address = settings.server.listen.clone();
        let listener = TcpListener::bind(&address).map_err(|source| StartupError::Listen { address, source })?;
        let port = listener
            .local_addr()
            .map_err(|source| StartupError::Listen {
                address: settings.server.listen.clone(),
                source,
            })?
            .port();
        let (cut, exports_cut) = tokio::sync::watch::channel(false);
        let metrics = Arc::new(Metrics::new());
        if let Some(set) = &replicas {
            metrics.watch_replicas(set.clone());
        }
        let state = Arc::new(AppState {
            begin_sql: db::begin_sql(&settings.database),
            chunking: Chunking {
                flush_interval: settings.export.flush_interval,
                stall_timeout: settings.export.stall_timeout,
                max_duration: settings.export.max_duration,
            },
            limits: crate::pipeline::Limits {
                levels: settings.compression.clone(),
                chunk_size: settings.export.chunk_size,
                max_value_bytes: settings.export.max_value_bytes,
            },
            batch_rows: settings.export.batch_rows,
            pages: settings.pages.clone(),
            acquire_timeout: settings.database.acquire_timeout,
            cursor_key: match &settings.pages.cursor_secret {
                Some(secret) => CursorKey::new(secret.as_bytes()),
                None => CursorKey::random(),
            },
            published: arc_swap::ArcSwap::from_pointee(Published {
                catalog: Default::default(),
                openapi: String::new(),
            }),
            jobs,
            cut: exports_cut,
            metrics: metrics.clone(),
            replicas,
            auth,
        });
        state.publish(catalog);
        // Kept for the job runner, which starts with the server; the originals move into the workers' factory.
        let (runner_state, runner_connection) = (state.clone(), connection.clone());
        let reloader = Reloader::new(state.clone(), connection.clone(), catalog_sources(&settings));
        let database = settings.database.clone();
        let export_slots = settings.export_slots();
        let stall_timeout = settings.export.stall_timeout;
        let metrics_apart = settings.server.metrics_listen.is_some();
        let cors_settings = settings.server.cors.clone();
        let app_metrics = metrics.clone();
        let server = HttpServer::new(move || {
            let exports = db::pool(&connection, &database, database.pool_size);
            let readers =
                db::replicas::Readers::new(exports.clone(), state.replicas.as_ref(), &database, database.pool_size);
            let pools = Pools {
                exports,
                readers,
                health: db::pool(&connection, &database, 1),
                export_slots: std::sync::Arc::new(tokio::sync::Semaphore::new(export_slots)),
            };
            let mut watched = vec![pools.exports.clone()];
            watched.extend(pools.readers.replica_pools().iter().cloned());
            app_metrics.watch_pool(watched, pools.export_slots.clone());
            let cors = cors_settings
                .as_ref()
                .map(|c| std::rc::Rc::new(crate::cors::Cors::new(c)));
            App::new()
                .wrap(actix_web::middleware::from_fn(move |request, next| {
                    crate::cors::cors(cors.clone(), request, next)
                }))
                .wrap(Telemetry::new(app_metrics.clone()))
                .app_data(web::Data::from(state.clone()))
                .app_data(web::Data::from(app_metrics.clone()))
                .app_data(web::Data::new(pools))
                .configure(|config| routes::configure(config, !metrics_apart))
        })
        // A client that stops reading leaves actix waiting to write, with no timeout of its own; the kernel's
        // user timeout (which also bounds zero-window probes) closes such a connection. The export's own stall
        // detection (which frees the backend and records the stall) must come first, but the kernel's clock
        // starts when the client's window closes, and the export's only once the server's send buffer (up to
        // 4 MiB) has filled too: on a loaded machine that takes seconds. Hence twice the stall timeout, and
        // ten seconds more.
        .on_connect(move |connection, _| {
            let user_timeout = stall_timeout
                .saturating_mul(2)
                .saturating_add(std::time::Duration::from_secs(10));
            if let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>()
                && let Err(error) = socket2::SockRef::from(stream).set_tcp_user_timeout(Some(user_timeout))
            {
                tracing::debug!(%error, "cannot set TCP_USER_TIMEOUT");
            }
        })
        .workers(settings.workers())
        // A client that closes its side must drop its export at once, not hold a connection until Postgres
        // has produced more rows.
        .h1_allow_half_closed(false)
        // A backstop only, well past the grace period: exports are cut at its end (`run_until_stopped`),
        // sub-second too, where actix counts whole seconds.
        .shutdown_timeout(settings.server.shutdown_grace.as_secs() + 5)
        // Stopping is the caller's choice (`run_until_stopped`): SIGINT must drain like SIGTERM, where actix
        // would stop at once, and tests must not take over the test process's signals.
        .disable_signals()
        .listen(listener)
        .map_err(|source| StartupError::Listen {
            address: settings.server.listen.clone(),
            source,
        })?
        .run();
        tracing::info!(%port, workers = settings.workers(), "listening");
        let metrics_server = match &settings.server.metrics_listen {
            Some(address) => Some(metrics_server(address, metrics)?),
            None => None,
        };
        let flight_listener = match &settings.server.flight_listen {
            Some(address) => Some(TcpListener::bind(address).map_err(|source| StartupError::Listen {
                address: address.clone(),
                source,
            })?),
            None => None,
        };
        Ok(Application {
            port,
            server,
            metrics_server,
            flight_listener,
            export_slots: settings.export_slots(),
            state: runner_state,
            connection: runner_connection,
            database: settings.database.clone(),
            reloader,
            cut,
            shutdown_grace: settings.server.shutdown_grace,
        })
    }

    /// The port actually bound (useful with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of `server.metrics_listen`, when set.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_server.as_ref().map(|(port, _)| *port)
    }

    /// The port of `server.flight_listen`, when set.
    pub fn flight_port(&self) -> Option<u16> {
        self.flight_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
            .map(|address| address.port())
    }

    /// What reads the catalog again (the binary calls it on SIGHUP; `NOTIFY pgspout, 'reload'` does too).
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Serves until `shutdown` resolves; then stops accepting, lets running requests finish within
    /// `server.shutdown_grace`, and cuts the rest (visibly: their bodies end without the terminating chunk).
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let listener = tokio::spawn(self.reloader.listen());
        let monitor = self
            .state
            .replicas
            .clone()
            .map(|set| tokio::spawn(set.monitor(self.connection.clone(), self.database.connect_timeout)));
        let flight = match self.flight_listener {
            Some(listener) => {
                let port = listener.local_addr()?.port();
                let server = crate::flight::FlightServer::start(
                    self.state.clone(),
                    listener,
                    self.connection.clone(),
                    &self.database,
                    self.export_slots,
                )?;
                tracing::info!(%port, "serving Arrow Flight");
                Some(server)
            }
            None => None,
        };
        let runner = match &self.state.jobs {
            Some(jobs) => Some(crate::jobs::Runner::start(
                self.state.clone(),
                jobs,
                self.connection,
                &self.database,
            )?),
            None => None,
        };
        let handle = self.server.handle();
        let metrics_handle = self.metrics_server.as_ref().map(|(_, server)| server.handle());
        let (cut, grace) = (self.cut, self.shutdown_grace);
        tokio::spawn(async move {
            shutdown.await;
            listener.abort();
            if let Some(monitor) = monitor {
                monitor.abort();
            }
            tracing::info!("shutting down: no new connections; running exports may finish within the grace period");
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                let _ = cut.send(true);
            });
            // Jobs go back to the queue at their last checkpoint, for another instance or the next start.
            let stopping = async {
                if let Some(runner) = runner {
                    runner.stop().await;
                }
            };
            let flight_stopping = async {
                if let Some(flight) = flight {
                    // Calls still running when the grace period ends are cut with the exports; a client that
                    // keeps its connection open after that does not hold the shutdown up.
                    let limit = grace + std::time::Duration::from_secs(5);
                    if tokio::time::timeout(limit, flight.stop()).await.is_err() {
                        tracing::warn!("Arrow Flight calls outlasted the shutdown grace period; leaving them");
                    }
                }
            };
            let stopping = async { tokio::join!(stopping, flight_stopping) };
            tokio::join!(handle.stop(true), stopping);
            // Metrics stay scrapeable until the exports are done.
            if let Some(metrics) = metrics_handle {
                metrics.stop(true).await;
            }
        });
        match self.metrics_server {
            Some((_, metrics)) => futures::try_join!(self.server, metrics).map(|_| ()),
            None => self.server.await,
        }
    }
}

/// Connects as `settings` say and resolves every dataset against the database.
async fn connect_and_load(
    settings: &Settings,
) -> Result<(db::Connection, tokio_postgres::Client, crate::dataset::Catalog), StartupError> {
    settings.validate()?;
    let connection = db::connection(&settings.database)?;
    let client = connection.connect().await.map_err(StartupError::Connect)?;
    let catalog = db::catalog::load(&client, &catalog_sources(settings)).await?;
    Ok((connection, client, catalog))
}

/// Checks that the anonymous role and every API key's role exist and that pgspout's login role may switch
/// to them, naming the GRANT that is missing.
async fn check_roles(client: &tokio_postgres::Client, auth: &crate::auth::Auth) -> Result<(), StartupError> {
    for (key, role) in auth.fixed_roles() {
        let row = client
            .query_one(
                "SELECT current_user::text, EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1), \
                 EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1 AND pg_catalog.pg_has_role(current_user, oid, 'MEMBER'))",
                &[&role],
            )
            .await
            .map_err(StartupError::Connect)?;
        let (login, exists, member): (String, bool, bool) = (row.get(0), row.get(1), row.get(2));
        if !exists {
            return Err(StartupError::Role(format!("{key}: role {role:?} does not exist")));
        }
        if !member {
            return Err(StartupError::Role(format!(
                "{key}: role {login:?} may not switch to role {role:?}; run: GRANT {} TO {}",
                postgres_protocol::escape::escape_identifier(&role),
                postgres_protocol::escape::escape_identifier(&login)
            )));
        }
    }
    Ok(())
}

/// Where the catalog comes from, as `settings` say.
fn catalog_sources(settings: &Settings) -> db::catalog::Sources {
    db::catalog::Sources {
        datasets: settings.datasets.clone(),
        schemas: settings.served_schemas(),
        hidden_schema: settings.jobs.enabled().then(|| settings.jobs.schema.clone()),
        utc: db::is_utc(&settings.database.timezone),
        query: settings.query.clone(),
    }
}

/// `pgspout check`: connects with `settings` as `serve` would, loads the catalog, and describes every dataset it
/// would serve (name, relation, key, columns with their types). Changes nothing in the database.
pub async fn check(settings: &Settings) -> Result<String, StartupError> {
    use std::fmt::Write as _;
    let (connection, _, catalog) = connect_and_load(settings).await?;
    let mut report = String::new();
    let mut problems = Vec::new();
    if let Some(set) = db::replicas::ReplicaSet::new(&settings.database)? {
        set.check_once(&connection, settings.database.connect_timeout).await;
        for replica in set.replicas() {
            let health = replica.health();
            let _ = writeln!(report, "replica {}: {health}", replica.address);
            if !matches!(health, db::replicas::Health::Healthy(_)) {
                problems.push(format!("replica {}: {health}", replica.address));
            }
        }
    }
    if !problems.is_empty() {
        return Err(StartupError::Replicas(problems.join("; ")));
    }
    let _ = writeln!(report, "connected; {} dataset(s):", catalog.names().len());
    for dataset in catalog.iter() {
        let key = dataset
            .key
            .map_or("none".to_owned(), |k| dataset.columns[k].name.clone());
        let _ = writeln!(report, "{}  relation {}  key {key}", dataset.name, dataset.relation);
        for column in &dataset.columns {
            let null = if column.nullable { "" } else { " not null" };
            let _ = writeln!(report, "  {} {}{null}", column.name, column.type_name);
        }
    }
    if let Some(crate::jobs::Storage::Objects(store)) = job_storage(&settings.jobs)? {
        store.check().await.map_err(|source| StartupError::StorageRefused {
            location: format!("{store:?}"),
            source: source.into(),
        })?;
        let _ = writeln!(report, "jobs.storage {store:?}: writable");
    }
    Ok(report)
}

/// Where job files go, when jobs are on: the directory (created if missing) or the object store.
fn job_storage(settings: &crate::settings::JobSettings) -> Result<Option<crate::jobs::Storage>, StartupError> {
    use crate::jobs::{Storage, s3::ObjectStore};
    match (&settings.directory, &settings.storage) {
        (Some(directory), _) => {
            std::fs::create_dir_all(directory).map_err(|source| StartupError::JobDirectory {
                directory: directory.display().to_string(),
                source,
            })?;
            Ok(Some(Storage::Directory(directory.clone())))
        }
        (None, Some(location)) => {
            let store = ObjectStore::new(settings, location).map_err(StartupError::Storage)?;
            Ok(Some(Storage::Objects(Arc::new(store))))
        }
        (None, None) => Ok(None),
    }
}

/// `/metrics` alone on `address`, one worker.
fn metrics_server(address: &str, metrics: Arc<Metrics>) -> Result<(u16, Server), StartupError> {
    let listen_error = |source| StartupError::Listen {
        address: address.to_owned(),
        source,
    };
    let listener = TcpListener::bind(address).map_err(listen_error)?;
    let port = listener.local_addr().map_err(listen_error)?.port();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::from(metrics.clone()))
            .service(routes::metrics::metrics)
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .map_err(listen_error)?
    .run();
    tracing::info!(%port, "serving /metrics");
    Ok((port, server))
}

/// Resolves on the first SIGTERM or SIGINT. The handlers are installed when this is called, not when it is
/// first polled, so a signal that arrives while the server is starting is not lost.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
