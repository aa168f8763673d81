//! The two directions of a proxied connection, and what each one shares
//! with the supervisor: how it failed (`DirError`), how far it got
//! (`Progress`), and the waits every copy loop makes.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::SockRef;
use spillway_net::timeout::StallTimer;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::RouteStats;

/// Which way bytes flow through a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client to the upstream (the route's `in` bytes).
    ClientToUpstream,
    /// From the upstream back to the client (`out`).
    UpstreamToClient,
}

impl Direction {
    /// Both, in declaration order (the index of [`Direction::index`]).
    pub const ALL: [Direction; 2] = [Direction::ClientToUpstream, Direction::UpstreamToClient];

    /// Position in [`Direction::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The metric label: bytes `in` to the upstream, `out` to the client.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ClientToUpstream => "in",
            Direction::UpstreamToClient => "out",
        }
    }

    /// The peer this direction reads from.
    pub fn source(self) -> Side {
        match self {
            Direction::ClientToUpstream => Side::Client,
            Direction::UpstreamToClient => Side::Upstream,
        }
    }

    /// The peer this direction writes to.
    pub fn destination(self) -> Side {
        match self {
            Direction::ClientToUpstream => Side::Upstream,
            Direction::UpstreamToClient => Side::Client,
        }
    }
}

/// One peer of a proxied connection: whom a close reason is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
        }
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

/// Live per-connection counters shared by the two directions and the
/// supervisor (which reads them for the idle timer and the final log line).
pub(crate) struct Progress {
    pub(super) start: Instant,
    last_activity_ms: AtomicU64,
    bytes: [AtomicU64; 2],
    spilled: AtomicU64,
    /// Each direction ended cleanly (EOF forwarded, or about to be).
    ended: [AtomicBool; 2],
    stats: Arc<RouteStats>,
}

impl Progress {
    pub(super) fn new(stats: Arc<RouteStats>) -> Self {
        Progress {
            start: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
            bytes: Default::default(),
            spilled: AtomicU64::new(0),
            ended: Default::default(),
            stats,
        }
    }

    pub(crate) fn moved(&self, dir: Direction, n: usize) {
        self.bytes[dir.index()].fetch_add(n as u64, Ordering::Relaxed);
        self.stats.bytes[dir.index()].fetch_add(n as u64, Ordering::Relaxed);
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

    /// Bytes moved in `dir` so far.
    pub(super) fn bytes(&self, dir: Direction) -> u64 {
        self.bytes[dir.index()].load(Ordering::Relaxed)
    }

    /// Bytes that went through the spill file so far.
    pub(super) fn spilled_bytes(&self) -> u64 {
        self.spilled.load(Ordering::Relaxed)
    }

    /// Ends `dir` cleanly: its source sent EOF and everything was
    /// written to `dst`. The EOF is forwarded (`dst`'s write side shut
    /// down), unless the other direction ended already: then both sockets
    /// are closed at once, and the close sends the FIN (one `shutdown`
    /// fewer per connection; with both EOFs read, neither socket has
    /// unread bytes that would turn the close into a reset).
    pub(crate) fn end(&self, dir: Direction, dst: &TcpStream) -> Result<(), DirError> {
        self.ended[dir.index()].store(true, Ordering::Relaxed);
        let other = match dir {
            Direction::ClientToUpstream => Direction::UpstreamToClient,
            Direction::UpstreamToClient => Direction::ClientToUpstream,
        };
        if self.ended[other.index()].load(Ordering::Relaxed) {
            return Ok(());
        }
        shutdown_write(dst)
    }

    pub(super) fn last_activity(&self) -> Instant {
        self.start + Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed))
    }
}

fn shutdown_write(s: &TcpStream) -> Result<(), DirError> {
    match SockRef::from(s).shutdown(std::net::Shutdown::Write) {
        Ok(()) => Ok(()),
        // The peer is already gone; the other direction will notice.
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        Err(e) => Err(DirError::Write(e)),
    }
}
