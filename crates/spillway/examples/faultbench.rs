//! What each fault does to throughput and delivery: spillway (the release
//! binary, as a child process) between peers on 127.0.0.1, with the test
//! tree's fault-injection proxy (tests/faultproxy) on its links. Driven by
//! `bench/faults.sh`; prints a markdown table.
//!
//! Stream mode: a client uploads a pattern through
//! `client -> spillway -> proxy -> upstream`; the upstream checks every byte
//! (FNV-1a of the pattern). Queue mode: 64-byte lines numbered 0..N through
//! `producer -> proxy -> spillway -> proxy -> consumer`; the consumer counts
//! lost, duplicated and reordered lines over all its connections.
//!
//! Usage: faultbench BIN [stream|queue|all] [quick]
//! Every wait is bounded (60 s); every peer and relay stops at the end.

#[path = "../tests/faultproxy/mod.rs"]
mod faultproxy;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use faultproxy::{Dir, FaultProxy, Options, Toxics};

const LIMIT: Duration = Duration::from_secs(60);

fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

struct Relay {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Relay {
    fn start(bin: &Path, route: &str, ready: &[SocketAddr]) -> Relay {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("spillway.toml");
        let text = route.replace("@DIR@", &dir.path().display().to_string());
        std::fs::write(&cfg, text).expect("config");
        let log = dir.path().join("relay.log");
        let child = Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn spillway");
        let relay = Relay {
            child,
            log,
            _dir: dir,
        };
        for a in ready {
            relay.wait_log(&format!("listen={a}"));
        }
        relay
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + LIMIT;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// The close reasons logged so far, in order.
    fn reasons(&self, needle: &str) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("reason="))
                    .map(|r| r.trim_matches('"').to_string())
            })
            .collect()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
    }
}

fn chunk_pattern() -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

struct Row {
    mode: &'static str,
    fault: String,
    amount: String,
    throughput: String,
    delivery: String,
    relay: String,
}

// ================================================================ stream ===

/// The upstream: reads to EOF or error, hashing; reports (bytes, hash, clean end, when).
fn sink_upstream() -> (
    SocketAddr,
    std::sync::mpsc::Receiver<(u64, u64, bool, Instant)>,
) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("addr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let _ = s.set_read_timeout(Some(LIMIT));
            let mut h = Fnv::new();
            let mut n = 0u64;
            let mut buf = vec![0u8; 256 << 10];
            let clean = loop {
                match s.read(&mut buf) {
                    Ok(0) => break true,
                    Ok(k) => {
                        h.update(&buf[..k]);
                        n += k as u64;
                    }
                    Err(_) => break false,
                }
            };
            let _ = tx.send((n, h.0, clean, Instant::now()));
            if clean {
                let _ = s.shutdown(Shutdown::Write);
            }
            // Hold the socket a moment so the relay sees an orderly end.
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    (a, rx)
}

enum StreamFault {
    None,
    Toxic(Toxics),
    /// Stall both directions for this long once a tenth is through.
    Stall(Duration),
    /// Unplug the link once this many bytes are through.
    Unplug(u64),
}

