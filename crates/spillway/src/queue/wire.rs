//! A consumer connection as the delivery loop sees it: plain TCP, or TLS
//! driven by hand with rustls's synchronous API over the non-blocking
//! socket. Driving it by hand keeps the loop's readiness-based shape and
//! lets it count the ciphertext bytes that reach the socket, which is what
//! honest delivery over TLS needs:
//!
//! `written − SIOCOUTQ` counts ciphertext (record headers, tags, alerts),
//! not message bytes. So every time all the plaintext accepted so far has
//! been encrypted and written, the wire records a mark (plaintext end,
//! ciphertext end) in [`CiphertextMarks`]; once the consumer's TCP has
//! acknowledged that much ciphertext, that much plaintext is delivered.
//! Bytes written by the handshake are not counted, so while they are
//! unacknowledged the estimate is low, never high.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::AsFd;

use bytes::{Buf, Bytes, BytesMut};
use rustls::Connection;
use spillway_net::tls::CiphertextMarks;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Plaintext rustls may hold encrypted but unsent per connection: bounds
/// memory, and how much one round of the delivery loop writes.
const TLS_BUFFER: usize = 256 << 10;
/// Most messages one write hands to the socket (Linux's `IOV_MAX`).
const MAX_IOV: usize = 1024;

pub(super) struct Wire {
    tcp: TcpStream,
    tls: Option<Tls>,
    /// Plaintext bytes accepted (plain: written to the socket).
    written: u64,
    /// Set once the connection ends at a message boundary. A wire dropped
    /// without it (a task ended at the drain deadline in the middle of a
    /// message) resets the connection: the consumer must see a reset, not
    /// a partial message followed by a clean EOF.
    clean: bool,
}

impl Drop for Wire {
    fn drop(&mut self) {
        if !self.clean {
            let _ = socket2::SockRef::from(&self.tcp).set_linger(Some(std::time::Duration::ZERO));
        }
    }
}

struct Tls {
    conn: Connection,
    /// Ciphertext bytes written to the socket since the handshake.
    raw_written: u64,
    marks: CiphertextMarks,
}

/// `try_read` as `io::Read`, for `read_tls`.
struct TryRead<'a>(&'a TcpStream);

impl Read for TryRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

/// `try_write` as `io::Write`, counting what the socket took.
struct CountingWrite<'a> {
    tcp: &'a TcpStream,
    written: &'a mut u64,
}

