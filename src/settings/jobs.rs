//! `[jobs]`: background exports written to files.

use std::time::Duration;

use serde::Deserialize;

use super::longer_than_zero;

/// `[jobs]`: background exports written to files.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobSettings {
    /// Where export files are written. Unset (and no `storage`): background exports are off (and no schema
    /// is created). Instances that share a database must share this directory.
    pub directory: Option<std::path::PathBuf>,
    /// Object storage for export files instead of `directory`: `s3://bucket/prefix`.
    pub storage: Option<String>,
    /// How long the presigned URL a download redirects to is valid (object storage).
    #[serde(with = "humantime_serde")]
    pub presign_expiry: Duration,
    /// How a file in object storage is downloaded: a redirect to a presigned URL, or through pgspout.
    pub download: Download,
    /// `[jobs.s3]`: the object store, over the AWS environment variables of the same meaning.
    pub s3: S3Settings,
    /// The schema pgspout creates for its job table.
    pub schema: String,
    /// Jobs this instance runs at once.
    pub max_running: usize,
    /// The most connections one job reads on (`"parallelism"` when it is created is capped at this).
    pub max_parallelism: usize,
    /// Jobs that may wait in the queue (all instances together); beyond it, creating one is a 503.
    pub max_queued: i64,
    /// How long a finished file is kept.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// A running job's lease: renewed every third of it; a job whose lease ran out is taken over.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How often an idle instance looks for queued jobs (and sweeps expired files).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Rows between checkpoints.
    pub batch_rows: u64,
    /// Runs a job may take (each interrupted run counts) before it is marked failed.
    pub max_attempts: i32,
    /// A batch that takes longer (stuck on a lock, a silent connection) ends the run; the job is retried.
    #[serde(with = "humantime_serde")]
    pub batch_timeout: Duration,
    /// `[[jobs.webhooks]]`: endpoints told when a job ends, as Standard Webhooks specifies.
    pub webhooks: Vec<WebhookSettings>,
    /// How long one delivery may take before it counts as failed and is retried.
    #[serde(with = "humantime_serde")]
    pub webhook_timeout: Duration,
    /// Deliveries of one event to one endpoint, the first included, before it is marked failed.
    pub webhook_attempts: i32,
    /// The wait before the first retry; each further retry waits four times longer, up to ten hours.
    #[serde(with = "humantime_serde")]
    pub webhook_backoff: Duration,
}

/// How `GET /v1/exports/{id}/download` serves a file in object storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Download {
    /// `303 See Other` to a presigned URL.
    Redirect,
    /// pgspout streams the object (for clients that cannot follow redirects, or private buckets).
    Proxy,
}

/// `[jobs.s3]`: each key overrides the AWS environment variable of the same meaning.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Settings {
    /// `AWS_ENDPOINT_URL`: an S3-compatible server (MinIO, Ceph, R2, s3s); path-style URLs then.
    pub endpoint: Option<String>,
    /// `AWS_REGION` (or `AWS_DEFAULT_REGION`); `us-east-1` when neither is set.
    pub region: Option<String>,
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<Hidden>,
    /// `AWS_SESSION_TOKEN`.
    pub session_token: Option<Hidden>,
    /// The size of each part of a multipart upload but the last: at least 5 MiB (S3's minimum).
    pub part_size: usize,
}

impl Default for S3Settings {
    fn default() -> Self {
        S3Settings {
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            part_size: 8 << 20,
        }
    }
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("part_size", &self.part_size)
            .finish_non_exhaustive()
    }
}

/// A secret setting; its `Debug` does not show it.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Hidden(pub String);

impl std::fmt::Debug for Hidden {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("…")
    }
}

/// One `[[jobs.webhooks]]` endpoint.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Where events are POSTed: an `http://` or `https://` URL. Redirects are not followed.
    pub url: String,
    /// The signing secret, `whsec_` and the key in base64.
    pub secret: WebhookSecret,
    /// The events sent here (all three when unset).
    #[serde(default = "WebhookEvent::all")]
    pub events: Vec<WebhookEvent>,
}

