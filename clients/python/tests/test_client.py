"""The client against a scripted fake relay: what it writes, when, and how
it reads the relay's errors. No relay binary needed."""

import os
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import spillway  # noqa: E402
from spillway import _wire  # noqa: E402
from spillway._wire import ACKS, CONF, DUP, ERR, MSG, NAK, PROG, PUB, TERM  # noqa: E402

OK = b"OK 1 session=s1 max_message=1048576 ack_timeout_ms=30000 max_deliveries=5\n"


class Peer:
    """The relay's end of one accepted connection, for a script."""

    def __init__(self, sock, encoding):
        self.sock = sock
        self.sock.settimeout(5)
        self.decoder = _wire.Decoder(encoding)
        self.encoding = encoding

    def hello(self):
        buf = b""
        while not buf.endswith(b"\n"):
            buf += self.sock.recv(1)
        return buf

    def send(self, *frames):
        self.sock.sendall(b"".join(_wire.encode(f, self.encoding) for f in frames))

    def frame(self):
        """The next frame from the client; None at its EOF."""
        while True:
            f = self.decoder.next()
            if f is not None:
                return f
            data = self.sock.recv(65536)
            if not data:
                return None
            self.decoder.feed(data)

    def frames_until_eof(self):
        out = []
        f = self.frame()
        while f is not None:
            out.append(f)
            f = self.frame()
        return out

    def reset(self):
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        self.sock.close()


class FakeRelay:
    """Accepts connections on 127.0.0.1:0 and runs `script(peer, i)` on the
    i-th (from 0) in a thread; the script's exception fails the test."""

    def __init__(self, test, script, encoding="binary", connections=1):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.error = None
        self.result = {}
        self.thread = threading.Thread(target=self._run, args=(script, encoding, connections), daemon=True)
        self.thread.start()
        test.addCleanup(self.listener.close)
        self.test = test

    def _run(self, script, encoding, connections):
        try:
            for i in range(connections):
                sock, _ = self.listener.accept()
                with sock:
                    script(Peer(sock, encoding), i)
        except Exception as e:     # reported by join()
            self.error = e

    def join(self):
        self.thread.join(10)
        self.test.assertFalse(self.thread.is_alive(), "the fake relay's script did not end")
        if self.error:
            raise self.error