impl Write for CountingWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.tcp.try_write(buf)?;
        *self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Wire {
    pub(super) fn plain(tcp: TcpStream) -> Self {
        Wire {
            tcp,
            tls: None,
            written: 0,
            clean: false,
        }
    }

    /// A TLS connection whose handshake is complete.
    pub(super) fn tls(tcp: TcpStream, mut conn: Connection) -> Self {
        conn.set_buffer_limit(Some(TLS_BUFFER));
        Wire {
            tcp,
            tls: Some(Tls {
                conn,
                raw_written: 0,
                marks: CiphertextMarks::default(),
            }),
            written: 0,
            clean: false,
        }
    }

    /// The connection ends at a message boundary: close it normally.
    pub(super) fn ends_cleanly(&mut self) {
        self.clean = true;
    }

    pub(super) fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// TLS bytes are waiting for the socket.
    pub(super) fn pending(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.conn.wants_write())
    }

    /// Hands message bytes to the connection, the messages in flight as
    /// they are (one vectored write, no copy into a buffer of ours);
    /// `Ok(n)` plaintext bytes were accepted (over TLS, `Ok(0)` when only
    /// queued ciphertext moved), and `WouldBlock` when nothing could move.
    pub(super) fn try_write(&mut self, bufs: &VecDeque<Bytes>) -> io::Result<usize> {
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        let Some(t) = self.tls.as_mut() else {
            let k = fill_slices(bufs, 0, &mut slices);
            let n = self.tcp.try_write_vectored(&slices[..k])?;
            self.written += n as u64;
            return Ok(n);
        };
        let before = t.raw_written;
        let mut accepted = 0usize;
        let blocked = loop {
            match flush(&self.tcp, t, self.written) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break true,
                Err(e) => return Err(e),
            }
            let k = fill_slices(bufs, accepted, &mut slices);
            if k == 0 {
                break false;
            }
            // One TLS record spans several messages (rustls gathers them).
            let n = t.conn.writer().write_vectored(&slices[..k])?;
            if n == 0 {
                break false;
            }
            accepted += n;
            self.written += n as u64;
        };
        if accepted == 0 && t.raw_written == before && blocked {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(accepted)
    }

    /// Plaintext bytes the consumer's TCP has acknowledged.
    pub(super) fn acked(&mut self) -> io::Result<u64> {
        let unacked = spillway_net::sys::unacked_bytes(self.tcp.as_fd())? as u64;
        Ok(match self.tls.as_mut() {
            None => self.written.saturating_sub(unacked),
            Some(t) => t.marks.acked(t.raw_written.saturating_sub(unacked)),
        })
    }

    /// Whether the consumer's TCP acknowledged everything we sent,
    /// including our FIN after `shutdown_write` (it counts as one byte).
    pub(super) fn all_acked(&self) -> bool {
        spillway_net::sys::unacked_bytes(self.tcp.as_fd()).is_ok_and(|n| n == 0)
    }

    /// A pending socket error (`SO_ERROR`): how a reset shows once reads
    /// are no longer watched (after the consumer's FIN).
    pub(super) fn failure(&self) -> Option<io::Error> {
        match self.tcp.take_error() {
            Ok(e) => e,
            Err(e) => Some(e),
        }
    }

    /// Reads what the consumer sent and discards it (consumers send
    /// nothing we use). `Ok(true)`: the consumer ended its side (FIN, or a
    /// TLS close_notify). `WouldBlock` is `Ok(false)`.
    pub(super) fn read_discard(&mut self) -> io::Result<bool> {
        let mut sink = [0u8; 4096];
        let Some(t) = self.tls.as_mut() else {
            return match self.tcp.try_read(&mut sink) {
                Ok(0) => Ok(true),
                Ok(_) => Ok(false),
                Err(e) if quiet(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let tcp_eof = match t.conn.read_tls(&mut TryRead(&self.tcp)) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) if quiet(&e) => return Ok(false),
            Err(e) => return Err(e),
        };
        // A protocol error queues an alert (sent by the next flush) and
        // ends the connection like a reset.
        t.conn
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        loop {
            match t.conn.reader().read(&mut sink) {
                // close_notify
                Ok(0) => return Ok(true),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(tcp_eof),
                // FIN without close_notify: the consumer left; what it
                // acknowledged is accounted by SIOCOUTQ either way.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(true),
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads what the consumer sent into `buf` (ack-protocol consumers
    /// send frames): `Ok(0)` when it ended its side (FIN, or a TLS
    /// close_notify), `WouldBlock` when nothing is there.
    pub(super) fn try_read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        const CHUNK: usize = 16 << 10;
        let Some(t) = self.tls.as_mut() else {
            buf.reserve(CHUNK);
            return self.tcp.try_read_buf(buf);
        };
        let tcp_eof = match t.conn.read_tls(&mut TryRead(&self.tcp)) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) => return Err(e),
        };
        t.conn
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut got = 0;
        let mut chunk = [0u8; CHUNK];
        loop {
            match t.conn.reader().read(&mut chunk) {
                Ok(0) => return Ok(got),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    got += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return match (got, tcp_eof) {
                        (0, true) => Ok(0),
                        (0, false) => Err(io::ErrorKind::WouldBlock.into()),
                        _ => Ok(got),
                    };
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(got),
                Err(e) => return Err(e),
            }
        }
    }

    /// Half-closes: over TLS, close_notify is sent first (waiting for the
    /// socket at most until `deadline`), then `shutdown(SHUT_WR)`.
    pub(super) async fn shutdown_write(&mut self, deadline: Instant) {
        if let Some(t) = self.tls.as_mut() {
            t.conn.send_close_notify();
            loop {
                match flush(&self.tcp, t, self.written) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        match tokio::time::timeout_at(deadline, self.tcp.writable()).await {
                            Ok(Ok(())) => {}
                            _ => break,
                        }
                    }
                    Err(_) => break,
                }
            }
        }
        let _ = socket2::SockRef::from(&self.tcp).shutdown(std::net::Shutdown::Write);
    }
}

/// Drops the first `n` bytes of `bufs` (what a write took).
pub(super) fn advance(bufs: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = bufs.front_mut() else {
            break;
        };
        if front.len() > n {
            front.advance(n);
            break;
        }
        n -= front.len();
        bufs.pop_front();
    }
}

/// Points `slices` at the bytes of `bufs` after the first `skip`; returns
/// how many it filled.
fn fill_slices<'a>(
    bufs: &'a VecDeque<Bytes>,
    mut skip: usize,
    slices: &mut [IoSlice<'a>],
) -> usize {
    let mut k = 0;
    for b in bufs {
        if k == slices.len() {
            break;
        }
        if skip >= b.len() {
            skip -= b.len();
            continue;
        }
        slices[k] = IoSlice::new(&b[skip..]);
        skip = 0;
        k += 1;
    }
    k
}

/// Writes queued ciphertext until none is left (then records a mark: all
/// plaintext up to `plain` is on the socket) or the socket blocks.
fn flush(tcp: &TcpStream, t: &mut Tls, plain: u64) -> io::Result<()> {
    while t.conn.wants_write() {
        let mut w = CountingWrite {
            tcp,
            written: &mut t.raw_written,
        };
        match t.conn.write_tls(&mut w) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    t.marks.flushed(plain, t.raw_written);
    Ok(())
}

fn quiet(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}
