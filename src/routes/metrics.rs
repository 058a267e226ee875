//! `GET /metrics`: every metric in the Prometheus text format.

use actix_web::{HttpResponse, get, web};

use crate::telemetry::metrics::Metrics;

/// The Prometheus text exposition (format 0.0.4).
#[get("/metrics")]
pub(crate) async fn metrics(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(prometheus::TEXT_FORMAT)
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .body(metrics.render())
}
