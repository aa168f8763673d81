//! Handing queued messages to consumers, and computing what may be
//! acknowledged to the spool. A state machine with no I/O: a reader (the
//! route's `spool-read` thread, or a take that found nothing, see
//! `dispatcher.rs`) claims the next read ([`Dispatch::begin_read`]) and
//! supplies what it read ([`Dispatch::supply`]), ahead of the takes; the
//! caller reports what
//! each consumer's TCP acknowledged as a byte offset of its connection.
//!
//! Life of a consumer: [`Dispatch::join`], then rounds of
//! [`Dispatch::take`] (messages are assigned to it and laid out on its
//! connection's byte stream) and [`Dispatch::acked`] (its TCP acknowledged
//! the stream up to an offset: the messages that end there are delivered);
//! [`Dispatch::cut`] stops it after the message in flight (the rest goes
//! back); [`Dispatch::leave`] gives back everything it still holds.
//!
//! Invariants (checked by the property test below against a model):
//! - every message is held by at most one consumer;
//! - messages given back go out again before anything new, lowest
//!   sequence first;
//! - the ack floor never passes a message that was not delivered: it is
//!   the lowest sequence that is unread, given back, or held by any
//!   consumer. A consumer's holdings are *not* sorted by sequence (messages
//!   given back by another consumer are taken behind higher ones already in
//!   flight), so its lowest is the least of its first message and the
//!   places where its sequence descends, not its first message.
//!
//! Each consumer also keeps a redelivery window: the last `redeliver`
//! bytes it delivered, which go back to the queue if it resets (its kernel
//! acknowledged them, but they may have been unread in its receive
//! buffer). So there are two floors:
//! - the **delivered floor** ([`Dispatch::delivered_floor`]): below it,
//!   everything reached a consumer's TCP; queue depth counts from here;
//! - the **retention floor** ([`Dispatch::floor`], what the spool is
//!   acknowledged up to): it also waits for the windows of connected
//!   consumers, so a window survives a relay restart or crash (re-sent from
//!   the spool, as duplicates) instead of living in memory only. A consumer
//!   that leaves cleanly drops its window, and the floor moves on. When the
//!   disk is wanted (an append waits for space), the windows stop holding
//!   the floor ([`Dispatch::release_windows`]): they are still re-sent on a
//!   reset, from memory, but no longer kept on disk, so windows can never
//!   wedge a full spool.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Instant;

mod acking;

pub use acking::{AckOutcome, Bury, BuryReason, NotHeld};

use spillway_spool::Message;

/// A consumer connection, as the dispatcher knows it.
pub type ConsumerId = u64;

/// A message assigned to a consumer, and where it ends on the
/// connection's byte stream.
#[derive(Debug)]
struct Held {
    msg: Message,
    end: u64,
    /// Deliveries of this message before this one (ack-protocol attempts,
    /// carried through a plain consumer that gives it back).
    attempts: u32,
}

impl Held {
    fn start(&self) -> u64 {
        self.end - self.msg.data.len() as u64
    }
}

/// Default of the route's `max_deliveries`.
pub const DEFAULT_MAX_DELIVERIES: u32 = 5;

/// A message given back (or delayed), waiting to go out again.
#[derive(Debug)]
struct Back {
    msg: Message,
    /// Deliveries so far (ack-protocol attempts; the next is one more).
    attempts: u32,
    /// Given back by an ack-protocol consumer that was lost while holding
    /// it: it goes out alone, to a consumer that holds nothing else, so
    /// that a message that kills its consumers charges attempts only to
    /// itself (see `acking.rs`).
    suspect: bool,
}

impl Back {
    fn plain(msg: Message, attempts: u32) -> Self {
        Back {
            msg,
            attempts,
            suspect: false,
        }
    }
}

/// What one consumer holds: every message assigned to it and not yet
/// let go, in stream order. The first `window` are delivered (the
/// redelivery window, oldest first); the rest are in flight. A delivery
/// only moves that boundary, and the window is trimmed from the front:
/// no message is moved between collections (at millions of small messages
/// a second, those moves were a tenth of the relay's work).
///
/// `sent` is not sorted by sequence (messages given back by another
/// consumer are taken behind higher ones already in flight), but it
/// ascends between its descents, so the lowest sequence of a stretch is
/// the least of its first message and the descents in it.
#[derive(Debug, Default)]
struct Holding {
    sent: VecDeque<Held>,
    /// How many of `sent` (from the front) are delivered, and their bytes.
    window: usize,
    window_bytes: u64,
    /// Positions (counted from the first message ever assigned) of the
    /// messages in `sent` lower than the one before them.
    descents: VecDeque<u64>,
    /// Messages let go from the front of `sent` so far.
    dropped: u64,
    /// Stream offset where the last assigned message ends.
    end: u64,
    /// An ack-protocol consumer's state (`None`: a plain consumer).
    acking: Option<acking::AckHold>,
}

