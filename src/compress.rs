//! Accept-Encoding negotiation and the streaming compressors (gzip, zstd, brotli) behind `/rows`.
//!
//! The compressors are synchronous writers into a `Vec<u8>` driven from the body stream, so pgspout decides
//! chunk sizes and flush points itself instead of handing them to a middleware.

use std::io::{self, Write};

use flate2::write::GzEncoder;
use serde::Deserialize;

use crate::negotiate;

/// A content coding pgspout can apply to a response body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// No compression.
    Identity,
    /// gzip (RFC 1952).
    Gzip,
    /// Zstandard (RFC 8878).
    Zstd,
    /// Brotli (RFC 7932).
    Brotli,
}

/// The client refused every coding, `identity` included.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("Accept-Encoding allows none of zstd, gzip, br, identity")]
pub struct NoAcceptableEncoding;

impl Encoding {
    /// Picks the coding from an `Accept-Encoding` header; no header means no compression.
    ///
    /// Ties go to the faster coder (zstd, gzip, then brotli). `identity` is acceptable unless refused, but
    /// any compression the client names beats it.
    pub fn negotiate(accept_encoding: Option<&str>) -> Result<Encoding, NoAcceptableEncoding> {
        let Some(header) = accept_encoding else {
            return Ok(Encoding::Identity);
        };
        const COMPRESSED: [(&str, Encoding); 3] = [
            ("zstd", Encoding::Zstd),
            ("gzip", Encoding::Gzip),
            ("br", Encoding::Brotli),
        ];
        if let Some(i) = negotiate::best(header, COMPRESSED.iter().map(|(n, _)| *n), negotiate::coding_matches) {
            return Ok(COMPRESSED[i].1);
        }
        match negotiate::quality(header, "identity", negotiate::coding_matches) {
            Some(q) if q <= 0.0 => Err(NoAcceptableEncoding),
            _ => Ok(Encoding::Identity),
        }
    }

    /// The coding called `name` (`identity`, `gzip`, `zstd`, `br`).
    pub fn from_name(name: &str) -> Option<Encoding> {
        match name {
            "identity" => Some(Encoding::Identity),
            "gzip" => Some(Encoding::Gzip),
            "zstd" => Some(Encoding::Zstd),
            "br" => Some(Encoding::Brotli),
            _ => None,
        }
    }

    /// Whether compressed pieces of this coding concatenate into one valid stream (gzip members, zstd
    /// frames), so a file cut back to a checkpoint is still valid. Brotli streams do not concatenate.
    pub fn concatenates(self) -> bool {
        self != Encoding::Brotli
    }

    /// The file name suffix of this coding.
    pub fn suffix(self) -> &'static str {
        match self {
            Encoding::Identity => "",
            Encoding::Gzip => ".gz",
            Encoding::Zstd => ".zst",
            Encoding::Brotli => ".br",
        }
    }

    /// The media type of a file compressed this way, if compressed.
    pub fn file_media_type(self) -> Option<&'static str> {
        match self {
            Encoding::Identity => None,
            Encoding::Gzip => Some("application/gzip"),
            Encoding::Zstd => Some("application/zstd"),
            Encoding::Brotli => Some("application/x-brotli"),
        }
    }

    /// The `Content-Encoding` header value, if any.
    pub fn content_encoding(self) -> Option<&'static str> {
        match self {
            Encoding::Identity => None,
            Encoding::Gzip => Some("gzip"),
            Encoding::Zstd => Some("zstd"),
            Encoding::Brotli => Some("br"),
        }
    }
}

/// Compression levels; fast by default, because a streaming export should be bound by Postgres, not by us.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Levels {
    /// gzip level, 0–9.
    pub gzip: u32,
    /// zstd level, 1 to [`Levels::highest`]'s.
    pub zstd: i32,
    /// brotli quality, 0 to [`Levels::highest`]'s.
    pub brotli: u32,
}

impl Default for Levels {
    fn default() -> Self {
        Levels {
            gzip: 1,
            zstd: 1,
            brotli: 2,
        }
    }
}

impl Levels {
    /// The highest levels a streaming export may use. Compression runs on the async workers, a 64 KiB slice
    /// at a time, and every other request on that worker, `/readyz` included, waits for the slice in hand;
    /// the slowest levels (zstd 16–22, brotli 8–11) are an order of magnitude slower than these. The `encode`
    /// bench times one slice at these levels.
    pub fn highest() -> Levels {
        Levels {
            gzip: 9,
            zstd: 15,
            brotli: 7,
        }
    }

    /// Checks the ranges, so a bad level fails at start-up rather than per request.
    pub fn validate(&self) -> Result<(), String> {
        let highest = Levels::highest();
        if self.gzip > highest.gzip {
            return Err(format!(
                "compression.gzip = {} is not within 0..={}",
                self.gzip, highest.gzip
            ));
        }
        if !(1..=highest.zstd).contains(&self.zstd) {
            return Err(format!(
                "compression.zstd = {} is not within 1..={}",
                self.zstd, highest.zstd
            ));
        }
        if self.brotli > highest.brotli {
            return Err(format!(
                "compression.brotli = {} is not within 0..={}",
                self.brotli, highest.brotli
            ));
        }
        Ok(())
    }
}

