//! A roll in two halves: the new segment is written under the spare's
//! name until the segment before it is sealed and the new one named. A
//! crash in between must keep what was written to it (kill -9), and a
//! power cut that tore the segment before it must not let recovery
//! continue the log past the tear. The last four tests come from a
//! hostile review of the first version (each failed on it).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
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

/// With the first message (`msg(0, 100)`) appended, turns `fault` on and
/// appends until the roll it makes fails and poisons the spool; returns
/// every message accepted, the first one included.
fn poison_a_roll(s: &Spool, fault: &AtomicBool) -> Vec<Vec<u8>> {
    fault.store(true, Ordering::SeqCst);
    let (mut ok, e) = append_until_error(s, 1);
    assert!(matches!(e, SpoolError::Poisoned { .. }), "{e}");
    ok.insert(0, msg(0, 100));
    ok
}

fn read_all(s: &Spool) -> Result<Vec<Vec<u8>>, SpoolError> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let got = s.read(at, 100_000, 64 << 20)?;
        let Some(last) = got.last() else { break };
        at = last.seq + 1;
        out.extend(got.iter().map(|m| m.data.to_vec()));
    }
    Ok(out)
}

#[test]
fn a_crash_before_the_new_segment_is_named_keeps_what_was_written_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let fs = SimFs::new();
    let (s, _) = Spool::open_with_fs(config(dir.path()), fs.clone()).unwrap();
    // The first segment is named while renames work.
    s.append(&[&msg(0, 100)]).unwrap();
    // The append that rolls writes its batch to the spare, then cannot
    // name it: the spool is poisoned, the batch is in the spare.
    let ok = poison_a_roll(&s, &fs.faults.fail_rename);
    assert!(spare_with_records(dir.path()));
    // kill -9: the page cache keeps everything written.
    drop(s);
    fs.crash(|unsynced| unsynced);
    fs.faults.fail_rename.store(false, Ordering::SeqCst);
    let (s, rep) = Spool::open_with_fs(config(dir.path()), fs.clone()).unwrap();
    assert!(rep.adopted_spare.is_some(), "{rep}");
    assert!(!spare_with_records(dir.path()));
    assert_eq!(read_all(&s).unwrap(), ok);
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
    poison_a_roll(&s, &fs.faults.fail_fsync);
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
    assert_eq!(read_all(&s).unwrap(), ok);
}

/// kill -9 between the fast half of a roll (the new segment written under
/// the spare's name) and the seal of the segment before it. The restart
/// adopts the spare, so the unsealed segment is no longer the last one:
/// recovery neither scans nor fsyncs it, and no later seal ever will. The
/// restarted spool then makes an append durable (`sync`), and a power cut
/// follows: the segment in the middle of the log loses its unsynced tail.
/// Messages recovered and served after the restart, older than a message
/// made durable by `sync`, are gone (or the log cannot be opened).
#[test]
fn kill9_mid_roll_then_restart_then_sync_then_power_cut_keeps_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let fs = SimFs::new();
    let (s, _) = Spool::open_with_fs(config(dir.path()), fs.clone()).unwrap();
    // The first segment is named, and its header and first message durable.
    s.append(&[&msg(0, 100)]).unwrap();
    s.sync().unwrap();
    // More messages (not synced: Interval), then the roll whose seal fails:
    // the process state at that moment is what a kill -9 right after the
    // fast half of the roll leaves.
    let mut ok = poison_a_roll(&s, &fs.faults.fail_fsync);
    assert!(spare_with_records(dir.path()));
    // kill -9: nothing more runs; the page cache keeps everything (the
    // files are left as they are, unsynced data still unsynced).
    drop(s);
    fs.faults.fail_fsync.store(false, Ordering::SeqCst);

    let (s, rep) = Spool::open_with_fs(config(dir.path()), fs.clone()).unwrap();
    assert!(rep.adopted_spare.is_some(), "{rep}");
    // Everything the dead process wrote is served.
    assert_eq!(read_all(&s).unwrap(), ok);
    // A new message, then `sync`: "forces everything written so far to
    // disk (whatever the durability policy)".
    let last = msg(777_777, 100);
    s.append(&[&last]).unwrap();
    s.sync().unwrap();
    ok.push(last);
    drop(s);

    // Power cut: what was never fsynced is lost.
    fs.crash(|_| 0);
    let (s, rep) = match Spool::open_with_fs(config(dir.path()), fs.clone()) {
        Ok(x) => x,
        Err(e) => panic!("open after power cut failed: {e}"),
    };
    let got = read_all(&s);
    let got = match got {
        Ok(g) => g,
        Err(e) => panic!("read after power cut failed: {e} ({rep})"),
    };
    // The synced message is there, so everything before it must be too.
    assert_eq!(
        got.len(),
        ok.len(),
        "after power cut: {} messages, expected {} (first missing index {:?}); {rep}",
        got.len(),
        ok.len(),
        got.iter().zip(&ok).position(|(a, b)| a != b)
    );
    assert_eq!(got, ok);
}

