//! The engine: memory tier, segment log, group commit, acks, space policy.
//!
//! The public handle and its API are here; each job of the engine has its
//! own file: `state` (what is held, behind which lock), `memtier` (the
//! memory tier's batches), `writer` (appends,
//! rolls), `sync` (fsync, group commit, cursor persists), `retention`
//! (deleting and dropping segments), `reader` (reads).

mod memtier;
mod reader;
mod retention;
mod state;
mod sync;
mod writer;

use memtier::MemTier;
use state::{disk_msgs, disk_pending, oldest_disk_ms};
pub(crate) use state::{Core, IndexEntry, Inner, PendingRoll, ReadTail, Seg, SyncState};

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::os::unix::fs::OpenOptionsExt;

use bytes::Bytes;

use crate::config::{Durability, SpoolConfig, WhenFull};
use crate::cursor::{
    install_cursor, sync_cursor_dir, write_cursor, write_cursor_tmp, Cursor, CursorWrite,
    CURSOR_BG_TMP,
};
use crate::error::{FullReason, SpoolError};
use crate::format::{
    encode_batch, finalize, segment_file_name, segment_size_bound, split_payload_while,
    EncodedBatch, SegmentHeader, MAX_MESSAGE_LIMIT, SEGMENT_HEADER_LEN,
};
use crate::fs::{is_no_space, write_all_at, Fs, SegmentFile, StdFs};
use crate::recovery::{recover, RecoveryReport};
use crate::reserve;
use crate::scan::{gap_detail, Scan, SegmentReader};
use crate::stats::{Counters, SpoolStats};

/// The settings a running spool takes without reopening
/// ([`Spool::reconfigure`]); the rest of [`SpoolConfig`] is fixed at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunables {
    pub memory_limit: u64,
    pub max_disk: u64,
    pub when_full: WhenFull,
    pub durability: Durability,
    pub segment_size: u64,
}

impl Tunables {
    fn of(cfg: &SpoolConfig) -> Self {
        Tunables {
            memory_limit: cfg.memory_limit,
            max_disk: cfg.max_disk,
            when_full: cfg.when_full,
            durability: cfg.durability,
            segment_size: cfg.segment_size,
        }
    }

    /// Segments at least 4 KiB, and at most a quarter of `max_disk`, so
    /// space is freed in steps smaller than the bound.
    fn normalized(mut self) -> Self {
        self.segment_size = self.segment_size.max(4096);
        if self.max_disk > 0 {
            self.segment_size = self.segment_size.min((self.max_disk / 4).max(4096));
        }
        self
    }
}

/// One message read back from the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub seq: u64,
    pub data: Bytes,
    /// When the message was appended, in milliseconds since the Unix epoch
    /// (the record's timestamp for the disk tier): for end-to-end latency.
    pub append_ms: u64,
}

/// A batch encoded once for [`Spool::append_batch`] (see
/// [`Spool::encode`]).
#[derive(Debug)]
pub struct Batch {
    enc: EncodedBatch,
    /// Counted once in `SpoolStats::blocked` however often it is offered.
    blocked_counted: bool,
}

impl Batch {
    /// Messages in the batch (0 once it was accepted).
    pub fn len(&self) -> usize {
        self.enc.msgs
    }

    pub fn is_empty(&self) -> bool {
        self.enc.msgs == 0
    }
}

/// Where an accepted batch went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Held in memory: lost on a crash, written to disk on `close`.
    Memory,
    /// Written to the segment log (durable per `Durability`).
    Disk,
}

impl Tier {
    /// Both tiers, memory first (the order a batch tries them).
    pub const ALL: [Tier; 2] = [Tier::Memory, Tier::Disk];

    /// The `tier` label of the queue depth metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Disk => "disk",
        }
    }
}

