//! One direction of a proxied connection, moved by `splice(2)` through a
//! kernel pipe: the bytes never enter user space. The pipe is the bounded
//! buffer; when the destination is slow the pipe fills and we stop reading
//! the source (backpressure).
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

use spillway_net::sys::{splice, Pipe};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tracing::warn;

use super::{shutdown_write, DirError, Progress};
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

pub(crate) async fn run(
    src: &TcpStream,
    dst: &TcpStream,
    pool: &PipePool,
    progress: &Progress,
    dir: usize,
) -> Result<(), DirError> {
    let mut pipe: Option<(Pipe, usize)> = None;
    let mut in_pipe = 0usize;
    let mut eof = false;
    loop {
        if pipe.is_none() {
            // Hold no pipe while there is nothing to move.
            src.readable().await.map_err(DirError::Read)?;
            match pool.take() {
                Ok(p) => pipe = Some(p),
                Err(e) => {
                    if let Some(suppressed) = pool.warn.lock().ok().and_then(|mut w| w.check()) {
                        warn!(error = %e, suppressed, "no pipe for splice; copying through user space");
                    }
                    return super::spill::run(src, dst, pool.fallback_buffer, None, progress, dir)
                        .await;
                }
            }
        }
        let Some((p, capacity)) = pipe.as_ref() else {
            continue;
        };
        let capacity = *capacity;
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
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => drain_blocked = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(DirError::Write(e)),
            }
        }
        if in_pipe == 0 && (eof || fill_blocked) {
            if let Some(p) = pipe.take() {
                pool.give_back(p);
            }
            if eof {
                return shutdown_write(dst);
            }
            // Read readiness was cleared by the EAGAIN above; the top of the
            // loop waits for it again before taking a pipe.
            continue;
        }
        if in_pipe > 0 && drain_blocked {
            dst.writable().await.map_err(DirError::Write)?;
        }
    }
}
