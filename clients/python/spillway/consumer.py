"""The consumer: iterate over messages, settle each one.

    with spillway.Consumer("127.0.0.1:7001") as consumer:
        for msg in consumer:
            handle(msg.body)
            msg.ack()

A message leaves the queue when it is acknowledged. Acks are batched: each
ack() adds its seq to a list of ranges (contiguous seqs coalesce), sent as
one ACKS frame when the consumer is about to wait for the relay, when it holds
no other message, when 64 acks (or half the window) are pending, when the
oldest pending ack is a few milliseconds old (checked at each call), or at
flush() and close(). NAK, TERM and PROG go out
at once, after the acks pending before them.
"""

import collections
import time

from . import _wire
from ._conn import Connection
from .errors import ProtocolError

ACK_BATCH = 64          # at most this many acks wait for a flush
ACK_DELAY_S = 0.005     # nor longer than this, as long as the client is called


class Message:
    """One delivery: `body` (bytes), `seq` (its place in the queue, the same
    at every delivery), `attempt` (1 at its first delivery)."""

    __slots__ = ("body", "seq", "attempt", "_consumer", "_n", "state")

    def __init__(self, consumer, n, seq, attempt, body):
        self.body = body
        self.seq = seq
        self.attempt = attempt
        self._consumer = consumer
        self._n = n             # its delivery number on this connection
        self.state = None       # None while held, then "acked", "nakked" or "termed"

    def ack(self):
        """Done with it: it leaves the queue. Acking twice is harmless."""
        self._consumer._settle(self, "acked")

    def nak(self, delay_s=0):
        """Give it back, to be delivered again (with attempt + 1) no sooner
        than `delay_s` seconds from now (the relay may wait longer: it
        backs off)."""
        if delay_s < 0:
            raise ValueError("delay_s must be >= 0")
        self._consumer._settle(self, "nakked", (_wire.NAK, self.seq, int(delay_s * 1000)))

    def term(self, reason=""):
        """Refuse it for good: it goes to the dead letters with `reason`
        (at most 200 bytes are kept)."""
        raw = reason.encode("utf-8") if isinstance(reason, str) else bytes(reason)
        # Cut at a character boundary, on the 200 bytes the relay keeps.
        raw = raw[:_wire.MAX_TERM_REASON].decode("utf-8", "ignore").encode("utf-8")
        self._consumer._settle(self, "termed", (_wire.TERM, self.seq, raw))

    def in_progress(self):
        """Still working on it: restart its ack timer at the relay."""
        self._consumer._progress(self)

    def __repr__(self):
        return "<Message seq=%d attempt=%d %d bytes%s>" % (
            self.seq, self.attempt, len(self.body), " " + self.state if self.state else "")