/// An event a webhook is sent for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum WebhookEvent {
    /// A job's file is complete.
    #[serde(rename = "export.completed")]
    Completed,
    /// A job failed.
    #[serde(rename = "export.failed")]
    Failed,
    /// A job was cancelled.
    #[serde(rename = "export.cancelled")]
    Cancelled,
}

impl WebhookEvent {
    /// Its name, the body's `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::Completed => "export.completed",
            WebhookEvent::Failed => "export.failed",
            WebhookEvent::Cancelled => "export.cancelled",
        }
    }

    fn all() -> Vec<WebhookEvent> {
        vec![WebhookEvent::Completed, WebhookEvent::Failed, WebhookEvent::Cancelled]
    }
}

/// A webhook's signing key, from its `whsec_…` form; its `Debug` does not show it.
#[derive(Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct WebhookSecret(Vec<u8>);

impl WebhookSecret {
    /// The key HMAC-SHA256 signs with.
    pub fn key(&self) -> &[u8] {
        &self.0
    }
}

impl TryFrom<String> for WebhookSecret {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        use base64::Engine as _;
        let encoded = text
            .strip_prefix("whsec_")
            .ok_or("a webhook secret starts with \"whsec_\"")?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| "a webhook secret is \"whsec_\" and base64")?;
        if !(24..=64).contains(&key.len()) {
            return Err("a webhook secret's key is 24 to 64 bytes".into());
        }
        Ok(WebhookSecret(key))
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("whsec_…")
    }
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            directory: None,
            storage: None,
            presign_expiry: Duration::from_secs(15 * 60),
            download: Download::Redirect,
            s3: S3Settings::default(),
            schema: "pgspout".into(),
            max_running: 2,
            max_parallelism: 4,
            max_queued: 1000,
            retention: Duration::from_secs(7 * 24 * 3600),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            batch_rows: 50_000,
            max_attempts: 10,
            batch_timeout: Duration::from_secs(600),
            webhooks: Vec::new(),
            webhook_timeout: Duration::from_secs(15),
            webhook_attempts: 10,
            webhook_backoff: Duration::from_secs(5),
        }
    }
}

impl JobSettings {
    /// Whether background exports are on: their files have somewhere to go.
    pub fn enabled(&self) -> bool {
        self.directory.is_some() || self.storage.is_some()
    }