impl Holding {
    /// Assigns `h` after everything before.
    fn push(&mut self, h: Held) {
        if self.sent.back().is_some_and(|b| b.msg.seq > h.msg.seq) {
            self.descents
                .push_back(self.dropped + self.sent.len() as u64);
        }
        self.sent.push_back(h);
    }

    /// Takes back the last message assigned.
    fn pop(&mut self) -> Option<Held> {
        let h = self.sent.pop_back()?;
        let at = self.dropped + self.sent.len() as u64;
        if self.descents.back() == Some(&at) {
            self.descents.pop_back();
        }
        Some(h)
    }

    /// Lets go of the oldest delivered messages until the window is at
    /// most `limit` bytes (none kept at 0, not even empty messages).
    fn trim(&mut self, limit: u64) {
        while self.window > 0 && (limit == 0 || self.window_bytes > limit) {
            let Some(old) = self.sent.pop_front() else {
                break;
            };
            self.window -= 1;
            self.window_bytes -= old.msg.data.len() as u64;
            self.dropped += 1;
        }
        while self.descents.front().is_some_and(|&p| p <= self.dropped) {
            self.descents.pop_front();
        }
    }

    /// The lowest sequence in `sent[i..]`.
    fn lowest_from(&self, i: usize) -> Option<u64> {
        let first = self.sent.get(i)?.msg.seq;
        let at = self.dropped + i as u64;
        Some(
            self.descents
                .iter()
                .filter(|&&p| p > at)
                .filter_map(|&p| self.sent.get((p - self.dropped) as usize))
                .map(|h| h.msg.seq)
                .fold(first, u64::min),
        )
    }

    /// The lowest sequence it holds undelivered (or unacknowledged).
    fn lowest_held(&self) -> Option<u64> {
        if let Some(a) = &self.acking {
            return a.lowest();
        }
        self.lowest_from(self.window)
    }

    /// The lowest sequence it holds undelivered or in its window.
    fn lowest_kept(&self) -> Option<u64> {
        match &self.acking {
            Some(a) => a.lowest(),
            None => self.lowest_from(0),
        }
    }
}

#[derive(Debug)]
pub struct Dispatch {
    /// Next sequence to read from the spool (after what was read ahead).
    next_read: u64,
    /// Read from the spool ahead of the takes, in sequence order; nobody
    /// holds them yet.
    ahead: VecDeque<Message>,
    ahead_bytes: usize,
    /// A read from `next_read` is in progress (one reader at a time).
    reading: bool,
    /// Given back by consumers that were cut or left; sent before anything new.
    returned: BTreeMap<u64, Back>,
    /// Refused with a delay by ack-protocol consumers (NAK): held until due.
    delayed: BTreeMap<u64, Back>,
    /// When each delayed message is due.
    due: BTreeSet<(Instant, u64)>,
    /// On their way to the dead-letter spool: they hold the floor until
    /// they are written there ([`Dispatch::buried`]).
    dying: BTreeMap<u64, Message>,
    /// Buried since the last [`Dispatch::take_burials`].
    to_bury: Vec<Bury>,
    /// Deliveries after which an ack-protocol message is dead-lettered.
    max_deliveries: u32,
    consumers: HashMap<ConsumerId, Holding>,
    next_id: ConsumerId,
    /// Bytes of each consumer's redelivery window.
    redeliver: u64,
    /// Whether the windows hold the retention floor (see the module docs).
    windows_pinned: bool,
    /// Last floor reported (never goes down).
    acked: u64,
}

impl Dispatch {
    /// A dispatcher whose spool's ack floor is `start`, keeping the last
    /// `redeliver` bytes each consumer delivered for redelivery if it
    /// resets (`redeliver_on_reset`).
    pub fn new(start: u64, redeliver: u64) -> Self {
        Dispatch {
            next_read: start,
            ahead: VecDeque::new(),
            ahead_bytes: 0,
            reading: false,
            returned: BTreeMap::new(),
            delayed: BTreeMap::new(),
            due: BTreeSet::new(),
            dying: BTreeMap::new(),
            to_bury: Vec::new(),
            max_deliveries: DEFAULT_MAX_DELIVERIES,
            consumers: HashMap::new(),
            next_id: 1,
            redeliver,
            windows_pinned: true,
            acked: start,
        }
    }

