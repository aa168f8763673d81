//! Behaviour a user relies on, one test each.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{msg, small_config};
use spillway_spool::{Durability, Spool, SpoolError, Tier, WhenFull};

fn read_all(s: &Spool) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let got = s.read(pos, 7, 1000).unwrap();
        if got.is_empty() {
            return out;
        }
        for m in got {
            assert!(m.seq >= pos, "read went backwards");
            pos = m.seq + 1;
            out.push((m.seq, m.data.to_vec()));
        }
    }
}

#[test]
fn memory_then_disk_keeps_fifo_and_returns_to_memory_after_drain() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    // The limit counts bytes on disk: a 60-byte message written out by
    // close takes 32 (segment) + 28 (record) + 1 (length) + 60 = 121.
    cfg.memory_limit = 150;
    let (s, _) = Spool::open(cfg).unwrap();
    let a = s.append(&[&msg(0, 60)]).unwrap();
    assert_eq!(a.tier, Some(Tier::Memory));
    let b = s.append(&[&msg(1, 60)]).unwrap();
    assert_eq!(b.tier, Some(Tier::Disk), "memory full: goes to disk");
    // Memory has room again only after the disk tier drains.
    let c = s.append(&[&msg(2, 10)]).unwrap();
    assert_eq!(c.tier, Some(Tier::Disk), "must stay on disk until drained");
    let all = read_all(&s);
    assert_eq!(all.iter().map(|m| m.0).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(all[1].1, msg(1, 60));
    s.ack(3).unwrap();
    let d = s.append(&[&msg(3, 10)]).unwrap();
    assert_eq!(d.tier, Some(Tier::Memory));
    assert_eq!(d.first_seq, 3);
    assert_eq!(read_all(&s), vec![(3, msg(3, 10))]);
}

#[test]
fn memory_limit_zero_writes_everything_to_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Spool::open(small_config(dir.path())).unwrap();
    for i in 0..50 {
        assert_eq!(s.append(&[&msg(i, 100)]).unwrap().tier, Some(Tier::Disk));
    }
    // Drop without close = crash of the process: all of it is on disk.
    drop(s);
    let (s, rep) = Spool::open(small_config(dir.path())).unwrap();
    assert_eq!(rep.next_seq, 50);
    assert_eq!(read_all(&s).len(), 50);
}

#[test]
fn close_moves_memory_tier_to_disk_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    // Ten 100-byte messages on disk: 32 + 28 + 10 x 101 = 1070 bytes.
    cfg.memory_limit = 1100;
    let (s, _) = Spool::open(cfg.clone()).unwrap();
    let batch: Vec<Vec<u8>> = (0..10).map(|i| msg(i, 100)).collect();
    let refs: Vec<&[u8]> = batch.iter().map(|m| &m[..]).collect();
    assert_eq!(s.append(&refs).unwrap().tier, Some(Tier::Memory));
    // Overflow to disk, then a close must put memory before disk.
    for i in 10..40 {
        assert_eq!(s.append(&[&msg(i, 100)]).unwrap().tier, Some(Tier::Disk));
    }
    s.ack(2).unwrap();
    s.close().unwrap();
    let (s, rep) = Spool::open(cfg).unwrap();
    assert_eq!((rep.ack_floor, rep.next_seq), (2, 40));
    let all = read_all(&s);
    assert_eq!(all.len(), 38);
    for (i, (seq, data)) in all.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 2);
        assert_eq!(data, &msg(*seq, 100));
    }
    assert!(spillway_spool::verify(dir.path(), |_, _| {}).unwrap().ok());
}

