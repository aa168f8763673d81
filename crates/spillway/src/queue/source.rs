//! The producer side: read, frame, append — as fast as the producer sends.
//!
//! Each read's complete messages are appended as one batch (one disk
//! record when they go to disk), so a producer of small lines costs one
//! append per read, not per line. Appends are pipelined one deep: a
//! batch is handed to the spool's writer thread and the producer reads
//! and decodes its next chunk while it is written; the next batch is
//! offered once the previous one's answer is in (so batches stay in
//! order, and a batch refused at the disk bound stops the producer before
//! anything behind it is offered). A bad frame closes that producer only,
//! after everything before it was appended. A partial message at EOF or
//! reset is never appended as if it were whole.
//!
//! A producer that sends nothing for `read_idle_timeout` (a slowloris that
//! connects and never sends, or a peer that vanished) is closed, as is one
//! past `max_lifetime`; what its socket already held is queued first.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;

use bytes::{Buf, BytesMut};
use spillway_codec::{Decoded, Decoder, FrameError};
use spillway_net::tls::MaybeTls;
use spillway_spool::{AppendOutcome, SpoolError};
use tokio::io::AsyncReadExt;
use tokio::time::{sleep_until, Instant};
use tracing::{error, info, warn};

use super::memory::{Charge, MIN_HOLD};
use super::QueueServer;

/// Most bytes asked of the socket per read. Large reads are what keep the
/// per-message cost low for small messages; a producer's reads start at
/// [`FIRST_READ`] and double while they fill the buffer.
const READ_CHUNK: usize = 256 << 10;
/// The read size of a new or slow producer (within the peer memory
/// budget's minimum, so it is always granted).
const FIRST_READ: usize = super::memory::MIN_HOLD as usize;

/// A partial message being received, for the `min_rate` check: the start
/// of the current period of `min_rate_grace`, and the bytes that arrived
/// in it. Time its appends waited for disk space is not counted; time it
/// waited for peer memory is (it holds memory and does not progress).
#[derive(Clone, Copy)]
pub(super) struct Partial {
    pub(super) since: Instant,
    pub(super) received: u64,
}

/// Why a producer connection ended (logged and counted in `QueueStats`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProducerEnd {
    Eof,
    Reset,
    BadFrame,
    Shutdown,
    SpoolFailed,
    /// The spool refused a batch for this producer alone (e.g. too large).
    Refused,
    /// Nothing was received for `read_idle_timeout`.
    ReadIdle,
    /// Keepalive or `TCP_USER_TIMEOUT` declared the producer gone (ETIMEDOUT).
    PeerTimeout,
    /// The connection reached `max_lifetime`.
    MaxLifetime,
    /// It held a partial message and sent less than `min_rate` x
    /// `min_rate_grace` bytes in a period of `min_rate_grace` (a slowloris
    /// that trickles a byte now and then, or sent most of a message and
    /// stopped).
    SlowProducer,
    /// Ack protocol: the producer broke the protocol (`ERR` sent).
    ProtocolError,
}

impl ProducerEnd {
    /// Every variant, in declaration order (the index of the counters).
    pub const ALL: [ProducerEnd; 11] = [
        ProducerEnd::Eof,
        ProducerEnd::Reset,
        ProducerEnd::BadFrame,
        ProducerEnd::Shutdown,
        ProducerEnd::SpoolFailed,
        ProducerEnd::Refused,
        ProducerEnd::ReadIdle,
        ProducerEnd::PeerTimeout,
        ProducerEnd::MaxLifetime,
        ProducerEnd::SlowProducer,
        ProducerEnd::ProtocolError,
    ];

    /// Position in [`ProducerEnd::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ProducerEnd::Eof => "eof",
            ProducerEnd::Reset => "reset",
            ProducerEnd::BadFrame => "bad_frame",
            ProducerEnd::Shutdown => "shutdown",
            ProducerEnd::SpoolFailed => "spool_failed",
            ProducerEnd::Refused => "refused",
            ProducerEnd::ReadIdle => "read_idle",
            ProducerEnd::PeerTimeout => "peer_timeout",
            ProducerEnd::MaxLifetime => "max_lifetime",
            ProducerEnd::SlowProducer => "slow_producer",
            ProducerEnd::ProtocolError => "protocol_error",
        }
    }
}

