//! Background export jobs: each instance runs a [`Runner`] that claims queued jobs from Postgres and writes each
//! to a file through the export pipeline, so a job survives the crash of any instance.
//!
//! # Layout
//! - `file`: the export file on disk, cut back to its checkpoint on resume; the sweep's file listing.
//! - `storage`: where files go (a directory or object storage), and the sink a run writes to.
//! - `s3`: the requests to an S3-compatible object store.
//! - `lease`: the lease as this instance's clock sees it.
//! - `run`: one run of a job, through the export pipeline into its file.
//! - `webhooks`: delivering the webhooks queued when jobs end.
//! - this module: claiming, the lease, a run's outcome, sweeping expired files. No actix here.
//!
//! A job on a dataset with a key reads keyset batches, each a read-only transaction (the same rows and
//! encoders as a chunked `/rows`), then ends one gzip member or zstd frame (so every checkpoint ends a complete
//! piece), then `fsync`s, then records the checkpoint. A crash at any point leaves the file at most a partial
//! batch past its checkpoint, which the next run cuts off. A job on a keyless dataset cannot continue after a
//! row, so it reads one statement and, if interrupted, starts over from its first row (its status says
//! `"resumable": false`).

pub(crate) mod file;
mod lease;
mod run;
pub(crate) mod s3;
mod storage;
mod webhooks;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use tokio::task::JoinSet;
use uuid::Uuid;

use self::file::files_older_than;
use self::lease::LeaseClock;
pub(crate) use self::storage::{Storage, UploadState, file_name};
use crate::db::Pool;
use crate::db::error::OpenError;
use crate::db::jobs::{ClaimedJob, JobStore, RunOutcome};
use crate::db::replicas::Readers;
use crate::db::rows::ReadError;
use crate::pipeline::PipelineError;
use crate::report::chain;
use crate::settings::JobSettings;
use crate::state::{AppState, JobsState};

