//! TLS on either side of a connection, with rustls (ring provider).
//!
//! - [`TlsServer`] terminates TLS: a certificate chain and key from PEM
//!   files, and optionally a client-CA file, which makes client
//!   certificates mandatory and verified (mTLS).
//! - [`TlsClient`] originates TLS: the server's chain is verified against a
//!   CA file (default: the system roots) and its name against the target's
//!   host (or `server_name`); optionally the end-entity key is pinned by the
//!   SHA-256 of its SubjectPublicKeyInfo; optionally a client certificate is
//!   presented. `insecure_skip_verify` turns chain and name checks off (never
//!   the handshake signature, nor the pins); it is for tests and says so at
//!   warn level every time a route loads it.
//!
//! Loading is a function of the config ([`TlsServer::load`],
//! [`TlsClient::load`]): reloading the certificate files is building a new
//! value; connections already established keep the one they started with.
//!
//! Every failure is a [`TlsError`] whose message names the file or the
//! check that failed ("certificate not trusted by CA file X", "hostname
//! mismatch", "SPKI pin mismatch"), classified persistent (a certificate or
//! a file is wrong: retrying cannot help) or transient.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin as StdPin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ring::digest;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::warn;

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

/// SHA-256 of a DER SubjectPublicKeyInfo, written in base64 (the format of
/// HPKP and of `openssl x509 -pubkey | openssl pkey -pubin -outform der |
/// openssl dgst -sha256 -binary | base64`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpkiPin(pub [u8; 32]);

impl SpkiPin {
    /// The pin of a DER SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> Self {
        let d = digest::digest(&digest::SHA256, spki_der);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        SpkiPin(out)
    }

    /// The pin of a DER certificate's public key.
    pub fn of_certificate(cert_der: &[u8]) -> Result<Self, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
            .map_err(|e| format!("cannot parse certificate: {e}"))?;
        Ok(Self::of_spki(cert.public_key().raw))
    }
}

impl fmt::Display for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base64_encode(&self.0))
    }
}

impl fmt::Debug for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpkiPin({self})")
    }
}

impl FromStr for SpkiPin {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bytes =
            base64_decode(s.trim()).ok_or_else(|| format!("pin '{s}' is not valid base64"))?;
        let arr: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!(
                "pin '{s}' decodes to {} bytes; a SHA-256 pin is 32 bytes",
                b.len()
            )
        })?;
        Ok(SpkiPin(arr))
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard alphabet; padding optional.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0u32;
    for c in s.bytes() {
        let v = B64.iter().position(|&x| x == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be padding zeros, and 6 leftover bits is a truncated quantum.
    (bits < 6 && acc == 0).then_some(out)
}

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
    /// The peer did not speak TLS at all (plain text or garbage on a TLS
    /// port). About that connection only.
    #[error("not a TLS handshake: {0}")]
    NotTls(String),
    /// Any other protocol failure during the handshake (no common cipher
    /// suite or version, a decoding error). Transient as far as redialing
    /// goes.
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
    /// Retrying the same thing cannot succeed: a file, a certificate, a
    /// name or a pin is wrong. Dialers log it clearly and back off to the
    /// cap instead of looping.
    pub fn is_persistent(&self) -> bool {
        matches!(
            self,
            TlsError::File { .. }
                | TlsError::Config(_)
                | TlsError::ServerName(_)
                | TlsError::CertificateRejected(_)
                | TlsError::RejectedByPeer(_)
        )
    }

    /// Worth retrying (with backoff): timeouts, resets, protocol hiccups.
    pub fn is_retryable(&self) -> bool {
        !self.is_persistent()
    }

    /// The dialer's view ([`crate::classify`]): persistent failures back
    /// off long, the rest with the usual jitter.
    pub fn class(&self) -> crate::classify::ErrorClass {
        if self.is_persistent() {
            crate::classify::ErrorClass::Persistent
        } else {
            crate::classify::ErrorClass::Transient
        }
    }

    /// A short, stable label for metrics and log fields.
    pub fn as_label(&self) -> &'static str {
        match self {
            TlsError::File { .. } => "file",
            TlsError::Config(_) => "config",
            TlsError::ServerName(_) => "server_name",
            TlsError::CertificateRejected(_) => "certificate_rejected",
            TlsError::RejectedByPeer(_) => "rejected_by_peer",
            TlsError::NotTls(_) => "not_tls",
            TlsError::Handshake(_) => "handshake",
            TlsError::Timeout(_) => "timeout",
            TlsError::Io(_) => "io",
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_error(what: &'static str, path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::File {
        what,
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn pem_error(what: &'static str, path: &Path, e: rustls::pki_types::pem::Error) -> TlsError {
    use rustls::pki_types::pem::Error as E;
    let reason = match e {
        E::Io(e) => format!("cannot read: {e}"),
        E::NoItemsFound => "no PEM item of the expected kind found".to_string(),
        other => format!("invalid PEM: {other}"),
    };
    file_error(what, path, reason)
}

/// Reads every certificate of a PEM file; at least one.
pub fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| pem_error(what, path, e))?;
    let certs = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, path, e))?;
    if certs.is_empty() {
        return Err(file_error(
            what,
            path,
            "no certificate found (expected PEM 'BEGIN CERTIFICATE' blocks)",
        ));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => file_error(
            "key",
            path,
            "no private key found (expected a PEM 'PRIVATE KEY', 'RSA PRIVATE KEY' or 'EC PRIVATE KEY' block)",
        ),
        e => pem_error("key", path, e),
    })
}

