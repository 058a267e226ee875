//! Rows → bytes: one encoder per output format, all synchronous and free of I/O.
//!
//! Encoders read each cell's raw binary wire bytes through [`Cells`] and append bytes to a reused `Vec<u8>`;
//! the pipeline decides when that buffer becomes a piece (an HTTP chunk, a job's batch). A new format is a
//! file here implementing [`Encoder`], a row in [`FORMATS`] and an arm in [`Format::encoder`].

mod arrow;
mod csv;
mod ndjson;
mod parquet;
mod scan;
mod sse;
mod value;

use crate::negotiate;
use crate::query::cursor::ResumeTokens;

pub use self::arrow::{ArrowEncoder, Container, schema as arrow_schema};
pub use self::csv::CsvEncoder;
pub use self::ndjson::{JsonArrayEncoder, NdjsonEncoder};
pub use self::sse::SseEncoder;
pub use crate::dataset::{Columnar, Scalar, ValueKind};
pub use crate::query::Position;

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
    /// An Arrow IPC stream of typed record batches (see [`ArrowEncoder`]); a job writes an IPC file.
    Arrow,
    /// A Parquet file of the same typed columns, in row groups bounded by bytes.
    Parquet,
}

/// How a query hands a column's values to the encoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueStyle {
    /// The binary wire form, which the encoder decodes itself.
    Binary,
    /// The text of the type's output function (what `COPY` prints).
    Text,
    /// The text of `to_json()`.
    Json,
}

/// A job file's name and type, where they differ from the response's (an Arrow job writes an IPC file, whose
/// footer indexes its batches, where a response streams).
#[derive(Clone, Copy, Debug)]
pub struct JobFile {
    /// The file name extension.
    pub extension: &'static str,
    /// The download's `Content-Type`.
    pub media_type: &'static str,
    /// Whether a job's file continues from its last checkpoint by appending rows after a restart (text
    /// formats), rather than starting over (a columnar file, whose footer indexes what precedes it).
    pub resumes: bool,
}

/// What a format is and can do: the one table the negotiation, the OpenAPI document, `--help` and the job API
/// read, so that a new format is described once.
#[derive(Clone, Copy, Debug)]
pub struct FormatInfo {
    /// The format.
    pub format: Format,
    /// Its `?format=` name, then any alias.
    pub names: &'static [&'static str],
    /// The media types `Accept` may name for it.
    pub accepts: &'static [&'static str],
    /// The response's `Content-Type`.
    pub media_type: &'static str,
    /// The file name extension.
    pub extension: &'static str,
    /// Whether HTTP's and jobs' gzip, zstd and br apply (a Parquet file compresses its pages itself).
    pub compressible: bool,
    /// What a background export writes, if it can write this format.
    pub jobs: Option<JobFile>,
    /// A line for the OpenAPI document and `--help`.
    pub summary: &'static str,
}

/// Every format, in the order `Accept` ties are broken and lists are shown.
pub const FORMATS: [FormatInfo; 6] = [
    FormatInfo {
        format: Format::Ndjson,
        names: &["ndjson", "jsonl"],
        accepts: &["application/x-ndjson", "application/jsonl"],
        media_type: "application/x-ndjson",
        extension: "ndjson",
        compressible: true,
        jobs: Some(JobFile {
            extension: "ndjson",
            media_type: "application/x-ndjson",
            resumes: true,
        }),
        summary: "one JSON object per line, as row_to_json prints it",
    },
    FormatInfo {
        format: Format::Csv,
        names: &["csv"],
        accepts: &["text/csv"],
        media_type: "text/csv; charset=utf-8; header=present",
        extension: "csv",
        compressible: true,
        jobs: Some(JobFile {
            extension: "csv",
            media_type: "text/csv; charset=utf-8; header=present",
            resumes: true,
        }),
        summary: "CSV with a header, as COPY … (FORMAT csv, HEADER) prints it",
    },
    FormatInfo {
        format: Format::Json,
        names: &["json"],
        accepts: &["application/json"],
        media_type: "application/json",
        extension: "json",
        compressible: true,
        jobs: None,
        summary: "one JSON array of the row objects, streamed",
    },
    FormatInfo {
        format: Format::Sse,
        names: &["sse"],
        accepts: &["text/event-stream"],
        media_type: "text/event-stream",
        extension: "sse",
        compressible: true,
        jobs: None,
        summary: "server-sent events with resume tokens and progress",
    },
    FormatInfo {
        format: Format::Arrow,
        names: &["arrow"],
        accepts: &["application/vnd.apache.arrow.stream"],
        media_type: "application/vnd.apache.arrow.stream",
        extension: "arrows",
        compressible: true,
        jobs: Some(JobFile {
            extension: "arrow",
            media_type: "application/vnd.apache.arrow.file",
            resumes: false,
        }),
        summary: "an Arrow IPC stream of typed record batches (a job writes an Arrow IPC file)",
    },
    FormatInfo {
        format: Format::Parquet,
        names: &["parquet"],
        accepts: &["application/vnd.apache.parquet"],
        media_type: "application/vnd.apache.parquet",
        extension: "parquet",
        compressible: false,
        jobs: Some(JobFile {
            extension: "parquet",
            media_type: "application/vnd.apache.parquet",
            resumes: false,
        }),
        summary: "a Parquet file of typed columns, zstd-compressed, in row groups of at most 131,072 rows or 16 MiB",
    },
];

