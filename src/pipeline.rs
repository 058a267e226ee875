//! The one export pipeline: rows → encoder → compressor → pieces, which a sink takes: the streamed response
//! body (`body`), a page (`routes/page`) or a job's file (`jobs`).
//!
//! It holds about one chunk at a time: a row is read only when the sink asks for the next piece, so the
//! sink's pace is the database's. It knows nothing of HTTP; the sinks decide what a failure means.

use std::io;
use std::time::Instant;

use bytes::Bytes;
use futures::FutureExt;

use crate::compress::{Compressor, Encoding, Levels};
use crate::db::rows::{Next, ReadError, Rows};
use crate::encode::{EncodeError, RowEncoder};
use crate::query::Position;

/// What the pipeline produced.
pub(crate) enum Piece {
    /// Bytes ready to go; more follow.
    Chunk(Bytes),
    /// A keyset batch ended (see [`Rows::pause_between_batches`]): these bytes end a compressed frame, so
    /// everything up to here is a valid file, and [`Pipeline::position`] is its last row's position.
    Boundary(Bytes),
    /// The last bytes: every row is encoded, the trailer written and the transaction committed.
    End(Bytes),
}

/// Why the pipeline stopped before its end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PipelineError {
    /// Reading rows failed.
    #[error("the database failed mid-export")]
    Read(#[from] ReadError),
    /// A value could not be encoded.
    #[error("a value could not be encoded")]
    Encode(#[from] EncodeError),
    /// The compressor failed.
    #[error("compression failed")]
    Compress(#[from] io::Error),
}

/// Rows, their encoder and compressor, and the bytes between them.
pub(crate) struct Pipeline {
    /// `None` once finished.
    rows: Option<Rows>,
    encoder: RowEncoder,
    encoding: Encoding,
    levels: Levels,
    compressor: Option<Compressor>,
    /// Encoded, not yet compressed (or, uncompressed, not yet taken) bytes.
    plain: Vec<u8>,
    /// Whether the compressor holds input that has not been flushed out.
    unflushed: bool,
    chunk_size: usize,
    /// Set when finished: what the rows said at their end.
    end: Option<(u64, Option<Position>, bool)>,
}

impl Pipeline {
    /// A pipeline of `rows` through `encoder` and `encoding`, in pieces of about `chunk_size` bytes; with
    /// `header`, the format's header comes first (a resumed job's file has it already).
    pub(crate) fn new(
        rows: Rows,
        encoder: RowEncoder,
        encoding: Encoding,
        levels: &Levels,
        chunk_size: usize,
        header: bool,
    ) -> io::Result<Pipeline> {
        let mut plain = Vec::with_capacity(chunk_size + chunk_size / 4);
        if header {
            encoder.write_header(&mut plain);
        }
        Ok(Pipeline {
            rows: Some(rows),
            encoder,
            encoding,
            levels: levels.clone(),
            compressor: Compressor::new(encoding, levels)?,
            plain,
            unflushed: false,
            chunk_size,
            end: None,
        })
    }

    /// The next piece; `None` after the end. With `flush_at`, bytes already encoded are handed out once that
    /// instant passes while the database sends nothing new, so a slow query still reaches the client.
    ///
    /// Cancel-safe: a dropped call loses nothing, so the body may poll it against timeouts.
    pub(crate) async fn next(&mut self, flush_at: Option<Instant>) -> Result<Option<Piece>, PipelineError> {
        loop {
            let buffered = self.has_buffered();
            let Some(rows) = self.rows.as_mut() else {
                return Ok(None);
            };
            // Rows already received are encoded without waiting; only when Postgres has sent nothing new is
            // flushing what is buffered considered.
            let next = match rows.next().now_or_never() {
                Some(next) => next,
                None => match flush_at.filter(|_| buffered) {
                    Some(at) => match tokio::time::timeout_at(at.into(), rows.next()).await {
                        Ok(next) => next,
                        Err(_) => return self.flush().map(|b| Some(Piece::Chunk(b))),
                    },
                    None => rows.next().await,
                },
            }?;
            match next {
                Next::Row(row) => {
                    self.encoder.write_row(&row, &mut self.plain)?;
                    if let Some(chunk) = self.chunk_if_full()? {
                        return Ok(Some(Piece::Chunk(chunk)));
                    }
                }
                Next::BatchEnd => return self.end_frame().map(|b| Some(Piece::Boundary(b))),
                Next::End => return self.finish().await.map(|b| Some(Piece::End(b))),
            }
        }
    }

    /// Rows encoded so far.
    pub(crate) fn rows(&self) -> u64 {
        match (&self.rows, &self.end) {
            (Some(rows), _) => rows.read(),
            (None, Some((read, _, _))) => *read,
            (None, None) => 0,
        }
    }

    /// The position of the last row encoded, when the rows carry positions.
    pub(crate) fn position(&self) -> Option<Position> {
        match (&self.rows, &self.end) {
            (Some(rows), _) => rows.position(),
            (None, Some((_, position, _))) => position.clone(),
            (None, None) => None,
        }
    }

    /// After the end of capped rows: whether more rows matched.
    pub(crate) fn has_more(&self) -> bool {
        self.end.as_ref().is_some_and(|(_, _, more)| *more)
    }

    fn has_buffered(&mut self) -> bool {
        !self.plain.is_empty() || self.unflushed || self.compressor.as_mut().is_some_and(|c| c.pending() > 0)
    }

    fn chunk_if_full(&mut self) -> io::Result<Option<Bytes>> {
        if self.plain.len() < self.chunk_size {
            return Ok(None);
        }
        self.close_event();
        let Some(compressor) = self.compressor.as_mut() else {
            return Ok(Some(self.take_plain()));
        };
        compressor.write(&self.plain)?;
        self.plain.clear();
        self.unflushed = true;
        if compressor.pending() < self.chunk_size {
            return Ok(None);
        }
        let chunk = compressor.take(self.chunk_size);
        Ok(Some(Bytes::from(chunk)))
    }

    /// Ends an event stream's open event before its bytes leave: with the last row's key as its id.
    fn close_event(&mut self) {
        if !self.encoder.writes_events() {
            return;
        }
        let rows = self.rows();
        let last = self.position();
        let key = last.as_ref().and_then(|p| match p.0.as_slice() {
            [Some(key)] => Some(key.as_str()),
            _ => None,
        });
        self.encoder.close_event(key, rows, &mut self.plain);
    }

    /// Everything buffered, made decodable by the reader.
    fn flush(&mut self) -> Result<Bytes, PipelineError> {
        self.close_event();
        let Some(compressor) = self.compressor.as_mut() else {
            return Ok(self.take_plain());
        };
        compressor.write(&self.plain)?;
        self.plain.clear();
        compressor.flush()?;
        self.unflushed = false;
        let chunk = compressor.take(self.chunk_size);
        Ok(Bytes::from(chunk))
    }

    /// Everything buffered, ending the compressed frame (a gzip member, a zstd frame); the next bytes start
    /// a new one.
    fn end_frame(&mut self) -> Result<Bytes, PipelineError> {
        self.close_event();
        let next = Compressor::new(self.encoding, &self.levels)?;
        let last = self.close_compressor(next)?;
        Ok(Bytes::from(last))
    }

    fn close_compressor(&mut self, next: Option<Compressor>) -> io::Result<Vec<u8>> {
        let mut last = std::mem::take(&mut self.plain);
        if let Some(mut compressor) = std::mem::replace(&mut self.compressor, next) {
            compressor.write(&last)?;
            last = compressor.finish()?;
        }
        self.unflushed = false;
        Ok(last)
    }

    /// The rows are complete: write the trailer, end the compressed stream, commit.
    async fn finish(&mut self) -> Result<Bytes, PipelineError> {
        self.close_event();
        let read = self.rows();
        self.encoder.write_trailer(read, &mut self.plain);
        let last = self.close_compressor(None)?;
        let rows = self.rows.take().expect("finish runs once, while the rows are open");
        self.end = Some((rows.read(), rows.position(), rows.has_more()));
        rows.finish().await?;
        Ok(Bytes::from(last))
    }

    fn take_plain(&mut self) -> Bytes {
        let chunk = std::mem::replace(
            &mut self.plain,
            Vec::with_capacity(self.chunk_size + self.chunk_size / 4),
        );
        Bytes::from(chunk)
    }
}