fn load_roots(what: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(what, path)? {
        roots
            .add(cert)
            .map_err(|e| file_error(what, path, format!("unusable CA certificate: {e}")))?;
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none found".to_string(), |e| e.to_string());
        return Err(TlsError::Config(format!(
            "no usable system root certificates ({why}); set 'ca' to a CA file"
        )));
    }
    Ok(roots)
}

fn key_mismatch(e: rustls::Error, cert: &Path, key: &Path) -> TlsError {
    match e {
        rustls::Error::InconsistentKeys(_) => TlsError::Config(format!(
            "key file {} does not match certificate file {}",
            key.display(),
            cert.display()
        )),
        e => TlsError::Config(format!(
            "certificate {} / key {}: {e}",
            cert.display(),
            key.display()
        )),
    }
}

// ------------------------------------------------------------- server ---

/// A loaded TLS server configuration; cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct TlsServer {
    acceptor: TlsAcceptor,
    config: ServerTlsConfig,
}

impl fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsServer")
            .field("config", &self.config)
            .finish()
    }
}

impl TlsServer {
    /// Reads the certificate, key and client-CA files now. Call again to
    /// pick up new files (reload); live connections are not affected.
    pub fn load(cfg: &ServerTlsConfig) -> Result<Self, TlsError> {
        let chain = load_certs("certificate", &cfg.cert)?;
        let key = load_key(&cfg.key)?;
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &cfg.client_ca {
            Some(path) => {
                let roots = load_roots("client_ca", path)?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| file_error("client_ca", path, e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(chain, key)
            .map_err(|e| key_mismatch(e, &cfg.cert, &cfg.key))?;
        Ok(TlsServer {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            config: cfg.clone(),
        })
    }

    pub fn config(&self) -> &ServerTlsConfig {
        &self.config
    }

    /// Runs the server handshake, bounded by the handshake timeout.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::server::TlsStream<TcpStream>, TlsError> {
        let t = self.config.handshake_timeout;
        match tokio::time::timeout(t, self.acceptor.accept(tcp)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(classify(e, &Side::Server(self.config.client_ca.as_deref()))),
            Err(_) => Err(TlsError::Timeout(t)),
        }
    }
}

// ------------------------------------------------------------- client ---

/// A loaded TLS client configuration; cheap to clone.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    config: ClientTlsConfig,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient")
            .field("config", &self.config)
            .finish()
    }
}

