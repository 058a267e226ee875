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
use tokio_postgres::Row;

use crate::encode::{Cells, EncodeError, RowEncoder};
use crate::query::Position;

/// What shapes every export's pipeline, from `[export]` and `[compression]`.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    /// Compression levels.
    pub(crate) levels: Levels,
    /// Bytes per piece, before compression.
    pub(crate) chunk_size: usize,
    /// The largest value (as Postgres sends it) an export encodes; a larger one aborts it.
    pub(crate) max_value_bytes: usize,
}

/// The compressor takes at most this much at a time, and the export task yields between two such slices:
/// however large a chunk and slow a level, other requests on the same worker wait for one slice at most.
const COMPRESS_SLICE: usize = 64 * 1024;

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
    /// A value is larger than `export.max_value_bytes`.
    #[error("a value of column {column:?} has {bytes} bytes, more than export.max_value_bytes ({limit})")]
    TooLarge {
        /// The column.
        column: String,
        /// The value's size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
}

/// Rows, their encoder and compressor, and the bytes between them.
pub(crate) struct Pipeline {
    /// `None` once finished.
    rows: Option<Rows>,
    encoder: RowEncoder<Row>,
    encoding: Encoding,
    limits: Limits,
    compressor: Option<Compressor>,
    /// Encoded, not yet compressed (or, uncompressed, not yet taken) bytes.
    plain: Vec<u8>,
    /// How much of `plain` the compressor has taken (it takes it in slices).
    fed: usize,
    /// Whether the trailer is in `plain` (a cancelled `finish` is resumed by the next call).
    trailer_written: bool,
    /// Whether the compressor holds input that has not been flushed out.
    unflushed: bool,
    /// Set when finished: what the rows said at their end.
    end: Option<(u64, Option<Position>, bool)>,
    /// With [`Pipeline::with_progress_every`]: hand out a piece, empty if need be, after this many rows.
    progress_every: Option<u64>,
    /// The rows read when the last progress piece was handed out.
    rows_at_progress: u64,
}

impl Pipeline {
    /// A pipeline of `rows` through `encoder` and `encoding`, in pieces of about `limits.chunk_size` bytes;
    /// with `header`, the format's header comes first (a resumed job's file has it already).
    pub(crate) fn new(
        rows: Rows,
        mut encoder: RowEncoder<Row>,
        encoding: Encoding,
        limits: &Limits,
        header: bool,
    ) -> Result<Pipeline, PipelineError> {
        let mut plain = Vec::with_capacity(limits.chunk_size + limits.chunk_size / 4);
        if header {
            encoder.write_header(&mut plain)?;
        }
        Ok(Pipeline {
            rows: Some(rows),
            encoder,
            encoding,
            compressor: Compressor::new(encoding, &limits.levels)?,
            limits: limits.clone(),
            plain,
            fed: 0,
            trailer_written: false,
            unflushed: false,
            end: None,
            progress_every: None,
            rows_at_progress: 0,
        })
    }

