"""Consumer half-closes, then reads to EOF slowly (longer than drain_timeout):
README says clean cut, no loss, no duplicates."""
import sys, os, time, signal, shutil
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from h import *
work = "/tmp/h/w_se"; shutil.rmtree(work, ignore_errors=True); os.makedirs(work)
pp, cp = free_ports(2)
r = Relay(qconfig(pp, cp, work + "/spool", "", drain="2s"), work); r.wait_log("queue route ready")
N = 100000
produce(pp, lines(0, N)); r.wait_log("producer closed")
c = consumer(cp, rcvbuf=16384)
time.sleep(0.5)  # the relay fills the socket
c.shutdown(socket.SHUT_WR)
buf = bytearray(); c.settimeout(10); how = "EOF"
t0 = time.time()
try:
    while True:
        d = c.recv(4096)
        if not d: break
        buf += d
        time.sleep(0.01)  # ~400 KB/s
except OSError as e:
    how = str(e)
first = numbers(bytes(buf))
print("first consumer: %s after %.1fs, %d lines, partial tail %d" % (how, time.time() - t0, len(first), len(buf) % LINE))
got = drain(cp, N, set(first))
second = numbers(got)
print("second consumer: %d lines starting at %s" % (len(second), second[:1]))
dups = set(first) & set(second)
print("DUPLICATES", len(dups), "LOST", N - len(set(first) | set(second)))
print([l[28:230] for l in r.log().splitlines() if "consumer closed" in l])
r.signal(signal.SIGTERM); r.wait_exit(20); r.kill()
