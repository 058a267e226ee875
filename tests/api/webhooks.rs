//! Webhooks of background exports, as Standard Webhooks specifies, against a receiver on loopback: signatures
//! that verify, a failed delivery retried under the same id, subscriptions by event, and a queue that
//! survives `kill -9`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{ServerProcess, wait_for};
use crate::jobs::{BIG_DATASET, create_ok, jobs_config, orders_and_big, status, wait_completed};

/// One POST a receiver got.
#[derive(Clone, Debug)]
struct Received {
    headers: Vec<(String, String)>,
    body: String,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }

    /// Whether `webhook-signature` is the Standard Webhooks signature of this request under `secret`.
    fn verifies(&self, secret: &str) -> bool {
        let key = base64::engine::general_purpose::STANDARD
            .decode(secret.strip_prefix("whsec_").unwrap())
            .unwrap();
        let signed = format!(
            "{}.{}.{}",
            self.header("webhook-id"),
            self.header("webhook-timestamp"),
            self.body
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(signed.as_bytes());
        let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        self.header("webhook-signature")
            .split(' ')
            .any(|s| s == format!("v1,{expected}"))
    }
}

/// A webhook endpoint on loopback that records every request and answers 204, but fails while `failing` says
/// so: the last failure (`failing` = 1) with a 307 redirect to itself, which a sender that followed redirects
/// would take for a success, the ones before it with 500. With [`Receiver::start_silent`], the first requests
/// get no answer at all, their connections held open.
struct Receiver {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
    /// Requests still to fail before answering 204.
    failing: Arc<Mutex<usize>>,
}

impl Receiver {
    async fn start(path: &str, failing: usize) -> Receiver {
        Receiver::start_silent(path, 0, failing).await
    }

