//! One proxied connection, from accept to close, as mini-redis's
//! `Handler`: [`StreamServer::handle`] admits it (TLS from the client
//! first), gets an upstream connection from the route's
//! [`Upstreams`](super::upstream::Upstreams), relays both directions under
//! one supervisor (idle, half-close and lifetime timers, the hard stop),
//! maps a failure to its close reason ([`fail`]) and logs the close.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use socket2::SockRef;
use spillway_net::dial::SocketOptions;
use spillway_net::timeout::StallTimer;
use spillway_net::tls::MaybeTls;
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::direction::{DirError, Direction, Progress, Side};
use super::spill::{self, SpillLimits};
use super::upstream::Connected;
use super::{io_copy, splice, CloseReason, StreamServer};
use crate::accept::Admitted;

/// How long a plain connection lives before its upstream socket gets the
/// route's keepalive and user timeout ([`StreamServer::supervise`]).
const LIVENESS_AFTER: Duration = Duration::from_millis(500);

/// How the two directions of a connection ended.
enum Ended {
    Clean(CloseReason),
    /// A direction failed.
    Failed(DirError, Direction),
    /// `max_lifetime` ran out with the connection still open.
    Lifetime,
}

impl StreamServer {
    pub(super) async fn handle(
        self: Arc<Self>,
        client: TcpStream,
        peer: SocketAddr,
        hard_stop: CancellationToken,
        _admitted: Admitted,
    ) {
        let stats = &self.stats;
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        // TCP_NODELAY and the liveness options came with the accept
        // (the listener's, or set by the accept loop).
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
                    if let Some(suppressed) = self.client_tls_warn() {
                        warn!(kind = %e.as_label(), error = %e,
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
        let connected = match self.upstreams.connect(tls.upstream.as_ref()).await {
            Ok(c) => c,
            Err(reason) => {
                self.log_close(peer, None, reason, None, None, start.elapsed());
                return;
            }
        };
        let Connected {
            stream: upstream,
            addr: upstream_addr,
            lease,
            slot,
        } = connected;
        let progress = Progress::new(Arc::clone(stats));
        let (reason, side) = match (client, upstream) {
            // Plain TCP both ways: the zero-copy path.
            (MaybeTls::Plain(client), MaybeTls::Plain(upstream)) => {
                self.relay(&client, &upstream, &progress, &hard_stop).await
            }
            (client, upstream) => {
                self.liveness(upstream.tcp());
                self.relay_io(client, upstream, &progress, &hard_stop).await
            }
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
        self.stats.closed.add(reason);
        self.stats
            .recent_closes
            .push(peer, Side::Client.as_str(), reason.as_str());
        let (up, down, spilled) = progress.map_or((0, 0, 0), |p| {
            (
                p.bytes(Direction::ClientToUpstream),
                p.bytes(Direction::UpstreamToClient),
                p.spilled_bytes(),
            )
        });
        let upstream = upstream
            .map(|u| u.to_string())
            .unwrap_or_else(|| "-".into());
        info!(
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

    async fn relay(
        &self,
        client: &TcpStream,
        upstream: &TcpStream,
        progress: &Progress,
        hard_stop: &CancellationToken,
    ) -> (CloseReason, Option<Side>) {
        let c2u = self.direction(client, upstream, progress, Direction::ClientToUpstream);
        let u2c = self.direction(upstream, client, progress, Direction::UpstreamToClient);
        match self
            .supervise(c2u, u2c, progress, hard_stop, Some(upstream))
            .await
        {
            Ended::Clean(reason) => (reason, None),
            Ended::Failed(e, dir) => {
                let (reason, side) = fail(e, client, upstream, dir);
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
                Direction::ClientToUpstream,
            );
            let u2c = io_copy::run(
                &mut ur,
                &mut cw,
                buffer,
                stall,
                progress,
                Direction::UpstreamToClient,
            );
            self.supervise(c2u, u2c, progress, hard_stop, None).await
        };
        // The halves are whole again, so a failure can still reset both sockets.
        let client = cr.unsplit(cw);
        let upstream = ur.unsplit(uw);
        match ended {
            Ended::Clean(reason) => (reason, None),
            Ended::Failed(e, dir) => {
                let (reason, side) = fail(e, client.tcp(), upstream.tcp(), dir);
                (reason, Some(side))
            }
            Ended::Lifetime => {
                abort(client.tcp(), upstream.tcp());
                (CloseReason::MaxLifetime, None)
            }
        }
    }

    /// The upstream socket's keepalive and user timeout (the client's
    /// came with the accept).
    fn liveness(&self, upstream: &TcpStream) {
        if let Err(e) = self.route.timeouts.socket.apply(upstream) {
            debug!(error = %e, "cannot set keepalive / user timeout");
        }
    }

    /// Runs both directions to their end, enforcing the idle, half-close
    /// and lifetime timers and the hard stop. A connection that lasts
    /// [`LIVENESS_AFTER`] gets the upstream's liveness options then
    /// (`late_liveness`): a short one (a request per connection) never
    /// pays their five `setsockopt` calls, and keepalive only matters to
    /// one that stays.
    async fn supervise(
        &self,
        c2u: impl Future<Output = Result<(), DirError>>,
        u2c: impl Future<Output = Result<(), DirError>>,
        progress: &Progress,
        hard_stop: &CancellationToken,
        mut late_liveness: Option<&TcpStream>,
    ) -> Ended {
        let route = &self.route;
        let lifetime_end = route.timeouts.max_lifetime.map(|d| progress.start + d);
        if route.timeouts.socket == SocketOptions::default() {
            late_liveness = None;
        }
        let liveness_at = sleep_until(progress.start + LIVENESS_AFTER);
        tokio::pin!(c2u, u2c, liveness_at);
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
                        return Ended::Failed(e, Direction::ClientToUpstream);
                    }
                    first_eof.get_or_insert((Instant::now(), CloseReason::ClientEof));
                }
                r = &mut u2c, if !u2c_done => {
                    u2c_done = true;
                    if let Err(e) = r {
                        return Ended::Failed(e, Direction::UpstreamToClient);
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
                () = &mut liveness_at, if late_liveness.is_some() => {
                    if let Some(u) = late_liveness.take() {
                        self.liveness(u);
                    }
                }
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
        dir: Direction,
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
    dir: Direction,
) -> (CloseReason, Side) {
    // Reads are on the direction's source, writes on its destination.
    let (src, dst) = (dir.source(), dir.destination());
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

impl StreamServer {
    /// A connection over the route's `max_connections`: counted as accepted
    /// and closed with reason `limit` (the socket is dropped by the caller).
    pub(super) fn over_route_limit(&self, peer: SocketAddr) {
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        self.log_close(peer, None, CloseReason::Limit, None, None, Duration::ZERO);
    }
}
