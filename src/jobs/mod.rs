//! Background export jobs: each instance runs a [`Runner`] that claims queued jobs from Postgres and writes each
//! to a file in keyset batches, with a checkpoint after every batch, so a job survives the crash of any instance.
//!
//! # Layout
//! - `file`: the export file, cut back to its checkpoint on resume; file names and the sweep's file listing.
//! - `lease`: the lease as this instance's clock sees it.
//! - this module: claiming, the lease, a job's batches, sweeping expired files.
//!
//! A batch is one read-only transaction on the dataset (the same encoders as `/rows`), then one gzip member or
//! zstd frame (so every checkpoint ends a complete piece), then `fsync`, then the checkpoint row. A crash at any
//! point leaves the file at most a partial batch past its checkpoint, which the next run cuts off.

pub mod file;
mod lease;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use actix_web::web;
use deadpool_postgres::Pool;
use tokio::sync::watch;
use tokio::task::JoinSet;
use uuid::Uuid;

use self::file::{FileError, JobFile, files_older_than};
pub use self::file::{file_path, remove_files};
use self::lease::LeaseClock;
use crate::compress::{Compressor, Encoding};
use crate::db::export::{Export, OpenError, Position};
use crate::db::jobs::{ClaimedJob, JobStore, Progress};
use crate::encode::{Format, RowEncoder};
use crate::error::chain;
use crate::query::{self, Endpoint, KeysetScan};
use crate::settings::JobSettings;
use crate::startup::AppState;

/// Why a run of a job ended without completing it.
#[derive(Debug, thiserror::Error)]
enum JobError {
    /// The job cannot succeed as asked (its dataset is gone, a value no longer parses, the query fails).
    #[error("{0}")]
    Permanent(String),
    /// It may succeed on another run (the database or the disk had a problem).
    #[error("{0}")]
    Transient(String),
    /// This instance no longer holds the job: another took it over, or it was cancelled.
    #[error("the job's lease was lost")]
    LeaseLost,
    /// This instance is shutting down.
    #[error("the instance running it shut down")]
    Shutdown,
}

impl From<OpenError> for JobError {
    fn from(error: OpenError) -> Self {
        let message = chain(&error);
        match error {
            OpenError::PoolExhausted | OpenError::ExportsBusy | OpenError::Unavailable(_) => {
                JobError::Transient(message)
            }
            OpenError::StatementTimeout(_)
            | OpenError::InvalidValue { .. }
            | OpenError::Forbidden(_)
            | OpenError::Query(_) => JobError::Permanent(message),
        }
    }
}

impl From<tokio_postgres::Error> for JobError {
    fn from(error: tokio_postgres::Error) -> Self {
        OpenError::from(error).into()
    }
}

impl From<std::io::Error> for JobError {
    fn from(error: std::io::Error) -> Self {
        JobError::Transient(format!("writing the export file: {error}"))
    }
}

/// What a runner needs, shared by its job tasks.
struct Context {
    state: web::Data<AppState>,
    settings: JobSettings,
    directory: PathBuf,
    store: JobStore,
    pool: Pool,
    owner: Uuid,
}

/// A running runner; [`Runner::stop`] ends it.
pub struct Runner {
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
}

impl Runner {
    /// Starts a runner on threads of its own (file I/O blocks), with a pool of connections made from `connection`.
    pub fn start(
        state: web::Data<AppState>,
        jobs: &crate::startup::JobsState,
        connection: tokio_postgres::Config,
        database: &crate::settings::DatabaseSettings,
    ) -> std::io::Result<Runner> {
        let settings = jobs.settings.clone();
        let directory = jobs.directory.clone();
        let (stop, stopped) = watch::channel(false);
        // Per running job: its batch's connection, and a short one for lease renewals and checkpoints; plus
        // one for claiming and sweeping.
        let pool_size = 2 * settings.max_running + 1;
        let database = database.clone();
        let thread = std::thread::Builder::new().name("pgspout-jobs".into()).spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("pgspout-job")
                .enable_all()
                .build()
                .expect("a runtime for the job runner");
            runtime.block_on(async move {
                let context = Arc::new(Context {
                    store: JobStore::new(&settings.schema),
                    pool: crate::db::pool(connection, &database, pool_size),
                    owner: Uuid::new_v4(),
                    state,
                    settings,
                    directory,
                });
                tracing::info!(owner = %context.owner, "job runner started");
                context.run(stopped).await;
            });
        })?;
        Ok(Runner { stop, thread })
    }

    /// Stops claiming, hands running jobs back to the queue (at their last checkpoint) and waits for that.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

