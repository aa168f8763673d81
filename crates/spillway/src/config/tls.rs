//! The TLS tables of a route: `[route.tls]` and `[route.upstream_tls]` of
//! a stream route, `[route.from_tls]` and `[route.to_tls]` of a queue route
//! (server or client by the endpoint they sit on). Their defaults
//! (handshake timeout, verification on) are `spillway_net::tls`'s own.

use std::path::PathBuf;

use spillway_net::tls::{ClientTlsConfig, ServerTlsConfig, SpkiPin};
use toml::Spanned;

use super::convert::{nonzero_duration, ConfigError, Source};
use super::raw::{RawTls, S};
use crate::endpoint::Endpoint;

/// TLS at one end of a queue route: which kind follows from the endpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum EndpointTls {
    /// On a `listen:` endpoint: spillway is the TLS server.
    Server(ServerTlsConfig),
    /// On a `connect:` endpoint: spillway is the TLS client.
    Client(ClientTlsConfig),
}

pub(super) fn endpoint_tls(
    src: &Source<'_>,
    raw: S<RawTls>,
    endpoint: &Endpoint,
    table: &str,
) -> Result<Option<EndpointTls>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    Ok(Some(match endpoint {
        Endpoint::Listen(_) => EndpointTls::Server(server_tls(src, raw, table)?),
        Endpoint::Connect(_) => EndpointTls::Client(client_tls(src, raw, table)?),
    }))
}

fn tls_reject<T>(
    src: &Source<'_>,
    v: &S<T>,
    key: &str,
    table: &str,
    why: &str,
) -> Result<(), ConfigError> {
    match v {
        Some(v) => Err(src.error(
            v.span(),
            format!("key '{key}' is not valid in [route.{table}]: {why}"),
        )),
        None => Ok(()),
    }
}

fn tls_path(v: S<String>) -> Option<PathBuf> {
    v.map(|p| PathBuf::from(p.into_inner()))
}

/// A table where spillway terminates TLS: `cert` and `key` required,
/// `client_ca` turns on mTLS.
pub(super) fn server_tls(
    src: &Source<'_>,
    raw: Spanned<RawTls>,
    table: &str,
) -> Result<ServerTlsConfig, ConfigError> {
    let span = raw.span();
    // Every key named: a new one must be placed (used or rejected) here.
    let RawTls {
        cert,
        key,
        client_ca,
        ca,
        server_name,
        pin_sha256,
        insecure_skip_verify,
        handshake_timeout,
    } = raw.into_inner();
    let why = "spillway is the TLS server here (it accepts the connections)";
    tls_reject(src, &ca, "ca", table, why)?;
    tls_reject(src, &server_name, "server_name", table, why)?;
    tls_reject(src, &pin_sha256, "pin_sha256", table, why)?;
    tls_reject(
        src,
        &insecure_skip_verify,
        "insecure_skip_verify",
        table,
        why,
    )?;
    let missing = |key: &str| {
        src.error(
            span.clone(),
            format!("[route.{table}] is missing required key '{key}'"),
        )
    };
    let cert = tls_path(cert).ok_or_else(|| missing("cert"))?;
    let key = tls_path(key).ok_or_else(|| missing("key"))?;
    let mut cfg = ServerTlsConfig::new(cert, key);
    cfg.client_ca = tls_path(client_ca);
    if let Some(v) = &handshake_timeout {
        cfg.handshake_timeout = nonzero_duration(src, v, "handshake_timeout")?;
    }
    Ok(cfg)
}

