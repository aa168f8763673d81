//! The memory tier: the batches appended while the disk tier held nothing
//! pending, kept as they were encoded (one buffer each) with where each
//! message lies in it. A message is not a separate allocation or a
//! separate reference count until it is read, and an ack frees whole
//! batches: before, every message was split into its own `Bytes` at the
//! append and popped one by one at the ack (about a sixth of the relay's
//! instructions per live 64 B message).

use std::collections::VecDeque;

use bytes::Bytes;

use super::Message;
use crate::format::{read_varint, varint_len, EncodedBatch, RECORD_HEADER_LEN};

/// Where each message of a batch lies in its buffer: (offset, length).
#[derive(Debug)]
enum Places {
    /// A batch of one message (a producer that sends one at a time) needs
    /// no vector: one allocation fewer per message.
    One((usize, usize)),
    Many(Vec<(usize, usize)>),
}

#[derive(Debug)]
struct MemBatch {
    /// Sequence number of its first message.
    first: u64,
    /// When it was appended (ms since the Unix epoch).
    ms: u64,
    buf: Bytes,
    places: Places,
}

impl MemBatch {
    fn places(&self) -> &[(usize, usize)] {
        match &self.places {
            Places::One(p) => std::slice::from_ref(p),
            Places::Many(v) => v,
        }
    }

    fn end(&self) -> u64 {
        self.first + self.places().len() as u64
    }
}

/// What the memory tier holds: messages `first .. first + len`, in order.
#[derive(Debug, Default)]
pub(crate) struct MemTier {
    batches: VecDeque<MemBatch>,
    /// Messages of the front batch already gone (acknowledged): only the
    /// front batch can be partly acknowledged.
    front_gone: usize,
    first: u64,
    len: usize,
    bytes: u64,
    encoded: u64,
}

/// A message of `len` bytes as `close` encodes it: its length varint and
/// its bytes.
pub(crate) fn encoded_len(len: usize) -> u64 {
    // Messages are at most `max_message` (<= u32::MAX) bytes.
    (varint_len(len as u32) + len) as u64
}

impl MemTier {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The first message's sequence number (meaningless when empty).
    pub fn first(&self) -> u64 {
        self.first
    }

    /// Payload bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The messages as `close` encodes them (length varints + bytes), for
    /// the admission check against the reserve.
    pub fn encoded(&self) -> u64 {
        self.encoded
    }

    /// The sequence number after the last message held.
    pub fn end(&self) -> u64 {
        self.first + self.len as u64
    }

    /// Whether `seq` is held.
    pub fn holds(&self, seq: u64) -> bool {
        seq >= self.first && seq < self.end()
    }

    /// The index of the batch holding `seq` (if it is held).
    fn batch_of(&self, seq: u64) -> usize {
        self.batches.partition_point(|b| b.end() <= seq)
    }

    /// Each batch with the places of its messages still held.
    fn held(&self) -> impl Iterator<Item = (&MemBatch, &[(usize, usize)])> + Clone {
        self.batches.iter().enumerate().map(|(i, b)| {
            let gone = if i == 0 { self.front_gone } else { 0 };
            (b, &b.places()[gone..])
        })
    }

    /// Takes `batch` (finalized or not: only its payloads are read) as the
    /// messages from `first` on, appended at `ms`.
    pub fn push(&mut self, first: u64, ms: u64, batch: EncodedBatch) {
        let encoded = batch.encoded_payload();
        let buf = batch.buf.freeze();
        let mut msgs = Vec::with_capacity(batch.msgs);
        for span in &batch.spans {
            let mut pos = span.start + RECORD_HEADER_LEN;
            for _ in 0..span.count {
                // `encode_batch` wrote these: a varint and that many bytes.
                let Some((n, used)) = read_varint(&buf[pos..]) else {
                    break;
                };
                msgs.push((pos + used, n as usize));
                pos += used + n as usize;
            }
        }
        let places = match msgs[..] {
            [one] => Places::One(one),
            _ => Places::Many(msgs),
        };
        self.add(first, ms, buf, places, batch.payload_bytes, encoded);
    }

