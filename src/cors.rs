//! CORS for browsers on other origins (`[server.cors]`): preflights answered with 204, allowed origins get
//! the headers the API needs exposed, and an origin not allowed gets no CORS header at all (the browser then
//! blocks the response). Off when the table is absent.
//!
//! Hand-written rather than actix-cors: that crate answers preflights with 200 and refuses requests from
//! unknown origins with a 400, where a non-browser client (which sends any `Origin` it likes) should simply be
//! served without CORS headers.

use std::rc::Rc;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{Error, HttpResponse};

use crate::settings::CorsSettings;

/// The methods the API answers.
const METHODS: &str = "GET, HEAD, POST, DELETE, OPTIONS";
/// The request headers a page may send.
const REQUEST_HEADERS: &str = "Authorization, Prefer, Range, Last-Event-ID, Content-Type, Accept, X-Request-Id";
/// The response headers a page may read.
const EXPOSED_HEADERS: &str =
    "Content-Disposition, Link, X-Total-Count, Preference-Applied, X-Request-Id, Content-Range, Server-Timing";

/// `[server.cors]`, ready to apply.
pub(crate) struct Cors {
    any_origin: bool,
    origins: Vec<String>,
    credentials: bool,
    max_age: String,
}

impl Cors {
    pub(crate) fn new(settings: &CorsSettings) -> Cors {
        Cors {
            any_origin: settings.allowed_origins.iter().any(|o| o == "*"),
            origins: settings.allowed_origins.clone(),
            credentials: settings.allow_credentials,
            max_age: settings.max_age.as_secs().to_string(),
        }
    }

    /// The `Access-Control-Allow-Origin` value for `origin`, if it is allowed.
    fn allow(&self, origin: &str) -> Option<HeaderValue> {
        if self.any_origin && !self.credentials {
            return Some(HeaderValue::from_static("*"));
        }
        (self.any_origin || self.origins.iter().any(|o| o == origin))
            .then(|| HeaderValue::from_str(origin).ok())
            .flatten()
    }
}

/// The middleware (wrapped with `from_fn`); without `[server.cors]` it passes every request through.
pub(crate) async fn cors(
    cors: Option<Rc<Cors>>,
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let Some(cors) = cors else {
        return Ok(next.call(request).await?.map_into_boxed_body());
    };
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_owned);
    let Some(origin) = origin else {
        return Ok(next.call(request).await?.map_into_boxed_body());
    };
    let allowed = cors.allow(&origin);
    let preflight =
        request.method() == Method::OPTIONS && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let mut response = HttpResponse::build(match allowed {
            Some(_) => StatusCode::NO_CONTENT,
            None => StatusCode::FORBIDDEN,
        });
        response.insert_header((header::VARY, "Origin"));
        if let Some(allow) = allowed {
            response
                .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, allow))
                .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, METHODS))
                .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, REQUEST_HEADERS))
                .insert_header((header::ACCESS_CONTROL_MAX_AGE, cors.max_age.as_str()));
            if cors.credentials {
                response.insert_header((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true"));
            }
        }
        let (request, _) = request.into_parts();
        return Ok(ServiceResponse::new(request, response.finish()));
    }
    let mut response = next.call(request).await?.map_into_boxed_body();
    let headers = response.headers_mut();
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(allow) = allowed {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED_HEADERS),
        );
        if cors.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
    Ok(response)
}
