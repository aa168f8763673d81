//! A producer: PUB frames out, confirms in.
//!
//! [`Producer::send`] hands a message to the connection's background task
//! and returns once it is queued (bounded: past 65,536 unconfirmed
//! messages or 64 MiB it waits for confirms). [`Producer::flush`] waits
//! until every message sent before it is confirmed. The task keeps every
//! message until the relay confirms it, so that [`Producer::reconnect`]
//! can send again what the relay may not have: a named producer numbers
//! its messages (pseq) and the relay answers `DUP` for those it had.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use spillway_codec::proto::{self, Encoding, Frame, FrameDecoder, Hello, ProtoError, Welcome};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::conn::{self, Established};
use crate::ClientError;

/// The most messages sent and not yet confirmed; [`Producer::send`] waits
/// beyond it.
pub const MAX_UNCONFIRMED: usize = 65_536;

/// The most body bytes sent and not yet confirmed (64 MiB); one message is
/// always allowed, whatever its size.
pub const MAX_UNCONFIRMED_BYTES: usize = 64 << 20;

/// Bodies up to this size are copied next to their frame header (one
/// buffer for many small messages, one write); larger ones are written from
/// the caller's `Bytes`, not copied.
const COPY_BELOW: usize = 512;

/// How a producer connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerOptions {
    /// A producer name (1 to 64 bytes of `[A-Za-z0-9._-]`): its messages
    /// are numbered, and a resend after [`Producer::reconnect`] is not
    /// enqueued twice. One connection per name at a time. Without a name,
    /// a resend may enqueue a message twice (at least once).
    pub name: Option<String>,
    /// Whether the relay confirms (CONF) what is durable. Without confirms
    /// a message counts as done once written to the socket, and
    /// [`Producer::flush`] waits only for that.
    pub confirms: bool,
    /// The encoding after the handshake: binary unless there is a reason.
    pub encoding: Encoding,
}

impl Default for ProducerOptions {
    /// No name, confirms on, binary.
    fn default() -> Self {
        ProducerOptions {
            name: None,
            confirms: true,
            encoding: Encoding::Binary,
        }
    }
}

/// The unconfirmed messages' count and size, and the connection's failure:
/// shared by the senders and the task.
#[derive(Default)]
struct Flow {
    msgs: usize,
    bytes: usize,
    /// Set when the connection failed; cleared by a reconnect.
    failed: Option<ClientError>,
}

#[derive(Default)]
struct Shared {
    flow: Mutex<Flow>,
    /// Signalled when room is made or the connection fails.
    room: Notify,
    confirmed: AtomicU64,
    duplicates: AtomicU64,
    max_message: AtomicU64,
}

impl Shared {
    fn flow(&self) -> MutexGuard<'_, Flow> {
        // Nothing panics while holding it; a poisoned lock's data is
        // still consistent (plain counters).
        self.flow.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn release(&self, msgs: usize, bytes: usize) {
        {
            let mut f = self.flow();
            f.msgs -= msgs;
            f.bytes -= bytes;
        }
        self.room.notify_waiters();
    }
}

#[derive(Debug)]
enum Cmd {
    Pub(Bytes),
    Flush(oneshot::Sender<Result<(), ClientError>>),
}

/// A message taken by the task, until confirmed.
struct Pending {
    /// Its number among all the producer's messages, from 1.
    ordinal: u64,
    pseq: Option<u64>,
    body: Bytes,
}

/// What outlives a connection: the messages not yet confirmed and the
/// producer's counters.
struct State {
    cmds: mpsc::UnboundedReceiver<Cmd>,
    /// Taken from `cmds`, not yet confirmed (or, without confirms, not
    /// yet written), in order.
    queue: VecDeque<Pending>,
    next_ordinal: u64,
    /// The ordinal of the last confirmed message.
    confirmed: u64,
    /// The next pseq, for a named producer.
    next_pseq: Option<u64>,
    /// Flushes waiting for the confirm of an ordinal.
    flushes: Vec<(u64, oneshot::Sender<Result<(), ClientError>>)>,
}

impl State {
    fn take(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Pub(body) => {
                let pseq = self.next_pseq;
                if let Some(p) = &mut self.next_pseq {
                    *p += 1;
                }
                self.queue.push_back(Pending {
                    ordinal: self.next_ordinal,
                    pseq,
                    body,
                });
                self.next_ordinal += 1;
            }
            Cmd::Flush(tx) => {
                let target = self.next_ordinal - 1;
                if self.confirmed >= target {
                    let _ = tx.send(Ok(()));
                } else {
                    self.flushes.push((target, tx));
                }
            }
        }
    }

    fn confirmed_to(&mut self, ordinal: u64) {
        self.confirmed = ordinal;
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.flushes)
            .into_iter()
            .partition(|(target, _)| *target <= ordinal);
        self.flushes = waiting;
        for (_, tx) in done {
            let _ = tx.send(Ok(()));
        }
    }

    /// Every flush waiting, and every one already asked for, fails with
    /// `e`; messages already asked for are kept for a reconnect.
    fn fail_flushes(&mut self, e: &ClientError) {
        while let Ok(cmd) = self.cmds.try_recv() {
            match cmd {
                Cmd::Flush(tx) => {
                    let _ = tx.send(Err(e.clone()));
                }
                pub_ => self.take(pub_),
            }
        }
        for (_, tx) in self.flushes.drain(..) {
            let _ = tx.send(Err(e.clone()));
        }
    }
}

