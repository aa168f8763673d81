"""Hostile harness for spillway (queue mode). Loopback only, bounded."""
import os, socket, struct, subprocess, sys, time, signal, re, threading, json, random

BIN = os.environ.get("SPILLWAY", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "target", "release", "spillway"))
LINE = 100


def line(n):
    s = b"%010d " % n
    return s + b"." * (LINE - 1 - len(s)) + b"\n"


def lines(a, b):
    return b"".join(line(n) for n in range(a, b))


def numbers(buf, strict=True):
    """complete lines -> numbers; checks each is well formed."""
    out = []
    whole = len(buf) - len(buf) % LINE
    for i in range(0, whole, LINE):
        l = buf[i:i + LINE]
        if strict:
            assert l.endswith(b"\n") and l[10:11] == b" " and l[11:99] == b"." * 88, ("torn", i, l)
        out.append(int(l[:10]))
    return out


def free_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Relay:
    def __init__(self, config_text, workdir, name="relay", env=None, args=None):
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.cfg = os.path.join(workdir, "spillway.toml")
        with open(self.cfg, "w") as f:
            f.write(config_text)
        self.logpath = os.path.join(workdir, name + ".log")
        self.logf = open(self.logpath, "ab")
        e = dict(os.environ)
        e["RUST_LOG"] = e.get("RUST_LOG", "info")
        e["NO_COLOR"] = "1"
        if env:
            e.update(env)
        cmd = [BIN] + (args if args else ["run", "--config", self.cfg])
        self.p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.logf, env=e)
        self.t0 = time.time()

    def rewrite(self, config_text):
        with open(self.cfg, "w") as f:
            f.write(config_text)

    def log(self):
        with open(self.logpath, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_log(self, needle, count=1, limit=20.0):
        end = time.time() + limit
        while time.time() < end:
            t = self.log()
            if t.count(needle) >= count:
                return t
            if self.p.poll() is not None:
                raise RuntimeError("relay exited %s while waiting for %r\n%s" % (self.p.returncode, needle, t[-4000:]))
            time.sleep(0.02)
        raise RuntimeError("timeout waiting for %r (%d)\n%s" % (needle, count, self.log()[-4000:]))

    def wait_ready(self, n_listen):
        self.wait_log("queue route ready", 1)

    def signal(self, sig):
        self.p.send_signal(sig)

    def wait_exit(self, limit=60.0):
        try:
            return self.p.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def http_get(port, path):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path).encode())
    buf = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        buf += d
    s.close()
    head, _, body = buf.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def metrics(port):
    code, body = http_get(port, "/metrics")
    m = {}
    for l in body.splitlines():
        if l.startswith("#") or not l.strip():
            continue
        k, _, v = l.rpartition(" ")
        try:
            m[k] = float(v)
        except ValueError:
            pass
    return m


def produce(port, data, shut=True, rst=False, timeout=30):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(data)
    if rst:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        return
    if shut:
        s.shutdown(socket.SHUT_WR)
        try:
            while s.recv(65536):
                pass
        except OSError:
            pass
    s.close()


def consumer(port, rcvbuf=None):
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    return s


def reset(s):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def read_for(s, secs, piece=65536, pause=0.0):
    s.settimeout(0.1)
    end = time.time() + secs
    got = bytearray()
    while time.time() < end:
        try:
            d = s.recv(piece)
            if not d:
                break
            got += d
        except socket.timeout:
            pass
        except OSError:
            break
        if pause:
            time.sleep(pause)
    return bytes(got)


def drain(port, want_total, have=set(), limit=60.0, quiet=5.0):
    """well-behaved consumer: read until `want_total` distinct known, or quiet; leave cleanly."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.settimeout(0.2)
    got = bytearray()
    seen = set(have)
    end = time.time() + limit
    last = time.time()
    while len(seen) < want_total and time.time() < end:
        try:
            d = s.recv(1 << 16)
            if not d:
                break
            start = len(got) - len(got) % LINE
            got += d
            end_ = len(got) - len(got) % LINE
            seen.update(numbers(got[start:end_]))
            last = time.time()
        except socket.timeout:
            if time.time() - last > quiet:
                break
        except OSError as e:
            print("drain recv error", e)
            break
    try:
        s.shutdown(socket.SHUT_WR)
        s.settimeout(20)
        while True:
            d = s.recv(1 << 16)
            if not d:
                break
            got += d
    except OSError as e:
        print("drain tail error", e)
    s.close()
    return bytes(got)


def qconfig(pp, cp, spool, extra="", drain="2s", admin=None, name="q", glob=""):
    a = '[admin]\nlisten = "127.0.0.1:%d"\n' % admin if admin else ""
    return """[global]
