//! A runner's side of a job: claiming it under a lease, renewing the lease, checkpoints, and ending its run.
//! Every write is fenced by `lease_owner = me AND status = 'running'`.

use std::time::Duration;

use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::{ClaimedJob, JobStatus, JobStore, Progress, RunOutcome, UploadId, interval, upload_id};
use crate::jobs::UploadState;
use crate::settings::WebhookEvent;

impl JobStore {
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
                &self.sql(
                    "WITH next AS (SELECT id FROM {s}.export_jobs \
                       WHERE (status = {queued} OR (status = {running} AND lease_expires_at < now())) \
                       AND dataset = ANY($3) \
                       ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
                     UPDATE {s}.export_jobs j SET status = {running}, lease_owner = $1, \
                       lease_expires_at = now() + $2::text::interval, attempts = j.attempts + 1, \
                       started_at = coalesce(j.started_at, now()), updated_at = now() \
                     FROM next WHERE j.id = next.id \
                     RETURNING j.id, j.dataset, j.format, j.compression, j.query, j.rows_written, j.bytes_written, \
                       j.position::text, j.attempts, j.resumable, j.run_role, j.claims, j.parallelism, \
                       j.upload_key, j.upload_id, j.upload_etags, j.upload_tail",
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
            parallelism: row.get(12),
            upload: upload_id(&row, 13).map(|(key, id)| UploadState {
                key,
                id,
                etags: row.get::<_, Option<Vec<String>>>(15).unwrap_or_default(),
                tail: row.get::<_, Option<Vec<u8>>>(16).unwrap_or_default(),
            }),
        };
        transaction
            .execute(
                &self.sql(
                    "UPDATE {s}.export_job_runs SET ended_at = now(), outcome = $2 \
                     WHERE job_id = $1 AND ended_at IS NULL",
                ),
                &[&job.id, &RunOutcome::LeaseLost.as_str()],
            )
            .await?;
        transaction
            .execute(
                &self
                    .sql("INSERT INTO {s}.export_job_runs (job_id, run, owner, rows_at_start) VALUES ($1, $2, $3, $4)"),
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
                &self.sql(
                    "UPDATE {s}.export_jobs SET lease_expires_at = now() + $3::text::interval, updated_at = now() \
                     WHERE id = $1 AND lease_owner = $2 AND status = {running}",
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
                &self.sql(
                    "UPDATE {s}.export_jobs SET rows_written = $3, bytes_written = $4, \
                     position = coalesce($5::text::jsonb, position), updated_at = now(), \
                     upload_key = coalesce($6, upload_key), upload_id = coalesce($7, upload_id), \
                     upload_etags = coalesce($8, upload_etags), upload_tail = coalesce($9, upload_tail) \
                     WHERE id = $1 AND lease_owner = $2 AND status = {running}",
                ),
                &[
                    &id,
                    &owner,
                    &progress.rows,
                    &progress.bytes,
                    &progress.position_json(),
                    &progress.upload.map(|u| &u.key),
                    &progress.upload.map(|u| &u.id),
                    &progress.upload.map(|u| &u.etags),
                    &progress.upload.map(|u| &u.tail),
                ],
            )
            .await?;
        Ok(updated == 1)
    }

    /// Records a new upload, before its first part: whatever a run leaves, the upload can be found and
    /// aborted. `false` if the lease was lost.
    pub(crate) async fn begin_upload(
        &self,
        client: &impl GenericClient,
        id: Uuid,
        owner: Uuid,
        upload: &UploadState,
    ) -> Result<bool, tokio_postgres::Error> {
        let updated = client
            .execute(
                &self.sql(
                    "UPDATE {s}.export_jobs SET upload_key = $3, upload_id = $4, upload_etags = '{}', \
                     upload_tail = '', updated_at = now() \
                     WHERE id = $1 AND lease_owner = $2 AND status = {running}",
                ),
                &[&id, &owner, &upload.key, &upload.id],
            )
            .await?;
        Ok(updated == 1)
    }

    /// The upload a job has open, if any (to abort it once the job cannot use it).
    pub(crate) async fn open_upload(
        &self,
        client: &impl GenericClient,
        id: Uuid,
    ) -> Result<Option<UploadId>, tokio_postgres::Error> {
        let row = client
            .query_opt(
                &self.sql("SELECT upload_key, upload_id FROM {s}.export_jobs WHERE id = $1"),
                &[&id],
            )
            .await?;
        Ok(row.and_then(|row| upload_id(&row, 0)))
    }

