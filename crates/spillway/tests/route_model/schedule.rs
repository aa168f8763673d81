//! A case: the route's settings and a list of operations, all drawn from
//! one seed. The schedule is deterministic; the timing it meets is not (real
//! sockets, real threads), which is why the checker only asserts what must
//! hold under any timing.
//!
//! Every variant name is unique across the enums here, so the `Debug`
//! output of an op list pastes back as Rust after `use schedule::*` and the
//! glob imports of the enums (see `regressions.rs`).

use fastrand::Rng;

/// Largest message the route accepts (framing included). The biggest
/// message the producers build is a little under it.
pub const MAX_MESSAGE: u64 = 16 << 10;
/// `write_stall_timeout` of the route. Consumer stalls are either well
/// under it or well over it (see `Stall`), never near it.
pub const WRITE_STALL_MS: u64 = 1000;
/// The sink's per-consumer in-flight bound (`sink.rs` `WINDOW`) plus one
/// take (`BATCH_BYTES`): what a consumer connection can hold written but
/// unacknowledged, so what an abortive end can send again besides the
/// `redeliver_on_reset` window.
pub const INFLIGHT_BOUND: u64 = (2 << 20) + (512 << 10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    Lines,
    Len32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    Always,
    EveryMs(u32),
    Never,
}

/// The reloadable settings of the route (and the process's drain timeout,
/// which the supervisor passes to each route it starts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cfg {
    pub memory: u64,
    pub segment_size: u64,
    pub max_disk: u64,
    pub redeliver: u64,
    pub fsync: Fsync,
    pub drain_ms: u32,
}

impl Cfg {
    /// A crash (kill -9 or power cut) may only lose what the documentation
    /// says it may; with these settings that is nothing accepted.
    pub fn crash_safe(&self) -> bool {
        self.memory == 0 && self.fsync == Fsync::Always
    }
}

/// Padding of a producer's messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pad {
    /// 0..200 bytes.
    Small,
    /// Mostly small, some up to 2 KiB, a few up to 12 KiB.
    Mixed,
    /// 1..12 KiB.
    Large,
}

/// How a producer connection ends once it has sent everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PEnd {
    /// `shutdown(SHUT_WR)`, then read to the relay's EOF.
    Close,
    /// Reset (`SO_LINGER 0`).
    Abort,
    /// Stay connected and idle this long, then close cleanly.
    Idle { ms: u32 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Producer {
    pub msgs: u32,
    pub burst: u32,
    pub pause_ms: u32,
    pub pad: Pad,
    pub end: PEnd,
}

/// How a consumer connection ends after its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CEnd {
    /// Half-close, then read to the relay's EOF: a clean leave.
    Leave,
    /// Stop reading, then reset with whatever its kernel holds unread.
    Reset,
    /// Half-close, then reset a moment later.
    FinThenRst,
}

/// The consumer stops reading at `at_ms` for `ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stall {
    pub at_ms: u32,
    pub ms: u32,
}

impl Stall {
    /// Long enough that the relay may reset the consumer for it.
    pub fn is_long(&self) -> bool {
        u64::from(self.ms) >= WRITE_STALL_MS
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consumer {
    /// `SO_RCVBUF` set before connect.
    pub rcvbuf: u32,
    /// `TCP_MAXSEG` set before connect (0: loopback's own, 64 KiB). With
    /// an Ethernet-sized MSS the relay's send buffer is tens of KiB, as on
    /// a real network, so its writes stop mid-message; with loopback's it
    /// autotunes to megabytes and takes a whole consumer window.
    pub mss: u32,
    /// Largest read; each read asks for a random size up to it.
    pub read_max: u32,
    /// Largest pause between reads (random up to it).
    pub pause_ms: u32,
    pub life_ms: u32,
    pub stall: Option<Stall>,
    pub end: CEnd,
}

/// The ack protocol on a route (issue 15; `docs/protocol.md`), fixed for
/// the whole case: consumers always speak it (`to_protocol = "ack"`: the
/// sink takes nothing else), producers when `from_ack`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckCfg {
    /// `from_protocol = "ack"`: confirming producers, and `memory = 0` in
    /// every setting of the case (the config refuses anything else).
    pub from_ack: bool,
    /// Named groups (`g1`, `g2`); none: the default group. A route with
    /// groups has only those (every consumer names one): every message
    /// must be acknowledged or dead-lettered in each.
    pub groups: u8,
    /// Short, so that a black hole is reset within the case.
    pub ack_timeout_ms: u32,
    pub max_deliveries: u32,
}

impl AckCfg {
    /// The groups' names: the default group ("") alone, or the named ones.
    pub fn group_names(&self) -> Vec<String> {
        if self.groups == 0 {
            return vec![String::new()];
        }
        (1..=self.groups).map(|i| format!("g{i}")).collect()
    }

