//! Queue mode: store-and-forward of framed messages between a source
//! (producers) and a sink (consumers), through the spool.
//!
//! ```text
//!  producers ──read──▶ Decoder ──batch──▶ spool-write thread: Spool.append   (source.rs, spool_io.rs)
//!                                            │ wake
//!                          spool-read thread: Spool.read ──▶ Dispatch.supply (dispatcher.rs)
//!                                                                │ notify
//!  consumers ◀──writev── delivery tracking ◀── Dispatch.take ◀───┘           (sink.rs, dispatch.rs)
//!                         │ SIOCOUTQ: acked by the consumer's TCP
//!                         └──▶ Dispatch.acked ──▶ spool-maint thread: Spool.ack
//! ```
//!
//! The source never waits for the sink: producers are read as fast as they
//! send, and only `when_full = block` at the disk bound pushes back. Every
//! spool call that can touch the disk (appends, fsync, reads, acks) runs
//! on the route's own threads, so no tokio worker waits for the disk.
//!
//! Where things live: this file holds the route's state (open, reload,
//! stats, peers, failure); `conn.rs` the two ends (accept or dial loops,
//! TLS, each connection's span); `serve.rs` the route's life (housekeeping,
//! the two-phase drain, close); `source.rs` a producer (`pushback.rs` its
//! batches into the spool and the `when_full = block` wait), `sink.rs` a
//! consumer; `dispatch.rs` and `dispatcher.rs` who gets which message;
//! `spool_io.rs` the spool's write, commit and maintenance threads.

/// How long an ack-protocol peer has to send its hello line (`408`).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

mod ack_consumer;
mod ack_producer;
mod conn;
pub mod dead;
mod dispatch;
mod dispatcher;
mod groups;
pub mod jetstream;
pub mod memory;
pub mod metrics;
mod producers;
mod pushback;
mod seqmap;
mod serve;
mod sink;
mod source;
mod spool_io;
pub mod spool_metrics;
mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use anyhow::Context;
use spillway_codec::FrameErrorKind;
use spillway_net::classify::ErrorClass;
use spillway_net::limit::ConnLimits;
use spillway_net::tls::{TlsClient, TlsError, TlsServer};
use spillway_spool::fs::{Fs, StdFs};
use spillway_spool::{Histogram, Spool, SpoolConfig, SpoolError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::accept::Gate;
use crate::config::{EndpointTls, QueueRoute};
use crate::counters::{label, EnumCounters};
use crate::logging::RateLimited;
pub use conn::Role;
pub use dispatch::Dispatch;
pub use memory::MemoryBudget;
pub use sink::ConsumerEnd;
pub use source::ProducerEnd;

/// What every queue route of the process shares: the connection limit
/// across listeners (`global.max_connections`) and the peer memory budget
/// (`global.peer_memory`).
#[derive(Clone, Debug)]
pub struct Shared {
    pub connections: Option<Arc<ConnLimits>>,
    pub memory: Arc<MemoryBudget>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            connections: None,
            memory: Arc::new(MemoryBudget::new(crate::config::defaults::PEER_MEMORY)),
        }
    }
}

/// Receive buffer of producer sockets (the kernel doubles it for its own
/// bookkeeping): about a tenth of a second of a fast producer.
pub const PRODUCER_RCVBUF: usize = 4 << 20;

/// How often a changed consumer position is persisted. After a crash,
/// deliveries since the last persist are sent again (duplicates, never loss);
/// each persist is a small write, an fsync and a rename.
const CURSOR_INTERVAL: Duration = Duration::from_millis(100);

/// Bucket bounds (seconds) of [`QueueStats::delivery_latency`]. Append
/// times have millisecond resolution.
pub const DELIVERY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0,
];

