//! Stream mode: a transparent L4 reverse proxy and load balancer.
//!
//! Each accepted connection is paired with an upstream connection picked by
//! the route's balancer. Bytes flow both ways unchanged, each direction
//! through a bounded buffer: by default a kernel pipe moved with `splice(2)`
//! (zero copy, backpressure when the writer is slow), or with a spill
//! directory a user-space buffer that overflows to a temporary file so the
//! fast side keeps flowing. EOF on one side becomes `shutdown(SHUT_WR)` on
//! the other; the opposite direction keeps going until it ends too, bounded
//! by the half-close timer. A reset on one side resets the other.
//!
//! Liveness: every client and upstream socket gets TCP keepalive and
//! `TCP_USER_TIMEOUT` (a vanished peer fails with `ETIMEDOUT`: reason
//! `peer_timeout`); a direction whose destination takes no byte for
//! `write_stall_timeout` while bytes wait fails with `write_stall` (with
//! spill, the source keeps flowing into the file meanwhile: the stall is
//! about the destination only); `max_lifetime` bounds a connection's age.
//! These failures reset both sides, like any broken connection.

mod io_copy;
pub mod spill;
mod splice;
pub mod upstream;

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use socket2::SockRef;
use spillway_net::balance::{Balancer, Lease};
use spillway_net::breaker::Active;
use spillway_net::dial::{dial, DialOptions};
use spillway_net::health::{next_delay, probe};
use spillway_net::limit::ConnLimits;
use spillway_net::timeout::StallTimer;
use spillway_net::tls::{MaybeTls, TlsClient, TlsError, TlsServer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::accept::{accept_loop, Accepted};
use crate::accept::{Admitted, Gate};
use crate::config::StreamRoute;
use crate::logging::RateLimited;
use spill::{SpillBudget, SpillLimits};
use upstream::{Pool, UpstreamStatus};

/// Why a proxied connection ended. Logged once per connection and counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// Both directions ended cleanly; the client sent its EOF first.
    ClientEof,
    /// Both directions ended cleanly; the upstream sent its EOF first.
    UpstreamEof,
    ClientReset,
    UpstreamReset,
    /// A local failure (pipe, spill file) ended the connection.
    LocalError,
    IdleTimeout,
    HalfCloseTimeout,
    /// No upstream could be connected within the allowed tries.
    NoUpstream,
    /// The route's connection limit was reached.
    Limit,
    /// The drain period after SIGTERM ran out.
    Shutdown,
    /// A destination accepted no byte for `write_stall_timeout` while
    /// bytes were waiting for it.
    WriteStall,
    /// Keepalive or `TCP_USER_TIMEOUT` declared a peer gone (ETIMEDOUT).
    PeerTimeout,
    /// The connection reached `max_lifetime`.
    MaxLifetime,
    /// The client's TLS handshake failed (not TLS at all, an untrusted or
    /// missing client certificate, a timeout).
    TlsHandshake,
    /// Every upstream that could be tried was at its circuit breaker's
    /// limit (max connections or max pending connects): refused at once.
    CircuitOpen,
}

impl CloseReason {
    pub const ALL: [CloseReason; 15] = [
        CloseReason::ClientEof,
        CloseReason::UpstreamEof,
        CloseReason::ClientReset,
        CloseReason::UpstreamReset,
        CloseReason::LocalError,
        CloseReason::IdleTimeout,
        CloseReason::HalfCloseTimeout,
        CloseReason::NoUpstream,
        CloseReason::Limit,
        CloseReason::Shutdown,
        CloseReason::WriteStall,
        CloseReason::PeerTimeout,
        CloseReason::MaxLifetime,
        CloseReason::TlsHandshake,
        CloseReason::CircuitOpen,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientEof => "client_eof",
            CloseReason::UpstreamEof => "upstream_eof",
            CloseReason::ClientReset => "client_reset",
            CloseReason::UpstreamReset => "upstream_reset",
            CloseReason::LocalError => "local_error",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::HalfCloseTimeout => "half_close_timeout",
            CloseReason::NoUpstream => "no_upstream",
            CloseReason::Limit => "limit",
            CloseReason::Shutdown => "shutdown",
            CloseReason::WriteStall => "write_stall",
            CloseReason::PeerTimeout => "peer_timeout",
            CloseReason::MaxLifetime => "max_lifetime",
            CloseReason::TlsHandshake => "tls_handshake",
            CloseReason::CircuitOpen => "circuit_open",
        }
    }

    /// Position in [`CloseReason::ALL`] (declaration order; a test checks).
    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Direction indexes into [`Progress`] and [`RouteStats`].
