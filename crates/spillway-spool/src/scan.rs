//! Reading a segment's records in order, checking each record and the
//! continuity of sequence numbers: the one loop recovery, the reader and
//! the offline tools (`inspect`, `verify`, `dump`) share. Each step is a
//! typed status (a record, the end, a bad record, a gap), and each caller
//! decides what it means for it (truncate a torn tail, refuse, report).

use std::io;

use bytes::{Bytes, BytesMut};

use crate::format::{
    check_record, le_u32, le_u64, RecordCheck, RecordHeader, MAX_RECORD_PAYLOAD, RECORD_HEADER_LEN,
};
use crate::fs::{read_full_at, SegmentFile};

/// Bytes read from the file per refill when records are small.
const CHUNK: usize = 1 << 20;

#[derive(Debug)]
pub(crate) enum Scan {
    /// A valid record that continues the sequence.
    Record {
        offset: u64,
        header: RecordHeader,
        payload: Bytes,
    },
    /// Exactly at the end of the scanned range.
    End,
    /// The record at `offset` fails its check: truncated (the range ends
    /// before it does), corrupted (stored and computed checksums), or
    /// malformed.
    Bad { offset: u64, check: RecordCheck },
    /// The record at `offset` is valid but starts at sequence `found`
    /// where `expected` continues the log: a gap or an overlap.
    Gap {
        offset: u64,
        expected: u64,
        found: u64,
    },
}

/// How a [`Scan::Gap`] is reported.
pub(crate) fn gap_detail(expected: u64, found: u64) -> String {
    format!("record starts at seq {found} where {expected} was expected")
}

pub(crate) struct SegmentReader<'a> {
    file: &'a dyn SegmentFile,
    /// Offset of the next record.
    pub pos: u64,
    end: u64,
    buf: Bytes,
    buf_off: u64,
    pub bytes_read: u64,
    /// The sequence number the next record must start with.
    pub next_seq: u64,
    /// Bytes read from the file per refill (at least the next record).
    chunk: usize,
    /// Only read what the page cache holds (`WouldBlock` otherwise).
    cached: bool,
}

impl<'a> SegmentReader<'a> {
    /// Reads records in `[start, end)` of `file`, the first of which must
    /// start at sequence `next_seq`.
    pub fn new(file: &'a dyn SegmentFile, start: u64, end: u64, next_seq: u64) -> Self {
        SegmentReader {
            file,
            pos: start,
            end,
            buf: Bytes::new(),
            buf_off: start,
            bytes_read: 0,
            next_seq,
            chunk: CHUNK,
            cached: false,
        }
    }

    /// Reads only what the page cache holds: a refill that would wait for
    /// the disk fails with `WouldBlock`.
    pub fn cached_only(mut self, on: bool) -> Self {
        self.cached = on;
        self
    }

    /// Reads about `bytes` per refill (4 KiB to 1 MiB) instead of 1 MiB:
    /// for reads that want little and hand out slices of what was read.
    pub fn with_chunk(mut self, bytes: usize) -> Self {
        self.chunk = bytes.clamp(4096, CHUNK);
        self
    }

    /// After a [`Scan::Bad`] at `bad`: the offset of a later valid record
    /// that could continue the log, if any. One means damage inside the
    /// log; none, a torn tail.
    pub fn valid_after(&self, bad: u64) -> io::Result<Option<u64>> {
        valid_record_after(self.file, bad, self.end, self.next_seq)
    }

    fn ensure(&mut self, n: usize) -> io::Result<&[u8]> {
        let rel = self.pos.saturating_sub(self.buf_off) as usize;
        let covered = self.pos >= self.buf_off && rel + n <= self.buf.len();
        if !covered {
            let remaining = self.end.saturating_sub(self.pos);
            let size = (n.max(self.chunk) as u64).min(remaining) as usize;
            let mut b = BytesMut::zeroed(size);
            let got = read_full_at(self.file, &mut b, self.pos, self.cached)?;
            b.truncate(got);
            self.bytes_read += got as u64;
            self.buf = b.freeze();
            self.buf_off = self.pos;
        }
        let rel = (self.pos - self.buf_off) as usize;
        let stop = (rel + n).min(self.buf.len());
        Ok(&self.buf[rel..stop])
    }

