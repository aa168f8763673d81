//! Sequential record scanning over a segment file, shared by recovery, the
//! reader and the offline tools.

use std::io;

use bytes::{Bytes, BytesMut};

use crate::format::{check_record, le_u32, le_u64, RecordCheck, RecordHeader, RECORD_HEADER_LEN};
use crate::fs::{read_full_at, SegmentFile};

/// Bytes read from the file per refill when records are small.
const CHUNK: usize = 1 << 20;

#[derive(Debug)]
pub(crate) enum Scan {
    Record {
        offset: u64,
        header: RecordHeader,
        payload: Bytes,
    },
    /// Exactly at the end of the scanned range.
    End,
    /// The record at `offset` fails its check.
    Bad { offset: u64, check: RecordCheck },
}

pub(crate) struct Scanner<'a> {
    file: &'a dyn SegmentFile,
    /// Offset of the next record.
    pub pos: u64,
    end: u64,
    buf: Bytes,
    buf_off: u64,
    pub bytes_read: u64,
}

impl<'a> Scanner<'a> {
    pub fn new(file: &'a dyn SegmentFile, start: u64, end: u64) -> Self {
        Scanner {
            file,
            pos: start,
            end,
            buf: Bytes::new(),
            buf_off: start,
            bytes_read: 0,
        }
    }

    fn ensure(&mut self, n: usize) -> io::Result<&[u8]> {
        let rel = self.pos.saturating_sub(self.buf_off) as usize;
        let covered = self.pos >= self.buf_off && rel + n <= self.buf.len();
        if !covered {
            let remaining = self.end.saturating_sub(self.pos);
            let size = (n.max(CHUNK) as u64).min(remaining) as usize;
            let mut b = BytesMut::zeroed(size);
            let got = read_full_at(self.file, &mut b, self.pos)?;
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
            RecordCheck::Valid(header) => {
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

/// After a bad record at `bad`, looks for any valid record later in
/// `[bad + 1, end)` whose sequence number could follow `min_seq`. Finding one
/// means the damage is in the middle of the log (refuse), not a torn tail
/// (truncate). Only runs on the corruption path, over the last segment.
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
    let mut data = vec![0u8; (end - start) as usize];
    let got = read_full_at(file, &mut data, start)?;
    data.truncate(got);
    let span = data.len() as u64;
    for i in 0..data.len() {
        let rest = &data[i..];
        if rest.len() < RECORD_HEADER_LEN {
            break;
        }
        let len = le_u32(&rest[0..4]) as usize;
        let seq = le_u64(&rest[8..16]);
        let count = le_u32(&rest[16..20]);
        // Cheap plausibility before the CRC: a later record starts at or
        // after the expected seq, and cannot be further ahead than one
        // message per byte skipped.
        if count == 0
            || len + RECORD_HEADER_LEN > rest.len()
            || seq < min_seq
            || seq > min_seq.saturating_add(span)
        {
            continue;
        }
        if let RecordCheck::Valid(_) = check_record(rest) {
            return Ok(Some(start + i as u64));
        }
    }
    Ok(None)
}
