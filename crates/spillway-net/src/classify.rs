//! What a failed connect (or health probe) means for the next attempt.
//!
//! A dialer treats errors differently depending on whether waiting helps:
//!
//! - [`ErrorClass::Transient`]: the peer or the path is momentarily away
//!   (refused, reset, timed out, unreachable). Retry with exponential
//!   backoff and jitter.
//! - [`ErrorClass::Persistent`]: retrying the same thing soon gives the same
//!   answer (the name does not resolve, the peer's certificate is rejected,
//!   the address or an option is invalid). Say so once, clearly, and retry
//!   only rarely (a long, capped delay), never in a tight loop.
//! - [`ErrorClass::Resource`]: this process or host is out of descriptors,
//!   memory, buffers or ephemeral ports. Retrying immediately makes it
//!   worse; throttle.
//!
//! **TLS.** A dialer's TLS failure is a [`TlsError`](crate::tls::TlsError)
//! and [`TlsError::class`](crate::tls::TlsError::class) is its class. Found
//! inside an [`io::Error`] (tokio-rustls wraps a [`rustls::Error`] in one of
//! kind `InvalidData`), either is classified by the same table
//! ([`TlsError::from_rustls`](crate::tls::TlsError::from_rustls)): a
//! rejected certificate, a peer that rejects ours, no protocol in common, or
//! a peer that does not speak TLS is persistent; other TLS failures are
//! transient. A bare `InvalidData` with no rustls error inside is a peer
//! speaking a different protocol, which is persistent too.
//!
//! **Name resolution.** The dialer wraps a failed lookup in a
//! [`ResolveError`] (see [`resolve_error`]): "no such name" is persistent,
//! "temporary failure in name resolution" is transient.

use std::fmt;
use std::io;

/// How a connect failure should be retried. Labels for metrics come from
/// [`ErrorClass::as_str`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Refused, reset, timed out, unreachable: back off with jitter, retry.
    Transient,
    /// Name does not resolve, certificate rejected, invalid configuration:
    /// log once, retry only after a long capped delay.
    Persistent,
    /// Out of descriptors, memory, buffers or local ports: throttle.
    Resource,
}

