//! The protocol's error: a code from the spec's table and a short text, as
//! sent in an `ERR` line or frame.

use std::fmt::Write as _;
use std::time::Duration;

/// The most bytes of text an `ERR` line or frame carries.
pub const MAX_ERR_TEXT: usize = 200;

/// A protocol error: why a handshake or a stream is refused.
///
/// `code` is one of the spec's table (the associated constants below);
/// `message` is for a human, and names what was wrong (the option, the
/// field, the frame). Every error closes the connection: the relay sends it
/// as `ERR <code> <message>` ([`ProtoError::to_line`] before the handshake
/// is accepted, [`Frame::Err`](super::Frame::Err) after), then closes.
///
/// Messages this crate makes never hold control characters and stay well
/// under [`MAX_ERR_TEXT`] bytes: input they quote is shown printable and
/// truncated.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("{code} {message}")]
pub struct ProtoError {
    /// The code, from the spec's table: 400, 401, 403, 408, 409, 413, 503
    /// or 507 (a peer's `ERR` line may carry any other).
    pub code: u16,
    /// What was wrong, for a human.
    pub message: String,
}

impl ProtoError {
    /// 400: a malformed line or frame, an unknown option or frame type, a
    /// field out of its range.
    pub const MALFORMED: u16 = 400;
    /// 401: the handshake asks for a version this side does not speak.
    pub const UNSUPPORTED_VERSION: u16 = 401;
    /// 403: the wrong role for this endpoint, or an undeclared group.
    pub const FORBIDDEN: u16 = 403;
    /// 408: no complete handshake within the handshake timeout.
    pub const HANDSHAKE_TIMEOUT: u16 = 408;
    /// 409: a NAK, TERM or PROG of a message this connection does not hold.
    pub const NOT_HELD: u16 = 409;
    /// 413: a frame larger than the limit.
    pub const TOO_LARGE: u16 = 413;
    /// 503: the relay is draining.
    pub const DRAINING: u16 = 503;
    /// 507: the queue is full (`when_full = drop-newest`).
    pub const FULL: u16 = 507;

    /// An error with any code and message.
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        ProtoError {
            code,
            message: message.into(),
        }
    }

    /// 400 with `message`.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(Self::MALFORMED, message)
    }

    /// 401: "unsupported version N (this relay speaks 1)". `version` is
    /// shown as the peer wrote it (printable, truncated).
    pub fn unsupported_version(version: &[u8]) -> Self {
        Self::new(
            Self::UNSUPPORTED_VERSION,
            format!(
                "unsupported version {} (this relay speaks {})",
                shown(version),
                super::VERSION
            ),
        )
    }

    /// 403 with `message` (wrong role for the endpoint, undeclared group).
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(Self::FORBIDDEN, message)
    }

    /// 408: "no handshake within 10s".
    pub fn handshake_timeout(after: Duration) -> Self {
        Self::new(
            Self::HANDSHAKE_TIMEOUT,
            format!("no handshake within {after:?}"),
        )
    }

    /// 409: "message 42 is not held by this connection".
    pub fn not_held(seq: u64) -> Self {
        Self::new(
            Self::NOT_HELD,
            format!("message {seq} is not held by this connection"),
        )
    }

    /// 413: "frame of N bytes is over the limit of M".
    pub fn too_large(size: u64, limit: u64) -> Self {
        Self::new(
            Self::TOO_LARGE,
            format!("frame of {size} bytes is over the limit of {limit}"),
        )
    }

    /// 503: "draining".
    pub fn draining() -> Self {
        Self::new(Self::DRAINING, "draining")
    }

    /// 507: "full".
    pub fn full() -> Self {
        Self::new(Self::FULL, "full")
    }

    /// Whether connecting again may succeed without changing the client:
    /// true for a handshake timeout, a draining relay and a full queue
    /// (408, 503, 507); false for everything that says the client or its
    /// configuration is wrong (400, 401, 403, 409, 413) and for codes this
    /// crate does not know.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.code,
            Self::HANDSHAKE_TIMEOUT | Self::DRAINING | Self::FULL
        )
    }

    /// The `ERR <code> <text>\n` line that refuses a handshake (the same
    /// bytes as a text-encoded [`Frame::Err`](super::Frame::Err)). The text
    /// is [`err_text`]'s: control characters replaced, at most
    /// [`MAX_ERR_TEXT`] bytes.
    pub fn to_line(&self) -> String {
        let text = err_text(&self.message);
        if text.is_empty() {
            format!("ERR {}\n", self.code)
        } else {
            format!("ERR {} {text}\n", self.code)
        }
    }
}