    /// Starts a job that cannot resume over: no rows written, one more restart. `false` if the lease was lost.
    pub(crate) async fn restart(
        &self,
        client: &impl GenericClient,
        id: Uuid,
        owner: Uuid,
    ) -> Result<bool, tokio_postgres::Error> {
        let updated = client
            .execute(
                &self.sql(
                    "UPDATE {s}.export_jobs SET rows_written = 0, bytes_written = 0, position = NULL, \
                     restarts = restarts + 1, updated_at = now() \
                     WHERE id = $1 AND lease_owner = $2 AND status = {running}",
                ),
                &[&id, &owner],
            )
            .await?;
        Ok(updated == 1)
    }

    /// Marks the job completed (its file is whole and durable), closes its run and queues its
    /// `export.completed` webhooks, in one statement; `false` if the lease was lost.
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
                &self
                    .sql(
                        "WITH job AS (UPDATE {s}.export_jobs SET status = {completed}, rows_written = $3, \
                       bytes_written = $4, error = NULL, finished_at = now(), updated_at = now(), \
                       expires_at = now() + $5::text::interval, position = coalesce($6::text::jsonb, position), \
                       lease_owner = NULL, lease_expires_at = NULL, \
                       upload_key = NULL, upload_id = NULL, upload_etags = NULL, upload_tail = NULL \
                       WHERE id = $1 AND lease_owner = $2 AND status = {running} RETURNING id, {document} AS doc), \
                     run AS (UPDATE {s}.export_job_runs SET ended_at = now(), outcome = $7 \
                       WHERE job_id IN (SELECT id FROM job) AND owner = $2 AND ended_at IS NULL), \
                     {queue_event} \
                     SELECT count(*) FROM job",
                    )
                    .replace("$E", "$8")
                    .replace("$U", "$9"),
                &[
                    &id,
                    &owner,
                    &progress.rows,
                    &progress.bytes,
                    &interval(retention),
                    &progress.position_json(),
                    &RunOutcome::Completed.as_str(),
                    &WebhookEvent::Completed.as_str(),
                    &self.subscribers(WebhookEvent::Completed),
                ],
            )
            .await?;
        Ok(row.get::<_, i64>(0) == 1)
    }

    /// Ends the run: the job `failed` with `error` (and its `export.failed` webhooks queued), or back to
    /// `queued` (keeping the checkpoint) to be run again; job, run and webhooks in one statement.
    pub(crate) async fn release(
        &self,
        client: &impl GenericClient,
        id: Uuid,
        owner: Uuid,
        error: &str,
        failed: bool,
        retention: Duration,
    ) -> Result<(), tokio_postgres::Error> {
        let (status, outcome, subscribers) = if failed {
            (
                JobStatus::Failed,
                RunOutcome::Failed,
                self.subscribers(WebhookEvent::Failed),
            )
        } else {
            (JobStatus::Queued, RunOutcome::Interrupted, &[][..])
        };
        client
            .execute(
                &self
                    .sql(
                        "WITH job AS (UPDATE {s}.export_jobs SET status = $3, error = $4, updated_at = now(), \
                       lease_owner = NULL, lease_expires_at = NULL, \
                       finished_at = CASE WHEN $3 = {failed} THEN now() END, \
                       expires_at = CASE WHEN $3 = {failed} THEN now() + $5::text::interval END \
                       WHERE id = $1 AND lease_owner = $2 AND status = {running} RETURNING id, {document} AS doc), \
                     {queue_event} \
                     UPDATE {s}.export_job_runs SET ended_at = now(), outcome = $6 \
                     WHERE job_id IN (SELECT id FROM job) AND owner = $2 AND ended_at IS NULL",
                    )
                    .replace("$E", "$7")
                    .replace("$U", "$8"),
                &[
                    &id,
                    &owner,
                    &status.as_str(),
                    &error,
                    &interval(retention),
                    &outcome.as_str(),
                    &WebhookEvent::Failed.as_str(),
                    &subscribers,
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
                &self.sql(
                    "WITH closed AS (UPDATE {s}.export_job_runs r SET ended_at = now(), \
                       outcome = CASE WHEN j.status = {cancelled} THEN $3 ELSE $4 END \
                     FROM {s}.export_jobs j \
                     WHERE j.id = r.job_id AND r.job_id = $1 AND r.owner = $2 AND r.ended_at IS NULL) \
                     SELECT coalesce((SELECT status = {cancelled} FROM {s}.export_jobs WHERE id = $1), false)",
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
}