    /// Takes copies of `msgs` as the messages from `first` on, appended at
    /// `ms`: their bytes alone, one after the other in one buffer.
    /// `encoded`: their size as `close` encodes them ([`encoded_len`]).
    pub fn push_copied(&mut self, first: u64, ms: u64, msgs: &[&[u8]], encoded: u64) {
        let total: usize = msgs.iter().map(|m| m.len()).sum();
        let mut buf = Vec::with_capacity(total);
        let places = if let [m] = msgs {
            buf.extend_from_slice(m);
            Places::One((0, m.len()))
        } else {
            let mut places = Vec::with_capacity(msgs.len());
            for m in msgs {
                places.push((buf.len(), m.len()));
                buf.extend_from_slice(m);
            }
            Places::Many(places)
        };
        self.add(first, ms, Bytes::from(buf), places, total as u64, encoded);
    }

    /// Holds a batch whose messages lie in `buf` at `places`.
    fn add(&mut self, first: u64, ms: u64, buf: Bytes, places: Places, bytes: u64, encoded: u64) {
        if self.is_empty() {
            self.first = first;
        }
        debug_assert_eq!(first, self.first + self.len as u64);
        let batch = MemBatch {
            first,
            ms,
            buf,
            places,
        };
        self.len += batch.places().len();
        self.bytes += bytes;
        self.encoded += encoded;
        self.batches.push_back(batch);
    }

    /// Frees every message below `floor`.
    pub fn ack(&mut self, floor: u64) {
        while let Some(b) = self.batches.front() {
            let gone = self.front_gone;
            if floor <= b.first + gone as u64 {
                break;
            }
            let places = b.places();
            let upto = usize::try_from(floor - b.first)
                .unwrap_or(usize::MAX)
                .min(places.len());
            for &(_, n) in &places[gone..upto] {
                self.bytes -= n as u64;
                self.encoded -= encoded_len(n);
            }
            self.len -= upto - gone;
            self.first = b.first + upto as u64;
            if upto == places.len() {
                self.batches.pop_front();
                self.front_gone = 0;
            } else {
                self.front_gone = upto;
            }
        }
    }

    pub fn clear(&mut self) {
        self.batches.clear();
        self.front_gone = 0;
        self.first += self.len as u64;
        self.len = 0;
        self.bytes = 0;
        self.encoded = 0;
    }

    /// Passes the messages from `seq` on, in order, to `each` until it
    /// answers false (for a message it did not take) or none are left.
    pub fn read(&self, seq: u64, mut each: impl FnMut(Message) -> bool) {
        if !self.holds(seq) {
            return;
        }
        let at = self.batch_of(seq);
        let mut seq = seq;
        for b in self.batches.range(at..) {
            let start = usize::try_from(seq - b.first).unwrap_or(usize::MAX);
            for &(off, n) in b.places().get(start..).unwrap_or(&[]) {
                let m = Message {
                    seq,
                    data: b.buf.slice(off..off + n),
                    append_ms: b.ms,
                };
                if !each(m) {
                    return;
                }
                seq += 1;
            }
        }
    }

    /// Messages held below `seq`, and their payload bytes.
    pub fn below(&self, seq: u64) -> (u64, u64) {
        let mut msgs = 0u64;
        let mut bytes = 0u64;
        for (b, places) in self.held() {
            // `places` starts at the batch's end less its length.
            let start = b.end() - places.len() as u64;
            let upto = usize::try_from(seq.saturating_sub(start))
                .unwrap_or(usize::MAX)
                .min(places.len());
            if upto == 0 {
                break;
            }
            msgs += upto as u64;
            bytes += places[..upto].iter().map(|&(_, n)| n as u64).sum::<u64>();
        }
        (msgs, bytes)
    }

