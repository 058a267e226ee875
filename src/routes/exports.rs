//! `/v1/exports`: background export jobs. Create one, follow its status, download its file (with ranges),
//! cancel or delete it. The jobs themselves run in [`crate::jobs`].

use actix_files::NamedFile;
use actix_web::http::header::{self, ContentDisposition, DispositionParam, DispositionType};
use actix_web::{HttpRequest, HttpResponse, delete, get, post, route, web};
use serde::Deserialize;
use uuid::Uuid;

use super::caller::Caller;
use crate::compress::Encoding;
use crate::dataset::Dataset;
use crate::db::jobs::{Created, Idempotency, JobStatus, NewJob, Requester};
use crate::db::rows::{Next, Rows, Source};
use crate::encode::{FORMATS, Format};
use crate::error::ApiError;
use crate::jobs::s3::ObjectStore;
use crate::jobs::{Storage, file_name};
use crate::query::{self, Endpoint};
use crate::settings::{Download, JobSettings};
use crate::state::{AppState, JobsState, Pools};
use crate::telemetry::request::RequestContext;

/// The body of `POST /v1/exports`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateExport {
    dataset: String,
    #[serde(default = "default_format")]
    format: String,
    #[serde(default = "default_compression")]
    compression: String,
    /// The query string, as for `/rows` (`select`, filters, `order`, `limit`, `after`).
    #[serde(default)]
    query: String,
    /// Connections to read on (at most `jobs.max_parallelism`), each a key range of one snapshot.
    #[serde(default = "default_parallelism")]
    parallelism: u32,
}

fn default_parallelism() -> u32 {
    1
}

fn default_format() -> String {
    "ndjson".into()
}

fn default_compression() -> String {
    "identity".into()
}

fn jobs(state: &AppState) -> Result<&JobsState, ApiError> {
    state.jobs.as_ref().ok_or(ApiError::JobsOff)
}

fn job_id(text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text).map_err(|_| ApiError::UnknownJob(text.to_owned()))
}

/// Validates and queues a job: `202 Accepted` with its `Location`. Every check that can fail runs here,
/// the database's type checks of the values included, so a bad request is a 400 and nothing is queued.
#[post("/v1/exports")]
pub(super) async fn create(
    request: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
    pools: web::Data<Pools>,
    context: RequestContext,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let jobs = jobs(&state)?;
    let bad_body = |error: &dyn std::fmt::Display| {
        ApiError::BadRequest(format!(
            "the body must be a JSON object with \"dataset\" and optionally \"format\", \"compression\" and \
             \"query\" strings and a \"parallelism\" number: {error}"
        ))
    };
    // Parsed as a value first: serde would also take a struct from a JSON array.
    let body: serde_json::Value = serde_json::from_slice(&body).map_err(|e| bad_body(&e))?;
    if !body.is_object() {
        return Err(bad_body(&"not an object"));
    }
    let create: CreateExport = serde_json::from_value(body).map_err(|e| bad_body(&e))?;
    let dataset = state
        .published()
        .catalog
        .get(&create.dataset)
        .ok_or_else(|| ApiError::BadRequest(format!("no dataset is named {:?}", create.dataset)))?;
    let dataset = &*dataset;
    let format = Format::negotiate(Some(&create.format), None)?;
    let Some(file) = format.info().jobs else {
        let formats: Vec<&str> = FORMATS
            .iter()
            .filter(|f| f.jobs.is_some())
            .map(|f| f.names[0])
            .collect();
        return Err(ApiError::BadRequest(format!(
            "a background export's format is one of {}, not {}",
            formats.join(", "),
            format.name()
        )));
    };
    let compression = create.compression.as_str();
    match Encoding::from_name(compression) {
        Some(Encoding::Identity) => {}
        Some(_) if !format.info().compressible => {
            return Err(ApiError::BadRequest(format!(
                "compression: a {} file compresses its own pages; leave compression out",
                format.name()
            )));
        }
        Some(encoding) if encoding.concatenates() => {}
        Some(_) => {
            return Err(ApiError::BadRequest(
                "compression \"br\" cannot be written in resumable pieces; use gzip or zstd".into(),
            ));
        }
        None => {
            return Err(ApiError::BadRequest(format!(
                "compression must be identity, gzip or zstd, not {compression:?}"
            )));
        }
    }
    let key = idempotency_key(&request)?;
    let query = create.query;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.trim_start_matches('?'))
        .map_err(|error| ApiError::BadRequest(format!("query is no query string: {error}")))?;
    let mut parsed = query::params::parse(dataset, Endpoint::Job, &pairs)?;
    let parallelism = parallelism(
        create.parallelism,
        dataset,
        format,
        &parsed,
        file.resumes,
        &jobs.settings,
    )?;
    // The values' type checks, and the query itself, on zero rows.
    parsed.limit = Some(0);
    let (mut rows, _) = Rows::open(
        &pools.readers,
        &caller.begin(&state, &context, &request),
        Source::Statement(query::plan_rows(dataset, &parsed, format, None)),
        None,
    )
    .await
    .map_err(|e| caller.refine(e.into()))?;
    while !matches!(rows.next().await.map_err(|e| caller.refine(e.into()))?, Next::End) {}
    rows.finish().await?;

    let digest = request_digest(&dataset.name, format.name(), compression, &query, parallelism);
    let job = NewJob {
        dataset: &dataset.name,
        format: format.name(),
        compression,
        query: &query,
        // A keyless dataset (or a summary) has no position to continue after, and a columnar file cannot be
        // appended to after its footer: such a job restarts from the first row (and counts it in `restarts`).
        resumable: dataset.key.is_some() && file.resumes && parsed.summary.is_none(),
        requester: caller.identity().map(|identity| Requester {
            owner: &identity.owner,
            role: &identity.role,
            claims: &identity.claims,
        }),
        idempotency: key.as_deref().map(|key| Idempotency { key, digest: &digest }),
        parallelism,
    };
    let created = pools
        .exports
        .with(async |client| Ok::<_, ApiError>(jobs.store.create(client, &job, jobs.settings.max_queued).await?))
        .await?;
    let (id, replayed) = match created {
        Created::New(id) => (id, false),
        Created::Replayed(id) => (id, true),
        Created::KeyReused => return Err(ApiError::IdempotencyKeyReused),
        Created::QueueFull => return Err(ApiError::QueueFull),
    };
    let status_url = format!("/v1/exports/{id}");
    let mut response = HttpResponse::Accepted();
    response.insert_header((header::LOCATION, status_url.clone()));
    if replayed {
        response.insert_header(("Idempotent-Replayed", "true"));
    }
    // A replay answers as the first request was answered.
    Ok(response.json(serde_json::json!({ "id": id.to_string(), "status": "queued", "status_url": status_url })))
}

