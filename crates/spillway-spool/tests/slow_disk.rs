//! Nothing slow under the lock that appenders and readers wait on: on a
//! disk where every fsync, create and remove takes 200 ms, appends and
//! reads still complete while a segment roll (seal, spare creation, the
//! new segment's name) or a deletion of acknowledged segments is in
//! flight. The test counts operations done during each slow one; it
//! asserts no timing.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{msg, small_config, SimFs};
use spillway_spool::sim::SlowKind;
use spillway_spool::{Durability, Spool, SpoolConfig, WhenFull};

#[test]
fn appends_and_reads_progress_while_rolls_and_deletions_wait_for_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let fs = SimFs::new();
    let mut cfg = SpoolConfig::new(dir.path());
    cfg.segment_size = 4096;
    cfg.memory_limit = 0;
    // Fsyncs at rolls and deletions only (the interval sync never comes
    // due), so every slow fsync is one the lock must not cover.
    cfg.durability = Durability::Interval(Duration::from_secs(3600));
    cfg.when_full = WhenFull::Block;
    cfg.cursor_interval = Duration::from_secs(3600);
    let (spool, _) = Spool::open_with_fs(cfg, fs.clone()).unwrap();
    // The first segment exists before the disk turns slow.
    spool.append(&[&msg(0, 20)]).unwrap();
    fs.faults.slow_ms.store(200, Ordering::SeqCst);

    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for t in 0..2u64 {
        let (s, f, stop) = (spool.clone(), fs.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut i = 0;
            // About 100 appends a second each, so a segment (about 80 of
            // these records) takes longer to fill than one slow operation:
            // the appends a roll's slow half must not stop are there.
            while !stop.load(Ordering::SeqCst) {
                s.append(&[&msg(t * 1_000_000 + i, 20)]).unwrap();
                f.faults.appends_done.fetch_add(1, Ordering::SeqCst);
                i += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
        }));
    }
    // One reader acknowledges (which deletes segments); another only reads.
    {
        let (s, stop) = (spool.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let floor = s.ack_floor();
                let got = s.read(floor, 20, 1 << 20).unwrap();
                match got.last() {
                    Some(m) => s.ack(m.seq + 1).unwrap(),
                    None => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        }));
    }
    {
        let (s, f, stop) = (spool.clone(), fs.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut next = 0;
            while !stop.load(Ordering::SeqCst) {
                let got = s.read(next, 5, 1 << 20).unwrap();
                match got.last() {
                    Some(m) => {
                        next = m.seq + 1;
                        f.faults.reads_done.fetch_add(1, Ordering::SeqCst);
                    }
                    None => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        }));
    }

    // Until every kind of slow operation was seen with progress, or a
    // bounded time.
    let kinds = [
        SlowKind::SegmentSync,
        SlowKind::DirSync,
        SlowKind::Create,
        SlowKind::Remove,
    ];
    let progressed = |k: SlowKind| {
        let ops = fs.faults.slow_ops.lock().unwrap();
        // Of segment files (not the cursor's temp files, say), except for
        // directory fsyncs.
        let of_kind: Vec<_> = ops
            .iter()
            .filter(|o| o.kind == k)
            .filter(|o| k == SlowKind::DirSync || o.name.contains(".seg"))
            .collect();
        (
            of_kind.len(),
            // Each thread may count one operation it finished just before
            // the slow one began: more than that is progress.
            of_kind.iter().any(|o| o.appends_during > 2),
            of_kind.iter().any(|o| o.reads_during > 1),
        )
    };
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
        if kinds.iter().all(|&k| {
            let (_, a, r) = progressed(k);
            a && r
        }) {
            break;
        }
    }
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    fs.faults.slow_ms.store(0, Ordering::SeqCst);
    let report: Vec<String> = kinds
        .iter()
        .map(|&k| {
            let (n, a, r) = progressed(k);
            format!("{k:?}: {n} ops, appends progressed {a}, reads progressed {r}")
        })
        .collect();
    for &k in &kinds {
        let (n, a, r) = progressed(k);
        assert!(n > 0 && a && r, "{}", report.join("\n"));
    }
    // And nothing was lost on the way.
    let floor = spool.ack_floor();
    let next = spool.next_seq();
    let mut at = floor;
    while at < next {
        let got = spool.read(at, 1000, 1 << 20).unwrap();
        assert_eq!(got.first().map(|m| m.seq), Some(at));
        at = got.last().unwrap().seq + 1;
    }
    spool.close().unwrap();
}

