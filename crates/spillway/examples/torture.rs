//! Torture soak of the release binary in queue mode. Driven by
//! `bench/torture.sh`, which builds this and the binary, mounts a small
//! tmpfs for the spool and unmounts it afterwards.
//!
//! One queue route (`lines`, `when_full = "block"`) runs as a child process
//! (`spillway run --config FILE`). Four producers and four consumers
//! misbehave against it while a seeded schedule delivers `kill -9`s,
//! SIGHUP reloads with changed route settings and SIGTERMs at random times.
//! The spool sits on the tmpfs, so the disk really fills (ENOSPC) and drains.
//! Before every `kill -9` the running configuration is made `memory = 0`,
//! `fsync = "always"` (by a reload, waited for), so every message the relay
//! appended must survive it.
//!
//! The checker, from outside:
//! - every message is a line `p<producer> c<connection> s<seq> <padding>`,
//!   the padding derived from the three numbers, so a torn or corrupt line
//!   is recognised;
//! - **accepted** (a lower bound): every message of a producer connection
//!   the producer ended cleanly (everything written, `shutdown(SHUT_WR)`,
//!   then the relay's FIN with no reset behind it, and no `kill -9` during
//!   the connection: the kernel of a killed relay sends FINs too), and every
//!   message below the highest sequence of its connection any consumer got;
//! - **lost** = accepted and never received; **duplicated** = received more
//!   than once; **reordered** = a first receipt below one already seen on
//!   the same consumer connection from the same producer connection
//!   ("explained" when another consumer connection of the route overlapped
//!   it: the relay then legitimately sends what that one gave back first);
//!   **partial** = a line that is not a whole message;
//! - **unexpected exits**: any relay exit we did not cause, a SIGTERM that
//!   does not end in exit 0, a start that fails.
//!
//! At the end the producers stop, a well-behaved consumer drains the queue
//! (until `/status` says depth 0 and nothing came for a while), the relay
//! gets a final SIGTERM, is started once more and drained again (anything
//! that arrives then had been left behind), and stopped.
//!
//! Usage: torture --bin BIN --spool DIR --work DIR [--seed N] [--duration SECS]
//!        [--kills N] [--reloads N] [--terms N] [--tmpfs-size BYTES]
//!        [--rate MSGS_PER_S_PER_PRODUCER] [--producers N] [--consumers N]
//!        [--consumer-ends clean,reset,rstfin,stay] [--memory BYTES,BYTES,...]
//! Exit status: 0 clean, 1 on lost > 0, partial > 0 or unexpected exits > 0,
//! 2 on a usage or set-up error. Relay logs, the timeline and the summary
//! stay in the work directory.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
/// Longest line a producer sends (header + padding), with room to spare.
const MAX_LINE: usize = 256;
/// Consumer receive buffers: small, so the relay's `redeliver_on_reset`
/// window (at least 128 KiB here) always covers what a resetting
/// consumer's kernel acknowledged but the consumer never read.
const CONSUMER_RCVBUFS: [usize; 5] = [2048, 4096, 8192, 16384, 32768];

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ------------------------------------------------------------------ args ---

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConsumerEnd {
    /// `shutdown(SHUT_WR)`, read to EOF.
    Clean,
    /// `SO_LINGER 0` + close.
    Reset,
    /// `shutdown(SHUT_WR)`, a moment later `SO_LINGER 0` + close.
    RstAfterFin,
    /// Read until the relay ends the connection (or a long budget: clean).
    Stay,
}

impl ConsumerEnd {
    fn as_str(self) -> &'static str {
        match self {
            ConsumerEnd::Clean => "clean",
            ConsumerEnd::Reset => "reset",
            ConsumerEnd::RstAfterFin => "rstfin",
            ConsumerEnd::Stay => "stay",
        }
    }
}

struct Args {
    bin: PathBuf,
    spool: PathBuf,
    work: PathBuf,
    seed: u64,
    duration: Duration,
    kills: u32,
    reloads: u32,
    terms: u32,
    tmpfs_size: Option<u64>,
    /// Mount point of the tmpfs, so a wedged full disk can be grown.
    tmpfs_mount: Option<PathBuf>,
    rate: u64,
    producers: u8,
    consumers: u8,
    consumer_ends: Vec<ConsumerEnd>,
    /// `memory` values reloads and restarts choose from (bytes).
    memory: Vec<u64>,
    /// Dump the spool offline before each relay start (see `mark_spool`).
    spool_marks: bool,
}

fn usage(msg: &str) -> ! {
    eprintln!("torture: {msg}");
    eprintln!(
        "usage: torture --bin BIN --spool DIR --work DIR [--seed N] [--duration SECS] \
         [--kills N] [--reloads N] [--terms N] [--tmpfs-size BYTES] [--rate N] \
         [--producers N] [--consumers N] [--consumer-ends clean,reset,rstfin,stay] \
         [--memory BYTES,...]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        bin: PathBuf::new(),
        spool: PathBuf::new(),
        work: PathBuf::new(),
        seed: 0,
        duration: Duration::from_secs(600),
        kills: 100,
        reloads: 50,
        terms: 50,
        tmpfs_size: None,
        tmpfs_mount: None,
        rate: 5000,
        producers: 4,
        consumers: 4,
        consumer_ends: vec![
            ConsumerEnd::Clean,
            ConsumerEnd::Reset,
            ConsumerEnd::RstAfterFin,
            ConsumerEnd::Stay,
        ],
        memory: vec![0, 0, 256 * KIB, MIB, 4 * MIB, 8 * MIB],
        spool_marks: true,
    };
    let mut seed = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let Some(v) = it.next() else {
            usage(&format!("{flag} needs a value"))
        };
        let num = |v: &str| -> u64 {
            v.parse()
                .unwrap_or_else(|_| usage(&format!("{flag}: not a number: {v}")))
        };
        match flag.as_str() {
            "--bin" => a.bin = PathBuf::from(v),
            "--spool" => a.spool = PathBuf::from(v),
            "--work" => a.work = PathBuf::from(v),
            "--seed" => seed = Some(num(&v)),
            "--duration" => a.duration = Duration::from_secs(num(&v)),
            "--kills" => a.kills = num(&v) as u32,
            "--reloads" => a.reloads = num(&v) as u32,
            "--terms" => a.terms = num(&v) as u32,
            "--tmpfs-size" => a.tmpfs_size = Some(num(&v)).filter(|&n| n > 0),
            "--tmpfs-mount" => a.tmpfs_mount = Some(PathBuf::from(v)),
            "--rate" => a.rate = num(&v).max(1),
            "--producers" => a.producers = num(&v).clamp(1, 9) as u8,
            "--consumers" => a.consumers = num(&v).clamp(1, 64) as u8,
            "--spool-marks" => a.spool_marks = num(&v) != 0,
            "--memory" => {
                a.memory = v
                    .split(',')
                    .map(|x| {
                        x.parse()
                            .unwrap_or_else(|_| usage(&format!("--memory: not a number: {x}")))
                    })
                    .collect();
            }
            "--consumer-ends" => {
                a.consumer_ends = v
                    .split(',')
                    .map(|s| match s {
                        "clean" => ConsumerEnd::Clean,
                        "reset" => ConsumerEnd::Reset,
                        "rstfin" => ConsumerEnd::RstAfterFin,
                        "stay" => ConsumerEnd::Stay,
                        _ => usage(&format!("--consumer-ends: unknown end {s}")),
                    })
                    .collect();
            }
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    if a.bin.as_os_str().is_empty() || a.spool.as_os_str().is_empty() {
        usage("--bin and --spool are required");
    }
    if a.work.as_os_str().is_empty() {
        usage("--work is required");
    }
    a.seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 % 1_000_000_000)
            .unwrap_or(1)
    });
    a
}

// ------------------------------------------------------- message format ---

