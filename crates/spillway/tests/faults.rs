//! Both modes through a fault-injection proxy (tests/faultproxy): latency,
//! bandwidth limits, tiny writes, stalls, resets and black holes between
//! the `spillway` binary and its peers, and the timeouts that bound them
//! (write stall, producer read-idle, keepalive and `TCP_USER_TIMEOUT`).
//!
//! What must hold, fault by fault:
//! - stream mode: both directions byte-exact; where the fault breaks the
//!   connection (reset, black hole, dead peer), a clean failure: what
//!   arrived is a prefix, the end is an error (never a clean EOF that would
//!   pass a truncated stream for a whole one), and the relay logs the reason;
//! - queue mode: every message delivered exactly once, in order; only a
//!   consumer reset (or a relay-side abort: write stall, dead peer) may give
//!   duplicates, and only at the cut, within `redeliver_on_reset`.
//!
//! No timing asserts: every wait is bounded, and every assertion is about
//! what arrived and what the relay said.

mod common;
mod faultproxy;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use faultproxy::{Dir, FaultProxy, Options, Toxics};

const LIMIT: Duration = Duration::from_secs(60);

/// Starts `spillway run` on a config of one route and waits until it
/// serves; returns the relay and the directory holding the config (and
/// spool).
fn run_relay(route: &str) -> (Relay, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = route.replace("@DIR@", &dir.path().display().to_string());
    let cfg = write_config(dir.path(), &text);
    let relay = Relay::start_ready(&["run", "--config", cfg.to_str().expect("utf-8 path")]);
    (relay, dir)
}

/// Lines of the relay log containing `needle`, with the value of `key`.
fn reasons(relay: &Relay, needle: &str) -> Vec<String> {
    relay
        .log_text()
        .lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| field(l, "reason").map(str::to_string))
        .collect()
}

/// Waits (bounded) until a `needle` log line has reason `reason`.
fn wait_reason(relay: &Relay, needle: &str, reason: &str) {
    let deadline = Instant::now() + LIMIT;
    while !reasons(relay, needle).iter().any(|r| r == reason) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} with reason={reason}:\n{}",
            relay.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ================================================================ stream ===

/// How one side of a conversation ended.
#[derive(Debug)]
struct SideResult {
    got: Vec<u8>,
    /// `Ok` for a clean EOF, the error otherwise.
    end: Result<(), std::io::ErrorKind>,
}

/// Sends `data` then half-closes (in a thread), and reads to the end. A
/// reset is reported once per socket: if the writer's `write` got it, the
/// reader then sees 0, so the writer's error counts as the end too.
fn converse(mut s: TcpStream, data: Vec<u8>) -> SideResult {
    s.set_read_timeout(Some(LIMIT)).expect("timeout");
    let mut w = s.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        w.write_all(&data)?;
        w.shutdown(Shutdown::Write)
    });
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let end = loop {
        match s.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e.kind()),
        }
    };
    let wrote = writer.join().expect("writer thread");
    let end = match (end, wrote) {
        (Ok(()), Err(e)) if e.kind() != std::io::ErrorKind::NotConnected => Err(e.kind()),
        (end, _) => end,
    };
    SideResult { got, end }
}

/// An upstream that answers every connection with `data` (sent while it
/// reads the client's bytes to the end), reporting what it received.
fn conversation_upstream(data: Vec<u8>) -> (SocketAddr, mpsc::Receiver<SideResult>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming().take(64) {
            let Ok(s) = s else { return };
            let tx = tx.clone();
            let data = data.clone();
            std::thread::spawn(move || {
                let _ = tx.send(converse(s, data));
            });
        }
    });
    (a, rx)
}

/// An upstream that reads whatever comes and never answers or closes
/// (for at most a minute).
fn silent_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let _ = s.set_read_timeout(Some(LIMIT));
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
            std::thread::sleep(LIMIT);
        }
    });
    a
}

/// Stream route `s`, on a port the relay chooses (`relay.addr("s", "client")`).
fn stream_route(upstream: SocketAddr, extra: &str) -> String {
    format!(
        "[[route]]\nname = \"s\"\nmode = \"stream\"\nlisten = \"127.0.0.1:0\"\nupstreams = [\"{upstream}\"]\n{extra}\n"
    )
}