/// The running connection's task.
struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<State>,
}

/// The connection: running, or its state kept after a failed reconnect.
struct Slot {
    running: Option<Running>,
    parked: Option<State>,
    addrs: Vec<SocketAddr>,
    welcome: Welcome,
}

/// A producer connection (see the module documentation).
///
/// Shareable (`&self` methods; put it in an `Arc`). Dropping it closes the
/// connection at once: what is not confirmed may or may not be in the
/// queue. [`Producer::close`] flushes first.
pub struct Producer {
    tx: mpsc::UnboundedSender<Cmd>,
    shared: Arc<Shared>,
    hello: Hello,
    encoding: Encoding,
    confirms: bool,
    slot: tokio::sync::Mutex<Slot>,
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("name", &self.hello.name)
            .field("confirmed", &self.confirmed())
            .finish()
    }
}

/// Waits before retrying a reconnect that a relay refused with 409 (the
/// name is still held by the connection being replaced, which the relay
/// has not seen close yet).
fn name_busy_backoff() -> Backoff {
    Backoff::new(
        Duration::from_millis(25),
        Duration::from_millis(500),
        Duration::from_secs(5),
    )
}

impl Producer {
    /// Connects to a relay's producer endpoint (a route's `from`, with
    /// `from_protocol = "ack"`) and says hello. Connecting and the
    /// handshake are bounded (10 s); a refusal is
    /// [`ClientError::Protocol`] (409 if the name is connected already).
    pub async fn connect(
        addr: impl ToSocketAddrs,
        options: ProducerOptions,
    ) -> Result<Producer, ClientError> {
        let mut hello = Hello::producer(options.encoding);
        if let Some(name) = &options.name {
            if !proto::is_valid_name(name.as_bytes()) {
                return Err(ClientError::InvalidOption(format!(
                    "producer name '{name}': 1 to {} bytes of A-Z a-z 0-9 . _ -",
                    proto::MAX_NAME
                )));
            }
        }
        hello.name.clone_from(&options.name);
        hello.confirms = options.confirms;
        let addrs = conn::resolve(addr).await?;
        let est = conn::handshake(&addrs, &hello).await?;
        let (tx, cmds) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let state = State {
            cmds,
            queue: VecDeque::new(),
            next_ordinal: 1,
            confirmed: 0,
            next_pseq: options.name.as_ref().map(|_| 1),
            flushes: Vec::new(),
        };
        let producer = Producer {
            tx,
            shared,
            hello,
            encoding: options.encoding,
            confirms: options.confirms,
            slot: tokio::sync::Mutex::new(Slot {
                running: None,
                parked: None,
                addrs,
                welcome: est.welcome.clone(),
            }),
        };
        {
            let mut slot = producer.slot.lock().await;
            producer.start(&mut slot, est, state);
        }
        Ok(producer)
    }

    fn start(&self, slot: &mut Slot, est: Established, state: State) {
        let Established {
            stream,
            welcome,
            rest,
        } = est;
        self.shared
            .max_message
            .store(welcome.max_message, Ordering::Relaxed);
        let max_frame = usize::try_from(welcome.max_message)
            .unwrap_or(usize::MAX)
            .saturating_add(proto::FRAME_OVERHEAD);
        slot.welcome = welcome;
        let (stop, stopped) = oneshot::channel();
        let driver = Driver {
            decoder: FrameDecoder::new(self.encoding, max_frame),
            encoding: self.encoding,
            confirms: self.confirms,
            inbuf: rest,
            out: VecDeque::new(),
            cur: BytesMut::new(),
            sent: 0,
            conf_n: 0,
            marks: VecDeque::new(),
            queued_bytes: 0,
            written_bytes: 0,
            shared: Arc::clone(&self.shared),
            state,
        };
        self.shared.flow().failed = None;
        slot.running = Some(Running {
            stop,
            task: tokio::spawn(driver.run(stream, stopped)),
        });
    }

