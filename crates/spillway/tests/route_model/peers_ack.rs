//! The ack protocol's peers (`docs/protocol.md`): acking consumers and
//! confirming producers on real sockets, one thread each, speaking the
//! text or the binary encoding through the relay's sans-IO codec
//! (`spillway_codec::proto`, tested on its own against the spec; the
//! hello lines are written by hand). Bodies are the model's messages
//! without framing (`peers::body`), so every MSG is checked byte for byte.
//!
//! **What a consumer does with a message** is decided when it arrives,
//! from the message and the consumer's seeded dice:
//! - a *poison* message ([`poison`]) is refused with TERM by every consumer
//!   but a black hole (the well-behaved rule of the case);
//! - a *crasher* message ([`crasher`]) makes a crasher consumer reset at
//!   once, holding everything it has not acknowledged;
//! - `nak_pct` percent are given back with NAK (a delay up to `nak_ms`);
//! - a black hole keeps everything and acknowledges nothing;
//! - the rest wait to be acknowledged: once `every` wait or the relay goes
//!   quiet, after `work_ms` of work (with PROG every third of
//!   `ack_timeout` if it sends PROG), as one cumulative ACK of the last or
//!   exact ACKS runs.
//!
//! Everything a consumer sends is logged in order (with the clock before
//! the write), and how many frames were written whole, so the checker can
//! tell which acknowledgements the relay had (see `check_ack.rs`).
//!
//! **A producer** numbers its messages 0..msgs (named: pseq = number + 1),
//! sends them in bursts and reads CONF and DUP as they come; whenever a
//! connection ends (the relay restarted or crashed, its own reset) it
//! reconnects and resends everything after the confirmed prefix. A message
//! is accepted once a CONF covered it.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fastrand::Rng;
use socket2::SockRef;
use spillway_codec::proto::{self, Encoding, Frame, FrameDecoder};

use super::capture::tick;
use super::peers::{
    self, check_body, connect_from, ip, is_timeout, mix, ConsumerEnd, ConsumerResult, MsgId,
    ProducerEnd, ProducerResult, Shared, Until,
};
use super::schedule::{AEnd, APEnd, AckConsumer, AckProducer, AckStyle, Enc, MAX_MESSAGE};

/// Hang guard: a black hole holding messages is reset by the relay's ack
/// timeout; this long past it without that is reported.
pub const BLACK_HOLE_GUARD: Duration = Duration::from_secs(8);
/// Hang guard of a consumer reading to the relay's EOF after its FIN (the
/// relay may first wait out a drain).
const EOF_GUARD: Duration = Duration::from_secs(40);
/// Hang guard of a hello's answer.
const HELLO_GUARD: Duration = Duration::from_secs(5);

/// A message every consumer but a black hole refuses (TERM).
pub fn poison(id: MsgId) -> bool {
    id.seq % 97 == 42
}

/// A message that makes a crasher consumer reset.
pub fn crasher(id: MsgId) -> bool {
    id.seq % 61 == 7
}

fn encoding(e: Enc) -> Encoding {
    match e {
        Enc::Text => Encoding::Text,
        Enc::Binary => Encoding::Binary,
    }
}

fn group_name(g: u8) -> String {
    if g == 0 {
        String::new()
    } else {
        format!("g{g}")
    }
}

