//! Sans-IO framing for spillway: bytes in, frames out.
//!
//! A [`Decoder`] looks at the bytes a connection has read so far and answers
//! one of three things — "the first `n` bytes are one message", "need more
//! bytes" or "this stream is invalid" ([`Decoded`]) — never conflating them.
//! It does no I/O and owns no buffer: the socket loop keeps the buffer, drops
//! the bytes of each frame it takes, and reads again on
//! [`Decoded::NeedMore`].
//!
//! A stored message is the message *as it was on the wire*: for `lines` it
//! includes the trailing `'\n'`, for `len:*` it includes the length prefix.
//! So a sink writes stored messages back verbatim and its consumer sees the
//! producer's original bytes. Every framing has a maximum message size, which
//! counts the whole message (prefix or newline included).
//!
//! The ack protocol of docs/protocol.md (handshake, frames in its text and
//! binary encodings) has its own codec in [`proto`], on `bytes::BytesMut`.
//!
//! ```
//! use spillway_codec::{Decoded, Decoder, Framing};
//!
//! let framing: Framing = "len:u16be".parse().unwrap();
//! let mut decoder = Decoder::new(framing, 1024);
//! let mut buf = vec![0, 3, b'a', b'b'];      // a partial message
//! assert_eq!(decoder.decode(&buf), Decoded::NeedMore);
//! buf.push(b'c');                              // the rest arrives
//! let Decoded::Frame(n) = decoder.decode(&buf) else { panic!() };
//! let message: Vec<u8> = buf.drain(..n).collect();
//! assert_eq!(message, [0, 3, b'a', b'b', b'c']);
//! assert_eq!(decoder.offset(), 5);
//! assert!(decoder.finish(&buf).is_ok());
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod decode;
mod encode;
mod error;
mod framing;
pub mod proto;

pub use decode::{Decoded, Decoder};
pub use encode::{encode, payload};
pub use error::{FrameError, FrameErrorKind, ParseFramingError};
pub use framing::{Framing, LenPrefix};

/// A reasonable default for the maximum message size (1 MiB, whole message).
///
/// Large enough for typical log lines and RPC payloads, small enough that one
/// misbehaving peer cannot make a connection buffer grow without bound.
pub const DEFAULT_MAX_MESSAGE: usize = 1024 * 1024;