    /// The groups as `AckConsumer::group` numbers them.
    pub fn group_numbers(&self) -> Vec<u8> {
        if self.groups == 0 {
            vec![0]
        } else {
            (1..=self.groups).collect()
        }
    }
}

/// The encoding an ack-protocol peer chose in its hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enc {
    Text,
    Binary,
}

/// How an acking consumer acknowledges what it decided to acknowledge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckStyle {
    /// `ACK <last>`: it and everything delivered before it.
    Cumulative,
    /// `ACKS a-b,c-d`: exact runs of what it holds.
    Ranges,
    /// One or the other at each flush.
    Mixed,
}

/// How an acking consumer's connection ends after its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AEnd {
    /// Acknowledges what it holds, half-closes, reads to the relay's EOF.
    Settle,
    /// Half-closes holding what it has not acknowledged (a clean close
    /// with messages held: they go back).
    Abandon,
    /// Resets holding what it has not acknowledged (a crash).
    Crash,
}

/// A consumer speaking the ack protocol. What it does with each message
/// follows from the message (poison and crasher predicates on the body,
/// see `peers_ack.rs`) and its own seeded dice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckConsumer {
    pub enc: Enc,
    /// 0: the default group (a route without groups); i: `g<i>`.
    pub group: u8,
    /// `window=`, messages (1..=64).
    pub window: u32,
    /// `SO_RCVBUF` before connect (0: the kernel's).
    pub rcvbuf: u32,
    pub life_ms: u32,
    pub style: AckStyle,
    /// It acknowledges once this many messages wait (or the relay goes
    /// quiet).
    pub every: u32,
    /// Sleeps this long before each acknowledgement, reading nothing (a
    /// slow worker; over `ack_timeout` it is reset unless it sends PROG).
    pub work_ms: u32,
    /// Sends PROG for what it holds every third of `ack_timeout` while it
    /// works.
    pub prog: bool,
    /// Percent of messages it gives back with NAK, asking up to `nak_ms`.
    pub nak_pct: u8,
    pub nak_ms: u32,
    /// Resets at once when it receives a crasher message.
    pub crasher: bool,
    /// Never acknowledges anything (the relay's ack timeout must reset it).
    pub black_hole: bool,
    /// Sends WIN with a new window halfway through its life.
    pub win: Option<u32>,
    pub end: AEnd,
}

/// How a confirming producer ends once everything it sent is confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum APEnd {
    /// Half-closes and reads to the relay's EOF.
    Done,
    /// Resets right after its last PUB, confirmed or not (a crash: what
    /// was not confirmed may or may not be queued).
    Vanish,
    /// Stays connected and idle this long, then closes cleanly.
    Linger { ms: u32 },
}

