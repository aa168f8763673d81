//! Stream mode over real sockets on 127.0.0.1: byte-exact relaying under
//! random chunking and pauses, half-close, slow readers with and without
//! spill, dead upstreams, limits and timeouts.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use spillway::config::{Spill, StreamRoute};
use spillway::stream::spill::SpillBudget;
use spillway::stream::StreamServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

// ------------------------------------------------------------ in-process ---

/// Starts a stream route on 127.0.0.1:0 inside the current runtime.
async fn start_route(
    upstreams: Vec<String>,
    tweak: impl FnOnce(&mut StreamRoute),
) -> (SocketAddr, CancellationToken, Arc<StreamServer>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut route = StreamRoute::new("test", addr.to_string(), upstreams);
    tweak(&mut route);
    let server =
        Arc::new(StreamServer::new(route, Arc::new(SpillBudget::new(1 << 30))).expect("server"));
    let token = CancellationToken::new();
    tokio::spawn(Arc::clone(&server).serve(listener, token.clone(), Duration::from_secs(5)));
    (addr, token, server)
}

#[derive(Debug, Clone)]
struct Script {
    len: usize,
    seed: u64,
    max_write: usize,
    max_read: usize,
    pause_every: usize,
}

fn script() -> impl Strategy<Value = Script> {
    (
        prop_oneof![Just(0usize), 1usize..2048, 2048usize..(3 << 20)],
        any::<u64>(),
        1usize..(256 << 10),
        1usize..(256 << 10),
        0usize..40,
    )
        .prop_map(|(len, seed, max_write, max_read, pause_every)| Script {
            len,
            seed,
            max_write,
            max_read,
            pause_every,
        })
}

/// Writes `data` in random-sized chunks with occasional pauses, then
/// half-closes; concurrently reads everything until EOF with random read
/// sizes. Returns what was read.
async fn converse(stream: tokio::net::TcpStream, data: Vec<u8>, s: Script) -> Vec<u8> {
    let (mut r, mut w) = stream.into_split();
    let ws = s.clone();
    let writer = tokio::spawn(async move {
        let mut rng = fastrand::Rng::with_seed(ws.seed);
        let mut off = 0;
        let mut n = 0usize;
        while off < data.len() {
            let len = rng.usize(1..=ws.max_write).min(data.len() - off);
            w.write_all(&data[off..off + len]).await.expect("write");
            off += len;
            n += 1;
            if ws.pause_every > 0 && n.is_multiple_of(ws.pause_every) {
                tokio::time::sleep(Duration::from_millis(rng.u64(0..3))).await;
            }
        }
        w.shutdown().await.expect("shutdown");
        w
    });
    let mut rng = fastrand::Rng::with_seed(s.seed ^ 0x5eed);
    let mut got = Vec::new();
    let mut buf = vec![0u8; s.max_read];
    let mut reads = 0usize;
    loop {
        let want = rng.usize(1..=s.max_read);
        let n = r.read(&mut buf[..want]).await.expect("read");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        reads += 1;
        if s.pause_every > 0 && reads.is_multiple_of(s.pause_every * 3 + 1) {
            tokio::time::sleep(Duration::from_millis(rng.u64(0..3))).await;
        }
    }
    let _w = writer.await.expect("writer task");
    got
}

