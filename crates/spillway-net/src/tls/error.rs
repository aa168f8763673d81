//! Every TLS failure as one [`TlsError`], and the one table that maps
//! rustls's errors and alerts onto it ([`TlsError::from_rustls`]). Its
//! [`class`](TlsError::class) is what a dialer does next; `classify` reaches
//! the same answer for a rustls error found inside an `io::Error`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::{AlertDescription, CertificateError, OtherError};

use super::verify::PinMismatch;
use crate::classify::ErrorClass;

/// Every TLS failure, with what it means for the caller.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate, key or CA file cannot be read or holds nothing usable.
    /// Persistent: fix the file (and reload).
    #[error("{what} file {}: {reason}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// The files were read but do not make a usable configuration (a key
    /// that does not match its certificate, a CA rustls refuses). Persistent.
    #[error("{0}")]
    Config(String),
    /// The name to verify is not a valid DNS name or IP address. Persistent.
    #[error("invalid TLS server name '{0}'")]
    ServerName(String),
    /// We rejected the peer's certificate (untrusted, wrong name, pin
    /// mismatch, expired, missing). Persistent: the same peer will be
    /// rejected again until a certificate or the config changes.
    #[error("{0}")]
    CertificateRejected(String),
    /// The peer rejected us with a certificate alert (it does not trust our
    /// client certificate, or wanted one). Persistent.
    #[error("peer rejected the handshake: {0}")]
    RejectedByPeer(String),
    /// The two ends share no protocol version, cipher suite or other
    /// parameter the handshake needs (rustls's `PeerIncompatible`, or the
    /// peer's `handshake_failure`, `protocol_version` or
    /// `insufficient_security` alert). Persistent: the same two configs
    /// fail the same way.
    #[error("TLS handshake failed, nothing in common with the peer: {0}")]
    Incompatible(String),
    /// The peer did not speak TLS at all (plain text or garbage on a TLS
    /// port). Persistent for a dialer: an upstream that speaks plain TCP
    /// will go on doing so.
    #[error("not a TLS handshake: {0}")]
    NotTls(String),
    /// Any other protocol failure during the handshake (a decoding error,
    /// an unexpected alert, a misbehaving peer). Transient as far as
    /// redialing goes.
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    /// The handshake did not finish in time. Transient.
    #[error("TLS handshake timed out after {0:?}")]
    Timeout(Duration),
    /// The transport failed during the handshake (reset, EOF). Transient.
    #[error("TLS handshake I/O error: {0}")]
    Io(#[source] io::Error),
}

impl TlsError {
    /// What a dialer does next (see [`crate::classify`]): a file, a
    /// certificate, a name, a pin, or a protocol the peer does not share is
    /// wrong, and retrying soon cannot help (persistent: log it once, back
    /// off to the cap); a timeout or a protocol hiccup is transient; a
    /// transport error is classified like any other I/O error (out of
    /// descriptors is a resource problem, a reset is transient).
    pub fn class(&self) -> ErrorClass {
        match self {
            TlsError::File { .. }
            | TlsError::Config(_)
            | TlsError::ServerName(_)
            | TlsError::CertificateRejected(_)
            | TlsError::RejectedByPeer(_)
            | TlsError::Incompatible(_)
            | TlsError::NotTls(_) => ErrorClass::Persistent,
            TlsError::Handshake(_) | TlsError::Timeout(_) => ErrorClass::Transient,
            TlsError::Io(e) => crate::classify::classify(e),
        }
    }

    /// Retrying the same thing soon cannot succeed ([`class`](Self::class)
    /// is persistent).
    pub fn is_persistent(&self) -> bool {
        self.class() == ErrorClass::Persistent
    }

    /// The rustls error `e` as a [`TlsError`], with a message that does not
    /// know which end of the handshake it came from (what [`crate::classify`]
    /// uses; the handshakes themselves name the files and the name).
    pub fn from_rustls(e: &rustls::Error) -> TlsError {
        map_rustls(e, &Side::Unknown)
    }

    /// A short, stable label for metrics and log fields.
    pub fn as_label(&self) -> &'static str {
        match self {
            TlsError::File { .. } => "file",
            TlsError::Config(_) => "config",
            TlsError::ServerName(_) => "server_name",
            TlsError::CertificateRejected(_) => "certificate_rejected",
            TlsError::RejectedByPeer(_) => "rejected_by_peer",
            TlsError::Incompatible(_) => "incompatible",
            TlsError::NotTls(_) => "not_tls",
            TlsError::Handshake(_) => "handshake",
            TlsError::Timeout(_) => "timeout",
            TlsError::Io(_) => "io",
        }
    }
}

// ------------------------------------------------------ the one table ---