/// What one ingest did: messages queued, and messages refused at the disk
/// bound (`when_full = drop-newest`).
#[derive(Default)]
struct Tally {
    appended: u64,
    dropped: u64,
    /// The producer's bytes queued, as `/status` shows it.
    peer_bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

enum IngestError {
    Frame(FrameError),
    Spool(SpoolError),
}

/// What a producer's connection has decoded and queued so far.
struct Intake<'a> {
    decoder: Decoder,
    /// Messages queued, and refused at the disk bound (drop-newest).
    tally: Tally,
    /// The last batch handed to the spool, until its answer is in.
    in_flight: Option<InFlight<'a>>,
}

/// A batch handed to the spool whose answer is not in yet: how many
/// messages and bytes it holds, and the answer to come.
struct InFlight<'a> {
    msgs: usize,
    bytes: usize,
    answer: Pin<Box<dyn Future<Output = Result<AppendOutcome, SpoolError>> + Send + 'a>>,
}

impl QueueServer {
    pub(super) async fn produce(
        &self,
        mut stream: MaybeTls,
        peer_bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) -> ProducerEnd {
        self.stats.producers.fetch_add(1, Ordering::Relaxed);
        self.stats.producers_total.fetch_add(1, Ordering::Relaxed);
        let max = usize::try_from(self.route().max_message).unwrap_or(usize::MAX);
        let mut intake = Intake {
            decoder: Decoder::new(self.route().framing, max),
            tally: Tally {
                peer_bytes,
                ..Tally::default()
            },
            in_flight: None,
        };
        // Peer memory: the buffer is charged to the process-wide budget;
        // it grows past the minimum only while the budget allows.
        let memory = std::sync::Arc::clone(&self.memory);
        let mut charge = memory.charge();
        // Since when this producer holds the lane past the budget (it must
        // finish its message within one `min_rate_grace`).
        let mut lane_since: Option<Instant> = None;
        let mut chunk = FIRST_READ;
        let mut buf = BytesMut::new();
        let mut partial: Option<Partial> = None;
        let mut last_n = 0usize;
        let read_idle = self.route().read_idle_timeout;
        let lifetime_end = self
            .route()
            .timeouts
            .max_lifetime
            .map(|d| Instant::now() + d);
        let mut last_read = Instant::now();
        // Once we end the connection (shutdown, idle, lifetime): the reason,
        // and how much of what the kernel already accepted is still read.
        let mut ending: Option<(ProducerEnd, usize)> = None;
        // Whether the producer ended its side (its FIN was read).
        let mut producer_eof = false;
        let end = loop {
            if let Some((end, left)) = ending.as_mut() {
                // Keep what the kernel already accepted from this producer,
                // a chunk at a time (each decoded and queued before the
                // next), without waiting, and no more than its receive
                // buffer held: a producer that keeps sending cannot keep
                // the drain reading.
                let (mut n, mut eof) =
                    drain_ready_eof(&mut stream, &mut buf, (*left).min(READ_CHUNK)).await;
                if n == 0 && !eof && *left > 0 {
                    // Segments may still be on their way up to the window
                    // we had offered (it can only close, see below).
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    (n, eof) =
                        drain_ready_eof(&mut stream, &mut buf, (*left).min(READ_CHUNK)).await;
                }
                producer_eof |= eof;
                // Bounded by FINAL_READ: charged as it is, not asked for.
                charge.set(charge.held().max(buf.capacity() as u64));
                *left -= n.min(*left);
                let (at_end, end) = (n == 0 || *left == 0, *end);
                if let Some(done) = self.after_read(&mut intake, &mut buf, at_end, end).await {
                    break done;
                }
                continue;
            }
            // Room for the next read, within the peer memory budget. Refused
            // more with no room left, this producer is not read (TCP pushes
            // back) until memory is freed; its slow_producer clock runs on.
            let mut paused = None;
            if buf.capacity() - buf.len() < chunk / 4 && !grow(&mut buf, &mut charge, &mut chunk) {
                let waiter = memory.waiter();
                if !grow(&mut buf, &mut charge, &mut chunk) && buf.capacity() == buf.len() {
                    paused = Some(waiter);
                }
            }
            lane_since = match (charge.in_lane(), lane_since) {
                (false, _) => None,
                (true, None) => Some(Instant::now()),
                (true, since) => since,
            };
            // A paused producer holds a partial message of more than the
            // minimum and is not progressing: its clock runs (that is what
            // frees a budget that partial messages hold), but not its idle
            // timer.
            let idle_end = read_idle
                .filter(|_| paused.is_none())
                .map(|d| last_read + d);
            let lane_end = lane_since.and_then(|t| t.checked_add(self.route().min_rate_grace));
            let slow_end = match (partial.and_then(|p| self.slow_deadline(p)), lane_end) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let spare = buf.capacity() - buf.len();
            let read = tokio::select! {
                biased;
                _ = self.stop.cancelled() => Err(ProducerEnd::Shutdown),
                _ = sleep_until(lifetime_end.unwrap_or(last_read)), if lifetime_end.is_some() => {
                    Err(ProducerEnd::MaxLifetime)
                }
                _ = sleep_until(slow_end.unwrap_or(last_read)), if slow_end.is_some() => {
                    // A period is over: enough bytes start the next one. The
                    // lane is held for one period at most.
                    let overstay = lane_end.is_some_and(|t| Instant::now() >= t);
                    match partial {
                        Some(_) if overstay => Err(ProducerEnd::SlowProducer),
                        Some(p) if self.fast_enough(p) => {
                            partial = Some(Partial { since: Instant::now(), received: 0 });
                            continue;
                        }
                        Some(_) => Err(ProducerEnd::SlowProducer),
                        None => {
                            // No partial message (the buffer is empty): a
                            // lane holder gives its buffer back.
                            if overstay && buf.is_empty() {
                                buf = BytesMut::with_capacity(FIRST_READ);
                                charge.set(FIRST_READ as u64);
                            }
                            charge.leave_lane();
                            continue;
                        }
                    }
                }
                _ = sleep_until(idle_end.unwrap_or(last_read)), if idle_end.is_some() => {
                    Err(ProducerEnd::ReadIdle)
                }
                _ = async { paused.take().expect("armed only when paused").wait().await },
                    if paused.is_some() => continue,
                // The batch in flight was answered while the producer sent
                // nothing: its messages are counted now, not at the next read.
                r = async {
                    match intake.in_flight.as_mut() {
                        Some(f) => f.answer.as_mut().await,
                        None => std::future::pending().await,
                    }
                }, if intake.in_flight.is_some() => {
                    let settled = match intake.in_flight.take() {
                        Some(f) => self.appended(f.msgs, f.bytes, r, &mut intake.tally),
                        None => Ok(()),
                    };
                    match settled {
                        Ok(()) => continue,
                        Err(e) => break self.refused(&e, intake.tally.appended),
                    }
                }
                r = stream.read_buf(&mut buf), if paused.is_none() => Ok(r),
            };
            let (at_end, end) = match read {
                // Stopped by us: read what the kernel holds, then stop. A
                // tiny receive buffer first: TCP never takes back a window
                // it offered, but as we read, it offers no more, so a
                // producer that keeps sending stops at what it was allowed,
                // and the drain reads everything TCP acknowledged to it
                // (instead of a reset throwing away what arrived during the
                // last append).
                Err(end) => {
                    let _ = socket2::SockRef::from(stream.tcp()).set_recv_buffer_size(1);
                    ending = Some((end, FINAL_READ));
                    continue;
                }
                Ok(Ok(0)) => (true, ProducerEnd::Eof),
                Ok(Ok(n)) => {
                    last_n = n;
                    // Reads that fill the buffer ask for more next time.
                    if n >= spare {
                        chunk = (chunk * 2).min(READ_CHUNK);
                    }
                    partial = partial.map(|p| Partial {
                        received: p.received + n as u64,
                        ..p
                    });
                    (false, ProducerEnd::Eof)
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => {
                    let end = if e.kind() == io::ErrorKind::TimedOut {
                        ProducerEnd::PeerTimeout
                    } else {
                        ProducerEnd::Reset
                    };
                    warn!(error = %e, "producer read failed");
                    (true, end)
                }
            };
            let queueing = Instant::now();
            if let Some(done) = self.after_read(&mut intake, &mut buf, at_end, end).await {
                break done;
            }
            // Time spent queueing (a blocked append) is not the producer's
            // idleness, nor slowness.
            last_read = Instant::now();
            partial = match partial {
                _ if buf.is_empty() => None,
                None => Some(Partial {
                    since: last_read,
                    received: buf.len() as u64,
                }),
                Some(p) => Some(Partial {
                    since: p.since + (last_read - queueing),
                    ..p
                }),
            };
            // A producer that grew past the budget for a message now
            // complete, or one that trickles (small reads) while memory is
            // wanted, gives its large buffer back. (A fast producer keeps
            // its buffer: allocating one per read costs more than it saves.)
            let wanted = memory.used() > memory.limit() / 2;
            if (charge.in_lane() || (wanted && last_n < FIRST_READ / 4))
                && buf.len() <= FIRST_READ / 2
                && charge.held() > FIRST_READ as u64
            {
                let mut small = BytesMut::with_capacity(FIRST_READ);
                small.extend_from_slice(&buf);
                buf = small;
                chunk = FIRST_READ;
                charge.set(buf.capacity() as u64);
            }
        };
        let refused = matches!(end, ProducerEnd::Refused | ProducerEnd::SpoolFailed);
        if refused && (ending.is_some() || self.stop.is_cancelled()) {
            let left = ending.map_or(FINAL_READ, |(_, left)| left);
            let _ = socket2::SockRef::from(stream.tcp()).set_recv_buffer_size(1);
            // Ending while the spool refuses: what the kernel still holds
            // (TCP acknowledged it) is lost with this connection. Count it
            // exactly, so the log and the metric say how much.
            let lost = count_unread(&mut stream, &mut intake.decoder, &mut buf, left).await;
            if lost > 0 {
                error!(
                    lost,
                    "messages the producer's socket still held could not be queued and are lost"
                );
                self.stats.lost_unqueued.fetch_add(lost, Ordering::Relaxed);
            }
        }
        // Ended by us in the middle of its stream (shutdown, idle,
        // lifetime) while it may still be sending: a reset tells it so. A
        // FIN would let it finish its writes and read a clean EOF, as if
        // everything it sent had been taken.
        let cut_mid_stream = ending.is_some() && !producer_eof;
        if cut_mid_stream
            || matches!(
                end,
                ProducerEnd::Refused | ProducerEnd::SpoolFailed | ProducerEnd::BadFrame
            )
        {
            // Bytes this producer sent were not (all) queued: a reset tells
            // it so, where a clean close would read as "all taken".
            let _ =
                socket2::SockRef::from(stream.tcp()).set_linger(Some(std::time::Duration::ZERO));
        }
        drop(stream);
        self.stats.producers.fetch_sub(1, Ordering::Relaxed);
        self.stats.count_producer_end(end);
        let Tally {
            appended: messages,
            dropped,
            ..
        } = intake.tally;
        info!(messages, dropped, reason = end.as_str(), "producer closed");
        end
    }

    /// Queues the complete messages a read brought; returns how the
    /// connection ends if it does (a bad frame, a spool error, or
    /// `at_end`, which checks for a partial message left over, once the
    /// batch in flight is answered).
    async fn after_read<'a>(
        &'a self,
        intake: &mut Intake<'a>,
        buf: &mut BytesMut,
        at_end: bool,
        end: ProducerEnd,
    ) -> Option<ProducerEnd> {
        let mut result = self
            .ingest(
                &mut intake.decoder,
                buf,
                &mut intake.in_flight,
                &mut intake.tally,
            )
            .await;
        if at_end && result.is_ok() {
            // The connection's end is logged with every batch answered.
            result = self
                .settle(&mut intake.in_flight, &mut intake.tally)
                .await
                .map_err(IngestError::Spool);
        }
        let messages = intake.tally.appended;
        let decoder = &mut intake.decoder;
        match result {
            Ok(()) => {}
            Err(IngestError::Frame(e)) => {
                self.stats.count_frame_error(e.kind());
                warn!(offset = e.offset().unwrap_or(decoder.offset()),
                      kind = ?e.kind(), error = %e, kept = messages,
                      "bad frame; closing this producer (every message before it was kept)");
                return Some(ProducerEnd::BadFrame);
            }
            Err(IngestError::Spool(e)) => return Some(self.refused(&e, messages)),
        }
        if !at_end {
            return None;
        }
        if let Err(e) = decoder.finish(buf) {
            self.stats.partial_at_eof.fetch_add(1, Ordering::Relaxed);
            warn!(offset = decoder.offset(),
                  partial_bytes = buf.len(), error = %e,
                  "producer ended inside a message; the partial message is not queued");
        }
        Some(end)
    }