/// Brotli's window: 256 KiB rather than the 4 MiB default, so each concurrent export costs little memory;
/// at the fast qualities a stream uses, a larger window gains little.
const BROTLI_WINDOW_BITS: u32 = 18;

/// A running compressor whose output accumulates in memory until taken.
pub enum Compressor {
    /// gzip via flate2's zlib-rs backend.
    Gzip(GzEncoder<Vec<u8>>),
    /// zstd.
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
    /// brotli (boxed: its state is large).
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
}

impl Compressor {
    /// A compressor for `encoding` at the configured level; `None` for identity.
    pub fn new(encoding: Encoding, levels: &Levels) -> io::Result<Option<Self>> {
        Ok(Some(match encoding {
            Encoding::Identity => return Ok(None),
            Encoding::Gzip => Compressor::Gzip(GzEncoder::new(Vec::new(), flate2::Compression::new(levels.gzip))),
            Encoding::Zstd => Compressor::Zstd(zstd::stream::write::Encoder::new(Vec::new(), levels.zstd)?),
            Encoding::Brotli => Compressor::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                32 * 1024,
                levels.brotli,
                BROTLI_WINDOW_BITS,
            ))),
        }))
    }

    /// Compresses `data` into the output buffer.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Compressor::Gzip(e) => e.write_all(data),
            Compressor::Zstd(e) => e.write_all(data),
            Compressor::Brotli(e) => e.write_all(data),
        }
    }

    /// Makes everything written so far decodable by the client (a sync flush), at some cost in ratio.
    pub fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Gzip(e) => e.flush(),
            Compressor::Zstd(e) => e.flush(),
            Compressor::Brotli(e) => e.flush(),
        }
    }

    fn output(&mut self) -> &mut Vec<u8> {
        match self {
            Compressor::Gzip(e) => e.get_mut(),
            Compressor::Zstd(e) => e.get_mut(),
            Compressor::Brotli(e) => e.get_mut(),
        }
    }

    /// Bytes of output ready to be taken.
    pub fn pending(&mut self) -> usize {
        self.output().len()
    }

    /// Takes the output so far, leaving an empty buffer of `capacity` behind.
    pub fn take(&mut self, capacity: usize) -> Vec<u8> {
        std::mem::replace(self.output(), Vec::with_capacity(capacity))
    }

    /// Ends the stream (writing any trailer) and returns the remaining output.
    pub fn finish(self) -> io::Result<Vec<u8>> {
        match self {
            Compressor::Gzip(e) => e.finish(),
            Compressor::Zstd(e) => e.finish(),
            Compressor::Brotli(e) => Ok(e.into_inner()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_header_means_no_compression() {
        assert_eq!(Encoding::negotiate(None), Ok(Encoding::Identity));
        assert_eq!(Encoding::negotiate(Some("")), Ok(Encoding::Identity));
    }

    #[test]
    fn q_values_pick_the_coding_and_ties_prefer_the_fast_ones() {
        assert_eq!(Encoding::negotiate(Some("gzip, deflate, br, zstd")), Ok(Encoding::Zstd));
        assert_eq!(Encoding::negotiate(Some("gzip;q=0.5, br;q=0.8")), Ok(Encoding::Brotli));
        assert_eq!(Encoding::negotiate(Some("deflate")), Ok(Encoding::Identity));
        assert_eq!(Encoding::negotiate(Some("x-gzip")), Ok(Encoding::Gzip));
        assert_eq!(Encoding::negotiate(Some("*")), Ok(Encoding::Zstd));
        assert_eq!(Encoding::negotiate(Some("*;q=0, gzip")), Ok(Encoding::Gzip));
    }

    #[test]
    fn refusing_identity_and_everything_else_is_not_acceptable() {
        assert_eq!(Encoding::negotiate(Some("identity;q=0")), Err(NoAcceptableEncoding));
        assert_eq!(Encoding::negotiate(Some("*;q=0")), Err(NoAcceptableEncoding));
        assert_eq!(Encoding::negotiate(Some("deflate, *;q=0")), Err(NoAcceptableEncoding));
        assert_eq!(Encoding::negotiate(Some("*;q=0, identity")), Ok(Encoding::Identity));
    }

    #[test]
    fn every_compressor_round_trips_and_flushes_decodably() {
        let data = b"{\"id\":1}\n".repeat(1000);
        assert!(
            Compressor::new(Encoding::Identity, &Levels::default())
                .unwrap()
                .is_none()
        );
        for encoding in [Encoding::Gzip, Encoding::Zstd, Encoding::Brotli] {
            let mut c = Compressor::new(encoding, &Levels::default()).unwrap().unwrap();
            c.write(&data).unwrap();
            c.flush().unwrap();
            assert!(c.pending() > 0, "{encoding:?} flushed nothing");
            let mut out = c.take(0);
            out.extend(c.finish().unwrap());
            let mut back = Vec::new();
            match encoding {
                Encoding::Gzip => io::copy(&mut flate2::read::GzDecoder::new(&out[..]), &mut back).map(drop),
                Encoding::Zstd => zstd::stream::copy_decode(&out[..], &mut back),
                Encoding::Brotli => brotli::BrotliDecompress(&mut &out[..], &mut back),
                Encoding::Identity => unreachable!(),
            }
            .unwrap();
            assert_eq!(back, data, "{encoding:?}");
        }
    }
}