/// The `Idempotency-Key` header (IETF draft-ietf-httpapi-idempotency-key-header): a Structured Fields string,
/// `"…"`, or the same text bare, as many clients send it; 1 to 255 visible ASCII characters.
fn idempotency_key(request: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = request.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::BadRequest(
            "Idempotency-Key must be a string of 1 to 255 visible ASCII characters, e.g. \"8e03978e-40d5\"".into(),
        )
    };
    let text = value.to_str().map_err(|_| bad())?.trim();
    let key = match text.strip_prefix('"') {
        Some(quoted) => quoted.strip_suffix('"').ok_or_else(bad)?,
        None => text,
    };
    if key.is_empty()
        || key.len() > 255
        || !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        || key.contains(['"', '\\'])
    {
        return Err(bad());
    }
    Ok(Some(key.to_owned()))
}

/// The connections a job asks to read on, capped at `max`. More than one needs what parts can be made of:
/// a key to split into ranges, rows in key order with no overall limit, and a file format whose pieces
/// concatenate.
fn parallelism(
    asked: u32,
    dataset: &Dataset,
    format: Format,
    request: &query::Request,
    concatenates: bool,
    settings: &JobSettings,
) -> Result<i32, ApiError> {
    if asked == 0 {
        return Err(ApiError::BadRequest("parallelism must be at least 1".into()));
    }
    let parallelism = (asked as usize).min(settings.max_parallelism) as i32;
    if parallelism == 1 {
        return Ok(1);
    }
    let refuse = |why: &str| Err(ApiError::BadRequest(format!("parallelism {asked}: {why}")));
    let Some(key) = dataset.key else {
        return refuse(&format!("dataset {:?} has no key to split into ranges", dataset.name));
    };
    if !concatenates {
        return refuse(&format!(
            "a {} file cannot be joined from parts; use ndjson or csv",
            format.name()
        ));
    }
    if request.summary.is_some() {
        return refuse("a summary is one statement; it cannot be split");
    }
    if request.limit.is_some() {
        return refuse("a limit applies to the rows of all parts together; leave it out");
    }
    if request.order.iter().any(|term| term.column != key || term.descending) {
        return refuse("parts follow each other in key order; leave order out");
    }
    Ok(parallelism)
}

