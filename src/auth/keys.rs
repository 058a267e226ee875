//! The keys that verify tokens: an HMAC secret, or a JWKS given inline, in a file (`@path`) or at an
//! `https://` URL. A URL's set is fetched at start-up (with a timeout) and fetched again when a token names
//! a `kid` the set lacks, at most once per [`REFRESH_INTERVAL`], so unknown kids cannot make pgspout hammer
//! the key server, while a rotated key is picked up within seconds.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::HMAC;

/// The shortest time between two fetches of a JWKS URL.
pub(crate) const REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// How long fetching a JWKS URL may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why keys could not be loaded, or none fits a token.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The JWKS file could not be read.
    #[error("cannot read the JWKS file {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The JWKS URL could not be fetched.
    #[error("cannot fetch the JWKS from {url}: {reason}")]
    Fetch {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The JWKS is not a valid key set.
    #[error("the JWKS is invalid: {0}")]
    Invalid(String),
    /// The token names a key the set does not have.
    #[error("no key has the token's kid {0:?}")]
    UnknownKid(String),
    /// No key can verify the token's algorithm.
    #[error("the algorithm {0:?} does not match the key")]
    Algorithm(Algorithm),
}

/// A key of a JWKS.
pub(crate) struct SetKey {
    kid: Option<String>,
    key: DecodingKey,
}

/// The verifying keys.
pub(crate) enum Keys {
    /// A shared secret (HS256/384/512).
    Secret(DecodingKey),
    /// A key set, and where it came from.
    Jwks {
        keys: RwLock<Arc<Vec<SetKey>>>,
        url: Option<String>,
        fetched: tokio::sync::Mutex<Instant>,
    },
}

impl Keys {
    /// An HMAC secret.
    pub(crate) fn secret(secret: &str) -> Keys {
        Keys::Secret(DecodingKey::from_secret(secret.as_bytes()))
    }

    /// A JWKS: inline JSON, `@path`, or an `https://` URL (fetched now).
    pub(crate) async fn jwks(source: &str) -> Result<Keys, KeyError> {
        let (text, url) = if let Some(path) = source.strip_prefix('@') {
            let text = std::fs::read_to_string(path).map_err(|source| KeyError::File {
                path: path.to_owned(),
                source,
            })?;
            (text, None)
        } else if source.starts_with("https://") {
            (fetch(source).await?, Some(source.to_owned()))
        } else {
            (source.to_owned(), None)
        };
        Ok(Keys::Jwks {
            keys: RwLock::new(Arc::new(parse(&text)?)),
            url,
            fetched: tokio::sync::Mutex::new(Instant::now()),
        })
    }

    /// The key that verifies a token with this `kid` and `alg`.
    pub(crate) async fn find(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, KeyError> {
        let (keys, url, fetched) = match self {
            Keys::Secret(key) if HMAC.contains(&alg) => return Ok(key.clone()),
            Keys::Secret(_) => return Err(KeyError::Algorithm(alg)),
            Keys::Jwks { keys, url, fetched } => (keys, url, fetched),
        };
        let current = keys.read().expect("never poisoned").clone();
        match pick(&current, kid, alg) {
            Err(KeyError::UnknownKid(unknown)) => {
                let Some(url) = url else {
                    return Err(KeyError::UnknownKid(unknown));
                };
                // One refresh per interval, whoever asks; a concurrent request waits for it.
                let mut last = fetched.lock().await;
                let latest = keys.read().expect("never poisoned").clone();
                if !Arc::ptr_eq(&latest, &current) {
                    return pick(&latest, kid, alg);
                }
                if last.elapsed() < REFRESH_INTERVAL {
                    return Err(KeyError::UnknownKid(unknown));
                }
                *last = Instant::now();
                let refreshed = match fetch(url).await.and_then(|text| parse(&text)) {
                    Ok(refreshed) => Arc::new(refreshed),
                    Err(error) => {
                        tracing::warn!(%error, "cannot refresh the JWKS; keeping the keys it had");
                        return Err(KeyError::UnknownKid(unknown));
                    }
                };
                tracing::info!(keys = refreshed.len(), "JWKS refreshed for an unknown kid");
                *keys.write().expect("never poisoned") = refreshed.clone();
                pick(&refreshed, kid, alg)
            }
            other => other,
        }
    }
}

/// The key for `kid` (or, without one, the first whose family fits `alg`).
fn pick(keys: &[SetKey], kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, KeyError> {
    let candidates: Vec<&SetKey> = match kid {
        Some(kid) => {
            let named: Vec<&SetKey> = keys.iter().filter(|k| k.kid.as_deref() == Some(kid)).collect();
            if named.is_empty() {
                return Err(KeyError::UnknownKid(kid.to_owned()));
            }
            named
        }
        None => keys.iter().collect(),
    };
    candidates
        .into_iter()
        .find(|k| k.key.family() == alg.family())
        .map(|k| k.key.clone())
        .ok_or(KeyError::Algorithm(alg))
}

fn parse(text: &str) -> Result<Vec<SetKey>, KeyError> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| KeyError::Invalid(e.to_string()))?;
    let keys: Vec<SetKey> = set
        .keys
        .iter()
        .filter(|jwk| jwk.is_supported())
        .map(|jwk: &Jwk| {
            Ok(SetKey {
                kid: jwk.common.key_id.clone(),
                key: DecodingKey::from_jwk(jwk).map_err(|e| KeyError::Invalid(e.to_string()))?,
            })
        })
        .collect::<Result<_, KeyError>>()?;
    if keys.is_empty() {
        return Err(KeyError::Invalid("it has no usable key".into()));
    }
    Ok(keys)
}

async fn fetch(url: &str) -> Result<String, KeyError> {
    let failed = |reason: String| KeyError::Fetch {
        url: url.to_owned(),
        reason,
    };
    let client = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .https_only(true)
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| failed(crate::report::chain(&e)))?;
    if !response.status().is_success() {
        return Err(failed(format!("HTTP {}", response.status())));
    }
    response.text().await.map_err(|e| failed(e.to_string()))
}
