//! `spool_dir`: the input describes a spool directory in memory
//! (`spillway_spool::mem::MemFs`); the target runs `inspect`, `verify`,
//! `dump`, then recovery (`Spool::open_with_fs`), reads everything, maybe
//! appends and acks, closes, and opens once more.
//!
//! The directory comes from one of two builders (first input byte):
//!
//! * **crafted**: a few files named from `{NNN.seg, NNN.seg.tmp,
//!   next.{0,1}.seg.spare, cursor,
//!   cursor.tmp, cursor.bg.tmp, reserve, LOCK, junk}` (sequence numbers from
//!   the input, huge ones included). A segment is an optional header (valid
//!   with the input's `first_seq`, or raw bytes), records encoded here from
//!   the documented format with correct CRCs but input-chosen fields
//!   (sequence numbers, counts, lengths that need not match the payload),
//!   then raw bytes. A cursor is valid (input's floor and next seq) or raw.
//! * **spool-built**: a real `Spool` on the in-memory file system, started
//!   at an input-chosen sequence number (through a valid cursor file),
//!   appends input batches into 4 KiB segments, acks, then closes or is
//!   dropped (a crash).
//!
//! Then input-chosen mutations (flip, set, zero, truncate, extend, remove,
//! rename to another seq, copy over) corrupt the result.
//!
//! Nothing may panic, hang or allocate absurdly. Beyond that, a few
//! cross-checks that hold for any directory:
//! * `verify`'s progress never exceeds its total; `dump` yields strictly
//!   increasing sequence numbers; reads too, never below the floor.
//! * if `verify` found no damage, recovery succeeds, reading the whole
//!   log succeeds, and it returns exactly the messages `dump` did;
//! * a spool that opened and closed cleanly opens again.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use spillway_spool::fs::Fs;
use spillway_spool::mem::MemFs;
use spillway_spool::{
    dump_with_fs, inspect_with_fs, verify_with_fs, Durability, Spool, SpoolConfig, SpoolError,
    WhenFull,
};

/// `Spool::open_with_fs` takes its `LOCK` with a real `flock` in
/// `config.dir`, so the in-memory spool is named after a real directory
/// (one per process; its only file is the lock).
fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("spillway-fuzz-spool-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("create the lock directory");
        d
    })
}

const SEG_HEADER: usize = 32;
const REC_HEADER: usize = 28;

fn crc_parts(parts: &[&[u8]]) -> u32 {
    parts.iter().fold(0, |c, p| crc32c::crc32c_append(c, p))
}

fn seg_name(seq: u64) -> String {
    format!("{seq:020}.seg")
}

fn segment_header(first_seq: u64, created_ms: u64) -> [u8; SEG_HEADER] {
    let mut b = [0u8; SEG_HEADER];
    b[0..8].copy_from_slice(b"SPILLSEG");
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    b[16..24].copy_from_slice(&first_seq.to_le_bytes());
    b[24..32].copy_from_slice(&created_ms.to_le_bytes());
    let c = crc_parts(&[&b[0..12], &b[16..32]]);
    b[12..16].copy_from_slice(&c.to_le_bytes());
    b
}

fn cursor_file(ack_floor: u64, next_seq: u64) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[0..8].copy_from_slice(b"SPILLCUR");
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    b[16..24].copy_from_slice(&ack_floor.to_le_bytes());
    b[24..32].copy_from_slice(&next_seq.to_le_bytes());
    let c = crc_parts(&[&b[0..12], &b[16..32]]);
    b[12..16].copy_from_slice(&c.to_le_bytes());
    b
}