#[test]
fn acked_segments_are_deleted_and_cursor_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let (s, _) = Spool::open(cfg.clone()).unwrap();
    for i in 0..100 {
        s.append(&[&msg(i, 200)]).unwrap();
    }
    let before = s.stats().segments;
    assert!(before > 4, "tiny segments must roll over: {before}");
    s.ack(60).unwrap();
    let after = s.stats();
    assert!(after.segments < before);
    assert!(after.segments_deleted > 0);
    assert_eq!(after.disk_msgs, 40);
    assert_eq!(
        s.read(0, 1, 100).unwrap()[0].seq,
        60,
        "read below floor clamps"
    );
    drop(s); // crash: cursor was persisted at segment deletion
    let (s, rep) = Spool::open(cfg).unwrap();
    assert!(rep.ack_floor >= 60 - 20, "floor {}", rep.ack_floor);
    assert_eq!(s.read(0, 1000, 1 << 20).unwrap().last().unwrap().seq, 99);
}

#[test]
fn read_respects_limits_and_returns_at_least_one() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Spool::open(small_config(dir.path())).unwrap();
    let big = vec![1u8; 3000];
    s.append(&[&big, &big, &big]).unwrap();
    assert_eq!(s.read(0, 10, 1).unwrap().len(), 1);
    assert_eq!(s.read(0, 2, 1 << 20).unwrap().len(), 2);
    assert_eq!(s.read(1, 10, 1 << 20).unwrap().len(), 2);
    assert!(s.read(3, 10, 1 << 20).unwrap().is_empty());
}

#[test]
fn too_large_and_empty_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.max_message = 10;
    let (s, _) = Spool::open(cfg).unwrap();
    let e = s.append(&[b"01234567890"]).unwrap_err();
    assert!(matches!(
        e,
        SpoolError::TooLarge {
            size: 11,
            limit: 10
        }
    ));
    assert_eq!(s.append(&[]).unwrap().accepted, 0);
    assert_eq!(s.append(&[b""]).unwrap().first_seq, 0);
    assert_eq!(s.read(0, 10, 10).unwrap()[0].data.len(), 0);
}

#[test]
fn drop_newest_refuses_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.max_disk = 16 * 1024;
    cfg.when_full = WhenFull::DropNewest;
    let (s, _) = Spool::open(cfg).unwrap();
    let mut refused = 0;
    for i in 0..100 {
        let o = s.append(&[&msg(i, 500)]).unwrap();
        refused += o.dropped_newest;
    }
    let st = s.stats();
    assert!(refused > 0);
    assert_eq!(st.dropped_newest_msgs, refused as u64);
    assert!(st.disk_bytes <= 16 * 1024, "{}", st.disk_bytes);
    // What was accepted is a prefix, intact.
    let all = read_all(&s);
    assert_eq!(all.len() + refused, 100);
    for (i, (seq, d)) in all.iter().enumerate() {
        assert_eq!(*seq, i as u64);
        assert_eq!(d, &msg(i as u64, 500));
    }
}

#[test]
fn drop_oldest_deletes_whole_segments_and_keeps_newest() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.max_disk = 16 * 1024;
    cfg.when_full = WhenFull::DropOldest;
    let (s, _) = Spool::open(cfg).unwrap();
    let mut dropped = 0;
    for i in 0..100 {
        let o = s.append(&[&msg(i, 500)]).unwrap();
        assert_eq!(o.accepted, 1);
        dropped += o.dropped_oldest_msgs;
    }
    let st = s.stats();
    assert!(dropped > 0);
    assert_eq!(st.dropped_oldest_msgs, dropped);
    assert!(st.disk_bytes <= 16 * 1024);
    let all = read_all(&s);
    assert_eq!(all.last().unwrap().0, 99);
    assert_eq!(
        all[0].0, dropped,
        "the floor moved past exactly the dropped messages"
    );
    assert_eq!(s.ack_floor(), dropped);
}

