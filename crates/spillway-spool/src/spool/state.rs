//! What the spool holds: the state behind the main lock (`Core`), the
//! group-commit state, and the shared handle (`Inner`), with the small
//! questions asked of them.

use super::*;

#[derive(Debug, Clone, Copy)]
pub(crate) struct IndexEntry {
    pub seq: u64,
    pub offset: u64,
    pub ms: u64,
}

#[derive(Debug)]
pub(crate) struct Seg {
    pub first_seq: u64,
    pub path: PathBuf,
    /// Bytes of valid data (header + whole records).
    pub len: u64,
    pub created_ms: u64,
    /// Opened lazily for reads of segments trusted at open.
    pub file: Option<Arc<dyn SegmentFile>>,
    /// Sparse (seq, offset, time) samples: seek points for reads and the
    /// source of the oldest-message age.
    pub index: Vec<IndexEntry>,
}

/// Everything behind the main lock.
#[derive(Debug)]
pub(crate) struct Core {
    pub next_seq: u64,
    /// Lowest sequence number not yet acknowledged (or dropped).
    pub floor: u64,
    pub mem: MemTier,
    /// Bytes of the reserve file: the largest segment the memory tier may
    /// become (at most `memory_limit`; less when the disk was full).
    pub mem_capacity: u64,
    /// The reserve is below `memory_limit` because the disk had no room
    /// for more (at open, a grow, or given up for a batch on a full disk);
    /// not while a larger limit waits for the disk tier to drain.
    pub reserve_short: bool,
    /// When `tick` may next try to grow a short reserve.
    pub reserve_retry_at: Instant,
    /// Sorted by first seq; contiguous (each ends where the next begins).
    pub segs: VecDeque<Seg>,
    /// Whether `segs.back()` takes appends.
    pub active: bool,
    /// Sequence number after the last message in the log.
    pub disk_end: u64,
    pub disk_bytes: u64,
    /// Total bytes ever written by this handle: the group-commit position.
    pub written_lsn: u64,
    /// (segment first seq, entry): where the last read stopped.
    pub read_hint: Option<(u64, IndexEntry)>,
    /// The rest of the record the last read stopped inside: the next read
    /// starts from it instead of reading and checking the whole record
    /// again (a producer's batch is one record, often larger than a read).
    /// Cleared with `read_hint`.
    pub read_tail: Option<ReadTail>,
    /// The cursor in the cursor file (as far as this handle knows).
    pub persisted: Cursor,
    pub last_cursor_persist: Instant,
    /// A cursor that a persist could not write (full disk) or skipped (one
    /// was in flight): `tick` persists until a cursor at least this new is
    /// in the file. `None` = the file is not behind what a persist owes.
    pub cursor_owed: Option<Cursor>,
    pub closed: bool,
    pub space_waiters: usize,
    /// An empty file created ahead of the next roll (without the lock, see
    /// `writer.rs`): a roll only writes its header.
    pub spare: Option<(Arc<dyn SegmentFile>, PathBuf)>,
    /// A roll whose slow half (seal, name, directory fsync) is not done.
    pub roll: Option<PendingRoll>,
    /// Segments taken out of the log whose files are still to be unlinked
    /// (without the lock, see `retention.rs`): first seq and path.
    pub doomed: Vec<(u64, PathBuf)>,
}

/// The half of a roll that waits for the disk: the previous segment is
/// fsynced (sealed), then the new one, written meanwhile under the spare's
/// name, gets its own name, then the directory is fsynced. Until then
/// nothing written to the new segment counts as durable.
#[derive(Debug, Clone)]
pub(crate) struct PendingRoll {
    /// The segment that was active before the roll, if one was (its
    /// first seq, file and path). It stays in the log until the roll is
    /// finished: a spare with records always follows a named segment.
    pub sealed: Option<(u64, Arc<dyn SegmentFile>, PathBuf)>,
    /// The new segment has its name already (there was nothing to seal:
    /// only the directory fsync is left).
    pub named: bool,
    /// The group-commit position at the end of that segment.
    pub sealed_lsn: u64,
    /// The new segment's first seq (its name).
    pub first_seq: u64,
    /// The spare it was written as (its file's name until it is named).
    pub spare: PathBuf,
}

