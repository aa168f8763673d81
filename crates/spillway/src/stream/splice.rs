//! One direction of a proxied connection. Bulk bytes move by `splice(2)`
//! through a kernel pipe and never enter user space; the pipe is the
//! bounded buffer, and when the destination is slow it fills and we stop
//! reading the source (backpressure).
//!
//! Small messages (request/response traffic) are cheaper copied: one
//! `read` and one `write` through a small transient buffer, where a pipe
//! costs three splices. A `read` shorter than asked means the socket's
//! receive queue was empty at that moment (that is how TCP's recvmsg
//! works), so readiness is cleared right there instead of paying a third
//! syscall to see `EAGAIN`; tokio only clears readiness if no newer event
//! arrived meanwhile, so no wake-up is lost. A read that fills the buffer
//! means bulk: the rest of the burst goes through a pipe.
//!
//! Pipes are borrowed from a per-route pool only while bytes are in flight
//! and given back as soon as one drains, so an idle connection holds no
//! pipe (no descriptors, no kernel pages), like HAProxy's pipe pool. When no
//! pipe can be had (EMFILE), the direction falls back to a user-space copy
//! instead of failing the connection.
//!
//! Readiness subtlety: a splice from a socket into a pipe returns `EAGAIN`
//! both when the socket is empty and when the pipe has no free slot (a pipe
//! can run out of slots before it holds `capacity` bytes). Clearing the
//! socket's read readiness on the second kind would hang the connection
//! (tokio's readiness is edge-triggered). So readiness is only cleared by a
//! splice into an *empty* pipe, where `EAGAIN` can only mean "socket empty".

use std::io;
use std::os::fd::AsFd;
use std::sync::Mutex;

use bytes::BytesMut;

use spillway_net::sys::{splice, Pipe};
use spillway_net::timeout::StallTimer;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tracing::warn;

use super::direction::{writable_or_stall, DirError, Direction, Progress};
use crate::logging::RateLimited;

/// Empty pipes ready for reuse, all of one requested size.
pub(crate) struct PipePool {
    size: usize,
    /// User-space buffer of the copy fallback.
    fallback_buffer: usize,
    max_idle: usize,
    idle: Mutex<Vec<(Pipe, usize)>>,
    warn: Mutex<RateLimited>,
}

impl PipePool {
    pub(crate) fn new(size: usize, fallback_buffer: usize, max_idle: usize) -> Self {
        PipePool {
            size,
            fallback_buffer,
            max_idle,
            idle: Mutex::new(Vec::new()),
            warn: Mutex::new(RateLimited::new(std::time::Duration::from_secs(10))),
        }
    }

    fn take(&self) -> io::Result<(Pipe, usize)> {
        if let Some(p) = self.idle.lock().ok().and_then(|mut v| v.pop()) {
            return Ok(p);
        }
        Pipe::new(self.size)
    }

    /// Returns an empty pipe to the pool (or closes it if the pool is full).
    fn give_back(&self, pipe: (Pipe, usize)) {
        if let Ok(mut v) = self.idle.lock() {
            if v.len() < self.max_idle {
                v.push(pipe);
            }
        }
    }
}

/// Copy-step buffer; a read that fills it switches the burst to splice.
const COPY_CHUNK: usize = 16 << 10;

/// How a burst of traffic ended.
#[derive(Debug, PartialEq, Eq)]
enum Burst {
    /// The source sent EOF; everything before it was written.
    Eof,
    /// The source is drained (its read readiness is cleared).
    Drained,
    /// A read filled the copy buffer: more is probably waiting.
    Bulk,
}

