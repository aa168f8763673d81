//! What a peer can make the relay hold: partial messages under one memory
//! budget (`global.peer_memory`), a slowloris that trickles a partial
//! message (`min_rate`, reason `slow_producer`), and a queue route's own
//! connection limit (`max_connections`). Real child processes and sockets
//! on 127.0.0.1.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{http_get, proc_status_kib, write_config, Relay};

/// A relay with one queue route `q` (lines) and an admin endpoint, on
/// ports it chooses; `global` and `route` are extra keys. Returns (relay,
/// producer address, consumer address, admin address).
fn start(
    dir: &std::path::Path,
    global: &str,
    route: &str,
) -> (Relay, SocketAddr, SocketAddr, SocketAddr) {
    let config = write_config(
        dir,
        &format!(
            r#"
[global]
{global}

[admin]
listen = "127.0.0.1:0"

[[route]]
name = "q"
mode = "queue"
from = "listen:127.0.0.1:0"
to = "listen:127.0.0.1:0"
spool = "{}"
framing = "lines"
{route}
"#,
            dir.join("spool").display()
        ),
    );
    let relay = Relay::start_ready(&["run", "--config", &config.display().to_string()]);
    let (src, sink, admin) = (
        relay.addr("q", "source"),
        relay.addr("q", "sink"),
        relay.admin(),
    );
    (relay, src, sink, admin)
}

/// The value of an unlabelled metric.
fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let (code, body) = http_get(admin, "/metrics");
    assert_eq!(code, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Reads from a consumer until `want` lines arrived (bounded); returns them.
fn consume_lines(addr: SocketAddr, want: usize, limit: Duration) -> Vec<String> {
    let mut s = TcpStream::connect(addr).expect("connect consumer");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut lines = 0;
    let mut buf = vec![0u8; 256 << 10];
    while lines < want && Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                lines += buf[..n].iter().filter(|&&b| b == b'\n').count();
                got.extend_from_slice(&buf[..n]);
            }
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&got)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Whether the peer ended `s` (EOF or reset) within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// 200 producers each send 1 MiB - 2 bytes with no newline (a partial
/// message the relay must keep until it ends): without a budget the relay
/// holds all of it (200 MiB and more). Under `peer_memory = 16MiB` it
/// stays within the budget plus the minimum per connection
/// (16 KiB x 200), and it still serves: a small message from a new
/// producer is queued and delivered while the 200 wait.
#[test]
fn partial_messages_of_200_producers_stay_within_the_peer_memory_budget() {
    let _heavy = common::heavy();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut relay, src, sink, admin) = start(dir.path(), "peer_memory = \"16MiB\"", "");
    let before = proc_status_kib(relay.pid(), "VmRSS:");

    let mut first = TcpStream::connect(src).expect("producer");
    first.write_all(b"before\n").expect("write");

    let partial = vec![b'x'; (1 << 20) - 2];
    let mut hogs = Vec::new();
    for _ in 0..200 {
        let mut s = TcpStream::connect(src).expect("connect hog");
        s.set_write_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        // The relay's receive buffer (4 MiB) takes it whether or not the
        // relay reads it.
        s.write_all(&partial).expect("write partial message");
        hogs.push(s);
    }
    // Let the relay read what the budget lets it read.
    let mut used = 0.0;
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        used = metric(admin, "spillway_peer_memory_bytes").expect("peer memory metric");
    }
    let peak = relay.vm_hwm_kib();
    let budget_kib = 16 << 10;
    let minimums_kib = 200 * 16;
    // Allocator and task overhead of 200 connections, and the admin's
    // own buffers: measured at about 4 MiB; 12 MiB of slack.
    let bound = before + budget_kib + minimums_kib + (2 << 10) + (12 << 10);
    assert!(
        peak <= bound,
        "peak RSS {peak} KiB over the bound {bound} KiB (at start {before} KiB, peer memory {used} bytes)"
    );
    // The budget, a minimum per connection, and one message past the
    // budget (grown geometrically: up to twice its size).
    assert!(
        used <= ((16 << 20) + 200 * (16 << 10) + (2 << 20)) as f64,
        "peer memory {used} over the budget"
    );
    assert!(
        metric(admin, "spillway_peer_memory_refusals_total").unwrap_or(0.0) > 0.0,
        "the budget was never reached"
    );

    // Still serving: a new producer's small message goes through.
    let mut late = TcpStream::connect(src).expect("late producer");
    late.write_all(b"after\n").expect("write");
    let got = consume_lines(sink, 2, Duration::from_secs(20));
    assert_eq!(got, ["before", "after"], "{}", relay.log_text());

    // The 200 end their messages: each completes and is queued.
    for s in &mut hogs {
        s.write_all(b"x\n").expect("finish message");
    }
    drop(hogs);
    drop(first);
    drop(late);
    let got = consume_lines(sink, 200, Duration::from_secs(60));
    assert_eq!(got.len(), 200, "{}", relay.log_text());
    assert!(got.iter().all(|l| l.len() == (1 << 20) - 1));
    relay.signal("TERM");
    assert_eq!(relay.wait_exit(Duration::from_secs(30)), Some(0));
}

