//! A consumer that speaks the ack protocol (`to_protocol = "ack"`; the
//! wire is specified in `docs/protocol.md`, the codec is
//! `spillway_codec::proto`).
//!
//! A message is delivered when the consumer acknowledges it, not when its
//! TCP does: the dispatcher holds it for this connection until an ACK (or
//! ACKS) names it; NAK gives it back with a delay, TERM dead-letters it.
//! The connection ends:
//! - **Clean close** (FIN, or a close after acknowledging everything):
//!   what it still holds goes back.
//! - **Reset**, **write stall**, **peer timeout**: the same; the consumer
//!   is lost.
//! - **Ack timeout**: a message held longer than `ack_timeout` since it
//!   reached the consumer (its TCP acknowledged all of it: a slow link or
//!   a full socket buffer does not count) or since its last PROG. The
//!   relay resets the connection (a consumer that holds one message that
//!   long is treated as lost: this catches a black hole that reads and
//!   discards).
//! - **Memory**: what it holds (unacknowledged, and frames not yet
//!   written) is charged to the peer memory budget; refused, it is sent
//!   nothing more until acknowledgements free some.
//! - **Protocol error**: the relay sends `ERR <code> <text>` and closes.
//! - **Shutdown** (drain): the relay sends `BYE`, sends nothing more, and
//!   waits until the consumer acknowledged what it holds (or the drain
//!   timeout), then closes.
//!
//! What a lost consumer held goes back as *suspects*, delivered one at a
//! time (see `dispatch/acking.rs`).

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use spillway_codec::proto::{self, Encoding, Frame, FrameDecoder, Hello, ProtoError, Welcome};
use spillway_net::timeout::StallTimer;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, info};

use super::dispatch::{AckOutcome, ConsumerId};
use super::dispatcher::Dispatcher;
use super::seqmap::SeqMap;
use super::sink::{broken, ConsumerEnd, LatencyTally};
use super::wire::Wire;
use super::QueueServer;

use super::HANDSHAKE_TIMEOUT;
/// Most bytes of messages one take may add (a take is also bounded by
/// the window).
const TAKE_BYTES: u64 = 512 << 10;
/// MSG frames with bodies shorter than this are copied into runs of up to
/// [`RUN`] bytes (see `Conn::take`).
const SMALL: usize = 512;
const RUN: usize = 64 << 10;
/// While messages are on their way to the consumer, how often its TCP's
/// acknowledgements are looked at (`SIOCOUTQ`).
const REACH_POLL: Duration = Duration::from_millis(5);
/// While the relay waits for the write of an error frame.
const ERR_WAIT: Duration = Duration::from_secs(1);

/// What this connection holds, in delivery order (the dispatcher keeps the
/// messages; this is for cumulative ACKs and the ack timers).
///
/// Deliveries are numbered in order and a cumulative ACK removes a prefix,
/// and timers start in delivery order with one timeout, so both are FIFOs
/// with lazy deletion (a removed entry stays until it reaches the front):
/// O(1) per message, where B-trees cost a third of the relay's CPU per
/// acknowledged message (measured by `bench/ack.sh`'s profile).
#[derive(Default)]
struct Held {
    /// (delivery number, seq), in delivery order; entries whose seq is no
    /// longer held (or was delivered again since) are stale.
    order: VecDeque<(u64, u64)>,
    /// Seq -> (delivery number, ack deadline once it reached the consumer).
    by_seq: SeqMap<(u64, Option<Instant>)>,
    /// (deadline, seq) in the order timers started (deadlines never
    /// decrease); stale when the seq is gone or its deadline moved (PROG).
    deadlines: VecDeque<(Instant, u64)>,
    next: u64,
}

impl Held {
    /// `seq` is queued for writing; its ack timer starts once it reached
    /// the consumer ([`Held::start`]).
    fn deliver(&mut self, seq: u64) {
        self.next += 1;
        self.order.push_back((self.next, seq));
        self.by_seq.insert(seq, (self.next, None));
    }

    /// `seq` reached the consumer: its ack timer runs until `deadline`.
    fn start(&mut self, seq: u64, deadline: Instant) {
        if let Some(e) = self.by_seq.get_mut(seq) {
            if e.1.is_none() {
                e.1 = Some(deadline);
                self.deadlines.push_back((deadline, seq));
            }
        }
    }

