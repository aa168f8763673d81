//! Connecting to `HOST:PORT` with one overall timeout.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

/// Socket options applied before the connection is made.
#[derive(Clone, Copy, Debug, Default)]
pub struct DialOptions {
    /// `SO_RCVBUF`; set before connecting so the window scale allows it.
    pub recv_buffer: Option<u32>,
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

async fn connect_one(addr: SocketAddr, options: DialOptions) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(size) = options.recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connects_and_reports_refusal_and_timeout() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let opts = DialOptions {
            recv_buffer: Some(1 << 20),
        };
        let (s, _) = connect(&addr, Duration::from_secs(5), opts)
            .await
            .expect("connect");
        assert!(s.nodelay().expect("nodelay"));
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
