//! `Spool::append_past_quota`: a batch the producer side already read (TCP
//! acknowledged it to the producer) is written at shutdown even past
//! `max_disk`, which is a policy; a physically full disk is still `Full`.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{msg, small_config, SimFs};
use spillway_spool::{FullReason, Spool, SpoolError, Tier, WhenFull};

#[test]
fn batch_interrupted_at_the_quota_is_written_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.max_disk = 16 * 1024;
    cfg.when_full = WhenFull::Block;
    cfg.block_timeout = Some(Duration::from_millis(50));
    let (s, _) = Spool::open(cfg.clone()).unwrap();
    let mut i = 0;
    let e = loop {
        match s.append(&[&msg(i, 500)]) {
            Ok(_) => i += 1,
            Err(e) => break e,
        }
    };
    assert!(
        matches!(
            e,
            SpoolError::Full {
                reason: FullReason::Quota
            }
        ),
        "{e}"
    );
    // Shutdown interrupted the wait: the batch goes in anyway.
    let batch: Vec<Vec<u8>> = (i..i + 3).map(|j| msg(j, 500)).collect();
    let refs: Vec<&[u8]> = batch.iter().map(|m| &m[..]).collect();
    let o = s.append_past_quota(&refs).unwrap();
    assert_eq!((o.first_seq, o.accepted, o.tier), (i, 3, Some(Tier::Disk)));
    assert!(s.stats().disk_bytes > cfg.max_disk);
    // The quota still holds for ordinary appends.
    assert!(s.append(&[b"x"]).unwrap_err().is_full());
    s.close().unwrap();
    let (s, rep) = Spool::open(cfg).unwrap();
    assert_eq!(rep.next_seq, i + 3);
    let got = s.read(i, 10, 1 << 20).unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(&got[2].data[..], &msg(i + 2, 500)[..]);
}

#[test]
fn past_quota_still_reports_a_full_disk_without_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let fs = SimFs::new();
    let mut cfg = small_config(dir.path());
    cfg.when_full = WhenFull::Block;
    cfg.block_timeout = None; // an ordinary append would wait forever
    let (s, _) = Spool::open_with_fs(cfg, fs.clone()).unwrap();
    s.append(&[b"before"]).unwrap();
    fs.faults.space_left.store(0, Ordering::SeqCst);
    let t = Instant::now();
    let e = s.append_past_quota(&[&msg(1, 3000)]).unwrap_err();
    assert!(
        matches!(
            e,
            SpoolError::Full {
                reason: FullReason::NoSpace
            }
        ),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "it must not block");
    assert_eq!(s.next_seq(), 1, "nothing accepted");
    fs.faults.space_left.store(-1, Ordering::SeqCst);
    assert_eq!(s.append_past_quota(&[b"after"]).unwrap().first_seq, 1);
}

/// On a physically full disk with the memory tier empty, the space
/// reserved for the memory tier takes what shutdown must still write: a
/// batch already read from a producer.
#[test]
fn past_quota_uses_the_memory_reserve_when_the_memory_tier_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let fs = SimFs::new();
    let mut cfg = small_config(dir.path());
    cfg.memory_limit = 64 * 1024;
    cfg.when_full = WhenFull::Block;
    cfg.block_timeout = Some(Duration::from_millis(20));
    let (s, _) = Spool::open_with_fs(cfg.clone(), fs.clone()).unwrap();
    assert!(s.stats().mem_reserved > 0, "the reserve is allocated");
    // Fill the memory tier and overflow to disk, drain the memory tier
    // (acks), so the disk tier holds the rest and the memory tier is empty.
    let mut i = 0;
    while s.stats().disk_msgs == 0 {
        s.append(&[&msg(i, 500)]).unwrap();
        i += 1;
    }
    let first_disk = i - 1;
    s.ack(first_disk).unwrap();
    assert_eq!(s.stats().mem_msgs, 0);
    // The file system fills up.
    fs.faults.space_left.store(0, Ordering::SeqCst);
    assert!(s.append(&[&msg(i, 500)]).unwrap_err().is_full());
    let batch: Vec<Vec<u8>> = (i..i + 10).map(|j| msg(j, 500)).collect();
    let refs: Vec<&[u8]> = batch.iter().map(|m| &m[..]).collect();
    let o = s.append_past_quota(&refs).unwrap();
    assert_eq!((o.first_seq, o.accepted), (i, 10));
    s.close().unwrap();
    fs.faults.space_left.store(-1, Ordering::SeqCst);
    let (s, _) = Spool::open_with_fs(cfg, fs).unwrap();
    let got = s.read(first_disk, 100, 1 << 20).unwrap();
    assert_eq!(got.last().map(|m| m.seq), Some(i + 9));
}

#[test]
fn an_encoded_batch_is_offered_again_after_a_block_timeout_and_spent_once_taken() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.max_disk = 16 * 1024;
    cfg.when_full = WhenFull::Block;
    cfg.block_timeout = Some(Duration::from_millis(50));
    let (s, _) = Spool::open(cfg).unwrap();
    let mut i = 0;
    while s.append(&[&msg(i, 900)]).is_ok() {
        i += 1;
    }
    let m1 = msg(1_000, 900);
    let m2 = msg(1_001, 900);
    let mut batch = s.encode(&[&m1, &m2]).unwrap();
    assert_eq!(batch.len(), 2);
    // Full: refused whole, and still there to offer again.
    let e = s.append_batch(&mut batch).unwrap_err();
    assert!(
        matches!(
            e,
            SpoolError::Full {
                reason: FullReason::Quota
            }
        ),
        "{e}"
    );
    assert_eq!(batch.len(), 2);
    // Consumers free space: the same batch goes in, once.
    s.ack(s.next_seq()).unwrap();
    let o = s.append_batch(&mut batch).unwrap();
    assert_eq!(o.accepted, 2);
    assert!(batch.is_empty());
    let again = s.append_batch(&mut batch).unwrap();
    assert_eq!(again.accepted, 0);
    let got = s.read(o.first_seq, 10, 1 << 20).unwrap();
    let data: Vec<&[u8]> = got.iter().map(|m| &m.data[..]).collect();
    assert_eq!(data, vec![&m1[..], &m2[..]]);
    // Too large a message is refused at encoding.
    let big = vec![b'x'; 64 * 1024 + 1];
    assert!(matches!(
        s.encode(&[&big]),
        Err(SpoolError::TooLarge { .. })
    ));
}
