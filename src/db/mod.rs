//! The only module that talks to tokio-postgres and deadpool: pools, the catalog, rows, the job table.
//!
//! # Layout
//! - `catalog`: datasets resolved against the database at start-up and on reloads (discovery, resolution, types).
//! - `lease`: a pooled connection that is discarded, never reused, unless released outside a transaction.
//! - `rows`: reading rows (transaction, checks, count, one statement or keyset batches, positions).
//! - `error`: why rows could not be opened.
//! - `replicas`: read replicas, their health and lag, and choosing where rows are read.
//! - `tls`: TLS with libpq's `sslmode` meanings, through rustls.
//! - `jobs`: the background export jobs' schema and statements.

pub(crate) mod catalog;
pub(crate) mod error;
pub(crate) mod jobs;
pub(crate) mod lease;
pub(crate) mod replicas;
pub(crate) mod rows;
pub(crate) mod tls;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, PoolError, RecyclingMethod, Runtime};
use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use postgres_protocol::escape::{escape_identifier, escape_literal};
use tokio_postgres::AsyncMessage;

use self::lease::Lease;
use self::tls::{Tls, TlsError, TlsOptions};
use crate::settings::DatabaseSettings;

/// How to reach Postgres: tokio-postgres's settings and the TLS connector.
#[derive(Clone)]
pub(crate) struct Connection {
    config: tokio_postgres::Config,
    tls: Tls,
}

/// Why the connection settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// `database.url` (or a replica's) does not parse.
    #[error("the database URL is invalid")]
    Url(#[source] tokio_postgres::Error),
    /// The TLS options are unusable.
    #[error("database TLS settings")]
    Tls(#[from] TlsError),
}

impl Connection {
    /// Where it connects, for logs: `host:port` (never the user or password).
    pub(crate) fn address(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
            None => "localhost".into(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!("{host}:{port}")
    }

    /// The same settings under another `application_name` (for connections that serve no request).
    pub(crate) fn named(&self, application_name: &str) -> Connection {
        let mut named = self.clone();
        named.config.application_name(application_name);
        named
    }

    /// Opens one connection; its task runs on the current runtime.
    pub(crate) async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(self.tls.clone()).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// Opens one connection that listens on `channel`: its notifications arrive on the receiver, which ends
    /// when the connection does. The client must be kept (dropping it closes the connection).
    pub(crate) async fn listen(
        &self,
        channel: &str,
    ) -> Result<(tokio_postgres::Client, UnboundedReceiver<tokio_postgres::Notification>), tokio_postgres::Error> {
        let (client, mut connection) = self.config.connect(self.tls.clone()).await?;
        let (sender, receiver) = futures::channel::mpsc::unbounded();
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(notification)) => {
                        if sender.unbounded_send(notification).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "the listening connection failed");
                        break;
                    }
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {}", escape_identifier(channel)))
            .await?;
        Ok((client, receiver))
    }
}

/// Connection settings for the primary: `database.url`, or libpq's environment without it.
pub(crate) fn connection(settings: &DatabaseSettings) -> Result<Connection, ConnectionError> {
    let url = match &settings.url {
        Some(url) => url.clone(),
        None => from_environment(|name| std::env::var(name).ok()),
    };
    connection_to(&url, settings)
}

/// Connection settings from `url` (TLS options taken out of it, the `database.ssl*` keys filling in what it
/// lacks) plus what pgspout always wants: a name in `pg_stat_activity`, bounded connects, and TCP keepalives
/// so half-open connections are noticed.
pub(crate) fn connection_to(url: &str, settings: &DatabaseSettings) -> Result<Connection, ConnectionError> {
    let (url, from_url) = tls::split(url)?;
    let options = from_url.or(TlsOptions {
        mode: settings.sslmode,
        root_cert: settings.sslrootcert.clone(),
        cert: settings.sslcert.clone(),
        key: settings.sslkey.clone(),
    });
    let mut config: tokio_postgres::Config = url.parse().map_err(ConnectionError::Url)?;
    config.ssl_mode(options.postgres_mode());
    if config.get_application_name().is_none() {
        config.application_name("pgspout");
    }
    config
        .connect_timeout(settings.connect_timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(10))
        .keepalives_retries(3);
    Ok(Connection {
        config,
        tls: tls::connector(&options)?,
    })
}

