"""spillway.Producer against the real relay (`--from-protocol ack`)."""

import re
import time
import unittest

from _relay import Relay, text, wait_for

import spillway

WAIT_S = 10


class ProducerTest(unittest.TestCase):
    def relay(self, **kw):
        return Relay(self, from_protocol="ack", to_protocol="ack", **kw)

    def consume(self, relay, n):
        """n messages from the relay, each acked; then nothing more for a
        moment (an extra message fails the test)."""
        got = []
        with spillway.Consumer(relay.sink, timeout=WAIT_S) as c:
            for msg in c:
                got.append(msg)
                msg.ack()
                if len(got) == n:
                    break
            c._conn.sock.settimeout(0.5)
            with self.assertRaises(TimeoutError, msg="a message more than the %d sent" % n):
                next(c)
        return got

    def send_and_flush(self, encoding):
        relay = self.relay()
        bodies = [b"p-%05d" % i for i in range(1000)]
        with spillway.Producer(relay.source, encoding=encoding, timeout=WAIT_S) as p:
            for b in bodies:
                p.send(b)
            p.flush(WAIT_S)
            self.assertEqual(p.unconfirmed, 0)
        got = self.consume(relay, len(bodies))
        self.assertEqual([text(m) for m in got], bodies)

    def test_send_and_flush_binary(self):
        self.send_and_flush("binary")

    def test_send_and_flush_text(self):
        self.send_and_flush("text")

    def test_without_confirms(self):
        relay = self.relay()
        with spillway.Producer(relay.source, confirms=False, timeout=WAIT_S) as p:
            for i in range(10):
                p.send(b"q-%d" % i)
            p.flush(WAIT_S)         # nothing to wait for
        got = self.consume(relay, 10)
        self.assertEqual([text(m) for m in got], [b"q-%d" % i for i in range(10)])

    def test_a_named_producer_resending_enqueues_each_message_once(self):
        relay = self.relay()
        p = spillway.Producer(relay.source, name="app-1", timeout=WAIT_S)
        self.addCleanup(p.close)
        for i in range(100):
            p.send(b"n-%03d" % i)
        p.flush(WAIT_S)
        for i in range(100, 150):   # fewer than a CONF poll: none is read
            p.send(b"n-%03d" % i)
        self.assertEqual(p.unconfirmed, 50)
        wait_for(lambda: _metric(relay, "spillway_messages_in_total") >= 150, WAIT_S,
                 "the relay to enqueue 150 messages")
        p.reconnect()               # resends the 50 it already has
        p.flush(WAIT_S)
        self.assertEqual((p.unconfirmed, p.duplicates), (0, 50))
        got = self.consume(relay, 150)
        self.assertEqual([text(m) for m in got], [b"n-%03d" % i for i in range(150)])

    def test_confirms_and_names_survive_a_relay_restart(self):
        relay = self.relay(args=["--drain-timeout", "2s"])
        p = spillway.Producer(relay.source, name="app-2", timeout=WAIT_S)
        self.addCleanup(p.close)
        for i in range(100):
            p.send(b"r-%03d" % i)
        p.flush(WAIT_S)
        for i in range(100, 120):
            p.send(b"r-%03d" % i)
        wait_for(lambda: _metric(relay, "spillway_messages_in_total") >= 120, WAIT_S,
                 "the relay to enqueue 120 messages")
        self.assertEqual(relay.stop(), 0, relay.output())
        relay = self.relay(args=["--drain-timeout", "2s"], after=relay)
        try:
            p.flush(WAIT_S)         # reconnects, resends what was not confirmed
        except spillway.ProtocolError as e:
            self.assertTrue(e.retryable, e)     # the old relay said it was draining
            p.flush(WAIT_S)
        p.send(b"after")
        p.flush(WAIT_S)
        got = self.consume(relay, 121)
        self.assertEqual([text(m) for m in got], [b"r-%03d" % i for i in range(120)] + [b"after"])

    def test_a_restarted_process_reusing_its_name_resumes_numbering(self):
        relay = self.relay()
        with spillway.Producer(relay.source, name="app-3", timeout=WAIT_S) as p:
            for i in range(5):
                p.send(b"s-%d" % i)
            p.flush(WAIT_S)
        # A new process, the same name: it must not start again at pseq 1
        # (those would be answered DUP and dropped).
        with spillway.Producer(relay.source, name="app-3", timeout=WAIT_S) as p:
            self.assertEqual(p.last_pseq, 5)
            for i in range(5, 8):
                p.send(b"s-%d" % i)
            p.flush(WAIT_S)
            self.assertEqual(p.duplicates, 0)
        got = self.consume(relay, 8)
        self.assertEqual([text(m) for m in got], [b"s-%d" % i for i in range(8)])

    def test_a_body_the_route_cannot_take_is_refused_and_can_be_dropped(self):
        relay = self.relay()
        p = spillway.Producer(relay.source, name="app-3", timeout=WAIT_S)
        self.addCleanup(p.close)
        p.send(b"good-1")
        p.flush(WAIT_S)
        p.send(b"two\nlines")     # a lines route cannot frame it
        with self.assertRaises(spillway.ProtocolError) as e:
            p.flush(WAIT_S)
        self.assertEqual(e.exception.code, 400, e.exception)
        self.assertEqual(p.drop_unconfirmed(), [b"two\nlines"])
        p.send(b"good-2")
        p.flush(WAIT_S)
        with self.assertRaises(ValueError):
            p.send(b"x" * (p.max_message + 1))
        got = self.consume(relay, 2)
        self.assertEqual([text(m) for m in got], [b"good-1", b"good-2"])

    def test_a_consumer_endpoint_refuses_a_producer(self):
        relay = Relay(self)         # needs only the consumer side
        with self.assertRaises(spillway.ProtocolError) as e:
            spillway.Producer(relay.sink, timeout=WAIT_S)
        self.assertEqual(e.exception.code, 403, e.exception)


def _metric(relay, name):
    values = re.findall(r"^%s(?:\{[^}]*\})? (\S+)$" % re.escape(name), relay.metrics(), re.M)
    return sum(float(v) for v in values)


if __name__ == "__main__":
    unittest.main()
