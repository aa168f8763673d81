//! One spool directory, one writer: a second open is refused while the
//! first handle lives, and allowed once it is gone (even without close, as
//! after a crash: the kernel drops the lock with the file).

use spillway_spool::{is_locked, Spool, SpoolConfig, SpoolError};

#[test]
fn second_open_is_refused_until_the_first_is_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (first, _) = Spool::open(SpoolConfig::new(dir.path())).expect("open");
    first.append(&[b"one\n".as_slice()]).expect("append");
    assert!(is_locked(dir.path()));
    match Spool::open(SpoolConfig::new(dir.path())) {
        Err(SpoolError::Locked { dir: d }) => assert_eq!(d, dir.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(first); // a crash: no close
    assert!(!is_locked(dir.path()));
    let (second, report) = Spool::open(SpoolConfig::new(dir.path())).expect("reopen");
    assert_eq!(
        report.next_seq, report.ack_floor,
        "memory-tier message lost on crash, as documented"
    );
    second.close().expect("close");
}

/// A reloaded route reopens its spool while handles of the old one may
/// still be alive (metrics, draining connections): close frees the
/// directory, and the old handles only get `Closed`.
#[test]
fn close_frees_the_directory_while_old_handles_live() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (first, _) = Spool::open(SpoolConfig::new(dir.path())).expect("open");
    first.append(&[b"one\n".as_slice()]).expect("append");
    let lingering = first.clone();
    first.close().expect("close");
    assert!(!is_locked(dir.path()));
    let (second, report) = Spool::open(SpoolConfig::new(dir.path())).expect("reopen");
    assert_eq!(
        report.next_seq - report.ack_floor,
        1,
        "the message survived close"
    );
    assert!(matches!(
        lingering.append(&[b"late\n".as_slice()]),
        Err(SpoolError::Closed)
    ));
    let got = second.read(0, 10, 1 << 20).expect("read");
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].data[..], b"one\n");
    drop(lingering);
    second.close().expect("close");
}