/// One relay (splice or spill) between two proxies:
/// client -> front -> spillway -> back -> upstream.
struct StreamRig {
    relay: Relay,
    _dir: tempfile::TempDir,
    front: FaultProxy,
    back: FaultProxy,
    upstream_rx: std::sync::Mutex<mpsc::Receiver<SideResult>>,
}

fn stream_rig(answer: Vec<u8>, extra: &str) -> StreamRig {
    let (up, upstream_rx) = conversation_upstream(answer);
    let back = FaultProxy::start(up);
    let (relay, dir) = run_relay(&stream_route(back.addr(), extra));
    let listen = relay.addr("s", "client");
    let front = FaultProxy::start(listen);
    StreamRig {
        relay,
        _dir: dir,
        front,
        back,
        upstream_rx: std::sync::Mutex::new(upstream_rx),
    }
}

impl StreamRig {
    /// One conversation through both proxies: (client side, upstream side).
    fn converse(&self, request: &[u8]) -> (SideResult, SideResult) {
        let c = TcpStream::connect(self.front.addr()).expect("connect");
        let client = converse(c, request.to_vec());
        let upstream = self
            .upstream_rx
            .lock()
            .expect("upstream results")
            .recv_timeout(LIMIT)
            .expect("upstream conversation");
        (client, upstream)
    }
}

fn toxic_cases() -> Vec<(&'static str, Toxics)> {
    vec![
        (
            "latency",
            Toxics {
                latency: Duration::from_millis(20),
                ..Toxics::default()
            },
        ),
        (
            "bandwidth",
            Toxics {
                bandwidth: Some(8 << 20),
                ..Toxics::default()
            },
        ),
        (
            "slice",
            Toxics {
                slice: true,
                ..Toxics::default()
            },
        ),
    ]
}

/// Sets `t` on both directions of `p`.
fn both(p: &FaultProxy, t: Toxics) {
    p.set(Dir::Up, t);
    p.set(Dir::Down, t);
}

/// Stalls both directions of each proxy, runs `f`, and clears the stall
/// after `d` while `f` is still running.
fn stalled_for<T: Send>(proxies: &[&FaultProxy], d: Duration, f: impl FnOnce() -> T + Send) -> T {
    let stalled = Toxics {
        stall: true,
        ..Toxics::default()
    };
    for p in proxies {
        both(p, stalled);
    }
    std::thread::scope(|s| {
        let h = s.spawn(f);
        std::thread::sleep(d);
        for p in proxies {
            p.clear();
        }
        h.join().expect("stalled work")
    })
}

#[test]
fn stream_is_byte_exact_through_latency_bandwidth_slicing_and_stalls() {
    let _heavy = heavy();
    let request = pattern(100 << 10, 11);
    let answer = pattern(200 << 10, 12);
    let spill_dir = tempfile::tempdir().expect("spill dir");
    let spill = format!("spill_dir = \"{}\"\n", spill_dir.path().display());
    for (mode, extra) in [("splice", String::new()), ("spill", spill)] {
        let rig = stream_rig(answer.clone(), &extra);
        for (name, t) in toxic_cases() {
            for (place, proxy) in [("front", &rig.front), ("back", &rig.back)] {
                both(proxy, t);
                let (client, upstream) = rig.converse(&request);
                proxy.clear();
                let what = format!("{mode}, {name} at the {place}");
                assert_eq!(client.end, Ok(()), "{what}: client end");
                assert_eq!(upstream.end, Ok(()), "{what}: upstream end");
                assert!(client.got == answer, "{what}: answer corrupted");
                assert!(upstream.got == request, "{what}: request corrupted");
            }
        }
        // Stall then resume, at either proxy: a pause, nothing lost.
        for (place, proxy) in [("front", &rig.front), ("back", &rig.back)] {
            let (client, upstream) = stalled_for(&[proxy], Duration::from_millis(400), || {
                rig.converse(&request)
            });
            let what = format!("{mode}, stall at the {place}");
            assert_eq!(client.end, Ok(()), "{what}");
            assert!(client.got == answer, "{what}: answer corrupted");
            assert!(upstream.got == request, "{what}: request corrupted");
        }
        rig.relay.wait_log_lines("connection closed", 8, LIMIT);
        let closes = reasons(&rig.relay, "connection closed");
        assert_eq!(closes.len(), 8, "{mode}: {closes:?}");
        assert!(
            closes
                .iter()
                .all(|r| r == "client_eof" || r == "upstream_eof"),
            "{mode}: {closes:?}"
        );
    }
}

