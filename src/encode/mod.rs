//! Rows → bytes: one encoder per output format, all synchronous and free of I/O.
//!
//! Encoders read each cell's raw binary wire bytes through [`Cells`] and append text to a reused `Vec<u8>`;
//! `body.rs` decides when that buffer becomes an HTTP chunk. A new format is a new file here.

mod csv;
mod ndjson;
mod sse;
mod value;

use crate::negotiate;

pub use self::csv::CsvEncoder;
pub use self::ndjson::NdjsonEncoder;
pub use self::sse::SseEncoder;
pub use crate::dataset::ValueKind;

/// An output format of `/rows`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line, as `row_to_json` would print it.
    Ndjson,
    /// RFC 4180 CSV with a header, byte-identical to `COPY … (FORMAT csv, HEADER)`.
    Csv,
    /// One JSON array of the `row_to_json` objects, streamed: `[`, objects separated by `,`, `]`.
    Json,
    /// Server-sent events for `EventSource` (see [`SseEncoder`]).
    Sse,
}

/// Why no format could be chosen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// `?format=` named a format pgspout does not have.
    #[error("unknown format {0:?}; expected ndjson, csv, json or sse")]
    Unknown(String),
    /// The `Accept` header allows none of the formats.
    #[error(
        "Accept allows none of application/x-ndjson, application/jsonl, text/csv, application/json, text/event-stream"
    )]
    NotAcceptable,
}

impl Format {
    /// The `Content-Type` of a response in this format.
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8; header=present",
            Format::Json => "application/json",
            Format::Sse => "text/event-stream",
        }
    }

    /// The file name extension for `Content-Disposition`.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Ndjson => "ndjson",
            Format::Csv => "csv",
            Format::Json => "json",
            Format::Sse => "sse",
        }
    }

    /// Picks the format: `?format=` first, then the `Accept` header, else NDJSON.
    pub fn negotiate(param: Option<&str>, accept: Option<&str>) -> Result<Format, FormatError> {
        if let Some(name) = param {
            return match name {
                "ndjson" | "jsonl" => Ok(Format::Ndjson),
                "csv" => Ok(Format::Csv),
                "json" => Ok(Format::Json),
                "sse" => Ok(Format::Sse),
                other => Err(FormatError::Unknown(other.to_owned())),
            };
        }
        let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
            return Ok(Format::Ndjson);
        };
        const OFFERS: [(&str, Format); 5] = [
            ("application/x-ndjson", Format::Ndjson),
            ("application/jsonl", Format::Ndjson),
            ("text/csv", Format::Csv),
            ("application/json", Format::Json),
            ("text/event-stream", Format::Sse),
        ];
        negotiate::best(
            accept,
            OFFERS.iter().map(|(name, _)| *name),
            negotiate::media_range_matches,
        )
        .map(|i| OFFERS[i].1)
        .ok_or(FormatError::NotAcceptable)
    }
}

/// A cell that could not be encoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    /// The binary value does not have the layout its type promises.
    #[error("malformed {0} value from the database")]
    Malformed(&'static str),
    /// The row has no such column, or it could not be read.
    #[error("column {0} could not be read from the row")]
    Unreadable(usize),
}

/// One row's cells as raw binary wire values; `None` is SQL NULL.
pub trait Cells {
    /// The raw bytes of column `index`.
    fn cell(&self, index: usize) -> Result<Option<&[u8]>, EncodeError>;
}

/// A row held as owned values, as in tests and benchmarks.
impl Cells for [Option<Vec<u8>>] {
    fn cell(&self, index: usize) -> Result<Option<&[u8]>, EncodeError> {
        self.get(index)
            .map(Option::as_deref)
            .ok_or(EncodeError::Unreadable(index))
    }
}

/// A named column as the encoders see it.
#[derive(Clone, Debug)]
pub struct EncodedColumn {
    /// The column's name, as the header or JSON key.
    pub name: String,
    /// How its values are decoded.
    pub kind: ValueKind,
}

/// The encoder for one export: a format bound to its columns. Writes a header before the first row and a
/// trailer after the last, for formats that have them.
#[derive(Debug)]
pub enum RowEncoder {
    /// See [`NdjsonEncoder`].
    Ndjson(NdjsonEncoder),
    /// See [`CsvEncoder`].
    Csv(CsvEncoder),
    /// See [`SseEncoder`].
    Sse(SseEncoder),
    /// One JSON array of `row_to_json` objects (a page's rows, `format=json`): `[`, objects separated by
    /// `,`, `]`.
    JsonArray {
        /// The objects' encoder.
        objects: NdjsonEncoder,
        /// Whether a row has been written (the next needs a separator). A `Cell`, so that writing takes
        /// `&self`: the encoders' hot loop is measurably faster when the encoder is not borrowed mutably.
        started: std::cell::Cell<bool>,
    },
}

