"""The codec alone: bytes as docs/protocol.md lays them out, both encodings."""

import os
import struct
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from spillway import ProtocolError, _wire  # noqa: E402
from spillway._wire import (  # noqa: E402
    ACK, ACKS, BYE, CONF, DUP, ERR, MSG, NAK, PROG, PUB, TERM, WIN, Decoder, encode)

ALL = [
    (MSG, 42, 1, b"hello\nworld"),
    (MSG, 0, 4294967295, b""),
    (ACK, 7),
    (ACKS, [(1, 3), (5, 5), (2**64 - 1, 2**64 - 1)]),
    (NAK, 9, 1500),
    (TERM, 3, b"bad input"),
    (TERM, 3, b""),
    (PROG, 11),
    (WIN, 64, 1048576),
    (BYE,),
    (ERR, 409, "message 4 is not held by this connection"),
    (ERR, 503, ""),
    (PUB, None, b"x"),
    (PUB, 17, b"two\nlines"),
    (CONF, 500),
    (CONF, 0),
    (DUP, 3),
]


def decode_all(encoding, data, chunk):
    d = Decoder(encoding)
    out = []
    for i in range(0, len(data), chunk):
        d.feed(data[i:i + chunk])
        frame = d.next()
        while frame is not None:
            out.append(frame)
            frame = d.next()
    return out, d.buffered()


class GoldenBytes(unittest.TestCase):
    """The layouts of the spec, written out by hand."""

    def test_text(self):
        self.assertEqual(encode((MSG, 42, 1, b"hi\n"), "text"), b"MSG 42 1 3\nhi\n\n")
        self.assertEqual(encode((ACKS, [(1, 3), (7, 7)]), "text"), b"ACKS 1-3,7-7\n")
        self.assertEqual(encode((NAK, 5, 250), "text"), b"NAK 5 250\n")
        self.assertEqual(encode((TERM, 5, b"no\nway"), "text"), b"TERM 5 no way\n")
        self.assertEqual(encode((TERM, 5, b""), "text"), b"TERM 5\n")
        self.assertEqual(encode((PROG, 5), "text"), b"PROG 5\n")
        self.assertEqual(encode((WIN, 8, 4096), "text"), b"WIN 8 4096\n")
        self.assertEqual(encode((PUB, None, b"ab"), "text"), b"PUB 2\nab\n")
        self.assertEqual(encode((PUB, 9, b"ab"), "text"), b"PUB 9 2\nab\n")
        self.assertEqual(encode((ACK, 1), "text"), b"ACK 1\n")

    def test_binary(self):
        self.assertEqual(encode((ACK, 7), "binary"), b"\x09\0\0\0\x02" + struct.pack("<Q", 7))
        self.assertEqual(encode((MSG, 42, 1, b"hi"), "binary"),
                         struct.pack("<IBQI", 15, 1, 42, 1) + b"hi")
        self.assertEqual(encode((ACKS, [(1, 3)]), "binary"),
                         struct.pack("<IBHQQ", 19, 3, 1, 1, 3))
        self.assertEqual(encode((NAK, 5, 250), "binary"), struct.pack("<IBQQ", 17, 4, 5, 250))
        self.assertEqual(encode((TERM, 5, b"why"), "binary"), struct.pack("<IBQ", 12, 5, 5) + b"why")
        self.assertEqual(encode((WIN, 8, 4096), "binary"), struct.pack("<IBIQ", 13, 7, 8, 4096))
        self.assertEqual(encode((BYE,), "binary"), b"\x01\0\0\0\x08")
        self.assertEqual(encode((ERR, 507, "full"), "binary"), struct.pack("<IBH", 7, 9, 507) + b"full")
        # A PUB always carries its pseq field: 0 for an unnamed producer.
        self.assertEqual(encode((PUB, None, b"ab"), "binary"), struct.pack("<IBQ", 11, 16, 0) + b"ab")
        self.assertEqual(encode((PUB, 9, b"ab"), "binary"), struct.pack("<IBQ", 11, 16, 9) + b"ab")
        self.assertEqual(encode((CONF, 500), "binary"), struct.pack("<IBQ", 9, 17, 500))

    def test_handshake(self):
        self.assertEqual(
            _wire.hello_line("consumer", "text", [("group", None), ("window", 64), ("window_bytes", None)]),
            b"SPILLWAY 1 role=consumer encoding=text window=64\n")
        ok = _wire.parse_reply(b"OK 1 session=7f3a9c02 max_message=1048576 ack_timeout_ms=30000 "
                               b"max_deliveries=5 later_key=x\r")
        self.assertEqual((ok["session"], ok["max_message"], ok["ack_timeout_ms"], ok["later_key"]),
                         ("7f3a9c02", 1048576, 30000, "x"))
        with self.assertRaises(ProtocolError) as e:
            _wire.parse_reply(b"ERR 400 unknown option 'windw'")
        self.assertEqual((e.exception.code, e.exception.text), (400, "unknown option 'windw'"))
        with self.assertRaises(ProtocolError) as e:
            _wire.parse_reply(b"OK 2 session=x")
        self.assertEqual(e.exception.code, 401)
        for bad in (b"a\n", b"OK 1 session=s max_message=1 ack_timeout_ms=1",
                    b"OK 1 session=s max_message=1 ack_timeout_ms=1 max_deliveries=5 max_message=2",
                    b"OK 1 session=a/b max_message=1 ack_timeout_ms=1 max_deliveries=5"):
            with self.assertRaises(ProtocolError, msg=bad) as e:
                _wire.parse_reply(bad)
            self.assertEqual(e.exception.code, 400)


