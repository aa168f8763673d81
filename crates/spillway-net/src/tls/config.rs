//! What a route says about TLS on one side: the files, the names, the
//! pins and the timeout. Loading them is `server.rs` and `client.rs`.

use std::path::PathBuf;
use std::time::Duration;

use super::SpkiPin;

/// Default bound on a TLS handshake: a peer that opens a connection and
/// never finishes the handshake (slowloris, port scanner, plain-text
/// client waiting for a banner) is dropped after this long.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Terminating TLS on a listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTlsConfig {
    /// PEM certificate chain, end-entity first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates; when set, clients must present a certificate
    /// issued by one of them (mTLS).
    pub client_ca: Option<PathBuf>,
    pub handshake_timeout: Duration,
}

impl ServerTlsConfig {
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        ServerTlsConfig {
            cert: cert.into(),
            key: key.into(),
            client_ca: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

/// Originating TLS to an upstream or a `connect:` endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTlsConfig {
    /// PEM CA certificates the server's chain must lead to; `None` = the
    /// system's roots.
    pub ca: Option<PathBuf>,
    /// Name to send (SNI) and to verify the certificate against; `None` =
    /// the host part of the target address.
    pub server_name: Option<String>,
    /// Accepted SHA-256 digests of the server's SubjectPublicKeyInfo; empty
    /// = no pinning. Checked after (not instead of) CA verification.
    pub pin_sha256: Vec<SpkiPin>,
    /// Client certificate chain and key, for servers that require mTLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Skip chain and name verification. Tests only; logged at warn.
    pub insecure_skip_verify: bool,
    pub handshake_timeout: Duration,
}

impl Default for ClientTlsConfig {
    fn default() -> Self {
        ClientTlsConfig {
            ca: None,
            server_name: None,
            pin_sha256: Vec::new(),
            cert: None,
            key: None,
            insecure_skip_verify: false,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}