/// A producer that holds a partial message and sends a byte now and then
/// (slowloris) is closed with reason `slow_producer`; what it completed
/// before is queued. So is one that sent most of a message fast and then
/// stopped (a burst does not buy time). One that holds a partial message
/// for several periods but sends at the minimum rate is not closed.
#[test]
fn a_producer_that_trickles_a_partial_message_is_closed_as_slow_producer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut relay, src, sink, _admin) = start(
        dir.path(),
        "",
        "min_rate = \"1KiB\"\nmin_rate_grace = \"1s\"",
    );
    let mut slow = TcpStream::connect(src).expect("producer");
    slow.write_all(b"whole\npart").expect("write");
    let mut burst = TcpStream::connect(src).expect("producer");
    burst.write_all(&vec![b'z'; 100 << 10]).expect("write");

    // 2 KiB every 500 ms for 4 s (4 periods), then the end of the line.
    let honest = std::thread::spawn(move || {
        let mut s = TcpStream::connect(src).expect("producer");
        for _ in 0..8 {
            s.write_all(&[b'y'; 2048])
                .expect("the honest producer is open");
            std::thread::sleep(Duration::from_millis(500));
        }
        s.write_all(b"\n").expect("the honest producer is open");
        s
    });

    let started = Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(15) {
        if slow.write_all(b"a").is_err() || closed_within(&mut slow, Duration::from_millis(300)) {
            closed = true;
            break;
        }
    }
    assert!(closed, "the trickling producer was never closed");
    assert!(
        closed_within(&mut burst, Duration::from_secs(10)),
        "the producer that stopped mid-message was never closed"
    );
    // Both are logged (each right after its close).
    let ends = relay.wait_log_lines("reason=\"slow_producer\"", 2, Duration::from_secs(20));
    assert_eq!(ends.len(), 2, "{}", relay.log_text());
    assert!(
        ends.iter().any(|l| l.contains("messages=1")),
        "{}",
        relay.log_text()
    );

    let s = honest.join().expect("honest producer");
    drop(s);
    let got = consume_lines(sink, 2, Duration::from_secs(20));
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0], "whole");
    assert_eq!(got[1].len(), 8 * 2048);
    relay.signal("TERM");
    assert_eq!(relay.wait_exit(Duration::from_secs(30)), Some(0));
}