    fn validate_webhooks(&self) -> Result<(), String> {
        if !self.webhooks.is_empty() && !self.enabled() {
            return Err("jobs.webhooks are sent when jobs end: they need jobs.directory or jobs.storage".into());
        }
        if self.webhook_attempts < 1 {
            return Err("jobs.webhook_attempts must be at least 1".into());
        }
        for webhook in &self.webhooks {
            let url = &webhook.url;
            let parsed: Option<reqwest::Url> = url.parse().ok();
            if !parsed.is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some()) {
                return Err(format!("jobs.webhooks: url {url:?} is not an http:// or https:// URL"));
            }
            if webhook.events.is_empty() {
                return Err(format!("jobs.webhooks: the webhook to {url:?} has no events"));
            }
        }
        Ok(())
    }

    /// `[jobs]`' own rules (checked whether or not jobs are on, for the durations).
    pub(super) fn validate(&self) -> Result<(), String> {
        longer_than_zero(&[
            ("jobs.poll_interval", Some(self.poll_interval)),
            ("jobs.batch_timeout", Some(self.batch_timeout)),
            ("jobs.retention", Some(self.retention)),
            ("jobs.webhook_timeout", Some(self.webhook_timeout)),
            ("jobs.webhook_backoff", Some(self.webhook_backoff)),
            ("jobs.presign_expiry", Some(self.presign_expiry)),
        ])?;
        self.validate_webhooks()?;
        if self.directory.is_some() && self.storage.is_some() {
            return Err("jobs.directory and jobs.storage are exclusive: set one".into());
        }
        if !self.enabled() {
            return Ok(());
        }
        if self.s3.part_size < 5 << 20 || self.s3.part_size > 5 << 30 {
            return Err("jobs.s3.part_size must be from 5 MiB (S3's smallest part) to 5 GiB".into());
        }
        // S3 refuses presigned URLs valid for less than a second or more than seven days.
        if !(Duration::from_secs(1)..=Duration::from_secs(7 * 24 * 3600)).contains(&self.presign_expiry) {
            return Err("jobs.presign_expiry must be from 1s to 7 days".into());
        }
        if self.max_running == 0
            || self.max_parallelism == 0
            || self.max_queued < 1
            || self.batch_rows == 0
            || self.max_attempts < 1
        {
            return Err(
                "jobs.max_running, jobs.max_parallelism, jobs.max_queued, jobs.batch_rows and \
                 jobs.max_attempts must be at least 1"
                    .into(),
            );
        }
        if self.lease < Duration::from_secs(1) {
            return Err("jobs.lease must be at least 1s".into());
        }
        let schema = &self.schema;
        if schema.is_empty()
            || !schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(format!("jobs.schema {schema:?} may hold only a-z, 0-9 and '_'"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<JobSettings, String> {
        let settings: JobSettings = toml::from_str(text).map_err(|e| e.to_string())?;
        settings.validate()?;
        Ok(settings)
    }

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn webhooks_take_all_events_by_default_and_keep_their_secret_out_of_debug() {
        let settings = parse(&format!(
            "directory = \"/tmp/x\"\n[[webhooks]]\nurl = \"https://example.com/h\"\nsecret = \"{SECRET}\"\n\
             [[webhooks]]\nurl = \"http://127.0.0.1:9/h\"\nsecret = \"{SECRET}\"\nevents = [\"export.failed\"]\n"
        ))
        .unwrap();
        assert_eq!(settings.webhooks[0].events.len(), 3);
        assert_eq!(settings.webhooks[1].events, [WebhookEvent::Failed]);
        assert_eq!(settings.webhooks[0].secret.key().len(), 24);
        let debug = format!("{settings:?}");
        assert!(!debug.contains("MfKQ9r8G"), "{debug}");
    }

    #[test]
    fn object_storage_is_exclusive_with_a_directory_and_takes_parts_s3_accepts() {
        let settings = parse("storage = \"s3://b/p\"\n[s3]\nsecret_access_key = \"hush\"").unwrap();
        assert!(settings.enabled());
        assert_eq!(
            (settings.s3.part_size, settings.download),
            (8 << 20, Download::Redirect)
        );
        assert!(!format!("{settings:?}").contains("hush"));
        for (text, expected) in [
            ("storage = \"s3://b\"\ndirectory = \"/tmp/x\"", "exclusive"),
            ("storage = \"s3://b\"\n[s3]\npart_size = 1048576", "5 MiB"),
            ("storage = \"s3://b\"\npresign_expiry = \"8d\"", "7 days"),
            ("storage = \"s3://b\"\ndownload = \"inline\"", "redirect"),
        ] {
            let error = parse(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn bad_webhooks_are_config_errors_that_say_what_is_wrong() {
        let hook = |url: &str, secret: &str, events: &str| {
            format!("directory = \"/tmp/x\"\n[[webhooks]]\nurl = \"{url}\"\nsecret = \"{secret}\"\n{events}")
        };
        for (text, expected) in [
            (
                hook("https://e.com", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", ""),
                "starts with \"whsec_\"",
            ),
            (hook("https://e.com", "whsec_not base64!", ""), "base64"),
            (hook("https://e.com", "whsec_c2hvcnQ=", ""), "24 to 64 bytes"),
            (hook("ftp://e.com/x", SECRET, ""), "not an http:// or https:// URL"),
            (hook("https://e.com", SECRET, "events = []"), "has no events"),
            (
                hook("https://e.com", SECRET, "events = [\"export.started\"]"),
                "export.started",
            ),
            (
                format!("[[webhooks]]\nurl = \"https://e.com\"\nsecret = \"{SECRET}\""),
                "need jobs.directory or jobs.storage",
            ),
            (
                "directory = \"/tmp/x\"\nwebhook_attempts = 0".to_owned(),
                "webhook_attempts",
            ),
        ] {
            let error = parse(&text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