fn relay_case(client: Script, upstream: Script, spill: bool) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let spill_dir = tempfile::tempdir().expect("tempdir");
    rt.block_on(async {
        let (up, up_addr) = upstream_listener().await;
        let dir = spill_dir.path().to_path_buf();
        let (addr, token, _server) = start_route(vec![up_addr.to_string()], |r| {
            // Small buffers and pipes force many partial writes and, with
            // spill, file use.
            r.buffer = 4096;
            r.pipe_size = 4096;
            if spill {
                r.spill = Some(Spill {
                    dir,
                    max_per_connection: 1 << 20,
                });
            }
        })
        .await;
        let a = pattern(client.len, client.seed);
        let b = pattern(upstream.len, upstream.seed);
        let (a2, b2) = (a.clone(), b.clone());
        let us = upstream.clone();
        let upstream_task = tokio::spawn(async move {
            let (s, _) = up.accept().await.expect("accept");
            converse(s, b2, us).await
        });
        let c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let got_b = converse(c, a2, client).await;
        let got_a = upstream_task.await.expect("upstream");
        token.cancel();
        assert!(
            got_a == a,
            "client->upstream differs: sent {} got {}",
            a.len(),
            got_a.len()
        );
        assert!(
            got_b == b,
            "upstream->client differs: sent {} got {}",
            b.len(),
            got_b.len()
        );
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, .. ProptestConfig::default() })]

    #[test]
    fn bytes_arrive_identical_both_ways_splice(c in script(), u in script()) {
        relay_case(c, u, false);
    }

    #[test]
    fn bytes_arrive_identical_both_ways_spill(c in script(), u in script()) {
        relay_case(c, u, true);
    }
}

#[tokio::test]
async fn half_close_client_first_still_gets_whole_response() {
    for spill in [false, true] {
        let (up, up_addr) = upstream_listener().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().to_path_buf();
        let (addr, token, _s) = start_route(vec![up_addr.to_string()], |r| {
            if spill {
                r.spill = Some(Spill {
                    dir: d,
                    max_per_connection: 1 << 30,
                });
            }
        })
        .await;
        let response = pattern(5 << 20, 7);
        let resp = response.clone();
        let server = tokio::spawn(async move {
            let (mut s, _) = up.accept().await.expect("accept");
            let mut req = Vec::new();
            s.read_to_end(&mut req).await.expect("read request to EOF");
            // Only after the client's EOF arrived do we answer.
            s.write_all(&resp).await.expect("respond");
            s.shutdown().await.expect("shutdown");
            req
        });
        let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        c.write_all(b"GET / please").await.expect("request");
        c.shutdown().await.expect("half-close");
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.expect("response");
        assert_eq!(server.await.expect("server"), b"GET / please");
        assert!(
            got == response,
            "spill={spill}: response truncated: {} of {}",
            got.len(),
            response.len()
        );
        token.cancel();
    }
}

#[tokio::test]
async fn half_close_upstream_first_client_can_still_send() {
    let (up, up_addr) = upstream_listener().await;
    let (addr, token, _s) = start_route(vec![up_addr.to_string()], |_| {}).await;
    let upload = pattern(3 << 20, 11);
    let server = tokio::spawn(async move {
        let (mut s, _) = up.accept().await.expect("accept");
        s.write_all(b"READY").await.expect("greet");
        s.shutdown().await.expect("upstream half-close");
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.expect("read upload");
        got
    });
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut greet = Vec::new();
    c.read_to_end(&mut greet).await.expect("greeting then EOF");
    assert_eq!(greet, b"READY");
    c.write_all(&upload)
        .await
        .expect("upload after upstream EOF");
    c.shutdown().await.expect("shutdown");
    assert!(server.await.expect("server") == upload);
    token.cancel();
}

#[tokio::test]
async fn half_close_timer_bounds_a_lingering_direction() {
    let (up, up_addr) = upstream_listener().await;
    let (addr, token, server) = start_route(vec![up_addr.to_string()], |r| {
        r.half_close_timeout = Duration::from_millis(200);
    })
    .await;
    let hold = silent_upstream(up);
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    c.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut rest)).await;
    assert!(
        r.is_ok(),
        "relay kept a half-closed connection open past its timer"
    );
    let stats = server.stats();
    wait_for(|| stats.closed(spillway::stream::CloseReason::HalfCloseTimeout) == 1).await;
    hold.abort();
    token.cancel();
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let (up, up_addr) = upstream_listener().await;
    let (addr, token, server) = start_route(vec![up_addr.to_string()], |r| {
        r.idle_timeout = Duration::from_millis(200);
    })
    .await;
    let hold = silent_upstream(up);
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(20), c.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "idle connection not closed: {r:?}"
    );
    let stats = server.stats();
    wait_for(|| stats.closed(spillway::stream::CloseReason::IdleTimeout) == 1).await;
    hold.abort();
    token.cancel();
}

