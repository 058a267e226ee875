//! The job schema's migrations, and the statuses and run outcomes its tables store.

use postgres_protocol::escape::escape_identifier;

/// The schema's migrations, in order; each runs once, in one transaction with its version's record.
const MIGRATIONS: &[&str] = &[
    // 1: jobs and their runs (one row per claim, so "ran exactly once" can be checked).
    "CREATE TABLE {schema}.export_jobs (
        id uuid PRIMARY KEY,
        dataset text NOT NULL,
        format text NOT NULL,
        compression text NOT NULL,
        query text NOT NULL,
        status text NOT NULL DEFAULT 'queued'
            CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
        rows_written bigint NOT NULL DEFAULT 0,
        bytes_written bigint NOT NULL DEFAULT 0,
        position jsonb,
        error text,
        attempts int NOT NULL DEFAULT 0,
        lease_owner uuid,
        lease_expires_at timestamptz,
        created_at timestamptz NOT NULL DEFAULT now(),
        started_at timestamptz,
        updated_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz,
        expires_at timestamptz
     );
     CREATE INDEX export_jobs_waiting ON {schema}.export_jobs (created_at) WHERE status IN ('queued', 'running');
     CREATE TABLE {schema}.export_job_runs (
        job_id uuid NOT NULL REFERENCES {schema}.export_jobs ON DELETE CASCADE,
        run int NOT NULL,
        owner uuid NOT NULL,
        rows_at_start bigint NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(),
        ended_at timestamptz,
        outcome text,
        PRIMARY KEY (job_id, run)
     )",
    // 2: whether a job resumes from its checkpoints (a dataset with a key) or restarts from its first row
    // (a keyless dataset, read in one statement).
    "ALTER TABLE {schema}.export_jobs ADD COLUMN resumable boolean NOT NULL DEFAULT true",
    // 3: under [auth], who asked (`sub:…`, `key:…`), and the role and claims its batches run with.
    "ALTER TABLE {schema}.export_jobs ADD COLUMN requested_by text, ADD COLUMN run_role text, ADD COLUMN claims text",
    // 4: how many times a job that cannot resume (keyless, or a columnar file) started over from its first row.
    "ALTER TABLE {schema}.export_jobs ADD COLUMN restarts int NOT NULL DEFAULT 0",
    // 5: the `Idempotency-Key` a job was created with, scoped to its requester, and a digest of the request
    // it named; both go with the job.
    "ALTER TABLE {schema}.export_jobs ADD COLUMN idempotency_key text, ADD COLUMN request_digest text;
     CREATE UNIQUE INDEX export_jobs_idempotency ON {schema}.export_jobs (coalesce(requested_by, ''), idempotency_key)
       WHERE idempotency_key IS NOT NULL",
    // 6: the webhook queue: one row per event and endpoint, its body fixed when the job ended (so every
    // retry sends the same bytes under the same id), delivered by whichever instance claims it.
    "CREATE TABLE {schema}.webhook_deliveries (
        id uuid PRIMARY KEY,
        job_id uuid NOT NULL,
        event text NOT NULL,
        url text NOT NULL,
        body text NOT NULL,
        status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
        attempts int NOT NULL DEFAULT 0,
        next_attempt_at timestamptz NOT NULL DEFAULT now(),
        last_error text,
        created_at timestamptz NOT NULL DEFAULT now(),
        delivered_at timestamptz
     );
     CREATE INDEX webhook_deliveries_due ON {schema}.webhook_deliveries (next_attempt_at) WHERE status = 'pending';
     CREATE INDEX webhook_deliveries_job ON {schema}.webhook_deliveries (job_id)",
    // 7: parallel jobs: the connections a job reads on, and each part's key range (NULL: unbounded) and
    // checkpoint. A job's parts are planned on its first run and kept, so a crash resumes each of them.
    "ALTER TABLE {schema}.export_jobs ADD COLUMN parallelism int NOT NULL DEFAULT 1;
     CREATE TABLE {schema}.export_job_parts (
        job_id uuid NOT NULL REFERENCES {schema}.export_jobs ON DELETE CASCADE,
        part int NOT NULL,
        lower text,
        upper text,
        rows_written bigint NOT NULL DEFAULT 0,
        bytes_written bigint NOT NULL DEFAULT 0,
        position jsonb,
        done boolean NOT NULL DEFAULT false,
        PRIMARY KEY (job_id, part)
     )",
    // 8: a job's open multipart upload in object storage, as of its last checkpoint: the object's key, the
    // upload's id, its parts' entity tags, and the bytes after the last part.
    "ALTER TABLE {schema}.export_jobs ADD COLUMN upload_key text, ADD COLUMN upload_id text, \
       ADD COLUMN upload_etags text[], ADD COLUMN upload_tail bytea",
];

/// Where a job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum JobStatus {
    /// Waiting for a runner.
    Queued,
    /// Leased to a runner.
    Running,
    /// Its file is whole.
    Completed,
    /// It gave up; `error` says why.
    Failed,
    /// A client cancelled it.
    Cancelled,
}

impl JobStatus {
    /// The name stored and shown.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Every status.
    pub(crate) const ALL: [JobStatus; 5] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    /// The statuses a job ends in.
    pub(crate) const FINISHED: [JobStatus; 3] = [JobStatus::Completed, JobStatus::Failed, JobStatus::Cancelled];

    pub(super) fn parse(text: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|status| status.as_str() == text)
    }
}

/// How one run of a job ended (`export_job_runs.outcome`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RunOutcome {
    /// It wrote the last batch and completed the job.
    Completed,
    /// It failed the job.
    Failed,
    /// It handed the job back to the queue (shutdown, a transient error).
    Interrupted,
    /// Its lease ran out or was taken over before it finished.
    LeaseLost,
    /// The job was cancelled while it ran.
    Cancelled,
}

impl RunOutcome {
    /// The name stored (and the `outcome` label of `pgspout_job_runs_total`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Completed => "completed",
            RunOutcome::Failed => "failed",
            RunOutcome::Interrupted => "interrupted",
            RunOutcome::LeaseLost => "lease_lost",
            RunOutcome::Cancelled => "cancelled",
        }
    }
}

/// Creates the schema and applies missing migrations. Instances starting together serialize on an advisory lock.
pub(crate) async fn migrate(client: &mut tokio_postgres::Client, schema: &str) -> Result<(), tokio_postgres::Error> {
    let schema = escape_identifier(schema);
    let transaction = client.transaction().await?;
    transaction
        .batch_execute(&format!(
            "SELECT pg_advisory_xact_lock(hashtext('pgspout migrations')); \
             CREATE SCHEMA IF NOT EXISTS {schema}; \
             CREATE TABLE IF NOT EXISTS {schema}.migrations \
             (version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        ))
        .await?;
    let applied: i32 = transaction
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {schema}.migrations"),
            &[],
        )
        .await?
        .get(0);
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
        let version = index as i32 + 1;
        transaction
            .batch_execute(&migration.replace("{schema}", &schema))
            .await?;
        transaction
            .execute(
                &format!("INSERT INTO {schema}.migrations (version) VALUES ($1)"),
                &[&version],
            )
            .await?;
        tracing::info!(version, "applied job schema migration");
    }
    transaction.commit().await
}
