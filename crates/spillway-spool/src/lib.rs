//! spillway's queue engine: one strictly FIFO queue of opaque byte messages,
//! a bounded memory tier in front of a durable segmented log. No networking,
//! no async: every call is synchronous `std::fs` I/O (run it on a blocking
//! thread), the async route wraps it.
//!
//! # Semantics
//!
//! * Messages get consecutive 64-bit sequence numbers. Consumers
//!   [`read`](Spool::read) from a position and [`ack`](Spool::ack) up to a
//!   sequence number; everything below the ack floor is gone.
//! * **Tiers.** A batch goes to the memory tier while the disk tier holds no
//!   unacknowledged message and the memory tier stays under `memory_limit`.
//!   Otherwise it goes to disk, and every later batch too until the disk tier
//!   drains, so order is never broken between tiers (memory always holds the
//!   older messages). `memory_limit = 0` puts every message on disk before
//!   `append` returns. [`close`](Spool::close) writes the memory tier to disk.
//! * **The memory tier's disk space is reserved.** The memory tier takes no
//!   disk space while it fills, so a full disk would only show at close,
//!   losing the whole tier on a graceful shutdown. So at open the spool
//!   allocates a `reserve` file in its directory (real blocks, with
//!   `fallocate(2)` or by writing filler where that is not supported; not a
//!   sparse file), and the memory tier admits a batch only if
//!   the segment `close` would write (segment header, record headers,
//!   length varints, messages) still fits it; `memory_limit` is counted in
//!   those bytes on disk. `close` deletes the reserve, then writes the
//!   memory tier into the space it freed. The cost: an open spool holds
//!   `memory_limit` bytes of disk beyond `max_disk` (which bounds the
//!   segments only). If the disk cannot
//!   hold the reserve at open, the memory tier shrinks to what could be
//!   reserved (0: every message goes to disk), as reported in
//!   [`RecoveryReport::memory_reserved`] and `SpoolStats::mem_reserved`;
//!   `tick` tries to grow it every `reserve_retry` while the disk tier is
//!   empty. A crash leaves the reserve behind and the next open reuses it.
//!   Only another writer taking the freed space between the delete and the
//!   write can still make `close` fail, and then
//!   [`SpoolError::MemoryTierNotWritten`] says which messages were lost. On
//!   copy-on-write file systems (btrfs, ZFS) freed space may show up late,
//!   so the guarantee is weaker there.
//! * **Durability** is per [`Durability`]: `Always` (group commit: appends
//!   that arrive while an fdatasync runs share the next one), `Interval`,
//!   `Never`. The memory tier is volatile under every policy. A failed fsync
//!   poisons the spool ([`SpoolError::Poisoned`]): the kernel may have
//!   dropped the dirty pages, so no later write may be called durable.
//! * **Full disk.** `max_disk` bounds the log; [`WhenFull`] chooses blocking,
//!   dropping the oldest segments or refusing the batch. `ENOSPC`/`EDQUOT`
//!   from the file system are handled the same way (the partial write is cut
//!   back); appends succeed again once space returns.
//! * **Recovery.** Open scans only the last segment (all others were
//!   fsynced when they were sealed, so they are trusted): a torn or corrupt
//!   tail with no valid record after it is truncated and reported in the
//!   [`RecoveryReport`]. Damage anywhere else is
//!   [`SpoolError::Corrupt`] naming the segment and offset; nothing is ever
//!   skipped silently. Open time is proportional to the last segment.
//! * **Cursor.** The ack floor is persisted atomically (temp file, fsync,
//!   rename, fsync directory) when segments are deleted, every
//!   `cursor_interval` via [`tick`](Spool::tick), on [`sync`](Spool::sync)
//!   and on close. After a crash, messages acknowledged after the last
//!   persist are delivered again: duplicates, never loss. A full disk
//!   (`ENOSPC`/`EDQUOT`) while persisting the cursor is therefore not an
//!   error anywhere (`tick`, `ack`, `sync`, `close`, open): the previous
//!   cursor file stays, the failure is counted
//!   (`SpoolStats::cursor_write_failures`, `cursor_dirty`) and `tick`
//!   retries until a persist succeeds. Recovery reads a stale cursor
//!   correctly: a floor below the first segment starts at that segment, and
//!   over an empty log numbering resumes at the cursor's `next_seq` (numbers
//!   of acknowledged messages may be handed out again). A failed fsync is
//!   still an error.
//! * After a crash, sequence numbers of messages that were lost (memory
//!   tier, unsynced tail) can be reused by new messages.
//!
//! # On-disk format (version 1)
//!
//! A spool directory holds segment files named by the sequence number of
//! their first message, zero-padded to 20 digits
//! (`00000000000000000042.seg`), one `cursor` file, the `LOCK` file and,
//! while the spool is open (or after a crash), the `reserve` file (blocks
//! holding space for the memory tier, no data; not part of the log, ignored by
//! recovery, `inspect`, `verify` and `dump`), and usually a spare, `next.0.seg.spare` or `next.1.seg.spare`:
//! the next segment, created empty ahead of a roll. From a roll until the
//! segment before it is sealed (fsynced), the new segment is written under
//! that name, then renamed to its own; a crash in between leaves it
//! there, and the next open renames it into the log if its header
//! continues the last segment exactly, or removes it (the offline tools
//! do not read it). A roll with no unsealed segment before it names the
//! new segment at once, so a spare with records always follows a named
//! segment. Segments are
//! contiguous: each one ends where the next one's name begins, and records
//! carry their own sequence numbers, so the log describes itself and no
//! separately-synced write position exists.
//!
//! ```text
//! segment  := header record*
//! header   (32 bytes)
//!   0    8  magic        "SPILLSEG"
//!   8    4  version      u32 LE = 1
//!   12   4  header_crc   u32 LE  CRC32C(bytes 0..12 ++ bytes 16..32)
//!   16   8  first_seq    u64 LE  = the number in the file name
//!   24   8  created_ms   u64 LE  Unix ms
//! record   (28 bytes + len)
//!   0    4  len          u32 LE  payload bytes after this header
//!   4    4  crc          u32 LE  CRC32C(payload ++ record[8..28] ++ record[0..4])
//!   8    8  first_seq    u64 LE  seq of the first message; the next record
//!                                starts at first_seq + count
//!   16   4  count        u32 LE  messages in the record, >= 1
//!   20   8  append_ms    u64 LE  Unix ms of the append (oldest-age metric)
//!   28 len  payload      count x (LEB128 varint length ++ message bytes)
//! cursor   (32 bytes)
//!   0    8  magic        "SPILLCUR"
//!   8    4  version      u32 LE = 1
//!   12   4  crc          u32 LE  CRC32C(bytes 0..12 ++ bytes 16..32)
//!   16   8  ack_floor    u64 LE  every seq below is consumed
//!   24   8  next_seq     u64 LE  at persist time
//! ```
//!
//! DO NOT REORDER FIELDS: any change needs a new version number and a reader
//! for the old one. A batch is one record (split only past 1 MiB), so a
//! 64-byte message costs 65 bytes plus its share of 28 bytes.
//!
//! Invariants: only the last segment may end in a torn record; every other
//! segment was fsynced before its successor was created. A segment written at
//! close from the memory tier is written to `NAME.seg.tmp`, fsynced and
//! renamed, so it is complete or absent.

#![forbid(unsafe_code)]

mod config;
mod cursor;
mod error;
mod format;
pub mod fs;
mod inspect;
pub mod mem;
mod recovery;
mod reserve;
mod scan;
pub mod sim;
mod spool;
mod stats;

pub use config::{
    Durability, SpoolConfig, WhenFull, DEFAULT_FSYNC_INTERVAL, DEFAULT_MAX_MESSAGE,
    DEFAULT_MEMORY_LIMIT, DEFAULT_SEGMENT_SIZE,
};
pub use error::{FullReason, SpoolError};
pub use format::MAX_MESSAGE_LIMIT;
pub use inspect::{
    dump, dump_with_fs, inspect, inspect_with_fs, verify, verify_with_fs, Inspection, SegmentInfo,
    VerifyProblem, VerifyReport,
};
pub use recovery::{CursorRecovery, RecoveryReport};
pub use spool::{
    is_locked, recorded_next_seq, start_empty_at, AppendOutcome, Batch, Message, Spool, Tier,
    Tunables, LOCK_FILE,
};
pub use stats::{Histogram, HistogramSnapshot, SpoolStats, FSYNC_BUCKETS};