class ConsumerWire(unittest.TestCase):
    def test_handshake_then_coalesced_acks(self):
        def script(peer, _):
            relay.result["hello"] = peer.hello()
            peer.sock.sendall(OK)
            peer.send(*[(MSG, seq, 1, b"m%d" % seq) for seq in range(1, 101)])
            relay.result["frames"] = peer.frames_until_eof()

        relay = FakeRelay(self, script)
        with spillway.Consumer(relay.address, window=100, timeout=5) as c:
            self.assertEqual(c.session, "s1")
            got = [next(c) for _ in range(100)]
            for m in got:
                m.ack()
        relay.join()
        self.assertEqual(relay.result["hello"], b"SPILLWAY 1 role=consumer encoding=binary window=100\n")
        frames = relay.result["frames"]
        self.assertTrue(all(f[0] == ACKS for f in frames), frames)
        acked = [s for f in frames for a, b in f[1] for s in range(a, b + 1)]
        self.assertEqual(sorted(acked), list(range(1, 101)))
        self.assertLess(len(frames), 10, "acks are batched: %d frames" % len(frames))

    def test_settling_sends_nak_term_prog(self):
        def script(peer, _):
            peer.hello()
            peer.sock.sendall(OK)
            peer.send((MSG, 5, 1, b"a"), (MSG, 6, 1, b"b"), (MSG, 7, 2, b"c"), (MSG, 9, 1, b"d"),
                      (MSG, 10, 1, b"e"))
            relay.result["frames"] = peer.frames_until_eof()

        relay = FakeRelay(self, script, encoding="text")
        with spillway.Consumer(relay.address, encoding="text", group="g1", timeout=5) as c:
            a, b, d, e, f = [next(c) for _ in range(5)]
            self.assertEqual((a.seq, a.attempt, a.body), (5, 1, b"a"))
            self.assertEqual(d.attempt, 2)
            a.in_progress()
            a.ack()
            b.nak(delay_s=1.5)
            d.term("no\nway")
            a.ack()                         # twice: harmless
            for settle in (b.ack, d.nak, a.term, a.in_progress):
                with self.assertRaises(ValueError):
                    settle()
            e.ack()
        e.ack()                             # still harmless
        with self.assertRaises(ValueError):
            f.ack()                         # closed: it went back to the queue
        relay.join()
        self.assertEqual(relay.result["frames"], [
            (PROG, 5), (ACKS, [(5, 5)]), (NAK, 6, 1500), (TERM, 7, b"no way"), (ACKS, [(9, 9)])])

    def test_err_raises_protocol_error(self):
        def script(peer, _):
            peer.hello()
            peer.sock.sendall(OK)
            peer.send((MSG, 1, 1, b"x"))
            relay.result["ack"] = peer.frame()
            peer.send((ERR, 409, "message 3 is not held by this connection"))
            peer.frames_until_eof()

        relay = FakeRelay(self, script)
        c = spillway.Consumer(relay.address, timeout=5)
        msg = next(c)
        msg.ack()                   # the last one held: sent at once
        with self.assertRaises(spillway.ProtocolError) as e:
            next(c)
        self.assertEqual((e.exception.code, e.exception.text),
                         (409, "message 3 is not held by this connection"))
        c.close()
        relay.join()
        self.assertEqual(relay.result["ack"], (ACKS, [(1, 1)]))

    def test_a_refused_handshake(self):
        def script(peer, _):
            peer.hello()
            peer.sock.sendall(b"ERR 400 unknown option 'windw'\n")

        relay = FakeRelay(self, script)
        with self.assertRaises(spillway.ProtocolError) as e:
            spillway.Consumer(relay.address, timeout=5)
        self.assertEqual(str(e.exception), "400 unknown option 'windw'")
        relay.join()

    def test_bye_then_close_ends_the_iteration(self):
        def script(peer, _):
            peer.hello()
            peer.sock.sendall(OK)
            peer.send((MSG, 1, 1, b"x"), (_wire.BYE,))
            relay.result["frames"] = peer.frames_until_eof()

        relay = FakeRelay(self, script)
        with spillway.Consumer(relay.address, timeout=5) as c:
            got = []
            for m in c:
                got.append(m.body)
                m.ack()
        relay.join()
        self.assertEqual(got, [b"x"])
        self.assertEqual(relay.result["frames"], [(ACKS, [(1, 1)])])

    def test_a_close_in_the_middle_of_a_frame_is_a_connection_error(self):
        def script(peer, _):
            peer.hello()
            peer.sock.sendall(OK + _wire.encode((MSG, 1, 1, b"abcdef"), "binary")[:-2])

        relay = FakeRelay(self, script)
        c = spillway.Consumer(relay.address, timeout=5)
        with self.assertRaises(ConnectionError):
            next(c)
        c.close()
        relay.join()

    def test_a_reset_is_a_connection_error_and_a_silence_a_timeout(self):
        def script(peer, _):
            peer.hello()
            peer.sock.sendall(OK)
            time.sleep(0.5)
            peer.reset()

        relay = FakeRelay(self, script)
        c = spillway.Consumer(relay.address, timeout=0.2)
        with self.assertRaises(TimeoutError):
            next(c)
        c._conn.sock.settimeout(5)
        with self.assertRaises(ConnectionError):
            next(c)
        c.close()
        relay.join()

    def test_bad_arguments(self):
        for kw in ({"window": 0}, {"window": 65537}, {"window_bytes": 0}, {"group": "a b"}):
            with self.assertRaises(ValueError):
                spillway.Consumer("127.0.0.1:1", **kw)
        with self.assertRaises(ValueError):
            spillway.Consumer("nohostport")


