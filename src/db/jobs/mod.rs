//! Background export jobs in Postgres: every statement on the job table (its schema is in `schema`).
//!
//! A job is claimed with `FOR UPDATE SKIP LOCKED` and held by a lease (an owner and an expiry) that its runner
//! renews. Every write a runner makes is fenced by `lease_owner = me AND status = 'running'`, so an instance
//! that lost its lease (it stalled, or the job was cancelled) finds out at its next write and stops.
//!
//! # Layout
//! - `schema`: migrations, and the statuses and run outcomes stored (every status name in SQL comes from
//!   [`JobStatus`], through `JobStore::sql`).
//! - `queue`: what the API does (create, status, cancel, delete, counts).
//! - `runs`: what a runner does (claim, renew, checkpoint, complete, release, lose its run).
//! - `sweep`: expired jobs and unused files.
//! - `webhooks`: the webhook queue. A job's end and its events are one statement: each statement that ends
//!   a job (complete, fail, cancel) also queues one delivery per endpoint subscribed to the event.

use std::time::Duration;

use postgres_protocol::escape::{escape_identifier, escape_literal};
use uuid::Uuid;

mod parts;
mod queue;
mod runs;
mod schema;
mod sweep;
mod webhooks;

pub(crate) use self::parts::Part;
pub(crate) use self::schema::{JobStatus, RunOutcome, migrate};
pub(crate) use self::webhooks::Delivery;
use crate::jobs::UploadState;
use crate::query::Position;
use crate::settings::{WebhookEvent, WebhookSettings};

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
    /// The connections it reads on (1: one; more split the key into ranges).
    pub(crate) parallelism: i32,
    /// Under `[auth]`: who asked, and the role and claims it runs with (never the token).
    pub(crate) requester: Option<Requester<'a>>,
    /// The request's `Idempotency-Key`, and a digest of what it asked for.
    pub(crate) idempotency: Option<Idempotency<'a>>,
}

/// An `Idempotency-Key` and the request it named.
pub(crate) struct Idempotency<'a> {
    /// The key, as the client sent it.
    pub(crate) key: &'a str,
    /// A digest of the request (dataset, format, compression, query).
    pub(crate) digest: &'a str,
}

/// What creating a job did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Created {
    /// It queued a new job.
    New(Uuid),
    /// The requester's `Idempotency-Key` already named this job, created by the same request.
    Replayed(Uuid),
    /// The requester's `Idempotency-Key` already named a job created by another request.
    KeyReused,
    /// The queue is full.
    QueueFull,
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
    /// The connections it reads on.
    pub(crate) parallelism: i32,
    /// The role and claims it runs with, when created under `[auth]`.
    pub(crate) role: Option<(String, String)>,
    /// Its open upload in object storage, as of the last checkpoint.
    pub(crate) upload: Option<UploadState>,
}

/// How far a job's file has got: durable on disk when recorded.
pub(crate) struct Progress<'a> {
    /// Rows in the file.
    pub(crate) rows: i64,
    /// The file's length.
    pub(crate) bytes: i64,
    /// Its last row's position (`None` while it has none, and for jobs that cannot resume).
    pub(crate) position: Option<&'a Position>,
    /// In object storage: the upload holding those bytes.
    pub(crate) upload: Option<&'a UploadState>,
}

impl Progress<'_> {
    fn position_json(&self) -> Option<String> {
        self.position
            .map(|p| serde_json::to_string(p).expect("strings serialize"))
    }
}

/// An upload's key and id, to abort it.
pub(crate) type UploadId = (String, String);

/// The key and id of the upload in `row`'s columns `at` and `at + 1`, if it has one.
fn upload_id(row: &tokio_postgres::Row, at: usize) -> Option<UploadId> {
    Some((row.get::<_, Option<String>>(at)?, row.get::<_, Option<String>>(at + 1)?))
}

