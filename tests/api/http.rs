//! The HTTP surface: negotiation, headers, problem+json errors, compression, health, real clients.

use std::io::Read;

use crate::helpers::{TestApp, TestDb, small_table, spawn_app};

async fn app() -> TestApp {
    let db = TestDb::new().await;
    small_table(&db, 2000).await;
    spawn_app(db, &[("small", "small", Some("id"))]).await
}

async fn assert_problem(response: reqwest::Response, status: u16, mentions: &str) {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let problem: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(problem["status"], status);
    assert!(problem["type"].as_str().unwrap().starts_with("urn:pgspout:problem:"));
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains(mentions), "{detail:?} should mention {mentions:?}");
}

#[tokio::test]
async fn ndjson_is_the_default_with_download_headers() {
    let app = app().await;
    let response = app.get("/v1/datasets/small/rows", &[]).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "application/x-ndjson");
    assert_eq!(headers["content-disposition"], "attachment; filename=\"small.ndjson\"");
    assert!(headers["vary"].to_str().unwrap().contains("Accept-Encoding"));
    assert!(headers.get("content-encoding").is_none());
    let body = response.text().await.unwrap();
    assert_eq!(body.lines().count(), 2000);
    assert_eq!(body.lines().next().unwrap(), r#"{"id":1,"label":"row 1"}"#);
}

#[tokio::test]
async fn accept_or_format_parameter_selects_csv() {
    let app = app().await;
    for (path, accept) in [
        ("/v1/datasets/small/rows?format=csv", "*/*"),
        ("/v1/datasets/small/rows", "text/csv"),
    ] {
        let response = app.get(path, &[("accept", accept)]).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "text/csv; charset=utf-8; header=present"
        );
        assert_eq!(
            response.headers()["content-disposition"],
            "attachment; filename=\"small.csv\""
        );
        let body = response.text().await.unwrap();
        assert!(body.starts_with("id,label\n1,row 1\n2,row 2\n"));
    }
    let jsonl = app
        .get("/v1/datasets/small/rows", &[("accept", "application/jsonl")])
        .await;
    assert_eq!(jsonl.headers()["content-type"], "application/x-ndjson");
}

#[tokio::test]
async fn bad_requests_get_problem_json() {
    let app = app().await;
    assert_problem(app.get("/v1/datasets/nope/rows", &[]).await, 404, "nope").await;
    assert_problem(app.get("/v1/nothing/here", &[]).await, 404, "no resource").await;
    let post = reqwest::Client::new()
        .post(app.url("/v1/datasets/small/rows"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.headers()["allow"], "GET, HEAD");
    assert_problem(post, 405, "GET, HEAD").await;
    assert_problem(app.get("/v1/datasets/small/rows?label=eq.a%00b", &[]).await, 400, "NUL").await;
    assert_problem(app.get("/v1/datasets/small/rows?format=xml", &[]).await, 400, "xml").await;
    assert_problem(app.get("/v1/datasets/small/rows?colour=red", &[]).await, 400, "colour").await;
    let accept = [("accept", "application/xml")];
    assert_problem(app.get("/v1/datasets/small/rows", &accept).await, 406, "Accept").await;
    let encoding = [("accept-encoding", "identity;q=0, *;q=0")];
    assert_problem(
        app.get("/v1/datasets/small/rows", &encoding).await,
        406,
        "Accept-Encoding",
    )
    .await;
}

fn decode(coding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => {
            flate2::read::GzDecoder::new(body).read_to_end(&mut out).unwrap();
        }
        "zstd" => out = zstd::decode_all(body).unwrap(),
        "br" => brotli::BrotliDecompress(&mut &body[..], &mut out).unwrap(),
        other => panic!("unexpected coding {other}"),
    }
    out
}

/// The uncompressed CSV of the `small` dataset.
async fn plain_csv(app: &TestApp) -> Vec<u8> {
    let response = app.get("/v1/datasets/small/rows?format=csv", &[]).await;
    response.bytes().await.unwrap().to_vec()
}

#[tokio::test]
async fn every_coding_decodes_to_the_identity_body() {
    let app = app().await;
    let plain = plain_csv(&app).await;
    for (accept, coding) in [
        ("gzip", "gzip"),
        ("zstd", "zstd"),
        ("br", "br"),
        ("gzip;q=0.5, br;q=0.9", "br"),
    ] {
        let response = app
            .get("/v1/datasets/small/rows?format=csv", &[("accept-encoding", accept)])
            .await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-encoding"], coding);
        let body = response.bytes().await.unwrap();
        assert!(body.len() < plain.len() * 3 / 4, "{coding} should compress");
        assert_eq!(decode(coding, &body), plain, "{coding}");
    }
}

