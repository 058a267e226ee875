//! `GET /v1/datasets` and `GET /v1/datasets/{name}`: what can be exported, with the planner's row estimate.

use actix_web::{HttpResponse, get, web};
use serde_json::{Value, json};

use crate::dataset::Dataset;
use crate::db::rows::estimate_rows;
use crate::error::ApiError;
use crate::state::{AppState, Pools};

async fn describe(dataset: &Dataset, pools: &Pools) -> Result<Value, ApiError> {
    let client = pools.exports.get().await?;
    let estimate = estimate_rows(&client, &dataset.relation).await?;
    let columns: Vec<Value> = dataset
        .columns
        .iter()
        .map(|c| json!({ "name": c.name, "type": c.type_name, "nullable": c.nullable }))
        .collect();
    Ok(json!({
        "name": dataset.name,
        "columns": columns,
        "key": dataset.key.map(|k| dataset.columns[k].name.clone()),
        "estimated_rows": estimate,
    }))
}

/// Every dataset.
#[get("/v1/datasets")]
pub(super) async fn list(state: web::Data<AppState>, pools: web::Data<Pools>) -> Result<HttpResponse, ApiError> {
    let mut datasets = Vec::new();
    let published = state.published();
    for dataset in published.catalog.iter() {
        datasets.push(describe(dataset, &pools).await?);
    }
    Ok(HttpResponse::Ok().json(json!({ "datasets": datasets })))
}

/// One dataset.
#[get("/v1/datasets/{name}")]
pub(super) async fn one(
    name: web::Path<String>,
    state: web::Data<AppState>,
    pools: web::Data<Pools>,
) -> Result<HttpResponse, ApiError> {
    let dataset = state.dataset(&name)?;
    Ok(HttpResponse::Ok().json(describe(&dataset, &pools).await?))
}
