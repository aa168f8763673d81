//! Appends: admission against the tiers and `max_disk`, the memory tier,
//! segment writes, rolls (seal and create) and flushing the memory tier.

use super::*;

impl Spool {
    /// Checks and encodes a batch (the payload CRCs included) without the
    /// lock, for [`append_batch`](Spool::append_batch): an append that may
    /// be retried (a `when_full = block` wait that timed out) encodes once.
    pub fn encode(&self, msgs: &[&[u8]]) -> Result<Batch, SpoolError> {
        let limit = u64::from(self.inner.cfg.max_message);
        for m in msgs {
            if m.len() as u64 > limit {
                return Err(SpoolError::TooLarge {
                    size: m.len() as u64,
                    limit,
                });
            }
        }
        Ok(Batch {
            enc: encode_batch(msgs.iter().copied()),
            blocked_counted: false,
        })
    }

    /// [`append`](Spool::append) of a batch [`encode`](Spool::encode)d
    /// before. Once accepted it is spent (empty): appending it again
    /// accepts nothing. Refused (full, an error) it can be appended again.
    pub fn append_batch(&self, batch: &mut Batch) -> Result<AppendOutcome, SpoolError> {
        Ok(self.append_encoded(batch, Quota::Applies, false)?.0)
    }

    /// An append that never waits, for a caller that does its waiting
    /// elsewhere (an async writer): not for space (under `when_full =
    /// block` at the bound, or on a full disk, it returns
    /// `SpoolError::Full` at once, counted as blocked once per batch and
    /// not as an error; [`set_space_notify`](Spool::set_space_notify) says
    /// when to try again), and not for the disk: a batch written to the
    /// disk tier comes back with its position, to pass to
    /// [`wait_durable`](Spool::wait_durable) when it must be durable now
    /// (always under `Durability::Always`; under an interval the caller
    /// may leave the fsync to `tick`). `past_quota`: as
    /// [`append_past_quota`](Spool::append_past_quota).
    pub fn try_append_batch(
        &self,
        batch: &mut Batch,
        past_quota: bool,
    ) -> Result<(AppendOutcome, Option<u64>), SpoolError> {
        let quota = if past_quota {
            Quota::Ignored
        } else {
            Quota::Applies
        };
        self.append_encoded(batch, quota, true)
    }

    /// Appends `batch` to the memory tier, if that takes it at once: the
    /// main lock is free, the disk tier holds nothing (not even a drained
    /// segment still to remove), and the batch fits the memory tier's
    /// reserve. Never waits for anything and does no I/O, so an async
    /// caller may call it on its own thread before handing the batch to a
    /// writer thread; `None` leaves the batch as it was, for that.
    pub fn try_append_memory(&self, batch: &mut Batch) -> Option<AppendOutcome> {
        let enc = &mut batch.enc;
        self.inner
            .try_memory(enc.msgs, enc.encoded_payload(), |core, first| {
                core.mem.push(first, now_ms(), std::mem::take(enc));
            })
    }

    /// [`try_append_memory`](Spool::try_append_memory) of messages not
    /// encoded yet: the memory tier copies their bytes alone (length
    /// varints, record headers and checksums are only for the log, and
    /// `close` encodes what it writes out anyway). For a caller with
    /// nothing in flight, before it encodes: encoding then happens only
    /// for the batches the memory tier does not take. `None` also for a
    /// message over `max_message` (which `encode` refuses).
    pub fn try_append_memory_copy(&self, msgs: &[&[u8]]) -> Option<AppendOutcome> {
        let limit = u64::from(self.inner.cfg.max_message);
        let mut encoded = 0u64;
        for m in msgs {
            if m.len() as u64 > limit {
                return None;
            }
            encoded += memtier::encoded_len(m.len());
        }
        self.inner.try_memory(msgs.len(), encoded, |core, first| {
            core.mem.push_copied(first, now_ms(), msgs, encoded);
        })
    }

