//! Settings: defaults, then a TOML file (optional), then the environment.
//!
//! Precedence, lowest first: built-in defaults; the file; `DATABASE_URL` (for `database.url`) and
//! `PGSPOUT_LISTEN` (for `server.listen`); `PGSPOUT_<SECTION>__<KEY>` for any key, such as
//! `PGSPOUT_DATABASE__POOL_SIZE=16` or `PGSPOUT_EXPORT__STALL_TIMEOUT=30s`. Unknown keys are errors, in the
//! file and in `PGSPOUT_*__*` variables alike, so a typo fails at start-up instead of being silently ignored.

use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format as _, Toml};
use serde::Deserialize;

pub use crate::auth::{ApiKeySettings, AuthSettings};
use crate::compress::Levels;
pub use crate::dataset::Consistency;
pub use crate::db::tls::SslMode;

/// Everything pgspout is configured with.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The HTTP side.
    #[serde(default)]
    pub server: ServerSettings,
    /// The PostgreSQL side.
    #[serde(default)]
    pub database: DatabaseSettings,
    /// How exports are streamed.
    #[serde(default)]
    pub export: ExportSettings,
    /// Compression levels per coding.
    #[serde(default)]
    pub compression: Levels,
    /// `/page` limits and cursors.
    #[serde(default)]
    pub pages: PageSettings,
    /// Background export jobs; off unless `jobs.directory` is set.
    #[serde(default)]
    pub jobs: JobSettings,
    /// Logging.
    #[serde(default)]
    pub log: LogSettings,
    /// Authentication; without it, every client reads every dataset as pgspout's own role.
    pub auth: Option<AuthSettings>,
    /// Datasets configured one by one; identifiers come only from here and from the catalog, never from a
    /// request.
    #[serde(default)]
    pub datasets: Vec<DatasetSettings>,
    /// Schemas served whole. With neither `datasets` nor `schemas`, `public` is.
    #[serde(default)]
    pub schemas: Vec<SchemaSettings>,
}

/// `[log]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` (default) or `json` (one JSON object per line).
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[server]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address to listen on (`PGSPOUT_LISTEN` overrides).
    pub listen: String,
    /// Worker threads, each with its own connection pool; default: the number of CPUs.
    pub workers: Option<usize>,
    /// On SIGTERM/SIGINT, how long in-flight exports may run on before they are cut.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Serve `/metrics` only on this address, not on `listen`; unset: on `listen`.
    pub metrics_listen: Option<String>,
    /// CORS for pages on other origins; off when absent.
    pub cors: Option<CorsSettings>,
}

/// `[server.cors]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsSettings {
    /// Origins (`https://app.example`) allowed to call the API, or `["*"]`.
    pub allowed_origins: Vec<String>,
    /// Whether browsers may send cookies and `Authorization` (not with `*`).
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight's answer.
    #[serde(default = "default_cors_max_age", with = "humantime_serde")]
    pub max_age: Duration,
}

fn default_cors_max_age() -> Duration {
    Duration::from_secs(3600)
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: "127.0.0.1:8080".into(),
            workers: None,
            shutdown_grace: Duration::from_secs(30),
            metrics_listen: None,
            cors: None,
        }
    }
}

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

/// `[export]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportSettings {
    /// Target size of each body chunk, in bytes (before compression).
    pub chunk_size: usize,
    /// The longest that encoded rows may wait in pgspout while Postgres is slow to send more.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// A client that takes no data for this long is cut, and its query and connection released (Postgres
    /// itself never times out a backend blocked sending to a client that does not read).
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// Exports running longer than this are aborted (visibly); unset: no limit.
    #[serde(with = "humantime_serde")]
    pub max_duration: Option<Duration>,
    /// Exports running at once per worker; the rest of the pool stays free for pages and the catalog.
    /// Default: `database.pool_size - 2` (at least 1). A request waits `acquire_timeout` for a slot, then 503.
    pub max_concurrent: Option<usize>,
    /// Rows per batch when an export reads in keyset batches (`consistency = "chunked"`).
    pub batch_rows: u64,
    /// The largest value an export (or job) encodes, in bytes as Postgres sends it; a larger value aborts
    /// the export visibly, naming its column, rather than sitting whole in pgspout's buffers.
    pub max_value_bytes: usize,
}

impl Default for ExportSettings {
    fn default() -> Self {
        ExportSettings {
            chunk_size: 32 * 1024,
            flush_interval: Duration::from_millis(200),
            stall_timeout: Duration::from_secs(60),
            max_duration: None,
            max_concurrent: None,
            batch_rows: 10_000,
            max_value_bytes: 64 * 1024 * 1024,
        }
    }
}

