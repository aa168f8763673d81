//! Which messages a consumer connection holds, and how its pending acks
//! become as few ACK and ACKS frames as the protocol allows. Sans-IO: the
//! connection's driver tells it what arrived and what the application
//! settled; it answers with frames.
//!
//! The protocol's two acks are both dangerous when used loosely, so the
//! rules here are strict:
//! - `ACK <seq>` acknowledges `seq` and *everything delivered before it on
//!   this connection* that the relay still holds. It is sent only for the
//!   end of the longest prefix, in delivery order, of messages that are
//!   acknowledged or already settled (their ACK, ACKS, NAK or TERM written
//!   before it). A message not yet settled is never covered.
//! - `ACKS <a>-<b>` acknowledges every held seq in `a..=b`, including ones
//!   the relay has sent and this side has not read yet (a redelivery may
//!   have a smaller seq than what came before). So a range only ever spans
//!   consecutive integers that are all being acknowledged: a gap is a seq
//!   this side may not have seen.
//!
//! Each delivery gets a tag (its number on this connection): a seq can be
//! delivered again on the same connection after a NAK, so the seq alone
//! does not name a delivery.

use std::collections::VecDeque;

use spillway_codec::proto::{Frame, MAX_ACK_RANGES, MAX_LINE};

/// One delivery on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// Delivered, not settled by the application.
    Held(u64),
    /// Acknowledged by the application, not yet written.
    Acked(u64),
    /// Its ACK, ACKS, NAK or TERM is written (or queued ahead of anything
    /// written later): the relay no longer holds it for this connection.
    Done,
}

/// The deliveries of one consumer connection, in delivery order.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    /// The tag of `entries[0]`.
    base: u64,
    entries: VecDeque<Entry>,
    /// Tags acknowledged since the last flush (some may have left
    /// `entries` through the cumulative prefix since).
    pending: Vec<u64>,
    /// Held or acknowledged-but-unwritten entries.
    unsettled: usize,
}

/// The most ranges in one ACKS in text: its line must fit
/// [`MAX_LINE`] bytes. `ACKS ` and `\n` take 6; a range of two 20-digit
/// seqs and its comma take 42.
const TEXT_ACK_RANGES: usize = (MAX_LINE - 6) / 42;

impl Tracker {
    /// Records a delivery of `seq`; returns its tag.
    pub(crate) fn deliver(&mut self, seq: u64) -> u64 {
        let tag = self.base + self.entries.len() as u64;
        self.entries.push_back(Entry::Held(seq));
        self.unsettled += 1;
        tag
    }

    fn entry(&mut self, tag: u64) -> Option<&mut Entry> {
        let i = usize::try_from(tag.checked_sub(self.base)?).ok()?;
        self.entries.get_mut(i)
    }

    /// The seq of the delivery `tag` while the application holds it.
    pub(crate) fn held(&mut self, tag: u64) -> Option<u64> {
        match self.entry(tag) {
            Some(Entry::Held(seq)) => Some(*seq),
            _ => None,
        }
    }

    /// The application acknowledges `tag`: pending until [`Tracker::flush`].
    /// False (and nothing changes) if it is not held.
    pub(crate) fn ack(&mut self, tag: u64) -> bool {
        let Some(e) = self.entry(tag) else {
            return false;
        };
        let Entry::Held(seq) = *e else { return false };
        *e = Entry::Acked(seq);
        self.pending.push(tag);
        true
    }

    /// The application gave `tag` back or refused it (NAK, TERM): the
    /// caller writes that frame now, before any ack flushed later. Returns
    /// its seq, `None` if it is not held.
    pub(crate) fn settle(&mut self, tag: u64) -> Option<u64> {
        let e = self.entry(tag)?;
        let Entry::Held(seq) = *e else { return None };
        *e = Entry::Done;
        self.unsettled -= 1;
        self.trim();
        Some(seq)
    }

    /// Whether acknowledgements wait for [`Tracker::flush`].
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Deliveries not settled, or acknowledged and not yet flushed.
    pub(crate) fn unsettled(&self) -> usize {
        self.unsettled
    }

    fn trim(&mut self) {
        while self.entries.front() == Some(&Entry::Done) {
            self.entries.pop_front();
            self.base += 1;
        }
    }

