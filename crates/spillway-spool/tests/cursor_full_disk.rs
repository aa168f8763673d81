//! Defect 1 of "queue routes never lose what they accepted": ENOSPC while
//! persisting the consumer cursor is not fatal. The last good cursor file
//! stays, the temp file goes, the failure is counted, and the next `tick`
//! tries again. A stale cursor only means redelivery after a crash.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{msg, small_config, SimFs};
use spillway_spool::{Spool, SpoolConfig};

fn config(dir: &Path) -> SpoolConfig {
    let mut c = small_config(dir);
    c.cursor_interval = Duration::ZERO;
    c
}

fn read_seqs(s: &Spool) -> Vec<u64> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let got = s.read(pos, 100, 1 << 20).unwrap();
        if got.is_empty() {
            return out;
        }
        for m in got {
            assert_eq!(&m.data[..], &msg(m.seq, 200)[..], "seq {}", m.seq);
            pos = m.seq + 1;
            out.push(m.seq);
        }
    }
}

fn append_n(s: &Spool, from: u64, n: u64) {
    for i in from..from + n {
        assert_eq!(s.append(&[&msg(i, 200)]).unwrap().first_seq, i);
    }
}

/// Temp files of the cursor left in the directory.
fn cursor_temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("cursor") && n != "cursor")
        .collect()
}

/// The cursor file on disk: (ack_floor, next_seq).
fn cursor_on_disk(dir: &Path) -> Option<(u64, u64)> {
    spillway_spool::inspect(dir).unwrap().cursor
}

#[test]
fn tick_on_a_full_disk_keeps_the_old_cursor_and_retries() {
    let dir = tempfile::tempdir().unwrap();
    let fs = SimFs::new();
    let (s, _) = Spool::open_with_fs(config(dir.path()), fs.clone()).unwrap();
    append_n(&s, 0, 10);
    s.ack(3).unwrap();
    s.tick().unwrap();
    assert_eq!(cursor_on_disk(dir.path()).map(|c| c.0), Some(3));

    s.ack(5).unwrap();
    fs.faults.space_left.store(0, Ordering::SeqCst);
    s.tick()
        .expect("ENOSPC on the periodic cursor persist is not an error");
    assert_eq!(s.stats().cursor_write_failures, 1);
    assert!(s.stats().cursor_dirty);
    assert_eq!(
        cursor_on_disk(dir.path()).map(|c| c.0),
        Some(3),
        "old cursor kept"
    );
    assert_eq!(cursor_temp_files(dir.path()), Vec::<String>::new());

    // Still full: every tick tries, and counts.
    s.tick().unwrap();
    assert_eq!(s.stats().cursor_write_failures, 2);

    // Space returns: the next tick writes the cursor and clears the flag.
    fs.faults.space_left.store(-1, Ordering::SeqCst);
    s.tick().unwrap();
    assert_eq!(cursor_on_disk(dir.path()).map(|c| c.0), Some(5));
    let st = s.stats();
    assert_eq!(st.cursor_write_failures, 2);
    assert!(!st.cursor_dirty);
    drop(s);
    let (s, rep) = Spool::open_with_fs(config(dir.path()), fs).unwrap();
    assert_eq!(rep.ack_floor, 5, "{rep}");
    assert_eq!(read_seqs(&s), (5..10).collect::<Vec<_>>());
}

