//! Spool configuration.

use std::path::PathBuf;
use std::time::Duration;

/// When an append is reported durable, and therefore what it survives.
///
/// All three survive a clean [`close`](crate::Spool::close) and a crash of
/// the process alone (data written to the kernel is not lost when the process
/// dies). They differ on power loss or a kernel crash:
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `append` returns only after an fdatasync covering the batch
    /// (concurrent appends share one: group commit). Survives power loss:
    /// nothing that `append` accepted into the disk tier is lost.
    Always,
    /// fdatasync at most this long after a write (driven by `tick` and by
    /// later appends). Power loss loses at most about this much of the
    /// latest writes.
    Interval(Duration),
    /// Never fdatasync except at close; the kernel writes back when it likes.
    /// Power loss can lose any unsynced suffix of the log.
    Never,
}

/// What an append does when the disk tier has no room (`max_disk` reached,
/// or the file system returned `ENOSPC`/`EDQUOT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Wait until acknowledgements free space (the caller stops reading its
    /// source: backpressure, the last resort), up to `block_timeout`.
    Block,
    /// Delete the oldest unacknowledged data, whole segments at a time,
    /// to make room. Counted in `SpoolStats::dropped_oldest_*`.
    DropOldest,
    /// Refuse the new batch. Counted in `SpoolStats::dropped_newest_*`.
    DropNewest,
}

/// Default memory tier of [`SpoolConfig::new`]: 64 MiB.
pub const DEFAULT_MEMORY_LIMIT: u64 = 64 << 20;
/// Default segment size of [`SpoolConfig::new`]: 64 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;
/// Default largest message of [`SpoolConfig::new`]: 1 MiB.
pub const DEFAULT_MAX_MESSAGE: u32 = 1 << 20;
/// Default fsync interval of [`SpoolConfig::new`]
/// (`Durability::Interval(DEFAULT_FSYNC_INTERVAL)`): 100 ms.
pub const DEFAULT_FSYNC_INTERVAL: Duration = Duration::from_millis(100);

/// Spool settings. Build with [`SpoolConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// Directory holding segments and the cursor file (created if missing).
    /// One spool per directory; two processes must not open the same one.
    pub dir: PathBuf,
    /// Size of the memory tier, counted as the bytes it takes on disk once
    /// `close` writes it out as a segment (messages, their length varints,
    /// record and segment headers): the spool holds a reserve file of this
    /// size in `dir` while it is open, so that `close` can always write the
    /// memory tier (see the crate docs). 0 = no memory tier, no reserve:
    /// every message goes to disk before `append` returns.
    pub memory_limit: u64,
    /// Bound on the disk tier's file bytes (0 = unlimited). When set,
    /// `segment_size` is lowered to at most a quarter of it so that space can
    /// be freed in steps smaller than the bound.
    pub max_disk: u64,
    /// Behaviour at `max_disk` or on a full file system.
    pub when_full: WhenFull,
    /// fsync policy; see [`Durability`].
    pub durability: Durability,
    /// A segment rolls over once it holds this many bytes.
    pub segment_size: u64,
    /// Largest single message accepted (at most 256 MiB).
    pub max_message: u32,
    /// Longest an append waits under `WhenFull::Block` before failing with
    /// `SpoolError::Full`; `None` waits until space is freed or the spool is
    /// closed.
    pub block_timeout: Option<Duration>,
    /// How often `tick` persists a changed consumer cursor. Acknowledgements
    /// newer than the last persist are redelivered after a crash.
    pub cursor_interval: Duration,
    /// When the reserve for the memory tier could not be allocated in full
    /// (full disk), how often `tick` tries to grow it (only while the disk
    /// tier holds nothing pending: that is when the memory tier is used,
    /// and the disk tier never loses space to it).
    pub reserve_retry: Duration,
}

impl SpoolConfig {
    /// Defaults: a [`DEFAULT_MEMORY_LIMIT`] memory tier, unlimited disk,
    /// block when full, fsync every [`DEFAULT_FSYNC_INTERVAL`],
    /// [`DEFAULT_SEGMENT_SIZE`] segments, [`DEFAULT_MAX_MESSAGE`] messages,
    /// 1 s cursor persistence, 10 s between attempts to grow a short reserve.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SpoolConfig {
            dir: dir.into(),
            memory_limit: DEFAULT_MEMORY_LIMIT,
            max_disk: 0,
            when_full: WhenFull::Block,
            durability: Durability::Interval(DEFAULT_FSYNC_INTERVAL),
            segment_size: DEFAULT_SEGMENT_SIZE,
            max_message: DEFAULT_MAX_MESSAGE,
            block_timeout: None,
            cursor_interval: Duration::from_secs(1),
            reserve_retry: Duration::from_secs(10),
        }
    }
}
