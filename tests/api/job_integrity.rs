//! Background jobs never look complete when they are not: keyless datasets, non-unique orders, unreadable
//! checkpoints, exact run records, the queue limit under concurrent requests, datasets another instance serves,
//! and a chunked export whose next batch fails.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{BIG_VIEW, ServerProcess, TestDb, settings, spawn_with, wait_for};
use crate::jobs::{create_ok as create, status, temp_dir};

fn config(directory: &Path, jobs: &str, datasets: &[(&str, &str, Option<&str>)]) -> String {
    let mut text = format!(
        "[jobs]\ndirectory = {:?}\nlease = \"6s\"\npoll_interval = \"100ms\"\n{jobs}\n",
        directory.display().to_string()
    );
    for (name, table, key) in datasets {
        text.push_str(&format!("\n[[datasets]]\nname = \"{name}\"\ntable = \"{table}\"\n"));
        if let Some(key) = key {
            text.push_str(&format!("key = \"{key}\"\n"));
        }
    }
    text
}

async fn wait_status(base: &str, id: &str, wanted: &str, limit: Duration) -> Value {
    wait_for(limit, || async {
        let status = status(base, id).await;
        (status["status"] == wanted).then_some(status)
    })
    .await
}

async fn digest_of(url: String) -> String {
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status(), 200);
    format!("{:x}", Sha256::digest(response.bytes().await.unwrap()))
}

/// Each run of a job: (rows_at_start, outcome); every run must be closed.
async fn runs(db: &TestDb, id: &str) -> Vec<(i64, String)> {
    let rows = db
        .client
        .query(
            "SELECT rows_at_start, outcome FROM pgspout.export_job_runs WHERE job_id = $1::text::uuid ORDER BY run",
            &[&id],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| (r.get(0), r.get::<_, Option<String>>(1).expect("every run is closed")))
        .collect()
}

#[tokio::test]
async fn a_keyless_job_runs_in_one_statement_and_restarts_from_its_first_row_after_a_crash() {
    let db = TestDb::new().await;
    // 120,000 rows, slow enough to be killed mid-way: the first version of jobs stopped after one batch.
    db.client
        .batch_execute(
            "CREATE VIEW keyless AS SELECT g AS n, 'row ' || g AS label, \
               CASE WHEN g % 2000 = 0 THEN pg_sleep(0.1)::text END AS pause \
             FROM (SELECT generate_series(1, 120000) AS g) AS series",
        )
        .await
        .unwrap();
    let directory = temp_dir("jobs-keyless");
    let config = config(&directory, "batch_rows = 5000", &[("keyless", "keyless", None)]);
    let server = ServerProcess::start(&db, &config).await;
    let id = create(&server.base, json!({ "dataset": "keyless", "compression": "gzip" })).await;
    let running = wait_for(Duration::from_secs(20), || async {
        let status = status(&server.base, &id).await;
        (status["rows_written"].as_i64().unwrap() >= 5000).then_some(status)
    })
    .await;
    assert_eq!(running["resumable"], false, "{running}");
    drop(server); // kill -9 mid-way

    let server = ServerProcess::start(&db, &config).await;
    let done = wait_status(&server.base, &id, "completed", Duration::from_secs(60)).await;
    assert_eq!(done["rows_written"], 120_000, "{done}");
    assert_eq!(done["resumable"], false);
    assert_eq!(done["restarts"], 1, "the status says the job started over: {done}");
    let file = reqwest::get(format!("http://{}/v1/exports/{id}/download", server.base))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(&file[..]), &mut plain).unwrap();
    let direct = reqwest::get(format!("http://{}/v1/datasets/keyless/rows", server.base))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(plain.len(), direct.len());
    assert!(plain == direct, "the job's file equals a direct export, every row once");
    // The killed run is closed as such when its lease ran out; the second started over from row zero.
    let runs = runs(&db, &id).await;
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0], (0, "lease_lost".to_owned()));
    assert_eq!(runs[1].1, "completed");
    println!(
        "figure: keyless job: killed at {} rows, restarted from its first row, completed 120000 rows equal to /rows",
        runs[1].0
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&directory);
}

