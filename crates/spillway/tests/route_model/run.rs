//! Running one case: the route in-process, incarnation after incarnation,
//! the schedule's operations applied in order, then the final drain.
//!
//! An *incarnation* is one `QueueServer` on its own tokio runtime. The
//! "process" is the current incarnation plus the runtimes of earlier ones
//! that stopped gracefully: their connection tasks may outlive the drain
//! timeout, as they would in the real supervisor (`app.rs`), so those
//! runtimes stay alive until the process dies (a crash) or the case ends.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use spillway::config::QueueRoute;
use spillway::endpoint::Endpoint;
use spillway::queue::{QueueServer, PRODUCER_RCVBUF};
use spillway_codec::Framing;
use spillway_spool::sim::SimFs;
use spillway_spool::{Durability, WhenFull};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

use super::capture::{self, tick};
use super::check::{self, Kind, Violation};
use super::guard::GuardFs;
use super::peers::{self, ConsumerResult, MsgId, Parsed, Parser, ProducerResult, Shared, Until};
use super::peers_ack;
use super::schedule::{
    AckConsumer, CEnd, Case, Cfg, Consumer, Frame, Fsync, Op, MAX_MESSAGE, WRITE_STALL_MS,
};

/// Hang guard of a graceful stop (a stop normally takes well under a
/// second; a stalled consumer can hold it a few seconds).
const STOP_GUARD: Duration = Duration::from_secs(20);
/// During a stop on a full disk, after this long the "operator" frees space.
const STOP_RESCUE: Duration = Duration::from_secs(5);
/// Hang guard: a consumer the test has ended must be let go by the relay.
const RELEASE_GUARD: Duration = Duration::from_secs(10);
/// Hang guard of the final drain: this long without a new message.
const DRAIN_GUARD: Duration = Duration::from_secs(15);
/// The final drain ends this long after the last message when the spool
/// is empty.
const QUIET: Duration = Duration::from_secs(2);
/// Hang guard: the spool's lock is released once the process died.
const LOCK_GUARD: Duration = Duration::from_secs(20);
/// Hang guard of peer threads at the end of a case.
const JOIN_GUARD: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndKind {
    /// Stopped by the test (reload, restart, the end of the case).
    Graceful,
    /// `serve` returned by itself (a spool failure).
    SelfStopped,
    Crash {
        power_cut: bool,
        keep_pct: u8,
    },
    /// A stop that hung: the process was killed (like kill -9).
    Killed,
}

/// How one incarnation ended, and the spool it left behind.
#[derive(Clone, Debug)]
pub struct IncEnd {
    pub inc: usize,
    pub cfg: Cfg,
    /// Op index at which it started, and the op that ended it (the number
    /// of ops for the final stop).
    pub first_op: usize,
    pub end_op: usize,
    pub kind: EndKind,
    /// When it started, when its end began (stop requested, crash), and
    /// when the end was complete (`serve` returned, or the process died).
    pub start_t: u64,
    pub t: u64,
    pub done_t: u64,
    /// `serve`'s result, when it returned.
    pub result: Option<Result<(), String>>,
    pub fsync_fault: bool,
    /// The messages in the spool from its ack floor, read offline after
    /// the end (before the next incarnation opened it).
    pub snapshot: Result<Vec<MsgId>, String>,
    pub notes: Vec<String>,
}

/// What is known of an incarnation besides its runtime and server.
#[derive(Clone, Debug)]
struct IncInfo {
    idx: usize,
    cfg: Cfg,
    fsync_fault: bool,
    /// `SimFs` fdatasync calls when the fault was set.
    fsyncs_at_fault: u64,
    first_op: usize,
    start_t: u64,
}

struct Inc {
    info: IncInfo,
    rt: Runtime,
    server: Arc<QueueServer>,
    token: CancellationToken,
    serve: tokio::task::JoinHandle<anyhow::Result<()>>,
}

enum Slot<T> {
    Running(JoinHandle<T>),
    Done(T),
    Lost,
}

impl<T> Slot<T> {
    fn poll(&mut self) -> Option<&T> {
        if let Slot::Running(h) = self {
            if h.is_finished() {
                let Slot::Running(h) = std::mem::replace(self, Slot::Lost) else {
                    unreachable!()
                };
                *self = h.join().map_or(Slot::Lost, Slot::Done);
            }
        }
        match self {
            Slot::Done(v) => Some(v),
            _ => None,
        }
    }
}

/// Where a peer came from (for reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerKey {
    P(u32),
    C(u32),
}

/// A record of the dead-letter spool, read offline at the end of an ack
/// case.
#[derive(Clone, Debug)]
pub struct DeadRec {
    pub seq: u64,
    pub attempts: u32,
    pub reason: String,
    pub group: String,
    /// The message it holds, or why it is not a whole one.
    pub id: Result<MsgId, String>,
}