    /// Returns once everything written up to `lsn` (from
    /// [`try_append_batch`](Spool::try_append_batch)) is durable: one
    /// fdatasync covers every append waiting meanwhile (group commit).
    pub fn wait_durable(&self, lsn: u64) -> Result<(), SpoolError> {
        self.inner.wait_durable(lsn)
    }

    pub(super) fn append_with(
        &self,
        msgs: &[&[u8]],
        quota: Quota,
    ) -> Result<AppendOutcome, SpoolError> {
        self.inner.check_poison()?;
        let mut batch = self.encode(msgs)?;
        Ok(self.append_encoded(&mut batch, quota, false)?.0)
    }

    /// `nowait`: see `try_append_batch`.
    fn append_encoded(
        &self,
        whole: &mut Batch,
        quota: Quota,
        nowait: bool,
    ) -> Result<(AppendOutcome, Option<u64>), SpoolError> {
        let batch = &mut whole.enc;
        let counted = &mut whole.blocked_counted;
        let inner = &*self.inner;
        let cfg = &inner.cfg;
        inner.check_poison()?;
        let msgs = batch.msgs;
        if msgs == 0 {
            let nothing = AppendOutcome {
                first_seq: self.next_seq(),
                accepted: 0,
                dropped_newest: 0,
                dropped_oldest_msgs: 0,
                tier: None,
            };
            return Ok((nothing, None));
        }
        let taken =
            |first, dropped_oldest, tier| AppendOutcome::whole(first, msgs, dropped_oldest, tier);
        let need = batch.buf.len() as u64;
        let deadline = cfg.block_timeout.map(|t| Instant::now() + t);
        let t = inner.live();
        let mut blocked = false;
        let mut dropped_oldest = 0u64;
        // This append rolled (the slow half of the roll is its to finish),
        // or took segments out of the log (their unlinks are its to do).
        let mut rolled = false;
        let mut doomed = false;
        // Work that waits for the disk is done with the main lock released:
        // `unlocked!(expr)` drops the guard, evaluates, takes it back.
        let mut core = lock(&inner.core);
        macro_rules! unlocked {
            ($e:expr) => {{
                drop(core);
                let r = $e;
                core = lock(&inner.core);
                r
            }};
        }
        let (outcome, lsn) = loop {
            if core.closed {
                return Err(SpoolError::Closed);
            }
            inner.check_poison()?;
            // Both tiers count `next_seq` up by the batch: a directory
            // numbered at the end of the sequence space (a crafted cursor
            // or segment) must not make that overflow (a panic in debug,
            // wrapped numbers and a log that recovery cuts in release).
            if core.next_seq.checked_add(batch.msgs as u64).is_none() {
                return Err(SpoolError::SequenceExhausted {
                    next_seq: core.next_seq,
                    msgs: batch.msgs as u64,
                });
            }
            if !disk_pending(&core)
                && mem_takes(&core, batch.msgs, batch.encoded_payload(), t.memory_limit)
            {
                if !core.segs.is_empty() {
                    // Later disk records must continue the log's seqs, so a
                    // drained log is removed before the memory tier resumes
                    // (its files are unlinked after the lock is released).
                    if core.roll.is_some() {
                        unlocked!(inner.finish_roll())?;
                        continue;
                    }
                    inner.doom_segments_while(&mut core, |_, _| true);
                    doomed = true;
                }
                let first = inner.push_mem(&mut core, std::mem::take(batch));
                break (taken(first, dropped_oldest, Tier::Memory), None);
            }
            if quota == Quota::Applies && t.max_disk > 0 && need + SEGMENT_HEADER_LEN > t.max_disk {
                return Err(SpoolError::TooLarge {
                    size: need,
                    limit: t.max_disk - SEGMENT_HEADER_LEN,
                });
            }
            let reason = match inner.write_disk(&mut core, batch, quota)? {
                WriteResult::Written {
                    first,
                    lsn,
                    rolled: r,
                } => {
                    rolled |= r;
                    break (taken(first, dropped_oldest, Tier::Disk), Some(lsn));
                }
                WriteResult::RollBusy => {
                    unlocked!(inner.finish_roll())?;
                    continue;
                }
                WriteResult::NeedSpare => {
                    if unlocked!(inner.ensure_spare())? {
                        continue;
                    }
                    FullReason::NoSpace
                }
                WriteResult::NoRoom(reason) => reason,
            };
            if reason == FullReason::NoSpace {
                inner.st.enospc.fetch_add(1, Ordering::Relaxed);
            }
            // A drained log still occupies its active segment: free it
            // (the unlink, not only the accounting, when the file system
            // is what is full) and try again.
            let drained = core.floor >= core.disk_end && !core.segs.is_empty();
            if drained && (quota == Quota::Ignored || t.when_full == WhenFull::Block) {
                if core.roll.is_some() {
                    unlocked!(inner.finish_roll())?;
                } else {
                    inner.doom_segments_while(&mut core, |_, _| true);
                    unlocked!(inner.finish_deletions())?;
                }
                continue;
            }
            if quota == Quota::Ignored {
                // The memory tier's reserve exists so that shutdown can
                // write what it must. With the memory tier empty, nothing
                // else needs it: a batch already taken from a producer may
                // use that space. (`close` removes the reserve anyway; a
                // reserve being grown right now is left alone.)
                if reason == FullReason::NoSpace && core.mem.is_empty() && core.mem_capacity > 0 {
                    if let Ok(_io) = inner.reserve_io.try_lock() {
                        lock(&inner.reserve_file).take();
                        if reserve::remove(&*inner.fs, &inner.cfg.dir).is_ok() {
                            core.mem_capacity = 0;
                            core.reserve_short = true;
                            core.reserve_retry_at = Instant::now() + Duration::from_secs(3600);
                            continue;
                        }
                    }
                }
                inner.st.full_errors.fetch_add(1, Ordering::Relaxed);
                return Err(SpoolError::Full { reason });
            }
            let refuse = |core: &Core, dropped_oldest: u64| {
                inner
                    .st
                    .add_dropped_newest(msgs as u64, batch.payload_bytes);
                AppendOutcome {
                    first_seq: core.next_seq,
                    accepted: 0,
                    dropped_newest: msgs,
                    dropped_oldest_msgs: dropped_oldest,
                    tier: None,
                }
            };
            match t.when_full {
                WhenFull::DropNewest => break (refuse(&core, dropped_oldest), None),
                WhenFull::DropOldest => {
                    if core.roll.is_some() {
                        // A roll's segments stay until it is finished.
                        unlocked!(inner.finish_roll())?;
                        continue;
                    }
                    match inner.drop_oldest(&mut core) {
                        Some(n) => {
                            dropped_oldest += n;
                            unlocked!(inner.finish_deletions())?;
                        }
                        None => break (refuse(&core, dropped_oldest), None),
                    }
                }
                WhenFull::Block => {
                    if !blocked && !*counted {
                        blocked = true;
                        *counted = true;
                        inner.st.blocked.fetch_add(1, Ordering::Relaxed);
                    }
                    if nowait {
                        return Err(SpoolError::Full { reason });
                    }
                    // ENOSPC is not signalled by anyone: poll for space.
                    let mut wait = match reason {
                        FullReason::NoSpace => Duration::from_millis(50),
                        FullReason::Quota => Duration::from_secs(3600),
                    };
                    if let Some(d) = deadline {
                        let now = Instant::now();
                        if now >= d {
                            inner.st.full_errors.fetch_add(1, Ordering::Relaxed);
                            return Err(SpoolError::Full { reason });
                        }
                        wait = wait.min(d - now);
                    }
                    core.space_waiters += 1;
                    core = inner
                        .space_cv
                        .wait_timeout(core, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    core.space_waiters -= 1;
                }
            }
        };
        drop(core);
        if outcome.accepted > 0 {
            // Spent: appending it again accepts nothing.
            *batch = EncodedBatch::default();
            inner.notify();
        }
        if doomed {
            inner.finish_deletions()?;
        }
        if rolled && !nowait {
            // The next roll's spare, then the slow half of this one, while
            // other appenders write to the new segment (`nowait`: `tick`
            // and the next group commit do both). A failure poisons
            // the spool: `Always` reports it below; otherwise the batch is
            // written and the next append fails.
            let _ = inner.ensure_spare();
            let _ = inner.finish_roll();
        }
        if let Some(lsn) = lsn {
            match t.durability {
                _ if nowait => return Ok((outcome, Some(lsn))),
                Durability::Always => inner.wait_durable(lsn)?,
                Durability::Interval(d) => inner.maybe_interval_sync(d)?,
                Durability::Never => {}
            }
        }
        Ok((outcome, None))
    }
}

impl Inner {
    /// Grows a reserve that open could not allocate in full, now and then
    /// (`reserve_retry`) and only while the disk tier holds nothing pending:
    /// only then does the memory tier take messages, and space the disk
    /// tier is waiting for is not taken from it. The writes run without the
    /// main lock (they can be `memory_limit` bytes).
    pub(super) fn maybe_grow_reserve(&self) -> Result<(), SpoolError> {
        let target = self.live().memory_limit;
        // Someone truncated the reserve: the memory tier may only count on
        // what is still there, and growing it back is due now.
        let held = lock(&self.reserve_file).as_ref().map(|f| f.len());
        if let Some(Ok(len)) = held {
            let mut core = lock(&self.core);
            if len < core.mem_capacity {
                core.mem_capacity = len;
                core.reserve_short = true;
                core.reserve_retry_at = Instant::now();
            }
        }
        {
            let mut core = lock(&self.core);
            let now = Instant::now();
            if core.closed
                || core.mem_capacity >= target
                || now < core.reserve_retry_at
                || disk_pending(&core)
            {
                return Ok(());
            }
            core.reserve_retry_at = now + self.cfg.reserve_retry;
        }
        // `close` holds this while it deletes the reserve: skip, it is done.
        let Ok(_grow) = self.reserve_io.try_lock() else {
            return Ok(());
        };
        if lock(&self.core).closed {
            return Ok(());
        }
        let (got, file) = reserve::ensure(&*self.fs, &self.cfg.dir, target)?;
        *lock(&self.reserve_file) = file;
        let mut core = lock(&self.core);
        core.mem_capacity = got;
        core.reserve_short = got < target;
        Ok(())
    }

