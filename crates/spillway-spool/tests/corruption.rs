//! Named corruption scenarios over small committed fixture files in
//! `tests/fixtures/<name>/`. Regenerate them (only when the format changes)
//! with `cargo test -p spillway-spool --test corruption -- --ignored generate`.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::path::{Path, PathBuf};

use spillway_spool::{CursorRecovery, Durability, Spool, SpoolConfig, SpoolError};

const SEG_SIZE: u64 = 4096;

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn config(dir: &Path) -> SpoolConfig {
    let mut c = SpoolConfig::new(dir);
    c.segment_size = SEG_SIZE;
    c.memory_limit = 0;
    c.durability = Durability::Always;
    c
}

fn payload(seq: u64) -> Vec<u8> {
    format!("fixture message {seq:04} ........................")
        .into_bytes()
        .into_iter()
        .take(40)
        .collect()
}

/// Copies a fixture into a fresh temp dir (tests never touch the originals).
fn load(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture_dir(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    tmp
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

/// Offsets of the records of a segment (parsing the length fields).
fn record_offsets(path: &Path) -> Vec<u64> {
    let b = std::fs::read(path).unwrap();
    let mut off = 32usize;
    let mut out = Vec::new();
    while off + 28 <= b.len() {
        out.push(off as u64);
        let len = u32::from_le_bytes(b[off..off + 4].try_into().unwrap()) as usize;
        off += 28 + len;
    }
    out
}

fn read_all(s: &Spool) -> Result<Vec<u64>, SpoolError> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let got = s.read(pos, 100, 1 << 20)?;
        if got.is_empty() {
            return Ok(out);
        }
        for m in got {
            assert_eq!(m.data.to_vec(), payload(m.seq));
            pos = m.seq + 1;
            out.push(m.seq);
        }
    }
}

fn build(dir: &Path, batches: u64) {
    let (s, _) = Spool::open(config(dir)).unwrap();
    for b in 0..batches {
        let m: Vec<Vec<u8>> = (b * 3..b * 3 + 3).map(payload).collect();
        let r: Vec<&[u8]> = m.iter().map(|v| &v[..]).collect();
        s.append(&r).unwrap();
    }
    s.close().unwrap();
}

fn flip(path: &Path, offset: u64) {
    let mut b = std::fs::read(path).unwrap();
    b[offset as usize] ^= 0x55;
    std::fs::write(path, b).unwrap();
}

fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

#[test]
#[ignore = "regenerates the committed fixtures"]
fn generate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let fresh = |name: &str| {
        let d = root.join(name);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    // One segment, 5 records of 3 messages; the last record cut mid-payload.
    let d = fresh("torn_tail");
    build(&d, 5);
    let seg = &segments(&d)[0];
    let last = *record_offsets(seg).last().unwrap();
    truncate(seg, last + 50);

    let d = fresh("bad_crc_tail");
    build(&d, 5);
    let seg = &segments(&d)[0];
    flip(seg, record_offsets(seg)[4] + 28 + 5);

    // Damage in record 2 of a segment that is not the last one.
    let d = fresh("bad_crc_middle");
    build(&d, 40);
    let seg = &segments(&d)[0];
    flip(seg, record_offsets(seg)[1] + 28 + 5);

    // Damage in the last segment with a valid record after it.
    let d = fresh("bad_crc_last_segment_middle");
    build(&d, 5);
    let seg = &segments(&d)[0];
    flip(seg, record_offsets(seg)[1] + 28 + 5);

    // A last segment whose creation was torn: 10 bytes of header.
    let d = fresh("truncated_header");
    build(&d, 40);
    let segs = segments(&d);
    let header = std::fs::read(&segs[0]).unwrap();
    let next = spillway_spool::inspect(&d).unwrap().end_seq.unwrap();
    std::fs::write(d.join(format!("{next:020}.seg")), &header[..10]).unwrap();

    // A segment in the middle with a truncated header.
    let d = fresh("truncated_header_middle");
    build(&d, 40);
    truncate(&segments(&d)[0], 10);

    let d = fresh("empty_segment");
    build(&d, 40);
    let next = spillway_spool::inspect(&d).unwrap().end_seq.unwrap();
    std::fs::write(d.join(format!("{next:020}.seg")), b"").unwrap();

    // Three segments, the middle one deleted: a gap in the seqs.
    let d = fresh("missing_segment");
    build(&d, 60);
    let segs = segments(&d);
    assert!(segs.len() >= 3);
    std::fs::remove_file(&segs[1]).unwrap();

    // The cursor says 100 consumed but the log ends at 15.
    let d = fresh("cursor_beyond_end");
    build(&d, 5);
    let other = tempfile::tempdir().unwrap();
    let (s, _) = Spool::open(config(other.path())).unwrap();
    let m = vec![b'x'; 10];
    for _ in 0..100 {
        s.append(&[&m]).unwrap();
    }
    s.ack(100).unwrap();
    s.close().unwrap();
    std::fs::copy(other.path().join("cursor"), d.join("cursor")).unwrap();
}

#[test]
fn torn_tail_is_truncated_and_reported() {
    let d = load("torn_tail");
    let v = spillway_spool::verify(d.path(), |_, _| {}).unwrap();
    assert!(v.ok() && v.torn_tail.is_some(), "{v:?}");
    let (s, rep) = Spool::open(config(d.path())).unwrap();
    assert_eq!(rep.truncated_records, 1);
    assert_eq!(rep.truncated_bytes, 50);
    assert!(rep.repaired());
    assert!(rep.to_string().contains("truncated torn tail"), "{rep}");
    assert_eq!(rep.next_seq, 12);
    assert_eq!(read_all(&s).unwrap(), (0..12).collect::<Vec<_>>());
    assert_eq!(s.stats().truncated_bytes, 50);
    // Appends continue cleanly after the cut.
    let o = s.append(&[&payload(12)]).unwrap();
    assert_eq!(o.first_seq, 12);
    drop(s);
    let (_, rep) = Spool::open(config(d.path())).unwrap();
    assert_eq!((rep.truncated_bytes, rep.next_seq), (0, 13));
}

