//! `GET /v1/datasets/{name}/page`: one keyset page as JSON, with an opaque cursor to the next.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, get, web};

use super::caller::Caller;
use super::{count_preference, server_timing, total_count_headers};
use crate::compress::Encoding;
use crate::db::rows::{Rows, Source};
use crate::encode::JsonArrayEncoder;
use crate::error::ApiError;
use crate::pipeline::{Piece, Pipeline};
use crate::query::cursor::Cursor;
use crate::query::{self, Endpoint, ParamError};
use crate::state::{AppState, Pools};
use crate::telemetry::request::RequestContext;

/// Up to `limit` matching rows after `cursor`, in the request's order with the key as tie-breaker:
/// `{"rows": [...], "next": "<cursor>" | null}` and a `Link: <…>; rel="next"` header.
#[get("/v1/datasets/{name}/page")]
pub(super) async fn page(
    request: HttpRequest,
    name: web::Path<String>,
    params: web::Query<Vec<(String, String)>>,
    state: web::Data<AppState>,
    pools: web::Data<Pools>,
    context: RequestContext,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let response: Result<HttpResponse, ApiError> = async {
        let dataset = state.dataset(&name)?;
        let dataset = &*dataset;
        let parsed = query::params::parse(dataset, Endpoint::Page, &params)?;
        // A summary is paged on its groups.
        if dataset.key.is_none() && parsed.summary.is_none() {
            return Err(ApiError::BadQuery(format!(
                "dataset {:?} has no key, so it cannot be paged",
                dataset.name
            )));
        }
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
        let plan = query::plan_page(dataset, &parsed, after.as_ref().map(|c| &c.values), limit, count);
        let signature = query::order_signature(dataset, &parsed);
        if let Some(cursor) = &after
            && (cursor.dataset != dataset.name
                || cursor.order != signature
                || cursor.values.0.len() != plan.keyset.len())
        {
            return Err(ApiError::BadQuery(
                "the cursor belongs to another dataset or order".into(),
            ));
        }

        let encoder = Box::new(JsonArrayEncoder::new(&plan.columns));
        let begin = caller.begin(&state, &context, &request);
        let (mut rows, total) = Rows::open(&pools.readers, &begin, Source::Statement(plan), count).await?;
        let timings = rows.timings();
        // The query asks for one row more than the page holds; seeing it means there is a next page.
        rows.cap(limit);
        let mut pipeline = Pipeline::new(rows, encoder, Encoding::Identity, &state.limits, true)
            .map_err(|e| ApiError::Internal(Box::new(e)))?;
        let mut body = Vec::from(&b"{\"rows\":"[..]);
        while let Some(piece) = pipeline.next(None).await? {
            let (Piece::Chunk(bytes) | Piece::Boundary(bytes) | Piece::End(bytes)) = piece;
            body.extend_from_slice(&bytes);
        }
        let next = pipeline.position().filter(|_| pipeline.has_more()).map(|values| {
            state.cursor_key.seal(&Cursor {
                dataset: dataset.name.clone(),
                order: signature,
                values,
                sent: 0,
                request: String::new(),
            })
        });

        body.extend_from_slice(b",\"next\":");
        body.extend_from_slice(serde_json::to_string(&next).expect("a string serializes").as_bytes());
        body.push(b'}');
        let mut response = HttpResponse::Ok();
        response
            .content_type("application/json")
            .insert_header((header::CACHE_CONTROL, "no-store"));
        total_count_headers(&mut response, count, total);
        server_timing(&mut response, timings);
        if let Some(token) = &next {
            let mut pairs: Vec<(String, String)> = params.iter().filter(|(k, _)| k != "cursor").cloned().collect();
            pairs.push(("cursor".into(), token.clone()));
            let query = serde_urlencoded::to_string(&pairs).map_err(|e| ApiError::Internal(Box::new(e)))?;
            response.insert_header((header::LINK, format!("<{}?{query}>; rel=\"next\"", request.path())));
        }
        Ok(response.body(body))
    }
    .await;
    response.map_err(|error| caller.refine(error))
}
