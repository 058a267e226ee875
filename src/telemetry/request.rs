//! Per-request telemetry, as one actix middleware: the request id (taken from `X-Request-Id` or made up,
//! echoed back), a log span that carries it, problem+json bodies that carry it (`instance`), the access line
//! and the HTTP metrics when the response ends.
//!
//! A request's [`Exchange`] is shared by its response body and, for a streamed export, by the export task; the
//! access line is written when the last of them lets go, so it has the export's rows and outcome too.

use std::future::{Ready, ready};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use bytes::Bytes;
use futures::future::LocalBoxFuture;
use tracing::Instrument;

use super::metrics::Metrics;
use crate::error::ApiError;

/// The request id header, read and echoed.
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id taken from a client.
const MAX_ID_LENGTH: usize = 128;

/// The client's `X-Request-Id` if it is 1–128 characters of `[A-Za-z0-9._:-]`, else a new UUID.
fn request_id(headers: &HeaderMap) -> String {
    well_formed_id(headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()))
}

/// `id` if it is a well-formed request id, else a new one.
fn well_formed_id(id: Option<&str>) -> String {
    id.filter(|id| {
        (1..=MAX_ID_LENGTH).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    })
    .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

/// The trace id of a valid W3C `traceparent` (version 00): `00-<32 hex>-<16 hex>-<2 hex>`, ids not all zero.
fn trace_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    let mut parts = value.split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let valid = version == "00"
        && parts.next().is_none()
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0');
    valid.then(|| trace.to_owned())
}

/// One request as the access line and the HTTP metrics see it. Written out when dropped.
pub(crate) struct Exchange {
    id: String,
    method: String,
    route: String,
    started: Instant,
    status: AtomicU16,
    bytes: AtomicU64,
    /// Set by a streamed export when it ends.
    export: Mutex<Option<(u64, &'static str)>>,
    /// Whether the body was sent to its end.
    body_done: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Exchange {
    /// When the request arrived.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// The server's metrics.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The `application_name` of the transactions that serve this request, as `pg_stat_activity` shows it
    /// (Postgres keeps its first 63 bytes).
    pub(crate) fn application_name(&self) -> String {
        format!("pgspout {}", self.id)
    }

    /// A streamed export ended: its rows and outcome go into the access line.
    pub(crate) fn export_ended(&self, rows: u64, outcome: &'static str) {
        *self.export.lock().unwrap_or_else(PoisonError::into_inner) = Some((rows, outcome));
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let status = self.status.load(Ordering::Relaxed);
        let duration = self.started.elapsed();
        self.metrics.http_request(&self.route, &self.method, status, duration);
        let export = *self.export.get_mut().unwrap_or_else(PoisonError::into_inner);
        let outcome = match export {
            Some((_, outcome)) => outcome,
            None if self.body_done.load(Ordering::Relaxed) => "completed",
            None => "client_left",
        };
        tracing::info!(
            target: "pgspout::access",
            request_id = %self.id,
            method = %self.method,
            route = %self.route,
            status,
            millis = duration.as_millis() as u64,
            bytes = self.bytes.load(Ordering::Relaxed),
            rows = export.map(|(rows, _)| rows),
            outcome,
            "request"
        );
    }
}

/// The request's [`Exchange`], for handlers.
#[derive(Clone)]
pub(crate) struct RequestContext(pub(crate) Arc<Exchange>);

#[cfg(test)]
impl RequestContext {
    /// A GET of `/test` that arrived now, for unit tests.
    pub(crate) fn for_tests(metrics: Arc<Metrics>) -> RequestContext {
        RequestContext(Arc::new(Exchange {
            id: "test".into(),
            method: "GET".into(),
            route: "/test".into(),
            started: Instant::now(),
            status: AtomicU16::new(200),
            bytes: AtomicU64::new(0),
            export: Mutex::new(None),
            body_done: AtomicBool::new(false),
            metrics,
        }))
    }
}

impl RequestContext {
    /// A call that is not an HTTP request (an Arrow Flight call), counted and logged as one: `id` is the
    /// caller's `x-request-id` if well-formed, else a new one; `route` names the call.
    pub(crate) fn call(metrics: Arc<Metrics>, id: Option<&str>, method: &str, route: &str) -> RequestContext {
        RequestContext(Arc::new(Exchange {
            id: well_formed_id(id),
            method: method.to_owned(),
            route: route.to_owned(),
            started: Instant::now(),
            status: AtomicU16::new(0),
            bytes: AtomicU64::new(0),
            export: Mutex::new(None),
            body_done: AtomicBool::new(false),
            metrics,
        }))
    }

    /// The request id.
    pub(crate) fn id(&self) -> &str {
        &self.0.id
    }

    /// Records how the call was answered (HTTP's status number for it), and, `done`, that its answer was
    /// sent whole.
    pub(crate) fn answered(&self, status: u16, done: bool) {
        self.0.status.store(status, Ordering::Relaxed);
        if done {
            self.0.body_done.store(true, Ordering::Relaxed);
        }
    }

    /// Counts bytes sent.
    pub(crate) fn sent(&self, bytes: usize) {
        self.0.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

impl std::ops::Deref for RequestContext {
    type Target = Exchange;

    fn deref(&self) -> &Exchange {
        &self.0
    }
}

impl FromRequest for RequestContext {
    type Error = ApiError;
    type Future = Ready<Result<RequestContext, ApiError>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            request
                .extensions()
                .get::<RequestContext>()
                .cloned()
                .ok_or_else(|| ApiError::Internal("the telemetry middleware is not installed on this route".into())),
        )
    }
}

/// The middleware; wrap the whole app in it.
pub(crate) struct Telemetry {
    metrics: Arc<Metrics>,
}

impl Telemetry {
    /// Records into `metrics`.
    pub(crate) fn new(metrics: Arc<Metrics>) -> Telemetry {
        Telemetry { metrics }
    }
}

impl<S, B> Transform<S, ServiceRequest> for Telemetry
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = actix_web::Error;
    type Transform = TelemetryService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(TelemetryService {
            service: Rc::new(service),
            metrics: self.metrics.clone(),
        }))
    }
}