/// `[pages]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PageSettings {
    /// Rows per page when `limit` is not given.
    pub default_limit: u64,
    /// The largest `limit` a page accepts.
    pub max_limit: u64,
    /// Secret for signing cursors; instances behind one load balancer must share it. Unset: a random secret
    /// per process, so cursors do not survive a restart.
    pub cursor_secret: Option<String>,
}

impl Default for PageSettings {
    fn default() -> Self {
        PageSettings {
            default_limit: 100,
            max_limit: 10_000,
            cursor_secret: None,
        }
    }
}

/// `[jobs]`: background exports written to files.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobSettings {
    /// Where export files are written. Unset: background exports are off (and no schema is created).
    /// Instances that share a database must share this directory.
    pub directory: Option<std::path::PathBuf>,
    /// The schema pgspout creates for its job table.
    pub schema: String,
    /// Jobs this instance runs at once.
    pub max_running: usize,
    /// Jobs that may wait in the queue (all instances together); beyond it, creating one is a 503.
    pub max_queued: i64,
    /// How long a finished file is kept.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// A running job's lease: renewed every third of it; a job whose lease ran out is taken over.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How often an idle instance looks for queued jobs (and sweeps expired files).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Rows between checkpoints.
    pub batch_rows: u64,
    /// Runs a job may take (each interrupted run counts) before it is marked failed.
    pub max_attempts: i32,
    /// A batch that takes longer (stuck on a lock, a silent connection) ends the run; the job is retried.
    #[serde(with = "humantime_serde")]
    pub batch_timeout: Duration,
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            directory: None,
            schema: "pgspout".into(),
            max_running: 2,
            max_queued: 1000,
            retention: Duration::from_secs(7 * 24 * 3600),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            batch_rows: 50_000,
            max_attempts: 10,
            batch_timeout: Duration::from_secs(600),
        }
    }
}

/// One `[[datasets]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSettings {
    /// The name in URLs: letters, digits, `_` and `-`.
    pub name: String,
    /// A table, view or materialized view, optionally schema-qualified (`public.orders`).
    pub table: String,
    /// A unique, orderable column: rows are streamed in its order.
    pub key: Option<String>,
    /// If set, the only columns readable, filterable and orderable (the key must be among them).
    pub columns: Option<Vec<String>>,
    /// `snapshot` (default) or `chunked`; a request's `consistency` parameter overrides it.
    #[serde(default)]
    pub consistency: Consistency,
}

/// One `[[schemas]]` entry: every table, view, materialized view, foreign table and partitioned table of the
/// schema that pgspout's role may read, as a dataset named like the relation.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaSettings {
    /// The schema.
    pub name: String,
    /// If set, only relations whose names match one of these globs (`*`, `?`, `[abc]`).
    pub include: Option<Vec<String>>,
    /// Relations whose names match one of these globs are left out.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// `snapshot` (default) or `chunked` for the schema's datasets; those without a key read as `snapshot`.
    #[serde(default)]
    pub consistency: Consistency,
}

impl SchemaSettings {
    /// `public`, whole: what is served when nothing is configured.
    pub fn public() -> SchemaSettings {
        SchemaSettings {
            name: "public".into(),
            include: None,
            exclude: Vec::new(),
            consistency: Consistency::Snapshot,
        }
    }

    /// Whether a relation called `relation` is included.
    pub fn includes(&self, relation: &str) -> bool {
        let matches = |globs: &[String]| {
            globs
                .iter()
                .any(|g| glob::Pattern::new(g).is_ok_and(|p| p.matches(relation)))
        };
        self.include.as_deref().is_none_or(matches) && !matches(&self.exclude)
    }
}

/// Why the settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is no valid TOML, or it or the environment has unknown or mistyped keys.
    #[error("config: {0}")]
    Parse(Box<figment::Error>),
    /// A value is out of range or inconsistent.
    #[error("config: {0}")]
    Invalid(String),
}