    /// The memory tier's part of `try_append_memory*`: `push` puts a
    /// batch of `msgs` messages (`encoded` bytes as `close` would write
    /// them) into it at sequence `first` if it takes them at once.
    fn try_memory(
        &self,
        msgs: usize,
        encoded: u64,
        push: impl FnOnce(&mut Core, u64),
    ) -> Option<AppendOutcome> {
        if self.poisoned.load(Ordering::Acquire) {
            return None;
        }
        let mut core = match self.core.try_lock() {
            Ok(core) => core,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        let fits = !core.closed
            && msgs > 0
            && core.segs.is_empty()
            && core.roll.is_none()
            && core.next_seq.checked_add(msgs as u64).is_some()
            && mem_takes(&core, msgs, encoded, self.live().memory_limit);
        if !fits {
            return None;
        }
        let first = core.next_seq;
        core.next_seq += msgs as u64;
        push(&mut core, first);
        drop(core);
        self.notify();
        Some(AppendOutcome::whole(first, msgs, 0, Tier::Memory))
    }

    pub(super) fn push_mem(&self, core: &mut Core, batch: EncodedBatch) -> u64 {
        let first = core.next_seq;
        core.next_seq += batch.msgs as u64;
        core.mem.push(first, now_ms(), batch);
        first
    }

    /// Seals the active segment in place (at `close`): fsync so that only
    /// the last segment can ever have a torn tail.
    pub(super) fn seal_active(&self, core: &mut Core) -> Result<(), SpoolError> {
        if !core.active {
            return Ok(());
        }
        if let Some(seg) = core.segs.back() {
            if let Some(f) = seg.file.clone() {
                let path = seg.path.clone();
                self.timed_sync(&*f, &path)?;
            }
        }
        let mut s = lock(&self.sync);
        s.durable_lsn = s.durable_lsn.max(core.written_lsn);
        drop(s);
        core.active = false;
        Ok(())
    }

    /// Creates the spare segment file, if there is none, without the main
    /// lock: an empty file that the next roll writes its header to. `false`
    /// on ENOSPC. While a roll is not finished, the spare's name is the new
    /// segment's: nothing is created (the caller finishes the roll first).
    pub(super) fn ensure_spare(&self) -> Result<bool, SpoolError> {
        let _one = lock(&self.spare_io);
        {
            let core = lock(&self.core);
            if core.closed {
                return Err(SpoolError::Closed);
            }
            if core.spare.is_some() {
                return Ok(true);
            }
        }
        let path = self.next_spare_path(&lock(&self.core));
        let file = match self.fs.create(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // A leftover (the pending roll's spare has the other name).
                self.fs
                    .remove(&path)
                    .map_err(|e| SpoolError::io("remove", &path, e))?;
                match self.fs.create(&path) {
                    Ok(f) => f,
                    Err(e) if is_no_space(&e) => return Ok(false),
                    Err(e) => return Err(SpoolError::io("create", path, e)),
                }
            }
            Err(e) if is_no_space(&e) => return Ok(false),
            Err(e) => return Err(SpoolError::io("create", path, e)),
        };
        let mut core = lock(&self.core);
        if core.closed {
            drop(core);
            drop(file);
            let _ = self.fs.remove(&path);
            return Err(SpoolError::Closed);
        }
        core.spare = Some((file, path));
        Ok(true)
    }

