//! On-disk byte layout of segments and records (see the crate docs for the
//! layout block). Everything here is pure: bytes in, decisions out, so the
//! recovery scan, the reader, `verify` and `dump` share one definition.
//!
//! DO NOT REORDER FIELDS. Offsets are part of format version 1; a change needs
//! a new `FORMAT_VERSION` and a reader for the old one.

use bytes::{Bytes, BytesMut};

/// First eight bytes of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"SPILLSEG";
/// Bumped on any incompatible change of the layout below.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Fixed size of the segment header; the first record starts right after it.
pub(crate) const SEGMENT_HEADER_LEN: u64 = 32;
/// Fixed size of a record header (length, crc, first seq, count, time).
pub(crate) const RECORD_HEADER_LEN: usize = 28;
/// A batch larger than this is split into several records, so that a reader
/// never has to hold more than about this much of one record in memory.
pub(crate) const RECORD_TARGET: usize = 1 << 20;
/// Hard upper bound for a record payload; anything larger in a header is
/// corruption, not a record (a record holds at least one message, and a
/// message is at most `MAX_MESSAGE_LIMIT`).
pub(crate) const MAX_RECORD_PAYLOAD: u64 = MAX_MESSAGE_LIMIT as u64 + RECORD_TARGET as u64 + 16;
/// Largest `max_message` the format supports.
pub const MAX_MESSAGE_LIMIT: u32 = 256 << 20;

/// Segment header, 32 bytes:
///
/// ```text
/// 0      8  magic        b"SPILLSEG"
/// 8      4  version      u32 LE (1)
/// 12     4  header_crc   u32 LE, CRC32C of bytes [0..12) ++ [16..32)
/// 16     8  first_seq    u64 LE, equals the number in the file name
/// 24     8  created_ms   u64 LE, Unix time in ms when the segment was created
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub first_seq: u64,
    pub created_ms: u64,
}

/// Outcome of checking a segment header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderCheck {
    Valid(SegmentHeader),
    /// Fewer than `SEGMENT_HEADER_LEN` bytes exist.
    Truncated {
        available: u64,
    },
    /// All 32 bytes are zero: a segment whose creation was torn by a crash.
    Zeroed,
    BadMagic,
    UnsupportedVersion(u32),
    Corrupted {
        expected: u32,
        actual: u32,
    },
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN as usize] {
        let mut b = [0u8; SEGMENT_HEADER_LEN as usize];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.created_ms.to_le_bytes());
        let crc = header_crc(&b);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn check(buf: &[u8]) -> HeaderCheck {
        let Some(b) = buf.get(..SEGMENT_HEADER_LEN as usize) else {
            return HeaderCheck::Truncated {
                available: buf.len() as u64,
            };
        };
        if b.iter().all(|&x| x == 0) {
            return HeaderCheck::Zeroed;
        }
        if b[0..8] != SEGMENT_MAGIC {
            return HeaderCheck::BadMagic;
        }
        let version = le_u32(&b[8..12]);
        if version != FORMAT_VERSION {
            return HeaderCheck::UnsupportedVersion(version);
        }
        let stored = le_u32(&b[12..16]);
        let actual = header_crc(b);
        if stored != actual {
            return HeaderCheck::Corrupted {
                expected: stored,
                actual,
            };
        }
        HeaderCheck::Valid(SegmentHeader {
            first_seq: le_u64(&b[16..24]),
            created_ms: le_u64(&b[24..32]),
        })
    }
}

fn header_crc(b: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&b[0..12]), &b[16..32])
}

/// Record header, 28 bytes, followed by `len` payload bytes:
///
/// ```text
/// 0      4  len          u32 LE, payload length (bytes after this header)
/// 4      4  crc          u32 LE, CRC32C of payload ++ header[8..28) ++ header[0..4)
/// 8      8  first_seq    u64 LE, sequence number of the first message
/// 16     4  count        u32 LE, number of messages (>= 1)
/// 20     8  append_ms    u64 LE, Unix time in ms of the append
/// 28   len  payload      count x (LEB128 varint length ++ message bytes)
/// ```
///
/// The CRC covers the payload first so it can be computed outside the spool
/// lock, before the sequence number is known; the header fields are folded in
/// afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub len: u32,
    pub first_seq: u64,
    pub count: u32,
    pub append_ms: u64,
}

impl RecordHeader {
    pub fn total_len(&self) -> u64 {
        RECORD_HEADER_LEN as u64 + u64::from(self.len)
    }
    /// The sequence after the record's last message (a checked record's
    /// range never overflows; see `check_record`).
    pub fn end_seq(&self) -> u64 {
        self.first_seq.saturating_add(u64::from(self.count))
    }
}

