//! The rows of an export, page or job: leased connection, read-only transaction, checked values, optional
//! count, then one statement or a sequence of keyset batches, each in a transaction of its own.
//!
//! The first row is awaited before anything is sent, so a failing query still gets a proper status. Once a
//! read fails, every later read fails too: a broken export can never be mistaken for a finished one.

use std::pin::Pin;

use futures::StreamExt;
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Row, RowStream};

use super::error::OpenError;
use super::lease::Lease;
use super::replicas::Readers;
use crate::encode::{Cells, EncodeError, EncodedColumn};
use crate::query::{Check, CountMethod, KeysetScan, Plan, Position};

/// Where rows come from.
pub(crate) enum Source {
    /// One statement in one transaction (a snapshot export, a page, a keyless job).
    Statement(Plan),
    /// Keyset batches (a chunked export, a job): each a short statement in a transaction of its own.
    Batches(KeysetScan),
}

/// A read that failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// The database failed mid-result (backend terminated, connection lost, a batch's statement failed).
    #[error(transparent)]
    Database(#[from] tokio_postgres::Error),
    /// An earlier read failed; the rows are incomplete for good.
    #[error("an earlier read of this export failed")]
    Failed,
}

/// What the next read gave.
pub(crate) enum Next {
    /// A row.
    Row(Row),
    /// A batch ended and [`Rows::pause_between_batches`] was asked for: its rows are all read, and the next
    /// read starts the next batch.
    BatchEnd,
    /// The rows are complete.
    End,
}

/// The rows being read: the connection, the current statement's stream, and where the last row sits.
pub(crate) struct Rows {
    /// The connection; away in `next` while a new batch starts.
    lease: Option<Lease>,
    stream: Pin<Box<RowStream>>,
    /// The encoded columns, in order (each row may carry hidden position columns after them).
    columns: Vec<EncodedColumn>,
    first: Option<Row>,
    state: State,
    /// The last row's position, when the plan carries one.
    position: Option<PositionReader>,
    batches: Option<Batches>,
    /// The next batch being started. Kept here, not in a local, because `next` must be cancel-safe: the body
    /// polls it with timeouts, and a dropped half-started batch would be lost.
    next: Option<NextBatch>,
    /// At most this many rows are returned; one more is read to tell whether there are more.
    cap: Option<u64>,
    read: u64,
    more: bool,
    timings: OpenTimings,
}

/// How long opening the rows took, for `Server-Timing`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OpenTimings {
    /// Waiting for a pooled connection.
    pub(crate) lease: std::time::Duration,
    /// From the start of [`Rows::open`] to the first row (or the empty result).
    pub(crate) first_row: std::time::Duration,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// The current statement has rows to come.
    Reading,
    /// The current statement is complete; a next batch may follow.
    StatementDone,
    /// Everything was read.
    Complete,
    /// A read failed.
    Failed,
}

/// Starting a batch: the connection travels with the future and comes back with the result.
type NextBatch = Pin<Box<dyn Future<Output = (Lease, Result<RowStream, tokio_postgres::Error>)> + Send>>;

/// The state of rows read in keyset batches.
struct Batches {
    scan: KeysetScan,
    begin_sql: String,
    /// The current batch's row limit, and how many of its rows have been read.
    limit: u64,
    read: u64,
    /// Rows the scan's limit still allows after the current batch; `None`: no limit.
    remaining: Option<u64>,
    pause: bool,
}

