//! The file-system seam. All spool I/O goes through [`Fs`] and
//! [`SegmentFile`] so tests can inject short writes, `ENOSPC` and fsync
//! failures, and simulate a power cut (lose what was never synced).
//! [`StdFs`] is the real implementation over `std::fs`.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

/// A file used with positional I/O only, so one handle can be shared by the
/// writer, readers and the group-commit leader (which fsyncs it outside the
/// spool lock) without any shared seek position.
pub trait SegmentFile: Send + Sync + fmt::Debug {
    /// Like `pread`: may return fewer bytes than asked; 0 at end of file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// [`read_at`](SegmentFile::read_at) only from what is cached in
    /// memory (`preadv2` with `RWF_NOWAIT`): `WouldBlock` where it would
    /// wait for the disk (and where the file cannot say, the default).
    fn read_cached_at(&self, _buf: &mut [u8], _offset: u64) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
    /// Like `pwrite`: may write fewer bytes than given (a short write).
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize>;
    /// `fdatasync`: data and the size needed to read it back are durable.
    fn sync_data(&self) -> io::Result<()>;
    /// `ftruncate`.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Current size in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Grows the file to `len` bytes that really occupy disk space (unlike
    /// `set_len`, which leaves a hole), for the spool's reserve file. May
    /// fail part way, e.g. with `ENOSPC`; the file keeps what was
    /// allocated (see `len`). Never shrinks the file.
    ///
    /// The default writes filler bytes ([`allocate_by_writing`]); [`StdFs`]
    /// files use `fallocate(2)`.
    fn allocate(&self, len: u64) -> io::Result<()> {
        allocate_by_writing(self, len)
    }
}

/// [`SegmentFile::allocate`] by writing filler through `write_at`. The
/// filler is pseudo-random, not zeros: file systems that compress (ZFS,
/// btrfs) store zero blocks as holes, which would hold no space.
pub fn allocate_by_writing<F: SegmentFile + ?Sized>(f: &F, len: u64) -> io::Result<()> {
    let mut pos = f.len()?;
    if pos >= len {
        return Ok(());
    }
    let filler = filler(
        usize::try_from(len - pos)
            .unwrap_or(usize::MAX)
            .min(1 << 20),
    );
    while pos < len {
        let n = usize::try_from(len - pos)
            .unwrap_or(usize::MAX)
            .min(filler.len());
        match f.write_at(&filler[..n], pos) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "write returned 0 bytes",
                ))
            }
            Ok(k) => pos += k as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `n` incompressible bytes (xorshift64).
