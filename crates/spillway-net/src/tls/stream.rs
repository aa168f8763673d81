//! A connection with or without TLS behind one type, and the delivery
//! accounting through TLS records.

use std::io;
use std::pin::Pin as StdPin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Honest delivery accounting through TLS. The peer's TCP acknowledges
/// ciphertext (`written − SIOCOUTQ` counts record headers, tags and
/// handshake messages), while messages are plaintext. Each time all the
/// plaintext accepted so far has been encrypted and written to the socket,
/// the writer records a mark `(plaintext end, ciphertext end)`; once the
/// peer has acknowledged that much ciphertext, that much plaintext is
/// delivered. Marks are only taken at full flushes, so this never counts a
/// byte before the peer's TCP holds all of it (it may count late by at
/// most one flush).
#[derive(Debug, Default)]
pub struct CiphertextMarks {
    marks: std::collections::VecDeque<(u64, u64)>,
    acked_plain: u64,
}

impl CiphertextMarks {
    /// Every plaintext byte before `plain` is in ciphertext that ends at
    /// socket offset `raw`.
    pub fn flushed(&mut self, plain: u64, raw: u64) {
        match self.marks.back_mut() {
            // Nothing new: keep the earlier (smaller) ciphertext offset.
            Some(&mut (p, _)) if p == plain => {}
            // More ciphertext for the same plaintext (a close_notify, a key
            // update) does not move the mark.
            _ if plain <= self.acked_plain => {}
            _ => self.marks.push_back((plain, raw)),
        }
    }

    /// Plaintext bytes known delivered once `raw_acked` ciphertext bytes
    /// were acknowledged; never decreases.
    pub fn acked(&mut self, raw_acked: u64) -> u64 {
        while let Some(&(plain, raw)) = self.marks.front() {
            if raw > raw_acked {
                break;
            }
            self.acked_plain = self.acked_plain.max(plain);
            self.marks.pop_front();
        }
        self.acked_plain
    }
}

// ------------------------------------------------------------ streams ---

/// A TCP connection with or without TLS, so one code path reads and
/// writes both. Half-close on the TLS variant sends close_notify and then
/// shuts down the TCP write side.
#[derive(Debug)]
pub enum MaybeTls {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl MaybeTls {
    /// The TCP socket underneath (for socket options, SIOCOUTQ, linger).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            MaybeTls::Plain(s) => s,
            MaybeTls::Tls(s) => s.get_ref().0,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls(_))
    }
}

impl From<tokio_rustls::server::TlsStream<TcpStream>> for MaybeTls {
    fn from(s: tokio_rustls::server::TlsStream<TcpStream>) -> Self {
        MaybeTls::Tls(Box::new(tokio_rustls::TlsStream::Server(s)))
    }
}

impl From<tokio_rustls::client::TlsStream<TcpStream>> for MaybeTls {
    fn from(s: tokio_rustls::client::TlsStream<TcpStream>) -> Self {
        MaybeTls::Tls(Box::new(tokio_rustls::TlsStream::Client(s)))
    }
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: StdPin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => StdPin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => StdPin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: StdPin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => StdPin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => StdPin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: StdPin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => StdPin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => StdPin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: StdPin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => StdPin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => StdPin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
