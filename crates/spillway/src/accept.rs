//! The accept loop shared by every listener: stops on shutdown, and backs
//! off instead of spinning when the process runs out of descriptors or
//! memory (EMFILE, ENFILE, ENOBUFS, ENOMEM), the way nginx and HAProxy do.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spillway_net::limit::{ConnLimits, ConnPermit, LimitKind};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::logging::RateLimited;

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
    route: &str,
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
                    warn!(route, error = %e, pause_ms = pause.as_millis() as u64, suppressed,
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
                    warn!(route, error = %e, suppressed, "accept failed");
                }
                tokio::time::sleep(MIN_PAUSE).await;
            }
        }
    }
}

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
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// Admission control of one route's listeners: the process-wide connection
/// limit (shared by every route) and the route's per-client-IP limit. A
/// connection over either is closed at once, counted by [`LimitKind`] and
/// logged (rate-limited: a flood must not flood the log too).
#[derive(Debug)]
pub struct Gate {
    route: String,
    global: Option<Arc<ConnLimits>>,
    per_ip: Option<Arc<ConnLimits>>,
    rejected: [AtomicU64; 2],
    warn: Mutex<RateLimited>,
}

/// An admitted connection's slots; released when dropped (hold it for the
/// connection's life).
#[derive(Debug)]
pub struct Admitted {
    _permits: Vec<ConnPermit>,
}

impl Gate {
    /// `total` bounds the connections on this route's listeners (all
    /// clients together; `usize::MAX`: none), `per_ip` each client (an IPv4
    /// address, or an IPv6 network of the given prefix length); `global`
    /// is shared by all routes.
    pub fn new(
        route: &str,
        global: Option<Arc<ConnLimits>>,
        total: usize,
        per_ip: Option<(usize, u8)>,
    ) -> Self {
        let own = (total != usize::MAX || per_ip.is_some()).then(|| {
            let (n, prefix) =
                per_ip.unwrap_or((usize::MAX, spillway_net::limit::DEFAULT_IPV6_PREFIX));
            Arc::new(ConnLimits::new(total, n).with_ipv6_prefix(prefix))
        });
        Gate {
            route: route.to_string(),
            global,
            per_ip: own,
            rejected: Default::default(),
            warn: Mutex::new(RateLimited::new(Duration::from_secs(5))),
        }
    }

    /// Connections of this route refused by `kind`.
    pub fn rejected(&self, kind: LimitKind) -> u64 {
        self.rejected[kind as usize].load(Ordering::Relaxed)
    }

    /// Admits a connection from `peer`, or logs and counts why not (the
    /// caller then drops the socket: the client sees the connection closed
    /// right after it was accepted).
    pub fn admit(&self, peer: SocketAddr) -> Option<Admitted> {
        let mut permits = Vec::with_capacity(2);
        for limits in [&self.global, &self.per_ip].into_iter().flatten() {
            match limits.try_acquire(peer.ip()) {
                Ok(p) => permits.push(p),
                Err(kind) => {
                    self.rejected[kind as usize].fetch_add(1, Ordering::Relaxed);
                    let check = self.warn.lock().unwrap_or_else(|e| e.into_inner()).check();
                    if let Some(suppressed) = check {
                        warn!(route = %self.route, client = %peer, reason = %kind, suppressed,
                              "connection refused: limit reached");
                    }
                    return None;
                }
            }
        }
        Some(Admitted { _permits: permits })
    }
}
