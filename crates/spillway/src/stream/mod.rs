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

pub mod spill;
mod splice;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::SockRef;
use spillway_net::balance::{Balancer, Lease};
use spillway_net::dial::{connect, DialOptions};
use spillway_net::timeout::StallTimer;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::accept::{accept_loop, Accepted};
use crate::config::StreamRoute;
use spill::{SpillBudget, SpillLimits};

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
}

impl CloseReason {
    pub const ALL: [CloseReason; 13] = [
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
pub struct StreamServer {
    route: StreamRoute,
    balancer: Balancer,
    stats: Arc<RouteStats>,
    budget: Arc<SpillBudget>,
    pipes: splice::PipePool,
}

/// Empty pipes kept for reuse per route; beyond this they are closed.
const MAX_IDLE_PIPES: usize = 256;

impl StreamServer {
    pub fn new(route: StreamRoute, budget: Arc<SpillBudget>) -> Self {
        let balancer = Balancer::new(route.balance, route.upstreams.len());
        let pipes = splice::PipePool::new(route.pipe_size, route.buffer, MAX_IDLE_PIPES);
        StreamServer {
            route,
            balancer,
            stats: Arc::default(),
            budget,
            pipes,
        }
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
        let tracker = TaskTracker::new();
        let hard_stop = CancellationToken::new();
        let name = self.route.name.clone();
        accept_loop(&listener, &name, &shutdown, |accepted: Accepted| {
            let server = Arc::clone(&self);
            let hard_stop = hard_stop.clone();
            tracker.spawn(async move {
                server
                    .handle(accepted.stream, accepted.peer, hard_stop)
                    .await
            });
        })
        .await;
        drop(listener);
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

    async fn handle(
        self: Arc<Self>,
        client: TcpStream,
        peer: SocketAddr,
        hard_stop: CancellationToken,
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
        let (upstream, lease, upstream_addr) = match self.connect_upstream(peer).await {
            Some(x) => x,
            None => {
                self.log_close(
                    peer,
                    None,
                    CloseReason::NoUpstream,
                    None,
                    None,
                    start.elapsed(),
                );
                return;
            }
        };
        let progress = Progress::new(Arc::clone(stats));
        let (reason, side) = self.relay(&client, &upstream, &progress, &hard_stop).await;
        drop(lease);
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

    /// Tries up to `connect_tries` distinct upstreams, each bounded by the
    /// connect timeout.
    async fn connect_upstream(&self, peer: SocketAddr) -> Option<(TcpStream, Lease, SocketAddr)> {
        let route = &self.route;
        let tries = (route.connect_tries as usize).min(self.balancer.len());
        let mut tried: Vec<usize> = Vec::with_capacity(tries);
        for _ in 0..tries {
            let lease = self.balancer.pick(|i| !tried.contains(&i))?;
            let index = lease.index();
            tried.push(index);
            let target = &route.upstreams[index];
            let options = DialOptions {
                socket: route.timeouts.socket,
                ..DialOptions::default()
            };
            match connect(target, route.connect_timeout, options).await {
                Ok((stream, addr)) => return Some((stream, lease, addr)),
                Err(e) => {
                    self.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                    warn!(route = %route.name, client = %peer, upstream = %target, error = %e,
                          "upstream connect failed");
                }
            }
        }
        None
    }

    async fn relay(
        &self,
        client: &TcpStream,
        upstream: &TcpStream,
        progress: &Progress,
        hard_stop: &CancellationToken,
    ) -> (CloseReason, Option<Side>) {
        let route = &self.route;
        let lifetime_end = route.timeouts.max_lifetime.map(|d| progress.start + d);
        let c2u = self.direction(client, upstream, progress, CLIENT_TO_UPSTREAM);
        let u2c = self.direction(upstream, client, progress, UPSTREAM_TO_CLIENT);
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
                        let (reason, side) = fail(e, client, upstream, true);
                        return (reason, Some(side));
                    }
                    first_eof.get_or_insert((Instant::now(), CloseReason::ClientEof));
                }
                r = &mut u2c, if !u2c_done => {
                    u2c_done = true;
                    if let Err(e) = r {
                        let (reason, side) = fail(e, client, upstream, false);
                        return (reason, Some(side));
                    }
                    first_eof.get_or_insert((Instant::now(), CloseReason::UpstreamEof));
                }
                _ = sleep_until(deadline) => {
                    let now = Instant::now();
                    if let Some((at, _)) = first_eof {
                        if now >= at + route.half_close_timeout {
                            return (CloseReason::HalfCloseTimeout, None);
                        }
                    }
                    if now >= progress.last_activity() + route.idle_timeout {
                        return (CloseReason::IdleTimeout, None);
                    }
                }
                _ = sleep_until(lifetime_end.unwrap_or(progress.start)), if lifetime_end.is_some() => {
                    // Bytes may be in flight: reset, so neither peer takes
                    // the cut for a complete stream.
                    abort(client, upstream);
                    return (CloseReason::MaxLifetime, None);
                }
                _ = hard_stop.cancelled() => return (CloseReason::Shutdown, None),
            }
            if c2u_done && u2c_done {
                return (first_eof.map_or(CloseReason::ClientEof, |(_, r)| r), None);
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