#[test]
fn block_waits_for_acks_and_times_out_with_full() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.max_disk = 16 * 1024;
    cfg.block_timeout = Some(Duration::from_millis(100));
    let (s, _) = Spool::open(cfg).unwrap();
    let mut i = 0;
    let err = loop {
        match s.append(&[&msg(i, 500)]) {
            Ok(_) => i += 1,
            Err(e) => break e,
        }
    };
    assert!(err.is_full(), "{err}");
    assert!(s.stats().blocked >= 1);
    // A consumer acking from another thread unblocks a waiting appender.
    let s2 = s.clone();
    let consumer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        let n = s2.next_seq();
        s2.ack(n).unwrap();
    });
    let mut cfg_wait = s.append(&[&msg(i, 500)]);
    if cfg_wait.is_err() {
        // Timed out before the ack landed on a slow machine: retry once.
        consumer.join().unwrap();
        cfg_wait = s.append(&[&msg(i, 500)]);
    } else {
        consumer.join().unwrap();
    }
    assert_eq!(cfg_wait.unwrap().accepted, 1);
}

#[test]
fn notify_fires_on_append() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Spool::open(small_config(dir.path())).unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    s.set_notify(Box::new(move || {
        h.fetch_add(1, Ordering::SeqCst);
    }));
    s.append(&[b"x"]).unwrap();
    s.append(&[b"y", b"z"]).unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[test]
fn stats_report_depth_age_and_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.memory_limit = 1 << 20;
    let (s, _) = Spool::open(cfg).unwrap();
    s.append(&[b"abc", b"de"]).unwrap();
    let st = s.stats();
    assert_eq!((st.mem_msgs, st.mem_bytes, st.disk_msgs), (2, 5, 0));
    assert!(st.oldest_age.is_some());
    s.sync().unwrap();
    assert!(s.stats().oldest_age.unwrap() < Duration::from_secs(5));
    s.ack(2).unwrap();
    assert_eq!(s.stats().oldest_age, None);
}

#[test]
fn interval_durability_syncs_on_tick() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.durability = Durability::Interval(Duration::from_millis(20));
    let (s, _) = Spool::open(cfg).unwrap();
    s.append(&[b"abc"]).unwrap();
    let before = s.stats().fsyncs;
    std::thread::sleep(Duration::from_millis(30));
    s.tick().unwrap();
    assert!(s.stats().fsyncs > before);
}

#[test]
fn closed_handle_clones_get_closed_error() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Spool::open(small_config(dir.path())).unwrap();
    let other = s.clone();
    s.close().unwrap();
    assert!(matches!(other.append(&[b"x"]), Err(SpoolError::Closed)));
    assert!(matches!(other.read(0, 1, 1), Err(SpoolError::Closed)));
}

#[test]
fn inspect_and_dump_see_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Spool::open(small_config(dir.path())).unwrap();
    for i in 0..30 {
        s.append(&[&msg(i, 300)]).unwrap();
    }
    s.ack(5).unwrap();
    s.close().unwrap();
    let ins = spillway_spool::inspect(dir.path()).unwrap();
    assert_eq!(ins.end_seq, Some(30));
    assert_eq!(ins.cursor.map(|c| c.0), Some(5));
    assert_eq!(ins.depth, 25);
    let mut seen = Vec::new();
    let n = spillway_spool::dump(dir.path(), Some(10), Some(4), |m| {
        seen.push(m.seq);
        Ok(())
    })
    .unwrap();
    assert_eq!(n, 4);
    assert_eq!(seen, vec![10, 11, 12, 13]);
    let mut first = None;
    spillway_spool::dump(dir.path(), None, Some(1), |m| {
        first = Some(m.seq);
        Ok(())
    })
    .unwrap();
    assert_eq!(first, Some(5), "dump defaults to the cursor");
}

