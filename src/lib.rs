//! pgspout streams PostgreSQL tables and views over HTTP as NDJSON or CSV, compressed on request, in
//! constant memory, with backpressure from the client all the way to the Postgres backend.
//!
//! # Layout
//! A request flows route → negotiate → plan → lease a connection → cursor → encode → compress → body:
//! - [`routes`]: the HTTP resources.
//! - `negotiate` (private), [`compress`]: `Accept`/`Accept-Encoding` and the compressors.
//! - [`query`]: the query string (PostgREST syntax) → validated SQL, bind parameters, page cursors.
//! - [`openapi`]: the OpenAPI document generated from the datasets.
//! - [`db`]: pools, the catalog, exports; the only module that talks to tokio-postgres.
//! - [`encode`]: rows → NDJSON or CSV, byte-identical to Postgres's own output.
//! - [`body`]: the streaming body that ties rows, encoder and compressor together.
//! - [`jobs`]: background exports to files that survive crashes (the `/v1/exports` API is in [`routes`]).
//! - [`error`]: problem+json before the first byte, aborted transfers after it.
//! - [`settings`], [`startup`]: configuration and wiring.

pub mod body;
pub mod compress;
pub mod db;
pub mod encode;
pub mod error;
pub mod jobs;
mod negotiate;
pub mod openapi;
pub mod query;
pub mod routes;
pub mod settings;
pub mod startup;
