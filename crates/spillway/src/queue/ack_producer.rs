//! A producer that speaks the ack protocol (`from_protocol = "ack"`; the
//! wire is in `docs/protocol.md`): PUB frames in, CONF (and DUP) out.
//!
//! Each read's PUB frames become one batch, stored in the route's framing
//! (a plain consumer of the same route receives exactly what a plain
//! producer would have sent). With confirms on, the batch is appended and
//! made durable as `fsync` says (an fsync now, shared with every batch
//! waiting for one, under an interval too), then `CONF n` tells the
//! producer that its first `n` messages on this connection are safe. A
//! route with confirming producers keeps no memory tier (`memory = 0`): a
//! confirm means on disk.
//!
//! A named producer numbers its PUBs (`pseq`, increasing). One whose pseq
//! is at or below the highest that name had enqueued is answered `DUP`
//! and not enqueued again (see `producers.rs` for how long names are
//! remembered, and across restarts). One connection per name at a time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use spillway_codec::proto::{self, Encoding, Frame, FrameDecoder, Hello, ProtoError, Welcome};
use spillway_codec::Framing;
use spillway_net::tls::MaybeTls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{sleep_until, Instant};
use tracing::{debug, info, warn};

use super::source::{Partial, ProducerEnd};
use super::spool_io::Written;
use super::QueueServer;
use spillway_spool::AppendOutcome;

use super::HANDSHAKE_TIMEOUT;
/// Most bytes read per round.
const READ_CHUNK: usize = 256 << 10;

/// How a producer connection's loop ended.
enum Stop {
    End(ProducerEnd),
    Error(ProtoError),
}

impl From<ProducerEnd> for Stop {
    fn from(e: ProducerEnd) -> Self {
        Stop::End(e)
    }
}

fn broken(e: &std::io::Error) -> ProducerEnd {
    if e.kind() == std::io::ErrorKind::TimedOut {
        ProducerEnd::PeerTimeout
    } else {
        ProducerEnd::Reset
    }
}

/// One connection's state.
struct Conn {
    encoding: Encoding,
    confirms: bool,
    name: Option<String>,
    /// Highest pseq this name had enqueued (named producers).
    enqueued_pseq: u64,
    /// Last pseq seen on this connection (they must increase).
    last_pseq: u64,
    /// PUBs answered so far (enqueued or DUP): what CONF counts.
    answered: u64,
    messages: u64,
    dups: u64,
    peer_bytes: Arc<AtomicU64>,
}

/// The stored form of `body` in `framing`, or why it cannot be.
fn frame_body(
    framing: Framing,
    body: &[u8],
    max: u64,
    out: &mut Vec<u8>,
) -> Result<(), ProtoError> {
    let start = out.len();
    spillway_codec::encode(framing, body, out).map_err(|e| {
        ProtoError::new(
            400,
            format!("this message cannot be stored as {framing}: {e}"),
        )
    })?;
    let stored = (out.len() - start) as u64;
    if stored > max {
        out.truncate(start);
        return Err(ProtoError::new(
            413,
            format!("a message of {stored} bytes (framing included) is over max_message ({max})"),
        ));
    }
    Ok(())
}

