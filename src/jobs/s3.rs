//! Job files in S3-compatible object storage (`jobs.storage = "s3://bucket/prefix"`): the requests pgspout
//! makes, each signed with SigV4 in its query string (rusty-s3) and sent with the HTTP client pgspout has
//! (reqwest). Path-style URLs when an endpoint is given (MinIO, Ceph, R2, s3s), virtual-hosted ones on AWS.

use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use rusty_s3::actions::{CompleteMultipartUpload, CreateMultipartUpload, ListObjectsV2};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use crate::settings::JobSettings;

/// How long the URLs of pgspout's own requests are valid: a part's upload must start within it.
const SIGNED_FOR: Duration = Duration::from_secs(15 * 60);

/// What an S3 request failed with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum S3Error {
    /// No answer (a refused connection, a timeout, a cut body).
    #[error("{action}: {source}")]
    Http {
        /// What was asked.
        action: &'static str,
        /// Why it failed.
        #[source]
        source: reqwest::Error,
    },
    /// An error answer.
    #[error("{action}: the object store answered {status}: {code}")]
    Refused {
        /// What was asked.
        action: &'static str,
        /// Its status.
        status: StatusCode,
        /// The S3 error code (`NoSuchUpload`, `AccessDenied`, …), or the body's start.
        code: String,
    },
    /// An answer that does not parse.
    #[error("{action}: an answer that does not parse: {detail}")]
    Unreadable {
        /// What was asked.
        action: &'static str,
        /// What is wrong with it.
        detail: String,
    },
}

impl S3Error {
    /// Whether the upload (or object) asked about does not exist: aborted, completed, or expired.
    pub(crate) fn is_missing(&self) -> bool {
        matches!(self, S3Error::Refused { status, .. } if *status == StatusCode::NOT_FOUND)
    }
}

/// A part already in a multipart upload.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ListedPart {
    /// Its number, from 1.
    pub(crate) number: u16,
    /// Its entity tag, if the store lists it.
    pub(crate) etag: Option<String>,
    /// Its size.
    pub(crate) size: u64,
}

/// One bucket and key prefix, with the credentials to use them.
pub(crate) struct ObjectStore {
    bucket: Bucket,
    credentials: Credentials,
    prefix: String,
    client: reqwest::Client,
    /// The size of every part of an upload but the last.
    pub(crate) part_size: usize,
    /// How long a download's presigned URL is valid.
    pub(crate) presign_expiry: Duration,
    /// How long one of pgspout's own requests may take (`jobs.batch_timeout`): a stuck upload ends the run.
    timeout: Duration,
    /// What `storage` names, for messages.
    location: String,
}

impl std::fmt::Debug for ObjectStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.location)
    }
}