/// Outcome of checking the record that starts at the beginning of a buffer.
/// A status, not a bool: recovery treats `Truncated` (a torn tail) and
/// `Corrupted` differently from the reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecordCheck {
    Valid(RecordHeader),
    /// The buffer ends before the record does.
    Truncated {
        needed: u64,
        available: u64,
    },
    /// Header and payload present but the checksum does not match.
    Corrupted {
        expected: u32,
        actual: u32,
    },
    /// The header cannot describe a record (zero count, absurd length) or
    /// the payload does not frame exactly `count` messages.
    Malformed(&'static str),
}

pub(crate) fn check_record(buf: &[u8]) -> RecordCheck {
    if buf.len() < RECORD_HEADER_LEN {
        return RecordCheck::Truncated {
            needed: RECORD_HEADER_LEN as u64,
            available: buf.len() as u64,
        };
    }
    let len = le_u32(&buf[0..4]);
    let stored = le_u32(&buf[4..8]);
    let first_seq = le_u64(&buf[8..16]);
    let count = le_u32(&buf[16..20]);
    let append_ms = le_u64(&buf[20..28]);
    if count == 0 {
        return RecordCheck::Malformed("record header has a message count of zero");
    }
    if first_seq.checked_add(u64::from(count)).is_none() {
        return RecordCheck::Malformed("record sequence numbers run past the largest one");
    }
    if u64::from(len) > MAX_RECORD_PAYLOAD {
        return RecordCheck::Malformed("record length exceeds the format's maximum");
    }
    if u64::from(len) < u64::from(count) {
        return RecordCheck::Malformed("record payload too short for its message count");
    }
    let total = RECORD_HEADER_LEN + len as usize;
    if buf.len() < total {
        return RecordCheck::Truncated {
            needed: total as u64,
            available: buf.len() as u64,
        };
    }
    let payload = &buf[RECORD_HEADER_LEN..total];
    let actual = record_crc(crc32c::crc32c(payload), &buf[..RECORD_HEADER_LEN]);
    if actual != stored {
        return RecordCheck::Corrupted {
            expected: stored,
            actual,
        };
    }
    if !payload_frames(payload, count) {
        return RecordCheck::Malformed("record payload does not frame its message count");
    }
    RecordCheck::Valid(RecordHeader {
        len,
        first_seq,
        count,
        append_ms,
    })
}

fn record_crc(payload_crc: u32, header: &[u8]) -> u32 {
    let crc = crc32c::crc32c_append(payload_crc, &header[8..RECORD_HEADER_LEN]);
    crc32c::crc32c_append(crc, &header[0..4])
}

/// True when `payload` is exactly `count` varint-prefixed messages.
fn payload_frames(payload: &[u8], count: u32) -> bool {
    let mut pos = 0usize;
    for _ in 0..count {
        let Some((n, used)) = read_varint(&payload[pos..]) else {
            return false;
        };
        pos += used;
        match pos.checked_add(n as usize) {
            Some(end) if end <= payload.len() => pos = end,
            _ => return false,
        }
    }
    pos == payload.len()
}

/// Splits a validated payload (as a shared buffer) into its messages without
/// copying. Only call on payloads that passed `check_record`.
pub(crate) fn split_payload(payload: &Bytes, count: u32, mut each: impl FnMut(Bytes)) {
    split_payload_while(payload, count, |m| {
        each(m);
        true
    });
}

/// [`split_payload`] until `each` answers false (for a message it did not
/// take). Returns how many messages it took and the offset after them: the
/// rest of the payload starts there.
pub(crate) fn split_payload_while(
    payload: &Bytes,
    count: u32,
    mut each: impl FnMut(Bytes) -> bool,
) -> (u32, usize) {
    let mut pos = 0usize;
    for i in 0..count {
        let Some((n, used)) = read_varint(&payload[pos..]) else {
            return (i, pos);
        };
        let end = pos + used + n as usize;
        if end > payload.len() || !each(payload.slice(pos + used..end)) {
            return (i, pos);
        }
        pos = end;
    }
    (count, pos)
}

