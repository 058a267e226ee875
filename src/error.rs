//! Errors in two tiers: [`ApiError`] before the first byte (an RFC 9457 problem+json response) and
//! [`StreamError`] after it (the body stream fails, so the client sees a truncated transfer).
//!
//! This is the one place where error detail is stripped for clients: 5xx bodies are generic, and the cause
//! chain goes to the log.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::compress::NoAcceptableEncoding;
use crate::db::error::OpenError;
use crate::db::rows::ReadError;
use crate::encode::{EncodeError, FormatError};
use crate::pipeline::PipelineError;
use crate::report::chain;

/// Seconds a client should wait before retrying after a 503.
const RETRY_AFTER_SECONDS: u32 = 1;

/// A request that fails before any of its body is sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// No dataset has this name.
    #[error("no dataset is named {0:?}")]
    UnknownDataset(String),
    /// No route matches.
    #[error("no resource at this path")]
    NoRoute,
    /// The path exists, but not for this method; the value is the `Allow` header.
    #[error("this resource answers only {0}")]
    MethodNotAllowed(&'static str),
    /// A query parameter is unknown or malformed.
    #[error("{0}")]
    BadQuery(String),
    /// The requested format is unknown or refused by `Accept`.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// `Accept-Encoding` refuses every coding.
    #[error(transparent)]
    Encoding(#[from] NoAcceptableEncoding),
    /// The export could not start.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The request body is malformed or asks for something impossible.
    #[error("{0}")]
    BadRequest(String),
    /// Background exports are not configured on this server.
    #[error("background exports are off on this server (neither jobs.directory nor jobs.storage is set)")]
    JobsOff,
    /// No export job has this id.
    #[error("no export job has the id {0:?}")]
    UnknownJob(String),
    /// The export job's file is not ready.
    #[error("the export is {0}; it can be downloaded once it is completed")]
    JobNotCompleted(String),
    /// The job queue is full.
    #[error("the export queue is full; retry later")]
    QueueFull,
    /// An `Idempotency-Key` the caller already used for another request.
    #[error("this Idempotency-Key was used for another request (dataset, format, compression or query); use a new key")]
    IdempotencyKeyReused,
    /// No token where one is needed, or a token that does not verify.
    #[error(transparent)]
    Unauthorized(#[from] crate::auth::AuthError),
    /// The request's role may not read this dataset.
    #[error("your role may not read dataset {0:?}")]
    NotReadable(String),
    /// An anonymous request for data the anonymous role may not read.
    #[error("anonymous requests may not read this; send a token (Authorization: Bearer …)")]
    AnonymousForbidden,
    /// A page holds a value larger than `export.max_value_bytes`.
    #[error(transparent)]
    ValueTooLarge(PipelineError),
    /// The first row holds a value the format's type for its column cannot hold.
    #[error("{0}; ask for another format (NDJSON, CSV and JSON carry every value)")]
    Unrepresentable(EncodeError),
    /// The readiness check failed.
    #[error("the database does not answer")]
    NotReady(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A bug or resource failure inside pgspout.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<crate::query::ParamError> for ApiError {
    fn from(error: crate::query::ParamError) -> Self {
        ApiError::BadQuery(error.to_string())
    }
}

/// A database failure before the first byte is classified as when an export opens (503, 504, 403, 500).
impl From<tokio_postgres::Error> for ApiError {
    fn from(error: tokio_postgres::Error) -> Self {
        ApiError::Open(error.into())
    }
}

/// A page reads all its rows before answering: a failed read is classified as a failed open.
impl From<PipelineError> for ApiError {
    fn from(error: PipelineError) -> Self {
        match error {
            PipelineError::Read(error) => error.into(),
            error @ PipelineError::TooLarge { .. } => ApiError::ValueTooLarge(error),
            PipelineError::Encode(error @ EncodeError::Unrepresentable { .. }) => ApiError::Unrepresentable(error),
            other => ApiError::Internal(Box::new(other)),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(error: ReadError) -> Self {
        match error {
            ReadError::Database(error) => ApiError::Open(error.into()),
            other => ApiError::Internal(Box::new(other)),
        }
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        ApiError::Open(error.into())
    }
}

/// An RFC 9457 problem details document.
#[derive(Serialize)]
struct Problem<'a> {
    r#type: &'a str,
    title: &'a str,
    status: u16,
    detail: String,
    /// `urn:pgspout:request:<id>`: this occurrence.
    #[serde(skip_serializing_if = "Option::is_none")]
    instance: Option<String>,
    /// The request id alone, as in `X-Request-Id` and the logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

impl ApiError {
    /// A stable problem type URI and title for each kind of error.
    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            ApiError::UnknownDataset(_) => ("urn:pgspout:problem:unknown-dataset", "Unknown dataset"),
            ApiError::BadRequest(_) => ("urn:pgspout:problem:bad-request", "Bad request"),
            ApiError::JobsOff => ("urn:pgspout:problem:jobs-off", "Background exports are off"),
            ApiError::UnknownJob(_) => ("urn:pgspout:problem:unknown-export", "Unknown export"),
            ApiError::JobNotCompleted(_) => ("urn:pgspout:problem:export-not-completed", "Export not completed"),
            ApiError::QueueFull => ("urn:pgspout:problem:queue-full", "Export queue full"),
            ApiError::IdempotencyKeyReused => ("urn:pgspout:problem:idempotency-key-reused", "Idempotency key reused"),
            ApiError::ValueTooLarge(_) => ("urn:pgspout:problem:value-too-large", "Value too large"),
            ApiError::Unrepresentable(_) => ("urn:pgspout:problem:unrepresentable", "Value not representable"),
            ApiError::NoRoute => ("urn:pgspout:problem:not-found", "Not found"),
            ApiError::MethodNotAllowed(_) => ("urn:pgspout:problem:method-not-allowed", "Method not allowed"),
            ApiError::BadQuery(_) | ApiError::Open(OpenError::InvalidValue { .. } | OpenError::TooCostly { .. }) => {
                ("urn:pgspout:problem:bad-query", "Bad query parameter")
            }
            ApiError::Format(FormatError::Unknown(_)) => ("urn:pgspout:problem:unknown-format", "Unknown format"),
            ApiError::Format(FormatError::NotAcceptable) | ApiError::Encoding(_) => {
                ("urn:pgspout:problem:not-acceptable", "Not acceptable")
            }
            ApiError::Open(OpenError::PoolExhausted) => ("urn:pgspout:problem:busy", "All connections busy"),
            ApiError::Open(OpenError::ExportsBusy) => ("urn:pgspout:problem:busy", "All export slots busy"),
            ApiError::Open(OpenError::Unavailable(_)) | ApiError::NotReady(_) => {
                ("urn:pgspout:problem:database-unavailable", "Database unavailable")
            }
            ApiError::Open(OpenError::NoReplica) => ("urn:pgspout:problem:no-replica", "No healthy replica"),
            ApiError::Open(OpenError::Conflict(_)) => ("urn:pgspout:problem:conflict", "Query cancelled by a conflict"),
            ApiError::Open(OpenError::StatementTimeout(_)) => ("urn:pgspout:problem:timeout", "Query timed out"),
            ApiError::Open(OpenError::Forbidden(_) | OpenError::RoleSwitch(_) | OpenError::Refused(_))
            | ApiError::NotReadable(_) => ("urn:pgspout:problem:forbidden", "Forbidden"),
            ApiError::Unauthorized(_) | ApiError::AnonymousForbidden => {
                ("urn:pgspout:problem:unauthorized", "Unauthorized")
            }
            ApiError::Open(OpenError::Query(_)) | ApiError::Internal(_) => {
                ("urn:pgspout:problem:internal", "Internal server error")
            }
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::UnknownDataset(_) | ApiError::NoRoute | ApiError::JobsOff | ApiError::UnknownJob(_) => {
                StatusCode::NOT_FOUND
            }
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::JobNotCompleted(_) => StatusCode::CONFLICT,
            ApiError::ValueTooLarge(_) | ApiError::Unrepresentable(_) | ApiError::IdempotencyKeyReused => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::QueueFull => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BadQuery(_)
            | ApiError::Format(FormatError::Unknown(_))
            | ApiError::Open(OpenError::InvalidValue { .. } | OpenError::TooCostly { .. }) => StatusCode::BAD_REQUEST,
            ApiError::Format(FormatError::NotAcceptable) | ApiError::Encoding(_) => StatusCode::NOT_ACCEPTABLE,
            ApiError::Open(
                OpenError::PoolExhausted
                | OpenError::ExportsBusy
                | OpenError::Unavailable(_)
                | OpenError::NoReplica
                | OpenError::Conflict(_),
            )
            | ApiError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Open(OpenError::StatementTimeout(_)) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Open(OpenError::Forbidden(_) | OpenError::RoleSwitch(_) | OpenError::Refused(_))
            | ApiError::NotReadable(_) => StatusCode::FORBIDDEN,
            ApiError::Unauthorized(_) | ApiError::AnonymousForbidden => StatusCode::UNAUTHORIZED,
            ApiError::Open(OpenError::Query(_)) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %chain(self), "request failed");
        } else if status.is_server_error() || status == StatusCode::FORBIDDEN {
            tracing::warn!(error = %chain(self), "request refused");
        }
        let mut response = HttpResponse::build(status);
        response.insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        ));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.insert_header((header::RETRY_AFTER, RETRY_AFTER_SECONDS));
        }
        if let ApiError::MethodNotAllowed(allow) = self {
            response.insert_header((header::ALLOW, *allow));
        }
        match self {
            ApiError::Unauthorized(crate::auth::AuthError::Invalid(_)) => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\""));
            }
            ApiError::Unauthorized(_) | ApiError::AnonymousForbidden => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            _ => {}
        }
        // The telemetry middleware renders the body again with the request id.
        response.body(self.problem_json(None))
    }
}