fn stream_case(bin: &Path, name: &str, total: u64, fault: StreamFault, extra: &str) -> Option<Row> {
    if !selected(name) {
        return None;
    }
    let (up, rx) = sink_upstream();
    let proxy = FaultProxy::with_options(
        up,
        Options {
            socket_buffer: None,
            queue: 256,
        },
    );
    let listen = free_addr();
    let route = format!(
        "[[route]]\nname = \"s\"\nmode = \"stream\"\nlisten = \"{listen}\"\nupstreams = [\"{}\"]\n{extra}\n",
        proxy.addr()
    );
    let relay = Relay::start(bin, &route, &[listen]);
    if let StreamFault::Toxic(t) = &fault {
        proxy.set(Dir::Up, *t);
        proxy.set(Dir::Down, *t);
    }
    let chunk = chunk_pattern();
    let mut expect = Fnv::new();
    let start = Instant::now();
    let mut c = TcpStream::connect(listen).expect("connect");
    let mut sent = 0u64;
    let mut write_error = None;
    let mut faulted_at: Option<Instant> = None;
    while sent < total {
        let n = (chunk.len() as u64).min(total - sent) as usize;
        match &fault {
            StreamFault::Stall(d) if faulted_at.is_none() && sent >= total / 10 => {
                let stalled = Toxics {
                    stall: true,
                    ..Toxics::default()
                };
                proxy.set(Dir::Up, stalled);
                proxy.set(Dir::Down, stalled);
                faulted_at = Some(Instant::now());
                let d = *d;
                let p = &proxy;
                std::thread::scope(|s| {
                    s.spawn(move || {
                        std::thread::sleep(d);
                        p.clear();
                    });
                    // Keep writing meanwhile (the relay and the kernel buffer).
                    if let Err(e) = c.write_all(&chunk[..n]) {
                        write_error = Some(e.kind());
                    }
                });
                expect.update(&chunk[..n]);
                sent += n as u64;
                continue;
            }
            StreamFault::Unplug(at) if faulted_at.is_none() && sent >= *at => {
                // Wait until what was sent went through, then pull the cable.
                let deadline = Instant::now() + LIMIT;
                while proxy.forwarded(Dir::Up) < sent && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                proxy.unplug_all();
                faulted_at = Some(Instant::now());
                break;
            }
            _ => {}
        }
        if let Err(e) = c.write_all(&chunk[..n]) {
            write_error = Some(e.kind());
            break;
        }
        expect.update(&chunk[..n]);
        sent += n as u64;
    }
    let _ = c.shutdown(Shutdown::Write);
    let _ = c.set_read_timeout(Some(LIMIT));
    let mut b = [0u8; 1];
    let client_end = c.read(&mut b);
    let client_done = Instant::now();
    let upstream = rx.recv_timeout(Duration::from_secs(5)).ok();
    relay.wait_log("connection closed");
    let reason = relay.reasons("connection closed").join(",");
    let mut row = Row {
        mode: "stream",
        fault: name.to_string(),
        amount: format!("{:.0} MB", mb(total)),
        throughput: "–".into(),
        delivery: String::new(),
        relay: reason,
    };
    match (upstream, &fault) {
        (Some((n, h, true, at)), _) if n == total && h == expect.0 => {
            let secs = at.duration_since(start).as_secs_f64();
            row.throughput = format!("{:.0} MB/s", mb(total) / secs);
            row.delivery = "byte-exact".into();
        }
        (_, StreamFault::Unplug(_)) => {
            let detect = faulted_at.map_or(0.0, |f| client_done.duration_since(f).as_secs_f64());
            row.delivery = format!(
                "client {} {:.1} s after the unplug",
                if client_end.is_err() {
                    "reset"
                } else {
                    "closed"
                },
                detect
            );
        }
        (Some((n, _, clean, _)), _) => {
            row.delivery = format!(
                "upstream got {:.1} MB ({}), client {}{}",
                mb(n),
                if clean { "clean EOF" } else { "reset" },
                match &client_end {
                    Ok(0) => "EOF".to_string(),
                    Ok(_) => "data".to_string(),
                    Err(e) => format!("{:?}", e.kind()),
                },
                write_error.map_or(String::new(), |e| format!(", client write {e:?}"))
            );
        }
        (None, _) => {
            row.delivery = format!(
                "upstream got nothing; client {} after {:.1} s",
                match &client_end {
                    Ok(0) => "EOF".to_string(),
                    Ok(_) => "data".to_string(),
                    Err(e) => format!("{:?}", e.kind()),
                },
                client_done.duration_since(start).as_secs_f64()
            );
        }
    }
    Some(row)
}

fn stream_cases(bin: &Path, quick: bool) -> Vec<Option<Row>> {
    let big: u64 = if quick { 128 << 20 } else { 512 << 20 };
    let t = Toxics::default;
    vec![
        stream_case(bin, "none (proxy only)", big, StreamFault::None, ""),
        stream_case(
            bin,
            "latency 20 ms each way",
            big,
            StreamFault::Toxic(Toxics {
                latency: Duration::from_millis(20),
                ..t()
            }),
            "",
        ),
        stream_case(
            bin,
            "bandwidth 50 MB/s",
            big / 4,
            StreamFault::Toxic(Toxics {
                bandwidth: Some(50_000_000),
                ..t()
            }),
            "",
        ),
        stream_case(
            bin,
            "slice into 1-7 byte writes",
            4 << 20,
            StreamFault::Toxic(Toxics { slice: true, ..t() }),
            "",
        ),
        stream_case(
            bin,
            "stall 1 s, then resume",
            big,
            StreamFault::Stall(Duration::from_secs(1)),
            "",
        ),
        stream_case(
            bin,
            "reset after 32 MB",
            big,
            StreamFault::Toxic(Toxics {
                reset_after: Some(32 << 20),
                ..t()
            }),
            "",
        ),
        stream_case(
            bin,
            "black hole (idle_timeout 2 s)",
            64 << 20,
            StreamFault::Toxic(Toxics {
                blackhole: true,
                ..t()
            }),
            "idle_timeout = \"2s\"",
        ),
        stream_case(
            bin,
            "unplug after 16 MB (tcp_user_timeout 2 s)",
            64 << 20,
            StreamFault::Unplug(16 << 20),
            "tcp_user_timeout = \"2s\"\ntcp_keepalive_idle = \"1s\"\ntcp_keepalive_interval = \"1s\"",
        ),
    ]
}

