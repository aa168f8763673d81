"""A slow consumer, run as its own process by test_consumer's kill test.

    python3 _slow_consumer.py ADDRESS LOG WINDOW DELAY_S IDLE_S

For each message: sleep DELAY_S (the work), append "seq attempt body" to
LOG and flush it to the kernel, then ack. Logging before acking means a
kill can only make the log show a message twice (logged, ack not yet at
the relay), never miss one the relay counts as done. Exits 0 when nothing
arrives for IDLE_S seconds.
"""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import spillway  # noqa: E402


def main():
    address, log, window, delay, idle = sys.argv[1:6]
    delay = float(delay)
    with open(log, "a") as out, spillway.Consumer(address, window=int(window), timeout=float(idle)) as c:
        try:
            for msg in c:
                time.sleep(delay)
                out.write("%d %d %s\n" % (msg.seq, msg.attempt, msg.body.rstrip(b"\n").decode()))
                out.flush()
                msg.ack()
        except TimeoutError:
            pass            # idle: the queue is empty
    return 0


if __name__ == "__main__":
    sys.exit(main())
