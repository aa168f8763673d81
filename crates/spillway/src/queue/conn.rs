//! The two ends of a queue route: an accept loop on a `listen:` endpoint
//! or a dial loop on a `connect:` one, each connection's TLS handshake and
//! its span, then the producer (`source.rs`) or consumer (`sink.rs`) it is.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use spillway_net::backoff::Backoff;
use spillway_net::classify::ErrorClass;
use spillway_net::dial::{dial, DialOptions};
use spillway_net::tls::MaybeTls;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn, Instrument};

use super::{wire, QueueServer, SideTls, PRODUCER_RCVBUF};
use crate::accept::accept_loop;
use crate::endpoint::Endpoint;
use crate::logging::{conn_span, RateLimited};

/// Which end of the route a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The source side (`from`).
    Producer,
    /// The sink side (`to`).
    Consumer,
}

impl Role {
    pub const ALL: [Role; 2] = [Role::Producer, Role::Consumer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Producer => "producer",
            Role::Consumer => "consumer",
        }
    }

    /// The `direction` label of the bytes this end moves: `in` from
    /// producers, `out` (delivered) to consumers.
    pub fn direction(self) -> &'static str {
        match self {
            Role::Producer => "in",
            Role::Consumer => "out",
        }
    }
}

impl QueueServer {
    /// Handles one connection of either end until it closes.
    async fn handle(self: Arc<Self>, role: Role, stream: TcpStream, peer: SocketAddr) {
        let conn = match self.side_tls(role) {
            Some(SideTls::Server(tls)) => match tls.accept(stream).await {
                Ok(s) => MaybeTls::from(s),
                Err(e) => {
                    self.tls_failed(role, &e);
                    self.stats
                        .recent_closes
                        .push(peer, role.as_str(), "tls_handshake");
                    return;
                }
            },
            _ => MaybeTls::Plain(stream),
        };
        self.serve_conn(role, conn, peer).await
    }

    /// Runs a connection whose TLS handshake (if any) is done.
    async fn serve_conn(self: Arc<Self>, role: Role, conn: MaybeTls, peer: SocketAddr) {
        let registered = self.register_peer(role, peer);
        let bytes = registered.bytes();
        let reason = match role {
            Role::Producer if self.route().from_protocol == crate::config::Protocol::Ack => {
                self.produce_acking(conn, bytes).await.as_str()
            }
            Role::Producer => self.produce(conn, bytes).await.as_str(),
            Role::Consumer => {
                // The sink drives TLS by hand to count ciphertext (wire.rs).
                let wire = match conn {
                    MaybeTls::Plain(s) => wire::Wire::plain(s),
                    MaybeTls::Tls(s) => match *s {
                        tokio_rustls::TlsStream::Server(s) => {
                            let (tcp, c) = s.into_inner();
                            wire::Wire::tls(tcp, c.into())
                        }
                        tokio_rustls::TlsStream::Client(s) => {
                            let (tcp, c) = s.into_inner();
                            wire::Wire::tls(tcp, c.into())
                        }
                    },
                };
                if self.route().to_protocol == crate::config::Protocol::Ack {
                    let unacked = registered.unacked();
                    self.consume_acking(wire, bytes, unacked).await.as_str()
                } else {
                    self.consume(wire, bytes).await.as_str()
                }
            }
        };
        self.stats.recent_closes.push(peer, role.as_str(), reason);
    }

    /// Starts one end of the route: an accept loop on the bound listener of
    /// a `listen:` endpoint, or a dial loop for a `connect:` one.
    pub(super) fn spawn_side(
        self: &Arc<Self>,
        tracker: &TaskTracker,
        endpoint: &Endpoint,
        listener: Option<TcpListener>,
        role: Role,
    ) -> anyhow::Result<()> {
        let server = Arc::clone(self);
        match (endpoint, listener) {
            (Endpoint::Listen(_), Some(listener)) => {
                let t = tracker.clone();
                tracker.spawn(
                    async move {
                        let stop = server.stop_token(role).clone();
                        let mut warn_limit = RateLimited::new(Duration::from_secs(10));
                        accept_loop(&listener, &stop, |a| {
                            let Ok(admitted) = server.gate.admit(a.peer) else {
                                return;
                            };
                            if let Err(e) = server.route().timeouts.socket.apply(&a.stream) {
                                if let Some(suppressed) = warn_limit.check() {
                                    warn!(peer = %a.peer, error = %e, suppressed,
                                      "cannot set keepalive / user timeout");
                                }
                            }
                            let s = Arc::clone(&server);
                            let kill = server.kill.clone();
                            let span = conn_span(a.peer, role.as_str());
                            t.spawn(
                                async move {
                                    tokio::select! {
                                        _ = s.handle(role, a.stream, a.peer) => {}
                                        _ = kill.cancelled() => {}
                                    }
                                    drop(admitted);
                                }
                                .instrument(span),
                            );
                        })
                        .await;
                    }
                    .in_current_span(),
                );
            }
            (Endpoint::Connect(addr), _) => {
                let addr = addr.clone();
                tracker.spawn(
                    async move {
                        let s = Arc::clone(&server);
                        let kill = server.kill.clone();
                        tokio::select! {
                            _ = dial_loop(&server, &addr, role, move |conn, peer| {
                                Arc::clone(&s)
                                    .serve_conn(role, conn, peer)
                                    .instrument(conn_span(peer, role.as_str()))
                            }) => {}
                            _ = kill.cancelled() => {}
                        }
                    }
                    .in_current_span(),
                );
            }
            (Endpoint::Listen(a), None) => {
                anyhow::bail!("route '{}': no listener bound for {a}", self.route().name)
            }
        }
        Ok(())
    }
}

