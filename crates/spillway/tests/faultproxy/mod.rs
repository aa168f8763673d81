//! A fault-injection TCP proxy for tests, after toxiproxy's ideas.
//!
//! It listens on 127.0.0.1:0 inside the test process (its own thread and
//! runtime, so sync and async tests can use it alike) and forwards every
//! connection to a target. Faults ("toxics") are switched per direction at
//! any time and apply to every connection, open or new:
//!
//! - `latency`: each chunk is held this long before it is written on
//!   (pipelined, like a long link: throughput is kept, time is added);
//! - `bandwidth`: at most this many bytes per second;
//! - `slice`: written on in pieces of 1 to 7 bytes;
//! - `stall`: the source is not read at all (its window closes, its
//!   writes back up), until the toxic is cleared;
//! - `reset_after`: after this many bytes in the direction, both peers are
//!   reset (RST, `SO_LINGER 0`) in the middle of the stream;
//! - `blackhole`: read and thrown away, never forwarded (nor is the EOF).
//!
//! On command, every open connection is reset (`reset_all`) or unplugged
//! (`unplug_all`: a socket filter on the proxy's sockets drops every
//! incoming packet, so neither peer gets another ACK, keepalive answer,
//! FIN or RST: a pulled cable, as seen by TCP).
//!
//! A reset or error on one side resets the other, like a real proxy; an EOF
//! is forwarded as a half-close once everything before it was written.
//! Buffering is bounded: a small channel per direction, and optionally
//! small socket buffers (`Options::socket_buffer`).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use socket2::SockRef;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, sleep_until, Instant};

/// A direction through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Client (who connected to the proxy) to target.
    Up = 0,
    /// Target to client.
    Down = 1,
}

/// The faults of one direction; `Toxics::default()` is a clean link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Toxics {
    pub latency: Duration,
    /// Bytes per second.
    pub bandwidth: Option<u64>,
    pub slice: bool,
    pub stall: bool,
    pub reset_after: Option<u64>,
    pub blackhole: bool,
}

#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// `SO_RCVBUF` and `SO_SNDBUF` of both proxy sockets, so the proxy
    /// holds little in its kernel (what it acknowledged but did not pass on).
    pub socket_buffer: Option<u32>,
    /// Chunks queued per direction between read and write (16 KiB each).
    pub queue: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            socket_buffer: None,
            queue: 16,
        }
    }
}

const CHUNK: usize = 16 << 10;

struct Shared {
    toxics: watch::Sender<[Toxics; 2]>,
    resets: watch::Sender<u64>,
    unplugs: watch::Sender<u64>,
    target: Mutex<SocketAddr>,
    options: Options,
    connections: AtomicU64,
    forwarded: [AtomicU64; 2],
    /// Unplugged sockets are kept open (a close would send FIN or RST).
    unplugged: Mutex<Vec<Arc<TcpStream>>>,
}

pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    pub fn start(target: SocketAddr) -> FaultProxy {
        Self::with_options(target, Options::default())
    }

    pub fn with_options(target: SocketAddr, options: Options) -> FaultProxy {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("proxy addr");
        let shared = Arc::new(Shared {
            toxics: watch::channel([Toxics::default(); 2]).0,
            resets: watch::channel(0).0,
            unplugs: watch::channel(0).0,
            target: Mutex::new(target),
            options,
            connections: AtomicU64::new(0),
            forwarded: Default::default(),
            unplugged: Mutex::new(Vec::new()),
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("faultproxy".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("proxy listener");
                    tokio::select! {
                        _ = accept_loop(listener, s) => {}
                        _ = stop_rx => {}
                    }
                });
                // Dropping the runtime drops every connection task.
            })
            .expect("proxy thread");
        FaultProxy {
            addr,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set(&self, dir: Dir, t: Toxics) {
        self.shared.toxics.send_modify(|all| all[dir as usize] = t);
    }

    pub fn update(&self, dir: Dir, f: impl FnOnce(&mut Toxics)) {
        self.shared
            .toxics
            .send_modify(|all| f(&mut all[dir as usize]));
    }

    pub fn toxics(&self, dir: Dir) -> Toxics {
        self.shared.toxics.borrow()[dir as usize]
    }

    /// Both directions clean again.
    pub fn clear(&self) {
        self.shared
            .toxics
            .send_modify(|all| *all = [Toxics::default(); 2]);
    }

    /// Resets (RST both peers) every connection open now.
    pub fn reset_all(&self) {
        self.shared.resets.send_modify(|g| *g += 1);
    }

    /// Every connection open now goes silent for good: incoming packets are
    /// dropped on both proxy sockets and nothing more is sent.
    pub fn unplug_all(&self) {
        self.shared.unplugs.send_modify(|g| *g += 1);
    }

    /// Where new connections go.
    pub fn set_target(&self, target: SocketAddr) {
        *self.shared.target.lock().expect("target") = target;
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Bytes written on in `dir`, all connections together.
    pub fn forwarded(&self, dir: Dir) -> u64 {
        self.shared.forwarded[dir as usize].load(Ordering::Relaxed)
    }

    /// Waits (bounded) until `n` connections were accepted.
    pub fn wait_connections(&self, n: u64, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        while self.connections() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "proxy saw {} of {n} connections within {limit:?}",
                self.connections()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn tune(s: &TcpStream, options: &Options) {
    let _ = s.set_nodelay(true);
    if let Some(size) = options.socket_buffer {
        let r = SockRef::from(s);
        let _ = r.set_recv_buffer_size(size as usize);
        let _ = r.set_send_buffer_size(size as usize);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            sleep(Duration::from_millis(5)).await;
            continue;
        };
        shared.connections.fetch_add(1, Ordering::Relaxed);
        tune(&client, &shared.options);
        tokio::spawn(connection(client, Arc::clone(&shared)));
    }
}

async fn dial(shared: &Shared) -> std::io::Result<TcpStream> {
    let target = *shared.target.lock().expect("target");
    let socket = TcpSocket::new_v4()?;
    if let Some(size) = shared.options.socket_buffer {
        socket.set_recv_buffer_size(size)?;
        socket.set_send_buffer_size(size)?;
    }
    let s = tokio::time::timeout(Duration::from_secs(5), socket.connect(target))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    tune(&s, &shared.options);
    Ok(s)
}

/// What a pump ended with.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Clean: EOF read (reader) or forwarded as a half-close (writer).
    Done,
    /// A socket error, or the reset toxic: reset both peers.
    Broken,
}

enum Item {
    Data(Instant, Bytes),
    Eof,
}

fn reset(a: &TcpStream, b: &TcpStream) {
    for s in [a, b] {
        let _ = SockRef::from(s).set_linger(Some(Duration::ZERO));
    }
}

/// A classic BPF program of one instruction, `ret #0`: keep no byte of any
/// packet, i.e. drop it before TCP sees it.
fn drop_all_incoming(s: &TcpStream) {
    let prog = [socket2::SockFilter::new(0x06, 0, 0, 0)];
    let _ = SockRef::from(s).attach_filter(&prog);
}

async fn connection(client: TcpStream, shared: Arc<Shared>) {
    let target = match dial(&shared).await {
        Ok(t) => t,
        Err(_) => {
            let _ = SockRef::from(&client).set_linger(Some(Duration::ZERO));
            return;
        }
    };
    let client = Arc::new(client);
    let target = Arc::new(target);
    let mut resets = shared.resets.subscribe();
    let mut unplugs = shared.unplugs.subscribe();
    resets.mark_unchanged();
    unplugs.mark_unchanged();
    let (up_tx, up_rx) = mpsc::channel(shared.options.queue.max(1));
    let (down_tx, down_rx) = mpsc::channel(shared.options.queue.max(1));
    let broken = Arc::new(AtomicBool::new(false));
    let mut pumps = tokio::task::JoinSet::new();
    let pump = |stream: &Arc<TcpStream>| Pump {
        stream: Arc::clone(stream),
        shared: Arc::clone(&shared),
        broken: Arc::clone(&broken),
    };
    pumps.spawn(reader(pump(&client), up_tx, Dir::Up));
    pumps.spawn(writer(pump(&target), up_rx, Dir::Up));
    pumps.spawn(reader(pump(&target), down_tx, Dir::Down));
    pumps.spawn(writer(pump(&client), down_rx, Dir::Down));
    loop {
        tokio::select! {
            r = pumps.join_next() => match r {
                None => return, // both directions ended cleanly
                Some(Ok(End::Done)) => {}
                Some(_) => {
                    reset(&client, &target);
                    pumps.abort_all();
                    return;
                }
            },
            _ = resets.changed() => {
                reset(&client, &target);
                pumps.abort_all();
                return;
            }
            _ = unplugs.changed() => {
                drop_all_incoming(&client);
                drop_all_incoming(&target);
                pumps.abort_all();
                let mut keep = shared.unplugged.lock().expect("unplugged");
                keep.push(client);
                keep.push(target);
                return;
            }
        }
    }
}

/// What a pump task holds: its socket, and the connection's "broken" flag.
///
/// A socket error is reported once: if the writer's `write` consumed a
/// reset, the reader's next `read` on the same socket returns 0, which must
/// not be passed on as a clean EOF. Every pump sets the flag right after a
/// failed call (no await in between; one thread runs all pumps), and a
/// reader checks it before treating 0 as EOF.
struct Pump {
    stream: Arc<TcpStream>,
    shared: Arc<Shared>,
    broken: Arc<AtomicBool>,
}

impl Pump {
    fn fail(&self) -> End {
        self.broken.store(true, Ordering::SeqCst);
        End::Broken
    }

    fn is_broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }
}

