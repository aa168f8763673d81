//! A simulated disk for tests, here and in the crates above: real files
//! plus fault injection (short writes, `ENOSPC` at a byte budget, failing
//! fsyncs, a cursor fsync that hangs) and a simulated power cut that loses
//! what was never synced. Not for production use: it only wraps [`StdFs`]
//! with bookkeeping.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::fs::{Fs, SegmentFile, StdFs};

#[derive(Debug, Default)]
pub struct Faults {
    /// Every write transfers at most a third of its buffer.
    pub short_writes: AtomicBool,
    /// Bytes the "disk" can still grow by; negative = unlimited.
    pub space_left: AtomicI64,
    /// fdatasync returns EIO.
    pub fail_fsync: AtomicBool,
    /// Space freed by removing or truncating a file is not given back to
    /// `space_left`: another writer on the same disk takes it at once.
    pub freed_space_taken: AtomicBool,
    /// Writes to cursor files (`cursor*`) fail with ENOSPC, whatever
    /// `space_left` says: a disk that fills up exactly when the cursor is
    /// persisted.
    pub cursor_no_space: AtomicBool,
    pub fsyncs: AtomicU64,
    /// While true, fdatasync of cursor files blocks until it is set back
    /// to false (a disk that takes its time); `cursor_fsyncs_held` counts
    /// the calls waiting.
    pub hold_cursor_fsync: (Mutex<bool>, Condvar),
    pub cursor_fsyncs_held: AtomicU64,
    /// `rename` fails with EIO (a roll cannot name its new segment).
    pub fail_rename: AtomicBool,
    /// Milliseconds every fsync (of a file or a directory), create and
    /// remove sleeps before it runs: a disk that takes its time. 0 = none.
    pub slow_ms: AtomicU64,
    /// Milliseconds every read of a segment file sleeps before it runs (a
    /// read that misses the page cache on a busy disk). 0 = none.
    pub slow_read_ms: AtomicU64,
    /// Progress counters a test bumps (appends and reads done); each slow
    /// operation records how far they moved while it slept.
    pub appends_done: AtomicU64,
    pub reads_done: AtomicU64,
    /// The slow operations so far (see `slow_ms`).
    pub slow_ops: Mutex<Vec<SlowOp>>,
}

/// What kind of operation a [`SlowOp`] was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowKind {
    /// fdatasync of a segment file (`*.seg`, or the spare).
    SegmentSync,
    /// fdatasync of any other file (cursor, temp files).
    OtherSync,
    DirSync,
    Create,
    Remove,
    /// A read of a segment file (see `slow_read_ms`).
    Read,
}

/// One slow operation, and the progress the test's counters made while
/// it slept (from a quarter into the sleep on).
#[derive(Debug, Clone)]
pub struct SlowOp {
    pub kind: SlowKind,
    pub name: String,
    pub appends_during: u64,
    pub reads_during: u64,
}

impl Faults {
    /// Whether freed space returns to `space_left`: only under a budget,
    /// and not when someone else takes it.
    fn gives_back_space(&self) -> bool {
        self.space_left.load(Ordering::SeqCst) >= 0
            && !self.freed_space_taken.load(Ordering::SeqCst)
    }

    /// Sleeps `slow_ms` (`slow_read_ms` for a read), if set, recording
    /// the progress made meanwhile.
    fn slow(&self, kind: SlowKind, path: &Path) {
        let ms = match kind {
            SlowKind::Read => self.slow_read_ms.load(Ordering::SeqCst),
            _ => self.slow_ms.load(Ordering::SeqCst),
        };
        if ms == 0 {
            return;
        }
        // Progress is counted from a quarter into the sleep: what a
        // test's counters catch up with late (work finished just before
        // the operation began) is not counted as made during it.
        std::thread::sleep(std::time::Duration::from_millis(ms / 4));
        let a = self.appends_done.load(Ordering::SeqCst);
        let r = self.reads_done.load(Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(ms - ms / 4));
        let op = SlowOp {
            kind,
            name: path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            appends_during: self.appends_done.load(Ordering::SeqCst) - a,
            reads_during: self.reads_done.load(Ordering::SeqCst) - r,
        };
        self.slow_ops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(op);
    }

    pub fn set_hold_cursor_fsync(&self, on: bool) {
        let (lock, cv) = &self.hold_cursor_fsync;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = on;
        cv.notify_all();
    }
}

#[derive(Debug, Default)]
struct Meta {
    synced_len: u64,
}

pub struct SimFs {
    pub faults: Arc<Faults>,
    files: Mutex<HashMap<PathBuf, Arc<Mutex<Meta>>>>,
}

impl fmt::Debug for SimFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SimFs")
    }
}

#[derive(Debug)]
struct SimFile {
    inner: Arc<dyn SegmentFile>,
    /// The name it was opened or created with (a rename is not followed:
    /// only used to label slow operations).
    path: PathBuf,
    is_cursor: bool,
    meta: Arc<Mutex<Meta>>,
    faults: Arc<Faults>,
}

fn is_cursor(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("cursor"))
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

