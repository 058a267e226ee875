//! Operability: Prometheus metrics (through a real Prometheus too), request ids from the client to
//! `pg_stat_activity`, JSON logs without secrets, `Server-Timing`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{
    BIG_VIEW, RawResponse, ServerProcess, TestApp, TestDb, settings, small_table, spawn_with, wait_for, wait_until,
};
use crate::jobs::{create_ok, status, temp_dir};

/// The value of the series `name` whose labels include `labels`, in a Prometheus text exposition.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (series_name, series_labels) = match series.split_once('{') {
            Some((series_name, rest)) => (series_name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let matches = series_name == name
            && labels
                .iter()
                .all(|(k, v)| series_labels.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
        matches.then(|| value.parse().unwrap())
    })
}

async fn scrape(base: &str) -> String {
    let response = reqwest::get(format!("http://{base}/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        response.headers()
    );
    response.text().await.unwrap()
}

async fn exports(base: &str, dataset: &str, outcome: &str) -> f64 {
    metric(
        &scrape(base).await,
        "pgspout_exports_total",
        &[("dataset", dataset), ("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn each_export_outcome_is_counted_once() {
    let db = TestDb::new().await;
    db.client.batch_execute(BIG_VIEW).await.unwrap();
    small_table(&db, 100).await;
    let mut settings = settings(&db, &[("big", "big", None), ("small", "small", Some("id"))]);
    settings.export.stall_timeout = Duration::from_secs(2);
    // A second server over the same database for exports that run too long: an export's outcome is the
    // first one recorded, and on a loaded machine a stalled client could otherwise run into max_duration
    // before its stall is noticed.
    let mut timed = settings.clone();
    timed.export.max_duration = Some(Duration::from_secs(4));
    let timed = crate::helpers::serve(timed).await;
    let app = spawn_with(db, settings).await;
    let base = app.address.clone();
    let outcomes = ["completed", "client_left", "stalled", "failed", "too_long"];
    let counts = |dataset: &'static str| {
        let base = base.clone();
        async move {
            let mut counts = Vec::new();
            for outcome in outcomes {
                counts.push(exports(&base, dataset, outcome).await);
            }
            counts
        }
    };
    // Waits until the dataset's outcome counts are `expected`, naming the last counts if they never are.
    let settled = |dataset: &'static str, expected: [f64; 5]| {
        let counts = &counts;
        async move {
            let start = std::time::Instant::now();
            loop {
                let counts = counts(dataset).await;
                if counts == expected {
                    return;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "{dataset}: {outcomes:?} counted {counts:?} after 30 s, not {expected:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    // Completed: every row and byte counted.
    let body = app.get("/v1/datasets/small/rows", &[]).await.bytes().await.unwrap();
    settled("small", [1.0, 0.0, 0.0, 0.0, 0.0]).await;
    let text = scrape(&base).await;
    let ndjson = [("dataset", "small"), ("format", "ndjson")];
    assert_eq!(metric(&text, "pgspout_export_rows_total", &ndjson), Some(100.0));
    let identity = [("dataset", "small"), ("format", "ndjson"), ("encoding", "identity")];
    assert_eq!(
        metric(&text, "pgspout_export_bytes_total", &identity),
        Some(body.len() as f64)
    );
    let small = [("dataset", "small")];
    assert_eq!(
        metric(&text, "pgspout_export_duration_seconds_count", &small),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "pgspout_export_first_row_seconds_count", &small),
        Some(1.0)
    );
    let ok = [
        ("route", "/v1/datasets/{name}/rows"),
        ("method", "GET"),
        ("status", "200"),
    ];
    assert_eq!(metric(&text, "pgspout_http_requests_total", &ok), Some(1.0));

    // The client leaves.
    let mut leaving = app.raw("/v1/datasets/big/rows", &[]).await;
    assert_eq!(leaving.status, 200);
    leaving.next_chunk().await.unwrap().unwrap();
    drop(leaving);
    settled("big", [0.0, 1.0, 0.0, 0.0, 0.0]).await;

    // The client stops reading past the stall timeout.
    let mut stalled = app.raw("/v1/datasets/big/rows", &[]).await;
    assert_eq!(stalled.status, 200);
    stalled.next_chunk().await.unwrap().unwrap();
    settled("big", [0.0, 1.0, 1.0, 0.0, 0.0]).await;
    drop(stalled);

    // The backend is killed mid-export while the client reads.
    let mut killed = app.raw("/v1/datasets/big/rows", &[]).await;
    assert_eq!(killed.status, 200);
    let pid = app.db.active_export().await;
    let reader = tokio::spawn(async move { killed.read_to_end().await.1 });
    app.db
        .client
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    assert!(!reader.await.unwrap(), "a failed export must not end cleanly");
    settled("big", [0.0, 1.0, 1.0, 1.0, 0.0]).await;

    // Past max_duration, while the client reads.
    let (_, terminated) = RawResponse::get(&timed, "/v1/datasets/big/rows", &[])
        .await
        .read_to_end()
        .await;
    assert!(!terminated);
    wait_until(Duration::from_secs(30), || async {
        exports(&timed, "big", "too_long").await == 1.0
    })
    .await;

    // Nothing was counted twice, and nothing is left running.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(counts("big").await, [0.0, 1.0, 1.0, 1.0, 0.0]);
    for outcome in ["completed", "client_left", "stalled", "failed"] {
        assert_eq!(exports(&timed, "big", outcome).await, 0.0, "{outcome}");
    }
    assert_eq!(counts("small").await, [1.0, 0.0, 0.0, 0.0, 0.0]);
    assert_eq!(metric(&scrape(&base).await, "pgspout_exports_active", &[]), Some(0.0));
}

#[tokio::test]
async fn pool_gauges_follow_a_held_connection_and_a_timeout_is_counted() {
    let db = TestDb::new().await;
    db.client.batch_execute(BIG_VIEW).await.unwrap();
    small_table(&db, 10).await;
    let mut settings = settings(&db, &[("big", "big", None), ("small", "small", Some("id"))]);
    settings.database.pool_size = 1;
    settings.export.max_concurrent = Some(1);
    settings.database.acquire_timeout = Duration::from_millis(300);
    let app = spawn_with(db, settings).await;
    let base = app.address.clone();
    let gauges = || async {
        let text = scrape(&base).await;
        let get = |name: &str, labels: &[(&str, &str)]| metric(&text, name, labels).unwrap();
        (
            get("pgspout_db_pool_connections", &[("state", "in_use")]),
            get("pgspout_export_slots_available", &[]),
            get("pgspout_db_pool_max", &[]),
            get("pgspout_db_pool_timeouts_total", &[]),
        )
    };
    assert_eq!(gauges().await, (0.0, 1.0, 1.0, 0.0));

    let mut held = app.raw("/v1/datasets/big/rows", &[]).await;
    held.next_chunk().await.unwrap().unwrap();
    assert_eq!(gauges().await, (1.0, 0.0, 1.0, 0.0));
    assert_eq!(metric(&scrape(&base).await, "pgspout_exports_active", &[]), Some(1.0));

    // A page needs the one connection: it waits acquire_timeout, then 503, counted.
    let busy = app.get("/v1/datasets/small/page", &[("x-request-id", "busy-1")]).await;
    assert_eq!(busy.status(), 503);
    let problem: Value = busy.json().await.unwrap();
    assert_eq!(problem["request_id"], "busy-1");
    assert_eq!(problem["instance"], "urn:pgspout:request:busy-1");
    assert_eq!(gauges().await, (1.0, 0.0, 1.0, 1.0));

    drop(held);
    wait_until(Duration::from_secs(30), || async {
        gauges().await == (0.0, 1.0, 1.0, 1.0)
    })
    .await;
}

/// The `application_name`s of pgspout's request backends in the test database (not its reload listener).
async fn application_names(app: &TestApp) -> Vec<String> {
    app.db.pgspout_backends().await.into_iter().map(|b| b.3).collect()
}

#[tokio::test]
async fn the_request_id_names_the_backend_on_every_batch_and_comes_back() {
    let db = TestDb::new().await;
    db.client
        .batch_execute(
            "CREATE TABLE numbers (id int PRIMARY KEY, pad text); \
             INSERT INTO numbers SELECT g, repeat('x', 2000) FROM generate_series(1, 20000) g",
        )
        .await
        .unwrap();
    let mut settings = settings(&db, &[("numbers", "numbers", Some("id"))]);
    settings.export.batch_rows = 1000;
    let app = spawn_with(db, settings).await;

    // A snapshot export, and every batch of a chunked one, run under the client's id.
    for query in ["", "?consistency=chunked"] {
        let id = format!("req-{}.x:1", query.len());
        let path = format!("/v1/datasets/numbers/rows{query}");
        let mut response = app.raw(&path, &[("X-Request-Id", &id)]).await;
        assert_eq!(response.header("x-request-id"), Some(id.as_str()));
        let tagged = format!("pgspout {id}");
        let mut read = 0;
        let mut seen = 0;
        // Read slowly, looking at the backend now and then: after the first batch too. The rows are wide
        // (40 MB in all), so the last quarter cannot sit in socket buffers after Postgres has finished.
        while let Some(chunk) = response.next_chunk().await.unwrap() {
            read += chunk.iter().filter(|b| **b == b'\n').count();
            if read > 1000 * (seen + 1) && read < 15000 {
                // Sampled right at a batch boundary, the backend may be between COMMIT and the next
                // batch's SET LOCAL (one message, but a loaded machine can pause it there): look again.
                wait_until(Duration::from_secs(20), || async {
                    application_names(&app).await.contains(&tagged)
                })
                .await;
                seen += 1;
            }
        }
        assert_eq!(read, 20000);
        assert!(seen >= 3, "looked only {seen} times");
        // Back in the pool, the connection has its plain name again (and it is there: the export released
        // it rather than discarding it).
        wait_until(Duration::from_secs(30), || async {
            let names = application_names(&app).await;
            !names.is_empty() && names.iter().all(|n| n == "pgspout")
        })
        .await;
    }

    // An id that is not well-formed is replaced; errors carry the id.
    for bad in ["has space", &"x".repeat(129), "semi;colon"] {
        let response = app.get("/v1/datasets/nope/rows", &[("X-Request-Id", bad)]).await;
        assert_eq!(response.status(), 404);
        let echoed = response.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert!(uuid::Uuid::parse_str(&echoed).is_ok(), "{bad:?} became {echoed:?}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["request_id"], echoed.as_str());
    }
    let response = app.get("/nowhere", &[]).await;
    let echoed = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["instance"], format!("urn:pgspout:request:{echoed}").as_str());
}

#[tokio::test]
async fn server_timing_reports_the_lease_and_the_first_row() {
    let db = TestDb::new().await;
    small_table(&db, 10).await;
    let settings = settings(&db, &[("small", "small", Some("id"))]);
    let app = spawn_with(db, settings).await;
    for path in ["/v1/datasets/small/rows", "/v1/datasets/small/page"] {
        let response = app.get(path, &[]).await;
        assert_eq!(response.status(), 200);
        let timing = response.headers()["server-timing"].to_str().unwrap().to_owned();
        let duration = |name: &str| -> f64 {
            let metric = timing
                .split(", ")
                .find(|m| m.starts_with(&format!("{name};")))
                .unwrap_or_else(|| panic!("no {name} in {timing}"));
            let dur = metric.split(';').find_map(|p| p.strip_prefix("dur=")).unwrap();
            dur.parse().unwrap()
        };
        let (lease, first_row) = (duration("lease"), duration("first-row"));
        assert!(0.0 <= lease && lease <= first_row && first_row < 5000.0, "{timing}");
    }
}

#[tokio::test]
async fn metrics_can_have_a_listener_of_their_own() {
    let db = TestDb::new().await;
    small_table(&db, 10).await;
    let mut settings = settings(&db, &[("small", "small", Some("id"))]);
    settings.server.metrics_listen = Some("127.0.0.1:0".into());
    let app = pgspout::startup::Application::build(settings).await.unwrap();
    let (main, metrics) = (app.port(), app.metrics_port().unwrap());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let on_main = reqwest::get(format!("http://127.0.0.1:{main}/metrics")).await.unwrap();
    assert_eq!(on_main.status(), 404);
    reqwest::get(format!("http://127.0.0.1:{main}/v1/datasets/small/rows"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let base = format!("127.0.0.1:{metrics}");
    wait_until(Duration::from_secs(30), || async {
        exports(&base, "small", "completed").await == 1.0
    })
    .await;
    let text = scrape(&base).await;
    assert_eq!(
        metric(&text, "pgspout_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        Some(1.0)
    );
    assert!(metric(&text, "process_resident_memory_bytes", &[]).unwrap() > 0.0);
}

#[tokio::test]
async fn job_batches_name_their_job_and_job_metrics_move() {
    let db = TestDb::new().await;
    db.client.batch_execute(BIG_VIEW).await.unwrap();
    small_table(&db, 100).await;
    let directory = temp_dir("telemetry-jobs");
    let config = format!(
        "[jobs]\ndirectory = {:?}\nbatch_rows = 10000\npoll_interval = \"100ms\"\n\n\
         [[datasets]]\nname = \"big\"\ntable = \"big\"\nkey = \"id\"\n\n\
         [[datasets]]\nname = \"small\"\ntable = \"small\"\nkey = \"id\"\n",
        directory.display().to_string()
    );
    let server = ServerProcess::start(&db, &config).await;
    let base = server.base.clone();

    let done = create_ok(&base, json!({ "dataset": "small" })).await;
    wait_until(Duration::from_secs(20), || async {
        status(&base, &done).await["status"] == "completed"
    })
    .await;

    // A job that runs until cancelled: while its batch runs, its backend is named after it.
    let endless = create_ok(&base, json!({ "dataset": "big" })).await;
    wait_until(Duration::from_secs(60), || db.job_batch_running(&endless)).await;
    let cancelled = reqwest::Client::new()
        .delete(format!("http://{base}/v1/exports/{endless}"))
        .send()
        .await
        .unwrap();
    assert!(cancelled.status().is_success());

    // Runs by outcome, rows, and the job table's counts (refreshed every few seconds).
    wait_until(Duration::from_secs(20), || async {
        let text = scrape(&base).await;
        let get = |name: &str, labels: &[(&str, &str)]| metric(&text, name, labels).unwrap_or(0.0);
        get("pgspout_job_runs_total", &[("outcome", "completed")]) == 1.0
            && get("pgspout_job_runs_total", &[("outcome", "cancelled")]) == 1.0
            && get("pgspout_job_rows_total", &[]) >= 100.0
            && get("pgspout_jobs", &[("status", "completed")]) == 1.0
            && get("pgspout_jobs", &[("status", "cancelled")]) == 1.0
            && get("pgspout_jobs", &[("status", "running")]) == 0.0
    })
    .await;
    let _ = std::fs::remove_dir_all(&directory);
}

#[tokio::test]
async fn json_logs_parse_with_jq_carry_the_request_id_and_no_secret() {
    let db = TestDb::new().await;
    small_table(&db, 100).await;
    let dir = temp_dir("telemetry-logs");
    let log = dir.join("pgspout.log");
    let config = "[[datasets]]\nname = \"small\"\ntable = \"small\"\nkey = \"id\"\n";
    let server = ServerProcess::start_with(
        &db,
        config,
        &[("PGSPOUT_LOG__FORMAT", "json"), ("RUST_LOG", "info")],
        std::fs::File::create(&log).unwrap(),
    )
    .await;
    let token = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LWNsYWltcw.sekret-signature-4711";
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client = reqwest::Client::new();
    let response = client
        .get(format!("http://{}/v1/datasets/small/rows?id=gt.50", server.base))
        .header("Authorization", format!("Bearer {token}"))
        .header("Cookie", format!("access_token={token}"))
        .header("X-Request-Id", "log-test-1")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    let body = response.bytes().await.unwrap();
    let failing = client
        .get(format!(
            "http://{}/v1/datasets/small/rows?id=eq.notanumber",
            server.base
        ))
        .header("X-Request-Id", "log-test-2")
        .send()
        .await
        .unwrap();
    assert_eq!(failing.status(), 400);

    // The access line is written when the response has ended.
    let lines = wait_for(Duration::from_secs(60), || async {
        let text = std::fs::read_to_string(&log).unwrap();
        text.contains("log-test-2").then_some(text)
    })
    .await;
    drop(server);

    // Every line is one JSON object for jq.
    let jq = std::process::Command::new("jq")
        .args([
            "-c",
            "select(.request_id == \"log-test-1\" or .span.request_id == \"log-test-1\")",
        ])
        .arg(&log)
        .output()
        .expect("jq runs");
    assert!(jq.status.success(), "{}", String::from_utf8_lossy(&jq.stderr));
    let mine: Vec<Value> = String::from_utf8(jq.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let access = mine
        .iter()
        .find(|l| l["target"] == "pgspout::access")
        .unwrap_or_else(|| panic!("no access line in {mine:?}"));
    assert_eq!(access["method"], "GET");
    assert_eq!(access["route"], "/v1/datasets/{name}/rows");
    assert_eq!(access["status"], 200);
    assert_eq!(access["rows"], 50);
    assert_eq!(access["bytes"], body.len());
    assert_eq!(access["outcome"], "completed");
    assert!(access["millis"].is_u64());
    let ended = mine
        .iter()
        .find(|l| l["message"] == "export ended")
        .unwrap_or_else(|| panic!("no export line in {mine:?}"));
    assert_eq!(ended["span"]["request_id"], "log-test-1");
    assert_eq!(ended["span"]["trace_id"], trace);
    assert_eq!(ended["rows"], 50);
    assert!(lines.contains("\"request_id\":\"log-test-2\"") && lines.contains("\"status\":400"));

    // No token, claim or password anywhere.
    let password = std::env::var("PGPASSWORD").unwrap_or_default();
    for secret in [token, "sekret-signature-4711", "c2VjcmV0LWNsYWltcw", password.as_str()] {
        if !secret.is_empty() {
            assert!(!lines.contains(secret), "the log holds a secret: {secret}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A real Prometheus scraping `target` every second; killed when dropped.
struct Prometheus {
    child: std::process::Child,
    base: String,
    dir: std::path::PathBuf,
}

impl Prometheus {
    async fn start(target: &str) -> Prometheus {
        let dir = temp_dir("prometheus");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  \
                 - job_name: pgspout\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = crate::helpers::free_port();
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus runs (scripts/setup.sh installs Debian's package)");
        let base = format!("http://127.0.0.1:{port}");
        let ready = format!("{base}/-/ready");
        wait_until(Duration::from_secs(30), || async {
            reqwest::get(&ready).await.is_ok_and(|r| r.status() == 200)
        })
        .await;
        Prometheus { child, base, dir }
    }

    /// The value of an instant PromQL query with one result, once it has one.
    async fn query(&self, promql: &str) -> Option<f64> {
        let response: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", promql)])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        assert_eq!(response["status"], "success", "{response}");
        response["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_rows_of_a_million_row_export() {
    let db = TestDb::new().await;
    db.client
        .batch_execute(
            "CREATE TABLE million (id int PRIMARY KEY); INSERT INTO million SELECT generate_series(1, 1000000)",
        )
        .await
        .unwrap();
    let config = "[[datasets]]\nname = \"million\"\ntable = \"million\"\nkey = \"id\"\n";
    let server = ServerProcess::start(&db, config).await;
    let prometheus = Prometheus::start(&server.base).await;

    let response = reqwest::get(format!("http://{}/v1/datasets/million/rows?format=csv", server.base))
        .await
        .unwrap();
    let body = response.bytes().await.unwrap();
    assert_eq!(body.iter().filter(|b| **b == b'\n').count(), 1_000_001);

    let rows = r#"pgspout_export_rows_total{dataset="million",format="csv"}"#;
    let scraped = wait_for(Duration::from_secs(30), || async {
        prometheus.query(rows).await.filter(|v| *v == 1_000_000.0)
    })
    .await;
    assert_eq!(scraped, 1_000_000.0);
    let completed = r#"pgspout_exports_total{dataset="million",outcome="completed"}"#;
    assert_eq!(prometheus.query(completed).await, Some(1.0));
    let up = prometheus.query(r#"up{job="pgspout"}"#).await;
    assert_eq!(up, Some(1.0));

    // promtool lints the exposition.
    let text = scrape(&server.base).await;
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs");
    use std::io::Write as _;
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}
