#!/usr/bin/env python3
"""A slow, well-behaved queue consumer for spillway.

Reads lines from the relay's sink (`--to listen:...`), writes them to
stdout, and after --leave-after lines leaves *cleanly*: it half-closes
(shutdown(SHUT_WR)) and keeps reading until the relay closes. That way every
line the relay sent is read, and the next consumer starts exactly at the
following line: no loss, no duplicates.

    python3 examples/consumer.py 127.0.0.1:7001 --leave-after 5
"""
import argparse
import socket
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("addr", help="HOST:PORT of the relay's sink")
    ap.add_argument("--leave-after", type=int, default=0,
                    help="half-close after this many lines (0: read until the relay closes)")
    ap.add_argument("--delay", type=float, default=0.0, help="seconds to sleep per line (a slow reader)")
    args = ap.parse_args()
    host, port = args.addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    out = sys.stdout.buffer
    seen = 0
    leaving = False
    pending = b""
    while True:
        data = sock.recv(4096)
        if not data:
            break
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            out.write(line + b"\n")
            seen += 1
            if args.delay:
                time.sleep(args.delay)
        if args.leave_after and seen >= args.leave_after and not leaving:
            # Leave cleanly: no more messages after the one in flight; read what is already on its way.
            sock.shutdown(socket.SHUT_WR)
            leaving = True
    sock.close()
    out.flush()
    if pending:
        print(f"consumer: {len(pending)} bytes of an unfinished line at EOF", file=sys.stderr)
    print(f"consumer: {seen} lines", file=sys.stderr)


if __name__ == "__main__":
    main()