/// The cursor write that follows the deletion of consumed segments (in
/// `ack`) meets a disk that someone else filled meanwhile. The ack stands;
/// a crash then finds a cursor below the first segment and starts there.
#[test]
fn ack_that_deletes_segments_survives_enospc_on_the_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let fs = SimFs::new();
    let (s, _) = Spool::open_with_fs(config(dir.path()), fs.clone()).unwrap();
    append_n(&s, 0, 100);
    let segments = s.stats().segments;
    assert!(segments > 4, "{segments}");
    s.ack(10).unwrap();
    s.tick().unwrap();
    assert_eq!(cursor_on_disk(dir.path()).map(|c| c.0), Some(10));

    fs.faults.space_left.store(0, Ordering::SeqCst);
    fs.faults.freed_space_taken.store(true, Ordering::SeqCst);
    s.ack(60)
        .expect("ENOSPC on the cursor after deleting segments is not an error");
    let st = s.stats();
    assert!(st.segments < segments, "segments were deleted");
    assert_eq!(st.cursor_write_failures, 1);
    assert!(st.cursor_dirty);
    assert_eq!(s.ack_floor(), 60);
    assert_eq!(cursor_on_disk(dir.path()).map(|c| c.0), Some(10));
    assert_eq!(cursor_temp_files(dir.path()), Vec::<String>::new());

    // Crash with the stale cursor, and reopen while the disk is still full:
    // recovery cannot rewrite the cursor either, and must not fail for it.
    drop(s);
    let (s, rep) =
        Spool::open_with_fs(config(dir.path()), fs.clone()).expect("open on a full disk");
    let first_seg = spillway_spool::inspect(dir.path())
        .unwrap()
        .first_seq
        .unwrap();
    assert!(
        first_seg > 10 && first_seg <= 60,
        "first segment {first_seg}"
    );
    assert_eq!(rep.ack_floor, first_seg, "{rep}");
    assert!(rep.cursor_write_failed, "{rep}");
    assert_eq!(s.stats().cursor_write_failures, 1);
    assert_eq!(
        read_seqs(&s),
        (first_seg..100).collect::<Vec<_>>(),
        "redelivery from the first segment, nothing lost"
    );
    fs.faults.space_left.store(-1, Ordering::SeqCst);
    s.tick().unwrap();
    assert_eq!(cursor_on_disk(dir.path()).map(|c| c.0), Some(first_seg));
}

/// Everything acknowledged and deleted, the cursor write fails, crash: the
/// cursor's `next_seq` is older than the log was. Numbering restarts at it
/// (those numbers belonged to acknowledged messages); nothing is pending,
/// and the open itself (which wants to rewrite the cursor) copes with the
/// full disk.
#[test]
fn stale_cursor_over_an_empty_log_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let fs = SimFs::new();
    let (s, _) = Spool::open_with_fs(config(dir.path()), fs.clone()).unwrap();
    append_n(&s, 0, 20);
    s.ack(5).unwrap();
    s.tick().unwrap();
    assert_eq!(cursor_on_disk(dir.path()), Some((5, 20)));
    append_n(&s, 20, 20);
    fs.faults.cursor_no_space.store(true, Ordering::SeqCst);
    s.ack(40)
        .expect("all segments deleted, cursor write refused");
    assert_eq!(s.stats().segments, 0);
    assert_eq!(s.stats().cursor_write_failures, 1);
    drop(s);
    let (s, rep) = Spool::open_with_fs(config(dir.path()), fs.clone()).expect("open");
    assert_eq!((rep.ack_floor, rep.next_seq), (20, 20), "{rep}");
    assert!(rep.cursor_write_failed, "{rep}");
    assert_eq!(read_seqs(&s), Vec::<u64>::new());
    fs.faults.cursor_no_space.store(false, Ordering::SeqCst);
    assert_eq!(s.append(&[&msg(20, 200)]).unwrap().first_seq, 20);
    assert_eq!(read_seqs(&s), vec![20]);
}

#[test]
fn close_on_a_full_disk_succeeds_and_only_redelivers() {
    let dir = tempfile::tempdir().unwrap();
    let fs = SimFs::new();
    let (s, _) = Spool::open_with_fs(config(dir.path()), fs.clone()).unwrap();
    append_n(&s, 0, 20);
    s.ack(4).unwrap();
    s.tick().unwrap();
    s.ack(7).unwrap();
    fs.faults.space_left.store(0, Ordering::SeqCst);
    s.sync()
        .expect("sync: the data is durable, only the cursor is stale");
    assert_eq!(s.stats().cursor_write_failures, 1);
    let stats = s.clone();
    s.close()
        .expect("close on a full disk with everything else durable");
    assert_eq!(stats.stats().cursor_write_failures, 2);
    assert_eq!(cursor_temp_files(dir.path()), Vec::<String>::new());
    let (s, rep) = Spool::open_with_fs(config(dir.path()), fs).unwrap();
    assert_eq!(rep.ack_floor, 4, "stale cursor: 4..7 are delivered again");
    assert_eq!(read_seqs(&s), (4..20).collect::<Vec<_>>());
}

/// The durability convention is unchanged: a failed fsync of the cursor is
/// still an error, not a full disk.
#[test]
fn failed_cursor_fsync_is_still_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let fs = SimFs::new();
    let (s, _) = Spool::open_with_fs(config(dir.path()), fs.clone()).unwrap();
    append_n(&s, 0, 5);
    s.ack(2).unwrap();
    fs.faults.fail_fsync.store(true, Ordering::SeqCst);
    let e = s.tick().unwrap_err();
    assert!(e.is_fatal(), "{e}");
    assert_eq!(s.stats().cursor_write_failures, 0);
}
