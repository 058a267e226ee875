//! Arrow record batches: rows gathered into batches of typed columns, written as an Arrow IPC stream, an Arrow
//! IPC file or a Parquet file.
//!
//! Values go from their binary wire form straight into Arrow builders (the mapping is [`Columnar`]'s); columns
//! of other types arrive as Postgres's text. A value its Arrow type cannot hold (`infinity`, a timestamp past
//! Arrow's range, `NaN` in a decimal, a second array dimension) is an error naming the column, never a null or a
//! sentinel. Every container ends with a marker or footer written after the last row only, so a cut stream or
//! file never reads as complete.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, FixedSizeBinaryBuilder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, IntervalMonthDayNanoBuilder, StringBuilder,
    Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, ListArray, RecordBatch, RecordBatchOptions};
use arrow_buffer::{IntervalMonthDayNano, NullBufferBuilder, OffsetBuffer, ScalarBuffer};
use arrow_ipc::writer::{FileWriter, StreamWriter};
use arrow_schema::{DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};

use super::parquet::{ParquetSink, ROW_GROUP_BYTES};
use super::value::array;
use super::{Cells, Columnar, EncodeError, EncodedColumn, Encoder, Position, Scalar};

/// A batch ends after this many rows…
const BATCH_ROWS: usize = 64 * 1024;
/// …or once its values hold this many bytes, whichever comes first (or when the pipeline flushes). Each batch
/// is held about four times over while it is built, encoded and sent, hence a modest size.
const BATCH_BYTES: usize = 2 * 1024 * 1024;

/// Days from the Unix epoch to Postgres's (2000-01-01), and the same in microseconds.
const PG_EPOCH_DAYS: i32 = 10_957;
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// The field metadata key that carries each column's Postgres type.
const TYPE_METADATA: &str = "pgspout.type";

/// The container the batches go into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Container {
    /// An Arrow IPC stream: the schema, then each batch as it is made, then the end-of-stream marker.
    IpcStream,
    /// An Arrow IPC file (a job's `.arrow`): the stream's messages between magic bytes, and a footer that
    /// indexes the batches for random access.
    IpcFile,
    /// A Parquet file: row groups bounded by bytes, then the footer (see `parquet.rs`).
    Parquet,
}

impl Container {
    /// The format's name in errors.
    pub fn label(self) -> &'static str {
        match self {
            Container::IpcStream | Container::IpcFile => "Arrow",
            Container::Parquet => "Parquet",
        }
    }
}

/// Where the batches are written.
enum Sink {
    Stream(StreamWriter<Vec<u8>>),
    File(FileWriter<Vec<u8>>),
    Parquet(ParquetSink),
}

/// Writes rows as record batches in a [`Container`].
pub struct ArrowEncoder {
    names: Vec<String>,
    builders: Vec<Builder>,
    schema: SchemaRef,
    sink: Sink,
    label: &'static str,
    rows: usize,
    bytes: usize,
}