impl Settings {
    /// Merges the defaults, `file` (when given; it must then exist) and the environment, and validates the
    /// result.
    pub fn load(file: Option<&Path>) -> Result<Settings, SettingsError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            if let Err(source) = std::fs::metadata(path) {
                return Err(SettingsError::Read {
                    path: path.display().to_string(),
                    source,
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let settings: Settings = figment
            .merge(Env::raw().only(&["DATABASE_URL"]).map(|_| "database.url".into()))
            .merge(Env::raw().only(&["PGSPOUT_LISTEN"]).map(|_| "server.listen".into()))
            // Only names with a section separator are keys: PGSPOUT_LISTEN above, and variables of other
            // tools that share the prefix, are not.
            .merge(
                Env::prefixed("PGSPOUT_")
                    .filter(|key| key.as_str().contains("__"))
                    .split("__"),
            )
            .extract()
            .map_err(|e| SettingsError::Parse(Box::new(e)))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Parses TOML text without overrides or validation.
    pub fn parse(text: &str) -> Result<Settings, toml::de::Error> {
        toml::from_str(text)
    }

    /// Checks what can be checked without a database.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |message: String| Err(SettingsError::Invalid(message));
        if self.database.pool_size == 0 {
            return invalid("database.pool_size must be at least 1".into());
        }
        if let Some(slots) = self.export.max_concurrent
            && !(1..=self.database.pool_size).contains(&slots)
        {
            return invalid(format!(
                "export.max_concurrent = {slots} is not within 1..=database.pool_size"
            ));
        }
        if self.server.workers == Some(0) {
            return invalid("server.workers must be at least 1".into());
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.export.chunk_size) {
            return invalid(format!(
                "export.chunk_size = {} is not within 1 KiB..16 MiB",
                self.export.chunk_size
            ));
        }
        for (key, duration) in [
            ("database.acquire_timeout", Some(self.database.acquire_timeout)),
            ("database.connect_timeout", Some(self.database.connect_timeout)),
            ("database.replica_max_lag", Some(self.database.replica_max_lag)),
            ("export.flush_interval", Some(self.export.flush_interval)),
            ("export.stall_timeout", Some(self.export.stall_timeout)),
            ("export.max_duration", self.export.max_duration),
            ("jobs.poll_interval", Some(self.jobs.poll_interval)),
            ("jobs.batch_timeout", Some(self.jobs.batch_timeout)),
            ("jobs.retention", Some(self.jobs.retention)),
        ] {
            if duration == Some(Duration::ZERO) {
                return invalid(format!("{key} must be longer than 0"));
            }
        }
        if !(1024..=1024 * 1024 * 1024).contains(&self.export.max_value_bytes) {
            return invalid(format!(
                "export.max_value_bytes = {} is not within 1 KiB..1 GiB",
                self.export.max_value_bytes
            ));
        }
        if self.export.batch_rows == 0 {
            return invalid("export.batch_rows must be at least 1".into());
        }
        if self.database.timezone.trim().is_empty() {
            return invalid("database.timezone is empty".into());
        }
        self.compression.validate().map_err(SettingsError::Invalid)?;
        if self.pages.default_limit == 0 || self.pages.default_limit > self.pages.max_limit {
            return invalid("pages.default_limit must be between 1 and pages.max_limit".into());
        }
        if self.jobs.directory.is_some() {
            let jobs = &self.jobs;
            if jobs.max_running == 0 || jobs.max_queued < 1 || jobs.batch_rows == 0 || jobs.max_attempts < 1 {
                return invalid(
                    "jobs.max_running, jobs.max_queued, jobs.batch_rows and jobs.max_attempts must be at least 1"
                        .into(),
                );
            }
            if jobs.lease < Duration::from_secs(1) {
                return invalid("jobs.lease must be at least 1s".into());
            }
            let schema = &jobs.schema;
            if schema.is_empty()
                || !schema
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return invalid(format!("jobs.schema {schema:?} may hold only a-z, 0-9 and '_'"));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for dataset in &self.datasets {
            let name = &dataset.name;
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return invalid(format!(
                    "dataset name {name:?} may hold only letters, digits, '_' and '-'"
                ));
            }
            if !seen.insert(name) {
                return invalid(format!("dataset {name:?} is configured twice"));
            }
        }
        if let Some(auth) = &self.auth {
            auth.validate().map_err(SettingsError::Invalid)?;
        }
        if let Some(cors) = &self.server.cors {
            if cors.allowed_origins.is_empty() {
                return invalid("server.cors.allowed_origins is empty (list origins, or [\"*\"])".into());
            }
            for origin in &cors.allowed_origins {
                let plain = origin.split_once("://").is_some_and(|(scheme, rest)| {
                    matches!(scheme, "http" | "https") && !rest.is_empty() && !rest.contains('/')
                });
                if origin != "*" && !plain {
                    return invalid(format!(
                        "server.cors.allowed_origins: {origin:?} is not an origin (scheme://host[:port], no path)"
                    ));
                }
                if origin == "*" && cors.allow_credentials {
                    return invalid("server.cors: browsers refuse credentials with allowed_origins = [\"*\"]".into());
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        for schema in &self.schemas {
            if schema.name.is_empty() {
                return invalid("a [[schemas]] entry has an empty name".into());
            }
            if !seen.insert(&schema.name) {
                return invalid(format!("schema {:?} is configured twice", schema.name));
            }
            for glob in schema.include.iter().flatten().chain(&schema.exclude) {
                if let Err(error) = glob::Pattern::new(glob) {
                    return invalid(format!("schema {:?}: bad glob {glob:?}: {error}", schema.name));
                }
            }
        }
        Ok(())
    }

    /// The schemas served whole: those configured, or `public` when no dataset or schema is.
    pub fn served_schemas(&self) -> Vec<SchemaSettings> {
        if self.datasets.is_empty() && self.schemas.is_empty() {
            vec![SchemaSettings::public()]
        } else {
            self.schemas.clone()
        }
    }

    /// Exports that may run at once on one worker.
    pub fn export_slots(&self) -> usize {
        self.export
            .max_concurrent
            .unwrap_or(self.database.pool_size.saturating_sub(2).max(1))
    }

    /// The number of HTTP workers (and connection pools).
    pub fn workers(&self) -> usize {
        self.server
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_config_gets_sensible_defaults() {
        let settings = Settings::parse(
            r#"
            [database]
            url = "postgres://localhost/db"
            [[datasets]]
            name = "orders"
            table = "public.orders"
            key = "id"
            "#,
        )
        .unwrap();
        settings.validate().unwrap();
        assert_eq!(settings.server.listen, "127.0.0.1:8080");
        assert_eq!(settings.database.timezone, "UTC");
        assert_eq!(settings.export.chunk_size, 32 * 1024);
        assert_eq!(settings.datasets[0].key.as_deref(), Some("id"));
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let error = Settings::parse("[database]\nurl = \"x\"\npool_sise = 3\n").unwrap_err();
        assert!(error.to_string().contains("pool_sise"), "{error}");
    }

    #[test]
    fn durations_are_human_readable() {
        let settings = Settings::parse("[database]\nacquire_timeout = \"250ms\"\n").unwrap();
        assert_eq!(settings.database.acquire_timeout, Duration::from_millis(250));
    }

    #[test]
    fn zero_durations_are_config_errors_naming_the_key() {
        for (section, key) in [
            ("jobs", "poll_interval"),
            ("jobs", "batch_timeout"),
            ("export", "stall_timeout"),
            ("export", "max_duration"),
            ("database", "acquire_timeout"),
        ] {
            let text = match section {
                "database" => format!("[database]\nurl = 'x'\n{key} = \"0s\"\n"),
                _ => format!("[database]\nurl = 'x'\n[{section}]\n{key} = \"0s\"\n"),
            };
            let error = Settings::parse(&text).unwrap().validate().unwrap_err().to_string();
            assert!(error.contains(&format!("{section}.{key}")), "{error}");
        }
        let grace = Settings::parse("[database]\nurl = 'x'\n[server]\nshutdown_grace = \"300ms\"\n").unwrap();
        grace.validate().unwrap();
        assert_eq!(grace.server.shutdown_grace, Duration::from_millis(300));
    }

    #[test]
    fn schemas_filter_relations_by_globs_and_public_is_the_default() {
        let settings =
            Settings::parse("[[schemas]]\nname = 'sales'\ninclude = ['order*', 'customers']\nexclude = ['*_old']\n")
                .unwrap();
        settings.validate().unwrap();
        let sales = &settings.served_schemas()[0];
        assert!(sales.includes("orders") && sales.includes("customers"));
        assert!(!sales.includes("orders_old") && !sales.includes("items"));
        let everything = SchemaSettings::public();
        assert!(everything.includes("anything"));
        assert_eq!(Settings::parse("").unwrap().served_schemas()[0].name, "public");
        let one = Settings::parse("[[datasets]]\nname='a'\ntable='t'\n").unwrap();
        assert!(
            one.served_schemas().is_empty(),
            "explicit datasets alone serve no schema"
        );
        let bad = Settings::parse("[[schemas]]\nname = 's'\nexclude = ['[']\n").unwrap();
        assert!(bad.validate().unwrap_err().to_string().contains("bad glob"));
    }

    #[test]
    fn dataset_names_must_be_url_safe_and_unique() {
        let bad = Settings::parse("[database]\nurl='x'\n[[datasets]]\nname='a b'\ntable='t'\n").unwrap();
        assert!(bad.validate().unwrap_err().to_string().contains("a b"));
        let twice = Settings::parse(
            "[database]\nurl='x'\n[[datasets]]\nname='a'\ntable='t'\n[[datasets]]\nname='a'\ntable='u'\n",
        )
        .unwrap();
        assert!(twice.validate().unwrap_err().to_string().contains("twice"));
    }
}
