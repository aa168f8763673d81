//! Counters exported for metrics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// A snapshot of the spool's numbers. Counters are totals since open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Messages / message bytes in the memory tier.
    pub mem_msgs: u64,
    pub mem_bytes: u64,
    /// Unacknowledged messages in the disk tier, and the tier's file bytes
    /// (what `max_disk` bounds; includes acked data in undeleted segments).
    pub disk_msgs: u64,
    pub disk_bytes: u64,
    pub segments: u64,
    pub next_seq: u64,
    pub ack_floor: u64,
    /// Age of the oldest unacknowledged message (for the disk tier, measured
    /// from a record at most about 1 MiB of log before it: an upper bound).
    pub oldest_age: Option<Duration>,
    /// Bytes written to / read from segment files.
    pub bytes_written: u64,
    pub bytes_read: u64,
    /// Data fsyncs and their latency.
    pub fsyncs: u64,
    pub fsync_total: Duration,
    pub fsync_last: Duration,
    pub fsync_max: Duration,
    /// Torn-tail truncation at open: records and bytes removed.
    pub truncated_records: u64,
    pub truncated_bytes: u64,
    /// `WhenFull::DropOldest`: unacked messages (and their bytes) deleted.
    pub dropped_oldest_msgs: u64,
    pub dropped_oldest_bytes: u64,
    /// Batches refused (`DropNewest`, or `DropOldest` with nothing to drop).
    pub dropped_newest_msgs: u64,
    pub dropped_newest_bytes: u64,
    /// Appends that had to wait for space (`WhenFull::Block`).
    pub blocked: u64,
    /// Appends that failed with `SpoolError::Full` after waiting.
    pub full_errors: u64,
    /// Writes that hit ENOSPC/EDQUOT.
    pub enospc: u64,
    pub segments_deleted: u64,
    pub poisoned: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub bytes_written: AtomicU64,
    pub bytes_read: AtomicU64,
    pub fsyncs: AtomicU64,
    pub fsync_total_ns: AtomicU64,
    pub fsync_last_ns: AtomicU64,
    pub fsync_max_ns: AtomicU64,
    pub truncated_records: AtomicU64,
    pub truncated_bytes: AtomicU64,
    pub dropped_oldest_msgs: AtomicU64,
    pub dropped_oldest_bytes: AtomicU64,
    pub dropped_newest_msgs: AtomicU64,
    pub dropped_newest_bytes: AtomicU64,
    pub blocked: AtomicU64,
    pub full_errors: AtomicU64,
    pub enospc: AtomicU64,
    pub segments_deleted: AtomicU64,
}

impl Counters {
    pub fn record_fsync(&self, d: Duration) {
        let ns = d.as_nanos().min(u128::from(u64::MAX)) as u64;
        self.fsyncs.fetch_add(1, Relaxed);
        self.fsync_total_ns.fetch_add(ns, Relaxed);
        self.fsync_last_ns.store(ns, Relaxed);
        self.fsync_max_ns.fetch_max(ns, Relaxed);
    }
    pub fn add_dropped_oldest(&self, msgs: u64, bytes: u64) {
        self.dropped_oldest_msgs.fetch_add(msgs, Relaxed);
        self.dropped_oldest_bytes.fetch_add(bytes, Relaxed);
    }
    pub fn add_dropped_newest(&self, msgs: u64, bytes: u64) {
        self.dropped_newest_msgs.fetch_add(msgs, Relaxed);
        self.dropped_newest_bytes.fetch_add(bytes, Relaxed);
    }
    pub fn snapshot(&self) -> SpoolStats {
        SpoolStats {
            bytes_written: self.bytes_written.load(Relaxed),
            bytes_read: self.bytes_read.load(Relaxed),
            fsyncs: self.fsyncs.load(Relaxed),
            fsync_total: Duration::from_nanos(self.fsync_total_ns.load(Relaxed)),
            fsync_last: Duration::from_nanos(self.fsync_last_ns.load(Relaxed)),
            fsync_max: Duration::from_nanos(self.fsync_max_ns.load(Relaxed)),
            truncated_records: self.truncated_records.load(Relaxed),
            truncated_bytes: self.truncated_bytes.load(Relaxed),
            dropped_oldest_msgs: self.dropped_oldest_msgs.load(Relaxed),
            dropped_oldest_bytes: self.dropped_oldest_bytes.load(Relaxed),
            dropped_newest_msgs: self.dropped_newest_msgs.load(Relaxed),
            dropped_newest_bytes: self.dropped_newest_bytes.load(Relaxed),
            blocked: self.blocked.load(Relaxed),
            full_errors: self.full_errors.load(Relaxed),
            enospc: self.enospc.load(Relaxed),
            segments_deleted: self.segments_deleted.load(Relaxed),
            ..SpoolStats::default()
        }
    }
}