drain_timeout = "%s"
%s
%s
[[route]]
name = "%s"
mode = "queue"
from = "listen:127.0.0.1:%d"
to = "listen:127.0.0.1:%d"
spool = "%s"
framing = "lines"
%s
""" % (drain, glob, a, name, pp, cp, spool, extra)


def tmpfs(path, size):
    os.makedirs(path, exist_ok=True)
    subprocess.check_call(["mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs", path])


def umount(path):
    subprocess.call(["umount", path])


def df(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


import fcntl, array
SIOCOUTQ = 0x5411


def outq(s):
    a = array.array("i", [0])
    fcntl.ioctl(s.fileno(), SIOCOUTQ, a, True)
    return a[0]


class Producer:
    """Sends numbered lines from `start` non-blockingly in a thread until stop() or `upto`."""

    def __init__(self, port, start=0, upto=None, chunk=1000, sndbuf=None):
        self.s = socket.socket()
        if sndbuf:
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.s.connect(("127.0.0.1", port))
        self.s.setblocking(False)
        self.start_n = start
        self.next = start
        self.upto = upto
        self.chunk = chunk
        self.written = 0
        self.pending = b""
        self.stopped = False
        self.err = None
        self.last_progress = time.time()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        import select
        while not self.stopped:
            if not self.pending:
                if self.upto is not None and self.next >= self.upto:
                    break
                e = self.next + self.chunk
                if self.upto is not None:
                    e = min(e, self.upto)
                self.pending = lines(self.next, e)
                self.next = e
            try:
                n = self.s.send(self.pending)
                self.pending = self.pending[n:]
                self.written += n
                self.last_progress = time.time()
            except BlockingIOError:
                select.select([], [self.s], [], 0.05)
            except OSError as e:
                self.err = e
                break

    def stalled_for(self):
        return time.time() - self.last_progress

    def stop(self):
        self.stopped = True
        self.t.join()

    def acked_lines(self):
        """lines the relay's TCP acknowledged (complete ones)."""
        return self.start_n + (self.written - outq(self.s)) // LINE

    def close(self, how="fin"):
        if how == "rst":
            reset(self.s)
        else:
            try:
                self.s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self.s.close()


class ReProducer:
    """Keeps sending numbered lines, reconnecting on errors; after each
    connection ends, records the range of lines its TCP saw acknowledged
    (the relay accepted them) -- resends from the first unacked line."""

    def __init__(self, port, start=0, upto=None, rate_sleep=0.0, chunk=500):
        self.port = port
        self.next = start
        self.upto = upto
        self.acked_ranges = []  # (from, to) acknowledged per connection
        self.stopped = False
        self.rate_sleep = rate_sleep
        self.chunk = chunk
        self.conns = 0
        self.errors = []
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def port_now(self):
        return self.port() if callable(self.port) else self.port

    def run(self):
        import select
        while not self.stopped and (self.upto is None or self.next < self.upto):
            try:
                s = socket.create_connection(("127.0.0.1", self.port_now()), timeout=2)
            except OSError:
                time.sleep(0.05)
                continue
            self.conns += 1
            s.setblocking(False)
            base = self.next
            written = 0
            pending = b""
            nxt = self.next
            err = None
            while not self.stopped:
                if not pending:
                    if self.upto is not None and nxt >= self.upto:
                        break
                    e = nxt + self.chunk
                    if self.upto is not None:
                        e = min(e, self.upto)
                    pending = lines(nxt, e)
                    nxt = e
                    if self.rate_sleep:
                        time.sleep(self.rate_sleep)
                try:
                    n = s.send(pending)
                    pending = pending[n:]
                    written += n
                except BlockingIOError:
                    select.select([], [s], [], 0.05)
                except OSError as e:
                    err = e
                    break
            # how much did the relay's TCP acknowledge?
            if err is None:
                # clean end: wait until everything is acked or the relay closes
                end = time.time() + 10
                while outq(s) > 0 and time.time() < end:
                    time.sleep(0.01)
                try:
                    s.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            acked = written - outq(s)
            s.close()
            got = acked // LINE
            self.acked_ranges.append((base, base + got))
            if err is not None:
                self.errors.append(str(err))
            self.next = base + got

    def stop(self):
        self.stopped = True
        self.t.join(30)

    def acked(self):
        return set(i for a, b in self.acked_ranges for i in range(a, b))


class ReConsumer:
    """Reads continuously, reconnecting; records numbers; leaves cleanly on stop."""

    def __init__(self, port, piece=1 << 16, pause=0.0, rcvbuf=None):
        self.port = port
        self.got = []  # list of number lists, per connection
        self.stopped = False
        self.piece = piece
        self.pause = pause
        self.rcvbuf = rcvbuf
        self.errors = []
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def port_now(self):
        return self.port() if callable(self.port) else self.port

    def run(self):
        while not self.stopped:
            try:
                s = consumer(self.port_now(), self.rcvbuf)
            except OSError:
                time.sleep(0.05)
                continue
            s.settimeout(0.1)
            buf = bytearray()
            clean = False
            while True:
                if self.stopped and not clean:
                    s.shutdown(socket.SHUT_WR)
                    clean = True
                    s.settimeout(10)
                try:
                    d = s.recv(self.piece)
                    if not d:
                        break
                    buf += d
                except socket.timeout:
                    continue
                except OSError as e:
                    self.errors.append(str(e))
                    break
                if self.pause:
                    time.sleep(self.pause)
            s.close()
            if len(buf) % LINE:
                self.errors.append("partial tail %d bytes" % (len(buf) % LINE))
            self.got.append(numbers(buf))

    def stop(self):
        self.stopped = True
        self.t.join(40)

    def seen(self):
        return set(i for g in self.got for i in g)