    /// How a producer ends when the spool refused its messages: a fatal
    /// error stops the route; otherwise this producer alone is closed.
    fn refused(&self, e: &SpoolError, messages: u64) -> ProducerEnd {
        if e.is_fatal() {
            self.fail("append", e);
            return ProducerEnd::SpoolFailed;
        }
        warn!(error = %e, kept = messages,
              "cannot queue this producer's messages; closing it");
        ProducerEnd::Refused
    }

    /// Hands every complete message in `buf` to the spool, as batches, and
    /// drops them from `buf`. The last batch stays in flight (answered by
    /// the next call, [`QueueServer::settle`], or the producer loop); each
    /// batch is offered once the one before it is answered. On a bad frame,
    /// the messages before it are queued first, then the error is returned.
    async fn ingest<'a>(
        &'a self,
        decoder: &mut Decoder,
        buf: &mut BytesMut,
        in_flight: &mut Option<InFlight<'a>>,
        tally: &mut Tally,
    ) -> Result<(), IngestError> {
        let mut slices: Vec<&[u8]> = Vec::new();
        let mut consumed = 0usize;
        let mut bad = None;
        loop {
            match decoder.decode(&buf[consumed..]) {
                Decoded::Frame(len) => {
                    slices.push(&buf[consumed..consumed + len]);
                    consumed += len;
                }
                Decoded::NeedMore => break,
                Decoded::Invalid(e) => {
                    bad = Some(e);
                    break;
                }
            }
        }
        let batch_limit = self.batch_limit();
        let mut rest: &[&[u8]] = &slices;
        let mut failed = None;
        while !rest.is_empty() {
            // The longest prefix within the batch limit (at least one message).
            let mut take = 0;
            let mut bytes = 0usize;
            while take < rest.len() && (take == 0 || bytes + rest[take].len() <= batch_limit) {
                bytes += rest[take].len();
                take += 1;
            }
            let (batch, tail) = rest.split_at(take);
            // Nothing in flight (the usual case while the memory tier
            // takes everything): into the memory tier as it is, if it
            // takes the batch at once, with no encoding at all.
            if in_flight.is_none() {
                if let Some(outcome) = self.spool.try_append_memory_copy(batch) {
                    rest = tail;
                    self.queued(bytes, &outcome, tally);
                    continue;
                }
            }
            // Encoded and checksummed once, however often it is offered,
            // while the batch before it is being written.
            let encoded = self.spool.encode(batch);
            // Batches go in order: the one in flight is answered first.
            let offered = match self.settle(in_flight, tally).await {
                Ok(()) => encoded,
                Err(e) => Err(e),
            };
            match offered {
                Ok(mut encoded) => {
                    rest = tail;
                    // Into the memory tier here when it takes the batch at
                    // once (no I/O, no wait): no round trip through the
                    // spool's writer thread, two thread wake-ups fewer.
                    if let Some(outcome) = self.spool.try_append_memory(&mut encoded) {
                        self.queued(bytes, &outcome, tally);
                        continue;
                    }
                    *in_flight = Some(InFlight {
                        msgs: batch.len(),
                        bytes,
                        answer: Box::pin(self.append_waiting(encoded, false, None)),
                    });
                }
                Err(e) => {
                    // The messages of this read not handed to the spool
                    // are lost; their bytes were acknowledged by TCP, so
                    // say exactly how many.
                    self.lost(rest.len(), &e);
                    failed = Some(e);
                    break;
                }
            }
        }
        buf.advance(consumed);
        if let Some(e) = failed {
            return Err(IngestError::Spool(e));
        }
        if let Some(e) = bad {
            // Everything before the bad frame is queued before it is said.
            self.settle(in_flight, tally)
                .await
                .map_err(IngestError::Spool)?;
            return Err(IngestError::Frame(e));
        }
        Ok(())
    }

    /// Waits for the answer to the batch in flight, if any, and counts it.
    async fn settle(
        &self,
        in_flight: &mut Option<InFlight<'_>>,
        tally: &mut Tally,
    ) -> Result<(), SpoolError> {
        let Some(f) = in_flight.take() else {
            return Ok(());
        };
        let r = f.answer.await;
        self.appended(f.msgs, f.bytes, r, tally)
    }

    /// Counts the answer to a batch of `msgs` messages and `bytes` bytes:
    /// queued (some maybe dropped by policy), or lost with the error.
    fn appended(
        &self,
        msgs: usize,
        bytes: usize,
        r: Result<AppendOutcome, SpoolError>,
        tally: &mut Tally,
    ) -> Result<(), SpoolError> {
        match r {
            Ok(outcome) => {
                self.queued(bytes, &outcome, tally);
                Ok(())
            }
            Err(e) => {
                self.lost(msgs, &e);
                Err(e)
            }
        }
    }

    /// Counts a batch of `bytes` bytes the spool took (some of it maybe
    /// dropped by policy).
    fn queued(&self, bytes: usize, outcome: &AppendOutcome, tally: &mut Tally) {
        if outcome.dropped_newest > 0 {
            self.stats
                .dropped_newest
                .fetch_add(outcome.dropped_newest as u64, Ordering::Relaxed);
            let mut warn_limit = self
                .blocked_warning
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(suppressed) = warn_limit.check() {
                warn!(
                    dropped = outcome.dropped_newest,
                    suppressed, "disk tier full: new messages dropped (when_full = drop-newest)"
                );
            }
        }
        tally.appended += outcome.accepted as u64;
        tally.dropped += outcome.dropped_newest as u64;
        self.stats.count_queued(outcome, bytes as u64);
        tally.peer_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// `n` messages read from a producer (TCP acknowledged them) could not
    /// be queued: logged and counted exactly.
    pub(super) fn lost(&self, n: usize, e: &SpoolError) {
        if n == 0 {
            return;
        }
        error!(lost = n, error = %e,
               "messages read from a producer could not be queued and are lost");
        self.stats
            .lost_unqueued
            .fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl QueueServer {
    /// When the current `min_rate` period of a producer holding a partial
    /// message ends (`None`: the check is off).
    pub(super) fn slow_deadline(&self, p: Partial) -> Option<Instant> {
        let route = self.route();
        if route.min_rate == 0 {
            return None;
        }
        p.since.checked_add(route.min_rate_grace)
    }

    /// Whether a period brought at least `min_rate` bytes per second.
    pub(super) fn fast_enough(&self, p: Partial) -> bool {
        let route = self.route();
        let want = u128::from(route.min_rate) * route.min_rate_grace.as_millis() / 1000;
        u128::from(p.received) >= want
    }

    /// Largest append batch: one read's messages are split so that a batch
    /// always fits the disk bound (a record is never split across segments).
    fn batch_limit(&self) -> usize {
        let max_disk = self.route().max_disk;
        if max_disk == 0 {
            return usize::MAX;
        }
        let limit = (max_disk / 8).max(self.route().max_message);
        usize::try_from(limit).unwrap_or(usize::MAX)
    }
}

/// Gives `buf` room for a read of `chunk` bytes in a new allocation of
/// exactly the size charged to the peer memory budget (geometric, so a
/// large partial message is copied O(1) times per byte); false, and
/// nothing changed, when the budget refuses it. (`BytesMut::reserve` may
/// allocate more than asked, which the budget would not see.)
fn grow(buf: &mut BytesMut, charge: &mut Charge, chunk_size: &mut usize) -> bool {
    let chunk = *chunk_size;
    let len = buf.len();
    if len <= chunk && charge.held() >= (len + chunk) as u64 {
        // The allocation already charged has room once what it holds moves
        // to its front (`reserve` does that in place when the consumed
        // prefix is at least as long as the rest): no new allocation.
        buf.reserve(chunk);
        charge.set(charge.held().max(buf.capacity() as u64));
        return true;
    }
    let cap = (len + chunk).max(len.saturating_mul(2));
    let min = MIN_HOLD as usize;
    let cap = if charge.try_set(cap as u64) {
        cap
    } else if len < min {
        // Refused: what every connection may hold is still there (small
        // messages keep flowing at the minimum read size).
        *chunk_size = FIRST_READ;
        if buf.capacity() >= min {
            return true;
        }
        charge.set(min as u64);
        min
    } else if charge.try_set_or_lane(cap as u64) {
        // A partial message past the minimum: one producer at a time.
        cap
    } else {
        return false;
    };
    let mut fresh = BytesMut::with_capacity(cap);
    fresh.extend_from_slice(buf);
    *buf = fresh;
    true
}

/// Reads (without waiting, at most `limit` bytes) what the kernel still
/// holds for a producer whose messages can no longer be queued, and counts
/// the complete messages in it (with those already in `buf`).
async fn count_unread(
    stream: &mut MaybeTls,
    decoder: &mut Decoder,
    buf: &mut BytesMut,
    mut limit: usize,
) -> u64 {
    let mut count = 0u64;
    loop {
        while let Decoded::Frame(len) = decoder.decode(buf) {
            count += 1;
            buf.advance(len);
        }
        if limit == 0 {
            return count;
        }
        let n = drain_ready(stream, buf, limit.min(READ_CHUNK)).await;
        if n == 0 {
            return count;
        }
        limit -= n.min(limit);
    }
}

/// Most bytes read from a producer after we decided to end its
/// connection: what its socket's receive buffer can hold (the kernel
/// doubles `SO_RCVBUF`), so what TCP acknowledged before the end is kept,
/// and a producer that keeps sending cannot keep the drain reading.
const FINAL_READ: usize = 2 * super::PRODUCER_RCVBUF;

/// Reads, without waiting, up to `limit` bytes the kernel already holds
/// for this socket (bytes its TCP stack acknowledged to the producer);
/// returns how many (0: nothing more, or EOF).
async fn drain_ready(stream: &mut MaybeTls, buf: &mut BytesMut, limit: usize) -> usize {
    drain_ready_eof(stream, buf, limit).await.0
}

/// [`drain_ready`], and whether the producer's EOF was seen (over TLS,
/// not told apart from "nothing more now").
async fn drain_ready_eof(stream: &mut MaybeTls, buf: &mut BytesMut, limit: usize) -> (usize, bool) {
    let before = buf.len();
    let mut eof = false;
    match stream {
        MaybeTls::Plain(tcp) => {
            let mut chunk = vec![0u8; limit.min(64 << 10)];
            while buf.len() - before < limit {
                let want = (limit - (buf.len() - before)).min(chunk.len());
                match tcp.try_read(&mut chunk[..want]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(_) => break,
                }
            }
        }
        // Through TLS: read while a read completes at once (records already
        // received decrypt without waiting); stop at the first that would wait.
        MaybeTls::Tls(_) => {
            while buf.len() - before < limit {
                if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                    buf.reserve(READ_CHUNK);
                }
                let more = tokio::select! {
                    biased;
                    r = stream.read_buf(buf) => matches!(r, Ok(n) if n > 0),
                    _ = std::future::ready(()) => false,
                };
                if !more {
                    break;
                }
            }
        }
    }
    (buf.len() - before, eof)
}