/// Everything a case leaves for the checker.
pub struct Outcome {
    pub violations: Vec<Violation>,
    pub ends: Vec<IncEnd>,
    pub producers: Vec<ProducerResult>,
    pub consumers: Vec<ConsumerResult>,
    pub events: Vec<capture::LogEvent>,
    pub crashes: Vec<(u64, bool)>,
    pub stops: Vec<u64>,
    /// Ends after which the spool was not closed cleanly (a failed fsync,
    /// a close that failed, a kill): its cursor may be older than what was
    /// delivered, so a restart sends those messages again.
    pub dirty: Vec<u64>,
    pub final_t: u64,
    /// The case ended early (a hang, a held consumer, a route that would
    /// not open): messages may be missing only because it did.
    pub cut_short: bool,
    pub peer_op: HashMap<PeerKey, usize>,
    pub stats: String,
    /// Ack cases: the dead-letter spool at the end.
    pub dead: Option<Result<Vec<DeadRec>, String>>,
}

pub struct Runner<'a> {
    case: &'a Case,
    route: String,
    _dir: tempfile::TempDir,
    spool: PathBuf,
    fs: Arc<SimFs>,
    shared: Option<Arc<Shared>>,
    addrs: Option<(SocketAddr, SocketAddr)>,
    cur: Option<Inc>,
    lingering: Vec<Runtime>,
    incs: usize,
    ends: Vec<IncEnd>,
    violations: Vec<Violation>,
    producers: Vec<Slot<ProducerResult>>,
    consumers: Vec<Slot<ConsumerResult>>,
    peer_op: HashMap<PeerKey, usize>,
    crashes: Vec<(u64, bool)>,
    stops: Vec<u64>,
    dirty: Vec<u64>,
    /// Each incarnation's view of the disk.
    guards: Vec<(usize, Arc<GuardFs>)>,
    /// When each ended consumer was first seen still served by the relay.
    held_since: HashMap<SocketAddr, Instant>,
    op: usize,
    disk_limited: bool,
    /// Set once the case cannot go on (a hang, a route that will not open).
    dead: bool,
}

static RUNS: AtomicU64 = AtomicU64::new(0);

/// `ROUTE_MODEL_VERBOSE=1`: time every op and phase on stderr.
pub fn verbose() -> bool {
    std::env::var("ROUTE_MODEL_VERBOSE").is_ok_and(|v| v != "0")
}

impl<'a> Runner<'a> {
    pub fn new(case: &'a Case) -> Self {
        capture::install();
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = dir.path().join("spool");
        let route = format!("rm{}-{}", case.seed, RUNS.fetch_add(1, Ordering::SeqCst));
        Runner {
            case,
            route,
            _dir: dir,
            spool,
            fs: SimFs::new(),
            shared: None,
            addrs: None,
            cur: None,
            lingering: Vec::new(),
            incs: 0,
            ends: Vec::new(),
            violations: Vec::new(),
            producers: Vec::new(),
            consumers: Vec::new(),
            peer_op: HashMap::new(),
            crashes: Vec::new(),
            stops: Vec::new(),
            dirty: Vec::new(),
            guards: Vec::new(),
            held_since: HashMap::new(),
            op: 0,
            disk_limited: false,
            dead: false,
        }
    }

    fn violation(&mut self, kind: Kind, text: String) {
        self.violations.push(Violation {
            kind,
            op: Some(self.op),
            text,
        });
    }

    fn queue_route(&self, cfg: &Cfg, src: SocketAddr, sink: SocketAddr) -> QueueRoute {
        let mut r = QueueRoute::new(
            self.route.clone(),
            Endpoint::Listen(src.to_string()),
            Endpoint::Listen(sink.to_string()),
            &self.spool,
        );
        r.framing = match self.case.frame {
            Frame::Lines => Framing::Lines,
            Frame::Len32 => "len:u32be".parse().expect("framing"),
        };
        r.max_message = MAX_MESSAGE;
        r.memory = cfg.memory;
        r.max_disk = cfg.max_disk;
        r.when_full = WhenFull::Block;
        r.fsync = match cfg.fsync {
            Fsync::Always => Durability::Always,
            Fsync::EveryMs(ms) => Durability::Interval(Duration::from_millis(u64::from(ms))),
            Fsync::Never => Durability::Never,
        };
        r.segment_size = cfg.segment_size;
        r.redeliver_on_reset = cfg.redeliver;
        r.timeouts.write_stall = Duration::from_millis(WRITE_STALL_MS);
        r.read_idle_timeout = None;
        if let Some(a) = &self.case.ack {
            use spillway::config::Protocol;
            r.to_protocol = Protocol::Ack;
            if a.from_ack {
                r.from_protocol = Protocol::Ack;
            }
            r.groups = a
                .group_names()
                .into_iter()
                .filter(|g| !g.is_empty())
                .collect();
            r.ack_timeout = Duration::from_millis(u64::from(a.ack_timeout_ms));
            r.max_deliveries = a.max_deliveries;
        }
        spillway::config::validate_queue(&r).expect("the schedule builds valid routes");
        r
    }

