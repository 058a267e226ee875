//! Parquet: the Arrow encoder's record batches, written by the `parquet` crate's Arrow writer into row groups
//! bounded by rows and bytes, then the footer that indexes them.
//!
//! A row group is held (encoded and compressed) until it is full, then leaves whole; the footer follows the
//! last row only, so a cut download is never a valid file. Pages are compressed here (zstd), not over HTTP.
//! The Arrow schema travels in the footer's `ARROW:schema` key, so Arrow readers get the Arrow types (the
//! `arrow.uuid` and `arrow.json` extensions, and each field's `pgspout.type`) back, and the others read UUID,
//! JSON, DECIMAL, DATE, TIME and TIMESTAMP logical types.

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::EncodeError;
use super::arrow::writer_error;

/// A row group ends once its encoded pages hold this many bytes: large enough for readers to scan well, small
/// enough that the group in the making, and the one on its way out, stay within the memory the export may use.
pub(super) const ROW_GROUP_BYTES: usize = 16 * 1024 * 1024;

/// A row group ends after this many rows at most. The byte bound counts compressed pages, and the writer holds
/// more than those while a group fills (dictionaries, the page being built): with only the byte bound, a
/// million `orders` rows (11 MB of pages) were one row group and pgspout peaked at 78 MiB; DuckDB writes
/// groups of 122,880 rows.
const ROW_GROUP_ROWS: usize = 128 * 1024;

/// A Parquet file written to memory and handed out a row group at a time.
pub(super) struct ParquetSink {
    writer: ArrowWriter<Vec<u8>>,
}

impl ParquetSink {
    /// A file of `schema` in row groups of about `row_group_bytes` or [`ROW_GROUP_ROWS`]; its magic bytes are ready for
    /// [`ParquetSink::written`].
    pub(super) fn new(schema: &SchemaRef, row_group_bytes: usize) -> Result<ParquetSink, EncodeError> {
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_max_row_group_bytes(Some(row_group_bytes.max(1)))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_created_by(format!("pgspout {}", env!("CARGO_PKG_VERSION")))
            .build();
        let writer = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(properties)).map_err(error)?;
        Ok(ParquetSink { writer })
    }

    /// Adds a batch to the row group in the making; a full group is written.
    pub(super) fn write(&mut self, batch: &RecordBatch) -> Result<(), EncodeError> {
        self.writer.write(batch).map_err(error)
    }

    /// Writes the last row group and the footer.
    pub(super) fn finish(&mut self) -> Result<(), EncodeError> {
        self.writer.finish().map(drop).map_err(error)
    }

    /// The bytes written so far and not taken yet. The writer counts its offsets itself, so taking them
    /// does not disturb it.
    pub(super) fn written(&mut self) -> Result<&mut Vec<u8>, EncodeError> {
        self.writer.sync().map_err(error)?;
        Ok(self.writer.inner_mut())
    }
}

fn error(error: impl std::fmt::Display) -> EncodeError {
    writer_error("Parquet", error)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use parquet::file::reader::{FileReader, SerializedFileReader};

    use super::*;

    #[test]
    fn full_row_groups_leave_before_the_footer_and_a_file_without_it_is_refused() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("note", DataType::Utf8, true),
        ]));
        let mut sink = ParquetSink::new(&schema, 256 * 1024).unwrap();
        let mut file = std::mem::take(sink.written().unwrap());
        assert_eq!(file, b"PAR1");
        let mut sent_before_the_end = 0;
        for batch in 0..20i64 {
            let ids = Int64Array::from_iter_values(batch * 10_000..(batch + 1) * 10_000);
            let notes = StringArray::from_iter_values(ids.iter().map(|id| format!("note {}", id.unwrap() * 7919)));
            let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(ids), Arc::new(notes)]).unwrap();
            sink.write(&batch).unwrap();
            file.append(sink.written().unwrap());
            sent_before_the_end = file.len();
        }
        // Row groups went out as they filled, while rows were still coming.
        assert!(sent_before_the_end > 256 * 1024, "{sent_before_the_end} bytes");
        assert!(
            SerializedFileReader::new(bytes::Bytes::from(file.clone())).is_err(),
            "no footer yet"
        );
        sink.finish().unwrap();
        file.append(sink.written().unwrap());
        let reader = SerializedFileReader::new(bytes::Bytes::from(file)).unwrap();
        let metadata = reader.metadata();
        assert_eq!(metadata.file_metadata().num_rows(), 200_000);
        let groups = metadata.num_row_groups();
        assert!(groups >= 3, "{groups} row groups");
        for group in metadata.row_groups() {
            // Bounded by bytes: each group is about the bound, not the whole file.
            assert!(group.compressed_size() < 2 * 256 * 1024, "{}", group.compressed_size());
        }
    }
}