/// Reads the relay's answer line to a hello (and keeps what follows it).
fn answer(s: &mut TcpStream, sh: &Shared, buf: &mut BytesMut) -> Result<String, String> {
    let start = Instant::now();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line = buf.split_to(nl + 1);
            return Ok(String::from_utf8_lossy(&line[..nl]).into_owned());
        }
        if sh.aborted() {
            return Err("aborted".into());
        }
        if start.elapsed() > HELLO_GUARD {
            return Err(format!("no answer to the hello within {HELLO_GUARD:?}"));
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err("EOF before the answer to the hello".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

// ------------------------------------------------------------ consumer ---

/// One MSG as the consumer got it.
#[derive(Clone, Debug)]
pub struct AckReceipt {
    pub t: u64,
    pub id: MsgId,
    pub seq: u64,
    pub attempt: u32,
    pub len: usize,
}

/// A frame the consumer sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sent {
    /// ACK or ACKS: the seqs it meant (everything it held that it had
    /// decided to acknowledge; for ACK, exactly what the relay settles).
    Ack {
        seqs: Vec<u64>,
        cumulative: bool,
    },
    Nak(u64),
    Term(u64),
    Prog(u64),
    Win(u32),
}

/// An acking consumer's history.
#[derive(Clone, Debug, Default)]
pub struct AckLog {
    pub group: String,
    /// The incarnation that answered its hello (`Shared::inc` then).
    pub inc: Option<usize>,
    pub ok_t: u64,
    pub receipts: Vec<AckReceipt>,
    /// Every frame it sent, in order, with the clock before its write.
    pub sent: Vec<(u64, Sent)>,
    /// How many of `sent` were written whole (a write that failed ends
    /// the connection: the rest never reached the relay).
    pub written: usize,
    pub bye_t: Option<u64>,
    /// What the relay refused, or the hello's failure.
    pub err: Option<String>,
    /// Received and neither acknowledged, given back nor refused when it
    /// ended.
    pub held_at_end: Vec<u64>,
    /// A black hole the relay did not reset: how long it held a message.
    pub unreset_ms: Option<u64>,
    /// The crasher message it reset on.
    pub crashed_on: Option<u64>,
    /// Bodies that were not whole messages.
    pub malformed: Vec<String>,
}

/// The final drain's consumer of a group: acknowledges everything at once
/// (TERMs poison), never gives anything back.
pub fn well_behaved(group: u8) -> AckConsumer {
    AckConsumer {
        enc: Enc::Binary,
        group,
        window: 64,
        rcvbuf: 0,
        life_ms: u32::MAX,
        style: AckStyle::Mixed,
        every: 16,
        work_ms: 0,
        prog: false,
        nak_pct: 0,
        nak_ms: 0,
        crasher: false,
        black_hole: false,
        win: None,
        end: AEnd::Settle,
    }
}

struct CConn<'a> {
    s: TcpStream,
    enc: Encoding,
    log: &'a mut AckLog,
}

impl CConn<'_> {
    /// Writes `f`; false when the connection is gone.
    fn send(&mut self, f: Sent) -> bool {
        let frame = match &f {
            Sent::Ack { seqs, cumulative } => {
                if *cumulative {
                    Frame::Ack {
                        seq: *seqs.last().expect("an ACK names a message"),
                    }
                } else {
                    let mut sorted = seqs.clone();
                    sorted.sort_unstable();
                    let mut ranges: Vec<(u64, u64)> = Vec::new();
                    for s in sorted {
                        match ranges.last_mut() {
                            Some(r) if r.1 + 1 == s => r.1 = s,
                            _ => ranges.push((s, s)),
                        }
                    }
                    Frame::Acks { ranges }
                }
            }
            Sent::Nak(seq) => Frame::Nak {
                seq: *seq,
                delay_ms: 0,
            },
            Sent::Term(seq) => Frame::Term {
                seq: *seq,
                reason: Bytes::from_static(b"poison"),
            },
            Sent::Prog(seq) => Frame::Prog { seq: *seq },
            Sent::Win(w) => Frame::Win {
                msgs: *w,
                bytes: proto::DEFAULT_WINDOW_BYTES,
            },
        };
        self.send_frame(f, &frame)
    }

    fn send_frame(&mut self, f: Sent, frame: &Frame) -> bool {
        if self.log.written < self.log.sent.len() {
            return false; // an earlier write failed
        }
        let mut out = BytesMut::new();
        proto::encode(frame, self.enc, &mut out);
        self.log.sent.push((tick(), f));
        if self.s.write_all(&out).is_ok() {
            self.log.written += 1;
            true
        } else {
            false
        }
    }
}

/// Splits `ranges` of ACKS into frames of at most the protocol's bound.
const MAX_RANGES: usize = proto::MAX_ACK_RANGES;

