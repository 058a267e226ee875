//! One run of a job: its rows through the export pipeline into its file, with checkpoints (or, for a job
//! that cannot resume, progress reports) along the way, and its completion. A parallel job runs each of its
//! parts so, into a file of its own, on connections sharing one snapshot, then joins the parts' files.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use postgres_protocol::escape::escape_literal;
use tokio::task::JoinSet;

use super::file::FileError;
use super::lease::LeaseClock;
use super::storage::{Sink, UploadState, open_file, part_path};
use super::{Context, JobError, file_name};
use crate::compress::Encoding;
use crate::dataset::Dataset;
use crate::db;
use crate::db::error::OpenError;
use crate::db::jobs::{ClaimedJob, Part, Progress};
use crate::db::replicas::Readers;
use crate::db::rows::{Rows, Source};
use crate::encode::Format;
use crate::pipeline::{Piece, Pipeline, PipelineError};
use crate::query::{self, Endpoint, KeysetScan, Position};

/// A job's request, read back from its row for one run.
struct JobRequest {
    dataset: Arc<Dataset>,
    /// The query string's pairs (a part adds its key range to them).
    pairs: Vec<(String, String)>,
    request: query::Request,
    format: Format,
    encoding: Encoding,
}

/// What a run writes: the whole job, or one part of a parallel job.
#[derive(Clone, Copy)]
enum Target<'a> {
    Whole,
    Part(&'a Part),
}

/// Rows and bytes in a file once written.
#[derive(Clone, Copy)]
struct Written {
    rows: u64,
    bytes: u64,
}

impl Context {
    /// Writes the job's rows through the export pipeline: a resumable job from its last checkpoint, with a
    /// checkpoint after every batch; a keyless one from its first row, in one statement; a parallel one in
    /// parts. Completes it after the last row.
    pub(super) async fn execute(self: &Arc<Self>, job: &ClaimedJob, lease: &Arc<LeaseClock>) -> Result<(), JobError> {
        let request = Arc::new(self.request_of(job)?);
        if job.parallelism > 1 {
            return self.execute_parallel(job, request, lease).await;
        }
        let _permit = self.reads.acquire().await.expect("the read permits are never closed");
        let begin = db::begin_as(
            &self.state.begin_sql,
            &format!("pgspout job:{}", job.id),
            self.session(job).as_ref(),
        );
        self.write(job, &request, Target::Whole, &begin, &self.readers, lease)
            .await
            .map(drop)
    }