/// A producer speaking the ack protocol with confirms: it resends what
/// was not confirmed after any end of its connection (its own resets
/// included), named (`name=p<idx>`, pseq = message number + 1) or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckProducer {
    pub msgs: u32,
    pub burst: u32,
    pub pause_ms: u32,
    pub pad: Pad,
    pub enc: Enc,
    pub named: bool,
    /// Resets its connection after this many PUBs on it, then reconnects
    /// and resends everything unconfirmed (a producer that crashes and
    /// restarts).
    pub reset_every: Option<u32>,
    pub end: APEnd,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A new producer connection (runs on its own thread).
    Produce(Producer),
    /// A new consumer connection (runs on its own thread).
    Consume(Consumer),
    /// A confirming producer (ack cases with `from_ack`; its own thread,
    /// reconnecting as long as something is unconfirmed).
    AckProduce(AckProducer),
    /// An acking consumer (ack cases; its own thread, one connection).
    AckConsume(AckConsumer),
    Sleep {
        ms: u32,
    },
    /// The disk can grow by `budget` more bytes, then says ENOSPC.
    DiskFull {
        budget: u32,
    },
    DiskFree,
    /// Graceful stop, then a new route on the same spool and ports with
    /// these settings (the supervisor's reload of a changed queue route).
    Reload(Cfg),
    /// The process vanishes. kill -9: the disk is untouched (what was
    /// written and not synced stays unsynced, so a later power cut can
    /// still lose it); power cut: the disk keeps what was synced plus
    /// `keep_pct` percent of each file's unsynced tail. Only under
    /// `Cfg::crash_safe`.
    Crash {
        power_cut: bool,
        keep_pct: u8,
    },
    /// fdatasync fails until the route has stopped; then it is cleared and
    /// the route restarted. Only with `memory = 0` (a poisoned spool
    /// cannot write its memory tier anywhere).
    FailFsync,
}

#[derive(Clone, Debug)]
pub struct Case {
    pub seed: u64,
    pub frame: Frame,
    pub cfg: Cfg,
    /// The ack protocol, or a plain route (`None`).
    pub ack: Option<AckCfg>,
    pub ops: Vec<Op>,
}

const MEMORY: [u64; 3] = [0, 8 << 10, 256 << 10];
const SEGMENT: [u64; 3] = [4 << 10, 16 << 10, 256 << 10];
const MAX_DISK: [u64; 3] = [0, 96 << 10, 512 << 10];
const REDELIVER: [u64; 2] = [64 << 10, 256 << 10];
const FSYNC: [Fsync; 3] = [Fsync::Always, Fsync::EveryMs(50), Fsync::Never];
/// Short: a stalled consumer outlives the drain (its task lingers after the
/// spool is closed). Long: a consumer the relay keeps holding shows up as
/// held (hang guards are shorter than it).
const DRAIN_MS: [u32; 2] = [1000, 30_000];

fn pick<T: Copy>(r: &mut Rng, v: &[T]) -> T {
    v[r.usize(..v.len())]
}

fn random_cfg(r: &mut Rng) -> Cfg {
    Cfg {
        memory: pick(r, &MEMORY),
        segment_size: pick(r, &SEGMENT),
        max_disk: pick(r, &MAX_DISK),
        redeliver: pick(r, &REDELIVER),
        fsync: pick(r, &FSYNC),
        drain_ms: pick(r, &DRAIN_MS),
    }
}

/// One or two settings changed (the drain timeout only rarely: it is a
/// property of the process more than of the route).
fn changed(r: &mut Rng, cfg: &Cfg) -> Cfg {
    let mut c = cfg.clone();
    for _ in 0..r.usize(1..=2) {
        match r.u8(0..11) {
            0..=1 => c.memory = pick(r, &MEMORY),
            2..=3 => c.segment_size = pick(r, &SEGMENT),
            4..=5 => c.max_disk = pick(r, &MAX_DISK),
            6..=7 => c.redeliver = pick(r, &REDELIVER),
            8..=9 => c.fsync = pick(r, &FSYNC),
            _ => c.drain_ms = pick(r, &DRAIN_MS),
        }
    }
    c
}

fn producer(r: &mut Rng) -> Producer {
    let pad = match r.u8(0..10) {
        0..=4 => Pad::Small,
        5..=8 => Pad::Mixed,
        _ => Pad::Large,
    };
    let msgs = match pad {
        Pad::Large => r.u32(20..300),
        _ => r.u32(50..2500),
    };
    let end = match r.u8(0..10) {
        0..=5 => PEnd::Close,
        6..=7 => PEnd::Abort,
        _ => PEnd::Idle {
            ms: r.u32(100..1500),
        },
    };
    Producer {
        msgs,
        burst: r.u32(1..200),
        pause_ms: r.u32(0..30),
        pad,
        end,
    }
}

