//! The queue as the API sees it: creating a job, its status, cancelling and deleting it, counts by status.

use std::time::Duration;

use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::{Created, JobStatus, JobStore, NewJob, RunOutcome, interval};
use crate::settings::WebhookEvent;

impl JobStore {
    /// Queues a job unless `max_queued` jobs already wait, or its requester's `Idempotency-Key` names a job
    /// already (then that job, if the same request created it).
    ///
    /// Creations serialize on an advisory lock, and the count and the key's lookup run after it is granted
    /// (statements of their own, so with a snapshot that sees every job queued before): concurrent requests
    /// cannot overfill the queue, nor create two jobs under one key.
    pub(crate) async fn create(
        &self,
        client: &mut tokio_postgres::Client,
        job: &NewJob<'_>,
        max_queued: i64,
    ) -> Result<Created, tokio_postgres::Error> {
        let id = Uuid::new_v4();
        let owner = job.requester.as_ref().map(|r| r.owner);
        let transaction = client.transaction().await?;
        transaction
            .batch_execute("SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('pgspout job queue'))")
            .await?;
        if let Some(idempotency) = &job.idempotency {
            let earlier = transaction
                .query_opt(
                    &self.sql(
                        "SELECT id, request_digest FROM {s}.export_jobs \
                         WHERE coalesce(requested_by, '') = coalesce($1, '') AND idempotency_key = $2",
                    ),
                    &[&owner, &idempotency.key],
                )
                .await?;
            if let Some(earlier) = earlier {
                transaction.commit().await?;
                let same = earlier.get::<_, Option<&str>>(1) == Some(idempotency.digest);
                return Ok(if same {
                    Created::Replayed(earlier.get(0))
                } else {
                    Created::KeyReused
                });
            }
        }
        let row = transaction
            .query_opt(
                &self.sql(
                    "INSERT INTO {s}.export_jobs (id, dataset, format, compression, query, resumable, \
                       requested_by, run_role, claims, idempotency_key, request_digest, parallelism) \
                     SELECT $1, $2, $3, $4, $5, $7, $8, $9, $10, $11, $12, $13 \
                     WHERE (SELECT count(*) FROM {s}.export_jobs WHERE status = {queued}) < $6 RETURNING id",
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
                    &job.idempotency.as_ref().map(|i| i.key),
                    &job.idempotency.as_ref().map(|i| i.digest),
                    &job.parallelism,
                ],
            )
            .await?;
        transaction.commit().await?;
        Ok(row.map_or(Created::QueueFull, |r| Created::New(r.get(0))))
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
                &self.sql(
                    "SELECT ({document} || jsonb_build_object('webhooks', \
                       (SELECT coalesce(jsonb_agg(jsonb_build_object('id', d.id, 'event', d.event, \
                          'status', d.status, 'attempts', d.attempts, 'last_error', d.last_error, \
                          'delivered_at', d.delivered_at, \
                          'next_attempt_at', CASE WHEN d.status = 'pending' THEN d.next_attempt_at END) \
                          ORDER BY d.created_at, d.id), '[]') \
                        FROM {s}.webhook_deliveries d WHERE d.job_id = j.id)))::text, status \
                     FROM {s}.export_jobs j WHERE id = $1 AND ($2::text IS NULL OR requested_by = $2)",
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

    /// Cancels a queued or running job, queueing its `export.cancelled` webhooks; `true` if it was either.
    pub(crate) async fn cancel(
        &self,
        client: &impl GenericClient,
        id: Uuid,
        owner: Option<&str>,
        retention: Duration,
    ) -> Result<bool, tokio_postgres::Error> {
        let row = client
            .query_one(
                &self
                    .sql(
                        "WITH job AS (UPDATE {s}.export_jobs SET status = {cancelled}, finished_at = now(), \
                       updated_at = now(), expires_at = now() + $2::text::interval, lease_owner = NULL, \
                       lease_expires_at = NULL WHERE id = $1 AND status IN ({queued}, {running}) \
                       AND ($4::text IS NULL OR requested_by = $4) RETURNING id, {document} AS doc), \
                     run AS (UPDATE {s}.export_job_runs SET ended_at = now(), outcome = $3 \
                       WHERE job_id IN (SELECT id FROM job) AND ended_at IS NULL), \
                     {queue_event} \
                     SELECT count(*) FROM job",
                    )
                    .replace("$E", "$5")
                    .replace("$U", "$6"),
                &[
                    &id,
                    &interval(retention),
                    &RunOutcome::Cancelled.as_str(),
                    &owner,
                    &WebhookEvent::Cancelled.as_str(),
                    &self.subscribers(WebhookEvent::Cancelled),
                ],
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
                &self.sql(
                    "DELETE FROM {s}.export_jobs WHERE id = $1 AND status IN ({finished}) \
                     AND ($2::text IS NULL OR requested_by = $2)",
                ),
                &[&id, &owner],
            )
            .await?;
        Ok(deleted == 1)
    }

    /// How many jobs the table holds in each status.
    pub(crate) async fn count_by_status(
        &self,
        client: &impl GenericClient,
    ) -> Result<Vec<(&'static str, i64)>, tokio_postgres::Error> {
        let rows = client
            .query(
                &self.sql("SELECT status, count(*) FROM {s}.export_jobs GROUP BY status"),
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
}