#[tokio::test]
async fn connection_limit_refuses_the_excess() {
    let (up, up_addr) = upstream_listener().await;
    let (addr, token, server) = start_route(vec![up_addr.to_string()], |r| {
        r.max_connections = 2;
    })
    .await;
    let accepted = Arc::new(AtomicU64::new(0));
    let acc = Arc::clone(&accepted);
    let hold = tokio::spawn(async move {
        let mut keep = Vec::new();
        loop {
            let (s, _) = up.accept().await.expect("accept");
            acc.fetch_add(1, Ordering::SeqCst);
            keep.push(s);
        }
    });
    let mut conns = Vec::new();
    for _ in 0..2 {
        conns.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    wait_for(|| accepted.load(Ordering::SeqCst) == 2).await;
    let mut third = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "third connection not refused: {r:?}"
    );
    assert_eq!(
        server.stats().closed(spillway::stream::CloseReason::Limit),
        1
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the refused client reached the upstream"
    );
    hold.abort();
    token.cancel();
}

#[tokio::test]
async fn reset_by_upstream_is_propagated_to_client() {
    let (up, up_addr) = upstream_listener().await;
    let (addr, token, server) = start_route(vec![up_addr.to_string()], |_| {}).await;
    let srv = tokio::spawn(async move {
        let (mut s, _) = up.accept().await.expect("accept");
        // Reset only once bytes flowed, so the relay's connect has surely completed.
        let mut hello = [0u8; 5];
        s.read_exact(&mut hello).await.expect("hello");
        let s = s.into_std().expect("std");
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
        drop(s); // RST
    });
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    c.write_all(b"hello").await.expect("hello");
    srv.await.expect("server");
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await;
    assert!(r.is_ok(), "client not closed after the upstream reset");
    let stats = server.stats();
    let reasons = || {
        spillway::stream::CloseReason::ALL
            .iter()
            .map(|r| (r.as_str(), stats.closed(*r)))
            .filter(|(_, n)| *n > 0)
            .collect::<Vec<_>>()
    };
    for _ in 0..300 {
        if stats.closed(spillway::stream::CloseReason::UpstreamReset) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(reasons(), vec![("upstream_reset", 1)], "read: {r:?}");
    token.cancel();
}

/// A listener for a test upstream on 127.0.0.1:0, and its address.
async fn upstream_listener() -> (tokio::net::TcpListener, SocketAddr) {
    let up = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = up.local_addr().expect("addr");
    (up, addr)
}

/// An upstream that accepts one connection and then neither answers nor
/// closes (until aborted).
fn silent_upstream(up: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (s, _) = up.accept().await.expect("accept");
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(s);
    })
}

async fn wait_for(cond: impl Fn() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached within 10 s");
}