    /// A new size for every consumer's redelivery window (a reload); each
    /// window adjusts as its consumer delivers more.
    pub fn set_redeliver(&mut self, bytes: u64) {
        self.redeliver = bytes;
    }

    /// A new consumer; it holds nothing yet.
    pub fn join(&mut self) -> ConsumerId {
        let id = self.next_id;
        self.next_id += 1;
        self.consumers.insert(id, Holding::default());
        id
    }

    /// What to read from the spool next, if what was read ahead is below
    /// half of `max_msgs` / `max_bytes`: (from, messages, bytes).
    pub fn read_ahead(&self, max_msgs: usize, max_bytes: usize) -> Option<(u64, usize, usize)> {
        let low = self.ahead.len() <= max_msgs / 2 && self.ahead_bytes <= max_bytes / 2;
        low.then(|| {
            (
                self.next_read,
                max_msgs - self.ahead.len(),
                max_bytes - self.ahead_bytes,
            )
        })
    }

    /// [`Dispatch::read_ahead`], claiming the read: until
    /// [`Dispatch::supply`] or [`Dispatch::end_read`], nobody else is told
    /// to read (two readers would read the same messages).
    pub fn begin_read(&mut self, max_msgs: usize, max_bytes: usize) -> Option<(u64, usize, usize)> {
        if self.reading {
            return None;
        }
        let want = self.read_ahead(max_msgs, max_bytes);
        self.reading = want.is_some();
        want
    }

    /// The claimed read ended without supplying anything.
    pub fn end_read(&mut self) {
        self.reading = false;
    }

    /// Messages read from the spool at [`Dispatch::read_ahead`]'s `from`,
    /// in sequence order. A read can start past it when drop-oldest
    /// deleted messages; reading continues after what was actually read.
    pub fn supply(&mut self, mut msgs: Vec<Message>) {
        self.reading = false;
        // In sequence order: what is below `next_read` is a prefix.
        let stale = msgs.partition_point(|m| m.seq < self.next_read);
        msgs.drain(..stale);
        let Some(last) = msgs.last() else {
            return;
        };
        self.next_read = last.seq + 1;
        self.ahead_bytes += msgs.iter().map(|m| m.data.len()).sum::<usize>();
        if self.ahead.is_empty() {
            // The usual case, a caught-up reader: the read's buffer becomes
            // the read-ahead as it is (no copy of its messages).
            self.ahead = VecDeque::from(msgs);
        } else {
            self.ahead.extend(msgs);
        }
    }

    /// Whether a take now would find nothing (nothing given back, nothing
    /// read ahead); then [`Dispatch::read_ahead`] says where to read.
    pub fn is_dry(&self) -> bool {
        self.returned.is_empty() && self.ahead.is_empty()
    }

    /// The spool dropped everything below `floor` (`when_full =
    /// drop-oldest`): what was read ahead of it, given back or delayed
    /// below it is dropped too (counted dropped, so not delivered), and
    /// reading continues from there. (The floor never passes those
    /// otherwise: they hold it.)
    pub fn skip_to(&mut self, floor: u64) {
        while self.ahead.front().is_some_and(|m| m.seq < floor) {
            if let Some(m) = self.ahead.pop_front() {
                self.ahead_bytes -= m.data.len();
            }
        }
        if self
            .returned
            .first_key_value()
            .is_some_and(|(&s, _)| s < floor)
        {
            self.returned = self.returned.split_off(&floor);
        }
        if self
            .delayed
            .first_key_value()
            .is_some_and(|(&s, _)| s < floor)
        {
            // Their due times go stale (`release_due` skips them).
            self.delayed = self.delayed.split_off(&floor);
        }
        self.next_read = self.next_read.max(floor);
    }

    /// Assigns up to `max_msgs` / about `max_bytes` (at least one message
    /// when any is available) of the next messages to `consumer`, laid out
    /// after everything it was given before. Given-back messages come
    /// first, then what was read ahead. Returns the messages to send, in
    /// order (none: wait for the reader, or for messages given back).
    #[cfg(test)]
    pub fn take(
        &mut self,
        consumer: ConsumerId,
        max_msgs: usize,
        max_bytes: usize,
    ) -> Vec<Message> {
        let mut out = Vec::new();
        self.take_with(consumer, max_msgs, max_bytes, |m| out.push(m.clone()));
        out
    }