/// What an `Idempotency-Key` is checked against: a digest of the request as queued.
fn request_digest(dataset: &str, format: &str, compression: &str, query: &str, parallelism: i32) -> String {
    use sha2::Digest as _;
    // A serial job's digest is what it was before jobs had parallelism, so keys given before still match.
    let canonical = match parallelism {
        1 => serde_json::json!([dataset, format, compression, query]),
        n => serde_json::json!([dataset, format, compression, query, n]),
    }
    .to_string();
    format!("{:x}", sha2::Sha256::digest(canonical.as_bytes()))
}

/// The job's status document, and its status.
async fn status_of(
    jobs: &JobsState,
    pools: &Pools,
    id: Uuid,
    caller: &Caller,
) -> Result<(serde_json::Value, Option<JobStatus>), ApiError> {
    let (document, state) = pools
        .exports
        .with(async |client| Ok::<_, ApiError>(jobs.store.status(client, id, caller.owner()).await?))
        .await?
        .ok_or_else(|| ApiError::UnknownJob(id.to_string()))?;
    let document = serde_json::from_str(&document).map_err(|e| ApiError::Internal(Box::new(e)))?;
    Ok((document, state))
}

/// Status, rows and bytes written, the last key written, timestamps, the error of a failed job, and
/// `download_url` once completed.
#[get("/v1/exports/{id}")]
pub(super) async fn show(
    id: web::Path<String>,
    state: web::Data<AppState>,
    pools: web::Data<Pools>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let jobs = jobs(&state)?;
    let (document, _) = status_of(jobs, &pools, job_id(&id)?, &caller).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(document))
}

/// The finished file. From disk: `Content-Length`, a strong `ETag`, `Last-Modified`, `If-None-Match` (304),
/// and byte ranges (206) so an interrupted download can resume, unless `If-Range` names another version of
/// the file (then all of it, 200). From object storage: `303 See Other` to a presigned URL, or (with
/// `jobs.download = "proxy"`) the object through pgspout, with the store's own validators and ranges.
/// 409 until the job is completed.
#[route("/v1/exports/{id}/download", method = "GET", method = "HEAD")]
pub(super) async fn download(
    request: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
    pools: web::Data<Pools>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let jobs = jobs(&state)?;
    let id = job_id(&id)?;
    let (document, status) = status_of(jobs, &pools, id, &caller).await?;
    if status != Some(JobStatus::Completed) {
        let status = document["status"].as_str().unwrap_or_default().to_owned();
        return Err(ApiError::JobNotCompleted(status));
    }
    let text = |field: &str| document[field].as_str().unwrap_or_default().to_owned();
    let format = Format::negotiate(Some(&text("format")), None)?;
    let encoding = Encoding::from_name(&text("compression"))
        .ok_or_else(|| ApiError::Internal("a job with an unknown compression".into()))?;
    let media_type = encoding.file_media_type().unwrap_or(format.job_file().media_type);
    let name = format!(
        "{}-{id}.{}{}",
        text("dataset"),
        format.job_file().extension,
        encoding.suffix()
    );
    let directory = match &jobs.storage {
        Storage::Directory(directory) => directory,
        Storage::Objects(store) => {
            let key = store.key(&file_name(id, format, encoding));
            return match jobs.settings.download {
                Download::Redirect => Ok(HttpResponse::SeeOther()
                    .insert_header((header::LOCATION, store.presigned_get(&key, media_type, &name).as_str()))
                    .insert_header((header::CACHE_CONTROL, "no-store"))
                    .finish()),
                Download::Proxy => proxy(&request, store, &key, media_type, &name).await,
            };
        }
    };
    let path = directory.join(file_name(id, format, encoding));
    let opened = async || {
        NamedFile::open_async(&path)
            .await
            .map_err(|e| ApiError::Internal(format!("{}: {e}", path.display()).into()))
    };
    let file = opened().await?;
    let file = file
        .set_content_type(
            media_type
                .parse()
                .map_err(|_| ApiError::Internal("a bad media type".into()))?,
        )
        .set_content_disposition(ContentDisposition {
            disposition: DispositionType::Attachment,
            parameters: vec![DispositionParam::Filename(name)],
        });
    let length = file.metadata().len();
    let response = file.into_response(&request);
    // actix-files ignores `If-Range`: a range of a file the client's validator does not name would splice
    // two versions together, so that case gets the whole file instead (RFC 9110, 13.1.5).
    let stale = request.headers().get(header::IF_RANGE).is_some_and(|validator| {
        response.status() == actix_web::http::StatusCode::PARTIAL_CONTENT && !validates(validator, response.headers())
    });
    if !stale {
        return Ok(response);
    }
    let file = opened()
        .await?
        .file()
        .try_clone()
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    let mut whole = HttpResponse::Ok();
    for name in [
        header::CONTENT_TYPE,
        header::CONTENT_DISPOSITION,
        header::ETAG,
        header::LAST_MODIFIED,
        header::ACCEPT_RANGES,
    ] {
        if let Some(value) = response.headers().get(&name) {
            whole.insert_header((name, value.clone()));
        }
    }
    Ok(whole.body(actix_web::body::SizedStream::new(length, read_file(file, length))))
}