pub fn run_ack_consumer(
    sh: Arc<Shared>,
    idx: u32,
    spec: AckConsumer,
    until: Option<Until>,
    ack_timeout: Duration,
) -> ConsumerResult {
    let mut r = Rng::with_seed(mix(sh.seed ^ 0x6163_6b63 ^ u64::from(idx)));
    let mut log = AckLog {
        group: group_name(spec.group),
        ..AckLog::default()
    };
    let mut res = ConsumerResult {
        idx,
        local: None,
        connected_t: 0,
        end_t: 0,
        receipts: Vec::new(),
        malformed: Vec::new(),
        leftover: 0,
        unread_at_reset: Vec::new(),
        giveback_t: None,
        end: ConsumerEnd::NeverConnected,
        ack: None,
    };
    let rcvbuf = (spec.rcvbuf > 0).then_some(spec.rcvbuf);
    let Some(mut s) = connect_from(ip(2, idx), sh.sink, rcvbuf, 0, &sh) else {
        res.end_t = tick();
        res.ack = Some(log);
        return res;
    };
    res.connected_t = tick();
    res.local = s.local_addr().ok();
    let _ = s.set_read_timeout(Some(Duration::from_millis(20)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let group = if spec.group == 0 {
        String::new()
    } else {
        format!(" group=g{}", spec.group)
    };
    let hello = format!(
        "SPILLWAY 1 role=consumer encoding={}{group} window={} window_bytes={}\n",
        encoding(spec.enc).as_str(),
        spec.window,
        proto::DEFAULT_WINDOW_BYTES
    );
    let mut buf = BytesMut::new();
    let ok = s
        .write_all(hello.as_bytes())
        .map_err(|e| e.to_string())
        .and_then(|()| answer(&mut s, &sh, &mut buf));
    log.inc = Some(sh.inc.load(Ordering::SeqCst));
    log.ok_t = tick();
    match ok {
        Ok(line) if line.starts_with("OK 1 ") => {}
        Ok(line) => {
            log.err = Some(line.clone());
            res.end = ConsumerEnd::RelayErr(line);
            res.end_t = tick();
            res.ack = Some(log);
            return res;
        }
        Err(e) => {
            // The relay went away during the hello (a restart): nothing
            // was delivered.
            res.end = ConsumerEnd::RelayReset(format!("hello: {e}"));
            res.end_t = tick();
            res.ack = Some(log);
            return res;
        }
    }
    let enc = encoding(spec.enc);
    let mut decoder = FrameDecoder::new(enc, MAX_MESSAGE as usize + proto::FRAME_OVERHEAD);
    let mut c = CConn {
        s,
        enc,
        log: &mut log,
    };
    let start = Instant::now();
    let life = Duration::from_millis(u64::from(spec.life_ms));
    // Received, to be acknowledged, in delivery order.
    let mut pending: Vec<u64> = Vec::new();
    // Held and never to be acknowledged (a black hole's).
    let mut kept: Vec<u64> = Vec::new();
    let mut first_held: Option<Instant> = None;
    let mut win_sent = spec.win.is_none();
    let mut chunk = vec![0u8; 64 << 10];
    let mut flushes = 0u32;
    let mut bye = false;
    let relay_end: Option<ConsumerEnd> = 'life: loop {
        if sh.aborted() {
            break Some(ConsumerEnd::Torn);
        }
        let over = match &until {
            Some(Until(flag)) => flag.load(Ordering::SeqCst),
            None => start.elapsed() >= life,
        };
        if over {
            // A black hole waits for the relay's ack timeout before it
            // leaves: that reset is what the case checks.
            let holding = spec.black_hole && !kept.is_empty();
            if !holding || bye {
                break None;
            }
            let held = first_held.map_or(Duration::ZERO, |t| t.elapsed());
            if held > ack_timeout + BLACK_HOLE_GUARD {
                c.log.unreset_ms = Some(held.as_millis() as u64);
                break None;
            }
        }
        if !win_sent && start.elapsed() >= life / 2 {
            win_sent = true;
            if let Some(w) = spec.win {
                if !c.send(Sent::Win(w)) {
                    break Some(ConsumerEnd::RelayReset("write WIN".into()));
                }
            }
        }
        let got = match c.s.read(&mut chunk) {
            Ok(0) => break Some(ConsumerEnd::RelayEof),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if is_timeout(&e) => false,
            Err(e) => break Some(ConsumerEnd::RelayReset(e.to_string())),
        };
        loop {
            let f = match decoder.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    c.log
                        .malformed
                        .push(format!("undecodable stream from the relay: {e}"));
                    break 'life Some(ConsumerEnd::RelayErr(format!("decode: {e}")));
                }
            };
            match f {
                Frame::Msg { seq, attempt, body } => {
                    let t = tick();
                    let id = match check_body(sh.seed, &body) {
                        Ok(id) => id,
                        Err(m) => {
                            c.log.malformed.push(format!("seq {seq}: {m}"));
                            // Acknowledged like any other: the checker
                            // reports it.
                            pending.push(seq);
                            continue;
                        }
                    };
                    c.log.receipts.push(AckReceipt {
                        t,
                        id,
                        seq,
                        attempt,
                        len: body.len(),
                    });
                    sh.receipts.fetch_add(1, Ordering::SeqCst);
                    first_held.get_or_insert_with(Instant::now);
                    if spec.black_hole {
                        kept.push(seq);
                    } else if spec.crasher && crasher(id) {
                        c.log.crashed_on = Some(seq);
                        pending.push(seq);
                        c.log.held_at_end = pending.clone();
                        res.giveback_t = Some(tick());
                        let _ = SockRef::from(&c.s).set_linger(Some(Duration::ZERO));
                        break 'life Some(ConsumerEnd::Reset);
                    } else if poison(id) {
                        if !c.send(Sent::Term(seq)) {
                            break 'life Some(ConsumerEnd::RelayReset("write TERM".into()));
                        }
                    } else if spec.nak_pct > 0 && r.u8(0..100) < spec.nak_pct {
                        let delay = r.u32(0..=spec.nak_ms.max(1));
                        let frame = Frame::Nak {
                            seq,
                            delay_ms: u64::from(delay),
                        };
                        if !c.send_frame(Sent::Nak(seq), &frame) {
                            break 'life Some(ConsumerEnd::RelayReset("write NAK".into()));
                        }
                    } else {
                        pending.push(seq);
                    }
                }
                Frame::Bye => {
                    bye = true;
                    c.log.bye_t.get_or_insert_with(tick);
                }
                Frame::Err { code, text } => {
                    let e = format!("ERR {code} {text}");
                    c.log.err = Some(e.clone());
                    break 'life Some(ConsumerEnd::RelayErr(e));
                }
                other => {
                    c.log
                        .malformed
                        .push(format!("a relay sent a consumer {}", other.verb()));
                }
            }
        }
        // Acknowledge once enough wait, or when the relay is quiet.
        let due = pending.len() >= spec.every as usize || (!got && !pending.is_empty());
        if !due {
            continue;
        }
        if spec.work_ms > 0 {
            let work = Duration::from_millis(u64::from(spec.work_ms));
            let prog_every = ack_timeout / 3;
            let t0 = Instant::now();
            let mut last_prog = t0;
            while t0.elapsed() < work && !sh.aborted() {
                std::thread::sleep(Duration::from_millis(10));
                if spec.prog && last_prog.elapsed() >= prog_every {
                    last_prog = Instant::now();
                    for &seq in &pending.clone() {
                        if !c.send(Sent::Prog(seq)) {
                            break 'life Some(ConsumerEnd::RelayReset("write PROG".into()));
                        }
                    }
                }
            }
        }
        flushes += 1;
        let cumulative = match spec.style {
            AckStyle::Cumulative => true,
            AckStyle::Ranges => false,
            AckStyle::Mixed => flushes.is_multiple_of(2),
        };
        if !flush(&mut c, &mut pending, cumulative) {
            break Some(ConsumerEnd::RelayReset("write ACK".into()));
        }
    };
    // The end.
    res.end = match relay_end {
        Some(end) => end,
        None => {
            let end = if until.is_some() {
                AEnd::Settle
            } else {
                spec.end
            };
            if end == AEnd::Settle && !flush(&mut c, &mut pending, false) {
                ConsumerEnd::RelayReset("write ACK".into())
            } else {
                match end {
                    AEnd::Settle | AEnd::Abandon => {
                        res.giveback_t = Some(tick());
                        match c.s.shutdown(Shutdown::Write) {
                            Err(e) => ConsumerEnd::RelayReset(format!("shutdown: {e}")),
                            Ok(()) => {
                                // What comes after the FIN cannot be
                                // acknowledged any more: it is held.
                                // A relay may answer a FIN with a reset
                                // when it was holding messages (they go
                                // back either way).
                                let r = read_rest(&mut c, &sh, &mut decoder, &mut buf, &mut kept);
                                match r {
                                    Ok(()) => ConsumerEnd::Left,
                                    Err(Rest::Reset(e)) => ConsumerEnd::RelayReset(e),
                                    Err(Rest::NoEof(e)) => ConsumerEnd::LeftNoEof(e),
                                }
                            }
                        }
                    }
                    AEnd::Crash => {
                        res.giveback_t = Some(tick());
                        let _ = SockRef::from(&c.s).set_linger(Some(Duration::ZERO));
                        ConsumerEnd::Reset
                    }
                }
            }
        }
    };
    if c.log.crashed_on.is_none() {
        let mut held = pending;
        held.extend(kept);
        c.log.held_at_end = held;
    }
    res.end_t = tick();
    drop(c);
    res.ack = Some(log);
    res
}

