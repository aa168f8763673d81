//! Handing queued messages to consumers in FIFO order, and computing what
//! may be acknowledged to the spool.
//!
//! Messages go out in sequence order: first those a departed consumer gave
//! back (lowest sequence first), then new ones read from the spool. Each
//! consumer reports the lowest sequence it still holds undelivered; the
//! spool's ack floor is the lowest sequence anyone still needs, so a
//! message is acknowledged only once it and everything before it were
//! delivered.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use spillway_spool::{Message, Spool, SpoolError};

#[derive(Debug)]
pub struct Dispatch {
    /// Next sequence to read from the spool for a fresh dispatch.
    next_read: u64,
    /// Given back by consumers that left; sent before anything new.
    returned: BTreeMap<u64, (Bytes, u64)>,
    /// Per consumer: the lowest sequence it holds undelivered.
    holders: HashMap<u64, u64>,
    /// Last floor passed to `Spool::ack`.
    acked: u64,
}

impl Dispatch {
    pub fn new(start: u64) -> Self {
        Dispatch {
            next_read: start,
            returned: BTreeMap::new(),
            holders: HashMap::new(),
            acked: start,
        }
    }

    /// Up to `max_msgs` / about `max_bytes` of the next messages for
    /// `consumer`, which then holds them until it reports delivery.
    pub fn take(
        &mut self,
        spool: &Spool,
        consumer: u64,
        max_msgs: usize,
        max_bytes: usize,
    ) -> Result<Vec<Message>, SpoolError> {
        let mut out = Vec::new();
        if !self.returned.is_empty() {
            let mut bytes = 0;
            while out.len() < max_msgs && (bytes < max_bytes || out.is_empty()) {
                let Some((seq, (data, append_ms))) = self.returned.pop_first() else {
                    break;
                };
                bytes += data.len();
                out.push(Message {
                    seq,
                    data,
                    append_ms,
                });
            }
        } else {
            out = spool.read(self.next_read, max_msgs, max_bytes)?;
            if let Some(last) = out.last() {
                // A read can start past `next_read` when drop-oldest deleted
                // messages; continue after what was actually read.
                self.next_read = last.seq + 1;
            }
        }
        if let Some(first) = out.first() {
            let lowest = self.holders.entry(consumer).or_insert(first.seq);
            *lowest = (*lowest).min(first.seq);
        }
        Ok(out)
    }

    /// `consumer` now holds nothing below `lowest` (None: nothing at all).
    /// Returns the new ack floor when it moved.
    pub fn delivered(&mut self, consumer: u64, lowest: Option<u64>) -> Option<u64> {
        match lowest {
            Some(l) => {
                self.holders.insert(consumer, l);
            }
            None => {
                self.holders.remove(&consumer);
            }
        }
        self.advance()
    }

    /// `consumer` left: its undelivered messages go back to the front.
    pub fn give_back(
        &mut self,
        consumer: u64,
        msgs: impl IntoIterator<Item = Message>,
    ) -> Option<u64> {
        self.holders.remove(&consumer);
        self.put_back(msgs);
        self.advance()
    }

    /// Messages a consumer took but will not send go back to the front; the
    /// consumer reports what it still holds with [`Dispatch::delivered`].
    pub fn put_back(&mut self, msgs: impl IntoIterator<Item = Message>) {
        for m in msgs {
            self.returned.insert(m.seq, (m.data, m.append_ms));
        }
    }

    /// The lowest sequence anyone still needs.
    pub fn floor(&self) -> u64 {
        let mut f = self.next_read;
        if let Some((&s, _)) = self.returned.first_key_value() {
            f = f.min(s);
        }
        if let Some(&h) = self.holders.values().min() {
            f = f.min(h);
        }
        f
    }

    fn advance(&mut self) -> Option<u64> {
        let f = self.floor();
        if f > self.acked {
            self.acked = f;
            Some(f)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spillway_spool::SpoolConfig;

    fn spool_with(n: u64) -> (tempfile::TempDir, Spool) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, _) = Spool::open(SpoolConfig::new(dir.path())).expect("open");
        for i in 0..n {
            spool
                .append(&[format!("m{i}\n").as_bytes()])
                .expect("append");
        }
        (dir, spool)
    }

    #[test]
    fn floor_waits_for_the_slowest_holder() {
        let (_d, spool) = spool_with(10);
        let first = spool.ack_floor();
        let mut d = Dispatch::new(first);
        let a = d.take(&spool, 1, 3, usize::MAX).expect("take");
        let b = d.take(&spool, 2, 3, usize::MAX).expect("take");
        assert_eq!(
            a.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![first, first + 1, first + 2]
        );
        assert_eq!(b[0].seq, first + 3);
        // B delivered everything, A nothing: the floor stays at A's first.
        assert_eq!(d.delivered(2, None), None);
        assert_eq!(d.floor(), first);
        // A delivers its first two.
        assert_eq!(d.delivered(1, Some(first + 2)), Some(first + 2));
        // A leaves with its last one undelivered: it comes back first.
        let back = a.into_iter().skip(2);
        assert_eq!(d.give_back(1, back), None);
        let c = d.take(&spool, 3, 10, usize::MAX).expect("take");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].seq, first + 2);
        let rest = d.take(&spool, 3, 10, usize::MAX).expect("take");
        assert_eq!(rest[0].seq, first + 6);
        assert_eq!(d.delivered(3, None), Some(first + 10));
    }
}
