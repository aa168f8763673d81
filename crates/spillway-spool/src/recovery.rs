//! Opening a spool: find the segments, trust all but the last, scan the last
//! one and cut a torn tail, load the cursor.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::SpoolConfig;
use crate::cursor::{read_cursor, write_cursor, Cursor, CursorWrite, CURSOR_BG_TMP, CURSOR_TMP};
use crate::format::{
    parse_segment_name, segment_file_name, HeaderCheck, SegmentHeader, SEGMENT_HEADER_LEN,
};
use crate::fs::{read_full_at, Fs, SegmentFile};
use crate::scan::{gap_detail, Scan, SegmentReader};
use crate::spool::{Core, IndexEntry, Seg};
use crate::stats::Counters;
use crate::SpoolError;

/// What the cursor file said at open.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CursorRecovery {
    /// No cursor file: a new spool, or nothing was ever acknowledged.
    Missing,
    /// Loaded and consistent with the log.
    Loaded { ack_floor: u64 },
    /// The cursor file failed its checks; delivery restarts at the oldest
    /// message in the log (duplicates, never loss).
    Damaged { reason: &'static str },
    /// The cursor is past the end of the log: everything in it was
    /// acknowledged (e.g. acked data that was never synced before a crash).
    /// The log is discarded and numbering continues after the cursor.
    BeyondEnd { cursor: u64, log_end: u64 },
}

/// What recovery found and did. `Display` gives a one-line summary for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files found (before any deletion).
    pub segments: usize,
    /// The segment that was scanned (the last one), and how many bytes.
    pub scanned_segment: Option<PathBuf>,
    pub scanned_bytes: u64,
    /// Torn or corrupt tail cut off the last segment: records, bytes, where.
    pub truncated_records: u64,
    pub truncated_bytes: u64,
    pub truncated_at: Option<(PathBuf, u64)>,
    /// Last segments whose creation was torn (no complete header): removed.
    pub removed_torn_segments: Vec<PathBuf>,
    /// Leftover temp files (cursor, close-time segment, a spare segment
    /// that did not continue the log) removed.
    pub removed_temp_files: usize,
    /// A roll's new segment that a crash left under the spare's name, and
    /// the name it was given (it continued the log).
    pub adopted_spare: Option<PathBuf>,
    /// Fully acknowledged segments deleted at open.
    pub deleted_acked_segments: usize,
    /// The updated cursor could not be written (full disk): the old cursor
    /// file stays, which the next open reads the same way; `tick` retries.
    pub cursor_write_failed: bool,
    /// Disk space held for the memory tier (the reserve file), and what the
    /// configuration asked for (`memory_limit`). Less means the disk was
    /// full: the memory tier is that much smaller (0: every message goes to
    /// disk) until `tick` manages to grow the reserve.
    pub memory_reserved: u64,
    pub memory_reserve_wanted: u64,
    pub cursor: CursorRecovery,
    pub ack_floor: u64,
    pub next_seq: u64,
    pub elapsed: Duration,
}

impl RecoveryReport {
    /// True when recovery had to repair or discard anything.
    pub fn repaired(&self) -> bool {
        self.truncated_bytes > 0
            || !self.removed_torn_segments.is_empty()
            || matches!(
                self.cursor,
                CursorRecovery::Damaged { .. } | CursorRecovery::BeyondEnd { .. }
            )
    }
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spool recovered in {:?}: {} segments, messages {}..{}",
            self.elapsed, self.segments, self.ack_floor, self.next_seq
        )?;
        if let Some((seg, off)) = &self.truncated_at {
            write!(
                f,
                "; truncated torn tail of {} at offset {off} ({} records, {} bytes)",
                seg.display(),
                self.truncated_records,
                self.truncated_bytes
            )?;
        }
        for p in &self.removed_torn_segments {
            write!(f, "; removed torn segment {}", p.display())?;
        }
        if let Some(p) = &self.adopted_spare {
            write!(f, "; named the segment a roll left unnamed {}", p.display())?;
        }
        if self.deleted_acked_segments > 0 {
            write!(
                f,
                "; deleted {} acked segments",
                self.deleted_acked_segments
            )?;
        }
        if self.memory_reserved < self.memory_reserve_wanted {
            write!(
                f,
                "; file system full: memory tier limited to {} of {} bytes (its reserve could not be allocated; retried)",
                self.memory_reserved, self.memory_reserve_wanted
            )?;
        }
        if self.cursor_write_failed {
            write!(
                f,
                "; file system full: cursor not updated (the old one stays; retried)"
            )?;
        }
        match &self.cursor {
            CursorRecovery::Damaged { reason } => {
                write!(
                    f,
                    "; cursor damaged ({reason}), redelivering from the oldest message"
                )
            }
            CursorRecovery::BeyondEnd { cursor, log_end } => write!(
                f,
                "; cursor {cursor} beyond log end {log_end}, log treated as consumed"
            ),
            _ => Ok(()),
        }
    }
}

