//! Opaque cursors: the sort values of a page's last row (page cursors) or of an event's last row (an event
//! stream's resume tokens), bound to the dataset and order, signed with HMAC-SHA256 so a tampered or foreign
//! cursor is refused rather than run.

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
    /// Resume tokens: the rows the stream had sent up to that row (so `limit` counts on).
    #[serde(rename = "n", default, skip_serializing_if = "is_zero")]
    pub(crate) sent: u64,
    /// Resume tokens: a digest of the request's query string, so a token resumes only its own request.
    #[serde(rename = "q", default, skip_serializing_if = "String::is_empty")]
    pub(crate) request: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A digest of a request's query parameters, in order, as resume tokens carry it.
pub(crate) fn request_digest(params: &[(String, String)]) -> String {
    use sha2::Digest as _;
    let mut hash = Sha256::new();
    for (name, value) in params {
        for part in [name, value] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
    }
    URL_SAFE_NO_PAD.encode(&hash.finalize()[..16])
}

/// Makes the resume tokens of one event stream: its events' ids.
#[derive(Debug)]
pub(crate) struct ResumeTokens {
    key: CursorKey,
    dataset: String,
    order: String,
    request: String,
    /// Rows sent before this response (a resumed stream's).
    sent_before: u64,
}

impl ResumeTokens {
    /// Tokens for a stream of `dataset` in the order with `signature`, for the request with `digest`
    /// (see [`request_digest`]), after `sent_before` rows.
    pub(crate) fn new(key: &CursorKey, dataset: &str, signature: String, digest: String, sent_before: u64) -> Self {
        ResumeTokens {
            key: key.clone(),
            dataset: dataset.to_owned(),
            order: signature,
            request: digest,
            sent_before,
        }
    }

    /// The token after a row at `position`, the `rows`th of this response.
    pub(crate) fn token(&self, position: super::Position, rows: u64) -> String {
        self.key.seal(&Cursor {
            dataset: self.dataset.clone(),
            order: self.order.clone(),
            values: position,
            sent: self.sent_before + rows,
            request: self.request.clone(),
        })
    }
}

/// A cursor that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the cursor is malformed, was altered, or was issued by another server")]
pub(crate) struct InvalidCursor;

/// What a Flight ticket's signed payload starts with.
const TICKET_TAG: &[u8] = b"pgspout flight ticket\0";

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
        self.signed(&serde_json::to_vec(cursor).expect("a cursor always serializes"))
    }

    /// A Flight ticket for `command` (a dataset and its query): signed, so a client cannot forge one. Its
    /// payload starts with a tag no cursor's JSON can, so neither passes for the other.
    pub(crate) fn seal_ticket(&self, command: &str) -> Vec<u8> {
        self.signed(&[TICKET_TAG, command.as_bytes()].concat()).into_bytes()
    }

    /// The command in a ticket this key signed.
    pub(crate) fn open_ticket(&self, ticket: &[u8]) -> Result<String, InvalidCursor> {
        let payload = self.verified(std::str::from_utf8(ticket).map_err(|_| InvalidCursor)?)?;
        let command = payload.strip_prefix(TICKET_TAG).ok_or(InvalidCursor)?;
        String::from_utf8(command.to_vec()).map_err(|_| InvalidCursor)
    }

    /// The cursor in `token`, if this key signed it.
    pub(crate) fn open(&self, token: &str) -> Result<Cursor, InvalidCursor> {
        serde_json::from_slice(&self.verified(token)?).map_err(|_| InvalidCursor)
    }

    /// `payload` and its tag, as URL-safe text.
    fn signed(&self, payload: &[u8]) -> String {
        let tag = self.mac(payload).finalize().into_bytes();
        format!("{}.{}", URL_SAFE_NO_PAD.encode(payload), URL_SAFE_NO_PAD.encode(tag))
    }

    /// The payload of `token`, if this key signed it.
    fn verified(&self, token: &str) -> Result<Vec<u8>, InvalidCursor> {
        let (payload, tag) = token.split_once('.').ok_or(InvalidCursor)?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| InvalidCursor)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| InvalidCursor)?;
        self.mac(&payload).verify_slice(&tag).map_err(|_| InvalidCursor)?;
        Ok(payload)
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
            sent: 0,
            request: String::new(),
        }
    }

    #[test]
    fn a_resume_token_carries_the_rows_sent_and_its_request() {
        let key = CursorKey::new(b"secret");
        let params = |limit: &str| {
            vec![
                ("format".to_owned(), "sse".to_owned()),
                ("limit".to_owned(), limit.to_owned()),
            ]
        };
        let tokens = ResumeTokens::new(&key, "orders", "o".into(), request_digest(&params("10")), 4);
        let opened = key
            .open(&tokens.token(super::super::Position(vec![Some("7".into())]), 3))
            .unwrap();
        assert_eq!((opened.sent, opened.dataset.as_str()), (7, "orders"));
        assert_eq!(opened.request, request_digest(&params("10")));
        assert_ne!(opened.request, request_digest(&params("11")));
        // Length-prefixed: moving a character from a name to its value changes the digest.
        let split = |a: &str, b: &str| request_digest(&[(a.to_owned(), b.to_owned())]);
        assert_ne!(split("ab", "c"), split("a", "bc"));
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

    #[test]
    fn tickets_open_with_their_key_only_and_never_pass_for_cursors() {
        let key = CursorKey::new(b"secret");
        let ticket = key.seal_ticket("orders?amount=gt.100");
        assert_eq!(key.open_ticket(&ticket).unwrap(), "orders?amount=gt.100");
        assert_eq!(CursorKey::new(b"other").open_ticket(&ticket), Err(InvalidCursor));
        assert_eq!(key.open(std::str::from_utf8(&ticket).unwrap()), Err(InvalidCursor));
        assert_eq!(key.open_ticket(key.seal(&cursor()).as_bytes()), Err(InvalidCursor));
        assert_eq!(key.open_ticket(b"orders"), Err(InvalidCursor));
    }
}