/// Counters of one queue route, read by the admin endpoint.
#[derive(Debug)]
pub struct QueueStats {
    /// Enqueue to delivered (acknowledged by the consumer's TCP), per message.
    pub delivery_latency: Histogram,
    pub producers: AtomicUsize,
    pub consumers: AtomicUsize,
    /// Producer / consumer connections opened (accepted or dialed).
    pub producers_total: AtomicU64,
    pub consumers_total: AtomicU64,
    pub messages_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub messages_delivered: AtomicU64,
    pub bytes_delivered: AtomicU64,
    /// Messages given back to the queue by a consumer that left, reset or
    /// was cut (each give-back counts).
    pub messages_redelivered: AtomicU64,
    /// Refused at the disk bound (`when_full = drop-newest`).
    pub dropped_newest: AtomicU64,
    /// Deleted unread at the disk bound (`when_full = drop-oldest`).
    pub dropped_oldest: AtomicU64,
    /// Producer connections closed for a bad frame, by kind.
    frame_errors: EnumCounters<FrameErrorKind>,
    /// Producers that ended in the middle of a message.
    pub partial_at_eof: AtomicU64,
    /// Messages read from producers (acknowledged to them by TCP) that
    /// could not be queued: a spool that failed, or a disk physically full
    /// past the drain timeout at shutdown.
    pub lost_unqueued: AtomicU64,
    /// Producer connections closed, by reason.
    producer_closed: EnumCounters<ProducerEnd>,
    /// Consumer connections closed, by reason.
    consumer_closed: EnumCounters<ConsumerEnd>,
    /// The last closes of either end, for the status page.
    pub recent_closes: crate::history::Closes,
    /// Producer connections whose TLS handshake failed (accepted peers
    /// that are not TLS or not trusted, dialed peers we rejected).
    pub producer_tls_failures: AtomicU64,
    /// The same for consumer connections.
    pub consumer_tls_failures: AtomicU64,
    /// Dialing of `connect:` endpoints, per [`Role`].
    dial: [DialStats; 2],
    /// Ack protocol: consumers reset for holding a message past
    /// `ack_timeout`.
    pub ack_timeouts: AtomicU64,
    /// Ack protocol: ACK / ACKS frames (or seqs in them) that named no
    /// message the connection held.
    pub acks_ignored: AtomicU64,
    /// Ack protocol: messages given back with NAK.
    pub naks: AtomicU64,
}

/// Connect attempts of one `connect:` endpoint and their failures by class
/// (a failed TLS handshake counts as a failed attempt).
#[derive(Debug, Default)]
pub struct DialStats {
    pub attempts: AtomicU64,
    pub failures: EnumCounters<ErrorClass>,
}

impl Default for QueueStats {
    fn default() -> Self {
        QueueStats {
            delivery_latency: Histogram::new(DELIVERY_BUCKETS),
            producers: AtomicUsize::default(),
            consumers: AtomicUsize::default(),
            producers_total: AtomicU64::default(),
            consumers_total: AtomicU64::default(),
            messages_in: AtomicU64::default(),
            bytes_in: AtomicU64::default(),
            messages_delivered: AtomicU64::default(),
            bytes_delivered: AtomicU64::default(),
            messages_redelivered: AtomicU64::default(),
            dropped_newest: AtomicU64::default(),
            dropped_oldest: AtomicU64::default(),
            frame_errors: Default::default(),
            partial_at_eof: AtomicU64::default(),
            lost_unqueued: AtomicU64::default(),
            producer_closed: Default::default(),
            consumer_closed: Default::default(),
            recent_closes: Default::default(),
            producer_tls_failures: AtomicU64::default(),
            consumer_tls_failures: AtomicU64::default(),
            dial: Default::default(),
            ack_timeouts: AtomicU64::default(),
            acks_ignored: AtomicU64::default(),
            naks: AtomicU64::default(),
        }
    }
}

impl QueueStats {
    /// Dial counters of the `connect:` endpoint of `role` (zero for a
    /// `listen:` endpoint).
    pub fn dial(&self, role: Role) -> &DialStats {
        &self.dial[role as usize]
    }

    pub fn frame_errors(&self, kind: FrameErrorKind) -> u64 {
        self.frame_errors.get(kind)
    }

