//! The dispatcher of a route: the [`Dispatch`] state machine, the thread
//! that reads the spool ahead of it, and its acknowledgements to the
//! spool. It owns the spool's read and ack; consumers' tasks only take
//! messages, report what their TCP acknowledged, and cut or leave.
//!
//! The *spool-read* thread keeps up to [`AHEAD_BYTES`] / [`AHEAD_MSGS`]
//! read ahead of the takes: from the memory tier (cheap clones) or from
//! the log (file reads, which may miss the page cache). It reads without
//! the dispatch lock, so a slow read holds up no take, ack or cut; it is
//! woken by appends (the spool's notification) and by takes that leave
//! less than half of it, and it wakes the consumers when it supplied
//! more. A take never waits for the disk: it hands out what was read
//! ahead (or given back); when there is none, it reads what needs no wait
//! itself, without the dispatch lock (the memory tier, or the page cache
//! with `RWF_NOWAIT`: [`Spool::read_cached`]), saving the hand-off through
//! the reader thread, and goes on doing so while such reads succeed,
//! when caught up or when a read brings few (large) messages; what it
//! read beyond its own take wakes the other consumers. A consumer with
//! nothing to take waits for the wake.
//!
//! Acknowledgements go to the spool's maintenance thread (see
//! `spool_io.rs`); the dispatcher's floor is the only one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use spillway_spool::{Message, Spool, SpoolError};
use tokio::sync::Notify;

use super::dead::DeadLetters;
use super::dispatch::{AckOutcome, Bury, BuryReason, ConsumerId, Dispatch, NotHeld};
use super::groups::Floors;
use super::spool_io::Acker;

/// How much is read ahead of the takes at most (a read is made once
/// less than half is left).
pub(super) const AHEAD_BYTES: usize = 2 << 20;
pub(super) const AHEAD_MSGS: usize = 32 << 10;

/// Most bytes one read asks for: the read-ahead fills in steps of this
/// (a read's buffer is allocated fresh, and large fresh buffers cost page
/// faults and zeroing: 2 MiB reads made a 1 KiB backlog drain a third
/// slower than 512 KiB ones).
const READ_STEP: usize = 512 << 10;

/// A read a take made for itself with fewer messages than this keeps
/// the takes reading for themselves, backlog or not (see `take_by`).
const INLINE_READ_MSGS: usize = 1024;

/// How long the reader sleeps without a wake before it looks again (a
/// safety net: every append and every take that wants more wakes it).
const IDLE: Duration = Duration::from_millis(250);
/// How long it waits after a failed read (the route stops meanwhile).
const AFTER_FAILURE: Duration = Duration::from_millis(100);

pub(super) struct Dispatcher {
    state: Arc<Mutex<Dispatch>>,
    wake: Arc<Wake>,
    /// The consumers are caught up (the last read reached the end of the
    /// spool), or the last read a take made for itself brought few
    /// messages ([`INLINE_READ_MSGS`]), and it needed no wait (the memory
    /// tier, the page cache): takes go on reading for themselves, and the
    /// reader thread is not woken (each wake is a context switch). A
    /// miss, or a read of many small messages of a backlog (read ahead in
    /// parallel with the writes), hands reading back to it.
    inline: Arc<AtomicBool>,
    /// Consumers wait here for messages (read ahead, or given back).
    notify: Arc<Notify>,
    spool: Spool,
    /// The route's group floors, and which group this is.
    floors: Arc<Floors>,
    group: usize,
    /// The route's dead-letter spool (consumers speak the ack protocol).
    dead: Option<Arc<DeadLetters>>,
    /// Messages sent to the dead-letter spool: after `max_deliveries`, by
    /// TERM.
    buried: [AtomicU64; 2],
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        self.wake.stop();
    }
}

/// Wakes the reader thread: a flag, so that a wake while it reads is not
/// lost.
#[derive(Default)]
struct Wake {
    state: Mutex<(bool, bool)>,
    cv: Condvar,
}