    /// Queues `body` to be sent; returns once it is queued. Waits while
    /// [`MAX_UNCONFIRMED`] messages or [`MAX_UNCONFIRMED_BYTES`] are
    /// unconfirmed. An error means it was not queued: the connection has
    /// failed ([`Producer::reconnect`] resends what was queued before) or
    /// the body is over the relay's `max_message`.
    pub async fn send(&self, body: impl Into<Bytes>) -> Result<(), ClientError> {
        let body = body.into();
        let len = body.len();
        let max = self.shared.max_message.load(Ordering::Relaxed);
        if len as u64 > max {
            return Err(ClientError::TooLarge { size: len, max });
        }
        let mut body = Some(body);
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut f = self.shared.flow();
                if let Some(e) = &f.failed {
                    return Err(e.clone());
                }
                let fits = f.msgs == 0
                    || (f.msgs < MAX_UNCONFIRMED
                        && f.bytes.saturating_add(len) <= MAX_UNCONFIRMED_BYTES);
                if fits {
                    if let Some(body) = body.take() {
                        // Sent under the lock: a failure that comes after
                        // it finds it in the channel, and keeps it.
                        self.tx
                            .send(Cmd::Pub(body))
                            .map_err(|_| ClientError::Closed)?;
                    }
                    f.msgs += 1;
                    f.bytes += len;
                    return Ok(());
                }
            }
            room.await;
        }
    }

    /// Waits until every message sent before it is confirmed by the relay
    /// (without confirms: written to the socket). An error if the
    /// connection fails first (or had failed): then
    /// [`Producer::reconnect`] and flush again.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        {
            let f = self.shared.flow();
            if let Some(e) = &f.failed {
                return Err(e.clone());
            }
            self.tx
                .send(Cmd::Flush(tx))
                .map_err(|_| ClientError::Closed)?;
        }
        rx.await.unwrap_or(Err(ClientError::Closed))
    }

    /// Connects again to the same address; see [`Producer::reconnect_to`].
    pub async fn reconnect(&self) -> Result<(), ClientError> {
        self.reconnect_inner(None).await
    }

    /// Closes the connection (if it is still up) and connects to `addr`
    /// (a relay restarted on another port, say), then sends again every
    /// message not confirmed, in order, with its pseq: a named producer's
    /// messages the relay already had are answered DUP and not enqueued
    /// twice. A 409 (the relay still sees the old connection with this
    /// name) is retried for up to 5 s. On an error the messages are kept
    /// for the next try.
    pub async fn reconnect_to(&self, addr: impl ToSocketAddrs) -> Result<(), ClientError> {
        let addrs = conn::resolve(addr).await?;
        self.reconnect_inner(Some(addrs)).await
    }

    async fn reconnect_inner(&self, addrs: Option<Vec<SocketAddr>>) -> Result<(), ClientError> {
        let mut slot = self.slot.lock().await;
        if let Some(addrs) = addrs {
            slot.addrs = addrs;
        }
        let state = match (slot.running.take(), slot.parked.take()) {
            (Some(Running { stop, task }), _) => {
                drop(stop);
                task.await.map_err(|_| ClientError::Closed)?
            }
            (None, Some(state)) => state,
            // Only a panicked task loses its state.
            (None, None) => return Err(ClientError::Closed),
        };
        let mut backoff = name_busy_backoff();
        let result = loop {
            match conn::handshake(&slot.addrs, &self.hello).await {
                Err(ClientError::Protocol { code: 409, .. }) if self.hello.name.is_some() => {
                    match backoff.next_delay() {
                        Some(d) => tokio::time::sleep(d).await,
                        None => {
                            break Err(ClientError::Protocol {
                                code: 409,
                                text: "the producer name stayed connected on the relay".into(),
                            })
                        }
                    }
                }
                other => break other,
            }
        };
        match result {
            Ok(est) => {
                self.start(&mut slot, est, state);
                Ok(())
            }
            Err(e) => {
                let mut state = state;
                self.shared.flow().failed = Some(e.clone());
                self.shared.room.notify_waiters();
                state.fail_flushes(&e);
                slot.parked = Some(state);
                Err(e)
            }
        }
    }

    /// Flushes, then closes the connection.
    pub async fn close(self) -> Result<(), ClientError> {
        self.flush().await
    }

    /// Messages sent (queued) and not yet confirmed.
    pub fn unconfirmed(&self) -> usize {
        self.shared.flow().msgs
    }

    /// Messages confirmed since [`Producer::connect`], across reconnects.
    pub fn confirmed(&self) -> u64 {
        self.shared.confirmed.load(Ordering::Relaxed)
    }

    /// Resends the relay recognised (DUP) since [`Producer::connect`].
    pub fn duplicates(&self) -> u64 {
        self.shared.duplicates.load(Ordering::Relaxed)
    }

    /// The relay's answer to the last handshake (its `max_message` limits
    /// what [`Producer::send`] takes).
    pub async fn welcome(&self) -> Welcome {
        self.slot.lock().await.welcome.clone()
    }
}