pub const CLIENT_TO_UPSTREAM: usize = 0;
pub const UPSTREAM_TO_CLIENT: usize = 1;

/// Counters of one stream route, read by the admin endpoint.
#[derive(Debug, Default)]
pub struct RouteStats {
    pub accepted: AtomicU64,
    pub active: AtomicUsize,
    closed: [AtomicU64; CloseReason::ALL.len()],
    pub bytes: [AtomicU64; 2],
    pub spilled_bytes: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Client connections whose TLS handshake failed (also counted as
    /// closed with [`CloseReason::TlsHandshake`]).
    pub tls_handshake_failures: AtomicU64,
    /// Upstream connections whose TLS handshake failed (also counted in
    /// `connect_failures`).
    pub upstream_tls_failures: AtomicU64,
}

impl RouteStats {
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed[reason.index()].load(Ordering::Relaxed)
    }
}

/// How a direction failed; the side tells whom to blame in the close reason.
#[derive(Debug)]
pub(crate) enum DirError {
    Read(io::Error),
    Write(io::Error),
    Local(io::Error),
    /// The destination took no byte for the write-stall timeout.
    WriteStall(Duration),
}

/// Waits until `dst` may take more bytes, at most until the stall timer
/// (started now unless it runs already) expires.
pub(crate) async fn writable_or_stall(
    dst: &TcpStream,
    stall: &mut StallTimer,
) -> Result<(), DirError> {
    let now = Instant::now();
    stall.blocked(now.into_std());
    let deadline = stall.deadline().map_or(now, Instant::from_std);
    match tokio::time::timeout_at(deadline, dst.writable()).await {
        Ok(r) => r.map_err(DirError::Write),
        Err(_) => Err(DirError::WriteStall(
            stall.stalled_for(Instant::now().into_std()),
        )),
    }
}

/// Which peer a close reason is about, for the log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Client,
    Upstream,
}

impl Side {
    fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
        }
    }
}

/// Live per-connection counters shared by the two directions and the
/// supervisor (which reads them for the idle timer and the final log line).
pub(crate) struct Progress {
    start: Instant,
    last_activity_ms: AtomicU64,
    bytes: [AtomicU64; 2],
    spilled: AtomicU64,
    stats: Arc<RouteStats>,
}

impl Progress {
    fn new(stats: Arc<RouteStats>) -> Self {
        Progress {
            start: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
            bytes: Default::default(),
            spilled: AtomicU64::new(0),
            stats,
        }
    }

    pub(crate) fn moved(&self, dir: usize, n: usize) {
        self.bytes[dir].fetch_add(n as u64, Ordering::Relaxed);
        self.stats.bytes[dir].fetch_add(n as u64, Ordering::Relaxed);
        self.touch();
    }

    pub(crate) fn spilled(&self, n: usize) {
        self.spilled.fetch_add(n as u64, Ordering::Relaxed);
        self.stats
            .spilled_bytes
            .fetch_add(n as u64, Ordering::Relaxed);
        self.touch();
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_activity_ms.store(ms, Ordering::Relaxed);
    }

    fn last_activity(&self) -> Instant {
        self.start + Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed))
    }
}