/// A client that connects and never reads, with an upstream that sends
/// `total` bytes: the relay's write to the client stalls.
async fn stalled_reader_case(spill: Option<&std::path::Path>) {
    let (up, up_addr) = upstream_listener().await;
    let dir = spill.map(|d| d.to_path_buf());
    let (addr, token, server) = start_route(vec![up_addr.to_string()], |r| {
        r.timeouts.write_stall = Duration::from_millis(500);
        r.spill = dir.map(|dir| Spill {
            dir,
            max_per_connection: 1 << 30,
        });
    })
    .await;
    const TOTAL: usize = 48 << 20;
    let writer = tokio::spawn(async move {
        let (mut s, _) = up.accept().await.expect("accept");
        let chunk = pattern(1 << 20, 9);
        let mut sent = 0usize;
        while sent < TOTAL {
            if s.write_all(&chunk).await.is_err() {
                return (sent, true);
            }
            sent += chunk.len();
        }
        // Hold the connection until the relay resets it.
        let mut b = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(20), s.read(&mut b)).await;
        (sent, r.map(|r| r.is_err()).unwrap_or(false))
    });
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let stats = server.stats();
    wait_for(|| stats.closed(spillway::stream::CloseReason::WriteStall) == 1).await;
    let (sent, upstream_reset) = tokio::time::timeout(Duration::from_secs(20), writer)
        .await
        .expect("upstream done")
        .expect("join");
    assert!(upstream_reset, "the upstream was not reset after the stall");
    if spill.is_some() {
        // The fast side kept flowing into the spill file: it sent everything.
        assert_eq!(sent, TOTAL, "upstream was held back despite spill");
    } else {
        assert!(sent < TOTAL, "backpressure should have held the upstream");
    }
    // The client, stalled, is reset too (never a clean EOF after a cut).
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut rest)).await;
    assert!(matches!(r, Ok(Err(_))), "client not reset: {r:?}");
    assert_eq!(stats.closed(spillway::stream::CloseReason::WriteStall), 1);
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_for_write_stall() {
    stalled_reader_case(None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    stalled_reader_case(Some(dir.path())).await;
}

// --------------------------------------------------------- child process ---

const BIG: usize = 200 << 20;

/// An upstream that writes `total` bytes as fast as it can to the first
/// client, then closes; reports when it finished writing.
fn fast_writer(total: usize) -> (SocketAddr, std::thread::JoinHandle<u64>, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let finished_at_client_bytes = Arc::new(AtomicU64::new(u64::MAX));
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        let chunk = pattern(1 << 20, 3);
        let mut hash = Fnv::default();
        let mut sent = 0;
        while sent < total {
            let n = chunk.len().min(total - sent);
            s.write_all(&chunk[..n]).expect("upstream write");
            hash.update(&chunk[..n]);
            sent += n;
        }
        s.shutdown(Shutdown::Write).expect("shutdown");
        hash.0
    });
    (addr, h, finished_at_client_bytes)
}

