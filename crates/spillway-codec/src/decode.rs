//! The decoder: one step of "is there a whole message at the front of this
//! buffer?".

use crate::error::FrameError;
use crate::framing::{Framing, LenPrefix};

/// The outcome of one [`Decoder::decode`] call.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// The first `n` bytes of the buffer are one whole message (prefix or
    /// newline included). The caller takes them off the front of its buffer
    /// before calling `decode` again. `n` is never 0.
    Frame(usize),
    /// No whole message yet: read more bytes and call `decode` again. Not an
    /// error, and not end-of-stream.
    NeedMore,
    /// The stream cannot be framed. Everything before
    /// [`FrameError::offset`] was fine; nothing after it can be trusted.
    Invalid(FrameError),
}

/// Cuts one stream into messages. One decoder per connection (or per stream
/// direction): it tracks the stream offset and, for `lines`, how much of a
/// partial line it has already searched.
///
/// The contract with the caller:
/// - pass the *unconsumed* bytes of the stream, starting at the first byte
///   after the last frame returned;
/// - after [`Decoded::Frame(n)`](Decoded::Frame), drop exactly those `n`
///   bytes from the front of the buffer;
/// - after [`Decoded::NeedMore`], call again with the same bytes plus
///   whatever was read since (never fewer bytes).
///
/// Decoding is O(1) per message for `len:*` and `raw`; for `lines` each byte
/// is searched once, however many reads a long line arrives in.
#[derive(Debug, Clone)]
pub struct Decoder {
    framing: Framing,
    max: usize,
    /// Bytes consumed so far: the sum of every `Frame(n)` returned.
    offset: u64,
    /// `lines` only: this many leading bytes of the caller's buffer are
    /// already known to hold no `'\n'`. Reset when a frame is returned.
    scanned: usize,
}

impl Decoder {
    /// A decoder for `framing` that rejects messages over `max_message`
    /// bytes (whole message: prefix or newline included).
    ///
    /// `max_message` is raised to 1 if 0 (a `raw` decoder must make progress).
    /// With a `len:*` framing and a `max_message` below the prefix width,
    /// every message is rejected.
    ///
    /// # Panics
    /// If `framing` is `Len` with a width other than 1, 2, 4 or 8 — a
    /// programming error, since [`Framing::from_str`](std::str::FromStr) and
    /// the [`LenPrefix`] constants only produce valid widths.
    pub fn new(framing: Framing, max_message: usize) -> Self {
        if let Framing::Len(p) = framing {
            assert!(
                p.is_valid(),
                "length prefix width must be 1, 2, 4 or 8, got {}",
                p.width
            );
        }
        Decoder {
            framing,
            max: max_message.max(1),
            offset: 0,
            scanned: 0,
        }
    }

    /// The framing this decoder cuts.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// The maximum message size in force (whole message).
    pub fn max_message(&self) -> usize {
        self.max
    }

    /// Looks at the unconsumed bytes `buf`; see [`Decoded`] and the
    /// contract on [`Decoder`].
    ///
    /// For `raw`, returns `Frame(min(buf.len(), max))` when `buf` is not
    /// empty. An empty `buf` is always `NeedMore`.
    #[inline]
    pub fn decode(&mut self, buf: &[u8]) -> Decoded {
        let decoded = match self.framing {
            Framing::Lines => self.decode_line(buf),
            Framing::Len(prefix) => self.decode_len(prefix, buf),
            Framing::Raw if buf.is_empty() => Decoded::NeedMore,
            Framing::Raw => Decoded::Frame(buf.len().min(self.max)),
        };
        if let Decoded::Frame(n) = decoded {
            self.offset = self.offset.saturating_add(n as u64);
        }
        decoded
    }