/// Queued messages are private to the relay's user: the spool directory is
/// created 0700 and every file in it 0600 (whatever the umask allows), and
/// an existing directory open to others is reported.
#[test]
fn spool_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("a").join("spool");
    let mut cfg = common::small_config(&dir);
    cfg.memory_limit = 4096;
    let (spool, _) = Spool::open(cfg).expect("open");
    for i in 0..200 {
        spool.append(&[&common::msg(i, 100)]).expect("append");
    }
    spool.ack(10).expect("ack");
    spool.sync().expect("sync");
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "spool directory");
    let mut files = 0;
    for e in std::fs::read_dir(&dir).expect("ls") {
        let p = e.expect("entry").path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
        files += 1;
    }
    assert!(files >= 3, "segments, cursor and lock at least");
    assert_eq!(spillway_spool::fs::exposure(&dir), None);
    spool.close().expect("close");

    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let w = spillway_spool::fs::exposure(&dir).expect("a 0755 spool is exposed");
    assert!(w.contains("755"), "{w}");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let cursor = dir.join("cursor");
    std::fs::set_permissions(&cursor, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let w = spillway_spool::fs::exposure(&dir).expect("a 0644 file is exposed");
    assert!(w.contains("cursor"), "{w}");
}

/// A running spool takes new settings without reopening: a raised
/// `max_disk` lets a blocked producer go on; the memory tier's reserve
/// follows `memory_limit` (shrunk at once, grown by `tick`).
#[test]
fn reconfigure_changes_a_running_spool() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = common::small_config(tmp.path());
    cfg.max_disk = 16 * 1024;
    cfg.block_timeout = Some(std::time::Duration::from_millis(20));
    cfg.reserve_retry = std::time::Duration::ZERO;
    let (spool, _) = Spool::open(cfg).expect("open");
    let mut i = 0;
    while spool.append(&[&common::msg(i, 500)]).is_ok() {
        i += 1;
    }
    let mut t = spool.tunables();
    t.max_disk = 0;
    spool.reconfigure(t).expect("reconfigure");
    spool
        .append(&[&common::msg(i, 500)])
        .expect("room past the old bound");
    // The memory tier: grown by tick once the disk tier drained; until
    // then it is smaller than asked, which is not a lack of space.
    t.memory_limit = 64 * 1024;
    spool.reconfigure(t).expect("reconfigure");
    spool.tick().expect("tick");
    assert!(
        spool.stats().mem_reserved < 64 * 1024,
        "disk tier not drained"
    );
    assert!(!spool.stats().mem_reserve_short);
    spool.ack(i + 1).expect("ack");
    spool.tick().expect("tick");
    assert_eq!(spool.stats().mem_reserved, 64 * 1024);
    t.memory_limit = 8 * 1024;
    spool.reconfigure(t).expect("reconfigure");
    assert_eq!(spool.stats().mem_reserved, 8 * 1024);
    spool.close().expect("close");
}

/// A scratch spool started at a given number hands out numbers from
/// there, and its cursor records how far it got (what the next start
/// must pass).
#[test]
fn an_empty_spool_can_start_at_a_given_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scratch");
    let fs = spillway_spool::fs::StdFs;
    assert_eq!(spillway_spool::recorded_next_seq(&fs, &path), None);
    spillway_spool::start_empty_at(&fs, &path, 1 << 54).unwrap();
    let (s, report) = Spool::open(small_config(&path)).unwrap();
    assert_eq!(report.next_seq, 1 << 54);
    let out = s.append(&[b"a", b"b"]).unwrap();
    assert_eq!(out.first_seq, 1 << 54);
    assert_eq!(read_all(&s).len(), 2);
    s.close().unwrap();
    assert_eq!(
        spillway_spool::recorded_next_seq(&fs, &path),
        Some((1 << 54) + 2)
    );
}