/// A record with a correct CRC over whatever the fields say.
fn record(out: &mut Vec<u8>, len: u32, first_seq: u64, count: u32, append_ms: u64, payload: &[u8]) {
    let mut h = [0u8; REC_HEADER];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[8..16].copy_from_slice(&first_seq.to_le_bytes());
    h[16..20].copy_from_slice(&count.to_le_bytes());
    h[20..28].copy_from_slice(&append_ms.to_le_bytes());
    let c = crc_parts(&[payload, &h[8..28], &h[0..4]]);
    h[4..8].copy_from_slice(&c.to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
}

fn put_varint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Sequence numbers that matter: small, the end of the sequence space,
/// anything.
fn seq(u: &mut Unstructured) -> Result<u64> {
    Ok(match u.int_in_range(0u8..=5)? {
        0 => u64::from(u.int_in_range(0u8..=16)?),
        1 => u64::MAX - u64::from(u.int_in_range(0u8..=16)?),
        2 => u64::MAX,
        3 => u64::from(u.arbitrary::<u16>()?),
        4 => (1u64 << 63) + u64::from(u.arbitrary::<u8>()?),
        _ => u.arbitrary()?,
    })
}

/// A message: input bytes repeated to an input-chosen length, so a short
/// input can fill several 4 KiB segments.
fn message(u: &mut Unstructured) -> Result<Vec<u8>> {
    let len = usize::from(u.int_in_range(0u16..=1500)?);
    let n = usize::from(u.int_in_range(0u8..=8)?);
    let seed: &[u8] = u.bytes(n)?;
    if seed.is_empty() {
        return Ok(vec![b'x'; len]);
    }
    Ok(seed.iter().copied().cycle().take(len).collect())
}

fn raw(u: &mut Unstructured, max: u16) -> Result<Vec<u8>> {
    let n = usize::from(u.int_in_range(0..=max)?);
    Ok(u.bytes(n)?.to_vec())
}

/// A segment's contents (see the module docs).
fn crafted_segment(u: &mut Unstructured, name_seq: u64) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    match u.int_in_range(0u8..=3)? {
        0 | 1 => out.extend_from_slice(&segment_header(name_seq, u.arbitrary()?)),
        2 => out.extend_from_slice(&segment_header(seq(u)?, u.arbitrary()?)),
        _ => out.extend(raw(u, 40)?),
    }
    let mut next = name_seq;
    for _ in 0..u.int_in_range(0u8..=6)? {
        let first = if u.ratio(3u8, 4)? { next } else { seq(u)? };
        let mut payload = Vec::new();
        let msgs = u.int_in_range(1u8..=4)?;
        for _ in 0..msgs {
            let m = message(u)?;
            put_varint(&mut payload, m.len() as u32);
            payload.extend(m);
        }
        let mut count = u32::from(msgs);
        let mut len = payload.len() as u32;
        // Fields that lie about the payload, under a valid CRC.
        match u.int_in_range(0u8..=7)? {
            0 => count = u.arbitrary()?,
            1 => len = u.arbitrary()?,
            2 => payload.extend(raw(u, 8)?),
            3 => payload.truncate(payload.len().saturating_sub(1)),
            _ => {}
        }
        if matches!(u.int_in_range(0u8..=7)?, 0) {
            len = payload.len() as u32;
        }
        record(&mut out, len, first, count, u.arbitrary()?, &payload);
        next = first.wrapping_add(u64::from(count));
    }
    out.extend(raw(u, 64)?);
    Ok(out)
}

fn crafted(u: &mut Unstructured, fs: &MemFs, dir: &Path) -> Result<()> {
    for _ in 0..u.int_in_range(0u8..=6)? {
        let (name, data) = match u.int_in_range(0u8..=9)? {
            0..=3 => {
                let s = seq(u)?;
                (seg_name(s), crafted_segment(u, s)?)
            }
            4 => {
                // A temp file, or a spare segment a roll left (adopted at
                // open only if it continues the log).
                let s = seq(u)?;
                let name = match u.int_in_range(0u8..=2)? {
                    0 => format!("{}.tmp", seg_name(s)),
                    1 => "next.0.seg.spare".to_owned(),
                    _ => "next.1.seg.spare".to_owned(),
                };
                (name, crafted_segment(u, s)?)
            }
            5 => {
                let name = ["cursor", "cursor.tmp", "cursor.bg.tmp"]
                    [usize::from(u.int_in_range(0u8..=2)?)];
                let data = if u.ratio(3u8, 4)? {
                    cursor_file(seq(u)?, seq(u)?).to_vec()
                } else {
                    raw(u, 40)?
                };
                (name.to_owned(), data)
            }
            6 => ("reserve".to_owned(), raw(u, 200)?),
            7 => ("LOCK".to_owned(), raw(u, 8)?),
            8 => {
                // Names that almost parse as segments.
                let names = [
                    "junk",
                    "1.seg",
                    "0000000000000000000a.seg",
                    "00000000000000000001.seg.bak",
                    "18446744073709551616.seg",
                    "99999999999999999999.seg",
                    ".seg",
                    "000000000000000000001.seg",
                ];
                (
                    names[usize::from(u.int_in_range(0u8..=7)?)].to_owned(),
                    raw(u, 64)?,
                )
            }
            _ => ("junk".to_owned(), raw(u, 64)?),
        };
        fs.insert(dir.join(name), data);
    }
    Ok(())
}

