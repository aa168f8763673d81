//! TLS end to end with the real binary: certificates are generated here
//! (rcgen), nothing is committed. Stream mode terminating and originating,
//! queue mode on both ends, mTLS, and each verification failure with the
//! message an operator would read in the log.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use spillway_net::tls::{
    ClientTlsConfig, MaybeTls, ServerTlsConfig, SpkiPin, TlsClient, TlsServer,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ------------------------------------------------------------------ PKI ---

/// A CA, a server certificate (localhost, 127.0.0.1), a client
/// certificate, and an unrelated second CA, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    server_pin: String,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).expect("write pem")
        };
        let root = ca("spillway test ca");
        let other = ca("someone else's ca");
        let server_key = KeyPair::generate().expect("key");
        let server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("params")
            .signed_by(&server_key, &root)
            .expect("server cert");
        let client_key = KeyPair::generate().expect("key");
        let client = CertificateParams::new(vec!["client.test".to_string()])
            .expect("params")
            .signed_by(&client_key, &root)
            .expect("client cert");
        write("ca.pem", &root.pem());
        write("other-ca.pem", &other.pem());
        write("server.pem", &server.pem());
        write("server.key", &server_key.serialize_pem());
        write("client.pem", &client.pem());
        write("client.key", &client_key.serialize_pem());
        let server_pin = SpkiPin::of_certificate(server.der())
            .expect("spki")
            .to_string();
        Pki { dir, server_pin }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A path for a TOML string.
    fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn server(&self) -> TlsServer {
        TlsServer::load(&ServerTlsConfig::new(
            self.path("server.pem"),
            self.path("server.key"),
        ))
        .expect("tls server")
    }

    fn client(&self, with_cert: bool) -> TlsClient {
        let mut cfg = ClientTlsConfig {
            ca: Some(self.path("ca.pem")),
            ..ClientTlsConfig::default()
        };
        if with_cert {
            cfg.cert = Some(self.path("client.pem"));
            cfg.key = Some(self.path("client.key"));
        }
        TlsClient::load(&cfg).expect("tls client")
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

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `spillway run` on a config file with `text`, once it serves.
fn start_config(dir: &Path, text: &str) -> Relay {
    let path = write_config(dir, text);
    Relay::start_ready(&["run", "--config", path.to_str().expect("utf8")])
}

/// The port stream route `route` listens on.
fn client_port(relay: &Relay, route: &str) -> u16 {
    relay.addr(route, "client").port()
}

async fn tls_connect(client: &TlsClient, port: u16) -> std::io::Result<MaybeTls> {
    let tcp = TcpStream::connect(local(port)).await?;
    client
        .connect(tcp, &format!("localhost:{port}"))
        .await
        .map(MaybeTls::from)
        .map_err(std::io::Error::other)
}

/// Writes `data`, half-closes, and reads to EOF concurrently; returns
/// what was read.
async fn converse(stream: MaybeTls, data: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let (mut r, mut w) = tokio::io::split(stream);
    let writer = async move {
        for chunk in data.chunks(100_000) {
            w.write_all(chunk).await?;
        }
        w.shutdown().await?;
        Ok::<_, std::io::Error>(w)
    };
    let reader = async move {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await?;
        Ok::<_, std::io::Error>(got)
    };
    let (w, got) = tokio::join!(writer, reader);
    w?;
    got
}

/// A TLS upstream that, per connection, reads to EOF (the client's
/// half-close), then answers with `reply(received)` and closes. Sends what
/// it received on the channel.
async fn tls_upstream(
    server: TlsServer,
    reply: fn(&[u8]) -> Vec<u8>,
) -> (u16, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let server = server.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(s) = server.accept(tcp).await else {
                    return;
                };
                let mut s = MaybeTls::from(s);
                let mut got = Vec::new();
                if s.read_to_end(&mut got).await.is_err() {
                    return;
                }
                let answer = reply(&got);
                let _ = tx.send(got);
                for chunk in answer.chunks(100_000) {
                    if s.write_all(chunk).await.is_err() {
                        return;
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    (port, rx)
}

fn reply_pattern(got: &[u8]) -> Vec<u8> {
    pattern(3 << 20, got.len() as u64)
}

// --------------------------------------------------------------- stream ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_terminates_and_originates_tls_byte_exact_with_half_close() {
    let pki = Pki::new();
    let (up_port, mut received) = tls_upstream(pki.server(), reply_pattern).await;
    let relay = start_config(
        pki.dir.path(),
        &format!(
            r#"
[[route]]
name = "tls-both"
mode = "stream"
listen = "127.0.0.1:0"
upstreams = ["localhost:{up_port}"]
[route.tls]
cert = "{cert}"
key = "{key}"
[route.upstream_tls]
ca = "{ca}"
pin_sha256 = ["{pin}"]
"#,
            cert = pki.p("server.pem"),
            key = pki.p("server.key"),
            ca = pki.p("ca.pem"),
            pin = pki.server_pin,
        ),
    );
    let listen = client_port(&relay, "tls-both");
    let client = pki.client(false);
    for (round, len) in [(1u64, 4 << 20), (2, 0), (3, 100_001)] {
        let data = pattern(len, round);
        let s = tls_connect(&client, listen).await.expect("tls to relay");
        let back = converse(s, data.clone()).await.expect("converse");
        let upstream_got = received.recv().await.expect("upstream saw the connection");
        assert!(
            upstream_got == data,
            "round {round}: client->upstream bytes differ"
        );
        assert!(
            back == reply_pattern(&data),
            "round {round}: upstream->client bytes differ"
        );
    }
    let lines = relay.wait_log_lines("connection closed", 3, Duration::from_secs(10));
    for l in &lines {
        assert_eq!(field(l, "reason"), Some("client_eof"), "{l}");
    }
    assert!(lines.iter().any(
        |l| field(l, "bytes_in") == Some("4194304") && field(l, "bytes_out") == Some("3145728")
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_accepts_a_good_client_certificate_and_refuses_none() {
    let pki = Pki::new();
    // Plain upstream: TLS is terminated at the relay only.
    let up = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let up_port = up.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = up.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                if s.read_to_end(&mut got).await.is_ok() {
                    got.reverse();
                    let _ = s.write_all(&got).await;
                }
            });
        }
    });
    let relay = start_config(
        pki.dir.path(),
        &format!(
            r#"
[[route]]
name = "mtls"
mode = "stream"
listen = "127.0.0.1:0"
upstreams = ["127.0.0.1:{up_port}"]
[route.tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
"#,
            cert = pki.p("server.pem"),
            key = pki.p("server.key"),
            ca = pki.p("ca.pem"),
        ),
    );
    let listen = client_port(&relay, "mtls");
    let s = tls_connect(&pki.client(true), listen)
        .await
        .expect("client with certificate");
    let back = converse(s, b"hello mtls".to_vec()).await.expect("converse");
    assert_eq!(back, b"sltm olleh");

    // Without a certificate: TLS 1.3 lets the client finish its side; the
    // refusal arrives on the first read.
    let refused = match tls_connect(&pki.client(false), listen).await {
        Err(_) => true,
        Ok(s) => match converse(s, b"let me in".to_vec()).await {
            Err(_) => true,
            Ok(back) => back.is_empty(),
        },
    };
    assert!(refused, "a client without a certificate got through");
    // The warning comes first, then the connection's close line: wait for
    // the later one (waiting for the first raced the second).
    let text = relay.wait_log("reason=tls_handshake");
    assert!(text.contains("presented no certificate"), "{text}");
    assert!(text.contains("TLS handshake with client failed"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_hostname_and_pin_are_each_rejected_with_a_clear_log_line() {
    let pki = Pki::new();
    let (up_port, _received) = tls_upstream(pki.server(), reply_pattern).await;
    let route = |name: &str, upstream: &str, table: &str| {
        format!(
            "[[route]]\nname = \"{name}\"\nmode = \"stream\"\nlisten = \"127.0.0.1:0\"\n\
             upstreams = [\"{upstream}\"]\nconnect_tries = 1\n[route.upstream_tls]\n{table}\n"
        )
    };
    let wrong_pin = SpkiPin::of_spki(b"not the server's key").to_string();
    let config = [
        route(
            "wrong-ca",
            &format!("localhost:{up_port}"),
            &format!("ca = \"{}\"", pki.p("other-ca.pem")),
        ),
        route(
            "wrong-name",
            &format!("127.0.0.1:{up_port}"),
            &format!(
                "ca = \"{}\"\nserver_name = \"db.example.com\"",
                pki.p("ca.pem")
            ),
        ),
        route(
            "wrong-pin",
            &format!("localhost:{up_port}"),
            &format!(
                "ca = \"{}\"\npin_sha256 = [\"{wrong_pin}\"]",
                pki.p("ca.pem")
            ),
        ),
    ]
    .join("\n");
    let relay = start_config(pki.dir.path(), &config);
    let ports = ["wrong-ca", "wrong-name", "wrong-pin"].map(|r| client_port(&relay, r));
    for port in ports {
        let mut s = TcpStream::connect(local(port)).await.expect("connect");
        let _ = s.write_all(b"hi").await;
        let mut buf = Vec::new();
        // The relay closes: no upstream could be used.
        let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await;
        assert!(buf.is_empty());
    }
    let lines = relay.wait_log_lines("upstream TLS handshake failed", 3, Duration::from_secs(20));
    let line = |route: &str| {
        lines
            .iter()
            .find(|l| l.contains(&format!("route={route}")))
            .unwrap_or_else(|| panic!("no line for {route}: {lines:?}"))
            .clone()
    };
    let ca = line("wrong-ca");
    assert!(
        ca.contains("server certificate not trusted by CA file") && ca.contains("other-ca.pem"),
        "{ca}"
    );
    assert!(ca.contains("persistent=true"), "{ca}");
    let name = line("wrong-name");
    assert!(
        name.contains("hostname mismatch") && name.contains("db.example.com"),
        "{name}"
    );
    let pin = line("wrong-pin");
    assert!(
        pin.contains("SPKI pin mismatch") && pin.contains(&wrong_pin),
        "{pin}"
    );
    let closed = relay.wait_log_lines("connection closed", 3, Duration::from_secs(10));
    assert!(
        closed
            .iter()
            .all(|l| field(l, "reason") == Some("no_upstream")),
        "{closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_a_tls_port_is_closed_logged_and_the_relay_keeps_serving() {
    let pki = Pki::new();
    let (up_port, mut received) = tls_upstream(pki.server(), |got| got.to_vec()).await;
    let relay = start_config(
        pki.dir.path(),
        &format!(
            r#"
[admin]
listen = "127.0.0.1:0"

[[route]]
name = "tls-in"
mode = "stream"
listen = "127.0.0.1:0"
upstreams = ["localhost:{up_port}"]
[route.tls]
cert = "{cert}"
key = "{key}"
handshake_timeout = "2s"
[route.upstream_tls]
ca = "{ca}"
"#,
            cert = pki.p("server.pem"),
            key = pki.p("server.key"),
            ca = pki.p("ca.pem"),
        ),
    );
    let listen = client_port(&relay, "tls-in");
    // A plain-text client, random bytes, and a client that sends nothing.
    let junk: [&[u8]; 2] = [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &pattern(4096, 7)];
    for j in junk {
        let mut s = TcpStream::connect(local(listen)).await.expect("connect");
        s.write_all(j).await.expect("write junk");
        let mut buf = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await;
        assert!(r.is_ok(), "the relay did not close a garbage connection");
        // At most a TLS alert comes back, never relayed data.
        assert!(buf.len() < 64, "{} bytes came back", buf.len());
    }
    let mut silent = TcpStream::connect(local(listen)).await.expect("connect");
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(20), silent.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "a silent client was not timed out");
    let closed = relay.wait_log_lines("reason=tls_handshake", 3, Duration::from_secs(20));
    assert_eq!(closed.len(), 3, "{closed:?}");
    let text = relay.log_text();
    assert!(text.contains("not a TLS handshake"), "{text}");
    assert!(text.contains("kind=not_tls"), "{text}");
    // Nothing reached the upstream, and the relay still serves TLS.
    assert!(received.try_recv().is_err());
    let s = tls_connect(&pki.client(false), listen)
        .await
        .expect("tls after garbage");
    let back = converse(s, b"still here".to_vec()).await.expect("converse");
    assert_eq!(back, b"still here");
    // Counted, and exported.
    let admin = relay.admin();
    let (code, body) = tokio::task::spawn_blocking(move || http_get(admin, "/metrics"))
        .await
        .expect("scrape");
    assert_eq!(code, 200);
    let has = |needle: &str| body.lines().any(|l| l == needle);
    assert!(
        has(r#"spillway_tls_handshake_failures_total{route="tls-in",role="client"} 3"#),
        "{body}"
    );
    assert!(
        has(r#"spillway_connections_closed_total{route="tls-in",reason="tls_handshake"} 3"#),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshake_failures_are_counted() {
    use spillway::config::StreamRoute;
    use spillway::stream::spill::SpillBudget;
    use spillway::stream::{CloseReason, StreamServer};
    let pki = Pki::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let up = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let up_addr = up.local_addr().expect("addr").to_string();
    let mut route = StreamRoute::new("count", format!("127.0.0.1:{port}"), vec![up_addr]);
    route.tls = Some(ServerTlsConfig::new(
        pki.path("server.pem"),
        pki.path("server.key"),
    ));
    let server =
        Arc::new(StreamServer::new(route, Arc::new(SpillBudget::new(1 << 20))).expect("server"));
    let token = tokio_util::sync::CancellationToken::new();
    tokio::spawn(Arc::clone(&server).serve(listener, token.clone(), Duration::from_secs(1)));
    for _ in 0..3 {
        let mut s = TcpStream::connect(local(port)).await.expect("connect");
        s.write_all(b"\x00\x01garbage\r\n").await.expect("write");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.stats().closed(CloseReason::TlsHandshake) < 3
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.stats().closed(CloseReason::TlsHandshake), 3);
    assert_eq!(
        server
            .stats()
            .tls_handshake_failures
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    // No upstream connection was made for them.
    assert_eq!(
        server
            .stats()
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    drop(up);
    token.cancel();
}

#[test]
fn insecure_skip_verify_is_logged_loudly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = start_config(
        dir.path(),
        r#"
[[route]]
name = "lab"
mode = "stream"
listen = "127.0.0.1:0"
upstreams = ["127.0.0.1:9"]
[route.upstream_tls]
insecure_skip_verify = true
"#,
    );
    let text = relay.wait_log("verification is DISABLED");
    let line = text
        .lines()
        .find(|l| l.contains("verification is DISABLED"))
        .expect("line");
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("tests only"), "{line}");
}

// ---------------------------------------------------------------- queue ---

fn numbered_lines(from: u64, to: u64) -> Vec<u8> {
    let mut v = Vec::new();
    for n in from..to {
        v.extend_from_slice(format!("message {n:08}\n").as_bytes());
    }
    v
}

/// Reads from `s` until `got` holds at least `want` lines (bounded by `limit`).
async fn read_lines(s: &mut MaybeTls, got: &mut Vec<u8>, want: usize, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = vec![0u8; 64 << 10];
    let mut lines = got.iter().filter(|&&b| b == b'\n').count();
    while lines < want {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("only {lines} of {want} lines"))
            .expect("read");
        assert!(n > 0, "closed early after {lines} lines");
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count();
        got.extend_from_slice(&buf[..n]);
    }
}

/// Leaves the way a consumer should: half-close (close_notify + FIN), then
/// read what is still in flight to EOF.
async fn leave(mut s: MaybeTls, got: &mut Vec<u8>) {
    s.shutdown().await.expect("half-close");
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(got))
        .await
        .expect("EOF in time")
        .expect("read to EOF");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_over_tls_listen_both_ends_delivers_every_message_once_in_order() {
    let pki = Pki::new();
    let spool = pki.path("spool");
    let relay = start_config(
        pki.dir.path(),
        &format!(
            r#"
[[route]]
name = "q"
mode = "queue"
from = "listen:127.0.0.1:0"
to = "listen:127.0.0.1:0"
spool = "{spool}"
[route.from_tls]
cert = "{cert}"
key = "{key}"
[route.to_tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
"#,
            spool = spool.display(),
            cert = pki.p("server.pem"),
            key = pki.p("server.key"),
            ca = pki.p("ca.pem"),
        ),
    );
    let (pp, cp) = (
        relay.addr("q", "source").port(),
        relay.addr("q", "sink").port(),
    );
    const N: u64 = 1_000_000;
    let mut producer = tls_connect(&pki.client(false), pp).await.expect("producer");
    let data = numbered_lines(0, N);
    for chunk in data.chunks(64 << 10) {
        producer.write_all(chunk).await.expect("produce");
    }
    producer.shutdown().await.expect("producer close_notify");
    let mut rest = Vec::new();
    let _ = producer.read_to_end(&mut rest).await;
    let closed = relay.wait_log_lines("producer closed", 1, Duration::from_secs(30));
    assert_eq!(field(&closed[0], "messages"), Some("1000000"), "{closed:?}");

    // A consumer without a certificate is refused.
    let refused = match tls_connect(&pki.client(false), cp).await {
        Err(_) => true,
        Ok(mut s) => {
            let mut b = Vec::new();
            matches!(
                tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut b)).await,
                Ok(Err(_)) | Ok(Ok(0))
            )
        }
    };
    assert!(refused, "a consumer without a certificate was served");
    relay.wait_log("presented no certificate");

    // Two consumers in turn: the first leaves half way, the second takes
    // the rest. Together: every message once, in order.
    let client = pki.client(true);
    let mut got = Vec::new();
    let mut first = tls_connect(&client, cp).await.expect("consumer 1");
    read_lines(&mut first, &mut got, 50_000, Duration::from_secs(60)).await;
    leave(first, &mut got).await;
    let first_lines = got.iter().filter(|&&b| b == b'\n').count() as u64;
    assert!(first_lines < N, "the first consumer got everything");
    eprintln!("first consumer: {first_lines} lines");
    let mut second = tls_connect(&client, cp).await.expect("consumer 2");
    read_lines(&mut second, &mut got, N as usize, Duration::from_secs(60)).await;
    leave(second, &mut got).await;
    assert_eq!(got.len(), data.len(), "duplicates or loss");
    assert!(got == data, "messages out of order or altered");
    let lines = relay.wait_log_lines("consumer closed", 3, Duration::from_secs(10));
    let refused: Vec<&String> = lines
        .iter()
        .filter(|l| field(l, "reason") == Some("tls_handshake"))
        .collect();
    assert_eq!(refused.len(), 1, "{lines:?}");
    let lines: Vec<&String> = lines
        .iter()
        .filter(|l| field(l, "reason") != Some("tls_handshake"))
        .collect();
    let delivered: u64 = lines
        .iter()
        .map(|l| {
            field(l, "delivered")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(delivered, N, "delivery accounting over TLS: {lines:?}");
    assert!(
        lines.iter().all(|l| field(l, "requeued") == Some("0")),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_dials_tls_producer_and_mtls_consumer() {
    let pki = Pki::new();
    const N: u64 = 100_000;
    // The producer: a TLS server that pushes N lines on its first
    // connection, then accepts (and holds) redials without sending.
    let pl = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let pport = pl.local_addr().expect("addr").port();
    let pserver = pki.server();
    tokio::spawn(async move {
        let mut first = true;
        let mut held = Vec::new();
        while let Ok((tcp, _)) = pl.accept().await {
            let Ok(s) = pserver.accept(tcp).await else {
                continue;
            };
            let mut s = MaybeTls::from(s);
            if first {
                first = false;
                let data = numbered_lines(0, N);
                for chunk in data.chunks(50_000) {
                    s.write_all(chunk).await.expect("push");
                }
                let _ = s.shutdown().await;
            }
            held.push(s);
        }
    });
    // The consumer: a TLS server that requires a client certificate.
    let cl = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let cport = cl.local_addr().expect("addr").port();
    let mut ccfg = ServerTlsConfig::new(pki.path("server.pem"), pki.path("server.key"));
    ccfg.client_ca = Some(pki.path("ca.pem"));
    let cserver = TlsServer::load(&ccfg).expect("mtls server");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        dir.path(),
        &format!(
            r#"
[[route]]
name = "dialer"
mode = "queue"
from = "connect:127.0.0.1:{pport}"
to = "connect:127.0.0.1:{cport}"
spool = "{spool}"
[route.from_tls]
ca = "{ca}"
server_name = "localhost"
[route.to_tls]
ca = "{ca}"
pin_sha256 = ["{pin}"]
cert = "{ccert}"
key = "{ckey}"
"#,
            spool = dir.path().join("spool").display(),
            ca = pki.p("ca.pem"),
            pin = pki.server_pin,
            ccert = pki.p("client.pem"),
            ckey = pki.p("client.key"),
        ),
    );
    let relay = Relay::start_ready(&["run", "--config", path.to_str().expect("utf8")]);
    let (tcp, _) = tokio::time::timeout(Duration::from_secs(20), cl.accept())
        .await
        .expect("the relay dialed the consumer")
        .expect("accept");
    let mut s = MaybeTls::from(
        cserver
            .accept(tcp)
            .await
            .expect("client certificate accepted"),
    );
    let mut got = Vec::new();
    read_lines(&mut s, &mut got, N as usize, Duration::from_secs(60)).await;
    leave(s, &mut got).await;
    assert!(
        got == numbered_lines(0, N),
        "{} bytes, not the {N} lines in order",
        got.len()
    );
    let lines = relay.wait_log_lines("consumer closed", 1, Duration::from_secs(10));
    assert_eq!(field(&lines[0], "delivered"), Some("100000"), "{lines:?}");
    assert_eq!(
        field(&lines[0], "reason"),
        Some("consumer_eof"),
        "{lines:?}"
    );
}

// --------------------------------------------------------------- reload ---

/// An echo upstream that answers each chunk at once (a long-lived,
/// interactive connection).
async fn echo_upstream() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

async fn echo_once(s: &mut MaybeTls, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.expect("write");
    s.flush().await.expect("flush");
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("read echo");
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_certificates_and_keeps_established_connections() {
    let old = Pki::new();
    let new = Pki::new();
    let live = tempfile::tempdir().expect("tempdir");
    let install = |pki: &Pki| {
        for f in ["server.pem", "server.key"] {
            std::fs::copy(pki.path(f), live.path().join(f)).expect("install cert");
        }
    };
    install(&old);
    let up = echo_upstream().await;
    let mut relay = start_config(
        live.path(),
        &format!(
            r#"
[[route]]
name = "renewed"
mode = "stream"
listen = "127.0.0.1:0"
upstreams = ["127.0.0.1:{up}"]
[route.tls]
cert = "{cert}"
key = "{key}"
"#,
            cert = live.path().join("server.pem").display(),
            key = live.path().join("server.key").display(),
        ),
    );
    let listen = client_port(&relay, "renewed");
    let mut established = tls_connect(&old.client(false), listen)
        .await
        .expect("old certificate");
    assert_eq!(echo_once(&mut established, b"before").await, b"before");

    // Renew: new files, new CA, then SIGHUP.
    install(&new);
    relay.signal("HUP");
    relay.wait_reloads(1);
    let log = relay.log_text();
    let reloaded = log
        .lines()
        .find(|l| l.contains("configuration reloaded"))
        .unwrap_or_else(|| panic!("no reload logged:\n{log}"));
    assert_eq!(field(reloaded, "result"), Some("success"), "{reloaded}");

    let mut fresh = tls_connect(&new.client(false), listen)
        .await
        .expect("new connections get the new certificate");
    assert_eq!(echo_once(&mut fresh, b"fresh").await, b"fresh");
    assert!(
        tls_connect(&old.client(false), listen).await.is_err(),
        "the old certificate is still served"
    );
    // The connection made before the reload is untouched.
    assert_eq!(echo_once(&mut established, b"after").await, b"after");

    // A broken file on reload: an error naming it, the files in use stay.
    std::fs::write(live.path().join("server.key"), "garbage\n").expect("break key");
    relay.signal("HUP");
    relay.wait_reloads(2);
    let text = relay.log_text();
    assert!(text.contains("TLS files not reloaded"), "{text}");
    assert!(text.contains("server.key"), "{text}");
    let mut again = tls_connect(&new.client(false), listen)
        .await
        .expect("still the new certificate");
    assert_eq!(echo_once(&mut again, b"again").await, b"again");
    assert_eq!(echo_once(&mut established, b"still").await, b"still");
}

// ---------------------------------------------------------- measurement ---

/// An upstream that reads each connection to EOF, discarding, then closes.
async fn discard_upstream(tls: Option<TlsServer>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                let mut s = match tls {
                    Some(t) => match t.accept(tcp).await {
                        Ok(s) => MaybeTls::from(s),
                        Err(_) => return,
                    },
                    None => MaybeTls::Plain(tcp),
                };
                let mut buf = vec![0u8; 256 << 10];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    port
}

/// Sends `total` bytes and half-closes; returns MB/s until the far end closed.
async fn push(mut s: MaybeTls, total: usize) -> f64 {
    let chunk = vec![0x5au8; 256 << 10];
    let start = std::time::Instant::now();
    let mut sent = 0;
    while sent < total {
        s.write_all(&chunk).await.expect("push");
        sent += chunk.len();
    }
    s.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    sent as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// Not a test: prints throughput figures for the README. Run with
/// `cargo test --release -p spillway --test tls -- --ignored --nocapture measure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, run by hand in release mode"]
async fn measure_tls_throughput() {
    let pki = Pki::new();
    let plain_up = discard_upstream(None).await;
    let tls_up = discard_upstream(Some(pki.server())).await;
    let tls = format!(
        "cert = \"{}\"\nkey = \"{}\"\n",
        pki.p("server.pem"),
        pki.p("server.key")
    );
    let config = format!(
        r#"
[[route]]
name = "plain"
mode = "stream"
listen = "127.0.0.1:0"
upstreams = ["127.0.0.1:{plain_up}"]

[[route]]
name = "tls-in"
mode = "stream"
listen = "127.0.0.1:0"
upstreams = ["127.0.0.1:{plain_up}"]
[route.tls]
{tls}
[[route]]
name = "tls-both"
mode = "stream"
listen = "127.0.0.1:0"
upstreams = ["localhost:{tls_up}"]
[route.tls]
{tls}[route.upstream_tls]
ca = "{ca}"

[[route]]
name = "q-plain"
mode = "queue"
from = "listen:127.0.0.1:0"
to = "listen:127.0.0.1:0"
spool = "{spool1}"
fsync = "never"

[[route]]
name = "q-tls"
mode = "queue"
from = "listen:127.0.0.1:0"
to = "listen:127.0.0.1:0"
spool = "{spool2}"
fsync = "never"
[route.from_tls]
{tls}[route.to_tls]
{tls}"#,
        ca = pki.p("ca.pem"),
        spool1 = pki.path("spool1").display(),
        spool2 = pki.path("spool2").display(),
    );
    let relay = start_config(pki.dir.path(), &config);
    let [p_plain, p_in, p_both] = ["plain", "tls-in", "tls-both"].map(|r| client_port(&relay, r));
    let port = |route: &str, role: &str| relay.addr(route, role).port();
    let (q_plain_from, q_plain_to) = (port("q-plain", "source"), port("q-plain", "sink"));
    let (q_tls_from, q_tls_to) = (port("q-tls", "source"), port("q-tls", "sink"));
    let client = pki.client(false);
    const TOTAL: usize = 512 << 20;
    for round in 0..3 {
        let direct_plain = push(
            MaybeTls::Plain(TcpStream::connect(local(plain_up)).await.expect("c")),
            TOTAL,
        )
        .await;
        let direct_tls = push(tls_connect(&client, tls_up).await.expect("c"), TOTAL).await;
        let relay_plain = push(
            MaybeTls::Plain(TcpStream::connect(local(p_plain)).await.expect("c")),
            TOTAL,
        )
        .await;
        let relay_in = push(tls_connect(&client, p_in).await.expect("c"), TOTAL).await;
        let relay_both = push(tls_connect(&client, p_both).await.expect("c"), TOTAL).await;
        println!(
            "stream round {round}: MB/s direct plain {direct_plain:.0}, direct TLS {direct_tls:.0}, \
             relay plain (splice) {relay_plain:.0}, relay TLS->plain {relay_in:.0}, relay TLS->TLS {relay_both:.0}"
        );
    }
    // Queue: 1M lines of 64 bytes through each route, consumer connected first.
    const LINES: u64 = 1_000_000;
    let line = |n: u64| format!("{n:063}\n");
    for round in 0..2 {
        for (name, from, to, tls) in [
            ("plain", q_plain_from, q_plain_to, false),
            ("tls", q_tls_from, q_tls_to, true),
        ] {
            let mut consumer = if tls {
                tls_connect(&client, to).await.expect("consumer")
            } else {
                MaybeTls::Plain(TcpStream::connect(local(to)).await.expect("consumer"))
            };
            let mut producer = if tls {
                tls_connect(&client, from).await.expect("producer")
            } else {
                MaybeTls::Plain(TcpStream::connect(local(from)).await.expect("producer"))
            };
            let start = std::time::Instant::now();
            let writer = tokio::spawn(async move {
                let mut batch = String::new();
                for n in 0..LINES {
                    batch.push_str(&line(n));
                    if batch.len() > (256 << 10) {
                        producer.write_all(batch.as_bytes()).await.expect("produce");
                        batch.clear();
                    }
                }
                producer.write_all(batch.as_bytes()).await.expect("produce");
                producer.shutdown().await.expect("close");
                let mut rest = Vec::new();
                let _ = producer.read_to_end(&mut rest).await;
            });
            let mut got = Vec::new();
            read_lines(
                &mut consumer,
                &mut got,
                LINES as usize,
                Duration::from_secs(300),
            )
            .await;
            let secs = start.elapsed().as_secs_f64();
            writer.await.expect("writer");
            leave(consumer, &mut got).await;
            assert_eq!(got.len() as u64, LINES * 64);
            println!(
                "queue round {round} {name}: {LINES} x 64 B in {secs:.2} s = {:.0} k msg/s, {:.0} MB/s",
                LINES as f64 / secs / 1e3,
                (LINES * 64) as f64 / secs / 1e6
            );
        }
    }
}

// ------------------------------------------------- timers and backoff ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tls_connection_is_closed_by_idle_timeout() {
    let pki = Pki::new();
    let up = echo_upstream().await;
    let relay = start_config(
        pki.dir.path(),
        &format!(
            r#"
[[route]]
name = "idle"
mode = "stream"
listen = "127.0.0.1:0"
upstreams = ["127.0.0.1:{up}"]
idle_timeout = "1s"
[route.tls]
cert = "{cert}"
key = "{key}"
"#,
            cert = pki.p("server.pem"),
            key = pki.p("server.key"),
        ),
    );
    let listen = client_port(&relay, "idle");
    let mut s = tls_connect(&pki.client(false), listen).await.expect("tls");
    assert_eq!(echo_once(&mut s, b"hello").await, b"hello");
    // Then silence: the relay closes the connection.
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut rest)).await;
    assert!(r.is_ok(), "an idle TLS connection was not closed");
    let lines = relay.wait_log_lines("connection closed", 1, Duration::from_secs(10));
    assert_eq!(
        field(&lines[0], "reason"),
        Some("idle_timeout"),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_certificate_on_a_queue_dial_is_not_retried_in_a_loop() {
    let pki = Pki::new();
    // A TLS producer peer whose certificate the relay will not trust.
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let server = pki.server();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let server = server.clone();
            tokio::spawn(async move {
                let _ = server.accept(tcp).await;
            });
        }
    });
    let relay = start_config(
        pki.dir.path(),
        &format!(
            r#"
[[route]]
name = "distrust"
mode = "queue"
from = "connect:127.0.0.1:{port}"
to = "listen:127.0.0.1:0"
spool = "{spool}"
[route.from_tls]
ca = "{other}"
server_name = "localhost"
"#,
            spool = pki.path("spool").display(),
            other = pki.p("other-ca.pem"),
        ),
    );
    let lines = relay.wait_log_lines("TLS handshake failed", 1, Duration::from_secs(20));
    let l = &lines[0];
    assert!(
        l.contains("server certificate not trusted by CA file") && l.contains("other-ca.pem"),
        "{l}"
    );
    assert_eq!(field(l, "class"), Some("persistent"), "{l}");
    // A persistent failure waits at least half the backoff cap (15 s by
    // default) before the next attempt: over the next few seconds, no redial.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let n = accepted.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        n, 1,
        "the relay redialed {n} times after a rejected certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_consumer_that_stops_reading_is_cut_and_the_next_gets_everything() {
    let pki = Pki::new();
    let tls = format!(
        "cert = \"{}\"\nkey = \"{}\"\n",
        pki.p("server.pem"),
        pki.p("server.key")
    );
    let mut relay = start_config(
        pki.dir.path(),
        &format!(
            r#"
[admin]
listen = "127.0.0.1:0"

[[route]]
name = "stall"
mode = "queue"
from = "listen:127.0.0.1:0"
to = "listen:127.0.0.1:0"
spool = "{spool}"
write_stall_timeout = "1s"
[route.from_tls]
{tls}[route.to_tls]
{tls}"#,
            spool = pki.path("spool").display(),
        ),
    );
    let (pp, cp) = (
        relay.addr("stall", "source").port(),
        relay.addr("stall", "sink").port(),
    );
    const N: u64 = 300_000;
    let data = numbered_lines(0, N);
    let mut producer = tls_connect(&pki.client(false), pp).await.expect("producer");
    for chunk in data.chunks(64 << 10) {
        producer.write_all(chunk).await.expect("produce");
    }
    producer.shutdown().await.expect("close");
    relay.wait_metric(
        "spillway_producer_connections_closed_total",
        &[("route", "stall")],
        |v| v >= 1.0,
    );

    // A consumer with a tiny receive buffer that never reads: its kernel
    // holds almost nothing, so nearly everything stays unacknowledged.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let tcp = socket.connect(local(cp)).await.expect("connect");
    let stalled = pki
        .client(false)
        .connect(tcp, &format!("localhost:{cp}"))
        .await
        .expect("handshake");
    let cut = relay.wait_log_lines("consumer closed", 1, Duration::from_secs(30));
    assert_eq!(field(&cut[0], "reason"), Some("write_stall"), "{cut:?}");
    drop(stalled);

    let mut next = tls_connect(&pki.client(false), cp).await.expect("consumer");
    let mut got = Vec::new();
    read_lines(&mut next, &mut got, N as usize, Duration::from_secs(60)).await;
    leave(next, &mut got).await;
    assert!(
        got == data,
        "{} bytes, not the {N} lines once in order",
        got.len()
    );
}

#[test]
fn the_tls_example_config_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tls.toml");
    let out = std::process::Command::new(bin())
        .args(["check", "--config", path.to_str().expect("utf8")])
        .output()
        .expect("run check");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The ack protocol over TLS on both ends: a confirming producer and an
/// acking consumer (text encoding), every message once, in order; the
/// relay reads the consumer's frames through the TLS layer it drives by
/// hand (`wire.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_protocol_over_tls_on_both_ends() {
    let pki = Pki::new();
    let spool = pki.path("spool");
    let relay = start_config(
        pki.dir.path(),
        &format!(
            r#"
[[route]]
name = "q"
mode = "queue"
from = "listen:127.0.0.1:0"
to = "listen:127.0.0.1:0"
spool = "{spool}"
from_protocol = "ack"
to_protocol = "ack"
[route.from_tls]
cert = "{cert}"
key = "{key}"
[route.to_tls]
cert = "{cert}"
key = "{key}"
"#,
            spool = spool.display(),
            cert = pki.p("server.pem"),
            key = pki.p("server.key"),
        ),
    );
    let (pp, cp) = (
        relay.addr("q", "source").port(),
        relay.addr("q", "sink").port(),
    );
    const N: u64 = 2000;
    let mut p = tls_connect(&pki.client(false), pp).await.expect("producer");
    let mut out = b"SPILLWAY 1 role=producer encoding=text\n".to_vec();
    for i in 0..N {
        let body = format!("m{i}");
        out.extend_from_slice(format!("PUB {}\n{body}\n", body.len()).as_bytes());
    }
    p.write_all(&out).await.expect("publish");
    let mut answers = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    while !String::from_utf8_lossy(&answers).contains(&format!("CONF {N}\n")) {
        let n = tokio::time::timeout(Duration::from_secs(20), p.read(&mut buf))
            .await
            .expect("confirms in time")
            .expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answers));
        answers.extend_from_slice(&buf[..n]);
    }

    let mut c = tls_connect(&pki.client(false), cp).await.expect("consumer");
    c.write_all(b"SPILLWAY 1 role=consumer encoding=text window=100\n")
        .await
        .expect("hello");
    let mut text = Vec::new();
    let mut bodies = Vec::new();
    while bodies.len() < N as usize {
        let n = tokio::time::timeout(Duration::from_secs(20), c.read(&mut buf))
            .await
            .expect("messages in time")
            .expect("read");
        assert!(n > 0, "the relay closed the consumer");
        text.extend_from_slice(&buf[..n]);
        // Whole frames: "MSG seq attempt len\nbody\n" (bodies hold no newline here).
        let mut last = None;
        while let Some(i) = text.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = text.drain(..=i).collect();
            let line = String::from_utf8(line).expect("text");
            if let Some(rest) = line.strip_prefix("MSG ") {
                last = rest.split(' ').next().map(str::to_string);
            } else if !line.starts_with("OK ") {
                bodies.push(line.trim_end().to_string());
            }
        }
        if let Some(seq) = last {
            c.write_all(format!("ACK {seq}\n").as_bytes())
                .await
                .expect("ack");
        }
    }
    let want: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies, want);
    let log = relay.log_text();
    assert!(!log.contains("protocol error"), "{log}");
}
