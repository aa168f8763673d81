//! Errors of the codec.

use crate::framing::Framing;

/// Why a stream (or, for [`encode`](crate::encode), a payload) cannot be
/// framed.
///
/// Offsets are stream offsets: the number of bytes of that stream consumed
/// before the offending message, i.e. where the message starts. A decode
/// error is fatal for the stream: the caller keeps what it accepted before
/// `offset`, logs the error and closes the connection.
#[non_exhaustive]
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The message at `offset` is larger than the maximum message size.
    ///
    /// For `len:*`, `size` is the declared size of the whole message (prefix
    /// included, saturating at `u64::MAX`); it is reported as soon as the
    /// prefix is read, before any payload is buffered. For `lines`, no
    /// newline was found within `max` bytes: `size` is the number of bytes
    /// scanned without finding one (the line is longer than that).
    #[error("message at offset {offset} too large: {}, maximum is {max}", size_text(*size, *max))]
    TooLarge {
        /// Stream offset where the message starts.
        offset: u64,
        /// Declared size (`len:*`) or bytes seen without a newline (`lines`).
        size: u64,
        /// The configured maximum message size.
        max: u64,
    },
    /// The stream ended in the middle of a message (see
    /// [`Decoder::finish`](crate::Decoder::finish)).
    ///
    /// `have` is how many bytes of it arrived; `need` is the whole message's
    /// size when it is known (a `len:*` prefix was complete), `None`
    /// otherwise (a partial prefix, a line without its newline, or — for
    /// `raw` — bytes the caller never decoded).
    #[error("stream truncated at offset {offset}: have {have} bytes of a message{}",
        match need { Some(n) => format!(" of {n} bytes"), None => String::new() })]
    Truncated {
        /// Stream offset where the partial message starts.
        offset: u64,
        /// Bytes of the partial message that arrived.
        have: u64,
        /// Size of the whole message, when the prefix told it.
        need: Option<u64>,
    },
    /// [`encode`](crate::encode) for `lines` was given a payload containing
    /// `'\n'`, which would be split into two messages.
    #[error("payload contains a newline at index {index}; `lines` cannot frame it")]
    NewlineInPayload {
        /// Index of the first `'\n'` in the payload.
        index: u64,
    },
    /// [`encode`](crate::encode) was given a payload longer than the length
    /// prefix can express (e.g. more than 255 bytes for `len:u8`).
    #[error("payload of {len} bytes does not fit a {framing} prefix")]
    PayloadTooLong {
        /// Payload length.
        len: u64,
        /// The framing whose prefix is too narrow.
        framing: Framing,
    },
}

