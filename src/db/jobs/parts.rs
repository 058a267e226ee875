//! The parts of a parallel job: planned once (key ranges), then each checkpointed on its own. Every write is
//! fenced by the job's lease, as the job's own are.

use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::{JobStore, Progress};

/// One part of a parallel job as stored: its key range and how far its file has got.
#[derive(Clone, Debug)]
pub(crate) struct Part {
    /// Its number, from 0, in key order.
    pub(crate) number: i32,
    /// Its rows have keys at least this (`None`: from the first).
    pub(crate) lower: Option<String>,
    /// Its rows have keys below this (`None`: to the last).
    pub(crate) upper: Option<String>,
    /// Rows in its file at its last checkpoint.
    pub(crate) rows_written: i64,
    /// Its file's length at its last checkpoint.
    pub(crate) bytes_written: i64,
    /// Its last checkpoint's position (JSON text).
    pub(crate) position: Option<String>,
    /// Whether its file is complete.
    pub(crate) done: bool,
}

impl JobStore {
    /// The job's parts, in key order; empty before they are planned.
    pub(crate) async fn parts(
        &self,
        client: &impl GenericClient,
        id: Uuid,
    ) -> Result<Vec<Part>, tokio_postgres::Error> {
        let rows = client
            .query(
                &self.sql(
                    "SELECT part, lower, upper, rows_written, bytes_written, position::text, done \
                     FROM {s}.export_job_parts WHERE job_id = $1 ORDER BY part",
                ),
                &[&id],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| Part {
                number: row.get(0),
                lower: row.get(1),
                upper: row.get(2),
                rows_written: row.get(3),
                bytes_written: row.get(4),
                position: row.get(5),
                done: row.get(6),
            })
            .collect())
    }

    /// Stores the job's parts, split at `bounds` (the keys where each part after the first starts), and
    /// returns them; `None` if the lease was lost. Parts planned before (by an earlier run) are kept.
    pub(crate) async fn plan_parts(
        &self,
        client: &mut tokio_postgres::Client,
        id: Uuid,
        owner: Uuid,
        bounds: &[String],
    ) -> Result<Option<Vec<Part>>, tokio_postgres::Error> {
        let lowers: Vec<Option<&str>> = std::iter::once(None)
            .chain(bounds.iter().map(|b| Some(b.as_str())))
            .collect();
        let uppers: Vec<Option<&str>> = bounds
            .iter()
            .map(|b| Some(b.as_str()))
            .chain(std::iter::once(None))
            .collect();
        let transaction = client.transaction().await?;
        if !self.hold(&transaction, id, owner).await? {
            return Ok(None);
        }
        transaction
            .execute(
                &self.sql(
                    "INSERT INTO {s}.export_job_parts (job_id, part, lower, upper) \
                     SELECT $1, (n - 1)::int, l, u FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS b(l, u, n) \
                     WHERE NOT EXISTS (SELECT 1 FROM {s}.export_job_parts WHERE job_id = $1)",
                ),
                &[&id, &lowers, &uppers],
            )
            .await?;
        let parts = self.parts(&transaction, id).await?;
        transaction.commit().await?;
        Ok(Some(parts))
    }

    /// Locks the job's row in `transaction` if `owner` still holds the job's lease; `false` if not. Parts'
    /// writes take it first, so they are fenced like the job's own and run one at a time.
    async fn hold(
        &self,
        transaction: &tokio_postgres::Transaction<'_>,
        id: Uuid,
        owner: Uuid,
    ) -> Result<bool, tokio_postgres::Error> {
        let held = transaction
            .query_opt(
                &self.sql(
                    "SELECT 1 FROM {s}.export_jobs WHERE id = $1 AND lease_owner = $2 AND status = {running} \
                     FOR UPDATE",
                ),
                &[&id, &owner],
            )
            .await?;
        Ok(held.is_some())
    }

    /// Records a part's progress (durable in its file), and the job's rows and bytes as the sum of its
    /// parts'; `done` when the part's file is complete. `false` if the lease was lost. Parts checkpoint one
    /// at a time, on the job's row lock, so each sum counts every checkpoint before it.
    pub(crate) async fn checkpoint_part(
        &self,
        client: &mut tokio_postgres::Client,
        id: Uuid,
        owner: Uuid,
        part: i32,
        progress: &Progress<'_>,
        done: bool,
    ) -> Result<bool, tokio_postgres::Error> {
        let transaction = client.transaction().await?;
        if !self.hold(&transaction, id, owner).await? {
            return Ok(false);
        }
        transaction
            .execute(
                &self.sql(
                    "UPDATE {s}.export_job_parts SET rows_written = $3, bytes_written = $4, \
                     position = $5::text::jsonb, done = $6 WHERE job_id = $1 AND part = $2",
                ),
                &[
                    &id,
                    &part,
                    &progress.rows,
                    &progress.bytes,
                    &progress.position_json(),
                    &done,
                ],
            )
            .await?;
        transaction
            .execute(
                &self.sql(
                    "UPDATE {s}.export_jobs SET updated_at = now(), \
                       (rows_written, bytes_written) = (SELECT coalesce(sum(rows_written), 0), \
                         coalesce(sum(bytes_written), 0) FROM {s}.export_job_parts WHERE job_id = $1) \
                     WHERE id = $1",
                ),
                &[&id],
            )
            .await?;
        transaction.commit().await?;
        Ok(true)
    }
}