    /// The job's stored request, parsed again (the catalog may have changed since it was queued).
    fn request_of(&self, job: &ClaimedJob) -> Result<JobRequest, JobError> {
        let dataset = self
            .state
            .published()
            .catalog
            .get(&job.dataset)
            .ok_or_else(|| JobError::Unserved(job.dataset.clone()))?;
        let unusable = |error: Box<dyn std::error::Error + Send + Sync>| JobError::Request(error);
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&job.query).map_err(|e| unusable(e.into()))?;
        let request = query::params::parse(&dataset, Endpoint::Job, &pairs).map_err(|e| unusable(e.into()))?;
        let format = Format::negotiate(Some(&job.format), None).map_err(|e| unusable(e.into()))?;
        let encoding = Encoding::from_name(&job.compression)
            .filter(|e| e.concatenates())
            .ok_or_else(|| unusable(format!("unknown compression {:?}", job.compression).into()))?;
        if job.resumable && dataset.key.is_none() {
            return Err(JobError::Unkeyed(dataset.name.clone()));
        }
        Ok(JobRequest {
            dataset,
            pairs,
            request,
            format,
            encoding,
        })
    }

    /// Under the role and claims of the job's creator, as its request was (the token itself is not kept).
    fn session<'a>(&'a self, job: &'a ClaimedJob) -> Option<db::Session<'a>> {
        job.role.as_ref().map(|(role, claims)| db::Session {
            role,
            claims,
            method: "POST",
            path: "/v1/exports",
            pre_request: self.state.auth.as_ref().and_then(|a| a.pre_request()),
        })
    }

    /// A parallel job: its parts (planned on its first run, from the key's histogram) each read on a
    /// connection of its own, all importing one snapshot that a further connection holds, so together they
    /// are the rows of one moment; then the parts' files, in key order, become the job's file.
    async fn execute_parallel(
        self: &Arc<Self>,
        job: &ClaimedJob,
        request: Arc<JobRequest>,
        lease: &Arc<LeaseClock>,
    ) -> Result<(), JobError> {
        // This instance's cap, which may be lower than the one the job was created under.
        let wanted = (job.parallelism as usize).min(self.settings.max_parallelism);
        // Every connection at once or none: two parallel jobs never each hold part of what they need.
        let _permits = self
            .reads
            .acquire_many(wanted as u32 + 1)
            .await
            .expect("the read permits are never closed");
        // An exported snapshot can only be imported on the server that exported it.
        let readers = self.readers.node()?;
        let session = self.session(job);
        let mut holder = readers.lease().await?;
        let holding = db::begin_as(
            &self.state.begin_sql,
            &format!("pgspout job:{}", job.id),
            session.as_ref(),
        );
        // The holder idles in its transaction for the whole run; a server-wide idle timeout must not end it.
        holder
            .begin(&format!("{holding}; SET LOCAL idle_in_transaction_session_timeout = 0"))
            .await
            .map_err(OpenError::from_begin)?;
        let snapshot: String = holder
            .client()
            .query_one("SELECT pg_catalog.pg_export_snapshot()", &[])
            .await?
            .get(0);
        let mut parts = self
            .pool
            .with(async |client| Ok::<_, JobError>(self.store.parts(client, job.id).await?))
            .await?;
        if parts.is_empty() {
            let bounds = key_bounds(holder.client(), &request.dataset, wanted).await?;
            parts = self
                .pool
                .with(async |client| {
                    Ok::<_, JobError>(self.store.plan_parts(client, job.id, self.owner, &bounds).await?)
                })
                .await?
                .ok_or(JobError::LeaseLost)?;
            tracing::info!(job = %job.id, parts = parts.len(), "planned the parallel job's parts");
        }
        let importing = format!(
            "{}; SET TRANSACTION SNAPSHOT {}",
            self.state.begin_sql,
            escape_literal(&snapshot)
        );
        let count = parts.len();
        let mut written: HashMap<i32, Written> = HashMap::new();
        let spool = self.storage.spool();
        tokio::task::block_in_place(|| std::fs::create_dir_all(&spool))
            .map_err(|e| file_error(&spool.display().to_string(), e))?;
        let mut running = JoinSet::new();
        for part in parts.iter().cloned() {
            if part.done {
                let (rows, bytes) = (part.rows_written as u64, part.bytes_written as u64);
                written.insert(part.number, Written { rows, bytes });
                continue;
            }
            // At most `wanted` at once (parts planned under a higher cap wait for a free connection).
            if running.len() >= wanted {
                let (number, part) = joined(running.join_next().await.expect("the set is not empty"))?;
                written.insert(number, part);
            }
            let begin = db::begin_as(
                &importing,
                &format!("pgspout job:{} part {}/{count}", job.id, part.number + 1),
                session.as_ref(),
            );
            let (context, job, request) = (self.clone(), job.clone(), request.clone());
            let (readers, lease) = (readers.clone(), lease.clone());
            // A task each, so the parts encode and compress on every thread of the runner.
            running.spawn(async move {
                let target = Target::Part(&part);
                let written = context.write(&job, &request, target, &begin, &readers, &lease).await?;
                Ok::<_, JobError>((part.number, written))
            });
        }
        // The first part to fail ends the run; dropping the set cancels the others' queries.
        while let Some(ended) = running.join_next().await {
            let (number, part) = joined(ended)?;
            written.insert(number, part);
        }
        holder.release().await?;
        if !lease.is_valid() {
            return Err(JobError::LeaseLost);
        }
        let (format, encoding) = (request.format, request.encoding);
        let pieces: Vec<(PathBuf, u64)> = parts
            .iter()
            .map(|part| {
                let path = part_path(&spool, job.id, part.number, format, encoding);
                (path, written[&part.number].bytes)
            })
            .collect();
        let name = file_name(job.id, format, encoding);
        let mut sink = self.open_sink(job, &name, 0, lease).await?;
        sink.append_files(&pieces).await.map_err(|e| file_error(&name, e))?;
        let bytes = sink.len();
        let rows: u64 = written.values().map(|w| w.rows).sum();
        let progress = Progress {
            rows: rows as i64,
            bytes: bytes as i64,
            position: None,
            upload: None,
        };
        self.record(job, lease, Record::Complete(&progress)).await?;
        tracing::info!(job = %job.id, rows, bytes, parts = count, "parallel export job completed");
        tokio::task::block_in_place(|| {
            for (piece, _) in &pieces {
                if let Err(error) = std::fs::remove_file(piece) {
                    tracing::warn!(path = %piece.display(), %error, "cannot remove a part's file");
                }
            }
        });
        Ok(())
    }

    /// Writes `target`'s rows into its file from its last checkpoint, through `readers`, each batch's
    /// transaction opened with `begin`; records each checkpoint, and the end (completing a whole job).
    async fn write(
        &self,
        job: &ClaimedJob,
        request: &JobRequest,
        target: Target<'_>,
        begin: &str,
        readers: &Readers,
        lease: &LeaseClock,
    ) -> Result<Written, JobError> {
        let state = &self.state;
        let settings = &self.settings;
        let dataset = &*request.dataset;
        let format = request.format;
        let encoding = request.encoding;
        let (checkpoint, name, start, range) = match target {
            Target::Whole => {
                let name = file_name(job.id, format, encoding);
                let start = if job.resumable { job.bytes_written as u64 } else { 0 };
                let checkpoint = checkpoint(job.resumable, job.rows_written, job.position.as_deref())?;
                (checkpoint, name, start, None)
            }
            Target::Part(part) => {
                let path = part_path(&self.storage.spool(), job.id, part.number, format, encoding);
                let checkpoint = checkpoint(true, part.rows_written, part.position.as_deref())?;
                let range = self.part_request(request, part)?;
                (
                    checkpoint,
                    path.display().to_string(),
                    part.bytes_written as u64,
                    Some(range),
                )
            }
        };
        let request_here = range.as_ref().unwrap_or(&request.request);
        let (mut rows_before, mut position) = match checkpoint {
            Some((rows, position)) => (rows, Some(position)),
            None => (0, None),
        };
        let open = async |start| match target {
            Target::Whole => self.open_sink(job, &name, start, lease).await,
            Target::Part(_) => {
                let path = PathBuf::from(&name);
                tokio::task::block_in_place(|| open_file(path, start)).map_err(|e| file_error(&name, e))
            }
        };
        let mut sink = match open(start).await {
            Ok(sink) => sink,
            Err(JobError::File { cause, .. })
                if start > 0 && matches!(cause.downcast_ref(), Some(FileError::Short { .. })) =>
            {
                tracing::warn!(job = %job.id, file = %name, error = %cause, "the export file lost data; starting it over");
                rows_before = 0;
                position = None;
                open(0).await?
            }
            Err(error) => return Err(error),
        };
        if matches!(target, Target::Whole) && !job.resumable && (job.rows_written > 0 || job.bytes_written > 0) {
            tracing::info!(job = %job.id, "a job that cannot resume restarts from its first row");
            self.record(job, lease, Record::Restart).await?;
        }
        let (source, columns) = if job.resumable {
            let scan =
                KeysetScan::new(dataset, request_here, format, settings.batch_rows).resumed(position, rows_before);
            let columns = scan.columns();
            (Source::Batches(scan), columns)
        } else {
            let plan = query::plan_rows(dataset, request_here, format, None);
            let columns = plan.columns.clone();
            (Source::Statement(plan), columns)
        };
        let too_slow = || JobError::Stuck(settings.batch_timeout);
        // A batch stuck on a lock or a silent connection must not keep the job `running` forever.
        let mut deadline = tokio::time::Instant::now() + settings.batch_timeout;
        let opened = Rows::open(readers, begin, source, None);
        let (mut rows, _) = tokio::time::timeout_at(deadline, opened)
            .await
            .map_err(|_| too_slow())??;
        rows.pause_between_batches();
        let encoder = format.file_encoder(&columns).map_err(PipelineError::from)?;
        // The header starts the job's file: the first part's, in a parallel job.
        let header = sink.is_empty() && matches!(target, Target::Whole | Target::Part(Part { number: 0, .. }));
        let mut pipeline = Pipeline::new(rows, encoder, encoding, &state.limits, header)?;
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
            write(&mut sink, &bytes, lease).await?;
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
                        bytes: sink.len() as i64,
                        position: None,
                        upload: None,
                    };
                    self.record(job, lease, Record::Checkpoint(&progress)).await?;
                    state.metrics.job_rows(rows - counted);
                    counted = rows;
                }
                continue;
            };
            let made = if done && matches!(target, Target::Whole) {
                sink.finish().await
            } else {
                sink.sync().await
            };
            made.map_err(|e| file_error(&name, e))?;
            let position = pipeline.position().filter(|_| job.resumable);
            let upload = sink.upload();
            let progress = Progress {
                rows: rows as i64,
                bytes: sink.len() as i64,
                position: position.as_ref(),
                upload: upload.as_ref(),
            };
            let record = match target {
                Target::Part(part) => Record::Part {
                    number: part.number,
                    progress: &progress,
                    done,
                },
                Target::Whole if done => Record::Complete(&progress),
                Target::Whole => Record::Checkpoint(&progress),
            };
            self.record(job, lease, record).await?;
            state.metrics.job_rows(rows - counted);
            counted = rows;
            if done {
                let bytes = sink.len();
                match target {
                    Target::Whole => tracing::info!(job = %job.id, rows, bytes, "export job completed"),
                    Target::Part(part) => {
                        tracing::info!(job = %job.id, part = part.number, rows, bytes, "part completed")
                    }
                }
                return Ok(Written { rows, bytes });
            }
            deadline = tokio::time::Instant::now() + settings.batch_timeout;
        }
    }

    /// The job's file `name` at its checkpoint of `start` bytes (0: a new file); a new upload is recorded
    /// before anything is written to it, and aborted if it cannot be.
    async fn open_sink(&self, job: &ClaimedJob, name: &str, start: u64, lease: &LeaseClock) -> Result<Sink, JobError> {
        let sink = self
            .storage
            .open(name, start, job.upload.as_ref())
            .await
            .map_err(|e| file_error(name, e))?;
        if let Some(upload) = sink.upload().filter(|_| sink.is_new_upload())
            && let Err(error) = self.record(job, lease, Record::Upload(&upload)).await
        {
            self.storage.remove(&[], &[(upload.key, upload.id)]).await;
            return Err(error);
        }
        Ok(sink)
    }

    /// The job's request restricted to `part`'s key range, through the query language's own filters (so its
    /// bounds are bind parameters, type-checked as any filter's values).
    fn part_request(&self, request: &JobRequest, part: &Part) -> Result<query::Request, JobError> {
        let dataset = &*request.dataset;
        let key = dataset.key.ok_or_else(|| JobError::Unkeyed(dataset.name.clone()))?;
        let name = &dataset.columns[key].name;
        let mut pairs = request.pairs.clone();
        if let Some(lower) = &part.lower {
            pairs.push((name.clone(), format!("gte.{lower}")));
        }
        if let Some(upper) = &part.upper {
            pairs.push((name.clone(), format!("lt.{upper}")));
        }
        query::params::parse(dataset, Endpoint::Job, &pairs).map_err(|e| JobError::Request(e.into()))
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
                    Record::Upload(upload) => self.store.begin_upload(client, id, owner, upload).await?,
                    Record::Part { number, progress, done } => {
                        self.store
                            .checkpoint_part(client, id, owner, number, progress, done)
                            .await?
                    }
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
    /// A new upload was started (object storage), before its first part.
    Upload(&'a UploadState),
    /// A part of a parallel job checkpointed, or (`done`) wrote its last row.
    Part {
        number: i32,
        progress: &'a Progress<'a>,
        done: bool,
    },
}

/// The rows a job (or part) had written and the position it continues after, read back from its last
/// checkpoint; `None` to start from its first row. A checkpoint that cannot be read back fails the job:
/// restarting from the first row would append the rows again to the file.
fn checkpoint(resumable: bool, rows: i64, position: Option<&str>) -> Result<Option<(u64, Position)>, JobError> {
    if !resumable {
        return Ok(None);
    }
    let unreadable = |cause: Box<dyn std::error::Error + Send + Sync>| JobError::Checkpoint { rows, cause };
    match position {
        None if rows > 0 => Err(unreadable("it has no position".into())),
        None => Ok(None),
        Some(text) => {
            let position: Position = serde_json::from_str(text).map_err(|e| unreadable(e.into()))?;
            Ok(Some((rows as u64, position)))
        }
    }
}

/// Keys that split `dataset`'s rows into `parts` ranges of about equal size (the keys where each part after
/// the first starts), from the planner's histogram of the key column: what `ANALYZE` last sampled. Fewer
/// when the histogram has fewer distinct bounds; none (one part) when there are no statistics the
/// transaction's role may see (a view, a table never analysed, row-level security).
async fn key_bounds(
    client: &tokio_postgres::Client,
    dataset: &Dataset,
    parts: usize,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let Some(key) = dataset.key else {
        return Ok(Vec::new());
    };
    // `regclass` resolves the name without locking the relation: this transaction holds the snapshot for
    // the whole job, and must not hold a lock that long.
    let row = client
        .query_opt(
            "SELECT s.histogram_bounds::text::text[] FROM pg_catalog.pg_stats s \
             JOIN pg_catalog.pg_class c ON c.relname = s.tablename \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace AND n.nspname = s.schemaname \
             WHERE c.oid = $1::text::pg_catalog.regclass AND s.attname = $2 AND s.histogram_bounds IS NOT NULL \
             ORDER BY s.inherited DESC LIMIT 1",
            &[&dataset.relation, &dataset.columns[key].name],
        )
        .await?;
    let histogram: Vec<String> = row.map(|r| r.get(0)).unwrap_or_default();
    Ok(split_points(&histogram, parts))
}

/// Of `histogram` (sorted bounds of equally populated buckets), the values that cut it into `parts` about
/// equal ranges, each distinct.
fn split_points(histogram: &[String], parts: usize) -> Vec<String> {
    if histogram.len() < 2 || parts < 2 {
        return Vec::new();
    }
    let buckets = histogram.len() - 1;
    let mut points: Vec<String> = Vec::new();
    for i in 1..parts {
        let value = &histogram[i * buckets / parts];
        if points.last() != Some(value) && value != &histogram[0] {
            points.push(value.clone());
        }
    }
    points
}

/// A part's task's outcome: its number and what it wrote, or its error; a panic goes on unwinding.
fn joined(ended: Result<Result<(i32, Written), JobError>, tokio::task::JoinError>) -> Result<(i32, Written), JobError> {
    match ended {
        Ok(outcome) => outcome,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        // Tasks are only aborted by dropping the set, which ends this run first.
        Err(_) => Err(JobError::Shutdown),
    }
}

/// Appends `bytes` to the file, unless the lease may have run out (another instance may own the file then).
async fn write(sink: &mut Sink, bytes: &[u8], lease: &LeaseClock) -> Result<(), JobError> {
    if !lease.is_valid() {
        return Err(JobError::LeaseLost);
    }
    sink.write(bytes).await.map_err(|e| file_error(&sink.name(), e))
}

/// A failure of the export file `file` (a path or a key).
fn file_error(file: &str, cause: impl std::error::Error + Send + Sync + 'static) -> JobError {
    JobError::File {
        file: file.to_owned(),
        cause: Box::new(cause),
    }
}

#[cfg(test)]
mod tests {
    use super::split_points;

    #[test]
    fn a_histogram_splits_into_equal_ranges_of_distinct_bounds() {
        let histogram: Vec<String> = (0..=100).map(|i| (i * 10).to_string()).collect();
        assert_eq!(split_points(&histogram, 4), ["250", "500", "750"]);
        assert_eq!(split_points(&histogram, 1), Vec::<String>::new());
        assert_eq!(split_points(&histogram[..1], 4), Vec::<String>::new());
        let few: Vec<String> = ["a", "b", "c"].map(String::from).into();
        assert_eq!(split_points(&few, 8), ["b"]);
    }
}