/// `text` made fit for an `ERR` line or frame: each control character
/// (`\n` included) replaced by `?`, then cut to at most [`MAX_ERR_TEXT`]
/// bytes on a character boundary.
pub fn err_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_ERR_TEXT));
    for c in text.chars() {
        let c = if c.is_control() { '?' } else { c };
        if out.len() + c.len_utf8() > MAX_ERR_TEXT {
            break;
        }
        out.push(c);
    }
    out
}

/// The most bytes of a peer's input an error message quotes.
const SHOWN_MAX: usize = 32;

/// A peer's bytes as an error message quotes them: printable ASCII as is,
/// every other byte (and `\`) as `\xNN`, at most [`SHOWN_MAX`] input bytes
/// and then `...`. Never a control character, whatever the input.
pub(crate) fn shown(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes.iter().take(SHOWN_MAX) {
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    if bytes.len() > SHOWN_MAX {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_code_then_message() {
        let e = ProtoError::malformed("unknown option 'windw'");
        assert_eq!(e.to_string(), "400 unknown option 'windw'");
        assert_eq!(e.to_line(), "ERR 400 unknown option 'windw'\n");
    }

    #[test]
    fn constructors_carry_the_spec_codes() {
        assert_eq!(ProtoError::malformed("x").code, 400);
        assert_eq!(ProtoError::unsupported_version(b"2").code, 401);
        assert_eq!(ProtoError::forbidden("x").code, 403);
        assert_eq!(
            ProtoError::handshake_timeout(Duration::from_secs(10)).to_string(),
            "408 no handshake within 10s"
        );
        assert_eq!(
            ProtoError::not_held(42).to_string(),
            "409 message 42 is not held by this connection"
        );
        assert_eq!(
            ProtoError::too_large(2000, 1088).to_string(),
            "413 frame of 2000 bytes is over the limit of 1088"
        );
        assert_eq!(ProtoError::draining().to_string(), "503 draining");
        assert_eq!(ProtoError::full().to_string(), "507 full");
        assert_eq!(
            ProtoError::unsupported_version(b"2").message,
            "unsupported version 2 (this relay speaks 1)"
        );
    }

    #[test]
    fn only_transient_refusals_are_retryable() {
        for code in [408, 503, 507] {
            assert!(ProtoError::new(code, "").is_retryable(), "{code}");
        }
        for code in [400, 401, 403, 409, 413, 500] {
            assert!(!ProtoError::new(code, "").is_retryable(), "{code}");
        }
    }

    #[test]
    fn shown_never_echoes_control_characters() {
        assert_eq!(shown(b"windw"), "windw");
        assert_eq!(shown(b"a\nb\x1b[2J\\\xff"), "a\\x0ab\\x1b[2J\\x5c\\xff");
        let long = [b'x'; 40];
        assert_eq!(shown(&long), format!("{}...", "x".repeat(32)));
    }

    #[test]
    fn err_lines_are_one_short_line() {
        let e = ProtoError::malformed(format!("a\nb\r{}", "é".repeat(150)));
        let line = e.to_line();
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.starts_with("ERR 400 a?b?é"));
        let text = &line["ERR 400 ".len()..line.len() - 1];
        assert!(text.len() <= MAX_ERR_TEXT && text.len() >= MAX_ERR_TEXT - 1);
        assert_eq!(ProtoError::new(408, "").to_line(), "ERR 408\n");
    }
}
