//! The pipeline's pieces → the response body: a `Stream` of network-sized chunks, with the limits a client
//! connection needs (flush interval, stall timeout, maximum duration).
//!
//! Backpressure is end to end: actix polls this stream only while its write buffer has room, and a row is
//! pulled from tokio-postgres only when the stream is polled, whose bounded channel then stops reading the
//! socket and blocks the Postgres backend. Nothing here buffers more than about one chunk.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;

use tracing::Instrument;

use crate::error::StreamError;
use crate::pipeline::{Piece, Pipeline};
use crate::report::chain;
use crate::telemetry::metrics::{ExportMeter, ExportOutcome};

/// The limits of one response body (the pipeline's chunk size is in [`crate::pipeline::Limits`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Chunking {
    /// Emit what is ready once it has waited this long for more rows.
    pub(crate) flush_interval: Duration,
    /// Give up on a client that has not taken a chunk for this long.
    pub(crate) stall_timeout: Duration,
    /// Abort an export that runs longer than this.
    pub(crate) max_duration: Option<Duration>,
}

/// One export's body task: the pipeline and what the body adds to it (timing, limits, the export slot).
struct Export {
    pipeline: Pipeline,
    /// The export's slot, held until the body is dropped.
    _slot: tokio::sync::OwnedSemaphorePermit,
    chunking: Chunking,
    last_chunk: Instant,
    label: String,
    /// Turns `true` when a shutdown's grace period is over.
    cut: tokio::sync::watch::Receiver<bool>,
    /// Counts what goes out, and how the export ends.
    meter: ExportMeter,
}

/// The body of an export: header, rows, trailer; an `Err` item aborts the transfer. The export runs in the
/// current (the request's) log span.
pub(crate) fn stream(
    pipeline: Pipeline,
    slot: tokio::sync::OwnedSemaphorePermit,
    chunking: Chunking,
    label: String,
    cut: tokio::sync::watch::Receiver<bool>,
    meter: ExportMeter,
) -> impl Stream<Item = Result<Bytes, StreamError>> {
    let export = Export {
        pipeline,
        _slot: slot,
        chunking,
        last_chunk: Instant::now(),
        label,
        cut,
        meter,
    };
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    tokio::spawn(export.run(sender).instrument(tracing::Span::current()));
    futures::stream::unfold(Some(receiver), |state| async move {
        let mut receiver = state?;
        match receiver.recv().await {
            Some(Message::Chunk(chunk)) => Some((Ok(chunk), Some(receiver))),
            Some(Message::End) => None,
            Some(Message::Failed(error)) => Some((Err(error), None)),
            // The task gave up without an end marker (the client stalled): never end cleanly.
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

/// What the export task hands to the response body.
enum Message {
    Chunk(Bytes),
    End,
    Failed(StreamError),
}

impl Export {
    /// Produces the body into `sender`, one chunk ahead of the client at most.
    ///
    /// Runs as a task of its own, so that it notices what a body stream cannot while actix does not poll it:
    /// a client that stops reading (the backend, blocked sending, would wait forever; Postgres's own timeouts
    /// do not fire then) and a client that leaves while the query is still thinking. In both cases it returns,
    /// and dropping the pipeline cancels the query and discards the connection.
    async fn run(mut self, sender: tokio::sync::mpsc::Sender<Message>) {
        let deadline = self
            .chunking
            .max_duration
            .map(|limit| tokio::time::Instant::from_std(self.meter.started() + limit));
        let mut cut = self.cut.clone();
        loop {
            let flush_at = self.last_chunk + self.chunking.flush_interval;
            let next = tokio::select! {
                _ = cut.wait_for(|cut| *cut) => Err(StreamError::ShutDown),
                next = self.pipeline.next(Some(flush_at)) => next.map_err(StreamError::from),
                () = sender.closed() => {
                    self.left();
                    return;
                }
                () = sleep_until_or_never(deadline) => Err(StreamError::TooLong),
            };
            let (message, last) = match next {
                Ok(Some(Piece::Chunk(chunk) | Piece::Boundary(chunk))) => (Message::Chunk(chunk), false),
                Ok(Some(Piece::End(chunk))) => {
                    if !chunk.is_empty() && !self.send(&sender, Message::Chunk(chunk)).await {
                        return;
                    }
                    (Message::End, true)
                }
                Ok(None) => (Message::End, true),
                Err(error) => {
                    tracing::error!(export = %self.label, rows = self.pipeline.rows(), error = %chain(&error), "export failed mid-stream; aborting the response");
                    self.meter.end(match error {
                        StreamError::TooLong => ExportOutcome::TooLong,
                        _ => ExportOutcome::Failed,
                    });
                    (Message::Failed(error), true)
                }
            };
            let end = matches!(message, Message::End);
            if !self.send(&sender, message).await {
                return;
            }
            if end {
                self.meter.end(ExportOutcome::Completed);
            }
            if last {
                return;
            }
        }
    }

    /// Hands `message` to the body; `false` when the client is gone or stopped reading.
    async fn send(&mut self, sender: &tokio::sync::mpsc::Sender<Message>, message: Message) -> bool {
        let bytes = match &message {
            Message::Chunk(chunk) => chunk.len(),
            _ => 0,
        };
        match tokio::time::timeout(self.chunking.stall_timeout, sender.send(message)).await {
            Ok(Ok(())) => {
                self.last_chunk = Instant::now();
                self.meter.sent(self.pipeline.rows(), bytes);
                true
            }
            Ok(Err(_)) => {
                self.left();
                false
            }
            Err(_) => {
                tracing::warn!(export = %self.label, rows = self.pipeline.rows(), timeout = ?self.chunking.stall_timeout, "client stopped reading; export cut");
                self.meter.end(ExportOutcome::Stalled);
                false
            }
        }
    }

    /// The client's connection closed. After a stall as long as the stall timeout, that is the kernel's
    /// user timeout cutting a client that stopped reading: a stall, not a departure.
    fn left(&mut self) {
        if self.last_chunk.elapsed() >= self.chunking.stall_timeout {
            tracing::warn!(export = %self.label, rows = self.pipeline.rows(), "client stopped reading; its connection timed out");
            self.meter.end(ExportOutcome::Stalled);
        } else {
            tracing::debug!(export = %self.label, rows = self.pipeline.rows(), "client left");
            self.meter.end(ExportOutcome::ClientLeft);
        }
    }
}