    /// When the message `seq` was appended, if it is held.
    pub fn ms_of(&self, seq: u64) -> Option<u64> {
        if !self.holds(seq) {
            return None;
        }
        self.batches.get(self.batch_of(seq)).map(|b| b.ms)
    }

    /// Every message held, in order (for `close`, which writes them out).
    pub fn payloads(&self) -> impl Iterator<Item = &[u8]> + Clone {
        self.held()
            .flat_map(|(b, places)| places.iter().map(move |&(off, n)| &b.buf[off..off + n]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::encode_batch;

    fn batch(msgs: &[&[u8]]) -> EncodedBatch {
        encode_batch(msgs.iter().copied())
    }

    fn read_all(t: &MemTier, seq: u64) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        t.read(seq, |m| {
            out.push((m.seq, m.data.to_vec()));
            true
        });
        out
    }

    #[test]
    fn reads_acks_and_counts_across_batches() {
        let mut t = MemTier::default();
        t.push(10, 1, batch(&[b"a", b"bb", b"ccc"]));
        t.push(13, 2, batch(&[b"dddd"]));
        t.push(14, 3, batch(&[b"", b"ffffff"]));
        assert_eq!((t.first(), t.len(), t.bytes()), (10, 6, 16));
        assert_eq!(t.encoded(), 16 + 6);
        let all = read_all(&t, 10);
        assert_eq!(all.len(), 6);
        assert_eq!(all[3], (13, b"dddd".to_vec()));
        assert_eq!(read_all(&t, 14)[1], (15, b"ffffff".to_vec()));
        assert!(read_all(&t, 16).is_empty());
        assert!(read_all(&t, 9).is_empty());
        assert_eq!(t.below(14), (4, 10));
        assert_eq!(t.ms_of(13), Some(2));
        assert_eq!(t.ms_of(16), None);

        // Inside the first batch, then across the second.
        t.ack(12);
        assert_eq!((t.first(), t.len(), t.bytes()), (12, 4, 13));
        assert_eq!(read_all(&t, 12)[0], (12, b"ccc".to_vec()));
        assert!(read_all(&t, 11).is_empty());
        assert_eq!(t.below(14), (2, 7));
        assert_eq!(t.ms_of(12), Some(1));
        t.ack(12);
        assert_eq!(t.len(), 4);
        t.ack(15);
        assert_eq!((t.first(), t.len(), t.bytes(), t.encoded()), (15, 1, 6, 7));
        assert_eq!(
            t.payloads().collect::<Vec<_>>(),
            vec![&b"ffffff"[..]],
            "close writes only what is held"
        );
        t.ack(100);
        assert!(t.is_empty());
        assert_eq!((t.first(), t.bytes(), t.encoded()), (16, 0, 0));
        // Empty, the next push starts where it says.
        t.push(16, 4, batch(&[b"g"]));
        assert_eq!(read_all(&t, 16), vec![(16, b"g".to_vec())]);
        t.clear();
        assert!(t.is_empty());
        assert_eq!(t.first(), 17);
    }

    #[test]
    fn a_read_stops_where_its_reader_says() {
        let mut t = MemTier::default();
        t.push(0, 0, batch(&[b"a", b"b"]));
        t.push(2, 0, batch(&[b"c", b"d"]));
        let mut got = Vec::new();
        t.read(1, |m| {
            if got.len() == 2 {
                return false;
            }
            got.push(m.seq);
            true
        });
        assert_eq!(got, vec![1, 2]);
    }

    #[test]
    fn a_batch_of_several_records_is_split_at_each() {
        // Messages above the record target land in records of their own.
        let big = vec![7u8; crate::format::RECORD_TARGET];
        let mut t = MemTier::default();
        t.push(0, 0, batch(&[b"x", &big, b"y"]));
        let all = read_all(&t, 0);
        assert_eq!(all.len(), 3);
        assert_eq!(all[1].1.len(), big.len());
        assert_eq!(all[2], (2, b"y".to_vec()));
    }
}