impl QueueServer {
    /// Serves one ack-protocol producer until it ends.
    pub(super) async fn produce_acking(
        &self,
        mut stream: MaybeTls,
        peer_bytes: Arc<AtomicU64>,
    ) -> ProducerEnd {
        self.stats.producers.fetch_add(1, Ordering::Relaxed);
        self.stats.producers_total.fetch_add(1, Ordering::Relaxed);
        let mut buf = BytesMut::new();
        let end = match self.producer_hello(&mut stream, &mut buf).await {
            Err(Stop::End(e)) => e,
            Err(Stop::Error(e)) => {
                info!(code = e.code, error = %e.message, "producer handshake refused");
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    stream.write_all(e.to_line().as_bytes()),
                )
                .await;
                let _ = stream.shutdown().await;
                ProducerEnd::ProtocolError
            }
            Ok((hello, enqueued)) => {
                let mut c = Conn {
                    encoding: hello.encoding,
                    confirms: hello.confirms,
                    name: hello.name.clone(),
                    enqueued_pseq: enqueued,
                    last_pseq: 0,
                    answered: 0,
                    messages: 0,
                    dups: 0,
                    peer_bytes,
                };
                let end = self.serve_producer(&mut stream, &mut buf, &mut c).await;
                self.release_name(&mut c);
                info!(
                    messages = c.messages,
                    duplicates = c.dups,
                    confirmed = c.answered,
                    reason = end.as_str(),
                    "producer closed"
                );
                end
            }
        };
        self.stats.producers.fetch_sub(1, Ordering::Relaxed);
        self.stats.count_producer_end(end);
        end
    }

    /// Gives the connection's producer name back (once).
    fn release_name(&self, c: &mut Conn) {
        if let (Some(name), Some(p)) = (c.name.take(), &self.producer_names) {
            p.release(&name);
        }
    }

    /// Reads and checks the hello, answers OK; returns it and, for a
    /// named producer, the highest pseq its name had enqueued.
    async fn producer_hello(
        &self,
        stream: &mut MaybeTls,
        buf: &mut BytesMut,
    ) -> Result<(Hello, u64), Stop> {
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        let n = loop {
            if let Some(n) = proto::hello_line(buf).map_err(Stop::Error)? {
                break n;
            }
            buf.reserve(1024);
            let read = tokio::select! {
                r = stream.read_buf(buf) => r,
                _ = sleep_until(deadline) => {
                    return Err(Stop::Error(ProtoError::handshake_timeout(HANDSHAKE_TIMEOUT)));
                }
                _ = self.stop.cancelled() => return Err(ProducerEnd::Shutdown.into()),
            };
            match read {
                Ok(0) => return Err(ProducerEnd::Eof.into()),
                Ok(_) => {}
                Err(e) => return Err(broken(&e).into()),
            }
        };
        let line = buf.split_to(n);
        let hello = Hello::parse(&line[..n - 1]).map_err(Stop::Error)?;
        if hello.role != proto::Role::Producer {
            return Err(Stop::Error(ProtoError::new(
                403,
                "this endpoint takes producers (role=producer); consumers connect to the route's to endpoint",
            )));
        }
        let mut enqueued = 0;
        if let (Some(name), Some(p)) = (&hello.name, &self.producer_names) {
            enqueued = p.claim(name).map_err(|_| {
                Stop::Error(ProtoError::new(
                    409,
                    format!("producer '{name}' is connected already; retry once that connection is gone"),
                ))
            })?;
        }
        let route = self.route();
        let welcome = Welcome {
            session: format!("p{:x}", self.stats.producers_total.load(Ordering::Relaxed)),
            max_message: route.max_message,
            ack_timeout_ms: route.ack_timeout.as_millis() as u64,
            max_deliveries: route.max_deliveries,
        };
        let mut line = welcome.to_line();
        if hello.name.is_some() {
            // Where a restarted producer of this name resumes numbering
            // (its first pseq must be above this, or it is a DUP).
            line.truncate(line.len() - 1);
            line.push_str(&format!(" last_pseq={enqueued}\n"));
        }
        let sent = stream.write_all(line.as_bytes()).await;
        if let Err(e) = sent {
            if let (Some(name), Some(p)) = (&hello.name, &self.producer_names) {
                p.release(name);
            }
            return Err(broken(&e).into());
        }
        info!(
            name = hello.name.as_deref().unwrap_or(""),
            confirms = hello.confirms,
            encoding = hello.encoding.as_str(),
            last_pseq = enqueued,
            "ack producer connected"
        );
        Ok((hello, enqueued))
    }

    async fn serve_producer(
        &self,
        stream: &mut MaybeTls,
        buf: &mut BytesMut,
        c: &mut Conn,
    ) -> ProducerEnd {
        let route = self.route();
        let max_frame = route.max_message as usize + proto::FRAME_OVERHEAD;
        let mut decoder = FrameDecoder::new(c.encoding, max_frame);
        let read_idle = route.read_idle_timeout;
        let mut last_read = Instant::now();
        let mut out = BytesMut::new();
        let mut charge = self.memory.charge();
        let mut partial: Option<Partial> = None;
        loop {
            // Everything complete in the buffer, as one batch.
            let r = self.take_pubs(&mut decoder, buf, c, &mut out).await;
            if !out.is_empty() {
                let wrote = stream.write_all(&out).await;
                out.clear();
                if let Err(e) = wrote {
                    debug!(error = %e, "producer write failed");
                    return broken(&e);
                }
            }
            match r {
                Ok(()) => {}
                Err(Stop::End(e)) => return e,
                Err(Stop::Error(e)) => {
                    debug!(code = e.code, error = %e.message, "producer protocol error");
                    // The name is free before the client can hear the
                    // error and reconnect (else its reconnect meets 409).
                    self.release_name(c);
                    proto::encode(
                        &Frame::Err {
                            code: e.code,
                            text: e.message.clone(),
                        },
                        c.encoding,
                        &mut out,
                    );
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), stream.write_all(&out)).await;
                    let _ = stream.shutdown().await;
                    return if e.code == 507 {
                        ProducerEnd::Refused
                    } else {
                        ProducerEnd::ProtocolError
                    };
                }
            }
            // The buffer is charged to the peer memory budget: refused,
            // this producer is not read (TCP pushes back) until memory is
            // freed; one that then sends nothing for read_idle_timeout is
            // closed, which frees its partial frame.
            let want = buf.len() + READ_CHUNK.min(max_frame + 1024);
            let admitted = buf.capacity() >= want || charge.try_set_or_lane(want as u64);
            if admitted {
                buf.reserve(want - buf.len());
                charge.set(buf.capacity() as u64);
            }
            let idle_at = read_idle.map_or(last_read, |d| last_read + d);
            // A partial frame must come in at `min_rate` (as a plain
            // producer's partial message must): a slowloris holding its
            // buffer is closed as slow_producer.
            partial = match (partial, buf.is_empty()) {
                (_, true) => None,
                (None, false) => Some(Partial {
                    since: Instant::now(),
                    received: 0,
                }),
                (p, false) => p,
            };
            let slow_at = partial.and_then(|p| self.slow_deadline(p));
            let waiter = self.memory.waiter();
            let read = tokio::select! {
                biased;
                _ = self.stop.cancelled() => {
                    // Draining: what was read is answered above; no more.
                    let _ = stream.shutdown().await;
                    return ProducerEnd::Shutdown;
                }
                _ = sleep_until(idle_at), if read_idle.is_some() => return ProducerEnd::ReadIdle,
                _ = sleep_until(slow_at.unwrap_or(idle_at)), if slow_at.is_some() => {
                    match partial {
                        Some(p) if self.fast_enough(p) => {
                            partial = Some(Partial { since: Instant::now(), received: 0 });
                            continue;
                        }
                        _ => {
                            warn!(partial_bytes = buf.len(), "producer too slow with a partial frame (min_rate); closing it");
                            return ProducerEnd::SlowProducer;
                        }
                    }
                }
                _ = waiter.wait(), if !admitted => continue,
                _ = tokio::time::sleep(Duration::from_millis(50)), if !admitted => continue,
                r = stream.read_buf(buf), if admitted => r,
            };
            match read {
                Ok(0) => {
                    if !buf.is_empty() {
                        self.stats.partial_at_eof.fetch_add(1, Ordering::Relaxed);
                        warn!(
                            partial_bytes = buf.len(),
                            "producer ended inside a frame; it is not queued"
                        );
                    }
                    let _ = stream.shutdown().await;
                    return ProducerEnd::Eof;
                }
                Ok(n) => {
                    last_read = Instant::now();
                    if let Some(p) = partial.as_mut() {
                        p.received += n as u64;
                    }
                }
                Err(e) => return broken(&e),
            }
        }
    }

    /// Decodes the complete PUB frames in `buf`, enqueues them as one
    /// batch, and writes the answers (DUP, CONF) into `out`.
    async fn take_pubs(
        &self,
        decoder: &mut FrameDecoder,
        buf: &mut BytesMut,
        c: &mut Conn,
        out: &mut BytesMut,
    ) -> Result<(), Stop> {
        let route = self.route();
        let mut stored: Vec<u8> = Vec::new();
        let mut ends: Vec<usize> = Vec::new();
        // The pseq of each message of the batch (named producers).
        let mut pseqs: Vec<u64> = Vec::new();
        let mut dups: Vec<u64> = Vec::new();
        let mut bad = None;
        // How many PUBs this round answers: enqueued or DUP, in order.
        let mut count = 0u64;
        loop {
            let frame = match decoder.decode(buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    bad = Some(e);
                    break;
                }
            };
            let Frame::Pub { pseq, body } = frame else {
                bad = Some(ProtoError::new(
                    400,
                    format!("a producer cannot send {}", frame.verb()),
                ));
                break;
            };
            match (pseq, &c.name) {
                (None, Some(_)) => {
                    bad = Some(ProtoError::new(
                        400,
                        "a named producer numbers its messages (PUB <pseq> <len>)",
                    ));
                    break;
                }
                (Some(_), None) => {
                    bad = Some(ProtoError::new(
                        400,
                        "PUB with a pseq from a producer without a name (say name= in the hello)",
                    ));
                    break;
                }
                (Some(p), Some(_)) if p <= c.last_pseq => {
                    bad = Some(ProtoError::new(
                        400,
                        format!(
                            "pseq {p} after {}: a producer's pseqs must increase",
                            c.last_pseq
                        ),
                    ));
                    break;
                }
                (Some(p), Some(_)) if p <= c.enqueued_pseq => {
                    c.last_pseq = p;
                    count += 1;
                    dups.push(p);
                    continue;
                }
                (Some(p), Some(_)) => {
                    c.last_pseq = p;
                    pseqs.push(p);
                }
                (None, None) => {}
            }
            if let Err(e) = frame_body(route.framing, &body, route.max_message, &mut stored) {
                bad = Some(e);
                break;
            }
            ends.push(stored.len());
            count += 1;
            c.peer_bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        }
        if !ends.is_empty() {
            let mut slices = Vec::with_capacity(ends.len());
            let mut start = 0;
            for &end in &ends {
                slices.push(&stored[start..end]);
                start = end;
            }
            let bytes = stored.len();
            let encoded = self.spool.encode(&slices).map_err(|e| {
                Stop::Error(ProtoError::new(
                    400,
                    format!("cannot queue this batch: {e}"),
                ))
            })?;
            // A named producer's pseqs are recorded as soon as the batch
            // is in the log (see producers.rs).
            let written: Option<Written> = match (&c.name, &self.producer_names) {
                (Some(name), Some(p)) if !pseqs.is_empty() => {
                    let (p, name, pseqs) = (Arc::clone(p), name.clone(), pseqs.clone());
                    Some(Arc::new(move |o: &AppendOutcome| {
                        let k = o.accepted.min(pseqs.len());
                        if k == 0 {
                            return;
                        }
                        let last = o.first_seq + k as u64 - 1;
                        if let Err(e) = p.record(&name, pseqs[k - 1], last) {
                            warn!(error = %e, "cannot record a producer's sequence (a resend may be queued twice)");
                        }
                    }))
                }
                _ => None,
            };
            let outcome = match self.append_waiting(encoded, c.confirms, written).await {
                Ok(o) => o,
                Err(e) => {
                    if c.confirms {
                        // Never confirmed: the producer sends them again.
                        warn!(count = ends.len(), error = %e,
                              "cannot queue a confirming producer's messages; not confirmed, it resends them");
                    } else {
                        self.lost(ends.len(), &e);
                    }
                    return Err(if e.is_fatal() {
                        self.fail("append", &e);
                        Stop::End(ProducerEnd::SpoolFailed)
                    } else {
                        Stop::Error(ProtoError::new(503, format!("cannot queue: {e}")))
                    });
                }
            };
            self.stats.count_queued(&outcome, bytes as u64);
            c.messages += outcome.accepted as u64;
            if outcome.dropped_newest > 0 {
                // Refused at the disk bound (drop-newest): a confirming
                // producer must not believe it was kept.
                self.stats
                    .dropped_newest
                    .fetch_add(outcome.dropped_newest as u64, Ordering::Relaxed);
                let kept = count - ends.len() as u64 + outcome.accepted as u64;
                if c.confirms && kept > 0 {
                    c.answered += kept;
                    proto::encode(&Frame::Conf { n: c.answered }, c.encoding, out);
                }
                return Err(Stop::Error(ProtoError::new(
                    507,
                    "full: the queue is at its disk bound (max_disk, or a full file system) and refuses new messages (when_full = drop-newest)",
                )));
            }
            if let Some(&last) = pseqs.last() {
                c.enqueued_pseq = last;
            }
        }
        if count > 0 {
            c.dups += dups.len() as u64;
            if c.confirms {
                for pseq in dups {
                    proto::encode(&Frame::Dup { pseq }, c.encoding, out);
                }
                c.answered += count;
                proto::encode(&Frame::Conf { n: c.answered }, c.encoding, out);
            } else {
                c.answered += count;
            }
        }
        match bad {
            Some(e) => Err(Stop::Error(e)),
            None => Ok(()),
        }
    }
}