impl Rows {
    /// Checks out a connection, opens the transaction with `begin_sql`, checks the plan's values, runs its
    /// count (in the same snapshot as the rows) and the first statement, and waits for the first row.
    pub(crate) async fn open(
        readers: &Readers,
        begin_sql: &str,
        source: Source,
        count: Option<CountMethod>,
    ) -> Result<(Rows, Option<i64>), OpenError> {
        let (plan, batches) = match source {
            Source::Statement(plan) => (plan, None),
            Source::Batches(scan) => {
                let limit = batch_limit(scan.batch_rows(), scan.limit());
                let plan = scan.batch(scan.start(), limit, count);
                let batches = Batches {
                    remaining: scan.limit().map(|l| l - limit),
                    scan,
                    begin_sql: begin_sql.to_owned(),
                    limit,
                    read: 0,
                    pause: false,
                };
                (plan, Some(batches))
            }
        };
        let started = std::time::Instant::now();
        let mut lease = readers.lease().await?;
        let leased = started.elapsed();
        if plan.checks.is_empty() {
            lease.begin(begin_sql).await
        } else {
            // A savepoint, in the same round trip, lets a failed check be narrowed down to its parameter.
            lease.begin(&format!("{begin_sql}; SAVEPOINT {CHECKS}")).await
        }
        .map_err(OpenError::from_begin)?;
        let client = lease.client();
        check_values(client, &plan.checks).await?;
        if let Some(max) = plan.max_cost {
            check_cost(client, &plan, max).await?;
        }
        let total = match &plan.count {
            None => None,
            Some(count) => {
                let params = plan.params[..count.params].iter().map(|p| (p.as_str(), Type::TEXT));
                let rows = client.query_typed_raw(&count.sql, params).await?;
                let rows: Vec<Row> = futures::TryStreamExt::try_collect(rows).await?;
                let first = rows
                    .first()
                    .ok_or_else(|| OpenError::Unavailable("the count returned no row".into()))?;
                Some(match count.method {
                    CountMethod::Exact => first.try_get::<_, i64>(0)?,
                    CountMethod::Estimated => planned_rows(first.try_get::<_, Raw<'_>>(0)?.0)
                        .ok_or_else(|| OpenError::Unavailable("EXPLAIN gave no row estimate".into()))?,
                })
            }
        };
        let stream = Box::pin(start_statement(&lease, None, &plan).await?);
        let mut rows = Rows {
            lease: Some(lease),
            stream,
            columns: plan.columns.clone(),
            first: None,
            state: State::Reading,
            position: (!plan.keyset.is_empty()).then(|| PositionReader::new(&plan)),
            batches,
            next: None,
            cap: None,
            read: 0,
            more: false,
            timings: OpenTimings {
                lease: leased,
                first_row: leased,
            },
        };
        rows.first = match rows.stream.next().await.transpose()? {
            Some(row) => Some(row),
            None => {
                rows.state = State::StatementDone;
                None
            }
        };
        rows.timings.first_row = started.elapsed();
        Ok((rows, total))
    }

    /// Whether the first row has been read and not yet handed out.
    pub(crate) fn has_first(&self) -> bool {
        self.first.is_some()
    }

    /// Returns at most `cap` rows; [`Rows::has_more`] then tells whether more matched.
    pub(crate) fn cap(&mut self, cap: u64) {
        self.cap = Some(cap);
    }

    /// Makes [`Rows::next`] report the end of each keyset batch (a job checkpoints there).
    pub(crate) fn pause_between_batches(&mut self) {
        if let Some(batches) = self.batches.as_mut() {
            batches.pause = true;
        }
    }

    /// The next row, a batch boundary, or the end.
    pub(crate) async fn next(&mut self) -> Result<Next, ReadError> {
        let next = self.advance().await;
        if next.is_err() {
            self.fail();
        }
        next
    }

    async fn advance(&mut self) -> Result<Next, ReadError> {
        loop {
            match self.state {
                State::Failed => return Err(ReadError::Failed),
                State::Complete => return Ok(Next::End),
                State::StatementDone if self.next.is_none() => match self.next_batch() {
                    Some(next) => {
                        self.next = Some(next);
                        if self.batches.as_ref().is_some_and(|b| b.pause) {
                            return Ok(Next::BatchEnd);
                        }
                    }
                    None => {
                        self.state = State::Complete;
                        return Ok(Next::End);
                    }
                },
                State::StatementDone => {
                    let next = self.next.as_mut().expect("checked above");
                    let (lease, stream) = next.await;
                    self.next = None;
                    self.lease = Some(lease);
                    self.stream = Box::pin(stream?);
                    self.state = State::Reading;
                }
                State::Reading => {
                    let row = match self.first.take() {
                        Some(row) => Some(row),
                        None => self.stream.next().await.transpose()?,
                    };
                    let Some(row) = row else {
                        self.state = State::StatementDone;
                        continue;
                    };
                    if self.cap.is_some_and(|cap| self.read >= cap) {
                        // The row past the cap only says that more rows match.
                        self.more = true;
                        self.state = State::Complete;
                        return Ok(Next::End);
                    }
                    self.read += 1;
                    if let Some(batches) = self.batches.as_mut() {
                        batches.read += 1;
                    }
                    if let Some(position) = self.position.as_mut() {
                        position.note(&row)?;
                    }
                    return Ok(Next::Row(row));
                }
            }
        }
    }

    /// After a full batch: the start of the next one, in a new transaction (so with a fresh snapshot).
    fn next_batch(&mut self) -> Option<NextBatch> {
        let batches = self.batches.as_mut()?;
        // A short batch was the last; so was one that used up the scan's limit.
        if batches.read < batches.limit || batches.remaining == Some(0) {
            return None;
        }
        let after = self.position.as_ref().map(PositionReader::position);
        let limit = batch_limit(batches.scan.batch_rows(), batches.remaining);
        let plan = batches.scan.batch(after.as_ref(), limit, None);
        batches.remaining = batches.remaining.map(|r| r - limit);
        batches.limit = limit;
        batches.read = 0;
        let lease = self.lease.take().expect("the lease is home between batches");
        let begin = format!("COMMIT; {}", batches.begin_sql);
        Some(Box::pin(async move {
            let stream = start_statement(&lease, Some(&begin), &plan).await;
            (lease, stream)
        }))
    }

    /// A failed read poisons the rows, and the connection goes with them (it may be mid-result).
    fn fail(&mut self) {
        self.state = State::Failed;
        self.next = None;
        self.lease = None;
    }

    /// The position of the last row returned, when the plan carries positions.
    pub(crate) fn position(&self) -> Option<Position> {
        self.position
            .as_ref()
            .filter(|_| self.read > 0)
            .map(PositionReader::position)
    }

    /// The encoded columns.
    pub(crate) fn columns(&self) -> &[EncodedColumn] {
        &self.columns
    }

    /// How long opening took.
    pub(crate) fn timings(&self) -> OpenTimings {
        self.timings
    }

    /// Rows returned so far.
    pub(crate) fn read(&self) -> u64 {
        self.read
    }

    /// With a cap: whether more rows matched than were returned.
    pub(crate) fn has_more(&self) -> bool {
        self.more
    }

    /// Ends fully read rows: commits and returns the connection to the pool.
    pub(crate) async fn finish(self) -> Result<(), ReadError> {
        if self.state != State::Complete {
            return Err(ReadError::Failed);
        }
        // Drop the row stream first: should any message of it remain (a capped read stops early), the
        // connection then discards it instead of waiting for a reader while COMMIT's answer queues behind it.
        let Rows { lease, stream, .. } = self;
        drop(stream);
        let lease = lease.expect("complete rows have their connection home");
        Ok(lease.release().await?)
    }
}

/// The savepoint taken before the values are checked.
const CHECKS: &str = "pgspout_checks";

/// Checks every value against its type in one statement, whatever their number. Only when one is bad does it
/// take more: halving the checks, back at the savepoint each time, until the bad value's parameter is found
/// (about log2(n) more statements).
async fn check_values(client: &tokio_postgres::Client, checks: &[Check]) -> Result<(), OpenError> {
    if checks.is_empty() {
        return Ok(());
    }
    let Err(error) = run_checks(client, checks).await else {
        return Ok(());
    };
    // Only a database's answer (not a lost connection) can name a value, and one check names itself.
    if error.as_db_error().is_none() || checks.len() == 1 {
        return Err(OpenError::from_check(&checks[0].parameter, error));
    }
    let mut suspects = checks;
    while suspects.len() > 1 {
        client.batch_execute(&format!("ROLLBACK TO SAVEPOINT {CHECKS}")).await?;
        let (first, second) = suspects.split_at(suspects.len() / 2);
        suspects = match run_checks(client, first).await {
            Err(error) if error.as_db_error().is_none() => return Err(error.into()),
            Err(_) => first,
            Ok(()) => second,
        };
    }
    client.batch_execute(&format!("ROLLBACK TO SAVEPOINT {CHECKS}")).await?;
    match run_checks(client, suspects).await {
        Err(error) => Err(OpenError::from_check(&suspects[0].parameter, error)),
        // Each value passed alone: report the statement's own failure.
        Ok(()) => Err(OpenError::from_check(&checks[0].parameter, error)),
    }
}

/// `SELECT ARRAY[$1::text::<type> IS NULL, …]`: every cast is evaluated (an array has no column limit), and
/// the result is a boolean array, whose type tokio-postgres knows without a lookup (a lookup would fail in
/// the transaction a bad value just aborted).
async fn run_checks(client: &tokio_postgres::Client, checks: &[Check]) -> Result<(), tokio_postgres::Error> {
    let casts: Vec<String> = checks
        .iter()
        .enumerate()
        .map(|(i, check)| format!("${}::text::{} IS NULL", i + 1, check.cast_type))
        .collect();
    let sql = format!("SELECT ARRAY[{}]", casts.join(", "));
    let params: Vec<(&(dyn tokio_postgres::types::ToSql + Sync), Type)> = checks
        .iter()
        .map(|check| (&check.value as &(dyn tokio_postgres::types::ToSql + Sync), Type::TEXT))
        .collect();
    client.query_typed(&sql, &params).await.map(drop)
}

/// Opens a batch's transaction (after committing the last) when `begin` is given, then runs `plan`.
async fn start_statement(lease: &Lease, begin: Option<&str>, plan: &Plan) -> Result<RowStream, tokio_postgres::Error> {
    let client = lease.client();
    if let Some(begin) = begin {
        client.batch_execute(begin).await?;
    }
    // Prepared first, not `query_typed_raw`: that pipelines the execution with the description, and a
    // result type the connection does not know yet (an enum, a domain) is then looked up by a query queued
    // behind rows that nobody reads yet — a deadlock. Uncached, as filters make every SQL text different.
    let types = vec![Type::TEXT; plan.params.len()];
    let statement = client.prepare_typed(&plan.sql, &types).await?;
    client
        .query_raw(&statement, plan.params.iter().map(String::as_str))
        .await
}

/// The row limit of the next batch: a full batch, or what the scan's limit leaves.
fn batch_limit(batch_rows: u64, remaining: Option<u64>) -> u64 {
    remaining.map_or(batch_rows, |r| r.min(batch_rows))
}

/// Reads the last row's position from a keyset plan's hidden columns, reusing its buffers from row to row.
struct PositionReader {
    columns: std::ops::Range<usize>,
    values: Vec<Option<Vec<u8>>>,
}

impl PositionReader {
    fn new(plan: &Plan) -> PositionReader {
        let columns = plan.position_columns();
        PositionReader {
            values: vec![None; columns.len()],
            columns,
        }
    }