/// Why no format could be chosen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// `?format=` named a format pgspout does not have.
    #[error("unknown format {0:?}; expected {names}", names = Format::names().join(", "))]
    Unknown(String),
    /// The `Accept` header allows none of the formats.
    #[error("Accept allows none of {}", FORMATS.iter().flat_map(|f| f.accepts).copied().collect::<Vec<_>>().join(", "))]
    NotAcceptable,
}

impl Format {
    /// Its row in [`FORMATS`].
    pub fn info(self) -> &'static FormatInfo {
        FORMATS
            .iter()
            .find(|f| f.format == self)
            .expect("every format is in FORMATS")
    }

    /// Every format's `?format=` name.
    pub fn names() -> Vec<&'static str> {
        FORMATS.iter().map(|f| f.names[0]).collect()
    }

    /// Its `?format=` name.
    pub fn name(self) -> &'static str {
        self.info().names[0]
    }

    /// The `Content-Type` of a response in this format.
    pub fn media_type(self) -> &'static str {
        self.info().media_type
    }

    /// What a job writes in this format; a format jobs cannot write names the response's extension and type.
    pub fn job_file(self) -> JobFile {
        let info = self.info();
        info.jobs.unwrap_or(JobFile {
            extension: info.extension,
            media_type: info.media_type,
            resumes: false,
        })
    }

    /// The file name extension for `Content-Disposition`.
    pub fn extension(self) -> &'static str {
        self.info().extension
    }

    /// How the query hands over a column's values in this format, and what the column becomes in it. Text
    /// formats take the types pgspout decodes as binary, the others as text (CSV) or JSON text; columnar ones
    /// take binary values of the types they map and text of the others.
    pub fn column_style(self, kind: ValueKind, columnar: Columnar) -> (ValueStyle, Columnar) {
        let columnar = match self {
            Format::Arrow => columnar,
            // Parquet has no interval of microseconds (its INTERVAL counts milliseconds) and no decimal of
            // negative scale: those columns are Postgres's exact text.
            Format::Parquet => match columnar.scalar {
                Scalar::Interval => Columnar::TEXT,
                Scalar::Decimal { scale, .. } if scale < 0 => Columnar::TEXT,
                _ => columnar,
            },
            Format::Ndjson | Format::Json | Format::Sse | Format::Csv => {
                let style = match self {
                    _ if kind.is_native() => ValueStyle::Binary,
                    Format::Csv => ValueStyle::Text,
                    _ => ValueStyle::Json,
                };
                return (style, Columnar::TEXT);
            }
        };
        let style = if columnar.is_text() {
            ValueStyle::Text
        } else {
            ValueStyle::Binary
        };
        (style, columnar)
    }

    /// Picks the format: `?format=` first, then the `Accept` header, else NDJSON.
    pub fn negotiate(param: Option<&str>, accept: Option<&str>) -> Result<Format, FormatError> {
        if let Some(name) = param {
            return FORMATS
                .iter()
                .find(|f| f.names.contains(&name))
                .map(|f| f.format)
                .ok_or_else(|| FormatError::Unknown(name.to_owned()));
        }
        let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
            return Ok(Format::Ndjson);
        };
        let offers: Vec<(&str, Format)> = FORMATS
            .iter()
            .flat_map(|f| f.accepts.iter().map(|media| (*media, f.format)))
            .collect();
        negotiate::best(
            accept,
            offers.iter().map(|(name, _)| *name),
            negotiate::media_range_matches,
        )
        .map(|i| offers[i].1)
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
    /// A value its column's type in the output format cannot hold (`infinity` in an Arrow timestamp).
    #[error("column {column:?} holds {what}, which its {format} type cannot hold")]
    Unrepresentable {
        /// The column.
        column: String,
        /// The value, described.
        what: &'static str,
        /// The format.
        format: &'static str,
    },
    /// A columnar writer failed.
    #[error("the {format} writer failed: {message}")]
    Writer {
        /// The format.
        format: &'static str,
        /// What it said.
        message: String,
    },
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
    /// How the text formats decode its values.
    pub kind: ValueKind,
    /// What its values become in a columnar format (there, `kind` is unused).
    pub columnar: Columnar,
    /// Its Postgres type, as `format_type` prints it (in a columnar format's field metadata).
    pub type_name: String,
}

impl EncodedColumn {
    /// A column decoded as `kind` by the text formats, and Postgres text in columnar ones.
    pub fn new(name: &str, kind: ValueKind) -> EncodedColumn {
        EncodedColumn {
            name: name.to_owned(),
            kind,
            columnar: Columnar::TEXT,
            type_name: "text".to_owned(),
        }
    }
}

