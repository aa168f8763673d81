//! The client's one error type.

use std::sync::Arc;

use spillway_codec::proto::ProtoError;

/// What went wrong talking to a relay.
///
/// Cheap to clone (an I/O error is shared), so one failure can be handed to
/// every caller waiting on the connection.
#[derive(thiserror::Error, Debug, Clone)]
#[non_exhaustive]
pub enum ClientError {
    /// Connecting, reading or writing failed (refused, reset, timed out).
    /// The connection is gone; connecting again may work.
    #[error("connection failed: {0}")]
    Io(#[source] Arc<std::io::Error>),
    /// The relay refused the handshake or sent `ERR <code> <text>`, then
    /// closed. `code` is one of docs/protocol.md's table (400 malformed,
    /// 401 version, 403 role or group, 408 handshake timeout, 409 not held
    /// or a producer name in use, 413 too large, 503 draining, 507 full).
    #[error("relay error {code}: {text}")]
    Protocol {
        /// The code from the spec's table.
        code: u16,
        /// The relay's text, for a human.
        text: String,
    },
    /// The relay sent bytes this client cannot decode, or a frame it must
    /// not send (a bug on one side); the client closed the connection.
    #[error("invalid data from the relay: {0}")]
    Decode(#[source] ProtoError),
    /// The relay closed the connection without an `ERR` (a restart, a
    /// drain that timed out, a reset). What was not acknowledged or not
    /// confirmed is the relay's to redeliver, or the producer's to resend.
    #[error("the relay closed the connection")]
    Disconnected,
    /// This handle's connection is closed (the consumer or producer was
    /// dropped or closed, or its connection failed earlier): nothing was
    /// sent.
    #[error("the connection is closed")]
    Closed,
    /// A message larger than the relay's `max_message` (told in its
    /// handshake): not sent.
    #[error("a message of {size} bytes is over the relay's max_message of {max}")]
    TooLarge {
        /// The body's size.
        size: usize,
        /// The relay's `max_message`.
        max: u64,
    },
    /// A bad option, found before anything was sent (a group or producer
    /// name the protocol cannot carry, a window out of range).
    #[error("invalid option: {0}")]
    InvalidOption(String),
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(Arc::new(e))
    }
}

impl ClientError {
    /// The relay's error code, for [`ClientError::Protocol`].
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Protocol { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether connecting again (the same client, the same options) may
    /// succeed: true for a lost connection and for the relay's transient
    /// refusals (408, 409 for a producer name still held by a connection
    /// that is going away, 503, 507); false when the client or its options
    /// are wrong.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Io(_) | ClientError::Disconnected => true,
            ClientError::Protocol { code, .. } => {
                ProtoError::new(*code, "").is_retryable() || *code == ProtoError::NOT_HELD
            }
            ClientError::Decode(_)
            | ClientError::Closed
            | ClientError::TooLarge { .. }
            | ClientError::InvalidOption(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_errors_are_the_transient_ones() {
        let p = |code| ClientError::Protocol {
            code,
            text: String::new(),
        };
        for e in [
            ClientError::Disconnected,
            std::io::Error::from(std::io::ErrorKind::ConnectionReset).into(),
            p(408),
            p(409),
            p(503),
            p(507),
        ] {
            assert!(e.is_retryable(), "{e}");
        }
        for e in [
            p(400),
            p(401),
            p(403),
            p(413),
            ClientError::Closed,
            ClientError::Decode(ProtoError::malformed("x")),
        ] {
            assert!(!e.is_retryable(), "{e}");
        }
        assert_eq!(p(507).code(), Some(507));
        assert_eq!(ClientError::Closed.code(), None);
        assert_eq!(p(409).to_string(), "relay error 409: ");
    }
}
