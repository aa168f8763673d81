//! Originating TLS to an upstream or a `connect:` endpoint.

use std::fmt;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::warn;

use super::error::{from_io, Side};
use super::pem::{file_error, key_mismatch, load_certs, load_key, load_roots, system_roots};
use super::verify::Verifier;
use super::{provider, ClientTlsConfig, TlsError};

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
            Ok(Err(e)) => Err(from_io(e, &side)),
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
