//! What an operator sees: logs (text or JSON lines), Prometheus metrics and per-request ids.
//!
//! - `metrics`: every metric family, and the meter of one streamed export.
//! - `request`: the middleware that gives each request its id, log span, access line and HTTP metrics.

pub(crate) mod metrics;
pub(crate) mod request;

use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

/// Logs to stderr in `format`, filtered by `RUST_LOG` (default `info`). JSON lines carry the event's fields
/// at the top level and the request's span (its `request_id`) under `span`.
///
/// tokio-postgres logs every statement at debug level, and pgspout's statements carry the request's claims
/// (`request.jwt.claims`): its debug and trace output stays off whatever `RUST_LOG` says.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive("tokio_postgres=info".parse().expect("a valid directive"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}