    #[inline]
    fn decode_line(&mut self, buf: &[u8]) -> Decoded {
        // A line of `max` bytes has its '\n' at index max - 1, so only the
        // first `max` bytes need searching.
        let window = buf.len().min(self.max);
        // A shorter buffer than last time breaks the contract; rescan it
        // from the start rather than panic or skip bytes.
        let start = if self.scanned <= window {
            self.scanned
        } else {
            0
        };
        match memchr::memchr(b'\n', &buf[start..window]) {
            Some(i) => {
                self.scanned = 0;
                Decoded::Frame(start + i + 1)
            }
            None if buf.len() >= self.max => Decoded::Invalid(FrameError::TooLarge {
                offset: self.offset,
                size: window as u64,
                max: self.max as u64,
            }),
            None => {
                self.scanned = window;
                Decoded::NeedMore
            }
        }
    }

    #[inline]
    fn decode_len(&self, prefix: LenPrefix, buf: &[u8]) -> Decoded {
        let width = usize::from(prefix.width);
        let Some(header) = buf.get(..width) else {
            return Decoded::NeedMore;
        };
        // `None` when the declared size overflows u64: too large for any max.
        let size = prefix.read(header).checked_add(width as u64);
        // Checked before waiting for the payload, so a peer declaring 4 GiB
        // is refused after 4 bytes, not after we buffered them.
        match size.map(usize::try_from) {
            Some(Ok(size)) if size <= self.max => {
                if buf.len() >= size {
                    Decoded::Frame(size)
                } else {
                    Decoded::NeedMore
                }
            }
            _ => Decoded::Invalid(FrameError::TooLarge {
                offset: self.offset,
                size: size.unwrap_or(u64::MAX),
                max: self.max as u64,
            }),
        }
    }

