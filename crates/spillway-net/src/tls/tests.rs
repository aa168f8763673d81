use std::io;
use std::path::PathBuf;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::verify::{base64_decode, base64_encode};
use super::*;

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
        // A peer that does not speak TLS will not start to: persistent, as
        // a bare InvalidData is for `classify`.
        assert!(e.is_persistent());
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
    assert!(!e.is_persistent());
}

#[test]
fn one_table_classifies_rustls_errors_alike_on_every_path() {
    use super::error::{from_io, Side};
    use crate::classify::{classify, ErrorClass::*};
    use rustls::{AlertDescription as A, Error as E};
    let wrap = |e: &E| io::Error::new(io::ErrorKind::InvalidData, e.clone());
    let cases = [
        (
            E::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
            Persistent,
        ),
        (E::NoCertificatesPresented, Persistent),
        (
            E::PeerIncompatible(rustls::PeerIncompatible::NoCipherSuitesInCommon),
            Persistent,
        ),
        (E::AlertReceived(A::HandshakeFailure), Persistent),
        (E::AlertReceived(A::ProtocolVersion), Persistent),
        (E::AlertReceived(A::UnknownCA), Persistent),
        (E::AlertReceived(A::CertificateRequired), Persistent),
        (E::AlertReceived(A::DecodeError), Transient),
        (E::DecryptError, Transient),
        (E::General("internal".into()), Transient),
    ];
    for (e, want) in cases {
        // Found inside an io::Error, as the table says, ...
        assert_eq!(classify(&wrap(&e)), want, "{e:?} inside an io::Error");
        assert_eq!(TlsError::from_rustls(&e).class(), want, "{e:?}");
        // ... and from either end's handshake, alone or wrapped again.
        for side in [
            Side::Server(None),
            Side::Client {
                ca: None,
                name: "localhost",
            },
        ] {
            let got = from_io(wrap(&e), &side);
            assert_eq!(got.class(), want, "{e:?}: {got}");
            let again = io::Error::new(io::ErrorKind::InvalidData, got);
            assert_eq!(classify(&again), want, "{e:?}: {again}");
        }
    }
    // The transport failing mid-handshake is classified as I/O.
    let emfile = from_io(
        io::Error::from_raw_os_error(libc::EMFILE),
        &Side::Server(None),
    );
    assert_eq!(emfile.class(), Resource);
    let reset = from_io(
        io::Error::from_raw_os_error(libc::ECONNRESET),
        &Side::Server(None),
    );
    assert_eq!(reset.class(), Transient);
}