#[test]
fn slow_reader_with_spill_lets_the_upstream_finish_first() {
    let spill = tempfile::tempdir().expect("tempdir");
    let (up_addr, writer, _) = fast_writer(BIG);
    let relay = Relay::start_ready(&[
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &up_addr.to_string(),
        "--spill-dir",
        spill.path().to_str().expect("utf8"),
        "--max-spill",
        "1GiB",
    ]);
    let mut c = TcpStream::connect(relay.addr("relay", "client")).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let received = Arc::new(AtomicU64::new(0));
    let seen_when_upstream_done = Arc::new(AtomicU64::new(u64::MAX));
    let watcher = {
        let received = Arc::clone(&received);
        let seen = Arc::clone(&seen_when_upstream_done);
        std::thread::spawn(move || {
            let h = writer.join().expect("writer");
            seen.store(received.load(Ordering::SeqCst), Ordering::SeqCst);
            h
        })
    };
    let mut buf = vec![0u8; 64 << 10];
    let mut hash = Fnv::default();
    let mut total = 0u64;
    loop {
        let n = c.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        total += n as u64;
        received.store(total, Ordering::SeqCst);
        // A slow consumer: ~64 KiB per millisecond at best.
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(c);
    let expected = watcher.join().expect("watcher");
    assert_eq!(total, BIG as u64);
    assert_eq!(hash.0, expected, "checksum differs");
    let seen = seen_when_upstream_done.load(Ordering::SeqCst);
    assert!(
        seen < (BIG as u64) / 2,
        "the upstream only finished after the client had read {seen} of {BIG} bytes: spill did not absorb the difference"
    );
    let log = relay.wait_log("connection closed");
    assert!(log.contains("reason=upstream_eof"), "{log}");
    // Nothing is left in the spill directory (the file was unlinked at creation).
    assert_eq!(std::fs::read_dir(spill.path()).expect("readdir").count(), 0);
}

#[test]
fn without_spill_memory_stays_bounded() {
    let (up_addr, writer, _) = fast_writer(BIG);
    let relay = Relay::start_ready(&[
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &up_addr.to_string(),
    ]);
    let before = relay.vm_hwm_kib();
    let mut c = TcpStream::connect(relay.addr("relay", "client")).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut buf = vec![0u8; 64 << 10];
    let mut hash = Fnv::default();
    let mut total = 0u64;
    let mut reads = 0u64;
    loop {
        let n = c.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        total += n as u64;
        reads += 1;
        if reads.is_multiple_of(8) {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    assert_eq!(total, BIG as u64);
    assert_eq!(hash.0, writer.join().expect("writer"));
    let after = relay.vm_hwm_kib();
    // 200 MiB went through; the relay's peak RSS may only grow by a small
    // constant: splice mode moves bytes through kernel pipes, not user space.
    assert!(
        after < before + 16 * 1024,
        "VmHWM grew from {before} KiB to {after} KiB"
    );
}

#[test]
fn dead_upstreams_in_the_pool_are_skipped() {
    let live = TcpListener::bind("127.0.0.1:0").expect("bind");
    let live_addr = live.local_addr().expect("addr");
    let ((_d1, dead1), (_d2, dead2)) = (refused_addr(), refused_addr());
    let (dead1, dead2) = (dead1.to_string(), dead2.to_string());
    let echo = std::thread::spawn(move || {
        for _ in 0..6 {
            let (mut s, _) = live.accept().expect("accept");
            let mut v = Vec::new();
            s.read_to_end(&mut v).expect("read");
            s.write_all(&v).expect("echo");
        }
    });
    let relay = Relay::start_ready(&[
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &dead1,
        "--to",
        &live_addr.to_string(),
        "--to",
        &dead2,
    ]);
    let listen = relay.addr("relay", "client");
    for i in 0..6u8 {
        let mut c = TcpStream::connect(listen).expect("connect");
        c.write_all(&[i; 100]).expect("write");
        c.shutdown(Shutdown::Write).expect("shutdown");
        assert_eq!(read_to_end(&mut c), vec![i; 100], "connection {i} failed");
    }
    echo.join().expect("echo");
    assert!(relay.log_text().contains("upstream connect failed"));
}

#[test]
fn all_upstreams_dead_closes_the_client_with_a_reason() {
    let ((_d1, dead1), (_d2, dead2)) = (refused_addr(), refused_addr());
    let (dead1, dead2) = (dead1.to_string(), dead2.to_string());
    let relay = Relay::start_ready(&[
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &dead1,
        "--to",
        &dead2,
    ]);
    let mut c = TcpStream::connect(relay.addr("relay", "client")).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 8];
    let r = c.read(&mut buf);
    assert!(
        matches!(r, Ok(0) | Err(_))
            && !matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "client not closed: {r:?}"
    );
    let log = relay.wait_log("reason=no_upstream");
    assert!(
        log.contains(&dead1) && log.contains(&dead2),
        "both upstreams tried:\n{log}"
    );
}

#[test]
fn broken_config_reports_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        dir.path(),
        "[[route]]\nname = \"web\"\nmode = \"stream\"\nlisten = \"127.0.0.1:7000\"\nupstreams = [\"127.0.0.1:8000\"]\nidle_timeout = \"ten minutes\"\n",
    );
    let out = std::process::Command::new(bin())
        .args(["check", "--config", path.to_str().expect("utf8")])
        .output()
        .expect("run check");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spillway.toml:6:16"), "{err}");
    assert!(err.contains("duration"), "{err}");

    let path = write_config(dir.path(), "[[route]]\nname = \"web\"\nmode = \"stream\"\nlisten = \"127.0.0.1:7000\"\nupstreams = [\"127.0.0.1:8000\"]\n");
    let out = std::process::Command::new(bin())
        .args(["check", "--config", path.to_str().expect("utf8")])
        .output()
        .expect("run check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `run` refuses the broken file the same way, before binding anything.
    let path = write_config(dir.path(), "[[route]\n");
    let out = std::process::Command::new(bin())
        .args(["run", "--config", path.to_str().expect("utf8")])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("spillway.toml:1:"));
}

