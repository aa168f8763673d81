//! Defect 2 of "queue routes never lose what they accepted": the memory
//! tier survives a graceful close on a full disk. The spool holds a reserve
//! file as large as the memory tier can get once written as a segment;
//! `close` deletes it and writes the memory tier into the freed space.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{msg, small_config, SimFs};
use spillway_spool::{Spool, SpoolConfig, SpoolError, Tier};

const MEMORY: u64 = 64 * 1024;

fn config(dir: &Path) -> SpoolConfig {
    let mut c = small_config(dir);
    c.memory_limit = MEMORY;
    c.cursor_interval = Duration::ZERO;
    c.block_timeout = Some(Duration::from_millis(50));
    c
}

fn reserve_len(dir: &Path) -> Option<u64> {
    std::fs::metadata(dir.join("reserve")).ok().map(|m| m.len())
}

fn read_all(s: &Spool) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let got = s.read(pos, 100, 1 << 20).unwrap();
        let Some(last) = got.last() else {
            return out;
        };
        pos = last.seq + 1;
        out.extend(got.into_iter().map(|m| (m.seq, m.data.to_vec())));
    }
}

/// Appends single 200-byte messages while they go to the memory tier (at
/// most `limit`) until one finds no room at all; returns how many did.
fn fill_memory(s: &Spool, limit: u64) -> u64 {
    let mut n = 0;
    while n < limit {
        match s.append(&[&msg(n, 200)]) {
            Ok(o) if o.tier == Some(Tier::Memory) => n += 1,
            Ok(_) => panic!("message {n} went to disk"),
            Err(e) if e.is_full() => break,
            Err(e) => panic!("{e}"),
        }
    }
    n
}

/// The defect: SIGTERM with the disk full (the disk tier was empty, so
/// nothing told the producer side). Today close fails on ENOSPC and every
/// message of the memory tier is lost.
#[test]
fn close_on_a_full_disk_writes_the_memory_tier() {
    let dir = tempfile::tempdir().unwrap();
    let fs = SimFs::new();
    let (s, _) = Spool::open_with_fs(config(dir.path()), fs.clone()).unwrap();
    let batch: Vec<Vec<u8>> = (0..100).map(|i| msg(i, 200)).collect();
    let refs: Vec<&[u8]> = batch.iter().map(|m| &m[..]).collect();
    assert_eq!(s.append(&refs).unwrap().tier, Some(Tier::Memory));
    fs.faults.space_left.store(0, Ordering::SeqCst); // someone filled the disk
    s.close()
        .expect("close writes the memory tier into its reserve");
    fs.faults.space_left.store(0, Ordering::SeqCst); // and takes what is left

    // Reopen while the disk is still full: the memory tier cannot be
    // reserved again, so it has no room (every message goes to disk).
    let (s, rep) = Spool::open_with_fs(config(dir.path()), fs.clone()).unwrap();
    assert_eq!(rep.next_seq, 100, "{rep}");
    assert_eq!(rep.memory_reserved, 0, "{rep}");
    assert!(rep.to_string().contains("memory tier"), "{rep}");
    let all = read_all(&s);
    assert_eq!(all.len(), 100);
    for (seq, data) in &all {
        assert_eq!(data, &msg(*seq, 200));
    }
    assert!(spillway_spool::verify(dir.path(), |_, _| {}).unwrap().ok());
}

/// What the memory tier admits is what fits its reserve once written as a
/// segment: the size on disk, not the message bytes (empty messages are not
/// free).
#[test]
fn memory_tier_admits_by_size_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.memory_limit = 4096;
    let (s, _) = Spool::open(cfg.clone()).unwrap();
    let empties: Vec<&[u8]> = vec![b""; 500];
    let mut tiers = Vec::new();
    for _ in 0..20 {
        tiers.push(s.append(&empties).unwrap().tier.unwrap());
    }
    let in_memory = tiers.iter().filter(|t| **t == Tier::Memory).count();
    assert!(
        (1..20).contains(&in_memory),
        "empty messages must fill the memory tier too: {tiers:?}"
    );
    assert!(tiers[in_memory..].iter().all(|t| *t == Tier::Disk));
    s.close().unwrap();
    let ins = spillway_spool::inspect(dir.path()).unwrap();
    assert!(
        ins.segments[0].bytes <= cfg.memory_limit,
        "the memory tier took {} bytes on disk, more than its {} byte reserve",
        ins.segments[0].bytes,
        cfg.memory_limit
    );
    let (s, rep) = Spool::open(cfg).unwrap();
    assert_eq!(rep.next_seq, 20 * 500);
    assert_eq!(read_all(&s).len(), 20 * 500);
}