fn config(dir: &Path, memory_limit: u64, durability: Durability) -> SpoolConfig {
    let mut c = SpoolConfig::new(dir);
    c.memory_limit = memory_limit;
    c.segment_size = 4096;
    c.durability = durability;
    c.max_message = 1 << 16;
    // Never `Block` with a bound: an append must not wait for space.
    c.max_disk = 0;
    c.when_full = WhenFull::DropNewest;
    c.block_timeout = Some(std::time::Duration::ZERO);
    c
}

fn durability(u: &mut Unstructured) -> Result<Durability> {
    Ok(match u.int_in_range(0u8..=2)? {
        0 => Durability::Always,
        1 => Durability::Never,
        _ => Durability::Interval(std::time::Duration::from_millis(100)),
    })
}

fn memory_limit(u: &mut Unstructured) -> Result<u64> {
    Ok([0, 0, 4096, 1 << 16][usize::from(u.int_in_range(0u8..=3)?)])
}

fn batch(u: &mut Unstructured) -> Result<Vec<Vec<u8>>> {
    let n = u.int_in_range(1u8..=4)?;
    (0..n).map(|_| message(u)).collect()
}

fn append(spool: &Spool, msgs: &[Vec<u8>]) {
    let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
    let _ = spool.append(&refs);
}

/// A real spool writes the directory; it starts at an input-chosen seq.
fn spool_built(u: &mut Unstructured, fs: &Arc<MemFs>, dir: &Path) -> Result<()> {
    let start = seq(u)?;
    if start != 0 {
        fs.insert(dir.join("cursor"), cursor_file(start, start).to_vec());
    }
    let cfg = config(dir, memory_limit(u)?, durability(u)?);
    let Ok((spool, _)) = Spool::open_with_fs(cfg, fs.clone()) else {
        return Ok(());
    };
    for _ in 0..u.int_in_range(0u8..=8)? {
        append(&spool, &batch(u)?);
        if u.ratio(1u8, 4)? {
            let floor = spool.ack_floor();
            let upto = floor.saturating_add(u64::from(u.int_in_range(0u8..=8)?));
            let _ = spool.ack(upto.min(spool.next_seq()));
        }
    }
    if u.arbitrary()? {
        let _ = spool.close();
    } // else dropped: a crash, the memory tier is lost
    Ok(())
}

fn mutate(u: &mut Unstructured, fs: &MemFs, dir: &Path) -> Result<()> {
    for _ in 0..u.int_in_range(0u8..=4)? {
        let paths = fs.paths();
        if paths.is_empty() {
            return Ok(());
        }
        let path = &paths[u.choose_index(paths.len())?];
        let mut data = fs.contents(path).unwrap_or_default();
        let at = |u: &mut Unstructured, len: usize| -> Result<usize> {
            Ok(usize::from(u.arbitrary::<u16>()?) % (len + 1))
        };
        match u.int_in_range(0u8..=7)? {
            0 => {
                let i = at(u, data.len())?;
                if let Some(b) = data.get_mut(i) {
                    *b ^= u.int_in_range(1u8..=255)?;
                }
            }
            1 => {
                let i = at(u, data.len())?;
                if let Some(b) = data.get_mut(i) {
                    *b = u.arbitrary()?;
                }
            }
            2 => {
                let i = at(u, data.len())?;
                let n = usize::from(u.arbitrary::<u8>()?);
                let end = (i + n).min(data.len());
                data[i..end].fill(0);
            }
            3 => {
                let i = at(u, data.len())?;
                data.truncate(i);
            }
            4 => data.extend(raw(u, 64)?),
            5 => {
                let _ = fs.remove(path);
                continue;
            }
            6 => {
                let to = dir.join(seg_name(seq(u)?));
                let _ = fs.rename(path, &to);
                continue;
            }
            _ => {
                // Overwrite with another file's bytes (a copied segment).
                let other = &paths[u.choose_index(paths.len())?];
                data = fs.contents(other).unwrap_or_default();
            }
        }
        fs.insert(path.clone(), data);
    }
    Ok(())
}