impl Core {
    pub(crate) fn cursor(&self) -> Cursor {
        Cursor {
            ack_floor: self.floor,
            next_seq: self.next_seq,
        }
    }

    /// Whether the segment starting at `first_seq` is one of a pending
    /// roll's two (they stay in the log until it is finished).
    pub(crate) fn in_roll(&self, first_seq: u64) -> bool {
        self.roll.as_ref().is_some_and(|r| {
            r.first_seq == first_seq || r.sealed.as_ref().is_some_and(|s| s.0 == first_seq)
        })
    }

    /// `c` is in the cursor file now.
    pub(crate) fn cursor_persisted(&mut self, c: Cursor) {
        self.persisted = c;
        self.last_cursor_persist = Instant::now();
        if self
            .cursor_owed
            .is_some_and(|o| c.ack_floor >= o.ack_floor && c.next_seq >= o.next_seq)
        {
            self.cursor_owed = None;
        }
    }

    /// `c` should be in the cursor file but is not.
    pub(crate) fn owe_cursor(&mut self, c: Cursor) {
        self.cursor_owed = Some(match self.cursor_owed {
            Some(o) => Cursor {
                ack_floor: o.ack_floor.max(c.ack_floor),
                next_seq: o.next_seq.max(c.next_seq),
            },
            None => c,
        });
    }
}

#[derive(Debug)]
pub(crate) struct SyncState {
    pub(crate) durable_lsn: u64,
    pub(crate) syncing: bool,
    pub(crate) last_sync: Instant,
    pub(crate) poison: Option<String>,
}

pub(crate) type NotifyFn = Arc<dyn Fn() + Send + Sync>;

pub(crate) struct Inner {
    /// Exclusive lock on `LOCK` in the spool directory, held from open until
    /// a successful `close` (or the last handle drops): two writers on one
    /// log would corrupt it. Released at close so the same process can
    /// reopen the directory (a reloaded route) while old handles linger.
    pub(crate) dir_lock: Mutex<Option<std::fs::File>>,
    /// Serializes the periodic cursor persist (see `persist_cursor_unlocked`).
    pub(crate) cursor_io: Mutex<()>,
    /// Held while the slow half of a roll runs, and while doomed segments
    /// are unlinked: a rename of the spare and an unlink of a doomed file
    /// of the same name never race. Lock order: `cursor_io`, `reserve_io`,
    /// `dir_io`, `spare_io`, `core`, `sync`.
    pub(crate) dir_io: Mutex<()>,
    /// Held while the spare is created.
    pub(crate) spare_io: Mutex<()>,
    /// Held while the reserve file is grown (by `tick`, without the main
    /// lock) or deleted (by `close`).
    pub(crate) reserve_io: Mutex<()>,
    /// The reserve, held open (see `reserve.rs`); dropped to free its space.
    pub(crate) reserve_file: Mutex<Option<Arc<dyn SegmentFile>>>,
    pub(crate) cfg: SpoolConfig,
    /// The settings `reconfigure` may change; read these, not `cfg`'s.
    pub(crate) live: RwLock<Tunables>,
    pub(crate) fs: Arc<dyn Fs>,
    pub(crate) core: Mutex<Core>,
    pub(crate) space_cv: Condvar,
    pub(crate) sync: Mutex<SyncState>,
    pub(crate) sync_cv: Condvar,
    pub(crate) notify: RwLock<Option<NotifyFn>>,
    /// Run when space may have been freed (see `Spool::set_space_notify`).
    pub(crate) space_notify: RwLock<Option<NotifyFn>>,
    pub(crate) poisoned: AtomicBool,
    pub(crate) written: AtomicU64,
    /// Reported by the owner: everything below was delivered, though the
    /// spool may keep some of it (`ack` waits for redelivery windows).
    /// Only the numbers in `stats` use it.
    pub(crate) delivered: AtomicU64,
    pub(crate) st: Counters,
}