    fn remove(&mut self, seq: u64) -> bool {
        let removed = self.by_seq.remove(seq).is_some();
        self.trim();
        removed
    }

    /// Drops stale entries from the fronts of both queues.
    fn trim(&mut self) {
        while let Some(&(n, seq)) = self.order.front() {
            if self.by_seq.get(seq).is_some_and(|e| e.0 == n) {
                break;
            }
            self.order.pop_front();
        }
        while let Some(&(at, seq)) = self.deadlines.front() {
            if self.by_seq.get(seq).is_some_and(|e| e.1 == Some(at)) {
                break;
            }
            self.deadlines.pop_front();
        }
        if self.by_seq.is_empty() {
            self.order.clear();
            self.deadlines.clear();
        }
    }

    /// ACK `seq`: it and everything delivered before it here.
    fn cumulative(&mut self, seq: u64) -> Vec<u64> {
        let Some(&(n, _)) = self.by_seq.get(seq) else {
            return Vec::new();
        };
        let mut seqs = Vec::new();
        while let Some(&(m, s)) = self.order.front() {
            if m > n {
                break;
            }
            self.order.pop_front();
            if self.by_seq.get(s).is_some_and(|e| e.0 == m) {
                self.by_seq.remove(s);
                seqs.push(s);
            }
        }
        self.trim();
        seqs
    }

    /// ACKS: the held seqs in the ranges; each costs at most the smaller of
    /// its span and what is held (a frame of 1,024 ranges of everything
    /// visits the held seqs once: each range's are removed before the
    /// next is looked at).
    fn ranges(&mut self, ranges: &[(u64, u64)]) -> Vec<u64> {
        let mut seqs = Vec::new();
        for &(a, b) in ranges {
            let span = b - a;
            if span < self.by_seq.len() as u64 {
                for s in a..=b {
                    if self.by_seq.remove(s).is_some() {
                        seqs.push(s);
                    }
                }
            } else {
                let found: Vec<u64> = self.by_seq.keys().filter(|s| (a..=b).contains(s)).collect();
                for &s in &found {
                    self.by_seq.remove(s);
                }
                seqs.extend(found);
            }
        }
        self.trim();
        seqs
    }

    /// PROG: `seq`'s timer restarts, due at `deadline`.
    fn touch(&mut self, seq: u64, deadline: Instant) -> bool {
        let Some(e) = self.by_seq.get_mut(seq) else {
            return false;
        };
        e.1 = Some(deadline);
        // The old entry goes stale; the new deadline is the latest yet
        // (now + the timeout), so the queue stays in order.
        self.deadlines.push_back((deadline, seq));
        self.trim();
        true
    }

    fn first_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|&(at, _)| at)
    }

    fn len(&self) -> usize {
        self.by_seq.len()
    }

    fn is_empty(&self) -> bool {
        self.by_seq.is_empty()
    }
}

/// One connection's state.
struct Conn<'a> {
    /// Its group's dispatcher.
    d: &'a Dispatcher,
    id: ConsumerId,
    encoding: Encoding,
    decoder: FrameDecoder,
    inbuf: BytesMut,
    /// Frames to write, in order (headers, bodies, trailers).
    unsent: VecDeque<Bytes>,
    /// Bytes in `unsent`.
    unsent_bytes: u64,
    /// Bytes queued on this connection, and where each MSG that has not
    /// yet reached the consumer ends: its ack timer starts once the
    /// consumer's TCP acknowledged all of it (`SIOCOUTQ`), so neither a
    /// slow link nor a full socket buffer eats its ack timeout.
    queued: u64,
    unreached: VecDeque<(u64, u64)>,
    /// Where small frames are copied together (see [`Conn::take`]).
    run: BytesMut,
    held: Held,
    delivered_msgs: u64,
    peer_bytes: Arc<AtomicU64>,
    /// What it holds, charged to the process's peer memory budget.
    charge: super::memory::Charge,
    /// Its unacknowledged messages, as `/status` shows them.
    peer_unacked: Arc<AtomicU64>,
}