// ================================================================= queue ===

const LINE: usize = 64;

fn line(i: u64, out: &mut Vec<u8>) {
    // 64 bytes: 12-digit number, padding, newline.
    let s = format!("{i:012}");
    out.extend_from_slice(s.as_bytes());
    out.extend(std::iter::repeat_n(b'.', LINE - 13));
    out.push(b'\n');
}

fn produce(addr: SocketAddr, n: u64) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok(mut s) = TcpStream::connect(addr) else {
            return;
        };
        let mut buf = Vec::with_capacity(1 << 20);
        let mut i = 0;
        while i < n {
            buf.clear();
            while i < n && buf.len() < (1 << 20) - LINE {
                line(i, &mut buf);
                i += 1;
            }
            if s.write_all(&buf).is_err() {
                return;
            }
        }
        let _ = s.shutdown(Shutdown::Write);
        let _ = s.set_read_timeout(Some(LIMIT));
        let mut b = [0u8; 1];
        let _ = s.read(&mut b);
    })
}

/// Tallies lines over all consumer connections.
#[derive(Default)]
struct Tally {
    seen: HashSet<u64>,
    total: u64,
    reordered: u64,
    max: Option<u64>,
    /// When the last new line arrived.
    last_new: Option<Instant>,
}

/// A consumer connection and its partial last line.
struct Conn {
    s: TcpStream,
    carry: Vec<u8>,
    idle: Duration,
    /// It speaks the ack protocol (text encoding): it acknowledges, after
    /// each read, every message that read completed.
    ack: bool,
}

impl Conn {
    fn connect(a: SocketAddr) -> Conn {
        Conn {
            s: TcpStream::connect(a).expect("consumer connect"),
            carry: Vec::new(),
            idle: CONSUMER_IDLE,
            ack: false,
        }
    }

    /// A consumer of the ack protocol: the hello, then MSG frames whose
    /// bodies are the lines without their newline, each followed by one
    /// (so the tally reads them as lines), and the relay's OK line (which
    /// it ignores).
    fn connect_ack(a: SocketAddr) -> Conn {
        let mut c = Conn::connect(a);
        c.ack = true;
        c.s.write_all(b"SPILLWAY 1 role=consumer encoding=text window=4096\n")
            .expect("hello");
        c
    }

    fn connect_as(a: SocketAddr, ack: bool) -> Conn {
        if ack {
            Conn::connect_ack(a)
        } else {
            Conn::connect(a)
        }
    }
}

/// The seq of the last `MSG` header in `text`.
fn last_msg_seq(text: &[u8]) -> Option<u64> {
    text.split(|b| *b == b'\n')
        .filter_map(|l| l.strip_prefix(b"MSG "))
        .filter_map(|l| l.split(|b| *b == b' ').next())
        .filter_map(|n| std::str::from_utf8(n).ok()?.parse().ok())
        .next_back()
}

impl Conn {
    /// Leaves cleanly: half-close, read to EOF (bounded), so the relay
    /// logs its end before the case reads the log.
    fn leave(mut self, tally: &mut Tally) {
        let _ = self.s.shutdown(Shutdown::Write);
        self.idle = Duration::from_secs(2);
        read_into(&mut self, tally, u64::MAX, |_| false);
    }
}

/// A consumer gives up on a connection that brings nothing for this long
/// (what was lost never comes).
const CONSUMER_IDLE: Duration = Duration::from_secs(5);

impl Tally {
    fn add(&mut self, buf: &[u8]) {
        for l in buf.split(|b| *b == b'\n') {
            if l.len() != LINE - 1 {
                continue;
            }
            let Some(i) = std::str::from_utf8(&l[..12])
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            self.total += 1;
            if self.seen.insert(i) {
                self.last_new = Some(Instant::now());
                if self.max.is_some_and(|m| i < m) {
                    self.reordered += 1;
                }
                self.max = Some(self.max.map_or(i, |m| m.max(i)));
            }
        }
    }
}

/// How a consumer connection is cut in a case.
enum Cut {
    None,
    /// The proxy resets after this many bytes; the consumer reconnects
    /// (toxic cleared).
    ResetAfter(u64),
    /// The consumer link is a black hole for a second, then reset.
    Blackhole,
    /// The consumer link is unplugged after this many lines arrived; the
    /// consumer reconnects once the relay gave up on it.
    Unplug(u64),
    /// Both links stall for a second once a tenth arrived.
    Stall,
}

