//! The frames of the protocol, the same in both encodings, and the rules on
//! their fields that both encodings enforce.

use bytes::Bytes;

use super::error::{ProtoError, MAX_ERR_TEXT};
use super::{Role, MAX_ACK_RANGES, MAX_TERM_REASON, MAX_WINDOW};

/// Frame type numbers, as the binary encoding writes them (docs/protocol.md).
pub(crate) mod kind {
    pub const MSG: u8 = 1;
    pub const ACK: u8 = 2;
    pub const ACKS: u8 = 3;
    pub const NAK: u8 = 4;
    pub const TERM: u8 = 5;
    pub const PROG: u8 = 6;
    pub const WIN: u8 = 7;
    pub const BYE: u8 = 8;
    pub const ERR: u8 = 9;
    pub const PUB: u8 = 16;
    pub const CONF: u8 = 17;
    pub const DUP: u8 = 18;
}

/// One frame of the protocol after the handshake.
///
/// The same frames travel in both encodings, with the same fields; the
/// rules on fields ([`Frame::validate`]) are the same in both. A decoded
/// frame always passes them. Who may send which frame is
/// [`Frame::sender`]; the decoder accepts every frame in both directions,
/// and refusing one sent the wrong way is the caller's job (400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Type 1, relay → consumer: a message. `seq` is its position in the
    /// spool, `attempt` (from 1) counts its deliveries to this group.
    Msg {
        /// Position in the spool, stable across deliveries.
        seq: u64,
        /// Delivery count to this group, from 1.
        attempt: u32,
        /// The message.
        body: Bytes,
    },
    /// Type 2, consumer → relay: acknowledges `seq` and every message
    /// delivered on this connection before it.
    Ack {
        /// The last message acknowledged, in delivery order.
        seq: u64,
    },
    /// Type 3, consumer → relay: acknowledges the seqs of these inclusive
    /// ranges (1 to [`MAX_ACK_RANGES`] of them, each `a <= b`, in any order,
    /// overlaps allowed).
    Acks {
        /// Inclusive `(first, last)` ranges of seq.
        ranges: Vec<(u64, u64)>,
    },
    /// Type 4, consumer → relay: give `seq` back, to be redelivered no
    /// sooner than `delay_ms` from now.
    Nak {
        /// The message given back.
        seq: u64,
        /// The least delay before its redelivery, in milliseconds.
        delay_ms: u64,
    },
    /// Type 5, consumer → relay: dead-letter `seq` now.
    Term {
        /// The message refused.
        seq: u64,
        /// Why, kept with the dead letter: at most [`MAX_TERM_REASON`]
        /// bytes, no `\n`; may be empty.
        reason: Bytes,
    },
    /// Type 6, consumer → relay: still working on `seq`; restart its ack
    /// timer.
    Prog {
        /// The message being worked on.
        seq: u64,
    },
    /// Type 7, consumer → relay: the connection's new window.
    Win {
        /// Messages delivered and unacknowledged, 1 to [`MAX_WINDOW`].
        msgs: u32,
        /// Body bytes delivered and unacknowledged, at least 1.
        bytes: u64,
    },
    /// Type 8, relay → consumer: draining; no more MSG, ack what you hold.
    Bye,
    /// Type 9, relay → client: an error; the relay closes after it.
    Err {
        /// A code of the spec's table.
        code: u16,
        /// For a human: at most [`MAX_ERR_TEXT`] bytes, no control
        /// characters; may be empty.
        text: String,
    },
    /// Type 16, producer → relay: a message to enqueue. `pseq` is the
    /// producer sequence of a named producer (from 1), `None` otherwise.
    Pub {
        /// The producer sequence (named producers only); never `Some(0)`.
        pseq: Option<u64>,
        /// The message.
        body: Bytes,
    },
    /// Type 17, relay → producer: the first `n` messages of this connection
    /// are durable.
    Conf {
        /// How many messages of this connection are durable (cumulative).
        n: u64,
    },
    /// Type 18, relay → producer: the message with this producer sequence
    /// was already enqueued; not enqueued again (it counts in CONF).
    Dup {
        /// Its producer sequence, from 1.
        pseq: u64,
    },
}

impl Frame {
    /// The frame's type number, as the binary encoding writes it.
    pub fn type_code(&self) -> u8 {
        match self {
            Frame::Msg { .. } => kind::MSG,
            Frame::Ack { .. } => kind::ACK,
            Frame::Acks { .. } => kind::ACKS,
            Frame::Nak { .. } => kind::NAK,
            Frame::Term { .. } => kind::TERM,
            Frame::Prog { .. } => kind::PROG,
            Frame::Win { .. } => kind::WIN,
            Frame::Bye => kind::BYE,
            Frame::Err { .. } => kind::ERR,
            Frame::Pub { .. } => kind::PUB,
            Frame::Conf { .. } => kind::CONF,
            Frame::Dup { .. } => kind::DUP,
        }
    }