    /// `Dispatch::take` (test-only), handing each message to `each` in order (which
    /// may copy its bytes, or clone it); returns how many.
    pub fn take_with(
        &mut self,
        consumer: ConsumerId,
        max_msgs: usize,
        max_bytes: usize,
        mut each: impl FnMut(&Message),
    ) -> usize {
        let Some(h) = self.consumers.get_mut(&consumer) else {
            return 0;
        };
        let mut bytes = 0;
        let from_ahead = self.returned.is_empty();
        let mut n = 0;
        while n < max_msgs && (bytes < max_bytes || n == 0) {
            let next = if from_ahead {
                self.ahead.pop_front().map(|m| (m, 0))
            } else {
                self.returned.pop_first().map(|(_, b)| (b.msg, b.attempts))
            };
            let Some((msg, attempts)) = next else {
                break;
            };
            bytes += msg.data.len();
            h.end += msg.data.len() as u64;
            each(&msg);
            h.push(Held {
                msg,
                end: h.end,
                attempts,
            });
            n += 1;
        }
        if from_ahead {
            self.ahead_bytes -= bytes;
        }
        n
    }

    /// `consumer`'s TCP acknowledged its stream up to `offset`: every
    /// message ending there or before is delivered and passed to
    /// `delivered`, in stream order. Returns the new ack floor if it moved.
    pub fn acked(
        &mut self,
        consumer: ConsumerId,
        offset: u64,
        mut delivered: impl FnMut(&Message),
    ) -> Option<u64> {
        let h = self.consumers.get_mut(&consumer)?;
        let mut moved = false;
        while let Some(m) = h.sent.get(h.window).filter(|m| m.end <= offset) {
            moved = true;
            delivered(&m.msg);
            h.window_bytes += m.msg.data.len() as u64;
            h.window += 1;
        }
        h.trim(self.redeliver);
        if moved {
            self.advance()
        } else {
            None
        }
    }

    /// Stops `consumer` after the message in flight at stream offset
    /// `written` (what the socket took): messages that start at or after
    /// the cut go back to the front of the queue. Returns the stream offset
    /// where the consumer's stream now ends, and the new floor if it moved.
    pub fn cut(&mut self, consumer: ConsumerId, written: u64) -> (u64, Option<u64>) {
        let Some(h) = self.consumers.get_mut(&consumer) else {
            return (written, None);
        };
        // The message that straddles `written`, if any, is finished (ends
        // ascend along the stream).
        let i = h.sent.partition_point(|m| m.end <= written);
        let keep_end = h
            .sent
            .get(i)
            .filter(|m| m.start() < written)
            .map_or(written.min(h.end), |m| m.end);
        let mut back = Vec::new();
        while h.sent.back().is_some_and(|m| m.end > keep_end) {
            back.extend(h.pop());
        }
        h.end = keep_end;
        for Held { msg, attempts, .. } in back {
            self.returned.insert(msg.seq, Back::plain(msg, attempts));
        }
        (keep_end, self.advance())
    }

    /// `consumer` is gone: everything it held goes back to the front, and
    /// after an abortive end (a reset: it may have lost what its kernel
    /// acknowledged) its redelivery window too. Returns the new floor if
    /// it moved, and how many messages went back.
    pub fn leave(&mut self, consumer: ConsumerId, abortive: bool) -> (Option<u64>, usize) {
        let mut n = 0;
        if let Some(h) = self.consumers.remove(&consumer) {
            if let Some(a) = h.acking {
                return self.leave_acking(a);
            }
            for (i, Held { msg, attempts, .. }) in h.sent.into_iter().enumerate() {
                // The window goes back only after a reset, as a first try.
                let attempts = match i < h.window {
                    true if !abortive => continue,
                    true => 0,
                    false => attempts,
                };
                n += 1;
                self.returned.insert(msg.seq, Back::plain(msg, attempts));
            }
        }
        (self.advance(), n)
    }

    /// Whether messages given back wait to be sent again.
    pub fn has_returned(&self) -> bool {
        !self.returned.is_empty()
    }

    /// The retention floor: the lowest sequence anyone still needs
    /// (unread, given back, held, or in a connected consumer's window).
    pub fn floor(&self) -> u64 {
        if self.windows_pinned {
            self.lowest_of(Holding::lowest_kept)
        } else {
            self.delivered_floor()
        }
    }

