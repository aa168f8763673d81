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

mod client;
mod config;
mod error;
mod pem;
mod server;
mod stream;
#[cfg(test)]
mod tests;
mod verify;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

pub use client::{host_of, TlsClient};
pub use config::{ClientTlsConfig, ServerTlsConfig, DEFAULT_HANDSHAKE_TIMEOUT};
pub use error::TlsError;
pub use pem::load_certs;
pub use server::TlsServer;
pub use stream::{CiphertextMarks, MaybeTls};
pub use verify::SpkiPin;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