/// An error of the runner's bookkeeping, which is only logged.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How often `pgspout_jobs{status}` is refreshed from the job table.
const JOB_COUNT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a run of a job ended without completing it. Each kind keeps its cause; [`JobError::is_permanent`]
/// says whether another run could succeed.
#[derive(Debug, thiserror::Error)]
enum JobError {
    /// The job's stored request no longer parses (its query, format or compression).
    #[error("the job's request is unusable")]
    Request(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The dataset lost the key a resumable job continues by.
    #[error("dataset {0:?} no longer has a key to resume by")]
    Unkeyed(String),
    /// The last checkpoint cannot be read back; restarting from the first row would append rows twice.
    #[error("the checkpoint after {rows} rows cannot be read back; the job cannot resume")]
    Checkpoint {
        /// Rows written at that checkpoint.
        rows: i64,
        /// Why it cannot be read.
        #[source]
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Too many runs were interrupted.
    #[error("gave up after {0} interrupted runs")]
    GaveUp(i32),
    /// Opening the rows, or a statement of the job's own, failed.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Encoding or compressing failed mid-export, or a read failed after an earlier one (a database
    /// failure is an [`JobError::Open`]).
    #[error(transparent)]
    Pipeline(PipelineError),
    /// The export file could not be opened or written.
    #[error("the export file {file}")]
    File {
        /// Its path or key.
        file: String,
        /// What failed.
        #[source]
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A batch made no progress within `jobs.batch_timeout`.
    #[error("a batch made no progress within jobs.batch_timeout ({0:?})")]
    Stuck(std::time::Duration),
    /// This instance no longer holds the job: another took it over, or it was cancelled.
    #[error("the job's lease was lost")]
    LeaseLost,
    /// This instance does not serve the job's dataset (it went away in a reload); another instance may.
    #[error("the instance running it does not serve dataset {0:?}")]
    Unserved(String),
    /// This instance is shutting down.
    #[error("the instance running it shut down")]
    Shutdown,
}

impl JobError {
    /// Whether the job cannot succeed as asked, so it fails now rather than after its attempts.
    fn is_permanent(&self) -> bool {
        match self {
            JobError::Request(_) | JobError::Unkeyed(_) | JobError::Checkpoint { .. } | JobError::GaveUp(_) => true,
            JobError::Open(error) => match error {
                OpenError::PoolExhausted
                | OpenError::ExportsBusy
                | OpenError::Unavailable(_)
                | OpenError::NoReplica
                | OpenError::Conflict(_) => false,
                OpenError::StatementTimeout(_)
                | OpenError::InvalidValue { .. }
                | OpenError::TooCostly { .. }
                | OpenError::Forbidden(_)
                | OpenError::RoleSwitch(_)
                | OpenError::Refused(_)
                | OpenError::Query(_) => true,
            },
            JobError::Pipeline(PipelineError::Encode(_) | PipelineError::TooLarge { .. }) => true,
            JobError::Pipeline(PipelineError::Read(_) | PipelineError::Compress(_)) => false,
            JobError::File { .. }
            | JobError::Stuck(_)
            | JobError::LeaseLost
            | JobError::Unserved(_)
            | JobError::Shutdown => false,
        }
    }
}

impl From<deadpool_postgres::PoolError> for JobError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        OpenError::from(error).into()
    }
}

impl From<tokio_postgres::Error> for JobError {
    fn from(error: tokio_postgres::Error) -> Self {
        OpenError::from(error).into()
    }
}

impl From<PipelineError> for JobError {
    fn from(error: PipelineError) -> Self {
        match error {
            PipelineError::Read(ReadError::Database(error)) => error.into(),
            other => JobError::Pipeline(other),
        }
    }
}

/// What a runner needs, shared by its job tasks.
struct Context {
    state: Arc<AppState>,
    settings: JobSettings,
    storage: Storage,
    store: JobStore,
    pool: Pool,
    /// Where batches are read.
    readers: Readers,
    /// One per connection rows may be read on: a job takes all it needs at once (a parallel job one per
    /// part and one holding the snapshot), so jobs never wait on each other's connections.
    reads: tokio::sync::Semaphore,
    owner: Uuid,
}

/// A running runner; [`Runner::stop`] ends it.
pub(crate) struct Runner {
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
}

impl Runner {
    /// Starts a runner on threads of its own (file I/O blocks), with a pool of connections made from `connection`.
    pub(crate) fn start(
        state: Arc<AppState>,
        jobs: &JobsState,
        connection: crate::db::Connection,
        database: &crate::settings::DatabaseSettings,
    ) -> std::io::Result<Runner> {
        let settings = jobs.settings.clone();
        let storage = jobs.storage.clone();
        let sender =
            webhooks::Sender::new(&settings.webhooks, settings.webhook_timeout).map_err(std::io::Error::other)?;
        let (stop, stopped) = watch::channel(false);
        // Reads: one per running job, and room for one parallel job's parts and snapshot besides. Then per
        // running job a short one for lease renewals and checkpoints, and one for claiming and sweeping.
        let reads = settings.max_running + settings.max_parallelism;
        let pool_size = reads + settings.max_running + 1;
        let database = database.clone();
        let thread = std::thread::Builder::new().name("pgspout-jobs".into()).spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("pgspout-job")
                .enable_all()
                .build()
                .expect("a runtime for the job runner");
            runtime.block_on(async move {
                let pool = crate::db::pool(&connection, &database, pool_size);
                // Batches read where requests do: from a healthy replica when there are any.
                let readers = Readers::new(pool.clone(), state.replicas.as_ref(), &database, reads);
                let context = Arc::new(Context {
                    store: JobStore::new(&settings.schema, &settings.webhooks),
                    pool,
                    readers,
                    reads: tokio::sync::Semaphore::new(reads),
                    owner: Uuid::new_v4(),
                    state,
                    settings,
                    storage,
                });
                tracing::info!(owner = %context.owner, "job runner started");
                if let Some(sender) = sender {
                    // Ends with the runtime if a delivery is under way: its claim runs out and it is sent again.
                    tokio::spawn(context.clone().deliver_webhooks(sender, stopped.clone()));
                }
                context.run(stopped).await;
            });
        })?;
        Ok(Runner { stop, thread })
    }

    /// Stops claiming, hands running jobs back to the queue (at their last checkpoint) and waits for that.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

