//! The text encoding: one header line per frame, ended by `\n`; MSG and PUB
//! follow it with exactly `<len>` body bytes and a `\n`.
//!
//! Lines are at most [`MAX_LINE`] bytes, `\n` included, except ACKS lines
//! ([`MAX_ACKS_LINE`]). Fields are separated by single spaces; numbers are
//! plain decimal (see [`decimal`]).

use bytes::{Buf, BufMut, BytesMut};

use super::error::{err_text, shown, ProtoError};
use super::frame::Frame;
use super::{decimal, MAX_ACKS_LINE, MAX_ACK_RANGES, MAX_LINE, MAX_TERM_REASON};

/// A parsed header line.
enum Header {
    /// A frame without a body: the line is all of it.
    Whole(Frame),
    /// MSG or PUB: `len` body bytes and a `\n` follow the line.
    Body { head: BodyHead, len: u64 },
}

/// The fields of a body frame's header.
#[derive(Clone, Copy)]
enum BodyHead {
    Msg { seq: u64, attempt: u32 },
    Pub { pseq: Option<u64> },
}

/// Takes one frame off the front of `buf`; see
/// [`FrameDecoder::decode`](super::FrameDecoder::decode). `scanned` is how
/// many leading bytes of `buf` are known to hold no `\n` (or, while a body
/// is awaited, where the header's `\n` is), kept across calls so that a
/// line arriving byte by byte is searched once.
pub(super) fn decode(
    buf: &mut BytesMut,
    max_frame: usize,
    scanned: &mut usize,
) -> Result<Option<Frame>, ProtoError> {
    // Known from the line's first 5 bytes, which are in whenever the limit
    // matters (at least MAX_LINE bytes): the same whatever the reads.
    let max_line = if buf.starts_with(b"ACKS ") {
        MAX_ACKS_LINE
    } else {
        MAX_LINE
    };
    let Some(line_len) = line_end(buf, scanned, max_line)? else {
        return Ok(None);
    };
    // The line without its '\n'.
    let header = parse_header(&buf[..line_len - 1])?;
    match header {
        Header::Whole(frame) => {
            frame.validate()?;
            buf.advance(line_len);
            *scanned = 0;
            Ok(Some(frame))
        }
        Header::Body { head, len } => {
            // Header line + body + '\n', in u128 so no len overflows it.
            let size = line_len as u128 + u128::from(len) + 1;
            if size > max_frame as u128 {
                let size = u64::try_from(size).unwrap_or(u64::MAX);
                return Err(ProtoError::too_large(size, max_frame as u64));
            }
            // Both fit a usize now: they are at most max_frame.
            let (size, len) = (size as usize, len as usize);
            if buf.len() < size {
                // Where the header's '\n' is, so the next call finds it at
                // once.
                *scanned = line_len - 1;
                return Ok(None);
            }
            if buf[size - 1] != b'\n' {
                return Err(ProtoError::malformed(format!(
                    "missing newline after a body of {len} bytes"
                )));
            }
            buf.advance(line_len);
            let body = buf.split_to(len).freeze();
            buf.advance(1);
            *scanned = 0;
            let frame = match head {
                BodyHead::Msg { seq, attempt } => Frame::Msg { seq, attempt, body },
                BodyHead::Pub { pseq } => Frame::Pub { pseq, body },
            };
            Ok(Some(frame))
        }
    }
}

/// The length of the first line of `buf`, `\n` included; `None` if it is
/// not complete; a 400 if no `\n` is within the first `max_line` bytes.
/// `scanned` is as for [`decode`]; a `buf` shorter than it (the caller broke
/// the contract) is searched again from its start.
pub(super) fn line_end(
    buf: &[u8],
    scanned: &mut usize,
    max_line: usize,
) -> Result<Option<usize>, ProtoError> {
    let window = buf.len().min(max_line);
    let start = if *scanned <= window { *scanned } else { 0 };
    match memchr::memchr(b'\n', &buf[start..window]) {
        Some(i) => Ok(Some(start + i + 1)),
        None if buf.len() >= max_line => Err(ProtoError::malformed(format!(
            "no newline within {max_line} bytes (a{} line is at most {max_line} bytes)",
            if max_line == MAX_ACKS_LINE {
                "n ACKS"
            } else {
                ""
            }
        ))),
        None => {
            *scanned = window;
            Ok(None)
        }
    }
}

/// A number field of `verb`, from `min` to `max`.
fn number(raw: &[u8], field: &str, verb: &str, min: u64, max: u64) -> Result<u64, ProtoError> {
    match decimal(raw) {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ProtoError::malformed(format!(
            "bad {field} '{}' in {verb} (expected a decimal number from {min} to {max})",
            shown(raw)
        ))),
    }
}

fn seq(raw: &[u8], verb: &str) -> Result<u64, ProtoError> {
    number(raw, "seq", verb, 0, u64::MAX)
}

