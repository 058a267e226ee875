//! Failures before the first byte get a status and problem+json; failures after it abort the transfer.

use std::io::Read;
use std::time::Duration;

use pgspout::startup::Application;

use crate::helpers::{BIG_VIEW, TestDb, settings, small_table, spawn_app, spawn_with};

#[tokio::test]
async fn an_sql_error_before_the_first_row_is_a_500_not_an_empty_200() {
    let db = TestDb::new().await;
    db.client
        .batch_execute("CREATE VIEW broken AS SELECT g AS id, 1 / (g - g) AS boom FROM generate_series(1, 3) g")
        .await
        .unwrap();
    let app = spawn_app(db, &[("broken", "broken", Some("id"))]).await;
    let response = app.get("/v1/datasets/broken/rows", &[]).await;
    assert_eq!(response.status(), 500);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let body = response.text().await.unwrap();
    assert!(
        !body.contains("division"),
        "500 bodies must not leak database detail: {body}"
    );
}

#[tokio::test]
async fn the_statement_timeout_answers_504() {
    let db = TestDb::new().await;
    db.client
        .batch_execute("CREATE VIEW slow AS SELECT 1 AS id, pg_sleep(5)::text AS nap")
        .await
        .unwrap();
    let mut settings = settings(&db, &[("slow", "slow", Some("id"))]);
    settings.database.statement_timeout = Duration::from_millis(200);
    let app = spawn_with(db, settings).await;
    let response = app.get("/v1/datasets/slow/rows", &[]).await;
    assert_eq!(response.status(), 504);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
}

#[tokio::test]
async fn a_full_pool_answers_503_with_retry_after_then_recovers() {
    let db = TestDb::new().await;
    db.client.batch_execute(BIG_VIEW).await.unwrap();
    small_table(&db, 10).await;
    let mut settings = settings(&db, &[("big", "big", None), ("small", "small", Some("id"))]);
    settings.database.pool_size = 1;
    settings.database.acquire_timeout = Duration::from_millis(300);
    let app = spawn_with(db, settings).await;

    // A reader that never reads holds the only connection.
    let stalled = app.raw("/v1/datasets/big/rows", &[]).await;
    assert_eq!(stalled.status, 200);
    let started = std::time::Instant::now();
    // A page needs no export slot, only a connection: it waits for one, then gives up.
    let mut refused = app.raw("/v1/datasets/small/page", &[]).await;
    assert_eq!(refused.status, 503);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the wait is bounded by acquire_timeout"
    );
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.header("content-type"), Some("application/problem+json"));
    let problem: serde_json::Value = serde_json::from_slice(&refused.read_body().await).unwrap();
    assert_eq!(problem["status"], 503);
    assert!(problem["detail"].as_str().unwrap().contains("connection"), "{problem}");

    drop(stalled);
    let served = crate::helpers::wait_for(Duration::from_secs(30), || async {
        let response = app.get("/v1/datasets/small/rows", &[]).await;
        (response.status() == 200).then_some(response)
    })
    .await;
    assert_eq!(served.text().await.unwrap().lines().count(), 10);
}

#[tokio::test]
async fn a_terminated_backend_makes_curl_fail() {
    let db = TestDb::new().await;
    db.client.batch_execute(BIG_VIEW).await.unwrap();
    let app = spawn_app(db, &[("big", "big", None)]).await;
    let curl = tokio::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--limit-rate", "2M"])
        .arg(app.url("/v1/datasets/big/rows"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = app.db.active_export().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.db
        .client
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let output = curl.wait_with_output().await.unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "200", "the export had started");
    assert!(
        !output.status.success(),
        "curl must see the broken export as a failure, got {}",
        output.status
    );
}

#[tokio::test]
async fn a_terminated_backend_leaves_a_compressed_stream_without_its_trailer() {
    let db = TestDb::new().await;
    db.client.batch_execute(BIG_VIEW).await.unwrap();
    let app = spawn_app(db, &[("big", "big", None)]).await;
    let mut response = app.raw("/v1/datasets/big/rows", &[("Accept-Encoding", "gzip")]).await;
    assert_eq!(response.header("content-encoding"), Some("gzip"));
    let first = response.next_chunk().await.unwrap().unwrap();
    let pid = app.db.active_export().await;
    app.db
        .client
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let (chunks, terminated) = response.read_to_end().await;
    assert!(!terminated, "a broken export must not end with the terminating chunk");
    let body = [vec![first], chunks].concat().concat();
    let mut decoded = Vec::new();
    let result = flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut decoded);
    assert!(result.is_err(), "the gzip stream must lack its trailer");
}

