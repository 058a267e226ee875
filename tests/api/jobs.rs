//! Background export jobs: the API, files equal to `/rows`, range downloads, `kill -9` mid-job, and two
//! instances sharing one database.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{BIG_VIEW, ServerProcess, TestDb, spawn_app, wait_for, wait_until};

/// `n` orders with a few NULLs, quotes and a numeric column.
pub(crate) async fn orders(db: &TestDb, n: i32) {
    db.client
        .batch_execute(&format!(
            "CREATE TABLE orders (id bigint PRIMARY KEY, customer text, amount numeric(12,2), note text); \
             INSERT INTO orders SELECT g, 'customer ' || (g % 1000), (g % 10000) / 7.0, \
               CASE WHEN g % 13 = 0 THEN NULL WHEN g % 7 = 0 THEN 'say \"hi\", ok' ELSE 'n' || g END \
             FROM generate_series(1, {n}) g"
        ))
        .await
        .unwrap();
}

pub(crate) fn jobs_config(directory: &Path, extra: &str) -> String {
    format!(
        "[jobs]\ndirectory = {:?}\nlease = \"6s\"\npoll_interval = \"100ms\"\n{extra}\n\n\
         [[datasets]]\nname = \"orders\"\ntable = \"orders\"\nkey = \"id\"\n",
        directory.display().to_string()
    )
}

/// The `big` dataset (the endless view), for a config's `extra`: jobs on it run until stopped.
pub(crate) const BIG_DATASET: &str = "\n\n[[datasets]]\nname = \"big\"\ntable = \"big\"\nkey = \"id\"";

/// A database with `n` orders and the endless `big` view, and an empty job directory.
pub(crate) async fn orders_and_big(n: i32, label: &str) -> (TestDb, PathBuf) {
    let db = TestDb::new().await;
    orders(&db, n).await;
    db.client.batch_execute(BIG_VIEW).await.unwrap();
    (db, temp_dir(label))
}

/// Whether `directory` holds a file of job `id`.
fn has_file(directory: &Path, id: &str) -> bool {
    std::fs::read_dir(directory)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with(id))
}