#[test]
fn stream_reset_mid_stream_ends_in_a_reset_never_a_clean_eof() {
    let _heavy = heavy();
    let request = pattern(2 << 20, 21);
    let answer = pattern(2 << 20, 22);
    let rig = stream_rig(answer.clone(), "");
    // The upstream side resets after 100 KB of the answer.
    rig.back.set(
        Dir::Down,
        Toxics {
            reset_after: Some(100_000),
            ..Toxics::default()
        },
    );
    let (client, _upstream) = rig.converse(&request);
    assert!(
        client.end.is_err(),
        "client saw a clean end: {:?}",
        client.end
    );
    assert!(client.got.len() <= 100_000, "more than the proxy passed");
    assert!(answer.starts_with(&client.got), "client got a non-prefix");
    wait_reason(&rig.relay, "connection closed", "upstream_reset");
    rig.back.clear();

    // The client side resets after 100 KB of the request.
    rig.front.set(
        Dir::Up,
        Toxics {
            reset_after: Some(100_000),
            ..Toxics::default()
        },
    );
    let (client, upstream) = rig.converse(&request);
    assert!(
        upstream.end.is_err(),
        "upstream saw a clean end of a cut request"
    );
    // The answer direction was not cut by the toxic: the client may have
    // read all of it and its EOF before the reset reached it (its own
    // writes had all gone into its kernel buffer). A clean end must then
    // come with the whole answer; otherwise the end is an error.
    assert!(answer.starts_with(&client.got), "client got a non-prefix");
    assert!(
        client.end.is_err() || client.got == answer,
        "client saw a clean end after {} of {} bytes",
        client.got.len(),
        answer.len()
    );
    assert!(
        request.starts_with(&upstream.got),
        "upstream got a non-prefix"
    );
    assert!(upstream.got.len() <= 100_000);
    wait_reason(&rig.relay, "connection closed", "client_reset");
}