/// Acknowledges everything in `pending` (cumulative: one ACK of the last;
/// else exact ACKS runs, in frames of at most the protocol's ranges).
fn flush(c: &mut CConn<'_>, pending: &mut Vec<u64>, cumulative: bool) -> bool {
    if pending.is_empty() {
        return true;
    }
    let seqs = std::mem::take(pending);
    if cumulative {
        return c.send(Sent::Ack {
            seqs,
            cumulative: true,
        });
    }
    // Runs of consecutive seqs, each frame at most MAX_RANGES of them.
    let mut sorted = seqs;
    sorted.sort_unstable();
    let mut part = Vec::new();
    let mut runs = 0;
    for (i, &s) in sorted.iter().enumerate() {
        if i == 0 || sorted[i - 1] + 1 != s {
            runs += 1;
            if runs > MAX_RANGES {
                if !c.send(Sent::Ack {
                    seqs: std::mem::take(&mut part),
                    cumulative: false,
                }) {
                    return false;
                }
                runs = 1;
            }
        }
        part.push(s);
    }
    c.send(Sent::Ack {
        seqs: part,
        cumulative: false,
    })
}

/// Why reading to the relay's EOF stopped short.
enum Rest {
    /// The relay reset the connection.
    Reset(String),
    /// No EOF within the hang guard (or the case ended).
    NoEof(String),
}