impl std::fmt::Debug for ArrowEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArrowEncoder")
            .field("container", &self.label)
            .field("schema", &self.schema)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl ArrowEncoder {
    /// An encoder for rows with these columns; what precedes the first batch is ready for
    /// [`ArrowEncoder::write_header`].
    pub fn new(columns: &[EncodedColumn], container: Container) -> Result<Self, EncodeError> {
        let builders = columns.iter().map(|c| Builder::new(c.columnar)).collect();
        let schema = Arc::new(schema(columns));
        let label = container.label();
        let error = |error: arrow_schema::ArrowError| writer_error(label, error);
        let sink = match container {
            Container::IpcStream => Sink::Stream(StreamWriter::try_new(Vec::new(), &schema).map_err(error)?),
            Container::IpcFile => Sink::File(FileWriter::try_new(Vec::new(), &schema).map_err(error)?),
            Container::Parquet => Sink::Parquet(ParquetSink::new(&schema, ROW_GROUP_BYTES)?),
        };
        Ok(ArrowEncoder {
            names: columns.iter().map(|c| c.name.clone()).collect(),
            builders,
            schema,
            sink,
            label,
            rows: 0,
            bytes: 0,
        })
    }

    /// What precedes the first batch: the schema message, or a file's magic bytes.
    pub fn write_header(&mut self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.drain(out)
    }

    /// Adds one row to the batch in the making; a full batch is written to `out`.
    #[inline]
    pub fn write_row<C: Cells + ?Sized>(&mut self, row: &C, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        for (index, builder) in self.builders.iter_mut().enumerate() {
            let cell = row.cell(index)?;
            self.bytes += cell.map_or(1, |raw| raw.len() + 4);
            builder.append(cell).map_err(|what| match what {
                Unfit::Value(what) => EncodeError::Unrepresentable {
                    column: self.names[index].clone(),
                    what,
                    format: self.label,
                },
                Unfit::Malformed(kind) => EncodeError::Malformed(kind),
            })?;
        }
        self.rows += 1;
        if self.rows >= BATCH_ROWS || self.bytes >= BATCH_BYTES {
            self.write_batch(out)?;
        }
        Ok(())
    }

    /// Rows taken and not yet written.
    pub fn pending_rows(&self) -> usize {
        self.rows
    }

    /// About how many bytes the rows not yet written hold.
    pub fn pending_bytes(&self) -> usize {
        self.bytes
    }

    /// Writes the rows taken so far as one record batch (nothing when there are none). A stream's batch is in
    /// `out` at once; a Parquet file's rows may wait in its row group (see `parquet.rs`).
    pub fn write_batch(&mut self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if self.rows == 0 {
            return Ok(());
        }
        let arrays: Vec<ArrayRef> = self.builders.iter_mut().map(Builder::finish).collect();
        let options = RecordBatchOptions::new().with_row_count(Some(self.rows));
        let label = self.label;
        let error = |error| writer_error(label, error);
        let batch = RecordBatch::try_new_with_options(self.schema.clone(), arrays, &options).map_err(error)?;
        self.rows = 0;
        self.bytes = 0;
        match &mut self.sink {
            Sink::Stream(writer) => writer.write(&batch).map_err(error)?,
            Sink::File(writer) => writer.write(&batch).map_err(error)?,
            Sink::Parquet(writer) => writer.write(&batch)?,
        }
        self.drain(out)
    }

    /// The last batch and what ends the container: the end-of-stream marker, or the file's footer.
    pub fn write_trailer(&mut self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.write_batch(out)?;
        let error = |error| writer_error(self.label, error);
        match &mut self.sink {
            Sink::Stream(writer) => writer.finish().map_err(error)?,
            Sink::File(writer) => writer.finish().map_err(error)?,
            Sink::Parquet(writer) => writer.finish()?,
        }
        self.drain(out)
    }

    /// Moves what the sink has written to `out`.
    fn drain(&mut self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let written = match &mut self.sink {
            Sink::Stream(writer) => writer.get_mut(),
            Sink::File(writer) => writer.get_mut(),
            Sink::Parquet(writer) => writer.written()?,
        };
        if out.is_empty() {
            // The usual case: hand the batch over without copying it.
            std::mem::swap(out, written);
        } else {
            out.extend_from_slice(written);
            written.clear();
        }
        Ok(())
    }
}

impl<R: Cells + ?Sized> Encoder<R> for ArrowEncoder {
    fn write_header(&mut self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        ArrowEncoder::write_header(self, out)
    }

    #[inline]
    fn write_row(&mut self, row: &R, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        ArrowEncoder::write_row(self, row, out)
    }

    fn end_piece(&mut self, _rows: u64, _position: Option<Position>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.write_batch(out)
    }

    fn has_pending(&self) -> bool {
        self.pending_rows() > 0
    }

    fn pending_bytes(&self) -> usize {
        ArrowEncoder::pending_bytes(self)
    }

    fn write_trailer(&mut self, _rows: u64, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        ArrowEncoder::write_trailer(self, out)
    }
}

/// The Arrow schema of rows with these columns: each field's type from the type table, and the Postgres
/// type's name in its metadata.
pub fn schema(columns: &[EncodedColumn]) -> Schema {
    let fields: Vec<Field> = columns
        .iter()
        .map(|column| {
            let field = field(&column.name, column.columnar);
            let mut metadata = field.metadata().clone();
            metadata.insert(TYPE_METADATA.to_owned(), column.type_name.clone());
            field.with_metadata(metadata)
        })
        .collect();
    Schema::new(fields)
}

pub(super) fn writer_error(format: &'static str, error: impl std::fmt::Display) -> EncodeError {
    EncodeError::Writer {
        format,
        message: error.to_string(),
    }
}