/// An environment variable, unless unset or empty.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl ObjectStore {
    /// The store `settings.storage` names, with `[jobs.s3]` over the AWS environment variables.
    pub(crate) fn new(settings: &JobSettings, storage: &str) -> Result<ObjectStore, String> {
        let (bucket, prefix) = parse_location(storage)?;
        let s3 = &settings.s3;
        let region = (s3.region.clone())
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        let endpoint = (s3.endpoint.clone())
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"));
        let (endpoint, style) = match endpoint {
            Some(url) => (url, UrlStyle::Path),
            None => (format!("https://s3.{region}.amazonaws.com"), UrlStyle::VirtualHost),
        };
        let endpoint = endpoint
            .parse()
            .map_err(|e| format!("jobs.s3.endpoint {endpoint:?}: {e}"))?;
        let bucket = Bucket::new(endpoint, style, bucket.to_owned(), region)
            .map_err(|e| format!("jobs.storage {storage:?}: {e}"))?;
        let key = s3.access_key_id.clone().or_else(|| env("AWS_ACCESS_KEY_ID"));
        let secret = (s3.secret_access_key.as_ref().map(|s| s.0.clone())).or_else(|| env("AWS_SECRET_ACCESS_KEY"));
        let token = (s3.session_token.as_ref().map(|s| s.0.clone())).or_else(|| env("AWS_SESSION_TOKEN"));
        let (Some(key), Some(secret)) = (key, secret) else {
            return Err(
                "jobs.storage needs credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                        (or jobs.s3.access_key_id and jobs.s3.secret_access_key)"
                    .into(),
            );
        };
        let credentials = match token {
            Some(token) => Credentials::new_with_token(key, secret, token),
            None => Credentials::new(key, secret),
        };
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // A proxied download may take hours, but not a minute without a byte.
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("an HTTP client for jobs.storage: {e}"))?;
        Ok(ObjectStore {
            bucket,
            credentials,
            prefix: prefix.to_owned(),
            client,
            part_size: s3.part_size,
            presign_expiry: settings.presign_expiry,
            timeout: settings.batch_timeout,
            location: storage.to_owned(),
        })
    }

    /// A short digest of the bucket's URL and the prefix, to name what is this store's alone.
    pub(crate) fn digest(&self) -> String {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(format!("{}{}", self.bucket.base_url(), self.prefix));
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The key of the object named `name` under the prefix.
    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Sends a signed request, and reads the answer's body unless it is an error.
    async fn send(
        &self,
        action: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<(reqwest::header::HeaderMap, String), S3Error> {
        // Without the URL: its query string is a signature, a credential for the time it is valid.
        let http = |source: reqwest::Error| S3Error::Http {
            action,
            source: source.without_url(),
        };
        let response = request.timeout(self.timeout).send().await.map_err(http)?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.text().await.map_err(http)?;
        // CompleteMultipartUpload may fail after its 200: the error is then the body.
        if !status.is_success() || body.contains("<Error>") {
            return Err(S3Error::Refused {
                action,
                status: if status.is_success() {
                    StatusCode::BAD_GATEWAY
                } else {
                    status
                },
                code: error_code(&body),
            });
        }
        Ok((headers, body))
    }

    /// Starts a multipart upload to `key`; its id.
    pub(crate) async fn create_upload(&self, key: &str) -> Result<String, S3Error> {
        let action = "CreateMultipartUpload";
        let url = self
            .bucket
            .create_multipart_upload(Some(&self.credentials), key)
            .sign(SIGNED_FOR);
        let (_, body) = self.send(action, self.client.post(url)).await?;
        let created = CreateMultipartUpload::parse_response(&body).map_err(|e| S3Error::Unreadable {
            action,
            detail: e.to_string(),
        })?;
        Ok(created.upload_id().to_owned())
    }

    /// Uploads part `number` (from 1); its entity tag.
    pub(crate) async fn upload_part(
        &self,
        key: &str,
        upload: &str,
        number: u16,
        bytes: Bytes,
    ) -> Result<String, S3Error> {
        let action = "UploadPart";
        let url = self
            .bucket
            .upload_part(Some(&self.credentials), key, number, upload)
            .sign(SIGNED_FOR);
        let (headers, _) = self.send(action, self.client.put(url).body(bytes)).await?;
        headers
            .get(reqwest::header::ETAG)
            .and_then(|tag| tag.to_str().ok())
            .map(str::to_owned)
            .ok_or(S3Error::Unreadable {
                action,
                detail: "no ETag".into(),
            })
    }

    /// The parts of upload `upload`, by number. Read leniently: a store may leave out the parts' entity
    /// tags (s3s-fs does), and some answer an upload that is gone with no parts rather than `NoSuchUpload`.
    pub(crate) async fn list_parts(&self, key: &str, upload: &str) -> Result<Vec<ListedPart>, S3Error> {
        let action = "ListParts";
        let mut parts: Vec<ListedPart> = Vec::new();
        let mut marker = None;
        loop {
            let mut list = self.bucket.list_parts(Some(&self.credentials), key, upload);
            if let Some(marker) = marker {
                list.set_part_number_marker(marker);
            }
            let (_, body) = self.send(action, self.client.get(list.sign(SIGNED_FOR))).await?;
            let listed = parse_parts(&body).ok_or_else(|| S3Error::Unreadable {
                action,
                detail: "a part without a number or size".into(),
            })?;
            let truncated = element(&body, "IsTruncated") == Some("true");
            marker = parts.iter().chain(&listed).map(|p| p.number).max();
            let more = truncated && !listed.is_empty();
            parts.extend(listed);
            if !more {
                parts.sort_by_key(|p| p.number);
                return Ok(parts);
            }
        }
    }

    /// Completes upload `upload` from its parts' entity tags, in order: the object appears, whole.
    pub(crate) async fn complete_upload(&self, key: &str, upload: &str, etags: &[String]) -> Result<(), S3Error> {
        let complete: CompleteMultipartUpload<'_, _> = self.bucket.complete_multipart_upload(
            Some(&self.credentials),
            key,
            upload,
            etags.iter().map(String::as_str),
        );
        let url = complete.sign(SIGNED_FOR);
        let body = complete.body();
        self.send("CompleteMultipartUpload", self.client.post(url).body(body))
            .await
            .map(drop)
    }

    /// Aborts upload `upload`, freeing its parts; one already gone is no error.
    pub(crate) async fn abort_upload(&self, key: &str, upload: &str) -> Result<(), S3Error> {
        let url = self
            .bucket
            .abort_multipart_upload(Some(&self.credentials), key, upload)
            .sign(SIGNED_FOR);
        match self.send("AbortMultipartUpload", self.client.delete(url)).await {
            Err(error) if error.is_missing() => Ok(()),
            other => other.map(drop),
        }
    }

    /// Stores a small object whole.
    pub(crate) async fn put(&self, key: &str, bytes: Bytes) -> Result<(), S3Error> {
        let url = self.bucket.put_object(Some(&self.credentials), key).sign(SIGNED_FOR);
        self.send("PutObject", self.client.put(url).body(bytes)).await.map(drop)
    }

    /// Deletes an object; one already gone is no error (S3 says so itself).
    pub(crate) async fn delete(&self, key: &str) -> Result<(), S3Error> {
        let url = self.bucket.delete_object(Some(&self.credentials), key).sign(SIGNED_FOR);
        match self.send("DeleteObject", self.client.delete(url)).await {
            Err(error) if error.is_missing() => Ok(()),
            other => other.map(drop),
        }
    }

    /// The keys of the objects whose names start with `name` (under the prefix).
    pub(crate) async fn list(&self, name: &str) -> Result<Vec<String>, S3Error> {
        let action = "ListObjectsV2";
        let prefix = self.key(name);
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut list = self.bucket.list_objects_v2(Some(&self.credentials));
            list.with_prefix(prefix.as_str());
            if let Some(token) = &token {
                list.with_continuation_token(token.clone());
            }
            let (_, body) = self.send(action, self.client.get(list.sign(SIGNED_FOR))).await?;
            let listed = ListObjectsV2::parse_response(&body).map_err(|e| S3Error::Unreadable {
                action,
                detail: e.to_string(),
            })?;
            keys.extend(listed.contents.into_iter().map(|c| c.key));
            match listed.next_continuation_token {
                Some(next) => token = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// The name (the key without the prefix) of `key`.
    pub(crate) fn name_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(&self.prefix)
    }

    /// A URL that lets whoever holds it read `key` for `presign_expiry`, answered with `media_type` and as
    /// an attachment named `file_name`.
    pub(crate) fn presigned_get(&self, key: &str, media_type: &str, file_name: &str) -> reqwest::Url {
        let mut get = self.bucket.get_object(Some(&self.credentials), key);
        let query = get.query_mut();
        query.insert("response-content-type", media_type.to_owned());
        query.insert(
            "response-content-disposition",
            format!("attachment; filename=\"{file_name}\""),
        );
        get.sign(self.presign_expiry)
    }

    /// Sends a GET (or HEAD) of `key` with `headers` (a range, validators), for pgspout to pass on.
    pub(crate) async fn fetch(
        &self,
        key: &str,
        head: bool,
        headers: reqwest::header::HeaderMap,
    ) -> Result<reqwest::Response, S3Error> {
        let (method, url) = if head {
            let url = self.bucket.head_object(Some(&self.credentials), key).sign(SIGNED_FOR);
            (reqwest::Method::HEAD, url)
        } else {
            let url = self.bucket.get_object(Some(&self.credentials), key).sign(SIGNED_FOR);
            (reqwest::Method::GET, url)
        };
        let action = if head { "HeadObject" } else { "GetObject" };
        self.client
            .request(method, url)
            .headers(headers)
            .send()
            .await
            .map_err(|source| S3Error::Http {
                action,
                source: source.without_url(),
            })
    }

    /// Whether pgspout can write, read back and delete objects under the prefix: writes one, then removes it.
    pub(crate) async fn check(&self) -> Result<(), S3Error> {
        let key = self.key(&format!(".pgspout-check-{}", uuid::Uuid::new_v4()));
        self.put(&key, Bytes::from_static(b"pgspout check\n")).await?;
        let url = self.bucket.get_object(Some(&self.credentials), &key).sign(SIGNED_FOR);
        let (_, body) = self.send("GetObject", self.client.get(url)).await?;
        if body != "pgspout check\n" {
            return Err(S3Error::Unreadable {
                action: "GetObject",
                detail: "the object read back differs from the one written".into(),
            });
        }
        self.delete(&key).await
    }
}

/// `s3://bucket/prefix` as its bucket and key prefix (ending in `/` unless empty).
fn parse_location(storage: &str) -> Result<(&str, String), String> {
    let rest = storage
        .strip_prefix("s3://")
        .ok_or_else(|| format!("jobs.storage {storage:?} is not an s3://bucket/prefix URL"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(format!("jobs.storage {storage:?} names no bucket"));
    }
    let prefix = prefix.trim_matches('/');
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    Ok((bucket, prefix))
}

/// The text of the first `<name>` element in `xml`.
fn element<'x>(xml: &'x str, name: &str) -> Option<&'x str> {
    let (_, rest) = xml.split_once(&format!("<{name}>"))?;
    Some(rest.split_once(&format!("</{name}>"))?.0)
}