#[tokio::test]
async fn config_that_does_not_match_the_database_fails_at_start_up_naming_the_problem() {
    let db = TestDb::new().await;
    db.client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, other int NOT NULL); CREATE TABLE nounique (id int NOT NULL); CREATE TABLE nullable (id int UNIQUE)")
        .await
        .unwrap();
    for (table, key, expected) in [
        ("missing", Some("id"), "table or view \"missing\" does not exist"),
        ("t", Some("nope"), "key column \"nope\" does not exist"),
        ("t", Some("other"), "no unique index"),
        ("nounique", Some("id"), "no unique index"),
        ("nullable", Some("id"), "must be NOT NULL"),
        ("pg_class_oid_index", None, "not a table or view"),
    ] {
        let settings = settings(&db, &[("ds", table, key)]);
        let error = Application::build(settings).await.err().expect("start-up must fail");
        let message = pgspout::report::chain(&error);
        assert!(
            message.contains(expected) && message.contains("\"ds\""),
            "{message:?} lacks {expected:?}"
        );
    }
}

#[test]
fn the_binary_rejects_unknown_config_keys_with_their_name() {
    let dir = std::env::temp_dir().join(format!("pgspout-config-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[database]\nurl = \"host=localhost\"\npool_sise = 4\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pgspout"))
        .args(["serve", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("pool_sise"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_role_without_select_privilege_gets_403() {
    let db = TestDb::new().await;
    let role = format!("reader_{}", uuid::Uuid::new_v4().simple());
    db.client
        .batch_execute(&format!(
            "CREATE TABLE secret (id int PRIMARY KEY); CREATE ROLE {role} LOGIN PASSWORD 'pw'; \
             GRANT CONNECT ON DATABASE {} TO {role}",
            db.name
        ))
        .await
        .unwrap();
    let mut settings = settings(&db, &[("secret", "secret", Some("id"))]);
    let url = settings.database.url.take().unwrap();
    let url = url.replace(
        &format!("user={}", std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into())),
        &format!("user={role}"),
    );
    settings.database.url = Some(url.replace(
        &format!("password={}", std::env::var("PGPASSWORD").unwrap_or_default()),
        "password=pw",
    ));
    let app = spawn_with(db, settings).await;
    let response = app.get("/v1/datasets/secret/rows", &[]).await;
    assert_eq!(response.status(), 403);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
}

#[tokio::test]
async fn a_value_over_the_limit_aborts_the_export_page_and_job_naming_its_column() {
    let db = TestDb::new().await;
    // Row 3's blob is twice the limit; the others are small.
    db.client
        .batch_execute(
            "CREATE TABLE blobs (id int PRIMARY KEY, blob bytea); \
             INSERT INTO blobs SELECT g, CASE WHEN g = 3 THEN decode(repeat('ab', 2 * 1024 * 1024), 'hex') \
               ELSE '\\x00'::bytea END FROM generate_series(1, 5) g",
        )
        .await
        .unwrap();
    let directory = crate::jobs::temp_dir("jobs-too-large");
    let mut settings = settings(&db, &[("blobs", "blobs", Some("id"))]);
    settings.export.max_value_bytes = 1024 * 1024;
    settings.jobs.directory = Some(directory.clone());
    let app = spawn_with(db, settings).await;

    for coding in ["identity", "gzip"] {
        let mut response = app.raw("/v1/datasets/blobs/rows", &[("Accept-Encoding", coding)]).await;
        assert_eq!(response.status, 200);
        let (_, terminated) = response.read_to_end().await;
        assert!(!terminated, "{coding}: a refused value must abort the transfer");
    }
    let page = app.get("/v1/datasets/blobs/page?limit=5", &[]).await;
    assert_eq!(page.status(), 422);
    let problem: serde_json::Value = page.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("\"blob\"") && detail.contains("max_value_bytes"),
        "{detail}"
    );
    // Below the limit, the same rows stream in full.
    let small = app.get("/v1/datasets/blobs/rows?id=neq.3", &[]).await;
    assert_eq!(small.text().await.unwrap().lines().count(), 4);

    let id = crate::jobs::create_ok(&app.address, serde_json::json!({ "dataset": "blobs" })).await;
    let failed = crate::helpers::wait_for(Duration::from_secs(60), || async {
        let status = crate::jobs::status(&app.address, &id).await;
        (status["status"] == "failed").then_some(status)
    })
    .await;
    assert!(failed["error"].as_str().unwrap().contains("\"blob\""), "{failed}");
    let _ = std::fs::remove_dir_all(&directory);
}