pub(crate) fn shutdown_write(s: &TcpStream) -> Result<(), DirError> {
    match SockRef::from(s).shutdown(std::net::Shutdown::Write) {
        Ok(()) => Ok(()),
        // The peer is already gone; the other direction will notice.
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        Err(e) => Err(DirError::Write(e)),
    }
}

/// Shared state of a running stream route.
///
/// A route's server can be replaced while the route keeps serving (a
/// reload with changed settings on the same listener): new connections get
/// the new server, connections in flight keep the one they started with.
/// The replaced server is [`retired`](StreamServer::retire); anything
/// running in the background on its behalf must stop when
/// [`StreamServer::retired`] fires.
pub struct StreamServer {
    route: StreamRoute,
    balancer: Balancer,
    /// Upstream health, ejection, breakers and their counters.
    pool: Pool,
    /// Listener limits (global and per client IP).
    gate: Gate,
    stats: Arc<RouteStats>,
    budget: Arc<SpillBudget>,
    pipes: splice::PipePool,
    retired: CancellationToken,
    /// Loaded from the route's files; replaced by [`StreamServer::reload_tls`].
    /// A connection clones what it needs at its start.
    tls: RwLock<RouteTls>,
    /// Rate limits of TLS warnings: client handshakes, upstream handshakes
    /// (separate, so a flood of bad clients does not hide an upstream's
    /// certificate problem).
    tls_warning: [Mutex<RateLimited>; 2],
}

/// The TLS state of a route, loaded from its files.
#[derive(Clone, Debug, Default)]
struct RouteTls {
    server: Option<TlsServer>,
    upstream: Option<TlsClient>,
}

impl RouteTls {
    fn load(route: &StreamRoute) -> Result<Self, TlsError> {
        Ok(RouteTls {
            server: route.tls.as_ref().map(TlsServer::load).transpose()?,
            upstream: route
                .upstream_tls
                .as_ref()
                .map(TlsClient::load)
                .transpose()?,
        })
    }
}

/// How the two directions of a connection ended.
enum Ended {
    Clean(CloseReason),
    /// A direction failed; `true` when it was client->upstream.
    Failed(DirError, bool),
    /// `max_lifetime` ran out with the connection still open.
    Lifetime,
}

/// Empty pipes kept for reuse per route; beyond this they are closed.
const MAX_IDLE_PIPES: usize = 256;

impl StreamServer {
    /// Builds the route's state; reads its TLS files, if any (so a failure
    /// names the file and what is wrong with it).
    pub fn new(route: StreamRoute, budget: Arc<SpillBudget>) -> Result<Self, TlsError> {
        Self::with_stats(route, budget, Arc::default())
    }

    /// A server that counts into existing `stats` (a replacement keeps the
    /// route's counters going).
    pub fn with_stats(
        route: StreamRoute,
        budget: Arc<SpillBudget>,
        stats: Arc<RouteStats>,
    ) -> Result<Self, TlsError> {
        let balancer = Balancer::new(route.balance, route.upstreams.len());
        let pipes = splice::PipePool::new(route.pipe_size, route.buffer, MAX_IDLE_PIPES);
        let tls = RouteTls::load(&route)?;
        let pool = Pool::new(&route);
        // The route's total is checked after accept, with its own close
        // reason (`limit`), so the gate carries only the per-client bound.
        let gate = Gate::new(
            &route.name,
            None,
            usize::MAX,
            route
                .max_connections_per_ip
                .map(|n| (n, route.per_ip_ipv6_prefix)),
        );
        Ok(StreamServer {
            route,
            balancer,
            pool,
            gate,
            stats,
            budget,
            pipes,
            retired: CancellationToken::new(),
            tls: RwLock::new(tls),
            tls_warning: [
                Mutex::new(RateLimited::new(Duration::from_secs(5))),
                Mutex::new(RateLimited::new(Duration::from_secs(5))),
            ],
        })
    }

