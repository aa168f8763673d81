"""The producer: send messages, learn which are durable.

    with spillway.Producer("127.0.0.1:7000", name="app-7") as producer:
        for body in bodies:
            producer.send(body)
        producer.flush(10)      # every message sent is durable now

With confirms (the default) the relay answers `CONF n`: the connection's
first n messages are durable. The producer keeps every message until it is
confirmed; after a lost connection, the next send(), flush() or
reconnect() connects again and sends the unconfirmed ones again, in order.

With a `name`, each message carries a producer sequence (pseq, from 1), and
the relay enqueues a resent message only if it did not have it already
(it answers DUP instead): each message is enqueued once. Without a name a
resend may enqueue a message twice (at least once, never lost). Without
confirms nothing is kept, and a lost connection may lose what was in
flight, as with plain TCP.
"""

import collections
import time

from . import _wire
from ._conn import Connection
from .errors import ProtocolError

POLL_EVERY = 64         # read the relay's CONFs after this many sends
NAME_BUSY_S = 5.0       # how long a reconnect waits for the name's old connection to go


class Producer:
    """A producer on the relay's `from` endpoint (`from_protocol = "ack"`)."""

    def __init__(self, address, name=None, encoding="binary", confirms=True, timeout=None):
        if name is not None and not _wire.NAME.match(name.encode("ascii", "replace")):
            raise ValueError("name must be 1 to 64 of A-Z a-z 0-9 . _ -")
        if encoding not in ("binary", "text"):
            raise ValueError("encoding must be 'binary' or 'text', not %r" % (encoding,))
        self._address = address
        self._name = name
        self._encoding = encoding
        self._confirms = confirms
        self._timeout = timeout
        self._pseq = 0
        # Sent on this connection and not confirmed: (pseq, body), in order.
        self._unconfirmed = collections.deque()
        self._conf = 0              # the connection's last CONF
        self._since_poll = 0
        self._conn = None
        self._closed = False
        self.duplicates = 0         # DUPs: resent messages the relay already had
        self.reconnects = 0
        self._connect()

    @property
    def unconfirmed(self):
        """How many messages sent are not confirmed yet."""
        return len(self._unconfirmed)

    @property
    def last_pseq(self):
        """The pseq of the last message sent (named producers)."""
        return self._pseq

    def _connect(self):
        options = [("confirms", "on" if self._confirms else "off"), ("name", self._name)]
        # The relay takes one connection per name: right after a reconnect
        # it may not have seen the old one go yet (409). Try again briefly.
        deadline = time.monotonic() + (self._timeout or NAME_BUSY_S)
        pause = 0.02
        while True:
            try:
                self._conn = Connection(self._address, "producer", self._encoding, options,
                                        self._timeout)
                break
            except ProtocolError as e:
                if e.code != 409 or self._name is None or time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.5)
        self._conf = 0
        self._since_poll = 0
        self.max_message = self._conn.welcome["max_message"]
        # A process that reuses a name resumes its numbering where the
        # relay says the name stopped (else its first messages are DUPs).
        last = self._conn.welcome.get("last_pseq")
        if self._name is not None and isinstance(last, int):
            self._pseq = max(self._pseq, last)

    def reconnect(self):
        """Connects again and resends every unconfirmed message, in order."""
        if self._closed:
            raise ValueError("the producer is closed")
        self._drop()
        self._connect()
        self.reconnects += 1
        if self._unconfirmed:
            enc = self._encoding
            self._conn.send(b"".join(_wire.encode((_wire.PUB, pseq, body), enc)
                                     for pseq, body in self._unconfirmed))

    def drop_unconfirmed(self):
        """Forgets the messages not confirmed yet, and returns their bodies:
        for a message the route refuses (a 400 for a newline in a body of
        a `lines` route, a 413), which every resend would send again."""
        bodies = [body for _, body in self._unconfirmed]
        self._unconfirmed.clear()
        self._drop()            # the relay counts CONF per connection
        return bodies

    def _drop(self):
        if self._conn is not None:
            self._conn.sock.close()
            self._conn = None

    def send(self, body):
        """Sends one message (bytes). After a lost connection, connects
        again first, and resends what was not confirmed."""
        if self._closed:
            raise ValueError("the producer is closed")
        body = bytes(body)
        if len(body) > self.max_message:
            raise ValueError("a body of %d bytes: the route takes at most %d"
                             % (len(body), self.max_message))
        pseq = None
        if self._name is not None:
            self._pseq += 1
            pseq = self._pseq
        if self._confirms:
            self._unconfirmed.append((pseq, body))
        frame = _wire.encode((_wire.PUB, pseq, body), self._encoding)
        if self._conn is None:
            self.reconnect()            # sends it, when kept
            if not self._confirms:
                self._conn.send(frame)
            return
        try:
            self._conn.send(frame)
        except ConnectionError:
            self.reconnect()
            if not self._confirms:
                self._conn.send(frame)
            return
        except TimeoutError:
            self._drop()        # part of a frame may have gone
            raise
        self._since_poll += 1
        if self._confirms and self._since_poll >= POLL_EVERY:
            self._since_poll = 0
            # Read the CONFs as they come, so they never fill the socket.
            self._poll(0)

    def _poll(self, wait_s):
        """Reads and applies what the relay sent, waiting at most `wait_s`
        for something to arrive."""
        conn = self._conn
        if not conn.readable(wait_s):
            return
        try:
            alive = conn.read()
        except ConnectionError:
            self._drop()
            raise
        frame = conn.decoder.next()
        while frame is not None:
            self._apply(frame)
            frame = conn.decoder.next()
        if not alive:
            self._drop()
            raise ConnectionError("the relay closed the connection")

    def _apply(self, frame):
        kind = frame[0]
        if kind == _wire.CONF:
            n = frame[1]
            for _ in range(min(n - self._conf, len(self._unconfirmed))):
                self._unconfirmed.popleft()
            self._conf = max(self._conf, n)
        elif kind == _wire.DUP:
            self.duplicates += 1
        elif kind == _wire.ERR:
            self._drop()
            raise ProtocolError(frame[1], frame[2])
        else:
            self._drop()
            raise _wire.malformed("a %s frame to a producer" % _wire.VERBS[kind].decode())

    def flush(self, timeout_s=None):
        """Returns once every message sent is confirmed (CONF). A lost
        connection is opened again, and the unconfirmed messages resent, as
        often as needed until then. Raises TimeoutError after `timeout_s`
        seconds (None: no limit), and ProtocolError if the relay refuses
        (say 507 full, or 503 draining; see its `retryable`). Without
        confirms, returns at once."""
        if not self._confirms:
            return
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        pause = 0.05
        while self._unconfirmed:
            wait = 1.0 if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                raise TimeoutError("%d messages not confirmed within %ss"
                                   % (len(self._unconfirmed), timeout_s))
            try:
                if self._conn is None:
                    self.reconnect()
                self._poll(min(wait, 1.0))
            except ConnectionError:
                # Lost, or refused while the relay restarts: again, soon.
                self._drop()
                time.sleep(min(pause, max(wait, 0)))
                pause = min(pause * 2, 1.0)

    def close(self):
        """Half-closes and lets the relay read everything before closing
        (it confirms what it can meanwhile). It does not wait for confirms:
        call flush() for that."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close(self._apply_quietly)

    def _apply_quietly(self, frame):
        if frame[0] in (_wire.CONF, _wire.DUP):
            self._apply(frame)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