/// A queue route bounds its connections (producers and consumers
/// together): past `max_connections` a new one is closed at once and
/// counted; those admitted keep working.
#[test]
fn a_queue_route_bounds_its_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut relay, src, sink, admin) = start(dir.path(), "", "max_connections = 3");
    let mut admitted: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(src).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = TcpStream::connect(sink).expect("connect");
    assert!(
        closed_within(&mut extra, Duration::from_secs(5)),
        "a fourth connection was kept"
    );
    let (_, body) = http_get(admin, "/metrics");
    assert!(
        body.lines()
            .any(|l| l.starts_with("spillway_listener_rejections_total")
                && l.contains("limit=\"max_connections\"")
                && !l.ends_with(" 0")),
        "{body}"
    );
    // The admitted ones still work; one leaving makes room.
    admitted[0].write_all(b"hello\n").expect("write");
    drop(admitted.remove(0));
    std::thread::sleep(Duration::from_millis(300));
    let got = consume_lines(sink, 1, Duration::from_secs(10));
    assert_eq!(got, ["hello"], "{}", relay.log_text());
    relay.signal("TERM");
    assert_eq!(relay.wait_exit(Duration::from_secs(30)), Some(0));
}

/// Lines from a producer that writes as fast as it can, each 100 bytes.
fn numbered(from: usize, to: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity((to - from) * 100);
    for i in from..to {
        let line = format!("{i:09}");
        out.extend_from_slice(line.as_bytes());
        out.extend(std::iter::repeat_n(b'.', 90));
        out.push(b'\n');
    }
    out
}

/// While partial messages hold the whole budget (and the lane), a
/// producer of small lines that writes as fast as it can keeps flowing at
/// the minimum read size: it was paused for good once its read size had
/// doubled past what the budget allowed.
#[test]
fn small_lines_keep_flowing_while_partial_messages_hold_the_budget() {
    let _heavy = common::heavy();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut relay, src, sink, admin) = start(
        dir.path(),
        "peer_memory = \"2MiB\"",
        "max_message = \"1MiB\"\nmin_rate_grace = \"120s\"",
    );
    let mut hogs = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(src).expect("hog");
        s.write_all(&vec![b'x'; (1 << 20) - 2]).expect("partial");
        hogs.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(metric(admin, "spillway_peer_memory_refusals_total").unwrap_or(0.0) > 0.0);

    const N: usize = 50_000;
    let writer = std::thread::spawn(move || {
        let mut p = TcpStream::connect(src).expect("producer");
        p.write_all(&numbered(0, N)).expect("write lines");
        p.shutdown(std::net::Shutdown::Write).expect("FIN");
        let mut rest = Vec::new();
        let _ = p.read_to_end(&mut rest);
    });
    let got = consume_lines(sink, N, Duration::from_secs(60));
    writer.join().expect("writer");
    assert_eq!(got.len(), N, "{}", relay.log_text());
    for (i, l) in got.iter().enumerate() {
        assert!(l.starts_with(&format!("{i:09}")), "line {i}: {l}");
    }
    drop(hogs);
    relay.signal("TERM");
    assert_eq!(relay.wait_exit(Duration::from_secs(30)), Some(0));
}