/// The statements on one schema's job table.
#[derive(Clone, Debug)]
pub(crate) struct JobStore {
    schema: String,
    /// Each event's endpoints, by URL.
    subscribers: Vec<(WebhookEvent, Vec<String>)>,
}

/// A job's status document as SQL on its row (unqualified columns): what `GET /v1/exports/{id}` shows, and
/// a webhook's `data`. `{s}` and the statuses are filled in by `JobStore::sql`.
const DOCUMENT: &str = "(jsonb_build_object('id', id, 'dataset', dataset, 'format', format, \
     'compression', compression, 'query', query, 'status', status, 'rows_written', rows_written, \
     'bytes_written', bytes_written, 'last_key', position -> -1, 'position', position, \
     'error', error, 'attempts', attempts, 'resumable', resumable, 'restarts', restarts, \
     'parallelism', parallelism, 'parts', (SELECT jsonb_agg(jsonb_build_object('rows_written', p.rows_written, \
       'bytes_written', p.bytes_written, 'done', p.done) ORDER BY p.part) \
       FROM {s}.export_job_parts p WHERE p.job_id = id), \
     'created_at', created_at, 'started_at', started_at, 'updated_at', updated_at, 'finished_at', finished_at, \
     'expires_at', expires_at, 'status_url', '/v1/exports/' || id) \
     || CASE WHEN status = {completed} THEN jsonb_build_object('download_url', '/v1/exports/' || id || '/download') \
        ELSE jsonb_build_object() END)";

/// A CTE that queues event `$E` (its name) for the endpoints `$U` (a `text[]`) of each job the CTE `job`
/// returns with its document as `doc`: the Standard Webhooks body, fixed now.
const QUEUE_EVENT: &str = "hooks AS (INSERT INTO {s}.webhook_deliveries (id, job_id, event, url, body) \
     SELECT pg_catalog.gen_random_uuid(), job.id, $E, u.url, jsonb_build_object('type', $E::text, \
       'timestamp', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), 'data', job.doc)::text \
     FROM job, unnest($U::text[]) AS u(url))";

fn interval(duration: Duration) -> String {
    format!("{} milliseconds", duration.as_millis())
}

impl JobStore {
    /// The store in `schema` (a plain lowercase name, checked by the settings).
    /// With `webhooks`, the statements that end a job queue its events for them.
    pub(crate) fn new(schema: &str, webhooks: &[WebhookSettings]) -> JobStore {
        let subscribers = [WebhookEvent::Completed, WebhookEvent::Failed, WebhookEvent::Cancelled]
            .into_iter()
            .map(|event| {
                let urls = webhooks
                    .iter()
                    .filter(|w| w.events.contains(&event))
                    .map(|w| w.url.clone());
                (event, urls.collect())
            })
            .collect();
        JobStore {
            schema: escape_identifier(schema),
            subscribers,
        }
    }

    /// The endpoints subscribed to `event`.
    fn subscribers(&self, event: WebhookEvent) -> &[String] {
        self.subscribers
            .iter()
            .find(|(e, _)| *e == event)
            .map_or(&[], |(_, urls)| urls.as_slice())
    }

    /// A statement from `template`: `{s}` is the schema, `{queued}`, `{running}`, … each status as a literal,
    /// `{finished}` the statuses a job ends in; so every status name comes from [`JobStatus`].
    fn sql(&self, template: &str) -> String {
        let finished: Vec<String> = JobStatus::FINISHED.iter().map(|s| escape_literal(s.as_str())).collect();
        let mut sql = template
            .replace("{document}", DOCUMENT)
            .replace("{queue_event}", QUEUE_EVENT)
            .replace("{s}", &self.schema)
            .replace("{finished}", &finished.join(", "));
        for status in JobStatus::ALL {
            sql = sql.replace(&format!("{{{}}}", status.as_str()), &escape_literal(status.as_str()));
        }
        sql
    }
}
