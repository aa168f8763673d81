//! Inputs found by the `spool_dir` fuzz target (`fuzz/fuzz_targets/spool_dir.rs`),
//! minimized and rebuilt here as directories in the in-memory file system
//! (`spillway_spool::mem`). Each test names what the fuzzer found.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::Path;
use std::sync::Arc;

use spillway_spool::fs::Fs;
use spillway_spool::mem::MemFs;
use spillway_spool::{verify_with_fs, Durability, Spool, SpoolConfig, SpoolError};

fn config(dir: &Path, memory_limit: u64) -> SpoolConfig {
    let mut c = SpoolConfig::new(dir);
    c.segment_size = 4096;
    c.memory_limit = memory_limit;
    c.durability = Durability::Always;
    c
}

/// A valid cursor file (layout in the crate docs).
fn cursor(ack_floor: u64, next_seq: u64) -> Vec<u8> {
    let mut b = [0u8; 32];
    b[0..8].copy_from_slice(b"SPILLCUR");
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    b[16..24].copy_from_slice(&ack_floor.to_le_bytes());
    b[24..32].copy_from_slice(&next_seq.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&b[0..12]), &b[16..32]);
    b[12..16].copy_from_slice(&crc.to_le_bytes());
    b.to_vec()
}

/// Fuzz input `[39, 68, 0, 255, 82]`: a valid cursor at `u64::MAX` over an
/// empty log, then one append. `next_seq += 1` overflowed in `write_disk`
/// (a panic in debug builds; in release the numbers wrapped to 0 and the
/// record written, whose range runs past `u64::MAX`, was cut as a torn tail
/// at the next open: silent loss). Now the append is refused.
#[test]
fn append_at_the_end_of_the_sequence_space_is_refused_not_wrapped() {
    for (memory_limit, start, batch) in [
        (0, u64::MAX, 1),
        (0, u64::MAX - 1, 3),
        (1 << 16, u64::MAX - 2, 4),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let fs = MemFs::new();
        fs.insert(dir.join("cursor"), cursor(start, start));
        let (spool, _) = Spool::open_with_fs(config(dir, memory_limit), fs.clone()).unwrap();
        assert_eq!(spool.next_seq(), start);
        let msgs: Vec<&[u8]> = vec![b"x"; batch];
        let err = spool.append(&msgs).unwrap_err();
        assert!(
            matches!(err, SpoolError::SequenceExhausted { next_seq, msgs } if next_seq == start && msgs == batch as u64),
            "{err}"
        );
        assert!(err.is_fatal());
        // Nothing was written, and what fits still does.
        assert_eq!(spool.next_seq(), start);
        let room = (u64::MAX - start) as usize;
        if room > 0 {
            let ok: Vec<&[u8]> = vec![b"y"; room];
            assert_eq!(spool.append(&ok).unwrap().first_seq, start);
            assert_eq!(spool.next_seq(), u64::MAX);
        }
        spool.close().unwrap();
        let rep = verify_with_fs(&*fs, dir, |_, _| {}).unwrap();
        assert!(rep.ok() && rep.torn_tail.is_none(), "{rep:?}");
        let (again, _) =
            Spool::open_with_fs(config(dir, memory_limit), fs.clone() as Arc<dyn Fs>).unwrap();
        assert_eq!(again.next_seq(), start + room as u64);
        again.close().unwrap();
    }
}
