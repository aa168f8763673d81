//! The encoder, for tests, benches, examples and peer programs.

use crate::error::FrameError;
use crate::framing::Framing;

/// Appends `payload` framed as one message to `out`.
///
/// - `lines`: the payload must not contain `'\n'`; a `'\n'` is appended.
/// - `len:*`: the payload length must fit the prefix; the prefix is
///   prepended.
/// - `raw`: the payload is appended as is.
///
/// On error `out` is left unchanged. The encoder knows no maximum message
/// size; the decoder enforces it.
///
/// # Panics
/// If `framing` is `Len` with a width other than 1, 2, 4 or 8 (see
/// [`Decoder::new`](crate::Decoder::new)).
pub fn encode(framing: Framing, payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    match framing {
        Framing::Lines => {
            if let Some(index) = memchr::memchr(b'\n', payload) {
                return Err(FrameError::NewlineInPayload {
                    index: index as u64,
                });
            }
            out.reserve(payload.len() + 1);
            out.extend_from_slice(payload);
            out.push(b'\n');
        }
        Framing::Len(prefix) => {
            assert!(
                prefix.is_valid(),
                "length prefix width must be 1, 2, 4 or 8, got {}",
                prefix.width
            );
            let len = payload.len() as u64;
            if len > prefix.max_payload() {
                return Err(FrameError::PayloadTooLong { len, framing });
            }
            out.reserve(usize::from(prefix.width) + payload.len());
            prefix.write(len, out);
            out.extend_from_slice(payload);
        }
        Framing::Raw => out.extend_from_slice(payload),
    }
    Ok(())
}

/// The payload of a whole `message` as returned by the decoder: without the
/// trailing `'\n'` (`lines`) or the prefix (`len:*`); `raw` messages are
/// their own payload. Returns the message unchanged if it is shorter than
/// its framing overhead (not a decoded message).
pub fn payload(framing: Framing, message: &[u8]) -> &[u8] {
    match framing {
        Framing::Lines => message.strip_suffix(b"\n").unwrap_or(message),
        Framing::Len(prefix) => message.get(usize::from(prefix.width)..).unwrap_or(message),
        Framing::Raw => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::LenPrefix;

    #[test]
    fn lines_append_a_newline_and_refuse_one_inside() {
        let mut out = b"x".to_vec();
        encode(Framing::Lines, b"ab", &mut out).expect("encodable");
        encode(Framing::Lines, b"", &mut out).expect("encodable");
        assert_eq!(out, b"xab\n\n");
        assert_eq!(
            encode(Framing::Lines, b"a\nb", &mut out),
            Err(FrameError::NewlineInPayload { index: 1 })
        );
        assert_eq!(out, b"xab\n\n", "unchanged on error");
    }

    #[test]
    fn len_prepends_the_prefix_and_refuses_overlong_payloads() {
        let mut out = Vec::new();
        encode(Framing::Len(LenPrefix::U16_LE), b"abc", &mut out).expect("encodable");
        assert_eq!(out, [3, 0, b'a', b'b', b'c']);
        out.clear();
        encode(Framing::Len(LenPrefix::U8), &[0; 255], &mut out).expect("encodable");
        assert_eq!(out.len(), 256);
        assert_eq!(
            encode(Framing::Len(LenPrefix::U8), &[0; 256], &mut out),
            Err(FrameError::PayloadTooLong {
                len: 256,
                framing: Framing::Len(LenPrefix::U8)
            })
        );
        assert_eq!(out.len(), 256, "unchanged on error");
    }

    #[test]
    fn payload_strips_the_framing() {
        assert_eq!(payload(Framing::Lines, b"ab\n"), b"ab");
        assert_eq!(payload(Framing::Len(LenPrefix::U16_BE), &[0, 1, 9]), [9]);
        assert_eq!(payload(Framing::Raw, b"ab\n"), b"ab\n");
        assert_eq!(payload(Framing::Len(LenPrefix::U32_BE), &[0]), [0]);
    }
}
