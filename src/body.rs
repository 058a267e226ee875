//! Rows → encoder → compressor → the response body: a `Stream` of network-sized chunks.
//!
//! Backpressure is end to end: actix polls this stream only while its write buffer has room, and a row is
//! pulled from tokio-postgres only when the stream is polled, whose bounded channel then stops reading the
//! socket and blocks the Postgres backend. Nothing here buffers more than about one chunk.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{FutureExt, Stream};

use crate::compress::Compressor;
use crate::db::export::Export;
use crate::encode::RowEncoder;
use crate::error::{StreamError, chain};

/// Chunking limits for one export.
#[derive(Clone, Copy, Debug)]
pub struct Chunking {
    /// Emit a chunk once this many bytes are ready.
    pub size: usize,
    /// Emit what is ready once it has waited this long for more rows.
    pub flush_interval: Duration,
    /// Give up on a client that has not taken a chunk for this long.
    pub stall_timeout: Duration,
    /// Abort an export that runs longer than this.
    pub max_duration: Option<Duration>,
}

/// The state of one export's body.
struct Pipeline {
    export: Option<Export>,
    /// The export's slot, held until the body is dropped.
    _slot: tokio::sync::OwnedSemaphorePermit,
    encoder: RowEncoder,
    compressor: Option<Compressor>,
    /// Encoded, not yet compressed (or, uncompressed, not yet sent) bytes.
    plain: Vec<u8>,
    /// Whether the compressor holds input that has not been flushed out.
    unflushed: bool,
    chunking: Chunking,
    last_chunk: Instant,
    label: String,
    rows: u64,
    bytes: u64,
    started: Instant,
}

/// The body of an export: header, rows, trailer; an `Err` item aborts the transfer.
pub fn stream(
    export: Export,
    slot: tokio::sync::OwnedSemaphorePermit,
    encoder: RowEncoder,
    compressor: Option<Compressor>,
    chunking: Chunking,
    label: String,
) -> impl Stream<Item = Result<Bytes, StreamError>> {
    let mut plain = Vec::with_capacity(chunking.size + chunking.size / 4);
    encoder.write_header(&mut plain);
    let pipeline = Pipeline {
        export: Some(export),
        _slot: slot,
        encoder,
        compressor,
        plain,
        unflushed: false,
        chunking,
        last_chunk: Instant::now(),
        label,
        rows: 0,
        bytes: 0,
        started: Instant::now(),
    };
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    actix_web::rt::spawn(pipeline.run(sender));
    futures::stream::unfold(Some(receiver), |state| async move {
        let mut receiver = state?;
        match receiver.recv().await {
            Some(Piece::Chunk(chunk)) => Some((Ok(chunk), Some(receiver))),
            Some(Piece::End) => None,
            Some(Piece::Failed(error)) => Some((Err(error), None)),
            // The pipeline gave up without an end marker (the client stalled): never end cleanly.
            None => Some((Err(StreamError::Stalled), None)),
        }
    })
}