    /// The fast half of a roll, under the main lock: the spare becomes the
    /// active segment whose first message will be the next seq (its header
    /// is written; nothing waits for the disk). The previous segment is
    /// sealed and the new one named by `finish_roll`. `Ok(false)` on
    /// ENOSPC (the spare stays, empty).
    fn roll_to_spare(&self, core: &mut Core) -> Result<bool, SpoolError> {
        let Some((file, spare)) = core.spare.take() else {
            return Ok(false);
        };
        let seq = core.next_seq;
        let created_ms = now_ms();
        let header = SegmentHeader {
            first_seq: seq,
            created_ms,
        }
        .encode();
        if let Err((e, _)) = write_all_at(&*file, &header, 0) {
            let _ = file.set_len(0);
            core.spare = Some((file, spare.clone()));
            if is_no_space(&e) {
                return Ok(false);
            }
            return Err(SpoolError::io("write", spare, e));
        }
        let sealed = if core.active {
            core.segs
                .back()
                .and_then(|s| s.file.clone().map(|f| (s.first_seq, f, s.path.clone())))
        } else {
            None
        };
        let path = self.cfg.dir.join(segment_file_name(seq));
        // Nothing to seal before it (the log is empty, or its last segment
        // is sealed): it takes its name at once (a rename, no fsync), so a
        // spare with records always follows a named segment (recovery
        // relies on it). The directory fsync is left for `finish_roll`.
        let named = sealed.is_none();
        if named {
            if let Err(e) = self.fs.rename(&spare, &path) {
                let _ = file.set_len(0);
                core.spare = Some((file, spare));
                return Err(SpoolError::io("rename", path, e));
            }
        }
        core.roll = Some(PendingRoll {
            sealed,
            named,
            sealed_lsn: core.written_lsn,
            first_seq: seq,
            spare,
        });
        core.segs.push_back(Seg {
            first_seq: seq,
            path,
            len: SEGMENT_HEADER_LEN,
            created_ms,
            file: Some(file),
            index: Vec::new(),
        });
        core.active = true;
        core.disk_bytes += SEGMENT_HEADER_LEN;
        core.written_lsn += SEGMENT_HEADER_LEN;
        self.written.store(core.written_lsn, Ordering::Release);
        self.st
            .bytes_written
            .fetch_add(SEGMENT_HEADER_LEN, Ordering::Relaxed);
        Ok(true)
    }