fn mix(mut x: u64) -> u64 {
    // splitmix64 finalizer
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Padding length and byte of message (p, c, s).
fn padding(p: u8, c: u32, s: u32) -> (usize, u8) {
    let h = mix((u64::from(p) << 56) ^ (u64::from(c) << 28) ^ u64::from(s));
    ((h % 120) as usize, b'a' + ((h >> 32) % 26) as u8)
}

fn encode(p: u8, c: u32, s: u32, out: &mut Vec<u8>) {
    let (len, ch) = padding(p, c, s);
    // Writing to a Vec cannot fail.
    let _ = write!(out, "p{p} c{c} s{s} ");
    out.extend(std::iter::repeat_n(ch, len));
    out.push(b'\n');
}

fn number(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 10 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// A line (without its newline) that is exactly one whole message.
fn parse_line(line: &[u8]) -> Option<(u8, u32, u32)> {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let p = number(parts.next()?.strip_prefix(b"p")?)?;
    let c = number(parts.next()?.strip_prefix(b"c")?)?;
    let s = number(parts.next()?.strip_prefix(b"s")?)?;
    let pad = parts.next()?;
    let (p, c, s) = (
        u8::try_from(p).ok()?,
        u32::try_from(c).ok()?,
        u32::try_from(s).ok()?,
    );
    let (len, ch) = padding(p, c, s);
    (pad.len() == len && pad.iter().all(|&b| b == ch)).then_some((p, c, s))
}

// --------------------------------------------------------- shared state ---

/// One message of a producer connection, as the consumers saw it.
#[derive(Clone, Copy, Default)]
struct Slot {
    count: u16,
    /// Consumer connection and time (ms) of the first receipt.
    first_cc: u32,
    first_ms: u32,
    /// A consumer connection that reset with this message unread in its
    /// receive buffer (its kernel had acknowledged it).
    discarded_cc: u32,
    /// The last relay incarnation at whose start this message was in the
    /// spool (undelivered, from the cursor on), read offline between runs.
    spool_inc: u32,
}

/// A producer connection.
struct PConn {
    inc: u32,
    start_ms: u32,
    end_ms: u32,
    port: u16,
    planned: u32,
    /// Messages whose every byte was taken by `write()`.
    sent: u32,
    end: String,
    /// Ended cleanly: every sent message is accepted.
    clean: bool,
    /// When the relay's kernel had acknowledged every byte and our FIN
    /// (`SIOCOUTQ` 0 after `shutdown`), if it did.
    handed_ms: Option<u32>,
    /// No `kill -9` was sent between the connection's start and its end.
    kill_free: bool,
    slots: Vec<Slot>,
}

/// A consumer connection.
#[derive(Clone)]
struct CConn {
    id: u32,
    k: u8,
    inc: u32,
    /// Route generation (a new one per relay start and per reload).
    gen: u32,
    start_ms: u32,
    end_ms: u32,
    port: u16,
    rcvbuf: usize,
    plan: &'static str,
    end: String,
    lines: u64,
    firsts: u64,
    dups: u64,
    late_dups: u64,
    reorders: u64,
    phase: &'static str,
    /// When we reset the connection (linger 0), if we did.
    reset_ms: Option<u32>,
    /// Messages that were unread in our receive buffer when we reset.
    discarded: u64,
}

#[derive(Clone)]
struct Reorder {
    cc: u32,
    ms: u32,
    p: u8,
    c: u32,
    s: u32,
    seen_max: u32,
}

#[derive(Default)]
struct Partials {
    mid_stream: u64,
    torn_tail_clean_eof: u64,
    /// Torn tail at EOF when a `kill -9` happened during the connection:
    /// the killed relay's kernel flushes what was in its socket and sends
    /// FIN. Excused, counted.
    torn_tail_kill: u64,
    /// Lines that parse but name a producer connection that never existed.
    phantom: u64,
    examples: Vec<String>,
}

struct Shared {
    t0: Instant,
    /// Wall clock at `t0`, ms since the epoch (to place relay log lines).
    t0_epoch_ms: u64,
    stop_producers: AtomicBool,
    stop_consumers: AtomicBool,
    /// Every socket wait gives up at once (the run is over).
    hard_stop: AtomicBool,
    /// Consumers are slow (the disk fills).
    flood: AtomicBool,
    /// Incremented just before each SIGKILL is sent.
    kills: AtomicU64,
    /// Relay process incarnation.
    inc: AtomicU32,
    /// Route generation: bumped at each relay start and successful reload.
    gen: AtomicU32,
    next_cc: AtomicU32,
    conns: Mutex<HashMap<(u8, u32), PConn>>,
    cconns: Mutex<Vec<CConn>>,
    reorders: Mutex<Vec<Reorder>>,
    partials: Mutex<Partials>,
    timeline: Mutex<Vec<(u32, String)>>,
}

impl Shared {
    fn ms(&self) -> u32 {
        self.t0.elapsed().as_millis() as u32
    }

    fn event(&self, msg: String) {
        let t = self.ms();
        eprintln!("[{:8.3}s] {msg}", f64::from(t) / 1000.0);
        lock(&self.timeline).push((t, msg));
    }

    /// Records a line that is not a whole message.
    fn partial(&self, cc: u32, what: &str, bytes: &[u8]) {
        let mut p = lock(&self.partials);
        match what {
            "torn tail at a clean EOF" => p.torn_tail_clean_eof += 1,
            "torn tail at EOF across a kill -9 (excused)" => p.torn_tail_kill += 1,
            "phantom" => p.phantom += 1,
            _ => p.mid_stream += 1,
        }
        if p.examples.len() < 20 {
            let shown: String = String::from_utf8_lossy(&bytes[..bytes.len().min(120)])
                .chars()
                .map(|c| if c.is_control() { '.' } else { c })
                .collect();
            let msg = format!(
                "t={:.3}s consumer connection {cc}: {what}: {} bytes {shown:?}",
                f64::from(self.ms()) / 1000.0,
                bytes.len()
            );
            p.examples.push(msg);
        }
    }
}

fn io_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Log-uniform integer in [lo, hi].
fn log_uniform(rng: &mut fastrand::Rng, lo: u64, hi: u64) -> u64 {
    let (l, h) = ((lo as f64).ln(), (hi as f64).ln());
    ((l + rng.f64() * (h - l)).exp() as u64).clamp(lo, hi)
}

// ------------------------------------------------------------ producers ---

#[derive(Clone, Copy)]
enum ProducerEnd {
    Clean,
    Reset,
    Close,
}

fn producer(sh: Arc<Shared>, p: u8, mut rng: fastrand::Rng, addr: SocketAddr, rate: u64) {
    let mut c = 0u32;
    while !sh.stop_producers.load(Relaxed) {
        let stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(s) => s,
            Err(_) => {
                thread::sleep(ms(rng.u64(10..100)));
                continue;
            }
        };
        c += 1;
        producer_conn(&sh, p, c, &mut rng, stream, rate);
    }
}

fn producer_conn(
    sh: &Shared,
    p: u8,
    c: u32,
    rng: &mut fastrand::Rng,
    mut stream: TcpStream,
    rate: u64,
) {
    let port = stream.local_addr().map(|a| a.port()).unwrap_or(0);
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(ms(200)));
    let _ = stream.set_read_timeout(Some(ms(200)));
    let kills0 = sh.kills.load(Relaxed);
    let planned = log_uniform(rng, 1, 20_000) as u32;
    let mut mode = match rng.u32(0..100) {
        0..=59 => ProducerEnd::Clean,
        60..=79 => ProducerEnd::Reset,
        _ => ProducerEnd::Close,
    };
    lock(&sh.conns).insert(
        (p, c),
        PConn {
            inc: sh.inc.load(Relaxed),
            start_ms: sh.ms(),
            end_ms: 0,
            port,
            planned,
            sent: 0,
            end: String::new(),
            clean: false,
            handed_ms: None,
            kill_free: false,
            slots: Vec::new(),
        },
    );
    let mut buf = Vec::with_capacity(64 * 160);
    let mut ends = Vec::with_capacity(64);
    let mut seq = 0u32;
    let mut sent = 0u32;
    let mut failure: Option<String> = None;
    'send: while seq < planned {
        if sh.stop_producers.load(Relaxed) {
            // Winding down: end this connection cleanly, with what was sent.
            mode = ProducerEnd::Clean;
            break;
        }
        let k = rng.u32(1..=64).min(planned - seq);
        buf.clear();
        ends.clear();
        for i in 0..k {
            encode(p, c, seq + i, &mut buf);
            ends.push(buf.len());
        }
        // One to three write() calls, cut anywhere (inside messages too).
        let mut cuts: Vec<usize> = (0..rng.usize(0..3))
            .map(|_| rng.usize(1..buf.len().max(2)))
            .collect();
        cuts.push(buf.len());
        cuts.sort_unstable();
        let mut off = 0usize;
        let blocked_since = Instant::now();
        for &cut in &cuts {
            while off < cut {
                match stream.write(&buf[off..cut]) {
                    Ok(0) => failure = Some("write returned 0".into()),
                    Ok(n) => off += n,
                    Err(e) if io_timeout(&e) => {
                        // Blocked: the relay pushes back (disk full). Wait,
                        // but not past the end of the run.
                        if sh.hard_stop.load(Relaxed)
                            || (sh.stop_producers.load(Relaxed)
                                && blocked_since.elapsed() > Duration::from_secs(60))
                        {
                            failure = Some("write blocked at the end of the run".into());
                        }
                    }
                    Err(e) => failure = Some(format!("write failed: {e}")),
                }
                if failure.is_some() {
                    sent = seq + ends.iter().filter(|&&e| e <= off).count() as u32;
                    break 'send;
                }
            }
        }
        seq += k;
        sent = seq;
        // Pace: `rate` messages per second on average, with bursts.
        if rng.u32(0..100) >= 30 {
            let us = u64::from(k) * 1_000_000 / rate;
            thread::sleep(Duration::from_micros(
                (us as f64 * rng.f64() * 2.0 / 0.7) as u64,
            ));
        }
    }
    let (end, clean, handed) = match failure {
        Some(f) => (f, false, None),
        None => match mode {
            ProducerEnd::Clean => finish_producer(sh, &mut stream, kills0),
            ProducerEnd::Reset => {
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                drop(stream);
                ("reset".into(), false, None)
            }
            ProducerEnd::Close => {
                drop(stream);
                ("close".into(), false, None)
            }
        },
    };
    let kill_free = sh.kills.load(Relaxed) == kills0;
    let mut conns = lock(&sh.conns);
    if let Some(pc) = conns.get_mut(&(p, c)) {
        pc.sent = sent;
        pc.end = end;
        pc.clean = clean;
        pc.handed_ms = handed;
        pc.kill_free = kill_free;
        pc.end_ms = sh.ms();
    }
}

/// `shutdown(SHUT_WR)`, then read until the relay's FIN; clean only if no
/// reset follows it and no `kill -9` happened during the connection.
/// Meanwhile `SIOCOUTQ` tells when the relay's kernel had acknowledged
/// every byte and the FIN (the third value): from then on the relay's
/// socket held all of it, which a SIGTERM or reload must still queue.
fn finish_producer(
    sh: &Shared,
    stream: &mut TcpStream,
    kills0: u64,
) -> (String, bool, Option<u32>) {
    if let Err(e) = stream.shutdown(Shutdown::Write) {
        return (format!("shutdown failed: {e}"), false, None);
    }
    let started = Instant::now();
    let mut handed: Option<u32> = None;
    let mut scratch = [0u8; 4096];
    let _ = stream.set_read_timeout(Some(ms(2)));
    loop {
        if handed.is_none() {
            if let Ok(0) = spillway_net::sys::unacked_bytes(stream.as_fd()) {
                handed = Some(sh.ms());
                let _ = stream.set_read_timeout(Some(ms(200)));
            }
        }
        match stream.read(&mut scratch) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if io_timeout(&e) => {
                if sh.hard_stop.load(Relaxed) || started.elapsed() > Duration::from_secs(90) {
                    return (
                        "no EOF from the relay within 90 s of our FIN".into(),
                        false,
                        handed,
                    );
                }
            }
            Err(e) => return (format!("reset while waiting for EOF: {e}"), false, handed),
        }
    }
    // A reset right behind the FIN means the relay closed with our bytes
    // unread (or they reached a closed socket): not clean.
    thread::sleep(ms(10));
    if let Ok(Some(e)) = stream.take_error() {
        return (format!("reset after EOF: {e}"), false, handed);
    }
    if let Err(e) = stream.read(&mut scratch) {
        if !io_timeout(&e) {
            return (format!("reset after EOF: {e}"), false, handed);
        }
    }
    if sh.kills.load(Relaxed) != kills0 {
        return (
            "EOF, but a kill -9 happened during the connection".into(),
            false,
            handed,
        );
    }
    ("clean".into(), true, handed)
}

// ------------------------------------------------------------ consumers ---

/// Parses a consumer connection's bytes into messages and records them.
struct Reader {
    cc: u32,
    buf: Vec<u8>,
    /// Per producer connection: highest sequence + 1 seen on this connection.
    seen: HashMap<(u8, u32), u32>,
    pending: Vec<(u8, u32, u32)>,
    lines: u64,
    firsts: u64,
    dups: u64,
    late_dups: u64,
    reorders: u64,
}

impl Reader {
    fn new(cc: u32) -> Self {
        Reader {
            cc,
            buf: Vec::new(),
            seen: HashMap::new(),
            pending: Vec::new(),
            lines: 0,
            firsts: 0,
            dups: 0,
            late_dups: 0,
            reorders: 0,
        }
    }

    fn feed(&mut self, sh: &Shared, data: &[u8]) {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(i) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let line = &self.buf[start..start + i];
            match parse_line(line) {
                Some(id) => self.pending.push(id),
                None => sh.partial(self.cc, "not a whole message, mid-stream", line),
            }
            start += i + 1;
        }
        self.buf.drain(..start);
        if self.buf.len() > MAX_LINE {
            sh.partial(self.cc, "overlong line, mid-stream", &self.buf);
            self.buf.clear();
        }
        self.apply(sh);
    }

    fn apply(&mut self, sh: &Shared) {
        if self.pending.is_empty() {
            return;
        }
        let now = sh.ms();
        let mut reorders = Vec::new();
        let mut phantoms = Vec::new();
        {
            let mut conns = lock(&sh.conns);
            for &(p, c, s) in &self.pending {
                self.lines += 1;
                let Some(pc) = conns.get_mut(&(p, c)) else {
                    phantoms.push((p, c, s));
                    continue;
                };
                let i = s as usize;
                if pc.slots.len() <= i {
                    pc.slots.resize(i + 1, Slot::default());
                }
                let slot = &mut pc.slots[i];
                let seen = self.seen.entry((p, c)).or_insert(0);
                if slot.count == 0 {
                    self.firsts += 1;
                    slot.first_cc = self.cc;
                    slot.first_ms = now;
                    if s < *seen {
                        self.reorders += 1;
                        reorders.push(Reorder {
                            cc: self.cc,
                            ms: now,
                            p,
                            c,
                            s,
                            seen_max: *seen - 1,
                        });
                    }
                } else {
                    self.dups += 1;
                    if s < *seen {
                        self.late_dups += 1;
                    }
                }
                slot.count = slot.count.saturating_add(1);
                *seen = (*seen).max(s + 1);
            }
        }
        self.pending.clear();
        for (p, c, s) in phantoms {
            sh.partial(self.cc, "phantom", format!("p{p} c{c} s{s}").as_bytes());
        }
        if !reorders.is_empty() {
            lock(&sh.reorders).extend(reorders);
        }
    }

    /// Just before we reset: what sits unread in our receive buffer (our
    /// kernel acknowledged it, the reset throws it away). Peeked until it
    /// stops growing, parsed, and marked on the messages; returns how many.
    fn discard_unread(&mut self, sh: &Shared, stream: &TcpStream) -> u64 {
        let mut big = vec![0u8; 1 << 20];
        let mut last = usize::MAX;
        let mut n = 0;
        let _ = stream.set_nonblocking(true);
        for _ in 0..10 {
            n = stream.peek(&mut big).unwrap_or_default();
            if n == last {
                break;
            }
            last = n;
            thread::sleep(ms(2));
        }
        let _ = stream.set_nonblocking(false);
        let mut unread = std::mem::take(&mut self.buf);
        unread.extend_from_slice(&big[..n]);
        let ids: Vec<(u8, u32, u32)> = unread
            .split(|&b| b == b'\n')
            .filter_map(parse_line)
            .collect();
        let mut conns = lock(&sh.conns);
        for &(p, c, s) in &ids {
            if let Some(pc) = conns.get_mut(&(p, c)) {
                let i = s as usize;
                if pc.slots.len() <= i {
                    pc.slots.resize(i + 1, Slot::default());
                }
                pc.slots[i].discarded_cc = self.cc;
            }
        }
        ids.len() as u64
    }

    /// The relay closed its side (FIN): a partial line left over is torn.
    fn at_eof(&mut self, sh: &Shared, kills0: u64) {
        if self.buf.is_empty() {
            return;
        }
        if sh.kills.load(Relaxed) != kills0 {
            sh.partial(
                self.cc,
                "torn tail at EOF across a kill -9 (excused)",
                &self.buf,
            );
        } else {
            sh.partial(self.cc, "torn tail at a clean EOF", &self.buf);
        }
        self.buf.clear();
    }

    fn record(&self, sh: &Shared, mut meta: CConn, end: String, phase: &'static str) -> CConn {
        meta.end_ms = sh.ms();
        meta.end = end;
        meta.lines = self.lines;
        meta.firsts = self.firsts;
        meta.dups = self.dups;
        meta.late_dups = self.late_dups;
        meta.reorders = self.reorders;
        meta.phase = phase;
        lock(&sh.cconns).push(meta.clone());
        meta
    }
}

