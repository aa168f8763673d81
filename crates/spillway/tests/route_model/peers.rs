//! The peers: producers and consumers on real sockets, one thread each.
//!
//! A message names its producer connection and its sequence within that
//! connection, and carries padding whose length and bytes follow from the
//! case seed and that name, so a consumer can check every byte of what it
//! got:
//!
//! ```text
//! lines:   m<conn>.<seq>.<padlen>|<padding>\n
//! len:u32: <u32 BE body length> m<conn>.<seq>.<padlen>|<padding>
//! ```
//!
//! Producers and consumers bind to their own loopback address
//! (127.1.x.y / 127.2.x.y), so the relay's `producer closed` and
//! `consumer closed` lines, which name the peer, map to exactly one
//! connection.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fastrand::Rng;
use socket2::{Domain, Protocol, SockRef, Socket, Type};

use super::capture::tick;
use super::schedule::{CEnd, Consumer, Frame, PEnd, Pad, Producer, MAX_MESSAGE};

/// How long a peer keeps trying to connect while the route restarts.
const CONNECT_FOR: Duration = Duration::from_secs(5);
/// Hang guard of a consumer reading to the relay's EOF after its FIN.
const EOF_GUARD: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgId {
    /// Producer connection (case-wide index).
    pub conn: u32,
    pub seq: u32,
}

impl std::fmt::Display for MsgId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "p{}#{}", self.conn, self.seq)
    }
}