/// Reads the whole log from the floor, checking order.
fn read_all(spool: &Spool) -> std::result::Result<Vec<(u64, Vec<u8>)>, SpoolError> {
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut pos = spool.ack_floor();
    loop {
        let got = spool.read(pos, 64, 1 << 16)?;
        let Some(last) = got.last() else {
            return Ok(out);
        };
        let next = last.seq.checked_add(1);
        for m in got {
            assert!(m.seq >= pos, "read from {pos} returned seq {}", m.seq);
            if let Some(&(prev, _)) = out.last() {
                assert!(m.seq > prev, "read returned {} after {prev}", m.seq);
            }
            out.push((m.seq, m.data.to_vec()));
        }
        match next {
            Some(n) => pos = n,
            None => return Ok(out),
        }
    }
}

fn run(u: &mut Unstructured) -> Result<()> {
    let dir = dir();
    let fs = MemFs::new();
    if u.arbitrary()? {
        spool_built(u, &fs, dir)?;
    } else {
        crafted(u, &fs, dir)?;
    }
    mutate(u, &fs, dir)?;

    // The offline tools first: they must not change anything.
    let before: Vec<(PathBuf, Option<Vec<u8>>)> = fs
        .paths()
        .into_iter()
        .map(|p| (p.clone(), fs.contents(&p)))
        .collect();
    let _ = inspect_with_fs(&*fs, dir);
    let verified = verify_with_fs(&*fs, dir, |done, total| {
        assert!(done <= total, "verify progress {done} of {total}");
    });
    let mut dumped: Vec<(u64, Vec<u8>)> = Vec::new();
    let dump_res = dump_with_fs(&*fs, dir, None, None, |m| {
        if let Some(&(prev, _)) = dumped.last() {
            assert!(m.seq > prev, "dump returned {} after {prev}", m.seq);
        }
        dumped.push((m.seq, m.data.to_vec()));
        Ok(())
    });
    let after: Vec<(PathBuf, Option<Vec<u8>>)> = fs
        .paths()
        .into_iter()
        .map(|p| (p.clone(), fs.contents(&p)))
        .collect();
    assert!(before == after, "inspect/verify/dump changed the directory");
    // The offline tools do not read a spare segment that a roll left, and
    // open adopts one that continues the log: with one present, a clean
    // verify says nothing about it.
    let spare = ["next.0.seg.spare", "next.1.seg.spare"]
        .iter()
        .any(|n| fs.contents(&dir.join(n)).is_some());
    let clean = matches!(&verified, Ok(r) if r.ok()) && !spare;

    // Recovery.
    let cfg = config(dir, memory_limit(u)?, durability(u)?);
    let opened = Spool::open_with_fs(cfg.clone(), fs.clone());
    let (spool, report) = match opened {
        Ok(s) => s,
        Err(e) => {
            assert!(!clean, "verify found no damage but open failed: {e}");
            return Ok(());
        }
    };
    let read = read_all(&spool);
    if clean {
        let read = match &read {
            Ok(r) => r,
            Err(e) => panic!("verify found no damage but reading failed: {e}"),
        };
        if let Ok(n) = dump_res {
            assert_eq!(n as usize, dumped.len());
            assert!(
                report.adopted_spare.is_none() && *read == dumped,
                "read {} messages, dump {}",
                read.len(),
                dumped.len()
            );
        }
    }
    // Keep going on the recovered spool.
    if u.arbitrary()? {
        append(&spool, &batch(u)?);
        let _ = spool.ack(spool.next_seq().min(spool.ack_floor().saturating_add(2)));
        let _ = read_all(&spool);
    }
    let _ = spool.tick();
    if spool.close().is_ok() && read.is_ok() {
        // What one open recovered and closed, the next open accepts.
        match Spool::open_with_fs(cfg, fs.clone()) {
            Ok((s, _)) => {
                let _ = read_all(&s);
                let _ = s.close();
            }
            Err(e) => panic!("reopen after a clean close failed: {e}"),
        }
    }
    let _ = inspect_with_fs(&*fs, dir);
    let _ = verify_with_fs(&*fs, dir, |_, _| {});
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
