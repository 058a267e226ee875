//! Read replicas: a real streaming replica (`pg_basebackup -R`) of a private primary. Exports, pages and counts
//! run on it; rows appear once replayed; a stopped or lagging replica is skipped (fallback to the primary, or
//! 503); a recovery conflict mid-export aborts the transfer.

use std::time::Duration;

use pgspout::settings::{ReplicaFallback, Settings};

use crate::faults::PrivateCluster;
use crate::helpers::{BIG_VIEW, RawResponse, serve, settings_for, wait_for, wait_until};

/// A primary with `items` (ids 1..=100) and the `big` view, and a replica that has replayed them.
async fn primary_and_replica(replica_options: &[&str]) -> (PrivateCluster, PrivateCluster) {
    let primary = PrivateCluster::create_with(&[]).await;
    primary
        .client()
        .await
        .batch_execute(&format!(
            "CREATE TABLE items (id int PRIMARY KEY, label text);
             INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 100) g;
             ANALYZE items;
             {BIG_VIEW};"
        ))
        .await
        .unwrap();
    let replica = PrivateCluster::replica_of(&primary, replica_options).await;
    replayed(&replica.client().await, "items", 100).await;
    (primary, replica)
}

/// Waits until `table` has `rows` rows on the replica `client` is connected to.
async fn replayed(client: &tokio_postgres::Client, table: &str, rows: i64) {
    let query = format!("SELECT count(*) FROM {table}");
    wait_until(Duration::from_secs(20), || async {
        client
            .query_one(&query, &[])
            .await
            .is_ok_and(|r| r.get::<_, i64>(0) == rows)
    })
    .await;
}

/// Pauses replay on the replica, then inserts item 101 on the primary; returns the replica's client (to
/// resume replay with).
async fn pause_and_insert(primary: &PrivateCluster, replica: &PrivateCluster) -> tokio_postgres::Client {
    let standby = replica.client().await;
    standby.batch_execute("SELECT pg_wal_replay_pause()").await.unwrap();
    primary
        .client()
        .await
        .batch_execute("INSERT INTO items VALUES (101, 'late')")
        .await
        .unwrap();
    standby
}

fn replica_settings(primary: &PrivateCluster, replica: &PrivateCluster, fallback: ReplicaFallback) -> Settings {
    let mut settings = settings_for(
        primary.url(),
        &[("items", "items", Some("id")), ("big", "big", Some("id"))],
    );
    settings.database.replicas = vec![replica.url()];
    settings.database.replica_fallback = fallback;
    settings.database.connect_timeout = Duration::from_secs(1);
    settings
}

