//! `[database]`: the primary, its pool, TLS and read replicas.

use std::time::Duration;

use serde::Deserialize;

use super::{SslMode, longer_than_zero};

/// `[database]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// A libpq-style URL or key=value string (`DATABASE_URL` overrides). Unset: libpq's `PG*` environment
    /// variables, with psql's defaults.
    pub url: Option<String>,
    /// Connections per worker; the total is `workers × pool_size`.
    pub pool_size: usize,
    /// How long a request waits for a free connection before it gets 503.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// How long opening a new connection may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// `statement_timeout` of each export's transaction; 0 disables it. It bounds the whole streaming query,
    /// so keep it above the longest download you expect.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// The session `TimeZone` in which `timestamptz` values are printed.
    pub timezone: String,
    /// libpq's `sslmode` (default `prefer`); an `sslmode` in the URL wins.
    pub sslmode: Option<SslMode>,
    /// The CA certificate (PEM) that verifies the server; an `sslrootcert` in the URL wins.
    pub sslrootcert: Option<std::path::PathBuf>,
    /// A client certificate (PEM), for `cert` authentication; with `sslkey`.
    pub sslcert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    pub sslkey: Option<std::path::PathBuf>,
    /// Read replicas (URLs or key=value strings, TLS as for `url`): `/rows`, `/page`, counts and job
    /// batches read from a healthy one.
    pub replicas: Vec<String>,
    /// A replica further behind the primary than this is skipped until it catches up.
    #[serde(with = "humantime_serde")]
    pub replica_max_lag: Duration,
    /// With no healthy replica: `primary` (default) reads from the primary; `refuse` answers 503.
    pub replica_fallback: ReplicaFallback,
}

/// What to read from when no replica is healthy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaFallback {
    /// The primary.
    #[default]
    Primary,
    /// Nothing: 503 with Retry-After.
    Refuse,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: None,
            pool_size: 8,
            acquire_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::ZERO,
            timezone: "UTC".into(),
            sslmode: None,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
            replicas: Vec::new(),
            replica_max_lag: Duration::from_secs(30),
            replica_fallback: ReplicaFallback::Primary,
        }
    }
}

impl DatabaseSettings {
    /// `[database]`'s own rules.
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.pool_size == 0 {
            return Err("database.pool_size must be at least 1".into());
        }
        longer_than_zero(&[
            ("database.acquire_timeout", Some(self.acquire_timeout)),
            ("database.connect_timeout", Some(self.connect_timeout)),
            ("database.replica_max_lag", Some(self.replica_max_lag)),
        ])?;
        if self.timezone.trim().is_empty() {
            return Err("database.timezone is empty".into());
        }
        Ok(())
    }
}