/// libpq's environment variables, and the connection keys they set.
const LIBPQ_ENVIRONMENT: [(&str, &str); 15] = [
    ("PGHOST", "host"),
    ("PGHOSTADDR", "hostaddr"),
    ("PGPORT", "port"),
    ("PGUSER", "user"),
    ("PGPASSWORD", "password"),
    ("PGDATABASE", "dbname"),
    ("PGSSLMODE", "sslmode"),
    ("PGSSLROOTCERT", "sslrootcert"),
    ("PGSSLCERT", "sslcert"),
    ("PGSSLKEY", "sslkey"),
    ("PGAPPNAME", "application_name"),
    ("PGOPTIONS", "options"),
    ("PGTARGETSESSIONATTRS", "target_session_attrs"),
    ("PGCHANNELBINDING", "channel_binding"),
    ("PGCONNECT_TIMEOUT", "connect_timeout"),
];

/// Without `database.url`: a `key=value` string from libpq's environment variables (`var` reads one), with
/// psql's defaults for what they leave out: the local socket directory, the operating-system user, and a
/// database named like the user.
fn from_environment(var: impl Fn(&str) -> Option<String>) -> String {
    let mut pairs: Vec<String> = LIBPQ_ENVIRONMENT
        .iter()
        .filter_map(|(name, key)| var(name).map(|value| tls::key_value(key, &value)))
        .collect();
    let user = var("PGUSER")
        .or_else(|| var("USER"))
        .unwrap_or_else(|| "postgres".into());
    if var("PGHOST").is_none() && var("PGHOSTADDR").is_none() {
        pairs.push(tls::key_value("host", "/var/run/postgresql"));
    }
    if var("PGUSER").is_none() {
        pairs.push(tls::key_value("user", &user));
    }
    if var("PGDATABASE").is_none() {
        pairs.push(tls::key_value("dbname", &user));
    }
    pairs.join(" ")
}

/// A pool of connections, and the TLS connector its leases cancel queries through.
#[derive(Clone)]
pub(crate) struct Pool {
    pool: deadpool_postgres::Pool,
    tls: Tls,
}

impl Pool {
    /// A pooled connection (see [`Lease`]): the only way to one.
    pub(crate) async fn lease(&self) -> Result<Lease, PoolError> {
        Ok(Lease::new(self.pool.get().await?, self.tls.clone()))
    }

    /// A pooled connection if one is free (or can be opened) now, without waiting for a busy pool;
    /// a busy pool answers `PoolError::Timeout(TimeoutType::Wait)` at once.
    pub(crate) async fn try_lease(&self) -> Result<Lease, PoolError> {
        let timeouts = deadpool_postgres::Timeouts {
            wait: Some(Duration::ZERO),
            ..self.pool.timeouts()
        };
        Ok(Lease::new(self.pool.timeout_get(&timeouts).await?, self.tls.clone()))
    }

    /// Runs `work` on a pooled connection outside any transaction of pgspout's (tokio-postgres's own,
    /// which roll back when dropped, may run inside it). The connection goes back to the pool only when
    /// `work` succeeded; an error or a drop midway discards it.
    pub(crate) async fn with<T, E>(
        &self,
        work: impl AsyncFnOnce(&mut tokio_postgres::Client) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<PoolError>,
    {
        let mut lease = self.lease().await?;
        let result = work(lease.client_mut()).await?;
        lease.give_back();
        Ok(result)
    }

    /// Its size, idle connections and limit.
    pub(crate) fn status(&self) -> deadpool_postgres::Status {
        self.pool.status()
    }
}

/// A bounded pool whose every wait is bounded too (deadpool's defaults wait forever).
///
/// Each idle connection is verified (an empty query) before it is handed out, within `connect_timeout`: one
/// that Postgres closed (a restart) or that no longer answers (a half-open connection, which keepalives only
/// notice after a minute) is discarded and replaced, so the request still gets a working connection.
pub(crate) fn pool(connection: &Connection, settings: &DatabaseSettings, size: usize) -> Pool {
    let manager = Manager::from_config(
        connection.config.clone(),
        connection.tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Verified,
        },
    );
    let pool = deadpool_postgres::Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(settings.acquire_timeout))
        .create_timeout(Some(settings.connect_timeout))
        .recycle_timeout(Some(settings.connect_timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .expect("a runtime and timeouts are set, so building the pool cannot fail");
    Pool {
        pool,
        tls: connection.tls.clone(),
    }
}

/// The statements that open every export's transaction, sent as one round trip.
///
/// Fixing TimeZone, DateStyle, IntervalStyle, extra_float_digits and bytea_output makes values print exactly
/// as the encoders (and the tests' reference `COPY`) expect, whatever the database's defaults are.
/// Per-request settings (`begin_as`) follow in the same round trip.
pub(crate) fn begin_sql(settings: &DatabaseSettings) -> String {
    format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; \
         SET LOCAL TimeZone = {}; SET LOCAL DateStyle = 'ISO, MDY'; SET LOCAL IntervalStyle = 'postgres'; \
         SET LOCAL extra_float_digits = 1; SET LOCAL bytea_output = 'hex'; SET LOCAL statement_timeout = {}",
        escape_literal(&settings.timezone),
        settings.statement_timeout.as_millis(),
    )
}

