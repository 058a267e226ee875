//! One run of a job: its rows through the export pipeline into its file, with checkpoints (or, for a job
//! that cannot resume, progress reports) along the way, and its completion.

use std::path::Path;

use super::file::{FileError, JobFile};
use super::lease::LeaseClock;
use super::{Context, JobError, file_path};
use crate::compress::Encoding;
use crate::db;
use crate::db::jobs::{ClaimedJob, Progress};
use crate::db::rows::{Rows, Source};
use crate::encode::Format;
use crate::pipeline::{Piece, Pipeline, PipelineError};
use crate::query::{self, Endpoint, KeysetScan, Position};

impl Context {
    /// Writes the job's rows through the export pipeline: a resumable job from its last checkpoint, with a
    /// checkpoint after every batch; a keyless one from its first row, in one statement. Completes it after
    /// the last row.
    pub(super) async fn execute(&self, job: &ClaimedJob, lease: &LeaseClock) -> Result<(), JobError> {
        let state = &self.state;
        let settings = &self.settings;
        let dataset = state
            .published()
            .catalog
            .get(&job.dataset)
            .ok_or_else(|| JobError::Unserved(job.dataset.clone()))?;
        let dataset = &*dataset;
        let unusable = |error: Box<dyn std::error::Error + Send + Sync>| JobError::Request(error);
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&job.query).map_err(|e| unusable(e.into()))?;
        let request = query::params::parse(dataset, Endpoint::Job, &pairs).map_err(|e| unusable(e.into()))?;
        let format = Format::negotiate(Some(&job.format), None).map_err(|e| unusable(e.into()))?;
        let encoding = Encoding::from_name(&job.compression)
            .filter(|e| e.concatenates())
            .ok_or_else(|| unusable(format!("unknown compression {:?}", job.compression).into()))?;
        if job.resumable && dataset.key.is_none() {
            return Err(JobError::Unkeyed(dataset.name.clone()));
        }
        let (mut rows_before, mut position) = match checkpoint(job)? {
            Some((rows, position)) => (rows, Some(position)),
            None => (0, None),
        };
        let path = file_path(&self.directory, job.id, format, encoding);
        let start = if job.resumable { job.bytes_written as u64 } else { 0 };
        let mut file = match tokio::task::block_in_place(|| JobFile::open(&path, start)) {
            Ok(file) => file,
            Err(FileError::Short { .. }) if start > 0 => {
                tracing::warn!(job = %job.id, "the export file lost data; starting the job over");
                rows_before = 0;
                position = None;
                tokio::task::block_in_place(|| JobFile::open(&path, 0)).map_err(|e| file_error(&path, e))?
            }
            Err(error) => return Err(file_error(&path, error)),
        };
        if !job.resumable && (job.rows_written > 0 || job.bytes_written > 0) {
            tracing::info!(job = %job.id, "a job that cannot resume restarts from its first row");
            self.record(job, lease, Record::Restart).await?;
        }
        let (source, columns) = if job.resumable {
            let scan = KeysetScan::new(dataset, &request, format, settings.batch_rows).resumed(position, rows_before);
            let columns = scan.columns();
            (Source::Batches(scan), columns)
        } else {
            let plan = query::plan_rows(dataset, &request, format, None);
            let columns = plan.columns.clone();
            (Source::Statement(plan), columns)
        };
        let too_slow = || JobError::Stuck(settings.batch_timeout);
        // A batch stuck on a lock or a silent connection must not keep the job `running` forever.
        let mut deadline = tokio::time::Instant::now() + settings.batch_timeout;
        // `pg_stat_activity` shows which job a backend serves.
        // Under the role and claims of the job's creator, as its request was (the token itself is not kept).
        let session = job.role.as_ref().map(|(role, claims)| db::Session {
            role,
            claims,
            method: "POST",
            path: "/v1/exports",
            pre_request: state.auth.as_ref().and_then(|a| a.pre_request()),
        });
        let begin = db::begin_as(&state.begin_sql, &format!("pgspout job:{}", job.id), session.as_ref());
        let opened = Rows::open(&self.readers, &begin, source, None);
        let (mut rows, _) = tokio::time::timeout_at(deadline, opened)
            .await
            .map_err(|_| too_slow())??;
        rows.pause_between_batches();
        let encoder = format.file_encoder(&columns).map_err(PipelineError::from)?;
        let mut pipeline = Pipeline::new(rows, encoder, encoding, &state.limits, file.is_empty())?;
        if !job.resumable {
            pipeline = pipeline.with_progress_every(settings.batch_rows);
        }
        let mut reported = 0;
        let mut counted = rows_before;
        loop {
            let piece = tokio::time::timeout_at(deadline, pipeline.next(None))
                .await
                .map_err(|_| too_slow())??
                .expect("the pipeline ends with an End piece");
            let (bytes, done) = match piece {
                Piece::Chunk(bytes) => (bytes, None),
                Piece::Boundary(bytes) => (bytes, Some(false)),
                Piece::End(bytes) => (bytes, Some(true)),
            };
            write(&mut file, &path, &bytes, lease)?;
            let rows = rows_before + pipeline.rows();
            let Some(done) = done else {
                // A job that cannot resume has no batches: each chunk is progress, and it reports as it goes.
                if !job.resumable {
                    deadline = tokio::time::Instant::now() + settings.batch_timeout;
                }
                if !job.resumable && rows - reported >= settings.batch_rows {
                    reported = rows;
                    let progress = Progress {
                        rows: rows as i64,
                        bytes: file.len() as i64,
                        position: None,
                    };
                    self.record(job, lease, Record::Checkpoint(&progress)).await?;
                    state.metrics.job_rows(rows - counted);
                    counted = rows;
                }
                continue;
            };
            tokio::task::block_in_place(|| file.sync()).map_err(|e| file_error(&path, e))?;
            let position = pipeline.position().filter(|_| job.resumable);
            let progress = Progress {
                rows: rows as i64,
                bytes: file.len() as i64,
                position: position.as_ref(),
            };
            let record = if done {
                Record::Complete(&progress)
            } else {
                Record::Checkpoint(&progress)
            };
            self.record(job, lease, record).await?;
            state.metrics.job_rows(rows - counted);
            counted = rows;
            if done {
                tracing::info!(job = %job.id, rows, bytes = file.len(), "export job completed");
                return Ok(());
            }
            deadline = tokio::time::Instant::now() + settings.batch_timeout;
        }
    }

    /// Writes `record` to the job's row, fenced by the lease: not at all once it may have run out, and a
    /// `LeaseLost` when another instance took the job over.
    async fn record(&self, job: &ClaimedJob, lease: &LeaseClock, record: Record<'_>) -> Result<(), JobError> {
        let recorded = self
            .pool
            .with(async |client| {
                if !lease.is_valid() {
                    return Err(JobError::LeaseLost);
                }
                let (id, owner) = (job.id, self.owner);
                Ok(match record {
                    Record::Checkpoint(progress) => self.store.checkpoint(client, id, owner, progress).await?,
                    Record::Complete(progress) => {
                        let retention = self.settings.retention;
                        self.store.complete(client, id, owner, progress, retention).await?
                    }
                    Record::Restart => self.store.restart(client, id, owner).await?,
                })
            })
            .await?;
        if recorded { Ok(()) } else { Err(JobError::LeaseLost) }
    }
}

