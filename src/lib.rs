//! pgspout streams PostgreSQL tables and views over HTTP as NDJSON or CSV, compressed on request, in
//! constant memory, with backpressure from the client all the way to the Postgres backend.
//!
//! # Layout
//! A request flows route → negotiate → plan → rows → encode → compress → sink:
//! - [`auth`]: who is asking (JWT, API key, anonymous) as a Postgres role and claims.
//! - `routes`: the HTTP resources; with `startup`, `body`, `cors` and `error`, the only code that touches actix.
//! - `negotiate`, [`compress`]: `Accept`/`Accept-Encoding` and the compressors.
//! - `dataset`: what a dataset is (relation, columns, types and their operators, key); a leaf module.
//! - `query`: the query string (PostgREST syntax) → validated SQL, bind parameters, positions, cursors.
//! - `db`: pools, the catalog, rows, the job table; the only module that runs statements through
//!   tokio-postgres (startup and the job runner hold its connection settings and pools).
//! - [`encode`]: rows → NDJSON, CSV or a JSON array, byte-identical to Postgres's own output.
//! - `pipeline`: the one export pipeline, rows → encoder → compressor → pieces, for every sink.
//! - `body`: the sink that streams pieces as a response body.
//! - `jobs`: the sink that writes background exports to files that survive crashes.
//! - `openapi`: the OpenAPI document generated from the datasets.
//! - [`reload`]: reading the catalog again on SIGHUP and `NOTIFY pgspout`.
//! - `state`: what the workers share and own.
//! - `telemetry`: logs, metrics and request ids (its middleware is actix code too).
//! - [`error`]: problem+json before the first byte, aborted transfers after it; [`report`]: an error and its
//!   causes on one line.
//! - [`settings`], [`startup`]: configuration and wiring; [`telemetry`]'s logging set-up.
//!
//! Only what the binary, the tests and the benchmarks use is public.

pub mod auth;
mod body;
pub mod compress;
mod cors;
mod dataset;
mod db;
pub mod encode;
pub mod error;
mod flight;
mod jobs;
mod negotiate;
mod openapi;
mod pipeline;
mod query;
pub mod reload;
pub mod report;
mod routes;
pub mod settings;
pub mod startup;
mod state;
pub mod telemetry;
