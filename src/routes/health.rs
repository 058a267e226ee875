//! `/healthz` (the process runs) and `/readyz` (Postgres answers).

use actix_web::{HttpResponse, get, web};

use crate::error::ApiError;
use crate::state::Pools;

/// 200 while the process runs.
#[get("/healthz")]
pub(super) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// 200 when Postgres answers a query, 503 when it does not.
///
/// Uses a one-connection pool of its own, so a pool full of exports does not make pgspout look unready.
#[get("/readyz")]
pub(super) async fn readyz(pools: web::Data<Pools>) -> Result<HttpResponse, ApiError> {
    // A connection that failed is discarded, never handed out again.
    pools
        .health
        .with(async |client| {
            client.simple_query("SELECT 1").await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .await
        .map_err(ApiError::NotReady)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ready" })))
}