#[test]
fn stream_black_hole_is_a_logged_idle_timeout_and_a_dead_upstream_is_found_by_keepalive() {
    let _heavy = heavy();
    let request = pattern(64 << 10, 31);
    let answer = pattern(64 << 10, 32);
    // Short keepalive, no user timeout: keepalive alone must find it.
    let rig = stream_rig(
        answer.clone(),
        "idle_timeout = \"2s\"\ntcp_keepalive_idle = \"1s\"\ntcp_keepalive_interval = \"1s\"\ntcp_keepalive_count = 2\ntcp_user_timeout = \"0s\"",
    );
    // Black hole: the upstream's answer is read and thrown away.
    rig.back.set(
        Dir::Down,
        Toxics {
            blackhole: true,
            ..Toxics::default()
        },
    );
    let (client, upstream) = rig.converse(&request);
    assert!(client.got.is_empty(), "bytes came out of a black hole");
    assert!(upstream.got == request, "the request was damaged");
    wait_reason(&rig.relay, "connection closed", "idle_timeout");
    rig.back.clear();

    // A pulled cable between spillway and the upstream, on an idle
    // connection: no FIN, no RST, no ACK. Keepalive must find it (the idle
    // timeout is far away), and the client is reset, not left hanging.
    let up = silent_upstream();
    let back = FaultProxy::start(up);
    let (relay, _dir) = run_relay(&stream_route(
        back.addr(),
        "tcp_keepalive_idle = \"1s\"\ntcp_keepalive_interval = \"1s\"\ntcp_keepalive_count = 2\ntcp_user_timeout = \"0s\"",
    ));
    let mut c = TcpStream::connect(relay.addr("s", "client")).expect("connect");
    back.wait_connections(1, LIMIT);
    c.write_all(b"hello").expect("write");
    let deadline = Instant::now() + LIMIT;
    while back.forwarded(Dir::Up) < 5 {
        assert!(
            Instant::now() < deadline,
            "request never reached the upstream"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    back.unplug_all();
    c.set_read_timeout(Some(LIMIT)).expect("timeout");
    let mut buf = [0u8; 16];
    let r = c.read(&mut buf);
    assert!(
        r.is_err(),
        "client not reset after the upstream died: {r:?}"
    );
    wait_reason(&relay, "connection closed", "peer_timeout");
    let line = relay
        .log_text()
        .lines()
        .find(|l| l.contains("reason=peer_timeout"))
        .map(str::to_string)
        .unwrap_or_default();
    assert_eq!(field(&line, "side"), Some("upstream"), "{line}");
}

#[test]
fn stream_reader_that_stops_is_cut_for_write_stall_while_the_upstream_finishes() {
    let _heavy = heavy();
    const TOTAL: usize = 48 << 20;
    let spill_dir = tempfile::tempdir().expect("spill dir");
    let answer = pattern(TOTAL, 41);
    let rig = stream_rig(
        answer,
        &format!(
            "write_stall_timeout = \"1s\"\nspill_dir = \"{}\"",
            spill_dir.path().display()
        ),
    );
    // The client side stops reading: spillway's writes to it stall.
    rig.front.set(
        Dir::Down,
        Toxics {
            stall: true,
            ..Toxics::default()
        },
    );
    let c = TcpStream::connect(rig.front.addr()).expect("connect");
    let upstream = rig
        .upstream_rx
        .lock()
        .expect("upstream results")
        .recv_timeout(LIMIT)
        .expect("upstream");
    // With spill the upstream was never held back: it sent all and then
    // read the client's (empty) request to the end or a reset.
    assert!(upstream.got.is_empty());
    wait_reason(&rig.relay, "connection closed", "write_stall");
    let line = rig
        .relay
        .log_text()
        .lines()
        .find(|l| l.contains("reason=write_stall"))
        .map(str::to_string)
        .unwrap_or_default();
    assert_eq!(field(&line, "side"), Some("client"), "{line}");
    // Resume: what the client gets is a prefix, ended by a reset.
    rig.front.clear();
    let client = converse(c, Vec::new());
    assert!(
        client.end.is_err(),
        "client saw a clean end of a cut stream"
    );
    assert!(client.got.len() < TOTAL);
    assert!(pattern(client.got.len(), 41) == client.got, "non-prefix");
}

// ================================================================= queue ===

/// Queue route `q`, on ports the relay chooses.
fn queue_route(extra: &str) -> String {
    format!(
        "[[route]]\nname = \"q\"\nmode = \"queue\"\nfrom = \"listen:127.0.0.1:0\"\nto = \"listen:127.0.0.1:0\"\nspool = \"@DIR@/spool\"\n{extra}\n"
    )
}

struct QueueRig {
    relay: Relay,
    _dir: tempfile::TempDir,
    source: SocketAddr,
    sink: SocketAddr,
}

fn queue_rig(extra: &str) -> QueueRig {
    let (relay, dir) = run_relay(&queue_route(extra));
    let (source, sink) = (relay.addr("q", "source"), relay.addr("q", "sink"));
    QueueRig {
        relay,
        _dir: dir,
        source,
        sink,
    }
}

const LINE: usize = 13;

fn lines(from: u64, to: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity((to - from) as usize * LINE);
    for i in from..to {
        v.extend_from_slice(format!("{i:012}\n").as_bytes());
    }
    v
}

/// Sends lines `from..to` to `addr` and closes.
fn produce(addr: SocketAddr, from: u64, to: u64) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).expect("producer connect");
        s.write_all(&lines(from, to)).expect("produce");
        s.shutdown(Shutdown::Write).expect("producer shutdown");
        // Wait for the relay's close so every byte was read.
        let mut b = [0u8; 1];
        s.set_read_timeout(Some(LIMIT)).expect("timeout");
        let _ = s.read(&mut b);
    })
}

