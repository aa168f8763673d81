"""Starting the real relay for a test, and small helpers around it.

The binary is $SPILLWAY_BIN, else the newer of target/release/spillway and
target/debug/spillway under the repository root. Every wait is bounded.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT = os.path.dirname(HERE)                          # clients/python
ROOT = os.path.dirname(os.path.dirname(CLIENT))         # the repository
sys.path.insert(0, CLIENT)

START_S = 20        # for the ready file
STOP_S = 20         # for a SIGTERM'd relay to exit


def binary():
    env = os.environ.get("SPILLWAY_BIN")
    if env:
        if not os.path.isfile(env):
            raise RuntimeError("SPILLWAY_BIN=%s: no such file" % env)
        return env
    found = [os.path.join(ROOT, "target", kind, "spillway") for kind in ("release", "debug")]
    found = [p for p in found if os.path.isfile(p)]
    if not found:
        raise RuntimeError("no relay binary: build one (cargo build --release) or set SPILLWAY_BIN")
    return max(found, key=os.path.getmtime)


def wait_for(predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %ss waiting for %s" % (timeout_s, what))
        time.sleep(0.02)


class Relay:
    """`spillway queue` on port 0, from listen to listen, in a temp dir.

    Raises unittest.SkipTest when the relay refuses a protocol flag as not
    implemented yet, so a test of a side still being written skips with
    the relay's own words.
    """

    def __init__(self, test, *, to_protocol="ack", from_protocol=None, args=(), after=None):
        """`after`: a stopped Relay whose spool and addresses to take over
        (a restart)."""
        if after is None:
            self.tmp = tempfile.mkdtemp(prefix="spillway-py-")
            test.addCleanup(self._remove_tmp)
            source = sink = "127.0.0.1:0"
        else:
            self.tmp, source, sink = after.tmp, after.source, after.sink
        self.spool = os.path.join(self.tmp, "spool")
        self.log_path = os.path.join(self.tmp, "relay-%d.log" % time.monotonic_ns())
        ready = os.path.join(self.tmp, "ready.json")
        if os.path.exists(ready):
            os.remove(ready)        # a killed relay's
        cmd = [binary(), "--ready-file", ready, "queue",
               "--from", "listen:" + source, "--to", "listen:" + sink,
               "--spool", self.spool, "--admin", "127.0.0.1:0"]
        if to_protocol:
            cmd += ["--to-protocol", to_protocol]
        if from_protocol:
            cmd += ["--from-protocol", from_protocol]
        cmd += list(args)
        self.log = open(self.log_path, "wb")
        self.terminated = False
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        test.addCleanup(self.stop)
        deadline = time.monotonic() + START_S
        while not os.path.exists(ready):
            if self.proc.poll() is not None:
                out = self.output()
                if "not implemented yet" in out:
                    raise unittest.SkipTest("the relay refuses it: " + out.strip().splitlines()[-1])
                raise AssertionError("the relay exited with %s at start:\n%s" % (self.proc.returncode, out))
            if time.monotonic() > deadline:
                raise AssertionError("no ready file after %ss:\n%s" % (START_S, self.output()))
            time.sleep(0.02)
        with open(ready) as f:
            info = json.load(f)
        self.source = info["routes"]["queue"]["source"]
        self.sink = info["routes"]["queue"]["sink"]
        self.admin = info["admin"]

    def output(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def terminate(self):
        """SIGTERM once (a second one makes the relay exit at once)."""
        if not self.terminated:
            self.terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout_s=STOP_S):
        """SIGTERM, then SIGKILL if it does not exit in time; its exit code."""
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        return self.proc.returncode

    def _remove_tmp(self):
        import shutil
        shutil.rmtree(self.tmp, ignore_errors=True)

    def produce(self, lines):
        """Plain TCP to the source: each item + '\\n'."""
        data = b"".join(l + b"\n" for l in lines)
        with socket.create_connection(_split(self.source), timeout=10) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(10)
            s.recv(1)           # EOF once the relay has read everything

    def metrics(self):
        with urllib.request.urlopen("http://%s/metrics" % self.admin, timeout=5) as r:
            return r.read().decode()

    def remaining(self):
        """`spillway spool dump`, once the relay is stopped: the lines of the
        messages not acknowledged (from the ack floor on)."""
        assert self.proc.poll() is not None, "stop the relay first"
        r = subprocess.run([binary(), "spool", "dump", self.spool], capture_output=True, timeout=30)
        if r.returncode != 0:
            raise AssertionError("spool dump: %s" % r.stderr.decode())
        return r.stdout.splitlines()

    def dead_letters(self):
        """`spillway spool dump --dead`, once the relay is stopped."""
        assert self.proc.poll() is not None, "stop the relay first"
        r = subprocess.run([binary(), "spool", "dump", "--dead", self.spool],
                           capture_output=True, timeout=30)
        if r.returncode != 0:
            if b"has no dead letters" in r.stderr:
                return []
            raise AssertionError("spool dump --dead: %s" % r.stderr.decode())
        return [json.loads(l) for l in r.stdout.decode().splitlines() if l.strip()]


def _split(address):
    host, _, port = address.rpartition(":")
    return host, int(port)


def text(msg):
    """A message's line. The relay sends a lines route's message without its
    newline; docs/protocol.md does not say, so either is accepted here."""
    body = msg.body
    return body[:-1] if body.endswith(b"\n") else body
