//! Write-behind: the local spool's messages, published to the stream in
//! order, in batches. The publisher is the outbox dispatcher's only
//! consumer: it takes messages as a plain consumer does and acknowledges
//! them (so the spool deletes them) only once the cluster acknowledged
//! their batch (a PubAck: stored on a quorum, fsynced under the servers'
//! `sync_interval: always`).
//!
//! Up to `max_inflight` batches are published at once, and their PubAcks
//! are taken in order. When one fails (a timeout, a lost connection, a
//! leader election, a full stream), no new batch is started: every batch
//! in flight is awaited, and the ones not acknowledged are published
//! again, one at a time and in order, byte for byte with the same message
//! id, until each is, with backoff. The stream stores a batch once within
//! its duplicate window. For 10 s after a failure, batches go one at a
//! time. A batch that failed while a later one already in flight was
//! stored lands after it; the reading relay then delivers it behind the
//! later one, and counts it (`spillway_jetstream_reordered_batches_total`).

use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::batch::{BatchId, Builder, HDR_COUNT, HDR_FIRST, HDR_SPOOL};
use super::JsStats;
use crate::queue::dispatch::ConsumerId;
use crate::queue::dispatcher::Dispatcher;

/// Most messages in one batch (besides its byte bound).
const BATCH_MSGS: usize = 16_384;

/// How long after a failed publish batches go one at a time.
const CAREFUL: Duration = Duration::from_secs(10);

/// The batch being filled (see [`Publisher::take`]).
#[derive(Default)]
struct Open {
    b: Builder,
    first: u64,
    next: u64,
}

type AckFuture = Pin<Box<dyn Future<Output = Result<PublishAck, PublishError>> + Send>>;

/// One batch, from its publish to its PubAck.
struct Flight {
    id: BatchId,
    payload: Bytes,
    /// Where the batch ends in the publisher's stream of taken bytes.
    end: u64,
    ack: Option<AckFuture>,
}

pub(crate) struct Publisher<'a> {
    pub js: async_nats::jetstream::Context,
    pub route: &'a str,
    pub subject: &'a str,
    pub spool_id: u64,
    pub batch_bytes: usize,
    pub max_inflight: usize,
    pub outbox: &'a Dispatcher,
    pub stats: &'a JsStats,
}