/// Parses complete lines (a partial last line is dropped, as a consumer
/// that lost its connection would).
fn parse(buf: &[u8]) -> Vec<u64> {
    buf.split(|b| *b == b'\n')
        .filter(|l| l.len() == LINE - 1)
        .map(|l| {
            std::str::from_utf8(l)
                .ok()
                .and_then(|s| s.parse().ok())
                .expect("a well-formed line")
        })
        .collect()
}

/// Reads until line `last` arrives (then leaves cleanly: half-close, read
/// to EOF), or until the connection fails. Returns the lines and whether it
/// ended with an error.
fn consume(addr: SocketAddr, last: u64) -> (Vec<u64>, bool) {
    let mut s = TcpStream::connect(addr).expect("consumer connect");
    s.set_read_timeout(Some(LIMIT)).expect("timeout");
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let mut left = false;
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return (parse(&buf), false),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("consumer waited {LIMIT:?} for line {last}")
            }
            Err(_) => return (parse(&buf), true),
        }
        if !left && buf.len() >= LINE && parse(&buf[buf.len() - LINE..]) == [last] {
            let _ = s.shutdown(Shutdown::Write);
            left = true;
        }
    }
}

/// Every line of `0..total` arrived; each connection's lines are
/// consecutive; a connection starts no later than the line after the last
/// one before it (no gap). Returns the number of duplicates.
fn check_delivery(conns: &[Vec<u64>], total: u64) -> u64 {
    let mut next = 0u64;
    let mut dups = 0u64;
    for (i, c) in conns.iter().enumerate() {
        for w in c.windows(2) {
            assert_eq!(w[1], w[0] + 1, "connection {i}: out of order or gap");
        }
        if let Some(&first) = c.first() {
            assert!(first <= next, "connection {i}: lines {next}..{first} lost");
            dups += next - first;
            next = next.max(c.last().map_or(0, |l| l + 1));
        }
    }
    assert_eq!(next, total, "not every line arrived");
    dups
}

/// Duplicates after an abortive end are bounded by what the relay re-sends:
/// the `redeliver_on_reset` window of delivered messages, plus messages in
/// flight (at most the 2 MiB consumer window) that the peer had in fact
/// received since the last acknowledgement poll.
fn dups_within(dups: u64, redeliver_on_reset: usize) -> bool {
    const CONSUMER_WINDOW: usize = 2 << 20;
    dups as usize * LINE <= redeliver_on_reset + CONSUMER_WINDOW
}

#[test]
fn queue_delivers_exactly_once_in_order_through_every_toxic() {
    let _heavy = heavy();
    let rig = queue_rig("");
    let pin = FaultProxy::start(rig.source);
    let pout = FaultProxy::start(rig.sink);
    const N: u64 = 20_000;
    let mut cases: Vec<(&str, Toxics)> = toxic_cases();
    cases.push(("stall", Toxics::default()));
    let mut conns = Vec::new();
    for (round, (name, t)) in cases.iter().enumerate() {
        let (from, to) = (round as u64 * N, (round as u64 + 1) * N);
        pin.set(Dir::Up, *t);
        pout.set(Dir::Down, *t);
        let run = || {
            let producer = produce(pin.addr(), from, to);
            let got = consume(pout.addr(), to - 1);
            producer.join().expect("producer");
            got
        };
        let (got, broken) = if *name == "stall" {
            // Both links stop for a while (shorter than the write-stall
            // timeout), then resume: a pause, not a failure.
            stalled_for(&[&pin, &pout], Duration::from_millis(500), run)
        } else {
            run()
        };
        assert!(!broken, "{name}: consumer connection failed");
        assert_eq!(got.first(), Some(&from), "{name}");
        assert_eq!(got.last(), Some(&(to - 1)), "{name}");
        conns.push(got);
        pin.clear();
        pout.clear();
    }
    let dups = check_delivery(&conns, cases.len() as u64 * N);
    assert_eq!(dups, 0, "duplicates without any reset");
    let ends = reasons(&rig.relay, "consumer closed");
    assert!(ends.iter().all(|r| r == "consumer_eof"), "{ends:?}");
}