    /// Total bytes consumed so far on this stream: the sum of the frames
    /// returned. Where the next message starts; for "error at offset N" logs.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Called at end of stream with the bytes left after decoding returned
    /// [`Decoded::NeedMore`]: `Ok(())` if there are none, otherwise
    /// [`FrameError::Truncated`] describing the partial message.
    ///
    /// (For `raw`, leftover bytes only remain if the caller stopped decoding
    /// early; they are reported as truncated rather than silently accepted.)
    pub fn finish(&self, leftover: &[u8]) -> Result<(), FrameError> {
        if leftover.is_empty() {
            return Ok(());
        }
        let need = match self.framing {
            Framing::Len(prefix) => {
                let width = usize::from(prefix.width);
                leftover
                    .get(..width)
                    .map(|header| prefix.read(header).saturating_add(width as u64))
            }
            Framing::Lines | Framing::Raw => None,
        };
        Err(FrameError::Truncated {
            offset: self.offset,
            have: leftover.len() as u64,
            need,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::LenPrefix;

    fn lines(max: usize) -> Decoder {
        Decoder::new(Framing::Lines, max)
    }

    fn len(prefix: LenPrefix, max: usize) -> Decoder {
        Decoder::new(Framing::Len(prefix), max)
    }

    /// Decodes a whole buffer the way a socket loop would; returns the
    /// messages and the outcome that stopped the loop (`NeedMore` or an error).
    fn drain(d: &mut Decoder, mut buf: &[u8]) -> (Vec<Vec<u8>>, Decoded, usize) {
        let mut out = Vec::new();
        loop {
            match d.decode(buf) {
                Decoded::Frame(n) => {
                    assert!(n > 0 && n <= buf.len());
                    out.push(buf[..n].to_vec());
                    buf = &buf[n..];
                }
                other => return (out, other, buf.len()),
            }
        }
    }

    // ---- lines ----

    #[test]
    fn lines_include_their_newline() {
        let mut d = lines(100);
        let (msgs, end, left) = drain(&mut d, b"a\nbc\n\nd");
        assert_eq!(
            msgs,
            vec![b"a\n".to_vec(), b"bc\n".to_vec(), b"\n".to_vec()]
        );
        assert_eq!(end, Decoded::NeedMore);
        assert_eq!(left, 1);
        assert_eq!(d.offset(), 6);
        assert_eq!(
            d.finish(b"d"),
            Err(FrameError::Truncated {
                offset: 6,
                have: 1,
                need: None
            })
        );
    }

    #[test]
    fn lines_empty_buffer_needs_more() {
        let mut d = lines(1);
        assert_eq!(d.decode(b""), Decoded::NeedMore);
        assert_eq!(d.finish(b""), Ok(()));
    }

    #[test]
    fn lines_max_is_inclusive_of_the_newline() {
        // "abc\n" is 4 bytes: fine at max 4, too large at max 3.
        let mut d = lines(4);
        assert_eq!(d.decode(b"abc\n"), Decoded::Frame(4));
        let mut d = lines(3);
        assert_eq!(
            d.decode(b"abc\n"),
            Decoded::Invalid(FrameError::TooLarge {
                offset: 0,
                size: 3,
                max: 3
            })
        );
        // Max 1 still admits an empty line.
        let mut d = lines(1);
        assert_eq!(d.decode(b"\n"), Decoded::Frame(1));
    }

    #[test]
    fn lines_too_large_is_reported_without_waiting_for_the_newline() {
        let mut d = lines(4);
        assert_eq!(d.decode(b"ok\n"), Decoded::Frame(3));
        assert_eq!(d.decode(b"abc"), Decoded::NeedMore);
        // Four bytes, no newline: the line can only be >= 5 bytes.
        assert_eq!(
            d.decode(b"abcd"),
            Decoded::Invalid(FrameError::TooLarge {
                offset: 3,
                size: 4,
                max: 4
            })
        );
        // A newline beyond the window does not rescue it.
        assert!(matches!(d.decode(b"abcd\n"), Decoded::Invalid(_)));
    }

    #[test]
    fn lines_partial_line_is_searched_once() {
        let mut d = lines(1 << 20);
        let mut buf = Vec::new();
        for _ in 0..100 {
            buf.extend_from_slice(&[b'x'; 1000]);
            assert_eq!(d.decode(&buf), Decoded::NeedMore);
            // The next search starts where this one stopped.
            assert_eq!(d.scanned, buf.len());
        }
        buf.push(b'\n');
        assert_eq!(d.decode(&buf), Decoded::Frame(100_001));
        assert_eq!(d.scanned, 0);
    }

    #[test]
    fn lines_survive_a_caller_passing_fewer_bytes() {
        // Contract violation: must not panic, just rescan.
        let mut d = lines(100);
        assert_eq!(d.decode(b"abcdef"), Decoded::NeedMore);
        assert_eq!(d.decode(b"a\n"), Decoded::Frame(2));
    }

    // ---- len ----

    #[test]
    fn len_u8_frames_include_the_prefix() {
        let mut d = len(LenPrefix::U8, 100);
        let (msgs, end, left) = drain(&mut d, &[2, b'h', b'i', 0, 1]);
        assert_eq!(msgs, vec![vec![2, b'h', b'i'], vec![0]]);
        assert_eq!(end, Decoded::NeedMore);
        assert_eq!(left, 1);
        assert_eq!(
            d.finish(&[1]),
            Err(FrameError::Truncated {
                offset: 4,
                have: 1,
                need: Some(2)
            })
        );
    }

    #[test]
    fn len_zero_length_payloads() {
        for (prefix, bytes) in [
            (LenPrefix::U8, vec![0u8]),
            (LenPrefix::U16_BE, vec![0, 0]),
            (LenPrefix::U32_LE, vec![0; 4]),
            (LenPrefix::U64_BE, vec![0; 8]),
        ] {
            let mut d = len(prefix, 8);
            let mut stream = bytes.clone();
            stream.extend_from_slice(&bytes);
            let (msgs, end, left) = drain(&mut d, &stream);
            assert_eq!(msgs, vec![bytes.clone(), bytes.clone()]);
            assert_eq!((end, left), (Decoded::NeedMore, 0));
            assert_eq!(d.offset(), stream.len() as u64);
        }
    }

    #[test]
    fn len_partial_prefix_needs_more_and_is_truncated_at_eof() {
        let mut d = len(LenPrefix::U32_BE, 100);
        for n in 0..4 {
            assert_eq!(d.decode(&[0, 0, 0, 5][..n]), Decoded::NeedMore);
        }
        assert_eq!(
            d.finish(&[0, 0]),
            Err(FrameError::Truncated {
                offset: 0,
                have: 2,
                need: None
            })
        );
        assert_eq!(d.decode(&[0, 0, 0, 5, 1, 2]), Decoded::NeedMore);
        assert_eq!(
            d.finish(&[0, 0, 0, 5, 1, 2]),
            Err(FrameError::Truncated {
                offset: 0,
                have: 6,
                need: Some(9)
            })
        );
        assert_eq!(d.decode(&[0, 0, 0, 5, 1, 2, 3, 4, 5, 9]), Decoded::Frame(9));
    }

    #[test]
    fn len_byte_orders() {
        let mut be = len(LenPrefix::U16_BE, 1000);
        let mut le = len(LenPrefix::U16_LE, 1000);
        let mut stream = vec![1, 0];
        stream.resize(2 + 256, 7);
        assert_eq!(be.decode(&stream), Decoded::Frame(258));
        // [1, 0] is 256 big-endian, 1 little-endian.
        assert_eq!(le.decode(&stream), Decoded::Frame(3));
    }

    #[test]
    fn len_max_counts_the_prefix() {
        // 4-byte prefix + 6-byte payload = 10.
        let mut msg = vec![0, 0, 0, 6];
        msg.extend_from_slice(b"abcdef");
        assert_eq!(len(LenPrefix::U32_BE, 10).decode(&msg), Decoded::Frame(10));
        assert_eq!(
            len(LenPrefix::U32_BE, 9).decode(&msg),
            Decoded::Invalid(FrameError::TooLarge {
                offset: 0,
                size: 10,
                max: 9
            })
        );
        // Rejected from the prefix alone, before the payload arrives.
        assert!(matches!(
            len(LenPrefix::U32_BE, 9).decode(&msg[..4]),
            Decoded::Invalid(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn len_huge_declared_size_does_not_overflow() {
        let mut d = len(LenPrefix::U64_BE, usize::MAX);
        assert_eq!(
            d.decode(&[0xff; 8]),
            Decoded::Invalid(FrameError::TooLarge {
                offset: 0,
                size: u64::MAX,
                max: usize::MAX as u64
            })
        );
        assert_eq!(
            d.finish(&[0xff; 9]),
            Err(FrameError::Truncated {
                offset: 0,
                have: 9,
                need: Some(u64::MAX)
            })
        );
    }

    #[test]
    fn len_too_large_reports_the_offset_of_the_message() {
        let mut d = len(LenPrefix::U8, 4);
        let stream = [1, b'a', 2, b'b', b'c', 9, 0, 0];
        let (msgs, end, left) = drain(&mut d, &stream);
        assert_eq!(msgs.len(), 2);
        assert_eq!(
            end,
            Decoded::Invalid(FrameError::TooLarge {
                offset: 5,
                size: 10,
                max: 4
            })
        );
        assert_eq!(left, 3);
    }

    #[test]
    fn len_max_below_prefix_rejects_everything() {
        let mut d = len(LenPrefix::U32_BE, 2);
        assert_eq!(d.decode(&[0, 0]), Decoded::NeedMore);
        assert!(matches!(d.decode(&[0; 4]), Decoded::Invalid(_)));
    }

    #[test]
    #[should_panic(expected = "width must be 1, 2, 4 or 8")]
    fn len_invalid_width_panics_at_construction() {
        let _ = Decoder::new(
            Framing::Len(LenPrefix {
                width: 3,
                big_endian: true,
            }),
            10,
        );
    }

    // ---- raw ----

    #[test]
    fn raw_takes_what_is_there_up_to_max() {
        let mut d = Decoder::new(Framing::Raw, 4);
        assert_eq!(d.decode(b""), Decoded::NeedMore);
        assert_eq!(d.decode(b"ab"), Decoded::Frame(2));
        assert_eq!(d.decode(b"abcd"), Decoded::Frame(4));
        assert_eq!(d.decode(b"abcdefghij"), Decoded::Frame(4));
        assert_eq!(d.offset(), 10);
        assert_eq!(d.finish(b""), Ok(()));
        assert!(d.finish(b"x").is_err());
    }

    #[test]
    fn raw_zero_max_still_makes_progress() {
        let mut d = Decoder::new(Framing::Raw, 0);
        assert_eq!(d.max_message(), 1);
        assert_eq!(d.decode(b"abc"), Decoded::Frame(1));
    }
}