/// A reload that lowers `memory` shrinks (here: removes) the memory tier's
/// reserve file; the unlink waits for the disk without the lock appenders
/// wait on.
#[test]
fn appends_progress_while_a_reload_removes_the_reserve() {
    let dir = tempfile::tempdir().unwrap();
    let fs = SimFs::new();
    let mut cfg = SpoolConfig::new(dir.path());
    cfg.memory_limit = 64 << 10;
    cfg.durability = Durability::Interval(Duration::from_secs(3600));
    cfg.cursor_interval = Duration::from_secs(3600);
    let (spool, _) = Spool::open_with_fs(cfg, fs.clone()).unwrap();
    assert!(dir.path().join("reserve").exists(), "no reserve at open");
    // A message larger than the memory tier goes to disk; later appends go
    // to disk too (order), so the memory tier stays empty and the reload
    // has nothing to flush.
    spool.append(&[&msg(0, 100_000)]).unwrap();
    let mut t = spool.tunables();
    fs.faults.slow_ms.store(200, Ordering::SeqCst);

    let stop = Arc::new(AtomicBool::new(false));
    let appender = {
        let (s, f, stop) = (spool.clone(), fs.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 1;
            while !stop.load(Ordering::SeqCst) {
                s.append(&[&msg(i, 20)]).unwrap();
                f.faults.appends_done.fetch_add(1, Ordering::SeqCst);
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    t.memory_limit = 0;
    spool.reconfigure(t).unwrap();
    stop.store(true, Ordering::SeqCst);
    appender.join().unwrap();
    fs.faults.slow_ms.store(0, Ordering::SeqCst);
    let ops = fs.faults.slow_ops.lock().unwrap().clone();
    let removes: Vec<_> = ops
        .iter()
        .filter(|o| o.kind == SlowKind::Remove && o.name == "reserve")
        .collect();
    assert_eq!(removes.len(), 1, "{ops:?}");
    assert!(removes[0].appends_during > 2, "{ops:?}");
    assert!(!dir.path().join("reserve").exists());
    spool.close().unwrap();
}

/// `read_cached` (a consumer's own read, on a task that must not block)
/// serves what needs no wait and answers None, at once, where a read
/// would wait for the disk.
#[test]
fn a_cached_read_never_waits_for_a_slow_disk() {
    let payloads: Vec<Vec<u8>> = (0..10).map(|i| msg(i, 100)).collect();
    let slices: Vec<&[u8]> = payloads.iter().map(|m| &m[..]).collect();
    let as_data = |got: Vec<spillway_spool::Message>| -> Vec<Vec<u8>> {
        got.iter().map(|m| m.data.to_vec()).collect()
    };

    // Everything on a disk whose reads take 200 ms: None, without a read.
    let dir = tempfile::tempdir().unwrap();
    let fs = SimFs::new();
    let mut cfg = small_config(dir.path());
    cfg.memory_limit = 0;
    let (spool, _) = Spool::open_with_fs(cfg, fs.clone()).unwrap();
    spool.append(&slices).unwrap();
    fs.faults.slow_read_ms.store(200, Ordering::SeqCst);
    assert!(spool.read_cached(0, 100, 1 << 20).unwrap().is_none());
    let ops = fs.faults.slow_ops.lock().unwrap().clone();
    assert!(ops.iter().all(|o| o.kind != SlowKind::Read), "{ops:?}");
    // The same read may wait: it does, and returns everything.
    assert_eq!(as_data(spool.read(0, 100, 1 << 20).unwrap()), payloads);

    // The memory tier needs no file, however slow the disk.
    let dir = tempfile::tempdir().unwrap();
    let fs = SimFs::new();
    let mut cfg = small_config(dir.path());
    cfg.memory_limit = 1 << 20;
    let (spool, _) = Spool::open_with_fs(cfg, fs.clone()).unwrap();
    spool.append(&slices).unwrap();
    fs.faults.slow_read_ms.store(200, Ordering::SeqCst);
    let got = spool
        .read_cached(0, 100, 1 << 20)
        .unwrap()
        .expect("memory tier");
    assert_eq!(as_data(got), payloads);

    // Files whose every byte is in memory: the same as `read`.
    let fs = spillway_spool::mem::MemFs::new();
    let mut cfg = small_config(std::path::Path::new("/mem/spool"));
    cfg.memory_limit = 0;
    let (spool, _) = Spool::open_with_fs(cfg, fs).unwrap();
    spool.append(&slices).unwrap();
    let got = spool.read_cached(0, 100, 1 << 20).unwrap().expect("cached");
    assert_eq!(as_data(got), payloads);
}