    pub fn next_record(&mut self) -> io::Result<Scan> {
        if self.pos >= self.end {
            return Ok(Scan::End);
        }
        let offset = self.pos;
        let head = self.ensure(RECORD_HEADER_LEN)?;
        let mut need = RECORD_HEADER_LEN;
        if head.len() >= RECORD_HEADER_LEN {
            let len = le_u32(&head[0..4]) as usize;
            if (len as u64) < self.end - offset {
                need += len;
            } else {
                need = (self.end - offset) as usize;
            }
        }
        let rec = self.ensure(need)?;
        match check_record(rec) {
            RecordCheck::Valid(header) if header.first_seq != self.next_seq => Ok(Scan::Gap {
                offset,
                expected: self.next_seq,
                found: header.first_seq,
            }),
            RecordCheck::Valid(header) => {
                self.next_seq = header.end_seq();
                let rel = (offset - self.buf_off) as usize;
                let payload = self
                    .buf
                    .slice(rel + RECORD_HEADER_LEN..rel + header.total_len() as usize);
                self.pos = offset + header.total_len();
                Ok(Scan::Record {
                    offset,
                    header,
                    payload,
                })
            }
            check => Ok(Scan::Bad { offset, check }),
        }
    }
}

/// Bytes of CRC work [`valid_record_after`] may spend beyond four times
/// the span it searches. An honest torn tail has few plausible headers
/// (mostly zeros or old data); only a crafted file needs more.
const SEARCH_CRC_BUDGET: u64 = 64 << 20;

