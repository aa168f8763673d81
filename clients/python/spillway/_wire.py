"""The ack protocol's bytes (docs/protocol.md), without sockets.

A frame is a tuple whose first item is its type number:

    (MSG, seq, attempt, body)    (ACK, seq)         (ACKS, [(a, b), ...])
    (NAK, seq, delay_ms)         (TERM, seq, reason) (PROG, seq)
    (WIN, msgs, bytes)           (BYE,)             (ERR, code, text)
    (PUB, pseq or None, body)    (CONF, n)          (DUP, pseq)

`encode(frame, encoding)` gives its bytes; a `Decoder` takes bytes in and
gives frames out: a frame, None ("feed me more"), or a ProtocolError (the
stream cannot be trusted past it). Both encodings carry the same frames.

Binary: ``u32 length`` (of what follows) little-endian, ``u8 type``, then
the fields little-endian in the order above; a body or text is the rest of
the frame. A PUB always carries its pseq field, 0 meaning none; an ACKS
starts with a ``u16`` count of ranges.

Text: one line per frame; MSG and PUB are followed by ``<len>`` body bytes
and a ``\\n``.
"""

import re
import struct

from .errors import ProtocolError

VERSION = 1
MSG, ACK, ACKS, NAK, TERM, PROG, WIN, BYE, ERR = range(1, 10)
PUB, CONF, DUP = 16, 17, 18

VERBS = {
    MSG: b"MSG", ACK: b"ACK", ACKS: b"ACKS", NAK: b"NAK", TERM: b"TERM",
    PROG: b"PROG", WIN: b"WIN", BYE: b"BYE", ERR: b"ERR", PUB: b"PUB",
    CONF: b"CONF", DUP: b"DUP",
}
TYPES = {verb: kind for kind, verb in VERBS.items()}

MAX_LINE = 1024          # a text line, "\n" included; the handshake too
MAX_ACKS_LINE = 43013    # but an ACKS line: 1,024 ranges of 20-digit seqs
FRAME_OVERHEAD = 64      # a MSG or PUB frame is at most max_message + this
MAX_ACK_RANGES = 1024
MAX_TERM_REASON = 200
MAX_WINDOW = 65536
NAME = re.compile(rb"[A-Za-z0-9._-]{1,64}\Z")

_HEAD = struct.Struct("<IB")          # length, type
_U64 = struct.Struct("<Q")
_U16 = struct.Struct("<H")
_MSG = struct.Struct("<IBQI")         # length, type, seq, attempt
_PUB = struct.Struct("<IBQ")          # length, type, pseq (0: none)
_NAK = struct.Struct("<IBQQ")
_WIN = struct.Struct("<IBIQ")
_RANGE = struct.Struct("<QQ")

# Binary frame lengths (the type byte and what follows), per type:
# (least, most); most None means "a body, up to max_frame".
_LENGTHS = {
    MSG: (13, None), PUB: (9, None),
    ACK: (9, 9), PROG: (9, 9), CONF: (9, 9), DUP: (9, 9),
    ACKS: (19, 3 + 16 * MAX_ACK_RANGES), NAK: (17, 17),
    TERM: (9, 9 + MAX_TERM_REASON), WIN: (13, 13), BYE: (1, 1),
    ERR: (3, 3 + 200),
}


def malformed(text):
    return ProtocolError(400, "the relay sent " + text)


# -- handshake ---------------------------------------------------------------

def hello_line(role, encoding, options):
    """The client's first line: ``SPILLWAY 1 role=R encoding=E k=v...\\n``.
    `options` is a list of (key, value), None values left out."""
    fields = ["SPILLWAY", str(VERSION), "role=" + role, "encoding=" + encoding]
    fields += ["%s=%s" % (k, v) for k, v in options if v is not None]
    return (" ".join(fields) + "\n").encode("ascii")


def parse_reply(line):
    """The relay's answer to the handshake: a dict of the OK line's fields
    (numbers as ints), or a ProtocolError raised for ERR or garbage."""
    line = line.rstrip(b"\r\n")
    if line == b"ERR" or line.startswith(b"ERR "):
        kind, code, text = _text_frame(line)
        raise ProtocolError(code, text)
    fields = line.split(b" ")
    if fields[0] != b"OK" or len(fields) < 2:
        raise malformed("%r instead of an OK line" % line[:64])
    if fields[1] != b"1":
        raise ProtocolError(401, "the relay speaks version %s" % fields[1].decode("ascii", "replace"))
    reply = {}
    for field in fields[2:]:
        key, eq, value = field.partition(b"=")
        if not eq or not key:
            raise malformed("field %r in its OK line" % field)
        key = key.decode("ascii", "replace")
        if key in reply:
            raise malformed("%s twice in its OK line" % key)
        value = value.decode("ascii", "replace")
        reply[key] = int(value) if value.isdigit() else value
    # Unknown keys are a later relay's additions; these four are always there.
    for key in ("max_message", "ack_timeout_ms", "max_deliveries"):
        if not isinstance(reply.get(key), int):
            raise malformed("an OK line without a number for %s" % key)
    if not NAME.match(str(reply.get("session", "")).encode("ascii", "replace")):
        raise malformed("an OK line without a valid session")
    return reply