#[tokio::test]
async fn the_compression_parameter_makes_a_compressed_file_whatever_accept_encoding_says() {
    let app = app().await;
    let plain = plain_csv(&app).await;
    for (coding, media_type, name) in [
        ("gzip", "application/gzip", "small.csv.gz"),
        ("zstd", "application/zstd", "small.csv.zst"),
        ("br", "application/x-brotli", "small.csv.br"),
    ] {
        let response = app
            .get(
                &format!("/v1/datasets/small/rows?format=csv&compression={coding}"),
                &[("accept-encoding", "identity")],
            )
            .await;
        assert_eq!(response.status(), 200);
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], media_type);
        assert!(
            headers.get("content-encoding").is_none(),
            "{coding}: a file, not a coding"
        );
        assert_eq!(
            headers["content-disposition"],
            format!("attachment; filename=\"{name}\"")
        );
        assert_eq!(decode(coding, &response.bytes().await.unwrap()), plain, "{coding}");
    }
    // identity: plain, even when the client offers a coding.
    let response = app
        .get(
            "/v1/datasets/small/rows?format=csv&compression=identity",
            &[("accept-encoding", "gzip")],
        )
        .await;
    assert!(response.headers().get("content-encoding").is_none());
    assert_eq!(response.bytes().await.unwrap(), plain);
    assert_problem(
        app.get("/v1/datasets/small/rows?compression=rar", &[]).await,
        400,
        "compression",
    )
    .await;
}

#[tokio::test]
async fn curl_downloads_compressed_and_plain_exports() {
    let app = app().await;
    async fn run(args: &[&str]) -> Vec<u8> {
        let output = tokio::process::Command::new("curl")
            .args(["-sS", "--fail"])
            .args(args)
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }
    let url = app.url("/v1/datasets/small/rows");
    let plain = run(&[&url]).await;
    assert_eq!(run(&["--compressed", &url]).await, plain);
    assert_eq!(run(&["-H", "Accept-Encoding: zstd", "--compressed", &url]).await, plain);
    assert_eq!(plain.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count(), 2000);
}

#[tokio::test]
async fn health_and_readiness_follow_the_database() {
    let app = app().await;
    assert_eq!(app.get("/healthz", &[]).await.status(), 200);
    assert_eq!(app.get("/readyz", &[]).await.status(), 200);
    // Take the database away: its connections are terminated and new ones are refused.
    let admin = TestDb::new().await;
    admin
        .client
        .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", app.db.name))
        .await
        .unwrap();
    let response = app.get("/readyz", &[]).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(app.get("/healthz", &[]).await.status(), 200);
}

#[tokio::test]
async fn head_answers_the_get_headers_without_running_the_export() {
    let app = app().await;
    // The connection that read the catalog at startup may take a moment to leave pg_stat_activity on a
    // loaded machine; only then does "no backend" say something about HEAD.
    crate::helpers::wait_for(std::time::Duration::from_secs(60), || async {
        app.db.pgspout_backends().await.is_empty().then_some(())
    })
    .await;
    let response = reqwest::Client::new()
        .head(app.url("/v1/datasets/small/rows?format=csv"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/csv; charset=utf-8; header=present"
    );
    assert_eq!(response.headers()["content-encoding"], "gzip");
    assert!(response.headers().get("content-length").is_none_or(|l| l != "0"));
    assert!(
        app.db.pgspout_backends().await.is_empty(),
        "HEAD must not open a connection"
    );
    let missing = reqwest::Client::new()
        .head(app.url("/v1/datasets/nope/rows"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn an_empty_result_is_a_complete_empty_export() {
    let db = TestDb::new().await;
    db.client
        .batch_execute("CREATE TABLE empty (id int PRIMARY KEY, label text)")
        .await
        .unwrap();
    let app = spawn_app(db, &[("empty", "empty", Some("id"))]).await;
    for (format, coding, expected) in [
        ("ndjson", "identity", &b""[..]),
        ("csv", "identity", b"id,label\n"),
        ("ndjson", "gzip", b""),
    ] {
        let mut response = app
            .raw(
                &format!("/v1/datasets/empty/rows?format={format}"),
                &[("Accept-Encoding", coding)],
            )
            .await;
        assert_eq!(response.status, 200);
        let (chunks, terminated) = response.read_to_end().await;
        assert!(terminated, "{format}/{coding}: the empty export must end cleanly");
        let body = chunks.concat();
        let body = if coding == "gzip" { decode("gzip", &body) } else { body };
        assert_eq!(body, expected, "{format}/{coding}");
    }
}
