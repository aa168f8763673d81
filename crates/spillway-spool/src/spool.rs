//! The engine: memory tier, segment log, group commit, acks, space policy.

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
    encode_batch, finalize, segment_file_name, segment_size_bound, split_payload, varint_len,
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

/// Where an accepted batch went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Held in memory: lost on a crash, written to disk on `close`.
    Memory,
    /// Written to the segment log (durable per `Durability`).
    Disk,
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

/// How many bytes of log between two entries of a segment's sparse index.
const INDEX_EVERY: u64 = 1 << 20;

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

#[derive(Debug)]
pub(crate) struct MemMsg {
    pub data: Bytes,
    pub ms: u64,
}

/// Everything behind the main lock.
#[derive(Debug)]
pub(crate) struct Core {
    pub next_seq: u64,
    /// Lowest sequence number not yet acknowledged (or dropped).
    pub floor: u64,
    pub mem: VecDeque<MemMsg>,
    pub mem_first: u64,
    pub mem_bytes: u64,
    /// The memory tier's messages as `close` encodes them (length varints
    /// + bytes), for the admission check against `mem_capacity`.
    pub mem_encoded: u64,
    /// Bytes of the reserve file: the largest segment the memory tier may
    /// become (at most `memory_limit`; less when the disk was full).
    pub mem_capacity: u64,
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
    /// The cursor in the cursor file (as far as this handle knows).
    pub persisted: Cursor,
    pub last_cursor_persist: Instant,
    /// A cursor that a persist could not write (full disk) or skipped (one
    /// was in flight): `tick` persists until a cursor at least this new is
    /// in the file. `None` = the file is not behind what a persist owes.
    pub cursor_owed: Option<Cursor>,
    pub closed: bool,
    pub space_waiters: usize,
}

impl Core {
    pub(crate) fn cursor(&self) -> Cursor {
        Cursor {
            ack_floor: self.floor,
            next_seq: self.next_seq,
        }
    }