#[tokio::test]
async fn a_job_ordered_by_non_unique_columns_neither_loses_nor_repeats_rows_at_batch_boundaries() {
    let db = TestDb::new().await;
    db.client
        .batch_execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, note text); \
             INSERT INTO orders SELECT g, 'customer ' || (g % 13), CASE WHEN g % 5 = 0 THEN NULL ELSE 'n' || (g % 4) END \
             FROM generate_series(1, 400) g",
        )
        .await
        .unwrap();
    let directory = temp_dir("jobs-ties");
    let server = ServerProcess::start(
        &db,
        &config(&directory, "batch_rows = 7", &[("orders", "orders", Some("id"))]),
    )
    .await;
    for query in [
        "order=customer",
        "order=note.desc,customer",
        "order=note.nullsfirst&limit=333",
    ] {
        let id = create(&server.base, json!({ "dataset": "orders", "query": query })).await;
        wait_status(&server.base, &id, "completed", Duration::from_secs(30)).await;
        let file = digest_of(format!("http://{}/v1/exports/{id}/download", server.base)).await;
        let direct = digest_of(format!("http://{}/v1/datasets/orders/rows?{query}", server.base)).await;
        assert_eq!(file, direct, "{query}");
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&directory);
}

#[tokio::test]
async fn a_checkpoint_that_cannot_be_read_back_fails_the_job_rather_than_restarting_it() {
    let db = TestDb::new().await;
    // A keyed table, so each batch is an index range scan (a batch of the ten-million-row view sorts the whole
    // view, which took over 20 s on a loaded machine); a thousand small batches, each a checkpoint, keep the
    // job running well past the first one.
    db.client
        .batch_execute(
            "CREATE TABLE steps (id int PRIMARY KEY, label text); \
             INSERT INTO steps SELECT g, 'step ' || g FROM generate_series(1, 100000) g",
        )
        .await
        .unwrap();
    let directory = temp_dir("jobs-checkpoint");
    let config = config(&directory, "batch_rows = 100", &[("steps", "steps", Some("id"))]);
    let server = ServerProcess::start(&db, &config).await;
    let id = create(&server.base, json!({ "dataset": "steps" })).await;
    let first = wait_for(Duration::from_secs(60), || async {
        let status = status(&server.base, &id).await;
        (status["rows_written"].as_i64().unwrap() > 0).then_some(status)
    })
    .await;
    assert_eq!(
        first["status"], "running",
        "the job is still running at its first checkpoint: {first}"
    );
    drop(server);
    db.client
        .execute(
            "UPDATE pgspout.export_jobs SET position = '{\"not\": \"a position\"}' WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap();
    let server = ServerProcess::start(&db, &config).await;
    // The killed run's lease (6 s) runs out first.
    let failed = wait_status(&server.base, &id, "failed", Duration::from_secs(60)).await;
    assert!(
        failed["error"].as_str().unwrap().contains("cannot be read back"),
        "{failed}"
    );
    assert_eq!(runs(&db, &id).await.last().unwrap().1, "failed");
    drop(server);
    let _ = std::fs::remove_dir_all(&directory);
}

#[tokio::test]
async fn the_queue_limit_holds_under_fifty_concurrent_posts_and_cancelled_runs_are_closed() {
    let db = TestDb::new().await;
    db.client.batch_execute(BIG_VIEW).await.unwrap();
    let directory = temp_dir("jobs-queue-race");
    let server = ServerProcess::start(
        &db,
        &config(
            &directory,
            "max_running = 1\nmax_queued = 10",
            &[("big", "big", Some("id"))],
        ),
    )
    .await;
    let running = create(&server.base, json!({ "dataset": "big" })).await;
    wait_status(&server.base, &running, "running", Duration::from_secs(60)).await;
    // One client for the fifty, as a real one would be: fifty clients built one after another (each loading the
    // system's root certificates) kept the first connections idle for seconds on a loaded machine, past actix's
    // 5 s wait for a request head, and the server's 408 on an idle connection failed the client.
    let client = reqwest::Client::new();
    let posts = (0..50).map(|_| {
        client
            .post(format!("http://{}/v1/exports", server.base))
            .json(&json!({ "dataset": "big" }))
            .send()
    });
    let statuses: Vec<u16> = futures::future::join_all(posts)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    let accepted = statuses.iter().filter(|s| **s == 202).count();
    assert_eq!(accepted, 10, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 202 || *s == 503), "{statuses:?}");
    let queued: i64 = db
        .client
        .query_one("SELECT count(*) FROM pgspout.export_jobs WHERE status = 'queued'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(queued, 10);
    // Cancelling the running job closes its run as cancelled, in the same statement.
    let response = reqwest::Client::new()
        .delete(format!("http://{}/v1/exports/{running}", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(runs(&db, &running).await, vec![(0, "cancelled".to_owned())]);
    drop(server);
    let _ = std::fs::remove_dir_all(&directory);
}

#[tokio::test]
async fn a_job_for_a_dataset_this_instance_does_not_serve_waits_for_an_instance_that_does() {
    let db = TestDb::new().await;
    db.client
        .batch_execute(
            "CREATE TABLE a (id int PRIMARY KEY); INSERT INTO a SELECT generate_series(1, 10); \
             CREATE TABLE b (id int PRIMARY KEY); INSERT INTO b SELECT generate_series(1, 20)",
        )
        .await
        .unwrap();
    let directory = temp_dir("jobs-rolling");
    let newer = config(&directory, "", &[("a", "a", Some("id")), ("b", "b", Some("id"))]);
    let older = config(&directory, "", &[("a", "a", Some("id"))]);
    // An older instance runs; a newer one (serving `b` too) has queued a job for `b`.
    let old = ServerProcess::start(&db, &older).await;
    db.client
        .batch_execute(
            "INSERT INTO pgspout.export_jobs (id, dataset, format, compression, query) \
             VALUES ('00000000-0000-4000-8000-000000000001', 'b', 'ndjson', 'identity', '')",
        )
        .await
        .unwrap();
    let id = "00000000-0000-4000-8000-000000000001";
    let a = create(&old.base, json!({ "dataset": "a" })).await;
    wait_status(&old.base, &a, "completed", Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiting = status(&old.base, id).await;
    assert_eq!(waiting["status"], "queued", "{waiting}");
    assert_eq!(waiting["attempts"], 0, "{waiting}");
    let new = ServerProcess::start(&db, &newer).await;
    let done = wait_status(&new.base, id, "completed", Duration::from_secs(60)).await;
    assert_eq!(done["rows_written"], 20);
    drop((old, new));
    let _ = std::fs::remove_dir_all(&directory);
}

#[tokio::test]
async fn a_chunked_export_whose_next_batch_fails_is_cut_not_ended() {
    let db = TestDb::new().await;
    db.client
        .batch_execute(
            "CREATE TABLE wide (id int PRIMARY KEY, pad text); \
             INSERT INTO wide SELECT g, repeat('x', 500) FROM generate_series(1, 20000) g",
        )
        .await
        .unwrap();
    let mut settings = settings(&db, &[("wide", "wide", Some("id"))]);
    settings.export.batch_rows = 100;
    let app = spawn_with(db, settings).await;
    let mut response = app.raw("/v1/datasets/wide/rows?consistency=chunked", &[]).await;
    assert_eq!(response.status, 200);
    response.next_chunk().await.unwrap().unwrap();
    // The DROP waits for the current batch's transaction, then the next batch finds no table.
    let (dropped, (chunks, terminated)) =
        tokio::join!(app.db.client.batch_execute("DROP TABLE wide"), response.read_to_end());
    dropped.unwrap();
    assert!(!terminated, "a failed batch must cut the transfer, never end it");
    let lines = chunks.concat().iter().filter(|b| **b == b'\n').count();
    assert!(lines < 20_000, "{lines} rows");
}
