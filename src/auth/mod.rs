//! Who is asking: a JWT, an API key or nobody, turned into a Postgres role and claims. pgspout decides
//! nothing else: every transaction that reads for a request runs as that role with those claims, and
//! Postgres (GRANTs, row-level security, `pre_request`) decides what it sees.
//!
//! - `claims`: the role claim's JSONPath.
//! - `keys`: the keys that verify tokens: a secret, or a JWKS (inline, from a file or from a URL).
//! - `settings`: `[auth]` as configured, and its validation.

pub(crate) mod claims;
mod keys;
mod settings;

use std::time::Duration;

use jsonwebtoken::{Algorithm, Validation};
use postgres_protocol::escape::escape_identifier;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use self::claims::RolePath;
use self::keys::{KeyError, Keys};
pub use self::settings::{ApiKeySettings, AuthSettings};

/// Tokens longer than this are refused unread.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Who a request runs as.
#[derive(Clone, Debug)]
pub(crate) struct Identity {
    /// The Postgres role.
    pub(crate) role: String,
    /// The claims as JSON (`request.jwt.claims`).
    pub(crate) claims: String,
    /// Whose jobs these are: `sub:<sub>`, `key:<api key name>`, `role:<role>` for a token without `sub`, or
    /// `anonymous`.
    pub(crate) owner: String,
    /// No token was sent (the anonymous role).
    pub(crate) anonymous: bool,
}

/// Why a request is not authenticated (a 401).
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    /// No token, and no anonymous role.
    #[error("this server needs a token: Authorization: Bearer <JWT or API key>")]
    Missing,
    /// A token was sent and refused.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Why `[auth]` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// The keys could not be loaded.
    #[error("auth keys")]
    Keys(#[from] KeyError),
    /// `[auth]` is invalid.
    #[error("config: {0}")]
    Invalid(String),
}

/// `[auth]`, ready to verify tokens.
pub(crate) struct Auth {
    keys: Option<Keys>,
    audience: Option<String>,
    role_path: RolePath,
    anon_role: Option<String>,
    leeway: Duration,
    cookie: Option<String>,
    /// `SELECT "schema"."function"()`, when configured.
    pre_request: Option<String>,
    api_keys: Vec<ApiKey>,
}

struct ApiKey {
    name: String,
    digest: [u8; 32],
    role: String,
}

/// `schema.function` (or `function`) as a quoted call.
fn pre_request_sql(function: &str) -> Result<String, String> {
    let parts: Vec<&str> = function.split('.').collect();
    if parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(format!("{function:?} is not a function name (schema.name)"));
    }
    let quoted: Vec<String> = parts.iter().map(|p| escape_identifier(p)).collect();
    Ok(format!("SELECT {}()", quoted.join(".")))
}

impl Auth {
    /// Loads the keys (fetching a JWKS URL once).
    pub(crate) async fn new(settings: &AuthSettings) -> Result<Auth, AuthSetupError> {
        let checked = settings.check().map_err(AuthSetupError::Invalid)?;
        let keys = match (&settings.jwt_secret, &settings.jwks) {
            (Some(secret), _) => Some(Keys::secret(secret)),
            (None, Some(jwks)) => Some(Keys::jwks(jwks).await?),
            (None, None) => None,
        };
        Ok(Auth {
            keys,
            audience: settings.jwt_audience.clone(),
            role_path: checked.role_path,
            anon_role: settings.anon_role.clone(),
            leeway: settings.leeway,
            cookie: settings.cookie.clone(),
            pre_request: checked.pre_request,
            api_keys: checked.api_keys,
        })
    }

    /// The roles requests may run as without a token: the anonymous role and the API keys' roles (checked at
    /// start-up).
    pub(crate) fn fixed_roles(&self) -> Vec<(String, String)> {
        let mut roles: Vec<(String, String)> = self
            .anon_role
            .iter()
            .map(|role| ("auth.anon_role".to_owned(), role.clone()))
            .collect();
        for key in &self.api_keys {
            roles.push((format!("auth.api_keys {:?}", key.name), key.role.clone()));
        }
        roles
    }

