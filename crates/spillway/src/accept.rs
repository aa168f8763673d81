//! The accept loop shared by every listener: stops on shutdown, and backs
//! off instead of spinning when the process runs out of descriptors or
//! memory (EMFILE, ENFILE, ENOBUFS, ENOMEM), the way nginx and HAProxy do.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spillway_net::limit::{ConnLimits, ConnPermit, LimitKind};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::counters::EnumCounters;
use crate::logging::RateLimited;
use crate::metrics::Scrape;
use crate::route_metrics::LISTENER_REJECTIONS;

pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
}

/// Whether an accept error is about resources (back off and retry) rather
/// than about the one connection that failed (retry at once).
pub fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

pub async fn accept_loop(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    mut on_accept: impl FnMut(Accepted),
) {
    const MIN_PAUSE: Duration = Duration::from_millis(5);
    const MAX_PAUSE: Duration = Duration::from_secs(1);
    let mut pause = MIN_PAUSE;
    let mut warn_limit = RateLimited::new(Duration::from_secs(5));
    loop {
        let r = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.cancelled() => return,
        };
        match r {
            Ok((stream, peer)) => {
                pause = MIN_PAUSE;
                on_accept(Accepted { stream, peer });
            }
            Err(e) if is_resource_exhaustion(&e) => {
                if let Some(suppressed) = warn_limit.check() {
                    warn!(error = %e, pause_ms = pause.as_millis() as u64, suppressed,
                          "accept failed: out of resources; pausing accepts");
                }
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.cancelled() => return,
                }
                pause = (pause * 2).min(MAX_PAUSE);
            }
            // The client went away between SYN and accept, or a signal: nothing to do.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                if let Some(suppressed) = warn_limit.check() {
                    warn!(error = %e, suppressed, "accept failed");
                }
                tokio::time::sleep(MIN_PAUSE).await;
            }
        }
    }
}

