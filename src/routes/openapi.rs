//! `GET /v1/openapi.json`: the OpenAPI 3.1 document, generated at start-up and at every reload; under
//! `[auth]`, for the datasets the caller's role may read.

use actix_web::{HttpRequest, HttpResponse, get, web};

use super::caller::Caller;
use crate::error::ApiError;
use crate::state::{AppState, Pools};
use crate::telemetry::request::RequestContext;

/// The document.
#[get("/v1/openapi.json")]
pub(super) async fn openapi(
    request: HttpRequest,
    state: web::Data<AppState>,
    pools: web::Data<Pools>,
    context: RequestContext,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let document = match caller.identity() {
        None => state.published().openapi.clone(),
        Some(_) => {
            let published = state.published();
            let readable = caller
                .readable(&published.catalog, &state, &pools, &context, &request, false)
                .await?;
            let names: Vec<String> = readable.into_iter().map(|(name, _)| name).collect();
            let catalog = published.catalog.subset(&names);
            crate::openapi::document(&catalog, state.pages.max_limit, state.jobs.is_some()).to_string()
        }
    };
    Ok(HttpResponse::Ok().content_type("application/json").body(document))
}