    fn count_frame_error(&self, kind: FrameErrorKind) {
        self.frame_errors.add(kind);
    }

    pub fn producer_closed(&self, end: ProducerEnd) -> u64 {
        self.producer_closed.get(end)
    }

    pub fn consumer_closed(&self, end: ConsumerEnd) -> u64 {
        self.consumer_closed.get(end)
    }

    fn count_producer_end(&self, end: ProducerEnd) {
        self.producer_closed.add(end);
    }

    /// `msgs` messages of `bytes` bytes were delivered (acknowledged).
    fn count_delivered(&self, msgs: u64, bytes: u64) {
        self.messages_delivered.fetch_add(msgs, Ordering::Relaxed);
        self.bytes_delivered.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A batch of `bytes` bytes was appended with `outcome`.
    fn count_queued(&self, outcome: &spillway_spool::AppendOutcome, bytes: u64) {
        if outcome.dropped_oldest_msgs > 0 {
            self.dropped_oldest
                .fetch_add(outcome.dropped_oldest_msgs, Ordering::Relaxed);
        }
        self.messages_in
            .fetch_add(outcome.accepted as u64, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
    }

    fn count_consumer_end(&self, end: ConsumerEnd) {
        self.consumer_closed.add(end);
    }
}

label!(ProducerEnd, ConsumerEnd);

/// A route stopped because the cluster refused its setup: a JetStream
/// stream or consumer that exists with other settings, or that cannot be
/// made as the route needs it. A configuration problem, not a failure of
/// the running process: after a reload it leaves that route down.
#[derive(Debug)]
pub struct SetupRefused(pub String);

impl std::fmt::Display for SetupRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SetupRefused {}

/// A running queue route.
pub struct QueueServer {
    /// The route's settings; a reload of tunable settings swaps them in
    /// place ([`QueueServer::reconfigure`]).
    route: RwLock<Arc<QueueRoute>>,
    spool: Spool,
    /// The threads producers' appends run on.
    io: spool_io::SpoolIo,
    /// Names of ack-protocol producers and their last pseq (only with
    /// `from_protocol = "ack"`).
    producer_names: Option<Arc<producers::Producers>>,
    /// Producers waiting for space (`when_full = block`).
    waiting_for_space: std::sync::atomic::AtomicUsize,
    /// Hands messages to consumers; reads the spool ahead of them on its
    /// own thread, and acknowledges it.
    /// The default group's dispatcher, or the first named group's.
    dispatcher: dispatcher::Dispatcher,
    /// The other named groups' dispatchers (`groups`), in config order.
    groups: Vec<dispatcher::Dispatcher>,
    /// Every group's floor; the spool's is the lowest.
    floors: Arc<groups::Floors>,
    /// The dead-letter spool (`to_protocol = "ack"`).
    dead: Option<Arc<dead::DeadLetters>>,
    /// The JetStream backend (`[route.jetstream]`): the publisher's view of
    /// the spool, and the inbox consumers are served from.
    jetstream: Option<jetstream::Backend>,
    stats: QueueStats,
    /// Set when the spool failed (poisoned, I/O): the route stops.
    failure: Mutex<Option<String>>,
    /// The failure is a setup the cluster refused ([`SetupRefused`]).
    setup_refused: std::sync::atomic::AtomicBool,
    stop: CancellationToken,
    /// Cuts the consumers: cancelled after `stop`, once the producers have
    /// stored what they had read (or half the drain timeout passed), so
    /// consumers keep freeing disk space meanwhile.
    cut: CancellationToken,
    /// When the drain began.
    stopped_at: std::sync::OnceLock<Instant>,
    /// Ends every task of the route that outlived the drain, so that none
    /// is left to touch the spool after `close` (a reloaded route reopens
    /// the same directory at once).
    kill: CancellationToken,
    /// How long a consumer being cut may take to acknowledge what it was sent.
    drain: Duration,
    /// Rate limit for "the disk tier is full" warnings.
    blocked_warning: Mutex<RateLimited>,
    /// Connection limits of the `listen:` endpoints.
    gate: Gate,
    /// The process-wide budget of peer memory (`global.peer_memory`).
    memory: Arc<MemoryBudget>,
    /// TLS of each end, loaded from the route's files; replaced by
    /// [`QueueServer::reload_tls`]. A connection clones what it needs.
    tls: RwLock<QueueTls>,
    tls_warning: Mutex<RateLimited>,
    /// Connected producers and consumers, for `/status`.
    peers: Mutex<BTreeMap<u64, PeerInfo>>,
    next_peer: AtomicU64,
    /// Unix seconds since when no consumer is connected (kept while one
    /// is, then reset when the last one leaves).
    no_consumer_since: AtomicU64,
}

/// A connected producer or consumer, as `/status` lists it.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// `producer` or `consumer`.
    pub role: &'static str,
    pub addr: SocketAddr,
    /// Unix time of the connection, seconds.
    pub since: u64,
    /// When the connection was made.
    pub connected: std::time::Instant,
    /// Bytes of messages this peer has moved: queued from a producer,
    /// acknowledged by a consumer's TCP.
    pub bytes: Arc<AtomicU64>,
    /// Messages delivered to this consumer and not acknowledged yet (ack
    /// protocol; 0 otherwise).
    pub unacked: Arc<AtomicU64>,
}

/// Removes a peer from the registry when its connection ends.
struct PeerGuard<'a> {
    server: &'a QueueServer,
    id: u64,
    role: Role,
    bytes: Arc<AtomicU64>,
    unacked: Arc<AtomicU64>,
}