    fn note(&mut self, row: &Row) -> Result<(), tokio_postgres::Error> {
        for (slot, index) in self.values.iter_mut().zip(self.columns.clone()) {
            match row.try_get::<_, Option<Raw<'_>>>(index)? {
                Some(raw) => {
                    let buffer = slot.get_or_insert_with(Vec::new);
                    buffer.clear();
                    buffer.extend_from_slice(raw.0);
                }
                None => *slot = None,
            }
        }
        Ok(())
    }

    fn position(&self) -> Position {
        Position(
            self.values
                .iter()
                .map(|value| value.as_ref().map(|raw| String::from_utf8_lossy(raw).into_owned()))
                .collect(),
        )
    }
}

/// The planner's estimate of the rows in `relation` (quoted SQL from the catalog).
pub(crate) async fn estimate_rows(
    client: &tokio_postgres::Client,
    relation: &str,
) -> Result<Option<i64>, tokio_postgres::Error> {
    let rows = client
        .query_typed(&format!("EXPLAIN (FORMAT JSON) SELECT 1 FROM {relation}"), &[])
        .await?;
    Ok(match rows.first() {
        Some(row) => planned_rows(row.try_get::<_, Raw<'_>>(0)?.0),
        None => None,
    })
}

/// The top plan node's row estimate from `EXPLAIN (FORMAT JSON)` output (binary `json` is its text).
/// Refuses `plan` if the planner estimates its cost above `max` (`EXPLAIN`, under the caller's role). The
/// cost is the summary's before any `LIMIT`: a limit rarely spares the grouping, and a job is checked with
/// `LIMIT 0` when it is created.
async fn check_cost(client: &tokio_postgres::Client, plan: &Plan, max: f64) -> Result<(), OpenError> {
    let params = plan.params.iter().map(|p| (p.as_str(), Type::TEXT));
    let rows = client
        .query_typed_raw(&format!("EXPLAIN (FORMAT JSON) {}", plan.sql), params)
        .await?;
    let rows: Vec<Row> = futures::TryStreamExt::try_collect(rows).await?;
    let cost = rows
        .first()
        .map(|row| row.try_get::<_, Raw<'_>>(0))
        .transpose()?
        .and_then(|explain| summary_cost(explain.0))
        .ok_or_else(|| OpenError::Unavailable("EXPLAIN gave no cost".into()))?;
    if cost > max {
        return Err(OpenError::TooCostly { cost, max });
    }
    Ok(())
}

/// A number of the top plan node of `EXPLAIN (FORMAT JSON)`.
fn plan_field(explain: &[u8], field: &str) -> Option<f64> {
    let plans: serde_json::Value = serde_json::from_slice(explain).ok()?;
    plans.get(0)?.get("Plan")?.get(field)?.as_f64()
}

/// The total cost of the top plan node below a `Limit`.
fn summary_cost(explain: &[u8]) -> Option<f64> {
    let plans: serde_json::Value = serde_json::from_slice(explain).ok()?;
    let mut node = plans.get(0)?.get("Plan")?;
    while node.get("Node Type")?.as_str()? == "Limit" {
        node = node.get("Plans")?.get(0)?;
    }
    node.get("Total Cost")?.as_f64()
}

fn planned_rows(explain: &[u8]) -> Option<i64> {
    plan_field(explain, "Plan Rows").map(|rows| rows as i64)
}

/// Any column's raw binary bytes.
struct Raw<'a>(&'a [u8]);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

impl Cells for Row {
    #[inline]
    fn cell(&self, index: usize) -> Result<Option<&[u8]>, EncodeError> {
        self.try_get::<_, Option<Raw<'_>>>(index)
            .map(|raw| raw.map(|r| r.0))
            .map_err(|_| EncodeError::Unreadable(index))
    }
}

/// Which of `relations` (name, quoted relation) the role of `lease`'s transaction may SELECT from (any
/// column); with `estimate`, each with the planner's row estimate. The caller opened the transaction (which
/// switches to the request's role) and commits it.
pub(crate) async fn readable(
    client: &tokio_postgres::Client,
    relations: &[(String, String)],
    estimate: bool,
) -> Result<Vec<(String, Option<i64>)>, OpenError> {
    let names: Vec<&str> = relations.iter().map(|(n, _)| n.as_str()).collect();
    let tables: Vec<&str> = relations.iter().map(|(_, r)| r.as_str()).collect();
    let rows = client
        .query(
            "SELECT d.name FROM unnest($1::text[], $2::text[]) AS d(name, relation) \
             WHERE pg_catalog.has_any_column_privilege(d.relation, 'SELECT')",
            &[&names, &tables],
        )
        .await?;
    let mut found = Vec::new();
    for row in rows {
        let name: String = row.get(0);
        let rows = match estimate {
            true => {
                let relation = &relations.iter().find(|(n, _)| *n == name).expect("one of them").1;
                estimate_rows(client, relation).await?
            }
            false => None,
        };
        found.push((name, rows));
    }
    Ok(found)
}
