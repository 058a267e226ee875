//! `[log]` and `[server]` (with `[server.cors]`).

use std::time::Duration;

use serde::Deserialize;

/// `[log]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` (default) or `json` (one JSON object per line).
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[server]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address to listen on (`PGSPOUT_LISTEN` overrides).
    pub listen: String,
    /// Worker threads, each with its own connection pool; default: the number of CPUs.
    pub workers: Option<usize>,
    /// On SIGTERM/SIGINT, how long in-flight exports may run on before they are cut.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Serve `/metrics` only on this address, not on `listen`; unset: on `listen`.
    pub metrics_listen: Option<String>,
    /// Serve Arrow Flight (gRPC) on this address; off when unset.
    pub flight_listen: Option<String>,
    /// CORS for pages on other origins; off when absent.
    pub cors: Option<CorsSettings>,
}

/// `[server.cors]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsSettings {
    /// Origins (`https://app.example`) allowed to call the API, or `["*"]`.
    pub allowed_origins: Vec<String>,
    /// Whether browsers may send cookies and `Authorization` (not with `*`).
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight's answer.
    #[serde(default = "default_cors_max_age", with = "humantime_serde")]
    pub max_age: Duration,
}

fn default_cors_max_age() -> Duration {
    Duration::from_secs(3600)
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: "127.0.0.1:8080".into(),
            workers: None,
            shutdown_grace: Duration::from_secs(30),
            metrics_listen: None,
            flight_listen: None,
            cors: None,
        }
    }
}

impl ServerSettings {
    /// `[server]`'s own rules.
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.workers == Some(0) {
            return Err("server.workers must be at least 1".into());
        }
        let Some(cors) = &self.cors else {
            return Ok(());
        };
        if cors.allowed_origins.is_empty() {
            return Err("server.cors.allowed_origins is empty (list origins, or [\"*\"])".into());
        }
        for origin in &cors.allowed_origins {
            let plain = origin.split_once("://").is_some_and(|(scheme, rest)| {
                matches!(scheme, "http" | "https") && !rest.is_empty() && !rest.contains('/')
            });
            if origin != "*" && !plain {
                return Err(format!(
                    "server.cors.allowed_origins: {origin:?} is not an origin (scheme://host[:port], no path)"
                ));
            }
            if origin == "*" && cors.allow_credentials {
                return Err("server.cors: browsers refuse credentials with allowed_origins = [\"*\"]".into());
            }
        }
        Ok(())
    }
}
