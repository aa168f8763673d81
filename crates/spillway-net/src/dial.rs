//! Connecting to `HOST:PORT` with one overall timeout, and the liveness
//! options (TCP keepalive, `TCP_USER_TIMEOUT`) every socket gets, dialed or
//! accepted. [`dial`] is the whole attempt of both modes, TCP and then TLS
//! when the endpoint originates it, with one error type and one
//! classification ([`DialError::class`]).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpSocket, TcpStream};

use crate::classify::{classify, ErrorClass};
use crate::tls::{MaybeTls, TlsClient, TlsError};

/// TCP keepalive probing: after `idle` without any segment from the peer,
/// send a probe every `interval`; `count` unanswered probes reset the
/// connection (reads and writes then fail with `ETIMEDOUT`). Detects a peer
/// that vanished (power loss, pulled cable, NAT state dropped) on an idle
/// connection, in about `idle + interval * count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
}

/// Liveness options for a connected socket.
///
/// With `user_timeout` set, Linux also uses it to end keepalive probing:
/// the connection is dropped once probes have gone unanswered and nothing
/// was received for `user_timeout` (then `count` no longer matters). It also
/// bounds how long sent data may stay unacknowledged (retransmissions to a
/// dead peer) and how long the peer may advertise a zero window, so a
/// half-open peer with data in flight is detected too, where keepalive does
/// not apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketOptions {
    pub keepalive: Option<Keepalive>,
    /// `TCP_USER_TIMEOUT`; `None` leaves the kernel default (retransmit
    /// for about 15 minutes).
    pub user_timeout: Option<Duration>,
}

impl SocketOptions {
    /// Applies the options to `socket` (connected or not).
    pub fn apply<S: std::os::fd::AsFd>(&self, socket: &S) -> io::Result<()> {
        let s = SockRef::from(socket);
        if let Some(k) = self.keepalive {
            let params = TcpKeepalive::new()
                .with_time(k.idle)
                .with_interval(k.interval)
                .with_retries(k.count);
            s.set_tcp_keepalive(&params)?;
        }
        if let Some(t) = self.user_timeout {
            s.set_tcp_user_timeout(Some(t))?;
        }
        Ok(())
    }
}

impl SocketOptions {
    /// Sets exactly these options, and `TCP_NODELAY`: an absent option is
    /// turned off (keepalive) or back to the kernel's default (user
    /// timeout), where [`SocketOptions::apply`] only turns options on. On
    /// a listening socket, what it accepts inherits them on Linux (six
    /// `setsockopt` calls fewer per connection); a socket set before
    /// (accepted, or queued in the listener's backlog when its options
    /// changed) is set again.
    pub fn apply_exact<S: std::os::fd::AsFd>(&self, socket: &S) -> io::Result<()> {
        let s = SockRef::from(socket);
        s.set_tcp_nodelay(true)?;
        if self.keepalive.is_none() {
            s.set_keepalive(false)?;
        }
        if self.user_timeout.is_none() {
            s.set_tcp_user_timeout(None)?;
        }
        self.apply(socket)
    }
}

/// Socket options applied before the connection is made.
#[derive(Clone, Copy, Debug, Default)]
pub struct DialOptions {
    /// `SO_RCVBUF`; set before connecting so the window scale allows it.
    pub recv_buffer: Option<u32>,
    /// Keepalive and user timeout (they also bound the connect itself).
    pub socket: SocketOptions,
}

/// Connects to `target` (an IP literal, or a name resolved now), trying
/// each resolved address in turn, all within `timeout`. Sets `TCP_NODELAY`:
/// a relay must not add Nagle's delay to what it forwards.
pub async fn connect(
    target: &str,
    timeout: Duration,
    options: DialOptions,
) -> io::Result<(TcpStream, SocketAddr)> {
    let attempt = async {
        let addrs: Vec<SocketAddr> = match target.parse::<SocketAddr>() {
            Ok(a) => vec![a],
            Err(_) => tokio::net::lookup_host(target)
                .await
                .map_err(|e| crate::classify::resolve_error(target, e))?
                .collect(),
        };
        let mut last = io::Error::new(
            io::ErrorKind::NotFound,
            format!("{target} resolved to no address"),
        );
        for addr in addrs {
            match connect_one(addr, options).await {
                Ok(s) => return Ok((s, addr)),
                Err(e) => last = e,
            }
        }
        Err(last)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect to {target} timed out after {timeout:?}"),
        )),
    }
}

