//! A consumer: messages in, acknowledgements out.
//!
//! The connection is driven by a background task that owns the socket.
//! The application gets [`Message`]s from a [`Stream`]; each carries a
//! cheap handle back to that task, so it can be acknowledged from any task
//! while the stream is polled elsewhere. The task coalesces
//! acknowledgements: whatever was acknowledged while it was busy, or while
//! the socket was not writable, goes out as one cumulative `ACK` and as few
//! `ACKS` ranges as are exact (see `acks.rs` for the rules that keep them
//! from covering a message that was not acknowledged).

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use spillway_codec::proto::{
    self, Encoding, Frame, FrameDecoder, Hello, ProtoError, Welcome, MAX_WINDOW,
};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

use crate::acks::Tracker;
use crate::conn::{self, Established};
use crate::ClientError;

/// How a consumer connects: its group and window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerOptions {
    /// A consumer group declared in the relay's configuration; `None` is
    /// the default group (the one plain consumers share).
    pub group: Option<String>,
    /// The most messages delivered and not yet acknowledged (1 to 65,536).
    pub window: u32,
    /// The most body bytes delivered and not yet acknowledged (at least 1;
    /// one message is always allowed, whatever its size).
    pub window_bytes: u64,
    /// The encoding after the handshake: binary unless there is a reason.
    pub encoding: Encoding,
}

impl Default for ConsumerOptions {
    /// The default group, a window of 256 messages and 1 MiB, binary.
    fn default() -> Self {
        ConsumerOptions {
            group: None,
            window: proto::DEFAULT_WINDOW,
            window_bytes: proto::DEFAULT_WINDOW_BYTES,
            encoding: Encoding::Binary,
        }
    }
}

/// What a [`Message`] asks of the connection's task.
#[derive(Debug)]
enum Cmd {
    Ack(u64),
    Nak(u64, u64),
    Term(u64, Bytes),
    Prog(u64),
    Win(u32, u64),
    /// Dropped without being settled: a NAK without delay, unless the
    /// connection is closing anyway (then the relay gives it back).
    Release(u64),
}

/// Commands from the messages (and the consumer) to the connection's task.
/// A locked vector and a wake-up: each message holds a reference to it, and
/// an acknowledgement is a push under an uncontended lock. (A channel whose
/// sender every message cloned cost several atomic operations per message
/// more, a measurable share of a consumer's CPU at millions of messages a
/// second.)
#[derive(Default)]
struct Cmds {
    state: Mutex<CmdState>,
    wake: Notify,
}

#[derive(Default)]
struct CmdState {
    cmds: Vec<Cmd>,
    /// The task has ended: nobody reads commands any more.
    closed: bool,
}

impl Cmds {
    fn send(&self, cmd: Cmd) -> Result<(), ClientError> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.closed {
            return Err(ClientError::Closed);
        }
        let was_empty = s.cmds.is_empty();
        s.cmds.push(cmd);
        drop(s);
        if was_empty {
            // A permit is kept if the task is not waiting: no wake-up is lost.
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Moves the commands sent so far into `into` (which must be empty).
    fn take(&self, into: &mut Vec<Cmd>) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::swap(&mut s.cmds, into);
    }

    fn close(&self) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.closed = true;
        s.cmds.clear();
    }
}

/// What the connection's task hands the stream: the messages of one read,
/// or the error that ends it.
type Batch = Result<Vec<Message>, ClientError>;

