//! One direction of a proxied connection through a user-space buffer, over
//! any `AsyncRead` / `AsyncWrite`: the path for TLS connections, whose
//! bytes must be decrypted and encrypted and so cannot be spliced.
//!
//! It keeps stream mode's promises:
//! - **Bounded:** one buffer of the route's `buffer` size per direction
//!   (plus rustls's own record buffers). While the destination is slow the
//!   source is not read: backpressure. Spilling to a file is not done on
//!   this path (the config refuses `spill_dir` with TLS).
//! - **Partial writes are completed:** every byte read is written before
//!   the next read, then flushed, so nothing waits in rustls's buffer while
//!   the source is quiet.
//! - **Write stall:** a write or flush that makes no progress for the
//!   route's `write_stall_timeout` fails the direction with its own reason.
//! - **Half-close:** EOF on the source (TLS close_notify, or TCP FIN on a
//!   plain side) becomes `shutdown` on the destination: close_notify then
//!   `shutdown(SHUT_WR)` on a TLS side, `shutdown(SHUT_WR)` on a plain one.
//!   A TLS peer that closes TCP without close_notify is a truncation, an
//!   error: the other side gets a reset, not a clean end.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::direction::{DirError, Direction, Progress};

pub(crate) async fn run<R, W>(
    src: &mut R,
    dst: &mut W,
    buffer: usize,
    stall: Duration,
    progress: &Progress,
    dir: Direction,
) -> Result<(), DirError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; buffer];
    loop {
        let n = match src.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(DirError::Read(e)),
        };
        let mut off = 0;
        while off < n {
            match stalls(stall, dst.write(&buf[off..n])).await? {
                Ok(0) => {
                    return Err(DirError::Write(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "destination accepted no bytes",
                    )))
                }
                Ok(w) => {
                    off += w;
                    progress.moved(dir, w);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(DirError::Write(e)),
            }
        }
        stalls(stall, dst.flush()).await?.map_err(DirError::Write)?;
    }
    match stalls(stall, dst.shutdown()).await? {
        Ok(()) => Ok(()),
        // The peer is already gone; the other direction will notice.
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        Err(e) => Err(DirError::Write(e)),
    }
}

/// A write-side operation that must make progress within `stall`.
async fn stalls<T>(
    stall: Duration,
    op: impl Future<Output = io::Result<T>>,
) -> Result<io::Result<T>, DirError> {
    tokio::time::timeout(stall, op)
        .await
        .map_err(|_| DirError::WriteStall(stall))
}