    /// As [`Receiver::start`], after leaving `silent` requests unanswered.
    async fn start_silent(path: &str, mut silent: usize, failing: usize) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}{path}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let failing = Arc::new(Mutex::new(failing));
        let (log, fail, own) = (received.clone(), failing.clone(), url.clone());
        tokio::spawn(async move {
            let mut unanswered = Vec::new();
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let request = read_request(&mut stream).await;
                if silent > 0 {
                    silent -= 1;
                    log.lock().unwrap().push(request);
                    unanswered.push(stream);
                    continue;
                }
                let failing = {
                    let mut failing = fail.lock().unwrap();
                    let before = *failing;
                    *failing = failing.saturating_sub(1);
                    before
                };
                log.lock().unwrap().push(request);
                let answer = match failing {
                    0 => "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n".to_owned(),
                    1 => format!(
                        "HTTP/1.1 307 Temporary Redirect\r\nlocation: {own}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    ),
                    _ => "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        .to_owned(),
                };
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        Receiver { url, received, failing }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `n` requests have come.
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        wait_for(Duration::from_secs(60), || async {
            let received = self.received();
            (received.len() >= n).then_some(received)
        })
        .await
    }
}

/// One HTTP/1.1 request (headers lower-cased, a `content-length` body).
async fn read_request(stream: &mut tokio::net::TcpStream) -> Received {
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 4096];
    let end = loop {
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(n > 0, "the request ended early");
        bytes.extend_from_slice(&buffer[..n]);
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
    };
    let head = String::from_utf8(bytes[..end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    assert!(lines.next().unwrap().starts_with("POST "), "{head}");
    let headers: Vec<(String, String)> = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.trim().to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap();
    let mut body = bytes[end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(n > 0, "the body ended early");
        body.extend_from_slice(&buffer[..n]);
    }
    Received {
        headers,
        body: String::from_utf8(body).unwrap(),
    }
}

const SECRET_ALL: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECRET_CANCELLED: &str = "whsec_c2Vjb25kIHNlY3JldCBvZiB0aGUgdGVzdHMh";

fn webhook(url: &str, secret: &str, events: Option<&str>) -> String {
    let events = events.map_or(String::new(), |e| format!("events = [{e:?}]\n"));
    format!("\n[[jobs.webhooks]]\nurl = {url:?}\nsecret = {secret:?}\n{events}")
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The job's webhook deliveries, as its status shows them.
async fn deliveries(base: &str, id: &str) -> Vec<Value> {
    status(base, id).await["webhooks"].as_array().unwrap().clone()
}

#[tokio::test]
async fn job_events_reach_subscribed_endpoints_signed_and_a_failed_delivery_is_retried_under_its_id() {
    let (db, directory) = orders_and_big(100, "webhooks").await;
    // The first delivery to `all` gets a 500, its retry (a second later) a redirect, which is not followed: the
    // third attempt (four seconds later) is delivered.
    let all = Receiver::start("/hooks/all", 2).await;
    let cancelled = Receiver::start("/hooks/cancelled?token=x", 0).await;
    let extra = format!(
        "webhook_backoff = \"1s\"\nwebhook_attempts = 3\n{}{}{BIG_DATASET}",
        webhook(&all.url, SECRET_ALL, None),
        webhook(&cancelled.url, SECRET_CANCELLED, Some("export.cancelled")),
    );
    let server = ServerProcess::start(&db, &jobs_config(&directory, &extra)).await;
    let base = server.base.clone();

    // Completed: three attempts, one id, each signed with its own timestamp, the same body.
    let id = create_ok(&base, json!({ "dataset": "orders" })).await;
    let done = wait_completed(&base, std::slice::from_ref(&id), Duration::from_secs(60)).await;
    let attempts = all.wait_for(3).await;
    let first = &attempts[0];
    for attempt in &attempts[1..3] {
        assert_eq!(attempt.header("webhook-id"), first.header("webhook-id"));
        assert_eq!(attempt.body, first.body, "a retry sends the same body");
    }
    for attempt in &attempts[..3] {
        assert!(attempt.verifies(SECRET_ALL), "{attempt:?}");
        assert!(!attempt.verifies(SECRET_CANCELLED));
        assert_eq!(attempt.header("content-type"), "application/json");
        let timestamp: i64 = attempt.header("webhook-timestamp").parse().unwrap();
        assert!((now() - timestamp).abs() < 600, "{timestamp}");
    }
    let event = first.json();
    assert_eq!(event["type"], "export.completed");
    assert!(event["timestamp"].as_str().unwrap().ends_with('Z'), "{event}");
    let data = &event["data"];
    assert_eq!(data["id"], id.as_str());
    assert_eq!(data["status"], "completed");
    assert_eq!(data["rows_written"], 100);
    assert_eq!(data["download_url"], format!("/v1/exports/{id}/download"));
    // The data is the export's status as it ended.
    for field in [
        "dataset",
        "format",
        "rows_written",
        "bytes_written",
        "finished_at",
        "status_url",
    ] {
        assert_eq!(data[field], done[0][field], "{field}");
    }
    // The export records the delivery, under the id the endpoint saw.
    let recorded = wait_for(Duration::from_secs(60), || async {
        let deliveries = deliveries(&base, &id).await;
        (deliveries.len() == 1 && deliveries[0]["status"] == "delivered").then_some(deliveries)
    })
    .await;
    assert_eq!(recorded[0]["id"], first.header("webhook-id"));
    assert_eq!(recorded[0]["event"], "export.completed");
    assert_eq!(recorded[0]["attempts"], 3, "the redirect was not followed");
    assert!(
        recorded[0]["last_error"].as_str().unwrap().contains("307"),
        "{recorded:?}"
    );
    assert!(cancelled.received().is_empty(), "subscribed to export.cancelled only");
    let metrics = reqwest::get(format!("http://{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (outcome, count) in [("retried", 2), ("delivered", 1)] {
        let line =
            format!("pgspout_webhook_deliveries_total{{event=\"export.completed\",outcome=\"{outcome}\"}} {count}");
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }

    // Cancelled: both endpoints, each signed with its own secret.
    let long = create_ok(&base, json!({ "dataset": "big" })).await;
    wait_until_running(&base, &long).await;
    let response = reqwest::Client::new()
        .delete(format!("http://{base}/v1/exports/{long}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let to_cancelled = cancelled.wait_for(1).await;
    assert!(to_cancelled[0].verifies(SECRET_CANCELLED));
    assert_eq!(to_cancelled[0].json()["type"], "export.cancelled");
    assert_eq!(to_cancelled[0].json()["data"]["id"], long.as_str());
    assert_eq!(to_cancelled[0].json()["data"]["status"], "cancelled");
    let to_all = all.wait_for(4).await;
    assert!(to_all[3].verifies(SECRET_ALL));
    assert_eq!(to_all[3].json()["type"], "export.cancelled");
    assert_ne!(to_all[3].header("webhook-id"), to_cancelled[0].header("webhook-id"));

    // Failed: the reason travels in the data.
    let doomed = create_ok(&base, json!({ "dataset": "big" })).await;
    wait_until_running(&base, &doomed).await;
    db.client.batch_execute("DROP VIEW big").await.unwrap();
    let to_all = all.wait_for(5).await;
    let failed = to_all[4].json();
    assert_eq!(failed["type"], "export.failed");
    assert_eq!(failed["data"]["id"], doomed.as_str());
    assert!(failed["data"]["error"].as_str().unwrap().contains("big"), "{failed}");
    assert_eq!(cancelled.received().len(), 1, "{:?}", cancelled.received());
    drop(server);
    std::fs::remove_dir_all(&directory).unwrap();
}

#[tokio::test]
async fn a_delivery_the_endpoint_never_answers_times_out_and_is_retried_under_its_id() {
    let (db, directory) = orders_and_big(10, "webhooks-timeout").await;
    let endpoint = Receiver::start_silent("/hooks", 1, 0).await;
    let extra = format!(
        // The endpoint answers the retry at once: three seconds is hundreds of times what that takes.
        "webhook_backoff = \"1s\"\nwebhook_attempts = 3\nwebhook_timeout = \"3s\"\n{}",
        webhook(&endpoint.url, SECRET_ALL, Some("export.completed"))
    );
    let server = ServerProcess::start(&db, &jobs_config(&directory, &extra)).await;
    let id = create_ok(&server.base, json!({ "dataset": "orders" })).await;
    let attempts = endpoint.wait_for(2).await;
    assert_eq!(attempts[1].header("webhook-id"), attempts[0].header("webhook-id"));
    assert_eq!(attempts[1].body, attempts[0].body);
    assert!(attempts[1].verifies(SECRET_ALL));
    let recorded = wait_for(Duration::from_secs(60), || async {
        let deliveries = deliveries(&server.base, &id).await;
        (deliveries.len() == 1 && deliveries[0]["status"] == "delivered").then_some(deliveries)
    })
    .await;
    assert_eq!(recorded[0]["attempts"], 2, "{recorded:?}");
    assert!(
        recorded[0]["last_error"].as_str().unwrap().contains("timed out"),
        "{recorded:?}"
    );
    assert_eq!(endpoint.received().len(), 2);
    drop(server);
    std::fs::remove_dir_all(&directory).unwrap();
}

async fn wait_until_running(base: &str, id: &str) {
    wait_for(Duration::from_secs(60), || async {
        (status(base, id).await["status"] == "running").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_pending_delivery_survives_kill_9_and_is_delivered_by_the_next_instance_under_its_id() {
    let (db, directory) = orders_and_big(10, "webhooks-kill").await;
    // Every attempt fails until the endpoint is mended.
    let endpoint = Receiver::start("/hooks", usize::MAX).await;
    let extra = format!(
        // A short timeout keeps short the claim of an attempt the kill cuts off (twice it, plus 10 s).
        "webhook_backoff = \"1s\"\nwebhook_attempts = 50\nwebhook_timeout = \"2s\"\n{}",
        webhook(&endpoint.url, SECRET_ALL, Some("export.completed"))
    );
    let config = jobs_config(&directory, &extra);
    let mut server = ServerProcess::start(&db, &config).await;
    let id = create_ok(&server.base, json!({ "dataset": "orders" })).await;
    let refused = endpoint.wait_for(1).await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let pending: String = db
        .client
        .query_one("SELECT status FROM pgspout.webhook_deliveries", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, "pending");

    *endpoint.failing.lock().unwrap() = 0;
    let server = ServerProcess::start(&db, &config).await;
    let recorded = wait_for(Duration::from_secs(120), || async {
        let deliveries = deliveries(&server.base, &id).await;
        (deliveries.len() == 1 && deliveries[0]["status"] == "delivered").then_some(deliveries)
    })
    .await;
    let received = endpoint.received();
    let delivered = received.last().unwrap();
    assert_eq!(delivered.header("webhook-id"), refused[0].header("webhook-id"));
    assert_eq!(delivered.body, refused[0].body);
    assert!(delivered.verifies(SECRET_ALL));
    // An attempt the kill cut off before it was sent counts too.
    assert!(
        recorded[0]["attempts"].as_i64().unwrap() >= received.len() as i64,
        "{recorded:?}"
    );
    drop(server);
    std::fs::remove_dir_all(&directory).unwrap();
}