async fn reader(p: Pump, tx: mpsc::Sender<Item>, dir: Dir) -> End {
    let src = &p.stream;
    let mut toxics = p.shared.toxics.subscribe();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let t = toxics.borrow_and_update()[dir as usize];
        if t.stall {
            // Not reading: the source's window closes.
            if toxics.changed().await.is_err() {
                return End::Done;
            }
            continue;
        }
        let r = tokio::select! {
            r = src.readable() => r,
            _ = toxics.changed() => continue,
        };
        if r.is_err() {
            return p.fail();
        }
        match src.try_read(&mut buf) {
            Ok(0) if p.is_broken() => return End::Broken,
            Ok(0) if t.blackhole => {
                // A black hole passes on nothing, not even the end: the
                // direction stays open (and silent) until the connection
                // is reset, unplugged or the proxy dropped.
                std::future::pending::<()>().await;
            }
            Ok(0) => {
                let _ = tx.send(Item::Eof).await;
                return End::Done;
            }
            Ok(n) => {
                if t.blackhole {
                    continue;
                }
                let item = Item::Data(Instant::now(), Bytes::copy_from_slice(&buf[..n]));
                if tx.send(item).await.is_err() {
                    return End::Done;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return p.fail(),
        }
    }
}

/// Bandwidth pacing against a schedule (bytes since `start` at `rate`), not
/// a sleep per write: timer granularity (1 ms) then averages out. Idle time
/// is not saved up for a burst (the schedule restarts when behind by more
/// than 50 ms), and a new rate restarts it.
#[derive(Default)]
struct Pacer {
    start: Option<Instant>,
    bytes: u64,
    rate: u64,
}

impl Pacer {
    async fn paced(&mut self, n: u64, rate: u64) {
        let rate = rate.max(1);
        let now = Instant::now();
        let start = match self.start {
            Some(s) if self.rate == rate => s,
            _ => {
                self.bytes = 0;
                now
            }
        };
        let due = |bytes: u64| start + Duration::from_secs_f64(bytes as f64 / rate as f64);
        let (start, bytes) = if due(self.bytes) + Duration::from_millis(50) < now {
            (now, 0)
        } else {
            (start, self.bytes)
        };
        self.start = Some(start);
        self.rate = rate;
        self.bytes = bytes + n;
        sleep_until(start + Duration::from_secs_f64(self.bytes as f64 / rate as f64)).await;
    }
}

/// A tiny deterministic generator for slice sizes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn write_all(dst: &TcpStream, mut data: &[u8]) -> Result<(), ()> {
    while !data.is_empty() {
        dst.writable().await.map_err(|_| ())?;
        match dst.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Err(()),
        }
    }
    Ok(())
}

async fn writer(p: Pump, mut rx: mpsc::Receiver<Item>, dir: Dir) -> End {
    let dst = &p.stream;
    let shared = &p.shared;
    let toxics = shared.toxics.subscribe();
    let mut sent = 0u64;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ dir as u64);
    let mut pacer = Pacer::default();
    while let Some(item) = rx.recv().await {
        let (at, data) = match item {
            Item::Data(at, d) => (at, d),
            Item::Eof if p.is_broken() => return End::Broken,
            Item::Eof => {
                let _ = SockRef::from(&**dst).shutdown(std::net::Shutdown::Write);
                return End::Done;
            }
        };
        let t = toxics.borrow()[dir as usize];
        if !t.latency.is_zero() {
            sleep_until(at + t.latency).await;
        }
        let mut rest: &[u8] = &data;
        let mut broken_at_end = false;
        if let Some(limit) = t.reset_after {
            let room = limit.saturating_sub(sent) as usize;
            if rest.len() >= room {
                rest = &rest[..room];
                broken_at_end = true;
            }
        }
        while !rest.is_empty() {
            let t = toxics.borrow()[dir as usize];
            let mut piece = rest.len();
            if t.slice {
                piece = piece.min(1 + (rng.next() % 7) as usize);
            }
            if let Some(rate) = t.bandwidth {
                // Pieces of at most 1/20 s at the rate, paced after each.
                piece = piece.min((rate / 20).max(1) as usize);
            }
            if write_all(dst, &rest[..piece]).await.is_err() {
                return p.fail();
            }
            sent += piece as u64;
            shared.forwarded[dir as usize].fetch_add(piece as u64, Ordering::Relaxed);
            rest = &rest[piece..];
            if let Some(rate) = t.bandwidth {
                pacer.paced(piece as u64, rate).await;
            }
        }
        if broken_at_end {
            return End::Broken;
        }
    }
    End::Done
}