    /// Starts an incarnation with `cfg` on the spool and (after the first)
    /// the same ports. False when the route cannot be started.
    ///
    /// The first incarnation binds port 0; later ones re-bind the ports the
    /// first one got, because the model's peers (`Shared::source`/`sink`)
    /// reconnect to the addresses they were given, across restarts. Between
    /// one incarnation's close and the next one's bind another process could
    /// take a port: the bind is retried for a while, then reported.
    fn start(&mut self, cfg: Cfg) -> bool {
        let deadline = Instant::now() + LOCK_GUARD;
        while spillway_spool::is_locked(&self.spool) {
            if Instant::now() > deadline {
                self.violation(
                    Kind::Hang,
                    "the spool directory is still locked by an earlier incarnation".into(),
                );
                self.dead = true;
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("rm-inc{}", self.incs))
            .enable_all()
            .build()
            .expect("runtime");
        let (want_src, want_sink) = match self.addrs {
            Some((a, b)) => (a.to_string(), b.to_string()),
            None => ("127.0.0.1:0".to_string(), "127.0.0.1:0".to_string()),
        };
        let bound = rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let src = spillway::accept::bind_with(&want_src, Some(PRODUCER_RCVBUF)).await;
                let sink = spillway::accept::bind_with(&want_sink, None).await;
                match (src, sink) {
                    (Ok(a), Ok(b)) => return Ok((a, b)),
                    (a, b) => {
                        if Instant::now() > deadline {
                            return Err(format!("{:?} / {:?}", a.err(), b.err()));
                        }
                        drop((a, b));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        });
        let (src, sink) = match bound {
            Ok(l) => l,
            Err(e) => {
                self.violation(Kind::Hang, format!("cannot rebind the route's ports: {e}"));
                self.dead = true;
                return false;
            }
        };
        let (src_addr, sink_addr) = (
            src.local_addr().expect("addr"),
            sink.local_addr().expect("addr"),
        );
        self.addrs = Some((src_addr, sink_addr));
        let route = self.queue_route(&cfg, src_addr, sink_addr);
        let token = CancellationToken::new();
        let drain = Duration::from_millis(u64::from(cfg.drain_ms));
        let guard = GuardFs::new(Arc::clone(&self.fs));
        self.guards.push((self.incs, Arc::clone(&guard)));
        let mut opened = QueueServer::open_on(
            route.clone(),
            &token,
            drain,
            Default::default(),
            guard.clone(),
        );
        if let Err(e) = &opened {
            let free = self.disk_limited;
            self.violation(
                Kind::OpenFailed,
                format!(
                    "the route did not open{}: {e:#}",
                    if free { " (disk full)" } else { "" }
                ),
            );
            if free {
                self.free_disk();
                opened =
                    QueueServer::open_on(route, &token, drain, Default::default(), guard.clone());
            }
        }
        let server = match opened {
            Ok(s) => s,
            Err(e) => {
                if self
                    .violations
                    .last()
                    .is_none_or(|v| v.kind != Kind::OpenFailed)
                {
                    self.violation(Kind::OpenFailed, format!("the route did not open: {e:#}"));
                }
                self.dead = true;
                return false;
            }
        };
        if let Some(sh) = &self.shared {
            sh.inc.store(self.incs, Ordering::SeqCst);
        }
        let serve = rt.spawn(Arc::clone(&server).serve(Some(src), Some(sink)));
        self.cur = Some(Inc {
            info: IncInfo {
                idx: self.incs,
                cfg,
                fsync_fault: false,
                fsyncs_at_fault: 0,
                first_op: self.op,
                start_t: tick(),
            },
            rt,
            server,
            token,
            serve,
        });
        self.incs += 1;
        true
    }

    fn free_disk(&mut self) {
        self.fs.faults.space_left.store(-1, Ordering::SeqCst);
        self.disk_limited = false;
    }

    fn shared(&self) -> Arc<Shared> {
        Arc::clone(self.shared.as_ref().expect("shared after the first start"))
    }

    /// Reads the spool offline (between incarnations).
    fn snapshot(&self) -> Result<Vec<MsgId>, String> {
        let mut ids = Vec::new();
        let mut bad = Vec::new();
        let frame = self.case.frame;
        let seed = self.case.seed;
        spillway_spool::dump(&self.spool, None, None, |m| {
            let mut p = Parser::new(frame, seed);
            let mut out = Vec::new();
            p.feed(&m.data, &mut out);
            match (out.as_slice(), p.leftover().is_empty()) {
                ([Parsed::Msg(id, _)], true) => ids.push(*id),
                _ => bad.push(m.seq),
            }
            Ok(())
        })
        .map_err(|e| format!("{e}"))?;
        if !bad.is_empty() {
            return Err(format!(
                "stored messages that are not whole messages at seqs {bad:?}"
            ));
        }
        Ok(ids)
    }

    /// The relay's warnings and errors since `t` (for reports).
    fn relay_lines_since(&self, t: u64) -> String {
        let lines: Vec<String> = capture::route_events(&self.route)
            .into_iter()
            .filter(|e| e.t >= t && e.level <= tracing::Level::WARN)
            .map(|e| format!("      relay: {}", e.line()))
            .collect();
        let n = lines.len();
        let mut s: Vec<String> = lines.into_iter().take(8).collect();
        if n > 8 {
            s.push(format!("      relay: … {} more", n - 8));
        }
        s.join("\n")
    }

    /// Judges how an incarnation ended and records it (spool snapshot
    /// included). `inc.rt` must already be gone or parked.
    fn record_end(
        &mut self,
        inc: &IncInfo,
        kind: EndKind,
        t: u64,
        result: Option<Result<(), String>>,
        notes: Vec<String>,
    ) {
        // Only an fdatasync that ran can have failed (on a full disk nothing
        // may get written, and nothing synced, while the fault is set).
        let synced = self.fs.faults.fsyncs.load(Ordering::SeqCst) > inc.fsyncs_at_fault;
        match (&result, inc.fsync_fault) {
            (Some(Ok(())), true) if synced => self.violation(
                Kind::FsyncIgnored,
                format!(
                    "incarnation {} returned Ok although an fdatasync failed while it ran",
                    inc.idx
                ),
            ),
            (Some(Err(e)), false) => {
                let lines = self.relay_lines_since(inc.start_t);
                self.violation(
                    Kind::ServeError,
                    format!(
                        "incarnation {} (started at op {}, {:?}) stopped with an error, with no failed fsync: {e}\n{lines}",
                        inc.idx, inc.first_op, inc.cfg
                    ),
                );
            }
            _ => {}
        }
        if let Some((_, g)) = self.guards.iter().find(|(i, _)| *i == inc.idx) {
            g.close();
        }
        if inc.fsync_fault || !matches!(result, Some(Ok(()))) {
            self.dirty.push(tick());
        }
        let snapshot = self.snapshot();
        if let Err(e) = &snapshot {
            self.violation(
                Kind::SpoolDamaged,
                format!(
                    "reading the spool offline after incarnation {} ended ({kind:?}) failed: {e}",
                    inc.idx
                ),
            );
        }
        self.ends.push(IncEnd {
            inc: inc.idx,
            cfg: inc.cfg.clone(),
            first_op: inc.first_op,
            end_op: self.op,
            kind,
            start_t: inc.start_t,
            t,
            done_t: tick(),
            result,
            fsync_fault: inc.fsync_fault,
            snapshot,
            notes,
        });
    }

    fn poll_consumers(&mut self) {
        for c in &mut self.consumers {
            c.poll();
        }
    }

    /// Consumers the test has ended that the current incarnation still
    /// serves, each with when it was first seen so; a `Held` violation
    /// (and true) once one has been held for `RELEASE_GUARD`. Does not wait.
    fn held_too_long(&mut self) -> bool {
        let Some(inc) = &self.cur else { return false };
        let server = Arc::clone(&inc.server);
        let drain_ms = inc.info.cfg.drain_ms;
        self.poll_consumers();
        let ended: HashMap<SocketAddr, (u32, String)> = self
            .consumers
            .iter()
            .filter_map(|s| match s {
                Slot::Done(r) if r.end != peers::ConsumerEnd::Torn => {
                    r.local.map(|a| (a, (r.idx, format!("{:?}", r.end))))
                }
                _ => None,
            })
            .collect();
        let now = Instant::now();
        let mut held = Vec::new();
        let mut oldest = now;
        for p in server.peers_page(usize::MAX).0 {
            let Some((i, e)) = ended.get(&p.addr) else {
                continue;
            };
            let since = *self.held_since.entry(p.addr).or_insert(now);
            oldest = oldest.min(since);
            let op = self.peer_op.get(&PeerKey::C(*i)).copied().unwrap_or(0);
            held.push(format!(
                "consumer c{i} ({}, op {op}) which ended {e}",
                p.addr
            ));
        }
        if held.is_empty() || now - oldest < RELEASE_GUARD {
            return false;
        }
        self.violation(
            Kind::Held,
            format!(
                "{RELEASE_GUARD:?} after the test ended them, the relay still serves (and holds the messages of): {}; drain_timeout is {} ms",
                held.join("; "),
                drain_ms
            ),
        );
        true
    }

    /// Waits (bounded) until the relay has let go of every consumer the
    /// test ended. True when it did not (a `Held` violation).
    fn check_released(&mut self) -> bool {
        loop {
            if self.held_too_long() {
                return true;
            }
            let pending = self.cur.as_ref().is_some_and(|inc| {
                inc.server.peers_page(usize::MAX).0.iter().any(|p| {
                    self.consumers.iter().any(|s| {
                        matches!(s, Slot::Done(r) if r.local == Some(p.addr)
                            && r.end != peers::ConsumerEnd::Torn)
                    })
                })
            });
            if !pending {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Graceful stop of the current incarnation: cancel, await `serve`.
    fn stop(&mut self, why: &str) {
        if self.cur.as_ref().is_some_and(|i| !i.serve.is_finished()) && self.check_released() {
            // The stop would wait out the drain for the held consumer:
            // reported; the case ends here.
            self.kill(why);
            return;
        }
        let Some(inc) = self.cur.take() else { return };
        let t = tick();
        self.stops.push(t);
        inc.token.cancel();
        self.await_end(inc, why, EndKind::Graceful, t);
    }

    /// Waits (bounded) for `serve` to return and records the end; a stop
    /// that hangs kills the process.
    fn await_end(&mut self, inc: Inc, why: &str, kind: EndKind, t: u64) {
        let started = Instant::now();
        let mut notes = Vec::new();
        while !inc.serve.is_finished() {
            if started.elapsed() > STOP_RESCUE && self.disk_limited {
                self.free_disk();
                notes.push(format!(
                    "{why}: the stop was slow on a full disk; space freed after {STOP_RESCUE:?}"
                ));
            }
            if started.elapsed() > STOP_GUARD {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if !inc.serve.is_finished() {
            self.poll_consumers();
            let open: Vec<String> = inc
                .server
                .peers_page(usize::MAX)
                .0
                .into_iter()
                .map(|p| format!("{} {} {}", p.role, p.addr, self.who(p.addr)))
                .collect();
            self.violation(
                Kind::Hang,
                format!(
                    "{why}: the stop of incarnation {} did not finish within {STOP_GUARD:?} (drain_timeout {} ms); still open in the relay: [{}]",
                    inc.info.idx,
                    inc.info.cfg.drain_ms,
                    open.join(", ")
                ),
            );
            self.cur = Some(inc);
            self.kill_with(why, t, notes);
            return;
        }
        let Inc {
            info,
            rt,
            server,
            serve,
            ..
        } = inc;
        let result = rt
            .block_on(serve)
            .map_err(|e| format!("serve task: {e}"))
            .and_then(|r| r.map_err(|e| format!("{e:#}")));
        drop(server);
        // The runtime lives on: connection tasks that outlived the drain
        // keep running, as they do in the real process.
        self.lingering.push(rt);
        self.record_end(&info, kind, t, Some(result), notes);
    }

    /// Kills the process (like kill -9: the disk keeps what was written)
    /// when the case cannot go on; it ends there.
    fn kill(&mut self, why: &str) {
        let t = tick();
        self.kill_with(why, t, Vec::new());
    }

    fn kill_with(&mut self, why: &str, t: u64, mut notes: Vec<String>) {
        let Some(inc) = self.cur.take() else { return };
        notes.push(format!("{why}: the process was killed and the case ended"));
        self.crashes.push((tick(), false));
        let Inc {
            info,
            rt,
            server,
            serve,
            token,
        } = inc;
        drop(serve);
        drop(server);
        rt.shutdown_background();
        self.kill_lingering();
        token.cancel();
        self.wait_unlocked();
        self.record_end(&info, EndKind::Killed, t, None, notes);
        self.dead = true;
    }

    fn kill_lingering(&mut self) {
        for rt in self.lingering.drain(..) {
            rt.shutdown_background();
        }
    }

    fn wait_unlocked(&mut self) {
        let deadline = Instant::now() + LOCK_GUARD;
        while spillway_spool::is_locked(&self.spool) {
            if Instant::now() > deadline {
                self.violation(
                    Kind::Hang,
                    format!("the spool was still locked {LOCK_GUARD:?} after the process died"),
                );
                self.dead = true;
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Which peer of the case has this address (for reports).
    fn who(&self, addr: SocketAddr) -> String {
        let std::net::IpAddr::V4(ip) = addr.ip() else {
            return String::new();
        };
        let [_, kind, hi, lo] = ip.octets();
        let idx = (u32::from(hi) << 8) | u32::from(lo);
        let key = match kind {
            1 => PeerKey::P(idx),
            2 => PeerKey::C(idx),
            _ => return String::new(),
        };
        let from = match self.peer_op.get(&key) {
            Some(op) => format!("op {op}"),
            None => "final drain".to_string(),
        };
        let state = match key {
            PeerKey::C(i) => match self.consumers.get(i as usize - 1) {
                Some(Slot::Done(r)) => format!(", the test ended it: {:?}", r.end),
                Some(Slot::Running(h)) if h.is_finished() => ", the test ended it".to_string(),
                _ => ", still running".to_string(),
            },
            PeerKey::P(_) => String::new(),
        };
        format!("({key:?}, {from}{state})")
    }

    /// The process dies: every runtime goes, then (power cut) the disk
    /// loses what was never synced, then a new process starts.
    fn crash(&mut self, power_cut: bool, keep_pct: u8) {
        let Some(inc) = self.cur.take() else { return };
        assert!(
            inc.info.cfg.crash_safe(),
            "schedule bug: crash under {:?}",
            inc.info.cfg
        );
        let t = tick();
        self.crashes.push((t, power_cut));
        let Inc {
            info,
            rt,
            server,
            serve,
            token,
        } = inc;
        rt.shutdown_background();
        self.kill_lingering();
        // A task inside a synchronous retry loop (an append blocked at the
        // disk bound) is not stopped by the runtime's shutdown, while in a
        // real crash its thread dies too. The cancelled token lets it
        // return; what it logs after the crash is ignored by the checker.
        token.cancel();
        drop(serve);
        drop(server);
        self.wait_unlocked();
        if self.dead {
            return;
        }
        // A kill -9 leaves the disk as it was: what was written and not
        // synced stays in the page cache, unsynced, and a later power cut
        // can still lose it. A power cut keeps what was synced plus
        // `keep_pct` percent of each file's unsynced tail.
        if power_cut {
            let keep = u64::from(keep_pct);
            self.fs.crash(|unsynced| unsynced * keep / 100);
        }
        self.record_end(
            &info,
            EndKind::Crash {
                power_cut,
                keep_pct,
            },
            t,
            None,
            Vec::new(),
        );
        self.start(info.cfg);
    }

    /// fdatasync fails until the route has stopped; then the fault is
    /// cleared and the route restarted.
    fn fail_fsync(&mut self) {
        let Some(inc) = self.cur.as_mut() else { return };
        assert_eq!(
            inc.info.cfg.memory, 0,
            "schedule bug: FailFsync with a memory tier"
        );
        inc.info.fsync_fault = true;
        inc.info.fsyncs_at_fault = self.fs.faults.fsyncs.load(Ordering::SeqCst);
        self.fs.faults.fail_fsync.store(true, Ordering::SeqCst);
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until && !inc.serve.is_finished() {
            std::thread::sleep(Duration::from_millis(10));
        }
        let cfg = inc.info.cfg.clone();
        if inc.serve.is_finished() {
            let inc = self.cur.take().expect("current");
            let t = tick();
            self.stops.push(t);
            self.await_end(inc, "failed fsync", EndKind::SelfStopped, t);
        } else {
            // No fsync came by itself: the close's fsync must fail.
            self.stop("failed fsync (stopped by the test)");
        }
        self.fs.faults.fail_fsync.store(false, Ordering::SeqCst);
        if !self.dead {
            self.start(cfg);
        }
    }

    /// A route that stopped by itself is recorded, and restarted the way a
    /// supervisor (systemd) would, after an operator freed the disk.
    fn check_alive(&mut self) {
        let finished = self.cur.as_ref().is_some_and(|i| i.serve.is_finished());
        if !finished {
            return;
        }
        let inc = self.cur.take().expect("current");
        let cfg = inc.info.cfg.clone();
        let t = tick();
        self.stops.push(t);
        self.await_end(inc, "stopped by itself", EndKind::SelfStopped, t);
        if self.disk_limited {
            self.free_disk();
            if let Some(e) = self.ends.last_mut() {
                e.notes
                    .push("the operator freed the disk before the restart".into());
            }
        }
        self.fs.faults.fail_fsync.store(false, Ordering::SeqCst);
        if !self.dead {
            self.start(cfg);
        }
    }

    fn spawn_consumer(&mut self, spec: Consumer, until: Option<Until>) -> u32 {
        let idx = self.consumers.len() as u32 + 1;
        let sh = self.shared();
        let h = std::thread::Builder::new()
            .name(format!("rm-c{idx}"))
            .spawn(move || peers::run_consumer(sh, idx, spec, until))
            .expect("spawn consumer");
        self.consumers.push(Slot::Running(h));
        idx
    }

    fn spawn_ack_consumer(&mut self, spec: AckConsumer, until: Option<Until>) -> u32 {
        let idx = self.consumers.len() as u32 + 1;
        let sh = self.shared();
        let timeout = Duration::from_millis(u64::from(
            self.case.ack.as_ref().map_or(1000, |a| a.ack_timeout_ms),
        ));
        let h = std::thread::Builder::new()
            .name(format!("rm-c{idx}"))
            .spawn(move || peers_ack::run_ack_consumer(sh, idx, spec, until, timeout))
            .expect("spawn consumer");
        self.consumers.push(Slot::Running(h));
        idx
    }

    /// Starts producer thread number `idx` (the next), running `run`.
    fn spawn_producer(
        &mut self,
        run: impl FnOnce(Arc<Shared>, u32) -> ProducerResult + Send + 'static,
    ) {
        let idx = self.producers.len() as u32 + 1;
        self.peer_op.insert(PeerKey::P(idx), self.op);
        let sh = self.shared();
        let h = std::thread::Builder::new()
            .name(format!("rm-p{idx}"))
            .spawn(move || run(sh, idx))
            .expect("spawn producer");
        self.producers.push(Slot::Running(h));
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Produce(spec) => {
                let spec = spec.clone();
                self.spawn_producer(move |sh, idx| peers::run_producer(sh, idx, spec));
            }
            Op::Consume(spec) => {
                let idx = self.consumers.len() as u32 + 1;
                self.peer_op.insert(PeerKey::C(idx), self.op);
                self.spawn_consumer(spec.clone(), None);
            }
            Op::AckProduce(spec) => {
                let spec = spec.clone();
                self.spawn_producer(move |sh, idx| peers_ack::run_ack_producer(sh, idx, spec));
            }
            Op::AckConsume(spec) => {
                let idx = self.consumers.len() as u32 + 1;
                self.peer_op.insert(PeerKey::C(idx), self.op);
                self.spawn_ack_consumer(spec.clone(), None);
            }
            Op::Sleep { ms } => std::thread::sleep(Duration::from_millis(u64::from(*ms))),
            Op::DiskFull { budget } => {
                self.fs
                    .faults
                    .space_left
                    .store(i64::from(*budget), Ordering::SeqCst);
                self.disk_limited = true;
            }
            Op::DiskFree => self.free_disk(),
            Op::Reload(cfg) => {
                self.stop("reload");
                if !self.dead {
                    self.start(cfg.clone());
                }
            }
            Op::Crash {
                power_cut,
                keep_pct,
            } => self.crash(*power_cut, *keep_pct),
            Op::FailFsync => self.fail_fsync(),
        }
    }

    fn join_all<T>(slots: &mut [Slot<T>], deadline: Instant) -> bool {
        loop {
            let mut running = false;
            for s in slots.iter_mut() {
                s.poll();
                running |= matches!(s, Slot::Running(_));
            }
            if !running {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs the case to the end and returns what happened.
    pub fn run(mut self) -> Outcome {
        let case = self.case;
        if self.start(case.cfg.clone()) {
            let (source, sink) = self.addrs.expect("bound");
            self.shared = Some(Arc::new(Shared {
                inc: std::sync::atomic::AtomicUsize::new(0),
                seed: case.seed,
                frame: case.frame,
                source,
                sink,
                abort: AtomicBool::new(false),
                received: Mutex::new(Default::default()),
                receipts: AtomicU64::new(0),
            }));
            for (i, op) in case.ops.iter().enumerate() {
                self.op = i;
                self.check_alive();
                if !self.dead && self.held_too_long() {
                    self.kill("held consumer");
                }
                if self.dead {
                    break;
                }
                let t0 = Instant::now();
                self.apply(op);
                if verbose() {
                    eprintln!("  op {i} {:.1?}: {op:?}", t0.elapsed());
                }
                if self.dead {
                    break;
                }
            }
            self.op = case.ops.len();
        } else {
            self.dead = true;
        }
        let final_t = tick();
        let t0 = Instant::now();
        if !self.dead {
            self.final_drain();
        }
        if verbose() {
            eprintln!("  final drain {:.1?}", t0.elapsed());
        }
        self.teardown();
        for (inc, g) in std::mem::take(&mut self.guards) {
            let touched = g.after_close();
            if touched.is_empty() {
                continue;
            }
            let end = self.ends.iter().find(|e| e.inc == inc);
            let mut text = format!(
                "the spool of incarnation {inc} changed the directory {} time(s) after it was closed ({}), from a task that outlived it; the next incarnation owned the directory by then:",
                touched.len(),
                end.map_or("at the end of the case".to_string(), |e| format!(
                    "{:?} at op {}",
                    e.kind, e.end_op
                ))
            );
            for (t, what) in touched.iter().take(6) {
                let _ = write!(text, "\n      t={t}: {what}");
            }
            self.violations.push(Violation {
                kind: Kind::AfterClose,
                op: end.map(|e| e.end_op),
                text,
            });
        }
        let route = self.route.clone();
        let events = capture::route_events(&route);
        capture::forget(&route);
        let producers: Vec<ProducerResult> = std::mem::take(&mut self.producers)
            .into_iter()
            .filter_map(|s| match s {
                Slot::Done(r) => Some(r),
                _ => None,
            })
            .collect();
        let consumers: Vec<ConsumerResult> = std::mem::take(&mut self.consumers)
            .into_iter()
            .filter_map(|s| match s {
                Slot::Done(r) => Some(r),
                _ => None,
            })
            .collect();
        let mut out = Outcome {
            violations: std::mem::take(&mut self.violations),
            ends: std::mem::take(&mut self.ends),
            producers,
            consumers,
            events,
            crashes: std::mem::take(&mut self.crashes),
            stops: std::mem::take(&mut self.stops),
            dirty: std::mem::take(&mut self.dirty),
            final_t,
            cut_short: self.dead,
            peer_op: std::mem::take(&mut self.peer_op),
            stats: String::new(),
            dead: self.case.ack.is_some().then(|| self.dead_letters()),
        };
        check::check(case, &mut out);
        out
    }

    /// The dead-letter spool, read offline (every incarnation is closed).
    fn dead_letters(&self) -> Result<Vec<DeadRec>, String> {
        let dir = spillway::queue::dead::dir_of(&self.spool);
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let (frame, seed) = (self.case.frame, self.case.seed);
        let mut out = Vec::new();
        spillway_spool::dump(&dir, None, None, |m| {
            let d = spillway::queue::dead::decode(&m.data).map_err(std::io::Error::other)?;
            let mut p = Parser::new(frame, seed);
            let mut parsed = Vec::new();
            p.feed(&d.message, &mut parsed);
            let id = match (parsed.as_slice(), p.leftover().is_empty()) {
                ([Parsed::Msg(id, _)], true) => Ok(*id),
                _ => Err(format!(
                    "the dead letter does not hold one whole message ({} bytes)",
                    d.message.len()
                )),
            };
            out.push(DeadRec {
                seq: d.seq,
                attempts: d.attempts,
                reason: d.reason.to_string(),
                group: d.group.clone(),
                id,
            });
            Ok(())
        })
        .map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// The end of a case: faults cleared, every peer finished, then a
    /// well-behaved consumer drains the route until every accepted message
    /// arrived and the spool is empty; then a graceful stop.
    fn final_drain(&mut self) {
        self.op = self.case.ops.len();
        self.fs.faults.fail_fsync.store(false, Ordering::SeqCst);
        self.free_disk();
        self.check_alive();
        if self.dead || self.cur.is_none() {
            return;
        }
        let final_spec = Consumer {
            rcvbuf: 0,
            mss: 0,
            read_max: 65536,
            pause_ms: 0,
            life_ms: u32::MAX,
            stall: None,
            end: CEnd::Leave,
        };
        let leave = Arc::new(AtomicBool::new(false));
        // Ack cases: a well-behaved acking consumer per group.
        let ack_groups: Vec<u8> = match &self.case.ack {
            Some(a) => a.group_numbers(),
            None => Vec::new(),
        };
        let first_final = self.consumers.len() as u32 + 1;
        let mut finals: Vec<(Option<u8>, u32)> = Vec::new();
        if ack_groups.is_empty() {
            let i = self.spawn_consumer(final_spec.clone(), Some(Until(Arc::clone(&leave))));
            finals.push((None, i));
        }
        for &g in &ack_groups {
            let i = self
                .spawn_ack_consumer(peers_ack::well_behaved(g), Some(Until(Arc::clone(&leave))));
            finals.push((Some(g), i));
        }
        // Join the peers, watching for consumers the relay holds meanwhile
        // (a held consumer keeps the floor, so at the disk bound producers
        // wait for it: the join would wait out the drain).
        let deadline = Instant::now() + JOIN_GUARD;
        let ok = loop {
            let soon = Instant::now();
            let p = Self::join_all(&mut self.producers, soon);
            let c = Self::join_all(&mut self.consumers[..first_final as usize - 1], soon);
            if p && c {
                break true;
            }
            if self.held_too_long() {
                self.kill("final drain");
                return;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if !ok {
            self.violation(
                Kind::Hang,
                format!("peers still running {JOIN_GUARD:?} into the final drain"),
            );
            self.dead = true;
            return;
        }
        if verbose() {
            eprintln!("  peers joined");
        }
        if self.check_released() {
            self.kill("final drain");
            return;
        }
        // The relay's producer tasks have all logged their end.
        if let Some(inc) = &self.cur {
            let server = Arc::clone(&inc.server);
            let deadline = Instant::now() + RELEASE_GUARD;
            while server.stats().producers.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let sh = self.shared();
        let mut last = (sh.receipts.load(Ordering::SeqCst), Instant::now());
        let ends_before = self.ends.len();
        loop {
            self.check_alive();
            if self.dead {
                return;
            }
            if self.ends.len() > ends_before + 3 {
                self.violation(
                    Kind::Hang,
                    "final drain: the route stopped by itself four times in a row; giving up"
                        .into(),
                );
                self.kill("final drain");
                return;
            }
            let Some(inc) = &self.cur else { return };
            let server = Arc::clone(&inc.server);
            // A final consumer cut by a restart (or reset) is replaced.
            for f in &mut finals {
                if self.consumers[f.1 as usize - 1].poll().is_none() {
                    continue;
                }
                let until = Some(Until(Arc::clone(&leave)));
                f.1 = match f.0 {
                    None => self.spawn_consumer(final_spec.clone(), until),
                    Some(g) => self.spawn_ack_consumer(peers_ack::well_behaved(g), until),
                };
            }
            let st = server.spool().stats();
            let empty = st.next_seq == st.ack_floor;
            // Acking consumers: the spool is empty once every group has
            // acknowledged or dead-lettered everything (each group's floor
            // holds it, and a dead letter's until it is written).
            if empty && !ack_groups.is_empty() {
                break;
            }
            let n = sh.receipts.load(Ordering::SeqCst);
            if n != last.0 {
                last = (n, Instant::now());
            }
            // Done when everything the relay says it accepted arrived; or
            // when the spool is empty and nothing moves any more (what is
            // missing then is gone, which the checker reports).
            if empty && (self.all_accepted_received(&sh) || last.1.elapsed() > QUIET) {
                break;
            }
            if last.1.elapsed() > DRAIN_GUARD {
                self.violation(
                    Kind::Hang,
                    format!(
                        "final drain: no message arrived for {DRAIN_GUARD:?}; the spool still holds seqs {}..{} (memory {} msgs, disk {} msgs)",
                        st.ack_floor, st.next_seq, st.mem_msgs, st.disk_msgs
                    ),
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        leave.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + JOIN_GUARD;
        if !Self::join_all(&mut self.consumers, deadline) {
            self.violation(
                Kind::Hang,
                "the final consumer did not finish its clean leave".into(),
            );
        }
        self.stop("final stop");
    }

    /// Whether every message the relay's log says it accepted (so far)
    /// has been received; crash-ended connections are judged at the end.
    fn all_accepted_received(&self, sh: &Shared) -> bool {
        let events = capture::route_events(&self.route);
        let by_addr: HashMap<String, u64> = events
            .iter()
            .filter(|e| e.message == "producer closed")
            .filter_map(|e| Some((e.get("producer")?.to_string(), e.num("messages")?)))
            .collect();
        let got = sh.received.lock().unwrap_or_else(|e| e.into_inner());
        for p in &self.producers {
            let Slot::Done(p) = p else { continue };
            let Some(addr) = p.local else { continue };
            let n = by_addr.get(&addr.to_string()).copied().unwrap_or(0);
            for seq in 0..n as u32 {
                if !got.contains(&MsgId { conn: p.idx, seq }) {
                    return false;
                }
            }
        }
        true
    }

    fn teardown(&mut self) {
        if let Some(sh) = &self.shared {
            sh.abort.store(true, Ordering::SeqCst);
        }
        let deadline = Instant::now() + JOIN_GUARD;
        let a = Self::join_all(&mut self.producers, deadline);
        let b = Self::join_all(&mut self.consumers, deadline);
        if !(a && b) {
            self.violation(Kind::Hang, "peer threads did not stop at teardown".into());
        }
        if let Some(inc) = self.cur.take() {
            let Inc {
                rt,
                server,
                serve,
                token,
                ..
            } = inc;
            drop(serve);
            drop(server);
            rt.shutdown_background();
            token.cancel();
        }
        self.kill_lingering();
    }
}
