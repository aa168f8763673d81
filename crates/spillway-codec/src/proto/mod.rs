//! The ack protocol (docs/protocol.md), sans-IO: the handshake lines, and
//! the frames after it in the text or the binary encoding.
//!
//! Nothing here reads or writes a socket. A connection's loop keeps a
//! [`BytesMut`] of what it has read; [`hello_line`] says when the handshake
//! line is in, [`Hello::parse`] reads it, and then a [`FrameDecoder`] takes
//! one [`Frame`] at a time off the front of the buffer, answering "a frame",
//! "need more bytes" (`Ok(None)`) or "invalid stream" (a [`ProtoError`],
//! whose code and text the relay sends back before it closes). Bodies are
//! split off the buffer, never copied.
//!
//! ```
//! use bytes::BytesMut;
//! use spillway_codec::proto::{
//!     self, hello_line, Encoding, Frame, FrameDecoder, Hello, Role, Welcome,
//! };
//!
//! // The client's side of the handshake.
//! let mut hello = Hello::consumer(Encoding::Binary);
//! hello.window = 64;
//! let line = hello.to_line();
//! assert_eq!(
//!     line,
//!     "SPILLWAY 1 role=consumer encoding=binary window=64 window_bytes=1048576\n"
//! );
//!
//! // The relay's: the line, then frames, may arrive in one read.
//! let mut buf = BytesMut::from(line.as_bytes());
//! proto::encode(&Frame::Ack { seq: 7 }, Encoding::Binary, &mut buf);
//! let n = hello_line(&buf)?.expect("a whole line");
//! let theirs = Hello::parse(&buf.split_to(n))?;
//! assert_eq!((theirs.role, theirs.window), (Role::Consumer, 64));
//! let welcome = Welcome {
//!     session: "7f3a9c02".into(),
//!     max_message: 1 << 20,
//!     ack_timeout_ms: 30_000,
//!     max_deliveries: 5,
//! };
//! assert!(welcome.to_line().starts_with("OK 1 session=7f3a9c02 "));
//!
//! let max_frame = welcome.max_message as usize + proto::FRAME_OVERHEAD;
//! let mut decoder = FrameDecoder::new(theirs.encoding, max_frame);
//! assert_eq!(decoder.decode(&mut buf)?, Some(Frame::Ack { seq: 7 }));
//! assert_eq!(decoder.decode(&mut buf)?, None); // read more
//!
//! // A MSG written as header, body and trailer (vectored, body not copied).
//! let body = bytes::Bytes::from_static(b"hello\n");
//! let mut header = BytesMut::new();
//! proto::msg_header(42, 1, body.len(), Encoding::Text, &mut header);
//! assert_eq!(&header[..], b"MSG 42 1 6\n");
//! assert_eq!(proto::body_trailer(Encoding::Text), b"\n");
//! # Ok::<(), proto::ProtoError>(())
//! ```
//!
//! A decoded frame always passes [`Frame::validate`]; which side may send
//! it ([`Frame::sender`]) is the caller's check.

use std::fmt;

use bytes::BytesMut;

mod binary;
mod error;
mod frame;
mod hello;
mod text;

pub use error::{err_text, ProtoError, MAX_ERR_TEXT};
pub use frame::Frame;
pub use hello::{hello_line, is_valid_name, Hello, Reply, Welcome};

/// The protocol version this crate speaks.
pub const VERSION: u32 = 1;

/// The longest line, `\n` included: the handshake, the relay's reply, and a
/// text frame's header line, except an ACKS line ([`MAX_ACKS_LINE`]).
pub const MAX_LINE: usize = 1024;

/// The longest text ACKS line, `\n` included: `ACKS ` and
/// [`MAX_ACK_RANGES`] ranges of 20-digit seqs (43,013 bytes), so a text
/// ACKS holds as many ranges as a binary one.
pub const MAX_ACKS_LINE: usize = 5 + MAX_ACK_RANGES * (20 + 1 + 20) + (MAX_ACK_RANGES - 1) + 1;

/// What a frame may add to its body: a relay with `max_message` decodes with
/// a `max_frame` of `max_message + FRAME_OVERHEAD`. Every MSG and PUB header
/// fits it in either encoding (the longest, a text MSG with 20-digit
/// numbers, takes 57 bytes, and 58 with the `\n` after the body).
pub const FRAME_OVERHEAD: usize = 64;

/// The most ranges in one ACKS.
pub const MAX_ACK_RANGES: usize = 1024;

/// The most bytes of a TERM reason.
pub const MAX_TERM_REASON: usize = 200;

/// The largest consumer window in messages (`window=`, WIN).
pub const MAX_WINDOW: u32 = 65_536;

/// The default consumer window in messages.
pub const DEFAULT_WINDOW: u32 = 256;

/// The default consumer window in body bytes (1 MiB).
pub const DEFAULT_WINDOW_BYTES: u64 = 1 << 20;

/// The longest producer name, group or session.
pub const MAX_NAME: usize = 64;

/// Which side of the queue a client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Takes messages from a `to` endpoint, and acknowledges them.
    Consumer,
    /// Puts messages into a `from` endpoint.
    Producer,
}