/// One export's encoder: a format bound to its columns, for rows of type `R` (the database's rows, or owned
/// values in tests and benches). Each format implements it in a file of its own, and the pipeline calls it in
/// this order: the header, then rows, with the end of each piece (a body chunk, a job's batch) between them,
/// and after the last row the trailer.
pub trait Encoder<R: Cells + ?Sized>: Send {
    /// Appends what precedes the first row (the CSV header, the array's `[`, the Arrow schema, a file's magic
    /// bytes).
    fn write_header(&mut self, _out: &mut Vec<u8>) -> Result<(), EncodeError> {
        Ok(())
    }

    /// Appends one row, with its line terminator or separator, or takes it into a batch in the making.
    fn write_row(&mut self, row: &R, out: &mut Vec<u8>) -> Result<(), EncodeError>;

    /// The end of a piece, before its bytes leave, after `rows` rows, the last at `position` (when the rows
    /// carry positions): an event stream ends its open event (with a resume token for that row as its id), a
    /// columnar format writes the rows it gathered as a batch.
    fn end_piece(&mut self, _rows: u64, _position: Option<Position>, _out: &mut Vec<u8>) -> Result<(), EncodeError> {
        Ok(())
    }

    /// Whether rows were taken that no bytes show yet (a columnar batch in the making).
    fn has_pending(&self) -> bool {
        false
    }

    /// The bytes of the values taken that no bytes show yet.
    fn pending_bytes(&self) -> usize {
        0
    }

    /// Appends what follows the last row (the array's `]`, the event stream's `end` event after `rows` rows,
    /// the last batch and the Arrow stream's end-of-stream marker or the file's footer); written only when
    /// every row was.
    fn write_trailer(&mut self, _rows: u64, _out: &mut Vec<u8>) -> Result<(), EncodeError> {
        Ok(())
    }
}

/// An encoder as the pipeline holds it.
pub type RowEncoder<R> = Box<dyn Encoder<R>>;

impl Format {
    /// The encoder of this format for rows with these columns, in order, as a response streams them (SSE
    /// events without a total, earlier rows or ids; see [`sse_encoder`]).
    pub fn encoder<R: Cells + ?Sized>(self, columns: &[EncodedColumn]) -> Result<RowEncoder<R>, EncodeError> {
        Ok(match self {
            Format::Ndjson => Box::new(NdjsonEncoder::new(columns)),
            Format::Csv => Box::new(CsvEncoder::new(columns)),
            Format::Json => Box::new(JsonArrayEncoder::new(columns)),
            Format::Sse => Box::new(SseEncoder::new(columns, None, 0)),
            Format::Arrow => Box::new(ArrowEncoder::new(columns, Container::IpcStream)?),
            Format::Parquet => Box::new(ArrowEncoder::new(columns, Container::Parquet)?),
        })
    }

    /// The encoder of this format for a job's file (see [`JobFile`]).
    pub fn file_encoder<R: Cells + ?Sized>(self, columns: &[EncodedColumn]) -> Result<RowEncoder<R>, EncodeError> {
        match self {
            Format::Arrow => Ok(Box::new(ArrowEncoder::new(columns, Container::IpcFile)?)),
            _ => self.encoder(columns),
        }
    }
}

/// An SSE encoder reporting progress against `total`, counting on after `sent_before` rows, whose events' ids
/// are `tokens`' resume tokens.
pub(crate) fn sse_encoder<R: Cells + ?Sized>(
    columns: &[EncodedColumn],
    total: Option<i64>,
    sent_before: u64,
    tokens: Option<ResumeTokens>,
) -> RowEncoder<R> {
    Box::new(SseEncoder::new(columns, total, sent_before).with_resume_tokens(tokens))
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
    fn each_format_says_how_it_takes_a_column() {
        let interval = Columnar {
            scalar: Scalar::Interval,
            list: true,
        };
        let negative = Columnar {
            scalar: Scalar::Decimal {
                precision: 5,
                scale: -2,
            },
            list: false,
        };
        let server = ValueKind::ServerFormatted;
        assert_eq!(
            Format::Arrow.column_style(server, interval),
            (ValueStyle::Binary, interval)
        );
        assert_eq!(
            Format::Arrow.column_style(server, negative),
            (ValueStyle::Binary, negative)
        );
        // Parquet has neither: Postgres's text of both.
        for columnar in [interval, negative] {
            assert_eq!(
                Format::Parquet.column_style(server, columnar),
                (ValueStyle::Text, Columnar::TEXT)
            );
        }
        assert_eq!(
            Format::Parquet.column_style(server, Columnar::TEXT),
            (ValueStyle::Text, Columnar::TEXT)
        );
        assert_eq!(Format::Csv.column_style(server, interval).0, ValueStyle::Text);
        assert_eq!(Format::Ndjson.column_style(server, interval).0, ValueStyle::Json);
        assert_eq!(Format::Sse.column_style(ValueKind::Int, interval).0, ValueStyle::Binary);
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
            Format::negotiate(None, Some("application/vnd.apache.parquet")),
            Ok(Format::Parquet)
        );
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