/// Aborts a task when dropped, even by a panic unwinding past it: a job's lease renewal must not outlive it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Context {
    async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut running = JoinSet::new();
        let mut jobs = HashMap::new();
        let mut polls = 0u32;
        let mut counted_at: Option<Instant> = None;
        loop {
            if *stop.borrow() {
                break;
            }
            while running.len() < self.settings.max_running {
                match self.claim().await {
                    Ok(Some(job)) => {
                        let id = job.id;
                        let context = self.clone();
                        let stop = stop.clone();
                        let task = running.spawn(async move { context.run_job(job, stop).await });
                        jobs.insert(task.id(), id);
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
            if counted_at.is_none_or(|at| at.elapsed() >= JOB_COUNT_INTERVAL) {
                counted_at = Some(Instant::now());
                self.count_jobs().await;
            }
            polls = polls.wrapping_add(1);
            tokio::select! {
                () = tokio::time::sleep(self.settings.poll_interval) => {}
                _ = stop.changed() => {}
                Some(ended) = running.join_next_with_id(), if !running.is_empty() => self.ended_task(&mut jobs, ended),
            }
        }
        // Each job sees the stop too, and hands itself back.
        while let Some(ended) = running.join_next_with_id().await {
            self.ended_task(&mut jobs, ended);
        }
        tracing::info!("job runner stopped");
    }

    async fn claim(&self) -> Result<Option<ClaimedJob>, Box<dyn std::error::Error + Send + Sync>> {
        let datasets = self.state.published().catalog.names();
        self.pool
            .with(async |client| {
                Ok(self
                    .store
                    .claim(client, self.owner, self.settings.lease, &datasets)
                    .await?)
            })
            .await
    }

    /// Runs one claimed job to its end (or the end of this run) and records the outcome.
    async fn run_job(self: Arc<Self>, job: ClaimedJob, mut stop: watch::Receiver<bool>) {
        let id = job.id;
        let lease = Arc::new(LeaseClock::new(self.settings.lease));
        let renewal = AbortOnDrop(tokio::spawn(self.clone().renew(id, lease.clone())));
        let outcome = if job.attempts > self.settings.max_attempts {
            Err(JobError::GaveUp(self.settings.max_attempts))
        } else {
            tracing::info!(job = %id, attempt = job.attempts, rows = job.rows_written, "running export job");
            tokio::select! {
                outcome = self.execute(&job, &lease) => outcome,
                () = lease.lost() => Err(JobError::LeaseLost),
                _ = stop.wait_for(|stopped| *stopped) => Err(JobError::Shutdown),
            }
        };
        drop(renewal);
        let metrics = &self.state.metrics;
        let (error, failed) = match outcome {
            Ok(()) => {
                metrics.job_run(RunOutcome::Completed.as_str());
                return;
            }
            Err(JobError::LeaseLost) => {
                tracing::warn!(job = %id, "lost the job's lease (taken over or cancelled); stopped writing");
                let closed = self
                    .pool
                    .with(async |client| Ok::<_, BoxError>(self.store.lose_run(client, id, self.owner).await?))
                    .await;
                match closed {
                    Ok(outcome) => {
                        metrics.job_run(outcome.as_str());
                        if outcome == RunOutcome::Cancelled {
                            self.abandon_upload(id).await;
                        }
                    }
                    Err(error) => {
                        metrics.job_run(RunOutcome::LeaseLost.as_str());
                        tracing::warn!(job = %id, error = %chain(&*error), "cannot record the end of the job's run");
                    }
                }
                return;
            }
            // A shutdown or a dataset this instance does not serve is no attempt of the job's own.
            Err(error @ (JobError::Shutdown | JobError::Unserved(_))) => (chain(&error), false),
            Err(error) => {
                let failed = error.is_permanent() || job.attempts >= self.settings.max_attempts;
                (chain(&error), failed)
            }
        };
        tracing::warn!(job = %id, error = %error, failed, "export job run ended");
        let outcome = if failed {
            RunOutcome::Failed
        } else {
            RunOutcome::Interrupted
        };
        metrics.job_run(outcome.as_str());
        let released = self
            .pool
            .with(async |client| {
                let retention = self.settings.retention;
                Ok::<_, BoxError>(
                    self.store
                        .release(client, id, self.owner, &error, failed, retention)
                        .await?,
                )
            })
            .await;
        match released {
            Ok(()) if failed => self.abandon_upload(id).await,
            Ok(()) => {}
            // The lease will run out and another run will take the job over.
            Err(error) => tracing::warn!(job = %id, error = %chain(&*error), "cannot record the job's outcome"),
        }
    }

    /// Aborts the open upload of a job that failed or was cancelled: no run will continue it.
    async fn abandon_upload(&self, id: Uuid) {
        if !matches!(self.storage, Storage::Objects(_)) {
            return;
        }
        let upload = self
            .pool
            .with(async |client| Ok::<_, BoxError>(self.store.open_upload(client, id).await?))
            .await;
        match upload {
            Ok(upload) => self.storage.remove(&[], &Vec::from_iter(upload)).await,
            Err(error) => tracing::warn!(job = %id, error = %chain(&*error), "cannot find the job's upload"),
        }
    }

    /// Renews the lease every third of its length until the job ends; marks it lost when it is.
    async fn renew(self: Arc<Self>, id: Uuid, lease: Arc<LeaseClock>) {
        loop {
            tokio::time::sleep(self.settings.lease / 3).await;
            let asked = Instant::now();
            let renewed = self
                .pool
                .with(async |client| {
                    Ok::<_, BoxError>(self.store.renew(client, id, self.owner, self.settings.lease).await?)
                })
                .await;
            match renewed {
                Ok(true) => lease.renewed(asked),
                Ok(false) => {
                    lease.lose();
                    return;
                }
                // The database may be back before the lease runs out; the clock stops writes if not.
                Err(error) => tracing::warn!(job = %id, error = %chain(&*error), "cannot renew the job's lease"),
            }
        }
    }

    /// Forgets a finished job task, logging (and counting) a panic: the job's lease then runs out and another
    /// run takes it over.
    fn ended_task(
        &self,
        jobs: &mut HashMap<tokio::task::Id, Uuid>,
        ended: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
    ) {
        let task = match &ended {
            Ok((task, ())) => *task,
            Err(error) => error.id(),
        };
        let job = jobs.remove(&task);
        if let Err(error) = ended
            && error.is_panic()
        {
            self.state.metrics.job_run("panicked");
            tracing::error!(job = ?job, %error, "an export job's task panicked; its lease will run out and another run will take it over");
        }
    }

    /// Refreshes `pgspout_jobs{status}` from the job table.
    async fn count_jobs(&self) {
        let counted = self
            .pool
            .with(async |client| Ok::<_, BoxError>(self.store.count_by_status(client).await?))
            .await;
        match counted {
            Ok(counts) => self.state.metrics.jobs(&counts),
            Err(error) => tracing::warn!(%error, "cannot count export jobs"),
        }
    }

    /// Deletes finished jobs past their retention, files that no job can use any more, and webhook deliveries
    /// done with.
    async fn sweep(&self) {
        let swept = self
            .pool
            .with(async |client| {
                let (expired, uploads) = self.store.expire(client).await?;
                self.storage.remove(&expired, &uploads).await;
                let spool = self.storage.spool();
                let age = self.settings.lease * 2;
                let mut ids = tokio::task::spawn_blocking(move || files_older_than(&spool, age)).await?;
                // An object appears when its job completes, so only its job's end makes it unused: no age.
                ids.extend(self.storage.object_ids().await?);
                let unused = self.store.unused_files(client, &ids).await?;
                let abandoned = webhooks::longest_delivery(&self.settings) + self.settings.retention;
                self.store
                    .sweep_deliveries(client, self.settings.retention, abandoned)
                    .await?;
                self.storage.remove(&unused, &[]).await;
                Ok::<_, BoxError>(())
            })
            .await;
        if let Err(error) = swept {
            tracing::warn!(%error, "cannot sweep export files");
        }
    }
}
