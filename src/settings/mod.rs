//! Settings: defaults, then a TOML file (optional), then the environment.
//!
//! Precedence, lowest first: built-in defaults; the file; `DATABASE_URL` (for `database.url`) and
//! `PGSPOUT_LISTEN` (for `server.listen`); `PGSPOUT_<SECTION>__<KEY>` for any key, such as
//! `PGSPOUT_DATABASE__POOL_SIZE=16` or `PGSPOUT_EXPORT__STALL_TIMEOUT=30s`. Unknown keys are errors, in the
//! file and in `PGSPOUT_*__*` variables alike, so a typo fails at start-up instead of being silently ignored.
//!
//! Each section is a file of its own, with its defaults and its own rules (`server`, `database`, `export`
//! with `[pages]`, `jobs`, `datasets` with `[[schemas]]`); `[compression]` is `compress::Levels` and `[auth]`
//! lives in `auth`. Rules across sections are here.

use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format as _, Toml};
use serde::Deserialize;

pub use self::database::{DatabaseSettings, ReplicaFallback};
pub use self::datasets::{DatasetSettings, SchemaSettings};
pub use self::export::{ExportSettings, PageSettings};
pub use self::jobs::{Download, Hidden, JobSettings, S3Settings, WebhookEvent, WebhookSecret, WebhookSettings};
pub use self::query::QuerySettings;
pub use self::server::{CorsSettings, LogFormat, LogSettings, ServerSettings};
pub use crate::auth::{ApiKeySettings, AuthSettings};
use crate::compress::Levels;
pub use crate::dataset::Consistency;
pub use crate::db::tls::SslMode;

mod database;
mod datasets;
mod export;
mod jobs;
mod query;
mod server;

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
    /// Aggregates and their cost cap.
    #[serde(default)]
    pub query: QuerySettings,
    /// Background export jobs; off unless `jobs.directory` or `jobs.storage` is set.
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

    /// Checks what can be checked without a database: each section's own rules, then those across them.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.server.validate().map_err(SettingsError::Invalid)?;
        self.database.validate().map_err(SettingsError::Invalid)?;
        self.export.validate().map_err(SettingsError::Invalid)?;
        self.compression.validate().map_err(SettingsError::Invalid)?;
        self.pages.validate().map_err(SettingsError::Invalid)?;
        self.query.validate().map_err(SettingsError::Invalid)?;
        self.jobs.validate().map_err(SettingsError::Invalid)?;
        datasets::validate(&self.datasets, &self.schemas).map_err(SettingsError::Invalid)?;
        if let Some(auth) = &self.auth {
            auth.validate().map_err(SettingsError::Invalid)?;
        }
        if let Some(slots) = self.export.max_concurrent
            && !(1..=self.database.pool_size).contains(&slots)
        {
            return Err(SettingsError::Invalid(format!(
                "export.max_concurrent = {slots} is not within 1..=database.pool_size"
            )));
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

/// `Err` naming the first of `durations` (key, value) that is zero.
fn longer_than_zero(durations: &[(&str, Option<Duration>)]) -> Result<(), String> {
    match durations.iter().find(|(_, duration)| *duration == Some(Duration::ZERO)) {
        Some((key, _)) => Err(format!("{key} must be longer than 0")),
        None => Ok(()),
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