impl PeerGuard<'_> {
    /// The peer's byte counter, for its connection to count into.
    fn bytes(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.bytes)
    }

    /// The peer's count of unacknowledged messages (ack consumers).
    fn unacked(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.unacked)
    }
}

impl Drop for PeerGuard<'_> {
    fn drop(&mut self) {
        let mut peers = self.server.peers_lock();
        peers.remove(&self.id);
        if self.role == Role::Consumer && !peers.values().any(|p| p.role == Role::Consumer.as_str())
        {
            let now = crate::units::since_epoch().as_secs();
            self.server.no_consumer_since.store(now, Ordering::Relaxed);
        }
    }
}

/// TLS at one end, loaded.
#[derive(Clone, Debug)]
enum SideTls {
    Server(TlsServer),
    Client(TlsClient),
}

#[derive(Clone, Debug, Default)]
struct QueueTls {
    from: Option<SideTls>,
    to: Option<SideTls>,
}

impl QueueTls {
    fn load(route: &QueueRoute) -> Result<Self, TlsError> {
        let side = |cfg: &Option<EndpointTls>| -> Result<Option<SideTls>, TlsError> {
            Ok(match cfg {
                None => None,
                Some(EndpointTls::Server(c)) => Some(SideTls::Server(TlsServer::load(c)?)),
                Some(EndpointTls::Client(c)) => Some(SideTls::Client(TlsClient::load(c)?)),
            })
        };
        Ok(QueueTls {
            from: side(&route.from_tls)?,
            to: side(&route.to_tls)?,
        })
    }
}

impl QueueServer {
    /// Opens (and recovers) the route's spool.
    pub fn open(
        route: QueueRoute,
        shutdown: &CancellationToken,
        drain: Duration,
    ) -> anyhow::Result<Arc<Self>> {
        Self::open_with_limits(route, shutdown, drain, Shared::default())
    }

    /// [`QueueServer::open`], under the process-wide limits `shared`.
    pub fn open_with_limits(
        route: QueueRoute,
        shutdown: &CancellationToken,
        drain: Duration,
        shared: Shared,
    ) -> anyhow::Result<Arc<Self>> {
        Self::open_on(route, shutdown, drain, shared, Arc::new(StdFs))
    }

