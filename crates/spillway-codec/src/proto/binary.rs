//! The binary encoding: `u32` little-endian length of what follows, `u8`
//! type, the fields little-endian in the spec's order, a body (or text)
//! last, as the rest of the frame.
//!
//! ```text
//! offset  0        4      5
//!         +--------+------+-----------------------------+
//!         | len u32| type | fields ... [body: the rest] |
//!         +--------+------+-----------------------------+
//!                  |<------------- len bytes ---------->|
//! ```
//!
//! The per-frame layouts are tabled in docs/protocol.md; do not reorder
//! fields. Every frame but MSG and PUB has a fixed length or a fixed range
//! of lengths, checked as soon as the type byte is in, so no frame makes the
//! reader wait for more than its type allows.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::{err_text, ProtoError, MAX_ERR_TEXT};
use super::frame::{kind, verb_of, Frame};
use super::{MAX_ACK_RANGES, MAX_TERM_REASON};

/// Bytes before the type's fields: the length and the type.
const HEAD: usize = 5;

/// The length a frame type allows (counting the type byte and what follows
/// it, as the length field does).
enum Allowed {
    /// Exactly this.
    Exactly(usize),
    /// From `.0` to `.1`.
    Between(usize, usize),
    /// At least this: fields, then a body bounded by the decoder's
    /// `max_frame` (MSG, PUB).
    Body(usize),
}

/// 1 (type) + 8 (seq) + 4 (attempt).
const MSG_FIXED: usize = 13;
/// 1 (type) + 8 (pseq).
const PUB_FIXED: usize = 9;
/// 1 (type) + 2 (count).
const ACKS_FIXED: usize = 3;
/// Each range: two u64.
const ACKS_RANGE: usize = 16;