/// One connection's task: owns the socket and, while it runs, the state.
struct Driver {
    decoder: FrameDecoder,
    encoding: Encoding,
    confirms: bool,
    inbuf: BytesMut,
    out: VecDeque<Bytes>,
    /// Headers and small bodies, gathered for `out`.
    cur: BytesMut,
    /// How many of `state.queue`'s first messages are encoded on this
    /// connection.
    sent: usize,
    /// The last CONF of this connection.
    conf_n: u64,
    /// Without confirms: where each message ends in the bytes queued on
    /// this connection, to know when it is written.
    marks: VecDeque<u64>,
    queued_bytes: u64,
    written_bytes: u64,
    shared: Arc<Shared>,
    state: State,
}

impl Driver {
    async fn run(mut self, stream: TcpStream, mut stopped: oneshot::Receiver<()>) -> State {
        if let Err(e) = self.serve(&stream, &mut stopped).await {
            self.shared.flow().failed = Some(e.clone());
            self.shared.room.notify_waiters();
            self.state.fail_flushes(&e);
        }
        self.state
    }

    /// Encodes the messages taken and not yet encoded on this connection.
    fn encode(&mut self) {
        while let Some(p) = self.state.queue.get(self.sent) {
            let start = self.cur.len();
            proto::pub_header(p.pseq, p.body.len(), self.encoding, &mut self.cur);
            let header = self.cur.len() - start;
            if p.body.len() < COPY_BELOW {
                self.cur.extend_from_slice(&p.body);
            } else {
                self.out.push_back(self.cur.split().freeze());
                self.out.push_back(p.body.clone());
            }
            let trailer = proto::body_trailer(self.encoding);
            self.cur.extend_from_slice(trailer);
            self.queued_bytes += (header + p.body.len() + trailer.len()) as u64;
            if !self.confirms {
                self.marks.push_back(self.queued_bytes);
            }
            self.sent += 1;
        }
        if !self.cur.is_empty() {
            self.out.push_back(self.cur.split().freeze());
        }
    }

    /// The first `n` messages of the queue are done (confirmed, or
    /// written without confirms).
    fn done(&mut self, n: usize) {
        let mut bytes = 0;
        let mut last = self.state.confirmed;
        for p in self.state.queue.drain(..n) {
            bytes += p.body.len();
            last = p.ordinal;
        }
        self.sent -= n;
        self.shared.release(n, bytes);
        self.shared.confirmed.fetch_add(n as u64, Ordering::Relaxed);
        self.state.confirmed_to(last);
    }

    fn take_frames(&mut self) -> Result<(), ClientError> {
        loop {
            let frame = match self.decoder.decode(&mut self.inbuf) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => return Err(ClientError::Decode(e)),
            };
            match frame {
                Frame::Conf { n } if self.confirms => {
                    let sent_here = self.conf_n + self.sent as u64;
                    if n < self.conf_n || n > sent_here {
                        return Err(ClientError::Decode(ProtoError::malformed(format!(
                            "CONF {n} after CONF {} with {sent_here} sent",
                            self.conf_n
                        ))));
                    }
                    let newly = (n - self.conf_n) as usize;
                    self.conf_n = n;
                    self.done(newly);
                }
                Frame::Dup { .. } => {
                    self.shared.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                Frame::Err { code, text } => return Err(ClientError::Protocol { code, text }),
                other => {
                    return Err(ClientError::Decode(ProtoError::malformed(format!(
                        "a relay does not send {} to this producer",
                        other.verb()
                    ))))
                }
            }
        }
    }

    async fn serve(
        &mut self,
        stream: &TcpStream,
        stopped: &mut oneshot::Receiver<()>,
    ) -> Result<(), ClientError> {
        self.take_frames()?;
        loop {
            while let Ok(cmd) = self.state.cmds.try_recv() {
                self.state.take(cmd);
            }
            self.encode();
            let n = conn::write_some(stream, &mut self.out)?;
            self.written_bytes += n as u64;
            if !self.confirms {
                let mut k = 0;
                while self
                    .marks
                    .front()
                    .is_some_and(|&end| end <= self.written_bytes)
                {
                    self.marks.pop_front();
                    k += 1;
                }
                if k > 0 {
                    self.done(k);
                }
            }
            let write_blocked = !self.out.is_empty();
            tokio::select! {
                biased;
                _ = &mut *stopped => return Ok(()),
                r = stream.readable() => {
                    r?;
                    let eof = conn::read_some(stream, &mut self.inbuf)?;
                    self.take_frames()?;
                    if eof {
                        return Err(ClientError::Disconnected);
                    }
                }
                r = stream.writable(), if write_blocked => r?,
                cmd = self.state.cmds.recv() => match cmd {
                    Some(cmd) => self.state.take(cmd),
                    // The producer is gone.
                    None => return Ok(()),
                },
            }
        }
    }
}
