//! Operating spillway: the admin endpoint (metrics scraped from the real
//! process and parsed), readiness during drain, SIGHUP reloads, systemd
//! notifications. Real child processes and sockets on 127.0.0.1.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{http_get, pattern, tagged_echo, write_config, Fnv, Relay};

/// Connects through a route and reads the upstream's tag.
fn tag_via(addr: SocketAddr, len: usize) -> String {
    let mut s = TcpStream::connect(addr).expect("connect route");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut tag = vec![0u8; len];
    s.read_exact(&mut tag).expect("tag");
    String::from_utf8(tag).expect("utf-8 tag")
}

/// A parsed scrape: (metric name, sorted labels) -> value; histograms
/// contribute their `_count` and `_sum` as separate names.
struct Metrics {
    values: HashMap<(String, Vec<(String, String)>), f64>,
}

impl Metrics {
    fn scrape(admin: SocketAddr) -> Metrics {
        let (code, body) = http_get(admin, "/metrics");
        assert_eq!(code, 200, "{body}");
        check_exposition(&body);
        let parsed = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
            .expect("prometheus-parse accepts the exposition");
        assert!(!parsed.samples.is_empty());
        let mut values = HashMap::new();
        for s in parsed.samples {
            let mut labels: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            let v = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(buckets) => {
                    // Cumulative, ending with +Inf.
                    let counts: Vec<f64> = buckets.iter().map(|b| b.count).collect();
                    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
                    let last = buckets.last().expect("buckets");
                    assert!(last.less_than.is_infinite(), "{buckets:?}");
                    last.count
                }
                prometheus_parse::Value::Summary(_) => panic!("no summaries expected"),
            };
            values.insert((s.metric, labels), v);
        }
        Metrics { values }
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut l: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        l.sort();
        self.values.get(&(name.to_string(), l)).copied()
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| {
            let mut known: Vec<_> = self.values.keys().map(|k| &k.0).collect();
            known.sort();
            known.dedup();
            panic!("no sample {name}{labels:?}; names: {known:?}")
        })
    }
}