impl TlsClient {
    /// Reads the CA (or the system roots) and client certificate files now.
    /// `insecure_skip_verify` is logged at warn here, so once per route
    /// build (start and every reload).
    pub fn load(cfg: &ClientTlsConfig) -> Result<Self, TlsError> {
        let provider = provider();
        let webpki = if cfg.insecure_skip_verify {
            warn!(
                server_name = cfg.server_name.as_deref().unwrap_or("-"),
                pins = cfg.pin_sha256.len(),
                "TLS certificate verification is DISABLED (insecure_skip_verify = true): \
                 any server certificate is accepted; use this for tests only"
            );
            None
        } else {
            let roots = match &cfg.ca {
                Some(path) => load_roots("ca", path)?,
                None => system_roots()?,
            };
            let v =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|e| match &cfg.ca {
                        Some(path) => file_error("ca", path, e.to_string()),
                        None => TlsError::Config(e.to_string()),
                    })?;
            Some(v)
        };
        let verifier = Arc::new(Verifier {
            webpki,
            pins: cfg.pin_sha256.clone(),
            provider: Arc::clone(&provider),
        });
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&cfg.cert, &cfg.key) {
            (Some(cert), Some(key)) => {
                let chain = load_certs("certificate", cert)?;
                let k = load_key(key)?;
                builder
                    .with_client_auth_cert(chain, k)
                    .map_err(|e| key_mismatch(e, cert, key))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(TlsError::Config(
                    "a client certificate needs both 'cert' and 'key'".into(),
                ))
            }
        };
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            config: cfg.clone(),
        })
    }

    pub fn config(&self) -> &ClientTlsConfig {
        &self.config
    }

    /// The name sent as SNI and verified: `server_name`, else the host part
    /// of `target` (`HOST:PORT`, IPv6 in brackets).
    pub fn server_name_for(&self, target: &str) -> Result<ServerName<'static>, TlsError> {
        let host = match &self.config.server_name {
            Some(n) => n.as_str(),
            None => host_of(target),
        };
        ServerName::try_from(host.to_string()).map_err(|_| TlsError::ServerName(host.to_string()))
    }

    /// Runs the client handshake on a connected socket, bounded by the
    /// handshake timeout.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        target: &str,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TlsError> {
        let name = self.server_name_for(target)?;
        let shown = host_name(&name);
        let t = self.config.handshake_timeout;
        let side = Side::Client {
            ca: self.config.ca.as_deref(),
            name: &shown,
        };
        match tokio::time::timeout(t, self.connector.connect(name, tcp)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(classify(e, &side)),
            Err(_) => Err(TlsError::Timeout(t)),
        }
    }
}

fn host_name(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(d) => d.as_ref().to_string(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

/// The host of `HOST:PORT` (brackets of an IPv6 literal removed).
pub fn host_of(target: &str) -> &str {
    let host = target.rsplit_once(':').map_or(target, |(h, _)| h);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// Chain and name checks by webpki (unless insecure), then the SPKI pins.
#[derive(Debug)]
struct Verifier {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    pins: Vec<SpkiPin>,
    provider: Arc<CryptoProvider>,
}

/// The server's key is not among the configured pins.
#[derive(Debug)]
struct PinMismatch(String);

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PinMismatch {}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(v) = &self.webpki {
            v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        }
        if !self.pins.is_empty() {
            let got = SpkiPin::of_certificate(end_entity)
                .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
            if !self.pins.contains(&got) {
                let want: Vec<String> = self.pins.iter().map(SpkiPin::to_string).collect();
                return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(PinMismatch(format!(
                        "the server's key has SPKI SHA-256 {got}, which is not in pin_sha256 [{}]",
                        want.join(", ")
                    )))),
                )));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

// ------------------------------------------------------ classification ---

/// Which end of the handshake we are, with what the messages name.
enum Side<'a> {
    /// Terminating; the client-CA file if mTLS is on.
    Server(Option<&'a Path>),
    /// Originating; the CA file (None = system roots) and the verified name.
    Client { ca: Option<&'a Path>, name: &'a str },
}

/// Turns a handshake's `io::Error` (tokio-rustls wraps rustls errors in
/// `InvalidData`) into a [`TlsError`] with a message that says what to fix.
fn classify(e: io::Error, side: &Side<'_>) -> TlsError {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return TlsError::Io(e);
    };
    classify_rustls(tls, side)
}

