//! One direction of a proxied connection through a user-space buffer that
//! overflows to an unlinked temporary file, so a fast sender keeps flowing
//! at full speed while the receiver is slow — like nginx buffering an
//! upstream response to a temp file.
//!
//! Order is kept by layering: the memory buffer holds the oldest bytes, the
//! spill file the next ones, and once anything is in the file every new
//! byte goes to the file too, until it drains. The file is created with
//! `O_TMPFILE` (or created and unlinked at once), so nothing is left behind
//! after a crash. Its space is bounded per connection and per process; at
//! either bound, or on any file error (ENOSPC, EIO), the direction falls
//! back to backpressure. Nothing read from the socket is ever dropped: a
//! chunk that could not be written to the file is kept in memory and sent
//! after the file's contents.
//!
//! File I/O is synchronous pread/pwrite on the page cache, in the task, as
//! nginx does; the file is never fsynced (it is scratch space, not a store).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use spillway_net::timeout::StallTimer;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::warn;

use super::direction::{writable_or_stall, DirError, Direction, Progress};

/// Process-wide bound on spill-file bytes.
#[derive(Debug)]
pub struct SpillBudget {
    max: u64,
    used: AtomicU64,
}

impl SpillBudget {
    pub fn new(max: u64) -> Self {
        SpillBudget {
            max,
            used: AtomicU64::new(0),
        }
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> u64 {
        self.max
    }

    /// Reserves up to `want` bytes; returns how many were granted.
    fn reserve(&self, want: u64) -> u64 {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            let grant = want.min(self.max.saturating_sub(cur));
            if grant == 0 {
                return 0;
            }
            match self.used.compare_exchange_weak(
                cur,
                cur + grant,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return grant,
                Err(actual) => cur = actual,
            }
        }
    }

    fn release(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Where and how much a direction may spill.
pub(crate) struct SpillLimits<'a> {
    pub dir: &'a Path,
    pub max_per_connection: u64,
    pub budget: &'a SpillBudget,
}

/// The on-disk layer: bytes `[read_off, write_off)` of `file` are pending.
/// `write_off` bytes are reserved against the budget until the file drains
/// and is truncated.
struct SpillFile<'a> {
    file: File,
    read_off: u64,
    write_off: u64,
    budget: &'a SpillBudget,
}

impl SpillFile<'_> {
    fn pending(&self) -> u64 {
        self.write_off - self.read_off
    }

    /// Everything read back: give the space back.
    fn reset(&mut self) {
        if let Err(e) = self.file.set_len(0) {
            warn!(error = %e, "cannot truncate spill file");
        }
        self.budget.release(self.write_off);
        self.read_off = 0;
        self.write_off = 0;
    }
}

impl Drop for SpillFile<'_> {
    fn drop(&mut self) {
        self.budget.release(self.write_off);
    }
}