/// Exactly `N` non-empty space-separated fields after the verb, or a 400
/// quoting the line's form.
fn fields<'a, const N: usize>(
    rest: Option<&'a [u8]>,
    form: &str,
) -> Result<[&'a [u8]; N], ProtoError> {
    let bad = || ProtoError::malformed(format!("malformed line: expected '{form}'"));
    let rest = rest.ok_or_else(bad)?;
    let mut out = [&rest[..0]; N];
    let mut parts = rest.split(|&b| b == b' ');
    for slot in &mut out {
        match parts.next() {
            Some(p) if !p.is_empty() => *slot = p,
            _ => return Err(bad()),
        }
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(out)
}

/// Splits `rest` at its first space: the first field (non-empty) and what
/// follows (possibly empty; empty too if there is no space).
fn first_and_rest<'a>(
    rest: Option<&'a [u8]>,
    form: &str,
) -> Result<(&'a [u8], &'a [u8]), ProtoError> {
    let bad = || ProtoError::malformed(format!("malformed line: expected '{form}'"));
    let rest = rest.ok_or_else(bad)?;
    let (first, tail) = match memchr::memchr(b' ', rest) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &rest[rest.len()..]),
    };
    if first.is_empty() {
        return Err(bad());
    }
    Ok((first, tail))
}

fn parse_header(line: &[u8]) -> Result<Header, ProtoError> {
    let (verb, rest) = match memchr::memchr(b' ', line) {
        Some(i) => (&line[..i], Some(&line[i + 1..])),
        None => (line, None),
    };
    let frame = match verb {
        b"MSG" => {
            let [s, a, l] = fields(rest, "MSG <seq> <attempt> <len>")?;
            let head = BodyHead::Msg {
                seq: seq(s, "MSG")?,
                attempt: number(a, "attempt", "MSG", 1, u32::MAX.into())? as u32,
            };
            let len = number(l, "len", "MSG", 0, u64::MAX)?;
            return Ok(Header::Body { head, len });
        }
        b"PUB" => {
            let rest = rest.unwrap_or_default();
            let (pseq, l) = match memchr::memchr(b' ', rest) {
                None => (None, rest),
                Some(_) => {
                    let [p, l] = fields(Some(rest), "PUB [<pseq>] <len>")?;
                    (Some(number(p, "pseq", "PUB", 1, u64::MAX)?), l)
                }
            };
            if l.is_empty() {
                return Err(ProtoError::malformed(
                    "malformed line: expected 'PUB [<pseq>] <len>'",
                ));
            }
            let len = number(l, "len", "PUB", 0, u64::MAX)?;
            return Ok(Header::Body {
                head: BodyHead::Pub { pseq },
                len,
            });
        }
        b"ACK" => {
            let [s] = fields(rest, "ACK <seq>")?;
            Frame::Ack {
                seq: seq(s, "ACK")?,
            }
        }
        b"ACKS" => {
            let [list] = fields(rest, "ACKS <a>-<b>[,<c>-<d>...]")?;
            let mut ranges = Vec::new();
            for range in list.split(|&b| b == b',') {
                // Checked here, not only by validate, so a line of short
                // ranges cannot make a vector of ten thousand.
                if ranges.len() == MAX_ACK_RANGES {
                    return Err(ProtoError::malformed(format!(
                        "ACKS of more than {MAX_ACK_RANGES} ranges"
                    )));
                }
                let Some(dash) = memchr::memchr(b'-', range) else {
                    return Err(bad_range(range));
                };
                let (a, b) = (&range[..dash], &range[dash + 1..]);
                match (decimal(a), decimal(b)) {
                    (Some(a), Some(b)) => ranges.push((a, b)),
                    _ => return Err(bad_range(range)),
                }
            }
            Frame::Acks { ranges }
        }
        b"NAK" => {
            let [s, d] = fields(rest, "NAK <seq> <delay_ms>")?;
            Frame::Nak {
                seq: seq(s, "NAK")?,
                delay_ms: number(d, "delay_ms", "NAK", 0, u64::MAX)?,
            }
        }
        b"TERM" => {
            let (s, reason) = first_and_rest(rest, "TERM <seq> [reason]")?;
            let seq = seq(s, "TERM")?;
            Frame::Term {
                seq,
                reason: bytes::Bytes::copy_from_slice(reason),
            }
        }
        b"PROG" => {
            let [s] = fields(rest, "PROG <seq>")?;
            Frame::Prog {
                seq: seq(s, "PROG")?,
            }
        }
        b"WIN" => {
            let [m, b] = fields(rest, "WIN <msgs> <bytes>")?;
            Frame::Win {
                msgs: number(m, "msgs", "WIN", 1, super::MAX_WINDOW.into())? as u32,
                bytes: number(b, "bytes", "WIN", 1, u64::MAX)?,
            }
        }
        b"BYE" => match rest {
            None => Frame::Bye,
            Some(_) => return Err(ProtoError::malformed("malformed line: expected 'BYE'")),
        },
        b"ERR" => {
            let (c, text) = first_and_rest(rest, "ERR <code> <text>")?;
            let code = number(c, "code", "ERR", 0, u16::MAX.into())? as u16;
            let text = std::str::from_utf8(text)
                .map_err(|_| ProtoError::malformed("ERR text is not UTF-8"))?;
            Frame::Err {
                code,
                text: text.to_owned(),
            }
        }
        b"CONF" => {
            let [n] = fields(rest, "CONF <n>")?;
            Frame::Conf {
                n: number(n, "n", "CONF", 0, u64::MAX)?,
            }
        }
        b"DUP" => {
            let [p] = fields(rest, "DUP <pseq>")?;
            Frame::Dup {
                pseq: number(p, "pseq", "DUP", 1, u64::MAX)?,
            }
        }
        b"" => return Err(ProtoError::malformed("malformed line: no frame verb")),
        other => {
            return Err(ProtoError::malformed(format!(
                "unknown frame '{}'",
                shown(other)
            )))
        }
    };
    Ok(Header::Whole(frame))
}

