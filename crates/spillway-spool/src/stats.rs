//! Counters exported for metrics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// A snapshot of the spool's numbers. Counters are totals since open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Messages / message bytes in the memory tier.
    pub mem_msgs: u64,
    pub mem_bytes: u64,
    /// Disk space held in reserve for the memory tier, which is also its
    /// capacity (counted as bytes on disk). Below `memory_limit` when the
    /// disk was too full to reserve it all.
    pub mem_reserved: u64,
    /// `mem_reserved` is below `memory_limit` for lack of disk space (not
    /// a larger limit from a reload waiting for the disk tier to drain).
    pub mem_reserve_short: bool,
    /// Unacknowledged messages in the disk tier, and the tier's file bytes
    /// (what `max_disk` bounds; includes acked data in undeleted segments).
    pub disk_msgs: u64,
    pub disk_bytes: u64,
    pub segments: u64,
    pub next_seq: u64,
    /// Everything below was delivered (see `Spool::mark_delivered`); depth
    /// and age count from here.
    pub ack_floor: u64,
    /// Everything below was acknowledged and may be deleted; between the
    /// two floors, delivered messages kept for redelivery.
    pub retain_floor: u64,
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
    /// Data fsync latency, bucketed by [`FSYNC_BUCKETS`].
    pub fsync_latency: HistogramSnapshot,
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
    /// Cursor persists that met a full disk (`ENOSPC`/`EDQUOT`). Each left
    /// the previous cursor file in place: not an error, but after a crash
    /// the acknowledgements since then are redelivered. Log it rate-limited.
    pub cursor_write_failures: u64,
    /// The cursor file is behind what a persist owed it (one met a full
    /// disk, or was skipped while another ran); `tick` persists at its next
    /// call until one succeeds.
    pub cursor_dirty: bool,
    pub poisoned: bool,
}

#[derive(Debug)]
pub(crate) struct Counters {
    pub fsync_latency: Histogram,
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
    pub cursor_write_failures: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            fsync_latency: Histogram::new(FSYNC_BUCKETS),
            bytes_written: AtomicU64::default(),
            bytes_read: AtomicU64::default(),
            fsyncs: AtomicU64::default(),
            fsync_total_ns: AtomicU64::default(),
            fsync_last_ns: AtomicU64::default(),
            fsync_max_ns: AtomicU64::default(),
            truncated_records: AtomicU64::default(),
            truncated_bytes: AtomicU64::default(),
            dropped_oldest_msgs: AtomicU64::default(),
            dropped_oldest_bytes: AtomicU64::default(),
            dropped_newest_msgs: AtomicU64::default(),
            dropped_newest_bytes: AtomicU64::default(),
            blocked: AtomicU64::default(),
            full_errors: AtomicU64::default(),
            enospc: AtomicU64::default(),
            segments_deleted: AtomicU64::default(),
            cursor_write_failures: AtomicU64::default(),
        }
    }
}

impl Counters {
    pub fn record_fsync(&self, d: Duration) {
        let ns = d.as_nanos().min(u128::from(u64::MAX)) as u64;
        self.fsyncs.fetch_add(1, Relaxed);
        self.fsync_total_ns.fetch_add(ns, Relaxed);
        self.fsync_last_ns.store(ns, Relaxed);
        self.fsync_max_ns.fetch_max(ns, Relaxed);
        self.fsync_latency.observe(d);
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
            fsync_latency: self.fsync_latency.snapshot(),
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
            cursor_write_failures: self.cursor_write_failures.load(Relaxed),
            ..SpoolStats::default()
        }
    }
}

/// Bucket upper bounds (seconds) of [`SpoolStats::fsync_latency`].
pub const FSYNC_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A latency histogram with fixed bucket bounds, updated with relaxed
/// atomics (no lock on the recording path), for Prometheus export.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, plus the overflow (+Inf) bucket. Not cumulative.
    counts: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

/// A point-in-time copy of a [`Histogram`].
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, count in this bucket)`, not cumulative; the
    /// last bound is `f64::INFINITY`.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    /// Sum of the observed values, in seconds.
    pub sum: f64,
}

impl Default for HistogramSnapshot {
    fn default() -> Self {
        HistogramSnapshot {
            buckets: vec![(f64::INFINITY, 0)],
            count: 0,
            sum: 0.0,
        }
    }
}

impl Eq for HistogramSnapshot {}

impl Histogram {
    /// `bounds` are the buckets' upper bounds in seconds, ascending.
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Index of the bucket `d` falls in (for [`Histogram::record_counts`]).
    pub fn bucket_of(&self, d: Duration) -> usize {
        let secs = d.as_secs_f64();
        self.bounds.partition_point(|&b| b < secs)
    }

    /// Number of buckets, the overflow bucket included.
    pub fn buckets(&self) -> usize {
        self.counts.len()
    }

    pub fn observe(&self, d: Duration) {
        let i = self.bucket_of(d);
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(saturating_ns(d), Relaxed);
    }

    /// Adds counts gathered locally (indexed by [`Histogram::bucket_of`])
    /// and their sum in one go: a hot path tallies a batch in a local array
    /// and touches the shared atomics once per batch, not once per value.
    pub fn record_counts(&self, counts: &[u64], sum: Duration) {
        for (c, &n) in self.counts.iter().zip(counts) {
            if n > 0 {
                c.fetch_add(n, Relaxed);
            }
        }
        self.sum_ns.fetch_add(saturating_ns(sum), Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().map(|c| c.load(Relaxed)))
            .collect();
        HistogramSnapshot {
            count: buckets.iter().map(|b| b.1).sum(),
            buckets,
            sum: Duration::from_nanos(self.sum_ns.load(Relaxed)).as_secs_f64(),
        }
    }
}

fn saturating_ns(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_by_upper_bound() {
        static B: &[f64] = &[0.001, 0.01];
        let h = Histogram::new(B);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1)); // on the bound: le="0.001"
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(3));
        let mut local = vec![0; h.buckets()];
        local[h.bucket_of(Duration::from_millis(2))] += 2;
        h.record_counts(&local, Duration::from_millis(4));
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(0.001, 2), (0.01, 3), (f64::INFINITY, 1)]);
        assert_eq!(s.count, 6);
        assert!((s.sum - 3.0105).abs() < 1e-9, "{}", s.sum);
    }
}