/// After our FIN: reads to the relay's EOF; MSGs still arriving are held.
fn read_rest(
    c: &mut CConn<'_>,
    sh: &Shared,
    decoder: &mut FrameDecoder,
    buf: &mut BytesMut,
    kept: &mut Vec<u64>,
) -> Result<(), Rest> {
    let start = Instant::now();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        while let Ok(Some(f)) = decoder.decode(buf) {
            match f {
                Frame::Msg { seq, attempt, body } => {
                    let t = tick();
                    match check_body(sh.seed, &body) {
                        Ok(id) => {
                            c.log.receipts.push(AckReceipt {
                                t,
                                id,
                                seq,
                                attempt,
                                len: body.len(),
                            });
                            sh.receipts.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(m) => c.log.malformed.push(format!("seq {seq}: {m}")),
                    }
                    kept.push(seq);
                }
                Frame::Bye => {
                    c.log.bye_t.get_or_insert_with(tick);
                }
                Frame::Err { code, text } => {
                    c.log.err = Some(format!("ERR {code} {text}"));
                }
                _ => {}
            }
        }
        if sh.aborted() {
            return Err(Rest::NoEof("aborted".into()));
        }
        if start.elapsed() > EOF_GUARD {
            return Err(Rest::NoEof(format!("no EOF within {EOF_GUARD:?}")));
        }
        match c.s.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(Rest::Reset(e.to_string())),
        }
    }
}

