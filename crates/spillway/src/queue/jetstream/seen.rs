//! Repeats from the stream: the seqs of each producing spool this relay
//! already queued, so that a batch published twice (a retry past the
//! duplicate window, a batch cut differently after a restart) is queued
//! once.

use std::collections::{BTreeMap, HashMap};

use super::batch::BatchId;

/// Seqs already queued, per producing spool: ranges `start -> end`,
/// merged, at most [`MAX_RANGES`] per spool (the oldest forgotten).
#[derive(Default)]
pub(super) struct Seen(HashMap<u64, BTreeMap<u64, u64>>);

const MAX_RANGES: usize = 4096;

impl Seen {
    /// The parts of `id`'s seqs not queued yet, as index ranges into the batch.
    pub fn unseen(&self, id: &BatchId) -> Vec<(usize, usize)> {
        let Some(r) = self.0.get(&id.spool) else {
            return vec![(0, id.count as usize)];
        };
        let mut out = Vec::new();
        let mut at = id.first;
        let end = id.end();
        // Ranges that may overlap [first, end).
        let start_key = r
            .range(..=id.first)
            .next_back()
            .map_or(id.first, |(&s, _)| s);
        for (&s, &e) in r.range(start_key..end) {
            if e <= at {
                continue;
            }
            if s > at {
                out.push(((at - id.first) as usize, (s.min(end) - id.first) as usize));
            }
            at = at.max(e);
            if at >= end {
                break;
            }
        }
        if at < end {
            out.push(((at - id.first) as usize, id.count as usize));
        }
        out
    }

    pub fn add(&mut self, spool: u64, mut start: u64, mut end: u64) {
        let r = self.0.entry(spool).or_default();
        // Merge with neighbours and overlaps.
        let keys: Vec<u64> = r
            .range(..=end)
            .rev()
            .take_while(|&(_, &e)| e >= start)
            .map(|(&s, _)| s)
            .collect();
        for k in keys {
            let e = r.remove(&k).unwrap_or(k);
            start = start.min(k);
            end = end.max(e);
        }
        r.insert(start, end);
        while r.len() > MAX_RANGES {
            r.pop_first();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(first: u64, count: u32) -> BatchId {
        BatchId {
            spool: 7,
            first,
            count,
        }
    }

    #[test]
    fn seen_seqs_are_dropped_and_gaps_kept() {
        let mut s = Seen::default();
        assert_eq!(s.unseen(&id(10, 5)), [(0, 5)]);
        s.add(7, 10, 15);
        assert!(s.unseen(&id(10, 5)).is_empty(), "a repeat");
        assert!(s.unseen(&id(11, 2)).is_empty(), "inside");
        assert_eq!(s.unseen(&id(12, 6)), [(3, 6)], "overlapping the end");
        s.add(7, 20, 25);
        assert_eq!(s.unseen(&id(8, 20)), [(0, 2), (7, 12), (17, 20)]);
        s.add(7, 15, 20);
        assert_eq!(s.0[&7].len(), 1, "merged: {:?}", s.0[&7]);
        assert!(s.unseen(&id(10, 15)).is_empty());
        let other = BatchId {
            spool: 8,
            ..id(10, 5)
        };
        assert_eq!(s.unseen(&other), [(0, 5)], "another spool");
    }
}
