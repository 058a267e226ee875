//! `GET /v1/datasets/{name}/rows`: the matching rows of a dataset as one streamed NDJSON or CSV body.

use actix_web::http::Method;
use actix_web::http::header::{self, ContentDisposition, DispositionParam, DispositionType};
use actix_web::{HttpRequest, HttpResponse, route, web};

use super::caller::Caller;
use super::{count_preference, header_value, server_timing, total_count_headers};
use crate::body;
use crate::compress::Encoding;
use crate::dataset::Consistency;
use crate::db::error::OpenError;
use crate::db::rows::{Rows, Source};
use crate::encode::{self, Format};
use crate::error::ApiError;
use crate::pipeline::Pipeline;
use crate::query::cursor::{ResumeTokens, request_digest};
use crate::query::{self, CountMethod, Endpoint, KeysetScan};
use crate::state::{AppState, Pools};
use crate::telemetry::request::RequestContext;

/// The header a reconnecting `EventSource` sends.
const LAST_EVENT_ID: header::HeaderName = header::HeaderName::from_static("last-event-id");

/// Streams the rows a request selects, filters and orders (by default: all, in key order).
///
/// HEAD answers with the same negotiated headers without running the query (DuckDB's reader asks first);
/// its body length is unknown, so it is sent chunked rather than as a misleading `Content-Length: 0`.
#[route("/v1/datasets/{name}/rows", method = "GET", method = "HEAD")]
pub(super) async fn rows(
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
        let parsed = query::params::parse(dataset, Endpoint::Rows, &params)?;
        let format = Format::negotiate(parsed.format.as_deref(), header_value(&request, header::ACCEPT))?;
        // An event stream of a keyed dataset gives each event a resume token as its id; a reconnecting
        // EventSource sends the last one back, and the stream goes on after it.
        let tokens = (format == Format::Sse && dataset.key.is_some() && parsed.summary.is_none()).then(|| {
            let signature = query::order_signature(dataset, &parsed);
            (signature, request_digest(&params))
        });
        let resume = match (format, header_value(&request, LAST_EVENT_ID)) {
            (Format::Sse, Some(token)) => {
                let (signature, digest) = tokens.as_ref().ok_or_else(|| {
                    ApiError::BadQuery(
                        "Last-Event-ID: this stream has no key (a keyless dataset, or a summary), so it cannot resume"
                            .into(),
                    )
                })?;
                let cursor = state
                    .cursor_key
                    .open(token)
                    .map_err(|e| ApiError::BadQuery(format!("Last-Event-ID: {e}")))?;
                if cursor.dataset != dataset.name || &cursor.order != signature || &cursor.request != digest {
                    return Err(ApiError::BadQuery(
                        "Last-Event-ID belongs to another stream (dataset, order or query)".into(),
                    ));
                }
                Some(cursor)
            }
            _ => None,
        };
        let sent_before = resume.as_ref().map_or(0, |cursor| cursor.sent);
        // `compression=` asks for a compressed file (a download link), else Accept-Encoding picks a coding the
        // client undoes on the fly; a format that compresses itself (Parquet) takes neither.
        let compressible = format.info().compressible;
        let (encoding, file) = match parsed.compression {
            Some(encoding) if !compressible && encoding != Encoding::Identity => {
                return Err(ApiError::BadQuery(format!(
                    "compression: a {} file compresses its own pages; ask for it without compression",
                    format.name()
                )));
            }
            Some(encoding) => (encoding, true),
            None if !compressible => (Encoding::Identity, false),
            None => (
                Encoding::negotiate(header_value(&request, header::ACCEPT_ENCODING))?,
                false,
            ),
        };
        let label = format!("{}.{}", dataset.name, format.extension());
        let (media_type, filename) = match encoding.file_media_type() {
            Some(media_type) if file => (media_type, format!("{label}{}", encoding.suffix())),
            _ => (format.media_type(), label.clone()),
        };
        let mut response = HttpResponse::Ok();
        response
            .content_type(media_type)
            .insert_header((header::VARY, "Accept, Accept-Encoding"))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header(ContentDisposition {
                disposition: DispositionType::Attachment,
                parameters: vec![DispositionParam::Filename(filename)],
            });
        if let Some(coding) = encoding.content_encoding().filter(|_| !file) {
            response.insert_header((header::CONTENT_ENCODING, coding));
        }
        if request.method() == Method::HEAD {
            return Ok(response.streaming(futures::stream::empty::<Result<bytes::Bytes, ApiError>>()));
        }

        let count = count_preference(&request);
        // Event streams report progress against the planner's estimate unless an exact count was asked for.
        let counted = match format {
            Format::Sse => count.or(Some(CountMethod::Estimated)),
            _ => count,
        };
        let slot = tokio::time::timeout(state.acquire_timeout, pools.export_slots.clone().acquire_owned())
            .await
            .map_err(|_| ApiError::Open(OpenError::ExportsBusy))?
            .expect("the semaphore is never closed");
        let (source, columns) = match parsed.consistency(dataset) {
            Consistency::Snapshot => {
                // Resumable event streams carry each row's position, for their events' ids.
                let plan = match (&resume, &tokens) {
                    (Some(cursor), _) => {
                        let limit = parsed.limit.map(|limit| limit.saturating_sub(cursor.sent));
                        query::plan_after(dataset, &parsed, format, &cursor.values, limit, counted)
                    }
                    (None, Some(_)) => query::plan_rows_with_keys(dataset, &parsed, format, counted),
                    (None, None) => query::plan_rows(dataset, &parsed, format, counted),
                };
                let columns = plan.columns.clone();
                (Source::Statement(plan), columns)
            }
            Consistency::Chunked => {
                let mut scan = KeysetScan::new(dataset, &parsed, format, state.batch_rows);
                if let Some(cursor) = resume {
                    scan = scan.resumed(Some(cursor.values), cursor.sent);
                }
                let columns = scan.columns();
                (Source::Batches(scan), columns)
            }
        };
        let begin = caller.begin(&state, &context, &request);
        let (rows, total) = Rows::open(&pools.readers, &begin, source, counted).await?;
        total_count_headers(&mut response, count, total);
        server_timing(&mut response, rows.timings());
        let encoder = match format {
            Format::Sse => {
                let tokens = tokens.map(|(signature, digest)| {
                    ResumeTokens::new(&state.cursor_key, &dataset.name, signature, digest, sent_before)
                });
                encode::sse_encoder(&columns, total, sent_before, tokens)
            }
            _ => format.encoder(&columns).map_err(|e| ApiError::Internal(Box::new(e)))?,
        };
        let mut pipeline =
            Pipeline::new(rows, encoder, encoding, &state.limits, true).map_err(|e| ApiError::Internal(Box::new(e)))?;
        pipeline.encode_first()?;
        let meter = context.metrics().export(
            context.clone(),
            &dataset.name,
            format.extension(),
            encoding.content_encoding().unwrap_or("identity"),
        );
        let body = body::stream(pipeline, slot, state.chunking, label, state.cut.clone(), meter);
        Ok(response.streaming(body))
    }
    .await;
    response.map_err(|error| caller.refine(error))
}