// ------------------------------------------------------------ self-test ---

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpStream as StdStream};

    /// A target that echoes every byte back, then half-closes at EOF.
    fn echo_target() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        std::thread::spawn(move || {
            for s in l.incoming().take(8) {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 8192];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = s.shutdown(Shutdown::Write);
                });
            }
        });
        addr
    }

    fn round_trip(proxy: &FaultProxy, data: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut c = StdStream::connect(proxy.addr())?;
        c.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut w = c.try_clone()?;
        let data = data.to_vec();
        let t = std::thread::spawn(move || {
            let _ = w.write_all(&data);
            let _ = w.shutdown(Shutdown::Write);
        });
        let mut back = Vec::new();
        let r = c.read_to_end(&mut back);
        let _ = t.join();
        r.map(|_| back)
    }

    #[test]
    fn clean_latency_slice_and_bandwidth_links_are_byte_exact() {
        let proxy = FaultProxy::start(echo_target());
        let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        assert_eq!(round_trip(&proxy, &data).expect("clean"), data);
        proxy.set(
            Dir::Up,
            Toxics {
                slice: true,
                ..Toxics::default()
            },
        );
        proxy.set(
            Dir::Down,
            Toxics {
                latency: Duration::from_millis(30),
                bandwidth: Some(400_000),
                ..Toxics::default()
            },
        );
        assert_eq!(round_trip(&proxy, &data).expect("toxic"), data);
        assert_eq!(proxy.connections(), 2);
        assert_eq!(proxy.forwarded(Dir::Down), 2 * data.len() as u64);
    }

    #[test]
    fn reset_after_cuts_with_an_error_never_a_clean_eof() {
        let proxy = FaultProxy::start(echo_target());
        proxy.set(
            Dir::Down,
            Toxics {
                reset_after: Some(1000),
                ..Toxics::default()
            },
        );
        let r = round_trip(&proxy, &[7u8; 100_000]);
        assert!(
            r.is_err(),
            "expected a reset, got {:?} bytes",
            r.map(|v| v.len())
        );
        assert_eq!(proxy.forwarded(Dir::Down), 1000);
    }

    #[test]
    fn stall_holds_bytes_until_cleared_and_blackhole_swallows_them() {
        let proxy = FaultProxy::start(echo_target());
        proxy.set(
            Dir::Up,
            Toxics {
                stall: true,
                ..Toxics::default()
            },
        );
        let mut c = StdStream::connect(proxy.addr()).expect("connect");
        c.write_all(b"hello").expect("write");
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let mut buf = [0u8; 5];
        assert!(c.read(&mut buf).is_err(), "a stalled link passed bytes");
        proxy.clear();
        c.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        c.read_exact(&mut buf).expect("after resume");
        assert_eq!(&buf, b"hello");

        proxy.set(
            Dir::Up,
            Toxics {
                blackhole: true,
                ..Toxics::default()
            },
        );
        // Let the reader pick the toxic up, then send into the hole.
        std::thread::sleep(Duration::from_millis(50));
        c.write_all(b"gone").expect("write");
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        assert!(c.read(&mut buf).is_err(), "a black hole answered");
        assert_eq!(proxy.forwarded(Dir::Up), 5);
    }

    #[test]
    fn reset_all_and_unplug_all() {
        let proxy = FaultProxy::start(echo_target());
        let mut c = StdStream::connect(proxy.addr()).expect("connect");
        c.write_all(b"x").expect("write");
        let mut b = [0u8; 1];
        c.read_exact(&mut b).expect("echo");
        proxy.reset_all();
        c.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let r = c.read(&mut b);
        assert!(r.is_err(), "expected a reset, got {r:?}");

        let mut c = StdStream::connect(proxy.addr()).expect("connect");
        c.write_all(b"y").expect("write");
        c.read_exact(&mut b).expect("echo");
        proxy.wait_connections(2, Duration::from_secs(20));
        proxy.unplug_all();
        std::thread::sleep(Duration::from_millis(50));
        // Nothing comes back, not even an error: the cable is out.
        c.write_all(b"z").expect("write");
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let e = c.read(&mut b).expect_err("no answer");
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
        // And our byte was never acknowledged: the proxy's kernel dropped it.
        use std::os::fd::AsFd;
        let unacked = spillway_net::sys::unacked_bytes(c.as_fd()).expect("SIOCOUTQ");
        assert_eq!(unacked, 1, "the unplugged side acknowledged data");
    }
}
