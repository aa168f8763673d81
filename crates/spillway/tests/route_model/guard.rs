//! Each incarnation reaches the shared simulated disk through its own
//! guard. Once the incarnation's `serve` has returned, its spool is closed
//! and must never change the directory again (a reloaded route owns it by
//! then): every create, write, truncate, remove, rename or fsync through
//! the guard afterwards is recorded, with the path.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use spillway_spool::fs::{Fs, SegmentFile};
use spillway_spool::sim::SimFs;

use super::capture::tick;

#[derive(Debug)]
pub struct GuardFs {
    inner: Arc<SimFs>,
    state: Arc<State>,
}

#[derive(Debug, Default)]
struct State {
    closed: AtomicBool,
    /// (clock, what) of every change after the close.
    after_close: Mutex<Vec<(u64, String)>>,
}

impl State {
    fn touch(&self, what: impl FnOnce() -> String) {
        if self.closed.load(Ordering::SeqCst) {
            self.after_close
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((tick(), what()));
        }
    }
}

impl GuardFs {
    pub fn new(inner: Arc<SimFs>) -> Arc<GuardFs> {
        Arc::new(GuardFs {
            inner,
            state: Arc::default(),
        })
    }

    /// The incarnation's `serve` returned: its spool is closed.
    pub fn close(&self) {
        self.state.closed.store(true, Ordering::SeqCst);
    }

    pub fn after_close(&self) -> Vec<(u64, String)> {
        self.state
            .after_close
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[derive(Debug)]
struct GuardFile {
    inner: Arc<dyn SegmentFile>,
    path: String,
    state: Arc<State>,
}

impl SegmentFile for GuardFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.state
            .touch(|| format!("write {} bytes to {} at {offset}", buf.len(), self.path));
        self.inner.write_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.state.touch(|| format!("fdatasync {}", self.path));
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.state
            .touch(|| format!("truncate {} to {len}", self.path));
        self.inner.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
}

fn name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

impl GuardFs {
    fn wrap(&self, f: Arc<dyn SegmentFile>, path: &Path) -> Arc<dyn SegmentFile> {
        Arc::new(GuardFile {
            inner: f,
            path: name(path),
            state: Arc::clone(&self.state),
        })
    }
}

impl Fs for GuardFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(dir)
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        self.state.touch(|| format!("create {}", name(path)));
        let f = self.inner.create(path)?;
        Ok(self.wrap(f, path))
    }
    fn open(&self, path: &Path, write: bool) -> io::Result<Arc<dyn SegmentFile>> {
        if write {
            self.state
                .touch(|| format!("open {} for writing", name(path)));
        }
        let f = self.inner.open(path, write)?;
        Ok(self.wrap(f, path))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.state.touch(|| format!("remove {}", name(path)));
        self.inner.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.state
            .touch(|| format!("rename {} to {}", name(from), name(to)));
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.state
            .touch(|| format!("fsync the directory {}", name(dir)));
        self.inner.sync_dir(dir)
    }
}