fn allowed(type_code: u8) -> Option<Allowed> {
    use Allowed::{Between, Body, Exactly};
    Some(match type_code {
        kind::MSG => Body(MSG_FIXED),
        kind::ACK | kind::PROG | kind::CONF | kind::DUP => Exactly(9),
        kind::ACKS => Between(
            ACKS_FIXED + ACKS_RANGE,
            ACKS_FIXED + ACKS_RANGE * MAX_ACK_RANGES,
        ),
        kind::NAK => Exactly(17),
        kind::TERM => Between(9, 9 + MAX_TERM_REASON),
        kind::WIN => Exactly(13),
        kind::BYE => Exactly(1),
        kind::ERR => Between(3, 3 + MAX_ERR_TEXT),
        kind::PUB => Body(PUB_FIXED),
        _ => return None,
    })
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut le = [0u8; 8];
    le.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(le)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut le = [0u8; 4];
    le.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(le)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Takes one frame off the front of `buf`; see
/// [`FrameDecoder::decode`](super::FrameDecoder::decode).
pub(super) fn decode(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Frame>, ProtoError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32_at(buf, 0);
    if len == 0 {
        return Err(ProtoError::malformed("frame of length 0 (no type)"));
    }
    let Some(&type_code) = buf.get(4) else {
        return Ok(None);
    };
    let (Some(verb), Some(allowed)) = (verb_of(type_code), allowed(type_code)) else {
        return Err(ProtoError::malformed(format!(
            "unknown frame type {type_code}"
        )));
    };
    // All before waiting for the rest, so a peer that declares 4 GiB is
    // refused after 5 bytes, not after we buffered them.
    let wire = 4 + u64::from(len);
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    match allowed {
        Allowed::Exactly(n) if len != n => {
            return Err(ProtoError::malformed(format!(
                "{verb} frame of length {len} (expected {n})"
            )))
        }
        Allowed::Between(min, max) if len < min || len > max => {
            return Err(ProtoError::malformed(format!(
                "{verb} frame of length {len} (expected {min} to {max})"
            )))
        }
        Allowed::Body(min) if len < min => {
            return Err(ProtoError::malformed(format!(
                "{verb} frame of length {len} (expected at least {min})"
            )))
        }
        Allowed::Body(_) if wire > max_frame as u64 => {
            return Err(ProtoError::too_large(wire, max_frame as u64))
        }
        _ => {}
    }
    if type_code == kind::ACKS && !(len - ACKS_FIXED).is_multiple_of(ACKS_RANGE) {
        return Err(ProtoError::malformed(format!(
            "ACKS frame of length {len} (expected {ACKS_FIXED} + {ACKS_RANGE} per range)"
        )));
    }
    // Every length is now at most max(max_frame, the type's bound), so this
    // cannot overflow.
    let total = 4 + len;
    if buf.len() < total {
        return Ok(None);
    }
    // The fields after the type byte.
    let f = &buf[HEAD..total];
    let mut frame = match type_code {
        // Bodies are taken below, once the fields are known to be valid.
        kind::MSG => Frame::Msg {
            seq: u64_at(f, 0),
            attempt: u32_at(f, 8),
            body: Bytes::new(),
        },
        kind::PUB => Frame::Pub {
            pseq: Some(u64_at(f, 0)).filter(|&p| p != 0),
            body: Bytes::new(),
        },
        kind::ACK => Frame::Ack { seq: u64_at(f, 0) },
        kind::ACKS => {
            let count = usize::from(u16_at(f, 0));
            let have = (len - ACKS_FIXED) / ACKS_RANGE;
            if count != have {
                return Err(ProtoError::malformed(format!(
                    "ACKS count {count} in a frame of {have} ranges"
                )));
            }
            let ranges = f[2..]
                .chunks_exact(ACKS_RANGE)
                .map(|r| (u64_at(r, 0), u64_at(r, 8)))
                .collect();
            Frame::Acks { ranges }
        }
        kind::NAK => Frame::Nak {
            seq: u64_at(f, 0),
            delay_ms: u64_at(f, 8),
        },
        kind::TERM => Frame::Term {
            seq: u64_at(f, 0),
            reason: Bytes::copy_from_slice(&f[8..]),
        },
        kind::PROG => Frame::Prog { seq: u64_at(f, 0) },
        kind::WIN => Frame::Win {
            msgs: u32_at(f, 0),
            bytes: u64_at(f, 4),
        },
        kind::BYE => Frame::Bye,
        kind::ERR => Frame::Err {
            code: u16_at(f, 0),
            text: std::str::from_utf8(&f[2..])
                .map_err(|_| ProtoError::malformed("ERR text is not UTF-8"))?
                .to_owned(),
        },
        kind::CONF => Frame::Conf { n: u64_at(f, 0) },
        kind::DUP => Frame::Dup { pseq: u64_at(f, 0) },
        // `allowed` knows no other type.
        _ => {
            return Err(ProtoError::malformed(format!(
                "unknown frame type {type_code}"
            )))
        }
    };
    // Before anything is taken off `buf`: an error leaves it as it was.
    frame.validate()?;
    match &mut frame {
        Frame::Msg { body, .. } => *body = take_body(buf, MSG_FIXED, total),
        Frame::Pub { body, .. } => *body = take_body(buf, PUB_FIXED, total),
        _ => buf.advance(total),
    }
    Ok(Some(frame))
}

/// Takes a frame whose body follows `fixed` bytes of type and fields off the
/// front of `buf`, returning the body without copying it.
fn take_body(buf: &mut BytesMut, fixed: usize, total: usize) -> Bytes {
    buf.advance(4 + fixed);
    buf.split_to(total - 4 - fixed).freeze()
}

/// Appends the length (of `after` bytes: type, fields, body) and the type.
///
/// # Panics
/// If `after` does not fit the `u32` length (a frame over 4 GiB).
fn put_head(out: &mut BytesMut, after: usize, type_code: u8) {
    out.put_u32_le(frame_len(after));
    out.put_u8(type_code);
}

/// The length field for `after` bytes.
///
/// # Panics
/// If `after` does not fit the `u32` length (a frame over 4 GiB).
fn frame_len(after: usize) -> u32 {
    u32::try_from(after).unwrap_or_else(|_| {
        panic!("a frame of {after} bytes does not fit the binary encoding's u32 length")
    })
}

/// The MSG header: length, type, seq, attempt; the body follows. Made in
/// place and appended in one step (one per message delivered: four
/// appends, each with its capacity check, cost 50 instructions).
pub(super) fn msg_header(seq: u64, attempt: u32, body_len: usize, out: &mut BytesMut) {
    let mut h = [0u8; 4 + MSG_FIXED];
    h[..4].copy_from_slice(&frame_len(MSG_FIXED.saturating_add(body_len)).to_le_bytes());
    h[4] = kind::MSG;
    h[5..13].copy_from_slice(&seq.to_le_bytes());
    h[13..].copy_from_slice(&attempt.to_le_bytes());
    out.extend_from_slice(&h);
}

/// The PUB header: length, type, pseq (0 for none); the body follows.
pub(super) fn pub_header(pseq: Option<u64>, body_len: usize, out: &mut BytesMut) {
    out.reserve(4 + PUB_FIXED);
    put_head(out, PUB_FIXED.saturating_add(body_len), kind::PUB);
    out.put_u64_le(pseq.unwrap_or(0));
}

/// Appends `frame`; see [`encode`](super::encode).
pub(super) fn encode(frame: &Frame, out: &mut BytesMut) {
    let code = frame.type_code();
    match frame {
        Frame::Msg { seq, attempt, body } => {
            msg_header(*seq, *attempt, body.len(), out);
            out.put_slice(body);
        }
        Frame::Pub { pseq, body } => {
            pub_header(*pseq, body.len(), out);
            out.put_slice(body);
        }
        Frame::Ack { seq: n }
        | Frame::Prog { seq: n }
        | Frame::Conf { n }
        | Frame::Dup { pseq: n } => {
            put_head(out, 9, code);
            out.put_u64_le(*n);
        }
        Frame::Acks { ranges } => {
            put_head(out, ACKS_FIXED + ACKS_RANGE * ranges.len(), code);
            // More than u16::MAX ranges cannot be counted: the count is
            // saturated, and the peer refuses the frame (see validate).
            out.put_u16_le(u16::try_from(ranges.len()).unwrap_or(u16::MAX));
            for (a, b) in ranges {
                out.put_u64_le(*a);
                out.put_u64_le(*b);
            }
        }
        Frame::Nak { seq, delay_ms } => {
            put_head(out, 17, code);
            out.put_u64_le(*seq);
            out.put_u64_le(*delay_ms);
        }
        Frame::Term { seq, reason } => {
            let reason = &reason[..reason.len().min(MAX_TERM_REASON)];
            put_head(out, 9 + reason.len(), code);
            out.put_u64_le(*seq);
            // The same rule as text, so a frame means the same in both.
            out.extend(reason.iter().map(|&b| if b == b'\n' { b' ' } else { b }));
        }
        Frame::Win { msgs, bytes } => {
            put_head(out, 13, code);
            out.put_u32_le(*msgs);
            out.put_u64_le(*bytes);
        }
        Frame::Bye => put_head(out, 1, code),
        Frame::Err { code: err, text } => {
            let text = err_text(text);
            put_head(out, 3 + text.len(), code);
            out.put_u16_le(*err);
            out.put_slice(text.as_bytes());
        }
    }
}
