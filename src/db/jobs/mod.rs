//! Background export jobs in Postgres: every statement on the job table (its schema is in `schema`).
//!
//! A job is claimed with `FOR UPDATE SKIP LOCKED` and held by a lease (an owner and an expiry) that its runner
//! renews. Every write a runner makes is fenced by `lease_owner = me AND status = 'running'`, so an instance
//! that lost its lease (it stalled, or the job was cancelled) finds out at its next write and stops.

use std::time::Duration;

use postgres_protocol::escape::escape_identifier;
use tokio_postgres::GenericClient;
use uuid::Uuid;

mod schema;

pub(crate) use self::schema::{JobStatus, RunOutcome, migrate};
use crate::query::Position;

/// What a new job asks for, validated.
pub(crate) struct NewJob<'a> {
    /// The dataset's name.
    pub(crate) dataset: &'a str,
    /// `ndjson` or `csv`.
    pub(crate) format: &'a str,
    /// `identity`, `gzip` or `zstd`.
    pub(crate) compression: &'a str,
    /// The query string, as for `/rows`.
    pub(crate) query: &'a str,
    /// Whether it resumes from checkpoints (its dataset has a key) or restarts from its first row.
    pub(crate) resumable: bool,
    /// Under `[auth]`: who asked, and the role and claims it runs with (never the token).
    pub(crate) requester: Option<Requester<'a>>,
}

/// Who created a job, under `[auth]`.
pub(crate) struct Requester<'a> {
    /// Its owner: only they see the job.
    pub(crate) owner: &'a str,
    /// The role its batches run as.
    pub(crate) role: &'a str,
    /// The claims its batches see, JSON.
    pub(crate) claims: &'a str,
}

/// A job as its runner sees it when it claims it.
#[derive(Debug, Clone)]
pub(crate) struct ClaimedJob {
    /// The job.
    pub(crate) id: Uuid,
    /// The dataset's name.
    pub(crate) dataset: String,
    /// `ndjson` or `csv`.
    pub(crate) format: String,
    /// `identity`, `gzip` or `zstd`.
    pub(crate) compression: String,
    /// The query string.
    pub(crate) query: String,
    /// Rows in the file at the last checkpoint.
    pub(crate) rows_written: i64,
    /// The file's length at the last checkpoint.
    pub(crate) bytes_written: i64,
    /// The last checkpoint's position as stored (JSON text); `None` before the first.
    pub(crate) position: Option<String>,
    /// Runs so far, this one included.
    pub(crate) attempts: i32,
    /// Whether it resumes from checkpoints or restarts from its first row.
    pub(crate) resumable: bool,
    /// The role and claims it runs with, when created under `[auth]`.
    pub(crate) role: Option<(String, String)>,
}

/// How far a job's file has got: durable on disk when recorded.
pub(crate) struct Progress<'a> {
    /// Rows in the file.
    pub(crate) rows: i64,
    /// The file's length.
    pub(crate) bytes: i64,
    /// Its last row's position (`None` while it has none, and for jobs that cannot resume).
    pub(crate) position: Option<&'a Position>,
}

impl Progress<'_> {
    fn position_json(&self) -> Option<String> {
        self.position
            .map(|p| serde_json::to_string(p).expect("strings serialize"))
    }
}

/// The statements on one schema's job table.
#[derive(Clone, Debug)]
pub(crate) struct JobStore {
    schema: String,
}

fn interval(duration: Duration) -> String {
    format!("{} milliseconds", duration.as_millis())
}

impl JobStore {
    /// The store in `schema` (a plain lowercase name, checked by the settings).
    pub(crate) fn new(schema: &str) -> JobStore {
        JobStore {
            schema: escape_identifier(schema),
        }
    }