impl ApiError {
    /// The problem+json body; with `request_id`, naming this occurrence. 5xx details are generic.
    pub(crate) fn problem_json(&self, request_id: Option<&str>) -> String {
        let status = self.status_code();
        let (r#type, title) = self.kind();
        serde_json::to_string(&Problem {
            r#type,
            title,
            status: status.as_u16(),
            detail: self.detail(),
            instance: request_id.map(|id| format!("urn:pgspout:request:{id}")),
            request_id,
        })
        .expect("a problem document always serializes")
    }

    /// What a client is told: the cause, except for a 500, whose cause goes to the log only.
    pub(crate) fn detail(&self) -> String {
        if self.status_code() == StatusCode::INTERNAL_SERVER_ERROR {
            "The request failed inside pgspout or the database; the server log has the cause.".to_owned()
        } else {
            self.to_string()
        }
    }

    /// Whether no pooled connection was free in time.
    pub(crate) fn is_pool_timeout(&self) -> bool {
        matches!(self, ApiError::Open(OpenError::PoolExhausted))
    }
}

/// An export that fails after its response has started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    /// Reading, encoding or compressing failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The export ran longer than `export.max_duration`.
    #[error("the export exceeded its maximum duration")]
    TooLong,
    /// The server shut down, and the export outlasted the grace period.
    #[error("the server shut down before the export ended")]
    ShutDown,
    /// The client stopped reading for longer than `export.stall_timeout`, and the export was cut.
    #[error("the client stopped reading; the export was cut")]
    Stalled,
}
