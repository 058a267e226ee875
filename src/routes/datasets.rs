//! `GET /v1/datasets` and `GET /v1/datasets/{name}`: what can be exported, with the planner's row estimate.

use actix_web::{HttpRequest, HttpResponse, get, web};
use serde_json::{Value, json};

use crate::dataset::Dataset;
use crate::error::ApiError;
use crate::state::{AppState, Pools};
use crate::telemetry::request::RequestContext;

use super::caller::Caller;

fn describe(dataset: &Dataset, estimate: Option<i64>) -> Value {
    let columns: Vec<Value> = dataset
        .columns
        .iter()
        .map(|c| {
            let mut column = json!({ "name": c.name, "type": c.type_name, "nullable": c.nullable });
            if dataset.aggregates {
                column["aggregates"] = c.aggregates.names().into();
            }
            column
        })
        .collect();
    json!({
        "name": dataset.name,
        "aggregates": dataset.aggregates,
        "columns": columns,
        "key": dataset.key.map(|k| dataset.columns[k].name.clone()),
        "estimated_rows": estimate,
    })
}

/// Every dataset.
#[get("/v1/datasets")]
pub(super) async fn list(
    request: HttpRequest,
    state: web::Data<AppState>,
    pools: web::Data<Pools>,
    context: RequestContext,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let published = state.published();
    let readable = caller
        .readable(&published.catalog, &state, &pools, &context, &request, true)
        .await?;
    let datasets: Vec<Value> = readable
        .iter()
        .filter_map(|(name, estimate)| published.catalog.get(name).map(|d| describe(&d, *estimate)))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "datasets": datasets })))
}

/// One dataset.
#[get("/v1/datasets/{name}")]
pub(super) async fn one(
    request: HttpRequest,
    name: web::Path<String>,
    state: web::Data<AppState>,
    pools: web::Data<Pools>,
    context: RequestContext,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let dataset = state.dataset(&name)?;
    let one = crate::dataset::Catalog::new([(*dataset).clone()]);
    let readable = caller.readable(&one, &state, &pools, &context, &request, true).await?;
    let Some((_, estimate)) = readable.first() else {
        return Err(caller.not_readable(&name));
    };
    Ok(HttpResponse::Ok().json(describe(&dataset, *estimate)))
}