/// Accepts what is waiting in `listener`'s backlog now, without waiting
/// (at most its length, 4,096, and one more): connections whose
/// handshakes finished before a change of the listener's options, which
/// they did not inherit. Errors end the drain; the accept loop sees them.
pub fn drain_backlog(listener: &TcpListener) -> Vec<Accepted> {
    let mut out = Vec::new();
    while out.len() <= BACKLOG as usize {
        match socket2::SockRef::from(listener).accept() {
            Ok((s, addr)) => {
                let Some(peer) = addr.as_socket() else {
                    continue;
                };
                if s.set_nonblocking(true).is_err() {
                    continue;
                }
                if let Ok(stream) = TcpStream::from_std(s.into()) {
                    out.push(Accepted { stream, peer });
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => break,
        }
    }
    out
}

/// Pending connections a listener queues before `accept` (`listen(2)`).
const BACKLOG: i32 = 4096;

/// Binds a listening socket with a deep backlog and SO_REUSEADDR, so a
/// restarted relay can rebind at once and bursts of connects are not refused.
pub async fn bind(addr: &str) -> io::Result<TcpListener> {
    bind_with(addr, None).await
}

/// Like [`bind`], with a receive buffer size that accepted sockets inherit
/// (set before `listen` so the advertised window scale allows it).
pub async fn bind_with(addr: &str, recv_buffer: Option<usize>) -> io::Result<TcpListener> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr).await?.collect();
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        format!("{addr} resolved to no address"),
    );
    for a in addrs {
        match bind_one(a, recv_buffer) {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn bind_one(addr: SocketAddr, recv_buffer: Option<usize>) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Admission control of one route's listeners, every connection limit in
/// one place: the process-wide limit (shared by every route), the route's
/// per-client-IP limit, and the route's total. A connection over the first
/// two is closed at once, counted by [`LimitKind`] and logged
/// (rate-limited: a flood must not flood the log too). Over the route's
/// own counted total ([`Gate::with_route_total`], stream routes) it is
/// refused with [`Refused::RouteTotal`], which the route reports as a
/// closed connection with its own reason.
#[derive(Debug)]
pub struct Gate {
    global: Option<Arc<ConnLimits>>,
    per_ip: Option<Arc<ConnLimits>>,
    total: Option<RouteTotal>,
    rejected: EnumCounters<LimitKind>,
    warn: Mutex<RateLimited>,
}

/// A route's bound on its open connections, counted in a counter that
/// outlives the gate (a reload's new gate goes on counting the connections
/// the old one admitted).
#[derive(Debug)]
struct RouteTotal {
    max: usize,
    active: Arc<AtomicUsize>,
}

/// Why [`Gate::admit`] refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The process-wide or per-client limit: counted and logged by the gate.
    Limit(LimitKind),
    /// The route's own total ([`Gate::with_route_total`]): the caller
    /// reports it.
    RouteTotal,
}

/// An admitted connection's slots; released when dropped (hold it for the
/// connection's life).
#[derive(Debug)]
pub struct Admitted {
    _permits: Vec<ConnPermit>,
    _route: Option<RouteSlot>,
}

/// One connection counted in a route's total; uncounted on drop.
#[derive(Debug)]
struct RouteSlot(Arc<AtomicUsize>);

impl Drop for RouteSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Gate {
    /// `total` bounds the connections on this route's listeners (all
    /// clients together; `usize::MAX`: none), `per_ip` each client (an IPv4
    /// address, or an IPv6 network of the given prefix length); `global`
    /// is shared by all routes.
    pub fn new(global: Option<Arc<ConnLimits>>, total: usize, per_ip: Option<(usize, u8)>) -> Self {
        let own = (total != usize::MAX || per_ip.is_some()).then(|| {
            let (n, prefix) =
                per_ip.unwrap_or((usize::MAX, spillway_net::limit::DEFAULT_IPV6_PREFIX));
            Arc::new(ConnLimits::new(total, n).with_ipv6_prefix(prefix))
        });
        Gate {
            global,
            per_ip: own,
            total: None,
            rejected: Default::default(),
            warn: Mutex::new(RateLimited::new(Duration::from_secs(5))),
        }
    }

    /// Bounds the route's open connections to `max`, counted in `active`
    /// (every admitted connection, whatever the bound), checked after the
    /// other limits.
    pub fn with_route_total(mut self, max: usize, active: Arc<AtomicUsize>) -> Self {
        self.total = Some(RouteTotal { max, active });
        self
    }

    /// Connections of this route refused by `kind`.
    pub fn rejected(&self, kind: LimitKind) -> u64 {
        self.rejected.get(kind)
    }

    /// Writes this route's `spillway_listener_rejections` series.
    pub fn collect(&self, s: &mut Scrape, route: &str) {
        for (kind, n) in self.rejected.iter() {
            s.counter(
                &LISTENER_REJECTIONS,
                &[("route", route), ("limit", kind.as_str())],
                n,
            );
        }
    }

    /// Admits a connection from `peer`, or says why not (the caller then
    /// drops the socket: the client sees the connection closed right after
    /// it was accepted).
    pub fn admit(&self, peer: SocketAddr) -> Result<Admitted, Refused> {
        let mut permits = Vec::with_capacity(2);
        for limits in [&self.global, &self.per_ip].into_iter().flatten() {
            match limits.try_acquire(peer.ip()) {
                Ok(p) => permits.push(p),
                Err(kind) => {
                    self.rejected.add(kind);
                    let check = self.warn.lock().unwrap_or_else(|e| e.into_inner()).check();
                    if let Some(suppressed) = check {
                        warn!(%peer, reason = %kind, suppressed,
                              "connection refused: limit reached");
                    }
                    return Err(Refused::Limit(kind));
                }
            }
        }
        let route = match &self.total {
            None => None,
            Some(t) => {
                let slot = RouteSlot(Arc::clone(&t.active));
                if t.active.fetch_add(1, Ordering::Relaxed) + 1 > t.max {
                    return Err(Refused::RouteTotal);
                }
                Some(slot)
            }
        };
        Ok(Admitted {
            _permits: permits,
            _route: route,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_total_is_checked_last_and_holds_across_a_new_gate() {
        let peer: SocketAddr = "192.0.2.1:5000".parse().expect("addr");
        let other: SocketAddr = "192.0.2.2:5000".parse().expect("addr");
        let active = Arc::new(AtomicUsize::new(0));
        let gate =
            Gate::new(None, usize::MAX, Some((2, 64))).with_route_total(3, Arc::clone(&active));
        let a = gate.admit(peer).expect("first");
        let b = gate.admit(peer).expect("second");
        // The per-client bound refuses first, counted by the gate.
        assert_eq!(
            gate.admit(peer).map(drop),
            Err(Refused::Limit(LimitKind::PerIp))
        );
        assert_eq!(gate.rejected(LimitKind::PerIp), 1);
        let c = gate.admit(other).expect("third");
        assert_eq!(active.load(Ordering::Relaxed), 3);
        assert_eq!(gate.admit(other).map(drop), Err(Refused::RouteTotal));
        assert_eq!(
            active.load(Ordering::Relaxed),
            3,
            "a refusal is not counted"
        );
        // A reload's gate counts on from the same counter.
        let reloaded = Gate::new(None, usize::MAX, None).with_route_total(3, Arc::clone(&active));
        assert_eq!(reloaded.admit(other).map(drop), Err(Refused::RouteTotal));
        drop(a);
        let d = reloaded.admit(other).expect("a slot was given back");
        drop((b, c, d));
        assert_eq!(active.load(Ordering::Relaxed), 0);
    }
}