#[test]
fn queue_consumer_reset_then_reconnect_loses_nothing() {
    let _heavy = heavy();
    // The proxy holds little, and redeliver_on_reset covers what it holds:
    // what its kernel acknowledged but never passed on is re-sent.
    let rig = queue_rig("redeliver_on_reset = \"2MiB\"");
    let pout = FaultProxy::with_options(
        rig.sink,
        Options {
            socket_buffer: Some(64 << 10),
            queue: 2,
        },
    );
    const N: u64 = 200_000;
    produce(rig.source, 0, N).join().expect("producer");
    pout.set(
        Dir::Down,
        Toxics {
            reset_after: Some(500_000),
            ..Toxics::default()
        },
    );
    let (first, broken) = consume(pout.addr(), N - 1);
    assert!(broken, "the reset toxic did not reset the consumer");
    wait_reason(&rig.relay, "consumer closed", "consumer_reset");
    pout.clear();
    let (second, broken) = consume(pout.addr(), N - 1);
    assert!(!broken);
    let dups = check_delivery(&[first, second], N);
    // Duplicates only at the cut, at most the redelivery window.
    assert!(dups_within(dups, 2 << 20), "{dups} duplicates");
}

#[test]
fn queue_stalled_consumer_is_cut_and_its_messages_go_to_the_next() {
    let _heavy = heavy();
    let rig = queue_rig("write_stall_timeout = \"1s\"");
    let pout = FaultProxy::with_options(
        rig.sink,
        Options {
            socket_buffer: Some(64 << 10),
            queue: 2,
        },
    );
    const N: u64 = 400_000;
    produce(rig.source, 0, N).join().expect("producer");
    // The consumer's link stops reading from spillway.
    pout.set(
        Dir::Down,
        Toxics {
            stall: true,
            ..Toxics::default()
        },
    );
    let first = std::thread::spawn({
        let a = pout.addr();
        move || consume(a, N - 1)
    });
    wait_reason(&rig.relay, "consumer closed", "write_stall");
    // The link comes back: the first consumer gets what the proxy held,
    // then the reset.
    pout.clear();
    let (first, broken) = first.join().expect("first consumer");
    assert!(broken, "the stalled consumer was not reset");
    let (second, broken) = consume(rig.sink, N - 1);
    assert!(!broken);
    let dups = check_delivery(&[first, second], N);
    assert!(dups_within(dups, 256 << 10), "{dups} duplicates");
}

#[test]
fn queue_producer_that_never_sends_is_closed_but_a_slow_one_is_not() {
    let _heavy = heavy();
    let rig = queue_rig("read_idle_timeout = \"1s\"");
    // A slowloris: connects (through a black hole) and never sends.
    let pin = FaultProxy::start(rig.source);
    pin.set(
        Dir::Up,
        Toxics {
            blackhole: true,
            ..Toxics::default()
        },
    );
    let mut idle = TcpStream::connect(pin.addr()).expect("connect");
    idle.write_all(b"swallowed\n").expect("write");
    wait_reason(&rig.relay, "producer closed", "read_idle");
    idle.set_read_timeout(Some(LIMIT)).expect("timeout");
    let mut b = [0u8; 1];
    assert!(
        matches!(idle.read(&mut b), Ok(0) | Err(_)),
        "the idle producer was not closed"
    );

    // A slow producer (2 KB/s, about 3 s for everything) keeps sending, so
    // it is never idle for a second: all of it arrives.
    let slow = FaultProxy::start(rig.source);
    slow.set(
        Dir::Up,
        Toxics {
            bandwidth: Some(2000),
            ..Toxics::default()
        },
    );
    const N: u64 = 460;
    produce(slow.addr(), 0, N).join().expect("producer");
    let (got, broken) = consume(rig.sink, N - 1);
    assert!(!broken);
    assert_eq!(check_delivery(&[got], N), 0);
    let ends = reasons(&rig.relay, "producer closed");
    assert_eq!(ends, vec!["read_idle", "eof"], "{}", rig.relay.log_text());
}