/// Producers that hold partial messages and trickle just above `min_rate`
/// while the budget is spent (they are not read, so they hold memory and
/// do not progress) are closed within a period or two, and so is one that
/// keeps the lane; a client that sends a large message, and sends it again
/// if it was reset, gets it through. They used to keep the budget, and an
/// honest large message waited for as long as they stayed.
#[test]
fn partial_messages_that_hold_the_budget_are_shed() {
    let _heavy = common::heavy();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut relay, src, sink, _admin) = start(
        dir.path(),
        "peer_memory = \"2MiB\"",
        "max_message = \"1MiB\"\nmin_rate = \"1KiB\"\nmin_rate_grace = \"2s\"",
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut hogs = Vec::new();
    for _ in 0..10 {
        let stop = std::sync::Arc::clone(&stop);
        hogs.push(std::thread::spawn(move || {
            let Ok(mut s) = TcpStream::connect(src) else {
                return;
            };
            if s.write_all(&vec![b'h'; 300 << 10]).is_err() {
                return;
            }
            // 1200 bytes a second, a little over min_rate.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if s.write_all(&[b'h'; 120]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(500));

    // A well-behaved client: send, half-close, read to EOF; a reset means
    // "not all taken": send again.
    let message = {
        let mut m = vec![b'm'; 256 << 10];
        m.push(b'\n');
        m
    };
    let started = Instant::now();
    let mut delivered_clean = false;
    while started.elapsed() < Duration::from_secs(40) {
        let Ok(mut p) = TcpStream::connect(src) else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        if p.write_all(&message).is_err() || p.shutdown(std::net::Shutdown::Write).is_err() {
            continue;
        }
        let mut rest = Vec::new();
        if p.read_to_end(&mut rest).is_ok() {
            delivered_clean = true;
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(
        delivered_clean,
        "the large message never got through:\n{}",
        relay.log_text()
    );
    let got = consume_lines(sink, 1, Duration::from_secs(20));
    assert_eq!(got.first().map(String::len), Some(256 << 10));
    assert!(
        relay.log_text().contains("reason=\"slow_producer\""),
        "no hog was shed"
    );
    for h in hogs {
        h.join().expect("hog");
    }
    relay.signal("TERM");
    assert_eq!(relay.wait_exit(Duration::from_secs(30)), Some(0));
}

/// Many slow consumers of small messages read back from disk: each take
/// used to hand out slices of a 1 MiB read buffer, so a consumer holding a
/// few KiB in flight and in its redelivery window kept dozens of MiB alive
/// (40 consumers: over a GB of RSS while the budget said 8 MiB). RSS now
/// stays within the budget, a minimum per connection and allocator slack.
#[test]
fn slow_consumers_of_messages_read_from_disk_stay_within_the_budget() {
    let _heavy = common::heavy();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut relay, src, sink, admin) = start(
        dir.path(),
        "peer_memory = \"8MiB\"",
        "memory = \"1MiB\"\nwrite_stall_timeout = \"120s\"",
    );
    // 20 MB of 1 KiB lines, queued before any consumer comes.
    const N: usize = 20_000;
    let mut p = TcpStream::connect(src).expect("producer");
    let mut data = Vec::with_capacity(N * 1024);
    for i in 0..N {
        data.extend_from_slice(format!("{i:09}").as_bytes());
        data.extend(std::iter::repeat_n(b'.', 1014));
        data.push(b'\n');
    }
    p.write_all(&data).expect("produce");
    p.shutdown(std::net::Shutdown::Write).expect("FIN");
    let mut rest = Vec::new();
    let _ = p.read_to_end(&mut rest);
    let before = proc_status_kib(relay.pid(), "VmRSS:");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut consumers = Vec::new();
    for _ in 0..40 {
        let stop = std::sync::Arc::clone(&stop);
        consumers.push(std::thread::spawn(move || {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            s.set_recv_buffer_size(4096).expect("rcvbuf");
            s.connect(&sink.into()).expect("connect consumer");
            let mut s: TcpStream = s.into();
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            let mut buf = [0u8; 1024];
            let mut got = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(n) = s.read(&mut buf) {
                    got += n;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            got
        }));
    }
    std::thread::sleep(Duration::from_secs(8));
    let used = metric(admin, "spillway_peer_memory_bytes").unwrap_or(0.0);
    let peak = relay.vm_hwm_kib();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let read: usize = consumers
        .into_iter()
        .map(|c| c.join().expect("consumer"))
        .sum();
    assert!(read > 0, "the consumers read nothing");
    // Budget + 16 KiB x 41 connections + one message past it + each
    // consumer's redelivery window (256 KiB, kept whatever the budget), and
    // 24 MiB for the allocator's arenas.
    let bound = before + (8 << 10) + 41 * 16 + 2048 + 40 * 256 + (24 << 10);
    assert!(
        peak <= bound,
        "peak RSS {peak} KiB over the bound {bound} KiB (at start {before} KiB, peer memory {used} bytes)"
    );
    relay.signal("TERM");
    assert_eq!(relay.wait_exit(Duration::from_secs(30)), Some(0));
}

/// Ack-protocol consumers with huge windows that never read nor
/// acknowledge: what they hold is charged to the same budget, so the
/// relay's peer memory stays bounded, and a well-behaved consumer still
/// gets messages.
#[test]
fn ack_consumers_with_huge_windows_stay_within_the_peer_memory_budget() {
    let _heavy = common::heavy();
    let dir = tempfile::tempdir().expect("tempdir");
    let (_relay, src, sink, admin) = start(
        dir.path(),
        "peer_memory = \"4MiB\"",
        "to_protocol = \"ack\"\nmemory = \"0\"",
    );
    let before = proc_status_kib(_relay.pid(), "VmRSS:");
    let mut p = TcpStream::connect(src).expect("producer");
    let line = format!("{}\n", "y".repeat(4095));
    // 64 MiB queued: far more than the budget.
    for _ in 0..16384 {
        p.write_all(line.as_bytes()).expect("produce");
    }
    drop(p);
    let mut hogs = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(sink).expect("hog");
        s.write_all(
            b"SPILLWAY 1 role=consumer encoding=binary window=65536 window_bytes=1099511627776\n",
        )
        .expect("hello");
        hogs.push(s);
    }
    let mut used = 0.0f64;
    let mut peak = 0.0f64;
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        used = metric(admin, "spillway_peer_memory_bytes").expect("peer memory metric");
        peak = peak.max(used);
    }
    // The budget, plus a minimum and one message per connection.
    let bound = ((4 << 20) + 21 * ((16 << 10) + 8192)) as f64;
    assert!(
        peak <= bound,
        "peer memory peaked at {peak} (bound {bound})"
    );
    assert!(used > 0.0);
    // And the process: the budget, the read-ahead (2 MiB), allocator and
    // task overhead; without the charge the hogs took all 64 MiB.
    let rss = proc_status_kib(_relay.pid(), "VmRSS:");
    assert!(
        rss <= before + (24 << 10),
        "RSS {rss} KiB (at start {before} KiB)"
    );
    // A consumer that reads and acknowledges still gets messages.
    let mut c = TcpStream::connect(sink).expect("consumer");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    c.write_all(b"SPILLWAY 1 role=consumer encoding=text window=4\n")
        .expect("hello");
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while !String::from_utf8_lossy(&got).contains("MSG ") {
        let n = c.read(&mut buf).expect("read");
        assert!(n > 0, "closed");
        got.extend_from_slice(&buf[..n]);
    }
    drop(hogs);
}

/// An ack-protocol producer that trickles a partial PUB is closed as
/// slow_producer too (its buffer is charged to the same budget), while
/// what it sent whole before is queued and confirmed.
#[test]
fn an_ack_producer_that_trickles_a_partial_frame_is_closed_as_slow_producer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (relay, src, _sink, _admin) = start(
        dir.path(),
        "",
        "from_protocol = \"ack\"\nmemory = \"0\"\nmin_rate = \"1KiB\"\nmin_rate_grace = \"1s\"",
    );
    let mut slow = TcpStream::connect(src).expect("producer");
    slow.write_all(b"SPILLWAY 1 role=producer encoding=text\nPUB 5\nwhole\nPUB 100000\npart")
        .expect("write");
    let started = Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(15) {
        if slow.write_all(b"a").is_err() || closed_within(&mut slow, Duration::from_millis(300)) {
            closed = true;
            break;
        }
    }
    assert!(closed, "the trickling producer was never closed");
    let ends = relay.wait_log_lines("reason=\"slow_producer\"", 1, Duration::from_secs(20));
    assert_eq!(ends.len(), 1, "{}", relay.log_text());
    assert!(
        relay.log_text().contains("messages=1"),
        "{}",
        relay.log_text()
    );
}
