//! Defect 3 of "queue routes never lose what they accepted": a closed spool
//! refuses everything that writes or deletes. After a reload, a consumer
//! task of the old route acknowledged on its old (closed) handle and
//! unlinked segments that the reopened spool on the same directory still
//! needed.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::Duration;

use common::{msg, small_config};
use spillway_spool::{Spool, SpoolError};

#[test]
fn ack_on_a_closed_handle_is_refused_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.cursor_interval = Duration::ZERO;
    let (s, _) = Spool::open(cfg.clone()).unwrap();
    for i in 0..100 {
        s.append(&[&msg(i, 200)]).unwrap();
    }
    assert!(s.stats().segments > 4);
    let old = s.clone();
    s.close().unwrap();

    // The reloaded route opens the same directory.
    let (new, rep) = Spool::open(cfg).unwrap();
    assert_eq!((rep.ack_floor, rep.next_seq), (0, 100));
    let segments_before = spillway_spool::inspect(dir.path()).unwrap().segments.len();

    // The old consumer task acknowledges everything on its old handle.
    assert!(matches!(old.ack(100), Err(SpoolError::Closed)));
    assert!(matches!(old.tick(), Err(SpoolError::Closed)));
    assert!(matches!(old.sync(), Err(SpoolError::Closed)));
    assert!(matches!(
        old.append_past_quota(&[b"late"]),
        Err(SpoolError::Closed)
    ));
    assert_eq!(
        spillway_spool::inspect(dir.path()).unwrap().segments.len(),
        segments_before,
        "the closed handle unlinked segments"
    );

    // The new spool still has everything.
    let mut pos = 0;
    let mut n = 0;
    loop {
        let got = new.read(pos, 50, 1 << 20).unwrap();
        let Some(last) = got.last() else { break };
        for m in &got {
            assert_eq!(m.seq, n);
            assert_eq!(&m.data[..], &msg(n, 200)[..]);
            n += 1;
        }
        pos = last.seq + 1;
    }
    assert_eq!(n, 100);
    new.ack(100).unwrap();
    new.close().unwrap();
}

/// A `tick` on a closed handle must not write the cursor over the one the
/// new spool owns.
#[test]
fn tick_on_a_closed_handle_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.cursor_interval = Duration::ZERO;
    let (s, _) = Spool::open(cfg.clone()).unwrap();
    for i in 0..10 {
        s.append(&[&msg(i, 100)]).unwrap();
    }
    let old = s.clone();
    s.close().unwrap();
    let (new, _) = Spool::open(cfg).unwrap();
    new.ack(6).unwrap();
    new.sync().unwrap();
    assert!(matches!(old.tick(), Err(SpoolError::Closed)));
    assert_eq!(
        spillway_spool::inspect(dir.path()).unwrap().cursor,
        Some((6, 10))
    );
    new.close().unwrap();
}
