//! Consumers of the ack protocol (`to_protocol = "ack"`, see
//! `docs/protocol.md`): a message they were sent is theirs until they
//! acknowledge it, give it back (NAK), or dead-letter it (TERM); if they
//! are lost, everything they held goes back.
//!
//! What this adds to the plain consumers' state machine:
//! - **Attempts.** Every message given back carries how many times it was
//!   delivered; the next delivery is one more. After `max_deliveries`, or
//!   on TERM, it is *buried*: it waits in `dying` (holding the floor) until
//!   the dead-letter spool has it ([`Dispatch::buried`]), then the floor
//!   moves past it.
//! - **Windows.** An acking consumer holds at most its window of
//!   unacknowledged messages and bytes of new messages (at least one
//!   message). Messages given back go out before new ones and may take it
//!   up to twice its window: a redelivery never waits behind fresh traffic.
//! - **Suspects go out alone.** What a lost consumer held (a reset, an ack
//!   timeout, a close without acks) may be what killed it. Each such
//!   message is delivered alone, to a consumer that holds nothing else,
//!   until it is acknowledged or dead; a consumer holding one is sent
//!   nothing more. So a poison message charges attempts to itself only,
//!   not to the neighbours that were in flight with it. New messages wait
//!   behind the suspects (they are first deliveries, kept in order).
//! - **NAK delays back off**: at least `NAK_BASE × 2^(attempt−1)`, at most
//!   `NAK_MAX`, whatever the consumer asked, so a NAK loop cannot spin.
//!   A delayed message holds the floor and goes back when due.

use std::time::{Duration, Instant};

use bytes::Bytes;
use spillway_spool::Message;

use super::super::seqmap::SeqMap;
use super::{Back, ConsumerId, Dispatch, Holding};

/// The shortest delay of a NAK at attempt 1; it doubles with each attempt.
pub const NAK_BASE: Duration = Duration::from_millis(100);
/// The longest delay the backoff imposes (a consumer may ask for more).
pub const NAK_MAX: Duration = Duration::from_secs(60);
/// The longest delay a consumer may ask for: a delayed message holds its
/// group's floor, so it must come back within the relay's run.
pub const NAK_ASK_MAX: Duration = Duration::from_secs(3600);

/// The messages an acking consumer holds, by sequence, with the attempt
/// each was delivered as (see `seqmap.rs`: a B-tree of the messages cost
/// 15% of the relay's CPU per acknowledged message, a hash map still a
/// tenth).
#[derive(Debug, Default)]
pub(super) struct HeldMessages {
    map: SeqMap<(Message, u32)>,
}

impl HeldMessages {
    fn insert(&mut self, msg: Message, attempt: u32) {
        self.map.insert(msg.seq, (msg, attempt));
    }

    fn remove(&mut self, seq: u64) -> Option<(Message, u32)> {
        self.map.remove(seq)
    }

    fn lowest(&self) -> Option<u64> {
        self.map.lowest()
    }

    #[cfg(test)]
    fn contains_key(&self, seq: &u64) -> bool {
        self.map.contains_key(*seq)
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl IntoIterator for HeldMessages {
    type Item = (u64, (Message, u32));
    type IntoIter = <SeqMap<(Message, u32)> as IntoIterator>::IntoIter;

    fn into_iter(self) -> Self::IntoIter {
        self.map.into_iter()
    }
}

/// What an acking consumer holds: delivered, not yet acknowledged.
#[derive(Debug, Default)]
pub(super) struct AckHold {
    /// By sequence: the message and the attempt it was delivered as.
    held: HeldMessages,
    bytes: u64,
    window: u32,
    window_bytes: u64,
    /// It holds a suspect message, alone: nothing else is sent to it.
    alone: bool,
}

impl AckHold {
    pub(super) fn lowest(&self) -> Option<u64> {
        self.held.lowest()
    }

    fn insert(&mut self, msg: Message, attempt: u32) {
        self.bytes += msg.data.len() as u64;
        self.held.insert(msg, attempt);
    }

    fn remove(&mut self, seq: u64) -> Option<(Message, u32)> {
        let got = self.held.remove(seq)?;
        self.bytes -= got.0.data.len() as u64;
        if self.held.is_empty() {
            self.alone = false;
        }
        Some(got)
    }

    /// Room for one more within `times` windows (at least one message
    /// when it holds none).
    fn room(&self, times: u64) -> bool {
        self.held.is_empty()
            || ((self.held.len() as u64) < u64::from(self.window) * times
                && self.bytes < self.window_bytes.saturating_mul(times))
    }
}

/// Why a message goes to the dead-letter spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuryReason {
    /// It was delivered `max_deliveries` times without an ack.
    MaxDeliveries,
    /// A consumer refused it (TERM), with its reason.
    Term(Bytes),
}

impl BuryReason {
    /// The label of the dead-letter counters.
    pub fn label(&self) -> &'static str {
        match self {
            BuryReason::MaxDeliveries => "max_deliveries",
            BuryReason::Term(_) => "term",
        }
    }
}

