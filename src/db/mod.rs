//! The only module that talks to tokio-postgres and deadpool: pools, the catalog, rows, the job table.
//!
//! # Layout
//! - `catalog`: datasets resolved against the database at start-up (relation, columns, types, operators, key).
//! - `lease`: a pooled connection that is discarded, never reused, unless its rows ended cleanly.
//! - `rows`: reading rows (transaction, checks, count, one statement or keyset batches, positions).
//! - `error`: why rows could not be opened.
//! - `jobs`: the background export jobs' schema and statements.

pub(crate) mod catalog;
pub(crate) mod error;
pub(crate) mod jobs;
pub(crate) mod lease;
pub(crate) mod rows;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use postgres_protocol::escape::escape_literal;
use tokio_postgres::NoTls;

use crate::settings::DatabaseSettings;

/// Connection settings from `database.url` plus what pgspout always wants: a name in `pg_stat_activity`,
/// bounded connects, and TCP keepalives so half-open connections are noticed.
pub(crate) fn connection_config(settings: &DatabaseSettings) -> Result<tokio_postgres::Config, tokio_postgres::Error> {
    let url = settings.url.as_deref().unwrap_or_default();
    let mut config: tokio_postgres::Config = url.parse()?;
    if config.get_application_name().is_none() {
        config.application_name("pgspout");
    }
    config
        .connect_timeout(settings.connect_timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(10))
        .keepalives_retries(3);
    Ok(config)
}

/// A bounded pool whose every wait is bounded too (deadpool's defaults wait forever).
///
/// Each idle connection is verified (an empty query) before it is handed out, within `connect_timeout`: one
/// that Postgres closed (a restart) or that no longer answers (a half-open connection, which keepalives only
/// notice after a minute) is discarded and replaced, so the request still gets a working connection.
pub(crate) fn pool(config: tokio_postgres::Config, settings: &DatabaseSettings, size: usize) -> Pool {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Verified,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(settings.acquire_timeout))
        .create_timeout(Some(settings.connect_timeout))
        .recycle_timeout(Some(settings.connect_timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .expect("a runtime and timeouts are set, so building the pool cannot fail")
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

/// `begin_sql` and a transaction-local `application_name`, so `pg_stat_activity` shows whom a backend serves.
pub(crate) fn begin_as(begin_sql: &str, application_name: &str) -> String {
    format!(
        "{begin_sql}; SET LOCAL application_name = {}",
        escape_literal(application_name)
    )
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
