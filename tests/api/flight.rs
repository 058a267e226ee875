//! Arrow Flight (`server.flight_listen`), read with pyarrow's Flight client: list, info and get for a dataset
//! and a filtered command (equal to `/rows?format=arrow` and to the same SQL), errors as gRPC codes, a forged
//! ticket refused, a cancelled call freeing its backend, a busy server refusing with `UNAVAILABLE`, and a
//! killed backend ending the stream with an error.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::helpers::{BIG_VIEW, TestDb, free_port, python, serve, settings, wait_for, wait_until};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/flight.py");

/// Runs tests/clients/flight.py with `args`; its JSON output.
pub(crate) async fn flight(args: &[&str]) -> Value {
    let output = tokio::process::Command::new(python())
        .arg(SCRIPT)
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "flight.py {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// pgspout with Flight on a free port, serving `datasets` of `db` with `tune`d settings: (HTTP base URL, Flight
/// location).
async fn serve_flight(
    db: &TestDb,
    datasets: &[(&str, &str, Option<&str>)],
    tune: impl FnOnce(&mut pgspout::settings::Settings),
) -> (String, String) {
    let mut settings = settings(db, datasets);
    tune(&mut settings);
    let port = free_port();
    settings.server.flight_listen = Some(format!("127.0.0.1:{port}"));
    let address = serve(settings).await;
    (format!("http://{address}"), format!("grpc://127.0.0.1:{port}"))
}

#[tokio::test]
async fn flight_lists_describes_and_streams_datasets_as_http_arrow_does() {
    let db = TestDb::new().await;
    db.client
        .batch_execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, amount numeric(12,2), note text, at timestamptz); \
             INSERT INTO orders SELECT g, (g % 1000) / 4.0, CASE WHEN g % 7 = 0 THEN NULL ELSE 'n' || g END, \
               '2026-01-01'::timestamptz + g * interval '1 minute' FROM generate_series(1, 3000) g; \
             ANALYZE orders",
        )
        .await
        .unwrap();
    let (http, location) = serve_flight(&db, &[("orders", "orders", Some("id"))], |_| {}).await;

    let listed = flight(&["list", &location]).await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["path"], serde_json::json!(["orders"]));
    assert_eq!(listed[0]["rows"], 3000, "the planner's estimate");
    assert_eq!(listed[0]["fields"], serde_json::json!(["id", "amount", "note", "at"]));

    let whole = flight(&["get", &location, &http, "path:orders"]).await;
    assert_eq!(whole["rows"], 3000);
    assert_eq!(whole["id_sum"], 3000 * 3001 / 2);
    assert_eq!(whole["equal_to_http"], true, "{whole}");
    assert_eq!(whole["same_schema"], true, "{whole}");
    assert_eq!(
        whole["schema"],
        serde_json::json!([
            ["id", "int64"],
            ["amount", "decimal128(12, 2)"],
            ["note", "string"],
            ["at", "timestamp[us, tz=UTC]"]
        ])
    );

    let command = "cmd:orders?select=id,amount&amount=gt.200&order=amount.desc";
    let filtered = flight(&["get", &location, &http, command]).await;
    let expected: Vec<i64> = db
        .column("SELECT id FROM orders WHERE amount > 200 ORDER BY amount DESC, id")
        .await;
    assert_eq!(filtered["rows"], expected.len());
    assert_eq!(filtered["ids"], serde_json::json!(expected[..5]));
    assert_eq!(filtered["id_sum"], expected.iter().sum::<i64>());
    assert_eq!(filtered["equal_to_http"], true, "{filtered}");

    // Errors are gRPC codes that name what is wrong.
    let bad = flight(&["error", &location, "cmd:orders?select=nope"]).await;
    assert_eq!(bad["error"], "ArrowInvalid", "INVALID_ARGUMENT: {bad}");
    assert!(bad["message"].as_str().unwrap().contains("select"), "{bad}");
    let unknown = flight(&["error", &location, "path:nothing"]).await;
    assert_eq!(unknown["error"], "ArrowKeyError", "NOT_FOUND: {unknown}");
    let forged = flight(&["forged", &location]).await;
    assert_eq!(forged["error"], "ArrowInvalid", "{forged}");
    assert!(forged["message"].as_str().unwrap().contains("ticket"), "{forged}");

    // Flight calls are counted as requests, and their exports as exports.
    let metrics = reqwest::get(format!("{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "pgspout_http_requests_total{method=\"GRPC\",route=\"flight.DoGet\",status=\"200\"} 2",
        "pgspout_http_requests_total{method=\"GRPC\",route=\"flight.ListFlights\",status=\"200\"} 1",
        "pgspout_http_requests_total{method=\"GRPC\",route=\"flight.GetFlightInfo\",status=\"400\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
}

#[tokio::test]
async fn a_cancelled_flight_frees_its_backend_and_a_killed_backend_ends_the_stream_with_an_error() {
    let db = TestDb::new().await;
    db.client.batch_execute(BIG_VIEW).await.unwrap();
    // One export at a time, so a second call finds none free.
    let (_, location) = serve_flight(&db, &[("big", "big", Some("id"))], |settings| {
        settings.export.max_concurrent = Some(1);
        settings.database.acquire_timeout = Duration::from_millis(500);
    })
    .await;

    let cancelled = flight(&["cancel", &location, "path:big"]).await;
    assert_eq!(cancelled["cancelled"], true);
    wait_until(Duration::from_secs(60), || async {
        db.pgspout_backends().await.iter().all(|b| b.1 == "idle")
    })
    .await;

    let mut reader = tokio::process::Command::new(python())
        .args([SCRIPT, "killed", &location, "path:big"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(reader.stdout.take().unwrap()).lines();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("reading"));
    let pid = wait_for(Duration::from_secs(60), || async {
        db.pgspout_backends()
            .await
            .into_iter()
            .find(|b| b.1 == "active")
            .map(|b| b.0)
    })
    .await;
    // The one export slot is taken: another call is UNAVAILABLE, with advice to retry.
    let busy = flight(&["error", &location, "path:big"]).await;
    assert_eq!(busy["error"], "FlightUnavailableError", "{busy}");
    assert!(busy["message"].as_str().unwrap().contains("retry"), "{busy}");
    db.client
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    reader.stdin.take().unwrap().write_all(b"go\n").await.unwrap();
    let ended: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert!(
        reader.wait().await.unwrap().success(),
        "the stream must not end cleanly: {ended}"
    );
    assert!(ended["error"].as_str().is_some(), "{ended}");
}
