//! HTTP routes, one file per resource; with `startup` and `body`, the only code that touches actix types.

mod health;
mod rows;

use actix_web::{HttpRequest, web};

use crate::error::ApiError;

/// Registers every route, and problem+json answers for unknown paths and malformed query strings.
pub fn configure(config: &mut web::ServiceConfig) {
    config
        .app_data(web::QueryConfig::default().error_handler(|error, _| ApiError::BadQuery(error.to_string()).into()))
        .service(health::healthz)
        .service(health::readyz)
        .service(rows::rows)
        .default_service(web::to(|| async {
            Err::<actix_web::HttpResponse, _>(ApiError::NoRoute)
        }));
}

/// A request header as text, if present and valid.
fn header(request: &HttpRequest, name: actix_web::http::header::HeaderName) -> Option<&str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}