/// A message delivered to this consumer: acknowledge it ([`Message::ack`])
/// once it is done with, give it back ([`Message::nak`]) or refuse it for
/// good ([`Message::term`]).
///
/// A message dropped without any of them is given back (a NAK with no
/// delay of its own: the relay's backoff applies), so an error path that
/// drops it does not leave it held until the ack timeout.
///
/// The methods send to the connection's task and return at once; an
/// error means the connection is gone, and the relay will deliver the
/// message again (to this group, attempt raised).
pub struct Message {
    /// The message's position in the spool: stable across deliveries,
    /// restarts and consumers.
    pub seq: u64,
    /// How many times it has been delivered to this group, from 1.
    pub attempt: u32,
    /// The message (without the route's framing: a `lines` route's
    /// newline is not part of it).
    pub body: Bytes,
    tag: u64,
    tx: Arc<Cmds>,
    settled: bool,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("seq", &self.seq)
            .field("attempt", &self.attempt)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl Message {
    fn send(&mut self, cmd: Cmd) -> Result<(), ClientError> {
        self.settled = true;
        self.tx.send(cmd)
    }

    /// Done with it: it leaves the queue. Coalesced with other acks.
    pub fn ack(mut self) -> Result<(), ClientError> {
        let tag = self.tag;
        self.send(Cmd::Ack(tag))
    }

    /// Give it back, to be delivered again (to any consumer of the group)
    /// no sooner than `delay` from now; the relay may wait longer (its
    /// backoff grows with the attempt).
    pub fn nak(mut self, delay: Duration) -> Result<(), ClientError> {
        let tag = self.tag;
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.send(Cmd::Nak(tag, ms))
    }

    /// Refuse it for good: it goes to the dead-letter spool now, with
    /// `reason` (at most 200 bytes are kept; a newline becomes a space).
    pub fn term(mut self, reason: &str) -> Result<(), ClientError> {
        let tag = self.tag;
        self.send(Cmd::Term(tag, Bytes::copy_from_slice(reason.as_bytes())))
    }

    /// Still working on it: restarts its ack timer on the relay (the
    /// relay's `ack_timeout`, see [`Consumer::welcome`]).
    pub fn progress(&self) -> Result<(), ClientError> {
        self.tx.send(Cmd::Prog(self.tag))
    }
}

impl Drop for Message {
    fn drop(&mut self) {
        if !self.settled {
            // Nobody to tell if the connection is gone: the relay gives
            // the message back itself then.
            let _ = self.tx.send(Cmd::Release(self.tag));
        }
    }
}

/// A consumer connection: a [`Stream`] of [`Message`]s.
///
/// Dropping it closes the connection at once (after writing the acks
/// already given): the messages it still holds, in the application's
/// hands or not yet taken from the stream, go back to the relay, which
/// delivers them again with their attempt raised. [`Consumer::close`]
/// does the same and waits for it.
///
/// The stream ends (`None`) after the relay says `BYE` (it is draining)
/// and every message delivered has been settled; it yields an error, then
/// ends, if the connection fails or the relay sends `ERR`.
pub struct Consumer {
    rx: mpsc::UnboundedReceiver<Batch>,
    /// The rest of the last batch received.
    ready: std::vec::IntoIter<Message>,
    tx: Arc<Cmds>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    welcome: Welcome,
    peer: SocketAddr,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("peer", &self.peer)
            .field("session", &self.welcome.session)
            .finish()
    }
}

fn hello(options: &ConsumerOptions) -> Result<Hello, ClientError> {
    let mut hello = Hello::consumer(options.encoding);
    if let Some(g) = &options.group {
        if !proto::is_valid_name(g.as_bytes()) {
            return Err(ClientError::InvalidOption(format!(
                "group '{g}': 1 to {} bytes of A-Z a-z 0-9 . _ -",
                proto::MAX_NAME
            )));
        }
    }
    check_window(options.window, options.window_bytes)?;
    hello.group.clone_from(&options.group);
    hello.window = options.window;
    hello.window_bytes = options.window_bytes;
    Ok(hello)
}

fn check_window(msgs: u32, bytes: u64) -> Result<(), ClientError> {
    if msgs == 0 || msgs > MAX_WINDOW || bytes == 0 {
        return Err(ClientError::InvalidOption(format!(
            "window {msgs} messages, {bytes} bytes: 1 to {MAX_WINDOW} messages and at least 1 byte"
        )));
    }
    Ok(())
}

impl Consumer {
    /// Connects to a relay's consumer endpoint (a route's `to`, with
    /// `to_protocol = "ack"`) and says hello. Connecting and the handshake
    /// are bounded (10 s); a refusal is [`ClientError::Protocol`] (403 for
    /// a producer endpoint or an undeclared group).
    pub async fn connect(
        addr: impl ToSocketAddrs,
        options: ConsumerOptions,
    ) -> Result<Consumer, ClientError> {
        let hello = hello(&options)?;
        let addrs = conn::resolve(addr).await?;
        let Established {
            stream,
            welcome,
            rest,
        } = conn::handshake(&addrs, &hello).await?;
        let peer = stream.peer_addr()?;
        let tx = Arc::new(Cmds::default());
        let (out_tx, rx) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel();
        let max_frame = usize::try_from(welcome.max_message)
            .unwrap_or(usize::MAX)
            .saturating_add(proto::FRAME_OVERHEAD);
        let driver = Driver {
            decoder: FrameDecoder::new(options.encoding, max_frame),
            encoding: options.encoding,
            inbuf: rest,
            out: BytesMut::new(),
            tracker: Tracker::default(),
            cmds: tx.clone(),
            scratch: Vec::new(),
            msgs: Some(out_tx),
            bye: false,
            failed: None,
        };
        let task = tokio::spawn(driver.run(stream, stopped));
        Ok(Consumer {
            rx,
            ready: Vec::new().into_iter(),
            tx,
            stop: Some(stop),
            task: Some(task),
            welcome,
            peer,
        })
    }

