"""One connection to the relay: connect, handshake, read and write bytes.

Shared by Consumer and Producer. Errors come out as the caller expects
them: TimeoutError when a bounded wait runs out, ConnectionError when the
connection is lost (a reset, or a close in the middle of a frame),
ProtocolError when the relay refuses the handshake.
"""

import select
import socket
import time

from . import _wire
from .errors import ProtocolError

# How long close() waits for the relay to finish with the connection when
# the client has no timeout of its own.
CLOSE_WAIT_S = 5.0


def split_address(address):
    """'HOST:PORT' (or '[v6]:PORT') -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError("address must be HOST:PORT, not %r" % (address,))
    return host.strip("[]"), int(port)


class Connection:
    def __init__(self, address, role, encoding, options, timeout):
        if encoding not in ("binary", "text"):
            raise ValueError("encoding must be 'binary' or 'text', not %r" % (encoding,))
        self.timeout = timeout
        try:
            self.sock = socket.create_connection(split_address(address), timeout=timeout)
        except socket.timeout:
            raise TimeoutError("no connection to %s within %ss" % (address, timeout)) from None
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.sendall(_wire.hello_line(role, encoding, options))
            line, rest = self._reply_line()
            self.welcome = _wire.parse_reply(line)
        except BaseException:
            self.sock.close()
            raise
        max_message = self.welcome.get("max_message")
        max_frame = max_message + _wire.FRAME_OVERHEAD if isinstance(max_message, int) else None
        self.decoder = _wire.Decoder(encoding, max_frame)
        self.decoder.feed(rest)
        self.encoding = encoding

    def _reply_line(self):
        """The relay's answer line, and the bytes that came after it."""
        buf = b""
        while b"\n" not in buf:
            if len(buf) >= _wire.MAX_LINE:
                raise _wire.malformed("no newline in the first %d bytes" % len(buf))
            data = self.recv_raw()
            if not data:
                raise ConnectionError("the relay closed the connection during the handshake")
            buf += data
        line, _, rest = buf.partition(b"\n")
        return line, rest

    def recv_raw(self, size=262144):
        try:
            return self.sock.recv(size)
        except socket.timeout:
            raise TimeoutError("nothing from the relay within %ss" % self.timeout) from None

    def read(self):
        """Reads once into the decoder. False at a clean end of stream; a
        ConnectionError if it ends in the middle of a frame."""
        data = self.recv_raw()
        if not data:
            if self.decoder.buffered():
                raise ConnectionError("the relay closed the connection in the middle of a frame")
            return False
        self.decoder.feed(data)
        return True

    def readable(self, wait_s):
        """Whether a read would not block, waiting at most `wait_s`."""
        return bool(select.select([self.sock], [], [], wait_s)[0])

    def send(self, data):
        try:
            self.sock.sendall(data)
        except socket.timeout:
            # Part of a frame may have gone: the stream is unusable.
            self.sock.close()
            raise TimeoutError("the relay took nothing for %ss" % self.timeout) from None

    def close(self, on_frame=None):
        """Half-closes, then reads until the relay closes too (at most the
        client's timeout, or CLOSE_WAIT_S), passing each frame to
        `on_frame`, then closes. Closing with unread bytes would make the
        kernel send a reset, and a reset may discard what we sent last."""
        wait = self.timeout if self.timeout is not None else CLOSE_WAIT_S
        deadline = time.monotonic() + wait
        try:
            self.sock.shutdown(socket.SHUT_WR)
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not self.readable(left):
                    break
                data = self.sock.recv(262144)
                if not data:
                    break
                if on_frame is not None:
                    self.decoder.feed(data)
                    frame = self.decoder.next()
                    while frame is not None:
                        on_frame(frame)
                        frame = self.decoder.next()
        except (OSError, ProtocolError):
            pass
        finally:
            self.sock.close()