impl Conn<'_> {
    fn queue(&mut self, b: Bytes) {
        self.unsent_bytes += b.len() as u64;
        self.queued += b.len() as u64;
        self.unsent.push_back(b);
    }

    /// The consumer's TCP acknowledged the connection's bytes up to
    /// `acked`: the messages that ends covers start their ack timers, due
    /// at `deadline`.
    fn reached(&mut self, acked: u64, deadline: Instant) {
        while let Some(&(end, seq)) = self.unreached.front() {
            if end > acked {
                break;
            }
            self.unreached.pop_front();
            self.held.start(seq, deadline);
        }
    }

    fn wrote(&mut self, n: usize) {
        self.unsent_bytes -= (n as u64).min(self.unsent_bytes);
        super::wire::advance(&mut self.unsent, n);
    }

    /// Takes what `budget` bytes allow and queues their MSG frames. A
    /// frame with a body of at least [`SMALL`] bytes is written from the
    /// message's own buffer (its header from the run buffer); smaller
    /// frames, header and body, are copied into one run of up to [`RUN`]
    /// bytes, so that a vectored write carries a few long slices instead
    /// of two or three per 64-byte message (as the plain sink does; the
    /// per-slice cost and a header allocation per message were a quarter
    /// of the relay's CPU per acknowledged 64 B message).
    fn take(&mut self, budget: u64, framing: spillway_codec::Framing) -> usize {
        let encoding = self.encoding;
        let trailer = proto::body_trailer(encoding);
        let Conn {
            d,
            id,
            unsent,
            unsent_bytes,
            queued,
            unreached,
            run,
            held,
            ..
        } = self;
        let end_run = |run: &mut BytesMut, unsent: &mut VecDeque<Bytes>| {
            if !run.is_empty() {
                unsent.push_back(run.split().freeze());
            }
        };
        let n = d.take_acking(*id, budget, |m, attempt| {
            let body = spillway_codec::payload(framing, &m.data);
            let len;
            if body.len() >= SMALL {
                end_run(run, unsent);
                proto::msg_header(m.seq, attempt, body.len(), encoding, run);
                len = run.len() + body.len() + trailer.len();
                end_run(run, unsent);
                unsent.push_back(m.data.slice_ref(body));
                if !trailer.is_empty() {
                    unsent.push_back(Bytes::from_static(trailer));
                }
            } else {
                if run.capacity() - run.len() < body.len() + proto::FRAME_OVERHEAD {
                    end_run(run, unsent);
                    run.reserve(RUN);
                }
                // After a full run was queued: the frame's length is what
                // this message adds to the run.
                let before = run.len();
                proto::msg_header(m.seq, attempt, body.len(), encoding, run);
                run.extend_from_slice(body);
                run.extend_from_slice(trailer);
                len = run.len() - before;
            }
            *queued += len as u64;
            *unsent_bytes += len as u64;
            held.deliver(m.seq);
            unreached.push_back((*queued, m.seq));
        });
        end_run(run, unsent);
        n
    }

    fn push_frame(&mut self, f: &Frame) {
        let mut out = BytesMut::new();
        proto::encode(f, self.encoding, &mut out);
        self.queue(out.freeze());
    }
}

/// How a connection's loop ended.
enum Stop {
    End(ConsumerEnd),
    /// A protocol error: `ERR` is sent, then the connection closes.
    Error(ProtoError),
}

impl From<ConsumerEnd> for Stop {
    fn from(e: ConsumerEnd) -> Self {
        Stop::End(e)
    }
}