/// Structural checks a lax parser would not make: every sample belongs to
/// a declared family, names are `spillway_`, the exposition ends with EOF.
fn check_exposition(body: &str) {
    let mut families: Vec<(String, String)> = Vec::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').expect("TYPE name type");
            assert!(name.starts_with("spillway_"), "{line}");
            families.push((name.to_string(), ty.to_string()));
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).expect("sample line");
        let name = &line[..name_end];
        let value = line.rsplit(' ').next().expect("value");
        assert!(
            value.parse::<f64>().is_ok() || value == "+Inf",
            "bad value in {line}"
        );
        let (family, ty) = families.last().expect("sample before any TYPE");
        let ok = match ty.as_str() {
            "counter" => name == format!("{family}_total"),
            "gauge" => name == family,
            "histogram" => ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| name == format!("{family}{s}")),
            other => panic!("unexpected type {other}"),
        };
        assert!(ok, "sample {name} does not belong to {ty} family {family}");
    }
    assert_eq!(body.lines().last(), Some("# EOF"));
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn metrics_health_and_status_follow_the_traffic() {
    let upstream = tagged_echo("");
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    let cfg = write_config(
        dir.path(),
        &format!(
            r#"
[admin]
listen = "127.0.0.1:0"

[[route]]
name = "web"
mode = "stream"
listen = "127.0.0.1:0"
upstreams = ["{upstream}"]

[[route]]
name = "q"
mode = "queue"
from = "listen:127.0.0.1:0"
to = "listen:127.0.0.1:0"
spool = "{}"
"#,
            spool.display()
        ),
    );
    let relay = Relay::start_ready(&["run", "--config", cfg.to_str().expect("utf-8")]);
    let admin_addr = relay.admin();
    let (web, src, sink) = (
        relay.addr("web", "client"),
        relay.addr("q", "source"),
        relay.addr("q", "sink"),
    );

    let before = Metrics::scrape(admin_addr);
    assert_eq!(before.value("spillway_ready", &[]), 1.0);
    let web_in = [("route", "web"), ("direction", "in")];
    assert_eq!(before.value("spillway_bytes_total", &web_in), 0.0);
    assert_eq!(
        before.value("spillway_messages_in_total", &[("route", "q")]),
        0.0
    );
    assert_eq!(http_get(admin_addr, "/healthz").0, 200);
    assert_eq!(http_get(admin_addr, "/readyz").0, 200);
    assert_eq!(http_get(admin_addr, "/nope").0, 404);

    // Stream traffic: 100 KiB echoed.
    let data = pattern(100 << 10, 7);
    let mut c = TcpStream::connect(web).expect("connect web");
    c.write_all(&data).expect("send");
    c.shutdown(Shutdown::Write).expect("half-close");
    let mut back = Vec::new();
    c.read_to_end(&mut back).expect("echo");
    assert_eq!(back, data);
    drop(c);

    // Queue traffic: 10 lines in, 10 delivered.
    let mut p = TcpStream::connect(src).expect("producer");
    for i in 0..10 {
        writeln!(p, "message {i}").expect("produce");
    }
    drop(p);
    let mut consumer = TcpStream::connect(sink).expect("consumer");
    consumer
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.iter().filter(|&&b| b == b'\n').count() < 10 {
        let n = consumer.read(&mut buf).expect("consume");
        assert!(n > 0, "consumer got EOF early");
        got.extend_from_slice(&buf[..n]);
    }
    // While connected, the consumer is listed among the route's peers.
    let (_, body) = http_get(admin_addr, "/status");
    let status: serde_json::Value = serde_json::from_str(&body).expect("status is JSON");
    let me = consumer.local_addr().expect("local addr").to_string();
    let listed = status["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .filter(|r| r["name"] == "q")
        .flat_map(|r| r["peers"].as_array().cloned().unwrap_or_default())
        .any(|p| p["role"] == "consumer" && p["address"] == me.as_str());
    assert!(listed, "{status}");
    consumer.shutdown(Shutdown::Write).expect("leave");
    let mut rest = Vec::new();
    consumer.read_to_end(&mut rest).expect("drain");

    wait_until("the counters to move", || {
        let m = Metrics::scrape(admin_addr);
        m.value("spillway_messages_delivered_total", &[("route", "q")]) == 10.0
            && m.value(
                "spillway_connections_closed_total",
                &[("route", "web"), ("reason", "client_eof")],
            ) == 1.0
    });
    let m = Metrics::scrape(admin_addr);
    let len = data.len() as f64;
    assert_eq!(m.value("spillway_bytes_total", &web_in), len);
    assert_eq!(
        m.value(
            "spillway_bytes_total",
            &[("route", "web"), ("direction", "out")]
        ),
        len
    );
    assert_eq!(
        m.value(
            "spillway_connections_total",
            &[("route", "web"), ("role", "client")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "spillway_connections_active",
            &[("route", "web"), ("role", "client")]
        ),
        0.0
    );
    assert_eq!(
        m.value("spillway_messages_in_total", &[("route", "q")]),
        10.0
    );
    assert_eq!(
        m.value(
            "spillway_bytes_total",
            &[("route", "q"), ("direction", "in")]
        ),
        got.len() as f64
    );
    // One histogram observation per delivered message.
    assert_eq!(
        m.value("spillway_delivery_latency_seconds", &[("route", "q")]),
        10.0
    );
    assert_eq!(
        m.value(
            "spillway_queue_depth_messages",
            &[("route", "q"), ("tier", "memory")]
        ),
        0.0
    );
    assert_eq!(
        m.value(
            "spillway_consumer_connections_closed_total",
            &[("route", "q"), ("reason", "consumer_eof")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "spillway_upstream_picks_total",
            &[("route", "web"), ("upstream", &upstream.to_string())]
        ),
        1.0
    );

    let (code, body) = http_get(admin_addr, "/status");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).expect("status is JSON");
    assert_eq!(status["ready"], true);
    let routes = status["routes"].as_array().expect("routes");
    assert_eq!(routes.len(), 2);
    let q = routes.iter().find(|r| r["name"] == "q").expect("route q");
    assert_eq!(q["mode"], "queue");
    assert_eq!(q["messages_delivered"], 10);
    assert_eq!(q["depth"]["messages"], 0);
    // The consumer left and the producer is gone: no peers listed.
    assert_eq!(q["peers"].as_array().map(Vec::len), Some(0), "{q}");
    let w = routes
        .iter()
        .find(|r| r["name"] == "web")
        .expect("route web");
    assert_eq!(w["upstreams"][0]["address"], upstream.to_string());
    assert_eq!(w["bytes_in"], data.len());
}

/// SIGTERM in the middle of a transfer: readiness goes false at once, the
/// transfer completes byte-exact within the drain period, exit 0.
#[test]
fn sigterm_mid_transfer_finishes_it_and_exits_zero() {
    const TOTAL: usize = 32 << 20;
    let up = TcpListener::bind("127.0.0.1:0").expect("bind");
    let up_addr = up.local_addr().expect("addr");
    let writer = thread::spawn(move || {
        let (mut s, _) = up.accept().expect("accept");
        let data = pattern(TOTAL, 3);
        s.write_all(&data).expect("upstream write");
        let mut h = Fnv::default();
        h.update(&data);
        h.0
    });
    let mut relay = Relay::start_ready(&[
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &up_addr.to_string(),
        "--admin",
        "127.0.0.1:0",
        "--drain-timeout",
        "60s",
    ]);
    let (listen, admin) = (relay.addr("relay", "client"), relay.admin());
    let mut c = TcpStream::connect(listen).expect("client");
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0usize;
    let mut h = Fnv::default();
    // Read a little, slowly enough that most of the data is still to come.
    while got < 1 << 20 {
        let n = c.read(&mut buf).expect("read");
        assert!(n > 0);
        h.update(&buf[..n]);
        got += n;
    }
    relay.signal("TERM");
    relay.wait_metric("spillway_draining", &[], |v| v == 1.0);
    let (code, body) = http_get(admin, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    // New connections are refused once the listener is closed.
    wait_until("the listener to close", || {
        TcpStream::connect(listen).is_err()
    });
    loop {
        let n = c.read(&mut buf).expect("read during drain");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        got += n;
    }
    assert_eq!(got, TOTAL);
    assert_eq!(h.0, writer.join().expect("writer"));
    // The client is done too; the connection ends and the drain with it.
    drop(c);
    assert_eq!(relay.wait_exit(Duration::from_secs(30)), Some(0));
}

/// A stream route on a port the relay chooses.
fn stream_route(name: &str, upstream: SocketAddr) -> String {
    format!(
        "[[route]]\nname = \"{name}\"\nmode = \"stream\"\nlisten = \"127.0.0.1:0\"\nupstreams = [\"{upstream}\"]\n\n"
    )
}

/// An admin endpoint on a port the relay chooses.
const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n\n";

/// SIGHUP adds a route, removes one, changes one's upstream, and a long
/// connection on an unchanged route keeps flowing byte-exact throughout.
/// A broken file afterwards is rejected with file:line:col and changes
/// nothing.
#[test]
fn sighup_reload_applies_changes_without_dropping_connections() {
    let echo = tagged_echo("");
    let (one, two) = (tagged_echo("ONE"), tagged_echo("TWO"));
    let dir = tempfile::tempdir().expect("tempdir");
    let v1 = ADMIN.to_string()
        + &stream_route("long", echo)
        + &stream_route("gone", one)
        + &stream_route("changed", one);
    let cfg = write_config(dir.path(), &v1);
    let mut relay = Relay::start_ready(&["run", "--config", cfg.to_str().expect("utf-8")]);
    let admin = relay.admin();
    let [long, gone, changed] = ["long", "gone", "changed"].map(|r| relay.addr(r, "client"));
    assert_eq!(tag_via(changed, 3), "ONE");
    assert_eq!(tag_via(gone, 3), "ONE");

    // A long connection on "long": a writer thread streams a pattern while a
    // reader checks the echo, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let c = TcpStream::connect(long).expect("long connection");
    let mut reader = c.try_clone().expect("clone");
    let mut writer = c;
    let stop_w = Arc::clone(&stop);
    let sender = thread::spawn(move || {
        let chunk = pattern(16 << 10, 11);
        let mut sent = Fnv::default();
        let mut n = 0usize;
        while !stop_w.load(Ordering::Relaxed) {
            writer.write_all(&chunk).expect("long write");
            sent.update(&chunk);
            n += chunk.len();
            thread::sleep(Duration::from_millis(2));
        }
        writer.shutdown(Shutdown::Write).expect("half-close");
        (n, sent.0)
    });
    let receiver = thread::spawn(move || {
        let mut h = Fnv::default();
        let mut n = 0usize;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match reader.read(&mut buf).expect("long read") {
                0 => return (n, h.0),
                k => {
                    h.update(&buf[..k]);
                    n += k;
                }
            }
        }
    });

    // Reload: "gone" removed, "changed" now goes to TWO, "added" is new.
    // ("changed" keeps its listen address, so its listener stays.)
    let v2 = ADMIN.to_string()
        + &stream_route("long", echo)
        + &stream_route("changed", two)
        + &stream_route("added", two);
    write_config(dir.path(), &v2);
    relay.signal("HUP");
    relay.wait_reloads(1);
    let added = relay.addr("added", "client");
    assert_eq!(relay.addr("changed", "client"), changed);
    assert_eq!(tag_via(added, 3), "TWO");
    assert_eq!(tag_via(changed, 3), "TWO");
    wait_until("the removed route's listener to close", || {
        TcpStream::connect(gone).is_err()
    });
    let m = Metrics::scrape(admin);
    assert_eq!(
        m.value("spillway_config_reloads_total", &[("result", "success")]),
        1.0
    );
    assert!(m
        .get(
            "spillway_route_info",
            &[("route", "gone"), ("mode", "stream"), ("state", "serving")]
        )
        .is_none());

    // A broken file: rejected with its position, the old routes keep serving.
    write_config(
        dir.path(),
        &(v2.clone() + "[[route]]\nname = \"bad\"\nmode = \"stream\"\nlisten = 12\n"),
    );
    relay.signal("HUP");
    relay.wait_reloads(2);
    let log = relay.log_text();
    let cfg_name = cfg.display().to_string();
    assert!(
        log.lines()
            .any(|l| l.contains("reload rejected") && l.contains(&format!("{cfg_name}:"))),
        "{log}"
    );
    assert_eq!(tag_via(added, 3), "TWO");
    let m = Metrics::scrape(admin);
    assert_eq!(
        m.value("spillway_config_reloads_total", &[("result", "failure")]),
        1.0
    );
    assert_eq!(m.value("spillway_ready", &[]), 1.0);

    // The long connection kept flowing through all of it.
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let (sent_n, sent_h) = sender.join().expect("sender");
    let (got_n, got_h) = receiver.join().expect("receiver");
    assert!(sent_n > 0);
    assert_eq!((got_n, got_h), (sent_n, sent_h));
    let log = relay.log_text();
    assert!(
        !log.lines().any(|l| l.contains("route=long")
            && l.contains("connection closed")
            && !l.contains("client_eof")),
        "{log}"
    );
}

/// Under systemd (`Type=notify`): READY=1 once serving, RELOADING=1 then
/// READY=1 around a reload, STOPPING=1 at shutdown.
#[test]
fn sd_notify_reports_ready_reloading_and_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let cfg = write_config(dir.path(), &stream_route("r", tagged_echo("X")));
    let mut relay = Relay::start_with_env(
        &["run", "--config", cfg.to_str().expect("utf-8")],
        &[("NOTIFY_SOCKET", sock_path.to_str().expect("utf-8"))],
    );
    let recv = |sock: &UnixDatagram| -> String {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(recv(&sock).starts_with("READY=1"));
    relay.wait_ready();
    relay.signal("HUP");
    let reloading = recv(&sock);
    assert!(reloading.starts_with("RELOADING=1"), "{reloading}");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    assert!(recv(&sock).starts_with("READY=1"));
    relay.signal("TERM");
    assert!(recv(&sock).starts_with("STOPPING=1"));
    assert_eq!(relay.wait_exit(Duration::from_secs(30)), Some(0));
}

/// A queue route whose listeners are on ports the relay chooses.
fn queue_route(name: &str, spool: &std::path::Path, memory: &str) -> String {
    format!(
        "[[route]]\nname = \"{name}\"\nmode = \"queue\"\nfrom = \"listen:127.0.0.1:0\"\nto = \"listen:127.0.0.1:0\"\nspool = \"{}\"\nmemory = \"{memory}\"\n\n",
        spool.display()
    )
}

/// A queue route changed by a reload drains, closes its spool (memory tier
/// to disk), and the new route reopens the same spool: every queued message
/// arrives once, in order.
#[test]
fn reloading_a_changed_queue_route_hands_the_spool_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    let cfg = write_config(
        dir.path(),
        &(ADMIN.to_string() + &queue_route("q", &spool, "64MiB")),
    );
    let mut relay = Relay::start_ready(&["run", "--config", cfg.to_str().expect("utf-8")]);
    let mut p = TcpStream::connect(relay.addr("q", "source")).expect("producer");
    for i in 0..1000 {
        writeln!(p, "before {i:04}").expect("produce");
    }
    drop(p);
    relay.wait_metric(
        "spillway_producer_connections_closed_total",
        &[("route", "q")],
        |v| v == 1.0,
    );

    // memory = 0 and a new max_message (not a setting a running route
    // takes in place): a changed route, restarted on the same spool.
    let changed = queue_route("q", &spool, "0") + "max_message = \"64KiB\"\n";
    write_config(dir.path(), &(ADMIN.to_string() + &changed));
    relay.signal("HUP");
    // Handled once the new route serves, on new ports.
    relay.wait_reloads(1);
    assert_eq!(
        relay
            .log_text()
            .matches("route changed; draining the old one")
            .count(),
        1,
        "{}",
        relay.log_text()
    );
    let mut p = TcpStream::connect(relay.addr("q", "source")).expect("producer after reload");
    for i in 0..1000 {
        writeln!(p, "after {i:04}").expect("produce");
    }
    drop(p);

    let mut c = TcpStream::connect(relay.addr("q", "sink")).expect("consumer");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    while got.iter().filter(|&&b| b == b'\n').count() < 2000 {
        let n = c.read(&mut buf).expect("consume");
        assert!(n > 0, "EOF after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8(got).expect("utf-8");
    let want: Vec<String> = (0..1000)
        .map(|i| format!("before {i:04}"))
        .chain((0..1000).map(|i| format!("after {i:04}")))
        .collect();
    assert_eq!(text.lines().collect::<Vec<_>>(), want);
    c.shutdown(Shutdown::Write).expect("leave");
    relay.signal("TERM");
    assert_eq!(relay.wait_exit(Duration::from_secs(30)), Some(0));
}

/// `--log-format json`: one JSON object per line; a connection's end is one
/// line with its reason and byte counts as fields.
#[test]
fn json_logs_have_one_structured_line_per_connection() {
    let upstream = tagged_echo("");
    let relay = Relay::start_ready(&[
        "--log-format",
        "json",
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &upstream.to_string(),
    ]);
    let mut c = TcpStream::connect(relay.addr("relay", "client")).expect("connect");
    c.write_all(b"hello").expect("send");
    c.shutdown(Shutdown::Write).expect("half-close");
    let mut back = Vec::new();
    c.read_to_end(&mut back).expect("echo");
    assert_eq!(back, b"hello");
    drop(c);
    let log = relay.wait_log("connection closed");
    let mut closed = Vec::new();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v["message"] == "connection closed" {
            closed.push(v);
        }
    }
    assert_eq!(closed.len(), 1, "{log}");
    let v = &closed[0];
    assert_eq!(v["reason"], "client_eof");
    assert_eq!(v["bytes_in"], 5);
    assert_eq!(v["bytes_out"], 5);
    assert_eq!(v["route"], "relay");
    assert_eq!(v["level"], "INFO");
}

/// A reload whose new route cannot start (its port is taken) counts as a
/// failed reload and names the route; the routes that were running keep
/// serving.
#[test]
fn reload_with_a_route_that_cannot_start_is_a_failure_the_rest_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    // An address the test holds (bound, never released) for the whole test.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr");
    let upstream = tagged_echo("UP");
    let cfg = write_config(
        dir.path(),
        &(ADMIN.to_string() + &stream_route("a", upstream)),
    );
    let mut relay = Relay::start_ready(&["run", "--config", cfg.to_str().expect("utf-8")]);
    let (a, admin) = (relay.addr("a", "client"), relay.admin());

    write_config(
        dir.path(),
        &(ADMIN.to_string()
            + &stream_route("a", upstream)
            + &stream_route("b", upstream).replace("127.0.0.1:0", &taken_addr.to_string())),
    );
    relay.signal("HUP");
    relay.wait_reloads(1);
    let log = relay.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("route=b") && l.contains("the route is not running")),
        "{log}"
    );
    let m = Metrics::scrape(admin);
    assert_eq!(
        m.value("spillway_config_reloads_total", &[("result", "failure")]),
        1.0
    );
    assert_eq!(tag_via(a, 2), "UP");
    drop(taken);
}