pub(crate) fn temp_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pgspout-{label}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub(crate) async fn create(base: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("http://{base}/v1/exports"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

pub(crate) async fn create_ok(base: &str, body: Value) -> String {
    let response = create(base, body).await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["status_url"], location.as_str());
    created["id"].as_str().unwrap().to_owned()
}

pub(crate) async fn status(base: &str, id: &str) -> Value {
    let response = reqwest::get(format!("http://{base}/v1/exports/{id}")).await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

pub(crate) async fn wait_completed(base: &str, ids: &[String], limit: Duration) -> Vec<Value> {
    let mut done = Vec::new();
    for id in ids {
        let status = wait_for(limit, || async {
            let status = status(base, id).await;
            assert_ne!(status["status"], "failed", "{status}");
            (status["status"] == "completed").then_some(status)
        })
        .await;
        done.push(status);
    }
    done
}

/// The decompressed bytes of a file written with `compression`.
pub(crate) fn decompress(bytes: &[u8], compression: &str) -> Vec<u8> {
    let mut out = Vec::new();
    match compression {
        "gzip" => {
            flate2::read::MultiGzDecoder::new(bytes).read_to_end(&mut out).unwrap();
        }
        "zstd" => out = zstd::stream::decode_all(bytes).unwrap(),
        _ => out = bytes.to_vec(),
    }
    out
}

/// SHA-256 and length of a `/rows` body, streamed.
pub(crate) async fn rows_digest(base: &str, query: &str) -> (String, usize) {
    let mut response = reqwest::get(format!("http://{base}/v1/datasets/orders/rows?{query}"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut hasher = Sha256::new();
    let mut length = 0;
    while let Some(chunk) = response.chunk().await.unwrap() {
        length += chunk.len();
        hasher.update(&chunk);
    }
    (format!("{:x}", hasher.finalize()), length)
}

pub(crate) async fn download(base: &str, id: &str) -> Vec<u8> {
    let response = reqwest::get(format!("http://{base}/v1/exports/{id}/download"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap().to_vec()
}

pub(crate) fn digest(bytes: &[u8]) -> (String, usize) {
    (format!("{:x}", Sha256::digest(bytes)), bytes.len())
}

#[tokio::test]
async fn export_jobs_write_files_equal_to_rows_and_serve_them_with_ranges() {
    let (db, directory) = orders_and_big(20_000, "jobs-api").await;
    let server = ServerProcess::start(
        &db,
        &jobs_config(
            &directory,
            &format!("batch_rows = 3000{BIG_DATASET}\n\n[query]\naggregates = true"),
        ),
    )
    .await;
    let base = &server.base;

    let cases = [
        ("ndjson", "identity", ""),
        ("csv", "gzip", "amount=gt.500&select=id,amount,note&order=amount.desc"),
        ("ndjson", "zstd", "customer=like.customer 1*&limit=1234"),
        // A summary: written in one statement (it has no key to resume by).
        (
            "csv",
            "gzip",
            "select=customer,total:amount.sum(),count()&amount=gt.100&order=total.desc",
        ),
    ];
    let mut ids = Vec::new();
    for (format, compression, query) in cases {
        ids.push(
            create_ok(
                base,
                json!({ "dataset": "orders", "format": format, "compression": compression, "query": query }),
            )
            .await,
        );
    }
    let finished = wait_completed(base, &ids, Duration::from_secs(60)).await;
    for ((format, compression, query), (id, status)) in cases.iter().zip(ids.iter().zip(&finished)) {
        let file = download(base, id).await;
        assert_eq!(status["bytes_written"], file.len(), "{status}");
        let expected = rows_digest(base, &format!("format={format}&{query}")).await;
        assert_eq!(
            digest(&decompress(&file, compression)),
            expected,
            "{format} {compression} {query}"
        );
        assert_eq!(status["download_url"], format!("/v1/exports/{id}/download"));
        assert_eq!(status["last_key"].is_string(), !query.contains("()"), "{status}");
        assert!(status["finished_at"].is_string() && status["created_at"].is_string());
    }
    assert_eq!(finished[0]["rows_written"], 20_000);
    assert_eq!(finished[2]["rows_written"], 1234);

    // Ranges: exact bytes, 206, and a `curl -C -` resume equal to the whole file.
    let id = &ids[1];
    let whole = download(base, id).await;
    let url = format!("http://{base}/v1/exports/{id}/download");
    let client = reqwest::Client::new();
    let head = client.get(&url).send().await.unwrap();
    assert_eq!(head.headers()["content-length"], whole.len().to_string().as_str());
    assert_eq!(head.headers()["content-type"], "application/gzip");
    assert!(head.headers().contains_key("etag"));
    assert_eq!(head.headers()["accept-ranges"], "bytes");
    let real_head = client.head(&url).send().await.unwrap();
    assert_eq!(real_head.status(), 200);
    assert_eq!(real_head.headers()["content-length"], whole.len().to_string().as_str());
    assert_eq!(real_head.headers()["etag"], head.headers()["etag"]);
    for (range, slice) in [
        ("bytes=0-99", &whole[..100]),
        ("bytes=100-", &whole[100..]),
        ("bytes=-50", &whole[whole.len() - 50..]),
    ] {
        let response = client.get(&url).header("Range", range).send().await.unwrap();
        assert_eq!(response.status(), 206, "{range}");
        assert_eq!(&response.bytes().await.unwrap()[..], slice, "{range}");
    }
    // If-None-Match: 304. If-Range: the range while the validator names this file, else all of it.
    let etag = head.headers()["etag"].to_str().unwrap().to_owned();
    let modified = head.headers()["last-modified"].to_str().unwrap().to_owned();
    let unchanged = client.get(&url).header("If-None-Match", &etag).send().await.unwrap();
    assert_eq!(unchanged.status(), 304);
    for (validator, status) in [
        (etag.as_str(), 206),
        (modified.as_str(), 206),
        ("\"another-version\"", 200),
        (&format!("W/{etag}"), 200),
        ("Thu, 01 Jan 1970 00:00:00 GMT", 200),
        ("not a validator", 200),
    ] {
        let response = client
            .get(&url)
            .header("Range", "bytes=100-199")
            .header("If-Range", validator)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "If-Range: {validator}");
        let expected = if status == 206 { &whole[100..200] } else { &whole[..] };
        if status == 200 {
            assert_eq!(response.headers()["content-length"], whole.len().to_string().as_str());
            assert_eq!(response.headers()["etag"], etag.as_str());
            assert_eq!(response.headers()["content-type"], "application/gzip");
        }
        assert_eq!(&response.bytes().await.unwrap()[..], expected, "If-Range: {validator}");
    }
    let partial = directory.join("partial.gz");
    let cut = std::process::Command::new("curl")
        .args(["-sS", "-r", "0-999", "-o", partial.to_str().unwrap(), &url])
        .status()
        .unwrap();
    assert!(cut.success());
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), 1000);
    let resumed = std::process::Command::new("curl")
        .args(["-sS", "-f", "-C", "-", "-o", partial.to_str().unwrap(), &url])
        .status()
        .unwrap();
    assert!(resumed.success());
    assert_eq!(
        std::fs::read(&partial).unwrap(),
        whole,
        "a resumed download equals the file"
    );

    // A long job: 409 on download while it runs; DELETE cancels it; DELETE again deletes it.
    let long = create_ok(base, json!({ "dataset": "big" })).await;
    wait_for(Duration::from_secs(60), || async {
        (status(base, &long).await["status"] == "running").then_some(())
    })
    .await;
    let early = reqwest::get(format!("http://{base}/v1/exports/{long}/download"))
        .await
        .unwrap();
    assert_eq!(early.status(), 409);
    assert_eq!(early.headers()["content-type"], "application/problem+json");
    assert!(early.text().await.unwrap().contains("running"));
    let cancel = client
        .delete(format!("http://{base}/v1/exports/{long}"))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 200);
    assert_eq!(cancel.json::<Value>().await.unwrap()["status"], "cancelled");
    wait_for(Duration::from_secs(60), || async {
        (!has_file(&directory, &long)).then_some(())
    })
    .await;
    let gone = client
        .delete(format!("http://{base}/v1/exports/{long}"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 204);
    let missing = reqwest::get(format!("http://{base}/v1/exports/{long}")).await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["content-type"], "application/problem+json");

    // Bad requests are 400 problem+json and queue nothing.
    for (body, expected) in [
        (json!({ "dataset": "nope" }), "no dataset"),
        (json!({ "dataset": "orders", "format": "xml" }), "xml"),
        (json!({ "dataset": "orders", "compression": "br" }), "resumable"),
        (json!({ "dataset": "orders", "compression": "lz4" }), "compression"),
        (json!({ "dataset": "orders", "query": "amount=gt.cheap" }), "amount"),
        (json!({ "dataset": "orders", "query": "colour=eq.red" }), "colour"),
        (json!({ "dataset": "orders", "query": "format=csv" }), "format"),
        (json!({ "dataset": "orders", "query": "select=note.sum()" }), "text"),
        (json!({ "dataset": "orders", "nope": 1 }), "nope"),
        (json!({ "dataset": "orders", "query": null }), "null"),
        (json!(["orders"]), "JSON object"),
    ] {
        let response = create(base, body.clone()).await;
        assert_eq!(response.status(), 400, "{body}");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        let text = response.text().await.unwrap();
        assert!(text.contains(expected), "{body}: {text}");
    }
    let queued: i64 = db
        .client
        .query_one("SELECT count(*) FROM pgspout.export_jobs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(queued, cases.len() as i64, "only the good jobs remain");

    // DELETE of a completed job removes it and its file.
    let done = &ids[0];
    assert!(has_file(&directory, done));
    let deleted = client
        .delete(format!("http://{base}/v1/exports/{done}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert!(!has_file(&directory, done), "the file goes with the job");
    let download = reqwest::get(format!("http://{base}/v1/exports/{done}/download"))
        .await
        .unwrap();
    assert_eq!(download.status(), 404);
    let unknown = reqwest::get(format!("http://{base}/v1/exports/{}", uuid::Uuid::new_v4()))
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    drop(server);
    std::fs::remove_dir_all(&directory).unwrap();
}

#[tokio::test]
async fn an_idempotency_key_creates_one_export_however_often_or_concurrently_it_is_sent() {
    let (db, directory) = orders_and_big(100, "jobs-idempotency").await;
    let server = ServerProcess::start(&db, &jobs_config(&directory, "")).await;
    let base = &server.base;
    let client = reqwest::Client::new();
    let post = |key: &'static str, query: &'static str| {
        let request = client
            .post(format!("http://{base}/v1/exports"))
            .header("Idempotency-Key", key)
            .json(&json!({ "dataset": "orders", "format": "csv", "query": query }));
        async move { request.send().await.unwrap() }
    };
    let first = post("\"key-1\"", "id=lte.10").await;
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let id = first.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    // The same key and request, quoted (a Structured Fields string) or bare: the same export.
    for key in ["\"key-1\"", "key-1"] {
        let again = post(key, "id=lte.10").await;
        assert_eq!(again.status(), 202);
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        assert_eq!(again.headers()["location"], format!("/v1/exports/{id}").as_str());
        assert_eq!(again.json::<Value>().await.unwrap()["id"], id.as_str());
    }
    // The same key for another request: 422, and nothing queued.
    let other = post("key-1", "id=lte.20").await;
    assert_eq!(other.status(), 422);
    assert_eq!(other.headers()["content-type"], "application/problem+json");
    assert!(other.text().await.unwrap().contains("Idempotency-Key"));
    let long: &'static str = "k".repeat(256).leak();
    for bad in ["\"\"", "\"open", "\"a\\\\b\"", long] {
        assert_eq!(post(bad, "id=lte.10").await.status(), 400, "{bad:?}");
    }
    // Ten at once under a new key: one export.
    let concurrent = futures::future::join_all((0..10).map(|_| post("key-2", "id=lte.30"))).await;
    let mut ids = HashSet::new();
    for response in concurrent {
        assert_eq!(response.status(), 202);
        ids.insert(
            response.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    let jobs: i64 = db
        .client
        .query_one("SELECT count(*) FROM pgspout.export_jobs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(jobs, 2);
    // The key goes with its export: once deleted, the key creates a new one.
    wait_completed(base, std::slice::from_ref(&id), Duration::from_secs(60)).await;
    let deleted = client
        .delete(format!("http://{base}/v1/exports/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let fresh = post("key-1", "id=lte.20").await;
    assert_eq!(fresh.status(), 202);
    assert_ne!(fresh.json::<Value>().await.unwrap()["id"], id.as_str());
}

#[tokio::test]
async fn without_a_job_directory_the_export_api_is_a_clear_404() {
    let db = TestDb::new().await;
    orders(&db, 10).await;
    let app = spawn_app(db, &[("orders", "orders", Some("id"))]).await;
    let response = reqwest::Client::new()
        .post(app.url("/v1/exports"))
        .json(&json!({ "dataset": "orders" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert!(response.text().await.unwrap().contains("jobs.directory"));
}

/// The job's rows written so far, by id.
async fn progress(base: &str, ids: &[String]) -> HashMap<String, i64> {
    let mut rows = HashMap::new();
    for id in ids {
        rows.insert(id.clone(), status(base, id).await["rows_written"].as_i64().unwrap());
    }
    rows
}

#[tokio::test]
async fn jobs_survive_kill_9_twice_and_their_files_equal_a_direct_export() {
    let db = TestDb::new().await;
    orders(&db, 1_000_000).await;
    let directory = temp_dir("jobs-crash");
    let config = jobs_config(&directory, "batch_rows = 50000\nmax_running = 3");
    let mut server = ServerProcess::start(&db, &config).await;
    let cases = [("ndjson", "identity"), ("csv", "gzip"), ("ndjson", "zstd")];
    let mut ids = Vec::new();
    for (format, compression) in cases {
        ids.push(
            create_ok(
                &server.base,
                json!({ "dataset": "orders", "format": format, "compression": compression }),
            )
            .await,
        );
    }
    let mut kills = 0;
    let mut last = progress(&server.base, &ids).await;
    while kills < 2 {
        // Wait for new checkpoints since the last start, then kill mid-job.
        let base = server.base.clone();
        let before = last.clone();
        last = wait_for(Duration::from_secs(120), || async {
            let now = progress(&base, &ids).await;
            // Every job checkpointed since the last start (or finished), and some job is still mid-way.
            let advanced = ids.iter().all(|id| now[id] > before[id] || now[id] == 1_000_000);
            let unfinished = now.values().any(|rows| *rows < 1_000_000);
            (advanced && unfinished).then_some(now)
        })
        .await;
        eprintln!("figure: kill -9 with rows written {last:?}");
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        kills += 1;
        server = ServerProcess::start(&db, &config).await;
    }
    let started = Instant::now();
    let finished = wait_completed(&server.base, &ids, Duration::from_secs(300)).await;
    eprintln!(
        "figure: all jobs completed {:?} after the last restart",
        started.elapsed()
    );
    for ((format, compression), (id, status)) in cases.iter().zip(ids.iter().zip(&finished)) {
        assert_eq!(status["rows_written"], 1_000_000, "{status}");
        let file = download(&server.base, id).await;
        let expected = rows_digest(&server.base, &format!("format={format}")).await;
        assert_eq!(
            digest(&decompress(&file, compression)),
            expected,
            "{format} {compression}"
        );
        eprintln!(
            "figure: {format}+{compression}: {} runs, {} bytes",
            status["attempts"],
            file.len()
        );
    }
    let resumed: i64 = db
        .client
        .query_one(
            "SELECT count(DISTINCT job_id) FROM pgspout.export_job_runs WHERE rows_at_start > 0",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(resumed, 3, "every job resumed from a checkpoint at least once");
    drop(server);
    std::fs::remove_dir_all(&directory).unwrap();
}

#[tokio::test]
async fn two_instances_on_one_database_run_every_job_exactly_once() {
    let db = TestDb::new().await;
    orders(&db, 60_000).await;
    let directory = temp_dir("jobs-pair");
    let config = jobs_config(&directory, "batch_rows = 5000\nmax_running = 2");
    let first = ServerProcess::start(&db, &config).await;
    let second = ServerProcess::start(&db, &config).await;
    let mut ids = Vec::new();
    for i in 0..8 {
        let base = if i % 2 == 0 { &first.base } else { &second.base };
        let query = format!("id=gt.{}", i * 1000);
        ids.push(
            create_ok(
                base,
                json!({ "dataset": "orders", "compression": "gzip", "query": query }),
            )
            .await,
        );
    }
    let finished = wait_completed(&first.base, &ids, Duration::from_secs(120)).await;
    for (i, (id, status)) in ids.iter().zip(&finished).enumerate() {
        assert_eq!(status["attempts"], 1, "{status}");
        let file = download(&second.base, id).await;
        let expected = rows_digest(&first.base, &format!("id=gt.{}", i * 1000)).await;
        assert_eq!(digest(&decompress(&file, "gzip")), expected);
    }
    let runs = db
        .client
        .query(
            "SELECT job_id::text, owner::text, outcome FROM pgspout.export_job_runs",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(runs.len(), 8, "one run per job");
    let jobs: HashSet<String> = runs.iter().map(|r| r.get(0)).collect();
    assert_eq!(jobs.len(), 8);
    assert!(
        runs.iter()
            .all(|r| r.get::<_, Option<String>>(2).as_deref() == Some("completed"))
    );
    let owners: HashSet<String> = runs.iter().map(|r| r.get(1)).collect();
    eprintln!("figure: 8 jobs ran once each, on {} instances", owners.len());
    assert_eq!(owners.len(), 2, "both instances took jobs");
    drop((first, second));
    std::fs::remove_dir_all(&directory).unwrap();
}

#[tokio::test]
async fn shutdown_requeues_a_running_job_a_failing_job_says_why_and_finished_jobs_expire() {
    let (db, directory) = orders_and_big(100, "jobs-life").await;
    let config = jobs_config(
        &directory,
        &format!("retention = \"1s\"\nbatch_rows = 2000{BIG_DATASET}"),
    );
    let server = ServerProcess::start(&db, &config).await;
    let base = server.base.clone();

    // SIGTERM: the running job goes back to the queue at once, not after its lease.
    let long = create_ok(&base, json!({ "dataset": "big" })).await;
    wait_until(Duration::from_secs(60), || db.job_batch_running(&long)).await;
    let signalled = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());
    let mut server = server;
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "pgspout exited with {exit}");
    let row = db
        .client
        .query_one(
            "SELECT status, error, lease_owner IS NULL FROM pgspout.export_jobs",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "queued");
    assert!(row.get::<_, String>(1).contains("shut down"));
    assert!(row.get::<_, bool>(2), "the lease is released");

    // A permanent error fails the job with the reason.
    let server = ServerProcess::start(&db, &config).await;
    let base = server.base.clone();
    wait_for(Duration::from_secs(60), || async {
        (status(&base, &long).await["status"] == "running").then_some(())
    })
    .await;
    db.client.batch_execute("DROP VIEW big").await.unwrap();
    let failed = wait_for(Duration::from_secs(20), || async {
        let status = status(&base, &long).await;
        (status["status"] == "failed").then_some(status)
    })
    .await;
    assert!(failed["error"].as_str().unwrap().contains("big"), "{failed}");

    // A completed job and its file are gone after the retention.
    let short = create_ok(&base, json!({ "dataset": "orders" })).await;
    wait_completed(&base, std::slice::from_ref(&short), Duration::from_secs(60)).await;
    wait_for(Duration::from_secs(60), || async {
        let response = reqwest::get(format!("http://{base}/v1/exports/{short}")).await.unwrap();
        (response.status() == 404).then_some(())
    })
    .await;
    wait_for(Duration::from_secs(60), || async {
        std::fs::read_dir(&directory).unwrap().next().is_none().then_some(())
    })
    .await;
    drop(server);
    std::fs::remove_dir_all(&directory).unwrap();
}

#[tokio::test]
async fn a_full_queue_refuses_new_jobs_with_503_and_retry_after() {
    let (db, directory) = orders_and_big(10, "jobs-queue").await;
    let config = jobs_config(&directory, &format!("max_running = 1\nmax_queued = 1{BIG_DATASET}"));
    let server = ServerProcess::start(&db, &config).await;
    let base = server.base.clone();
    let running = create_ok(&base, json!({ "dataset": "big" })).await;
    wait_for(Duration::from_secs(60), || async {
        (status(&base, &running).await["status"] == "running").then_some(())
    })
    .await;
    let queued = create_ok(&base, json!({ "dataset": "big" })).await;
    assert_eq!(
        status(&base, &queued).await["status"],
        "queued",
        "one job runs at a time here"
    );
    let refused = create(&base, json!({ "dataset": "orders" })).await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    assert!(refused.text().await.unwrap().contains("queue is full"));
    drop(server);
    std::fs::remove_dir_all(&directory).unwrap();
}

#[tokio::test]
async fn a_job_whose_batches_stall_is_retried_then_failed_never_left_running() {
    let db = TestDb::new().await;
    db.client
        .batch_execute(
            "CREATE VIEW slow AS SELECT g AS id, pg_sleep(0.01)::text AS pause \
             FROM (SELECT generate_series(1, 100000) AS g) AS series",
        )
        .await
        .unwrap();
    let directory = temp_dir("jobs-stall");
    let server = ServerProcess::start(
        &db,
        &format!(
            "[jobs]\ndirectory = {:?}\nlease = \"6s\"\npoll_interval = \"100ms\"\nbatch_timeout = \"1s\"\n\
             max_attempts = 2\n\n[[datasets]]\nname = \"slow\"\ntable = \"slow\"\nkey = \"id\"\n",
            directory.display().to_string()
        ),
    )
    .await;
    let base = server.base.clone();
    let id = create_ok(&base, json!({ "dataset": "slow" })).await;
    let failed = wait_for(Duration::from_secs(20), || async {
        let status = status(&base, &id).await;
        (status["status"] == "failed").then_some(status)
    })
    .await;
    assert_eq!(failed["attempts"], 2, "{failed}");
    assert!(failed["error"].as_str().unwrap().contains("batch_timeout"), "{failed}");
    // The stuck query was cancelled, not left running in Postgres.
    wait_for(Duration::from_secs(30), || async {
        db.pgspout_backends()
            .await
            .iter()
            .all(|b| b.1 != "active")
            .then_some(())
    })
    .await;
    drop(server);
    std::fs::remove_dir_all(&directory).unwrap();
}

#[tokio::test]
async fn a_status_a_newer_version_wrote_is_shown_as_it_is_and_breaks_nothing() {
    let db = TestDb::new().await;
    orders(&db, 10).await;
    let directory = temp_dir("jobs-newer-status");
    let server = ServerProcess::start(&db, &jobs_config(&directory, "")).await;
    let done = create_ok(&server.base, json!({ "dataset": "orders" })).await;
    wait_completed(&server.base, std::slice::from_ref(&done), Duration::from_secs(60)).await;
    // A newer instance (a rolling upgrade) widened the statuses and wrote one this version does not know.
    db.client
        .batch_execute(&format!(
            "ALTER TABLE pgspout.export_jobs DROP CONSTRAINT export_jobs_status_check; \
             UPDATE pgspout.export_jobs SET status = 'uploading' WHERE id = '{done}'"
        ))
        .await
        .unwrap();
    let shown = status(&server.base, &done).await;
    assert_eq!(shown["status"], "uploading");
    assert!(shown.get("download_url").is_none(), "{shown}");
    let download = reqwest::get(format!("http://{}/v1/exports/{done}/download", server.base))
        .await
        .unwrap();
    assert_eq!(download.status(), 409);
    let detail: Value = download.json().await.unwrap();
    assert!(detail["detail"].as_str().unwrap().contains("uploading"), "{detail}");
    // The runner, its counts and the other routes go on.
    let next = create_ok(&server.base, json!({ "dataset": "orders" })).await;
    wait_completed(&server.base, std::slice::from_ref(&next), Duration::from_secs(60)).await;
    let metrics = reqwest::get(format!("http://{}/metrics", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("pgspout_jobs{status=\"completed\"}"),
        "the job counts still refresh"
    );
    let _ = std::fs::remove_dir_all(&directory);
}
