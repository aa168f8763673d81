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
    pub fsyncs: AtomicU64,
    /// While true, fdatasync of cursor files blocks until it is set back
    /// to false (a disk that takes its time); `cursor_fsyncs_held` counts
    /// the calls waiting.
    pub hold_cursor_fsync: (Mutex<bool>, Condvar),
    pub cursor_fsyncs_held: AtomicU64,
}

impl Faults {
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
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
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
        if len < old && self.faults.space_left.load(Ordering::SeqCst) >= 0 {
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
            is_cursor: is_cursor(path),
            meta,
            faults: self.faults.clone(),
        }))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        StdFs.remove(path)?;
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(path);
        if self.faults.space_left.load(Ordering::SeqCst) >= 0 {
            self.faults
                .space_left
                .fetch_add(len as i64, Ordering::SeqCst);
        }
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdFs.rename(from, to)?;
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = files.remove(from) {
            files.insert(to.to_path_buf(), m);
        }
        Ok(())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if self.faults.fail_fsync.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        StdFs.sync_dir(dir)
    }
}
