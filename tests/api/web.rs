//! What browsers need: CORS, `format=json` (one streamed array) and `format=sse` (events that resume with
//! `Last-Event-ID` and end with `end`), and the live page served from the binary.

use std::time::Duration;

use pgspout::settings::CorsSettings;
use serde_json::Value;

use crate::helpers::{BIG_VIEW, RawResponse, TestDb, serve, settings};

async fn numbers(db: &TestDb, n: i32) {
    db.client
        .batch_execute(&format!(
            "CREATE TABLE numbers (id int PRIMARY KEY, label text, amount numeric(10,2), at timestamptz, tags text[]);
             INSERT INTO numbers SELECT g, 'n\"' || g, g * 1.5, '2024-01-01 00:00Z'::timestamptz + g * interval '1 hour',
               ARRAY['a', NULL] FROM generate_series(1, {n}) g;
             {BIG_VIEW};"
        ))
        .await
        .unwrap();
}

async fn request(address: &str, method: reqwest::Method, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = reqwest::Client::new().request(method, format!("http://{address}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn cors_answers_preflights_and_exposes_headers_to_allowed_origins_only() {
    let db = TestDb::new().await;
    numbers(&db, 3).await;
    let mut with_cors = settings(&db, &[("numbers", "numbers", Some("id"))]);
    with_cors.server.cors = Some(CorsSettings {
        allowed_origins: vec!["https://app.example".into()],
        allow_credentials: true,
        max_age: Duration::from_secs(600),
    });
    let without = serve(settings(&db, &[("numbers", "numbers", Some("id"))])).await;
    let address = serve(with_cors).await;
    let preflight = |origin: &'static str, address: String| async move {
        request(
            &address,
            reqwest::Method::OPTIONS,
            "/v1/datasets/numbers/rows",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "GET"),
                ("Access-Control-Request-Headers", "authorization, prefer, last-event-id"),
            ],
        )
        .await
    };
    let header =
        |response: &reqwest::Response, name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned());

    let allowed = preflight("https://app.example", address.clone()).await;
    assert_eq!(allowed.status(), 204);
    assert_eq!(
        header(&allowed, "access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
    assert_eq!(
        header(&allowed, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(header(&allowed, "access-control-max-age").as_deref(), Some("600"));
    let methods = header(&allowed, "access-control-allow-methods").unwrap();
    assert!(
        ["GET", "HEAD", "POST", "DELETE"].iter().all(|m| methods.contains(m)),
        "{methods}"
    );
    let headers = header(&allowed, "access-control-allow-headers").unwrap();
    for name in ["Authorization", "Prefer", "Range", "Last-Event-ID", "Content-Type"] {
        assert!(headers.contains(name), "{headers}");
    }

    let response = request(
        &address,
        reqwest::Method::GET,
        "/v1/datasets/numbers/rows",
        &[("Origin", "https://app.example"), ("Prefer", "count=exact")],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
    let exposed = header(&response, "access-control-expose-headers").unwrap();
    for name in [
        "Content-Disposition",
        "Link",
        "X-Total-Count",
        "Preference-Applied",
        "X-Request-Id",
    ] {
        assert!(exposed.contains(name), "{exposed}");
    }
    // Errors carry them too, so a page can read the problem.
    let missing = request(
        &address,
        reqwest::Method::GET,
        "/v1/datasets/nope/rows",
        &[("Origin", "https://app.example")],
    )
    .await;
    assert_eq!(missing.status(), 404);
    assert!(header(&missing, "access-control-allow-origin").is_some());

    // Another origin gets no CORS header at all (the browser blocks it); the server still answers.
    let refused = preflight("https://evil.example", address.clone()).await;
    assert_eq!(refused.status(), 403);
    assert!(header(&refused, "access-control-allow-origin").is_none());
    let other = request(
        &address,
        reqwest::Method::GET,
        "/v1/datasets/numbers/rows",
        &[("Origin", "https://evil.example")],
    )
    .await;
    assert_eq!(other.status(), 200);
    assert!(header(&other, "access-control-allow-origin").is_none());

    // Off without [server.cors].
    let off = preflight("https://app.example", without.clone()).await;
    assert_eq!(off.status(), 405);
    assert!(header(&off, "access-control-allow-origin").is_none());
}

#[tokio::test]
async fn format_json_is_one_array_of_row_to_json_objects_and_a_cut_one_is_never_complete() {
    let db = TestDb::new().await;
    numbers(&db, 500).await;
    // `big` without a key streams at once (in key order it would sort ten million rows first).
    let mut settings = settings(&db, &[("numbers", "numbers", Some("id")), ("big", "big", None)]);
    // Long enough for the first chunks to leave, even on a loaded machine; the view takes far longer.
    settings.export.max_duration = Some(Duration::from_secs(3));
    let address = serve(settings).await;
    db.client.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    let expected: Vec<Value> = db
        .client
        .query("SELECT row_to_json(t)::text FROM numbers t ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
        .collect();
    for (path, accept) in [
        ("/v1/datasets/numbers/rows?format=json", "*/*"),
        ("/v1/datasets/numbers/rows", "application/json"),
    ] {
        let response = request(&address, reqwest::Method::GET, path, &[("Accept", accept)]).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/json");
        let rows: Vec<Value> = response.json().await.unwrap();
        assert_eq!(rows, expected, "{path}");
    }
    let empty = request(
        &address,
        reqwest::Method::GET,
        "/v1/datasets/numbers/rows?format=json&id=gt.1000",
        &[],
    )
    .await;
    assert_eq!(empty.text().await.unwrap(), "[]");

    // Cut by max_duration mid-stream: no terminating chunk, and no closing bracket to parse.
    let mut cut = RawResponse::get(&address, "/v1/datasets/big/rows?format=json", &[]).await;
    assert_eq!(cut.status, 200);
    let (chunks, terminated) = cut.read_to_end().await;
    let body = chunks.concat();
    assert!(!terminated, "a cut array must not end cleanly");
    let (head, tail) = (&body[..body.len().min(20)], &body[body.len().saturating_sub(20)..]);
    assert!(
        body.starts_with(b"[{") && !body.ends_with(b"]"),
        "{} … {}",
        String::from_utf8_lossy(head),
        String::from_utf8_lossy(tail)
    );
}

/// The events of an SSE body: (event name, id, data lines).
fn events(body: &str) -> Vec<(String, Option<String>, Vec<String>)> {
    body.split("\n\n")
        .filter(|block| !block.is_empty() && !block.starts_with("retry:"))
        .map(|block| {
            let mut name = "message".to_owned();
            let mut id = None;
            let mut data = Vec::new();
            for line in block.lines() {
                let (field, value) = line.split_once(": ").unwrap_or((line, ""));
                match field {
                    "event" => name = value.to_owned(),
                    "id" => id = Some(value.to_owned()),
                    "data" => data.push(value.to_owned()),
                    other => panic!("unexpected field {other:?} in {block:?}"),
                }
            }
            (name, id, data)
        })
        .collect()
}

/// The ids of the rows in the message events, and the events.
async fn sse(
    address: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (Vec<i64>, Vec<(String, Option<String>, Vec<String>)>) {
    let response = request(address, reqwest::Method::GET, path, headers).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let body = response.text().await.unwrap();
    assert!(body.starts_with("retry: 1000\n\n"));
    let events = events(&body);
    let ids = events
        .iter()
        .filter(|e| e.0 == "message")
        .flat_map(|e| {
            e.2.iter()
                .map(|row| serde_json::from_str::<Value>(row).unwrap()["id"].as_i64().unwrap())
        })
        .collect();
    (ids, events)
}

/// The rows of the message events up to and including the `n`th (0-based), and that event's id.
fn rows_through(events: &[(String, Option<String>, Vec<String>)], n: usize) -> (Vec<i64>, String) {
    let messages: Vec<_> = events.iter().filter(|e| e.0 == "message").collect();
    let rows = messages[..=n]
        .iter()
        .flat_map(|e| {
            e.2.iter()
                .map(|row| serde_json::from_str::<Value>(row).unwrap()["id"].as_i64().unwrap())
        })
        .collect();
    (rows, messages[n].1.clone().expect("every rows event has an id"))
}

/// The `rows` of the last `progress` event and of the `end` event.
fn counts(events: &[(String, Option<String>, Vec<String>)]) -> (i64, i64) {
    let data = |name: &str| -> Value {
        serde_json::from_str(&events.iter().rev().find(|e| e.0 == name).unwrap().2[0]).unwrap()
    };
    (
        data("progress")["rows"].as_i64().unwrap(),
        data("end")["rows"].as_i64().unwrap(),
    )
}

#[tokio::test]
async fn sse_events_carry_rows_and_progress_resume_after_last_event_id_and_end_with_end() {
    let db = TestDb::new().await;
    numbers(&db, 3000).await;
    db.client.batch_execute("ANALYZE numbers").await.unwrap();
    let mut settings = settings(&db, &[("numbers", "numbers", Some("id"))]);
    settings.export.chunk_size = 4096;
    let address = serve(settings).await;

    for consistency in ["snapshot", "chunked"] {
        let path = format!("/v1/datasets/numbers/rows?format=sse&consistency={consistency}");
        let (ids, events) = sse(&address, &path, &[]).await;
        assert_eq!(ids, (1..=3000).collect::<Vec<_>>(), "{consistency}");
        let messages: Vec<_> = events.iter().filter(|e| e.0 == "message").collect();
        assert!(messages.len() > 5, "rows come in many events");
        // Each event has an opaque id (a signed resume token) and is followed by progress.
        for (i, event) in events.iter().enumerate().filter(|(_, e)| e.0 == "message") {
            let id = event.1.as_deref().expect("an id");
            assert!(
                id.split_once('.').is_some_and(|(p, t)| !p.is_empty() && !t.is_empty()),
                "{id}"
            );
            assert_eq!(events[i + 1].0, "progress");
        }
        let progress: Value = serde_json::from_str(&events[events.len() - 2].2[0]).unwrap();
        assert_eq!(progress["rows"], 3000);
        assert!(
            progress["total"].as_i64().unwrap() > 2000,
            "the planner's estimate: {progress}"
        );
        let end = events.last().unwrap();
        assert_eq!(
            (end.0.as_str(), end.2.as_slice()),
            ("end", &["{\"rows\":3000}".to_owned()][..])
        );

        // A reconnect with the id of the third event resumes right after it: no row twice, none missing,
        // and the counts go on from the rows already sent.
        let (before, third) = rows_through(&events, 2);
        let (resumed, events) = sse(&address, &path, &[("Last-Event-ID", third.as_str())]).await;
        let from = *before.last().unwrap();
        assert_eq!(resumed, ((from + 1)..=3000).collect::<Vec<_>>());
        assert_eq!(counts(&events), (3000, 3000));

        // With a limit, the resumed stream sends what is left of it, not a new limit's worth.
        let limited = format!("{path}&limit=250");
        let (ids, events) = sse(&address, &limited, &[]).await;
        assert_eq!(ids, (1..=250).collect::<Vec<_>>());
        let (before, second) = rows_through(&events, 1);
        let (resumed, events) = sse(&address, &limited, &[("Last-Event-ID", second.as_str())]).await;
        assert_eq!(
            [before, resumed].concat(),
            (1..=250).collect::<Vec<_>>(),
            "{consistency}"
        );
        assert_eq!(counts(&events), (250, 250));

        // A token resumes only its own stream: another query, dataset or a forged token is a 400.
        for (other, token) in [
            (path.replace("sse&", "sse&limit=10&"), second.clone()),
            (limited.clone(), format!("x{second}")),
        ] {
            let refused = request(
                &address,
                reqwest::Method::GET,
                &other,
                &[("Last-Event-ID", token.as_str())],
            )
            .await;
            assert_eq!(refused.status(), 400, "{other}");
            assert_eq!(refused.headers()["content-type"], "application/problem+json");
        }
    }
    // Accept works too.
    let (ids, _) = sse(
        &address,
        "/v1/datasets/numbers/rows?order=id.desc&limit=50",
        &[("Accept", "text/event-stream")],
    )
    .await;
    assert_eq!(ids, (2951..=3000).rev().collect::<Vec<_>>());
}

#[tokio::test]
async fn an_sse_stream_in_any_order_resumes_exactly_where_it_was_cut() {
    let db = TestDb::new().await;
    // Many ties and some NULLs in the sort column: the key breaks the ties.
    db.client
        .batch_execute(
            "CREATE TABLE scores (id int PRIMARY KEY, grade int); \
             INSERT INTO scores SELECT g, CASE WHEN g % 11 = 0 THEN NULL ELSE g % 7 END FROM generate_series(1, 2000) g",
        )
        .await
        .unwrap();
    let mut settings = settings(&db, &[("scores", "scores", Some("id"))]);
    settings.export.chunk_size = 2048;
    let address = serve(settings).await;
    let expected: Vec<i64> = db
        .column("SELECT id::int8 FROM scores ORDER BY grade DESC NULLS FIRST, id LIMIT 1500")
        .await;
    for consistency in ["snapshot", "chunked"] {
        let path = format!("/v1/datasets/scores/rows?format=sse&order=grade.desc&limit=1500&consistency={consistency}");
        let (ids, events) = sse(&address, &path, &[]).await;
        assert_eq!(ids, expected, "{consistency}");
        let messages = events.iter().filter(|e| e.0 == "message").count();
        // Cut after each of several events in turn: what was received plus the resumed rest is the stream.
        for cut in [0, messages / 3, messages / 2, messages - 2] {
            let (before, id) = rows_through(&events, cut);
            let (resumed, events) = sse(&address, &path, &[("Last-Event-ID", id.as_str())]).await;
            assert_eq!(
                [before, resumed].concat(),
                expected,
                "{consistency}, cut after event {cut}"
            );
            assert_eq!(counts(&events), (1500, 1500));
        }
        // The last event's token resumes to an empty rest that still ends cleanly.
        let (_, last) = rows_through(&events, messages - 1);
        let (resumed, events) = sse(&address, &path, &[("Last-Event-ID", last.as_str())]).await;
        assert!(resumed.is_empty());
        assert_eq!(events.last().unwrap().0, "end");
    }
}

#[tokio::test]
async fn the_live_page_and_its_assets_are_served_from_the_binary_under_a_strict_policy() {
    let db = TestDb::new().await;
    numbers(&db, 3).await;
    let address = serve(settings(&db, &[("numbers", "numbers", Some("id"))])).await;
    let page = request(&address, reqwest::Method::GET, "/", &[]).await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let policy = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(policy.starts_with("default-src 'self'"), "{policy}");
    let html = page.text().await.unwrap();
    // Everything the page loads comes from pgspout itself.
    for (path, media_type) in [
        ("/assets/app.js", "text/javascript; charset=utf-8"),
        ("/assets/app.css", "text/css; charset=utf-8"),
        ("/v1/client.js", "text/javascript; charset=utf-8"),
    ] {
        if path.starts_with("/assets/") {
            assert!(html.contains(path), "the page links {path}");
        }
        let asset = request(&address, reqwest::Method::GET, path, &[]).await;
        assert_eq!(asset.status(), 200, "{path}");
        assert_eq!(asset.headers()["content-type"], media_type, "{path}");
        assert_eq!(asset.headers()["x-content-type-options"], "nosniff", "{path}");
    }
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external asset"
    );
}