/// Which end of the handshake we are, with what the messages name.
pub(super) enum Side<'a> {
    /// Terminating; the client-CA file if mTLS is on.
    Server(Option<&'a Path>),
    /// Originating; the CA file (None = system roots) and the verified name.
    Client { ca: Option<&'a Path>, name: &'a str },
    /// Not known: a rustls error classified away from its handshake.
    Unknown,
}

/// Turns a handshake's `io::Error` (tokio-rustls wraps rustls errors in
/// `InvalidData`) into a [`TlsError`] with a message that says what to fix.
pub(super) fn from_io(e: io::Error, side: &Side<'_>) -> TlsError {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return TlsError::Io(e);
    };
    map_rustls(tls, side)
}

/// The one mapping of rustls's errors onto [`TlsError`] (and so onto an
/// [`ErrorClass`]): the variant depends on the error only, the message on
/// the side too.
fn map_rustls(e: &rustls::Error, side: &Side<'_>) -> TlsError {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(c) => TlsError::CertificateRejected(certificate_message(c, side)),
        E::NoCertificatesPresented => TlsError::CertificateRejected(match side {
            Side::Server(_) => {
                "the client presented no certificate, and client_ca requires one".into()
            }
            Side::Client { .. } => "the server presented no certificate".into(),
            Side::Unknown => "the peer presented no certificate".into(),
        }),
        E::UnsupportedNameType => TlsError::CertificateRejected(
            "the peer's certificate name type is not supported".into(),
        ),
        E::InvalidCertRevocationList(r) => {
            TlsError::CertificateRejected(format!("invalid certificate revocation list: {r:?}"))
        }
        E::PeerIncompatible(why) => TlsError::Incompatible(format!("{why:?}")),
        E::AlertReceived(a) => match a {
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::AccessDenied => TlsError::RejectedByPeer(match side {
                Side::Client { .. } => {
                    format!("the server does not accept our client certificate ({a:?})")
                }
                Side::Server(_) => format!("the client does not trust our certificate ({a:?})"),
                Side::Unknown => format!("the peer does not accept our certificate ({a:?})"),
            }),
            AlertDescription::CertificateRequired => TlsError::RejectedByPeer(
                "the server requires a client certificate (set 'cert' and 'key')".into(),
            ),
            AlertDescription::UnrecognisedName => TlsError::RejectedByPeer(
                "the server does not serve the name we sent (SNI); set server_name".into(),
            ),
            AlertDescription::HandshakeFailure
            | AlertDescription::ProtocolVersion
            | AlertDescription::InsufficientSecurity => {
                TlsError::Incompatible(format!("the peer sent alert {a:?}"))
            }
            other => TlsError::Handshake(format!("the peer sent alert {other:?}")),
        },
        // The first bytes were not a TLS record: plain text or garbage.
        E::InvalidMessage(_) => TlsError::NotTls(match side {
            Side::Client { .. } => format!("{e} (is the upstream really speaking TLS?)"),
            _ => format!("{e} (plain text or garbage on a TLS port?)"),
        }),
        E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. }
            if !matches!(side, Side::Client { .. }) =>
        {
            TlsError::NotTls(format!("{e} (plain text or garbage on a TLS port?)"))
        }
        other => TlsError::Handshake(other.to_string()),
    }
}

fn certificate_message(c: &CertificateError, side: &Side<'_>) -> String {
    let trust = match side {
        Side::Server(Some(p)) => format!("client_ca file {}", p.display()),
        Side::Server(None) => "the client CA".to_string(),
        Side::Client { ca: Some(p), .. } => format!("CA file {}", p.display()),
        Side::Client { ca: None, .. } => "the system root certificates".to_string(),
        Side::Unknown => "the configured CA".to_string(),
    };
    let whose = match side {
        Side::Server(_) => "client",
        Side::Client { .. } => "server",
        Side::Unknown => "peer",
    };
    match c {
        CertificateError::UnknownIssuer => {
            format!("{whose} certificate not trusted by {trust} (unknown issuer)")
        }
        CertificateError::BadSignature => {
            format!("{whose} certificate not trusted by {trust} (bad signature)")
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            let name = match side {
                Side::Client { name, .. } => *name,
                Side::Server(_) | Side::Unknown => "?",
            };
            let presented = match c {
                CertificateError::NotValidForNameContext { presented, .. } => presented.join(", "),
                _ => "-".to_string(),
            };
            format!(
                "hostname mismatch: the {whose} certificate is not valid for '{name}' \
                 (it names: {presented}); set server_name if the name differs from the address"
            )
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            format!("{whose} certificate expired")
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            format!("{whose} certificate not valid yet")
        }
        CertificateError::Other(OtherError(inner)) => match inner.downcast_ref::<PinMismatch>() {
            Some(p) => format!("SPKI pin mismatch: {p}"),
            None => format!("{whose} certificate rejected: {inner}"),
        },
        other => format!("{whose} certificate rejected: {other:?}"),
    }
}