/// Reads from `s` until `n` distinct lines were seen, the connection ends,
/// or `stop(tally)` says so.
fn read_into(c: &mut Conn, tally: &mut Tally, n: u64, stop: impl Fn(&Tally) -> bool) -> bool {
    let s = &mut c.s;
    let carry = &mut c.carry;
    let _ = s.set_read_timeout(Some(c.idle));
    let mut buf = vec![0u8; 256 << 10];
    loop {
        if tally.seen.len() as u64 >= n || stop(tally) {
            return true;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(k) => {
                carry.extend_from_slice(&buf[..k]);
                let end = carry.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
                tally.add(&carry[..end]);
                if c.ack {
                    // A body is complete once its newline is in; its
                    // header line then is too.
                    if let Some(seq) = last_msg_seq(&carry[..end]) {
                        let _ = s.write_all(format!("ACK {seq}\n").as_bytes());
                    }
                }
                carry.drain(..end);
            }
        }
    }
}

fn queue_case(bin: &Path, name: &str, n: u64, toxic: Toxics, cut: Cut, extra: &str) -> Option<Row> {
    if !selected(name) {
        return None;
    }
    let source = free_addr();
    let sink = free_addr();
    let route = format!(
        "[[route]]\nname = \"q\"\nmode = \"queue\"\nfrom = \"listen:{source}\"\nto = \"listen:{sink}\"\nspool = \"@DIR@/spool\"\n{extra}\n"
    );
    let relay = Relay::start(bin, &route, &[source, sink]);
    let ack = extra.contains("to_protocol = \"ack\"");
    let small = Options {
        socket_buffer: Some(64 << 10),
        queue: 4,
    };
    let big = Options {
        socket_buffer: None,
        queue: 256,
    };
    let pin = FaultProxy::with_options(source, big);
    let pout = FaultProxy::with_options(sink, if matches!(cut, Cut::None) { big } else { small });
    pin.set(Dir::Up, toxic);
    pout.set(Dir::Down, toxic);
    let start = Instant::now();
    let producer = produce(pin.addr(), n);
    let mut tally = Tally::default();
    let mut detect = None;
    match &cut {
        Cut::None => {
            let mut s = Conn::connect_as(pout.addr(), ack);
            read_into(&mut s, &mut tally, n, |_| false);
            s.leave(&mut tally);
        }
        Cut::Stall => {
            let mut s = Conn::connect_as(pout.addr(), ack);
            read_into(&mut s, &mut tally, n, |t| t.seen.len() as u64 >= n / 10);
            let stalled = Toxics {
                stall: true,
                ..Toxics::default()
            };
            for p in [&pin, &pout] {
                p.set(Dir::Up, stalled);
                p.set(Dir::Down, stalled);
            }
            std::thread::sleep(Duration::from_secs(1));
            pin.clear();
            pout.clear();
            read_into(&mut s, &mut tally, n, |_| false);
            s.leave(&mut tally);
        }
        Cut::ResetAfter(bytes) => {
            pout.update(Dir::Down, |t| t.reset_after = Some(*bytes));
            let mut s = Conn::connect_as(pout.addr(), ack);
            read_into(&mut s, &mut tally, n, |_| false);
            pout.clear();
            let mut s = Conn::connect_as(pout.addr(), ack);
            read_into(&mut s, &mut tally, n, |_| false);
            s.leave(&mut tally);
        }
        Cut::Blackhole => {
            pout.update(Dir::Down, |t| t.blackhole = true);
            let mut s = Conn::connect_as(pout.addr(), ack);
            let _ = s.s.set_read_timeout(Some(Duration::from_secs(1)));
            let mut b = [0u8; 1];
            let _ = s.s.read(&mut b);
            pout.reset_all();
            pout.clear();
            let mut s = Conn::connect_as(pout.addr(), ack);
            read_into(&mut s, &mut tally, n, |_| false);
            s.leave(&mut tally);
        }
        Cut::Unplug(after) => {
            let mut s = Conn::connect_as(pout.addr(), ack);
            read_into(&mut s, &mut tally, n, |t| t.seen.len() as u64 >= *after);
            pout.unplug_all();
            let at = Instant::now();
            // The consumer is alive; only its link died: it still reads what
            // its kernel holds.
            s.idle = Duration::from_millis(500);
            read_into(&mut s, &mut tally, n, |_| false);
            // (A &str field is logged quoted: reason="peer_timeout".)
            if relay.wait_log("peer_timeout") {
                detect = Some(at.elapsed());
            } else if std::env::var_os("FAULTBENCH_DEBUG").is_some() {
                eprintln!("{}", relay.log_text());
            }
            let mut s = Conn::connect_as(sink, ack);
            read_into(&mut s, &mut tally, n, |_| false);
            s.leave(&mut tally);
        }
    }
    let secs = tally
        .last_new
        .unwrap_or_else(Instant::now)
        .duration_since(start)
        .as_secs_f64();
    let _ = producer.join();
    let lost = n - tally.seen.len() as u64;
    let dups = tally.total - tally.seen.len() as u64;
    let mut delivery = format!("lost {lost} / dup {dups} / reordered {}", tally.reordered);
    if let Some(d) = detect {
        delivery.push_str(&format!(
            "; dead consumer found in {:.1} s",
            d.as_secs_f64()
        ));
    }
    // Every consumer connection of the case has logged its end.
    let conns = match cut {
        Cut::None | Cut::Stall => 1,
        _ => 2,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while relay.reasons("consumer closed").len() < conns && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut reasons = relay.reasons("consumer closed");
    reasons.dedup();
    Some(Row {
        mode: "queue",
        fault: name.to_string(),
        amount: format!("{}k × 64 B", n / 1000),
        throughput: if lost == 0 {
            format!("{:.0}k msgs/s", n as f64 / secs / 1e3)
        } else {
            "–".into()
        },
        delivery,
        relay: reasons.join(","),
    })
}

fn queue_cases(bin: &Path, quick: bool) -> Vec<Option<Row>> {
    let n: u64 = if quick { 500_000 } else { 2_000_000 };
    let t = Toxics::default;
    vec![
        queue_case(bin, "none (proxies only)", n, t(), Cut::None, ""),
        queue_case(
            bin,
            "latency 20 ms each link",
            n,
            Toxics {
                latency: Duration::from_millis(20),
                ..t()
            },
            Cut::None,
            "",
        ),
        queue_case(
            bin,
            "bandwidth 20 MB/s each link",
            n / 4,
            Toxics {
                bandwidth: Some(20_000_000),
                ..t()
            },
            Cut::None,
            "",
        ),
        queue_case(
            bin,
            "slice into 1-7 byte writes",
            50_000,
            Toxics { slice: true, ..t() },
            Cut::None,
            "",
        ),
        queue_case(bin, "stall 1 s both links, resume", n, t(), Cut::Stall, ""),
        queue_case(
            bin,
            "consumer reset after 8 MB, reconnect",
            n,
            t(),
            Cut::ResetAfter(8 << 20),
            "",
        ),
        queue_case(
            bin,
            "consumer reset, redeliver_on_reset 0",
            n,
            t(),
            Cut::ResetAfter(8 << 20),
            "redeliver_on_reset = 0",
        ),
        queue_case(
            bin,
            "consumer link a black hole 1 s, then reset",
            n,
            t(),
            Cut::Blackhole,
            "",
        ),
        queue_case(
            bin,
            "ack protocol: consumer link a black hole 1 s, then reset",
            n,
            t(),
            Cut::Blackhole,
            "to_protocol = \"ack\"",
        ),
        queue_case(
            bin,
            "consumer unplugged (tcp_user_timeout 2 s)",
            n,
            t(),
            Cut::Unplug(n / 10),
            "tcp_user_timeout = \"2s\"\ntcp_keepalive_idle = \"1s\"\ntcp_keepalive_interval = \"1s\"",
        ),
    ]
}

/// Runs only the cases whose name contains this (env FAULTBENCH_ONLY).
static ONLY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn selected(name: &str) -> bool {
    ONLY.get().is_none_or(|o| name.contains(o.as_str()))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(bin) = args.get(1).map(PathBuf::from) else {
        eprintln!("usage: faultbench BIN [stream|queue|all] [quick]");
        std::process::exit(2);
    };
    let what = args.get(2).map_or("all", String::as_str);
    if let Ok(only) = std::env::var("FAULTBENCH_ONLY") {
        ONLY.set(only).ok();
    }
    let quick = args.get(3).is_some_and(|a| a == "quick");
    let mut rows = Vec::new();
    if what == "all" || what == "stream" {
        rows.extend(stream_cases(&bin, quick));
    }
    if what == "all" || what == "queue" {
        rows.extend(queue_cases(&bin, quick));
    }
    println!("| mode | fault | data | throughput | delivery | relay's close reasons |");
    println!("|---|---|---|---|---|---|");
    for r in rows.into_iter().flatten() {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.mode, r.fault, r.amount, r.throughput, r.delivery, r.relay
        );
    }
}
