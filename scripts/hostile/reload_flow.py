"""Reloads mid-flow with an active producer and consumer: is every line the
relay's TCP acknowledged delivered? Configs alternate per argv."""
import sys, os, time, signal, shutil, random
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from h import *

work = "/tmp/h/w_rl"; shutil.rmtree(work, ignore_errors=True); os.makedirs(work)
pp, cp, ap = free_ports(3)
spool = work + "/spool"
variants = [
    'memory = 0\nfsync = "always"\nsegment_size = "64KiB"',
    'memory = "1MiB"\nfsync = "100ms"\nsegment_size = "1MiB"',
    'memory = "256KiB"\nfsync = "never"\nmax_disk = "8MiB"\nsegment_size = "128KiB"',
]
if len(sys.argv) > 2:
    variants = [v.replace("\\n", "\n") for v in sys.argv[2:]]
reloads = int(sys.argv[1]) if len(sys.argv) > 1 else 6
r = Relay(qconfig(pp, cp, spool, variants[0], admin=ap, drain="2s"), work)
r.wait_log("queue route ready")
prod = ReProducer(pp, rate_sleep=float(os.environ.get("RATE","0.002")))
cons = ReConsumer(cp)
for i in range(reloads):
    time.sleep(1.0)
    r.rewrite(qconfig(pp, cp, spool, variants[(i + 1) % len(variants)], admin=ap, drain="2s"))
    r.signal(signal.SIGHUP)
    r.wait_log("configuration reloaded", i + 1, limit=30)
time.sleep(1.0)
prod.stop()
acked = prod.acked()
end = time.time() + 30
while time.time() < end and not acked <= cons.seen():
    time.sleep(0.2)
cons.stop()
seen = cons.seen()
lost = sorted(acked - seen)
allgot = [n for g in cons.got for n in g]
firsts = []
s = set()
for n in allgot:
    if n not in s:
        s.add(n); firsts.append(n)
order_bad = sum(1 for a, b in zip(firsts, firsts[1:]) if b < a)
print("producer conns", prod.conns, "errors", prod.errors[:3], "acked", len(acked), "max", max(acked) if acked else None)
print("consumer conns", len(cons.got), "errors", cons.errors[:3])
print("received", len(allgot), "distinct", len(seen), "dups", len(allgot) - len(seen), "LOST", len(lost), lost[:10], "first-receipt order violations", order_bad)
print("relay alive", r.p.poll() is None)
r.signal(signal.SIGTERM); print("exit", r.wait_exit(30)); r.kill()
for l in r.log().splitlines():
    if "ERROR" in l or "lost" in l or "WARN" in l:
        print("  ", l[:250])
rngs = []
for n in lost:
    if rngs and rngs[-1][1] == n - 1:
        rngs[-1][1] = n
    else:
        rngs.append([n, n])
print("lost ranges", rngs[:20])
print("acked ranges", prod.acked_ranges)
for l in r.log().splitlines():
    if "producer closed" in l:
        print("  ", l[:250])