// ------------------------------------------------------------ producer ---

/// One connection of a confirming producer.
#[derive(Clone, Debug, Default)]
pub struct AckProdConn {
    pub local: Option<SocketAddr>,
    pub connected_t: u64,
    /// The incarnation that answered its hello.
    pub inc: Option<usize>,
    /// Messages written whole on it, in order: (number, clock). They are
    /// consecutive numbers from the first.
    pub sent: Vec<(u32, u64)>,
    /// The last CONF.
    pub conf: u64,
    pub dups: Vec<u64>,
    /// ERR from the relay (hello or later).
    pub err: Option<String>,
    pub end: String,
    pub end_t: u64,
}

/// A confirming producer's history.
#[derive(Clone, Debug, Default)]
pub struct AckProdLog {
    pub name: Option<String>,
    pub conns: Vec<AckProdConn>,
    /// Messages 0..confirmed were covered by a CONF.
    pub confirmed: u32,
    /// Frames that made no sense from a relay (a CONF going back, a CONF
    /// past what was sent, a DUP of something never sent...).
    pub odd: Vec<String>,
}

/// How one connection of a producer ended.
enum PConnEnd {
    /// Everything confirmed: the producer's end follows.
    Done,
    /// The connection ended (relay side, or our reset): reconnect.
    Again(String),
    /// The case is over.
    Torn,
}

