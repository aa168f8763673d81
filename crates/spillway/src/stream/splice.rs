//! One direction of a proxied connection, moved by `splice(2)` through a
//! kernel pipe: the bytes never enter user space. The pipe is the bounded
//! buffer; when the destination is slow the pipe fills and we stop reading
//! the source (backpressure).
//!
//! Readiness subtlety: a splice from a socket into a pipe returns `EAGAIN`
//! both when the socket is empty and when the pipe has no free slot (a pipe
//! can run out of slots before it holds `capacity` bytes). Clearing the
//! socket's read readiness on the second kind would hang the connection
//! (tokio's readiness is edge-triggered). So readiness is only cleared by a
//! splice into an *empty* pipe, where `EAGAIN` can only mean "socket empty".

use std::io;
use std::os::fd::AsFd;

use spillway_net::sys::{splice, Pipe};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::{shutdown_write, DirError, Progress};

pub(crate) async fn run(
    src: &TcpStream,
    dst: &TcpStream,
    pipe_size: usize,
    progress: &Progress,
    dir: usize,
) -> Result<(), DirError> {
    // An idle connection holds no pipe: create it on the first readable event.
    src.readable().await.map_err(DirError::Read)?;
    let (pipe, capacity) = Pipe::new(pipe_size).map_err(DirError::Local)?;
    let mut in_pipe = 0usize;
    let mut eof = false;
    loop {
        let mut fill_blocked = false;
        let mut drain_blocked = false;
        if !eof && in_pipe < capacity {
            let r = if in_pipe == 0 {
                src.try_io(Interest::READABLE, || {
                    splice(src.as_fd(), pipe.write.as_fd(), capacity)
                })
            } else {
                splice(src.as_fd(), pipe.write.as_fd(), capacity - in_pipe)
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
                splice(pipe.read.as_fd(), dst.as_fd(), in_pipe)
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
        if eof && in_pipe == 0 {
            return shutdown_write(dst);
        }
        if in_pipe > 0 {
            if drain_blocked {
                dst.writable().await.map_err(DirError::Write)?;
            }
        } else if fill_blocked {
            src.readable().await.map_err(DirError::Read)?;
        }
    }
}
