//! The consumer side: write messages in FIFO order, and count a message as
//! delivered only once the consumer's TCP stack acknowledged all its bytes
//! (`written - SIOCOUTQ`), not when `write()` returned.
//!
//! Ends of a consumer connection:
//! - **Half-close** (`shutdown(SHUT_WR)`, or a clean close): the message in
//!   flight is finished, nothing more is sent, the relay half-closes, waits
//!   until the consumer's TCP acknowledged everything, and closes. Messages
//!   taken but not yet started go back to the front of the queue.
//! - **Reset**: what was not known delivered goes back to the front, plus the
//!   last `redeliver_on_reset` bytes of delivered messages (they may have been
//!   unread in the consumer's receive buffer): duplicates instead of loss.
//! - **Shutdown** of the relay: like a half-close, bounded by the drain timeout.
//!   `max_lifetime` ends a consumer the same way.
//! - **Write stall**: bytes are outstanding and the consumer's TCP neither
//!   took (write) nor acknowledged any of them for `write_stall_timeout` (it
//!   stopped reading, or vanished). The relay resets the connection and
//!   treats it as a reset: everything not known delivered, plus the
//!   `redeliver_on_reset` window, goes to the next consumer.
//! - **Peer timeout**: keepalive or `TCP_USER_TIMEOUT` declared the consumer
//!   gone (`ETIMEDOUT`); handled like a reset.
//!
//! Over TLS the same accounting holds on ciphertext (see `wire.rs`): a
//! message is delivered once the consumer's TCP acknowledged the TLS
//! records that carry all of it.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use spillway_net::timeout::StallTimer;
use spillway_spool::Histogram;

use super::dispatch::ConsumerId;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, info};

use super::wire::Wire;
use super::QueueServer;

/// Most bytes a consumer may hold written-but-unacknowledged: bounds what a
/// disconnect sends again, what a clean leave still has to read, and what
/// is held in memory per consumer. Loopback needs far less for full speed.
const WINDOW: u64 = 2 << 20;
/// One take from the dispatcher.
const BATCH_MSGS: usize = 8192;
const BATCH_BYTES: usize = 512 << 10;
/// Messages shorter than this are copied into runs of up to [`RUN`]
/// bytes before they are written; longer ones are written from their own
/// buffers.
const SMALL: usize = 512;
const RUN: usize = 64 << 10;
/// While bytes are unacknowledged, how often SIOCOUTQ is polled.
const ACK_POLL: Duration = Duration::from_millis(5);
/// How long a finished cut waits for the consumer to acknowledge the
/// relay's FIN (a reset instead means it did not read everything).
const FIN_ACK_WAIT: Duration = Duration::from_secs(1);
/// After a consumer's FIN, how long the relay waits for a reset behind it
/// before it sends its own FIN.
const FIN_GRACE: Duration = Duration::from_millis(100);

/// Why a consumer connection ended (logged and counted in `QueueStats`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumerEnd {
    /// The consumer half-closed; clean cut.
    Eof,
    Reset,
    Shutdown,
    SpoolFailed,
    /// Outstanding bytes made no progress for `write_stall_timeout`.
    WriteStall,
    /// Keepalive or `TCP_USER_TIMEOUT` declared the consumer gone (ETIMEDOUT).
    PeerTimeout,
    /// The connection reached `max_lifetime`; clean cut.
    MaxLifetime,
    /// Ack protocol: a message was held past `ack_timeout`; reset.
    AckTimeout,
    /// Ack protocol: the consumer broke the protocol (`ERR` sent).
    ProtocolError,
}

impl ConsumerEnd {
    /// Every variant, in declaration order (the index of the counters).
    pub const ALL: [ConsumerEnd; 9] = [
        ConsumerEnd::Eof,
        ConsumerEnd::Reset,
        ConsumerEnd::Shutdown,
        ConsumerEnd::SpoolFailed,
        ConsumerEnd::WriteStall,
        ConsumerEnd::PeerTimeout,
        ConsumerEnd::MaxLifetime,
        ConsumerEnd::AckTimeout,
        ConsumerEnd::ProtocolError,
    ];

