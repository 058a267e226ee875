//! Clearing up: finished jobs past their retention, and files no job can use.

use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::JobStore;

impl JobStore {
    /// Deletes finished jobs past their retention; their ids are returned, their files the caller's to remove.
    pub(crate) async fn expire(&self, client: &impl GenericClient) -> Result<Vec<Uuid>, tokio_postgres::Error> {
        let rows = client
            .query(
                &self.sql(
                    "DELETE FROM {s}.export_jobs WHERE expires_at < now() \
                     AND status IN ({finished}) RETURNING id",
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
