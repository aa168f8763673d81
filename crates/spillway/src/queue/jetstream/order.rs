//! Stream order for the puller: a batch is queued only once every batch
//! before it in the stream was queued here or is gone from the stream.
//!
//! The durable consumer hands out new batches in stream order, but a batch
//! it hands out *again* comes behind newer ones: the batches a relay held
//! when it died (after AckWait), or one sent to a pull request that was
//! already given up (its subscriber gone). Queued as they come, these land
//! behind newer batches and a consumer sees them out of order.
//!
//! So the puller keeps what arrives ahead of a gap (a stream seq after
//! [`Reorder::next`] that has not come) and releases it when the gap
//! fills. A gap can also be a batch that will never come: acknowledged
//! already (a repeat the relay dropped, a batch acknowledged by a relay
//! that died before its ack floor moved). The stream is a work queue: an
//! acknowledged batch is deleted, so the puller asks the stream for the
//! first batch at or after the gap and skips what is not there
//! ([`Reorder::skip_to`]).
//!
//! A relay that shares the durable with other relays sees gaps the others
//! hold, which may never come: `ordered = false` turns this off. Each gap
//! is waited for at most a hold limit, then given up and counted.

use std::collections::BTreeMap;

use tokio::time::Instant;

/// What arrived ahead of a gap, by stream seq.
pub(super) struct Reorder<T> {
    /// Every stream seq before this one was released here, or is known
    /// not to come (acknowledged, deleted). `None` until the consumer's
    /// ack floor is known.
    next: Option<u64>,
    waiting: BTreeMap<u64, (Instant, T)>,
}

/// What [`Reorder::offer`] did with an arrival.
pub(super) enum Offer<T> {
    /// Before `next`: a batch released already, sent again. The caller
    /// handles it at once (its messages are repeats).
    Behind(T),
    /// The same stream seq is waiting already.
    Repeat(T),
    /// Kept until its turn.
    Kept,
}

impl<T> Reorder<T> {
    pub fn new() -> Self {
        Reorder {
            next: None,
            waiting: BTreeMap::new(),
        }
    }

    /// Sets where the order starts (the consumer's ack floor + 1), if it
    /// is not known yet.
    pub fn start_at(&mut self, next: u64) {
        if self.next.is_none() {
            self.next = Some(next);
        }
    }

    pub fn offer(&mut self, seq: u64, item: T, now: Instant) -> Offer<T> {
        if self.next.is_some_and(|n| seq < n) {
            return Offer::Behind(item);
        }
        if self.waiting.contains_key(&seq) {
            return Offer::Repeat(item);
        }
        self.waiting.insert(seq, (now, item));
        Offer::Kept
    }

    /// The next batch whose turn it is.
    pub fn pop_ready(&mut self) -> Option<(u64, T)> {
        let next = self.next?;
        let (&seq, _) = self.waiting.first_key_value()?;
        if seq > next {
            return None;
        }
        let (_, item) = self.waiting.remove(&seq).expect("first");
        self.next = Some(seq + 1);
        Some((seq, item))
    }

    /// The gap the first waiting batch waits for: `(next, first waiting)`,
    /// with when the first waiting batch arrived; `next` is `None` while
    /// the start is unknown.
    pub fn gap(&self) -> Option<(Option<u64>, u64, Instant)> {
        let (&seq, &(at, _)) = self.waiting.first_key_value()?;
        if self.next.is_some_and(|n| seq <= n) {
            return None;
        }
        Some((self.next, seq, at))
    }

    /// Stream seqs before `seq` will not come (not in the stream, or given
    /// up on).
    pub fn skip_to(&mut self, seq: u64) {
        self.next = Some(self.next.map_or(seq, |n| n.max(seq)));
    }

    /// Batches from `seq` on come again (given back to the stream): the
    /// order starts there again, below where it was.
    pub fn rewind_to(&mut self, seq: u64) {
        self.next = Some(self.next.map_or(seq, |n| n.min(seq)));
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    pub fn items(&self) -> impl Iterator<Item = &T> {
        self.waiting.values().map(|(_, t)| t)
    }

    /// Everything waiting, in stream order, with its stream seq.
    pub fn drain_with_seqs(&mut self) -> impl Iterator<Item = (u64, T)> {
        std::mem::take(&mut self.waiting)
            .into_iter()
            .map(|(seq, (_, t))| (seq, t))
    }

    /// Everything waiting, in stream order.
    pub fn drain(&mut self) -> impl Iterator<Item = T> {
        std::mem::take(&mut self.waiting)
            .into_values()
            .map(|(_, t)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pops(r: &mut Reorder<&'static str>) -> Vec<u64> {
        std::iter::from_fn(|| r.pop_ready().map(|(s, _)| s)).collect()
    }

    #[test]
    fn nothing_is_released_before_the_start_is_known() {
        let now = Instant::now();
        let mut r = Reorder::new();
        assert!(matches!(r.offer(12, "c", now), Offer::Kept));
        assert!(pops(&mut r).is_empty());
        assert_eq!(r.gap().map(|g| (g.0, g.1)), Some((None, 12)));
        r.start_at(10);
        assert!(pops(&mut r).is_empty(), "10 and 11 have not come");
        assert!(matches!(r.offer(10, "a", now), Offer::Kept));
        assert_eq!(pops(&mut r), [10]);
        assert_eq!(r.gap().map(|g| (g.0, g.1)), Some((Some(11), 12)));
        r.skip_to(12);
        assert_eq!(pops(&mut r), [12]);
        assert!(r.gap().is_none());
    }

    #[test]
    fn a_batch_sent_again_behind_newer_ones_goes_first() {
        let now = Instant::now();
        let mut r = Reorder::new();
        r.start_at(1);
        for s in [1, 2] {
            r.offer(s, "x", now);
        }
        assert_eq!(pops(&mut r), [1, 2]);
        // 3 and 4 went to a pull nobody reads; 5 and 6 come first.
        for s in [5, 6] {
            r.offer(s, "x", now);
        }
        assert!(pops(&mut r).is_empty());
        assert!(matches!(r.offer(5, "x", now), Offer::Repeat(_)));
        r.offer(4, "x", now);
        assert!(pops(&mut r).is_empty(), "3 still missing");
        r.offer(3, "x", now);
        assert_eq!(pops(&mut r), [3, 4, 5, 6]);
        assert!(matches!(r.offer(2, "x", now), Offer::Behind(_)));
        assert!(r.is_empty());
    }

    #[test]
    fn skipping_never_moves_back_and_drain_is_in_order() {
        let now = Instant::now();
        let mut r = Reorder::new();
        r.start_at(5);
        r.start_at(1);
        r.skip_to(3);
        assert!(matches!(r.offer(4, "x", now), Offer::Behind(_)));
        for (s, v) in [(9, "c"), (7, "a"), (8, "b")] {
            r.offer(s, v, now);
        }
        assert!(matches!(r.offer(8, "b", now), Offer::Repeat(_)));
        assert_eq!(r.items().count(), 3);
        assert_eq!(r.drain().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert!(r.is_empty());
    }
}