# -- encoding ----------------------------------------------------------------

def _text_field(raw, limit):
    """A TERM reason as both encodings send it: at most `limit` bytes, each
    newline made a space (a newline would end a text line early)."""
    return raw[:limit].replace(b"\n", b" ")


def encode(frame, encoding):
    """The bytes of `frame` in `encoding` ("binary" or "text")."""
    kind = frame[0]
    if encoding == "binary":
        if kind == MSG:
            return _MSG.pack(13 + len(frame[3]), MSG, frame[1], frame[2]) + frame[3]
        if kind == PUB:
            return _PUB.pack(9 + len(frame[2]), PUB, frame[1] or 0) + frame[2]
        if kind in (ACK, PROG, CONF, DUP):
            return _HEAD.pack(9, kind) + _U64.pack(frame[1])
        if kind == ACKS:
            ranges = frame[1]
            return (_HEAD.pack(3 + 16 * len(ranges), ACKS) + _U16.pack(len(ranges))
                    + b"".join(_RANGE.pack(a, b) for a, b in ranges))
        if kind == NAK:
            return _NAK.pack(17, NAK, frame[1], frame[2])
        if kind == TERM:
            reason = _text_field(frame[2], MAX_TERM_REASON)
            return _HEAD.pack(9 + len(reason), TERM) + _U64.pack(frame[1]) + reason
        if kind == WIN:
            return _WIN.pack(13, WIN, frame[1], frame[2])
        if kind == BYE:
            return _HEAD.pack(1, BYE)
        if kind == ERR:
            text = frame[2].encode("utf-8")[:200]
            return _HEAD.pack(3 + len(text), ERR) + _U16.pack(frame[1]) + text
        raise ValueError("unknown frame type %r" % (kind,))
    if encoding != "text":
        raise ValueError("encoding must be 'binary' or 'text', not %r" % (encoding,))
    if kind == MSG:
        return b"MSG %d %d %d\n%s\n" % (frame[1], frame[2], len(frame[3]), frame[3])
    if kind == PUB:
        if frame[1]:
            return b"PUB %d %d\n%s\n" % (frame[1], len(frame[2]), frame[2])
        return b"PUB %d\n%s\n" % (len(frame[2]), frame[2])
    if kind == ACKS:
        return b"ACKS %s\n" % b",".join(b"%d-%d" % (a, b) for a, b in frame[1])
    if kind == TERM:
        reason = _text_field(frame[2], MAX_TERM_REASON)
        return b"TERM %d %s\n" % (frame[1], reason) if reason else b"TERM %d\n" % frame[1]
    if kind == BYE:
        return b"BYE\n"
    if kind == ERR:
        text = frame[2].encode("utf-8")[:200].replace(b"\n", b"?")
        return b"ERR %d %s\n" % (frame[1], text) if text else b"ERR %d\n" % frame[1]
    if kind in VERBS:
        return VERBS[kind] + b"".join(b" %d" % n for n in frame[1:]) + b"\n"
    raise ValueError("unknown frame type %r" % (kind,))


# -- decoding ----------------------------------------------------------------

def _number(raw, what):
    """A number as the protocol writes it: 0, or digits without a leading
    zero, within a u64."""
    if not raw.isdigit() or (raw[0] == 0x30 and len(raw) > 1) or len(raw) > 20:
        raise malformed("a bad %s %r" % (what, bytes(raw[:32])))
    n = int(raw)
    if n >= 1 << 64:
        raise malformed("a %s over 64 bits" % what)
    return n


def _text_frame(line):
    """A whole text line without its newline -> a frame, or for MSG and PUB
    a header tuple whose body is the int length still to read."""
    verb, _, rest = line.partition(b" ")
    kind = TYPES.get(bytes(verb))
    if kind is None:
        raise malformed("an unknown frame %r" % bytes(line[:32]))
    if kind in (TERM, ERR):
        first, _, tail = rest.partition(b" ")
        n = _number(first, VERBS[kind].decode() + " number")
        if kind == TERM:
            return (TERM, n, bytes(tail))
        return (ERR, n, tail.decode("utf-8", "replace"))
    if kind == ACKS:
        ranges = []
        for r in rest.split(b","):
            a, dash, b = r.partition(b"-")
            if not dash:
                raise malformed("an ACKS range %r" % bytes(r[:32]))
            ranges.append((_number(a, "range"), _number(b, "range")))
        return (ACKS, ranges)
    fields = rest.split(b" ") if rest else []
    want = {MSG: (3,), PUB: (1, 2), ACK: (1,), NAK: (2,), PROG: (1,),
            WIN: (2,), BYE: (0,), CONF: (1,), DUP: (1,)}[kind]
    if len(fields) not in want:
        raise malformed("a %s line with %d fields" % (verb.decode(), len(fields)))
    numbers = [_number(f, verb.decode() + " field") for f in fields]
    if kind == PUB and len(numbers) == 1:
        numbers.insert(0, None)
    return (kind, *numbers)


