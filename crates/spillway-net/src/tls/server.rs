//! Terminating TLS on a listener.

use std::fmt;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::error::{from_io, Side};
use super::pem::{file_error, key_mismatch, load_certs, load_key, load_roots};
use super::{provider, ServerTlsConfig, TlsError};

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
            Ok(Err(e)) => Err(from_io(e, &Side::Server(self.config.client_ca.as_deref()))),
            Err(_) => Err(TlsError::Timeout(t)),
        }
    }
}
