//! Offline, read-only tools over a spool directory (for `spillway spool
//! inspect|verify|dump`). They never modify the directory, so they are safe on
//! a spool an operator is investigating; they should not run while a spillway
//! process has the spool open (they would see a moving tail).

use std::io;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::cursor::read_cursor;
use crate::format::{split_payload, HeaderCheck, RecordHeader, SegmentHeader, SEGMENT_HEADER_LEN};
use crate::fs::{read_full_at, Fs, SegmentFile, StdFs};
use crate::recovery::{header_problem, list_segments};
use crate::scan::{gap_detail, Scan, SegmentReader};
use crate::{Message, SpoolError};

/// One segment file as seen by [`inspect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub path: PathBuf,
    /// From the file name.
    pub first_seq: u64,
    pub bytes: u64,
    pub created_ms: Option<u64>,
    /// Why the header is unusable, if it is.
    pub header_problem: Option<String>,
}

/// A summary of a spool directory, from headers, the cursor and a scan of the
/// last segment only (cheap on any size of spool).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    pub dir: PathBuf,
    pub segments: Vec<SegmentInfo>,
    /// `(ack_floor, next_seq)` from the cursor file.
    pub cursor: Option<(u64, u64)>,
    pub cursor_problem: Option<&'static str>,
    /// Oldest sequence number in the log and one past the newest.
    pub first_seq: Option<u64>,
    pub end_seq: Option<u64>,
    /// Unacknowledged messages in the log (`end_seq - max(floor, first)`).
    pub depth: u64,
    pub disk_bytes: u64,
    /// The last segment ends in a torn/corrupt record at this offset
    /// (`(offset, bytes)`); opening the spool will cut it.
    pub torn_tail: Option<(u64, u64)>,
    /// A problem in the last segment that open would refuse.
    pub tail_problem: Option<String>,
}

/// Where `verify` found the first damage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyProblem {
    pub segment: PathBuf,
    pub offset: u64,
    pub detail: String,
}

/// Result of checking every record of a spool.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyReport {
    pub segments: u64,
    pub records: u64,
    pub messages: u64,
    pub bytes: u64,
    pub first_seq: Option<u64>,
    pub end_seq: Option<u64>,
    /// A torn tail on the last segment `(segment, offset, bytes)`: expected
    /// after a crash, repaired by the next open; not a failure.
    pub torn_tail: Option<(PathBuf, u64, u64)>,
    /// The first damage found; verification stops there.
    pub problem: Option<VerifyProblem>,
}

impl VerifyReport {
    /// No damage (a torn tail is not damage).
    pub fn ok(&self) -> bool {
        self.problem.is_none()
    }
}

fn open_read(fs: &dyn Fs, path: &Path) -> Result<std::sync::Arc<dyn SegmentFile>, SpoolError> {
    fs.open(path, false)
        .map_err(|e| SpoolError::io("open", path, e))
}

fn header_of(file: &dyn SegmentFile, path: &Path) -> Result<(HeaderCheck, u64), SpoolError> {
    let len = file.len().map_err(|e| SpoolError::io("stat", path, e))?;
    let mut buf = [0u8; SEGMENT_HEADER_LEN as usize];
    let n = read_full_at(file, &mut buf, 0, false).map_err(|e| SpoolError::io("read", path, e))?;
    Ok((SegmentHeader::check(&buf[..n]), len))
}

/// Summarises the spool in `dir` without changing it.
pub fn inspect(dir: &Path) -> Result<Inspection, SpoolError> {
    inspect_with_fs(&StdFs, dir)
}