#[test]
fn bad_crc_at_tail_is_truncated() {
    let d = load("bad_crc_tail");
    let (s, rep) = Spool::open(config(d.path())).unwrap();
    assert_eq!(rep.truncated_records, 1);
    assert_eq!(rep.truncated_bytes, 28 + 3 * 41);
    assert_eq!(read_all(&s).unwrap(), (0..12).collect::<Vec<_>>());
}

#[test]
fn bad_crc_in_the_middle_is_an_error_naming_segment_and_offset() {
    let d = load("bad_crc_middle");
    let first = segments(d.path())[0].clone();
    let bad_offset = record_offsets(&first)[1];
    // Open trusts sealed segments; the damage surfaces when read.
    let (s, _) = Spool::open(config(d.path())).unwrap();
    match read_all(&s) {
        Err(SpoolError::Corrupt {
            segment, offset, ..
        }) => {
            assert_eq!((segment, offset), (first.clone(), bad_offset))
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Reading past it is refused too; nothing is skipped silently.
    assert!(s.read(5, 10, 1 << 20).unwrap_err().is_corrupt());
    let v = spillway_spool::verify(d.path(), |_, _| {}).unwrap();
    let p = v.problem.expect("verify finds it");
    assert_eq!((p.segment, p.offset), (first, bad_offset));
    let dumped = spillway_spool::dump(d.path(), None, None, |_| Ok(()));
    assert!(dumped.unwrap_err().is_corrupt());
}

#[test]
fn bad_record_before_a_valid_one_in_last_segment_fails_open() {
    let d = load("bad_crc_last_segment_middle");
    let seg = segments(d.path())[0].clone();
    let bad_offset = record_offsets(&seg)[1];
    match Spool::open(config(d.path())) {
        Err(SpoolError::Corrupt {
            segment, offset, ..
        }) => {
            assert_eq!((segment, offset), (seg.clone(), bad_offset))
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Nothing was truncated by the failed open.
    assert_eq!(record_offsets(&seg).len(), 5);
}

#[test]
fn torn_segment_creation_is_removed() {
    let d = load("truncated_header");
    let before = segments(d.path());
    let (s, rep) = Spool::open(config(d.path())).unwrap();
    assert_eq!(
        rep.removed_torn_segments,
        vec![before.last().unwrap().clone()]
    );
    assert_eq!(rep.next_seq, 120);
    assert_eq!(read_all(&s).unwrap().len(), 120);
    assert_eq!(s.append(&[&payload(120)]).unwrap().first_seq, 120);
}

#[test]
fn truncated_header_in_the_middle_fails_open() {
    let d = load("truncated_header_middle");
    let first = segments(d.path())[0].clone();
    match Spool::open(config(d.path())) {
        Err(SpoolError::Corrupt {
            segment,
            offset,
            detail,
        }) => {
            assert_eq!((segment, offset), (first, 0));
            assert!(detail.contains("truncated"), "{detail}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn empty_last_segment_is_removed() {
    let d = load("empty_segment");
    let (s, rep) = Spool::open(config(d.path())).unwrap();
    assert_eq!(rep.removed_torn_segments.len(), 1);
    assert_eq!(read_all(&s).unwrap().len(), 120);
}

#[test]
fn missing_segment_is_an_error_not_a_skip() {
    let d = load("missing_segment");
    let segs = segments(d.path());
    let (s, _) = Spool::open(config(d.path())).unwrap();
    match read_all(&s) {
        Err(SpoolError::Corrupt {
            segment, detail, ..
        }) => {
            assert_eq!(segment, segs[0]);
            assert!(detail.contains("missing"), "{detail}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let v = spillway_spool::verify(d.path(), |_, _| {}).unwrap();
    let p = v.problem.expect("gap found");
    assert_eq!(p.segment, segs[1]);
    assert!(p.detail.contains("missing"));
}

#[test]
fn cursor_beyond_end_discards_consumed_log() {
    let d = load("cursor_beyond_end");
    let (s, rep) = Spool::open(config(d.path())).unwrap();
    assert_eq!(
        rep.cursor,
        CursorRecovery::BeyondEnd {
            cursor: 100,
            log_end: 15
        }
    );
    assert_eq!((rep.ack_floor, rep.next_seq), (100, 100));
    assert!(read_all(&s).unwrap().is_empty());
    assert_eq!(s.append(&[b"next"]).unwrap().first_seq, 100);
}

#[test]
fn fixtures_are_small() {
    for e in std::fs::read_dir(fixture_dir("")).unwrap() {
        for f in std::fs::read_dir(e.unwrap().path()).unwrap() {
            assert!(f.unwrap().metadata().unwrap().len() <= SEG_SIZE + 200);
        }
    }
}

#[test]
fn open_reads_only_the_last_segment() {
    // A spool of many segments: recovery reads headers of the others, and
    // scans only the last.
    let d = tempfile::tempdir().unwrap();
    build(d.path(), 400);
    let segs = segments(d.path());
    assert!(segs.len() > 10);
    let (_, rep) = Spool::open(config(d.path())).unwrap();
    assert_eq!(rep.scanned_segment.as_ref(), segs.last());
    assert!(rep.scanned_bytes <= SEG_SIZE + 200, "{}", rep.scanned_bytes);
    let _ = common::msg(0, 1);
}