impl ErrorClass {
    /// Every class, in declaration order (the index of a per-class counter).
    pub const ALL: [ErrorClass; 3] = [
        ErrorClass::Transient,
        ErrorClass::Persistent,
        ErrorClass::Resource,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Persistent => "persistent",
            ErrorClass::Resource => "resource",
        }
    }

    /// Position in [`ErrorClass::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether retrying soon may succeed.
    pub fn is_retryable(self) -> bool {
        self == ErrorClass::Transient
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed name lookup, carried inside an [`io::Error`] so callers that
/// only see `io::Error` can still tell it apart (see [`classify`]).
#[derive(thiserror::Error, Debug)]
#[error("cannot resolve {target}: {detail}")]
pub struct ResolveError {
    /// What was being resolved (`HOST:PORT`).
    pub target: String,
    /// The resolver's message.
    pub detail: String,
    /// The resolver said "try again" (EAI_AGAIN): transient, not persistent.
    pub temporary: bool,
}

/// Wraps the error of a failed lookup of `target` into an [`io::Error`]
/// holding a [`ResolveError`]. std reports getaddrinfo failures only as
/// text, so "temporary" is recognised from glibc's and musl's wording of
/// EAI_AGAIN.
pub fn resolve_error(target: &str, e: io::Error) -> io::Error {
    let detail = e.to_string();
    let lower = detail.to_ascii_lowercase();
    let temporary = lower.contains("temporary failure") || lower.contains("try again");
    let kind = if temporary {
        io::ErrorKind::Other
    } else {
        io::ErrorKind::NotFound
    };
    io::Error::new(
        kind,
        ResolveError {
            target: target.to_string(),
            detail,
            temporary,
        },
    )
}

/// Classifies a connect or probe error. See the module docs for the rules.
pub fn classify(e: &io::Error) -> ErrorClass {
    if let Some(inner) = e.get_ref() {
        if let Some(r) = inner.downcast_ref::<ResolveError>() {
            return if r.temporary {
                ErrorClass::Transient
            } else {
                ErrorClass::Persistent
            };
        }
        if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
            return crate::tls::TlsError::from_rustls(tls).class();
        }
        if let Some(tls) = inner.downcast_ref::<crate::tls::TlsError>() {
            return tls.class();
        }
    }
    if let Some(errno) = e.raw_os_error() {
        match errno {
            libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS | libc::EADDRNOTAVAIL => {
                return ErrorClass::Resource
            }
            libc::ECONNREFUSED
            | libc::ECONNRESET
            | libc::ECONNABORTED
            | libc::ETIMEDOUT
            | libc::EHOSTUNREACH
            | libc::ENETUNREACH
            | libc::EHOSTDOWN
            | libc::ENETDOWN
            | libc::ENETRESET
            | libc::EPIPE
            | libc::EAGAIN
            | libc::EINTR
            | libc::EINPROGRESS
            | libc::EALREADY => return ErrorClass::Transient,
            libc::EACCES | libc::EPERM | libc::EAFNOSUPPORT | libc::EINVAL => {
                return ErrorClass::Persistent
            }
            _ => {}
        }
    }
    use io::ErrorKind as K;
    match e.kind() {
        K::OutOfMemory => ErrorClass::Resource,
        K::NotFound
        | K::InvalidInput
        | K::InvalidData
        | K::PermissionDenied
        | K::Unsupported
        | K::AddrInUse => ErrorClass::Persistent,
        // Refused, reset, aborted, timed out, unreachable, unexpected EOF
        // and anything unknown: waiting may help, and backoff bounds the cost.
        _ => ErrorClass::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(errno: i32) -> io::Error {
        io::Error::from_raw_os_error(errno)
    }

    #[test]
    fn index_matches_all() {
        for (i, c) in ErrorClass::ALL.iter().enumerate() {
            assert_eq!(c.index(), i, "{c}");
        }
    }

    #[test]
    fn errno_classes() {
        for e in [
            libc::ECONNREFUSED,
            libc::ECONNRESET,
            libc::ETIMEDOUT,
            libc::EHOSTUNREACH,
            libc::ENETUNREACH,
        ] {
            assert_eq!(classify(&os(e)), ErrorClass::Transient, "{e}");
        }
        for e in [libc::EMFILE, libc::ENFILE, libc::ENOMEM, libc::ENOBUFS] {
            assert_eq!(classify(&os(e)), ErrorClass::Resource, "{e}");
        }
        assert_eq!(classify(&os(libc::EACCES)), ErrorClass::Persistent);
        assert_eq!(
            classify(&io::Error::new(
                io::ErrorKind::TimedOut,
                "connect timed out"
            )),
            ErrorClass::Transient
        );
        assert_eq!(
            classify(&io::Error::new(io::ErrorKind::InvalidInput, "bad address")),
            ErrorClass::Persistent
        );
        assert!(ErrorClass::Transient.is_retryable());
        assert!(!ErrorClass::Persistent.is_retryable());
    }

    #[test]
    fn resolve_errors() {
        let gone = resolve_error(
            "nope.invalid:1",
            io::Error::other("failed to lookup address information: Name or service not known"),
        );
        assert_eq!(classify(&gone), ErrorClass::Persistent);
        assert!(gone.to_string().contains("nope.invalid:1"), "{gone}");
        let again = resolve_error(
            "flaky:1",
            io::Error::other(
                "failed to lookup address information: Temporary failure in name resolution",
            ),
        );
        assert_eq!(classify(&again), ErrorClass::Transient);
    }

    #[test]
    fn tls_errors_inside_io_errors() {
        let wrap = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        let bad_cert = wrap(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        assert_eq!(classify(&bad_cert), ErrorClass::Persistent);
        let name = wrap(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName,
        ));
        assert_eq!(classify(&name), ErrorClass::Persistent);
        let alert = wrap(rustls::Error::AlertReceived(
            rustls::AlertDescription::UnknownCA,
        ));
        assert_eq!(classify(&alert), ErrorClass::Persistent);
        let blip = wrap(rustls::Error::DecryptError);
        assert_eq!(classify(&blip), ErrorClass::Transient);
        // Not TLS at all on the other end: persistent.
        let rejected = io::Error::new(
            io::ErrorKind::InvalidData,
            crate::tls::TlsError::CertificateRejected("unknown issuer".into()),
        );
        assert_eq!(classify(&rejected), ErrorClass::Persistent);
        let slow = crate::tls::TlsError::Timeout(std::time::Duration::from_secs(1));
        assert_eq!(slow.class(), ErrorClass::Transient);
        let emfile = crate::tls::TlsError::Io(os(libc::EMFILE));
        assert_eq!(emfile.class(), ErrorClass::Resource);
        let garbage = io::Error::new(io::ErrorKind::InvalidData, "not a TLS record");
        assert_eq!(classify(&garbage), ErrorClass::Persistent);
    }
}
