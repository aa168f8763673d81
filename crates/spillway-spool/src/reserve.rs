//! The reserve: a file in the spool directory that holds disk space for
//! the memory tier. `close` deletes it and writes the memory tier into the
//! space it freed, so a graceful shutdown on a full disk loses nothing.
//!
//! The spool keeps the file open while it runs, so deleting it (the
//! largest file in the directory, the first thing someone freeing space
//! removes) does not give its space away: the space is freed when the
//! spool drops the handle, at `close`. A truncated reserve is noticed at
//! the next `tick` and grown back, or the memory tier shrinks to fit.
//!
//! The file holds no data (allocated blocks, or filler bytes where
//! `fallocate` is not supported) and is not part of the log:
//! recovery, `inspect`, `verify` and `dump` only look at `*.seg` files. A
//! crash leaves it behind; the next open reuses it.

use std::path::Path;
use std::sync::Arc;

use crate::fs::{is_no_space, Fs, SegmentFile};
use crate::SpoolError;

/// Name of the reserve file in a spool directory.
pub(crate) const RESERVE_FILE: &str = "reserve";

/// Makes the reserve hold `target` bytes: reuses the file left by an
/// earlier run, grows it, or truncates it; `target == 0` removes it.
/// Returns the bytes it holds, less than `target` when the file system ran
/// out of space (`ENOSPC`/`EDQUOT`, not an error: the memory tier shrinks to
/// fit), and the open file, to be held while the spool runs. Other I/O
/// errors are errors.
///
/// Not fsynced: the space is taken when it is allocated, which is all a
/// running spool needs; after a crash, open checks the length again.
pub(crate) fn ensure(
    fs: &dyn Fs,
    dir: &Path,
    target: u64,
) -> Result<(u64, Option<Arc<dyn SegmentFile>>), SpoolError> {
    let path = dir.join(RESERVE_FILE);
    if target == 0 {
        remove(fs, dir)?;
        return Ok((0, None));
    }
    let file = match fs.open(&path, true) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match fs.create(&path) {
            Ok(f) => f,
            Err(e) if is_no_space(&e) => return Ok((0, None)),
            Err(e) => return Err(SpoolError::io("create", &path, e)),
        },
        Err(e) => return Err(SpoolError::io("open", &path, e)),
    };
    let len = file.len().map_err(|e| SpoolError::io("stat", &path, e))?;
    if len > target {
        file.set_len(target)
            .map_err(|e| SpoolError::io("truncate", &path, e))?;
        return Ok((target, Some(file)));
    }
    let held = match file.allocate(target) {
        Ok(()) => target,
        Err(e) if is_no_space(&e) => file
            .len()
            .map(|n| n.min(target))
            .map_err(|e| SpoolError::io("stat", &path, e))?,
        Err(e) => return Err(SpoolError::io("allocate", &path, e)),
    };
    Ok((held, Some(file)))
}

/// Deletes the reserve (if any), giving its space back.
pub(crate) fn remove(fs: &dyn Fs, dir: &Path) -> Result<(), SpoolError> {
    let path = dir.join(RESERVE_FILE);
    match fs.remove(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SpoolError::io("remove", path, e)),
    }
}
