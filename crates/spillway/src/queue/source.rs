//! The producer side: read, frame, append — as fast as the producer sends.
//!
//! Each read's complete messages are appended as one batch (one disk
//! record when they go to disk), so a producer of small lines costs one
//! append per read, not per line. A bad frame closes that producer only,
//! after everything before it was appended. A partial message at EOF or
//! reset is never appended as if it were whole.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use bytes::{Buf, BytesMut};
use spillway_codec::{Decoded, Decoder, FrameError};
use spillway_spool::SpoolError;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tracing::{info, warn};

use super::QueueServer;

/// Bytes asked of the socket per read. Large reads are what keep the
/// per-message cost low for small messages.
const READ_CHUNK: usize = 256 << 10;

/// Why a producer connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProducerEnd {
    Eof,
    Reset,
    BadFrame,
    Shutdown,
    SpoolFailed,
}

impl ProducerEnd {
    fn as_str(self) -> &'static str {
        match self {
            ProducerEnd::Eof => "eof",
            ProducerEnd::Reset => "reset",
            ProducerEnd::BadFrame => "bad_frame",
            ProducerEnd::Shutdown => "shutdown",
            ProducerEnd::SpoolFailed => "spool_failed",
        }
    }
}

enum IngestError {
    Frame(FrameError),
    Spool(SpoolError),
}

impl QueueServer {
    pub(super) async fn produce(&self, mut stream: TcpStream, peer: SocketAddr) {
        self.stats.producers.fetch_add(1, Ordering::Relaxed);
        let route = &self.route.name;
        let max = usize::try_from(self.route.max_message).unwrap_or(usize::MAX);
        let mut decoder = Decoder::new(self.route.framing, max);
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut messages = 0u64;
        let end = loop {
            if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
            }
            let read = tokio::select! {
                biased;
                _ = self.stop.cancelled() => None,
                r = stream.read_buf(&mut buf) => Some(r),
            };
            let (at_end, end) = match read {
                // Shutdown: keep what the kernel already accepted from this
                // producer, then stop reading.
                None => {
                    drain_ready(&stream, &mut buf);
                    (true, ProducerEnd::Shutdown)
                }
                Some(Ok(0)) => (true, ProducerEnd::Eof),
                Some(Ok(_)) => (false, ProducerEnd::Eof),
                Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Some(Err(e)) => {
                    warn!(route = %route, producer = %peer, error = %e, "producer read failed");
                    (true, ProducerEnd::Reset)
                }
            };
            let (appended, result) = self.ingest(&mut decoder, &mut buf);
            messages += appended;
            match result {
                Ok(()) => {}
                Err(IngestError::Frame(e)) => {
                    self.stats.count_frame_error(e.kind());
                    warn!(route = %route, producer = %peer, offset = e.offset().unwrap_or(decoder.offset()),
                          kind = ?e.kind(), error = %e, kept = messages,
                          "bad frame; closing this producer (every message before it was kept)");
                    break ProducerEnd::BadFrame;
                }
                Err(IngestError::Spool(e)) => {
                    self.fail("append", &e);
                    break ProducerEnd::SpoolFailed;
                }
            }
            if at_end {
                if let Err(e) = decoder.finish(&buf) {
                    self.stats.partial_at_eof.fetch_add(1, Ordering::Relaxed);
                    warn!(route = %route, producer = %peer, offset = decoder.offset(),
                          partial_bytes = buf.len(), error = %e,
                          "producer ended inside a message; the partial message is not queued");
                }
                break end;
            }
        };
        self.stats.producers.fetch_sub(1, Ordering::Relaxed);
        info!(route = %route, producer = %peer, messages, reason = end.as_str(), "producer closed");
    }

    /// Appends every complete message in `buf` as one batch and drops them
    /// from `buf`; returns how many were appended. On a bad frame, the
    /// messages before it are appended first, then the error is returned.
    fn ingest(&self, decoder: &mut Decoder, buf: &mut BytesMut) -> (u64, Result<(), IngestError>) {
        let mut slices: Vec<&[u8]> = Vec::new();
        let mut consumed = 0usize;
        let mut bad = None;
        loop {
            match decoder.decode(&buf[consumed..]) {
                Decoded::Frame(len) => {
                    slices.push(&buf[consumed..consumed + len]);
                    consumed += len;
                }
                Decoded::NeedMore => break,
                Decoded::Invalid(e) => {
                    bad = Some(e);
                    break;
                }
            }
        }
        let n = slices.len() as u64;
        if n > 0 {
            let bytes: usize = consumed;
            let outcome = match tokio::task::block_in_place(|| self.spool.append(&slices)) {
                Ok(o) => o,
                Err(e) => return (0, Err(IngestError::Spool(e))),
            };
            if outcome.dropped_newest > 0 {
                self.stats
                    .dropped_newest
                    .fetch_add(outcome.dropped_newest as u64, Ordering::Relaxed);
            }
            if outcome.dropped_oldest_msgs > 0 {
                self.stats
                    .dropped_oldest
                    .fetch_add(outcome.dropped_oldest_msgs, Ordering::Relaxed);
            }
            self.stats
                .messages_in
                .fetch_add(outcome.accepted as u64, Ordering::Relaxed);
            self.stats
                .bytes_in
                .fetch_add(bytes as u64, Ordering::Relaxed);
        }
        buf.advance(consumed);
        match bad {
            Some(e) => (n, Err(IngestError::Frame(e))),
            None => (n, Ok(())),
        }
    }
}

/// Reads, without waiting, whatever the kernel already holds for this
/// socket (bytes its TCP stack acknowledged to the producer).
fn drain_ready(stream: &TcpStream, buf: &mut BytesMut) {
    let mut chunk = vec![0u8; 64 << 10];
    while let Ok(n) = stream.try_read(&mut chunk) {
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