/// The `<Part>`s of a ListParts answer; `None` if one lacks its number or size.
fn parse_parts(xml: &str) -> Option<Vec<ListedPart>> {
    xml.split("<Part>")
        .skip(1)
        .map(|part| {
            let part = part.split_once("</Part>").map_or(part, |(part, _)| part);
            Some(ListedPart {
                number: element(part, "PartNumber")?.trim().parse().ok()?,
                etag: element(part, "ETag").map(|tag| tag.trim().replace("&quot;", "\"")),
                size: element(part, "Size")?.trim().parse().ok()?,
            })
        })
        .collect()
}

/// The `<Code>` of an S3 error body, else its start.
fn error_code(body: &str) -> String {
    match element(body, "Code") {
        Some(code) => code.to_owned(),
        None => body.chars().take(200).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_location_is_a_bucket_and_a_prefix_ending_in_a_slash() {
        assert_eq!(parse_location("s3://b").unwrap(), ("b", String::new()));
        assert_eq!(parse_location("s3://b/").unwrap(), ("b", String::new()));
        assert_eq!(parse_location("s3://b/x/y/").unwrap(), ("b", "x/y/".into()));
        assert!(parse_location("s3:///x").unwrap_err().contains("no bucket"));
        assert!(parse_location("https://b/x").unwrap_err().contains("not an s3://"));
        assert_eq!(
            error_code("<?xml?><Error><Code>NoSuchUpload</Code></Error>"),
            "NoSuchUpload"
        );
    }

    #[test]
    fn listed_parts_are_read_with_or_without_their_entity_tags() {
        let aws = "<ListPartsResult><Bucket>b</Bucket><IsTruncated>false</IsTruncated>\
                   <Part><PartNumber>2</PartNumber><ETag>&quot;b2&quot;</ETag><Size>3</Size></Part>\
                   <Part><PartNumber>1</PartNumber><ETag>\"a1\"</ETag><Size>5242880</Size></Part></ListPartsResult>";
        let parts = parse_parts(aws).unwrap();
        assert_eq!(parts[0].etag.as_deref(), Some("\"b2\""));
        assert_eq!((parts[1].number, parts[1].size), (1, 5_242_880));
        let bare = "<ListPartsResult><Part><LastModified>x</LastModified><PartNumber>1</PartNumber>\
                    <Size>7</Size></Part></ListPartsResult>";
        assert_eq!(
            parse_parts(bare).unwrap(),
            [ListedPart {
                number: 1,
                etag: None,
                size: 7
            }]
        );
        assert_eq!(parse_parts("<ListPartsResult></ListPartsResult>").unwrap(), []);
        assert!(parse_parts("<Part><PartNumber>1</PartNumber></Part>").is_none());
    }
}