pub(crate) async fn run(
    src: &TcpStream,
    dst: &TcpStream,
    buffer: usize,
    limits: Option<SpillLimits<'_>>,
    progress: &Progress,
    dir: Direction,
    mut stall: StallTimer,
) -> Result<(), DirError> {
    src.readable().await.map_err(DirError::Read)?;
    let mut mem = vec![0u8; buffer];
    let (mut head, mut tail) = (0usize, 0usize);
    // Data that was read but could not be spilled: newer than the file, older
    // than anything still in the socket.
    let mut stranded: Vec<u8> = Vec::new();
    let mut scratch: Vec<u8> = Vec::new();
    let mut file: Option<SpillFile<'_>> = None;
    let mut spilling_allowed = limits.is_some();
    let mut eof = false;

    loop {
        let mut read_blocked = false;
        let mut write_blocked = false;
        let mut moved = false;
        let file_pending = file.as_ref().map_or(0, SpillFile::pending);
        let behind = file_pending > 0 || !stranded.is_empty();

        // ---- read side
        let mut can_read = false;
        if !eof {
            if !behind && (tail < mem.len() || head > 0) {
                if tail == mem.len() {
                    mem.copy_within(head..tail, 0);
                    tail -= head;
                    head = 0;
                }
                can_read = true;
                match src.try_read(&mut mem[tail..]) {
                    Ok(0) => eof = true,
                    Ok(n) => {
                        tail += n;
                        moved = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => read_blocked = true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(DirError::Read(e)),
                }
            } else if let (Some(lim), true, true) = (&limits, spilling_allowed, stranded.is_empty())
            {
                let used = file.as_ref().map_or(0, |f| f.write_off);
                let room = lim
                    .max_per_connection
                    .saturating_sub(used)
                    .min(buffer as u64);
                let granted = if room > 0 {
                    lim.budget.reserve(room)
                } else {
                    0
                };
                if granted > 0 {
                    can_read = true;
                    if file.is_none() {
                        match tempfile::tempfile_in(lim.dir) {
                            Ok(f) => {
                                file = Some(SpillFile {
                                    file: f,
                                    read_off: 0,
                                    write_off: 0,
                                    budget: lim.budget,
                                })
                            }
                            Err(e) => {
                                warn!(dir = %lim.dir.display(), error = %e,
                                      "cannot create spill file; falling back to backpressure");
                                spilling_allowed = false;
                            }
                        }
                    }
                    let grant = granted as usize;
                    let mut used_grant = 0u64;
                    if let Some(f) = file.as_mut() {
                        scratch.resize(grant, 0);
                        match src.try_read(&mut scratch[..grant]) {
                            Ok(0) => eof = true,
                            Ok(n) => match f.file.write_all_at(&scratch[..n], f.write_off) {
                                Ok(()) => {
                                    moved = true;
                                    f.write_off += n as u64;
                                    used_grant = n as u64;
                                    progress.spilled(n);
                                }
                                Err(e) => {
                                    warn!(error = %e,
                                              "spill file write failed; falling back to backpressure");
                                    spilling_allowed = false;
                                    moved = true;
                                    stranded.extend_from_slice(&scratch[..n]);
                                }
                            },
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => read_blocked = true,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                lim.budget.release(granted);
                                return Err(DirError::Read(e));
                            }
                        }
                    }
                    // The file keeps only what it holds reserved.
                    lim.budget.release(granted - used_grant);
                }
            }
        }

        // ---- write side
        if head == tail {
            head = 0;
            tail = 0;
            if let Some(f) = file.as_mut().filter(|f| f.pending() > 0) {
                let want = (f.pending() as usize).min(mem.len());
                match f.file.read_at(&mut mem[..want], f.read_off) {
                    Ok(0) => {
                        return Err(DirError::Local(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "spill file shorter than written",
                        )))
                    }
                    Ok(n) => {
                        tail = n;
                        moved = true;
                        f.read_off += n as u64;
                        if f.pending() == 0 {
                            f.reset();
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(DirError::Local(e)),
                }
            } else if !stranded.is_empty() {
                let n = stranded.len().min(mem.len());
                mem[..n].copy_from_slice(&stranded[..n]);
                stranded.drain(..n);
                tail = n;
                moved = true;
            }
        }
        if head < tail {
            match dst.try_write(&mem[head..tail]) {
                Ok(n) => {
                    head += n;
                    moved = true;
                    progress.moved(dir, n);
                    stall.progressed();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => write_blocked = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(DirError::Write(e)),
            }
        }
        if write_blocked {
            // The source may keep flowing into the file (the loop goes round
            // on reads alone), so the stall is checked here, not only while
            // waiting.
            let now = Instant::now().into_std();
            stall.blocked(now);
            if stall.expired(now) {
                return Err(DirError::WriteStall(stall.stalled_for(now)));
            }
        }

        let pending =
            tail - head + file.as_ref().map_or(0, SpillFile::pending) as usize + stranded.len();
        if eof && pending == 0 {
            return progress.end(dir, dst);
        }

        // ---- wait only when nothing moved
        let want_read = can_read && read_blocked && !eof;
        let want_write = head < tail && write_blocked;
        if moved || eof && !want_write {
            continue;
        }
        match (want_read, want_write) {
            (true, true) => {
                tokio::select! {
                    r = src.readable() => r.map_err(DirError::Read)?,
                    w = writable_or_stall(dst, &mut stall) => w?,
                }
            }
            (true, false) => src.readable().await.map_err(DirError::Read)?,
            (false, true) => writable_or_stall(dst, &mut stall).await?,
            // Nothing to read into and nothing to write: only possible when the
            // buffer was just refilled or compacted; go round again.
            (false, false) => tokio::task::yield_now().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_grants_at_most_what_is_left() {
        let b = SpillBudget::new(100);
        assert_eq!(b.reserve(60), 60);
        assert_eq!(b.reserve(60), 40);
        assert_eq!(b.reserve(1), 0);
        b.release(50);
        assert_eq!(b.used(), 50);
        assert_eq!(b.reserve(80), 50);
    }
}