class Decoder:
    """Frames out of a byte stream in one encoding.

    `feed(data)` appends what was read; `next()` returns the next whole
    frame, None when more bytes are needed, or raises ProtocolError when
    the stream is invalid (final: close the connection). `max_frame` bounds
    MSG and PUB frames as the relay's OK line says (max_message + 64).
    """

    def __init__(self, encoding, max_frame=None):
        if encoding not in ("binary", "text"):
            raise ValueError("encoding must be 'binary' or 'text', not %r" % (encoding,))
        self.encoding = encoding
        self.max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0
        self.next = self._binary if encoding == "binary" else self._text

    def feed(self, data):
        if self._pos:
            # Drop what was consumed, now and then, not at every frame.
            if self._pos == len(self._buf):
                self._buf.clear()
                self._pos = 0
            elif self._pos > 65536:
                del self._buf[:self._pos]
                self._pos = 0
        self._buf += data

    def buffered(self):
        """Bytes fed but not yet returned as frames (a partial frame)."""
        return len(self._buf) - self._pos

    def _too_large(self, size):
        if self.max_frame is not None and size > self.max_frame:
            raise ProtocolError(413, "the relay sent a frame of %d bytes, over %d" % (size, self.max_frame))

    def _binary(self):
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 5:
            if len(buf) - pos >= 4 and buf[pos:pos + 4] == b"\0\0\0\0":
                raise malformed("a frame of length 0")
            return None
        length, kind = _HEAD.unpack_from(buf, pos)
        bounds = _LENGTHS.get(kind)
        if bounds is None:
            raise malformed("an unknown frame type %d" % kind)
        least, most = bounds
        if length < least or (most is not None and length > most):
            raise malformed("a frame of type %d and length %d" % (kind, length))
        if most is None:
            self._too_large(4 + length)
        end = pos + 4 + length
        if len(buf) < end:
            return None
        at = pos + 5
        if kind == MSG:
            seq, attempt = struct.unpack_from("<QI", buf, at)
            frame = (MSG, seq, attempt, bytes(buf[at + 12:end]))
        elif kind == PUB:
            (pseq,) = _U64.unpack_from(buf, at)
            frame = (PUB, pseq or None, bytes(buf[at + 8:end]))
        elif kind in (ACK, PROG, CONF, DUP):
            frame = (kind, _U64.unpack_from(buf, at)[0])
        elif kind == ACKS:
            (count,) = _U16.unpack_from(buf, at)
            if count * 16 != length - 3:
                raise malformed("an ACKS frame with a count of %d in %d bytes" % (count, length))
            frame = (ACKS, [_RANGE.unpack_from(buf, at + 2 + 16 * i) for i in range(count)])
        elif kind == NAK:
            frame = (NAK,) + struct.unpack_from("<QQ", buf, at)
        elif kind == TERM:
            frame = (TERM, _U64.unpack_from(buf, at)[0], bytes(buf[at + 8:end]))
        elif kind == WIN:
            frame = (WIN,) + struct.unpack_from("<IQ", buf, at)
        elif kind == ERR:
            frame = (ERR, _U16.unpack_from(buf, at)[0], buf[at + 2:end].decode("utf-8", "replace"))
        else:
            frame = (BYE,)
        self._pos = end
        return frame

    def _text(self):
        buf, pos = self._buf, self._pos
        limit = MAX_ACKS_LINE if buf.startswith(b"ACKS ", pos) else MAX_LINE
        nl = buf.find(b"\n", pos, pos + limit)
        if nl < 0:
            if len(buf) - pos >= limit:
                raise malformed("a line over %d bytes" % limit)
            return None
        frame = _text_frame(bytes(buf[pos:nl]))
        if frame[0] not in (MSG, PUB):
            self._pos = nl + 1
            return frame
        length = frame[-1]
        end = nl + 1 + length
        self._too_large(end + 1 - pos)
        if len(buf) < end + 1:
            return None
        if buf[end] != 0x0A:
            raise malformed("no newline after a body of %d bytes" % length)
        self._pos = end + 1
        return frame[:-1] + (bytes(buf[nl + 1:end]),)
