"""spillway.Consumer against the real relay (`--to-protocol ack`).

Producers here are plain TCP writing lines to the route's source.
"""

import collections
import os
import random
import re
import signal
import subprocess
import sys
import time
import unittest

from _relay import HERE, Relay, text, wait_for

import spillway

WAIT_S = 10     # the consumers' timeout: no test waits longer for a message


def lines(n, prefix=b"line"):
    return [b"%s-%05d" % (prefix, i) for i in range(n)]


class ConsumerTest(unittest.TestCase):
    def consumer(self, relay, **kw):
        kw.setdefault("timeout", WAIT_S)
        c = spillway.Consumer(relay.sink, **kw)
        self.addCleanup(c.close)
        return c

    def take(self, consumer, n):
        """The next n messages (a TimeoutError if they do not come)."""
        return [next(consumer) for _ in range(n)]

    def assert_all_acked(self, relay):
        self.assertEqual(relay.stop(), 0, relay.output())
        self.assertEqual(relay.remaining(), [], "messages left unacknowledged in the spool")

    # -- the basics ------------------------------------------------------------

    def in_order(self, encoding):
        relay = Relay(self)
        produced = lines(500)
        relay.produce(produced)
        got = []
        with self.consumer(relay, encoding=encoding, window=32) as c:
            for msg in c:
                got.append(msg)
                msg.ack()
                if len(got) == len(produced):
                    break
            self.assertEqual(c.held, 0)
        self.assertEqual([text(m) for m in got], produced)
        self.assertEqual({m.attempt for m in got}, {1})
        seqs = [m.seq for m in got]
        self.assertEqual(seqs, sorted(set(seqs)), "seqs increase")
        self.assert_all_acked(relay)

    def test_iterate_and_ack_everything_binary(self):
        self.in_order("binary")

    def test_iterate_and_ack_everything_text(self):
        self.in_order("text")

    def test_acks_out_of_order(self):
        relay = Relay(self)
        relay.produce(lines(10))
        c = self.consumer(relay, window=10)
        held = self.take(c, 10)
        for msg in reversed(held):
            msg.ack()
        # The window is free again: one more comes on the same connection.
        relay.produce([b"eleventh"])
        last = next(c)
        self.assertEqual(text(last), b"eleventh")
        last.ack()
        c.close()
        self.assert_all_acked(relay)

    def test_ack_upto_acks_everything_delivered_before(self):
        relay = Relay(self)
        relay.produce(lines(20))
        c = self.consumer(relay, window=20)
        held = self.take(c, 20)
        held[4].ack()
        c.ack_upto(held[9])
        self.assertEqual(c.held, 10)
        for msg in held[10:]:
            msg.ack()
        c.close()
        self.assert_all_acked(relay)

    def test_each_group_gets_every_message(self):
        relay = Relay(self, args=["--group", "billing", "--group", "audit"])
        produced = lines(20)
        relay.produce(produced)
        for group in ("billing", "audit"):
            with self.consumer(relay, group=group) as c:
                got = self.take(c, 20)
                for m in got:
                    m.ack()
            self.assertEqual([text(m) for m in got], produced, group)
        # With groups there is no implicit default group: name one.
        with self.assertRaises(spillway.ProtocolError) as e:
            spillway.Consumer(relay.sink, timeout=WAIT_S)
        self.assertEqual(e.exception.code, 403)
        self.assert_all_acked(relay)

    # -- giving messages back --------------------------------------------------

    def test_close_gives_back_what_is_held(self):
        relay = Relay(self)
        relay.produce(lines(5))
        c = self.consumer(relay)
        held = self.take(c, 5)
        held[0].ack()
        held[3].ack()
        c.close()
        back = []
        with self.consumer(relay) as again:
            # A lost consumer's messages come back one at a time: each is
            # acked before the next is sent.
            for _ in range(3):
                m = next(again)
                self.assertEqual(again.held, 1)
                back.append((m.seq, m.attempt))
                m.ack()
        self.assertEqual(back, [(held[i].seq, 2) for i in (1, 2, 4)])
        self.assert_all_acked(relay)

    def test_nak_with_delay_redelivers_with_attempt_2(self):
        relay = Relay(self)
        relay.produce([b"again"])
        c = self.consumer(relay)
        first = next(c)
        self.assertEqual((text(first), first.attempt), (b"again", 1))
        first.nak(delay_s=0.3)
        t0 = time.monotonic()
        second = next(c)
        waited = time.monotonic() - t0
        self.assertEqual((second.seq, text(second), second.attempt), (first.seq, b"again", 2))
        self.assertGreaterEqual(waited, 0.28, "redelivered before the NAK's delay")
        second.ack()
        c.close()
        self.assert_all_acked(relay)

    def test_term_dead_letters_with_its_reason(self):
        relay = Relay(self)
        relay.produce(lines(3))
        c = self.consumer(relay, encoding="text")
        a, b, d = self.take(c, 3)
        a.ack()
        b.term("bad input")
        d.ack()
        c.close()
        self.assert_all_acked(relay)
        dead = relay.dead_letters()
        self.assertEqual(len(dead), 1, dead)
        self.assertEqual((dead[0]["seq"], dead[0]["attempts"], dead[0]["reason"], dead[0]["text"]),
                         (b.seq, 1, "term", "bad input"))
        self.assertEqual(dead[0]["message"].rstrip("\n"), "line-00001")

    def test_max_deliveries_dead_letters(self):
        relay = Relay(self, args=["--max-deliveries", "2"])
        relay.produce([b"poison"])
        c = self.consumer(relay, window=1)
        first = next(c)
        self.assertEqual((text(first), first.attempt), (b"poison", 1))
        first.nak()
        again = next(c)
        self.assertEqual((again.seq, again.attempt), (first.seq, 2))
        again.nak()
        # Dead now: what comes next is the next message, not the poison.
        relay.produce([b"fine"])
        fine = next(c)
        self.assertEqual((text(fine), fine.attempt), (b"fine", 1))
        fine.ack()
        c.close()
        self.assert_all_acked(relay)
        dead = relay.dead_letters()
        self.assertEqual([(d["seq"], d["attempts"], d["reason"]) for d in dead],
                         [(first.seq, 2, "max_deliveries")])

    # -- the ack timeout -------------------------------------------------------

    def test_in_progress_keeps_a_message_past_the_ack_timeout(self):
        relay = Relay(self, args=["--ack-timeout", "1s"])
        relay.produce([b"slow"])
        c = self.consumer(relay)
        msg = next(c)
        self.assertEqual(c.ack_timeout_s, 1.0)
        for _ in range(6):          # 2.4 s of work, a PROG every 0.4 s
            time.sleep(0.4)
            msg.in_progress()
        msg.ack()
        # Still the same connection: it was never reset.
        relay.produce([b"next"])
        nxt = next(c)
        self.assertEqual((text(nxt), nxt.attempt), (b"next", 1))
        nxt.ack()
        c.close()
        self.assert_all_acked(relay)

    def test_the_ack_timeout_resets_a_consumer_that_holds_too_long(self):
        relay = Relay(self, args=["--ack-timeout", "1s"])
        relay.produce([b"held"])
        c = self.consumer(relay)
        msg = next(c)
        t0 = time.monotonic()
        with self.assertRaises(ConnectionError):
            next(c)
        self.assertLess(time.monotonic() - t0, 5)
        with self.consumer(relay) as other:
            again = next(other)
            self.assertEqual((again.seq, again.attempt), (msg.seq, 2))
            again.ack()
        self.assert_all_acked(relay)

    # -- errors and the end ----------------------------------------------------

    def test_a_refused_handshake_raises_protocol_error(self):
        relay = Relay(self)
        with self.assertRaises(spillway.ProtocolError) as e:
            spillway.Consumer(relay.sink, group="nosuchgroup", timeout=WAIT_S)
        self.assertEqual(e.exception.code, 403, e.exception)

    def test_bye_ends_the_iteration_and_the_relay_waits_for_the_acks(self):
        relay = Relay(self)
        relay.produce(lines(5))
        c = self.consumer(relay)
        msgs = self.take(c, 5)
        for m in msgs[:4]:
            m.ack()
        c.flush()
        relay.terminate()
        self.assertEqual(list(c), [], "no message after BYE")
        time.sleep(0.3)
        self.assertIsNone(relay.proc.poll(), "the relay waits for the last ack")
        msgs[4].ack()
        c.close()
        self.assert_all_acked(relay)

    # -- the seed scenario -----------------------------------------------------

    def test_a_slow_consumer_killed_twice_loses_nothing(self):
        """A consumer process that works slowly is SIGKILLed twice while it
        holds messages, and restarted. In the end every message was
        processed at least once; a message was processed twice only if a
        killed run held it (at most its window plus one window of
        redeliveries); first deliveries came in order."""
        seed = int(os.environ.get("SPILLWAY_SEED") or random.randrange(1 << 32))
        rng = random.Random(seed)
        window = rng.choice([4, 16, 64])
        kills = sorted(rng.sample(range(150, 1700), 2))
        sys.stderr.write("[seed scenario: SPILLWAY_SEED=%d window=%d kills after %s lines] "
                         % (seed, window, kills))
        say = "SPILLWAY_SEED=%d" % seed
        n = 2000
        relay = Relay(self)
        produced = [b"m-%05d" % i for i in range(n)]
        relay.produce(produced)
        runs = []
        for run in range(3):
            log = os.path.join(relay.tmp, "run%d.log" % run)
            open(log, "w").close()
            proc = subprocess.Popen(
                [sys.executable, os.path.join(HERE, "_slow_consumer.py"), relay.sink, log,
                 str(window), "0.001", "3"],
                stderr=subprocess.PIPE)
            self.addCleanup(_reap, proc)
            if run < 2:
                done = sum(len(r) for r in runs)
                wait_for(lambda: _count(log) + done >= kills[run] or proc.poll() is not None,
                         60, "run %d to process %d lines (%s)" % (run, kills[run], say))
                if proc.poll() is not None:
                    self.fail("run %d ended before its kill (%s): %s"
                              % (run, say, proc.stderr.read().decode()))
                held = _unacked(relay)
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                self.assertGreater(held, 0, "run %d held nothing at its kill (%s)" % (run, say))
            else:
                try:
                    proc.wait(120)
                except subprocess.TimeoutExpired:
                    self.fail("the last run did not finish in 120 s (%s)" % say)
                self.assertEqual(proc.returncode, 0, proc.stderr.read().decode())
            proc.stderr.close()
            runs.append(_entries(log))

        # Nothing lost: every line was processed, and the relay agrees.
        seen = collections.Counter(body for r in runs for _, _, body in r)
        missing = sorted(set(produced) - set(seen))
        self.assertEqual(missing, [], "lost (%s)" % say)
        self.assertEqual(set(seen), set(produced))
        self.assert_all_acked(relay)
        self.assertEqual(relay.dead_letters(), [])

        # Duplicates only where a kill held them.
        for i, r in enumerate(runs):
            bodies = [b for _, _, b in r]
            self.assertEqual(len(bodies), len(set(bodies)), "a duplicate within run %d (%s)" % (i, say))
        for i in (0, 1):
            later = {b for r in runs[i + 1:] for _, _, b in r}
            again = [b for _, _, b in runs[i] if b in later]
            sys.stderr.write("[run %d: %d processed, %d again later] " % (i, len(runs[i]), len(again)))
            self.assertLessEqual(len(again), 2 * window,
                                 "run %d: %d processed again after its kill (%s)" % (i, len(again), say))
            # Held at the kill: among the last the run processed, whose acks
            # had not reached the relay yet.
            last = {b for _, _, b in runs[i][-2 * window:]}
            self.assertEqual([b for b in again if b not in last], [],
                             "run %d: processed again, but long before its kill (%s)" % (i, say))
        # A redelivery keeps its seq and raises its attempt.
        first = {}
        for r in runs:
            for seq, attempt, body in r:
                if body in first:
                    self.assertEqual(first[body][0], seq, say)
                    self.assertGreater(attempt, first[body][1], say)
                else:
                    first[body] = (seq, attempt)
        # First deliveries in order.
        firsts = [(seq, body) for r in runs for seq, attempt, body in r if attempt == 1]
        self.assertEqual(firsts, sorted(firsts), "first deliveries out of order (%s)" % say)
        self.assertEqual(len(set(s for s, _ in firsts)), len(firsts), say)


def _count(path):
    with open(path, "rb") as f:
        return f.read().count(b"\n")


def _entries(path):
    with open(path, "rb") as f:
        out = []
        for line in f.read().splitlines():
            seq, attempt, body = line.split(b" ", 2)
            out.append((int(seq), int(attempt), body))
        return out


def _unacked(relay):
    values = re.findall(r"^spillway_unacked_messages(?:\{[^}]*\})? (\S+)$", relay.metrics(), re.M)
    if not values:
        raise AssertionError("no spillway_unacked_messages in /metrics")
    return sum(float(v) for v in values)


def _reap(proc):
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    if proc.stderr and not proc.stderr.closed:
        proc.stderr.close()


if __name__ == "__main__":
    unittest.main()