/// Declares [`FrameErrorKind`] from one list, so that its variants,
/// [`FrameErrorKind::ALL`] and [`FrameErrorKind::as_str`] cannot disagree: a
/// per-kind counter sized and indexed by them counts a new kind under its
/// own label, never under another's.
macro_rules! frame_error_kinds {
    ($($(#[$doc:meta])* $variant:ident => $label:literal,)+) => {
        /// A label for each [`FrameError`] variant, for metrics and log fields.
        #[non_exhaustive]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum FrameErrorKind {
            $($(#[$doc])* $variant,)+
        }

        /// The size of a message over the limit as the error says it: exact for
/// a length prefix; for a line, only that it has no newline within the
/// limit, so it is longer than that.
fn size_text(size: u64, max: u64) -> String {
    if size > max {
        format!("{size} bytes")
    } else {
        format!("more than {max} bytes (no newline within them)")
    }
}

impl FrameErrorKind {
            /// Every kind, in declaration order: [`FrameErrorKind::index`]
            /// is the position in it.
            pub const ALL: [FrameErrorKind; [$($label),+].len()] =
                [$(FrameErrorKind::$variant),+];

            /// A stable `snake_case` label: `too_large`, `truncated`,
            /// `newline_in_payload`, `payload_too_long`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(FrameErrorKind::$variant => $label,)+
                }
            }
        }
    };
}

frame_error_kinds! {
    /// [`FrameError::TooLarge`]
    TooLarge => "too_large",
    /// [`FrameError::Truncated`]
    Truncated => "truncated",
    /// [`FrameError::NewlineInPayload`]
    NewlineInPayload => "newline_in_payload",
    /// [`FrameError::PayloadTooLong`]
    PayloadTooLong => "payload_too_long",
}

impl FrameErrorKind {
    /// Position in [`FrameErrorKind::ALL`] (a per-kind counter's index).
    pub const fn index(self) -> usize {
        // Fieldless and declared by the list that also builds ALL, in the
        // same order (a test checks).
        self as usize
    }
}

impl std::fmt::Display for FrameErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FrameError {
    /// The variant's label, for metrics.
    pub const fn kind(&self) -> FrameErrorKind {
        match self {
            FrameError::TooLarge { .. } => FrameErrorKind::TooLarge,
            FrameError::Truncated { .. } => FrameErrorKind::Truncated,
            FrameError::NewlineInPayload { .. } => FrameErrorKind::NewlineInPayload,
            FrameError::PayloadTooLong { .. } => FrameErrorKind::PayloadTooLong,
        }
    }

    /// The stream offset of the offending message, for decode errors.
    pub const fn offset(&self) -> Option<u64> {
        match self {
            FrameError::TooLarge { offset, .. } | FrameError::Truncated { offset, .. } => {
                Some(*offset)
            }
            FrameError::NewlineInPayload { .. } | FrameError::PayloadTooLong { .. } => None,
        }
    }
}

/// A framing name that [`Framing::from_str`](std::str::FromStr) does not know.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("unknown framing {input:?}: expected one of {}", Framing::NAMES.join(", "))]
pub struct ParseFramingError {
    /// The rejected input.
    pub input: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_have_stable_labels() {
        let cases = [
            (
                FrameError::TooLarge {
                    offset: 1,
                    size: 2,
                    max: 1,
                },
                "too_large",
            ),
            (
                FrameError::Truncated {
                    offset: 0,
                    have: 1,
                    need: None,
                },
                "truncated",
            ),
            (
                FrameError::NewlineInPayload { index: 0 },
                "newline_in_payload",
            ),
            (
                FrameError::PayloadTooLong {
                    len: 256,
                    framing: Framing::Raw,
                },
                "payload_too_long",
            ),
        ];
        for (err, label) in cases {
            assert_eq!(err.kind().as_str(), label);
            assert_eq!(err.kind().to_string(), label);
        }
    }

    #[test]
    fn all_lists_every_kind_at_its_index() {
        for (i, k) in FrameErrorKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i, "{k}");
        }
        let labels: std::collections::HashSet<_> =
            FrameErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            labels.len(),
            FrameErrorKind::ALL.len(),
            "labels are distinct"
        );
        // Every variant FrameError::kind can return is in ALL.
        for err in [
            FrameError::TooLarge {
                offset: 0,
                size: 2,
                max: 1,
            },
            FrameError::Truncated {
                offset: 0,
                have: 1,
                need: None,
            },
            FrameError::NewlineInPayload { index: 0 },
            FrameError::PayloadTooLong {
                len: 256,
                framing: Framing::Raw,
            },
        ] {
            assert!(FrameErrorKind::ALL.contains(&err.kind()), "{err}");
        }
    }

    #[test]
    fn messages_name_the_offset() {
        let err = FrameError::Truncated {
            offset: 42,
            have: 3,
            need: Some(10),
        };
        assert_eq!(
            err.to_string(),
            "stream truncated at offset 42: have 3 bytes of a message of 10 bytes"
        );
        let err = FrameError::TooLarge {
            offset: 7,
            size: 99,
            max: 50,
        };
        assert_eq!(
            err.to_string(),
            "message at offset 7 too large: 99 bytes, maximum is 50"
        );
        assert_eq!(err.offset(), Some(7));
        // A line: no newline within the limit, so its size is not known.
        let line = FrameError::TooLarge {
            offset: 0,
            size: 50,
            max: 50,
        };
        assert_eq!(
            line.to_string(),
            "message at offset 0 too large: more than 50 bytes (no newline within them), maximum is 50"
        );
    }
}
