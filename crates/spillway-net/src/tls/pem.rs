//! Reading certificates, keys and CA files, with errors that name the
//! file and what is wrong with it.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use super::TlsError;

pub(super) fn file_error(what: &'static str, path: &Path, reason: impl Into<String>) -> TlsError {
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

pub(super) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => file_error(
            "key",
            path,
            "no private key found (expected a PEM 'PRIVATE KEY', 'RSA PRIVATE KEY' or 'EC PRIVATE KEY' block)",
        ),
        e => pem_error("key", path, e),
    })
}

pub(super) fn load_roots(what: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(what, path)? {
        roots
            .add(cert)
            .map_err(|e| file_error(what, path, format!("unusable CA certificate: {e}")))?;
    }
    Ok(roots)
}

pub(super) fn system_roots() -> Result<RootCertStore, TlsError> {
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

pub(super) fn key_mismatch(e: rustls::Error, cert: &Path, key: &Path) -> TlsError {
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