/// Dials `addr` until the route stops: exponential backoff with full
/// jitter between failed attempts, and after connections that ended before
/// they had been healthy for `reset_after` (so a peer that accepts and
/// closes at once is not hammered). Errors (connect and TLS handshake) are
/// classified: a persistent one (name does not resolve, certificate
/// rejected) is logged once as an error and retried only after a long
/// capped delay; a resource one (EMFILE...) is throttled; transient ones
/// back off with jitter, warned rate-limited. With `max_attempts`, running
/// out of attempts stops the route.
async fn dial_loop<F, Fut>(server: &QueueServer, addr: &str, role: Role, mut on_conn: F)
where
    F: FnMut(MaybeTls, SocketAddr) -> Fut,
    Fut: Future<Output = ()>,
{
    let route = server.route();
    let stop = server.stop_token(role);
    let stats = server.stats.dial(role);
    let mut backoff = Backoff::new(route.backoff.clone());
    let mut warn_limit = RateLimited::new(Duration::from_secs(10));
    // The persistent error last logged, so it is said once, not per retry.
    let mut persistent: Option<String> = None;
    let options = DialOptions {
        recv_buffer: (role == Role::Producer).then_some(PRODUCER_RCVBUF as u32),
        socket: route.timeouts.socket,
    };
    let side = role;
    let role = role.as_str();
    info!(target = addr, "dialing");
    loop {
        stats.attempts.fetch_add(1, Ordering::Relaxed);
        // TLS, when the endpoint has it: the handshake is part of the
        // attempt, and a rejected certificate backs off long (persistent).
        let tls = match server.side_tls(side) {
            Some(SideTls::Client(tls)) => Some(tls),
            _ => None,
        };
        let attempt = tokio::select! {
            r = dial(addr, route.connect_timeout, options, tls.as_ref()) => r,
            _ = stop.cancelled() => return,
        };
        let delay = match attempt {
            Ok((stream, peer)) => {
                if persistent.take().is_some() {
                    info!(
                        role,
                        target = addr,
                        "connected again after a persistent error"
                    );
                }
                let started = Instant::now();
                backoff.on_connected(started.into_std());
                on_conn(stream, peer).await;
                let ended = Instant::now();
                backoff.on_disconnected(ended.into_std());
                if backoff.attempts() == 0 && ended - started >= backoff.config().reset_after {
                    Some(Duration::ZERO)
                } else {
                    backoff.on_failure()
                }
            }
            Err(failure) => {
                let what = match failure.tls() {
                    None => "connect failed",
                    Some(_) => {
                        server.count_tls_failure(side);
                        "TLS handshake failed"
                    }
                };
                let class = failure.class();
                let error = failure.to_string();
                stats.failures.add(class);
                let d = backoff.on_classified_failure(class);
                let retry_in_ms = d.map_or(0, |d| d.as_millis() as u64);
                let attempts = backoff.attempts();
                if class == ErrorClass::Persistent {
                    if persistent.as_deref() != Some(error.as_str()) {
                        error!(target = addr, error = %error,
                               class = %class, retry_in_ms, attempts,
                               "{what}; retrying cannot help until this is fixed, \
                                so retries are spaced out to the backoff cap");
                        persistent = Some(error);
                    }
                } else if let Some(suppressed) = warn_limit.check() {
                    warn!(target = addr, error = %error,
                          class = %class, retry_in_ms, attempts, suppressed, "{what}");
                }
                d
            }
        };
        if stop.is_cancelled() {
            return;
        }
        let Some(d) = delay else {
            let msg = format!(
                "gave up dialing {addr} ({role}) after {} consecutive failures (backoff.max_attempts)",
                backoff.attempts()
            );
            server.give_up(&msg);
            return;
        };
        if !d.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}