/// `try_append_memory` takes a batch only where `append` would put it in
/// the memory tier with nothing else to do, and otherwise leaves it whole
/// for `append_batch`.
#[test]
fn try_append_memory_copy_holds_messages_as_an_encoded_batch_would_be() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.memory_limit = 150;
    cfg.max_message = 1000;
    let (s, _) = Spool::open(cfg.clone()).unwrap();
    // Several messages in one batch, an empty one among them.
    let a = [msg(0, 10), Vec::new(), msg(2, 30)];
    let refs: Vec<&[u8]> = a.iter().map(|m| &m[..]).collect();
    let got = s
        .try_append_memory_copy(&refs)
        .expect("an empty spool takes it");
    assert_eq!(
        (got.first_seq, got.accepted, got.tier),
        (0, 3, Some(Tier::Memory))
    );
    // Over max_message: not taken (`encode` says why).
    let big = vec![7u8; 1001];
    assert!(s.try_append_memory_copy(&[&big]).is_none());
    assert!(s.encode(&[&big]).is_err());
    // The reserve's rule is the encoded batch's: what one refuses, the
    // other refuses too, and the batch goes to disk.
    let b = msg(3, 60);
    assert!(s.try_append_memory_copy(&[&b]).is_none());
    let mut eb = s.encode(&[&b]).unwrap();
    assert!(s.try_append_memory(&mut eb).is_none());
    assert_eq!(s.append_batch(&mut eb).unwrap().tier, Some(Tier::Disk));
    let want = vec![
        (0, msg(0, 10)),
        (1, Vec::new()),
        (2, msg(2, 30)),
        (3, msg(3, 60)),
    ];
    assert_eq!(read_all(&s), want);
    // `close` writes the copied batch out with the rest: all of it comes
    // back after a reopen.
    s.close().unwrap();
    let (s, _) = Spool::open(cfg).unwrap();
    assert_eq!(read_all(&s), want);
}

#[test]
fn try_append_memory_takes_only_what_the_memory_tier_takes_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.memory_limit = 150;
    let (s, _) = Spool::open(cfg).unwrap();
    let mut a = s.encode(&[&msg(0, 60)]).unwrap();
    let got = s
        .try_append_memory(&mut a)
        .expect("an empty spool takes it");
    assert_eq!(
        (got.first_seq, got.accepted, got.tier),
        (0, 1, Some(Tier::Memory))
    );
    assert!(a.is_empty(), "spent once taken");
    // Past the memory tier's reserve: left whole, and `append_batch`
    // writes it to disk.
    let mut b = s.encode(&[&msg(1, 60)]).unwrap();
    assert!(s.try_append_memory(&mut b).is_none());
    assert_eq!(b.len(), 1);
    assert_eq!(s.append_batch(&mut b).unwrap().tier, Some(Tier::Disk));
    // With the disk tier holding messages, nothing goes to memory, even
    // once the memory tier is empty (order: the disk is read first).
    s.ack(1).unwrap();
    let mut c = s.encode(&[&msg(2, 1)]).unwrap();
    assert!(s.try_append_memory(&mut c).is_none());
    assert_eq!(s.append_batch(&mut c).unwrap().tier, Some(Tier::Disk));
    // Drained, the log still has its segment to remove: that is I/O,
    // left to `append_batch`, after which memory takes batches again.
    s.ack(3).unwrap();
    let mut d = s.encode(&[&msg(3, 1)]).unwrap();
    assert!(s.try_append_memory(&mut d).is_none());
    assert_eq!(s.append_batch(&mut d).unwrap().tier, Some(Tier::Memory));
    let mut e = s.encode(&[&msg(4, 1)]).unwrap();
    assert_eq!(s.try_append_memory(&mut e).unwrap().first_seq, 4);
    assert_eq!(
        read_all(&s),
        vec![(3, msg(3, 1)), (4, msg(4, 1))],
        "in order after what was acknowledged"
    );
    // An empty batch, and a closed spool: not taken.
    let mut empty = s.encode(&[]).unwrap();
    assert!(s.try_append_memory(&mut empty).is_none());
    let other = s.clone();
    let mut f = s.encode(&[&msg(5, 1)]).unwrap();
    s.close().unwrap();
    assert!(other.try_append_memory(&mut f).is_none());
    assert_eq!(f.len(), 1);
}
