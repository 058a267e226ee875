//! `text/event-stream` for `EventSource`: rows travel as the `data:` lines of unnamed (`message`) events, one
//! event per body chunk, each row's `row_to_json` object on a line of its own. An event's `id:` is an opaque
//! resume token (the position of its last row in the request's order, and the rows sent), so a reconnecting
//! browser's `Last-Event-ID` resumes right after it. After each event comes a
//! `progress` event (`{"rows": sent, "total": estimate}`), and after the last row an `end` event
//! (`{"rows": n}`): a stream without `end` is incomplete. Row counts include rows sent before a resume.

use std::cell::Cell;

use super::{Cells, EncodeError, EncodedColumn, Encoder, NdjsonEncoder, Position};
use crate::query::cursor::ResumeTokens;

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
    /// Makes the events' ids; without it (rows without positions), events have none.
    tokens: Option<ResumeTokens>,
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
            tokens: None,
        }
    }

    /// The encoder, its events' ids made by `tokens`.
    pub(crate) fn with_resume_tokens(self, tokens: Option<ResumeTokens>) -> SseEncoder {
        SseEncoder { tokens, ..self }
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

    /// Ends the open event (if rows were written), its id the resume token of its last row at `position`,
    /// then a `progress` event after `rows` rows of this response.
    pub fn close_event(&self, position: Option<Position>, rows: u64, out: &mut Vec<u8>) {
        if !self.open.replace(false) {
            return;
        }
        let id = self
            .tokens
            .as_ref()
            .zip(position)
            .map(|(tokens, p)| tokens.token(p, rows));
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

impl<R: Cells + ?Sized> Encoder<R> for SseEncoder {
    fn write_header(&mut self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        SseEncoder::write_header(self, out);
        Ok(())
    }

    #[inline]
    fn write_row(&mut self, row: &R, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        SseEncoder::write_row(self, row, out)
    }

    fn end_piece(&mut self, rows: u64, position: Option<Position>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.close_event(position, rows, out);
        Ok(())
    }

    fn write_trailer(&mut self, rows: u64, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        SseEncoder::write_trailer(self, rows, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::ValueKind;
    use crate::query::cursor::CursorKey;

    #[test]
    fn rows_travel_in_events_with_an_id_then_progress_then_end_counting_earlier_rows() {
        let columns = [EncodedColumn::new("id", ValueKind::Int)];
        let key = CursorKey::new(b"secret");
        let tokens = ResumeTokens::new(&key, "t", "id.asc".into(), "digest".into(), 0);
        let encoder = SseEncoder::new(&columns, Some(10), 0).with_resume_tokens(Some(tokens));
        let mut out = Vec::new();
        encoder.write_header(&mut out);
        for id in [1i32, 2] {
            let row: Vec<Option<Vec<u8>>> = vec![Some(id.to_be_bytes().to_vec())];
            encoder.write_row(&row[..], &mut out).unwrap();
        }
        let position = Position(vec![Some("2".into())]);
        encoder.close_event(Some(position.clone()), 2, &mut out);
        // No rows since: no event.
        encoder.close_event(Some(position.clone()), 2, &mut out);
        encoder.write_trailer(2, &mut out);
        let out = String::from_utf8(out).unwrap();
        let id = out.lines().find_map(|line| line.strip_prefix("id: ")).unwrap();
        assert_eq!(
            out,
            format!(
                "retry: 1000\n\ndata: {{\"id\":1}}\ndata: {{\"id\":2}}\nid: {id}\n\n\
                 event: progress\ndata: {{\"rows\":2,\"total\":10}}\n\nevent: end\ndata: {{\"rows\":2}}\n\n"
            )
        );
        // The id is the resume token of the event's last row: its position and the rows sent.
        let cursor = key.open(id).unwrap();
        assert_eq!(
            (cursor.values, cursor.sent, cursor.dataset.as_str()),
            (position, 2, "t")
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