fn consumer(r: &mut Rng) -> Consumer {
    let life_ms = r.u32(300..4000);
    let stall = match r.u8(0..10) {
        0..=4 => None,
        5..=7 => Some(Stall {
            at_ms: r.u32(0..life_ms),
            ms: r.u32(50..400),
        }),
        _ => Some(Stall {
            at_ms: r.u32(0..life_ms),
            ms: r.u32(1800..3500),
        }),
    };
    let end = match r.u8(0..10) {
        0..=3 => CEnd::Leave,
        4..=7 => CEnd::Reset,
        _ => CEnd::FinThenRst,
    };
    Consumer {
        rcvbuf: r.u32(2048..=8192),
        mss: pick(r, &[0, 1460]),
        read_max: pick(r, &[64, 512, 4096, 16384, 65536]),
        pause_ms: pick(r, &[0, 1, 5, 20]),
        life_ms,
        stall,
        end,
    }
}

/// The case of `seed`.
///
/// Swarm testing (Groce et al.): each case enables a random subset of the
/// fault kinds. A case without disk faults, say, spends its whole length
/// on consumers and reloads instead of stopping at the first full disk, so
/// interleavings that need many steps of one kind come up more often.
pub fn generate(seed: u64) -> Case {
    let mut r = Rng::with_seed(seed);
    let frame = if r.bool() { Frame::Lines } else { Frame::Len32 };
    let mut cfg = random_cfg(&mut r);
    let initial = cfg.clone();
    let disk = r.u8(0..10) < 6;
    let crash = r.u8(0..10) < 6;
    let fsync = r.u8(0..10) < 4;
    let reload = r.u8(0..10) < 8;
    let mut ops = vec![Op::Produce(producer(&mut r)), Op::Consume(consumer(&mut r))];
    let n = r.usize(10..28);
    while ops.len() < n {
        match r.u8(0..100) {
            0..=19 => ops.push(Op::Produce(producer(&mut r))),
            20..=44 => ops.push(Op::Consume(consumer(&mut r))),
            45..=63 => ops.push(Op::Sleep {
                ms: r.u32(100..900),
            }),
            64..=68 if disk => ops.push(Op::DiskFull {
                budget: pick(&mut r, &[0, 2 << 10, 16 << 10, 64 << 10]),
            }),
            69..=72 if disk => ops.push(Op::DiskFree),
            73..=81 if reload => {
                cfg = changed(&mut r, &cfg);
                ops.push(Op::Reload(cfg.clone()));
            }
            82..=89 if crash => {
                if !cfg.crash_safe() {
                    cfg.memory = 0;
                    cfg.fsync = Fsync::Always;
                    ops.push(Op::Reload(cfg.clone()));
                }
                ops.push(Op::Crash {
                    power_cut: r.bool(),
                    keep_pct: pick(&mut r, &[0, 50, 100]),
                });
            }
            90..=94 if fsync => {
                if cfg.memory != 0 {
                    cfg.memory = 0;
                    ops.push(Op::Reload(cfg.clone()));
                }
                ops.push(Op::FailFsync);
            }
            95.. if reload => ops.push(Op::Reload(cfg.clone())),
            _ => {}
        }
    }
    Case {
        seed,
        frame,
        cfg: initial,
        ack: None,
        ops,
    }
}

/// The ack-protocol variant of the case of `seed`, for half of the seeds
/// (drawn from a generator of its own: the plain case of every seed is
/// what it was before the ack protocol existed, and still runs).
pub fn generate_ack(seed: u64) -> Option<Case> {
    let mut ra = Rng::with_seed(seed ^ ACK_SALT);
    (ra.u8(0..100) < ACK_PCT).then(|| ackify(generate(seed), &mut ra))
}

/// Salt of the ack variant's generator.
const ACK_SALT: u64 = 0x6163_6b73_616c_7431;
/// Percent of seeds that have an ack variant.
const ACK_PCT: u8 = 50;

/// Messages a producer of the `from_ack` cases sends at most: every batch
/// is confirmed after its fsync, so big plain counts would only slow the
/// case.
const ACK_MSGS_MAX: u32 = 1200;

