//! Retention: deleting acknowledged segments, and dropping the oldest at
//! the disk bound (`when_full = drop-oldest`).

use super::*;

impl Inner {
    /// Removes segments from the front while `pred(core, index)` holds,
    /// then fsyncs the directory and persists the cursor.
    pub(super) fn remove_segments_while(
        &self,
        core: &mut Core,
        pred: impl FnMut(&Core, usize) -> bool,
    ) -> Result<usize, SpoolError> {
        let removed = self.unlink_segments_while(core, pred)?;
        if removed > 0 {
            self.sync_dir()?;
            self.persist_cursor(core)?;
        }
        Ok(removed)
    }

    /// The first half of [`Inner::remove_segments_while`]: unlinks the
    /// segments and updates the state, without the directory fsync and the
    /// cursor persist (the caller does those, possibly after releasing the
    /// lock).
    pub(super) fn unlink_segments_while(
        &self,
        core: &mut Core,
        mut pred: impl FnMut(&Core, usize) -> bool,
    ) -> Result<usize, SpoolError> {
        let mut removed = 0;
        while !core.segs.is_empty() && pred(core, 0) {
            let Some(seg) = core.segs.pop_front() else {
                break;
            };
            if core.segs.is_empty() {
                core.active = false;
            }
            core.disk_bytes -= seg.len;
            match self.fs.remove(&seg.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    core.segs.push_front(seg);
                    core.disk_bytes += core.segs[0].len;
                    return Err(SpoolError::io("remove", core.segs[0].path.clone(), e));
                }
            }
            self.st.segments_deleted.fetch_add(1, Ordering::Relaxed);
            removed += 1;
        }
        if removed > 0 {
            if core.segs.is_empty() {
                core.disk_end = core.next_seq;
            }
            core.read_hint = None;
        }
        Ok(removed)
    }

    /// Drops the oldest segment (and the memory tier, which is older still)
    /// for `WhenFull::DropOldest`. Returns the messages dropped, or `None`
    /// when there is nothing to drop.
    pub(super) fn drop_oldest(&self, core: &mut Core) -> Result<Option<u64>, SpoolError> {
        let Some(front) = core.segs.front() else {
            return Ok(None);
        };
        let end = core.segs.get(1).map_or(core.disk_end, |s| s.first_seq);
        let start = core.floor.max(front.first_seq);
        let msgs = end.saturating_sub(start) + core.mem.len() as u64;
        let bytes = front.len.saturating_sub(SEGMENT_HEADER_LEN) + core.mem_bytes;
        core.mem.clear();
        core.mem_bytes = 0;
        core.mem_encoded = 0;
        core.floor = core.floor.max(end);
        let mut taken = false;
        self.remove_segments_while(core, |_, _| !std::mem::replace(&mut taken, true))?;
        self.st.add_dropped_oldest(msgs, bytes);
        Ok(Some(msgs))
    }
}