/// A message on its way to the dead-letter spool.
#[derive(Debug)]
pub struct Bury {
    pub msg: Message,
    /// How many times it was delivered.
    pub attempts: u32,
    pub reason: BuryReason,
}

/// A NAK, TERM or PROG named a message this consumer does not hold (a
/// protocol error: `409`).
#[derive(Debug, PartialEq, Eq)]
pub struct NotHeld;

/// What became of a NAK.
#[derive(Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// Delayed until this instant.
    Delayed(Instant),
    /// Its last attempt: buried instead.
    Buried,
}

/// The delay a NAK of a message delivered as `attempt` gets: what the
/// consumer asked, but at least the backoff.
pub fn nak_delay(asked: Duration, attempt: u32) -> Duration {
    let shift = attempt.saturating_sub(1).min(20);
    let backoff = NAK_BASE.saturating_mul(1 << shift).min(NAK_MAX);
    asked.min(NAK_ASK_MAX).max(backoff)
}

impl Dispatch {
    /// Deliveries after which a message is dead-lettered (at least 1).
    pub fn set_max_deliveries(&mut self, n: u32) {
        self.max_deliveries = n.max(1);
    }

    /// A new ack-protocol consumer with a window of `window` messages and
    /// `window_bytes` bytes.
    pub fn join_acking(&mut self, window: u32, window_bytes: u64) -> ConsumerId {
        let id = self.next_id;
        self.next_id += 1;
        let acking = AckHold {
            window: window.max(1),
            window_bytes: window_bytes.max(1),
            ..AckHold::default()
        };
        self.consumers.insert(
            id,
            Holding {
                acking: Some(acking),
                ..Holding::default()
            },
        );
        id
    }

    /// The consumer changed its window (WIN).
    pub fn set_window(&mut self, consumer: ConsumerId, window: u32, window_bytes: u64) {
        if let Some(a) = self.acking_mut(consumer) {
            a.window = window.max(1);
            a.window_bytes = window_bytes.max(1);
        }
    }

    fn acking_mut(&mut self, consumer: ConsumerId) -> Option<&mut AckHold> {
        self.consumers.get_mut(&consumer)?.acking.as_mut()
    }

    /// Delayed messages due by `now` go back to the front of the queue;
    /// returns how many.
    pub fn release_due(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while let Some(&(at, seq)) = self.due.first() {
            if at > now {
                break;
            }
            self.due.pop_first();
            if let Some(b) = self.delayed.remove(&seq) {
                self.returned.insert(seq, b);
                n += 1;
            }
        }
        n
    }