fn classify_rustls(e: &rustls::Error, side: &Side<'_>) -> TlsError {
    use rustls::Error as E;
    match (e, side) {
        (E::InvalidCertificate(c), _) => {
            TlsError::CertificateRejected(certificate_message(c, side))
        }
        (E::NoCertificatesPresented, Side::Server(_)) => TlsError::CertificateRejected(
            "the client presented no certificate, and client_ca requires one".into(),
        ),
        (E::NoCertificatesPresented, Side::Client { .. }) => {
            TlsError::CertificateRejected("the server presented no certificate".into())
        }
        (E::AlertReceived(a), _) => {
            let what = match a {
                AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateRevoked
                | AlertDescription::AccessDenied => {
                    return TlsError::RejectedByPeer(match side {
                        Side::Client { .. } => {
                            format!("the server does not accept our client certificate ({a:?})")
                        }
                        Side::Server(_) => {
                            format!("the client does not trust our certificate ({a:?})")
                        }
                    })
                }
                AlertDescription::CertificateRequired => {
                    return TlsError::RejectedByPeer(
                        "the server requires a client certificate (set 'cert' and 'key')".into(),
                    )
                }
                other => format!("the peer sent alert {other:?}"),
            };
            TlsError::Handshake(what)
        }
        // The first bytes were not a TLS record: plain text or garbage.
        (
            E::InvalidMessage(_)
            | E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. },
            Side::Server(_),
        ) => TlsError::NotTls(format!("{e} (plain text or garbage on a TLS port?)")),
        (E::InvalidMessage(_), Side::Client { .. }) => {
            TlsError::NotTls(format!("{e} (is the upstream really speaking TLS?)"))
        }
        (other, _) => TlsError::Handshake(other.to_string()),
    }
}