pub(crate) async fn run(
    src: &TcpStream,
    dst: &TcpStream,
    pool: &PipePool,
    progress: &Progress,
    dir: Direction,
    mut stall: StallTimer,
) -> Result<(), DirError> {
    loop {
        // Idle: hold no buffer and no pipe.
        src.readable().await.map_err(DirError::Read)?;
        match copy_burst(src, dst, progress, dir, &mut stall).await? {
            Burst::Eof => return progress.end(dir, dst),
            Burst::Drained => continue,
            Burst::Bulk => {}
        }
        let pipe = match pool.take() {
            Ok(p) => p,
            Err(e) => {
                if let Some(suppressed) = pool.warn.lock().ok().and_then(|mut w| w.check()) {
                    warn!(error = %e, suppressed, "no pipe for splice; copying through user space");
                }
                return super::spill::run(
                    src,
                    dst,
                    pool.fallback_buffer,
                    None,
                    progress,
                    dir,
                    stall,
                )
                .await;
            }
        };
        if splice_burst(src, dst, pool, pipe, progress, dir, &mut stall).await? == Burst::Eof {
            return progress.end(dir, dst);
        }
    }
}

/// Reads and writes through a small buffer until the source is drained,
/// ends, or turns out to be a bulk transfer.
async fn copy_burst(
    src: &TcpStream,
    dst: &TcpStream,
    progress: &Progress,
    dir: Direction,
    stall: &mut StallTimer,
) -> Result<Burst, DirError> {
    let mut buf = BytesMut::with_capacity(COPY_CHUNK);
    loop {
        buf.clear();
        let mut short = 0usize;
        // A short read also clears readiness (see the module comment): the
        // closure reports it as WouldBlock after keeping the bytes.
        let r = src.try_io(Interest::READABLE, || match src.try_read_buf(&mut buf) {
            Ok(n) if n > 0 && n < COPY_CHUNK => {
                short = n;
                Err(io::ErrorKind::WouldBlock.into())
            }
            other => other,
        });
        let (n, burst) = match r {
            Ok(0) => return Ok(Burst::Eof),
            Ok(n) => (n, Burst::Bulk),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => (short, Burst::Drained),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(DirError::Read(e)),
        };
        write_all(dst, &buf[..n], stall).await?;
        progress.moved(dir, n);
        return Ok(burst);
    }
}

/// Writes all of `data`, waiting for the destination as needed (at most
/// the write-stall timeout without progress).
async fn write_all(dst: &TcpStream, data: &[u8], stall: &mut StallTimer) -> Result<(), DirError> {
    let mut off = 0;
    while off < data.len() {
        match dst.try_write(&data[off..]) {
            Ok(n) => {
                off += n;
                stall.progressed();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                writable_or_stall(dst, stall).await?
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(DirError::Write(e)),
        }
    }
    Ok(())
}

/// Moves a bulk burst through `pipe` until the source is drained (the
/// pipe, empty again, goes back to the pool) or ends.
async fn splice_burst(
    src: &TcpStream,
    dst: &TcpStream,
    pool: &PipePool,
    pipe: (Pipe, usize),
    progress: &Progress,
    dir: Direction,
    stall: &mut StallTimer,
) -> Result<Burst, DirError> {
    let (p, capacity) = &pipe;
    let capacity = *capacity;
    let mut in_pipe = 0usize;
    let mut eof = false;
    loop {
        let mut fill_blocked = false;
        let mut drain_blocked = false;
        if !eof && in_pipe < capacity {
            let r = if in_pipe == 0 {
                src.try_io(Interest::READABLE, || {
                    splice(src.as_fd(), p.write.as_fd(), capacity)
                })
            } else {
                splice(src.as_fd(), p.write.as_fd(), capacity - in_pipe)
            };
            match r {
                Ok(0) => eof = true,
                Ok(n) => in_pipe += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => fill_blocked = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(DirError::Read(e)),
            }
        }
        if in_pipe > 0 {
            match dst.try_io(Interest::WRITABLE, || {
                splice(p.read.as_fd(), dst.as_fd(), in_pipe)
            }) {
                Ok(n) => {
                    in_pipe -= n;
                    progress.moved(dir, n);
                    stall.progressed();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => drain_blocked = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(DirError::Write(e)),
            }
        }
        if in_pipe == 0 && (eof || fill_blocked) {
            // Empty: the pipe can serve another connection. (A pipe still
            // holding bytes is never returned; on error it is closed.)
            pool.give_back(pipe);
            return Ok(if eof { Burst::Eof } else { Burst::Drained });
        }
        if in_pipe > 0 && drain_blocked {
            writable_or_stall(dst, stall).await?;
        }
    }
}