class RoundTrip(unittest.TestCase):
    def test_every_frame_whatever_the_reads(self):
        for encoding in ("binary", "text"):
            data = b"".join(encode(f, encoding) for f in ALL)
            for chunk in (1, 2, 3, 7, 64, len(data)):
                with self.subTest(encoding=encoding, chunk=chunk):
                    frames, left = decode_all(encoding, data, chunk)
                    self.assertEqual(frames, [tuple(f) for f in ALL])
                    self.assertEqual(left, 0)

    def test_a_partial_frame_is_not_a_frame(self):
        for encoding in ("binary", "text"):
            data = encode((MSG, 1, 1, b"abcdef"), encoding)
            d = Decoder(encoding)
            d.feed(data[:-1])
            self.assertIsNone(d.next())
            self.assertEqual(d.buffered(), len(data) - 1)
            d.feed(data[-1:])
            self.assertEqual(d.next(), (MSG, 1, 1, b"abcdef"))

    def test_a_text_acks_of_1024_long_ranges(self):
        big = 2**64 - 1
        frame = (ACKS, [(big - i, big - i) for i in range(1024)])
        line = encode(frame, "text")
        self.assertEqual(len(line), _wire.MAX_ACKS_LINE)     # the longest there is
        frames, left = decode_all("text", line, 4096)
        self.assertEqual((frames, left), ([frame], 0))

    def test_long_streams_keep_little_buffered(self):
        d = Decoder("binary")
        frame = encode((MSG, 1, 1, b"x" * 1000), "binary")
        for _ in range(500):
            d.feed(frame)
            self.assertEqual(d.next()[3], b"x" * 1000)
        self.assertLess(len(d._buf), 70000)


class InvalidStreams(unittest.TestCase):
    def bad(self, encoding, data, code=400, max_frame=None):
        d = Decoder(encoding, max_frame)
        d.feed(data)
        with self.assertRaises(ProtocolError) as e:
            d.next()
        self.assertEqual(e.exception.code, code, e.exception)

    def test_binary(self):
        self.bad("binary", b"\0\0\0\0")                                  # no type
        self.bad("binary", b"\x01\0\0\0\x63")                            # unknown type
        self.bad("binary", struct.pack("<IBQ", 10, 2, 1) + b"x")         # ACK too long
        self.bad("binary", struct.pack("<IBHQQ", 19, 3, 2, 1, 1))        # ACKS count
        self.bad("binary", struct.pack("<IBQI", 2000, 1, 1, 1), 413, 1064)

    def test_text(self):
        self.bad("text", b"HELLO 1\n")
        self.bad("text", b"MSG 1 x 3\nabc\n")
        self.bad("text", b"MSG 1 1 3\nabcd")                             # no newline after body
        self.bad("text", b"MSG 1 1 2000\n", 413, 1064)
        self.bad("text", b"x" * 1100)                                    # a line too long
        self.bad("text", b"ACK 1" + b"1" * 1100)
        self.bad("text", b"MSG 01 1 1\nx\n")                            # a leading zero
        self.bad("text", b"CONF 18446744073709551616\n")                 # over 64 bits
        self.bad("text", b"CONF -1\n")


if __name__ == "__main__":
    unittest.main()