/// What `append` did with a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Sequence number of the first accepted message (the others follow
    /// consecutively). When nothing was accepted: the next sequence number.
    pub first_seq: u64,
    /// Messages accepted (the whole batch, or 0).
    pub accepted: usize,
    /// Messages of this batch refused under `WhenFull::DropNewest` (or under
    /// `DropOldest` when there was nothing older left to drop).
    pub dropped_newest: usize,
    /// Older unacknowledged messages deleted to make room (`DropOldest`).
    pub dropped_oldest_msgs: u64,
    /// Where the batch went, if accepted.
    pub tier: Option<Tier>,
}

impl AppendOutcome {
    /// The whole batch of `msgs` accepted into `tier`.
    fn whole(first_seq: u64, msgs: usize, dropped_oldest_msgs: u64, tier: Tier) -> AppendOutcome {
        AppendOutcome {
            first_seq,
            accepted: msgs,
            dropped_newest: 0,
            dropped_oldest_msgs,
            tier: Some(tier),
        }
    }
}

/// How many bytes of log between two entries of a segment's sparse index.
const INDEX_EVERY: u64 = 1 << 20;

/// A durable, strictly FIFO queue of byte messages: a bounded memory tier in
/// front of a segmented append-only log.
///
/// Cheap to clone; all clones share one spool. Every method takes `&self`
/// and may block on disk I/O, so async callers run them on a blocking
/// thread. Dropping every handle without [`close`](Spool::close) behaves like
/// a crash of the process: the memory tier is lost, the log is kept.
///
/// Sequence numbers: consecutive per message. After a crash, the numbers of
/// messages that were lost (memory tier, unsynced tail) may be handed out
/// again to new messages.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.inner.cfg.dir)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves counters possibly stale but no
    // on-disk state half-written that later code would trust: the log is
    // re-read on open. Carry on rather than propagate the panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whether an append respects `max_disk` (see `Spool::append_past_quota`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quota {
    Applies,
    Ignored,
}

enum WriteResult {
    /// `rolled`: a new segment was started (its roll is to be finished).
    Written {
        first: u64,
        lsn: u64,
        rolled: bool,
    },
    NoRoom(FullReason),
    /// A roll is due and there is no spare segment file yet.
    NeedSpare,
    /// A roll is due and the previous one is not finished.
    RollBusy,
}

/// Name of the lock file in a spool directory.
pub const LOCK_FILE: &str = "LOCK";