impl Context {
    async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut running = JoinSet::new();
        let mut polls = 0u32;
        loop {
            if *stop.borrow() {
                break;
            }
            while running.len() < self.settings.max_running {
                match self.claim().await {
                    Ok(Some(job)) => {
                        let context = self.clone();
                        let stop = stop.clone();
                        running.spawn(async move { context.run_job(job, stop).await });
                    }
                    Ok(None) => break,
                    Err(error) => {
                        tracing::warn!(%error, "cannot claim export jobs");
                        break;
                    }
                }
            }
            if polls.is_multiple_of(10) {
                self.sweep().await;
            }
            polls = polls.wrapping_add(1);
            tokio::select! {
                () = tokio::time::sleep(self.settings.poll_interval) => {}
                _ = stop.changed() => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
            }
        }
        // Each job sees the stop too, and hands itself back.
        while running.join_next().await.is_some() {}
        tracing::info!("job runner stopped");
    }

    async fn claim(&self) -> Result<Option<ClaimedJob>, Box<dyn std::error::Error + Send + Sync>> {
        let mut client = self.pool.get().await?;
        let client: &mut tokio_postgres::Client = &mut client;
        Ok(self.store.claim(client, self.owner, self.settings.lease).await?)
    }

    /// Runs one claimed job to its end (or the end of this run) and records the outcome.
    async fn run_job(self: Arc<Self>, job: ClaimedJob, mut stop: watch::Receiver<bool>) {
        let id = job.id;
        let lease = Arc::new(LeaseClock::new(self.settings.lease));
        let renewal = tokio::spawn(self.clone().renew(id, lease.clone()));
        let outcome = if job.attempts > self.settings.max_attempts {
            Err(JobError::Permanent(format!(
                "gave up after {} interrupted runs",
                self.settings.max_attempts
            )))
        } else {
            tracing::info!(job = %id, attempt = job.attempts, rows = job.rows_written, "running export job");
            tokio::select! {
                outcome = self.execute(&job, &lease) => outcome,
                () = lease.lost() => Err(JobError::LeaseLost),
                _ = stop.wait_for(|stopped| *stopped) => Err(JobError::Shutdown),
            }
        };
        renewal.abort();
        let (error, failed) = match outcome {
            Ok(()) => return,
            Err(JobError::LeaseLost) => {
                tracing::warn!(job = %id, "lost the job's lease (taken over or cancelled); stopped writing");
                return;
            }
            Err(JobError::Permanent(message)) => (message, true),
            Err(error @ JobError::Transient(_)) => {
                let failed = job.attempts >= self.settings.max_attempts;
                (error.to_string(), failed)
            }
            Err(error @ JobError::Shutdown) => (error.to_string(), false),
        };
        tracing::warn!(job = %id, error = %error, failed, "export job run ended");
        let released = async {
            let client = self.pool.get().await.map_err(|e| e.to_string())?;
            self.store
                .release(&**client, id, self.owner, &error, failed, self.settings.retention)
                .await
                .map_err(|e| chain(&e))
        };
        if let Err(error) = released.await {
            // The lease will run out and another run will take the job over.
            tracing::warn!(job = %id, %error, "cannot record the job's outcome");
        }
    }

    /// Renews the lease every third of its length until the job ends; marks it lost when it is.
    async fn renew(self: Arc<Self>, id: Uuid, lease: Arc<LeaseClock>) {
        loop {
            tokio::time::sleep(self.settings.lease / 3).await;
            let asked = Instant::now();
            let renewed = async {
                let client = self.pool.get().await.map_err(|e| e.to_string())?;
                self.store
                    .renew(&**client, id, self.owner, self.settings.lease)
                    .await
                    .map_err(|e| chain(&e))
            };
            match renewed.await {
                Ok(true) => lease.renewed(asked),
                Ok(false) => {
                    lease.lose();
                    return;
                }
                // The database may be back before the lease runs out; the clock stops writes if not.
                Err(error) => tracing::warn!(job = %id, %error, "cannot renew the job's lease"),
            }
        }
    }

    /// Writes the job's remaining batches, checkpointing after each; completes it after the last.
    async fn execute(&self, job: &ClaimedJob, lease: &LeaseClock) -> Result<(), JobError> {
        let state = &self.state;
        let dataset = state
            .catalog
            .get(&job.dataset)
            .ok_or_else(|| JobError::Permanent(format!("dataset {:?} is no longer configured", job.dataset)))?;
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(&job.query).map_err(|e| JobError::Permanent(e.to_string()))?;
        let request =
            query::params::parse(dataset, Endpoint::Job, &pairs).map_err(|e| JobError::Permanent(e.to_string()))?;
        let format = Format::negotiate(Some(&job.format), None).map_err(|e| JobError::Permanent(e.to_string()))?;
        let encoding = Encoding::from_name(&job.compression)
            .filter(|e| e.concatenates())
            .ok_or_else(|| JobError::Permanent(format!("unknown compression {:?}", job.compression)))?;
        let scan = KeysetScan::new(dataset, &request, format, self.settings.batch_rows);
        let encoder = RowEncoder::new(format, &scan.columns());
        let path = file_path(&self.directory, job.id, format, encoding);

        let mut rows = job.rows_written as u64;
        let mut position = job.position.clone();
        let mut file = match tokio::task::block_in_place(|| JobFile::open(&path, job.bytes_written as u64)) {
            Ok(file) => file,
            Err(FileError::Short { .. }) if job.bytes_written > 0 => {
                tracing::warn!(job = %job.id, "the export file lost data; starting the job over");
                rows = 0;
                position = None;
                tokio::task::block_in_place(|| JobFile::open(&path, 0))
                    .map_err(|e| JobError::Transient(e.to_string()))?
            }
            Err(error) => return Err(JobError::Transient(format!("{}: {error}", path.display()))),
        };
        loop {
            let remaining = request.limit.map(|limit| limit.saturating_sub(rows));
            let limit = remaining.map_or(self.settings.batch_rows, |r| r.min(self.settings.batch_rows));
            let plan = scan.batch(position.as_deref(), limit, None);
            let batch = Batch {
                plan: &plan,
                encoder: &encoder,
                encoding,
                lease,
            };
            // A batch stuck on a lock or a silent connection must not keep the job `running` forever.
            let (read, last) = tokio::time::timeout(self.settings.batch_timeout, self.write_batch(batch, &mut file))
                .await
                .map_err(|_| {
                    JobError::Transient(format!(
                        "a batch of {limit} rows took longer than jobs.batch_timeout ({:?})",
                        self.settings.batch_timeout
                    ))
                })??;
            rows += read;
            if let Some(last) = last {
                position = Some(last);
            }
            let client = self.pool.get().await.map_err(|e| JobError::Transient(e.to_string()))?;
            if !lease.is_valid() {
                return Err(JobError::LeaseLost);
            }
            let done = read < limit || remaining == Some(read);
            let progress = Progress {
                rows: rows as i64,
                bytes: file.len() as i64,
                position: position.as_deref(),
            };
            let recorded = if done {
                self.store
                    .complete(&**client, job.id, self.owner, &progress, self.settings.retention)
                    .await?
            } else {
                self.store.checkpoint(&**client, job.id, self.owner, &progress).await?
            };
            if !recorded {
                return Err(JobError::LeaseLost);
            }
            if done {
                tracing::info!(job = %job.id, rows, bytes = file.len(), "export job completed");
                return Ok(());
            }
        }
    }

    /// Writes one batch to the file and makes it durable: its rows and the last row's sort values.
    async fn write_batch(
        &self,
        batch: Batch<'_>,
        file: &mut JobFile,
    ) -> Result<(u64, Option<Vec<Option<String>>>), JobError> {
        let state = &self.state;
        let chunk_size = state.chunking.size;
        let (mut export, _) = Export::open(&self.pool, &state.begin_sql, batch.plan).await?;
        let mut compressor = Compressor::new(batch.encoding, &state.levels)?;
        let mut plain = Vec::with_capacity(chunk_size + chunk_size / 4);
        if file.is_empty() {
            batch.encoder.write_header(&mut plain);
        }
        let mut last = Position::new(batch.plan.columns.len());
        let mut read = 0u64;
        while let Some(row) = export.next_row().await? {
            batch
                .encoder
                .write_row(&row, &mut plain)
                .map_err(|e| JobError::Permanent(e.to_string()))?;
            last.note(&row)?;
            read += 1;
            if plain.len() >= chunk_size {
                let bytes = compress(&mut compressor, &mut plain)?;
                write(file, &bytes, batch.lease)?;
            }
        }
        export.finish().await?;
        let mut bytes = compress(&mut compressor, &mut plain)?;
        if let Some(compressor) = compressor {
            bytes.extend(compressor.finish()?);
        }
        write(file, &bytes, batch.lease)?;
        tokio::task::block_in_place(|| file.sync())?;
        Ok((read, (read > 0).then(|| last.values())))
    }

    /// Deletes finished jobs past their retention and files that no job can use any more.
    async fn sweep(&self) {
        let swept = async {
            let client = self.pool.get().await?;
            remove_files(&self.directory, &self.store.expire(&**client).await?);
            let ids = files_older_than(&self.directory, self.settings.lease * 2);
            let unused = self.store.unused_files(&**client, &ids).await?;
            remove_files(&self.directory, &unused);
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        };
        if let Err(error) = swept.await {
            tracing::warn!(%error, "cannot sweep export files");
        }
    }
}

/// What one batch of a job is written with.
struct Batch<'a> {
    plan: &'a crate::query::Plan,
    encoder: &'a RowEncoder,
    encoding: Encoding,
    lease: &'a LeaseClock,
}

/// Compresses (or, uncompressed, takes) what `plain` holds.
fn compress(compressor: &mut Option<Compressor>, plain: &mut Vec<u8>) -> std::io::Result<Vec<u8>> {
    let capacity = plain.capacity();
    match compressor {
        None => Ok(std::mem::replace(plain, Vec::with_capacity(capacity))),
        Some(compressor) => {
            compressor.write(plain)?;
            plain.clear();
            Ok(compressor.take(capacity))
        }
    }
}

/// Appends `bytes` to the file, unless the lease may have run out (another instance may own the file then).
fn write(file: &mut JobFile, bytes: &[u8], lease: &LeaseClock) -> Result<(), JobError> {
    if !lease.is_valid() {
        return Err(JobError::LeaseLost);
    }
    tokio::task::block_in_place(|| file.write(bytes))?;
    Ok(())
}
