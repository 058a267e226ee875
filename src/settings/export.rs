//! `[export]` (streamed exports) and `[pages]`.

use std::time::Duration;

use serde::Deserialize;

use super::longer_than_zero;

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

impl ExportSettings {
    /// `[export]`'s own rules.
    pub(super) fn validate(&self) -> Result<(), String> {
        if !(1024..=16 * 1024 * 1024).contains(&self.chunk_size) {
            return Err(format!(
                "export.chunk_size = {} is not within 1 KiB..16 MiB",
                self.chunk_size
            ));
        }
        longer_than_zero(&[
            ("export.flush_interval", Some(self.flush_interval)),
            ("export.stall_timeout", Some(self.stall_timeout)),
            ("export.max_duration", self.max_duration),
        ])?;
        if !(1024..=1024 * 1024 * 1024).contains(&self.max_value_bytes) {
            return Err(format!(
                "export.max_value_bytes = {} is not within 1 KiB..1 GiB",
                self.max_value_bytes
            ));
        }
        if self.batch_rows == 0 {
            return Err("export.batch_rows must be at least 1".into());
        }
        Ok(())
    }
}

impl PageSettings {
    /// `[pages]`' own rules.
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.default_limit == 0 || self.default_limit > self.max_limit {
            return Err("pages.default_limit must be between 1 and pages.max_limit".into());
        }
        Ok(())
    }
}
