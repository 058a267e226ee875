//! Prometheus metrics: every family pgspout exports, in one registry per server, rendered by `GET /metrics`.
//!
//! The names are an interface (dashboards and alerts use them): add families, never rename one. Counters move
//! per chunk, per export or per request, never per row. Gauges that describe state (pools, slots) are read when
//! scraped; the job table's counts are refreshed by the job runner every few seconds, not per scrape.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::db::Pool;
use crate::db::replicas::{Health, ReplicaSet};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use tokio::sync::Semaphore;

use super::request::RequestContext;

/// Buckets for durations from milliseconds (a small page) to hours (a 50 GB export), in seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 10800.0,
];

/// How an export ended: the `outcome` label of `pgspout_exports_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExportOutcome {
    /// Every row was sent and the body ended cleanly.
    Completed,
    /// The client went away.
    ClientLeft,
    /// The client stopped reading for longer than `export.stall_timeout`.
    Stalled,
    /// The database, an encoder or the compressor failed, or a shutdown cut the export.
    Failed,
    /// The export ran past `export.max_duration`.
    TooLong,
}

impl ExportOutcome {
    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ExportOutcome::Completed => "completed",
            ExportOutcome::ClientLeft => "client_left",
            ExportOutcome::Stalled => "stalled",
            ExportOutcome::Failed => "failed",
            ExportOutcome::TooLong => "too_long",
        }
    }
}

/// One worker's pool and export slots, read when scraped.
struct WorkerPools {
    /// The primary's pool, then the replicas'.
    pools: Vec<Pool>,
    slots: Arc<Semaphore>,
}

/// Every metric family, registered in one registry.
pub(crate) struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    exports_active: IntGauge,
    exports: IntCounterVec,
    export_rows: IntCounterVec,
    export_bytes: IntCounterVec,
    export_duration: HistogramVec,
    export_first_row: HistogramVec,
    pool_connections: IntGaugeVec,
    pool_max: IntGauge,
    pool_timeouts: IntCounter,
    export_slots_available: IntGauge,
    jobs: IntGaugeVec,
    job_runs: IntCounterVec,
    job_rows: IntCounter,
    webhook_deliveries: IntCounterVec,
    pools: Mutex<Vec<WorkerPools>>,
    replica_up: IntGaugeVec,
    replica_lag: prometheus::GaugeVec,
    replicas: Mutex<Option<Arc<ReplicaSet>>>,
}

fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    registry
        .register(Box::new(collector.clone()))
        .expect("each family is registered once, under a valid name");
    collector
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid names"),
    )
}

fn histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec());
    register(registry, HistogramVec::new(opts, labels).expect("valid names"))
}