pub fn mix(mut x: u64) -> u64 {
    // splitmix64 finalizer
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn pad_bytes(seed: u64, id: MsgId, len: usize, out: &mut Vec<u8>) {
    let mut x = mix(seed ^ (u64::from(id.conn) << 32) ^ u64::from(id.seq));
    for _ in 0..len {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        out.push(b'a' + ((x >> 33) % 26) as u8);
    }
}

/// The body of message `id` with `pad` bytes of padding, without any
/// framing (what an ack-protocol producer PUBs and a consumer gets in MSG).
pub fn body(seed: u64, id: MsgId, pad: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(format!("m{}.{}.{}|", id.conn, id.seq, pad).as_bytes());
    pad_bytes(seed, id, pad, out);
}

/// Checks a body made by [`body`]: the message it is, or what is wrong.
pub fn check_body(seed: u64, b: &[u8]) -> Result<MsgId, String> {
    match parse_header(b) {
        Some((id, pad, hlen)) if b.len() == hlen + pad => {
            let mut want = Vec::with_capacity(pad);
            pad_bytes(seed, id, pad, &mut want);
            if b[hlen..] == want[..] {
                Ok(id)
            } else {
                Err(format!(
                    "{id}: padding differs from what was sent: {:?}",
                    preview(b)
                ))
            }
        }
        _ => Err(format!("not a whole message: {:?}", preview(b))),
    }
}

/// The bytes of message `id` with `pad` bytes of padding.
pub fn encode(frame: Frame, seed: u64, id: MsgId, pad: usize, out: &mut Vec<u8>) {
    let header = format!("m{}.{}.{}|", id.conn, id.seq, pad);
    match frame {
        Frame::Lines => {
            out.extend_from_slice(header.as_bytes());
            pad_bytes(seed, id, pad, out);
            out.push(b'\n');
        }
        Frame::Len32 => {
            let len = (header.len() + pad) as u32;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(header.as_bytes());
            pad_bytes(seed, id, pad, out);
        }
    }
}

fn parse_header(body: &[u8]) -> Option<(MsgId, usize, usize)> {
    let bar = body.iter().position(|&b| b == b'|')?;
    let h = std::str::from_utf8(body.get(1..bar)?).ok()?;
    if body.first() != Some(&b'm') {
        return None;
    }
    let mut it = h.split('.');
    let conn = it.next()?.parse().ok()?;
    let seq = it.next()?.parse().ok()?;
    let pad = it.next()?.parse().ok()?;
    if it.next().is_some() {
        return None;
    }
    Some((MsgId { conn, seq }, pad, bar + 1))
}

/// Splits a consumer's byte stream into messages and checks each one.
pub struct Parser {
    frame: Frame,
    seed: u64,
    buf: Vec<u8>,
    /// After a malformed message the stream cannot be trusted any more.
    broken: bool,
    scratch: Vec<u8>,
}

pub enum Parsed {
    Msg(MsgId, usize),
    Malformed(String),
}

impl Parser {
    pub fn new(frame: Frame, seed: u64) -> Self {
        Parser {
            frame,
            seed,
            buf: Vec::new(),
            broken: false,
            scratch: Vec::new(),
        }
    }

    /// Bytes of an incomplete message at the end of what was fed.
    pub fn leftover(&self) -> &[u8] {
        &self.buf
    }

    pub fn feed(&mut self, data: &[u8], out: &mut Vec<Parsed>) {
        if self.broken {
            return;
        }
        self.buf.extend_from_slice(data);
        let mut at = 0;
        loop {
            let rest = &self.buf[at..];
            let (body, used) = match self.frame {
                Frame::Lines => match rest.iter().position(|&b| b == b'\n') {
                    Some(nl) => (&rest[..nl], nl + 1),
                    None => break,
                },
                Frame::Len32 => {
                    if rest.len() < 4 {
                        break;
                    }
                    let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                    if len as u64 + 4 > MAX_MESSAGE {
                        out.push(Parsed::Malformed(format!(
                            "length prefix {len} over max_message: {:?}",
                            preview(rest)
                        )));
                        self.broken = true;
                        return;
                    }
                    if rest.len() < 4 + len {
                        break;
                    }
                    (&rest[4..4 + len], 4 + len)
                }
            };
            let total = used;
            match parse_header(body) {
                Some((id, pad, hlen)) if body.len() == hlen + pad => {
                    self.scratch.clear();
                    pad_bytes(self.seed, id, pad, &mut self.scratch);
                    if body[hlen..] != self.scratch[..] {
                        out.push(Parsed::Malformed(format!(
                            "{id}: padding differs from what was sent: {:?}",
                            preview(body)
                        )));
                    } else {
                        out.push(Parsed::Msg(id, total));
                    }
                }
                _ => {
                    out.push(Parsed::Malformed(format!(
                        "not a whole message: {:?}",
                        preview(body)
                    )));
                    if self.frame == Frame::Len32 {
                        self.broken = true;
                        return;
                    }
                }
            }
            at += used;
        }
        self.buf.drain(..at);
    }
}

fn preview(b: &[u8]) -> String {
    let n = b.len().min(48);
    format!(
        "{}{}",
        String::from_utf8_lossy(&b[..n]),
        if b.len() > n { "…" } else { "" }
    )
}

/// What every peer thread of a case shares.
pub struct Shared {
    /// The incarnation now serving (set before it accepts anything): an
    /// ack-protocol peer notes which one answered its hello.
    pub inc: std::sync::atomic::AtomicUsize,
    pub seed: u64,
    pub frame: Frame,
    pub source: SocketAddr,
    pub sink: SocketAddr,
    /// Set when the case is torn down: every peer stops waiting.
    pub abort: AtomicBool,
    /// Every message id received so far, by anyone (progress of the final drain).
    pub received: Mutex<std::collections::HashSet<MsgId>>,
    pub receipts: AtomicU64,
}

impl Shared {
    pub fn aborted(&self) -> bool {
        self.abort.load(Ordering::SeqCst)
    }
}

pub fn connect_from(
    local: Ipv4Addr,
    to: SocketAddr,
    rcvbuf: Option<u32>,
    mss: u32,
    sh: &Shared,
) -> Option<TcpStream> {
    let deadline = Instant::now() + CONNECT_FOR;
    while Instant::now() < deadline && !sh.aborted() {
        let attempt = (|| -> io::Result<TcpStream> {
            let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
            if let Some(size) = rcvbuf {
                s.set_recv_buffer_size(size as usize)?;
            }
            if mss > 0 {
                s.set_tcp_mss(mss)?;
            }
            s.bind(&SocketAddr::V4(SocketAddrV4::new(local, 0)).into())?;
            s.connect_timeout(&to.into(), Duration::from_secs(2))?;
            Ok(s.into())
        })();
        match attempt {
            Ok(s) => return Some(s),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    None
}

pub fn ip(kind: u8, idx: u32) -> Ipv4Addr {
    Ipv4Addr::new(127, kind, (idx >> 8) as u8, idx as u8)
}

pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

/// Reads until EOF or an error (or the case aborts), feeding the parser.
/// `Ok(())` = EOF.
fn read_to_end(
    s: &mut TcpStream,
    sh: &Shared,
    guard: Option<Duration>,
    mut each: impl FnMut(&[u8]),
) -> Result<(), String> {
    let start = Instant::now();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if sh.aborted() {
            return Err("aborted".into());
        }
        if guard.is_some_and(|g| start.elapsed() > g) {
            return Err(format!("no EOF within {guard:?}"));
        }
        match s.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => each(&buf[..n]),
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

// ------------------------------------------------------------ producer ---

/// The strings are read through `Debug`, in reports.
#[allow(dead_code)]
#[derive(Clone, Debug)]
pub enum ProducerEnd {
    NeverConnected,
    /// Sent everything, half-closed and read the relay's EOF.
    Closed,
    /// Half-closed, then the read failed (or the case ended first).
    ClosedThenError(String),
    Aborted,
    /// A write failed: the relay closed or reset the connection.
    Broken(String),
    /// The case was torn down while the producer waited.
    Torn,
}

#[derive(Clone, Debug)]
pub struct ProducerResult {
    pub idx: u32,
    pub local: Option<SocketAddr>,
    pub connected_t: u64,
    pub end_t: u64,
    /// Messages built (the whole script).
    pub total: u32,
    /// Messages whose every byte the kernel took from us.
    pub sent: u32,
    pub end: ProducerEnd,
    /// A confirming producer's connections (ack cases with `from_ack`).
    pub ack: Option<super::peers_ack::AckProdLog>,
}

pub fn pad_len(r: &mut Rng, pad: Pad) -> usize {
    let big = (MAX_MESSAGE as usize) - 64;
    match pad {
        Pad::Small => r.usize(0..200),
        Pad::Mixed => match r.u8(0..20) {
            0..=14 => r.usize(0..200),
            15..=18 => r.usize(200..2048),
            _ => r.usize(2048..big.min(12 << 10)),
        },
        Pad::Large => r.usize(1024..big.min(12 << 10)),
    }
}

pub fn run_producer(sh: Arc<Shared>, idx: u32, spec: Producer) -> ProducerResult {
    let mut r = Rng::with_seed(mix(sh.seed ^ 0x7072_6f64 ^ u64::from(idx)));
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
    let Some(mut s) = connect_from(ip(1, idx), sh.source, None, 0, &sh) else {
        res.end_t = tick();
        return res;
    };
    res.connected_t = tick();
    res.local = s.local_addr().ok();
    let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    // Byte offset where each message ends.
    let mut ends: Vec<u64> = Vec::with_capacity(spec.msgs as usize);
    let mut written = 0u64;
    let mut queued = 0u64;
    let mut buf = Vec::new();
    let mut seq = 0u32;
    let count_sent = |ends: &[u64], written: u64| ends.partition_point(|&e| e <= written) as u32;
    while seq < spec.msgs {
        buf.clear();
        let n = spec.burst.max(1).min(spec.msgs - seq);
        for _ in 0..n {
            let pad = pad_len(&mut r, spec.pad);
            encode(sh.frame, sh.seed, MsgId { conn: idx, seq }, pad, &mut buf);
            ends.push(queued + buf.len() as u64);
            seq += 1;
        }
        queued += buf.len() as u64;
        let mut at = 0;
        while at < buf.len() {
            if sh.aborted() {
                res.sent = count_sent(&ends, written);
                res.end = ProducerEnd::Torn;
                res.end_t = tick();
                return res;
            }
            match s.write(&buf[at..]) {
                Ok(0) => {
                    res.end = ProducerEnd::Broken("write returned 0".into());
                    break;
                }
                Ok(k) => {
                    at += k;
                    written += k as u64;
                }
                Err(e) if is_timeout(&e) => {}
                Err(e) => {
                    res.end = ProducerEnd::Broken(e.to_string());
                    break;
                }
            }
        }
        if matches!(res.end, ProducerEnd::Broken(_)) {
            res.sent = count_sent(&ends, written);
            res.end_t = tick();
            return res;
        }
        if spec.pause_ms > 0 {
            std::thread::sleep(Duration::from_millis(u64::from(r.u32(0..=spec.pause_ms))));
        }
    }
    res.sent = count_sent(&ends, written);
    let close = |s: &mut TcpStream| -> ProducerEnd {
        if let Err(e) = s.shutdown(Shutdown::Write) {
            return ProducerEnd::ClosedThenError(format!("shutdown: {e}"));
        }
        match read_to_end(s, &sh, None, |_| {}) {
            Ok(()) => ProducerEnd::Closed,
            Err(e) => ProducerEnd::ClosedThenError(e),
        }
    };
    res.end = match spec.end {
        PEnd::Close => close(&mut s),
        PEnd::Abort => {
            let _ = SockRef::from(&s).set_linger(Some(Duration::ZERO));
            ProducerEnd::Aborted
        }
        PEnd::Idle { ms } => {
            let until = Instant::now() + Duration::from_millis(u64::from(ms));
            while Instant::now() < until && !sh.aborted() {
                std::thread::sleep(Duration::from_millis(20));
            }
            close(&mut s)
        }
    };
    res.end_t = tick();
    drop(s);
    res
}

// ------------------------------------------------------------ consumer ---

#[derive(Clone, Debug)]
pub struct Receipt {
    pub t: u64,
    pub id: MsgId,
    pub len: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsumerEnd {
    NeverConnected,
    /// The relay closed the connection (a cut at shutdown, or the end of a
    /// clean leave it had not been asked for).
    RelayEof,
    /// The relay reset the connection (or it broke).
    RelayReset(String),
    /// Half-closed and read to EOF.
    Left,
    /// Half-closed, but no EOF came (error or hang guard).
    LeftNoEof(String),
    /// Reset by us.
    Reset,
    /// FIN, then reset, by us.
    FinThenRst,
    /// The case was torn down while the consumer ran.
    Torn,
    /// The relay answered with ERR (ack protocol), then closed.
    RelayErr(String),
}

impl ConsumerEnd {
    /// An end after which the relay may legitimately send again what this
    /// connection got.
    pub fn abortive(&self) -> bool {
        matches!(
            self,
            ConsumerEnd::RelayReset(_)
                | ConsumerEnd::Reset
                | ConsumerEnd::FinThenRst
                | ConsumerEnd::Torn
        )
    }
}

#[derive(Clone, Debug)]
pub struct ConsumerResult {
    pub idx: u32,
    pub local: Option<SocketAddr>,
    pub connected_t: u64,
    pub end_t: u64,
    pub receipts: Vec<Receipt>,
    pub malformed: Vec<String>,
    /// Bytes of an incomplete message when the stream ended.
    pub leftover: usize,
    /// Complete messages its kernel held unread when it reset.
    pub unread_at_reset: Vec<MsgId>,
    /// First moment the relay may have given back what this connection
    /// held: our FIN or RST, or the start of a stall long enough for the
    /// relay to reset us.
    pub giveback_t: Option<u64>,
    pub end: ConsumerEnd,
    /// An acking consumer's history (ack cases).
    pub ack: Option<super::peers_ack::AckLog>,
}

/// The final consumer reads until `leave` is set, then leaves cleanly.
pub struct Until(pub Arc<AtomicBool>);

pub fn run_consumer(
    sh: Arc<Shared>,
    idx: u32,
    spec: Consumer,
    until: Option<Until>,
) -> ConsumerResult {
    let mut r = Rng::with_seed(mix(sh.seed ^ 0x636f_6e73 ^ u64::from(idx)));
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
    let rcvbuf = until.is_none().then_some(spec.rcvbuf);
    let Some(mut s) = connect_from(ip(2, idx), sh.sink, rcvbuf, spec.mss, &sh) else {
        res.end_t = tick();
        return res;
    };
    res.connected_t = tick();
    res.local = s.local_addr().ok();
    let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
    let mut parser = Parser::new(sh.frame, sh.seed);
    let mut parsed = Vec::new();
    let mut take = |data: &[u8], parser: &mut Parser, res: &mut ConsumerResult| {
        parsed.clear();
        parser.feed(data, &mut parsed);
        if parsed.is_empty() {
            return;
        }
        let mut got = sh.received.lock().unwrap_or_else(|e| e.into_inner());
        for p in parsed.drain(..) {
            match p {
                Parsed::Msg(id, len) => {
                    res.receipts.push(Receipt { t: tick(), id, len });
                    got.insert(id);
                    sh.receipts.fetch_add(1, Ordering::SeqCst);
                }
                Parsed::Malformed(m) => res.malformed.push(m),
            }
        }
    };
    let start = Instant::now();
    let life = Duration::from_millis(u64::from(spec.life_ms));
    let mut stalled = false;
    // Unread in the kernel at the end of a long stall, until the next
    // successful read (see the stall below).
    let mut stall_unread: Option<Vec<MsgId>> = None;
    let mut buf = vec![0u8; 64 << 10];
    // 1. Read for the consumer's life.
    let relay_end: Option<ConsumerEnd> = loop {
        if sh.aborted() {
            break Some(ConsumerEnd::Torn);
        }
        match &until {
            Some(Until(flag)) => {
                if flag.load(Ordering::SeqCst) {
                    break None;
                }
            }
            None => {
                if start.elapsed() >= life {
                    break None;
                }
            }
        }
        if let Some(st) = spec.stall.filter(|_| until.is_none() && !stalled) {
            if start.elapsed() >= Duration::from_millis(u64::from(st.at_ms)) {
                stalled = true;
                let t = tick();
                if st.is_long() {
                    res.giveback_t.get_or_insert(t);
                }
                let until = Instant::now() + Duration::from_millis(u64::from(st.ms));
                while Instant::now() < until && !sh.aborted() {
                    std::thread::sleep(Duration::from_millis(20));
                    // What the kernel holds unread, as long as it can be
                    // seen: if the relay resets this consumer for the stall,
                    // the reset throws it away (a stalled connection makes
                    // no progress, so the last view is what was lost).
                    if st.is_long() {
                        if let Some(u) = peek_unread(&s, &parser, sh.frame, sh.seed) {
                            stall_unread = Some(u);
                        }
                    }
                }
                continue;
            }
        }
        let want = if until.is_some() {
            buf.len()
        } else {
            r.usize(1..=spec.read_max as usize).min(buf.len())
        };
        match s.read(&mut buf[..want]) {
            Ok(0) => break Some(ConsumerEnd::RelayEof),
            Ok(n) => {
                stall_unread = None;
                take(&buf[..n], &mut parser, &mut res);
            }
            Err(e) if is_timeout(&e) => continue,
            Err(e) => break Some(ConsumerEnd::RelayReset(e.to_string())),
        }
        if until.is_none() && spec.pause_ms > 0 {
            let p = r.u32(0..=spec.pause_ms);
            if p > 0 {
                std::thread::sleep(Duration::from_millis(u64::from(p)));
            }
        }
    };
    // 2. End it.
    res.end = match relay_end {
        Some(end) => end,
        None => match if until.is_some() {
            CEnd::Leave
        } else {
            spec.end
        } {
            CEnd::Leave => {
                res.giveback_t.get_or_insert(tick());
                match s.shutdown(Shutdown::Write) {
                    Err(e) => ConsumerEnd::RelayReset(format!("shutdown: {e}")),
                    Ok(()) => {
                        let mut chunks: Vec<Vec<u8>> = Vec::new();
                        let r =
                            read_to_end(&mut s, &sh, Some(EOF_GUARD), |d| chunks.push(d.to_vec()));
                        for c in chunks {
                            take(&c, &mut parser, &mut res);
                        }
                        match r {
                            Ok(()) => ConsumerEnd::Left,
                            Err(e) => ConsumerEnd::LeftNoEof(e),
                        }
                    }
                }
            }
            CEnd::Reset => {
                // Let what is on its way land, so the peek sees what the
                // reset will throw away.
                std::thread::sleep(Duration::from_millis(50));
                res.unread_at_reset = unread(&s, &parser, sh.frame, sh.seed);
                res.giveback_t.get_or_insert(tick());
                let _ = SockRef::from(&s).set_linger(Some(Duration::ZERO));
                ConsumerEnd::Reset
            }
            CEnd::FinThenRst => {
                res.giveback_t.get_or_insert(tick());
                let _ = s.shutdown(Shutdown::Write);
                // Long enough for the relay to have seen the FIN first.
                std::thread::sleep(Duration::from_millis(u64::from(r.u32(20..100))));
                res.unread_at_reset = unread(&s, &parser, sh.frame, sh.seed);
                let _ = SockRef::from(&s).set_linger(Some(Duration::ZERO));
                ConsumerEnd::FinThenRst
            }
        },
    };
    // Reset by the relay during a long stall (a write stall), found at the
    // first read or at the leave after it: what the kernel held unread was
    // thrown away by the reset.
    if matches!(res.end, ConsumerEnd::RelayReset(_)) {
        if let Some(u) = stall_unread.take() {
            res.unread_at_reset = u;
        }
    }
    res.leftover = parser.leftover().len();
    res.end_t = tick();
    drop(s);
    res
}

/// The complete messages the kernel holds for us unread (peeked, not read).
fn unread(s: &TcpStream, parser: &Parser, frame: Frame, seed: u64) -> Vec<MsgId> {
    peek_unread(s, parser, frame, seed).unwrap_or_default()
}

/// [`unread`], or None when the socket cannot be peeked (it was reset).
fn peek_unread(s: &TcpStream, parser: &Parser, frame: Frame, seed: u64) -> Option<Vec<MsgId>> {
    let mut buf = vec![0u8; 1 << 20];
    let _ = s.set_nonblocking(true);
    let peeked = s.peek(&mut buf);
    let _ = s.set_nonblocking(false);
    let n = match peeked {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(_) => return None,
    };
    let mut p = Parser::new(frame, seed);
    let mut out = Vec::new();
    p.feed(parser.leftover(), &mut out);
    p.feed(&buf[..n], &mut out);
    Some(
        out.into_iter()
            .filter_map(|x| match x {
                Parsed::Msg(id, _) => Some(id),
                Parsed::Malformed(_) => None,
            })
            .collect(),
    )
}
