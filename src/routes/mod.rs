//! HTTP routes, one file per resource; with `startup`, `body` and `error`, the only code that touches actix types.

mod assets;
pub(crate) mod caller;
mod datasets;
mod exports;
mod formats;
mod health;
pub(crate) mod metrics;
mod openapi;
mod page;
mod rows;

use actix_web::http::header::{self, HeaderName};
use actix_web::{HttpRequest, HttpResponseBuilder, web};

use crate::db::rows::OpenTimings;
use crate::error::ApiError;
use crate::query::CountMethod;

/// Registers every route (`/metrics` too, unless it has a listener of its own), and problem+json answers for
/// unknown paths and malformed query strings.
pub(crate) fn configure(config: &mut web::ServiceConfig, with_metrics: bool) {
    if with_metrics {
        config.service(metrics::metrics);
    }
    config
        .app_data(web::QueryConfig::default().error_handler(|error, _| ApiError::BadQuery(error.to_string()).into()))
        .service(health::healthz)
        .service(health::readyz)
        .service(openapi::openapi)
        .service(formats::formats)
        .service(assets::page)
        .service(assets::page_script)
        .service(assets::page_style)
        .service(assets::client)
        .service(assets::types)
        .service(datasets::list)
        .service(datasets::one)
        .service(rows::rows)
        .service(page::page)
        .service(exports::create)
        .service(exports::show)
        .service(exports::download)
        .service(exports::remove)
        .default_service(web::to(move |request| fallback(request, with_metrics)));
}

/// Unmatched requests: 405 with `Allow` on a known path, else 404; both problem+json.
async fn fallback(request: HttpRequest, with_metrics: bool) -> Result<actix_web::HttpResponse, ApiError> {
    let segments: Vec<&str> = request.path().trim_start_matches('/').split('/').collect();
    Err(match segments.as_slice() {
        ["v1", "datasets", _, "rows"] => ApiError::MethodNotAllowed("GET, HEAD"),
        ["metrics"] if with_metrics => ApiError::MethodNotAllowed("GET"),
        ["healthz"]
        | ["readyz"]
        | ["v1", "openapi.json" | "client.js" | "client.d.ts" | "formats"]
        | ["v1", "datasets"]
        | ["v1", "datasets", _] => ApiError::MethodNotAllowed("GET"),
        ["v1", "datasets", _, "page"] => ApiError::MethodNotAllowed("GET"),
        ["v1", "exports"] => ApiError::MethodNotAllowed("POST"),
        ["v1", "exports", _] => ApiError::MethodNotAllowed("GET, DELETE"),
        ["v1", "exports", _, "download"] => ApiError::MethodNotAllowed("GET, HEAD"),
        _ => ApiError::NoRoute,
    })
}

/// A request header as text, if present and valid.
fn header_value(request: &HttpRequest, name: HeaderName) -> Option<&str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

/// `Prefer: count=exact|estimated` (RFC 7240; other preferences are ignored, as the RFC allows).
fn count_preference(request: &HttpRequest) -> Option<CountMethod> {
    request
        .headers()
        .get_all(header::HeaderName::from_static("prefer"))
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .find_map(|preference| match preference.trim() {
            "count=exact" => Some(CountMethod::Exact),
            "count=estimated" => Some(CountMethod::Estimated),
            _ => None,
        })
}

/// `Server-Timing` (W3C) for the phases before the headers: waiting for a connection, and the first row.
fn server_timing(response: &mut HttpResponseBuilder, timings: OpenTimings) {
    let millis = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    response.insert_header((
        HeaderName::from_static("server-timing"),
        format!(
            "lease;dur={:.3};desc=\"connection lease\", first-row;dur={:.3};desc=\"first row\"",
            millis(timings.lease),
            millis(timings.first_row)
        ),
    ));
}

/// Announces an applied count preference and its result.
fn total_count_headers(response: &mut HttpResponseBuilder, method: Option<CountMethod>, total: Option<i64>) {
    if let (Some(method), Some(total)) = (method, total) {
        let applied = match method {
            CountMethod::Exact => "count=exact",
            CountMethod::Estimated => "count=estimated",
        };
        response.insert_header((HeaderName::from_static("preference-applied"), applied));
        response.insert_header((HeaderName::from_static("x-total-count"), total));
    }
}