    /// Queues a job unless `max_queued` jobs already wait; `None` when the queue is full.
    ///
    /// Creations serialize on an advisory lock, and the count runs after it is granted (a statement of its
    /// own, so with a snapshot that sees every job queued before): concurrent requests cannot overfill it.
    pub(crate) async fn create(
        &self,
        client: &mut tokio_postgres::Client,
        job: &NewJob<'_>,
        max_queued: i64,
    ) -> Result<Option<Uuid>, tokio_postgres::Error> {
        let id = Uuid::new_v4();
        let transaction = client.transaction().await?;
        transaction
            .batch_execute("SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('pgspout job queue'))")
            .await?;
        let row = transaction
            .query_opt(
                &format!(
                    "INSERT INTO {s}.export_jobs (id, dataset, format, compression, query, resumable, \
                       requested_by, run_role, claims) \
                     SELECT $1, $2, $3, $4, $5, $7, $8, $9, $10 \
                     WHERE (SELECT count(*) FROM {s}.export_jobs WHERE status = 'queued') < $6 RETURNING id",
                    s = self.schema
                ),
                &[
                    &id,
                    &job.dataset,
                    &job.format,
                    &job.compression,
                    &job.query,
                    &max_queued,
                    &job.resumable,
                    &job.requester.as_ref().map(|r| r.owner),
                    &job.requester.as_ref().map(|r| r.role),
                    &job.requester.as_ref().map(|r| r.claims),
                ],
            )
            .await?;
        transaction.commit().await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// The job's status document (JSON text) and its status; `None` if there is no such job, or (with
    /// `owner`) it is someone else's.
    pub(crate) async fn status(
        &self,
        client: &impl GenericClient,
        id: Uuid,
        owner: Option<&str>,
    ) -> Result<Option<(String, Option<JobStatus>)>, tokio_postgres::Error> {
        let row = client
            .query_opt(
                &format!(
                    "SELECT jsonb_build_object('id', id, 'dataset', dataset, 'format', format, \
                     'compression', compression, 'query', query, 'status', status, 'rows_written', rows_written, \
                     'bytes_written', bytes_written, 'last_key', position -> -1, 'position', position, \
                     'error', error, 'attempts', attempts, 'resumable', resumable, 'created_at', created_at, \
                     'started_at', started_at, 'updated_at', updated_at, 'finished_at', finished_at, \
                     'expires_at', expires_at)::text, status \
                     FROM {}.export_jobs WHERE id = $1 AND ($2::text IS NULL OR requested_by = $2)",
                    self.schema
                ),
                &[&id, &owner],
            )
            .await?;
        Ok(row.map(|r| {
            let status: &str = r.get(1);
            let known = JobStatus::parse(status);
            if known.is_none() {
                // A newer instance (a rolling upgrade) may write a status this one does not know.
                tracing::warn!(job = %id, status, "an export job has a status this version does not know");
            }
            (r.get(0), known)
        }))
    }

    /// The oldest queued job of one of `datasets` (those this instance serves; another instance may serve
    /// others), or a running one whose lease ran out, now leased to `owner`. Its run is recorded, and a run
    /// whose lease ran out is closed as such.
    pub(crate) async fn claim(
        &self,
        client: &mut tokio_postgres::Client,
        owner: Uuid,
        lease: Duration,
        datasets: &[String],
    ) -> Result<Option<ClaimedJob>, tokio_postgres::Error> {
        let transaction = client.transaction().await?;
        let row = transaction
            .query_opt(
                &format!(
                    "WITH next AS (SELECT id FROM {s}.export_jobs \
                       WHERE (status = 'queued' OR (status = 'running' AND lease_expires_at < now())) \
                       AND dataset = ANY($3) \
                       ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
                     UPDATE {s}.export_jobs j SET status = 'running', lease_owner = $1, \
                       lease_expires_at = now() + $2::text::interval, attempts = j.attempts + 1, \
                       started_at = coalesce(j.started_at, now()), updated_at = now() \
                     FROM next WHERE j.id = next.id \
                     RETURNING j.id, j.dataset, j.format, j.compression, j.query, j.rows_written, j.bytes_written, \
                       j.position::text, j.attempts, j.resumable, j.run_role, j.claims",
                    s = self.schema
                ),
                &[&owner, &interval(lease), &datasets],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let job = ClaimedJob {
            id: row.get(0),
            dataset: row.get(1),
            format: row.get(2),
            compression: row.get(3),
            query: row.get(4),
            rows_written: row.get(5),
            bytes_written: row.get(6),
            position: row.get(7),
            attempts: row.get(8),
            resumable: row.get(9),
            role: row
                .get::<_, Option<String>>(10)
                .map(|role| (role, row.get::<_, Option<String>>(11).unwrap_or_else(|| "{}".into()))),
        };
        transaction
            .execute(
                &format!(
                    "UPDATE {}.export_job_runs SET ended_at = now(), outcome = $2 \
                     WHERE job_id = $1 AND ended_at IS NULL",
                    self.schema
                ),
                &[&job.id, &RunOutcome::LeaseLost.as_str()],
            )
            .await?;
        transaction
            .execute(
                &format!(
                    "INSERT INTO {}.export_job_runs (job_id, run, owner, rows_at_start) VALUES ($1, $2, $3, $4)",
                    self.schema
                ),
                &[&job.id, &job.attempts, &owner, &job.rows_written],
            )
            .await?;
        transaction.commit().await?;
        Ok(Some(job))
    }

    /// Extends the lease; `false` if `owner` no longer holds a running job (taken over or cancelled).
    pub(crate) async fn renew(
        &self,
        client: &impl GenericClient,
        id: Uuid,
        owner: Uuid,
        lease: Duration,
    ) -> Result<bool, tokio_postgres::Error> {
        let updated = client
            .execute(
                &format!(
                    "UPDATE {}.export_jobs SET lease_expires_at = now() + $3::text::interval, updated_at = now() \
                     WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
                    self.schema
                ),
                &[&id, &owner, &interval(lease)],
            )
            .await?;
        Ok(updated == 1)
    }

    /// Records progress whose bytes are durably in the file; `false` if the lease was lost.
    pub(crate) async fn checkpoint(
        &self,
        client: &impl GenericClient,
        id: Uuid,
        owner: Uuid,
        progress: &Progress<'_>,
    ) -> Result<bool, tokio_postgres::Error> {
        let updated = client
            .execute(
                &format!(
                    "UPDATE {}.export_jobs SET rows_written = $3, bytes_written = $4, \
                     position = coalesce($5::text::jsonb, position), updated_at = now() \
                     WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
                    self.schema
                ),
                &[&id, &owner, &progress.rows, &progress.bytes, &progress.position_json()],
            )
            .await?;
        Ok(updated == 1)
    }

    /// Marks the job completed (its file is whole and durable) and closes its run, in one statement; `false`
    /// if the lease was lost.
    pub(crate) async fn complete(
        &self,
        client: &impl GenericClient,
        id: Uuid,
        owner: Uuid,
        progress: &Progress<'_>,
        retention: Duration,
    ) -> Result<bool, tokio_postgres::Error> {
        let row = client
            .query_one(
                &format!(
                    "WITH job AS (UPDATE {s}.export_jobs SET status = 'completed', rows_written = $3, \
                       bytes_written = $4, error = NULL, finished_at = now(), updated_at = now(), \
                       expires_at = now() + $5::text::interval, position = coalesce($6::text::jsonb, position), \
                       lease_owner = NULL, lease_expires_at = NULL \
                       WHERE id = $1 AND lease_owner = $2 AND status = 'running' RETURNING id), \
                     run AS (UPDATE {s}.export_job_runs SET ended_at = now(), outcome = $7 \
                       WHERE job_id IN (SELECT id FROM job) AND owner = $2 AND ended_at IS NULL) \
                     SELECT count(*) FROM job",
                    s = self.schema
                ),
                &[
                    &id,
                    &owner,
                    &progress.rows,
                    &progress.bytes,
                    &interval(retention),
                    &progress.position_json(),
                    &RunOutcome::Completed.as_str(),
                ],
            )
            .await?;
        Ok(row.get::<_, i64>(0) == 1)
    }

    /// Ends the run: the job `failed` with `error`, or back to `queued` (keeping the checkpoint) to be run
    /// again; job and run in one statement.
    pub(crate) async fn release(
        &self,
        client: &impl GenericClient,
        id: Uuid,
        owner: Uuid,
        error: &str,
        failed: bool,
        retention: Duration,
    ) -> Result<(), tokio_postgres::Error> {
        let (status, outcome) = if failed {
            (JobStatus::Failed, RunOutcome::Failed)
        } else {
            (JobStatus::Queued, RunOutcome::Interrupted)
        };
        client
            .execute(
                &format!(
                    "WITH job AS (UPDATE {s}.export_jobs SET status = $3, error = $4, updated_at = now(), \
                       lease_owner = NULL, lease_expires_at = NULL, \
                       finished_at = CASE WHEN $3 = 'failed' THEN now() END, \
                       expires_at = CASE WHEN $3 = 'failed' THEN now() + $5::text::interval END \
                       WHERE id = $1 AND lease_owner = $2 AND status = 'running' RETURNING id) \
                     UPDATE {s}.export_job_runs SET ended_at = now(), outcome = $6 \
                     WHERE job_id IN (SELECT id FROM job) AND owner = $2 AND ended_at IS NULL",
                    s = self.schema
                ),
                &[
                    &id,
                    &owner,
                    &status.as_str(),
                    &error,
                    &interval(retention),
                    &outcome.as_str(),
                ],
            )
            .await?;
        Ok(())
    }

    /// Closes this owner's run of a job it no longer holds: `cancelled` if the job was, else `lease_lost`;
    /// returns which.
    pub(crate) async fn lose_run(
        &self,
        client: &impl GenericClient,
        id: Uuid,
        owner: Uuid,
    ) -> Result<RunOutcome, tokio_postgres::Error> {
        // A cancel closes the run itself; either way, the job's status says why the lease was lost.
        let row = client
            .query_one(
                &format!(
                    "WITH closed AS (UPDATE {s}.export_job_runs r SET ended_at = now(), \
                       outcome = CASE WHEN j.status = 'cancelled' THEN $3 ELSE $4 END \
                     FROM {s}.export_jobs j \
                     WHERE j.id = r.job_id AND r.job_id = $1 AND r.owner = $2 AND r.ended_at IS NULL) \
                     SELECT coalesce((SELECT status = 'cancelled' FROM {s}.export_jobs WHERE id = $1), false)",
                    s = self.schema
                ),
                &[
                    &id,
                    &owner,
                    &RunOutcome::Cancelled.as_str(),
                    &RunOutcome::LeaseLost.as_str(),
                ],
            )
            .await?;
        Ok(if row.get::<_, bool>(0) {
            RunOutcome::Cancelled
        } else {
            RunOutcome::LeaseLost
        })
    }

    /// How many jobs the table holds in each status.
    pub(crate) async fn count_by_status(
        &self,
        client: &impl GenericClient,
    ) -> Result<Vec<(&'static str, i64)>, tokio_postgres::Error> {
        let rows = client
            .query(
                &format!(
                    "SELECT status, count(*) FROM {}.export_jobs GROUP BY status",
                    self.schema
                ),
                &[],
            )
            .await?;
        Ok(JobStatus::ALL
            .iter()
            .map(|status| {
                let count = rows
                    .iter()
                    .find(|row| row.get::<_, &str>(0) == status.as_str())
                    .map_or(0, |row| row.get::<_, i64>(1));
                (status.as_str(), count)
            })
            .collect())
    }

    /// Cancels a queued or running job; `true` if it was either.
    pub(crate) async fn cancel(
        &self,
        client: &impl GenericClient,
        id: Uuid,
        owner: Option<&str>,
        retention: Duration,
    ) -> Result<bool, tokio_postgres::Error> {
        let row = client
            .query_one(
                &format!(
                    "WITH job AS (UPDATE {s}.export_jobs SET status = 'cancelled', finished_at = now(), \
                       updated_at = now(), expires_at = now() + $2::text::interval, lease_owner = NULL, \
                       lease_expires_at = NULL WHERE id = $1 AND status IN ('queued', 'running') \
                       AND ($4::text IS NULL OR requested_by = $4) RETURNING id), \
                     run AS (UPDATE {s}.export_job_runs SET ended_at = now(), outcome = $3 \
                       WHERE job_id IN (SELECT id FROM job) AND ended_at IS NULL) \
                     SELECT count(*) FROM job",
                    s = self.schema
                ),
                &[&id, &interval(retention), &RunOutcome::Cancelled.as_str(), &owner],
            )
            .await?;
        Ok(row.get::<_, i64>(0) == 1)
    }

    /// Deletes a finished (completed, failed or cancelled) job; `true` if there was one.
    pub(crate) async fn delete(
        &self,
        client: &impl GenericClient,
        id: Uuid,
        owner: Option<&str>,
    ) -> Result<bool, tokio_postgres::Error> {
        let deleted = client
            .execute(
                &format!(
                    "DELETE FROM {}.export_jobs WHERE id = $1 AND status IN ('completed', 'failed', 'cancelled') \
                     AND ($2::text IS NULL OR requested_by = $2)",
                    self.schema
                ),
                &[&id, &owner],
            )
            .await?;
        Ok(deleted == 1)
    }

    /// Deletes finished jobs past their retention; their ids are returned, their files the caller's to remove.
    pub(crate) async fn expire(&self, client: &impl GenericClient) -> Result<Vec<Uuid>, tokio_postgres::Error> {
        let rows = client
            .query(
                &format!(
                    "DELETE FROM {}.export_jobs WHERE expires_at < now() \
                     AND status IN ('completed', 'failed', 'cancelled') RETURNING id",
                    self.schema
                ),
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Of `ids`, those that are no job at all (their files are orphans) or whose job cannot use its file
    /// any more (failed or cancelled).
    pub(crate) async fn unused_files(
        &self,
        client: &impl GenericClient,
        ids: &[Uuid],
    ) -> Result<Vec<Uuid>, tokio_postgres::Error> {
        let rows = client
            .query(
                &format!(
                    "SELECT f.id FROM unnest($1::uuid[]) AS f(id) LEFT JOIN {}.export_jobs j ON j.id = f.id \
                     WHERE j.id IS NULL OR j.status IN ('failed', 'cancelled')",
                    self.schema
                ),
                &[&ids],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
