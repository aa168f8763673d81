#!/usr/bin/env python3
"""Memory per idle proxied connection: open COUNT client connections through
a fresh spillway relay to a local upstream that accepts and holds them, with
one small exchange each way (so both directions have run once), then read the
relay's RSS. Reports (RSS after - RSS before) / COUNT. Bounded: gives up after
120 s."""
import argparse, os, resource, select, socket, subprocess, sys, tempfile, time

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--count", type=int, default=10000)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * args.count + 100
    if soft < need:
        try:  # raising the hard limit needs root (CAP_SYS_RESOURCE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(need, hard)))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need), hard))
    up = socket.socket(); up.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    up.bind(("127.0.0.1", 0)); up.listen(4096); up.setblocking(False)
    probe = socket.socket(); probe.bind(("127.0.0.1", 0)); port = probe.getsockname()[1]; probe.close()
    log = tempfile.NamedTemporaryFile(prefix="idle-", suffix=".log", delete=False)
    relay = subprocess.Popen([args.bin, "--log-level", "warn", "relay", "--listen", f"127.0.0.1:{port}",
                              "--to", f"127.0.0.1:{up.getsockname()[1]}", "--max-connections", str(args.count + 10)],
                             stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 120
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close(); break
            except OSError:
                if time.time() > deadline: raise
                time.sleep(0.05)
        # the probe connection was proxied: accept and drop it
        time.sleep(0.2)
        try:
            c, _ = up.accept(); c.close()
        except BlockingIOError:
            pass
        time.sleep(0.3)
        before = rss_kib(relay.pid)
        clients, servers = [], []
        for i in range(args.count):
            c = socket.create_connection(("127.0.0.1", port), timeout=10)
            clients.append(c)
            c.sendall(b"x")
            while True:
                r, _, _ = select.select([up], [], [], 10)
                if not r: raise RuntimeError("upstream accept timed out")
                try:
                    s, _ = up.accept(); break
                except BlockingIOError:
                    continue
            s.setblocking(True); s.settimeout(10)
            assert s.recv(1) == b"x"
            s.sendall(b"y")
            got = c.recv(1)
            if got != b"y": raise RuntimeError(f"connection {i}: got {got!r}")
            servers.append(s)
            if time.time() > deadline: raise RuntimeError("timed out")
        time.sleep(1.0)
        after = rss_kib(relay.pid)
        per = (after - before) * 1024 / args.count
        print(f"| connections | RSS before | RSS after | bytes per idle connection |")
        print(f"|---|---|---|---|")
        print(f"| {args.count} | {before} KiB | {after} KiB | {per:.0f} |")
        for s in clients + servers: s.close()
    finally:
        relay.terminate()
        try: relay.wait(10)
        except subprocess.TimeoutExpired: relay.kill()

if __name__ == "__main__":
    sys.exit(main())
