//! The few Linux syscalls std and tokio do not wrap: `pipe2`, `splice`,
//! `F_SETPIPE_SZ`, `SIOCOUTQ`, `RLIMIT_NOFILE`.
//!
//! This is the only module in the crate allowed to use `unsafe`. Every block
//! is a single FFI call on file descriptors the caller proves alive by
//! lending them (`BorrowedFd`), with the return value checked.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Both ends of a non-blocking, close-on-exec pipe.
#[derive(Debug)]
pub struct Pipe {
    pub read: OwnedFd,
    pub write: OwnedFd,
}

impl Pipe {
    /// Creates a pipe and asks the kernel for `size` bytes of capacity.
    /// Returns the pipe and the capacity the kernel granted (it rounds up to
    /// a power-of-two number of pages and may refuse above `pipe-max-size`,
    /// in which case the default capacity is kept).
    pub fn new(size: usize) -> io::Result<(Pipe, usize)> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid, writable array of two c_ints.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by us alone.
        let pipe = unsafe {
            Pipe {
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
            }
        };
        let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
        // SAFETY: fcntl on a descriptor we own; F_SETPIPE_SZ takes an int argument.
        let granted = unsafe { libc::fcntl(pipe.write.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
        let capacity = if granted > 0 {
            granted as usize
        } else {
            // SAFETY: as above; F_GETPIPE_SZ takes no argument.
            let current = unsafe { libc::fcntl(pipe.write.as_raw_fd(), libc::F_GETPIPE_SZ) };
            if current > 0 {
                current as usize
            } else {
                return Err(io::Error::last_os_error());
            }
        };
        Ok((pipe, capacity))
    }
}

/// Moves up to `len` bytes from `from` to `to` without copying through user
/// space. One of the two must be a pipe. Non-blocking: `WouldBlock` means the
/// source is empty or the destination is full. `Ok(0)` means end of stream
/// on the source.
pub fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are borrowed, hence open for the call; null
    // offsets mean "use and advance the file position" (pipes and sockets
    // have none).
    let n = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Bytes written to a TCP socket that the peer has not acknowledged yet
/// (`SIOCOUTQ`). `written - unacked` is what the peer's TCP stack holds.
pub fn unacked_bytes(socket: BorrowedFd<'_>) -> io::Result<usize> {
    let mut value: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (== TIOCOUTQ) writes one c_int through the pointer,
    // which points at a live local.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &mut value) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(value).unwrap_or(0))
}

/// Raises the limit on open files, so a proxy with many connections is not
/// stopped by a conservative default: first both limits to `want` (works
/// with CAP_SYS_RESOURCE), else the soft limit to the hard one. Returns the
/// new soft limit.
pub fn raise_nofile_limit(want: u64) -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the live local `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_max < want {
        let wanted = libc::rlimit {
            rlim_cur: want,
            rlim_max: want,
        };
        // SAFETY: setrlimit reads the live local `wanted`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0 {
            return Ok(want);
        }
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the live local `lim`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// `CLOCK_MONOTONIC` in microseconds: what systemd's `MONOTONIC_USEC`
/// notification field wants (std's `Instant` does not expose its value).
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the live local `ts`; CLOCK_MONOTONIC
    // always exists on Linux, so it cannot fail here.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn splice_moves_bytes_through_a_pipe() {
        let (a_tx, mut a_rx) = std::os::unix::net::UnixStream::pair().expect("pair");
        let (mut b_tx, b_rx) = std::os::unix::net::UnixStream::pair().expect("pair");
        let (pipe, cap) = Pipe::new(65536).expect("pipe");
        assert!(cap >= 4096);
        b_tx.write_all(b"hello splice").expect("write");
        let n = splice(b_rx.as_fd(), pipe.write.as_fd(), 1024).expect("splice in");
        assert_eq!(n, 12);
        let m = splice(pipe.read.as_fd(), a_tx.as_fd(), n).expect("splice out");
        assert_eq!(m, 12);
        let mut got = [0u8; 12];
        a_rx.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"hello splice");
        // Empty source: WouldBlock, not 0.
        b_rx.set_nonblocking(true).expect("nonblocking");
        let err = splice(b_rx.as_fd(), pipe.write.as_fd(), 1024).expect_err("empty");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn outq_of_fresh_tcp_socket_is_zero() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        assert_eq!(unacked_bytes(c.as_fd()).expect("ioctl"), 0);
    }
}
