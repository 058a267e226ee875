//! `text/event-stream` for `EventSource`: rows travel as the `data:` lines of unnamed (`message`) events, one
//! event per body chunk, each row's `row_to_json` object on a line of its own. An event's `id:` is an opaque
//! resume token that the pipeline makes (the position of its last row in the request's order, and the rows
//! sent), so a reconnecting browser's `Last-Event-ID` resumes right after it. After each event comes a
//! `progress` event (`{"rows": sent, "total": estimate}`), and after the last row an `end` event
//! (`{"rows": n}`): a stream without `end` is incomplete. Row counts include rows sent before a resume.

use std::cell::Cell;

use super::{Cells, EncodeError, EncodedColumn, NdjsonEncoder};

/// How long a browser waits before reconnecting, in milliseconds (the stream's `retry:` field).
const RETRY_MILLIS: u32 = 1000;

/// The SSE encoder of one export.
#[derive(Debug)]
pub struct SseEncoder {
    objects: NdjsonEncoder,
    /// Rows the stream sent before this response (a resumed stream counts on from there).
    sent_before: u64,
    /// The estimated (or counted) total, for progress events.
    total: Option<i64>,
    /// Whether rows have been written since the last event ended. A `Cell` for the same reason as the
    /// JSON array encoder's flag: writing takes `&self`.
    open: Cell<bool>,
}

impl SseEncoder {
    /// An encoder for rows with `columns`, reporting progress against `total`, after `sent_before` rows
    /// that earlier responses of the same stream sent.
    pub fn new(columns: &[EncodedColumn], total: Option<i64>, sent_before: u64) -> SseEncoder {
        SseEncoder {
            objects: NdjsonEncoder::new(columns),
            sent_before,
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

    /// Ends the open event (if rows were written) with `id`, then a `progress` event after `rows` rows of
    /// this response.
    pub fn close_event(&self, id: Option<&str>, rows: u64, out: &mut Vec<u8>) {
        if !self.open.replace(false) {
            return;
        }
        // An id cannot hold a line break or NUL (pgspout's tokens never do).
        if let Some(id) = id.filter(|id| !id.contains(['\n', '\r', '\0'])) {
            out.extend_from_slice(b"id: ");
            out.extend_from_slice(id.as_bytes());
            out.push(b'\n');
        }
        out.push(b'\n');
        let rows = self.sent_before + rows;
        let total = self.total.map_or("null".to_owned(), |t| t.to_string());
        out.extend_from_slice(format!("event: progress\ndata: {{\"rows\":{rows},\"total\":{total}}}\n\n").as_bytes());
    }

    /// The `end` event, after every row (`rows` of this response).
    pub fn write_trailer(&self, rows: u64, out: &mut Vec<u8>) {
        let rows = self.sent_before + rows;
        out.extend_from_slice(format!("event: end\ndata: {{\"rows\":{rows}}}\n\n").as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::ValueKind;

    #[test]
    fn rows_travel_in_events_with_an_id_then_progress_then_end_counting_earlier_rows() {
        let columns = [EncodedColumn::new("id", ValueKind::Int)];
        let encoder = SseEncoder::new(&columns, Some(10), 0);
        let mut out = Vec::new();
        encoder.write_header(&mut out);
        for id in [1i32, 2] {
            let row: Vec<Option<Vec<u8>>> = vec![Some(id.to_be_bytes().to_vec())];
            encoder.write_row(&row[..], &mut out).unwrap();
        }
        encoder.close_event(Some("t2"), 2, &mut out);
        encoder.close_event(Some("t2"), 2, &mut out);
        encoder.write_trailer(2, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "retry: 1000\n\ndata: {\"id\":1}\ndata: {\"id\":2}\nid: t2\n\n\
             event: progress\ndata: {\"rows\":2,\"total\":10}\n\nevent: end\ndata: {\"rows\":2}\n\n"
        );
        let resumed = SseEncoder::new(&columns, None, 40);
        let mut out = Vec::new();
        let row: Vec<Option<Vec<u8>>> = vec![Some(7i32.to_be_bytes().to_vec())];
        resumed.write_row(&row[..], &mut out).unwrap();
        resumed.close_event(None, 1, &mut out);
        resumed.write_trailer(1, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "data: {\"id\":7}\n\nevent: progress\ndata: {\"rows\":41,\"total\":null}\n\n\
             event: end\ndata: {\"rows\":41}\n\n"
        );
    }
}