impl SegmentFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if !self.is_cursor {
            self.faults.slow(SlowKind::Read, &self.path);
        }
        self.inner.read_at(buf, offset)
    }
    fn read_cached_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        // A slow disk is one whose reads miss the cache.
        if self.faults.slow_read_ms.load(Ordering::SeqCst) > 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.inner.read_cached_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        if self.is_cursor && self.faults.cursor_no_space.load(Ordering::SeqCst) {
            return Err(enospc());
        }
        let mut n = buf.len();
        if self.faults.short_writes.load(Ordering::SeqCst) && n > 1 {
            n = (n / 3).max(1);
        }
        let len = self.inner.len()?;
        let growth = (offset + n as u64).saturating_sub(len) as i64;
        let left = self.faults.space_left.load(Ordering::SeqCst);
        if left >= 0 && growth > 0 {
            if left == 0 {
                return Err(enospc());
            }
            if growth > left {
                n -= (growth - left) as usize;
            }
            self.faults
                .space_left
                .fetch_sub(growth.min(left), Ordering::SeqCst);
        }
        self.inner.write_at(&buf[..n], offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        let seg = self
            .path
            .extension()
            .is_some_and(|e| e == "seg" || e == "spare");
        let kind = if seg {
            SlowKind::SegmentSync
        } else {
            SlowKind::OtherSync
        };
        self.faults.slow(kind, &self.path);
        self.faults.fsyncs.fetch_add(1, Ordering::SeqCst);
        if self.is_cursor {
            let (lock, cv) = &self.faults.hold_cursor_fsync;
            let mut held = lock.lock().unwrap_or_else(|e| e.into_inner());
            if *held {
                self.faults
                    .cursor_fsyncs_held
                    .fetch_add(1, Ordering::SeqCst);
                while *held {
                    held = cv.wait(held).unwrap_or_else(|e| e.into_inner());
                }
                self.faults
                    .cursor_fsyncs_held
                    .fetch_sub(1, Ordering::SeqCst);
            }
        }
        if self.faults.fail_fsync.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.inner.sync_data()?;
        let len = self.inner.len()?;
        self.meta
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .synced_len = len;
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let old = self.inner.len()?;
        self.inner.set_len(len)?;
        if len < old && self.faults.gives_back_space() {
            self.faults
                .space_left
                .fetch_add((old - len) as i64, Ordering::SeqCst);
        }
        let mut m = self.meta.lock().unwrap_or_else(|e| e.into_inner());
        m.synced_len = m.synced_len.min(len);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    /// Takes the growth from `space_left` like writes do: past the budget
    /// the file grows by what is left, then ENOSPC.
    fn allocate(&self, len: u64) -> io::Result<()> {
        let cur = self.inner.len()?;
        if cur >= len {
            return Ok(());
        }
        let want = (len - cur) as i64;
        let left = self.faults.space_left.load(Ordering::SeqCst);
        if left >= 0 && want > left {
            self.faults.space_left.fetch_sub(left, Ordering::SeqCst);
            self.inner.allocate(cur + left as u64)?;
            return Err(enospc());
        }
        if left >= 0 {
            self.faults.space_left.fetch_sub(want, Ordering::SeqCst);
        }
        self.inner.allocate(len)
    }
}

impl SimFs {
    pub fn new() -> Arc<SimFs> {
        let faults = Faults::default();
        faults.space_left.store(-1, Ordering::SeqCst);
        Arc::new(SimFs {
            faults: Arc::new(faults),
            files: Mutex::new(HashMap::new()),
        })
    }

    fn meta(&self, path: &Path, synced: u64) -> Arc<Mutex<Meta>> {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(path.to_path_buf())
            .or_insert_with(|| Arc::new(Mutex::new(Meta { synced_len: synced })))
            .clone()
    }

    /// Power cut: every file loses an arbitrary part of what was written
    /// after its last fdatasync (`keep(unsynced) -> bytes kept`). The spool
    /// handle must already be dropped.
    pub fn crash(&self, mut keep: impl FnMut(u64) -> u64) {
        let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        for (path, meta) in files.iter() {
            let Ok(md) = std::fs::metadata(path) else {
                continue;
            };
            let mut m = meta.lock().unwrap_or_else(|e| e.into_inner());
            if md.len() > m.synced_len {
                let kept = keep(md.len() - m.synced_len).min(md.len() - m.synced_len);
                if let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) {
                    let _ = f.set_len(m.synced_len + kept);
                }
            }
            m.synced_len = std::fs::metadata(path).map_or(m.synced_len, |md| md.len());
        }
    }
}

impl Fs for SimFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        StdFs.create_dir_all(dir)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        StdFs.list_dir(dir)
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        self.faults.slow(SlowKind::Create, path);
        if self.faults.space_left.load(Ordering::SeqCst) == 0 {
            return Err(enospc());
        }
        let inner = StdFs.create(path)?;
        let meta = Arc::new(Mutex::new(Meta::default()));
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.to_path_buf(), meta.clone());
        Ok(Arc::new(SimFile {
            inner,
            path: path.to_path_buf(),
            is_cursor: is_cursor(path),
            meta,
            faults: self.faults.clone(),
        }))
    }
    fn open(&self, path: &Path, write: bool) -> io::Result<Arc<dyn SegmentFile>> {
        let inner = StdFs.open(path, write)?;
        let len = inner.len()?;
        let meta = self.meta(path, len);
        Ok(Arc::new(SimFile {
            inner,
            path: path.to_path_buf(),
            is_cursor: is_cursor(path),
            meta,
            faults: self.faults.clone(),
        }))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.faults.slow(SlowKind::Remove, path);
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        StdFs.remove(path)?;
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(path);
        if self.faults.gives_back_space() {
            self.faults
                .space_left
                .fetch_add(len as i64, Ordering::SeqCst);
        }
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        if self.faults.fail_rename.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        StdFs.rename(from, to)?;
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = files.remove(from) {
            files.insert(to.to_path_buf(), m);
        }
        Ok(())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.faults.slow(SlowKind::DirSync, dir);
        if self.faults.fail_fsync.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        StdFs.sync_dir(dir)
    }
}