    /// Position in [`ConsumerEnd::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ConsumerEnd::Eof => "consumer_eof",
            ConsumerEnd::Reset => "consumer_reset",
            ConsumerEnd::Shutdown => "shutdown",
            ConsumerEnd::SpoolFailed => "spool_failed",
            ConsumerEnd::WriteStall => "write_stall",
            ConsumerEnd::PeerTimeout => "peer_timeout",
            ConsumerEnd::MaxLifetime => "max_lifetime",
            ConsumerEnd::AckTimeout => "ack_timeout",
            ConsumerEnd::ProtocolError => "protocol_error",
        }
    }

    /// Ends where the consumer may have lost what its kernel acknowledged.
    fn is_abortive(self) -> bool {
        matches!(
            self,
            ConsumerEnd::Reset | ConsumerEnd::WriteStall | ConsumerEnd::PeerTimeout
        )
    }
}

/// A failed socket call: a keepalive / user timeout, or a reset.
pub(super) fn broken(e: &io::Error) -> ConsumerEnd {
    if e.kind() == io::ErrorKind::TimedOut {
        ConsumerEnd::PeerTimeout
    } else {
        ConsumerEnd::Reset
    }
}

/// End-to-end latencies of one batch of deliveries, tallied locally and
/// added to the shared histogram once. Messages of one record share their
/// append time, so the bucket is looked up only when it changes.
pub(super) struct LatencyTally {
    now_ms: u64,
    counts: Vec<u64>,
    sum_ms: u64,
    last: Option<(u64, usize)>,
}

impl LatencyTally {
    pub(super) fn new(h: &Histogram) -> Self {
        LatencyTally {
            now_ms: crate::units::since_epoch().as_millis() as u64,
            counts: vec![0; h.buckets()],
            sum_ms: 0,
            last: None,
        }
    }

    pub(super) fn add_with(&mut self, h: &Histogram, append_ms: u64) {
        let bucket = match self.last {
            Some((ms, b)) if ms == append_ms => b,
            _ => {
                let age = Duration::from_millis(self.now_ms.saturating_sub(append_ms));
                let b = h.bucket_of(age);
                self.last = Some((append_ms, b));
                b
            }
        };
        self.counts[bucket] += 1;
        self.sum_ms += self.now_ms.saturating_sub(append_ms);
    }

    pub(super) fn record(self, h: &Histogram) {
        if self.counts.iter().any(|&c| c > 0) {
            h.record_counts(&self.counts, Duration::from_millis(self.sum_ms));
        }
    }
}

/// Per-connection delivery state (which messages it holds is the
/// dispatcher's business; see `dispatch.rs`).
struct Delivery {
    id: ConsumerId,
    /// Taken and not yet handed to the socket, in stream order (the front
    /// may be partly written): the messages' own bytes, written from here
    /// with vectored writes.
    unsent: VecDeque<Bytes>,
    /// Byte offsets on this connection: queued >= written >= delivered.
    queued: u64,
    written: u64,
    delivered: u64,
    delivered_msgs: u64,
    /// What this consumer makes the relay hold (its messages in flight,
    /// its write buffer, its redelivery window), charged to the process's
    /// peer memory budget.
    charge: super::memory::Charge,
    /// The last take was given back for want of peer memory: wait for some
    /// to be freed before taking again.
    starved: bool,
    /// This consumer's bytes acknowledged, as `/status` shows it.
    peer_bytes: Arc<AtomicU64>,
}

impl Delivery {
    /// Bytes held for this consumer now: messages taken and not yet
    /// acknowledged, what is not yet written (small messages are copied
    /// into runs: counted as if all were), and the redelivery window (at
    /// most `redeliver` of what it delivered).
    fn held(&self, redeliver: u64) -> u64 {
        (self.queued - self.delivered)
            + (self.queued - self.written)
            + self.delivered.min(redeliver)
    }

    /// Queues `m` to be written: a message of at least [`SMALL`] bytes as
    /// it is (its own buffer is written), consecutive smaller ones copied
    /// into one run, so that a vectored write carries a few long slices,
    /// not a thousand 64-byte ones (which cost the kernel more than the
    /// copy: measured in the notes of issue 11). `run` is the run being
    /// filled; [`Delivery::end_run`] queues it.
    fn push(&mut self, m: &spillway_spool::Message, run: &mut BytesMut) {
        self.queued += m.data.len() as u64;
        if m.data.len() >= SMALL {
            self.end_run(run);
            self.unsent.push_back(m.data.clone());
            return;
        }
        if run.capacity() - run.len() < m.data.len() {
            self.end_run(run);
            run.reserve(RUN);
        }
        run.extend_from_slice(&m.data);
    }

