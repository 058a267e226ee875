//! NDJSON: one object per row, keys in column order, each value as Postgres's `to_json()` prints it.

use super::scan::{copy_padded, copy_unless, has_below, has_byte};
use super::value::{self, LastDate, Style};
use super::{Cells, EncodeError, EncodedColumn, Encoder, ValueKind};

/// Writes rows as `{"col":value,…}\n`, byte-identical to `row_to_json(row)`.
#[derive(Debug)]
pub struct NdjsonEncoder {
    columns: Vec<Column>,
}

/// A column as the NDJSON encoder writes it.
#[derive(Debug)]
struct Column {
    /// The text that precedes its value: `{"id":` or `,"name":`.
    key: Vec<u8>,
    /// The key padded to 32 bytes, when it fits (most do), for a copy of fixed size.
    padded: Option<[u8; 32]>,
    kind: ValueKind,
    /// The date it printed last.
    last: LastDate,
}

impl Column {
    #[inline]
    fn write_key(&self, out: &mut Vec<u8>) {
        match &self.padded {
            Some(padded) => copy_padded(padded, self.key.len(), out),
            None => out.extend_from_slice(&self.key),
        }
    }
}

impl NdjsonEncoder {
    /// An encoder for rows with these columns.
    pub fn new(columns: &[EncodedColumn]) -> Self {
        let columns = columns
            .iter()
            .enumerate()
            .map(|(i, column)| {
                let mut key = vec![if i == 0 { b'{' } else { b',' }];
                write_json_string(column.name.as_bytes(), &mut key);
                key.push(b':');
                let padded = (key.len() <= 32).then(|| {
                    let mut padded = [0; 32];
                    padded[..key.len()].copy_from_slice(&key);
                    padded
                });
                Column {
                    key,
                    padded,
                    kind: column.kind,
                    last: LastDate::default(),
                }
            })
            .collect();
        NdjsonEncoder { columns }
    }

    /// Appends one row and its newline.
    #[inline]
    pub fn write_row<C: Cells + ?Sized>(&self, row: &C, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.write_object(row, out)?;
        out.push(b'\n');
        Ok(())
    }

    /// Appends one row as a JSON object, without a newline.
    #[inline]
    pub fn write_object<C: Cells + ?Sized>(&self, row: &C, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if self.columns.is_empty() {
            out.push(b'{');
        }
        for (i, column) in self.columns.iter().enumerate() {
            column.write_key(out);
            match row.cell(i)? {
                None => out.extend_from_slice(b"null"),
                Some(raw) => write_value(column.kind, raw, &column.last, out)?,
            }
        }
        out.push(b'}');
        Ok(())
    }
}

impl<R: Cells + ?Sized> Encoder<R> for NdjsonEncoder {
    #[inline]
    fn write_row(&mut self, row: &R, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        NdjsonEncoder::write_row(self, row, out)
    }
}

/// One JSON array of `row_to_json` objects (a page's rows, `format=json`): `[`, objects separated by `,`, `]`.
#[derive(Debug)]
pub struct JsonArrayEncoder {
    objects: NdjsonEncoder,
    /// Whether a row has been written (the next needs a separator).
    started: bool,
}

impl JsonArrayEncoder {
    /// An encoder for rows with these columns.
    pub fn new(columns: &[EncodedColumn]) -> Self {
        JsonArrayEncoder {
            objects: NdjsonEncoder::new(columns),
            started: false,
        }
    }
}

impl<R: Cells + ?Sized> Encoder<R> for JsonArrayEncoder {
    fn write_header(&mut self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        out.push(b'[');
        Ok(())
    }

    #[inline]
    fn write_row(&mut self, row: &R, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if std::mem::replace(&mut self.started, true) {
            out.push(b',');
        }
        self.objects.write_object(row, out)
    }

    fn write_trailer(&mut self, _rows: u64, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        out.push(b']');
        Ok(())
    }
}

