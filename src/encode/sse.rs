//! `text/event-stream` for `EventSource`: rows travel as the `data:` lines of unnamed (`message`) events, one
//! event per body chunk, each row's `row_to_json` object on a line of its own. For key-ordered exports an
//! event's `id:` is the key of its last row, so a reconnecting browser's `Last-Event-ID` resumes right after
//! it. After each event comes a `progress` event (`{"rows": sent, "total": estimate}`), and after the last
//! row an `end` event (`{"rows": n}`): a stream without `end` is incomplete.

use std::cell::Cell;

use super::{Cells, EncodeError, EncodedColumn, NdjsonEncoder};

/// How long a browser waits before reconnecting, in milliseconds (the stream's `retry:` field).
const RETRY_MILLIS: u32 = 1000;

/// The SSE encoder of one export.
#[derive(Debug)]
pub struct SseEncoder {
    objects: NdjsonEncoder,
    /// Whether events carry ids (the export is in key order).
    ids: bool,
    /// The estimated (or counted) total, for progress events.
    total: Option<i64>,
    /// Whether rows have been written since the last event ended. A `Cell` for the same reason as the
    /// JSON array encoder's flag: writing takes `&self`.
    open: Cell<bool>,
}

impl SseEncoder {
    /// An encoder for rows with `columns`; with `ids`, events carry the last row's key.
    pub fn new(columns: &[EncodedColumn], ids: bool, total: Option<i64>) -> SseEncoder {
        SseEncoder {
            objects: NdjsonEncoder::new(columns),
            ids,
            total,
            open: Cell::new(false),
        }
    }

    /// The stream's preamble: the reconnection delay.
    pub fn write_header(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(format!("retry: {RETRY_MILLIS}\n\n").as_bytes());
    }

    /// One row as a `data:` line of the open event.
    #[inline]
    pub fn write_row<C: Cells + ?Sized>(&self, row: &C, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        out.extend_from_slice(b"data: ");
        self.objects.write_object(row, out)?;
        out.push(b'\n');
        self.open.set(true);
        Ok(())
    }

    /// Ends the open event (if rows were written): its `id` (the last row's key, when events carry ids and
    /// it can be one), then a `progress` event after `rows` rows.
    pub fn close_event(&self, last_key: Option<&str>, rows: u64, out: &mut Vec<u8>) {
        if !self.open.replace(false) {
            return;
        }
        // An id cannot hold a line break or NUL; such a key leaves the event without one.
        if let Some(key) = last_key.filter(|k| self.ids && !k.contains(['\n', '\r', '\0'])) {
            out.extend_from_slice(b"id: ");
            out.extend_from_slice(key.as_bytes());
            out.push(b'\n');
        }
        out.push(b'\n');
        let total = self.total.map_or("null".to_owned(), |t| t.to_string());
        out.extend_from_slice(format!("event: progress\ndata: {{\"rows\":{rows},\"total\":{total}}}\n\n").as_bytes());
    }

    /// The `end` event, after every row.
    pub fn write_trailer(&self, rows: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(format!("event: end\ndata: {{\"rows\":{rows}}}\n\n").as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::ValueKind;

    #[test]
    fn rows_travel_in_events_with_the_last_key_as_id_then_progress_then_end() {
        let columns = [EncodedColumn {
            name: "id".into(),
            kind: ValueKind::Int,
        }];
        let encoder = SseEncoder::new(&columns, true, Some(10));
        let mut out = Vec::new();
        encoder.write_header(&mut out);
        for id in [1i32, 2] {
            let row: Vec<Option<Vec<u8>>> = vec![Some(id.to_be_bytes().to_vec())];
            encoder.write_row(&row[..], &mut out).unwrap();
        }
        encoder.close_event(Some("2"), 2, &mut out);
        encoder.close_event(Some("2"), 2, &mut out);
        encoder.write_trailer(2, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "retry: 1000\n\ndata: {\"id\":1}\ndata: {\"id\":2}\nid: 2\n\n\
             event: progress\ndata: {\"rows\":2,\"total\":10}\n\nevent: end\ndata: {\"rows\":2}\n\n"
        );
        let no_ids = SseEncoder::new(&columns, false, None);
        let mut out = Vec::new();
        let row: Vec<Option<Vec<u8>>> = vec![Some(7i32.to_be_bytes().to_vec())];
        no_ids.write_row(&row[..], &mut out).unwrap();
        no_ids.close_event(Some("7"), 1, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "data: {\"id\":7}\n\nevent: progress\ndata: {\"rows\":1,\"total\":null}\n\n"
        );
    }
}