/// A failed [`dial`]: the TCP connect (or the name lookup) or the TLS
/// handshake after it.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("{0}")]
    Connect(#[source] io::Error),
    #[error("{0}")]
    Tls(#[source] TlsError),
}

impl DialError {
    /// How to retry: the connect's error by [`classify`], the handshake's
    /// by [`TlsError::class`] (one table for both modes).
    pub fn class(&self) -> ErrorClass {
        match self {
            DialError::Connect(e) => classify(e),
            DialError::Tls(e) => e.class(),
        }
    }

    /// The TLS handshake failed (the TCP connect had succeeded).
    pub fn tls(&self) -> Option<&TlsError> {
        match self {
            DialError::Tls(e) => Some(e),
            DialError::Connect(_) => None,
        }
    }
}

/// One dial attempt of `target`: [`connect`] within `timeout`, then, with
/// `tls`, the client handshake within its own handshake timeout. Returns
/// the connection and the address it reached.
pub async fn dial(
    target: &str,
    timeout: Duration,
    options: DialOptions,
    tls: Option<&TlsClient>,
) -> Result<(MaybeTls, SocketAddr), DialError> {
    let (tcp, addr) = connect(target, timeout, options)
        .await
        .map_err(DialError::Connect)?;
    match tls {
        None => Ok((MaybeTls::Plain(tcp), addr)),
        Some(tls) => match tls.connect(tcp, target).await {
            Ok(s) => Ok((MaybeTls::from(s), addr)),
            Err(e) => Err(DialError::Tls(e)),
        },
    }
}

async fn connect_one(addr: SocketAddr, options: DialOptions) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(size) = options.recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    options.socket.apply(&socket)?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the relay relies on to skip per-connection `setsockopt`s: an
    /// accepted socket has its listener's options, and a listener set
    /// again (a reload) passes on the new ones, absent ones turned off;
    /// the user timeout without keepalive too.
    #[tokio::test]
    async fn accepted_sockets_inherit_the_listeners_options() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let on = SocketOptions {
            keepalive: Some(Keepalive {
                idle: Duration::from_secs(31),
                interval: Duration::from_secs(11),
                count: 4,
            }),
            user_timeout: Some(Duration::from_millis(91_000)),
        };
        let accept = || async {
            let _c = TcpStream::connect(addr).await.expect("connect");
            let (a, _) = listener.accept().await.expect("accept");
            a
        };
        on.apply_exact(&listener).expect("set");
        let a = accept().await;
        let s = SockRef::from(&a);
        assert!(s.tcp_nodelay().expect("nodelay"));
        assert!(s.keepalive().expect("keepalive"));
        assert_eq!(
            s.tcp_keepalive_time().expect("idle"),
            Duration::from_secs(31)
        );
        assert_eq!(
            s.tcp_keepalive_interval().expect("interval"),
            Duration::from_secs(11)
        );
        assert_eq!(s.tcp_keepalive_retries().expect("count"), 4);
        assert_eq!(
            s.tcp_user_timeout().expect("uto"),
            Some(Duration::from_millis(91_000))
        );
        SocketOptions::default()
            .apply_exact(&listener)
            .expect("set again");
        let b = accept().await;
        let s = SockRef::from(&b);
        assert!(s.tcp_nodelay().expect("nodelay"));
        assert!(!s.keepalive().expect("keepalive"));
        assert_eq!(s.tcp_user_timeout().expect("uto"), None);
        SocketOptions {
            keepalive: None,
            user_timeout: Some(Duration::from_secs(19)),
        }
        .apply_exact(&listener)
        .expect("user timeout alone");
        let c = accept().await;
        let s = SockRef::from(&c);
        assert!(!s.keepalive().expect("keepalive"));
        assert_eq!(
            s.tcp_user_timeout().expect("uto"),
            Some(Duration::from_secs(19))
        );
    }

    #[tokio::test]
    async fn connects_and_reports_refusal_and_timeout() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let keepalive = Keepalive {
            idle: Duration::from_secs(7),
            interval: Duration::from_secs(3),
            count: 4,
        };
        let opts = DialOptions {
            recv_buffer: Some(1 << 20),
            socket: SocketOptions {
                keepalive: Some(keepalive),
                user_timeout: Some(Duration::from_secs(11)),
            },
        };
        let (s, _) = connect(&addr, Duration::from_secs(5), opts)
            .await
            .expect("connect");
        assert!(s.nodelay().expect("nodelay"));
        let r = SockRef::from(&s);
        assert!(r.keepalive().expect("keepalive"));
        assert_eq!(r.tcp_keepalive_time().expect("idle"), keepalive.idle);
        assert_eq!(
            r.tcp_keepalive_interval().expect("intvl"),
            keepalive.interval
        );
        assert_eq!(r.tcp_keepalive_retries().expect("cnt"), keepalive.count);
        assert_eq!(
            r.tcp_user_timeout().expect("user timeout"),
            Some(Duration::from_secs(11))
        );
        // Accepted sockets get the same options through `apply`.
        let (accepted, _) = l.accept().await.expect("accept");
        opts.socket.apply(&accepted).expect("apply");
        let a = SockRef::from(&accepted);
        assert_eq!(a.tcp_keepalive_time().expect("idle"), keepalive.idle);
        assert_eq!(
            a.tcp_user_timeout().expect("user timeout"),
            Some(Duration::from_secs(11))
        );
        drop(l);
        let err = connect(&addr, Duration::from_secs(5), DialOptions::default())
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        let err = connect(
            "nonexistent.invalid:1",
            Duration::from_secs(5),
            DialOptions::default(),
        )
        .await
        .expect_err("no such name");
        assert_ne!(err.kind(), io::ErrorKind::TimedOut);
        // Without a resolver (sandbox) the lookup may fail "temporarily";
        // either way it is recognised as a name resolution failure.
        assert!(err
            .get_ref()
            .is_some_and(|e| e.is::<crate::classify::ResolveError>()));
    }
}