/// What a run records of its job.
#[derive(Clone, Copy)]
enum Record<'a> {
    /// Progress: a checkpoint once its bytes are durable (rows alone for a job that cannot resume).
    Checkpoint(&'a Progress<'a>),
    /// The last row is written: the job is completed.
    Complete(&'a Progress<'a>),
    /// A job that cannot resume starts over from its first row (and counts a restart).
    Restart,
}

/// The rows a job had written and the position it continues after, read back from its last checkpoint;
/// `None` to start from its first row. A checkpoint that cannot be read back fails the job: restarting from
/// the first row would append the rows again to the file.
fn checkpoint(job: &ClaimedJob) -> Result<Option<(u64, Position)>, JobError> {
    if !job.resumable {
        return Ok(None);
    }
    let unreadable = |cause: Box<dyn std::error::Error + Send + Sync>| JobError::Checkpoint {
        rows: job.rows_written,
        cause,
    };
    match &job.position {
        None if job.rows_written > 0 => Err(unreadable("it has no position".into())),
        None => Ok(None),
        Some(text) => {
            let position: Position = serde_json::from_str(text).map_err(|e| unreadable(e.into()))?;
            Ok(Some((job.rows_written as u64, position)))
        }
    }
}

/// Appends `bytes` to the file, unless the lease may have run out (another instance may own the file then).
fn write(file: &mut JobFile, path: &Path, bytes: &[u8], lease: &LeaseClock) -> Result<(), JobError> {
    if !lease.is_valid() {
        return Err(JobError::LeaseLost);
    }
    tokio::task::block_in_place(|| file.write(bytes)).map_err(|e| file_error(path, e))
}

/// A failure of the export file at `path`.
fn file_error(path: &Path, cause: impl std::error::Error + Send + Sync + 'static) -> JobError {
    JobError::File {
        path: path.to_owned(),
        cause: Box::new(cause),
    }
}