    /// Puts the route under the process-wide connection limit (shared by
    /// every route; `global.max_connections`).
    pub fn with_global_limits(mut self, global: Option<Arc<ConnLimits>>) -> Self {
        let per_ip = self
            .route
            .max_connections_per_ip
            .map(|n| (n, self.route.per_ip_ipv6_prefix));
        self.gate = Gate::new(&self.route.name, global, usize::MAX, per_ip);
        self
    }

    /// Per-upstream state (health, ejection, breaker, connect counters), in
    /// the order of the route's `upstreams`.
    pub fn upstreams(&self) -> &[UpstreamStatus] {
        self.pool.refresh(Instant::now().into_std());
        self.pool.statuses()
    }

    /// Connections given to an upstream in panic mode (no upstream healthy).
    pub fn panic_picks(&self) -> u64 {
        self.pool.panics()
    }

    /// Admission control of the route's listener (limit rejections).
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Re-reads the route's certificate, key and CA files. New connections
    /// use them; established ones keep what they started with. On error
    /// the files in use stay in use.
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        let fresh = RouteTls::load(&self.route)?;
        *self.tls.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    fn current_tls(&self) -> RouteTls {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Peer-triggered TLS warnings are rate-limited, per side.
    fn tls_warn(&self, side: Side) -> Option<u64> {
        let i = match side {
            Side::Client => 0,
            Side::Upstream => 1,
        };
        self.tls_warning[i]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check()
    }

    /// Marks this server replaced or stopped: no new connections will use it.
    pub fn retire(&self) {
        self.retired.cancel();
    }

    /// Fires once the server is retired.
    pub fn retired(&self) -> &CancellationToken {
        &self.retired
    }

    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    pub fn stats(&self) -> &Arc<RouteStats> {
        &self.stats
    }

    pub fn route(&self) -> &StreamRoute {
        &self.route
    }

    /// Accepts on `listener` until `shutdown` fires, then waits for the
    /// connections in flight, at most `drain` long.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        drain: Duration,
    ) {
        let (_current, rx) = watch::channel(self);
        Self::serve_current(rx, listener, shutdown, drain, CancellationToken::new()).await
    }