/// Creates the directory if needed and takes the exclusive lock on it
/// (released by the kernel when the process dies, so a crash never leaves
/// a stale lock behind).
fn lock_dir(dir: &std::path::Path) -> Result<std::fs::File, SpoolError> {
    crate::fs::create_private_dir(dir).map_err(|e| SpoolError::io("create dir", dir, e))?;
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(crate::fs::FILE_MODE)
        .open(&path)
        .map_err(|e| SpoolError::io("open lock file", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(SpoolError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(SpoolError::io("lock", &path, e)),
    }
}

/// Makes `dir` an empty spool whose numbering starts at `seq`: for a
/// spool that is emptied at every start (a scratch queue) but must never
/// hand a number out twice across starts. `dir` must hold no segment (the
/// caller emptied it) and must not be open.
pub fn start_empty_at(fs: &dyn Fs, dir: &Path, seq: u64) -> Result<(), SpoolError> {
    fs.create_dir_all(dir)
        .map_err(|e| SpoolError::io("create dir", dir, e))?;
    let c = crate::cursor::Cursor {
        ack_floor: seq,
        next_seq: seq,
    };
    match crate::cursor::write_cursor(fs, dir, c, false)? {
        crate::cursor::CursorWrite::Written => Ok(()),
        crate::cursor::CursorWrite::NoSpace => Err(SpoolError::io(
            "write cursor",
            dir,
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        )),
    }
}

/// The numbering the cursor of the spool in `dir` last recorded (its
/// next seq; `None` without a readable cursor).
pub fn recorded_next_seq(fs: &dyn Fs, dir: &Path) -> Option<u64> {
    match crate::cursor::read_cursor(fs, dir) {
        Ok(Some(Ok(c))) => Some(c.next_seq.max(c.ack_floor)),
        _ => None,
    }
}

/// Whether another handle or process holds the spool in `dir` open.
pub fn is_locked(dir: &std::path::Path) -> bool {
    let Ok(file) = std::fs::File::open(dir.join(LOCK_FILE)) else {
        return false;
    };
    matches!(
        file.try_lock_shared(),
        Err(std::fs::TryLockError::WouldBlock)
    )
}

impl Spool {
    /// Opens (or creates) the spool in `config.dir`, recovering the log: only
    /// the last segment is scanned, a torn tail is truncated and reported.
    pub fn open(config: SpoolConfig) -> Result<(Spool, RecoveryReport), SpoolError> {
        Spool::open_with_fs(config, Arc::new(StdFs))
    }

    /// Like [`open`](Spool::open) over a custom file system (fault injection
    /// in tests).
    pub fn open_with_fs(
        mut config: SpoolConfig,
        fs: Arc<dyn Fs>,
    ) -> Result<(Spool, RecoveryReport), SpoolError> {
        if config.max_message > MAX_MESSAGE_LIMIT {
            return Err(SpoolError::Config(format!(
                "max_message {} exceeds the limit of {MAX_MESSAGE_LIMIT} bytes",
                config.max_message
            )));
        }
        let live = Tunables::of(&config).normalized();
        config.segment_size = live.segment_size;
        let lock = lock_dir(&config.dir)?;
        let st = Counters::default();
        let (mut core, mut report) = recover(&config, &*fs, &st)?;
        // After recovery, which may have freed space by deleting acked
        // segments.
        let (held, reserve_file) = reserve::ensure(&*fs, &config.dir, config.memory_limit)?;
        core.mem_capacity = held;
        core.reserve_short = held < config.memory_limit;
        core.reserve_retry_at = Instant::now() + config.reserve_retry;
        report.memory_reserved = core.mem_capacity;
        report.memory_reserve_wanted = config.memory_limit;
        let inner = Inner {
            dir_lock: Mutex::new(Some(lock)),
            cursor_io: Mutex::new(()),
            dir_io: Mutex::new(()),
            spare_io: Mutex::new(()),
            reserve_io: Mutex::new(()),
            reserve_file: Mutex::new(reserve_file),
            written: AtomicU64::new(core.written_lsn),
            delivered: AtomicU64::new(core.floor),
            sync: Mutex::new(SyncState {
                durable_lsn: core.written_lsn,
                syncing: false,
                last_sync: Instant::now(),
                poison: None,
            }),
            core: Mutex::new(core),
            live: RwLock::new(live),
            cfg: config,
            fs,
            space_cv: Condvar::new(),
            sync_cv: Condvar::new(),
            notify: RwLock::new(None),
            space_notify: RwLock::new(None),
            poisoned: AtomicBool::new(false),
            st,
        };
        Ok((
            Spool {
                inner: Arc::new(inner),
            },
            report,
        ))
    }

    /// The configuration at open (after normalisation); the settings in
    /// effect now are [`tunables`](Spool::tunables).
    pub fn config(&self) -> &SpoolConfig {
        &self.inner.cfg
    }

    /// The settings in effect now.
    pub fn tunables(&self) -> Tunables {
        self.inner.live()
    }

    /// Changes the settings of a running spool, for the next appends (a
    /// reload that leaves the directory, framing and endpoints alone need
    /// not close the spool, so nothing in flight is disturbed):
    /// - `memory_limit`: the reserve is grown (by the next `tick`, as far
    ///   as the disk allows) or shrunk. A memory tier that holds more than
    ///   the new limit is written to disk now (as `close` does), so that
    ///   `memory = 0` means what it says from the reload on; if the disk
    ///   refuses, it stays in memory and the reserve keeps its room;
    /// - `max_disk`, `when_full`: the next append's admission; a lower
    ///   `max_disk` than what is on disk only stops new disk appends;
    /// - `durability`: the next appends and ticks;
    /// - `segment_size`: the next roll.
    pub fn reconfigure(&self, t: Tunables) -> Result<(), SpoolError> {
        let inner = &*self.inner;
        inner.check_open()?;
        let t = t.normalized();
        let _io = lock(&inner.reserve_io);
        let mut core = lock(&inner.core);
        *inner.live.write().unwrap_or_else(|e| e.into_inner()) = t;
        if !core.mem.is_empty()
            && segment_size_bound(core.mem.encoded(), core.mem.len() as u64) > t.memory_limit
        {
            // Under the lock, like `close`: a reload is rare, and the tier
            // must not change while it is written. A failed fsync poisons
            // the spool (reported); a full disk leaves the tier in memory.
            inner.check_poison()?;
            match inner.flush_mem(&mut core) {
                Ok(()) => {
                    core.read_hint = None;
                    core.read_tail = None;
                }
                Err(_) => inner.check_poison()?,
            }
        }
        let mut shrink = None;
        if t.memory_limit < core.mem_capacity {
            // Shrink, keeping room for what the memory tier holds. The
            // memory tier counts on the smaller size at once; the file is
            // truncated (or unlinked) after the lock is released.
            let keep = if core.mem.is_empty() {
                t.memory_limit
            } else {
                segment_size_bound(core.mem.encoded(), core.mem.len() as u64).max(t.memory_limit)
            };
            if keep < core.mem_capacity {
                core.mem_capacity = keep;
                shrink = Some(keep);
            }
            core.reserve_short = false;
        } else {
            // Grow at the next tick.
            core.reserve_retry_at = Instant::now();
        }
        drop(core);
        if let Some(keep) = shrink {
            // (`reserve_io` is still held: no grow or close in between.)
            let (held, file) = reserve::ensure(&*inner.fs, &inner.cfg.dir, keep)?;
            *lock(&inner.reserve_file) = file;
            let mut core = lock(&inner.core);
            core.mem_capacity = core.mem_capacity.min(held);
        }
        inner.space_freed();
        Ok(())
    }

    /// Appends a batch as consecutive sequence numbers; on disk the batch is
    /// one record (split only past 1 MiB), which is what keeps small messages
    /// cheap (about one length byte of overhead each). Returns once the batch
    /// is accepted and, under `Durability::Always` in the disk tier, durable.
    /// The whole batch is accepted or none of it.
    pub fn append(&self, msgs: &[&[u8]]) -> Result<AppendOutcome, SpoolError> {
        self.append_with(msgs, Quota::Applies)
    }

    /// Appends a batch that was already accepted from its producer (read
    /// from the socket, so TCP acknowledged it) when shutdown interrupts an
    /// append waiting at `max_disk` under `WhenFull::Block`. The quota is a
    /// policy and these bytes are already promised, so the batch is written
    /// even past `max_disk`, and never dropped or waited for: a physically
    /// full file system still fails it at once with
    /// `SpoolError::Full { reason: FullReason::NoSpace }` (then the caller
    /// knows exactly which batch was lost). `when_full` does not apply.
    /// Otherwise like [`append`](Spool::append): the memory tier takes the
    /// batch if it would, `Durability::Always` waits for the fsync.
    ///
    /// Meant for that one batch per producer at shutdown: each call can
    /// take the disk tier further past `max_disk`.
    pub fn append_past_quota(&self, msgs: &[&[u8]]) -> Result<AppendOutcome, SpoolError> {
        self.append_with(msgs, Quota::Ignored)
    }

    /// Messages with `seq >= from` (clamped up to the ack floor), at most
    /// `max_msgs` and about `max_bytes` (always at least one message when
    /// one exists). An empty vector means nothing new yet.
    pub fn read(
        &self,
        from: u64,
        max_msgs: usize,
        max_bytes: usize,
    ) -> Result<Vec<Message>, SpoolError> {
        self.inner.read(from, max_msgs, max_bytes)
    }

    /// [`read`](Spool::read) from the memory tier and the page cache only
    /// (file reads with `RWF_NOWAIT`, and only of files already open): None
    /// when it would wait for the disk, to be read by a thread that may
    /// wait. For a caller that must not block.
    pub fn read_cached(
        &self,
        from: u64,
        max_msgs: usize,
        max_bytes: usize,
    ) -> Result<Option<Vec<Message>>, SpoolError> {
        self.inner.read_with(from, max_msgs, max_bytes, true)
    }

    /// Marks everything below `upto` consumed. Fully consumed segments are
    /// deleted (and the cursor persisted then); otherwise the cursor is
    /// persisted lazily by `tick` every `cursor_interval`, by `sync` and by
    /// `close`. After a crash, acknowledgements newer than the last persist
    /// are forgotten and those messages are delivered again: duplicates,
    /// never loss.
    ///
    /// `SpoolError::Closed` after [`close`](Spool::close): a closed handle
    /// deletes nothing (another spool may own the directory by now).
    pub fn ack(&self, upto: u64) -> Result<(), SpoolError> {
        let inner = &*self.inner;
        let mut core = lock(&inner.core);
        if core.closed {
            return Err(SpoolError::Closed);
        }
        let upto = upto.min(core.next_seq);
        if upto <= core.floor {
            return Ok(());
        }
        core.floor = upto;
        let floor = core.floor;
        core.mem.ack(floor);
        let seg_size = inner.live().segment_size;
        let waiters = core.space_waiters > 0;
        // The segments leave the log under the lock; the unlinks, the
        // directory fsync and the cursor persist happen after it, so
        // appenders and readers do not wait for them (a crash in between
        // only redelivers).
        let removed = inner.doom_segments_while(&mut core, |core, i| {
            let end = core.segs.get(i + 1).map_or(core.disk_end, |s| s.first_seq);
            if end > core.floor {
                return false;
            }
            let is_active_last = i + 1 == core.segs.len() && core.active;
            // Keep a small drained active segment: deleting and recreating
            // it on every drain would cost two directory fsyncs each time.
            !is_active_last || waiters || core.segs[i].len >= seg_size / 8
        });
        drop(core);
        inner.space_freed();
        if removed > 0 {
            inner.finish_deletions()?;
        }
        Ok(())
    }

    /// Everything below `upto` was delivered, even if some of it is kept
    /// (not acknowledged yet) to be sent again should its consumer reset.
    /// Only the depth and age in [`stats`](Spool::stats) use it: they count
    /// what is waiting for delivery, not what is kept. It may go down (a
    /// reset consumer's window is waiting again); the caller serializes.
    pub fn mark_delivered(&self, upto: u64) {
        self.inner.delivered.store(upto, Ordering::Relaxed);
    }

    /// What [`Spool::mark_delivered`] last said: everything below it was
    /// delivered (some of it may still be kept for redelivery).
    pub fn delivered_floor(&self) -> u64 {
        self.inner.delivered.load(Ordering::Relaxed)
    }

    /// Whether an append is waiting for space right now (`when_full =
    /// block` at `max_disk` or on a full file system): the owner should
    /// acknowledge everything it can, including what it keeps only for
    /// redelivery.
    pub fn space_wanted(&self) -> bool {
        lock(&self.inner.core).space_waiters > 0
    }

    /// Lowest unacknowledged sequence number still held.
    pub fn ack_floor(&self) -> u64 {
        lock(&self.inner.core).floor
    }

    /// Sequence number the next appended message gets.
    pub fn next_seq(&self) -> u64 {
        lock(&self.inner.core).next_seq
    }

    /// Housekeeping, called every 10-50 ms by the owner: fsync under
    /// `Durability::Interval` when due, persist a changed cursor every
    /// `cursor_interval`, and retry at once a cursor persist that met a full
    /// disk (`SpoolStats::cursor_dirty`). `SpoolError::Closed` after `close`.
    ///
    /// A full disk while persisting the cursor is not an error: it is
    /// counted (`SpoolStats::cursor_write_failures`), the previous cursor
    /// file stays, and the next tick tries again.
    pub fn tick(&self) -> Result<(), SpoolError> {
        let inner = &*self.inner;
        inner.check_open()?;
        inner.check_poison()?;
        if let Durability::Interval(d) = inner.live().durability {
            inner.maybe_interval_sync(d)?;
        }
        // Backstops: a roll its appender did not finish, unlinks that
        // failed; and the spare for the next roll, made ahead of it.
        let (roll, doomed, spare_due) = {
            let core = lock(&inner.core);
            (
                core.roll.is_some(),
                !core.doomed.is_empty(),
                core.active && core.spare.is_none(),
            )
        };
        if roll {
            inner.finish_roll()?;
        }
        if doomed {
            inner.finish_deletions()?;
        }
        if spare_due {
            // Best effort: on a full disk, or out of file descriptors, the
            // roll that needs it tries again and reports what it meets.
            let _ = inner.ensure_spare();
        }
        let due = {
            let core = lock(&inner.core);
            if core.closed {
                return Err(SpoolError::Closed);
            }
            let changed = core.persisted.ack_floor != core.floor
                && core.last_cursor_persist.elapsed() >= inner.cfg.cursor_interval;
            (changed || core.cursor_owed.is_some()).then(|| core.cursor())
        };
        if let Some(c) = due {
            inner.persist_cursor_unlocked(c)?;
        }
        inner.maybe_grow_reserve()
    }

    /// Forces everything written so far to disk (whatever the durability
    /// policy) and persists the cursor. The memory tier stays in memory.
    /// `SpoolError::Closed` after `close`.
    ///
    /// On a full disk the cursor file may stay behind (counted in
    /// `SpoolStats::cursor_write_failures`, retried by `tick`); `sync` still
    /// succeeds, since the data is durable and a stale cursor only means
    /// redelivery after a crash.
    pub fn sync(&self) -> Result<(), SpoolError> {
        let inner = &*self.inner;
        inner.check_open()?;
        inner.check_poison()?;
        let target = inner.written.load(Ordering::Acquire);
        inner.wait_durable(target)?;
        let mut core = lock(&inner.core);
        if core.closed {
            return Err(SpoolError::Closed);
        }
        inner.persist_cursor_with(&mut core, true)
    }

    /// Registers the callback run (outside all locks) whenever new messages
    /// become readable. Replaces any previous one.
    pub fn set_notify(&self, f: Box<dyn Fn() + Send + Sync>) {
        let mut slot = self.inner.notify.write().unwrap_or_else(|e| e.into_inner());
        *slot = Some(Arc::from(f));
    }

    /// Registers the callback run (outside all locks) whenever space may
    /// have been freed (acknowledgements, a reload, close): for an owner
    /// that waits for space itself (`try_append_batch`). A full file
    /// system is not signalled: poll for it.
    pub fn set_space_notify(&self, f: Box<dyn Fn() + Send + Sync>) {
        let mut slot = self
            .inner
            .space_notify
            .write()
            .unwrap_or_else(|e| e.into_inner());
        *slot = Some(Arc::from(f));
    }

    /// Numbers for metrics.
    pub fn stats(&self) -> SpoolStats {
        let inner = &*self.inner;
        let core = lock(&inner.core);
        let mut s = inner.st.snapshot();
        // Depth and age count from the delivered position; what the spool
        // keeps below it (redelivery windows) is not waiting.
        let from = inner
            .delivered
            .load(Ordering::Relaxed)
            .clamp(core.floor, core.next_seq);
        let (kept_msgs, kept) = core.mem.below(from);
        s.mem_msgs = core.mem.len() as u64 - kept_msgs;
        s.mem_bytes = core.mem.bytes() - kept;
        s.mem_reserved = core.mem_capacity;
        s.mem_reserve_short = core.reserve_short;
        s.disk_msgs = disk_msgs(&core, from);
        s.disk_bytes = core.disk_bytes;
        s.segments = core.segs.len() as u64;
        s.next_seq = core.next_seq;
        s.ack_floor = from;
        s.retain_floor = core.floor;
        s.cursor_dirty = core.cursor_owed.is_some();
        s.poisoned = inner.poisoned.load(Ordering::Relaxed);
        let oldest_ms = if let Some(ms) = core.mem.ms_of(from.max(core.mem.first())) {
            Some(ms)
        } else if s.disk_msgs > 0 {
            oldest_disk_ms(&core, from)
        } else {
            None
        };
        s.oldest_age = oldest_ms.map(|ms| Duration::from_millis(now_ms().saturating_sub(ms)));
        s
    }

    /// Graceful close of the spool shared by all clones of this handle:
    /// writes the memory tier to disk, fsyncs, persists the cursor. After
    /// close and reopen nothing accepted is lost. A full disk when the
    /// cursor is persisted does not fail the close (the older cursor file
    /// stays: redelivery, not loss). Other clones get
    /// `SpoolError::Closed` afterwards (blocked appenders wake up with it)
    /// from every call that reads, writes or deletes, so a lingering handle
    /// cannot touch a directory that a newly opened spool owns.
    pub fn close(self) -> Result<(), SpoolError> {
        let inner = &*self.inner;
        // A periodic cursor persist runs without the main lock; wait for one
        // in flight, and make every later one see `closed` before it writes.
        let _cursor_io = lock(&inner.cursor_io);
        // Likewise a growth of the reserve: its open handle would keep the
        // space taken after the unlink below.
        let _reserve_io = lock(&inner.reserve_io);
        // A roll's slow half and pending unlinks are done first (a roll can
        // still begin meanwhile: then again); no spare is made meanwhile.
        let dir_io = lock(&inner.dir_io);
        let _spare_io = lock(&inner.spare_io);
        let mut core = loop {
            if let Err(e) = inner.finish_roll_locked(&dir_io) {
                // Poisoned: closed all the same (no handle may touch the
                // directory any more); the next open recovers from what
                // is on disk.
                let mut core = lock(&inner.core);
                core.closed = true;
                inner.space_cv.notify_all();
                return Err(e);
            }
            // Best effort: the next open deletes acknowledged segments.
            let _ = inner.unlink_doomed(&dir_io);
            let core = lock(&inner.core);
            if core.roll.is_none() || core.closed {
                break core;
            }
        };
        if core.closed {
            return Ok(());
        }
        core.closed = true;
        if let Some((spare, path)) = core.spare.take() {
            drop(spare);
            let _ = inner.fs.remove(&path);
        }
        inner.space_cv.notify_all();
        if !core.mem.is_empty() {
            let not_written = |core: &Core, source: SpoolError| SpoolError::MemoryTierNotWritten {
                msgs: core.mem.len() as u64,
                bytes: core.mem.bytes(),
                first_seq: core.mem.first(),
                source: Box::new(source),
            };
            if let Err(e) = inner.check_poison() {
                return Err(not_written(&core, e));
            }
            // The reserve's space is what the memory tier is written into.
            // Should the unlink fail, the write below may still find room;
            // if it does not, the unlink's error is the cause to report.
            lock(&inner.reserve_file).take();
            let removed = reserve::remove(&*inner.fs, &inner.cfg.dir);
            if let Err(e) = inner.flush_mem(&mut core) {
                return Err(not_written(&core, removed.err().unwrap_or(e)));
            }
        } else {
            inner.check_poison()?;
            // A closed spool holds no reserve, and its space helps the
            // cursor write below on a full disk. A reserve that cannot be
            // removed is harmless: the next open reuses it, as after a crash.
            lock(&inner.reserve_file).take();
            let _ = reserve::remove(&*inner.fs, &inner.cfg.dir);
        }
        // Everything written becomes durable; a reopen starts a new segment.
        inner.seal_active(&mut core)?;
        inner.persist_cursor_with(&mut core, true)?;
        // Every later call sees `closed`: nothing writes here any more.
        lock(&inner.dir_lock).take();
        Ok(())
    }
}
