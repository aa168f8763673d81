//! The disk bound in queue mode, end to end: `when_full = block` stops
//! reading producers (logged) and loses nothing once consumers drain;
//! `drop-newest` keeps the relay going and says what it refused;
//! `drop-oldest` delivers exactly what it did not count as dropped.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use common::*;

fn lines(n: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 0..n {
        v.extend_from_slice(format!("{i:08} {}\n", "x".repeat(100)).as_bytes());
    }
    v
}

/// A queue relay (route `queue`) on a fresh spool, with `extra` flags, its
/// source, sink and admin endpoint on ports it chooses; returns it once it
/// serves, with the source and sink addresses.
fn start_queue(extra: &[&str]) -> (Relay, String, String, tempfile::TempDir) {
    let spool = tempfile::tempdir().expect("tempdir");
    let mut args = vec![
        "queue",
        "--from",
        "listen:127.0.0.1:0",
        "--to",
        "listen:127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--spool",
    ];
    args.push(spool.path().to_str().expect("utf8"));
    args.extend_from_slice(extra);
    let relay = Relay::start_ready(&args);
    let src = relay.addr("queue", "source").to_string();
    let dst = relay.addr("queue", "sink").to_string();
    (relay, src, dst, spool)
}

/// Waits (bounded) until `n` messages were queued in all.
fn wait_queued(relay: &mut Relay, n: usize) {
    relay.wait_metric("spillway_messages_in_total", &[("route", "queue")], |v| {
        v >= n as f64
    });
}

/// [`start_queue`] with everything on disk (`--memory 0`), a 64 KiB disk
/// bound and `--when-full policy`, plus `extra` flags.
fn start_bounded(policy: &str, extra: &[&str]) -> (Relay, String, String, tempfile::TempDir) {
    let mut args = vec![
        "--memory",
        "0",
        "--max-message",
        "4KiB",
        "--max-disk",
        "64KiB",
        "--when-full",
        policy,
    ];
    args.extend_from_slice(extra);
    start_queue(&args)
}

/// Reads from the sink until `want` bytes arrived (or EOF), then leaves cleanly.
fn consume(addr: &str, want: usize) -> Vec<u8> {
    let mut c = TcpStream::connect(addr).expect("consumer");
    c.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    while got.len() < want {
        let n = c.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    c.shutdown(Shutdown::Write).expect("half-close");
    loop {
        let n = c.read(&mut buf).expect("read to EOF");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    got
}

#[test]
fn block_at_the_disk_bound_waits_then_delivers_everything() {
    let (relay, src, dst, _spool) = start_bounded("block", &[]);
    // 2 MiB of lines against a 64 KiB disk bound and no consumer.
    let data = lines(20_000);
    let producer = {
        let data = data.clone();
        let src = src.clone();
        std::thread::spawn(move || {
            let mut p = TcpStream::connect(&src).expect("producer");
            p.write_all(&data).expect("producer write");
            p.shutdown(Shutdown::Write).expect("shutdown");
            let mut rest = Vec::new();
            let _ = p.read_to_end(&mut rest);
        })
    };
    relay.wait_log("disk tier full");
    // Now a consumer: everything arrives, in order, once.
    let got = consume(&dst, data.len());
    producer.join().expect("producer");
    assert_eq!(got.len(), data.len(), "bytes delivered");
    assert!(got == data, "content or order differs");
    relay.wait_log("messages=20000");
}

#[test]
fn drop_newest_refuses_and_counts_but_keeps_what_fit() {
    let (relay, src, dst, _spool) = start_bounded("drop-newest", &[]);
    let data = lines(20_000);
    let mut p = TcpStream::connect(&src).expect("producer");
    p.write_all(&data)
        .expect("never blocked: the relay keeps reading");
    p.shutdown(Shutdown::Write).expect("shutdown");
    let log = relay.wait_log("producer closed");
    assert!(log.contains("dropped"), "the refusal is logged:\n{log}");
    let got = consume(&dst, 1);
    assert!(
        !got.is_empty() && got.len() < data.len(),
        "some fit, not all: {}",
        got.len()
    );
    // What was kept is a run of whole lines in order.
    assert!(got.ends_with(b"\n"));
    let mut last: i64 = -1;
    for line in got.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let n: i64 = std::str::from_utf8(&line[..8])
            .expect("utf8")
            .parse()
            .expect("number");
        assert!(n > last, "order: {n} after {last}");
        last = n;
    }
}

/// Drop-oldest with no consumer: what the relay counts as dropped is not
/// delivered, and everything else is, in order (regression: messages read
/// ahead for consumers before the spool dropped them were delivered and
/// counted dropped too).
#[test]
fn drop_oldest_delivers_exactly_what_it_did_not_count_dropped() {
    let (mut relay, src, dst, _spool) = start_bounded("drop-oldest", &[]);
    let admin = relay.admin();
    const N: usize = 20_000;
    let data = lines(N);
    let line = data.len() / N;
    let mut p = TcpStream::connect(&src).expect("producer");
    p.write_all(&data)
        .expect("never blocked: the relay keeps reading");
    p.shutdown(Shutdown::Write).expect("shutdown");
    relay.wait_metric(
        "spillway_producer_connections_closed_total",
        &[("route", "queue")],
        |v| v >= 1.0,
    );
    let (_, metrics) = http_get(admin, "/metrics");
    let dropped: usize = metrics
        .lines()
        .find(|l| l.starts_with("spillway_messages_dropped_total") && l.contains("drop_oldest"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no drop_oldest count:\n{metrics}"));
    assert!(dropped > 0 && dropped < N, "dropped {dropped}");
    let got = consume(&dst, (N - dropped) * line);
    assert_eq!(
        got.len() / line,
        N - dropped,
        "delivered + dropped != sent (dropped {dropped})"
    );
    assert!(got == data[dropped * line..], "not the newest, in order");
}

/// A backlog queued with no consumer, then drained by a fast one, several
/// times: delivery must never stall when the write-ahead window empties
/// while nothing new is being appended (regression: the consumer loop once
/// waited for new appends after acknowledgements freed the window).
#[test]
fn backlog_drains_completely_to_a_fast_consumer() {
    for round in 0..3 {
        let (mut relay, src, dst, _spool) = start_queue(&[]);
        let data = lines(200_000); // about 22 MB: many write-ahead windows
        let mut p = TcpStream::connect(&src).expect("producer");
        p.write_all(&data).expect("producer write");
        p.shutdown(Shutdown::Write).expect("shutdown");
        wait_queued(&mut relay, 200_000);
        // Fast consumer, bounded wait: a stall shows up as a read timeout.
        let mut c = TcpStream::connect(&dst).expect("consumer");
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut got = Vec::with_capacity(data.len());
        let mut buf = vec![0u8; 1 << 20];
        while got.len() < data.len() {
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!(
                    "round {round}: delivery stalled after {} of {} bytes: {e}",
                    got.len(),
                    data.len()
                ),
            }
        }
        assert_eq!(got.len(), data.len(), "round {round}");
        assert!(got == data, "round {round}: content or order differs");
    }
}
