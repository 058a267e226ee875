//! Finding bytes eight at a time: most text values need no escaping or quoting, and saying so a word at a
//! time, rather than a byte, is what keeps the text encoders' cost near a copy.

/// `0x01` in every byte of a word.
const ONES: u64 = 0x0101_0101_0101_0101;
/// `0x80` in every byte of a word.
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Spaces in every byte of a word: neither JSON nor CSV escape or quote a space, so they pad a short word.
const SPACES: u64 = ONES * b' ' as u64;

/// Eight bytes as a word.
#[inline]
fn load(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().expect("eight bytes"))
}

/// Appends `text` to `out`, unless some word of it `matches`: then `out` is left as it was and the answer is
/// `false`. Most values have nothing to escape or quote, and this finds that out and copies them in one pass,
/// a word at a time, with copies of fixed size (a few stores, where a copy of unknown length is a call).
#[inline]
pub(crate) fn copy_unless(text: &[u8], out: &mut Vec<u8>, matches: impl Fn(u64) -> bool) -> bool {
    let start = out.len();
    out.reserve(text.len() + 8);
    let tail = text.len() % 8;
    let mut words = text.chunks_exact(8);
    for word in words.by_ref() {
        let word = load(word);
        if matches(word) {
            out.truncate(start);
            return false;
        }
        out.extend_from_slice(&word.to_le_bytes());
    }
    if tail > 0 {
        let last = if text.len() >= 8 {
            // The last eight bytes, shifted down to the tail's, spaces above.
            load(&text[text.len() - 8..]) >> (8 * (8 - tail)) | SPACES << (8 * tail)
        } else {
            // Built in registers: a word copied through memory is read back slowly (a failed store
            // forward). Each byte shifts the spaces up by one, so the text ends up in the low bytes, in order.
            words
                .remainder()
                .iter()
                .rev()
                .fold(SPACES, |word, &b| (word << 8) | u64::from(b))
        };
        if matches(last) {
            out.truncate(start);
            return false;
        }
        out.extend_from_slice(&last.to_le_bytes());
        out.truncate(start + text.len());
    }
    true
}

/// Appends `text`, of at most 32 bytes, kept in `padded` (a copy of fixed size: see [`copy_unless`]).
#[inline]
pub(crate) fn copy_padded(padded: &[u8; 32], len: usize, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(padded);
    out.truncate(start + len);
}

/// Whether some byte of `word` is `byte`. The borrow of the zero-byte test can mark bytes above a match,
/// never a word without one: as a yes or no it is exact.
#[inline]
pub(crate) fn has_byte(word: u64, byte: u8) -> bool {
    let x = word ^ (ONES * u64::from(byte));
    x.wrapping_sub(ONES) & !x & HIGHS != 0
}

/// Whether some byte of `word` is below `limit` (at most 0x80; bytes from 0x80 up never count).
#[inline]
pub(crate) fn has_below(word: u64, limit: u8) -> bool {
    word.wrapping_sub(ONES * u64::from(limit)) & !word & HIGHS != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte at a time, for comparison.
    fn slow(text: &[u8], byte: u8, limit: u8) -> (bool, bool) {
        (text.contains(&byte), text.iter().any(|&b| b < limit))
    }

    #[test]
    fn word_tests_agree_with_a_byte_loop_on_every_byte_in_every_position() {
        for position in 0..8 {
            for value in 0..=255u8 {
                let mut bytes = *b"abcdefgh";
                bytes[position] = value;
                let w = u64::from_le_bytes(bytes);
                for (byte, limit) in [(b'"', 0x20), (b'\\', 0x20), (b',', 0x20), (b'\n', 0x20), (0, 0x80)] {
                    let expected = slow(&bytes, byte, limit);
                    assert_eq!((has_byte(w, byte), has_below(w, limit)), expected, "{bytes:?}");
                }
            }
        }
        // Padding never matches what the encoders look for; every byte of a text of any length is seen, and
        // copied exactly when none matches.
        let json = |w| has_byte(w, b'"') || has_below(w, 0x20);
        for len in 0..=20 {
            let text: Vec<u8> = (0..len).map(|i| b'a' + i as u8).collect();
            let mut out = b"before".to_vec();
            assert!(copy_unless(&text, &mut out, json), "{len}");
            assert_eq!(out[6..], text[..]);
            for at in 0..len {
                let mut text = text.clone();
                text[at] = b'"';
                let mut out = b"before".to_vec();
                assert!(!copy_unless(&text, &mut out, json), "{len} {at}");
                assert_eq!(out, b"before");
            }
        }
    }

    #[test]
    fn several_matches_and_non_ascii_are_told_exactly() {
        let w = u64::from_le_bytes(*b"\xc3\xa9\"\x01xyz\xc3");
        assert!(has_byte(w, b'"') && has_below(w, 0x20) && !has_byte(w, b','));
        let w = u64::from_le_bytes(*b"\xc3\xa9\xc3\xa9\xc3\xa9ab");
        assert!(!has_below(w, 0x20) && !has_byte(w, b'"') && !has_byte(w, b'\\'));
    }

    /// What the encoders' fast paths must equal: JSON's escaping and CSV's quoting, a byte at a time.
    fn reference_json(text: &[u8]) -> Vec<u8> {
        let mut out = vec![b'"'];
        for &b in text {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0c => out.extend_from_slice(b"\\f"),
                0..0x20 => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
                _ => out.push(b),
            }
        }
        out.push(b'"');
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        #[test]
        fn json_strings_escape_as_a_byte_loop_would(
            text in proptest::collection::vec(proptest::sample::select(b"ab \"\\\n\x01\x1f\x7f\xc3\xa9,".to_vec()), 0..40)
        ) {
            let mut out = b"x".to_vec();
            crate::encode::ndjson::write_json_string(&text, &mut out);
            proptest::prop_assert_eq!(&out[1..], &reference_json(&text)[..]);
        }

        #[test]
        fn csv_fields_quote_as_a_byte_loop_would(
            text in proptest::collection::vec(proptest::sample::select(b"ab \",\r\n\\.".to_vec()), 0..40)
        ) {
            let quoted = text.is_empty() || text.iter().any(|b| b",\"\r\n".contains(b));
            let expected = if quoted {
                let mut out = vec![b'"'];
                for &b in &text {
                    out.push(b);
                    if b == b'"' {
                        out.push(b'"');
                    }
                }
                out.push(b'"');
                out
            } else {
                text.clone()
            };
            let mut out = b"x".to_vec();
            crate::encode::csv::write_field(&text, false, &mut out);
            proptest::prop_assert_eq!(&out[1..], &expected[..]);
        }
    }
}