/// The Arrow field of a column.
fn field(name: &str, columnar: Columnar) -> Field {
    let scalar = scalar_field(if columnar.list { "item" } else { name }, columnar.scalar);
    if columnar.list {
        Field::new(name, DataType::List(Arc::new(scalar)), true)
    } else {
        scalar
    }
}

fn scalar_field(name: &str, scalar: Scalar) -> Field {
    let extension = |name: &str, storage: DataType, extension: &str| {
        Field::new(name, storage, true).with_metadata(HashMap::from([
            ("ARROW:extension:name".to_owned(), extension.to_owned()),
            ("ARROW:extension:metadata".to_owned(), String::new()),
        ]))
    };
    match scalar {
        Scalar::Uuid => extension(name, DataType::FixedSizeBinary(16), "arrow.uuid"),
        Scalar::Json | Scalar::Jsonb => extension(name, DataType::Utf8, "arrow.json"),
        other => Field::new(name, data_type(other), true),
    }
}

fn data_type(scalar: Scalar) -> DataType {
    match scalar {
        Scalar::Bool => DataType::Boolean,
        Scalar::Int16 => DataType::Int16,
        Scalar::Int32 => DataType::Int32,
        Scalar::Int64 => DataType::Int64,
        Scalar::Float32 => DataType::Float32,
        Scalar::Float64 => DataType::Float64,
        Scalar::Decimal { precision, scale } => DataType::Decimal128(precision, scale),
        Scalar::Utf8 | Scalar::Text | Scalar::Json | Scalar::Jsonb => DataType::Utf8,
        Scalar::Binary => DataType::Binary,
        Scalar::Uuid => DataType::FixedSizeBinary(16),
        Scalar::Date => DataType::Date32,
        Scalar::Time => DataType::Time64(TimeUnit::Microsecond),
        Scalar::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        Scalar::TimestampUtc => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        Scalar::Interval => DataType::Interval(arrow_schema::IntervalUnit::MonthDayNano),
    }
}