struct Found {
    first_seq: u64,
    path: PathBuf,
}

fn corrupt(path: &std::path::Path, offset: u64, detail: impl Into<String>) -> SpoolError {
    SpoolError::Corrupt {
        segment: path.to_path_buf(),
        offset,
        detail: detail.into(),
    }
}

fn read_header(
    file: &dyn SegmentFile,
    path: &std::path::Path,
) -> Result<(HeaderCheck, u64), SpoolError> {
    let len = file.len().map_err(|e| SpoolError::io("stat", path, e))?;
    let mut buf = [0u8; SEGMENT_HEADER_LEN as usize];
    let n = read_full_at(file, &mut buf, 0, false).map_err(|e| SpoolError::io("read", path, e))?;
    Ok((SegmentHeader::check(&buf[..n]), len))
}

pub(crate) fn header_problem(check: &HeaderCheck) -> String {
    match check {
        HeaderCheck::Valid(_) => "valid".into(),
        HeaderCheck::Truncated { available } => {
            format!("segment header truncated ({available} of {SEGMENT_HEADER_LEN} bytes)")
        }
        HeaderCheck::Zeroed => "segment header is all zeros".into(),
        HeaderCheck::BadMagic => "not a spool segment (bad magic)".into(),
        HeaderCheck::UnsupportedVersion(v) => format!("unsupported segment format version {v}"),
        HeaderCheck::Corrupted { expected, actual } => {
            format!("segment header checksum mismatch (stored {expected:#010x}, computed {actual:#010x})")
        }
    }
}

/// Segment files sorted by first seq; removes temp files when `cleanup`.
pub(crate) fn list_segments(
    fs: &dyn Fs,
    dir: &std::path::Path,
    cleanup: bool,
    removed_tmp: &mut usize,
) -> Result<Vec<(u64, PathBuf)>, SpoolError> {
    let names = fs
        .list_dir(dir)
        .map_err(|e| SpoolError::io("list", dir, e))?;
    let mut segs = Vec::new();
    for name in names {
        if let Some(seq) = parse_segment_name(&name) {
            segs.push((seq, dir.join(&name)));
        } else if cleanup
            && (name.ends_with(".seg.tmp") || name == CURSOR_TMP || name == CURSOR_BG_TMP)
        {
            let p = dir.join(&name);
            fs.remove(&p).map_err(|e| SpoolError::io("remove", &p, e))?;
            *removed_tmp += 1;
        }
    }
    segs.sort_by_key(|s| s.0);
    Ok(segs)
}

/// Names of the spare segment: created empty ahead of a roll, written from
/// the roll on, renamed to its segment name once the segment before it is
/// sealed (see `spool/writer.rs`).
/// Two names alternate, so that the next spare can be made while a roll
/// is being finished.
pub(crate) const SPARE_FILES: [&str; 2] = ["next.0.seg.spare", "next.1.seg.spare"];