/// A table where spillway originates TLS: verification on by default.
pub(super) fn client_tls(
    src: &Source<'_>,
    raw: Spanned<RawTls>,
    table: &str,
) -> Result<ClientTlsConfig, ConfigError> {
    let span = raw.span();
    // Every key named: a new one must be placed (used or rejected) here.
    let RawTls {
        cert,
        key,
        client_ca,
        ca,
        server_name,
        pin_sha256,
        insecure_skip_verify,
        handshake_timeout,
    } = raw.into_inner();
    tls_reject(
        src,
        &client_ca,
        "client_ca",
        table,
        "spillway is the TLS client here (it dials); use 'ca' to verify the server",
    )?;
    let mut cfg = ClientTlsConfig::default();
    if let Some(v) = &handshake_timeout {
        cfg.handshake_timeout = nonzero_duration(src, v, "handshake_timeout")?;
    }
    if let Some(n) = server_name {
        if rustls_pki_types::ServerName::try_from(n.get_ref().as_str()).is_err() {
            return Err(src.error(
                n.span(),
                format!(
                    "invalid server_name '{}': expected a DNS name or an IP address",
                    n.get_ref()
                ),
            ));
        }
        cfg.server_name = Some(n.into_inner());
    }
    if let Some(pins) = pin_sha256 {
        for p in pins.get_ref() {
            let pin: SpkiPin = p.parse().map_err(|m: String| src.error(pins.span(), m))?;
            cfg.pin_sha256.push(pin);
        }
    }
    if let Some(v) = &insecure_skip_verify {
        cfg.insecure_skip_verify = *v.get_ref();
        if cfg.insecure_skip_verify {
            if let Some(ca) = &ca {
                return Err(src.error(
                    ca.span(),
                    "'ca' has no effect with insecure_skip_verify = true; remove one of them",
                ));
            }
        }
    }
    cfg.ca = tls_path(ca);
    match (&cert, &key) {
        (Some(_), None) | (None, Some(_)) => {
            return Err(src.error(
                span,
                format!("[route.{table}]: a client certificate needs both 'cert' and 'key'"),
            ))
        }
        _ => {}
    }
    cfg.cert = tls_path(cert);
    cfg.key = tls_path(key);
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::config::{parse, Config, Route};

    fn p(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("t.toml"), text)
    }

    #[test]
    fn tls_tables() {
        let pin = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
        let c = p(&format!(
            r#"
[[route]]
name = "web"
mode = "stream"
listen = "127.0.0.1:7000"
upstreams = ["backend.internal:8443"]
[route.tls]
cert = "/etc/spillway/server.pem"
key = "/etc/spillway/server.key"
client_ca = "/etc/spillway/clients.pem"
[route.upstream_tls]
ca = "/etc/spillway/ca.pem"
server_name = "backend.example"
pin_sha256 = ["{pin}"]
handshake_timeout = "3s"

[[route]]
name = "q"
mode = "queue"
from = "listen:127.0.0.1:7001"
to = "connect:127.0.0.1:7002"
spool = "/tmp/q"
[route.from_tls]
cert = "s.pem"
key = "s.key"
[route.to_tls]
insecure_skip_verify = true
cert = "c.pem"
key = "c.key"
"#
        ))
        .expect("valid");
        let Route::Stream(r) = &c.routes[0] else {
            panic!("not a stream route");
        };
        let t = r.tls.as_ref().expect("tls");
        assert_eq!(
            t.client_ca.as_deref(),
            Some(Path::new("/etc/spillway/clients.pem"))
        );
        assert_eq!(
            t.handshake_timeout,
            spillway_net::tls::DEFAULT_HANDSHAKE_TIMEOUT
        );
        let u = r.upstream_tls.as_ref().expect("upstream_tls");
        assert_eq!(u.server_name.as_deref(), Some("backend.example"));
        assert_eq!(u.pin_sha256.len(), 1);
        assert_eq!(u.pin_sha256[0].to_string(), pin);
        assert_eq!(u.handshake_timeout, Duration::from_secs(3));
        assert!(!u.insecure_skip_verify);
        let Route::Queue(q) = &c.routes[1] else {
            panic!("not a queue route");
        };
        assert!(
            matches!(&q.from_tls, Some(EndpointTls::Server(s)) if s.cert == Path::new("s.pem"))
        );
        assert!(
            matches!(&q.to_tls, Some(EndpointTls::Client(c)) if c.insecure_skip_verify && c.key.is_some())
        );

        let stream = "[[route]]\nname = \"a\"\nmode = \"stream\"\nlisten = \"127.0.0.1:1\"\nupstreams = [\"a:1\"]\n";
        let bad = |tail: &str| p(&format!("{stream}{tail}")).expect_err(tail);
        let e = bad("[route.tls]\ncert = \"c\"\n");
        assert!(e.message.contains("missing required key 'key'"), "{e}");
        let e = bad("[route.tls]\ncert = \"c\"\nkey = \"k\"\nca = \"x\"\n");
        assert_eq!(e.line, 9, "{e}");
        assert!(e.message.contains("TLS server"), "{e}");
        let e = bad("[route.upstream_tls]\nclient_ca = \"x\"\n");
        assert!(e.message.contains("TLS client"), "{e}");
        let e = bad("[route.upstream_tls]\npin_sha256 = [\"abc\"]\n");
        assert!(e.message.contains("32 bytes"), "{e}");
        let e = bad("[route.upstream_tls]\ncert = \"c\"\n");
        assert!(e.message.contains("both 'cert' and 'key'"), "{e}");
        let e = bad("[route.upstream_tls]\nca = \"c\"\ninsecure_skip_verify = true\n");
        assert!(e.message.contains("no effect"), "{e}");
        let e = bad("[route.upstream_tls]\nserver_name = \"not a name\"\n");
        assert!(e.message.contains("invalid server_name"), "{e}");
        let e = bad("[route.upstream_tls]\nhandshake_timeout = \"0s\"\n");
        assert!(e.message.contains("greater than zero"), "{e}");
        let e = bad("[route.tls]\ncert = \"c\"\nkey = \"k\"\nciphers = \"all\"\n");
        assert_eq!((e.line, e.col), (9, 1), "{e}");
        let e = bad("spill_dir = \"/tmp\"\n[route.tls]\ncert = \"c\"\nkey = \"k\"\n");
        assert!(e.message.contains("spill_dir is not supported"), "{e}");
        let e = bad("[route.from_tls]\ncert = \"c\"\nkey = \"k\"\n");
        assert!(e.message.contains("not valid in a stream route"), "{e}");
        // On a connect: endpoint the table is a client table.
        let queue = "[[route]]\nname = \"q\"\nmode = \"queue\"\nfrom = \"connect:127.0.0.1:1\"\nto = \"listen:127.0.0.1:2\"\nspool = \"/tmp/q\"\n";
        let e = p(&format!("{queue}[route.from_tls]\nclient_ca = \"x\"\n"))
            .expect_err("client_ca on connect");
        assert!(e.message.contains("from_tls"), "{e}");
        let e = p(&format!("{queue}[route.to_tls]\nca = \"x\"\n")).expect_err("ca on listen");
        assert!(e.message.contains("to_tls"), "{e}");
        let e = p(&format!("{queue}[route.tls]\ncert = \"c\"\nkey = \"k\"\n"))
            .expect_err("tls in queue");
        assert!(e.message.contains("not valid in a queue route"), "{e}");
    }
}