    fn end_run(&mut self, run: &mut BytesMut) {
        if !run.is_empty() {
            self.unsent.push_back(run.split().freeze());
        }
    }

    /// The socket took `n` more bytes.
    fn wrote(&mut self, n: usize) {
        self.written += n as u64;
        super::wire::advance(&mut self.unsent, n);
    }

    /// Drops the unsent bytes past stream offset `end` (whole messages
    /// from the back, given back to the queue).
    fn truncate_to(&mut self, end: u64) {
        let mut excess = self.queued.saturating_sub(end);
        while excess > 0 {
            let Some(back) = self.unsent.back_mut() else {
                break;
            };
            let len = back.len() as u64;
            if len <= excess {
                excess -= len;
                self.unsent.pop_back();
            } else {
                back.truncate((len - excess) as usize);
                excess = 0;
            }
        }
        self.queued = end;
    }
}

impl QueueServer {
    pub(super) async fn consume(&self, mut wire: Wire, peer_bytes: Arc<AtomicU64>) -> ConsumerEnd {
        let id = self.dispatcher.join();
        self.stats.consumers.fetch_add(1, Ordering::Relaxed);
        self.stats.consumers_total.fetch_add(1, Ordering::Relaxed);
        info!("consumer connected");
        let mut d = Delivery {
            id,
            unsent: VecDeque::new(),
            queued: 0,
            written: 0,
            delivered: 0,
            delivered_msgs: 0,
            charge: self.memory.charge(),
            starved: false,
            peer_bytes,
        };
        let end = self.deliver(&mut wire, &mut d).await;
        // Whatever is still not known delivered goes back to the queue.
        // A write stall closes abortively (the consumer is not reading: a
        // FIN would never be read and the kernel would hold the unsent
        // bytes; a message may be half sent). So does a cut whose last bytes
        // were not all acknowledged by its deadline: they go to the next
        // consumer, and a graceful close would still deliver them here
        // (duplicates). Every other end is at a message boundary with
        // everything acknowledged, or the consumer is gone already.
        // A reset destroys what the consumer's kernel held unread (its TCP
        // acknowledged it: delivered), so whenever we reset, the
        // redelivery window goes back too, as for a consumer's own reset.
        let clean = end != ConsumerEnd::WriteStall && d.written <= d.delivered;
        if clean {
            wire.ends_cleanly();
        }
        drop(wire);
        let redelivered = self.dispatcher.leave(id, end.is_abortive() || !clean);
        self.consumer_left(end, redelivered);
        info!(
            reason = end.as_str(),
            delivered = d.delivered_msgs,
            bytes = d.delivered,
            requeued = redelivered,
            "consumer closed"
        );
        end
    }

    /// Counts a consumer connection's end, which gave `requeued` messages
    /// back to the queue.
    pub(super) fn consumer_left(&self, end: ConsumerEnd, requeued: usize) {
        self.stats
            .messages_redelivered
            .fetch_add(requeued as u64, Ordering::Relaxed);
        self.stats.consumers.fetch_sub(1, Ordering::Relaxed);
        self.stats.count_consumer_end(end);
    }