#[inline]
fn write_value(kind: ValueKind, raw: &[u8], last: &LastDate, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match kind {
        ValueKind::Int => value::write_int(raw, out)?,
        ValueKind::Text => write_json_string(raw, out),
        ValueKind::Numeric => value::write_numeric(raw, true, out)?,
        ValueKind::TimestampUtc => value::write_timestamp(raw, Style::Xsd, true, last, out)?,
        ValueKind::Timestamp => value::write_timestamp(raw, Style::Xsd, false, last, out)?,
        ValueKind::Bool => value::write_bool(raw, true, out)?,
        ValueKind::Date => value::write_date(raw, true, last, out)?,
        ValueKind::Uuid => {
            out.push(b'"');
            value::write_uuid(raw, out)?;
            out.push(b'"');
        }
        ValueKind::Bytea => value::write_bytea(raw, true, out),
        // `json` and server-side `to_json()` text are JSON already.
        ValueKind::Json | ValueKind::ServerFormatted => out.extend_from_slice(raw),
        ValueKind::Jsonb => match raw.split_first() {
            Some((1, text)) => out.extend_from_slice(text),
            _ => return Err(EncodeError::Malformed("jsonb")),
        },
    }
    Ok(())
}

/// Bytes that `escape_json` rewrites: `"`, `\\` and the C0 controls.
const ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Whether some byte of the word `w` is one that [`write_json_string`] escapes.
#[inline]
fn has_json_escape(w: u64) -> bool {
    has_below(w, 0x20) || has_byte(w, b'"') || has_byte(w, b'\\')
}

/// A JSON string as Postgres's `escape_json` writes it: `"`, `\` and control characters escaped, the rest
/// (including non-ASCII UTF-8) copied as is.
#[inline]
pub(crate) fn write_json_string(text: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    if copy_unless(text, out, has_json_escape) {
        out.push(b'"');
        return;
    }
    out.reserve(text.len() + 1);
    let mut rest = text;
    // Copy the runs between escapes whole; most values have none.
    while let Some(at) = rest.iter().position(|&b| ESCAPED[usize::from(b)]) {
        out.extend_from_slice(&rest[..at]);
        let b = rest[at];
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 0xf)],
                ]);
            }
        }
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Row(Vec<Option<Vec<u8>>>);

    impl Cells for Row {
        fn cell(&self, index: usize) -> Result<Option<&[u8]>, EncodeError> {
            self.0
                .get(index)
                .map(Option::as_deref)
                .ok_or(EncodeError::Unreadable(index))
        }
    }

    fn column(name: &str, kind: ValueKind) -> EncodedColumn {
        EncodedColumn::new(name, kind)
    }

    #[test]
    fn ndjson_escapes_like_postgres_escape_json() {
        let mut out = Vec::new();
        write_json_string("a\"b\\c\nd\u{1}é\u{7f}".as_bytes(), &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "\"a\\\"b\\\\c\\nd\\u0001é\u{7f}\"");
    }

    #[test]
    fn ndjson_writes_keys_in_column_order_and_nulls() {
        let encoder = NdjsonEncoder::new(&[
            column("id", ValueKind::Int),
            column("say \"hi\"", ValueKind::Text),
            column("doc", ValueKind::Jsonb),
        ]);
        let row = Row(vec![
            Some(7i64.to_be_bytes().to_vec()),
            None,
            Some(b"\x01{\"a\": 1}".to_vec()),
        ]);
        let mut out = Vec::new();
        encoder.write_row(&row, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"id\":7,\"say \\\"hi\\\"\":null,\"doc\":{\"a\": 1}}\n"
        );
    }

    #[test]
    fn ndjson_rejects_an_unknown_jsonb_version() {
        let encoder = NdjsonEncoder::new(&[column("doc", ValueKind::Jsonb)]);
        let row = Row(vec![Some(b"\x02{}".to_vec())]);
        assert_eq!(
            encoder.write_row(&row, &mut Vec::new()),
            Err(EncodeError::Malformed("jsonb"))
        );
    }
}