/// Recovers the log from the segment files, then the spare: one that
/// continues the log exactly (a roll whose naming a crash interrupted) is
/// renamed into it and recovery runs again with it as the last segment;
/// any other (empty, torn, or following a log that lost its tail in a
/// power cut, so its messages were never durable) is removed.
pub(crate) fn recover(
    cfg: &SpoolConfig,
    fs: &dyn Fs,
    st: &Counters,
) -> Result<(Core, RecoveryReport), SpoolError> {
    let (core, mut report, scanned_end) = recover_segments(cfg, fs, st)?;
    let dir = &cfg.dir;
    // A spare holds records only between a roll and its end, and a roll
    // with no segment before it names its segment at once: a spare with
    // records always follows a named segment, which it must continue
    // exactly (before acknowledged segments were deleted above). One
    // that does not follows a segment a power cut shortened or removed:
    // nothing in it was ever durable, and keeping it would keep later
    // messages while earlier ones are gone. At most one continues; the
    // others (empty, torn) are removed.
    let mut adopt = None;
    for name in SPARE_FILES {
        let spare = dir.join(name);
        let file = match fs.open(&spare, false) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(SpoolError::io("open", &spare, e)),
        };
        let (check, len) = read_header(&*file, &spare)?;
        drop(file);
        match check {
            HeaderCheck::Valid(h)
                if len > SEGMENT_HEADER_LEN
                    && adopt.is_none()
                    && scanned_end == Some(h.first_seq) =>
            {
                adopt = Some((spare, h.first_seq));
            }
            _ => {
                fs.remove(&spare)
                    .map_err(|e| SpoolError::io("remove", &spare, e))?;
                report.removed_temp_files += 1;
            }
        }
    }
    let Some((spare, first_seq)) = adopt else {
        return Ok((core, report));
    };
    // The segment before it was never sealed (the roll did not finish):
    // seal it now, before the spare's name makes it a middle segment
    // that nothing would ever fsync.
    if let Some(seg) = core.segs.back() {
        if let Some(f) = &seg.file {
            f.sync_data()
                .map_err(|e| SpoolError::io("fsync", &seg.path, e))?;
        }
    }
    drop(core);
    let named = dir.join(segment_file_name(first_seq));
    fs.rename(&spare, &named)
        .map_err(|e| SpoolError::io("rename", &named, e))?;
    fs.sync_dir(dir)
        .map_err(|e| SpoolError::io("fsync dir", dir, e))?;
    let first = report;
    let (core, mut report, _) = recover_segments(cfg, fs, st)?;
    report.adopted_spare = Some(named);
    report.removed_temp_files += first.removed_temp_files;
    report.deleted_acked_segments += first.deleted_acked_segments;
    report.removed_torn_segments = first
        .removed_torn_segments
        .into_iter()
        .chain(report.removed_torn_segments)
        .collect();
    report.elapsed += first.elapsed;
    Ok((core, report))
}

