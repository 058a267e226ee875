//! Integration tests: pgspout against a real PostgreSQL, with real HTTP clients.

mod auth;
mod browser;
mod clients;
mod columnar;
mod config;
mod consistency;
mod errors;
mod faults;
mod fidelity;
mod flight;
mod helpers;
mod http;
mod job_integrity;
mod jobs;
mod query;
mod replicas;
mod schemas;
mod shutdown;
mod storm;
mod streaming;
mod summaries;
mod telemetry;
mod tls;
mod types;
mod web;
mod webhooks;