impl Wake {
    fn lock(&self) -> MutexGuard<'_, (bool, bool)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self) {
        let mut s = self.lock();
        if !s.0 {
            s.0 = true;
            self.cv.notify_one();
        }
    }

    fn stop(&self) {
        self.lock().1 = true;
        self.cv.notify_one();
    }

    /// Clears the flag; false once stopped.
    fn clear(&self) -> bool {
        let mut s = self.lock();
        s.0 = false;
        !s.1
    }

    /// Waits until woken (or `timeout`); false once stopped.
    fn wait(&self, timeout: Duration) -> bool {
        let s = self.lock();
        let (s, _) = self
            .cv
            .wait_timeout_while(s, timeout, |s| !s.0 && !s.1)
            .unwrap_or_else(|e| e.into_inner());
        !s.1
    }
}

impl Dispatcher {
    /// Starts the reader thread of group `group` of `spool`, from `start`;
    /// consumers are woken on `notify`. The spool's appends must wake the
    /// reader ([`Dispatcher::waker`]), which wakes the consumers.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        spool: &Spool,
        start: u64,
        redeliver: u64,
        acker: Acker,
        floors: Arc<Floors>,
        group: usize,
        dead: Option<Arc<DeadLetters>>,
        route: &str,
    ) -> std::io::Result<Dispatcher> {
        let state = Arc::new(Mutex::new(Dispatch::new(start, redeliver)));
        let notify = Arc::new(Notify::new());
        let wake = Arc::new(Wake::default());
        let inline = Arc::new(AtomicBool::new(false));
        let (sp, st, w, n, a) = (
            spool.clone(),
            Arc::clone(&state),
            Arc::clone(&wake),
            Arc::clone(&notify),
            acker.clone(),
        );
        let il = Arc::clone(&inline);
        let thread = match floors.names()[group].as_str() {
            "" => format!("spool-read:{route}"),
            g => format!("spool-read:{route}:{g}"),
        };
        std::thread::Builder::new()
            .name(thread)
            .spawn(move || read_loop(&sp, &st, &w, &n, &il, &a))?;
        Ok(Dispatcher {
            state,
            wake,
            inline,
            notify,
            spool: spool.clone(),
            floors,
            group,
            dead,
            buried: Default::default(),
        })
    }

    /// What the spool's appends call: wakes this group's reader, or,
    /// while takes read for themselves, the consumers waiting to take.
    pub fn waker(&self) -> impl Fn() + Send + Sync + 'static {
        let (w, inline, notify) = (
            Arc::clone(&self.wake),
            Arc::clone(&self.inline),
            Arc::clone(&self.notify),
        );
        move || {
            if inline.load(Ordering::Relaxed) {
                notify.notify_waiters();
            } else {
                w.wake();
            }
        }
    }

    /// This group's name ("" for the default group).
    pub fn group_name(&self) -> &str {
        &self.floors.names()[self.group]
    }

    /// Messages this group has not had delivered yet.
    pub fn lag(&self) -> u64 {
        self.floors.lag(self.group)
    }

    /// Messages dead-lettered: (after `max_deliveries`, by TERM).
    pub fn buried(&self) -> (u64, u64) {
        (
            self.buried[0].load(Ordering::Relaxed),
            self.buried[1].load(Ordering::Relaxed),
        )
    }

    /// Messages delivered to ack-protocol consumers, unacknowledged.
    pub fn unacked_total(&self) -> u64 {
        self.lock().unacked_total()
    }

    /// Hands what `d` buried to the dead-letter writer (with none open,
    /// they stay below the floor: delivered again after a restart).
    fn bury(&self, burials: Vec<Bury>) {
        if burials.is_empty() {
            return;
        }
        for b in &burials {
            let i = usize::from(matches!(b.reason, BuryReason::Term(_)));
            self.buried[i].fetch_add(1, Ordering::Relaxed);
        }
        match &self.dead {
            Some(w) => {
                let (state, floors, group) = (
                    Arc::clone(&self.state),
                    Arc::clone(&self.floors),
                    self.group,
                );
                let written = Box::new(move |seqs: Vec<u64>| {
                    if let Some(f) = lock(&state).buried(seqs) {
                        floors.acked(group, f);
                    }
                });
                w.send(self.group_name(), burials, written);
            }
            None => tracing::error!(
                count = burials.len(),
                "dead letters with no dead-letter spool open; kept in the queue"
            ),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Dispatch> {
        lock(&self.state)
    }

    /// Consumers wait here for messages to take.
    pub fn notify(&self) -> &Notify {
        &self.notify
    }

    pub fn join(&self) -> ConsumerId {
        self.lock().join()
    }

    /// Up to `max_msgs` / about `max_bytes` for `consumer`, each handed
    /// to `each` in order (see [`Dispatch::take_with`]; `each` runs under
    /// the dispatch lock: copy or clone, nothing slow); never waits for the
    /// disk. Returns how many; none: wait on [`Dispatcher::notify`].
    pub fn take(
        &self,
        consumer: ConsumerId,
        max_msgs: usize,
        max_bytes: usize,
        each: impl FnMut(&Message),
    ) -> usize {
        self.take_by(|d| d.take_with(consumer, max_msgs, max_bytes, each))
    }

    /// What acking `consumer`'s window allows (see
    /// [`Dispatch::take_acking`]), each handed to `each` with its attempt;
    /// never waits for the disk.
    pub fn take_acking(
        &self,
        consumer: ConsumerId,
        max_bytes: u64,
        each: impl FnMut(&Message, u32),
    ) -> usize {
        self.take_by(|d| d.take_acking(consumer, max_bytes, each))
    }

    /// Messages and bytes delivered to acking `consumer`, unacknowledged.
    pub fn unacked(&self, consumer: ConsumerId) -> (usize, u64) {
        self.lock().unacked(consumer)
    }

    /// A take by `take`, with what is due and cheap to read made ready.
    fn take_by(&self, take: impl FnOnce(&mut Dispatch) -> usize) -> usize {
        // Under drop-oldest the spool's floor can pass what was read ahead.
        let dropped_below = self.spool.ack_floor();
        let mut supplied = false;
        let mut backlog = false;
        let (n, low, left) = {
            let mut d = self.lock();
            d.skip_to(dropped_below);
            d.release_due(std::time::Instant::now());
            if d.is_dry() {
                // Nothing read ahead: what needs no wait for the disk is
                // read here at once, without the lock, instead of through
                // the reader thread (a hand-off that costs a context
                // switch per step). Live traffic is in the memory tier; a
                // backlog on disk is often in the page cache (RWF_NOWAIT).
                // Anything else, and every error, stays the reader's.
                if let Some((from, n, bytes)) = d.begin_read(AHEAD_MSGS, AHEAD_BYTES) {
                    drop(d);
                    let got = self.spool.read_cached(from, n, bytes.min(READ_STEP));
                    d = self.lock();
                    match got {
                        Ok(Some(msgs)) => {
                            // Takes go on reading for themselves while
                            // that needs no wait when caught up (live
                            // traffic), and in a backlog of large
                            // messages. A backlog handed to the reader
                            // thread is read in parallel with the writes,
                            // but each hand-off is a wake-up, and waking
                            // an idle CPU cost 0.05-0.12 ms on the 2-core
                            // VM this was measured on: about what 1,000
                            // small messages cost to dispatch. Below
                            // that per read (4 KiB messages: 128 a read)
                            // reading here won (a warm 1 GiB drain of
                            // 4 KiB messages: 945-1,010 MB/s before,
                            // 985-1,139 after); above it (64 B: 8,192 a
                            // read) the reader thread did.
                            let caught_up = caught_up(&msgs, &self.spool);
                            let inline = msgs.len() < INLINE_READ_MSGS || caught_up;
                            supplied = !msgs.is_empty();
                            // In a backlog, the other consumers wait for
                            // this read (one that came while it was in
                            // progress took nothing): wake them, to take
                            // what is left or read the next part. (Caught
                            // up, the appends wake them.)
                            backlog = supplied && !caught_up;
                            d.supply(msgs);
                            self.inline.store(inline, Ordering::Relaxed);
                        }
                        _ => {
                            d.end_read();
                            self.inline.store(false, Ordering::Relaxed);
                            self.wake.wake();
                        }
                    }
                }
            }
            let n = take(&mut d);
            (
                n,
                d.read_ahead(AHEAD_MSGS, AHEAD_BYTES).is_some(),
                !d.is_dry(),
            )
        };
        // Read here, and more than this take wanted, or a part of a
        // backlog: other consumers may be waiting for it (no reader supply
        // wakes them, nor, in a backlog, an append).
        if (supplied && left) || backlog {
            self.notify.notify_waiters();
        }
        // Running low: the reader reads ahead, unless takes read for
        // themselves (the next take that finds nothing reads).
        if low && !self.inline.load(Ordering::Relaxed) {
            self.wake.wake();
        }
        n
    }

    /// `consumer`'s TCP acknowledged its stream up to `offset` (see
    /// [`Dispatch::acked`]); the spool is acknowledged what no one needs.
    pub fn acked(&self, consumer: ConsumerId, offset: u64, delivered: impl FnMut(&Message)) {
        let floor = {
            let mut d = self.lock();
            let floor = d.acked(consumer, offset, delivered);
            self.floors.delivered(self.group, d.delivered_floor());
            floor
        };
        self.ack(floor);
    }

    /// Stops `consumer` after the message in flight at `written` (see
    /// [`Dispatch::cut`]); returns where its stream now ends.
    pub fn cut(&self, consumer: ConsumerId, written: u64) -> u64 {
        let (keep_end, floor, gave_back) = {
            let mut d = self.lock();
            let (keep_end, floor) = d.cut(consumer, written);
            (keep_end, floor, d.has_returned())
        };
        self.ack(floor);
        if gave_back {
            self.notify.notify_waiters();
        }
        keep_end
    }

    /// `consumer` is gone (see [`Dispatch::leave`]); returns how many
    /// messages went back to the queue.
    pub fn leave(&self, consumer: ConsumerId, abortive: bool) -> usize {
        let (floor, back, burials) = {
            let mut d = self.lock();
            let (floor, back) = d.leave(consumer, abortive);
            self.floors.delivered(self.group, d.delivered_floor());
            (floor, back, d.take_burials())
        };
        self.bury(burials);
        self.ack(floor);
        if back > 0 {
            self.notify.notify_waiters();
        }
        back
    }

    /// A new ack-protocol consumer (see [`Dispatch::join_acking`]).
    pub fn join_acking(&self, window: u32, window_bytes: u64) -> ConsumerId {
        self.lock().join_acking(window, window_bytes)
    }

    pub fn set_window(&self, consumer: ConsumerId, window: u32, window_bytes: u64) {
        self.lock().set_window(consumer, window, window_bytes);
    }

    pub fn set_max_deliveries(&self, n: u32) {
        self.lock().set_max_deliveries(n);
    }

    /// Acking `consumer` acknowledged `seqs` (see [`Dispatch::settle`]);
    /// returns how many named a message it did not hold.
    pub fn settle(
        &self,
        consumer: ConsumerId,
        seqs: impl IntoIterator<Item = u64>,
        done: impl FnMut(&Message),
    ) -> u64 {
        let (floor, ignored) = {
            let mut d = self.lock();
            let r = d.settle(consumer, seqs, done);
            self.floors.delivered(self.group, d.delivered_floor());
            r
        };
        self.ack(floor);
        ignored
    }

    /// Acking `consumer` gave `seq` back (see [`Dispatch::nak`]); the
    /// consumers are woken when it is due.
    pub fn nak(
        &self,
        consumer: ConsumerId,
        seq: u64,
        delay: Duration,
    ) -> Result<AckOutcome, NotHeld> {
        let (r, burials) = {
            let mut d = self.lock();
            let r = d.nak(consumer, seq, delay, std::time::Instant::now());
            (r, d.take_burials())
        };
        self.bury(burials);
        if let Ok(AckOutcome::Delayed(at)) = &r {
            let notify = Arc::clone(&self.notify);
            let at = tokio::time::Instant::from_std(*at);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    tokio::time::sleep_until(at).await;
                    notify.notify_waiters();
                });
            }
        }
        r
    }

    /// Acking `consumer` refused `seq` (TERM): dead-lettered.
    pub fn term(
        &self,
        consumer: ConsumerId,
        seq: u64,
        reason: bytes::Bytes,
    ) -> Result<(), NotHeld> {
        let (r, burials) = {
            let mut d = self.lock();
            let r = d.term(consumer, seq, reason);
            (r, d.take_burials())
        };
        self.bury(burials);
        r
    }

    /// The spool wants space: redelivery windows stop holding the floor.
    pub fn release_windows(&self) {
        let floor = self.lock().release_windows();
        self.ack(floor);
    }

    /// Windows hold the floor again.
    pub fn pin_windows(&self) {
        self.lock().pin_windows();
    }

    pub fn set_redeliver(&self, bytes: u64) {
        self.lock().set_redeliver(bytes);
    }

    fn ack(&self, floor: Option<u64>) {
        if let Some(f) = floor {
            self.floors.acked(self.group, f);
        }
    }
}

