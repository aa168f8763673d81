//! What consumers and producers share: connecting, the handshake, and
//! non-blocking writes of queued bytes.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use spillway_codec::proto::{self, Hello, Reply, Welcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{lookup_host, TcpStream, ToSocketAddrs};

use crate::ClientError;

/// How long connecting and the handshake may take together.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a closing connection may take to write what it still has
/// (acks, frames) before it is dropped.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The most bytes read from the socket in one go before the driver looks
/// at its other work.
pub(crate) const READ_CHUNK: usize = 256 << 10;

/// The addresses `addr` resolves to.
pub(crate) async fn resolve(addr: impl ToSocketAddrs) -> Result<Vec<SocketAddr>, ClientError> {
    let addrs: Vec<SocketAddr> = lookup_host(addr).await?.collect();
    if addrs.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to").into());
    }
    Ok(addrs)
}

/// An established connection: the handshake done.
pub(crate) struct Established {
    pub(crate) stream: TcpStream,
    pub(crate) welcome: Welcome,
    /// Bytes read after the relay's `OK` line: already frames.
    pub(crate) rest: BytesMut,
}

/// Connects to the first of `addrs` that accepts, sends `hello`, and reads
/// the relay's answer, all within [`HANDSHAKE_TIMEOUT`]. An `ERR` answer is
/// [`ClientError::Protocol`].
pub(crate) async fn handshake(
    addrs: &[SocketAddr],
    hello: &Hello,
) -> Result<Established, ClientError> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake_inner(addrs, hello)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no handshake with the relay within {HANDSHAKE_TIMEOUT:?}"),
        )
        .into()),
    }
}

async fn handshake_inner(addrs: &[SocketAddr], hello: &Hello) -> Result<Established, ClientError> {
    let mut last = None;
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let Some(mut stream) = stream else {
        return Err(last
            .unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))
            .into());
    };
    // Acks and confirms are small frames that someone waits for.
    stream.set_nodelay(true)?;
    stream.write_all(hello.to_line().as_bytes()).await?;
    let mut buf = BytesMut::with_capacity(1024);
    let n = loop {
        if let Some(n) = proto::hello_line(&buf).map_err(ClientError::Decode)? {
            break n;
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(ClientError::Disconnected);
        }
    };
    let line = buf.split_to(n);
    match Reply::parse(&line).map_err(ClientError::Decode)? {
        Reply::Welcome(welcome) => Ok(Established {
            stream,
            welcome,
            rest: buf,
        }),
        Reply::Refused(e) => Err(ClientError::Protocol {
            code: e.code,
            text: e.message,
        }),
    }
}

/// Writes as much of `out` as the socket takes now, without waiting;
/// returns the bytes written (`Ok(0)` when it would block).
pub(crate) fn write_some(stream: &TcpStream, out: &mut VecDeque<Bytes>) -> io::Result<usize> {
    let mut total = 0;
    while !out.is_empty() {
        let slices: Vec<IoSlice<'_>> = out.iter().take(64).map(|b| IoSlice::new(b)).collect();
        let n = match stream.try_write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(total),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        total += n;
        let mut left = n;
        while left > 0 {
            let Some(front) = out.front_mut() else { break };
            if front.len() > left {
                front.advance(left);
                left = 0;
            } else {
                left -= front.len();
                out.pop_front();
            }
        }
    }
    Ok(total)
}

/// Reads what the socket has now into `buf`, up to [`READ_CHUNK`] bytes:
/// `Ok(true)` at EOF.
pub(crate) fn read_some(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<bool> {
    let mut total = 0;
    while total < READ_CHUNK {
        buf.reserve(64 << 10);
        match stream.try_read_buf(buf) {
            Ok(0) => return Ok(true),
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Writes what is left of `out` and half-closes, within [`CLOSE_TIMEOUT`];
/// errors are ignored (the connection is going away either way).
pub(crate) async fn finish(mut stream: TcpStream, out: VecDeque<Bytes>) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        for b in out {
            stream.write_all(&b).await?;
        }
        stream.shutdown().await
    })
    .await;
}
