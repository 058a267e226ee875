//! What browsers load, compiled into the binary from `static/` (no CDN, works offline): the live page at `/`
//! with its script and style, and the JavaScript client at `/v1/client.js` with its TypeScript declarations.

use actix_web::http::header;
use actix_web::{HttpResponse, get};

/// The page may load only its own assets and talk only to this server.
const PAGE_POLICY: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; \
                           form-action 'none'; frame-ancestors 'none'";

/// A static asset; `no-cache` so browsers revalidate after an upgrade.
fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(body)
}

/// The live page.
#[get("/")]
pub(super) async fn page() -> HttpResponse {
    let mut response = asset("text/html; charset=utf-8", include_str!("../../static/index.html"));
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(PAGE_POLICY),
    );
    response
}

/// The live page's script.
#[get("/assets/app.js")]
pub(super) async fn page_script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", include_str!("../../static/app.js"))
}

/// The live page's style.
#[get("/assets/app.css")]
pub(super) async fn page_style() -> HttpResponse {
    asset("text/css; charset=utf-8", include_str!("../../static/app.css"))
}

/// The ES module.
#[get("/v1/client.js")]
pub(super) async fn client() -> HttpResponse {
    asset("text/javascript; charset=utf-8", include_str!("../../static/client.js"))
}

/// Its TypeScript declarations.
#[get("/v1/client.d.ts")]
pub(super) async fn types() -> HttpResponse {
    asset(
        "application/typescript; charset=utf-8",
        include_str!("../../static/client.d.ts"),
    )
}
