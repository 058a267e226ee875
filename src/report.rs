//! Error reports for logs and job records: an error and its causes on one line. A leaf module, so that every
//! layer (db, auth, jobs, the HTTP errors) can report errors without depending on another.

use std::fmt::Write as _;

/// `error: cause: cause…`, for logs.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}