    /// When the next delayed message is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.due.first().map(|&(at, _)| at)
    }

    /// Hands the next messages to acking `consumer` within its window (see
    /// the module docs) and within `max_bytes` (the peer memory it may
    /// use now; one message is always allowed to a consumer that holds
    /// none), each to `each` with the attempt it is delivered as; returns
    /// how many.
    pub fn take_acking(
        &mut self,
        consumer: ConsumerId,
        max_bytes: u64,
        mut each: impl FnMut(&Message, u32),
    ) -> usize {
        let Some(a) = self
            .consumers
            .get_mut(&consumer)
            .and_then(|h| h.acking.as_mut())
        else {
            return 0;
        };
        if a.alone {
            return 0;
        }
        let mut n = 0;
        let mut taken = 0u64;
        // Given back first.
        while let Some(entry) = self.returned.first_entry() {
            let b = entry.get();
            if b.suspect {
                if !a.held.is_empty() {
                    // Drain first; then it gets one suspect alone.
                    return n;
                }
                let b = entry.remove();
                let attempt = b.attempts.saturating_add(1);
                each(&b.msg, attempt);
                a.insert(b.msg, attempt);
                a.alone = true;
                return n + 1;
            }
            if !a.room(2) || (taken >= max_bytes && !a.held.is_empty()) {
                return n;
            }
            let b = entry.remove();
            let attempt = b.attempts.saturating_add(1);
            taken += b.msg.data.len() as u64;
            each(&b.msg, attempt);
            a.insert(b.msg, attempt);
            n += 1;
        }
        // Then new messages.
        let mut bytes = 0;
        while a.room(1) && (taken < max_bytes || a.held.is_empty()) {
            let Some(m) = self.ahead.pop_front() else {
                break;
            };
            bytes += m.data.len();
            taken += m.data.len() as u64;
            each(&m, 1);
            a.insert(m, 1);
            n += 1;
        }
        self.ahead_bytes -= bytes;
        n
    }

    /// Whether acking `consumer` holds `seq` (delivered, unacknowledged).
    #[cfg(test)]
    pub fn holds(&self, consumer: ConsumerId, seq: u64) -> bool {
        self.consumers
            .get(&consumer)
            .and_then(|h| h.acking.as_ref())
            .is_some_and(|a| a.held.contains_key(&seq))
    }

    /// Acking `consumer` acknowledged `seqs`: those it holds are done, each
    /// passed to `done`; the others are ignored (returned: how many). The
    /// new floor if it moved.
    pub fn settle(
        &mut self,
        consumer: ConsumerId,
        seqs: impl IntoIterator<Item = u64>,
        mut done: impl FnMut(&Message),
    ) -> (Option<u64>, u64) {
        let Some(a) = self.acking_mut(consumer) else {
            return (None, 0);
        };
        let mut ignored = 0;
        let mut any = false;
        for seq in seqs {
            match a.remove(seq) {
                Some((m, _)) => {
                    any = true;
                    done(&m);
                }
                None => ignored += 1,
            }
        }
        let floor = if any { self.advance() } else { None };
        (floor, ignored)
    }

    /// Acking `consumer` gave `seq` back (NAK), to be redelivered no
    /// sooner than `delay` from `now` (raised to the backoff), or buried if
    /// that was its last attempt.
    pub fn nak(
        &mut self,
        consumer: ConsumerId,
        seq: u64,
        delay: Duration,
        now: Instant,
    ) -> Result<AckOutcome, NotHeld> {
        let max = self.max_deliveries;
        let a = self.acking_mut(consumer).ok_or(NotHeld)?;
        let (msg, attempt) = a.remove(seq).ok_or(NotHeld)?;
        if attempt >= max {
            self.bury(msg, attempt, BuryReason::MaxDeliveries);
            return Ok(AckOutcome::Buried);
        }
        let at = now + nak_delay(delay, attempt);
        self.due.insert((at, seq));
        self.delayed.insert(seq, Back::plain(msg, attempt));
        Ok(AckOutcome::Delayed(at))
    }

    /// Acking `consumer` refused `seq` (TERM): it is buried now.
    pub fn term(&mut self, consumer: ConsumerId, seq: u64, reason: Bytes) -> Result<(), NotHeld> {
        let a = self.acking_mut(consumer).ok_or(NotHeld)?;
        let (msg, attempt) = a.remove(seq).ok_or(NotHeld)?;
        self.bury(msg, attempt, BuryReason::Term(reason));
        Ok(())
    }

    fn bury(&mut self, msg: Message, attempts: u32, reason: BuryReason) {
        self.dying.insert(msg.seq, msg.clone());
        self.to_bury.push(Bury {
            msg,
            attempts,
            reason,
        });
    }

    /// Messages to write to the dead-letter spool (each once); call
    /// [`Dispatch::buried`] when they are there.
    pub fn take_burials(&mut self) -> Vec<Bury> {
        std::mem::take(&mut self.to_bury)
    }

    /// These messages are in the dead-letter spool: the floor may pass
    /// them. Returns the new floor if it moved.
    pub fn buried(&mut self, seqs: impl IntoIterator<Item = u64>) -> Option<u64> {
        for s in seqs {
            self.dying.remove(&s);
        }
        self.advance()
    }

    /// An acking consumer is gone: what it held goes back as suspects (or
    /// is buried, if that was its last attempt).
    pub(super) fn leave_acking(&mut self, a: AckHold) -> (Option<u64>, usize) {
        let mut n = 0;
        for (seq, (msg, attempt)) in a.held {
            if attempt >= self.max_deliveries {
                self.bury(msg, attempt, BuryReason::MaxDeliveries);
                continue;
            }
            n += 1;
            self.returned.insert(
                seq,
                Back {
                    msg,
                    attempts: attempt,
                    suspect: true,
                },
            );
        }
        (self.advance(), n)
    }

    /// Messages delivered to all acking consumers, unacknowledged.
    pub fn unacked_total(&self) -> u64 {
        self.consumers
            .values()
            .filter_map(|h| h.acking.as_ref())
            .map(|a| a.held.len() as u64)
            .sum()
    }

    /// Messages delivered and unacknowledged to acking `consumer`.
    pub fn unacked(&self, consumer: ConsumerId) -> (usize, u64) {
        self.consumers
            .get(&consumer)
            .and_then(|h| h.acking.as_ref())
            .map_or((0, 0), |a| (a.held.len(), a.bytes))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;

    fn msg(seq: u64) -> Message {
        Message {
            seq,
            data: Bytes::from(format!("m{seq}\n")),
            append_ms: 0,
        }
    }

    /// A dispatcher over messages `0..n`, all read ahead.
    fn with(n: u64) -> Dispatch {
        let mut d = Dispatch::new(0, 0);
        d.supply((0..n).map(msg).collect());
        d
    }

    fn take(d: &mut Dispatch, c: ConsumerId) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        d.take_acking(c, u64::MAX, |m, a| out.push((m.seq, a)));
        out
    }

    #[test]
    fn the_window_bounds_new_messages_and_acks_move_the_floor() {
        let mut d = with(10);
        let c = d.join_acking(3, u64::MAX);
        assert_eq!(take(&mut d, c), [(0, 1), (1, 1), (2, 1)]);
        assert!(take(&mut d, c).is_empty(), "window full");
        assert_eq!(d.settle(c, [1], |_| {}), (None, 0), "0 still held");
        assert_eq!(d.settle(c, [0, 7], |_| {}), (Some(2), 1));
        assert_eq!(take(&mut d, c), [(3, 1), (4, 1)]);
    }

    #[test]
    fn a_lost_consumers_messages_go_out_alone_with_their_attempt_raised() {
        let mut d = with(10);
        let a = d.join_acking(4, u64::MAX);
        assert_eq!(take(&mut d, a).len(), 4);
        assert_eq!(d.leave(a, true), (None, 4));
        let b = d.join_acking(4, u64::MAX);
        // One suspect, alone; nothing more until it is settled.
        assert_eq!(take(&mut d, b), [(0, 2)]);
        assert!(take(&mut d, b).is_empty());
        d.settle(b, [0], |_| {});
        assert_eq!(take(&mut d, b), [(1, 2)]);
        // A consumer that holds something gets no suspect (and no new
        // message while suspects wait).
        let c = d.join_acking(4, u64::MAX);
        assert_eq!(take(&mut d, c), [(2, 2)]);
        d.settle(b, [1], |_| {});
        d.settle(c, [2], |_| {});
        assert_eq!(take(&mut d, b), [(3, 2)]);
        d.settle(b, [3], |_| {});
        assert_eq!(take(&mut d, b), [(4, 1), (5, 1), (6, 1), (7, 1)]);
    }

    #[test]
    fn max_deliveries_buries_and_the_floor_waits_for_the_burial() {
        let mut d = with(3);
        d.set_max_deliveries(2);
        for attempt in 1..=2 {
            let c = d.join_acking(1, u64::MAX);
            assert_eq!(take(&mut d, c), [(0, attempt)]);
            d.leave(c, true);
        }
        let burials = d.take_burials();
        assert_eq!(burials.len(), 1);
        assert_eq!(burials[0].attempts, 2);
        assert_eq!(burials[0].reason, BuryReason::MaxDeliveries);
        assert_eq!(d.floor(), 0, "not yet in the dead-letter spool");
        let c = d.join_acking(5, u64::MAX);
        assert_eq!(take(&mut d, c), [(1, 1), (2, 1)]);
        d.settle(c, [1, 2], |_| {});
        assert_eq!(d.floor(), 0);
        assert_eq!(d.buried([0]), Some(3));
    }

    #[test]
    fn a_nak_waits_its_backoff_then_goes_first() {
        let mut d = with(5);
        let c = d.join_acking(2, u64::MAX);
        let t0 = Instant::now();
        assert_eq!(take(&mut d, c), [(0, 1), (1, 1)]);
        let Ok(AckOutcome::Delayed(at)) = d.nak(c, 0, Duration::ZERO, t0) else {
            panic!("delayed");
        };
        assert_eq!(at, t0 + NAK_BASE, "attempt 1 waits the base delay");
        assert_eq!(d.nak(c, 9, Duration::ZERO, t0), Err(NotHeld));
        assert_eq!(take(&mut d, c), [(2, 1)]);
        assert_eq!(d.floor(), 0, "a delayed message holds the floor");
        assert_eq!(d.release_due(t0), 0);
        assert_eq!(d.release_due(at), 1);
        d.settle(c, [1, 2], |_| {});
        assert_eq!(take(&mut d, c), [(0, 2), (3, 1)]);
        assert_eq!(nak_delay(Duration::ZERO, 2), NAK_BASE * 2);
        assert_eq!(nak_delay(Duration::from_secs(5), 1), Duration::from_secs(5));
        assert_eq!(nak_delay(Duration::ZERO, 40), NAK_MAX);
    }

    #[test]
    fn term_buries_at_once() {
        let mut d = with(2);
        let c = d.join_acking(2, u64::MAX);
        take(&mut d, c);
        d.term(c, 1, Bytes::from_static(b"bad json")).expect("held");
        assert_eq!(d.term(c, 1, Bytes::new()), Err(NotHeld));
        let b = d.take_burials();
        assert_eq!(
            b[0].reason,
            BuryReason::Term(Bytes::from_static(b"bad json"))
        );
        d.settle(c, [0], |_| {});
        assert_eq!(d.floor(), 1);
        assert_eq!(d.buried([1]), Some(2));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Join(u32),
        Take(usize),
        /// Consumer, which held message (index), how.
        Settle(usize, usize),
        Nak(usize, usize),
        Term(usize, usize),
        Leave(usize),
        /// Time passes (ms).
        Wait(u64),
        /// The dead-letter writer finishes.
        Bury,
        /// Every consumer leaves.
        LeaveAll,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => (1..4u32).prop_map(Op::Join),
            4 => (0..3usize).prop_map(Op::Take),
            4 => (0..3usize, 0..8usize).prop_map(|(c, i)| Op::Settle(c, i)),
            1 => (0..3usize, 0..8usize).prop_map(|(c, i)| Op::Nak(c, i)),
            1 => (0..3usize, 0..8usize).prop_map(|(c, i)| Op::Term(c, i)),
            1 => (0..3usize).prop_map(Op::Leave),
            1 => (0..3000u64).prop_map(Op::Wait),
            1 => Just(Op::Bury),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Every message ends acknowledged or dead-lettered, never both,
        /// never lost; the floor never passes one that is neither; held
        /// by one consumer at a time; attempts count deliveries; a
        /// suspect goes out alone; nothing is delivered more than
        /// `max_deliveries` times.
        #[test]
        fn acking_against_a_model(ops in proptest::collection::vec(op(), 1..120)) {
            const N: u64 = 12;
            const MAX: u32 = 3;
            let mut d = with(N);
            d.set_max_deliveries(MAX);
            let t0 = Instant::now();
            let mut now = t0;
            let mut conns: Vec<(ConsumerId, Vec<(u64, u32)>)> = Vec::new();
            let mut deliveries: HashMap<u64, u32> = HashMap::new();
            let mut acked: BTreeSet<u64> = BTreeSet::new();
            let mut dead: BTreeSet<u64> = BTreeSet::new();
            let mut burying: Vec<u64> = Vec::new();
            let mut holder: HashMap<u64, ConsumerId> = HashMap::new();
            let mut floor = 0u64;
            let mut suspects: BTreeSet<u64> = BTreeSet::new();
            let mut all = ops;
            // Then a consumer that acknowledges everything until done.
            all.push(Op::LeaveAll);
            all.push(Op::Join(4));
            for _ in 0..200 {
                all.push(Op::Wait(60_000));
                all.push(Op::Bury);
                all.push(Op::Take(usize::MAX));
                for i in 0..4 {
                    all.push(Op::Settle(usize::MAX, i));
                }
            }
            for op in all {
                let pick = |conns: &Vec<(ConsumerId, Vec<(u64, u32)>)>, c: usize| {
                    if conns.is_empty() { None } else if c == usize::MAX { Some(conns.len() - 1) } else { Some(c % conns.len()) }
                };
                match op {
                    Op::Join(w) => conns.push((d.join_acking(w, u64::MAX), Vec::new())),
                    Op::Take(c) => {
                        let Some(c) = pick(&conns, c) else { continue };
                        let (id, held) = &mut conns[c];
                        d.release_due(now);
                        let was_empty = held.is_empty();
                        let mut got = Vec::new();
                        d.take_acking(*id, u64::MAX, |m, a| got.push((m.seq, a)));
                        for &(seq, a) in &got {
                            prop_assert!(!holder.contains_key(&seq), "{} held twice", seq);
                            prop_assert!(!acked.contains(&seq) && !dead.contains(&seq));
                            let n = deliveries.entry(seq).or_insert(0);
                            *n += 1;
                            prop_assert_eq!(a, *n, "attempt of {}", seq);
                            prop_assert!(a <= MAX);
                            holder.insert(seq, *id);
                            held.push((seq, a));
                        }
                        if suspects.contains(&got.first().map_or(u64::MAX, |g| g.0)) {
                            // A suspect goes alone, to a consumer holding
                            // nothing.
                            prop_assert!(was_empty && got.len() == 1, "suspect not alone: {:?}", got);
                        }
                        for (seq, _) in &got { suspects.remove(seq); }
                    }
                    Op::Settle(c, i) | Op::Nak(c, i) | Op::Term(c, i) => {
                        let Some(ci) = pick(&conns, c) else { continue };
                        let (id, held) = &mut conns[ci];
                        if held.is_empty() { continue; }
                        let (seq, _) = held.remove(i % held.len());
                        holder.remove(&seq);
                        match op {
                            Op::Settle(..) => {
                                let (f, ignored) = d.settle(*id, [seq], |_| {});
                                prop_assert_eq!(ignored, 0);
                                acked.insert(seq);
                                if let Some(f) = f { prop_assert!(f > floor); floor = f; }
                            }
                            Op::Nak(..) => {
                                match d.nak(*id, seq, Duration::from_millis(10), now) {
                                    Ok(AckOutcome::Delayed(_)) => prop_assert!(deliveries[&seq] < MAX),
                                    Ok(AckOutcome::Buried) => {
                                        prop_assert_eq!(deliveries[&seq], MAX);
                                        burying.push(seq);
                                    }
                                    Err(_) => prop_assert!(false, "NAK of a held message refused"),
                                }
                            }
                            _ => {
                                d.term(*id, seq, Bytes::new()).expect("held");
                                burying.push(seq);
                            }
                        }
                    }
                    Op::Leave(_) | Op::LeaveAll if conns.is_empty() => {}
                    Op::LeaveAll => {
                        for (id, held) in conns.drain(..) {
                            for (seq, _) in &held {
                                holder.remove(seq);
                                if deliveries[seq] >= MAX { burying.push(*seq); } else { suspects.insert(*seq); }
                            }
                            if let (Some(f), _) = d.leave(id, true) { floor = f; }
                        }
                    }
                    Op::Leave(c) => {
                        let Some(ci) = pick(&conns, c) else { continue };
                        let (id, held) = conns.remove(ci);
                        for (seq, _) in &held {
                            holder.remove(seq);
                            if deliveries[seq] >= MAX { burying.push(*seq); } else { suspects.insert(*seq); }
                        }
                        if let (Some(f), _) = d.leave(id, true) { floor = f; }
                    }
                    Op::Wait(ms) => now += Duration::from_millis(ms),
                    Op::Bury => {
                        let b = d.take_burials();
                        let mut got: Vec<u64> = b.iter().map(|b| b.msg.seq).collect();
                        got.sort_unstable();
                        burying.sort_unstable();
                        prop_assert_eq!(&got, &burying);
                        for &s in &got { prop_assert!(dead.insert(s), "{} buried twice", s); }
                        burying.clear();
                        if let Some(f) = d.buried(got) { prop_assert!(f > floor); floor = f; }
                    }
                }
                // The floor passes only what is acknowledged or dead.
                for s in 0..floor.min(N) {
                    prop_assert!(acked.contains(&s) || dead.contains(&s),
                        "floor {} passed {} (neither acked nor dead)", floor, s);
                }
                prop_assert!(acked.is_disjoint(&dead));
            }
            prop_assert_eq!(acked.len() + dead.len(), N as usize, "acked {:?} dead {:?}", acked, dead);
            prop_assert_eq!(floor, N);
        }
    }
}