    /// The name of the cookie a token may come in.
    pub(crate) fn cookie(&self) -> Option<&str> {
        self.cookie.as_deref()
    }

    /// The `pre_request` call, if configured.
    pub(crate) fn pre_request(&self) -> Option<&str> {
        self.pre_request.as_deref()
    }

    /// Who sends `token` (`None`: no token was sent).
    pub(crate) async fn identify(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        let Some(token) = token else {
            return match &self.anon_role {
                Some(role) => Ok(Identity {
                    role: role.clone(),
                    claims: serde_json::json!({ "role": role }).to_string(),
                    owner: "anonymous".into(),
                    anonymous: true,
                }),
                None => Err(AuthError::Missing),
            };
        };
        let invalid = |why: &str| AuthError::Invalid(why.to_owned());
        if token.len() > MAX_TOKEN_BYTES {
            return Err(invalid("the token is too long"));
        }
        if let Some(key) = self.api_key(token) {
            return Ok(Identity {
                role: key.role.clone(),
                claims: serde_json::json!({ "role": key.role, "api_key": key.name }).to_string(),
                owner: format!("key:{}", key.name),
                anonymous: false,
            });
        }
        let keys = self.keys.as_ref().ok_or_else(|| invalid("not a known API key"))?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("not a JWT nor a known API key"))?;
        let key = keys
            .find(header.kid.as_deref(), header.alg)
            .await
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = self.leeway.as_secs();
        validation.required_spec_claims.clear();
        validation.validate_aud = false;
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|e| {
            AuthError::Invalid(match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => "the token has expired".into(),
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
                jsonwebtoken::errors::ErrorKind::InvalidSignature => "bad signature".into(),
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => "the algorithm does not match the key".into(),
                other => format!("{other:?}"),
            })
        })?;
        let claims = data.claims;
        if !claims.is_object() {
            return Err(invalid("the claims are not a JSON object"));
        }
        self.check_times_and_audience(&claims)?;
        let role = match self.role_path.find(&claims) {
            Some(role) if !role.is_empty() => role.to_owned(),
            _ => self
                .anon_role
                .clone()
                .ok_or_else(|| invalid("the token names no role, and there is no anonymous role"))?,
        };
        let owner = match claims.get("sub").and_then(Value::as_str) {
            Some(sub) => format!("sub:{sub}"),
            None => format!("role:{role}"),
        };
        Ok(Identity {
            role,
            claims: claims.to_string(),
            owner,
            anonymous: false,
        })
    }

    /// `iat` not in the future, and PostgREST's rule for `aud`: when the token has one and `jwt_audience`
    /// is set, it must contain it.
    fn check_times_and_audience(&self, claims: &Value) -> Result<(), AuthError> {
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(iat) = claims.get("iat").and_then(Value::as_u64)
            && iat > now + self.leeway.as_secs()
        {
            return Err(AuthError::Invalid("the token was issued in the future (iat)".into()));
        }
        let (Some(wanted), Some(aud)) = (&self.audience, claims.get("aud")) else {
            return Ok(());
        };
        let matches = match aud {
            Value::String(one) => one == wanted,
            Value::Array(many) => many.iter().any(|a| a.as_str() == Some(wanted)),
            _ => false,
        };
        if matches {
            Ok(())
        } else {
            Err(AuthError::Invalid("the token is for another audience (aud)".into()))
        }
    }

    /// The API key whose hash is `token`'s, compared in constant time against every key.
    fn api_key(&self, token: &str) -> Option<&ApiKey> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for key in &self.api_keys {
            if bool::from(key.digest.ct_eq(&digest)) {
                found = Some(key);
            }
        }
        found
    }
}

/// Algorithms a shared secret verifies.
const HMAC: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
