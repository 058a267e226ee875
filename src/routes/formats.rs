//! `GET /v1/formats`: the output formats, as the one table in `encode` describes them (the live page builds
//! its download links and its export panel from it).

use actix_web::http::header;
use actix_web::{HttpResponse, get};

use crate::encode::FORMATS;

/// Every format: its names, media types, file extension, whether HTTP compression applies, and what a
/// background export of it writes (`null` if jobs cannot).
#[get("/v1/formats")]
pub(super) async fn formats() -> HttpResponse {
    let formats: Vec<serde_json::Value> = FORMATS
        .iter()
        .map(|f| {
            serde_json::json!({
                "name": f.names[0],
                "aliases": &f.names[1..],
                "accepts": f.accepts,
                "media_type": f.media_type,
                "extension": f.extension,
                "compressible": f.compressible,
                "job": f.jobs.map(|j| serde_json::json!({
                    "extension": j.extension,
                    "media_type": j.media_type,
                    "resumes": j.resumes,
                })),
                "summary": f.summary,
            })
        })
        .collect();
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "max-age=300"))
        .json(serde_json::json!({ "formats": formats }))
}