    /// [`QueueServer::open_with_limits`] with the spool on the file system
    /// `fs` (the simulated disk of the route-level tests).
    pub fn open_on(
        route: QueueRoute,
        shutdown: &CancellationToken,
        drain: Duration,
        shared: Shared,
        fs: Arc<dyn Fs>,
    ) -> anyhow::Result<Arc<Self>> {
        // Certificates first: a bad file is reported before the spool is locked.
        let tls = QueueTls::load(&route).with_context(|| format!("route '{}': TLS", route.name))?;
        let mut cfg = SpoolConfig::new(&route.spool);
        cfg.memory_limit = route.memory;
        cfg.max_disk = route.max_disk;
        cfg.when_full = route.when_full;
        cfg.durability = route.fsync;
        cfg.segment_size = route.segment_size;
        cfg.max_message = u32::try_from(route.max_message).unwrap_or(u32::MAX);
        // A blocked append comes back every second so the producer side can
        // log the pushback and notice a shutdown; it then retries.
        cfg.block_timeout = Some(Duration::from_secs(1));
        cfg.cursor_interval = CURSOR_INTERVAL;
        let (spool, report) = Spool::open_with_fs(cfg, Arc::clone(&fs)).with_context(|| {
            format!(
                "route '{}': cannot open spool {}",
                route.name,
                route.spool.display()
            )
        })?;
        if let Some(w) = spillway_spool::fs::exposure(&route.spool) {
            warn!(route = %route.name, "{w}");
        }
        if report.memory_reserved < report.memory_reserve_wanted || report.cursor_write_failed {
            // A full disk at start: the route runs, with a smaller memory
            // tier (or a stale cursor: a few redeliveries after a crash).
            warn!(route = %route.name, spool = %route.spool.display(), "{report}");
        } else {
            info!(route = %route.name, spool = %route.spool.display(), "{report}");
        }
        let io = spool_io::SpoolIo::start(&spool, &route.name)
            .with_context(|| format!("route '{}': spool threads", route.name))?;
        // With a JetStream backend, the spool is the producers' write-behind
        // buffer, read by the publisher alone; consumers are served from
        // the inbox (see jetstream/mod.rs). Otherwise consumers read the spool.
        let (backend, cons_spool, cons_io) = match &route.jetstream {
            None => (None, spool.clone(), None),
            Some(cfg) => {
                let ctx = || format!("route '{}': jetstream", route.name);
                let spool_id = jetstream::spool_id(&route.spool).with_context(ctx)?;
                let inbox =
                    jetstream::open_inbox(&route.spool, cfg, route.max_message, Arc::clone(&fs))
                        .with_context(ctx)?;
                let inbox_io = spool_io::SpoolIo::start(&inbox, &format!("{}-in", route.name))
                    .with_context(ctx)?;
                let (floors, starts) = groups::Floors::open(&spool, &route.spool, &[], io.acker());
                let outbox = dispatcher::Dispatcher::start(
                    &spool,
                    starts[0],
                    0,
                    io.acker(),
                    Arc::new(floors),
                    0,
                    None,
                    &route.name,
                )
                .with_context(ctx)?;
                let wake = outbox.waker();
                spool.set_notify(Box::new(wake));
                let inbox_acker = inbox_io.acker();
                let b = jetstream::Backend {
                    cfg: cfg.clone(),
                    spool_id,
                    outbox,
                    inbox: inbox.clone(),
                    inbox_io,
                    stats: jetstream::JsStats::default(),
                };
                (Some(b), inbox, Some(inbox_acker))
            }
        };
        let cons_acker = cons_io.unwrap_or_else(|| io.acker());
        let dead = if route.to_protocol == crate::config::Protocol::Ack {
            let d = dead::DeadLetters::start(
                &route.spool,
                u32::try_from(route.max_message).unwrap_or(u32::MAX),
                Arc::clone(&fs),
                &route.name,
                cons_acker.clone(),
            )
            .with_context(|| {
                format!(
                    "route '{}': cannot open the dead-letter spool {}",
                    route.name,
                    dead::dir_of(&route.spool).display()
                )
            })?;
            Some(Arc::new(d))
        } else {
            None
        };
        let floors_dir = match &route.jetstream {
            Some(_) => jetstream::inbox_dir(&route.spool),
            None => route.spool.clone(),
        };
        let (floors, starts) =
            groups::Floors::open(&cons_spool, &floors_dir, &route.groups, cons_acker.clone());
        let floors = Arc::new(floors);
        let mut dispatchers = Vec::with_capacity(starts.len());
        for (i, &start) in starts.iter().enumerate() {
            let d = dispatcher::Dispatcher::start(
                &cons_spool,
                start,
                route.redeliver_on_reset,
                cons_acker.clone(),
                Arc::clone(&floors),
                i,
                dead.clone(),
                &route.name,
            )
            .with_context(|| format!("route '{}': spool reader thread", route.name))?;
            d.set_max_deliveries(route.max_deliveries);
            dispatchers.push(d);
        }
        let wakers: Vec<_> = dispatchers.iter().map(|d| d.waker()).collect();
        cons_spool.set_notify(Box::new(move || wakers.iter().for_each(|w| w())));
        let mut dispatchers = dispatchers.into_iter();
        let dispatcher = dispatchers.next().context("the default group")?;
        let groups: Vec<dispatcher::Dispatcher> = dispatchers.collect();
        let producer_names = if route.from_protocol == crate::config::Protocol::Ack {
            let p =
                producers::Producers::open(&route.spool, route.producer_memory, spool.next_seq())
                    .with_context(|| {
                    format!(
                        "route '{}': cannot open the producer table in {}",
                        route.name,
                        route.spool.display()
                    )
                })?;
            Some(Arc::new(p))
        } else {
            None
        };
        let gate = Gate::new(
            shared.connections,
            route.max_connections,
            route
                .max_connections_per_ip
                .map(|n| (n, route.per_ip_ipv6_prefix)),
        );
        Ok(Arc::new(QueueServer {
            route: RwLock::new(Arc::new(route)),
            spool,
            io,
            waiting_for_space: std::sync::atomic::AtomicUsize::new(0),
            producer_names,
            dispatcher,
            groups,
            floors,
            dead,
            jetstream: backend,
            stats: QueueStats::default(),
            failure: Mutex::new(None),
            setup_refused: std::sync::atomic::AtomicBool::new(false),
            stop: shutdown.child_token(),
            cut: CancellationToken::new(),
            stopped_at: std::sync::OnceLock::new(),
            kill: CancellationToken::new(),
            drain,
            blocked_warning: Mutex::new(RateLimited::new(Duration::from_secs(10))),
            tls: RwLock::new(tls),
            tls_warning: Mutex::new(RateLimited::new(Duration::from_secs(5))),
            peers: Mutex::new(BTreeMap::new()),
            next_peer: AtomicU64::new(0),
            no_consumer_since: AtomicU64::new(crate::units::since_epoch().as_secs()),
            gate,
            memory: shared.memory,
        }))
    }