impl Role {
    /// `"consumer"` or `"producer"`, as the handshake writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Consumer => "consumer",
            Role::Producer => "producer",
        }
    }

    /// The other role.
    pub fn other(self) -> Role {
        match self {
            Role::Consumer => Role::Producer,
            Role::Producer => Role::Consumer,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How frames are written after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Lines, with bodies by length: for a script with a socket.
    Text,
    /// Length-prefixed little-endian frames: for clients that care about
    /// CPU.
    Binary,
}

impl Encoding {
    /// `"text"` or `"binary"`, as the handshake writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Text => "text",
            Encoding::Binary => "binary",
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A number as the protocol writes it: `0` or ASCII digits without a
/// leading zero, no sign, fitting a `u64`. `None` for anything else.
pub(crate) fn decimal(raw: &[u8]) -> Option<u64> {
    match raw {
        [] => None,
        [b'0'] => Some(0),
        [b'0', ..] => None,
        _ => raw.iter().try_fold(0u64, |n, &b| {
            if b.is_ascii_digit() {
                n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
            } else {
                None
            }
        }),
    }
}

/// Cuts one direction of a connection, after the handshake, into frames.
///
/// The contract with the caller:
/// - pass the connection's buffer of unconsumed bytes; on `Ok(Some(frame))`
///   the frame's bytes have been taken off its front (bodies by
///   `split_to(..).freeze()`, sharing the buffer's memory);
/// - on `Ok(None)`, read more bytes into the same buffer and call again
///   (nothing was taken);
/// - an `Err` is final: the stream cannot be trusted past that point; send
///   the error (relay) or report it (client), and close. `buf` is left as
///   it was.
///
/// The frames and the error are the same however the stream is cut into
/// reads. The decoder never reserves memory: a frame's declared length is
/// checked against its limit as soon as it is read, before its bytes are
/// awaited. MSG and PUB frames, whole on the wire (text: header line, body
/// and `\n`; binary: the 4-byte length and what follows), are limited to
/// `max_frame` (413 over it); every other frame has a fixed bound (a text
/// line of [`MAX_LINE`] bytes, or [`MAX_ACKS_LINE`] for ACKS; in binary an
/// ACKS of [`MAX_ACK_RANGES`] ranges, 16,391 bytes, is the largest), so a
/// small `max_message` never stops a consumer's acks.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    encoding: Encoding,
    max_frame: usize,
    /// Text only: how far the current line has been searched for its `\n`.
    scanned: usize,
}

impl FrameDecoder {
    /// A decoder of `encoding` that refuses MSG and PUB frames over
    /// `max_frame` bytes on the wire (a relay passes its route's
    /// `max_message +` [`FRAME_OVERHEAD`]).
    pub fn new(encoding: Encoding, max_frame: usize) -> Self {
        FrameDecoder {
            encoding,
            max_frame,
            scanned: 0,
        }
    }

    /// The encoding it decodes.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The limit on MSG and PUB frames, in bytes on the wire.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Takes one whole frame off the front of `buf`: `Ok(Some(frame))`,
    /// `Ok(None)` if more bytes are needed, or an error for an invalid
    /// stream (see the contract on [`FrameDecoder`]).
    #[inline]
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, ProtoError> {
        match self.encoding {
            Encoding::Text => text::decode(buf, self.max_frame, &mut self.scanned),
            Encoding::Binary => binary::decode(buf, self.max_frame),
        }
    }
}

/// Appends `frame` in `encoding` to `out`.
///
/// Any frame is written, even one the peer will refuse (tests of hostile
/// peers need those; [`Frame::validate`] says whether it will be accepted).
/// Only text fields are made safe, because in text a newline in them would
/// end the line and inject a frame: a TERM reason is cut to
/// [`MAX_TERM_REASON`] bytes with each `\n` replaced by a space, an ERR text
/// made as [`err_text`] says, the same in both encodings. A PUB's
/// `Some(0)` pseq is written as no pseq (in binary, 0 means none).
///
/// # Panics
/// In binary, if the frame does not fit the `u32` length (over 4 GiB).
pub fn encode(frame: &Frame, encoding: Encoding, out: &mut BytesMut) {
    match encoding {
        Encoding::Text => text::encode(frame, out),
        Encoding::Binary => binary::encode(frame, out),
    }
}

/// Appends a MSG's header for a body of `body_len` bytes: what precedes the
/// body on the wire. Write the header, the body, then
/// [`body_trailer`]`(encoding)`: the same bytes as [`encode`] of the
/// [`Frame::Msg`], without copying the body.
///
/// # Panics
/// In binary, if the frame does not fit the `u32` length (over 4 GiB).
pub fn msg_header(seq: u64, attempt: u32, body_len: usize, encoding: Encoding, out: &mut BytesMut) {
    match encoding {
        Encoding::Text => text::msg_header(seq, attempt, body_len, out),
        Encoding::Binary => binary::msg_header(seq, attempt, body_len, out),
    }
}

/// Appends a PUB's header for a body of `body_len` bytes (`pseq` for a
/// named producer; `None`, or `Some(0)`, for none); then the body and
/// [`body_trailer`], as for [`msg_header`].
///
/// # Panics
/// In binary, if the frame does not fit the `u32` length (over 4 GiB).
pub fn pub_header(pseq: Option<u64>, body_len: usize, encoding: Encoding, out: &mut BytesMut) {
    match encoding {
        Encoding::Text => text::pub_header(pseq, body_len, out),
        Encoding::Binary => binary::pub_header(pseq, body_len, out),
    }
}

/// What follows a MSG's or PUB's body: `b"\n"` in text, nothing in binary.
pub fn body_trailer(encoding: Encoding) -> &'static [u8] {
    match encoding {
        Encoding::Text => b"\n",
        Encoding::Binary => b"",
    }
}

#[cfg(test)]
mod tests;