    /// The frame's text verb (`"MSG"`, `"ACK"`, ...), also a stable label for
    /// logs and metrics.
    pub fn verb(&self) -> &'static str {
        verb_of(self.type_code()).unwrap_or("?")
    }

    /// Who may send it: `Some(role)` for a client frame (ACK, ACKS, NAK,
    /// TERM, PROG and WIN from consumers; PUB from producers), `None` for the
    /// relay's (MSG, BYE, ERR, CONF, DUP).
    pub fn sender(&self) -> Option<Role> {
        match self {
            Frame::Ack { .. }
            | Frame::Acks { .. }
            | Frame::Nak { .. }
            | Frame::Term { .. }
            | Frame::Prog { .. }
            | Frame::Win { .. } => Some(Role::Consumer),
            Frame::Pub { .. } => Some(Role::Producer),
            Frame::Msg { .. }
            | Frame::Bye
            | Frame::Err { .. }
            | Frame::Conf { .. }
            | Frame::Dup { .. } => None,
        }
    }

    /// The `ERR` frame that carries `err` (its text made to fit, see
    /// [`err_text`](super::err_text)).
    pub fn error(err: &ProtoError) -> Frame {
        Frame::Err {
            code: err.code,
            text: super::err_text(&err.message),
        }
    }

    /// Checks the rules on fields that both encodings enforce, as the
    /// decoder does (an `Err` is a 400 naming the field):
    /// - MSG: `attempt >= 1`;
    /// - ACKS: 1 to [`MAX_ACK_RANGES`] ranges, each `a <= b`;
    /// - TERM: reason at most [`MAX_TERM_REASON`] bytes, no `\n`;
    /// - WIN: `msgs` 1 to [`MAX_WINDOW`], `bytes >= 1`;
    /// - ERR: text at most [`MAX_ERR_TEXT`] bytes, no control character;
    /// - PUB: `pseq` is not `Some(0)`; DUP: `pseq >= 1`.
    ///
    /// Body sizes are the decoder's limit, not a rule of the frame. A valid
    /// frame's text line always fits its limit
    /// ([`MAX_LINE`](super::MAX_LINE), or
    /// [`MAX_ACKS_LINE`](super::MAX_ACKS_LINE) for ACKS).
    pub fn validate(&self) -> Result<(), ProtoError> {
        match self {
            Frame::Msg { attempt: 0, .. } => Err(ProtoError::malformed(format!(
                "bad attempt 0 in MSG (expected 1 to {})",
                u32::MAX
            ))),
            Frame::Acks { ranges } => {
                if ranges.is_empty() {
                    return Err(ProtoError::malformed("ACKS without a range"));
                }
                if ranges.len() > MAX_ACK_RANGES {
                    return Err(ProtoError::malformed(format!(
                        "ACKS of {} ranges (at most {MAX_ACK_RANGES})",
                        ranges.len()
                    )));
                }
                match ranges.iter().find(|(a, b)| a > b) {
                    Some((a, b)) => Err(ProtoError::malformed(format!(
                        "bad ACKS range {a}-{b} (its start is after its end)"
                    ))),
                    None => Ok(()),
                }
            }
            Frame::Term { reason, .. } => {
                if reason.len() > MAX_TERM_REASON {
                    Err(ProtoError::malformed(format!(
                        "TERM reason of {} bytes (at most {MAX_TERM_REASON})",
                        reason.len()
                    )))
                } else if reason.contains(&b'\n') {
                    Err(ProtoError::malformed("TERM reason holds a newline"))
                } else {
                    Ok(())
                }
            }
            Frame::Win { msgs, bytes } => {
                if *msgs == 0 || *msgs > MAX_WINDOW {
                    Err(ProtoError::malformed(format!(
                        "bad msgs {msgs} in WIN (expected 1 to {MAX_WINDOW})"
                    )))
                } else if *bytes == 0 {
                    Err(ProtoError::malformed(format!(
                        "bad bytes 0 in WIN (expected 1 to {})",
                        u64::MAX
                    )))
                } else {
                    Ok(())
                }
            }
            Frame::Err { text, .. } => {
                if text.len() > MAX_ERR_TEXT {
                    Err(ProtoError::malformed(format!(
                        "ERR text of {} bytes (at most {MAX_ERR_TEXT})",
                        text.len()
                    )))
                } else if text.chars().any(char::is_control) {
                    Err(ProtoError::malformed("ERR text holds a control character"))
                } else {
                    Ok(())
                }
            }
            Frame::Pub { pseq: Some(0), .. } => Err(ProtoError::malformed(format!(
                "bad pseq 0 in PUB (expected 1 to {}; named producers number from 1)",
                u64::MAX
            ))),
            Frame::Dup { pseq: 0 } => Err(ProtoError::malformed(format!(
                "bad pseq 0 in DUP (expected 1 to {})",
                u64::MAX
            ))),
            _ => Ok(()),
        }
    }
}

