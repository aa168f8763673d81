//! The cursor file: the consumer's ack floor, persisted atomically.
//!
//! ```text
//! 0      8  magic        b"SPILLCUR"
//! 8      4  version      u32 LE (1)
//! 12     4  crc          u32 LE, CRC32C of bytes [0..12) ++ [16..32)
//! 16     8  ack_floor    u64 LE, every seq below it is consumed
//! 24     8  next_seq     u64 LE, next sequence number at persist time
//! ```
//! Written to `cursor.tmp`, fsynced, renamed over `cursor`, directory
//! fsynced: a reader sees the old or the new cursor, never a torn one.
//! DO NOT REORDER FIELDS.
//!
//! A full disk (`ENOSPC`/`EDQUOT` creating, writing or renaming the temp
//! file) is not an error: the temp file is removed, the previous cursor file
//! stays as it was, and the caller learns [`CursorWrite::NoSpace`]. A stale
//! cursor only means that acknowledgements newer than it are redelivered
//! after a crash. A failed fsync is still an error.

use std::path::{Path, PathBuf};

use crate::format::{le_u32, le_u64};
use crate::fs::{is_no_space, read_full_at, write_all_at, Fs};
use crate::SpoolError;

pub(crate) const CURSOR_FILE: &str = "cursor";
pub(crate) const CURSOR_TMP: &str = "cursor.tmp";
/// The temp file of the periodic persist, which runs without the spool's
/// main lock (so appends never wait for its fsync) and must not clobber a
/// concurrent locked write's temp file.
pub(crate) const CURSOR_BG_TMP: &str = "cursor.bg.tmp";
const MAGIC: [u8; 8] = *b"SPILLCUR";
const LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub ack_floor: u64,
    pub next_seq: u64,
}

/// What a cursor write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(crate) enum CursorWrite {
    Written,
    /// The file system is full: nothing changed on disk (the temp file was
    /// removed), the previous cursor file is intact.
    NoSpace,
}

fn crc(b: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&b[0..12]), &b[16..32])
}

impl Cursor {
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[16..24].copy_from_slice(&self.ack_floor.to_le_bytes());
        b[24..32].copy_from_slice(&self.next_seq.to_le_bytes());
        let c = crc(&b);
        b[12..16].copy_from_slice(&c.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Cursor, &'static str> {
        if b.len() != LEN {
            return Err("cursor file has the wrong length");
        }
        if b[0..8] != MAGIC {
            return Err("cursor file has a bad magic number");
        }
        if le_u32(&b[8..12]) != 1 {
            return Err("cursor file has an unsupported version");
        }
        if le_u32(&b[12..16]) != crc(b) {
            return Err("cursor file checksum mismatch");
        }
        Ok(Cursor {
            ack_floor: le_u64(&b[16..24]),
            next_seq: le_u64(&b[24..32]),
        })
    }
}

/// Reads the cursor. `Ok(None)` when there is none; `Err(Some(reason))`-like
/// damage is returned as `Ok(Err(reason))` so open can fall back to
/// redelivery instead of failing.
pub(crate) fn read_cursor(
    fs: &dyn Fs,
    dir: &Path,
) -> Result<Option<Result<Cursor, &'static str>>, SpoolError> {
    let path = dir.join(CURSOR_FILE);
    let f = match fs.open(&path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SpoolError::io("open", path, e)),
    };
    let mut buf = [0u8; LEN + 1];
    let n = read_full_at(&*f, &mut buf, 0, false).map_err(|e| SpoolError::io("read", &path, e))?;
    Ok(Some(Cursor::decode(&buf[..n])))
}

/// Persists the cursor atomically (see module docs). `durable` = fsync the
/// temp file and the directory (false under `Durability::Never`).
pub(crate) fn write_cursor(
    fs: &dyn Fs,
    dir: &Path,
    cursor: Cursor,
    durable: bool,
) -> Result<CursorWrite, SpoolError> {
    let Some(tmp) = write_cursor_tmp(fs, dir, CURSOR_TMP, cursor, durable)? else {
        return Ok(CursorWrite::NoSpace);
    };
    if install_cursor(fs, dir, &tmp)? == CursorWrite::NoSpace {
        return Ok(CursorWrite::NoSpace);
    }
    if durable {
        sync_cursor_dir(fs, dir)?;
    }
    Ok(CursorWrite::Written)
}

/// First step of a persist: the cursor in temp file `name`, fsynced when
/// `durable`. Returns its path, or `None` when the file system is full
/// (then no temp file is left behind).
pub(crate) fn write_cursor_tmp(
    fs: &dyn Fs,
    dir: &Path,
    name: &str,
    cursor: Cursor,
    durable: bool,
) -> Result<Option<PathBuf>, SpoolError> {
    let tmp = dir.join(name);
    match fs.remove(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(SpoolError::io("remove", tmp, e)),
    }
    let f = match fs.create(&tmp) {
        Ok(f) => f,
        Err(e) if is_no_space(&e) => return Ok(None),
        Err(e) => return Err(SpoolError::io("create", &tmp, e)),
    };
    if let Err((e, _)) = write_all_at(&*f, &cursor.encode(), 0) {
        drop(f);
        // Best effort: a leftover temp file is also removed at the next open.
        let _ = fs.remove(&tmp);
        if is_no_space(&e) {
            return Ok(None);
        }
        return Err(SpoolError::io("write", &tmp, e));
    }
    if durable {
        // Whatever its errno (ENOSPC included, on thin or network storage),
        // a failed fsync is an error: written data may have been dropped.
        f.sync_data()
            .map_err(|e| SpoolError::io("fsync", &tmp, e))?;
    }
    Ok(Some(tmp))
}

/// Second step: the temp file replaces the cursor (atomic rename). A
/// directory that needs a block it cannot get fails the rename with ENOSPC:
/// then the temp file is removed and the old cursor stays.
pub(crate) fn install_cursor(
    fs: &dyn Fs,
    dir: &Path,
    tmp: &Path,
) -> Result<CursorWrite, SpoolError> {
    let path = dir.join(CURSOR_FILE);
    match fs.rename(tmp, &path) {
        Ok(()) => Ok(CursorWrite::Written),
        Err(e) if is_no_space(&e) => {
            let _ = fs.remove(tmp);
            Ok(CursorWrite::NoSpace)
        }
        Err(e) => Err(SpoolError::io("rename", &path, e)),
    }
}

/// Third step when durable: the rename reaches the disk.
pub(crate) fn sync_cursor_dir(fs: &dyn Fs, dir: &Path) -> Result<(), SpoolError> {
    fs.sync_dir(dir)
        .map_err(|e| SpoolError::io("fsync dir", dir, e))
}