    async fn deliver(&self, wire: &mut Wire, d: &mut Delivery) -> ConsumerEnd {
        let mut cut: Option<ConsumerEnd> = None;
        // A cut (any reason) must finish within the drain timeout: a
        // consumer that does not take its last message is not waited for
        // (its task must end before the route closes its spool).
        let mut cut_deadline: Option<Instant> = None;
        let mut peer_eof = false;
        let mut stall = StallTimer::new(self.route().timeouts.write_stall);
        let lifetime_end = self
            .route()
            .timeouts
            .max_lifetime
            .map(|l| Instant::now() + l);
        loop {
            let notified = self.dispatcher.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            // A cut we made (shutdown, lifetime, spool failure) has a
            // deadline; a consumer's own clean leave (EOF) has none: it
            // reads what it was sent at its pace, bounded by the write
            // stall timer like any delivery.
            if cut.is_some_and(|c| c != ConsumerEnd::Eof) && cut_deadline.is_none() {
                cut_deadline = Some(Instant::now() + self.drain_wait());
            }

            // 1. Take more when everything taken so far is on the wire.
            let mut progressed = false;
            let room = d.queued - d.delivered < WINDOW;
            let take = if cut.is_none() && d.unsent.is_empty() && room {
                self.take_size(d)
            } else {
                0
            };
            if take > 0 {
                progressed = self.refill(d, take) > 0;
            }

            // 2. Write.
            let mut write_blocked = false;
            let mut window_moved = false;
            if !d.unsent.is_empty() || wire.pending() {
                match wire.try_write(&d.unsent) {
                    Ok(n) => {
                        d.wrote(n);
                        progressed = true;
                        // Over TLS, `Ok(0)` means queued ciphertext moved:
                        // the consumer is taking bytes, not stalled.
                        window_moved = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => write_blocked = true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        debug!(error = %e, "consumer write failed");
                        return broken(&e);
                    }
                }
            }

            // 3. What did the consumer's TCP acknowledge? An acknowledgement
            //    frees window room, so it counts as progress: the next round
            //    may take more (waiting for new appends instead would stall a
            //    backlog that is already fully queued).
            if d.written > d.delivered && self.account(wire, d) {
                progressed = true;
                window_moved = true;
            }

            // Write stall: bytes outstanding, none taken or acknowledged.
            // (A cut in progress is bounded by the drain timeout instead.)
            let now = Instant::now();
            let outstanding = !d.unsent.is_empty() || d.written > d.delivered;
            if window_moved || !outstanding || cut_deadline.is_some() {
                stall.progressed();
            } else {
                stall.blocked(now.into_std());
                if stall.expired(now.into_std()) {
                    debug!(
                        unacked = d.written - d.delivered,
                        unsent = d.queued - d.written,
                        "consumer write stalled"
                    );
                    return ConsumerEnd::WriteStall;
                }
            }
            if cut_deadline.is_some_and(|c| now >= c) {
                debug!(
                    unsent = d.queued - d.written,
                    "consumer did not take its last message within the drain timeout"
                );
                return ConsumerEnd::WriteStall;
            }
            if cut.is_none() && lifetime_end.is_some_and(|l| now >= l) {
                cut = Some(ConsumerEnd::MaxLifetime);
                self.cut_at_boundary(d);
                continue;
            }

            // 4. A cut finishes once the last message is on the wire.
            if let Some(end) = cut {
                if d.unsent.is_empty() {
                    return self.finish_cut(wire, d, end, cut_deadline).await;
                }
            }

            // 5. Wait for something to do; after progress only look (without
            //    waiting) for a stop or the consumer's EOF, then go round again.
            let want_data = !progressed
                && cut.is_none()
                && d.unsent.is_empty()
                && d.queued - d.delivered < WINDOW;
            // Given back for want of memory: wait until some is freed (a
            // short poll too, in case the free came before this wait).
            let starved = want_data && d.starved;
            let freed = async {
                if starved {
                    let w = self.memory.waiter();
                    tokio::select! {
                        _ = w.wait() => {}
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
            };
            let unacked = !progressed && d.written > d.delivered;
            let stall_armed = stall.deadline().is_some();
            let stall_at = stall.deadline().map_or(now, Instant::from_std);
            let lifetime_armed = cut.is_none() && lifetime_end.is_some();
            let cut_at = cut_deadline.unwrap_or(now);
            let lifetime_at = lifetime_end.unwrap_or(now);
            let mut readable = false;
            tokio::select! {
                biased;
                _ = self.cut.cancelled(), if cut.is_none() => {
                    cut_deadline = Some(self.drain_deadline(super::Role::Consumer));
                    cut = Some(if self.failed() {
                        ConsumerEnd::SpoolFailed
                    } else {
                        ConsumerEnd::Shutdown
                    });
                    self.cut_at_boundary(d);
                }
                r = wire.tcp().readable(), if !peer_eof => {
                    if let Err(e) = r {
                        debug!(error = %e, "consumer readiness failed");
                        return broken(&e);
                    }
                    readable = true;
                }
                r = wire.tcp().writable(), if write_blocked => {
                    if let Err(e) = r {
                        return broken(&e);
                    }
                }
                _ = sleep_until(stall_at), if stall_armed => {}
                _ = sleep_until(lifetime_at), if lifetime_armed => {}
                _ = sleep_until(cut_at), if cut_deadline.is_some() => {}
                _ = &mut notified, if want_data && !starved => {}
                _ = freed, if starved => {}
                _ = tokio::time::sleep(ACK_POLL), if unacked => {}
                // After progress, yield once before the next round: the
                // runtime polls the socket readiness it tracks (a reset,
                // the consumer's FIN) meanwhile. A loop that always has
                // something to write and goes round at once would not see
                // them until it ran out of bytes to send.
                _ = tokio::task::yield_now(), if progressed => {}
            }
            if readable {
                // Consumers send nothing; bytes that arrive are discarded.
                match wire.read_discard() {
                    Ok(true) => {
                        peer_eof = true;
                        if cut.is_none() {
                            cut = Some(ConsumerEnd::Eof);
                            self.cut_at_boundary(d);
                        }
                    }
                    Ok(false) => {}
                    Err(e) => {
                        debug!(error = %e, "consumer reset");
                        return broken(&e);
                    }
                }
            }
        }
    }

    /// Takes the next batch from the dispatcher (what was read ahead or
    /// given back; never waits for the disk); returns how many messages
    /// it took.
    fn refill(&self, d: &mut Delivery, max_bytes: usize) -> usize {
        let before = d.queued;
        let mut run = BytesMut::new();
        let n = self
            .dispatcher
            .take(d.id, BATCH_MSGS, max_bytes, |m| d.push(m, &mut run));
        d.end_run(&mut run);
        let took = d.queued - before;
        let held = d.held(self.route().redeliver_on_reset);
        // What was reserved covers the take, and a small take (the minimum
        // every consumer may have in flight) is always allowed. A larger
        // one (one message larger than the reservation) must fit the
        // budget, or this consumer takes the lane (one connection at a time
        // past the budget), or the take goes back to the queue until
        // memory is freed.
        if held > d.charge.held()
            && took > super::memory::MIN_HOLD / 2
            && !d.charge.try_set_or_lane(held)
        {
            self.cut_at_boundary(d);
            d.unsent = VecDeque::new();
            d.charge.set(d.held(self.route().redeliver_on_reset));
            d.starved = true;
            return 0;
        }
        d.charge.set(held);
        d.starved = false;
        n
    }

    /// How many bytes the next take may bring (0: none now), within the
    /// peer memory budget: a full batch while the budget allows it (held
    /// twice: in flight, and unsent, maybe copied); past
    /// it, nothing while earlier messages are unacknowledged (their
    /// acknowledgements free memory), and a small take (at least one
    /// message) when none are.
    fn take_size(&self, d: &mut Delivery) -> usize {
        let held = d.held(self.route().redeliver_on_reset);
        if d.charge.try_set(held + 2 * BATCH_BYTES as u64) {
            return BATCH_BYTES;
        }
        if d.queued > d.delivered {
            return 0;
        }
        (super::memory::MIN_HOLD / 4) as usize
    }

    /// Reports what the consumer's TCP acknowledged to the dispatcher,
    /// which moves the messages that ends covers out of flight, and
    /// acknowledges to the spool what no one needs any more. Returns
    /// whether anything more was acknowledged.
    fn account(&self, wire: &mut Wire, d: &mut Delivery) -> bool {
        let acked = match wire.acked() {
            Ok(n) => n.min(d.written),
            // No answer: assume nothing more was delivered.
            Err(_) => return false,
        };
        if acked <= d.delivered {
            return false;
        }
        d.delivered = acked;
        let mut moved = 0u64;
        let mut bytes = 0u64;
        let mut latency = LatencyTally::new(&self.stats.delivery_latency);
        self.dispatcher.acked(d.id, acked, |m| {
            moved += 1;
            bytes += m.data.len() as u64;
            latency.add_with(&self.stats.delivery_latency, m.append_ms);
        });
        if moved == 0 {
            return true;
        }
        latency.record(&self.stats.delivery_latency);
        d.delivered_msgs += moved;
        d.charge.set(d.held(self.route().redeliver_on_reset));
        self.stats.count_delivered(moved, bytes);
        d.peer_bytes.fetch_add(bytes, Ordering::Relaxed);
        true
    }

    /// Stops sending after the message in flight: what is unsent is cut
    /// at the end of the partly written message (or at once if none is),
    /// and messages not started go back to the front of the queue.
    fn cut_at_boundary(&self, d: &mut Delivery) {
        let keep_end = self.dispatcher.cut(d.id, d.written);
        d.truncate_to(keep_end);
    }

    /// Everything to send is on the wire: half-close, wait until the
    /// consumer's TCP acknowledged it all (until `deadline`; without one,
    /// for as long as it keeps acknowledging, up to `write_stall_timeout`
    /// without progress), account, close. A reset meanwhile (a consumer
    /// that sends RST after its FIN) ends the wait at once: what it did
    /// not acknowledge goes back now, not after the drain timeout.
    async fn finish_cut(
        &self,
        wire: &mut Wire,
        d: &mut Delivery,
        end: ConsumerEnd,
        deadline: Option<Instant>,
    ) -> ConsumerEnd {
        if end == ConsumerEnd::Eof {
            // The consumer's own leave: before our FIN, a moment for a
            // reset that may follow its FIN (a client that closes with
            // unread data). Once our FIN is acknowledged, a later reset
            // would find the connection gone and could not be seen.
            let grace = Instant::now() + FIN_GRACE;
            while Instant::now() < grace {
                if let Some(e) = wire.failure() {
                    debug!(error = %e, "consumer reset after its FIN");
                    self.account(wire, d);
                    return broken(&e);
                }
                tokio::time::sleep(ACK_POLL).await;
            }
        }
        let half_close_by = deadline.unwrap_or_else(|| Instant::now() + self.drain_wait());
        wire.shutdown_write(half_close_by).await;
        let mut stall = StallTimer::new(self.route().timeouts.write_stall);
        loop {
            let moved = self.account(wire, d);
            // A reset first: one that came with (or right after) the last
            // acknowledgement is still a reset, not a clean leave.
            if let Some(e) = wire.failure() {
                debug!(error = %e, "consumer reset while finishing a cut");
                return broken(&e);
            }
            if d.written <= d.delivered {
                return self.await_fin_ack(wire, end, deadline).await;
            }
            let now = Instant::now();
            match deadline {
                Some(at) if now >= at => return end,
                Some(_) => {}
                None => {
                    if moved {
                        stall.progressed();
                    } else {
                        stall.blocked(now.into_std());
                        if stall.expired(now.into_std()) {
                            return ConsumerEnd::WriteStall;
                        }
                    }
                }
            }
            tokio::time::sleep(ACK_POLL).await;
        }
    }

    /// Every message is acknowledged: before calling the leave clean, wait
    /// (briefly) for the consumer's TCP to acknowledge our FIN too. A
    /// consumer that half-closed and then closed with unread data sends a
    /// reset right behind its FIN; that reset, not a clean leave, is what
    /// it is (its kernel acknowledged messages it never read).
    async fn await_fin_ack(
        &self,
        wire: &mut Wire,
        end: ConsumerEnd,
        deadline: Option<Instant>,
    ) -> ConsumerEnd {
        let until =
            (Instant::now() + FIN_ACK_WAIT).min(deadline.unwrap_or(Instant::now() + FIN_ACK_WAIT));
        loop {
            if let Some(e) = wire.failure() {
                debug!(error = %e, "consumer reset after its FIN");
                return broken(&e);
            }
            if wire.all_acked() || Instant::now() >= until {
                return end;
            }
            tokio::time::sleep(ACK_POLL).await;
        }
    }

    fn drain_wait(&self) -> Duration {
        self.drain
    }
}

#[cfg(test)]
mod tests {
    use super::ConsumerEnd;

    #[test]
    fn consumer_end_index_matches_all() {
        for (i, e) in ConsumerEnd::ALL.iter().enumerate() {
            assert_eq!(*e as usize, i, "{}", e.as_str());
        }
    }
}