/// pgspout's active request backends on `cluster`.
async fn active_exports(cluster: &PrivateCluster) -> i64 {
    cluster
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgspout%' \
             AND application_name NOT IN ('pgspout listener', 'pgspout monitor') AND state = 'active'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

async fn get(address: &str, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(format!("http://{address}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.timeout(Duration::from_secs(20)).send().await.unwrap()
}

/// The number of rows of `items` that `/rows`, `/page` and an exact count each report.
async fn items_seen(address: &str) -> [usize; 3] {
    let rows = get(address, "/v1/datasets/items/rows?format=csv", &[]).await;
    assert_eq!(rows.status(), 200);
    let rows = rows.text().await.unwrap().lines().count() - 1;
    let page: serde_json::Value = get(address, "/v1/datasets/items/page?limit=1000", &[])
        .await
        .json()
        .await
        .unwrap();
    let page = page["rows"].as_array().unwrap().len();
    let counted = get(address, "/v1/datasets/items/rows?limit=0", &[("Prefer", "count=exact")]).await;
    let count = counted.headers()["x-total-count"].to_str().unwrap().parse().unwrap();
    [rows, page, count]
}

#[tokio::test]
async fn exports_pages_and_counts_run_on_the_replica_and_see_rows_once_replayed() {
    let (primary, replica) = primary_and_replica(&[]).await;
    let jobs = std::env::temp_dir().join(format!("pgspout-replica-jobs-{}", primary.port));
    let mut settings = replica_settings(&primary, &replica, ReplicaFallback::Refuse);
    settings.jobs.directory = Some(jobs.clone());
    let address = serve(settings).await;

    // A running export is a backend on the replica, none on the primary.
    let mut running = RawResponse::get(&address, "/v1/datasets/big/rows", &[]).await;
    assert_eq!(running.status, 200);
    assert!(running.next_chunk().await.unwrap().is_some());
    wait_until(Duration::from_secs(30), || async {
        active_exports(&replica).await == 1
    })
    .await;
    assert_eq!(active_exports(&primary).await, 0);
    drop(running);

    // With replay paused, a row inserted on the primary is not seen; once replayed, it is, by all three.
    let standby = pause_and_insert(&primary, &replica).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(items_seen(&address).await, [100, 100, 100]);
    // A background export's batches read the replica too (its job row lives on the primary).
    let id = crate::jobs::create_ok(&address, serde_json::json!({"dataset": "items", "format": "csv"})).await;
    let done = wait_for(Duration::from_secs(20), || async {
        let status = crate::jobs::status(&address, &id).await;
        (status["status"] == "completed").then_some(status)
    })
    .await;
    assert_eq!(done["rows_written"], 100, "{done}");
    // So do a parallel job's parts, and the snapshot they share is exported on the replica too.
    let body = serde_json::json!({"dataset": "items", "format": "csv", "parallelism": 2});
    let parallel = crate::jobs::create_ok(&address, body).await;
    let done = wait_for(Duration::from_secs(20), || async {
        let status = crate::jobs::status(&address, &parallel).await;
        assert_ne!(status["status"], "failed", "{status}");
        (status["status"] == "completed").then_some(status)
    })
    .await;
    assert_eq!(done["rows_written"], 100, "{done}");
    assert_eq!(done["parts"].as_array().map(Vec::len), Some(2), "{done}");
    standby.batch_execute("SELECT pg_wal_replay_resume()").await.unwrap();
    wait_until(Duration::from_secs(60), || async {
        items_seen(&address).await == [101, 101, 101]
    })
    .await;

    let metrics = get(&address, "/metrics", &[]).await.text().await.unwrap();
    let up = format!("pgspout_replica_up{{replica=\"127.0.0.1:{}\"}} 1", replica.port);
    assert!(metrics.contains(&up), "{metrics}");
    assert!(metrics.contains("pgspout_replica_lag_seconds{"), "{metrics}");
    let _ = std::fs::remove_dir_all(&jobs);
}

#[tokio::test]
async fn a_replica_whose_pool_is_busy_hands_the_request_to_the_next_healthy_one() {
    let (primary, replica) = primary_and_replica(&[]).await;
    let mut settings = replica_settings(&primary, &replica, ReplicaFallback::Refuse);
    // The same standby twice, as two replicas with a pool of one connection each.
    settings.database.replicas = vec![
        replica.url(),
        format!("{} application_name=pgspout-second", replica.url()),
    ];
    settings.database.pool_size = 1;
    settings.export.max_concurrent = Some(1);
    // Far longer than `get` waits: a request that queued for the busy pool would fail the test.
    settings.database.acquire_timeout = Duration::from_secs(60);
    let address = serve(settings).await;
    // An export whose client does not read holds one replica's only connection.
    let stalled = RawResponse::get(&address, "/v1/datasets/big/rows", &[]).await;
    assert_eq!(stalled.status, 200);
    // Requests start at each replica in turn; those that start at the busy one go on to the other.
    for _ in 0..4 {
        let response = get(&address, "/v1/datasets/items/page?limit=5", &[]).await;
        assert_eq!(response.status(), 200);
    }
    drop(stalled);
}

#[tokio::test]
async fn with_no_healthy_replica_fallback_reads_the_primary_and_refuse_answers_503() {
    let (primary, replica) = primary_and_replica(&[]).await;
    let lag_limited = |fallback| {
        let mut settings = replica_settings(&primary, &replica, fallback);
        settings.database.replica_max_lag = Duration::from_secs(2);
        settings
    };
    let fallback = serve(lag_limited(ReplicaFallback::Primary)).await;
    let refuse = serve(lag_limited(ReplicaFallback::Refuse)).await;
    let count = |address: String| async move {
        let response = get(&address, "/v1/datasets/items/rows?format=csv", &[]).await;
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").is_some();
        let body = response.text().await.unwrap();
        match status {
            200 => Ok(body.lines().count() - 1),
            _ => Err((status, retry_after, body)),
        }
    };
    assert_eq!(count(refuse.clone()).await, Ok(100));

    // Lagging: replay paused while the primary moves on.
    let standby = pause_and_insert(&primary, &replica).await;
    let refused = wait_for(Duration::from_secs(60), || async { count(refuse.clone()).await.err() }).await;
    assert_eq!((refused.0, refused.1), (503, true));
    assert!(refused.2.contains("urn:pgspout:problem:no-replica"), "{}", refused.2);
    // The fallback reads the primary, which has the new row (once its own monitor saw the lag).
    wait_until(Duration::from_secs(60), || async {
        count(fallback.clone()).await == Ok(101)
    })
    .await;
    standby.batch_execute("SELECT pg_wal_replay_resume()").await.unwrap();
    wait_until(Duration::from_secs(60), || async {
        count(refuse.clone()).await == Ok(101)
    })
    .await;

    // Down.
    drop(standby);
    replica.stop().await;
    let refused = wait_for(Duration::from_secs(60), || async { count(refuse.clone()).await.err() }).await;
    assert_eq!((refused.0, refused.1), (503, true));
    wait_until(Duration::from_secs(60), || async {
        count(fallback.clone()).await == Ok(101)
    })
    .await;

    // `pgspout check` names the replica that is down.
    let dir = std::env::temp_dir().join(format!("pgspout-check-replica-{}", primary.port));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("pgspout.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"{}\"\nreplicas = [\"{}\"]\nconnect_timeout = \"1s\"\n",
            primary.url(),
            replica.url()
        ),
    )
    .unwrap();
    let check = |config: std::path::PathBuf| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pgspout"))
            .args(["check", "--config", config.to_str().unwrap()])
            .env_remove("DATABASE_URL")
            .output()
            .unwrap()
    };
    let output = check(config.clone());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("replica 127.0.0.1:{}: down", replica.port)),
        "{stderr}"
    );

    // Back up: it serves again, and `check` passes.
    replica.start().await;
    wait_until(Duration::from_secs(15), || async {
        count(refuse.clone()).await == Ok(101)
    })
    .await;
    let output = check(config);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&format!("replica 127.0.0.1:{}: healthy", replica.port)),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_recovery_conflict_mid_export_aborts_the_transfer() {
    let (primary, replica) = primary_and_replica(&["max_standby_streaming_delay=0", "hot_standby_feedback=off"]).await;
    // An export that takes about ten seconds whatever the socket buffers hold (half a millisecond per row),
    // and no autovacuum on its table (an ANALYZE of the fresh rows would hold back the horizon, and VACUUM
    // would remove nothing).
    primary
        .client()
        .await
        .batch_execute(
            "CREATE TABLE wide (id int PRIMARY KEY, pad text) WITH (autovacuum_enabled = off);
             INSERT INTO wide SELECT g, repeat('x', 20) FROM generate_series(1, 20000) g;
             CREATE VIEW slowly AS SELECT id, pad FROM wide WHERE pg_sleep(0.0005) IS NOT NULL;",
        )
        .await
        .unwrap();
    let standby = replica.client().await;
    replayed(&standby, "wide", 20_000).await;
    let mut settings = replica_settings(&primary, &replica, ReplicaFallback::Refuse);
    settings.datasets = settings_for(String::new(), &[("slowly", "slowly", None)]).datasets;
    let address = serve(settings).await;

    let mut export = RawResponse::get(&address, "/v1/datasets/slowly/rows", &[]).await;
    assert_eq!(export.status, 200);
    assert!(export.next_chunk().await.unwrap().is_some(), "the export is under way");

    // VACUUM on the primary removes rows the export's snapshot still sees; replaying that cancels it.
    let writer = primary.client().await;
    writer.batch_execute("DELETE FROM wide WHERE id % 2 = 0").await.unwrap();
    writer.batch_execute("VACUUM wide").await.unwrap();
    let (chunks, terminated) = export.read_to_end().await;
    let lines = chunks.concat().iter().filter(|b| **b == b'\n').count();
    assert!(
        !terminated,
        "a cancelled export must not end cleanly ({lines} more lines)"
    );
    assert!(lines < 20_000, "{lines} lines");
    // The cancelled backend reports the conflict to the cumulative statistics when it next flushes them (at
    // its end, or a second later): wait for the count, not for a moment.
    let mut conflicts = 0;
    for _ in 0..600 {
        conflicts = standby
            .query_one(
                "SELECT confl_snapshot + confl_lock + confl_bufferpin FROM pg_stat_database_conflicts \
                 WHERE datname = 'postgres'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        if conflicts >= 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(conflicts >= 1, "the replica recorded the conflict");
}
