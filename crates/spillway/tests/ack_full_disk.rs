//! A dead letter on a full disk: the message a consumer TERMs holds its
//! group's floor until the dead-letter spool has it, and on a full disk
//! only moving the floor frees space. The dead-letter spool's reserve
//! breaks that knot: the route goes on. In-process, over the simulated
//! disk (its free space is a counter), with real sockets.
//!
//! On the simulated disk this passes without the reserve too: its small
//! frees (a renamed cursor's old file) let the first dead letter in. The
//! wedge itself was reproduced on a real 16 MiB tmpfs with a filler file
//! (the hostile review's `t08_dead_full_disk.py`: without the reserve,
//! "dead-letter spool full" every second until the filler went; with it,
//! "the dead-letter reserve is given up", the letter written, the
//! segments freed). This test keeps the end-to-end behaviour honest.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use spillway::config::Protocol;
use spillway_spool::sim::SimFs;
use spillway_spool::{Durability, WhenFull};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const N: usize = 3000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_term_on_a_full_disk_does_not_wedge_the_route() {
    let dir = tempfile::tempdir().unwrap();
    let fs = SimFs::new();
    let relay = common::inproc::start(dir.path(), fs.clone(), |route| {
        route.memory = 0;
        route.when_full = WhenFull::Block;
        route.segment_size = 64 << 10;
        route.fsync = Durability::Never;
        route.to_protocol = Protocol::Ack;
    })
    .await;
    let (server, src_addr, sink_addr) = (Arc::clone(&relay.server), relay.source, relay.sink);
    // The dead-letter spool's reserve is made by its writer thread at
    // start: in place before the disk gets a budget.
    let reserve = dir.path().join("spool/dead/letters.reserve");
    let t0 = Instant::now();
    while std::fs::metadata(&reserve).map_or(0, |m| m.len()) < 4 << 20 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no dead-letter reserve"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // From now on the disk holds 1 MiB more: the producer's 3 MB fill it.
    fs.faults.space_left.store(1 << 20, Ordering::SeqCst);

    let producer = tokio::spawn(async move {
        let mut p = TcpStream::connect(src_addr).await.unwrap();
        for i in 0..N {
            let line = format!("{i:06} {}\n", "d".repeat(1000));
            p.write_all(line.as_bytes()).await.unwrap();
        }
        p.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let _ = p.read_to_end(&mut rest).await;
    });
    // Wait until the disk is full and the producer blocked.
    let t0 = Instant::now();
    while fs.faults.space_left.load(Ordering::SeqCst) > 4096 {
        assert!(
            // Bounded, not timed: a debug build on a loaded 2-core machine
            // took 13 s here (and over 30 s once under the full suite).
            t0.elapsed() < Duration::from_secs(90),
            "the disk never filled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Completely full: not even a dead letter fits.
    fs.faults.space_left.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let queued_when_full = server.stats().messages_in.load(Ordering::SeqCst);
    assert!(
        (queued_when_full as usize) < N,
        "everything fit: no full disk"
    );

    // A consumer refuses the first message and acknowledges the rest.
    let s = TcpStream::connect(sink_addr).await.unwrap();
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"SPILLWAY 1 role=consumer encoding=text window=64\n")
        .await
        .unwrap();
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("OK "), "{line}");
    let mut got = 0usize;
    let mut termed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got + 1 < N {
        line.clear();
        let n = tokio::time::timeout_at(deadline, r.read_line(&mut line))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "wedged after {got} of {N} messages ({} queued, {} bytes free)",
                    server.stats().messages_in.load(Ordering::SeqCst),
                    fs.faults.space_left.load(Ordering::SeqCst)
                )
            })
            .unwrap();
        assert!(n > 0, "the relay closed the consumer");
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f[0], "MSG", "{line}");
        let len: usize = f[3].parse().unwrap();
        let mut body = vec![0u8; len + 1];
        r.read_exact(&mut body).await.unwrap();
        let reply = if termed {
            got += 1;
            format!("ACK {}\n", f[1])
        } else {
            termed = true;
            format!("TERM {} refused\n", f[1])
        };
        w.write_all(reply.as_bytes()).await.unwrap();
    }
    producer.await.unwrap();
    assert_eq!(server.stats().messages_in.load(Ordering::SeqCst), N as u64);
    relay.token.cancel();
    relay.serve.await.unwrap().unwrap();
}