impl RowEncoder {
    /// An encoder of `format` for rows with these columns, in order (SSE events without a total or earlier
    /// rows; see [`RowEncoder::sse`]).
    pub fn new(format: Format, columns: &[EncodedColumn]) -> Self {
        match format {
            Format::Ndjson => RowEncoder::Ndjson(NdjsonEncoder::new(columns)),
            Format::Csv => RowEncoder::Csv(CsvEncoder::new(columns)),
            Format::Json => RowEncoder::json_array(columns),
            Format::Sse => RowEncoder::Sse(SseEncoder::new(columns, None, 0)),
        }
    }

    /// An SSE encoder reporting progress against `total`, counting on after `sent_before` rows.
    pub fn sse(columns: &[EncodedColumn], total: Option<i64>, sent_before: u64) -> Self {
        RowEncoder::Sse(SseEncoder::new(columns, total, sent_before))
    }

    /// Whether rows travel in events that [`RowEncoder::close_event`] must end (SSE).
    pub fn writes_events(&self) -> bool {
        matches!(self, RowEncoder::Sse(_))
    }

    /// Ends the open event of an event stream (a no-op for other formats): the pipeline calls it before
    /// every chunk leaves, with the event's id and the rows sent so far.
    pub fn close_event(&self, id: Option<&str>, rows: u64, out: &mut Vec<u8>) {
        if let RowEncoder::Sse(sse) = self {
            sse.close_event(id, rows, out);
        }
    }

    /// An encoder of one JSON array of objects.
    pub fn json_array(columns: &[EncodedColumn]) -> Self {
        RowEncoder::JsonArray {
            objects: NdjsonEncoder::new(columns),
            started: std::cell::Cell::new(false),
        }
    }

    /// Appends what precedes the first row (the CSV header, the array's `[`).
    pub fn write_header(&self, out: &mut Vec<u8>) {
        match self {
            RowEncoder::Csv(csv) => csv.write_header(out),
            RowEncoder::JsonArray { .. } => out.push(b'['),
            RowEncoder::Sse(sse) => sse.write_header(out),
            RowEncoder::Ndjson(_) => {}
        }
    }

    /// Appends one row, including its line terminator or separator.
    #[inline]
    pub fn write_row<C: Cells + ?Sized>(&self, row: &C, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match self {
            RowEncoder::Ndjson(e) => e.write_row(row, out),
            RowEncoder::Csv(e) => e.write_row(row, out),
            RowEncoder::Sse(e) => e.write_row(row, out),
            RowEncoder::JsonArray { objects, started } => {
                if started.replace(true) {
                    out.push(b',');
                }
                objects.write_object(row, out)
            }
        }
    }

    /// Appends what follows the last row (the array's `]`, the event stream's `end` event after `rows`
    /// rows); written only when every row was.
    pub fn write_trailer(&self, rows: u64, out: &mut Vec<u8>) {
        match self {
            RowEncoder::JsonArray { .. } => out.push(b']'),
            RowEncoder::Sse(sse) => sse.write_trailer(rows, out),
            RowEncoder::Ndjson(_) | RowEncoder::Csv(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_param_wins_over_accept() {
        assert_eq!(
            Format::negotiate(Some("csv"), Some("application/x-ndjson")),
            Ok(Format::Csv)
        );
        assert!(matches!(
            Format::negotiate(Some("xml"), None),
            Err(FormatError::Unknown(_))
        ));
    }

    #[test]
    fn accept_picks_the_best_format_and_defaults_to_ndjson() {
        assert_eq!(Format::negotiate(None, None), Ok(Format::Ndjson));
        assert_eq!(Format::negotiate(None, Some("*/*")), Ok(Format::Ndjson));
        assert_eq!(Format::negotiate(None, Some("text/csv")), Ok(Format::Csv));
        assert_eq!(Format::negotiate(None, Some("text/csv, */*;q=0.5")), Ok(Format::Csv));
        assert_eq!(
            Format::negotiate(None, Some("text/*, application/jsonl;q=0.9")),
            Ok(Format::Csv)
        );
        assert_eq!(
            Format::negotiate(None, Some("text/csv;q=0.2, application/jsonl")),
            Ok(Format::Ndjson)
        );
        assert_eq!(Format::negotiate(None, Some("application/json")), Ok(Format::Json));
        assert_eq!(Format::negotiate(None, Some("text/event-stream")), Ok(Format::Sse));
        assert_eq!(Format::negotiate(Some("sse"), None), Ok(Format::Sse));
        assert_eq!(
            Format::negotiate(None, Some("application/xml")),
            Err(FormatError::NotAcceptable)
        );
        assert_eq!(
            Format::negotiate(None, Some("text/csv;q=0")),
            Err(FormatError::NotAcceptable)
        );
    }
}
