//! A real browser: Debian's chromium, driven by playwright-core (tests/browser), against the live page, the
//! JavaScript client, CORS and EventSource on a million rows.

use std::time::Duration;

use pgspout::settings::CorsSettings;

use crate::helpers::TestDb;

/// A loopback port nothing listens on now, for a page server of the browser test's own.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn chromium_renders_cancels_resumes_and_keeps_origins_apart_on_a_million_rows() {
    let db = TestDb::new().await;
    db.client
        .batch_execute(
            "CREATE TABLE numbers (id int PRIMARY KEY, label text NOT NULL, amount numeric(10,2), \
               created_at timestamptz); \
             INSERT INTO numbers SELECT g, 'number ' || g, (g % 1000) / 7.0, \
               timestamptz '2024-01-01' + g * interval '1 minute' FROM generate_series(1, 1000000) g; \
             ANALYZE numbers; \
             CREATE VIEW slow_numbers AS SELECT * FROM numbers WHERE pg_sleep(0.00005) IS NOT NULL",
        )
        .await
        .unwrap();
    let (allowed, blocked) = (free_port(), free_port());
    let directory = crate::jobs::temp_dir("browser");
    let mut settings = crate::helpers::settings(
        &db,
        &[
            ("numbers", "numbers", Some("id")),
            ("slow_numbers", "slow_numbers", Some("id")),
        ],
    );
    settings.server.cors = Some(CorsSettings {
        allowed_origins: vec![format!("http://127.0.0.1:{allowed}")],
        allow_credentials: false,
        max_age: Duration::from_secs(60),
    });
    settings.jobs.directory = Some(directory.clone());
    settings.jobs.poll_interval = Duration::from_millis(100);
    settings.query.aggregates = true;
    let address = crate::helpers::serve(settings).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/browser_test.mjs");
    // Bounded: a page that never settles must fail the test, not hang it.
    let node = tokio::process::Command::new("node")
        .args([
            script,
            &format!("http://{address}"),
            &allowed.to_string(),
            &blocked.to_string(),
        ])
        .env("PGDATABASE", &db.name)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), node)
        .await
        .expect("the browser test finishes within five minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "node ({}): {stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    // The figures (time to first row, DOM size, heap, cancel latency), for `cargo test -- --nocapture`.
    println!("browser: {stdout}");
    assert_eq!(stdout.lines().last(), Some("ok"));
    let _ = std::fs::remove_dir_all(&directory);
    drop(db);
}