/// [`inspect`] over a custom file system (tests, fuzzing).
pub fn inspect_with_fs(fs: &dyn Fs, dir: &Path) -> Result<Inspection, SpoolError> {
    let mut tmp = 0;
    let list = list_segments(fs, dir, false, &mut tmp)?;
    let mut out = Inspection {
        dir: dir.to_path_buf(),
        segments: Vec::new(),
        cursor: None,
        cursor_problem: None,
        first_seq: list.first().map(|s| s.0),
        end_seq: None,
        depth: 0,
        disk_bytes: 0,
        torn_tail: None,
        tail_problem: None,
    };
    match read_cursor(fs, dir)? {
        Some(Ok(c)) => out.cursor = Some((c.ack_floor, c.next_seq)),
        Some(Err(reason)) => out.cursor_problem = Some(reason),
        None => {}
    }
    let count = list.len();
    for (i, (seq, path)) in list.into_iter().enumerate() {
        let file = open_read(fs, &path)?;
        let (check, len) = header_of(&*file, &path)?;
        out.disk_bytes += len;
        let (created_ms, problem) = match &check {
            HeaderCheck::Valid(h) if h.first_seq == seq => (Some(h.created_ms), None),
            HeaderCheck::Valid(h) => (
                Some(h.created_ms),
                Some(format!("header says first seq {}", h.first_seq)),
            ),
            other => (None, Some(header_problem(other))),
        };
        if i + 1 == count && problem.is_none() {
            let mut sc = SegmentReader::new(&*file, SEGMENT_HEADER_LEN, len, seq);
            loop {
                match sc
                    .next_record()
                    .map_err(|e| SpoolError::io("read", &path, e))?
                {
                    Scan::Record { .. } => {}
                    Scan::Gap {
                        offset,
                        expected,
                        found,
                    } => {
                        out.tail_problem =
                            Some(format!("offset {offset}: {}", gap_detail(expected, found)));
                        break;
                    }
                    Scan::End => break,
                    Scan::Bad { offset, check } => {
                        let after = sc
                            .valid_after(offset)
                            .map_err(|e| SpoolError::io("read", &path, e))?;
                        match after {
                            None => out.torn_tail = Some((offset, len - offset)),
                            Some(next) => {
                                out.tail_problem = Some(format!(
                                    "offset {offset}: bad record ({check:?}) followed by a valid record at {next}"
                                ))
                            }
                        }
                        break;
                    }
                }
            }
            out.end_seq = Some(sc.next_seq);
        }
        out.segments.push(SegmentInfo {
            path,
            first_seq: seq,
            bytes: len,
            created_ms,
            header_problem: problem,
        });
    }
    if let (Some(first), Some(end)) = (out.first_seq, out.end_seq) {
        let floor = out.cursor.map_or(first, |c| c.0).max(first);
        out.depth = end.saturating_sub(floor);
    }
    Ok(out)
}

type RecordVisitor<'a> =
    dyn FnMut(&RecordHeader, &Bytes) -> Result<ControlFlow<()>, SpoolError> + 'a;

enum WalkEnd {
    Done,
    Stopped,
    TornTail {
        segment: PathBuf,
        offset: u64,
        bytes: u64,
    },
}

/// Walks records of all segments from the one containing `from`, checking
/// headers, CRCs and sequence continuity within and across segments.
fn walk(
    fs: &dyn Fs,
    dir: &Path,
    from: Option<u64>,
    progress: &mut dyn FnMut(u64, u64),
    on_record: &mut RecordVisitor<'_>,
    on_segment: &mut dyn FnMut(),
) -> Result<WalkEnd, SpoolError> {
    let mut tmp = 0;
    let list = list_segments(fs, dir, false, &mut tmp)?;
    let start = match from {
        Some(f) => list.partition_point(|s| s.0 <= f).saturating_sub(1),
        None => 0,
    };
    let list = &list[start..];
    let mut total = 0u64;
    let mut files = Vec::with_capacity(list.len());
    for (_, path) in list {
        let f = open_read(fs, path)?;
        total += f.len().map_err(|e| SpoolError::io("stat", path, e))?;
        files.push(f);
    }
    let mut done = 0u64;
    let mut expect: Option<u64> = None;
    let corrupt = |p: &Path, offset, detail: String| SpoolError::Corrupt {
        segment: p.to_path_buf(),
        offset,
        detail,
    };
    for (i, ((seq, path), file)) in list.iter().zip(&files).enumerate() {
        let is_last = i + 1 == list.len();
        let (check, len) = header_of(&**file, path)?;
        match check {
            HeaderCheck::Valid(h) if h.first_seq == *seq => {}
            HeaderCheck::Valid(h) => {
                return Err(corrupt(
                    path,
                    16,
                    format!(
                        "header says first seq {} but the file name says {seq}",
                        h.first_seq
                    ),
                ))
            }
            HeaderCheck::Truncated { .. } | HeaderCheck::Zeroed
                if is_last && len <= SEGMENT_HEADER_LEN =>
            {
                return Ok(WalkEnd::TornTail {
                    segment: path.clone(),
                    offset: 0,
                    bytes: len,
                })
            }
            other => return Err(corrupt(path, 0, header_problem(&other))),
        }
        if let Some(e) = expect {
            if e != *seq {
                return Err(corrupt(
                    path,
                    0,
                    format!("segment starts at seq {seq} but the previous one ends at {e} (missing or truncated segment)"),
                ));
            }
        }
        on_segment();
        let mut sc = SegmentReader::new(&**file, SEGMENT_HEADER_LEN, len, *seq);
        let mut last_pos = SEGMENT_HEADER_LEN;
        loop {
            let item = sc
                .next_record()
                .map_err(|e| SpoolError::io("read", path, e))?;
            done += sc.pos - last_pos;
            last_pos = sc.pos;
            progress(done, total);
            match item {
                Scan::Record {
                    header, payload, ..
                } => {
                    if on_record(&header, &payload)?.is_break() {
                        return Ok(WalkEnd::Stopped);
                    }
                }
                Scan::Gap {
                    offset,
                    expected,
                    found,
                } => return Err(corrupt(path, offset, gap_detail(expected, found))),
                Scan::End => break,
                Scan::Bad { offset, check } => {
                    let after = sc
                        .valid_after(offset)
                        .map_err(|e| SpoolError::io("read", path, e))?;
                    if is_last && after.is_none() {
                        return Ok(WalkEnd::TornTail {
                            segment: path.clone(),
                            offset,
                            bytes: len - offset,
                        });
                    }
                    return Err(corrupt(path, offset, format!("bad record: {check:?}")));
                }
            }
        }
        done += len.saturating_sub(last_pos);
        expect = Some(sc.next_seq);
    }
    progress(total, total);
    Ok(WalkEnd::Done)
}