#[test]
fn the_reserve_is_allocated_at_open_and_released_at_close() {
    let dir = tempfile::tempdir().unwrap();
    let fs = SimFs::new();
    fs.faults.space_left.store(1 << 20, Ordering::SeqCst);
    let (s, rep) = Spool::open_with_fs(config(dir.path()), fs.clone()).unwrap();
    assert_eq!(rep.memory_reserved, MEMORY, "{rep}");
    assert_eq!(reserve_len(dir.path()), Some(MEMORY));
    assert_eq!(
        fs.faults.space_left.load(Ordering::SeqCst),
        (1 << 20) - MEMORY as i64,
        "the reserve really takes space"
    );
    assert_eq!(s.stats().mem_reserved, MEMORY);
    s.close().unwrap();
    assert_eq!(
        reserve_len(dir.path()),
        None,
        "a closed spool holds no reserve"
    );
    let left = fs.faults.space_left.load(Ordering::SeqCst);
    assert!(
        left >= (1 << 20) - 64,
        "given back (but the cursor): {left}"
    );
}

/// On the real file system the reserve occupies blocks: a sparse file
/// would hold no space.
#[test]
fn the_reserve_holds_real_blocks() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let (s, rep) = Spool::open(config(dir.path())).unwrap();
    assert_eq!(rep.memory_reserved, MEMORY);
    let md = std::fs::metadata(dir.path().join("reserve")).unwrap();
    assert_eq!(md.len(), MEMORY);
    assert!(md.blocks() * 512 >= MEMORY, "{} blocks", md.blocks());
    s.close().unwrap();
}

/// A crash leaves the reserve behind; open reuses it (no new write), and
/// the offline tools do not mistake it for part of the log.
#[test]
fn a_crash_leaves_the_reserve_and_open_reuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let fs = SimFs::new();
    fs.faults.space_left.store(1 << 20, Ordering::SeqCst);
    let (s, _) = Spool::open_with_fs(config(dir.path()), fs.clone()).unwrap();
    assert_eq!(fill_memory(&s, 10), 10);
    drop(s); // crash: the memory tier is lost, the reserve stays
    assert_eq!(reserve_len(dir.path()), Some(MEMORY));
    let left = fs.faults.space_left.load(Ordering::SeqCst);
    let (s, rep) = Spool::open_with_fs(config(dir.path()), fs.clone()).unwrap();
    assert_eq!(rep.memory_reserved, MEMORY);
    assert_eq!(fs.faults.space_left.load(Ordering::SeqCst), left, "reused");
    assert_eq!(
        rep.next_seq, 0,
        "memory tier lost at the crash, as documented"
    );

    // The tools see only the log.
    let ins = spillway_spool::inspect(dir.path()).unwrap();
    assert!(ins.segments.iter().all(|seg| seg.header_problem.is_none()));
    assert!(spillway_spool::verify(dir.path(), |_, _| {}).unwrap().ok());
    assert_eq!(
        spillway_spool::dump(dir.path(), Some(0), None, |_| Ok(())).unwrap(),
        0
    );
    drop(s);

    // A smaller memory tier shrinks the reserve; none removes it.
    let mut cfg = config(dir.path());
    cfg.memory_limit = 8192;
    let (s, rep) = Spool::open_with_fs(cfg.clone(), fs.clone()).unwrap();
    assert_eq!(rep.memory_reserved, 8192);
    assert_eq!(reserve_len(dir.path()), Some(8192));
    drop(s);
    cfg.memory_limit = 0;
    let (s, _) = Spool::open_with_fs(cfg, fs.clone()).unwrap();
    assert_eq!(reserve_len(dir.path()), None);
    drop(s);
}

/// No room for the reserve at open: the memory tier shrinks to what could
/// be reserved, and that is reported. Everything it accepted still reaches
/// the disk at close. Once space returns (and the disk tier is empty),
/// `tick` grows the reserve back.
#[test]
fn a_full_disk_at_open_shrinks_the_memory_tier_until_tick_regrows_it() {
    let dir = tempfile::tempdir().unwrap();
    let fs = SimFs::new();
    let mut cfg = config(dir.path());
    cfg.reserve_retry = Duration::ZERO;
    fs.faults.space_left.store(10_000, Ordering::SeqCst);
    let (s, rep) = Spool::open_with_fs(cfg.clone(), fs.clone()).unwrap();
    assert_eq!(rep.memory_reserved, 10_000, "{rep}");
    assert!(rep.to_string().contains("memory tier"), "{rep}");
    assert_eq!(s.stats().mem_reserved, 10_000);
    assert!(s.stats().mem_reserve_short, "short for lack of space");
    let n = fill_memory(&s, 1000);
    assert!(n > 10 && n < 10_000 / 200, "{n} messages in memory");
    // The disk is full: the next message cannot go anywhere.
    assert!(s.append(&[&msg(n, 200)]).unwrap_err().is_full());

    // Still full at the next tick: nothing changes.
    s.tick().unwrap();
    assert_eq!(s.stats().mem_reserved, 10_000);
    s.close()
        .expect("the memory tier fits its (smaller) reserve");
    let (s, rep) = Spool::open_with_fs(cfg.clone(), fs.clone()).unwrap();
    assert_eq!(rep.next_seq, n);
    assert_eq!(read_all(&s).len() as u64, n);
    s.ack(n).unwrap();

    // Space returns; the disk tier is empty: tick grows the reserve.
    fs.faults.space_left.store(-1, Ordering::SeqCst);
    s.tick().unwrap();
    assert_eq!(s.stats().mem_reserved, MEMORY);
    assert!(!s.stats().mem_reserve_short);
    assert_eq!(reserve_len(dir.path()), Some(MEMORY));
    s.close().unwrap();
}