fn lock(state: &Mutex<Dispatch>) -> MutexGuard<'_, Dispatch> {
    // A panic while holding the lock cannot leave Dispatch half-updated
    // in a way that loses messages (every method finishes its inserts
    // before returning), so the poisoned state is usable.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a read that returned `msgs` reached the end of the spool.
fn caught_up(msgs: &[Message], spool: &Spool) -> bool {
    msgs.last().is_none_or(|m| m.seq + 1 >= spool.next_seq())
}

/// The spool-read thread: keeps the dispatcher's read-ahead filled.
fn read_loop(
    spool: &Spool,
    state: &Mutex<Dispatch>,
    wake: &Wake,
    notify: &Notify,
    inline: &AtomicBool,
    acker: &Acker,
) {
    loop {
        if !wake.clear() {
            return;
        }
        let want = lock(state).begin_read(AHEAD_MSGS, AHEAD_BYTES);
        let Some((from, msgs, bytes)) = want else {
            if !wake.wait(IDLE) {
                return;
            }
            continue;
        };
        let got = spool.read(from, msgs, bytes.min(READ_STEP));
        if !matches!(&got, Ok(m) if !m.is_empty()) {
            lock(state).end_read();
        }
        match got {
            Ok(got) if got.is_empty() => {
                if !wake.wait(IDLE) {
                    return;
                }
            }
            Ok(got) => {
                // Caught up: the takes read what comes next themselves
                // (when it needs no wait; they hand it back otherwise).
                let caught_up = caught_up(&got, spool);
                lock(state).supply(got);
                if caught_up {
                    inline.store(true, Ordering::Relaxed);
                }
                notify.notify_waiters();
            }
            // The route closed its spool: nothing more to read.
            Err(SpoolError::Closed) => return,
            Err(e) => {
                // The route stops at its next tick and cuts the consumers;
                // until then, no re-read at every wake.
                acker.fail("read", e);
                std::thread::sleep(AFTER_FAILURE);
            }
        }
    }
}