    /// The spool needs the space: the windows stop holding the floor (they
    /// stay in memory for a reset consumer) until [`Dispatch::pin_windows`].
    /// Returns the new floor if it moved.
    pub fn release_windows(&mut self) -> Option<u64> {
        self.windows_pinned = false;
        self.advance()
    }

    /// Space is no longer short: windows hold the floor again (from what
    /// they hold now on; the floor never goes back).
    pub fn pin_windows(&mut self) {
        self.windows_pinned = true;
    }

    /// The delivered floor: the lowest sequence that is unread, given
    /// back, or held undelivered (queue depth counts from here).
    pub fn delivered_floor(&self) -> u64 {
        self.lowest_of(Holding::lowest_held)
    }

    fn lowest_of(&self, consumer: impl Fn(&Holding) -> Option<u64>) -> u64 {
        let mut f = self.ahead.front().map_or(self.next_read, |m| m.seq);
        for first in [
            self.returned.first_key_value().map(|(&s, _)| s),
            self.delayed.first_key_value().map(|(&s, _)| s),
            self.dying.first_key_value().map(|(&s, _)| s),
        ]
        .into_iter()
        .flatten()
        {
            f = f.min(first);
        }
        for h in self.consumers.values() {
            if let Some(l) = consumer(h) {
                f = f.min(l);
            }
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
    use std::collections::{BTreeSet, HashMap};

    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;

    /// A spool stand-in: messages `0..n`, message `i` is `len(i)` bytes.
    fn spool(n: u64) -> impl Fn(u64, usize, usize) -> Result<Vec<Message>, ()> {
        move |from, max_msgs, max_bytes| {
            let mut out = Vec::new();
            let mut bytes = 0;
            let mut seq = from;
            while seq < n && out.len() < max_msgs && (bytes < max_bytes || out.is_empty()) {
                let data = Bytes::from(format!("m{seq}{}\n", "x".repeat((seq % 7) as usize)));
                bytes += data.len();
                out.push(Message {
                    seq,
                    data,
                    append_ms: 0,
                });
                seq += 1;
            }
            Ok(out)
        }
    }

    /// Reads ahead as the reader thread does (at most `msgs` messages
    /// ahead), once.
    fn read_once(
        d: &mut Dispatch,
        read: &impl Fn(u64, usize, usize) -> Result<Vec<Message>, ()>,
        msgs: usize,
    ) {
        if let Some((from, n, b)) = d.begin_read(msgs, usize::MAX) {
            d.supply(read(from, n, b).expect("model read"));
        }
    }

    /// Reads ahead everything there is, then takes.
    fn take(
        d: &mut Dispatch,
        read: &impl Fn(u64, usize, usize) -> Result<Vec<Message>, ()>,
        consumer: ConsumerId,
        n: usize,
    ) -> Vec<Message> {
        read_once(d, read, 1 << 20);
        d.take(consumer, n, usize::MAX)
    }

    fn seqs(v: &[Message]) -> Vec<u64> {
        v.iter().map(|m| m.seq).collect()
    }

    fn stream_len(v: &[Message]) -> u64 {
        v.iter().map(|m| m.data.len() as u64).sum()
    }

    #[test]
    fn floor_waits_for_the_slowest_holder() {
        let read = spool(10);
        let mut d = Dispatch::new(0, 0);
        let (a, b, c) = (d.join(), d.join(), d.join());
        let ta = take(&mut d, &read, a, 3);
        let tb = take(&mut d, &read, b, 3);
        assert_eq!(seqs(&ta), vec![0, 1, 2]);
        assert_eq!(seqs(&tb), vec![3, 4, 5]);
        // B delivered everything, A nothing: the floor stays at A's first.
        assert_eq!(d.acked(b, stream_len(&tb), |_| {}), None);
        assert_eq!(d.floor(), 0);
        // A delivers its first two.
        let two = stream_len(&ta[..2]);
        assert_eq!(d.acked(a, two, |_| {}), Some(2));
        // A leaves with its last one undelivered: it comes back first.
        assert_eq!(d.leave(a, false), (None, 1));
        let tc = take(&mut d, &read, c, 10);
        assert_eq!(seqs(&tc), vec![2]);
        let rest = take(&mut d, &read, c, 10);
        assert_eq!(seqs(&rest), vec![6, 7, 8, 9]);
        let all = stream_len(&tc) + stream_len(&rest);
        assert_eq!(d.acked(c, all, |_| {}), Some(10));
    }

    /// Defect 1 of the "never lose" issue: B holds 3..6, A resets with 0..3,
    /// B takes them back behind its own. B's first message (3) is not its
    /// lowest (0): delivering 3..6 must not move the floor past 0.
    #[test]
    fn floor_stays_below_given_back_messages_taken_behind_higher_ones() {
        let read = spool(100);
        let mut d = Dispatch::new(0, 0);
        let (a, b) = (d.join(), d.join());
        let ta = take(&mut d, &read, a, 3);
        let tb = take(&mut d, &read, b, 3);
        assert_eq!(seqs(&ta), vec![0, 1, 2]);
        assert_eq!(d.leave(a, false), (None, 3));
        let back = take(&mut d, &read, b, 10);
        assert_eq!(seqs(&back), vec![0, 1, 2]);
        // B's TCP acknowledged 3 and 4: its first message held is now 5,
        // its lowest is still 0.
        let mut got = Vec::new();
        let f = d.acked(b, stream_len(&tb[..2]), |m| got.push(m.seq));
        assert_eq!(got, vec![3, 4]);
        assert_eq!(f, None, "floor moved past 0, which B still holds");
        assert_eq!(d.floor(), 0);
        // Then the given-back ones: now everything below 6 is delivered.
        assert_eq!(
            d.acked(b, stream_len(&tb) + stream_len(&back), |_| {}),
            Some(6)
        );
    }

    /// What was read ahead is unread (the floor stays below it); a read
    /// that starts past `from` (drop-oldest deleted messages) moves the
    /// next read after what it returned.
    #[test]
    fn read_ahead_is_unread_and_follows_a_read_that_skipped() {
        let read = spool(100);
        let mut d = Dispatch::new(0, 0);
        let a = d.join();
        assert_eq!(d.read_ahead(4, usize::MAX), Some((0, 4, usize::MAX)));
        d.supply(read(5, 4, usize::MAX).expect("read"));
        assert_eq!(d.read_ahead(4, usize::MAX), None, "four ahead: no read");
        assert_eq!(d.floor(), 5);
        assert_eq!(seqs(&d.take(a, 2, usize::MAX)), [5, 6]);
        assert_eq!(d.floor(), 5, "a holds 5");
        let (from, n, _) = d.read_ahead(4, usize::MAX).expect("half left: read");
        assert_eq!((from, n), (9, 2));
        // A message supplied twice (never expected) is not handed out twice.
        d.supply(read(7, 3, usize::MAX).expect("read"));
        assert_eq!(seqs(&d.take(a, 10, usize::MAX)), [7, 8, 9]);
    }

    /// One read at a time: a claimed read is not handed to a second
    /// reader until it is supplied or ended.
    #[test]
    fn a_claimed_read_is_not_claimed_twice() {
        let read = spool(100);
        let mut d = Dispatch::new(0, 0);
        let (from, n, b) = d.begin_read(4, usize::MAX).expect("first claim");
        assert_eq!(d.begin_read(4, usize::MAX), None, "claimed");
        d.end_read();
        assert_eq!(d.begin_read(4, usize::MAX), Some((from, n, b)));
        d.supply(read(from, n, b).expect("read"));
        assert_eq!(d.begin_read(4, usize::MAX), None, "four ahead");
        assert!(!d.is_dry());
    }

    /// Messages given back that drop-oldest then deleted are not handed
    /// out either.
    #[test]
    fn given_back_below_a_dropped_floor_is_skipped() {
        let read = spool(100);
        let mut d = Dispatch::new(0, 0);
        let (a, b) = (d.join(), d.join());
        assert_eq!(seqs(&take(&mut d, &read, a, 5)), [0, 1, 2, 3, 4]);
        assert_eq!(d.leave(a, false), (None, 5));
        d.skip_to(3);
        assert_eq!(seqs(&d.take(b, 10, usize::MAX))[..2], [3, 4]);
    }

    /// Messages read ahead that drop-oldest then deleted are not handed
    /// out (they are counted dropped).
    #[test]
    fn read_ahead_below_a_dropped_floor_is_skipped() {
        let read = spool(100);
        let mut d = Dispatch::new(0, 0);
        let a = d.join();
        d.supply(read(0, 10, usize::MAX).expect("read"));
        d.skip_to(6);
        assert_eq!(seqs(&d.take(a, 2, usize::MAX)), [6, 7]);
        d.skip_to(20);
        assert_eq!(d.take(a, 10, usize::MAX).len(), 0);
        assert_eq!(d.read_ahead(4, usize::MAX).map(|r| r.0), Some(20));
        assert_eq!(d.floor(), 6, "a holds 6");
    }

    #[test]
    fn with_no_redelivery_window_delivered_empty_messages_do_not_hold_the_floor() {
        let mut d = Dispatch::new(0, 0);
        let c = d.join();
        let empty = |seq| Message {
            seq,
            data: Bytes::new(),
            append_ms: 0,
        };
        d.supply(vec![empty(0), empty(1)]);
        assert_eq!(d.take(c, 10, usize::MAX).len(), 2);
        assert_eq!(d.acked(c, 0, |_| {}), Some(2));
        assert_eq!(d.floor(), 2);
    }

    #[test]
    fn cut_finishes_the_message_in_flight_and_gives_back_the_rest() {
        let read = spool(10);
        let mut d = Dispatch::new(0, 0);
        let (a, b) = (d.join(), d.join());
        let t = take(&mut d, &read, a, 5);
        // The socket took the first message and one byte of the second.
        let written = stream_len(&t[..1]) + 1;
        let (keep_end, floor) = d.cut(a, written);
        assert_eq!(keep_end, stream_len(&t[..2]));
        assert_eq!(floor, None);
        // 2, 3, 4 go to the next taker first.
        assert_eq!(seqs(&take(&mut d, &read, b, 10)), [2, 3, 4]);
        assert_eq!(d.acked(a, keep_end, |_| {}), Some(2), "B holds 2");
        assert_eq!(d.leave(a, false), (None, 0));
    }

    /// An operation of the property test.
    #[derive(Debug, Clone)]
    enum Op {
        Join,
        /// The reader reads ahead, at most this many messages.
        ReadAhead(usize),
        /// Consumer (index into the live ones), max messages.
        Take(usize, usize),
        /// Consumer, fraction (0..=100) of its unacknowledged bytes now acked.
        Ack(usize, u8),
        /// Consumer, fraction of its unwritten bytes the socket took.
        Cut(usize, u8),
        /// Consumer; whether its last delivered messages are redelivered.
        Leave(usize, bool),
        /// The spool wants space: windows stop holding the floor.
        Release,
        /// Space is back: windows hold the floor again.
        Pin,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => Just(Op::Join),
            3 => (1..12usize).prop_map(Op::ReadAhead),
            4 => (0..4usize, 1..6usize).prop_map(|(c, n)| Op::Take(c, n)),
            4 => (0..4usize, 0..=100u8).prop_map(|(c, p)| Op::Ack(c, p)),
            1 => (0..4usize, 0..=100u8).prop_map(|(c, p)| Op::Cut(c, p)),
            1 => (0..4usize, any::<bool>()).prop_map(|(c, r)| Op::Leave(c, r)),
            1 => Just(Op::Release),
            1 => Just(Op::Pin),
        ]
    }

    /// The model of one consumer connection: its stream, in order.
    #[derive(Default)]
    struct Conn {
        /// (seq, end offset) of every message assigned, in stream order.
        stream: Vec<(u64, u64)>,
        acked: u64,
        cut: bool,
        recent: std::collections::VecDeque<Message>,
        /// Window messages delivered while windows were pinned (and not
        /// released since): the floor must keep these.
        pinned: BTreeSet<u64>,
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn dispatch_against_a_model(ops in proptest::collection::vec(op(), 1..80)) {
            const N: u64 = 40;
            let read = spool(N);
            // A window of about three messages.
            const WINDOW: u64 = 30;
            let mut d = Dispatch::new(0, WINDOW);
            let mut conns: Vec<(ConsumerId, Conn)> = Vec::new();
            // Messages never delivered to anyone, and who holds each.
            let mut undelivered: BTreeSet<u64> = (0..N).collect();
            let mut holder: HashMap<u64, ConsumerId> = HashMap::new();
            let mut floor = 0u64;
            let mut given_back: BTreeSet<u64> = BTreeSet::new();
            let mut pinned = true;
            for op in ops {
                match op {
                    Op::Join => conns.push((d.join(), Conn::default())),
                    Op::ReadAhead(n) => read_once(&mut d, &read, n),
                    Op::Take(c, n) => {
                        let Some((id, conn)) = conns.get_mut(c) else { continue };
                        if conn.cut { continue; }
                        let got = d.take(*id, n, usize::MAX);
                        let lowest_back = given_back.first().copied();
                        if let (Some(first), Some(lb)) = (got.first(), lowest_back) {
                            // Given-back messages go out first, lowest first.
                            prop_assert_eq!(first.seq, lb);
                        }
                        let mut end = conn.stream.last().map_or(0, |s| s.1);
                        for m in &got {
                            prop_assert!(!holder.contains_key(&m.seq),
                                "message {} held twice", m.seq);
                            holder.insert(m.seq, *id);
                            given_back.remove(&m.seq);
                            end += m.data.len() as u64;
                            conn.stream.push((m.seq, end));
                        }
                    }
                    Op::Ack(c, p) => {
                        let Some((id, conn)) = conns.get_mut(c) else { continue };
                        let end = conn.stream.last().map_or(0, |s| s.1);
                        let to = conn.acked + (end - conn.acked) * u64::from(p) / 100;
                        let mut got = Vec::new();
                        if let Some(f) = d.acked(*id, to, |m| got.push(m.clone())) {
                            prop_assert!(f > floor);
                            floor = f;
                        }
                        let want: Vec<u64> = conn.stream.iter()
                            .filter(|s| s.1 > conn.acked && s.1 <= to).map(|s| s.0).collect();
                        prop_assert_eq!(seqs(&got), want);
                        for m in got {
                            undelivered.remove(&m.seq);
                            holder.remove(&m.seq);
                            // (A message the floor passed during a release
                            // is gone from the spool: nothing can keep it.)
                            if pinned && m.seq >= floor {
                                conn.pinned.insert(m.seq);
                            }
                            conn.recent.push_back(m);
                            while conn.recent.iter().map(|m| m.data.len() as u64).sum::<u64>() > WINDOW {
                                if let Some(old) = conn.recent.pop_front() {
                                    conn.pinned.remove(&old.seq);
                                }
                            }
                        }
                        conn.acked = to;
                    }
                    Op::Cut(c, p) => {
                        let Some((id, conn)) = conns.get_mut(c) else { continue };
                        let end = conn.stream.last().map_or(0, |s| s.1);
                        let written = conn.acked + (end - conn.acked) * u64::from(p) / 100;
                        let (keep_end, f) = d.cut(*id, written);
                        if let Some(f) = f { floor = f; }
                        prop_assert!(keep_end >= written && keep_end <= end);
                        // The kept stream ends at a message boundary.
                        prop_assert!(keep_end == 0 || keep_end == written
                            || conn.stream.iter().any(|s| s.1 == keep_end));
                        for s in conn.stream.iter().filter(|s| s.1 > keep_end) {
                            holder.remove(&s.0);
                            given_back.insert(s.0);
                        }
                        conn.stream.retain(|s| s.1 <= keep_end);
                        conn.cut = true;
                    }
                    Op::Leave(c, redeliver) => {
                        if c >= conns.len() { continue; }
                        let (id, conn) = conns.remove(c);
                        if redeliver {
                            given_back.extend(conn.recent.iter().map(|m| m.seq));
                        }
                        let (f, _) = d.leave(id, redeliver);
                        if let Some(f) = f { floor = f; }
                        for s in conn.stream.iter().filter(|s| s.1 > conn.acked) {
                            holder.remove(&s.0);
                            given_back.insert(s.0);
                        }
                    }
                    Op::Release => {
                        pinned = false;
                        for (_, conn) in conns.iter_mut() {
                            conn.pinned.clear();
                        }
                        if let Some(f) = d.release_windows() {
                            prop_assert!(f > floor);
                            floor = f;
                        }
                        prop_assert_eq!(floor.max(d.floor()), d.delivered_floor().max(floor));
                    }
                    Op::Pin => {
                        pinned = true;
                        d.pin_windows();
                    }
                }
                // Neither floor passes a message nobody received.
                if let Some(&lowest) = undelivered.first() {
                    prop_assert!(floor <= lowest,
                        "floor {} passed undelivered message {}", floor, lowest);
                    prop_assert!(d.delivered_floor() <= lowest,
                        "delivered floor {} passed undelivered message {}",
                        d.delivered_floor(), lowest);
                }
                // The retention floor keeps every connected consumer's
                // window (re-sent from the spool after a restart).
                for (_, conn) in &conns {
                    if let Some(&w) = conn.pinned.first() {
                        prop_assert!(floor <= w, "floor {} passed window message {}", floor, w);
                    }
                }
                prop_assert!(d.floor() <= d.delivered_floor());
            }
        }
    }
}