/// Checks every record of every segment. `progress(done, total)` reports
/// bytes. Damage is reported in the result (`problem`), not as an error;
/// errors are I/O failures.
pub fn verify(dir: &Path, progress: impl FnMut(u64, u64)) -> Result<VerifyReport, SpoolError> {
    verify_with_fs(&StdFs, dir, progress)
}

/// [`verify`] over a custom file system (tests, fuzzing).
pub fn verify_with_fs(
    fs: &dyn Fs,
    dir: &Path,
    mut progress: impl FnMut(u64, u64),
) -> Result<VerifyReport, SpoolError> {
    let mut rep = VerifyReport::default();
    let mut records = 0u64;
    let mut messages = 0u64;
    let mut bytes = 0u64;
    let mut first: Option<u64> = None;
    let mut end: Option<u64> = None;
    let mut segments = 0u64;
    let res = walk(
        fs,
        dir,
        None,
        &mut progress,
        &mut |h, p| {
            records += 1;
            messages += u64::from(h.count);
            bytes += p.len() as u64;
            first.get_or_insert(h.first_seq);
            end = Some(h.end_seq());
            Ok(ControlFlow::Continue(()))
        },
        &mut || segments += 1,
    );
    match res {
        Ok(WalkEnd::TornTail {
            segment,
            offset,
            bytes,
        }) => rep.torn_tail = Some((segment, offset, bytes)),
        Ok(_) => {}
        Err(SpoolError::Corrupt {
            segment,
            offset,
            detail,
        }) => {
            rep.problem = Some(VerifyProblem {
                segment,
                offset,
                detail,
            })
        }
        Err(e) => return Err(e),
    }
    rep.segments = segments;
    rep.records = records;
    rep.messages = messages;
    rep.bytes = bytes;
    rep.first_seq = first;
    rep.end_seq = end;
    Ok(rep)
}

/// Calls `each` for every message with `seq >= from` (default: the cursor's
/// ack floor, i.e. what is still pending), at most `limit` messages. Stops
/// with `SpoolError::Corrupt` at damage; a torn tail just ends the dump.
/// Returns the number of messages passed to `each`.
pub fn dump(
    dir: &Path,
    from: Option<u64>,
    limit: Option<u64>,
    each: impl FnMut(&Message) -> io::Result<()>,
) -> Result<u64, SpoolError> {
    dump_with_fs(&StdFs, dir, from, limit, each)
}

/// [`dump`] over a custom file system (tests, fuzzing).
pub fn dump_with_fs(
    fs: &dyn Fs,
    dir: &Path,
    from: Option<u64>,
    limit: Option<u64>,
    mut each: impl FnMut(&Message) -> io::Result<()>,
) -> Result<u64, SpoolError> {
    let from = match from {
        Some(f) => Some(f),
        None => match read_cursor(fs, dir)? {
            Some(Ok(c)) => Some(c.ack_floor),
            _ => None,
        },
    };
    let limit = limit.unwrap_or(u64::MAX);
    let mut n = 0u64;
    if limit == 0 {
        return Ok(0);
    }
    let mut out_err: Option<io::Error> = None;
    let res = walk(
        fs,
        dir,
        from,
        &mut |_, _| {},
        &mut |h, payload| {
            if h.end_seq() <= from.unwrap_or(0) {
                return Ok(ControlFlow::Continue(()));
            }
            let mut seq = h.first_seq;
            let mut stop = false;
            let append_ms = h.append_ms;
            split_payload(payload, h.count, |data| {
                if stop || seq < from.unwrap_or(0) {
                    seq += 1;
                    return;
                }
                if let Err(e) = each(&Message {
                    seq,
                    data,
                    append_ms,
                }) {
                    out_err = Some(e);
                    stop = true;
                } else {
                    n += 1;
                    stop = n >= limit;
                }
                seq += 1;
            });
            Ok(if stop {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            })
        },
        &mut || {},
    );
    if let Some(e) = out_err {
        return Err(SpoolError::io("write output", PathBuf::from("-"), e));
    }
    res?;
    Ok(n)
}
