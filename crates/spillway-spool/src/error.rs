//! The spool's one error type.

use std::io;
use std::path::PathBuf;

/// Why an append could not find room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullReason {
    /// The disk tier reached `max_disk`.
    Quota,
    /// The file system said `ENOSPC` or `EDQUOT`.
    NoSpace,
}

impl std::fmt::Display for FullReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FullReason::Quota => "max_disk reached",
            FullReason::NoSpace => "file system out of space",
        })
    }
}

/// Everything that can go wrong in the spool. Each variant says what the
/// caller should do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// An I/O operation failed. Not retryable by repeating the call blindly;
    /// the spool's state is unchanged (a partial write was truncated back).
    #[error("spool I/O error: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Stored data fails its checks somewhere other than a torn tail. The
    /// spool refuses to skip it: an operator must look (`spillway spool
    /// verify`/`dump`), then repair or move the directory aside.
    #[error("spool corrupt: {segment} at offset {offset}: {detail}")]
    Corrupt {
        segment: PathBuf,
        offset: u64,
        detail: String,
    },
    /// An fsync (or a truncate after a failed write) failed earlier. The
    /// kernel may have dropped dirty pages, so nothing after that point can be
    /// called durable: every later append, sync and close fails with this.
    /// Recovery is to drop the handle and reopen the spool (which re-reads
    /// what actually reached the disk).
    #[error("spool poisoned by an earlier failure: {cause}")]
    Poisoned { cause: String },
    /// No room (`max_disk` or the file system) and `WhenFull::Block` timed
    /// out. Retry later; acknowledgements free space.
    #[error("spool full: {reason}")]
    Full { reason: FullReason },
    /// A message is larger than `max_message`, or a batch can never fit in
    /// `max_disk`. Retrying will not help.
    #[error("message too large: {size} bytes, limit {limit}")]
    TooLarge { size: u64, limit: u64 },
    /// Another process (or another open handle in this one) holds the spool
    /// directory. Two writers would corrupt the log; stop the other one, or
    /// use another directory.
    #[error("spool directory {dir} is in use by another process")]
    Locked { dir: PathBuf },
    /// The spool was closed (through this or another handle). The call did
    /// nothing: a closed handle never reads, writes or deletes, since a new
    /// spool may own the directory by now.
    #[error("spool is closed")]
    Closed,
    /// The configuration is unusable (e.g. `max_message` above the format's
    /// limit).
    #[error("invalid spool configuration: {0}")]
    Config(String),
    /// The batch's sequence numbers would run past `u64::MAX`. No spool
    /// gets there by appending (2^64 messages); only a crafted or damaged
    /// cursor or segment that still passes its checksum can number the log
    /// this close to the end. Nothing was written; every later append fails
    /// the same way (reads and acks still work). An operator must look at
    /// the directory (`spillway spool inspect`).
    #[error("sequence numbers exhausted: {msgs} messages cannot follow seq {next_seq}")]
    SequenceExhausted { next_seq: u64, msgs: u64 },
    /// `close` could not write the memory tier to disk: these messages
    /// (`first_seq..first_seq + msgs`, `bytes` of message data) are lost
    /// when the process exits. With the reserve this takes another writer
    /// filling the space between its deletion and the write, or a failure
    /// in `source`. The spool is closed; the log on disk is intact.
    #[error(
        "memory tier not written at close: {msgs} messages ({bytes} bytes) from seq {first_seq} lost: {source}"
    )]
    MemoryTierNotWritten {
        msgs: u64,
        bytes: u64,
        first_seq: u64,
        #[source]
        source: Box<SpoolError>,
    },
}

impl SpoolError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        SpoolError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// No room right now; may succeed later.
    pub fn is_full(&self) -> bool {
        matches!(self, SpoolError::Full { .. })
    }
    /// The handle is unusable for writing; reopen the spool.
    pub fn is_poisoned(&self) -> bool {
        match self {
            SpoolError::Poisoned { .. } => true,
            SpoolError::MemoryTierNotWritten { source, .. } => source.is_poisoned(),
            _ => false,
        }
    }
    /// Stored data is damaged and needs an operator.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, SpoolError::Corrupt { .. })
    }
    /// The spool as a whole cannot go on (poisoned, damaged, I/O failure,
    /// closed, sequence numbers exhausted): the owner should stop using it.
    /// The other errors concern only the call that got them (too large,
    /// full).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            SpoolError::Poisoned { .. }
                | SpoolError::Corrupt { .. }
                | SpoolError::Io { .. }
                | SpoolError::Closed
                | SpoolError::Config(_)
                | SpoolError::Locked { .. }
                | SpoolError::MemoryTierNotWritten { .. }
                | SpoolError::SequenceExhausted { .. }
        )
    }
    /// Worth retrying the same call later without changing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SpoolError::Full { .. })
    }
}