    /// The relay's answer to the handshake: its session id, `max_message`,
    /// `ack_timeout_ms` and `max_deliveries`.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The relay's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The messages, as a [`Stream`] (this consumer itself; see the type's
    /// documentation for when it ends).
    pub fn messages(&mut self) -> impl Stream<Item = Result<Message, ClientError>> + Unpin + '_ {
        self
    }

    /// The next message, `None` when the stream has ended: the same as
    /// `StreamExt::next` without the import.
    pub async fn recv(&mut self) -> Option<Result<Message, ClientError>> {
        std::future::poll_fn(|cx| self.poll_message(cx)).await
    }

    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, ClientError>>> {
        loop {
            if let Some(m) = self.ready.next() {
                return Poll::Ready(Some(Ok(m)));
            }
            match std::task::ready!(self.rx.poll_recv(cx)) {
                Some(Ok(batch)) => self.ready = batch.into_iter(),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => return Poll::Ready(None),
            }
        }
    }

    /// Changes the window (WIN): at most `msgs` messages and `bytes` body
    /// bytes delivered and unacknowledged.
    pub fn set_window(&self, msgs: u32, bytes: u64) -> Result<(), ClientError> {
        check_window(msgs, bytes)?;
        self.tx.send(Cmd::Win(msgs, bytes))
    }

    /// Closes the connection after writing the acks already given; waits
    /// (bounded) until it is closed. What it still holds goes back to the
    /// relay.
    pub async fn close(mut self) {
        self.stop.take();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Stream for Consumer {
    type Item = Result<Message, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_message(cx)
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // Dropping `stop` tells the task; it writes the acks it has and
        // closes, on its own.
        self.stop.take();
    }
}

/// The connection's task: owns the socket.
struct Driver {
    decoder: FrameDecoder,
    encoding: Encoding,
    inbuf: BytesMut,
    /// Frames encoded, not yet written.
    out: BytesMut,
    tracker: Tracker,
    /// Shared with each message.
    cmds: Arc<Cmds>,
    /// The commands being applied (kept for its capacity).
    scratch: Vec<Cmd>,
    /// To the stream; `None` once it has ended.
    msgs: Option<mpsc::UnboundedSender<Batch>>,
    /// The relay is draining: no more messages.
    bye: bool,
    /// The relay's ERR, sent to the stream after the messages before it.
    failed: Option<ClientError>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Commands sent from now on fail: nobody would apply them.
        self.cmds.close();
    }
}

/// Why the loop ended.
enum End {
    /// Told to close: write what is pending, then close.
    Close,
    /// The stream has ended or failed: just close.
    Done,
}

impl Driver {
    async fn run(mut self, stream: TcpStream, mut stopped: oneshot::Receiver<()>) {
        let end = match self.serve(&stream, &mut stopped).await {
            Ok(end) => end,
            Err(e) => {
                self.fail(e);
                End::Done
            }
        };
        if matches!(end, End::Close) {
            // What the application said before the close still counts;
            // what it dropped goes back with the rest of what is held.
            let mut cmds = std::mem::take(&mut self.scratch);
            self.cmds.take(&mut cmds);
            for cmd in cmds.drain(..) {
                if !matches!(cmd, Cmd::Release(_)) {
                    self.apply(cmd);
                }
            }
            self.flush_acks();
        }
        let out = VecDeque::from([self.out.split().freeze()]);
        conn::finish(stream, out).await;
    }

    /// Ends the stream with `e`.
    fn fail(&mut self, e: ClientError) {
        if let Some(msgs) = self.msgs.take() {
            let _ = msgs.send(Err(e));
        }
    }

    /// Applies every command sent so far.
    fn apply_sent(&mut self) {
        let mut cmds = std::mem::take(&mut self.scratch);
        self.cmds.take(&mut cmds);
        for cmd in cmds.drain(..) {
            self.apply(cmd);
        }
        self.scratch = cmds;
    }

    fn apply(&mut self, cmd: Cmd) {
        // A command for a message no longer held (the connection it came
        // from is this one, but it may have been settled by a NAK on drop
        // racing an explicit call) is dropped here: the relay would answer
        // a NAK, TERM or PROG of it with 409 and close.
        let frame = match cmd {
            Cmd::Ack(tag) => {
                self.tracker.ack(tag);
                return;
            }
            Cmd::Nak(tag, delay_ms) => match self.tracker.settle(tag) {
                Some(seq) => Frame::Nak { seq, delay_ms },
                None => return,
            },
            Cmd::Release(tag) => match self.tracker.settle(tag) {
                Some(seq) => Frame::Nak { seq, delay_ms: 0 },
                None => return,
            },
            Cmd::Term(tag, reason) => match self.tracker.settle(tag) {
                Some(seq) => Frame::Term { seq, reason },
                None => return,
            },
            Cmd::Prog(tag) => match self.tracker.held(tag) {
                Some(seq) => Frame::Prog { seq },
                None => return,
            },
            Cmd::Win(msgs, bytes) => Frame::Win { msgs, bytes },
        };
        proto::encode(&frame, self.encoding, &mut self.out);
    }