impl QueueServer {
    /// Serves one ack-protocol consumer until it ends.
    pub(super) async fn consume_acking(
        &self,
        mut wire: Wire,
        peer_bytes: Arc<AtomicU64>,
        peer_unacked: Arc<AtomicU64>,
    ) -> ConsumerEnd {
        let (hello, early) = match self.hello(&mut wire).await {
            Ok(h) => h,
            Err(Stop::End(e)) => return e,
            Err(Stop::Error(e)) => {
                info!(code = e.code, error = %e.message, "consumer handshake refused");
                self.send_and_close(&mut wire, VecDeque::from([Bytes::from(e.to_line())]))
                    .await;
                return ConsumerEnd::ProtocolError;
            }
        };
        let route = self.route();
        let Some(d) = self.group(hello.group.as_deref()) else {
            // Checked in the hello.
            return ConsumerEnd::ProtocolError;
        };
        let id = d.join_acking(hello.window, hello.window_bytes);
        self.stats.consumers.fetch_add(1, Ordering::Relaxed);
        self.stats.consumers_total.fetch_add(1, Ordering::Relaxed);
        let welcome = Welcome {
            session: format!("{id:x}"),
            max_message: route.max_message,
            ack_timeout_ms: route.ack_timeout.as_millis() as u64,
            max_deliveries: route.max_deliveries,
        };
        let max_frame = route.max_message as usize + proto::FRAME_OVERHEAD;
        let mut c = Conn {
            d,
            id,
            encoding: hello.encoding,
            decoder: FrameDecoder::new(hello.encoding, max_frame),
            inbuf: early,
            unsent: VecDeque::new(),
            unsent_bytes: 0,
            queued: 0,
            unreached: VecDeque::new(),
            run: BytesMut::new(),
            held: Held::default(),
            delivered_msgs: 0,
            peer_bytes,
            charge: self.memory.charge(),
            peer_unacked,
        };
        c.queue(Bytes::from(welcome.to_line()));
        info!(
            window = hello.window,
            window_bytes = hello.window_bytes,
            encoding = ?hello.encoding,
            "ack consumer connected"
        );
        let end = match self.serve_acking(&mut wire, &mut c).await {
            Stop::End(e) => e,
            Stop::Error(e) => {
                debug!(code = e.code, error = %e.message, "consumer protocol error");
                c.push_frame(&Frame::Err {
                    code: e.code,
                    text: e.message.clone(),
                });
                self.send_and_close(&mut wire, std::mem::take(&mut c.unsent))
                    .await;
                ConsumerEnd::ProtocolError
            }
        };
        if c.held.is_empty() && !matches!(end, ConsumerEnd::AckTimeout | ConsumerEnd::WriteStall) {
            wire.ends_cleanly();
        }
        drop(wire);
        let back = d.leave(id, true);
        self.consumer_left(end, back);
        info!(
            reason = end.as_str(),
            acked = c.delivered_msgs,
            requeued = back,
            "consumer closed"
        );
        end
    }

