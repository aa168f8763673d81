//! An in-memory file system, for tests and fuzzing: a spool directory whose
//! files live in a map, so a fuzzer can build an arbitrary directory, run
//! recovery and the offline tools over it, and throw it away, with no disk
//! I/O and nothing left behind. Not for production use: nothing survives
//! the process, and `sync_data`/`sync_dir` do nothing (there is no power
//! cut to survive; [`crate::sim::SimFs`] simulates one over real files).
//!
//! Semantics follow a POSIX file system closely enough for the spool:
//! `create` fails with `AlreadyExists` if the file exists, `open` with
//! `NotFound` if it does not; a removed or renamed-over file stays readable
//! and writable through handles opened before (like an unlinked inode);
//! reads and writes are positional, a write past the end fills the gap with
//! zeros. Directories are implicit: `create_dir_all` does nothing and
//! `list_dir` lists the files whose parent is the given path.
//!
//! Note that [`crate::Spool::open_with_fs`] still takes its `LOCK` with a
//! real `flock` on the real directory (`config.dir` must be a writable
//! path); only the log, cursor and reserve go through this file system.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::fs::{Fs, SegmentFile};

type Data = Arc<Mutex<Vec<u8>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a file half-updated in a
    // way later calls would misread (every update is one Vec operation);
    // carry on rather than propagate it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Files in memory (see the module docs). Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct MemFs {
    files: Mutex<HashMap<PathBuf, Data>>,
}

impl fmt::Debug for MemFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let files = lock(&self.files);
        f.debug_struct("MemFs")
            .field("files", &files.len())
            .finish()
    }
}

impl MemFs {
    pub fn new() -> Arc<MemFs> {
        Arc::new(MemFs::default())
    }

    /// Creates or replaces the file at `path` with `data`.
    pub fn insert(&self, path: impl Into<PathBuf>, data: Vec<u8>) {
        lock(&self.files).insert(path.into(), Arc::new(Mutex::new(data)));
    }

    /// A copy of the file's contents, if it exists.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let data = lock(&self.files).get(path).cloned()?;
        let v = lock(&data).clone();
        Some(v)
    }

    /// Paths of every file, sorted.
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = lock(&self.files).keys().cloned().collect();
        v.sort();
        v
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

fn too_large() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "offset beyond what memory can address",
    )
}

#[derive(Debug)]
struct MemFile {
    data: Data,
    write: bool,
}

impl MemFile {
    fn check_write(&self) -> io::Result<()> {
        if self.write {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::EBADF))
        }
    }
}

impl SegmentFile for MemFile {
    fn read_cached_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.read_at(buf, offset)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let data = lock(&self.data);
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        let Some(rest) = data.get(start..) else {
            return Ok(0);
        };
        let n = buf.len().min(rest.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.check_write()?;
        let mut data = lock(&self.data);
        let start = usize::try_from(offset).map_err(|_| too_large())?;
        let end = start.checked_add(buf.len()).ok_or_else(too_large)?;
        if data.len() < end {
            data.resize(end, 0);
        }
        data[start..end].copy_from_slice(buf);
        Ok(buf.len())
    }
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check_write()?;
        let len = usize::try_from(len).map_err(|_| too_large())?;
        lock(&self.data).resize(len, 0);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(lock(&self.data).len() as u64)
    }
    // `allocate` keeps the default: filler bytes written through `write_at`.
}

impl Fs for MemFs {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let files = lock(&self.files);
        let mut names: Vec<String> = files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        let mut files = lock(&self.files);
        if files.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: file exists", path.display()),
            ));
        }
        let data: Data = Arc::default();
        files.insert(path.to_path_buf(), data.clone());
        Ok(Arc::new(MemFile { data, write: true }))
    }
    fn open(&self, path: &Path, write: bool) -> io::Result<Arc<dyn SegmentFile>> {
        let data = lock(&self.files)
            .get(path)
            .cloned()
            .ok_or_else(|| not_found(path))?;
        Ok(Arc::new(MemFile { data, write }))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        lock(&self.files)
            .remove(path)
            .map(drop)
            .ok_or_else(|| not_found(path))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut files = lock(&self.files);
        let data = files.remove(from).ok_or_else(|| not_found(from))?;
        files.insert(to.to_path_buf(), data);
        Ok(())
    }
    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_behave_like_posix_files() -> io::Result<()> {
        let fs = MemFs::new();
        let dir = Path::new("/spool");
        let f = fs.create(&dir.join("a"))?;
        assert_eq!(
            fs.create(&dir.join("a")).err().map(|e| e.kind()),
            Some(io::ErrorKind::AlreadyExists)
        );
        assert_eq!(f.write_at(b"xyz", 2)?, 3);
        assert_eq!(fs.contents(&dir.join("a")), Some(b"\0\0xyz".to_vec()));
        let mut buf = [0u8; 8];
        assert_eq!(f.read_at(&mut buf, 3)?, 2);
        assert_eq!(&buf[..2], b"yz");
        assert_eq!(f.read_at(&mut buf, u64::MAX)?, 0);
        f.set_len(1)?;
        assert_eq!(f.len()?, 1);
        f.allocate(100)?;
        assert_eq!(f.len()?, 100);

        fs.insert(dir.join("sub/b"), vec![1]);
        assert_eq!(fs.list_dir(dir)?, vec!["a".to_owned()]);
        fs.rename(&dir.join("a"), &dir.join("c"))?;
        assert_eq!(fs.list_dir(dir)?, vec!["c".to_owned()]);
        // A handle outlives the name, like an unlinked inode.
        fs.remove(&dir.join("c"))?;
        assert_eq!(f.len()?, 100);
        assert_eq!(
            fs.open(&dir.join("c"), false).err().map(|e| e.kind()),
            Some(io::ErrorKind::NotFound)
        );
        let ro = fs.open(&dir.join("sub/b"), false)?;
        assert!(ro.write_at(b"x", 0).is_err());
        Ok(())
    }
}
