//! The webhook queue: deliveries due now, claimed under a lease (a delivery's `next_attempt_at` is pushed
//! past its timeout while it is sent, so a crashed sender's delivery comes due again: at least once), and
//! each attempt's outcome.

use std::time::Duration;

use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::{JobStore, interval};

/// A delivery claimed for one attempt.
pub(crate) struct Delivery {
    /// Its `webhook-id`, the same on every attempt.
    pub(crate) id: Uuid,
    /// The event's name.
    pub(crate) event: String,
    /// The endpoint.
    pub(crate) url: String,
    /// The body, fixed when the event happened.
    pub(crate) body: String,
    /// This attempt's number, from 1.
    pub(crate) attempt: i32,
}

impl JobStore {
    /// Up to `limit` pending deliveries to `urls` (the endpoints this instance knows) that are due, claimed
    /// for one attempt each: if its sender does not record an outcome within `lease`, it comes due again.
    pub(crate) async fn claim_deliveries(
        &self,
        client: &impl GenericClient,
        urls: &[String],
        limit: i64,
        lease: Duration,
    ) -> Result<Vec<Delivery>, tokio_postgres::Error> {
        let rows = client
            .query(
                &self.sql(
                    "WITH due AS (SELECT id FROM {s}.webhook_deliveries \
                       WHERE status = 'pending' AND next_attempt_at <= now() AND url = ANY($1) \
                       ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
                     UPDATE {s}.webhook_deliveries d SET attempts = d.attempts + 1, \
                       next_attempt_at = now() + $3::text::interval \
                     FROM due WHERE d.id = due.id \
                     RETURNING d.id, d.event, d.url, d.body, d.attempts",
                ),
                &[&urls, &limit, &interval(lease)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| Delivery {
                id: row.get(0),
                event: row.get(1),
                url: row.get(2),
                body: row.get(3),
                attempt: row.get(4),
            })
            .collect())
    }

    /// Records a delivery's attempt: delivered; or, with `error`, to be retried after `retry`, or failed for
    /// good when `retry` is `None`. Only the attempt that claimed it records (a later claim has its own).
    pub(crate) async fn record_delivery(
        &self,
        client: &impl GenericClient,
        delivery: &Delivery,
        error: Option<&str>,
        retry: Option<Duration>,
    ) -> Result<(), tokio_postgres::Error> {
        let status = match (error, retry) {
            (None, _) => "delivered",
            (Some(_), Some(_)) => "pending",
            (Some(_), None) => "failed",
        };
        client
            .execute(
                &self.sql(
                    "UPDATE {s}.webhook_deliveries SET status = $3, last_error = coalesce($4, last_error), \
                       delivered_at = CASE WHEN $3 = 'delivered' THEN now() END, \
                       next_attempt_at = CASE WHEN $3 = 'pending' THEN now() + $5::text::interval \
                         ELSE next_attempt_at END \
                     WHERE id = $1 AND attempts = $2 AND status = 'pending'",
                ),
                &[
                    &delivery.id,
                    &delivery.attempt,
                    &status,
                    &error,
                    &interval(retry.unwrap_or_default()),
                ],
            )
            .await?;
        Ok(())
    }

    /// Deletes deliveries done with (delivered or failed) once their job is gone (deleted or expired) or
    /// they are older than `retention`; and pending ones older than `abandoned` (endpoints no instance
    /// serves any more: every attempt a serving instance makes ends sooner).
    pub(crate) async fn sweep_deliveries(
        &self,
        client: &impl GenericClient,
        retention: Duration,
        abandoned: Duration,
    ) -> Result<u64, tokio_postgres::Error> {
        client
            .execute(
                &self.sql(
                    "DELETE FROM {s}.webhook_deliveries d \
                     WHERE CASE WHEN status = 'pending' THEN created_at < now() - $2::text::interval \
                       ELSE created_at < now() - $1::text::interval \
                         OR NOT EXISTS (SELECT FROM {s}.export_jobs j WHERE j.id = d.job_id) END",
                ),
                &[&interval(retention), &interval(abandoned)],
            )
            .await
    }
}