fn connect_consumer(addr: SocketAddr, rcvbuf: Option<usize>) -> io::Result<TcpStream> {
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n)?;
    }
    sock.connect_timeout(&addr.into(), Duration::from_secs(1))?;
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(ms(100)))?;
    Ok(s)
}

fn consumer(
    sh: Arc<Shared>,
    k: u8,
    mut rng: fastrand::Rng,
    addr: SocketAddr,
    ends: Vec<ConsumerEnd>,
) {
    while !sh.stop_consumers.load(Relaxed) {
        let rcvbuf = CONSUMER_RCVBUFS[rng.usize(0..CONSUMER_RCVBUFS.len())];
        let stream = match connect_consumer(addr, Some(rcvbuf)) {
            Ok(s) => s,
            Err(_) => {
                thread::sleep(ms(rng.u64(10..100)));
                continue;
            }
        };
        let plan = ends[rng.usize(0..ends.len())];
        consumer_conn(&sh, k, &mut rng, stream, rcvbuf, plan);
    }
}

fn consumer_conn(
    sh: &Shared,
    k: u8,
    rng: &mut fastrand::Rng,
    mut stream: TcpStream,
    rcvbuf: usize,
    plan: ConsumerEnd,
) {
    let cc = sh.next_cc.fetch_add(1, Relaxed);
    let kills0 = sh.kills.load(Relaxed);
    let mut meta = CConn {
        id: cc,
        k,
        inc: sh.inc.load(Relaxed),
        gen: sh.gen.load(Relaxed),
        start_ms: sh.ms(),
        end_ms: 0,
        port: stream.local_addr().map(|a| a.port()).unwrap_or(0),
        rcvbuf,
        plan: plan.as_str(),
        end: String::new(),
        lines: 0,
        firsts: 0,
        dups: 0,
        late_dups: 0,
        reorders: 0,
        phase: "chaos",
        reset_ms: None,
        discarded: 0,
    };
    let mut r = Reader::new(cc);
    let started = Instant::now();
    let (budget_bytes, budget_time) = match plan {
        ConsumerEnd::Stay => (u64::MAX, ms(rng.u64(5_000..30_000))),
        _ => (log_uniform(rng, 1024, 16 * MIB), ms(rng.u64(100..10_000))),
    };
    // At most one long stall per connection (a consumer that stops reading).
    let stall = (rng.u32(0..100) < 25).then(|| {
        (
            ms(rng.u64(0..budget_time.as_millis() as u64)),
            ms(rng.u64(300..6_000)),
        )
    });
    let mut stalled = false;
    let mut got = 0u64;
    let mut tmp = vec![0u8; 64 * 1024];
    let relay_end: Option<String> = loop {
        if sh.stop_consumers.load(Relaxed)
            || got >= budget_bytes
            || started.elapsed() >= budget_time
        {
            break None;
        }
        if let Some((at, len)) = stall {
            if !stalled && started.elapsed() >= at {
                stalled = true;
                let until = Instant::now() + len;
                while Instant::now() < until && !sh.stop_consumers.load(Relaxed) {
                    thread::sleep(ms(20));
                }
                continue;
            }
        }
        let flood = sh.flood.load(Relaxed);
        let piece = if flood || rng.bool() {
            rng.usize(1..=4096)
        } else {
            rng.usize(1..=tmp.len())
        };
        match stream.read(&mut tmp[..piece]) {
            Ok(0) => {
                r.at_eof(sh, kills0);
                break Some("relay closed (EOF)".into());
            }
            Ok(n) => {
                got += n as u64;
                r.feed(sh, &tmp[..n]);
            }
            Err(e) if io_timeout(&e) => {}
            Err(e) => break Some(format!("relay reset: {e}")),
        }
        if flood {
            // About 20 KB/s per consumer: the producers fill the disk.
            thread::sleep(ms(rng.u64(100..300)));
        } else if rng.u32(0..100) < 20 {
            thread::sleep(Duration::from_micros(rng.u64(0..3000)));
        }
    };
    let end = match relay_end {
        Some(e) => e,
        None => match plan {
            ConsumerEnd::Clean | ConsumerEnd::Stay => {
                clean_leave(sh, &mut stream, &mut r, kills0, &mut tmp)
            }
            ConsumerEnd::Reset => {
                meta.discarded = r.discard_unread(sh, &stream);
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                meta.reset_ms = Some(sh.ms());
                drop(stream);
                "we reset".into()
            }
            ConsumerEnd::RstAfterFin => {
                let _ = stream.shutdown(Shutdown::Write);
                thread::sleep(ms(rng.u64(0..30)));
                meta.discarded = r.discard_unread(sh, &stream);
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                meta.reset_ms = Some(sh.ms());
                drop(stream);
                "we sent FIN, then reset".into()
            }
        },
    };
    r.record(sh, meta, end, "chaos");
}

/// Half-close and read to EOF: the relay finishes the message in flight.
fn clean_leave(
    sh: &Shared,
    stream: &mut TcpStream,
    r: &mut Reader,
    kills0: u64,
    tmp: &mut [u8],
) -> String {
    if let Err(e) = stream.shutdown(Shutdown::Write) {
        return format!("shutdown failed: {e}");
    }
    let started = Instant::now();
    loop {
        match stream.read(tmp) {
            Ok(0) => {
                r.at_eof(sh, kills0);
                return "clean leave (EOF)".into();
            }
            Ok(n) => r.feed(sh, &tmp[..n]),
            Err(e) if io_timeout(&e) => {
                if sh.hard_stop.load(Relaxed) || started.elapsed() > Duration::from_secs(30) {
                    return "clean leave: no EOF within 30 s of our FIN".into();
                }
            }
            Err(e) => return format!("clean leave: reset before EOF: {e}"),
        }
    }
}

// ---------------------------------------------------------------- relay ---

/// The route settings a reload changes.
#[derive(Clone, Debug, PartialEq)]
struct RouteCfg {
    memory: u64,
    segment_size: u64,
    redeliver: u64,
    max_disk: u64,
    fsync: &'static str,
    write_stall: &'static str,
    max_lifetime: &'static str,
}

fn size(n: u64) -> String {
    match n {
        0 => "0".into(),
        n if n % MIB == 0 => format!("{}MiB", n / MIB),
        n if n % KIB == 0 && n < MIB => format!("{}KiB", n / KIB),
        n if n >= MIB => format!("{:.1}MiB", n as f64 / MIB as f64),
        n => n.to_string(),
    }
}

impl RouteCfg {
    fn safe(&self) -> bool {
        self.memory == 0 && self.fsync == "always"
    }

    fn random(rng: &mut fastrand::Rng, disk: Option<u64>, memory: &[u64]) -> RouteCfg {
        fn pick<T: Copy>(rng: &mut fastrand::Rng, v: &[T]) -> T {
            v[rng.usize(0..v.len())]
        }
        let max_disk = match disk {
            // Unbounded or above the tmpfs: ENOSPC is what stops appends;
            // below it: max_disk does.
            Some(t) => pick(rng, &[0, t * 4, t * 3 / 4]),
            None => pick(rng, &[8 * MIB, 12 * MIB]),
        };
        RouteCfg {
            memory: pick(rng, memory),
            segment_size: pick(rng, &[64 * KIB, 256 * KIB, MIB, 4 * MIB]),
            redeliver: pick(rng, &[128 * KIB, 256 * KIB, MIB]),
            max_disk,
            fsync: pick(rng, &["always", "always", "10ms", "100ms", "never"]),
            write_stall: pick(rng, &["2s", "5s", "60s"]),
            max_lifetime: pick(rng, &["0s", "0s", "0s", "4s"]),
        }
    }

    fn made_safe(&self) -> RouteCfg {
        RouteCfg {
            memory: 0,
            fsync: "always",
            ..self.clone()
        }
    }

    fn summary(&self) -> String {
        format!(
            "memory={} segment_size={} redeliver_on_reset={} max_disk={} fsync={} write_stall={} max_lifetime={}",
            size(self.memory),
            size(self.segment_size),
            size(self.redeliver),
            size(self.max_disk),
            self.fsync,
            self.write_stall,
            self.max_lifetime
        )
    }
}

struct Ports {
    source: SocketAddr,
    sink: SocketAddr,
    admin: SocketAddr,
}

fn free_ports() -> io::Result<Ports> {
    let a = TcpListener::bind("127.0.0.1:0")?;
    let b = TcpListener::bind("127.0.0.1:0")?;
    let c = TcpListener::bind("127.0.0.1:0")?;
    Ok(Ports {
        source: a.local_addr()?,
        sink: b.local_addr()?,
        admin: c.local_addr()?,
    })
}

fn config_text(cfg: &RouteCfg, ports: &Ports, spool: &Path) -> String {
    format!(
        r#"# written by the torture soak; rewritten before each reload
[global]
drain_timeout = "2s"

[admin]
listen = "{admin}"

[[route]]
name = "torture"
mode = "queue"
from = "listen:{src}"
to = "listen:{sink}"
spool = "{spool}"
framing = "lines"
max_message = "64KiB"
when_full = "block"
memory = {memory}
max_disk = {max_disk}
fsync = "{fsync}"
segment_size = {seg}
redeliver_on_reset = {redeliver}
write_stall_timeout = "{ws}"
max_lifetime = "{ml}"
"#,
        admin = ports.admin,
        src = ports.source,
        sink = ports.sink,
        spool = spool.display(),
        memory = cfg.memory,
        max_disk = cfg.max_disk,
        fsync = cfg.fsync,
        seg = cfg.segment_size,
        redeliver = cfg.redeliver,
        ws = cfg.write_stall,
        ml = cfg.max_lifetime,
    )
}

/// One HTTP/1.0 GET on the admin endpoint: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: torture\r\n\r\n")?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other("no HTTP status"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Sum of a counter's samples in a Prometheus text exposition.
fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// A relay process, its log and how far the log was read.
struct Relay {
    child: Child,
    inc: u32,
    log: PathBuf,
    read_to: u64,
    partial_line: String,
}

impl Relay {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Log lines written since the last call.
    fn new_lines(&mut self) -> Vec<String> {
        let Ok(mut f) = std::fs::File::open(&self.log) else {
            return Vec::new();
        };
        if f.seek(SeekFrom::Start(self.read_to)).is_err() {
            return Vec::new();
        }
        let mut bytes = Vec::new();
        if f.read_to_end(&mut bytes).is_err() {
            return Vec::new();
        }
        self.read_to += bytes.len() as u64;
        self.partial_line.push_str(&String::from_utf8_lossy(&bytes));
        let mut lines: Vec<String> = self.partial_line.split('\n').map(String::from).collect();
        self.partial_line = lines.pop().unwrap_or_default();
        lines
    }
}

fn log_tail(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => format!("{status}"),
    }
}