impl Metrics {
    /// A registry with every family, the process metrics and `pgspout_build_info`.
    pub(crate) fn new() -> Metrics {
        let registry = Registry::new();
        let build_info = register(
            &registry,
            IntGaugeVec::new(
                Opts::new("pgspout_build_info", "Always 1; the version is in the label."),
                &["version"],
            )
            .expect("valid names"),
        );
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("the process collector is registered once");
        Metrics {
            http_requests: counter_vec(
                &registry,
                "pgspout_http_requests_total",
                "HTTP requests, by matched route, method and status, counted when the response ends.",
                &["route", "method", "status"],
            ),
            http_duration: histogram_vec(
                &registry,
                "pgspout_http_request_duration_seconds",
                "From the request to the end of its response body.",
                &["route", "method"],
            ),
            exports_active: register(
                &registry,
                IntGauge::new("pgspout_exports_active", "Streamed exports running now.").expect("valid names"),
            ),
            exports: counter_vec(
                &registry,
                "pgspout_exports_total",
                "Streamed exports that ended, by how: completed, client_left, stalled, failed, too_long.",
                &["dataset", "outcome"],
            ),
            export_rows: counter_vec(
                &registry,
                "pgspout_export_rows_total",
                "Rows sent by streamed exports.",
                &["dataset", "format"],
            ),
            export_bytes: counter_vec(
                &registry,
                "pgspout_export_bytes_total",
                "Body bytes sent by streamed exports, after compression.",
                &["dataset", "format", "encoding"],
            ),
            export_duration: histogram_vec(
                &registry,
                "pgspout_export_duration_seconds",
                "From the request to the end of a streamed export, whatever its outcome.",
                &["dataset"],
            ),
            export_first_row: histogram_vec(
                &registry,
                "pgspout_export_first_row_seconds",
                "From the request to the first row read from Postgres (or the empty result).",
                &["dataset"],
            ),
            pool_connections: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "pgspout_db_pool_connections",
                        "Open connections of the export pools (all workers), idle or in use.",
                    ),
                    &["state"],
                )
                .expect("valid names"),
            ),
            pool_max: register(
                &registry,
                IntGauge::new("pgspout_db_pool_max", "The export pools' size limit (all workers).")
                    .expect("valid names"),
            ),
            pool_timeouts: register(
                &registry,
                IntCounter::new(
                    "pgspout_db_pool_timeouts_total",
                    "Requests that found no free connection within database.acquire_timeout (answered 503).",
                )
                .expect("valid names"),
            ),
            export_slots_available: register(
                &registry,
                IntGauge::new(
                    "pgspout_export_slots_available",
                    "Streamed exports that could start now without waiting (all workers).",
                )
                .expect("valid names"),
            ),
            jobs: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "pgspout_jobs",
                        "Background export jobs in the job table, by status (refreshed every few seconds).",
                    ),
                    &["status"],
                )
                .expect("valid names"),
            ),
            job_runs: counter_vec(
                &registry,
                "pgspout_job_runs_total",
                "Runs of background export jobs on this instance that ended, by outcome.",
                &["outcome"],
            ),
            job_rows: register(
                &registry,
                IntCounter::new(
                    "pgspout_job_rows_total",
                    "Rows written to job files by this instance (counted at checkpoints).",
                )
                .expect("valid names"),
            ),
            webhook_deliveries: counter_vec(
                &registry,
                "pgspout_webhook_deliveries_total",
                "Webhook delivery attempts by this instance, by event and outcome (delivered, retried, failed).",
                &["event", "outcome"],
            ),
            pools: Mutex::new(Vec::new()),
            replica_up: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "pgspout_replica_up",
                        "1 while a read replica is used (it answers, is a standby and is within replica_max_lag).",
                    ),
                    &["replica"],
                )
                .expect("valid names"),
            ),
            replica_lag: register(
                &registry,
                prometheus::GaugeVec::new(
                    Opts::new(
                        "pgspout_replica_lag_seconds",
                        "How far a read replica was behind the primary at its last check.",
                    ),
                    &["replica"],
                )
                .expect("valid names"),
            ),
            replicas: Mutex::new(None),
            registry,
        }
    }

    /// Adds a worker's export pool and slots to the pool gauges.
    pub(crate) fn watch_pool(&self, pools: Vec<Pool>, slots: Arc<Semaphore>) {
        self.pools
            .lock()
            .expect("never poisoned: no code panics holding it")
            .push(WorkerPools { pools, slots });
    }

    /// Reports the replicas' health at every scrape.
    pub(crate) fn watch_replicas(&self, set: Arc<ReplicaSet>) {
        *self.replicas.lock().expect("never poisoned") = Some(set);
    }

    /// The Prometheus text format of every family.
    pub(crate) fn render(&self) -> String {
        let (mut idle, mut in_use, mut max, mut slots) = (0, 0, 0, 0);
        for worker in self.pools.lock().expect("never poisoned").iter() {
            for pool in &worker.pools {
                let status = pool.status();
                idle += status.available;
                in_use += status.size.saturating_sub(status.available);
                max += status.max_size;
            }
            slots += worker.slots.available_permits();
        }
        if let Some(set) = self.replicas.lock().expect("never poisoned").as_ref() {
            for replica in set.replicas() {
                let health = replica.health();
                let (up, lag) = match health {
                    Health::Healthy(lag) => (1, Some(lag)),
                    Health::Lagging(lag) => (0, Some(lag)),
                    _ => (0, None),
                };
                self.replica_up.with_label_values(&[&replica.address]).set(up);
                if let Some(lag) = lag {
                    self.replica_lag
                        .with_label_values(&[&replica.address])
                        .set(lag.as_secs_f64());
                }
            }
        }
        self.pool_connections.with_label_values(&["idle"]).set(idle as i64);
        self.pool_connections.with_label_values(&["in_use"]).set(in_use as i64);
        self.pool_max.set(max as i64);
        self.export_slots_available.set(slots as i64);
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .expect("the text format encodes any family")
    }

    /// Counts a request that timed out waiting for a connection.
    pub(crate) fn pool_timed_out(&self) {
        self.pool_timeouts.inc();
    }

    /// Counts an HTTP response that ended.
    pub(crate) fn http_request(&self, route: &str, method: &str, status: u16, duration: Duration) {
        self.http_requests
            .with_label_values(&[route, method, itoa::Buffer::new().format(status)])
            .inc();
        self.http_duration
            .with_label_values(&[route, method])
            .observe(duration.as_secs_f64());
    }

    /// Sets the job table's counts, one per status.
    pub(crate) fn jobs(&self, counts: &[(&'static str, i64)]) {
        for (status, count) in counts {
            self.jobs.with_label_values(&[status]).set(*count);
        }
    }

    /// Counts a job run that ended with `outcome`: a run outcome as stored, or `panicked`.
    pub(crate) fn job_run(&self, outcome: &str) {
        self.job_runs.with_label_values(&[outcome]).inc();
    }

    /// Counts rows a job wrote (at a checkpoint or its end).
    pub(crate) fn job_rows(&self, rows: u64) {
        self.job_rows.inc_by(rows);
    }

    /// Counts one attempt to deliver a webhook of `event`.
    pub(crate) fn webhook_delivery(&self, event: &str, outcome: &str) {
        self.webhook_deliveries.with_label_values(&[event, outcome]).inc();
    }

    /// Starts metering a streamed export of the request `context`, whose first row has just been read.
    pub(crate) fn export(&self, context: RequestContext, dataset: &str, format: &str, encoding: &str) -> ExportMeter {
        self.exports_active.inc();
        let started = context.started();
        self.export_first_row
            .with_label_values(&[dataset])
            .observe(started.elapsed().as_secs_f64());
        ExportMeter {
            rows: self.export_rows.with_label_values(&[dataset, format]),
            bytes: self.export_bytes.with_label_values(&[dataset, format, encoding]),
            duration: self.export_duration.with_label_values(&[dataset]),
            outcomes: self.exports.clone(),
            active: self.exports_active.clone(),
            dataset: dataset.to_owned(),
            context,
            outcome: None,
            sent_rows: 0,
            sent_bytes: 0,
        }
    }
}

/// One streamed export's metrics. Dropping it ends the export's record, once: it counts the export with the
/// first outcome recorded (`failed` if none was), observes its duration, logs its end line and hands rows and
/// outcome to the request's access line.
pub(crate) struct ExportMeter {
    rows: IntCounter,
    bytes: IntCounter,
    duration: Histogram,
    outcomes: IntCounterVec,
    active: IntGauge,
    dataset: String,
    context: RequestContext,
    outcome: Option<ExportOutcome>,
    sent_rows: u64,
    sent_bytes: u64,
}

impl ExportMeter {
    /// A chunk went out: `rows` is the export's running row total, `bytes` the chunk's length.
    pub(crate) fn sent(&mut self, rows: u64, bytes: usize) {
        self.rows.inc_by(rows - self.sent_rows);
        self.sent_rows = rows;
        self.bytes.inc_by(bytes as u64);
        self.sent_bytes += bytes as u64;
    }

    /// How the export ended. The first outcome recorded stands: a client that leaves an export that had
    /// already failed (or run too long) does not turn it into a departure.
    pub(crate) fn end(&mut self, outcome: ExportOutcome) {
        self.outcome.get_or_insert(outcome);
    }

    /// When the export's request arrived.
    pub(crate) fn started(&self) -> std::time::Instant {
        self.context.started()
    }
}

impl Drop for ExportMeter {
    fn drop(&mut self) {
        let elapsed = self.context.started().elapsed();
        self.active.dec();
        self.duration.observe(elapsed.as_secs_f64());
        let outcome = self.outcome.unwrap_or(ExportOutcome::Failed).as_str();
        self.outcomes.with_label_values(&[self.dataset.as_str(), outcome]).inc();
        self.context.export_ended(self.sent_rows, outcome);
        tracing::info!(
            dataset = %self.dataset,
            outcome,
            rows = self.sent_rows,
            bytes = self.sent_bytes,
            millis = elapsed.as_millis() as u64,
            "export ended"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exports_first_outcome_stands_when_a_later_one_is_recorded() {
        let metrics = Arc::new(Metrics::new());
        let count = |outcome: &str| metrics.exports.with_label_values(&["orders", outcome]).get();
        let mut meter = metrics.export(
            RequestContext::for_tests(metrics.clone()),
            "orders",
            "ndjson",
            "identity",
        );
        // It ran too long; its client left while the abort waited to be sent.
        meter.end(ExportOutcome::TooLong);
        meter.end(ExportOutcome::ClientLeft);
        drop(meter);
        assert_eq!((count("too_long"), count("client_left")), (1, 0));
        // No outcome recorded at all is a failure.
        drop(metrics.export(
            RequestContext::for_tests(metrics.clone()),
            "orders",
            "ndjson",
            "identity",
        ));
        assert_eq!(count("failed"), 1);
    }
}
