//! An Arrow IPC stream, as the export pipeline writes it in pieces of any size, cut into its messages: each
//! is one `FlightData` (its flatbuffer header and its body), as Flight carries IPC.

use arrow_flight::FlightData;
use bytes::{Buf, Bytes, BytesMut};

/// What starts every message of an IPC stream (since Arrow 0.15).
const CONTINUATION: u32 = 0xFFFF_FFFF;

/// Bytes of an IPC stream not yet cut into messages.
#[derive(Default)]
pub(super) struct Messages {
    buffer: BytesMut,
    ended: bool,
}

/// The IPC stream is malformed: pgspout wrote something it cannot read back.
#[derive(Debug, thiserror::Error)]
#[error("the Arrow IPC stream is malformed: {0}")]
pub(super) struct Malformed(String);

impl Messages {
    /// Appends the stream's next bytes.
    pub(super) fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Whether the stream's end-of-stream marker has been read: only then did it end whole.
    pub(super) fn ended(&self) -> bool {
        self.ended
    }

    /// The next whole message, or `None` until more bytes come (or after the end).
    pub(super) fn next_message(&mut self) -> Result<Option<FlightData>, Malformed> {
        if self.ended || self.buffer.len() < 8 {
            return Ok(None);
        }
        let marker = u32::from_le_bytes(self.buffer[..4].try_into().expect("four bytes"));
        if marker != CONTINUATION {
            return Err(Malformed(format!(
                "a message starts with {marker:#x}, not the continuation marker"
            )));
        }
        let length = i32::from_le_bytes(self.buffer[4..8].try_into().expect("four bytes"));
        let length = usize::try_from(length).map_err(|_| Malformed(format!("a header of {length} bytes")))?;
        if length == 0 {
            self.buffer.advance(8);
            self.ended = true;
            return Ok(None);
        }
        if self.buffer.len() < 8 + length {
            return Ok(None);
        }
        let message = arrow_ipc::root_as_message(&self.buffer[8..8 + length])
            .map_err(|e| Malformed(format!("a message header does not parse: {e}")))?;
        let body = usize::try_from(message.bodyLength())
            .map_err(|_| Malformed(format!("a body of {} bytes", message.bodyLength())))?;
        if self.buffer.len() < 8 + length + body {
            return Ok(None);
        }
        self.buffer.advance(8);
        let header: Bytes = self.buffer.split_to(length).freeze();
        let body: Bytes = self.buffer.split_to(body).freeze();
        Ok(Some(FlightData::new().with_data_header(header).with_data_body(body)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Int64Array, RecordBatch, StringArray};
    use arrow_ipc::writer::StreamWriter;
    use arrow_schema::{DataType, Field, Schema};

    use super::*;

    /// An IPC stream of a schema and two batches.
    fn stream() -> (Vec<u8>, Vec<RecordBatch>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("note", DataType::Utf8, true),
        ]));
        let batches: Vec<RecordBatch> = [(0..3), (3..1000)]
            .into_iter()
            .map(|range| {
                let ids = Int64Array::from_iter_values(range.clone());
                let notes = StringArray::from_iter(range.map(|i| (i % 3 != 0).then(|| format!("n{i}"))));
                RecordBatch::try_new(schema.clone(), vec![Arc::new(ids), Arc::new(notes)]).unwrap()
            })
            .collect();
        let mut writer = StreamWriter::try_new(Vec::new(), &schema).unwrap();
        for batch in &batches {
            writer.write(batch).unwrap();
        }
        writer.finish().unwrap();
        (writer.into_inner().unwrap(), batches)
    }

    #[test]
    fn a_stream_in_pieces_of_any_size_becomes_its_messages_and_reads_back() {
        let (bytes, batches) = stream();
        for piece in [1, 7, 64, 4096, bytes.len()] {
            let mut messages = Messages::default();
            let mut data = Vec::new();
            for chunk in bytes.chunks(piece) {
                messages.push(chunk);
                while let Some(message) = messages.next_message().unwrap() {
                    data.push(message);
                }
            }
            assert!(messages.ended(), "piece {piece}");
            assert_eq!(data.len(), 3, "a schema and two batches");
            let decoded: Vec<RecordBatch> = arrow_flight::utils::flight_data_to_batches(&data).unwrap();
            assert_eq!(decoded, batches, "piece {piece}");
        }
    }

    #[test]
    fn a_cut_stream_never_ends_and_garbage_is_refused() {
        let (bytes, _) = stream();
        let mut messages = Messages::default();
        messages.push(&bytes[..bytes.len() - 8]);
        while messages.next_message().unwrap().is_some() {}
        assert!(!messages.ended(), "without its end marker");
        let mut garbage = Messages::default();
        garbage.push(b"PAR1\x00\x00\x00\x00\x00\x00");
        assert!(garbage.next_message().is_err());
    }
}