    /// Reads and checks the hello line.
    async fn hello(&self, wire: &mut Wire) -> Result<(Hello, BytesMut), Stop> {
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        let mut buf = BytesMut::new();
        loop {
            match proto::hello_line(&buf) {
                Ok(Some(n)) => {
                    let line = buf.split_to(n);
                    let hello = Hello::parse(&line[..n - 1]).map_err(Stop::Error)?;
                    if hello.role != proto::Role::Consumer {
                        return Err(Stop::Error(ProtoError::new(
                            403,
                            "this endpoint takes consumers (role=consumer); producers connect to the route's from endpoint",
                        )));
                    }
                    if self.group(hello.group.as_deref()).is_none() {
                        let route = self.route();
                        let declared = route.groups.join(", ");
                        let js_group = route.jetstream.as_ref().and_then(|js| js.read_group());
                        return Err(Stop::Error(ProtoError::new(
                            403,
                            match &hello.group {
                                Some(g) if let Some(reads) = js_group => format!(
                                    "group '{g}' is not read here: this relay reads group '{reads}' of the stream"
                                ),
                                Some(g) if declared.is_empty() => format!(
                                    "undeclared group '{g}': this route declares no groups"
                                ),
                                Some(g) => format!(
                                    "undeclared group '{g}': this route declares {declared}"
                                ),
                                None => format!(
                                    "this route has consumer groups: name one (group=) of {declared}"
                                ),
                            },
                        )));
                    }
                    // Frames sent right behind the hello (a client need
                    // not wait for OK) are read as the connection's first.
                    return Ok((hello, buf));
                }
                Ok(None) => {}
                Err(e) => return Err(Stop::Error(e)),
            }
            tokio::select! {
                r = wire.tcp().readable() => {
                    if let Err(e) = r {
                        return Err(broken(&e).into());
                    }
                }
                _ = sleep_until(deadline) => {
                    return Err(Stop::Error(ProtoError::handshake_timeout(HANDSHAKE_TIMEOUT)));
                }
                _ = self.cut.cancelled() => return Err(ConsumerEnd::Shutdown.into()),
            }
            match wire.try_read(&mut buf) {
                Ok(0) => return Err(ConsumerEnd::Eof.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(broken(&e).into()),
            }
        }
    }

    /// Writes what is left to send (ending with an error frame),
    /// half-closes, and gives the peer a moment to read it.
    async fn send_and_close(&self, wire: &mut Wire, mut q: VecDeque<Bytes>) {
        let until = Instant::now() + ERR_WAIT;
        while !q.is_empty() || wire.pending() {
            match wire.try_write(&q) {
                Ok(n) => super::wire::advance(&mut q, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if tokio::time::timeout_at(until, wire.tcp().writable())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        wire.ends_cleanly();
        wire.shutdown_write(until).await;
    }

    async fn serve_acking(&self, wire: &mut Wire, c: &mut Conn<'_>) -> Stop {
        let route = self.route();
        let ack_timeout = route.ack_timeout;
        let mut stall = StallTimer::new(route.timeouts.write_stall);
        let lifetime_end = route.timeouts.max_lifetime.map(|l| Instant::now() + l);
        let framing = route.framing;
        // Draining (shutdown or lifetime): BYE sent, nothing more taken;
        // ends once everything held is acknowledged, or at the deadline.
        let mut draining: Option<(ConsumerEnd, Instant)> = None;
        let mut peer_eof = false;
        loop {
            let notified = c.d.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Instant::now();
            let mut progressed = false;

            // 1. Take what the window and the peer memory budget allow.
            let mut starved = false;
            if draining.is_none() && !peer_eof {
                let held = self.charged(c);
                // A message taken is held twice until it is written: in
                // flight (unacknowledged) and unsent.
                let budget = if c.charge.try_set(held + 2 * TAKE_BYTES) {
                    TAKE_BYTES
                } else if held == 0 {
                    // One message is always allowed.
                    1
                } else {
                    0
                };
                starved = budget == 0;
                if c.take(budget, framing) > 0 {
                    progressed = true;
                }
                let held = self.charged(c);
                c.charge.set(held);
            }

            // 2. Write.
            let mut write_blocked = false;
            if !c.unsent.is_empty() || wire.pending() {
                match wire.try_write(&c.unsent) {
                    Ok(n) => {
                        c.wrote(n);
                        progressed = true;
                        stall.progressed();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => write_blocked = true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        debug!(error = %e, "consumer write failed");
                        return broken(&e).into();
                    }
                }
            }
            if c.unsent.is_empty() && !wire.pending() {
                stall.progressed();
            } else if write_blocked {
                stall.blocked(now.into_std());
                if stall.expired(now.into_std()) {
                    return ConsumerEnd::WriteStall.into();
                }
            }

            // What reached the consumer starts its ack timer.
            if !c.unreached.is_empty() {
                if let Ok(acked) = wire.acked() {
                    c.reached(acked, Instant::now() + ack_timeout);
                }
            }

            // 3. Read and apply frames.
            if !peer_eof {
                loop {
                    match wire.try_read(&mut c.inbuf) {
                        Ok(0) => {
                            peer_eof = true;
                            break;
                        }
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            debug!(error = %e, "consumer reset");
                            return broken(&e).into();
                        }
                    }
                }
                loop {
                    match c.decoder.decode(&mut c.inbuf) {
                        Ok(Some(f)) => {
                            progressed = true;
                            if let Err(e) = self.apply(c, f, ack_timeout) {
                                return Stop::Error(e);
                            }
                        }
                        Ok(None) => break,
                        Err(e) => return Stop::Error(e),
                    }
                }
            }

            // 4. Ends.
            let now = Instant::now();
            if let Some(at) = c.held.first_deadline() {
                if now >= at {
                    self.stats.ack_timeouts.fetch_add(1, Ordering::Relaxed);
                    info!(
                        held = c.held.len(),
                        "consumer held a message past ack_timeout; resetting it"
                    );
                    return ConsumerEnd::AckTimeout.into();
                }
            }
            if peer_eof {
                // The consumer closed its side: nothing more can be
                // acknowledged. Finish writing, then end.
                if c.unsent.is_empty() && !wire.pending() {
                    return ConsumerEnd::Eof.into();
                }
            }
            if let Some((end, at)) = draining {
                if c.held.is_empty() && c.unsent.is_empty() && !wire.pending() {
                    return end.into();
                }
                if now >= at {
                    return end.into();
                }
            }
            if draining.is_none() && lifetime_end.is_some_and(|l| now >= l) {
                draining = Some((ConsumerEnd::MaxLifetime, now + self.drain));
                c.push_frame(&Frame::Bye);
                continue;
            }

            // 5. Wait.
            let want_data = !progressed && draining.is_none() && !peer_eof;
            // Refused memory: wait until some is freed (a short poll too,
            // in case the free came before this wait).
            let freed = async {
                if want_data && starved {
                    let w = self.memory.waiter();
                    tokio::select! {
                        _ = w.wait() => {}
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
            };
            let ack_at = c.held.first_deadline().unwrap_or(now);
            let stall_at = stall.deadline().map_or(now, Instant::from_std);
            let drain_at = draining.map_or(now, |d| d.1);
            let lifetime_armed = draining.is_none() && lifetime_end.is_some();
            let lifetime_at = lifetime_end.unwrap_or(now);
            tokio::select! {
                biased;
                _ = self.cut.cancelled(), if draining.is_none() => {
                    let end = if self.failed() { ConsumerEnd::SpoolFailed } else { ConsumerEnd::Shutdown };
                    draining = Some((end, self.drain_deadline(super::Role::Consumer)));
                    c.push_frame(&Frame::Bye);
                }
                r = wire.tcp().readable(), if !peer_eof => {
                    if let Err(e) = r {
                        return broken(&e).into();
                    }
                }
                r = wire.tcp().writable(), if write_blocked => {
                    if let Err(e) = r {
                        return broken(&e).into();
                    }
                }
                _ = sleep_until(ack_at), if c.held.first_deadline().is_some() => {}
                _ = tokio::time::sleep(REACH_POLL), if !c.unreached.is_empty() && !progressed => {}
                _ = sleep_until(stall_at), if stall.deadline().is_some() => {}
                _ = sleep_until(drain_at), if draining.is_some() => {}
                _ = sleep_until(lifetime_at), if lifetime_armed => {}
                _ = &mut notified, if want_data && !starved => {}
                _ = freed, if want_data && starved => {}
                _ = tokio::task::yield_now(), if progressed => {}
            }
        }
    }

    /// Applies one frame from the consumer.
    fn apply(&self, c: &mut Conn<'_>, f: Frame, ack_timeout: Duration) -> Result<(), ProtoError> {
        let not_held = |what: &str, seq: u64| {
            ProtoError::new(
                409,
                format!("{what} {seq}: no such message is held by this connection"),
            )
        };
        match f {
            Frame::Ack { seq } => {
                let seqs = c.held.cumulative(seq);
                if seqs.is_empty() {
                    self.stats.acks_ignored.fetch_add(1, Ordering::Relaxed);
                }
                self.settle_acked(c, seqs);
            }
            Frame::Acks { ranges } => {
                let seqs = c.held.ranges(&ranges);
                if seqs.is_empty() {
                    self.stats.acks_ignored.fetch_add(1, Ordering::Relaxed);
                }
                self.settle_acked(c, seqs);
            }
            Frame::Nak { seq, delay_ms } => {
                if !c.held.remove(seq) {
                    return Err(not_held("NAK", seq));
                }
                match c.d.nak(c.id, seq, Duration::from_millis(delay_ms)) {
                    Ok(AckOutcome::Delayed(_)) => {
                        self.stats.naks.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(AckOutcome::Buried) => {
                        self.stats.naks.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => return Err(not_held("NAK", seq)),
                }
            }
            Frame::Term { seq, reason } => {
                if !c.held.remove(seq) {
                    return Err(not_held("TERM", seq));
                }
                c.d.term(c.id, seq, reason)
                    .map_err(|_| not_held("TERM", seq))?;
            }
            Frame::Prog { seq } => {
                if !c.held.touch(seq, Instant::now() + ack_timeout) {
                    return Err(not_held("PROG", seq));
                }
            }
            Frame::Win { msgs, bytes } => {
                if msgs == 0 || msgs > proto::MAX_WINDOW || bytes == 0 {
                    return Err(ProtoError::new(
                        400,
                        format!(
                            "WIN {msgs} {bytes}: the window must be 1 to {} messages and at least 1 byte",
                            proto::MAX_WINDOW
                        ),
                    ));
                }
                c.d.set_window(c.id, msgs, bytes);
            }
            other => {
                return Err(ProtoError::new(
                    400,
                    format!("a consumer cannot send {}", other.verb()),
                ));
            }
        }
        Ok(())
    }

    /// What this connection makes the relay hold: its unacknowledged
    /// messages (kept for redelivery) and the frames not yet written
    /// (headers, and the messages' own buffers, counted again).
    fn charged(&self, c: &Conn<'_>) -> u64 {
        let (msgs, unacked) = c.d.unacked(c.id);
        c.peer_unacked.store(msgs as u64, Ordering::Relaxed);
        unacked + c.unsent_bytes
    }

    fn settle_acked(&self, c: &mut Conn<'_>, seqs: Vec<u64>) {
        if seqs.is_empty() {
            return;
        }
        let mut moved = 0u64;
        let mut bytes = 0u64;
        let h = &self.stats.delivery_latency;
        let mut latency = LatencyTally::new(h);
        let ignored = c.d.settle(c.id, seqs, |m| {
            moved += 1;
            bytes += m.data.len() as u64;
            latency.add_with(h, m.append_ms);
        });
        latency.record(h);
        if ignored > 0 {
            self.stats
                .acks_ignored
                .fetch_add(ignored, Ordering::Relaxed);
        }
        c.delivered_msgs += moved;
        let held = self.charged(c);
        c.charge.set(held);
        self.stats.count_delivered(moved, bytes);
        c.peer_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Deliver(u64),
        Start(u64),
        Ack(u64),
        Acks(u64, u64),
        Remove(u64),
        Touch(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..40u64).prop_map(Op::Deliver),
            3 => (0..40u64).prop_map(Op::Start),
            2 => (0..40u64).prop_map(Op::Ack),
            1 => (0..40u64, 0..10u64).prop_map(|(a, n)| Op::Acks(a, a + n)),
            1 => (0..40u64).prop_map(Op::Remove),
            1 => (0..40u64).prop_map(Op::Touch),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The FIFO `Held` against a plain model: the same seqs held, the
        /// same ones settled by each ACK / ACKS, the same first deadline.
        #[test]
        fn held_against_a_model(ops in proptest::collection::vec(op(), 1..120)) {
            let t0 = Instant::now();
            let mut clock = 0u64;
            let mut h = Held::default();
            // seq -> (delivery number, deadline)
            let mut m: BTreeMap<u64, (u64, Option<Instant>)> = BTreeMap::new();
            let mut next = 0u64;
            for op in ops {
                clock += 1;
                let now = t0 + Duration::from_millis(clock);
                match op {
                    Op::Deliver(s) => {
                        if m.contains_key(&s) { continue; }
                        next += 1;
                        m.insert(s, (next, None));
                        h.deliver(s);
                    }
                    Op::Start(s) => {
                        if let Some(e) = m.get_mut(&s) {
                            if e.1.is_none() { e.1 = Some(now); }
                        }
                        h.start(s, now);
                    }
                    Op::Ack(s) => {
                        let want: Vec<u64> = match m.get(&s) {
                            Some(&(n, _)) => {
                                let mut v: Vec<(u64, u64)> = m.iter()
                                    .filter(|(_, e)| e.0 <= n).map(|(&k, e)| (e.0, k)).collect();
                                v.sort_unstable();
                                v.into_iter().map(|(_, k)| k).collect()
                            }
                            None => Vec::new(),
                        };
                        for k in &want { m.remove(k); }
                        prop_assert_eq!(h.cumulative(s), want);
                    }
                    Op::Acks(a, b) => {
                        let want: Vec<u64> = m.range(a..=b).map(|(&k, _)| k).collect();
                        for k in &want { m.remove(k); }
                        let mut got = h.ranges(&[(a, b)]);
                        got.sort_unstable();
                        prop_assert_eq!(got, want);
                    }
                    Op::Remove(s) => {
                        prop_assert_eq!(h.remove(s), m.remove(&s).is_some());
                    }
                    Op::Touch(s) => {
                        let held = m.contains_key(&s);
                        if let Some(e) = m.get_mut(&s) { e.1 = Some(now); }
                        prop_assert_eq!(h.touch(s, now), held);
                    }
                }
                prop_assert_eq!(h.len(), m.len());
                let first = m.values().filter_map(|e| e.1).min();
                prop_assert_eq!(h.first_deadline(), first);
            }
        }
    }
}
