//! `GET /v1/datasets/{name}/page`: one keyset page as JSON, with an opaque cursor to the next.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, get, web};

use super::{count_preference, total_count_headers};
use crate::db::export::Export;
use crate::encode::{Cells, Format, RowEncoder};
use crate::error::ApiError;
use crate::query::cursor::Cursor;
use crate::query::{self, Endpoint, ParamError};
use crate::startup::{AppState, Pools};

/// Up to `limit` matching rows after `cursor`, in the request's order with the key as tie-breaker:
/// `{"rows": [...], "next": "<cursor>" | null}` and a `Link: <…>; rel="next"` header.
#[get("/v1/datasets/{name}/page")]
pub(super) async fn page(
    request: HttpRequest,
    name: web::Path<String>,
    params: web::Query<Vec<(String, String)>>,
    state: web::Data<AppState>,
    pools: web::Data<Pools>,
) -> Result<HttpResponse, ApiError> {
    let dataset = state.dataset(&name)?;
    if dataset.key.is_none() {
        return Err(ApiError::BadQuery(format!(
            "dataset {:?} has no key, so it cannot be paged",
            dataset.name
        )));
    }
    let parsed = query::params::parse(dataset, Endpoint::Page, &params)?;
    let limit = parsed.limit.unwrap_or(state.pages.default_limit);
    if limit == 0 || limit > state.pages.max_limit {
        let reason = format!("must be between 1 and {}", state.pages.max_limit);
        return Err(ParamError {
            parameter: "limit".into(),
            reason,
        }
        .into());
    }
    let after = match &parsed.cursor {
        None => None,
        Some(token) => Some(
            state
                .cursor_key
                .open(token)
                .map_err(|e| ApiError::BadQuery(e.to_string()))?,
        ),
    };
    let count = count_preference(&request);
    let plan = query::plan_page(
        dataset,
        &parsed,
        after.as_ref().map(|c| c.values.as_slice()),
        limit,
        count,
    );
    let signature = plan
        .keyset
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    if let Some(cursor) = &after
        && (cursor.dataset != dataset.name || cursor.order != signature || cursor.values.len() != plan.keyset.len())
    {
        return Err(ApiError::BadQuery(
            "the cursor belongs to another dataset or order".into(),
        ));
    }

    let (mut export, total) = Export::open(&pools.exports, &state.begin_sql, &plan).await?;
    let encoder = RowEncoder::new(Format::Ndjson, &plan.columns);
    let mut body = Vec::from(&b"{\"rows\":["[..]);
    let mut last = None;
    let mut read = 0u64;
    // The query asks for one row more than the page holds; seeing it means there is a next page.
    while let Some(row) = export.next_row().await? {
        read += 1;
        if read > limit {
            continue;
        }
        if read > 1 {
            body.push(b',');
        }
        encoder
            .write_row(&row, &mut body)
            .map_err(|e| ApiError::Internal(Box::new(e)))?;
        body.pop(); // the encoder's newline
        if read == limit {
            let values = (0..plan.keyset.len())
                .map(|i| {
                    let cell = row
                        .cell(plan.columns.len() + i)
                        .map_err(|e| ApiError::Internal(Box::new(e)))?;
                    Ok(cell.map(|raw| String::from_utf8_lossy(raw).into_owned()))
                })
                .collect::<Result<Vec<_>, ApiError>>()?;
            last = Some(Cursor {
                dataset: dataset.name.clone(),
                order: signature.clone(),
                values,
            });
        }
    }
    export.finish().await?;
    let next = last
        .filter(|_| read > limit)
        .map(|cursor| state.cursor_key.seal(&cursor));

    body.extend_from_slice(b"],\"next\":");
    body.extend_from_slice(serde_json::to_string(&next).expect("a string serializes").as_bytes());
    body.push(b'}');
    let mut response = HttpResponse::Ok();
    response
        .content_type("application/json")
        .insert_header((header::CACHE_CONTROL, "no-store"));
    total_count_headers(&mut response, count, total);
    if let Some(token) = &next {
        let mut pairs: Vec<(String, String)> = params.iter().filter(|(k, _)| k != "cursor").cloned().collect();
        pairs.push(("cursor".into(), token.clone()));
        let query = serde_urlencoded::to_string(&pairs).map_err(|e| ApiError::Internal(Box::new(e)))?;
        response.insert_header((header::LINK, format!("<{}?{query}>; rel=\"next\"", request.path())));
    }
    Ok(response.body(body))
}