/// The middleware around one worker's app.
pub(crate) struct TelemetryService<S> {
    service: Rc<S>,
    metrics: Arc<Metrics>,
}

impl<S, B> Service<ServiceRequest> for TelemetryService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        let id = request_id(request.headers());
        let span = match trace_id(request.headers()) {
            Some(trace_id) => tracing::info_span!("request", request_id = %id, %trace_id),
            None => tracing::info_span!("request", request_id = %id),
        };
        let exchange = Arc::new(Exchange {
            method: request.method().to_string(),
            route: request.match_pattern().unwrap_or_else(|| "unmatched".into()),
            started: Instant::now(),
            status: AtomicU16::new(0),
            bytes: AtomicU64::new(0),
            export: Mutex::new(None),
            body_done: AtomicBool::new(false),
            metrics: self.metrics.clone(),
            id,
        });
        request.extensions_mut().insert(RequestContext(exchange.clone()));
        let response = span.in_scope(|| self.service.call(request)).instrument(span);
        Box::pin(async move {
            let response = response.await;
            let mut response = match response {
                Ok(response) => response,
                Err(error) => {
                    exchange
                        .status
                        .store(error.as_response_error().status_code().as_u16(), Ordering::Relaxed);
                    return Err(error);
                }
            };
            response.request().extensions_mut().remove::<RequestContext>();
            exchange.status.store(response.status().as_u16(), Ordering::Relaxed);
            if let Ok(value) = HeaderValue::from_str(&exchange.id) {
                response.headers_mut().insert(REQUEST_ID, value);
            }
            let problem = match response.response().error().and_then(|e| e.as_error::<ApiError>()) {
                Some(error) => {
                    if error.is_pool_timeout() {
                        exchange.metrics.pool_timed_out();
                    }
                    Some(error.problem_json(Some(&exchange.id)))
                }
                None => None,
            };
            Ok(response.map_body(move |_, body| {
                let body = match problem {
                    Some(problem) => BoxBody::new(problem),
                    None => body.boxed(),
                };
                BoxBody::new(Counted { body, exchange })
            }))
        })
    }
}

/// A response body that counts its bytes and notes whether it was sent to its end.
struct Counted {
    body: BoxBody,
    exchange: Arc<Exchange>,
}

impl MessageBody for Counted {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        let next = Pin::new(&mut this.body).poll_next(cx);
        match &next {
            Poll::Ready(Some(Ok(bytes))) => {
                this.exchange.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
            Poll::Ready(None) => this.exchange.body_done.store(true, Ordering::Relaxed),
            _ => {}
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(HeaderName::from_static(name), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn a_well_formed_request_id_is_kept_and_anything_else_replaced() {
        assert_eq!(request_id(&headers(&[("x-request-id", "abc-1.2_3:4")])), "abc-1.2_3:4");
        let long = "a".repeat(128);
        assert_eq!(request_id(&headers(&[("x-request-id", &long)])), long);
        for bad in ["", "has space", "semi;colon", "ünï", &"a".repeat(129)] {
            let Ok(value) = HeaderValue::from_str(bad) else {
                continue;
            };
            let mut map = HeaderMap::new();
            map.insert(REQUEST_ID, value);
            let id = request_id(&map);
            assert_ne!(id, bad);
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        }
        assert!(uuid::Uuid::parse_str(&request_id(&HeaderMap::new())).is_ok());
    }

    #[test]
    fn only_a_valid_traceparent_gives_a_trace_id() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let valid = format!("00-{trace}-00f067aa0ba902b7-01");
        assert_eq!(trace_id(&headers(&[("traceparent", &valid)])).as_deref(), Some(trace));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(trace_id(&headers(&[("traceparent", bad)])), None, "{bad}");
        }
    }
}
