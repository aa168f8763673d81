//! A roll in two halves: the new segment is written under the spare's
//! name until the segment before it is sealed and the new one named. A
//! crash in between must keep what was written to it (kill -9), and a
//! power cut that tore the segment before it must not let recovery
//! continue the log past the tear.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{msg, small_config, spare_with_records, SimFs};
use spillway_spool::{Durability, Spool, SpoolError};

fn config(dir: &std::path::Path) -> spillway_spool::SpoolConfig {
    let mut cfg = small_config(dir);
    cfg.durability = Durability::Interval(Duration::from_secs(3600));
    cfg
}

/// Appends 100-byte messages until one fails; returns those accepted.
fn append_until_error(s: &Spool, from: u64) -> (Vec<Vec<u8>>, SpoolError) {
    let mut ok = Vec::new();
    for i in from.. {
        let m = msg(i, 100);
        match s.append(&[&m]) {
            Ok(_) => ok.push(m),
            Err(e) => return (ok, e),
        }
        assert!(i < from + 10_000, "no error");
    }
    unreachable!()
}

#[test]
fn a_crash_before_the_new_segment_is_named_keeps_what_was_written_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let fs = SimFs::new();
    let (s, _) = Spool::open_with_fs(config(dir.path()), fs.clone()).unwrap();
    // The first segment is named while renames work.
    s.append(&[&msg(0, 100)]).unwrap();
    fs.faults.fail_rename.store(true, Ordering::SeqCst);
    // The append that rolls writes its batch to the spare, then cannot
    // name it: the spool is poisoned, the batch is in the spare.
    let (mut ok, e) = append_until_error(&s, 1);
    assert!(matches!(e, SpoolError::Poisoned { .. }), "{e}");
    ok.insert(0, msg(0, 100));
    assert!(spare_with_records(dir.path()));
    // kill -9: the page cache keeps everything written.
    drop(s);
    fs.crash(|unsynced| unsynced);
    fs.faults.fail_rename.store(false, Ordering::SeqCst);
    let (s, rep) = Spool::open_with_fs(config(dir.path()), fs.clone()).unwrap();
    assert!(rep.adopted_spare.is_some(), "{rep}");
    assert!(!spare_with_records(dir.path()));
    let got = s.read(0, 100_000, 64 << 20).unwrap();
    let data: Vec<Vec<u8>> = got.iter().map(|m| m.data.to_vec()).collect();
    assert_eq!(data, ok);
    // And the log goes on from there.
    let o = s.append(&[&msg(99_999, 100)]).unwrap();
    assert_eq!(o.first_seq, ok.len() as u64);
    s.close().unwrap();
    let rep = spillway_spool::verify(dir.path(), |_, _| {}).unwrap();
    assert!(rep.ok(), "{:?}", rep.problem);
}

#[test]
fn a_power_cut_that_tore_the_segment_before_drops_the_unnamed_one() {
    let dir = tempfile::tempdir().unwrap();
    let fs = SimFs::new();
    let (s, _) = Spool::open_with_fs(config(dir.path()), fs.clone()).unwrap();
    s.append(&[&msg(0, 100)]).unwrap();
    s.sync().unwrap();
    // The seal's fsync fails: the segment before the roll was never made
    // durable, and the new one never named.
    fs.faults.fail_fsync.store(true, Ordering::SeqCst);
    let (_, e) = append_until_error(&s, 1);
    assert!(matches!(e, SpoolError::Poisoned { .. }), "{e}");
    drop(s);
    // A power cut: what was not synced is gone.
    fs.crash(|_| 0);
    fs.faults.fail_fsync.store(false, Ordering::SeqCst);
    let (s, rep) = Spool::open_with_fs(config(dir.path()), fs.clone()).unwrap();
    assert!(rep.adopted_spare.is_none(), "{rep}");
    assert!(!spare_with_records(dir.path()));
    // What was durable is there, and the log is whole.
    let got = s.read(0, 100_000, 64 << 20).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].data[..], &msg(0, 100)[..]);
    s.close().unwrap();
    let rep = spillway_spool::verify(dir.path(), |_, _| {}).unwrap();
    assert!(rep.ok(), "{:?}", rep.problem);
}

#[test]
fn under_always_an_append_into_a_new_segment_returns_once_the_roll_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let fs = SimFs::new();
    let (s, _) = Spool::open_with_fs(small_config(dir.path()), fs.clone()).unwrap();
    // Each acknowledged append survives a power cut right after it, across
    // several rolls.
    let mut ok = Vec::new();
    for i in 0..200 {
        let m = msg(i, 100);
        s.append(&[&m]).unwrap();
        ok.push(m);
    }
    assert!(std::fs::read_dir(dir.path()).unwrap().count() > 4);
    drop(s);
    fs.crash(|_| 0);
    let (s, _) = Spool::open_with_fs(small_config(dir.path()), fs.clone()).unwrap();
    let got = s.read(0, 100_000, 64 << 20).unwrap();
    let data: Vec<Vec<u8>> = got.iter().map(|m| m.data.to_vec()).collect();
    assert_eq!(data, ok);
}
