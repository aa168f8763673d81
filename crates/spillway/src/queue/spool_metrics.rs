//! A queue route's spool, as metric families: read from one
//! [`SpoolStats`] snapshot per scrape. The spool crate keeps its counters
//! and knows nothing of metrics; these families are its view.

use spillway_spool::{SpoolStats, Tier};

use crate::metrics::{Family, Registry, Scrape};

/// Why queued messages were dropped (a label): the `when_full` policy
/// that dropped them at the disk bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DropReason {
    /// `when_full = drop-newest`: refused at the disk bound.
    DropNewest,
    /// `when_full = drop-oldest`: deleted unread at the disk bound.
    DropOldest,
}

impl DropReason {
    const ALL: [DropReason; 2] = [DropReason::DropNewest, DropReason::DropOldest];

    fn as_str(self) -> &'static str {
        match self {
            DropReason::DropNewest => "drop_newest",
            DropReason::DropOldest => "drop_oldest",
        }
    }

    fn messages(self, sp: &SpoolStats) -> u64 {
        match self {
            DropReason::DropNewest => sp.dropped_newest_msgs,
            DropReason::DropOldest => sp.dropped_oldest_msgs,
        }
    }
}

static MESSAGES_DROPPED: Family = Family::counter(
    "spillway_messages_dropped",
    "Messages dropped at the disk bound, by reason.",
);
static QUEUE_DEPTH_MESSAGES: Family = Family::gauge(
    "spillway_queue_depth_messages",
    "Messages queued, not yet delivered, by tier.",
);
static QUEUE_DEPTH_BYTES: Family = Family::gauge(
    "spillway_queue_depth_bytes",
    "Queue bytes by tier: memory = queued message bytes; disk = segment file bytes (includes delivered messages in segments not yet deleted).",
);
static OLDEST_MESSAGE_AGE: Family = Family::gauge(
    "spillway_queue_oldest_message_age_seconds",
    "Age of the oldest undelivered message (0 when empty).",
);
static CURSOR_WRITE_FAILURES: Family = Family::counter(
    "spillway_spool_cursor_write_failures",
    "Consumer-position (cursor) writes refused by a full disk; the last saved position is kept and the write retried.",
);
static WRITTEN_BYTES: Family = Family::counter(
    "spillway_spool_written_bytes",
    "Bytes written to segment files.",
);
static READ_BYTES: Family = Family::counter(
    "spillway_spool_read_bytes",
    "Bytes read back from segment files.",
);
static BLOCKED_APPENDS: Family = Family::counter(
    "spillway_spool_blocked_appends",
    "Appends that waited for space (when_full = block).",
);
static ENOSPC: Family = Family::counter(
    "spillway_spool_enospc",
    "Segment writes that hit ENOSPC/EDQUOT.",
);
static TRUNCATED_BYTES: Family = Family::counter(
    "spillway_spool_truncated_bytes",
    "Torn-tail bytes truncated by recovery at open.",
);
static SEGMENTS_DELETED: Family = Family::counter(
    "spillway_spool_segments_deleted",
    "Fully delivered segments deleted.",
);
static SEGMENTS: Family = Family::gauge("spillway_spool_segments", "Segment files on disk.");
static MEMORY_RESERVED_BYTES: Family = Family::gauge(
    "spillway_spool_memory_reserved_bytes",
    "Disk space reserved for writing the memory tier out at shutdown: the memory tier's capacity (below `memory` when the disk was too full to reserve it all).",
);
static POISONED: Family = Family::gauge(
    "spillway_spool_poisoned",
    "1 when the spool stopped after a failed fsync or write.",
);
static FSYNC_DURATION: Family = Family::histogram(
    "spillway_spool_fsync_duration_seconds",
    "Data fsync (fdatasync) latency.",
);

/// A family with one series per route, read straight from the snapshot.
type Simple = (&'static Family, fn(&SpoolStats) -> u64);

const COUNTERS: [Simple; 7] = [
    (&CURSOR_WRITE_FAILURES, |s| s.cursor_write_failures),
    (&WRITTEN_BYTES, |s| s.bytes_written),
    (&READ_BYTES, |s| s.bytes_read),
    (&BLOCKED_APPENDS, |s| s.blocked),
    (&ENOSPC, |s| s.enospc),
    (&TRUNCATED_BYTES, |s| s.truncated_bytes),
    (&SEGMENTS_DELETED, |s| s.segments_deleted),
];

const GAUGES: [Simple; 3] = [
    (&SEGMENTS, |s| s.segments),
    (&MEMORY_RESERVED_BYTES, |s| s.mem_reserved),
    (&POISONED, |s| u64::from(s.poisoned)),
];

/// The spool's families, in `/metrics` order.
static FAMILIES: [&Family; 15] = [
    &MESSAGES_DROPPED,
    &QUEUE_DEPTH_MESSAGES,
    &QUEUE_DEPTH_BYTES,
    &OLDEST_MESSAGE_AGE,
    &CURSOR_WRITE_FAILURES,
    &WRITTEN_BYTES,
    &READ_BYTES,
    &BLOCKED_APPENDS,
    &ENOSPC,
    &TRUNCATED_BYTES,
    &SEGMENTS_DELETED,
    &SEGMENTS,
    &MEMORY_RESERVED_BYTES,
    &POISONED,
    &FSYNC_DURATION,
];

pub fn declare(registry: &mut Registry) {
    registry.declare(&FAMILIES);
}

/// Writes the series of the spool of route `route`.
pub fn collect(s: &mut Scrape, route: &str, sp: &SpoolStats) {
    for reason in DropReason::ALL {
        s.counter(
            &MESSAGES_DROPPED,
            &[("route", route), ("reason", reason.as_str())],
            reason.messages(sp),
        );
    }
    for tier in Tier::ALL {
        let labels = [("route", route), ("tier", tier.as_str())];
        let (msgs, bytes) = match tier {
            Tier::Memory => (sp.mem_msgs, sp.mem_bytes),
            Tier::Disk => (sp.disk_msgs, sp.disk_bytes),
        };
        s.gauge(&QUEUE_DEPTH_MESSAGES, &labels, msgs);
        s.gauge(&QUEUE_DEPTH_BYTES, &labels, bytes);
    }
    let r = [("route", route)];
    let age = sp.oldest_age.map_or(0.0, |d| d.as_secs_f64());
    s.gauge_f(&OLDEST_MESSAGE_AGE, &r, age);
    for (family, read) in COUNTERS {
        s.counter(family, &r, read(sp));
    }
    for (family, read) in GAUGES {
        s.gauge(family, &r, read(sp));
    }
    s.histogram(&FSYNC_DURATION, &r, sp.fsync_latency.clone());
}