/// After a bad record at `bad`, looks for any valid record later in
/// `[bad + 1, end)` whose sequence number could follow `min_seq`. Finding one
/// means the damage is in the middle of the log (refuse), not a torn tail
/// (truncate). Only runs on the corruption path, over the last segment.
///
/// Bounded whatever the file holds: it reads a window at a time (never the
/// whole rest of a segment at once), and a file with more plausible headers
/// than [`SEARCH_CRC_BUDGET`] can check is an `InvalidData` error, not an
/// hour of CRCs at start-up.
pub(crate) fn valid_record_after(
    file: &dyn SegmentFile,
    bad: u64,
    end: u64,
    min_seq: u64,
) -> io::Result<Option<u64>> {
    let start = bad + 1;
    if start >= end {
        return Ok(None);
    }
    let span = end - start;
    let mut budget = SEARCH_CRC_BUDGET.saturating_add(span.saturating_mul(4));
    // A window holds any record that starts in its first WINDOW_STEP bytes.
    const WINDOW_STEP: u64 = 8 << 20;
    let window_len = WINDOW_STEP + RECORD_HEADER_LEN as u64 + MAX_RECORD_PAYLOAD;
    let mut data: Vec<u8> = Vec::new();
    let mut win_start = start;
    let mut win_end = start;
    let mut pos = start;
    while pos < end {
        if pos >= win_start + WINDOW_STEP.min(win_end - win_start) || pos == win_end {
            win_start = pos;
            let want = window_len.min(end - pos);
            data.resize(want as usize, 0);
            let got = read_full_at(file, &mut data, pos, false)?;
            data.truncate(got);
            win_end = pos + got as u64;
            if got == 0 {
                break;
            }
        }
        let rest = &data[(pos - win_start) as usize..];
        pos += 1;
        if rest.len() < RECORD_HEADER_LEN {
            if win_end >= end {
                break;
            }
            continue;
        }
        let len = u64::from(le_u32(&rest[0..4]));
        let seq = le_u64(&rest[8..16]);
        let count = le_u32(&rest[16..20]);
        // Cheap plausibility before the CRC: a later record starts at or
        // after the expected seq, and cannot be further ahead than one
        // message per byte skipped.
        if count == 0
            || len > MAX_RECORD_PAYLOAD
            || len + RECORD_HEADER_LEN as u64 > end - (pos - 1)
            || seq < min_seq
            || seq > min_seq.saturating_add(span)
        {
            continue;
        }
        let total = (RECORD_HEADER_LEN as u64 + len) as usize;
        if rest.len() < total {
            // Cannot happen: the window holds every record starting in its
            // first WINDOW_STEP bytes, and the record ends before `end`.
            continue;
        }
        budget = match budget.checked_sub(len) {
            Some(b) => b,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "too many plausible record headers after the bad record at offset {bad} \
                         to tell a torn tail from damage in the middle; refusing to guess"
                    ),
                ))
            }
        };
        if let RecordCheck::Valid(_) = check_record(&rest[..total]) {
            return Ok(Some(pos - 1));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::format::{encode_batch, finalize};

    /// A segment file in memory.
    #[derive(Debug)]
    struct MemFile(Mutex<Vec<u8>>);

    impl SegmentFile for MemFile {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let data = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let start = (offset as usize).min(data.len());
            let n = buf.len().min(data.len() - start);
            buf[..n].copy_from_slice(&data[start..start + n]);
            Ok(n)
        }
        fn write_at(&self, _: &[u8], _: u64) -> io::Result<usize> {
            Err(io::ErrorKind::Unsupported.into())
        }
        fn sync_data(&self) -> io::Result<()> {
            Ok(())
        }
        fn set_len(&self, _: u64) -> io::Result<()> {
            Err(io::ErrorKind::Unsupported.into())
        }
        fn len(&self) -> io::Result<u64> {
            Ok(self.0.lock().unwrap_or_else(|e| e.into_inner()).len() as u64)
        }
    }

    fn record(seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut b = encode_batch([payload].into_iter());
        finalize(&mut b, seq, 0);
        b.buf.to_vec()
    }

    #[test]
    fn the_reader_reports_records_gaps_damage_and_the_end() {
        let mut data = record(10, b"a\n");
        data.extend(record(11, b"b\n"));
        let gap_at = data.len() as u64;
        data.extend(record(13, b"c\n"));
        let file = MemFile(Mutex::new(data.clone()));
        let mut r = SegmentReader::new(&file, 0, data.len() as u64, 10);
        let mut seqs = Vec::new();
        loop {
            match r.next_record().expect("read") {
                Scan::Record { header, .. } => seqs.push(header.first_seq),
                Scan::Gap {
                    offset,
                    expected,
                    found,
                } => {
                    assert_eq!((offset, expected, found), (gap_at, 12, 13));
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seqs, [10, 11]);
        assert_eq!(r.next_seq, 12);

        // A torn last record: Bad (truncated) with nothing valid after it.
        let cut = data.len() - 3;
        let file = MemFile(Mutex::new(data[..cut].to_vec()));
        let mut r = SegmentReader::new(&file, gap_at, cut as u64, 13);
        match r.next_record().expect("read") {
            Scan::Bad { offset, check } => {
                assert_eq!(offset, gap_at);
                assert!(matches!(check, RecordCheck::Truncated { .. }), "{check:?}");
                assert_eq!(r.valid_after(offset).expect("search"), None);
            }
            other => panic!("{other:?}"),
        }
        let file = MemFile(Mutex::new(data.clone()));
        let mut r = SegmentReader::new(&file, gap_at, data.len() as u64, 13);
        assert!(matches!(
            r.next_record().expect("read"),
            Scan::Record { .. }
        ));
        assert!(matches!(r.next_record().expect("read"), Scan::End));
        assert_eq!(r.next_seq, 14);
    }

    #[test]
    fn a_valid_record_after_damage_is_found() {
        let mut data = vec![0xAB; 1000];
        let at = data.len() as u64;
        data.extend(record(7, b"hello"));
        let f = MemFile(Mutex::new(data));
        let end = f.len().expect("len");
        assert_eq!(valid_record_after(&f, 0, end, 5).expect("search"), Some(at));
        // One that could not follow (a sequence below the expected one).
        assert_eq!(valid_record_after(&f, 0, end, 8).expect("search"), None);
    }

    /// A crafted tail: a plausible header (1 MiB payload, a sequence that
    /// could follow) every 64 bytes, each with a bad checksum. Checking
    /// every one would be O(n * len) CRC work at start-up; the search gives
    /// up with an error instead.
    #[test]
    fn a_crafted_tail_of_plausible_headers_is_refused_not_searched_forever() {
        let len: u32 = 1 << 20;
        let mut data = vec![0u8; 8 << 20];
        for (i, chunk) in data.chunks_mut(64).enumerate() {
            chunk[0..4].copy_from_slice(&len.to_le_bytes());
            chunk[8..16].copy_from_slice(&(100 + i as u64).to_le_bytes());
            chunk[16..20].copy_from_slice(&1u32.to_le_bytes());
        }
        let f = MemFile(Mutex::new(data));
        let end = f.len().expect("len");
        let t = std::time::Instant::now();
        let err = valid_record_after(&f, 0, end, 100).expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        // Not a timing assertion of the behaviour, a guard against hanging.
        assert!(t.elapsed() < std::time::Duration::from_secs(60));
    }

    #[test]
    fn a_record_whose_sequence_range_overflows_is_malformed() {
        let r = record(u64::MAX, b"x");
        assert!(
            matches!(check_record(&r), RecordCheck::Malformed(_)),
            "{:?}",
            check_record(&r)
        );
        let ok = record(u64::MAX - 1, b"x");
        assert!(matches!(check_record(&ok), RecordCheck::Valid(_)));
    }
}
