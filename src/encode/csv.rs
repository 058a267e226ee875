//! CSV exactly as `COPY … TO STDOUT (FORMAT csv, HEADER)` writes it.
//!
//! Hand-written rather than csv-core: COPY's rules hinge on the NULL/empty-string distinction (NULL is an
//! empty field, `''` is `""`) and on quoting a lone `\.`, which a general CSV writer cannot express per field.

use super::scan::{copy_unless, has_byte};
use super::value::{self, LastDate, Style};
use super::{Cells, EncodeError, EncodedColumn, Encoder, ValueKind};

/// Writes a header line, then one line per row.
#[derive(Debug)]
pub struct CsvEncoder {
    names: Vec<String>,
    /// Per column: its kind and the date it printed last.
    kinds: Vec<(ValueKind, LastDate)>,
}

impl CsvEncoder {
    /// An encoder for rows with these columns.
    pub fn new(columns: &[EncodedColumn]) -> Self {
        CsvEncoder {
            names: columns.iter().map(|c| c.name.clone()).collect(),
            kinds: columns.iter().map(|c| (c.kind, LastDate::default())).collect(),
        }
    }

    /// Appends the header line of column names.
    pub fn write_header(&self, out: &mut Vec<u8>) {
        let single = self.names.len() == 1;
        for (i, name) in self.names.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_field(name.as_bytes(), single, out);
        }
        out.push(b'\n');
    }

    /// Appends one row and its newline.
    #[inline]
    pub fn write_row<C: Cells + ?Sized>(&self, row: &C, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let single = self.kinds.len() == 1;
        for (i, (kind, last)) in self.kinds.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            if let Some(raw) = row.cell(i)? {
                write_value(*kind, raw, single, last, out)?;
            }
        }
        out.push(b'\n');
        Ok(())
    }
}

impl<R: Cells + ?Sized> Encoder<R> for CsvEncoder {
    fn write_header(&mut self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        CsvEncoder::write_header(self, out);
        Ok(())
    }

    #[inline]
    fn write_row(&mut self, row: &R, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        CsvEncoder::write_row(self, row, out)
    }
}

#[inline]
fn write_value(
    kind: ValueKind,
    raw: &[u8],
    single: bool,
    last: &LastDate,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    match kind {
        ValueKind::Int => value::write_int(raw, out)?,
        ValueKind::Text | ValueKind::Json | ValueKind::ServerFormatted => write_field(raw, single, out),
        ValueKind::Numeric => value::write_numeric(raw, false, out)?,
        ValueKind::TimestampUtc => value::write_timestamp(raw, Style::Iso, true, last, out)?,
        ValueKind::Timestamp => value::write_timestamp(raw, Style::Iso, false, last, out)?,
        ValueKind::Bool => value::write_bool(raw, false, out)?,
        ValueKind::Date => value::write_date(raw, false, last, out)?,
        ValueKind::Uuid => value::write_uuid(raw, out)?,
        ValueKind::Bytea => value::write_bytea(raw, false, out),
        ValueKind::Jsonb => match raw.split_first() {
            Some((1, text)) => write_field(text, single, out),
            _ => return Err(EncodeError::Malformed("jsonb")),
        },
    }
    Ok(())
}

/// A non-NULL text field, quoted when COPY would quote it: when it is empty (it would read back as NULL),
/// contains a comma, quote, CR or LF, or is the lone `\.` end-of-data marker of a one-column file.
pub(super) fn write_field(text: &[u8], single_column: bool, out: &mut Vec<u8>) {
    let quoted = text.is_empty() || (single_column && text == b"\\.");
    if !quoted
        && copy_unless(text, out, |w| {
            has_byte(w, b',') || has_byte(w, b'"') || has_byte(w, b'\n') || has_byte(w, b'\r')
        })
    {
        return;
    }
    out.reserve(text.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in text.iter().enumerate() {
        if b == b'"' {
            out.extend_from_slice(&text[start..=i]);
            out.push(b'"');
            start = i + 1;
        }
    }
    out.extend_from_slice(&text[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(text: &str, single: bool) -> String {
        let mut out = Vec::new();
        write_field(text.as_bytes(), single, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn csv_quotes_fields_that_contain_quotes_commas_and_newlines() {
        assert_eq!(field("plain", false), "plain");
        assert_eq!(field("a,b", false), "\"a,b\"");
        assert_eq!(field("say \"hi\"", false), "\"say \"\"hi\"\"\"");
        assert_eq!(field("line\nbreak", false), "\"line\nbreak\"");
        assert_eq!(field("cr\r", false), "\"cr\r\"");
        assert_eq!(field(" spaced ", false), " spaced ");
    }

    #[test]
    fn csv_tells_empty_strings_from_nulls() {
        assert_eq!(field("", false), "\"\"");
        let columns = [
            EncodedColumn::new("a", ValueKind::Text),
            EncodedColumn::new("b", ValueKind::Text),
        ];
        let mut out = Vec::new();
        CsvEncoder::new(&columns)
            .write_row(&[None, Some(Vec::new())][..], &mut out)
            .unwrap();
        assert_eq!(out, b",\"\"\n");
    }

    #[test]
    fn csv_quotes_the_end_marker_only_in_one_column_files() {
        assert_eq!(field("\\.", true), "\"\\.\"");
        assert_eq!(field("\\.", false), "\\.");
    }
}