/// Sleeps until `deadline`; with none, forever.
async fn sleep_until_or_never(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// What the pipeline task hands to the response body.
enum Piece {
    Chunk(Bytes),
    End,
    Failed(StreamError),
}

impl Pipeline {
    /// Produces the body into `sender`, one chunk ahead of the client at most.
    ///
    /// Runs as a task of its own, so that it notices what a body stream cannot while actix does not poll it:
    /// a client that stops reading (the backend, blocked sending, would wait forever; Postgres's own timeouts
    /// do not fire then) and a client that leaves while the query is still thinking. In both cases it returns,
    /// and dropping `self` cancels the query and discards the connection.
    async fn run(mut self, sender: tokio::sync::mpsc::Sender<Piece>) {
        loop {
            let deadline = self
                .chunking
                .max_duration
                .map(|limit| tokio::time::Instant::from_std(self.started + limit));
            let next = tokio::select! {
                next = self.next_chunk() => next,
                () = sender.closed() => {
                    tracing::debug!(export = %self.label, rows = self.rows, "client left");
                    return;
                }
                () = sleep_until_or_never(deadline) => Err(StreamError::TooLong),
            };
            let (piece, last) = match next {
                Ok(Some(chunk)) => (Piece::Chunk(chunk), false),
                Ok(None) => (Piece::End, true),
                Err(error) => {
                    tracing::error!(export = %self.label, rows = self.rows, error = %chain(&error), "export failed mid-stream; aborting the response");
                    (Piece::Failed(error), true)
                }
            };
            match tokio::time::timeout(self.chunking.stall_timeout, sender.send(piece)).await {
                Ok(Ok(())) if !last => {}
                Ok(_) => return,
                Err(_) => {
                    tracing::warn!(export = %self.label, rows = self.rows, timeout = ?self.chunking.stall_timeout, "client stopped reading; export cut");
                    return;
                }
            }
        }
    }

    /// The next chunk, or `None` after the last one.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, StreamError> {
        loop {
            let buffered = self.has_buffered();
            let deadline = self.last_chunk + self.chunking.flush_interval;
            let Some(export) = self.export.as_mut() else {
                return Ok(None);
            };
            // Rows already received are encoded without waiting; only when Postgres has sent nothing new do we
            // consider flushing what is buffered, so a slow query still reaches the client in good time.
            let next = match export.next_row().now_or_never() {
                Some(next) => next,
                None if buffered => match tokio::time::timeout_at(deadline.into(), export.next_row()).await {
                    Ok(next) => next,
                    Err(_) => return self.flush().map(Some),
                },
                None => export.next_row().await,
            };
            match next? {
                Some(row) => {
                    self.encoder.write_row(&row, &mut self.plain)?;
                    self.rows += 1;
                    if let Some(chunk) = self.chunk_if_full()? {
                        return Ok(Some(chunk));
                    }
                }
                None => return self.finish().await,
            }
        }
    }

    fn has_buffered(&mut self) -> bool {
        !self.plain.is_empty() || self.unflushed || self.compressor.as_mut().is_some_and(|c| c.pending() > 0)
    }

    fn chunk_if_full(&mut self) -> Result<Option<Bytes>, StreamError> {
        if self.plain.len() < self.chunking.size {
            return Ok(None);
        }
        let Some(compressor) = self.compressor.as_mut() else {
            return Ok(Some(self.emit_plain()));
        };
        compressor.write(&self.plain)?;
        self.plain.clear();
        self.unflushed = true;
        if compressor.pending() < self.chunking.size {
            return Ok(None);
        }
        let chunk = compressor.take(self.chunking.size);
        Ok(Some(self.emit(chunk)))
    }

    /// Everything buffered, made decodable by the client.
    fn flush(&mut self) -> Result<Bytes, StreamError> {
        let Some(compressor) = self.compressor.as_mut() else {
            return Ok(self.emit_plain());
        };
        compressor.write(&self.plain)?;
        self.plain.clear();
        compressor.flush()?;
        self.unflushed = false;
        let chunk = compressor.take(self.chunking.size);
        Ok(self.emit(chunk))
    }

    fn emit_plain(&mut self) -> Bytes {
        let chunk = std::mem::replace(
            &mut self.plain,
            Vec::with_capacity(self.chunking.size + self.chunking.size / 4),
        );
        self.emit(chunk)
    }

    fn emit(&mut self, chunk: Vec<u8>) -> Bytes {
        self.last_chunk = Instant::now();
        self.bytes += chunk.len() as u64;
        Bytes::from(chunk)
    }

    /// The result is complete: write the trailer, commit, and hand back the last bytes.
    async fn finish(&mut self) -> Result<Option<Bytes>, StreamError> {
        let mut last = std::mem::take(&mut self.plain);
        if let Some(mut compressor) = self.compressor.take() {
            compressor.write(&last)?;
            last = compressor.finish()?;
        }
        let export = self.export.take().expect("finish runs once, while the export is open");
        export.finish().await?;
        self.bytes += last.len() as u64;
        tracing::info!(
            export = %self.label,
            rows = self.rows,
            bytes = self.bytes,
            millis = self.started.elapsed().as_millis() as u64,
            "export complete"
        );
        Ok((!last.is_empty()).then(|| Bytes::from(last)))
    }
}