fn certificate_message(c: &CertificateError, side: &Side<'_>) -> String {
    let trust = match side {
        Side::Server(Some(p)) => format!("client_ca file {}", p.display()),
        Side::Server(None) => "the client CA".to_string(),
        Side::Client { ca: Some(p), .. } => format!("CA file {}", p.display()),
        Side::Client { ca: None, .. } => "the system root certificates".to_string(),
    };
    let whose = match side {
        Side::Server(_) => "client",
        Side::Client { .. } => "server",
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
                Side::Server(_) => "?",
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

// --------------------------------------------------- delivery over TLS ---

/// Honest delivery accounting through TLS. The peer's TCP acknowledges
/// ciphertext (`written − SIOCOUTQ` counts record headers, tags and
/// handshake messages), while messages are plaintext. Each time all the
/// plaintext accepted so far has been encrypted and written to the socket,
/// the writer records a mark `(plaintext end, ciphertext end)`; once the
/// peer has acknowledged that much ciphertext, that much plaintext is
/// delivered. Marks are only taken at full flushes, so this never counts a
/// byte before the peer's TCP holds all of it (it may count late by at
/// most one flush).
#[derive(Debug, Default)]
pub struct CiphertextMarks {
    marks: std::collections::VecDeque<(u64, u64)>,
    acked_plain: u64,
}

impl CiphertextMarks {
    /// Every plaintext byte before `plain` is in ciphertext that ends at
    /// socket offset `raw`.
    pub fn flushed(&mut self, plain: u64, raw: u64) {
        match self.marks.back_mut() {
            // Nothing new: keep the earlier (smaller) ciphertext offset.
            Some(&mut (p, _)) if p == plain => {}
            // More ciphertext for the same plaintext (a close_notify, a key
            // update) does not move the mark.
            _ if plain <= self.acked_plain => {}
            _ => self.marks.push_back((plain, raw)),
        }
    }

    /// Plaintext bytes known delivered once `raw_acked` ciphertext bytes
    /// were acknowledged; never decreases.
    pub fn acked(&mut self, raw_acked: u64) -> u64 {
        while let Some(&(plain, raw)) = self.marks.front() {
            if raw > raw_acked {
                break;
            }
            self.acked_plain = self.acked_plain.max(plain);
            self.marks.pop_front();
        }
        self.acked_plain
    }
}

// ------------------------------------------------------------ streams ---

/// A TCP connection with or without TLS, so one code path reads and
/// writes both. Half-close on the TLS variant sends close_notify and then
/// shuts down the TCP write side.
#[derive(Debug)]
pub enum MaybeTls {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl MaybeTls {
    /// The TCP socket underneath (for socket options, SIOCOUTQ, linger).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            MaybeTls::Plain(s) => s,
            MaybeTls::Tls(s) => s.get_ref().0,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls(_))
    }
}

impl From<tokio_rustls::server::TlsStream<TcpStream>> for MaybeTls {
    fn from(s: tokio_rustls::server::TlsStream<TcpStream>) -> Self {
        MaybeTls::Tls(Box::new(tokio_rustls::TlsStream::Server(s)))
    }
}

impl From<tokio_rustls::client::TlsStream<TcpStream>> for MaybeTls {
    fn from(s: tokio_rustls::client::TlsStream<TcpStream>) -> Self {
        MaybeTls::Tls(Box::new(tokio_rustls::TlsStream::Client(s)))
    }
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: StdPin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => StdPin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => StdPin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: StdPin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => StdPin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => StdPin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: StdPin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => StdPin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => StdPin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: StdPin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => StdPin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => StdPin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A CA, a server certificate for `localhost`/127.0.0.1, a client
    /// certificate, and a second unrelated CA, as PEM files in a temp dir.
    struct Pki {
        dir: tempfile::TempDir,
        server_spki: SpkiPin,
    }

    impl Pki {
        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
    }

    fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca")
    }

    fn pki() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let write =
            |name: &str, text: &str| std::fs::write(dir.path().join(name), text).expect("write");
        let root = ca("test ca");
        let other = ca("other ca");
        let server_key = KeyPair::generate().expect("key");
        let server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("params")
            .signed_by(&server_key, &root)
            .expect("server cert");
        let client_key = KeyPair::generate().expect("key");
        let client = CertificateParams::new(vec!["client".to_string()])
            .expect("params")
            .signed_by(&client_key, &root)
            .expect("client cert");
        let stray_key = KeyPair::generate().expect("key");
        write("ca.pem", &root.pem());
        write("other-ca.pem", &other.pem());
        write("server.pem", &server.pem());
        write("server.key", &server_key.serialize_pem());
        write("client.pem", &client.pem());
        write("client.key", &client_key.serialize_pem());
        write("stray.key", &stray_key.serialize_pem());
        write("empty.pem", "nothing here\n");
        let server_spki = SpkiPin::of_certificate(server.der()).expect("spki");
        Pki { dir, server_spki }
    }

    fn server_cfg(p: &Pki) -> ServerTlsConfig {
        ServerTlsConfig::new(p.path("server.pem"), p.path("server.key"))
    }

    fn client_cfg(p: &Pki) -> ClientTlsConfig {
        ClientTlsConfig {
            ca: Some(p.path("ca.pem")),
            ..ClientTlsConfig::default()
        }
    }

    /// One handshake over loopback: the server's and the client's results.
    async fn handshake(
        server: &TlsServer,
        client: &TlsClient,
        target_name: &str,
    ) -> (
        Result<tokio_rustls::server::TlsStream<TcpStream>, TlsError>,
        Result<tokio_rustls::client::TlsStream<TcpStream>, TlsError>,
    ) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let target = format!("{target_name}:{}", addr.port());
        let s = server.clone();
        let accept = tokio::spawn(async move {
            let (tcp, _) = l.accept().await.expect("accept");
            s.accept(tcp).await
        });
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let c = client.connect(tcp, &target).await;
        // A client whose handshake failed drops the socket, which ends the
        // server's handshake too.
        let s = accept.await.expect("join");
        (s, c)
    }

    #[test]
    fn pins_round_trip_through_base64() {
        let pin = SpkiPin::of_spki(b"some key");
        let text = pin.to_string();
        assert_eq!(text.len(), 44);
        assert_eq!(text.parse::<SpkiPin>(), Ok(pin));
        assert!("not base64!".parse::<SpkiPin>().is_err());
        let short = "AAAA".parse::<SpkiPin>().expect_err("3 bytes");
        assert!(short.contains("32 bytes"), "{short}");
        assert_eq!(base64_encode(b"ab"), "YWI=");
        assert_eq!(base64_decode("YWI=").as_deref(), Some(&b"ab"[..]));
        assert_eq!(base64_decode("YWI").as_deref(), Some(&b"ab"[..]));
        assert_eq!(base64_decode("Y"), None);
    }

    #[test]
    fn ciphertext_marks_count_plaintext_only_once_its_records_are_acked() {
        let mut m = CiphertextMarks::default();
        assert_eq!(m.acked(1000), 0);
        // 100 plaintext bytes went out as 129 bytes of record.
        m.flushed(100, 129);
        m.flushed(100, 129);
        m.flushed(250, 300);
        assert_eq!(m.acked(128), 0, "one byte of the record unacked");
        assert_eq!(m.acked(129), 100);
        assert_eq!(m.acked(299), 100);
        assert_eq!(m.acked(5000), 250);
        // A close_notify adds ciphertext but no plaintext.
        m.flushed(250, 331);
        assert_eq!(m.acked(331), 250);
        assert_eq!(m.acked(10), 250, "never decreases");
    }

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("example.com:443"), "example.com");
        assert_eq!(host_of("[::1]:443"), "::1");
        assert_eq!(host_of("127.0.0.1:1"), "127.0.0.1");
    }

    #[test]
    fn load_errors_name_the_file_and_the_problem() {
        let p = pki();
        let mut cfg = server_cfg(&p);
        cfg.cert = p.path("missing.pem");
        let e = TlsServer::load(&cfg).expect_err("missing");
        let m = e.to_string();
        assert!(
            m.contains("certificate file") && m.contains("missing.pem"),
            "{m}"
        );
        assert!(e.is_persistent());

        cfg.cert = p.path("empty.pem");
        let m = TlsServer::load(&cfg).expect_err("empty").to_string();
        assert!(
            m.contains("empty.pem") && m.contains("no certificate"),
            "{m}"
        );

        let mut cfg = server_cfg(&p);
        cfg.key = p.path("server.pem");
        let m = TlsServer::load(&cfg).expect_err("no key").to_string();
        assert!(
            m.contains("key file") && m.contains("no private key"),
            "{m}"
        );

        cfg.key = p.path("stray.key");
        let m = TlsServer::load(&cfg).expect_err("mismatch").to_string();
        assert!(m.contains("does not match"), "{m}");

        let mut cfg = server_cfg(&p);
        cfg.client_ca = Some(p.path("empty.pem"));
        let m = TlsServer::load(&cfg)
            .expect_err("bad client ca")
            .to_string();
        assert!(
            m.contains("client_ca file") && m.contains("empty.pem"),
            "{m}"
        );

        let mut c = client_cfg(&p);
        c.ca = Some(p.path("nope.pem"));
        let m = TlsClient::load(&c).expect_err("missing ca").to_string();
        assert!(m.contains("ca file") && m.contains("nope.pem"), "{m}");

        let mut c = client_cfg(&p);
        c.cert = Some(p.path("client.pem"));
        let m = TlsClient::load(&c)
            .expect_err("cert without key")
            .to_string();
        assert!(m.contains("both"), "{m}");
    }

    #[tokio::test]
    async fn verified_handshake_carries_bytes_both_ways_and_half_closes() {
        let p = pki();
        let server = TlsServer::load(&server_cfg(&p)).expect("server");
        let client = TlsClient::load(&client_cfg(&p)).expect("client");
        let (s, c) = handshake(&server, &client, "localhost").await;
        let mut s = MaybeTls::from(s.expect("server side"));
        let mut c = MaybeTls::from(c.expect("client side"));
        assert!(s.is_tls() && c.is_tls());
        c.write_all(b"ping").await.expect("write");
        c.shutdown().await.expect("close_notify");
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.expect("read to close_notify");
        assert_eq!(got, b"ping");
        // The other direction still works after the client's half-close.
        s.write_all(b"pong").await.expect("write back");
        s.shutdown().await.expect("shutdown");
        let mut back = Vec::new();
        c.read_to_end(&mut back).await.expect("read back");
        assert_eq!(back, b"pong");

        // By IP address too (the certificate has an IP SAN).
        let (s, c) = handshake(&server, &client, "127.0.0.1").await;
        assert!(s.is_ok() && c.is_ok());
    }

    #[tokio::test]
    async fn wrong_ca_hostname_and_pin_are_rejected_with_clear_messages() {
        let p = pki();
        let server = TlsServer::load(&server_cfg(&p)).expect("server");

        let mut cfg = client_cfg(&p);
        cfg.ca = Some(p.path("other-ca.pem"));
        let client = TlsClient::load(&cfg).expect("client");
        let (_, c) = handshake(&server, &client, "localhost").await;
        let e = c.expect_err("wrong ca");
        assert!(e.is_persistent(), "{e:?}");
        let m = e.to_string();
        assert!(
            m.contains("not trusted by CA file") && m.contains("other-ca.pem"),
            "{m}"
        );

        let client = TlsClient::load(&client_cfg(&p)).expect("client");
        let (_, c) = handshake(&server, &client, "127.0.0.2").await;
        // The connection goes to 127.0.0.1; the name checked is the target's host.
        let m = c.expect_err("wrong name").to_string();
        assert!(
            m.contains("hostname mismatch") && m.contains("127.0.0.2"),
            "{m}"
        );
        let mut cfg = client_cfg(&p);
        cfg.server_name = Some("example.org".into());
        let client = TlsClient::load(&cfg).expect("client");
        let (_, c) = handshake(&server, &client, "localhost").await;
        let m = c.expect_err("wrong server_name").to_string();
        assert!(
            m.contains("hostname mismatch") && m.contains("example.org"),
            "{m}"
        );

        let mut cfg = client_cfg(&p);
        cfg.pin_sha256 = vec![SpkiPin::of_spki(b"another key")];
        let client = TlsClient::load(&cfg).expect("client");
        let (_, c) = handshake(&server, &client, "localhost").await;
        let e = c.expect_err("wrong pin");
        assert!(e.is_persistent());
        assert!(e.to_string().contains("SPKI pin mismatch"), "{e}");

        cfg.pin_sha256.push(p.server_spki);
        let client = TlsClient::load(&cfg).expect("client");
        let (s, c) = handshake(&server, &client, "localhost").await;
        assert!(s.is_ok() && c.is_ok(), "right pin among others");
    }

    #[tokio::test]
    async fn insecure_skip_verify_accepts_an_unknown_ca_but_keeps_pins() {
        let p = pki();
        let server = TlsServer::load(&server_cfg(&p)).expect("server");
        let cfg = ClientTlsConfig {
            insecure_skip_verify: true,
            server_name: Some("wrong.example".into()),
            ..ClientTlsConfig::default()
        };
        let client = TlsClient::load(&cfg).expect("client");
        let (s, c) = handshake(&server, &client, "localhost").await;
        assert!(s.is_ok() && c.is_ok());
        let cfg = ClientTlsConfig {
            pin_sha256: vec![SpkiPin::of_spki(b"x")],
            ..cfg
        };
        let client = TlsClient::load(&cfg).expect("client");
        let (_, c) = handshake(&server, &client, "localhost").await;
        assert!(c
            .expect_err("pin")
            .to_string()
            .contains("SPKI pin mismatch"));
    }

    #[tokio::test]
    async fn mtls_requires_a_client_certificate_from_the_client_ca() {
        let p = pki();
        let mut scfg = server_cfg(&p);
        scfg.client_ca = Some(p.path("ca.pem"));
        let server = TlsServer::load(&scfg).expect("server");

        let mut ccfg = client_cfg(&p);
        ccfg.cert = Some(p.path("client.pem"));
        ccfg.key = Some(p.path("client.key"));
        let client = TlsClient::load(&ccfg).expect("client");
        let (s, c) = handshake(&server, &client, "localhost").await;
        assert!(s.is_ok() && c.is_ok(), "good client certificate");

        let client = TlsClient::load(&client_cfg(&p)).expect("client");
        let (s, c) = handshake(&server, &client, "localhost").await;
        let e = s.expect_err("no client certificate");
        assert!(e.is_persistent());
        assert!(e.to_string().contains("presented no certificate"), "{e}");
        // TLS 1.3: the client finishes first and learns of the refusal on
        // its first read.
        if let Ok(c) = c {
            let mut c = MaybeTls::from(c);
            let mut buf = [0u8; 1];
            assert!(c.read(&mut buf).await.is_err() || buf == [0]);
        }

        // A certificate from another CA.
        let mut scfg = server_cfg(&p);
        scfg.client_ca = Some(p.path("other-ca.pem"));
        let server = TlsServer::load(&scfg).expect("server");
        let client = TlsClient::load(&ccfg).expect("client");
        let (s, _) = handshake(&server, &client, "localhost").await;
        let m = s.expect_err("untrusted client").to_string();
        assert!(
            m.contains("client certificate not trusted by client_ca file"),
            "{m}"
        );
    }

    #[tokio::test]
    async fn garbage_and_plain_text_are_not_tls() {
        let p = pki();
        let server = TlsServer::load(&server_cfg(&p)).expect("server");
        for junk in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5][..],
        ] {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = l.local_addr().expect("addr");
            let mut peer = TcpStream::connect(addr).await.expect("connect");
            let (tcp, _) = l.accept().await.expect("accept");
            peer.write_all(junk).await.expect("write");
            let e = server.accept(tcp).await.expect_err("junk");
            assert!(!e.is_persistent());
            assert!(matches!(e, TlsError::NotTls(_)), "{e:?}");
            assert!(e.to_string().starts_with("not a TLS handshake"), "{e}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_hits_the_handshake_timeout() {
        let p = pki();
        let mut cfg = server_cfg(&p);
        cfg.handshake_timeout = Duration::from_secs(3);
        let server = TlsServer::load(&cfg).expect("server");
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let _peer = TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (tcp, _) = l.accept().await.expect("accept");
        let e = server.accept(tcp).await.expect_err("timeout");
        assert!(
            matches!(e, TlsError::Timeout(d) if d == Duration::from_secs(3)),
            "{e:?}"
        );
        assert!(e.is_retryable());
    }
}