#[test]
fn config_file_routes_run_and_sigterm_exits_zero() {
    let up = TcpListener::bind("127.0.0.1:0").expect("bind");
    let up_addr = up.local_addr().expect("addr");
    let echo = std::thread::spawn(move || {
        let (mut s, _) = up.accept().expect("accept");
        let mut v = Vec::new();
        s.read_to_end(&mut v).expect("read");
        s.write_all(&v).expect("echo");
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        dir.path(),
        &format!("[[route]]\nname = \"web\"\nmode = \"stream\"\nlisten = \"127.0.0.1:0\"\nupstreams = [\"{up_addr}\"]\nbalance = \"least-conn\"\n"),
    );
    let mut relay = Relay::start_ready(&["run", "--config", path.to_str().expect("utf8")]);
    let mut c = TcpStream::connect(relay.addr("web", "client")).expect("connect");
    c.write_all(b"through the config").expect("write");
    c.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(read_to_end(&mut c), b"through the config");
    echo.join().expect("echo");
    relay.signal("TERM");
    assert_eq!(relay.wait_exit(Duration::from_secs(20)), Some(0));
}

/// Out of descriptors (EMFILE), the accept loop pauses and says so instead
/// of spinning, and serves again once descriptors are free.
#[test]
fn accept_backs_off_on_emfile_and_recovers() {
    let up = TcpListener::bind("127.0.0.1:0").expect("bind");
    let up_addr = up.local_addr().expect("addr");
    // An echo upstream, a thread per connection.
    std::thread::spawn(move || {
        for mut s in up.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let ready = dir.path().join("ready.json");
    // Room for only a few descriptors (the relay raises its soft limit to the
    // hard one, so both are set).
    let cmd = format!(
        "ulimit -n 32 && exec {} --ready-file {} relay --listen 127.0.0.1:0 --to {up_addr}",
        bin(),
        ready.display()
    );
    let log = dir.path().join("relay.log");
    let mut child = std::process::Command::new("bash")
        .args(["-c", &cmd])
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let listen: SocketAddr = loop {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            let doc: serde_json::Value = serde_json::from_str(&text).expect("ready file");
            break doc["routes"]["relay"]["client"]
                .as_str()
                .expect("client address")
                .parse()
                .expect("address");
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("spillway exited ({status}):\n{}", read_log());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not ready:\n{}",
            read_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // 40 clients need about 80 descriptors in the relay: it runs out.
    let clients: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(listen).expect("connect (the kernel backlog accepts)"))
        .collect();
    for _ in 0..500 {
        if read_log().contains("pausing accepts") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        read_log().contains("pausing accepts"),
        "no EMFILE back-off logged:\n{}",
        read_log()
    );
    // Free the descriptors, then a new client gets an echo through the relay.
    drop(clients);
    let mut echoed = false;
    for _ in 0..50 {
        if let Ok(mut c) = TcpStream::connect(listen) {
            c.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            let mut got = [0u8; 4];
            if c.write_all(b"ping").is_ok() && c.read_exact(&mut got).is_ok() && &got == b"ping" {
                echoed = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        echoed,
        "the relay did not serve again after descriptors were freed:\n{}",
        read_log()
    );
}

/// At the process-wide spill bound the relay falls back to backpressure:
/// the bound holds at every sample, the transfer completes byte-exact, and
/// the budget is fully given back afterwards.
#[test]
fn spill_bound_falls_back_to_backpressure_without_loss() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let spill_dir = tempfile::tempdir().expect("tempdir");
    const TOTAL: usize = 16 << 20;
    const BOUND: u64 = 256 << 10;
    rt.block_on(async {
        let (up, up_addr) = upstream_listener().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut route = StreamRoute::new("bounded", addr.to_string(), vec![up_addr.to_string()]);
        route.spill = Some(Spill {
            dir: spill_dir.path().to_path_buf(),
            max_per_connection: 1 << 30,
        });
        let budget = Arc::new(SpillBudget::new(BOUND));
        let server = Arc::new(StreamServer::new(route, Arc::clone(&budget)).expect("server"));
        let token = CancellationToken::new();
        tokio::spawn(Arc::clone(&server).serve(listener, token.clone(), Duration::from_secs(5)));
        let data = pattern(TOTAL, 42);
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            let (mut s, _) = up.accept().await.expect("accept");
            s.write_all(&sent).await.expect("upstream write");
            s.shutdown().await.expect("shutdown");
        });
        let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut got = Vec::with_capacity(TOTAL);
        let mut buf = vec![0u8; 32 << 10];
        let mut peak = 0u64;
        loop {
            let n = c.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            peak = peak.max(budget.used());
            // A slow reader, so the upstream side must spill or wait.
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        writer.await.expect("writer");
        assert!(
            got == data,
            "bytes differ: got {} of {}",
            got.len(),
            data.len()
        );
        assert!(peak <= BOUND, "spill use {peak} exceeded the bound {BOUND}");
        assert!(peak > 0, "the slow reader never made the relay spill");
        assert!(
            server
                .stats()
                .spilled_bytes
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        );
        drop(c);
        wait_for(|| budget.used() == 0).await;
        token.cancel();
    });
}

// ------------------------------------------- options accepted sockets have ---

/// Waits until the relay accepted `client`, and returns its socket's options.
async fn accepted_options(client: &std::net::TcpStream) -> (bool, Duration, Option<Duration>) {
    let me = client.local_addr().expect("addr");
    for _ in 0..500 {
        if let Some(o) = common::fds::options_of_socket_to(me) {
            return o;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the relay did not accept {me} within 5 s");
}

/// An upstream that accepts and holds every connection, silent.
async fn holding_upstream() -> SocketAddr {
    let (up, up_addr) = upstream_listener().await;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = up.accept().await {
            held.push(s);
        }
    });
    up_addr
}

/// `tcp_keepalive = false` with a `tcp_user_timeout`: every accepted client
/// socket gets the user timeout (README: accepted sockets take it from the
/// listener). 7ad1b75 gave it to the first one only: it set the
/// listener's user timeout only together with keepalive.
#[tokio::test]
async fn user_timeout_without_keepalive_reaches_every_accepted_socket() {
    let up_addr = holding_upstream().await;
    let (addr, token, _) = start_route(vec![up_addr.to_string()], |r| {
        r.timeouts.socket.keepalive = None;
        r.timeouts.socket.user_timeout = Some(Duration::from_secs(19));
    })
    .await;
    for i in 0..3 {
        let c = std::net::TcpStream::connect(addr).expect("connect");
        let (_, _, uto) = accepted_options(&c).await;
        assert_eq!(uto, Some(Duration::from_secs(19)), "client {i}");
    }
    token.cancel();
}

/// After a reload changed the keepalive settings, every client accepted
/// from then on has the new ones, also those already waiting in the
/// accept queue when the accept loop first ran after the reload: they
/// inherited the old ones from the listener at their handshake (7ad1b75
/// set only the first of them again).
#[tokio::test]
async fn after_a_reload_clients_queued_in_the_backlog_get_the_new_options() {
    let up_addr = holding_upstream().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = |idle: u64, uto: u64| {
        let mut route = StreamRoute::new("test", addr.to_string(), vec![up_addr.to_string()]);
        route.timeouts.socket.keepalive = Some(spillway_net::dial::Keepalive {
            idle: Duration::from_secs(idle),
            interval: Duration::from_secs(10),
            count: 3,
        });
        route.timeouts.socket.user_timeout = Some(Duration::from_secs(uto));
        Arc::new(StreamServer::new(route, Arc::new(SpillBudget::new(1 << 30))).expect("server"))
    };
    let (tx, rx) = tokio::sync::watch::channel(server(7, 11));
    let token = CancellationToken::new();
    tokio::spawn(StreamServer::serve_current(
        rx,
        listener,
        token.clone(),
        Duration::from_secs(5),
        CancellationToken::new(),
    ));
    let before = std::net::TcpStream::connect(addr).expect("connect");
    assert_eq!(
        accepted_options(&before).await,
        (true, Duration::from_secs(7), Some(Duration::from_secs(11)))
    );
    // The reload; then three clients connect before the accept loop runs
    // again (this runtime has one thread, and the connects do not yield).
    tx.send(server(5, 23)).expect("reload");
    let queued: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
        .collect();
    for (i, c) in queued.iter().enumerate() {
        assert_eq!(
            accepted_options(c).await,
            (true, Duration::from_secs(5), Some(Duration::from_secs(23))),
            "client {i} accepted after the reload"
        );
    }
    token.cancel();
}