fn send_signal(pid: u32, sig: &str) -> Result<(), String> {
    // `kill(1)` rather than libc::kill: this crate denies unsafe code.
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .map_err(|e| format!("cannot run kill: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("kill -{sig} {pid} failed ({st})"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ev {
    Kill,
    Reload,
    Term,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Term {
    Scheduled,
    /// After a failed reload, to get the route running again.
    Recovery,
    /// The end of the run.
    Final,
}

#[derive(Default)]
struct Counts {
    kills: u32,
    reloads: u32,
    prekill_reloads: u32,
    terms: u32,
    recovery_terms: u32,
    restarts: u32,
}

#[derive(Default)]
struct DiskWatch {
    max_bytes: u64,
    samples: u64,
    full_samples: u64,
    last: Option<Instant>,
}

struct Sched {
    sh: Arc<Shared>,
    args: Args,
    rng: fastrand::Rng,
    ports: Ports,
    config: PathBuf,
    relay: Option<Relay>,
    cur: RouteCfg,
    counts: Counts,
    /// Unexpected exits, failed starts, SIGTERMs that did not exit 0.
    unexpected: Vec<String>,
    reload_failures: Vec<String>,
    other_findings: Vec<String>,
    error_lines: Vec<String>,
    error_count: u64,
    warn_counts: HashMap<String, u64>,
    enospc: u64,
    enospc_gen: u64,
    blocked: u64,
    blocked_gen: u64,
    disk: DiskWatch,
    /// The relay cannot be started any more: stop the run.
    broken: bool,
    /// Why each route generation started.
    gen_causes: HashMap<u32, String>,
    /// When each relay process died without closing its connections itself
    /// (kill -9 sent, unexpected exit seen), ms. A graceful stop logs its
    /// consumer closes instead.
    inc_ended: HashMap<u32, u32>,
    /// Current tmpfs size (grown when the relay wedged on a full disk).
    tmpfs_now: Option<u64>,
    tmpfs_grown: u32,
    /// Starts where /readyz said 200 before the route logged it was ready,
    /// and how many of those then failed to start.
    readyz_early: u32,
    readyz_early_failed: u32,
    /// Relay incarnation -> its entry in `unexpected`.
    incident_of: HashMap<u32, usize>,
    /// Relay incarnation -> when it was spawned (ms).
    inc_started: HashMap<u32, u32>,
}

impl Sched {
    fn write_config(&self, cfg: &RouteCfg) -> Result<(), String> {
        let text = config_text(cfg, &self.ports, &self.args.spool);
        let tmp = self.config.with_extension("toml.tmp");
        std::fs::write(&tmp, text).map_err(|e| format!("write {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &self.config)
            .map_err(|e| format!("rename to {}: {e}", self.config.display()))
    }

    fn log_path(&self, inc: u32) -> PathBuf {
        self.args.work.join(format!("relay-{inc:03}.log"))
    }

    /// Scans new log lines: errors and warnings are tallied; returns them.
    fn scan_log(&mut self) -> Vec<String> {
        let Some(relay) = self.relay.as_mut() else {
            return Vec::new();
        };
        let inc = relay.inc;
        let lines = relay.new_lines();
        for l in &lines {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
                continue;
            };
            let level = v.get("level").and_then(|x| x.as_str()).unwrap_or("");
            let msg = v.get("message").and_then(|x| x.as_str()).unwrap_or("");
            match level {
                "ERROR" if msg.contains("stopping the route") => {
                    self.error_count += 1;
                    if self.error_lines.len() < 40 {
                        self.error_lines.push(format!("relay-{inc:03}.log: {l}"));
                    }
                    let log = self.log_path(inc);
                    self.record_unexpected(
                        inc,
                        &log,
                        &format!("the route stopped on its own: {}", truncate(l, 300)),
                    );
                }
                "ERROR" => {
                    self.error_count += 1;
                    if self.error_lines.len() < 40 {
                        self.error_lines.push(format!("relay-{inc:03}.log: {l}"));
                    }
                    self.sh
                        .event(format!("relay {inc} logged ERROR: {}", truncate(l, 300)));
                }
                "WARN" => *self.warn_counts.entry(msg.to_string()).or_default() += 1,
                _ => {}
            }
        }
        lines
    }

    fn new_generation(&mut self, cause: &str) {
        let gen = self.sh.gen.fetch_add(1, Relaxed) + 1;
        self.gen_causes.insert(gen, cause.to_string());
    }

    /// Between two relay processes: which messages are in the spool (from
    /// the cursor on), read with the offline `spool dump`. Marks them with
    /// the incarnation about to start, so a message that later vanishes is
    /// pinned to the incarnation that lost it.
    fn mark_spool(&mut self, next_inc: u32) {
        let Ok(out) = Command::new(&self.args.bin)
            .args(["spool", "dump"])
            .arg(&self.args.spool)
            .stderr(Stdio::null())
            .output()
        else {
            return;
        };
        let ids: Vec<(u8, u32, u32)> = out
            .stdout
            .split(|&b| b == b'\n')
            .filter_map(parse_line)
            .collect();
        let mut conns = lock(&self.sh.conns);
        for (p, c, s) in ids {
            if let Some(pc) = conns.get_mut(&(p, c)) {
                let i = s as usize;
                if pc.slots.len() <= i {
                    pc.slots.resize(i + 1, Slot::default());
                }
                pc.slots[i].spool_inc = next_inc;
            }
        }
    }

    fn start_relay(&mut self, cause: &str) -> bool {
        let mut attempt = 0;
        while attempt < 3 {
            attempt += 1;
            let inc = self.sh.inc.load(Relaxed) + 1;
            if self.args.spool_marks {
                self.mark_spool(inc);
            }
            self.sh.inc.store(inc, Relaxed);
            self.inc_started.insert(inc, self.sh.ms());
            self.new_generation(cause);
            let log = self.log_path(inc);
            let spawned = std::fs::File::create(&log).and_then(|f| {
                let out = f.try_clone()?;
                Command::new(&self.args.bin)
                    .args([
                        "--log-format",
                        "json",
                        "--log-level",
                        "info",
                        "run",
                        "--config",
                    ])
                    .arg(&self.config)
                    .stdin(Stdio::null())
                    .stdout(out)
                    .stderr(f)
                    .spawn()
            });
            let child = match spawned {
                Ok(c) => c,
                Err(e) => {
                    self.unexpected
                        .push(format!("cannot spawn {}: {e}", self.args.bin.display()));
                    self.broken = true;
                    return false;
                }
            };
            let _ = std::fs::write(self.args.work.join("relay.pid"), child.id().to_string());
            self.relay = Some(Relay {
                child,
                inc,
                log: log.clone(),
                read_to: 0,
                partial_line: String::new(),
            });
            self.counts.restarts += 1;
            let started = Instant::now();
            // Ready = the route logged "queue route ready" and /readyz is 200.
            // (/readyz alone is not trusted: it is checked against the log.)
            let mut route_ready = false;
            let mut readyz_early = false;
            loop {
                let lines = self.scan_log();
                if lines.iter().any(|l| l.contains("\"queue route ready\"")) {
                    route_ready = true;
                }
                let exited = self
                    .relay
                    .as_mut()
                    .and_then(|r| r.child.try_wait().ok().flatten());
                if let Some(st) = exited {
                    self.relay = None;
                    if readyz_early {
                        self.readyz_early_failed += 1;
                    }
                    self.record_unexpected(
                        inc,
                        &log,
                        &format!(
                            "start failed (attempt {attempt}): relay {inc} {}",
                            describe(st)
                        ),
                    );
                    if self.grow_tmpfs_if_full(&log) {
                        attempt -= 1;
                    }
                    break;
                }
                let readyz = matches!(http_get(self.ports.admin, "/readyz"), Ok((200, _)));
                if readyz && !route_ready && !readyz_early {
                    readyz_early = true;
                    self.readyz_early += 1;
                }
                if readyz && route_ready {
                    self.sh.event(format!(
                        "relay {inc} ready (pid {}) in {} ms: {}",
                        self.relay.as_ref().map_or(0, Relay::pid),
                        started.elapsed().as_millis(),
                        self.cur.summary()
                    ));
                    return true;
                }
                if started.elapsed() > Duration::from_secs(30) {
                    self.record_unexpected(
                        inc,
                        &log,
                        &format!(
                            "start failed (attempt {attempt}): relay {inc} not ready after 30 s"
                        ),
                    );
                    self.kill_now();
                    break;
                }
                thread::sleep(ms(10));
            }
            thread::sleep(Duration::from_secs(1));
        }
        self.sh
            .event("the relay cannot be started: ending the run".into());
        self.broken = true;
        false
    }

    /// A relay that cannot start because the spool's file system is full
    /// (it writes its cursor at open) never will: nothing can drain the
    /// disk while it is down. The operator's way out is more disk; this
    /// grows the tmpfs by 4 MiB (at most 6 times) and says so.
    fn grow_tmpfs_if_full(&mut self, log: &Path) -> bool {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if !text.contains("No space left on device") {
            return false;
        }
        let (Some(mount), Some(now)) = (self.args.tmpfs_mount.clone(), self.tmpfs_now) else {
            return false;
        };
        if self.tmpfs_grown >= 6 {
            return false;
        }
        let new = now + 4 * MIB;
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={new}")])
            .arg(&mount)
            .status()
            .is_ok_and(|st| st.success());
        if !ok {
            self.other_findings
                .push(format!("could not grow the tmpfs at {}", mount.display()));
            return false;
        }
        self.tmpfs_grown += 1;
        self.tmpfs_now = Some(new);
        let msg = format!(
            "t={:.3}s: the relay cannot start on the full spool file system (ENOSPC); \
             operator action: tmpfs grown from {} to {} to continue",
            f64::from(self.sh.ms()) / 1000.0,
            size(now),
            size(new)
        );
        self.sh.event(msg.clone());
        self.other_findings.push(msg);
        true
    }

    /// One incident per relay process: a route that stopped on its own and
    /// the process's later non-zero exit are the same incident.
    fn record_unexpected(&mut self, inc: u32, log: &Path, what: &str) {
        if let Some(&i) = self.incident_of.get(&inc) {
            self.sh
                .event(format!("UNEXPECTED (same incident): relay {inc}: {what}"));
            if let Some(entry) = self.unexpected.get_mut(i) {
                let _ = writeln!(
                    entry,
                    "  then, t={:.3}s: {what}",
                    f64::from(self.sh.ms()) / 1000.0
                );
            }
            return;
        }
        self.incident_of.insert(inc, self.unexpected.len());
        let tail = log_tail(log, 30);
        self.sh.event(format!(
            "UNEXPECTED: {what}; last log lines of {}:",
            log.display()
        ));
        for l in &tail {
            eprintln!("    {l}");
        }
        let mut s = format!(
            "t={:.3}s relay {inc}: {what}\n",
            f64::from(self.sh.ms()) / 1000.0
        );
        for l in tail.iter().rev().take(12).rev() {
            let _ = writeln!(s, "      {}", truncate(l, 400));
        }
        self.unexpected.push(s);
    }

    /// SIGKILL without bookkeeping (a hung relay).
    fn kill_now(&mut self) {
        if let Some(mut r) = self.relay.take() {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }

    /// Checks the relay is alive; an exit we did not cause is recorded and
    /// the relay restarted.
    fn check_alive(&mut self) {
        let exited = match self.relay.as_mut() {
            Some(r) => r.child.try_wait().ok().flatten().map(|st| (st, r.inc)),
            None => None,
        };
        if let Some((st, inc)) = exited {
            self.inc_ended.entry(inc).or_insert(self.sh.ms());
            self.scan_log();
            let log = self.log_path(inc);
            self.relay = None;
            self.record_unexpected(
                inc,
                &log,
                &format!("relay exited on its own: {}", describe(st)),
            );
            self.start_relay("start after an unexpected exit");
        } else if self.relay.is_none() && !self.broken {
            self.start_relay("start (relay was not running)");
        }
    }

    /// Sleeps in small steps until `deadline`, watching the relay and the disk.
    fn idle_until(&mut self, deadline: Instant) {
        loop {
            self.check_alive();
            self.scan_log();
            self.watch_disk();
            let now = Instant::now();
            if now >= deadline || self.broken {
                return;
            }
            thread::sleep((deadline - now).min(ms(25)));
        }
    }

    fn watch_disk(&mut self) {
        if self.disk.last.is_some_and(|t| t.elapsed() < ms(250)) {
            return;
        }
        self.disk.last = Some(Instant::now());
        let used = dir_bytes(&self.args.spool);
        self.disk.samples += 1;
        self.disk.max_bytes = self.disk.max_bytes.max(used);
        if let Some(t) = self.tmpfs_now {
            if used + 512 * KIB >= t {
                self.disk.full_samples += 1;
            }
        }
    }

    /// The current route generation ends (a signal follows): take its
    /// ENOSPC and blocked-append counters.
    fn scrape(&mut self) {
        if let Ok((200, body)) = http_get(self.ports.admin, "/metrics") {
            self.enospc_gen = metric_sum(&body, "spillway_spool_enospc_total");
            self.blocked_gen = metric_sum(&body, "spillway_spool_blocked_appends_total");
        }
    }

    fn end_generation(&mut self) {
        self.scrape();
        self.enospc += std::mem::take(&mut self.enospc_gen);
        self.blocked += std::mem::take(&mut self.blocked_gen);
    }

    /// Rewrites the config and sends SIGHUP; waits for the reload to finish.
    fn reload(&mut self, cfg: RouteCfg, why: &str) -> bool {
        if let Err(e) = self.write_config(&cfg) {
            self.other_findings
                .push(format!("cannot write config: {e}"));
            return false;
        }
        self.end_generation();
        self.scan_log();
        let Some(pid) = self.relay.as_ref().map(Relay::pid) else {
            return false;
        };
        self.sh
            .event(format!("SIGHUP ({why}) -> {}", cfg.summary()));
        if let Err(e) = send_signal(pid, "HUP") {
            self.other_findings.push(e);
            return false;
        }
        let started = Instant::now();
        loop {
            let lines = self.scan_log();
            for l in lines {
                if l.contains("\"configuration reloaded\"") {
                    self.cur = cfg.clone();
                    if l.contains("\"result\":\"success\"") {
                        self.new_generation(if why == "scheduled" {
                            "reload"
                        } else {
                            "reload before kill -9"
                        });
                        self.sh.event(format!(
                            "reload done in {} ms",
                            started.elapsed().as_millis()
                        ));
                        return true;
                    }
                    self.reload_failed(&format!("reload reported failure: {l}"));
                    return false;
                }
                if l.contains("reload rejected") {
                    self.reload_failed(&format!("reload rejected: {l}"));
                    return false;
                }
            }
            let exited = self
                .relay
                .as_mut()
                .is_some_and(|r| matches!(r.child.try_wait(), Ok(Some(_))));
            if exited {
                self.check_alive();
                return false;
            }
            if started.elapsed() > Duration::from_secs(30) {
                self.reload_failed("no 'configuration reloaded' within 30 s of SIGHUP");
                return false;
            }
            thread::sleep(ms(10));
        }
    }

    /// A failed reload may leave the route stopped: recorded, then the relay
    /// is restarted (SIGTERM) from the file.
    fn reload_failed(&mut self, what: &str) {
        let msg = format!(
            "t={:.3}s relay {}: {}",
            f64::from(self.sh.ms()) / 1000.0,
            self.sh.inc.load(Relaxed),
            truncate(what, 600)
        );
        self.sh.event(format!("RELOAD FAILED: {msg}"));
        self.reload_failures.push(msg);
        self.term(Term::Recovery);
        self.start_relay("start after a failed reload");
    }

    /// `kill -9` with `memory = 0`, `fsync = "always"` running, then restart.
    fn kill9(&mut self) {
        if !self.cur.safe() {
            let safe = self.cur.made_safe();
            self.counts.prekill_reloads += 1;
            if !self.reload(safe, "before kill -9: memory = 0, fsync = always") {
                return;
            }
        }
        if self.relay.is_none() {
            return;
        }
        self.end_generation();
        self.sh.kills.fetch_add(1, Relaxed);
        let Some(mut r) = self.relay.take() else {
            return;
        };
        self.inc_ended.insert(r.inc, self.sh.ms());
        if let Ok(Some(st)) = r.child.try_wait() {
            let log = r.log.clone();
            self.record_unexpected(
                r.inc,
                &log,
                &format!("relay exited on its own: {}", describe(st)),
            );
        } else {
            self.sh.event(format!("kill -9 relay {}", r.inc));
            let _ = r.child.kill();
            match r.child.wait() {
                Ok(st) if st.signal() == Some(9) => {}
                Ok(st) => {
                    let log = r.log.clone();
                    self.record_unexpected(
                        r.inc,
                        &log,
                        &format!("after kill -9 the relay reported {}", describe(st)),
                    );
                }
                Err(e) => self.other_findings.push(format!("wait after kill -9: {e}")),
            }
            self.counts.kills += 1;
        }
        self.relay = None;
        self.start_relay("start after kill -9");
    }

    /// SIGTERM: must exit 0 within the drain timeout (plus slack).
    fn term(&mut self, kind: Term) {
        self.end_generation();
        let Some(mut r) = self.relay.take() else {
            return;
        };
        self.relay = None;
        let pid = r.pid();
        self.sh.event(format!(
            "SIGTERM relay {}{}",
            r.inc,
            match kind {
                Term::Scheduled => "",
                Term::Recovery => " (recovery)",
                Term::Final => " (final)",
            }
        ));
        if let Err(e) = send_signal(pid, "TERM") {
            self.other_findings.push(e);
        }
        let started = Instant::now();
        let status = loop {
            match r.child.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) => {}
                Err(e) => {
                    self.other_findings.push(format!("wait: {e}"));
                    break None;
                }
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = r.child.kill();
                let _ = r.child.wait();
                break None;
            }
            thread::sleep(ms(10));
        };
        // The last lines of its log.
        self.relay = Some(r);
        self.scan_log();
        let Some(r) = self.relay.take() else {
            return;
        };
        match status {
            Some(st) if st.code() == Some(0) => {
                self.sh.event(format!(
                    "relay {} exited 0 after SIGTERM in {} ms",
                    r.inc,
                    started.elapsed().as_millis()
                ));
            }
            Some(st) => self.record_unexpected(
                r.inc,
                &r.log,
                &format!("SIGTERM ended in {} (expected exit 0)", describe(st)),
            ),
            None => {
                self.record_unexpected(r.inc, &r.log, "no exit within 30 s of SIGTERM (killed)")
            }
        }
        match kind {
            Term::Scheduled => self.counts.terms += 1,
            Term::Recovery => self.counts.recovery_terms += 1,
            Term::Final => {}
        }
    }

    fn restart_after_term(&mut self) {
        if self.rng.bool() {
            let cfg = RouteCfg::random(&mut self.rng, self.args.tmpfs_size, &self.args.memory);
            if self.write_config(&cfg).is_ok() {
                self.cur = cfg;
            }
        }
        self.start_relay("start after SIGTERM");
    }

    fn run_event(&mut self, ev: Ev) {
        match ev {
            Ev::Kill => self.kill9(),
            Ev::Reload => {
                let mut cfg =
                    RouteCfg::random(&mut self.rng, self.args.tmpfs_size, &self.args.memory);
                while cfg == self.cur {
                    cfg = RouteCfg::random(&mut self.rng, self.args.tmpfs_size, &self.args.memory);
                }
                if self.reload(cfg, "scheduled") {
                    self.counts.reloads += 1;
                }
            }
            Ev::Term => {
                self.term(Term::Scheduled);
                self.restart_after_term();
            }
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

// ---------------------------------------------------------- final drain ---

struct DrainOutcome {
    firsts: u64,
    lines: u64,
    note: Option<String>,
}

/// A well-behaved consumer reads until the queue is empty (`/status` depth
/// 0) and nothing came for `idle`, then leaves cleanly.
fn drain(s: &mut Sched, phase: &'static str, idle: Duration) -> DrainOutcome {
    let sh = Arc::clone(&s.sh);
    let mut out = DrainOutcome {
        firsts: 0,
        lines: 0,
        note: None,
    };
    let started = Instant::now();
    let mut last_data = Instant::now();
    let mut last_depth: Option<u64> = None;
    let mut tmp = vec![0u8; 256 * 1024];
    'conn: loop {
        s.check_alive();
        if s.broken {
            out.note = Some("relay could not be started".into());
            return out;
        }
        let Ok(mut stream) = connect_consumer(s.ports.sink, None) else {
            if started.elapsed() > Duration::from_secs(120) {
                out.note = Some("could not connect a consumer for 120 s".into());
                return out;
            }
            thread::sleep(ms(50));
            continue;
        };
        let cc = sh.next_cc.fetch_add(1, Relaxed);
        let kills0 = sh.kills.load(Relaxed);
        let meta = CConn {
            id: cc,
            k: 99,
            inc: sh.inc.load(Relaxed),
            gen: sh.gen.load(Relaxed),
            start_ms: sh.ms(),
            end_ms: 0,
            port: stream.local_addr().map(|a| a.port()).unwrap_or(0),
            rcvbuf: 0,
            plan: "drain",
            end: String::new(),
            lines: 0,
            firsts: 0,
            dups: 0,
            late_dups: 0,
            reorders: 0,
            phase,
            reset_ms: None,
            discarded: 0,
        };
        let mut r = Reader::new(cc);
        let mut last_status = Instant::now() - Duration::from_secs(1);
        loop {
            match stream.read(&mut tmp) {
                Ok(0) => {
                    r.at_eof(&sh, kills0);
                    let m = r.record(&sh, meta, "relay closed (EOF)".into(), phase);
                    out.firsts += m.firsts;
                    out.lines += m.lines;
                    sh.event(format!(
                        "{phase}: relay closed the drain consumer; reconnecting"
                    ));
                    continue 'conn;
                }
                Ok(n) => {
                    r.feed(&sh, &tmp[..n]);
                    last_data = Instant::now();
                }
                Err(e) if io_timeout(&e) => {}
                Err(e) => {
                    let m = r.record(&sh, meta, format!("relay reset: {e}"), phase);
                    out.firsts += m.firsts;
                    out.lines += m.lines;
                    sh.event(format!("{phase}: drain consumer reset ({e}); reconnecting"));
                    continue 'conn;
                }
            }
            if last_status.elapsed() >= ms(500) {
                last_status = Instant::now();
                s.check_alive();
                s.scan_log();
                last_depth = status_depth(s.ports.admin);
            }
            let quiet = last_data.elapsed();
            let done = quiet >= idle && last_depth == Some(0);
            let stuck = quiet >= Duration::from_secs(30);
            if done || stuck || started.elapsed() > Duration::from_secs(300) {
                if !done {
                    out.note = Some(format!(
                        "{phase}: nothing delivered for {:.1} s while /status depth = {last_depth:?} (after {:.1} s)",
                        quiet.as_secs_f64(),
                        started.elapsed().as_secs_f64()
                    ));
                }
                let end = clean_leave(&sh, &mut stream, &mut r, kills0, &mut tmp);
                let m = r.record(&sh, meta, end.clone(), phase);
                out.firsts += m.firsts;
                out.lines += m.lines;
                sh.event(format!(
                    "{phase}: done after {:.1} s, depth {last_depth:?}, {} lines ({} first receipts) on the last connection; {end}",
                    started.elapsed().as_secs_f64(),
                    m.lines,
                    m.firsts
                ));
                return out;
            }
        }
    }
}

fn status_depth(admin: SocketAddr) -> Option<u64> {
    let (code, body) = http_get(admin, "/status").ok()?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v.get("routes")?
        .as_array()?
        .iter()
        .filter_map(|r| r.get("depth")?.get("messages")?.as_u64())
        .reduce(|a, b| a + b)
}

// -------------------------------------------------------------- analysis ---

struct LostRange {
    p: u8,
    c: u32,
    from: u32,
    to: u32,
}

fn fmt_s(ms: u32) -> String {
    format!("{:.3}s", f64::from(ms) / 1000.0)
}

fn grep_log(path: &Path, needle: &str, max: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains(needle))
        .take(max)
        .map(|l| truncate(l, 400))
        .collect()
}

fn main() {
    let args = parse_args();
    if let Err(e) = std::fs::create_dir_all(&args.work) {
        usage(&format!("cannot create {}: {e}", args.work.display()));
    }
    let ports = free_ports().unwrap_or_else(|e| usage(&format!("no free ports: {e}")));
    let seed = args.seed;
    let t0_epoch_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let sh = Arc::new(Shared {
        t0: Instant::now(),
        t0_epoch_ms,
        stop_producers: AtomicBool::new(false),
        stop_consumers: AtomicBool::new(false),
        hard_stop: AtomicBool::new(false),
        flood: AtomicBool::new(false),
        kills: AtomicU64::new(0),
        inc: AtomicU32::new(0),
        gen: AtomicU32::new(0),
        next_cc: AtomicU32::new(1),
        conns: Mutex::new(HashMap::new()),
        cconns: Mutex::new(Vec::new()),
        reorders: Mutex::new(Vec::new()),
        partials: Mutex::new(Partials::default()),
        timeline: Mutex::new(Vec::new()),
    });
    let mut rng = fastrand::Rng::with_seed(seed);
    let first = RouteCfg::random(&mut rng, args.tmpfs_size, &args.memory);
    eprintln!(
        "torture: seed {seed} (replay the schedule with --seed {seed}); duration {} s; \
         {} kill -9, {} reloads, {} SIGTERM; spool {} ({}); work {}",
        args.duration.as_secs(),
        args.kills,
        args.reloads,
        args.terms,
        args.spool.display(),
        match args.tmpfs_size {
            Some(t) => format!("tmpfs of {}", size(t)),
            None => "NOT a tmpfs: max_disk is the only bound".into(),
        },
        args.work.display()
    );
    eprintln!(
        "torture: source {}, sink {}, admin {}",
        ports.source, ports.sink, ports.admin
    );
    let mut s = Sched {
        sh: Arc::clone(&sh),
        rng,
        config: args.work.join("spillway.toml"),
        ports,
        relay: None,
        cur: first.clone(),
        counts: Counts::default(),
        unexpected: Vec::new(),
        reload_failures: Vec::new(),
        other_findings: Vec::new(),
        error_lines: Vec::new(),
        error_count: 0,
        warn_counts: HashMap::new(),
        enospc: 0,
        enospc_gen: 0,
        blocked: 0,
        blocked_gen: 0,
        disk: DiskWatch::default(),
        broken: false,
        gen_causes: HashMap::new(),
        inc_ended: HashMap::new(),
        tmpfs_now: args.tmpfs_size,
        tmpfs_grown: 0,
        readyz_early: 0,
        readyz_early_failed: 0,
        incident_of: HashMap::new(),
        inc_started: HashMap::new(),
        args,
    };
    if let Err(e) = s.write_config(&first) {
        usage(&e);
    }
    if !s.start_relay("first start") {
        eprintln!(
            "torture: the relay does not start; see {}",
            s.log_path(1).display()
        );
        std::process::exit(2);
    }

    // The schedule: every event at a stratified random time in the chaos
    // window; flood phases (consumers slow, the disk fills) in between.
    let total = (s.args.kills + s.args.reloads + s.args.terms) as usize;
    let mut events: Vec<Ev> = std::iter::repeat_n(Ev::Kill, s.args.kills as usize)
        .chain(std::iter::repeat_n(Ev::Reload, s.args.reloads as usize))
        .chain(std::iter::repeat_n(Ev::Term, s.args.terms as usize))
        .collect();
    s.rng.shuffle(&mut events);
    let reserve = Duration::from_secs(60).min(s.args.duration / 4);
    let chaos = s.args.duration.saturating_sub(reserve);
    let times: Vec<Duration> = (0..total)
        .map(|i| chaos.mul_f64((i as f64 + s.rng.f64()) / total.max(1) as f64))
        .collect();
    let mut floods = Vec::new();
    let mut t = Duration::from_secs(s.rng.u64(3..10));
    while t < chaos {
        let len = Duration::from_secs(s.rng.u64(8..25));
        floods.push((t, (t + len).min(chaos)));
        t += len + Duration::from_secs(s.rng.u64(5..20));
    }

    let mut threads = Vec::new();
    for p in 0..s.args.producers {
        let (sh2, addr, rate) = (Arc::clone(&sh), s.ports.source, s.args.rate);
        let r = fastrand::Rng::with_seed(seed.wrapping_mul(31).wrapping_add(u64::from(p) + 1));
        threads.push((
            "producer",
            thread::spawn(move || producer(sh2, p, r, addr, rate)),
        ));
    }
    for k in 0..s.args.consumers {
        let (sh2, addr, ends) = (Arc::clone(&sh), s.ports.sink, s.args.consumer_ends.clone());
        let r = fastrand::Rng::with_seed(seed.wrapping_mul(37).wrapping_add(u64::from(k) + 101));
        threads.push((
            "consumer",
            thread::spawn(move || consumer(sh2, k, r, addr, ends)),
        ));
    }

    let begin = Instant::now();
    let mut flood_i = 0;
    // Traffic (and flood phases) until `at`, watching the relay.
    let mut advance_to = |s: &mut Sched, at: Instant| {
        while Instant::now() < at && !s.broken {
            let now = begin.elapsed();
            let want = floods
                .get(flood_i)
                .is_some_and(|&(a, b)| now >= a && now < b);
            if want != sh.flood.load(Relaxed) {
                sh.flood.store(want, Relaxed);
                sh.event(format!(
                    "flood {} (consumers {})",
                    if want { "on" } else { "off" },
                    if want { "slow: the disk fills" } else { "fast" }
                ));
            }
            if floods.get(flood_i).is_some_and(|&(_, b)| now >= b) {
                flood_i += 1;
            }
            let step = (begin + now + ms(200)).min(at);
            s.idle_until(step);
        }
    };
    for (i, ev) in events.iter().enumerate() {
        if s.broken || begin.elapsed() > chaos + reserve / 2 {
            sh.event(format!(
                "schedule stopped after {i} of {total} events ({})",
                if s.broken {
                    "relay broken"
                } else {
                    "time budget"
                }
            ));
            break;
        }
        // At least 300 ms of traffic between two events.
        let at = (begin + times[i]).max(Instant::now() + ms(300));
        advance_to(&mut s, at);
        sh.event(format!("event {}/{total}: {ev:?}", i + 1));
        s.run_event(*ev);
    }
    // The rest of the chaos window (all of it when nothing is scheduled).
    advance_to(&mut s, begin + chaos);
    sh.flood.store(false, Relaxed);
    let chaos_ms = sh.ms();

    // Wind down: producers end their connection cleanly, then consumers stop.
    sh.event("chaos over: producers finish their connections".into());
    sh.stop_producers.store(true, Relaxed);
    let wind = Instant::now();
    while threads
        .iter()
        .any(|(k, h)| *k == "producer" && !h.is_finished())
    {
        if wind.elapsed() > Duration::from_secs(120) {
            s.other_findings
                .push("producers did not finish within 120 s of the end of the chaos".into());
            sh.hard_stop.store(true, Relaxed);
        }
        s.idle_until(Instant::now() + ms(100));
    }
    sh.event("producers done; consumers stop".into());
    sh.stop_consumers.store(true, Relaxed);
    while threads.iter().any(|(_, h)| !h.is_finished()) {
        if wind.elapsed() > Duration::from_secs(180) {
            sh.hard_stop.store(true, Relaxed);
        }
        s.idle_until(Instant::now() + ms(100));
    }
    for (_, h) in threads {
        if h.join().is_err() {
            s.other_findings.push("a peer thread panicked".into());
        }
    }

    // Final drain, final SIGTERM, restart, drain again, SIGTERM.
    sh.event("final drain".into());
    let d1 = drain(&mut s, "final drain", Duration::from_secs(3));
    if let Some(n) = &d1.note {
        s.other_findings.push(n.clone());
    }
    s.term(Term::Final);
    s.start_relay("start after the final SIGTERM");
    let d2 = drain(&mut s, "after restart", Duration::from_secs(3));
    if let Some(n) = &d2.note {
        s.other_findings.push(n.clone());
    }
    if d2.firsts > 0 {
        s.other_findings.push(format!(
            "{} messages were delivered for the first time only after the final restart \
             (the first drain had reported depth 0 and nothing more coming)",
            d2.firsts
        ));
    }
    s.term(Term::Final);
    sh.hard_stop.store(true, Relaxed);
    let inspect = Command::new(&s.args.bin)
        .args(["spool", "inspect"])
        .arg(&s.args.spool)
        .output()
        .map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .unwrap_or_else(|e| format!("spool inspect failed: {e}"));
    // What is still in the spool (from the cursor on), read offline.
    let left: std::collections::HashSet<(u8, u32, u32)> = Command::new(&s.args.bin)
        .args(["spool", "dump"])
        .arg(&s.args.spool)
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            o.stdout
                .split(|&b| b == b'\n')
                .filter_map(parse_line)
                .collect()
        })
        .unwrap_or_default();
    let code = report(&s, chaos_ms, &d1, &d2, &inspect, &left);
    std::process::exit(code);
}

/// A "consumer closed" line of a relay log.
struct RelayClose {
    ms: u32,
    reason: String,
    delivered: u64,
    requeued: u64,
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-12-04T22:29:20.612713Z` as ms since the epoch.
fn parse_ts(ts: &str) -> Option<u64> {
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, mo, da) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, mi) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    let days = days_from_civil(y, mo, da);
    let ms = ((days * 86_400 + h * 3600 + mi * 60) * 1000) as f64 + sec * 1000.0;
    (ms >= 0.0).then_some(ms as u64)
}

/// Every relay's "consumer closed" (or "producer closed") lines, by
/// (incarnation, peer port), with times on the driver's clock.
fn relay_closes(s: &Sched, role: &str) -> HashMap<(u32, u16), Vec<RelayClose>> {
    let mut out: HashMap<(u32, u16), Vec<RelayClose>> = HashMap::new();
    let needle = format!("\"{role} closed\"");
    for inc in 1..=s.sh.inc.load(Relaxed) {
        let text = std::fs::read_to_string(s.log_path(inc)).unwrap_or_default();
        for l in text.lines().filter(|l| l.contains(&needle)) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
                continue;
            };
            let port = v
                .get(role)
                .and_then(|x| x.as_str())
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse::<u16>().ok());
            let at = v
                .get("timestamp")
                .and_then(|x| x.as_str())
                .and_then(parse_ts);
            let (Some(port), Some(at)) = (port, at) else {
                continue;
            };
            let num = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
            out.entry((inc, port)).or_default().push(RelayClose {
                ms: at.saturating_sub(s.sh.t0_epoch_ms) as u32,
                reason: v
                    .get("reason")
                    .and_then(|x| x.as_str())
                    .unwrap_or("?")
                    .to_string(),
                // Producers: messages appended.
                delivered: num("delivered").max(num("messages")),
                requeued: num("requeued"),
            });
        }
    }
    out
}

/// The relay's close of consumer connection `c`: the first logged at or
/// after its start.
fn relay_close_of<'a>(
    closes: &'a HashMap<(u32, u16), Vec<RelayClose>>,
    c: &CConn,
) -> Option<&'a RelayClose> {
    first_close(closes, c.inc, c.port, c.start_ms)
}

fn first_close(
    closes: &HashMap<(u32, u16), Vec<RelayClose>>,
    inc: u32,
    port: u16,
    start_ms: u32,
) -> Option<&RelayClose> {
    closes
        .get(&(inc, port))?
        .iter()
        .filter(|r| r.ms + 50 >= start_ms)
        .min_by_key(|r| r.ms)
}

/// Why a message counts as accepted.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Why {
    CleanEnd,
    KernelHeld,
    BelowReceived,
}

#[allow(clippy::too_many_lines)]
fn report(
    s: &Sched,
    chaos_ms: u32,
    d1: &DrainOutcome,
    d2: &DrainOutcome,
    inspect: &str,
    left: &std::collections::HashSet<(u8, u32, u32)>,
) -> i32 {
    let sh = &s.sh;
    let closes = relay_closes(s, "consumer");
    let pcloses = relay_closes(s, "producer");
    let conns = lock(&sh.conns);
    let cconns = lock(&sh.cconns);
    let reorders = lock(&sh.reorders);
    let partials = lock(&sh.partials);
    let timeline = lock(&sh.timeline);
    let by_id: HashMap<u32, &CConn> = cconns.iter().map(|c| (c.id, c)).collect();
    let mut out = String::new();

    // A message a consumer reset away unread is excused only when the relay
    // had already closed that connection (so it could not know).
    let excused_discard = |cc: u32| -> bool {
        let Some(c) = by_id.get(&cc) else {
            return false;
        };
        let Some(reset) = c.reset_ms else {
            return false;
        };
        // The relay process was already dead (kill -9, crash) when we reset...
        if s.inc_ended.get(&c.inc).is_some_and(|&t| t <= reset) {
            return true;
        }
        // ...or had closed this connection itself before our reset came.
        relay_close_of(&closes, c).is_some_and(|rc| rc.ms <= reset + 5)
    };

    let mut sent = 0u64;
    let mut accepted = 0u64;
    let mut accepted_by: HashMap<Why, u64> = HashMap::new();
    let mut received = 0u64;
    let mut receipts = 0u64;
    let mut dup_msgs = 0u64;
    let mut max_copies = 0u16;
    let mut unknown = 0u64;
    let mut over_sent = 0u64;
    let mut excused = 0u64;
    let mut lost_ranges: Vec<(LostRange, Why, u32)> = Vec::new();
    let mut ends: HashMap<String, u64> = HashMap::new();
    let mut keys: Vec<&(u8, u32)> = conns.keys().collect();
    keys.sort();
    for key in keys {
        let pc = &conns[key];
        sent += u64::from(pc.sent);
        let end_class = if pc.clean {
            "clean".to_string()
        } else {
            let e = pc.end.split(':').next().unwrap_or("").to_string();
            if pc.handed_ms.is_some() && pc.kill_free {
                format!("{e} (relay's kernel held all + FIN)")
            } else {
                e
            }
        };
        *ends.entry(end_class).or_default() += 1;
        let highest = pc
            .slots
            .iter()
            .rposition(|x| x.count > 0)
            .map_or(0, |i| i as u32 + 1);
        let whole = if pc.clean || (pc.handed_ms.is_some() && pc.kill_free) {
            pc.sent
        } else {
            0
        };
        let acc = whole.max(highest);
        over_sent += u64::from(highest.saturating_sub(pc.sent));
        accepted += u64::from(acc);
        let mut run: Option<(u32, Why, u32)> = None;
        for i in 0..acc {
            let slot = pc.slots.get(i as usize).copied().unwrap_or_default();
            let why = if i < highest {
                Why::BelowReceived
            } else if pc.clean {
                Why::CleanEnd
            } else {
                Why::KernelHeld
            };
            *accepted_by.entry(why).or_default() += 1;
            let lost_here =
                slot.count == 0 && !(slot.discarded_cc != 0 && excused_discard(slot.discarded_cc));
            if slot.count == 0 && !lost_here {
                excused += 1;
            }
            if lost_here {
                match &mut run {
                    Some((_, w, d)) if *w == why && *d == slot.discarded_cc => {}
                    _ => {
                        if let Some((from, w, d)) = run.take() {
                            lost_ranges.push((
                                LostRange {
                                    p: key.0,
                                    c: key.1,
                                    from,
                                    to: i - 1,
                                },
                                w,
                                d,
                            ));
                        }
                        run = Some((i, why, slot.discarded_cc));
                    }
                }
            } else if let Some((from, w, d)) = run.take() {
                lost_ranges.push((
                    LostRange {
                        p: key.0,
                        c: key.1,
                        from,
                        to: i - 1,
                    },
                    w,
                    d,
                ));
            }
        }
        if let Some((from, w, d)) = run {
            lost_ranges.push((
                LostRange {
                    p: key.0,
                    c: key.1,
                    from,
                    to: acc - 1,
                },
                w,
                d,
            ));
        }
        for x in &pc.slots {
            if x.count > 0 {
                received += 1;
                receipts += u64::from(x.count);
                if x.count > 1 {
                    dup_msgs += 1;
                }
                max_copies = max_copies.max(x.count);
            }
        }
        unknown += u64::from(pc.sent.saturating_sub(acc));
    }
    let lost: u64 = lost_ranges
        .iter()
        .map(|(r, _, _)| u64::from(r.to - r.from + 1))
        .sum();
    // Each lost range's most likely cause, from the relay's own log lines.
    let cause_of = |r: &LostRange, dcc: u32| -> &'static str {
        let pc = &conns[&(r.p, r.c)];
        if dcc != 0 {
            return match by_id.get(&dcc).and_then(|c| relay_close_of(&closes, c)) {
                Some(rc) if matches!(rc.reason.as_str(), "consumer_reset" | "write_stall" | "peer_timeout") => {
                    match by_id.get(&dcc).and_then(|c| s.inc_ended.get(&c.inc)) {
                        Some(&killed) if killed >= rc.ms => {
                            "unread in a consumer that reset; the relay saw the reset and queued them \
                             again, then was killed (kill -9) before re-sending them (that queue is in memory only)"
                        }
                        _ => "unread in a consumer that reset; the relay saw the reset but did not re-send them",
                    }
                }
                Some(_) => {
                    "unread in a consumer that reset while the relay was still finishing a clean cut \
                     (EOF / shutdown / reload / max_lifetime): the reset was not treated as one, nothing re-sent"
                }
                None => match by_id.get(&dcc) {
                    Some(c) if c.reset_ms.is_some() && s.inc_ended.contains_key(&c.inc) => {
                        "unread in a consumer that reset while the relay still held the connection; \
                         the relay was killed (kill -9) before it closed it (a re-send window lives in memory only)"
                    }
                    _ => "unread in a consumer that reset; no relay close line for it",
                },
            };
        }
        if (r.from..=r.to).any(|s| left.contains(&(r.p, r.c, s))) {
            return "still in the spool at the end, never delivered (the relay could not deliver it)";
        }
        let appended_per_log = first_close(&pcloses, pc.inc, pc.port, pc.start_ms)
            .map(|rc| (rc.reason.as_str(), rc.delivered));
        match appended_per_log {
            Some(("refused", kept)) if u64::from(r.to) >= kept => {
                "read by the relay, then refused when the route stopped while blocked on a full disk \
                 ('cannot queue this producer's messages; closing it')"
            }
            Some((_, appended)) if u64::from(r.to) < appended => {
                "appended (the relay's 'producer closed' count covers it), never delivered, \
                 and gone from the spool: acknowledged or deleted without delivery"
            }
            _ if pc.slots.iter().skip(r.to as usize + 1).any(|x| x.count > 0) => {
                "appended (a later message of its connection was delivered), never delivered, \
                 and gone from the spool: acknowledged or deleted without delivery"
            }
            _ => "never seen by any consumer; no cause identified from the logs",
        }
    };
    let mut lost_by_cause: HashMap<String, u64> = HashMap::new();
    for (r, _, dcc) in &lost_ranges {
        *lost_by_cause
            .entry(cause_of(r, *dcc).to_string())
            .or_default() += u64::from(r.to - r.from + 1);
    }
    let dups = receipts - received;

    // Reorders: explained when another consumer connection overlapped.
    let mut first_other: HashMap<u32, u32> = HashMap::new();
    for a in cconns.iter() {
        let t = cconns
            .iter()
            .filter(|b| b.id != a.id && b.end_ms + 5000 >= a.start_ms)
            .map(|b| b.start_ms)
            .min();
        if let Some(t) = t {
            first_other.insert(a.id, t);
        }
    }
    let unexplained: Vec<&Reorder> = reorders
        .iter()
        .filter(|e| first_other.get(&e.cc).is_none_or(|&t| e.ms < t))
        .collect();
    let drain_reorders = reorders
        .iter()
        .filter(|e| by_id.get(&e.cc).is_some_and(|c| c.phase != "chaos"))
        .count();
    let max_dups_conn = cconns.iter().map(|c| c.dups).max().unwrap_or(0);
    let conns_with_dups = cconns.iter().filter(|c| c.dups > 0).count();
    let late_dups: u64 = cconns.iter().map(|c| c.late_dups).sum();
    // Duplicates per route generation, by what started it.
    let mut gen_dups: HashMap<u32, u64> = HashMap::new();
    for c in cconns.iter() {
        *gen_dups.entry(c.gen).or_default() += c.dups;
    }
    let mut cause_dups: HashMap<String, (u64, u64, u64)> = HashMap::new();
    for (g, cause) in &s.gen_causes {
        let d = gen_dups.get(g).copied().unwrap_or(0);
        let e = cause_dups.entry(cause.clone()).or_default();
        e.0 += 1;
        e.1 += d;
        e.2 = e.2.max(d);
    }
    let mut cends: HashMap<String, u64> = HashMap::new();
    for c in cconns.iter() {
        let e = c.end.split(':').next().unwrap_or("").to_string();
        *cends.entry(format!("{} -> {e}", c.plan)).or_default() += 1;
    }
    // How long after our end the relay closed each consumer connection.
    let mut delays: HashMap<&str, Vec<i64>> = HashMap::new();
    for c in cconns.iter() {
        if let Some(rc) = relay_close_of(&closes, c) {
            let ours = c.reset_ms.unwrap_or(c.end_ms);
            delays
                .entry(c.plan)
                .or_default()
                .push(i64::from(rc.ms) - i64::from(ours));
        }
    }
    let discarded: u64 = cconns.iter().map(|c| c.discarded).sum();
    let partial_total = partials.mid_stream + partials.torn_tail_clean_eof + partials.phantom;
    let unexpected = s.unexpected.len();
    let c = &s.counts;

    let _ = writeln!(out, "\n## spillway torture soak: seed {}\n", s.args.seed);
    let _ = writeln!(out, "| | |\n|---|---|");
    let row = |out: &mut String, k: &str, v: String| {
        let _ = writeln!(out, "| {k} | {v} |");
    };
    row(
        &mut out,
        "seed",
        format!(
            "{} (replay: `bench/torture.sh --seed {}`)",
            s.args.seed, s.args.seed
        ),
    );
    row(
        &mut out,
        "elapsed",
        format!(
            "{:.1} s (chaos {:.1} s, then wind-down, drain and restart check)",
            sh.t0.elapsed().as_secs_f64(),
            f64::from(chaos_ms) / 1000.0
        ),
    );
    row(
        &mut out,
        "producer connections",
        format!("{} ({})", conns.len(), fmt_map(&ends)),
    );
    row(&mut out, "messages sent (fully written)", sent.to_string());
    row(
        &mut out,
        "accepted (lower bound)",
        format!(
            "{accepted}: below a received sequence {}, clean end {}, relay's kernel held every byte + FIN (no kill -9) {}",
            accepted_by.get(&Why::BelowReceived).copied().unwrap_or(0),
            accepted_by.get(&Why::CleanEnd).copied().unwrap_or(0),
            accepted_by.get(&Why::KernelHeld).copied().unwrap_or(0)
        ),
    );
    row(
        &mut out,
        "sent, fate unknowable (not accepted, never received)",
        unknown.to_string(),
    );
    row(
        &mut out,
        "received (distinct)",
        format!("{received} in {receipts} receipts"),
    );
    row(
        &mut out,
        "**lost**",
        format!(
            "**{lost}** in {} ranges ({})",
            lost_ranges.len(),
            fmt_map(&lost_by_cause)
        ),
    );
    row(
        &mut out,
        "excused, not counted as lost",
        format!(
            "{excused}: reset away unread by a consumer after the relay had already closed that connection \
             (its kernel had acknowledged them; the relay cannot know). {discarded} messages were unread at consumer resets in all"
        ),
    );
    row(
        &mut out,
        "duplicated",
        format!(
            "{dups} extra receipts of {dup_msgs} messages; max copies of one message {max_copies}; \
             max on one consumer connection {max_dups_conn}; {conns_with_dups} connections saw any"
        ),
    );
    let mut cd: Vec<_> = cause_dups.iter().collect();
    cd.sort();
    row(
        &mut out,
        "duplicates by route generation",
        cd.iter()
            .map(|(k, (n, d, m))| format!("{k}: {n} generations, {d} dups, max {m}"))
            .collect::<Vec<_>>()
            .join("; "),
    );
    row(
        &mut out,
        "reordered first receipts",
        format!(
            "{} ({} unexplained: no other consumer connection overlapped; {} in the final drain / restart check); \
             late redeliveries (duplicates below the max seen) {late_dups}",
            reorders.len(),
            unexplained.len(),
            drain_reorders
        ),
    );
    row(
        &mut out,
        "**partial / torn**",
        format!(
            "**{partial_total}** (mid-stream {}, torn tail at a clean EOF {}, phantom {}); excused: torn tail across kill -9 {}",
            partials.mid_stream, partials.torn_tail_clean_eof, partials.phantom, partials.torn_tail_kill
        ),
    );
    row(
        &mut out,
        "received beyond what was counted sent",
        over_sent.to_string(),
    );
    row(
        &mut out,
        "kill -9 / reloads / SIGTERM done",
        format!(
            "{} / {} / {} of {} / {} / {} scheduled (+{} reloads to memory=0,fsync=always before kills, \
             +{} recovery SIGTERMs, +2 final SIGTERMs; {} relay starts)",
            c.kills,
            c.reloads,
            c.terms,
            s.args.kills,
            s.args.reloads,
            s.args.terms,
            c.prekill_reloads,
            c.recovery_terms,
            c.restarts
        ),
    );
    row(
        &mut out,
        "**unexpected exits**",
        format!("**{unexpected}**"),
    );
    row(
        &mut out,
        "reload failures",
        s.reload_failures.len().to_string(),
    );
    row(
        &mut out,
        "disk",
        format!(
            "max spool {} of a {} tmpfs{}; {} of {} samples within 512 KiB of full; ENOSPC (relay counter) {}; \
             blocked appends {}",
            size(s.disk.max_bytes),
            s.args.tmpfs_size.map_or("(none)".into(), size),
            match (s.tmpfs_grown, s.tmpfs_now) {
                (0, _) | (_, None) => String::new(),
                (n, Some(now)) => format!(" (grown {n} times to {} to unwedge the relay)", size(now)),
            },
            s.disk.full_samples,
            s.disk.samples,
            s.enospc,
            s.blocked
        ),
    );
    row(
        &mut out,
        "consumer connections",
        format!("{} ({})", cconns.len(), fmt_map(&cends)),
    );
    let mut dl: Vec<_> = delays.iter().collect();
    dl.sort();
    row(
        &mut out,
        "relay's close of a consumer, after ours (ms)",
        dl.iter()
            .map(|(plan, v)| {
                let mut v = (*v).clone();
                v.sort_unstable();
                let q = |f: f64| v[((v.len() - 1) as f64 * f) as usize];
                format!(
                    "{plan}: n={} median {} p99 {} max {}, over 1 s: {}",
                    v.len(),
                    q(0.5),
                    q(0.99),
                    q(1.0),
                    v.iter().filter(|&&d| d > 1000).count()
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
    );
    row(
        &mut out,
        "final drain / restart check",
        format!(
            "{} lines ({} first receipts) / {} lines ({} first receipts)",
            d1.lines, d1.firsts, d2.lines, d2.firsts
        ),
    );
    row(&mut out, "relay ERROR log lines", s.error_count.to_string());

    let _ = writeln!(out, "\n### Findings\n");
    if unexpected > 0 {
        let _ = writeln!(out, "**Unexpected exits ({unexpected}):**\n");
        for u in &s.unexpected {
            let _ = writeln!(out, "```\n{u}```");
        }
    }
    if !s.reload_failures.is_empty() {
        let _ = writeln!(out, "**Reload failures:**\n");
        for f in &s.reload_failures {
            let _ = writeln!(out, "- {f}");
        }
    }
    if !lost_ranges.is_empty() {
        let _ = writeln!(
            out,
            "**Lost messages ({lost} in {} ranges; up to 4 per cause shown, all in lost.log):**\n",
            lost_ranges.len()
        );
        let mut shown: HashMap<&str, usize> = HashMap::new();
        let mut all = String::new();
        for (r, why, dcc) in &lost_ranges {
            let pc = &conns[&(r.p, r.c)];
            let _ = writeln!(
                all,
                "p{} c{} s{}..s{} ({} msgs) {why:?} relay {} port {} {}..{} end '{}' discarded_by {} cause: {}",
                r.p, r.c, r.from, r.to, r.to - r.from + 1, pc.inc, pc.port, fmt_s(pc.start_ms),
                fmt_s(pc.end_ms), pc.end, dcc, cause_of(r, *dcc)
            );
        }
        let _ = std::fs::write(s.args.work.join("lost.log"), all);
        for (r, why, dcc) in &lost_ranges {
            let n = shown.entry(cause_of(r, *dcc)).or_default();
            *n += 1;
            if *n > 4 {
                continue;
            }
            let pc = &conns[&(r.p, r.c)];
            let describe_cc = |id: u32| -> String {
                by_id.get(&id).map_or("?".into(), |c| {
                    let rc =
                        relay_close_of(&closes, c).map_or("no relay close line".into(), |rc| {
                            format!(
                                "relay closed it at {} reason {} delivered {} requeued {}",
                                fmt_s(rc.ms),
                                rc.reason,
                                rc.delivered,
                                rc.requeued
                            )
                        });
                    format!(
                        "plan {}, end '{}', rcvbuf {}, port {}, {}..{}{}; {rc}",
                        c.plan,
                        c.end,
                        c.rcvbuf,
                        c.port,
                        fmt_s(c.start_ms),
                        fmt_s(c.end_ms),
                        c.reset_ms
                            .map_or(String::new(), |t| format!(", our reset at {}", fmt_s(t)))
                    )
                })
            };
            let neighbour = |s: Option<u32>| -> String {
                let Some(s) = s else { return "-".into() };
                match pc.slots.get(s as usize) {
                    Some(x) if x.count > 0 => format!(
                        "s{s} first received at {} by consumer connection {} ({})",
                        fmt_s(x.first_ms),
                        x.first_cc,
                        describe_cc(x.first_cc)
                    ),
                    _ => format!("s{s} not received"),
                }
            };
            let _ = writeln!(out, "- **{}**", cause_of(r, *dcc));
            let _ = writeln!(
                out,
                "  p{} c{} s{}..s{} ({} msgs, accepted as {why:?}): connection to relay {} port {}, {}..{}, \
                 planned {}, sent {}, end '{}'{}",
                r.p,
                r.c,
                r.from,
                r.to,
                r.to - r.from + 1,
                pc.inc,
                pc.port,
                fmt_s(pc.start_ms),
                fmt_s(pc.end_ms),
                pc.planned,
                pc.sent,
                pc.end,
                pc.handed_ms.map_or(String::new(), |t| format!(
                    ", relay's kernel held every byte + FIN at {}",
                    fmt_s(t)
                ))
            );
            if *dcc != 0 {
                let _ = writeln!(
                    out,
                    "  - unread in consumer connection {dcc} when it reset: {}",
                    describe_cc(*dcc)
                );
            }
            let on_disk = (r.from..=r.to)
                .filter_map(|i| pc.slots.get(i as usize))
                .map(|x| x.spool_inc)
                .max()
                .unwrap_or(0);
            if on_disk > 0 {
                let _ = writeln!(
                    out,
                    "  - in the spool (undelivered) when relay {on_disk} started; not when the next relay started: \
                     it left the disk during relay {on_disk}"
                );
            }
            let _ = writeln!(out, "  - before: {}", neighbour(r.from.checked_sub(1)));
            let _ = writeln!(out, "  - after: {}", neighbour(Some(r.to + 1)));
            let log = s.log_path(pc.inc);
            for l in grep_log(&log, &format!("127.0.0.1:{}\"", pc.port), 4) {
                let _ = writeln!(out, "  - relay-{:03}.log: `{l}`", pc.inc);
            }
            let (a, b) = (
                pc.start_ms.saturating_sub(3000),
                pc.end_ms.max(pc.start_ms) + 3000,
            );
            for (t, e) in timeline.iter().filter(|(t, _)| *t >= a && *t <= b).take(12) {
                let _ = writeln!(out, "  - [{}] {e}", fmt_s(*t));
            }
        }
        let mut by: HashMap<String, u64> = HashMap::new();
        for (r, why, _) in &lost_ranges {
            let pc = &conns[&(r.p, r.c)];
            *by.entry(format!(
                "relay {} / {why:?} / end '{}'",
                pc.inc,
                truncate(&pc.end, 40)
            ))
            .or_default() += u64::from(r.to - r.from + 1);
        }
        let _ = writeln!(
            out,
            "\nLost by relay incarnation, why accepted and producer end: {}\n",
            fmt_map(&by)
        );
        // Lost messages that were on disk at some relay start and gone at
        // the next: the incarnation that removed them, and what it went through.
        let mut vanished: HashMap<u32, u64> = HashMap::new();
        for (r, _, dcc) in &lost_ranges {
            let cause = cause_of(r, *dcc);
            if !(cause.contains("gone from the spool") || cause.contains("no cause identified")) {
                continue;
            }
            let pc = &conns[&(r.p, r.c)];
            for i in r.from..=r.to {
                let inc = pc.slots.get(i as usize).map_or(0, |x| x.spool_inc);
                if inc > 0 {
                    *vanished.entry(inc).or_default() += 1;
                }
            }
        }
        if !vanished.is_empty() {
            let _ = writeln!(
                out,
                "Lost messages never delivered that were in the spool when a relay started and gone when the \
                 next one started (the offline dump between processes), by the relay that removed them:\n"
            );
            let mut v: Vec<_> = vanished.into_iter().collect();
            v.sort_unstable();
            for (inc, n) in v {
                let (start, end) = (
                    s.inc_started.get(&inc).copied().unwrap_or(0),
                    s.inc_started.get(&(inc + 1)).copied().unwrap_or(u32::MAX),
                );
                let what: Vec<String> = timeline
                    .iter()
                    .filter(|(t, _)| *t >= start && *t < end)
                    .map(|(_, e)| e)
                    .filter(|e| {
                        e.starts_with("SIGHUP")
                            || e.starts_with("kill -9")
                            || e.starts_with("SIGTERM")
                            || e.starts_with("flood")
                            || e.starts_with("UNEXPECTED")
                            || e.starts_with("reload done")
                    })
                    .map(|e| truncate(e, 70))
                    .collect();
                let _ = writeln!(
                    out,
                    "- relay {inc} ({}..{}): {n} messages; it went through: {}",
                    fmt_s(start),
                    if end == u32::MAX {
                        "end".into()
                    } else {
                        fmt_s(end)
                    },
                    what.join(" / ")
                );
            }
            let _ = writeln!(out);
        }
    }
    if partial_total + partials.torn_tail_kill > 0 {
        let _ = writeln!(out, "**Partial / torn lines (first 20):**\n");
        for e in &partials.examples {
            let _ = writeln!(out, "- {e}");
        }
    }
    if !unexplained.is_empty() {
        let _ = writeln!(out, "\n**Unexplained reorders (first 10):**\n");
        for e in unexplained.iter().take(10) {
            let _ = writeln!(
                out,
                "- consumer connection {} at {}: p{} c{} s{} after s{}",
                e.cc,
                fmt_s(e.ms),
                e.p,
                e.c,
                e.s,
                e.seen_max
            );
        }
    }
    if s.readyz_early > 0 {
        let _ = writeln!(
            out,
            "\n**/readyz said 200 before the route was ready** at {} of {} starts ({} of those relays then \
             failed to start): readiness is not \"every configured route is serving\" during start-up.",
            s.readyz_early, s.counts.restarts, s.readyz_early_failed
        );
    }
    if !s.other_findings.is_empty() {
        let _ = writeln!(out, "\n**Other observations:**\n");
        for f in &s.other_findings {
            let _ = writeln!(out, "- {f}");
        }
    }
    if !s.error_lines.is_empty() {
        let _ = writeln!(out, "\n**Relay ERROR lines (first 40):**\n");
        for l in &s.error_lines {
            let _ = writeln!(out, "- `{}`", truncate(l, 500));
        }
    }
    if !s.warn_counts.is_empty() {
        let mut w: Vec<_> = s.warn_counts.iter().collect();
        w.sort_by(|a, b| b.1.cmp(a.1));
        let _ = writeln!(out, "\n**Relay WARN messages (count):**\n");
        for (m, n) in w.iter().take(12) {
            let _ = writeln!(out, "- {n} x {}", truncate(m, 160));
        }
    }
    let _ = writeln!(
        out,
        "\n**Spool at the end (`spillway spool inspect`):**\n\n```\n{inspect}```"
    );
    let _ = writeln!(
        out,
        "\nLogs: {}/relay-NNN.log (one per relay process), timeline.log, producers.log, consumers.log",
        s.args.work.display()
    );

    let verdict = lost > 0 || partial_total > 0 || unexpected > 0;
    let _ = writeln!(
        out,
        "\nVERDICT: {} (lost {lost}, partial {partial_total}, unexpected exits {unexpected})",
        if verdict { "FAIL" } else { "PASS" }
    );
    print!("{out}");
    let _ = std::fs::write(s.args.work.join("summary.md"), &out);
    let mut tl = String::new();
    for (t, e) in timeline.iter() {
        let _ = writeln!(tl, "[{}] {e}", fmt_s(*t));
    }
    let _ = std::fs::write(s.args.work.join("timeline.log"), tl);
    let mut cl = String::new();
    for c in cconns.iter() {
        let rc = relay_close_of(&closes, c).map_or("-".into(), |rc| {
            format!(
                "{} {} delivered {} requeued {}",
                fmt_s(rc.ms),
                rc.reason,
                rc.delivered,
                rc.requeued
            )
        });
        let _ = writeln!(
            cl,
            "cc {} k{} relay {} gen {} port {} rcvbuf {} {}..{} plan {} phase {} lines {} firsts {} dups {} late {} \
             reorders {} discarded {} reset {} end '{}' relay-close {rc}",
            c.id, c.k, c.inc, c.gen, c.port, c.rcvbuf, fmt_s(c.start_ms), fmt_s(c.end_ms), c.plan, c.phase,
            c.lines, c.firsts, c.dups, c.late_dups, c.reorders, c.discarded,
            c.reset_ms.map_or("-".into(), fmt_s), c.end
        );
    }
    let _ = std::fs::write(s.args.work.join("consumers.log"), cl);
    let mut pl = String::new();
    let mut keys: Vec<&(u8, u32)> = conns.keys().collect();
    keys.sort();
    for k in keys {
        let pc = &conns[k];
        let got = pc.slots.iter().filter(|x| x.count > 0).count();
        let _ = writeln!(
            pl,
            "p{} c{} relay {} port {} {}..{} planned {} sent {} received {} clean {} handed {} kill_free {} end '{}'",
            k.0, k.1, pc.inc, pc.port, fmt_s(pc.start_ms), fmt_s(pc.end_ms), pc.planned, pc.sent, got,
            pc.clean, pc.handed_ms.map_or("-".into(), fmt_s), pc.kill_free, pc.end
        );
    }
    let _ = std::fs::write(s.args.work.join("producers.log"), pl);
    i32::from(verdict)
}

fn fmt_map(m: &HashMap<String, u64>) -> String {
    let mut v: Vec<_> = m.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    v.iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
