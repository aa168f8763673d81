//! A spool read that misses the page cache holds up no consumer: on a
//! disk where every segment read takes 200 ms, consumers keep delivering
//! (what was read ahead) and acknowledging while a read is in flight. The
//! test counts the messages the relay delivered during each slow read; it
//! asserts no timing.
//!
//! (On a build that read under the dispatcher's lock on a consumer's task,
//! every consumer waited for each read: nothing was delivered during one.)

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use spillway_spool::sim::{SimFs, SlowKind};
use spillway_spool::Durability;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const N: usize = 40_000;

fn line(i: usize) -> String {
    format!("{i:08} {}\n", "x".repeat(90))
}

/// Reads lines until `total` (shared by every consumer) reaches `N` or
/// `deadline`; returns the lines read.
async fn consume(
    addr: std::net::SocketAddr,
    total: Arc<std::sync::atomic::AtomicUsize>,
    deadline: tokio::time::Instant,
) -> Vec<String> {
    // A small receive buffer and paced reads: what the relay counts as
    // delivered (acknowledged by this TCP) follows what this consumer
    // reads, a few MB a second, so deliveries go on through each read.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(16 << 10).unwrap();
    let mut s = sock.connect(addr).await.unwrap();
    let mut got = Vec::new();
    let mut partial = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    while total.load(Ordering::SeqCst) < N && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let n = match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
            Ok(r) => r.unwrap(),
            Err(_) => continue,
        };
        assert!(n > 0, "the relay closed a consumer");
        partial.extend_from_slice(&buf[..n]);
        while let Some(i) = partial.iter().position(|&b| b == b'\n') {
            let l: Vec<u8> = partial.drain(..=i).collect();
            got.push(String::from_utf8(l).unwrap());
            total.fetch_add(1, Ordering::SeqCst);
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_deliver_while_a_spool_read_waits_for_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let fs = SimFs::new();
    let relay = common::inproc::start(dir.path(), fs.clone(), |route| {
        // Everything on disk: every delivery is read from a segment.
        route.memory = 0;
        route.fsync = Durability::Interval(Duration::from_secs(3600));
    })
    .await;
    let (server, src_addr, sink_addr) = (Arc::clone(&relay.server), relay.source, relay.sink);
    let (token, serve) = (relay.token, relay.serve);

    // Every segment read takes 200 ms from now on.
    fs.faults.slow_read_ms.store(200, Ordering::SeqCst);

    // A backlog of about 4 MB, queued while no consumer is connected.
    let mut p = TcpStream::connect(src_addr).await.unwrap();
    let data: String = (0..N).map(line).collect();
    p.write_all(data.as_bytes()).await.unwrap();
    p.shutdown().await.unwrap();
    let t0 = Instant::now();
    while server.stats().messages_in.load(Ordering::SeqCst) < N as u64 {
        assert!(t0.elapsed() < Duration::from_secs(30), "backlog not queued");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The relay's deliveries are the progress each slow read records.
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (server, fs, stop) = (Arc::clone(&server), fs.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let delivered = server.stats().messages_delivered.load(Ordering::SeqCst);
                fs.faults.reads_done.store(delivered, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let total = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let a = tokio::spawn(consume(sink_addr, Arc::clone(&total), deadline));
    let b = tokio::spawn(consume(sink_addr, Arc::clone(&total), deadline));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    stop.store(true, Ordering::SeqCst);
    monitor.join().unwrap();
    fs.faults.slow_read_ms.store(0, Ordering::SeqCst);

    // Every message once.
    let all: HashSet<&String> = a.iter().chain(b.iter()).collect();
    assert_eq!(a.len() + b.len(), N, "duplicates or loss");
    assert_eq!(all.len(), N, "duplicates");

    let ops = fs.faults.slow_ops.lock().unwrap().clone();
    let reads: Vec<u64> = ops
        .iter()
        .filter(|o| o.kind == SlowKind::Read)
        .map(|o| o.reads_during)
        .collect();
    let progressed = reads.iter().filter(|&&n| n > 0).count();
    assert!(
        reads.len() >= 2 && progressed >= 2,
        "deliveries during each slow read: {reads:?}"
    );
    eprintln!("messages delivered during each slow read: {reads:?}");

    token.cancel();
    serve.await.unwrap().unwrap();
}