/// Power cut in the middle of a roll whose previous segment was never
/// fsynced (Interval): that segment loses everything, including its
/// header, and recovery removes it as a torn creation. The log is then
/// empty, and `recover` adopts the spare unconditionally ("with no segment
/// left") although it does not continue anything that survived: the later
/// messages come back while the earlier ones are gone (not a prefix of
/// what was appended).
#[test]
fn power_cut_mid_roll_with_the_whole_previous_segment_lost_does_not_adopt_the_spare() {
    let dir = tempfile::tempdir().unwrap();
    let fs = SimFs::new();
    let (s, _) = Spool::open_with_fs(config(dir.path()), fs.clone()).unwrap();
    // The first segment is named (its directory entry is durable in SimFs),
    // but nothing in it is ever fsynced.
    s.append(&[&msg(0, 100)]).unwrap();
    // The next roll's seal fails: the new segment is in the spare.
    let ok = poison_a_roll(&s, &fs.faults.fail_fsync);
    assert!(spare_with_records(dir.path()));
    drop(s);
    fs.faults.fail_fsync.store(false, Ordering::SeqCst);
    // Power cut; the disk happened to write back the small spare (a header
    // and one record) but none of the large first segment.
    fs.crash(|unsynced| if unsynced < 1000 { unsynced } else { 0 });
    let (s, rep) = Spool::open_with_fs(config(dir.path()), fs.clone()).unwrap();
    let got = read_all(&s).unwrap();
    // What survives a power cut must be a prefix of what was appended.
    assert!(
        got.len() <= ok.len() && got[..] == ok[..got.len()],
        "not a prefix: got {} messages, the first {:?}...; appended {} ({rep})",
        got.len(),
        got.first()
            .map(|m| String::from_utf8_lossy(&m[..8]).into_owned()),
        ok.len()
    );
}

/// `close` on a spool whose roll could not be finished (the seal's fsync
/// failed: poisoned) returns the error before marking the spool closed:
/// clones keep reading, acknowledging and unlinking in the directory, and
/// the LOCK is kept. Before this change `close` marked it closed first.
#[test]
fn a_failed_close_with_a_pending_roll_still_closes_the_handles() {
    let dir = tempfile::tempdir().unwrap();
    let fs = SimFs::new();
    let (s, _) = Spool::open_with_fs(config(dir.path()), fs.clone()).unwrap();
    s.append(&[&msg(0, 100)]).unwrap();
    let ok = poison_a_roll(&s, &fs.faults.fail_fsync);
    let other = s.clone();
    let closed = s.close();
    assert!(closed.is_err(), "close of a poisoned spool reports it");
    // A lingering handle must see Closed.
    let r = other.read(0, 10, 1 << 20);
    assert!(
        matches!(r, Err(SpoolError::Closed)),
        "read after close: {:?}",
        r.map(|v| v.len())
    );
    let a = other.ack(ok.len() as u64);
    assert!(
        matches!(a, Err(SpoolError::Closed)),
        "ack after close: {a:?}"
    );
}

/// A failed fsync poisons the spool (after fdatasync reports EIO, Linux may
/// have dropped the dirty pages: a second fsync "succeeds" without them).
/// The seal of a roll is retried after that failure by whoever finishes
/// the roll next: a group-commit leader that passed the poison check
/// before the failure, and waits for `dir_io` while the rolling appender's
/// seal fails, fsyncs the segment again, declares it durable and returns
/// Ok under `Always` for a batch whose covering fsync failed.
#[test]
fn after_a_failed_seal_fsync_no_always_append_is_acknowledged() {
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;
    let dir = tempfile::tempdir().unwrap();
    let fs = SimFs::new();
    let (s, _) = Spool::open_with_fs(small_config(dir.path()), fs.clone()).unwrap();
    let seg0 = dir.path().join("00000000000000000000.seg");
    let len = || std::fs::metadata(&seg0).unwrap().len();
    s.append(&[&msg(0, 100)]).unwrap();
    let l1 = len();
    s.append(&[&msg(1, 100)]).unwrap();
    let need = len() - l1;
    let mut i = 2;
    // Room for exactly two more: Z's and W's; X's rolls.
    while len() + 3 * need <= 4096 {
        s.append(&[&msg(i, 100)]).unwrap();
        i += 1;
    }
    assert!(len() + 2 * need <= 4096);
    // The next roll's spare is made.
    assert!(["next.0.seg.spare", "next.1.seg.spare"]
        .iter()
        .any(|n| dir.path().join(n).exists()));
    fs.faults.slow_ms.store(300, Ordering::SeqCst);
    let t0 = Instant::now();
    // Z: a group-commit leader fsyncing segment 0 (300 ms).
    let z = {
        let s = s.clone();
        std::thread::spawn(move || s.append(&[&msg(1000, 100)]).map(|_| ()))
    };
    std::thread::sleep(Duration::from_millis(50));
    // W: its batch goes into segment 0; it waits for the next round.
    let w_done = std::sync::Arc::new(AtomicBool::new(false));
    let w = {
        let (s, d) = (s.clone(), w_done.clone());
        std::thread::spawn(move || {
            let r = s.append(&[&msg(2000, 100)]).map(|_| ());
            d.store(true, Ordering::SeqCst);
            r
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    // X: rolls; its seal of segment 0 (300 ms) will fail.
    let x = {
        let s = s.clone();
        std::thread::spawn(move || s.append(&[&msg(3000, 100)]).map(|_| ()))
    };
    std::thread::sleep(Duration::from_millis(20));
    assert!(
        dir.path().join("00000000000000000000.seg").exists(),
        "setup: segment 0 still there"
    );
    z.join().unwrap().unwrap(); // Z's fsync succeeded (~300 ms)
    fs.faults.fail_fsync.store(true, Ordering::SeqCst);
    // X's seal fails: the spool is poisoned.
    while !s.stats().poisoned {
        assert!(t0.elapsed() < Duration::from_secs(10), "never poisoned");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The device recovers (the next fsync "succeeds").
    fs.faults.fail_fsync.store(false, Ordering::SeqCst);
    let xr = x.join().unwrap();
    let wr = w.join().unwrap();
    fs.faults.slow_ms.store(0, Ordering::SeqCst);
    // W's batch was only ever covered by the fsync that failed.
    assert!(
        matches!(wr, Err(SpoolError::Poisoned { .. })),
        "W acknowledged durable after the fsync covering it failed: {wr:?} (X, whose seal failed: {xr:?})"
    );
}