    /// Hands out a piece at least every `rows` rows, empty while the encoder holds its output (a Parquet row
    /// group in the making), so a job that reads in one statement still reports progress and shows it is
    /// not stuck.
    pub(crate) fn with_progress_every(mut self, rows: u64) -> Pipeline {
        self.progress_every = Some(rows.max(1));
        self
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
                        Err(_) => return self.flush().await.map(|b| Some(Piece::Chunk(b))),
                    },
                    None => rows.next().await,
                },
            }?;
            match next {
                Next::Row(row) => {
                    self.encode(&row)?;
                    if self.plain.len() >= self.limits.chunk_size
                        && let Some(chunk) = self.chunk().await?
                    {
                        return Ok(Some(Piece::Chunk(chunk)));
                    }
                    if let Some(every) = self.progress_every {
                        let read = self.rows();
                        if read - self.rows_at_progress >= every {
                            self.rows_at_progress = read;
                            return Ok(Some(Piece::Chunk(Bytes::new())));
                        }
                    }
                }
                Next::BatchEnd => return self.end_frame().await.map(|b| Some(Piece::Boundary(b))),
                Next::End => return self.finish().await.map(|b| Some(Piece::End(b))),
            }
        }
    }

    /// Encodes the first row, which [`Rows::open`] has read already, so that a value the format cannot hold
    /// (or one over `max_value_bytes`) in it is refused before the response begins, as a problem+json, not a
    /// cut transfer. Later rows can only abort the transfer.
    pub(crate) fn encode_first(&mut self) -> Result<(), PipelineError> {
        let Some(rows) = self.rows.as_mut() else {
            return Ok(());
        };
        if !rows.has_first() {
            return Ok(());
        }
        match rows.next().now_or_never() {
            Some(Ok(Next::Row(row))) => self.encode(&row),
            Some(Ok(_)) => Ok(()),
            Some(Err(error)) => Err(error.into()),
            None => unreachable!("a row already read is handed out at once"),
        }
    }

    /// Encodes one row.
    fn encode(&mut self, row: &Row) -> Result<(), PipelineError> {
        let before = self.plain.len() + self.encoder.pending_bytes();
        self.encoder.write_row(row, &mut self.plain)?;
        // Only a row whose output is large can hold a value over the limit (text is never less than half a
        // large value's wire size, a columnar batch takes the value whole), so most rows cost one comparison.
        let after = self.plain.len() + self.encoder.pending_bytes();
        if after.saturating_sub(before) > self.limits.max_value_bytes / 2 {
            self.check_values(row)?;
        }
        Ok(())
    }

    /// Refuses a row holding a value over `max_value_bytes`, naming its column.
    fn check_values(&self, row: &impl Cells) -> Result<(), PipelineError> {
        let limit = self.limits.max_value_bytes;
        let rows = self.rows.as_ref().expect("rows are checked while open");
        for (index, column) in rows.columns().iter().enumerate() {
            let bytes = row.cell(index)?.map_or(0, <[u8]>::len);
            if bytes > limit {
                return Err(PipelineError::TooLarge {
                    column: column.name.clone(),
                    bytes,
                    limit,
                });
            }
        }
        Ok(())
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
        !self.plain.is_empty()
            || self.encoder.has_pending()
            || self.unflushed
            || self.compressor.as_mut().is_some_and(|c| c.pending() > 0)
    }

    /// A full chunk's bytes: plain, or compressed once the compressor has a chunk's worth of output.
    async fn chunk(&mut self) -> Result<Option<Bytes>, PipelineError> {
        self.end_piece()?;
        if self.compressor.is_none() {
            return Ok(Some(self.take_plain()));
        }
        self.compress().await?;
        let compressor = self.compressor.as_mut().expect("checked above");
        if compressor.pending() < self.limits.chunk_size {
            return Ok(None);
        }
        let chunk = compressor.take(self.limits.chunk_size);
        Ok(Some(Bytes::from(chunk)))
    }

    /// Hands `plain` to the compressor, a slice at a time, yielding between slices (see [`COMPRESS_SLICE`]).
    /// Cancel-safe: `fed` records what the compressor took, and a dropped call goes on from there.
    async fn compress(&mut self) -> io::Result<()> {
        let Some(compressor) = self.compressor.as_mut() else {
            return Ok(());
        };
        while self.fed < self.plain.len() {
            if self.fed > 0 {
                tokio::task::yield_now().await;
            }
            let end = self.plain.len().min(self.fed + COMPRESS_SLICE);
            compressor.write(&self.plain[self.fed..end])?;
            self.fed = end;
            self.unflushed = true;
        }
        self.plain.clear();
        self.fed = 0;
        Ok(())
    }

    /// Ends the piece before its bytes leave (see [`crate::encode::Encoder::end_piece`]).
    fn end_piece(&mut self) -> Result<(), EncodeError> {
        self.encoder.end_piece(self.rows(), self.position(), &mut self.plain)
    }

    /// Everything buffered, made decodable by the reader.
    async fn flush(&mut self) -> Result<Bytes, PipelineError> {
        self.end_piece()?;
        if self.compressor.is_none() {
            return Ok(self.take_plain());
        }
        self.compress().await?;
        let compressor = self.compressor.as_mut().expect("checked above");
        compressor.flush()?;
        self.unflushed = false;
        let chunk = compressor.take(self.limits.chunk_size);
        Ok(Bytes::from(chunk))
    }

    /// Everything buffered, ending the compressed frame (a gzip member, a zstd frame); the next bytes start
    /// a new one.
    async fn end_frame(&mut self) -> Result<Bytes, PipelineError> {
        self.end_piece()?;
        self.compress().await?;
        let next = Compressor::new(self.encoding, &self.limits.levels)?;
        let last = self.close_compressor(next)?;
        Ok(Bytes::from(last))
    }

    /// Ends the compressor (whatever `plain` holds has been fed to it, if there is one), replacing it with
    /// `next`; its last bytes, or without a compressor the plain bytes.
    fn close_compressor(&mut self, next: Option<Compressor>) -> io::Result<Vec<u8>> {
        let mut last = std::mem::take(&mut self.plain);
        if let Some(compressor) = std::mem::replace(&mut self.compressor, next) {
            last = compressor.finish()?;
        }
        self.unflushed = false;
        Ok(last)
    }

    /// The rows are complete: write the trailer, end the compressed stream, commit.
    async fn finish(&mut self) -> Result<Bytes, PipelineError> {
        if !self.trailer_written {
            self.end_piece()?;
            let read = self.rows();
            self.encoder.write_trailer(read, &mut self.plain)?;
            self.trailer_written = true;
        }
        self.compress().await?;
        let last = self.close_compressor(None)?;
        let rows = self.rows.take().expect("finish runs once, while the rows are open");
        self.end = Some((rows.read(), rows.position(), rows.has_more()));
        rows.finish().await?;
        Ok(Bytes::from(last))
    }

    fn take_plain(&mut self) -> Bytes {
        let size = self.limits.chunk_size;
        Bytes::from(std::mem::replace(&mut self.plain, Vec::with_capacity(size + size / 4)))
    }
}