    /// `c` is in the cursor file now.
    fn cursor_persisted(&mut self, c: Cursor) {
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
struct SyncState {
    durable_lsn: u64,
    syncing: bool,
    last_sync: Instant,
    poison: Option<String>,
}

type NotifyFn = Arc<dyn Fn() + Send + Sync>;

struct Inner {
    /// Exclusive lock on `LOCK` in the spool directory, held from open until
    /// a successful `close` (or the last handle drops): two writers on one
    /// log would corrupt it. Released at close so the same process can
    /// reopen the directory (a reloaded route) while old handles linger.
    dir_lock: Mutex<Option<std::fs::File>>,
    /// Serializes the periodic cursor persist (see `persist_cursor_unlocked`).
    cursor_io: Mutex<()>,
    /// Held while the reserve file is grown (by `tick`, without the main
    /// lock) or deleted (by `close`).
    reserve_io: Mutex<()>,
    /// The reserve, held open (see `reserve.rs`); dropped to free its space.
    reserve_file: Mutex<Option<Arc<dyn SegmentFile>>>,
    cfg: SpoolConfig,
    /// The settings `reconfigure` may change; read these, not `cfg`'s.
    live: RwLock<Tunables>,
    fs: Arc<dyn Fs>,
    core: Mutex<Core>,
    space_cv: Condvar,
    sync: Mutex<SyncState>,
    sync_cv: Condvar,
    notify: RwLock<Option<NotifyFn>>,
    poisoned: AtomicBool,
    written: AtomicU64,
    /// Reported by the owner: everything below was delivered, though the
    /// spool may keep some of it (`ack` waits for redelivery windows).
    /// Only the numbers in `stats` use it.
    delivered: AtomicU64,
    st: Counters,
}

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
    Written { first: u64, lsn: u64 },
    NoRoom(FullReason),
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
        core.reserve_retry_at = Instant::now() + config.reserve_retry;
        report.memory_reserved = core.mem_capacity;
        report.memory_reserve_wanted = config.memory_limit;
        let inner = Inner {
            dir_lock: Mutex::new(Some(lock)),
            cursor_io: Mutex::new(()),
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
    ///   as the disk allows) or shrunk, never below what the memory tier
    ///   holds now;
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
        if t.memory_limit < core.mem_capacity {
            // Shrink, keeping room for what the memory tier holds.
            let keep = if core.mem.is_empty() {
                t.memory_limit
            } else {
                segment_size_bound(core.mem_encoded, core.mem.len() as u64).max(t.memory_limit)
            };
            if keep < core.mem_capacity {
                let (held, file) = reserve::ensure(&*inner.fs, &inner.cfg.dir, keep)?;
                *lock(&inner.reserve_file) = file;
                core.mem_capacity = held;
            }
        } else {
            // Grow at the next tick.
            core.reserve_retry_at = Instant::now();
        }
        drop(core);
        inner.space_cv.notify_all();
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

    fn append_with(&self, msgs: &[&[u8]], quota: Quota) -> Result<AppendOutcome, SpoolError> {
        let inner = &*self.inner;
        let cfg = &inner.cfg;
        for m in msgs {
            if m.len() as u64 > u64::from(cfg.max_message) {
                return Err(SpoolError::TooLarge {
                    size: m.len() as u64,
                    limit: u64::from(cfg.max_message),
                });
            }
        }
        inner.check_poison()?;
        if msgs.is_empty() {
            return Ok(AppendOutcome {
                first_seq: self.next_seq(),
                accepted: 0,
                dropped_newest: 0,
                dropped_oldest_msgs: 0,
                tier: None,
            });
        }
        // Encoding and the payload CRC happen before taking the lock.
        let mut batch = encode_batch(msgs.iter().copied());
        let need = batch.buf.len() as u64;
        let deadline = cfg.block_timeout.map(|t| Instant::now() + t);
        let t = inner.live();
        let mut blocked = false;
        let mut dropped_oldest = 0u64;
        let mut core = lock(&inner.core);
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
            // The memory tier takes the batch if, written out by `close`
            // with everything already in it, it still fits the reserve.
            if !disk_pending(&core)
                && t.memory_limit > 0
                && segment_size_bound(
                    core.mem_encoded + batch.encoded_payload(),
                    (core.mem.len() + batch.msgs) as u64,
                ) <= core.mem_capacity
            {
                if !core.segs.is_empty() {
                    // Later disk records must continue the log's seqs, so a
                    // drained log is removed before the memory tier resumes.
                    inner.remove_segments_while(&mut core, |_, _| true)?;
                }
                let first = inner.push_mem(&mut core, batch);
                break (
                    AppendOutcome {
                        first_seq: first,
                        accepted: msgs.len(),
                        dropped_newest: 0,
                        dropped_oldest_msgs: dropped_oldest,
                        tier: Some(Tier::Memory),
                    },
                    None,
                );
            }
            if quota == Quota::Applies && t.max_disk > 0 && need + SEGMENT_HEADER_LEN > t.max_disk {
                return Err(SpoolError::TooLarge {
                    size: need,
                    limit: t.max_disk - SEGMENT_HEADER_LEN,
                });
            }
            let reason = match inner.write_disk(&mut core, &mut batch, quota)? {
                WriteResult::Written { first, lsn } => {
                    break (
                        AppendOutcome {
                            first_seq: first,
                            accepted: msgs.len(),
                            dropped_newest: 0,
                            dropped_oldest_msgs: dropped_oldest,
                            tier: Some(Tier::Disk),
                        },
                        Some(lsn),
                    )
                }
                WriteResult::NoRoom(reason) => reason,
            };
            if reason == FullReason::NoSpace {
                inner.st.enospc.fetch_add(1, Ordering::Relaxed);
            }
            if quota == Quota::Ignored {
                // Only the file system says no here. A drained log still
                // holds its active segment: free that and try once more.
                if core.floor >= core.disk_end && !core.segs.is_empty() {
                    inner.remove_segments_while(&mut core, |_, _| true)?;
                    continue;
                }
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
                    .add_dropped_newest(msgs.len() as u64, batch.payload_bytes);
                AppendOutcome {
                    first_seq: core.next_seq,
                    accepted: 0,
                    dropped_newest: msgs.len(),
                    dropped_oldest_msgs: dropped_oldest,
                    tier: None,
                }
            };
            match t.when_full {
                WhenFull::DropNewest => break (refuse(&core, dropped_oldest), None),
                WhenFull::DropOldest => match inner.drop_oldest(&mut core)? {
                    Some(n) => dropped_oldest += n,
                    None => break (refuse(&core, dropped_oldest), None),
                },
                WhenFull::Block => {
                    // A drained log still occupies its active segment.
                    if core.floor >= core.disk_end && !core.segs.is_empty() {
                        inner.remove_segments_while(&mut core, |_, _| true)?;
                        continue;
                    }
                    if !blocked {
                        blocked = true;
                        inner.st.blocked.fetch_add(1, Ordering::Relaxed);
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
            inner.notify();
        }
        if let Some(lsn) = lsn {
            match t.durability {
                Durability::Always => inner.wait_durable(lsn)?,
                Durability::Interval(d) => inner.maybe_interval_sync(d)?,
                Durability::Never => {}
            }
        }
        Ok(outcome)
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
        while core.mem_first < core.floor {
            let Some(m) = core.mem.pop_front() else {
                break;
            };
            core.mem_bytes -= m.data.len() as u64;
            core.mem_encoded -= encoded_len(&m.data);
            core.mem_first += 1;
        }
        let seg_size = inner.live().segment_size;
        let waiters = core.space_waiters > 0;
        // The unlinks happen under the lock; the directory fsync and the
        // cursor persist after it, so a producer appending meanwhile does
        // not wait for them (a crash in between only redelivers).
        let removed = inner.unlink_segments_while(&mut core, |core, i| {
            let end = core.segs.get(i + 1).map_or(core.disk_end, |s| s.first_seq);
            if end > core.floor {
                return false;
            }
            let is_active_last = i + 1 == core.segs.len() && core.active;
            // Keep a small drained active segment: deleting and recreating
            // it on every drain would cost two directory fsyncs each time.
            !is_active_last || waiters || core.segs[i].len >= seg_size / 8
        })?;
        let cursor = core.cursor();
        drop(core);
        inner.space_cv.notify_all();
        if removed > 0 {
            inner.sync_dir()?;
            inner.persist_cursor_unlocked(cursor)?;
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
        let skip = usize::try_from(from.saturating_sub(core.mem_first))
            .unwrap_or(usize::MAX)
            .min(core.mem.len());
        let kept: u64 = core
            .mem
            .iter()
            .take(skip)
            .map(|m| m.data.len() as u64)
            .sum();
        s.mem_msgs = (core.mem.len() - skip) as u64;
        s.mem_bytes = core.mem_bytes - kept;
        s.mem_reserved = core.mem_capacity;
        s.disk_msgs = disk_msgs(&core, from);
        s.disk_bytes = core.disk_bytes;
        s.segments = core.segs.len() as u64;
        s.next_seq = core.next_seq;
        s.ack_floor = from;
        s.retain_floor = core.floor;
        s.cursor_dirty = core.cursor_owed.is_some();
        s.poisoned = inner.poisoned.load(Ordering::Relaxed);
        let oldest_ms = if let Some(m) = core.mem.get(skip) {
            Some(m.ms)
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
        let mut core = lock(&inner.core);
        if core.closed {
            return Ok(());
        }
        core.closed = true;
        inner.space_cv.notify_all();
        if !core.mem.is_empty() {
            let not_written = |core: &Core, source: SpoolError| SpoolError::MemoryTierNotWritten {
                msgs: core.mem.len() as u64,
                bytes: core.mem_bytes,
                first_seq: core.mem_first,
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

/// Whether the disk tier holds unacknowledged messages (then appends go to
/// disk, to keep FIFO order across the tiers).
fn disk_pending(core: &Core) -> bool {
    !core.segs.is_empty() && core.disk_end > core.floor
}

/// Bytes a message takes in a record payload.
fn encoded_len(data: &[u8]) -> u64 {
    // Messages are at most `MAX_MESSAGE_LIMIT` (< u32::MAX) bytes.
    (varint_len(data.len() as u32) + data.len()) as u64
}

/// Messages on disk at or above `from` (at least the floor).
fn disk_msgs(core: &Core, from: u64) -> u64 {
    match core.segs.front() {
        Some(s) => core
            .disk_end
            .saturating_sub(from.max(core.floor).max(s.first_seq)),
        None => 0,
    }
}

/// Append time of (about) the oldest message on disk at or above `from`:
/// the latest index sample at or below it, at most 1 MiB of log early.
fn oldest_disk_ms(core: &Core, from: u64) -> Option<u64> {
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
    fn check_open(&self) -> Result<(), SpoolError> {
        if lock(&self.core).closed {
            return Err(SpoolError::Closed);
        }
        Ok(())
    }

    fn check_poison(&self) -> Result<(), SpoolError> {
        if self.poisoned.load(Ordering::Acquire) {
            let s = lock(&self.sync);
            return Err(SpoolError::Poisoned {
                cause: s.poison.clone().unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// Marks the spool unusable for writing. Must not be called with the
    /// sync lock held.
    fn poison(&self, cause: String) -> SpoolError {
        self.poisoned.store(true, Ordering::Release);
        let mut s = lock(&self.sync);
        if s.poison.is_none() {
            s.poison = Some(cause.clone());
        }
        drop(s);
        self.sync_cv.notify_all();
        SpoolError::Poisoned { cause }
    }

    /// Grows a reserve that open could not allocate in full, now and then
    /// (`reserve_retry`) and only while the disk tier holds nothing pending:
    /// only then does the memory tier take messages, and space the disk
    /// tier is waiting for is not taken from it. The writes run without the
    /// main lock (they can be `memory_limit` bytes).
    fn maybe_grow_reserve(&self) -> Result<(), SpoolError> {
        let target = self.live().memory_limit;
        // Someone truncated the reserve: the memory tier may only count on
        // what is still there, and growing it back is due now.
        let held = lock(&self.reserve_file).as_ref().map(|f| f.len());
        if let Some(Ok(len)) = held {
            let mut core = lock(&self.core);
            if len < core.mem_capacity {
                core.mem_capacity = len;
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
        lock(&self.core).mem_capacity = got;
        Ok(())
    }

    fn live(&self) -> Tunables {
        *self.live.read().unwrap_or_else(|e| e.into_inner())
    }

    fn fsync_enabled(&self) -> bool {
        self.live().durability != Durability::Never
    }

    fn notify(&self) {
        let f = self
            .notify
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(f) = f {
            f();
        }
    }

    /// fdatasync with latency accounting; a failure poisons the spool.
    fn timed_sync(&self, f: &dyn SegmentFile, path: &Path) -> Result<(), SpoolError> {
        let t = Instant::now();
        let r = f.sync_data();
        self.st.record_fsync(t.elapsed());
        r.map_err(|e| self.poison(format!("fsync {}: {e}", path.display())))
    }

    fn sync_dir(&self) -> Result<(), SpoolError> {
        if !self.fsync_enabled() {
            return Ok(());
        }
        let dir = &self.cfg.dir;
        self.fs
            .sync_dir(dir)
            .map_err(|e| self.poison(format!("fsync directory {}: {e}", dir.display())))
    }

    fn persist_cursor(&self, core: &mut Core) -> Result<(), SpoolError> {
        self.persist_cursor_with(core, self.fsync_enabled())
    }

    /// The periodic persist: the temp file is written and fsynced without
    /// the main lock, so appends and reads never wait for that fsync (under
    /// I/O load one can take hundreds of milliseconds, long enough for a
    /// producer's socket buffer to fill). Only the rename happens under the
    /// lock, and only if no newer cursor was persisted meanwhile by a
    /// locked path (segment deletion, `sync`, `close`), so the file never
    /// goes backwards. The directory fsync follows, again without the lock.
    fn persist_cursor_unlocked(&self, c: Cursor) -> Result<(), SpoolError> {
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
    fn persist_cursor_with(&self, core: &mut Core, durable: bool) -> Result<(), SpoolError> {
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
    fn cursor_no_space(&self, core: &mut Core, c: Cursor) {
        self.st
            .cursor_write_failures
            .fetch_add(1, Ordering::Relaxed);
        core.owe_cursor(c);
    }

    fn push_mem(&self, core: &mut Core, batch: EncodedBatch) -> u64 {
        let first = core.next_seq;
        if core.mem.is_empty() {
            core.mem_first = first;
        }
        let ms = now_ms();
        core.mem_encoded += batch.encoded_payload();
        let buf = batch.buf.freeze();
        for span in &batch.spans {
            let start = span.start + crate::format::RECORD_HEADER_LEN;
            let len = crate::format::le_u32(&buf[span.start..span.start + 4]) as usize;
            let payload = buf.slice(start..start + len);
            split_payload(&payload, span.count, |data| {
                core.mem.push_back(MemMsg { data, ms });
            });
        }
        core.mem_bytes += batch.payload_bytes;
        core.next_seq += batch.msgs as u64;
        first
    }

    /// Group commit: returns once `lsn` is durable. The first waiter to find
    /// no fsync in flight becomes the leader: it fsyncs a shared handle of
    /// the active segment *without* the main lock (so appends continue), then
    /// wakes everyone its fsync covered; the rest wait for the next round.
    fn wait_durable(&self, lsn: u64) -> Result<(), SpoolError> {
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
            let res = match (file, path) {
                (Some(f), Some(p)) => {
                    let t = Instant::now();
                    let r = f.sync_data();
                    self.st.record_fsync(t.elapsed());
                    r.map_err(|e| format!("fsync {}: {e}", p.display()))
                }
                // Everything written before a roll was synced by the roll.
                _ => Ok(()),
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
            s.durable_lsn = s.durable_lsn.max(target);
            s.last_sync = Instant::now();
            self.sync_cv.notify_all();
        }
    }

    fn maybe_interval_sync(&self, every: Duration) -> Result<(), SpoolError> {
        let target = self.written.load(Ordering::Acquire);
        {
            let s = lock(&self.sync);
            if s.durable_lsn >= target || s.syncing || s.last_sync.elapsed() < every {
                return Ok(());
            }
        }
        self.wait_durable(target)
    }

    /// Seals the active segment: fsync so that group commit
    /// only ever has to sync the newest segment.
    fn seal_active(&self, core: &mut Core) -> Result<(), SpoolError> {
        if !core.active {
            return Ok(());
        }
        // Even under `Never`: once per segment is cheap, and it means only
        // the last segment can ever have a torn tail, which is what lets
        // open trust every other segment without reading it.
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

    /// Creates the segment whose first message will be `seq`; `Ok(false)` on
    /// ENOSPC (nothing left behind).
    fn create_segment(&self, core: &mut Core, seq: u64) -> Result<bool, SpoolError> {
        let path = self.cfg.dir.join(segment_file_name(seq));
        let file = match self.fs.create(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // A leftover of a failed earlier attempt holding no records.
                self.fs
                    .remove(&path)
                    .map_err(|e| SpoolError::io("remove", &path, e))?;
                self.fs
                    .create(&path)
                    .map_err(|e| SpoolError::io("create", &path, e))?
            }
            Err(e) if is_no_space(&e) => return Ok(false),
            Err(e) => return Err(SpoolError::io("create", path, e)),
        };
        let created_ms = now_ms();
        let header = SegmentHeader {
            first_seq: seq,
            created_ms,
        }
        .encode();
        if let Err((e, _)) = write_all_at(&*file, &header, 0) {
            drop(file);
            let _ = self.fs.remove(&path);
            if is_no_space(&e) {
                return Ok(false);
            }
            return Err(SpoolError::io("write", path, e));
        }
        self.sync_dir()?;
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

    fn write_disk(
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
            self.seal_active(core)?;
            if !self.create_segment(core, core.next_seq)? {
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
        })
    }

    /// Removes segments from the front while `pred(core, index)` holds,
    /// then fsyncs the directory and persists the cursor.
    fn remove_segments_while(
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
    fn unlink_segments_while(
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
    fn drop_oldest(&self, core: &mut Core) -> Result<Option<u64>, SpoolError> {
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

    /// Close: writes the memory tier as a complete segment named by its
    /// first seq, via a temp file + rename so a crash cannot leave a torn
    /// segment in the middle of the log.
    fn flush_mem(&self, core: &mut Core) -> Result<(), SpoolError> {
        let first = core.mem_first;
        let oldest_ms = core.mem.front().map_or_else(now_ms, |m| m.ms);
        let mut batch = encode_batch_owned(&core.mem);
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
        core.mem_bytes = 0;
        core.mem_encoded = 0;
        Ok(())
    }

    fn read(
        &self,
        from: u64,
        max_msgs: usize,
        max_bytes: usize,
    ) -> Result<Vec<Message>, SpoolError> {
        let mut out: Vec<Message> = Vec::new();
        let mut bytes = 0usize;
        let mut pos = from;
        let full = |out: &Vec<Message>, bytes: usize| {
            out.len() >= max_msgs || (!out.is_empty() && bytes >= max_bytes)
        };
        if max_msgs == 0 {
            return Ok(out);
        }
        loop {
            // Plan under the lock; do the disk I/O outside it.
            let plan = {
                let mut core = lock(&self.core);
                if core.closed {
                    return Err(SpoolError::Closed);
                }
                pos = pos.max(core.floor);
                if pos >= core.next_seq {
                    break;
                }
                let mem_end = core.mem_first + core.mem.len() as u64;
                if !core.mem.is_empty() && pos >= core.mem_first && pos < mem_end {
                    let mut i = (pos - core.mem_first) as usize;
                    while let Some(m) = core.mem.get(i) {
                        if full(&out, bytes) {
                            break;
                        }
                        bytes += m.data.len();
                        out.push(Message {
                            seq: pos,
                            data: m.data.clone(),
                            append_ms: m.ms,
                        });
                        pos += 1;
                        i += 1;
                    }
                    if full(&out, bytes) {
                        break;
                    }
                    continue;
                }
                let Some(front) = core.segs.front() else {
                    break;
                };
                if pos < front.first_seq {
                    // Only reachable if seqs between the floor and the log
                    // are gone (lost memory tier after a crash is handled at
                    // open); skip to what exists.
                    pos = front.first_seq;
                }
                if pos >= core.disk_end {
                    break;
                }
                let idx = core.segs.partition_point(|s| s.first_seq <= pos) - 1;
                let next_first = core.segs.get(idx + 1).map(|s| s.first_seq);
                let seg_end_seq = next_first.unwrap_or(core.disk_end);
                let hint = core.read_hint;
                let seg = &mut core.segs[idx];
                let file = match &seg.file {
                    Some(f) => f.clone(),
                    None => {
                        let f = self
                            .fs
                            .open(&seg.path, false)
                            .map_err(|e| SpoolError::io("open", &seg.path, e))?;
                        seg.file = Some(f.clone());
                        f
                    }
                };
                let mut start = IndexEntry {
                    seq: seg.first_seq,
                    offset: SEGMENT_HEADER_LEN,
                    ms: 0,
                };
                let i = seg.index.partition_point(|e| e.seq <= pos);
                if let Some(e) = i.checked_sub(1).and_then(|i| seg.index.get(i)) {
                    start = *e;
                }
                if let Some((hs, h)) = hint {
                    if hs == seg.first_seq && h.seq <= pos && h.seq >= start.seq {
                        start = h;
                    }
                }
                (
                    file,
                    seg.path.clone(),
                    seg.first_seq,
                    start,
                    seg.len,
                    seg_end_seq,
                    next_first,
                )
            };
            let (file, path, seg_first, start, end_off, seg_end_seq, next_first) = plan;
            let mut sc = SegmentReader::new(&*file, start.offset, end_off, start.seq);
            let mut resume = start;
            let corrupt = |offset: u64, detail: String| SpoolError::Corrupt {
                segment: path.clone(),
                offset,
                detail,
            };
            loop {
                if full(&out, bytes) {
                    break;
                }
                match sc
                    .next_record()
                    .map_err(|e| SpoolError::io("read", &path, e))?
                {
                    Scan::Gap {
                        offset,
                        expected,
                        found,
                    } => return Err(corrupt(offset, gap_detail(expected, found))),
                    Scan::Record {
                        offset,
                        header,
                        payload,
                    } => {
                        let expect = header.end_seq();
                        if expect > pos {
                            let mut seq = header.first_seq;
                            let mut next = pos;
                            let append_ms = header.append_ms;
                            split_payload(&payload, header.count, |data| {
                                if seq >= next && !full(&out, bytes) {
                                    bytes += data.len();
                                    out.push(Message {
                                        seq,
                                        data,
                                        append_ms,
                                    });
                                    next = seq + 1;
                                }
                                seq += 1;
                            });
                            pos = next;
                        }
                        resume = if pos >= expect {
                            IndexEntry {
                                seq: expect,
                                offset: sc.pos,
                                ms: header.append_ms,
                            }
                        } else {
                            // Stopped inside this record: resume at its start.
                            IndexEntry {
                                seq: header.first_seq,
                                offset,
                                ms: header.append_ms,
                            }
                        };
                    }
                    Scan::End => {
                        let expect = sc.next_seq;
                        if expect != seg_end_seq {
                            let detail = match next_first {
                                Some(n) => format!(
                                    "segment ends at seq {expect} but the next segment starts at {n} (missing or truncated segment)"
                                ),
                                None => format!(
                                    "segment ends at seq {expect}, the log should end at {seg_end_seq}"
                                ),
                            };
                            return Err(corrupt(end_off, detail));
                        }
                        pos = pos.max(expect);
                        break;
                    }
                    Scan::Bad { offset, check } => {
                        return Err(corrupt(offset, format!("bad record: {check:?}")));
                    }
                }
            }
            self.st
                .bytes_read
                .fetch_add(sc.bytes_read, Ordering::Relaxed);
            {
                let mut core = lock(&self.core);
                core.read_hint = Some((seg_first, resume));
            }
            if full(&out, bytes) {
                break;
            }
        }
        Ok(out)
    }
}

fn encode_batch_owned(mem: &VecDeque<MemMsg>) -> EncodedBatch {
    encode_batch(mem.iter().map(|m| &m.data[..]))
}
