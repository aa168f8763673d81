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

/// A producer's batch is one record, often larger than a read: reads that
/// stop inside it continue from what the last read kept of it instead of
/// reading and checking the whole record again. Every message comes back
/// once, in order, whatever the read sizes, including reads that start
/// behind or ahead of where the last one stopped; and the record is read
/// from the file about once, not once per read.
#[test]
fn reads_inside_one_large_record_read_it_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = SpoolConfig::new(dir.path());
    cfg.memory_limit = 0;
    cfg.durability = Durability::Never;
    let (spool, _) = Spool::open(cfg).expect("open");
    let msg = |i: u64| format!("m{i:06}-{}", "y".repeat((i % 50) as usize)).into_bytes();
    let total = 4000u64;
    let batch: Vec<Vec<u8>> = (0..total).map(msg).collect();
    let refs: Vec<&[u8]> = batch.iter().map(|m| m.as_slice()).collect();
    spool.append(&refs).expect("append one record");
    let record: u64 = batch.iter().map(|m| m.len() as u64 + 2).sum();
    let before = spool.stats().bytes_read;

    let mut next = 0;
    let mut sizes = [7usize, 1, 100, 33, 500].iter().cycle();
    while next < total {
        let n = *sizes.next().expect("cycle");
        let got = spool.read(next, n, usize::MAX).expect("read");
        assert_eq!(
            got.len() as u64,
            n.min((total - next) as usize) as u64,
            "at {next}"
        );
        for m in &got {
            assert_eq!(m.seq, next);
            assert_eq!(m.data[..], msg(next)[..]);
            next += 1;
        }
    }
    let read = spool.stats().bytes_read - before;
    assert!(
        read < 2 * record + (128 << 10),
        "{read} bytes read for a record of {record}"
    );

    // Behind and ahead of the last stop: still exact.
    assert_eq!(spool.read(10, 3, usize::MAX).expect("read")[0].seq, 10);
    let mid = spool.read(2000, 5, usize::MAX).expect("read");
    assert_eq!(
        mid.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [2000, 2001, 2002, 2003, 2004]
    );
    let behind = spool.read(1500, 2, usize::MAX).expect("read");
    assert_eq!(
        behind.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [1500, 1501]
    );
    assert_eq!(behind[1].data[..], msg(1501)[..]);
    let on = spool.read(2005, 3, usize::MAX).expect("read");
    assert_eq!(
        on.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [2005, 2006, 2007]
    );
    assert_eq!(on[2].data[..], msg(2007)[..]);
}