    /// The slow half of a pending roll, without the main lock: fsync the
    /// segment before it (even under `Never`: once per segment is cheap,
    /// and it means only the last named segment can ever have a torn
    /// tail, which is what lets open trust every other segment without
    /// reading it), rename the spare to the new segment's name, fsync the
    /// directory. Appends go on into the new segment meanwhile; what they
    /// write counts as durable only after this.
    pub(super) fn finish_roll(&self) -> Result<(), SpoolError> {
        let dir = lock(&self.dir_io);
        self.finish_roll_locked(&dir)
    }

    pub(super) fn finish_roll_locked(&self, _dir: &MutexGuard<'_, ()>) -> Result<(), SpoolError> {
        let Some(roll) = lock(&self.core).roll.clone() else {
            return Ok(());
        };
        // After a failed fsync nothing is synced again: the kernel may
        // have dropped the pages that failed, and a second fsync would
        // "succeed" without them.
        self.check_poison()?;
        if let Some((_, f, path)) = &roll.sealed {
            self.timed_sync(&**f, path)?;
        }
        {
            let mut s = lock(&self.sync);
            s.durable_lsn = s.durable_lsn.max(roll.sealed_lsn);
        }
        self.sync_cv.notify_all();
        let spare = &roll.spare;
        let named = self.cfg.dir.join(segment_file_name(roll.first_seq));
        if !roll.named {
            if let Err(e) = self.fs.rename(spare, &named) {
                return Err(self.poison(format!(
                    "rename {} to {}: {e}",
                    spare.display(),
                    named.display()
                )));
            }
        }
        self.sync_dir()?;
        lock(&self.core).roll = None;
        Ok(())
    }