/// The object `key` through pgspout: the request's range and validators go to the store, and its answer
/// (200, 206, 304, 412, 416, with its `ETag`, `Last-Modified`, `Content-Range`) comes back, streamed.
/// `If-None-Match` and `If-Range` are also checked here against the store's validators, for stores that
/// ignore them (s3s-fs does).
async fn proxy(
    request: &HttpRequest,
    store: &ObjectStore,
    key: &str,
    media_type: &str,
    name: &str,
) -> Result<HttpResponse, ApiError> {
    use actix_web::http::StatusCode;
    use futures::TryStreamExt as _;
    let mut forwarded = reqwest::header::HeaderMap::new();
    for header in [
        header::RANGE,
        header::IF_RANGE,
        header::IF_NONE_MATCH,
        header::IF_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
    ] {
        if let Some(value) = request.headers().get(&header)
            && let (Ok(name), Ok(value)) = (
                reqwest::header::HeaderName::from_bytes(header.as_str().as_bytes()),
                reqwest::header::HeaderValue::from_bytes(value.as_bytes()),
            )
        {
            forwarded.insert(name, value);
        }
    }
    let head = request.method() == actix_web::http::Method::HEAD;
    let fetch = async |forwarded| {
        let answer = store
            .fetch(key, head, forwarded)
            .await
            .map_err(|e| ApiError::Internal(Box::new(e)))?;
        let mut relayed = header::HeaderMap::new();
        for name in [
            header::CONTENT_LENGTH,
            header::CONTENT_RANGE,
            header::ETAG,
            header::LAST_MODIFIED,
            header::ACCEPT_RANGES,
        ] {
            if let Some(value) = answer.headers().get(name.as_str())
                && let Ok(value) = header::HeaderValue::from_bytes(value.as_bytes())
            {
                relayed.insert(name, value);
            }
        }
        Ok::<_, ApiError>((answer, relayed))
    };
    let (mut answer, mut relayed) = fetch(forwarded.clone()).await?;
    // A range of another version of the object than the client's would splice two versions together.
    let stale = request
        .headers()
        .get(header::IF_RANGE)
        .is_some_and(|validator| !validates(validator, &relayed));
    if answer.status() == reqwest::StatusCode::PARTIAL_CONTENT && stale {
        forwarded.remove(reqwest::header::RANGE);
        forwarded.remove(reqwest::header::IF_RANGE);
        (answer, relayed) = fetch(forwarded).await?;
    }
    let mut status = StatusCode::from_u16(answer.status().as_u16()).map_err(|e| ApiError::Internal(Box::new(e)))?;
    if !matches!(status.as_u16(), 200 | 206 | 304 | 412 | 416) {
        // The job says completed, so its object must be there and readable: anything else is pgspout's (or
        // the store's) failure, not the client's.
        return Err(ApiError::Internal(
            format!("the object store answered {status} for the export's object {key}").into(),
        ));
    }
    if status == StatusCode::OK && unchanged(request.headers().get(header::IF_NONE_MATCH), &relayed) {
        status = StatusCode::NOT_MODIFIED;
    }
    let mut response = HttpResponse::build(status);
    for (name, value) in &relayed {
        if status != StatusCode::NOT_MODIFIED || [header::ETAG, header::LAST_MODIFIED].contains(name) {
            response.insert_header((name.clone(), value.clone()));
        }
    }
    if matches!(status.as_u16(), 304 | 412) {
        return Ok(response.finish());
    }
    response
        .insert_header((header::CONTENT_TYPE, media_type))
        .insert_header(ContentDisposition {
            disposition: DispositionType::Attachment,
            parameters: vec![DispositionParam::Filename(name.to_owned())],
        });
    // The header, not reqwest's `content_length()`: that is the body's, none in answer to a HEAD.
    let length = (relayed.get(header::CONTENT_LENGTH))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    // A failure mid-body aborts the response (never a clean end); the error without the signed URL.
    let body = (answer.bytes_stream()).map_err(|e| actix_web::error::ErrorBadGateway(e.without_url()));
    Ok(match length {
        // HEAD: the store's answer has no body; actix sends the length and not the (empty) stream.
        Some(length) => response.body(actix_web::body::SizedStream::new(length, body)),
        None => response.streaming(body),
    })
}