/// Why a value did not go in.
enum Unfit {
    /// A valid value the Arrow type cannot hold.
    Value(&'static str),
    /// Bytes that are not the type's binary form.
    Malformed(&'static str),
}

impl From<EncodeError> for Unfit {
    fn from(error: EncodeError) -> Self {
        match error {
            EncodeError::Malformed(kind) => Unfit::Malformed(kind),
            _ => Unfit::Malformed("value"),
        }
    }
}

/// One column's values in the making.
enum Builder {
    Bool(BooleanBuilder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Decimal(Decimal128Builder, i8),
    /// Text-like types, enums, `json` and Postgres's text of other types.
    Utf8(StringBuilder),
    /// `jsonb`: a version byte, then the text.
    Jsonb(StringBuilder),
    Binary(BinaryBuilder),
    Uuid(FixedSizeBinaryBuilder),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder),
    Interval(IntervalMonthDayNanoBuilder),
    List {
        values: Box<Builder>,
        field: FieldRef,
        offsets: Vec<i32>,
        nulls: NullBufferBuilder,
    },
}

impl Builder {
    fn new(columnar: Columnar) -> Builder {
        let scalar = Builder::scalar(columnar.scalar);
        if !columnar.list {
            return scalar;
        }
        Builder::List {
            values: Box::new(scalar),
            field: Arc::new(scalar_field("item", columnar.scalar)),
            offsets: vec![0],
            nulls: NullBufferBuilder::new(BATCH_ROWS),
        }
    }

    fn scalar(scalar: Scalar) -> Builder {
        match scalar {
            Scalar::Bool => Builder::Bool(BooleanBuilder::new()),
            Scalar::Int16 => Builder::Int16(Int16Builder::new()),
            Scalar::Int32 => Builder::Int32(Int32Builder::new()),
            Scalar::Int64 => Builder::Int64(Int64Builder::new()),
            Scalar::Float32 => Builder::Float32(Float32Builder::new()),
            Scalar::Float64 => Builder::Float64(Float64Builder::new()),
            Scalar::Decimal { precision, scale } => Builder::Decimal(
                // The catalog maps only precisions 1..=38 with a scale at most the precision.
                Decimal128Builder::new()
                    .with_precision_and_scale(precision, scale)
                    .expect("the catalog maps only valid decimal128 types"),
                scale,
            ),
            Scalar::Utf8 | Scalar::Text | Scalar::Json => Builder::Utf8(StringBuilder::new()),
            Scalar::Jsonb => Builder::Jsonb(StringBuilder::new()),
            Scalar::Binary => Builder::Binary(BinaryBuilder::new()),
            Scalar::Uuid => Builder::Uuid(FixedSizeBinaryBuilder::new(16)),
            Scalar::Date => Builder::Date(Date32Builder::new()),
            Scalar::Time => Builder::Time(Time64MicrosecondBuilder::new()),
            Scalar::Timestamp => Builder::Timestamp(TimestampMicrosecondBuilder::new()),
            Scalar::TimestampUtc => Builder::Timestamp(TimestampMicrosecondBuilder::new().with_timezone("UTC")),
            Scalar::Interval => Builder::Interval(IntervalMonthDayNanoBuilder::new()),
        }
    }

    fn append(&mut self, raw: Option<&[u8]>) -> Result<(), Unfit> {
        let Some(raw) = raw else {
            self.append_null();
            return Ok(());
        };
        match self {
            Builder::Bool(b) => b.append_value(match raw {
                [0] => false,
                [1] => true,
                _ => return Err(Unfit::Malformed("boolean")),
            }),
            Builder::Int16(b) => b.append_value(i16::from_be_bytes(array(raw, "int2")?)),
            Builder::Int32(b) => b.append_value(i32::from_be_bytes(array(raw, "int4")?)),
            Builder::Int64(b) => b.append_value(i64::from_be_bytes(array(raw, "int8")?)),
            Builder::Float32(b) => b.append_value(f32::from_be_bytes(array(raw, "float4")?)),
            Builder::Float64(b) => b.append_value(f64::from_be_bytes(array(raw, "float8")?)),
            Builder::Decimal(b, scale) => b.append_value(decimal(raw, *scale)?),
            Builder::Utf8(b) => b.append_value(utf8(raw)?),
            Builder::Jsonb(b) => match raw.split_first() {
                Some((1, text)) => b.append_value(utf8(text)?),
                _ => return Err(Unfit::Malformed("jsonb")),
            },
            Builder::Binary(b) => b.append_value(raw),
            Builder::Uuid(b) => b
                .append_value(array::<16>(raw, "uuid")?)
                .map_err(|_| Unfit::Malformed("uuid"))?,
            Builder::Date(b) => {
                let days = i32::from_be_bytes(array(raw, "date")?);
                if days == i32::MAX || days == i32::MIN {
                    return Err(Unfit::Value("infinity"));
                }
                let days = days
                    .checked_add(PG_EPOCH_DAYS)
                    .ok_or(Unfit::Value("a date past Arrow's range"))?;
                b.append_value(days);
            }
            Builder::Time(b) => b.append_value(i64::from_be_bytes(array(raw, "time")?)),
            Builder::Timestamp(b) => {
                let micros = i64::from_be_bytes(array(raw, "timestamp")?);
                if micros == i64::MAX || micros == i64::MIN {
                    return Err(Unfit::Value("infinity"));
                }
                let micros = micros
                    .checked_add(PG_EPOCH_MICROS)
                    .ok_or(Unfit::Value("a timestamp past Arrow's range (year 294247 or later)"))?;
                b.append_value(micros);
            }
            Builder::Interval(b) => {
                let raw: [u8; 16] = array(raw, "interval")?;
                let micros = i64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
                let days = i32::from_be_bytes(raw[8..12].try_into().expect("4 bytes"));
                let months = i32::from_be_bytes(raw[12..].try_into().expect("4 bytes"));
                let nanoseconds = micros
                    .checked_mul(1000)
                    .ok_or(Unfit::Value("an interval past Arrow's range (over 292 years of hours)"))?;
                b.append_value(IntervalMonthDayNano::new(months, days, nanoseconds));
            }
            Builder::List {
                values, offsets, nulls, ..
            } => {
                let count = append_elements(values, raw)?;
                let last = *offsets.last().expect("offsets start with 0");
                offsets.push(last + count);
                nulls.append_non_null();
            }
        }
        Ok(())
    }

    fn append_null(&mut self) {
        match self {
            Builder::Bool(b) => b.append_null(),
            Builder::Int16(b) => b.append_null(),
            Builder::Int32(b) => b.append_null(),
            Builder::Int64(b) => b.append_null(),
            Builder::Float32(b) => b.append_null(),
            Builder::Float64(b) => b.append_null(),
            Builder::Decimal(b, _) => b.append_null(),
            Builder::Utf8(b) | Builder::Jsonb(b) => b.append_null(),
            Builder::Binary(b) => b.append_null(),
            Builder::Uuid(b) => b.append_null(),
            Builder::Date(b) => b.append_null(),
            Builder::Time(b) => b.append_null(),
            Builder::Timestamp(b) => b.append_null(),
            Builder::Interval(b) => b.append_null(),
            Builder::List { offsets, nulls, .. } => {
                offsets.push(*offsets.last().expect("offsets start with 0"));
                nulls.append_null();
            }
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Int16(b) => Arc::new(b.finish()),
            Builder::Int32(b) => Arc::new(b.finish()),
            Builder::Int64(b) => Arc::new(b.finish()),
            Builder::Float32(b) => Arc::new(b.finish()),
            Builder::Float64(b) => Arc::new(b.finish()),
            Builder::Decimal(b, _) => Arc::new(b.finish()),
            Builder::Utf8(b) | Builder::Jsonb(b) => Arc::new(b.finish()),
            Builder::Binary(b) => Arc::new(b.finish()),
            Builder::Uuid(b) => Arc::new(b.finish()),
            Builder::Date(b) => Arc::new(b.finish()),
            Builder::Time(b) => Arc::new(b.finish()),
            Builder::Timestamp(b) => Arc::new(b.finish()),
            Builder::Interval(b) => Arc::new(b.finish()),
            Builder::List {
                values,
                field,
                offsets,
                nulls,
            } => {
                let offsets = OffsetBuffer::new(ScalarBuffer::from(std::mem::replace(offsets, vec![0])));
                Arc::new(ListArray::new(field.clone(), offsets, values.finish(), nulls.finish()))
            }
        }
    }
}

/// Appends a one-dimensional array's elements to `values`; how many there were.
fn append_elements(values: &mut Builder, raw: &[u8]) -> Result<i32, Unfit> {
    const MALFORMED: Unfit = Unfit::Malformed("array");
    let int = |at: usize| -> Result<i32, Unfit> {
        let bytes = raw.get(at..at + 4).ok_or(MALFORMED)?;
        Ok(i32::from_be_bytes(bytes.try_into().expect("4 bytes")))
    };
    match int(0)? {
        0 => return Ok(0),
        1 => {}
        _ => return Err(Unfit::Value("an array of more than one dimension")),
    }
    let count = int(12)?;
    if int(16)? != 1 {
        return Err(Unfit::Value("an array whose first index is not 1"));
    }
    let mut at = 20;
    for _ in 0..count {
        let length = int(at)?;
        at += 4;
        if length < 0 {
            values.append(None)?;
        } else {
            let end = at + length as usize;
            values.append(Some(raw.get(at..end).ok_or(MALFORMED)?))?;
            at = end;
        }
    }
    Ok(count)
}

fn utf8(raw: &[u8]) -> Result<&str, Unfit> {
    std::str::from_utf8(raw).map_err(|_| Unfit::Malformed("text"))
}

/// A `numeric`'s base-10000 wire form as a `decimal128` of `scale`: exact, or refused.
fn decimal(raw: &[u8], scale: i8) -> Result<i128, Unfit> {
    const MALFORMED: Unfit = Unfit::Malformed("numeric");
    const RANGE: Unfit = Unfit::Value("a number past decimal128's range");
    let header: [u8; 8] = raw.get(..8).ok_or(MALFORMED)?.try_into().map_err(|_| MALFORMED)?;
    let ndigits = i16::from_be_bytes([header[0], header[1]]);
    let weight = i32::from(i16::from_be_bytes([header[2], header[3]]));
    let negative = match u16::from_be_bytes([header[4], header[5]]) {
        0x0000 => false,
        0x4000 => true,
        0xC000 => return Err(Unfit::Value("NaN")),
        0xD000 => return Err(Unfit::Value("infinity")),
        0xF000 => return Err(Unfit::Value("-infinity")),
        _ => return Err(MALFORMED),
    };
    let body = &raw[8..];
    if ndigits < 0 || body.len() != ndigits as usize * 2 {
        return Err(MALFORMED);
    }
    let mut value: i128 = 0;
    for digit in body.chunks_exact(2) {
        let digit = i128::from(u16::from_be_bytes([digit[0], digit[1]]));
        value = value
            .checked_mul(10_000)
            .and_then(|v| v.checked_add(digit))
            .ok_or(RANGE)?;
    }
    // `value` counts units of 10000^(weight - ndigits + 1); the decimal counts units of 10^-scale.
    let exponent = 4 * (weight - i32::from(ndigits) + 1) + i32::from(scale);
    if value != 0 && exponent > 0 {
        let factor = 10i128.checked_pow(exponent as u32).ok_or(RANGE)?;
        value = value.checked_mul(factor).ok_or(RANGE)?;
    } else if value != 0 && exponent < 0 {
        let divisor = 10i128.checked_pow(exponent.unsigned_abs()).ok_or(MALFORMED)?;
        if value % divisor != 0 {
            return Err(Unfit::Value("more fractional digits than the column's scale"));
        }
        value /= divisor;
    }
    Ok(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::super::value::tests::numeric;
    use super::*;

    #[test]
    fn numerics_become_exact_decimals_or_are_refused() {
        // 1234.5 at scale 2 is 123450.
        assert_eq!(decimal(&numeric(&[1234, 5000], 0, 0, 1), 2).ok(), Some(123_450));
        // -0.0001 at scale 4.
        assert_eq!(decimal(&numeric(&[1], -1, 0x4000, 4), 4).ok(), Some(-1));
        // 1200 at scale -2 is 12.
        assert_eq!(decimal(&numeric(&[1200], 0, 0, 0), -2).ok(), Some(12));
        assert_eq!(decimal(&numeric(&[], 0, 0, 2), 2).ok(), Some(0));
        assert!(matches!(
            decimal(&numeric(&[], 0, 0xC000, 0), 2),
            Err(Unfit::Value("NaN"))
        ));
        assert!(matches!(
            decimal(&numeric(&[1, 5000], 0, 0, 1), 0),
            Err(Unfit::Value(_))
        ));
        assert!(matches!(decimal(&numeric(&[1], 20, 0, 0), 0), Err(Unfit::Value(_))));
    }

    #[test]
    fn a_cut_stream_has_no_end_marker_and_a_finished_one_has() {
        let columns = [EncodedColumn {
            name: "id".into(),
            kind: super::super::ValueKind::Int,
            columnar: Columnar {
                scalar: Scalar::Int32,
                list: false,
            },
            type_name: "integer".into(),
        }];
        let mut encoder = ArrowEncoder::new(&columns, Container::IpcStream).unwrap();
        let mut out = Vec::new();
        encoder.write_header(&mut out).unwrap();
        let row: Vec<Option<Vec<u8>>> = vec![Some(7i32.to_be_bytes().to_vec())];
        encoder.write_row(&row[..], &mut out).unwrap();
        let row: Vec<Option<Vec<u8>>> = vec![None];
        encoder.write_row(&row[..], &mut out).unwrap();
        encoder.write_batch(&mut out).unwrap();
        let cut = out.clone();
        encoder.write_trailer(&mut out).unwrap();
        const END: [u8; 8] = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        assert!(!cut.ends_with(&END));
        assert!(out.ends_with(&END));
        let reader = arrow_ipc::reader::StreamReader::try_new(&out[..], None).unwrap();
        let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
        assert_eq!(batches.len(), 1);
        let ids = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<arrow_array::Int32Array>()
            .unwrap();
        assert_eq!(ids.iter().collect::<Vec<_>>(), vec![Some(7), None]);
        assert_eq!(batches[0].schema().field(0).metadata()[TYPE_METADATA], "integer");
    }

    #[test]
    fn infinity_and_second_dimensions_are_refused_naming_the_column() {
        let columns = [EncodedColumn {
            name: "at".into(),
            kind: super::super::ValueKind::Timestamp,
            columnar: Columnar {
                scalar: Scalar::Timestamp,
                list: false,
            },
            type_name: "timestamp without time zone".into(),
        }];
        let mut encoder = ArrowEncoder::new(&columns, Container::IpcStream).unwrap();
        let row: Vec<Option<Vec<u8>>> = vec![Some(i64::MAX.to_be_bytes().to_vec())];
        let error = encoder.write_row(&row[..], &mut Vec::new()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "column \"at\" holds infinity, which its Arrow type cannot hold"
        );
        let mut two_dimensions = Vec::new();
        for int in [2i32, 0, 23, 1, 1, 1, 1] {
            two_dimensions.extend_from_slice(&int.to_be_bytes());
        }
        let mut values = Builder::scalar(Scalar::Int32);
        assert!(matches!(
            append_elements(&mut values, &two_dimensions),
            Err(Unfit::Value("an array of more than one dimension"))
        ));
    }
}