#[test]
fn queue_unplugged_consumer_is_found_by_the_user_timeout() {
    let _heavy = heavy();
    let rig = queue_rig(
        "tcp_user_timeout = \"2s\"\ntcp_keepalive_idle = \"1s\"\ntcp_keepalive_interval = \"1s\"\nwrite_stall_timeout = \"60s\"",
    );
    let pout = FaultProxy::with_options(
        rig.sink,
        Options {
            socket_buffer: Some(64 << 10),
            queue: 2,
        },
    );
    const N: u64 = 100_000;
    produce(rig.source, 0, 1000).join().expect("producer");
    let first = std::thread::spawn({
        let a = pout.addr();
        move || {
            let mut s = TcpStream::connect(a).expect("connect");
            s.set_read_timeout(Some(LIMIT)).expect("timeout");
            let mut buf = vec![0u8; 1000 * LINE];
            s.read_exact(&mut buf).expect("first lines");
            (parse(&buf), s)
        }
    });
    let (first, _hung) = first.join().expect("first consumer");
    assert_eq!(first.len(), 1000);
    // The cable is pulled, then more messages come: they are in flight to a
    // peer that never acknowledges.
    pout.unplug_all();
    produce(rig.source, 1000, N).join().expect("producer");
    wait_reason(&rig.relay, "consumer closed", "peer_timeout");
    let (second, broken) = consume(rig.sink, N - 1);
    assert!(!broken);
    let dups = check_delivery(&[first, second], N);
    assert!(dups_within(dups, 256 << 10), "{dups} duplicates");
}

#[test]
fn max_lifetime_resets_a_stream_and_cuts_a_consumer_cleanly() {
    let _heavy = heavy();
    // Stream: an idle connection past its lifetime is reset on both sides.
    let up = silent_upstream();
    let (relay, _dir) = run_relay(&stream_route(up, "max_lifetime = \"1s\""));
    let mut c = TcpStream::connect(relay.addr("s", "client")).expect("connect");
    c.set_read_timeout(Some(LIMIT)).expect("timeout");
    let mut b = [0u8; 1];
    let r = c.read(&mut b);
    assert!(
        r.is_err(),
        "expected a reset at the end of the lifetime: {r:?}"
    );
    wait_reason(&relay, "connection closed", "max_lifetime");

    // Queue: a consumer behind a slow link is cut at a message boundary
    // when its lifetime ends; the next connection goes on from there, with
    // nothing lost and nothing twice.
    // The proxy holds little (small socket buffers, two chunks queued):
    // otherwise the kernel buffers on both sides of it take everything the
    // relay has within the lifetime, and there is nothing left to cut.
    // The relay's send buffer (up to tcp_wmem's 4 MB) still takes a lot:
    // about 250k lines were through before the cut here, and at most
    // 4 MB + the proxy's 0.3 MB + 1 s at 1 MB/s (420k) can be.
    let rig = queue_rig("max_lifetime = \"1s\"");
    let pout = FaultProxy::with_options(
        rig.sink,
        Options {
            socket_buffer: Some(64 << 10),
            queue: 2,
        },
    );
    pout.set(
        Dir::Down,
        Toxics {
            bandwidth: Some(1_000_000),
            ..Toxics::default()
        },
    );
    const N: u64 = 600_000;
    produce(rig.source, 0, N).join().expect("producer");
    let (first, broken) = consume(pout.addr(), N - 1);
    assert!(!broken, "a lifetime cut must be clean");
    assert!(
        first.last() < Some(&(N - 1)),
        "the slow consumer was not cut"
    );
    let mut conns = vec![first];
    pout.clear();
    // Later connections may be cut too (each lives 1 s): go on until done.
    for _ in 0..20 {
        if conns.last().and_then(|c| c.last()) == Some(&(N - 1)) {
            break;
        }
        let (more, broken) = consume(rig.sink, N - 1);
        assert!(!broken);
        conns.push(more);
    }
    assert_eq!(check_delivery(&conns, N), 0, "duplicates after clean cuts");
    wait_reason(&rig.relay, "consumer closed", "max_lifetime");
}