/// Whether the disk tier holds unacknowledged messages (then appends go to
/// disk, to keep FIFO order across the tiers).
pub(super) fn disk_pending(core: &Core) -> bool {
    !core.segs.is_empty() && core.disk_end > core.floor
}

/// Messages on disk at or above `from` (at least the floor).
pub(super) fn disk_msgs(core: &Core, from: u64) -> u64 {
    match core.segs.front() {
        Some(s) => core
            .disk_end
            .saturating_sub(from.max(core.floor).max(s.first_seq)),
        None => 0,
    }
}

/// Append time of (about) the oldest message on disk at or above `from`:
/// the latest index sample at or below it, at most 1 MiB of log early.
pub(super) fn oldest_disk_ms(core: &Core, from: u64) -> Option<u64> {
    let from = from.max(core.floor);
    let pos = core
        .segs
        .partition_point(|s| s.first_seq <= from)
        .saturating_sub(1);
    let seg = core.segs.get(pos)?;
    let i = seg.index.partition_point(|e| e.seq <= from);
    Some(match i.checked_sub(1).and_then(|i| seg.index.get(i)) {
        Some(e) => e.ms,
        None => seg.created_ms,
    })
}

impl Inner {
    pub(super) fn check_open(&self) -> Result<(), SpoolError> {
        if lock(&self.core).closed {
            return Err(SpoolError::Closed);
        }
        Ok(())
    }

    pub(super) fn check_poison(&self) -> Result<(), SpoolError> {
        if self.poisoned.load(Ordering::Acquire) {
            let s = lock(&self.sync);
            return Err(SpoolError::Poisoned {
                cause: s.poison.clone().unwrap_or_default(),
            });
        }
        Ok(())
    }

    pub(super) fn live(&self) -> Tunables {
        *self.live.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Where the next spare is created: the spare name a pending roll's
    /// segment does not have (two names alternate, so the next spare is
    /// made while a roll is being finished).
    pub(super) fn next_spare_path(&self, core: &Core) -> PathBuf {
        let busy = core.roll.as_ref().map(|r| r.spare.clone());
        crate::recovery::SPARE_FILES
            .iter()
            .map(|n| self.cfg.dir.join(n))
            .find(|p| Some(p) != busy.as_ref())
            .unwrap_or_else(|| self.cfg.dir.join(crate::recovery::SPARE_FILES[0]))
    }

    pub(super) fn fsync_enabled(&self) -> bool {
        self.live().durability != Durability::Never
    }

    /// Wakes appenders waiting for space: those blocked here, and the
    /// owner's (`Spool::set_space_notify`).
    pub(super) fn space_freed(&self) {
        self.space_cv.notify_all();
        call(&self.space_notify);
    }

    pub(super) fn notify(&self) {
        call(&self.notify);
    }
}

/// Runs a registered callback, outside the slot's lock.
fn call(slot: &RwLock<Option<NotifyFn>>) {
    let f = slot.read().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some(f) = f {
        f();
    }
}

/// What is left of a record a read stopped inside (see `Core::read_tail`).
#[derive(Debug)]
pub(crate) struct ReadTail {
    /// The first seq of the segment it is in.
    pub seg_first: u64,
    /// The seq of the first message in `rest`.
    pub first: u64,
    /// Messages in `rest`.
    pub count: u32,
    /// The record's messages from `first` on, as its payload encodes them.
    pub rest: Bytes,
    pub append_ms: u64,
    /// Where the record after it starts.
    pub next: IndexEntry,
}

impl ReadTail {
    pub fn end(&self) -> u64 {
        self.first + u64::from(self.count)
    }
}
