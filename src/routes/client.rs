//! `GET /v1/client.js` and `GET /v1/client.d.ts`: the JavaScript client and its types, compiled into the
//! binary from `static/`.

use actix_web::http::header;
use actix_web::{HttpResponse, get};

const CLIENT: &str = include_str!("../../static/client.js");
const TYPES: &str = include_str!("../../static/client.d.ts");

/// The ES module.
#[get("/v1/client.js")]
pub(super) async fn client() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(CLIENT)
}

/// Its TypeScript declarations.
#[get("/v1/client.d.ts")]
pub(super) async fn types() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/typescript; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(TYPES)
}
