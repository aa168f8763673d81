//! One JetStream message carries a *batch*: consecutive messages of one
//! route's write-behind spool. The payload is each message as the spool
//! holds it (framing included), after its length as a `u32` big-endian;
//! the headers name where the batch comes from, so that a retry is stored
//! once and a reader can put batches in order and drop repeats:
//!
//! ```text
//! Nats-Msg-Id:        sw1:<route>:<spool id, 16 hex>:<first seq>-<last seq>
//! Spillway-Spool-Id:  <spool id, 16 hex>
//! Spillway-First-Seq: <first seq>
//! Spillway-Count:     <messages>
//! ```
//!
//! The spool id is random, made when the spool is first used with a
//! JetStream backend: a spool wiped and made again starts at seq 0, and
//! its batches must not be taken for the old one's repeats. The message id
//! names both ends, so a batch cut differently after a restart is stored
//! again (a duplicate for the reader to drop), never dropped as a repeat.

use bytes::{BufMut, Bytes, BytesMut};

pub const HDR_SPOOL: &str = "Spillway-Spool-Id";
pub const HDR_FIRST: &str = "Spillway-First-Seq";
pub const HDR_COUNT: &str = "Spillway-Count";

/// Where a batch comes from and which seqs it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchId {
    pub spool: u64,
    pub first: u64,
    pub count: u32,
}

impl BatchId {
    /// The seq after the batch's last message.
    pub fn end(&self) -> u64 {
        self.first + u64::from(self.count)
    }

    /// The `Nats-Msg-Id` of this batch on `route`.
    pub fn msg_id(&self, route: &str) -> String {
        format!(
            "sw1:{route}:{:016x}:{}-{}",
            self.spool,
            self.first,
            self.end() - 1
        )
    }

    /// Reads the batch headers (`None` when a header is missing or bad:
    /// not a spillway batch).
    pub fn from_headers(get: impl Fn(&str) -> Option<String>) -> Option<BatchId> {
        let spool = u64::from_str_radix(get(HDR_SPOOL)?.trim(), 16).ok()?;
        let first = get(HDR_FIRST)?.trim().parse().ok()?;
        let count: u32 = get(HDR_COUNT)?.trim().parse().ok()?;
        (count > 0 && first <= u64::MAX - u64::from(count)).then_some(BatchId {
            spool,
            first,
            count,
        })
    }
}

/// Builds a batch's payload.
#[derive(Default)]
pub struct Builder {
    buf: BytesMut,
    count: u32,
}

impl Builder {
    /// Bytes `push(msg)` adds.
    pub fn cost(msg: &[u8]) -> usize {
        4 + msg.len()
    }

    pub fn push(&mut self, msg: &[u8]) {
        // Messages are at most the route's max_message (validated to fit
        // one JetStream message), far below 4 GiB.
        self.buf
            .put_u32(u32::try_from(msg.len()).unwrap_or(u32::MAX));
        self.buf.put_slice(msg);
        self.count += 1;
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The payload so far; the builder starts again empty.
    pub fn take(&mut self) -> (Bytes, u32) {
        let count = std::mem::take(&mut self.count);
        (self.buf.split().freeze(), count)
    }
}

/// Why a payload is not a batch of `count` messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad batch payload: {0}")]
pub struct BadBatch(pub String);

/// The messages of a batch's payload, as slices of it (no copy).
pub fn split(payload: &Bytes, count: u32) -> Result<Vec<Bytes>, BadBatch> {
    let mut out = Vec::with_capacity(count.min(65_536) as usize);
    let mut at = 0usize;
    while at < payload.len() {
        let Some(head) = payload.get(at..at + 4) else {
            return Err(BadBatch(format!(
                "{} trailing bytes after {} messages",
                payload.len() - at,
                out.len()
            )));
        };
        let n = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let start = at + 4;
        let Some(end) = start.checked_add(n).filter(|&e| e <= payload.len()) else {
            return Err(BadBatch(format!(
                "message {} says {n} bytes, {} are left",
                out.len(),
                payload.len() - start
            )));
        };
        out.push(payload.slice(start..end));
        at = end;
    }
    if out.len() != count as usize {
        return Err(BadBatch(format!(
            "{} messages, the header says {count}",
            out.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_round_trips() {
        let mut b = Builder::default();
        let msgs: [&[u8]; 4] = [b"one\n", b"", b"three\n", &[0u8; 300]];
        for m in msgs {
            b.push(m);
        }
        assert_eq!(
            b.len(),
            msgs.iter().map(|m| Builder::cost(m)).sum::<usize>()
        );
        let (payload, count) = b.take();
        assert!(b.is_empty());
        assert_eq!(count, 4);
        let got = split(&payload, count).expect("split");
        assert_eq!(got.iter().map(|m| &m[..]).collect::<Vec<_>>(), msgs);
    }

    #[test]
    fn bad_payloads_are_errors_not_panics() {
        let mut b = Builder::default();
        b.push(b"abc");
        b.push(b"defg");
        let (p, _) = b.take();
        assert!(split(&p, 3).is_err(), "count mismatch");
        for cut in 0..p.len() {
            let r = split(&p.slice(..cut), 2);
            assert!(r.is_err(), "cut at {cut}");
        }
        let mut huge = BytesMut::new();
        huge.put_u32(u32::MAX);
        huge.put_slice(b"x");
        assert!(split(&huge.freeze(), 1).is_err());
    }

    #[test]
    fn ids_name_both_ends_and_headers_parse() {
        let id = BatchId {
            spool: 0xabc,
            first: 10,
            count: 5,
        };
        assert_eq!(id.msg_id("orders"), "sw1:orders:0000000000000abc:10-14");
        let h = |k: &str| match k {
            HDR_SPOOL => Some("0000000000000abc".to_string()),
            HDR_FIRST => Some("10".to_string()),
            HDR_COUNT => Some("5".to_string()),
            _ => None,
        };
        assert_eq!(BatchId::from_headers(h), Some(id));
        assert_eq!(BatchId::from_headers(|_| None), None);
        let zero = |k: &str| {
            if k == HDR_COUNT {
                Some("0".into())
            } else {
                h(k)
            }
        };
        assert_eq!(BatchId::from_headers(zero), None);
    }
}
