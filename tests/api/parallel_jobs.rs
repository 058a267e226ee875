//! Parallel export jobs: parts read on connections sharing one snapshot, joined into the file a serial job
//! writes, each part resuming from its own checkpoint after `kill -9`.
//!
//! Parts are held mid-way by an `ACCESS EXCLUSIVE` lock on their table, taken by the test: each batch is a
//! statement that waits for it, so what the test observes (the backends, a crash) happens while the job is
//! running, whatever the machine's speed.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_postgres::Client;

use crate::helpers::{ServerProcess, TestDb, metric, wait_for};
use crate::jobs::{
    BIG_DATASET, create, create_ok, decompress, digest, download, jobs_config, orders, rows_digest, status, temp_dir,
    wait_completed,
};

/// Waits until `n` part backends of job `id` wait for a lock (the test's), and returns their pids.
async fn parts_waiting(db: &TestDb, id: &str, n: usize) -> Vec<i32> {
    let pattern = format!("pgspout job:{id} part %");
    wait_for(Duration::from_secs(60), || async {
        let rows = db
            .client
            .query(
                "SELECT pid FROM pg_stat_activity WHERE application_name LIKE $1 AND wait_event_type = 'Lock'",
                &[&pattern],
            )
            .await
            .unwrap();
        (rows.len() == n).then(|| rows.iter().map(|r| r.get(0)).collect())
    })
    .await
}