    /// The `limit` oldest connected peers, and how many there are in all:
    /// what `/status` shows, so one request costs O(limit), not
    /// O(connections).
    pub fn peers_page(&self, limit: usize) -> (Vec<PeerInfo>, usize) {
        let peers = self.peers_lock();
        (peers.values().take(limit).cloned().collect(), peers.len())
    }

    /// How long the longest-connected consumer has been connected
    /// (`None`: no consumer). Peers are kept in the order they came.
    pub fn oldest_consumer_age(&self) -> Option<Duration> {
        self.peers_lock()
            .values()
            .find(|p| p.role == Role::Consumer.as_str())
            .map(|p| p.connected.elapsed())
    }

    fn peers_lock(&self) -> MutexGuard<'_, BTreeMap<u64, PeerInfo>> {
        // Inserts and removes are single calls; a panic cannot tear the map.
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register_peer(&self, role: Role, addr: SocketAddr) -> PeerGuard<'_> {
        let id = self.next_peer.fetch_add(1, Ordering::Relaxed);
        let since = crate::units::since_epoch().as_secs();
        let bytes = Arc::new(AtomicU64::new(0));
        let unacked = Arc::new(AtomicU64::new(0));
        self.peers_lock().insert(
            id,
            PeerInfo {
                role: role.as_str(),
                addr,
                since,
                connected: std::time::Instant::now(),
                bytes: Arc::clone(&bytes),
                unacked: Arc::clone(&unacked),
            },
        );
        PeerGuard {
            server: self,
            id,
            role,
            bytes,
            unacked,
        }
    }

    /// Unix seconds since when no consumer has been connected, if none is.
    pub fn no_consumer_since(&self) -> Option<u64> {
        let peers = self.peers_lock();
        let any = peers.values().any(|p| p.role == Role::Consumer.as_str());
        (!any).then(|| self.no_consumer_since.load(Ordering::Relaxed))
    }

    /// Producers waiting for space right now (`when_full = block`).
    pub fn blocked_producers(&self) -> usize {
        self.waiting_for_space.load(Ordering::Relaxed)
    }

    /// Re-reads the route's certificate, key and CA files. New connections
    /// (and the next redial) use them; established ones keep theirs. On
    /// error the files in use stay in use.
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        let fresh = QueueTls::load(&self.route())?;
        *self.tls.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    fn count_tls_failure(&self, role: Role) {
        let counter = match role {
            Role::Producer => &self.stats.producer_tls_failures,
            Role::Consumer => &self.stats.consumer_tls_failures,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn side_tls(&self, role: Role) -> Option<SideTls> {
        let tls = self.tls.read().unwrap_or_else(|e| e.into_inner());
        match role {
            Role::Producer => tls.from.clone(),
            Role::Consumer => tls.to.clone(),
        }
    }

    /// A failed handshake: counted, and logged (rate-limited: peers
    /// control how often it happens).
    fn tls_failed(&self, role: Role, e: &TlsError) {
        self.count_tls_failure(role);
        let suppressed = self
            .tls_warning
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check();
        if let Some(suppressed) = suppressed {
            warn!(kind = %e.as_label(),
                  persistent = e.is_persistent(), error = %e, suppressed,
                  "TLS handshake failed; connection closed");
        }
        // The one line per connection end, as for every producer and consumer.
        info!(reason = "tls_handshake", "{} closed", role.as_str());
    }

    /// Each consumer group's name ("default" on a route without groups)
    /// and lag (messages it has not had delivered yet), for `/status`.
    pub fn group_lags(&self) -> Vec<(String, u64)> {
        self.dispatchers()
            .map(|d| {
                let name = match d.group_name() {
                    "" => "default",
                    g => g,
                };
                (name.to_string(), d.lag())
            })
            .collect()
    }

    /// The dispatcher of every group, the default one first.
    fn dispatchers(&self) -> impl Iterator<Item = &dispatcher::Dispatcher> {
        std::iter::once(&self.dispatcher).chain(&self.groups)
    }

    /// The dispatcher of group `name`: on a route without groups, the
    /// default group's (`None`); on one with groups, the named one's.
    /// On a jetstream route with groups, the group this relay reads (and
    /// no other) is served by the default dispatcher.
    fn group(&self, name: Option<&str>) -> Option<&dispatcher::Dispatcher> {
        match name {
            None => self.route().groups.is_empty().then_some(&self.dispatcher),
            Some(n) => match self
                .route()
                .jetstream
                .as_ref()
                .and_then(|js| js.read_group())
            {
                Some(reads) => (reads == n).then_some(&self.dispatcher),
                None => self.dispatchers().find(|d| d.group_name() == n),
            },
        }
    }

    pub fn stats(&self) -> &QueueStats {
        &self.stats
    }

    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Whether `new` can replace this route's settings in place: the same
    /// endpoints, spool, framing, message limit, TLS, per-client limits and
    /// JetStream backend;
    /// only tunables differ (memory, disk bound, fsync, segment size,
    /// redelivery window, timeouts, backoff).
    pub fn can_reconfigure(&self, new: &QueueRoute) -> bool {
        let old = self.route();
        old.name == new.name
            && old.from == new.from
            && old.to == new.to
            && old.spool == new.spool
            && old.framing == new.framing
            && old.from_protocol == new.from_protocol
            && old.to_protocol == new.to_protocol
            && old.groups == new.groups
            && old.max_message == new.max_message
            && old.from_tls == new.from_tls
            && old.to_tls == new.to_tls
            && old.max_connections == new.max_connections
            && old.max_connections_per_ip == new.max_connections_per_ip
            && old.per_ip_ipv6_prefix == new.per_ip_ipv6_prefix
            // The backend's connection, stream and consumer are set up once.
            && old.jetstream == new.jetstream
    }

    /// Applies a reload's new tunables to the running route: nothing is
    /// closed or reopened, so no producer, consumer or message in flight
    /// is disturbed. New connections (and the next appends) use them.
    pub fn reconfigure(&self, new: QueueRoute) -> Result<(), SpoolError> {
        let t = spillway_spool::Tunables {
            memory_limit: new.memory,
            max_disk: new.max_disk,
            when_full: new.when_full,
            durability: new.fsync,
            segment_size: new.segment_size,
        };
        self.spool.reconfigure(t)?;
        for d in self.dispatchers() {
            d.set_redeliver(new.redeliver_on_reset);
            d.set_max_deliveries(new.max_deliveries);
        }
        *self.route.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        Ok(())
    }

    /// The route's settings now.
    pub fn route(&self) -> Arc<QueueRoute> {
        Arc::clone(&self.route.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Admission control of the route's `listen:` endpoints.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// What ends a side: `stop` for producers, `cut` (later) for consumers.
    fn stop_token(&self, role: Role) -> &CancellationToken {
        match role {
            Role::Producer => &self.stop,
            Role::Consumer => &self.cut,
        }
    }

    /// The drain deadline of a connection being ended by shutdown: the
    /// route's drain began at `stopped_at` (now, if not yet noted); the
    /// producers get the first half, the consumers the rest (at least a
    /// second, to finish the message in flight).
    fn drain_deadline(&self, role: Role) -> Instant {
        let at = *self.stopped_at.get_or_init(Instant::now);
        match role {
            Role::Producer => at + self.drain / 2,
            Role::Consumer => (at + self.drain).max(Instant::now() + Duration::from_secs(1)),
        }
    }

    /// A dialer ran out of attempts: log, stop the route, make `serve` fail.
    fn give_up(&self, msg: &str) {
        error!("{msg}; stopping the route");
        let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        f.get_or_insert_with(|| msg.to_string());
        self.stop.cancel();
    }

    /// Whether the route stops because it failed.
    fn failed(&self) -> bool {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// The JetStream backend's counters (`[route.jetstream]` routes).
    pub fn jetstream_stats(&self) -> Option<&jetstream::JsStats> {
        self.jetstream.as_ref().map(|b| &b.stats)
    }

    /// The JetStream backend as `/status` shows it (`None`: a local
    /// queue).
    pub fn jetstream_status(&self) -> Option<serde_json::Value> {
        self.jetstream.as_ref().map(jetstream::Backend::status)
    }

    /// The spool failed: log once, stop the route, make `serve` fail.
    /// A spool closed during shutdown (a connection outlived the drain
    /// timeout) is the shutdown itself, not a failure.
    fn fail(&self, what: &str, e: &SpoolError) {
        if self.stop.is_cancelled() && matches!(e, SpoolError::Closed) {
            tracing::debug!("{what} after the spool closed at shutdown");
            return;
        }
        self.fail_with(what, e);
    }

    /// Stops the route for `e` (the first failure is the one reported).
    fn fail_with(&self, what: &str, e: &dyn std::fmt::Display) {
        let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            error!(error = %e, "{what} failed; stopping the route");
            *f = Some(format!("{what}: {e}"));
        }
        self.stop.cancel();
    }
}