pub fn run_ack_producer(sh: Arc<Shared>, idx: u32, spec: AckProducer) -> ProducerResult {
    let mut r = Rng::with_seed(mix(sh.seed ^ 0x7072_6f64 ^ u64::from(idx)));
    let pads: Vec<usize> = (0..spec.msgs)
        .map(|_| peers::pad_len(&mut r, spec.pad))
        .collect();
    let name = spec.named.then(|| format!("p{idx}"));
    let mut log = AckProdLog {
        name: name.clone(),
        ..AckProdLog::default()
    };
    let mut res = ProducerResult {
        idx,
        local: None,
        connected_t: 0,
        end_t: 0,
        total: spec.msgs,
        sent: 0,
        end: ProducerEnd::NeverConnected,
        ack: None,
    };
    let enc = encoding(spec.enc);
    let mut refusals = 0u32;
    let end = loop {
        if sh.aborted() {
            break ProducerEnd::Torn;
        }
        let Some(mut s) = connect_from(ip(1, idx), sh.source, None, 0, &sh) else {
            continue; // the route is restarting (or gone: the case aborts)
        };
        let mut conn = AckProdConn {
            local: s.local_addr().ok(),
            connected_t: tick(),
            ..AckProdConn::default()
        };
        if res.connected_t == 0 {
            res.connected_t = conn.connected_t;
        }
        res.local = conn.local;
        let _ = s.set_read_timeout(Some(Duration::from_millis(20)));
        let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
        let hello = format!(
            "SPILLWAY 1 role=producer encoding={} confirms=on{}\n",
            enc.as_str(),
            name.as_ref()
                .map_or(String::new(), |n| format!(" name={n}"))
        );
        let mut buf = BytesMut::new();
        let ok = s
            .write_all(hello.as_bytes())
            .map_err(|e| e.to_string())
            .and_then(|()| answer(&mut s, &sh, &mut buf));
        conn.inc = Some(sh.inc.load(Ordering::SeqCst));
        let outcome = match ok {
            Ok(line) if line.starts_with("OK 1 ") => {
                let o = produce_on(
                    idx, &mut s, &sh, &spec, &pads, &mut buf, &mut conn, &mut log,
                );
                if matches!(o, PConnEnd::Again(_)) && conn.sent.is_empty() {
                    refusals += 1;
                } else {
                    refusals = 0;
                }
                o
            }
            Ok(line) => {
                // 409: the name's previous connection is still open in the
                // relay (it has not seen our reset yet). Anything else is
                // for the checker.
                if !line.starts_with("ERR 409") {
                    conn.err = Some(line.clone());
                }
                refusals += 1;
                PConnEnd::Again(line)
            }
            Err(e) => PConnEnd::Again(format!("hello: {e}")),
        };
        if refusals > 0 {
            std::thread::sleep(Duration::from_millis(u64::from(refusals.min(20)) * 10));
        }
        conn.end_t = tick();
        match outcome {
            PConnEnd::Torn => {
                conn.end = "torn".into();
                log.conns.push(conn);
                break ProducerEnd::Torn;
            }
            PConnEnd::Again(why) => {
                conn.end = why;
                log.conns.push(conn);
                if spec.end == APEnd::Vanish && vanish_due(&log, &spec) {
                    break ProducerEnd::Aborted;
                }
                continue;
            }
            PConnEnd::Done => {
                let end = match spec.end {
                    APEnd::Vanish => {
                        let _ = SockRef::from(&s).set_linger(Some(Duration::ZERO));
                        ProducerEnd::Aborted
                    }
                    APEnd::Done => close(&mut s, &sh),
                    APEnd::Linger { ms } => {
                        let until = Instant::now() + Duration::from_millis(u64::from(ms));
                        while Instant::now() < until && !sh.aborted() {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        close(&mut s, &sh)
                    }
                };
                conn.end = format!("{end:?}");
                conn.end_t = tick();
                log.conns.push(conn);
                break end;
            }
        }
    };
    res.end = end;
    res.end_t = tick();
    res.sent = log
        .conns
        .iter()
        .flat_map(|c| c.sent.iter().map(|s| s.0 + 1))
        .max()
        .unwrap_or(0);
    res.ack = Some(log);
    res
}

/// A vanishing producer resets after its last PUB; once every message has
/// been written at least once, a lost connection is where it stops.
fn vanish_due(log: &AckProdLog, spec: &AckProducer) -> bool {
    log.conns
        .iter()
        .any(|c| c.sent.last().is_some_and(|s| s.0 + 1 == spec.msgs))
}

fn close(s: &mut TcpStream, sh: &Shared) -> ProducerEnd {
    if let Err(e) = s.shutdown(Shutdown::Write) {
        return ProducerEnd::ClosedThenError(format!("shutdown: {e}"));
    }
    let start = Instant::now();
    let mut chunk = [0u8; 4096];
    loop {
        if sh.aborted() {
            return ProducerEnd::ClosedThenError("aborted".into());
        }
        if start.elapsed() > EOF_GUARD {
            return ProducerEnd::ClosedThenError(format!("no EOF within {EOF_GUARD:?}"));
        }
        match s.read(&mut chunk) {
            Ok(0) => return ProducerEnd::Closed,
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(e) => return ProducerEnd::ClosedThenError(e.to_string()),
        }
    }
}

/// Sends on one connection: everything after the confirmed prefix, then
/// new messages in bursts, reading CONF and DUP; returns when everything
/// is confirmed, or the connection ends.
#[allow(clippy::too_many_arguments)]
fn produce_on(
    idx: u32,
    s: &mut TcpStream,
    sh: &Shared,
    spec: &AckProducer,
    pads: &[usize],
    buf: &mut BytesMut,
    conn: &mut AckProdConn,
    log: &mut AckProdLog,
) -> PConnEnd {
    let mut r = Rng::with_seed(mix(sh.seed
        ^ 0x7061_7573
        ^ (u64::from(idx) << 32)
        ^ log.conns.len() as u64));
    let enc = encoding(spec.enc);
    let mut decoder = FrameDecoder::new(enc, 1 << 16);
    let first = log.confirmed;
    let mut next = first;
    // Bytes to write, and where each PUB in them ends.
    let mut out: Vec<u8> = Vec::new();
    let mut at = 0usize;
    let mut ends: std::collections::VecDeque<(usize, u32)> = Default::default();
    let mut chunk = vec![0u8; 16 << 10];
    let mut body = Vec::new();
    let mut header = BytesMut::new();
    loop {
        if sh.aborted() {
            return PConnEnd::Torn;
        }
        if log.confirmed >= spec.msgs {
            return PConnEnd::Done;
        }
        if let Some(every) = spec.reset_every {
            if conn.sent.len() as u32 >= every && at == out.len() {
                let _ = SockRef::from(&*s).set_linger(Some(Duration::ZERO));
                return PConnEnd::Again("reset by the producer".into());
            }
        }
        if at == out.len() && next < spec.msgs {
            out.clear();
            at = 0;
            for _ in 0..spec.burst.max(1) {
                if next >= spec.msgs {
                    break;
                }
                body.clear();
                let id = MsgId {
                    conn: idx,
                    seq: next,
                };
                peers::body(sh.seed, id, pads[next as usize], &mut body);
                header.clear();
                let pseq = spec.named.then_some(u64::from(next) + 1);
                proto::pub_header(pseq, body.len(), enc, &mut header);
                out.extend_from_slice(&header);
                out.extend_from_slice(&body);
                out.extend_from_slice(proto::body_trailer(enc));
                ends.push_back((out.len(), next));
                next += 1;
            }
        }
        // Write what the socket takes.
        if at < out.len() {
            match s.write(&out[at..]) {
                Ok(0) => return PConnEnd::Again("write returned 0".into()),
                Ok(n) => {
                    at += n;
                    while ends.front().is_some_and(|&(e, _)| e <= at) {
                        let (_, k) = ends.pop_front().expect("checked");
                        conn.sent.push((k, tick()));
                    }
                    if at == out.len() && spec.pause_ms > 0 {
                        std::thread::sleep(Duration::from_millis(u64::from(
                            r.u32(0..=spec.pause_ms),
                        )));
                    }
                }
                Err(e) if is_timeout(&e) => {}
                Err(e) => return PConnEnd::Again(format!("write: {e}")),
            }
        }
        // Read what the relay answered (without waiting while there is
        // more to write).
        let waiting = at == out.len() && next >= spec.msgs;
        let _ = s.set_read_timeout(Some(Duration::from_millis(if waiting { 20 } else { 1 })));
        match s.read(&mut chunk) {
            Ok(0) => return PConnEnd::Again("relay EOF".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if is_timeout(&e) => {}
            Err(e) => return PConnEnd::Again(format!("read: {e}")),
        }
        loop {
            match decoder.decode(buf) {
                Ok(Some(Frame::Conf { n })) => {
                    if n < conn.conf {
                        log.odd.push(format!("CONF {n} after CONF {}", conn.conf));
                    }
                    if n > conn.sent.len() as u64 {
                        log.odd.push(format!(
                            "CONF {n} with only {} PUBs written whole",
                            conn.sent.len()
                        ));
                    }
                    conn.conf = conn.conf.max(n);
                    let upto = first + (conn.conf.min(conn.sent.len() as u64) as u32);
                    log.confirmed = log.confirmed.max(upto);
                }
                Ok(Some(Frame::Dup { pseq })) => {
                    if !conn.sent.iter().any(|&(k, _)| u64::from(k) + 1 == pseq) {
                        log.odd.push(format!("DUP {pseq} of a PUB not sent on it"));
                    }
                    conn.dups.push(pseq);
                }
                Ok(Some(Frame::Err { code, text })) => {
                    let e = format!("ERR {code} {text}");
                    conn.err = Some(e.clone());
                    return PConnEnd::Again(e);
                }
                Ok(Some(other)) => log
                    .odd
                    .push(format!("a relay sent a producer {}", other.verb())),
                Ok(None) => break,
                Err(e) => {
                    log.odd
                        .push(format!("undecodable stream from the relay: {e}"));
                    return PConnEnd::Again(format!("decode: {e}"));
                }
            }
        }
        if spec.end == APEnd::Vanish && next >= spec.msgs && at == out.len() {
            // Gone right after the last PUB, confirmed or not.
            let _ = SockRef::from(&*s).set_linger(Some(Duration::ZERO));
            return PConnEnd::Again("vanished".into());
        }
    }
}
