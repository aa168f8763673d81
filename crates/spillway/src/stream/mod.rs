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

mod connection;
pub mod direction;
mod io_copy;
pub mod metrics;
pub mod spill;
mod splice;
pub mod upstream;

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use spillway_net::balance::Balancer;
use spillway_net::dial::SocketOptions;
use spillway_net::limit::ConnLimits;
use spillway_net::tls::{TlsClient, TlsError, TlsServer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::accept::{accept_loop, Accepted, Gate, Refused};
use crate::config::StreamRoute;
use crate::counters::{label, EnumCounters};
use crate::logging::{conn_span, route_span, RateLimited};
pub use direction::Direction;
use spill::SpillBudget;
use upstream::{UpstreamStatus, Upstreams};

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
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

label!(CloseReason);

/// Counters of one stream route, read by the admin endpoint.
#[derive(Debug, Default)]
pub struct RouteStats {
    pub accepted: AtomicU64,
    /// Open connections (shared with the route's [`Gate`], which bounds it
    /// by `max_connections`).
    pub active: Arc<AtomicUsize>,
    closed: EnumCounters<CloseReason>,
    pub bytes: [AtomicU64; 2],
    pub spilled_bytes: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Client connections whose TLS handshake failed (also counted as
    /// closed with [`CloseReason::TlsHandshake`]).
    pub tls_handshake_failures: AtomicU64,
    /// Upstream connections whose TLS handshake failed (also counted in
    /// `connect_failures`).
    pub upstream_tls_failures: AtomicU64,
    /// The last closes, for the status page.
    pub recent_closes: crate::history::Closes,
}

impl RouteStats {
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed.get(reason)
    }

    /// Bytes relayed in `dir` by every connection so far.
    pub fn bytes(&self, dir: Direction) -> u64 {
        self.bytes[dir.index()].load(Ordering::Relaxed)
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
    /// Pick, breaker, dial and health of the route's upstreams.
    upstreams: Arc<Upstreams>,
    /// Every connection limit: global, per client IP, the route's total.
    gate: Gate,
    stats: Arc<RouteStats>,
    budget: Arc<SpillBudget>,
    pipes: splice::PipePool,
    retired: CancellationToken,
    /// Loaded from the route's files; replaced by [`StreamServer::reload_tls`].
    /// A connection clones what it needs at its start.
    tls: RwLock<RouteTls>,
    /// Rate limit of client TLS handshake warnings (the upstreams have
    /// their own, so a flood of bad clients does not hide an upstream's
    /// certificate problem).
    tls_warning: Mutex<RateLimited>,
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
        let pipes = splice::PipePool::new(route.pipe_size, route.buffer, MAX_IDLE_PIPES);
        let tls = RouteTls::load(&route)?;
        let upstreams = Arc::new(Upstreams::new(&route, Arc::clone(&stats)));
        let gate = Self::gate_for(&route, None, &stats);
        Ok(StreamServer {
            route,
            upstreams,
            gate,
            stats,
            budget,
            pipes,
            retired: CancellationToken::new(),
            tls: RwLock::new(tls),
            tls_warning: Mutex::new(RateLimited::new(Duration::from_secs(5))),
        })
    }

    /// The route's limits: `global` (shared by every route), per client
    /// IP, and the route's total, counted in `stats.active` (shared by the
    /// servers a reload replaces, so the bound holds across a reload).
    fn gate_for(route: &StreamRoute, global: Option<Arc<ConnLimits>>, stats: &RouteStats) -> Gate {
        let per_ip = route
            .max_connections_per_ip
            .map(|n| (n, route.per_ip_ipv6_prefix));
        Gate::new(global, usize::MAX, per_ip)
            .with_route_total(route.max_connections, Arc::clone(&stats.active))
    }

    /// Puts the route under the process-wide connection limit (shared by
    /// every route; `global.max_connections`).
    pub fn with_global_limits(mut self, global: Option<Arc<ConnLimits>>) -> Self {
        self.gate = Self::gate_for(&self.route, global, &self.stats);
        self
    }

    /// Per-upstream state (health, ejection, breaker, connect counters), in
    /// the order of the route's `upstreams`.
    pub fn upstreams(&self) -> &[UpstreamStatus] {
        self.upstreams.statuses()
    }

    /// Connections given to an upstream in panic mode (no upstream healthy).
    pub fn panic_picks(&self) -> u64 {
        self.upstreams.panic_picks()
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

    /// Client TLS handshake warnings are rate-limited.
    fn client_tls_warn(&self) -> Option<u64> {
        self.tls_warning
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
        self.upstreams.balancer()
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
        let span = route_span(&current.borrow().route.name);
        Self::serve_in_span(current, listener, shutdown, drain, unbound)
            .instrument(span)
            .await
    }

    async fn serve_in_span(
        current: watch::Receiver<Arc<StreamServer>>,
        listener: TcpListener,
        shutdown: CancellationToken,
        drain: Duration,
        unbound: CancellationToken,
    ) {
        let tracker = TaskTracker::new();
        let hard_stop = CancellationToken::new();
        let checks = Self::health_checks(current.clone(), shutdown.clone());
        // The liveness options and TCP_NODELAY the listener passes on to
        // what it accepts (`None`: not set on it yet, or setting failed).
        // When they change (the first accept, a reload), the listener is
        // set first; then the connection in hand and every one already in
        // the accept queue (whose handshakes finished under the old
        // options) are set one by one, until the queue is empty: from
        // then on each connection inherits.
        let mut inherited: Option<SocketOptions> = None;
        let spawn = |server: Arc<StreamServer>, accepted: Accepted| {
            let admitted = match server.gate.admit(accepted.peer) {
                Ok(a) => a,
                Err(Refused::Limit(_)) => return,
                Err(Refused::RouteTotal) => {
                    conn_span(accepted.peer, "client")
                        .in_scope(|| server.over_route_limit(accepted.peer));
                    return;
                }
            };
            let hard_stop = hard_stop.clone();
            let span = conn_span(accepted.peer, "client");
            tracker.spawn(
                async move {
                    server
                        .handle(accepted.stream, accepted.peer, hard_stop, admitted)
                        .await
                }
                .instrument(span),
            );
        };
        accept_loop(&listener, &shutdown, |accepted: Accepted| {
            let server = Arc::clone(&*current.borrow());
            let want = server.route.timeouts.socket;
            if inherited == Some(want) {
                spawn(server, accepted);
                return;
            }
            inherited = want.apply_exact(&listener).ok().map(|()| want);
            let mut queued = vec![accepted];
            queued.extend(crate::accept::drain_backlog(&listener));
            for a in queued {
                if let Err(e) = want.apply_exact(&a.stream) {
                    debug!(error = %e, "cannot set keepalive / user timeout");
                }
                spawn(Arc::clone(&server), a);
            }
        })
        .await;
        drop(listener);
        unbound.cancel();
        current.borrow().retire();
        checks.abort();
        tracker.close();
        if !tracker.is_empty() {
            info!(connections = tracker.len(), drain_timeout = ?drain, "draining");
        }
        if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
            warn!(
                connections = tracker.len(),
                "drain timeout; closing remaining connections"
            );
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
        tokio::spawn(
            async move {
                loop {
                    let server = Arc::clone(&*current.borrow_and_update());
                    server
                        .upstreams
                        .spawn_health_checks(&shutdown, &server.retired);
                    tokio::select! {
                        r = current.changed() => if r.is_err() { return },
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
            .in_current_span(),
        )
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
