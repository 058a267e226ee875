//! Opaque page cursors: the sort values of a page's last row, bound to the dataset and order, signed with
//! HMAC-SHA256 so a tampered or foreign cursor is refused rather than run.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// A position in a dataset's keyset order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Cursor {
    /// The dataset it belongs to.
    #[serde(rename = "d")]
    pub(crate) dataset: String,
    /// The order's signature (see [`super::OrderTerm`]'s `Display`).
    #[serde(rename = "o")]
    pub(crate) order: String,
    /// The last row's position.
    #[serde(rename = "v")]
    pub(crate) values: super::Position,
}

/// A cursor that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the cursor is malformed, was altered, or was issued by another server")]
pub(crate) struct InvalidCursor;

/// The secret cursors are signed with.
#[derive(Clone)]
pub(crate) struct CursorKey(Vec<u8>);

impl std::fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorKey(…)")
    }
}

impl CursorKey {
    /// A key from configured secret bytes (share it between instances behind one load balancer).
    pub(crate) fn new(secret: &[u8]) -> Self {
        CursorKey(secret.to_vec())
    }

    /// A random key: cursors stay valid only while this process runs.
    pub(crate) fn random() -> Self {
        let mut secret = vec![0; 32];
        getrandom::fill(&mut secret).expect("the OS provides randomness");
        CursorKey(secret)
    }

    fn mac(&self, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(payload);
        mac
    }

    /// The cursor as an opaque, URL-safe token.
    pub(crate) fn seal(&self, cursor: &Cursor) -> String {
        let payload = serde_json::to_vec(cursor).expect("a cursor always serializes");
        let tag = self.mac(&payload).finalize().into_bytes();
        format!("{}.{}", URL_SAFE_NO_PAD.encode(&payload), URL_SAFE_NO_PAD.encode(tag))
    }

    /// The cursor in `token`, if this key signed it.
    pub(crate) fn open(&self, token: &str) -> Result<Cursor, InvalidCursor> {
        let (payload, tag) = token.split_once('.').ok_or(InvalidCursor)?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| InvalidCursor)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| InvalidCursor)?;
        self.mac(&payload).verify_slice(&tag).map_err(|_| InvalidCursor)?;
        serde_json::from_slice(&payload).map_err(|_| InvalidCursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor() -> Cursor {
        Cursor {
            dataset: "orders".into(),
            order: "0.asc.nullslast".into(),
            values: super::super::Position(vec![Some("41".into()), None]),
        }
    }

    #[test]
    fn a_sealed_cursor_opens_with_its_key_only() {
        let key = CursorKey::new(b"secret");
        let token = key.seal(&cursor());
        assert_eq!(key.open(&token), Ok(cursor()));
        assert_eq!(CursorKey::new(b"other").open(&token), Err(InvalidCursor));
    }

    #[test]
    fn tampered_or_garbled_cursors_are_refused() {
        let key = CursorKey::random();
        let token = key.seal(&cursor());
        let (payload, tag) = token.split_once('.').unwrap();
        let mut forged = cursor();
        forged.values.0[0] = Some("0 OR 1=1".into());
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(key.open(&format!("{forged_payload}.{tag}")), Err(InvalidCursor));
        assert_eq!(key.open(payload), Err(InvalidCursor));
        assert_eq!(key.open("%%%.???"), Err(InvalidCursor));
        assert_eq!(key.open(""), Err(InvalidCursor));
    }
}