class ProducerWire(unittest.TestCase):
    def test_named_confirms_and_resend_after_reconnect(self):
        def script(peer, i):
            relay.result["hello%d" % i] = peer.hello()
            peer.sock.sendall(OK)
            if i == 0:
                relay.result["first"] = [peer.frame() for _ in range(3)]
                peer.send((CONF, 1))
                time.sleep(0.2)
                peer.reset()            # 2 and 3 are not confirmed
                return
            relay.result["second"] = [peer.frame() for _ in range(2)]
            peer.send((DUP, 2), (CONF, 2))
            relay.result["second"].append(peer.frame())
            peer.send((CONF, 3))
            peer.frames_until_eof()

        relay = FakeRelay(self, script, encoding="text", connections=2)
        p = spillway.Producer(relay.address, name="app-7", encoding="text", timeout=5)
        for body in (b"one", b"two", b"three"):
            p.send(body)
        p.flush(5)                  # across the reset: resends two and three
        self.assertEqual((p.unconfirmed, p.duplicates, p.reconnects), (0, 1, 1))
        p.send(b"four")
        p.flush(5)
        self.assertEqual((p.unconfirmed, p.last_pseq), (0, 4))
        p.close()
        relay.join()
        self.assertEqual(relay.result["hello0"],
                         b"SPILLWAY 1 role=producer encoding=text confirms=on name=app-7\n")
        self.assertEqual(relay.result["first"], [(PUB, 1, b"one"), (PUB, 2, b"two"), (PUB, 3, b"three")])
        self.assertEqual(relay.result["second"], [(PUB, 2, b"two"), (PUB, 3, b"three"), (PUB, 4, b"four")])

    def test_send_after_a_lost_connection_reconnects(self):
        def script(peer, i):
            peer.hello()
            peer.sock.sendall(OK)
            if i == 0:
                relay.result["first"] = peer.frame()
                peer.reset()
                return
            relay.result["second"] = [peer.frame(), peer.frame()]
            peer.send((CONF, 2))
            peer.frames_until_eof()

        relay = FakeRelay(self, script, connections=2)
        p = spillway.Producer(relay.address, timeout=5)
        p.send(b"a")
        time.sleep(0.3)             # the reset is in
        p.send(b"b")                # fails on the reset socket: reconnects, resends a
        p.flush(5)
        p.close()
        relay.join()
        self.assertEqual(relay.result["first"], (PUB, None, b"a"))
        self.assertEqual(relay.result["second"], [(PUB, None, b"a"), (PUB, None, b"b")])

    def test_a_reconnect_waits_for_the_name_to_be_free(self):
        def script(peer, i):
            peer.hello()
            if i == 0:
                peer.sock.sendall(OK)
                relay.result["first"] = peer.frame()
                return
            if i == 1:
                peer.sock.sendall(b"ERR 409 producer 'app-8' is connected already\n")
                return
            peer.sock.sendall(OK)
            relay.result["third"] = peer.frame()
            peer.send((CONF, 1))
            peer.frames_until_eof()

        relay = FakeRelay(self, script, connections=3)
        p = spillway.Producer(relay.address, name="app-8", timeout=5)
        p.send(b"x")
        p.reconnect()
        p.flush(5)
        p.close()
        relay.join()
        self.assertEqual(relay.result["first"], (PUB, 1, b"x"))
        self.assertEqual(relay.result["third"], (PUB, 1, b"x"))

    def test_flush_times_out_without_confirms_and_raises_err(self):
        def script(peer, _):
            peer.hello()
            peer.sock.sendall(OK)
            peer.frame()
            time.sleep(0.5)
            peer.send((ERR, 507, "full"))

        relay = FakeRelay(self, script)
        p = spillway.Producer(relay.address, timeout=5)
        p.send(b"x")
        with self.assertRaises(TimeoutError):
            p.flush(0.2)
        with self.assertRaises(spillway.ProtocolError) as e:
            p.flush(5)
        self.assertEqual(e.exception.code, 507)
        self.assertTrue(e.exception.retryable)
        p.close()
        relay.join()

    def test_unnamed_binary_pub_has_no_pseq(self):
        def script(peer, _):
            relay.result["hello"] = peer.hello()
            peer.sock.sendall(OK)
            relay.result["frames"] = peer.frames_until_eof()

        relay = FakeRelay(self, script)
        p = spillway.Producer(relay.address, confirms=False, timeout=5)
        p.send(b"a")
        p.send(bytearray(b"b"))
        p.flush(1)                      # without confirms: at once
        p.close()
        with self.assertRaises(ValueError):
            p.send(b"c")                # closed stays closed
        relay.join()
        self.assertEqual(relay.result["hello"], b"SPILLWAY 1 role=producer encoding=binary confirms=off\n")
        self.assertEqual(relay.result["frames"], [(PUB, None, b"a"), (PUB, None, b"b")])


if __name__ == "__main__":
    unittest.main()