    pub(super) fn write_disk(
        &self,
        core: &mut Core,
        batch: &mut EncodedBatch,
        quota: Quota,
    ) -> Result<WriteResult, SpoolError> {
        let need = batch.buf.len() as u64;
        let roll = match (core.active, core.segs.back()) {
            (true, Some(s)) => {
                s.len > SEGMENT_HEADER_LEN && s.len + need > self.live().segment_size
            }
            _ => true,
        };
        let extra = need + if roll { SEGMENT_HEADER_LEN } else { 0 };
        if quota == Quota::Applies
            && self.live().max_disk > 0
            && core.disk_bytes + extra > self.live().max_disk
        {
            return Ok(WriteResult::NoRoom(FullReason::Quota));
        }
        if roll {
            if core.roll.is_some() {
                return Ok(WriteResult::RollBusy);
            }
            if core.spare.is_none() {
                return Ok(WriteResult::NeedSpare);
            }
            if !self.roll_to_spare(core)? {
                return Ok(WriteResult::NoRoom(FullReason::NoSpace));
            }
        }
        let first = core.next_seq;
        let ms = now_ms();
        finalize(batch, first, ms);
        let Some(seg) = core.segs.back_mut() else {
            return Err(SpoolError::Config("no active segment after roll".into()));
        };
        let Some(file) = seg.file.clone() else {
            return Err(SpoolError::Config("active segment has no file".into()));
        };
        if let Err((e, written)) = write_all_at(&*file, &batch.buf, seg.len) {
            if written > 0 || is_no_space(&e) {
                // Take the partial record back so the log stays clean.
                if let Err(te) = file.set_len(seg.len) {
                    return Err(self.poison(format!(
                        "truncate {} after failed write ({e}): {te}",
                        seg.path.display()
                    )));
                }
            }
            if is_no_space(&e) {
                return Ok(WriteResult::NoRoom(FullReason::NoSpace));
            }
            return Err(SpoolError::io("write", seg.path.clone(), e));
        }
        let offset = seg.len;
        if seg
            .index
            .last()
            .is_none_or(|e| offset >= e.offset + INDEX_EVERY)
        {
            seg.index.push(IndexEntry {
                seq: first,
                offset,
                ms,
            });
        }
        seg.len += need;
        core.disk_bytes += need;
        core.written_lsn += need;
        core.next_seq += batch.msgs as u64;
        core.disk_end = core.next_seq;
        self.written.store(core.written_lsn, Ordering::Release);
        self.st.bytes_written.fetch_add(need, Ordering::Relaxed);
        Ok(WriteResult::Written {
            first,
            lsn: core.written_lsn,
            rolled: roll,
        })
    }