/// Who a transaction reads for, as PostgREST sets it: the role, the claims, the request's method and path,
/// and the `pre_request` function to call after them.
pub(crate) struct Session<'a> {
    /// The role to switch to.
    pub(crate) role: &'a str,
    /// `request.jwt.claims`, JSON.
    pub(crate) claims: &'a str,
    /// `request.method`.
    pub(crate) method: &'a str,
    /// `request.path`.
    pub(crate) path: &'a str,
    /// `SELECT schema.function()`, when configured.
    pub(crate) pre_request: Option<&'a str>,
}

/// `begin_sql` and a transaction-local `application_name`, so `pg_stat_activity` shows whom a backend serves;
/// with a `session`, its role and settings and the `pre_request` call, all in the same round trip.
pub(crate) fn begin_as(begin_sql: &str, application_name: &str, session: Option<&Session<'_>>) -> String {
    let mut sql = format!(
        "{begin_sql}; SET LOCAL application_name = {}",
        escape_literal(application_name)
    );
    if let Some(session) = session {
        sql.push_str(&format!(
            "; SELECT pg_catalog.set_config('role', {}, true), pg_catalog.set_config('request.jwt.claims', {}, true), \
             pg_catalog.set_config('request.method', {}, true), pg_catalog.set_config('request.path', {}, true)",
            escape_literal(session.role),
            escape_literal(session.claims),
            escape_literal(session.method),
            escape_literal(session.path),
        ));
        if let Some(call) = session.pre_request {
            sql.push_str("; ");
            sql.push_str(call);
        }
    }
    sql
}

/// Whether `timezone` prints `timestamptz` with a zero offset at every instant, so pgspout can print it itself.
pub(crate) fn is_utc(timezone: &str) -> bool {
    [
        "UTC",
        "Etc/UTC",
        "Etc/UCT",
        "UCT",
        "Universal",
        "Etc/Universal",
        "Zulu",
        "Etc/Zulu",
    ]
    .iter()
    .any(|name| name.eq_ignore_ascii_case(timezone))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_libpq_environment_makes_a_connection_string_with_psqls_defaults() {
        let environment = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned())
        };
        let full = from_environment(environment(&[
            ("PGHOST", "db.example"),
            ("PGPORT", "5433"),
            ("PGUSER", "app"),
            ("PGPASSWORD", "it's \\ secret"),
            ("PGDATABASE", "shop"),
            ("PGSSLMODE", "verify-full"),
            ("PGSSLROOTCERT", "/ca.pem"),
        ]));
        let (rest, options) = tls::split(&full).unwrap();
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"it's \\ secret"[..]));
        assert_eq!((config.get_user(), config.get_dbname()), (Some("app"), Some("shop")));
        assert_eq!(config.get_ports(), &[5433]);
        assert_eq!(options.mode, Some(tls::SslMode::VerifyFull));
        assert_eq!(options.root_cert.as_deref(), Some(std::path::Path::new("/ca.pem")));

        let bare: tokio_postgres::Config = from_environment(environment(&[("USER", "alice")])).parse().unwrap();
        assert_eq!((bare.get_user(), bare.get_dbname()), (Some("alice"), Some("alice")));
        assert_eq!(
            bare.get_hosts(),
            &[tokio_postgres::config::Host::Unix("/var/run/postgresql".into())]
        );
    }
}