/// Recovers the named segments; also returns where the log ended before
/// acknowledged segments were deleted (`None`: no segment).
fn recover_segments(
    cfg: &SpoolConfig,
    fs: &dyn Fs,
    st: &Counters,
) -> Result<(Core, RecoveryReport, Option<u64>), SpoolError> {
    let t0 = Instant::now();
    let dir = &cfg.dir;
    let durable = cfg.durability != crate::Durability::Never;
    fs.create_dir_all(dir)
        .map_err(|e| SpoolError::io("create dir", dir, e))?;
    let mut removed_tmp = 0;
    let found: Vec<Found> = list_segments(fs, dir, true, &mut removed_tmp)?
        .into_iter()
        .map(|(first_seq, path)| Found { first_seq, path })
        .collect();
    let mut report = RecoveryReport {
        segments: found.len(),
        scanned_segment: None,
        scanned_bytes: 0,
        truncated_records: 0,
        truncated_bytes: 0,
        truncated_at: None,
        removed_torn_segments: Vec::new(),
        removed_temp_files: removed_tmp,
        adopted_spare: None,
        deleted_acked_segments: 0,
        cursor_write_failed: false,
        memory_reserved: 0,
        memory_reserve_wanted: 0,
        cursor: CursorRecovery::Missing,
        ack_floor: 0,
        next_seq: 0,
        elapsed: Duration::ZERO,
    };
    let mut dir_dirty = removed_tmp > 0;

    // Headers of every segment: one small read each, so a damaged segment in
    // the middle fails the open instead of a read much later.
    let mut segs: Vec<Seg> = Vec::with_capacity(found.len());
    let mut last_file: Option<Arc<dyn SegmentFile>> = None;
    let count = found.len();
    for (i, f) in found.into_iter().enumerate() {
        let is_last = i + 1 == count;
        let file = fs
            .open(&f.path, is_last)
            .map_err(|e| SpoolError::io("open", &f.path, e))?;
        let (check, len) = read_header(&*file, &f.path)?;
        let header = match check {
            HeaderCheck::Valid(h) => h,
            HeaderCheck::Truncated { .. } | HeaderCheck::Zeroed
                if is_last && len <= SEGMENT_HEADER_LEN =>
            {
                // Creation torn by a crash: the file holds no record.
                drop(file);
                fs.remove(&f.path)
                    .map_err(|e| SpoolError::io("remove", &f.path, e))?;
                report.removed_torn_segments.push(f.path.clone());
                dir_dirty = true;
                continue;
            }
            other => return Err(corrupt(&f.path, 0, header_problem(&other))),
        };
        if header.first_seq != f.first_seq {
            return Err(corrupt(
                &f.path,
                16,
                format!(
                    "segment header says first seq {} but the file name says {}",
                    header.first_seq, f.first_seq
                ),
            ));
        }
        if is_last {
            last_file = Some(file);
        }
        segs.push(Seg {
            first_seq: f.first_seq,
            path: f.path,
            len,
            created_ms: header.created_ms,
            file: None,
            index: vec![IndexEntry {
                seq: f.first_seq,
                offset: SEGMENT_HEADER_LEN,
                ms: header.created_ms,
            }],
        });
    }
    if last_file.is_none() {
        // The last file was a torn creation: the new last one was sealed
        // (fsynced) before that file was created, but scan it anyway so the
        // log end is known.
        if let Some(s) = segs.last() {
            last_file = Some(
                fs.open(&s.path, true)
                    .map_err(|e| SpoolError::io("open", &s.path, e))?,
            );
        }
    }

    let mut disk_end = 0u64;
    if let (Some(seg), Some(file)) = (segs.last_mut(), last_file.as_ref()) {
        report.scanned_segment = Some(seg.path.clone());
        let mut sc = SegmentReader::new(&**file, SEGMENT_HEADER_LEN, seg.len, seg.first_seq);
        loop {
            match sc
                .next_record()
                .map_err(|e| SpoolError::io("read", &seg.path, e))?
            {
                Scan::Record { offset, header, .. } => {
                    let last = seg.index.last().map_or(0, |e| e.offset);
                    if offset >= last + (1 << 20) {
                        seg.index.push(IndexEntry {
                            seq: header.first_seq,
                            offset,
                            ms: header.append_ms,
                        });
                    }
                }
                Scan::Gap {
                    offset,
                    expected,
                    found,
                } => return Err(corrupt(&seg.path, offset, gap_detail(expected, found))),
                Scan::End => break,
                Scan::Bad { offset, check } => {
                    if let Some(next) = sc
                        .valid_after(offset)
                        .map_err(|e| SpoolError::io("read", &seg.path, e))?
                    {
                        return Err(corrupt(
                            &seg.path,
                            offset,
                            format!(
                                "bad record ({check:?}) followed by a valid record at offset {next}: corruption inside the log, not a torn tail"
                            ),
                        ));
                    }
                    let cut = seg.len - offset;
                    file.set_len(offset)
                        .map_err(|e| SpoolError::io("truncate", &seg.path, e))?;
                    file.sync_data()
                        .map_err(|e| SpoolError::io("fsync", &seg.path, e))?;
                    report.truncated_records = 1;
                    report.truncated_bytes = cut;
                    report.truncated_at = Some((seg.path.clone(), offset));
                    st.truncated_records
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    st.truncated_bytes
                        .fetch_add(cut, std::sync::atomic::Ordering::Relaxed);
                    seg.len = offset;
                    break;
                }
            }
        }
        report.scanned_bytes = sc.bytes_read;
        disk_end = sc.next_seq;
    }

    let cursor = match read_cursor(fs, dir)? {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(reason)) => {
            report.cursor = CursorRecovery::Damaged { reason };
            None
        }
    };
    let (mut floor, next_seq);
    match (segs.first(), cursor) {
        (None, c) => {
            let c = c.unwrap_or(Cursor {
                ack_floor: 0,
                next_seq: 0,
            });
            // An empty log: whatever was below next_seq (memory tier at a
            // crash) is gone, so nothing is pending.
            next_seq = c.ack_floor.max(c.next_seq);
            floor = next_seq;
            if cursor.is_some() {
                report.cursor = CursorRecovery::Loaded { ack_floor: floor };
            }
        }
        (Some(first), c) => {
            floor = c.map_or(first.first_seq, |c| c.ack_floor);
            if let Some(c) = c {
                report.cursor = CursorRecovery::Loaded {
                    ack_floor: c.ack_floor,
                };
            }
            if floor > disk_end {
                report.cursor = CursorRecovery::BeyondEnd {
                    cursor: floor,
                    log_end: disk_end,
                };
                next_seq = c.map_or(floor, |c| c.next_seq.max(floor));
            } else {
                // Below the log: those messages were dropped or were in the
                // memory tier at a crash; start at what exists.
                floor = floor.max(first.first_seq);
                next_seq = disk_end;
            }
        }
    }

    let scanned_end = (!segs.is_empty()).then_some(disk_end);
    // Delete what is fully acknowledged.
    let mut start = 0;
    while start < segs.len() {
        let end = segs.get(start + 1).map_or(disk_end, |s| s.first_seq);
        if end > floor {
            break;
        }
        let p = &segs[start].path;
        if start + 1 == segs.len() {
            last_file = None;
        }
        fs.remove(p).map_err(|e| SpoolError::io("remove", p, e))?;
        report.deleted_acked_segments += 1;
        dir_dirty = true;
        start += 1;
    }
    segs.drain(..start);
    if segs.is_empty() {
        disk_end = next_seq;
    }
    if dir_dirty && durable {
        fs.sync_dir(dir)
            .map_err(|e| SpoolError::io("fsync dir", dir, e))?;
    }

    let mut active = false;
    if let (Some(seg), Some(file)) = (segs.last_mut(), last_file) {
        if seg.len < cfg.segment_size {
            active = true;
        } else {
            // A full last segment of a dead process is not appended to, so
            // no seal will ever fsync it, and the next segment follows it:
            // if its pages were never synced, a power cut would tear it in
            // the middle of the log. Sync it now (the route-level model
            // test found this: kill -9, restart, power cut).
            file.sync_data()
                .map_err(|e| SpoolError::io("fsync", &seg.path, e))?;
            if durable {
                fs.sync_dir(dir)
                    .map_err(|e| SpoolError::io("fsync dir", dir, e))?;
            }
        }
        seg.file = Some(file);
    }
    let disk_bytes = segs.iter().map(|s| s.len).sum();
    let wanted = Cursor {
        ack_floor: floor,
        next_seq,
    };
    let mut persisted = wanted;
    let mut cursor_owed = None;
    if cursor != Some(wanted)
        && (cursor.is_some() || floor > 0 || next_seq > 0)
        && write_cursor(fs, dir, wanted, durable)? == CursorWrite::NoSpace
    {
        // A full disk must not keep the spool from opening. The file keeps
        // the cursor this recovery was computed from (or none), and the
        // next open computes the same state from it: segments it says are
        // acknowledged are already gone, a floor below the first segment
        // starts at that segment, one beyond the log means it is consumed.
        report.cursor_write_failed = true;
        st.cursor_write_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        persisted = cursor.unwrap_or(Cursor {
            ack_floor: 0,
            next_seq: 0,
        });
        cursor_owed = Some(wanted);
    }
    report.ack_floor = floor;
    report.next_seq = next_seq;
    report.elapsed = t0.elapsed();
    let core = Core {
        next_seq,
        floor,
        mem: Default::default(),
        mem_capacity: 0,
        reserve_retry_at: Instant::now(),
        reserve_short: false,
        segs: segs.into(),
        active,
        disk_end,
        disk_bytes,
        written_lsn: 0,
        read_hint: None,
        read_tail: None,
        persisted,
        last_cursor_persist: Instant::now(),
        cursor_owed,
        closed: false,
        space_waiters: 0,
        spare: None,
        roll: None,
        doomed: Vec::new(),
    };
    Ok((core, report, scanned_end))
}