/// A line that is a whole frame (not MSG or PUB): its frame, validated;
/// `None` for a body frame's header. For the handshake's `ERR` reply line.
pub(super) fn whole_frame(line: &[u8]) -> Result<Option<Frame>, ProtoError> {
    match parse_header(line)? {
        Header::Whole(frame) => {
            frame.validate()?;
            Ok(Some(frame))
        }
        Header::Body { .. } => Ok(None),
    }
}

fn bad_range(range: &[u8]) -> ProtoError {
    ProtoError::malformed(format!(
        "bad ACKS range '{}' (expected <a>-<b> of decimal numbers)",
        shown(range)
    ))
}

/// Appends `n` in decimal.
pub(super) fn put_decimal(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
}

/// `MSG <seq> <attempt> <len>\n`.
pub(super) fn msg_header(seq: u64, attempt: u32, body_len: usize, out: &mut BytesMut) {
    out.reserve(4 + 20 + 1 + 10 + 1 + 20 + 1);
    out.put_slice(b"MSG ");
    put_decimal(out, seq);
    out.put_u8(b' ');
    put_decimal(out, attempt.into());
    out.put_u8(b' ');
    put_decimal(out, body_len as u64);
    out.put_u8(b'\n');
}

/// `PUB <len>\n` or `PUB <pseq> <len>\n` (`Some(0)` is written as `None`).
pub(super) fn pub_header(pseq: Option<u64>, body_len: usize, out: &mut BytesMut) {
    out.reserve(4 + 20 + 1 + 20 + 1);
    out.put_slice(b"PUB ");
    if let Some(pseq) = pseq.filter(|&p| p != 0) {
        put_decimal(out, pseq);
        out.put_u8(b' ');
    }
    put_decimal(out, body_len as u64);
    out.put_u8(b'\n');
}

/// Appends `frame`; see [`encode`](super::encode).
pub(super) fn encode(frame: &Frame, out: &mut BytesMut) {
    let verb_and = |out: &mut BytesMut, verb: &[u8], n: u64| {
        out.put_slice(verb);
        out.put_u8(b' ');
        put_decimal(out, n);
    };
    match frame {
        Frame::Msg { seq, attempt, body } => {
            msg_header(*seq, *attempt, body.len(), out);
            out.put_slice(body);
            out.put_u8(b'\n');
            return;
        }
        Frame::Pub { pseq, body } => {
            pub_header(*pseq, body.len(), out);
            out.put_slice(body);
            out.put_u8(b'\n');
            return;
        }
        Frame::Ack { seq } => verb_and(out, b"ACK", *seq),
        Frame::Acks { ranges } => {
            out.put_slice(b"ACKS ");
            for (i, (a, b)) in ranges.iter().enumerate() {
                if i > 0 {
                    out.put_u8(b',');
                }
                put_decimal(out, *a);
                out.put_u8(b'-');
                put_decimal(out, *b);
            }
        }
        Frame::Nak { seq, delay_ms } => {
            verb_and(out, b"NAK", *seq);
            out.put_u8(b' ');
            put_decimal(out, *delay_ms);
        }
        Frame::Term { seq, reason } => {
            verb_and(out, b"TERM", *seq);
            let reason = &reason[..reason.len().min(MAX_TERM_REASON)];
            if !reason.is_empty() {
                out.put_u8(b' ');
                // A newline would end the line early and inject a frame.
                out.extend(reason.iter().map(|&b| if b == b'\n' { b' ' } else { b }));
            }
        }
        Frame::Prog { seq } => verb_and(out, b"PROG", *seq),
        Frame::Win { msgs, bytes } => {
            verb_and(out, b"WIN", (*msgs).into());
            out.put_u8(b' ');
            put_decimal(out, *bytes);
        }
        Frame::Bye => out.put_slice(b"BYE"),
        Frame::Err { code, text } => {
            verb_and(out, b"ERR", (*code).into());
            let text = err_text(text);
            if !text.is_empty() {
                out.put_u8(b' ');
                out.put_slice(text.as_bytes());
            }
        }
        Frame::Conf { n } => verb_and(out, b"CONF", *n),
        Frame::Dup { pseq } => verb_and(out, b"DUP", *pseq),
    }
    out.put_u8(b'\n');
}