/// Whether `If-None-Match` names the `ETag` in `headers` (weakly compared, as RFC 9110 has it), or is `*`.
fn unchanged(if_none_match: Option<&header::HeaderValue>, headers: &header::HeaderMap) -> bool {
    let (Some(tags), Some(etag)) = (
        if_none_match.and_then(|v| v.to_str().ok()),
        headers.get(header::ETAG).and_then(|t| t.to_str().ok()),
    ) else {
        return false;
    };
    let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    tags.split(',')
        .any(|tag| tag.trim() == "*" || opaque(tag) == opaque(etag))
}

/// Whether an `If-Range` validator names the version of the file `headers` describe: its strong `ETag`, or
/// exactly its `Last-Modified` date. A weak tag never does.
fn validates(validator: &header::HeaderValue, headers: &header::HeaderMap) -> bool {
    let Ok(validator) = validator.to_str() else {
        return false;
    };
    let validator = validator.trim();
    if validator.starts_with('"') || validator.starts_with("W/") {
        let tag = headers.get(header::ETAG).and_then(|t| t.to_str().ok());
        return !validator.starts_with("W/") && tag.is_some_and(|t| !t.starts_with("W/") && t == validator);
    }
    let date = |text: &str| text.parse::<header::HttpDate>().ok();
    let modified = headers
        .get(header::LAST_MODIFIED)
        .and_then(|m| m.to_str().ok())
        .and_then(date);
    modified.is_some_and(|m| Some(m) == date(validator))
}

/// The first `length` bytes of `file`, read in blocks off the async workers.
fn read_file(file: std::fs::File, length: u64) -> impl futures::Stream<Item = Result<bytes::Bytes, actix_web::Error>> {
    const BLOCK: u64 = 64 * 1024;
    futures::stream::try_unfold((file, 0u64), move |(mut file, sent)| async move {
        if sent >= length {
            return Ok(None);
        }
        let size = BLOCK.min(length - sent) as usize;
        let (file, block) = web::block(move || {
            let mut block = vec![0; size];
            std::io::Read::read_exact(&mut file, &mut block)?;
            Ok::<_, std::io::Error>((file, block))
        })
        .await??;
        Ok(Some((bytes::Bytes::from(block), (file, sent + size as u64))))
    })
}

/// Cancels a queued or running job (200 with its status), or deletes a finished one and its file (204).
#[delete("/v1/exports/{id}")]
pub(super) async fn remove(
    id: web::Path<String>,
    state: web::Data<AppState>,
    pools: web::Data<Pools>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let jobs = jobs(&state)?;
    let id = job_id(&id)?;
    let owner = caller.owner();
    let (cancelled, deleted, upload) = pools
        .exports
        .with(async |client| {
            let retention = jobs.settings.retention;
            if jobs.store.cancel(client, id, owner, retention).await? {
                // Read after the cancel: a runner can record no other upload from now on.
                let upload = jobs.store.open_upload(client, id).await?;
                return Ok::<_, ApiError>((true, false, upload));
            }
            // A finished job's upload, if it has one, is left by a failure or a cancel.
            let upload = jobs.store.open_upload(client, id).await?;
            Ok((false, jobs.store.delete(client, id, owner).await?, upload))
        })
        .await?;
    if !(cancelled || deleted) {
        return Err(ApiError::UnknownJob(id.to_string()));
    }
    // A running job's runner notices at its next lease renewal and stops; its file (or upload) goes now.
    jobs.storage.remove(&[id], &Vec::from_iter(upload)).await;
    if cancelled {
        let (document, _) = status_of(jobs, &pools, id, &caller).await?;
        return Ok(HttpResponse::Ok().json(document));
    }
    Ok(HttpResponse::NoContent().finish())
}