    /// Accepts on `listener` until `shutdown` fires, each connection
    /// handled by the server `current` holds at that moment; then closes
    /// the listener (and fires `unbound`), and waits for the connections in
    /// flight, at most `drain` long.
    pub async fn serve_current(
        current: watch::Receiver<Arc<StreamServer>>,
        listener: TcpListener,
        shutdown: CancellationToken,
        drain: Duration,
        unbound: CancellationToken,
    ) {
        let tracker = TaskTracker::new();
        let hard_stop = CancellationToken::new();
        let name = current.borrow().route.name.clone();
        let checks = Self::health_checks(current.clone(), shutdown.clone());
        accept_loop(&listener, &name, &shutdown, |accepted: Accepted| {
            let server = Arc::clone(&*current.borrow());
            let Some(admitted) = server.gate.admit(accepted.peer) else {
                return;
            };
            let hard_stop = hard_stop.clone();
            tracker.spawn(async move {
                server
                    .handle(accepted.stream, accepted.peer, hard_stop, admitted)
                    .await
            });
        })
        .await;
        drop(listener);
        unbound.cancel();
        current.borrow().retire();
        checks.abort();
        tracker.close();
        if !tracker.is_empty() {
            info!(route = %name, connections = tracker.len(), drain_timeout = ?drain, "draining");
        }
        if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
            warn!(route = %name, connections = tracker.len(), "drain timeout; closing remaining connections");
            hard_stop.cancel();
            tracker.wait().await;
        }
    }

    /// Runs the health checks of whichever server `current` holds: each
    /// server's probes start when it becomes current and stop when it is
    /// retired (replaced by a reload) or at shutdown.
    fn health_checks(
        mut current: watch::Receiver<Arc<StreamServer>>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let server = Arc::clone(&*current.borrow_and_update());
                server.spawn_health_checks(&shutdown);
                tokio::select! {
                    r = current.changed() => if r.is_err() { return },
                    _ = shutdown.cancelled() => return,
                }
            }
        })
    }

    /// One probe loop per upstream when the route has health checks; they
    /// stop when the server is retired or at shutdown.
    fn spawn_health_checks(self: &Arc<Self>, shutdown: &CancellationToken) {
        let Some(check) = self.route.health_check.clone() else {
            return;
        };
        for (i, target) in self.route.upstreams.iter().enumerate() {
            let server = Arc::clone(self);
            let stop = shutdown.clone();
            let retired = self.retired.clone();
            let check = check.clone();
            let target = target.clone();
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::new();
                // Start within one jitter window, not all at the same instant.
                let jitter = u64::try_from(check.jitter.as_nanos()).unwrap_or(u64::MAX);
                let mut delay = Duration::from_nanos(rng.u64(0..=jitter));
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.cancelled() => return,
                        _ = retired.cancelled() => return,
                    }
                    let result = tokio::select! {
                        r = probe(&target, &check.kind, check.timeout) => r,
                        _ = stop.cancelled() => return,
                        _ = retired.cancelled() => return,
                    };
                    server
                        .pool
                        .probe_result(i, &result, Instant::now().into_std());
                    delay = next_delay(&check, &mut rng);
                }
            });
        }
    }

    async fn handle(
        self: Arc<Self>,
        client: TcpStream,
        peer: SocketAddr,
        hard_stop: CancellationToken,
        _admitted: Admitted,
    ) {
        let stats = &self.stats;
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let active = stats.active.fetch_add(1, Ordering::Relaxed) + 1;
        let _active = ActiveGuard(Arc::clone(stats));
        let route = &self.route;
        if active > route.max_connections {
            self.log_close(peer, None, CloseReason::Limit, None, None, Duration::ZERO);
            return;
        }
        let _ = client.set_nodelay(true);
        if let Err(e) = route.timeouts.socket.apply(&client) {
            debug!(route = %route.name, client = %peer, error = %e, "cannot set keepalive / user timeout");
        }
        let start = Instant::now();
        let tls = self.current_tls();
        // The client's handshake comes first, so a client that does not
        // speak TLS never costs an upstream connection.
        let client = match &tls.server {
            None => MaybeTls::Plain(client),
            Some(server) => match server.accept(client).await {
                Ok(s) => MaybeTls::from(s),
                Err(e) => {
                    stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) = self.tls_warn(Side::Client) {
                        warn!(route = %route.name, client = %peer, kind = %e.as_label(), error = %e,
                              suppressed, "TLS handshake with client failed");
                    }
                    self.log_close(
                        peer,
                        None,
                        CloseReason::TlsHandshake,
                        Some(Side::Client),
                        None,
                        start.elapsed(),
                    );
                    return;
                }
            },
        };
        let (upstream, lease, slot, upstream_addr) =
            match self.connect_upstream(peer, tls.upstream.as_ref()).await {
                Ok(x) => x,
                Err(reason) => {
                    self.log_close(peer, None, reason, None, None, start.elapsed());
                    return;
                }
            };
        let progress = Progress::new(Arc::clone(stats));
        let (reason, side) = match (client, upstream) {
            // Plain TCP both ways: the zero-copy path.
            (MaybeTls::Plain(client), MaybeTls::Plain(upstream)) => {
                self.relay(&client, &upstream, &progress, &hard_stop).await
            }
            (client, upstream) => self.relay_io(client, upstream, &progress, &hard_stop).await,
        };
        drop((lease, slot));
        self.log_close(
            peer,
            Some(upstream_addr),
            reason,
            side,
            Some(&progress),
            start.elapsed(),
        );
    }

    fn log_close(
        &self,
        peer: SocketAddr,
        upstream: Option<SocketAddr>,
        reason: CloseReason,
        side: Option<Side>,
        progress: Option<&Progress>,
        elapsed: Duration,
    ) {
        self.stats.closed[reason.index()].fetch_add(1, Ordering::Relaxed);
        let (up, down, spilled) = progress.map_or((0, 0, 0), |p| {
            (
                p.bytes[CLIENT_TO_UPSTREAM].load(Ordering::Relaxed),
                p.bytes[UPSTREAM_TO_CLIENT].load(Ordering::Relaxed),
                p.spilled.load(Ordering::Relaxed),
            )
        });
        let upstream = upstream
            .map(|u| u.to_string())
            .unwrap_or_else(|| "-".into());
        info!(
            route = %self.route.name,
            client = %peer,
            upstream = %upstream,
            reason = %reason,
            side = side.map_or("-", Side::as_str),
            bytes_in = up,
            bytes_out = down,
            spilled,
            duration_ms = elapsed.as_millis() as u64,
            "connection closed"
        );
    }

    /// Tries up to `connect_tries` distinct eligible upstreams (healthy,
    /// not ejected; all of them in panic mode), each bounded by the connect
    /// timeout (and the TLS handshake timeout when the route originates
    /// TLS) and admitted by its circuit breaker. Fails with `CircuitOpen`
    /// when breakers refused every candidate and no connect was attempted,
    /// `NoUpstream` otherwise. A failed TLS handshake counts as a failed
    /// connect for outlier detection (classified by `DialError::class`); the
    /// breaker counts the attempt as pending until the handshake is done.
    async fn connect_upstream(
        &self,
        peer: SocketAddr,
        tls: Option<&TlsClient>,
    ) -> Result<(MaybeTls, Lease, Active, SocketAddr), CloseReason> {
        let route = &self.route;
        let eligible = self.pool.eligible(Instant::now().into_std());
        let statuses = self.pool.statuses();
        let tries = (route.connect_tries as usize).min(self.balancer.len());
        let mut tried: Vec<usize> = Vec::with_capacity(tries);
        let mut attempts = 0;
        let mut refused = None;
        while tried.len() < self.balancer.len() && attempts < tries {
            // The breaker is asked after the pick (not as a filter), so
            // that every refusal is counted against the upstream that made it.
            let Some(lease) = self
                .balancer
                .pick(|i| eligible.get(i).copied().unwrap_or(false) && !tried.contains(&i))
            else {
                break;
            };
            let index = lease.index();
            tried.push(index);
            let pending = match statuses[index].breaker().try_pending() {
                Ok(p) => p,
                Err(kind) => {
                    refused = Some(kind);
                    continue;
                }
            };
            attempts += 1;
            let target = &route.upstreams[index];
            let options = DialOptions {
                socket: route.timeouts.socket,
                ..DialOptions::default()
            };
            let (stream, addr) = match dial(target, route.connect_timeout, options, tls).await {
                Ok(s) => s,
                Err(e) => {
                    self.pool
                        .connect_result(index, Err(&e), Instant::now().into_std());
                    self.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                    match e.tls() {
                        None => {
                            warn!(route = %route.name, client = %peer, upstream = %target,
                                  error = %e, "upstream connect failed");
                        }
                        Some(tls_error) => {
                            self.stats
                                .upstream_tls_failures
                                .fetch_add(1, Ordering::Relaxed);
                            // Every client retries, so a persistent failure
                            // (a certificate) would repeat: rate-limited.
                            if let Some(suppressed) = self.tls_warn(Side::Upstream) {
                                warn!(route = %route.name, client = %peer, upstream = %target,
                                      kind = %tls_error.as_label(),
                                      persistent = tls_error.is_persistent(),
                                      error = %e, suppressed, "upstream TLS handshake failed");
                            }
                        }
                    }
                    continue;
                }
            };
            let slot = pending.established();
            self.pool
                .connect_result(index, Ok(()), Instant::now().into_std());
            return Ok((stream, lease, slot, addr));
        }
        match refused {
            Some(limit) if attempts == 0 => {
                debug!(route = %route.name, client = %peer, %limit, "circuit breakers refused");
                Err(CloseReason::CircuitOpen)
            }
            _ => Err(CloseReason::NoUpstream),
        }
    }

    async fn relay(
        &self,
        client: &TcpStream,
        upstream: &TcpStream,
        progress: &Progress,
        hard_stop: &CancellationToken,
    ) -> (CloseReason, Option<Side>) {
        let c2u = self.direction(client, upstream, progress, CLIENT_TO_UPSTREAM);
        let u2c = self.direction(upstream, client, progress, UPSTREAM_TO_CLIENT);
        match self.supervise(c2u, u2c, progress, hard_stop).await {
            Ended::Clean(reason) => (reason, None),
            Ended::Failed(e, client_to_upstream) => {
                let (reason, side) = fail(e, client, upstream, client_to_upstream);
                (reason, Some(side))
            }
            Ended::Lifetime => {
                // Bytes may be in flight: reset, so neither peer takes the
                // cut for a complete stream.
                abort(client, upstream);
                (CloseReason::MaxLifetime, None)
            }
        }
    }

    /// The user-space path, for connections where either side is TLS
    /// (splice cannot move bytes that need encrypting): one bounded buffer
    /// per direction, the same supervisor, timers and close reasons.
    async fn relay_io(
        &self,
        client: MaybeTls,
        upstream: MaybeTls,
        progress: &Progress,
        hard_stop: &CancellationToken,
    ) -> (CloseReason, Option<Side>) {
        let (mut cr, mut cw) = tokio::io::split(client);
        let (mut ur, mut uw) = tokio::io::split(upstream);
        let buffer = self.route.buffer;
        let stall = self.route.timeouts.write_stall;
        let ended = {
            let c2u = io_copy::run(
                &mut cr,
                &mut uw,
                buffer,
                stall,
                progress,
                CLIENT_TO_UPSTREAM,
            );
            let u2c = io_copy::run(
                &mut ur,
                &mut cw,
                buffer,
                stall,
                progress,
                UPSTREAM_TO_CLIENT,
            );
            self.supervise(c2u, u2c, progress, hard_stop).await
        };
        // The halves are whole again, so a failure can still reset both sockets.
        let client = cr.unsplit(cw);
        let upstream = ur.unsplit(uw);
        match ended {
            Ended::Clean(reason) => (reason, None),
            Ended::Failed(e, client_to_upstream) => {
                let (reason, side) = fail(e, client.tcp(), upstream.tcp(), client_to_upstream);
                (reason, Some(side))
            }
            Ended::Lifetime => {
                abort(client.tcp(), upstream.tcp());
                (CloseReason::MaxLifetime, None)
            }
        }
    }

    /// Runs both directions to their end, enforcing the idle, half-close
    /// and lifetime timers and the hard stop.
    async fn supervise(
        &self,
        c2u: impl Future<Output = Result<(), DirError>>,
        u2c: impl Future<Output = Result<(), DirError>>,
        progress: &Progress,
        hard_stop: &CancellationToken,
    ) -> Ended {
        let route = &self.route;
        let lifetime_end = route.timeouts.max_lifetime.map(|d| progress.start + d);
        tokio::pin!(c2u, u2c);
        let mut c2u_done = false;
        let mut u2c_done = false;
        let mut first_eof: Option<(Instant, CloseReason)> = None;
        loop {
            let idle_deadline = progress.last_activity() + route.idle_timeout;
            let deadline = match first_eof {
                Some((at, _)) => idle_deadline.min(at + route.half_close_timeout),
                None => idle_deadline,
            };
            tokio::select! {
                r = &mut c2u, if !c2u_done => {
                    c2u_done = true;
                    if let Err(e) = r {
                        return Ended::Failed(e, true);
                    }
                    first_eof.get_or_insert((Instant::now(), CloseReason::ClientEof));
                }
                r = &mut u2c, if !u2c_done => {
                    u2c_done = true;
                    if let Err(e) = r {
                        return Ended::Failed(e, false);
                    }
                    first_eof.get_or_insert((Instant::now(), CloseReason::UpstreamEof));
                }
                _ = sleep_until(deadline) => {
                    let now = Instant::now();
                    if let Some((at, _)) = first_eof {
                        if now >= at + route.half_close_timeout {
                            return Ended::Clean(CloseReason::HalfCloseTimeout);
                        }
                    }
                    if now >= progress.last_activity() + route.idle_timeout {
                        return Ended::Clean(CloseReason::IdleTimeout);
                    }
                }
                _ = sleep_until(lifetime_end.unwrap_or(progress.start)), if lifetime_end.is_some() => {
                    return Ended::Lifetime;
                }
                _ = hard_stop.cancelled() => return Ended::Clean(CloseReason::Shutdown),
            }
            if c2u_done && u2c_done {
                return Ended::Clean(first_eof.map_or(CloseReason::ClientEof, |(_, r)| r));
            }
        }
    }

    async fn direction(
        &self,
        src: &TcpStream,
        dst: &TcpStream,
        progress: &Progress,
        dir: usize,
    ) -> Result<(), DirError> {
        match &self.route.spill {
            Some(spill) => {
                let limits = SpillLimits {
                    dir: &spill.dir,
                    max_per_connection: spill.max_per_connection,
                    budget: &self.budget,
                };
                let stall = StallTimer::new(self.route.timeouts.write_stall);
                spill::run(
                    src,
                    dst,
                    self.route.buffer,
                    Some(limits),
                    progress,
                    dir,
                    stall,
                )
                .await
            }
            None => {
                let stall = StallTimer::new(self.route.timeouts.write_stall);
                splice::run(src, dst, &self.pipes, progress, dir, stall).await
            }
        }
    }
}