pub(crate) fn read_varint(b: &[u8]) -> Option<(u32, usize)> {
    let mut v: u32 = 0;
    for (i, &byte) in b.iter().enumerate().take(5) {
        let part = u32::from(byte & 0x7f);
        if i == 4 && part > 0x0f {
            return None;
        }
        v |= part << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

fn put_varint(out: &mut BytesMut, mut v: u32) {
    while v >= 0x80 {
        out.extend_from_slice(&[(v as u8) | 0x80]);
        v >>= 7;
    }
    out.extend_from_slice(&[v as u8]);
}

pub(crate) fn varint_len(v: u32) -> usize {
    match v {
        0..=0x7f => 1,
        0x80..=0x3fff => 2,
        0x4000..=0x1f_ffff => 3,
        0x20_0000..=0x0fff_ffff => 4,
        _ => 5,
    }
}

/// One record inside an encoded batch buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordSpan {
    pub start: usize,
    pub count: u32,
    pub payload_crc: u32,
}

/// A batch encoded as one or more records whose headers still lack the
/// sequence number and time (filled in under the lock by `finalize`).
#[derive(Debug, Default)]
pub(crate) struct EncodedBatch {
    pub buf: BytesMut,
    pub spans: Vec<RecordSpan>,
    pub msgs: usize,
    pub payload_bytes: u64,
}

/// Encodes messages into records of about `RECORD_TARGET` payload bytes each.
/// Messages must already be checked against `max_message` (<= u32).
pub(crate) fn encode_batch<'a>(msgs: impl Iterator<Item = &'a [u8]> + Clone) -> EncodedBatch {
    let mut total = 0usize;
    let mut n = 0usize;
    for m in msgs.clone() {
        total += varint_len(m.len() as u32) + m.len();
        n += 1;
    }
    let records_guess = total / RECORD_TARGET + 1;
    let mut buf = BytesMut::with_capacity(total + records_guess * RECORD_HEADER_LEN);
    let mut spans = Vec::with_capacity(records_guess);
    let mut payload_bytes = 0u64;
    let mut iter = msgs.peekable();
    while iter.peek().is_some() {
        let start = buf.len();
        buf.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
        let mut count = 0u32;
        while let Some(m) = iter.peek() {
            let add = varint_len(m.len() as u32) + m.len();
            let cur = buf.len() - start - RECORD_HEADER_LEN;
            if count > 0 && cur + add > RECORD_TARGET {
                break;
            }
            put_varint(&mut buf, m.len() as u32);
            buf.extend_from_slice(m);
            payload_bytes += m.len() as u64;
            count += 1;
            iter.next();
        }
        let payload = &buf[start + RECORD_HEADER_LEN..];
        let len = payload.len() as u32;
        let payload_crc = crc32c::crc32c(payload);
        buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        buf[start + 16..start + 20].copy_from_slice(&count.to_le_bytes());
        spans.push(RecordSpan {
            start,
            count,
            payload_crc,
        });
    }
    EncodedBatch {
        buf,
        spans,
        msgs: n,
        payload_bytes,
    }
}

impl EncodedBatch {
    /// Payload bytes on disk: the messages with their length varints,
    /// without record headers.
    pub fn encoded_payload(&self) -> u64 {
        (self.buf.len() - self.spans.len() * RECORD_HEADER_LEN) as u64
    }
}

/// An upper bound of the size of the segment that holds `msgs` messages
/// whose encoded payload (length varints + bytes) is `payload` bytes, all
/// encoded as one batch by [`encode_batch`] (what `close` does with the
/// memory tier). Exact but for the number of records: `encode_batch` closes
/// a record only when the next message would take it past
/// `RECORD_TARGET`, so any two consecutive records together exceed
/// `RECORD_TARGET`, hence `r <= 2 * ceil(payload / RECORD_TARGET) - 1`
/// records (and never more than one per message).
pub(crate) fn segment_size_bound(payload: u64, msgs: u64) -> u64 {
    if msgs == 0 {
        return SEGMENT_HEADER_LEN;
    }
    let records = msgs.min(
        (2 * payload.div_ceil(RECORD_TARGET as u64))
            .saturating_sub(1)
            .max(1),
    );
    SEGMENT_HEADER_LEN + payload + records * RECORD_HEADER_LEN as u64
}

/// Fills in sequence numbers, time and CRC of every record of a batch.
pub(crate) fn finalize(batch: &mut EncodedBatch, first_seq: u64, append_ms: u64) {
    let mut seq = first_seq;
    for span in &batch.spans {
        let h = &mut batch.buf[span.start..span.start + RECORD_HEADER_LEN];
        h[8..16].copy_from_slice(&seq.to_le_bytes());
        h[20..28].copy_from_slice(&append_ms.to_le_bytes());
        let crc = record_crc(span.payload_crc, h);
        h[4..8].copy_from_slice(&crc.to_le_bytes());
        // Wrapping only matters to tests that forge records at the end of
        // the sequence space; `check_record` refuses those.
        seq = seq.wrapping_add(u64::from(span.count));
    }
}

