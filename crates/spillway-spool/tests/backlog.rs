//! A backlog larger than the memory tier, drained the way the queue route
//! drains it: batched appends past the memory limit (so the tail goes to
//! disk), then reads of 8192 messages with an ack after each, while a
//! housekeeping thread ticks. Every message must come back, in order, and a
//! read must never come back empty while messages remain.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use spillway_spool::{Durability, Spool, SpoolConfig};

#[test]
fn backlog_past_the_memory_tier_drains_completely() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = SpoolConfig::new(dir.path());
    cfg.memory_limit = 4 << 20;
    cfg.segment_size = 1 << 20;
    cfg.durability = Durability::Interval(Duration::from_millis(100));
    cfg.cursor_interval = Duration::from_millis(100);
    let (spool, _) = Spool::open(cfg).expect("open");
    let total: u64 = 300_000;
    let line = |i: u64| format!("seq={i:010} {}\n", "x".repeat(47)).into_bytes();
    let mut i = 0;
    while i < total {
        let n = 4096.min(total - i);
        let batch: Vec<Vec<u8>> = (i..i + n).map(line).collect();
        let refs: Vec<&[u8]> = batch.iter().map(|m| m.as_slice()).collect();
        spool.append(&refs).expect("append");
        i += n;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = {
        let spool = spool.clone();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                spool.tick().expect("tick");
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let mut next = spool.ack_floor();
    let first = next;
    while next < first + total {
        let msgs = spool.read(next, 8192, 512 << 10).expect("read");
        assert!(
            !msgs.is_empty(),
            "empty read at {next} of {}",
            first + total
        );
        for m in &msgs {
            assert_eq!(m.seq, next);
            assert_eq!(&m.data[..], &line(next - first)[..]);
            next += 1;
        }
        spool.ack(next).expect("ack");
    }
    stop.store(true, Ordering::Relaxed);
    ticker.join().expect("ticker");
    spool.close().expect("close");
}
