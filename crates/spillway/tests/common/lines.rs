//! Numbered lines through a queue route, for the tests that check the
//! "never lose" promise end to end: each line carries its number, so what
//! the consumers got can be checked for loss, duplicates, order and torn
//! lines. A relay from a config file, and well-behaved or abrupt peers.

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{write_config, Relay};

/// Bytes per line: not a power of two, so that what a socket takes (often
/// a round number of bytes) rarely ends at a line boundary.
pub const LINE: usize = 100;

/// Line `n`: its number, padded to `LINE` bytes.
pub fn line(n: u64) -> Vec<u8> {
    let mut l = format!("{n:010} ").into_bytes();
    l.resize(LINE - 1, b'.');
    l.push(b'\n');
    l
}

/// Lines `from..to`, back to back.
pub fn lines(from: u64, to: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(((to - from) as usize) * LINE);
    for n in from..to {
        v.extend_from_slice(&line(n));
    }
    v
}

/// The numbers of the complete lines in `bytes` (a trailing part is left
/// out); panics on a torn or malformed line (a consumer never gets a
/// partial message).
pub fn numbers(bytes: &[u8]) -> Vec<u64> {
    let whole = bytes.len() - bytes.len() % LINE;
    bytes[..whole]
        .chunks(LINE)
        .map(|l| {
            assert!(
                l[LINE - 1] == b'\n' && l[10] == b' ',
                "torn line {:?}",
                String::from_utf8_lossy(l)
            );
            std::str::from_utf8(&l[..10])
                .expect("utf-8")
                .parse()
                .expect("line number")
        })
        .collect()
}

/// The numbers of `want` nobody received.
pub fn missing(seen: &BTreeSet<u64>, want: impl IntoIterator<Item = u64>) -> Vec<u64> {
    want.into_iter().filter(|i| !seen.contains(i)).collect()
}

/// A config file with one queue route `q` (framing `lines`) whose
/// producers and consumers connect to ports the relay chooses (see
/// [`source`] and [`sink`]), an admin endpoint (also on a port it chooses),
/// the given drain timeout, and `extra` route keys.
pub fn queue_config(dir: &Path, spool: &Path, drain: &str, extra: &str) -> PathBuf {
    write_config(
        dir,
        &format!(
            r#"
[global]
drain_timeout = "{drain}"

[admin]
listen = "127.0.0.1:0"

[[route]]
name = "q"
mode = "queue"
from = "listen:127.0.0.1:0"
to = "listen:127.0.0.1:0"
spool = "{}"
framing = "lines"
{extra}
"#,
            spool.display()
        ),
    )
}

/// `spillway run --config`, once it serves.
pub fn start(config: &Path) -> Relay {
    Relay::start_ready(&["run", "--config", &config.display().to_string()])
}

/// Where route `q`'s producers connect (as the relay serves it now).
pub fn source(relay: &Relay) -> SocketAddr {
    relay.addr("q", "source")
}

/// Where route `q`'s consumers connect (as the relay serves it now).
pub fn sink(relay: &Relay) -> SocketAddr {
    relay.addr("q", "sink")
}

/// Waits (bounded) until route `q` has had `n` consumer connections in all.
pub fn wait_consumers(relay: &mut Relay, n: u64) {
    relay.wait_metric(
        "spillway_connections_total",
        &[("route", "q"), ("role", "consumer")],
        |v| v >= n as f64,
    );
}

/// Waits (bounded) until `n` of route `q`'s producer connections have
/// closed (any reason; everything they sent that was queued is appended).
pub fn wait_producers_closed(relay: &mut Relay, n: u64) {
    relay.wait_metric(
        "spillway_producer_connections_closed_total",
        &[("route", "q")],
        |v| v >= n as f64,
    );
}

/// Waits (bounded) until route `q`'s disk tier has made an append wait
/// for space (`when_full = block`: the relay stopped reading producers).
pub fn wait_blocked(relay: &mut Relay) {
    relay.wait_metric(
        "spillway_spool_blocked_appends_total",
        &[("route", "q")],
        |v| v >= 1.0,
    );
}

/// Waits (bounded) until `n` of route `q`'s consumer connections have
/// closed (any reason).
pub fn wait_consumers_closed(relay: &mut Relay, n: u64) {
    relay.wait_metric(
        "spillway_consumer_connections_closed_total",
        &[("route", "q")],
        |v| v >= n as f64,
    );
}

/// SIGTERM, and the exit code (bounded wait).
pub fn terminate(relay: &mut Relay) -> Option<i32> {
    relay.signal("TERM");
    relay.wait_exit(Duration::from_secs(60))
}

/// SIGTERM, which must exit 0.
pub fn stop(relay: &mut Relay) {
    assert_eq!(
        terminate(relay),
        Some(0),
        "SIGTERM must exit 0:\n{}",
        relay.log_text()
    );
}

/// A consumer socket with a small receive buffer, so that most of what the
/// relay sends waits in the relay, not in this kernel.
pub fn small_consumer(addr: SocketAddr, rcvbuf: usize) -> TcpStream {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
    s.connect(&addr.into()).expect("connect consumer");
    s.into()
}

/// Resets a connection (`SO_LINGER 0` then close): the abortive close a
/// crashing peer's kernel sends.
pub fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(s);
}

/// A well-behaved consumer: reads until `want` distinct lines are known
/// (`have` plus what it reads) or nothing arrives for a few seconds, then
/// leaves cleanly (half-close, read to EOF). Returns what it received.
pub fn drain(addr: SocketAddr, have: &BTreeSet<u64>, want: usize, limit: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect consumer");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut seen = have.clone();
    let mut buf = vec![0u8; 64 << 10];
    let mut quiet_since = Instant::now();
    while seen.len() < want && Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let done = got.len() - got.len() % LINE;
                got.extend_from_slice(&buf[..n]);
                let whole = got.len() - got.len() % LINE;
                seen.extend(numbers(&got[done..whole]));
                quiet_since = Instant::now();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if quiet_since.elapsed() > Duration::from_secs(4) {
                    break;
                }
            }
            Err(e) => panic!("consumer read: {e}"),
        }
    }
    let _ = s.shutdown(Shutdown::Write);
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let _ = s.read_to_end(&mut got);
    got
}