/// The ack-protocol version of a plain case: the same skeleton (settings,
/// sleeps, disk faults, reloads, crashes, failed fsyncs, in the same
/// places), with acking consumers in place of the plain ones and, with
/// `from_ack`, confirming producers in place of the plain ones (and
/// `memory = 0` everywhere).
fn ackify(mut case: Case, r: &mut Rng) -> Case {
    let ack = AckCfg {
        from_ack: r.bool(),
        groups: match r.u8(0..10) {
            0..=5 => 0,
            6..=8 => 1,
            _ => 2,
        },
        ack_timeout_ms: pick(r, &[300, 600, 1000]),
        max_deliveries: pick(r, &[2, 3, 5]),
    };
    if ack.from_ack {
        case.cfg.memory = 0;
    }
    for op in &mut case.ops {
        match op {
            Op::Consume(c) => *op = Op::AckConsume(ack_consumer(r, &ack, c.life_ms)),
            Op::Produce(p) if ack.from_ack => *op = Op::AckProduce(ack_producer(r, p)),
            Op::Reload(c) if ack.from_ack => c.memory = 0,
            _ => {}
        }
    }
    case.ack = Some(ack);
    case
}

fn enc(r: &mut Rng) -> Enc {
    if r.bool() {
        Enc::Text
    } else {
        Enc::Binary
    }
}

fn ack_consumer(r: &mut Rng, ack: &AckCfg, life_ms: u32) -> AckConsumer {
    let any = r.u32(1..=64);
    let window = pick(r, &[1, 2, 4, 8, 16, 32, 64, any]);
    let timeout = ack.ack_timeout_ms;
    let mut c = AckConsumer {
        enc: enc(r),
        group: if ack.groups == 0 {
            0
        } else {
            r.u8(1..=ack.groups)
        },
        window,
        rcvbuf: if r.u8(0..10) < 3 {
            r.u32(2048..=8192)
        } else {
            0
        },
        life_ms,
        style: pick(
            r,
            &[AckStyle::Cumulative, AckStyle::Ranges, AckStyle::Mixed],
        ),
        every: r.u32(1..=window),
        work_ms: 0,
        prog: false,
        nak_pct: 0,
        nak_ms: 0,
        crasher: false,
        black_hole: false,
        win: (r.u8(0..10) < 2).then(|| r.u32(1..=64)),
        end: match r.u8(0..10) {
            0..=3 => AEnd::Settle,
            4..=5 => AEnd::Abandon,
            _ => AEnd::Crash,
        },
    };
    match r.u8(0..10) {
        // Well-behaved, prompt; a few NAKs.
        0..=3 => {
            c.nak_pct = pick(r, &[0, 0, 5]);
            c.nak_ms = r.u32(0..200);
        }
        // Slow: acknowledges late, with or without PROG.
        4..=5 => {
            c.work_ms = r.u32(timeout / 4..=timeout * 2);
            c.prog = r.bool();
        }
        // A black hole.
        6 => c.black_hole = true,
        // Killed by crasher messages.
        7 => c.crasher = true,
        // Gives many back.
        _ => {
            c.nak_pct = r.u8(20..=60);
            c.nak_ms = r.u32(0..300);
        }
    }
    c
}

fn ack_producer(r: &mut Rng, p: &Producer) -> AckProducer {
    AckProducer {
        msgs: p.msgs.min(ACK_MSGS_MAX),
        burst: p.burst,
        pause_ms: p.pause_ms,
        pad: p.pad,
        enc: enc(r),
        named: r.u8(0..10) < 7,
        reset_every: (r.u8(0..10) < 3).then(|| r.u32(20..400)),
        end: match p.end {
            PEnd::Close => APEnd::Done,
            PEnd::Abort => APEnd::Vanish,
            PEnd::Idle { ms } => APEnd::Linger { ms },
        },
    }
}

/// The settings in force after each op (for the checker and checks of the
/// schedule's own rules).
pub fn cfg_after(case: &Case, upto: usize) -> Cfg {
    let mut cfg = case.cfg.clone();
    for op in &case.ops[..upto] {
        if let Op::Reload(c) = op {
            cfg = c.clone();
        }
    }
    cfg
}