class Consumer:
    """A consumer of the relay's `to` endpoint (with `to_protocol = "ack"`).

    Iterating yields Messages. Iteration ends when the relay is draining
    (BYE) and every message received was yielded, or when the relay closes
    the connection cleanly. An ERR from the relay raises ProtocolError; a
    lost connection ConnectionError; with `timeout` (seconds), waiting
    longer than that for a message raises TimeoutError (and the consumer
    stays usable).

    `window` is the most messages the relay sends ahead of the acks,
    `window_bytes` the same in body bytes (the relay's default when None).
    """

    def __init__(self, address, group=None, window=256, window_bytes=None,
                 encoding="binary", timeout=None):
        if not 1 <= window <= _wire.MAX_WINDOW:
            raise ValueError("window must be 1 to %d" % _wire.MAX_WINDOW)
        if window_bytes is not None and window_bytes < 1:
            raise ValueError("window_bytes must be at least 1")
        if group is not None and not _wire.NAME.match(group.encode("ascii", "replace")):
            raise ValueError("group must be 1 to 64 of A-Z a-z 0-9 . _ -")
        self._conn = Connection(address, "consumer", encoding, [
            ("group", group), ("window", window), ("window_bytes", window_bytes),
        ], timeout)
        self.session = self._conn.welcome.get("session")
        self.ack_timeout_s = self._conn.welcome.get("ack_timeout_ms", 0) / 1000 or None
        self._encoding = encoding
        self._held = {}                       # seq -> Message, in delivery order
        self._ready = collections.deque()     # received, not yet yielded
        self._delivered = 0
        self._ranges = []                     # pending acks: [first, last] seqs
        self._pending = 0
        self._pending_since = 0.0
        self._batch = max(1, min(ACK_BATCH, window // 2))
        self._ended = False                   # BYE, or the relay closed
        self._closed = False

    # -- iteration -----------------------------------------------------------

    def __iter__(self):
        return self

    def __next__(self):
        while not self._ready:
            if self._ended or self._closed:
                self._flush_quietly()
                raise StopIteration
            if self._decode():
                continue
            # About to wait for the relay: it may be waiting for our acks.
            self.flush()
            if not self._conn.read():
                self._ended = True
        return self._ready.popleft()

    def _decode(self):
        """Applies the whole frames read so far; whether there was one."""
        decoder = self._conn.decoder
        frame = decoder.next()
        if frame is None:
            return False
        while frame is not None:
            kind = frame[0]
            if kind == _wire.MSG:
                self._delivered += 1
                msg = Message(self, self._delivered, frame[1], frame[2], frame[3])
                self._held[msg.seq] = msg
                self._ready.append(msg)
            elif kind == _wire.BYE:
                self._ended = True      # no more MSG: ack what we hold
            elif kind == _wire.ERR:
                self._abort()
                raise ProtocolError(frame[1], frame[2])
            else:
                self._abort()
                raise _wire.malformed("a %s frame to a consumer" % _wire.VERBS[kind].decode())
            frame = decoder.next()
        return True

    # -- settling ------------------------------------------------------------

    def _settle(self, msg, state, frame=None):
        if msg._consumer is not self:
            raise ValueError("%r is not from this consumer" % (msg,))
        if msg.state is not None:
            if state == "acked" == msg.state:
                return
            raise ValueError("%r was already settled" % (msg,))
        if self._closed:
            raise ValueError("the consumer is closed: the relay gave %r back to the queue" % (msg,))
        del self._held[msg.seq]
        msg.state = state
        if frame is not None:
            self._send(frame)
            return
        ranges = self._ranges
        if ranges and ranges[-1][1] + 1 == msg.seq:
            ranges[-1][1] = msg.seq
        else:
            ranges.append([msg.seq, msg.seq])
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending += 1
        # Nothing else held: the caller may now wait or idle, so send it.
        if (self._pending >= self._batch or not self._held
                or time.monotonic() - self._pending_since >= ACK_DELAY_S):
            self.flush()

    def _progress(self, msg):
        if msg._consumer is not self or msg.state is not None or self._closed:
            raise ValueError("%r is not held by this consumer" % (msg,))
        self._send((_wire.PROG, msg.seq))

    def ack_upto(self, msg):
        """Acknowledges `msg` and every message delivered before it on this
        connection that is still held (in delivery order, as AMQP's
        `multiple`)."""
        if msg._consumer is not self:
            raise ValueError("%r is not from this consumer" % (msg,))
        for held in [m for m in self._held.values() if m._n <= msg._n]:
            self._settle(held, "acked")

    def _send(self, frame):
        """Sends the pending acks, then `frame`, in one write."""
        self._conn.send(self._take_acks() + _wire.encode(frame, self._encoding))

    def _take_acks(self):
        ranges, self._ranges, self._pending = self._ranges, [], 0
        step = _wire.MAX_ACK_RANGES
        return b"".join(_wire.encode((_wire.ACKS, ranges[i:i + step]), self._encoding)
                        for i in range(0, len(ranges), step))

    def flush(self):
        """Sends the acks still pending now."""
        if self._ranges and not self._closed:
            self._conn.send(self._take_acks())

    def _flush_quietly(self):
        try:
            self.flush()
        except OSError:
            pass

    @property
    def held(self):
        """How many received messages are not settled yet."""
        return len(self._held)

    # -- closing -------------------------------------------------------------

    def _abort(self):
        self._closed = True
        self._ready.clear()
        self._conn.sock.close()

    def close(self):
        """Sends the pending acks and leaves. What is still held goes back
        to the queue, to be redelivered (attempt + 1)."""
        if self._closed:
            return
        self._flush_quietly()
        self._closed = True
        self._ready.clear()
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