/// Opens a transaction on `locker` holding an `ACCESS EXCLUSIVE` lock on `orders`.
async fn lock_orders(locker: &Client) {
    locker
        .batch_execute("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
}

/// Each part's (rows written, done) as stored.
async fn parts_of(db: &TestDb, id: &str) -> Vec<(i64, bool)> {
    let id: uuid::Uuid = id.parse().unwrap();
    db.client
        .query(
            "SELECT rows_written, done FROM pgspout.export_job_parts WHERE job_id = $1 ORDER BY part",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn a_parallel_job_reads_one_snapshot_on_n_backends_into_the_file_a_serial_job_writes() {
    let db = TestDb::new().await;
    orders(&db, 6000).await;
    db.client.batch_execute(crate::helpers::BIG_VIEW).await.unwrap();
    db.client.batch_execute("ANALYZE orders").await.unwrap();
    let directory = temp_dir("jobs-parallel");
    // One job at a time: the endless `big` job holds the runner while the parallel jobs are queued.
    let config = jobs_config(
        &directory,
        &format!("batch_rows = 500\nmax_running = 1\nmax_parallelism = 3{BIG_DATASET}"),
    );
    let server = ServerProcess::start(&db, &config).await;
    let base = &server.base;

    // What parts cannot be made of is refused before anything is queued.
    for (body, says) in [
        (json!({ "dataset": "orders", "parallelism": 0 }), "at least 1"),
        (json!({ "dataset": "orders", "parallelism": "2" }), "parallelism"),
        (
            json!({ "dataset": "orders", "parallelism": 2, "query": "order=amount" }),
            "key order",
        ),
        (
            json!({ "dataset": "orders", "parallelism": 2, "query": "limit=10" }),
            "limit",
        ),
        (
            json!({ "dataset": "orders", "parallelism": 2, "format": "parquet" }),
            "parquet file cannot be joined",
        ),
    ] {
        let response = create(base, body.clone()).await;
        assert_eq!(response.status(), 400, "{body}");
        let problem: Value = response.json().await.unwrap();
        assert!(problem["detail"].as_str().unwrap().contains(says), "{body}: {problem}");
    }

    let blocker = create_ok(base, json!({ "dataset": "big" })).await;
    wait_for(Duration::from_secs(60), || async {
        (status(base, &blocker).await["status"] == "running").then_some(())
    })
    .await;
    // Asking for more than jobs.max_parallelism gets that many.
    let csv = create_ok(base, json!({ "dataset": "orders", "format": "csv", "parallelism": 8 })).await;
    let gzip = create_ok(
        base,
        json!({ "dataset": "orders", "compression": "gzip", "parallelism": 2, "query": "select=id,note" }),
    )
    .await;
    let locker = db.connect().await;
    lock_orders(&locker).await;
    let cancelled = reqwest::Client::new()
        .delete(format!("http://{base}/v1/exports/{blocker}"))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 200);

    // The csv job's three parts wait for the lock on backends of their own, their snapshot taken: a row
    // committed now is in none of them.
    let pids = parts_waiting(&db, &csv, 3).await;
    eprintln!("figure: part backends {pids:?}");
    locker
        .batch_execute("INSERT INTO orders VALUES (6001, 'late', 1, 'inserted while the job ran'); COMMIT")
        .await
        .unwrap();
    let finished = wait_completed(base, &[csv.clone(), gzip.clone()], Duration::from_secs(120)).await;

    let (csv_status, gzip_status) = (&finished[0], &finished[1]);
    assert_eq!(csv_status["parallelism"], 3, "{csv_status}");
    assert_eq!(csv_status["rows_written"], 6000, "{csv_status}");
    let parts = csv_status["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 3, "{csv_status}");
    let part_rows: Vec<i64> = parts.iter().map(|p| p["rows_written"].as_i64().unwrap()).collect();
    assert!(
        part_rows.iter().all(|&rows| rows > 1000),
        "parts of about equal size: {part_rows:?}"
    );
    assert!(parts.iter().all(|p| p["done"] == true), "{csv_status}");
    let file = download(base, &csv).await;
    assert_eq!(csv_status["bytes_written"], file.len());
    assert_eq!(digest(&file), rows_digest(base, "format=csv&id=lte.6000").await);
    // No part file is left once the parts are joined (they go right after the job completes).
    wait_for(Duration::from_secs(60), || async {
        let parts = std::fs::read_dir(&directory)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".part"))
            .count();
        (parts == 0).then_some(())
    })
    .await;

    // Byte for byte the file of a serial job on the same rows.
    let serial = create_ok(
        base,
        json!({ "dataset": "orders", "format": "csv", "query": "id=lte.6000" }),
    )
    .await;
    wait_completed(base, std::slice::from_ref(&serial), Duration::from_secs(60)).await;
    assert_eq!(download(base, &serial).await, file);

    // The gzip job ran after the insert: its two parts' members decompress to the whole table.
    assert_eq!(gzip_status["parallelism"], 2, "{gzip_status}");
    assert_eq!(gzip_status["rows_written"], 6001, "{gzip_status}");
    let members = download(base, &gzip).await;
    assert_eq!(
        digest(&decompress(&members, "gzip")),
        rows_digest(base, "format=ndjson&select=id,note").await
    );
    drop(server);
    std::fs::remove_dir_all(&directory).unwrap();
}

#[tokio::test]
async fn a_parallel_job_killed_mid_way_resumes_every_part_from_its_checkpoint() {
    let db = TestDb::new().await;
    orders(&db, 30_000).await;
    db.client.batch_execute("ANALYZE orders").await.unwrap();
    let directory = temp_dir("jobs-parallel-crash");
    let config = jobs_config(&directory, "batch_rows = 100\nmax_running = 1\nmax_parallelism = 3");
    let mut server = ServerProcess::start(&db, &config).await;
    let locker = db.connect().await;

    // Every part checkpointed, none finished, then the lock holds them: a part's batches number about 100,
    // and should one finish before the lock is granted after all, the attempt is made again.
    let mut attempt = 0;
    let id = loop {
        attempt += 1;
        assert!(attempt <= 3, "no attempt caught the parts mid-way");
        let id = create_ok(
            &server.base,
            json!({ "dataset": "orders", "format": "csv", "compression": "zstd", "parallelism": 3 }),
        )
        .await;
        wait_for(Duration::from_secs(60), || async {
            let parts = parts_of(&db, &id).await;
            (parts.len() == 3 && parts.iter().all(|(rows, _)| *rows > 0)).then_some(())
        })
        .await;
        lock_orders(&locker).await;
        let parts = parts_of(&db, &id).await;
        if parts.iter().all(|(_, done)| !done) {
            break id;
        }
        locker.batch_execute("COMMIT").await.unwrap();
        wait_completed(&server.base, std::slice::from_ref(&id), Duration::from_secs(60)).await;
    };
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    // Read once nothing can change them; the dead instance's parts still wait for the lock (a backend
    // waiting for a lock does not notice its client has gone).
    let at_kill = parts_of(&db, &id).await;
    eprintln!("figure: kill -9 with parts at {at_kill:?}");
    let unfinished = at_kill.iter().filter(|(_, done)| !done).count();
    assert!(unfinished >= 2, "{at_kill:?}");
    // Released before the restart: an instance starting reads the catalog, which would wait for the lock.
    locker.batch_execute("COMMIT").await.unwrap();
    server = ServerProcess::start(&db, &config).await;
    let done = wait_completed(&server.base, std::slice::from_ref(&id), Duration::from_secs(120)).await;
    assert_eq!(done[0]["rows_written"], 30_000, "{}", done[0]);
    let file = download(&server.base, &id).await;
    assert_eq!(
        digest(&decompress(&file, "zstd")),
        rows_digest(&server.base, "format=csv").await
    );

    // The second run started at the parts' checkpoints, and wrote only the rows after them.
    let run_id: uuid::Uuid = id.parse().unwrap();
    let at_start: i64 = db
        .client
        .query_one(
            "SELECT rows_at_start FROM pgspout.export_job_runs WHERE job_id = $1 ORDER BY run DESC LIMIT 1",
            &[&run_id],
        )
        .await
        .unwrap()
        .get(0);
    let checkpointed: i64 = at_kill.iter().map(|(rows, _)| rows).sum();
    assert_eq!(at_start, checkpointed);
    let written = metric(&server.base, "pgspout_job_rows_total").await;
    assert_eq!(written, 30_000 - checkpointed, "rows written by the second run");
    drop(server);
    std::fs::remove_dir_all(&directory).unwrap();
}
