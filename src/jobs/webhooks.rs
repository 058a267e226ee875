//! Webhooks, as Standard Webhooks specifies: each event is POSTed to each endpoint subscribed to it, with
//! `webhook-id`, `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
//!
//! Deliveries come from the queue in Postgres (`db::jobs::webhooks`), so any instance delivers them and a
//! restart loses none. A delivery that fails (not a 2xx, a redirect, a timeout, no connection) is retried
//! under the same id with the same body, after `jobs.webhook_backoff` and four times longer each time (up
//! to ten hours), until `jobs.webhook_attempts`; its status and last error show on the export.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::watch;

use super::{BoxError, Context};
use crate::db::jobs::Delivery;
use crate::report::chain;
use crate::settings::WebhookSettings;

/// Deliveries claimed at once.
const BATCH: usize = 16;

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10 * 3600);

/// What sends webhooks: one HTTP client (no redirects), the endpoints and their keys.
pub(super) struct Sender {
    client: reqwest::Client,
    endpoints: Vec<WebhookSettings>,
}

impl Sender {
    /// A sender for `endpoints`, or `None` without any.
    pub(super) fn new(endpoints: &[WebhookSettings], timeout: Duration) -> Result<Option<Sender>, reqwest::Error> {
        if endpoints.is_empty() {
            return Ok(None);
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("pgspout/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Some(Sender {
            client,
            endpoints: endpoints.to_vec(),
        }))
    }

    /// Sends one attempt of `delivery`; `Err` says why it failed.
    async fn send(&self, delivery: &Delivery) -> Result<(), String> {
        let endpoint = self
            .endpoints
            .iter()
            .find(|e| e.url == delivery.url)
            .ok_or("no endpoint with this URL is configured")?;
        let id = delivery.id.to_string();
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signature = sign(endpoint.secret.key(), &id, timestamp, &delivery.body);
        let response = self
            .client
            .post(&delivery.url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(delivery.body.clone())
            .send()
            .await
            // The URL may carry a token of the endpoint's: it stays out of the error, which the export shows.
            .map_err(|e| chain(&e.without_url()))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {status}"))
        }
    }
}

/// The Standard Webhooks signature of one attempt.
fn sign(key: &[u8], id: &str, timestamp: u64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body.as_bytes());
    let digest = mac.finalize().into_bytes();
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(digest))
}

/// The wait after failed attempt `attempt` (from 1): `backoff`, four times longer each time, at most
/// [`MAX_BACKOFF`]; `None` once `attempts` are used up.
fn retry_after(attempt: i32, attempts: i32, backoff: Duration) -> Option<Duration> {
    if attempt >= attempts {
        return None;
    }
    let factor = 4u32.saturating_pow(attempt.clamp(1, 16) as u32 - 1);
    Some(backoff.saturating_mul(factor).min(MAX_BACKOFF))
}

/// How long a delivery can stay pending while an instance serves its endpoint: every wait between
/// attempts, and a claim's lease for each attempt.
pub(super) fn longest_delivery(settings: &crate::settings::JobSettings) -> Duration {
    let waits = (1..settings.webhook_attempts)
        .filter_map(|attempt| retry_after(attempt, settings.webhook_attempts, settings.webhook_backoff))
        .fold(Duration::ZERO, Duration::saturating_add);
    let claims = claim_lease(settings).saturating_mul(settings.webhook_attempts as u32);
    waits.saturating_add(claims)
}

/// How long a claimed delivery is held for its attempt: past it, it comes due again.
fn claim_lease(settings: &crate::settings::JobSettings) -> Duration {
    settings.webhook_timeout * 2 + Duration::from_secs(10)
}

impl Context {
    /// Delivers due webhooks until the runner stops: a batch at a time, its deliveries concurrently.
    pub(super) async fn deliver_webhooks(self: Arc<Self>, sender: Sender, mut stop: watch::Receiver<bool>) {
        let urls: Vec<String> = sender.endpoints.iter().map(|e| e.url.clone()).collect();
        let lease = claim_lease(&self.settings);
        while !*stop.borrow() {
            let claimed = self
                .pool
                .with(async |client| {
                    Ok::<_, BoxError>(self.store.claim_deliveries(client, &urls, BATCH as i64, lease).await?)
                })
                .await;
            let claimed = match claimed {
                Ok(claimed) => claimed,
                Err(error) => {
                    tracing::warn!(error = %chain(&*error), "cannot claim webhook deliveries");
                    Vec::new()
                }
            };
            let full = claimed.len() == BATCH;
            futures::future::join_all(claimed.iter().map(|delivery| self.deliver(&sender, delivery))).await;
            if !full {
                tokio::select! {
                    () = tokio::time::sleep(self.settings.poll_interval) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }

    /// One attempt of `delivery`, recorded.
    async fn deliver(&self, sender: &Sender, delivery: &Delivery) {
        let settings = &self.settings;
        let sent = sender.send(delivery).await;
        let retry = retry_after(delivery.attempt, settings.webhook_attempts, settings.webhook_backoff);
        let outcome = match (&sent, retry) {
            (Ok(()), _) => "delivered",
            (Err(_), Some(_)) => "retried",
            (Err(_), None) => "failed",
        };
        self.state.metrics.webhook_delivery(&delivery.event, outcome);
        if let Err(error) = &sent {
            tracing::warn!(delivery = %delivery.id, event = delivery.event, attempt = delivery.attempt, %error, outcome, "a webhook delivery failed");
        }
        let recorded = self
            .pool
            .with(async |client| {
                Ok::<_, BoxError>(
                    self.store
                        .record_delivery(client, delivery, sent.as_ref().err().map(String::as_str), retry)
                        .await?,
                )
            })
            .await;
        if let Err(error) = recorded {
            // Its claim runs out and it is sent again: at least once.
            tracing::warn!(delivery = %delivery.id, error = %chain(&*error), "cannot record a webhook delivery");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification (spec/standard-webhooks.md).
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn retries_wait_four_times_longer_each_time_up_to_ten_hours_then_stop() {
        let base = Duration::from_secs(5);
        assert_eq!(retry_after(1, 8, base), Some(Duration::from_secs(5)));
        assert_eq!(retry_after(2, 8, base), Some(Duration::from_secs(20)));
        assert_eq!(retry_after(3, 8, base), Some(Duration::from_secs(80)));
        assert_eq!(retry_after(7, 10, base), Some(Duration::from_secs(20480)));
        assert_eq!(retry_after(8, 10, base), Some(MAX_BACKOFF));
        assert_eq!(retry_after(9, 10, base), Some(MAX_BACKOFF));
        assert_eq!(retry_after(10, 10, base), None);
        assert_eq!(retry_after(1, 1, base), None);
    }
}