    fn flush_acks(&mut self) {
        let mut frames = Vec::new();
        self.tracker
            .flush(self.encoding == Encoding::Text, &mut frames);
        for f in &frames {
            proto::encode(f, self.encoding, &mut self.out);
        }
    }

    /// Takes the frames in `inbuf`. `Ok(false)` once the stream has ended
    /// with an error (ERR), which `fail` has sent.
    fn take_frames(&mut self) -> Result<bool, ClientError> {
        let mut batch = Vec::new();
        let r = self.decode_frames(&mut batch);
        if !batch.is_empty() {
            if let Some(msgs) = &self.msgs {
                // If the stream is gone, so is the consumer; the
                // messages' drop gives them back meanwhile.
                let _ = msgs.send(Ok(batch));
            }
        }
        match r {
            Ok(true) => Ok(true),
            Ok(false) => {
                // After the messages before it.
                if let Some(e) = self.failed.take() {
                    self.fail(e);
                }
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Decodes the frames in `inbuf`, the messages into `batch`.
    fn decode_frames(&mut self, batch: &mut Vec<Message>) -> Result<bool, ClientError> {
        loop {
            let frame = match self.decoder.decode(&mut self.inbuf) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(true),
                Err(e) => return Err(ClientError::Decode(e)),
            };
            match frame {
                Frame::Msg { seq, attempt, body } => {
                    if self.bye {
                        return Err(ClientError::Decode(ProtoError::malformed("MSG after BYE")));
                    }
                    let tag = self.tracker.deliver(seq);
                    batch.push(Message {
                        seq,
                        attempt,
                        body,
                        tag,
                        tx: self.cmds.clone(),
                        settled: false,
                    });
                }
                Frame::Bye => self.bye = true,
                Frame::Err { code, text } => {
                    self.failed = Some(ClientError::Protocol { code, text });
                    return Ok(false);
                }
                other => {
                    return Err(ClientError::Decode(ProtoError::malformed(format!(
                        "a relay does not send {} to a consumer",
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
    ) -> Result<End, ClientError> {
        // Frames that came with the relay's OK line.
        if !self.take_frames()? {
            return Ok(End::Done);
        }
        // Acks wait for one yield before they are flushed, so that acks
        // given meanwhile go in the same frames.
        let mut yielded = false;
        let mut eof = false;
        loop {
            self.apply_sent();
            if self.out.is_empty() && self.tracker.has_pending() {
                if !yielded {
                    yielded = true;
                    tokio::task::yield_now().await;
                    continue;
                }
                yielded = false;
                self.flush_acks();
            }
            let mut write_blocked = false;
            while !self.out.is_empty() {
                match stream.try_write(&self.out) {
                    Ok(n) => {
                        let _ = self.out.split_to(n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        write_blocked = true;
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if self.out.is_empty() && self.tracker.has_pending() {
                // Acks that waited behind other frames: the socket takes
                // more now.
                continue;
            }
            if self.bye && self.tracker.unsettled() == 0 && self.out.is_empty() {
                // Drained: every delivery settled and written. The stream
                // ends; the relay closes.
                self.msgs = None;
                return Ok(End::Done);
            }
            if eof {
                return Err(ClientError::Disconnected);
            }
            tokio::select! {
                biased;
                _ = &mut *stopped => return Ok(End::Close),
                r = stream.readable() => {
                    r?;
                    eof = conn::read_some(stream, &mut self.inbuf)?;
                    if !self.take_frames()? {
                        return Ok(End::Done);
                    }
                    if eof && !self.inbuf.is_empty() {
                        return Err(ClientError::Decode(ProtoError::malformed(
                            "the connection ended inside a frame",
                        )));
                    }
                }
                r = stream.writable(), if write_blocked => r?,
                () = self.cmds.wake.notified() => self.apply_sent(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked_before_connecting() {
        let mut o = ConsumerOptions::default();
        assert_eq!(
            hello(&o).expect("defaults").to_line(),
            "SPILLWAY 1 role=consumer encoding=binary window=256 window_bytes=1048576\n"
        );
        o.group = Some("billing".into());
        o.encoding = Encoding::Text;
        assert!(hello(&o)
            .expect("a group")
            .to_line()
            .contains("encoding=text group=billing"));
        o.group = Some("bad group".into());
        assert!(matches!(hello(&o), Err(ClientError::InvalidOption(_))));
        o.group = None;
        o.window = MAX_WINDOW + 1;
        assert!(matches!(hello(&o), Err(ClientError::InvalidOption(_))));
        o.window = 1;
        o.window_bytes = 0;
        assert!(matches!(hello(&o), Err(ClientError::InvalidOption(_))));
    }
}
