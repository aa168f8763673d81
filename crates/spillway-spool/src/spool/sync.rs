//! Durability: fsync with group commit, the interval sync, poisoning
//! after a failed fsync, and persisting the cursor.

use super::*;

impl Inner {
    /// Marks the spool unusable for writing. Must not be called with the
    /// sync lock held.
    pub(super) fn poison(&self, cause: String) -> SpoolError {
        self.poisoned.store(true, Ordering::Release);
        let mut s = lock(&self.sync);
        if s.poison.is_none() {
            s.poison = Some(cause.clone());
        }
        drop(s);
        self.sync_cv.notify_all();
        SpoolError::Poisoned { cause }
    }

    /// fdatasync with latency accounting; a failure poisons the spool.
    pub(super) fn timed_sync(&self, f: &dyn SegmentFile, path: &Path) -> Result<(), SpoolError> {
        let t = Instant::now();
        let r = f.sync_data();
        self.st.record_fsync(t.elapsed());
        r.map_err(|e| self.poison(format!("fsync {}: {e}", path.display())))
    }

    pub(super) fn sync_dir(&self) -> Result<(), SpoolError> {
        if !self.fsync_enabled() {
            return Ok(());
        }
        let dir = &self.cfg.dir;
        self.fs
            .sync_dir(dir)
            .map_err(|e| self.poison(format!("fsync directory {}: {e}", dir.display())))
    }

    /// The periodic persist: the temp file is written and fsynced without
    /// the main lock, so appends and reads never wait for that fsync (under
    /// I/O load one can take hundreds of milliseconds, long enough for a
    /// producer's socket buffer to fill). Only the rename happens under the
    /// lock, and only if no newer cursor was persisted meanwhile by a
    /// locked path (segment deletion, `sync`, `close`), so the file never
    /// goes backwards. The directory fsync follows, again without the lock.
    pub(super) fn persist_cursor_unlocked(&self, c: Cursor) -> Result<(), SpoolError> {
        // One periodic persist at a time; a concurrent tick just skips.
        let _one = match self.cursor_io.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                // The one in flight may be older than `c`: the next tick
                // catches up.
                lock(&self.core).owe_cursor(c);
                return Ok(());
            }
        };
        // `close` sets `closed` while holding `cursor_io`: seen open here, the
        // spool stays open until this persist is done. Once closed, the
        // directory may belong to a newly opened spool: write nothing.
        if lock(&self.core).closed {
            return Ok(());
        }
        let durable = self.fsync_enabled();
        let dir = &self.cfg.dir;
        let Some(tmp) = write_cursor_tmp(&*self.fs, dir, CURSOR_BG_TMP, c, durable)? else {
            self.cursor_no_space(&mut lock(&self.core), c);
            return Ok(());
        };
        {
            let mut core = lock(&self.core);
            let stale =
                core.persisted.ack_floor > c.ack_floor || core.persisted.next_seq > c.next_seq;
            if core.closed || stale {
                drop(core);
                let _ = self.fs.remove(&tmp);
                return Ok(());
            }
            match install_cursor(&*self.fs, dir, &tmp)? {
                CursorWrite::Written => core.cursor_persisted(c),
                CursorWrite::NoSpace => {
                    self.cursor_no_space(&mut core, c);
                    return Ok(());
                }
            }
        }
        if durable {
            sync_cursor_dir(&*self.fs, dir)?;
        }
        Ok(())
    }

    /// `durable` forces the fsyncs even under `Durability::Never` (for
    /// `sync` and `close`, which promise durability whatever the policy).
    pub(super) fn persist_cursor_with(
        &self,
        core: &mut Core,
        durable: bool,
    ) -> Result<(), SpoolError> {
        let c = core.cursor();
        match write_cursor(&*self.fs, &self.cfg.dir, c, durable)? {
            CursorWrite::Written => core.cursor_persisted(c),
            CursorWrite::NoSpace => self.cursor_no_space(core, c),
        }
        Ok(())
    }

    /// A cursor persist met a full disk. Not an error: the cursor file keeps
    /// an older ack floor, which after a crash only redelivers (recovery
    /// starts at the first segment that still exists when the floor is
    /// below it), while failing would stop the route. Counted for the
    /// owner to log and export; `tick` retries.
    pub(super) fn cursor_no_space(&self, core: &mut Core, c: Cursor) {
        self.st
            .cursor_write_failures
            .fetch_add(1, Ordering::Relaxed);
        core.owe_cursor(c);
    }

    /// Group commit: returns once `lsn` is durable. The first waiter to find
    /// no fsync in flight becomes the leader: it fsyncs a shared handle of
    /// the active segment *without* the main lock (so appends continue), then
    /// wakes everyone its fsync covered; the rest wait for the next round.
    pub(super) fn wait_durable(&self, lsn: u64) -> Result<(), SpoolError> {
        let mut s = lock(&self.sync);
        loop {
            if s.durable_lsn >= lsn {
                return Ok(());
            }
            if let Some(cause) = &s.poison {
                return Err(SpoolError::Poisoned {
                    cause: cause.clone(),
                });
            }
            if s.syncing {
                s = self.sync_cv.wait(s).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            s.syncing = true;
            drop(s);
            let (file, path, target) = {
                let core = lock(&self.core);
                let active = if core.active { core.segs.back() } else { None };
                (
                    active.and_then(|seg| seg.file.clone()),
                    active.map(|seg| seg.path.clone()),
                    core.written_lsn,
                )
            };
            // A roll not finished yet: the segment before it is sealed and
            // the new one named first (everything before `target` is in
            // those two segments, or in segments sealed before).
            let rolled = self.finish_roll().map_err(|e| e.to_string());
            let res = match (rolled, file, path) {
                (Err(e), _, _) => Err(e),
                (Ok(()), Some(f), Some(p)) => {
                    let t = Instant::now();
                    let r = f.sync_data();
                    self.st.record_fsync(t.elapsed());
                    r.map_err(|e| format!("fsync {}: {e}", p.display()))
                }
                // Everything written before a roll was synced by the roll.
                (Ok(()), _, _) => Ok(()),
            };
            if let Err(cause) = &res {
                self.poisoned.store(true, Ordering::Release);
                let mut st = lock(&self.sync);
                st.syncing = false;
                st.poison.get_or_insert_with(|| cause.clone());
                drop(st);
                self.sync_cv.notify_all();
                return Err(SpoolError::Poisoned {
                    cause: cause.clone(),
                });
            }
            s = lock(&self.sync);
            s.syncing = false;
            if s.poison.is_some() {
                // Another fsync failed meanwhile (a roll's seal): what it
                // covered is not durable, and `target` may include it.
                self.sync_cv.notify_all();
                continue;
            }
            s.durable_lsn = s.durable_lsn.max(target);
            s.last_sync = Instant::now();
            self.sync_cv.notify_all();
        }
    }

    pub(super) fn maybe_interval_sync(&self, every: Duration) -> Result<(), SpoolError> {
        let target = self.written.load(Ordering::Acquire);
        {
            let s = lock(&self.sync);
            if s.durable_lsn >= target || s.syncing || s.last_sync.elapsed() < every {
                return Ok(());
            }
        }
        self.wait_durable(target)
    }
}
