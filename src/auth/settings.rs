//! `[auth]` as configured, and its validation into the typed values [`super::Auth`] is built from: the
//! settings module only reads the section, and the rules for it live here, with the code that uses it.

use std::time::Duration;

use serde::Deserialize;

use super::claims::RolePath;
use super::{ApiKey, pre_request_sql};

/// `[auth]`: who is asking (a JWT, an API key, or nobody), as a Postgres role.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// The HS256/384/512 secret, at least 32 characters; or `jwks` instead.
    pub jwt_secret: Option<String>,
    /// A JWKS: the JSON itself, `@/path/to/file`, or an `https://` URL.
    pub jwks: Option<String>,
    /// If set, a token's `aud` (when it has one) must contain it.
    pub jwt_audience: Option<String>,
    /// A JSONPath to the role in the claims (`$.role`, `$.app.roles[0]`, `$."x.y"`).
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
    /// The role of requests without a token; unset: they get 401.
    pub anon_role: Option<String>,
    /// Clock skew allowed for `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// A cookie the token is also read from (EventSource cannot set headers).
    pub cookie: Option<String>,
    /// A function (`schema.name`) called in every transaction that reads for a request, after the settings.
    pub pre_request: Option<String>,
    /// Long-lived keys for scripts and pipelines.
    #[serde(default)]
    pub api_keys: Vec<ApiKeySettings>,
}

fn default_role_claim() -> String {
    "$.role".into()
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

/// One `[[auth.api_keys]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySettings {
    /// Its name: the owner of the jobs it creates, and in logs.
    pub name: String,
    /// The SHA-256 of the key, in hex; the key itself is never configured.
    pub sha256: String,
    /// The role its requests run as.
    pub role: String,
}

/// `[auth]` checked: everything [`super::Auth`] needs that can be known without the network.
pub(super) struct CheckedAuth {
    pub(super) role_path: RolePath,
    /// `SELECT "schema"."function"()`.
    pub(super) pre_request: Option<String>,
    pub(super) api_keys: Vec<ApiKey>,
}

impl AuthSettings {
    /// Checks the section: one kind of key, a usable role claim and `pre_request`, API keys named once with
    /// a SHA-256 each.
    pub(crate) fn validate(&self) -> Result<(), String> {
        self.check().map(drop)
    }

    /// The section's typed values, or what is wrong with it.
    pub(super) fn check(&self) -> Result<CheckedAuth, String> {
        match (&self.jwt_secret, &self.jwks) {
            (Some(_), Some(_)) => return Err("auth: set jwt_secret or jwks, not both".into()),
            (Some(secret), None) if secret.chars().count() < 32 => {
                return Err("auth.jwt_secret must be at least 32 characters".into());
            }
            _ => {}
        }
        let role_path =
            RolePath::parse(&self.role_claim).map_err(|e| format!("auth.role_claim {:?}: {e}", self.role_claim))?;
        let pre_request = match &self.pre_request {
            Some(function) => Some(pre_request_sql(function).map_err(|e| format!("auth.pre_request: {e}"))?),
            None => None,
        };
        if self.anon_role.as_deref() == Some("") {
            return Err("auth.anon_role is empty".into());
        }
        let mut names = std::collections::HashSet::new();
        let mut api_keys = Vec::new();
        for key in &self.api_keys {
            if key.name.is_empty() || key.role.is_empty() {
                return Err("every [[auth.api_keys]] needs a name and a role".into());
            }
            if !names.insert(&key.name) {
                return Err(format!("auth.api_keys: {:?} is configured twice", key.name));
            }
            let digest = hex_digest(&key.sha256).ok_or_else(|| {
                format!(
                    "auth.api_keys {:?}: sha256 must be 64 hex digits (the SHA-256 of the key)",
                    key.name
                )
            })?;
            api_keys.push(ApiKey {
                name: key.name.clone(),
                digest,
                role: key.role.clone(),
            });
        }
        Ok(CheckedAuth {
            role_path,
            pre_request,
            api_keys,
        })
    }
}

/// 64 hex digits as 32 bytes.
fn hex_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut digest = [0; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(digest)
}