    /// Close: writes the memory tier as a complete segment named by its
    /// first seq, via a temp file + rename so a crash cannot leave a torn
    /// segment in the middle of the log.
    pub(super) fn flush_mem(&self, core: &mut Core) -> Result<(), SpoolError> {
        let first = core.mem.first();
        let oldest_ms = core.mem.ms_of(first).unwrap_or_else(now_ms);
        let mut batch = encode_batch(core.mem.payloads());
        finalize(&mut batch, first, oldest_ms);
        let name = segment_file_name(first);
        let path = self.cfg.dir.join(&name);
        let tmp = self.cfg.dir.join(format!("{name}.tmp"));
        let _ = self.fs.remove(&tmp);
        let f = self
            .fs
            .create(&tmp)
            .map_err(|e| SpoolError::io("create", &tmp, e))?;
        let header = SegmentHeader {
            first_seq: first,
            created_ms: oldest_ms,
        }
        .encode();
        let written = write_all_at(&*f, &header, 0)
            .and_then(|()| write_all_at(&*f, &batch.buf, SEGMENT_HEADER_LEN));
        if let Err((e, _)) = written {
            // Give the space back; the log itself is untouched.
            drop(f);
            let _ = self.fs.remove(&tmp);
            return Err(SpoolError::io("write", &tmp, e));
        }
        self.timed_sync(&*f, &tmp)?;
        self.fs
            .rename(&tmp, &path)
            .map_err(|e| SpoolError::io("rename", &path, e))?;
        self.fs
            .sync_dir(&self.cfg.dir)
            .map_err(|e| self.poison(format!("fsync directory: {e}")))?;
        let len = SEGMENT_HEADER_LEN + batch.buf.len() as u64;
        let seg = Seg {
            first_seq: first,
            path,
            len,
            created_ms: oldest_ms,
            file: Some(f),
            index: vec![IndexEntry {
                seq: first,
                offset: SEGMENT_HEADER_LEN,
                ms: oldest_ms,
            }],
        };
        if core.segs.is_empty() {
            core.active = false;
            core.disk_end = core.next_seq;
        }
        core.segs.push_front(seg);
        core.disk_bytes += len;
        self.st.bytes_written.fetch_add(len, Ordering::Relaxed);
        core.mem.clear();
        Ok(())
    }
}

/// Whether the memory tier (on at `memory_limit`) has room for a batch
/// of `msgs` messages, `encoded` bytes as `close` encodes them: written
/// out with everything already in it, it still fits the reserve. (Whether the disk tier lets it take batches is the
/// caller's question.)
fn mem_takes(core: &Core, msgs: usize, encoded: u64, memory_limit: u64) -> bool {
    memory_limit > 0
        && segment_size_bound(core.mem.encoded() + encoded, (core.mem.len() + msgs) as u64)
            <= core.mem_capacity
}