/// `close` still cannot write the memory tier (someone took the freed space
/// first): the error says exactly what was not written.
#[test]
fn close_says_how_many_messages_it_could_not_write() {
    let dir = tempfile::tempdir().unwrap();
    let fs = SimFs::new();
    let (s, _) = Spool::open_with_fs(config(dir.path()), fs.clone()).unwrap();
    s.append(&[b"acked"]).unwrap();
    s.ack(1).unwrap();
    let batch: Vec<Vec<u8>> = (0..37).map(|i| msg(i, 100)).collect();
    let refs: Vec<&[u8]> = batch.iter().map(|m| &m[..]).collect();
    assert_eq!(s.append(&refs).unwrap().tier, Some(Tier::Memory));
    fs.faults.space_left.store(0, Ordering::SeqCst);
    fs.faults.freed_space_taken.store(true, Ordering::SeqCst);
    match s.close() {
        Err(e @ SpoolError::MemoryTierNotWritten { .. }) => {
            let SpoolError::MemoryTierNotWritten {
                msgs,
                bytes,
                first_seq,
                ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!((*msgs, *bytes, *first_seq), (37, 3700, 1));
            assert!(e.to_string().contains("37 messages"), "{e}");
            assert!(e.to_string().contains("3700 bytes"), "{e}");
            assert!(e.is_fatal());
        }
        other => panic!("expected MemoryTierNotWritten, got {other:?}"),
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert_eq!(leftovers, Vec::<String>::new(), "partial files are removed");
}

#[test]
fn a_reload_to_memory_zero_writes_the_memory_tier_to_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = spillway_spool::SpoolConfig::new(dir.path());
    cfg.memory_limit = 1 << 20;
    cfg.segment_size = 64 << 10;
    let (s, _) = spillway_spool::Spool::open(cfg.clone()).unwrap();
    let msgs: Vec<Vec<u8>> = (0..100).map(|i| format!("m{i}").into_bytes()).collect();
    for m in &msgs {
        let o = s.append(&[m]).unwrap();
        assert_eq!(o.tier, Some(spillway_spool::Tier::Memory));
    }
    s.ack(10).unwrap();
    let mut t = s.tunables();
    t.memory_limit = 0;
    s.reconfigure(t).unwrap();
    // New messages go to disk, after the old ones.
    let o = s.append(&[b"late"]).unwrap();
    assert_eq!(o.tier, Some(spillway_spool::Tier::Disk));
    assert_eq!(o.first_seq, 100);
    // kill -9: nothing the memory tier held is lost.
    drop(s);
    let (s, _) = spillway_spool::Spool::open(cfg).unwrap();
    let got = s.read(0, 1000, 1 << 20).unwrap();
    let data: Vec<&[u8]> = got.iter().map(|m| &m.data[..]).collect();
    let mut want: Vec<&[u8]> = msgs[10..].iter().map(|m| &m[..]).collect();
    want.push(b"late");
    assert_eq!(data, want);
    assert_eq!(got[0].seq, 10);
}

/// A poisoned spool takes nothing, not even into the memory tier through
/// `try_append_memory` (which the relay calls before its writer thread).
#[test]
fn a_poisoned_spool_takes_nothing_into_memory_either() {
    let dir = tempfile::tempdir().unwrap();
    let fs = SimFs::new();
    let (s, _) = Spool::open_with_fs(config(dir.path()), fs.clone()).unwrap();
    // Past the memory tier: on disk. Acknowledged, its segment leaves the
    // log, and the directory fsync after its unlink fails: poisoned, with
    // an empty disk tier and room in the memory tier.
    let big = msg(0, MEMORY as usize);
    assert_eq!(s.append(&[&big]).unwrap().tier, Some(Tier::Disk));
    fs.faults.fail_fsync.store(true, Ordering::SeqCst);
    let _ = s.ack(1);
    fs.faults.fail_fsync.store(false, Ordering::SeqCst);
    assert_eq!(s.stats().segments, 0, "the disk tier is empty");
    assert!(s.stats().poisoned, "the directory fsync failed");
    let mut b = s.encode(&[&msg(2, 10)]).unwrap();
    assert!(s.try_append_memory(&mut b).is_none());
    assert_eq!(b.len(), 1, "left whole");
    assert!(matches!(
        s.append_batch(&mut b),
        Err(SpoolError::Poisoned { .. })
    ));
}
