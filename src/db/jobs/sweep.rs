//! Clearing up: finished jobs past their retention, and files no job can use.

use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::{JobStore, UploadId, upload_id};

impl JobStore {
    /// Deletes finished jobs past their retention; their ids and open uploads are returned, their files and
    /// uploads the caller's to remove.
    pub(crate) async fn expire(
        &self,
        client: &impl GenericClient,
    ) -> Result<(Vec<Uuid>, Vec<UploadId>), tokio_postgres::Error> {
        let rows = client
            .query(
                &self.sql(
                    "DELETE FROM {s}.export_jobs WHERE expires_at < now() \
                     AND status IN ({finished}) RETURNING id, upload_key, upload_id",
                ),
                &[],
            )
            .await?;
        let ids = rows.iter().map(|r| r.get(0)).collect();
        Ok((ids, rows.iter().filter_map(|r| upload_id(r, 1)).collect()))
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
                &self.sql(
                    "SELECT f.id FROM unnest($1::uuid[]) AS f(id) LEFT JOIN {s}.export_jobs j ON j.id = f.id \
                     WHERE j.id IS NULL OR j.status IN ({failed}, {cancelled})",
                ),
                &[&ids],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
