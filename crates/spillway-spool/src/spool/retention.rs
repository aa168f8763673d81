//! Retention: taking acknowledged segments out of the log, dropping the
//! oldest at the disk bound (`when_full = drop-oldest`), and unlinking
//! their files.
//!
//! A segment leaves the log in two steps. Under the main lock it is taken
//! out of the state (`doom_segments_while`): reads and the space account
//! no longer see it. Its file is unlinked later, by whoever doomed it,
//! without the main lock (`finish_deletions`): an unlink and the directory
//! fsync after it can take long on a busy disk, and appenders and readers
//! do not wait for them. A crash in between leaves the files, which the
//! next open deletes (the cursor says they are acknowledged) or delivers
//! again (the cursor was older): duplicates, never loss.

use super::*;

impl Inner {
    /// Takes segments out of the log from the front while `pred(core, 0)`
    /// holds; their files go to `core.doomed`. Stops at a segment whose
    /// roll is not finished (its file still has the spare's name).
    pub(super) fn doom_segments_while(
        &self,
        core: &mut Core,
        mut pred: impl FnMut(&Core, usize) -> bool,
    ) -> usize {
        let mut removed = 0;
        while let Some(front) = core.segs.front() {
            // A roll's two segments stay until it is finished (the new
            // one may not have its name yet; the old one is what a spare
            // must follow at recovery).
            if core.in_roll(front.first_seq) || !pred(core, 0) {
                break;
            }
            let Some(seg) = core.segs.pop_front() else {
                break;
            };
            if core.segs.is_empty() {
                core.active = false;
            }
            core.disk_bytes -= seg.len;
            core.doomed.push((seg.first_seq, seg.path));
            removed += 1;
        }
        if removed > 0 {
            if core.segs.is_empty() {
                core.disk_end = core.next_seq;
            }
            core.read_hint = None;
            core.read_tail = None;
        }
        removed
    }

    /// Unlinks the doomed files, fsyncs the directory, persists the cursor.
    /// Without the main lock.
    pub(super) fn finish_deletions(&self) -> Result<(), SpoolError> {
        let removed = {
            let dir = lock(&self.dir_io);
            self.unlink_doomed(&dir)?
        };
        if removed > 0 {
            self.sync_dir()?;
            let c = lock(&self.core).cursor();
            self.persist_cursor_unlocked(c)?;
        }
        Ok(())
    }

    /// Unlinks the doomed files (holding `dir_io`, so no roll gives a new
    /// segment the name of one of them meanwhile). A name that belongs to
    /// a live segment again (an empty segment was dropped, and the next
    /// one starts at the same seq) is left alone. A failed unlink stays
    /// doomed, to be retried by the next call. A closed spool unlinks
    /// nothing (another may own the directory by now).
    pub(super) fn unlink_doomed(&self, _dir: &MutexGuard<'_, ()>) -> Result<usize, SpoolError> {
        let doomed = std::mem::take(&mut lock(&self.core).doomed);
        let mut removed = 0;
        let mut failed = Vec::new();
        let mut err = None;
        for (seq, path) in doomed {
            {
                let core = lock(&self.core);
                if core.closed {
                    break;
                }
                if core
                    .segs
                    .binary_search_by_key(&seq, |s| s.first_seq)
                    .is_ok()
                {
                    continue;
                }
            }
            match self.fs.remove(&path) {
                Ok(()) => {
                    self.st.segments_deleted.fetch_add(1, Ordering::Relaxed);
                    removed += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    err.get_or_insert_with(|| SpoolError::io("remove", &path, e));
                    failed.push((seq, path));
                }
            }
        }
        if !failed.is_empty() {
            lock(&self.core).doomed.extend(failed);
        }
        match err {
            Some(e) => Err(e),
            None => Ok(removed),
        }
    }

    /// Drops the oldest segment (and the memory tier, which is older still)
    /// for `WhenFull::DropOldest`. Returns the messages dropped, or `None`
    /// when there is nothing to drop (or the oldest segment is the one a
    /// roll has not finished: finish it first). The file is doomed:
    /// `finish_deletions` frees its space.
    pub(super) fn drop_oldest(&self, core: &mut Core) -> Option<u64> {
        let front = core.segs.front()?;
        if core.in_roll(front.first_seq) {
            return None;
        }
        let end = core.segs.get(1).map_or(core.disk_end, |s| s.first_seq);
        let start = core.floor.max(front.first_seq);
        let msgs = end.saturating_sub(start) + core.mem.len() as u64;
        let bytes = front.len.saturating_sub(SEGMENT_HEADER_LEN) + core.mem.bytes();
        core.mem.clear();
        core.floor = core.floor.max(end);
        let mut taken = false;
        self.doom_segments_while(core, |_, _| !std::mem::replace(&mut taken, true));
        self.st.add_dropped_oldest(msgs, bytes);
        Some(msgs)
    }
}