/// Maps a direction's failure to a close reason and the peer it is about,
/// and propagates a reset to the other side, so neither peer mistakes a
/// broken stream for a complete one.
fn fail(
    e: DirError,
    client: &TcpStream,
    upstream: &TcpStream,
    client_to_upstream: bool,
) -> (CloseReason, Side) {
    // For client->upstream, reads are on the client and writes on the upstream.
    let (src, dst) = if client_to_upstream {
        (Side::Client, Side::Upstream)
    } else {
        (Side::Upstream, Side::Client)
    };
    let reset = |side| match side {
        Side::Client => CloseReason::ClientReset,
        Side::Upstream => CloseReason::UpstreamReset,
    };
    let timed_out = |e: &io::Error| e.kind() == io::ErrorKind::TimedOut;
    let (reason, side) = match &e {
        DirError::Read(e) if timed_out(e) => (CloseReason::PeerTimeout, src),
        DirError::Write(e) if timed_out(e) => (CloseReason::PeerTimeout, dst),
        DirError::Read(_) => (reset(src), src),
        DirError::Write(_) => (reset(dst), dst),
        DirError::Local(_) => (CloseReason::LocalError, dst),
        DirError::WriteStall(_) => (CloseReason::WriteStall, dst),
    };
    match &e {
        DirError::WriteStall(d) => {
            debug!(
                side = side.as_str(),
                stalled_ms = d.as_millis() as u64,
                "write stalled"
            )
        }
        DirError::Read(e) | DirError::Write(e) | DirError::Local(e) => {
            debug!(error = %e, reason = %reason, "direction failed")
        }
    }
    abort(client, upstream);
    (reason, side)
}

/// SO_LINGER 0: the coming close sends RST to both peers.
fn abort(client: &TcpStream, upstream: &TcpStream) {
    for s in [client, upstream] {
        let _ = SockRef::from(s).set_linger(Some(Duration::ZERO));
    }
}

struct ActiveGuard(Arc<RouteStats>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::CloseReason;

    #[test]
    fn close_reason_index_matches_all() {
        for (i, r) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r}");
        }
    }
}
