//! `GET /v1/openapi.json`: the OpenAPI 3.1 document generated at start-up.

use actix_web::{HttpResponse, get, web};

use crate::state::AppState;

/// The document.
#[get("/v1/openapi.json")]
pub(super) async fn openapi(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(state.published().openapi.clone())
}