    /// The frames that acknowledge every pending ack (to be written after
    /// everything already written or queued): at most one cumulative ACK,
    /// then ACKS frames of at most `MAX_ACK_RANGES` ranges in binary and
    /// of a line that fits [`MAX_LINE`] in text.
    pub(crate) fn flush(&mut self, text: bool, out: &mut Vec<Frame>) {
        if self.pending.is_empty() {
            return;
        }
        // The cumulative prefix.
        let mut last = None;
        while let Some(&e) = self.entries.front() {
            match e {
                Entry::Held(_) => break,
                Entry::Acked(seq) => {
                    last = Some(seq);
                    self.unsettled -= 1;
                }
                Entry::Done => {}
            }
            self.entries.pop_front();
            self.base += 1;
        }
        if let Some(seq) = last {
            out.push(Frame::Ack { seq });
        }
        // The rest, as ranges of consecutive seqs.
        let mut seqs = Vec::new();
        for tag in std::mem::take(&mut self.pending) {
            if let Some(e) = self.entry(tag) {
                if let Entry::Acked(seq) = *e {
                    *e = Entry::Done;
                    seqs.push(seq);
                }
            }
        }
        self.unsettled -= seqs.len();
        self.trim();
        seqs.sort_unstable();
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for seq in seqs {
            match ranges.last_mut() {
                Some((_, b)) if b.checked_add(1) == Some(seq) => *b = seq,
                _ => ranges.push((seq, seq)),
            }
        }
        let per_frame = if text {
            TEXT_ACK_RANGES
        } else {
            MAX_ACK_RANGES
        };
        for chunk in ranges.chunks(per_frame) {
            out.push(Frame::Acks {
                ranges: chunk.to_vec(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use spillway_codec::proto::{self, Encoding, FrameDecoder};

    fn flushed(t: &mut Tracker) -> Vec<Frame> {
        let mut out = Vec::new();
        t.flush(false, &mut out);
        out
    }

    /// A model of the relay's side (`Held` in the relay's ack_consumer):
    /// which seqs each frame acknowledges, given what it delivered.
    struct RelayModel {
        /// (seq) in delivery order, still held.
        held: Vec<u64>,
    }

    impl RelayModel {
        fn apply(&mut self, f: &Frame) -> Vec<u64> {
            match f {
                Frame::Ack { seq } => match self.held.iter().position(|s| s == seq) {
                    Some(i) => self.held.drain(..=i).collect(),
                    None => Vec::new(),
                },
                Frame::Acks { ranges } => {
                    let (gone, kept): (Vec<u64>, Vec<u64>) = self
                        .held
                        .iter()
                        .partition(|&&s| ranges.iter().any(|&(a, b)| a <= s && s <= b));
                    self.held = kept;
                    gone
                }
                Frame::Nak { seq, .. } | Frame::Term { seq, .. } => {
                    self.held.retain(|s| s != seq);
                    vec![*seq]
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn in_order_acks_are_one_cumulative_ack() {
        let mut t = Tracker::default();
        let tags: Vec<u64> = (10..20).map(|s| t.deliver(s)).collect();
        for &tag in &tags[..5] {
            assert!(t.ack(tag));
        }
        assert_eq!(flushed(&mut t), [Frame::Ack { seq: 14 }]);
        assert_eq!(t.unsettled(), 5);
        assert!(!t.has_pending());
        assert!(flushed(&mut t).is_empty());
        assert!(!t.ack(tags[0]), "acknowledged already");
    }

    #[test]
    fn acks_behind_a_held_message_are_ranges_that_skip_it() {
        let mut t = Tracker::default();
        let tags: Vec<u64> = [1, 2, 3, 4, 6, 7, 9].map(|s| t.deliver(s)).to_vec();
        for i in [1, 2, 4, 5, 6] {
            assert!(t.ack(tags[i]));
        }
        // 1 is held: no cumulative ack; 2-3, then 6-7 (4 is held, 5 was
        // never seen), then 9.
        assert_eq!(
            flushed(&mut t),
            [Frame::Acks {
                ranges: vec![(2, 3), (6, 7), (9, 9)]
            }]
        );
        assert_eq!(t.unsettled(), 2);
        // Acking 1 now covers 1 and everything after it that is settled,
        // up to 4, which is still held.
        assert!(t.ack(tags[0]));
        assert_eq!(flushed(&mut t), [Frame::Ack { seq: 1 }]);
        assert!(t.ack(tags[3]));
        assert_eq!(flushed(&mut t), [Frame::Ack { seq: 4 }]);
        assert_eq!(t.unsettled(), 0);
        assert!(t.entries.is_empty(), "{:?}", t.entries);
    }

    #[test]
    fn a_nak_settles_at_once_and_the_same_seq_may_come_again() {
        let mut t = Tracker::default();
        let a = t.deliver(5);
        let b = t.deliver(6);
        assert_eq!(t.settle(a), Some(5));
        assert_eq!(t.settle(a), None, "settled once");
        assert_eq!(t.held(a), None);
        let again = t.deliver(5);
        assert_ne!(again, a);
        assert_eq!(t.held(again), Some(5));
        assert!(t.ack(again));
        // 6 is held before it: a range, not a cumulative ACK.
        assert_eq!(
            flushed(&mut t),
            [Frame::Acks {
                ranges: vec![(5, 5)]
            }]
        );
        assert!(t.ack(b));
        assert_eq!(flushed(&mut t), [Frame::Ack { seq: 6 }]);
        assert_eq!(t.unsettled(), 0);
    }

    #[test]
    fn ranges_are_cut_to_the_frame_limits() {
        for (text, per) in [(false, MAX_ACK_RANGES), (true, TEXT_ACK_RANGES)] {
            let mut t = Tracker::default();
            let first = t.deliver(u64::MAX - 1);
            // Every other seq, so each is its own range; big numbers, so
            // the text lines are as long as they get.
            let n = 2 * per + 3;
            for i in 0..n as u64 {
                let tag = t.deliver(u64::MAX - 10_000 + 2 * i);
                t.ack(tag);
            }
            let mut out = Vec::new();
            t.flush(text, &mut out);
            assert_eq!(out.len(), 3);
            let encoding = if text {
                Encoding::Text
            } else {
                Encoding::Binary
            };
            let mut total = 0;
            for f in &out {
                let Frame::Acks { ranges } = f else {
                    panic!("{f:?}")
                };
                assert!(ranges.len() <= per);
                total += ranges.len();
                // The relay's decoder takes it.
                let mut buf = BytesMut::new();
                proto::encode(f, encoding, &mut buf);
                if text {
                    assert!(buf.len() <= MAX_LINE, "{} bytes", buf.len());
                }
                let mut d = FrameDecoder::new(encoding, 1 << 20);
                assert_eq!(d.decode(&mut buf).expect("valid frame").as_ref(), Some(f));
            }
            assert_eq!(total, n);
            assert!(t.settle(first).is_some());
        }
    }

    /// Random deliveries (with redeliveries of small seqs, as after a NAK
    /// or a lost consumer), acks in random order, NAKs, flushes at random
    /// points: the relay model never sees a message acknowledged that the
    /// application did not acknowledge, and sees every acknowledged one.
    #[test]
    fn flushed_frames_acknowledge_exactly_what_was_acknowledged() {
        for seed in 0..300u64 {
            let mut rng = fastrand_lite(seed);
            let mut t = Tracker::default();
            let mut relay = RelayModel { held: Vec::new() };
            let mut app: Vec<(u64, u64)> = Vec::new(); // (tag, seq) held
            let mut acked: Vec<u64> = Vec::new();
            let mut next_seq = 100u64;
            let mut frames = Vec::new();
            for _ in 0..200 {
                match rng() % 6 {
                    0 | 1 => {
                        // Deliver: a new seq, or a small one again (a
                        // redelivery), never one held here.
                        let seq = if rng().is_multiple_of(4) {
                            let s = rng() % 100;
                            if relay.held.contains(&s) {
                                continue;
                            }
                            s
                        } else {
                            next_seq += 1 + rng() % 3;
                            next_seq
                        };
                        relay.held.push(seq);
                        app.push((t.deliver(seq), seq));
                    }
                    2 | 3 if !app.is_empty() => {
                        let (tag, seq) = app.swap_remove((rng() % app.len() as u64) as usize);
                        assert!(t.ack(tag));
                        acked.push(seq);
                    }
                    4 if !app.is_empty() => {
                        let (tag, seq) = app.swap_remove((rng() % app.len() as u64) as usize);
                        assert_eq!(t.settle(tag), Some(seq));
                        frames.push(Frame::Nak { seq, delay_ms: 0 });
                    }
                    _ => {
                        t.flush(rng().is_multiple_of(2), &mut frames);
                    }
                }
                for f in frames.drain(..) {
                    for seq in relay.apply(&f) {
                        if matches!(f, Frame::Nak { .. }) {
                            continue;
                        }
                        let i = acked.iter().position(|&s| s == seq).unwrap_or_else(|| {
                            panic!("seed {seed}: {f:?} acknowledged {seq}, never acked")
                        });
                        acked.swap_remove(i);
                    }
                }
            }
            t.flush(false, &mut frames);
            for f in frames.drain(..) {
                relay.apply(&f);
            }
            let mut still: Vec<u64> = app.iter().map(|&(_, s)| s).collect();
            still.sort_unstable();
            let mut held = relay.held.clone();
            held.sort_unstable();
            assert_eq!(
                held, still,
                "seed {seed}: the relay holds what the app holds"
            );
            assert_eq!(t.unsettled(), app.len(), "seed {seed}");
        }
    }

    /// A small deterministic generator (xorshift), so the test needs no
    /// dependency.
    fn fastrand_lite(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }
}