impl Publisher<'_> {
    /// Publishes until `stop`; what is taken and not acknowledged goes
    /// back to the outbox then (published again after a restart).
    pub async fn run(self, stop: CancellationToken) {
        let me = self.outbox.join();
        let mut flights: VecDeque<Flight> = VecDeque::new();
        let mut taken = 0u64;
        // The batch being filled: published once full, or as it is when
        // nothing else is in flight (so a quiet route sends at once, and
        // a busy one sends full batches).
        let mut open = Open::default();
        let mut retry = Duration::ZERO;
        // Until when batches are published one at a time: after a failed
        // publish (a full stream, an election), a later batch in flight
        // can be stored before the failed one is published again, and
        // its readers would deliver it first. One in flight cannot.
        let mut careful_until: Option<tokio::time::Instant> = None;
        loop {
            let inflight = match careful_until {
                Some(t) if tokio::time::Instant::now() < t => 1,
                _ => self.max_inflight,
            };
            // Wait for messages only when there is room and nothing to await.
            let notified = self.outbox.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let resyncing = flights.iter().any(|f| f.ack.is_none());
            if !resyncing {
                while flights.len() < inflight {
                    let batches = self.take(
                        me,
                        &mut taken,
                        inflight - flights.len(),
                        &mut open,
                        flights.is_empty(),
                    );
                    if batches.is_empty() {
                        break;
                    }
                    for f in batches {
                        flights.push_back(self.publish(f).await);
                    }
                }
            }
            let Some(front) = flights.front_mut() else {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = &mut notified => continue,
                }
            };
            let Some(ack) = front.ack.as_mut() else {
                // Failed earlier: every later batch has been awaited
                // (they are all failed or done). Publish the failed ones
                // again in order after a pause, one at a time: with two in
                // flight, the second could be stored while the first
                // fails again.
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(retry) => {}
                }
                let again = Flight {
                    id: front.id,
                    payload: front.payload.clone(),
                    end: front.end,
                    ack: None,
                };
                *front = self.publish(again).await;
                continue;
            };
            let r = tokio::select! {
                () = stop.cancelled() => break,
                r = ack => r,
            };
            match r {
                Ok(pa) => {
                    let f = flights.pop_front().expect("front");
                    retry = Duration::ZERO;
                    if pa.duplicate {
                        self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                    self.stats.batches_out.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .messages_out
                        .fetch_add(u64::from(f.id.count), Ordering::Relaxed);
                    self.outbox.acked(me, f.end, |_| {});
                }
                Err(e) => {
                    let f = flights.front_mut().expect("front");
                    debug!(error = %e, first = f.id.first, count = f.id.count, "batch not acknowledged; publishing it again");
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    f.ack = None;
                    careful_until = Some(tokio::time::Instant::now() + CAREFUL);
                    retry = (retry * 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
                    // Await every later batch: what was stored is
                    // acknowledged in order once the failed ones are.
                    let mut i = 1;
                    while i < flights.len() {
                        if let Some(ack) = flights[i].ack.as_mut() {
                            let r = tokio::select! {
                                () = stop.cancelled() => {
                                    self.outbox.leave(me, false);
                                    return;
                                }
                                r = ack => r,
                            };
                            match r {
                                Ok(_) => flights[i].ack = Some(Box::pin(std::future::ready(r))),
                                Err(_) => flights[i].ack = None,
                            }
                        }
                        i += 1;
                    }
                    if flights.iter().filter(|f| f.ack.is_none()).count() > 1 {
                        warn!(
                            batches = flights.len(),
                            "the cluster did not acknowledge published batches; publishing them again in order"
                        );
                    }
                }
            }
        }
        self.outbox.leave(me, false);
    }

    /// Takes what the outbox has into full batches of consecutive seqs
    /// (their messages and length prefixes up to `batch_bytes`), at most
    /// about `max` of them (one more when the last take overflowed). What
    /// does not fill a batch stays in `open` for the next call, unless
    /// `idle` (nothing in flight): then it goes as it is. Takes are
    /// repeated with the room left in the open batch, so a batch is not
    /// cut where one take ended (that made twice as many JetStream
    /// messages, each an fsync on every replica; `bench/jetstream.sh`).
    fn take(
        &self,
        me: ConsumerId,
        taken: &mut u64,
        max: usize,
        open: &mut Open,
        idle: bool,
    ) -> Vec<Flight> {
        let mut out: Vec<Flight> = Vec::new();
        let spool = self.spool_id;
        let finish = |o: &mut Open, end: u64, out: &mut Vec<Flight>| {
            if o.b.is_empty() {
                return;
            }
            let (payload, count) = o.b.take();
            out.push(Flight {
                id: BatchId {
                    spool,
                    first: o.first,
                    count,
                },
                payload,
                end,
                ack: None,
            });
        };
        while out.len() < max {
            // What fits in the batch being filled (one message always
            // goes: a message larger than a batch travels alone).
            let room = self.batch_bytes.saturating_sub(open.b.len()).max(1);
            let n = self.outbox.take(me, BATCH_MSGS, room, |m| {
                // A gap (drop-oldest deleted messages) or a full batch
                // ends the batch.
                if !open.b.is_empty()
                    && (m.seq != open.next
                        || open.b.len() + Builder::cost(&m.data) > self.batch_bytes)
                {
                    finish(open, *taken, &mut out);
                }
                if open.b.is_empty() {
                    open.first = m.seq;
                }
                open.b.push(&m.data);
                open.next = m.seq + 1;
                *taken += m.data.len() as u64;
            });
            if n == 0 {
                break;
            }
        }
        if idle && out.is_empty() {
            finish(open, *taken, &mut out);
        }
        out
    }

    /// Publishes `f` (again); a publish that cannot even be queued is a
    /// failed flight, retried like a failed PubAck.
    async fn publish(&self, mut f: Flight) -> Flight {
        let msg = PublishMessage::build()
            .payload(f.payload.clone())
            .message_id(f.id.msg_id(self.route))
            .header(HDR_SPOOL, format!("{:016x}", f.id.spool).as_str())
            .header(HDR_FIRST, f.id.first.to_string().as_str())
            .header(HDR_COUNT, f.id.count.to_string().as_str());
        f.ack = match self.js.send_publish(self.subject.to_string(), msg).await {
            Ok(fut) => Some(fut.into_future()),
            Err(e) => Some(Box::pin(std::future::ready(Err(e)))),
        };
        f
    }
}
