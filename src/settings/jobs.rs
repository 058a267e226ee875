//! `[jobs]`: background exports written to files.

use std::time::Duration;

use serde::Deserialize;

use super::longer_than_zero;

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

impl JobSettings {
    /// `[jobs]`' own rules (checked whether or not jobs are on, for the durations).
    pub(super) fn validate(&self) -> Result<(), String> {
        longer_than_zero(&[
            ("jobs.poll_interval", Some(self.poll_interval)),
            ("jobs.batch_timeout", Some(self.batch_timeout)),
            ("jobs.retention", Some(self.retention)),
        ])?;
        if self.directory.is_none() {
            return Ok(());
        }
        if self.max_running == 0 || self.max_queued < 1 || self.batch_rows == 0 || self.max_attempts < 1 {
            return Err(
                "jobs.max_running, jobs.max_queued, jobs.batch_rows and jobs.max_attempts must be at least 1".into(),
            );
        }
        if self.lease < Duration::from_secs(1) {
            return Err("jobs.lease must be at least 1s".into());
        }
        let schema = &self.schema;
        if schema.is_empty()
            || !schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(format!("jobs.schema {schema:?} may hold only a-z, 0-9 and '_'"));
        }
        Ok(())
    }
}