pub(crate) fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

pub(crate) fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// File name of the segment whose first message has sequence `seq`.
pub(crate) fn segment_file_name(seq: u64) -> String {
    format!("{seq:020}.seg")
}

/// Parses `00000000000000000042.seg` into 42.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_roundtrip_and_crc_detects_flips() {
        let msgs: Vec<&[u8]> = vec![b"hello", b"", b"world!"];
        let mut b = encode_batch(msgs.iter().copied());
        finalize(&mut b, 42, 7);
        let buf = b.buf.freeze();
        let RecordCheck::Valid(h) = check_record(&buf) else {
            panic!("not valid: {:?}", check_record(&buf));
        };
        assert_eq!((h.first_seq, h.count, h.append_ms), (42, 3, 7));
        let payload = buf.slice(RECORD_HEADER_LEN..h.total_len() as usize);
        let mut got = Vec::new();
        split_payload(&payload, h.count, |m| got.push(m));
        assert_eq!(got, vec![&b"hello"[..], b"", b"world!"]);
        for i in 0..buf.len() {
            let mut bad = buf.to_vec();
            bad[i] ^= 0x10;
            assert!(
                !matches!(check_record(&bad), RecordCheck::Valid(_)),
                "flip at {i} undetected"
            );
        }
        assert!(matches!(
            check_record(&buf[..buf.len() - 1]),
            RecordCheck::Truncated { .. }
        ));
    }

    #[test]
    fn large_batches_split_into_records() {
        let big = vec![7u8; 300 * 1024];
        let msgs: Vec<&[u8]> = (0..8).map(|_| &big[..]).collect();
        let b = encode_batch(msgs.iter().copied());
        assert!(b.spans.len() >= 2);
        assert_eq!(b.spans.iter().map(|s| s.count).sum::<u32>(), 8);
    }

    /// The memory tier's admission relies on this bound: what `close`
    /// writes must fit the reserve.
    #[test]
    fn segment_size_bound_holds() {
        use proptest::prelude::*;
        let sizes = prop::collection::vec(
            prop_oneof![
                0usize..200,
                0usize..(RECORD_TARGET + 10),
                Just(RECORD_TARGET)
            ],
            1..40,
        );
        proptest!(ProptestConfig::with_cases(200), |(sizes in sizes)| {
            let msgs: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![7u8; n]).collect();
            let b = encode_batch(msgs.iter().map(|m| &m[..]));
            let actual = SEGMENT_HEADER_LEN + b.buf.len() as u64;
            let bound = segment_size_bound(b.encoded_payload(), msgs.len() as u64);
            prop_assert!(actual <= bound, "{} > {}", actual, bound);
            // Tight: at most one extra record header per started MiB.
            let slack = RECORD_HEADER_LEN as u64 * (b.encoded_payload() / RECORD_TARGET as u64 + 1);
            prop_assert!(bound - actual <= slack, "bound {} actual {}", bound, actual);
        });
        // One record: the bound is exact.
        let one: Vec<&[u8]> = vec![b"abc"; 3];
        let b = encode_batch(one.iter().copied());
        assert_eq!(
            segment_size_bound(b.encoded_payload(), 3),
            SEGMENT_HEADER_LEN + b.buf.len() as u64
        );
    }

    #[test]
    fn varint_roundtrip() {
        for v in [0u32, 1, 127, 128, 16383, 16384, u32::MAX] {
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v));
            assert_eq!(read_varint(&b), Some((v, b.len())));
        }
    }

    #[test]
    fn header_checks() {
        let h = SegmentHeader {
            first_seq: 9,
            created_ms: 1,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::check(&b), HeaderCheck::Valid(h));
        assert!(matches!(
            SegmentHeader::check(&b[..10]),
            HeaderCheck::Truncated { available: 10 }
        ));
        assert_eq!(SegmentHeader::check(&[0u8; 32]), HeaderCheck::Zeroed);
        let mut bad = b;
        bad[20] ^= 1;
        assert!(matches!(
            SegmentHeader::check(&bad),
            HeaderCheck::Corrupted { .. }
        ));
        assert_eq!(parse_segment_name(&segment_file_name(42)), Some(42));
        assert_eq!(parse_segment_name("42.seg"), None);
    }
}