/// The text verb of a type number, `None` for an unknown type.
pub(crate) fn verb_of(type_code: u8) -> Option<&'static str> {
    Some(match type_code {
        kind::MSG => "MSG",
        kind::ACK => "ACK",
        kind::ACKS => "ACKS",
        kind::NAK => "NAK",
        kind::TERM => "TERM",
        kind::PROG => "PROG",
        kind::WIN => "WIN",
        kind::BYE => "BYE",
        kind::ERR => "ERR",
        kind::PUB => "PUB",
        kind::CONF => "CONF",
        kind::DUP => "DUP",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Frame> {
        vec![
            Frame::Msg {
                seq: 1,
                attempt: 1,
                body: Bytes::new(),
            },
            Frame::Ack { seq: 1 },
            Frame::Acks {
                ranges: vec![(1, 1)],
            },
            Frame::Nak {
                seq: 1,
                delay_ms: 0,
            },
            Frame::Term {
                seq: 1,
                reason: Bytes::new(),
            },
            Frame::Prog { seq: 1 },
            Frame::Win { msgs: 1, bytes: 1 },
            Frame::Bye,
            Frame::Err {
                code: 400,
                text: String::new(),
            },
            Frame::Pub {
                pseq: None,
                body: Bytes::new(),
            },
            Frame::Conf { n: 0 },
            Frame::Dup { pseq: 1 },
        ]
    }

    #[test]
    fn type_numbers_and_verbs_are_the_specs() {
        let expected = [
            (1, "MSG", None),
            (2, "ACK", Some(Role::Consumer)),
            (3, "ACKS", Some(Role::Consumer)),
            (4, "NAK", Some(Role::Consumer)),
            (5, "TERM", Some(Role::Consumer)),
            (6, "PROG", Some(Role::Consumer)),
            (7, "WIN", Some(Role::Consumer)),
            (8, "BYE", None),
            (9, "ERR", None),
            (16, "PUB", Some(Role::Producer)),
            (17, "CONF", None),
            (18, "DUP", None),
        ];
        for (frame, (code, verb, sender)) in all().iter().zip(expected) {
            assert_eq!(frame.type_code(), code, "{frame:?}");
            assert_eq!(frame.verb(), verb);
            assert_eq!(frame.sender(), sender, "{verb}");
            assert_eq!(verb_of(code), Some(verb));
            assert_eq!(frame.validate(), Ok(()), "{verb}");
        }
        assert_eq!(verb_of(0), None);
        assert_eq!(verb_of(10), None);
    }

    #[test]
    fn validate_names_the_field() {
        let cases = [
            (
                Frame::Msg {
                    seq: 1,
                    attempt: 0,
                    body: Bytes::new(),
                },
                "attempt",
            ),
            (Frame::Acks { ranges: vec![] }, "without a range"),
            (
                Frame::Acks {
                    ranges: vec![(0, 0); MAX_ACK_RANGES + 1],
                },
                "1025 ranges",
            ),
            (
                Frame::Acks {
                    ranges: vec![(1, 2), (5, 3)],
                },
                "range 5-3",
            ),
            (
                Frame::Term {
                    seq: 1,
                    reason: Bytes::from(vec![b'x'; MAX_TERM_REASON + 1]),
                },
                "TERM reason of 201 bytes",
            ),
            (
                Frame::Term {
                    seq: 1,
                    reason: Bytes::from_static(b"a\nb"),
                },
                "newline",
            ),
            (Frame::Win { msgs: 0, bytes: 1 }, "msgs 0"),
            (
                Frame::Win {
                    msgs: MAX_WINDOW + 1,
                    bytes: 1,
                },
                "msgs 65537",
            ),
            (Frame::Win { msgs: 1, bytes: 0 }, "bytes 0"),
            (
                Frame::Err {
                    code: 400,
                    text: "x".repeat(MAX_ERR_TEXT + 1),
                },
                "ERR text of 201 bytes",
            ),
            (
                Frame::Err {
                    code: 400,
                    text: "a\u{1b}[2J".into(),
                },
                "control",
            ),
            (
                Frame::Pub {
                    pseq: Some(0),
                    body: Bytes::new(),
                },
                "pseq 0 in PUB",
            ),
            (Frame::Dup { pseq: 0 }, "pseq 0 in DUP"),
        ];
        for (frame, needle) in cases {
            let err = frame.validate().expect_err(needle);
            assert_eq!(err.code, 400);
            assert!(err.message.contains(needle), "{err} lacks {needle:?}");
        }
        let max = Frame::Acks {
            ranges: vec![(3, 3); MAX_ACK_RANGES],
        };
        assert_eq!(max.validate(), Ok(()));
    }
}