fn filler(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Directory-level operations of the spool.
pub trait Fs: Send + Sync + fmt::Debug {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// File names (not paths) in `dir`.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates a new file for reading and writing; fails if it exists.
    fn create(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>>;
    /// Opens an existing file (read-write when `write`).
    fn open(&self, path: &Path, write: bool) -> io::Result<Arc<dyn SegmentFile>>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// fsync of the directory, making creates, renames and removes durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFs;

#[derive(Debug)]
struct StdFile(File);

impl SegmentFile for StdFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }
    fn read_cached_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        use rustix::io::{preadv2, Errno, ReadWriteFlags};
        match preadv2(
            &self.0,
            &mut [io::IoSliceMut::new(buf)],
            offset,
            ReadWriteFlags::NOWAIT,
        ) {
            Ok(n) => Ok(n),
            // Not cached, or a kernel or file system without RWF_NOWAIT:
            // either way, leave it to a read that may wait.
            Err(Errno::AGAIN | Errno::OPNOTSUPP | Errno::INVAL | Errno::NOSYS) => {
                Err(io::ErrorKind::WouldBlock.into())
            }
            Err(e) => Err(e.into()),
        }
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.0.write_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    /// `fallocate(2)`: the blocks are allocated without writing them (a
    /// 64 MiB reserve takes milliseconds, not the hundreds of milliseconds
    /// of writing it).
    fn allocate(&self, len: u64) -> io::Result<()> {
        use rustix::fs::{fallocate, FallocateFlags};
        use rustix::io::Errno;
        let cur = self.len()?;
        if cur >= len {
            return Ok(());
        }
        match fallocate(&self.0, FallocateFlags::empty(), cur, len - cur) {
            Ok(()) => Ok(()),
            // Not supported by this file system (older ZFS, some FUSE
            // file systems): write the bytes instead.
            Err(e) if e == Errno::OPNOTSUPP || e == Errno::NOSYS => allocate_by_writing(self, len),
            // fallocate is all or nothing; writing takes what there is.
            Err(e) if e == Errno::NOSPC || e == Errno::DQUOT => allocate_by_writing(self, len),
            Err(e) => Err(e.into()),
        }
    }
}

/// Mode of the directories the spool creates: queued messages are
/// private to the relay's user (the umask can only narrow it).
pub const DIR_MODE: u32 = 0o700;
/// Mode of the files the spool creates (segments, cursor, lock, reserve).
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and its missing parents with [`DIR_MODE`]; an existing
/// directory keeps its mode (see [`exposure`]).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

/// Whether other local users can read or enter the spool in `dir`: a
/// description of the first exposed path (the directory or a file in it
/// that is group- or world-accessible), or `None`.
pub fn exposure(dir: &Path) -> Option<String> {
    let md = std::fs::metadata(dir).ok()?;
    let mode = md.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Some(format!(
            "spool directory {} has mode {mode:03o}: other local users can read queued messages (chmod 700 it)",
            dir.display()
        ));
    }
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let Ok(md) = entry.metadata() else { continue };
        let mode = md.permissions().mode() & 0o777;
        if md.is_file() && mode & 0o044 != 0 {
            return Some(format!(
                "spool file {} has mode {mode:03o}: readable by other local users (chmod 600 the spool's files)",
                entry.path().display()
            ));
        }
    }
    None
}

impl Fs for StdFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        create_private_dir(dir)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(path)?;
        Ok(Arc::new(StdFile(f)))
    }
    fn open(&self, path: &Path, write: bool) -> io::Result<Arc<dyn SegmentFile>> {
        let f = OpenOptions::new().read(true).write(write).open(path)?;
        Ok(Arc::new(StdFile(f)))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// Writes all of `buf` at `offset`, retrying short writes and `EINTR`.
/// On error, returns how many bytes were written before it (so the caller
/// can truncate them back).
pub(crate) fn write_all_at(
    f: &dyn SegmentFile,
    mut buf: &[u8],
    mut offset: u64,
) -> Result<(), (io::Error, u64)> {
    let mut done = 0u64;
    while !buf.is_empty() {
        match f.write_at(buf, offset) {
            Ok(0) => {
                return Err((
                    io::Error::new(io::ErrorKind::WriteZero, "write returned 0 bytes"),
                    done,
                ))
            }
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
                done += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((e, done)),
        }
    }
    Ok(())
}

/// Reads until `buf` is full or end of file; returns the bytes read.
/// `cached`: only from memory ([`SegmentFile::read_cached_at`]), else
/// `WouldBlock`.
pub(crate) fn read_full_at(
    f: &dyn SegmentFile,
    buf: &mut [u8],
    offset: u64,
    cached: bool,
) -> io::Result<usize> {
    let mut done = 0usize;
    while done < buf.len() {
        let at = offset + done as u64;
        let r = if cached {
            f.read_cached_at(&mut buf[done..], at)
        } else {
            f.read_at(&mut buf[done..], at)
        };
        match r {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// `ENOSPC` or `EDQUOT`: the disk (or the user's quota) is full. Handled like
/// the spool's own `max_disk` bound rather than as a failure.
pub(crate) fn is_no_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(code) if code == libc::ENOSPC || code == libc::EDQUOT)
}
